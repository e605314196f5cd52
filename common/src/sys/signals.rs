//! SIGINT, SIGTERM and SIGHUP: a stage that gets one ends cleanly instead of
//! dying wherever it happens to be.
//!
//! The signals are blocked in every thread and taken by one thread with
//! sigwait(2), which only records which one came. The stage looks at that
//! record wherever it waits (the lock, a port, an answer) and at the edges of
//! the steps that change something, so it stops between steps: the lock is
//! released by the normal return path, a temp file is either renamed or
//! removed, an include file is the old one or the new one, and a half-done
//! switch is rolled back. The process then exits 128 + the signal's number,
//! as a shell would report it. SIGHUP (the terminal or the ssh session that
//! ran the stage went away) is one of them, handled like SIGTERM.
//!
//! SIGPIPE stays ignored, as the Rust runtime sets it before `main`: a write
//! to a pipe nobody reads fails with EPIPE instead of killing the stage. The
//! narration ignores that error ([`crate::sys::log`]); a result on stdout that
//! cannot be written is an error, exit 1.
//!
//! Children inherit the blocked set: since Rust 1.66 (rust-lang/rust#101077)
//! the standard library no longer empties the signal mask of a child it
//! spawns, and a signal ignored here stays ignored across exec. An app that
//! does not unblock SIGTERM itself (a Python, Go or Node server; the JVM
//! happens to) would never see `stop`'s SIGTERM and end in SIGKILL. So every
//! command a stage runs goes through [`for_child`], which gives the child an
//! empty mask and default dispositions, as a shell would start it.

use std::fmt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};

/// The signal that asked us to stop, as its number; 0 while none has.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// The signals that end a stage cleanly.
const HANDLED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// The error a stage ends with after a signal. Exit code 128 + signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted(pub Signal);

impl Interrupted {
    pub(crate) fn exit_code(self) -> u8 {
        u8::try_from(128 + self.0 as i32).unwrap_or(u8::MAX)
    }
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}", self.0.as_str())
    }
}

impl std::error::Error for Interrupted {}

/// Blocks the handled signals and starts the thread that waits for them.
/// Call first thing in `main`, before any other thread exists, so every
/// thread inherits the mask. Without it (tests calling `run` directly) the
/// signals keep their default action.
pub(crate) fn install(stage: &'static str) -> nix::Result<()> {
    ignore_sigpipe()?;
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(signal) = set.wait() else { continue };
            let first = CAUGHT
                .compare_exchange(0, signal as i32, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            // Through the log, which drops write errors: a SIGHUP often
            // comes with a stderr that has gone away too.
            if first {
                crate::sys::log::line(format_args!(
                    "{stage}: {} received: stopping at the next safe point",
                    signal.as_str()
                ));
            } else {
                crate::sys::log::line(format_args!(
                    "{stage}: {} received: already stopping, finishing the cleanup",
                    signal.as_str()
                ));
            }
        })
        .map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}

/// The kernel's `struct sigaction` (not glibc's) for SIG_DFL: handler 0, no
/// flags, no restorer, empty mask. Four words cover it on every Linux ABI
/// that has a restorer field, and the kernel reads no more than its own size.
const KERNEL_SIG_DFL: [libc::c_ulong; 4] = [0; 4];
/// The `sigsetsize` rt_sigaction(2) wants: the kernel's 64 signals, in bytes.
const KERNEL_SIGSET_BYTES: usize = 8;

/// Makes the child of `cmd` start with no signal blocked and every signal
/// at its default action, whatever this process blocks or ignores (see the
/// module header). Call it on every `Command` a stage spawns.
#[allow(unsafe_code)]
pub fn for_child(cmd: &mut Command) {
    let empty = SigSet::empty();
    // Read here, in the parent: the child runs only async-signal-safe calls.
    let last = libc::SIGRTMAX();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe functions may be called. It makes raw
    // rt_sigaction(2) system calls (SIG_DFL: no handler code ever runs)
    // reading a constant at least as large as the kernel's struct, and
    // sigprocmask(2) on a set built before the fork; it allocates nothing,
    // takes no lock and touches no state shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            for n in 1..=last {
                if n == libc::SIGKILL || n == libc::SIGSTOP {
                    continue;
                }
                // The system call, not glibc's signal(): glibc refuses the
                // two signals it keeps for its threads (32, 33), which a
                // parent may still have ignored (seen under `cargo test`),
                // and an ignored signal stays ignored across exec. A
                // failure leaves that one signal as it was; nothing better
                // can be done between fork and exec.
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    n,
                    KERNEL_SIG_DFL.as_ptr(),
                    std::ptr::null_mut::<libc::c_ulong>(),
                    KERNEL_SIGSET_BYTES,
                );
            }
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None).map_err(std::io::Error::from)
        });
    }
}

