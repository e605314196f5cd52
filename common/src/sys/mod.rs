//! The process's primitives the rest is built on: an external command as
//! an argv with a deadline, one bounded HTTP GET, signals handled at safe
//! points, clocks, the stage-prefixed lines on stderr and the exit-code
//! contract.

pub mod cmd;
pub mod error;
pub mod files;
pub mod http;
pub mod log;
pub mod procs;
pub mod signals;
pub mod time;
