//! Every seed's nginx setup, end to end, with the real nginx and the demo
//! jar under load: the sites-available symlink (seed 004), the upstream pair
//! that nginx balances over (002), nginx on another host reached over ssh
//! (000), and retiring the previous app once nginx has let go of it (002,
//! 003, 004). Each runs three deployments while clients request through
//! nginx, and every request must get 200 from one of the versions deployed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nonstop_common::sys::procs;
use serde_json::json;
use tests::{alive, assert_all_served, http_get, HookRun, Layout, Load, Setup, SetupOptions};

fn setup(name: &str, layout: Layout, retire: bool, remote: bool) -> Setup {
    Setup::new(
        name,
        &SetupOptions {
            layout,
            retire,
            remote,
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

/// stop, start, health (which switches) as the CodeDeploy hooks run them.
fn deploy(setup: &Setup, id: &str, version: &str) -> HookRun {
    setup.drop_jar(version).unwrap();
    setup.hook("stop", &[], Some(id)).unwrap().assert_ok();
    setup.hook("start", &[], Some(id)).unwrap().assert_ok();
    let health = setup.hook("health", &[], Some(id)).unwrap();
    health.assert_ok();
    health
}

fn site_of(link: &Path) -> String {
    fs::read_link(link)
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn symlink_mode_repoints_the_link_and_never_restarts_nginx() {
    let setup = setup("setup-symlink", Layout::Symlink, false, false);
    // Seed 000's kind of health rule: a page with a word in it.
    setup
        .edit_config(|c| {
            c["health"]["path"] = json!("/");
            c["health"]["match"] = json!("contains");
        })
        .unwrap();
    setup.bootstrap("v1").unwrap();
    let link = setup.nginx.include.clone();
    assert_eq!(site_of(&link), "blue");
    let master = setup.nginx.pid();

    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let mut live = "real1";
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let idle = other(live);
        let health = deploy(&setup, &format!("d-{n}"), version);
        health
            .assert_stderr_has("confirmed")
            .assert_stderr_has("the symlink");
        let site = if idle == "real1" { "blue" } else { "green" };
        assert_eq!(site_of(&link), site, "{}", health.stderr);
        for _ in 0..10 {
            assert_eq!(
                setup.get("/").unwrap(),
                (200, format!("demo {version} {idle}"))
            );
        }
        assert!(setup.nginx.test_config());
        // A reload, never a restart: the same master throughout.
        assert_eq!(setup.nginx.pid(), master);
        assert!(alive(master));
        live = idle;
    }
    assert_all_served(&load.finish(), &["v1", "v2", "v3", "v4"]);
}

#[test]
fn symlink_mode_restores_the_link_when_nginx_test_fails() {
    let setup = setup("setup-symlink-fault", Layout::Symlink, false, false);
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let green = setup.nginx.prefix.join("sites-available/green");
    fs::write(&green, "server { listen 127.0.0.1:1 broken }\n").unwrap();
    let link = setup.nginx.include.clone();
    let before = fs::read_link(&link).unwrap();
    let workers_before = setup.nginx.settled_workers();

    let switch = setup.hook("switch", &["--to", "real2"], None).unwrap();
    switch
        .assert_code(1)
        .assert_stderr_has("-t` failed")
        .assert_stderr_has("restored");
    assert_eq!(fs::read_link(&link).unwrap(), before);
    assert_eq!(
        setup.nginx.workers(),
        workers_before,
        "nginx must not reload"
    );
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    // With the site file fixed nothing stands in the way.
    fs::write(&green, tests::Nginx::site(setup.nginx.port, setup.ports[1])).unwrap();
    setup
        .hook("switch", &["--to", "real2"], None)
        .unwrap()
        .assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
}

#[test]
fn upstream_pair_mode_starts_beside_and_retires_the_old_app() {
    let setup = setup("setup-pair", Layout::Pair, false, false);
    let include_untouched = setup.nginx.conf.clone();
    let conf_before = fs::read(&include_untouched).unwrap();
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let mut live = "real1";
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let idle = other(live);
        let old_pid = setup.launched_pid(live).unwrap();
        let health = deploy(&setup, &format!("d-{n}"), version);
        health
            .assert_stderr_has("upstream-pair mode")
            .assert_stderr_has(&format!("retiring {live}"));
        assert!(!alive(old_pid), "the old app must be retired");
        let old_port = setup.ports[usize::from(live == "real2")];
        assert!(procs::listening(old_port).unwrap().is_free());
        for _ in 0..10 {
            assert_eq!(
                setup.get("/").unwrap(),
                (200, format!("demo {version} {idle}"))
            );
        }
        live = idle;
    }
    // nginx itself was never edited.
    assert_eq!(fs::read(&include_untouched).unwrap(), conf_before);
    assert_all_served(&load.finish(), &["v1", "v2", "v3", "v4"]);
}

#[test]
fn retiring_waits_for_nginx_to_let_go_of_a_request_in_flight() {
    let setup = setup("setup-retire", Layout::Include, true, false);
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let old_pid = setup.launched_pid("real1").unwrap();
    setup.drop_jar("v2").unwrap();
    setup.hook("stop", &[], Some("d-1")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-1")).unwrap().assert_ok();

    // A slow request to the old app, in flight when the switch happens.
    let slow = setup.slow_request_through_nginx("real1", 1500);
    let health = setup.hook("health", &[], Some("d-1")).unwrap();
    health.assert_ok();
    assert_eq!(
        slow.join().unwrap().unwrap(),
        (200, "slow 1500 v1 real1".into())
    );
    health.assert_stderr_has("previous workers exited");
    assert!(!alive(old_pid), "real1 must be retired");
    // The second deployment finds real1's slot empty and fills it.
    let health = deploy(&setup, "d-2", "v3");
    health.assert_stderr_has("retiring real2");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
    assert_all_served(&load.finish(), &["v1", "v2", "v3"]);
}

fn remote_include(setup: &Setup) -> PathBuf {
    setup.nginx.include.clone()
}

#[test]
fn remote_nginx_over_ssh_switches_there_and_restores_there() {
    let setup = setup("setup-remote", Layout::Include, false, true);
    let sshd_pid = setup.sshd.as_ref().unwrap().pid();
    setup.bootstrap("v1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let mut live = "real1";
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let idle = other(live);
        let health = deploy(&setup, &format!("d-{n}"), version);
        assert!(
            health.stderr.contains("on root@127.0.0.1") || health.stderr.contains("@127.0.0.1"),
            "{}",
            health.stderr
        );
        health.assert_stderr_has("confirmed");
        for _ in 0..10 {
            assert_eq!(
                setup.get("/").unwrap(),
                (200, format!("demo {version} {idle}"))
            );
        }
        live = idle;
    }
    assert_all_served(&load.finish(), &["v1", "v2", "v3", "v4"]);
    assert!(alive(sshd_pid));

    // nginx -t fails on the other host: the include is put back there,
    // byte for byte, a Latin-1 byte in a comment included (it is read over
    // ssh as bytes, not decoded as UTF-8 text).
    let include = remote_include(&setup);
    let mut before = b"# r\xe9serv\xe9: Latin-1, not UTF-8\n".to_vec();
    before.extend(fs::read(&include).unwrap());
    fs::write(&include, &before).unwrap();
    assert!(setup.nginx.test_config());
    let broken = setup.nginx.prefix.join("conf.d/broken.conf");
    fs::write(&broken, "server { listen 127.0.0.1:1 broken }\n").unwrap();
    let switch = setup.hook("switch", &["--to", other(live)], None).unwrap();
    switch.assert_code(1).assert_stderr_has("restored");
    assert_eq!(fs::read(&include).unwrap(), before);
    fs::remove_file(&broken).unwrap();
    assert!(setup.nginx.test_config());
}

#[test]
fn an_unreachable_nginx_host_changes_nothing_here_or_there() {
    let setup = setup("setup-remote-down", Layout::Include, false, true);
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let real2 = setup.launched_pid("real2").unwrap();
    let include = remote_include(&setup);
    let before = fs::read(&include).unwrap();
    // The nginx host's sshd is "down": nothing listens on this port.
    let nowhere = tests::free_port();
    setup
        .edit_config(|c| c["nginx"]["ssh"]["port"] = json!(nowhere))
        .unwrap();

    let stop = setup.hook("stop", &[], Some("d-1")).unwrap();
    stop.assert_code(1)
        .assert_stderr_has("cannot reach nginx's host");
    assert!(
        alive(real2),
        "stop must not act without knowing what is live"
    );

    let switch = setup.hook("switch", &["--to", "real2"], None).unwrap();
    switch
        .assert_code(1)
        .assert_stderr_has("cannot reach nginx's host");
    assert_eq!(fs::read(&include).unwrap(), before);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

#[test]
fn remote_symlink_with_retiring_waits_for_the_old_apps_connections() {
    let setup = setup("setup-remote-symlink", Layout::Symlink, true, true);
    setup.bootstrap("v1").unwrap();
    let link = setup.nginx.include.clone();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let old_pid = setup.launched_pid("real1").unwrap();
    let health = deploy(&setup, "d-1", "v2");
    health.assert_stderr_has("the symlink");
    assert_eq!(site_of(&link), "green");
    // nginx's workers are on "the other host": the old app goes once no
    // connection to it is left.
    health.assert_stderr_has("no connection to");
    assert!(!alive(old_pid), "real1 must be retired");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    assert_all_served(&load.finish(), &["v1", "v2"]);
}

/// The JVM option list of the bundle's command, with `opt` added before `-jar`.
fn add_java_opt(setup: &Setup, opt: &str) {
    setup
        .edit_config(|c| {
            let command = c["app"]["command"].as_array_mut().unwrap();
            let at = command.len() - 2;
            command.insert(at, json!(opt));
        })
        .unwrap();
}

/// The history's lines, parsed.
fn history(setup: &Setup) -> Vec<serde_json::Value> {
    fs::read_to_string(setup.state_dir().join("history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn upstream_pair_a_build_that_fails_health_is_taken_out_of_rotation() {
    let setup = setup("setup-pair-fail", Layout::Pair, false, false);
    setup
        .edit_config(|c| c["health"]["timeout_secs"] = json!(3))
        .unwrap();
    setup.bootstrap("v1").unwrap();
    let old_pid = setup.launched_pid("real1").unwrap();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    // A build that answers its health check wrong, and "/" like any other.
    add_java_opt(&setup, "-Ddemo.answer=wrong");
    setup.drop_jar("v2").unwrap();
    setup.hook("stop", &[], Some("d-1")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-1")).unwrap().assert_ok();
    let failed_pid = setup.launched_pid("real2").unwrap();
    let health = setup.hook("health", &[], Some("d-1")).unwrap();
    health
        .assert_code(1)
        .assert_stderr_has("wrong")
        .assert_stderr_has("failed and was stopped");
    // Out of nginx's rotation: it no longer runs, its port refuses, and
    // every request goes to v1 again.
    assert!(!alive(failed_pid), "the failed build still runs");
    assert!(procs::listening(setup.ports[1]).unwrap().is_free());
    assert!(alive(old_pid));
    for _ in 0..20 {
        assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    }
    // This mode has no include file; `profile --json` shows none.
    let json = setup.hook("profile", &["--json"], None).unwrap();
    json.assert_ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["include"], serde_json::Value::Null, "{v}");
    assert_eq!(v["live"]["profile"], "real1", "{v}");
    // While it ran it was in rotation (the mode's trade-off): v2 answers
    // are expected, failures are not.
    assert_all_served(&load.finish(), &["v1", "v2"]);
}

#[test]
fn retiring_past_the_drain_bound_keeps_the_old_app_or_says_what_it_cut() {
    let setup = setup("setup-retire-busy", Layout::Include, true, false);
    setup
        .edit_config(|c| {
            c["nginx"]["drain_timeout_secs"] = json!(1);
            c["app"]["retire_busy"] = json!("fail");
        })
        .unwrap();
    setup.bootstrap("v1").unwrap();
    let port = setup.nginx.port;
    let slow_request = |old_pid: i32, old_port: u16| {
        let slow = std::thread::spawn(move || {
            http_get(port, "/slow?ms=15000", Duration::from_secs(30)).map_err(|e| e.to_string())
        });
        // In flight once the old app holds its connection.
        assert!(tests::wait_until(Duration::from_secs(10), || {
            procs::established_by(old_port, &[old_pid]).unwrap_or(0) >= 1
        }));
        slow
    };

    // "fail": the switch happens, the old app is kept, exit 1.
    let real1 = setup.launched_pid("real1").unwrap();
    setup.drop_jar("v2").unwrap();
    setup.hook("stop", &[], Some("d-1")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-1")).unwrap().assert_ok();
    let slow = slow_request(real1, setup.ports[0]);
    let health = setup.hook("health", &[], Some("d-1")).unwrap();
    health
        .assert_code(1)
        .assert_stderr_has("1 connection open")
        .assert_stderr_has("kept running");
    assert!(alive(real1), "retire_busy \"fail\" must keep the old app");
    assert_eq!(
        slow.join().unwrap().unwrap(),
        (200, "slow 15000 v1 real1".into())
    );
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // "stop" (the default): it goes anyway, and says and records how many
    // connections it still had.
    setup
        .edit_config(|c| {
            c["app"].as_object_mut().unwrap().remove("retire_busy");
        })
        .unwrap();
    let real2 = setup.launched_pid("real2").unwrap();
    setup.drop_jar("v3").unwrap();
    setup.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    setup.hook("start", &[], Some("d-2")).unwrap().assert_ok();
    let slow = slow_request(real2, setup.ports[1]);
    let health = setup.hook("health", &[], Some("d-2")).unwrap();
    health
        .assert_ok()
        .assert_stderr_has("1 connection open")
        .assert_stderr_has("stopping it anyway");
    // The old app drains on SIGTERM: the request is still answered by it.
    assert_eq!(
        slow.join().unwrap().unwrap(),
        (200, "slow 15000 v2 real2".into())
    );
    assert!(!alive(real2), "real2 must be retired");
    let last = history(&setup).into_iter().last().unwrap();
    assert_eq!(last["stage"], "health", "{last}");
    assert_eq!(last["exit_code"], 0, "{last}");
    assert_eq!(last["outcome"], "retired-cutting-connections", "{last}");
    assert_eq!(last["cut_connections"], 1, "{last}");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
}

/// Rewrites the private nginx's config and reloads it; returns once none
/// of the previous workers is left.
fn edit_nginx(setup: &Setup, edit: impl FnOnce(String) -> String) {
    let text = fs::read_to_string(&setup.nginx.conf).unwrap();
    setup.nginx.reload_with(&edit(text)).unwrap();
}

#[test]
fn upstream_pair_follows_nginxs_upstream_and_refuses_ip_hash_before_stopping_anything() {
    let setup = setup("setup-pair-upstream", Layout::Pair, false, false);
    let [p1, p2] = setup.ports;
    // max_fails=0: nginx never skips a server, so there is no fail_timeout
    // to wait out, whatever nginx.fail_timeout_secs (10 s here) says.
    edit_nginx(&setup, |conf| {
        conf.replace(&format!("{p1};"), &format!("{p1} max_fails=0;"))
            .replace(&format!("{p2};"), &format!("{p2} max_fails=0;"))
    });
    setup.bootstrap("v1").unwrap();
    let health = deploy(&setup, "d-0", "v2");
    health
        .assert_stderr_has("max_fails=0: nginx never skips it")
        .assert_stderr_lacks("waiting 11");

    // Both run now (live real2, real1 started by hand), and the upstream
    // pins clients: every probe from 127.0.0.1 would reach one server.
    setup.start_by_hand("real1", "v3").unwrap();
    let idle_pid = setup.launched_pid("real1").unwrap();
    edit_nginx(&setup, |conf| {
        conf.replace("upstream app {", "upstream app {\n        ip_hash;")
    });
    for stage in ["stop", "start"] {
        let run = setup.hook(stage, &[], Some("d-1")).unwrap();
        run.assert_code(1)
            .assert_stderr_has("uses `ip_hash`")
            .assert_stderr_has("nothing was stopped");
    }
    assert!(alive(idle_pid), "nothing may be stopped");
    assert!(alive(setup.launched_pid("real2").unwrap()));
}

#[test]
fn symlink_mode_recovery_says_it_restored_the_symlink() {
    let setup = setup("setup-symlink-recover", Layout::Symlink, false, false);
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let link = setup.nginx.include.clone();
    let before = fs::read_link(&link).unwrap();
    // A switch killed after it re-pointed the link, while `nginx -t` runs
    // (a test that hangs), before any reload.
    let nginx_test = setup.nginx.command(&["-t"]);
    setup
        .edit_config(|c| c["nginx"]["test"] = json!(["sleep", "60"]))
        .unwrap();
    let mut run = setup
        .bundle
        .spawn("switch", &["--to", "real2"], None, |_| {})
        .unwrap();
    assert!(
        run.wait_for_stderr("wrote ", Duration::from_secs(30)),
        "{}",
        run.stderr_so_far()
    );
    let mut sleeper = Vec::new();
    assert!(tests::wait_until(Duration::from_secs(10), || {
        sleeper = procs::children(run.pid());
        !sleeper.is_empty()
    }));
    run.signal(nix::sys::signal::Signal::SIGKILL);
    run.finish(Duration::from_secs(10)).unwrap();
    for pid in sleeper {
        tests::terminate(pid, Duration::from_secs(5));
    }
    assert_ne!(fs::read_link(&link).unwrap(), before, "the link was moved");

    setup
        .edit_config(|c| c["nginx"]["test"] = json!(nginx_test))
        .unwrap();
    let next = setup.hook("switch", &["--to", "real1"], None).unwrap();
    next.assert_ok()
        .assert_stderr_has("was interrupted")
        .assert_stderr_has("restored the symlink")
        .assert_stderr_lacks("include file");
    assert_eq!(site_of(&link), "blue");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// Every read and write nonstop makes over ssh, against a login that prints
/// before (and after) the command it was given: a `command=` wrapper in
/// authorized_keys. The include's bytes and the symlink's target are read
/// exactly or refused naming the host and quoting what it printed (before:
/// the notice was taken for the file's first line, or for part of the
/// link's target); a write, a restore above all, puts exactly the bytes
/// given there, notice or not.
#[test]
fn over_ssh_only_the_files_bytes_count() {
    let dir = tests::TestDir::new("ssh-framed");
    let sshd = tests::Sshd::start(&dir.join("sshd")).unwrap();
    let files = dir.join("nginx");
    fs::create_dir_all(files.join("sites-available")).unwrap();
    let include = files.join("service-url.inc");
    let bytes = b"# r\xe9serv\xe9\nset $service_url http://127.0.0.1:8081;\n".to_vec();
    fs::write(&include, &bytes).unwrap();
    let link = files.join("default");
    std::os::unix::fs::symlink("sites-available/blue", &link).unwrap();
    let config = |route: serde_json::Value| {
        let mut c = json!({"app": {"dir": dir.join("app")}, "nginx": route});
        c["nginx"]["ssh"] = sshd.config();
        nonstop_common::config::parse(&c.to_string(), &dir.join("nonstop.json")).unwrap()
    };
    let inc = config(json!({"include": include}));
    let sym = config(json!({"mode": "symlink", "link": link, "sites": {
        "real1": files.join("sites-available/blue"), "real2": files.join("sites-available/green")}}));
    use nonstop_common::route;
    use nonstop_common::route::host::Host;

    // A quiet login: exact bytes, exact target.
    assert_eq!(route::of(&inc).read().unwrap(), Some(bytes.clone()));
    assert_eq!(
        route::of(&sym).read().unwrap(),
        Some(b"sites-available/blue".to_vec())
    );
    assert_eq!(Host::of(&inc).login_noise().unwrap(), None);

    // A login that prints, before and after what it runs.
    sshd.key_options(
        r#"command="echo 'web1: authorized use only'; eval \"$SSH_ORIGINAL_COMMAND\"; echo bye""#,
    )
    .unwrap();
    let said = "\"web1: authorized use only\\nbye\\n\"";
    for (config, what) in [(&inc, "the include file"), (&sym, "the symlink")] {
        let err = format!("{:#}", route::of(config).read().unwrap_err());
        assert!(
            err.contains(&format!(
                "nginx's host {}",
                sshd.config()["destination"].as_str().unwrap()
            )) && err.contains(&format!("printed {said}"))
                && err.contains(what),
            "{err}"
        );
    }
    assert_eq!(Host::of(&inc).login_noise().unwrap().as_deref(), Some(said));
    // Writing (a restore) puts exactly these bytes there, the notice aside.
    let restored = b"# caf\xe9\nset $service_url http://127.0.0.1:8082;\n";
    route::of(&inc).write(restored).unwrap();
    assert_eq!(fs::read(&include).unwrap(), restored);
    route::of(&sym)
        .write(
            files
                .join("sites-available/green")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap();
    assert_eq!(
        fs::read_link(&link).unwrap(),
        files.join("sites-available/green")
    );
    // nginx's commands: the status is the command's, not the wrapper's
    // last `echo`.
    let failed = Host::of(&inc)
        .run(&["false".to_string()], Duration::from_secs(30))
        .unwrap();
    assert!(!failed.success());
    let missing = files.join("gone.inc");
    let gone = config(json!({"include": missing}));
    sshd.key_options("").unwrap();
    assert_eq!(route::of(&gone).read().unwrap(), None);
}

/// Upstream pair whose upstream keeps a pool of idle connections
/// (`keepalive 8;`, HTTP/1.1), nginx retrying with `retry`.
fn pooled(name: &str, retry: &'static str) -> Setup {
    Setup::new(
        name,
        &SetupOptions {
            layout: Layout::Pair,
            pair_pool: Some(retry),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Upstream pair with a `keepalive` pool and nginx's default retry (a POST
/// is never resent): nginx goes on reusing its pooled connections to the
/// old app until that stops, so a retire can neither wait them out nor stop
/// it without cutting a POST. Refused by `--check` and by the deployment's
/// first stage, naming the `keepalive` line and what to do instead, before
/// anything is stopped (before: the deployment went on, waited out
/// `nginx.drain_timeout_secs` and cut).
#[test]
fn upstream_pair_refuses_a_pool_nginx_never_resends_a_post_from() {
    let setup = pooled("setup-pair-pool-refused", "error timeout");
    setup.bootstrap("v1").unwrap();
    let live = setup.launched_pid("real1").unwrap();
    let line = format!("`keepalive 8;` ({}:", setup.nginx.conf.display());

    let check = setup.hook("profile", &["--check"], None).unwrap();
    check.assert_code(1).assert_stdout_has(&line);
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start"] {
        let run = setup.hook(stage, &[], Some("d-1")).unwrap();
        run.assert_code(1)
            .assert_stderr_has(&line)
            .assert_stderr_has("non_idempotent")
            .assert_stderr_has("nothing was stopped");
    }
    assert!(alive(live), "nothing may be stopped");
    assert!(
        setup.launched_pid("real2").is_none(),
        "nothing may be started"
    );
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// Upstream pair with a pool where nginx resends what the old app's
/// shutdown cuts (`proxy_next_upstream ... non_idempotent`), under POSTs:
/// the retire does not wait for the pool (it never drains while the old
/// app runs: before, every deployment waited out `drain_timeout_secs` and
/// recorded `retired-cutting-connections`), and no POST is lost.
#[test]
fn upstream_pair_with_a_pool_nginx_resends_from_retires_at_once_losing_no_post() {
    let setup = pooled("setup-pair-pool", "error timeout non_idempotent");
    let [p1, p2] = setup.ports;
    // max_fails=0: no fail_timeout to wait out (as in the test above).
    edit_nginx(&setup, |conf| {
        conf.replace(&format!("{p1};"), &format!("{p1} max_fails=0;"))
            .replace(&format!("{p2};"), &format!("{p2} max_fails=0;"))
    });
    setup
        .edit_config(|c| c["nginx"]["drain_timeout_secs"] = json!(20))
        .unwrap();
    setup.bootstrap("v1").unwrap();
    setup
        .hook("profile", &["--check"], None)
        .unwrap()
        .assert_stdout_has("nginx proxies to upstream app");
    let gets = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    let posts = Load::posts(setup.nginx.port, "/", 4, Duration::from_millis(1));
    let mut live = "real1";
    for (n, version) in ["v2", "v3"].into_iter().enumerate() {
        let old_pid = setup.launched_pid(live).unwrap();
        let health = deploy(&setup, &format!("d-{n}"), version);
        health
            .assert_stderr_has("keeps a pool of connections")
            .assert_stderr_lacks("still has");
        assert!(!alive(old_pid), "the old app must be retired");
        let last = history(&setup).into_iter().last().unwrap();
        assert_eq!(last["exit_code"], 0, "{last}");
        assert_ne!(last["outcome"], "retired-cutting-connections", "{last}");
        live = other(live);
    }
    let posted = posts.finish();
    assert_all_served(&posted, &["v1", "v2", "v3"]);
    assert_all_served(&gets.finish(), &["v1", "v2", "v3"]);
    eprintln!("{} POSTs, none lost", posted.len());
}
