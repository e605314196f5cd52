//! The blocks of nginx's config as `nginx -T` shows it
//! ([`crate::nginx::conf`]): where a file is included (inside which server
//! block, maybe through a snippet), which server block nginx gives a request
//! (its port and address against `listen`, its Host against `server_name`,
//! else `default_server`, else the first), and what a block proxies to.
//! What `profile --check` reads to tell whether nginx routes through what a
//! mode changes, in the block that answers the probe.

use std::path::Path;

use crate::config::wildcard_match;
use crate::nginx::conf::tokenize;

/// Whether an `include` argument (maybe a glob, maybe relative to nginx's
/// conf dir) names `path`.
pub(crate) fn include_names(arg: &str, path: &str) -> bool {
    if arg == path {
        return true;
    }
    let (arg_dir, arg_name) = arg.rsplit_once('/').unwrap_or(("", arg));
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let same_dir =
        arg_dir == dir || (!arg.starts_with('/') && dir.ends_with(&format!("/{arg_dir}")));
    same_dir && wildcard_match(arg_name, name)
}

/// Where an include of `path` sits in a file: whether inside a `server`
/// block, and that block's words.
#[derive(Debug)]
pub(crate) struct Site {
    pub file: String,
    in_server: bool,
    /// Outside any block: the file itself may be included in a server
    /// block (a snippet), which then counts.
    top_level: bool,
    pub server_words: Vec<String>,
}

pub(crate) fn includes_of(files: &[(String, String)], path: &str) -> Vec<Site> {
    let mut found = Vec::new();
    for (file, text) in files {
        let words = tokenize(text);
        // The stack of open blocks: (name, index of its `{`).
        let mut stack: Vec<(String, usize)> = Vec::new();
        let mut start = 0; // first word of the current statement
        for (i, w) in words.iter().enumerate() {
            match w.as_str() {
                "{" => {
                    stack.push((words.get(start).cloned().unwrap_or_default(), i));
                    start = i + 1;
                }
                "}" => {
                    stack.pop();
                    start = i + 1;
                }
                ";" => {
                    let stmt = &words[start..i];
                    if stmt.len() == 2 && stmt[0] == "include" && include_names(&stmt[1], path) {
                        let server = stack.iter().rev().find(|(n, _)| n == "server");
                        let server_words = server
                            .map(|(_, open)| block(&words, *open))
                            .unwrap_or_default();
                        found.push(Site {
                            file: file.clone(),
                            in_server: server.is_some(),
                            top_level: stack.is_empty(),
                            server_words,
                        });
                    }
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    found
}

/// The server block that includes `path`, directly or through a snippet
/// that is itself included in one (at most `depth` snippets deep).
pub(crate) fn server_including(
    files: &[(String, String)],
    path: &str,
    depth: usize,
) -> Option<Site> {
    let sites = includes_of(files, path);
    if let Some(i) = sites.iter().position(|s| s.in_server) {
        return sites.into_iter().nth(i);
    }
    if depth == 0 {
        return None;
    }
    sites
        .iter()
        .filter(|s| s.top_level && s.file != path)
        .find_map(|s| server_including(files, &s.file, depth - 1))
}

/// A server block's words and those of the files it includes (one level:
/// a `location` snippet with the `proxy_pass`).
pub(crate) fn with_included(files: &[(String, String)], words: &[String]) -> Vec<String> {
    let mut all = words.to_vec();
    for w in words.windows(2).filter(|w| w[0] == "include") {
        for (file, text) in files {
            if include_names(&w[1], file) {
                all.extend(tokenize(text));
            }
        }
    }
    all
}

/// The words of the block whose `{` is at `open`.
pub(crate) fn block(words: &[String], open: usize) -> Vec<String> {
    let mut depth = 0usize;
    for (i, w) in words.iter().enumerate().skip(open) {
        match w.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return words[open..=i].to_vec();
                }
            }
            _ => {}
        }
    }
    words[open..].to_vec()
}

pub(crate) fn has_proxy_pass(words: &[String], target: &str) -> bool {
    words
        .windows(2)
        .any(|w| w[0] == "proxy_pass" && w[1] == target)
}

/// Whether nginx loaded `p`: as nginx names it, or (a link or `..` on the
/// way, local nginx) the same file.
pub(crate) fn loaded(local: bool, files: &[(String, String)], p: &Path) -> bool {
    // The directory resolved, the name kept: a symlink mode link must be
    // loaded as the link, not as the site it points at.
    let real = |p: &Path| {
        let dir = std::fs::canonicalize(p.parent()?).ok()?;
        Some(dir.join(p.file_name()?))
    };
    files.iter().any(|(f, _)| {
        Path::new(f) == p || (local && real(p).is_some() && real(Path::new(f)) == real(p))
    })
}

/// One `listen` of a server block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listen {
    /// `None`: every address (`listen 80;`, `*:80`, `0.0.0.0:80`).
    pub addr: Option<String>,
    pub port: u16,
    pub default: bool,
    pub v6: bool,
}

