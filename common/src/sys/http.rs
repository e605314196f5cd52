//! One bounded HTTP GET, for the probe through nginx and the health check.
//!
//! Every answer is untrusted: the body is capped at [`MAX_BODY`] bytes (a
//! 10 MiB answer must not cost memory), decoded lossily, and only ever
//! compared with configured names. No connection is pooled, so every probe
//! opens a new connection and sees what nginx's current workers route to.
//!
//! `localhost` is resolved here, to 127.0.0.1, never by the C library: the
//! shipped binaries are linked statically against glibc, whose name lookup
//! (getaddrinfo through NSS) needs glibc's own shared modules at run time,
//! which a server with another glibc, or an empty container, does not have.
//! IP addresses need no lookup at all. Any other host name still goes to
//! getaddrinfo; README says to use an address in `probe_url`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// The most of a body that is read; a longer answer is a failed probe.
pub(crate) const MAX_BODY: u64 = 4096;

/// A status and a (short) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// GET `url` with a total time limit. `Err` says why no answer came, in words
/// for a log line (`connection refused`, `timed out after 1.00 s`, ...).
pub fn get(url: &str, timeout: Duration) -> Result<Answer, String> {
    let mut response = agent(timeout).get(url).call().map_err(describe)?;
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                format!("answer body is larger than {MAX_BODY} bytes")
            }
            other => describe(other),
        })?;
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// A page's answer: its status, its `Retry-After` header, the start of its
/// body (at most [`MAX_BODY`] bytes; the rest is not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageAnswer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub head: String,
}

/// GET `url` for a page: the status, `Retry-After` and the body's start.
pub fn get_page(url: &str, timeout: Duration) -> Result<PageAnswer, String> {
    use std::io::Read as _;
    let mut response = agent(timeout).get(url).call().map_err(describe)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut head = Vec::new();
    response
        .body_mut()
        .as_reader()
        .take(MAX_BODY)
        .read_to_end(&mut head)
        .map_err(|e| e.to_string())?;
    Ok(PageAnswer {
        status,
        retry_after,
        head: String::from_utf8_lossy(&head).into_owned(),
    })
}

/// An agent for one request: no pool, no redirects, no proxy.
fn agent(timeout: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        // An http_proxy in the hook's environment must not reroute a probe of localhost.
        .proxy(None)
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::default(), Loopback::default())
}

/// Resolves `localhost` (any case, with or without the root's dot) to
/// 127.0.0.1 itself; everything else as ureq does (an IP literal is only
/// parsed). See the module's doc for why.
#[derive(Debug, Default)]
struct Loopback(DefaultResolver);

impl Resolver for Loopback {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if let Some(authority) = uri.authority() {
            if is_localhost(authority.host()) {
                let port = authority
                    .port_u16()
                    .unwrap_or(if uri.scheme_str() == Some("https") {
                        443
                    } else {
                        80
                    });
                let mut addrs = self.0.empty();
                addrs.push(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                return Ok(addrs);
            }
        }
        self.0.resolve(uri, config, timeout)
    }
}

fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
}

fn describe(err: ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(_) => "timed out".to_string(),
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => io.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_is_recognised_in_any_case_with_the_roots_dot() {
        for host in ["localhost", "LocalHost", "localhost."] {
            assert!(is_localhost(host), "{host}");
        }
        for host in ["127.0.0.1", "localhost.example", "mylocalhost", ""] {
            assert!(!is_localhost(host), "{host}");
        }
    }
}
