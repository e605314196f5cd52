//! `bench --modes N`: every way nonstop can route and run the app, side by
//! side in one run, N deployments each under the same load: the include
//! file, the symlink, the upstream pair (which always retires) and the
//! Docker Compose backend (images built here, as tests/tests/compose.rs
//! builds them) and the realpath link (switched without a reload), each
//! with `app.retire` off and on. One row per mode: deploy wall time,
//! overhead over the app's own start-up, the switch's confirmation after
//! the route was written, kept-alive connections closed per switch,
//! requests failed, POSTs failed (a client does not retry a POST on a
//! closed kept-alive connection), the latency around the switch, and the
//! steady throughput and p99 before any deployment (the same clients
//! without pauses for [`STEADY`]: what routing costs per request, say the
//! realpath mode's realpath() against the include's fixed variable). A mode that cannot run here (no Docker
//! engine) gets a row saying why; only a failed request or stage fails the
//! run.
//!
//! The upstream pair runs twice more with a pool of idle connections in the
//! upstream (`keepalive 8;`, HTTP/1.1): with nginx's default retry, where
//! nonstop refuses the setup before anything is stopped (the row shows the
//! refusal), and with `proxy_next_upstream ... non_idempotent`, where it
//! deploys and the row counts the POSTs.

use std::fmt::Write as _;
use std::fs;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;
use tests::{Layout, SetupOptions};

use crate::report::{self, Machine, Summary};
use crate::{load, run_deployments, setup, write, Args, ScenarioOpts};

#[derive(Debug, Serialize)]
struct ModeRow {
    mode: &'static str,
    retire: bool,
    /// Why it did not run, if it did not.
    skipped: Option<String>,
    /// nonstop's refusal of the setup, when refusing is the expected outcome.
    refused: Option<String>,
    summary: Option<Summary>,
    /// Before the deployments: the load without pauses.
    steady: Option<Steady>,
    stages_ok: bool,
}

/// The load without pauses for [`STEADY`], nothing deployed meanwhile.
#[derive(Debug, Serialize)]
struct Steady {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: usize,
}

/// How long the steady measurement runs.
const STEADY: Duration = Duration::from_secs(6);

/// The modes: (name, layout, compose, retire, the pair's pool and retry).
type Case = (&'static str, Layout, bool, bool, Option<&'static str>);

const CASES: [Case; 11] = [
    ("include", Layout::Include, false, false, None),
    ("include", Layout::Include, false, true, None),
    ("realpath", Layout::Realpath, false, false, None),
    ("realpath", Layout::Realpath, false, true, None),
    ("symlink", Layout::Symlink, false, false, None),
    ("symlink", Layout::Symlink, false, true, None),
    ("upstream pair", Layout::Pair, false, true, None),
    (
        "upstream pair, keepalive pool",
        Layout::Pair,
        false,
        true,
        Some("error timeout"),
    ),
    (
        "upstream pair, pool + non_idempotent",
        Layout::Pair,
        false,
        true,
        Some("error timeout non_idempotent"),
    ),
    ("compose", Layout::Include, true, false, None),
    ("compose", Layout::Include, true, true, None),
];

pub fn run(args: &Args, n: usize) -> Result<bool> {
    if n == 0 {
        anyhow::bail!("--modes must be at least 1");
    }
    let mut rows = Vec::new();
    let chosen = CASES
        .into_iter()
        .filter(|(mode, ..)| args.only.as_deref().is_none_or(|only| mode.contains(only)));
    for case in chosen {
        let (mode, _, _, retire, _) = case;
        eprintln!(
            "bench: modes: {mode}, retire {}: {n} deployments",
            if retire { "on" } else { "off" }
        );
        rows.push(row(args, n, case));
    }

    let machine = report::machine();
    let out = markdown(args, n, &machine, &rows);
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write(
        &args.out.join("modes.json"),
        &serde_json::to_string_pretty(&serde_json::json!({
            "machine": machine,
            "deployments_per_mode": n,
            "app_startup_delay_ms": args.startup_ms,
            "slow_request_ms": args.slow_ms,
            "modes": rows,
        }))?,
    )?;
    write(&args.out.join("modes.md"), &out)?;
    println!("{out}");
    println!(
        "bench: wrote {} and modes.md there",
        args.out.join("modes.json").display()
    );
    Ok(rows
        .iter()
        .all(|r| r.stages_ok && r.summary.as_ref().is_none_or(Summary::clean)))
}

