//! Upstream-pair mode: what nginx's own config says about the upstream that
//! balances over the two profiles' ports, read from `nginx -T` (the
//! configured `nginx.test` argv with `-t` turned into `-T`).
//!
//! nonstop reasons about that upstream in two places: whether a probe
//! through nginx can tell that nginx sends the new app requests at all
//! (`ip_hash`, `hash`, `sticky` pin every probe from 127.0.0.1 to one
//! server, so it cannot: refused before anything is stopped), and how long
//! a worker may still skip the new app's port after it refused connections
//! while starting (the server's `fail_timeout`, none with `max_fails=0`).
//! The config is only read: its text never reaches a command, a path or a
//! config line.

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::cmd;
use crate::config::{Config, Profile};
use crate::log::Log;
use crate::time::secs;

/// How long `nginx -T` may take.
const LIMIT: Duration = Duration::from_secs(30);

/// nginx's defaults for a `server` in an upstream.
const DEFAULT_MAX_FAILS: u32 = 1;
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// One `upstream NAME { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    /// The directives that pin a client to one server, as written
    /// (`ip_hash`, `hash $remote_addr`, `sticky cookie ...`).
    pub pinning: Vec<String>,
    pub servers: Vec<Server>,
}

/// One `server ADDRESS PARAMS;` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub address: String,
    /// The port of the address (80 when none); `None` for a unix socket.
    pub port: Option<u16>,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// `backup` or `down`, which keep it out of the normal rotation.
    pub flags: Vec<String>,
}

impl Server {
    /// How long nginx may skip this server after it refused: its
    /// `fail_timeout`, or nothing with `max_fails=0`.
    pub fn skip_window(&self) -> Duration {
        if self.max_fails == 0 {
            Duration::ZERO
        } else {
            self.fail_timeout
        }
    }
}

impl Upstream {
    /// The server on `port`, if the upstream has one.
    pub fn server(&self, port: u16) -> Option<&Server> {
        self.servers.iter().find(|s| s.port == Some(port))
    }
}

/// What reading nginx's config gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The upstream that lists a profile's port.
    Found(Upstream),
    /// No upstream lists either port.
    NotFound,
    /// `nginx -T` could not run or failed; why.
    Unreadable(String),
}

/// The argv that dumps nginx's config: `nginx.test` with `-t` as `-T`
/// (or `-T` added), so a custom binary, prefix or `-c` is kept.
pub fn dump_argv(config: &Config) -> Vec<String> {
    let mut argv = config.nginx.test.clone();
    match argv.iter_mut().find(|a| a.as_str() == "-t") {
        Some(t) => *t = "-T".into(),
        None => argv.push("-T".into()),
    }
    argv
}

/// Runs `nginx -T` and finds the upstream over the profiles' ports.
pub fn read(config: &Config) -> Read {
    let argv = dump_argv(config);
    match cmd::run(&argv, LIMIT) {
        Ok(out) if out.success() => match find(&parse(&out.stdout), &config.profiles) {
            Some(u) => Read::Found(u.clone()),
            None => Read::NotFound,
        },
        Ok(out) => Read::Unreadable(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            out.message()
        )),
        Err(e) => Read::Unreadable(format!("{e:#}")),
    }
}

/// Before a deployment changes anything: refuses an upstream nonstop cannot
/// reason about, naming why; warns when nginx's config cannot be read or
/// lists neither port (then `nginx.fail_timeout_secs` is all it has).
pub fn check(config: &Config, log: &Log) -> Result<()> {
    match read(config) {
        Read::Found(u) => match refusal(&u, &config.profiles) {
            Some(why) => Err(anyhow!("{why}; nothing was stopped or started")),
            None => Ok(()),
        },
        Read::NotFound => {
            let ports: Vec<String> = config.profiles.iter().map(|p| p.port.to_string()).collect();
            log.warn(format!(
                "no upstream in the config `{}` shows lists port {}; going by nginx.fail_timeout_secs ({})",
                dump_argv(config).join(" "),
                ports.join(" or "),
                secs(config.nginx.fail_timeout)
            ));
            Ok(())
        }
        Read::Unreadable(why) => {
            log.warn(format!(
                "cannot read nginx's upstream ({why}); going by nginx.fail_timeout_secs ({})",
                secs(config.nginx.fail_timeout)
            ));
            Ok(())
        }
    }
}

