//! Running an external command (nginx -t, nginx -s reload, ssh ...) as an
//! argv, never through a shell, with a time limit and its output captured.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::procs::wait_for;

/// How a command ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// stderr, else stdout, trimmed: what to quote when the command failed.
    pub fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        text.trim().to_string()
    }
}

/// How much of a command's stdout and stderr is kept.
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Runs `argv` with stdin closed, waiting at most `limit`. A command that
/// cannot be started or runs too long is an error naming it.
pub fn run(argv: &[String], limit: Duration) -> Result<Outcome> {
    run_inner(argv, None, limit)
}

/// [`run`], with `input` written to the command's stdin (then closed).
pub fn run_with_input(argv: &[String], input: &[u8], limit: Duration) -> Result<Outcome> {
    run_inner(argv, Some(input), limit)
}

fn run_inner(argv: &[String], input: Option<&[u8]>, limit: Duration) -> Result<Outcome> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let shown = argv.join(" ");
    let mut command = Command::new(program);
    crate::signals::for_child(&mut command);
    let mut child = command
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    // Drain both pipes on threads so a chatty command cannot block on a full pipe.
    // Written from a thread, so a command that does not read its stdin
    // cannot block us past `limit`.
    let feeder = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(bytes)) => {
            let bytes = bytes.to_vec();
            Some(std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            }))
        }
        _ => None,
    };
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(pipe) = pipe {
                // A read error just ends the capture; the exit status is what counts.
                let _ = pipe.take(OUTPUT_LIMIT as u64).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let mut status = None;
    let finished = wait_for(limit, Duration::from_millis(2), || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s);
            true
        }
        Ok(None) => false,
        Err(_) => true,
    });
    let status = match (finished, status) {
        (Some(_), Some(s)) => s,
        _ => {
            // Kill and reap; errors here mean it is already gone.
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!(
                "`{shown}` did not finish within {}",
                crate::time::secs(limit)
            ));
        }
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Ok(Outcome {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn captures_status_and_output() {
        let ok = run(&argv(&["echo", "hi"]), Duration::from_secs(5)).unwrap();
        assert!(ok.success());
        assert_eq!(ok.message(), "hi");
        let bad = run(&argv(&["false"]), Duration::from_secs(5)).unwrap();
        assert!(!bad.success());
    }

    #[test]
    fn input_reaches_stdin() {
        let out = run_with_input(&argv(&["cat"]), b"set x;\n", Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout, "set x;\n");
    }

    #[test]
    fn a_hanging_command_is_killed_at_the_limit() {
        let err = run(&argv(&["sleep", "5"]), Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run(&argv(&["/nonexistent/nginx", "-t"]), Duration::from_secs(1)).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/nginx"), "{err:#}");
    }
}
