//! The `stop` binary: see the `nonstop_stop` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    nonstop_common::main_with("stop", || nonstop_stop::run(std::env::args_os()))
}
