//! `bench --soak N`: N deployments in a row of a fast app (no start-up
//! delay, no slow request), watching what a year of deployments could make
//! grow: the fds a stage holds open, the processes left behind (stages that
//! did not exit, apps nobody stopped), nginx's and the live app's fds, the
//! state dir and the app's log files. It prints where each figure started,
//! its median, its maximum and where it ended, and fails only on a failed
//! request or a failed stage. Not part of CI: 500 deployments take about
//! half an hour on a shared 2-core machine.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tests::{Layout, Setup, SetupOptions};

use crate::deploy::{fd_count, running};
use crate::load::{ClientSpec, Kind};
use crate::report::{self, median, Deployment, Summary};
use crate::{run_deployments, setup, write, Args, Run, ScenarioOpts};

/// What one deployment left behind.
#[derive(Debug, Clone, Serialize)]
struct Row {
    n: usize,
    /// The most fds any stage held open at once.
    stage_peak_fds: usize,
    /// Stage processes still running after the deployment (should be 0).
    stages_left: usize,
    /// Every process whose command line names the run's directory: nginx's
    /// master and workers, the apps, any stage.
    processes: usize,
    nginx_master_fds: usize,
    live_app_fds: usize,
    state_dir_bytes: u64,
    state_dir_files: usize,
    log_files: usize,
    log_bytes: u64,
}

/// (files, bytes) under `dir`, recursively.
fn du(dir: &Path) -> (usize, u64) {
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut files = 0;
    let mut bytes = 0;
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            let (f, b) = du(&e.path());
            files += f;
            bytes += b;
        } else {
            files += 1;
            bytes += meta.len();
        }
    }
    (files, bytes)
}

/// Live processes whose command line contains `needle`.
fn processes_naming(needle: &str) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != std::process::id() as i32 && running(pid))
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .count()
}

/// What to watch a soak's processes and fds by.
struct Watch<'a> {
    setup: &'a Setup,
    nginx_pid: i32,
    /// The run's directory: every process of the run names it.
    dir: String,
    /// The bundle's scripts: every stage process names them.
    scripts: String,
}

impl Row {
    /// What deployment `k` (`d`) left behind.
    fn measure(watch: &Watch, k: usize, d: &Deployment) -> Row {
        let setup = watch.setup;
        let (state_files, state_bytes) = du(&setup.state_dir());
        let (log_files, log_bytes) = du(&setup.app_dir.join("logs"));
        Row {
            n: k,
            stage_peak_fds: d.peak_fds,
            stages_left: processes_naming(&watch.scripts),
            processes: processes_naming(&watch.dir),
            nginx_master_fds: fd_count(watch.nginx_pid),
            live_app_fds: setup.launched_pid(&d.to).map(fd_count).unwrap_or(0),
            state_dir_bytes: state_bytes,
            state_dir_files: state_files,
            log_files,
            log_bytes,
        }
    }

    /// Its progress line, on stderr.
    fn print(&self, n: usize, began: Instant) {
        eprintln!(
            "bench: soak {}/{n} after {:.0} s: stage fds {}, stages left {}, processes {}, nginx fds {}, app fds {}, state dir {} files {} B, logs {} files {} B",
            self.n,
            began.elapsed().as_secs_f64(),
            self.stage_peak_fds,
            self.stages_left,
            self.processes,
            self.nginx_master_fds,
            self.live_app_fds,
            self.state_dir_files,
            self.state_dir_bytes,
            self.log_files,
            self.log_bytes
        );
    }
}

/// The soak's load: a GET client on new connections, one on a kept-alive
/// one, a POST client on new connections.
fn clients() -> [ClientSpec; 3] {
    [
        ClientSpec {
            kind: Kind::Fresh,
            post: false,
        },
        ClientSpec {
            kind: Kind::KeptAlive,
            post: false,
        },
        ClientSpec {
            kind: Kind::Fresh,
            post: true,
        },
    ]
}

pub fn run(args: &Args, n: usize) -> Result<bool> {
    if n == 0 {
        anyhow::bail!("--soak must be at least 1");
    }
    eprintln!("bench: soak: building the demo app and starting a private nginx ...");
    let setup = setup(
        "soak",
        &SetupOptions {
            startup_delay_ms: 0,
            retire: args.retire,
            layout: layout(args),
            ..Default::default()
        },
    )?;
    setup.bootstrap("v1")?;
    let (run, rows, elapsed) = soak(args, &setup, n)?;
    let results = report::analyse(&run.deployments, &run.samples, &run.slow);
    let summary = report::summarise(&results, &run.samples);
    let answered_200 = run
        .samples
        .iter()
        .filter(|x| x.status() == Some(200))
        .count();
    let out = markdown(args, &rows, elapsed, &run, &summary, answered_200);
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write(
        &args.out.join("soak.json"),
        &serde_json::to_string_pretty(&serde_json::json!({
            "machine": report::machine(),
            "elapsed_s": elapsed.as_secs_f64(),
            "rows": rows,
            "summary": summary,
            "requests": run.samples.len(),
            "answered_200": answered_200,
        }))?,
    )?;
    write(&args.out.join("soak.md"), &out)?;
    println!("{out}");
    println!(
        "bench: wrote {} and soak.md there",
        args.out.join("soak.json").display()
    );
    // A soak sends no slow request (each would count as "not sent"): it
    // fails on a failed request only.
    Ok(run.ok && summary.failed == 0)
}

