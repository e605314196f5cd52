//! nginx on another host, for real (seed 000): an nginx host and an app
//! host as two network namespaces joined by a veth pair (tests/src/netns.rs).
//! nginx proxies to the app host's address; the stages run on the app host
//! and reach nginx's include and commands over ssh. The link is cut at each
//! step of a deployment: before the write, between the write and the
//! reload, during the confirmation. Each time the live app keeps running,
//! the message names the host that could not be reached, every request that
//! did not overlap a cut got 200, and once the link is back and a stage has
//! run, the include on the nginx host names a running app and nginx serves
//! what it names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::time::Duration;

use nonstop_common::sys::procs;
use tests::netns::{outside_cuts, TwoHosts, APP_ADDR, APP_PORTS};
use tests::{alive, assert_all_served, wait_until, HookRun, Load};

/// Both hosts, v1 live on real1, clients requesting through nginx.
fn hosts(name: &str) -> (TwoHosts, i32, Load) {
    let hosts = TwoHosts::new(name).unwrap();
    hosts.start_by_hand("real1", "v1").unwrap();
    assert_eq!(hosts.get("/").unwrap(), (200, "demo v1 real1".into()));
    let live = hosts.launched_pid("real1").unwrap();
    let load = hosts.load().unwrap();
    (hosts, live, load)
}

/// `stop` and `start` of deployment `id` with `version`: real2 runs it.
fn stop_and_start(hosts: &TwoHosts, id: &str, version: &str) {
    hosts.drop_jar(version).unwrap();
    hosts.hook("stop", &[], Some(id)).unwrap().assert_ok();
    hosts.hook("start", &[], Some(id)).unwrap().assert_ok();
}

/// Failed, and said which host it could not reach.
#[track_caller]
fn assert_unreachable(hosts: &TwoHosts, run: &HookRun) {
    run.assert_code(1)
        .assert_stderr_has("cannot reach nginx's host")
        .assert_stderr_has(&hosts.destination());
}

/// The include on the nginx host names `profile`, nginx serves `version`
/// from it, and its app runs.
#[track_caller]
fn assert_routes(hosts: &TwoHosts, profile: &str, version: &str) {
    let port = APP_PORTS[usize::from(profile == "real2")];
    assert_eq!(
        hosts.include().trim(),
        format!("set $service_url http://{APP_ADDR}:{port};")
    );
    assert_eq!(hosts.get("/profile").unwrap(), (200, profile.to_string()));
    assert_eq!(
        hosts.get("/").unwrap(),
        (200, format!("demo {version} {profile}"))
    );
    assert!(alive(hosts.launched_pid(profile).unwrap()));
}

/// Every request that overlapped no cut got 200 from a deployed version.
#[track_caller]
fn assert_served_outside_cuts(hosts: &TwoHosts, load: Load, versions: &[&str]) {
    let started = load.started();
    let samples = load.finish();
    let all = samples.len();
    let kept = outside_cuts(samples, started, &hosts.net.cuts());
    assert!(kept.len() < all, "some requests must have met a cut");
    assert_all_served(&kept, versions);
}

/// The ssh processes `stage` (a pid) runs now: its steps on nginx's host.
fn ssh_children(stage: i32) -> Vec<i32> {
    procs::children(stage)
        .into_iter()
        .filter(|child| {
            fs::read(format!("/proc/{child}/cmdline")).is_ok_and(|argv| argv.starts_with(b"ssh\0"))
        })
        .collect()
}

#[test]
fn a_cut_before_the_write_changes_nothing_here_or_there() {
    let (hosts, live, load) = hosts("hosts-before-write");
    let include = hosts.include();

    // The deployment's first stage cannot tell what is live: it stops nothing.
    hosts.cut().unwrap();
    let stop = hosts.hook("stop", &[], Some("d-1")).unwrap();
    assert_unreachable(&hosts, &stop);
    assert!(alive(live), "the live app must not be stopped");
    hosts.mend().unwrap();

    stop_and_start(&hosts, "d-1", "v2");
    let real2 = hosts.launched_pid("real2").unwrap();
    // The new app answers on the app host, but nginx's host is out of
    // reach when the switch would write the include.
    hosts.cut().unwrap();
    let health = hosts.hook("health", &[], Some("d-1")).unwrap();
    assert_unreachable(&hosts, &health);
    assert_eq!(hosts.include(), include, "nothing may be written");
    assert!(alive(live) && alive(real2));
    hosts.mend().unwrap();
    assert_routes(&hosts, "real1", "v1");

    // The hook run again once the link is back switches.
    let health = hosts.hook("health", &[], Some("d-1")).unwrap();
    health.assert_ok().assert_stderr_has("confirmed");
    assert_routes(&hosts, "real2", "v2");
    assert!(alive(live), "the previous app is kept for a rollback");
    assert_served_outside_cuts(&hosts, load, &["v1", "v2"]);
}

