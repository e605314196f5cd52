//! The one JSON config file: where it is found, what it may say, and the
//! checks that turn it into a [`Config`] before any stage touches anything.
//!
//! Defaults follow the book (real1 on 8081, real2 on 8082, the probe through
//! nginx at /profile, the include file `service-url.inc`). An unknown key is
//! an error, because a typo that silently falls back to a default is how a
//! deployment ends up pointing nginx at the wrong port.

pub mod template;
pub mod waits;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::sys::error::usage;
// Re-exported: the stages have always found them here.
pub use crate::config::template::{render, wildcard_match};

/// The file name looked for beside the executable and in its parent directory.
pub const FILE_NAME: &str = "nonstop.json";

/// The most old app logs `start` keeps (`app.log_keep`): rotation renames
/// each of them at every start.
pub(crate) const MAX_LOG_KEEP: u32 = 100;

/// One blue-green slot: a profile name and the port its app listens on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub port: u16,
}

/// A validated configuration. Every path in it is absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from, for messages.
    pub source: PathBuf,
    /// Exactly two profiles, distinct in name and port.
    pub profiles: Vec<Profile>,
    pub probe_url: String,
    pub probe_timeout: Duration,
    pub state_dir: PathBuf,
    pub lock_timeout: Duration,
    pub app: App,
    pub health: Health,
    pub nginx: Nginx,
}

/// How the app of a profile is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A process nonstop launches (`app.command`), the book's `nohup java -jar`.
    Process,
    /// A Docker Compose service per profile.
    Compose(Compose),
}

/// `app.compose`: the services of a Compose project that are the profiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    pub file: PathBuf,
    pub project: String,
    /// The service of each profile, in profile order.
    pub services: Vec<String>,
    /// `docker compose` or `docker-compose`; `None`: whichever works.
    pub command: Option<Vec<String>>,
    /// The docker CLI, for `ps`, `inspect` and `logs`.
    pub docker: String,
    /// Pull the service's image before starting it.
    pub pull: bool,
}

#[derive(Debug, Clone)]
pub struct App {
    pub backend: Backend,
    pub dir: PathBuf,
    /// The directory the artifact is looked for in.
    pub artifact_dir: PathBuf,
    /// A file-name pattern with `*` and `?`.
    pub artifact_pattern: String,
    /// argv with `{profile}`, `{port}`, `{artifact}` placeholders.
    pub command: Vec<String>,
    /// Log file template (`{profile}`), relative to `dir` unless absolute.
    pub log: String,
    /// How many old logs `start` keeps when it rotates the profile's log
    /// (`LOG.1` newest); 0: append to one log forever, as the book does.
    pub log_keep: u32,
    pub stop_timeout: Duration,
    pub start_grace: Duration,
    /// Stop the previous app once a switch is confirmed and nginx has let go
    /// of it. Off by default (the book keeps it for a quick rollback); always
    /// on in upstream-pair mode.
    pub retire: bool,
    /// What retiring does when the old app still has connections open once
    /// `nginx.drain_timeout_secs` has run out.
    pub retire_busy: RetireBusy,
}

/// `app.retire_busy`: the old app still has connections open at the end of
/// the drain bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireBusy {
    /// Stop it anyway (SIGTERM; SIGKILL after `app.stop_timeout_secs`), warn
    /// with the count and record it in the history.
    Stop,
    /// Keep it running and fail the stage (exit 1).
    Fail,
}

/// What counts as a healthy answer. Whatever the rule, only a 2xx can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMatch {
    /// The body, trimmed, equals `expect` (the book: the profile's name).
    Exact,
    /// The body contains `expect` (a `/health` page with a word in it).
    Contains,
    /// A JSON object whose `status` is `"UP"` (Spring Boot's `/actuator/health`).
    Actuator,
    /// Any 2xx.
    AnySuccess,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub path: String,
    pub rule: HealthMatch,
    pub expect: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub request_timeout: Duration,
    /// Requests sent to the idle port once it is healthy, before the switch.
    pub warmup: Option<Warmup>,
}

/// `health.warmup`: GETs to the new app's own port after it passed the
/// health check and before nginx is switched to it, so that its first
/// users do not pay for a cold start (a JVM's classes loaded and code
/// compiled on first use). Measured by the benchmark; opt-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    /// Paths on the idle port, requested in turn.
    pub paths: Vec<String>,
    /// How many requests in all.
    pub requests: u32,
}

/// Upper bound of `health.warmup.requests`: the warm-up delays the switch.
pub(crate) const MAX_WARMUP_REQUESTS: u64 = 10_000;
/// The most the whole warm-up may take: it delays the switch, and the hook
/// budget counts it.
pub(crate) const MAX_WARMUP: Duration = Duration::from_secs(10);

/// How nginx is told which profile to route to: the keys of `nginx.mode`.
/// Only this config's parsing and [`crate::route::of`], which turns it into
/// the mode that acts on them, look inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Routing {
    /// The book's: an include file holding one line per the template.
    Include,
    /// One site file per profile and a symlink to the live one (the
    /// sites-enabled/sites-available layout). `sites` is in profile order.
    Symlink { link: PathBuf, sites: Vec<PathBuf> },
    /// nginx's upstream lists both ports and is never edited: the new app is
    /// started beside the old one, checked on its port, and the old one retired.
    UpstreamPair,
    /// nginx's `root` is a symlink `link` to `ports/PORT` beside it, which a
    /// `map` on `$realpath_root` turns into the upstream on every request:
    /// a switch renames a new link over it, and nginx is never reloaded.
    Realpath { link: PathBuf },
}

