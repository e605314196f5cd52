//! One deployment through the five release binaries, watched from outside:
//! the moments the stages themselves cannot report (the old app's exit, the
//! new app's first answer on its port, the include written, the line in
//! which `switch` says it confirmed) and what each stage held open.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use tests::{http_get, Layout, Setup};

use crate::load::{self, Sample};
use crate::report::{Deployment, Stage};

/// What every deployment of a run shares.
#[derive(Debug)]
pub struct Scenario<'a> {
    pub setup: &'a Setup,
    pub layout: Layout,
    /// `app.retire` (always on in upstream-pair mode).
    pub retire: bool,
    /// A request of this many ms in flight to the live app at each switch; 0: none.
    pub slow_ms: u64,
    pub verbose: bool,
    /// When the load began, as an `Instant` and on the wall clock.
    pub t0: Instant,
    pub t0_wall: SystemTime,
}

/// What `switch` prints once nginx answers as the new profile.
const CONFIRMED: [&str; 2] = ["nginx routes to ", "nginx sends requests to "];

impl Scenario<'_> {
    /// One deployment `live` → `idle`; the slow request's handle, if one was sent.
    pub fn deploy(
        &self,
        id: &str,
        live: &str,
        idle: &str,
    ) -> Result<(Deployment, Option<JoinHandle<Sample>>)> {
        let setup = self.setup;
        let t0 = self.t0;
        let idle_port = setup.ports[usize::from(idle == "real2")];
        let mut stages = Vec::new();
        let mut peak_fds = 0;

        self.stage(id, "profile", &[], &mut stages, &mut peak_fds)?;
        let old_app = setup
            .launched_pid(idle)
            .filter(|&pid| running(pid))
            .map(watch_exit);
        self.stage(id, "stop", &[], &mut stages, &mut peak_fds)?;
        let old_app_exit = join_exit(old_app)?.map(|at| at - t0);

        let stop_poll = Arc::new(AtomicBool::new(false));
        let poller = first_answer(idle_port, idle.to_string(), stop_poll.clone());
        self.stage(id, "start", &[], &mut stages, &mut peak_fds)?;
        let spawned_unix_ms = launched_unix_ms(setup, idle)?;
        let health = self.stage(id, "health", &["--no-switch"], &mut stages, &mut peak_fds);
        stop_poll.store(true, Ordering::Relaxed);
        let first = poller
            .join()
            .map_err(|_| anyhow!("answer poller panicked"))?;
        health?;
        let (first_answer, first_answer_wall) =
            first.ok_or_else(|| anyhow!("health passed but {idle} never answered the poller"))?;

        let slow = self.slow_request();
        let retiring = if self.retire || self.layout == Layout::Pair {
            setup
                .launched_pid(live)
                .filter(|&pid| running(pid))
                .map(watch_exit)
        } else {
            None
        };
        let confirmed = self.stage(id, "switch", &[], &mut stages, &mut peak_fds)?;
        let retired_exit = join_exit(retiring)?.map(|at| at - t0);
        let written = self.include_written()?;

        let since_t0 = |t: SystemTime| t.duration_since(self.t0_wall).unwrap_or_default();
        let unix_ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0)
        };
        let deployment = Deployment {
            id: id.to_string(),
            from: live.to_string(),
            to: idle.to_string(),
            stages,
            old_app_exit,
            first_answer: first_answer - t0,
            app_startup: Duration::from_secs_f64(
                ((unix_ms(first_answer_wall) - spawned_unix_ms as f64) / 1000.0).max(0.0),
            ),
            include_written: written.map(since_t0),
            spawned: Duration::from_secs_f64(
                ((spawned_unix_ms as f64 - unix_ms(self.t0_wall)) / 1000.0).max(0.0),
            ),
            confirmed,
            retired_exit,
            peak_fds,
        };
        Ok((deployment, slow))
    }

    /// A slow request to the live app, in flight when the include changes
    /// (none when `slow_ms` is 0).
    fn slow_request(&self) -> Option<JoinHandle<Sample>> {
        (self.slow_ms > 0).then(|| {
            let s = load::slow_request(
                self.setup.nginx.port,
                &format!("/slow?ms={}", self.slow_ms),
                self.t0,
            );
            // Outside the deployment's stages: lets the request reach the app first.
            std::thread::sleep(Duration::from_millis(100));
            s
        })
    }

    /// The include file's (or the symlink's) mtime; none in upstream-pair
    /// mode.
    fn include_written(&self) -> Result<Option<SystemTime>> {
        let include = &self.setup.nginx.include;
        match self.layout {
            Layout::Include => Some(fs::metadata(include)),
            // The link itself, not the site file it points at.
            Layout::Symlink | Layout::Realpath => Some(fs::symlink_metadata(include)),
            Layout::Pair => None,
        }
        .map(|m| m.and_then(|m| m.modified()))
        .transpose()
        .context("reading the include's (or link's) mtime")
    }

    /// Runs one stage as a hook, polling every 2 ms while it runs: its open
    /// fds (the peak goes to `peak_fds`) and, for `switch`, the moment its
    /// confirmation line appears. The stage ends when its process exits
    /// (seen by this poll, not by the harness's coarser wait).
    fn stage(
        &self,
        id: &str,
        name: &str,
        args: &[&str],
        stages: &mut Vec<Stage>,
        peak_fds: &mut usize,
    ) -> Result<Option<Duration>> {
        let t0 = self.t0;
        let begin = t0.elapsed();
        let spawned = self.setup.bundle.spawn(name, args, Some(id), |_| {})?;
        let pid = spawned.pid();
        let limit = Instant::now() + Duration::from_secs(180);
        let mut confirmed = None;
        while running(pid) && Instant::now() < limit {
            *peak_fds = (*peak_fds).max(fd_count(pid));
            if confirmed.is_none() && name == "switch" {
                let text = spawned.stderr_so_far();
                if CONFIRMED.iter().any(|m| text.contains(m)) {
                    confirmed = Some(t0.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let end = t0.elapsed();
        let out = spawned.finish(Duration::from_secs(30))?;
        if self.verbose {
            eprintln!(
                "  $ {name} {}   # {:.3} s",
                args.join(" "),
                (end - begin).as_secs_f64()
            );
            for line in out.stderr.lines() {
                eprintln!("    {line}");
            }
        }
        if !out.status.success() {
            bail!("{name} exited {}: {}", out.code(), out.stderr.trim());
        }
        if confirmed.is_none() && CONFIRMED.iter().any(|m| out.stderr.contains(m)) {
            confirmed = Some(end);
        }
        stages.push(Stage {
            name: name.to_string(),
            begin,
            end,
        });
        Ok(confirmed)
    }
}

fn join_exit(watch: Option<JoinHandle<Option<Instant>>>) -> Result<Option<Instant>> {
    Ok(watch
        .map(|w| w.join().map_err(|_| anyhow!("exit watcher panicked")))
        .transpose()?
        .flatten())
}

/// `started_unix_ms` of the app `start` launched for `profile`.
fn launched_unix_ms(setup: &Setup, profile: &str) -> Result<u64> {
    let path = setup.state_dir().join(format!("launched-{profile}.json"));
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
    v["started_unix_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("no started_unix_ms in {}", path.display()))
}

/// Whether `pid` runs: exists and is not a zombie (the apps are reparented
/// away from `start`, so nobody here reaps them).
pub fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// How many fds `pid` has open now (0 once it is gone).
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The moment `pid` exits, polled every millisecond, at most 2 minutes.
fn watch_exit(pid: i32) -> JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let limit = Instant::now() + Duration::from_secs(120);
        while Instant::now() < limit {
            if !running(pid) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })
}

/// The moment the app on `port` first answers `/profile` with its profile,
/// polled every 2 ms straight on its port, until found, or 5 s after `stop`
/// is set (`health` passed, so an answer is due; on a loaded machine the
/// poller's own try may have timed out just then).
fn first_answer(
    port: u16,
    profile: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Option<(Instant, SystemTime)>> {
    std::thread::spawn(move || {
        let mut limit = Instant::now() + Duration::from_secs(180);
        let mut stopping = false;
        while Instant::now() < limit {
            if let Ok((200, body)) = http_get(port, "/profile", Duration::from_secs(1)) {
                if body.trim() == profile {
                    return Some((Instant::now(), SystemTime::now()));
                }
            }
            if !stopping && stop.load(Ordering::Relaxed) {
                stopping = true;
                limit = limit.min(Instant::now() + Duration::from_secs(5));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    })
}