/// One server block of the dump: where, its words, its listens and names.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub file: String,
    pub words: Vec<String>,
    pub listens: Vec<Listen>,
    pub names: Vec<String>,
}

impl Block {
    pub(crate) fn describe(&self) -> String {
        let listens: Vec<String> = self
            .listens
            .iter()
            .map(|l| {
                let a = l.addr.as_deref().unwrap_or("*");
                let d = if l.default { " default_server" } else { "" };
                format!("{a}:{}{d}", l.port)
            })
            .collect();
        let names = if self.names.is_empty() {
            "none".to_string()
        } else {
            self.names.join(" ")
        };
        format!(
            "the server block in {} (listen {}; server_name {names})",
            self.file,
            listens.join(", ")
        )
    }
}

pub(crate) fn parse_listen(args: &[String]) -> Option<Listen> {
    let first = args.first()?;
    if first.starts_with("unix:") {
        return None;
    }
    let default = args[1..]
        .iter()
        .any(|a| a == "default_server" || a == "default");
    let (addr, port, v6) = if let Some(rest) = first.strip_prefix('[') {
        let (a, p) = rest.split_once(']')?;
        let port = p.strip_prefix(':').map_or(Some(80), |p| p.parse().ok())?;
        (Some(a.to_string()), port, true)
    } else if let Ok(port) = first.parse::<u16>() {
        (None, port, false)
    } else {
        let (a, p) = match first.rsplit_once(':') {
            Some((a, p)) => (a, p.parse().ok()?),
            None => (first.as_str(), 80),
        };
        (Some(a.to_string()), p, false)
    };
    let addr = addr.filter(|a| a != "*" && a != "0.0.0.0" && a != "::");
    Some(Listen {
        addr,
        port,
        default,
        v6,
    })
}

/// Every server block of the dump (`server {` at any depth: an upstream's
/// `server ADDR;` lines are statements, not blocks), in the dump's order.
pub(crate) fn server_blocks(files: &[(String, String)]) -> Vec<Block> {
    let mut found = Vec::new();
    for (file, text) in files {
        let words = tokenize(text);
        for (i, w) in words.iter().enumerate() {
            if w != "server" || words.get(i + 1).map(String::as_str) != Some("{") {
                continue;
            }
            // A statement starts here: the previous word ends one.
            if i > 0 && !matches!(words[i - 1].as_str(), "{" | "}" | ";") {
                continue;
            }
            let body = block(&words, i + 1);
            let mut listens = Vec::new();
            let mut names = Vec::new();
            // The block's own directives (depth 1 inside its braces).
            let mut depth = 0usize;
            let mut start = 1;
            for (j, w) in body.iter().enumerate() {
                match w.as_str() {
                    "{" => {
                        depth += 1;
                        start = j + 1;
                    }
                    "}" => {
                        depth = depth.saturating_sub(1);
                        start = j + 1;
                    }
                    ";" => {
                        if depth == 1 {
                            let stmt = &body[start..j];
                            match stmt.first().map(String::as_str) {
                                Some("listen") => listens.extend(parse_listen(&stmt[1..])),
                                Some("server_name") => names.extend(stmt[1..].iter().cloned()),
                                _ => {}
                            }
                        }
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            if listens.is_empty() {
                listens.push(Listen {
                    addr: None,
                    port: 80,
                    default: false,
                    v6: false,
                });
            }
            found.push(Block {
                file: file.clone(),
                words: body,
                listens,
                names,
            });
        }
    }
    found
}

/// The probe's host and port, from `http://HOST[:PORT]/...`.
pub(crate) fn probe_target(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, port) = v6.split_once(']')?;
        let port = port
            .strip_prefix(':')
            .map_or(Some(80), |p| p.parse().ok())?;
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((authority.to_string(), 80)),
    }
}

/// How a server_name matches `host`, as nginx ranks them: exact (3), a
/// leading wildcard (2), a trailing wildcard (1); `None`: no match, and
/// `Some(0)` for a regex, which this check does not evaluate.
fn name_rank(name: &str, host: &str) -> Option<u8> {
    let name = name.to_ascii_lowercase();
    if name.starts_with('~') {
        return Some(0);
    }
    if name == host {
        return Some(3);
    }
    if let Some(suffix) = name.strip_prefix('.') {
        return (host == suffix || host.ends_with(&name)).then_some(2);
    }
    if name.starts_with("*.") {
        return wildcard_match(&name, host).then_some(2);
    }
    if name.ends_with(".*") {
        return wildcard_match(&name, host).then_some(1);
    }
    None
}

/// The server block nginx gives the request of `url` (`http://HOST[:PORT]/...`,
/// `localhost` as 127.0.0.1), with the URL's host and port; `None` when no
/// block listens there or that depends on a regex server_name (not judged
/// here).
pub(crate) fn answering_url<'a>(
    blocks: &'a [Block],
    url: &str,
) -> Option<(&'a Block, String, u16)> {
    let (host, port) = probe_target(url)?;
    let addr = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1".to_string()
    } else {
        host.clone()
    };
    let block = answering(blocks, &addr, &host, port)?;
    Some((block, host, port))
}

