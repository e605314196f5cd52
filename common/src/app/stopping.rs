//! Stopping a profile's app or its Compose service: the operation behind
//! `stop`, and behind `switch` retiring the old app and withdrawing a failed
//! build in upstream-pair mode.
//!
//! The book's stop.sh finds the pid with lsof, sends `kill -15` and sleeps
//! 5 s, so a slow shutdown leaves the port taken and start.sh then dies with
//! "Address already in use". Here the listener is found through /proc, the
//! wait is for the event itself (the process gone and the port free),
//! SIGKILL follows after `app.stop_timeout_secs`, and a process that also
//! listens on the live port is never touched. What `start` launched is
//! stopped as a whole process group (a wrapper's children and helpers with
//! it), and every signal, the SIGKILL escalation included, re-checks the
//! process's start time first, so a reused pid is never signalled.
//!
//! `stop` first lets nginx let go of the app ([`stop_draining`], the drain
//! retiring uses too): a request nginx's previous workers still proxy to it
//! is finished before the SIGTERM.
//!
//! A process on the port that is not ours is refused: one nonstop did not
//! launch (no `launched-*.json` names it or its parent) and whose command
//! line is not the configured command for that profile. That is somebody
//! else's service on a port set by mistake, and killing it is not a
//! deployment's business unless the operator says `--force`.
//!
//! Every line goes through the caller's log (`ctx.log`): `switch` retiring
//! an app prints `switch: ...`, as every line a stage prints starts with its
//! own name.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::app::adopt;
use crate::app::compose;
use crate::app::drain::{self, Why};
use crate::app::tree::{self, Ended, Proc, Target};
use crate::config::{render, wildcard_match, Compose};
use crate::nginx::workers;
use crate::state::Launched;
use crate::sys::procs::{self, cmdline, is_same_alive, listening};
use crate::sys::signals::{self, wait_for};
use crate::sys::time::secs;
use crate::{Context, Profile};

/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the stage looks whether the service's port is free.
const POLL: Duration = Duration::from_millis(5);

/// Stops every process listening on the target's port, plus the process
/// `start` launched for it if that is still starting up. `live` is the
/// profile nginx routes to now: a process that also listens on its port is
/// never signalled. A process that is not ours is refused unless `force`.
/// Signals at once: the caller has let nginx let go of it already (as
/// retiring does), or there is nothing to wait for.
pub(crate) fn stop_profile(
    ctx: &Context,
    target: &Profile,
    live: Option<&Profile>,
    force: bool,
) -> Result<()> {
    stop_profile_with(ctx, target, live, force, How::AtOnce).map(|_| ())
}

/// `stop`: like [`stop_profile`], but once it knows what it will stop, and
/// before any signal, it waits for nginx to let go of the app (see
/// [`drain::drain`]): nginx's previous workers, which may still be
/// proxying a request to it since the last switch, and its own
/// connections, within `nginx.drain_timeout_secs`; `app.retire_busy`
/// decides past that bound, and a stop that cuts connections is recorded
/// in the history (`stopped-cutting-connections`).
pub fn stop_draining(
    ctx: &mut Context,
    target: &Profile,
    live: Option<&Profile>,
    force: bool,
) -> Result<()> {
    if let Some(cut) = stop_profile_with(ctx, target, live, force, How::Drain)? {
        ctx.outcome = Some(cut);
    }
    Ok(())
}

/// Stops a build that failed while it was already in nginx's rotation
/// (upstream-pair mode): like [`stop_profile`], but a signal the stage
/// received does not hold the SIGTERM back. Leaving the failed build in the
/// upstream would be worse than the stop the signal interrupts; the wait for
/// its exit still ends early on the signal.
pub(crate) fn withdraw_profile(
    ctx: &Context,
    target: &Profile,
    live: Option<&Profile>,
) -> Result<()> {
    stop_profile_with(ctx, target, live, false, How::Withdraw).map(|_| ())
}

