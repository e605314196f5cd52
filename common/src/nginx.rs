//! Changing nginx's include file as a transaction that survives the process
//! that began it.
//!
//! `switch` writes the include, tests, reloads and confirms. Before it writes
//! anything it records a journal in the state directory (`switching.json`,
//! plus the previous include's bytes in `include.previous`), and before each
//! step it records the phase reached ([`Phase`]) and whether a reload was
//! attempted. The journal goes once the switch is confirmed or undone and
//! nginx is seen to serve what the include says.
//!
//! A journal found by a later stage means a switch was killed half-way
//! (SIGKILL, a reboot, the CodeDeploy agent's timeout) or could not be
//! settled (a reload that may or may not have taken effect). That stage
//! settles it before anything else, deciding from the phase and from what
//! nginx serves now (the probe through nginx), never from the include file
//! alone: a switch killed after it put the old include back but before it
//! reloaded nginx back leaves nginx on the new app with the include naming
//! the old one. A switch confirmed (or seen to have taken) is kept;
//! otherwise the previous include is put back and, whenever a reload may
//! have happened, nginx is reloaded back and watched until it serves the
//! restored config. If that cannot be seen, the journal stays and every
//! stage fails naming it, so nothing acts on witnesses that disagree.
//!
//! A journal belongs to one route (mode, path, host): a stage whose config
//! routes elsewhere refuses to settle it, naming both.

use std::io;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::config::{Config, Mode, Profile};
use crate::detect::{self, Probe};
use crate::log::Log;
use crate::procs;
use crate::route;
use crate::route::Include;
use crate::state::{read_own_capped, write_atomic, RouteId, StateDir};
use crate::time::{now_unix_ms, secs};

/// How long nginx's own commands (test, reload) may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// How long the probe must answer one profile without a break before nginx
/// counts as serving it, when nginx's workers cannot be seen: longer than the
/// ~100 ms nginx keeps the previous workers accepting after a reload.
pub const BLIND_CONFIRM: Duration = Duration::from_millis(300);

/// How long a later stage watches a switch it found to see whether it took.
pub const TOOK_LIMIT: Duration = Duration::from_millis(1500);

/// How far a switch got. Each phase is written before the step after it
/// begins, so a journal in phase P means every step up to P happened and the
/// next one may have begun.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The journal is written; the include may be being written.
    Begun,
    /// The new include is in place; `nginx.test` may be running.
    Written,
    /// `nginx.test` passed.
    Tested,
    /// `nginx.reload` may have run: nginx may be on the new config.
    Reloading,
    /// `nginx.reload` reported success; confirming through the probe.
    Reloaded,
    /// nginx was seen to serve the target.
    Confirmed,
    /// Undoing: the old include may be being put back.
    Restoring,
    /// The old include is back; nginx may still serve the new config.
    Restored,
    /// nginx was reloaded back (the command may have failed); waiting to see
    /// it serve the restored config.
    ReloadedBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Begun => "begun",
            Phase::Written => "written",
            Phase::Tested => "tested",
            Phase::Reloading => "reloading",
            Phase::Reloaded => "reloaded",
            Phase::Confirmed => "confirmed",
            Phase::Restoring => "restoring",
            Phase::Restored => "restored",
            Phase::ReloadedBack => "reloaded-back",
        }
    }
}

/// A switch in progress, as recorded in `switching.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub target: Profile,
    /// Whether an include file existed before (its bytes are in `include.previous`).
    pub had_previous: bool,
    pub pid: u32,
    pub deployment_id: Option<String>,
    pub started_unix_ms: u64,
    /// How far it got; `None` in a journal of an older nonstop, which is
    /// treated as "a reload may have run".
    #[serde(default)]
    pub phase: Option<Phase>,
    /// Whether `nginx.reload` was run (whatever it reported).
    #[serde(default)]
    pub reload_attempted: bool,
    /// nginx's workers that accepted before the reload, when they could be
    /// seen: after a reload back, only workers born since must go.
    #[serde(default)]
    pub workers_before: Option<Vec<i32>>,
    /// The route it changes; `None` in a journal of an older nonstop.
    #[serde(default)]
    pub route: Option<RouteId>,
}

impl Journal {
    fn phase(&self) -> Phase {
        self.phase.unwrap_or(Phase::Reloading)
    }

    /// "a switch to real2 (pid 12, deployment d-1)".
    pub fn describe(&self) -> String {
        format!(
            "a switch to {} (pid {}{})",
            self.target.name,
            self.pid,
            self.deployment_id
                .as_deref()
                .map(|d| format!(", deployment {d}"))
                .unwrap_or_default()
        )
    }
}

