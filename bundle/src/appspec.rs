//! What the bundle tool needs from an appspec.yml besides its hooks (those
//! are read by `nonstop_common::frame::budget`): the `files:` section, so that the
//! build is put where CodeDeploy's copy brings it to `app.artifact`.
//!
//! A small hand-written reader of the block style CodeDeploy documents, like
//! the hooks' reader: `- source:` / `destination:` pairs, nothing else.

use std::path::{Component, Path, PathBuf};

use nonstop_common::frame::appspec::{strip_comment, unquote};

/// One `files:` entry: the bundle's `source` (relative to its root, `/` for
/// all of it) is copied into `destination` on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copy {
    pub source: String,
    pub destination: String,
    /// 1-based line of its `source:`, for messages.
    pub line: usize,
}

impl Copy {
    /// The source as a path inside the bundle ("" for the root).
    pub(crate) fn source_in_bundle(&self) -> PathBuf {
        Path::new(self.source.trim_matches('/')).to_path_buf()
    }

    /// The destination, normalised (no `.`, no trailing slash).
    pub(crate) fn destination_path(&self) -> PathBuf {
        normalize(Path::new(&self.destination))
    }
}

/// The `files:` entries of an appspec's text. `Err` names the line.
pub(crate) fn parse_files(text: &str) -> Result<Vec<Copy>, String> {
    let mut copies = Vec::new();
    let mut in_files = false;
    let mut current: Option<(Option<String>, Option<String>, usize, usize)> = None;
    let finish = |cur: &mut Option<(Option<String>, Option<String>, usize, usize)>,
                  copies: &mut Vec<Copy>|
     -> Result<(), String> {
        if let Some((source, destination, line, _)) = cur.take() {
            match (source, destination) {
                (Some(source), Some(destination)) => copies.push(Copy {
                    source,
                    destination,
                    line,
                }),
                _ => {
                    return Err(format!(
                        "line {line}: a `files:` entry needs both `source:` and `destination:`"
                    ))
                }
            }
        }
        Ok(())
    };
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let line = strip_comment(raw).trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim_start();
        if indent == 0 {
            finish(&mut current, &mut copies)?;
            in_files = body == "files:";
            continue;
        }
        if !in_files {
            continue;
        }
        let (pair, new_item) = match body.strip_prefix('-') {
            Some(rest) => (rest.trim(), true),
            None => (body, false),
        };
        if new_item {
            finish(&mut current, &mut copies)?;
            current = Some((None, None, line_no, indent));
        }
        let Some((_, _, _, dash)) = &current else {
            return Err(format!(
                "line {line_no}: expected `- source: ...` under `files:`"
            ));
        };
        if !new_item && indent <= *dash {
            return Err(format!(
                "line {line_no}: expected `- source: ...` under `files:`"
            ));
        }
        let Some((key, value)) = pair.split_once(':') else {
            return Err(format!("line {line_no}: expected `key: value`"));
        };
        let value = unquote(value.trim()).to_string();
        if let Some((source, destination, line, _)) = &mut current {
            match key.trim() {
                "source" => {
                    check_source(&value, line_no)?;
                    *source = Some(value);
                    *line = line_no;
                }
                "destination" => *destination = Some(value),
                _ => {}
            }
        }
    }
    finish(&mut current, &mut copies)?;
    Ok(copies)
}

/// A `source` names something inside the bundle: the agent joins it to the
/// bundle's root (`File.join`, so a leading `/` is that root and `/` all of
/// it), and a `..` would climb out of it. Here it would also make the
/// bundle tool write the build outside `--out`, and the zip go without it.
fn check_source(source: &str, line: usize) -> Result<(), String> {
    if Path::new(source)
        .components()
        .any(|c| c == Component::ParentDir)
    {
        return Err(format!(
            "line {line}: `source: {source}` climbs out of the bundle with `..`; CodeDeploy copies from inside the bundle: \
             give a path inside it (`/` for all of it)"
        ));
    }
    Ok(())
}

/// Where in the bundle a file must be for CodeDeploy to copy it into
/// `dir` on the server: the first entry whose destination holds `dir`.
pub(crate) fn place_for<'a>(copies: &'a [Copy], dir: &Path) -> Option<(PathBuf, &'a Copy)> {
    let dir = normalize(dir);
    copies.iter().find_map(|copy| {
        let rest = dir.strip_prefix(copy.destination_path()).ok()?;
        Some((copy.source_in_bundle().join(rest), copy))
    })
}

/// `a/./b/../c` → `a/c`, lexically (the server's paths are not here to ask).
pub(crate) fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_APPSPEC: &str = include_str!("../../appspec.yml");

    #[test]
    fn reads_the_files_of_the_repos_appspec() {
        let copies = parse_files(REPO_APPSPEC).unwrap();
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(copies[0].source, "/");
        assert_eq!(
            copies[0].destination_path(),
            Path::new("/home/ec2-user/app/step3/zip")
        );
        // The book's config: app.dir /home/ec2-user/app/step3, artifact zip/build/libs/*.jar.
        let (inside, _) = place_for(
            &copies,
            Path::new("/home/ec2-user/app/step3/zip/build/libs"),
        )
        .unwrap();
        assert_eq!(inside, Path::new("build/libs"));
        assert!(place_for(&copies, Path::new("/home/ec2-user/app/step3/build")).is_none());
    }

    #[test]
    fn a_source_below_the_root_maps_below_it() {
        let text = "files:\n  - source: build/\n    destination: '/srv/app'  # the jar\n  - source: /\n    destination: /srv/bundle\nhooks: {}\n";
        let copies = parse_files(text).unwrap();
        assert_eq!(copies.len(), 2);
        let (inside, copy) = place_for(&copies, Path::new("/srv/app/libs/")).unwrap();
        assert_eq!((inside.as_path(), copy.line), (Path::new("build/libs"), 2));
        for climbing in ["..", "../dist", "/../etc", "build/../../x"] {
            let err = parse_files(&format!(
                "files:\n  - source: {climbing}\n    destination: /srv/app\n"
            ))
            .unwrap_err();
            assert!(err.contains("line 2") && err.contains("`..`"), "{err}");
        }
        let err = parse_files("files:\n  - source: /\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("destination"),
            "{err}"
        );
    }
}
