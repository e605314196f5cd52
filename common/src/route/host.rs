//! Where nginx is: this host, or nginx's own host reached with the system's
//! `ssh` ([`crate::route::ssh`]). The routing modes read and change their
//! entries (a file, a symlink) and run nginx's commands through a [`Host`],
//! and never ask which one it is.
//!
//! Every change is atomic where nginx reads it: a temp entry with a random
//! name beside the target, then a rename over it, so nginx (or a `nginx -t`
//! run at the same moment) sees the old state or the new, never a
//! half-written one. Over ssh that is done by a fixed script whose words
//! (paths, the rendered route, all from the config and from nonstop, never
//! from an HTTP answer or a state file) are single-quoted arguments, whose
//! output counts only between nonstop's markers, and whose bytes are checked
//! by `cksum` there, so a login that prints is never taken for a file's bytes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::config::{Config, Ssh};
use crate::route::ssh;
use crate::state::{read_capped, write_atomic};
use crate::sys::cmd::{self, Outcome};
use crate::sys::files;

/// The largest route file (an include, a site file) nonstop will read or keep.
pub(crate) const MAX_CONTENT: u64 = 1 << 20;

/// Where nginx's files and commands are.
#[derive(Debug, Clone, Copy)]
pub enum Host<'a> {
    /// This host.
    Local,
    /// nginx's own host, over the system's `ssh`.
    Ssh(&'a Ssh),
}

/// What is at a path where a symlink is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    Missing,
    /// A symlink, and its target as it is written (bytes).
    Link(Vec<u8>),
    /// Something that is not a symlink.
    NotALink,
}

/// A write to nginx's host that ended without an answer from there: it may
/// or may not have taken effect, and only reading it back tells.
#[derive(Debug)]
pub(crate) struct MaybeWritten {
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

impl<'a> Host<'a> {
    /// Where `config` says nginx is.
    pub fn of(config: &'a Config) -> Self {
        match &config.nginx.ssh {
            Some(ssh) => Host::Ssh(ssh),
            None => Host::Local,
        }
    }

    /// The ssh settings, when nginx is on another host.
    pub(crate) fn ssh(&self) -> Option<&'a Ssh> {
        match self {
            Host::Ssh(ssh) => Some(ssh),
            Host::Local => None,
        }
    }

    pub fn is_local(&self) -> bool {
        self.ssh().is_none()
    }

    /// " on deploy@web1", or nothing on this host: what a message adds to
    /// the path it names.
    pub(crate) fn on(&self) -> String {
        match self {
            Host::Ssh(ssh) => format!(" on {}", ssh.destination),
            Host::Local => String::new(),
        }
    }

