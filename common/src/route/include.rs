//! The include mode, the book's: one file nginx includes in the server
//! block that proxies to `$service_url`, holding one line rendered from
//! `nginx.template` (`set $service_url http://127.0.0.1:8081;`). A switch
//! rewrites it whole, tests nginx's config, reloads, and confirms once the
//! workers of the previous configuration stopped accepting.
//!
//! The include is read as the exact rendering of the template for a
//! profile, or failing that by the one configured `:PORT` it mentions
//! outside comments (the book's hand-written line). Since a switch
//! rewrites it whole, it must hold nothing but that route: anything else in
//! it is refused before anything is stopped ([`foreign_statements`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::config::template::render;
use crate::config::waits::{Part, Steps};
use crate::config::{Config, Profile};
use crate::nginx::blocks::{
    answering_url, has_proxy_pass, includes_of, loaded, server_blocks, server_including,
    with_included, Block,
};
use crate::nginx::conf::{dump_argv, split_dump, statements, tokenize, Statement};
use crate::route::address::Seen;
use crate::route::host::Host;
use crate::route::mode::{Commands, Include, Line, Mode, Witness};
use crate::route::reloading;
use crate::state::RouteId;
use crate::sys::error::usage;
use crate::sys::log::Log;

/// The include file of `config`, on `host`.
#[derive(Debug)]
pub(crate) struct IncludeFile<'a> {
    pub config: &'a Config,
    pub host: Host<'a>,
}