/// nginx on another host, reached with the system's `ssh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    pub destination: String,
    pub port: Option<u16>,
    pub identity: Option<PathBuf>,
    /// More `ssh` arguments, placed before the destination.
    pub options: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Nginx {
    /// `nginx.mode`, as it is named there.
    pub mode: &'static str,
    /// That mode's keys.
    pub(crate) routing: Routing,
    /// Set when nginx (its files and commands) is on another host.
    pub ssh: Option<Ssh>,
    pub include: PathBuf,
    pub template: String,
    pub test: Vec<String>,
    pub reload: Vec<String>,
    /// The master's pid file, to watch the workers of the old configuration
    /// stop accepting after a reload. Empty: go by the probe alone.
    pub pid_file: Option<PathBuf>,
    pub confirm_timeout: Duration,
    /// With `app.retire`: how long to wait for nginx to let go of the old
    /// app (its old workers gone, or no connection left) before stopping it.
    pub drain_timeout: Duration,
    /// Upstream-pair mode: the upstream servers' `fail_timeout` in nginx's
    /// config (nginx's default: 10 s; 0 with `max_fails=0`). See
    /// `switch`'s retire step for why it matters.
    pub fail_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    profiles: Option<Vec<RawProfile>>,
    probe_url: Option<String>,
    probe_timeout_ms: Option<u64>,
    state_dir: Option<String>,
    lock_timeout_secs: Option<u64>,
    app: Option<RawApp>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    nginx: RawNginx,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    // Wider than u16 so that 70000 gets our message, not a serde type error.
    port: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    dir: Option<String>,
    artifact: Option<String>,
    command: Option<Vec<String>>,
    log: Option<String>,
    log_keep: Option<u32>,
    stop_timeout_secs: Option<u64>,
    start_grace_ms: Option<u64>,
    retire: Option<bool>,
    retire_busy: Option<String>,
    backend: Option<String>,
    compose: Option<RawCompose>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompose {
    file: String,
    project: String,
    services: BTreeMap<String, String>,
    command: Option<Vec<String>>,
    docker: Option<String>,
    pull: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<String>,
    #[serde(rename = "match")]
    rule: Option<String>,
    expect: Option<String>,
    interval_ms: Option<u64>,
    timeout_secs: Option<u64>,
    request_timeout_ms: Option<u64>,
    warmup: Option<RawWarmup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmup {
    paths: Vec<String>,
    requests: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNginx {
    mode: Option<String>,
    link: Option<String>,
    sites: Option<BTreeMap<String, String>>,
    ssh: Option<RawSsh>,
    drain_timeout_secs: Option<u64>,
    fail_timeout_secs: Option<u64>,
    include: Option<String>,
    template: Option<String>,
    test: Option<Vec<String>>,
    reload: Option<Vec<String>>,
    pid_file: Option<String>,
    confirm_timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    destination: String,
    port: Option<i64>,
    identity: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// Finds the config: `--config` / `NONSTOP_CONFIG` when given, else
/// `nonstop.json` beside the executable, else in the executable's parent
/// directory (so `scripts/stop` in a bundle finds `nonstop.json` at its root).
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| {
        usage(format!(
            "cannot tell where this executable lives ({e}); pass --config PATH"
        ))
    })?;
    let mut tried = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let candidate = d.join(FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
        dir = d.parent();
    }
    Err(usage(format!(
        "no config file: looked for {} (pass --config PATH or set NONSTOP_CONFIG)",
        tried.join(" and ")
    )))
}

/// Reads, parses and validates a config file. Every failure is a [`usage`]
/// error (exit 2) that names the file and the key. (The stages then check
/// its waits against the appspec.yml shipped with it: [`crate::frame::budget`].)
pub fn load(path: &Path) -> Result<Config> {
    let text = fs::read_to_string(path)
        .map_err(|e| usage(format!("config file {}: {e}", path.display())))?;
    parse(&text, path)
}

/// Parses and validates config text; `source` is only used in messages.
pub fn parse(text: &str, source: &Path) -> Result<Config> {
    let src = source.display();
    let de = &mut serde_json::Deserializer::from_str(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        if key == "." {
            usage(format!("config file {src}: {}", e.inner()))
        } else {
            usage(format!("config file {src}: key `{key}`: {}", e.inner()))
        }
    })?;
    validate(raw, source).map_err(|e| usage(format!("config file {src}: {e}")))
}

/// A config key whose value is wrong or missing. The key path is written
/// once, where the check is, and this Display is the one place that puts
/// it into the message ("key `app.dir`: ...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// "key `{key}`: {problem}".
    Bad { key: String, problem: String },
    /// "key `{key}` is missing: {hint}", or "key `{key}` is missing (...)"
    /// when the hint is an aside in parentheses.
    Missing { key: String, hint: String },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Bad { key, problem } => write!(f, "key `{key}`: {problem}"),
            KeyError::Missing { key, hint } if hint.starts_with('(') => {
                write!(f, "key `{key}` is missing {hint}")
            }
            KeyError::Missing { key, hint } => write!(f, "key `{key}` is missing: {hint}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// What a section's conversion returns.
type Checked<T> = Result<T, KeyError>;

fn bad(key: impl Into<String>, problem: impl Into<String>) -> KeyError {
    KeyError::Bad {
        key: key.into(),
        problem: problem.into(),
    }
}

fn missing(key: &str, hint: &str) -> KeyError {
    KeyError::Missing {
        key: key.to_string(),
        hint: hint.to_string(),
    }
}

/// The whole file: each section converts itself, in this order, and the
/// first bad key ends the check. Upstream-pair mode (an nginx setting)
/// always retires the old app, so `app.retire` is settled last.
fn validate(raw: RawConfig, source: &Path) -> Checked<Config> {
    let profiles = profiles(raw.profiles)?;
    let mut app = app(raw.app, &profiles)?;
    let health = health(raw.health)?;
    let nginx = nginx(raw.nginx, &profiles, &app.dir)?;
    app.retire |= nginx.routing == Routing::UpstreamPair;
    let probe_url = probe_url(raw.probe_url, &profiles)?;
    let config = Config {
        source: source.to_path_buf(),
        profiles,
        probe_url,
        probe_timeout: ms(
            "probe_timeout_ms",
            raw.probe_timeout_ms,
            2000,
            MAX_REQUEST_MS,
        )?,
        state_dir: resolve(&app.dir, raw.state_dir.as_deref().unwrap_or(".nonstop")),
        lock_timeout: secs(
            "lock_timeout_secs",
            raw.lock_timeout_secs,
            60,
            MAX_WAIT_SECS,
        )?,
        app,
        health,
        nginx,
    };
    path_lengths(&config)?;
    Ok(config)
}

/// Every path nonstop makes or opens from the config fits the kernel's
/// limits (`files::too_long`): checked here, so that a name one byte too
/// long is a config error before anything is stopped, not an
/// `ENAMETOOLONG` at the switch after `stop` and `start` ran. The files
/// written through a temp file beside them (the include, the symlink, the
/// state files) count with that temp file's longer name.
fn path_lengths(config: &Config) -> Checked<()> {
    use crate::sys::files::{too_long, TEMP_EXTRA};
    let fits = |key: &str, path: &Path, extra: usize| match too_long(path, extra) {
        Some(why) => Err(bad(key, format!("{:?}: {why}", path.display().to_string()))),
        None => Ok(()),
    };
    match &config.nginx.routing {
        Routing::Include => fits("nginx.include", &config.nginx.include, TEMP_EXTRA)?,
        Routing::Symlink { link, sites } => {
            fits("nginx.link", link, TEMP_EXTRA)?;
            for (p, site) in config.profiles.iter().zip(sites) {
                fits(&format!("nginx.sites.{}", p.name), site, 0)?;
            }
        }
        Routing::UpstreamPair => {}
        Routing::Realpath { link } => fits("nginx.link", link, TEMP_EXTRA)?,
    }
    fits("state_dir", &config.state_dir, 0)?;
    let longest = config
        .state_dir
        .join("x".repeat(longest_state_name(&config.profiles)));
    if let Some(why) = too_long(&longest, TEMP_EXTRA) {
        return Err(bad(
            "state_dir",
            format!(
                "{:?}: its files (the longest, launched-PROFILE.json, written through a temp file beside it) would not fit: {why}",
                config.state_dir.display().to_string()
            ),
        ));
    }
    fits("app.dir", &config.app.dir, 0)?;
    fits("app.artifact", &config.app.artifact_dir, 0)?;
    // Rotation renames the log to LOG.1 ... LOG.N.
    let rotated = format!(".{}", config.app.log_keep).len();
    for p in &config.profiles {
        fits("app.log", &config.log_path(p), rotated)?;
    }
    if let Some(pid) = &config.nginx.pid_file {
        fits("nginx.pid_file", pid, 0)?;
    }
    if let Backend::Compose(c) = &config.app.backend {
        fits("app.compose.file", &c.file, 0)?;
    }
    if let Some(identity) = config.nginx.ssh.as_ref().and_then(|s| s.identity.as_ref()) {
        fits("nginx.ssh.identity", identity, 0)?;
    }
    Ok(())
}

/// The longest name of a file nonstop keeps in `state_dir`, before the temp
/// suffix: `launched-PROFILE.json` (profile names are at most 64 bytes), or
/// `include.previous`. The other names (`plan.json`, `lock`, a corrupt file's
/// `.corrupt-MILLIS`, ...) are shorter; a unit test checks them all.
fn longest_state_name(profiles: &[Profile]) -> usize {
    profiles
        .iter()
        .map(|p| format!("launched-{}.json", p.name).len())
        .chain(["include.previous".len()])
        .max()
        .unwrap_or(0)
}

/// A path from the config: absolute as written, else relative to `app.dir`.
fn resolve(dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// `key`'s value among the named choices, or an error listing them.
fn one_of<T: Clone>(key: &str, value: &str, choices: &[(&str, T)]) -> Checked<T> {
    match choices.iter().find(|(name, _)| *name == value) {
        Some((_, choice)) => Ok(choice.clone()),
        None => {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            Err(bad(
                key,
                format!("{value:?} is not one of {}", names.join(", ")),
            ))
        }
    }
}

/// Whether an argv has no program to run.
fn empty_argv(argv: &[String]) -> bool {
    argv.first().is_none_or(|c| c.trim().is_empty())
}

/// `key` (a map from profile name to a value) read in profile order: every
/// key a configured profile, every profile given a `what`.
fn per_profile<'m>(
    key: &str,
    map: &'m BTreeMap<String, String>,
    profiles: &[Profile],
    what: &str,
) -> Checked<Vec<&'m String>> {
    if let Some(unknown) = map.keys().find(|k| !profiles.iter().any(|p| &p.name == *k)) {
        return Err(bad(format!("{key}.{unknown}"), "not a configured profile"));
    }
    profiles
        .iter()
        .map(|p| {
            map.get(&p.name)
                .ok_or_else(|| bad(key, format!("no {what} for profile {}", p.name)))
        })
        .collect()
}

/// `profiles`: the book's real1 on 8081 and real2 on 8082 when absent.
fn profiles(raw: Option<Vec<RawProfile>>) -> Checked<Vec<Profile>> {
    let Some(list) = raw else {
        return Ok(vec![
            Profile {
                name: "real1".into(),
                port: 8081,
            },
            Profile {
                name: "real2".into(),
                port: 8082,
            },
        ]);
    };
    if list.len() != 2 {
        return Err(bad(
            "profiles",
            format!(
                "blue-green needs exactly two profiles, found {}",
                list.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in list.into_iter().enumerate() {
        let (name_key, port_key) = (format!("profiles[{i}].name"), format!("profiles[{i}].port"));
        if !profile_name_ok(&p.name) {
            return Err(bad(
                name_key,
                format!(
                    "{:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    p.name
                ),
            ));
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| bad(&port_key, format!("{} is outside 1-65535", p.port)))?;
        if !names.insert(p.name.clone()) {
            return Err(bad(
                name_key,
                format!("{:?} is used by both profiles", p.name),
            ));
        }
        if !ports.insert(port) {
            return Err(bad(port_key, format!("{port} is used by both profiles")));
        }
        out.push(Profile { name: p.name, port });
    }
    Ok(out)
}

/// A profile name is part of file names (state, logs): no separators, no
/// `.` or `..`.
fn profile_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// `app`: required, for `app.dir`. `retire` is only what `app.retire`
/// says; [`validate`] adds upstream-pair mode's.
fn app(raw: Option<RawApp>, profiles: &[Profile]) -> Checked<App> {
    let app = raw.ok_or_else(|| missing("app", "(at least `app.dir` is required)"))?;
    let dir = app_dir(app.dir)?;
    let (artifact_dir, artifact_pattern) =
        artifact(&dir, app.artifact.as_deref().unwrap_or("zip/*.jar"))?;
    let command = app_command(app.command)?;
    let backend = backend(app.backend.as_deref(), app.compose.as_ref(), profiles, &dir)?;
    let retire_busy = one_of(
        "app.retire_busy",
        app.retire_busy.as_deref().unwrap_or("stop"),
        &[("stop", RetireBusy::Stop), ("fail", RetireBusy::Fail)],
    )?;
    let log = app.log.unwrap_or_else(|| "nohup-{profile}.out".into());
    if log.trim().is_empty() {
        return Err(bad("app.log", "empty path"));
    }
    check_placeholders("app.log", &log, &["profile"])?;
    let log_keep = app.log_keep.unwrap_or(5);
    at_most("app.log_keep", u64::from(log_keep), u64::from(MAX_LOG_KEEP))?;
    Ok(App {
        backend,
        artifact_dir,
        artifact_pattern,
        command,
        log,
        log_keep,
        stop_timeout: secs(
            "app.stop_timeout_secs",
            app.stop_timeout_secs,
            30,
            MAX_WAIT_SECS,
        )?,
        // 0 is allowed: `start` then leaves the early-exit watch to `health`.
        start_grace: Duration::from_millis(at_most(
            "app.start_grace_ms",
            app.start_grace_ms.unwrap_or(1000),
            MAX_GRACE_MS,
        )?),
        retire: app.retire.unwrap_or(false),
        retire_busy,
        dir,
    })
}

/// `app.dir`: required and absolute, as every other relative path is
/// resolved against it.
fn app_dir(raw: Option<String>) -> Checked<PathBuf> {
    let dir =
        raw.ok_or_else(|| missing("app.dir", "the absolute directory the app is deployed to"))?;
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(bad(
            "app.dir",
            format!(
                "{:?} is not an absolute path; every other relative path is resolved against it",
                dir.display().to_string()
            ),
        ));
    }
    Ok(dir)
}

/// `app.artifact`: the directory it is looked for in and the file-name
/// pattern, the only place wildcards may be.
fn artifact(dir: &Path, artifact: &str) -> Checked<(PathBuf, String)> {
    let key = "app.artifact";
    let path = resolve(dir, artifact);
    let pattern = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad(key, format!("{artifact:?} names no file pattern")))?
        .to_string();
    let parent = path
        .parent()
        .ok_or_else(|| bad(key, format!("{artifact:?} has no directory")))?
        .to_path_buf();
    if parent.to_string_lossy().contains(['*', '?', '[']) {
        return Err(bad(
            key,
            format!(
                "{artifact:?}: wildcards are only allowed in the file name, not in directories"
            ),
        ));
    }
    Ok((parent, pattern))
}

/// `app.command`: the book's `java -jar` by default.
fn app_command(raw: Option<Vec<String>>) -> Checked<Vec<String>> {
    let command = raw.unwrap_or_else(|| {
        [
            "java",
            "-Dspring.profiles.active={profile}",
            "-jar",
            "{artifact}",
        ]
        .map(String::from)
        .to_vec()
    });
    if empty_argv(&command) {
        return Err(bad(
            "app.command",
            "the command is empty; give an argv such as [\"java\", \"-jar\", \"{artifact}\"]",
        ));
    }
    check_placeholders(
        "app.command",
        &command.join(" "),
        &["profile", "port", "artifact"],
    )?;
    Ok(command)
}

/// `app.backend` and the `app.compose` it may need.
fn backend(
    name: Option<&str>,
    raw: Option<&RawCompose>,
    profiles: &[Profile],
    dir: &Path,
) -> Checked<Backend> {
    let is_compose = one_of(
        "app.backend",
        name.unwrap_or("process"),
        &[("process", false), ("compose", true)],
    )?;
    match (is_compose, raw) {
        (false, None) => Ok(Backend::Process),
        (false, Some(_)) => Err(bad(
            "app.compose",
            "only used with \"backend\": \"compose\"",
        )),
        (true, None) => Err(missing(
            "app.compose",
            "{\"file\": ..., \"project\": ..., \"services\": {\"PROFILE\": \"SERVICE\"}}",
        )),
        (true, Some(raw)) => compose(raw, profiles, dir).map(Backend::Compose),
    }
}

/// A name Compose accepts for a project or a service.
fn compose_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.starts_with(['-', '.'])
}

/// `app.compose`: a project and one service of it per profile.
fn compose(raw: &RawCompose, profiles: &[Profile], dir: &Path) -> Checked<Compose> {
    if !compose_name_ok(&raw.project)
        || raw
            .project
            .chars()
            .any(|c| c.is_ascii_uppercase() || c == '.')
    {
        return Err(bad(
            "app.compose.project",
            format!(
                "{:?} must be lowercase letters, digits, '-' or '_' (what Compose labels its containers with)",
                raw.project
            ),
        ));
    }
    let key = "app.compose.services";
    let services = per_profile(key, &raw.services, profiles, "service")?;
    for (p, s) in profiles.iter().zip(&services) {
        if !compose_name_ok(s) {
            return Err(bad(
                format!("{key}.{}", p.name),
                format!("{s:?} is not a Compose service name"),
            ));
        }
    }
    if services[0] == services[1] {
        return Err(bad(key, "both profiles name the same service"));
    }
    if raw.command.as_deref().is_some_and(empty_argv) {
        return Err(bad("app.compose.command", "the command is empty"));
    }
    let docker = raw.docker.clone().unwrap_or_else(|| "docker".into());
    if docker.trim().is_empty() {
        return Err(bad("app.compose.docker", "empty"));
    }
    Ok(Compose {
        file: resolve(dir, &raw.file),
        project: raw.project.clone(),
        services: services.into_iter().cloned().collect(),
        command: raw.command.clone(),
        docker,
        pull: raw.pull.unwrap_or(false),
    })
}

/// `health`: what is asked, what counts as healthy, how long to wait.
fn health(raw: RawHealth) -> Checked<Health> {
    let path = raw.path.unwrap_or_else(|| "/profile".into());
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(bad(
            "health.path",
            format!("{path:?} must start with '/' and contain no spaces"),
        ));
    }
    let rule = one_of(
        "health.match",
        raw.rule.as_deref().unwrap_or("exact"),
        &[
            ("exact", HealthMatch::Exact),
            ("contains", HealthMatch::Contains),
            ("actuator", HealthMatch::Actuator),
            ("any-2xx", HealthMatch::AnySuccess),
        ],
    )?;
    let expect = raw.expect.unwrap_or_else(|| "{profile}".into());
    if expect.trim().is_empty() && matches!(rule, HealthMatch::Exact | HealthMatch::Contains) {
        return Err(bad(
            "health.expect",
            "empty; an empty answer must not count as healthy",
        ));
    }
    check_placeholders("health.expect", &expect, &["profile", "port"])?;
    Ok(Health {
        path,
        rule,
        expect,
        interval: ms("health.interval_ms", raw.interval_ms, 100, MAX_INTERVAL_MS)?,
        timeout: secs("health.timeout_secs", raw.timeout_secs, 60, MAX_WAIT_SECS)?,
        request_timeout: ms(
            "health.request_timeout_ms",
            raw.request_timeout_ms,
            1000,
            MAX_REQUEST_MS,
        )?,
        warmup: raw.warmup.map(warmup).transpose()?,
    })
}

/// `health.warmup`: at least one path, a bounded number of requests.
fn warmup(raw: RawWarmup) -> Checked<Warmup> {
    if raw.paths.is_empty() {
        return Err(bad(
            "health.warmup.paths",
            "empty; name at least one path such as \"/\"",
        ));
    }
    if let Some(path) = raw
        .paths
        .iter()
        .find(|p| !p.starts_with('/') || p.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(bad(
            "health.warmup.paths",
            format!("{path:?} must start with '/' and contain no spaces"),
        ));
    }
    let requests = raw.requests.unwrap_or(100);
    if requests == 0 || requests > MAX_WARMUP_REQUESTS {
        return Err(bad(
            "health.warmup.requests",
            format!("{requests} is not between 1 and {MAX_WARMUP_REQUESTS}"),
        ));
    }
    Ok(Warmup {
        paths: raw.paths,
        requests: u32::try_from(requests).unwrap_or(u32::MAX),
    })
}

/// `nginx`: how the route is written and read back, on which host, and
/// nginx's own timings.
fn nginx(raw: RawNginx, profiles: &[Profile], dir: &Path) -> Checked<Nginx> {
    let template = nginx_template(raw.template.clone())?;
    let test = raw
        .test
        .clone()
        .unwrap_or_else(|| vec!["nginx".into(), "-t".into()]);
    let reload = raw
        .reload
        .clone()
        .unwrap_or_else(|| ["nginx", "-s", "reload"].map(String::from).to_vec());
    for (key, argv) in [("nginx.test", &test), ("nginx.reload", &reload)] {
        if empty_argv(argv) {
            return Err(bad(key, "the command is empty"));
        }
    }
    let (mode, routing) = mode(&raw, profiles)?;
    let ssh = raw.ssh.map(|s| ssh(s, &routing, dir)).transpose()?;
    let include = include(raw.include.as_deref(), &routing, ssh.is_some(), dir)?;
    Ok(Nginx {
        mode,
        routing,
        ssh,
        include,
        template,
        test,
        reload,
        pid_file: match raw.pid_file.as_deref().unwrap_or("/run/nginx.pid") {
            "" => None,
            p => Some(resolve(dir, p)),
        },
        confirm_timeout: secs(
            "nginx.confirm_timeout_secs",
            raw.confirm_timeout_secs,
            10,
            MAX_CONFIRM_SECS,
        )?,
        drain_timeout: secs(
            "nginx.drain_timeout_secs",
            raw.drain_timeout_secs,
            60,
            MAX_WAIT_SECS,
        )?,
        // 0 is allowed: the servers have max_fails=0.
        fail_timeout: Duration::from_secs(at_most(
            "nginx.fail_timeout_secs",
            raw.fail_timeout_secs.unwrap_or(10),
            MAX_WAIT_SECS,
        )?),
    })
}

/// `nginx.template`: the include file's line, which must route to `{port}`.
fn nginx_template(raw: Option<String>) -> Checked<String> {
    let template = raw.unwrap_or_else(|| "set $service_url http://127.0.0.1:{port};".into());
    if !template.contains("{port}") {
        return Err(bad(
            "nginx.template",
            format!("{template:?} does not contain {{port}}"),
        ));
    }
    check_placeholders("nginx.template", &template, &["port", "profile"])?;
    Ok(template)
}

/// `nginx.include`: a file; on an ssh host in include mode, an absolute
/// path there (app.dir is a directory of this machine).
fn include(raw: Option<&str>, routing: &Routing, remote: bool, dir: &Path) -> Checked<PathBuf> {
    let include = raw.unwrap_or("/etc/nginx/conf.d/service-url.inc");
    if remote && *routing == Routing::Include && !Path::new(include).is_absolute() {
        return Err(bad(
            "nginx.include",
            format!("{include:?} is on the nginx host, so it must be an absolute path"),
        ));
    }
    let include = resolve(dir, include);
    if include.file_name().is_none() {
        return Err(bad(
            "nginx.include",
            format!("{:?} names no file", include.display().to_string()),
        ));
    }
    Ok(include)
}

/// How a mode's keys are read.
type ModeKeys = fn(&RawNginx, &[Profile]) -> Checked<Routing>;

/// Every `nginx.mode`: its name, and how its keys are read. One line per
/// mode; what each does is in its file under `route/`.
const MODES: [(&str, ModeKeys); 4] = [
    ("include", |_, _| Ok(Routing::Include)),
    ("symlink", symlink),
    ("upstream-pair", |_, _| Ok(Routing::UpstreamPair)),
    ("realpath", realpath),
];

/// `nginx.mode` and its keys, each key only in its mode.
fn mode(raw: &RawNginx, profiles: &[Profile]) -> Checked<(&'static str, Routing)> {
    let name = raw.mode.as_deref().unwrap_or("include");
    let keys = one_of("nginx.mode", name, &MODES)?;
    let routing = keys(raw, profiles)?;
    if !matches!(routing, Routing::Symlink { .. } | Routing::Realpath { .. }) && raw.link.is_some()
    {
        return Err(bad(
            "nginx.link",
            "only used with \"mode\": \"symlink\" or \"realpath\"",
        ));
    }
    if !matches!(routing, Routing::Symlink { .. }) && raw.sites.is_some() {
        return Err(bad("nginx.sites", "only used with \"mode\": \"symlink\""));
    }
    let name = MODES
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == name)
        .unwrap_or_default();
    Ok((name, routing))
}

