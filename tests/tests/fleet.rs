//! Many servers: three hosts set up from README.md's blocks (each its own
//! Debian server: nginx on :80, `ec2-user`, two apps), on a bridge behind a
//! load balancer standing in for an ALB target group (HAProxy, round-robin,
//! an HTTP health check per host), deployed by the deployment group that
//! README.md's "Many servers" gives (its `aws deploy create-deployment-group`
//! block, read by the test), the harness playing CodeDeploy's service and
//! every host's hooks running through the real CodeDeploy agent's code.
//! Clients request through the load balancer the whole time: GETs and POSTs,
//! on new and kept-alive connections.
//!
//! Without the agent's source (NONSTOP_CODEDEPLOY_AGENT) the test says it
//! skipped and how to get it. The side-by-side figures (OneAtATime,
//! BlockTraffic/AllowTraffic without nonstop) are the benchmark's: `bench
//! --fleet`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tests::fleet::{
    failed, group_settings, versions_served, Build, Builds, DeploymentConfig, Fleet, HealthCheck,
    HostReport, Kind, Rollout, Status, Traffic,
};
use tests::netns::in_netns;
use tests::{http_get, readme_blocks, repo_root, Agent};

fn agent_or_skip(test: &str) -> Option<Agent> {
    match Agent::find() {
        Ok(a) => Some(a),
        Err(why) => {
            eprintln!("{test}: skipped: {why}");
            None
        }
    }
}

