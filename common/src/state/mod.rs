//! The state directory: JSON files that carry a deployment from one stage to
//! the next, a history of stage outcomes, and the lock file ([`lock`]); and
//! what a stage holds while it runs ([`context`]).
//!
//! - `plan.json`: live and idle profile, decided once per deployment;
//! - `launched-PROFILE.json`: what `start` launched (pid, artifact, command, log);
//! - `switch.json`: the profile nginx routes to and the one before it, with
//!   the build each ran (for `switch --rollback`);
//! - `history.jsonl`: one line per stage outcome;
//! - `switching.json` and `include.previous`: a switch in progress (see `crate::switch::journal`);
//! - `owner.json`: the app (profiles, `app.dir`) and route this directory serves;
//! - `taken-over.json`: the last deployment an operator's command took over;
//! - `completed.json`: the last deployments whose switch was confirmed;
//! - `lock`: flock'ed while a stage runs.
//!
//! Every write goes to a temp file in the same directory, is fsynced and
//! renamed over the target, so a crash leaves the old file or the new one.

pub mod context;
pub mod lock;
pub mod maintenance;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::Profile;

use crate::sys::files;
use crate::sys::log::Log;
use crate::sys::time::now_unix_ms;

/// State files larger than this are corrupt by definition.
const MAX_STATE_FILE: u64 = 1 << 20;

/// `history.jsonl` is moved to `history.jsonl.1` (replacing it) once it
/// reaches this size, so a year of deployments keeps the state dir bounded.
pub(crate) const HISTORY_LIMIT: u64 = 1 << 20;

/// Writes `bytes` to `path` atomically: temp file beside it, fsync, rename,
/// fsync of the directory. The temp file has a random name and is created
/// with O_EXCL|O_NOFOLLOW (see `crate::sys::files`), so a link planted there is never
/// written through.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ));
    }
    let (mut file, tmp) = files::create_temp(path)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temp file may be gone already.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads at most `limit` bytes of a file; `None` when it does not exist.
pub(crate) fn read_capped(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    read_capped_with(path, limit, |p| File::open(p))
}

/// [`read_capped`] for a file of nonstop's own (a state file): never through
/// a symlink, so a link planted in the state dir cannot feed another file's
/// bytes to a stage.
pub(crate) fn read_own_capped(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    read_capped_with(path, limit, files::open_read)
}

fn read_capped_with(
    path: &Path,
    limit: u64,
    open: impl FnOnce(&Path) -> io::Result<File>,
) -> io::Result<Option<Vec<u8>>> {
    let file = match open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// A slot as recorded in state files.
pub(crate) type Slot = Profile;

/// The deployment's plan, written by its first stage and read by the others.
/// While a plan is unfinished and unexpired it is also the deployment's
/// lease: another deployment waits for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Plan {
    pub deployment_id: String,
    pub live: Option<Slot>,
    pub idle: Slot,
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
    pub boot_id: String,
    pub last_stage: String,
    pub finished: bool,
    /// The stage running for this plan right now; still set after that stage
    /// ended means it was killed half-way, and the deployment is dead.
    #[serde(default)]
    pub running: Option<Running>,
}

/// A stage at work on a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Running {
    pub stage: String,
    pub pid: u32,
    pub since_unix_ms: u64,
}

impl Plan {
    /// True while this plan still holds its deployment's lease.
    pub(crate) fn is_active(&self, now_ms: u64, boot_id: &str) -> bool {
        !self.finished && now_ms < self.expires_unix_ms && self.boot_id == boot_id
    }
}

