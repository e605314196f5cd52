//! The demo app itself, apart from nonstop: what the tests that deploy it
//! rely on. Alone in its binary, since it loads both cores for a while.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tests::TestDir;

/// The demo app stands in for a Spring Boot app with
/// `server.shutdown=graceful`, and the pool tests rely on what that does:
/// once the app got SIGTERM it may close a kept-alive connection before an
/// answer (nginx can resend that request) but never after an answer's
/// first byte (nginx has passed the status on; the client gets a cut
/// body). Thirty SIGTERMs under eight kept-alive POST clients, the way
/// nginx's pool writes onto idle connections. (Before the fix:
/// 2-3 answers cut in each of 3 runs, and a flaky pool test in CI.)
#[test]
fn the_demo_apps_shutdown_never_cuts_an_answer_it_began() {
    /// One client's tally: answers read whole, and what each cut one got;
    /// `answered` counts the whole ones of all clients.
    fn client(port: u16, stop: &AtomicBool, answered: &AtomicUsize) -> (usize, Vec<String>) {
        let (mut whole, mut cut) = (0, Vec::new());
        let mut conn: Option<TcpStream> = None;
        while !stop.load(Ordering::Relaxed) {
            let mut stream = match conn.take() {
                Some(s) => s,
                None => match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        s
                    }
                    Err(_) => {
                        // Not listening (yet, or any more): nothing begun.
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                },
            };
            let request = "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 7\r\n\r\norder=1";
            if stream.write_all(request.as_bytes()).is_err() {
                continue;
            }
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let answer = loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if let Some(n) = length {
                        if got.len() >= end + 4 + n {
                            break Some(head);
                        }
                    }
                }
                match stream.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break None,
                }
            };
            match answer {
                Some(head) => {
                    whole += 1;
                    answered.fetch_add(1, Ordering::Relaxed);
                    if !head.contains("connection: close") {
                        conn = Some(stream);
                    }
                }
                // Closed (or reset) before any byte: a request nginx resends.
                None if got.is_empty() => {}
                None => cut.push(String::from_utf8_lossy(&got).into_owned()),
            }
        }
        (whole, cut)
    }

    let dir = TestDir::new("demo-shutdown");
    let jar = tests::Jars::build(&dir.join("build"))
        .unwrap()
        .jar("v1", &dir.join("demo.jar"))
        .unwrap();
    let port = tests::free_port();
    let (mut whole, mut cut) = (0, Vec::new());
    // Thirty rounds: the old drain cut 2-3 answers in 20, so it would
    // pass one run in twelve with 20 rounds, one in forty with 30.
    for round in 1..=30 {
        let mut app = std::process::Command::new("java")
            .arg(format!("-Dserver.port={port}"))
            .arg("-jar")
            .arg(&jar)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = i32::try_from(app.id()).unwrap();
        let listening = tests::wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !listening {
            tests::terminate(pid, Duration::from_secs(5));
            let _ = app.wait();
            panic!("the demo app never listened on {port}");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let (stop, answered) = (stop.clone(), answered.clone());
                std::thread::spawn(move || client(port, &stop, &answered))
            })
            .collect();
        // SIGTERM once the clients have had 16 answers, two each on average:
        // their connections are kept alive and busy by then (a JVM just
        // started answers slowly, slower still on a loaded host), and the
        // JVM is still young, which widens the window a cut needs (the old
        // drain cut one answer in 10 rounds or so this way).
        let busy = tests::wait_until(Duration::from_secs(30), || {
            answered.load(Ordering::Relaxed) >= 16
        });
        let signalled = std::time::Instant::now();
        tests::terminate(pid, Duration::from_secs(35));
        let _ = app.wait();
        // Its requests are short: a drain that waits for its deadline
        // (30 s) instead of for them is a fault too (20 s leaves a loaded
        // machine room and still tells the two apart).
        let drained = signalled.elapsed();
        assert!(
            drained < Duration::from_secs(20),
            "round {round}: the app took {drained:?} to exit after SIGTERM"
        );
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let (w, c) = c.join().unwrap();
            whole += w;
            cut.extend(c);
        }
        assert!(
            busy,
            "round {round}: the app answered only {answered:?} requests in 30 s"
        );
    }
    assert!(
        cut.is_empty(),
        "{} answers cut after their first byte (of {whole} whole), first: {:?}",
        cut.len(),
        cut.first()
    );
}
