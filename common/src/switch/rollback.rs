//! `switch --rollback`: back to the profile nginx routed to before the last
//! switch, only while it still runs the build that was live there then
//! (what `switch.json` recorded) and still answers as itself; refused,
//! changing nothing, otherwise.

use anyhow::{anyhow, Context as _, Result};

use crate::app::health_rule;
use crate::config::Profile;
use crate::route::detect;
use crate::state::context::Context;
use crate::state::{Build, Launched, Switched};
use crate::sys::procs;

/// The profile to roll back to: the one that is not live now, provided its
/// app is still the build that was live there before the last switch (see
/// [`lineage`]) and still answers as itself. Refuses (changing nothing)
/// otherwise.
pub fn rollback_target(ctx: &Context) -> Result<Profile> {
    let config = &ctx.config;
    let live = detect::detect(config)
        .context("cannot tell which profile is live, so there is nothing to roll back from; use `switch --to NAME`")?
        .live
        .ok_or_else(|| anyhow!("nothing is live yet, so there is nothing to roll back from"))?;
    let back = config.other(&live).clone();
    let recorded: Option<Switched> = ctx.state.read(&ctx.state.switched_path(), &ctx.log)?;
    match &recorded {
        Some(r) if r.active == live && r.previous.as_ref() == Some(&back) => ctx.log.say(format!(
            "the last switch went from {} to {}; rolling back to {}",
            back.name, live.name, back.name
        )),
        _ => ctx.log.say(format!(
            "{} is live; rolling back to the other profile, {}",
            live.name, back.name
        )),
    }
    health_rule::check_health(config, &back).map_err(|why| {
        anyhow!(
            "refusing to roll back to {} ({}): {} does not answer {} ({why}); nginx still routes to {}, nothing was changed. Start it first (`start --profile {}`, `health --profile {} --no-switch`)",
            back.name,
            back.port,
            health_rule::health_url(config, &back),
            health_rule::health_words(config, &back),
            live.name,
            back.name,
            back.name
        )
    })?;
    ctx.log
        .say(format!("{} still answers as itself", back.name));
    let was_running = recorded
        .as_ref()
        .and_then(|r| r.previous_build.as_ref())
        .is_some_and(Build::is_running);
    let now = running_build(ctx, &back);
    match lineage(recorded.as_ref(), &back, &live, was_running, now.as_ref()) {
        Lineage::Same(words) => ctx.log.say(words),
        Lineage::Unknown(words) => ctx.log.warn(words),
        Lineage::Other { was, now } => {
            return Err(anyhow!(
                "refusing to roll back to {} ({}): it now runs {now}, not the build that was live there before the last switch, {was}; \
                 nginx still routes to {}, nothing was changed. To route to {} as it is now anyway: `switch --to {}`",
                back.name,
                back.port,
                live.name,
                back.name,
                back.name
            ))
        }
    }
    Ok(back)
}

/// The build `start` launched on `profile` (`launched-PROFILE.json`), if it
/// is for that port and still runs.
pub(crate) fn running_build(ctx: &Context, profile: &Profile) -> Option<Build> {
    let launched: Launched = ctx
        .state
        .read(&ctx.state.launched_path(&profile.name), &ctx.log)
        .ok()??;
    (launched.port == profile.port && procs::is_same_alive(launched.pid, launched.start_time))
        .then(|| Build::of(&launched))
}

/// Whether the app on the profile rolled back to is the build that was live
/// there before the last switch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lineage {
    /// It is: words for the log.
    Same(String),
    /// It is not: what was live, what runs now.
    Other { was: String, now: String },
    /// The records cannot tell: a warning; the health rule alone decides.
    Unknown(String),
}