    /// A file's bytes (at most [`MAX_CONTENT`]); `None` when it does not
    /// exist. `what` names it in messages ("the include file /x on
    /// deploy@web1"), as every method's `what` does.
    pub(crate) fn read_file(&self, path: &Path, what: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Host::Local => {
                read_capped(path, MAX_CONTENT).with_context(|| format!("cannot read {what}"))
            }
            Host::Ssh(ssh) => {
                let got = remote_read(ssh::cat(ssh, &path_str(path)), what)?;
                match got.status.as_str() {
                    "missing" => Ok(None),
                    _ => whole(got, what).map(Some),
                }
            }
        }
    }

    /// What is at `path`, read as a symlink: its target's bytes as written.
    pub(crate) fn read_link(&self, path: &Path, what: &str) -> Result<Entry> {
        match self {
            Host::Local => match fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Missing),
                Err(e) => Err(anyhow!("cannot read {what}: {e}")),
                Ok(m) if !m.file_type().is_symlink() => Ok(Entry::NotALink),
                Ok(_) => Ok(Entry::Link(
                    fs::read_link(path)
                        .with_context(|| format!("cannot read {what}"))?
                        .into_os_string()
                        .into_encoded_bytes(),
                )),
            },
            Host::Ssh(ssh) => {
                let got = remote_read(ssh::readlink(ssh, &path_str(path)), what)?;
                match got.status.as_str() {
                    "missing" => Ok(Entry::Missing),
                    "notlink" => Ok(Entry::NotALink),
                    _ => whole(got, what).map(Entry::Link),
                }
            }
        }
    }

    /// Replaces a file's content atomically.
    pub(crate) fn write_file(&self, path: &Path, content: &[u8], what: &str) -> Result<()> {
        match self {
            Host::Local => {
                write_atomic(path, content).with_context(|| format!("cannot write {what}"))
            }
            Host::Ssh(ssh) => {
                let tmp = path_str(&files::temp_name(path));
                remote_write(ssh::write(ssh, &tmp, &path_str(path), content), what)
            }
        }
    }

    /// Points the symlink `path` at `dest`, atomically: a new link at a
    /// random name beside it, renamed over it.
    pub(crate) fn point_link(&self, path: &Path, dest: &str, what: &str) -> Result<()> {
        let tmp = files::temp_name(path);
        match self {
            // symlink(2) never follows or replaces an existing entry; the
            // temp name is random, so nothing planted is in the way.
            Host::Local => std::os::unix::fs::symlink(dest, &tmp)
                .and_then(|()| fs::rename(&tmp, path))
                .map_err(|e| {
                    let _ = fs::remove_file(&tmp);
                    anyhow!("cannot point {what} at {dest}: {e}")
                }),
            Host::Ssh(ssh) => {
                remote_write(ssh::link(ssh, dest, &path_str(&tmp), &path_str(path)), what)
            }
        }
    }

    /// Removes `path` (nothing there is fine).
    pub(crate) fn remove(&self, path: &Path, what: &str) -> Result<()> {
        match self {
            Host::Local => fs::remove_file(path)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .with_context(|| format!("cannot remove {}", path.display())),
            Host::Ssh(ssh) => {
                let out = ssh::run(ssh, &["rm", "-f", "--", &path_str(path)])?;
                if out.success() {
                    Ok(())
                } else {
                    Err(anyhow!("cannot remove {what}: {}", out.message()))
                }
            }
        }
    }

    /// Whether `dir` takes a new entry, so a switch could write there.
    /// Checked by making (and removing) a file there, named like the
    /// switch's own temp entries so no `include *.conf` glob sees it (root
    /// passes any permission test, so only trying tells); on nginx's host,
    /// with `test -w`. `Err` says why not.
    pub fn check_writable(&self, dir: &Path) -> Result<(), String> {
        match self {
            Host::Local => files::probe_dir(dir).map_err(|e| format!("{}: {e}", dir.display())),
            Host::Ssh(ssh) => match ssh::run(ssh, &["test", "-w", &path_str(dir)]) {
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

    /// The switch writes the route through a temp entry beside it, so its
    /// directory (`what` it is, and where) must take a new one: refused
    /// before anything is stopped, naming why not.
    pub(crate) fn check_route_dir(&self, directory: Option<(&'static str, PathBuf)>) -> Result<()> {
        let Some((what, dir)) = directory else {
            return Ok(());
        };
        self.check_writable(&dir).map_err(|why| {
            anyhow!(
                "the {what} is not writable ({why}), so the switch could not happen; nothing was changed"
            )
        })
    }

    /// Runs a command (one of nginx's: `nginx.test`, `nginx.reload`) there.
    pub fn run(&self, argv: &[String], limit: Duration) -> Result<Outcome> {
        match self {
            Host::Local => cmd::run(argv, limit),
            Host::Ssh(ssh) => {
                let words: Vec<&str> = argv.iter().map(String::as_str).collect();
                ssh::run(ssh, &words).map(ssh::Framed::outcome)
            }
        }
    }

    /// What nginx's host prints over ssh outside nonstop's own command (a
    /// login banner, a `command=` wrapper's notice), for `profile --check`:
    /// `Ok(None)` when nothing (or on this host); `Err` when the host cannot
    /// be reached or did not run the command.
    pub fn login_noise(&self) -> Result<Option<String>> {
        let Host::Ssh(ssh) = self else {
            return Ok(None);
        };
        let out = ssh::run(ssh, &["true"])?;
        if !out.success() {
            return Err(anyhow!(
                "`true` failed there ({}): {}",
                out.status,
                out.message()
            ));
        }
        Ok((!out.noise.is_empty()).then(|| ssh::quote(&out.noise)))
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A remote read's frame, refused when the login printed besides it:
/// whatever it printed is not the file, and a restore would write it into
/// nginx's config.
fn remote_read(got: Result<ssh::Framed>, what: &str) -> Result<ssh::Framed> {
    let got = got.with_context(|| format!("cannot read {what}"))?;
    got.refuse_noise(what)?;
    Ok(got)
}

/// The bytes a remote read brought, whole: a copy cut short (over
/// `cmd::OUTPUT_LIMIT`, or ssh's output left unread past its deadline)
/// would lose the rest on a restore. The bytes as they are (checked against
/// their cksum over there), not a UTF-8 decoding of them: a Latin-1 comment
/// must come back unchanged.
fn whole(got: ssh::Framed, what: &str) -> Result<Vec<u8>> {
    if !got.success() {
        return Err(anyhow!("cannot read {what}: {}", got.message()));
    }
    if let Some(why) = &got.incomplete {
        return Err(anyhow!(
            "cannot read all of {what} ({why}); nonstop edits only small files, read whole"
        ));
    }
    Ok(got.body)
}

/// A remote write's answer. No answer (the time limit, a connection that
/// ended, output without nonstop's frame) says nothing about whether `mv`
/// ran over there. Whatever the login printed besides the frame does not
/// change what the frame says: a restore must not fail on it.
fn remote_write(sent: Result<ssh::Framed>, what: &str) -> Result<()> {
    let out = sent.map_err(|e| {
        anyhow!(MaybeWritten {
            what: what.to_string(),
            why: format!("{e:#}"),
        })
    })?;
    if out.success() {
        Ok(())
    } else if ssh::garbled(&out) {
        Err(anyhow!(
            "cannot write {what}: the bytes that arrived there are not those sent ({}); nothing was replaced",
            out.message()
        ))
    } else {
        Err(anyhow!("cannot write {what}: {}", out.message()))
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (the path may be on
/// another host).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
        let err = crate::route::of(&config).write(b"set $u x;").unwrap_err();
        assert!(err.chain().any(|c| c.is::<MaybeWritten>()), "{err:#}");
        assert!(
            format!("{err:#}").contains("may have taken effect"),
            "{err:#}"
        );
    }
}
