//! Which profile is live and which is idle.
//!
//! Two witnesses: what nginx answers at `probe_url` (the book's
//! `curl localhost/profile`) and the port the include file names (what nginx
//! is configured to route to). The book trusts the probe alone and, when it
//! answers 4xx/5xx, *assumes* real2 is live, so a sick live real1 is taken
//! for idle and killed. Here the rules are:
//!
//! | include            | probe                 | live                              |
//! |--------------------|-----------------------|-----------------------------------|
//! | names P            | answers P             | P                                 |
//! | names P            | answers Q ≠ P         | error: they disagree              |
//! | names P            | fails                 | P (warn)                          |
//! | missing            | fails                 | none: first deployment            |
//! | missing            | answers Q             | Q (warn: include will be created) |
//! | names no profile   | fails                 | none (warn)                       |
//! | names no profile   | answers Q             | Q (warn)                          |
//! | names both ports   | any                   | error                             |
//! | maintenance, keeps P | fails (the page's 503) | P (warn: maintenance is on)     |
//! | maintenance, keeps P | answers Q           | error: they disagree              |
//!
//! A probe answer is a configured profile name, compared exactly after
//! trimming, and nothing else: the body is never used in a path, a command
//! or a config line.

use anyhow::{anyhow, Context as _, Result};

use crate::app::compose;
use crate::config::{Config, Profile};
use crate::nginx::probe::{probe, Probe};
use crate::route;
use crate::route::mode::{Include, Witness};
use crate::state::context::Context;
use crate::state::{read_own_capped, StateDir, Switched};

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub live: Option<Profile>,
    pub idle: Profile,
    /// Things an operator should know (a failed probe, a first deployment).
    pub warnings: Vec<String>,
}

/// Applies the rules of the table above.
pub fn decide(
    profiles: &[Profile],
    probe: &Probe,
    include: &Include,
    noun: &str,
) -> Result<Detection, String> {
    let other = |live: &Profile| -> Profile {
        profiles
            .iter()
            .find(|p| p.name != live.name)
            .cloned()
            .unwrap_or_else(|| live.clone())
    };
    let first = profiles.first().cloned().ok_or("no profiles configured")?;
    let live_is = |live: Profile, warnings: Vec<String>| Detection {
        idle: other(&live),
        live: Some(live),
        warnings,
    };
    match (include, probe) {
        (Include::NamesBoth, _) => Err(
            format!("the {noun} names the ports of both profiles; cannot tell which one nginx routes to"),
        ),
        (Include::Names(p), Probe::Answered(q)) if p == q => Ok(live_is(p.clone(), vec![])),
        (Include::Names(p), Probe::Answered(q)) => Err(format!(
            "nginx answers as {} ({}) but the {noun} routes to {} ({}); refusing to guess which is live",
            q.name, q.port, p.name, p.port
        )),
        (Include::Names(p), Probe::Failed(why)) => Ok(live_is(
            p.clone(),
            vec![format!(
                "the probe through nginx failed ({why}); going by the {noun}: {} ({}) is live",
                p.name, p.port
            )],
        )),
        (Include::Missing, Probe::Failed(why)) => Ok(Detection {
            live: None,
            idle: first,
            warnings: vec![format!(
                "no {noun} and the probe through nginx failed ({why}): first deployment, nothing is live"
            )],
        }),
        (Include::Missing, Probe::Answered(q)) => Ok(live_is(
            q.clone(),
            vec![format!(
                "no {noun}, but nginx answers as {}: taking it as live; the switch will create the {noun}",
                q.name
            )],
        )),
        (Include::NamesNone, Probe::Failed(why)) => Ok(Detection {
            live: None,
            idle: first,
            warnings: vec![format!(
                "the {noun} names no configured port and the probe failed ({why}): nothing of ours is live"
            )],
        }),
        (Include::Maintenance(p), Probe::Failed(_)) => Ok(live_is(
            p.clone(),
            vec![format!(
                "maintenance is on: nginx answers every request with the maintenance page; \
                 {} ({}) is the profile `switch --live` returns to",
                p.name, p.port
            )],
        )),
        (Include::Maintenance(_), Probe::Answered(q)) => Err(format!(
            "the route is the maintenance page but nginx answers as {} ({}); refusing to guess where nginx routes",
            q.name, q.port
        )),
        (Include::NamesNone, Probe::Answered(q)) => Ok(live_is(
            q.clone(),
            vec![format!(
                "the {noun} names no configured port, but nginx answers as {}: taking it as live",
                q.name
            )],
        )),
    }
}

