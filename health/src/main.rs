//! The `health` binary: see the `nonstop_health` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    nonstop_common::main_with("health", || nonstop_health::run(std::env::args_os()))
}
