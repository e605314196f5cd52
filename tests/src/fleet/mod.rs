//! Many servers behind a load balancer, deployed by a CodeDeploy deployment
//! group ([`Fleet`]): the proof that nonstop, a per-server tool, needs
//! nothing fleet-wide.
//!
//! - Each host is a [`Server`] of its own (network and mount namespaces over
//!   the real paths: Debian's nginx on :80, a real `ec2-user` with its own
//!   home and state), set up from README.md's blocks as a reader sets up one
//!   server ([`Kind::Nonstop`]), or, for the comparison, with one app behind
//!   nginx that the hooks stop and start in place ([`Kind::Plain`]).
//! - The hosts sit on a bridge in the fleet's own network namespace
//!   (10.78.0.0/24: the balancer's side .1, host N .1N), where the load
//!   balancer ([`Balancer`], HAProxy) listens on 127.0.0.1:80 and the
//!   clients run ([`Fleet::load`]). No traffic leaves the namespaces.
//! - The service's part ([`Group`], module `group`): the deployment
//!   configurations, minimum healthy hosts, stop on failure; each host's
//!   deployment runs through the real CodeDeploy agent's code ([`Agent`]),
//!   with, when the deployment group blocks traffic, the load balancer's
//!   BlockTraffic before it and AllowTraffic after it ([`Traffic`]).
//! - [`Builds`]: the revisions, with nonstop (`cargo bundle`) or without.

mod balancer;
mod builds;
mod group;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::netns::{in_netns, Net};
use crate::{
    alive, readme_blocks, repo_root, terminate, Agent, DeployOptions, Deployment, Load, Sample,
    Server,
};

pub use balancer::{Balancer, HealthCheck, Stat, BACKEND, HAPROXY};
pub use builds::{Build, Builds, DB_SETTINGS};
pub use group::{DeploymentConfig, Group, HostHealth, HostRun, Rollout, Status};

/// Where a host's bundle is copied (`scp dist/app.zip ec2-user@SERVER:`).
pub const ZIP_ON_SERVER: &str = "/home/ec2-user/app.zip";

/// The README blocks that set a server of the fleet up, in order: one
/// server's setup, then "Many servers"' own (nginx keeps no connection of
/// the load balancer's open between requests, so its reload closes none).
pub const SETUP_BLOCKS: [&str; 4] = [
    "setup-include",
    "setup-nginx",
    "setup-sudoers",
    "fleet-nginx",
];

/// How the hosts run the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// README.md's setup: nonstop's hooks, two profiles, nginx switched.
    Nonstop,
    /// No nonstop: one app on 8080 behind nginx, stopped and started in
    /// place by tests/fleet/plain's hooks.
    Plain,
}

/// Whether the deployment group has the load balancer block traffic.
#[derive(Debug, Clone, Copy)]
pub enum Traffic {
    /// Load balancer not named in the deployment group: hosts keep serving
    /// through it while they are deployed to.
    Untouched,
    /// BlockTraffic before a host's deployment (deregistered, the delay
    /// waited out) and AllowTraffic after it (registered, a health check
    /// passed, at most `allow_limit`). A host whose deployment failed is
    /// left deregistered, as CodeDeploy leaves it.
    Blocked {
        deregistration_delay: Duration,
        allow_limit: Duration,
    },
}

/// One host's deployment, as the harness saw it.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    /// What the agent reported (none when BlockTraffic failed first, or
    /// the driver could not run).
    pub deployment: Option<Deployment>,
    /// BlockTraffic's time, when traffic was blocked.
    pub block: Option<Duration>,
    /// AllowTraffic's time, when it ran.
    pub allow: Option<Duration>,
    /// Why it failed outside the agent's report.
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl HostReport {
    /// The agent's part: the host's own deployment.
    pub fn agent_time(&self) -> Duration {
        self.deployment
            .as_ref()
            .map(|d| d.elapsed)
            .unwrap_or_default()
    }
}

