//! `health.warmup`: the new app gets its warm-up requests on its own port
//! after it passed the health check and before nginx is switched to it,
//! with the real nginx and the demo jar. (What the warm-up is worth is the
//! benchmark's business: `bench --warmup-requests N`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde_json::json;
use tests::{assert_all_served, Load, Setup, SetupOptions};

#[test]
fn health_warms_the_new_app_up_before_the_switch() {
    let setup = Setup::new("warmup", &SetupOptions::default()).unwrap();
    setup
        .edit_config(|c| {
            c["health"]["warmup"] = json!({"paths": ["/", "/profile"], "requests": 30});
        })
        .unwrap();
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(5));
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start"] {
        setup.hook(stage, &[], Some("w-1")).unwrap().assert_ok();
    }
    let health = setup.hook("health", &[], Some("w-1")).unwrap();
    health.assert_ok();
    let err = &health.stderr;
    let warmed = err
        .find("warmed up real2 with 30 requests to /, /profile")
        .unwrap_or_else(|| panic!("no warm-up reported:\n{err}"));
    // Before the switch: the include is written after the warm-up.
    let switched = err
        .find("nginx routes to real2")
        .unwrap_or_else(|| panic!("no switch:\n{err}"));
    assert!(warmed < switched, "{err}");
    assert!(!err.contains("warm-up requests got no 2xx"), "{err}");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // Warm-up requests that fail (each outlasts health.request_timeout_ms)
    // are reported; the app passed its health check, so the switch goes on.
    setup
        .edit_config(|c| {
            c["health"]["warmup"] = json!({"paths": ["/slow?ms=1500"], "requests": 2});
        })
        .unwrap();
    setup.drop_jar("v3").unwrap();
    for stage in ["stop", "start"] {
        setup.hook(stage, &[], Some("w-2")).unwrap().assert_ok();
    }
    let health = setup.hook("health", &[], Some("w-2")).unwrap();
    health.assert_ok();
    assert!(
        health
            .stderr
            .contains("2 of the 2 warm-up requests got no 2xx"),
        "{}",
        health.stderr
    );
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
    assert_all_served(&load.finish(), &["v1", "v2", "v3"]);

    // Checked like every key: a bad path is a config error naming it.
    setup
        .edit_config(|c| c["health"]["warmup"] = json!({"paths": ["api"]}))
        .unwrap();
    let bad = setup.hook("health", &["--no-switch"], None).unwrap();
    bad.assert_code(2).assert_stderr_has("health.warmup.paths");
}