#[test]
fn a_reload_that_ran_while_the_link_was_cut_is_undone_by_the_next_stage() {
    let (hosts, live, load) = hosts("hosts-lost-reload");
    stop_and_start(&hosts, "d-1", "v2");

    // The include is written over there; the reload waits at the gate.
    hosts.arm_gate().unwrap();
    let health = hosts.spawn("health", &[], Some("d-1")).unwrap();
    assert!(
        hosts.wait_at_gate(Duration::from_secs(60)),
        "{}",
        health.stderr_so_far()
    );
    assert!(hosts.include().contains(":8082;"), "{}", hosts.include());
    // The link goes, then nginx reloads there: its answer never comes back,
    // and the include cannot be put back either.
    hosts.cut().unwrap();
    hosts.open_gate().unwrap();
    let health = health.finish(Duration::from_secs(90)).unwrap();
    assert_unreachable(&hosts, &health);
    assert!(alive(live), "the live app must not be stopped");
    assert!(wait_until(Duration::from_secs(10), || hosts.gate_passed()));
    hosts.mend().unwrap();

    // The next deployment's first stage settles it. `health` failed, so
    // the deployment failed: the journal's phase is past the reload, and
    // the next stage puts nginx back on the live app and says so; the
    // include names real1 again, and real1 still runs.
    let stop = hosts.hook("stop", &[], Some("d-2")).unwrap();
    stop.assert_ok().assert_stderr_has("real1 again");
    assert!(alive(live), "the live app must not be stopped");
    assert_routes(&hosts, "real1", "v1");
    assert_served_outside_cuts(&hosts, load, &["v1", "v2"]);
}

#[test]
fn a_reload_whose_answer_was_lost_is_undone_by_reloading_nginx_again() {
    let (hosts, live, load) = hosts("hosts-maybe-reloaded");
    stop_and_start(&hosts, "d-1", "v2");
    let include = hosts.include();

    hosts.arm_gate().unwrap();
    let health = hosts.spawn("health", &[], Some("d-1")).unwrap();
    assert!(
        hosts.wait_at_gate(Duration::from_secs(60)),
        "{}",
        health.stderr_so_far()
    );
    // Packets are lost while nginx reloads there: ssh gives the reload up
    // as failed although it ran. By the time the switch puts the include
    // back, the link works again.
    let reload = ssh_children(health.pid());
    hosts.drop_packets().unwrap();
    hosts.open_gate().unwrap();
    // The next ssh after the reload's is the one that restores the include.
    assert!(
        wait_until(Duration::from_secs(30), || ssh_children(health.pid())
            .iter()
            .any(|c| !reload.contains(c))),
        "{}",
        health.stderr_so_far()
    );
    hosts.pass_packets().unwrap();
    let health = health.finish(Duration::from_secs(90)).unwrap();
    assert_unreachable(&hosts, &health);
    health.assert_stderr_has("restored");
    assert!(alive(live), "the live app must not be stopped");

    // The include is the one from before, and nginx serves what it says.
    assert_eq!(hosts.include(), include);
    assert_routes(&hosts, "real1", "v1");
    // So the next deployment goes on.
    hosts.hook("stop", &[], Some("d-2")).unwrap().assert_ok();
    assert_routes(&hosts, "real1", "v1");
    assert_served_outside_cuts(&hosts, load, &["v1", "v2"]);
}