/// The include file, or with `--realpath` the realpath link.
fn layout(args: &Args) -> Layout {
    if args.realpath {
        Layout::Realpath
    } else {
        Layout::Include
    }
}

/// The `n` deployments on the bootstrapped `setup`, what each left behind,
/// and how long they took.
fn soak(args: &Args, setup: &Setup, n: usize) -> Result<(Run, Vec<Row>, Duration)> {
    // Two builds, packed once, laid down in turn: the `jar` tool is a JVM
    // of its own and would double the run's time.
    let staged = setup.dir.join("staged");
    let builds = [
        setup.jars.jar("a", &staged.join("a.jar"))?,
        setup.jars.jar("b", &staged.join("b.jar"))?,
    ];
    let zip = setup.app_dir.join("zip");
    let watch = Watch {
        setup,
        nginx_pid: setup.nginx.pid(),
        dir: setup.dir.path.to_string_lossy().into_owned(),
        scripts: setup
            .bundle
            .root
            .join("scripts")
            .to_string_lossy()
            .into_owned(),
    };
    let began = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let run = run_deployments(
        setup,
        &ScenarioOpts {
            layout: layout(args),
            retire: args.retire,
            slow_ms: 0,
            verbose: args.verbose,
            gap_ms: 0,
        },
        n,
        &clients(),
        Duration::from_millis(10),
        |k| {
            let tmp = zip.join(".soak.jar.tmp");
            fs::copy(&builds[k % 2], &tmp).context("staging the build")?;
            fs::rename(&tmp, zip.join("demo-soak.jar")).context("laying down the build")?;
            Ok(())
        },
        |k, d| {
            let row = Row::measure(&watch, k, d);
            if k <= 3 || k % 50 == 0 || k == n {
                row.print(n, began);
            }
            rows.push(row);
            Ok(())
        },
    )?;
    Ok((run, rows, began.elapsed()))
}

/// soak.md: the run in words, then each figure's first, median, max and
/// last value.
fn markdown(
    args: &Args,
    rows: &[Row],
    elapsed: Duration,
    run: &Run,
    summary: &Summary,
    answered_200: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Soak: {} deployments in a row ({} mode, retire {}) in {:.0} s ({:.2} s each), demo app without start-up delay; {} of {} requests answered 200, {} failed ({} POSTs), {} GETs on closed kept-alive connections (a client retries them).\n",
        rows.len(),
        if args.realpath { "realpath" } else { "include" },
        if args.retire { "on" } else { "off" },
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / rows.len().max(1) as f64,
        answered_200,
        run.samples.len(),
        summary.failed,
        summary.post_failed,
        summary.keepalive_read_errors.saturating_sub(summary.post_failed),
    );
    let _ = writeln!(
        out,
        "| after each deployment | first | median | max | last |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let line = |out: &mut String, name: &str, f: &dyn Fn(&Row) -> u64| {
        let v: Vec<u64> = rows.iter().map(f).collect();
        let med = median(v.iter().map(|&x| x as f64).collect()).unwrap_or(0.0);
        let _ = writeln!(
            out,
            "| {name} | {} | {med:.0} | {} | {} |",
            v.first().copied().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
            v.last().copied().unwrap_or(0)
        );
    };
    line(&mut out, "a stage's open fds (peak)", &|r| {
        r.stage_peak_fds as u64
    });
    line(&mut out, "stage processes left running", &|r| {
        r.stages_left as u64
    });
    line(
        &mut out,
        "processes naming the run's dir (nginx master, apps)",
        &|r| r.processes as u64,
    );
    line(&mut out, "nginx master's fds", &|r| {
        r.nginx_master_fds as u64
    });
    line(&mut out, "the live app's fds", &|r| r.live_app_fds as u64);
    line(&mut out, "state dir files", &|r| r.state_dir_files as u64);
    line(&mut out, "state dir bytes", &|r| r.state_dir_bytes);
    line(&mut out, "app log files", &|r| r.log_files as u64);
    line(&mut out, "app log bytes", &|r| r.log_bytes);
    let _ = writeln!(
        out,
        "\nMedians: deployment {:.2} s (app start-up {:.2} s), overhead to the switch's confirmation {}.",
        summary.median_wall_s,
        summary.median_app_startup_s,
        format_args!("{:.0} ms", summary.median_overhead_confirmed_s * 1000.0)
    );
    out
}
