//! What a routing mode does: the one trait every mode implements, and the
//! words they share. The shared machinery calls these methods and never
//! asks which mode it holds: detection reads the mode's witness
//! ([`crate::route::detect`]), the switch transaction, its journal and
//! recovery drive its pieces ([`crate::switch`]), the stage frame guards its
//! directory and asks it whether a switch can happen, the hook budget adds
//! its waits, `profile --check` prints its lines.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::waits::{Part, Steps};
use crate::config::Profile;
use crate::route::address::Seen;
use crate::state::RouteId;
use crate::sys::log::Log;

/// What the route (an include file, a symlink) says nginx routes to: with
/// the probe through nginx, one of detection's two witnesses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include {
    Missing,
    Names(Profile),
    /// It exists but names no configured port (say, the book's 8080 from before blue-green).
    NamesNone,
    /// It names the ports of both profiles.
    NamesBoth,
    /// It sends every request to the maintenance page (`switch
    /// --maintenance`), keeping this profile's route for when it ends.
    Maintenance(Profile),
}

/// What a mode can tell about where nginx sends traffic, besides the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Witness {
    /// What its route names, to be weighed against the probe.
    Route(Include),
    /// nginx balances over both ports and nothing names one: which ports
    /// listen, in profile order.
    Listening(Vec<bool>),
}

/// nginx's commands a switch runs after writing the route.
#[derive(Debug, Clone, Copy, Default)]
pub struct Commands<'a> {
    /// Tests the config before it is loaded (`nginx.test`).
    pub test: Option<&'a [String]>,
    /// Loads the written config (`nginx.reload`); `None`: what is written
    /// takes effect as it is written.
    pub reload: Option<&'a [String]>,
}

/// One line of `profile --check`: `ok: ...`, `FAIL: what is wrong — the
/// command that fixes it`, `warn: ...` or `skip: why`. The lines about a
/// routing mode are the mode's own ([`Mode::check_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Ok(String),
    /// What is wrong, and the command (or change) that fixes it.
    Fail(String, String),
    /// Not a failure today, but one coming: what to do about it.
    Warn(String),
    Skip(String),
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Ok(s) => write!(f, "ok: {s}"),
            Line::Fail(s, fix) => write!(f, "FAIL: {s} — {fix}"),
            Line::Warn(s) => write!(f, "warn: {s}"),
            Line::Skip(s) => write!(f, "skip: {s}"),
        }
    }
}

/// What a routing mode does. One implementation per mode, one file each
/// (`route/include.rs`, ...); [`crate::route::of`] is the one place that
/// turns the config into one.
pub trait Mode: std::fmt::Debug {
    /// The route it changes, as switch journals and `owner.json` record it.
    fn id(&self) -> RouteId;

    /// What it changes, for messages: "the include file /x on deploy@web1".
    fn describe(&self) -> String;

    /// What its witness is called in detection's words ("the include file
    /// routes to real1"): the mode's own noun. Required, so that no mode
    /// speaks of another mode's witness.
    fn noun(&self) -> &'static str;

