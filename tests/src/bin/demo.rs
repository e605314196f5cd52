//! The demo of the main job: a private nginx on a loopback port, the demo
//! app bootstrapped as real1, then three deployments (real1 → real2 → real1
//! → real2) through the five release binaries while clients request through
//! nginx the whole time. Prints what each stage said, then a table of stage
//! times and of requests served and failed during each deployment. Exits 1
//! if any request failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use tests::{HookRun, Load, Sample, Setup, SetupOptions};

/// The app's start-up delay: a small Spring Boot app takes a few seconds.
const STARTUP_MS: u64 = 1500;

struct Row {
    id: String,
    from: String,
    to: String,
    stages: Vec<(String, Duration)>,
    window: (Duration, Duration),
}

fn main() -> ExitCode {
    match demo() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn show(run: &HookRun) {
    println!(
        "  $ {}   # exit {}, {:.2} s",
        run.stage,
        run.code(),
        run.elapsed.as_secs_f64()
    );
    for line in run.stderr.lines().chain(run.stdout.lines()) {
        println!("    {line}");
    }
}

fn demo() -> Result<bool> {
    println!("nonstop demo: building the demo app and starting a private nginx ...");
    let setup = Setup::new(
        "demo",
        &SetupOptions {
            startup_delay_ms: STARTUP_MS,
            java_opts: vec![],
            ..Default::default()
        },
    )?;
    println!(
        "nginx on 127.0.0.1:{} (prefix {}); real1 on {}, real2 on {}; app start-up {} ms",
        setup.nginx.port,
        setup.nginx.prefix.display(),
        setup.ports[0],
        setup.ports[1],
        STARTUP_MS
    );
    bootstrap(&setup)?;

    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(10));
    let t0 = load.started();
    let mut rows = Vec::new();
    let mut live = "real1".to_string();
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let id = format!("demo-{}", n + 1);
        let idle = if live == "real1" { "real2" } else { "real1" }.to_string();
        println!("\ndeployment {id}: {version} to {idle} (stop → start → health, which switches)");
        setup.drop_jar(version)?;
        let begin = t0.elapsed();
        let Some(stages) = deploy(&setup, &id)? else {
            return Ok(false);
        };
        let (status, body) = setup.get("/")?;
        println!("  nginx now answers: {status} {body:?}");
        rows.push(Row {
            id,
            from: live.clone(),
            to: idle.clone(),
            stages,
            window: (begin, t0.elapsed()),
        });
        live = idle;
    }
    // A little traffic after the last switch, then stop the clients.
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();

    let failed_total = table(&rows, &samples);
    let all_failed = samples.iter().filter(|s| s.status != 200).count();
    println!(
        "\nall traffic: {} requests through nginx, {} failed (each on a new connection, 2 clients)",
        samples.len(),
        all_failed
    );
    if let Some(first) = samples.iter().find(|s| s.status != 200) {
        println!("first failure: {first:?}");
    }
    println!("cleaning up: stopping both apps and nginx by pid");
    let started = Instant::now();
    drop(setup);
    println!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(all_failed == 0 && failed_total == 0)
}

/// v1 on real1, started and checked by hand.
fn bootstrap(setup: &Setup) -> Result<()> {
    println!("\nbootstrap: v1 on real1, by hand as an operator would on a fresh server");
    setup.drop_jar("v1")?;
    show(
        setup
            .hook("start", &["--profile", "real1"], None)?
            .assert_ok(),
    );
    show(
        setup
            .hook("health", &["--profile", "real1", "--no-switch"], None)?
            .assert_ok(),
    );
    Ok(())
}

/// Deployment `id`'s stages, each shown as it ends; their times, or `None`
/// when one failed (said so: the demo stops there).
fn deploy(setup: &Setup, id: &str) -> Result<Option<Vec<(String, Duration)>>> {
    let mut stages = Vec::new();
    for stage in ["stop", "start", "health"] {
        let run = setup.hook(stage, &[], Some(id))?;
        show(&run);
        stages.push((stage.to_string(), run.elapsed));
        if !run.status.success() {
            println!("demo: {stage} failed; stopping the demo");
            return Ok(None);
        }
    }
    Ok(Some(stages))
}

/// Prints the table of stage times and requests per deployment; returns
/// how many of those requests failed.
fn table(rows: &[Row], samples: &[Sample]) -> usize {
    println!();
    println!(
        "| deployment | from → to | stop | start | health + switch | total | requests served | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut failed_total = 0;
    for row in rows {
        let during: Vec<_> = samples
            .iter()
            .filter(|s| s.at >= row.window.0 && s.at < row.window.1)
            .collect();
        let failed = during.iter().filter(|s| s.status != 200).count();
        failed_total += failed;
        let total: Duration = row.stages.iter().map(|(_, d)| *d).sum();
        let cell = |name: &str| {
            row.stages
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, d)| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_default()
        };
        println!(
            "| {} | {} → {} | {} | {} | {} | {:.2} s | {} | {} |",
            row.id,
            row.from,
            row.to,
            cell("stop"),
            cell("start"),
            cell("health"),
            total.as_secs_f64(),
            during.len() - failed,
            failed
        );
    }
    failed_total
}
