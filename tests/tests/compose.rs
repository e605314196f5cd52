//! The Docker Compose backend against a real engine: images built here
//! (`FROM scratch` + the static demo server; nothing can be pulled), a
//! compose file with blue and green on the two ports and an unrelated
//! blue-db that must keep running, the real nginx in front. An engine that
//! does not answer fails these tests; it is not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use tests::{assert_all_served, HookRun, Load, Setup, SetupOptions};

fn setup(name: &str) -> Setup {
    Setup::new(
        name,
        &SetupOptions {
            compose: true,
            ..Default::default()
        },
    )
    .unwrap()
}

fn other(profile: &str) -> &'static str {
    if profile == "real1" {
        "real2"
    } else {
        "real1"
    }
}

fn service(profile: &str) -> &'static str {
    if profile == "real1" {
        "blue"
    } else {
        "green"
    }
}

fn launched(setup: &Setup, profile: &str) -> Value {
    let text = std::fs::read_to_string(setup.state_dir().join(format!("launched-{profile}.json")))
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn three_compose_deployments_under_load_touch_only_their_service() {
    let setup = setup("compose-cycle");
    let project = setup.compose.as_ref().unwrap();
    let db = project.running("blue-db").expect("blue-db runs");
    setup.bootstrap("v1").unwrap();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));

    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let mut live = "real1";
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let idle = other(live);
        let id = format!("d-{n}");
        let live_container = project.running(service(live)).unwrap();
        setup.drop_jar(version).unwrap();
        let stop = setup.hook("stop", &[], Some(&id)).unwrap();
        stop.assert_ok();
        assert!(project.running(service(idle)).is_none(), "{}", stop.stderr);
        let start = setup.hook("start", &[], Some(&id)).unwrap();
        start
            .assert_ok()
            .assert_stderr_has(&format!("started service {}", service(idle)));
        let record = launched(&setup, idle);
        let container = project.running(service(idle)).unwrap();
        assert_eq!(record["container_id"], json!(container));
        assert!(record["image_id"].as_str().unwrap().starts_with("sha256:"));
        let health: HookRun = setup.hook("health", &[], Some(&id)).unwrap();
        health.assert_ok();
        for _ in 0..10 {
            assert_eq!(
                setup.get("/").unwrap(),
                (200, format!("demo {version} {idle}"))
            );
        }
        // Only the idle service was touched: the live one and blue-db run on.
        assert_eq!(project.running(service(live)), Some(live_container));
        assert_eq!(project.running("blue-db"), Some(db.clone()));
        live = idle;
    }
    assert_all_served(&load.finish(), &["v1", "v2", "v3", "v4"]);

    let json = setup.hook("profile", &["--json"], None).unwrap();
    json.assert_ok();
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let blue = &v["profiles"][0];
    assert_eq!(blue["service"], "blue");
    assert_eq!(blue["container"]["state"], "running");
    assert!(blue["container"]["image"]
        .as_str()
        .unwrap()
        .ends_with(":current"));
}

#[test]
fn a_container_that_exits_at_once_or_never_answers_fails_and_changes_nothing() {
    let setup = setup("compose-faults");
    let project = setup.compose.as_ref().unwrap();
    // The tool named in the config rather than found (the other test finds it).
    setup
        .edit_config(|c| c["app"]["compose"]["command"] = json!(["docker-compose"]))
        .unwrap();
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let include = setup.include();
    let live = project.running("blue").unwrap();

    // A build that exits at once: start (or health) fails with its log.
    let compose_file = project.file.clone();
    let original = std::fs::read_to_string(&compose_file).unwrap();
    std::fs::write(
        &compose_file,
        original.replacen(
            "PROFILE: real2\n",
            "PROFILE: real2\n      EXIT_AT_STARTUP: \"3\"\n",
            1,
        ),
    )
    .unwrap();
    setup.drop_jar("v2").unwrap();
    setup.hook("stop", &[], Some("d-1")).unwrap().assert_ok();
    let start = setup.hook("start", &[], Some("d-1")).unwrap();
    let failed = if start.code() == 0 {
        setup.hook("health", &[], Some("d-1")).unwrap()
    } else {
        start
    };
    failed
        .assert_code(1)
        .assert_stderr_has("exited")
        .assert_stderr_has("EXIT_AT_STARTUP=3");

    // A build that runs but never answers right: health times out.
    std::fs::write(
        &compose_file,
        original.replacen(
            "PROFILE: real2\n",
            "PROFILE: real2\n      ANSWER: wrong\n",
            1,
        ),
    )
    .unwrap();
    setup
        .edit_config(|c| c["health"]["timeout_secs"] = json!(3))
        .unwrap();
    setup.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-2")).unwrap().assert_ok();
    let health = setup.hook("health", &[], Some("d-2")).unwrap();
    health
        .assert_code(1)
        .assert_stderr_has("did not answer")
        .assert_stderr_has("wrong");

    // The compose file lost the service nonstop was told about.
    std::fs::write(&compose_file, original.replace("  green:", "  greeen:")).unwrap();
    let stop = setup.hook("stop", &[], Some("d-3")).unwrap();
    stop.assert_code(1)
        .assert_stderr_has("has no service \"green\"")
        .assert_stderr_has("greeen");
    std::fs::write(&compose_file, &original).unwrap();

    // Through all of it: nginx untouched, the live container the same.
    assert_eq!(setup.include(), include);
    assert_eq!(project.running("blue"), Some(live));
    assert!(setup.nginx.test_config());
    assert_all_served(&load.finish(), &["v1"]);
}

