//! `nginx.pid_file` checked against the `pid` of the config `nginx.test`
//! tests (read with `nginx -T`, as [`crate::nginx::conf`] reads nginx's
//! config).
//!
//! A switch is confirmed once the workers of the old configuration stop
//! accepting, and those are found as the children of the master whose pid
//! the pid file holds. A pid file of *another* nginx on the host (a second
//! instance, a container's) passes every look at the file itself: it names
//! a live nginx master. But then every switch waits for workers that a
//! reload of *our* nginx never replaces, times out and is undone. So
//! `profile --check` and the switch (before it writes anything) compare the
//! two paths. When `nginx -T` cannot be read (sudo allowing only `-t`, say),
//! the switch goes on as before with a note: the check must not be what
//! stops a deployment that would work.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::config::Config;
use crate::nginx::conf::{dump_argv, tokenize};
use crate::sys::cmd;
use crate::sys::log::Log;

/// How long `nginx -T` may take.
const LIMIT: Duration = Duration::from_secs(30);

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to compare: no pid file configured (`""`), or nginx on
    /// another host. (Only the modes that reload nginx use the pid file:
    /// they ask.)
    NotUsed,
    /// `nginx.pid_file` is the pid file of nginx's config.
    Same(PathBuf),
    /// They differ.
    Differs { configured: PathBuf, nginx: PathBuf },
    /// They could not be compared; why.
    Unknown(String),
}

/// Compares `nginx.pid_file` with the `pid` of the config `nginx.test` tests.
pub fn compare(config: &Config) -> Verdict {
    let Some(configured) = &config.nginx.pid_file else {
        return Verdict::NotUsed;
    };
    if config.nginx.ssh.is_some() {
        return Verdict::NotUsed;
    }
    let argv = dump_argv(config);
    let dump = match cmd::run(&argv, LIMIT) {
        Ok(out) if out.success() => out.stdout,
        Ok(out) => {
            return Verdict::Unknown(format!(
                "`{}` failed ({}): {}",
                argv.join(" "),
                out.status,
                out.message()
            ))
        }
        Err(e) => return Verdict::Unknown(format!("`{}`: {e:#}", argv.join(" "))),
    };
    let Some(raw) = nginx_pid(&dump, &argv) else {
        return Verdict::Unknown(format!(
            "the config `{}` shows sets no `pid`, so nginx uses its compiled-in default",
            argv.join(" ")
        ));
    };
    let nginx = match resolve(&raw, &argv) {
        Some(p) => p,
        None => {
            return Verdict::Unknown(format!(
                "nginx's `pid {raw};` is relative to its prefix, which `{}` does not name (-p)",
                argv.join(" ")
            ))
        }
    };
    if same_file(configured, &nginx) {
        Verdict::Same(nginx)
    } else {
        Verdict::Differs {
            configured: configured.clone(),
            nginx,
        }
    }
}

/// At the switch, before anything is written: refuses (exit 2, nothing
/// changed) a pid file that is not nginx's; says why it could not compare
/// them when it could not, and goes on.
pub(crate) fn check(config: &Config, log: &Log) -> Result<()> {
    match compare(config) {
        Verdict::Differs { configured, nginx } => {
            Err(crate::sys::error::usage(mismatch(&configured, &nginx)))
        }
        Verdict::Unknown(why) => {
            log.say(format!(
                "note: cannot check nginx.pid_file {} against nginx's config ({why}); going on with it",
                config
                    .nginx
                    .pid_file
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            ));
            Ok(())
        }
        Verdict::NotUsed | Verdict::Same(_) => Ok(()),
    }
}

/// The words of a mismatch, for the switch and `profile --check`.
pub(crate) fn mismatch(configured: &Path, nginx: &Path) -> String {
    format!(
        "nginx.pid_file is {}, but the nginx whose config nginx.test tests writes its pid to {} (its `pid` directive): \
         a switch would wait for the workers of another nginx and be undone. Set \"pid_file\": {:?} in nginx; nothing was changed",
        configured.display(),
        nginx.display(),
        nginx.display().to_string()
    )
}

/// The value of the `pid` directive: from a `-g "pid ...;"` of the argv,
/// else the first `pid` statement outside any block of the dump (nginx
/// refuses `pid` anywhere but the main context, so a file of the dump that
/// has it at its top level is included there).
pub(crate) fn nginx_pid(dump: &str, argv: &[String]) -> Option<String> {
    let from_g = argv
        .windows(2)
        .filter(|w| w[0] == "-g")
        .find_map(|w| top_level_pid(&w[1]));
    from_g.or_else(|| top_level_pid(dump))
}

