//! A switch is never abandoned half-way because a record could not be
//! written: the state directory sits on a small file system of its own (a
//! tmpfs in a private mount namespace, `tests::SmallFs`) that is filled at
//! each step of a switch — before the write, right after `nginx -t`, during
//! the reload, during the undo, and while the new app dies — by wrapper
//! scripts run as `nginx.test` / `nginx.reload` argv. After each: nginx
//! serves a running app, the include names that app, no journal is left
//! behind, and the stage's exit code and words say what happened and where
//! traffic is now.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{alive, assert_all_served, HookRun, Load, Setup, SetupOptions, SmallFs};

/// v1 live on real1, v2 started on real2, the state directory on a small
/// file system, nginx's commands behind the wrapper, clients requesting
/// through nginx.
struct Scene {
    setup: Setup,
    small: SmallFs,
    /// Where the wrapper looks for what to do next.
    marks: PathBuf,
    load: Option<Load>,
}

/// What the wrapper does at the next run of one of nginx's commands.
const WRAPPER: &str = r#"#!/bin/sh
# nginx.test / nginx.reload of tests/tests/records.rs: $1 the marks
# directory, $2 the state directory, $3 test|reload, then nginx's argv.
# A mark `$3.ACTION` (removed when taken) says what this run does.
m=$1; s=$2; step=$3; shift 3
# The switch reads nginx's pid file from `nginx -T` (nginx.test with -T)
# before it writes anything: that run is not the test the marks are for.
case " $* " in *" -T "*) exec "$@";; esac
fill() { head -c 64M /dev/zero >"$s/filler" 2>/dev/null; return 0; }
take() { [ -e "$m/$step.$1" ] && rm -f "$m/$step.$1"; }
if take fill-after; then "$@"; rc=$?; fill; exit $rc; fi
if take fill-and-fail; then fill; exit 1; fi
if take fill-first; then fill; exec "$@"; fi
# Filled, and the journal's pages held by hard links: removing the journal
# frees no room for the records after it.
if take fill-hold; then fill; ln "$s/switching.json" "$s/held.json"; ln "$s/include.previous" "$s/held.inc"; exec "$@"; fi
if take run-fill-fail; then "$@"; fill; exit 1; fi
if [ -e "$m/$step.kill-fill" ]; then
    pid=$(cat "$m/$step.kill-fill"); rm -f "$m/$step.kill-fill"
    kill -9 "$pid"; fill; exec "$@"
fi
exec "$@""#;

impl Scene {
    fn new(name: &str) -> Scene {
        let setup = Setup::new(name, &SetupOptions::default()).unwrap();
        setup.bootstrap("v1").unwrap();
        setup.start_by_hand("real2", "v2").unwrap();
        let marks = setup.dir.join("marks");
        fs::create_dir_all(&marks).unwrap();
        let wrapper = setup.dir.join("nginx-step.sh");
        fs::write(&wrapper, WRAPPER).unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        let state = setup.state_dir();
        let step = |name: &str, real: Vec<String>| {
            let mut argv = vec![json!(wrapper), json!(marks), json!(state), json!(name)];
            argv.extend(real.into_iter().map(Value::from));
            Value::from(argv)
        };
        let test = step("test", setup.nginx.command(&["-t"]));
        let reload = step("reload", setup.nginx.command(&["-s", "reload"]));
        setup
            .edit_config(|c| {
                c["nginx"]["test"] = test;
                c["nginx"]["reload"] = reload;
                c["nginx"]["confirm_timeout_secs"] = json!(3);
            })
            .unwrap();
        let small = SmallFs::over(&state, "512k").unwrap();
        let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(5));
        Scene {
            setup,
            small,
            marks,
            load: Some(load),
        }
    }

    /// The next run of nginx's `step` (test, reload) does `action`.
    fn next(&self, step: &str, action: &str, content: &str) {
        fs::write(self.marks.join(format!("{step}.{action}")), content).unwrap();
    }

    /// `switch --to PROFILE` inside the namespace, where the state
    /// directory is the small file system.
    fn switch(&self, to: &str) -> HookRun {
        self.setup
            .bundle
            .spawn_under(&self.small.prefix(), "switch", &["--to", to], None)
            .unwrap()
            .finish(Duration::from_secs(90))
            .unwrap()
    }

    /// Frees the small file system again.
    fn free(&self) {
        for name in ["filler", "held.json", "held.inc"] {
            self.small.free(name);
        }
        assert!(!self.small.path("filler").exists());
    }

    /// nginx serves `profile`, whose app runs, and the include names it;
    /// no switch journal is left for a later stage to act on.
    #[track_caller]
    fn assert_serves(&self, run: &HookRun, profile: &str) {
        let i = usize::from(profile == "real2");
        let port = self.setup.ports[i];
        let include = String::from_utf8_lossy(&self.setup.include()).into_owned();
        assert_eq!(
            include.trim(),
            format!("set $service_url http://127.0.0.1:{port};"),
            "{}: the include must name {profile}:\n{}",
            run.stage,
            run.stderr
        );
        assert_eq!(
            self.setup.get("/profile").unwrap(),
            (200, profile.to_string()),
            "{}",
            run.stderr
        );
        let pid = self.setup.launched_pid(profile).unwrap();
        assert!(alive(pid), "{profile}'s app must run");
        assert!(self.setup.nginx.test_config(), "nginx -t must pass");
        for journal in ["switching.json", "include.previous"] {
            assert!(
                !self.small.path(journal).exists(),
                "{journal} is left behind:\n{}",
                run.stderr
            );
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Some(load) = self.load.take() {
            load.finish();
        }
    }
}

