//! The state directory's lock: an flock on `STATE_DIR/lock`, held while a
//! stage runs. The kernel drops an flock when its holder dies, so a killed
//! stage never leaves a lock that must be removed by hand. The holder's name
//! is written into the file so a waiting stage can say who it waits for, and
//! is wiped on a normal release: a name still there when the lock is free
//! means its holder died (or the machine rebooted) while holding it, which
//! the next taker reports as it takes over.
//!
//! The lock file is opened with O_NOFOLLOW (a planted link is refused, never
//! truncated through), and an flock on a file alone is not enough: a lock
//! file deleted or replaced while held would let the next stage lock a new
//! file beside the holder. So after the flock, the taker checks the file it
//! locked is still the one at the path (device and inode) and else tries
//! again, and it also flocks the state directory itself, which cannot be
//! deleted or replaced while it holds files (and whose parent only the
//! running user and root may write, see `files::check_dirs`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::sys::files;
use crate::sys::log::Log;
use crate::sys::time::{now_unix_ms, secs};

/// Who holds the lock, as written into the lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Holder {
    pub pid: u32,
    pub stage: String,
    pub deployment_id: Option<String>,
    pub since_unix_ms: u64,
    #[serde(default)]
    pub boot_id: String,
}

impl Holder {
    /// "`stage` (pid N) of deployment D".
    pub(crate) fn name(&self) -> String {
        let deployment = self
            .deployment_id
            .as_deref()
            .map(|d| format!(" of deployment {d}"))
            .unwrap_or_default();
        format!("`{}` (pid {}){deployment}", self.stage, self.pid)
    }

    /// The name and how long it has held the lock.
    pub(crate) fn describe(&self) -> String {
        let age = now_unix_ms().saturating_sub(self.since_unix_ms);
        format!(
            "{}, holding it for {}",
            self.name(),
            secs(Duration::from_millis(age))
        )
    }
}

/// A held lock; dropping it wipes the holder's name and releases the flock.
#[derive(Debug)]
pub(crate) struct Lock {
    flock: Flock<File>,
    /// The state directory's own flock; released after the file's.
    _dir: Flock<File>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Best effort: a name left behind only makes the next taker report a
        // dead holder that was not.
        let _ = self.flock.set_len(0);
    }
}

/// Takes the lock, waiting at most until `deadline`. The error names the
/// holder when the wait runs out.
pub(crate) fn acquire(path: &Path, me: &Holder, deadline: Instant, log: &Log) -> Result<Lock> {
    let mut wait = Waiting {
        path,
        dir: path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
        deadline,
        log,
        announced: false,
        first_refusal: None,
    };
    loop {
        let file = files::open_rw(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                // Deleted or replaced between our open and our flock (its
                // holder's name wiped and the file removed by hand, say):
                // what we hold locks nothing. Open the path again.
                if !files::is_at(&flock, path).unwrap_or(false) {
                    if Instant::now() >= deadline {
                        return Err(anyhow!(
                            "the lock file {} keeps being replaced while nonstop takes it; gave up",
                            path.display()
                        ));
                    }
                    continue;
                }
                let Some(held) = wait.lock_dir(flock)? else {
                    continue;
                };
                return Ok(wait.take(held, me));
            }
            Err((_, Errno::EWOULDBLOCK)) => wait.for_holder()?,
            Err((_, errno)) => {
                return Err(anyhow!("cannot lock {}: {errno}", path.display()));
            }
        }
    }
}

/// The lock file and the directory flock, both held.
type Held = (Flock<File>, Flock<File>);

/// What `acquire` keeps between its tries.
struct Waiting<'a> {
    path: &'a Path,
    /// The state directory, flocked too.
    dir: &'a Path,
    deadline: Instant,
    log: &'a Log,
    /// Whether the wait was said once already.
    announced: bool,
    first_refusal: Option<Instant>,
}

