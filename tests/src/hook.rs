//! What one hook run gave ([`HookRun`]): exit status, output, timings.

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
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics with the hook's output unless it exited 0.
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
}
