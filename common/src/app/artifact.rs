//! The build a deployment starts: the newest file in `app.artifact`'s
//! directory whose name matches its pattern. `start` copies it into
//! `APP_DIR/PROFILE/`; `stop`, in a deployment, looks for it first and stops
//! nothing when `start` would find nothing to start.
//!
//! A symlink there is followed to the regular file it points at: the
//! CodeDeploy agent copies a link in the bundle as a link (`app.jar ->
//! app-1.2.jar`), and a build may be dropped as one. Only *reading* goes
//! through it (nonstop never writes through a link, see `crate::sys::files`), and only
//! when the directory holding the link passes the same StrictModes check as
//! every directory nonstop writes in: then whoever could plant the link is
//! the running user or root, who can read its target anyway, so following
//! it hands nobody a file they could not read. In a directory others can
//! write, a link is refused by name with the fix.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{anyhow, Context as _, Result};

use crate::config::{wildcard_match, Backend, Config};
use crate::sys::files;

/// The sha256 of a file, in lowercase hex, read in blocks (an artifact may
/// be large). Reading follows a link, as [`newest`] does.
pub fn sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The artifact `start` would install now: the newest (by mtime; a link's
/// target's) regular file, or link to one, in `dir` matching `pattern`.
/// `Err` names the directory and pattern, or the link it will not follow
/// and why, or a name too long to install.
pub fn newest(dir: &Path, pattern: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir)
        .with_context(|| format!("cannot read the artifact directory {}", dir.display()))?;
    let mut best: Option<(SystemTime, PathBuf, bool)> = None;
    let mut not_files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !wildcard_match(pattern, name) {
            continue;
        }
        let Ok(own) = entry.metadata() else { continue };
        let link = own.file_type().is_symlink();
        let meta = if link {
            match fs::metadata(entry.path()) {
                Ok(m) => m,
                Err(e) => {
                    not_files.push(format!("{} (a symlink: {e})", entry.path().display()));
                    continue;
                }
            }
        } else {
            own
        };
        if !meta.is_file() {
            if link {
                not_files.push(format!(
                    "{} (a symlink to something that is not a regular file)",
                    entry.path().display()
                ));
            }
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if best.as_ref().is_none_or(|(t, _, _)| modified > *t) {
            best = Some((modified, entry.path(), link));
        }
    }
    let Some((_, path, link)) = best else {
        let also = if not_files.is_empty() {
            String::new()
        } else {
            format!("; not followed: {}", not_files.join(", "))
        };
        return Err(anyhow!(
            "no file in {} matches {pattern:?}{also}",
            dir.display()
        ));
    };
    if link {
        if let Err(why) = files::check_dirs(&[("artifact directory", dir)]) {
            let to = fs::read_link(&path)
                .map(|t| format!(" (to {})", t.display()))
                .unwrap_or_default();
            return Err(anyhow!(
                "the newest artifact {} is a symlink{to}, and nonstop follows one only in a directory no one but \
                 you and root can write: {why}",
                path.display()
            ));
        }
    }
    // `start` installs it through a temp file of a longer name.
    if let Some(why) = files::too_long(
        Path::new(path.file_name().unwrap_or_default()),
        files::TEMP_EXTRA,
    ) {
        return Err(anyhow!(
            "the newest artifact {} cannot be installed: {why}",
            path.display()
        ));
    }
    Ok(path)
}

/// Before `stop` in a deployment: the artifact `start` will install, or an
/// error naming the directory and pattern (nothing has been stopped yet).
/// The compose backend starts an image, not a file: nothing to look for.
pub fn check_startable(config: &Config) -> Result<Option<PathBuf>> {
    if let Backend::Compose(_) = config.app.backend {
        return Ok(None);
    }
    newest(&config.app.artifact_dir, &config.app.artifact_pattern)
        .map(Some)
        .context("`start` would find no build to start, so nothing is stopped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::time::Duration;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nonstop-artifact-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn age(path: &Path, secs: u64) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn the_newest_matching_file_wins_by_mtime() {
        let dir = temp_dir("newest");
        let old = dir.join("app-2.jar");
        let new = dir.join("app-1.jar");
        fs::write(&old, b"old").unwrap();
        fs::write(&new, b"new").unwrap();
        fs::write(dir.join("notes.txt"), b"x").unwrap();
        age(&old, 60);
        assert_eq!(newest(&dir, "*.jar").unwrap(), new);
        let err = newest(&dir, "*.war").unwrap_err().to_string();
        assert!(
            err.contains("*.war") && err.contains(&dir.display().to_string()),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_to_a_file_is_followed_in_a_directory_only_we_can_write() {
        let dir = temp_dir("link");
        let builds = dir.join("builds");
        fs::create_dir(&builds).unwrap();
        let target = builds.join("app-2.0.jar");
        fs::write(&target, b"v2").unwrap();
        let drop = dir.join("zip");
        fs::create_dir(&drop).unwrap();
        fs::set_permissions(&drop, fs::Permissions::from_mode(0o755)).unwrap();
        let old = drop.join("app-1.0.jar");
        fs::write(&old, b"v1").unwrap();
        age(&old, 60);
        let link = drop.join("app.jar");
        symlink("../builds/app-2.0.jar", &link).unwrap();
        assert_eq!(newest(&drop, "*.jar").unwrap(), link);

        // In a directory its group can write, refused by name with the fix.
        fs::set_permissions(&drop, fs::Permissions::from_mode(0o775)).unwrap();
        let err = newest(&drop, "*.jar").unwrap_err().to_string();
        assert!(
            err.contains(&link.display().to_string())
                && err.contains("../builds/app-2.0.jar")
                && err.contains(&format!("chmod go-w {}", drop.display())),
            "{err}"
        );
        fs::set_permissions(&drop, fs::Permissions::from_mode(0o755)).unwrap();

        // A dangling link or one to a directory is never the artifact, and
        // is named when nothing else matches.
        fs::remove_file(&old).unwrap();
        fs::remove_file(&target).unwrap();
        let err = newest(&drop, "*.jar").unwrap_err().to_string();
        assert!(
            err.contains("not followed") && err.contains("app.jar (a symlink"),
            "{err}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_name_too_long_to_install_is_refused_before_stop() {
        let dir = temp_dir("long");
        let name = format!(
            "{}.jar",
            "a".repeat(files::NAME_MAX - files::TEMP_EXTRA - 3)
        );
        fs::write(dir.join(&name), b"x").unwrap();
        let err = newest(&dir, "*.jar").unwrap_err().to_string();
        assert!(err.contains("cannot be installed"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_compose_backend_has_no_artifact_to_look_for() {
        let c = crate::config::parse(
            r#"{"app": {"dir": "/nonexistent-dir", "backend": "compose",
                "compose": {"file": "c.yml", "project": "p", "services": {"real1": "a", "real2": "b"}}}}"#,
            Path::new("t.json"),
        )
        .unwrap();
        assert_eq!(check_startable(&c).unwrap(), None);
        let c = crate::config::parse(
            r#"{"app": {"dir": "/nonexistent-dir"}}"#,
            Path::new("t.json"),
        )
        .unwrap();
        let err = format!("{:#}", check_startable(&c).unwrap_err());
        assert!(
            err.contains("nothing is stopped") && err.contains("/nonexistent-dir/zip"),
            "{err}"
        );
    }
}