/// Judges [`Lineage`] from the last switch's record (`recorded`, when it
/// went from `back` to `live`), the build that was live on `back` still
/// running or not, and what `start` launched on `back` since (`now`, when
/// it still runs there).
///
/// A `switch.json` with the builds is decided by the process: the one that
/// was live still runs, or rollback is refused. One without them (an older
/// nonstop's, or an app nonstop did not start) is decided by time: an app
/// started on `back` after nginx left it was never live behind that
/// switch, so it is refused too; one started before is taken, with a
/// warning that only the time could tell.
fn lineage(
    recorded: Option<&Switched>,
    back: &Profile,
    live: &Profile,
    was_running: bool,
    now: Option<&Build>,
) -> Lineage {
    let now_words = |now: Option<&Build>| match now {
        Some(b) => b.describe(),
        None => format!("an app nonstop did not start, on {}", back.port),
    };
    let Some(r) = recorded.filter(|r| r.active == *live && r.previous.as_ref() == Some(back))
    else {
        return Lineage::Unknown(format!(
            "switch.json does not record a switch from {} to {}, so which build was live on {} cannot be told",
            back.name, live.name, back.name
        ));
    };
    if let Some(was) = r.previous_build.as_ref().filter(|_| r.builds_recorded) {
        return if was_running {
            Lineage::Same(format!(
                "{} still runs {}, the build that was live before the switch",
                back.name,
                was.describe()
            ))
        } else {
            Lineage::Other {
                was: format!("{}, which is gone", was.describe()),
                now: now_words(now),
            }
        };
    }
    let when = crate::sys::time::utc(r.switched_unix_ms);
    let why = if r.builds_recorded {
        format!(
            "the last switch ({when}) could not tell which build {} ran (nonstop did not start it)",
            back.name
        )
    } else {
        format!(
            "switch.json, from an older nonstop, does not record which build {} ran before the last switch ({when})",
            back.name
        )
    };
    match now {
        Some(b) if b.started_unix_ms > r.switched_unix_ms => Lineage::Other {
            was: format!("whatever ran on {} until the last switch ({when})", back.name),
            now: format!("{}, started after that switch, so never live", b.describe()),
        },
        Some(b) => Lineage::Unknown(format!(
            "{why}; {} runs {}, started before that switch, so it is taken as the one that was live",
            back.name,
            b.describe()
        )),
        None => Lineage::Unknown(format!(
            "{why}, and nonstop did not start what runs on {} now; only its health tells",
            back.port
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str, port: u16) -> Profile {
        Profile {
            name: name.into(),
            port,
        }
    }

    fn build(jar: &str, pid: i32, started: u64) -> Build {
        Build {
            artifact: format!("/app/real1/{jar}").into(),
            artifact_size: Some(10),
            artifact_mtime_unix_ms: Some(started),
            pid,
            start_time: Some(7),
            container_id: None,
            started_unix_ms: started,
            deployment_id: Some("d-1".into()),
        }
    }

    /// The last switch, from real1 (v1, pid 10) to real2, at 1000.
    fn switched(builds: bool) -> Switched {
        Switched {
            active: profile("real2", 8082),
            previous: Some(profile("real1", 8081)),
            switched_unix_ms: 1000,
            deployment_id: Some("d-1".into()),
            active_build: builds.then(|| build("demo-v2.jar", 20, 900)),
            previous_build: builds.then(|| build("demo-v1.jar", 10, 100)),
            builds_recorded: builds,
        }
    }

    fn judge(recorded: Option<&Switched>, running: bool, now: Option<&Build>) -> Lineage {
        lineage(
            recorded,
            &profile("real1", 8081),
            &profile("real2", 8082),
            running,
            now,
        )
    }

    #[test]
    fn rollback_goes_to_the_build_that_was_live_while_it_runs() {
        let v1 = build("demo-v1.jar", 10, 100);
        assert!(matches!(
            judge(Some(&switched(true)), true, Some(&v1)),
            Lineage::Same(w) if w.contains("demo-v1.jar")
        ));
    }

    #[test]
    fn rollback_refuses_another_build_naming_both() {
        let v3 = build("demo-v3.jar", 30, 2000);
        for now in [Some(&v3), None] {
            let Lineage::Other { was, now } = judge(Some(&switched(true)), false, now) else {
                panic!("not refused");
            };
            assert!(was.contains("demo-v1.jar") && was.contains("gone"), "{was}");
            assert!(
                now.contains("demo-v3.jar") || now.contains("did not start"),
                "{now}"
            );
        }
    }

    #[test]
    fn an_older_records_rollback_goes_by_time() {
        let old = switched(false);
        let after = build("demo-v3.jar", 30, 2000);
        assert!(matches!(
            judge(Some(&old), false, Some(&after)),
            Lineage::Other { now, .. } if now.contains("started after that switch")
        ));
        let before = build("demo-v1.jar", 10, 100);
        assert!(matches!(
            judge(Some(&old), false, Some(&before)),
            Lineage::Unknown(w) if w.contains("older nonstop") && w.contains("taken as the one that was live")
        ));
        assert!(matches!(
            judge(Some(&old), false, None),
            Lineage::Unknown(_)
        ));
        // A record of a switch that is not the one being undone tells nothing.
        assert!(matches!(
            judge(None, false, Some(&after)),
            Lineage::Unknown(_)
        ));
        let other_way = Switched {
            active: profile("real1", 8081),
            previous: Some(profile("real2", 8082)),
            ..switched(true)
        };
        assert!(matches!(
            judge(Some(&other_way), true, Some(&after)),
            Lineage::Unknown(_)
        ));
    }
}
