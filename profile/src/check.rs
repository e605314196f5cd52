//! `profile --check`: everything a deployment needs on this server, checked
//! before the first deployment instead of being found one failure at a time
//! in the middle of one (the book's issue tracker is mostly these).
//!
//! Run as the hook user. One line per check: `ok: ...`, `FAIL: what is
//! wrong — the command that fixes it`, or `skip: why`. It changes nothing:
//! nginx is only asked for its loaded config (`nginx -T`), sudo only asked
//! what it would allow (`sudo -n -l`), and a directory's writability is
//! tried with a temp entry that is removed at once.
//!
//! The checks live here, in `profile`, not in `common`: no other stage runs
//! them, and the mutating stages keep their own checks right before they
//! act. Several reuse those (the hook budget, the StrictModes directory
//! check, nginx's upstream, the adoption rule), so both say the same thing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nonstop_common::config::{wildcard_match, Backend, Config, Mode};
use nonstop_common::state::{Launched, StateDir};
use nonstop_common::{adopt, budget, compose, fsx, http, procs, route, upstream, Log, Profile};

/// The PATH the CodeDeploy agent gives a hook (its environment is scrubbed):
/// what `app.command[0]` must be found on.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `nginx -T` and `sudo -n -l` may take.
const LIMIT: Duration = Duration::from_secs(30);

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Ok(String),
    /// What is wrong, and the command (or change) that fixes it.
    Fail(String, String),
    Skip(String),
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Line::Ok(s) => write!(f, "ok: {s}"),
            Line::Fail(s, fix) => write!(f, "FAIL: {s} — {fix}"),
            Line::Skip(s) => write!(f, "skip: {s}"),
        }
    }
}

/// Every check but the config's own (which `profile` ran by loading it).
pub fn run(config: &Config, log: &Log) -> Vec<Line> {
    let mut lines = vec![config_line(config)];
    if let Some(ssh) = &config.nginx.ssh {
        let line = match route::run_nginx(config, &["true".to_string()], LIMIT) {
            Ok(out) if out.success() => {
                Line::Ok(format!("nginx's host {} answers over ssh", ssh.destination))
            }
            Ok(out) => Line::Fail(
                format!(
                    "nginx's host {} does not run a command over ssh: {}",
                    ssh.destination,
                    out.message()
                ),
                format!(
                    "check `ssh {} true` as this user (BatchMode: a key, no password)",
                    ssh.destination
                ),
            ),
            Err(e) => Line::Fail(
                format!("cannot reach nginx's host {}: {e:#}", ssh.destination),
                format!("check `ssh {} true` as this user", ssh.destination),
            ),
        };
        let unreachable = matches!(line, Line::Fail(..));
        lines.push(line);
        if unreachable {
            lines.push(Line::Skip(
                "nginx's config and commands: its host does not answer".into(),
            ));
        }
    }
    lines.extend(nginx_config(config));
    lines.extend(nginx_commands(config));
    lines.extend(directories(config));
    lines.push(app_command(config, std::env::var_os("PATH")));
    lines.extend(ports(config, log));
    lines.push(probe(config));
    lines.push(pid_file(config));
    lines.extend(compose_backend(config));
    lines
}

fn config_line(config: &Config) -> Line {
    let budget = match budget::appspec_beside(config) {
        Some(a) => format!(
            "; the hook timeouts of {} cover every stage's waits",
            a.display()
        ),
        None => "; no appspec.yml beside it, so no hook budget to check".to_string(),
    };
    Line::Ok(format!(
        "config {} is valid{budget}",
        config.source.display()
    ))
}

