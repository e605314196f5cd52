//! What the nonstop stages share: configuration, detection of the live and
//! idle profile, state files, the deployment lock, process and port handling
//! through /proc, HTTP probing and running external commands.
//!
//! This crate plays the part `uucore` plays for coreutils: every stage crate
//! is a thin layer over it, and nothing in here exits the process.

pub mod adopt;
pub mod budget;
pub mod cmd;
pub mod compose;
pub mod config;
pub mod detect;
pub mod error;
pub mod fsx;
pub mod health_rule;
pub mod http;
pub mod lock;
pub mod log;
pub mod nginx;
pub mod ports;
pub mod procs;
pub mod readiness;
pub mod retiring;
pub mod route;
pub mod signals;
pub mod stage;
pub mod state;
pub mod stopping;
pub mod switching;
pub mod template;
pub mod time;
pub mod tree;
pub mod upstream;

pub use config::{Config, Profile};
pub use error::{exit_code, main_with, usage, Usage};
pub use log::Log;
pub use stage::{run_stage, CommonArgs, Context};

/// What every stage's `--version` prints after its name: the version and
/// the commit it was built from (common/build.rs), so that a binary found on
/// a server says which source it is.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NONSTOP_COMMIT"),
    ")"
);