/// How [`stop_profile_with`] goes about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Signal as soon as the checks passed.
    AtOnce,
    /// Drain first ([`drain::drain`]), then signal.
    Drain,
    /// Signal even after the stage received a signal itself.
    Withdraw,
}

/// The stop; `Some` is the history outcome of a drain that ran out and
/// stopped the app anyway, cutting connections.
fn stop_profile_with(
    ctx: &Context,
    target: &Profile,
    live: Option<&Profile>,
    force: bool,
    how: How,
) -> Result<Option<(String, u64)>> {
    if let Some(compose) = compose::of(&ctx.config) {
        return stop_service(ctx, target, compose, how);
    }
    let port = target.port;
    let found = find_victims(ctx, target)?;
    if found.victims.is_empty() && found.members.is_empty() {
        ctx.log.say(format!(
            "nothing listens on {port} ({}); nothing to stop",
            target.name
        ));
        return Ok(None);
    }
    if let Some(live) = live.filter(|l| *l != target) {
        refuse_live_overlap(&found, live, port)?;
    }
    refuse_strangers(ctx, target, &found, force)?;
    let Found {
        victims,
        members,
        group,
        ..
    } = found;
    // The launched group as a whole; anything else (an app of ours started
    // by hand, a stranger under --force) by its pid alone: its group may be
    // an operator's shell.
    let mut targets: Vec<Target> = group.into_iter().filter(|_| !members.is_empty()).collect();
    targets.extend(
        victims
            .iter()
            .filter(|p| !members.contains(p))
            .map(|&p| Target::One(p)),
    );
    if ctx.dry_run {
        if how == How::Drain {
            drain::say_would_drain(ctx, target, &workers::previous(&ctx.config), Why::Stopping);
        }
        say_would_stop(ctx, &victims, &members, port);
        return Ok(None);
    }
    if how != How::Withdraw {
        signals::check().context("nothing was signalled")?;
    }
    let cut = drain_first(ctx, target, how)?;
    terminate(ctx, target, &victims, &members, targets)?;
    Ok(cut)
}

/// With [`How::Drain`], waits for nginx to let go of the target's app.
fn drain_first(ctx: &Context, target: &Profile, how: How) -> Result<Option<(String, u64)>> {
    if how != How::Drain {
        return Ok(None);
    }
    let workers = workers::previous(&ctx.config);
    let cut = drain::drain(ctx, target, Some(workers), Why::Stopping)?;
    signals::check().context("nothing was signalled")?;
    Ok(cut)
}

/// What holds the target's port, and what `start` launched for it.
struct Found {
    /// The listeners, and the target's launched app even before it listens.
    victims: Vec<Proc>,
    /// Every app nonstop launched and that still runs, for [`is_ours`].
    launched_pids: Vec<i32>,
    /// The process group of the target's launched app, if it has one.
    group: Option<Target>,
    /// That group's members now.
    members: Vec<Proc>,
}

/// Who listens on the target's port, each taken with its start time now,
/// and what nonstop launched: the target's own app joins the victims even
/// before it listens, and its process group goes with it.
fn find_victims(ctx: &Context, target: &Profile) -> Result<Found> {
    let port = target.port;
    let seen = listening(port).with_context(|| format!("cannot read who listens on {port}"))?;
    if !seen.is_free() && seen.pids.is_empty() {
        return Err(anyhow!(
            "port {port} is held by a process this user cannot see (another user's?); not stopping anything"
        ));
    }
    // Each process is taken with its start time now: every signal below
    // re-checks it, so a pid reused meanwhile is never signalled.
    let mut victims: Vec<Proc> = seen.pids.iter().filter_map(|&p| Proc::of(p)).collect();
    // Every app nonstop launched and that still runs, for `is_ours`; the
    // target's own one joins the victims even before it listens, and its
    // process group (a wrapper's children, the helpers) goes with it.
    let mut launched_pids = Vec::new();
    let mut group = None;
    for profile in &ctx.config.profiles {
        let record: Option<Launched> = ctx
            .state
            .read(&ctx.state.launched_path(&profile.name), &ctx.log)?;
        let Some(l) = record else { continue };
        if profile == target && l.port == port {
            group = tree::group_of(&l);
        }
        if !is_same_alive(l.pid, l.start_time) {
            continue;
        }
        launched_pids.push(l.pid);
        if profile == target && l.port == port && !victims.iter().any(|v| v.pid == l.pid) {
            if let Some(p) = Proc::of(l.pid) {
                ctx.log.say(format!(
                    "{} (pid {}) started by nonstop is running but not listening yet",
                    target.name, l.pid
                ));
                victims.push(p);
            }
        }
    }
    let mut group = group.map(Target::Group);
    let members = group.as_mut().map(Target::members).unwrap_or_default();
    Ok(Found {
        victims,
        launched_pids,
        group,
        members,
    })
}