impl Mode for IncludeFile<'_> {
    fn id(&self) -> RouteId {
        RouteId {
            mode: self.config.nginx.mode.to_string(),
            path: self.config.nginx.include.clone(),
            host: self.host.ssh().map(|s| s.destination.clone()),
        }
    }

    fn noun(&self) -> &'static str {
        "include file"
    }

    fn describe(&self) -> String {
        format!(
            "the include file {}{}",
            self.config.nginx.include.display(),
            self.host.on()
        )
    }

    fn directory(&self) -> Option<(&'static str, PathBuf)> {
        let dir = self.config.nginx.include.parent()?;
        Some(("include file's directory", dir.to_path_buf()))
    }

    fn witness(&self) -> Result<Witness> {
        Ok(Witness::Route(match self.read()? {
            None => Include::Missing,
            Some(bytes) => self.classify(&bytes),
        }))
    }

    fn content_for(&self, profile: &Profile) -> Option<Vec<u8>> {
        Some(self.config.include_line(profile).into_bytes())
    }

    fn read(&self) -> Result<Option<Vec<u8>>> {
        self.host
            .read_file(&self.config.nginx.include, &self.describe())
    }

    fn classify(&self, content: &[u8]) -> Include {
        classify(self.config, &String::from_utf8_lossy(content))
    }

    /// Refuses (exit 2: the config and the include disagree, nothing is
    /// touched) an include that holds more than the route: a switch
    /// rewrites the whole file from `nginx.template`, which would drop the
    /// rest. Those lines belong beside the include, where nonstop never
    /// writes.
    fn refuse_foreign(&self, content: Option<&[u8]>) -> Result<()> {
        let config = self.config;
        // The maintenance route is nonstop's own, whole.
        if let Some(c) = content {
            if matches!(self.classify(c), Include::Maintenance(_)) {
                return Ok(());
            }
        }
        let foreign = content
            .map(|c| foreign_statements(config, c))
            .unwrap_or_default();
        if foreign.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = foreign.iter().map(ToString::to_string).collect();
        Err(usage(format!(
            "{} holds more than the route nonstop writes there: {}. A switch rewrites the whole file from nginx.template \
             ({:?}), so {} would be dropped. Move {} beside the `include` of that file (in the same server block, or a \
             file of their own), then run again; nothing was changed",
            self.describe(),
            listed.join(", "),
            config.nginx.template,
            if foreign.len() == 1 { "it" } else { "they" },
            if foreign.len() == 1 { "that line" } else { "those lines" },
        )))
    }

    fn write(&self, content: &[u8]) -> Result<()> {
        self.host
            .write_file(&self.config.nginx.include, content, &self.describe())
    }

    fn remove(&self) -> Result<()> {
        self.host
            .remove(&self.config.nginx.include, &self.describe())
    }

    fn commands(&self) -> Commands<'_> {
        reloading::commands(self.config)
    }

    fn before_write(&self, log: &Log) -> Result<()> {
        reloading::before_write(self.config, log)
    }

    fn accepting_workers(&self, log: &Log) -> Option<Vec<i32>> {
        reloading::accepting_workers(self.config, log)
    }

    fn steady_for(&self, workers: Option<&[i32]>) -> Duration {
        reloading::steady_for(workers)
    }

    fn await_traffic(&self, _log: &Log, _live: Option<&Profile>, _target: &Profile) -> Result<()> {
        Ok(())
    }

    fn rotation(&self) -> Option<&'static str> {
        None
    }

    /// Its directory takes a new entry, and the include holds nothing a
    /// rewrite would drop.
    fn check_ready(&self, _log: &Log) -> Result<()> {
        self.host.check_route_dir(self.directory())?;
        self.refuse_foreign(self.read()?.as_deref())
    }

    fn connects_to(&self, target: &Profile) -> Seen {
        Seen::in_text(
            &self.config.include_line(target),
            "nginx.template".to_string(),
            target.port,
        )
    }

    fn drain_note(&self, _port: u16) -> Option<String> {
        None
    }

    fn waits(&self, part: Part, steps: &mut Steps) {
        reloading::waits(self.config, part, steps);
    }

    /// The include file is loaded, inside a server block (maybe through
    /// snippets) that proxies to the variable it sets, and that block is
    /// the one that answers `probe_url`.
    fn check_config(&self, dump: &str) -> Vec<Line> {
        let files = split_dump(dump);
        let mut lines = vec![self.routes_through(&files)];
        lines.extend(self.probe_block(&files));
        lines
    }

    /// It holds only the route, since a switch rewrites it whole from
    /// `nginx.template` ([`foreign_statements`], the check `stop` and the
    /// switch make).
    fn check_route(&self) -> Vec<Line> {
        let what = self.describe();
        let mut lines = vec![match self.read() {
            Ok(None) => Line::Ok(format!(
                "{what} does not exist yet; the first switch writes it"
            )),
            Ok(Some(content)) if matches!(self.classify(&content), Include::Maintenance(_)) => {
                Line::Warn(format!(
                    "{what} holds the maintenance page's route: nginx answers every request 503; `switch --live` ends it"
                ))
            }
            Ok(Some(content)) => {
                let foreign = foreign_statements(self.config, &content);
                if foreign.is_empty() {
                    Line::Ok(format!("{what} holds only the route nonstop writes"))
                } else {
                    let listed: Vec<String> = foreign.iter().map(ToString::to_string).collect();
                    Line::Fail(
                        format!(
                            "{what} holds more than the route: {}; a switch rewrites the whole file from nginx.template, which would drop it",
                            listed.join(", ")
                        ),
                        format!(
                            "move {} beside the `include` of that file (in the same server block), then `nginx -t && nginx -s reload`",
                            if foreign.len() == 1 { "that line" } else { "those lines" }
                        ),
                    )
                }
            }
            Err(e) => Line::Fail(
                format!("cannot read {what}: {e:#}"),
                "make it (and its directory) readable by this user".into(),
            ),
        }];
        lines.extend(self.keepalive_min_timeout());
        lines
    }

    fn needs_dump(&self) -> bool {
        false
    }

    fn maintenance_page(&self) -> Result<PathBuf> {
        let dir = self
            .directory()
            .map(|(_, d)| d)
            .ok_or_else(|| usage("switch --maintenance: nginx.include has no directory"))?;
        crate::route::page::page_dir_fits(&dir)?;
        Ok(dir.join(crate::route::page::PAGE_NAME))
    }

    fn maintenance_content(&self, keep: &Profile, retry_after: u32) -> Result<Vec<u8>> {
        let page = self.maintenance_page()?;
        let dir = page.parent().unwrap_or(std::path::Path::new("/"));
        Ok(
            crate::route::page::server_lines(&self.config.include_line(keep), dir, retry_after)
                .into_bytes(),
        )
    }

    fn write_page(&self, _keep: &Profile, _retry_after: u32, content: &[u8]) -> Result<()> {
        let page = self.maintenance_page()?;
        self.host.write_file(
            &page,
            content,
            &format!("the maintenance page {}", page.display()),
        )
    }
}

