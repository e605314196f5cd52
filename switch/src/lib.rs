//! `switch`: point nginx at a profile and prove it took.
//!
//! The book's switch.sh writes the include with `tee` and runs
//! `service nginx reload`, trusting both. Here:
//! 1. the include is written atomically (temp file, fsync, rename);
//! 2. `nginx.test` runs; if it fails the previous include is put back byte
//!    for byte and nginx is never reloaded;
//! 3. `nginx.reload` runs;
//! 4. the probe through nginx is polled until it answers as the target,
//!    because a reload returns before the new workers take over and can exit
//!    0 even when the new config did not take. If the answer never comes the
//!    previous include is restored and nginx reloaded again;
//! 5. the active and previous profile are recorded in `switch.json`.
//!
//! A journal in the state directory (see `nonstop_common::nginx`) lets the
//! next stage finish or undo a switch this process could not (SIGKILL). A
//! SIGINT/SIGTERM is honoured between steps: before the include is written
//! the switch just does not happen; after, the previous include is restored
//! (and nginx reloaded if it had been), and the stage exits 128 + signal.
//!
//! `--rollback` points nginx back at the other profile, the one it routed
//! to before, once that profile's app still passes the health rule.
//!
//! The same sequence serves every route (`nonstop_common::route`): the
//! include file, or a symlink between site files, on this host or over ssh.
//! In upstream-pair mode nginx is not touched: the switch waits until nginx
//! sends the new app requests. With `app.retire` (always in that mode) the
//! previous app is stopped once nginx has let go of it.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;

use nonstop_common::config::Mode;
use nonstop_common::detect::{self, Probe};
use nonstop_common::procs;
use nonstop_common::route;
use nonstop_common::state::Switched;
use nonstop_common::time::{now_unix_ms, secs};
use nonstop_common::{nginx, signals};
use nonstop_common::{run_stage, CommonArgs, Config, Context, Log, Profile};

pub const LOG: Log = Log::new("switch");

/// How long the probe must answer the target without a break to confirm a
/// switch when nginx's workers cannot be seen: longer than the ~100 ms nginx
/// keeps the previous workers accepting after a reload.
const BLIND_CONFIRM: Duration = Duration::from_millis(300);

/// In upstream-pair mode, how long at least to wait for nginx to send the
/// new app a request: more than nginx's default fail_timeout (10 s).
const PAIR_CONFIRM_MIN: Duration = Duration::from_secs(30);

/// Point nginx at a profile (default: the idle one), test, reload and confirm
/// through nginx; restore the previous include on any failure.
#[derive(Debug, Parser)]
#[command(name = "switch", version = nonstop_common::VERSION, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Profile to route to [default: the idle one]
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,

    /// Route back to the profile nginx routed to before the last switch, if it still passes the health rule
    #[arg(long, conflicts_with = "to")]
    pub rollback: bool,
}

/// Entry point of the `switch` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    run_stage(LOG, &args.common, args.to.as_deref(), |ctx| {
        let target = if args.rollback {
            rollback_target(ctx)?
        } else {
            ctx.target(args.to.as_deref())?
        };
        if ctx.dry_run {
            return dry_run(ctx, &target);
        }
        switch_and_retire(ctx, &target)
    })
}

/// What a deployment's last step does: switch to `target` and, when the
/// config says so (`app.retire`, always in upstream-pair mode), retire the
/// app that was live before. The deployment is complete once the switch is;
/// a retiring that fails is still an error (exit 1) naming what to run.
pub fn switch_and_retire(ctx: &mut Context, target: &Profile) -> Result<()> {
    let old_workers = switch_to(ctx, target)?;
    ctx.completes_deployment = true;
    let previous = ctx.slots.live.clone().filter(|p| p != target);
    match previous {
        Some(previous) if ctx.config.app.retire => {
            retire(ctx, &previous, target, old_workers).with_context(|| {
                format!(
                    "nginx routes to {} as it should, but retiring {} failed; it still runs. Stop it with `stop --profile {}`",
                    target.name, previous.name, previous.name
                )
            })
        }
        _ => Ok(()),
    }
}

