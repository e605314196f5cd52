//! The switch: pointing nginx at a profile and proving it took, as `switch`
//! and `health` (its last step) run it.
//!
//! The book's switch.sh writes the include with `tee` and runs
//! `service nginx reload`, trusting both, so a failed `nginx -t` or a reload
//! that did not take leaves nginx routing who knows where. Here the route is
//! a transaction: written atomically, `nginx.test`, `nginx.reload`, then
//! confirmed through nginx itself (the old workers no longer accepting and
//! the probe answering as the target); any failure or signal puts the
//! previous route back byte for byte, and a journal (`crate::nginx`) lets
//! the next stage finish or undo a switch this process could not.
//!
//! In upstream-pair mode nginx is not touched: the switch waits until nginx
//! sends the new app requests, after the window in which nginx may still
//! skip its server (`fail_timeout`), and a build that fails is withdrawn
//! (stopped), since it is in nginx's rotation as soon as it listens.
//!
//! Every line goes through the caller's log (`ctx.log`): `health` switching
//! prints `health: ...`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use crate::config::{Mode, RetireBusy};
use crate::detect::{self, Probe};
use crate::health_rule;
use crate::nginx::{self, Phase};
use crate::retiring;
use crate::route;
use crate::signals;
use crate::state::Switched;
use crate::stopping;
use crate::time::{now_unix_ms, secs};
use crate::upstream;
use crate::{Context, Profile};

/// In upstream-pair mode, how long at least to wait for nginx to send the
/// new app a request: more than nginx's default fail_timeout (10 s).
const PAIR_CONFIRM_MIN: Duration = Duration::from_secs(30);

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
            retiring::retire(ctx, &previous, target, old_workers).with_context(|| {
                format!(
                    "nginx routes to {} as it should, but retiring {} failed; it still runs. Stop it with `stop --profile {}`",
                    target.name, previous.name, previous.name
                )
            })
        }
        _ => Ok(()),
    }
}

/// Upstream-pair mode: an app that listens is in nginx's upstream, so a
/// build that failed its health check or the confirmation would go on
/// serving part of the requests. It is stopped at once, and `failure` says
/// so (or that stopping it failed too, and what to run). In the other modes,
/// for the live profile, and in a dry run, `failure` is returned as it is.
pub fn withdraw_failed(ctx: &Context, target: &Profile, failure: anyhow::Error) -> anyhow::Error {
    if ctx.config.nginx.mode != Mode::UpstreamPair
        || ctx.dry_run
        || ctx.slots.live.as_ref() == Some(target)
    {
        return failure;
    }
    ctx.log.warn(format!(
        "{} failed ({failure:#}); upstream-pair mode: it is in nginx's upstream while it listens, so it is stopped now",
        target.name
    ));
    match stopping::withdraw_profile(ctx, target, ctx.slots.live.as_ref()) {
        Ok(()) => failure.context(format!(
            "{} ({}) failed and was stopped: nginx's upstream no longer sends it requests{}",
            target.name,
            target.port,
            ctx.slots
                .live
                .as_ref()
                .map(|l| format!(", {} serves them all as before", l.name))
                .unwrap_or_default()
        )),
        Err(e) => failure.context(format!(
            "{} ({}) failed, and stopping it failed too ({e:#}): it is still in nginx's upstream and serves part of the requests; \
             stop it now with `stop --profile {}`",
            target.name, target.port, target.name
        )),
    }
}

