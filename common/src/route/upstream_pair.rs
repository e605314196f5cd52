//! The upstream-pair mode: nginx's upstream lists both profiles' ports and
//! is never edited or reloaded. A deployment starts the new version on the
//! port that is free; nginx sends it requests as soon as it listens (so a
//! build that fails is withdrawn at once), the switch waits until nginx
//! does, after the window in which a worker may still skip its server
//! (`fail_timeout`), and the old app is always retired.
//!
//! There is nothing in nginx to read: the profile whose port listens is
//! live; when both listen, the one the last deployment made live
//! (`switch.json`). nginx's own upstream, read from `nginx -T`
//! ([`crate::nginx::upstream`]), must be one nonstop can reason about.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::app::{compose, health_rule};
use crate::config::waits::{Part, Steps, PAIR_CLOCK, PAIR_CONFIRM_MIN};
use crate::config::{Config, Profile};
use crate::nginx::blocks::has_proxy_pass;
use crate::nginx::conf::{split_dump, tokenize};
use crate::nginx::probe::{probe, Probe};
use crate::nginx::upstream;
use crate::route::address::Seen;
use crate::route::mode::{Commands, Include, Line, Mode, Witness};
use crate::state::RouteId;
use crate::sys::log::Log;
use crate::sys::procs;
use crate::sys::signals;
use crate::sys::time::secs;

/// nginx balancing over both profiles' ports.
#[derive(Debug)]
pub(crate) struct UpstreamPair<'a> {
    pub config: &'a Config,
}

