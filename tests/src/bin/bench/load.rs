//! The benchmark's load generator: constant traffic through nginx, recorded
//! request by request.
//!
//! Two kinds of clients, because nginx treats them differently at a reload:
//! - *fresh* clients open a new connection per request. Any failure here
//!   (refused, reset, 5xx) is a request a deployment dropped;
//! - *kept-alive* clients reuse one connection, as browsers and wrk do. At a
//!   reload nginx's old workers close their idle kept-alive connections; a
//!   request written onto one of those at that moment reads EOF. It never
//!   reached nginx and an HTTP client retries it, so it is counted apart
//!   (`keepalive_read_errors`), as the issue asks, not as a failure.
//!
//! Some clients of each kind send POSTs (empty body): a client must not
//! retry a POST whose kept-alive connection was closed under it (the request
//! may have been processed), so a POST lost that way is a failed request.
//!
//! And one *slow* request (`/slow`) per switch, sent by [`slow_request`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tests::Clients;

/// How a request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Fresh,
    KeptAlive,
    Slow,
}

/// What came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer; `profile` is the last word of the body (the demo app
    /// ends every answer with its profile).
    Answered { status: u16, profile: String },
    /// A new connection failed (connect, write or read) before any answer.
    ConnectionError(String),
    /// A reused connection gave no answer: closed under us by nginx.
    KeepAliveReadError(String),
}

/// One request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, since the load began.
    pub at: Duration,
    pub latency: Duration,
    pub kind: Kind,
    /// A POST (non-idempotent), not a GET.
    pub post: bool,
    pub outcome: Outcome,
}

impl Sample {
    pub fn status(&self) -> Option<u16> {
        match &self.outcome {
            Outcome::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A request that failed through no fault of the connection's reuse:
    /// an error answer, or a new connection that failed.
    pub fn failed(&self) -> bool {
        match &self.outcome {
            Outcome::Answered { status, .. } => !(200..300).contains(status),
            Outcome::ConnectionError(_) => true,
            Outcome::KeepAliveReadError(_) => false,
        }
    }

    /// A POST written onto a kept-alive connection nginx closed at that
    /// moment: a client must not retry it, so for its user it is lost.
    pub fn post_lost(&self) -> bool {
        self.post && matches!(self.outcome, Outcome::KeepAliveReadError(_))
    }

    /// The profile that answered with a 2xx, if one did.
    pub fn served_by(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Answered { status, profile } if (200..300).contains(status) => Some(profile),
            _ => None,
        }
    }
}

/// Clients requesting `path` through nginx on `port` until [`Load::finish`].
#[derive(Debug)]
pub struct Load(Clients<Sample>);

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One client of the load: how it connects, and whether it POSTs.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec {
    pub kind: Kind,
    pub post: bool,
}

/// The benchmark's usual load: two GET clients of each kind and one POST
/// client of each kind.
pub const STANDARD: [ClientSpec; 6] = [
    ClientSpec {
        kind: Kind::Fresh,
        post: false,
    },
    ClientSpec {
        kind: Kind::Fresh,
        post: false,
    },
    ClientSpec {
        kind: Kind::KeptAlive,
        post: false,
    },
    ClientSpec {
        kind: Kind::KeptAlive,
        post: false,
    },
    ClientSpec {
        kind: Kind::Fresh,
        post: true,
    },
    ClientSpec {
        kind: Kind::KeptAlive,
        post: true,
    },
];

impl Load {
    pub fn start(port: u16, path: &str, clients: &[ClientSpec], pause: Duration) -> Load {
        let clients = clients.to_vec();
        Load(Clients::start(clients.len(), pause, |i| {
            client(port, path.to_string(), clients[i])
        }))
    }

    /// When the load began: every [`Sample::at`] counts from here.
    pub fn started(&self) -> Instant {
        self.0.started()
    }

    /// Stops the clients; every sample, in the order they were sent.
    pub fn finish(self) -> Vec<Sample> {
        let mut all = self.0.finish();
        all.sort_by_key(|s| s.at);
        all
    }
}

/// One client's request function: a kept-alive client keeps its connection
/// from one call to the next while nginx leaves it open.
fn client(port: u16, path: String, spec: ClientSpec) -> impl FnMut(Instant) -> Sample {
    let mut conn: Option<BufReader<TcpStream>> = None;
    let ClientSpec { kind, post } = spec;
    move |t0| {
        let sent = Instant::now();
        let reused = conn.is_some();
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => connect(port),
        }
        .and_then(|mut c| {
            let keep = kind == Kind::KeptAlive;
            exchange(&mut c, &path, keep, post).map(|(status, body, open)| {
                if keep && open {
                    conn = Some(c);
                }
                (status, body)
            })
        });
        let outcome = match result {
            Ok((status, body)) => Outcome::Answered {
                status,
                profile: last_word(&body),
            },
            Err(e) if reused => Outcome::KeepAliveReadError(e),
            Err(e) => Outcome::ConnectionError(e),
        };
        Sample {
            at: sent - t0,
            latency: sent.elapsed(),
            kind,
            post,
            outcome,
        }
    }
}

/// One request on a connection of its own, sent now; for the slow request
/// in flight during a switch.
pub fn slow_request(port: u16, path: &str, t0: Instant) -> JoinHandle<Sample> {
    let path = path.to_string();
    std::thread::spawn(move || {
        let sent = Instant::now();
        let outcome = match connect(port).and_then(|mut c| exchange(&mut c, &path, false, false)) {
            Ok((status, body, _)) => Outcome::Answered {
                status,
                profile: last_word(&body),
            },
            Err(e) => Outcome::ConnectionError(e),
        };
        Sample {
            at: sent - t0,
            latency: sent.elapsed(),
            kind: Kind::Slow,
            post: false,
            outcome,
        }
    })
}

fn last_word(body: &str) -> String {
    body.split_whitespace().last().unwrap_or("").to_string()
}

fn connect(port: u16) -> Result<BufReader<TcpStream>, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("socket: {e}"))?;
    Ok(BufReader::new(stream))
}

/// Writes one GET (or an empty-bodied POST) and reads its answer: status,
/// body, and whether the connection may carry another request.
fn exchange(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    keep_alive: bool,
    post: bool,
) -> Result<(u16, String, bool), String> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let method = if post {
        "POST {path} HTTP/1.1\r\nContent-Length: 0\r\n"
    } else {
        "GET {path} HTTP/1.1\r\n"
    }
    .replace("{path}", path);
    let request = format!(
        "{method}Host: 127.0.0.1\r\nConnection: {connection}\r\nUser-Agent: nonstop-bench\r\n\r\n"
    );
    conn.get_mut()
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;

    let mut line = String::new();
    match conn.read_line(&mut line) {
        Ok(0) => return Err("read: connection closed before an answer".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("read: {e}")),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {:?}", line.trim_end()))?;
    let mut length: Option<usize> = None;
    let mut open = keep_alive;
    loop {
        line.clear();
        match conn.read_line(&mut line) {
            Ok(0) => return Err("read: connection closed in the headers".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                open = false;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Not produced by the demo app or nginx's error pages; read to EOF.
                length = None;
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) if n <= 1 << 20 => {
            body.resize(n, 0);
            conn.read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
        }
        _ => {
            open = false;
            conn.by_ref()
                .take(1 << 20)
                .read_to_end(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
        }
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned(), open))
}
