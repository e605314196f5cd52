//! `bench`: what a deployment with nonstop costs, and proof that it drops
//! nothing, measured with the real nginx and the demo jar.
//!
//! It bootstraps the demo app on real1 behind a private nginx, then runs N
//! consecutive deployments through the five release binaries
//! (`profile`, `stop`, `start`, `health --no-switch`, `switch`, each with the
//! deployment's `DEPLOYMENT_ID`) while clients GET and POST through nginx the
//! whole time and a 2 s request is in flight at every switch. Around the
//! stages it watches, from outside, the moments the stages themselves cannot
//! report: when the old app exited, when the new one first answered on its
//! port, when the include file was written, when `switch` confirmed, and
//! from which moment every request was answered by the new profile.
//!
//! Output: a Markdown table on stdout, and in `--out` `bench.json` (every
//! figure), `bench.md` (the tables) and `timeline.svg` (every request over
//! time). Exit 1 when a request failed (a 5xx, a failed new connection, a
//! POST lost on a closed kept-alive connection), when a slow request failed,
//! or when a stage failed. Timings never fail it.
//!
//! `--modes N` runs every nginx mode and backend side by side instead
//! ([`modes`]); `--soak N` runs N deployments of a fast app in a row and
//! watches for leaks ([`soak`]); `--fleet` deploys three servers behind a
//! load balancer with a CodeDeploy deployment group's orders, with and
//! without nonstop ([`fleet`]).

mod deploy;
mod fleet;
mod load;
mod modes;
mod report;
mod soak;
mod startup;
mod svg;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use tests::{Layout, Setup, SetupOptions};

use deploy::Scenario;
use load::{ClientSpec, Load, Sample};
use report::Deployment;

/// Measure nonstop's deployments under load through a private nginx.
#[derive(Debug, Parser)]
#[command(name = "bench")]
pub struct Args {
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

    /// Runs of each binary for its start-up time and peak RSS (after 1 cold
    /// run and 10 warm-up runs)
    #[arg(long, default_value_t = 30)]
    runs: usize,

    /// Deploy with `app.retire` on
    #[arg(long)]
    retire: bool,

    /// Deploy with `health.warmup` = {"paths": ["/"], "requests": N}: `health`
    /// sends N GETs to the new app's port before the switch
    #[arg(long, default_value_t = 0)]
    warmup_requests: usize,

    /// Instead: every mode (include, realpath, symlink, upstream pair, compose), with
    /// retire off and on, N deployments each, side by side
    #[arg(long, value_name = "N", conflicts_with = "soak")]
    modes: Option<usize>,

    /// With --modes: only the modes whose name contains TEXT ("pair")
    #[arg(long, value_name = "TEXT", requires = "modes")]
    only: Option<String>,

    /// Instead: N deployments in a row of a fast app, watching nonstop's
    /// fds and processes, the state dir and the app's logs
    #[arg(long, value_name = "N")]
    soak: Option<usize>,

    /// With --soak: route in the realpath mode (a link nginx resolves on
    /// every request, switched without a reload) instead of the include file
    #[arg(long, requires = "soak")]
    realpath: bool,

    /// Instead: three servers behind a load balancer (HAProxy), deployed by
    /// a CodeDeploy deployment group through the agent's code: nonstop with
    /// AllAtOnce, OneAtATime, HalfAtATime, a failing host and its rollback;
    /// without nonstop with BlockTraffic/AllowTraffic and without (needs
    /// root and NONSTOP_CODEDEPLOY_AGENT)
    #[arg(long, conflicts_with_all = ["modes", "soak"])]
    fleet: bool,

    /// With --fleet: the target group's deregistration delay BlockTraffic
    /// waits, in seconds (an ALB's default is 300; the figure for it is
    /// computed from the measured steps)
    #[arg(long, default_value_t = 5, requires = "fleet")]
    dereg_delay_secs: u64,

