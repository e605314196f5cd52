//! Two hosts on one machine, for the tests of nginx on another host (seed
//! 000): two network namespaces joined by a veth pair, made and removed by
//! the test itself, with traffic only inside them.
//!
//! - [`Place`]: where a server or a stage runs: this machine's loopback, or a
//!   namespace (its processes are started as `ip netns exec NS PROGRAM ...`);
//! - [`in_netns`]: runs a closure on a thread that entered a namespace (the
//!   load clients, a GET through nginx); the test's own threads stay put;
//! - [`Net`]: the two namespaces and the link between them, which it cuts
//!   and mends; on drop it kills every process left in them, by pid, and
//!   deletes them;
//! - [`TwoHosts`]: an nginx host (its own nginx and sshd at 10.77.0.2) and an
//!   app host (the bundle, the stages and the demo jars at 10.77.0.1): nginx
//!   proxies to the app host's address, the stages reach nginx's include and
//!   commands over ssh, and nginx's reload passes a gate the test controls.

use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

use crate::{
    alive, http_get, terminate, wait_until, Bundle, HookRun, Jars, Load, Nginx, Sample, Spawned,
    Sshd, TestDir,
};

/// The app host's address on the link.
pub const APP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The nginx host's address on the link.
pub const NGINX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Each namespace has its own ports, so the book's numbers are free there.
pub const NGINX_PORT: u16 = 8080;
pub const SSH_PORT: u16 = 22;
pub const APP_PORTS: [u16; 2] = [8081, 8082];

const APP_VETH: &str = "veth-app";
const NGINX_VETH: &str = "veth-nginx";

