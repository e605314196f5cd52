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

use nonstop_common::app::{adopt, compose};
use nonstop_common::config::{Backend, Config};
use nonstop_common::frame::appspec;
use nonstop_common::nginx::conf::dump_argv;
use nonstop_common::nginx::pidfile;
use nonstop_common::route::{self, host::Host, ssh};
use nonstop_common::state::{Launched, StateDir};
use nonstop_common::sys::files::{self, current_user};
use nonstop_common::sys::http;
use nonstop_common::sys::procs;
use nonstop_common::{Log, Profile};

/// The PATH the CodeDeploy agent gives a hook (its environment is scrubbed):
/// what `app.command[0]` must be found on.
pub(crate) const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long `nginx -T` and `sudo -n -l` may take.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

pub use nonstop_common::route::mode::Line;

/// Every check but the config's own (which `profile` ran by loading it).
pub(crate) fn run(config: &Config, log: &Log) -> Vec<Line> {
    let mut lines = vec![config_line(config)];
    if let Some(ssh) = &config.nginx.ssh {
        let line = match Host::of(config).login_noise() {
            Ok(None) => Line::Ok(format!("nginx's host {} answers over ssh", ssh.destination)),
            // It answers, but reading the include through it is refused.
            Ok(Some(printed)) => Line::Fail(
                format!(
                    "nginx's host {} prints {printed} at login over ssh, besides the command it is \
                     given; every stage refuses to read the include through such a login (it would \
                     be taken for the file's bytes)",
                    ssh.destination
                ),
                ssh::LOGIN_FIX.replace("ssh DEST", &format!("ssh {}", ssh.destination)),
            ),
            Err(e) => Line::Fail(
                format!("cannot reach nginx's host {}: {e:#}", ssh.destination),
                format!(
                    "check `ssh {} true` as this user (BatchMode: a key, no password)",
                    ssh.destination
                ),
            ),
        };
        let unreachable = matches!(&line, Line::Fail(why, _) if why.starts_with("cannot reach"));
        lines.push(line);
        if unreachable {
            lines.push(Line::Skip(
                "nginx's config and commands: its host does not answer".into(),
            ));
        }
    }
    lines.extend(nginx_config(config));
    lines.extend(route::of(config).check_route());
    lines.extend(nginx_commands(config));
    lines.extend(directories(config));
    lines.extend(crate::unwritable::unwritable_entries(config));
    lines.push(state_room(config));
    lines.push(app_command(config, std::env::var_os("PATH")));
    lines.extend(ports(config, log));
    lines.push(probe(config));
    lines.push(pid_file(config));
    lines.extend(pid_file_is_nginxs(config));
    lines.extend(compose_backend(config));
    lines
}