    /// With --fleet: the load balancer's health check interval, in ms (an
    /// ALB's default is 30 s)
    #[arg(long, default_value_t = 1000, requires = "fleet")]
    check_interval_ms: u64,

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
    } else if let Some(n) = args.modes {
        modes::run(&args, n)
    } else if let Some(n) = args.soak {
        soak::run(&args, n)
    } else if args.fleet {
        fleet::run(&args)
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

/// A setup of the demo app with nonstop's own defaults for the health poll
/// and the start-up watch (the figures are for what a user gets, not for
/// the test suite's faster settings).
pub fn setup(name: &str, opts: &SetupOptions) -> Result<Setup> {
    let setup = Setup::new(name, opts)?;
    setup.edit_config(|c| {
        if let Some(h) = c["health"].as_object_mut() {
            h.remove("interval_ms");
        }
        if let Some(a) = c["app"].as_object_mut() {
            a.remove("start_grace_ms");
        }
    })?;
    Ok(setup)
}

/// What N deployments under load left.
#[derive(Debug)]
pub struct Run {
    pub deployments: Vec<Deployment>,
    pub slow: Vec<Option<Sample>>,
    pub samples: Vec<Sample>,
    /// Every stage of every deployment succeeded.
    pub ok: bool,
}

/// On a bootstrapped `setup`: N deployments under `clients`, `next_build(n)`
/// dropping deployment n's build first, `after(n, deployment)` called after
/// each.
pub fn run_deployments(
    setup: &Setup,
    opts: &ScenarioOpts,
    deploys: usize,
    clients: &[ClientSpec],
    pause: Duration,
    mut next_build: impl FnMut(usize) -> Result<()>,
    mut after: impl FnMut(usize, &Deployment) -> Result<()>,
) -> Result<Run> {
    let load = Load::start(setup.nginx.port, "/", clients, pause);
    let t0 = load.started();
    let sc = Scenario {
        setup,
        layout: opts.layout,
        retire: opts.retire,
        slow_ms: opts.slow_ms,
        verbose: opts.verbose,
        t0,
        t0_wall: SystemTime::now() - t0.elapsed(),
    };
    // Steady traffic before the first deployment, for the latency baseline.
    std::thread::sleep(Duration::from_millis(1500));
    let mut deployments = Vec::new();
    let mut slow = Vec::new();
    let mut live = "real1".to_string();
    let mut ok = true;
    for n in 1..=deploys {
        let idle = if live == "real1" { "real2" } else { "real1" }.to_string();
        let id = format!("bench-{n}");
        if let Err(e) = next_build(n) {
            eprintln!("bench: {id}: cannot drop the build: {e:#}");
            ok = false;
            break;
        }
        if opts.verbose || deploys <= 50 || n % 50 == 0 {
            eprintln!("bench: {id}: {live} → {idle}");
        }
        match sc.deploy(&id, &live, &idle) {
            Ok((d, s)) => {
                // Waited for between deployments, so the next `stop` does not
                // wait for the old app to drain it.
                slow.push(s.and_then(|s: JoinHandle<Sample>| s.join().ok()));
                let r = after(n, &d);
                deployments.push(d);
                if let Err(e) = r {
                    eprintln!("bench: after {id}: {e:#}");
                    ok = false;
                    break;
                }
            }
            Err(e) => {
                eprintln!("bench: {id} failed: {e:#}");
                ok = false;
                break;
            }
        }
        live = idle;
        // Steady seconds between deployments: the next one's baseline.
        std::thread::sleep(Duration::from_millis(opts.gap_ms));
    }
    // Some traffic after the last switch, then stop the clients.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Run {
        deployments,
        slow,
        samples: load.finish(),
        ok,
    })
}

/// The knobs of [`Scenario`] that a run chooses.
#[derive(Debug, Clone)]
pub struct ScenarioOpts {
    pub layout: Layout,
    pub retire: bool,
    pub slow_ms: u64,
    pub verbose: bool,
    /// Pause between deployments.
    pub gap_ms: u64,
}

fn bench(args: &Args) -> Result<bool> {
    if args.deploys == 0 {
        bail!("--deploys must be at least 1");
    }
    eprintln!("bench: building the demo app and starting a private nginx ...");
    let setup = setup(
        "bench",
        &SetupOptions {
            startup_delay_ms: args.startup_ms,
            java_opts: vec![],
            retire: args.retire,
            ..Default::default()
        },
    )?;
    eprintln!(
        "bench: nginx on 127.0.0.1:{}; real1 on {}, real2 on {}; app start-up delay {} ms",
        setup.nginx.port, setup.ports[0], setup.ports[1], args.startup_ms
    );
    warmup_config(&setup, args.warmup_requests)?;
    setup.bootstrap("v1")?;

    eprintln!(
        "bench: start-up time and peak RSS of each binary (1 cold + {} warm-up + {} runs each)",
        startup::WARMUP,
        args.runs
    );
    let binaries = startup::measure(&setup.bundle, args.runs, &setup.dir.path)?;

    let run = run_deployments(
        &setup,
        &ScenarioOpts {
            layout: Layout::Include,
            retire: args.retire,
            slow_ms: args.slow_ms,
            verbose: args.verbose,
            gap_ms: 1000,
        },
        args.deploys,
        &load::STANDARD,
        Duration::from_millis(5),
        |n| setup.drop_jar(&format!("v{}", n + 1)).map(|_| ()),
        |_, _| Ok(()),
    )?;

    let results = report::analyse(&run.deployments, &run.samples, &run.slow);
    let summary = report::summarise(&results, &run.samples);
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let machine = report::machine();
    let json = serde_json::json!({
        "machine": machine,
        "app_startup_delay_ms": args.startup_ms,
        "slow_request_ms": args.slow_ms,
        "retire": args.retire,
        "warmup_requests": args.warmup_requests,
        "deployments": results,
        "summary": summary,
        "binaries": binaries,
        "requests": run.samples.len(),
    });
    write(
        &args.out.join("bench.json"),
        &serde_json::to_string_pretty(&json)?,
    )?;
    let markdown = report::markdown(&machine, args, &results, &summary, &binaries);
    write(&args.out.join("bench.md"), &markdown)?;
    write(
        &args.out.join("timeline.svg"),
        &svg::timeline(&run.samples, &run.slow, &results),
    )?;
    println!("{markdown}");
    println!(
        "bench: wrote {}, bench.md and timeline.svg there",
        args.out.join("bench.json").display()
    );
    Ok(run.ok && summary.clean())
}

/// `health.warmup` for `--warmup-requests N` (none for 0).
pub fn warmup_config(setup: &Setup, requests: usize) -> Result<()> {
    if requests == 0 {
        return Ok(());
    }
    setup.edit_config(|c| {
        c["health"]["warmup"] = serde_json::json!({"paths": ["/"], "requests": requests});
    })
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
