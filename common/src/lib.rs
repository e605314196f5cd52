//! What the nonstop stages share, in the folders that are its parts, each
//! using only those below it (but for one arrow: the drain asks the routing
//! mode whether nginx's pool of connections is to be waited for):
//!
//! - [`frame`]: what every stage runs in: the config found, the lock and
//!   the deployment's plan, the body, its outcome; the hook budget;
//! - [`switch`]: the switch transaction, its confirmation through nginx,
//!   its journal and recovery, `--rollback`, shared by every mode;
//! - [`route`]: how nginx is pointed at a profile (one file per routing
//!   mode, over a host that is this one or nginx's over ssh) and which
//!   profile it points at now;
//! - [`app`]: the app's processes: the build, starting, health, the drain,
//!   stopping, retiring, Compose;
//! - [`nginx`]: what nonstop reads from nginx itself: its config dump, the
//!   blocks and upstreams in it, its pid file and workers, the probe;
//! - [`state`]: the state directory's records, its lock, and a stage's
//!   context;
//! - [`config`]: `nonstop.json`, validated, and nonstop's own fixed waits;
//! - [`sys`]: the process's primitives: commands, one HTTP GET, signals,
//!   clocks, /proc, files opened so that a planted link cannot redirect
//!   them, the stage-prefixed log, the exit codes.
//!
//! This crate plays the part `uucore` plays for coreutils: every stage crate
//! is a thin layer over it, and nothing in here exits the process.

pub mod app;
pub mod config;
pub mod frame;
pub mod nginx;
pub mod route;
pub mod state;
pub mod switch;
pub mod sys;

pub use config::{Config, Profile};
pub use frame::stage::{run_stage, CommonArgs};
pub use state::context::Context;
pub use sys::error::{exit_code, main_with, usage, Usage};
pub use sys::log::Log;

/// What every stage's `--version` prints after its name: the version and
/// the commit it was built from (common/build.rs), so that a binary found on
/// a server says which source it is.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NONSTOP_COMMIT"),
    ")"
);