// ---------------------------------------------------------------- places

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
fn ip(args: &[&str]) -> Result<()> {
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

// ---------------------------------------------------------------- the network

/// The app host's and the nginx host's namespaces and the veth pair between
/// them. Remembers when the link was cut and mended.
#[derive(Debug)]
pub struct Net {
    pub app: String,
    pub nginx: String,
    created: Vec<String>,
    cuts: Mutex<Vec<(Instant, Option<Instant>)>>,
}

impl Net {
    /// Creates both namespaces (named after this test process, so parallel
    /// runs never share one), the link, and the addresses.
    pub fn create() -> Result<Net> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "nonstop-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        let mut net = Net {
            app: format!("{id}-app"),
            nginx: format!("{id}-nginx"),
            created: Vec::new(),
            cuts: Mutex::new(Vec::new()),
        };
        for ns in [net.app.clone(), net.nginx.clone()] {
            ip(&["netns", "add", &ns]).context(
                "cannot create a network namespace; these tests need root and iproute2's `ip netns`",
            )?;
            net.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Made inside the namespaces: nothing appears in the machine's own network.
        ip(&[
            "-n", &net.app, "link", "add", APP_VETH, "type", "veth", "peer", "name", NGINX_VETH,
            "netns", &net.nginx,
        ])?;
        for (ns, dev, addr) in [
            (&net.app, APP_VETH, APP_ADDR),
            (&net.nginx, NGINX_VETH, NGINX_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(net)
    }

    /// The app host.
    pub fn app_place(&self) -> Place {
        Place {
            netns: Some(self.app.clone()),
            address: APP_ADDR,
        }
    }

    /// The nginx host.
    pub fn nginx_place(&self) -> Place {
        Place {
            netns: Some(self.nginx.clone()),
            address: NGINX_ADDR,
        }
    }

    fn cut_begins(&self) {
        self.cuts.lock().unwrap().push((Instant::now(), None));
    }

    fn cut_ends(&self) {
        if let Some(last) = self.cuts.lock().unwrap().last_mut() {
            last.1.get_or_insert_with(Instant::now);
        }
    }

    /// Pulls the cable: the app host's end of the link goes down, so
    /// nothing passes either way (the app host gets "network unreachable"
    /// at once, the nginx host's packets are lost).
    pub fn cut(&self) -> Result<()> {
        self.cut_begins();
        ip(&["-n", &self.app, "link", "set", APP_VETH, "down"])
    }

    /// Plugs it back in.
    pub fn mend(&self) -> Result<()> {
        ip(&["-n", &self.app, "link", "set", APP_VETH, "up"])
    }

    /// A silent loss instead: the nginx host drops every packet from and to
    /// the app host (a firewall, a dead switch port), so connections hang
    /// and retry rather than fail at once.
    pub fn drop_packets(&self) -> Result<()> {
        self.cut_begins();
        let app = APP_ADDR.to_string();
        self.iptables(&["-I", "INPUT", "-s", &app, "-j", "DROP"])?;
        self.iptables(&["-I", "OUTPUT", "-d", &app, "-j", "DROP"])
    }

    /// Lets packets through again.
    pub fn pass_packets(&self) -> Result<()> {
        let app = APP_ADDR.to_string();
        self.iptables(&["-D", "INPUT", "-s", &app, "-j", "DROP"])?;
        self.iptables(&["-D", "OUTPUT", "-d", &app, "-j", "DROP"])
    }

    fn iptables(&self, args: &[&str]) -> Result<()> {
        let mut argv = vec!["netns", "exec", &self.nginx, "iptables", "-w"];
        argv.extend_from_slice(args);
        ip(&argv)
    }

    /// Every cut so far, from its start to the moment the link was known to
    /// work again (open-ended cuts end now).
    pub fn cuts(&self) -> Vec<(Instant, Instant)> {
        self.cuts
            .lock()
            .unwrap()
            .iter()
            .map(|&(from, to)| (from, to.unwrap_or_else(Instant::now)))
            .collect()
    }

    /// The pids of the processes in namespace `ns` (`ip netns pids`).
    pub fn pids(ns: &str) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p| p != std::process::id() as i32)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Whatever the test started in them (apps, nginx, sshd, a gate's
        // background reload) and is still there: every process in our own
        // namespaces is one the test started.
        for ns in &self.created {
            for pid in Net::pids(ns) {
                if alive(pid) {
                    terminate(pid, Duration::from_secs(5));
                }
            }
        }
        for ns in &self.created {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

// ---------------------------------------------------------------- the two hosts

/// The nginx host and the app host, wired as seed 000 runs them, and the
/// bundle on the app host. The reload command is a gate ([`TwoHosts::arm_gate`]).
#[derive(Debug)]
pub struct TwoHosts {
    // Dropped in this order: nginx first (it quits gracefully), then sshd,
    // then whatever is left in the namespaces, then the files.
    pub nginx: Nginx,
    pub sshd: Sshd,
    pub bundle: Bundle,
    pub jars: Jars,
    pub app_dir: PathBuf,
    /// Where the reload gate looks for its files.
    pub gate: PathBuf,
    pub net: Net,
    pub dir: TestDir,
}

impl TwoHosts {
    /// Both hosts, nginx routing to real1's port on the app host (nothing
    /// listens there yet).
    pub fn new(name: &str) -> Result<TwoHosts> {
        let dir = TestDir::new(name);
        let net = Net::create()?;
        let jars = Jars::build(&dir.join("build"))?;
        let app_dir = dir.join("app");
        fs::create_dir_all(app_dir.join("zip"))?;

        // The nginx host: its files live under the test's directory (one
        // file system), its processes and sockets in its namespace.
        let prefix = dir.join("nginx");
        fs::create_dir_all(prefix.join("conf.d"))?;
        let include = prefix.join("conf.d/service-url.inc");
        fs::write(
            &include,
            format!("set $service_url http://{APP_ADDR}:{};\n", APP_PORTS[0]),
        )?;
        let nginx = start_nginx(&net.nginx_place(), &prefix, &include)?;
        let sshd = Sshd::start_in(&dir.join("sshd"), &net.nginx_place(), SSH_PORT)?;

        let gate = dir.join("gate");
        let reload = write_gate(&gate, &nginx)?;
        let config = two_hosts_config(&app_dir, &nginx, &include, &reload, ssh_config(&sshd));
        let bundle = Bundle::new(&dir.join("bundle"), &config)?;
        Ok(TwoHosts {
            nginx,
            sshd,
            bundle,
            jars,
            app_dir,
            gate,
            net,
            dir,
        })
    }

    /// The `nginx.ssh.destination` the stages use, as their messages name it.
    pub fn destination(&self) -> String {
        format!("{}@{NGINX_ADDR}", self.sshd.user)
    }

    /// Starts a stage on the app host, as a hook, without waiting.
    pub fn spawn(&self, stage: &str, args: &[&str], deployment: Option<&str>) -> Result<Spawned> {
        self.bundle
            .spawn_in(&self.net.app_place(), stage, args, deployment, |_| {})
    }

    /// Runs a stage on the app host, as a hook.
    pub fn hook(&self, stage: &str, args: &[&str], deployment: Option<&str>) -> Result<HookRun> {
        self.spawn(stage, args, deployment)?
            .finish(Duration::from_secs(90))
    }

    /// Drops a new build into the app host's artifact directory.
    pub fn drop_jar(&self, version: &str) -> Result<PathBuf> {
        self.jars.jar(
            version,
            &self.app_dir.join("zip").join(format!("demo-{version}.jar")),
        )
    }

    /// `start --profile P` and `health --profile P --no-switch` by hand.
    pub fn start_by_hand(&self, profile: &str, version: &str) -> Result<()> {
        self.drop_jar(version)?;
        self.hook("start", &["--profile", profile], None)?
            .assert_ok();
        self.hook("health", &["--profile", profile, "--no-switch"], None)?
            .assert_ok();
        Ok(())
    }

    /// The pid `start` recorded for a profile.
    pub fn launched_pid(&self, profile: &str) -> Option<i32> {
        let path = self
            .app_dir
            .join(".nonstop")
            .join(format!("launched-{profile}.json"));
        let v: Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    }

    /// The include file on the nginx host, now.
    pub fn include(&self) -> String {
        fs::read_to_string(&self.nginx.include).unwrap_or_default()
    }

    /// GET through nginx, from the nginx host (a client of nginx, not across the link).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        in_netns(&self.net.nginx, || {
            http_get(NGINX_PORT, path, Duration::from_secs(10))
        })?
    }

    /// Clients requesting `/` through nginx from the nginx host's side.
    pub fn load(&self) -> Result<Load> {
        in_netns(&self.net.nginx, || {
            Load::start(NGINX_PORT, "/", 2, Duration::from_millis(5))
        })
    }

    /// Cuts the link (see [`Net::cut`]).
    pub fn cut(&self) -> Result<()> {
        self.net.cut()
    }

    /// Mends the link and waits until the app host reaches the nginx host's
    /// sshd again: the cut ends there.
    pub fn mend(&self) -> Result<()> {
        self.net.mend()?;
        self.wait_link()
    }

    /// Drops the packets between the hosts (see [`Net::drop_packets`]).
    pub fn drop_packets(&self) -> Result<()> {
        self.net.drop_packets()
    }

    /// Lets packets through again after [`TwoHosts::drop_packets`], waiting as [`TwoHosts::mend`] does.
    pub fn pass_packets(&self) -> Result<()> {
        self.net.pass_packets()?;
        self.wait_link()
    }

    fn wait_link(&self) -> Result<()> {
        let app = self.net.app_place();
        if !wait_until(Duration::from_secs(10), || {
            app.connects(NGINX_ADDR, SSH_PORT)
        }) {
            bail!("the link between the hosts did not come back within 10 s");
        }
        self.net.cut_ends();
        Ok(())
    }

    /// The next reload waits at the gate: it marks `reached`, then runs
    /// nginx's reload once [`TwoHosts::open_gate`] is called.
    pub fn arm_gate(&self) -> Result<()> {
        fs::write(self.gate.join("armed"), "")?;
        Ok(())
    }

    /// The next reload returns at once, and nginx reloads only once
    /// [`TwoHosts::open_gate`] is called: a reload that takes effect after
    /// the command said it was done.
    pub fn defer_reload(&self) -> Result<()> {
        fs::write(self.gate.join("deferred"), "")?;
        Ok(())
    }

    /// Waits until a reload is held at the gate.
    pub fn wait_at_gate(&self, limit: Duration) -> bool {
        wait_until(limit, || self.gate.join("reached").exists())
    }

    /// Lets the held (or deferred) reload run.
    pub fn open_gate(&self) -> Result<()> {
        fs::write(self.gate.join("go"), "")?;
        Ok(())
    }

    /// True once the gate's reload has run (its `go` was consumed).
    pub fn gate_passed(&self) -> bool {
        !self.gate.join("go").exists()
    }
}

/// Writes the reload gate's script into `gate` (see [`gate_script`]): the
/// `nginx.reload` command of the two hosts.
fn write_gate(gate: &Path, nginx: &Nginx) -> Result<PathBuf> {
    fs::create_dir_all(gate)?;
    let reload = gate.join("reload");
    fs::write(
        &reload,
        gate_script(gate, &nginx.command(&["-s", "reload"])),
    )?;
    fs::set_permissions(&reload, fs::Permissions::from_mode(0o755))?;
    Ok(reload)
}

/// The `nginx.ssh` section reaching `sshd`, made to give up on a dead link soon.
fn ssh_config(sshd: &Sshd) -> Value {
    let mut ssh = sshd.config();
    if let Some(options) = ssh["options"].as_array_mut() {
        // A command whose connection died (the link cut under it) ends
        // after 2 s of silence instead of ssh's minutes of retransmits.
        for o in ["ServerAliveInterval=1", "ServerAliveCountMax=2"] {
            options.extend([json!("-o"), json!(o)]);
        }
    }
    ssh
}

/// The config of the app host's bundle: the app in `app_dir` bound for the
/// other host, nginx's include and commands reached over `ssh`, its reload
/// through the gate.
fn two_hosts_config(
    app_dir: &Path,
    nginx: &Nginx,
    include: &Path,
    reload: &Path,
    ssh: Value,
) -> Value {
    json!({
        "profiles": [
            {"name": "real1", "port": APP_PORTS[0]},
            {"name": "real2", "port": APP_PORTS[1]}
        ],
        "probe_url": format!("http://{NGINX_ADDR}:{NGINX_PORT}/profile"),
        "probe_timeout_ms": 1000,
        "state_dir": ".nonstop",
        "app": {
            "dir": app_dir,
            "artifact": "zip/*.jar",
            "command": [
                "java",
                "-Dspring.profiles.active={profile}",
                "-Dserver.port={port}",
                // nginx reaches it from the other host.
                "-Ddemo.bind=0.0.0.0",
                "-Ddemo.startup.delay.ms=300",
                "-Xshare:auto",
                "-XX:TieredStopAtLevel=1",
                "-jar",
                "{artifact}"
            ],
            "log": "logs/{profile}.log",
            "stop_timeout_secs": 20,
            "start_grace_ms": 1000
        },
        "health": {"path": "/profile", "expect": "{profile}", "interval_ms": 50, "timeout_secs": 30},
        "nginx": {
            "include": include,
            "template": format!("set $service_url http://{APP_ADDR}:{{port}};"),
            "test": nginx.command(&["-t"]),
            "reload": [reload],
            "pid_file": nginx.prefix.join("nginx.pid"),
            "confirm_timeout_secs": 3,
            "ssh": ssh
        }
    })
}

/// The reload command on the nginx host: nginx's own reload, behind a gate
/// of files in `gate` (fixed paths the test made; nothing else reaches this
/// script). A test fixture, so it polls.
fn gate_script(gate: &Path, reload: &[String]) -> String {
    let q = |s: &str| nonstop_common::route::shell_quote(s);
    let reload = reload.iter().map(|w| q(w)).collect::<Vec<_>>().join(" ");
    format!(
        r#"#!/bin/sh
# nginx.reload of the two-host tests (written by tests/src/netns.rs).
gate={gate}
wait_go() {{
    while [ ! -e "$gate/go" ]; do sleep 0.02; done
    rm -f "$gate/go"
}}
if [ -e "$gate/armed" ]; then
    rm -f "$gate/armed"
    : > "$gate/reached"
    wait_go
elif [ -e "$gate/deferred" ]; then
    rm -f "$gate/deferred"
    ( wait_go; exec {reload} ) </dev/null >/dev/null 2>&1 &
    : > "$gate/reached"
    exit 0
fi
exec {reload}
"#,
        gate = q(&gate.to_string_lossy()),
    )
}

/// nginx on the nginx host: listening on its address (for the app host's
/// probe) and on its loopback (for the clients), proxying `/` to the
/// include's `$service_url`. A lost link shows as a 502/504 within 2 s.
fn start_nginx(place: &Place, prefix: &Path, include: &Path) -> Result<Nginx> {
    let p = prefix.display();
    let conf = prefix.join("nginx.conf");
    fs::create_dir_all(prefix.join("tmp"))?;
    fs::write(
        &conf,
        format!(
            "worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    server {{
        listen {NGINX_ADDR}:{NGINX_PORT};
        listen 127.0.0.1:{NGINX_PORT};
        include {include};
        location / {{
            proxy_pass $service_url;
            proxy_set_header Host $host;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
",
            include = include.display()
        ),
    )?;
    let mut child: Child = place
        .command(Nginx::binary())
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(prefix.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start nginx: install it (Debian: nginx)")?;
    let up = wait_until(Duration::from_secs(10), || {
        place.connects(place.address, NGINX_PORT) || matches!(child.try_wait(), Ok(Some(_)))
    });
    if !up || matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(anyhow!(
            "nginx did not listen on {}:{NGINX_PORT}: {}",
            place.address,
            fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
        ));
    }
    Ok(Nginx {
        port: NGINX_PORT,
        prefix: prefix.to_path_buf(),
        conf,
        include: include.to_path_buf(),
        child,
    })
}

/// The samples whose request overlapped none of `cuts` (a request during a
/// cut may fail: nginx cannot reach the app host then).
pub fn outside_cuts(
    samples: Vec<Sample>,
    started: Instant,
    cuts: &[(Instant, Instant)],
) -> Vec<Sample> {
    samples
        .into_iter()
        .filter(|s| {
            let from = started + s.at;
            let to = from + s.latency;
            cuts.iter().all(|&(a, b)| to < a || from > b)
        })
        .collect()
}
