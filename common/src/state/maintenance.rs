//! `maintenance.json`: who turned the maintenance page on and since when,
//! as `profile` says it. Kept here, below both `switch::maintenance` (which
//! writes it when its switch is confirmed) and `switch::journal` (whose
//! recovery writes it when it keeps a maintenance switch a kill cut short),
//! so neither reaches into the other.
//!
//! Whether maintenance is on goes by nginx's route, never by this file:
//! it only says since when and by whom.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::Profile;
use crate::state::{read_own_capped, StateDir};
use crate::sys::log::Log;

/// Who turned maintenance on, as `profile` says it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub since_unix_ms: u64,
    /// `SUDO_USER`, else `USER`, else the effective user's name.
    pub by: String,
    /// The profile whose route the maintenance route keeps.
    pub keep: Profile,
    pub retry_after: u32,
}

/// The file, in the state directory.
pub(crate) fn record_path(state: &StateDir) -> PathBuf {
    state.root().join("maintenance.json")
}

/// The record, read only: `None` when there is none; one that cannot be
/// read is `None` too, with a warning naming the file (`profile` shows
/// "since -, by -" then, and the next `switch --maintenance` rewrites it).
pub fn read(state: &StateDir, log: &Log) -> Option<Record> {
    let path = record_path(state);
    let parsed = read_own_capped(&path, 64 << 10)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            b.map(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string()))
                .transpose()
        });
    match parsed {
        Ok(r) => r,
        Err(why) => {
            log.warn(format!(
                "cannot read {} ({why}); since when and by whom maintenance is on is not known",
                path.display()
            ));
            None
        }
    }
}

/// Writes the record (atomically, never through a planted link).
pub(crate) fn write(state: &StateDir, record: &Record) -> Result<()> {
    state.write(&record_path(state), record)
}
