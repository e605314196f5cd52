//! The shell blocks a README marks for its tests ([`readme_blocks`]): a
//! fenced block right after an `<!-- test: NAME -->` line is the block NAME,
//! run verbatim by a test, so the words a reader follows are the words
//! tested (one source: change the README and the test runs the new words).

use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// One marked block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    /// The block's lines, without the fences.
    pub text: String,
    /// The line of its opening fence, from 1.
    pub line: usize,
}

/// The marked blocks of `file`, in order. Fails on a marker not followed by
/// a fenced block, an unclosed block or a name used twice.
pub fn readme_blocks(file: &Path) -> Result<Vec<Block>> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks: Vec<Block> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i]
            .trim()
            .strip_prefix("<!-- test:")
            .and_then(|r| r.strip_suffix("-->"))
            .map(str::trim)
        else {
            i += 1;
            continue;
        };
        let Some(fence) = lines.get(i + 1).map(|l| l.trim_start()) else {
            bail!("{}:{}: marker {name} ends the file", file.display(), i + 1);
        };
        if !fence.starts_with("```") {
            bail!(
                "{}:{}: marker {name} is not followed by a fenced block",
                file.display(),
                i + 1
            );
        }
        let indent = lines[i + 1].len() - fence.len();
        let start = i + 2;
        let Some(len) = lines[start..]
            .iter()
            .position(|l| l.trim_start().starts_with("```"))
        else {
            bail!("{}:{}: block {name} is never closed", file.display(), i + 2);
        };
        let body: Vec<&str> = lines[start..start + len]
            .iter()
            .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
            .collect();
        if blocks.iter().any(|b| b.name == name) {
            bail!("{}: block {name} is marked twice", file.display());
        }
        blocks.push(Block {
            name: name.to_string(),
            text: body.join("\n") + "\n",
            line: i + 2,
        });
        i = start + len + 1;
    }
    Ok(blocks)
}
