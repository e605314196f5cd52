//! nginx's config as `nginx -T` shows it (the configured `nginx.test` argv
//! with `-t` turned into `-T`): the files it loaded, their words and their
//! statements. Only read: its text never reaches a command, a path or a
//! config line.

use crate::config::Config;

/// The argv that dumps nginx's config: `nginx.test` with `-t` as `-T`
/// (or `-T` added), so a custom binary, prefix or `-c` is kept.
pub fn dump_argv(config: &Config) -> Vec<String> {
    let mut argv = config.nginx.test.clone();
    match argv.iter_mut().find(|a| a.as_str() == "-t") {
        Some(t) => *t = "-T".into(),
        None => argv.push("-T".into()),
    }
    argv
}

/// The files of an nginx config dump, as `(path, text)`: `nginx -T` prints
/// each file it loaded after a `# configuration file PATH:` line. A text
/// without such a line is one file with no name.
pub(crate) fn split_dump(dump: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in dump.lines() {
        if let Some(path) = line
            .strip_prefix("# configuration file ")
            .and_then(|r| r.strip_suffix(':'))
        {
            files.push((path.to_string(), String::new()));
            continue;
        }
        if files.is_empty() {
            files.push((String::new(), String::new()));
        }
        if let Some((_, text)) = files.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    files
}

/// One nginx statement of a file: its words (a block's whole body
/// included) and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    pub line: usize,
    pub words: Vec<String>,
}

impl std::fmt::Display for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.words.join(" ").replace(" ;", ";");
        write!(f, "line {}: `{text}`", self.line)
    }
}

/// The top-level statements of nginx config text, comments dropped. A
/// statement ends with its `;` or with the `}` of its block; words after
/// the last one form an unfinished statement.
pub(crate) fn statements(text: &str) -> Vec<Statement> {
    let mut out = Vec::new();
    let mut current: Option<Statement> = None;
    let mut depth = 0usize;
    // Word by word per line (a comment ends with its line), so each
    // statement knows where it starts.
    for (n, line) in text.lines().enumerate() {
        for word in tokenize(line) {
            let st = current.get_or_insert_with(|| Statement {
                line: n + 1,
                words: Vec::new(),
            });
            let ends = match word.as_str() {
                "{" => {
                    depth += 1;
                    false
                }
                "}" => {
                    depth = depth.saturating_sub(1);
                    depth == 0
                }
                ";" => depth == 0,
                _ => false,
            };
            st.words.push(word);
            if ends {
                out.extend(current.take());
            }
        }
    }
    out.extend(current);
    out
}

/// nginx's config as words, with `{`, `}` and `;` as their own tokens;
/// comments dropped, quoted strings kept whole (without their quotes).
pub(crate) fn tokenize(text: &str) -> Vec<String> {
    tokenize_lines(text).into_iter().map(|(w, _)| w).collect()
}

/// [`tokenize`], each word with the line (from 1) it starts on.
pub(crate) fn tokenize_lines(text: &str) -> Vec<(String, usize)> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut line = 1;
    let mut start = 1;
    let mut chars = text.chars().peekable();
    let flush = |word: &mut String, tokens: &mut Vec<(String, usize)>, start: usize| {
        if !word.is_empty() {
            tokens.push((std::mem::take(word), start));
        }
    };
    while let Some(c) = chars.next() {
        if word.is_empty() {
            start = line;
        }
        match c {
            '#' if word.is_empty() => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '"' | '\'' if word.is_empty() => {
                while let Some(n) = chars.next() {
                    match n {
                        '\\' => {
                            if let Some(e) = chars.next() {
                                word.push(e);
                            }
                        }
                        q if q == c => break,
                        other => {
                            if other == '\n' {
                                line += 1;
                            }
                            word.push(other);
                        }
                    }
                }
                // An empty quoted string is still a word.
                tokens.push((std::mem::take(&mut word), start));
            }
            '{' | '}' | ';' => {
                flush(&mut word, &mut tokens, start);
                tokens.push((c.to_string(), line));
            }
            c if c.is_whitespace() => {
                flush(&mut word, &mut tokens, start);
                if c == '\n' {
                    line += 1;
                }
            }
            '\\' => {
                if let Some(e) = chars.next() {
                    word.push(e);
                }
            }
            other => word.push(other),
        }
    }
    flush(&mut word, &mut tokens, start);
    tokens
}
