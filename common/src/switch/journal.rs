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
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::config::waits::{BLIND_CONFIRM, COMMAND_LIMIT, TOOK_LIMIT};
use crate::config::{Config, Profile};
use crate::nginx::probe::{probe, Probe};
use crate::route;
use crate::route::host::{Host, MAX_CONTENT};
use crate::route::mode::{Include, Mode};
use crate::state::{read_own_capped, write_atomic, RouteId, StateDir};
use crate::switch::confirm::{watch, Cut, Want};
use crate::sys::cmd;
use crate::sys::log::Log;
use crate::sys::time::{now_unix_ms, secs};

/// How far a switch got. Each phase is written before the step after it
/// begins, so a journal in phase P means every step up to P happened and the
/// next one may have begun.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Phase {
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
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct Journal {
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
    /// A switch to the maintenance page (`target` is the profile whose
    /// route it keeps): what the page answers with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<PageWant>,
}

/// What nginx answers while the maintenance page is on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageWant {
    pub token: String,
    pub retry_after: u32,
    /// When it was begun and by whom, for `maintenance.json` when a
    /// recovery keeps it (`None` in a journal of an earlier build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Journal {
    fn phase(&self) -> Phase {
        self.phase.unwrap_or(Phase::Reloading)
    }

    /// What nginx serves once this switch took: the page, or `target`.
    pub(crate) fn want<'a>(&'a self, target: &'a Profile) -> Want<'a> {
        match &self.maintenance {
            Some(m) => Want::Page {
                token: &m.token,
                retry_after: m.retry_after,
            },
            None => Want::Profile(target),
        }
    }

    /// "a switch to real2 (pid 12, deployment d-1)".
    pub(crate) fn describe(&self) -> String {
        format!(
            "a switch to {} (pid {}{})",
            match self.maintenance {
                Some(_) => "the maintenance page",
                None => &self.target.name,
            },
            self.pid,
            self.deployment_id
                .as_deref()
                .map(|d| format!(", deployment {d}"))
                .unwrap_or_default()
        )
    }
}

/// Records that a switch to `target` begins, with the include's current bytes.
pub(crate) fn begin(
    config: &Config,
    state: &StateDir,
    target: &Profile,
    previous: Option<&[u8]>,
    deployment_id: Option<&str>,
    maintenance: Option<PageWant>,
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
        route: Some(route::of(config).id()),
        maintenance,
    };
    if let Err(e) = state.write(&state.journal_path(), &journal) {
        // Nothing was changed yet: the saved copy is of no use without it.
        if previous.is_some() {
            let _ = std::fs::remove_file(&backup);
        }
        return Err(e);
    }
    Ok(journal)
}

/// Records the phase a switch reached, before its next step. A phase that
/// cannot be recorded (a full disk, a read-only or failing file system)
/// leaves the journal at the last phase that was: the caller decides what
/// that means for the step it was about to take (see `crate::switch::transaction`), and an
/// undo never waits for one ([`undo`]).
pub(crate) fn mark(state: &StateDir, journal: &mut Journal, phase: Phase) -> Result<()> {
    journal.phase = Some(phase);
    if phase == Phase::Reloading {
        journal.reload_attempted = true;
    }
    state
        .write(&state.journal_path(), journal)
        .with_context(|| format!("cannot record the switch's phase `{}`", phase.as_str()))
}

