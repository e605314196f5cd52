//! End to end, through the five binaries run the way the CodeDeploy agent
//! runs hooks (no arguments, stdin closed, stdout/stderr piped, config found
//! beside the executable), against a real nginx and the real demo jar.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::time::{Duration, Instant};

use nonstop_common::frame::budget;
use serde_json::{json, Value};
use tests::{alive, Bundle, Load, Setup, SetupOptions, TestDir};

#[test]
fn three_deployments_under_load_never_drop_a_request() {
    let setup = Setup::new("e2e-cycle", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    // The bootstrap left real1 live (the include already routed to it).
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".to_string()));

    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let mut expected_live = "real1";
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let id = format!("d-{}", n + 2);
        let idle = if expected_live == "real1" {
            "real2"
        } else {
            "real1"
        };

        let printed = setup.hook("profile", &[], None).unwrap();
        printed.assert_ok();
        assert_eq!(
            printed.stdout.trim(),
            idle,
            "profile must print the idle profile"
        );

        setup.drop_jar(version).unwrap();
        let stop = setup.hook("stop", &[], Some(&id)).unwrap();
        stop.assert_ok();
        let old_pid = setup.launched_pid(idle);
        assert!(
            old_pid.is_none_or(|p| !alive(p)),
            "stop left the idle app running"
        );

        let start = setup.hook("start", &[], Some(&id)).unwrap();
        start.assert_ok();
        // The hook's pipes closed while the app it started keeps running.
        assert!(
            start.closed_after < Duration::from_secs(10),
            "start held its pipes for {:?}",
            start.closed_after
        );
        let new_pid = setup.launched_pid(idle).expect("start records the pid");
        assert!(
            alive(new_pid),
            "the started app must keep running after start returns"
        );
        start.assert_stderr_has(&format!("started {idle}"));

        let health = setup.hook("health", &[], Some(&id)).unwrap();
        health.assert_ok();
        // The moment health returns, nginx serves the new version, and only
        // it: no worker of the old configuration takes a new connection.
        for _ in 0..20 {
            let answer = setup.get("/").unwrap();
            assert_eq!(
                answer,
                (200, format!("demo {version} {idle}")),
                "{}",
                health.stderr
            );
        }
        health.assert_stderr_has("confirmed");
        // The previous live app is kept for a quick rollback (the book's default).
        let previous = setup.launched_pid(expected_live).unwrap();
        assert!(alive(previous), "the previous live app must still run");
        expected_live = idle;
    }
    let samples = load.finish();

    let failed: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        samples.len(),
        failed.first()
    );
    assert!(
        samples.len() > 100,
        "the load ran too little to mean anything: {}",
        samples.len()
    );
    // Every version served traffic, in order, and no request saw an old one after a newer one.
    let versions: Vec<&str> = samples
        .iter()
        .filter_map(|s| s.body.split_whitespace().nth(1))
        .collect();
    for v in ["v1", "v2", "v3", "v4"] {
        assert!(versions.contains(&v), "{v} never answered");
    }

    // The state files tell the story an operator would read.
    let switched: Value =
        serde_json::from_str(&fs::read_to_string(setup.state_dir().join("switch.json")).unwrap())
            .unwrap();
    assert_eq!(switched["active"]["name"], "real2");
    assert_eq!(switched["previous"]["name"], "real1");
    let history = fs::read_to_string(setup.state_dir().join("history.jsonl")).unwrap();
    // 2 bootstrap stages + 3 deployments x 3 stages, all exit 0.
    let lines: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11, "{history}");
    assert!(lines.iter().all(|l| l["exit_code"] == 0), "{history}");

    let json = setup.hook("profile", &["--json"], None).unwrap();
    json.assert_ok();
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["live"]["profile"], "real2");
    assert_eq!(report["idle"]["profile"], "real1");
    assert_eq!(report["profiles"][0]["listening"], true);
    assert_eq!(
        report["profiles"][1]["pid"],
        setup.launched_pid("real2").unwrap()
    );
}

