//! `profile`: which profile is live and which is idle.
//!
//! The book's profile.sh, with its rules fixed (see `nonstop_common::route::detect`).
//! It changes nothing and takes no lock, so an operator can run it at any
//! time, even while a deployment holds the lock (`--dry-run` is accepted
//! like on every stage, and changes nothing more).
//!
//! - `profile` prints the idle profile's name;
//! - `profile --port` prints the idle port;
//! - `profile --json` prints both witnesses, the decision and, per profile,
//!   whether its port is listening and by which pid.
//!
//! - `profile --status` shows, per profile, its port, live or idle, what
//!   runs there, its build and the deployment that started it (see [`status`]);
//! - `profile --history [N]` lists the last N deployments, newest first
//!   (see [`history`]); `--failed` only the failed ones;
//!
//! - `profile --check` checks everything a deployment needs on this server
//!   (see [`check`]) and exits 0 only when one can succeed.
//!
//! When a switch was left unsettled (its journal is in the state dir), both
//! forms say what the next mutating stage will do about it (`pending_repair`).

use std::ffi::OsString;

use anyhow::{anyhow, Result};
use clap::Parser;
use serde_json::{json, Value};

use nonstop_common::app::compose;
use nonstop_common::nginx::probe::Probe;
use nonstop_common::route;
use nonstop_common::route::detect::{self, Observed};
use nonstop_common::route::mode::Include;
use nonstop_common::state::StateDir;
use nonstop_common::switch::{journal, maintenance};
use nonstop_common::sys::procs::{cmdline, listening};
use nonstop_common::sys::time::utc;
use nonstop_common::{CommonArgs, Config, Log};

pub mod check;
mod history;
mod status;
mod table;
mod unwritable;

pub(crate) const LOG: Log = Log::new("profile");

/// Print the idle profile (the one the next deployment goes to).
#[derive(Debug, Parser)]
#[command(name = "profile", version = nonstop_common::VERSION, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print the idle port instead of the idle profile's name
    #[arg(long, conflicts_with_all = ["json", "status", "history"])]
    pub port: bool,

    /// Print live, idle, both witnesses and each port's listener as JSON (with --status, --history: their facts as JSON)
    #[arg(long)]
    pub json: bool,

    /// Show each profile: port, live or idle, what runs there (pid, command, uptime), its build (artifact, size, sha256) and the deployment that started it
    #[arg(long, conflicts_with = "history")]
    pub status: bool,

    /// Show the last N deployments, newest first: id, start, from -> to, outcome, each stage's duration, the build
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "10",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub history: Option<u64>,

    /// With --history: only the failed deployments
    #[arg(long, requires = "history")]
    pub failed: bool,

    /// Check everything a deployment needs here (nginx's config, sudo, directories, PATH, ports, probe); one line per check, exit 0 only when all pass
    #[arg(long, conflicts_with_all = ["json", "port", "status", "history"])]
    pub check: bool,
}

/// Entry point of the `profile` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    if args.check {
        return preflight(&args.common);
    }
    let config = args.common.load_config()?;
    if let Some(n) = args.history {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        return show_history(&config, n, args.failed, args.json);
    }
    if let Some(warning) = nonstop_common::app::ports::ephemeral_warning(&config) {
        LOG.warn(warning);
    }
    let observed = detect::observe(&config)?;
    if args.status {
        let doc = status::report(&config, &observed, maintenance_view(&config));
        return if args.json {
            print_answer(&serde_json::to_string_pretty(&doc)?)
        } else {
            print_answer(&status::table(&doc))
        };
    }
    let repair = journal::pending_repair(&config);
    if args.json {
        print_answer(&serde_json::to_string_pretty(&with_repair(
            report(&config, &observed),
            repair.as_ref(),
        ))?)?;
        return observed.decision.map(|_| ()).map_err(|e| anyhow!(e));
    }
    if let Some(r) = &repair {
        LOG.warn(format!("pending repair: {}", r.action));
    }
    let detection = observed.decision.map_err(|e| anyhow!(e))?;
    for warning in &detection.warnings {
        LOG.warn(warning);
    }
    if args.port {
        print_answer(&detection.idle.port.to_string())
    } else {
        print_answer(&detection.idle.name)
    }
}

/// `--history N`: the last `n` deployments (only failed ones with
/// `failed`), a table or one JSON line each.
fn show_history(config: &Config, n: usize, failed: bool, json: bool) -> Result<()> {
    let state = StateDir::read_only(&config.state_dir);
    let (lines, skipped) = state.read_history()?;
    if skipped > 0 {
        LOG.warn(format!(
            "{skipped} history line(s) could not be read (torn or from another version) and are left out"
        ));
    }
    let list: Vec<_> = history::deployments(lines)
        .into_iter()
        .filter(|d| !failed || d.failed)
        .take(n)
        .collect();
    if json {
        let text: Vec<String> = list
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        if text.is_empty() {
            return Ok(());
        }
        return print_answer(&text.join("\n"));
    }
    if list.is_empty() {
        return print_answer(if failed {
            "no failed deployment in the history"
        } else {
            "no deployment in the history"
        });
    }
    print_answer(&history::table(&list))
}

