//! The fault suite: every way a deployment can go wrong, each against a real
//! nginx and the real demo jar, with clients requesting through nginx the
//! whole time. Each case checks what an operator would: the exit code, that
//! the message names the cause, that the live app still runs and answers,
//! that the include file is byte-identical where no switch may happen, and
//! that nginx still passes its own test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tests::{alive, free_port, HookRun, Load, Nginx, Setup, SetupOptions, TestDir};

const V1: &str = "demo v1 real1";

/// v1 live on real1, a client requesting through nginx, and what must not change.
struct Scene {
    setup: Setup,
    load: Option<Load>,
    live_pid: i32,
    include: Vec<u8>,
}

impl Scene {
    fn new(name: &str) -> Scene {
        Scene::with(name, &SetupOptions::default())
    }

    fn with(name: &str, opts: &SetupOptions) -> Scene {
        let setup = Setup::new(name, opts).unwrap();
        setup.bootstrap("v1").unwrap();
        assert_eq!(setup.get("/").unwrap(), (200, V1.to_string()));
        let live_pid = setup.launched_pid("real1").unwrap();
        let include = setup.include();
        let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(5));
        Scene {
            setup,
            load: Some(load),
            live_pid,
            include,
        }
    }

    fn hook(&self, stage: &str, args: &[&str], id: Option<&str>) -> HookRun {
        self.setup.hook(stage, args, id).unwrap()
    }

    /// Adds JVM options to the configured command (before `-jar`).
    fn java_opts(&self, opts: &[&str]) {
        self.setup
            .edit_config(|c| {
                let command = c["app"]["command"].as_array_mut().unwrap();
                let at = command.len() - 2;
                for (i, o) in opts.iter().enumerate() {
                    command.insert(at + i, json!(o));
                }
            })
            .unwrap();
    }

    /// The promise of every case where nothing may change: the exit code,
    /// the cause named, the live app running and answering, the include
    /// file as it was, nginx's config passing its test.
    #[track_caller]
    fn assert_kept(&self, run: &HookRun, code: i32, causes: &[&str]) {
        run.assert_code(code);
        for cause in causes {
            run.assert_stderr_has(cause);
        }
        assert!(
            alive(self.live_pid),
            "{}: the live app was stopped",
            run.stage
        );
        assert_eq!(
            String::from_utf8_lossy(&self.setup.include()),
            String::from_utf8_lossy(&self.include),
            "{}: the include file changed",
            run.stage
        );
        assert!(
            self.setup.nginx.test_config(),
            "{}: nginx -t fails",
            run.stage
        );
        assert_eq!(self.setup.get("/").unwrap(), (200, V1.to_string()));
    }

    /// Stops the clients; every request must have been answered 200 by one
    /// of `bodies`.
    fn finish(mut self, bodies: &[&str]) {
        let load = self.load.take().unwrap();
        // A case that ends quickly still gets enough requests to mean something.
        let ran = load.started().elapsed();
        std::thread::sleep(Duration::from_millis(500).saturating_sub(ran));
        let samples = load.finish();
        assert!(samples.len() > 10, "the load hardly ran: {}", samples.len());
        let bad: Vec<_> = samples
            .iter()
            .filter(|s| s.status != 200 || !bodies.contains(&s.body.as_str()))
            .take(5)
            .collect();
        assert!(
            bad.is_empty(),
            "{} requests failed or answered something else, first: {bad:?}",
            samples
                .iter()
                .filter(|s| s.status != 200 || !bodies.contains(&s.body.as_str()))
                .count()
        );
    }

    /// Starts `version` on real2 by hand and checks it answers.
    fn start_real2(&self, version: &str) {
        self.setup.start_by_hand("real2", version).unwrap();
    }

    fn workers(&self) -> Vec<i32> {
        self.setup.nginx.settled_workers()
    }

    fn state(&self, name: &str) -> std::path::PathBuf {
        self.setup.state_dir().join(name)
    }
}

// ------------------------------------------------------------ the new version is bad

#[test]
fn a_version_that_never_answers_right_times_out_and_changes_nothing() {
    let scene = Scene::new("fault-never-healthy");
    scene.java_opts(&["-Ddemo.answer=sick"]);
    scene
        .setup
        .edit_config(|c| c["health"]["timeout_secs"] = json!(3))
        .unwrap();
    scene.setup.drop_jar("v2").unwrap();
    scene.hook("stop", &[], Some("d-1")).assert_ok();
    scene.hook("start", &[], Some("d-1")).assert_ok();
    let health = scene.hook("health", &[], Some("d-1"));
    scene.assert_kept(
        &health,
        1,
        &["real2 did not answer", "within 3.00 s", "sick"],
    );
    assert!(health.elapsed < Duration::from_secs(10));
    scene.finish(&[V1]);
}

#[test]
fn a_version_that_dies_during_start_up_fails_health_at_once() {
    let scene = Scene::new("fault-dies-later");
    // It outlives start's 1 s watch, then exits 3 before it ever answers.
    scene.java_opts(&["-Ddemo.startup.delay.ms=2500", "-Ddemo.exit.at.startup=3"]);
    scene.setup.drop_jar("v2").unwrap();
    scene.hook("stop", &[], Some("d-1")).assert_ok();
    scene.hook("start", &[], Some("d-1")).assert_ok();
    let health = scene.hook("health", &[], Some("d-1"));
    scene.assert_kept(&health, 1, &["has exited", "without answering"]);
    // The health timeout is 30 s: failing at once means well before it.
    assert!(
        health.elapsed < Duration::from_secs(15),
        "health took {:?}",
        health.elapsed
    );
    scene.finish(&[V1]);
}

#[test]
fn a_missing_jar_or_a_bad_java_option_fails_start_and_changes_nothing() {
    let scene = Scene::new("fault-exits-at-once");
    // No build matches the pattern.
    scene
        .setup
        .edit_config(|c| c["app"]["artifact"] = json!("zip/*.war"))
        .unwrap();
    // In a deployment, stop looks for it first (and stops nothing); start
    // by itself names what it did not find.
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 1, &["no file in", "*.war", "nothing is stopped"]);
    let start = scene.hook("start", &[], Some("d-1"));
    scene.assert_kept(&start, 1, &["no file in", "*.war"]);

    // The JVM refuses an option and exits at once.
    scene
        .setup
        .edit_config(|c| c["app"]["artifact"] = json!("zip/*.jar"))
        .unwrap();
    scene.java_opts(&["-XX:+NoSuchOptionAnywhere"]);
    scene.setup.drop_jar("v2").unwrap();
    scene.hook("stop", &[], Some("d-2")).assert_ok();
    let start = scene.hook("start", &[], Some("d-2"));
    scene.assert_kept(&start, 1, &["exited at once", "NoSuchOptionAnywhere"]);
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ nginx says no

#[test]
fn a_broken_template_fails_nginx_test_restores_the_include_and_never_reloads() {
    let scene = Scene::new("fault-bad-template");
    scene.start_real2("v2");
    // Valid for nonstop (it has {port}), invalid for nginx (no semicolon).
    scene
        .setup
        .edit_config(|c| c["nginx"]["template"] = json!("set $service_url http://127.0.0.1:{port}"))
        .unwrap();
    let workers = scene.workers();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    scene.assert_kept(&switch, 1, &["-t` failed", "not reloaded", "restored"]);
    assert_eq!(
        scene.workers(),
        workers,
        "nginx must not have been reloaded"
    );
    scene.finish(&[V1]);
}

#[test]
fn a_broken_unrelated_file_fails_nginx_test_and_nothing_moves() {
    let scene = Scene::new("fault-broken-neighbour");
    scene.start_real2("v2");
    let neighbour = scene.setup.nginx.prefix.join("conf.d/other-site.conf");
    fs::write(&neighbour, "server { listen 127.0.0.1:1 broken }\n").unwrap();
    let workers = scene.workers();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    // nginx's own message points at the culprit file.
    switch.assert_stderr_has("other-site.conf");
    fs::remove_file(&neighbour).unwrap();
    scene.assert_kept(&switch, 1, &["-t` failed", "restored"]);
    assert_eq!(
        scene.workers(),
        workers,
        "nginx must not have been reloaded"
    );
    scene.finish(&[V1]);
}

