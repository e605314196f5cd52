//! More of `profile --check` (see [`crate::check`]): files and directories
//! inside the state and app directories that this user cannot write (left
//! by a stage run as root): every stage would fail on them with
//! `Permission denied`.

use std::path::{Path, PathBuf};

use nonstop_common::config::Config;
use nonstop_common::route::mode::Line;
use nonstop_common::sys::files::current_user;

/// The most entries looked at under one directory, and how deep.
const MAX_ENTRIES: usize = 5000;
const MAX_DEPTH: usize = 4;

/// Files and directories inside the state directory and the app directory
/// (the artifact directory's tree left out: nonstop only reads it) that
/// this user cannot write.
pub(crate) fn unwritable_entries(config: &Config) -> Vec<Line> {
    if nix::unistd::geteuid().is_root() {
        return vec![Line::Skip(
            "what the hook user can write inside the state and app directories: run as root; run `profile --check` as the hook user (`sudo -u ec2-user ...`) to have it checked".into(),
        )];
    }
    let skip = artifact_tree(config);
    let mut lines = Vec::new();
    for (what, dir) in [
        ("state directory", &config.state_dir),
        ("app directory", &config.app.dir),
    ] {
        if !dir.is_dir() {
            continue;
        }
        let mut bad = Vec::new();
        let mut seen = 0usize;
        walk(dir, 0, skip.as_deref(), &mut seen, &mut bad);
        if bad.is_empty() {
            lines.push(Line::Ok(format!(
                "everything inside the {what} {} is this user's to write",
                dir.display()
            )));
            continue;
        }
        let shown: Vec<String> = bad
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        let more = if bad.len() > 5 {
            format!(" and {} more", bad.len() - 5)
        } else {
            String::new()
        };
        let dirs: Vec<&PathBuf> = bad.iter().filter(|p| p.is_dir()).take(5).collect();
        let files: Vec<&PathBuf> = bad.iter().filter(|p| !p.is_dir()).take(5).collect();
        let u = current_user();
        let mut fixes = Vec::new();
        if !dirs.is_empty() {
            fixes.push(format!(
                "sudo chown -R {u}: {}",
                dirs.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        if !files.is_empty() {
            fixes.push(format!(
                "sudo chown {u}: {}",
                files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        lines.push(Line::Fail(
            format!(
                "this user cannot write {}{more} inside the {what} {} (left by a stage run as another user, root?): every stage would fail there with `Permission denied`",
                shown.join(", "),
                dir.display()
            ),
            format!(
                "{} (and run the stages only as {u}, as the hooks do)",
                fixes.join(" && ")
            ),
        ));
    }
    lines
}

/// The subtree of the app directory that holds the artifacts: the app
/// directory's child on the way to `app.artifact_dir` (where the agent's
/// copy puts the bundle), or `None` when the artifacts sit in it directly.
fn artifact_tree(config: &Config) -> Option<PathBuf> {
    let rel = config.app.artifact_dir.strip_prefix(&config.app.dir).ok()?;
    let first = rel.components().next()?;
    Some(config.app.dir.join(first))
}

fn walk(dir: &Path, depth: usize, skip: Option<&Path>, seen: &mut usize, bad: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return;
        }
        let path = entry.path();
        if Some(path.as_path()) == skip {
            continue;
        }
        let Ok(meta) = entry.file_type() else {
            continue;
        };
        if meta.is_symlink() {
            continue;
        }
        let writable = nix::unistd::access(&path, nix::unistd::AccessFlags::W_OK).is_ok();
        if !writable {
            bad.push(path.clone());
            continue;
        }
        if meta.is_dir() && depth + 1 < MAX_DEPTH {
            walk(&path, depth + 1, skip, seen, bad);
        }
    }
}
