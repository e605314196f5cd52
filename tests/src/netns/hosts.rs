//! Seed 000 on one machine ([`TwoHosts`]): an nginx host with its nginx and
//! sshd, an app host with the bundle and the demo jars, and the reload gate
//! a test holds nginx's reload at.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use super::{in_netns, Net, Place, APP_ADDR, APP_PORTS, NGINX_ADDR, NGINX_PORT, SSH_PORT};
use crate::{
    http_get, wait_until, Bundle, HookRun, Jars, Load, Nginx, Sample, Spawned, Sshd, TestDir,
};

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

    /// `nginx -t` on the nginx host (it binds its listen addresses, which
    /// exist only there): whether nginx's config there passes.
    pub fn nginx_test(&self) -> bool {
        let argv = self.nginx.command(&["-t"]);
        self.net
            .nginx_place()
            .command(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
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
    let q = |s: &str| nonstop_common::route::ssh::shell_quote(s);
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
/// include's `$service_url`, and loading `sites/*.conf` beside it (other
/// sites kept on that host). A lost link shows as a 502/504 within 2 s.
fn start_nginx(place: &Place, prefix: &Path, include: &Path) -> Result<Nginx> {
    let conf = prefix.join("nginx.conf");
    fs::create_dir_all(prefix.join("tmp"))?;
    // Other sites colleagues keep on that host (none at first).
    fs::create_dir_all(prefix.join("sites"))?;
    fs::write(
        &conf,
        format!(
            "{head}    server {{
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
    include {sites}/*.conf;
}}
",
            head = Nginx::conf_head(prefix),
            include = include.display(),
            sites = prefix.join("sites").display()
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
