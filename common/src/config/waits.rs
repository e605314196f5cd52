//! nonstop's own fixed waits (those no config key sets), in one place, so
//! that the code that waits and the hook budget ([`crate::frame::budget`])
//! that counts it agree; and [`Steps`], the list a stage's budget is summed
//! from, to which each routing mode adds its own waits ([`Part`]).

use std::time::Duration;

use crate::config::{Backend, Config};

/// What one external command on a stage's path is counted for: `nginx -t`,
/// the reload, an ssh round trip, a docker call. Those normally return in
/// well under a second; their hard limits ([`COMMAND_LIMIT`]) are there for
/// a hung one, which fails the stage anyway, so they are not what a working
/// deployment waits for.
pub(crate) const COMMAND: Duration = Duration::from_secs(2);

/// How long one of nginx's own commands (test, reload) may take.
pub(crate) const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// `stop`'s wait for a SIGKILLed process to go (and for the port to be free
/// after `docker compose stop`).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long the probe must answer one profile without a break before nginx
/// counts as serving it after a reload, when nginx's workers cannot be seen:
/// longer than the ~100 ms nginx keeps the previous workers accepting.
pub(crate) const BLIND_CONFIRM: Duration = Duration::from_millis(300);

/// How long a later stage watches a switch it found to see whether it took.
pub(crate) const TOOK_LIMIT: Duration = Duration::from_millis(1500);

/// How long, at most, retiring looks for the new app answering (its own
/// port and through nginx) before it counts as gone. Success ends the look
/// at the first good pair of answers; only an app that is really gone costs
/// the whole window, and one blip (a slow answer under load) does not count
/// as a death.
pub(crate) const STILL_SERVING_LIMIT: Duration = Duration::from_secs(2);

/// The upstream pair: how long at least the switch waits for nginx to send
/// the new app a request (more than nginx's default fail_timeout, 10 s),
/// and the second nginx's clock adds to a fail_timeout.
pub(crate) const PAIR_CONFIRM_MIN: Duration = Duration::from_secs(30);
pub(crate) const PAIR_CLOCK: Duration = Duration::from_millis(1200);

/// One bounded wait on a stage's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    pub what: String,
    /// The config key that sets it; `None` for nonstop's own.
    pub key: Option<&'static str>,
    pub time: Duration,
}

/// Where on a stage's path a routing mode adds its waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Every mutating stage first finishes a switch killed half-way.
    Recover,
    /// Before a deployment stops anything: the route can be switched.
    Ready,
    /// The switch, on its longest path.
    Switch,
    /// The switch back to the previous app, when the new one died while
    /// the previous one was being retired.
    SwitchBack,
}

/// Collects a stage's waits, read off the config once.
#[derive(Debug)]
pub struct Steps<'a> {
    pub config: &'a Config,
    /// 1 when nginx is on another host (each file access is a command).
    pub remote: u32,
    pub compose: bool,
    pub waits: Vec<Wait>,
}

impl<'a> Steps<'a> {
    pub(crate) fn new(config: &'a Config) -> Self {
        Steps {
            config,
            remote: u32::from(config.nginx.ssh.is_some()),
            compose: matches!(config.app.backend, Backend::Compose(_)),
            waits: Vec::new(),
        }
    }

    pub(crate) fn wait(&mut self, what: &str, key: Option<&'static str>, time: Duration) {
        if !time.is_zero() {
            self.waits.push(Wait {
                what: what.to_string(),
                key,
                time,
            });
        }
    }

    pub(crate) fn commands(&mut self, what: &str, n: u32) {
        self.wait(
            &format!("{what} ({n} command{})", if n == 1 { "" } else { "s" }),
            None,
            COMMAND * n,
        );
    }

    pub(crate) fn total(&self) -> Duration {
        self.waits.iter().map(|w| w.time).sum()
    }

    /// Finishing a switch killed half-way (the switch journal's recovery:
    /// read, probe, restore, and `commands` of nginx's, each also a command
    /// over ssh).
    pub(crate) fn recover_route(&mut self, commands: u32) {
        let config = self.config;
        self.wait(
            "finishing a switch killed half-way: its probe",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
        self.commands(
            "finishing a switch killed half-way",
            commands + 2 * self.remote,
        );
        self.wait(
            "finishing a switch killed half-way: did it take effect?",
            None,
            TOOK_LIMIT,
        );
        self.wait(
            "finishing a switch killed half-way: nginx serving the restored config",
            Some("nginx.confirm_timeout_secs"),
            config.nginx.confirm_timeout,
        );
    }

    /// A switch that writes the route, on its longest path: the
    /// confirmation times out and everything is undone. `commands`: nginx's
    /// commands there and back (`nginx -t` and the reload); over ssh also
    /// the read, the write, the restore and the final read.
    pub(crate) fn switch_route(&mut self, commands: u32) {
        let config = self.config;
        self.wait(
            "the probe: does nginx already route there?",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
        self.commands(
            "nginx -t and the reload, there and back",
            commands + 4 * self.remote,
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
}
