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
//! The steps themselves are `nonstop_common::switching` (shared with
//! `health`, whose last step is the switch) and `nonstop_common::retiring`;
//! this crate holds the stage's arguments, its `run` and `--rollback`.
//!
//! `--rollback` points nginx back at the other profile, the one it routed
//! to before, once that profile's app still passes the health rule.
//!
//! The same sequence serves every route (`nonstop_common::route`): the
//! include file, or a symlink between site files, on this host or over ssh.
//! In upstream-pair mode nginx is not touched: the switch waits until nginx
//! sends the new app requests (after the upstream's own `fail_timeout`), and
//! a new app that fails is stopped, since it is in nginx's rotation as soon
//! as it listens. With `app.retire` (always in that mode) the previous app
//! is stopped once nginx has let go of it: its old workers gone and no
//! connection to it left, within `nginx.drain_timeout_secs`;
//! `app.retire_busy` decides what happens past that bound.

use std::ffi::OsString;

use anyhow::Result;
use clap::Parser;

use nonstop_common::switching::{dry_run, rollback_target, switch_and_retire};
use nonstop_common::{run_stage, CommonArgs, Log};

pub const LOG: Log = Log::new("switch");

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