/// The words of nginx's config dump, one file at a time: `nginx -T` prints
/// each file it loaded after a `# configuration file PATH:` line.
pub fn split_dump(dump: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in dump.lines() {
        if let Some(path) = line
            .strip_prefix("# configuration file ")
            .and_then(|r| r.strip_suffix(':'))
        {
            files.push((path.to_string(), String::new()));
        } else if let Some((_, text)) = files.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    files
}

/// Whether an `include` argument (maybe a glob, maybe relative to nginx's
/// conf dir) names `path`.
fn include_names(arg: &str, path: &str) -> bool {
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
struct Site {
    file: String,
    in_server: bool,
    /// Outside any block: the file itself may be included in a server
    /// block (a snippet), which then counts.
    top_level: bool,
    server_words: Vec<String>,
}

fn includes_of(files: &[(String, String)], path: &str) -> Vec<Site> {
    let mut found = Vec::new();
    for (file, text) in files {
        let words = upstream::tokenize(text);
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
fn server_including(files: &[(String, String)], path: &str, depth: usize) -> Option<Site> {
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
fn with_included(files: &[(String, String)], words: &[String]) -> Vec<String> {
    let mut all = words.to_vec();
    for w in words.windows(2).filter(|w| w[0] == "include") {
        for (file, text) in files {
            if include_names(&w[1], file) {
                all.extend(upstream::tokenize(text));
            }
        }
    }
    all
}

/// The words of the block whose `{` is at `open`.
fn block(words: &[String], open: usize) -> Vec<String> {
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

/// The variable the include sets (`$service_url` for the book's template).
fn template_variable(template: &str) -> Option<String> {
    let words = upstream::tokenize(template);
    (words.first().map(String::as_str) == Some("set"))
        .then(|| words.get(1).cloned())
        .flatten()
}

fn has_proxy_pass(words: &[String], target: &str) -> bool {
    words
        .windows(2)
        .any(|w| w[0] == "proxy_pass" && w[1] == target)
}

/// nginx's loaded config routes through what nonstop changes.
fn nginx_config(config: &Config) -> Vec<Line> {
    let argv = upstream::dump_argv(config);
    let shown = argv.join(" ");
    let dump = match route::run_nginx(config, &argv, LIMIT) {
        Ok(out) if out.success() => out.stdout,
        Ok(out) => {
            return vec![Line::Fail(
            format!("`{shown}` (nginx.test with -T) failed: {}", out.message()),
            "make `nginx.test` run as this user (see the sudo check below) and fix what nginx says"
                .into(),
        )]
        }
        Err(e) => {
            return vec![Line::Fail(
                format!("cannot read nginx's loaded config with `{shown}`: {e:#}"),
                "install nginx or set `nginx.test` to the argv that tests its config".into(),
            )]
        }
    };
    vec![routes_through(config, &dump)]
}

/// The judgement of [`nginx_config`] on a dump, for the unit tests.
pub fn routes_through(config: &Config, dump: &str) -> Line {
    let files = split_dump(dump);
    match &config.nginx.mode {
        Mode::UpstreamPair => upstream_routes(config, dump, &files),
        Mode::Symlink { link, .. } => {
            if loaded(config, &files, link) {
                Line::Ok(format!("nginx loads the symlink {}", link.display()))
            } else {
                Line::Fail(
                    format!("nginx's loaded config never reads the symlink {}, so moving it changes nothing (the port never switches)", link.display()),
                    format!("add `include {};` inside the http block, then `nginx -t && nginx -s reload`", link.display()),
                )
            }
        }
        Mode::Include => include_routes(config, &files),
    }
}

/// Whether nginx loaded `p`: as nginx names it, or (a link or `..` on the
/// way, local nginx) the same file.
fn loaded(config: &Config, files: &[(String, String)], p: &Path) -> bool {
    // The directory resolved, the name kept: a symlink mode link must be
    // loaded as the link, not as the site it points at.
    let real = |p: &Path| {
        let dir = std::fs::canonicalize(p.parent()?).ok()?;
        Some(dir.join(p.file_name()?))
    };
    files.iter().any(|(f, _)| {
        Path::new(f) == p
            || (config.nginx.ssh.is_none() && real(p).is_some() && real(Path::new(f)) == real(p))
    })
}

/// Upstream-pair mode: an upstream lists the profiles' ports as nonstop
/// needs them, and a server block proxies to it.
fn upstream_routes(config: &Config, dump: &str, files: &[(String, String)]) -> Line {
    let all = upstream::parse(dump);
    let Some(u) = upstream::find(&all, &config.profiles) else {
        let ports: Vec<String> = config
            .profiles
            .iter()
            .map(|p| format!("server 127.0.0.1:{};", p.port))
            .collect();
        return Line::Fail(
            "no upstream in nginx's loaded config lists the profiles' ports".into(),
            format!("add `upstream app {{ {} }}` and `proxy_pass http://app;` in the server block, then reload nginx", ports.join(" ")),
        );
    };
    if let Some(why) = upstream::refusal(u, &config.profiles) {
        return Line::Fail(why, "then `nginx -t && nginx -s reload`".into());
    }
    let words: Vec<String> = files
        .iter()
        .flat_map(|(_, t)| upstream::tokenize(t))
        .collect();
    let target = format!("http://{}", u.name);
    if !has_proxy_pass(&words, &target) {
        return Line::Fail(
            format!("no server block of nginx's loaded config has `proxy_pass {target};`, so the upstream {} gets no requests", u.name),
            format!("add `location / {{ proxy_pass {target}; }}` to the server block, then reload nginx"),
        );
    }
    Line::Ok(format!(
        "nginx proxies to upstream {} over both profiles' ports",
        u.name
    ))
}

/// Include mode: the include file is loaded, inside a server block (maybe
/// through snippets), and that block proxies to the variable it sets.
fn include_routes(config: &Config, files: &[(String, String)]) -> Line {
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
    if !loaded(config, files, &config.nginx.include) {
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

/// `nginx.test` and `nginx.reload` run without a password.
fn nginx_commands(config: &Config) -> Vec<Line> {
    let mut list = vec![("nginx.test", &config.nginx.test)];
    if config.nginx.mode != Mode::UpstreamPair {
        list.push(("nginx.reload", &config.nginx.reload));
    }
    list.into_iter()
        .map(|(key, argv)| command_line(config, key, argv))
        .collect()
}

/// The command sudo runs in a sudo argv (its own options skipped).
fn sudo_command(argv: &[String]) -> Option<&[String]> {
    let first = argv.first()?;
    if first.rsplit('/').next() != Some("sudo") {
        return None;
    }
    let mut i = 1;
    while i < argv.len() && argv[i].starts_with('-') {
        // Options that take a value (`-u root`).
        if matches!(
            argv[i].as_str(),
            "-u" | "-g" | "-C" | "-D" | "-h" | "-p" | "-r" | "-t" | "-U"
        ) {
            i += 1;
        }
        i += 1;
    }
    argv.get(i..)
}

/// The sudoers line that lets `user` run `command` (exactly) without a
/// password; the program by its absolute path, as sudoers requires.
pub fn sudoers_line(user: &str, command: &[String]) -> String {
    let mut words = command.to_vec();
    if let Some(p) = words.first_mut() {
        if !p.starts_with('/') {
            if let Some(abs) = find_on(p, HOOK_PATH) {
                *p = abs.display().to_string();
            }
        }
    }
    format!("{user} ALL=(root) NOPASSWD: {}", words.join(" "))
}

fn user_name() -> String {
    let uid = nix::unistd::geteuid();
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("#{uid}"))
}

fn command_line(config: &Config, key: &str, argv: &[String]) -> Line {
    let shown = argv.join(" ");
    if let Some(command) = sudo_command(argv) {
        let mut ask = vec!["sudo".to_string(), "-n".into(), "-l".into()];
        ask.extend(command.iter().cloned());
        return match route::run_nginx(config, &ask, LIMIT) {
            Ok(out) if out.success() => Line::Ok(format!(
                "`{key}` ({shown}) runs through sudo without a password"
            )),
            Ok(out) => Line::Fail(
                format!(
                    "`{key}` ({shown}) is not allowed without a password (`{}` said: {})",
                    ask.join(" "),
                    out.message()
                ),
                format!(
                    "add to /etc/sudoers.d/nonstop (visudo -f): `{}`",
                    sudoers_line(&user_name(), command)
                ),
            ),
            Err(e) => Line::Fail(
                format!("cannot ask sudo about `{key}` ({shown}): {e:#}"),
                "install sudo or drop it from the argv".into(),
            ),
        };
    }
    if key == "nginx.test" {
        // Testing the config changes nothing: run it as the switch will.
        return match route::run_nginx(config, argv, LIMIT) {
            Ok(out) if out.success() => Line::Ok(format!("`{key}` ({shown}) runs as this user")),
            Ok(out) => Line::Fail(
                format!("`{key}` ({shown}) fails as this user: {}", out.message()),
                "run nginx's commands through sudo (`[\"sudo\", \"-n\", \"nginx\", \"-t\"]`) with a NOPASSWD sudoers line, or fix what nginx says".into(),
            ),
            Err(e) => Line::Fail(format!("`{key}` ({shown}) cannot run: {e:#}"), "set it to an argv that exists on this host".into()),
        };
    }
    // A reload is not tried (that would change nginx); its program must exist.
    match argv.first() {
        Some(p) if config.nginx.ssh.is_some() => Line::Skip(format!(
            "`{key}` ({shown}) runs on nginx's host as {p}; not tried"
        )),
        Some(p) if p.contains('/') && Path::new(p).is_file() || find_on(p, HOOK_PATH).is_some() => {
            Line::Ok(format!(
                "`{key}` ({shown}): no sudo, so no password; not run (it would reload nginx)"
            ))
        }
        _ => Line::Fail(
            format!("`{key}` ({shown}): its program is not on the hook's PATH {HOOK_PATH}"),
            "give its absolute path".into(),
        ),
    }
}

/// The directories nonstop writes in: only this user and root may write
/// them (fsx's StrictModes check), and this user can.
fn directories(config: &Config) -> Vec<Line> {
    let mut dirs: Vec<(&str, PathBuf)> = vec![
        ("state directory", config.state_dir.clone()),
        ("app directory", config.app.dir.clone()),
    ];
    let local_route = config.nginx.ssh.is_none() && config.nginx.mode != Mode::UpstreamPair;
    if local_route {
        let what = match config.nginx.mode {
            Mode::Symlink { .. } => "symlink's directory",
            _ => "include's directory",
        };
        if let Some(d) = route::path(config).parent() {
            dirs.push((what, d.to_path_buf()));
        }
    }
    let mut lines = Vec::new();
    for (what, dir) in &dirs {
        if let Err(why) = fsx::check_dirs(&[(what, dir)]) {
            lines.push(Line::Fail(
                why,
                "then run `profile --check` again".to_string(),
            ));
            continue;
        }
        let writable =
            if what.ends_with("include's directory") || what.ends_with("symlink's directory") {
                route::check_writable(config)
            } else {
                // A directory not made yet is made by the stage: its nearest
                // existing parent must take it.
                let existing = dir
                    .ancestors()
                    .find(|d| d.is_dir())
                    .unwrap_or(Path::new("/"));
                fsx::probe_dir(existing).map_err(|e| format!("{}: {e}", existing.display()))
            };
        lines.push(match writable {
            Ok(()) => Line::Ok(format!(
                "the {what} {} is this user's to write, and nobody else's",
                dir.display()
            )),
            Err(why) => Line::Fail(
                format!(
                    "the {what} {} is not writable by this user ({why})",
                    dir.display()
                ),
                format!(
                    "sudo install -d -o {u} -g {u} -m 755 {}",
                    dir.display(),
                    u = user_name()
                ),
            ),
        });
    }
    if config.nginx.ssh.is_some() && config.nginx.mode != Mode::UpstreamPair {
        lines.push(match route::check_writable(config) {
            Ok(()) => Line::Ok(format!(
                "{}: its directory is writable there",
                route::describe(config)
            )),
            Err(why) => Line::Fail(
                format!("{}: {why}", route::describe(config)),
                "make that directory the ssh login's (install -d -o USER) on nginx's host".into(),
            ),
        });
    }
    lines
}

/// `program` on a colon-separated PATH, as an executable file.
fn find_on(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// `app.command[0]` is found on the PATH a hook gets.
pub fn app_command(config: &Config, operator_path: Option<std::ffi::OsString>) -> Line {
    if config.app.backend != Backend::Process {
        return Line::Skip("app.command: the compose backend runs no command of its own".into());
    }
    let Some(program) = config.app.command.first() else {
        return Line::Fail(
            "app.command is empty".into(),
            "set it to the argv that runs the app".into(),
        );
    };
    if program.contains('/') {
        let p = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            config.app.dir.join(program)
        };
        return if p.is_file() {
            Line::Ok(format!("app.command[0] {program} exists"))
        } else {
            Line::Fail(
                format!("app.command[0] {program} does not exist"),
                "give the program's absolute path".into(),
            )
        };
    }
    if let Some(found) = find_on(program, HOOK_PATH) {
        return Line::Ok(format!(
            "app.command[0] `{program}` is {} on the hook's PATH",
            found.display()
        ));
    }
    let mine = operator_path
        .and_then(|p| p.into_string().ok())
        .and_then(|p| find_on(program, &p));
    match mine {
        Some(found) => Line::Fail(
            format!(
                "app.command[0] `{program}` is not on the PATH a CodeDeploy hook gets ({HOOK_PATH}); it is only {} on yours",
                found.display()
            ),
            format!("set app.command[0] to \"{}\" (or `sudo ln -s {} /usr/local/bin/{program}`)", found.display(), found.display()),
        ),
        None => Line::Fail(
            format!("app.command[0] `{program}` is found neither on the hook's PATH ({HOOK_PATH}) nor on yours"),
            "install it, or set app.command[0] to its absolute path".to_string(),
        ),
    }
}

/// The ephemeral range and the reserved ports, as the kernel has them.
pub fn ephemeral(range: &str, reserved: &str, port: u16) -> bool {
    let mut it = range
        .split_whitespace()
        .filter_map(|w| w.parse::<u16>().ok());
    let (Some(lo), Some(hi)) = (it.next(), it.next()) else {
        return false;
    };
    if port < lo || port > hi {
        return false;
    }
    let is_reserved = reserved.trim().split(',').any(|part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        matches!((a.trim().parse::<u16>(), b.trim().parse::<u16>()), (Ok(a), Ok(b)) if a <= port && port <= b)
    });
    !is_reserved
}

/// The profiles' ports: free or held by nonstop's (or the book's) apps, and
/// not ports the kernel may hand out as a source port.
fn ports(config: &Config, log: &Log) -> Vec<Line> {
    let mut lines = Vec::new();
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    let launched = launched_pids(config, log);
    for p in &config.profiles {
        if ephemeral(&range, &reserved, p.port) {
            lines.push(ephemeral_line(config, p, &range));
        }
        if compose::of(config).is_some() {
            continue;
        }
        lines.extend(holders(config, p, &launched));
    }
    lines
}

/// The pids of the apps nonstop launched (as its state records them) that
/// still run.
fn launched_pids(config: &Config, log: &Log) -> Vec<i32> {
    let state = StateDir::read_only(&config.state_dir);
    config
        .profiles
        .iter()
        .filter_map(|p| {
            state
                .read::<Launched>(&state.launched_path(&p.name), log)
                .ok()
                .flatten()
        })
        .filter(|l| procs::is_same_alive(l.pid, l.start_time))
        .map(|l| l.pid)
        .collect()
}

/// A profile's port inside the ephemeral `range`, and the sysctl that
/// reserves all the profiles' ports.
fn ephemeral_line(config: &Config, p: &Profile, range: &str) -> Line {
    let all: Vec<String> = config.profiles.iter().map(|p| p.port.to_string()).collect();
    Line::Fail(
        format!(
            "{}'s port {} is inside the ephemeral range {} (ip_local_port_range): while its app is stopped, an outgoing connection may take it as its source port",
            p.name, p.port, range.split_whitespace().collect::<Vec<_>>().join("-")
        ),
        format!(
            "sudo sysctl -w net.ipv4.ip_local_reserved_ports={} and the same line in /etc/sysctl.d/90-nonstop.conf (or choose ports below the range)",
            all.join(",")
        ),
    )
}

/// Who listens on a profile's port: nobody, someone this user cannot see,
/// or one line per pid (see [`holder`]).
fn holders(config: &Config, p: &Profile, launched: &[i32]) -> Vec<Line> {
    let seen = match procs::listening(p.port) {
        Ok(s) => s,
        Err(e) => {
            return vec![Line::Skip(format!(
                "cannot read who listens on {}: {e}",
                p.port
            ))]
        }
    };
    if seen.is_free() {
        return vec![Line::Ok(format!("{}'s port {} is free", p.name, p.port))];
    }
    if seen.pids.is_empty() {
        return vec![Line::Fail(
            format!(
                "{}'s port {} is held by a process this user cannot see",
                p.name, p.port
            ),
            format!(
                "find it with `sudo ss -ltnp 'sport = :{}'` and stop it, or choose another port",
                p.port
            ),
        )];
    }
    seen.pids
        .iter()
        .map(|&pid| holder(config, p, pid, launched))
        .collect()
}

/// A process on a profile's port is fine if nonstop started it (or an
/// ancestor of it), if it runs `app.command` for that profile, or if
/// `stop` will adopt it as a book's start.sh app.
fn holder(config: &Config, p: &Profile, pid: i32, launched: &[i32]) -> Line {
    let ours = std::iter::successors(Some(pid), |&q| procs::parent(q).filter(|&x| x > 1))
        .take(8)
        .any(|q| launched.contains(&q));
    if ours {
        Line::Ok(format!(
            "{}'s port {} is held by pid {pid}, an app nonstop started",
            p.name, p.port
        ))
    } else if nonstop_common::stopping::runs_command(&config.app.command, p, &procs::argv(pid)) {
        Line::Ok(format!(
            "{}'s port {} is held by pid {pid}, running app.command for {}",
            p.name, p.port, p.name
        ))
    } else {
        match adopt::adoptable(config, p, pid) {
            Ok(_) => Line::Ok(format!(
                "{}'s port {} is held by pid {pid} ({}), a book's start.sh app nonstop will adopt",
                p.name, p.port, procs::cmdline(pid)
            )),
            Err(why) => Line::Fail(
                format!(
                    "{}'s port {} is held by pid {pid} ({}), which nonstop did not start and will not adopt: {why}",
                    p.name, p.port, procs::cmdline(pid)
                ),
                format!("stop it (`kill {pid}`) or choose another port for {} in `profiles`", p.name),
            ),
        }
    }
}

/// The probe reaches nginx (any HTTP answer: a 502 before the first app is fine).
fn probe(config: &Config) -> Line {
    match http::get(&config.probe_url, config.probe_timeout) {
        Ok(answer) => Line::Ok(format!("probe_url {} reaches nginx (HTTP {})", config.probe_url, answer.status)),
        Err(why) => Line::Fail(
            format!("probe_url {} does not reach nginx: {why}", config.probe_url),
            "start nginx (`sudo systemctl start nginx`), or set probe_url to the address and port nginx listens on".into(),
        ),
    }
}

fn pid_file(config: &Config) -> Line {
    let Some(path) = &config.nginx.pid_file else {
        return Line::Skip(
            "nginx.pid_file is \"\": switches are confirmed by the probe alone".into(),
        );
    };
    if config.nginx.ssh.is_some() {
        return Line::Skip(format!(
            "nginx.pid_file {}: nginx is on another host",
            path.display()
        ));
    }
    let fix = "set nginx.pid_file to the `pid` path of nginx's config (`nginx -T | grep '^pid'`), or \"\" to confirm by the probe alone";
    match std::fs::read_to_string(path) {
        Ok(text) => match text.trim().parse::<i32>() {
            Ok(pid) if procs::is_alive(pid) => Line::Ok(format!(
                "nginx.pid_file {} names nginx's master, pid {pid}",
                path.display()
            )),
            _ => Line::Fail(
                format!(
                    "nginx.pid_file {} names no running process ({:?})",
                    path.display(),
                    text.trim()
                ),
                fix.into(),
            ),
        },
        Err(e) => Line::Fail(
            format!("nginx.pid_file {} cannot be read: {e}", path.display()),
            fix.into(),
        ),
    }
}

fn compose_backend(config: &Config) -> Vec<Line> {
    let Some(c) = compose::of(config) else {
        return vec![];
    };
    let services = match compose::services(c) {
        Ok(s) => s,
        Err(e) => {
            return vec![Line::Fail(
                format!("the container engine does not answer for {}: {e:#}", c.file.display()),
                "start the engine (`sudo systemctl start docker`) and add this user to its group (`sudo usermod -aG docker USER`)".into(),
            )]
        }
    };
    config
        .profiles
        .iter()
        .map(|p| {
            let s = compose::service(c, config, p);
            if services.iter().any(|x| x == s) {
                Line::Ok(format!("compose service {s} ({}) exists", p.name))
            } else {
                Line::Fail(
                    format!(
                        "{} has no service {s} for {} (it has: {})",
                        c.file.display(),
                        p.name,
                        services.join(", ")
                    ),
                    "add it, or name an existing one in app.compose.services".into(),
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        nonstop_common::config::parse(json, Path::new("/b/nonstop.json")).unwrap()
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
    fn the_sudoers_line_names_the_exact_command() {
        let argv: Vec<String> = ["sudo", "-n", "/usr/sbin/nginx", "-s", "reload"]
            .map(String::from)
            .to_vec();
        let cmd = sudo_command(&argv).unwrap();
        assert_eq!(
            sudoers_line("ec2-user", cmd),
            "ec2-user ALL=(root) NOPASSWD: /usr/sbin/nginx -s reload"
        );
        let with_user: Vec<String> = ["sudo", "-u", "root", "nginx", "-t"]
            .map(String::from)
            .to_vec();
        assert_eq!(sudo_command(&with_user).unwrap(), &with_user[3..]);
        assert!(sudo_command(&["nginx".to_string(), "-t".into()]).is_none());
    }

    #[test]
    fn ephemeral_unless_reserved() {
        assert!(ephemeral("32768\t60999\n", "\n", 40000));
        assert!(!ephemeral("32768\t60999\n", "39000-41000,8081\n", 40000));
        assert!(!ephemeral("32768\t60999\n", "", 8081));
    }

    #[test]
    fn the_program_must_be_on_the_hooks_path() {
        let c = config(r#"{"app": {"dir": "/srv", "command": ["nonstop-surely-absent", "x"]}}"#);
        let l = app_command(&c, Some("/nowhere".into())).to_string();
        assert!(l.starts_with("FAIL") && l.contains("neither"), "{l}");
        let c = config(r#"{"app": {"dir": "/srv", "command": ["sh", "x"]}}"#);
        assert!(matches!(app_command(&c, None), Line::Ok(_)));
    }
}
