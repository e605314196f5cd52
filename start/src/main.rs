//! The `start` binary: see the `nonstop_start` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    nonstop_common::main_with("start", || nonstop_start::run(std::env::args_os()))
}
