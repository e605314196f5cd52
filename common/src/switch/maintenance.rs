//! The maintenance page (`switch --maintenance`): nginx answers every
//! request with a page it serves itself, never the app, as 503 with
//! `Retry-After`, for the rare change that needs the app down.
//!
//! It is a switch like any other: the route is rewritten through the same
//! transaction (journal, `nginx.test`, reload, confirmation through nginx,
//! undo on any failure), only the confirmation waits for the page instead
//! of a profile's answer. The route keeps the live profile's line (nginx's
//! `proxy_pass $service_url` needs the variable set), so `switch --live`
//! knows where to go back to.
//!
//! Untrusted text never reaches nginx's config: the operator's message is
//! HTML-escaped into the page, a file nginx serves; the config lines are
//! fixed but for the profile's line, the page's directory (refused unless
//! plain) and the number of seconds. Each switch puts a fresh token in the
//! page, so the confirmation sees this switch's page and no older one.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _, Result};

use crate::config::{Config, Profile};
use crate::route;
use crate::route::mode::Include;
use crate::route::page;
use crate::state::context::Context;
use crate::state::{read_own_capped, StateDir};
use crate::switch::journal::{self, PageWant};
use crate::switch::transaction;
use crate::sys::error::usage;
use crate::sys::files;
use crate::sys::log::Log;
use crate::sys::signals;
use crate::sys::time::now_unix_ms;

/// The longest message and page file taken.
const MAX_MESSAGE: usize = 4000;
const MAX_PAGE: u64 = 1 << 20;

/// The message when none is given.
pub const DEFAULT_MESSAGE: &str =
    "This service is down for maintenance and will be back shortly. Please try again later.";

/// Where the page's words come from.
#[derive(Debug, Clone)]
pub enum PageSource {
    /// A message, HTML-escaped into nonstop's page.
    Message(String),
    /// An HTML file the operator wrote, served as it is.
    File(PathBuf),
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>\n"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The page's bytes, carrying `token`.
pub(crate) fn page_bytes(source: &PageSource, token: &str) -> Result<Vec<u8>> {
    match source {
        PageSource::Message(text) => {
            if text.chars().count() > MAX_MESSAGE {
                return Err(usage(format!(
                    "switch --message: {} characters; at most {MAX_MESSAGE} (for more, write a page and give --page FILE)",
                    text.chars().count()
                )));
            }
            Ok(format!(
                "<!DOCTYPE html>\n{}\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <title>Down for maintenance</title></head>\n\
                 <body><h1>Down for maintenance</h1>\n<p>{}</p></body></html>\n",
                page::marker(token),
                escape_html(text)
            )
            .into_bytes())
        }
        PageSource::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| {
                usage(format!(
                    "switch --page {}: {e}; nothing was changed",
                    path.display()
                ))
            })?;
            if !meta.is_file() || meta.len() > MAX_PAGE {
                return Err(usage(format!(
                    "switch --page {}: expected a regular file of at most {MAX_PAGE} bytes; nothing was changed",
                    path.display()
                )));
            }
            let body = read_own_capped(path, MAX_PAGE)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    usage(format!(
                        "switch --page {}: cannot read it (a symlink is not followed); nothing was changed",
                        path.display()
                    ))
                })?;
            let mut bytes = format!("{}\n", page::marker(token)).into_bytes();
            bytes.extend(body);
            Ok(bytes)
        }
    }
}

pub use crate::state::maintenance::Record;

/// The record of who turned maintenance on, read only (`None` when there
/// is none; one that cannot be read is `None` with a warning).
pub fn record(config: &Config, log: &Log) -> Option<Record> {
    let state = StateDir::read_only(&config.state_dir);
    crate::state::maintenance::read(&state, log)
}

/// " (since 2026-01-02 03:04:05 UTC, by alice)", or nothing without a record.
pub fn since_by(config: &Config, log: &Log) -> String {
    record(config, log)
        .map(|r| {
            format!(
                " (since {}, by {})",
                crate::sys::time::utc(r.since_unix_ms),
                r.by
            )
        })
        .unwrap_or_default()
}

/// Forgets the record once nginx routes to a profile again (a note when
/// it cannot be removed: `profile` goes by the route, not by it).
pub(crate) fn forget(ctx: &Context) {
    let path = crate::state::maintenance::record_path(&ctx.state);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => ctx
            .log
            .warn(format!("cannot remove {}: {e}", path.display())),
        _ => {}
    }
}

