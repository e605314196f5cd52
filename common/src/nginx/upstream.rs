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
//!
//! A third: a pool of idle connections (`keepalive N;` in the upstream).
//! In this mode the old app stays in the upstream until it is stopped, so
//! nginx's workers go on reusing their pooled connections to it; the pool
//! never drains, and when the old app closes a pooled connection as it
//! stops, a request nginx has just written onto it fails. nginx resends it
//! to the other server only when it may resend that request: always for a
//! GET, for a POST only with `proxy_next_upstream ... non_idempotent`.
//! Measured with nginx 1.22 and the demo app under load (POSTs on 8
//! clients): 1-3 POSTs got a 502 per retire with a pool, none with
//! `non_idempotent`; `keepalive_timeout`/`keepalive_time` (both exist since
//! 1.15.3 / 1.19.10) bound a pooled connection's life but the pool is never
//! idle while the old app is in rotation, so no wait ends it. So a pool is
//! refused unless every location proxying to the upstream resends
//! non-idempotent requests; then retiring does not wait for the pool
//! ([`Upstream::pool_note`]).

use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::{Config, Profile};
use crate::nginx::conf::{dump_argv, split_dump, tokenize, tokenize_lines};
use crate::sys::cmd;
use crate::sys::log::Log;
use crate::sys::time::secs;

/// How long `nginx -T` may take.
const LIMIT: Duration = Duration::from_secs(30);

/// nginx's defaults for a `server` in an upstream.
const DEFAULT_MAX_FAILS: u32 = 1;
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);

/// One `upstream NAME { ... }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub name: String,
    /// The directives that pin a client to one server, as written
    /// (`ip_hash`, `hash $remote_addr`, `sticky cookie ...`).
    pub pinning: Vec<String>,
    pub servers: Vec<Server>,
    /// Its pool of idle connections (`keepalive N;`), where it is written.
    pub keepalive: Option<Written>,
    /// Whether every `proxy_pass` to it lets nginx resend a non-idempotent
    /// request that failed on the connection (`proxy_next_upstream` with
    /// `non_idempotent` in effect there); false when nothing proxies to it.
    pub resends_non_idempotent: bool,
}

/// A directive as written, and where: for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Written {
    /// `keepalive 8`.
    pub text: String,
    /// The file `nginx -T` named it in ("" when the dump named none).
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file.is_empty() {
            write!(f, "`{};` (line {})", self.text, self.line)
        } else {
            write!(f, "`{};` ({}:{})", self.text, self.file, self.line)
        }
    }
}

/// One `server ADDRESS PARAMS;` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
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
    pub(crate) fn skip_window(&self) -> Duration {
        if self.max_fails == 0 {
            Duration::ZERO
        } else {
            self.fail_timeout
        }
    }
}

impl Upstream {
    /// The server on `port`, if the upstream has one.
    pub(crate) fn server(&self, port: u16) -> Option<&Server> {
        self.servers.iter().find(|s| s.port == Some(port))
    }

    /// With a pool nginx resends from (see the module's doc): why retiring
    /// does not wait for the old app's connections to end. `None` without
    /// a pool.
    pub(crate) fn pool_note(&self, port: u16) -> Option<String> {
        let keepalive = self.keepalive.as_ref()?;
        Some(format!(
            "nginx's upstream {} keeps a pool of connections to {port} ({keepalive}) that stays in \
             use while the old app runs, so no wait ends it; nginx resends a request the old app's \
             shutdown cuts to the other server (proxy_next_upstream ... non_idempotent): stopping \
             it now",
            self.name
        ))
    }
}

/// What reading nginx's config gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Read {
    /// The upstream that lists a profile's port.
    Found(Upstream),
    /// No upstream lists either port.
    NotFound,
    /// `nginx -T` could not run or failed; why.
    Unreadable(String),
}