/// What `start` launched for one profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Launched {
    pub profile: String,
    pub port: u16,
    pub pid: i32,
    /// /proc start time of `pid`, so a reused pid is never taken for ours.
    pub start_time: Option<u64>,
    pub artifact: PathBuf,
    /// The artifact's sha256 (hex) when it was launched: names the build
    /// even after the file is replaced (`profile --status`, the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_sha256: Option<String>,
    pub command: Vec<String>,
    pub log: PathBuf,
    /// The log's length when this launch began: its own lines start there.
    #[serde(default)]
    pub log_offset: u64,
    pub started_unix_ms: u64,
    pub deployment_id: Option<String>,
    /// Compose backend: the container and the image it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The process group `stop` signals as a whole: the launch's (`start`
    /// makes it a session leader) or the adopted app's. `None` in records
    /// from before groups were kept: then `pid`'s group if it leads one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<i32>,
    /// The start time of the group's leader, which may have exited (a
    /// launcher that forked the app and returned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_start_time: Option<u64>,
    /// When `pid` was adopted: the launcher that forked it and exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_pid: Option<i32>,
}

/// What `switch` did last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Switched {
    pub active: Slot,
    pub previous: Option<Slot>,
    pub switched_unix_ms: u64,
    pub deployment_id: Option<String>,
    /// The build `active` ran when nginx was switched to it, when nonstop
    /// started it (`launched-PROFILE.json`) and it was running.
    #[serde(default)]
    pub active_build: Option<Build>,
    /// The build `previous` ran then: the one `switch --rollback` may go
    /// back to, and no other.
    #[serde(default)]
    pub previous_build: Option<Build>,
    /// False in a `switch.json` of an older nonstop, which recorded no
    /// builds: rollback then goes by when the app was started.
    #[serde(default)]
    pub builds_recorded: bool,
}

/// One build as it ran on a profile: enough to tell, later, whether the app
/// there is still that one (pid and start time) and to name it (artifact).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Build {
    /// The installed artifact it runs (with Compose: the image).
    pub artifact: PathBuf,
    /// The artifact's size and modification time when recorded, if it is a file.
    #[serde(default)]
    pub artifact_size: Option<u64>,
    #[serde(default)]
    pub artifact_mtime_unix_ms: Option<u64>,
    pub pid: i32,
    /// /proc start time of `pid`: with it, `pid` names one process for good.
    pub start_time: Option<u64>,
    /// With Compose: the container.
    #[serde(default)]
    pub container_id: Option<String>,
    pub started_unix_ms: u64,
    /// The deployment whose `start` launched it.
    pub deployment_id: Option<String>,
}

impl Build {
    /// The build a launch record describes, its artifact looked at now.
    pub(crate) fn of(launched: &Launched) -> Build {
        let meta = fs::metadata(&launched.artifact)
            .ok()
            .filter(|m| m.is_file());
        Build {
            artifact: launched.artifact.clone(),
            artifact_size: meta.as_ref().map(|m| m.len()),
            artifact_mtime_unix_ms: meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            pid: launched.pid,
            start_time: launched.start_time,
            container_id: launched.container_id.clone(),
            started_unix_ms: launched.started_unix_ms,
            deployment_id: launched.deployment_id.clone(),
        }
    }

    /// True when this process is the one recorded and still runs.
    pub(crate) fn is_running(&self) -> bool {
        crate::sys::procs::is_same_alive(self.pid, self.start_time)
    }

    /// "demo-v1.jar (pid 123, started 2025-01-02 03:04:05 UTC by deployment d-1)".
    pub(crate) fn describe(&self) -> String {
        let name = self
            .artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.artifact.display().to_string());
        let container = self
            .container_id
            .as_deref()
            .map(|c| format!("container {}, ", c.get(..12).unwrap_or(c)))
            .unwrap_or_default();
        let by = self
            .deployment_id
            .as_deref()
            .map(|d| format!(" by deployment {d}"))
            .unwrap_or_default();
        format!(
            "{name} ({container}pid {}, started {}{by})",
            self.pid,
            crate::sys::time::utc(self.started_unix_ms)
        )
    }
}

/// Which route (what nonstop edits to point nginx) a journal or a state
/// dir belongs to: two configs with the same `state_dir` must not act on
/// each other's switches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteId {
    /// `include`, `symlink` or `upstream-pair`.
    pub mode: String,
    /// The include file or the symlink nonstop changes.
    pub path: PathBuf,
    /// The ssh destination when nginx is on another host.
    pub host: Option<String>,
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.mode, self.path.display())?;
        match &self.host {
            Some(h) => write!(f, " on {h}"),
            None => write!(f, " on this host"),
        }
    }
}

