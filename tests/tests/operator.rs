//! The operator's view, end to end with the real nginx and the demo jar:
//! `profile --status` shows what runs where and which build, `profile
//! --history` what each deployment did, exactly as the deployment's own
//! stages recorded it; and the maintenance page under load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tests::{Clients, Layout, Setup, SetupOptions};

/// What `sha256sum` says of a file: the check an operator would run.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn a_deployments_facts_appear_in_the_status_and_the_history() {
    let setup = Setup::new("operator-view", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    let jar = setup.drop_jar("v2").unwrap();
    let sha = sha256sum(&jar);
    for stage in ["stop", "start", "health"] {
        setup.hook(stage, &[], Some("op-1")).unwrap().assert_ok();
    }

    // The status: real2 live, running v2 as op-1 started it; real1 idle,
    // still running v1 (nothing retires it), started by hand.
    let run = setup
        .hook("profile", &["--status", "--json"], None)
        .unwrap();
    run.assert_ok();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["live"], "real2", "{doc:#}");
    let real1 = &doc["profiles"][0];
    let real2 = &doc["profiles"][1];
    assert_eq!(real2["state"], "live");
    assert_eq!(real2["port"], setup.ports[1]);
    assert_eq!(
        real2["pid"].as_i64(),
        setup.launched_pid("real2").map(i64::from)
    );
    assert!(
        real2["command"].as_str().unwrap().contains("demo-v2.jar"),
        "{real2:#}"
    );
    assert_eq!(real2["build"]["artifact"], "demo-v2.jar");
    assert_eq!(real2["build"]["sha256"], sha.as_str());
    assert_eq!(
        real2["build"]["size"].as_u64(),
        Some(fs::metadata(&jar).unwrap().len())
    );
    assert_eq!(real2["deployment"]["id"], "op-1");
    assert!(real2["uptime_secs"].as_u64().unwrap() < 600);
    assert_eq!(real1["state"], "idle");
    assert_eq!(real1["build"]["artifact"], "demo-v1.jar");
    assert_eq!(real1["deployment"]["id"], Value::Null, "started by hand");

    let table = setup.hook("profile", &["--status"], None).unwrap();
    table.assert_ok();
    println!("$ profile --status\n{}", table.stdout);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("real2"))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    for cell in ["live", "demo-v2.jar", &sha[..12], "op-1"] {
        assert!(row.contains(cell), "{cell} not in {row}");
    }

    // A deployment that fails: its build is not a jar, `start` sees the
    // JVM exit.
    let bad = setup.app_dir.join("zip").join("demo-v3.jar");
    fs::write(&bad, b"not a jar").unwrap();
    // The watch ends at the JVM's exit; a long one makes sure a JVM slow to
    // boot on a loaded machine still exits inside it.
    setup
        .edit_config(|c| c["app"]["start_grace_ms"] = json!(10_000))
        .unwrap();
    setup.hook("stop", &[], Some("op-2")).unwrap().assert_ok();
    let start = setup.hook("start", &[], Some("op-2")).unwrap();
    assert_ne!(start.code(), 0, "{}", start.stderr);

    let run = setup
        .hook("profile", &["--history", "--json"], None)
        .unwrap();
    run.assert_ok();
    let list = json_lines(&run.stdout);
    let ids: Vec<Option<&str>> = list.iter().map(|d| d["deployment_id"].as_str()).collect();
    // Newest first; the bootstrap's two stages by hand come last.
    assert_eq!(
        ids,
        vec![Some("op-2"), Some("op-1"), None, None],
        "{list:#?}"
    );
    let (failed, ok) = (&list[0], &list[1]);
    assert_eq!(
        failed["outcome"],
        format!("failed at start (exit {})", start.code())
    );
    assert_eq!(failed["failed"], true);
    assert_eq!(
        (&failed["from"], &failed["to"]),
        (&"real2".into(), &"real1".into())
    );
    assert_eq!(failed["build"]["artifact"], "demo-v3.jar");
    assert_eq!(failed["build"]["sha256"], sha256sum(&bad).as_str());
    assert_eq!(ok["outcome"], "ok");
    assert_eq!((&ok["from"], &ok["to"]), (&"real1".into(), &"real2".into()));
    let stages: Vec<&str> = ok["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["stop", "start", "health"]);
    assert!(ok["stages"][2]["elapsed_ms"].as_u64().unwrap() > 0);
    assert_eq!(ok["build"]["sha256"], sha.as_str());
    assert_eq!(ok["build"]["artifact"], "demo-v2.jar");

    let only = setup
        .hook("profile", &["--history", "--failed", "--json"], None)
        .unwrap();
    only.assert_ok();
    let only = json_lines(&only.stdout);
    assert_eq!(only.len(), 1, "{only:#?}");
    assert_eq!(only[0]["deployment_id"], "op-2");
    let one = setup.hook("profile", &["--history", "1"], None).unwrap();
    one.assert_ok();
    assert_eq!(
        one.stdout.lines().count(),
        2,
        "a header and op-2:\n{}",
        one.stdout
    );

    let table = setup.hook("profile", &["--history"], None).unwrap();
    table.assert_ok();
    println!("$ profile --history\n{}", table.stdout);
    let row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("op-1"))
        .unwrap_or_else(|| panic!("{}", table.stdout));
    for cell in [
        "real1 -> real2",
        "ok",
        "stop ",
        "start ",
        "health ",
        &sha[..12],
    ] {
        assert!(row.contains(cell), "{cell} not in {row}");
    }

    // Both read only: they answer while another process holds the state
    // directory's lock (a stage would wait for it, then fail).
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(setup.state_dir().join("lock"))
        .unwrap();
    let held = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let held_dir = Flock::lock(
        std::fs::File::open(setup.state_dir()).unwrap(),
        FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .unwrap();
    for args in [&["--status"][..], &["--history", "--json"][..]] {
        setup.hook("profile", args, None).unwrap().assert_ok();
    }
    drop((held, held_dir));

    // What a broken file does to the view: a torn history line is left
    // out with a warning, a corrupt launch record shows no build with a
    // warning naming it; neither stops the view, and it moves nothing.
    let history = setup.state_dir().join("history.jsonl");
    let mut text = std::fs::read_to_string(&history).unwrap();
    text.push_str("{\"at_unix_ms\": 1, \"sta\n");
    std::fs::write(&history, text).unwrap();
    let torn = setup
        .hook("profile", &["--history", "--json"], None)
        .unwrap();
    torn.assert_ok()
        .assert_stderr_has("1 history line(s) could not be read");
    assert_eq!(json_lines(&torn.stdout).len(), 4, "{}", torn.stdout);
    let launched = setup.state_dir().join("launched-real2.json");
    std::fs::write(&launched, "{\"profile\": \"real2\", \u{1b}[2J").unwrap();
    let corrupt = setup
        .hook("profile", &["--status", "--json"], None)
        .unwrap();
    corrupt
        .assert_ok()
        .assert_stderr_has("launched-real2.json is corrupt");
    let doc: Value = serde_json::from_str(&corrupt.stdout).unwrap();
    let real2 = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["profile"] == "real2")
        .unwrap();
    assert_eq!(real2["build"], Value::Null, "{doc:#}");
    assert!(launched.exists(), "a read-only view moves nothing aside");
}

