//! `bench --fleet`: a CodeDeploy deployment group over three servers behind
//! a load balancer (tests/src/fleet: each host a namespaced Debian server set
//! up from README.md's blocks, HAProxy in front as the ALB target group,
//! every hook through the real CodeDeploy agent's code), side by side in one
//! run under the same load through the load balancer (a GET and a POST
//! client on new connections, one of each on a kept-alive connection):
//!
//! - (a) nonstop on each host, AllAtOnce, no traffic blocking;
//! - (b) nonstop, OneAtATime; and HalfAtATime (the same order on 3 hosts);
//! - (c) without nonstop, the way CodeDeploy does it with a load balancer:
//!   OneAtATime, BlockTraffic (the host drained and deregistered, the
//!   deregistration delay waited out, shortened to `--dereg-delay-secs`),
//!   the app stopped and started in place (tests/fleet/plain), AllowTraffic
//!   (registered, one health check passed); the time with the default delay
//!   of 300 s is computed from the measured steps;
//! - (d) without nonstop and without traffic blocking, AllAtOnce: what (c)'s
//!   blocking saves the users from;
//! - (e) nonstop, OneAtATime, host2's build fails its health check: the
//!   deployment stops, and the automatic rollback (on DEPLOYMENT_FAILURE)
//!   redeploys the last good revision as a new deployment;
//! - nginx reloaded 60 times on host1 under the same load, with README's
//!   `keepalive_timeout 0;` toward the load balancer and without it: what a
//!   reload does to the balancer's kept-alive connections to nginx.
//!
//! Per row: the fleet's deployment time, each host's, the requests sent
//! meanwhile and those not answered 2xx (POSTs and kept-alive apart), the
//! 5xx the load balancer answered. "One server" is a host deployed alone
//! (the median host of the OneAtATime row). Output: a Markdown table on
//! stdout, `fleet.json` and `fleet.md` in `--out`. Exit 1 when a request
//! failed in a nonstop row or a row's outcome is not the expected one;
//! timings never fail it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use tests::fleet::{
    failed, versions_served, Build, Builds, DeploymentConfig, Fleet, HealthCheck, HostReport, Kind,
    Rollout, Status, Traffic, HAPROXY,
};
use tests::{Agent, Load, Sample};

use crate::report;
use crate::{write, Args};

/// ALB's default deregistration delay.
const DEFAULT_DELAY_S: f64 = 300.0;
/// ALB's default health check interval.
const DEFAULT_INTERVAL_S: f64 = 30.0;

#[derive(Debug, Clone, Serialize)]
struct HostFigure {
    host: usize,
    succeeded: bool,
    /// The agent's part: the host's own deployment (its hooks).
    deploy_s: f64,
    block_s: Option<f64>,
    allow_s: Option<f64>,
    /// What it failed on, if it did.
    failed_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    case: String,
    nonstop: bool,
    config: String,
    traffic: String,
    revision: String,
    status: String,
    reason: Option<String>,
    fleet_s: f64,
    hosts: Vec<HostFigure>,
    skipped: Vec<usize>,
    requests: usize,
    failed: usize,
    failed_posts: usize,
    failed_kept_alive: usize,
    lb_5xx: u64,
    versions: BTreeMap<String, usize>,
    /// (c): the fleet's time with the default deregistration delay.
    default_delay_fleet_s: Option<f64>,
    /// Whether a request may fail in this row (only (d)'s may).
    failures_expected: bool,
    /// The outcome the row must have.
    expected: String,
    ok: bool,
}

/// nginx reloaded on host1 under load, with or without kept-alive
/// connections between the load balancer and nginx.
#[derive(Debug, Clone, Serialize)]
struct ReloadRow {
    keepalive_to_balancer: bool,
    reloads: usize,
    requests: usize,
    failed: usize,
    failed_posts: usize,
    failed_kept_alive: usize,
    /// HAProxy's response errors on host1 (a connection closed under a
    /// request it had sent).
    eresp: u64,
}

const RELOADS: usize = 60;

