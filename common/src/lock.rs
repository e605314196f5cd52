//! The state directory's lock: an flock on `STATE_DIR/lock`, held while a
//! stage runs. The kernel drops an flock when its holder dies, so a killed
//! stage never leaves a lock that must be removed by hand. The holder's name
//! is written into the file so a waiting stage can say who it waits for, and
//! is wiped on a normal release: a name still there when the lock is free
//! means its holder died (or the machine rebooted) while holding it, which
//! the next taker reports as it takes over.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::log::Log;
use crate::time::{now_unix_ms, secs};

/// Who holds the lock, as written into the lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub stage: String,
    pub deployment_id: Option<String>,
    pub since_unix_ms: u64,
    #[serde(default)]
    pub boot_id: String,
}

impl Holder {
    /// "`stage` (pid N) of deployment D".
    pub fn name(&self) -> String {
        let deployment = self
            .deployment_id
            .as_deref()
            .map(|d| format!(" of deployment {d}"))
            .unwrap_or_default();
        format!("`{}` (pid {}){deployment}", self.stage, self.pid)
    }

    /// The name and how long it has held the lock.
    pub fn describe(&self) -> String {
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
pub struct Lock {
    flock: Flock<File>,
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
pub fn acquire(path: &Path, me: &Holder, deadline: Instant, log: &Log) -> Result<Lock> {
    let mut announced = false;
    let mut first_refusal: Option<Instant> = None;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut flock) => {
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
                return Ok(Lock { flock });
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                let named = read_holder(path);
                let holder = named
                    .as_ref()
                    .map(|h| h.describe())
                    .unwrap_or_else(|| "another nonstop stage".to_string());
                if Instant::now() >= deadline {
                    return Err(anyhow!(
                        "the state directory is locked by {holder}; gave up waiting (lock file {})",
                        path.display()
                    ));
                }
                // The holder writes its name just after it takes the lock:
                // give it a moment, so the message can name it.
                let waiting = *first_refusal.get_or_insert_with(Instant::now);
                if !announced && (named.is_some() || waiting.elapsed() >= Duration::from_secs(1)) {
                    log.say(format!("waiting for the lock held by {holder}"));
                    announced = true;
                }
                crate::signals::pause(Duration::from_millis(50))?;
            }
            Err((_, errno)) => {
                return Err(anyhow!("cannot lock {}: {errno}", path.display()));
            }
        }
    }
}

/// The holder recorded in a lock file, if it can be read.
pub fn read_holder(path: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(path)
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
}
