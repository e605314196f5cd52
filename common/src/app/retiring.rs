//! Retiring the app that was live before a switch: nginx lets go of it
//! first ([`crate::app::drain`]), a last look that the new app still
//! serves, then the stop.
//!
//! Retiring never stops the last working app: right before the previous app
//! is signalled, the new one must still answer its health check and nginx
//! must still answer as it ([`still_serving`]); otherwise the previous app is
//! kept and [`NotServing`] tells the caller to switch back to it.
//!
//! Every line goes through the caller's log (`ctx.log`).

use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::app::drain::{drain, Why};
use crate::app::health_rule;
use crate::app::stopping;
use crate::config::waits::STILL_SERVING_LIMIT;
use crate::nginx::probe::{self, Probe};
use crate::sys::procs;
use crate::sys::signals;
use crate::{Context, Profile};

/// Stops the app that was live, once nginx has let go of it ([`drain`]),
/// provided the new one still serves ([`still_serving`]): otherwise nothing
/// is signalled and the error is a [`NotServing`], for the caller to switch
/// back to the previous app.
pub(crate) fn retire(
    ctx: &mut Context,
    previous: &Profile,
    live: &Profile,
    old_workers: Option<Vec<i32>>,
) -> Result<()> {
    ctx.outcome = drain(ctx, previous, old_workers, Why::Retiring)?;
    still_serving(ctx, live, previous)?;
    stopping::stop_profile(ctx, previous, Some(live), false)
}

/// The new app stopped serving before the previous one was retired: what
/// was seen. Nothing was signalled; the caller switches back to `previous`.
#[derive(Debug, Clone)]
pub(crate) struct NotServing {
    /// The profile that was switched to and no longer serves.
    pub live: Profile,
    /// The profile whose app is kept.
    pub previous: Profile,
    /// Its pid and whether it still runs, when `start` recorded it.
    pub process: Option<String>,
    /// The last health check of its own port.
    pub health: String,
    /// The last probe through nginx.
    pub probe: String,
}

impl fmt::Display for NotServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}) stopped serving before {} was retired{}: its health check: {}; through nginx: {}",
            self.live.name,
            self.live.port,
            self.previous.name,
            self.process
                .as_deref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            self.health,
            self.probe
        )
    }
}

impl std::error::Error for NotServing {}

/// Right before the previous app is signalled: the new app (`live`) still
/// answers its health check on its port, and nginx still answers as it
/// (the probe; in upstream-pair mode, where nginx balances over both, at
/// least once). Looked at for at most [`STILL_SERVING_LIMIT`]; the first
/// good pair ends the look. `Err` is a [`NotServing`] naming what died (or
/// the signal that came), and nothing has been signalled.
pub(crate) fn still_serving(ctx: &Context, live: &Profile, previous: &Profile) -> Result<()> {
    let config = &ctx.config;
    let mut health = String::new();
    let mut probe = String::new();
    let mut healthy = false;
    let mut answered = false;
    let seen = signals::wait_for(STILL_SERVING_LIMIT, Duration::from_millis(50), || {
        // Each witness needs to be seen once within the window: in
        // upstream-pair mode a probe may land on the previous app.
        if !healthy {
            match health_rule::check_health(config, live) {
                Ok(()) => healthy = true,
                Err(why) => health = format!("{} {why}", health_rule::health_url(config, live)),
            }
        }
        if !answered {
            match probe::probe(config) {
                Probe::Answered(p) if &p == live => answered = true,
                Probe::Answered(p) => {
                    probe = format!("{} answered {}", config.probe_url, p.name);
                }
                Probe::Failed(why) => probe = why,
            }
        }
        healthy && answered
    })
    .context(format!("{} was not retired: it still runs", previous.name))?;
    if seen.is_some() {
        ctx.log.say(format!(
            "{} still answers its health check and through nginx; stopping {}",
            live.name, previous.name
        ));
        return Ok(());
    }
    let ok = |s: &str, good: bool| {
        if good {
            "it answered".to_string()
        } else {
            s.to_string()
        }
    };
    Err(anyhow::Error::new(NotServing {
        live: live.clone(),
        previous: previous.clone(),
        process: process_words(ctx, live),
        health: ok(&health, healthy),
        probe: ok(&probe, answered),
    }))
}

/// "pid 123 has exited" / "pid 123 still runs": what `start` recorded for
/// `profile`, looked at now.
fn process_words(ctx: &Context, profile: &Profile) -> Option<String> {
    let path = ctx.state.launched_path(&profile.name);
    let launched: crate::state::Launched = ctx.state.read(&path, &ctx.log).ok()??;
    if launched.port != profile.port {
        return None;
    }
    let what = if launched.container_id.is_some() {
        "its container's process"
    } else {
        "its process"
    };
    Some(if procs::is_same_alive(launched.pid, launched.start_time) {
        format!("{what}, pid {}, still runs", launched.pid)
    } else {
        format!("{what}, pid {}, has exited", launched.pid)
    })
}
