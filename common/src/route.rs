//! What tells nginx which profile to route to, and the only ways nonstop
//! changes it: the book's include file, or (the sites-available/sites-enabled
//! layout) a symlink re-pointed between one site file per profile — on this
//! host, or on nginx's own host over the system's `ssh`; and reading it:
//! which profile the route names ([`Include`], one of `detect`'s two
//! witnesses).
//!
//! Every change is atomic where nginx reads it: a temp file or temp symlink
//! beside the target, then a rename over it, so nginx (or a `nginx -t` run
//! at the same moment) sees the old state or the new, never a half-written
//! one. The "content" of the route is the include's bytes or the symlink's
//! target; the switch journal keeps the previous content, whichever it is.
//!
//! Remote commands: `ssh` hands its command to the login shell on the other
//! host, so every word is single-quoted here. The words come from the config
//! and from nonstop (paths, the rendered include line), never from an HTTP
//! answer or a state file.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::cmd::{self, Outcome};
use crate::config::{Config, Mode, Profile, Ssh};
use crate::fsx;
use crate::state::{read_capped, write_atomic};

/// The largest include file nonstop will read or keep.
pub const MAX_CONTENT: u64 = 1 << 20;

/// How long one remote command may take, connection included.
const SSH_LIMIT: Duration = Duration::from_secs(30);

/// What the include file says nginx routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include {
    Missing,
    Names(Profile),
    /// It exists but names no configured port (say, the book's 8080 from before blue-green).
    NamesNone,
    /// It names the ports of both profiles.
    NamesBoth,
}

/// The file (include) or symlink nonstop changes.
pub fn path(config: &Config) -> &Path {
    match &config.nginx.mode {
        Mode::Symlink { link, .. } => link,
        _ => &config.nginx.include,
    }
}

/// "the include file /x", "the symlink /y on deploy@web1", for messages.
pub fn describe(config: &Config) -> String {
    let what = match &config.nginx.mode {
        Mode::Symlink { .. } => "the symlink",
        _ => "the include file",
    };
    match &config.nginx.ssh {
        Some(ssh) => format!("{what} {} on {}", path(config).display(), ssh.destination),
        None => format!("{what} {}", path(config).display()),
    }
}

/// What the route holds when nginx routes to `profile`.
pub fn content_for(config: &Config, profile: &Profile) -> Vec<u8> {
    match &config.nginx.mode {
        Mode::Symlink { sites, .. } => {
            let i = config
                .profiles
                .iter()
                .position(|p| p == profile)
                .unwrap_or(0);
            sites
                .get(i)
                .map(|s| s.as_os_str().as_encoded_bytes().to_vec())
                .unwrap_or_default()
        }
        _ => config.include_line(profile).into_bytes(),
    }
}

/// Which profile some content names.
pub fn classify(config: &Config, content: &[u8]) -> Include {
    match &config.nginx.mode {
        Mode::Symlink { link, sites } => {
            let target = PathBuf::from(String::from_utf8_lossy(content).into_owned());
            let resolved = normalize(&link.parent().unwrap_or(Path::new("/")).join(target));
            match sites.iter().position(|s| normalize(s) == resolved) {
                Some(i) => config
                    .profiles
                    .get(i)
                    .map(|p| Include::Names(p.clone()))
                    .unwrap_or(Include::NamesNone),
                None => Include::NamesNone,
            }
        }
        _ => classify_include(config, &String::from_utf8_lossy(content)),
    }
}

