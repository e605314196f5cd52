//! `profile --status`: for each profile, its port, live or idle, what runs
//! there (pid, command, since when), the build `start` launched there
//! (artifact, size, sha256, mtime) and the deployment that started it.
//!
//! Read only, like the rest of `profile`: no lock, no state written. The
//! build comes from `launched-PROFILE.json` (what `start` recorded, its
//! sha256 hashed at launch), shown only while that process still runs: a
//! record whose process is gone describes nothing that runs.

use std::path::Path;
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use nonstop_common::app::artifact;
use nonstop_common::route::detect::Observed;
use nonstop_common::state::{Launched, StateDir};
use nonstop_common::sys::procs::{self, listening};
use nonstop_common::sys::time::{now_unix_ms, utc};
use nonstop_common::{Config, Log, Profile};

use crate::table::{align, plain};

/// `profile`'s log, for the warnings of this view (named here rather than
/// taken from lib.rs, which uses this file).
const LOG: Log = Log::new("profile");

/// The `--json` document of `--status`.
/// `maintenance`: what `profile` says of the maintenance page (`null`: off).
pub(crate) fn report(config: &Config, observed: &Observed, maintenance: Value) -> Value {
    let state = StateDir::read_only(&config.state_dir);
    let now = now_unix_ms();
    let live = observed.decision.as_ref().ok().and_then(|d| d.live.clone());
    let profiles: Vec<Value> = config
        .profiles
        .iter()
        .map(|p| profile_view(&state, p, live.as_ref(), observed, now))
        .collect();
    json!({
        "mode": config.nginx.mode,
        "live": live.as_ref().map(|p| &p.name),
        "error": observed.decision.as_ref().err(),
        "maintenance": maintenance,
        "profiles": profiles,
    })
}

fn profile_view(
    state: &StateDir,
    p: &Profile,
    live: Option<&Profile>,
    observed: &Observed,
    now: u64,
) -> Value {
    let seen = listening(p.port).unwrap_or_default();
    let pid = seen.pids.first().copied();
    let started = pid.and_then(procs::started_unix_ms);
    let role = match (&observed.decision, live) {
        (Err(_), _) => "unknown",
        (Ok(_), Some(l)) if l == p => "live",
        (Ok(_), _) => "idle",
    };
    // A record that cannot be read (corrupt) is shown as no record, with a
    // warning: this view changes nothing, and the next stage sets it aside.
    let launched: Option<Launched> = state
        .read(&state.launched_path(&p.name), &LOG)
        .unwrap_or_else(|e| {
            LOG.warn(format!(
                "{}: {e:#}; its build and deployment are not shown",
                p.name
            ));
            None
        });
    let running = launched
        .as_ref()
        .filter(|l| procs::is_same_alive(l.pid, l.start_time));
    json!({
        "profile": p.name,
        "port": p.port,
        "state": role,
        "listening": !seen.is_free(),
        "pid": pid,
        // Whole, unlike messages' 160 characters: the jar is at its end.
        "command": pid.map(|pid| procs::argv(pid).join(" ")),
        "started_unix_ms": started,
        "started_at": started.map(utc),
        "uptime_secs": started.map(|s| now.saturating_sub(s) / 1000),
        "build": running.map(build_view),
        "deployment": running.map(|l| json!({
            "id": l.deployment_id,
            "started_unix_ms": l.started_unix_ms,
            "started_at": utc(l.started_unix_ms),
        })),
    })
}

/// The build a launch record names: the artifact's facts now, its sha256
/// as recorded at launch (hashed now for a record of an older nonstop).
fn build_view(l: &Launched) -> Value {
    let path: &Path = &l.artifact;
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file());
    let mtime = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let sha256 = l
        .artifact_sha256
        .clone()
        .or_else(|| meta.as_ref().and_then(|_| artifact::sha256(path).ok()));
    json!({
        "artifact": path.file_name().map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
        "path": path,
        "size": meta.as_ref().map(|m| m.len()),
        "sha256": sha256,
        "mtime_unix_ms": mtime,
        "mtime": mtime.map(utc),
        "image_id": l.image_id,
    })
}

/// `12s`, `3m04s`, `2h05m`, `3d04h`.
pub(crate) fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The table for people, from the `--json` document (so both say the same).
pub(crate) fn table(doc: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows = vec![vec![
        "PROFILE".to_string(),
        "PORT".into(),
        "STATE".into(),
        "PID".into(),
        "UPTIME".into(),
        "BUILD".into(),
        "SHA256".into(),
        "DEPLOYMENT".into(),
    ]];
    let mut details = Vec::new();
    for p in doc["profiles"].as_array().into_iter().flatten() {
        let build = &p["build"];
        let sha = build["sha256"]
            .as_str()
            .map(|s| s.get(..12).unwrap_or(s).to_string())
            .unwrap_or_else(|| "-".into());
        let state = match (p["state"].as_str(), p["listening"].as_bool()) {
            (Some(s), Some(false)) => format!("{s} (nothing listens)"),
            (Some(s), _) => s.to_string(),
            _ => "-".into(),
        };
        rows.push(vec![
            text(&p["profile"]),
            text(&p["port"]),
            state,
            text(&p["pid"]),
            p["uptime_secs"]
                .as_u64()
                .map(uptime)
                .unwrap_or_else(|| "-".into()),
            text(&build["artifact"]),
            sha,
            text(&p["deployment"]["id"]),
        ]);
        if let Some(pid) = p["pid"].as_i64() {
            details.push(plain(&format!(
                "{}: pid {pid} since {}: {}",
                text(&p["profile"]),
                text(&p["started_at"]),
                text(&p["command"])
            )));
        }
        if build.is_object() {
            let by = match p["deployment"]["id"].as_str() {
                Some(id) => format!("by deployment {id}"),
                None => "by hand".to_string(),
            };
            details.push(plain(&format!(
                "{}: build {} ({} bytes, modified {}), sha256 {}, started {by} at {}",
                text(&p["profile"]),
                text(&build["path"]),
                text(&build["size"]),
                text(&build["mtime"]),
                text(&build["sha256"]),
                text(&p["deployment"]["started_at"])
            )));
        }
    }
    let mut out = align(&rows);
    if let Some(m) = doc["maintenance"].as_object() {
        out.push(plain(&format!(
            "maintenance: ON since {} by {} (nginx answers 503; `switch --live` ends it)",
            text(&m["since"]),
            text(&m["by"])
        )));
    }
    if let Some(e) = doc["error"].as_str() {
        out.push(plain(&format!("live: cannot tell: {e}")));
    }
    out.extend(details);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(5), "5s");
        assert_eq!(uptime(184), "3m04s");
        assert_eq!(uptime(7500), "2h05m");
        assert_eq!(uptime(3 * 86_400 + 4 * 3600), "3d04h");
    }
}