impl IncludeFile<'_> {
    /// On nginx >= 1.27.4, whether nginx's config sets
    /// `keepalive_min_timeout` ([`keepalive_line`]); nothing on an older
    /// nginx (or one whose version cannot be read).
    fn keepalive_min_timeout(&self) -> Option<Line> {
        let mut argv = dump_argv(self.config);
        if let Some(t) = argv.iter_mut().find(|a| a.as_str() == "-T") {
            *t = "-v".into();
        }
        let out = self.host.run(&argv, VERSION_LIMIT).ok()?;
        let version = nginx_version(&format!("{}{}", out.stderr, out.stdout))?;
        if version < KEEPALIVE_MIN_TIMEOUT_SINCE {
            return None;
        }
        let dump = self.host.run(&dump_argv(self.config), VERSION_LIMIT).ok()?;
        let words: Vec<String> = split_dump(&dump.stdout)
            .iter()
            .flat_map(|(_, t)| tokenize(t))
            .collect();
        keepalive_line(version, words.iter().any(|w| w == "keepalive_min_timeout"))
    }

    /// The include file is loaded, inside a server block (maybe through
    /// snippets), and that block proxies to the variable it sets.
    fn routes_through(&self, files: &[(String, String)]) -> Line {
        let config = self.config;
        let include = config.nginx.include.display().to_string();
        let var = template_variable(&config.nginx.template);
        let proxy = var
            .as_deref()
            .map(|v| format!("proxy_pass {v};"))
            .unwrap_or_default();
        let fix_server = format!(
            "add `include {include};` to the server block that answers {} and `location / {{ {proxy} }}` beside it, then `nginx -t && nginx -s reload`",
            config.probe_url
        );
        if !loaded(self.host.is_local(), files, &config.nginx.include) {
            return Line::Fail(
                format!("nginx's loaded config never reads the include file {include}, so writing it changes nothing (the port never switches)"),
                fix_server,
            );
        }
        let sites = includes_of(files, &include);
        let Some(site) = server_including(files, &include, 4) else {
            let at = sites
                .first()
                .map(|s| format!(" (it is included in {} outside any server block)", s.file))
                .unwrap_or_default();
            return Line::Fail(
                format!("the include file {include} is not included inside a server block{at}"),
                fix_server,
            );
        };
        match var {
            Some(v) if !has_proxy_pass(&with_included(files, &site.server_words), &v) => Line::Fail(
                format!("the server block in {} that includes {include} has no `proxy_pass {v};`, so the include's {v} routes nothing", site.file),
                format!("add `location / {{ proxy_pass {v}; }}` to that server block, then `nginx -t && nginx -s reload`"),
            ),
            Some(v) => Line::Ok(format!("nginx includes {include} in a server block of {} that proxies to {v}", site.file)),
            None => Line::Ok(format!("nginx includes {include} in a server block of {}", site.file)),
        }
    }

    /// The server block that includes the include file is the one that
    /// answers `probe_url` (its port and address against `listen`, its Host
    /// against `server_name`, else `default_server`, else the first): an
    /// include in another block switches nothing the probe (or a user on
    /// that address) sees. Nothing when the include is in no server block
    /// (the routing check already failed on that).
    fn probe_block(&self, files: &[(String, String)]) -> Option<Line> {
        let config = self.config;
        let include = config.nginx.include.display().to_string();
        let site = server_including(files, &include, 4)?;
        let blocks = server_blocks(files);
        let (answers, host, port) = answering_url(&blocks, &config.probe_url)?;
        let with_include = blocks
            .iter()
            .find(|b| b.file == site.file && b.words == site.server_words);
        if answers.file == site.file && answers.words == site.server_words {
            return Some(Line::Ok(format!(
                "probe_url's request (Host {host}, port {port}) is answered by the server block that includes {include}, {}",
                answers.describe()
            )));
        }
        let holder = with_include
            .map(Block::describe)
            .unwrap_or_else(|| format!("a server block in {}", site.file));
        Some(Line::Fail(
            format!(
                "{include} is included in {holder}, but probe_url's request (Host {host}, port {port}) is answered by {}: switching changes a block nobody on {host}:{port} reaches",
                answers.describe()
            ),
            format!(
                "move the `include {include};` line and its `location /` into {} (or set probe_url to the host and port of the block that has them), then `nginx -t && nginx -s reload`",
                answers.describe()
            ),
        ))
    }
}

