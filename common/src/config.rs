//! The one JSON config file: where it is found, what it may say, and the
//! checks that turn it into a [`Config`] before any stage touches anything.
//!
//! Defaults follow the book (real1 on 8081, real2 on 8082, the probe through
//! nginx at /profile, the include file `service-url.inc`). An unknown key is
//! an error, because a typo that silently falls back to a default is how a
//! deployment ends up pointing nginx at the wrong port.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::error::usage;
// Re-exported: the stages have always found them here.
pub use crate::template::{render, wildcard_match};

/// The file name looked for beside the executable and in its parent directory.
pub const FILE_NAME: &str = "nonstop.json";

/// The most old app logs `start` keeps (`app.log_keep`): rotation renames
/// each of them at every start.
pub const MAX_LOG_KEEP: u32 = 100;

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
pub const MAX_WARMUP_REQUESTS: u64 = 10_000;
/// The most the whole warm-up may take: it delays the switch, and the hook
/// budget counts it.
pub const MAX_WARMUP: Duration = Duration::from_secs(10);

/// How nginx is told which profile to route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The book's: an include file holding one line per the template.
    Include,
    /// One site file per profile and a symlink to the live one (the
    /// sites-enabled/sites-available layout). `sites` is in profile order.
    Symlink { link: PathBuf, sites: Vec<PathBuf> },
    /// nginx's upstream lists both ports and is never edited: the new app is
    /// started beside the old one, checked on its port, and the old one retired.
    UpstreamPair,
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
    pub mode: Mode,
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
    services: std::collections::BTreeMap<String, String>,
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
    sites: Option<std::collections::BTreeMap<String, String>>,
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
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
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

/// Reads, parses and validates a config file, and checks its waits against
/// the hook timeouts of the appspec.yml shipped with it
/// ([`crate::budget`]). Every failure is a [`usage`] error (exit 2) that
/// names the file and the key.
pub fn load(path: &Path) -> Result<Config> {
    let text = fs::read_to_string(path)
        .map_err(|e| usage(format!("config file {}: {e}", path.display())))?;
    let config = parse(&text, path)?;
    crate::budget::check_beside(&config).map_err(usage)?;
    Ok(config)
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
    validate(raw, source).map_err(|msg| usage(format!("config file {src}: {msg}")))
}