/// Upstream-pair mode: nginx balances over both ports and is never edited,
/// so the witnesses are which ports listen and, when both do (a deployment
/// between its start and the retiring of the old app), which one the last
/// deployment made live.
pub(crate) fn decide_pair(
    profiles: &[Profile],
    listening: &[bool],
    newer: Option<&Profile>,
) -> Result<Detection, String> {
    let [a, b] = profiles else {
        return Err("no profiles configured".into());
    };
    let live_is = |live: &Profile, warnings: Vec<String>| Detection {
        idle: if live == a { b.clone() } else { a.clone() },
        live: Some(live.clone()),
        warnings,
    };
    match listening {
        [false, false] => Ok(Detection {
            live: None,
            idle: a.clone(),
            warnings: vec!["neither port listens: first deployment, nothing is live".into()],
        }),
        [true, false] => Ok(live_is(a, vec![])),
        [false, true] => Ok(live_is(b, vec![])),
        _ => match newer {
            // Both run: a deployment between `start` and its switch, or one
            // whose build failed and still runs. Only the last confirmed
            // switch says which one is live; the other is not called
            // newer, it may be the failed one.
            Some(n) if n == a || n == b => Ok(live_is(
                n,
                vec![format!(
                    "both ports listen; {} is live (the last confirmed switch went to it), {} also runs: \
                     a deployment in progress, or one that failed and was not stopped",
                    n.name,
                    if n == a { &b.name } else { &a.name }
                )],
            )),
            _ => Err(format!(
                "both {} ({}) and {} ({}) listen and no confirmed switch says which one is live; \
                 stop the one that should not serve by hand (`stop --profile NAME --force`)",
                a.name, a.port, b.name, b.port
            )),
        },
    }
}

/// The profile the last switch made live, from `switch.json`, if readable.
/// Read without a [`StateDir`]'s side effects: detection moves nothing aside.
fn last_switched(config: &Config) -> Option<Profile> {
    let path = StateDir::read_only(&config.state_dir).switched_path();
    let bytes = read_own_capped(&path, 64 * 1024).ok()??;
    let record: Switched = serde_json::from_slice(&bytes).ok()?;
    config.profile(&record.active.name).cloned()
}

/// Both witnesses and the decision, for `profile --json` and the stages.
#[derive(Debug, Clone)]
pub struct Observed {
    pub probe: Probe,
    pub include: Include,
    pub decision: Result<Detection, String>,
}

/// Probes nginx, reads the mode's witness and decides.
pub fn observe(config: &Config) -> Result<Observed> {
    let (probe, include, decision) = match route::of(config).witness()? {
        Witness::Route(include) => {
            let probe = probe(config);
            let decision = decide(&config.profiles, &probe, &include, route::of(config).noun());
            (probe, include, decision)
        }
        // No probe through nginx: while a port is down, a request to it
        // makes nginx take that server out of rotation for its fail_timeout.
        Witness::Listening(listens) => (
            Probe::Failed("not used in upstream-pair mode".into()),
            Include::Missing,
            decide_pair(&config.profiles, &listens, last_switched(config).as_ref()),
        ),
    };
    let decision = match compose::of(config) {
        Some(c) => cross_check(config, c, decision),
        None => decision,
    };
    Ok(Observed {
        probe,
        include,
        decision,
    })
}

/// Probes, reads and decides; a disagreement is an error (exit 1).
pub(crate) fn detect(config: &Config) -> Result<Detection> {
    observe(config)?.decision.map_err(|e| anyhow!(e))
}

/// The profile nginx routes to *now*, which `stop` never touches, whatever
/// the plan or the command line says. A plan from an earlier stage (or a
/// profile named by hand) may be out of date, so those cases detect afresh.
pub fn live_now(ctx: &Context, explicit: bool) -> Result<Option<Profile>> {
    if ctx.from_plan || explicit {
        Ok(detect(&ctx.config)
            .context("cannot tell which profile is live right now, so nothing is stopped")?
            .live)
    } else {
        Ok(ctx.slots.live.clone())
    }
}

