//! The switch: pointing nginx at a profile and proving it took, as `switch`
//! and `health` (its last step) run it, in whatever mode (`crate::route`).
//!
//! The book's switch.sh writes the include with `tee` and runs
//! `service nginx reload`, trusting both, so a failed `nginx -t` or a reload
//! that did not take leaves nginx routing who knows where. Here a mode that
//! writes a route goes through a transaction ([`transaction`]): written
//! atomically, tested and reloaded where the mode needs it, then confirmed
//! through nginx itself ([`confirm`]); any failure or signal puts the
//! previous route back byte for byte, and a journal ([`journal`]) lets the
//! next stage finish or undo a switch this process could not. A mode that
//! writes nothing waits until nginx sends the new app requests; where a
//! build is in nginx's rotation as soon as it listens, one that fails is
//! withdrawn (stopped).
//!
//! Every line goes through the caller's log (`ctx.log`): `health` switching
//! prints `health: ...`.

pub mod confirm;
pub mod journal;
pub mod maintenance;
pub mod rollback;
mod transaction;

use anyhow::{anyhow, Context as _, Result};

use crate::app::health_rule;
use crate::app::retiring;
use crate::app::stopping;
use crate::config::{Profile, RetireBusy};
use crate::nginx::probe::{probe, Probe};
use crate::route;
use crate::route::reach;
use crate::state::context::Context;
use crate::state::Switched;
use crate::sys::signals;
use crate::sys::time::{now_unix_ms, secs};

/// What a deployment's last step does: switch to `target` and, when the
/// config says so (`app.retire`, always in upstream-pair mode), retire the
/// app that was live before. The deployment is complete once the switch is;
/// a retiring that fails is still an error (exit 1) naming what to run.
///
/// Retiring never stops the last working app: when the new app no longer
/// serves right before the previous one would be signalled, the previous
/// one is kept and nginx is switched back to it ([`switch_back`]); the
/// deployment fails, naming what died.
pub fn switch_and_retire(ctx: &mut Context, target: &Profile) -> Result<()> {
    let old_workers = switch_to(ctx, target)?;
    ctx.completes_deployment = true;
    ctx.switched_to = Some(target.clone());
    let previous = ctx.slots.live.clone().filter(|p| p != target);
    match previous {
        Some(previous) if ctx.config.app.retire => {
            match retiring::retire(ctx, &previous, target, old_workers) {
                Ok(()) => Ok(()),
                Err(e) => match e.downcast::<retiring::NotServing>() {
                    Ok(gone) => Err(switch_back(ctx, &previous, target, gone)),
                    Err(e) => Err(e.context(format!(
                        "nginx routes to {} as it should, but retiring {} failed; it still runs. Stop it with `stop --profile {}`",
                        target.name, previous.name, previous.name
                    ))),
                },
            }
        }
        _ => Ok(()),
    }
}

/// The new app (`failed`) stopped serving before `previous` was retired:
/// `previous` is kept and nginx is pointed back at it through the normal
/// switch transaction (written, tested, reloaded, confirmed through nginx).
/// In upstream-pair mode there is nothing to write: the failed build is
/// withdrawn (stopped, should it still listen, hung), after which nginx's
/// upstream reaches only `previous`, and the switch back confirms through
/// nginx that it answers as `previous`. Returns the deployment's error,
/// naming what died and where traffic is.
fn switch_back(
    ctx: &mut Context,
    previous: &Profile,
    failed: &Profile,
    gone: retiring::NotServing,
) -> anyhow::Error {
    ctx.completes_deployment = false;
    ctx.log.warn(format!(
        "{gone}; {} is kept, switching nginx back to it",
        previous.name
    ));
    let withdrawn = match route::of(&ctx.config).rotation() {
        Some(rotation) => match stopping::withdraw_profile(ctx, failed, Some(previous)) {
            Ok(()) => format!("; {} was withdrawn from {rotation} (stopped)", failed.name),
            Err(e) => format!(
                "; stopping {} failed ({e:#}): stop it with `stop --profile {}`",
                failed.name, failed.name
            ),
        },
        None => String::new(),
    };
    let back = switch_to(ctx, previous);
    if back.is_ok() {
        // Only a note when it cannot be written: nginx is back either way.
        if let Err(e) = record_from(ctx, previous, Some(failed)) {
            ctx.log.warn(format!("{e:#}"));
        }
    }
    match back {
        Ok(_) => anyhow!(
            "{gone}; the deployment failed: {} was kept and nginx answers as {} again (confirmed){withdrawn}",
            previous.name,
            previous.name
        ),
        // The cause stays in the chain: a signal keeps its exit code.
        Err(e) => e.context(format!(
            "{gone}; the deployment failed: {} was kept and still runs, but switching nginx back to it failed{withdrawn}; \
             nginx may still route to {}. Point it back with `switch --to {}`",
            previous.name, failed.name, previous.name
        )),
    }
}