fn validate(raw: RawConfig, source: &Path) -> Result<Config, String> {
    let profiles = match raw.profiles {
        None => vec![
            Profile {
                name: "real1".into(),
                port: 8081,
            },
            Profile {
                name: "real2".into(),
                port: 8082,
            },
        ],
        Some(list) => validate_profiles(list)?,
    };

    let app = raw
        .app
        .ok_or("key `app` is missing (at least `app.dir` is required)")?;
    let dir = app
        .dir
        .ok_or("key `app.dir` is missing: the absolute directory the app is deployed to")?;
    let dir = PathBuf::from(dir);
    if !dir.is_absolute() {
        return Err(format!(
            "key `app.dir`: {:?} is not an absolute path; every other relative path is resolved against it",
            dir.display().to_string()
        ));
    }
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };

    let artifact = app.artifact.unwrap_or_else(|| "zip/*.jar".into());
    let artifact_path = resolve(&artifact);
    let artifact_pattern = artifact_path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("key `app.artifact`: {artifact:?} names no file pattern"))?
        .to_string();
    let artifact_dir = artifact_path
        .parent()
        .ok_or_else(|| format!("key `app.artifact`: {artifact:?} has no directory"))?
        .to_path_buf();
    if artifact_dir.to_string_lossy().contains(['*', '?', '[']) {
        return Err(format!(
            "key `app.artifact`: {artifact:?}: wildcards are only allowed in the file name, not in directories"
        ));
    }

    let command = app.command.unwrap_or_else(|| {
        [
            "java",
            "-Dspring.profiles.active={profile}",
            "-jar",
            "{artifact}",
        ]
        .map(String::from)
        .to_vec()
    });
    if command.first().is_none_or(|c| c.trim().is_empty()) {
        return Err("key `app.command`: the command is empty; give an argv such as [\"java\", \"-jar\", \"{artifact}\"]".into());
    }
    check_placeholders(
        "app.command",
        &command.join(" "),
        &["profile", "port", "artifact"],
    )?;

    let backend = match app.backend.as_deref().unwrap_or("process") {
        "process" => {
            if app.compose.is_some() {
                return Err("key `app.compose`: only used with \"backend\": \"compose\"".into());
            }
            Backend::Process
        }
        "compose" => {
            let raw = app.compose.as_ref().ok_or(
                "key `app.compose` is missing: {\"file\": ..., \"project\": ..., \"services\": {\"PROFILE\": \"SERVICE\"}}",
            )?;
            let plain = |s: &str| {
                !s.is_empty()
                    && s.len() <= 63
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && !s.starts_with(['-', '.'])
            };
            if !plain(&raw.project)
                || raw
                    .project
                    .chars()
                    .any(|c| c.is_ascii_uppercase() || c == '.')
            {
                return Err(format!(
                    "key `app.compose.project`: {:?} must be lowercase letters, digits, '-' or '_' (what Compose labels its containers with)",
                    raw.project
                ));
            }
            if let Some(unknown) = raw
                .services
                .keys()
                .find(|k| !profiles.iter().any(|p| &p.name == *k))
            {
                return Err(format!(
                    "key `app.compose.services.{unknown}`: not a configured profile"
                ));
            }
            let mut services = Vec::new();
            for p in &profiles {
                let s = raw.services.get(&p.name).ok_or_else(|| {
                    format!(
                        "key `app.compose.services`: no service for profile {}",
                        p.name
                    )
                })?;
                if !plain(s) {
                    return Err(format!(
                        "key `app.compose.services.{}`: {s:?} is not a Compose service name",
                        p.name
                    ));
                }
                services.push(s.clone());
            }
            if services[0] == services[1] {
                return Err(
                    "key `app.compose.services`: both profiles name the same service".into(),
                );
            }
            if let Some(c) = &raw.command {
                if c.first().is_none_or(|c| c.trim().is_empty()) {
                    return Err("key `app.compose.command`: the command is empty".into());
                }
            }
            let docker = raw.docker.clone().unwrap_or_else(|| "docker".into());
            if docker.trim().is_empty() {
                return Err("key `app.compose.docker`: empty".into());
            }
            Backend::Compose(Compose {
                file: resolve(&raw.file),
                project: raw.project.clone(),
                services,
                command: raw.command.clone(),
                docker,
                pull: raw.pull.unwrap_or(false),
            })
        }
        other => {
            return Err(format!(
                "key `app.backend`: {other:?} is not one of \"process\", \"compose\""
            ))
        }
    };

    let retire_busy = match app.retire_busy.as_deref().unwrap_or("stop") {
        "stop" => RetireBusy::Stop,
        "fail" => RetireBusy::Fail,
        other => {
            return Err(format!(
                "key `app.retire_busy`: {other:?} is not one of \"stop\", \"fail\""
            ))
        }
    };

    let log = app.log.unwrap_or_else(|| "nohup-{profile}.out".into());
    if log.trim().is_empty() {
        return Err("key `app.log`: empty path".into());
    }
    check_placeholders("app.log", &log, &["profile"])?;
    let log_keep = app.log_keep.unwrap_or(5);
    if log_keep > MAX_LOG_KEEP {
        return Err(too_big(
            "app.log_keep",
            u64::from(log_keep),
            u64::from(MAX_LOG_KEEP),
        ));
    }

    let health = raw.health;
    let health_path = health.path.unwrap_or_else(|| "/profile".into());
    if !health_path.starts_with('/') || health_path.contains(char::is_whitespace) {
        return Err(format!(
            "key `health.path`: {health_path:?} must start with '/' and contain no spaces"
        ));
    }
    let rule = match health.rule.as_deref().unwrap_or("exact") {
        "exact" => HealthMatch::Exact,
        "contains" => HealthMatch::Contains,
        "actuator" => HealthMatch::Actuator,
        "any-2xx" => HealthMatch::AnySuccess,
        other => {
            return Err(format!(
                "key `health.match`: {other:?} is not one of \"exact\", \"contains\", \"actuator\", \"any-2xx\""
            ))
        }
    };
    let expect = health.expect.unwrap_or_else(|| "{profile}".into());
    if expect.trim().is_empty() && matches!(rule, HealthMatch::Exact | HealthMatch::Contains) {
        return Err("key `health.expect`: empty; an empty answer must not count as healthy".into());
    }
    check_placeholders("health.expect", &expect, &["profile", "port"])?;
    let warmup = match health.warmup {
        None => None,
        Some(w) => {
            if w.paths.is_empty() {
                return Err(
                    "key `health.warmup.paths`: empty; name at least one path such as \"/\"".into(),
                );
            }
            for path in &w.paths {
                if !path.starts_with('/')
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!(
                        "key `health.warmup.paths`: {path:?} must start with '/' and contain no spaces"
                    ));
                }
            }
            let requests = w.requests.unwrap_or(100);
            if requests == 0 || requests > MAX_WARMUP_REQUESTS {
                return Err(format!(
                    "key `health.warmup.requests`: {requests} is not between 1 and {MAX_WARMUP_REQUESTS}"
                ));
            }
            Some(Warmup {
                paths: w.paths,
                requests: u32::try_from(requests).unwrap_or(u32::MAX),
            })
        }
    };

    let nginx = raw.nginx;
    let template = nginx
        .template
        .unwrap_or_else(|| "set $service_url http://127.0.0.1:{port};".into());
    if !template.contains("{port}") {
        return Err(format!(
            "key `nginx.template`: {template:?} does not contain {{port}}"
        ));
    }
    check_placeholders("nginx.template", &template, &["port", "profile"])?;
    let test = nginx
        .test
        .unwrap_or_else(|| vec!["nginx".into(), "-t".into()]);
    let reload = nginx
        .reload
        .unwrap_or_else(|| ["nginx", "-s", "reload"].map(String::from).to_vec());
    for (key, argv) in [("nginx.test", &test), ("nginx.reload", &reload)] {
        if argv.first().is_none_or(|c| c.trim().is_empty()) {
            return Err(format!("key `{key}`: the command is empty"));
        }
    }

    let probe_url = raw
        .probe_url
        .unwrap_or_else(|| "http://127.0.0.1/profile".into());
    if !probe_url.starts_with("http://") || probe_url.contains(char::is_whitespace) {
        return Err(format!(
            "key `probe_url`: {probe_url:?} must be an http:// URL (nginx on this host, as in http://127.0.0.1/profile)"
        ));
    }
    // The probe is the witness of what nginx does: aimed at a profile's own
    // port on this machine it asks the app, not nginx, and every
    // "confirmation through nginx" would confirm nothing.
    if let Some((host, port)) = url_host_port(&probe_url) {
        if let Some(p) = profiles.iter().find(|p| p.port == port) {
            if is_this_machine(&host) {
                return Err(format!(
                    "key `probe_url`: {probe_url:?} is profile {}'s own port ({port}) on this machine, so it asks the app, not nginx; \
                     give nginx's address (as in http://127.0.0.1/profile)",
                    p.name
                ));
            }
        }
    }

    let absolute = |key: &str, p: &str| -> Result<PathBuf, String> {
        let path = PathBuf::from(p);
        if path.is_absolute() && path.file_name().is_some() {
            Ok(path)
        } else {
            Err(format!(
                "key `{key}`: {p:?} must be an absolute path to a file"
            ))
        }
    };
    let mode = match nginx.mode.as_deref().unwrap_or("include") {
        "include" => Mode::Include,
        "symlink" => {
            let link = nginx
                .link
                .as_deref()
                .ok_or("key `nginx.link` is missing: the symlink nginx includes (say /etc/nginx/sites-enabled/default)")?;
            let link = absolute("nginx.link", link)?;
            let sites = nginx.sites.clone().ok_or(
                "key `nginx.sites` is missing: the site file of each profile, as {\"PROFILE\": \"/etc/nginx/sites-available/FILE\"}",
            )?;
            if let Some(unknown) = sites
                .keys()
                .find(|k| !profiles.iter().any(|p| &p.name == *k))
            {
                return Err(format!(
                    "key `nginx.sites.{unknown}`: not a configured profile"
                ));
            }
            let mut paths = Vec::new();
            for p in &profiles {
                let site = sites.get(&p.name).ok_or_else(|| {
                    format!("key `nginx.sites`: no site file for profile {}", p.name)
                })?;
                paths.push(absolute(&format!("nginx.sites.{}", p.name), site)?);
            }
            if paths[0] == paths[1] {
                return Err("key `nginx.sites`: both profiles name the same site file".into());
            }
            if paths.contains(&link) {
                return Err("key `nginx.link`: it is one of the site files; it must be the symlink that points at one".into());
            }
            Mode::Symlink { link, sites: paths }
        }
        "upstream-pair" => Mode::UpstreamPair,
        other => {
            return Err(format!(
            "key `nginx.mode`: {other:?} is not one of \"include\", \"symlink\", \"upstream-pair\""
        ))
        }
    };
    if !matches!(mode, Mode::Symlink { .. }) {
        if nginx.link.is_some() {
            return Err("key `nginx.link`: only used with \"mode\": \"symlink\"".into());
        }
        if nginx.sites.is_some() {
            return Err("key `nginx.sites`: only used with \"mode\": \"symlink\"".into());
        }
    }
    let ssh = match nginx.ssh {
        None => None,
        Some(raw) => {
            if mode == Mode::UpstreamPair {
                return Err(
                    "key `nginx.ssh`: upstream-pair mode never touches nginx, so it needs no ssh"
                        .into(),
                );
            }
            let destination = raw.destination.trim().to_string();
            if destination.is_empty()
                || destination.starts_with('-')
                || destination.contains(char::is_whitespace)
            {
                return Err(format!(
                    "key `nginx.ssh.destination`: {:?} must be a host or user@host (no spaces, not starting with '-')",
                    raw.destination
                ));
            }
            let port = match raw.port {
                None => None,
                Some(p) => Some(
                    u16::try_from(p)
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or_else(|| format!("key `nginx.ssh.port`: {p} is outside 1-65535"))?,
                ),
            };
            let identity = raw.identity.as_deref().map(resolve);
            if let Some(bad) = raw.options.iter().find(|o| o.trim().is_empty()) {
                return Err(format!("key `nginx.ssh.options`: {bad:?} is empty"));
            }
            Some(Ssh {
                destination,
                port,
                identity,
                options: raw.options,
            })
        }
    };
    if ssh.is_some() {
        let include = nginx
            .include
            .as_deref()
            .unwrap_or("/etc/nginx/conf.d/service-url.inc");
        if mode == Mode::Include && !Path::new(include).is_absolute() {
            return Err(format!(
                "key `nginx.include`: {include:?} is on the nginx host, so it must be an absolute path"
            ));
        }
    }

    let pid_file = match nginx.pid_file.as_deref().unwrap_or("/run/nginx.pid") {
        "" => None,
        p => Some(resolve(p)),
    };
    let state_dir = resolve(raw.state_dir.as_deref().unwrap_or(".nonstop"));
    let include = resolve(
        nginx
            .include
            .as_deref()
            .unwrap_or("/etc/nginx/conf.d/service-url.inc"),
    );
    if include.file_name().is_none() {
        return Err(format!(
            "key `nginx.include`: {:?} names no file",
            include.display().to_string()
        ));
    }

    Ok(Config {
        source: source.to_path_buf(),
        profiles,
        probe_url,
        probe_timeout: ms(
            "probe_timeout_ms",
            raw.probe_timeout_ms,
            2000,
            MAX_REQUEST_MS,
        )?,
        state_dir,
        lock_timeout: secs(
            "lock_timeout_secs",
            raw.lock_timeout_secs,
            60,
            MAX_WAIT_SECS,
        )?,
        app: App {
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
            start_grace: match app.start_grace_ms.unwrap_or(1000) {
                // 0 is allowed: `start` then leaves the early-exit watch to `health`.
                v if v > MAX_GRACE_MS => {
                    return Err(too_big("app.start_grace_ms", v, MAX_GRACE_MS))
                }
                v => Duration::from_millis(v),
            },
            retire: app.retire.unwrap_or(false) || mode == Mode::UpstreamPair,
            retire_busy,
            dir,
        },
        health: Health {
            path: health_path,
            rule,
            expect,
            interval: ms(
                "health.interval_ms",
                health.interval_ms,
                100,
                MAX_INTERVAL_MS,
            )?,
            timeout: secs(
                "health.timeout_secs",
                health.timeout_secs,
                60,
                MAX_WAIT_SECS,
            )?,
            request_timeout: ms(
                "health.request_timeout_ms",
                health.request_timeout_ms,
                1000,
                MAX_REQUEST_MS,
            )?,
            warmup,
        },
        nginx: Nginx {
            mode,
            ssh,
            include,
            template,
            test,
            reload,
            pid_file,
            confirm_timeout: secs(
                "nginx.confirm_timeout_secs",
                nginx.confirm_timeout_secs,
                10,
                MAX_CONFIRM_SECS,
            )?,
            drain_timeout: secs(
                "nginx.drain_timeout_secs",
                nginx.drain_timeout_secs,
                60,
                MAX_WAIT_SECS,
            )?,
            fail_timeout: match nginx.fail_timeout_secs.unwrap_or(10) {
                // 0 is allowed: the servers have max_fails=0.
                v if v > MAX_WAIT_SECS => {
                    return Err(too_big("nginx.fail_timeout_secs", v, MAX_WAIT_SECS))
                }
                v => Duration::from_secs(v),
            },
        },
    })
}