/// Compose backend: the decision must fit which services run. nginx
/// routing to a profile whose service is stopped while the other one runs
/// means the witnesses describe a world that is not there: refuse, as when
/// they disagree, rather than stop the one app that serves.
fn cross_check(
    config: &Config,
    compose: &crate::config::Compose,
    decision: Result<Detection, String>,
) -> Result<Detection, String> {
    let mut d = decision?;
    let Some(live) = d.live.clone() else {
        return Ok(d);
    };
    let other = config.other(&live).clone();
    let runs = |p: &Profile| {
        let service = compose::service(compose, config, p);
        // Paused and restarting containers are the service's own too.
        compose::up_container(compose, service)
            .map(|c| c.is_some())
            .map_err(|e| format!("cannot ask docker which services run: {e:#}"))
    };
    let (live_runs, other_runs) = (runs(&live)?, runs(&other)?);
    match (live_runs, other_runs) {
        (true, _) => Ok(d),
        (false, true) => Err(format!(
            "nginx routes to {} ({}) but its service {} is not running, while {}'s service {} runs; refusing to guess which is live (`switch --to {}` if that one should serve)",
            live.name,
            live.port,
            compose::service(compose, config, &live),
            other.name,
            compose::service(compose, config, &other),
            other.name
        )),
        (false, false) => {
            d.warnings.push(format!(
                "nginx routes to {} but neither service runs",
                live.name
            ));
            Ok(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> Vec<Profile> {
        vec![
            Profile {
                name: "real1".into(),
                port: 8081,
            },
            Profile {
                name: "real2".into(),
                port: 8082,
            },
        ]
    }

    fn p(i: usize) -> Profile {
        profiles()[i].clone()
    }

    fn failed() -> Probe {
        Probe::Failed("HTTP 502".into())
    }

    #[test]
    fn upstream_pair_wording_follows_the_last_confirmed_switch() {
        let d = decide_pair(&profiles(), &[true, true], Some(&p(0))).unwrap();
        assert_eq!((d.live.clone(), d.idle.clone()), (Some(p(0)), p(1)));
        // real2 may be a build that failed: it is never called the newer.
        assert!(!d.warnings[0].contains("newer"), "{:?}", d.warnings);
        assert!(d.warnings[0].contains("failed"), "{:?}", d.warnings);
        let e = decide_pair(&profiles(), &[true, true], None).unwrap_err();
        assert!(!e.contains("newer") && e.contains("live"), "{e}");
        let d = decide_pair(&profiles(), &[false, true], None).unwrap();
        assert_eq!(d.live, Some(p(1)));
    }

    #[test]
    fn agreeing_witnesses_name_the_live_profile() {
        let d = decide(
            &profiles(),
            &Probe::Answered(p(0)),
            &Include::Names(p(0)),
            "include file",
        )
        .unwrap();
        assert_eq!(d.live, Some(p(0)));
        assert_eq!(d.idle, p(1));
        assert!(d.warnings.is_empty());
        let d = decide(
            &profiles(),
            &Probe::Answered(p(1)),
            &Include::Names(p(1)),
            "include file",
        )
        .unwrap();
        assert_eq!((d.live, d.idle), (Some(p(1)), p(0)));
    }

    #[test]
    fn a_failed_probe_defers_to_the_include_file() {
        // The book would call real2 live here and kill a sick but live real1.
        let d = decide(
            &profiles(),
            &failed(),
            &Include::Names(p(0)),
            "include file",
        )
        .unwrap();
        assert_eq!(d.live, Some(p(0)));
        assert_eq!(d.idle, p(1));
        assert!(d.warnings[0].contains("HTTP 502"));
    }

    #[test]
    fn nothing_at_all_is_a_first_deployment() {
        let d = decide(&profiles(), &failed(), &Include::Missing, "include file").unwrap();
        assert_eq!(d.live, None);
        assert_eq!(d.idle, p(0));
        assert!(d.warnings[0].contains("first deployment"));
    }

    #[test]
    fn disagreement_is_an_error_naming_both() {
        let e = decide(
            &profiles(),
            &Probe::Answered(p(1)),
            &Include::Names(p(0)),
            "include file",
        )
        .unwrap_err();
        assert!(e.contains("real1") && e.contains("real2"), "{e}");
        assert!(decide(
            &profiles(),
            &Probe::Answered(p(1)),
            &Include::NamesBoth,
            "include file"
        )
        .is_err());
        assert!(decide(&profiles(), &failed(), &Include::NamesBoth, "include file").is_err());
    }

    #[test]
    fn the_probe_alone_is_believed_when_the_include_says_nothing() {
        for include in [Include::Missing, Include::NamesNone] {
            let d = decide(
                &profiles(),
                &Probe::Answered(p(1)),
                &include,
                "include file",
            )
            .unwrap();
            assert_eq!((d.live, d.idle), (Some(p(1)), p(0)));
        }
        let d = decide(&profiles(), &failed(), &Include::NamesNone, "include file").unwrap();
        assert_eq!((d.live, d.idle), (None, p(0)));
    }

    #[test]
    fn each_mode_names_its_own_witness() {
        let e = decide(
            &profiles(),
            &Probe::Answered(p(1)),
            &Include::Names(p(0)),
            "link",
        )
        .unwrap_err();
        assert!(e.contains("but the link routes to"), "{e}");
        assert!(!e.contains("include"), "{e}");
    }
}