#[test]
fn a_failing_reload_or_one_that_moves_no_traffic_restores_the_include() {
    let scene = Scene::new("fault-reload");
    scene.start_real2("v2");

    scene
        .setup
        .edit_config(|c| c["nginx"]["reload"] = json!(["false"]))
        .unwrap();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    scene.assert_kept(&switch, 1, &["`false` failed", "restored"]);

    // "Succeeds" but changes nothing: the probe never answers real2.
    scene
        .setup
        .edit_config(|c| {
            c["nginx"]["reload"] = json!(["true"]);
            c["nginx"]["confirm_timeout_secs"] = json!(2);
        })
        .unwrap();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    scene.assert_kept(
        &switch,
        1,
        &[
            "did not answer as real2 within 2.00 s",
            "of the previous configuration still accepts",
            "restored",
        ],
    );
    scene.finish(&[V1]);
}

#[test]
fn nginx_not_running_fails_the_switch_and_restores_the_include() {
    let mut scene = Scene::new("fault-nginx-down");
    scene.start_real2("v2");
    // Requests fail while nginx is down: this case says so.
    let load = scene.load.take().unwrap();
    drop(load.finish());
    scene.setup.nginx.quit();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    switch
        .assert_code(1)
        .assert_stderr_has("-s reload` failed")
        .assert_stderr_has("restored");
    assert_eq!(scene.setup.include(), scene.include);
    assert!(scene.setup.nginx.test_config());
    assert!(alive(scene.live_pid));
}

// ------------------------------------------------------------ the probe lies

