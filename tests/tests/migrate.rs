//! Moving from the book's scripts: a server where start.sh started both
//! profiles (`nohup java -jar ... -Dspring.profiles.active=PROFILE $JAR &`,
//! through sh, as the book does; reproduced here, test-only), with the include
//! naming real1. nonstop did not start those apps, yet its first deployments
//! must succeed under load without ever signalling the live one, adopting
//! the idle book app each time; anything else on the idle port is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nonstop_common::sys::procs;
use tests::{alive, assert_all_served, terminate, wait_until, Load, Nginx, Setup, SetupOptions};

/// Processes this test started outside nonstop, stopped by pid at the end.
struct Started(Vec<i32>);

impl Drop for Started {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                terminate(pid, Duration::from_secs(10));
            }
        }
    }
}

/// The pid listening on `port` once it listens (at most 30 s).
fn listener(port: u16) -> i32 {
    let mut pid = None;
    let up = wait_until(Duration::from_secs(30), || {
        pid = procs::listening(port)
            .ok()
            .and_then(|l| l.pids.first().copied());
        pid.is_some()
    });
    assert!(up, "nothing listens on {port}");
    pid.unwrap()
}

fn port_free(port: u16) -> bool {
    wait_until(Duration::from_secs(20), || {
        procs::listening(port).map(|l| l.is_free()).unwrap_or(false)
    })
}

/// The book's start.sh for `profile`: through sh, `nohup java -jar` with
/// its `-D` options, in the background, output to nohup.out.
fn book_start(dir: &Path, jar: &Path, profile: &str, port: u16) -> i32 {
    let line = format!(
        "nohup java -jar -Dspring.config.location=classpath:/application.properties,{dir}/application-real.properties \
         -Dspring.profiles.active={profile} -Dserver.port={port} -Ddemo.startup.delay.ms=300 {jar} > {dir}/nohup-{profile}.out 2>&1 &",
        dir = dir.display(),
        jar = jar.display()
    );
    let status = Command::new("sh")
        .args(["-c", &line])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    listener(port)
}

#[test]
fn a_server_running_the_books_scripts_deploys_without_stopping_the_live_app() {
    let setup = Setup::new("migrate", &SetupOptions::default()).unwrap();
    let [p1, p2] = setup.ports;
    let book = setup.app_dir.join("step3");
    fs::create_dir_all(&book).unwrap();
    let jar = setup.jars.jar("v0", &book.join("demo-v0.jar")).unwrap();
    let real1 = book_start(&book, &jar, "real1", p1);
    let real2 = book_start(&book, &jar, "real2", p2);
    let _started = Started(vec![real1, real2]);
    assert!(String::from_utf8_lossy(&setup.include()).contains(&format!(":{p1};")));
    assert!(wait_until(Duration::from_secs(30), || {
        setup
            .get("/")
            .is_ok_and(|(s, b)| s == 200 && b == "demo v0 real1")
    }));

    // The preflight check sees both as apps nonstop will adopt (the harness's
    // ports may lie in the ephemeral range, so only these lines are asked).
    let check = setup.hook("profile", &["--check"], None).unwrap();
    for (pid, port) in [(real1, p1), (real2, p2)] {
        let line = format!("port {port} is held by pid {pid}");
        assert!(
            check
                .stdout
                .lines()
                .any(|l| l.starts_with("ok: ") && l.contains(&line) && l.contains("will adopt")),
            "{}",
            check.stdout
        );
    }

    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(5));
    // First deployment: the idle real2 is the book's, adopted and stopped.
    setup.drop_jar("v1").unwrap();
    let stop = setup.hook("stop", &[], Some("m-1")).unwrap();
    stop.assert_ok().assert_stderr_has("adopting");
    assert!(!alive(real2), "the book's idle real2 was stopped");
    assert!(alive(real1), "the live book app was not signalled");
    setup.hook("start", &[], Some("m-1")).unwrap().assert_ok();
    setup.hook("health", &[], Some("m-1")).unwrap().assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real2".to_string()));
    assert!(
        alive(real1),
        "the book's real1 kept running through the switch"
    );

    // Second: the book's real1 is idle now, adopted and stopped in its turn.
    setup.drop_jar("v2").unwrap();
    let stop = setup.hook("stop", &[], Some("m-2")).unwrap();
    stop.assert_ok().assert_stderr_has("adopting");
    assert!(!alive(real1));
    setup.hook("start", &[], Some("m-2")).unwrap().assert_ok();
    setup.hook("health", &[], Some("m-2")).unwrap().assert_ok();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real1".to_string()));
    assert_all_served(&load.finish(), &["v0", "v1", "v2"]);
}

#[test]
fn what_the_book_did_not_start_on_the_idle_port_is_refused() {
    let setup = Setup::new("migrate-refused", &SetupOptions::default()).unwrap();
    let [_, p2] = setup.ports;
    // A jar any user can read, for the java of another user.
    let shared = std::env::temp_dir().join(format!("nonstop-migrate-{}", std::process::id()));
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    let jar = setup.jars.jar("v0", &shared.join("demo-v0.jar")).unwrap();
    fs::set_permissions(&jar, fs::Permissions::from_mode(0o644)).unwrap();
    let java = |profile: &str, uid: Option<u32>| {
        let mut c = Command::new("java");
        c.args(["-jar", &format!("-Dspring.profiles.active={profile}")])
            .arg(format!("-Dserver.port={p2}"))
            .arg(&jar)
            .current_dir(&shared)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(u) = uid {
            c.uid(u).gid(u);
        }
        c.spawn().unwrap().id() as i32
    };

    // The other profile's book app, on real2's port.
    let pid = java("real1", None);
    let guard = Started(vec![pid]);
    listener(p2);
    let stop = setup.hook("stop", &[], None).unwrap();
    stop.assert_code(1)
        .assert_stderr_has("spring.profiles.active is real1");
    assert!(alive(pid));
    drop(guard);
    assert!(port_free(p2));

    // real2's book app, but of another user.
    let pid = java("real2", Some(65534));
    let guard = Started(vec![pid]);
    listener(p2);
    let stop = setup.hook("stop", &[], None).unwrap();
    stop.assert_code(1).assert_stderr_has("runs as uid 65534");
    assert!(alive(pid));
    drop(guard);
    assert!(port_free(p2));

    // An nginx on the idle port.
    let prefix = setup.dir.join("other-nginx");
    let server = format!("server {{ listen 127.0.0.1:{p2}; return 200 'not the app'; }}");
    let mut other = Nginx::start_with(&prefix, p2, &prefix.join("none"), &server).unwrap();
    let stop = setup.hook("stop", &[], None).unwrap();
    stop.assert_code(1)
        .assert_stderr_has("not a `java` process");
    assert!(alive(other.pid()));
    other.quit();
    let _ = fs::remove_dir_all(&shared);
}
