//! `profile`: which profile is live and which is idle.
//!
//! The book's profile.sh, with its rules fixed (see `nonstop_common::detect`).
//! It changes nothing and takes no lock, so an operator can run it at any
//! time, even while a deployment holds the lock (`--dry-run` is accepted
//! like on every stage, and changes nothing more).
//!
//! - `profile` prints the idle profile's name;
//! - `profile --port` prints the idle port;
//! - `profile --json` prints both witnesses, the decision and, per profile,
//!   whether its port is listening and by which pid.
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

use nonstop_common::compose;
use nonstop_common::config::Mode;
use nonstop_common::detect::{self, Observed, Probe};
use nonstop_common::nginx;
use nonstop_common::procs::{cmdline, listening};
use nonstop_common::route::Include;
use nonstop_common::{CommonArgs, Config, Log};

pub mod check;

pub const LOG: Log = Log::new("profile");

/// Print the idle profile (the one the next deployment goes to).
#[derive(Debug, Parser)]
#[command(name = "profile", version = nonstop_common::VERSION, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print the idle port instead of the idle profile's name
    #[arg(long, conflicts_with = "json")]
    pub port: bool,

    /// Print live, idle, both witnesses and each port's listener as JSON
    #[arg(long)]
    pub json: bool,

    /// Check everything a deployment needs here (nginx's config, sudo, directories, PATH, ports, probe); one line per check, exit 0 only when all pass
    #[arg(long, conflicts_with_all = ["json", "port"])]
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
    if let Some(warning) = nonstop_common::ports::ephemeral_warning(&config) {
        LOG.warn(warning);
    }
    let observed = detect::observe(&config)?;
    let repair = nginx::pending_repair(&config);
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
fn with_repair(mut doc: Value, repair: Option<&nginx::Repair>) -> Value {
    doc["pending_repair"] = json!(repair);
    doc
}

/// A profile as `--json` shows it.
fn slot_view(p: &nonstop_common::Profile) -> Value {
    json!({"profile": p.name, "port": p.port})
}

/// The `--json` document.
pub fn report(config: &Config, observed: &Observed) -> Value {
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
        Include::Names(p) => json!(p.name),
        _ => Value::Null,
    };
    let state = match &observed.include {
        Include::Missing => "missing",
        Include::Names(_) => "names-profile",
        Include::NamesNone => "names-no-profile",
        Include::NamesBoth => "names-both",
    };
    // Upstream-pair mode reads and writes no include: nothing to show.
    let include = if config.nginx.mode == Mode::UpstreamPair {
        Value::Null
    } else {
        json!({"path": nonstop_common::route::path(config), "describe": nonstop_common::route::describe(config), "state": state, "profile": names})
    };
    json!({
        "mode": match config.nginx.mode {
            Mode::Include => "include",
            Mode::Symlink { .. } => "symlink",
            Mode::UpstreamPair => "upstream-pair",
        },
        "live": live,
        "idle": idle,
        "error": error,
        "warnings": warnings,
        "probe": probe,
        "include": include,
        "profiles": profiles,
    })
}
