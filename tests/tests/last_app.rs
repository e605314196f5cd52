//! The last working app: a deployment's later steps never take away the app
//! that serves, and never undo what a finished deployment did. Each case
//! against the real nginx and demo jar:
//!
//! - the new app dies while the old one is being retired (include and
//!   upstream-pair modes): the old one is kept and nginx goes back to it;
//! - the next deployment's `stop` waits for nginx's previous workers to
//!   finish a request to the idle app before it signals it, and
//!   `app.retire_busy` decides past the bound as it does for retiring;
//! - a stage of a deployment that already completed, run again, does nothing;
//! - `switch --rollback` goes only to the build that was live, not to a
//!   build a failed deployment started there since.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use nonstop_common::sys::procs;
use serde_json::{json, Value};
use tests::{alive, http_get, HookRun, Layout, Setup, SetupOptions};

fn setup(name: &str, layout: Layout, retire: bool) -> Setup {
    let setup = Setup::new(
        name,
        &SetupOptions {
            layout,
            retire,
            ..Default::default()
        },
    )
    .unwrap();
    setup.bootstrap("v1").unwrap();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    setup
}

fn hook(setup: &Setup, stage: &str, args: &[&str], id: Option<&str>) -> HookRun {
    setup.hook(stage, args, id).unwrap()
}

/// A GET of `/slow?ms=MS` on `port` (nginx's or an app's own), in flight
/// once the app on `app_port` (pid `app_pid`) holds its connection.
fn slow_request(port: u16, ms: u64, app_port: u16, app_pid: i32) -> JoinHandle<(u16, String)> {
    let slow = std::thread::spawn(move || {
        http_get(port, &format!("/slow?ms={ms}"), Duration::from_secs(60))
            .unwrap_or((0, "failed".into()))
    });
    assert!(
        tests::wait_until(Duration::from_secs(10), || {
            procs::established_by(app_port, &[app_pid]).unwrap_or(0) >= 1
        }),
        "the slow request never reached the app on {app_port}"
    );
    slow
}