/// Refuses when anything to be stopped also listens on the live port (or is
/// in the process group of what does): stopping it would stop the live app.
fn refuse_live_overlap(found: &Found, live: &Profile, port: u16) -> Result<()> {
    let on_live = listening(live.port).map(|l| l.pids).unwrap_or_default();
    if let Some(p) = found
        .victims
        .iter()
        .chain(&found.members)
        .find(|p| on_live.contains(&p.pid))
    {
        return Err(anyhow!(
            "pid {} listens on {port} and also on the live port {}, or is in the process group of what does; stopping it would stop the live app",
            p.pid,
            live.port
        ));
    }
    Ok(())
}

/// Refuses a process on the port that is not ours (see [`is_ours`]), or,
/// with `force`, warns and lets it be stopped.
fn refuse_strangers(ctx: &Context, target: &Profile, found: &Found, force: bool) -> Result<()> {
    let port = target.port;
    let strangers: Vec<Proc> = found
        .victims
        .iter()
        .copied()
        .filter(|p| {
            !found.members.contains(p) && !is_ours(ctx, target, p.pid, &found.launched_pids)
        })
        .collect();
    if strangers.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = strangers
        .iter()
        .map(|p| match adopt::adoptable(&ctx.config, target, p.pid) {
            Ok(_) => p.describe(),
            Err(why) => format!("pid {} ({}; not adopted: {why})", p.pid, cmdline(p.pid)),
        })
        .collect();
    if force {
        ctx.log.warn(format!(
            "{} not started by nonstop and not running the configured command; stopping anyway (--force)",
            named.join(", ")
        ));
        return Ok(());
    }
    Err(anyhow!(
        "port {port} ({}) is held by {}, which nonstop did not start and which does not run the configured command; not stopping it. \
         If it should go, run `stop --profile {} --force`",
        target.name,
        named.join(", "),
        target.name
    ))
}

/// `--dry-run`: what would be signalled, and the process group with it.
fn say_would_stop(ctx: &Context, victims: &[Proc], members: &[Proc], port: u16) {
    let timeout = ctx.config.app.stop_timeout;
    for p in victims {
        let others: Vec<String> = if members.contains(p) {
            members
                .iter()
                .filter(|m| *m != p)
                .map(Proc::describe)
                .collect()
        } else {
            Vec::new()
        };
        let with = if others.is_empty() {
            String::new()
        } else {
            format!(", and its process group with {}", others.join(", "))
        };
        ctx.log.say(format!(
            "would send SIGTERM to pid {} ({}) on {port}{with}, then SIGKILL if it is still running after {}",
            p.pid,
            cmdline(p.pid),
            secs(timeout)
        ));
    }
}

