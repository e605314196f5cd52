//! The two small languages of the config's strings: `{name}` placeholders
//! (rendered into argv, log paths, the include line and the expected health
//! body) and `*` / `?` wildcards (the artifact's file name, a process's
//! arguments). Kept apart from the config's checks because the stages use
//! them long after the config is loaded.

/// Matches a name (a file name, an argument) against a pattern with `*` (any run) and `?` (one character).
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Substitutes `{name}` placeholders. Values come from the config and from
/// nonstop itself, never from an HTTP answer or a state file's free text.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// The first `{name}` in `text` that looks like a placeholder (letters,
/// digits, `_`) but is not in `allowed`, so that a typo such as `{prot}`
/// fails at load time instead of reaching nginx or the app. Other braces
/// (nginx's `{ ... }` blocks) are not placeholders.
pub(crate) fn unknown_placeholder<'t>(text: &'t str, allowed: &[&str]) -> Option<&'t str> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let name = &after[..close];
        let looks_like_placeholder =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if looks_like_placeholder && !allowed.contains(&name) {
            return Some(name);
        }
        rest = &after[close + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.jar", "app-1.0.jar"));
        assert!(!wildcard_match("*.jar", "app.jar.tmp"));
        assert!(!wildcard_match("*.jar", ".app.jar.nonstop-1.tmp"));
        assert!(wildcard_match("app-?.jar", "app-2.jar"));
        assert!(!wildcard_match("app-?.jar", "app-10.jar"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("a*b*c", "aXbYbZc"));
    }

    #[test]
    fn render_substitutes_every_occurrence_and_leaves_other_braces() {
        assert_eq!(
            render(
                "upstream u { server 127.0.0.1:{port}; } # {profile} {port}",
                &[("port", "8081"), ("profile", "real1")]
            ),
            "upstream u { server 127.0.0.1:8081; } # real1 8081"
        );
        assert_eq!(render("{unknown}", &[("port", "1")]), "{unknown}");
    }

    #[test]
    fn unknown_placeholders_are_found_and_nginx_blocks_are_not() {
        let allowed = ["port", "profile"];
        assert_eq!(unknown_placeholder("{port} {prot}", &allowed), Some("prot"));
        assert_eq!(
            unknown_placeholder("upstream u { server 127.0.0.1:{port}; }", &allowed),
            None
        );
        assert_eq!(unknown_placeholder("{} {a-b} {", &allowed), None);
        assert_eq!(unknown_placeholder("{profile}{x_1}", &allowed), Some("x_1"));
    }
}
