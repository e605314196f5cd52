//! Traffic goes only to an app proven to answer where nginx will reach it.
//! `health` waits for the new app on 127.0.0.1, but nginx connects to the
//! host its config names: a second loopback address here (all of 127/8 is
//! this host), or the app host's address from a remote nginx (the two-host
//! namespaces of tests/src/netns). A build that listens on 127.0.0.1 only is
//! refused before anything is written, and so is `switch --to` a profile
//! with nothing running: nginx is not reloaded, the include is untouched,
//! and no request through nginx fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::{json, Value};
use tests::netns::TwoHosts;
use tests::{alive, assert_all_served, HookRun, Load, Setup, SetupOptions};

/// `-Ddemo.bind=ADDR` in the app's command (before `-jar`), or none.
fn bind(command: &mut Value, address: Option<&str>) {
    let argv = command.as_array_mut().unwrap();
    argv.retain(|a| !a.as_str().unwrap_or("").starts_with("-Ddemo.bind="));
    if let Some(address) = address {
        let at = argv.iter().position(|a| a == "-jar").unwrap();
        argv.insert(at, json!(format!("-Ddemo.bind={address}")));
    }
}

/// Refused before the write: exit 1, naming the target and the address.
#[track_caller]
fn assert_refused(run: &HookRun, target: &str, url: &str) {
    run.assert_code(1)
        .assert_stderr_has(&format!("refusing to switch to {target}"))
        .assert_stderr_has(url)
        .assert_stderr_has("nothing was changed")
        .assert_stderr_lacks("wrote the include");
}

#[test]
fn an_app_nginx_cannot_reach_or_none_at_all_is_never_switched_to() {
    let setup = Setup::new("reach-local", &SetupOptions::default()).unwrap();
    let [p1, p2] = setup.ports;
    // nginx connects to the apps at 127.0.0.2, not 127.0.0.1; v1 listens
    // on every address.
    setup
        .edit_config(|c| {
            c["nginx"]["template"] = json!("set $service_url http://127.0.0.2:{port};");
            c["nginx"]["confirm_timeout_secs"] = json!(3);
            bind(&mut c["app"]["command"], Some("0.0.0.0"));
        })
        .unwrap();
    setup.bootstrap("v1").unwrap();
    setup
        .hook("switch", &["--to", "real1"], None)
        .unwrap()
        .assert_ok();
    let include = setup.include();
    assert!(String::from_utf8_lossy(&include).contains(&format!("127.0.0.2:{p1};")));
    let workers = setup.nginx.settled_workers();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(5));

    // v2 listens on 127.0.0.1 only: it passes its check there, and would
    // be a 502 for every request through nginx.
    setup
        .edit_config(|c| bind(&mut c["app"]["command"], None))
        .unwrap();
    setup.drop_jar("v2").unwrap();
    setup.hook("stop", &[], Some("d-1")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-1")).unwrap().assert_ok();
    let health = setup.hook("health", &[], Some("d-1")).unwrap();
    assert_refused(&health, "real2", &format!("http://127.0.0.2:{p2}/profile"));
    health
        .assert_stderr_has("where nginx connects to real2, per nginx.template")
        .assert_stderr_has(&format!("It answers at http://127.0.0.1:{p2}/profile"))
        .assert_stderr_has("nginx answers as real1");
    assert_eq!(setup.include(), include, "the include must be untouched");
    assert_eq!(setup.nginx.workers(), workers, "nginx must not be reloaded");

    // `switch --to` a profile with nothing running: refused the same way.
    setup
        .hook("stop", &["--profile", "real2"], None)
        .unwrap()
        .assert_ok();
    let switch = setup.hook("switch", &["--to", "real2"], None).unwrap();
    assert_refused(&switch, "real2", &format!("http://127.0.0.2:{p2}/profile"));
    switch
        .assert_stderr_has("connection refused")
        .assert_stderr_has("Nor does it answer at http://127.0.0.1:")
        .assert_stderr_has("start it first (`start --profile real2`");
    assert_eq!(setup.include(), include, "the include must be untouched");
    assert_eq!(setup.nginx.workers(), workers, "nginx must not be reloaded");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    assert!(alive(setup.launched_pid("real1").unwrap()));

    // A build that listens where nginx connects is switched to.
    setup
        .edit_config(|c| bind(&mut c["app"]["command"], Some("0.0.0.0")))
        .unwrap();
    setup.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-2")).unwrap().assert_ok();
    let health = setup.hook("health", &[], Some("d-2")).unwrap();
    health
        .assert_ok()
        .assert_stderr_has(&format!(
            "real2 answers \"real2\" at http://127.0.0.2:{p2}/profile, where nginx connects to it"
        ))
        .assert_stderr_has("confirmed");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    assert_all_served(&load.finish(), &["v1", "v2"]);
}

#[test]
fn an_app_the_remote_nginx_cannot_reach_is_refused_from_nginxs_host() {
    let hosts = TwoHosts::new("reach-remote").unwrap();
    hosts.start_by_hand("real1", "v1").unwrap();
    assert_eq!(hosts.get("/").unwrap(), (200, "demo v1 real1".into()));
    let include = hosts.include();
    let workers = hosts.nginx.settled_workers();
    let load = hosts.load().unwrap();

    // v2 listens on the app host's 127.0.0.1 only: the nginx host cannot
    // reach it at the app host's address.
    hosts
        .bundle
        .edit_config(|c| bind(&mut c["app"]["command"], None))
        .unwrap();
    hosts.drop_jar("v2").unwrap();
    hosts.hook("stop", &[], Some("d-1")).unwrap().assert_ok();
    hosts.hook("start", &[], Some("d-1")).unwrap().assert_ok();
    let health = hosts.hook("health", &[], Some("d-1")).unwrap();
    assert_refused(&health, "real2", "http://10.77.0.1:8082/profile");
    health
        .assert_stderr_has(&format!("from nginx's host {}", hosts.destination()))
        .assert_stderr_has("It answers at http://127.0.0.1:8082/profile on this host");
    assert_eq!(hosts.include(), include, "the include must be untouched");
    assert_eq!(hosts.nginx.workers(), workers, "nginx must not be reloaded");
    assert!(alive(hosts.launched_pid("real1").unwrap()));

    // Listening where the nginx host reaches it, it is switched to.
    hosts
        .bundle
        .edit_config(|c| bind(&mut c["app"]["command"], Some("0.0.0.0")))
        .unwrap();
    hosts.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    hosts.hook("start", &[], Some("d-2")).unwrap().assert_ok();
    let health = hosts.hook("health", &[], Some("d-2")).unwrap();
    health
        .assert_ok()
        .assert_stderr_has(&format!(
            "at http://10.77.0.1:8082/profile, where nginx connects to it from nginx's host {}",
            hosts.destination()
        ))
        .assert_stderr_has("confirmed");
    assert_eq!(hosts.get("/").unwrap(), (200, "demo v2 real2".into()));
    assert_all_served(&load.finish(), &["v1", "v2"]);
}