/// Stops the app that was live, once nginx has let go of it: the workers of
/// nginx's previous configuration have exited (they may still be proxying a
/// request to it), or, where they cannot be seen (a remote nginx, no pid
/// file), no connection to its port is left. Bounded by `nginx.drain_timeout_secs`;
/// the app then gets SIGTERM and finishes what it still has in flight.
fn retire(
    ctx: &Context,
    previous: &Profile,
    live: &Profile,
    old_workers: Option<Vec<i32>>,
) -> Result<()> {
    if ctx.config.nginx.mode == Mode::UpstreamPair {
        // nginx balances over both ports: it sends no new request to a port
        // that refuses, and the app drains what it has on SIGTERM.
        LOG.say(format!(
            "retiring {} ({}): nginx's upstream moves its requests to {} once the port refuses",
            previous.name, previous.port, live.name
        ));
    } else if let Some(workers) = old_workers.filter(|w| !w.is_empty()) {
        drain(
            ctx,
            previous,
            &format!("nginx's previous workers (pids {workers:?}) to finish their requests"),
            "nginx's previous workers exited",
            || workers.iter().all(|&w| !procs::is_alive(w)),
        )?;
    } else {
        drain(
            ctx,
            previous,
            &format!("no connection to {} to be left", previous.port),
            &format!("no connection to {} is left", previous.port),
            || procs::established(previous.port).is_ok_and(|n| n == 0),
        )?;
    }
    nonstop_stop::stop_profile(ctx, previous, Some(live), false)
}

/// Waits, at most `nginx.drain_timeout_secs`, until `let_go` holds: nginx
/// no longer needs `previous`. Past the bound it warns and lets the stop go
/// ahead (the app finishes its requests in flight on SIGTERM).
fn drain(
    ctx: &Context,
    previous: &Profile,
    waiting_for: &str,
    done: &str,
    let_go: impl FnMut() -> bool,
) -> Result<()> {
    let limit = ctx.config.nginx.drain_timeout;
    LOG.say(format!(
        "retiring {}: waiting for {waiting_for}",
        previous.name
    ));
    match signals::wait_for(limit, Duration::from_millis(10), let_go)
        .context("nothing was retired")?
    {
        Some(t) => LOG.say(format!("{done} after {}", secs(t))),
        None => LOG.warn(format!(
            "still waiting for {waiting_for} after {}; retiring {} anyway (it finishes its requests in flight on SIGTERM)",
            secs(limit),
            previous.name
        )),
    }
    Ok(())
}

/// The profile to roll back to: the one that is not live now, provided its
/// app still answers as itself. Refuses (changing nothing) otherwise.
fn rollback_target(ctx: &Context) -> Result<Profile> {
    let config = &ctx.config;
    let live = detect::detect(config)
        .context("cannot tell which profile is live, so there is nothing to roll back from; use `switch --to NAME`")?
        .live
        .ok_or_else(|| anyhow!("nothing is live yet, so there is nothing to roll back from"))?;
    let back = config.other(&live).clone();
    let recorded: Option<Switched> = ctx.state.read(&ctx.state.switched_path(), &LOG)?;
    match recorded {
        Some(r) if r.active == live && r.previous.as_ref() == Some(&back) => LOG.say(format!(
            "the last switch went from {} to {}; rolling back to {}",
            back.name, live.name, back.name
        )),
        _ => LOG.say(format!(
            "{} is live; rolling back to the other profile, {}",
            live.name, back.name
        )),
    }
    detect::check_health(config, &back).map_err(|why| {
        anyhow!(
            "refusing to roll back to {} ({}): {} does not answer {} ({why}); nginx still routes to {}, nothing was changed. Start it first (`start --profile {}`, `health --profile {} --no-switch`)",
            back.name,
            back.port,
            detect::health_url(config, &back),
            detect::health_words(config, &back),
            live.name,
            back.name,
            back.name
        )
    })?;
    LOG.say(format!("{} still answers as itself", back.name));
    Ok(back)
}

