//! The load balancer in front of the fleet, standing in for an ALB target
//! group ([`Balancer`]): Debian's HAProxy (`/usr/sbin/haproxy`) in the
//! fleet's own network namespace, listening on its 127.0.0.1:80, round-robin
//! over the servers' nginx on :80 across the bridge, one HTTP health check
//! per server as a target group's (`GET /profile`, 200 expected within 5 s;
//! interval, unhealthy threshold 2, one passing check to come back after a
//! registration). Kept-alive both ways, as an ALB is: a client's connection
//! carries many requests, each balanced on its own, and the connections to
//! nginx are reused (`http-reuse safe`, HAProxy's default). No retry to
//! another server (`retries 0`): an ALB answers 502 rather than resend.
//!
//! Its runtime API (the admin socket, `set server ... state`) plays the
//! target group's registration: [`Balancer::block`] is CodeDeploy's
//! BlockTraffic (deregister: `drain`, no new request; wait the
//! deregistration delay; then `maint`), [`Balancer::allow`] its AllowTraffic
//! (register: back from `maint`, considered down until a health check
//! passes; wait for that). [`Balancer::stats`] reads `show stat`: each
//! server's answers by class, connection and response errors, failed checks.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::{terminate, wait_until, TestDir};

/// Where HAProxy is installed by Debian's package.
pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// The backend's name in HAProxy's config (the target group).
pub const BACKEND: &str = "targets";

/// The health check's settings.
#[derive(Debug, Clone, Copy)]
pub struct HealthCheck {
    /// HealthCheckIntervalSeconds (an ALB's default: 30 s).
    pub interval: Duration,
    /// UnhealthyThresholdCount (an ALB's default: 2).
    pub unhealthy_threshold: u32,
}

/// HAProxy running for a test.
#[derive(Debug)]
pub struct Balancer {
    child: Child,
    socket: PathBuf,
    /// The servers' names in the backend: `host1`, `host2`, ...
    pub servers: Vec<String>,
    pub check: HealthCheck,
    dir: TestDir,
}

/// One row of `show stat`, by column name.
#[derive(Debug, Clone, Default)]
pub struct Stat(pub BTreeMap<String, String>);

impl Stat {
    pub fn get(&self, column: &str) -> &str {
        self.0.get(column).map(String::as_str).unwrap_or("")
    }

    pub fn num(&self, column: &str) -> u64 {
        self.get(column).parse().unwrap_or(0)
    }

    /// The error figures an operator would look at: 5xx answers, failed
    /// connections and responses to the server, failed health checks and
    /// times marked down.
    pub fn errors(&self) -> Vec<(String, u64)> {
        ["hrsp_5xx", "econ", "eresp", "chkfail", "chkdown"]
            .iter()
            .map(|c| (c.to_string(), self.num(c)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl Balancer {
    /// Starts HAProxy in network namespace `netns` (`None`: here) in front
    /// of `targets` (address, port 80 each), and waits until it listens and
    /// every server passed its health check.
    pub fn start(netns: Option<&str>, targets: &[String], check: HealthCheck) -> Result<Balancer> {
        let dir = TestDir::new("balancer");
        let socket = dir.join("admin.sock");
        let servers: Vec<String> = (1..=targets.len()).map(|i| format!("host{i}")).collect();
        let mut config = format!(
            "global
    stats socket {socket} mode 600 level admin
    stats timeout 30s
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    timeout check 5s
    retries 0
frontend web
    bind 127.0.0.1:80
    default_backend {BACKEND}
backend {BACKEND}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /profile ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter {inter} fall {fall} rise 1
",
            socket = socket.display(),
            inter = check.interval.as_millis(),
            fall = check.unhealthy_threshold,
        );
        for (name, address) in servers.iter().zip(targets) {
            config.push_str(&format!("    server {name} {address}:80\n"));
        }
        let cfg = dir.join("haproxy.cfg");
        fs::write(&cfg, &config)?;
        let check_out = Command::new(HAPROXY)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .context("cannot run /usr/sbin/haproxy (Debian: haproxy)")?;
        if !check_out.status.success() {
            bail!(
                "haproxy -c refused the config: {}{}",
                String::from_utf8_lossy(&check_out.stdout),
                String::from_utf8_lossy(&check_out.stderr)
            );
        }
        let log = fs::File::create(dir.join("haproxy.log"))?;
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, HAPROXY]);
                c
            }
            None => Command::new(HAPROXY),
        };
        // -db: in the foreground, so its pid is the child's (ip netns exec
        // execs it) and the test stops it by that pid.
        let child = command
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start haproxy")?;
        let balancer = Balancer {
            child,
            socket,
            servers,
            check,
            dir,
        };
        if !wait_until(Duration::from_secs(10), || {
            balancer.command("show info").is_ok()
        }) {
            bail!(
                "haproxy never answered on its admin socket: {}",
                balancer.log()
            );
        }
        for s in &balancer.servers {
            balancer.wait_status(s, "UP", Duration::from_secs(20))?;
        }
        Ok(balancer)
    }

