//! The Docker Compose backend: each profile is one service of a Compose
//! project (seeds 003 and 004 run blue and green, or backend-1 and
//! backend-2, that way).
//!
//! Only ever the one service: `up -d --no-deps --force-recreate SERVICE` to
//! start, `stop -t SECS SERVICE` to stop. Never `down`, which would take the
//! live service and the project's database and cache with it. Which
//! containers belong to a service is asked of the engine by its exact
//! Compose labels (`docker ps --filter label=...`) and read as JSON
//! (`docker inspect`), never by grepping `docker ps` (seed 004's `grep blue`
//! would also match `blue-db`). Works with the `docker compose` plugin and
//! the standalone `docker-compose`, picked by config or by which one runs.
//!
//! An operator's `docker compose run -d SERVICE ...` (a migration, a
//! console) makes a container with the service's labels too, marked
//! `com.docker.compose.oneoff=True`: it is not the service (Compose's own
//! `stop SERVICE` leaves it running), so it is never taken for it; where one
//! holds a profile's port it is named as what it is.

use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::config::{Backend, Compose, Config, Profile};
use crate::sys::cmd::{self, Outcome};

/// How long one compose or docker command may take (a pull can be slow).
const LIMIT: Duration = Duration::from_secs(600);

/// The compose settings, when the config uses that backend.
pub fn of(config: &Config) -> Option<&Compose> {
    match &config.app.backend {
        Backend::Compose(c) => Some(c),
        Backend::Process => None,
    }
}

/// The service of a profile.
pub fn service<'a>(compose: &'a Compose, config: &Config, profile: &Profile) -> &'a str {
    let i = config
        .profiles
        .iter()
        .position(|p| p == profile)
        .unwrap_or(0);
    compose.services.get(i).map(String::as_str).unwrap_or("")
}

/// `docker compose` or `docker-compose`: the configured one, else the
/// first that answers `version`.
fn compose_command(compose: &Compose) -> Result<Vec<String>> {
    if let Some(c) = &compose.command {
        return Ok(c.clone());
    }
    let candidates: [Vec<String>; 2] = [
        vec![compose.docker.clone(), "compose".into()],
        vec!["docker-compose".into()],
    ];
    for c in candidates {
        let mut probe = c.clone();
        probe.push("version".into());
        if cmd::run(&probe, Duration::from_secs(30)).is_ok_and(|o| o.success()) {
            return Ok(c);
        }
    }
    Err(anyhow!(
        "neither `{} compose` nor `docker-compose` runs here; install one, or set app.compose.command",
        compose.docker
    ))
}

fn base(compose: &Compose) -> Result<Vec<String>> {
    let mut argv = compose_command(compose)?;
    argv.extend([
        "-f".to_string(),
        compose.file.to_string_lossy().into_owned(),
        "-p".to_string(),
        compose.project.clone(),
    ]);
    Ok(argv)
}

fn run(argv: Vec<String>) -> Result<Outcome> {
    let shown = argv.join(" ");
    let out = cmd::run(&argv, LIMIT)?;
    if out.success() {
        Ok(out)
    } else {
        Err(anyhow!(
            "`{shown}` failed ({}): {}",
            out.status,
            out.message()
        ))
    }
}

