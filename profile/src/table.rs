//! Aligned tables for people, shared by `--status` and `--history`.

/// Text from files and processes (a command line, a deployment id, an
/// artifact's name) as a terminal shows it: control characters escaped, so
/// none can move the cursor, clear the screen or forge a line.
pub(crate) fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Rows as columns padded to their widest cell, two spaces apart (each
/// cell [`plain`]).
pub(crate) fn align(rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| plain(c)).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["A".to_string(), "BB".into()],
            vec!["ccc".to_string(), "d".into()],
        ];
        assert_eq!(align(&rows), vec!["A    BB", "ccc  d"]);
    }

    #[test]
    fn control_characters_from_files_are_escaped() {
        let rows = vec![vec!["d-1\u{1b}[2J\nforged".to_string(), "x".into()]];
        assert_eq!(align(&rows), vec!["d-1\\u{1b}[2J\\nforged  x"]);
    }
}
