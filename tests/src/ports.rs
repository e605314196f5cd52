//! Free loopback ports for a test's nginx and apps, chosen outside the
//! kernel's ephemeral range so a connection's source port never takes one.

use std::fs;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Where the tests' ports come from: below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999 by default). A port the
/// kernel may hand out as a connection's source port (nginx's own to the
/// live app, under the load the tests run) can be taken between `stop` and
/// `start`, and the app then fails to bind it: a flake, not a finding.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A port nobody can be using right now: bindable on every address, and
/// outside the kernel's ephemeral range.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports (see [`free_port`]), none handed out before in
/// this process.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Every port handed out so far. A test reserves an app port long before
    // anything listens on it (real2 until its `start`, an idle profile after
    // `stop`), so the bind below cannot see it taken: without this, a test
    // running beside it could be given the same port and one `start` would
    // fail to bind it.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // A different starting point per process and per call, so test
    // binaries running side by side do not all try the same ports first.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let span = u64::from(PORTS.end - PORTS.start);
    let seed = u64::from(std::process::id()) * 7919 + u64::from(nanos) / 1000;
    // Hold them all while choosing, so none is handed out twice.
    let mut held: Vec<(u16, TcpListener)> = Vec::new();
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = PORTS.start + ((seed + k * 37) % span) as u16;
        if (ephemeral.0..=ephemeral.1).contains(&port)
            || held.iter().any(|(p, _)| *p == port)
            || given.contains(&port)
        {
            continue;
        }
        // The wildcard address: it conflicts with a listener or a
        // connection on any local address, as the app's bind would.
        if let Ok(l) = TcpListener::bind(("0.0.0.0", port)) {
            held.push((port, l));
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {PORTS:?}");
    given.extend(held.iter().map(|(p, _)| *p));
    held.into_iter().map(|(p, _)| p).collect()
}
