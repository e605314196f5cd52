//! The maintenance page's part of a route (see `crate::switch::maintenance`):
//! the fixed lines that make a server block answer every request 503 with
//! a page nginx serves from a file, how a mode's route is recognised as
//! them, and the page's token. Untrusted text never reaches these lines:
//! they hold only the page's directory (refused unless a plain path), a
//! number and, in the include mode, the profile's own route line.

use std::path::Path;

use anyhow::Result;

use crate::config::{Config, Profile};
use crate::sys::error::usage;
use crate::sys::log::quote_untrusted;

/// The page's file name, beside the route nginx includes.
pub const PAGE_NAME: &str = "nonstop-maintenance.html";

/// The line that marks the route as the maintenance route.
const MARK: &str = "# nonstop maintenance:";

/// The variable that tells the page's second pass (after `error_page`'s
/// redirect) from a request's first.
const VARIABLE: &str = "nonstop_maintenance_page";

/// The route's lines while maintenance is on (in the server block that
/// includes the route): every request is answered 503 by nginx, the page
/// served from `dir`, `keep_line` (the live profile's route) kept.
pub(crate) fn server_lines(keep_line: &str, dir: &Path, retry_after: u32) -> String {
    format!("{}\n{}", keep_line.trim_end(), page_lines(dir, retry_after))
}

/// The lines, inside a server block, that answer every request 503 with
/// the page in `dir`.
pub(crate) fn page_lines(dir: &Path, retry_after: u32) -> String {
    // `error_page` to a URI (not a named location): nginx turns the
    // request into a GET for it, so a POST gets the page too (the static
    // module answers POST with 405). The redirect runs the server's
    // rewrites again; the variable, set before the first 503, survives the
    // redirect (a request's variables do), so the second pass goes on to
    // the page instead of back to the 503. A request for the page's own
    // URI is answered like any other: 503 with the page (not a 404 from
    // `internal`, nor the file with 200).
    format!(
        "{MARK} nginx answers every request 503 with {page}; `switch --live` ends it\n\
         error_page 503 /{PAGE_NAME};\n\
         if (${VARIABLE} = \"\") {{\n    \
             set ${VARIABLE} 1;\n    \
             return 503;\n\
         }}\n\
         location = /{PAGE_NAME} {{\n    \
             root \"{dir}\";\n    \
             add_header Retry-After {retry_after} always;\n    \
             add_header Cache-Control \"no-store\" always;\n\
         }}\n",
        page = dir.join(PAGE_NAME).display(),
        dir = dir.display(),
    )
}

/// A site file (symlink mode) with `lines` added at the top of each of
/// its server blocks; `Err` says why it cannot be (no server block, or
/// one whose `{` line holds more than the opening).
pub(crate) fn inject(site: &str, lines: &str) -> Result<String, String> {
    let tokens = crate::nginx::conf::tokenize_lines(site);
    let mut after = Vec::new();
    let mut depth = 0usize;
    for (i, (word, line)) in tokens.iter().enumerate() {
        match word.as_str() {
            "{" => depth += 1,
            "}" => depth = depth.saturating_sub(1),
            "server" if depth == 0 && tokens.get(i + 1).map(|t| t.0.as_str()) == Some("{") => {
                let open = tokens[i + 1].1;
                if tokens.get(i + 2).is_some_and(|t| t.1 == open) {
                    return Err(format!(
                        "line {open}: the server block's `{{` line holds more than the opening"
                    ));
                }
                after.push(open);
            }
            _ => {}
        }
        let _ = line;
    }
    if after.is_empty() {
        return Err("it holds no server block".into());
    }
    let mut out = String::new();
    for (n, text) in site.lines().enumerate() {
        out.push_str(text);
        out.push('\n');
        if after.contains(&(n + 1)) {
            out.push_str(lines);
        }
    }
    Ok(out)
}

/// The profile a maintenance route keeps, when `content` is exactly the
/// maintenance route this config renders (for some profile and number).
pub(crate) fn kept_by(config: &Config, content: &str) -> Option<Profile> {
    if !content.contains(MARK) {
        return None;
    }
    let retry_after: u32 = content
        .lines()
        .find_map(|l| l.trim().strip_prefix("add_header Retry-After "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let dir = config.nginx.include.parent()?;
    config
        .profiles
        .iter()
        .find(|p| server_lines(&config.include_line(p), dir, retry_after) == content)
        .cloned()
}

/// The page's directory goes into a config line (`root "DIR";`): only a
/// plain path does (no quote, backslash, `$`, `;`, brace or control
/// character), anything else is refused by name.
pub(crate) fn page_dir_fits(dir: &Path) -> Result<()> {
    let text = dir.to_str().ok_or_else(|| {
        usage(format!(
            "switch --maintenance: the page's directory {} is not UTF-8; nothing was changed",
            dir.display()
        ))
    })?;
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '"' | '\\' | '$' | ';' | '{' | '}' | '\'') || c.is_control())
    {
        return Err(usage(format!(
            "switch --maintenance: the page would go to {}, whose path holds {c:?}, which nonstop does not put in \
             nginx's config; move the include to a plainer directory; nothing was changed",
            quote_untrusted(text, 200)
        )));
    }
    Ok(())
}

/// The comment that carries a switch's token in its page.
pub(crate) fn marker(token: &str) -> String {
    format!("<!-- nonstop maintenance {token} -->")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::parse(
            r#"{"app": {"dir": "/a"}, "nginx": {"include": "/etc/nginx/conf.d/service-url.inc"}}"#,
            Path::new("t.json"),
        )
        .unwrap()
    }

    #[test]
    fn the_maintenance_route_is_read_back_with_the_profile_it_keeps() {
        let c = config();
        let dir = Path::new("/etc/nginx/conf.d");
        let text = server_lines(&c.include_line(&c.profiles[1]), dir, 120);
        assert_eq!(kept_by(&c, &text), Some(c.profiles[1].clone()));
        assert!(
            text.contains("add_header Retry-After 120 always;"),
            "{text}"
        );
        assert!(text.contains("root \"/etc/nginx/conf.d\";"), "{text}");
        // The page's own URI gets the 503 too: nothing makes it internal.
        assert!(!text.contains("internal;"), "{text}");
        assert!(
            text.contains("if ($nonstop_maintenance_page = \"\") {\n    set $nonstop_maintenance_page 1;\n    return 503;\n}"),
            "{text}"
        );
        // Anything else is not it: edited by hand, another number's text.
        assert_eq!(kept_by(&c, &text.replace("503;", "502;")), None);
        assert_eq!(kept_by(&c, &c.include_line(&c.profiles[0])), None);
    }

    #[test]
    fn the_page_goes_at_the_top_of_each_server_block_of_a_site() {
        let site = "# blue\nserver {\n    listen 80;\n}\nserver\n{\n    listen 81;\n}\n";
        let out = inject(site, "X;\n").unwrap();
        assert_eq!(
            out,
            "# blue\nserver {\nX;\n    listen 80;\n}\nserver\n{\nX;\n    listen 81;\n}\n"
        );
        assert!(inject("server { listen 80; }\n", "X;\n").is_err());
        assert!(inject("events {}\n", "X;\n").is_err());
    }

    #[test]
    fn only_a_plain_directory_goes_into_the_config_line() {
        assert!(page_dir_fits(Path::new("/etc/nginx/conf.d")).is_ok());
        for bad in ["/x\";evil", "/x;y", "/a$b", "/a{b", "/a\nb", "/a\\b"] {
            assert!(page_dir_fits(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
