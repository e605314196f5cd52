//! A Docker Compose project of the static demo server ([`ComposeProject`]):
//! images built here (no registry), services blue and green, and an unrelated
//! blue-db every deployment must leave running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context as _, Result};

use crate::repo_root;

/// A Docker Compose project of the demo server (examples/demo-server), built
/// here into `FROM scratch` images (no registry is reachable): services
/// blue and green on the two ports, and blue-db, an unrelated service that
/// every deployment must leave running (and whose name a `grep blue` would
/// wrongly match). `down` and the images are removed on drop.
#[derive(Debug)]
pub struct ComposeProject {
    pub name: String,
    pub file: PathBuf,
    pub image: String,
    dir: PathBuf,
    versions: Mutex<Vec<String>>,
}

impl ComposeProject {
    pub fn create(dir: &Path, ports: [u16; 2], startup_delay_ms: u64) -> Result<ComposeProject> {
        fs::create_dir_all(dir)?;
        // The static demo server, std only: rustc alone builds it.
        let source = repo_root().join("examples/demo-server/main.rs");
        let out = Command::new("rustc")
            .args([
                "-O",
                "--edition",
                "2021",
                "-C",
                "target-feature=+crt-static",
                "-o",
            ])
            .arg(dir.join("demo-server"))
            .arg(&source)
            .output()
            .context("cannot run rustc")?;
        if !out.status.success() {
            bail!(
                "rustc {}: {}",
                source.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY demo-server /demo-server\nCOPY version.txt /version.txt\nENTRYPOINT [\"/demo-server\"]\n",
        )?;
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "nonstop{}x{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let image = format!("nonstop-demo-{name}");
        let [p1, p2] = ports;
        let service = |profile: &str, port: u16| {
            format!(
                "  {{name}}:
    image: {image}:current
    environment:
      PROFILE: {profile}
      PORT: \"{port}\"
      STARTUP_DELAY_MS: \"{startup_delay_ms}\"
    ports:
      - \"127.0.0.1:{port}:{port}\"
    stop_grace_period: 20s
"
            )
        };
        let file = dir.join("docker-compose.yml");
        fs::write(
            &file,
            format!(
                // blue-db stands in for the database the seed's compose file holds.
                "version: \"3.7\"\nservices:\n{}{}  blue-db:\n    image: {image}:db\n    environment:\n      PROFILE: db\n      PORT: \"7000\"\n",
                service("real1", p1).replace("{name}", "blue"),
                service("real2", p2).replace("{name}", "green"),
            ),
        )?;
        let project = ComposeProject {
            name,
            file,
            image,
            dir: dir.to_path_buf(),
            versions: Mutex::new(Vec::new()),
        };
        project.build("db")?;
        project.compose(&["up", "-d", "--no-deps", "blue-db"])?;
        Ok(project)
    }

    /// Builds the image of `version` (`IMAGE:version`).
    pub fn build(&self, version: &str) -> Result<()> {
        // One build at a time: the engine's legacy builder, given the same
        // layers by several tests at once (every image here starts with the
        // same demo-server binary), can fail one of them while it registers
        // a layer another build is registering.
        static BUILDING: Mutex<()> = Mutex::new(());
        let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        fs::write(self.dir.join("version.txt"), version)?;
        let tag = format!("{}:{version}", self.image);
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(&self.dir)
            .output()
            .context("cannot run docker")?;
        if !out.status.success() {
            bail!(
                "docker build {tag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.versions.lock().unwrap().push(tag);
        Ok(())
    }

    /// Builds `version` and makes it the image the compose file names.
    pub fn release(&self, version: &str) -> Result<()> {
        self.build(version)?;
        let current = format!("{}:current", self.image);
        let out = Command::new("docker")
            .args(["tag", &format!("{}:{version}", self.image), &current])
            .output()?;
        if !out.status.success() {
            bail!("docker tag: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut v = self.versions.lock().unwrap();
        if !v.contains(&current) {
            v.push(current);
        }
        Ok(())
    }

    /// Runs docker-compose on this project.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("docker-compose")
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.name])
            .args(args)
            .output()
            .context("cannot run docker-compose")?;
        if !out.status.success() {
            bail!(
                "docker-compose {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An operator's one-off of `service` (`compose run -d SERVICE`, as for
    /// a migration or a console), with its extra `args` (`--service-ports`);
    /// its container id. The caller removes it.
    pub fn run_oneoff(&self, service: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        all.push(service);
        let name = self.compose(&all)?.trim().to_string();
        let out = Command::new("docker")
            .args(["inspect", "-f", "{{.Id}}", &name])
            .output()?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || id.is_empty() {
            bail!("no container {name:?} after `run -d {service}`");
        }
        Ok(id)
    }

    /// Whether the container `id` runs.
    pub fn is_running(id: &str) -> bool {
        Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", id])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
    }

    /// Removes the container `id`, running or not.
    pub fn remove(id: &str) {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }

    /// The id of the running container of `service`, if any (not a
    /// one-off of `run`).
    pub fn running(&self, service: &str) -> Option<String> {
        let out = Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter"])
            .arg(format!("label=com.docker.compose.project={}", self.name))
            .arg("--filter")
            .arg(format!("label=com.docker.compose.service={service}"))
            .args(["--filter", "label=com.docker.compose.oneoff=False"])
            .output()
            .ok()?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!id.is_empty()).then_some(id)
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-t", "2", "--remove-orphans"]);
        let tags = self.versions.lock().map(|v| v.clone()).unwrap_or_default();
        for tag in tags {
            let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
        }
    }
}
