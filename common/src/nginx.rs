//! Changing nginx's include file as a transaction that survives the process
//! that began it.
//!
//! `switch` writes the include, tests, reloads and confirms. Before it writes
//! anything it records a journal in the state directory (`switching.json`,
//! plus the previous include's bytes in `include.previous`), and removes it
//! once the switch is confirmed or undone. A journal found by a later stage
//! means a switch was killed half-way (SIGKILL, a reboot, the CodeDeploy
//! agent's timeout). That stage finishes the story before anything else:
//! if nginx already answers as the target with the new include in place the
//! switch took effect and is kept; otherwise the previous include is put
//! back, tested and nginx reloaded. Either way probe and include agree again,
//! so the next deployment is not stopped by "they disagree".

use std::io;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::cmd;
use crate::config::{Config, Profile};
use crate::detect::{self, Probe};
use crate::log::Log;
use crate::route;
use crate::state::{read_own_capped, write_atomic, StateDir};
use crate::time::now_unix_ms;

/// How long nginx's own commands (test, reload) may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);

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
}

/// Records that a switch to `target` begins, with the include's current bytes.
pub fn begin(
    state: &StateDir,
    target: &Profile,
    previous: Option<&[u8]>,
    deployment_id: Option<&str>,
) -> Result<()> {
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
    };
    state.write(&state.journal_path(), &journal)
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
/// Returns words for a message.
pub fn reload_previous(config: &Config) -> String {
    if let Err(why) = test(config) {
        return format!("the restored config fails its test too: {why}");
    }
    match reload(config) {
        Ok(()) => "nginx was reloaded with it".to_string(),
        Err(why) => format!("reloading nginx with it failed: {why}"),
    }
}

/// Finishes a switch that an earlier process left half-done, if any.
pub fn recover(config: &Config, state: &StateDir, log: &Log) -> Result<()> {
    let Some(journal) = state.read::<Journal>(&state.journal_path(), log)? else {
        return Ok(());
    };
    let previous = if journal.had_previous {
        let backup = state.include_backup_path();
        match read_own_capped(&backup, route::MAX_CONTENT) {
            Ok(Some(bytes)) => Some(bytes),
            Ok(None) => {
                return Err(anyhow!(
                    "an interrupted switch to {} left {} but not the saved include {}; \
                     check {} by hand, then remove {}",
                    journal.target.name,
                    state.journal_path().display(),
                    backup.display(),
                    route::describe(config),
                    state.journal_path().display()
                ))
            }
            Err(e) => return Err(anyhow!("cannot read {}: {e}", backup.display())),
        }
    } else {
        None
    };
    let who = format!(
        "a switch to {} (pid {}{}) was interrupted",
        journal.target.name,
        journal.pid,
        journal
            .deployment_id
            .as_deref()
            .map(|d| format!(", deployment {d}"))
            .unwrap_or_default()
    );
    let now = route::read(config)?;
    let target = config.profile(&journal.target.name).cloned();
    let new_line = target.as_ref().map(|t| route::content_for(config, t));
    if now == previous {
        log.warn(format!(
            "{who} before it changed {}; nothing to undo",
            route::describe(config)
        ));
    } else if let (Some(t), Some(line)) = (&target, &new_line) {
        let took = now.as_deref() == Some(line.as_slice())
            && matches!(detect::probe(config), Probe::Answered(ref p) if p == t);
        if took {
            log.warn(format!(
                "{who} after it took effect: nginx answers as {}; keeping it",
                t.name
            ));
        } else {
            restore(config, previous.as_deref(), log)?;
            log.warn(format!(
                "{who} before nginx was confirmed to answer as {}; restored {} and {}",
                t.name,
                route::describe(config),
                reload_previous(config)
            ));
        }
    } else {
        restore(config, previous.as_deref(), log)?;
        log.warn(format!(
            "{who}, and {} is not configured any more; restored {} and {}",
            journal.target.name,
            route::describe(config),
            reload_previous(config)
        ));
    }
    end(state, log);
    Ok(())
}
