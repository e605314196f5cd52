//! `stop` (CodeDeploy AfterInstall): stop whatever runs on the idle port.
//!
//! The book's stop.sh finds the pid with lsof, sends `kill -15` and sleeps
//! 5 s, so a slow shutdown leaves the port taken and start.sh then dies with
//! "Address already in use". Here the listener is found through /proc, the
//! stage waits for the event itself (the process gone and the port free),
//! sends SIGKILL after `app.stop_timeout_secs`, and refuses outright to touch
//! the profile nginx routes to.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;
use nix::sys::signal::Signal;

use nonstop_common::detect;
use nonstop_common::procs::{self, cmdline, is_alive, is_same_alive, listening, wait_for};
use nonstop_common::state::Launched;
use nonstop_common::time::secs;
use nonstop_common::{run_stage, CommonArgs, Context, Log, Profile};

pub const LOG: Log = Log::new("stop");

/// How long a SIGKILLed process may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the stage looks whether the process has gone.
const POLL: Duration = Duration::from_millis(5);

/// Stop the app on the idle port (SIGTERM, then SIGKILL after the timeout).
#[derive(Debug, Parser)]
#[command(name = "stop", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Stop this profile instead of the idle one (never the live one)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}

/// Entry point of the `stop` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    run_stage(LOG, &args.common, args.profile.as_deref(), |ctx| {
        let target = ctx.target(args.profile.as_deref())?;
        let live = live_now(ctx, args.profile.is_some())?;
        if live.as_ref() == Some(&target) {
            return Err(anyhow!(
                "refusing to stop {} ({}): nginx routes to it, it is the live profile",
                target.name,
                target.port
            ));
        }
        stop_profile(ctx, &target, live.as_ref())
    })
}

/// The profile nginx routes to *now*, which `stop` never touches, whatever
/// the plan or the command line says. A plan from an earlier stage (or a
/// profile named by hand) may be out of date, so those cases detect afresh.
fn live_now(ctx: &Context, explicit: bool) -> Result<Option<Profile>> {
    if ctx.from_plan || explicit {
        Ok(detect::detect(&ctx.config)
            .context("cannot tell which profile is live right now, so nothing is stopped")?
            .live)
    } else {
        Ok(ctx.slots.live.clone())
    }
}

/// Stops every process listening on the target's port, plus the process
/// `start` launched for it if that is still starting up. `live` is the
/// profile nginx routes to now: a process that also listens on its port is
/// never signalled.
pub fn stop_profile(ctx: &Context, target: &Profile, live: Option<&Profile>) -> Result<()> {
    let port = target.port;
    let seen = listening(port).with_context(|| format!("cannot read who listens on {port}"))?;
    if !seen.is_free() && seen.pids.is_empty() {
        return Err(anyhow!(
            "port {port} is held by a process this user cannot see (another user's?); not stopping anything"
        ));
    }
    let mut victims = seen.pids.clone();
    let launched: Option<Launched> = ctx
        .state
        .read(&ctx.state.launched_path(&target.name), &LOG)?;
    if let Some(l) = launched.filter(|l| l.port == port && is_same_alive(l.pid, l.start_time)) {
        if !victims.contains(&l.pid) {
            LOG.say(format!(
                "{} (pid {}) started by nonstop is running but not listening yet",
                target.name, l.pid
            ));
            victims.push(l.pid);
        }
    }
    if victims.is_empty() {
        LOG.say(format!(
            "nothing listens on {port} ({}); nothing to stop",
            target.name
        ));
        return Ok(());
    }
    if let Some(live) = live.filter(|l| *l != target) {
        let on_live = listening(live.port).map(|l| l.pids).unwrap_or_default();
        if let Some(pid) = victims.iter().find(|p| on_live.contains(p)) {
            return Err(anyhow!(
                "pid {pid} listens on {port} and also on the live port {}; stopping it would stop the live app",
                live.port
            ));
        }
    }

    for &pid in &victims {
        LOG.say(format!(
            "{} (pid {pid}: {}) on {port}; sending SIGTERM",
            target.name,
            cmdline(pid)
        ));
        procs::signal(pid, Signal::SIGTERM).with_context(|| format!("cannot signal pid {pid}"))?;
    }
    let gone = || {
        victims.iter().all(|&p| !is_alive(p))
            && listening(port).map(|l| l.is_free()).unwrap_or(false)
    };
    let timeout = ctx.config.app.stop_timeout;
    if let Some(waited) = wait_for(timeout, POLL, gone) {
        LOG.say(format!(
            "exited after {}; port {port} is free",
            secs(waited)
        ));
        return Ok(());
    }

    let stubborn: Vec<i32> = victims.iter().copied().filter(|&p| is_alive(p)).collect();
    for &pid in &stubborn {
        LOG.say(format!(
            "pid {pid} still running after {}; sending SIGKILL",
            secs(timeout)
        ));
        procs::signal(pid, Signal::SIGKILL).with_context(|| format!("cannot signal pid {pid}"))?;
    }
    match wait_for(KILL_WAIT, POLL, gone) {
        Some(waited) => {
            LOG.say(format!(
                "killed; gone after {}; port {port} is free",
                secs(waited)
            ));
            Ok(())
        }
        None => {
            let holders = listening(port).map(|l| l.pids).unwrap_or_default();
            Err(anyhow!(
                "port {port} is still taken after SIGKILL (pids {holders:?}); look at it by hand"
            ))
        }
    }
}