/// The app a state directory belongs to, written by the first stage that
/// uses it (`owner.json`). Its identity is the profiles and `app.dir`; the
/// route may change with a new bundle of the same app.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Owner {
    pub profiles: Vec<Slot>,
    pub app_dir: PathBuf,
    pub route: RouteId,
}

impl Owner {
    /// True when `other` is the same app: the same directory and profile
    /// names. The route and the ports may differ: moving a profile off an
    /// ephemeral port or the include to another file is the same app's
    /// changed config, which takes its own state over.
    pub(crate) fn same_app(&self, other: &Owner) -> bool {
        self.app_dir == other.app_dir
            && self.profiles.len() == other.profiles.len()
            && self
                .profiles
                .iter()
                .zip(&other.profiles)
                .all(|(a, b)| a.name == b.name)
    }

    /// "real1 (8081), real2 (8082)".
    pub(crate) fn ports(&self) -> String {
        let profiles: Vec<String> = self
            .profiles
            .iter()
            .map(|p| format!("{} ({})", p.name, p.port))
            .collect();
        profiles.join(", ")
    }

    /// "app in /srv/app with profiles real1 (8081), real2 (8082), route ...".
    pub(crate) fn describe(&self) -> String {
        let profiles: Vec<String> = self
            .profiles
            .iter()
            .map(|p| format!("{} ({})", p.name, p.port))
            .collect();
        format!(
            "the app in {} with profiles {}, route {}",
            self.app_dir.display(),
            profiles.join(", "),
            self.route
        )
    }
}

/// A deployment whose plan an operator's explicit command took over
/// (`taken-over.json`): its later stages refuse, naming who took it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TakenOver {
    pub deployment_id: String,
    /// "`switch --to real2` (pid 123, deployment d-9)".
    pub by: String,
    pub at_unix_ms: u64,
}

/// A deployment whose switch was confirmed (`completed.json`, the last
/// [`COMPLETED_KEPT`]): a stage of it run again (CodeDeploy retrying a
/// hook, an operator re-running one) does nothing and says so, instead of
/// detecting afresh and switching back to the profile it left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Completed {
    pub deployment_id: String,
    /// When the stage that completed it ended.
    pub at_unix_ms: u64,
    /// That stage (`health`, `switch`).
    pub stage: String,
    /// The profile it made live.
    pub live: Slot,
    /// That stage's exit code: not 0 when something after the switch
    /// failed (retiring the previous app), which `error` says.
    #[serde(default)]
    pub exit_code: u8,
    #[serde(default)]
    pub error: Option<String>,
}

/// How many completed deployments `completed.json` remembers.
pub(crate) const COMPLETED_KEPT: usize = 32;

