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
//! as a shell would report it.
//!
//! Blocking is inherited by threads but not by the commands a stage runs:
//! the standard library empties the signal mask of every child it spawns, so
//! nginx and the app still take SIGTERM normally.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

/// The signal that asked us to stop, as its number; 0 while none has.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// The signals that end a stage cleanly.
const HANDLED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

/// The error a stage ends with after a signal. Exit code 128 + signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted(pub Signal);

impl Interrupted {
    pub fn exit_code(self) -> u8 {
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
pub fn install(stage: &'static str) -> nix::Result<()> {
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
            if first {
                eprintln!(
                    "{stage}: {} received: stopping at the next safe point",
                    signal.as_str()
                );
            } else {
                eprintln!(
                    "{stage}: {} received: already stopping, finishing the cleanup",
                    signal.as_str()
                );
            }
        })
        .map_err(|_| nix::Error::EAGAIN)?;
    Ok(())
}

/// The signal received so far, if any.
pub fn caught() -> Option<Signal> {
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
pub fn pause(d: Duration) -> Result<(), Interrupted> {
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
}
