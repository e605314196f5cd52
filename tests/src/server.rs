//! A Debian server of the test's own ([`Server`]): a network namespace and a
//! private mount namespace in which the distribution's real paths are the
//! test's: /etc/nginx (a copy of this machine's, Debian's nginx.conf and
//! default site), /etc/sudoers.d, /etc/passwd and /etc/group (copies, with
//! a real `ec2-user` added) and /etc/shadow (made anew: every user of that
//! passwd with no password, as a cloud image's ec2-user; no hash of this
//! machine is copied), /run, /home, /root, /opt (where the
//! CodeDeploy agent keeps its deployment root) and nginx's /var/log/nginx and
//! /var/lib/nginx are bind mounts of directories under the test's own, made
//! inside that mount namespace only. Debian's nginx runs there on :80 as it
//! would on the server, `sudo` and `su` are the machine's own, and nothing of
//! the machine's own config is touched.
//!
//! Every command runs through `nsenter` into both namespaces, entered
//! through an anchor process that holds them (`unshare --mount` in `ip netns
//! exec`). On drop every process left in the namespace is stopped by pid and
//! the namespace deleted; the mounts die with their namespace.
//!
//! Reused by the README's tests (tests/tests/readme.rs) and meant for a fleet
//! of such servers: each has its own namespace name, and [`Server::place`]
//! lets the harness's clients request from inside it.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::netns::{in_netns, Net, Place};
use crate::{alive, terminate, wait_until, TestDir};

/// The PATH the CodeDeploy agent's service has (systemd's default), which
/// its hooks inherit.
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The deploy user every server has, as on the book's EC2 instance.
pub const DEPLOY_USER: &str = "ec2-user";

/// The server paths that are the test's own, and where their private
/// copies start from (`None`: empty).
const PRIVATE: [(&str, Option<&str>); 11] = [
    ("/etc/nginx", Some("/etc/nginx")),
    ("/etc/sudoers.d", Some("/etc/sudoers.d")),
    ("/etc/passwd", Some("/etc/passwd")),
    ("/etc/group", Some("/etc/group")),
    ("/etc/shadow", None),
    ("/run", None),
    ("/home", None),
    ("/opt", None),
    ("/var/log/nginx", None),
    ("/var/lib/nginx", None),
    ("/root", None),
];

/// One server: its namespaces, its private files, its deploy user.
#[derive(Debug)]
pub struct Server {
    /// The network namespace's name (`ip netns`).
    pub netns: String,
    /// The deploy user's uid and gid (the same number).
    pub uid: u32,
    /// Where the private files live on this machine.
    pub files: PathBuf,
    anchor: Child,
    netns_made: bool,
    _dir: TestDir,
}

impl Server {
    /// A fresh server: Debian's nginx config as the package installs it
    /// (not started: [`Server::start_nginx`]), an `ec2-user` with its home,
    /// nothing deployed.
    pub fn new(name: &str) -> Result<Server> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let netns = format!(
            "nonstop-{}-{}-{}",
            name,
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        let dir = TestDir::new(&format!("server-{name}"));
        let files = dir.join("files");
        let uid = free_uid()?;
        make_private_files(&files, uid)?;

        let ip = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip")
                .args(args)
                .stdin(Stdio::null())
                .output()?;
            if !out.status.success() {
                bail!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        };
        ip(&["netns", "add", &netns]).context(
            "cannot create a network namespace; the server tests need root and iproute2's `ip netns`",
        )?;
        // From here on, drop cleans up.
        let anchor = Command::new("ip")
            .args(["netns", "exec", &netns])
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let anchor = match anchor {
            Ok(a) => a,
            Err(e) => {
                let _ = ip(&["netns", "del", &netns]);
                bail!("cannot start the server's anchor process: {e}");
            }
        };
        let server = Server {
            netns,
            uid,
            files,
            anchor,
            netns_made: true,
            _dir: dir,
        };
        // The anchor must have entered its own mount namespace before any
        // mount is made in it (else the mounts would land in this machine's).
        let own = fs::read_link("/proc/self/ns/mnt")?;
        let entered = wait_until(Duration::from_secs(10), || {
            fs::read_link(format!("/proc/{}/ns/mnt", server.anchor.id())).is_ok_and(|ns| ns != own)
                && fs::read_to_string(format!("/proc/{}/comm", server.anchor.id()))
                    .is_ok_and(|c| c.trim() == "sleep")
        });
        if !entered {
            bail!("the server's anchor process never entered its own mount namespace");
        }
        server.run_checked(&["ip", "link", "set", "lo", "up"])?;
        for (path, _) in PRIVATE {
            let source = server.files.join(path.trim_start_matches('/'));
            let mut mount = server.command("mount");
            mount.arg("--bind").arg(&source).arg(path);
            run(&mut mount).with_context(|| format!("bind-mounting {path}"))?;
        }
        Ok(server)
    }

