//! The realpath mode end to end, with the real nginx and the demo jar:
//! nginx's `root` is a symlink to `ports/PORT`, a `map` on `$realpath_root`
//! picks the upstream, and a switch renames a new link over the old one,
//! never reloading nginx. Deployments under GETs and POSTs on new and
//! kept-alive connections fail nothing and close no kept-alive connection;
//! a confirmation that fails puts the old link back; a switch killed
//! between the rename and the confirmation is settled by the next stage; a
//! dangling or foreign link is refused naming it; `profile --check` says
//! what it checked. The maintenance page: over ssh without a reload, and
//! refused (nothing changed) when nginx's config lacks its lines (the
//! cycle under load is in operator.rs, beside the other modes').

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tests::{alive, assert_all_served, HookRun, Layout, Load, Setup, SetupOptions};

fn setup(name: &str, retire: bool, remote: bool) -> Setup {
    Setup::new(
        name,
        &SetupOptions {
            layout: Layout::Realpath,
            retire,
            remote,
            ..Default::default()
        },
    )
    .unwrap()
}

fn link(setup: &Setup) -> PathBuf {
    setup.nginx.include.clone()
}

fn ports_dir(setup: &Setup, port: u16) -> PathBuf {
    link(setup).parent().unwrap().join(format!("ports/{port}"))
}