fn validate_profiles(list: Vec<RawProfile>) -> Result<Vec<Profile>, String> {
    if list.len() != 2 {
        return Err(format!(
            "key `profiles`: blue-green needs exactly two profiles, found {}",
            list.len()
        ));
    }
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    let mut out = Vec::new();
    for (i, p) in list.into_iter().enumerate() {
        let valid_name = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name != "."
            && p.name != ".."
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            return Err(format!(
                "key `profiles[{i}].name`: {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                p.name
            ));
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("key `profiles[{i}].port`: {} is outside 1-65535", p.port))?;
        if !names.insert(p.name.clone()) {
            return Err(format!(
                "key `profiles[{i}].name`: {:?} is used by both profiles",
                p.name
            ));
        }
        if !ports.insert(port) {
            return Err(format!(
                "key `profiles[{i}].port`: {port} is used by both profiles"
            ));
        }
        out.push(Profile { name: p.name, port });
    }
    Ok(out)
}

/// The most any one wait may be, in seconds (`lock_timeout_secs`,
/// `app.stop_timeout_secs`, `health.timeout_secs`, `nginx.drain_timeout_secs`,
/// `nginx.fail_timeout_secs`): CodeDeploy ends a hook after 3600 s at most,
/// so a longer wait could never finish inside one.
pub const MAX_WAIT_SECS: u64 = 3600;
/// The most `nginx.confirm_timeout_secs` may be: nginx takes over a reload
/// in well under a second; ten minutes without it is a broken nginx.
pub const MAX_CONFIRM_SECS: u64 = 600;
/// The most one HTTP request may take (`probe_timeout_ms`,
/// `health.request_timeout_ms`): a minute, on loopback or to nginx.
pub const MAX_REQUEST_MS: u64 = 60_000;
/// The most `health.interval_ms` may be: a minute between attempts.
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// The most `app.start_grace_ms` may be: five minutes of watching a new
/// process in `start` (`health` waits for it to answer after that).
pub const MAX_GRACE_MS: u64 = 300_000;

