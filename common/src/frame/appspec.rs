//! CodeDeploy's application spec (`appspec.yml`): where the one shipped
//! with a config lies, and the scripts of its `hooks:` section with their
//! timeouts, which [`crate::frame::budget`] holds each stage's longest wait
//! against.
//!
//! The appspec is read by a small hand-written reader of its `hooks:`
//! section (`- location:` and `timeout:` of each script), not a YAML
//! library: that is all nonstop needs from it.

use std::path::PathBuf;

use crate::config::Config;

/// The file name of CodeDeploy's application spec.
pub const APPSPEC: &str = "appspec.yml";

/// CodeDeploy's default and largest hook timeout.
pub(crate) const CODEDEPLOY_MAX_TIMEOUT: u64 = 3600;

/// One script of an appspec hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The lifecycle event: AfterInstall, ValidateService...
    pub event: String,
    pub location: String,
    /// `None` when the appspec gives none (CodeDeploy's default, 3600 s).
    pub timeout: Option<u64>,
    /// 1-based line of its `location:`, for messages.
    pub line: usize,
}

impl Hook {
    /// The stage it runs: the location's file name (`scripts/health` → `health`).
    pub fn stage(&self) -> &str {
        let file = self.location.split_whitespace().next().unwrap_or("");
        file.rsplit('/').next().unwrap_or(file)
    }
}

/// Reads the scripts of the `hooks:` section of an appspec's text: each
/// `- location:` with its `timeout:`. Understands the block style
/// CodeDeploy documents (and a one-line `{location: ..., timeout: ...}`);
/// everything outside `hooks:` is ignored. `Err` names the line.
pub fn parse_hooks(text: &str) -> Result<Vec<Hook>, String> {
    let mut hooks: Vec<Hook> = Vec::new();
    let mut in_hooks = false;
    let mut event: Option<(String, usize)> = None;
    // The script being read and the indentation of its `-`.
    let mut item: Option<(Hook, usize)> = None;
    let finish = |item: &mut Option<(Hook, usize)>, hooks: &mut Vec<Hook>| {
        if let Some((hook, _)) = item.take() {
            if !hook.location.is_empty() {
                hooks.push(hook);
            }
        }
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
            finish(&mut item, &mut hooks);
            event = None;
            in_hooks = body.trim_end() == "hooks:";
            continue;
        }
        if !in_hooks {
            continue;
        }
        if let Some(rest) = body.strip_prefix('-') {
            // A new script of the current event.
            finish(&mut item, &mut hooks);
            let Some((name, _)) = &event else {
                return Err(format!("line {line_no}: a list item outside an event"));
            };
            let mut hook = Hook {
                event: name.clone(),
                location: String::new(),
                timeout: None,
                line: line_no,
            };
            let rest = rest.trim();
            let pairs: Vec<&str> = match rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                Some(flow) => flow.split(',').collect(),
                None => vec![rest],
            };
            for pair in pairs.into_iter().filter(|p| !p.trim().is_empty()) {
                set(&mut hook, pair, line_no)?;
            }
            item = Some((hook, indent));
            continue;
        }
        match &mut item {
            Some((hook, dash)) if indent > *dash => set(hook, body, line_no)?,
            _ => {
                // An event name: `AfterInstall:`.
                finish(&mut item, &mut hooks);
                let name = body
                    .strip_suffix(':')
                    .filter(|n| !n.contains(':'))
                    .ok_or_else(|| {
                        format!("line {line_no}: expected an event name such as `ValidateService:`")
                    })?;
                event = Some((unquote(name).to_string(), indent));
            }
        }
    }
    finish(&mut item, &mut hooks);
    Ok(hooks)
}

/// `key: value` of a script: keeps `location` and `timeout`.
fn set(hook: &mut Hook, pair: &str, line_no: usize) -> Result<(), String> {
    let Some((key, value)) = pair.split_once(':') else {
        return Err(format!("line {line_no}: expected `key: value`"));
    };
    let value = unquote(value.trim());
    match key.trim() {
        "location" => {
            hook.location = value.to_string();
            hook.line = line_no;
        }
        "timeout" => {
            let secs = value.parse::<u64>().map_err(|_| {
                format!("line {line_no}: timeout {value:?} is not a whole number of seconds")
            })?;
            hook.timeout = Some(secs);
        }
        _ => {}
    }
    Ok(())
}

/// A YAML scalar without its quotes (and surrounding blanks).
pub fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// The line without a `#` comment (one at the start, or after a space,
/// outside quotes).
pub fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev.is_whitespace() => return &line[..i],
            None => {}
        }
        prev = c;
    }
    line
}

/// Where the appspec of a config's bundle is: beside the config, or (a
/// config beside the executable, in `scripts/`) one directory up, at the
/// bundle's root. `None` when there is none.
pub fn appspec_beside(config: &Config) -> Option<PathBuf> {
    let dir = config.source.parent()?;
    let here = dir.join(APPSPEC);
    if here.is_file() {
        return Some(here);
    }
    let exe_dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let beside_exe = std::fs::canonicalize(dir).ok()? == std::fs::canonicalize(&exe_dir).ok()?;
    let up = exe_dir.parent()?.join(APPSPEC);
    (beside_exe && up.is_file()).then_some(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO_APPSPEC: &str = include_str!("../../../appspec.yml");

    #[test]
    fn reads_the_hooks_of_the_repos_appspec() {
        let hooks = parse_hooks(REPO_APPSPEC).unwrap();
        let got: Vec<(&str, &str, Option<u64>)> = hooks
            .iter()
            .map(|h| (h.event.as_str(), h.stage(), h.timeout))
            .collect();
        assert_eq!(
            got,
            [
                ("AfterInstall", "stop", Some(180)),
                ("ApplicationStart", "start", Some(240)),
                ("ValidateService", "health", Some(180)),
            ]
        );
    }

    #[test]
    fn reads_other_layouts_of_the_hooks() {
        let text = "version: 0.0\nhooks:   # the hooks\n  BeforeInstall:\n  - location: \"scripts/stop\"  # ours\n    runas: root\n    timeout: '90'\n  ValidateService:\n    - {location: scripts/health, timeout: 300}\n    - location: scripts/notify.sh\nfiles: []\n";
        let hooks = parse_hooks(text).unwrap();
        assert_eq!(hooks.len(), 3, "{hooks:?}");
        assert_eq!((hooks[0].stage(), hooks[0].timeout), ("stop", Some(90)));
        assert_eq!(hooks[0].event, "BeforeInstall");
        assert_eq!((hooks[1].stage(), hooks[1].timeout), ("health", Some(300)));
        assert_eq!((hooks[2].stage(), hooks[2].timeout), ("notify.sh", None));
        let err = parse_hooks("hooks:\n  AfterInstall:\n    - location: x\n      timeout: 2m\n")
            .unwrap_err();
        assert!(err.contains("line 4") && err.contains("2m"), "{err}");
    }
}
