//! Stage-prefixed narration on stderr.
//!
//! Every line names the stage that wrote it (`stop: real2 (pid 4242) ...`), so
//! a CodeDeploy log that interleaves hooks still reads as a story. stdout is
//! kept for results a script may capture (`profile` prints the idle profile).

/// Writes lines prefixed with one stage's name.
#[derive(Debug, Clone, Copy)]
pub struct Log {
    stage: &'static str,
}

impl Log {
    pub const fn new(stage: &'static str) -> Self {
        Log { stage }
    }

    pub fn stage(&self) -> &'static str {
        self.stage
    }

    pub fn say(&self, msg: impl std::fmt::Display) {
        eprintln!("{}: {}", self.stage, msg);
    }

    pub fn warn(&self, msg: impl std::fmt::Display) {
        eprintln!("{}: warning: {}", self.stage, msg);
    }
}

/// Quotes text that came from outside (an HTTP body, a file) for a log line:
/// at most `max` characters, control characters escaped, so a hostile answer
/// can neither flood the log nor forge lines in it.
pub fn quote_untrusted(text: &str, max: usize) -> String {
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