/// An absolute path that names a file.
fn absolute_file(key: &str, p: &str) -> Checked<PathBuf> {
    let path = PathBuf::from(p);
    if path.is_absolute() && path.file_name().is_some() {
        Ok(path)
    } else {
        Err(bad(
            key,
            format!("{p:?} must be an absolute path to a file"),
        ))
    }
}

/// Symlink mode: `nginx.link` and one site file per profile, all distinct.
fn symlink(raw: &RawNginx, profiles: &[Profile]) -> Checked<Routing> {
    let link = raw.link.as_deref().ok_or_else(|| {
        missing(
            "nginx.link",
            "the symlink nginx includes (say /etc/nginx/sites-enabled/default)",
        )
    })?;
    let link = absolute_file("nginx.link", link)?;
    let sites = raw.sites.as_ref().ok_or_else(|| {
        missing(
            "nginx.sites",
            "the site file of each profile, as {\"PROFILE\": \"/etc/nginx/sites-available/FILE\"}",
        )
    })?;
    let paths = per_profile("nginx.sites", sites, profiles, "site file")?
        .into_iter()
        .zip(profiles)
        .map(|(site, p)| absolute_file(&format!("nginx.sites.{}", p.name), site))
        .collect::<Checked<Vec<_>>>()?;
    if paths[0] == paths[1] {
        return Err(bad("nginx.sites", "both profiles name the same site file"));
    }
    if paths.contains(&link) {
        return Err(bad(
            "nginx.link",
            "it is one of the site files; it must be the symlink that points at one",
        ));
    }
    Ok(Routing::Symlink { link, sites: paths })
}

