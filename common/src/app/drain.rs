//! Letting nginx let go of an app before it is signalled (the *drain*),
//! shared by retiring the app that was live before a switch and by `stop`
//! of the idle app.
//!
//! The book never stops the old app, and a deployment that did at once would
//! cut the requests nginx's previous workers are still proxying to it. The
//! same holds for the next deployment's `stop` of the idle app: nginx's
//! workers of the configuration before the last switch may still be
//! proxying a slow download or a long poll to it. Both drain the same way
//! ([`drain`]): one bound (`nginx.drain_timeout_secs`) for nginx's previous
//! workers and then the app's own connections, and past it
//! `app.retire_busy` decides: stop anyway, saying how many connections that
//! cuts, or keep the app and fail. An upstream pair whose upstream keeps a
//! pool of connections (which never drains while the old app runs) is not
//! waited for: nonstop accepts such a pool only where nginx resends what the
//! old app's shutdown cuts (the mode's `drain_note`).
//!
//! Every line goes through the caller's log (`ctx.log`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use crate::config::Profile;
use crate::config::RetireBusy;
use crate::route;
use crate::state::context::Context;
use crate::sys::procs;
use crate::sys::signals;
use crate::sys::time::secs;

/// Who drains an app, for the words of its lines and its history outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// `switch` (or `health`) retiring the app that was live before.
    Retiring,
    /// `stop` stopping the idle app.
    Stopping,
}

impl Why {
    fn verb(self) -> &'static str {
        match self {
            Why::Retiring => "retiring",
            Why::Stopping => "stopping",
        }
    }

    fn nothing(self) -> &'static str {
        match self {
            Why::Retiring => "nothing was retired",
            Why::Stopping => "nothing was stopped",
        }
    }

    /// The history outcome of a stop that cut connections.
    fn outcome(self) -> &'static str {
        match self {
            Why::Retiring => "retired-cutting-connections",
            Why::Stopping => "stopped-cutting-connections",
        }
    }
}

/// Waits until nginx has let go of `who`'s app, within one bound
/// (`nginx.drain_timeout_secs`) for both waits: first `old_workers`, the
/// workers of nginx's previous configuration, exit (they may still be
/// proxying a request to it; where they cannot be seen, as on a remote
/// nginx or in upstream-pair mode, there are none to wait for), then no
/// connection to `who`'s port is left (its own established sockets,
/// counted). Past the bound `app.retire_busy` decides: "stop" goes on,
/// saying how many connections were still open, and returns the history
/// outcome to record (`retired-cutting-connections`, for `stop`
/// `stopped-cutting-connections`, with the count); "fail" is an error, and
/// nothing is signalled. Says what it waited for either way.
pub(crate) fn drain(
    ctx: &Context,
    who: &Profile,
    old_workers: Option<Vec<i32>>,
    why: Why,
) -> Result<Option<(String, u64)>> {
    let limit = ctx.config.nginx.drain_timeout;
    let port = who.port;
    let started = Instant::now();
    // Looked for and none found: said with the connections below.
    let no_workers = old_workers.as_ref().is_some_and(Vec::is_empty);
    if let Some(workers) = old_workers.filter(|w| !w.is_empty()) {
        wait_old_workers(ctx, who, &workers, limit, why)?;
    }
    if let Some(note) = route::of(&ctx.config).drain_note(port) {
        ctx.log.say(format!("{} {}: {note}", why.verb(), who.name));
        return Ok(None);
    }
    // The app's own sockets on its port: nginx's connections to it (requests
    // in flight, kept-alive ones), nobody else's. In upstream-pair mode
    // nginx still sends it new requests while it listens; the wait ends at
    // the first moment none is open, and one that arrives after is the
    // app's own SIGTERM drain to finish.
    let holders = procs::listening(port).map(|l| l.pids).unwrap_or_default();
    let open = || procs::established_by(port, &holders).unwrap_or(0);
    let left = limit.saturating_sub(started.elapsed());
    let now_open = open();
    if now_open == 0 {
        ctx.log.say(format!(
            "{} {}: {}no connection to {port} is open{}",
            why.verb(),
            who.name,
            if no_workers {
                "no previous nginx worker is left and "
            } else {
                ""
            },
            if started.elapsed() > Duration::from_millis(20) {
                format!(" after {}", secs(started.elapsed()))
            } else {
                String::new()
            }
        ));
        return Ok(None);
    }
    ctx.log.say(format!(
        "{} {}: waiting for no connection to {port} to be left ({now_open} open now; at most {} more)",
        why.verb(),
        who.name,
        secs(left)
    ));
    let drained = signals::wait_for(left, Duration::from_millis(10), || open() == 0)
        .context(why.nothing())?;
    if drained.is_some() {
        ctx.log.say(format!(
            "no connection to {port} is left after {}",
            secs(started.elapsed())
        ));
        return Ok(None);
    }
    let busy = open();
    let plural = if busy == 1 { "" } else { "s" };
    if ctx.config.app.retire_busy == RetireBusy::Fail {
        return Err(anyhow!(
            "{} still has {busy} connection{plural} open on {port} after {} (nginx.drain_timeout_secs), \
             and app.retire_busy is \"fail\": it is kept running, nothing was signalled",
            who.name,
            secs(limit)
        ));
    }
    ctx.log.warn(format!(
        "{} still has {busy} connection{plural} open on {port} after {} (nginx.drain_timeout_secs); \
         stopping it anyway (app.retire_busy \"stop\"): SIGTERM, and SIGKILL after {} cuts whatever is still open",
        who.name,
        secs(limit),
        secs(ctx.config.app.stop_timeout)
    ));
    Ok(Some((why.outcome().to_string(), busy as u64)))
}

/// Waits, at most `limit`, for the workers of nginx's previous
/// configuration to exit: until then they may still be proxying a request to
/// the app. Past the bound it warns and the drain goes on.
fn wait_old_workers(
    ctx: &Context,
    who: &Profile,
    workers: &[i32],
    limit: Duration,
    why: Why,
) -> Result<()> {
    ctx.log.say(format!(
        "{} {}: waiting for nginx's previous workers (pids {workers:?}) to finish their requests (at most {})",
        why.verb(),
        who.name,
        secs(limit)
    ));
    match signals::wait_for(limit, Duration::from_millis(10), || {
        workers.iter().all(|&w| !procs::is_alive(w))
    })
    .context(why.nothing())?
    {
        Some(t) => ctx
            .log
            .say(format!("nginx's previous workers exited after {}", secs(t))),
        None => ctx.log.warn(format!(
            "nginx's previous workers (pids {workers:?}) still run after {}",
            secs(limit)
        )),
    }
    Ok(())
}

/// `--dry-run`: what [`drain`] would wait for, as things are now.
pub(crate) fn say_would_drain(ctx: &Context, who: &Profile, old_workers: &[i32], why: Why) {
    let port = who.port;
    let holders = procs::listening(port).map(|l| l.pids).unwrap_or_default();
    let open = procs::established_by(port, &holders).unwrap_or(0);
    let workers = if old_workers.is_empty() {
        "no previous nginx worker is left".to_string()
    } else {
        format!("nginx's previous workers (pids {old_workers:?})")
    };
    ctx.log.say(format!(
        "{} {}: would first wait, at most {} (nginx.drain_timeout_secs), for {workers} and for no connection to {port} to be left ({open} open now)",
        why.verb(),
        who.name,
        secs(ctx.config.nginx.drain_timeout)
    ));
}