/// What a switch to `target` would do, printed and not done.
pub fn dry_run(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    if config.nginx.mode == Mode::UpstreamPair {
        LOG.say(format!(
            "upstream-pair mode: would leave nginx as it is and check that {} answers",
            detect::health_url(config, target)
        ));
    } else {
        let new = route::content_for(config, target);
        let old = route::read(config)?;
        if old.as_deref() == Some(new.as_slice()) {
            LOG.say(format!(
                "would leave {} as it is: it already routes to {} ({})",
                route::describe(config),
                target.name,
                target.port
            ));
        } else {
            LOG.say(format!(
                "would write {}: {}",
                route::describe(config),
                String::from_utf8_lossy(&new).trim()
            ));
        }
        LOG.say(format!("would run `{}`", config.nginx.test.join(" ")));
        LOG.say(format!("would run `{}`", config.nginx.reload.join(" ")));
        LOG.say(format!(
            "would wait at most {} for {} to answer {}",
            secs(config.nginx.confirm_timeout),
            config.probe_url,
            target.name
        ));
    }
    if let Some(previous) = ctx.slots.live.as_ref().filter(|p| *p != target) {
        if config.app.retire {
            LOG.say(format!(
                "would then retire {} ({}): wait at most {} for nginx to let go of it, then stop it",
                previous.name,
                previous.port,
                secs(config.nginx.drain_timeout)
            ));
        }
    }
    Ok(())
}

/// Routes nginx to `target`; on any failure nginx's config is left as it was.
/// Returns the nginx workers of the configuration before (when they could be
/// seen), for [`retire`].
pub fn switch_to(ctx: &Context, target: &Profile) -> Result<Option<Vec<i32>>> {
    let config = &ctx.config;
    if config.nginx.mode == Mode::UpstreamPair {
        // Nothing to point: the upstream already lists the target's port.
        // Health checked it on its port; check once more right now.
        detect::check_health(config, target).map_err(|why| {
            anyhow!(
                "{} does not answer {} now ({why}); nothing was changed",
                detect::health_url(config, target),
                detect::health_words(config, target)
            )
        })?;
        // nginx takes a server that refused a request out of rotation for
        // its fail_timeout (10 s by default), and the new app's port refused
        // until a moment ago: retiring the old app before nginx sends the new
        // one traffic would leave it with no server to send to (502).
        if ctx.slots.live.as_ref().is_some_and(|l| l != target) {
            wait_out_fail_timeout(ctx, target)?;
        }
        let limit = config.nginx.confirm_timeout.max(PAIR_CONFIRM_MIN);
        let mut last = String::new();
        let sent = signals::wait_for(limit, Duration::from_millis(20), || {
            match detect::probe(config) {
                Probe::Answered(p) if &p == target => true,
                Probe::Answered(p) => {
                    last = format!("it answered as {}", p.name);
                    false
                }
                Probe::Failed(why) => {
                    last = why;
                    false
                }
            }
        })
        .context("nothing was changed")?;
        let Some(after) = sent else {
            return Err(anyhow!(
                "{} answers on its port, but nginx did not send it a request within {} ({} {last}); \
                 nothing was changed. Is its port in nginx's upstream?",
                target.name,
                secs(limit),
                config.probe_url
            ));
        };
        LOG.say(format!(
            "upstream-pair mode: nginx sends requests to {} ({}) after {}; nginx itself needs no change",
            target.name,
            target.port,
            secs(after)
        ));
        record(ctx, target)?;
        return Ok(None);
    }
    let new = route::content_for(config, target);
    let old = route::read(config)?;

    if old.as_deref() == Some(new.as_slice())
        && matches!(detect::probe(config), Probe::Answered(ref p) if p == target)
    {
        LOG.say(format!(
            "nginx already routes to {} ({}); nothing to do",
            target.name, target.port
        ));
        record(ctx, target)?;
        return Ok(None);
    }
    signals::check().context("nothing was changed")?;

    nginx::begin(
        &ctx.state,
        target,
        old.as_deref(),
        ctx.deployment_id.as_deref(),
    )
    .context("nothing was changed")?;
    let result = transaction(ctx, target, &new, old.as_deref());
    // The journal goes once the include is settled: the new one confirmed,
    // or the old one back. If putting it back failed, the journal stays so
    // the next stage tries again.
    let settled = result.is_ok() || route::read(config).ok().flatten() == old;
    if settled {
        nginx::end(&ctx.state, &LOG);
    }
    let old_workers = result?;
    record(ctx, target)?;
    Ok(old_workers)
}

