//! The hook budget: the longest each stage can wait with a config, checked
//! against the `timeout:` of its hook in the appspec.yml shipped beside the
//! config, so that CodeDeploy never kills a hook half-way through a wait the
//! config allows (say `health` retiring the old app past ValidateService's
//! 180 s).
//!
//! A stage's budget is the sum of every bounded wait on its longest path,
//! read off the stages' code: each configured wait in full (the lock, the
//! health timeout, the confirmation, the drain, the stop...), nonstop's own
//! fixed waits (5 s for a SIGKILLed process to go, the upstream pair's
//! 30 s confirmation floor), one request's timeout where a last attempt may
//! begin just before its deadline, and [`COMMAND`] for each external command
//! on that path (`nginx -t`, the reload, an ssh round trip, a docker call).
//! Those commands normally return in well under a second; their hard limits
//! (30 s) are there for a hung one, which fails the stage anyway, so they
//! are not what a working deployment waits for.
//!
//! The appspec is read by a small hand-written reader of its `hooks:`
//! section (`- location:` and `timeout:` of each script), not a YAML
//! library: that is all nonstop needs from it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Backend, Config, Mode};

/// The file name of CodeDeploy's application spec.
pub const APPSPEC: &str = "appspec.yml";

/// What one external command on a stage's path is counted for; see the
/// module's doc.
pub const COMMAND: Duration = Duration::from_secs(2);

/// `stop`'s wait for a SIGKILLed process to go (and for the port to be free
/// after `docker compose stop`).
const KILL_WAIT: Duration = Duration::from_secs(5);

/// `switch`'s floor for nginx to send the new app a request in
/// upstream-pair mode, and the second nginx's clock adds to fail_timeout.
const PAIR_CONFIRM_MIN: Duration = Duration::from_secs(30);
const PAIR_CLOCK: Duration = Duration::from_millis(1200);

/// CodeDeploy's default and largest hook timeout.
pub const CODEDEPLOY_MAX_TIMEOUT: u64 = 3600;

/// One bounded wait on a stage's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub what: String,
    /// The config key that sets it; `None` for nonstop's own.
    pub key: Option<&'static str>,
    pub time: Duration,
}

/// The waits of one stage with a config, on its longest path.
#[derive(Debug, Clone)]
pub struct Budget {
    pub stage: String,
    pub waits: Vec<Wait>,
}

impl Budget {
    pub fn total(&self) -> Duration {
        self.waits.iter().map(|w| w.time).sum()
    }

    /// The total in whole seconds, rounded up: what a hook timeout must reach.
    pub fn total_secs(&self) -> u64 {
        let t = self.total();
        t.as_secs() + u64::from(t.subsec_nanos() > 0)
    }

    /// "lock_timeout_secs 60 s + health.timeout_secs 60 s + ... + nonstop's
    /// own steps 12.2 s".
    pub fn breakdown(&self) -> String {
        // Per key, in the order they come: (key, one wait, how many).
        let mut per_key: Vec<(&str, Duration, u32)> = Vec::new();
        let mut own = Duration::ZERO;
        for w in &self.waits {
            match w.key {
                Some(key) => match per_key.iter_mut().find(|(k, _, _)| *k == key) {
                    Some(entry) => entry.2 += 1,
                    None => per_key.push((key, w.time, 1)),
                },
                None => own += w.time,
            }
        }
        let mut parts: Vec<String> = per_key
            .into_iter()
            .map(|(key, time, n)| match n {
                1 => format!("{key} {}", show(time)),
                n => format!("{n} × {key} {}", show(time)),
            })
            .collect();
        if !own.is_zero() {
            parts.push(format!("nonstop's own steps and commands {}", show(own)));
        }
        parts.join(" + ")
    }