/// Realpath mode: `nginx.link`, the symlink nginx's `root` names; the
/// `ports/PORT` directories it points at are beside it.
fn realpath(raw: &RawNginx, _profiles: &[Profile]) -> Checked<Routing> {
    let link = raw.link.as_deref().ok_or_else(|| {
        missing(
            "nginx.link",
            "the symlink nginx's `root` names, beside its ports/ directory (say /etc/nginx/nonstop/live)",
        )
    })?;
    let link = absolute_file("nginx.link", link)?;
    if link.file_name().is_some_and(|n| n == "ports") {
        return Err(bad(
            "nginx.link",
            "it is named `ports`, the directory beside it that holds one directory per port",
        ));
    }
    Ok(Routing::Realpath { link })
}

/// `nginx.ssh`: nginx on another host, reached with the system's `ssh`.
fn ssh(raw: RawSsh, routing: &Routing, dir: &Path) -> Checked<Ssh> {
    if *routing == Routing::UpstreamPair {
        return Err(bad(
            "nginx.ssh",
            "upstream-pair mode never touches nginx, so it needs no ssh",
        ));
    }
    let destination = raw.destination.trim().to_string();
    if destination.is_empty()
        || destination.starts_with('-')
        || destination.contains(char::is_whitespace)
    {
        return Err(bad(
            "nginx.ssh.destination",
            format!(
                "{:?} must be a host or user@host (no spaces, not starting with '-')",
                raw.destination
            ),
        ));
    }
    let port = match raw.port {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("nginx.ssh.port", format!("{p} is outside 1-65535")))?,
        ),
    };
    if let Some(empty) = raw.options.iter().find(|o| o.trim().is_empty()) {
        return Err(bad("nginx.ssh.options", format!("{empty:?} is empty")));
    }
    Ok(Ssh {
        destination,
        port,
        identity: raw.identity.as_deref().map(|p| resolve(dir, p)),
        options: raw.options,
    })
}

