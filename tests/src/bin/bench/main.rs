//! `bench`: what a deployment with nonstop costs, and proof that it drops
//! nothing, measured with the real nginx and the demo jar.
//!
//! It bootstraps the demo app on real1 behind a private nginx, then runs N
//! consecutive deployments through the five release binaries
//! (`profile`, `stop`, `start`, `health --no-switch`, `switch`, each with the
//! deployment's `DEPLOYMENT_ID`) while clients request through nginx the
//! whole time and a 2 s request is in flight at every switch. Around the
//! stages it watches, from outside, the moments the stages themselves cannot
//! report: when the old app exited, when the new one first answered on its
//! port, when the include file was written, and from which moment every
//! request was answered by the new profile.
//!
//! Output: a Markdown table on stdout, and in `--out` `bench.json` (every
//! figure), `bench.md` (the tables) and `timeline.svg` (every request over
//! time). Exit 1 when any request got a 5xx or failed on a new connection,
//! when a slow request failed, or when a stage failed.

mod load;
mod report;
mod startup;
mod svg;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use tests::{http_get, Setup, SetupOptions};

use load::Load;
use report::{Deployment, Stage};

/// Measure nonstop's deployments under load through a private nginx.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Number of consecutive deployments
    #[arg(long, default_value_t = 10)]
    deploys: usize,

    /// The demo app's start-up delay, in milliseconds
    #[arg(long, default_value_t = 2000)]
    startup_ms: u64,

    /// How long the request in flight at each switch takes, in milliseconds
    #[arg(long, default_value_t = 2000)]
    slow_ms: u64,

    /// Where bench.json, bench.md and timeline.svg go
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,

    /// Runs of each binary for its start-up time and peak RSS
    #[arg(long, default_value_t = 30)]
    runs: usize,

    /// Print what every stage said
    #[arg(long, short)]
    verbose: bool,

    /// Internal: run COMMAND once cold, 10 times to warm up, then --runs
    /// times, and print the times (µs), peak RSS (KiB) and exit code as JSON
    #[arg(long, hide = true)]
    measure_child: bool,

    #[arg(last = true, hide = true)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.measure_child {
        startup::measure_child(&args.command, args.runs).map(|()| true)
    } else {
        bench(&args)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn bench(args: &Args) -> Result<bool> {
    if args.deploys == 0 {
        bail!("--deploys must be at least 1");
    }
    eprintln!("bench: building the demo app and starting a private nginx ...");
    let setup = Setup::new(
        "bench",
        &SetupOptions {
            startup_delay_ms: args.startup_ms,
            java_opts: vec![],
            ..Default::default()
        },
    )?;
    // The figures are for what a user gets: nonstop's own defaults for the
    // health poll and the start-up watch, not the test suite's faster ones.
    setup.edit_config(|c| {
        if let Some(h) = c["health"].as_object_mut() {
            h.remove("interval_ms");
        }
        if let Some(a) = c["app"].as_object_mut() {
            a.remove("start_grace_ms");
        }
    })?;
    eprintln!(
        "bench: nginx on 127.0.0.1:{}; real1 on {}, real2 on {}; app start-up delay {} ms",
        setup.nginx.port, setup.ports[0], setup.ports[1], args.startup_ms
    );
    setup.bootstrap("v1")?;

    eprintln!(
        "bench: start-up time and peak RSS of each binary (1 cold + {} warm-up + {} runs each)",
        startup::WARMUP,
        args.runs
    );
    let binaries = startup::measure(&setup.bundle, args.runs, &setup.dir.path)?;

    let load = Load::start(setup.nginx.port, "/", 2, 2, Duration::from_millis(5));
    let t0 = load.started();
    let t0_wall = SystemTime::now();
    let mut deployments = Vec::new();
    let mut slow = Vec::new();
    let mut live = "real1".to_string();
    let mut ok = true;
    for n in 1..=args.deploys {
        let idle = if live == "real1" { "real2" } else { "real1" }.to_string();
        let id = format!("bench-{n}");
        setup.drop_jar(&format!("v{}", n + 1))?;
        eprintln!("bench: {id}: {live} → {idle}");
        match deploy(&setup, args, &id, &live, &idle, t0, t0_wall) {
            Ok((d, s)) => {
                deployments.push(d);
                // Waited for between deployments, so the next `stop` does not
                // wait for the old app to drain it.
                slow.push(s.join().ok());
            }
            Err(e) => {
                eprintln!("bench: {id} failed: {e:#}");
                ok = false;
                break;
            }
        }
        live = idle;
    }
    // Some traffic after the last switch, then stop the clients.
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();

    let results = report::analyse(&deployments, &samples, &slow);
    let summary = report::summarise(&results, &samples);
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let machine = report::machine();
    let json = serde_json::json!({
        "machine": machine,
        "app_startup_delay_ms": args.startup_ms,
        "slow_request_ms": args.slow_ms,
        "deployments": results,
        "summary": summary,
        "binaries": binaries,
        "requests": samples.len(),
    });
    write(
        &args.out.join("bench.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    let markdown = report::markdown(&machine, args, &results, &summary, &binaries);
    write(&args.out.join("bench.md"), &markdown)?;
    write(
        &args.out.join("timeline.svg"),
        &svg::timeline(&samples, &slow, &results),
    )?;
    println!("{markdown}");
    println!(
        "bench: wrote {}, bench.md and timeline.svg there",
        args.out.join("bench.json").display()
    );
    Ok(ok && summary.clean())
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// One deployment: the five stages, watched from outside.
fn deploy(
    setup: &Setup,
    args: &Args,
    id: &str,
    live: &str,
    idle: &str,
    t0: Instant,
    t0_wall: SystemTime,
) -> Result<(Deployment, JoinHandle<load::Sample>)> {
    let idle_port = setup.ports[usize::from(idle == "real2")];
    let mut stages = Vec::new();
    let verbose = args.verbose;
    let s = |d: Duration| d.as_secs_f64();
    let mut run = |stage: &str, args: &[&str]| -> Result<()> {
        let begin = t0.elapsed();
        let out = setup
            .bundle
            .hook(stage, args, Some(id), Duration::from_secs(180))?;
        let end = t0.elapsed();
        if verbose {
            eprintln!("  $ {stage} {}   # {:.3} s", args.join(" "), s(end - begin));
            for line in out.stderr.lines() {
                eprintln!("    {line}");
            }
        }
        if !out.status.success() {
            bail!("{stage} exited {}: {}", out.code(), out.stderr.trim());
        }
        stages.push(Stage {
            name: stage.to_string(),
            begin,
            end,
        });
        Ok(())
    };

    run("profile", &[])?;
    let old_app = setup
        .launched_pid(idle)
        .filter(|&pid| running(pid))
        .map(watch_exit);
    run("stop", &[])?;
    let app_exit = old_app
        .map(|w| w.join().map_err(|_| anyhow!("exit watcher panicked")))
        .transpose()?
        .flatten()
        .map(|at| at - t0);

    let stop_poll = Arc::new(AtomicBool::new(false));
    let poller = first_answer(idle_port, idle.to_string(), stop_poll.clone());
    run("start", &[])?;
    let spawned_unix_ms = launched_unix_ms(setup, idle)?;
    let health = run("health", &["--no-switch"]);
    stop_poll.store(true, Ordering::Relaxed);
    let first = poller
        .join()
        .map_err(|_| anyhow!("answer poller panicked"))?;
    health?;
    let (first_answer, first_answer_wall) =
        first.ok_or_else(|| anyhow!("health passed but {idle} never answered the poller"))?;

    // A slow request to the live app, in flight when the include changes.
    let slow = load::slow_request(setup.nginx.port, &format!("/slow?ms={}", args.slow_ms), t0);
    // Outside the deployment's stages: lets the request reach the app first.
    std::thread::sleep(Duration::from_millis(100));
    run("switch", &[])?;
    let written = fs::metadata(&setup.nginx.include)
        .and_then(|m| m.modified())
        .context("reading the include file's mtime")?;

    let since_t0 = |t: SystemTime| t.duration_since(t0_wall).unwrap_or_default();
    let unix_ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    let deployment = Deployment {
        id: id.to_string(),
        from: live.to_string(),
        to: idle.to_string(),
        stages,
        old_app_exit: app_exit,
        first_answer: first_answer - t0,
        app_startup: Duration::from_secs_f64(
            ((unix_ms(first_answer_wall) - spawned_unix_ms as f64) / 1000.0).max(0.0),
        ),
        include_written: since_t0(written),
    };
    Ok((deployment, slow))
}

/// `started_unix_ms` of the app `start` launched for `profile`.
fn launched_unix_ms(setup: &Setup, profile: &str) -> Result<u64> {
    let path = setup.state_dir().join(format!("launched-{profile}.json"));
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path)?)?;
    v["started_unix_ms"]
        .as_u64()
        .ok_or_else(|| anyhow!("no started_unix_ms in {}", path.display()))
}

/// Whether `pid` runs: exists and is not a zombie (the apps are reparented
/// away from `start`, so nobody here reaps them).
fn running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// The moment `pid` exits, polled every millisecond, at most 2 minutes.
fn watch_exit(pid: i32) -> JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let limit = Instant::now() + Duration::from_secs(120);
        while Instant::now() < limit {
            if !running(pid) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })
}

/// The moment the app on `port` first answers `/profile` with its profile,
/// polled every 2 ms straight on its port, until found or `stop` is set.
fn first_answer(
    port: u16,
    profile: String,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Option<(Instant, SystemTime)>> {
    std::thread::spawn(move || {
        let limit = Instant::now() + Duration::from_secs(180);
        while Instant::now() < limit {
            if let Ok((200, body)) = http_get(port, "/profile", Duration::from_secs(1)) {
                if body.trim() == profile {
                    return Some((Instant::now(), SystemTime::now()));
                }
            }
            // Checked after a try, so a stop right after the answer still sees it.
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    })
}