/// The route `config` changes, as journals and `owner.json` record it.
pub fn route_id(config: &Config) -> RouteId {
    let mode = match config.nginx.mode {
        Mode::Include => "include",
        Mode::Symlink { .. } => "symlink",
        Mode::UpstreamPair => "upstream-pair",
    };
    RouteId {
        mode: mode.to_string(),
        path: route::path(config).to_path_buf(),
        host: config.nginx.ssh.as_ref().map(|s| s.destination.clone()),
    }
}

/// Records that a switch to `target` begins, with the include's current bytes.
pub fn begin(
    config: &Config,
    state: &StateDir,
    target: &Profile,
    previous: Option<&[u8]>,
    deployment_id: Option<&str>,
) -> Result<Journal> {
    let backup = state.include_backup_path();
    if let Some(bytes) = previous {
        write_atomic(&backup, bytes)
            .with_context(|| format!("cannot save the include file to {}", backup.display()))?;
    }
    let journal = Journal {
        target: target.clone(),
        had_previous: previous.is_some(),
        pid: std::process::id(),
        deployment_id: deployment_id.map(str::to_string),
        started_unix_ms: now_unix_ms(),
        phase: Some(Phase::Begun),
        reload_attempted: false,
        workers_before: None,
        route: Some(route_id(config)),
    };
    state.write(&state.journal_path(), &journal)?;
    Ok(journal)
}

/// Records the phase a switch reached, before its next step.
pub fn mark(state: &StateDir, journal: &mut Journal, phase: Phase) -> Result<()> {
    journal.phase = Some(phase);
    if phase == Phase::Reloading {
        journal.reload_attempted = true;
    }
    state
        .write(&state.journal_path(), journal)
        .with_context(|| format!("cannot record the switch's phase `{}`", phase.as_str()))
}

/// Removes the journal: the switch is confirmed or undone.
pub fn end(state: &StateDir, log: &Log) {
    for path in [state.journal_path(), state.include_backup_path()] {
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log.warn(format!(
                    "cannot remove {}: {e}; the next stage will look at it again",
                    path.display()
                ));
            }
        }
    }
}

/// Puts the route back as it was (or removes it if there was none).
pub fn restore(config: &Config, old: Option<&[u8]>, log: &Log) -> Result<()> {
    route::restore(config, old)?;
    log.say(format!("restored {}", route::describe(config)));
    Ok(())
}

/// Words for a command that failed or could not run.
pub fn failure(result: Result<cmd::Outcome>) -> String {
    match result {
        Ok(out) => format!("{} ({})", out.message(), out.status),
        Err(e) => format!("{e:#}"),
    }
}

/// Runs `nginx.test`; `Err` carries words for a message.
pub fn test(config: &Config) -> Result<(), String> {
    match route::run_nginx(config, &config.nginx.test, COMMAND_LIMIT) {
        Ok(out) if out.success() => Ok(()),
        other => Err(failure(other)),
    }
}

/// Runs `nginx.reload`; `Err` carries words for a message.
pub fn reload(config: &Config) -> Result<(), String> {
    match route::run_nginx(config, &config.nginx.reload, COMMAND_LIMIT) {
        Ok(out) if out.success() => Ok(()),
        other => Err(failure(other)),
    }
}

/// After a restore, brings nginx back to the restored config (test first).
/// Words for a message either way; `Err` when the reload back did not
/// report success.
pub fn reload_previous(config: &Config) -> Result<String, String> {
    if let Err(why) = test(config) {
        return Err(format!("the restored config fails its test too: {why}"));
    }
    match reload(config) {
        Ok(()) => Ok("nginx was reloaded with it".to_string()),
        Err(why) => Err(format!(
            "reloading nginx with it reported a failure ({why}), which may still have taken effect"
        )),
    }
}

