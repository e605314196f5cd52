//! Commands on nginx's host, over the system's `ssh`, framed so that only
//! what nonstop's own command printed counts.
//!
//! ssh hands the remote command to the login's shell, and whatever that
//! login prints lands on the same stdout: a `command=` wrapper in
//! `authorized_keys` that echoes a notice, a `~/.bashrc` that prints before
//! its interactive test (bash reads it for an ssh command too), a
//! `ForceCommand` or a profile script. Taken as the include's bytes, such a
//! line was kept in the switch journal and "restored" into nginx's config.
//! A wrapper that runs the command and then something else also turns every
//! exit status into its own.
//!
//! So every remote command is a fixed `sh -c` script, its words passed as
//! positional arguments (never pasted into the script), that prints a line
//! with a random marker before the command's output and, after it, a line
//! with the same marker, the command's exit status and, for a file read,
//! the file's POSIX `cksum` (CRC and length). Here the output between the
//! markers is the command's; the status inside the frame is its status; a
//! file's bytes must match the CRC and length the other host computed; and
//! whatever the login printed outside the frame is kept apart, for the
//! caller to refuse ([`Framed::refuse_noise`]) and for `profile --check` to
//! show. A write is checked over there the same way: the temp file's
//! `cksum` must be what was sent before it is renamed into place.

use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};

use crate::config::Ssh;
use crate::sys::cmd::{self, Outcome};

/// How long one remote command may take, connection included.
const SSH_LIMIT: Duration = Duration::from_secs(30);

/// How much of what a login printed a message quotes.
const QUOTE_LIMIT: usize = 200;

/// The status a write script gives when the bytes that arrived differ from
/// those sent (nothing was renamed).
const GARBLED: i32 = 97;

/// Single-quotes a word for the remote shell.
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The ssh options nonstop sets unless `nginx.ssh.options` sets them: a
/// connection attempt gives up after 10 s, and a link that dies under an
/// open connection is noticed after 2 unanswered keep-alives 5 s apart
/// (~10 s) instead of waiting out the command's whole limit.
pub(crate) const SSH_DEFAULTS: [&str; 3] = [
    "ConnectTimeout=10",
    "ServerAliveInterval=5",
    "ServerAliveCountMax=2",
];

/// The scripts, one line each (a csh login would refuse a newline inside
/// quotes), without a backslash (fish keeps it). `$1` is the marker; the
/// other words follow it. `echo` before the end line starts it on a line of
/// its own, whatever the command's output ended with; [`unframe`] drops
/// that one newline again.
mod script {
    /// `$2...`: the argv to run.
    pub(crate) const RUN: &str =
        r#"n=$1; shift; echo "NONSTOP-$n begin"; "$@"; s=$?; echo; echo "NONSTOP-$n end $s""#;
    /// `$2`: the file. Status `missing` when nothing is there.
    pub(crate) const CAT: &str = r#"n=$1; f=$2; echo "NONSTOP-$n begin"; if [ -e "$f" ]; then cat -- "$f"; s=$?; c=$(cksum < "$f"); else s=missing; c=; fi; echo; echo "NONSTOP-$n end $s $c""#;
    /// `$2`: the symlink. `missing`, or `notlink` for something else there.
    pub(crate) const READLINK: &str = r#"n=$1; f=$2; echo "NONSTOP-$n begin"; if [ -L "$f" ]; then t=$(readlink -- "$f"); s=$?; printf %s "$t"; c=$(printf %s "$t" | cksum); elif [ -e "$f" ]; then s=notlink; c=; else s=missing; c=; fi; echo; echo "NONSTOP-$n end $s $c""#;
    /// stdin to `$2` (the temp file), renamed over `$3` only when its
    /// `cksum` is `$4`; the temp file is removed on any failure.
    pub(crate) const WRITE: &str = r#"n=$1; echo "NONSTOP-$n begin"; if dd of="$2" conv=fsync status=none; then c=$(cksum < "$2"); if [ "$c" = "$4" ]; then mv -f -T -- "$2" "$3"; s=$?; else echo "nonstop: the file written there has cksum $c, not $4" >&2; s=97; fi; else s=$?; fi; [ "$s" = 0 ] || rm -f -- "$2"; echo; echo "NONSTOP-$n end $s""#;
    /// A symlink to `$2` made at `$3` (the temp name), renamed over `$4`
    /// only when it reads back as `$2`.
    pub(crate) const LINK: &str = r#"n=$1; echo "NONSTOP-$n begin"; if ln -sfn -- "$2" "$3"; then if [ "$(readlink -- "$3")" = "$2" ]; then mv -f -T -- "$3" "$4"; s=$?; else s=97; fi; else s=$?; fi; [ "$s" = 0 ] || rm -f -- "$3"; echo; echo "NONSTOP-$n end $s""#;
}