/// SIGTERM to every target, SIGKILL after `app.stop_timeout_secs`, and the
/// wait until they are gone and the port is free.
fn terminate(
    ctx: &Context,
    target: &Profile,
    victims: &[Proc],
    members: &[Proc],
    mut targets: Vec<Target>,
) -> Result<()> {
    let port = target.port;
    for p in victims {
        ctx.log.say(format!(
            "{} (pid {}: {}) on {port}; sending SIGTERM",
            target.name,
            p.pid,
            cmdline(p.pid)
        ));
    }
    for t in &targets {
        if let Target::Group(g) = t {
            let all: Vec<String> = members.iter().map(Proc::describe).collect();
            ctx.log.say(format!(
                "sending SIGTERM to its whole process group {}: {}",
                g.pgid,
                all.join(", ")
            ));
        }
    }
    let timeout = ctx.config.app.stop_timeout;
    let ended = tree::terminate(&mut targets, timeout, KILL_WAIT, &ctx.log, || {
        listening(port).map(|l| l.is_free()).unwrap_or(false)
    })
    .with_context(|| {
        let pids: Vec<i32> = victims.iter().chain(members).map(|p| p.pid).collect();
        format!(
            "pids {pids:?} were sent SIGTERM and may still be shutting down; run `stop` again to finish"
        )
    })?;
    report_ended(ctx, &ended, port)
}

/// Says how the processes ended; an error names what still runs.
fn report_ended(ctx: &Context, ended: &Ended, port: u16) -> Result<()> {
    let holders = listening(port).map(|l| l.pids).unwrap_or_default();
    if let Some(waited) = ended.after_term {
        ctx.log.say(format!(
            "exited after {}; port {port} is free",
            secs(waited)
        ));
        return Ok(());
    }
    if ended.left.is_empty() && holders.is_empty() {
        if ended.killed.is_empty() {
            // Everything had exited; the port took longer than that to free.
            ctx.log.say(format!("exited; port {port} is free"));
        } else {
            ctx.log.say(format!(
                "killed {} (SIGKILL); nothing of it is left; port {port} is free",
                ended.killed.join(", ")
            ));
        }
        return Ok(());
    }
    let mut left = ended.left.clone();
    left.extend(
        holders
            .iter()
            .map(|&p| format!("pid {p} ({}) on port {port}", cmdline(p))),
    );
    Err(anyhow!(
        "still running after SIGKILL: {}; look at it by hand",
        left.join(", ")
    ))
}

/// The Compose backend: `stop -t SECS SERVICE` for the target's service
/// only (never `down`), then the port must be free. Something else on the
/// port is named and left alone: it is not the service's.
fn stop_service(
    ctx: &Context,
    target: &Profile,
    compose: &Compose,
    how: How,
) -> Result<Option<(String, u64)>> {
    let config = &ctx.config;
    let port = target.port;
    let service = compose::service(compose, config, target);
    compose::check_service(compose, service)?;
    // The engine says what is the service's: a paused or restarting
    // container is, whatever holds the host port (docker-proxy, or nothing
    // with the engine's userland proxy off).
    let up = compose::up_container(compose, service)?;
    if let Some(advice) = up.as_ref().and_then(|c| c.paused_advice(service)) {
        return Err(anyhow!("cannot stop {}: {advice}", target.name));
    }
    let Some(container) = up else {
        let seen = listening(port).with_context(|| format!("cannot read who listens on {port}"))?;
        if seen.is_free() {
            ctx.log.say(format!(
                "service {service} ({}) is not running and nothing listens on {port}; nothing to stop",
                target.name
            ));
            return Ok(None);
        }
        if let Some(oneoff) = compose::oneoff_holding(compose, port) {
            return Err(anyhow!(
                "service {service} ({}) is not running, and {}; nothing was stopped",
                target.name,
                oneoff.oneoff_words(port)
            ));
        }
        return Err(anyhow!(
            "service {service} ({}) is not running, yet port {port} is held by {}; that is not the service's, so it is not stopped",
            target.name,
            seen.holders()
        ));
    };
    let timeout = config.app.stop_timeout;
    if ctx.dry_run {
        if how == How::Drain {
            drain::say_would_drain(ctx, target, &workers::previous(&ctx.config), Why::Stopping);
        }
        ctx.log.say(format!(
            "would stop service {service} (container {}, {}) on {port}: SIGTERM, SIGKILL after {}",
            compose::short_id(&container.id),
            container.image,
            secs(timeout)
        ));
        return Ok(None);
    }
    signals::check().context("nothing was stopped")?;
    let cut = drain_first(ctx, target, how)?;
    ctx.log.say(format!(
        "{} is service {service} (container {}, {}, {}) on {port}; stopping it",
        target.name,
        compose::short_id(&container.id),
        container.image,
        container.status
    ));
    let started = std::time::Instant::now();
    compose::stop(compose, service, timeout)?;
    let free = wait_for(KILL_WAIT, POLL, || {
        listening(port).map(|l| l.is_free()).unwrap_or(false)
    })
    .context("the service was stopped")?;
    match free {
        Some(_) => {
            ctx.log.say(format!(
                "service {service} stopped after {}; port {port} is free",
                secs(started.elapsed())
            ));
            Ok(cut)
        }
        None => match compose::oneoff_holding(compose, port) {
            Some(oneoff) => Err(anyhow!(
                "service {service} is stopped, but {}",
                oneoff.oneoff_words(port)
            )),
            None => Err(anyhow!(
                "service {service} is stopped but port {port} is still held (pids {:?})",
                listening(port).map(|l| l.pids).unwrap_or_default()
            )),
        },
    }
}

