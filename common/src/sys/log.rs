//! Stage-prefixed narration on stderr.
//!
//! Every line names the stage that wrote it (`stop: real2 (pid 4242) ...`), so
//! a CodeDeploy log that interleaves hooks still reads as a story. stdout is
//! kept for results a script may capture (`profile` prints the idle profile).
//!
//! Narration never aborts a stage: `eprintln!` panics when stderr is a pipe
//! whose reader went away (exit 101, say right after the include was
//! written and before the reload), so every line goes through [`line`],
//! which drops write errors. Losing a log line is better than losing the
//! step it describes.

use std::io::Write as _;

/// Writes one line to stderr in a single write, ignoring any error (a closed
/// pipe, a terminal that hung up): the stage goes on either way.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    // Nowhere left to report a failure to report; the stage's own work and
    // exit code are what count.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Writes lines prefixed with one stage's name.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    stage: &'static str,
}

impl Log {
    pub const fn new(stage: &'static str) -> Self {
        Log { stage }
    }

    pub(crate) fn stage(&self) -> &'static str {
        self.stage
    }

    pub fn say(&self, msg: impl std::fmt::Display) {
        line(format_args!("{}: {}", self.stage, msg));
    }

    pub fn warn(&self, msg: impl std::fmt::Display) {
        line(format_args!("{}: warning: {}", self.stage, msg));
    }
}

/// Quotes text that came from outside (an HTTP body, a file) for a log line:
/// at most `max` characters, control characters escaped, so a hostile answer
/// can neither flood the log nor forge lines in it.
pub(crate) fn quote_untrusted(text: &str, max: usize) -> String {
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('"');
    out
}

/// The last `lines` lines of a log file, reading at most its last 8 KiB and
/// nothing before byte `from` (so an app's earlier runs do not show up in
/// this run's failure). Empty when the file cannot be read.
pub(crate) fn tail_file(path: &std::path::Path, from: u64, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(8192)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `tail_file` dressed for an error message: an indented block, or a note
/// that the log is empty.
pub fn tail_for_message(path: &std::path::Path, from: u64) -> String {
    let tail = tail_file(path, from, 20);
    if tail.trim().is_empty() {
        format!("(the log {} has nothing from this run)", path.display())
    } else {
        let body: Vec<String> = tail.lines().map(|l| format!("    {l}")).collect();
        format!("last lines of {}:\n{}", path.display(), body.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(quote_untrusted("real1", 10), "\"real1\"");
        assert_eq!(quote_untrusted("a\nb", 10), "\"a\\nb\"");
        assert_eq!(quote_untrusted("abcdef", 3), "\"abc...\"");
    }
}