/// Reads what the include file names.
pub fn classify_include(config: &Config, content: &str) -> Include {
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

fn mentions_port(text: &str, port: u16) -> bool {
    let needle = format!(":{port}");
    text.match_indices(&needle).any(|(at, _)| {
        !text[at + needle.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// `a/b/../c` → `a/c`, without touching the file system (the path may be on
/// another host).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The route's content now; `None` when it does not exist.
pub fn read(config: &Config) -> Result<Option<Vec<u8>>> {
    let target = path(config);
    match (&config.nginx.ssh, &config.nginx.mode) {
        (None, Mode::Symlink { .. }) => match fs::symlink_metadata(target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!("cannot read the symlink {}: {e}", target.display())),
            Ok(m) if !m.file_type().is_symlink() => Err(anyhow!(
                "{} exists but is not a symlink; make it one (`ln -sfn SITE {}`) or fix nginx.link",
                target.display(),
                target.display()
            )),
            Ok(_) => Ok(Some(
                fs::read_link(target)
                    .with_context(|| format!("cannot read the symlink {}", target.display()))?
                    .into_os_string()
                    .into_encoded_bytes(),
            )),
        },
        (None, _) => read_capped(target, MAX_CONTENT)
            .with_context(|| format!("cannot read the include file {}", target.display())),
        (Some(ssh), mode) => {
            let symlink = matches!(mode, Mode::Symlink { .. });
            let reader = if symlink { "readlink" } else { "cat" };
            let out = remote(ssh, &[&[reader, "--", &path_str(target)]])?;
            if out.success() {
                // Restoring a copy cut short (over `cmd::OUTPUT_LIMIT`, or
                // ssh's output left unread past its deadline) would lose the rest.
                if let Some(why) = &out.incomplete {
                    return Err(anyhow!(
                        "cannot read all of {} ({why}); nonstop edits only small include files, read whole",
                        describe(config)
                    ));
                }
                // The bytes as they are, not a UTF-8 decoding of them: a
                // Latin-1 comment must come back unchanged on a restore.
                let mut bytes = out.stdout_bytes;
                if symlink && bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                return Ok(Some(bytes));
            }
            // Missing, or there but unreadable / not a symlink?
            let exists = remote(ssh, &[&["test", "-e", &path_str(target)]])?;
            if exists.status.code() == Some(1) {
                return Ok(None);
            }
            Err(anyhow!(
                "cannot read {}: {}",
                describe(config),
                if symlink {
                    "it exists but is not a symlink".to_string()
                } else {
                    out.message()
                }
            ))
        }
    }
}

/// Which profile the route names now. A missing route is [`Include::Missing`]; a file
/// that exists but cannot be read is an error, since guessing could stop
/// the live app.
pub fn names(config: &Config) -> Result<Include> {
    Ok(match read(config)? {
        None => Include::Missing,
        Some(bytes) => classify(config, &bytes),
    })
}

/// Replaces the route's content atomically.
pub fn write(config: &Config, content: &[u8]) -> Result<()> {
    let target = path(config);
    let tmp = temp_beside(target);
    let symlink = matches!(config.nginx.mode, Mode::Symlink { .. });
    match &config.nginx.ssh {
        None if symlink => {
            let dest = PathBuf::from(String::from_utf8_lossy(content).into_owned());
            // symlink(2) never follows or replaces an existing entry; the
            // temp name is random, so nothing planted is in the way.
            std::os::unix::fs::symlink(&dest, &tmp)
                .and_then(|()| fs::rename(&tmp, target))
                .map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    anyhow!(
                        "cannot point the symlink {} at {}: {e}",
                        target.display(),
                        dest.display()
                    )
                })
        }
        None => write_atomic(target, content)
            .with_context(|| format!("cannot write the include file {}", target.display())),
        Some(ssh) => {
            let (tmp, target) = (path_str(&tmp), path_str(target));
            let sent = if symlink {
                let dest = String::from_utf8_lossy(content).into_owned();
                remote(
                    ssh,
                    &[
                        &["ln", "-sfn", "--", &dest, &tmp],
                        &["mv", "-f", "-T", "--", &tmp, &target],
                    ],
                )
            } else {
                let of = format!("of={tmp}");
                remote_with_input(
                    ssh,
                    &[
                        &["dd", &of, "conv=fsync", "status=none"],
                        &["mv", "-f", "-T", "--", &tmp, &target],
                    ],
                    content,
                )
            };
            // No answer (the time limit, a connection that ended) says
            // nothing about whether `mv` ran over there.
            let out = sent.map_err(|e| {
                anyhow!(MaybeWritten {
                    what: describe(config),
                    why: format!("{e:#}"),
                })
            })?;
            if out.success() {
                Ok(())
            } else {
                Err(anyhow!(
                    "cannot write {}: {}",
                    describe(config),
                    out.message()
                ))
            }
        }
    }
}

/// A write to nginx's host that ended without an answer from there: it may
/// or may not have taken effect, and only reading it back tells.
#[derive(Debug)]
pub struct MaybeWritten {
    /// "the include file /x on deploy@web1".
    pub what: String,
    pub why: String,
}

impl std::fmt::Display for MaybeWritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writing {} ended without an answer from that host ({}); it may have taken effect",
            self.what, self.why
        )
    }
}

impl std::error::Error for MaybeWritten {}

/// Removes the route (there was none before the switch).
pub fn remove(config: &Config) -> Result<()> {
    let target = path(config);
    match &config.nginx.ssh {
        None => fs::remove_file(target)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .with_context(|| format!("cannot remove {}", target.display())),
        Some(ssh) => {
            let out = remote(ssh, &[&["rm", "-f", "--", &path_str(target)]])?;
            if out.success() {
                Ok(())
            } else {
                Err(anyhow!(
                    "cannot remove {}: {}",
                    describe(config),
                    out.message()
                ))
            }
        }
    }
}