/// The operator running this, for the record: `SUDO_USER`, then `USER`.
fn operator() -> String {
    let name = ["SUDO_USER", "USER"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(files::current_user);
    // A user name, shown as it is: anything else in it is dropped.
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        .take(64)
        .collect()
}

/// The profile whose route the maintenance route keeps, when nginx's
/// route is the maintenance route now (the route itself says so).
pub fn is_on(config: &Config) -> Result<Option<Profile>> {
    let mode = route::of(config);
    Ok(match mode.read()? {
        Some(content) => match mode.classify(&content) {
            Include::Maintenance(p) => Some(p),
            _ => None,
        },
        None => None,
    })
}

/// `switch --maintenance`: the page written, then the route switched to
/// it through the transaction and confirmed through nginx.
pub fn begin(ctx: &mut Context, source: &PageSource, retry_after: u32) -> Result<()> {
    let config = &ctx.config;
    let mode = route::of(config);
    let page_path = mode.maintenance_page()?;
    let old = mode.read()?;
    mode.refuse_foreign(old.as_deref())?;
    let keep = match old.as_deref().map(|c| mode.classify(c)) {
        Some(Include::Maintenance(p)) | Some(Include::Names(p)) => p,
        _ => ctx
            .slots
            .live
            .clone()
            .unwrap_or_else(|| ctx.slots.idle.clone()),
    };
    let token = files::random_suffix();
    // Who and since when go into the journal too: a recovery that keeps
    // this switch after a kill writes the record from them.
    let (since_unix_ms, by) = (now_unix_ms(), operator());
    let page = page_bytes(source, &token)?;
    let new = mode.maintenance_content(&keep, retry_after)?;
    if ctx.dry_run {
        ctx.log.say(format!(
            "would write the maintenance page {} and {}: {}",
            page_path.display(),
            mode.describe(),
            String::from_utf8_lossy(&new).trim()
        ));
        return Ok(());
    }
    mode.before_write(&ctx.log)?;
    signals::check().context("nothing was changed")?;
    // The page first: nginx reads it only once the route names it, and a
    // page left by a switch that stopped here is served by nobody.
    mode.write_page(&keep, retry_after, &page)?;
    ctx.log.say(format!(
        "wrote the maintenance page {}",
        page_path.display()
    ));
    let journal = journal::begin(
        config,
        &ctx.state,
        &keep,
        old.as_deref(),
        ctx.deployment_id.as_deref(),
        Some(PageWant {
            token: token.clone(),
            retry_after,
            since_unix_ms: Some(since_unix_ms),
            by: Some(by.clone()),
        }),
    )
    .with_context(|| format!("nothing was changed, {}", journal::traffic_now(config)))?;
    transaction::run(ctx, mode.as_ref(), journal, &keep, &new, old.as_deref())?;
    ctx.action = Some("maintenance-on");
    let record = Record {
        since_unix_ms,
        by,
        keep: keep.clone(),
        retry_after,
    };
    crate::state::maintenance::write(&ctx.state, &record)
        .map_err(|e| {
            anyhow!(
                "nginx answers with the maintenance page as confirmed, but who turned it on could not be recorded: {e:#}"
            )
        })?;
    ctx.log.say(format!(
        "maintenance is on: `switch --live` returns to {} ({})",
        keep.name, keep.port
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_escaped_into_the_page_and_never_into_config() {
        let nasty = "back at 5</p><script>x()</script>; return 200 \"ok\";\n}";
        let page =
            String::from_utf8(page_bytes(&PageSource::Message(nasty.into()), "t0k3n").unwrap())
                .unwrap();
        assert!(page.contains("<!-- nonstop maintenance t0k3n -->"));
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        let too_long = "x".repeat(MAX_MESSAGE + 1);
        assert!(page_bytes(&PageSource::Message(too_long), "t").is_err());
    }

    #[test]
    fn a_page_file_is_served_as_it_is_with_the_token_before_it() {
        let dir = std::env::temp_dir().join(format!("nonstop-page-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("down.html");
        std::fs::write(&file, "<h1>Back soon</h1>\n").unwrap();
        let page = page_bytes(&PageSource::File(file.clone()), "tk").unwrap();
        assert_eq!(
            String::from_utf8(page).unwrap(),
            "<!-- nonstop maintenance tk -->\n<h1>Back soon</h1>\n"
        );
        // Not a file, or missing: refused by name, exit 2.
        for bad in [dir.clone(), dir.join("missing.html")] {
            let err = page_bytes(&PageSource::File(bad.clone()), "tk").unwrap_err();
            assert!(
                format!("{err:#}").contains(&bad.display().to_string()),
                "{err:#}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