    /// The config keys of the waits, longest first, each once.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut waits: Vec<&Wait> = self.waits.iter().filter(|w| w.key.is_some()).collect();
        waits.sort_by_key(|w| std::cmp::Reverse(w.time));
        let mut keys: Vec<&'static str> = Vec::new();
        for key in waits.into_iter().filter_map(|w| w.key) {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Collects a stage's waits, read off the config once.
struct Steps<'a> {
    config: &'a Config,
    /// 1 when nginx is on another host (each file access is a command).
    remote: u32,
    compose: bool,
    pair: bool,
    waits: Vec<Wait>,
}

impl<'a> Steps<'a> {
    fn new(config: &'a Config) -> Self {
        Steps {
            config,
            remote: u32::from(config.nginx.ssh.is_some()),
            compose: matches!(config.app.backend, Backend::Compose(_)),
            pair: config.nginx.mode == Mode::UpstreamPair,
            waits: Vec::new(),
        }
    }

    fn wait(&mut self, what: &str, key: Option<&'static str>, time: Duration) {
        if !time.is_zero() {
            self.waits.push(Wait {
                what: what.to_string(),
                key,
                time,
            });
        }
    }

    fn commands(&mut self, what: &str, n: u32) {
        self.wait(
            &format!("{what} ({n} command{})", if n == 1 { "" } else { "s" }),
            None,
            COMMAND * n,
        );
    }

    /// Detection: the probe through nginx, the include (over ssh: one
    /// command), and with Compose which services run (ps + inspect each).
    fn detect(&mut self) {
        self.wait(
            "the probe through nginx",
            Some("probe_timeout_ms"),
            self.config.probe_timeout,
        );
        let n = self.remote + if self.compose { 4 } else { 0 };
        if n > 0 {
            self.commands("reading the route and the services", n);
        }
    }

    /// The frame of every mutating stage (common/src/stage.rs): the lock or
    /// another deployment's plan, finishing a switch killed half-way,
    /// detection, and the write check of the include's directory.
    fn frame(&mut self) {
        self.wait(
            "the lock, or another deployment's plan",
            Some("lock_timeout_secs"),
            self.config.lock_timeout,
        );
        if !self.pair {
            self.recover();
        }
        self.detect();
        if !self.pair && self.remote > 0 {
            self.commands("checking the include's directory", 1);
        }
    }