/// What a fake probe endpoint does with each connection.
#[derive(Clone, Copy, Debug)]
enum Fake {
    Status500,
    Silent,
    Garbage,
    Huge,
    Answers(&'static str),
}

/// A loopback HTTP endpoint misbehaving on purpose, stopped on drop.
struct FakeProbe {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeProbe {
    fn start(mode: Fake) -> FakeProbe {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 2048];
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = conn.read(&mut buf);
                let _ = match mode {
                    Fake::Status500 => conn.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\nreal1",
                    ),
                    Fake::Silent => {
                        let until = Instant::now() + Duration::from_secs(5);
                        while Instant::now() < until && !flag.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Ok(())
                    }
                    Fake::Garbage => conn.write_all(b"\x00\xffSSH-2.0-not-http\r\n\r\n"),
                    Fake::Huge => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            10 << 20
                        );
                        let chunk = vec![b'a'; 64 * 1024];
                        conn.write_all(head.as_bytes())
                            .and_then(|()| (0..160).try_for_each(|_| conn.write_all(&chunk)))
                    }
                    Fake::Answers(body) => conn.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    ),
                };
            }
        });
        FakeProbe {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn whatever_the_probe_answers_the_live_app_is_never_stopped() {
    let scene = Scene::new("fault-probe");
    let cases: [(Fake, &str); 6] = [
        (Fake::Status500, "HTTP 500"),
        (Fake::Silent, "timed out"),
        (Fake::Garbage, "127.0.0.1"),
        (Fake::Huge, "4096"),
        (Fake::Answers("real3"), "not a configured profile"),
        (Fake::Answers("<script>real1"), "not a configured profile"),
    ];
    for (mode, cause) in cases {
        let fake = FakeProbe::start(mode);
        scene
            .setup
            .edit_config(|c| {
                c["probe_url"] = json!(format!("http://127.0.0.1:{}/profile", fake.port));
                c["probe_timeout_ms"] = json!(500);
            })
            .unwrap();
        // A failed probe defers to the include file: real1 stays live, and
        // stop goes to real2 (where nothing runs).
        // Run as an operator would (no deployment id), so every run detects afresh.
        let stop = scene.hook("stop", &[], None);
        scene.assert_kept(&stop, 0, &["probe through nginx failed", cause]);
        stop.assert_stderr_has("nothing listens on");
        drop(fake);
    }
    // A port nothing listens on: refused.
    let closed = free_port();
    scene
        .setup
        .edit_config(|c| c["probe_url"] = json!(format!("http://127.0.0.1:{closed}/profile")))
        .unwrap();
    let stop = scene.hook("stop", &[], None);
    scene.assert_kept(&stop, 0, &["probe through nginx failed", "refused"]);
    scene.finish(&[V1]);
}

#[test]
fn when_probe_and_include_disagree_nothing_is_stopped() {
    let scene = Scene::new("fault-disagree");
    scene.start_real2("v2");
    let real2 = scene.setup.launched_pid("real2").unwrap();
    let fake = FakeProbe::start(Fake::Answers("real2"));
    scene
        .setup
        .edit_config(|c| c["probe_url"] = json!(format!("http://127.0.0.1:{}/profile", fake.port)))
        .unwrap();
    for stage in ["stop", "start", "health", "switch"] {
        let run = scene.hook(stage, &[], Some("d-1"));
        scene.assert_kept(
            &run,
            1,
            &["answers as real2", "routes to real1", "refusing to guess"],
        );
        assert!(alive(real2), "{stage} stopped real2");
    }
    drop(fake);
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ processes in the way

#[test]
fn a_stranger_on_the_idle_port_is_refused_unless_forced() {
    let scene = Scene::new("fault-stranger");
    // Another nginx squats real2's port: not ours, not the configured command.
    let dir = TestDir::new("fault-stranger-squatter");
    let include = dir.join("squat.inc");
    fs::write(&include, "set $service_url http://127.0.0.1:1;\n").unwrap();
    let mut squatter = Nginx::start(&dir.join("nginx"), scene.setup.ports[1], &include).unwrap();
    let stop = scene.hook("stop", &[], Some("d-1"));
    let pid = squatter.pid().to_string();
    scene.assert_kept(&stop, 1, &["nonstop did not start", &pid, "--force"]);
    assert!(alive(squatter.pid()), "the stranger must not be signalled");

    let forced = scene.hook("stop", &["--profile", "real2", "--force"], None);
    scene.assert_kept(&forced, 0, &["--force", "port"]);
    assert!(
        tests::wait_until(Duration::from_secs(5), || !alive(squatter.pid())),
        "--force must stop it"
    );
    squatter.quit();
    scene.finish(&[V1]);
}

#[test]
fn an_app_that_ignores_sigterm_is_killed_after_the_timeout() {
    let scene = Scene::new("fault-ignore-term");
    scene.java_opts(&["-Ddemo.ignore.term=true"]);
    scene
        .setup
        .edit_config(|c| c["app"]["stop_timeout_secs"] = json!(2))
        .unwrap();
    scene.start_real2("v2");
    let stubborn = scene.setup.launched_pid("real2").unwrap();
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 0, &["SIGKILL", "port"]);
    assert!(!alive(stubborn));
    assert!(stop.elapsed >= Duration::from_secs(2), "{:?}", stop.elapsed);
    assert!(nonstop_common::sys::procs::listening(scene.setup.ports[1])
        .unwrap()
        .is_free());
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ two at once

#[test]
fn two_deployments_at_once_never_interleave() {
    let scene = Scene::new("fault-two-at-once");
    scene
        .setup
        .edit_config(|c| c["lock_timeout_secs"] = json!(120))
        .unwrap();
    scene.setup.drop_jar("v2").unwrap();
    let results: Vec<Vec<HookRun>> = std::thread::scope(|s| {
        let chains: Vec<_> = ["d-a", "d-b"]
            .into_iter()
            .map(|id| {
                let scene = &scene;
                s.spawn(move || {
                    ["stop", "start", "health"]
                        .into_iter()
                        .map(|stage| scene.hook(stage, &[], Some(id)))
                        .take_while(|r| r.status.success())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chains.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for chain in &results {
        assert_eq!(chain.len(), 3, "both deployments run, one after the other");
    }
    // The history: one deployment's three stages, then the other's.
    let history = fs::read_to_string(scene.state("history.jsonl")).unwrap();
    let ids: Vec<String> = history
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v["deployment_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 6, "{history}");
    assert!(
        ids[..3].iter().all(|i| *i == ids[0]) && ids[3..].iter().all(|i| *i == ids[3]),
        "stages interleaved: {ids:?}"
    );
    let waited = results.iter().flatten().any(|r| {
        r.stderr.contains("is in progress") || r.stderr.contains("waiting for the lock held by `")
    });
    assert!(
        waited,
        "the second deployment must say whom it waited for: {:#?}",
        results
            .iter()
            .flatten()
            .map(|r| &r.stderr)
            .collect::<Vec<_>>()
    );
    // v2 went to real2, then (second deployment) to real1.
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real1".into()));
    scene.finish(&[V1, "demo v2 real2", "demo v2 real1"]);
}

#[test]
fn a_lock_file_deleted_while_held_lets_no_second_stage_in() {
    let scene = Scene::new("fault-lock-deleted");
    scene.java_opts(&["-Ddemo.ignore.term=true"]);
    scene
        .setup
        .edit_config(|c| c["app"]["stop_timeout_secs"] = json!(8))
        .unwrap();
    scene.start_real2("v2");
    let stubborn = scene.setup.launched_pid("real2").unwrap();
    // The first stage holds the lock for as long as its app ignores SIGTERM.
    let mut first = scene
        .setup
        .bundle
        .spawn("stop", &[], Some("d-1"), |_| {})
        .unwrap();
    assert!(
        first.wait_for_stderr("sending SIGTERM", Duration::from_secs(30)),
        "{}",
        first.stderr_so_far()
    );
    fs::remove_file(scene.state("lock")).unwrap();
    scene
        .setup
        .edit_config(|c| c["lock_timeout_secs"] = json!(1))
        .unwrap();
    let second = scene.hook("stop", &[], Some("d-2"));
    scene.assert_kept(&second, 1, &["removed or replaced", "gave up waiting"]);
    assert!(
        !second.stderr.contains("sending SIGTERM"),
        "the second stage signalled the app too"
    );
    let first = first.finish(Duration::from_secs(60)).unwrap();
    scene.assert_kept(&first, 0, &["SIGKILL"]);
    assert!(!alive(stubborn));
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ killed half-way

#[test]
fn sigkill_at_each_step_then_running_again_converges() {
    let scene = Scene::with(
        "fault-sigkill",
        &SetupOptions {
            startup_delay_ms: 3000,
            ..SetupOptions::default()
        },
    );
    let setup = &scene.setup;
    // Something slow to stop on real2, so stop can be killed while it waits.
    let plain: Value = setup.config().unwrap();
    scene.java_opts(&["-Ddemo.ignore.term=true"]);
    setup
        .edit_config(|c| c["app"]["stop_timeout_secs"] = json!(2))
        .unwrap();
    scene.start_real2("v1");
    setup
        .edit_config(|c| c["app"]["command"] = plain["app"]["command"].clone())
        .unwrap();
    setup.drop_jar("v2").unwrap();
    let kill_at = |stage: &str, id: &str, line: &str| {
        let mut run = setup.bundle.spawn(stage, &[], Some(id), |_| {}).unwrap();
        assert!(
            run.wait_for_stderr(line, Duration::from_secs(30)),
            "{stage} never printed {line:?}: {}",
            run.stderr_so_far()
        );
        run.signal(Signal::SIGKILL);
        let killed = run.finish(Duration::from_secs(10)).unwrap();
        assert_eq!(killed.status.code(), None, "{stage} must have been killed");
    };

    // stop, killed while it waits for the app to exit; run again.
    kill_at("stop", "d-1", "sending SIGTERM");
    let again = scene.hook("stop", &[], Some("d-1"));
    again.assert_ok().assert_stderr_has("SIGKILL");
    // start, killed once it launched the app; run again: it finds its own app.
    kill_at("start", "d-1", "started real2");
    let again = scene.hook("start", &[], Some("d-1"));
    again.assert_ok().assert_stderr_has("not starting it twice");
    // health, killed while it waits; run again: the dead holder is reported.
    kill_at("health", "d-1", "checking");
    let again = scene.hook("health", &[], Some("d-1"));
    again
        .assert_ok()
        .assert_stderr_has("taking over the lock from `health`");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // The next deployment: its switch is killed after it wrote the include
    // and while `nginx -t` runs (slowed down), before any reload.
    let before = setup.include();
    let nginx_test = setup.nginx.command(&["-t"]);
    setup
        .edit_config(|c| {
            let mut slow = vec![
                json!("sh"),
                json!("-c"),
                json!("sleep 1 && exec \"$0\" \"$@\""),
            ];
            slow.extend(nginx_test.iter().map(|a| json!(a)));
            c["nginx"]["test"] = json!(slow);
        })
        .unwrap();
    setup.drop_jar("v3").unwrap();
    scene.hook("stop", &[], Some("d-2")).assert_ok();
    scene.hook("start", &[], Some("d-2")).assert_ok();
    kill_at("health", "d-2", "wrote ");
    assert_ne!(setup.include(), before, "the include was written");
    // The deployment after it finds the half-done switch and undoes it, then
    // goes on as if it had never begun: real2 is still live.
    let stop = scene.hook("stop", &[], Some("d-3"));
    stop.assert_ok()
        .assert_stderr_has("a switch to real1")
        .assert_stderr_has("was interrupted")
        .assert_stderr_has("restored the include file")
        .assert_stderr_has("deployment d-2 is abandoned");
    assert_eq!(setup.include(), before);
    assert!(setup.nginx.test_config());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    scene.hook("start", &[], Some("d-3")).assert_ok();
    scene.hook("health", &[], Some("d-3")).assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v3 real1".into()));
    scene.finish(&[V1, "demo v2 real2", "demo v3 real1"]);
}

#[test]
fn a_lock_and_a_plan_from_before_a_reboot_are_taken_over_with_a_message() {
    let scene = Scene::new("fault-reboot");
    let state = scene.setup.state_dir();
    fs::write(
        state.join("lock"),
        r#"{"pid":999999,"stage":"switch","deployment_id":"d-old","since_unix_ms":1,"boot_id":"another-boot"}"#,
    )
    .unwrap();
    fs::write(
        state.join("plan.json"),
        r#"{"deployment_id":"d-old","live":null,"idle":{"name":"real1","port":1},"created_unix_ms":1,
            "expires_unix_ms":99999999999999,"boot_id":"another-boot","last_stage":"start","finished":false}"#,
    )
    .unwrap();
    let stop = scene.hook("stop", &[], Some("d-new"));
    scene.assert_kept(
        &stop,
        0,
        &[
            "taking over the lock from `switch` (pid 999999) of deployment d-old",
            "rebooted",
            "deployment d-old never finished before the machine rebooted",
        ],
    );
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ signals

#[test]
fn sigterm_and_sigint_end_a_stage_cleanly_with_128_plus_the_signal() {
    let scene = Scene::with(
        "fault-signals",
        &SetupOptions {
            startup_delay_ms: 4000,
            ..SetupOptions::default()
        },
    );
    let setup = &scene.setup;
    let interrupt = |stage: &str, args: &[&str], id: &str, line: &str, sig: Signal| {
        let mut run = setup.bundle.spawn(stage, args, Some(id), |_| {}).unwrap();
        assert!(
            run.wait_for_stderr(line, Duration::from_secs(30)),
            "{stage} never printed {line:?}: {}",
            run.stderr_so_far()
        );
        run.signal(sig);
        run.finish(Duration::from_secs(20)).unwrap()
    };
    let assert_clean = |run: &HookRun| {
        assert_eq!(
            fs::read(setup.state_dir().join("lock")).unwrap(),
            b"",
            "the lock must be released with no holder left"
        );
        let stray: Vec<_> = [setup.state_dir(), setup.nginx.prefix.join("conf.d")]
            .iter()
            .flat_map(|d| fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp") || n == "switching.json")
            .collect();
        assert!(stray.is_empty(), "{}: left {stray:?}", run.stage);
    };

    // health, waiting for an app that takes 4 s to come up: SIGTERM.
    setup.drop_jar("v2").unwrap();
    scene.hook("stop", &[], Some("d-1")).assert_ok();
    scene.hook("start", &[], Some("d-1")).assert_ok();
    let health = interrupt("health", &[], "d-1", "checking", Signal::SIGTERM);
    scene.assert_kept(&health, 143, &["interrupted by SIGTERM", "not switched"]);
    assert_clean(&health);

    // switch, after the reload while it waits for a confirmation that
    // cannot come (the reload command does nothing): SIGINT undoes it.
    scene
        .hook("health", &["--profile", "real2", "--no-switch"], None)
        .assert_ok();
    setup
        .edit_config(|c| c["nginx"]["reload"] = json!(["true"]))
        .unwrap();
    let switch = interrupt(
        "switch",
        &["--to", "real2"],
        "d-2",
        "waiting for nginx",
        Signal::SIGINT,
    );
    scene.assert_kept(
        &switch,
        130,
        &["interrupted by SIGINT", "undone", "restored"],
    );
    assert_clean(&switch);

    // stop, waiting for an app that ignores SIGTERM: SIGTERM to stop itself.
    let real2 = setup.launched_pid("real2").unwrap();
    scene.java_opts(&["-Ddemo.ignore.term=true"]);
    scene
        .hook("stop", &["--profile", "real2"], None)
        .assert_ok();
    assert!(!alive(real2));
    scene
        .hook("start", &["--profile", "real2"], None)
        .assert_ok();
    scene
        .hook("health", &["--profile", "real2", "--no-switch"], None)
        .assert_ok();
    let stubborn = setup.launched_pid("real2").unwrap();
    let stop = interrupt("stop", &[], "d-3", "sending SIGTERM", Signal::SIGTERM);
    scene.assert_kept(&stop, 143, &["interrupted by SIGTERM", "run `stop` again"]);
    assert_clean(&stop);
    assert!(alive(stubborn), "it ignores SIGTERM and was not killed");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(stubborn), Signal::SIGKILL);
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ state and permissions

#[test]
fn corrupt_state_files_stop_the_stage_before_it_changes_anything() {
    let scene = Scene::new("fault-corrupt-state");
    scene.setup.drop_jar("v2").unwrap();
    scene.hook("stop", &[], Some("d-1")).assert_ok();
    let plan = scene.state("plan.json");
    let text = fs::read_to_string(&plan).unwrap();
    fs::write(&plan, &text[..text.len() / 2]).unwrap();
    let start = scene.hook("start", &[], Some("d-1"));
    scene.assert_kept(&start, 1, &["plan.json is corrupt", "nothing was changed"]);
    assert!(
        scene.setup.launched_pid("real2").is_none(),
        "nothing was started"
    );
    // The corrupt file was moved aside: the next run goes on.
    scene.hook("start", &[], Some("d-1")).assert_ok();

    // The live app's record, garbled: stop will not guess.
    let record = scene.state("launched-real1.json");
    fs::write(&record, "{\"profile\": \"real1\", \"pid\": \"x").unwrap();
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 1, &["launched-real1.json is corrupt"]);
    assert!(alive(scene.setup.launched_pid("real2").unwrap()));
    scene.finish(&[V1]);
}

/// Runs a stage as an unprivileged user when the tests run as root (root
/// writes anywhere), else as ourselves.
fn as_nobody(cmd: &mut std::process::Command) {
    use std::os::unix::fs::MetadataExt;
    let root = fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        cmd.uid(65534).gid(65534);
    }
}

fn make_read_only(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).unwrap();
}

#[test]
fn an_unwritable_state_dir_or_include_dir_fails_before_anything_changes() {
    let scene = Scene::new("fault-permissions");
    scene.start_real2("v2");
    let real2 = scene.setup.launched_pid("real2").unwrap();
    let state = scene.setup.state_dir();
    let conf_d = scene.setup.nginx.prefix.join("conf.d");
    make_read_only(&state);
    make_read_only(&conf_d);
    let run_as = |stage: &str| {
        scene
            .setup
            .bundle
            .spawn(stage, &[], Some("d-1"), as_nobody)
            .unwrap()
            .finish(Duration::from_secs(30))
            .unwrap()
    };
    let stop = run_as("stop");
    scene.assert_kept(&stop, 1, &["state directory", "not writable"]);
    assert!(alive(real2));

    // The state dir is writable (it is nobody's own: one others could write
    // is refused, see below); the include's directory is not.
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    for entry in fs::read_dir(&state).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(65534), Some(65534)).unwrap();
    }
    let stop = run_as("stop");
    scene.assert_kept(
        &stop,
        1,
        &[
            "include file's directory",
            "not writable",
            "nothing was changed",
        ],
    );
    assert!(alive(real2), "stop must fail before it stops the idle app");
    fs::set_permissions(&conf_d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ planted links

/// A file outside every directory nonstop writes, which a planted link
/// points at: it must never change.
fn victim(scene: &Scene) -> std::path::PathBuf {
    let victim = scene.setup.dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    victim
}

fn plant(link: &Path, victim: &Path) {
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(victim, link).unwrap();
}

#[track_caller]
fn assert_untouched(victim: &Path, links: &[&Path]) {
    assert_eq!(
        fs::read_to_string(victim).unwrap(),
        "precious\n",
        "a write went through a planted link to {}",
        victim.display()
    );
    for link in links {
        assert_eq!(
            fs::read_link(link).ok().as_deref(),
            Some(victim),
            "{} is no longer the planted link",
            link.display()
        );
    }
}

/// Runs `stage` as pid 1 of a new pid namespace (`unshare`, as root), so its
/// pid, and with it every temp name derived from the pid, is known beforehand.
fn as_pid_1(scene: &Scene, stage: &str, id: &str) -> HookRun {
    let name = format!("{stage}-as-pid-1");
    let wrapper = scene.setup.bundle.bin(&name);
    fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec unshare --pid --fork --kill-child -- \"$(dirname \"$0\")/{stage}\" \"$@\"\n"),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    scene
        .setup
        .bundle
        .spawn(&name, &[], Some(id), |_| {})
        .unwrap()
        .finish(Duration::from_secs(60))
        .unwrap()
}

#[test]
fn links_planted_at_the_temp_names_a_stage_would_use_are_never_written_through() {
    let scene = Scene::new("fault-planted-temp");
    let victim = victim(&scene);
    let conf_d = scene.setup.nginx.prefix.join("conf.d");
    // The names a stage with pid 1 used: its write probes in the state dir
    // and the include's directory, and the temp file of plan.json.
    let links = [
        scene.state(".write-test.1"),
        scene.state(".plan.json.nonstop-1.tmp"),
        conf_d.join(".nonstop-write-test.1.tmp"),
    ];
    for link in &links {
        plant(link, &victim);
    }
    let stop = as_pid_1(&scene, "stop", "d-1");
    scene.assert_kept(&stop, 0, &[]);
    let links: Vec<&Path> = links.iter().map(|l| l.as_path()).collect();
    assert_untouched(&victim, &links);
    let plan = fs::symlink_metadata(scene.state("plan.json")).unwrap();
    assert!(plan.is_file(), "plan.json must be a file of its own");
    scene.finish(&[V1]);
}

#[test]
fn a_link_planted_at_the_lock_is_refused_naming_it() {
    let scene = Scene::new("fault-planted-lock");
    let victim = victim(&scene);
    let lock = scene.state("lock");
    plant(&lock, &victim);
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 1, &[&lock.display().to_string(), "is a symlink"]);
    assert_untouched(&victim, &[&lock]);
    scene.finish(&[V1]);
}

#[test]
fn a_link_planted_at_the_history_is_written_around() {
    let scene = Scene::new("fault-planted-history");
    let victim = victim(&scene);
    let history = scene.state("history.jsonl");
    plant(&history, &victim);
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 0, &[&history.display().to_string(), "is a symlink"]);
    assert_untouched(&victim, &[&history]);
    scene.finish(&[V1]);
}

#[test]
fn a_link_planted_at_the_app_log_is_refused_and_the_log_is_rotated_at_each_start() {
    let scene = Scene::new("fault-planted-log");
    let victim = victim(&scene);
    scene.setup.drop_jar("v2").unwrap();
    let log = scene.setup.app_dir.join("logs/real2.log");
    fs::create_dir_all(log.parent().unwrap()).unwrap();
    plant(&log, &victim);
    // Rotated (the default) or appended to (`app.log_keep: 0`), never through the link.
    for keep in [None, Some(0)] {
        if let Some(keep) = keep {
            scene
                .setup
                .edit_config(|c| c["app"]["log_keep"] = json!(keep))
                .unwrap();
        }
        let start = scene.hook("start", &[], Some("d-1"));
        scene.assert_kept(&start, 1, &[&log.display().to_string(), "is a symlink"]);
        assert!(
            scene.setup.launched_pid("real2").is_none(),
            "nothing may be started"
        );
        assert_untouched(&victim, &[&log]);
    }

    // Without the link: the previous run's log becomes real2.log.1.
    scene
        .setup
        .edit_config(|c| c["app"]["log_keep"] = json!(2))
        .unwrap();
    fs::remove_file(&log).unwrap();
    fs::write(&log, "the previous run\n").unwrap();
    scene.hook("start", &[], Some("d-2")).assert_ok();
    let rotated = log.with_file_name("real2.log.1");
    assert_eq!(fs::read_to_string(&rotated).unwrap(), "the previous run\n");
    let now = fs::read_to_string(&log).unwrap();
    assert!(now.starts_with("--- nonstop start: real2"), "{now}");
    scene.finish(&[V1]);
}

#[test]
fn a_state_or_app_dir_others_can_write_is_refused_with_the_fix() {
    let scene = Scene::new("fault-strict-dirs");
    scene.start_real2("v2");
    let real2 = scene.setup.launched_pid("real2").unwrap();
    let state = scene.setup.state_dir();
    let app = scene.setup.app_dir.clone();
    let mode =
        |dir: &Path, m: u32| fs::set_permissions(dir, fs::Permissions::from_mode(m)).unwrap();

    mode(&state, 0o777);
    let stop = scene.hook("stop", &[], Some("d-1"));
    let fix = format!("chmod go-w {}", state.display());
    scene.assert_kept(&stop, 1, &["state directory", &fix, "nothing was changed"]);
    assert!(alive(real2), "stop must refuse before it stops anything");
    mode(&state, 0o755);

    // A parent of it, writable by its group.
    mode(&app, 0o775);
    let stop = scene.hook("stop", &[], Some("d-1"));
    let fix = format!("chmod go-w {}", app.display());
    scene.assert_kept(&stop, 1, &[&fix, "writable by its group"]);
    assert!(alive(real2));
    mode(&app, 0o755);

    // Owned by another user than the one running the stage (and not root).
    // The stage runs as root here: the advice is to run it as the owner,
    // never to take the directory from it (`chown root` of a home).
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 1, &["uid 65534", "run nonstop as nobody"]);
    assert!(!stop.stderr.contains("chown"), "{}", stop.stderr);
    assert!(alive(real2));
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();

    scene.hook("stop", &[], Some("d-1")).assert_ok();
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ config

#[test]
fn bad_configs_exit_2_naming_the_key_and_touch_nothing() {
    let dir = TestDir::new("fault-config");
    let app = dir.join("app");
    let base = json!({"app": {"dir": app, "command": ["java", "-jar", "{artifact}"]}});
    let cases: Vec<(&str, Value)> = vec![
        (
            "app.comand",
            json!({"app": {"dir": app, "comand": ["java"]}}),
        ),
        (
            "nginx.tmplate",
            json!({"app": {"dir": app}, "nginx": {"tmplate": "x"}}),
        ),
        (
            "profiles[1].port",
            json!({"profiles": [{"name": "a", "port": 9001}, {"name": "b", "port": 9001}], "app": base["app"]}),
        ),
        (
            "profiles[1].name",
            json!({"profiles": [{"name": "a", "port": 9001}, {"name": "a", "port": 9002}], "app": base["app"]}),
        ),
        (
            "nginx.template",
            json!({"app": base["app"], "nginx": {"template": "set $u http://127.0.0.1:8081;"}}),
        ),
        (
            "nginx.template",
            json!({"app": base["app"], "nginx": {"template": "proxy_pass http://127.0.0.1:{prot};"}}),
        ),
        ("app.dir", json!({"app": {"command": ["java"]}})),
        ("app.dir", json!({"app": {"dir": "relative/app"}})),
        ("app.command", json!({"app": {"dir": app, "command": []}})),
        ("app.command", json!({"app": {"dir": app, "command": [""]}})),
        // Over their upper bounds (the message also names the bound).
        (
            "health.timeout_secs",
            json!({"app": base["app"], "health": {"timeout_secs": 3601}}),
        ),
        (
            "health.interval_ms",
            json!({"app": base["app"], "health": {"interval_ms": 600_000}}),
        ),
    ];
    for (key, config) in cases {
        let bundle = tests::Bundle::new(&dir.join("bundle"), &config).unwrap();
        for stage in tests::STAGES {
            let run = bundle
                .hook(stage, &[], Some("d-1"), Duration::from_secs(10))
                .unwrap();
            run.assert_code(2).assert_stderr_has(&format!("`{key}`"));
        }
        assert!(
            !app.exists(),
            "{key}: a config error must not create anything"
        );
    }
}

#[test]
fn a_probe_url_at_a_profiles_own_port_is_a_config_error() {
    // With the probe aimed at the app itself, "confirmed through nginx"
    // would confirm nothing, and a wrong include path would go unnoticed.
    let scene = Scene::new("fault-probe-own-port");
    let [p1, p2] = scene.setup.ports;
    for url in [
        format!("http://127.0.0.1:{p1}/profile"),
        format!("http://localhost:{p2}/profile"),
    ] {
        scene
            .setup
            .edit_config(|c| c["probe_url"] = json!(url))
            .unwrap();
        for stage in tests::STAGES {
            let run = scene.hook(stage, &[], Some("d-1"));
            scene.assert_kept(&run, 2, &["`probe_url`", "own port"]);
        }
    }
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ inputs refused before anything stops

/// Runs one of `nginx`'s commands (`-s reload`) against the test's nginx.
fn nginx_signal(setup: &Setup, args: &[&str]) {
    let argv = setup.nginx.command(args);
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{argv:?}: {status}");
}

/// A POST of `len` bytes through nginx, on a new connection: the status
/// line's code (nginx answers 413 as soon as it reads a Content-Length over
/// its `client_max_body_size`).
fn post_status(port: u16, len: usize) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    // nginx may answer (and stop reading) before the body is all sent.
    let _ = s.write_all(&vec![b'x'; len]);
    let mut head = [0u8; 32];
    let n = s.read(&mut head).ok()?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn an_include_holding_more_than_the_route_is_refused_before_anything_stops() {
    let mut scene = Scene::new("fault-include-extra");
    scene.start_real2("v2");
    let idle_pid = scene.setup.launched_pid("real2").unwrap();
    // The operator keeps an upload limit in the include itself.
    let mut text = scene.setup.include();
    text.extend_from_slice(b"client_max_body_size 20m;\n");
    fs::write(&scene.setup.nginx.include, &text).unwrap();
    nginx_signal(&scene.setup, &["-s", "reload"]);
    let port = scene.setup.nginx.port;
    let two_mb = 2 << 20;
    assert!(
        tests::wait_until(Duration::from_secs(10), || post_status(port, two_mb)
            .is_some_and(|s| s != 413)),
        "nginx never took the upload limit"
    );
    scene.include = scene.setup.include();
    scene.setup.drop_jar("v3").unwrap();

    // A deployment stops nothing: the switch would rewrite the file whole.
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(
        &stop,
        2,
        &[
            "line 2: `client_max_body_size 20m;`",
            "Move that line beside the `include`",
            "nothing was changed",
        ],
    );
    assert!(alive(idle_pid), "stop stopped the idle app");
    // Nor does an operator's switch drop it.
    let switch = scene.hook("switch", &["--to", "real2"], None);
    scene.assert_kept(&switch, 2, &["line 2: `client_max_body_size 20m;`"]);
    // Uploads over nginx's default 1 MB still pass.
    assert_ne!(post_status(port, two_mb), Some(413));

    // The include as the book writes it, comments and all: a deployment goes through.
    fs::write(
        &scene.setup.nginx.include,
        format!(
            "# written by hand\nset $service_url http://127.0.0.1:{};  # real1\n",
            scene.setup.ports[0]
        ),
    )
    .unwrap();
    for stage in ["stop", "start", "health"] {
        scene.hook(stage, &[], Some("d-2")).assert_ok();
    }
    assert_eq!(
        scene.setup.get("/").unwrap(),
        (200, "demo v3 real2".to_string())
    );
    scene.finish(&[V1, "demo v3 real2"]);
}

#[test]
fn an_include_name_too_long_for_its_temp_file_is_a_config_error_before_anything_stops() {
    let scene = Scene::new("fault-include-long");
    scene.start_real2("v2");
    let idle_pid = scene.setup.launched_pid("real2").unwrap();
    // 230 bytes: a name nginx and the file system take, but its temp file
    // (30 bytes longer) is over NAME_MAX.
    let long = scene
        .setup
        .nginx
        .include
        .with_file_name(format!("service-url-{}.inc", "x".repeat(214)));
    fs::write(&long, scene.setup.include()).unwrap();
    let conf = fs::read_to_string(&scene.setup.nginx.conf).unwrap();
    let old = format!("include {};", scene.setup.nginx.include.display());
    assert!(conf.contains(&old), "{conf}");
    fs::write(
        &scene.setup.nginx.conf,
        conf.replace(&old, &format!("include {};", long.display())),
    )
    .unwrap();
    assert!(scene.setup.nginx.test_config(), "nginx takes the long name");
    nginx_signal(&scene.setup, &["-s", "reload"]);
    scene
        .setup
        .edit_config(|c| c["nginx"]["include"] = json!(long))
        .unwrap();
    let before = fs::read(&long).unwrap();
    scene.setup.drop_jar("v3").unwrap();
    for (stage, args) in [("stop", &[][..]), ("profile", &["--check"][..])] {
        let run = scene.hook(stage, args, Some("d-1"));
        scene.assert_kept(&run, 2, &["`nginx.include`", "at most 225 bytes"]);
    }
    assert!(alive(idle_pid), "stop stopped the idle app");
    assert_eq!(fs::read(&long).unwrap(), before);
    scene.finish(&[V1]);
}

#[test]
fn a_symlinked_build_is_deployed_and_without_a_build_stop_stops_nothing() {
    let scene = Scene::new("fault-artifact");
    scene.start_real2("v2");
    let idle_pid = scene.setup.launched_pid("real2").unwrap();
    // No build matches: the idle app stays, since start would start nothing.
    scene
        .setup
        .edit_config(|c| c["app"]["artifact"] = json!("zip/*.war"))
        .unwrap();
    let stop = scene.hook("stop", &[], Some("d-1"));
    scene.assert_kept(&stop, 1, &["no file in", "*.war", "nothing is stopped"]);
    assert!(alive(idle_pid), "stop stopped the idle app");
    scene
        .setup
        .edit_config(|c| c["app"]["artifact"] = json!("zip/*.jar"))
        .unwrap();

    // The new build arrives as a symlink (the agent copies a link in the
    // bundle as a link), the newest: followed, in a directory only we write.
    let builds = scene.setup.dir.join("builds");
    fs::create_dir_all(&builds).unwrap();
    scene
        .setup
        .jars
        .jar("v3", &builds.join("demo-v3.jar"))
        .unwrap();
    let zip = scene.setup.app_dir.join("zip");
    let link = zip.join("demo-latest.jar");
    std::os::unix::fs::symlink("../../builds/demo-v3.jar", &link).unwrap();
    // In a directory its group may write, refused by name, before stop.
    fs::set_permissions(&zip, fs::Permissions::from_mode(0o775)).unwrap();
    let stop = scene.hook("stop", &[], Some("d-2"));
    scene.assert_kept(
        &stop,
        1,
        &[
            &format!("{} is a symlink", link.display()),
            &format!("chmod go-w {}", zip.display()),
        ],
    );
    assert!(alive(idle_pid), "stop stopped the idle app");
    fs::set_permissions(&zip, fs::Permissions::from_mode(0o755)).unwrap();
    for stage in ["stop", "start", "health"] {
        scene.hook(stage, &[], Some("d-3")).assert_ok();
    }
    assert_eq!(
        scene.setup.get("/").unwrap(),
        (200, "demo v3 real2".to_string())
    );
    scene.finish(&[V1, "demo v3 real2"]);
}

#[test]
fn a_pid_file_of_another_nginx_is_refused_at_the_switch_before_anything_is_written() {
    let scene = Scene::new("fault-pid-file");
    scene.start_real2("v2");
    // Another nginx on this host, with its own master and pid file.
    let other_prefix = scene.setup.dir.join("other-nginx");
    fs::create_dir_all(other_prefix.join("conf.d")).unwrap();
    let other_include = other_prefix.join("conf.d/service-url.inc");
    fs::write(&other_include, "set $service_url http://127.0.0.1:9;\n").unwrap();
    let other = Nginx::start(&other_prefix, free_port(), &other_include).unwrap();
    let other_pid_file = other.prefix.join("nginx.pid");
    scene
        .setup
        .edit_config(|c| {
            c["nginx"]["pid_file"] = json!(other_pid_file);
            c["nginx"]["confirm_timeout_secs"] = json!(3);
        })
        .unwrap();
    let ours = scene.setup.nginx.prefix.join("nginx.pid");
    let switch = scene.hook("switch", &["--to", "real2"], None);
    scene.assert_kept(
        &switch,
        2,
        &[
            &format!("nginx.pid_file is {}", other_pid_file.display()),
            &format!("writes its pid to {}", ours.display()),
            &format!("Set \"pid_file\": \"{}\"", ours.display()),
        ],
    );
    switch.assert_stderr_lacks("wrote");

    // Right pid file, but `nginx -T` not allowed (sudo allowing `-t` only):
    // the switch goes on, saying it could not check.
    let nginx_t = scene.setup.nginx.command(&[]);
    let test = script(
        &scene,
        "nginx-t-only",
        "for a; do [ \"$a\" = -T ] && { echo 'sudo: a password is required' >&2; exit 1; }; done\nexec \"$@\"",
    );
    scene
        .setup
        .edit_config(|c| {
            c["nginx"]["pid_file"] = json!(ours);
            c["nginx"]["test"] = argv_json(&[test.to_str().unwrap()], &nginx_t);
            c["nginx"]["test"].as_array_mut().unwrap().push(json!("-t"));
        })
        .unwrap();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    switch
        .assert_ok()
        .assert_stderr_has("note: cannot check nginx.pid_file")
        .assert_stderr_has("a password is required");
    assert_eq!(
        scene.setup.get("/").unwrap(),
        (200, "demo v2 real2".to_string())
    );
    drop(other);
    scene.finish(&[V1, "demo v2 real2"]);
}

// ------------------------------------------------------------ rollback and dry run

#[test]
fn rollback_goes_back_only_to_an_app_that_still_answers() {
    let scene = Scene::new("fault-rollback");
    let setup = &scene.setup;
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        scene.hook(stage, &[], Some("d-1")).assert_ok();
    }
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    let forward = setup.include();

    let back = scene.hook("switch", &["--rollback"], None);
    back.assert_ok()
        .assert_stderr_has("the last switch went from real1 to real2");
    assert_eq!(setup.get("/").unwrap(), (200, V1.into()));
    assert_eq!(setup.include(), scene.include);

    // Forward again, then take the old app away: rollback must refuse.
    scene.hook("switch", &["--to", "real2"], None).assert_ok();
    scene
        .hook("stop", &["--profile", "real1"], None)
        .assert_ok();
    let refused = scene.hook("switch", &["--rollback"], None);
    refused
        .assert_code(1)
        .assert_stderr_has("refusing to roll back to real1")
        .assert_stderr_has("nothing was changed");
    assert_eq!(setup.include(), forward);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    scene.finish(&[V1, "demo v2 real2"]);
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn dry_run_says_what_each_stage_would_do_and_changes_nothing() {
    let scene = Scene::new("fault-dry-run");
    scene.start_real2("v2");
    let real2 = scene.setup.launched_pid("real2").unwrap();
    scene.setup.drop_jar("v3").unwrap();
    let state = snapshot(&scene.setup.state_dir());
    let workers = scene.workers();
    let include_line = String::from_utf8_lossy(&scene.include).replace(
        &scene.setup.ports[0].to_string(),
        &scene.setup.ports[1].to_string(),
    );
    let expect: [(&str, Vec<String>); 5] = [
        ("profile", vec![]),
        (
            "stop",
            vec![
                format!("would send SIGTERM to pid {real2}"),
                "then SIGKILL".into(),
            ],
        ),
        ("start", vec!["port".into(), "already taken".into()]),
        (
            "health",
            vec![
                "answers \"real2\" now".into(),
                format!(
                    "would write the include file {}: {}",
                    scene.setup.nginx.include.display(),
                    include_line.trim()
                ),
                "would run `".into(),
                "-s reload`".into(),
            ],
        ),
        (
            "switch",
            vec![
                format!(
                    "would write the include file {}",
                    scene.setup.nginx.include.display()
                ),
                "-t`".into(),
            ],
        ),
    ];
    for (stage, words) in expect {
        let run = scene.hook(stage, &["--dry-run"], Some("d-dry"));
        // start refuses (real2's port is taken) exactly as a real run would.
        let code = if stage == "start" { 1 } else { 0 };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        scene.assert_kept(&run, code, &words);
        assert!(alive(real2), "{stage} --dry-run stopped real2");
        assert_eq!(
            snapshot(&scene.setup.state_dir()),
            state,
            "{stage} --dry-run wrote state"
        );
        assert_eq!(scene.workers(), workers, "{stage} --dry-run reloaded nginx");
    }
    // With real2 stopped, start's dry run names the copy and the command.
    scene
        .hook("stop", &["--profile", "real2"], None)
        .assert_ok();
    let start = scene.hook("start", &["--dry-run"], Some("d-dry"));
    scene.assert_kept(&start, 0, &["would copy", "demo-v3.jar", "would run `java"]);
    assert!(scene.setup.launched_pid("real2").is_none_or(|p| !alive(p)));
    assert!(!scene.setup.app_dir.join("real2/demo-v3.jar").exists());
    scene.finish(&[V1]);
}

// ------------------------------------------------------------ output gone

/// A pipe whose reader has already gone: what a hook's stderr becomes when
/// the agent or the terminal that ran it went away, or a `| head` exited.
fn gone_pipe() -> std::process::Stdio {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(read);
    write.into()
}

/// Which profile's port the include names.
fn include_names(setup: &Setup) -> Option<&'static str> {
    let text = String::from_utf8_lossy(&setup.include()).into_owned();
    let names = |port: u16| text.contains(&format!("127.0.0.1:{port};"));
    match (names(setup.ports[0]), names(setup.ports[1])) {
        (true, false) => Some("real1"),
        (false, true) => Some("real2"),
        _ => None,
    }
}

#[test]
fn a_stage_whose_stderr_is_gone_still_does_its_work_and_never_exits_101() {
    let scene = Scene::new("fault-gone-stderr");
    let setup = &scene.setup;
    let spawn = |stage: &str, args: &[&str], id: Option<&str>, stdout_gone: bool| {
        setup
            .bundle
            .spawn(stage, args, id, |c| {
                c.stderr(gone_pipe());
                if stdout_gone {
                    c.stdout(gone_pipe());
                }
            })
            .unwrap()
    };
    let run = |stage: &str, args: &[&str], id: Option<&str>, stdout_gone: bool| {
        spawn(stage, args, id, stdout_gone)
            .finish(Duration::from_secs(90))
            .unwrap()
    };
    // Its stderr is gone: what the stage said is only in the history.
    let last_said = || {
        fs::read_to_string(setup.state_dir().join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    };
    let served_and_named = |body: &str, profile: &str| {
        assert_eq!(setup.get("/").unwrap(), (200, body.to_string()));
        assert_eq!(include_names(setup), Some(profile), "the include disagrees");
        assert!(setup.nginx.test_config(), "nginx -t fails");
    };

    // profile: the answer cannot be written is a failure, exit 1, no panic;
    // with only stderr gone, the answer is there.
    let profile = run("profile", &[], None, true);
    assert_eq!(profile.code(), 1, "profile with stdout gone");
    let profile = run("profile", &[], None, false);
    assert_eq!(profile.code(), 0, "profile with stderr gone");
    assert_eq!(profile.stdout.trim(), "real2");

    // A whole deployment, every hook's stderr gone: health switches.
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        let hook = run(stage, &[], Some("d-2"), false);
        assert_eq!(hook.code(), 0, "{stage}: {}", last_said());
    }
    served_and_named("demo v2 real2", "real2");

    // The terminal hangs up right after the include was written: SIGHUP,
    // with stderr gone too. The reload does nothing here, so the switch
    // can never be confirmed: it is undone and exits 128 + SIGHUP.
    let include = setup.include();
    setup
        .edit_config(|c| c["nginx"]["reload"] = json!(["true"]))
        .unwrap();
    let switch = spawn("switch", &["--to", "real1"], None, false);
    assert!(
        tests::wait_until(Duration::from_secs(30), || setup.include() != include),
        "switch never wrote the include: {}",
        last_said()
    );
    switch.signal(Signal::SIGHUP);
    let switch = switch.finish(Duration::from_secs(30)).unwrap();
    assert_eq!(switch.code(), 129, "switch on SIGHUP: {}", last_said());
    assert_eq!(setup.include(), include, "the include was not restored");
    served_and_named("demo v2 real2", "real2");

    // And the operator's own switch back, stderr still gone, goes through.
    setup
        .edit_config(|c| c["nginx"]["reload"] = json!(setup.nginx.command(&["-s", "reload"])))
        .unwrap();
    let switch = run("switch", &["--to", "real1"], None, false);
    assert_eq!(switch.code(), 0, "switch: {}", last_said());
    served_and_named(V1, "real1");
    scene.finish(&[V1, "demo v2 real2"]);
}

// ------------------------------------------------------------ the switch journal

/// Writes an executable shell script into the test dir, to be run as an
/// argv (`[script, args...]`) in place of one of nginx's commands.
fn script(scene: &Scene, name: &str, body: &str) -> std::path::PathBuf {
    let path = scene.setup.dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `argv` as the JSON of a config's command, after `first` words.
fn argv_json(first: &[&str], argv: &[String]) -> Value {
    let mut all: Vec<Value> = first.iter().map(|a| json!(a)).collect();
    all.extend(argv.iter().map(|a| json!(a)));
    json!(all)
}

/// `profile --json`'s document.
fn profile_json(scene: &Scene) -> Value {
    let run = scene.hook("profile", &["--json"], None);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn a_switch_killed_between_restore_and_reload_back_is_reloaded_back_by_the_next_stage() {
    let scene = Scene::new("fault-restore-kill");
    scene.start_real2("v2");
    let marks = scene.setup.dir.join("marks");
    fs::create_dir_all(&marks).unwrap();
    // The reload: the real one, then it holds until the test has sent SIGTERM,
    // so the switch undoes a reload that took effect.
    let reload = script(
        &scene,
        "reload.sh",
        "m=$1; shift; \"$@\" || exit $?; touch \"$m/reloaded\"\n\
         i=0; while [ -e \"$m/hold-reload\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done",
    );
    // The test: the real one, except after the reload, when it holds until
    // the switch has been killed: killed after it restored the include and
    // before it reloaded nginx back.
    let test = script(
        &scene,
        "test.sh",
        "m=$1; shift; if [ -e \"$m/reloaded\" ]; then touch \"$m/testing-back\";\n\
         i=0; while [ -e \"$m/hold-test\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; fi\n\
         exec \"$@\"",
    );
    let m = marks.display().to_string();
    let real_reload = scene.setup.nginx.command(&["-s", "reload"]);
    let real_test = scene.setup.nginx.command(&["-t"]);
    scene
        .setup
        .edit_config(|c| {
            c["nginx"]["reload"] = argv_json(&[&reload.display().to_string(), &m], &real_reload);
            c["nginx"]["test"] = argv_json(&[&test.display().to_string(), &m], &real_test);
            // Without nginx's workers to watch, the confirmation must see the
            // probe answer without a break, so the SIGTERM sent while the
            // reload holds is always taken before the switch is confirmed.
            c["nginx"]["pid_file"] = json!("");
        })
        .unwrap();
    fs::write(marks.join("hold-reload"), "").unwrap();
    fs::write(marks.join("hold-test"), "").unwrap();
    let mut run = scene
        .setup
        .bundle
        .spawn("switch", &["--to", "real2"], None, |_| {})
        .unwrap();
    // nginx took the new config (the reload command returns before it does).
    assert!(tests::wait_until(Duration::from_secs(30), || marks
        .join("reloaded")
        .exists()
        && scene.setup.get("/").is_ok_and(|a| a.1 == "demo v2 real2")));
    run.signal(Signal::SIGTERM);
    fs::remove_file(marks.join("hold-reload")).unwrap();
    assert!(
        run.wait_for_stderr("restored ", Duration::from_secs(30)),
        "{}",
        run.stderr_so_far()
    );
    assert!(tests::wait_until(Duration::from_secs(30), || marks
        .join("testing-back")
        .exists()));
    run.signal(Signal::SIGKILL);
    let killed = run.finish(Duration::from_secs(10)).unwrap();
    fs::remove_file(marks.join("hold-test")).unwrap();
    assert_eq!(
        killed.status.code(),
        None,
        "the switch must have been killed"
    );
    // The two witnesses disagree: the include names real1 again, nginx still
    // routes to real2.
    assert_eq!(scene.setup.include(), scene.include);
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // `profile` says what the next stage will do about it.
    let report = profile_json(&scene);
    let repair = &report["pending_repair"];
    assert_eq!(repair["target"], "real2", "{report}");
    assert!(
        repair["action"]
            .as_str()
            .is_some_and(|a| a.contains("wait until nginx answers as real1")),
        "{report}"
    );

    // The next deployment settles it first: nginx is reloaded back to real1,
    // and it stops real2, never the app nginx routes to.
    let stop = scene.hook("stop", &[], Some("d-next"));
    stop.assert_ok()
        .assert_stderr_has("a switch to real2")
        .assert_stderr_has("nginx answers as real1 again");
    assert!(alive(scene.live_pid), "the live app was stopped");
    assert_eq!(scene.setup.get("/").unwrap(), (200, V1.into()));
    assert_eq!(scene.setup.include(), scene.include);
    assert!(!scene.state("switching.json").exists());
    assert!(profile_json(&scene)["pending_repair"].is_null());
    scene.finish(&[V1, "demo v2 real2"]);
}

#[test]
fn a_reload_that_fails_after_it_took_effect_is_reloaded_back_or_kept_in_the_journal() {
    let scene = Scene::new("fault-reload-maybe");
    scene.start_real2("v2");
    let marks = scene.setup.dir.join("marks");
    fs::create_dir_all(&marks).unwrap();
    // Reloads for real, then reports failure, as ssh dropping after the
    // remote reload ran would. With `$m/once` it reloads only once, then
    // (`$m/dead`) nothing; that once, it returns only after nginx answers
    // as real2 (`-s reload` only signals the master, which may read the
    // config after the switch has already restored the include: then the
    // reload would not have "taken effect" with the new route at all).
    let probe = format!("http://127.0.0.1:{}/profile", scene.setup.nginx.port);
    let reload = script(
        &scene,
        "reload-fails.sh",
        &format!(
            "m=$1; shift; [ -e \"$m/dead\" ] && exit 1; \"$@\"\n\
             [ -e \"$m/once\" ] || exit 1\n\
             i=0; until curl -fsS --max-time 1 {probe} | grep -q real2 || [ $i -ge 100 ]; do sleep 0.05; i=$((i+1)); done\n\
             touch \"$m/dead\"; exit 1"
        ),
    );
    let m = marks.display().to_string();
    let real_reload = scene.setup.nginx.command(&["-s", "reload"]);
    scene
        .setup
        .edit_config(|c| {
            c["nginx"]["reload"] = argv_json(&[&reload.display().to_string(), &m], &real_reload);
            c["nginx"]["confirm_timeout_secs"] = json!(3);
        })
        .unwrap();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    scene.assert_kept(
        &switch,
        1,
        &[
            "reload-fails.sh",
            "may still have taken effect",
            "nginx answers as real1 again",
        ],
    );
    assert!(!scene.state("switching.json").exists());
    let profile = scene.hook("profile", &[], None);
    profile.assert_ok();
    assert_eq!(profile.stdout.trim(), "real2", "idle: {}", profile.stderr);

    // Now the reload runs for real once, then reloads nothing: the switch
    // cannot see nginx serve the restored include, so it keeps the journal.
    fs::write(marks.join("once"), "").unwrap();
    let switch = scene.hook("switch", &["--to", "real2"], None);
    switch
        .assert_code(1)
        .assert_stderr_has("switching.json is kept")
        .assert_stderr_has("nginx may still route to real2");
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    let report = profile_json(&scene);
    assert_eq!(
        report["pending_repair"]["phase"], "reloaded-back",
        "{report}"
    );
    // Every later stage fails naming it, and stops nothing.
    let stop = scene.hook("stop", &[], Some("d-blocked"));
    stop.assert_code(1).assert_stderr_has("switching.json");
    assert!(alive(scene.live_pid));
    assert!(alive(scene.setup.launched_pid("real2").unwrap()));
    // Once the reload works again, the next stage settles it.
    fs::remove_file(marks.join("dead")).unwrap();
    scene
        .setup
        .edit_config(|c| c["nginx"]["reload"] = json!(real_reload))
        .unwrap();
    let stop = scene.hook("stop", &[], Some("d-after"));
    stop.assert_ok()
        .assert_stderr_has("nginx answers as real1 again");
    assert!(alive(scene.live_pid));
    assert_eq!(scene.setup.get("/").unwrap(), (200, V1.into()));
    assert_eq!(scene.setup.include(), scene.include);
    assert!(!scene.state("switching.json").exists());
    scene.finish(&[V1, "demo v2 real2"]);
}

#[test]
fn an_operators_explicit_switch_takes_over_an_abandoned_deployment() {
    let scene = Scene::new("fault-takeover");
    // Short, so that today's wait-then-fail shows quickly.
    scene
        .setup
        .edit_config(|c| c["lock_timeout_secs"] = json!(5))
        .unwrap();
    scene.setup.drop_jar("v2").unwrap();
    // A deployment that stopped after `start`: CodeDeploy gave up on it.
    scene.hook("stop", &[], Some("d-gone")).assert_ok();
    scene.hook("start", &[], Some("d-gone")).assert_ok();

    // The README's recovery, from an operator, goes ahead at once.
    let switch = scene.hook("switch", &["--to", "real2"], None);
    switch
        .assert_ok()
        .assert_stderr_has("deployment d-gone is unfinished")
        .assert_stderr_has("taking it over");
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real2".into()));

    // The abandoned deployment's later stages refuse, naming who took it.
    let health = scene.hook("health", &[], Some("d-gone"));
    health
        .assert_code(1)
        .assert_stderr_has("deployment d-gone was taken over by `switch`")
        .assert_stderr_has("naming real2");
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    assert!(alive(scene.setup.launched_pid("real2").unwrap()));
    // A new deployment is not held off by the old plan.
    scene.hook("stop", &[], Some("d-new")).assert_ok();
    assert!(!alive(scene.live_pid), "real1 is idle now and was stopped");
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    scene.finish(&[V1, "demo v2 real2"]);
}

#[test]
fn a_journal_is_settled_only_by_its_own_app_and_route() {
    let scene = Scene::new("fault-journal-owner");
    scene.start_real2("v2");
    let setup = &scene.setup;
    let a_config: Value = setup.config().unwrap();
    // App A's switch is killed after it wrote its include, while `nginx -t`
    // runs (held until then; the `nginx -T` that reads nginx's config
    // before the write is not held).
    let marks = setup.dir.join("marks");
    fs::create_dir_all(&marks).unwrap();
    let test = script(
        &scene,
        "test.sh",
        "m=$1; shift; for a; do [ \"$a\" = -T ] && exec \"$@\"; done; touch \"$m/testing\"\n\
         i=0; while [ -e \"$m/hold\" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n\
         exec \"$@\"",
    );
    let m = marks.display().to_string();
    let real_test = setup.nginx.command(&["-t"]);
    setup
        .edit_config(|c| {
            c["nginx"]["test"] = argv_json(&[&test.display().to_string(), &m], &real_test)
        })
        .unwrap();
    fs::write(marks.join("hold"), "").unwrap();
    let run = setup
        .bundle
        .spawn("switch", &["--to", "real2"], None, |_| {})
        .unwrap();
    assert!(tests::wait_until(Duration::from_secs(30), || marks
        .join("testing")
        .exists()));
    run.signal(Signal::SIGKILL);
    assert_eq!(
        run.finish(Duration::from_secs(10)).unwrap().status.code(),
        None
    );
    fs::remove_file(marks.join("hold")).unwrap();
    let a_written = setup.include();
    assert_ne!(a_written, scene.include, "A's include was written");
    setup
        .edit_config(|c| c["nginx"]["test"] = json!(real_test))
        .unwrap();

    // App B, another app on this server with the same state_dir and its own
    // include file: refused, naming both; its include is untouched.
    let b_dir = setup.dir.join("b");
    fs::create_dir_all(b_dir.join("app")).unwrap();
    let b_include = b_dir.join("b.inc");
    let (b1, b2) = (free_port(), free_port());
    let b_line = format!("set $service_url http://127.0.0.1:{b1};\n");
    fs::write(&b_include, &b_line).unwrap();
    let mut b_config = a_config.clone();
    b_config["profiles"] = json!([{"name": "blue", "port": b1}, {"name": "green", "port": b2}]);
    b_config["app"]["dir"] = json!(b_dir.join("app"));
    b_config["state_dir"] = json!(setup.state_dir());
    b_config["nginx"]["include"] = json!(b_include);
    let b = tests::Bundle::new(&b_dir.join("bundle"), &b_config).unwrap();
    let b_stop = b
        .hook("stop", &[], Some("b-1"), Duration::from_secs(60))
        .unwrap();
    b_stop
        .assert_code(2)
        .assert_stderr_has(&setup.app_dir.display().to_string())
        .assert_stderr_has(&b_dir.join("app").display().to_string())
        .assert_stderr_has("belongs to");
    assert_eq!(fs::read(&b_include).unwrap(), b_line.as_bytes());
    assert_eq!(setup.include(), a_written);

    // App A with its include moved (a new bundle): its state is its own,
    // but the journal belongs to the old route, so it refuses to settle it.
    let moved = setup.nginx.prefix.join("conf.d/moved.inc");
    fs::write(&moved, &scene.include).unwrap();
    setup
        .edit_config(|c| c["nginx"]["include"] = json!(moved))
        .unwrap();
    let stop = scene.hook("stop", &[], Some("a-moved"));
    stop.assert_code(1)
        .assert_stderr_has("route changed")
        .assert_stderr_has(&format!(
            "belongs to route include {}",
            setup.nginx.include.display()
        ))
        .assert_stderr_has(&format!("this config routes include {}", moved.display()));
    assert_eq!(fs::read(&moved).unwrap(), scene.include);
    assert_eq!(setup.include(), a_written);
    assert!(scene.state("switching.json").exists());

    // A's own config settles it.
    setup
        .edit_config(|c| c["nginx"]["include"] = a_config["nginx"]["include"].clone())
        .unwrap();
    let stop = scene.hook("stop", &[], Some("a-1"));
    stop.assert_ok().assert_stderr_has("was interrupted");
    assert_eq!(setup.include(), scene.include);
    assert!(!scene.state("switching.json").exists());
    assert!(alive(scene.live_pid));
    assert_eq!(setup.get("/").unwrap(), (200, V1.into()));
    scene.finish(&[V1]);
}