/// The services the compose file defines.
pub fn services(compose: &Compose) -> Result<Vec<String>> {
    let mut argv = base(compose)?;
    argv.extend(["config".into(), "--services".into()]);
    let out = run(argv)
        .with_context(|| format!("cannot read the compose file {}", compose.file.display()))?;
    Ok(out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Fails, naming the service and what the file has, unless the compose file
/// defines `service`. Checked before anything is started or stopped.
pub fn check_service(compose: &Compose, service: &str) -> Result<()> {
    let known = services(compose)?;
    if known.iter().any(|s| s == service) {
        Ok(())
    } else {
        Err(anyhow!(
            "the compose file {} has no service {service:?} (it has: {}); check app.compose.services",
            compose.file.display(),
            known.join(", ")
        ))
    }
}

/// `pull SERVICE`.
pub fn pull(compose: &Compose, service: &str) -> Result<()> {
    let mut argv = base(compose)?;
    argv.extend(["pull".into(), service.into()]);
    run(argv).map(|_| ())
}

/// `up -d --no-deps --force-recreate SERVICE`: a fresh container of that
/// service only, from its current image.
pub fn up(compose: &Compose, service: &str) -> Result<()> {
    let mut argv = base(compose)?;
    argv.extend([
        "up".into(),
        "-d".into(),
        "--no-deps".into(),
        "--force-recreate".into(),
        service.into(),
    ]);
    run(argv).map(|_| ())
}

/// `stop -t SECS SERVICE`: SIGTERM, SIGKILL after the timeout, by the engine.
pub(crate) fn stop(compose: &Compose, service: &str, timeout: Duration) -> Result<()> {
    let mut argv = base(compose)?;
    argv.extend([
        "stop".into(),
        "-t".into(),
        timeout.as_secs().max(1).to_string(),
        service.into(),
    ]);
    run(argv).map(|_| ())
}

/// One container, as `docker inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The image's id (sha256:...).
    pub image_id: String,
    /// The image as the compose file names it.
    pub image: String,
    /// created, running, restarting, exited, ...
    pub status: String,
    pub pid: i32,
    pub exit_code: i64,
    pub started_at: String,
    /// The host ports the engine publishes for it (`NetworkSettings.Ports`).
    pub published: Vec<u16>,
    /// `HostConfig.NetworkMode` (`host`: it listens on the host's own ports).
    pub network_mode: String,
    /// A one-off container of `compose run` (label `com.docker.compose.oneoff`).
    pub oneoff: bool,
    /// The service its labels name.
    pub service: String,
}

impl Container {
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }

    /// Running, paused or restarting: the service's own container, whose
    /// port is the service's even when no host process listens on it (a
    /// paused one, or any with the engine's `"userland-proxy": false`).
    pub(crate) fn is_up(&self) -> bool {
        matches!(self.status.as_str(), "running" | "paused" | "restarting")
    }

    /// Whether it holds `port`: up, and the engine publishes that port for
    /// it, or (`network_mode: host`, where nothing is published) one of its
    /// own processes listens on it. Publishing nothing is not holding every
    /// port.
    pub(crate) fn holds(&self, port: u16) -> bool {
        self.is_up()
            && (self.published.contains(&port)
                || (self.network_mode == "host" && self.listens_on(port)))
    }

    /// A process of this container (its main process or one under it, as
    /// the host sees them) listens on `port`.
    fn listens_on(&self, port: u16) -> bool {
        if self.pid <= 0 {
            return false;
        }
        let pids = crate::sys::procs::listening(port)
            .map(|l| l.pids)
            .unwrap_or_default();
        pids.into_iter().any(|mut p| {
            // Up its ancestry, bounded, to the container's main process.
            for _ in 0..64 {
                if p == self.pid {
                    return true;
                }
                match crate::sys::procs::parent(p) {
                    Some(up) if up > 1 && up != p => p = up,
                    _ => return false,
                }
            }
            false
        })
    }

    /// For a one-off container holding `port`: what it is and what to do.
    pub fn oneoff_words(&self, port: u16) -> String {
        format!(
            "container {} ({}) holds port {port}: a one-off `compose run` of service {} \
             (label com.docker.compose.oneoff=True), not the service; nonstop leaves it alone. \
             Stop it once it is done (`docker stop {}`), or run it without the profile's port",
            short_id(&self.id),
            self.name,
            self.service,
            short_id(&self.id)
        )
    }

    /// For a paused container, what to tell the operator: it is the
    /// service's own, frozen, and only they know whether it should go on.
    pub fn paused_advice(&self, service: &str) -> Option<String> {
        (self.status == "paused").then(|| {
            format!(
                "service {service}'s container {} is paused (`docker pause`): it is the service's own, frozen with its \
                 requests; run `docker unpause {}` and then this stage again",
                short_id(&self.id),
                short_id(&self.id)
            )
        })
    }
}

/// Which of the profiles' ports the engine says their services hold, in
/// profile order: the decision upstream-pair detection makes with the
/// Compose backend instead of asking who listens on the host.
pub(crate) fn ports_held(per_profile: &[(u16, Vec<Container>)]) -> Vec<bool> {
    per_profile
        .iter()
        .map(|(port, containers)| containers.iter().any(|c| c.holds(*port)))
        .collect()
}

