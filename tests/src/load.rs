//! Traffic during a deployment: client threads ([`Clients`], shared with the
//! benchmark's load), the harness's GET loop ([`Load`]), GETs and POSTs on
//! new and kept-alive connections ([`Load::start_mixed`]) and its verdict
//! ([`assert_all_served`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{http_get, http_post, KeptAlive};

/// Fails unless every sample got 200 with a body `demo VERSION PROFILE` of
/// one of `versions` (either profile), and the load ran at all.
#[track_caller]
pub fn assert_all_served(samples: &[Sample], versions: &[&str]) {
    assert!(samples.len() > 20, "the load hardly ran: {}", samples.len());
    let allowed: Vec<String> = versions
        .iter()
        .flat_map(|v| ["real1", "real2"].map(|p| format!("demo {v} {p}")))
        .collect();
    let is_bad = |s: &&Sample| s.status != 200 || !allowed.contains(&s.body);
    let bad: Vec<&Sample> = samples.iter().filter(is_bad).take(5).collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed (not 200 with one of {allowed:?}), first: {bad:?}",
        samples.iter().filter(is_bad).count(),
        samples.len()
    );
}

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// HTTP status, or 0 when the request failed without one.
    pub status: u16,
    pub body: String,
    pub error: Option<String>,
    /// A POST, not a GET.
    pub post: bool,
    /// Sent on a kept-alive connection (a new one for its first request).
    pub kept_alive: bool,
}

impl Sample {
    /// The outcome of a request sent at `sent` (the load started at `t0`),
    /// measured now that `answer` is in.
    fn of(
        t0: Instant,
        sent: Instant,
        answer: anyhow::Result<(u16, String)>,
        post: bool,
        kept_alive: bool,
    ) -> Sample {
        let (status, body, error) = match answer {
            Ok((s, b)) => (s, b, None),
            Err(e) => (0, String::new(), Some(e.to_string())),
        };
        Sample {
            at: sent - t0,
            latency: sent.elapsed(),
            status,
            body,
            error,
            post,
            kept_alive,
        }
    }
}

/// Client threads that each send one request per call of their request
/// function, `pause` apart, until [`Clients::finish`]: the scaffolding of
/// [`Load`] and of the benchmark's load.
#[derive(Debug)]
pub struct Clients<S> {
    started: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<S>>>,
}

/// Each client is bounded in samples too, so a runaway run cannot eat memory.
const MAX_SAMPLES_PER_CLIENT: usize = 1_000_000;

impl<S: Send + 'static> Clients<S> {
    /// Starts `count` clients; `make(i)` gives client `i` its request
    /// function, called with the moment the load began.
    pub fn start<F>(count: usize, pause: Duration, mut make: impl FnMut(usize) -> F) -> Clients<S>
    where
        F: FnMut(Instant) -> S + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..count)
            .map(|i| {
                let stop = stop.clone();
                let mut request = make(i);
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) && samples.len() < MAX_SAMPLES_PER_CLIENT {
                        samples.push(request(started));
                        std::thread::sleep(pause);
                    }
                    samples
                })
            })
            .collect();
        Clients {
            started,
            stop,
            threads,
        }
    }

    /// When the load began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the clients; every sample, client by client.
    pub fn finish(self) -> Vec<S> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

/// Clients that GET a path through nginx in a loop, each request on a new
/// connection, `pause` apart, until stopped.
#[derive(Debug)]
pub struct Load(Clients<Sample>);

impl Load {
    pub fn start(port: u16, path: &str, clients: usize, pause: Duration) -> Load {
        Self::start_method(port, "GET", path, clients, pause)
    }

    /// Clients that POST to `path` instead, each on a new connection.
    pub fn posts(port: u16, path: &str, clients: usize, pause: Duration) -> Load {
        Self::start_method(port, "POST", path, clients, pause)
    }

    fn start_method(
        port: u16,
        method: &'static str,
        path: &str,
        clients: usize,
        pause: Duration,
    ) -> Load {
        Load(Clients::start(clients, pause, |_| {
            let path = path.to_string();
            move |t0: Instant| {
                let sent = Instant::now();
                let answer = if method == "POST" {
                    http_post(port, &path, b"order=1", Duration::from_secs(10))
                } else {
                    http_get(port, &path, Duration::from_secs(10))
                };
                Sample::of(t0, sent, answer, method == "POST", false)
            }
        }))
    }

    /// Like [`Load::start`], but every other client POSTs a 1 KiB body to
    /// `path` instead of GETting it: requests nginx must never replay.
    pub fn start_with_posts(port: u16, path: &str, clients: usize, pause: Duration) -> Load {
        Load(Clients::start(clients, pause, |i| {
            let path = path.to_string();
            let post = i % 2 == 1;
            let body = vec![b'x'; 1024];
            move |t0: Instant| {
                let sent = Instant::now();
                let answer = if post {
                    http_post(port, &path, &body, Duration::from_secs(10))
                } else {
                    http_get(port, &path, Duration::from_secs(10))
                };
                Sample::of(t0, sent, answer, post, false)
            }
        }))
    }

    /// Four clients of each kind a load balancer serves: a GET and a POST
    /// (1 KiB body) each on a new connection per request, and a GET and a
    /// POST each on one kept-alive connection ([`KeptAlive`]) reused from
    /// request to request. A failed request on a kept-alive connection is a
    /// failed request like any other (the connection is opened again for
    /// the next one).
    pub fn start_mixed(port: u16, path: &str, pause: Duration) -> Load {
        Load(Clients::start(4, pause, |i| {
            let path = path.to_string();
            let post = i % 2 == 1;
            let kept_alive = i >= 2;
            let body = vec![b'x'; 1024];
            let mut conn = KeptAlive::new(port, Duration::from_secs(10));
            move |t0: Instant| {
                let sent = Instant::now();
                let payload = post.then_some(body.as_slice());
                let answer = if kept_alive {
                    let reused = conn.is_open();
                    conn.request(&path, payload)
                        .map_err(|e| anyhow::anyhow!("{e} (kept-alive, reused: {reused})"))
                } else if post {
                    http_post(port, &path, &body, Duration::from_secs(10))
                } else {
                    http_get(port, &path, Duration::from_secs(10))
                };
                Sample::of(t0, sent, answer, post, kept_alive)
            }
        }))
    }

    /// When the load began: [`Sample::at`] counts from here.
    pub fn started(&self) -> Instant {
        self.0.started()
    }

    /// Stops the clients and returns every sample, in time order.
    pub fn finish(self) -> Vec<Sample> {
        let mut all = self.0.finish();
        all.sort_by_key(|s| s.at);
        all
    }
}