/// What a framed remote command gave.
#[derive(Debug)]
pub(crate) struct Framed {
    /// "nginx's host deploy@web1", for messages.
    pub host: String,
    /// The status the frame reports: a number, or a word of the script's
    /// (`missing`, `notlink`).
    pub status: String,
    /// The command's own stdout, exactly.
    pub body: Vec<u8>,
    /// ssh's stderr (the command's and the login's: it never counts as data).
    pub stderr: String,
    /// What the login printed on stdout outside the frame.
    pub noise: Vec<u8>,
    /// ssh's output was cut short (see `cmd::Outcome::incomplete`).
    pub incomplete: Option<String>,
}

impl Framed {
    /// The frame's status as a number, when it is one.
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.parse().ok()
    }

    pub(crate) fn success(&self) -> bool {
        self.code() == Some(0)
    }

    /// An error naming the host and quoting what its login printed, when it
    /// printed anything besides `what`.
    pub(crate) fn refuse_noise(&self, what: &str) -> Result<()> {
        if self.noise.is_empty() {
            return Ok(());
        }
        Err(anyhow!(
            "{} printed {} over ssh besides {what}; nonstop keeps only what its own command prints, \
             and refuses a login that prints: {}",
            self.host,
            quote(&self.noise),
            LOGIN_FIX
        ))
    }

    /// As a command's outcome: the frame's status, its body as stdout.
    pub(crate) fn outcome(self) -> Outcome {
        let code = self.code().unwrap_or(1).clamp(0, 255);
        Outcome {
            status: ExitStatus::from_raw(code << 8),
            stdout: String::from_utf8_lossy(&self.body).into_owned(),
            stdout_bytes: self.body,
            stderr: self.stderr,
            incomplete: self.incomplete,
        }
    }

    /// stderr, else the body, trimmed: what to quote when the command failed.
    pub(crate) fn message(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            String::from_utf8_lossy(&self.body).into_owned()
        } else {
            self.stderr.clone()
        };
        text.trim().to_string()
    }
}

/// What to do about a login that prints.
pub const LOGIN_FIX: &str =
    "make nginx's host print nothing for an ssh command: the `command=` of \
    this key in authorized_keys, a ~/.bashrc that echoes before its `case $- in *i*)` test (bash \
    reads it for ssh commands), /etc/profile.d scripts or a ForceCommand; `ssh DEST true | od -c` \
    must print nothing";

/// Up to [`QUOTE_LIMIT`] bytes of `bytes`, quoted (escapes for control
/// characters), with the total size when there is more.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTE_LIMIT)]).into_owned();
    if bytes.len() > QUOTE_LIMIT {
        format!("{shown:?}... ({} bytes)", bytes.len())
    } else {
        format!("{shown:?}")
    }
}