fn target(link: &Path) -> String {
    fs::read_link(link).unwrap().to_string_lossy().into_owned()
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

/// Three deployments under load, locally or over ssh: every request of
/// every kind served, no kept-alive connection closed, nginx's workers
/// the same throughout (never reloaded), the previous app retired.
fn deployments_under_load(name: &str, remote: bool) {
    let setup = setup(name, true, remote);
    setup.bootstrap("v1").unwrap();
    let link = link(&setup);
    let workers = setup.nginx.settled_workers();
    let load = Load::start_mixed(setup.nginx.port, "/", Duration::from_millis(2));
    let mut live = 0;
    for (n, version) in ["v2", "v3", "v4"].into_iter().enumerate() {
        let idle = 1 - live;
        let old = setup
            .launched_pid(["real1", "real2"][live])
            .expect("the live app's pid");
        let health = deploy(&setup, &format!("d-{n}"), version);
        health
            .assert_stderr_has("confirmed")
            .assert_stderr_has("after the write")
            .assert_stderr_has("the link")
            .assert_stderr_lacks("reload");
        assert_eq!(target(&link), format!("ports/{}", setup.ports[idle]));
        assert_eq!(
            setup.get("/").unwrap(),
            (200, format!("demo {version} {}", ["real1", "real2"][idle]))
        );
        assert!(!alive(old), "the previous app ({old}) was not retired");
        assert_eq!(setup.nginx.workers(), workers, "nginx must not reload");
        live = idle;
    }
    let samples = load.finish();
    let kept_alive_closed = samples
        .iter()
        .filter(|s| s.kept_alive && s.error.is_some())
        .count();
    assert_eq!(kept_alive_closed, 0, "{samples:?}");
    assert!(samples.iter().filter(|s| s.post && s.kept_alive).count() > 20);
    assert!(samples.iter().filter(|s| s.post && !s.kept_alive).count() > 20);
    assert_all_served(&samples, &["v1", "v2", "v3", "v4"]);
}

#[test]
fn realpath_mode_switches_under_load_without_a_reload_or_a_closed_connection() {
    deployments_under_load("realpath-load", false);
}

#[test]
fn realpath_mode_over_ssh_switches_under_load_without_a_reload() {
    deployments_under_load("realpath-remote", true);
}

/// Makes nginx's map send `/ports/P2` to real1's port (an entry before
/// the regex, one reload): the link can be pointed at ports/P2, but nginx
/// still answers as real1 through it.
fn misdirect(setup: &Setup) {
    let conf = fs::read_to_string(&setup.nginx.conf).unwrap();
    let map = "map $realpath_root $service_url {";
    assert!(conf.contains(map), "{conf}");
    let entry = format!(
        "{map}\n    \"~/ports/{}$\" \"http://127.0.0.1:{}\";",
        setup.ports[1], setup.ports[0]
    );
    setup
        .nginx
        .reload_with(&conf.replacen(map, &entry, 1))
        .unwrap();
}

#[test]
fn a_failed_confirmation_puts_the_old_link_back() {
    let setup = setup("realpath-unconfirmed", false, false);
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    setup
        .edit_config(|c| c["nginx"]["confirm_timeout_secs"] = json!(2))
        .unwrap();
    let link = link(&setup);
    let before = target(&link);
    misdirect(&setup);
    let load = Load::start_mixed(setup.nginx.port, "/", Duration::from_millis(2));
    let switch = setup.hook("switch", &["--to", "real2"], None).unwrap();
    switch
        .assert_code(1)
        .assert_stderr_has("did not answer as real2")
        .assert_stderr_has("answered real1")
        .assert_stderr_has("restored the link");
    assert_eq!(target(&link), before);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    assert!(alive(setup.launched_pid("real1").unwrap()));
    assert_all_served(&load.finish(), &["v1"]);
    // The journal is gone: the next stage has nothing to settle.
    assert!(!setup.state_dir().join("switching.json").exists());
}

#[test]
fn a_switch_killed_between_the_rename_and_the_confirmation_is_settled_by_the_next_stage() {
    let setup = setup("realpath-killed", false, false);
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let link = link(&setup);
    let before = target(&link);
    misdirect(&setup);
    // The confirmation waits (nginx keeps answering real1) until it is killed.
    let mut run = setup
        .bundle
        .spawn("switch", &["--to", "real2"], None, |_| {})
        .unwrap();
    assert!(
        run.wait_for_stderr("wrote ", Duration::from_secs(30)),
        "{}",
        run.stderr_so_far()
    );
    run.signal(nix::sys::signal::Signal::SIGKILL);
    run.finish(Duration::from_secs(10)).unwrap();
    assert_eq!(
        target(&link),
        format!("ports/{}", setup.ports[1]),
        "the link was renamed"
    );
    assert!(setup.state_dir().join("switching.json").exists());

    let next = setup.hook("switch", &["--to", "real1"], None).unwrap();
    next.assert_ok();
    assert_eq!(target(&link), before, "{}", next.stderr);
    next.assert_stderr_has("was interrupted")
        .assert_stderr_has("restored the link")
        .assert_stderr_lacks("include file");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    assert!(!setup.state_dir().join("switching.json").exists());
}

#[test]
fn a_dangling_or_foreign_link_is_refused_naming_it() {
    let setup = setup("realpath-wrong-link", false, false);
    setup.bootstrap("v1").unwrap();
    let live = setup.launched_pid("real1").unwrap();
    let link = link(&setup);
    let foreign = "/srv/elsewhere".to_string();
    let dangling = format!("ports/{}", setup.ports[1]);
    fs::remove_dir(ports_dir(&setup, setup.ports[1])).unwrap();
    for (points, says) in [
        (&foreign, "which is no profile's directory"),
        (&dangling, "a dangling link"),
    ] {
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(points, &link).unwrap();
        setup.drop_jar("v2").unwrap();
        let stop = setup.hook("stop", &[], Some("d-wrong")).unwrap();
        stop.assert_code(2);
        stop.assert_stderr_has(&link.display().to_string())
            .assert_stderr_has(points)
            .assert_stderr_has(says)
            .assert_stderr_has("does not guess");
        assert!(alive(live), "nothing may be stopped");
        assert_eq!(target(&link), *points, "the link is left as it was");
        let check = setup.hook("profile", &["--check"], None).unwrap();
        check.assert_stdout_has(&format!("FAIL: the link {}", link.display()));
    }
}

#[test]
fn profile_check_says_what_the_realpath_mode_relies_on() {
    let setup = setup("realpath-check", false, false);
    setup.bootstrap("v1").unwrap();
    let link = link(&setup).display().to_string();
    let check = setup.hook("profile", &["--check"], None).unwrap();
    check
        .assert_stdout_has("ok: nginx maps $realpath_root's /ports/PORT to $service_url")
        .assert_stdout_has(&format!(
            "which has `root {link};` and `proxy_pass $service_url;`"
        ))
        .assert_stdout_has(&format!(
            "ok: the link {link} points at ports/{}",
            setup.ports[0]
        ))
        .assert_stdout_has("(real2's directory) exists and nginx's workers (uid");
    assert!(!check.stdout.contains("FAIL"), "{}", check.stdout);

    // A ports directory the workers cannot reach is named.
    let ports = ports_dir(&setup, setup.ports[1]);
    fs::remove_dir(&ports).unwrap();
    let check = setup.hook("profile", &["--check"], None).unwrap();
    check.assert_stdout_has(&format!(
        "FAIL: {} (real2's directory) does not exist",
        ports.display()
    ));
}

/// nginx's config as README's realpath block was before the maintenance
/// lines: `profile --check` warns (not a failure) and `switch
/// --maintenance` is refused before anything is written, so nginx never
/// answers the maintenance link with the map's default (502).
#[test]
fn without_the_maintenance_lines_the_page_is_refused_and_nothing_changes() {
    let setup = setup("realpath-no-page", false, false);
    setup.bootstrap("v1").unwrap();
    let link = link(&setup);
    let before = target(&link);
    let conf = fs::read_to_string(&setup.nginx.conf).unwrap();
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in conf.lines() {
        if line.contains("$nonstop_retry_after {") || line.contains("set $nonstop_503") {
            skipping = true;
        }
        if !skipping && !line.contains("switch --maintenance") {
            kept.push(line);
        }
        // The map's `}` and the page location's `}` end a skipped part.
        if skipping && (line == "}" || line == "    }") {
            skipping = false;
        }
    }
    let old = kept.join("\n");
    assert!(
        !old.contains("nonstop_") && old.contains("proxy_pass $service_url"),
        "{old}"
    );
    // The file nginx -T reads (a reload would load it: nginx -t passes).
    fs::write(&setup.nginx.conf, &old).unwrap();
    assert!(setup.nginx.test_config());

    let check = setup.hook("profile", &["--check"], None).unwrap();
    check.assert_stdout_has("warn: `switch --maintenance` is unavailable");
    assert!(!check.stdout.contains("FAIL"), "{}", check.stdout);
    let on = setup.hook("switch", &["--maintenance"], None).unwrap();
    on.assert_code(2)
        .assert_stderr_has("nginx's config lacks `map $realpath_root $nonstop_retry_after`")
        .assert_stderr_has("nothing was changed")
        .assert_stderr_has("README's realpath setup");
    assert_eq!(target(&link), before);
    assert!(!setup.state_dir().join("switching.json").exists());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// The status and `Retry-After` nginx answers `GET /` with.
fn status_and_retry_after(port: u16) -> (u16, Option<String>) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .map(str::to_string);
    (status, retry)
}

/// Over ssh the maintenance page is the same: nginx's config read and the
/// directory made there, the link renamed there, never a reload.
#[test]
fn realpath_mode_over_ssh_serves_the_maintenance_page_without_a_reload() {
    let setup = setup("realpath-remote-page", false, true);
    setup.bootstrap("v1").unwrap();
    let link = link(&setup);
    let workers = setup.nginx.settled_workers();
    let on = setup
        .hook("switch", &["--maintenance", "--retry-after", "7"], None)
        .unwrap();
    on.assert_ok()
        .assert_stderr_has("nginx answers every request with the maintenance page (503): confirmed")
        .assert_stderr_lacks("reload");
    assert_eq!(target(&link), format!("maintenance/{}-7", setup.ports[0]));
    assert_eq!(
        status_and_retry_after(setup.nginx.port),
        (503, Some("7".into()))
    );
    let (status, body) = setup.get("/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("Down for maintenance"), "{body}");
    setup
        .hook("switch", &["--live"], None)
        .unwrap()
        .assert_ok()
        .assert_stderr_has("nginx routes to real1");
    assert_eq!(target(&link), format!("ports/{}", setup.ports[0]));
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    assert_eq!(setup.nginx.workers(), workers, "nginx must not reload");
}

/// The live profile's `ports/PORT` made a symlink to the other's: the link
/// still says `ports/P1`, but realpath() resolves it to `ports/P2`, so
/// nginx serves real2. Reading the link alone would call real1 live and
/// stop real2, the app serving; nonstop resolves the link as nginx does
/// and refuses, naming where it leads, before anything is stopped.
#[test]
fn a_ports_directory_resolving_to_the_other_port_is_refused_before_anything_stops() {
    let setup = setup("realpath-resolves-elsewhere", false, false);
    setup.bootstrap("v1").unwrap();
    setup.start_by_hand("real2", "v2").unwrap();
    let link = link(&setup);
    let first = ports_dir(&setup, setup.ports[0]);
    fs::remove_dir(&first).unwrap();
    std::os::unix::fs::symlink(setup.ports[1].to_string(), &first).unwrap();
    assert_eq!(target(&link), format!("ports/{}", setup.ports[0]));
    // What nginx does with it: real2 answers through the link to ports/P1.
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    let serving = setup.launched_pid("real2").unwrap();

    let check = setup.hook("profile", &["--check"], None).unwrap();
    check.assert_stdout_has(&format!("FAIL: the link {}", link.display()));
    check.assert_stdout_has(&format!("FAIL: realpath() resolves {} to", first.display()));
    check.assert_stdout_has("(real1's directory is a symlink leading elsewhere");
    assert!(
        !check
            .stdout
            .contains(&format!("ok: the link {}", link.display())),
        "{}",
        check.stdout
    );
    setup.drop_jar("v3").unwrap();
    let stop = setup.hook("stop", &[], Some("d-elsewhere")).unwrap();
    stop.assert_code(2)
        .assert_stderr_has(&format!("realpath() resolves {}", first.display()))
        .assert_stderr_has(&format!("ports/{}\"", setup.ports[1]))
        .assert_stderr_has("does not guess");
    assert!(alive(serving), "the app nginx serves was stopped");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    // An explicit switch goes on as asked (warned), and nginx's answer,
    // not the link's words, decides: not confirmed, the link left as it was.
    let switch = setup.hook("switch", &["--to", "real1"], None).unwrap();
    switch
        .assert_code(1)
        .assert_stderr_has("realpath() resolves")
        .assert_stderr_has("answered real2");
    assert_eq!(target(&link), format!("ports/{}", setup.ports[0]));
    assert!(alive(serving));
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // The live directory right again, the idle one led elsewhere: a
    // deployment (which would switch there) is refused before it stops
    // anything, naming it.
    // The unconfirmed undo kept the journal (nginx never answered real1).
    let _ = fs::remove_file(setup.state_dir().join("switching.json"));
    fs::remove_file(&first).unwrap();
    fs::create_dir(&first).unwrap();
    let second = ports_dir(&setup, setup.ports[1]);
    fs::remove_dir(&second).unwrap();
    std::os::unix::fs::symlink("../maintenance", &second).unwrap();
    let live = setup.launched_pid("real1").unwrap();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
    let stop = setup.hook("stop", &[], Some("d-elsewhere-2")).unwrap();
    stop.assert_code(2)
        .assert_stderr_has(&format!("realpath() resolves {}", second.display()))
        .assert_stderr_has("nothing was changed");
    assert!(alive(live) && alive(serving), "nothing may be stopped");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// A symlink planted at `maintenance/PORT-SECONDS` (the link's directory
/// shared, say) leads realpath() to `ports/P2`, where no app runs: pointing
/// the link there would answer every request 502 until the confirmation
/// gave up. `switch --maintenance` resolves it first and refuses, naming it;
/// the link is left as it was and every request served.
#[test]
fn a_symlink_planted_at_the_maintenance_directory_is_refused_before_the_link_moves() {
    let setup = setup("realpath-planted-page", false, false);
    setup.bootstrap("v1").unwrap();
    let link = link(&setup);
    let before = target(&link);
    let planted = link
        .parent()
        .unwrap()
        .join(format!("maintenance/{}-30", setup.ports[0]));
    std::os::unix::fs::symlink(format!("../ports/{}", setup.ports[1]), &planted).unwrap();
    let on = setup
        .hook("switch", &["--maintenance", "--retry-after", "30"], None)
        .unwrap();
    on.assert_code(2)
        .assert_stderr_has(&planted.display().to_string())
        .assert_stderr_has("nothing was changed");
    assert_eq!(target(&link), before);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// nginx resolves `$realpath_root` twice in a request: for the page's
/// `if` (the rewrite phase) and for `proxy_pass` (the content phase). A
/// request that passed the `if` just before `switch --maintenance` renamed
/// the link must reach the app that was live, not the map's default (a
/// 502): README's map turns `maintenance/PORT-SECONDS` into that app's
/// URL. The link flipped between `ports/P` and `maintenance/P-30` (as the
/// switch renames it) 400 times or more (3 s) under GETs: each answer is the app's 200
/// or the page's 503, never a 502.
#[test]
fn a_request_in_flight_as_maintenance_begins_reaches_the_app_not_a_502() {
    let setup = setup("realpath-page-race", false, false);
    setup.bootstrap("v1").unwrap();
    let link = link(&setup);
    // Made by nonstop: the directory and the page.
    setup
        .hook("switch", &["--maintenance", "--retry-after", "30"], None)
        .unwrap()
        .assert_ok();
    let page = format!("maintenance/{}-30", setup.ports[0]);
    let live = format!("ports/{}", setup.ports[0]);
    assert_eq!(target(&link), page);
    let load = Load::start(setup.nginx.port, "/", 3, Duration::from_millis(1));
    let tmp = link.with_file_name("live.flip");
    // At least 400 flips and 3 s of them: enough answers of each kind on a
    // loaded machine too.
    let flipping = std::time::Instant::now();
    let mut n = 0;
    while n < 400 || flipping.elapsed() < Duration::from_secs(3) {
        let to = if n % 2 == 0 { &live } else { &page };
        std::os::unix::fs::symlink(to, &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        n += 1;
    }
    // It ends on the page, as it began.
    if n % 2 == 1 {
        std::os::unix::fs::symlink(&page, &tmp).unwrap();
        fs::rename(&tmp, &link).unwrap();
    }
    let samples = load.finish();
    let app = samples
        .iter()
        .filter(|s| s.status == 200 && s.body == "demo v1 real1")
        .count();
    let pages = samples.iter().filter(|s| s.status == 503).count();
    let bad: Vec<_> = samples
        .iter()
        .filter(|s| !(s.status == 200 && s.body == "demo v1 real1") && s.status != 503)
        .collect();
    println!(
        "{} requests across {n} flips: {app} answered by the app, {pages} by the page, {} otherwise",
        samples.len(),
        bad.len()
    );
    assert!(app > 50 && pages > 50, "{app} {pages}");
    assert!(
        bad.is_empty(),
        "{} of {} answers neither the app's nor the page's, first: {:?}",
        bad.len(),
        samples.len(),
        &bad[..bad.len().min(3)]
    );
}
