//! Retiring the app that was live before a switch: waiting until nginx has
//! let go of it (its previous workers gone, then no connection to the old
//! app's port left), then stopping it.
//!
//! The book never stops the old app, and a deployment that did at once would
//! cut the requests nginx's previous workers are still proxying to it. Here
//! both waits share one bound (`nginx.drain_timeout_secs`), and past it
//! `app.retire_busy` decides: stop anyway, saying how many connections that
//! cuts, or keep the app and fail.
//!
//! Every line goes through the caller's log (`ctx.log`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use crate::config::RetireBusy;
use crate::procs;
use crate::signals;
use crate::stopping;
use crate::time::secs;
use crate::{Context, Profile};

/// Stops the app that was live, once nginx has let go of it, within one
/// bound (`nginx.drain_timeout_secs`) for both waits: first the workers of
/// nginx's previous configuration exit (they may still be proxying a request
/// to it; where they cannot be seen, as on a remote nginx or in
/// upstream-pair mode, there are none to wait for), then no connection to
/// the old app's port is left (its own established sockets, counted). Past
/// the bound `app.retire_busy` decides: "stop" stops it anyway, says how
/// many connections were still open and records
/// `retired-cutting-connections`; "fail" keeps it running and fails.
pub fn retire(
    ctx: &mut Context,
    previous: &Profile,
    live: &Profile,
    old_workers: Option<Vec<i32>>,
) -> Result<()> {
    let limit = ctx.config.nginx.drain_timeout;
    let port = previous.port;
    let started = Instant::now();
    if let Some(workers) = old_workers.filter(|w| !w.is_empty()) {
        wait_old_workers(ctx, previous, &workers, limit)?;
    }
    // The app's own sockets on its port: nginx's connections to it (requests
    // in flight, kept-alive ones), nobody else's. In upstream-pair mode
    // nginx still sends it new requests while it listens; the wait ends at
    // the first moment none is open, and one that arrives after is the
    // app's own SIGTERM drain to finish.
    let holders = procs::listening(port).map(|l| l.pids).unwrap_or_default();
    let open = || procs::established_by(port, &holders).unwrap_or(0);
    let left = limit.saturating_sub(started.elapsed());
    ctx.log.say(format!(
        "retiring {}: waiting for no connection to {port} to be left ({} open now; at most {} more)",
        previous.name,
        open(),
        secs(left)
    ));
    let drained = signals::wait_for(left, Duration::from_millis(10), || open() == 0)
        .context("nothing was retired")?;
    match drained {
        Some(_) => ctx.log.say(format!(
            "no connection to {port} is left after {}",
            secs(started.elapsed())
        )),
        None => {
            let busy = open();
            let plural = if busy == 1 { "" } else { "s" };
            if ctx.config.app.retire_busy == RetireBusy::Fail {
                return Err(anyhow!(
                    "{} still has {busy} connection{plural} open on {port} after {} (nginx.drain_timeout_secs), \
                     and app.retire_busy is \"fail\": it is kept running, nothing was signalled",
                    previous.name,
                    secs(limit)
                ));
            }
            ctx.log.warn(format!(
                "{} still has {busy} connection{plural} open on {port} after {} (nginx.drain_timeout_secs); \
                 stopping it anyway (app.retire_busy \"stop\"): SIGTERM, and SIGKILL after {} cuts whatever is still open",
                previous.name,
                secs(limit),
                secs(ctx.config.app.stop_timeout)
            ));
            ctx.outcome = Some(("retired-cutting-connections".to_string(), busy as u64));
        }
    }
    stopping::stop_profile(ctx, previous, Some(live), false)
}

/// Waits, at most `limit`, for the workers of nginx's previous
/// configuration to exit: until then they may still be proxying a request to
/// the old app. Past the bound it warns and the retiring goes on.
fn wait_old_workers(
    ctx: &Context,
    previous: &Profile,
    workers: &[i32],
    limit: Duration,
) -> Result<()> {
    ctx.log.say(format!(
        "retiring {}: waiting for nginx's previous workers (pids {workers:?}) to finish their requests (at most {})",
        previous.name,
        secs(limit)
    ));
    match signals::wait_for(limit, Duration::from_millis(10), || {
        workers.iter().all(|&w| !procs::is_alive(w))
    })
    .context("nothing was retired")?
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