/// Runs `nginx -T` and finds the upstream over the profiles' ports.
pub(crate) fn read(config: &Config) -> Read {
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
pub(crate) fn check(config: &Config, log: &Log) -> Result<()> {
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
pub(crate) fn find<'a>(upstreams: &'a [Upstream], profiles: &[Profile]) -> Option<&'a Upstream> {
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
pub(crate) fn refusal(upstream: &Upstream, profiles: &[Profile]) -> Option<String> {
    if let Some(pin) = upstream.pinning.first() {
        return Some(format!(
            "nginx's upstream {} uses `{pin}`: it sends every request of one client, every probe from \
             127.0.0.1 included, to the same server, so nonstop cannot see nginx send requests to the \
             new app nor know when the old one is let go. Use round-robin or least_conn for this \
             upstream, or the include or symlink mode",
            upstream.name
        ));
    }
    if let Some(keepalive) = upstream.keepalive.as_ref() {
        if !upstream.resends_non_idempotent {
            return Some(format!(
                "nginx's upstream {name} keeps a pool of idle connections ({keepalive}). In upstream-pair \
                 mode the old app stays in the upstream until it is stopped, so nginx goes on reusing \
                 its pooled connections to it: they never drain, and when the old app closes one as it \
                 stops, a POST nginx has just written onto it gets a 502 (nginx resends only idempotent \
                 requests). Remove that `keepalive` line (nginx then opens a connection per request), or \
                 let nginx resend what the old app's shutdown cuts with `proxy_next_upstream error \
                 timeout non_idempotent;` in every location that proxies to {name} (a POST whose \
                 connection fails after it was sent is then sent to the other app as well), or use the \
                 symlink or include mode, whose reload lets the old workers close their own pools",
                name = upstream.name
            ));
        }
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

/// The upstream blocks of an nginx config dump, each with whether the
/// locations proxying to it resend non-idempotent requests.
pub(crate) fn parse(text: &str) -> Vec<Upstream> {
    let files = split_dump(text);
    let mut upstreams = Vec::new();
    for (file, text) in &files {
        let tokens = tokenize_lines(text);
        let mut i = 0;
        let mut at_start = true;
        while i < tokens.len() {
            let t = tokens[i].0.as_str();
            if at_start && t == "upstream" && tokens.get(i + 2).map(|t| t.0.as_str()) == Some("{") {
                let name = tokens[i + 1].0.clone();
                let (mut upstream, next) = parse_block(name, &tokens, i + 3);
                if let Some(k) = upstream.keepalive.as_mut() {
                    k.file.clone_from(file);
                }
                upstreams.push(upstream);
                i = next;
                at_start = true;
                continue;
            }
            at_start = matches!(t, ";" | "{" | "}");
            i += 1;
        }
    }
    let sites = proxy_passes(&files);
    for u in &mut upstreams {
        let to_it: Vec<&Option<Vec<String>>> = sites
            .iter()
            .filter(|(target, _)| proxies_to(target, &u.name))
            .map(|(_, next)| next)
            .collect();
        u.resends_non_idempotent = !to_it.is_empty()
            && to_it.iter().all(|next| {
                next.as_ref()
                    .is_some_and(|words| words.iter().any(|w| w == "non_idempotent"))
            });
    }
    upstreams
}

/// Whether `proxy_pass TARGET` sends to upstream `name`.
fn proxies_to(target: &str, name: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        target.strip_prefix(scheme).is_some_and(|rest| {
            rest == name || rest.strip_prefix(name).is_some_and(|r| r.starts_with('/'))
        })
    })
}

/// A block of nginx's config: its own statements and its blocks.
#[derive(Default)]
struct Block {
    statements: Vec<Vec<String>>,
    blocks: Vec<(Vec<String>, Block)>,
}

fn parse_tree(tokens: &[String], i: &mut usize) -> Block {
    let mut block = Block::default();
    let mut words: Vec<String> = Vec::new();
    while *i < tokens.len() {
        let t = tokens[*i].clone();
        *i += 1;
        match t.as_str() {
            "{" => {
                let header = std::mem::take(&mut words);
                let inner = parse_tree(tokens, i);
                block.blocks.push((header, inner));
            }
            "}" => break,
            ";" => block.statements.push(std::mem::take(&mut words)),
            _ => words.push(t),
        }
    }
    block
}

/// Every `proxy_pass` of the config, with the `proxy_next_upstream` in
/// effect there (its words; `None`: nginx's default, `error timeout`): the
/// innermost enclosing block that sets it, up to the file's top, then the
/// main file's `http` block (a file included into it inherits from there).
fn proxy_passes(files: &[(String, String)]) -> Vec<(String, Option<Vec<String>>)> {
    let trees: Vec<Block> = files
        .iter()
        .map(|(_, text)| parse_tree(&tokenize(text), &mut 0))
        .collect();
    let next_upstream = |b: &Block| {
        b.statements
            .iter()
            .rev()
            .find(|s| s.first().map(String::as_str) == Some("proxy_next_upstream"))
            .map(|s| s[1..].to_vec())
    };
    let http = trees.first().and_then(|main| {
        main.blocks
            .iter()
            .find(|(h, _)| h.first().map(String::as_str) == Some("http"))
            .and_then(|(_, b)| next_upstream(b))
    });
    fn walk<'a>(
        block: &'a Block,
        stack: &mut Vec<&'a Block>,
        out: &mut Vec<(String, Vec<&'a Block>)>,
    ) {
        stack.push(block);
        for s in &block.statements {
            if let [directive, target, ..] = s.as_slice() {
                if directive == "proxy_pass" {
                    out.push((target.clone(), stack.clone()));
                }
            }
        }
        for (_, inner) in &block.blocks {
            walk(inner, stack, out);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    for tree in &trees {
        let mut sites = Vec::new();
        walk(tree, &mut Vec::new(), &mut sites);
        for (target, stack) in sites {
            let next = stack
                .iter()
                .rev()
                .find_map(|b| next_upstream(b))
                .or_else(|| http.clone());
            found.push((target, next));
        }
    }
    found
}

/// Reads the statements of an upstream block starting at `i` (after its
/// `{`); returns it and the index after its `}`.
fn parse_block(name: String, tokens: &[(String, usize)], mut i: usize) -> (Upstream, usize) {
    let mut upstream = Upstream {
        name,
        pinning: Vec::new(),
        servers: Vec::new(),
        keepalive: None,
        resends_non_idempotent: false,
    };
    let mut statement: Vec<&str> = Vec::new();
    let mut first_line = 0;
    let mut depth = 0usize;
    while i < tokens.len() {
        let (t, line) = (tokens[i].0.as_str(), tokens[i].1);
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
                    statement_into(&mut upstream, &statement, first_line);
                }
                statement.clear();
            }
            word => {
                if statement.is_empty() {
                    first_line = line;
                }
                statement.push(word);
            }
        }
    }
    (upstream, i)
}