impl Mode for UpstreamPair<'_> {
    fn id(&self) -> RouteId {
        // The include's path, as journals and owner.json of earlier
        // versions recorded this mode's route.
        RouteId {
            mode: self.config.nginx.mode.to_string(),
            path: self.config.nginx.include.clone(),
            host: None,
        }
    }

    fn noun(&self) -> &'static str {
        "upstream"
    }

    fn describe(&self) -> String {
        "nginx's upstream over both ports".to_string()
    }

    fn directory(&self) -> Option<(&'static str, PathBuf)> {
        None
    }

    /// Which ports listen. With Compose, the engine's view: with
    /// `"userland-proxy": false` no host process listens on a published
    /// port, and a paused container holds its port without answering.
    fn witness(&self) -> Result<Witness> {
        let config = self.config;
        if let Some(c) = compose::of(config) {
            let mut per_profile = Vec::new();
            for p in &config.profiles {
                let service = compose::service(c, config, p);
                let containers = compose::containers(c, service)
                    .with_context(|| format!("cannot ask docker about service {service}"))?;
                per_profile.push((p.port, containers));
            }
            return Ok(Witness::Listening(compose::ports_held(&per_profile)));
        }
        let mut listens = Vec::new();
        for p in &config.profiles {
            let l = procs::listening(p.port)
                .with_context(|| format!("cannot read who listens on {}", p.port))?;
            listens.push(!l.is_free());
        }
        Ok(Witness::Listening(listens))
    }

    fn content_for(&self, _profile: &Profile) -> Option<Vec<u8>> {
        None
    }

    fn read(&self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn classify(&self, _content: &[u8]) -> Include {
        Include::Missing
    }

    fn refuse_foreign(&self, _content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    fn write(&self, _content: &[u8]) -> Result<()> {
        Err(anyhow!("upstream-pair mode writes nothing to nginx"))
    }

    fn remove(&self) -> Result<()> {
        Ok(())
    }

    fn commands(&self) -> Commands<'_> {
        Commands::default()
    }

    fn before_write(&self, _log: &Log) -> Result<()> {
        Ok(())
    }

    fn accepting_workers(&self, _log: &Log) -> Option<Vec<i32>> {
        None
    }

    fn steady_for(&self, _workers: Option<&[i32]>) -> Duration {
        Duration::ZERO
    }

    fn await_traffic(&self, log: &Log, live: Option<&Profile>, target: &Profile) -> Result<()> {
        await_traffic(self.config, log, live, target)
    }

    fn rotation(&self) -> Option<&'static str> {
        Some("nginx's upstream")
    }

    /// Nothing is written, but nginx's upstream must be one nonstop can
    /// reason about.
    fn check_ready(&self, log: &Log) -> Result<()> {
        upstream::check(self.config, log)
    }

    /// The upstream's `server` line of the target's port.
    fn connects_to(&self, target: &Profile) -> Seen {
        match upstream::read(self.config) {
            upstream::Read::Found(u) => match u.server(target.port) {
                Some(s) => Seen::in_text(
                    &s.address,
                    format!("nginx's upstream {}", u.name),
                    target.port,
                ),
                None => Seen::Unknown(format!(
                    "nginx's upstream {} has no server on port {}",
                    u.name, target.port
                )),
            },
            upstream::Read::NotFound => {
                Seen::Unknown("no upstream in nginx's config lists the profiles' ports".into())
            }
            upstream::Read::Unreadable(why) => Seen::Unknown(why),
        }
    }

    /// A pool of connections nginx resends from (the only pool
    /// [`upstream::refusal`] lets through): nginx keeps some of them open to
    /// the old app for as long as it runs, so "no connection left" never
    /// comes, and waiting for it would only wait out the whole bound.
    fn drain_note(&self, port: u16) -> Option<String> {
        match upstream::read(self.config) {
            upstream::Read::Found(u) if u.resends_non_idempotent => u.pool_note(port),
            _ => None,
        }
    }

    /// No switch to finish (nothing is written, so no journal) and nothing
    /// to look at before; the switch waits for the new app's health once
    /// more, nginx's fail_timeout and nginx sending it a request; the
    /// switch back (after the failed build was withdrawn) for the previous
    /// app's health and nginx answering as it.
    fn waits(&self, part: Part, steps: &mut Steps) {
        let config = self.config;
        let (health, traffic) = match part {
            Part::Recover | Part::Ready => return,
            Part::Switch => (
                "the new app's health, once more",
                "nginx sending the new app a request",
            ),
            Part::SwitchBack => (
                "the previous app's health, once more",
                "nginx answering as the previous app",
            ),
        };
        steps.wait(
            health,
            Some("health.request_timeout_ms"),
            config.health.request_timeout,
        );
        if part == Part::Switch && !config.nginx.fail_timeout.is_zero() {
            steps.wait(
                "nginx's fail_timeout",
                Some("nginx.fail_timeout_secs"),
                config.nginx.fail_timeout,
            );
            steps.wait("nginx's clock second", None, PAIR_CLOCK);
        }
        if config.nginx.confirm_timeout >= PAIR_CONFIRM_MIN {
            steps.wait(
                traffic,
                Some("nginx.confirm_timeout_secs"),
                config.nginx.confirm_timeout,
            );
        } else {
            steps.wait(
                &format!("{traffic} (at least 30 s)"),
                None,
                PAIR_CONFIRM_MIN,
            );
        }
        steps.wait(
            "the last probe",
            Some("probe_timeout_ms"),
            config.probe_timeout,
        );
    }

    /// An upstream lists the profiles' ports as nonstop needs them, and a
    /// server block proxies to it.
    fn check_config(&self, dump: &str) -> Vec<Line> {
        let config = self.config;
        let all = upstream::parse(dump);
        let Some(u) = upstream::find(&all, &config.profiles) else {
            let ports: Vec<String> = config
                .profiles
                .iter()
                .map(|p| format!("server 127.0.0.1:{};", p.port))
                .collect();
            return vec![Line::Fail(
                "no upstream in nginx's loaded config lists the profiles' ports".into(),
                format!("add `upstream app {{ {} }}` and `proxy_pass http://app;` in the server block, then reload nginx", ports.join(" ")),
            )];
        };
        if let Some(why) = upstream::refusal(u, &config.profiles) {
            return vec![Line::Fail(why, "then `nginx -t && nginx -s reload`".into())];
        }
        let words: Vec<String> = split_dump(dump)
            .iter()
            .flat_map(|(_, t)| tokenize(t))
            .collect();
        let target = format!("http://{}", u.name);
        if !has_proxy_pass(&words, &target) {
            return vec![Line::Fail(
                format!("no server block of nginx's loaded config has `proxy_pass {target};`, so the upstream {} gets no requests", u.name),
                format!("add `location / {{ proxy_pass {target}; }}` to the server block, then reload nginx"),
            )];
        }
        vec![Line::Ok(format!(
            "nginx proxies to upstream {} over both profiles' ports",
            u.name
        ))]
    }

    fn check_route(&self) -> Vec<Line> {
        Vec::new()
    }

    /// Deployments read the upstream from the dump: it must run.
    fn needs_dump(&self) -> bool {
        true
    }

    fn maintenance_page(&self) -> Result<PathBuf> {
        Err(crate::sys::error::usage(
            "switch --maintenance: not possible in upstream-pair mode: nginx's upstream lists both \
             profiles' ports and nonstop never edits nginx's config there, so there is nothing to switch \
             to a page. Put the page in nginx's config by hand, or use the include or symlink mode; \
             nothing was changed",
        ))
    }
}