/// The nginx workers that accept connections now: the master's children
/// (found through its pid file) titled "worker process". `None`, with a
/// warning, when they cannot be seen; then only the probe tells.
///
/// Only /proc/PID/stat and /proc/PID/cmdline are read, which any user may,
/// so this works when the hooks run as the deploy user and nginx's workers
/// as www-data.
pub fn accepting_workers(config: &Config, log: &Log) -> Option<Vec<i32>> {
    if config.nginx.ssh.is_some() {
        // Its processes are on the other host.
        return None;
    }
    let pid_file = config.nginx.pid_file.as_ref()?;
    let master = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&pid| procs::is_alive(pid));
    let Some(master) = master else {
        log.warn(format!(
            "cannot read a running nginx master's pid from {}; confirming through the probe alone \
             (set nginx.pid_file, or \"\" to silence this)",
            pid_file.display()
        ));
        return None;
    };
    let workers: Vec<i32> = procs::children(master)
        .into_iter()
        .filter(|&w| still_accepting(w))
        .collect();
    if workers.is_empty() {
        log.warn(format!(
            "nginx master {master} has no worker process this user can see; confirming through the probe alone"
        ));
        return None;
    }
    Some(workers)
}

/// An nginx worker accepts until it exits or takes the shutdown signal: its
/// title then turns to "worker process is shutting down", set just before it
/// closes its listening sockets.
pub fn still_accepting(worker: i32) -> bool {
    let title = procs::cmdline(worker);
    procs::is_alive(worker) && title.contains("worker process") && !title.contains("shutting down")
}