/// `probe_url`: an http:// URL of nginx, never a profile's own port here.
fn probe_url(raw: Option<String>, profiles: &[Profile]) -> Checked<String> {
    let probe_url = raw.unwrap_or_else(|| "http://127.0.0.1/profile".into());
    if !probe_url.starts_with("http://") || probe_url.contains(char::is_whitespace) {
        return Err(bad(
            "probe_url",
            format!(
                "{probe_url:?} must be an http:// URL (nginx on this host, as in http://127.0.0.1/profile)"
            ),
        ));
    }
    // The probe is the witness of what nginx does: aimed at a profile's own
    // port on this machine it asks the app, not nginx, and every
    // "confirmation through nginx" would confirm nothing.
    if let Some((host, port)) = url_host_port(&probe_url) {
        if let Some(p) = profiles.iter().find(|p| p.port == port) {
            if is_this_machine(&host) {
                return Err(bad(
                    "probe_url",
                    format!(
                        "{probe_url:?} is profile {}'s own port ({port}) on this machine, so it asks the app, not nginx; \
                         give nginx's address (as in http://127.0.0.1/profile)",
                        p.name
                    ),
                ));
            }
        }
    }
    Ok(probe_url)
}

/// The most any one wait may be, in seconds (`lock_timeout_secs`,
/// `app.stop_timeout_secs`, `health.timeout_secs`, `nginx.drain_timeout_secs`,
/// `nginx.fail_timeout_secs`): CodeDeploy ends a hook after 3600 s at most,
/// so a longer wait could never finish inside one.
pub(crate) const MAX_WAIT_SECS: u64 = 3600;
/// The most `nginx.confirm_timeout_secs` may be: nginx takes over a reload
/// in well under a second; ten minutes without it is a broken nginx.
pub(crate) const MAX_CONFIRM_SECS: u64 = 600;
/// The most one HTTP request may take (`probe_timeout_ms`,
/// `health.request_timeout_ms`): a minute, on loopback or to nginx.
pub(crate) const MAX_REQUEST_MS: u64 = 60_000;
/// The most `health.interval_ms` may be: a minute between attempts.
pub(crate) const MAX_INTERVAL_MS: u64 = 60_000;
/// The most `app.start_grace_ms` may be: five minutes of watching a new
/// process in `start` (`health` waits for it to answer after that).
pub(crate) const MAX_GRACE_MS: u64 = 300_000;