/// The POSIX `cksum` of `data` (CRC-32, polynomial 0x04C11DB7, the length
/// folded in, complemented): what `cksum` prints first on any POSIX host.
pub(crate) fn cksum(data: &[u8]) -> u32 {
    fn feed(crc: u32, byte: u8) -> u32 {
        let mut crc = crc ^ (u32::from(byte) << 24);
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
        crc
    }
    let mut crc = data.iter().fold(0, |c, &b| feed(c, b));
    let mut len = data.len() as u64;
    while len != 0 {
        crc = feed(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    !crc
}

/// `cksum`'s line for `data`: "CRC LENGTH".
pub(crate) fn cksum_line(data: &[u8]) -> String {
    format!("{} {}", cksum(data), data.len())
}

/// A marker nobody could have put in a file beforehand.
fn new_marker() -> String {
    format!(
        "{}{}",
        crate::sys::files::random_suffix(),
        crate::sys::files::random_suffix()
    )
}

/// The `ssh` argv that runs `script` with `words` (after the marker) on the
/// nginx host, as `sh -c SCRIPT sh MARKER WORDS...`.
///
/// ssh keeps the *first* value it is given for an option, so the order is
/// what decides: BatchMode=yes first (a deployment never waits at a
/// password prompt, whatever the options say), then the config's port,
/// identity and options, and nonstop's [`SSH_DEFAULTS`] last, so that they
/// never shadow the user's own `ConnectTimeout` and the like.
pub(crate) fn ssh_argv(ssh: &Ssh, script: &str, marker: &str, words: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = ["ssh", "-o", "BatchMode=yes"].map(String::from).to_vec();
    if let Some(port) = ssh.port {
        argv.extend(["-p".to_string(), port.to_string()]);
    }
    if let Some(identity) = &ssh.identity {
        argv.extend(["-i".to_string(), identity.to_string_lossy().into_owned()]);
    }
    argv.extend(ssh.options.iter().cloned());
    for option in SSH_DEFAULTS {
        argv.extend(["-o".to_string(), option.to_string()]);
    }
    argv.push("--".into());
    argv.push(ssh.destination.clone());
    let mut line = vec![
        "sh".to_string(),
        "-c".into(),
        shell_quote(script),
        "sh".into(),
    ];
    line.push(shell_quote(marker));
    line.extend(words.iter().map(|w| shell_quote(w)));
    argv.push(line.join(" "));
    argv
}

/// Runs `argv` on nginx's host.
pub(crate) fn run(ssh: &Ssh, argv: &[&str]) -> Result<Framed> {
    framed(ssh, script::RUN, argv, None)
}

/// Reads a file there: its bytes (checked against its `cksum` there), or
/// status `missing`.
pub(crate) fn cat(ssh: &Ssh, path: &str) -> Result<Framed> {
    framed(ssh, script::CAT, &[path], None)
}

/// Reads a symlink there: its target (checked likewise), or status
/// `missing` / `notlink`.
pub(crate) fn readlink(ssh: &Ssh, path: &str) -> Result<Framed> {
    framed(ssh, script::READLINK, &[path], None)
}

/// Writes `content` to `tmp` there and renames it over `target` once its
/// `cksum` there is `content`'s.
pub(crate) fn write(ssh: &Ssh, tmp: &str, target: &str, content: &[u8]) -> Result<Framed> {
    let sum = cksum_line(content);
    framed(ssh, script::WRITE, &[tmp, target, &sum], Some(content))
}

/// Points a symlink `target` at `dest` there, through `tmp`.
pub(crate) fn link(ssh: &Ssh, dest: &str, tmp: &str, target: &str) -> Result<Framed> {
    framed(ssh, script::LINK, &[dest, tmp, target], None)
}

/// Words for a write's status: the bytes did not arrive as sent.
pub(crate) fn garbled(framed: &Framed) -> bool {
    framed.code() == Some(GARBLED)
}

fn framed(ssh: &Ssh, script: &str, words: &[&str], input: Option<&[u8]>) -> Result<Framed> {
    let marker = new_marker();
    let argv = ssh_argv(ssh, script, &marker, words);
    let out = match input {
        Some(bytes) => cmd::run_with_input(&argv, bytes, SSH_LIMIT),
        None => cmd::run(&argv, SSH_LIMIT),
    };
    let out = checked(ssh, out)?;
    unframe(&host(ssh), &marker, out)
}

fn host(ssh: &Ssh) -> String {
    format!("nginx's host {}", ssh.destination)
}

/// ssh's own failures (exit 255: unreachable, refused, not authorised) are
/// errors naming the host; a remote command's failure is its outcome.
fn checked(ssh: &Ssh, result: Result<Outcome>) -> Result<Outcome> {
    let out = result.with_context(|| format!("cannot run ssh to {}", ssh.destination))?;
    if out.status.code() == Some(255) {
        return Err(anyhow!(
            "cannot reach nginx's host {} over ssh{}: {}",
            ssh.destination,
            ssh.port.map(|p| format!(" (port {p})")).unwrap_or_default(),
            out.message()
        ));
    }
    Ok(out)
}

/// Takes the command's output, status and checksum out of the frame; an
/// error when there is no whole frame (the login ran something else, or the
/// output was cut) or the bytes do not match the checksum.
pub(crate) fn unframe(host: &str, marker: &str, out: Outcome) -> Result<Framed> {
    let stdout = out.stdout_bytes;
    let begin = format!("NONSTOP-{marker} begin\n");
    let end = format!("\nNONSTOP-{marker} end ");
    let missing = |what: &str| {
        anyhow!(
            "{host} did not run nonstop's command as sent ({what}{}); it printed {} (stderr: {})",
            out.incomplete
                .as_deref()
                .map(|w| format!("; {w}"))
                .unwrap_or_default(),
            quote(&stdout),
            quote(out.stderr.trim().as_bytes())
        )
    };
    let Some(at) = find(&stdout, begin.as_bytes(), 0) else {
        return Err(missing("no start marker in its output"));
    };
    let body_from = at + begin.len();
    let Some(end_at) = rfind(&stdout, end.as_bytes(), body_from) else {
        return Err(missing("no end marker in its output"));
    };
    let tail = &stdout[end_at + end.len()..];
    let Some(eol) = tail.iter().position(|&b| b == b'\n') else {
        return Err(missing("its end line is cut short"));
    };
    let fields: Vec<String> = String::from_utf8_lossy(&tail[..eol])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut noise = stdout[..at].to_vec();
    noise.extend_from_slice(&tail[eol + 1..]);
    let body = stdout[body_from..end_at].to_vec();
    let status = fields.first().cloned().unwrap_or_default();
    if let [_, crc, len] = fields.as_slice() {
        let sum = cksum_line(&body);
        if format!("{crc} {len}") != sum {
            return Err(anyhow!(
                "{host} sent {} bytes with cksum {sum}, but the file there has cksum {crc} {len}: it changed while it was read, or something on that host altered the output; nothing was read",
                body.len()
            ));
        }
    }
    Ok(Framed {
        host: host.to_string(),
        status,
        body,
        stderr: out.stderr,
        noise,
        incomplete: out.incomplete,
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn rfind(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .rposition(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(stdout: &[u8]) -> Outcome {
        Outcome {
            status: ExitStatus::from_raw(0),
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stdout_bytes: stdout.to_vec(),
            stderr: String::new(),
            incomplete: None,
        }
    }

    fn local(script: &str, words: &[&str], input: Option<&[u8]>) -> Result<Framed> {
        let marker = new_marker();
        let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into()];
        argv.push(marker.clone());
        argv.extend(words.iter().map(|w| w.to_string()));
        let out = match input {
            Some(b) => cmd::run_with_input(&argv, b, Duration::from_secs(10)),
            None => cmd::run(&argv, Duration::from_secs(10)),
        }?;
        unframe("nginx's host test", &marker, out)
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn ssh_argv_puts_options_before_the_destination() {
        let ssh = crate::config::Ssh {
            destination: "deploy@web1".into(),
            port: Some(2222),
            identity: Some("/k/id".into()),
            options: vec!["-o".into(), "StrictHostKeyChecking=yes".into()],
        };
        let argv = ssh_argv(&ssh, "S", "m", &["nginx", "-t"]);
        let at = argv.iter().position(|a| a == "deploy@web1").unwrap();
        assert_eq!(argv[at - 1], "--");
        assert!(argv[..at].contains(&"2222".to_string()));
        assert!(argv[..at].contains(&"StrictHostKeyChecking=yes".to_string()));
        assert_eq!(argv[at + 1], "sh -c 'S' sh 'm' 'nginx' '-t'");
        assert_eq!(argv.len(), at + 2);
    }

    /// What ssh itself makes of our argv (`ssh -G` prints the options it
    /// would use, without connecting): the user's options win over
    /// nonstop's defaults, BatchMode stays on, keep-alives are set.
    #[test]
    fn ssh_uses_the_users_options_over_nonstops_defaults() {
        let ssh = crate::config::Ssh {
            destination: "deploy@web1".into(),
            port: Some(2222),
            identity: None,
            options: ["-o", "ConnectTimeout=3", "-o", "BatchMode=no"]
                .map(String::from)
                .to_vec(),
        };
        let mut argv = ssh_argv(&ssh, script::RUN, "m", &["true"]);
        argv.insert(1, "-G".into());
        let out = cmd::run(&argv, Duration::from_secs(10)).unwrap();
        assert!(out.success(), "{}", out.message());
        let effective = |key: &str| {
            out.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} ")))
                .map(str::to_string)
                .unwrap_or_default()
        };
        assert_eq!(effective("connecttimeout"), "3", "{}", out.stdout);
        assert_eq!(effective("batchmode"), "yes");
        assert_eq!(effective("serveraliveinterval"), "5");
        assert_eq!(effective("serveralivecountmax"), "2");
        assert_eq!(effective("port"), "2222");
        // Without the user's, nonstop's own.
        let plain = crate::config::Ssh {
            options: vec![],
            ..ssh
        };
        let mut argv = ssh_argv(&plain, script::RUN, "m", &["true"]);
        argv.insert(1, "-G".into());
        let out = cmd::run(&argv, Duration::from_secs(10)).unwrap();
        assert!(out.stdout.lines().any(|l| l == "connecttimeout 10"));
    }

    #[test]
    fn cksum_is_posix_cksum() {
        // The POSIX check value, and what this host's `cksum` says.
        assert_eq!(cksum(b"123456789"), 930_766_865);
        for data in [&b""[..], b"a", b"# r\xe9serv\xe9\nset $u x;\n"] {
            let out =
                cmd::run_with_input(&["cksum".to_string()], data, Duration::from_secs(5)).unwrap();
            assert_eq!(out.stdout.trim(), cksum_line(data), "{data:?}");
        }
    }

    #[test]
    fn the_frame_keeps_the_body_and_sets_the_login_apart() {
        let m = "abc";
        let mut text = b"Welcome to web1\nNONSTOP-abc begin\n".to_vec();
        text.extend_from_slice(b"# caf\xe9\nset x;\n");
        text.extend_from_slice(
            format!(
                "\nNONSTOP-abc end 0 {}\nbye\n",
                cksum_line(b"# caf\xe9\nset x;\n")
            )
            .as_bytes(),
        );
        let f = unframe("h", m, outcome(&text)).unwrap();
        assert_eq!(f.body, b"# caf\xe9\nset x;\n");
        assert_eq!(f.noise, b"Welcome to web1\nbye\n");
        let err = f.refuse_noise("the include").unwrap_err().to_string();
        assert!(err.contains("\"Welcome to web1\\nbye\\n\""), "{err}");
        // A body that does not match its checksum is refused.
        let bad = b"NONSTOP-abc begin\nxyz\nNONSTOP-abc end 0 1 3\n";
        assert!(unframe("h", m, outcome(bad)).is_err());
        // No frame: the login ran something else.
        let err = unframe("h", m, outcome(b"forced command\n")).unwrap_err();
        assert!(
            format!("{err}").contains("did not run nonstop's command"),
            "{err}"
        );
    }

    #[test]
    fn long_noise_is_quoted_bounded() {
        let q = quote(&[b'x'; 5000]);
        assert!(q.len() < 300 && q.ends_with("(5000 bytes)"), "{q}");
    }

    /// The scripts themselves, run by this host's sh.
    #[test]
    fn the_scripts_read_and_write_exactly() {
        let dir = std::env::temp_dir().join(format!("nonstop-remote-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("inc");
        let f = file.to_str().unwrap();
        let content = b"# r\xe9serv\xe9\nset $u x;\n\n".to_vec();
        std::fs::write(&file, &content).unwrap();
        let read = local(script::CAT, &[f], None).unwrap();
        assert_eq!((read.status.as_str(), read.body.clone()), ("0", content));
        assert!(read.noise.is_empty());
        let gone = dir.join("none");
        let read = local(script::CAT, &[gone.to_str().unwrap()], None).unwrap();
        assert_eq!(read.status, "missing");

        let tmp = dir.join(".inc.tmp");
        let new = b"set $u y;\n";
        let sum = cksum_line(new);
        let w = local(script::WRITE, &[tmp.to_str().unwrap(), f, &sum], Some(new)).unwrap();
        assert!(w.success(), "{w:?}");
        assert_eq!(std::fs::read(&file).unwrap(), new);
        // What arrives is not what was sent: nothing is renamed.
        let w = local(
            script::WRITE,
            &[tmp.to_str().unwrap(), f, "1 1"],
            Some(b"zz"),
        )
        .unwrap();
        assert!(garbled(&w), "{w:?}");
        assert_eq!(std::fs::read(&file).unwrap(), new);
        assert!(!tmp.exists());

        let link = dir.join("link");
        let l = link.to_str().unwrap();
        let w = local(
            script::LINK,
            &["../sites/blue", tmp.to_str().unwrap(), l],
            None,
        )
        .unwrap();
        assert!(w.success(), "{w:?}");
        let r = local(script::READLINK, &[l], None).unwrap();
        assert_eq!(
            (r.status.as_str(), r.body.as_slice()),
            ("0", &b"../sites/blue"[..])
        );
        let r = local(script::READLINK, &[f], None).unwrap();
        assert_eq!(r.status, "notlink");

        let r = local(script::RUN, &["sh", "-c", "echo out; exit 3"], None).unwrap();
        assert_eq!((r.code(), r.body.as_slice()), (Some(3), &b"out\n"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
