//! The app's processes: the build `start` installs and launches, its health,
//! letting nginx let go of it (the drain), stopping it (a process group or
//! a Compose service) and retiring the one that was live; the process
//! trees and ports behind them.

pub mod adopt;
pub mod artifact;
pub mod compose;
pub mod drain;
pub mod health_rule;
pub mod ports;
pub mod readiness;
pub mod retiring;
pub mod stopping;
pub mod tree;
