//! Process trees: apps that are more than one process, and launch commands
//! that fork. Each case runs against a real nginx with v1 live on real1 and
//! clients requesting through nginx the whole time, launches the new version
//! through a wrapper (a shell, a forking launcher, a double-forking daemon),
//! and checks what an operator would: the exit code and message, that
//! nothing the launch started is left running (no process whose working
//! directory is the app's, besides the live app), that the idle port is free
//! afterwards, and that the live app kept its pid and answered every request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{alive, terminate, HookRun, Load, Setup, SetupOptions};

const V1: &str = "demo v1 real1";

/// v1 live on real1 behind nginx, under load; the app's command replaced by
/// a wrapper around the harness's `java ...` command.
struct Scene {
    setup: Setup,
    load: Option<Load>,
    live_pid: i32,
    app_dir: PathBuf,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let setup = Setup::new(name, &SetupOptions::default()).unwrap();
        setup.bootstrap("v1").unwrap();
        assert_eq!(setup.get("/").unwrap(), (200, V1.to_string()));
        let live_pid = setup.launched_pid("real1").unwrap();
        let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(5));
        setup
            .edit_config(|c| {
                // Short, so a helper that ignores SIGTERM costs the test little.
                c["app"]["stop_timeout_secs"] = json!(3);
                // A launcher must have forked and exited within the grace
                // period for `start` to follow it; on a loaded machine
                // python3 alone may take a second to start. (`start` returns
                // as soon as the port listens, so this costs nothing.)
                c["app"]["start_grace_ms"] = json!(10_000);
            })
            .unwrap();
        let app_dir = fs::canonicalize(&setup.app_dir).unwrap();
        Scene {
            setup,
            load: Some(load),
            live_pid,
            app_dir,
        }
    }

    /// Runs the configured command through `prefix` (say `sh -c SCRIPT sh`):
    /// the java command line follows as `"$@"`.
    fn wrap(&self, prefix: &[&str]) {
        self.setup
            .edit_config(|c| {
                let java: Vec<Value> = c["app"]["command"].as_array().unwrap().clone();
                let mut command: Vec<Value> = prefix.iter().map(|s| json!(s)).collect();
                command.extend(java);
                c["app"]["command"] = json!(command);
            })
            .unwrap();
    }

    fn hook(&self, stage: &str, args: &[&str], id: Option<&str>) -> HookRun {
        self.setup.hook(stage, args, id).unwrap()
    }

    /// Processes working in the app's directory, the live app excepted:
    /// whatever a launch left running.
    fn left(&self) -> Vec<(i32, String)> {
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if pid == self.live_pid || !alive(pid) {
                continue;
            }
            let Ok(cwd) = fs::read_link(entry.path().join("cwd")) else {
                continue;
            };
            if cwd.starts_with(&self.app_dir) {
                let cmd = fs::read(entry.path().join("cmdline")).unwrap_or_default();
                found.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
        found
    }

    #[track_caller]
    fn assert_nothing_left(&self, run: &HookRun) {
        let left = self.left();
        assert!(
            left.is_empty(),
            "{}: left running: {left:?}; stderr:\n{}",
            run.stage,
            run.stderr
        );
        assert!(
            nonstop_common::sys::procs::listening(self.setup.ports[1])
                .unwrap()
                .is_free(),
            "{}: the idle port is still taken",
            run.stage
        );
    }

    #[track_caller]
    fn assert_code(run: &HookRun, code: i32, causes: &[&str]) {
        run.assert_code(code);
        for cause in causes {
            run.assert_stderr_has(cause);
        }
    }

    /// The live app kept its pid and every request through nginx was
    /// answered by one of `bodies`.
    fn finish(mut self, bodies: &[&str]) {
        assert!(alive(self.live_pid), "the live app was stopped");
        let load = self.load.take().unwrap();
        let ran = load.started().elapsed();
        std::thread::sleep(Duration::from_millis(500).saturating_sub(ran));
        let samples = load.finish();
        assert!(samples.len() > 10, "the load hardly ran: {}", samples.len());
        let bad: Vec<_> = samples
            .iter()
            .filter(|s| s.status != 200 || !bodies.contains(&s.body.as_str()))
            .take(5)
            .collect();
        assert!(bad.is_empty(), "requests failed: {bad:?}");
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // On a failure, what the launch left must not outlive the test.
        for (pid, _) in self.left() {
            terminate(pid, Duration::from_secs(2));
        }
    }
}

/// The pids in `pid`'s process group.
fn group_of(pid: i32) -> Vec<i32> {
    let pgid = |p: i32| -> Option<i32> {
        let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    let Some(g) = pgid(pid) else {
        return Vec::new();
    };
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| alive(p) && pgid(p) == Some(g))
        .collect()
}

#[test]
fn a_wrapper_whose_helper_ignores_sigterm_leaves_nothing_behind() {
    let scene = Scene::new("trees-helper");
    // The wrapper starts a helper that ignores SIGTERM, then becomes java.
    scene.wrap(&[
        "sh",
        "-c",
        "(trap '' TERM; exec sleep 300) & exec \"$@\"",
        "sh",
    ]);
    scene.setup.start_by_hand("real2", "v2").unwrap();
    let app = scene.setup.launched_pid("real2").unwrap();
    assert_eq!(
        group_of(app).len(),
        2,
        "java and its helper: {:?}",
        scene.left()
    );
    let stop = scene.hook("stop", &["--profile", "real2"], None);
    Scene::assert_code(&stop, 0, &[]);
    assert!(!alive(app));
    scene.assert_nothing_left(&stop);
    Scene::assert_code(&stop, 0, &["SIGKILL", "sleep 300"]);
    scene.finish(&[V1]);
}

