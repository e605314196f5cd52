//! `bench --modes N`: every way nonstop can route and run the app, side by
//! side in one run, N deployments each under the same load: the include
//! file, the symlink, the upstream pair (which always retires) and the
//! Docker Compose backend (images built here, as tests/tests/compose.rs
//! builds them), each with `app.retire` off and on. One row per mode:
//! deploy wall time, overhead over the app's own start-up, kept-alive
//! connections closed per switch, requests failed, POSTs failed (a client
//! does not retry a POST on a closed kept-alive connection), and the
//! latency around the switch. A mode that cannot run here (no Docker
//! engine) gets a row saying why; only a failed request or stage fails the
//! run.

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
    summary: Option<Summary>,
    stages_ok: bool,
}

/// The modes: (name, layout, compose, retire).
const CASES: [(&str, Layout, bool, bool); 7] = [
    ("include", Layout::Include, false, false),
    ("include", Layout::Include, false, true),
    ("symlink", Layout::Symlink, false, false),
    ("symlink", Layout::Symlink, false, true),
    ("upstream pair", Layout::Pair, false, true),
    ("compose", Layout::Include, true, false),
    ("compose", Layout::Include, true, true),
];

pub fn run(args: &Args, n: usize) -> Result<bool> {
    if n == 0 {
        anyhow::bail!("--modes must be at least 1");
    }
    let mut rows = Vec::new();
    for (mode, layout, compose, retire) in CASES {
        eprintln!(
            "bench: modes: {mode}, retire {}: {n} deployments",
            if retire { "on" } else { "off" }
        );
        rows.push(row(args, n, mode, layout, compose, retire));
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

/// One mode's row: its summary, or why it did not run.
fn row(
    args: &Args,
    n: usize,
    mode: &'static str,
    layout: Layout,
    compose: bool,
    retire: bool,
) -> ModeRow {
    match one(args, n, layout, compose, retire) {
        Ok((summary, ok)) => ModeRow {
            mode,
            retire,
            skipped: None,
            summary: Some(summary),
            stages_ok: ok,
        },
        Err(e) => {
            eprintln!("bench: modes: {mode} did not run: {e:#}");
            ModeRow {
                mode,
                retire,
                skipped: Some(format!("{e:#}")),
                summary: None,
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
        "| mode | retire | deploy wall | app start-up | overhead (hook time) | overhead to confirmed | of which nonstop + nginx | retiring | keep-alive closed per switch | requests failed | POSTs failed | p99 after / before switch | over 100 ms after (before) |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(13));
    for r in rows {
        mode_line(&mut out, r);
    }
    let _ = writeln!(
        out,
        "\nMedians over the deployments; failures are totals. *Overhead to confirmed*: the stages' time up to `switch` saying it confirmed, less the app's start-up; *of which nonstop + nginx*: that, less the old app's own shutdown `stop` waited for; *retiring*: `switch` after its confirmation (waiting for nginx's previous workers, which a request in flight keeps, then stopping the previous app)."
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
                "| {} | {retire} | {:.2} s | {:.2} s | {} | {} | {} | {} | {:.1} | {} of {} | {} of {} | {} ({:.1} / {:.1} ms) | {} ({}) |",
                r.mode,
                s.median_wall_s,
                s.median_app_startup_s,
                ms(s.median_overhead_s),
                ms(s.median_overhead_confirmed_s),
                ms(s.median_overhead_own_s),
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
            );
        }
        None => {
            let why = r.skipped.as_deref().unwrap_or("");
            let why: String = why.chars().take(120).collect();
            let _ = writeln!(
                out,
                "| {} | {retire} | not run: {} |{}",
                r.mode,
                why.replace('|', "/").replace('\n', " "),
                " |".repeat(11)
            );
        }
    }
}

/// One mode: its own nginx, apps (or containers) and load.
fn one(
    args: &Args,
    n: usize,
    layout: Layout,
    compose: bool,
    retire: bool,
) -> Result<(Summary, bool)> {
    let setup = setup(
        "bench-modes",
        &SetupOptions {
            startup_delay_ms: args.startup_ms,
            layout,
            retire,
            compose,
            ..Default::default()
        },
    )?;
    crate::warmup_config(&setup, args.warmup_requests)?;
    setup.bootstrap("v1")?;
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
    Ok((report::summarise(&results, &run.samples), run.ok))
}