/// SIGPIPE ignored, so a write to a pipe nobody reads is an EPIPE error the
/// stage handles (see the module header) rather than its death. The Rust
/// runtime already does this before `main`, unless a build opts out
/// (`-Zon-broken-pipe`); saying it here keeps it true whatever the build.
#[allow(unsafe_code)]
fn ignore_sigpipe() -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so nothing can run in
    // signal context; the disposition is process-wide, as intended.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }
        .map(|_| ())
}

/// The signal received so far, if any.
pub(crate) fn caught() -> Option<Signal> {
    Signal::try_from(CAUGHT.load(Ordering::SeqCst)).ok()
}

/// `Err` once a signal has come.
pub fn check() -> Result<(), Interrupted> {
    match caught() {
        Some(s) => Err(Interrupted(s)),
        None => Ok(()),
    }
}

/// Sleeps `d`, waking early (with `Err`) when a signal comes.
pub(crate) fn pause(d: Duration) -> Result<(), Interrupted> {
    let until = Instant::now() + d;
    loop {
        check()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Polls `done` every `every` until it holds (`Ok(Some(waited))`), `limit`
/// passes (`Ok(None)`) or a signal comes (`Err`).
pub fn wait_for(
    limit: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<Option<Duration>, Interrupted> {
    let start = Instant::now();
    loop {
        if done() {
            return Ok(Some(start.elapsed()));
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            return Ok(None);
        }
        pause(every.min(limit - elapsed))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Interrupted(Signal::SIGINT).exit_code(), 130);
        assert_eq!(Interrupted(Signal::SIGTERM).exit_code(), 143);
        assert_eq!(
            Interrupted(Signal::SIGTERM).to_string(),
            "interrupted by SIGTERM"
        );
    }

    /// The masks of a process, from /proc: `SigBlk` and `SigIgn` as hex.
    fn masks(status: &str) -> Vec<(String, String)> {
        status
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| *k == "SigBlk" || *k == "SigIgn")
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    #[test]
    #[allow(unsafe_code)]
    fn commands_start_with_no_signal_blocked_or_ignored() {
        // A thread of its own, blocking what `install` blocks (the mask is
        // per thread, and a child inherits its spawning thread's), in a
        // process that ignores SIGHUP the way `nohup` leaves it.
        let seen = std::thread::spawn(|| {
            let mut set = SigSet::empty();
            for s in HANDLED {
                set.add(s);
            }
            set.thread_block().unwrap();
            // SAFETY: SIG_IGN installs no handler code; the old disposition
            // is put back below.
            let old = unsafe {
                nix::sys::signal::signal(Signal::SIGHUP, nix::sys::signal::SigHandler::SigIgn)
            }
            .unwrap();
            let own = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let argv: Vec<String> = ["sh", "-c", "grep -E 'SigBlk|SigIgn' /proc/self/status"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let out = crate::sys::cmd::run(&argv, Duration::from_secs(10));
            // SAFETY: as above, the disposition this process had.
            unsafe { nix::sys::signal::signal(Signal::SIGHUP, old) }.unwrap();
            (own, out.unwrap())
        })
        .join()
        .unwrap();
        let (own, out) = seen;
        assert!(out.success(), "{}", out.message());
        // The premise: this thread does block and ignore something.
        for (key, value) in masks(&own) {
            assert_ne!(value.trim_start_matches('0'), "", "{key} of the parent");
        }
        let child = masks(&out.stdout);
        assert_eq!(child.len(), 2, "{}", out.stdout);
        for (key, value) in child {
            assert_eq!(
                value.trim_start_matches('0'),
                "",
                "{key} of the child is {value}, must be empty"
            );
        }
    }
}
