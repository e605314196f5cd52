//! Apps nonstop did not start but may stop: the book's own.
//!
//! A server that ran the book's scripts has its apps started by start.sh
//! (`nohup java -jar -Dspring.config.location=... -Dspring.profiles.active=real1
//! $JAR &`): no `launched-*.json` names them and their command line is not
//! `app.command`, so `stop` would refuse the idle one as a stranger and the
//! first nonstop deployment would fail. Such an app is adopted (stopped
//! like one of nonstop's own) when every one of these holds:
//!
//! - it runs as the user the stage runs as (the hook user who started it);
//! - its program is `java` and its arguments have `-jar`;
//! - it names the target profile, and only it, as its Spring profile:
//!   `-Dspring.profiles.active=NAME` or `--spring.profiles.active=NAME`.
//!
//! The other profile's java, another user's java or anything else (an nginx,
//! a database) stays refused, with the reason. Only the command line and
//! owner are read, from /proc; nothing of it reaches a command or a path.

use crate::config::{Config, Profile};
use crate::sys::procs;

/// The Spring option that names the active profiles, in both spellings.
const FLAGS: [&str; 2] = ["-Dspring.profiles.active=", "--spring.profiles.active="];

/// Whether `pid` is an app of the book's kind for `target`: `Ok` with a note
/// for the log, `Err` with why it is not.
pub fn adoptable(config: &Config, target: &Profile, pid: i32) -> Result<String, String> {
    let me = nix::unistd::geteuid().as_raw();
    match uid_of(pid) {
        Some(uid) if uid == me => {}
        Some(uid) => {
            return Err(format!(
            "it runs as uid {uid}, not as this user (uid {me}), so it is not the hook user's app"
        ))
        }
        None => return Err("its owner cannot be read".to_string()),
    }
    judge(config, target, &procs::argv(pid))
}

/// The command-line part of [`adoptable`].
pub(crate) fn judge(config: &Config, target: &Profile, argv: &[String]) -> Result<String, String> {
    let program = argv.first().map(|a| a.rsplit('/').next().unwrap_or(a));
    if program != Some("java") {
        return Err("it is not a `java` process".to_string());
    }
    if !argv.iter().any(|a| a == "-jar") {
        return Err("it is a java process without `-jar`".to_string());
    }
    let named: Vec<&str> = argv
        .iter()
        .filter_map(|a| FLAGS.iter().find_map(|f| a.strip_prefix(f)))
        .collect();
    if named.is_empty() {
        return Err("its command line names no spring.profiles.active".to_string());
    }
    if let Some(other) = named.iter().find(|n| **n != target.name) {
        let whose = config
            .profiles
            .iter()
            .find(|p| p.name == *other)
            .map(|p| format!(", the profile of port {}", p.port))
            .unwrap_or_default();
        return Err(format!(
            "its spring.profiles.active is {other}{whose}, not {}",
            target.name
        ));
    }
    Ok(format!(
        "a `java -jar` of this user with spring.profiles.active={}, as the book's start.sh starts it; adopting it",
        target.name
    ))
}

/// The real uid of a process, from /proc/PID/status.
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(
            r#"{"app": {"dir": "/srv/app"}}"#,
            Path::new("/b/nonstop.json"),
        )
        .unwrap()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_books_start_sh_command_is_adopted_for_its_profile_only() {
        let c = config();
        let (real1, real2) = (&c.profiles[0], &c.profiles[1]);
        let book = argv(&[
            "java",
            "-jar",
            "-Dspring.config.location=classpath:/application.properties,/home/ec2-user/app/application-real.properties",
            "-Dspring.profiles.active=real1",
            "/home/ec2-user/app/step3/demo.jar",
        ]);
        assert!(judge(&c, real1, &book).is_ok());
        let why = judge(&c, real2, &book).unwrap_err();
        assert!(why.contains("real1") && why.contains("8081"), "{why}");
        let spring_arg = argv(&[
            "/usr/bin/java",
            "-jar",
            "app.jar",
            "--spring.profiles.active=real2",
        ]);
        assert!(judge(&c, real2, &spring_arg).is_ok());
        // Both profiles named, no -jar, not java, no profile at all.
        let both = argv(&[
            "java",
            "-Dspring.profiles.active=real2",
            "-jar",
            "a.jar",
            "--spring.profiles.active=real1",
        ]);
        assert!(judge(&c, real2, &both).is_err());
        let no_jar = argv(&["java", "-Dspring.profiles.active=real2", "-cp", "x", "Main"]);
        assert!(judge(&c, real2, &no_jar).unwrap_err().contains("-jar"));
        let nginx = argv(&["nginx: master process /usr/sbin/nginx"]);
        assert!(judge(&c, real2, &nginx).unwrap_err().contains("java"));
        let bare = argv(&["java", "-jar", "a.jar"]);
        assert!(judge(&c, real2, &bare).unwrap_err().contains("names no"));
        assert!(judge(&c, real2, &[]).is_err());
    }

    #[test]
    fn only_this_users_processes() {
        let c = config();
        // This test process is not java, but its owner is readable and ours.
        let why = adoptable(&c, &c.profiles[0], std::process::id() as i32).unwrap_err();
        assert!(why.contains("java"), "{why}");
        // pid 1 runs as root: refused for its owner unless the tests run as root.
        if !nix::unistd::geteuid().is_root() {
            assert!(adoptable(&c, &c.profiles[0], 1)
                .unwrap_err()
                .contains("uid"));
        }
    }
}