fn top_level_pid(text: &str) -> Option<String> {
    let words = tokenize(text);
    let mut depth = 0usize;
    let mut start = true;
    for (i, w) in words.iter().enumerate() {
        match w.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "pid" if start && depth == 0 => {
                if let (Some(value), Some(";")) =
                    (words.get(i + 1), words.get(i + 2).map(String::as_str))
                {
                    return Some(value.clone());
                }
            }
            _ => {}
        }
        start = matches!(w.as_str(), "{" | "}" | ";");
    }
    None
}

/// nginx's pid path as an absolute path: relative ones are under the
/// prefix (`-p`); `None` when the argv names none.
fn resolve(raw: &str, argv: &[String]) -> Option<PathBuf> {
    let p = Path::new(raw);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    let prefix = argv
        .windows(2)
        .find(|w| w[0] == "-p")
        .map(|w| PathBuf::from(&w[1]))?;
    Some(prefix.join(p))
}

/// The same file: the same path once `.`/`..` are gone, or the same
/// directory on disk (`/var/run` is a link to `/run` on most systems) and
/// the same name.
fn same_file(a: &Path, b: &Path) -> bool {
    let lexical = |p: &Path| {
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
    };
    let (a, b) = (lexical(a), lexical(b));
    if a == b {
        return true;
    }
    let real = |p: &Path| {
        Some(
            std::fs::canonicalize(p.parent()?)
                .ok()?
                .join(p.file_name()?),
        )
    };
    matches!((real(&a), real(&b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_pid_directive_is_read_from_the_main_context_or_dash_g() {
        let dump = "# configuration file /etc/nginx/nginx.conf:\nuser www-data;\npid /run/nginx.pid; # the master\n\
                    events { }\nhttp { include /etc/nginx/conf.d/*.conf; }\n\
                    # configuration file /etc/nginx/conf.d/a.conf:\nmap $x $pid { default 1; }\n";
        assert_eq!(
            nginx_pid(dump, &argv(&["nginx", "-T"])).as_deref(),
            Some("/run/nginx.pid")
        );
        // A `pid` word that is not a main-context statement is not it.
        let none = "http { map $a $b { pid 1; } }\nlog_format pid '$pid';\n";
        assert_eq!(nginx_pid(none, &argv(&["nginx", "-T"])), None);
        assert_eq!(
            nginx_pid(
                none,
                &argv(&["nginx", "-g", "daemon off; pid /tmp/x.pid;", "-T"])
            )
            .as_deref(),
            Some("/tmp/x.pid")
        );
    }

    #[test]
    fn a_relative_pid_is_under_the_prefix() {
        assert_eq!(
            resolve("logs/nginx.pid", &argv(&["nginx", "-p", "/srv/ngx", "-T"])),
            Some(PathBuf::from("/srv/ngx/logs/nginx.pid"))
        );
        assert_eq!(resolve("logs/nginx.pid", &argv(&["nginx", "-T"])), None);
        assert_eq!(
            resolve("/run/nginx.pid", &argv(&["nginx", "-T"])),
            Some(PathBuf::from("/run/nginx.pid"))
        );
    }

    #[test]
    fn the_same_file_by_path_or_by_its_directory_on_disk() {
        let dir = std::env::temp_dir().join(format!("nonstop-pidfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::os::unix::fs::symlink(dir.join("run"), dir.join("var-run")).unwrap();
        assert!(same_file(
            &dir.join("run/nginx.pid"),
            &dir.join("var-run/nginx.pid")
        ));
        assert!(same_file(
            Path::new("/a/./b/../nginx.pid"),
            Path::new("/a/nginx.pid")
        ));
        assert!(!same_file(
            &dir.join("run/nginx.pid"),
            &dir.join("run/other.pid")
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_mismatch_names_both_and_the_fix() {
        let m = mismatch(Path::new("/run/nginx.pid"), Path::new("/srv/ngx/nginx.pid"));
        assert!(
            m.contains("/run/nginx.pid")
                && m.contains("Set \"pid_file\": \"/srv/ngx/nginx.pid\"")
                && m.contains("nothing was changed"),
            "{m}"
        );
    }
}