/// Whether nginx serves the maintenance page: since when, by whom (`null`
/// when not).
pub(crate) fn maintenance_view(config: &Config) -> Value {
    let Ok(Some(keep)) = maintenance::is_on(config) else {
        return Value::Null;
    };
    let record = maintenance::record(config, &LOG);
    json!({
        "returns_to": keep.name,
        "since_unix_ms": record.as_ref().map(|r| r.since_unix_ms),
        "since": record.as_ref().map(|r| utc(r.since_unix_ms)),
        "by": record.as_ref().map(|r| r.by.clone()),
        "retry_after": record.as_ref().map(|r| r.retry_after),
    })
}

/// `--check`: one line per check on stdout; a bad config exits 2 as on
/// every stage, any failed check 1.
fn preflight(common: &CommonArgs) -> Result<()> {
    let config = match common.load_config() {
        Ok(c) => c,
        Err(e) => {
            print_answer(&format!(
                "FAIL: the config: {e:#} — fix that key (the line above says which), then run `profile --check` again"
            ))?;
            return Err(e);
        }
    };
    let lines = check::run(&config, &LOG);
    let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
    print_answer(&text.join("\n"))?;
    let failed = lines
        .iter()
        .filter(|l| matches!(l, check::Line::Fail(..)))
        .count();
    if failed > 0 {
        return Err(anyhow!(
            "{failed} of {} checks failed: a deployment here would fail (each FAIL line says the fix)",
            lines.len()
        ));
    }
    Ok(())
}

/// Writes the answer and a newline to stdout. A stdout that is gone (a pipe
/// whose reader exited) is a failure, exit 1, not a panic: the script that
/// asked did not get its answer.
fn print_answer(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| anyhow!("cannot print the answer ({text}) on stdout: {e}"))
}

/// Adds what the next mutating stage will repair (`null` when nothing).
fn with_repair(mut doc: Value, repair: Option<&journal::Repair>) -> Value {
    doc["pending_repair"] = json!(repair);
    doc
}

/// A profile as `--json` shows it.
fn slot_view(p: &nonstop_common::Profile) -> Value {
    json!({"profile": p.name, "port": p.port})
}

/// The `--json` document.
pub(crate) fn report(config: &Config, observed: &Observed) -> Value {
    let (live, idle, warnings, error) = match &observed.decision {
        Ok(d) => (
            json!(d.live.as_ref().map(slot_view)),
            slot_view(&d.idle),
            json!(d.warnings),
            Value::Null,
        ),
        Err(e) => (Value::Null, Value::Null, json!([]), json!(e)),
    };
    let profiles: Vec<Value> = config
        .profiles
        .iter()
        .map(|p| {
            let seen = listening(p.port).unwrap_or_default();
            let pid = seen.pids.first().copied();
            let mut view = json!({
                "profile": p.name,
                "port": p.port,
                "listening": !seen.is_free(),
                "pid": pid,
                "command": pid.map(cmdline),
            });
            if let Some(c) = compose::of(config) {
                let service = compose::service(c, config, p);
                view["service"] = json!(service);
                view["container"] = match compose::containers(c, service) {
                    Ok(list) => match list.into_iter().next() {
                        Some(k) => json!({
                            "id": k.id,
                            "name": k.name,
                            "image": k.image,
                            "image_id": k.image_id,
                            "state": k.status,
                            "exit_code": k.exit_code,
                            "started_at": k.started_at,
                        }),
                        None => Value::Null,
                    },
                    Err(e) => json!({"error": format!("{e:#}")}),
                };
            }
            view
        })
        .collect();
    let probe = match &observed.probe {
        Probe::Answered(p) => json!({"url": config.probe_url, "answered": p.name}),
        Probe::Failed(why) => json!({"url": config.probe_url, "failed": why}),
    };
    let names = match &observed.include {
        Include::Names(p) | Include::Maintenance(p) => json!(p.name),
        _ => Value::Null,
    };
    let state = match &observed.include {
        Include::Missing => "missing",
        Include::Names(_) => "names-profile",
        Include::NamesNone => "names-no-profile",
        Include::NamesBoth => "names-both",
        Include::Maintenance(_) => "maintenance",
    };
    // A mode that writes nothing (the upstream pair) has no route to show.
    let mode = route::of(config);
    let include = if mode.directory().is_none() {
        Value::Null
    } else {
        json!({"path": mode.id().path, "describe": mode.describe(), "state": state, "profile": names})
    };
    json!({
        "mode": config.nginx.mode,
        "live": live,
        "idle": idle,
        "error": error,
        "warnings": warnings,
        "probe": probe,
        "include": include,
        "maintenance": maintenance_view(config),
        "profiles": profiles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_of_zero_deployments_is_refused_by_name() {
        let err = Args::try_parse_from(["profile", "--history", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--history"), "{err}");
        let args = Args::try_parse_from(["profile", "--history"]).unwrap();
        assert_eq!(args.history, Some(10));
    }
}