#[test]
fn no_fixed_wait_health_notices_the_app_as_soon_as_it_answers() {
    // With a 2 s start-up, the book's scripts spend 10 s before the first check.
    let setup = Setup::new(
        "e2e-prompt",
        &SetupOptions {
            startup_delay_ms: 2000,
            ..Default::default()
        },
    )
    .unwrap();
    setup.drop_jar("v1").unwrap();
    // When the app first accepts a connection, seen from here.
    let port = setup.ports[0];
    let up = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    let started = Instant::now();
    setup
        .hook("start", &["--profile", "real1"], None)
        .unwrap()
        .assert_ok();
    let health = setup
        .hook("health", &["--profile", "real1", "--no-switch"], None)
        .unwrap();
    let done = Instant::now();
    health.assert_ok();
    let up = up.join().unwrap().expect("the app never listened");
    // Measured from the app's first answer, not from the start: a JVM slow
    // to boot on a loaded machine costs nothing here, and any fixed sleep
    // (before the first check or between checks) shows up in full.
    let late = done.saturating_duration_since(up);
    assert!(
        late < Duration::from_secs(3),
        "health ended {late:?} after the app first accepted a connection \
         (start+health {:?} for a 2 s start-up)",
        done - started
    );
    health.assert_stderr_has("answers");
}

