//! The demo apps as deployable files: the Java demo compiled once and packed
//! into one jar per version ([`Jars`]), the Python demo zipped per version ([`pyz`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::repo_root;

/// The demo app, compiled once, packed into jars that differ in version.
#[derive(Debug)]
pub struct Jars {
    classes: PathBuf,
    dir: PathBuf,
}

impl Jars {
    /// Compiles examples/demo-app/Demo.java into `dir/classes`.
    pub fn build(dir: &Path) -> Result<Jars> {
        let classes = dir.join("classes");
        fs::create_dir_all(&classes)?;
        let source = repo_root().join("examples/demo-app/Demo.java");
        let out = Command::new("javac")
            .args(["-nowarn", "-XDignore.symbol.file", "-d"])
            .arg(&classes)
            .arg(&source)
            .output()
            .context("cannot run javac: install a JDK (Debian: default-jdk-headless)")?;
        if !out.status.success() {
            bail!("javac failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Jars {
            classes,
            dir: dir.to_path_buf(),
        })
    }

    /// A jar whose GET / answers `demo VERSION PROFILE`, written to `dest`.
    pub fn jar(&self, version: &str, dest: &Path) -> Result<PathBuf> {
        let vdir = self.dir.join(format!("version-{version}"));
        fs::create_dir_all(&vdir)?;
        fs::write(vdir.join("version.txt"), version)?;
        let tmp = self.dir.join(format!("{version}.jar.tmp"));
        let out = Command::new("jar")
            .args(["--create", "--file"])
            .arg(&tmp)
            .args(["--main-class", "Demo", "-C"])
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
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        // Renamed into place, the way a CodeDeploy agent lays files down.
        fs::rename(&tmp, dest)?;
        Ok(dest.to_path_buf())
    }
}

/// The Python demo app (examples/demo-py/server.py) and a version.txt packed
/// by `python3 -m zipapp` into `dest`: one file that carries its version, as
/// a jar does, run by `python3 DEST`.
pub fn pyz(build: &Path, version: &str, dest: &Path) -> Result<PathBuf> {
    let src = build.join(format!("py-{version}"));
    fs::create_dir_all(&src)?;
    fs::copy(
        repo_root().join("examples/demo-py/server.py"),
        src.join("server.py"),
    )?;
    fs::write(src.join("version.txt"), version)?;
    let tmp = build.join(format!("{version}.pyz.tmp"));
    let out = Command::new("python3")
        .args(["-m", "zipapp"])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .args(["-m", "server:main"])
        .output()
        .context("cannot run python3: install it (Debian: python3)")?;
    if !out.status.success() {
        bail!(
            "python3 -m zipapp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(&tmp, dest)?;
    Ok(dest.to_path_buf())
}
