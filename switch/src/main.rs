//! The `switch` binary: see the `nonstop_switch` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    nonstop_common::main_with("switch", || nonstop_switch::run(std::env::args_os()))
}
