//! Exit codes and the one place where an error becomes a process exit status.
//!
//! 0: done; 1: the deployment must stop (unhealthy, nginx refused the config,
//! switch not confirmed, a live app in the way, ...); 2: usage or config error,
//! reported before anything was touched; 128+N: stopped cleanly by signal N
//! (130 for SIGINT, 143 for SIGTERM). Never 101: a panic (a bug) is caught
//! at the binary's entry and reported as a failure, exit 1.

use std::fmt;
use std::process::ExitCode;

use crate::sys::signals::Interrupted;

/// The deployment failed; the operator must look before going on.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Bad command line or config; nothing was touched.
pub(crate) const EXIT_USAGE: u8 = 2;

/// A usage or configuration error. Anything in an error chain that is a
/// `Usage` makes the process exit 2 instead of 1.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Builds an `anyhow::Error` that exits 2.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(msg.into()))
}

/// The exit code an error stands for.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Usage>() {
            return EXIT_USAGE;
        }
        if let Some(i) = cause.downcast_ref::<Interrupted>() {
            return i.exit_code();
        }
        if let Some(clap_err) = cause.downcast_ref::<clap::Error>() {
            return u8::try_from(clap_err.exit_code()).unwrap_or(EXIT_USAGE);
        }
    }
    EXIT_FAILED
}

/// Runs a stage's `run` and turns its outcome into an exit status, printing
/// the error as `stage: error: ...`. The only function a `main` calls.
///
/// A panic anywhere in `run` is a bug, but it must not surface as Rust's
/// exit 101, which no operator or CodeDeploy hook knows to read: it is
/// caught here, after the unwinding ran every guard's cleanup (the lock is
/// released; a switch cut short stays in its journal for the next stage,
/// as after a kill), and becomes exit 1 with a message.
pub fn main_with(stage: &'static str, run: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    // The default hook is replaced by one that writes through the log,
    // which cannot itself panic on a broken stderr.
    std::panic::set_hook(Box::new(move |info| {
        crate::sys::log::line(format_args!("{stage}: internal error: {info}"));
    }));
    if let Err(e) = crate::sys::signals::install(stage) {
        crate::sys::log::line(format_args!("{stage}: warning: cannot take over SIGINT/SIGTERM ({e}); a signal will end this stage abruptly"));
    }
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(outcome) => outcome,
        Err(_) => {
            crate::sys::log::line(format_args!(
                "{stage}: error: stopped by a bug (the internal error above); \
                 run `profile --json` to see where the deployment stands"
            ));
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // clap renders its own help, version and usage messages.
            if let Some(clap_err) = err.downcast_ref::<clap::Error>() {
                // Printing help can only fail on a closed stdout; nothing to add then.
                let _ = clap_err.print();
                return ExitCode::from(exit_code(&err));
            }
            crate::sys::log::line(format_args!("{stage}: error: {err:#}"));
            ExitCode::from(exit_code(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn usage_anywhere_in_the_chain_exits_2() {
        let err = Err::<(), _>(usage("bad key"))
            .context("reading /etc/nonstop.json")
            .unwrap_err();
        assert_eq!(exit_code(&err), 2);
        assert_eq!(exit_code(&anyhow::anyhow!("unhealthy")), 1);
    }

    #[test]
    #[allow(clippy::panic)]
    fn a_panic_exits_1_not_101() {
        let code = main_with("test", || panic!("a bug"));
        // Back to the default hook for the other tests of this binary.
        drop(std::panic::take_hook());
        assert_eq!(code, ExitCode::from(EXIT_FAILED));
    }
}