    /// A command running `program` on the server, as root, in both namespaces.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.anchor.id().to_string())
            .args(["-m", "-n", "--"])
            .arg(program)
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    /// Runs an argv on the server as root; fails with what it said.
    pub fn run_checked(&self, argv: &[&str]) -> Result<Output> {
        let mut c = self.command(argv[0]);
        c.args(&argv[1..]);
        run(&mut c).with_context(|| format!("on the server: {}", argv.join(" ")))
    }

    /// Runs a shell script (a README block) on the server as root with bash,
    /// `-e` so its first failing command fails it, in `cwd`, with `env`
    /// added to an administrator's login environment.
    pub fn bash(&self, script: &str, cwd: &str) -> Result<Output> {
        let mut c = self.command("env");
        c.args([
            "-i",
            "HOME=/root",
            "USER=root",
            "LOGNAME=root",
            "SHELL=/bin/bash",
        ])
        .arg(format!("PATH={AGENT_PATH}"))
        .args(["LANG=C.UTF-8", "bash", "-e", "-o", "pipefail", "-c"])
        .arg(format!("cd {cwd}\n{script}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        Ok(c.output()?)
    }

    /// Where a server path is kept on this machine, for the private paths
    /// (a test reads and plants files through it).
    pub fn host_path(&self, path: &str) -> Result<PathBuf> {
        for (private, _) in PRIVATE {
            if let Ok(rest) = Path::new(path).strip_prefix(private) {
                return Ok(self.files.join(private.trim_start_matches('/')).join(rest));
            }
        }
        bail!("{path} is not one of the server's private paths")
    }

    /// Puts `data` at the server path `path` (a private one), owned by `uid`.
    pub fn put(&self, path: &str, data: &[u8], uid: u32) -> Result<()> {
        let host = self.host_path(path)?;
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&host, data)?;
        chown(&host, Some(uid), Some(uid))?;
        Ok(())
    }

    /// Starts Debian's nginx as the system would (`/usr/sbin/nginx`, which
    /// daemonizes and writes /run/nginx.pid), and waits until :80 answers.
    pub fn start_nginx(&self) -> Result<()> {
        self.run_checked(&["/usr/sbin/nginx"])?;
        let place = self.place();
        if !wait_until(Duration::from_secs(10), || {
            place.connects(place.address, 80)
        }) {
            bail!("the server's nginx does not answer on :80");
        }
        Ok(())
    }

    /// Where a request from inside the server starts: its own loopback.
    pub fn place(&self) -> Place {
        Place {
            netns: Some(self.netns.clone()),
            address: std::net::Ipv4Addr::LOCALHOST,
        }
    }

    /// Runs `f` on a thread inside the server's network namespace.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.netns, f)
    }

