//! A directory on a small file system of its own ([`SmallFs`]): a tmpfs
//! with a size limit mounted over it inside a private mount namespace, so
//! that a test can fill it (a full disk under the state directory) without
//! a mount anyone else sees, or one left behind if the test dies.
//!
//! The namespace is held by a `sleep` the test started (stopped by its pid
//! on drop, which ends the namespace and its tmpfs). Stages run inside it
//! ([`SmallFs::prefix`]: `nsenter` execs them), and so do
//! the commands they run (nginx's, as wrapper scripts that fill it at a
//! precise step). The test itself sees the directory through the holder's
//! `/proc/PID/root` ([`SmallFs::path`]). Needs root (`unshare -m`).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::terminate;

/// A tmpfs of a few hundred KiB over a directory, in a namespace of its own.
#[derive(Debug)]
pub struct SmallFs {
    holder: Child,
    /// The directory it covers, as the stages name it.
    pub dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `512k`) over `dir`,
    /// holding a copy of what `dir` held, mode 0755 like a directory the
    /// stages made.
    pub fn over(dir: &Path, size: &str) -> Result<SmallFs> {
        // The test's own script (nonstop never runs one).
        let script = r#"set -e
d=$1
t=$(mktemp -d)
cp -a "$d/." "$t/"
mount -t tmpfs -o "size=$2,mode=0755" nonstop-test "$d"
cp -a "$t/." "$d/"
rm -rf "$t"
echo ready
exec sleep 3600"#;
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(dir)
            .arg(size)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot run unshare (util-linux; the tests run as root)")?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!(
                "could not mount a tmpfs over {} in a namespace",
                dir.display()
            );
        }
        Ok(SmallFs {
            holder,
            dir: dir.to_path_buf(),
        })
    }

    /// `rel` inside the small file system, as the test reaches it.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        let inside = self.dir.strip_prefix("/").unwrap_or(&self.dir);
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(inside)
            .join(rel)
    }

    /// The argv prefix that runs a program inside the namespace, where
    /// `dir` is the small file system: for [`crate::Bundle::spawn_under`].
    /// `nsenter` execs the program, so its pid is the program's.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount=/proc/{}/ns/mnt", self.holder.id()),
            "--".into(),
        ]
    }

    /// Fills it: a file of zeros written until the file system says it is
    /// full. Returns how many bytes went in.
    pub fn fill(&self, name: &str) -> Result<u64> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))?;
        let chunk = vec![0u8; 4096];
        let mut written = 0u64;
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(written)
    }

    /// Removes what [`SmallFs::fill`] (or a wrapper script) wrote in `name`.
    pub fn free(&self, name: &str) {
        let _ = fs::remove_file(self.path(name));
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        terminate(self.holder.id() as i32, Duration::from_secs(5));
        let _ = self.holder.wait();
    }
}