/// One mode's row: its summary, nonstop's refusal, or why it did not run.
fn row(args: &Args, n: usize, case: Case) -> ModeRow {
    let (mode, layout, compose, retire, pool) = case;
    match one(args, n, layout, compose, retire, pool) {
        Ok(Outcome::Ran(summary, steady, ok)) => ModeRow {
            mode,
            retire,
            skipped: None,
            refused: None,
            stages_ok: ok && steady.failed == 0,
            summary: Some(*summary),
            steady: Some(steady),
        },
        Ok(Outcome::Refused(why)) => ModeRow {
            mode,
            retire,
            skipped: None,
            refused: Some(why),
            summary: None,
            steady: None,
            stages_ok: true,
        },
        Err(e) => {
            eprintln!("bench: modes: {mode} did not run: {e:#}");
            ModeRow {
                mode,
                retire,
                skipped: Some(format!("{e:#}")),
                refused: None,
                summary: None,
                steady: None,
                stages_ok: !compose,
            }
        }
    }
}

/// modes.md: the run in words, then a row per mode.
fn markdown(args: &Args, n: usize, machine: &Machine, rows: &[ModeRow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {} × {}, {}, kernel {}, {}, {}. {n} deployments per mode; app start-up delay {} ms (the compose image: the static demo server with the same delay); a {} ms request in flight at each switch; load: {}.\n",
        machine.cores,
        machine.cpu,
        machine.os,
        machine.kernel,
        machine.nginx,
        machine.java,
        args.startup_ms,
        args.slow_ms,
        report::LOAD_WORDS
    );
    let _ = writeln!(
        out,
        "| mode | retire | deploy wall | app start-up | overhead (hook time) | overhead to confirmed | of which nonstop + nginx | confirmed after the write | retiring | keep-alive closed per switch | requests failed | POSTs failed | p99 after / before switch | over 100 ms after (before) | steady req/s, p99 |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(15));
    for r in rows {
        mode_line(&mut out, r);
    }
    let _ = writeln!(
        out,
        "\nMedians over the deployments; failures are totals. *Overhead to confirmed*: the stages' time up to `switch` saying it confirmed, less the app's start-up; *of which nonstop + nginx*: that, less the old app's own shutdown `stop` waited for; *confirmed after the write*: from the include or link written (its mtime; the rename in the realpath mode) to `switch` printing its confirmation (seen by a 2 ms poll of its stderr); *retiring*: `switch` after its confirmation (waiting for nginx's previous workers, which a request in flight keeps, then stopping the previous app); *steady*: before the deployments, the same clients without pauses for {} s, nothing deployed: requests answered per second and their p99.",
        STEADY.as_secs()
    );
    out
}

/// A mode's line in the table: its medians, or why it did not run.
fn mode_line(out: &mut String, r: &ModeRow) {
    let ms = |x: f64| format!("{:.0} ms", x * 1000.0);
    let retire = if r.retire { "on" } else { "off" };
    match &r.summary {
        Some(s) => {
            let _ = writeln!(
                out,
                "| {} | {retire} | {:.2} s | {:.2} s | {} | {} | {} | {} | {} | {:.1} | {} of {} | {} of {} | {} ({:.1} / {:.1} ms) | {} ({}) | {} |",
                r.mode,
                s.median_wall_s,
                s.median_app_startup_s,
                ms(s.median_overhead_s),
                ms(s.median_overhead_confirmed_s),
                ms(s.median_overhead_own_s),
                s.median_switch_confirmed_s
                    .map(ms)
                    .unwrap_or_else(|| "–".into()),
                s.median_retire_s.map(ms).unwrap_or_else(|| "–".into()),
                s.keepalive_read_errors as f64 / s.deployments.max(1) as f64,
                s.failed,
                s.requests,
                s.post_failed,
                s.post_requests,
                s.median_p99_ratio
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "–".into()),
                s.median_after.p99_ms,
                s.median_before.p99_ms,
                s.after_over_100ms,
                s.before_over_100ms,
                r.steady
                    .as_ref()
                    .map(|st| format!("{:.0}, {:.1} ms", st.requests_per_s, st.p99_ms))
                    .unwrap_or_else(|| "–".into()),
            );
        }
        None => {
            let (what, why, limit) = match &r.refused {
                Some(why) => ("refused before anything was stopped", why.as_str(), 400),
                None => ("not run", r.skipped.as_deref().unwrap_or(""), 120),
            };
            let why: String = why.chars().take(limit).collect();
            let _ = writeln!(
                out,
                "| {} | {retire} | {what}: {} |{}",
                r.mode,
                why.replace('|', "/").replace('\n', " "),
                " |".repeat(13)
            );
        }
    }
}