/// The upstream that lists both profiles' ports, else the first that lists one.
pub fn find<'a>(upstreams: &'a [Upstream], profiles: &[Profile]) -> Option<&'a Upstream> {
    let lists = |u: &Upstream, p: &Profile| u.server(p.port).is_some();
    upstreams
        .iter()
        .find(|u| profiles.iter().all(|p| lists(u, p)))
        .or_else(|| {
            upstreams
                .iter()
                .find(|u| profiles.iter().any(|p| lists(u, p)))
        })
}

/// Why nonstop cannot work with this upstream, if it cannot.
pub fn refusal(upstream: &Upstream, profiles: &[Profile]) -> Option<String> {
    if let Some(pin) = upstream.pinning.first() {
        return Some(format!(
            "nginx's upstream {} uses `{pin}`: it sends every request of one client, every probe from \
             127.0.0.1 included, to the same server, so nonstop cannot see nginx send requests to the \
             new app nor know when the old one is let go. Use round-robin or least_conn for this \
             upstream, or the include or symlink mode",
            upstream.name
        ));
    }
    for p in profiles {
        match upstream.server(p.port) {
            None => {
                return Some(format!(
                    "nginx's upstream {} does not list {}'s port {}, so nginx would never send requests \
                     to it; add `server 127.0.0.1:{};` to it",
                    upstream.name, p.name, p.port, p.port
                ))
            }
            Some(s) if !s.flags.is_empty() => {
                return Some(format!(
                    "nginx's upstream {} marks {}'s server {} `{}`, so it is not in the normal rotation; \
                     remove that flag",
                    upstream.name,
                    p.name,
                    s.address,
                    s.flags.join(" ")
                ))
            }
            Some(_) => {}
        }
    }
    None
}

/// The upstream blocks of an nginx config dump.
pub fn parse(text: &str) -> Vec<Upstream> {
    let tokens = tokenize(text);
    let mut upstreams = Vec::new();
    let mut i = 0;
    let mut at_start = true;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        if at_start && t == "upstream" && tokens.get(i + 2).map(String::as_str) == Some("{") {
            let name = tokens[i + 1].clone();
            let (upstream, next) = parse_block(name, &tokens, i + 3);
            upstreams.push(upstream);
            i = next;
            at_start = true;
            continue;
        }
        at_start = matches!(t, ";" | "{" | "}");
        i += 1;
    }
    upstreams
}

/// Reads the statements of an upstream block starting at `i` (after its
/// `{`); returns it and the index after its `}`.
fn parse_block(name: String, tokens: &[String], mut i: usize) -> (Upstream, usize) {
    let mut upstream = Upstream {
        name,
        pinning: Vec::new(),
        servers: Vec::new(),
    };
    let mut statement: Vec<&str> = Vec::new();
    let mut depth = 0usize;
    while i < tokens.len() {
        let t = tokens[i].as_str();
        i += 1;
        match t {
            "{" => {
                depth += 1;
                statement.clear();
            }
            "}" if depth == 0 => break,
            "}" => {
                depth -= 1;
                statement.clear();
            }
            ";" => {
                if depth == 0 {
                    statement_into(&mut upstream, &statement);
                }
                statement.clear();
            }
            word => statement.push(word),
        }
    }
    (upstream, i)
}

fn statement_into(upstream: &mut Upstream, words: &[&str]) {
    match words {
        ["server", address, params @ ..] => {
            let mut server = Server {
                address: (*address).to_string(),
                port: port_of(address),
                max_fails: DEFAULT_MAX_FAILS,
                fail_timeout: DEFAULT_FAIL_TIMEOUT,
                flags: Vec::new(),
            };
            for p in params {
                if let Some(v) = p.strip_prefix("max_fails=") {
                    server.max_fails = v.parse().unwrap_or(DEFAULT_MAX_FAILS);
                } else if let Some(v) = p.strip_prefix("fail_timeout=") {
                    server.fail_timeout = nginx_time(v).unwrap_or(DEFAULT_FAIL_TIMEOUT);
                } else if matches!(*p, "backup" | "down") {
                    server.flags.push((*p).to_string());
                }
            }
            upstream.servers.push(server);
        }
        [first, ..] if matches!(*first, "ip_hash" | "hash" | "sticky") => {
            upstream.pinning.push(words.join(" "));
        }
        _ => {}
    }
}

/// The port of an upstream server address: `127.0.0.1:8081`, `[::1]:8081`,
/// `localhost` (80); `None` for `unix:...`.
fn port_of(address: &str) -> Option<u16> {
    if address.starts_with("unix:") {
        return None;
    }
    let port = match address.strip_prefix('[') {
        Some(v6) => v6
            .split_once(']')
            .and_then(|(_, rest)| rest.strip_prefix(':')),
        None => address.rsplit_once(':').map(|(_, p)| p),
    };
    match port {
        Some(p) => p.parse().ok(),
        None => Some(80),
    }
}