    /// One GET through the server's nginx on :80.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.inside(|| crate::http_get(80, path, Duration::from_secs(10)))?
    }

    /// Starts a command on the server as the deploy user, in the background
    /// (`su USER -c LINE`, as a login would; the line is the test's own).
    pub fn spawn_as_user(&self, line: &str) -> Result<Child> {
        let mut c = self.command("su");
        c.args([DEPLOY_USER, "-c", line])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(c.spawn()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // nginx first, gracefully, then everything else the test left there.
        if let Ok(text) = fs::read_to_string(self.files.join("run/nginx.pid")) {
            if let Ok(pid) = text.trim().parse::<i32>() {
                if alive(pid) && Net::pids(&self.netns).contains(&pid) {
                    terminate(pid, Duration::from_secs(5));
                }
            }
        }
        for pid in Net::pids(&self.netns) {
            if pid != self.anchor.id() as i32 && alive(pid) {
                terminate(pid, Duration::from_secs(5));
            }
        }
        let _ = self.anchor.kill();
        let _ = self.anchor.wait();
        if self.netns_made {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .status();
        }
    }
}

/// Runs a command; fails quoting its stderr.
fn run(c: &mut Command) -> Result<Output> {
    let out = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        bail!(
            "failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A uid (and gid) that no user or group of this machine has, for the
/// server's ec2-user.
fn free_uid() -> Result<u32> {
    let taken = |file: &str| -> Result<Vec<u32>> {
        Ok(fs::read_to_string(file)?
            .lines()
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect())
    };
    let users = taken("/etc/passwd")?;
    let groups = taken("/etc/group")?;
    (1900..3000)
        .find(|n| !users.contains(n) && !groups.contains(n))
        .context("no free uid between 1900 and 3000")
}

/// The private copies: this machine's files as they are, the deploy user
/// added to passwd and group, its home made; the empty ones made.
fn make_private_files(files: &Path, uid: u32) -> Result<()> {
    for (path, from) in PRIVATE {
        let to = files.join(path.trim_start_matches('/'));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        match from {
            Some(from) if Path::new(from).is_dir() => {
                fs::create_dir_all(&to)?;
                let out = Command::new("cp")
                    .arg("-a")
                    .arg(format!("{from}/."))
                    .arg(&to)
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "cannot copy {from}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Some(from) => {
                let out = Command::new("cp").arg("-p").arg(from).arg(&to).output()?;
                if !out.status.success() {
                    bail!(
                        "cannot copy {from}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            None if path == "/etc/shadow" => fs::write(&to, "")?,
            None => {
                fs::create_dir_all(&to)?;
                fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    fs::set_permissions(files.join("root"), fs::Permissions::from_mode(0o700))?;
    let append = |file: &str, line: String| -> Result<()> {
        let path = files.join(file);
        let mut text = fs::read_to_string(&path)?;
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        fs::write(&path, text)?;
        Ok(())
    };
    // A shadow entry per user, none with a password: PAM's account check
    // (sudo's, su's) needs one, and none of this machine's is copied.
    let mut shadow = String::new();
    let passwd = fs::read_to_string(files.join("etc/passwd"))?;
    for name in passwd.lines().filter_map(|l| l.split(':').next()) {
        if !name.is_empty() {
            shadow.push_str(&format!("{name}:*:20000:0:99999:7:::\n"));
        }
    }
    shadow.push_str(&format!("{DEPLOY_USER}:!:20000:0:99999:7:::\n"));
    let shadow_path = files.join("etc/shadow");
    fs::write(&shadow_path, shadow)?;
    fs::set_permissions(&shadow_path, fs::Permissions::from_mode(0o640))?;
    append(
        "etc/passwd",
        format!("{DEPLOY_USER}:x:{uid}:{uid}:EC2 Default User:/home/{DEPLOY_USER}:/bin/bash"),
    )?;
    append("etc/group", format!("{DEPLOY_USER}:x:{uid}:"))?;
    let home = files.join("home").join(DEPLOY_USER);
    fs::create_dir_all(&home)?;
    chown(&home, Some(uid), Some(uid))?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700))?;
    Ok(())
}