/// One answer as the maintenance test needs it: status, `Retry-After`,
/// body; status 0 when the request failed without an answer (a reset, a
/// closed connection), with the error.
#[derive(Debug, Clone)]
struct Answer {
    at: Duration,
    done: Duration,
    status: u16,
    retry_after: Option<String>,
    body: String,
    error: Option<String>,
    post: bool,
    kept_alive: bool,
    /// Written onto a connection an earlier request used.
    reused: bool,
    /// On a reused connection: when the request before this one on it was
    /// sent (since the load's start).
    prev_at: Option<Duration>,
    /// A kept-alive client's answer that said `Connection: close`: nginx
    /// ended the connection in the open (its `keepalive_requests`, 1000 by
    /// default, reached by a long run), not under a request.
    announced_close: bool,
    /// A kept-alive client's new connection in place of one nginx closed
    /// without saying so (what a reload does to an idle connection).
    reopened_unannounced: bool,
}

/// What [`request`] says when the connection closed before any answer.
const CLOSED: &str = "closed before an answer";

/// A GET or POST of `path` on `conn` (opened when `None`; left `None` when
/// the server closes it or the request fails).
fn request(
    port: u16,
    conn: &mut Option<BufReader<TcpStream>>,
    path: &str,
    post: bool,
) -> Result<(u16, Option<String>, String), String> {
    let mut c = match conn.take() {
        Some(c) => c,
        None => {
            let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            BufReader::new(s)
        }
    };
    let body = if post {
        "x".repeat(1024)
    } else {
        String::new()
    };
    let head = if post {
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1024\r\n\r\n{body}")
    } else {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    };
    c.get_mut()
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    // No byte of answer: the connection was closed under the request. The
    // peer's close reads as EOF, or as a reset when the request's bytes
    // reached the closing worker first (a socket closed with unread data
    // sends RST): the same event, named alike.
    match c.read_line(&mut line) {
        Ok(0) => return Err(CLOSED.into()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(CLOSED.into()),
        Err(e) => return Err(e.to_string()),
        Ok(_) => {}
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {line:?}"))?;
    let (mut length, mut retry_after, mut open) = (0usize, None, true);
    loop {
        line.clear();
        if c.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("closed in the header".into());
        }
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        let (name, value) = h.split_once(':').unwrap_or((h, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "retry-after" => retry_after = Some(value.to_string()),
            "connection" if value.eq_ignore_ascii_case("close") => open = false,
            "transfer-encoding" => return Err("chunked answer".into()),
            _ => {}
        }
    }
    let mut raw = vec![0; length];
    c.read_exact(&mut raw).map_err(|e| e.to_string())?;
    if open {
        *conn = Some(c);
    }
    Ok((
        status,
        retry_after,
        String::from_utf8_lossy(&raw).into_owned(),
    ))
}

/// GETs and POSTs through nginx, on new and kept-alive connections.
fn load(port: u16) -> Clients<Answer> {
    Clients::start(4, Duration::from_millis(5), move |i| {
        let post = i % 2 == 1;
        let kept_alive = i >= 2;
        let mut conn: Option<BufReader<TcpStream>> = None;
        // Whether this client's connection so far was opened at all, and
        // closed by an answer that said so.
        let (mut opened, mut announced) = (false, false);
        let mut last_sent: Option<Duration> = None;
        move |t0: Instant| {
            let sent = Instant::now();
            if !kept_alive {
                conn = None;
            }
            let reused = conn.is_some();
            let prev_at = if reused { last_sent } else { None };
            last_sent = Some(sent - t0);
            let reopened_unannounced = kept_alive && !reused && opened && !announced;
            opened = true;
            let answer = request(port, &mut conn, "/", post);
            let announced_close = kept_alive && answer.is_ok() && conn.is_none();
            announced = announced_close;
            let (status, retry_after, body, error) = match answer {
                Ok((s, r, b)) => (s, r, b, None),
                Err(e) => (0, None, String::new(), Some(e)),
            };
            Answer {
                at: sent - t0,
                done: t0.elapsed(),
                status,
                retry_after,
                body,
                error,
                post,
                kept_alive,
                reused,
                prev_at,
                announced_close,
                reopened_unannounced,
            }
        }
    })
}

#[test]
fn the_maintenance_page_under_load() {
    let setup = Setup::new("operator-maintenance", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    let port = setup.nginx.port;
    let clients = load(port);
    let t0 = clients.started();
    std::thread::sleep(Duration::from_millis(300));

    // A request in flight when maintenance begins is not cut.
    let slow = setup.slow_request_through_nginx("real1", 1500);
    let on_from = t0.elapsed();
    let on = setup
        .hook(
            "switch",
            &[
                "--maintenance",
                "--message",
                "Back at 5 <b>\"soon\"</b>;",
                "--retry-after",
                "30",
            ],
            None,
        )
        .unwrap();
    on.assert_ok().assert_stderr_has(
        "nginx answers every request with the maintenance page (503): confirmed",
    );
    let on_to = t0.elapsed();
    println!("$ switch --maintenance ...\n{}", on.stderr);
    assert_eq!(
        slow.join().unwrap().unwrap(),
        (200, "slow 1500 v1 real1".to_string())
    );
    // Any path, the page's own too (it is no hidden door: 503 like the rest).
    for path in ["/anything", "/nonstop-maintenance.html"] {
        let mut conn = None;
        let (status, retry, body) = request(port, &mut conn, path, false).unwrap();
        assert_eq!(
            (status, retry.as_deref()),
            (503, Some("30")),
            "{path}: {body}"
        );
        assert!(
            body.contains("Back at 5 &lt;b&gt;&quot;soon&quot;&lt;/b&gt;;"),
            "{path}: {body}"
        );
    }

    // profile says so, with who and since when; the history too.
    let status = setup.hook("profile", &["--status"], None).unwrap();
    status.assert_ok();
    println!("$ profile --status\n{}", status.stdout);
    let user = std::env::var("USER").unwrap_or_default();
    assert!(
        status.stdout.contains("maintenance: ON since ")
            && status.stdout.contains(&format!("by {user}")),
        "{}",
        status.stdout
    );
    let plain = setup.hook("profile", &[], None).unwrap();
    plain.assert_ok().assert_stderr_has("maintenance is on");
    assert_eq!(plain.stdout.trim(), "real2");

    // A deployment during maintenance starts and checks its build, and
    // leaves the page on; a bare switch refuses.
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start"] {
        setup.hook(stage, &[], Some("m-1")).unwrap().assert_ok();
    }
    let health = setup.hook("health", &[], Some("m-1")).unwrap();
    health
        .assert_ok()
        .assert_stderr_has("real2 is healthy but nginx is left on the maintenance page");
    assert_eq!(setup.get("/").unwrap().0, 503);
    setup
        .hook("switch", &[], None)
        .unwrap()
        .assert_code(1)
        .assert_stderr_has("maintenance is on (since ");

    // Ended with the new build, health-checked first.
    let off_from = t0.elapsed();
    let off = setup.hook("switch", &["--to", "real2"], None).unwrap();
    off.assert_ok();
    let off_to = t0.elapsed();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    std::thread::sleep(Duration::from_millis(300));
    let answers = clients.finish();

    // nginx's reload closes idle kept-alive connections, and a request
    // written onto one as it closes gets no answer, EOF or a reset
    // ("Keep-alive closed" in README's Measured; a client resends it on a
    // new connection). That is every reload's, not the page's: counted,
    // and only allowed across a reload, on a reused connection, without a
    // byte of answer. The connection is the old worker's when the request
    // before on it was sent before the switch ended: the worker closes it
    // once that request is answered, which on a loaded machine can come
    // after the switch's stage has exited.
    let across = |a: &Answer| {
        let prev_sent = a.prev_at.unwrap_or(a.at);
        (a.done >= on_from && prev_sent <= on_to) || (a.done >= off_from && prev_sent <= off_to)
    };
    let closed_by_reload =
        |a: &Answer| a.status == 0 && a.reused && a.error.as_deref() == Some(CLOSED) && across(a);
    let reload_closed = answers.iter().filter(|a| closed_by_reload(a)).count();
    let bad: Vec<&Answer> = answers
        .iter()
        .filter(|a| !matches!(a.status, 200 | 503) && !closed_by_reload(a))
        .take(5)
        .collect();
    let errors: Vec<&Option<String>> = bad.iter().map(|a| &a.error).collect();
    assert!(
        bad.is_empty(),
        "requests without 200 or 503: {errors:?} {bad:?}; maintenance on from {on_from:?} to {on_to:?}, off from {off_from:?} to {off_to:?}"
    );
    let page = |a: &Answer| {
        a.status == 503
            && a.retry_after.as_deref() == Some("30")
            && a.body.contains("Down for maintenance")
    };
    let (mut before, mut during, mut after) = (0, 0, 0);
    for a in answers.iter().filter(|a| !closed_by_reload(a)) {
        if a.done < on_from {
            assert_eq!((a.status, a.body.as_str()), (200, "demo v1 real1"), "{a:?}");
            before += 1;
        } else if a.at > on_to && a.done < off_from {
            assert!(page(a), "during maintenance: {a:?}");
            during += 1;
        } else if a.at > off_to {
            assert_eq!((a.status, a.body.as_str()), (200, "demo v2 real2"), "{a:?}");
            after += 1;
        } else {
            // Across a switch: either side, each whole.
            assert!(
                page(a) || (a.status == 200 && a.body.starts_with("demo v")),
                "{a:?}"
            );
        }
    }
    let kinds = |f: &dyn Fn(&Answer) -> bool| answers.iter().filter(|a| f(a)).count();
    println!(
        "maintenance under load: {} requests: {before} before (200), {during} during (503 + Retry-After), {after} after (200); \
         {} POSTs, {} on kept-alive connections; no 502; {reload_closed} written onto a kept-alive connection \
         the reload closed (no answer; a client resends); on from {on_from:?} to {on_to:?}, off from {off_from:?} to {off_to:?}",
        answers.len(),
        kinds(&|a| a.post),
        kinds(&|a| a.kept_alive),
    );
    assert!(
        before > 10 && during > 50 && after > 10,
        "{before} {during} {after}"
    );
    assert!(kinds(&|a| a.post && page(a)) > 10 && kinds(&|a| a.kept_alive && page(a)) > 10);

    let history = setup
        .hook("profile", &["--history", "--json"], None)
        .unwrap();
    history.assert_ok();
    let list = json_lines(&history.stdout);
    assert_eq!(list[0]["outcome"], "maintenance off", "{list:#?}");
    assert_eq!(list[0]["to"], "real2");
    assert!(
        list.iter().any(|d| d["outcome"] == "maintenance on"),
        "{list:#?}"
    );
    // The deployment whose health left the page on says so, not a bare "ok".
    let m1 = list
        .iter()
        .find(|d| d["deployment_id"] == "m-1")
        .unwrap_or_else(|| panic!("{list:#?}"));
    assert_eq!(m1["outcome"], "ok, nginx left on the maintenance page");
}

#[test]
fn a_maintenance_switch_killed_mid_way_is_settled_by_the_next_stage() {
    let setup = Setup::new("operator-maintenance-kill", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    let mut on = setup
        .bundle
        .spawn("switch", &["--maintenance"], None, |_| {})
        .unwrap();
    assert!(
        on.wait_for_stderr("done; waiting for nginx", Duration::from_secs(30)),
        "{}",
        on.stderr_so_far()
    );
    on.signal(Signal::SIGKILL);
    let _ = on.finish(Duration::from_secs(10));
    assert!(setup.state_dir().join("switching.json").exists());
    // The next stage finds the journal, sees the page served and keeps it,
    // and records who turned it on and since when, as the switch would have.
    let next = setup.hook("stop", &[], None).unwrap();
    next.assert_ok()
        .assert_stderr_has("was interrupted in phase")
        .assert_stderr_has("nginx answers with the maintenance page");
    assert!(!setup.state_dir().join("switching.json").exists());
    let status = setup.hook("profile", &["--status"], None).unwrap();
    status.assert_ok();
    let user = std::env::var("USER").unwrap_or_default();
    assert!(
        status.stdout.contains("maintenance: ON since ")
            && !status.stdout.contains("since -")
            && !status.stdout.contains("by -")
            && status.stdout.contains(&format!("by {user}")),
        "{}",
        status.stdout
    );
    // Then `switch --live` ends it as told.
    let live = setup.hook("switch", &["--live"], None).unwrap();
    live.assert_ok().assert_stderr_has("nginx routes to real1");
    assert!(!setup.state_dir().join("switching.json").exists());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

#[test]
fn upstream_pair_mode_refuses_the_maintenance_page_saying_why() {
    let setup = Setup::new(
        "operator-maintenance-pair",
        &SetupOptions {
            layout: Layout::Pair,
            retire: true,
            ..SetupOptions::default()
        },
    )
    .unwrap();
    let run = setup.hook("switch", &["--maintenance"], None).unwrap();
    run.assert_code(2)
        .assert_stderr_has("not possible in upstream-pair mode")
        .assert_stderr_has("nothing to switch");
}

#[test]
fn the_maintenance_page_in_symlink_mode() {
    let setup = Setup::new(
        "operator-maintenance-symlink",
        &SetupOptions {
            layout: Layout::Symlink,
            ..SetupOptions::default()
        },
    )
    .unwrap();
    setup.bootstrap("v1").unwrap();
    let port = setup.nginx.port;
    let clients = load(port);
    std::thread::sleep(Duration::from_millis(200));
    let on = setup
        .hook("switch", &["--maintenance", "--retry-after", "5"], None)
        .unwrap();
    on.assert_ok().assert_stderr_has(
        "nginx answers every request with the maintenance page (503): confirmed",
    );
    let mut conn = None;
    let (status, retry, body) = request(port, &mut conn, "/x", true).unwrap();
    assert_eq!((status, retry.as_deref()), (503, Some("5")), "{body}");
    assert!(body.contains(tests_message()), "{body}");
    let (status, _, body) = request(port, &mut None, "/nonstop-maintenance.html", false).unwrap();
    assert_eq!(status, 503, "the page's own URI too: {body}");
    assert!(body.contains(tests_message()), "{body}");
    std::thread::sleep(Duration::from_millis(300));
    let live = setup.hook("switch", &["--live"], None).unwrap();
    live.assert_ok().assert_stderr_has("nginx routes to real1");
    std::thread::sleep(Duration::from_millis(200));
    let answers = clients.finish();
    let wrong: Vec<&Answer> = answers
        .iter()
        .filter(|a| {
            let page = a.status == 503 && a.retry_after.as_deref() == Some("5");
            let app = a.status == 200 && a.body == "demo v1 real1";
            let closed = a.status == 0 && a.reused;
            !(page || app || closed)
        })
        .take(5)
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(answers.iter().filter(|a| a.status == 503).count() > 20);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

#[test]
fn a_maintenance_page_nginx_refuses_leaves_the_site_as_it_was() {
    let setup = Setup::new(
        "operator-maintenance-refused",
        &SetupOptions {
            layout: Layout::Symlink,
            ..SetupOptions::default()
        },
    )
    .unwrap();
    setup.bootstrap("v1").unwrap();
    // The live site already has a location of the page's URI: its copy
    // with the page's lines fails `nginx -t` (a duplicate location).
    let prefix = &setup.nginx.prefix;
    let site = prefix.join("sites-available/blue");
    let text = fs::read_to_string(&site).unwrap();
    let own = text.replacen(
        "location / {",
        "location = /nonstop-maintenance.html {\n        return 204;\n    }\n    location / {",
        1,
    );
    assert_ne!(own, text);
    fs::write(&site, own).unwrap();
    assert!(setup.nginx.test_config(), "the site alone passes nginx -t");
    let link = prefix.join("sites-enabled/default");
    let before = fs::read_link(&link).unwrap();
    let run = setup.hook("switch", &["--maintenance"], None).unwrap();
    assert_ne!(run.code(), 0, "{}", run.stderr);
    run.assert_stderr_has("duplicate location");
    assert_eq!(fs::read_link(&link).unwrap(), before, "{}", run.stderr);
    assert!(setup.nginx.test_config(), "{}", run.stderr);
    assert!(!setup.state_dir().join("switching.json").exists());
    assert!(!setup.state_dir().join("maintenance.json").exists());
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}

/// The words of nonstop's page without `--message`.
fn tests_message() -> &'static str {
    "This service is down for maintenance"
}

#[test]
fn health_ends_maintenance_only_when_told() {
    let setup = Setup::new("operator-maintenance-health", &SetupOptions::default()).unwrap();
    setup.bootstrap("v1").unwrap();
    setup
        .hook("switch", &["--maintenance"], None)
        .unwrap()
        .assert_ok();
    assert!(setup.state_dir().join("maintenance.json").exists());
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start"] {
        setup.hook(stage, &[], Some("m-2")).unwrap().assert_ok();
    }
    setup
        .hook("health", &["--end-maintenance"], Some("m-2"))
        .unwrap()
        .assert_ok()
        .assert_stderr_has("nginx routes to real2");
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    assert!(!setup.state_dir().join("maintenance.json").exists());
    let run = setup
        .hook("profile", &["--status", "--json"], None)
        .unwrap();
    run.assert_ok();
    let doc: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["maintenance"], Value::Null);
    assert_eq!(doc["live"], "real2");
    let history = setup
        .hook("profile", &["--history", "1", "--json"], None)
        .unwrap();
    let last = &json_lines(&history.stdout)[0];
    assert_eq!(
        (&last["deployment_id"], &last["outcome"]),
        (&"m-2".into(), &"maintenance off".into())
    );
}

fn realpath_setup(name: &str) -> Setup {
    Setup::new(
        name,
        &SetupOptions {
            layout: Layout::Realpath,
            ..SetupOptions::default()
        },
    )
    .unwrap()
}

/// The realpath mode's maintenance page, built from README's realpath
/// blocks: no reload on or off (nginx's workers the same), so unlike the
/// include mode not one kept-alive connection is closed; every request
/// during maintenance gets 503, `Retry-After` and the page, GET and POST;
/// a request in flight finishes on the app; a deployment during it leaves
/// the page on; `switch --to` ends it on the new build.
#[test]
fn the_maintenance_page_in_realpath_mode_under_load_without_a_reload() {
    let setup = realpath_setup("operator-maintenance-realpath");
    setup.bootstrap("v1").unwrap();
    let port = setup.nginx.port;
    let link = setup.nginx.include.clone();
    let workers = setup.nginx.settled_workers();
    let check = setup.hook("profile", &["--check"], None).unwrap();
    check.assert_stdout_has("ok: the maintenance page can be served without a reload");
    let clients = load(port);
    let t0 = clients.started();
    std::thread::sleep(Duration::from_millis(300));

    let slow = setup.slow_request_through_nginx("real1", 1500);
    let on_from = t0.elapsed();
    let on = setup
        .hook(
            "switch",
            &[
                "--maintenance",
                "--message",
                "Back at 5;",
                "--retry-after",
                "30",
            ],
            None,
        )
        .unwrap();
    on.assert_ok()
        .assert_stderr_has("nginx answers every request with the maintenance page (503): confirmed")
        .assert_stderr_lacks("reload");
    let on_to = t0.elapsed();
    println!("$ switch --maintenance ...\n{}", on.stderr);
    assert_eq!(
        fs::read_link(&link).unwrap().to_string_lossy(),
        format!("maintenance/{}-30", setup.ports[0])
    );
    assert_eq!(
        slow.join().unwrap().unwrap(),
        (200, "slow 1500 v1 real1".to_string())
    );
    let mut conn = None;
    let (status, retry, body) = request(port, &mut conn, "/x", true).unwrap();
    assert_eq!((status, retry.as_deref()), (503, Some("30")), "{body}");
    assert!(body.contains("Back at 5;"), "{body}");
    // The page's own name is nginx's `internal` location: a 404 from nginx.
    assert_eq!(setup.get("/nonstop-maintenance.html").unwrap().0, 404);

    let plain = setup.hook("profile", &[], None).unwrap();
    plain.assert_ok().assert_stderr_has("maintenance is on");
    assert_eq!(plain.stdout.trim(), "real2");
    let check = setup.hook("profile", &["--check"], None).unwrap();
    check.assert_stdout_has("points at the maintenance page");
    assert!(!check.stdout.contains("FAIL"), "{}", check.stdout);

    // A deployment during maintenance reads the link as the page: it
    // starts and checks its build and leaves the page on.
    setup.drop_jar("v2").unwrap();
    for stage in ["stop", "start"] {
        setup.hook(stage, &[], Some("m-1")).unwrap().assert_ok();
    }
    setup
        .hook("health", &[], Some("m-1"))
        .unwrap()
        .assert_ok()
        .assert_stderr_has("real2 is healthy but nginx is left on the maintenance page");
    assert_eq!(
        fs::read_link(&link).unwrap().to_string_lossy(),
        format!("maintenance/{}-30", setup.ports[0])
    );

    // Ended with the new build, health-checked first.
    let off_from = t0.elapsed();
    let off = setup.hook("switch", &["--to", "real2"], None).unwrap();
    off.assert_ok()
        .assert_stderr_has("nginx routes to real2")
        .assert_stderr_lacks("reload");
    let off_to = t0.elapsed();
    assert_eq!(
        fs::read_link(&link).unwrap().to_string_lossy(),
        format!("ports/{}", setup.ports[1])
    );
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".into()));
    std::thread::sleep(Duration::from_millis(800));
    let answers = clients.finish();
    assert_eq!(setup.nginx.workers(), workers, "nginx must not reload");

    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status == 0).take(5).collect();
    assert!(failed.is_empty(), "requests without an answer: {failed:?}");
    let page = |a: &Answer| {
        a.status == 503 && a.retry_after.as_deref() == Some("30") && a.body.contains("Back at 5;")
    };
    let v1 = |a: &Answer| a.status == 200 && a.body == "demo v1 real1";
    let v2 = |a: &Answer| a.status == 200 && a.body == "demo v2 real2";
    let app = |a: &Answer| v1(a) || v2(a);
    let (mut before, mut during, mut after, mut across) = (0, 0, 0, 0);
    for a in &answers {
        if a.done < on_from {
            assert!(v1(a), "{a:?}");
            before += 1;
        } else if a.at > off_to {
            assert!(v2(a), "{a:?}");
            after += 1;
        } else if a.at > on_to && a.done < off_from {
            assert!(page(a), "during maintenance: {a:?}");
            during += 1;
        } else {
            assert!(page(a) || app(a), "across a switch: {a:?}");
            across += 1;
        }
    }
    // A kept-alive client opens its connection once, and again only after
    // nginx closed the previous one: in the open (an answer that said
    // `Connection: close`) or under it (what a reload does).
    let kept = answers.iter().filter(|a| a.kept_alive).count();
    let announced = answers.iter().filter(|a| a.announced_close).count();
    let reopened = answers.iter().filter(|a| a.reopened_unannounced).count();
    let kinds = |f: &dyn Fn(&Answer) -> bool| answers.iter().filter(|a| f(a)).count();
    println!(
        "realpath maintenance under load: {} requests: {before} before (200), {during} during (503 + Retry-After + page), \
         {after} after (200), {across} across a switch (either, whole); {} POSTs ({} answered by the page); \
         {kept} on kept-alive connections, {reopened} of them closed by nginx unannounced \
         ({announced} ended by an answer saying Connection: close); no reset, no 502, no reload",
        answers.len(),
        kinds(&|a| a.post),
        kinds(&|a| a.post && page(a)),
    );
    assert_eq!(reopened, 0, "kept-alive connections closed");
    assert!(
        before > 10 && during > 50 && after > 10,
        "{before} {during} {after}"
    );
    assert!(kinds(&|a| a.post && page(a)) > 10 && kinds(&|a| a.kept_alive && page(a)) > 10);
}

/// Starts `switch --maintenance` and kills it after the link moved but
/// before nginx was seen serving the page: nginx's maps send
/// `maintenance/PORT-29` to the app, no 503 (entries before the regexes,
/// one reload), so nginx keeps answering the app. (A symlink planted at
/// the directory is refused before the link moves.)
fn kill_after_the_rename(setup: &Setup) {
    let link = setup.nginx.include.clone();
    let conf = fs::read_to_string(&setup.nginx.conf).unwrap();
    let stall = format!("\"~/maintenance/{}-29$\"", setup.ports[0]);
    if !conf.contains(&stall) {
        let url = "map $realpath_root $service_url {";
        let retry = "map $realpath_root $nonstop_retry_after {";
        assert!(conf.contains(url) && conf.contains(retry), "{conf}");
        let conf = conf
            .replacen(
                url,
                &format!(
                    "{url}\n    {stall} \"http://127.0.0.1:{}\";",
                    setup.ports[0]
                ),
                1,
            )
            .replacen(retry, &format!("{retry}\n    {stall} \"\";"), 1);
        setup.nginx.reload_with(&conf).unwrap();
    }
    let mut on = setup
        .bundle
        .spawn(
            "switch",
            &["--maintenance", "--retry-after", "29"],
            None,
            |_| {},
        )
        .unwrap();
    assert!(
        on.wait_for_stderr("wrote the link", Duration::from_secs(30)),
        "{}",
        on.stderr_so_far()
    );
    std::thread::sleep(Duration::from_millis(300));
    on.signal(Signal::SIGKILL);
    let _ = on.finish(Duration::from_secs(10));
    assert_eq!(
        fs::read_link(&link).unwrap().to_string_lossy(),
        format!("maintenance/{}-29", setup.ports[0]),
        "the link was renamed"
    );
    assert!(setup.state_dir().join("switching.json").exists());
}

/// A maintenance switch killed mid-way in the realpath mode: the next
/// stage finds the journal (phase `written`: no confirmation yet) and puts
/// the old link back, whatever it is asked next; asked for maintenance
/// again, it then turns it on and confirms it.
#[test]
fn a_realpath_maintenance_switch_killed_mid_way_is_settled_by_the_next_stage() {
    let setup = realpath_setup("operator-maintenance-realpath-kill");
    setup.bootstrap("v1").unwrap();
    let link = setup.nginx.include.clone();
    let target = || fs::read_link(&link).unwrap().to_string_lossy().into_owned();

    kill_after_the_rename(&setup);
    let next = setup.hook("switch", &["--to", "real1"], None).unwrap();
    next.assert_ok()
        .assert_stderr_has("was interrupted in phase")
        .assert_stderr_has("restored the link");
    println!("$ switch --to real1\n{}", next.stderr);
    assert!(!setup.state_dir().join("switching.json").exists());
    assert_eq!(target(), format!("ports/{}", setup.ports[0]));
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));

    kill_after_the_rename(&setup);
    let again = setup
        .hook("switch", &["--maintenance", "--retry-after", "30"], None)
        .unwrap();
    again
        .assert_ok()
        .assert_stderr_has("was interrupted in phase")
        .assert_stderr_has("restored the link")
        .assert_stderr_has(
            "nginx answers every request with the maintenance page (503): confirmed",
        );
    println!("$ switch --maintenance --retry-after 30\n{}", again.stderr);
    assert!(!setup.state_dir().join("switching.json").exists());
    assert_eq!(target(), format!("maintenance/{}-30", setup.ports[0]));
    assert_eq!(setup.get("/").unwrap().0, 503);
    setup
        .hook("switch", &["--live"], None)
        .unwrap()
        .assert_ok()
        .assert_stderr_has("nginx routes to real1");
    assert_eq!(target(), format!("ports/{}", setup.ports[0]));
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".into()));
}