fn statement_into(upstream: &mut Upstream, words: &[&str], line: usize) {
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
        ["keepalive", ..] => {
            upstream.keepalive = Some(Written {
                text: words.join(" "),
                file: String::new(),
                line,
            });
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
        // Its pool, where it is written; nothing resends a POST: refused.
        let keepalive = app.keepalive.as_ref().unwrap();
        assert_eq!(
            keepalive.to_string(),
            "`keepalive 8;` (/etc/nginx/nginx.conf:8)"
        );
        assert!(!app.resends_non_idempotent);
        let why = refusal(app, &profiles()).unwrap();
        assert!(
            why.contains("`keepalive 8;` (/etc/nginx/nginx.conf:8)"),
            "{why}"
        );
        assert!(why.contains("non_idempotent"), "{why}");
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

    /// Where `proxy_next_upstream` is in effect: the location, its server,
    /// the file's top, or the main file's `http` block for a site file.
    #[test]
    fn a_pool_is_accepted_only_where_nginx_resends_a_post() {
        let dump = |location: &str, server: &str, http: &str| {
            format!(
                "# configuration file /etc/nginx/nginx.conf:
http {{
    {http}
    upstream app {{ server 127.0.0.1:8081; server 127.0.0.1:8082; keepalive 16; }}
    include /etc/nginx/sites-enabled/*;
}}

# configuration file /etc/nginx/sites-enabled/app:
server {{
    listen 80;
    {server}
    location / {{ proxy_pass http://app; {location} }}
    location /api/ {{ proxy_pass http://app/v1/; }}
    location /other {{ proxy_pass http://application; }}
}}
"
            )
        };
        let judge = |text: &str| {
            let all = parse(text);
            let app = find(&all, &profiles()).unwrap().clone();
            (app.resends_non_idempotent, refusal(&app, &profiles()))
        };
        let resend = "proxy_next_upstream error timeout non_idempotent;";
        // In the server block, or in nginx.conf's http block: both locations.
        assert_eq!(judge(&dump("", resend, "")), (true, None));
        assert_eq!(judge(&dump("", "", resend)), (true, None));
        // In one location only: /api/ still loses POSTs.
        let (resends, why) = judge(&dump(resend, "", ""));
        assert!(!resends && why.unwrap().contains("keepalive 16"));
        // A location's own setting overrides the server's.
        let (resends, _) = judge(&dump("proxy_next_upstream error;", resend, ""));
        assert!(!resends);
        // With the pool accepted, retiring says why it does not wait.
        let all = parse(&dump("", resend, ""));
        let note = find(&all, &profiles()).unwrap().pool_note(8081).unwrap();
        assert!(
            note.contains("`keepalive 16;` (/etc/nginx/nginx.conf:3)"),
            "{note}"
        );
        // No pool, no refusal and no note, whatever the locations say.
        let plain = parse("upstream app { server 127.0.0.1:8081; server 127.0.0.1:8082; }");
        let app = find(&plain, &profiles()).unwrap();
        assert_eq!(
            (refusal(app, &profiles()), app.pool_note(8081)),
            (None, None)
        );
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
