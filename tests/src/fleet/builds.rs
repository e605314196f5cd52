//! The CI side of the fleet's deployments ([`Builds`]): the demo app
//! compiled once and packed per version, then bundled: with nonstop, by the
//! bundle tool from the repository's appspec.yml and examples/nonstop.json
//! (what `cargo bundle` makes, as README.md's setup deploys it); without, with
//! tests/fleet/plain (the app stopped and started in place).
//!
//! A version can be a build that needs its database settings
//! ([`Build::NeedsDbSettings`]): it reads `/home/ec2-user/app/application-real-db.properties`
//! (the file examples/nonstop.json's command names, as the book's app does)
//! before it starts serving; on a host without that file it tries for 3 s,
//! then exits 1. The same revision then succeeds on the hosts that have the
//! file and fails on one that lacks it, as a revision fails on one host of a
//! real fleet.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};

use crate::{cargo_bundle, repo_root, TestDir};

/// Where the needs-db build reads its settings from.
pub const DB_SETTINGS: &str = "/home/ec2-user/app/application-real-db.properties";

/// What a version's jar does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The demo app (examples/demo-app).
    Demo,
    /// The demo app, first reading its database settings ([`DB_SETTINGS`]).
    NeedsDbSettings,
}

const NEEDS_DB: &str = r#"// A build of the demo app that reads its database settings before it
// serves: without them it tries for 3 s, then gives up (exit 1).
public final class NeedsDb {
    public static void main(String[] args) throws Exception {
        java.nio.file.Path settings = java.nio.file.Path.of(
            "/home/ec2-user/app/application-real-db.properties");
        if (!java.nio.file.Files.isReadable(settings)) {
            System.err.println("demo: cannot read the database settings " + settings + "; trying for 3 s");
            Thread.sleep(3000);
            System.err.println("demo: no database settings, exiting");
            System.exit(1);
        }
        Demo.main(args);
    }
}
"#;

/// The builds of one test or benchmark run.
#[derive(Debug)]
pub struct Builds {
    dir: TestDir,
    classes: PathBuf,
    made: u64,
}

impl Builds {
    /// Compiles the demo app and the needs-db entry point.
    pub fn new(name: &str) -> Result<Builds> {
        let dir = TestDir::new(name);
        let classes = dir.join("classes");
        fs::create_dir_all(&classes)?;
        let needs_db = dir.join("NeedsDb.java");
        fs::write(&needs_db, NEEDS_DB)?;
        let out = Command::new("javac")
            .args(["-nowarn", "-XDignore.symbol.file", "-d"])
            .arg(&classes)
            .arg(repo_root().join("examples/demo-app/Demo.java"))
            .arg(&needs_db)
            .output()
            .context("cannot run javac: install a JDK (Debian: default-jdk-headless)")?;
        if !out.status.success() {
            bail!("javac failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Builds {
            dir,
            classes,
            made: 0,
        })
    }

    /// The jar of `version` at `dest`, dated a minute after the one made
    /// before (as builds are: nonstop deploys the newest).
    pub fn jar(&mut self, version: &str, build: Build, dest: &Path) -> Result<PathBuf> {
        self.made += 1;
        let vdir = self.dir.join(format!("version-{version}"));
        fs::create_dir_all(&vdir)?;
        fs::write(vdir.join("version.txt"), version)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        let main = match build {
            Build::Demo => "Demo",
            Build::NeedsDbSettings => "NeedsDb",
        };
        let out = Command::new("jar")
            .args(["--create", "--file"])
            .arg(dest)
            .args(["--main-class", main, "-C"])
            .arg(&self.classes)
            .arg(".")
            .arg("-C")
            .arg(&vdir)
            .arg("version.txt")
            .output()
            .context("cannot run jar: install a JDK (Debian: default-jdk-headless)")?;
        if !out.status.success() {
            bail!("jar failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs::File::options()
            .write(true)
            .open(dest)?
            .set_modified(SystemTime::now() + Duration::from_secs(60 * self.made))?;
        Ok(dest.to_path_buf())
    }

    /// The nonstop bundle of `version`: `cargo bundle` with the repository's
    /// appspec.yml and examples/nonstop.json.
    pub fn nonstop_zip(&mut self, version: &str, build: Build) -> Result<PathBuf> {
        let ci = self.dir.join(format!("nonstop-{version}"));
        let jar = self.jar(version, build, &ci.join(format!("demo-{version}.jar")))?;
        cargo_bundle(
            &jar,
            &repo_root().join("examples/nonstop.json"),
            &repo_root().join("appspec.yml"),
            &ci.join("dist/app"),
        )
    }

    /// The bundle of `version` without nonstop: tests/fleet/plain's
    /// appspec.yml and scripts, the jar as app.jar.
    pub fn plain_zip(&mut self, version: &str, build: Build) -> Result<PathBuf> {
        let ci = self.dir.join(format!("plain-{version}"));
        let staging = ci.join("bundle");
        let plain = repo_root().join("tests/fleet/plain");
        fs::create_dir_all(staging.join("scripts"))?;
        fs::copy(plain.join("appspec.yml"), staging.join("appspec.yml"))?;
        for script in ["stop.sh", "start.sh", "health.sh"] {
            let to = staging.join("scripts").join(script);
            fs::copy(plain.join("scripts").join(script), &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
        }
        self.jar(version, build, &staging.join("app.jar"))?;
        let zip = ci.join("app.zip");
        let out = Command::new("zip")
            .args(["-q", "-r"])
            .arg(&zip)
            .arg(".")
            .current_dir(&staging)
            .output()
            .context("cannot run zip (Debian: zip)")?;
        if !out.status.success() {
            bail!("zip failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(zip)
    }
}
