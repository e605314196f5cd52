//! The `profile` binary: see the `nonstop_profile` library.

use std::process::ExitCode;

fn main() -> ExitCode {
    nonstop_common::main_with("profile", || nonstop_profile::run(std::env::args_os()))
}