/// Upstream-pair mode, before the switch counts as done: each nginx worker keeps its
/// own record of a server that refused (no `zone`), and skips it for
/// `fail_timeout` after the last refusal. The new app refused until it
/// listened, so a worker that has not sent it a request since may still
/// skip it; if the old app went now, that worker would have no server left
/// and answer 502 (measured: it does). Once `fail_timeout` has passed since
/// the new app answered, every worker tries it again. With `max_fails=0` on
/// the servers nginx never skips one, and `nginx.fail_timeout_secs: 0` makes
/// this wait nothing.
fn wait_out_fail_timeout(ctx: &Context, target: &Profile) -> Result<()> {
    if ctx.config.nginx.fail_timeout.is_zero() {
        return Ok(());
    }
    // nginx compares in whole seconds (`now - checked <= fail_timeout` on
    // its cached clock), so a server can stay skipped for up to a second
    // longer than fail_timeout.
    let window = ctx.config.nginx.fail_timeout + Duration::from_millis(1200);
    LOG.say(format!(
        "waiting {} (nginx's fail_timeout, `nginx.fail_timeout_secs`, plus its clock's second) so that every nginx worker sends to {} again before the old app may go",
        secs(window),
        target.name
    ));
    signals::pause(window).context("nothing was changed")?;
    detect::check_health(&ctx.config, target).map_err(|why| {
        anyhow!(
            "{} stopped answering ({why}) while waiting; the old app is kept",
            target.name
        )
    })
}

