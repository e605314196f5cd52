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
//! A journal in the state directory (see `nonstop_common::switch::journal`) lets the
//! next stage finish or undo a switch this process could not (SIGKILL). A
//! SIGINT/SIGTERM is honoured between steps: before the include is written
//! the switch just does not happen; after, the previous include is restored
//! (and nginx reloaded if it had been), and the stage exits 128 + signal.
//!
//! The steps themselves are `nonstop_common::switch` (shared with
//! `health`, whose last step is the switch) and `nonstop_common::app::retiring`;
//! this crate holds the stage's arguments, its `run` and `--rollback`.
//!
//! `--rollback` points nginx back at the other profile, the one it routed
//! to before, once that profile's app still passes the health rule.
//!
//! `--maintenance` routes every request to a page nginx serves itself (503
//! with `Retry-After`), through the same transaction
//! (`nonstop_common::switch::maintenance`); `--live` (or `--to NAME`) ends
//! it, the target health-checked first. A bare `switch` does not end it.
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

use anyhow::{anyhow, Result};
use clap::Parser;

use nonstop_common::switch::maintenance::{self, PageSource};
use nonstop_common::switch::rollback::rollback_target;
use nonstop_common::switch::{dry_run, switch_and_retire};
use nonstop_common::sys::error::usage;
use nonstop_common::{run_stage, CommonArgs, Log};

pub(crate) const LOG: Log = Log::new("switch");

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

    /// Route every request to a maintenance page nginx serves itself (503 with Retry-After), confirmed through nginx; `--live` ends it
    #[arg(long, conflicts_with_all = ["to", "rollback", "live"])]
    pub maintenance: bool,

    /// With --maintenance: the page's message (HTML-escaped into nonstop's page)
    #[arg(
        long,
        value_name = "TEXT",
        requires = "maintenance",
        conflicts_with = "page"
    )]
    pub message: Option<String>,

    /// With --maintenance: an HTML file to serve as the page, as it is
    #[arg(long, value_name = "FILE", requires = "maintenance")]
    pub page: Option<std::path::PathBuf>,

    /// With --maintenance: the Retry-After the page is sent with, in seconds
    #[arg(long, value_name = "SECS", requires = "maintenance", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub retry_after: u32,

    /// End maintenance: route back to the profile that was live when it began, once it passes its health check (`--to NAME` goes to another)
    #[arg(long, conflicts_with_all = ["to", "rollback"])]
    pub live: bool,
}

/// Entry point of the `switch` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    run_stage(LOG, &args.common, args.to.as_deref(), |ctx| {
        if args.maintenance {
            let source = match &args.page {
                Some(file) => PageSource::File(file.clone()),
                None => PageSource::Message(
                    args.message
                        .clone()
                        .unwrap_or_else(|| maintenance::DEFAULT_MESSAGE.to_string()),
                ),
            };
            return maintenance::begin(ctx, &source, args.retry_after);
        }
        let in_maintenance = maintenance::is_on(&ctx.config)?;
        let target = if args.live {
            ctx.action = Some("maintenance-off");
            in_maintenance.clone().ok_or_else(|| {
                usage("switch --live: maintenance is not on (the route names a profile); nothing was changed")
            })?
        } else if args.rollback {
            ctx.action = Some("rollback");
            rollback_target(ctx)?
        } else if let Some(name) = args.to.as_deref() {
            if in_maintenance.is_some() {
                ctx.action = Some("maintenance-off");
            }
            ctx.target(Some(name))?
        } else {
            if let Some(keep) = &in_maintenance {
                // Told nothing: a switch does not end maintenance by itself.
                return Err(anyhow!(
                    "maintenance is on{}: not switching away from it; `switch --live` returns to {}, `switch --to NAME` goes to NAME; nothing was changed",
                    maintenance::since_by(&ctx.config, &ctx.log),
                    keep.name
                ));
            }
            ctx.target(None)?
        };
        if ctx.dry_run {
            return dry_run(ctx, &target);
        }
        switch_and_retire(ctx, &target)
    })
}
