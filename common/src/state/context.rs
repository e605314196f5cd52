//! What a stage's body works with, once the frame ([`crate::frame::stage`])
//! has settled it: the config, the log, the state directory, live and idle
//! for this run, and what the body leaves for the frame to record.

use anyhow::Result;

use crate::config::{Config, Profile};
use crate::state::lock::Lock;
use crate::state::{BuildFacts, Plan, StateDir};
use crate::sys::log::Log;

/// Live and idle for this run of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    pub live: Option<Profile>,
    pub idle: Profile,
}

/// What a stage body gets to work with.
#[derive(Debug)]
pub struct Context {
    pub config: Config,
    pub log: Log,
    pub state: StateDir,
    pub deployment_id: Option<String>,
    pub slots: Slots,
    /// True when `slots` came from a plan an earlier stage wrote (so what
    /// detection says now may differ, after a switch for instance).
    pub from_plan: bool,
    /// Set by a body that completed the deployment (a confirmed switch).
    pub completes_deployment: bool,
    /// Set by a body that ends its deployment without a switch (`health`
    /// while the maintenance page is on): the plan is closed, so the next
    /// command does not wait for the deployment's lease.
    pub ends_plan: bool,
    /// The profile that switch made live, for `completed.json`.
    pub switched_to: Option<Profile>,
    /// `--dry-run`: the body says what it would do and changes nothing.
    pub dry_run: bool,
    /// What the body wants recorded in the history besides its exit code
    /// (`retired-cutting-connections`), and how many connections that cut.
    pub outcome: Option<(String, u64)>,
    /// The profile the body acted on when not the idle one (`--profile`),
    /// for the history's `to`.
    pub worked_on: Option<Profile>,
    /// The build `start` launched, for the history.
    pub build: Option<BuildFacts>,
    /// What an operator's command did besides the stage's usual work
    /// (`rollback`, `maintenance-on`, `maintenance-off`, `maintenance-kept`:
    /// `health` checked the build and left the page on), for the history.
    pub action: Option<&'static str>,
    pub(crate) plan: Option<Plan>,
    /// `None` in a dry run, which takes no lock.
    pub(crate) _lock: Option<Lock>,
}

impl Context {
    /// The profile a stage acts on: `--profile NAME` when given, else the idle one.
    pub fn target(&self, explicit: Option<&str>) -> Result<Profile> {
        match explicit {
            Some(name) => self.config.profile_arg(name).cloned(),
            None => Ok(self.slots.idle.clone()),
        }
    }
}