/// The profile to roll back to: the one that is not live now, provided its
/// app still answers as itself. Refuses (changing nothing) otherwise.
pub fn rollback_target(ctx: &Context) -> Result<Profile> {
    let config = &ctx.config;
    let live = detect::detect(config)
        .context("cannot tell which profile is live, so there is nothing to roll back from; use `switch --to NAME`")?
        .live
        .ok_or_else(|| anyhow!("nothing is live yet, so there is nothing to roll back from"))?;
    let back = config.other(&live).clone();
    let recorded: Option<Switched> = ctx.state.read(&ctx.state.switched_path(), &ctx.log)?;
    match recorded {
        Some(r) if r.active == live && r.previous.as_ref() == Some(&back) => ctx.log.say(format!(
            "the last switch went from {} to {}; rolling back to {}",
            back.name, live.name, back.name
        )),
        _ => ctx.log.say(format!(
            "{} is live; rolling back to the other profile, {}",
            live.name, back.name
        )),
    }
    health_rule::check_health(config, &back).map_err(|why| {
        anyhow!(
            "refusing to roll back to {} ({}): {} does not answer {} ({why}); nginx still routes to {}, nothing was changed. Start it first (`start --profile {}`, `health --profile {} --no-switch`)",
            back.name,
            back.port,
            health_rule::health_url(config, &back),
            health_rule::health_words(config, &back),
            live.name,
            back.name,
            back.name
        )
    })?;
    ctx.log
        .say(format!("{} still answers as itself", back.name));
    Ok(back)
}

/// What a switch to `target` would do, printed and not done.
pub fn dry_run(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    if config.nginx.mode == Mode::UpstreamPair {
        ctx.log.say(format!(
            "upstream-pair mode: would leave nginx as it is and check that {} answers",
            health_rule::health_url(config, target)
        ));
    } else {
        let new = route::content_for(config, target);
        let old = route::read(config)?;
        if old.as_deref() == Some(new.as_slice()) {
            ctx.log.say(format!(
                "would leave {} as it is: it already routes to {} ({})",
                route::describe(config),
                target.name,
                target.port
            ));
        } else {
            ctx.log.say(format!(
                "would write {}: {}",
                route::describe(config),
                String::from_utf8_lossy(&new).trim()
            ));
        }
        ctx.log
            .say(format!("would run `{}`", config.nginx.test.join(" ")));
        ctx.log
            .say(format!("would run `{}`", config.nginx.reload.join(" ")));
        ctx.log.say(format!(
            "would wait at most {} for {} to answer {}",
            secs(config.nginx.confirm_timeout),
            config.probe_url,
            target.name
        ));
    }
    if let Some(previous) = ctx.slots.live.as_ref().filter(|p| *p != target) {
        if config.app.retire {
            ctx.log.say(format!(
                "would then retire {} ({}): wait at most {} for nginx's previous workers and then for no connection to {} to be left, then stop it{}",
                previous.name,
                previous.port,
                secs(config.nginx.drain_timeout),
                previous.port,
                match config.app.retire_busy {
                    RetireBusy::Stop => " (past that bound: anyway, saying how many connections it cuts)",
                    RetireBusy::Fail => " (past that bound: keep it and fail)",
                }
            ));
        }
    }
    Ok(())
}

/// Routes nginx to `target`; on any failure nginx's config is left as it was.
/// Returns the nginx workers of the configuration before (when they could be
/// seen), for [`retiring::retire`].
pub fn switch_to(ctx: &Context, target: &Profile) -> Result<Option<Vec<i32>>> {
    let config = &ctx.config;
    if config.nginx.mode == Mode::UpstreamPair {
        return confirm_pair(ctx, target)
            .map_err(|e| withdraw_failed(ctx, target, e))
            .map(|()| None);
    }
    let new = route::content_for(config, target);
    let old = route::read(config)?;

    if old.as_deref() == Some(new.as_slice())
        && matches!(detect::probe(config), Probe::Answered(ref p) if p == target)
    {
        ctx.log.say(format!(
            "nginx already routes to {} ({}); nothing to do",
            target.name, target.port
        ));
        record(ctx, target)?;
        return Ok(None);
    }
    signals::check().context("nothing was changed")?;

    let journal = nginx::begin(
        config,
        &ctx.state,
        target,
        old.as_deref(),
        ctx.deployment_id.as_deref(),
    )
    .context("nothing was changed")?;
    // The transaction ends the journal once the include is settled and
    // nginx is seen to serve it (the new one confirmed, or the old one back);
    // otherwise the journal stays, so the next stage settles it.
    let old_workers = transaction(ctx, journal, target, &new, old.as_deref())?;
    record(ctx, target)?;
    Ok(old_workers)
}