fn state_json(setup: &Setup, name: &str) -> Value {
    let text = fs::read_to_string(setup.state_dir().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn history(setup: &Setup) -> Vec<Value> {
    fs::read_to_string(setup.state_dir().join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// ------------------------------------------- §1: the new app dies while retiring

/// v1 live on real1, v2 started on real2; while `health` waits for nginx
/// to let go of real1 (a slow request keeps it busy), real2 is SIGKILLed
/// (a crash, the OOM killer). real1 must be kept and served again.
fn the_new_app_dies_while_the_old_one_drains(name: &str, layout: Layout) {
    let setup = setup(name, layout, true);
    let include = setup.include();
    let real1 = setup.launched_pid("real1").unwrap();
    setup.drop_jar("v2").unwrap();
    hook(&setup, "stop", &[], Some("d-1")).assert_ok();
    hook(&setup, "start", &[], Some("d-1")).assert_ok();
    let real2 = setup.launched_pid("real2").unwrap();

    // What keeps the retiring waiting: a request to real1 that nginx's
    // previous workers proxy (include mode), or, in upstream-pair mode
    // where nginx balances over both, one straight on real1's port (its
    // connections are what that mode drains). It must outlast everything
    // up to the kill below (the stage's start, the switch, the pair mode's
    // 11 s wait for nginx's fail_timeout) on a loaded machine too: the
    // retiring waits for it, so a long one costs only this test's time.
    let (via, ms, waiting) = match layout {
        Layout::Pair => (setup.ports[0], 30_000, "waiting for no connection to"),
        _ => (
            setup.nginx.port,
            15_000,
            "waiting for nginx's previous workers",
        ),
    };
    let slow = slow_request(via, ms, setup.ports[0], real1);
    let mut health = setup
        .bundle
        .spawn("health", &[], Some("d-1"), |_| {})
        .unwrap();
    assert!(
        health.wait_for_stderr(waiting, Duration::from_secs(60)),
        "{}",
        health.stderr_so_far()
    );
    kill(Pid::from_raw(real2), Signal::SIGKILL).unwrap();
    let health = health.finish(Duration::from_secs(120)).unwrap();

    assert!(
        alive(real1),
        "the last working app was stopped:\n{}",
        health.stderr
    );
    health
        .assert_code(1)
        .assert_stderr_has("real2 (")
        .assert_stderr_has("stopped serving before real1 was retired")
        .assert_stderr_has(&format!("pid {real2}, has exited"))
        .assert_stderr_has("nginx answers as real1 again (confirmed)");
    assert!(alive(real1), "the last working app was stopped");
    assert_eq!(
        slow.join().unwrap(),
        (200, format!("slow {ms} v1 real1")),
        "the request in flight to real1"
    );
    for _ in 0..20 {
        assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    }
    assert!(setup.nginx.test_config());
    let switched = state_json(&setup, "switch.json");
    assert_eq!(switched["active"]["name"], "real1", "{switched}");
    assert_eq!(switched["previous"]["name"], "real2", "{switched}");
    match layout {
        Layout::Pair => {
            health.assert_stderr_has("withdrawn");
            assert!(procs::listening(setup.ports[1]).unwrap().is_free());
        }
        _ => assert_eq!(
            String::from_utf8_lossy(&setup.include()),
            String::from_utf8_lossy(&include),
            "the include must name real1 again"
        ),
    }
    // The next deployment goes to real2 again, from real1.
    let next = hook(&setup, "profile", &[], None);
    next.assert_ok().assert_stdout_has("real2");
}

#[test]
fn retiring_keeps_the_old_app_and_switches_back_when_the_new_one_dies() {
    the_new_app_dies_while_the_old_one_drains("last-app-include", Layout::Include);
}

#[test]
fn upstream_pair_keeps_the_old_app_and_withdraws_the_new_one_when_it_dies() {
    the_new_app_dies_while_the_old_one_drains("last-app-pair", Layout::Pair);
}

// ------------------------------------------------------ §4: `stop` drains

/// Back-to-back deployments: the next `stop` comes while nginx's previous
/// workers still proxy a request to the idle app. The app here ignores
/// SIGTERM and `app.stop_timeout_secs` is 1 s, so a stop that did not wait
/// would cut that request (SIGKILL), and nginx would answer it 502.
#[test]
fn stop_waits_for_nginx_to_let_go_of_the_idle_app() {
    let setup = Setup::new(
        "last-app-stop-drains",
        &SetupOptions {
            java_opts: vec!["-Ddemo.ignore.term=true".into()],
            ..Default::default()
        },
    )
    .unwrap();
    setup
        .edit_config(|c| c["app"]["stop_timeout_secs"] = json!(1))
        .unwrap();
    setup.bootstrap("v1").unwrap();
    let real1 = setup.launched_pid("real1").unwrap();
    setup.drop_jar("v2").unwrap();
    hook(&setup, "stop", &[], Some("d-1")).assert_ok();
    hook(&setup, "start", &[], Some("d-1")).assert_ok();
    // In flight until `stop d-2` below has seen nginx's previous workers,
    // whatever the switch, the GET and the jar cost on a loaded machine
    // (`stop` waits for it: nginx.drain_timeout_secs is 60).
    let slow = slow_request(setup.nginx.port, 15_000, setup.ports[0], real1);
    hook(&setup, "health", &[], Some("d-1")).assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // The next deployment at once: real1 is its idle profile.
    setup.drop_jar("v3").unwrap();
    let stop = hook(&setup, "stop", &[], Some("d-2"));
    assert_eq!(
        slow.join().unwrap(),
        (200, "slow 15000 v1 real1".into()),
        "the request nginx's previous workers proxied to real1:\n{}",
        stop.stderr
    );
    stop.assert_ok()
        .assert_stderr_has("stopping real1: waiting for nginx's previous workers")
        .assert_stderr_has("previous workers exited after");
    assert!(!alive(real1));
    hook(&setup, "start", &[], Some("d-2")).assert_ok();
    hook(&setup, "health", &[], Some("d-2")).assert_ok();
    let real2 = setup.launched_pid("real2").unwrap();

    // Past nginx.drain_timeout_secs, app.retire_busy decides, as for
    // retiring: "fail" keeps the app, "stop" stops it saying what it cut.
    setup
        .edit_config(|c| {
            c["nginx"]["drain_timeout_secs"] = json!(1);
            c["app"]["retire_busy"] = json!("fail");
        })
        .unwrap();
    // Open through both stops below (d-4 cuts it), however slow they start.
    let slow = slow_request(setup.ports[1], 40_000, setup.ports[1], real2);
    let stop = hook(&setup, "stop", &[], Some("d-3"));
    stop.assert_code(1)
        .assert_stderr_has("1 connection open on")
        .assert_stderr_has("kept running, nothing was signalled");
    assert!(alive(real2));
    setup
        .edit_config(|c| c["app"]["retire_busy"] = json!("stop"))
        .unwrap();
    let stop = hook(&setup, "stop", &[], Some("d-4"));
    stop.assert_ok().assert_stderr_has("stopping it anyway");
    assert!(!alive(real2));
    let last = history(&setup).into_iter().last().unwrap();
    assert_eq!(last["stage"], "stop", "{last}");
    assert_eq!(last["outcome"], "stopped-cutting-connections", "{last}");
    assert_eq!(last["cut_connections"], 1, "{last}");
    drop(slow.join());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
}

// ------------------------------------- §5: a finished deployment, run again

#[test]
fn a_completed_deployments_stages_run_again_do_nothing() {
    let setup = setup("last-app-rerun", Layout::Include, false);
    let real1 = setup.launched_pid("real1").unwrap();
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        hook(&setup, stage, &[], Some("d-1")).assert_ok();
    }
    let forward = setup.include();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // CodeDeploy retrying ValidateService, an operator re-running a hook.
    for stage in ["health", "stop", "start", "switch"] {
        let again = hook(&setup, stage, &[], Some("d-1"));
        assert_eq!(
            setup.include(),
            forward,
            "{stage} changed the include:\n{}",
            again.stderr
        );
        assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
        assert!(alive(real1), "{stage} stopped the previous app");
        again
            .assert_ok()
            .assert_stderr_has("deployment d-1 already completed at")
            .assert_stderr_has("switched nginx to real2")
            .assert_stderr_has("nothing to do");
    }
    let last = history(&setup).into_iter().last().unwrap();
    assert_eq!(last["outcome"], "already-completed", "{last}");

    // Still so after the next deployment replaced the plan.
    setup.drop_jar("v3").unwrap();
    for stage in ["stop", "start", "health"] {
        hook(&setup, stage, &[], Some("d-2")).assert_ok();
    }
    let now = setup.include();
    hook(&setup, "health", &[], Some("d-1"))
        .assert_ok()
        .assert_stderr_has("deployment d-1 already completed");
    assert_eq!(setup.include(), now);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
}

// ------------------------------------------- §6: rollback to what was live

#[test]
fn rollback_refuses_a_build_that_was_never_live() {
    let setup = setup("last-app-rollback", Layout::Include, false);
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        hook(&setup, stage, &[], Some("d-1")).assert_ok();
    }
    let forward = setup.include();

    // The next deployment stops real1 (v1), starts v3 there and fails at
    // the switch (a broken file elsewhere in nginx's config).
    setup.drop_jar("v3").unwrap();
    hook(&setup, "stop", &[], Some("d-2")).assert_ok();
    hook(&setup, "start", &[], Some("d-2")).assert_ok();
    let neighbour = setup.nginx.prefix.join("conf.d/other-site.conf");
    fs::write(&neighbour, "server { listen 127.0.0.1:1 broken }\n").unwrap();
    hook(&setup, "health", &[], Some("d-2"))
        .assert_code(1)
        .assert_stderr_has("-t` failed");
    fs::remove_file(&neighbour).unwrap();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    let refused = hook(&setup, "switch", &["--rollback"], None);
    assert_eq!(
        setup.get("/").unwrap(),
        (200, "demo v2 real2".into()),
        "rolled back to a build that was never live:\n{}",
        refused.stderr
    );
    assert_eq!(setup.include(), forward);
    refused
        .assert_code(1)
        .assert_stderr_has("refusing to roll back to real1")
        .assert_stderr_has("it now runs demo-v3.jar")
        .assert_stderr_has("deployment d-2")
        .assert_stderr_has("demo-v1.jar")
        .assert_stderr_has("which is gone")
        .assert_stderr_has("nothing was changed");
    // switch.json names the build that was live on each side.
    let switched = state_json(&setup, "switch.json");
    assert!(
        switched["previous_build"]["artifact"]
            .as_str()
            .unwrap()
            .ends_with("demo-v1.jar")
            && switched["active_build"]["artifact"]
                .as_str()
                .unwrap()
                .ends_with("demo-v2.jar"),
        "{switched}"
    );

    // A switch.json of an older nonstop (no builds): decided by time, v3
    // was started after that switch, so it was never live behind it.
    let mut old = state_json(&setup, "switch.json");
    for key in ["active_build", "previous_build", "builds_recorded"] {
        old.as_object_mut().unwrap().remove(key);
    }
    fs::write(
        setup.state_dir().join("switch.json"),
        serde_json::to_vec_pretty(&old).unwrap(),
    )
    .unwrap();
    let refused = hook(&setup, "switch", &["--rollback"], None);
    refused
        .assert_code(1)
        .assert_stderr_has("started after that switch, so never live")
        .assert_stderr_has("nothing was changed");
    assert_eq!(setup.include(), forward);

    // Named by hand, it is the operator's call.
    hook(&setup, "switch", &["--to", "real1"], None).assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
}
