//! What one hook run gave ([`HookRun`]), with chained `#[track_caller]`
//! checks (`run.assert_code(1).assert_stderr_has("...")`), so a failing
//! test points at its own line and shows what the stage said.

use std::process::ExitStatus;
use std::time::Duration;

/// What one hook run gave.
#[derive(Debug)]
pub struct HookRun {
    pub stage: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// From spawn to both stdout and stderr closed (what the CodeDeploy agent waits for).
    pub closed_after: Duration,
}

impl HookRun {
    /// The exit code; -1 when a signal ended it.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics with the hook's output unless it exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &HookRun {
        assert!(
            self.status.success(),
            "{} failed ({}):\n{}{}",
            self.stage,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics with the hook's output unless it exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &HookRun {
        assert_eq!(
            self.code(),
            code,
            "{} exited {} where {code} was expected:\n{}{}",
            self.stage,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics with the hook's stderr unless it contains `text`.
    #[track_caller]
    pub fn assert_stderr_has(&self, text: &str) -> &HookRun {
        assert!(
            self.stderr.contains(text),
            "{}'s stderr lacks {text:?}:\n{}",
            self.stage,
            self.stderr
        );
        self
    }

    /// Panics with the hook's stderr if it contains `text`.
    #[track_caller]
    pub fn assert_stderr_lacks(&self, text: &str) -> &HookRun {
        assert!(
            !self.stderr.contains(text),
            "{}'s stderr has {text:?}:\n{}",
            self.stage,
            self.stderr
        );
        self
    }

    /// Panics with the hook's output unless its stdout contains `text`.
    #[track_caller]
    pub fn assert_stdout_has(&self, text: &str) -> &HookRun {
        assert!(
            self.stdout.contains(text),
            "{}'s stdout lacks {text:?}:\n{}{}",
            self.stage,
            self.stdout,
            self.stderr
        );
        self
    }
}