/// What one mode gave.
enum Outcome {
    Ran(Box<Summary>, Steady, bool),
    /// The deployment's first stage refused the setup, as it must: why.
    Refused(String),
}

/// One mode: its own nginx, apps (or containers) and load.
fn one(
    args: &Args,
    n: usize,
    layout: Layout,
    compose: bool,
    retire: bool,
    pool: Option<&'static str>,
) -> Result<Outcome> {
    let setup = setup(
        "bench-modes",
        &SetupOptions {
            startup_delay_ms: args.startup_ms,
            layout,
            retire,
            compose,
            pair_pool: pool,
            ..Default::default()
        },
    )?;
    crate::warmup_config(&setup, args.warmup_requests)?;
    setup.bootstrap("v1")?;
    if pool.is_some_and(|retry| !retry.contains("non_idempotent")) {
        // A pool nginx never resends a POST from: the first stage must refuse
        // it, and stop nothing.
        let live = setup.launched_pid("real1");
        let stop = setup.hook("stop", &[], Some("bench-pool"))?;
        if stop.code() != 1 || !stop.stderr.contains("keepalive") {
            anyhow::bail!(
                "a pool nginx never resends a POST from was not refused: {}",
                stop.stderr
            );
        }
        if setup.launched_pid("real1") != live || !live.is_some_and(tests::alive) {
            anyhow::bail!("the refusal stopped the live app");
        }
        let why = stop
            .stderr
            .lines()
            .find(|l| l.contains("keepalive"))
            .unwrap_or_default()
            .trim_start_matches("stop: error: ")
            .to_string();
        return Ok(Outcome::Refused(why));
    }
    let steady = steady(&setup);
    let run = run_deployments(
        &setup,
        &ScenarioOpts {
            layout,
            retire,
            slow_ms: args.slow_ms,
            verbose: args.verbose,
            gap_ms: 1000,
        },
        n,
        &load::STANDARD,
        Duration::from_millis(5),
        |k| setup.drop_jar(&format!("v{}", k + 1)).map(|_| ()),
        |_, _| Ok(()),
    )?;
    let results = report::analyse(&run.deployments, &run.samples, &run.slow);
    Ok(Outcome::Ran(
        Box::new(report::summarise(&results, &run.samples)),
        steady,
        run.ok,
    ))
}

/// The standard clients without pauses for [`STEADY`] (the first second
/// left out: connections and the JIT settling), nothing deployed.
fn steady(setup: &tests::Setup) -> Steady {
    let load = load::Load::start(setup.nginx.port, "/", &load::STANDARD, Duration::ZERO);
    // The bench measures over a fixed window; this is not a deployment path.
    std::thread::sleep(STEADY);
    let samples = load.finish();
    let from = Duration::from_secs(1);
    let window: Vec<&load::Sample> = samples.iter().filter(|x| x.at >= from).collect();
    let latency = report::Latency::of(window.iter().copied());
    let span = (STEADY - from).as_secs_f64();
    Steady {
        requests_per_s: latency.requests as f64 / span,
        p50_ms: latency.p50_ms,
        p99_ms: latency.p99_ms,
        failed: window.iter().filter(|x| x.failed()).count(),
    }
}
