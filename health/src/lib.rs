//! `health` (CodeDeploy ValidateService): wait until the app on the idle port
//! answers as the idle profile, then switch nginx to it.
//!
//! The book's health.sh sleeps 10 s, then tries 10 times 10 s apart and
//! counts any body containing "real" as healthy. Here the check polls every
//! `health.interval_ms` from the first moment, needs the body to equal
//! `health.expect` (default: the profile's own name), gives up after
//! `health.timeout_secs`, and fails at once when the started process has
//! died, quoting the end of its log. With `health.warmup` it then sends
//! the new app some requests on its own port before nginx is switched to it.
//!
//! The waiting and the warm-up are `nonstop_common::readiness`, the switch
//! `nonstop_common::switching`; this crate holds the arguments and `run`.

use std::ffi::OsString;

use anyhow::Result;
use clap::Parser;

use nonstop_common::readiness;
use nonstop_common::switching::{switch_and_retire, withdraw_failed};
use nonstop_common::{run_stage, CommonArgs, Log};

pub const LOG: Log = Log::new("health");

/// Wait until the idle profile's app answers correctly, then switch nginx to it.
#[derive(Debug, Parser)]
#[command(name = "health", version = nonstop_common::VERSION, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Check this profile instead of the idle one
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// Only check; leave nginx as it is
    #[arg(long)]
    pub no_switch: bool,
}

/// Entry point of the `health` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    run_stage(LOG, &args.common, args.profile.as_deref(), |ctx| {
        let target = ctx.target(args.profile.as_deref())?;
        if ctx.dry_run {
            return readiness::dry_run(ctx, &target, args.no_switch);
        }
        // In upstream-pair mode a build that listens is already in nginx's
        // upstream: one that fails is stopped rather than left serving.
        readiness::wait_healthy(ctx, &target).map_err(|e| withdraw_failed(ctx, &target, e))?;
        readiness::warm_up(ctx, &target).map_err(|e| withdraw_failed(ctx, &target, e))?;
        if args.no_switch {
            LOG.say("--no-switch: leaving nginx as it is");
            return Ok(());
        }
        switch_and_retire(ctx, &target)
    })
}