/// A process is ours when nonstop launched it or its parent (a wrapper
/// script that forks the JVM), when it is in the process group of what
/// nonstop launched (checked by the caller), or when it runs the configured
/// command for this profile (an app started before its record, or by hand
/// the same way).
fn is_ours(ctx: &Context, target: &Profile, pid: i32, launched: &[i32]) -> bool {
    let mut p = Some(pid);
    for _ in 0..8 {
        match p {
            Some(q) if q > 1 => {
                if launched.contains(&q) {
                    return true;
                }
                p = procs::parent(q);
            }
            _ => break,
        }
    }
    if runs_command(&ctx.config.app.command, target, &procs::argv(pid)) {
        return true;
    }
    // The book's start.sh apps (see `adopt`): stopped like ours, said so.
    let adopted = adopt::adoptable(&ctx.config, target, pid);
    if let Ok(note) = &adopted {
        ctx.log.say(format!("pid {pid} ({}): {note}", cmdline(pid)));
    }
    adopted.is_ok()
}

/// Whether `argv` is `command` rendered for `target`, with `{artifact}`
/// matching any value and the program compared by its file name.
pub fn runs_command(command: &[String], target: &Profile, argv: &[String]) -> bool {
    let port = target.port.to_string();
    let vars = [
        ("profile", target.name.as_str()),
        ("port", port.as_str()),
        ("artifact", "*"),
    ];
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    command.len() == argv.len()
        && command.iter().zip(argv).enumerate().all(|(i, (c, a))| {
            let want = render(c, &vars);
            if i == 0 {
                base(&want) == base(a)
            } else {
                wildcard_match(&want, a)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_command_is_recognised() {
        let command: Vec<String> = ["java", "-Dserver.port={port}", "-jar", "{artifact}"]
            .map(String::from)
            .to_vec();
        let real2 = Profile {
            name: "real2".into(),
            port: 8082,
        };
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(runs_command(
            &command,
            &real2,
            &argv(&[
                "/usr/bin/java",
                "-Dserver.port=8082",
                "-jar",
                "/app/real2/demo-v3.jar"
            ])
        ));
        assert!(!runs_command(
            &command,
            &real2,
            &argv(&["java", "-Dserver.port=8081", "-jar", "/app/real1/demo.jar"])
        ));
        assert!(!runs_command(
            &command,
            &real2,
            &argv(&["python3", "-m", "http.server", "8082"])
        ));
        assert!(!runs_command(&command, &real2, &[]));
    }
}