/// Where a build that listens is in nginx's rotation (upstream-pair mode:
/// its upstream), a build that failed its health check or the confirmation
/// would go on serving part of the requests. It is stopped at once, and
/// `failure` says so (or that stopping it failed too, and what to run). In
/// the other modes, for the live profile, and in a dry run, `failure` is
/// returned as it is.
pub fn withdraw_failed(ctx: &Context, target: &Profile, failure: anyhow::Error) -> anyhow::Error {
    let Some(rotation) = route::of(&ctx.config).rotation() else {
        return failure;
    };
    if ctx.dry_run || ctx.slots.live.as_ref() == Some(target) {
        return failure;
    }
    ctx.log.warn(format!(
        "{} failed ({failure:#}); it is in {rotation} while it listens, so it is stopped now",
        target.name
    ));
    match stopping::withdraw_profile(ctx, target, ctx.slots.live.as_ref()) {
        Ok(()) => failure.context(format!(
            "{} ({}) failed and was stopped: {rotation} no longer sends it requests{}",
            target.name,
            target.port,
            ctx.slots
                .live
                .as_ref()
                .map(|l| format!(", {} serves them all as before", l.name))
                .unwrap_or_default()
        )),
        Err(e) => failure.context(format!(
            "{} ({}) failed, and stopping it failed too ({e:#}): it is still in {rotation} and serves part of the requests; \
             stop it now with `stop --profile {}`",
            target.name, target.port, target.name
        )),
    }
}

/// What a switch to `target` would do, printed and not done.
pub fn dry_run(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    let mode = route::of(config);
    match mode.content_for(target) {
        None => ctx.log.say(format!(
            "would leave {} as it is and check that {} answers",
            mode.describe(),
            health_rule::health_url(config, target)
        )),
        Some(new) => {
            let old = mode.read()?;
            if old.as_deref() == Some(new.as_slice()) {
                ctx.log.say(format!(
                    "would leave {} as it is: it already routes to {} ({})",
                    mode.describe(),
                    target.name,
                    target.port
                ));
            } else {
                ctx.log.say(format!(
                    "would write {}: {}",
                    mode.describe(),
                    String::from_utf8_lossy(&new).trim()
                ));
            }
            let commands = mode.commands();
            for argv in [commands.test, commands.reload].into_iter().flatten() {
                ctx.log.say(format!("would run `{}`", argv.join(" ")));
            }
            ctx.log.say(format!(
                "would wait at most {} for {} to answer {}",
                secs(config.nginx.confirm_timeout),
                config.probe_url,
                target.name
            ));
        }
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
/// Returns the nginx workers of the configuration before (when a reload
/// replaced them and they could be seen), for [`retiring::retire`].
pub(crate) fn switch_to(ctx: &Context, target: &Profile) -> Result<Option<Vec<i32>>> {
    let config = &ctx.config;
    let mode = route::of(config);
    let Some(new) = mode.content_for(target) else {
        // Nothing to write: nginx already lists the target's port.
        return check_target(ctx, target)
            .and_then(|()| mode.await_traffic(&ctx.log, ctx.slots.live.as_ref(), target))
            .and_then(|()| record(ctx, target))
            .map_err(|e| withdraw_failed(ctx, target, e))
            .map(|()| None);
    };
    let old = mode.read()?;
    mode.refuse_foreign(old.as_deref())?;

    if old.as_deref() == Some(new.as_slice())
        && matches!(probe(config), Probe::Answered(ref p) if p == target)
    {
        ctx.log.say(format!(
            "nginx already routes to {} ({}); nothing to do",
            target.name, target.port
        ));
        record(ctx, target)?;
        return Ok(None);
    }
    mode.before_write(&ctx.log)?;
    signals::check().context("nothing was changed")?;
    // Only an app that answers where nginx connects to it is switched to:
    // `health` waited for it on 127.0.0.1, `switch --to` not at all.
    check_target(ctx, target)?;

    let journal = journal::begin(
        config,
        &ctx.state,
        target,
        old.as_deref(),
        ctx.deployment_id.as_deref(),
        None,
    )
    .with_context(|| format!("nothing was changed, {}", journal::traffic_now(config)))?;
    // The transaction ends the journal once the route is settled and
    // nginx is seen to serve it (the new one confirmed, or the old one back);
    // otherwise the journal stays, so the next stage settles it.
    let old_workers = transaction::run(ctx, mode.as_ref(), journal, target, &new, old.as_deref())?;
    record(ctx, target).with_context(|| {
        format!(
            "nginx routes to {} ({}) as confirmed, but the switch could not be recorded; free the state directory {} before the next deployment",
            target.name,
            target.port,
            ctx.state.root().display()
        )
    })?;
    Ok(old_workers)
}

/// Before anything is written: `target` must answer its health check where
/// nginx connects to it (`reach`), or the switch is refused, exit 1,
/// naming it. Upstream-pair mode withdraws it as for any failure there.
fn check_target(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    reach::check(config, target, &ctx.log).map_err(|why| {
        anyhow!(
            "refusing to switch to {} ({}): {why}; nothing was changed: {}",
            target.name,
            target.port,
            journal::traffic_now(config)
        )
    })
}

/// Records in `switch.json` that nginx routes to `target`, coming from the
/// profile that was live (`ctx.slots.live`), with the build each runs.
fn record(ctx: &Context, target: &Profile) -> Result<()> {
    let previous = ctx.slots.live.clone().filter(|p| p != target);
    record_from(ctx, target, previous.as_ref())
}

/// [`record`] with the profile nginx came from named: the build each runs
/// now (what `start` launched there and still runs), so that `switch
/// --rollback` goes back only to the build that was live.
fn record_from(ctx: &Context, target: &Profile, previous: Option<&Profile>) -> Result<()> {
    let record = Switched {
        active: target.clone(),
        previous: previous.cloned(),
        switched_unix_ms: now_unix_ms(),
        deployment_id: ctx.deployment_id.clone(),
        active_build: rollback::running_build(ctx, target),
        previous_build: previous.and_then(|p| rollback::running_build(ctx, p)),
        builds_recorded: true,
    };
    // nginx routes to a profile: whatever maintenance there was is over.
    maintenance::forget(ctx);
    ctx.state.write(&ctx.state.switched_path(), &record)
}
