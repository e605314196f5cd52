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
//! The appspec's hooks are read in [`crate::frame::appspec`].

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::config::waits::{Part, Steps, Wait, KILL_WAIT, STILL_SERVING_LIMIT};
use crate::config::Config;
use crate::frame::appspec::{appspec_beside, parse_hooks, CODEDEPLOY_MAX_TIMEOUT};
use crate::route;

/// The waits of one stage with a config, on its longest path.
#[derive(Debug, Clone)]
pub struct Budget {
    pub stage: String,
    pub waits: Vec<Wait>,
}

impl Budget {
    pub(crate) fn total(&self) -> Duration {
        self.waits.iter().map(|w| w.time).sum()
    }

    /// The total in whole seconds, rounded up: what a hook timeout must reach.
    pub fn total_secs(&self) -> u64 {
        let t = self.total();
        t.as_secs() + u64::from(t.subsec_nanos() > 0)
    }

    /// "lock_timeout_secs 60 s + health.timeout_secs 60 s + ... + nonstop's
    /// own steps 12.2 s".
    pub(crate) fn breakdown(&self) -> String {
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
    pub(crate) fn keys(&self) -> Vec<&'static str> {
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

impl Steps<'_> {
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

    /// The frame of every mutating stage (crate::frame::stage): the lock or
    /// another deployment's plan, finishing a switch killed half-way,
    /// detection, and the mode's look at its route before a deployment stops
    /// anything.
    fn frame(&mut self) {
        self.wait(
            "the lock, or another deployment's plan",
            Some("lock_timeout_secs"),
            self.config.lock_timeout,
        );
        let mode = route::of(self.config);
        mode.waits(Part::Recover, self);
        self.detect();
        mode.waits(Part::Ready, self);
    }

    /// Stopping a profile (crate::app::stopping): SIGTERM, the stop
    /// timeout, SIGKILL and its wait; with Compose, `stop -t` and the port's
    /// wait.
    pub(crate) fn stop(&mut self) {
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

    /// The switch (crate::switch), as the routing mode makes it.
    fn switch(&mut self) {
        route::of(self.config).waits(Part::Switch, self);
    }

    /// Retiring the previous app (crate::app::retiring): nginx
    /// letting go of it, the last look that the new app still serves, then
    /// the stop, or, when the new app no longer serves, the switch back
    /// (crate::switch's switch_back): whichever is longer.
    fn retire(&mut self) {
        let config = self.config;
        if !config.app.retire {
            return;
        }
        // Every mode waits for nginx to let go of it, then for its open
        // connections, within this one bound.
        self.wait(
            "nginx letting go of the previous app",
            Some("nginx.drain_timeout_secs"),
            config.nginx.drain_timeout,
        );
        self.wait(
            "the new app still serving, before the previous one is stopped",
            None,
            STILL_SERVING_LIMIT,
        );
        self.wait(
            "its last health check",
            Some("health.request_timeout_ms"),
            config.health.request_timeout,
        );
        self.wait(
            "its last probe through nginx",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
        let mut stop = Steps::new(config);
        stop.stop();
        let mut back = Steps::new(config);
        back.switch_back();
        let longer = if back.total() > stop.total() {
            back
        } else {
            stop
        };
        self.waits.extend(longer.waits);
    }

    /// The new app stopped serving while the previous one was being
    /// retired (crate::switch's switch_back): where a build that listens is
    /// in nginx's rotation, the failed one is withdrawn (stopped) first;
    /// then nginx is switched back, as the mode does it.
    fn switch_back(&mut self) {
        let mode = route::of(self.config);
        if mode.rotation().is_some() {
            self.stop();
        }
        mode.waits(Part::SwitchBack, self);
    }

    /// `stop`: it detects again when it follows the deployment's plan, and
    /// lets nginx let go of the app before it signals it (the drain
    /// retiring uses: nginx's previous workers, then its connections).
    fn stop_stage(&mut self) {
        self.frame();
        self.detect();
        self.wait(
            "nginx letting go of the idle app",
            Some("nginx.drain_timeout_secs"),
            self.config.nginx.drain_timeout,
        );
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

/// [`check`] against the appspec shipped with the config, if there is one.
/// An appspec that cannot be read is an error naming it.
pub(crate) fn check_beside(config: &Config) -> Result<(), String> {
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

    const REPO_APPSPEC: &str = include_str!("../../../appspec.yml");

    fn config(json: &str) -> Config {
        crate::config::parse(json, Path::new("/b/nonstop.json")).unwrap()
    }

    #[test]
    fn the_repos_appspec_covers_the_example_config() {
        let text = include_str!("../../../examples/nonstop.json");
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
        // Shorter waits fit again; then switching back (a whole switch)
        // when the new app died is the longer way out of retiring.
        let c = config(
            r#"{"lock_timeout_secs": 15, "app": {"dir": "/a", "retire": true, "stop_timeout_secs": 5}, "nginx": {"drain_timeout_secs": 10}}"#,
        );
        let waits = of(&c, "health").unwrap().waits;
        assert!(
            waits
                .iter()
                .any(|w| w.what.contains("previous config again"))
                && !waits.iter().any(|w| w.what.contains("after SIGTERM")),
            "{waits:?}"
        );
        check(&c, Path::new("/b/appspec.yml"), REPO_APPSPEC).unwrap();
    }

    #[test]
    fn every_stage_counts_its_configured_waits() {
        let c =
            config(r#"{"app": {"dir": "/a", "stop_timeout_secs": 100}, "lock_timeout_secs": 200}"#);
        let stop = of(&c, "stop").unwrap();
        assert!(stop.total_secs() >= 305, "{stop:?}");
        // `stop` drains the idle app first, as retiring does.
        assert!(
            stop.keys().contains(&"nginx.drain_timeout_secs"),
            "{stop:?}"
        );
        let err = check(&c, Path::new("/b/appspec.yml"), REPO_APPSPEC).unwrap_err();
        assert!(
            err.contains("AfterInstall")
                && err.contains("180 s")
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

    /// The figures README's "The hook budget" and appspec.yml's comment
    /// give for the defaults.
    #[test]
    fn the_documented_budgets_are_the_defaults() {
        let c = config(r#"{"app": {"dir": "/a"}}"#);
        let secs = |c: &Config, stage: &str| of(c, stage).unwrap().total_secs();
        assert_eq!(
            [secs(&c, "stop"), secs(&c, "start"), secs(&c, "health")],
            [177, 178, 175]
        );
        let retiring = config(r#"{"app": {"dir": "/a", "retire": true}}"#);
        assert_eq!(secs(&retiring, "health"), 275);
        let readme = include_str!("../../../README.md");
        for figure in [
            "needs 177 s",
            "`start` 178 s",
            "`health` 175 s",
            "`health` 275 s",
        ] {
            assert!(readme.contains(figure), "README lacks {figure:?}");
        }
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
