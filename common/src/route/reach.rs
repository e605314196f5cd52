//! Where nginx connects to a profile's app, and whether the app answers its
//! health check there: what the switch proves before it writes anything.
//!
//! `health` waits for the app on `127.0.0.1:PORT`, but nginx reaches it at
//! the host its own config names: the include's line (`nginx.template`,
//! say `set $service_url http://10.0.1.20:{port};`), the profile's site
//! file in symlink mode (its `proxy_pass` or upstream `server`), or the
//! upstream's `server` line in upstream-pair mode. An app that listens on
//! 127.0.0.1 only passes a check there and is a 502 for every request
//! through nginx. So the target is asked once more at each address nginx
//! uses for its port, from where nginx runs: on this host with nonstop's own
//! HTTP client, on nginx's host (`nginx.ssh`) with `curl` there, or `wget`
//! when it has no curl, over the same ssh as every other step. An argv, no
//! script: the remote shell only joins single-quoted words.
//!
//! A host name other than `localhost` is checked as the checking host
//! resolves it, which nginx may not (it resolves with its own `resolver`);
//! that is said. Where the address cannot be read at all (the port behind
//! a variable, a site file that names an upstream defined elsewhere), the
//! check falls back to 127.0.0.1 and says so.

use crate::app::health_rule;
use crate::config::{Config, Profile};
use crate::route;
use crate::route::address::{Address, Seen};
use crate::route::host::Host;
use crate::sys::cmd;
use crate::sys::http;
use crate::sys::log::{quote_untrusted, Log};
use crate::sys::time::secs;

/// How long a remote command (ssh included) may take at least.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// One GET of `url` from nginx's host over ssh: curl there, or wget when it
/// has no curl. `Err` says why no answer came (or that neither exists).
fn remote_get(config: &Config, url: &str) -> Result<http::Answer, Miss> {
    let limit = config.health.request_timeout;
    let out = Host::of(config)
        .run(&curl_argv(url, limit), LIMIT)
        .map_err(|e| Miss::NotAsked(format!("{e:#}")))?;
    if out.status.code() != Some(127) {
        return read_curl(&out);
    }
    let out = Host::of(config)
        .run(&wget_argv(url, limit), LIMIT)
        .map_err(|e| Miss::NotAsked(format!("{e:#}")))?;
    if out.status.code() == Some(127) {
        return Err(Miss::NotAsked(
            "nginx's host has neither curl nor wget to ask it from there; install one of them there"
                .into(),
        ));
    }
    read_wget(&out)
}

/// Whole seconds, at least 1, as BusyBox wget takes them.
fn whole_secs(limit: std::time::Duration) -> String {
    format!("{:.0}", limit.as_secs_f64().ceil().max(1.0))
}

/// curl's argv: no proxy, no globbing of an IPv6 address's brackets, no
/// redirect followed, the body then a line with the status.
fn curl_argv(url: &str, limit: std::time::Duration) -> Vec<String> {
    let secs = whole_secs(limit);
    [
        "curl",
        "-sS",
        "-g",
        "--noproxy",
        "*",
        "--max-time",
        &secs,
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        url,
    ]
    .map(String::from)
    .to_vec()
}

/// wget's argv (GNU or BusyBox): without a proxy from the login's
/// environment; `-S` prints the status line(s) to stderr.
fn wget_argv(url: &str, limit: std::time::Duration) -> Vec<String> {
    let secs = whole_secs(limit);
    [
        "env",
        "-u",
        "http_proxy",
        "-u",
        "HTTP_PROXY",
        "wget",
        "-q",
        "-S",
        "-O",
        "-",
        "-T",
        &secs,
        url,
    ]
    .map(String::from)
    .to_vec()
}

/// What curl's run says: the answer, or why none came.
fn read_curl(out: &cmd::Outcome) -> Result<http::Answer, Miss> {
    if !out.success() {
        return Err(Miss::App(format!("curl there: {}", out.message())));
    }
    parse_curl(&out.stdout).ok_or_else(|| {
        Miss::App(format!(
            "curl there printed no status: {}",
            quote_untrusted(out.stdout.trim(), 60)
        ))
    })
}

/// What wget's run says: the first status it printed (and the body when it
/// exited 0: wget prints none for an error status), or why none came.
fn read_wget(out: &cmd::Outcome) -> Result<http::Answer, Miss> {
    match parse_wget_status(&out.stderr) {
        Some(status) => Ok(http::Answer {
            status,
            body: if out.success() {
                out.stdout.clone()
            } else {
                String::new()
            },
        }),
        None if out.message().is_empty() => Err(Miss::App(format!(
            "wget there got no answer ({})",
            out.status
        ))),
        None => Err(Miss::App(format!("wget there: {}", out.message()))),
    }
}

/// curl's `-w '\n%{http_code}'` output: the body, a newline, the status.
fn parse_curl(stdout: &str) -> Option<http::Answer> {
    let (body, code) = stdout.rsplit_once('\n')?;
    let status: u16 = code.trim().parse().ok()?;
    // 000: no HTTP answer at all.
    (status != 0).then(|| http::Answer {
        status,
        body: body.to_string(),
    })
}

/// The first status line wget `-S` printed (`  HTTP/1.1 200 OK`): the
/// answer to the request itself, before any redirect was followed.
fn parse_wget_status(stderr: &str) -> Option<u16> {
    stderr.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let proto = words.next()?;
        if !proto.starts_with("HTTP/") {
            return None;
        }
        words.next()?.parse().ok()
    })
}

/// Why a check at an address did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Miss {
    /// The app was asked and did not answer right: what came instead.
    App(String),
    /// It could not be asked (nginx's host out of reach, no curl or wget there).
    NotAsked(String),
}

