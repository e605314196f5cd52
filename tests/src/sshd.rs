//! A private OpenSSH server ([`Sshd`]) for nginx "on another host": its own
//! host key and client key, letting in only the current user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::netns::Place;
use crate::{free_port, terminate, wait_until};

/// A private OpenSSH server on a free loopback port (or at a namespace's
/// address), with its own host key and one client key pair made for it; it
/// lets in only the current user with that key. Stopped by pid on drop.
#[derive(Debug)]
pub struct Sshd {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Sshd {
    pub fn start(dir: &Path) -> Result<Sshd> {
        Self::start_in(dir, &Place::loopback(), free_port())
    }

    /// Starts it in `place`, listening on that place's address and `port`.
    pub fn start_in(dir: &Path, place: &Place, port: u16) -> Result<Sshd> {
        fs::create_dir_all(dir)?;
        keygen(dir, "host_key")?;
        keygen(dir, "client_key")?;
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let user = Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
        let address = place.address.to_string();
        let conf = write_config(dir, &address, port, &user)?;
        // sshd run as root insists on its privilege separation directory,
        // which Debian's package creates only when the service starts.
        if user == "root" {
            fs::create_dir_all("/run/sshd")?;
        }
        let child = spawn(dir, place, port, &conf)?;
        let known_hosts = write_known_hosts(dir, &address, port)?;
        Ok(Sshd {
            address,
            port,
            user,
            identity: dir.join("client_key"),
            known_hosts,
            dir: dir.to_path_buf(),
            child,
        })
    }

    /// The `nginx.ssh` section that reaches this server, host key checked.
    pub fn config(&self) -> Value {
        json!({
            "destination": format!("{}@{}", self.user, self.address),
            "port": self.port,
            "identity": self.identity,
            "options": [
                "-o", format!("UserKnownHostsFile={}", self.known_hosts.display()),
                "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes"
            ]
        })
    }

    /// Puts `options` before the client key in authorized_keys (sshd reads
    /// it at every login); `""` takes them away again.
    pub fn key_options(&self, options: &str) -> Result<()> {
        let key = fs::read_to_string(self.dir.join("client_key.pub"))?;
        let line = if options.is_empty() {
            key
        } else {
            format!("{options} {key}")
        };
        fs::write(self.dir.join("authorized_keys"), line)?;
        Ok(())
    }

    /// Every login prints `notice` on stdout, then runs the command it was
    /// given: a `command=` wrapper in authorized_keys that greets (`echo
    /// NOTICE; eval "$SSH_ORIGINAL_COMMAND"`), as a bastion or audit setup has.
    pub fn login_prints(&self, notice: &str) -> Result<()> {
        if notice.contains(['"', '\\', '\'', '\n']) {
            bail!("a notice without quotes, backslashes or newlines: {notice:?}");
        }
        self.key_options(&format!(
            r#"command="echo '{notice}'; eval \"$SSH_ORIGINAL_COMMAND\"""#
        ))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// A new ed25519 key pair without a passphrase: `dir/name` and `dir/name.pub`.
fn keygen(dir: &Path, name: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "nonstop-test", "-f"])
        .arg(dir.join(name))
        .output()
        .context("cannot run ssh-keygen: install openssh-client")?;
    if !out.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `dir/sshd_config`: the keys in `dir`, `address:port`, only `user`, by key.
fn write_config(dir: &Path, address: &str, port: u16, user: &str) -> Result<PathBuf> {
    let d = dir.display();
    let conf = dir.join("sshd_config");
    fs::write(
        &conf,
        format!(
            "Port {port}
ListenAddress {address}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
LogLevel ERROR
"
        ),
    )?;
    Ok(conf)
}

/// Runs sshd in the foreground in `place` and waits until it listens on
/// `port` (10 s at most); its log goes to `dir/sshd.log`.
fn spawn(dir: &Path, place: &Place, port: u16, conf: &Path) -> Result<Child> {
    let log = fs::File::create(dir.join("sshd.log"))?;
    let mut child = place
        .command("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start /usr/sbin/sshd: install openssh-server")?;
    let up = wait_until(Duration::from_secs(10), || {
        place.connects(place.address, port) || matches!(child.try_wait(), Ok(Some(_)))
    });
    if !up || matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "sshd did not listen on {port}: {}",
            fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
    }
    Ok(child)
}

/// `dir/known_hosts`, naming the host key as ssh looks it up for `address:port`.
fn write_known_hosts(dir: &Path, address: &str, port: u16) -> Result<PathBuf> {
    let host_key = fs::read_to_string(dir.join("host_key.pub"))?;
    let known_hosts = dir.join("known_hosts");
    let host = if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    };
    fs::write(&known_hosts, format!("{host} {host_key}"))?;
    Ok(known_hosts)
}

impl Drop for Sshd {
    fn drop(&mut self) {
        terminate(self.pid(), Duration::from_secs(5));
        let _ = self.child.wait();
    }
}
