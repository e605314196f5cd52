//! Running an external command (nginx -t, nginx -s reload, ssh ...) as an
//! argv, never through a shell, with a time limit and its output captured.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use crate::sys::time::wait_for;

/// How a command ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    /// stdout as text (invalid UTF-8 replaced), for messages and parsing.
    pub stdout: String,
    /// stdout exactly as the command wrote it, for file contents (an
    /// include read over ssh is restored byte for byte).
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
    /// Why stdout or stderr may lack part of what the command wrote: more
    /// than [`OUTPUT_LIMIT`], or a pipe still held open by something the
    /// command left running after [`DRAIN_AFTER_EXIT`]. `None`: complete.
    pub incomplete: Option<String>,
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
        match &self.incomplete {
            Some(why) => format!("{} ({why})", text.trim()).trim().to_string(),
            None => text.trim().to_string(),
        }
    }
}

/// How much of a command's stdout and stderr is kept.
pub(crate) const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long the output of a command is still read once it has exited. A
/// process it left running (`cmd &` in a script, a daemonizing helper, an
/// ssh ControlPersist master) inherits its stdout and stderr and may hold
/// them open for ever; waiting for their end would hang the stage.
pub(crate) const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Runs `argv` with stdin closed, waiting at most `limit`. A command that
/// cannot be started or runs too long is an error naming it.
pub(crate) fn run(argv: &[String], limit: Duration) -> Result<Outcome> {
    run_inner(argv, None, limit)
}

/// [`run`], with `input` written to the command's stdin (then closed).
pub(crate) fn run_with_input(argv: &[String], input: &[u8], limit: Duration) -> Result<Outcome> {
    run_inner(argv, Some(input), limit)
}

fn run_inner(argv: &[String], input: Option<&[u8]>, limit: Duration) -> Result<Outcome> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let shown = argv.join(" ");
    let mut command = Command::new(program);
    crate::sys::signals::for_child(&mut command);
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
    // Written from a thread, so a command that does not read its stdin
    // cannot block us past `limit`. Never joined: a process the command
    // left behind may hold its stdin without reading, and what it did not
    // read no longer matters once the command has exited.
    if let (Some(mut stdin), Some(bytes)) = (child.stdin.take(), input) {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let (ended, ends) = mpsc::channel::<()>();
    let out = drain(child.stdout.take(), ended.clone());
    let err = drain(child.stderr.take(), ended);
    let status = wait_exit(&mut child, limit, &shown)?;
    Ok(collect(status, &out, &err, &ends))
}

/// What a pipe's reader has read so far.
type Captured = Arc<Mutex<Vec<u8>>>;

/// Drains a pipe on a thread so a chatty command cannot block on a full
/// pipe. The thread appends to the returned buffer as it reads, so what was
/// read is there even when the pipe never ends, and reports on `ended` when
/// it hits the end (or the limit).
fn drain(pipe: Option<impl Read + Send + 'static>, ended: mpsc::Sender<()>) -> Captured {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::clone(&buffer);
    std::thread::spawn(move || {
        if let Some(pipe) = pipe {
            let mut pipe = pipe.take(OUTPUT_LIMIT as u64 + 1);
            let mut chunk = [0u8; 8192];
            // A read error just ends the capture; the exit status is what counts.
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = shared.lock() {
                    b.extend_from_slice(&chunk[..n]);
                }
            }
        }
        let _ = ended.send(());
    });
    buffer
}

/// Waits for the command's exit within `limit`; past it, kills and reaps
/// it and says so, naming the command.
fn wait_exit(child: &mut Child, limit: Duration, shown: &str) -> Result<ExitStatus> {
    let mut status = None;
    let finished = wait_for(limit, Duration::from_millis(2), || match child.try_wait() {
        Ok(Some(s)) => {
            status = Some(s);
            true
        }
        Ok(None) => false,
        Err(_) => true,
    });
    match (finished, status) {
        (Some(_), Some(s)) => Ok(s),
        _ => {
            // Kill and reap; errors here mean it is already gone.
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow!(
                "`{shown}` did not finish within {}",
                crate::sys::time::secs(limit)
            ))
        }
    }
}

/// The command has exited: its output ends now, unless something it left
/// running holds a pipe; then what was read by [`DRAIN_AFTER_EXIT`] is
/// what we have, and the outcome says it is incomplete.
fn collect(
    status: ExitStatus,
    out: &Captured,
    err: &Captured,
    ends: &mpsc::Receiver<()>,
) -> Outcome {
    let deadline = Instant::now() + DRAIN_AFTER_EXIT;
    let mut open = 2;
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match ends.recv_timeout(left) {
            Ok(()) => open -= 1,
            Err(_) => break,
        }
    }
    let take = |buffer: &Captured| match buffer.lock() {
        Ok(mut b) => std::mem::take(&mut *b),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let (mut stdout, mut stderr) = (take(out), take(err));
    let mut incomplete = None;
    if open > 0 {
        incomplete = Some(format!(
            "its output was read for {} after it exited and no longer: a process it left running still holds its stdout or stderr open",
            crate::sys::time::secs(DRAIN_AFTER_EXIT)
        ));
    }
    for text in [&mut stdout, &mut stderr] {
        if text.len() > OUTPUT_LIMIT {
            text.truncate(OUTPUT_LIMIT);
            incomplete.get_or_insert_with(|| format!("its output was cut at {OUTPUT_LIMIT} bytes"));
        }
    }
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stdout_bytes: stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        incomplete,
    }
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

    /// A command that leaves a process behind holding its stdout (a script
    /// ending in `daemon &`) returns once the command has exited and the
    /// drain deadline passed, with what it printed and a note, not when the
    /// leftover process lets go of the pipe 30 s later.
    #[test]
    fn a_background_child_holding_stdout_does_not_hold_us() {
        let started = Instant::now();
        let out = run(
            &argv(&["sh", "-c", "sleep 30 & echo hi; echo $!"]),
            Duration::from_secs(60),
        )
        .unwrap();
        let waited = started.elapsed();
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some("hi"), "{out:?}");
        // Stop the leftover sleep by its pid before asserting more.
        if let Some(pid) = lines.next().and_then(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(out.success());
        // A bound, not a timing: well before the sleep's 30 s.
        assert!(
            waited < Duration::from_secs(20),
            "returned after {waited:?}"
        );
        let note = out.incomplete.as_deref().unwrap_or_default();
        assert!(note.contains("still holds its stdout"), "{out:?}");
        assert!(out.message().contains("hi"), "{}", out.message());
    }

    #[test]
    fn output_is_kept_byte_for_byte() {
        let out = run_with_input(&argv(&["cat"]), b"# caf\xe9\n", Duration::from_secs(5)).unwrap();
        assert_eq!(out.stdout_bytes, b"# caf\xe9\n");
        assert!(out.incomplete.is_none());
    }
}