/// One try of the health rule on `target` at `address`, from where nginx
/// runs.
fn check_at(config: &Config, target: &Profile, address: &Address) -> Result<(), Miss> {
    let url = address.health_url(config);
    let answer = match &config.nginx.ssh {
        None => http::get(&url, config.health.request_timeout).map_err(Miss::App),
        Some(_) => remote_get(config, &url),
    }?;
    if health_rule::healthy(config, target, &answer) {
        Ok(())
    } else {
        Err(Miss::App(format!(
            "HTTP {}, body {}",
            answer.status,
            quote_untrusted(answer.body.trim(), 60)
        )))
    }
}

/// Checks that `target` answers its health check at every address nginx
/// connects to it, from where nginx runs. `Err` names the URL, where it was
/// asked from, what came and what was expected, and how to fix it.
pub(crate) fn check(config: &Config, target: &Profile, log: &Log) -> Result<(), String> {
    let from = match &config.nginx.ssh {
        Some(ssh) => format!(" from nginx's host {}", ssh.destination),
        None => String::new(),
    };
    let (addresses, source) = match route::of(config).connects_to(target) {
        Seen::At(a, source) => (a, source),
        Seen::Unknown(why) => {
            log.warn(format!(
                "cannot tell where nginx connects to {} ({why}); checking it on 127.0.0.1{from}",
                target.name
            ));
            let loopback = Address {
                host: "127.0.0.1".into(),
                port: target.port,
            };
            (vec![loopback], "its own port".to_string())
        }
    };
    let expect = health_rule::health_words(config, target);
    for address in &addresses {
        let url = address.health_url(config);
        if !address.is_literal() {
            log.warn(format!(
                "nginx connects to {} at the host name {}: checked as{} resolves it, which nginx may not (it uses its own `resolver`); an address in {source} is checked exactly",
                target.name,
                address.host,
                if config.nginx.ssh.is_some() { " nginx's host" } else { " this host" }
            ));
        }
        let started = std::time::Instant::now();
        if let Err(miss) = check_at(config, target, address) {
            let (why, asked) = match miss {
                Miss::App(why) => (why, true),
                Miss::NotAsked(why) => (why, false),
            };
            let start_it = format!(
                "start it first (`start --profile {}`, then `health --profile {} --no-switch`)",
                target.name, target.name
            );
            let same_as_local =
                config.nginx.ssh.is_none() && url == health_rule::health_url(config, target);
            let local = if !asked {
                String::new()
            } else if same_as_local {
                format!(". Is it running? {}", capitalized(&start_it))
            } else if health_rule::check_health(config, target).is_ok() {
                format!(
                    ". It answers at {} on this host: make it listen where nginx connects (an address nginx reaches, or all of them), or correct {source}",
                    health_rule::health_url(config, target)
                )
            } else {
                format!(
                    ". Nor does it answer at {} on this host: {start_it}",
                    health_rule::health_url(config, target),
                )
            };
            return Err(format!(
                "{url} (where nginx connects to {}, per {source}) does not answer {expect}{from}: {why}{local}",
                target.name
            ));
        }
        log.say(format!(
            "{} answers {expect} at {url}, where nginx connects to it{from} ({})",
            target.name,
            secs(started.elapsed())
        ));
    }
    Ok(())
}

/// "start it" → "Start it".
fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on 127.0.0.1 giving `status` and `body`.
    fn serve_once(status: &'static str, body: &'static str) -> u16 {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut request = [0u8; 2048];
                let _ = conn.read(&mut request);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    /// The argv the remote check runs, run here against a real server: what
    /// curl and wget print is read as the answer it was.
    #[test]
    fn the_remote_checks_argv_read_real_answers() {
        let limit = std::time::Duration::from_secs(5);
        for (status, body, want) in [("200 OK", "real2", 200), ("503 Busy", "down", 503)] {
            let url = |port: u16| format!("http://127.0.0.1:{port}/profile");
            let out = cmd::run(&curl_argv(&url(serve_once(status, body)), limit), limit).unwrap();
            let answer = read_curl(&out).unwrap();
            assert_eq!((answer.status, answer.body.as_str()), (want, body));
            let out = cmd::run(&wget_argv(&url(serve_once(status, body)), limit), limit).unwrap();
            let answer = read_wget(&out).unwrap();
            assert_eq!(answer.status, want, "{out:?}");
            if want == 200 {
                assert_eq!(answer.body, body);
            }
        }
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{closed}/profile");
        let out = cmd::run(&curl_argv(&url, limit), limit).unwrap();
        assert!(matches!(read_curl(&out), Err(Miss::App(why)) if why.contains("curl there")));
        let out = cmd::run(&wget_argv(&url, limit), limit).unwrap();
        assert!(matches!(read_wget(&out), Err(Miss::App(why)) if why.contains("wget there")));
    }

    #[test]
    fn curl_and_wget_answers_are_read() {
        assert_eq!(
            parse_curl("real2\n200"),
            Some(http::Answer {
                status: 200,
                body: "real2".into()
            })
        );
        assert_eq!(
            parse_curl("line\nreal2\n\n503").map(|a| (a.status, a.body)),
            Some((503, "line\nreal2\n".into()))
        );
        assert_eq!(parse_curl("\n000"), None);
        assert_eq!(parse_curl("no status"), None);
        assert_eq!(
            parse_wget_status("  HTTP/1.1 302 Found\n  Location: /login\n  HTTP/1.1 200 OK\n"),
            Some(302)
        );
        assert_eq!(
            parse_wget_status("wget: can't connect to remote host: Connection refused"),
            None
        );
    }
}