fn config_line(config: &Config) -> Line {
    let budget = match appspec::appspec_beside(config) {
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

/// When `argv` (nginx.test with `-T`) goes through sudo and sudo does not
/// allow it, while the mode needs no dump to deploy: a `skip` line.
fn dump_refused(config: &Config, argv: &[String]) -> Option<Line> {
    if route::of(config).needs_dump() {
        return None;
    }
    let command = sudo_command(argv)?;
    let mut ask = vec!["sudo".to_string(), "-n".into(), "-l".into()];
    ask.extend(command.iter().cloned());
    match Host::of(config).run(&ask, LIMIT) {
        Ok(out) if !out.success() => Some(Line::Skip(format!(
            "nginx's loaded config: sudo does not allow `{}` for this user (deployments do not need it; to have the routing checked, add `{}` to the sudoers line)",
            command.join(" "),
            sudoers_line(&current_user(), command)
                .split_once("NOPASSWD: ")
                .map(|(_, c)| c.to_string())
                .unwrap_or_default()
        ))),
        _ => None,
    }
}

/// nginx's loaded config routes through what nonstop changes.
fn nginx_config(config: &Config) -> Vec<Line> {
    let argv = dump_argv(config);
    let shown = argv.join(" ");
    let dump = match Host::of(config).run(&argv, LIMIT) {
        Ok(out) if out.success() => out.stdout,
        Ok(out) => {
            if let Some(skip) = dump_refused(config, &argv) {
                return vec![skip];
            }
            return vec![Line::Fail(
            format!("`{shown}` (nginx.test with -T) failed: {}", out.message()),
            "make `nginx.test` run as this user (see the sudo check below) and fix what nginx says"
                .into(),
        )];
        }
        Err(e) => {
            return vec![Line::Fail(
                format!("cannot read nginx's loaded config with `{shown}`: {e:#}"),
                "install nginx or set `nginx.test` to the argv that tests its config".into(),
            )]
        }
    };
    route::of(config).check_config(&dump)
}

/// `nginx.test` and `nginx.reload` run without a password.
fn nginx_commands(config: &Config) -> Vec<Line> {
    let mut list = vec![("nginx.test", &config.nginx.test)];
    if route::of(config).commands().reload.is_some() {
        list.push(("nginx.reload", &config.nginx.reload));
    }
    list.into_iter()
        .map(|(key, argv)| command_line(config, key, argv))
        .collect()
}

/// The command sudo runs in a sudo argv (its own options skipped).
pub(crate) fn sudo_command(argv: &[String]) -> Option<&[String]> {
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
pub(crate) fn sudoers_line(user: &str, command: &[String]) -> String {
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

fn command_line(config: &Config, key: &str, argv: &[String]) -> Line {
    let shown = argv.join(" ");
    if let Some(command) = sudo_command(argv) {
        let mut ask = vec!["sudo".to_string(), "-n".into(), "-l".into()];
        ask.extend(command.iter().cloned());
        return match Host::of(config).run(&ask, LIMIT) {
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
                    sudoers_line(&current_user(), command)
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
        return match Host::of(config).run(argv, LIMIT) {
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
/// them (the StrictModes check of `nonstop_common::sys::files`), and this user can.
fn directories(config: &Config) -> Vec<Line> {
    let mut dirs: Vec<(&str, PathBuf)> = vec![
        ("state directory", config.state_dir.clone()),
        ("app directory", config.app.dir.clone()),
    ];
    let mode = route::of(config);
    let host = Host::of(config);
    let route_dir = mode.directory();
    if host.is_local() {
        dirs.extend(route_dir.clone());
    }
    let mut lines = Vec::new();
    for (what, dir) in &dirs {
        if let Err(why) = files::check_dirs(&[(what, dir)]) {
            lines.push(Line::Fail(
                why,
                "then run `profile --check` again".to_string(),
            ));
            continue;
        }
        let writable = if route_dir.as_ref().is_some_and(|(w, _)| w == what) {
            host.check_writable(dir)
        } else {
            // A directory not made yet is made by the stage: its nearest
            // existing parent must take it.
            let existing = dir
                .ancestors()
                .find(|d| d.is_dir())
                .unwrap_or(Path::new("/"));
            files::probe_dir(existing).map_err(|e| format!("{}: {e}", existing.display()))
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
                    u = current_user()
                ),
            ),
        });
    }
    if let (false, Some((_, dir))) = (host.is_local(), &route_dir) {
        lines.push(match host.check_writable(dir) {
            Ok(()) => Line::Ok(format!(
                "{}: its directory is writable there",
                mode.describe()
            )),
            Err(why) => Line::Fail(
                format!("{}: {why}", mode.describe()),
                "make that directory the ssh login's (install -d -o USER) on nginx's host".into(),
            ),
        });
    }
    lines
}

/// Below this much free space (or this many free inodes) on the state
/// directory's file system, `--check` warns: a switch records each step
/// there, and a journal it cannot write ends the switch early (undone; see
/// `nonstop_common::switch::journal`), as does a `switch.json` it cannot write.
pub(crate) const STATE_ROOM_BYTES: u64 = 4 << 20;
const STATE_ROOM_INODES: u64 = 64;

/// Room on the state directory's file system (statvfs of it, or of its
/// nearest existing parent): a warning below [`STATE_ROOM_BYTES`] free.
fn state_room(config: &Config) -> Line {
    let dir = config
        .state_dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("/"));
    let shown = config.state_dir.display();
    let vfs = match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => v,
        Err(e) => {
            return Line::Warn(format!(
                "the state directory {shown}: cannot tell its free space ({e})"
            ))
        }
    };
    // u64 here; 32 bits on other targets (c_ulong), hence the conversions.
    #[allow(clippy::useless_conversion)]
    let (free, inodes) = (
        u64::from(vfs.blocks_available()).saturating_mul(u64::from(vfs.fragment_size())),
        u64::from(vfs.files_available()),
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1 << 20));
    // A file system without inode counts (some report 0 of 0) is not short of them.
    let short_of_inodes = vfs.files() > 0 && inodes < STATE_ROOM_INODES;
    if free < STATE_ROOM_BYTES || short_of_inodes {
        Line::Warn(format!(
            "the state directory {shown} has {} free ({inodes} inodes) on its file system, under the {} a deployment should have:              a switch that cannot record its steps there is undone, and one whose record fails is reported as failed. Free some space there",
            mib(free),
            mib(STATE_ROOM_BYTES)
        ))
    } else {
        Line::Ok(format!(
            "the state directory {shown} has {} free on its file system",
            mib(free)
        ))
    }
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
pub(crate) fn app_command(config: &Config, operator_path: Option<std::ffi::OsString>) -> Line {
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
pub(crate) fn ephemeral(range: &str, reserved: &str, port: u16) -> bool {
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
    } else if nonstop_common::app::stopping::runs_command(&config.app.command, p, &procs::argv(pid))
    {
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

/// `nginx.pid_file` is the `pid` of the config `nginx.test` tests, not
/// another nginx's (`pidfile`, which the switch checks too).
fn pid_file_is_nginxs(config: &Config) -> Option<Line> {
    // Only the modes that reload nginx watch its workers through it.
    route::of(config).commands().reload?;
    Some(match pidfile::compare(config) {
        pidfile::Verdict::NotUsed => return None,
        pidfile::Verdict::Same(p) => Line::Ok(format!(
            "nginx.pid_file {} is the `pid` of nginx's config",
            p.display()
        )),
        pidfile::Verdict::Differs { configured, nginx } => Line::Fail(
            format!(
                "nginx.pid_file is {}, but nginx's config writes its pid to {}: every switch would wait for another nginx's workers and be undone",
                configured.display(),
                nginx.display()
            ),
            format!("set \"pid_file\": {:?} in nginx", nginx.display().to_string()),
        ),
        pidfile::Verdict::Unknown(why) => {
            Line::Skip(format!("nginx.pid_file against nginx's config: {why}"))
        }
    })
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