impl Waiting<'_> {
    /// With the lock file flocked, flocks the directory too. `None`: another
    /// stage holds the directory (its lock file was deleted or replaced
    /// while it held it), so the file's flock is let go and we try again.
    fn lock_dir(&mut self, flock: Flock<File>) -> Result<Option<Held>> {
        let (path, dir) = (self.path, self.dir);
        match lock_dir(dir) {
            Ok(d) => Ok(Some((flock, d))),
            Err(Errno::EWOULDBLOCK) => {
                drop(flock);
                if Instant::now() >= self.deadline {
                    return Err(anyhow!(
                        "the state directory {} is locked by another nonstop stage whose lock file {} was removed or replaced while it held it; gave up waiting",
                        dir.display(),
                        path.display()
                    ));
                }
                if !self.announced {
                    self.log.say(format!(
                        "waiting for another nonstop stage that holds {} (its lock file {} was removed or replaced)",
                        dir.display(),
                        path.display()
                    ));
                    self.announced = true;
                }
                crate::sys::signals::pause(Duration::from_millis(50))?;
                Ok(None)
            }
            Err(errno) => Err(anyhow!("cannot lock {}: {errno}", dir.display())),
        }
    }

    /// Both flocks held: says whose lock a dead holder left, and writes our
    /// name into the file.
    fn take(&self, (mut flock, dir_flock): Held, me: &Holder) -> Lock {
        let (path, log) = (self.path, self.log);
        if let Some(dead) = read_holder(path) {
            log.warn(format!(
                "taking over the lock from {}, which ended without releasing it ({})",
                dead.name(),
                if !dead.boot_id.is_empty() && dead.boot_id != me.boot_id {
                    "the machine has rebooted since".to_string()
                } else {
                    format!("pid {} was killed or crashed", dead.pid)
                }
            ));
        }
        let written = flock
            .set_len(0)
            .and_then(|()| flock.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| {
                let text = serde_json::to_string(me).unwrap_or_default();
                flock.write_all(text.as_bytes())
            });
        if let Err(e) = written {
            log.warn(format!(
                "cannot record the lock holder in {}: {e}",
                path.display()
            ));
        }
        Lock {
            flock,
            _dir: dir_flock,
        }
    }

    /// Another stage holds the lock file: waits a moment, naming it, or
    /// gives up at the deadline.
    fn for_holder(&mut self) -> Result<()> {
        let named = read_holder(self.path);
        let holder = named
            .as_ref()
            .map(|h| h.describe())
            .unwrap_or_else(|| "another nonstop stage".to_string());
        if Instant::now() >= self.deadline {
            return Err(anyhow!(
                "the state directory is locked by {holder}; gave up waiting (lock file {})",
                self.path.display()
            ));
        }
        // The holder writes its name just after it takes the lock:
        // give it a moment, so the message can name it.
        let waiting = *self.first_refusal.get_or_insert_with(Instant::now);
        if !self.announced && (named.is_some() || waiting.elapsed() >= Duration::from_secs(1)) {
            self.log
                .say(format!("waiting for the lock held by {holder}"));
            self.announced = true;
        }
        crate::sys::signals::pause(Duration::from_millis(50))?;
        Ok(())
    }
}

/// Flocks the directory itself (opened read-only, as a directory).
fn lock_dir(dir: &Path) -> Result<Flock<File>, Errno> {
    let file = File::open(dir).map_err(|e| {
        e.raw_os_error()
            .map(Errno::from_raw)
            .unwrap_or(Errno::EINVAL)
    })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| errno)
}

/// The holder recorded in a lock file, if it can be read.
pub(crate) fn read_holder(path: &Path) -> Option<Holder> {
    let mut text = String::new();
    files::open_read(path)
        .ok()?
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_waits_then_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("nonstop-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lock");
        let log = Log::new("test");
        let me = Holder {
            pid: 4242,
            stage: "health".into(),
            deployment_id: Some("d-7".into()),
            since_unix_ms: now_unix_ms(),
            boot_id: "b".into(),
        };
        let held = acquire(&path, &me, Instant::now(), &log).unwrap();
        let started = Instant::now();
        let err = acquire(
            &path,
            &me,
            Instant::now() + Duration::from_millis(200),
            &log,
        )
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        let msg = err.to_string();
        assert!(
            msg.contains("health") && msg.contains("4242") && msg.contains("d-7"),
            "{msg}"
        );
        drop(held);
        assert!(
            read_holder(&path).is_none(),
            "a released lock must not name a holder"
        );
        acquire(&path, &me, Instant::now(), &log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn holder() -> Holder {
        Holder {
            pid: 4243,
            stage: "stop".into(),
            deployment_id: Some("d-8".into()),
            since_unix_ms: now_unix_ms(),
            boot_id: "b".into(),
        }
    }

    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nonstop-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_lock_file_deleted_or_replaced_while_held_lets_nobody_in() {
        let dir = fresh_dir("replaced");
        let path = dir.join("lock");
        let log = Log::new("test");
        let held = acquire(&path, &holder(), Instant::now(), &log).unwrap();

        std::fs::remove_file(&path).unwrap();
        let err = acquire(&path, &holder(), Instant::now(), &log)
            .unwrap_err()
            .to_string();
        assert!(err.contains("removed or replaced"), "{err}");

        std::fs::write(dir.join("other"), b"").unwrap();
        std::fs::rename(dir.join("other"), &path).unwrap();
        let err = acquire(&path, &holder(), Instant::now(), &log)
            .unwrap_err()
            .to_string();
        assert!(err.contains("removed or replaced"), "{err}");

        drop(held);
        acquire(&path, &holder(), Instant::now(), &log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_planted_at_the_lock_is_refused_and_its_target_untouched() {
        let dir = fresh_dir("link");
        let path = dir.join("lock");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = format!(
            "{:#}",
            acquire(&path, &holder(), Instant::now(), &Log::new("test")).unwrap_err()
        );
        assert!(err.contains("is a symlink"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
