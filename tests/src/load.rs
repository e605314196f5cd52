//! Traffic during a deployment: client threads ([`Clients`], shared with the
//! benchmark's load), the harness's GET loop ([`Load`]) and its verdict
//! ([`assert_all_served`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http_get;

/// Fails unless every sample got 200 with a body `demo VERSION PROFILE` of
/// one of `versions` (either profile), and the load ran at all.
#[track_caller]
pub fn assert_all_served(samples: &[Sample], versions: &[&str]) {
    assert!(samples.len() > 20, "the load hardly ran: {}", samples.len());
    let allowed: Vec<String> = versions
        .iter()
        .flat_map(|v| ["real1", "real2"].map(|p| format!("demo {v} {p}")))
        .collect();
    let bad: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status != 200 || !allowed.contains(&s.body))
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, first: {bad:?}",
        samples.iter().filter(|s| s.status != 200).count(),
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
        Load(Clients::start(clients, pause, |_| {
            let path = path.to_string();
            move |t0: Instant| {
                let sent = Instant::now();
                let (status, body, error) = match http_get(port, &path, Duration::from_secs(10)) {
                    Ok((s, b)) => (s, b, None),
                    Err(e) => (0, String::new(), Some(e.to_string())),
                };
                Sample {
                    at: sent - t0,
                    latency: sent.elapsed(),
                    status,
                    body,
                    error,
                }
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