/// Puts back `old` (or removes the route when there was none).
pub fn restore(config: &Config, old: Option<&[u8]>) -> Result<()> {
    match old {
        Some(bytes) => write(config, bytes),
        None => remove(config),
    }
    .with_context(|| {
        format!(
            "cannot restore {}: check it by hand before nginx next reloads",
            describe(config)
        )
    })
}

/// Whether the directory that holds the route takes a new entry, so a
/// switch could happen. Checked by making (and removing) a file there, named
/// like the switch's own temp entries so no `include *.conf` glob sees it
/// (root passes any permission test, so only trying tells); on a remote
/// nginx host, with `test -w`. `Err` says why not.
pub fn check_writable(config: &Config) -> Result<(), String> {
    let dir = path(config)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match &config.nginx.ssh {
        None => fsx::probe_dir(dir).map_err(|e| format!("{}: {e}", dir.display())),
        Some(ssh) => match remote(ssh, &[&["test", "-w", &path_str(dir)]]) {
            Ok(out) if out.success() => Ok(()),
            Ok(_) => Err(format!(
                "{} on {} cannot be written by that login",
                dir.display(),
                ssh.destination
            )),
            Err(e) => Err(format!("{e:#}")),
        },
    }
}

/// Runs one of nginx's commands (`nginx.test`, `nginx.reload`) where nginx is.
pub fn run_nginx(config: &Config, argv: &[String], limit: Duration) -> Result<Outcome> {
    match &config.nginx.ssh {
        None => cmd::run(argv, limit),
        Some(ssh) => {
            let words: Vec<&str> = argv.iter().map(String::as_str).collect();
            remote(ssh, &[&words])
        }
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A random name beside the target (`fsx::temp_name`): one nobody could
/// have planted a link at beforehand.
fn temp_beside(target: &Path) -> PathBuf {
    fsx::temp_name(target)
}

/// Single-quotes a word for the remote shell.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The ssh options nonstop sets unless `nginx.ssh.options` sets them: a
/// connection attempt gives up after 10 s, and a link that dies under an
/// open connection is noticed after 2 unanswered keep-alives 5 s apart
/// (~10 s) instead of waiting out the command's whole limit.
pub const SSH_DEFAULTS: [&str; 3] = [
    "ConnectTimeout=10",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=2",
];

/// The `ssh` argv that runs `commands` (each an argv, joined by `&&`) on the
/// nginx host.
///
/// ssh keeps the *first* value it is given for an option, so the order is
/// what decides: BatchMode=yes first (a deployment never waits at a
/// password prompt, whatever the options say), then the config's port,
/// identity and options, and nonstop's [`SSH_DEFAULTS`] last, so that they
/// never shadow the user's own `ConnectTimeout` and the like.
pub fn ssh_argv(ssh: &Ssh, commands: &[&[&str]]) -> Vec<String> {
    let mut argv: Vec<String> = ["ssh", "-o", "BatchMode=yes"].map(String::from).to_vec();
    if let Some(port) = ssh.port {
        argv.extend(["-p".to_string(), port.to_string()]);
    }
    if let Some(identity) = &ssh.identity {
        argv.extend(["-i".to_string(), path_str(identity)]);
    }
    argv.extend(ssh.options.iter().cloned());
    for option in SSH_DEFAULTS {
        argv.extend(["-o".to_string(), option.to_string()]);
    }
    argv.push("--".into());
    argv.push(ssh.destination.clone());
    let script: Vec<String> = commands
        .iter()
        .map(|words| {
            words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    argv.push(script.join(" && "));
    argv
}

fn remote(ssh: &Ssh, commands: &[&[&str]]) -> Result<Outcome> {
    checked(ssh, cmd::run(&ssh_argv(ssh, commands), SSH_LIMIT))
}

fn remote_with_input(ssh: &Ssh, commands: &[&[&str]], input: &[u8]) -> Result<Outcome> {
    checked(
        ssh,
        cmd::run_with_input(&ssh_argv(ssh, commands), input, SSH_LIMIT),
    )
}

/// ssh's own failures (exit 255: unreachable, refused, not authorised) are
/// errors naming the host; a remote command's failure is its outcome.
fn checked(ssh: &Ssh, result: Result<Outcome>) -> Result<Outcome> {
    let out = result.with_context(|| format!("cannot run ssh to {}", ssh.destination))?;
    if out.status.code() == Some(255) {
        return Err(anyhow!(
            "cannot reach nginx's host {} over ssh{}: {}",
            ssh.destination,
            ssh.port.map(|p| format!(" (port {p})")).unwrap_or_default(),
            out.message()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: usize) -> Profile {
        let (name, port) = [("real1", 8081), ("real2", 8082)][i];
        Profile {
            name: name.into(),
            port,
        }
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn ssh_argv_puts_options_before_the_destination() {
        let ssh = Ssh {
            destination: "deploy@web1".into(),
            port: Some(2222),
            identity: Some("/k/id".into()),
            options: vec!["-o".into(), "StrictHostKeyChecking=yes".into()],
        };
        let argv = ssh_argv(&ssh, &[&["nginx", "-t"], &["true"]]);
        let at = argv.iter().position(|a| a == "deploy@web1").unwrap();
        assert_eq!(argv[at - 1], "--");
        assert!(argv[..at].contains(&"2222".to_string()));
        assert!(argv[..at].contains(&"StrictHostKeyChecking=yes".to_string()));
        assert_eq!(argv[at + 1], "'nginx' '-t' && 'true'");
        assert_eq!(argv.len(), at + 2);
    }

    /// What ssh itself makes of our argv (`ssh -G` prints the options it
    /// would use, without connecting): the user's options win over
    /// nonstop's defaults, BatchMode stays on, keep-alives are set.
    #[test]
    fn ssh_uses_the_users_options_over_nonstops_defaults() {
        let ssh = Ssh {
            destination: "deploy@web1".into(),
            port: Some(2222),
            identity: None,
            options: ["-o", "ConnectTimeout=3", "-o", "BatchMode=no"]
                .map(String::from)
                .to_vec(),
        };
        let mut argv = ssh_argv(&ssh, &[&["true"]]);
        argv.insert(1, "-G".into());
        let out = cmd::run(&argv, Duration::from_secs(10)).unwrap();
        assert!(out.success(), "{}", out.message());
        let effective = |key: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} ")))
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(effective("connecttimeout"), "3", "{}", out.stdout);
        assert_eq!(effective("batchmode"), "yes");
        assert_eq!(effective("serveraliveinterval"), "5");
        assert_eq!(effective("serveralivecountmax"), "2");
        assert_eq!(effective("port"), "2222");
        // Without the user's, nonstop's own.
        let plain = Ssh {
            options: vec![],
            ..ssh
        };
        let mut argv = ssh_argv(&plain, &[&["true"]]);
        argv.insert(1, "-G".into());
        let out = cmd::run(&argv, Duration::from_secs(10)).unwrap();
        assert!(out.stdout.lines().any(|l| l == "connecttimeout 10"));
    }

    #[test]
    fn a_remote_write_without_an_answer_is_not_called_nothing_changed() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = crate::config::parse(
            r#"{"app": {"dir": "/a"}, "nginx": {"include": "/x/service-url.inc",
                "ssh": {"destination": "nobody@127.0.0.1"}}}"#,
            Path::new("t.json"),
        )
        .unwrap();
        if let Some(ssh) = config.nginx.ssh.as_mut() {
            ssh.port = Some(closed);
        }
        let err = write(&config, b"set $u x;").unwrap_err();
        assert!(err.chain().any(|c| c.is::<MaybeWritten>()), "{err:#}");
        assert!(
            format!("{err:#}").contains("may have taken effect"),
            "{err:#}"
        );
    }

    #[test]
    fn include_is_read_exactly_or_by_its_port() {
        let c = crate::config::parse(r#"{"app": {"dir": "/a"}}"#, Path::new("t.json")).unwrap();
        assert_eq!(
            classify_include(&c, "set $service_url http://127.0.0.1:8082;\n"),
            Include::Names(p(1))
        );
        // The book's hand-written form, with other spacing.
        assert_eq!(
            classify_include(&c, "  set $service_url   http://localhost:8081 ;"),
            Include::Names(p(0))
        );
        // 80812 is not 8081; the book's step2 port is nobody's.
        assert_eq!(
            classify_include(&c, "set $service_url http://127.0.0.1:80812;"),
            Include::NamesNone
        );
        assert_eq!(
            classify_include(&c, "set $service_url http://127.0.0.1:8080;"),
            Include::NamesNone
        );
        // A comment does not count.
        assert_eq!(
            classify_include(&c, "# was :8082\nset $service_url http://127.0.0.1:8081;"),
            Include::Names(p(0))
        );
        assert_eq!(
            classify_include(&c, "server 127.0.0.1:8081;\nserver 127.0.0.1:8082;"),
            Include::NamesBoth
        );
    }

    #[test]
    fn relative_symlink_targets_are_resolved_against_the_link() {
        assert_eq!(
            normalize(Path::new(
                "/etc/nginx/sites-enabled/../sites-available/blue"
            )),
            Path::new("/etc/nginx/sites-available/blue")
        );
    }
}