#[test]
fn a_failed_nginx_test_restores_the_include_byte_for_byte() {
    let setup = Setup::new("e2e-bad-template", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    // Something to switch to: a switch to nothing is refused before the write.
    setup.start_by_hand("real2", "v2").unwrap();
    let before = fs::read(&setup.nginx.include).unwrap();
    // A template without its semicolon makes `nginx -t` fail.
    setup
        .edit_config(|c| c["nginx"]["template"] = "set $service_url http://127.0.0.1:{port}".into())
        .unwrap();

    let run = setup.hook("switch", &["--to", "real2"], None).unwrap();
    run.assert_code(1)
        .assert_stderr_has("nginx was not reloaded");
    assert_eq!(fs::read(&setup.nginx.include).unwrap(), before);
    assert!(setup.nginx.test_config());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".to_string()));
}

#[test]
fn config_errors_exit_2_naming_the_key_and_touch_nothing() {
    let dir = TestDir::new("e2e-config");
    let bundle = tests::Bundle::new(
        &dir.join("bundle"),
        &serde_json::json!({"app": {"dir": dir.join("app"), "comand": ["java"]}}),
    )
    .unwrap();
    for stage in tests::STAGES {
        let run = bundle
            .hook(stage, &[], Some("d-1"), Duration::from_secs(10))
            .unwrap();
        run.assert_code(2).assert_stderr_has("app.comand");
        assert!(
            run.stderr.starts_with(&format!("{stage}: error:")),
            "{stage}: {}",
            run.stderr
        );
    }
    assert!(
        !dir.join("app").exists(),
        "a config error must not create anything"
    );

    // No config anywhere: the message says where it looked.
    fs::remove_file(&bundle.config).unwrap();
    let run = bundle
        .hook("stop", &[], None, Duration::from_secs(10))
        .unwrap();
    run.assert_code(2)
        .assert_stderr_has("nonstop.json")
        .assert_stderr_has("NONSTOP_CONFIG");
}

#[test]
fn a_second_deployment_waits_for_the_first_and_names_it() {
    let setup = Setup::new("e2e-two-deployments", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    setup
        .edit_config(|c| c["lock_timeout_secs"] = 1.into())
        .unwrap();
    setup.drop_jar("v2").unwrap();

    setup
        .hook("stop", &[], Some("d-first"))
        .unwrap()
        .assert_ok();
    setup
        .hook("start", &[], Some("d-first"))
        .unwrap()
        .assert_ok();
    // d-first is between start and health: d-second must not run its stop,
    // which would kill the app d-first is about to switch to.
    let first_app = setup.launched_pid("real2").unwrap();
    let second = setup.hook("stop", &[], Some("d-second")).unwrap();
    second
        .assert_code(1)
        .assert_stderr_has("deployment d-first is in progress");
    assert!(
        alive(first_app),
        "the second deployment touched the first one's app"
    );

    setup
        .hook("health", &[], Some("d-first"))
        .unwrap()
        .assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".to_string()));
    // Once d-first is done, d-second goes ahead: its idle profile is now real1.
    let second = setup.hook("stop", &[], Some("d-second")).unwrap();
    second.assert_ok().assert_stderr_has("idle real1");
    assert!(alive(first_app));
}

#[test]
fn disagreeing_witnesses_stop_nothing_and_switch_to_recovers() {
    let setup = Setup::new("e2e-disagree", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let (real1, real2) = (
        setup.launched_pid("real1").unwrap(),
        setup.launched_pid("real2").unwrap(),
    );
    // A taken port is refused, naming who holds it.
    let again = setup.hook("start", &["--profile", "real2"], None).unwrap();
    again
        .assert_code(1)
        .assert_stderr_has(&format!("pid {real2}"));
    assert_eq!(
        setup.launched_pid("real2"),
        Some(real2),
        "a refused start must not overwrite the record"
    );

    // Someone edits the include by hand and never reloads: nginx still
    // answers real1, the include says real2.
    fs::write(
        &setup.nginx.include,
        format!("set $service_url http://127.0.0.1:{};\n", setup.ports[1]),
    )
    .unwrap();
    let stop = setup.hook("stop", &[], Some("d-9")).unwrap();
    stop.assert_code(1)
        .assert_stderr_has("real1")
        .assert_stderr_has("real2");
    assert!(
        alive(real1) && alive(real2),
        "nothing may be stopped when the witnesses disagree"
    );
    let profile = setup.hook("profile", &[], None).unwrap();
    profile.assert_code(1);

    // The operator points nginx where it should be, and all agree again.
    setup
        .hook("switch", &["--to", "real1"], None)
        .unwrap()
        .assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".to_string()));
    let profile = setup.hook("profile", &[], None).unwrap();
    profile.assert_ok();
    assert_eq!(profile.stdout.trim(), "real2");
}

/// The shipped example config is valid, and with the shipped appspec.yml
/// each hook's timeout covers the longest its stage may wait with that
/// config: the same check (`nonstop_common::frame::budget`) every stage makes when
/// it loads a config that has an appspec.yml beside it.
#[test]
fn appspec_timeouts_cover_the_example_configs_waits() {
    let root = tests::repo_root();
    let config = nonstop_common::config::load(&root.join("examples/nonstop.json")).unwrap();
    let appspec = fs::read_to_string(root.join("appspec.yml")).unwrap();
    assert!(
        appspec.lines().any(|l| l == "version: 0.0"),
        "version must be unquoted 0.0"
    );
    assert!(appspec.lines().any(|l| l == "os: linux"));

    let hooks = nonstop_common::frame::appspec::parse_hooks(&appspec).unwrap();
    let stages: Vec<&str> = hooks.iter().map(|h| h.stage()).collect();
    assert_eq!(stages, ["stop", "start", "health"]);
    for hook in &hooks {
        assert!(
            hook.location.strip_prefix("scripts/").is_some() && !hook.location.contains(' '),
            "hook locations are relative to the bundle, without arguments: {}",
            hook.location
        );
        let needs = budget::of(&config, hook.stage()).unwrap().total_secs();
        assert!(
            hook.timeout.unwrap() >= needs,
            "{}: timeout {:?} < {needs} s it may wait",
            hook.stage(),
            hook.timeout
        );
    }
    budget::check(&config, &root.join("appspec.yml"), &appspec).unwrap();
}

/// A bundle whose appspec.yml gives a hook less time than its stage may
/// wait with the bundle's config (retiring on: `health` also drains and
/// stops the old app, past ValidateService's 180 s): the hook exits 2
/// before it touches anything, naming the hook, both numbers and the keys
/// to change. With waits that fit, the same bundle runs.
#[test]
fn hooks_exit_2_when_the_appspec_timeout_is_shorter_than_the_configs_waits() {
    let dir = TestDir::new("e2e-budget");
    let ports = tests::free_ports(3);
    let state = dir.join("state");
    let mut config = json!({
        "profiles": [{"name": "real1", "port": ports[0]}, {"name": "real2", "port": ports[1]}],
        "probe_url": format!("http://127.0.0.1:{}/profile", ports[2]),
        "state_dir": state,
        "app": {"dir": dir.join("app"), "retire": true},
        "nginx": {"include": dir.join("service-url.inc"), "pid_file": ""}
    });
    let bundle = Bundle::new(&dir.join("bundle"), &config).unwrap();
    fs::copy(
        tests::repo_root().join("appspec.yml"),
        bundle.root.join("appspec.yml"),
    )
    .unwrap();

    let health = bundle
        .hook(
            "health",
            &["--dry-run"],
            Some("d-1"),
            Duration::from_secs(60),
        )
        .unwrap();
    health.assert_code(2);
    for part in [
        "appspec.yml",
        "ValidateService",
        "scripts/health",
        "timeout 180 s",
        "can wait up to",
        "nginx.drain_timeout_secs",
        "app.stop_timeout_secs",
    ] {
        health.assert_stderr_has(part);
    }
    assert!(!state.exists(), "nothing may be touched");

    // Shorter lock wait, drain and stop: the waits fit in 180 s and the
    // hook runs (the switch back to the old app, should the new one die
    // while it drains, is then the longer way out of retiring).
    config["lock_timeout_secs"] = json!(15);
    config["app"]["stop_timeout_secs"] = json!(5);
    config["nginx"]["drain_timeout_secs"] = json!(10);
    fs::write(&bundle.config, config.to_string()).unwrap();
    let health = bundle
        .hook(
            "health",
            &["--dry-run"],
            Some("d-1"),
            Duration::from_secs(60),
        )
        .unwrap();
    health.assert_ok().assert_stderr_has("would");
}

#[test]
fn an_app_that_dies_fails_start_or_health_at_once_with_its_log() {
    // Exits as soon as it runs: start notices within its grace period.
    let opts = SetupOptions {
        startup_delay_ms: 0,
        java_opts: vec!["-Ddemo.exit.at.startup=3".into()],
        ..Default::default()
    };
    let setup = Setup::new("e2e-dies-at-once", &opts).unwrap();
    // The watch ends as soon as the app exits; a long one only makes sure a
    // JVM slow to boot on a loaded machine still exits inside it.
    setup
        .edit_config(|c| c["app"]["start_grace_ms"] = json!(10_000))
        .unwrap();
    setup.drop_jar("v1").unwrap();
    let include = fs::read(&setup.nginx.include).unwrap();
    let start = setup.hook("start", &[], Some("d-1")).unwrap();
    start
        .assert_code(1)
        .assert_stderr_has("exited at once")
        .assert_stderr_has("exiting at start-up as asked");
    assert_eq!(fs::read(&setup.nginx.include).unwrap(), include);

    // Dies after 3 s of start-up, past start's 1 s grace (with room for a
    // slow `start` on a loaded machine): health notices the exit at once
    // instead of polling for its 30 s timeout.
    let opts = SetupOptions {
        startup_delay_ms: 3000,
        java_opts: vec!["-Ddemo.exit.at.startup=3".into()],
        ..Default::default()
    };
    let setup = Setup::new("e2e-dies-later", &opts).unwrap();
    setup.drop_jar("v1").unwrap();
    let include = fs::read(&setup.nginx.include).unwrap();
    setup.hook("start", &[], Some("d-1")).unwrap().assert_ok();
    let health = setup.hook("health", &[], Some("d-1")).unwrap();
    health.assert_code(1);
    assert!(
        health.elapsed < Duration::from_secs(15),
        "health took {:?}",
        health.elapsed
    );
    health
        .assert_stderr_has("has exited")
        .assert_stderr_has("exiting at start-up as asked")
        // No switch step ran: the switch's lines carry health's name now.
        .assert_stderr_lacks("health: wrote ");
    assert_eq!(fs::read(&setup.nginx.include).unwrap(), include);
    assert!(setup.nginx.test_config());
}

/// A non-JVM app (the Python demo server, which does not unblock signals
/// itself) is deployed through the stages like the jar, and `stop` ends it
/// by its own graceful exit on SIGTERM: the request in flight is answered,
/// the app logs its handler ran and that it drained, and no SIGKILL is sent.
#[test]
fn a_python_app_is_deployed_and_stopped_by_its_own_sigterm_handler() {
    let setup = Setup::new(
        "e2e-python",
        &SetupOptions {
            python: true,
            startup_delay_ms: 0,
            ..Default::default()
        },
    )
    .unwrap();
    setup.bootstrap("v1").unwrap();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".to_string()));

    // v2 on real2, switched to by health.
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        setup.hook(stage, &[], Some("d-2")).unwrap().assert_ok();
    }
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".to_string()));

    // The next deployment's stop takes down v1 on real1 while it answers a
    // slow request of its own.
    let v1 = setup.launched_pid("real1").unwrap();
    assert!(alive(v1));
    let log = setup.app_dir.join("logs/real1.log");
    let port = setup.ports[0];
    let in_flight =
        std::thread::spawn(move || tests::http_get(port, "/slow?ms=1500", Duration::from_secs(30)));
    assert!(
        tests::wait_until(Duration::from_secs(10), || fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("slow request for 1500 ms began")),
        "the slow request never reached the app"
    );
    setup.drop_jar("v3").unwrap();
    let stop = setup.hook("stop", &[], Some("d-3")).unwrap();
    stop.assert_ok();
    let app_log = fs::read_to_string(&log).unwrap();
    stop.assert_stderr_lacks("SIGKILL")
        .assert_stderr_has("exited after");
    assert!(
        app_log.contains("demo: SIGTERM received") && app_log.contains("demo: drained, exiting"),
        "the app's SIGTERM handler did not run:\n{app_log}"
    );
    assert!(!alive(v1));
    assert_eq!(
        in_flight.join().unwrap().unwrap(),
        (200, "slow 1500 v1 real1".to_string()),
        "the request in flight was not finished"
    );
    let history = fs::read_to_string(setup.state_dir().join("history.jsonl")).unwrap();
    let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["stage"].as_str(), last["exit_code"].as_u64()),
        (Some("stop"), Some(0))
    );
    // v2 still serves, untouched.
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".to_string()));
}