/// The service's container that is up (running, paused or restarting), if any.
pub fn up_container(compose: &Compose, service: &str) -> Result<Option<Container>> {
    Ok(containers(compose, service)?
        .into_iter()
        .find(Container::is_up))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    image: String,
    state: InspectedState,
    config: InspectedConfig,
    #[serde(default)]
    network_settings: Option<InspectedNetwork>,
    #[serde(default)]
    host_config: Option<InspectedHostConfig>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectedHostConfig {
    #[serde(default)]
    network_mode: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectedNetwork {
    #[serde(default)]
    ports: Option<std::collections::BTreeMap<String, Option<Vec<InspectedBinding>>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedBinding {
    #[serde(default)]
    host_port: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    #[serde(default)]
    status: String,
    #[serde(default)]
    pid: i32,
    #[serde(default)]
    exit_code: i64,
    #[serde(default)]
    started_at: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedConfig {
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

impl From<Inspected> for Container {
    fn from(i: Inspected) -> Container {
        let mut published: Vec<u16> = i
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default()
            .into_values()
            .flatten()
            .flatten()
            .filter_map(|b| b.host_port.parse().ok())
            .collect();
        published.sort_unstable();
        published.dedup();
        let labels = i.config.labels.unwrap_or_default();
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        Container {
            published,
            network_mode: i.host_config.unwrap_or_default().network_mode,
            oneoff: label(ONEOFF).eq_ignore_ascii_case("true"),
            service: label("com.docker.compose.service"),
            id: i.id,
            name: i.name.trim_start_matches('/').to_string(),
            image_id: i.image,
            image: i.config.image,
            status: i.state.status,
            pid: i.state.pid,
            exit_code: i.state.exit_code,
            started_at: i.state.started_at,
        }
    }
}

/// The label Compose puts on the containers of `compose run`.
const ONEOFF: &str = "com.docker.compose.oneoff";

/// The containers of `service` in the project, newest first, by their
/// exact Compose labels; never a one-off of `compose run` (see
/// [`oneoff_holding`]).
pub fn containers(compose: &Compose, service: &str) -> Result<Vec<Container>> {
    Ok(labelled(
        compose,
        &[format!("label=com.docker.compose.service={service}")],
    )?
    .into_iter()
    .filter(|c| !c.oneoff)
    .collect())
}

/// The project's one-off container (of any service) that holds `port`, if
/// one does: an operator's `compose run --service-ports` or `-p`, or one on
/// the host's network listening there.
pub fn oneoff_holding(compose: &Compose, port: u16) -> Option<Container> {
    labelled(compose, &[format!("label={ONEOFF}=True")])
        .ok()?
        .into_iter()
        .find(|c| c.oneoff && c.holds(port))
}

/// The project's containers that also carry `filters`' labels, inspected.
fn labelled(compose: &Compose, filters: &[String]) -> Result<Vec<Container>> {
    let mut argv = vec![
        compose.docker.clone(),
        "ps".into(),
        "-a".into(),
        "-q".into(),
        "--no-trunc".into(),
        "--filter".into(),
        format!("label=com.docker.compose.project={}", compose.project),
    ];
    for f in filters {
        argv.extend(["--filter".to_string(), f.clone()]);
    }
    let ids = run(argv).context("cannot list the containers")?;
    let ids: Vec<String> = ids
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    inspect_all(compose, ids)
}

/// `docker inspect IDS`, read as JSON.
fn inspect_all(compose: &Compose, ids: Vec<String>) -> Result<Vec<Container>> {
    let mut argv = vec![compose.docker.clone(), "inspect".into()];
    argv.extend(ids);
    let out = run(argv).context("cannot inspect the containers")?;
    let inspected: Vec<Inspected> = serde_json::from_str(&out.stdout)
        .map_err(|e| anyhow!("`docker inspect` gave JSON nonstop cannot read: {e}"))?;
    Ok(inspected.into_iter().map(Container::from).collect())
}

/// One container's state now, by id (`None`: it is gone).
pub fn inspect(compose: &Compose, id: &str) -> Option<Container> {
    inspect_all(compose, vec![id.to_string()])
        .ok()?
        .into_iter()
        .next()
}

/// The first 12 characters of a container or image id, as docker shows them.
pub fn short_id(id: &str) -> &str {
    let id = id.trim_start_matches("sha256:");
    id.get(..12).unwrap_or(id)
}

/// The last lines the container printed, for a message.
pub fn logs_tail(compose: &Compose, id: &str) -> String {
    match cmd::run(
        &[
            compose.docker.clone(),
            "logs".into(),
            "--tail".into(),
            "15".into(),
            id.into(),
        ],
        Duration::from_secs(30),
    ) {
        Ok(out) => {
            let text = format!("{}{}", out.stdout, out.stderr);
            if text.trim().is_empty() {
                format!("`docker logs {id}` is empty")
            } else {
                // The container's own output: shown, indented, never used.
                let body: Vec<String> = text
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .map(|l| format!("    {}", l.chars().take(300).collect::<String>()))
                    .collect();
                format!("last lines of `docker logs {id}`:\n{}", body.join("\n"))
            }
        }
        Err(e) => format!("its log could not be read: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(status: &str, published: &[u16]) -> Container {
        Container {
            id: "0123456789abcdef".into(),
            name: "p-green-1".into(),
            image_id: "sha256:x".into(),
            image: "app:current".into(),
            status: status.into(),
            pid: 0,
            exit_code: 0,
            started_at: String::new(),
            published: published.to_vec(),
            network_mode: "bridge".into(),
            oneoff: false,
            service: "green".into(),
        }
    }

    #[test]
    fn the_engine_decides_which_ports_the_services_hold() {
        // With "userland-proxy": false no host process listens on 8082,
        // yet the engine says green publishes it: that port is held.
        for status in ["running", "paused", "restarting"] {
            assert_eq!(
                ports_held(&[
                    (8081, vec![container("exited", &[])]),
                    (8082, vec![container(status, &[8082])]),
                ]),
                vec![false, true],
                "{status}"
            );
        }
        assert_eq!(
            ports_held(&[(8081, vec![]), (8082, vec![container("created", &[8082])])]),
            vec![false, false]
        );
        // Another port published is not this one, and publishing nothing
        // (a `compose run` one-off, a service without `ports:`) holds none.
        assert!(!container("running", &[9000]).holds(8082));
        assert!(!container("running", &[]).holds(8082));
    }

    /// `network_mode: host`: nothing is published; the container holds the
    /// ports its own processes listen on, and only those.
    #[test]
    fn a_host_network_container_holds_what_it_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut c = container("running", &[]);
        c.network_mode = "host".into();
        // This test's process stands in for the container's main process.
        c.pid = std::process::id() as i32;
        assert!(c.holds(port));
        // A port it does not listen on (another process may, but not one
        // of this container's).
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let free = other.local_addr().unwrap().port();
        drop(other);
        assert!(!c.holds(free));
        // Another container's main process: this port is not its.
        c.pid = i32::MAX;
        assert!(!c.holds(port));
        drop(listener);
    }

    #[test]
    fn one_offs_are_told_apart_by_their_label() {
        let json = r#"[{"Id": "def", "Name": "/p_blue_run_3f2a", "Image": "sha256:1",
            "State": {"Status": "running", "Pid": 9},
            "Config": {"Image": "app:current", "Labels": {"com.docker.compose.oneoff": "True",
                "com.docker.compose.service": "blue"}},
            "HostConfig": {"NetworkMode": "default"},
            "NetworkSettings": {"Ports": {"8081/tcp": null}}}]"#;
        let parsed: Vec<Inspected> = serde_json::from_str(json).unwrap();
        let c = Container::from(parsed.into_iter().next().unwrap());
        assert!(c.oneoff && c.published.is_empty() && c.service == "blue");
        assert!(!c.holds(8081));
        let words = c.oneoff_words(8081);
        assert!(
            words.contains("one-off") && words.contains("docker stop def"),
            "{words}"
        );
    }

    #[test]
    fn a_paused_container_is_named_with_what_to_do() {
        let advice = container("paused", &[8082]).paused_advice("green").unwrap();
        assert!(advice.contains("docker unpause 0123456789ab"), "{advice}");
        assert!(container("running", &[8082])
            .paused_advice("green")
            .is_none());
    }

    #[test]
    fn published_ports_are_read_from_docker_inspect() {
        let json = r#"[{"Id": "abc", "Name": "/p-blue-1", "Image": "sha256:1",
            "State": {"Status": "paused", "Pid": 7, "ExitCode": 0, "StartedAt": "t"},
            "Config": {"Image": "app:current"},
            "NetworkSettings": {"Ports": {"8081/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}], "9/udp": null}}}]"#;
        let parsed: Vec<Inspected> = serde_json::from_str(json).unwrap();
        let c = Container::from(parsed.into_iter().next().unwrap());
        assert_eq!(
            (c.status.as_str(), c.published.clone()),
            ("paused", vec![8081])
        );
        assert!(c.holds(8081));
    }
}