/// A build as the history names it: what `start` launched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildFacts {
    /// The artifact's file name (with Compose: the image).
    pub artifact: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl BuildFacts {
    /// The build a launch record names.
    pub fn of(launched: &Launched) -> BuildFacts {
        BuildFacts {
            artifact: launched
                .artifact
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| launched.artifact.display().to_string()),
            size: fs::metadata(&launched.artifact)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len()),
            sha256: launched.artifact_sha256.clone(),
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryLine {
    pub at_unix_ms: u64,
    pub stage: String,
    pub deployment_id: Option<String>,
    pub pid: u32,
    pub exit_code: u8,
    pub message: String,
    pub elapsed_ms: u64,
    /// Set when the stage succeeded with something an operator must know,
    /// as in `retired-cutting-connections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// With `retired-cutting-connections`: how many connections the old app
    /// still had open when it was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut_connections: Option<u64>,
    /// The profile live when the stage began (its deployment's plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The profile the stage worked on: the one it started, checked or
    /// switched nginx to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `start`: the build it launched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildFacts>,
    /// What an operator's command did besides its stage's usual work
    /// (`rollback`, `maintenance-on`, `maintenance-off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// How many history files nonstop keeps: `history.jsonl` and the one
/// rotated copy, `history.jsonl.1`.
pub const HISTORY_FILES: u32 = 2;

/// The state directory of one config.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Set for `--dry-run`: nothing is written, not even a corrupt file moved aside.
    read_only: bool,
}

impl StateDir {
    /// Opens (creating if needed) the state directory and checks that it is
    /// writable, so a stage fails before it changes anything.
    pub(crate) fn open(root: &Path) -> Result<StateDir> {
        fs::create_dir_all(root)
            .with_context(|| format!("state directory {}: cannot create it", root.display()))?;
        files::probe_dir(root)
            .with_context(|| format!("state directory {} is not writable", root.display()))?;
        Ok(StateDir {
            root: root.to_path_buf(),
            read_only: false,
        })
    }

    /// The state directory for a look that changes nothing (`--dry-run`):
    /// it need not exist, and writing to it is an error.
    pub fn read_only(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
            read_only: true,
        }
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub(crate) fn plan_path(&self) -> PathBuf {
        self.root.join("plan.json")
    }

    pub fn launched_path(&self, profile: &str) -> PathBuf {
        self.root.join(format!("launched-{profile}.json"))
    }

    pub(crate) fn switched_path(&self) -> PathBuf {
        self.root.join("switch.json")
    }

    pub(crate) fn history_path(&self) -> PathBuf {
        self.root.join("history.jsonl")
    }

    /// Every line of the history files nonstop keeps ([`HISTORY_FILES`]),
    /// oldest first; each file read at most up to its rotation size (and
    /// never through a link). A line that does not parse (a torn write, a
    /// line of a newer nonstop) is skipped and counted.
    pub fn read_history(&self) -> Result<(Vec<HistoryLine>, usize)> {
        let mut lines = Vec::new();
        let mut skipped = 0;
        let current = self.history_path();
        let paths: Vec<PathBuf> = (1..HISTORY_FILES)
            .rev()
            .map(|n| {
                let mut p = current.clone().into_os_string();
                p.push(format!(".{n}"));
                PathBuf::from(p)
            })
            .chain([current.clone()])
            .collect();
        for path in paths {
            // A line may push the file a little past the limit before it rotates.
            let bytes = read_own_capped(&path, HISTORY_LIMIT + (64 << 10))
                .with_context(|| format!("cannot read {}", path.display()))?;
            let Some(bytes) = bytes else { continue };
            for raw in bytes.split(|&b| b == b'\n') {
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match serde_json::from_slice::<HistoryLine>(raw) {
                    Ok(line) => lines.push(line),
                    Err(_) => skipped += 1,
                }
            }
        }
        Ok((lines, skipped))
    }

    pub(crate) fn journal_path(&self) -> PathBuf {
        self.root.join("switching.json")
    }

    pub(crate) fn include_backup_path(&self) -> PathBuf {
        self.root.join("include.previous")
    }

    pub(crate) fn owner_path(&self) -> PathBuf {
        self.root.join("owner.json")
    }

    pub(crate) fn taken_over_path(&self) -> PathBuf {
        self.root.join("taken-over.json")
    }

    pub(crate) fn completed_path(&self) -> PathBuf {
        self.root.join("completed.json")
    }

    pub fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<()> {
        if self.read_only {
            return Err(anyhow!(
                "dry run: would have written {}, but a dry run writes nothing",
                path.display()
            ));
        }
        let mut bytes = serde_json::to_vec_pretty(value)?;
        bytes.push(b'\n');
        write_atomic(path, &bytes)
            .with_context(|| format!("cannot write state file {}", path.display()))
    }

    /// Reads a state file. A file that cannot be parsed (truncated, edited,
    /// from an incompatible version) is an error naming it: the stage stops
    /// before it changes anything rather than act on half a record. The file
    /// is moved aside to `NAME.corrupt-TIMESTAMP` (kept for a post-mortem),
    /// so running the stage again goes on without it.
    pub fn read<T: DeserializeOwned>(&self, path: &Path, log: &Log) -> Result<Option<T>> {
        let bytes = match read_own_capped(path, MAX_STATE_FILE) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(self.set_aside(path, &e.to_string(), log))
            }
            Err(e) => return Err(anyhow!("cannot read state file {}: {e}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.set_aside(path, &e.to_string(), log))
    }

    /// Moves a corrupt file aside; returns the error to stop the stage with.
    fn set_aside(&self, path: &Path, why: &str, log: &Log) -> anyhow::Error {
        let corrupt = format!("state file {} is corrupt ({why})", path.display());
        if self.read_only {
            return anyhow!("{corrupt}; a real run would move it aside");
        }
        let aside = path.with_file_name(format!(
            "{}.corrupt-{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            now_unix_ms()
        ));
        match fs::rename(path, &aside) {
            Ok(()) => {
                log.warn(format!("moved {} to {}", path.display(), aside.display()));
                anyhow!(
                    "{corrupt}; nothing was changed. It is moved to {}; run the stage again to go on without it",
                    aside.display()
                )
            }
            Err(e) => anyhow!(
                "{corrupt} and cannot be moved aside ({e}); nothing was changed. Remove it by hand to go on"
            ),
        }
    }

    /// Appends one line to the history. Lines are short and written with one
    /// `write` on an O_APPEND file, so concurrent stages do not interleave them.
    /// At [`HISTORY_LIMIT`] the file is rotated to `history.jsonl.1` first
    /// (one old copy kept); the caller holds the lock, so no other stage
    /// appends meanwhile.
    pub(crate) fn append_history(&self, line: &HistoryLine) -> Result<()> {
        self.append_history_capped(line, HISTORY_LIMIT)
    }

    fn append_history_capped(&self, line: &HistoryLine, limit: u64) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        let path = self.history_path();
        let open = |new: bool| {
            files::open_append(&path, new)
                .with_context(|| format!("cannot open {}", path.display()))
        };
        let mut file = open(false)?;
        if file.metadata().map(|m| m.len()).unwrap_or(0) >= limit {
            drop(file);
            files::rotate(&path, HISTORY_FILES - 1)
                .with_context(|| format!("cannot rotate {}", path.display()))?;
            file = open(true)?;
        }
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot append to {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nonstop-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn plan() -> Plan {
        Plan {
            deployment_id: "d-1".into(),
            live: Some(Profile {
                name: "real1".into(),
                port: 8081,
            }),
            idle: Profile {
                name: "real2".into(),
                port: 8082,
            },
            created_unix_ms: 1,
            expires_unix_ms: 100,
            boot_id: "b".into(),
            last_stage: "stop".into(),
            finished: false,
            running: None,
        }
    }

    #[test]
    fn state_round_trips_and_leaves_no_temp_file() {
        let dir = temp_dir("roundtrip");
        let state = StateDir::open(&dir).unwrap();
        state.write(&state.plan_path(), &plan()).unwrap();
        let back: Option<Plan> = state.read(&state.plan_path(), &Log::new("test")).unwrap();
        assert_eq!(back, Some(plan()));
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["plan.json".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_is_an_error_and_set_aside() {
        let dir = temp_dir("corrupt");
        let state = StateDir::open(&dir).unwrap();
        fs::write(state.plan_path(), b"{\"deployment_id\": \"d-1\", \"li").unwrap();
        let err = state
            .read::<Plan>(&state.plan_path(), &Log::new("test"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plan.json is corrupt") && err.contains("nothing was changed"),
            "{err}"
        );
        assert!(!state.plan_path().exists());
        let back: Option<Plan> = state.read(&state.plan_path(), &Log::new("test")).unwrap();
        assert_eq!(back, None, "the second run goes on without it");
        let aside = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("plan.json.corrupt-")
            })
            .count();
        assert_eq!(aside, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_plan_is_active_until_finished_expired_or_rebooted() {
        let p = plan();
        assert!(p.is_active(50, "b"));
        assert!(!p.is_active(100, "b"));
        assert!(!p.is_active(50, "other-boot"));
        assert!(!Plan {
            finished: true,
            ..p
        }
        .is_active(50, "b"));
    }

    #[test]
    fn history_appends_lines() {
        let dir = temp_dir("history");
        let state = StateDir::open(&dir).unwrap();
        for stage in ["stop", "start"] {
            state
                .append_history(&HistoryLine {
                    at_unix_ms: 1,
                    stage: stage.into(),
                    deployment_id: None,
                    pid: 1,
                    exit_code: 0,
                    message: "ok".into(),
                    elapsed_ms: 3,
                    outcome: None,
                    cut_connections: None,
                    ..HistoryLine::default()
                })
                .unwrap();
        }
        let text = fs::read_to_string(state.history_path()).unwrap();
        assert_eq!(text.lines().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn history_is_rotated_at_its_limit_keeping_one_old_copy() {
        let dir = temp_dir("history-rotate");
        let state = StateDir::open(&dir).unwrap();
        let line = |n: u64| HistoryLine {
            at_unix_ms: n,
            stage: "stop".into(),
            deployment_id: None,
            pid: 1,
            exit_code: 0,
            message: "ok".into(),
            elapsed_ms: 3,
            outcome: None,
            cut_connections: None,
            ..HistoryLine::default()
        };
        for n in 0..25 {
            state.append_history_capped(&line(n), 1000).unwrap();
        }
        let now = fs::read_to_string(state.history_path()).unwrap();
        let old = fs::read_to_string(dir.join("history.jsonl.1")).unwrap();
        assert!(
            now.len() < 1000 && old.len() >= 1000,
            "{} {}",
            now.len(),
            old.len()
        );
        assert!(now.ends_with("\"elapsed_ms\":3}\n") && now.contains("\"at_unix_ms\":24,"));
        assert!(!dir.join("history.jsonl.2").exists(), "one old copy only");
        // Read back across both files, oldest first, none lost or repeated;
        // a torn line is skipped and counted.
        fs::write(
            state.history_path(),
            format!("{now}{{\"at_unix_ms\": 9, \"sta"),
        )
        .unwrap();
        let (read, skipped) = state.read_history().unwrap();
        let times: Vec<u64> = read.iter().map(|l| l.at_unix_ms).collect();
        let kept = (old.lines().count() + now.lines().count()) as u64;
        assert_eq!(times, (25 - kept..25).collect::<Vec<_>>());
        assert!(kept > 10, "{kept}");
        assert_eq!(skipped, 1);

        // A link planted at history.jsonl is never written through.
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        fs::remove_file(state.history_path()).unwrap();
        std::os::unix::fs::symlink(&victim, state.history_path()).unwrap();
        let err = format!("{:#}", state.append_history(&line(99)).unwrap_err());
        assert!(err.contains("is a symlink"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_switch_record_of_an_older_nonstop_still_reads_without_builds() {
        let dir = temp_dir("old-switch");
        let state = StateDir::open(&dir).unwrap();
        fs::write(
            state.switched_path(),
            br#"{"active": {"name": "real2", "port": 8082}, "previous": {"name": "real1", "port": 8081},
                "switched_unix_ms": 5, "deployment_id": "d-1"}"#,
        )
        .unwrap();
        let old: Switched = state
            .read(&state.switched_path(), &Log::new("test"))
            .unwrap()
            .unwrap();
        assert!(!old.builds_recorded && old.previous_build.is_none() && old.active_build.is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_is_never_read_through_a_link() {
        let dir = temp_dir("read-link");
        let state = StateDir::open(&dir).unwrap();
        let elsewhere = dir.join("elsewhere.json");
        state.write(&elsewhere, &plan()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.plan_path()).unwrap();
        let err = state
            .read::<Plan>(&state.plan_path(), &Log::new("test"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a symlink"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