#[test]
fn a_full_state_disk_at_any_step_never_leaves_a_switch_half_done() {
    let mut scene = Scene::new("records-full");
    let real1 = scene.setup.launched_pid("real1").unwrap();
    let real2 = scene.setup.launched_pid("real2").unwrap();

    // Before the write: the journal cannot be begun, so nothing is touched.
    assert!(scene.small.fill("filler").unwrap() > 0);
    let run = scene.switch("real2");
    run.assert_code(1)
        .assert_stderr_has("nothing was changed")
        .assert_stderr_has("nginx answers as real1");
    scene.assert_serves(&run, "real1");
    scene.free();

    // Right after `nginx -t` passed: `tested` cannot be recorded. The
    // journal says no reload ran, so none may: the include is put back.
    scene.next("test", "fill-after", "");
    let run = scene.switch("real2");
    run.assert_code(1)
        .assert_stderr_has("cannot record the switch's phase `tested`")
        .assert_stderr_has("the switch to real2 stops before nginx is reloaded")
        .assert_stderr_has("nginx answers as real1");
    scene.assert_serves(&run, "real1");
    scene.free();

    // During the undo of a failed `nginx -t`: nothing is recorded, the
    // include goes back all the same.
    scene.next("test", "fill-and-fail", "");
    let run = scene.switch("real2");
    run.assert_code(1)
        .assert_stderr_has("nginx-step.sh")
        .assert_stderr_has("is restored")
        .assert_stderr_has("nginx answers as real1");
    scene.assert_serves(&run, "real1");
    scene.free();

    // During the undo of a reload that took effect and then reported
    // failure: put back, reloaded back and seen, with no record written.
    scene.next("reload", "run-fill-fail", "");
    let run = scene.switch("real2");
    run.assert_code(1)
        .assert_stderr_has("may still have taken effect")
        .assert_stderr_has("nginx answers as real1 again");
    scene.assert_serves(&run, "real1");
    scene.free();

    // During the reload: it moved traffic, and the journal (`reloading`)
    // says so, so the switch goes on and is confirmed. Ending the journal
    // frees the room switch.json needs.
    scene.next("reload", "fill-first", "");
    let run = scene.switch("real2");
    run.assert_ok()
        .assert_stderr_has("cannot record the switch's phase `reloaded`")
        .assert_stderr_has("nginx routes to real2");
    scene.assert_serves(&run, "real2");
    let switched = fs::read_to_string(scene.small.path("switch.json")).unwrap();
    assert!(switched.contains("real2"), "{switched}");
    scene.free();
    scene.switch("real1").assert_ok();

    // The same with no room left for switch.json either: confirmed, and
    // the failure (exit 1) says where traffic is and what was not recorded.
    scene.next("reload", "fill-hold", "");
    let run = scene.switch("real2");
    run.assert_code(1)
        .assert_stderr_has("nginx routes to real2")
        .assert_stderr_has("as confirmed, but the switch could not be recorded")
        .assert_stderr_has("switch.json");
    scene.assert_serves(&run, "real2");
    assert!(alive(real1), "the previous app is kept");
    scene.free();

    // Every request so far was answered by v1 or v2.
    let load = scene.load.take().unwrap();
    assert_all_served(&load.finish(), &["v1", "v2"]);

    // The new app dies while the disk fills during the reload: the switch
    // cannot be confirmed and is undone without records, back to the app
    // that runs.
    scene.next("reload", "kill-fill", &real1.to_string());
    let run = scene.switch("real1");
    run.assert_code(1)
        .assert_stderr_has("nginx did not answer as real1")
        .assert_stderr_has("nginx answers as real2 again");
    assert!(!alive(real1));
    scene.assert_serves(&run, "real2");
    assert!(alive(real2));

    // `profile --check` warns about a state directory with so little room.
    let check = scene
        .setup
        .bundle
        .spawn_under(&scene.small.prefix(), "profile", &["--check"], None)
        .unwrap()
        .finish(Duration::from_secs(90))
        .unwrap();
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("warn: the state directory") && l.contains("free")),
        "{}{}",
        check.stdout,
        check.stderr
    );
    scene.free();
}