/// The block nginx gives a request to `addr:port` with Host `host`, or
/// `None` when that depends on a regex server_name (not judged here).
pub(crate) fn answering<'a>(
    blocks: &'a [Block],
    addr: &str,
    host: &str,
    port: u16,
) -> Option<&'a Block> {
    let v6 = addr.contains(':');
    let on = |exact: bool| -> Vec<(&'a Block, bool)> {
        blocks
            .iter()
            .filter_map(|b| {
                let l = b.listens.iter().find(|l| {
                    l.port == port
                        && l.v6 == v6
                        && match &l.addr {
                            Some(a) => {
                                exact && (a == addr || (a == "localhost" && addr == "127.0.0.1"))
                            }
                            None => !exact,
                        }
                })?;
                Some((b, l.default))
            })
            .collect()
    };
    // A listen on the exact address takes the connection before a wildcard one.
    let mut group = on(true);
    if group.is_empty() {
        group = on(false);
    }
    if group.is_empty() {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let mut best: Option<(u8, &Block)> = None;
    for (b, _) in &group {
        for n in &b.names {
            match name_rank(n, &host) {
                Some(0) => return None,
                Some(r) if best.is_none_or(|(br, _)| r > br) => best = Some((r, b)),
                _ => {}
            }
        }
    }
    if let Some((_, b)) = best {
        return Some(b);
    }
    group
        .iter()
        .find(|(_, d)| *d)
        .or(group.first())
        .map(|(b, _)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_by_glob_and_relative_path() {
        assert!(include_names(
            "/etc/nginx/conf.d/*.inc",
            "/etc/nginx/conf.d/service-url.inc"
        ));
        assert!(include_names(
            "conf.d/service-url.inc",
            "/etc/nginx/conf.d/service-url.inc"
        ));
        assert!(!include_names(
            "/etc/nginx/conf.d/*.conf",
            "/etc/nginx/conf.d/service-url.inc"
        ));
    }

    #[test]
    fn listens_parse_as_nginx_reads_them() {
        let w = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            parse_listen(&w("80 default_server")),
            Some(Listen {
                addr: None,
                port: 80,
                default: true,
                v6: false
            })
        );
        assert_eq!(
            parse_listen(&w("127.0.0.1:8080")),
            Some(Listen {
                addr: Some("127.0.0.1".into()),
                port: 8080,
                default: false,
                v6: false
            })
        );
        assert_eq!(
            parse_listen(&w("[::]:80 default_server")),
            Some(Listen {
                addr: None,
                port: 80,
                default: true,
                v6: true
            })
        );
        assert_eq!(
            parse_listen(&w("localhost")),
            Some(Listen {
                addr: Some("localhost".into()),
                port: 80,
                default: false,
                v6: false
            })
        );
        assert_eq!(
            probe_target("http://localhost:8080/profile"),
            Some(("localhost".into(), 8080))
        );
        assert_eq!(
            probe_target("http://127.0.0.1/profile"),
            Some(("127.0.0.1".into(), 80))
        );
    }
}
