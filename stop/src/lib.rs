//! `stop` (CodeDeploy AfterInstall): stop whatever runs on the idle port.
//!
//! The book's stop.sh finds the pid with lsof, sends `kill -15` and sleeps
//! 5 s, so a slow shutdown leaves the port taken and start.sh then dies with
//! "Address already in use". Here the listener is found through /proc, the
//! stage waits for the event itself (the process gone and the port free),
//! sends SIGKILL after `app.stop_timeout_secs`, and refuses outright to touch
//! the profile nginx routes to. What `start` launched is stopped as a whole
//! process group (a wrapper's children and helpers with it), and every
//! signal, the SIGKILL escalation included, re-checks the process's start
//! time first, so a reused pid is never signalled.
//!
//! Before any signal it lets nginx let go of the app, as retiring does
//! (`nonstop_common::app::drain::drain`): the next deployment's `stop` may
//! come while nginx's workers of the configuration before the last switch
//! still proxy a slow download or a long poll to the idle app. It waits,
//! within `nginx.drain_timeout_secs`, for those workers to exit and for the
//! app's own connections to end; past that bound `app.retire_busy` decides
//! (stop anyway, saying how many connections it cuts, or keep it and fail).
//!
//! The stopping itself is `nonstop_common::app::stopping`, shared with `switch`.
//! In a deployment (a `DEPLOYMENT_ID`), `stop` first looks for the build
//! `start` will install (`nonstop_common::app::artifact`) and stops nothing when
//! there is none: the idle app is not stopped for a start that would fail.
//!
//! It also refuses to signal a process on the idle port that is not ours: one
//! nonstop did not launch (no `launched-*.json` names it or its parent) and
//! whose command line is not the configured command for that profile. That
//! is somebody else's service on a port set by mistake, and killing it is not
//! a deployment's business unless the operator says `--force`.

use std::ffi::OsString;

use anyhow::{anyhow, Result};
use clap::Parser;

use nonstop_common::app::artifact;
use nonstop_common::app::stopping::stop_draining;
use nonstop_common::route::detect::live_now;
use nonstop_common::{run_stage, CommonArgs, Log};

pub(crate) const LOG: Log = Log::new("stop");

/// Stop the app on the idle port (SIGTERM, then SIGKILL after the timeout).
#[derive(Debug, Parser)]
#[command(name = "stop", version = nonstop_common::VERSION, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Stop this profile instead of the idle one (never the live one)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// Also stop a process on the port that nonstop did not start and that does not run the configured command
    #[arg(long)]
    pub force: bool,
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
        // In a deployment, `start` comes next: stop nothing it could not
        // replace. (By hand, stopping a stuck app needs no new build.)
        if ctx.deployment_id.is_some() {
            artifact::check_startable(&ctx.config)?;
        }
        let live = live_now(ctx, args.profile.is_some())?;
        if live.as_ref() == Some(&target) {
            return Err(anyhow!(
                "refusing to stop {} ({}): nginx routes to it, it is the live profile",
                target.name,
                target.port
            ));
        }
        stop_draining(ctx, &target, live.as_ref(), args.force)
    })
}