    /// The directory it writes its route in, and what to call it ("include's
    /// directory"): the stages refuse one others can write, and check that
    /// it takes a new entry. `None`: it writes nothing.
    fn directory(&self) -> Option<(&'static str, PathBuf)>;

    /// What it can tell about where nginx sends traffic, besides the probe.
    fn witness(&self) -> Result<Witness>;

    /// What the route holds when nginx routes to `profile`; `None` when the
    /// mode writes nothing (nginx already lists every profile's port).
    fn content_for(&self, profile: &Profile) -> Option<Vec<u8>>;

    /// The route's content now; `None` when there is none.
    fn read(&self) -> Result<Option<Vec<u8>>>;

    /// Which profile some content of the route names.
    fn classify(&self, content: &[u8]) -> Include;

    /// Refuses (exit 2, nothing touched) a route whose content nonstop
    /// cannot rewrite without losing something; `content` is what it holds
    /// now.
    fn refuse_foreign(&self, content: Option<&[u8]>) -> Result<()>;

    /// Replaces the route's content atomically.
    fn write(&self, content: &[u8]) -> Result<()>;

    /// Removes the route (there was none before the switch).
    fn remove(&self) -> Result<()>;

    /// nginx's commands a switch runs once the route is written.
    fn commands(&self) -> Commands<'_>;

    /// Right before anything is written: what the confirmation will rely on
    /// holds (the pid file nginx's workers are found through).
    fn before_write(&self, log: &Log) -> Result<()>;

    /// nginx's workers that accept connections now, when a reload replaces
    /// them and they can be seen: the confirmation waits until none of them
    /// accepts any more.
    fn accepting_workers(&self, log: &Log) -> Option<Vec<i32>>;

    /// How long the probe must answer the target without a break before
    /// the switch counts as confirmed, `workers` (from
    /// [`Mode::accepting_workers`]) having stopped accepting.
    fn steady_for(&self, workers: Option<&[i32]>) -> Duration;

    /// A mode that writes nothing: waits until nginx sends `target`
    /// requests (`target` answered its health check where nginx connects to
    /// it; `live` is the profile nginx sent them to before), or fails
    /// saying why not.
    fn await_traffic(&self, log: &Log, live: Option<&Profile>, target: &Profile) -> Result<()>;

    /// Where a build already gets requests as soon as it listens ("nginx's
    /// upstream"): a build that fails there must be withdrawn (stopped).
    /// `None`: nginx routes to one build at a time; a failed one serves
    /// nobody.
    fn rotation(&self) -> Option<&'static str>;

    /// Before a deployment stops anything: a switch could happen (its
    /// directory takes a new entry, nginx's config is one nonstop can
    /// reason about), or why not.
    fn check_ready(&self, log: &Log) -> Result<()>;

    /// Where nginx connects to `target`'s app, as nginx's config says.
    fn connects_to(&self, target: &Profile) -> Seen;

    /// Why draining the app on `port` must not wait for its connections to
    /// end; `None` to wait as always.
    fn drain_note(&self, port: u16) -> Option<String>;

    /// Adds its waits at `part` of a stage's path to the hook budget.
    fn waits(&self, part: Part, steps: &mut Steps);

    /// `profile --check`, on nginx's loaded config (`dump`, what `nginx -T`
    /// prints): nginx routes through what this mode changes, in the server
    /// block that answers `probe_url`.
    fn check_config(&self, dump: &str) -> Vec<Line>;

    /// `profile --check`: what its route holds now.
    fn check_route(&self) -> Vec<Line>;

    /// Whether a deployment reads nginx's config itself (`nginx -T`), so
    /// that `profile --check` fails without it instead of skipping its
    /// config lines.
    fn needs_dump(&self) -> bool;

    /// Where the maintenance page goes (a file nginx serves, never the
    /// app), or why this mode cannot serve one.
    fn maintenance_page(&self) -> Result<PathBuf> {
        Err(anyhow!(
            "{}: a maintenance page is not possible in this routing mode",
            self.describe()
        ))
    }

    /// The route's content that makes nginx answer every request with the
    /// page at [`Mode::maintenance_page`] (503, `Retry-After: retry_after`),
    /// keeping `keep`'s route for the moment maintenance ends. Fixed text
    /// but for the profile and the number: the page's words never reach it.
    fn maintenance_content(&self, _keep: &Profile, _retry_after: u32) -> Result<Vec<u8>> {
        self.maintenance_page().map(|_| Vec::new())
    }

    /// Writes the maintenance page where nginx serves it from, and what
    /// else the maintenance route for `keep` needs besides itself.
    fn write_page(&self, _keep: &Profile, _retry_after: u32, _page: &[u8]) -> Result<()> {
        self.maintenance_page().map(|_| ())
    }
}