/// Reloads host1's nginx RELOADS times, 250 ms apart, under the running
/// load; the window and host1's response errors meanwhile.
fn reloads(fleet: &Fleet, load: &Load) -> Result<(Duration, Duration, u64)> {
    let eresp = || -> Result<u64> { Ok(fleet.balancer()?.server("host1")?.num("eresp")) };
    let before = eresp()?;
    let from = load.started().elapsed();
    for _ in 0..RELOADS {
        std::thread::sleep(Duration::from_millis(250));
        fleet.servers[0].run_checked(&["nginx", "-s", "reload"])?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let to = load.started().elapsed();
    Ok((from, to, eresp()?.saturating_sub(before)))
}

fn reload_row(keepalive: bool, window: (Duration, Duration, u64), samples: &[Sample]) -> ReloadRow {
    let during: Vec<Sample> = samples
        .iter()
        .filter(|s| s.at >= window.0 && s.at < window.1)
        .cloned()
        .collect();
    let bad = failed(&during);
    ReloadRow {
        keepalive_to_balancer: keepalive,
        reloads: RELOADS,
        requests: during.len(),
        failed: bad.len(),
        failed_posts: bad.iter().filter(|s| s.post).count(),
        failed_kept_alive: bad.iter().filter(|s| s.kept_alive).count(),
        eresp: window.2,
    }
}

/// A deployment measured: the rollout, its window of the load.
struct Measured {
    rollout: Rollout<HostReport>,
    from: Duration,
    to: Duration,
    lb_5xx: u64,
}

fn frontend_5xx(fleet: &Fleet) -> u64 {
    fleet
        .balancer()
        .and_then(|b| b.stats())
        .map(|rows| {
            rows.iter()
                .find(|r| r.get("svname") == "FRONTEND")
                .map(|r| r.num("hrsp_5xx"))
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// One deployment under the running load, with its window.
fn measure(
    fleet: &mut Fleet,
    load: &Load,
    deploy: impl FnOnce(&mut Fleet) -> Result<Rollout<HostReport>>,
) -> Result<Measured> {
    let before = frontend_5xx(fleet);
    let from = load.started().elapsed();
    let rollout = deploy(fleet)?;
    let to = load.started().elapsed();
    // Steady seconds between deployments.
    std::thread::sleep(Duration::from_millis(1500));
    Ok(Measured {
        rollout,
        from,
        to,
        lb_5xx: frontend_5xx(fleet).saturating_sub(before),
    })
}

#[allow(clippy::too_many_arguments)]
fn row(
    case: &str,
    nonstop: bool,
    traffic: &str,
    m: &Measured,
    samples: &[Sample],
    failures_expected: bool,
    expected: Status,
    default_delay: bool,
) -> Row {
    let r = &m.rollout;
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at >= m.from && s.at < m.to)
        .collect();
    let owned: Vec<Sample> = during.iter().map(|s| (*s).clone()).collect();
    let bad = failed(&owned);
    let hosts: Vec<HostFigure> = r
        .ran()
        .map(|h| HostFigure {
            host: h.host + 1,
            succeeded: h.succeeded,
            deploy_s: h.detail.agent_time().as_secs_f64(),
            block_s: h.detail.block.map(|d| d.as_secs_f64()),
            allow_s: h.detail.allow.map(|d| d.as_secs_f64()),
            failed_at: h
                .detail
                .deployment
                .as_ref()
                .and_then(|d| d.failed())
                .map(|f| f.command.clone())
                .or_else(|| h.detail.error.clone()),
        })
        .collect();
    let default_delay_fleet_s = default_delay.then(|| {
        r.elapsed.as_secs_f64()
            + hosts
                .iter()
                .map(|h| DEFAULT_DELAY_S - h.block_s.unwrap_or(0.0))
                .sum::<f64>()
    });
    let status = format!("{:?}", r.status);
    let ok = r.status == expected && (failures_expected || bad.is_empty());
    Row {
        case: case.to_string(),
        nonstop,
        config: r.config.name(),
        traffic: traffic.to_string(),
        revision: r.revision.clone(),
        status,
        reason: r.reason.clone(),
        fleet_s: r.elapsed.as_secs_f64(),
        hosts,
        skipped: r.skipped_hosts().iter().map(|h| h + 1).collect(),
        requests: owned.len(),
        failed: bad.len(),
        failed_posts: bad.iter().filter(|s| s.post).count(),
        failed_kept_alive: bad.iter().filter(|s| s.kept_alive).count(),
        lb_5xx: m.lb_5xx,
        versions: versions_served(&owned),
        default_delay_fleet_s,
        failures_expected,
        expected: format!("{expected:?}"),
        ok,
    }
}

fn check(interval_ms: u64) -> HealthCheck {
    HealthCheck {
        interval: Duration::from_millis(interval_ms),
        unhealthy_threshold: 2,
    }
}

pub fn run(args: &Args) -> Result<bool> {
    let agent = Agent::find().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let delay = Duration::from_secs(args.dereg_delay_secs);
    let pause = Duration::from_millis(5);
    let all = |zip: &PathBuf| vec![zip.clone(); 3];
    eprintln!("bench: fleet: building the revisions ...");
    let mut builds = Builds::new("bench-fleet")?;
    let n: Vec<PathBuf> = ["v1", "v2", "v3", "v4"]
        .iter()
        .map(|v| builds.nonstop_zip(v, Build::Demo))
        .collect::<Result<_>>()?;
    let n5 = builds.nonstop_zip("v5", Build::NeedsDbSettings)?;
    let p: Vec<PathBuf> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| builds.plain_zip(v, Build::Demo))
        .collect::<Result<_>>()?;

    let mut rows = Vec::new();
    let mut reload_rows = Vec::new();
    let one_server_s;
    {
        eprintln!("bench: fleet: three servers with nonstop, from README.md's blocks ...");
        // host2 lacks the database settings v5 needs.
        let mut fleet = Fleet::new("bnf", Kind::Nonstop, agent.clone(), &[true, false, true])?;
        let first = fleet.deploy(
            "d-1",
            "v1",
            &all(&n[0]),
            DeploymentConfig::AllAtOnce,
            Traffic::Untouched,
        )?;
        if first.status != Status::Succeeded {
            bail!("the first deployment failed: {}", first.summary());
        }
        fleet.start_balancer(check(args.check_interval_ms))?;
        let load = fleet.load(pause)?;
        std::thread::sleep(Duration::from_millis(1500));
        let untouched = Traffic::Untouched;
        eprintln!("bench: fleet: (a) AllAtOnce ...");
        let a = measure(&mut fleet, &load, |f| {
            f.deploy(
                "d-2",
                "v2",
                &all(&n[1]),
                DeploymentConfig::AllAtOnce,
                untouched,
            )
        })?;
        eprintln!("bench: fleet: (b) OneAtATime ...");
        let b = measure(&mut fleet, &load, |f| {
            f.deploy(
                "d-3",
                "v3",
                &all(&n[2]),
                DeploymentConfig::OneAtATime,
                untouched,
            )
        })?;
        eprintln!("bench: fleet: (b) HalfAtATime ...");
        let h = measure(&mut fleet, &load, |f| {
            f.deploy(
                "d-4",
                "v4",
                &all(&n[3]),
                DeploymentConfig::HalfAtATime,
                untouched,
            )
        })?;
        eprintln!("bench: fleet: (e) OneAtATime, host2's build failing, then the rollback ...");
        let e = measure(&mut fleet, &load, |f| {
            f.deploy(
                "d-5",
                "v5",
                &all(&n5),
                DeploymentConfig::OneAtATime,
                untouched,
            )
        })?;
        let after_e = fleet.answers();
        let rb = measure(&mut fleet, &load, |f| {
            f.roll_back("d-6", DeploymentConfig::OneAtATime, untouched)?
                .context("no revision to roll back to")
        })?;
        let after_rb = fleet.answers();
        eprintln!("bench: fleet: {RELOADS} reloads of host1's nginx, keepalive_timeout 0 ...");
        let closed = reloads(&fleet, &load)?;
        let out = fleet.servers[0].bash(
            "sed -i '/^ *keepalive_timeout 0;$/d' /etc/nginx/sites-available/default && nginx -t && nginx -s reload",
            "/root",
        )?;
        if !out.status.success() {
            bail!("cannot take keepalive_timeout 0 out of host1's site: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(1000));
        eprintln!(
            "bench: fleet: {RELOADS} reloads of host1's nginx, nginx's default keep-alive ..."
        );
        let open = reloads(&fleet, &load)?;
        let samples = load.finish();
        reload_rows.push(reload_row(false, closed, &samples));
        reload_rows.push(reload_row(true, open, &samples));
        let stats = fleet.balancer()?.server_stats()?;
        for (i, s) in stats.iter().enumerate() {
            eprintln!(
                "bench: fleet: haproxy host{}: {} 2xx, errors {:?}",
                i + 1,
                s.num("hrsp_2xx"),
                s.errors()
            );
        }
        eprintln!("bench: fleet: after (e): {after_e:?}; after the rollback: {after_rb:?}");
        let mut ones: Vec<f64> = b
            .rollout
            .ran()
            .map(|h| h.detail.agent_time().as_secs_f64())
            .collect();
        ones.sort_by(f64::total_cmp);
        one_server_s = ones.get(ones.len() / 2).copied().unwrap_or(0.0);
        let none = "none";
        rows.push(row(
            "(a) nonstop, AllAtOnce",
            true,
            none,
            &a,
            &samples,
            false,
            Status::Succeeded,
            false,
        ));
        rows.push(row(
            "(b) nonstop, OneAtATime",
            true,
            none,
            &b,
            &samples,
            false,
            Status::Succeeded,
            false,
        ));
        rows.push(row(
            "(b) nonstop, HalfAtATime",
            true,
            none,
            &h,
            &samples,
            false,
            Status::Succeeded,
            false,
        ));
        rows.push(row(
            "(e) nonstop, OneAtATime, host2's build fails",
            true,
            none,
            &e,
            &samples,
            false,
            Status::Failed,
            false,
        ));
        rows.push(row(
            "(e) its automatic rollback (v4 redeployed)",
            true,
            none,
            &rb,
            &samples,
            false,
            Status::Succeeded,
            false,
        ));
    }
    {
        eprintln!("bench: fleet: three servers without nonstop (tests/fleet/plain) ...");
        let mut fleet = Fleet::new("bpf", Kind::Plain, agent, &[true, true, true])?;
        let first = fleet.deploy(
            "d-1",
            "v1",
            &all(&p[0]),
            DeploymentConfig::AllAtOnce,
            Traffic::Untouched,
        )?;
        if first.status != Status::Succeeded {
            bail!("the first deployment failed: {}", first.summary());
        }
        fleet.start_balancer(check(args.check_interval_ms))?;
        let load = fleet.load(pause)?;
        std::thread::sleep(Duration::from_millis(1500));
        let blocked = Traffic::Blocked {
            deregistration_delay: delay,
            allow_limit: Duration::from_secs(60),
        };
        eprintln!(
            "bench: fleet: (c) OneAtATime, BlockTraffic ({} s) / AllowTraffic ...",
            delay.as_secs()
        );
        let c = measure(&mut fleet, &load, |f| {
            f.deploy(
                "d-2",
                "v2",
                &all(&p[1]),
                DeploymentConfig::OneAtATime,
                blocked,
            )
        })?;
        eprintln!("bench: fleet: (d) AllAtOnce, no blocking ...");
        let d = measure(&mut fleet, &load, |f| {
            f.deploy(
                "d-3",
                "v3",
                &all(&p[2]),
                DeploymentConfig::AllAtOnce,
                Traffic::Untouched,
            )
        })?;
        let samples = load.finish();
        rows.push(row(
            "(c) without nonstop, OneAtATime, BlockTraffic/AllowTraffic",
            false,
            &format!("blocked, delay {} s", delay.as_secs()),
            &c,
            &samples,
            false,
            Status::Succeeded,
            true,
        ));
        rows.push(row(
            "(d) without nonstop, AllAtOnce, no blocking",
            false,
            "none",
            &d,
            &samples,
            true,
            Status::Succeeded,
            false,
        ));
    }

    let out = markdown(args, &rows, &reload_rows, one_server_s, started.elapsed());
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    write(
        &args.out.join("fleet.json"),
        &serde_json::to_string_pretty(&serde_json::json!({
            "machine": report::machine(),
            "haproxy": haproxy_version(),
            "deregistration_delay_s": args.dereg_delay_secs,
            "check_interval_ms": args.check_interval_ms,
            "one_server_s": one_server_s,
            "elapsed_s": started.elapsed().as_secs_f64(),
            "rows": rows,
            "reloads": reload_rows,
        }))?,
    )?;
    write(&args.out.join("fleet.md"), &out)?;
    println!("{out}");
    println!(
        "bench: wrote {}, fleet.md there",
        args.out.join("fleet.json").display()
    );
    // With keep-alive toward the balancer a reload may lose requests: that
    // row is the measurement of why the README's block exists, not a failure.
    Ok(rows.iter().all(|r| r.ok)
        && reload_rows
            .iter()
            .all(|r| r.keepalive_to_balancer || r.failed == 0))
}

fn haproxy_version() -> String {
    std::process::Command::new(HAPROXY)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

fn secs(x: f64) -> String {
    format!("{x:.1} s")
}

fn markdown(
    args: &Args,
    rows: &[Row],
    reload_rows: &[ReloadRow],
    one_server_s: f64,
    elapsed: Duration,
) -> String {
    let m = report::machine();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Fleet: 3 servers (namespaces on a bridge, Debian's nginx on :80 each, set up from README.md's blocks), \
         {} in front (round-robin, health check GET /profile every {} ms, 2 failures down, 1 pass up), \
         every hook through the CodeDeploy agent's code; load through the balancer: a GET and a POST client \
         on new connections and one of each on a kept-alive connection, 5 ms apart. {} ({} cores), {}, {}.\n",
        haproxy_version(),
        args.check_interval_ms,
        m.cpu,
        m.cores,
        m.kernel,
        m.java
    );
    let _ = writeln!(
        s,
        "| case | deployment group | fleet's time | each host's deployment | requests | failed (POST / kept-alive) | LB 5xx | outcome |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for r in rows {
        let hosts: Vec<String> = r
            .hosts
            .iter()
            .map(|h| {
                let mut x = format!("host{} {}", h.host, secs(h.deploy_s));
                if let Some(b) = h.block_s {
                    x.push_str(&format!(" + block {}", secs(b)));
                }
                if let Some(a) = h.allow_s {
                    x.push_str(&format!(" + allow {}", secs(a)));
                }
                if !h.succeeded {
                    x.push_str(&format!(
                        " **failed** ({})",
                        h.failed_at.as_deref().unwrap_or("?")
                    ));
                }
                x
            })
            .chain(r.skipped.iter().map(|h| format!("host{h} skipped")))
            .collect();
        let mut fleet = secs(r.fleet_s);
        if let Some(d) = r.default_delay_fleet_s {
            fleet.push_str(&format!(" ({} with the 300 s delay)", secs(d)));
        }
        let versions: Vec<String> = r.versions.keys().cloned().collect();
        let _ = writeln!(
            s,
            "| {} | {}, traffic blocking: {} | {} | {} | {} | {} ({} / {}) | {} | {}: {}{} |",
            r.case,
            r.config.trim_start_matches("CodeDeployDefault."),
            r.traffic,
            fleet,
            hosts.join("; "),
            r.requests,
            r.failed,
            r.failed_posts,
            r.failed_kept_alive,
            r.lb_5xx,
            r.status,
            r.revision,
            if versions.is_empty() {
                String::new()
            } else {
                format!(" (served {})", versions.join(", "))
            },
        );
    }
    let a = rows.iter().find(|r| r.case.starts_with("(a)"));
    let c = rows.iter().find(|r| r.case.starts_with("(c)"));
    let _ = writeln!(
        s,
        "\nOne server alone (the median host of the OneAtATime row): {}.",
        secs(one_server_s)
    );
    if let Some(a) = a {
        let _ = writeln!(
            s,
            "AllAtOnce with nonstop: the fleet in {} ({:+.1} s against one server), {} of {} requests failed.",
            secs(a.fleet_s),
            a.fleet_s - one_server_s,
            a.failed,
            a.requests
        );
    }
    if let Some(c) = c {
        let per_host: f64 = c
            .hosts
            .iter()
            .map(|h| h.deploy_s + h.allow_s.unwrap_or(0.0))
            .sum::<f64>()
            / c.hosts.len().max(1) as f64;
        let _ = writeln!(
            s,
            "Without nonstop, BlockTraffic/AllowTraffic: {} with a {} s deregistration delay; with ALB's default 300 s: {} \
             (each host: 300 s + {} of stop/start/validate and AllowTraffic), and up to {:.0} s more per host for the first \
             health check at ALB's default interval of {:.0} s.",
            secs(c.fleet_s),
            args.dereg_delay_secs,
            secs(c.default_delay_fleet_s.unwrap_or(0.0)),
            secs(per_host),
            DEFAULT_INTERVAL_S,
            DEFAULT_INTERVAL_S
        );
    }
    let _ = writeln!(
        s,
        "\n| host1's nginx reloaded {RELOADS} times, 250 ms apart, under the same load | requests | failed (POST / kept-alive) | the balancer's response errors on host1 |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    for r in reload_rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} ({} / {}) | {} |",
            if r.keepalive_to_balancer {
                "nginx's default keep-alive (65 s) toward the balancer"
            } else {
                "`keepalive_timeout 0;` (README's fleet-nginx block)"
            },
            r.requests,
            r.failed,
            r.failed_posts,
            r.failed_kept_alive,
            r.eresp
        );
    }
    for r in rows.iter().filter(|r| !r.ok) {
        let _ = writeln!(
            s,
            "\n**{}: expected {}{}, got {} with {} failed request(s)** ({})",
            r.case,
            r.expected,
            if r.failures_expected {
                ""
            } else {
                " and no failed request"
            },
            r.status,
            r.failed,
            r.reason.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(s, "\nbench --fleet: {} in all", secs(elapsed.as_secs_f64()));
    s
}