#[test]
fn compose_with_the_symlink_switch_and_retiring() {
    let setup = Setup::new(
        "compose-symlink-retire",
        &SetupOptions {
            compose: true,
            layout: tests::Layout::Symlink,
            retire: true,
            ..Default::default()
        },
    )
    .unwrap();
    let project = setup.compose.as_ref().unwrap();
    let db = project.running("blue-db").unwrap();
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let mut live = "real1";
    for (n, version) in ["v2", "v3"].into_iter().enumerate() {
        let idle = other(live);
        let id = format!("d-{n}");
        setup.drop_jar(version).unwrap();
        for stage in ["stop", "start", "health"] {
            let run = setup.hook(stage, &[], Some(&id)).unwrap();
            run.assert_ok();
            if stage == "health" {
                run.assert_stderr_has(&format!("retiring {live}"));
            }
        }
        // The previous service is stopped, by compose, once nginx let go.
        assert!(project.running(service(live)).is_none());
        assert_eq!(
            setup.get("/").unwrap(),
            (200, format!("demo {version} {idle}"))
        );
        assert_eq!(project.running("blue-db"), Some(db.clone()));
        live = idle;
    }
    assert_all_served(&load.finish(), &["v1", "v2", "v3"]);
}

fn docker(args: &[&str]) {
    let status = std::process::Command::new("docker")
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "docker {args:?}");
}

#[test]
fn a_paused_container_is_the_services_own_and_named_with_the_fix() {
    let setup = setup("compose-paused");
    let project = setup.compose.as_ref().unwrap();
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let green = project.running("green").unwrap();
    docker(&["pause", &green]);

    let stop = setup.hook("stop", &[], Some("d-1")).unwrap();
    let json = setup.hook("profile", &["--json"], None).unwrap();
    // Unpaused before anything is asserted, so a failure leaves nothing frozen.
    docker(&["unpause", &green]);
    stop.assert_code(1);
    let fix = format!("docker unpause {}", &green[..12]);
    stop.assert_stderr_has("paused")
        .assert_stderr_has(&fix)
        .assert_stderr_lacks("not the service's");
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["profiles"][1]["container"]["state"], "paused");

    // Done as told, the deployment goes on and stops the service's container.
    setup.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    assert!(project.running("green").is_none());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// An operator's one-offs (`docker-compose run -d SERVICE`: a migration
/// before the new version starts, a console) during deployments under load.
/// They carry the service's labels and `com.docker.compose.oneoff=True`.
/// Before, `stop` took one for the service ("stopping it", yet Compose's stop
/// leaves one-offs running) and `start` then refused because "the service
/// already runs", telling the operator to run `stop`: a loop no command
/// ended. Now a one-off is never the service: `stop` stops the service's
/// own container and leaves the one-off alone, `start` starts the service;
/// and a one-off that holds the profile's port (`--service-ports`) is named
/// as what it is, with what to do.
#[test]
fn a_one_off_of_the_idle_service_is_not_the_service() {
    let setup = setup("compose-oneoff");
    let project = setup.compose.as_ref().unwrap();
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        setup.hook(stage, &[], Some("d-0")).unwrap().assert_ok();
    }
    // green is live; blue, idle, still runs v1. The operator's one-off of blue:
    let oneoff = project.run_oneoff("blue", &[]).unwrap();
    let blue = project.running("blue").unwrap();

    setup.drop_jar("v3").unwrap();
    let stop = setup.hook("stop", &[], Some("d-1")).unwrap();
    stop.assert_ok()
        .assert_stderr_has(&blue[..12])
        .assert_stderr_lacks(&oneoff[..12]);
    assert!(project.running("blue").is_none());
    let start = setup.hook("start", &[], Some("d-1")).unwrap();
    start.assert_ok().assert_stderr_has("started service blue");
    let started = project.running("blue").unwrap();
    assert_eq!(launched(&setup, "real1")["container_id"], json!(started));
    setup.hook("health", &[], Some("d-1")).unwrap().assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
    assert!(
        tests::ComposeProject::is_running(&oneoff),
        "the operator's one-off is left alone"
    );

    // A one-off of the idle service that publishes its port: it is named,
    // and nothing is started.
    setup.drop_jar("v4").unwrap();
    setup.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    let holder = project.run_oneoff("green", &["--service-ports"]).unwrap();
    let start = setup.hook("start", &[], Some("d-2")).unwrap();
    tests::ComposeProject::remove(&holder);
    start
        .assert_code(1)
        .assert_stderr_has("one-off")
        .assert_stderr_has(&format!("docker stop {}", &holder[..12]))
        .assert_stderr_lacks("already runs");
    assert!(project.running("green").is_none());
    // Once it is gone, the deployment goes on.
    setup.hook("start", &[], Some("d-2")).unwrap().assert_ok();
    setup.hook("health", &[], Some("d-2")).unwrap().assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v4 real2".into()));
    tests::ComposeProject::remove(&oneoff);
    assert_all_served(&load.finish(), &["v1", "v2", "v3", "v4"]);
}