/// The host (lowercase, IPv6 without brackets) and port (80 when none) of an
/// `http://` URL; `None` when it has no readable authority.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse().ok()?,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Whether a URL's host is this machine: localhost, 127.0.0.0/8, ::1,
/// 0.0.0.0 / ::, or its own host name.
fn is_this_machine(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback()
            || ip.is_unspecified()
            || matches!(ip, std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback() || v4.is_unspecified()));
    }
    let own = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let own = own.trim().to_ascii_lowercase();
    !own.is_empty() && (host == own || own.split('.').next() == Some(host))
}

/// `value` when it is at most `max`; else the error naming key and bound.
fn at_most(key: &str, value: u64, max: u64) -> Checked<u64> {
    if value > max {
        Err(bad(
            key,
            format!("{value} is more than {max}, the most it may be"),
        ))
    } else {
        Ok(value)
    }
}

/// A positive number of something, at most `max`.
fn positive(key: &str, value: Option<u64>, default: u64, max: u64) -> Checked<u64> {
    match value.unwrap_or(default) {
        0 => Err(bad(key, "must be greater than 0")),
        v => at_most(key, v, max),
    }
}

fn ms(key: &str, value: Option<u64>, default: u64, max: u64) -> Checked<Duration> {
    positive(key, value, default, max).map(Duration::from_millis)
}

fn secs(key: &str, value: Option<u64>, default: u64, max: u64) -> Checked<Duration> {
    positive(key, value, default, max).map(Duration::from_secs)
}

/// Rejects `{name}` placeholders we would not substitute, so that a typo such
/// as `{prot}` fails at load time instead of reaching nginx or the app.
fn check_placeholders(key: &str, text: &str, allowed: &[&str]) -> Checked<()> {
    match crate::config::template::unknown_placeholder(text, allowed) {
        None => Ok(()),
        Some(name) => {
            let allowed: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
            Err(bad(
                key,
                format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    allowed.join(", ")
                ),
            ))
        }
    }
}

impl Config {
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The profile a name on the command line means, or a usage error listing
    /// the configured ones.
    pub(crate) fn profile_arg(&self, name: &str) -> Result<&Profile> {
        self.profile(name).ok_or_else(|| {
            let known: Vec<&str> = self.profiles.iter().map(|p| p.name.as_str()).collect();
            usage(format!(
                "unknown profile {name:?}; configured: {}",
                known.join(", ")
            ))
        })
    }

    /// The other profile of the pair.
    pub(crate) fn other(&self, profile: &Profile) -> &Profile {
        self.profiles
            .iter()
            .find(|p| p.name != profile.name)
            .unwrap_or(&self.profiles[0])
    }

    /// The include file's content for a profile.
    pub fn include_line(&self, profile: &Profile) -> String {
        let port = profile.port.to_string();
        let mut line = render(
            &self.nginx.template,
            &[("port", &port), ("profile", &profile.name)],
        );
        if !line.ends_with('\n') {
            line.push('\n');
        }
        line
    }

    /// The app's log file for a profile.
    pub fn log_path(&self, profile: &Profile) -> PathBuf {
        let rendered = render(&self.app.log, &[("profile", &profile.name)]);
        self.app.dir.join(rendered)
    }

