//! Start-up time and peak RSS of each stage binary, measured exec-to-exit.
//!
//! Each binary is measured by a helper process of its own (`bench
//! --measure-child`), small and single-threaded, started before the load:
//! the bench itself runs dozens of client threads and pipe readers, and a
//! spawn from a busy multi-threaded process costs more than the binary
//! under test. The helper spawns the binary with stdin, stdout and stderr on
//! /dev/null and times spawn → exit, as `hyperfine -N` does. The very first
//! run (the binary just copied into the bundle, its pages maybe not yet
//! mapped by anyone) is reported apart as *cold*; it and the warm-up runs
//! after it are left out of the median. When `hyperfine` is installed its
//! figure for the same command is taken in the same run, beside ours.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::report::median;

/// Warm-up runs dropped after the cold one (which is dropped too).
pub const WARMUP: usize = 10;

/// What the helper prints: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    cold_us: u64,
    runs_us: Vec<u64>,
    peak_rss_kib: u64,
    code: i32,
}

/// Start-up time and peak RSS of one binary invocation.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryFigures {
    pub command: String,
    /// Measured runs, after the cold one and the warm-up.
    pub runs: usize,
    /// The first run after the binary was copied into the bundle.
    pub cold_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
    pub peak_rss_kib: u64,
    /// `hyperfine -N --warmup 20` on the same command, when installed.
    pub hyperfine: Option<Hyperfine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hyperfine {
    pub median_ms: f64,
    pub mean_ms: f64,
    pub stddev_ms: f64,
}

/// Every case: `--help` for the five binaries, `profile --json` against
/// the running setup (which reads the config, the include and the probe).
pub fn measure(bundle: &tests::Bundle, runs: usize, scratch: &Path) -> Result<Vec<BinaryFigures>> {
    let mut cases: Vec<(String, Vec<String>)> = tests::STAGES
        .iter()
        .map(|s| (s.to_string(), vec!["--help".to_string()]))
        .collect();
    cases.push(("profile".into(), vec!["--json".into()]));
    let hyperfine = hyperfine_installed();
    let mut out = Vec::new();
    for (stage, extra) in cases {
        let bin = bundle.bin(&stage);
        let report = run_helper(&bin, &extra, runs.max(1))?;
        if report.code != 0 {
            bail!(
                "{} {} exited {}",
                bin.display(),
                extra.join(" "),
                report.code
            );
        }
        let ms: Vec<f64> = report.runs_us.iter().map(|&u| u as f64 / 1000.0).collect();
        // hyperfine's figure is a comparison, not a result: its failure is
        // said and the run goes on.
        let hyperfine = if hyperfine {
            run_hyperfine(&bin, &extra, runs.max(10), scratch)
                .map_err(|e| eprintln!("bench: warning: {e:#}"))
                .ok()
        } else {
            None
        };
        out.push(BinaryFigures {
            command: format!("{stage} {}", extra.join(" ")),
            runs: ms.len(),
            cold_ms: report.cold_us as f64 / 1000.0,
            max_ms: ms.iter().copied().fold(0.0, f64::max),
            median_ms: median(ms).unwrap_or(0.0),
            peak_rss_kib: report.peak_rss_kib,
            hyperfine,
        });
    }
    Ok(out)
}

fn hyperfine_installed() -> bool {
    Command::new("hyperfine")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `bench --measure-child --runs N -- BIN EXTRA...`, parsed.
fn run_helper(bin: &Path, extra: &[String], runs: usize) -> Result<ChildReport> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--measure-child")
        .arg("--runs")
        .arg(runs.to_string())
        .arg("--")
        .arg(bin)
        .args(extra)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .context("cannot run the measuring helper")?;
    if !out.status.success() {
        bail!(
            "measuring {} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "the measuring helper printed {:?}, not its report",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// hyperfine's figures for the same command, in the same run. Its `-N`
/// runs the command without a shell, splitting it on spaces: the bundle's
/// paths have none.
fn run_hyperfine(bin: &Path, extra: &[String], runs: usize, scratch: &Path) -> Result<Hyperfine> {
    let json = scratch.join("hyperfine.json");
    let command = format!("{} {}", bin.display(), extra.join(" "));
    let out = Command::new("hyperfine")
        .args(["-N", "--warmup", "20", "--style", "none", "--runs"])
        .arg(runs.to_string())
        .arg("--export-json")
        .arg(&json)
        .arg(&command)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .context("cannot run hyperfine")?;
    if !out.status.success() {
        bail!(
            "hyperfine on {command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("hyperfine wrote no {}", json.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", json.display()))?;
    let r = &v["results"][0];
    let field = |name: &str| {
        r[name]
            .as_f64()
            .map(|secs| secs * 1000.0)
            .ok_or_else(|| anyhow!("no results[0].{name} in {}", json.display()))
    };
    Ok(Hyperfine {
        median_ms: field("median")?,
        mean_ms: field("mean")?,
        stddev_ms: field("stddev")?,
    })
}

/// The `--measure-child` mode: one cold run, [`WARMUP`] runs dropped, then
/// `runs` timed ones, each spawn → exit; prints a [`ChildReport`].
pub fn measure_child(command: &[String], runs: usize) -> Result<()> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| anyhow!("--measure-child needs a command after --"))?;
    let once = || -> Result<(Duration, i32)> {
        let started = Instant::now();
        let status = Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("cannot run {program}"))?;
        Ok((started.elapsed(), status.code().unwrap_or(-1)))
    };
    let (cold, mut code) = once()?;
    for _ in 0..WARMUP {
        once()?;
    }
    let mut runs_us = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (t, c) = once()?;
        if c != 0 {
            code = c;
        }
        runs_us.push(u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)?;
    let report = ChildReport {
        cold_us: u64::try_from(cold.as_micros()).unwrap_or(u64::MAX),
        runs_us,
        peak_rss_kib: usage.max_rss().unsigned_abs(),
        code,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