#[test]
fn a_cut_during_the_confirmation_is_settled_by_the_next_stage() {
    let (hosts, live, load) = hosts("hosts-confirm");
    stop_and_start(&hosts, "d-1", "v2");

    // The reload returns at once and takes effect later, as nginx's does;
    // the link goes while the switch waits for nginx to answer as real2.
    hosts.defer_reload().unwrap();
    let health = hosts.spawn("health", &[], Some("d-1")).unwrap();
    // Once the reload's ssh has returned, the switch is confirming: it
    // probes through nginx and runs nothing over ssh.
    assert!(
        hosts.wait_at_gate(Duration::from_secs(60))
            && wait_until(Duration::from_secs(30), || ssh_children(health.pid())
                .is_empty()),
        "{}",
        health.stderr_so_far()
    );
    hosts.cut().unwrap();
    hosts.open_gate().unwrap();
    let health = health.finish(Duration::from_secs(90)).unwrap();
    assert_unreachable(&hosts, &health);
    assert!(alive(live), "the live app must not be stopped");
    assert!(wait_until(Duration::from_secs(10), || hosts.gate_passed()));
    hosts.mend().unwrap();

    // As above: the failed switch is undone by the next stage, which
    // reloads nginx back onto the live app.
    let stop = hosts.hook("stop", &[], Some("d-2")).unwrap();
    stop.assert_ok().assert_stderr_has("real1 again");
    assert!(alive(live), "the live app must not be stopped");
    assert_routes(&hosts, "real1", "v1");
    assert_served_outside_cuts(&hosts, load, &["v1", "v2"]);
}

/// nginx's host prints at every login (a `command=` wrapper in
/// authorized_keys that greets, then runs what was asked), and a
/// colleague's broken vhost makes `nginx -t` fail there. Before, the greeting
/// was read as the include's first line, kept in the switch journal and
/// "restored" into nginx's config: after the colleague's fix `nginx -t`
/// still failed, now because of the include. Now no stage reads the include
/// through such a login: the switch fails naming the host and quoting what
/// it printed, the include is byte for byte what it was, `profile --check`
/// says why, and once the login is quiet the same hook switches.
#[test]
fn a_login_that_prints_is_never_taken_for_the_include() {
    let (hosts, live, load) = hosts("hosts-login-prints");
    stop_and_start(&hosts, "d-1", "v2");
    // Bytes that are not UTF-8 too: the include is kept as bytes.
    let mut before = b"# r\xe9serv\xe9 (Latin-1)\n".to_vec();
    before.extend(fs::read(&hosts.nginx.include).unwrap());
    fs::write(&hosts.nginx.include, &before).unwrap();
    let colleague = hosts.nginx.prefix.join("sites/colleague.conf");
    fs::write(
        &colleague,
        "server { listen 127.0.0.1:8099; brokn_directive on; }\n",
    )
    .unwrap();
    assert!(!hosts.nginx_test());
    let notice = "web1: authorized use only";
    hosts.sshd.login_prints(notice).unwrap();
    let quoted = format!("printed \"{notice}\\n\"");

    let health = hosts.hook("health", &[], Some("d-1")).unwrap();
    health
        .assert_code(1)
        .assert_stderr_has(&hosts.destination())
        .assert_stderr_has(&quoted);
    assert_eq!(fs::read(&hosts.nginx.include).unwrap(), before);
    assert!(alive(live), "the live app must not be stopped");
    // The colleague fixes the vhost: nginx's config is whole again.
    fs::remove_file(&colleague).unwrap();
    assert!(
        hosts.nginx_test(),
        "nginx -t must pass once the vhost is fixed"
    );
    assert_eq!(hosts.get("/").unwrap(), (200, "demo v1 real1".into()));
    // `profile --check` says why.
    let check = hosts.hook("profile", &["--check"], None).unwrap();
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(
        said.contains(&format!("FAIL: nginx's host {}", hosts.destination()))
            && said.contains(&format!("prints \"{notice}\\n\" at login")),
        "{said}"
    );

    // The login is quiet again: the same hook switches.
    hosts.sshd.key_options("").unwrap();
    let health = hosts.hook("health", &[], Some("d-1")).unwrap();
    health.assert_ok().assert_stderr_has("confirmed");
    assert_routes(&hosts, "real2", "v2");
    assert_all_served(&load.finish(), &["v1", "v2"]);
}
