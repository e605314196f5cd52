//! Where a process runs ([`Place`]): this machine's loopback or a network
//! namespace; [`in_netns`] runs a closure on a thread inside one.

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};

/// Where a process runs: the test's own network (loopback), or a namespace.
#[derive(Debug, Clone)]
pub struct Place {
    pub netns: Option<String>,
    /// The address servers started here listen on.
    pub address: Ipv4Addr,
}

impl Place {
    pub fn loopback() -> Place {
        Place {
            netns: None,
            address: Ipv4Addr::LOCALHOST,
        }
    }

    /// A command running `program` here. In a namespace `ip netns exec`
    /// execs the program, so the child's pid is the program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(program);
                command
            }
        }
    }

    /// Whether a TCP connection from here to `address:port` opens (1 s at most).
    pub fn connects(&self, address: Ipv4Addr, port: u16) -> bool {
        let connect = move || {
            TcpStream::connect_timeout(&SocketAddr::from((address, port)), Duration::from_secs(1))
                .is_ok()
        };
        match &self.netns {
            None => connect(),
            Some(ns) => in_netns(ns, connect).unwrap_or(false),
        }
    }
}

/// Runs `f` on a new thread that first enters the network namespace `ns`.
/// Threads that `f` starts stay in it too (a thread inherits its creator's
/// namespace), so a [`Load`] started in `f` requests from inside `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let handle =
        fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| -> Result<T> {
            setns(&handle, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter the network namespace {ns}"))?;
            Ok(f())
        });
        // A failed assertion inside `f` fails the test with its own message.
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Runs `ip ARGS`; an error quotes what it said.
pub(super) fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program} (Debian: iproute2, iptables)"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