    /// What HAProxy printed.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    /// One command on the admin socket; its answer.
    pub fn command(&self, line: &str) -> Result<String> {
        let mut s = UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot connect to {}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// Sets a server's administrative state (`ready`, `drain`, `maint`) or
    /// health (`health up|down`); fails on anything but HAProxy's silence.
    fn set(&self, server: &str, what: &str) -> Result<()> {
        let answer = self.command(&format!("set server {BACKEND}/{server} {what}"))?;
        if !answer.trim().is_empty() {
            bail!("haproxy: set server {server} {what}: {}", answer.trim());
        }
        Ok(())
    }

    /// Every row of `show stat`: the frontend, each server, the backend.
    pub fn stats(&self) -> Result<Vec<Stat>> {
        let text = self.command("show stat")?;
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .context("show stat gave no header")?
            .split(',')
            .map(str::to_string)
            .collect();
        Ok(lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                Stat(
                    header
                        .iter()
                        .cloned()
                        .zip(l.split(',').map(str::to_string))
                        .collect(),
                )
            })
            .collect())
    }

    /// The row of one server.
    pub fn server(&self, server: &str) -> Result<Stat> {
        self.stats()?
            .into_iter()
            .find(|s| s.get("pxname") == BACKEND && s.get("svname") == server)
            .with_context(|| format!("haproxy has no server {server}"))
    }

    /// The servers' rows, in order.
    pub fn server_stats(&self) -> Result<Vec<Stat>> {
        self.servers.iter().map(|s| self.server(s)).collect()
    }

    /// Waits until a server's status starts with `status` (UP, DOWN, MAINT,
    /// DRAIN); fails naming what it was.
    pub fn wait_status(&self, server: &str, status: &str, limit: Duration) -> Result<()> {
        let mut last = String::new();
        let reached = wait_until(limit, || {
            last = self
                .server(server)
                .map(|s| s.get("status").to_string())
                .unwrap_or_else(|e| e.to_string());
            // "UP 1/2" is a server going down, not up.
            last == status || (status != "UP" && last.starts_with(status))
        });
        if !reached {
            bail!("haproxy's {server} is {last:?}, not {status}, after {limit:?}");
        }
        Ok(())
    }

    /// CodeDeploy's BlockTraffic: the server is deregistered (draining: no
    /// new request reaches it, those in flight finish), the deregistration
    /// delay is waited out, then it is out of the target group. Returns how
    /// long it took.
    pub fn block(&self, server: &str, delay: Duration) -> Result<Duration> {
        let started = Instant::now();
        self.set(server, "state drain")?;
        self.wait_status(server, "DRAIN", Duration::from_secs(5))?;
        // The deregistration delay itself: a wait the target group imposes,
        // the figure this comparison measures.
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
        self.set(server, "state maint")?;
        Ok(started.elapsed())
    }

    /// CodeDeploy's AllowTraffic: the server is registered again, counts as
    /// unhealthy until a health check passes, and this returns once one
    /// did (or fails after `limit`). Returns how long it took.
    pub fn allow(&self, server: &str, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        self.set(server, "health down")?;
        self.set(server, "state ready")?;
        self.wait_status(server, "UP", limit)?;
        Ok(started.elapsed())
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        terminate(self.child.id() as i32, Duration::from_secs(5));
        let _ = self.child.wait();
    }
}
