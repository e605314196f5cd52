//! One request on a fresh connection, the way a new client reaches nginx:
//! a GET ([`http_get`]) or a POST with a body ([`http_post`]); or many on
//! one kept-alive connection, as a browser or a load balancer's client
//! sends them ([`KeptAlive`]).

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

/// One GET on a new connection (`Connection: close`), the way a fresh
/// client reaches nginx. Returns status and body.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    request(port, "GET", path, None, timeout)
}

/// One POST of `body` on a new connection: a request nginx must not retry
/// on another upstream (it is not idempotent), so a refused or reset
/// connection behind nginx shows as a 502 here.
pub fn http_post(port: u16, path: &str, body: &[u8], timeout: Duration) -> Result<(u16, String)> {
    request(port, "POST", path, Some(body), timeout)
}

fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(b) = body {
        stream.write_all(b)?;
    }
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header in {:?}", text))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    // A connection closed mid-answer (after the status line went out) is a
    // lost request, however good its status: say so, not "200 with no body".
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    if let Some(n) = length {
        if body.len() < n {
            bail!(
                "answer {status} cut after {} of its {n} bytes: {head:?}",
                body.len()
            );
        }
    }
    Ok((status, body.to_string()))
}

/// An HTTP/1.1 connection to 127.0.0.1:`port` kept open from one request to
/// the next (`Connection: keep-alive`), opened again only when the server
/// closed it (after an answer that said `Connection: close`, or one read to
/// its end). A request written onto a connection the server had closed
/// fails: that is not hidden by a silent retry, since a client must not
/// resend a POST it may have delivered.
#[derive(Debug)]
pub struct KeptAlive {
    port: u16,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl KeptAlive {
    pub fn new(port: u16, timeout: Duration) -> KeptAlive {
        KeptAlive {
            port,
            timeout,
            conn: None,
        }
    }

    /// Whether the next request goes onto a connection already used.
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// One GET (`body` None) or POST on the connection; status and body.
    pub fn request(&mut self, path: &str, body: Option<&[u8]>) -> Result<(u16, String)> {
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
                let stream = TcpStream::connect_timeout(&addr, self.timeout)?;
                stream.set_read_timeout(Some(self.timeout))?;
                stream.set_write_timeout(Some(self.timeout))?;
                stream.set_nodelay(true)?;
                BufReader::new(stream)
            }
        };
        let method = if body.is_some() { "POST" } else { "GET" };
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n");
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        conn.get_mut().write_all(head.as_bytes())?;
        if let Some(b) = body {
            conn.get_mut().write_all(b)?;
        }
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("connection closed before an answer");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {:?}", line.trim_end()))?;
        let mut length: Option<usize> = None;
        let mut open = true;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                bail!("connection closed in the answer's header");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().ok();
                } else if name.eq_ignore_ascii_case("connection")
                    && value.eq_ignore_ascii_case("close")
                {
                    open = false;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    length = None;
                }
            }
        }
        let mut raw = Vec::new();
        match length {
            Some(n) if n <= 1 << 20 => {
                raw.resize(n, 0);
                conn.read_exact(&mut raw)?;
            }
            _ => {
                open = false;
                conn.by_ref().take(1 << 20).read_to_end(&mut raw)?;
            }
        }
        if open {
            self.conn = Some(conn);
        }
        Ok((status, String::from_utf8_lossy(&raw).into_owned()))
    }
}