/// The error for a number over its upper bound, naming key and bound.
fn too_big(key: &str, value: u64, max: u64) -> String {
    format!("key `{key}`: {value} is more than {max}, the most it may be")
}

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

fn ms(key: &str, value: Option<u64>, default: u64, max: u64) -> Result<Duration, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("key `{key}`: must be greater than 0")),
        v if v > max => Err(too_big(key, v, max)),
        v => Ok(Duration::from_millis(v)),
    }
}

fn secs(key: &str, value: Option<u64>, default: u64, max: u64) -> Result<Duration, String> {
    match value.unwrap_or(default) {
        0 => Err(format!("key `{key}`: must be greater than 0")),
        v if v > max => Err(too_big(key, v, max)),
        v => Ok(Duration::from_secs(v)),
    }
}

/// Rejects `{name}` placeholders we would not substitute, so that a typo such
/// as `{prot}` fails at load time instead of reaching nginx or the app.
fn check_placeholders(key: &str, text: &str, allowed: &[&str]) -> Result<(), String> {
    match crate::template::unknown_placeholder(text, allowed) {
        None => Ok(()),
        Some(name) => {
            let allowed: Vec<String> = allowed.iter().map(|a| format!("{{{a}}}")).collect();
            Err(format!(
                "key `{key}`: unknown placeholder {{{name}}} (known: {})",
                allowed.join(", ")
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
    pub fn profile_arg(&self, name: &str) -> Result<&Profile> {
        self.profile(name).ok_or_else(|| {
            let known: Vec<&str> = self.profiles.iter().map(|p| p.name.as_str()).collect();
            usage(format!(
                "unknown profile {name:?}; configured: {}",
                known.join(", ")
            ))
        })
    }

    /// The other profile of the pair.
    pub fn other(&self, profile: &Profile) -> &Profile {
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
    pub fn expected_health_body(&self, profile: &Profile) -> String {
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