/// Removes the journal: the switch is confirmed or undone.
pub(crate) fn end(state: &StateDir, log: &Log) {
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

/// Where traffic goes now, in words, from one probe through nginx: "nginx
/// answers as real1 (http://...)", or why it does not answer. For messages
/// that must say where traffic is, not only what failed.
pub(crate) fn traffic_now(config: &Config) -> String {
    match probe(config) {
        Probe::Answered(p) => format!(
            "nginx answers as {} ({}) at {}",
            p.name, p.port, config.probe_url
        ),
        Probe::Failed(why) => format!("the probe through nginx gets no profile's answer: {why}"),
    }
}

/// Puts the route back as it was (or removes it if there was none).
pub(crate) fn restore(mode: &dyn Mode, old: Option<&[u8]>, log: &Log) -> Result<()> {
    match old {
        Some(bytes) => mode.write(bytes),
        None => mode.remove(),
    }
    .with_context(|| {
        format!(
            "cannot restore {}: check it by hand before nginx next reloads",
            mode.describe()
        )
    })?;
    log.say(format!("restored {}", mode.describe()));
    Ok(())
}

/// Words for a command that failed or could not run.
pub(crate) fn failure(result: Result<cmd::Outcome>) -> String {
    match result {
        Ok(out) => format!("{} ({})", out.message(), out.status),
        Err(e) => format!("{e:#}"),
    }
}

/// Runs one of nginx's commands where nginx is (none: nothing to run);
/// `Err` carries words for a message.
pub(crate) fn run(config: &Config, argv: Option<&[String]>) -> Result<(), String> {
    let Some(argv) = argv else {
        return Ok(());
    };
    match Host::of(config).run(argv, COMMAND_LIMIT) {
        Ok(out) if out.success() => Ok(()),
        other => Err(failure(other)),
    }
}

/// After a restore, brings nginx back to the restored config (test first),
/// where the mode's change needs a reload to take effect. Words for a
/// message either way; `Err` when the reload back did not report success.
pub(crate) fn reload_previous(config: &Config, mode: &dyn Mode) -> Result<String, String> {
    let commands = mode.commands();
    if let Err(why) = run(config, commands.test) {
        return Err(format!("the restored config fails its test too: {why}"));
    }
    if commands.reload.is_none() {
        return Ok("nginx follows it without a reload".to_string());
    }
    match run(config, commands.reload) {
        Ok(()) => Ok("nginx was reloaded with it".to_string()),
        Err(why) => Err(format!(
            "reloading nginx with it reported a failure ({why}), which may still have taken effect"
        )),
    }
}

/// Watches, at most `limit`, until nginx serves `want` (see
/// [`watch`]), the probe answering it without a break for
/// [`BLIND_CONFIRM`]; not cut short by a signal. `Err` says what was seen
/// last.
pub(crate) fn serves(
    config: &Config,
    want: Option<Want<'_>>,
    leaving: &[i32],
    limit: Duration,
) -> Result<Duration, String> {
    let mut last = String::new();
    match watch(
        config,
        want,
        leaving,
        BLIND_CONFIRM,
        limit,
        Cut::Never,
        &mut last,
    ) {
        Ok(Some(after)) => Ok(after),
        _ => Err(last),
    }
}

/// The profile some route content names, if exactly one.
fn names(mode: &dyn Mode, content: Option<&[u8]>) -> Option<Profile> {
    match content.map(|c| mode.classify(c)) {
        Some(Include::Names(p)) => Some(p),
        _ => None,
    }
}

/// Undoes a switch: puts the previous include back and, when `reload_back`
/// (a reload may have happened, or nginx serves something else), reloads
/// nginx back and watches until it serves the restored config. The journal
/// is ended once that is seen; otherwise it is kept and the error names it.
/// Returns words for a message ("restored ... and ...").
///
/// Restore first, record after: each phase of the undo is recorded when it
/// can be, and a record that cannot be written (a full disk) never stops
/// the undo. The journal then still holds an earlier phase, which the next
/// stage settles the same way (it puts the include back and reloads nginx
/// back whenever a reload may have happened); the include and nginx are
/// what must be right.
pub(crate) fn undo(
    config: &Config,
    state: &StateDir,
    journal: &mut Journal,
    old: Option<&[u8]>,
    reload_back: bool,
    log: &Log,
) -> Result<String> {
    let mode = route::of(config);
    let kept = |why: String| {
        anyhow!(
            "{why}; {} is kept: every stage settles it first and fails naming it until it can (`profile` says what it will do)",
            state.journal_path().display()
        )
    };
    // Said once: the records after the first that failed fail alike.
    let mut warned = false;
    let mut record = |journal: &mut Journal, phase: Phase| {
        if let Err(e) = mark(state, journal, phase) {
            if !std::mem::replace(&mut warned, true) {
                log.warn(format!(
                    "{e:#}; undoing without records (the journal keeps an earlier phase, which the next stage settles the same way)"
                ));
            }
        }
    };
    record(journal, Phase::Restoring);
    if let Err(e) = restore(mode.as_ref(), old, log) {
        return Err(kept(format!("{e:#}")));
    }
    record(journal, Phase::Restored);
    if !reload_back {
        end(state, log);
        return Ok(format!(
            "restored {}; nginx was not reloaded",
            mode.describe()
        ));
    }
    let before = mode.accepting_workers(log);
    let leaving: Vec<i32> = before
        .iter()
        .flatten()
        .copied()
        .filter(|w| !journal.workers_before.iter().flatten().any(|b| b == w))
        .collect();
    record(journal, Phase::ReloadedBack);
    let back = reload_previous(config, mode.as_ref());
    let want = names(mode.as_ref(), old);
    let words = match &back {
        Ok(w) | Err(w) => w.clone(),
    };
    if back.is_err() && want.is_none() && leaving.is_empty() {
        // Neither witness can show nginx left the new config: the restored
        // include names no profile and nginx's workers cannot be seen. A
        // reload back that did not report success proves nothing either.
        return Err(kept(format!(
            "restored {} but {words}, and nothing can show that nginx serves the restored config: nginx may still route to {}",
            mode.describe(),
            journal.target.name
        )));
    }
    match serves(
        config,
        want.as_ref().map(Want::Profile),
        &leaving,
        config.nginx.confirm_timeout,
    ) {
        Ok(after) => {
            end(state, log);
            let serving = match &want {
                Some(p) => format!("nginx answers as {} again", p.name),
                None => "nginx's workers of the replaced configuration are gone".to_string(),
            };
            Ok(format!(
                "restored {} and {words}; {serving} (seen {} after)",
                mode.describe(),
                secs(after)
            ))
        }
        Err(last) => Err(kept(format!(
            "restored {} and {words}, but nginx was not seen to serve it within {} ({last}): nginx may still route to {}",
            mode.describe(),
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
    match read_own_capped(&backup, MAX_CONTENT) {
        Ok(Some(bytes)) => Ok(Some(bytes)),
        Ok(None) => Err(anyhow!(
            "an interrupted switch to {} left {} but not the saved include {}; \
             check {} by hand, then remove {}",
            journal.target.name,
            state.journal_path().display(),
            backup.display(),
            route::of(config).describe(),
            state.journal_path().display()
        )),
        Err(e) => Err(anyhow!("cannot read {}: {e}", backup.display())),
    }
}

/// Refuses a journal written for another route than `config`'s.
fn check_route(config: &Config, state: &StateDir, journal: &Journal) -> Result<()> {
    let mine = route::of(config).id();
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
pub(crate) fn recover(config: &Config, state: &StateDir, log: &Log) -> Result<()> {
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
    let mode = route::of(config);
    let now = mode.read()?;
    let target = config.profile(&journal.target.name).cloned();
    let new_line = target.as_ref().and_then(|t| match &journal.maintenance {
        Some(m) => mode.maintenance_content(t, m.retry_after).ok(),
        None => mode.content_for(t),
    });
    let old_profile = names(mode.as_ref(), previous.as_deref());
    match phase {
        Phase::Begun | Phase::Written | Phase::Tested => {
            // No reload was run: nginx serves what it served, unless someone
            // else reloaded it meanwhile.
            // With no profile named before (a first deployment), nginx
            // answering as the target is the sign of an outside reload.
            let moved = match (&old_profile, probe(config)) {
                (Some(old), Probe::Answered(p)) => &p != old,
                (None, Probe::Answered(p)) => p == journal.target,
                _ => false,
            };
            if now == previous && !moved {
                log.warn(format!(
                    "{who}, before it changed {}; nothing to undo",
                    mode.describe()
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
                    serves(config, Some(journal.want(t)), &[], TOOK_LIMIT).is_ok()
                }
                _ => false,
            };
            if let (true, Some(t)) = (took, &target) {
                let answers = match journal.maintenance {
                    Some(_) => "with the maintenance page".to_string(),
                    None => format!("as {}", t.name),
                };
                log.warn(format!(
                    "{who}, after it took effect: nginx answers {answers} and {} names it; keeping it",
                    mode.describe()
                ));
                end(state, log);
                if let Some(m) = &journal.maintenance {
                    record_maintenance(state, t, m, log);
                }
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

/// A kept maintenance switch: `maintenance.json` written from its journal,
/// as the switch would have once confirmed. Recorded after the route is
/// settled, and a record that cannot be written is a warning only.
fn record_maintenance(state: &StateDir, keep: &Profile, m: &PageWant, log: &Log) {
    let record = crate::state::maintenance::Record {
        since_unix_ms: m.since_unix_ms.unwrap_or_else(now_unix_ms),
        by: m.by.clone().unwrap_or_else(|| "-".into()),
        keep: keep.clone(),
        retry_after: m.retry_after,
    };
    if let Err(e) = crate::state::maintenance::write(state, &record) {
        log.warn(format!(
            "nginx answers with the maintenance page, but who turned it on could not be recorded: {e:#}"
        ));
    }
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
    let mode = route::of(config);
    let back = match names(
        mode.as_ref(),
        read_own_capped(&state.include_backup_path(), MAX_CONTENT)
            .ok()
            .flatten()
            .as_deref(),
    ) {
        Some(p) => format!("nginx answers as {}", p.name),
        None => "nginx serves the restored config".to_string(),
    };
    let commands = mode.commands();
    let run: Vec<String> = [commands.test, commands.reload]
        .into_iter()
        .flatten()
        .map(|argv| format!("`{}`", argv.join(" ")))
        .collect();
    let reload_back = format!(
        "put back {} as saved in {}, {}wait until {back}; if that cannot be seen, fail and keep {file}",
        mode.describe(),
        state.include_backup_path().display(),
        if run.is_empty() {
            String::new()
        } else {
            format!("run {}, and ", run.join(" and "))
        },
    );
    let not_reloaded = if commands.reload.is_some() {
        "nginx was not reloaded; it is reloaded back only if it no longer serves the previous profile"
    } else {
        "nginx follows it without a reload; it is watched until it serves the previous profile again"
    };
    let what = match phase {
        Phase::Begun | Phase::Written | Phase::Tested => format!(
            "put back {} as saved in {} ({not_reloaded})",
            mode.describe(),
            state.include_backup_path().display()
        ),
        Phase::Reloading | Phase::Reloaded | Phase::Confirmed => format!(
            "keep the switch if {} names {} and nginx answers as it; otherwise {reload_back}",
            mode.describe(),
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