/// Nothing to point, the upstream already lists the target's port: checks
/// it once more and waits until nginx sends it requests.
fn await_traffic(
    config: &Config,
    log: &Log,
    live: Option<&Profile>,
    target: &Profile,
) -> Result<()> {
    // Nothing to point: the upstream already lists the target's port.
    // Health checked it on its port; check once more right now.
    health_rule::check_health(config, target).map_err(|why| {
        anyhow!(
            "{} does not answer {} now ({why})",
            health_rule::health_url(config, target),
            health_rule::health_words(config, target)
        )
    })?;
    // nginx takes a server that refused a request out of rotation for
    // its fail_timeout (10 s by default), and the new app's port refused
    // until a moment ago: retiring the old app before nginx sends the new
    // one traffic would leave it with no server to send to (502).
    if live.is_some_and(|l| l != target) {
        let window = skip_window(config, log, target)?;
        wait_out_fail_timeout(config, log, target, window)?;
    }
    let limit = config.nginx.confirm_timeout.max(PAIR_CONFIRM_MIN);
    let mut last = String::new();
    let sent = signals::wait_for(limit, Duration::from_millis(20), || match probe(config) {
        Probe::Answered(p) if &p == target => true,
        Probe::Answered(p) => {
            last = format!("it answered as {}", p.name);
            false
        }
        Probe::Failed(why) => {
            last = why;
            false
        }
    })
    .context("nothing was changed")?;
    let Some(after) = sent else {
        return Err(anyhow!(
            "{} answers on its port, but nginx did not send it a request within {} ({} {last}); \
             is its port in nginx's upstream?",
            target.name,
            secs(limit),
            config.probe_url
        ));
    };
    log.say(format!(
        "upstream-pair mode: nginx sends requests to {} ({}) after {}; nginx itself needs no change",
        target.name,
        target.port,
        secs(after)
    ));
    Ok(())
}

/// How long nginx may still skip the target's server: what nginx's own
/// upstream says (`fail_timeout`, nothing with `max_fails=0`), with a note
/// when that differs from `nginx.fail_timeout_secs`; the config's value when
/// the upstream cannot be read. An upstream nonstop cannot reason about
/// (changed since the deployment began) is refused.
fn skip_window(config: &Config, log: &Log, target: &Profile) -> Result<Duration> {
    let configured = config.nginx.fail_timeout;
    let server = match upstream::read(config) {
        upstream::Read::Found(u) => {
            if let Some(why) = upstream::refusal(&u, &config.profiles) {
                return Err(anyhow!(why));
            }
            u.server(target.port).cloned().map(|s| (u.name.clone(), s))
        }
        upstream::Read::NotFound | upstream::Read::Unreadable(_) => None,
    };
    let Some((name, server)) = server else {
        return Ok(configured);
    };
    let window = server.skip_window();
    if window != configured {
        let how = if server.max_fails == 0 {
            "max_fails=0: nginx never skips it".to_string()
        } else {
            format!(
                "max_fails={}, fail_timeout {}: nginx may skip it for {} after a refusal",
                server.max_fails,
                secs(server.fail_timeout),
                secs(window)
            )
        };
        log.say(format!(
            "nginx's upstream {name} gives {} {how}, not nginx.fail_timeout_secs ({}); going by nginx's",
            server.address,
            secs(configured)
        ));
    }
    Ok(window)
}

/// Upstream-pair mode, before the switch counts as done: each nginx worker keeps its
/// own record of a server that refused (no `zone`), and skips it for
/// `fail_timeout` after the last refusal. The new app refused until it
/// listened, so a worker that has not sent it a request since may still
/// skip it; if the old app went now, that worker would have no server left
/// and answer 502 (measured: it does). Once `fail_timeout` has passed since
/// the new app answered, every worker tries it again. With `max_fails=0` on
/// the servers nginx never skips one, and `nginx.fail_timeout_secs: 0` makes
/// this wait nothing.
fn wait_out_fail_timeout(
    config: &Config,
    log: &Log,
    target: &Profile,
    fail_timeout: Duration,
) -> Result<()> {
    if fail_timeout.is_zero() {
        return Ok(());
    }
    // nginx compares in whole seconds (`now - checked <= fail_timeout` on
    // its cached clock), so a server can stay skipped for up to a second
    // longer than fail_timeout.
    let window = fail_timeout + Duration::from_millis(1200);
    log.say(format!(
        "waiting {} (nginx's fail_timeout plus its clock's second) so that every nginx worker sends to {} again before the old app may go",
        secs(window),
        target.name
    ));
    signals::pause(window).context("nothing was changed")?;
    health_rule::check_health(config, target).map_err(|why| {
        anyhow!(
            "{} stopped answering ({why}) while waiting; the old app is kept",
            target.name
        )
    })
}
