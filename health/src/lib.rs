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
//! While the maintenance page is on (`switch --maintenance`), `health`
//! checks the new build and leaves nginx on the page, unless
//! `--end-maintenance`.
//!
//! The waiting and the warm-up are `nonstop_common::app::readiness`, the switch
//! `nonstop_common::switch`; this crate holds the arguments and `run`.

use std::ffi::OsString;

use anyhow::Result;
use clap::Parser;

use nonstop_common::app::readiness;
use nonstop_common::switch::maintenance;
use nonstop_common::switch::{dry_run, switch_and_retire, withdraw_failed};
use nonstop_common::{run_stage, CommonArgs, Log};

pub(crate) const LOG: Log = Log::new("health");

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

    /// While the maintenance page is on: switch to the checked profile all the same, ending maintenance
    #[arg(long, conflicts_with = "no_switch")]
    pub end_maintenance: bool,
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
            readiness::dry_run(ctx, &target, args.no_switch)?;
            return match args.no_switch {
                true => Ok(()),
                false => dry_run(ctx, &target),
            };
        }
        // In upstream-pair mode a build that listens is already in nginx's
        // upstream: one that fails is stopped rather than left serving.
        readiness::wait_healthy(ctx, &target).map_err(|e| withdraw_failed(ctx, &target, e))?;
        readiness::warm_up(ctx, &target).map_err(|e| withdraw_failed(ctx, &target, e))?;
        if args.no_switch {
            LOG.say("--no-switch: leaving nginx as it is");
            return Ok(());
        }
        if maintenance::is_on(&ctx.config)?.is_some() {
            if !args.end_maintenance {
                // The new build is checked; the page stays until an operator ends it.
                LOG.warn(format!(
                    "maintenance is on{}: {} is healthy but nginx is left on the maintenance page; \
                     `switch --to {}` (or `health --end-maintenance`) ends it",
                    maintenance::since_by(&ctx.config, &ctx.log),
                    target.name,
                    target.name
                ));
                ctx.ends_plan = true;
                ctx.action = Some("maintenance-kept");
                return Ok(());
            }
            ctx.action = Some("maintenance-off");
        }
        switch_and_retire(ctx, &target)
    })
}