/// The fleet's own network namespace: the bridge, the balancer, the clients.
#[derive(Debug)]
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        for pid in Net::pids(&self.0) {
            if alive(pid) {
                terminate(pid, Duration::from_secs(5));
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The fleet: its hosts, their load balancer, the deployment group's state.
#[derive(Debug)]
pub struct Fleet {
    // Dropped first: HAProxy stops before its namespace goes.
    balancer: Option<Balancer>,
    pub servers: Vec<Server>,
    pub kind: Kind,
    pub group: Group,
    pub agent: Agent,
    /// Every revision deployed, with its hosts' bundles (for a rollback).
    revisions: BTreeMap<String, Vec<PathBuf>>,
    netns: Namespace,
}

/// The bridge's addresses.
pub fn host_address(i: usize) -> String {
    format!("10.78.0.{}", 11 + i)
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Fleet {
    /// `hosts` servers of `kind` on the fleet's bridge, nginx running on
    /// each, set up but nothing deployed. `db_settings[i]`: host i has the
    /// database settings file ([`DB_SETTINGS`]) the needs-db build reads.
    pub fn new(name: &str, kind: Kind, agent: Agent, db_settings: &[bool]) -> Result<Fleet> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let ns = format!(
            "nonstop-{name}-lb-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &ns])
            .context("cannot create a network namespace; the fleet needs root and `ip netns`")?;
        let netns = Namespace(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", "fleet", "type", "bridge"])?;
        ip(&["-n", &ns, "addr", "add", "10.78.0.1/24", "dev", "fleet"])?;
        ip(&["-n", &ns, "link", "set", "fleet", "up"])?;
        let blocks: BTreeMap<String, String> = readme_blocks(&repo_root().join("README.md"))?
            .into_iter()
            .map(|b| (b.name, b.text))
            .collect();
        let mut servers = Vec::new();
        for (i, &settings) in db_settings.iter().enumerate() {
            let server = Server::new(&format!("{name}{}", i + 1))?;
            let port = format!("host{}", i + 1);
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &server.netns,
            ])?;
            ip(&["-n", &ns, "link", "set", &port, "master", "fleet"])?;
            ip(&["-n", &ns, "link", "set", &port, "up"])?;
            let address = format!("{}/24", host_address(i));
            ip(&["-n", &server.netns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &server.netns, "link", "set", "eth0", "up"])?;
            match kind {
                Kind::Nonstop => {
                    server.start_nginx()?;
                    for block in SETUP_BLOCKS {
                        let text = blocks
                            .get(block)
                            .with_context(|| format!("README.md has no block {block}"))?;
                        let out = server.bash(text, "/root")?;
                        if !out.status.success() {
                            bail!(
                                "host{}: README block {block} failed: {}{}",
                                i + 1,
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            );
                        }
                    }
                }
                Kind::Plain => {
                    server.put(
                        "/etc/nginx/sites-available/default",
                        PLAIN_SITE.as_bytes(),
                        0,
                    )?;
                    server.start_nginx()?;
                    user_dir(&server, "/home/ec2-user/app")?;
                    user_dir(&server, "/home/ec2-user/app/plain")?;
                }
            }
            if settings {
                user_dir(&server, "/home/ec2-user/app")?;
                server.put(
                    DB_SETTINGS,
                    b"spring.datasource.url=jdbc:demo\n",
                    server.uid,
                )?;
                fs::set_permissions(
                    server.host_path(DB_SETTINGS)?,
                    fs::Permissions::from_mode(0o600),
                )?;
            }
            servers.push(server);
        }
        let hosts = servers.len();
        Ok(Fleet {
            balancer: None,
            servers,
            kind,
            group: Group::new(hosts),
            agent,
            revisions: BTreeMap::new(),
            netns,
        })
    }

    /// The fleet's namespace (the balancer's and the clients').
    pub fn netns(&self) -> &str {
        &self.netns.0
    }

    /// Starts the load balancer in front of every host; waits until each
    /// passed its health check.
    pub fn start_balancer(&mut self, check: HealthCheck) -> Result<&Balancer> {
        let targets: Vec<String> = (0..self.servers.len()).map(host_address).collect();
        let balancer = Balancer::start(Some(&self.netns.0), &targets, check)?;
        Ok(self.balancer.insert(balancer))
    }

    pub fn balancer(&self) -> Result<&Balancer> {
        self.balancer
            .as_ref()
            .context("the fleet's load balancer is not started")
    }

    /// Clients through the load balancer (its 127.0.0.1:80, from the
    /// fleet's namespace): GETs and POSTs on new and kept-alive connections.
    pub fn load(&self, pause: Duration) -> Result<Load> {
        in_netns(&self.netns.0, || Load::start_mixed(80, "/", pause))
    }

    /// Copies host i's bundle to the deploy user's home there.
    pub fn upload(&self, host: usize, zip: &Path) -> Result<()> {
        let server = &self.servers[host];
        server.put(ZIP_ON_SERVER, &fs::read(zip)?, server.uid)
    }

    /// Runs a README block on host i as root; its output, or an error.
    pub fn run_block(&self, host: usize, name: &str) -> Result<String> {
        let blocks = readme_blocks(&repo_root().join("README.md"))?;
        let block = blocks
            .iter()
            .find(|b| b.name == name)
            .with_context(|| format!("README.md has no block {name}"))?;
        let out = self.servers[host].bash(&block.text, "/root")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("host{}: README block {name} failed: {said}", host + 1);
        }
        Ok(said)
    }

    /// What each host's nginx answers on :80 at `/` (asked on the host).
    pub fn answers(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| match s.get("/") {
                Ok((200, body)) => body,
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => format!("error: {e:#}"),
            })
            .collect()
    }

    /// One deployment of the deployment group: `zips[i]` is copied to host
    /// i, then the group deploys `revision` with `config`, each host through
    /// the agent (with BlockTraffic and AllowTraffic around it when
    /// `traffic` says so).
    pub fn deploy(
        &mut self,
        id: &str,
        revision: &str,
        zips: &[PathBuf],
        config: DeploymentConfig,
        traffic: Traffic,
    ) -> Result<Rollout<HostReport>> {
        for (host, zip) in zips.iter().enumerate() {
            self.upload(host, zip)?;
        }
        self.revisions.insert(revision.to_string(), zips.to_vec());
        if matches!(traffic, Traffic::Blocked { .. }) {
            self.balancer()?;
        }
        let Fleet {
            balancer,
            servers,
            group,
            agent,
            ..
        } = self;
        let (balancer, servers, agent) = (&*balancer, &*servers, &*agent);
        Ok(group.deploy(revision, config, |host| {
            let started = Instant::now();
            let name = format!("host{}", host + 1);
            let mut report = HostReport::default();
            let lb = balancer.as_ref();
            if let (
                Traffic::Blocked {
                    deregistration_delay,
                    ..
                },
                Some(lb),
            ) = (traffic, lb)
            {
                match lb.block(&name, deregistration_delay) {
                    Ok(took) => report.block = Some(took),
                    Err(e) => {
                        report.error = Some(format!("BlockTraffic: {e:#}"));
                        report.elapsed = started.elapsed();
                        return (false, report);
                    }
                }
            }
            let mut ok =
                match agent.deploy(&servers[host], ZIP_ON_SERVER, id, &DeployOptions::default()) {
                    Ok(d) => {
                        let ok = d.succeeded();
                        report.deployment = Some(d);
                        ok
                    }
                    Err(e) => {
                        report.error = Some(format!("{e:#}"));
                        false
                    }
                };
            if let (Traffic::Blocked { allow_limit, .. }, Some(lb), true) = (traffic, lb, ok) {
                match lb.allow(&name, allow_limit) {
                    Ok(took) => report.allow = Some(took),
                    Err(e) => {
                        report.error = Some(format!("AllowTraffic: {e:#}"));
                        ok = false;
                    }
                }
            }
            report.elapsed = started.elapsed();
            (ok, report)
        }))
    }
}