#[test]
fn a_wrapper_that_does_not_exec_leaves_nothing_behind() {
    let scene = Scene::new("trees-noexec");
    // The shell stays java's parent, notes a SIGTERM rather than dying of
    // it, and has more to do once java exits (a post-stop step).
    scene.wrap(&[
        "sh",
        "-c",
        "trap 'echo wrapper: TERM' TERM; \"$@\"; sleep 300",
        "sh",
    ]);
    scene.setup.start_by_hand("real2", "v2").unwrap();
    let shell = scene.setup.launched_pid("real2").unwrap();
    let stop = scene.hook("stop", &["--profile", "real2"], None);
    Scene::assert_code(&stop, 0, &[]);
    assert!(!alive(shell));
    scene.assert_nothing_left(&stop);
    Scene::assert_code(&stop, 0, &["process group"]);
    scene.finish(&[V1]);
}

#[test]
fn a_launcher_that_forks_the_app_and_exits_is_adopted_then_stopped_cleanly() {
    let scene = Scene::new("trees-forking");
    // A start.sh that ends with `&`: it exits 0 at once, java keeps running.
    scene.wrap(&["sh", "-c", "\"$@\" &", "sh"]);
    scene.setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start", "health"] {
        let run = scene.hook(stage, &[], Some("d-1"));
        Scene::assert_code(&run, 0, &[]);
        if stage == "start" {
            run.assert_stderr_has("adopted");
        }
    }
    assert_eq!(scene.setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    let adopted = scene.setup.launched_pid("real2").unwrap();
    let on_port = nonstop_common::sys::procs::listening(scene.setup.ports[1]).unwrap();
    assert_eq!(on_port.pids, vec![adopted], "the record names the listener");
    // Back to real1 (still running v1), then real2 is idle and stopped by
    // the next deployment's `stop`, as ours.
    let back = scene.hook("switch", &["--to", "real1"], None);
    Scene::assert_code(&back, 0, &[]);
    let stop = scene.hook("stop", &[], Some("d-2"));
    Scene::assert_code(&stop, 0, &[&format!("pid {adopted}")]);
    assert!(!alive(adopted));
    scene.assert_nothing_left(&stop);
    scene.finish(&[V1, "demo v2 real2"]);
}

/// A daemon as the classic recipe makes one: fork, setsid, fork, and the
/// intermediate processes exit; the grandchild runs the command.
const DOUBLE_FORK: &str = "import os, sys
if os.fork() > 0:
    sys.exit(0)
os.setsid()
if os.fork() > 0:
    sys.exit(0)
os.execvp(sys.argv[1], sys.argv[1:])
";

#[test]
fn a_double_forking_daemon_is_adopted_then_stopped_cleanly() {
    let scene = Scene::new("trees-daemon");
    scene.wrap(&["python3", "-c", DOUBLE_FORK]);
    scene.setup.drop_jar("v2").unwrap();
    let start = scene.hook("start", &["--profile", "real2"], None);
    Scene::assert_code(&start, 0, &["adopted"]);
    let daemon = scene.setup.launched_pid("real2").unwrap();
    scene
        .hook("health", &["--profile", "real2", "--no-switch"], None)
        .assert_ok();
    let stop = scene.hook("stop", &["--profile", "real2"], None);
    Scene::assert_code(&stop, 0, &[&format!("pid {daemon}")]);
    assert!(!alive(daemon));
    scene.assert_nothing_left(&stop);
    scene.finish(&[V1]);
}

#[test]
fn a_launch_that_fails_but_leaves_a_child_fails_and_leaves_nothing() {
    let scene = Scene::new("trees-failed");
    scene
        .setup
        .edit_config(|c| c["app"]["command"] = json!(["sh", "-c", "sleep 300 & exit 3"]))
        .unwrap();
    scene.setup.drop_jar("v2").unwrap();
    let start = scene.hook("start", &["--profile", "real2"], None);
    Scene::assert_code(&start, 1, &["exited at once"]);
    scene.assert_nothing_left(&start);
    Scene::assert_code(&start, 1, &["sleep 300", "stopped"]);
    // And the next deployment's stop has nothing to refuse.
    let stop = scene.hook("stop", &["--profile", "real2"], None);
    Scene::assert_code(&stop, 0, &[]);
    scene.finish(&[V1]);
}

#[test]
fn an_idle_port_held_as_a_source_port_fails_start_naming_the_fix() {
    let scene = Scene::new("trees-source-port");
    // A connection whose source port the kernel picked from its ephemeral
    // range, as it does for nginx's own connections to the live app; real2
    // is configured on that port, as on a server with ports 38081/38082.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(server.local_addr().unwrap()).unwrap();
    let (accepted, _) = server.accept().unwrap();
    let port = client.local_addr().unwrap().port();
    scene
        .setup
        .edit_config(|c| c["profiles"][1]["port"] = json!(port))
        .unwrap();
    scene.setup.drop_jar("v2").unwrap();
    let start = scene.hook("start", &["--profile", "real2"], None);
    Scene::assert_code(
        &start,
        1,
        &[
            &format!(
                "127.0.0.1:{port} -> {} ESTABLISHED",
                server.local_addr().unwrap()
            ),
            "sysctl -w net.ipv4.ip_local_reserved_ports=",
            "nothing was started",
        ],
    );
    assert_eq!(
        scene.setup.launched_pid("real2"),
        None,
        "nothing was launched"
    );
    assert!(scene.left().is_empty(), "{:?}", scene.left());
    // Every stage warns about such a port beforehand.
    let profile = scene.hook("profile", &[], None);
    Scene::assert_code(
        &profile,
        0,
        &[&format!(
            "port {port} (real2) is inside net.ipv4.ip_local_port_range"
        )],
    );
    drop((client, accepted));
    scene.finish(&[V1]);
}