/// Watches, at most `limit`, until nginx serves `want`: none of `leaving`
/// (workers of a config being replaced) accepts any more, and the probe
/// answers `want` without a break for [`BLIND_CONFIRM`]. With `want` `None`
/// (there was no include) only the workers tell. Not cut short by a signal:
/// it runs while undoing, which a signal must not leave half-done, and it
/// is bounded. `Err` says what was seen last.
pub fn serves(
    config: &Config,
    want: Option<&Profile>,
    leaving: &[i32],
    limit: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut streak: Option<Instant> = None;
    let mut last = String::new();
    loop {
        let done = if let Some(w) = leaving.iter().find(|&&w| still_accepting(w)) {
            last = format!("worker {w} of the replaced configuration still accepts connections");
            false
        } else if let Some(want) = want {
            match detect::probe(config) {
                Probe::Answered(p) if &p == want => {
                    let since = *streak.get_or_insert_with(Instant::now);
                    last = format!("it answered {} for {}", p.name, secs(since.elapsed()));
                    since.elapsed() >= BLIND_CONFIRM
                }
                Probe::Answered(p) => {
                    streak = None;
                    last = format!("{} answered {}", config.probe_url, p.name);
                    false
                }
                Probe::Failed(why) => {
                    streak = None;
                    last = format!("{}: {why}", config.probe_url);
                    false
                }
            }
        } else {
            true
        };
        if done {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The profile some include content names, if exactly one.
fn names(config: &Config, content: Option<&[u8]>) -> Option<Profile> {
    match content.map(|c| route::classify(config, c)) {
        Some(Include::Names(p)) => Some(p),
        _ => None,
    }
}

/// Undoes a switch: puts the previous include back and, when `reload_back`
/// (a reload may have happened, or nginx serves something else), reloads
/// nginx back and watches until it serves the restored config. The journal
/// is ended once that is seen; otherwise it is kept and the error names it.
/// Returns words for a message ("restored ... and ...").
pub fn undo(
    config: &Config,
    state: &StateDir,
    journal: &mut Journal,
    old: Option<&[u8]>,
    reload_back: bool,
    log: &Log,
) -> Result<String> {
    let kept = |why: String| {
        anyhow!(
            "{why}; {} is kept: every stage settles it first and fails naming it until it can (`profile` says what it will do)",
            state.journal_path().display()
        )
    };
    mark(state, journal, Phase::Restoring)?;
    if let Err(e) = restore(config, old, log) {
        return Err(kept(format!("{e:#}")));
    }
    mark(state, journal, Phase::Restored)?;
    if !reload_back {
        end(state, log);
        return Ok(format!(
            "restored {}; nginx was not reloaded",
            route::describe(config)
        ));
    }
    let before = accepting_workers(config, log);
    let leaving: Vec<i32> = before
        .iter()
        .flatten()
        .copied()
        .filter(|w| !journal.workers_before.iter().flatten().any(|b| b == w))
        .collect();
    mark(state, journal, Phase::ReloadedBack)?;
    let back = reload_previous(config);
    let want = names(config, old);
    let words = match &back {
        Ok(w) | Err(w) => w.clone(),
    };
    if back.is_err() && want.is_none() && leaving.is_empty() {
        // Neither witness can show nginx left the new config: the restored
        // include names no profile and nginx's workers cannot be seen. A
        // reload back that did not report success proves nothing either.
        return Err(kept(format!(
            "restored {} but {words}, and nothing can show that nginx serves the restored config: nginx may still route to {}",
            route::describe(config),
            journal.target.name
        )));
    }
    match serves(config, want.as_ref(), &leaving, config.nginx.confirm_timeout) {
        Ok(after) => {
            end(state, log);
            let serving = match &want {
                Some(p) => format!("nginx answers as {} again", p.name),
                None => "nginx's workers of the replaced configuration are gone".to_string(),
            };
            Ok(format!(
                "restored {} and {words}; {serving} (seen {} after)",
                route::describe(config),
                secs(after)
            ))
        }
        Err(last) => Err(kept(format!(
            "restored {} and {words}, but nginx was not seen to serve it within {} ({last}): nginx may still route to {}",
            route::describe(config),
            secs(config.nginx.confirm_timeout),
            journal.target.name
        ))),
    }
}

/// The saved include bytes of a journal, `Err` naming what is missing.
fn saved_include(config: &Config, state: &StateDir, journal: &Journal) -> Result<Option<Vec<u8>>> {
    if !journal.had_previous {
        return Ok(None);
    }
    let backup = state.include_backup_path();
    match read_own_capped(&backup, route::MAX_CONTENT) {
        Ok(Some(bytes)) => Ok(Some(bytes)),
        Ok(None) => Err(anyhow!(
            "an interrupted switch to {} left {} but not the saved include {}; \
             check {} by hand, then remove {}",
            journal.target.name,
            state.journal_path().display(),
            backup.display(),
            route::describe(config),
            state.journal_path().display()
        )),
        Err(e) => Err(anyhow!("cannot read {}: {e}", backup.display())),
    }
}

/// Refuses a journal written for another route than `config`'s.
fn check_route(config: &Config, state: &StateDir, journal: &Journal) -> Result<()> {
    let mine = route_id(config);
    match &journal.route {
        Some(theirs) if *theirs != mine => Err(anyhow!(
            "{} in {} belongs to route {theirs}, but this config routes {mine}; \
             refusing to settle it with this config. Run a stage with the config of that route \
             (or of its new location), or settle it by hand and remove {}",
            journal.describe(),
            state.journal_path().display(),
            state.journal_path().display()
        )),
        _ => Ok(()),
    }
}

/// Finishes a switch that an earlier process left half-done, if any.
pub fn recover(config: &Config, state: &StateDir, log: &Log) -> Result<()> {
    let Some(mut journal) = state.read::<Journal>(&state.journal_path(), log)? else {
        return Ok(());
    };
    check_route(config, state, &journal)?;
    let previous = saved_include(config, state, &journal)?;
    let phase = journal.phase();
    let who = format!(
        "{} was interrupted in phase `{}`",
        journal.describe(),
        phase.as_str()
    );
    let now = route::read(config)?;
    let target = config.profile(&journal.target.name).cloned();
    let new_line = target.as_ref().map(|t| route::content_for(config, t));
    let old_profile = names(config, previous.as_deref());
    match phase {
        Phase::Begun | Phase::Written | Phase::Tested => {
            // No reload was run: nginx serves what it served, unless someone
            // else reloaded it meanwhile.
            // With no profile named before (a first deployment), nginx
            // answering as the target is the sign of an outside reload.
            let moved = match (&old_profile, detect::probe(config)) {
                (Some(old), Probe::Answered(p)) => &p != old,
                (None, Probe::Answered(p)) => p == journal.target,
                _ => false,
            };
            if now == previous && !moved {
                log.warn(format!(
                    "{who}, before it changed {}; nothing to undo",
                    route::describe(config)
                ));
                end(state, log);
                return Ok(());
            }
            let words = undo(config, state, &mut journal, previous.as_deref(), moved, log)
                .with_context(|| format!("{who} (nginx was not reloaded)"))?;
            log.warn(format!("{who}, before nginx was reloaded; {words}"));
        }
        Phase::Reloading | Phase::Reloaded | Phase::Confirmed => {
            let took = match (&target, &new_line) {
                (Some(t), Some(line)) if now.as_deref() == Some(line.as_slice()) => {
                    serves(config, Some(t), &[], TOOK_LIMIT).is_ok()
                }
                _ => false,
            };
            if let (true, Some(t)) = (took, &target) {
                log.warn(format!(
                    "{who}, after it took effect: nginx answers as {} and {} names it; keeping it",
                    t.name,
                    route::describe(config)
                ));
                end(state, log);
                return Ok(());
            }
            let words = undo(config, state, &mut journal, previous.as_deref(), true, log)
                .with_context(|| who.clone())?;
            log.warn(format!(
                "{who}, before nginx was confirmed to answer as {}; {words}",
                journal.target.name
            ));
        }
        Phase::Restoring | Phase::Restored | Phase::ReloadedBack => {
            let words = undo(config, state, &mut journal, previous.as_deref(), true, log)
                .with_context(|| who.clone())?;
            log.warn(format!("{who}, while it was being undone; {words}"));
        }
    }
    Ok(())
}

/// What the next mutating stage will do about a switch journal.
#[derive(Debug, Clone, Serialize)]
pub struct Repair {
    /// The journal file.
    pub journal: String,
    /// Its phase, when it could be read.
    pub phase: Option<&'static str>,
    /// The profile that switch went to, when it could be read.
    pub target: Option<String>,
    /// In words: what happened and what the next stage will do.
    pub action: String,
}

/// What the next mutating stage will do about a switch journal, if there is
/// one, for `profile`: changes nothing and waits for nothing.
pub fn pending_repair(config: &Config) -> Option<Repair> {
    let state = StateDir::read_only(&config.state_dir);
    let path = state.journal_path();
    let file = path.display().to_string();
    let unreadable = |why: String| Repair {
        journal: file.clone(),
        phase: None,
        target: None,
        action: why,
    };
    let bytes = match read_own_capped(&path, 1 << 20) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            return Some(unreadable(format!(
                "{file} cannot be read ({e}); the next stage will fail on it"
            )))
        }
    };
    let journal: Journal = match serde_json::from_slice(&bytes) {
        Ok(j) => j,
        Err(e) => {
            return Some(unreadable(format!(
                "{file} is corrupt ({e}); the next stage will move it aside and stop"
            )))
        }
    };
    let phase = journal.phase();
    let repair = |action: String| Repair {
        journal: file.clone(),
        phase: Some(phase.as_str()),
        target: Some(journal.target.name.clone()),
        action,
    };
    if let Err(e) = check_route(config, &state, &journal) {
        return Some(repair(format!("the next stage will refuse: {e:#}")));
    }
    let back = match names(
        config,
        read_own_capped(&state.include_backup_path(), route::MAX_CONTENT)
            .ok()
            .flatten()
            .as_deref(),
    ) {
        Some(p) => format!("nginx answers as {}", p.name),
        None => "nginx serves the restored config".to_string(),
    };
    let reload_back = format!(
        "put back {} as saved in {}, run `{}` and `{}`, and wait until {back}; if that cannot be seen, fail and keep {file}",
        route::describe(config),
        state.include_backup_path().display(),
        config.nginx.test.join(" "),
        config.nginx.reload.join(" "),
    );
    let what = match phase {
        Phase::Begun | Phase::Written | Phase::Tested => format!(
            "put back {} as saved in {} (nginx was not reloaded; it is reloaded back only if it no longer serves the previous profile)",
            route::describe(config),
            state.include_backup_path().display()
        ),
        Phase::Reloading | Phase::Reloaded | Phase::Confirmed => format!(
            "keep the switch if {} names {} and nginx answers as it; otherwise {reload_back}",
            route::describe(config),
            journal.target.name
        ),
        Phase::Restoring | Phase::Restored | Phase::ReloadedBack => reload_back,
    };
    Some(repair(format!(
        "{} was interrupted in phase `{}` ({file}); the next stage will {what}",
        journal.describe(),
        phase.as_str(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_of_an_older_nonstop_counts_as_maybe_reloaded() {
        let old = r#"{"target":{"name":"real2","port":8082},"had_previous":true,"pid":7,
            "deployment_id":null,"started_unix_ms":1}"#;
        let journal: Journal = serde_json::from_str(old).unwrap();
        assert_eq!(journal.phase(), Phase::Reloading);
        assert_eq!(journal.route, None);
    }

    #[test]
    fn phases_are_written_by_their_names_and_ordered() {
        let names: Vec<String> = [
            Phase::Begun,
            Phase::Written,
            Phase::Tested,
            Phase::Reloading,
            Phase::Reloaded,
            Phase::Confirmed,
            Phase::Restoring,
            Phase::Restored,
            Phase::ReloadedBack,
        ]
        .iter()
        .map(|p| {
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            p.as_str().to_string()
        })
        .collect();
        assert_eq!(names.last().map(String::as_str), Some("reloaded-back"));
        assert!(Phase::Tested < Phase::Reloading && Phase::Confirmed < Phase::Restoring);
    }
}
