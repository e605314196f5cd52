//! Records the commit nonstop is built from, for every stage's `--version`:
//! `git rev-parse --short HEAD` when the source is a git checkout with git
//! installed, else `NONSTOP_COMMIT` from the build's environment (a CI that
//! builds from a tarball can set it), else "unknown". No crate for it: one
//! command is all it takes.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NONSTOP_COMMIT");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let commit = std::env::var("NONSTOP_COMMIT")
        .ok()
        .filter(|c| is_commit(c))
        .or_else(|| git(&manifest, &["rev-parse", "--short", "HEAD"]).filter(|c| is_commit(c)))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=NONSTOP_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it
    // points to (a commit), wherever git keeps them (a worktree too).
    for what in ["HEAD", "packed-refs"] {
        watch(&manifest, what);
    }
    if let Some(branch) = git(&manifest, &["symbolic-ref", "-q", "HEAD"]) {
        watch(&manifest, &branch);
    }
}

/// A short hex commit, nothing that could break the version line.
fn is_commit(c: &str) -> bool {
    (4..=40).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit())
}

fn git(dir: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn watch(dir: &str, what: &str) {
    if let Some(path) = git(dir, &["rev-parse", "--git-path", what]) {
        let path = Path::new(dir).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