    /// Finishing a switch killed half-way (nginx.rs recover: read, probe,
    /// restore, test, reload).
    fn recover(&mut self) {
        let config = self.config;
        self.wait(
            "finishing a switch killed half-way: its probe",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
        self.commands("finishing a switch killed half-way", 2 + 2 * self.remote);
        self.wait(
            "finishing a switch killed half-way: did it take effect?",
            None,
            crate::nginx::TOOK_LIMIT,
        );
        self.wait(
            "finishing a switch killed half-way: nginx serving the restored config",
            Some("nginx.confirm_timeout_secs"),
            config.nginx.confirm_timeout,
        );
    }

    /// Stopping a profile (stop/src/lib.rs): SIGTERM, the stop timeout,
    /// SIGKILL and its wait; with Compose, `stop -t` and the port's wait.
    fn stop(&mut self) {
        if self.compose {
            self.commands("docker compose: the service and its container", 4);
        }
        self.wait(
            "the app's exit after SIGTERM",
            Some("app.stop_timeout_secs"),
            self.config.app.stop_timeout,
        );
        self.wait("the exit after SIGKILL, the port free", None, KILL_WAIT);
        if self.compose {
            self.commands("docker compose stop", 1);
        }
    }

    /// The switch (switch/src/lib.rs switch_to and transaction) on its
    /// longest path.
    fn switch(&mut self) {
        if self.pair {
            self.switch_pair();
        } else {
            self.switch_route();
        }
    }

    /// Upstream-pair mode: the new app's health once more, nginx's
    /// fail_timeout, nginx sending it a request, the last probe.
    fn switch_pair(&mut self) {
        let config = self.config;
        self.wait(
            "the new app's health, once more",
            Some("health.request_timeout_ms"),
            config.health.request_timeout,
        );
        if !config.nginx.fail_timeout.is_zero() {
            self.wait(
                "nginx's fail_timeout",
                Some("nginx.fail_timeout_secs"),
                config.nginx.fail_timeout,
            );
            self.wait("nginx's clock second", None, PAIR_CLOCK);
        }
        if config.nginx.confirm_timeout >= PAIR_CONFIRM_MIN {
            self.wait(
                "nginx sending the new app a request",
                Some("nginx.confirm_timeout_secs"),
                config.nginx.confirm_timeout,
            );
        } else {
            self.wait(
                "nginx sending the new app a request (at least 30 s)",
                None,
                PAIR_CONFIRM_MIN,
            );
        }
        self.wait(
            "the last probe",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
    }

    /// Include and symlink modes: the confirmation times out and everything
    /// is undone.
    fn switch_route(&mut self) {
        let config = self.config;
        self.wait(
            "the probe: does nginx already route there?",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
        // test + reload, and after a failed confirmation test + reload back;
        // over ssh also the read, the write, the restore and the final read.
        self.commands(
            "nginx -t and the reload, there and back",
            4 + 4 * self.remote,
        );
        self.wait(
            "nginx answering as the new profile",
            Some("nginx.confirm_timeout_secs"),
            config.nginx.confirm_timeout,
        );
        self.wait(
            "after a failed confirmation, nginx serving the previous config again",
            Some("nginx.confirm_timeout_secs"),
            config.nginx.confirm_timeout,
        );
        self.wait(
            "the last probe of the confirmation",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
    }

    /// Retiring the previous app (switch/src/lib.rs retire): nginx letting
    /// go of it, then a stop.
    fn retire(&mut self) {
        if !self.config.app.retire {
            return;
        }
        // Every mode waits for nginx to let go of it, then for its open
        // connections, within this one bound.
        self.wait(
            "nginx letting go of the previous app",
            Some("nginx.drain_timeout_secs"),
            self.config.nginx.drain_timeout,
        );
        self.stop();
    }

    /// `stop`: it detects again when it follows the deployment's plan.
    fn stop_stage(&mut self) {
        self.frame();
        self.detect();
        self.stop();
    }

    /// `start`: installing or pulling, the early-exit watch, and for a
    /// process what a forking or failed launch leaves.
    fn start_stage(&mut self) {
        let config = self.config;
        self.frame();
        if self.compose {
            // check_service, running, pull, up, containers, inspect.
            self.commands("docker compose: the service, pull, up", 7);
        } else {
            self.commands("installing the artifact", 1);
        }
        self.wait(
            "watching the new app for an early exit",
            Some("app.start_grace_ms"),
            config.app.start_grace,
        );
        if !self.compose {
            // A launcher that forks and exits 0 (start/src/lib.rs): its
            // leftover is waited for until it listens, and what a failed
            // launch left is stopped.
            self.wait(
                "a forking launcher's process coming to listen",
                Some("health.timeout_secs"),
                config.health.timeout,
            );
            self.wait(
                "stopping what a failed launch left",
                Some("app.stop_timeout_secs"),
                config.app.stop_timeout,
            );
            self.wait("its exit after SIGKILL", None, KILL_WAIT);
        }
    }

    /// `health`: the health check, the warm-up, then the switch and the
    /// retirement.
    fn health_stage(&mut self) {
        let config = self.config;
        self.frame();
        self.wait(
            "the new app answering its health check",
            Some("health.timeout_secs"),
            config.health.timeout,
        );
        self.wait(
            "its last attempt",
            Some("health.request_timeout_ms"),
            config.health.request_timeout,
        );
        if config.health.warmup.is_some() {
            self.wait(
                "warming the new app up",
                Some("health.warmup"),
                crate::config::MAX_WARMUP,
            );
            // The limit is checked before each request.
            self.wait(
                "its last warm-up request",
                Some("health.request_timeout_ms"),
                config.health.request_timeout,
            );
        }
        if self.compose {
            self.commands("docker inspect and logs of the container", 2);
        }
        self.switch();
        self.retire();
    }

    /// `switch`: --rollback checks the other app's health first.
    fn switch_stage(&mut self) {
        self.frame();
        self.wait(
            "the health of the profile rolled back to",
            Some("health.request_timeout_ms"),
            self.config.health.request_timeout,
        );
        self.switch();
        self.retire();
    }
}

/// The budget of `stage` (profile, stop, start, health, switch) with
/// `config`; `None` for any other name.
pub fn of(config: &Config, stage: &str) -> Option<Budget> {
    let mut p = Steps::new(config);
    match stage {
        "profile" => p.detect(),
        "stop" => p.stop_stage(),
        "start" => p.start_stage(),
        "health" => p.health_stage(),
        "switch" => p.switch_stage(),
        _ => return None,
    }
    Some(Budget {
        stage: stage.to_string(),
        waits: p.waits,
    })
}

/// One script of an appspec hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The lifecycle event: AfterInstall, ValidateService...
    pub event: String,
    pub location: String,
    /// `None` when the appspec gives none (CodeDeploy's default, 3600 s).
    pub timeout: Option<u64>,
    /// 1-based line of its `location:`, for messages.
    pub line: usize,
}

impl Hook {
    /// The stage it runs: the location's file name (`scripts/health` → `health`).
    pub fn stage(&self) -> &str {
        let file = self.location.split_whitespace().next().unwrap_or("");
        file.rsplit('/').next().unwrap_or(file)
    }
}

/// Reads the scripts of the `hooks:` section of an appspec's text: each
/// `- location:` with its `timeout:`. Understands the block style
/// CodeDeploy documents (and a one-line `{location: ..., timeout: ...}`);
/// everything outside `hooks:` is ignored. `Err` names the line.
pub fn parse_hooks(text: &str) -> Result<Vec<Hook>, String> {
    let mut hooks: Vec<Hook> = Vec::new();
    let mut in_hooks = false;
    let mut event: Option<(String, usize)> = None;
    // The script being read and the indentation of its `-`.
    let mut item: Option<(Hook, usize)> = None;
    let finish = |item: &mut Option<(Hook, usize)>, hooks: &mut Vec<Hook>| {
        if let Some((hook, _)) = item.take() {
            if !hook.location.is_empty() {
                hooks.push(hook);
            }
        }
    };
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = strip_comment(raw).trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        if indent == 0 {
            finish(&mut item, &mut hooks);
            event = None;
            in_hooks = body.trim_end() == "hooks:";
            continue;
        }
        if !in_hooks {
            continue;
        }
        if let Some(rest) = body.strip_prefix('-') {
            // A new script of the current event.
            finish(&mut item, &mut hooks);
            let Some((name, _)) = &event else {
                return Err(format!("line {line_no}: a list item outside an event"));
            };
            let mut hook = Hook {
                event: name.clone(),
                location: String::new(),
                timeout: None,
                line: line_no,
            };
            let rest = rest.trim();
            let pairs: Vec<&str> = match rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(flow) => flow.split(',').collect(),
                None => vec![rest],
            };
            for pair in pairs.into_iter().filter(|p| !p.trim().is_empty()) {
                set(&mut hook, pair, line_no)?;
            }
            item = Some((hook, indent));
            continue;
        }
        match &mut item {
            Some((hook, dash)) if indent > *dash => set(hook, body, line_no)?,
            _ => {
                // An event name: `AfterInstall:`.
                finish(&mut item, &mut hooks);
                let name = body
                    .strip_suffix(':')
                    .filter(|n| !n.contains(':'))
                    .ok_or_else(|| {
                        format!("line {line_no}: expected an event name such as `ValidateService:`")
                    })?;
                event = Some((unquote(name).to_string(), indent));
            }
        }
    }
    finish(&mut item, &mut hooks);
    Ok(hooks)
}

/// `key: value` of a script: keeps `location` and `timeout`.
fn set(hook: &mut Hook, pair: &str, line_no: usize) -> Result<(), String> {
    let Some((key, value)) = pair.split_once(':') else {
        return Err(format!("line {line_no}: expected `key: value`"));
    };
    let value = unquote(value.trim());
    match key.trim() {
        "location" => {
            hook.location = value.to_string();
            hook.line = line_no;
        }
        "timeout" => {
            let secs = value.parse::<u64>().map_err(|_| {
                format!("line {line_no}: timeout {value:?} is not a whole number of seconds")
            })?;
            hook.timeout = Some(secs);
        }
        _ => {}
    }
    Ok(())
}

/// A YAML scalar without its quotes (and surrounding blanks).
pub fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// The line without a `#` comment (one at the start, or after a space,
/// outside quotes).
pub fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// Checks each nonstop hook of an appspec (`text`, read from `appspec`)
/// against the stage's budget with `config`. `Err` is the message of an
/// exit-2 error: the hook, both numbers, and the keys to change.
pub fn check(config: &Config, appspec: &Path, text: &str) -> Result<(), String> {
    let shown = appspec.display();
    let hooks = parse_hooks(text).map_err(|e| format!("{shown}: {e}"))?;
    let mut problems = Vec::new();
    for hook in &hooks {
        let Some(budget) = of(config, hook.stage()) else {
            continue;
        };
        let timeout = hook.timeout.unwrap_or(CODEDEPLOY_MAX_TIMEOUT);
        if timeout > CODEDEPLOY_MAX_TIMEOUT {
            problems.push(format!(
                "{shown} line {}: hook {} ({}) has timeout {timeout} s; CodeDeploy allows at most {CODEDEPLOY_MAX_TIMEOUT}",
                hook.line, hook.event, hook.location
            ));
            continue;
        }
        let needs = budget.total_secs();
        if needs > timeout {
            let mut msg = format!(
                "{shown} line {}: hook {} ({}) has timeout {timeout} s, but `{}` can wait up to {needs} s with config {} ({}): CodeDeploy would kill it half-way. ",
                hook.line,
                hook.event,
                hook.location,
                budget.stage,
                config.source.display(),
                budget.breakdown()
            );
            if needs <= CODEDEPLOY_MAX_TIMEOUT {
                let _ = write!(msg, "Raise that timeout to at least {needs}, or lower ");
            } else {
                let _ = write!(
                    msg,
                    "That is more than CodeDeploy's largest timeout ({CODEDEPLOY_MAX_TIMEOUT} s): lower "
                );
            }
            let keys: Vec<String> = budget.keys().iter().map(|k| format!("`{k}`")).collect();
            let _ = write!(msg, "{}", keys.join(", "));
            problems.push(msg);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Where the appspec of a config's bundle is: beside the config, or (a
/// config beside the executable, in `scripts/`) one directory up, at the
/// bundle's root. `None` when there is none.
pub fn appspec_beside(config: &Config) -> Option<PathBuf> {
    let dir = config.source.parent()?;
    let here = dir.join(APPSPEC);
    if here.is_file() {
        return Some(here);
    }
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let beside_exe = std::fs::canonicalize(dir).ok()? == std::fs::canonicalize(&exe_dir).ok()?;
    let up = exe_dir.parent()?.join(APPSPEC);
    (beside_exe && up.is_file()).then_some(up)
}

/// [`check`] against the appspec shipped with the config, if there is one.
/// An appspec that cannot be read is an error naming it.
pub fn check_beside(config: &Config) -> Result<(), String> {
    let Some(path) = appspec_beside(config) else {
        return Ok(());
    };
    // Capped: an appspec is a few hundred bytes.
    let bytes = crate::state::read_capped(&path, 1 << 20)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .unwrap_or_default();
    check(config, &path, &String::from_utf8_lossy(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_APPSPEC: &str = include_str!("../../appspec.yml");

    fn config(json: &str) -> Config {
        crate::config::parse(json, Path::new("/b/nonstop.json")).unwrap()
    }

    #[test]
    fn reads_the_hooks_of_the_repos_appspec() {
        let hooks = parse_hooks(REPO_APPSPEC).unwrap();
        let got: Vec<(&str, &str, Option<u64>)> = hooks
            .iter()
            .map(|h| (h.event.as_str(), h.stage(), h.timeout))
            .collect();
        assert_eq!(
            got,
            [
                ("AfterInstall", "stop", Some(120)),
                ("ApplicationStart", "start", Some(240)),
                ("ValidateService", "health", Some(180)),
            ]
        );
    }

    #[test]
    fn reads_other_layouts_of_the_hooks() {
        let text = "version: 0.0\nhooks:   # the hooks\n  BeforeInstall:\n  - location: \"scripts/stop\"  # ours\n    runas: root\n    timeout: '90'\n  ValidateService:\n    - {location: scripts/health, timeout: 300}\n    - location: scripts/notify.sh\nfiles: []\n";
        let hooks = parse_hooks(text).unwrap();
        assert_eq!(hooks.len(), 3, "{hooks:?}");
        assert_eq!((hooks[0].stage(), hooks[0].timeout), ("stop", Some(90)));
        assert_eq!(hooks[0].event, "BeforeInstall");
        assert_eq!((hooks[1].stage(), hooks[1].timeout), ("health", Some(300)));
        assert_eq!((hooks[2].stage(), hooks[2].timeout), ("notify.sh", None));
        let err = parse_hooks("hooks:\n  AfterInstall:\n    - location: x\n      timeout: 2m\n")
            .unwrap_err();
        assert!(err.contains("line 4") && err.contains("2m"), "{err}");
    }

    #[test]
    fn the_repos_appspec_covers_the_example_config() {
        let text = include_str!("../../examples/nonstop.json");
        let c = crate::config::parse(text, Path::new("/b/nonstop.json")).unwrap();
        check(&c, Path::new("/b/appspec.yml"), REPO_APPSPEC).unwrap();
    }

    /// With retiring on, `health` waits for the drain and the old app's
    /// stop after the switch: past ValidateService's 180 s with the
    /// defaults. Refused, naming the hook, both numbers and the keys.
    #[test]
    fn retiring_past_validate_services_timeout_is_refused_naming_both_numbers() {
        let c = config(r#"{"app": {"dir": "/a", "retire": true}}"#);
        let health = of(&c, "health").unwrap();
        let needs = health.total_secs();
        assert!(needs > 180, "{health:?}");
        let err = check(&c, Path::new("/b/appspec.yml"), REPO_APPSPEC).unwrap_err();
        for part in [
            "/b/appspec.yml",
            "ValidateService",
            "scripts/health",
            "180 s",
            &format!("up to {needs} s"),
            &format!("at least {needs}"),
            "nginx.drain_timeout_secs",
            "app.stop_timeout_secs",
            "health.timeout_secs",
            "lock_timeout_secs",
        ] {
            assert!(err.contains(part), "{part:?} missing: {err}");
        }
        // Only the hook that is short.
        assert!(!err.contains("AfterInstall"), "{err}");
        // Shorter waits fit again.
        let c = config(
            r#"{"lock_timeout_secs": 30, "app": {"dir": "/a", "retire": true, "stop_timeout_secs": 5}, "nginx": {"drain_timeout_secs": 10}}"#,
        );
        check(&c, Path::new("/b/appspec.yml"), REPO_APPSPEC).unwrap();
    }

    #[test]
    fn every_stage_counts_its_configured_waits() {
        let c =
            config(r#"{"app": {"dir": "/a", "stop_timeout_secs": 100}, "lock_timeout_secs": 200}"#);
        let stop = of(&c, "stop").unwrap();
        assert!(stop.total_secs() >= 305, "{stop:?}");
        let err = check(&c, Path::new("/b/appspec.yml"), REPO_APPSPEC).unwrap_err();
        assert!(
            err.contains("AfterInstall")
                && err.contains("120 s")
                && err.contains("app.stop_timeout_secs"),
            "{err}"
        );
        // The longest first among the keys to lower.
        assert_eq!(stop.keys()[0], "lock_timeout_secs");
        // Upstream pair: fail_timeout and the 30 s floor, and always retiring.
        let c = config(r#"{"app": {"dir": "/a"}, "nginx": {"mode": "upstream-pair"}}"#);
        let health = of(&c, "health").unwrap();
        assert!(health.keys().contains(&"nginx.fail_timeout_secs"));
        assert!(health.keys().contains(&"app.stop_timeout_secs"));
        assert!(of(&c, "deploy.sh").is_none());
    }

    #[test]
    fn a_timeout_over_codedeploys_maximum_is_refused() {
        let c = config(r#"{"app": {"dir": "/a"}}"#);
        let text = "hooks:\n  AfterInstall:\n    - location: scripts/stop\n      timeout: 7200\n";
        let err = check(&c, Path::new("/b/appspec.yml"), text).unwrap_err();
        assert!(err.contains("7200") && err.contains("3600"), "{err}");
        // No timeout: CodeDeploy's default of 3600 s covers the defaults.
        let text = "hooks:\n  AfterInstall:\n    - location: scripts/stop\n";
        check(&c, Path::new("/b/appspec.yml"), text).unwrap();
    }
}