impl Fleet {
    /// CodeDeploy's rollback: the group's last successful revision
    /// redeployed as a new deployment `id` (what an automatic rollback on
    /// DEPLOYMENT_FAILURE does, and a manual one by hand). `None` when the
    /// group never had a successful deployment.
    pub fn roll_back(
        &mut self,
        id: &str,
        config: DeploymentConfig,
        traffic: Traffic,
    ) -> Result<Option<Rollout<HostReport>>> {
        let Some(revision) = self.group.revision.clone() else {
            return Ok(None);
        };
        let zips = self
            .revisions
            .get(&revision)
            .with_context(|| format!("no bundle recorded for {revision}"))?
            .clone();
        self.deploy(id, &revision, &zips, config, traffic).map(Some)
    }
}

/// A deployment group's settings, as README.md's `aws deploy
/// create-deployment-group` block gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    pub config: DeploymentConfig,
    /// `deploymentType=IN_PLACE`.
    pub in_place: bool,
    /// `deploymentOption=WITH_TRAFFIC_CONTROL`: BlockTraffic/AllowTraffic.
    pub traffic_control: bool,
    /// `--auto-rollback-configuration enabled=true,events=DEPLOYMENT_FAILURE`.
    pub rollback_on_failure: bool,
}

/// Reads the settings of an `aws deploy create-deployment-group` command
/// line (continuation lines joined); fails on one it cannot read.
pub fn group_settings(command: &str) -> Result<GroupSettings> {
    let joined = command.replace("\\\n", " ");
    let words: Vec<&str> = joined.split_whitespace().collect();
    if words.get(..3) != Some(&["aws", "deploy", "create-deployment-group"][..]) {
        bail!("not an `aws deploy create-deployment-group` command: {command:?}");
    }
    let value = |flag: &str| -> Option<&str> {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1).copied())
    };
    let config = match value("--deployment-config-name") {
        None | Some("CodeDeployDefault.OneAtATime") => DeploymentConfig::OneAtATime,
        Some("CodeDeployDefault.AllAtOnce") => DeploymentConfig::AllAtOnce,
        Some("CodeDeployDefault.HalfAtATime") => DeploymentConfig::HalfAtATime,
        Some(other) => bail!("a deployment configuration the fleet does not know: {other}"),
    };
    let style = value("--deployment-style").unwrap_or("");
    let pairs: BTreeMap<&str, &str> = style
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let rollback = value("--auto-rollback-configuration").unwrap_or("");
    Ok(GroupSettings {
        config,
        in_place: pairs.get("deploymentType").is_none_or(|t| *t == "IN_PLACE"),
        traffic_control: pairs.get("deploymentOption") == Some(&"WITH_TRAFFIC_CONTROL"),
        rollback_on_failure: rollback.split(',').any(|kv| kv == "enabled=true")
            && rollback.contains("DEPLOYMENT_FAILURE"),
    })
}

/// The comparison's nginx site without nonstop: one app on 8080.
const PLAIN_SITE: &str = "server {
    listen 80 default_server;
    listen [::]:80 default_server;
    server_name _;
    location / {
        proxy_pass http://127.0.0.1:8080;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
}
";

/// A directory of the deploy user's on a server (mode 755), made when missing.
fn user_dir(server: &Server, path: &str) -> Result<()> {
    let host = server.host_path(path)?;
    if !host.is_dir() {
        fs::create_dir_all(&host)?;
        chown(&host, Some(server.uid), Some(server.uid))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// The requests that did not get a 2xx answer.
pub fn failed(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| !(200..300).contains(&s.status))
        .collect()
}

/// The versions that answered (`demo VERSION PROFILE`), with their counts.
pub fn versions_served(samples: &[Sample]) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for s in samples {
        if (200..300).contains(&s.status) {
            let v = s.body.split_whitespace().nth(1).unwrap_or("?").to_string();
            *seen.entry(v).or_insert(0) += 1;
        }
    }
    seen
}
