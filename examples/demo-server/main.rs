//! The demo server nonstop's Docker Compose tests deploy: what
//! examples/demo-app/Demo.java is for the process backend, as one static
//! binary for a `FROM scratch` image (no registry can be pulled from).
//!
//! std only, built with `rustc -O -C target-feature=+crt-static`. Settings
//! come from the environment, as a Compose service gives them:
//! - PROFILE: answered at GET /profile (unless ANSWER overrides it);
//! - PORT: the port to listen on (0.0.0.0), default 8080;
//! - VERSION: in GET / ("demo VERSION PROFILE"), else /version.txt;
//! - STARTUP_DELAY_MS: wait before listening (a slow start-up);
//! - EXIT_AT_STARTUP=CODE: exit after the delay instead (a broken build).
//! GET /slow?ms=N answers after N ms. On SIGTERM it closes its listening
//! socket, finishes the requests in flight (at most 30 s) and exits 0.
//!
//! The one `unsafe` is installing the SIGTERM handler: std has no signal
//! API, and a container's PID 1 that does not handle SIGTERM is not
//! stopped by it at all.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_signal: i32) {
    TERM.store(true, Ordering::SeqCst);
}

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

const SIGTERM: i32 = 15;
const SIGINT: i32 = 2;

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn main() {
    unsafe {
        signal(SIGTERM, on_term);
        signal(SIGINT, on_term);
    }
    let profile = env("PROFILE").unwrap_or_else(|| "default".into());
    let answer = env("ANSWER").unwrap_or_else(|| profile.clone());
    let port: u16 = env("PORT").and_then(|p| p.parse().ok()).unwrap_or(8080);
    let version = env("VERSION")
        .or_else(|| std::fs::read_to_string("/version.txt").ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    if let Some(ms) = env("STARTUP_DELAY_MS").and_then(|v| v.parse().ok()) {
        println!("demo: starting up for {ms} ms");
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(code) = env("EXIT_AT_STARTUP").and_then(|v| v.parse().ok()) {
        eprintln!("demo: exiting at start-up as asked (EXIT_AT_STARTUP={code})");
        std::process::exit(code);
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot listen on {port}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
    println!("demo {version} ({profile}) listening on 0.0.0.0:{port}");
    let in_flight = Arc::new(AtomicUsize::new(0));
    while !TERM.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (answer, version, profile) = (answer.clone(), version.clone(), profile.clone());
                let counter = in_flight.clone();
                std::thread::spawn(move || {
                    serve(stream, &answer, &version, &profile);
                    counter.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => eprintln!("demo: accept: {e}"),
        }
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(30);
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("demo: drained, exiting");
}

fn serve(stream: TcpStream, answer: &str, version: &str, profile: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    // Skip the headers.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let body = if path == "/profile" {
        answer.to_string()
    } else if let Some(query) = path.strip_prefix("/slow") {
        let ms: u64 = query
            .trim_start_matches('?')
            .split('&')
            .find_map(|kv| kv.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        std::thread::sleep(Duration::from_millis(ms));
        format!("slow {ms} {version} {profile}")
    } else {
        format!("demo {version} {profile}")
    };
    let mut out = stream;
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = out.flush();
}