/// How long `nginx -v` and `nginx -T` may take for that line.
const VERSION_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The first nginx with `keepalive_min_timeout`.
const KEEPALIVE_MIN_TIMEOUT_SINCE: (u32, u32, u32) = (1, 27, 4);

/// `nginx version: nginx/1.27.4` (what `nginx -v` prints) as numbers.
fn nginx_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split("nginx/").nth(1)?;
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The `--check` line about `keepalive_min_timeout`, on an nginx that has
/// it: each switch reloads nginx, whose old workers close their idle
/// kept-alive connections at once, so a request a client writes onto one at
/// that moment is lost (a POST cannot be resent); with the directive they
/// keep them open that long after the reload and serve such a request.
fn keepalive_line(version: (u32, u32, u32), set: bool) -> Option<Line> {
    if version < KEEPALIVE_MIN_TIMEOUT_SINCE {
        return None;
    }
    let (a, b, c) = version;
    Some(if set {
        Line::Ok(format!(
            "nginx {a}.{b}.{c} sets keepalive_min_timeout: idle kept-alive connections outlive each switch's reload by that long, so a request written onto one at the reload is served, not lost"
        ))
    } else {
        Line::Warn(format!(
            "nginx {a}.{b}.{c} has keepalive_min_timeout, unset here: each switch's reload closes idle kept-alive connections at once, and a request a client writes onto one at that instant is lost (a POST cannot be resent). Add `keepalive_min_timeout 1s;` to the http block (kept-alive connections are then kept that long after a reload), or use \"mode\": \"realpath\", which never reloads"
        ))
    })
}

/// The variable the include sets (`$service_url` for the book's template).
fn template_variable(template: &str) -> Option<String> {
    let words = tokenize(template);
    (words.first().map(String::as_str) == Some("set"))
        .then(|| words.get(1).cloned())
        .flatten()
}

/// Which profile the include's text names: the exact rendering of the
/// template for a profile, else the one configured `:PORT` it mentions
/// outside comments.
pub fn classify(config: &Config, content: &str) -> Include {
    if let Some(keep) = crate::route::page::kept_by(config, content) {
        return Include::Maintenance(keep);
    }
    let trimmed = content.trim();
    if let Some(p) = config
        .profiles
        .iter()
        .find(|p| config.include_line(p).trim() == trimmed)
    {
        return Include::Names(p.clone());
    }
    // Not our exact rendering (edited by hand, written by the book's `tee`):
    // look for `:PORT` not followed by a digit, outside comments.
    let code: String = content
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let named: Vec<&Profile> = config
        .profiles
        .iter()
        .filter(|p| mentions_port(&code, p.port))
        .collect();
    match named.as_slice() {
        [] => Include::NamesNone,
        [one] => Include::Names((*one).clone()),
        _ => Include::NamesBoth,
    }
}

/// Stands for `{port}` and `{profile}` when the template is split into
/// words: a character no config text holds.
const ANY: char = '\u{E000}';

/// What a switch would drop from an include: its statements that are not
/// the route. A statement is the route when it has the shape of one of
/// `nginx.template`'s: the same words (`;` aside), where a word holding
/// `{port}` or `{profile}` may be any word (so the book's hand-written
/// `set $service_url http://localhost:8080;` is the route; a
/// `client_max_body_size 20m;` beside it is not); or when it names a
/// configured profile's `:PORT`, as detection reads it (the route a previous
/// template wrote). Comments are not statements.
pub(crate) fn foreign_statements(config: &Config, content: &[u8]) -> Vec<Statement> {
    let any = ANY.to_string();
    let template = render(&config.nginx.template, &[("port", &any), ("profile", &any)]);
    let words = |st: &Statement| -> Vec<String> {
        st.words.iter().filter(|w| *w != ";").cloned().collect()
    };
    let shapes: Vec<Vec<String>> = statements(&template).iter().map(words).collect();
    let fits = |st: &Statement| {
        let own = words(st);
        let shaped = shapes.iter().any(|shape| {
            shape.len() == own.len()
                && shape
                    .iter()
                    .zip(&own)
                    .all(|(s, w)| s == w || s.contains(ANY))
        });
        shaped
            || config
                .profiles
                .iter()
                .any(|p| mentions_port(&own.join(" "), p.port))
    };
    statements(&String::from_utf8_lossy(content))
        .into_iter()
        .filter(|st| !fits(st))
        .collect()
}