/// Write, test, reload, confirm; undo on any failure or signal. Returns the
/// workers of the previous configuration, when they could be seen.
fn transaction(
    ctx: &Context,
    target: &Profile,
    new: &[u8],
    old: Option<&[u8]>,
) -> Result<Option<Vec<i32>>> {
    let config = &ctx.config;
    if let Err(e) = route::write(config, new) {
        return Err(e.context("nothing changed"));
    }
    LOG.say(format!(
        "wrote {}: {}",
        route::describe(config),
        String::from_utf8_lossy(new).trim()
    ));

    let tested = nginx::test(config);
    if let Err(why) = tested {
        nginx::restore(config, old, &LOG)?;
        return Err(anyhow!(
            "`{}` failed, nginx was not reloaded and {} is restored: {why}",
            config.nginx.test.join(" "),
            route::describe(config)
        ));
    }
    LOG.say(format!("`{}` passed", config.nginx.test.join(" ")));
    if let Err(i) = signals::check() {
        nginx::restore(config, old, &LOG)?;
        return Err(anyhow!(i).context(format!(
            "{} is restored and nginx was not reloaded",
            route::describe(config)
        )));
    }

    let old_workers = accepting_workers(config);
    let reloaded_at = Instant::now();
    if let Err(why) = nginx::reload(config) {
        nginx::restore(config, old, &LOG)?;
        return Err(anyhow!(
            "`{}` failed and {} is restored: {why}",
            config.nginx.reload.join(" "),
            route::describe(config)
        ));
    }
    LOG.say(format!(
        "`{}` done; waiting for nginx to answer as {}",
        config.nginx.reload.join(" "),
        target.name
    ));

    // Confirmed when no worker of the old configuration can take a connection
    // any more and a new connection through nginx reaches the target. nginx
    // keeps old workers accepting for ~100 ms after it starts the new ones,
    // so one good answer alone does not prove the next request goes there too.
    // Where the workers cannot be seen (nginx on another host, no pid
    // file), the probe must answer the target without a break for longer
    // than nginx keeps old workers accepting.
    let mut last = String::new();
    let mut streak: Option<Instant> = None;
    let confirmed = signals::wait_for(
        config.nginx.confirm_timeout,
        Duration::from_millis(10),
        || {
            if let Some(w) = old_workers.iter().flatten().find(|&&w| still_accepting(w)) {
                last =
                    format!("worker {w} of the previous configuration still accepts connections");
                return false;
            }
            match detect::probe(config) {
                Probe::Answered(p) if &p == target => {
                    if old_workers.is_some() {
                        return true;
                    }
                    let since = *streak.get_or_insert_with(Instant::now);
                    last = format!(
                        "it answers {} but only for {}",
                        p.name,
                        secs(since.elapsed())
                    );
                    since.elapsed() >= BLIND_CONFIRM
                }
                Probe::Answered(p) => {
                    streak = None;
                    last = format!("it answered {}", p.name);
                    false
                }
                Probe::Failed(why) => {
                    streak = None;
                    last = why;
                    false
                }
            }
        },
    );
    match confirmed {
        Ok(Some(_)) => {
            let how = if old_workers.is_some() {
                "the old workers stopped accepting and the probe answers"
            } else {
                "the probe answers without a break"
            };
            LOG.say(format!(
                "nginx routes to {} ({}): confirmed {} after the reload ({how})",
                target.name,
                target.port,
                secs(reloaded_at.elapsed())
            ));
            Ok(old_workers)
        }
        Ok(None) => {
            nginx::restore(config, old, &LOG)?;
            let back = nginx::reload_previous(config);
            Err(anyhow!(
                "nginx did not answer as {} within {} of the reload ({last}); {} is restored and {back}",
                target.name,
                secs(config.nginx.confirm_timeout),
                route::describe(config)
            ))
        }
        Err(i) => {
            nginx::restore(config, old, &LOG)?;
            let back = nginx::reload_previous(config);
            Err(anyhow!(i).context(format!(
                "the switch to {} was undone: {} is restored and {back}",
                target.name,
                route::describe(config)
            )))
        }
    }
}

/// The nginx workers that accept connections now: the master's children
/// (found through its pid file) titled "worker process". `None`, with a
/// warning, when they cannot be seen; then only the probe confirms a switch.
///
/// Only /proc/PID/stat and /proc/PID/cmdline are read, which any user may,
/// so this works when the hooks run as the deploy user and nginx's workers
/// as www-data.
fn accepting_workers(config: &Config) -> Option<Vec<i32>> {
    if config.nginx.ssh.is_some() {
        // Its processes are on the other host.
        return None;
    }
    let pid_file = config.nginx.pid_file.as_ref()?;
    let master = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&pid| procs::is_alive(pid));
    let Some(master) = master else {
        LOG.warn(format!(
            "cannot read a running nginx master's pid from {}; confirming through the probe alone \
             (set nginx.pid_file, or \"\" to silence this)",
            pid_file.display()
        ));
        return None;
    };
    let workers: Vec<i32> = procs::children(master)
        .into_iter()
        .filter(|&w| still_accepting(w))
        .collect();
    if workers.is_empty() {
        LOG.warn(format!(
            "nginx master {master} has no worker process this user can see; confirming through the probe alone"
        ));
        return None;
    }
    Some(workers)
}

/// An nginx worker accepts until it exits or takes the shutdown signal: its
/// title then turns to "worker process is shutting down", set just before it
/// closes its listening sockets.
fn still_accepting(worker: i32) -> bool {
    let title = procs::cmdline(worker);
    procs::is_alive(worker) && title.contains("worker process") && !title.contains("shutting down")
}

fn record(ctx: &Context, target: &Profile) -> Result<()> {
    let previous = ctx.slots.live.clone().filter(|p| p != target);
    let record = Switched {
        active: target.clone(),
        previous,
        switched_unix_ms: now_unix_ms(),
        deployment_id: ctx.deployment_id.clone(),
    };
    ctx.state.write(&ctx.state.switched_path(), &record)
}