/// Upstream-pair mode: nothing to point, the upstream already lists the
/// target's port. Checks it once more and waits until nginx sends it
/// requests, then records it as live.
fn confirm_pair(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    // Nothing to point: the upstream already lists the target's port.
    // Health checked it on its port; check once more right now.
    health_rule::check_health(config, target).map_err(|why| {
        anyhow!(
            "{} does not answer {} now ({why})",
            health_rule::health_url(config, target),
            health_rule::health_words(config, target)
        )
    })?;
    // nginx takes a server that refused a request out of rotation for
    // its fail_timeout (10 s by default), and the new app's port refused
    // until a moment ago: retiring the old app before nginx sends the new
    // one traffic would leave it with no server to send to (502).
    if ctx.slots.live.as_ref().is_some_and(|l| l != target) {
        let window = skip_window(ctx, target)?;
        wait_out_fail_timeout(ctx, target, window)?;
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
             is its port in nginx's upstream?",
            target.name,
            secs(limit),
            config.probe_url
        ));
    };
    ctx.log.say(format!(
        "upstream-pair mode: nginx sends requests to {} ({}) after {}; nginx itself needs no change",
        target.name,
        target.port,
        secs(after)
    ));
    record(ctx, target)
}

/// How long nginx may still skip the target's server: what nginx's own
/// upstream says (`fail_timeout`, nothing with `max_fails=0`), with a note
/// when that differs from `nginx.fail_timeout_secs`; the config's value when
/// the upstream cannot be read. An upstream nonstop cannot reason about
/// (changed since the deployment began) is refused.
fn skip_window(ctx: &Context, target: &Profile) -> Result<Duration> {
    let configured = ctx.config.nginx.fail_timeout;
    let server = match upstream::read(&ctx.config) {
        upstream::Read::Found(u) => {
            if let Some(why) = upstream::refusal(&u, &ctx.config.profiles) {
                return Err(anyhow!(why));
            }
            u.server(target.port).cloned().map(|s| (u.name.clone(), s))
        }
        upstream::Read::NotFound | upstream::Read::Unreadable(_) => None,
    };
    let Some((name, server)) = server else {
        return Ok(configured);
    };
    let window = server.skip_window();
    if window != configured {
        let how = if server.max_fails == 0 {
            "max_fails=0: nginx never skips it".to_string()
        } else {
            format!(
                "max_fails={}, fail_timeout {}: nginx may skip it for {} after a refusal",
                server.max_fails,
                secs(server.fail_timeout),
                secs(window)
            )
        };
        ctx.log.say(format!(
            "nginx's upstream {name} gives {} {how}, not nginx.fail_timeout_secs ({}); going by nginx's",
            server.address,
            secs(configured)
        ));
    }
    Ok(window)
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
fn wait_out_fail_timeout(ctx: &Context, target: &Profile, fail_timeout: Duration) -> Result<()> {
    if fail_timeout.is_zero() {
        return Ok(());
    }
    // nginx compares in whole seconds (`now - checked <= fail_timeout` on
    // its cached clock), so a server can stay skipped for up to a second
    // longer than fail_timeout.
    let window = fail_timeout + Duration::from_millis(1200);
    ctx.log.say(format!(
        "waiting {} (nginx's fail_timeout plus its clock's second) so that every nginx worker sends to {} again before the old app may go",
        secs(window),
        target.name
    ));
    signals::pause(window).context("nothing was changed")?;
    health_rule::check_health(&ctx.config, target).map_err(|why| {
        anyhow!(
            "{} stopped answering ({why}) while waiting; the old app is kept",
            target.name
        )
    })
}

/// Write, test, reload, confirm; undo on any failure or signal. The journal
/// records each phase before the step after it. Returns the workers of the
/// previous configuration, when they could be seen.
fn transaction(
    ctx: &Context,
    mut journal: nginx::Journal,
    target: &Profile,
    new: &[u8],
    old: Option<&[u8]>,
) -> Result<Option<Vec<i32>>> {
    write_route(ctx, &mut journal, target, new, old)?;
    test_config(ctx, &mut journal, old)?;
    let (old_workers, reloaded_at) = reload(ctx, &mut journal, target, old)?;
    let mut last = String::new();
    let confirmed = confirm(ctx, target, old_workers.as_deref(), &mut last);
    settle(
        ctx,
        &mut journal,
        target,
        old,
        Settle {
            confirmed,
            last,
            old_workers,
            reloaded_at,
        },
    )
}

/// The transaction's first step: the new include (or symlink) written and
/// the journal marked; on failure the old one is back, or the journal kept
/// for the next stage when what the write did cannot be told.
fn write_route(
    ctx: &Context,
    journal: &mut nginx::Journal,
    target: &Profile,
    new: &[u8],
    old: Option<&[u8]>,
) -> Result<()> {
    let config = &ctx.config;
    let state = &ctx.state;
    if let Err(e) = route::write(config, new) {
        // An atomic write that failed left the old include, unless the
        // rename went through and only the directory's sync failed (or, over
        // ssh, the answer was lost after the write): then put the old one
        // back (nginx was not reloaded).
        // Only a read that worked counts: over a dead link a failed read
        // says nothing about what the write did.
        if matches!(route::read(config), Ok(ref now) if now.as_deref() == old) {
            nginx::end(state, &ctx.log);
            return Err(e.context("nothing changed"));
        }
        let maybe_written = e.chain().any(|c| c.is::<route::MaybeWritten>());
        let undone = nginx::undo(config, state, journal, old, false, &ctx.log).with_context(|| {
            if maybe_written {
                // Not "nothing changed": over ssh the write may have happened.
                format!(
                    "{e:#}; the state of {} is unknown until it can be read back; nginx was not reloaded. \
                     The switch journal is kept: the next stage puts the previous one back before anything else \
                     (reloading nginx if it no longer answers as before), so the switch to {} is undone",
                    route::describe(config),
                    target.name
                )
            } else {
                format!("{e:#}")
            }
        })?;
        return Err(e.context(format!("nginx was not reloaded; {undone}")));
    }
    ctx.log.say(format!(
        "wrote {}: {}",
        route::describe(config),
        String::from_utf8_lossy(new).trim()
    ));
    nginx::mark(state, journal, Phase::Written)
}

/// `nginx.test`, then a last look for a signal before the reload; either
/// failing puts the old include back without a reload.
fn test_config(ctx: &Context, journal: &mut nginx::Journal, old: Option<&[u8]>) -> Result<()> {
    let config = &ctx.config;
    let state = &ctx.state;
    let tested = nginx::test(config);
    if let Err(why) = tested {
        nginx::undo(config, state, journal, old, false, &ctx.log)?;
        return Err(anyhow!(
            "`{}` failed, nginx was not reloaded and {} is restored: {why}",
            config.nginx.test.join(" "),
            route::describe(config)
        ));
    }
    ctx.log
        .say(format!("`{}` passed", config.nginx.test.join(" ")));
    nginx::mark(state, journal, Phase::Tested)?;
    if let Err(i) = signals::check() {
        nginx::undo(config, state, journal, old, false, &ctx.log)?;
        return Err(anyhow!(i).context(format!(
            "{} is restored and nginx was not reloaded",
            route::describe(config)
        )));
    }
    Ok(())
}

/// `nginx.reload`, with the workers of the configuration before noted in
/// the journal first. Returns them (when they could be seen) and when the
/// reload returned.
fn reload(
    ctx: &Context,
    journal: &mut nginx::Journal,
    target: &Profile,
    old: Option<&[u8]>,
) -> Result<(Option<Vec<i32>>, Instant)> {
    let config = &ctx.config;
    let state = &ctx.state;
    let old_workers = nginx::accepting_workers(config, &ctx.log);
    journal.workers_before = old_workers.clone();
    nginx::mark(state, journal, Phase::Reloading)?;
    let reloaded_at = Instant::now();
    if let Err(why) = nginx::reload(config) {
        // A reload that reports failure may still have taken effect (ssh
        // dropped after the remote reload ran, `systemctl reload` timing
        // out): undo as if it had, and watch nginx come back.
        let undone =
            nginx::undo(config, state, journal, old, true, &ctx.log).with_context(|| {
                format!(
                    "`{}` failed ({why}) and may still have taken effect",
                    config.nginx.reload.join(" ")
                )
            })?;
        return Err(anyhow!(
            "`{}` failed: {why}; it may still have taken effect, so the switch is undone: {undone}",
            config.nginx.reload.join(" "),
        ));
    }
    nginx::mark(state, journal, Phase::Reloaded)?;
    ctx.log.say(format!(
        "`{}` done; waiting for nginx to answer as {}",
        config.nginx.reload.join(" "),
        target.name
    ));
    Ok((old_workers, reloaded_at))
}

/// Waits, within `nginx.confirm_timeout_secs`, until nginx is seen to serve
/// the target; `last` says what was seen last.
fn confirm(
    ctx: &Context,
    target: &Profile,
    old_workers: Option<&[i32]>,
    last: &mut String,
) -> Result<Option<Duration>, signals::Interrupted> {
    let config = &ctx.config;
    // Confirmed when no worker of the old configuration can take a connection
    // any more and a new connection through nginx reaches the target. nginx
    // keeps old workers accepting for ~100 ms after it starts the new ones,
    // so one good answer alone does not prove the next request goes there too.
    // Where the workers cannot be seen (nginx on another host, no pid
    // file), the probe must answer the target without a break for longer
    // than nginx keeps old workers accepting.
    let mut streak: Option<Instant> = None;
    signals::wait_for(
        config.nginx.confirm_timeout,
        Duration::from_millis(10),
        || {
            if let Some(w) = old_workers
                .iter()
                .copied()
                .flatten()
                .find(|&&w| nginx::still_accepting(w))
            {
                *last =
                    format!("worker {w} of the previous configuration still accepts connections");
                return false;
            }
            match detect::probe(config) {
                Probe::Answered(p) if &p == target => {
                    if old_workers.is_some() {
                        return true;
                    }
                    let since = *streak.get_or_insert_with(Instant::now);
                    *last = format!(
                        "it answers {} but only for {}",
                        p.name,
                        secs(since.elapsed())
                    );
                    since.elapsed() >= nginx::BLIND_CONFIRM
                }
                Probe::Answered(p) => {
                    streak = None;
                    *last = format!("it answered {}", p.name);
                    false
                }
                Probe::Failed(why) => {
                    streak = None;
                    *last = why;
                    false
                }
            }
        },
    )
}

/// How the confirmation went, for [`settle`].
struct Settle {
    confirmed: Result<Option<Duration>, signals::Interrupted>,
    last: String,
    old_workers: Option<Vec<i32>>,
    reloaded_at: Instant,
}

/// Ends the transaction: the journal ended on a confirmed switch, the
/// switch undone on a timeout or a signal.
fn settle(
    ctx: &Context,
    journal: &mut nginx::Journal,
    target: &Profile,
    old: Option<&[u8]>,
    how: Settle,
) -> Result<Option<Vec<i32>>> {
    let config = &ctx.config;
    let state = &ctx.state;
    let Settle {
        confirmed,
        last,
        old_workers,
        reloaded_at,
    } = how;
    match confirmed {
        Ok(Some(_)) => {
            nginx::mark(state, journal, Phase::Confirmed)?;
            nginx::end(state, &ctx.log);
            let how = if old_workers.is_some() {
                "the old workers stopped accepting and the probe answers"
            } else {
                "the probe answers without a break"
            };
            ctx.log.say(format!(
                "nginx routes to {} ({}): confirmed {} after the reload ({how})",
                target.name,
                target.port,
                secs(reloaded_at.elapsed())
            ));
            Ok(old_workers)
        }
        Ok(None) => {
            let what = format!(
                "nginx did not answer as {} within {} of the reload ({last})",
                target.name,
                secs(config.nginx.confirm_timeout),
            );
            let undone = nginx::undo(config, state, journal, old, true, &ctx.log)
                .with_context(|| what.clone())?;
            Err(anyhow!("{what}; {undone}"))
        }
        Err(i) => {
            let undone = nginx::undo(config, state, journal, old, true, &ctx.log)
                .with_context(|| format!("{i}; undoing the switch to {}", target.name))?;
            Err(anyhow!(i).context(format!(
                "the switch to {} was undone: {undone}",
                target.name,
            )))
        }
    }
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