    /// The body the health check expects from a profile.
    pub(crate) fn expected_health_body(&self, profile: &Profile) -> String {
        let port = profile.port.to_string();
        render(
            &self.health.expect,
            &[("profile", &profile.name), ("port", &port)],
        )
        .trim()
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config> {
        parse(text, Path::new("/cfg/nonstop.json"))
    }

    fn err_of(text: &str) -> String {
        let err = parse_str(text).unwrap_err();
        assert_eq!(crate::exit_code(&err), 2, "config errors exit 2: {err:#}");
        format!("{err:#}")
    }

    #[test]
    fn minimal_config_takes_the_books_defaults() {
        let c = parse_str(r#"{"app": {"dir": "/home/ec2-user/app/step3"}}"#).unwrap();
        assert_eq!(
            c.profiles[0],
            Profile {
                name: "real1".into(),
                port: 8081
            }
        );
        assert_eq!(
            c.profiles[1],
            Profile {
                name: "real2".into(),
                port: 8082
            }
        );
        assert_eq!(c.probe_url, "http://127.0.0.1/profile");
        assert_eq!(c.state_dir, Path::new("/home/ec2-user/app/step3/.nonstop"));
        assert_eq!(
            c.app.artifact_dir,
            Path::new("/home/ec2-user/app/step3/zip")
        );
        assert_eq!(c.app.artifact_pattern, "*.jar");
        assert_eq!(
            c.nginx.include,
            Path::new("/etc/nginx/conf.d/service-url.inc")
        );
        assert_eq!(c.health.expect, "{profile}");
        assert_eq!(c.health.interval, Duration::from_millis(100));
        assert_eq!(c.app.stop_timeout, Duration::from_secs(30));
        assert_eq!(
            c.log_path(&c.profiles[1]),
            Path::new("/home/ec2-user/app/step3/nohup-real2.out")
        );
        assert_eq!(
            c.include_line(&c.profiles[0]),
            "set $service_url http://127.0.0.1:8081;\n"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let msg = err_of(r#"{"app": {"dir": "/a", "comand": ["java"]}}"#);
        assert!(msg.contains("app.comand"), "{msg}");
        let msg = err_of(r#"{"app": {"dir": "/a"}, "heath": {}}"#);
        assert!(msg.contains("heath"), "{msg}");
        assert!(msg.contains("/cfg/nonstop.json"), "{msg}");
    }

    #[test]
    fn app_log_keep_defaults_to_5_and_is_bounded() {
        let keep = |v: &str| {
            parse_str(&format!(r#"{{"app": {{"dir": "/a"{v}}}}}"#)).map(|c| c.app.log_keep)
        };
        assert_eq!(keep("").unwrap(), 5);
        assert_eq!(keep(r#", "log_keep": 0"#).unwrap(), 0);
        let msg = err_of(r#"{"app": {"dir": "/a", "log_keep": 101}}"#);
        assert!(msg.contains("app.log_keep") && msg.contains("100"), "{msg}");
    }

    #[test]
    fn app_dir_is_required_and_absolute() {
        assert!(err_of(r#"{}"#).contains("app"));
        assert!(err_of(r#"{"app": {}}"#).contains("app.dir"));
        assert!(err_of(r#"{"app": {"dir": "app/step3"}}"#).contains("not an absolute path"));
    }

    #[test]
    fn profiles_must_differ_and_ports_be_in_range() {
        let two =
            |a: &str, b: &str| format!(r#"{{"app": {{"dir": "/a"}}, "profiles": [{a}, {b}]}}"#);
        let msg = err_of(&two(
            r#"{"name":"a","port":8081}"#,
            r#"{"name":"b","port":8081}"#,
        ));
        assert!(
            msg.contains("profiles[1].port") && msg.contains("both"),
            "{msg}"
        );
        let msg = err_of(&two(
            r#"{"name":"a","port":8081}"#,
            r#"{"name":"a","port":8082}"#,
        ));
        assert!(msg.contains("profiles[1].name"), "{msg}");
        let msg = err_of(&two(
            r#"{"name":"a","port":70000}"#,
            r#"{"name":"b","port":8082}"#,
        ));
        assert!(
            msg.contains("profiles[0].port") && msg.contains("70000"),
            "{msg}"
        );
        let msg = err_of(&two(
            r#"{"name":"a","port":0}"#,
            r#"{"name":"b","port":8082}"#,
        ));
        assert!(msg.contains("outside 1-65535"), "{msg}");
        let msg = err_of(&two(
            r#"{"name":"../x","port":1}"#,
            r#"{"name":"b","port":8082}"#,
        ));
        assert!(msg.contains("profiles[0].name"), "{msg}");
        let msg = err_of(r#"{"app": {"dir": "/a"}, "profiles": [{"name":"a","port":1}]}"#);
        assert!(msg.contains("exactly two"), "{msg}");
    }

    #[test]
    fn template_must_hold_the_port_and_no_unknown_placeholder() {
        let msg = err_of(r#"{"app": {"dir": "/a"}, "nginx": {"template": "set $service_url x;"}}"#);
        assert!(
            msg.contains("nginx.template") && msg.contains("{port}"),
            "{msg}"
        );
        let msg = err_of(r#"{"app": {"dir": "/a"}, "nginx": {"template": "{port} {prot}"}}"#);
        assert!(msg.contains("{prot}"), "{msg}");
        // nginx's own braces are not placeholders.
        let c = parse_str(r#"{"app": {"dir": "/a"}, "nginx": {"template": "upstream u { server 127.0.0.1:{port}; }"}}"#)
            .unwrap();
        assert_eq!(
            c.include_line(&c.profiles[1]),
            "upstream u { server 127.0.0.1:8082; }\n"
        );
    }

    #[test]
    fn health_warmup_is_opt_in_and_checked() {
        let c = parse_str(r#"{"app": {"dir": "/a"}}"#).unwrap();
        assert_eq!(c.health.warmup, None);
        let c = parse_str(
            r#"{"app": {"dir": "/a"}, "health": {"warmup": {"paths": ["/", "/api/items?page=1"], "requests": 40}}}"#,
        )
        .unwrap();
        assert_eq!(
            c.health.warmup,
            Some(Warmup {
                paths: vec!["/".into(), "/api/items?page=1".into()],
                requests: 40
            })
        );
        let c =
            parse_str(r#"{"app": {"dir": "/a"}, "health": {"warmup": {"paths": ["/"]}}}"#).unwrap();
        assert_eq!(c.health.warmup.map(|w| w.requests), Some(100));
        for bad in [
            r#"{"paths": []}"#,
            r#"{"paths": ["api"]}"#,
            r#"{"paths": ["/a b"]}"#,
            r#"{"paths": ["/"], "requests": 0}"#,
            r#"{"paths": ["/"], "requests": 10001}"#,
            r#"{"paths": ["/"], "count": 3}"#,
        ] {
            let msg = err_of(&format!(
                r#"{{"app": {{"dir": "/a"}}, "health": {{"warmup": {bad}}}}}"#
            ));
            assert!(msg.contains("warmup"), "{bad}: {msg}");
        }
    }

    #[test]
    fn commands_must_not_be_empty() {
        assert!(err_of(r#"{"app": {"dir": "/a", "command": []}}"#).contains("app.command"));
        assert!(err_of(r#"{"app": {"dir": "/a", "command": [""]}}"#).contains("app.command"));
        assert!(
            err_of(r#"{"app": {"dir": "/a"}, "nginx": {"reload": []}}"#).contains("nginx.reload")
        );
    }

    #[test]
    fn wildcards_only_in_the_artifact_file_name() {
        assert!(
            err_of(r#"{"app": {"dir": "/a", "artifact": "*/app.jar"}}"#).contains("app.artifact")
        );
        let c = parse_str(r#"{"app": {"dir": "/a", "artifact": "/drop/app-*.jar"}}"#).unwrap();
        assert_eq!(c.app.artifact_dir, Path::new("/drop"));
        assert_eq!(c.app.artifact_pattern, "app-*.jar");
    }

    #[test]
    fn zero_durations_and_bad_urls_are_refused() {
        assert!(
            err_of(r#"{"app": {"dir": "/a"}, "health": {"interval_ms": 0}}"#)
                .contains("health.interval_ms")
        );
        assert!(
            err_of(r#"{"app": {"dir": "/a"}, "probe_url": "localhost/profile"}"#)
                .contains("probe_url")
        );
        assert!(
            err_of(r#"{"app": {"dir": "/a"}, "health": {"path": "profile"}}"#)
                .contains("health.path")
        );
        assert!(
            err_of(r#"{"app": {"dir": "/a"}, "health": {"expect": " "}}"#)
                .contains("health.expect")
        );
        assert!(err_of("{not json").contains("/cfg/nonstop.json"));
    }

    /// Every number has an upper bound: one over it is an exit-2 error
    /// naming the key and the bound; the bound itself is accepted.
    #[test]
    fn numbers_over_their_upper_bound_are_refused_naming_key_and_bound() {
        let cases: [(&str, &str, u64); 9] = [
            ("", "probe_timeout_ms", MAX_REQUEST_MS),
            ("", "lock_timeout_secs", MAX_WAIT_SECS),
            ("app", "stop_timeout_secs", MAX_WAIT_SECS),
            ("app", "start_grace_ms", MAX_GRACE_MS),
            ("health", "interval_ms", MAX_INTERVAL_MS),
            ("health", "timeout_secs", MAX_WAIT_SECS),
            ("health", "request_timeout_ms", MAX_REQUEST_MS),
            ("nginx", "confirm_timeout_secs", MAX_CONFIRM_SECS),
            ("nginx", "drain_timeout_secs", MAX_WAIT_SECS),
        ];
        let with = |section: &str, key: &str, value: u64| match section {
            "" => format!(r#"{{"app": {{"dir": "/a"}}, "{key}": {value}}}"#),
            "app" => format!(r#"{{"app": {{"dir": "/a", "{key}": {value}}}}}"#),
            _ => format!(r#"{{"app": {{"dir": "/a"}}, "{section}": {{"{key}": {value}}}}}"#),
        };
        for (section, key, max) in cases {
            let name = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            let msg = err_of(&with(section, key, max + 1));
            assert!(
                msg.contains(&format!("`{name}`")) && msg.contains(&max.to_string()),
                "{name}: {msg}"
            );
            assert!(
                parse_str(&with(section, key, max)).is_ok(),
                "{name} = {max}"
            );
        }
        // Far out of range too, not only just over (no overflow anywhere).
        let msg = err_of(&with("health", "timeout_secs", u64::MAX));
        assert!(msg.contains("health.timeout_secs"), "{msg}");
        let msg = err_of(&with("nginx", "fail_timeout_secs", MAX_WAIT_SECS + 1));
        assert!(
            msg.contains("nginx.fail_timeout_secs") && msg.contains("3600"),
            "{msg}"
        );
        // 0 is a real choice for these two.
        assert!(parse_str(&with("nginx", "fail_timeout_secs", 0)).is_ok());
        assert!(parse_str(&with("app", "start_grace_ms", 0)).is_ok());
    }

    #[test]
    fn a_probe_at_a_profiles_own_port_on_this_machine_is_refused() {
        for url in [
            "http://127.0.0.1:8081/profile",
            "http://localhost:8082",
            "http://127.3.4.5:8081/x",
            "http://[::1]:8082/profile",
            "http://0.0.0.0:8081/",
            "http://LOCALHOST:8081/",
        ] {
            let e = err_of(&format!(
                r#"{{"app": {{"dir": "/a"}}, "probe_url": "{url}"}}"#
            ));
            assert!(
                e.contains("probe_url") && e.contains("own port"),
                "{url}: {e}"
            );
        }
        let own = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        if !own.trim().is_empty() {
            let e = err_of(&format!(
                r#"{{"app": {{"dir": "/a"}}, "probe_url": "http://{}:8081/"}}"#,
                own.trim()
            ));
            assert!(e.contains("probe_url"), "{e}");
        }
        // nginx's own port, or another host's 8081, is what a probe should ask.
        for url in [
            "http://127.0.0.1/profile",
            "http://127.0.0.1:8080/profile",
            "http://nginx-host.invalid:8081/profile",
        ] {
            assert!(
                parse_str(&format!(
                    r#"{{"app": {{"dir": "/a"}}, "probe_url": "{url}"}}"#
                ))
                .is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn a_key_error_names_its_key_once() {
        assert_eq!(
            bad("app.log", "empty path").to_string(),
            "key `app.log`: empty path"
        );
        assert_eq!(
            missing("app.dir", "the absolute directory").to_string(),
            "key `app.dir` is missing: the absolute directory"
        );
        assert_eq!(
            missing("app", "(at least `app.dir` is required)").to_string(),
            "key `app` is missing (at least `app.dir` is required)"
        );
    }

    #[test]
    fn one_of_lists_the_choices() {
        let choices = [("stop", RetireBusy::Stop), ("fail", RetireBusy::Fail)];
        assert_eq!(one_of("k", "fail", &choices), Ok(RetireBusy::Fail));
        assert_eq!(
            one_of("k", "wait", &choices).map_err(|e| e.to_string()),
            Err(r#"key `k`: "wait" is not one of "stop", "fail""#.to_string())
        );
    }

    #[test]
    fn each_section_converts_on_its_own() {
        assert_eq!(profiles(None).map(|p| p.len()), Ok(2));
        let h = health(RawHealth::default()).unwrap();
        assert_eq!((h.path.as_str(), h.rule), ("/profile", HealthMatch::Exact));
        assert_eq!(
            warmup(RawWarmup {
                paths: vec!["/".into()],
                requests: Some(10_001)
            })
            .map_err(|e| e.to_string()),
            Err("key `health.warmup.requests`: 10001 is not between 1 and 10000".into())
        );
        let two = profiles(None).unwrap();
        let n = nginx(RawNginx::default(), &two, Path::new("/a")).unwrap();
        assert_eq!((n.mode, n.routing), ("include", Routing::Include));
        assert_eq!(n.pid_file, Some(PathBuf::from("/run/nginx.pid")));
        assert_eq!(
            probe_url(Some("http://localhost:8082/".into()), &two)
                .map_err(|e| matches!(e, KeyError::Bad { key, .. } if key == "probe_url")),
            Err(true)
        );
        assert_eq!(
            artifact(Path::new("/a"), "zip/app-*.jar"),
            Ok((PathBuf::from("/a/zip"), "app-*.jar".to_string()))
        );
    }

    /// The include's (or link's) temp file must fit NAME_MAX and PATH_MAX:
    /// refused at load time naming the key and the longest name that fits.
    #[test]
    fn paths_whose_files_or_temp_files_cannot_be_made_are_refused() {
        use crate::sys::files::{NAME_MAX, TEMP_EXTRA};
        let with_include = |name: &str| {
            format!(r#"{{"app": {{"dir": "/a"}}, "nginx": {{"include": "/etc/nginx/{name}"}}}}"#)
        };
        let fits = "i".repeat(NAME_MAX - TEMP_EXTRA);
        assert!(parse_str(&with_include(&fits)).is_ok());
        let msg = err_of(&with_include(&format!("{fits}i")));
        assert!(
            msg.contains("nginx.include")
                && msg.contains(&format!("at most {} bytes", NAME_MAX - TEMP_EXTRA)),
            "{msg}"
        );
        // Symlink mode's link, the same way.
        let link = |name: &str| {
            format!(
                r#"{{"app": {{"dir": "/a"}}, "nginx": {{"mode": "symlink", "link": "/e/{name}",
                    "sites": {{"real1": "/s/blue", "real2": "/s/green"}}}}}}"#
            )
        };
        assert!(parse_str(&link(&fits)).is_ok());
        assert!(err_of(&link(&format!("{fits}i"))).contains("nginx.link"));
        // Any path over PATH_MAX.
        let deep = (0..42)
            .map(|_| "d".repeat(99))
            .collect::<Vec<_>>()
            .join("/");
        let msg = err_of(&format!(r#"{{"app": {{"dir": "/{deep}"}}}}"#));
        assert!(msg.contains("4095"), "{msg}");
        let msg = err_of(&format!(
            r#"{{"app": {{"dir": "/a"}}, "nginx": {{"pid_file": "/{deep}/nginx.pid"}}}}"#
        ));
        assert!(msg.contains("nginx.pid_file"), "{msg}");
        // state_dir: its own files' temp names must fit under it.
        let near = "/".to_string()
            + &(0..39)
                .map(|_| "d".repeat(99))
                .collect::<Vec<_>>()
                .join("/");
        let msg = err_of(&format!(
            r#"{{"app": {{"dir": "/a"}}, "state_dir": "{near}/{}"}}"#,
            "s".repeat(4095 - near.len() - 1 - 20)
        ));
        assert!(
            msg.contains("state_dir") && msg.contains("launched-PROFILE.json"),
            "{msg}"
        );
        // The upstream pair writes no include: its (default) path is not judged.
        assert!(parse_str(&format!(
            r#"{{"app": {{"dir": "/a"}}, "nginx": {{"mode": "upstream-pair", "include": "/e/{fits}ii"}}}}"#
        ))
        .is_ok());
    }

    /// `longest_state_name` really is the longest name in the state dir.
    #[test]
    fn no_state_file_has_a_longer_name_than_the_bound() {
        let c = parse_str(
            r#"{"app": {"dir": "/a"}, "profiles": [{"name": "a", "port": 1}, {"name": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "port": 2}]}"#,
        )
        .unwrap();
        let state = crate::state::StateDir::read_only(&c.state_dir);
        let longest = longest_state_name(&c.profiles);
        let mut paths = vec![
            state.lock_path(),
            state.plan_path(),
            state.switched_path(),
            state.history_path(),
            state.journal_path(),
            state.include_backup_path(),
            state.owner_path(),
            state.taken_over_path(),
        ];
        paths.extend(c.profiles.iter().map(|p| state.launched_path(&p.name)));
        for p in paths {
            let name = p.file_name().unwrap().len();
            // Rotated history (`.1`) and a corrupt file set aside
            // (`.corrupt-` and 13 digits of milliseconds) are renames.
            assert!(
                name + ".corrupt-".len() + 13 <= longest + crate::sys::files::TEMP_EXTRA,
                "{p:?}"
            );
            assert!(name <= longest, "{p:?}");
        }
    }

    #[test]
    fn retire_busy_is_stop_or_fail() {
        let c = parse_str(r#"{"app": {"dir": "/a"}}"#).unwrap();
        assert_eq!(c.app.retire_busy, RetireBusy::Stop);
        let c = parse_str(r#"{"app": {"dir": "/a", "retire_busy": "fail"}}"#).unwrap();
        assert_eq!(c.app.retire_busy, RetireBusy::Fail);
        assert!(
            err_of(r#"{"app": {"dir": "/a", "retire_busy": "wait"}}"#).contains("app.retire_busy")
        );
    }
}