/// Everything about a rollout, for a failing assertion's message.
fn describe(r: &Rollout<HostReport>) -> String {
    let mut s = r.summary();
    for run in r.ran() {
        s.push_str(&format!(
            "\nhost{} ({:?}, {:.1} s){}",
            run.host + 1,
            run.succeeded,
            run.detail.elapsed.as_secs_f64(),
            run.detail
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
        if let Some(d) = &run.detail.deployment {
            s.push_str(&format!("\n{}", d.describe()));
        }
    }
    s
}

/// The per-host and fleet times of a rollout, for the figures.
fn times(r: &Rollout<HostReport>) -> String {
    let hosts: Vec<String> = r
        .ran()
        .map(|h| {
            format!(
                "host{} {:.1} s",
                h.host + 1,
                h.detail.agent_time().as_secs_f64()
            )
        })
        .collect();
    format!(
        "fleet {:.1} s ({})",
        r.elapsed.as_secs_f64(),
        hosts.join(", ")
    )
}

#[test]
fn a_deployment_group_rolls_nonstop_over_three_servers_behind_a_load_balancer() {
    let Some(agent) = agent_or_skip("fleet") else {
        return;
    };
    let started = Instant::now();
    // The deployment group README.md's "Many servers" tells a reader to make.
    let blocks = readme_blocks(&repo_root().join("README.md")).unwrap();
    let block = blocks
        .iter()
        .find(|b| b.name == "fleet-deployment-group")
        .expect("README.md has no block fleet-deployment-group (\"Many servers\")");
    let settings = group_settings(&block.text).unwrap();
    assert!(settings.in_place, "{settings:?}");
    assert!(
        !settings.traffic_control,
        "nonstop keeps each host serving: the README's group must not block traffic: {settings:?}"
    );
    assert_eq!(settings.config, DeploymentConfig::AllAtOnce, "{settings:?}");
    assert!(settings.rollback_on_failure, "{settings:?}");
    let (config, traffic) = (settings.config, Traffic::Untouched);

    // The CI side first: the load below measures the fleet, not the build.
    // v3 reads its database settings at start-up; host3 never got them.
    let mut builds = Builds::new("fleet-ci").unwrap();
    let v1 = builds.nonstop_zip("v1", Build::Demo).unwrap();
    let v2 = builds.nonstop_zip("v2", Build::Demo).unwrap();
    let v3 = builds.nonstop_zip("v3", Build::NeedsDbSettings).unwrap();
    let mut fleet = Fleet::new("fleet", Kind::Nonstop, agent, &[true, true, false]).unwrap();
    let hosts = fleet.servers.len();

    // Each host checked from the bundle as README's step 5 says.
    for host in 0..hosts {
        fleet.upload(host, &v1).unwrap();
        let check = fleet.run_block(host, "first-check").unwrap();
        assert!(
            check.lines().all(|l| l.starts_with("ok: ")),
            "host{}: {check}",
            host + 1
        );
    }

    // The first deployment, nothing live yet (no load: each host's 502
    // until then is README's, not the fleet's).
    let r = fleet
        .deploy("d-fleet-1", "v1", &vec![v1.clone(); hosts], config, traffic)
        .unwrap();
    assert_eq!(r.status, Status::Succeeded, "{}", describe(&r));
    assert_eq!(fleet.answers(), vec!["demo v1 real2"; hosts]);

    fleet
        .start_balancer(HealthCheck {
            interval: Duration::from_millis(500),
            unhealthy_threshold: 2,
        })
        .unwrap();
    let (status, body) = in_netns(fleet.netns(), || http_get(80, "/", Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "demo v1 real2"));
    let load = fleet.load(Duration::from_millis(5)).unwrap();
    // Steady traffic first.
    std::thread::sleep(Duration::from_millis(500));

    // AllAtOnce: every host at the same time, each switching its own nginx.
    let all = fleet
        .deploy("d-fleet-2", "v2", &vec![v2.clone(); hosts], config, traffic)
        .unwrap();
    assert_eq!(all.status, Status::Succeeded, "{}", describe(&all));
    assert_eq!(all.max_in_flight, hosts, "{}", describe(&all));
    assert_eq!(all.succeeded_hosts(), [0, 1, 2], "{}", describe(&all));
    assert_eq!(fleet.answers(), vec!["demo v2 real1"; hosts]);

    // One host whose new build fails: the agent reports that host failed at
    // ValidateService; AllAtOnce succeeds with the others (no automatic
    // rollback: the deployment did not fail); that host keeps serving v2.
    let mixed = fleet
        .deploy("d-fleet-3", "v3", &vec![v3.clone(); hosts], config, traffic)
        .unwrap();
    assert_eq!(mixed.status, Status::Succeeded, "{}", describe(&mixed));
    assert_eq!(mixed.failed_hosts(), [2], "{}", describe(&mixed));
    let host3 = mixed.hosts[2].as_ref().unwrap();
    let d3 = host3.detail.deployment.as_ref().unwrap();
    let failure = d3.failed().unwrap_or_else(|| panic!("{}", d3.describe()));
    assert_eq!(failure.command, "ValidateService", "{}", d3.describe());
    assert_eq!(failure.diagnostics["error_code"], 4, "{}", d3.describe());
    // The agent's message names the script; its log is `health`'s, naming
    // the app that died and quoting the end of the app's log.
    let message = failure.diagnostics["message"].as_str().unwrap_or_default();
    let log = failure.diagnostics["log"].as_str().unwrap_or_default();
    assert!(
        message.contains("scripts/health") && message.contains("exit code 1"),
        "{}",
        d3.describe()
    );
    assert!(
        log.contains("has exited after") && log.contains("no database settings"),
        "{}",
        d3.describe()
    );
    assert_eq!(
        fleet.answers(),
        ["demo v3 real2", "demo v3 real2", "demo v2 real1"],
        "a fleet of mixed versions"
    );
    assert!(!fleet.group.hosts[2].healthy);
    assert_eq!(fleet.group.revision.as_deref(), Some("v3"));

    // Rolled back by hand: the previous revision redeployed as a new
    // deployment; the unhealthy host goes first.
    let back = fleet
        .deploy("d-fleet-4", "v2", &vec![v2.clone(); hosts], config, traffic)
        .unwrap();
    assert_eq!(back.status, Status::Succeeded, "{}", describe(&back));
    assert_eq!(back.order[0], 2, "{}", describe(&back));
    assert_eq!(
        fleet.answers(),
        ["demo v2 real1", "demo v2 real1", "demo v2 real2"]
    );
    assert!(fleet.group.hosts.iter().all(|h| h.healthy));

    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    let balancer = fleet.balancer().unwrap();
    let stats = balancer.server_stats().unwrap();

    // What the users behind the load balancer saw: every request answered.
    let bad = failed(&samples);
    let served = versions_served(&samples);
    eprintln!(
        "fleet: {} requests through the load balancer ({} POSTs, {} on kept-alive connections), {} failed; versions {:?}",
        samples.len(),
        samples.iter().filter(|s| s.post).count(),
        samples.iter().filter(|s| s.kept_alive).count(),
        bad.len(),
        served
    );
    for (name, r) in [
        ("AllAtOnce", &all),
        ("one host failing", &mixed),
        ("rollback", &back),
    ] {
        eprintln!("fleet: {name}: {}", times(r));
    }
    eprintln!("fleet: {:.1} s in all", started.elapsed().as_secs_f64());
    assert!(
        samples.len() > 100,
        "the load hardly ran: {}",
        samples.len()
    );
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, first: {:?}",
        bad.len(),
        samples.len(),
        bad.iter().take(5).collect::<Vec<_>>()
    );
    for v in served.keys() {
        assert!(["v1", "v2", "v3"].contains(&v.as_str()), "{served:?}");
    }
    for kind in [(false, false), (true, false), (false, true), (true, true)] {
        assert!(
            samples
                .iter()
                .any(|s| (s.post, s.kept_alive) == kind && s.status == 200),
            "no answered request of kind (post, kept-alive) {kind:?}"
        );
    }
    // And the load balancer never saw an error: no 5xx, no failed
    // connection or response, no failed health check; every host up.
    for (host, stat) in stats.iter().enumerate() {
        assert!(
            stat.errors().is_empty(),
            "host{}: {:?}\n{}",
            host + 1,
            stat.errors(),
            balancer.log()
        );
        assert_eq!(stat.get("status"), "UP", "host{}", host + 1);
        assert!(stat.num("hrsp_2xx") > 0, "host{} got no request", host + 1);
    }
}