/// An nginx time: `10`, `10s`, `500ms`, `1m30s`, `1h`.
fn nginx_time(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest.get(..digits)?.parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86_400),
            _ => return None,
        };
    }
    Some(total)
}

/// nginx's config as words, with `{`, `}` and `;` as their own tokens;
/// comments dropped, quoted strings kept whole (without their quotes).
pub fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = text.chars().peekable();
    let flush = |word: &mut String, tokens: &mut Vec<String>| {
        if !word.is_empty() {
            tokens.push(std::mem::take(word));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '#' if word.is_empty() => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '"' | '\'' if word.is_empty() => {
                while let Some(n) = chars.next() {
                    match n {
                        '\\' => {
                            if let Some(e) = chars.next() {
                                word.push(e);
                            }
                        }
                        q if q == c => break,
                        other => word.push(other),
                    }
                }
                // An empty quoted string is still a word.
                tokens.push(std::mem::take(&mut word));
            }
            '{' | '}' | ';' => {
                flush(&mut word, &mut tokens);
                tokens.push(c.to_string());
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            '\\' => {
                if let Some(e) = chars.next() {
                    word.push(e);
                }
            }
            other => word.push(other),
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> Vec<Profile> {
        vec![
            Profile {
                name: "real1".into(),
                port: 8081,
            },
            Profile {
                name: "real2".into(),
                port: 8082,
            },
        ]
    }

    const DUMP: &str = r#"# configuration file /etc/nginx/nginx.conf:
http {
    upstream other { server 10.0.0.1:9000; }
    # upstream app { ip_hash; }
    upstream app {
        zone app 64k;
        server 127.0.0.1:8081 max_fails=0;
        server localhost:8082 fail_timeout=5s weight=2;
        keepalive 8;
    }
    server {
        listen 80;
        location / { proxy_pass http://app; add_header X "upstream x { ip_hash; }"; }
    }
}
"#;

    #[test]
    fn the_upstream_over_both_ports_is_found_with_its_settings() {
        let all = parse(DUMP);
        assert_eq!(all.len(), 2, "{all:?}");
        let app = find(&all, &profiles()).unwrap();
        assert_eq!(app.name, "app");
        assert!(app.pinning.is_empty());
        assert_eq!(refusal(app, &profiles()), None);
        let s1 = app.server(8081).unwrap();
        assert_eq!((s1.max_fails, s1.skip_window()), (0, Duration::ZERO));
        let s2 = app.server(8082).unwrap();
        assert_eq!(s2.skip_window(), Duration::from_secs(5));
    }

    #[test]
    fn pinning_balancers_a_missing_port_and_flags_are_refused() {
        for pin in [
            "ip_hash;",
            "hash $remote_addr consistent;",
            "sticky cookie srv;",
        ] {
            let text =
                format!("upstream app {{ {pin} server 127.0.0.1:8081; server 127.0.0.1:8082; }}");
            let all = parse(&text);
            let why = refusal(find(&all, &profiles()).unwrap(), &profiles()).unwrap();
            assert!(why.contains(pin.trim_end_matches(';')), "{why}");
        }
        let all = parse("upstream app { server 127.0.0.1:8081; }");
        let why = refusal(find(&all, &profiles()).unwrap(), &profiles()).unwrap();
        assert!(why.contains("8082"), "{why}");
        let all = parse("upstream app { server 127.0.0.1:8081; server [::1]:8082 backup; }");
        let why = refusal(find(&all, &profiles()).unwrap(), &profiles()).unwrap();
        assert!(why.contains("backup"), "{why}");
        assert!(find(&parse("upstream x { server unix:/s; }"), &profiles()).is_none());
    }

    #[test]
    fn nginx_times_and_ports() {
        assert_eq!(nginx_time("10"), Some(Duration::from_secs(10)));
        assert_eq!(nginx_time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(nginx_time("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(nginx_time("x"), None);
        assert_eq!(port_of("127.0.0.1:8081"), Some(8081));
        assert_eq!(port_of("[::1]:8082"), Some(8082));
        assert_eq!(port_of("[::1]"), Some(80));
        assert_eq!(port_of("backend"), Some(80));
        assert_eq!(port_of("unix:/run/app.sock"), None);
    }
}