fn mentions_port(text: &str, port: u16) -> bool {
    let needle = format!(":{port}");
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn p(i: usize) -> Profile {
        let (name, port) = [("real1", 8081), ("real2", 8082)][i];
        Profile {
            name: name.into(),
            port,
        }
    }

    #[test]
    fn include_is_read_exactly_or_by_its_port() {
        let c = crate::config::parse(r#"{"app": {"dir": "/a"}}"#, Path::new("t.json")).unwrap();
        assert_eq!(
            classify(&c, "set $service_url http://127.0.0.1:8082;\n"),
            Include::Names(p(1))
        );
        // The book's hand-written form, with other spacing.
        assert_eq!(
            classify(&c, "  set $service_url   http://localhost:8081 ;"),
            Include::Names(p(0))
        );
        // 80812 is not 8081; the book's step2 port is nobody's.
        assert_eq!(
            classify(&c, "set $service_url http://127.0.0.1:80812;"),
            Include::NamesNone
        );
        assert_eq!(
            classify(&c, "set $service_url http://127.0.0.1:8080;"),
            Include::NamesNone
        );
        // A comment does not count.
        assert_eq!(
            classify(&c, "# was :8082\nset $service_url http://127.0.0.1:8081;"),
            Include::Names(p(0))
        );
        assert_eq!(
            classify(&c, "server 127.0.0.1:8081;\nserver 127.0.0.1:8082;"),
            Include::NamesBoth
        );
    }

    #[test]
    fn only_the_routes_own_statements_may_be_in_the_include() {
        let c = crate::config::parse(r#"{"app": {"dir": "/a"}}"#, Path::new("t.json")).unwrap();
        let foreign = |text: &str| -> Vec<String> {
            foreign_statements(&c, text.as_bytes())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        // The exact rendering, the book's legacy line (8080 is nobody's),
        // other spacing and hosts, comments, nothing at all: the route.
        for ok in [
            "set $service_url http://127.0.0.1:8081;\n",
            "set $service_url http://127.0.0.1:8080;",
            "  set $service_url   http://localhost:8082 ;\r\n",
            "# nonstop writes this file\nset $service_url http://127.0.0.1:8081; # real1\n",
            "# only a comment\n",
            "",
        ] {
            assert_eq!(foreign(ok), Vec::<String>::new(), "{ok:?}");
        }
        assert_eq!(
            foreign("set $service_url http://127.0.0.1:8081;\nclient_max_body_size 20m;\n"),
            ["line 2: `client_max_body_size 20m;`"]
        );
        // Another variable, a proxy_pass, a block: not the route.
        assert_eq!(
            foreign("set $service_url http://127.0.0.1:8081; set $other x;\nlocation /a {\n  return 204;\n}\n"),
            ["line 1: `set $other x;`", "line 2: `location /a { return 204; }`"]
        );
        assert_eq!(
            foreign("proxy_pass http://127.0.0.1:9999;"),
            ["line 1: `proxy_pass http://127.0.0.1:9999;`"]
        );
        // What another template wrote for a configured port is the route.
        assert_eq!(
            foreign("proxy_pass http://127.0.0.1:8081;"),
            Vec::<String>::new()
        );
        // A template missing its `;` (nginx -t will say so): the line
        // written before it is still the route.
        let broken = crate::config::parse(
            r#"{"app": {"dir": "/a"}, "nginx": {"template": "set $service_url http://127.0.0.1:{port}"}}"#,
            Path::new("t.json"),
        )
        .unwrap();
        assert!(
            foreign_statements(&broken, b"set $service_url http://127.0.0.1:8080;\n").is_empty()
        );
        // A template of several statements, with {profile}.
        let c2 = crate::config::parse(
            r#"{"app": {"dir": "/a"}, "nginx": {"template": "set $service_url http://127.0.0.1:{port};\nset $deployed {profile};"}}"#,
            Path::new("t.json"),
        )
        .unwrap();
        let text = c2.include_line(&c2.profiles[1]);
        assert!(
            foreign_statements(&c2, text.as_bytes()).is_empty(),
            "{text}"
        );
        let mode = crate::route::of(&c);
        let err = mode
            .refuse_foreign(Some(
                b"set $service_url http://127.0.0.1:8081;\nclient_max_body_size 20m;\n",
            ))
            .unwrap_err();
        assert_eq!(crate::exit_code(&err), 2);
        let msg = format!("{err:#}");
        assert!(
            msg.contains("line 2: `client_max_body_size 20m;`")
                && msg.contains("Move that line beside the `include`")
                && msg.contains("nothing was changed"),
            "{msg}"
        );
        assert!(mode.refuse_foreign(None).is_ok());
    }

    fn config(json: &str) -> Config {
        crate::config::parse(json, Path::new("/b/nonstop.json")).unwrap()
    }

    /// The first `--check` line on nginx's config: nginx routes through the include.
    fn routes_through(c: &Config, dump: &str) -> Line {
        crate::route::of(c).check_config(dump).remove(0)
    }

    /// The second: the include's block answers the probe (none when the
    /// include is in no server block).
    fn probe_block(c: &Config, dump: &str) -> Option<Line> {
        crate::route::of(c).check_config(dump).into_iter().nth(1)
    }

    #[test]
    fn keepalive_min_timeout_is_suggested_from_nginx_1_27_4() {
        assert_eq!(
            nginx_version("nginx version: nginx/1.22.1\n"),
            Some((1, 22, 1))
        );
        assert_eq!(
            nginx_version("nginx version: nginx/1.27.4 (Ubuntu)"),
            Some((1, 27, 4))
        );
        assert_eq!(nginx_version("openresty"), None);
        assert_eq!(keepalive_line((1, 22, 1), false), None);
        assert_eq!(keepalive_line((1, 27, 3), false), None);
        assert!(
            matches!(keepalive_line((1, 27, 4), false), Some(Line::Warn(w)) if w.contains("keepalive_min_timeout 1s;") && w.contains("lost"))
        );
        assert!(matches!(
            keepalive_line((1, 28, 0), true),
            Some(Line::Ok(_))
        ));
    }

    #[test]
    fn the_include_must_sit_in_a_server_that_proxies_to_its_variable() {
        let c = config(
            r#"{"app": {"dir": "/srv"}, "nginx": {"include": "/etc/nginx/x/service-url.inc"}}"#,
        );
        let good = "# configuration file /etc/nginx/nginx.conf:\nhttp { include x/*.inc; }\n# configuration file /etc/nginx/sites-enabled/default:\nserver { listen 80; include /etc/nginx/x/service-url.inc; location / { proxy_pass $service_url; } }\n# configuration file /etc/nginx/x/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n";
        assert!(
            matches!(routes_through(&c, good), Line::Ok(_)),
            "{}",
            routes_through(&c, good)
        );
        let not_loaded =
            "# configuration file /etc/nginx/nginx.conf:\nhttp { server { listen 80; } }\n";
        let l = routes_through(&c, not_loaded).to_string();
        assert!(
            l.starts_with("FAIL")
                && l.contains("never reads")
                && l.contains("include /etc/nginx/x/service-url.inc;"),
            "{l}"
        );
        let no_proxy = good.replace(
            "proxy_pass $service_url;",
            "proxy_pass http://127.0.0.1:8081;",
        );
        let l = routes_through(&c, &no_proxy).to_string();
        assert!(
            l.starts_with("FAIL") && l.contains("no `proxy_pass $service_url;`"),
            "{l}"
        );
        let outside = "# configuration file /etc/nginx/nginx.conf:\nhttp { include /etc/nginx/x/service-url.inc; server { location / { proxy_pass $service_url; } } }\n# configuration file /etc/nginx/x/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n";
        let l = routes_through(&c, outside).to_string();
        assert!(l.contains("not included inside a server block"), "{l}");
        // Through a snippet included in the server block, with the
        // proxy_pass in another snippet: fine.
        let snippet = "# configuration file /etc/nginx/nginx.conf:\nhttp { server { include snippets/nonstop.conf; include snippets/proxy.conf; } }\n# configuration file /etc/nginx/snippets/nonstop.conf:\ninclude /etc/nginx/x/service-url.inc;\n# configuration file /etc/nginx/x/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n# configuration file /etc/nginx/snippets/proxy.conf:\nlocation / { proxy_pass $service_url; }\n";
        let l = routes_through(&c, snippet);
        assert!(matches!(l, Line::Ok(_)), "{l}");
    }

    /// Debian's default site with the include in it, and a second site for
    /// another name on the same port.
    const DEBIAN: &str = "# configuration file /etc/nginx/nginx.conf:\nhttp { include /etc/nginx/sites-enabled/*; }\n# configuration file /etc/nginx/sites-enabled/default:\nserver { listen 80 default_server; listen [::]:80 default_server; server_name _; include /etc/nginx/nonstop/service-url.inc; location / { proxy_pass $service_url; } }\n# configuration file /etc/nginx/nonstop/service-url.inc:\nset $service_url http://127.0.0.1:8081;\n# configuration file /etc/nginx/sites-enabled/shop:\nserver { listen 80; server_name shop.example.com; location / { root /srv/shop; } }\n";

    fn with_probe(url: &str) -> Config {
        config(&format!(
            r#"{{"app": {{"dir": "/srv"}}, "probe_url": "{url}", "nginx": {{"include": "/etc/nginx/nonstop/service-url.inc"}}}}"#
        ))
    }

    #[test]
    fn the_include_is_in_the_block_the_probe_reaches() {
        let l = probe_block(&with_probe("http://127.0.0.1/profile"), DEBIAN).unwrap();
        assert!(matches!(l, Line::Ok(_)), "{l}");
        let l = probe_block(&with_probe("http://localhost:80/profile"), DEBIAN).unwrap();
        assert!(matches!(l, Line::Ok(_)), "{l}");
    }

    #[test]
    fn an_include_in_another_block_is_caught_by_host_and_port() {
        // The Host picks the shop's block.
        let l = probe_block(&with_probe("http://shop.example.com/profile"), DEBIAN)
            .unwrap()
            .to_string();
        assert!(l.starts_with("FAIL"), "{l}");
        assert!(l.contains("sites-enabled/shop"), "{l}");
        assert!(l.contains("server_name shop.example.com"), "{l}");
        assert!(
            l.contains("move the `include /etc/nginx/nonstop/service-url.inc;`"),
            "{l}"
        );

        // The include in a block on 8080 while the probe goes to :80.
        let moved = DEBIAN.replace(
            "server { listen 80 default_server; listen [::]:80 default_server; server_name _; include",
            "server { listen 80 default_server; server_name _; location /x { return 204; } }\nserver { listen 8080; server_name _; include",
        );
        let l = probe_block(&with_probe("http://127.0.0.1/profile"), &moved)
            .unwrap()
            .to_string();
        assert!(
            l.starts_with("FAIL") && l.contains("listen *:80 default_server"),
            "{l}"
        );
        let l = probe_block(&with_probe("http://127.0.0.1:8080/profile"), &moved).unwrap();
        assert!(matches!(l, Line::Ok(_)), "{l}");

        // Without default_server the first block on the port answers an
        // unknown Host; a listen on the exact address wins over `*`.
        let two = "# configuration file /etc/nginx/nginx.conf:\nhttp { server { listen 80; server_name a; location / { return 204; } } server { listen 127.0.0.1:80; server_name b; include /etc/nginx/nonstop/service-url.inc; location / { proxy_pass $service_url; } } }\n";
        let l = probe_block(&with_probe("http://127.0.0.1/profile"), two).unwrap();
        assert!(matches!(l, Line::Ok(_)), "{l}");
        let l = probe_block(&with_probe("http://10.0.0.5/profile"), two)
            .unwrap()
            .to_string();
        assert!(l.starts_with("FAIL") && l.contains("server_name a"), "{l}");
    }
}
