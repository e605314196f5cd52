//! The probe through nginx: one GET of `probe_url` (the book's `curl
//! localhost/profile`), the witness of where nginx sends a request now. An
//! answer counts only when it is a 2xx whose body, trimmed, is exactly a
//! configured profile's name; the body is never used in a path, a command or
//! a config line.

use anyhow::Result;

use crate::config::{Config, Profile};
use crate::sys::http;
use crate::sys::log::quote_untrusted;

/// What the probe through nginx said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// nginx answered 2xx with exactly this configured profile's name.
    Answered(Profile),
    /// No usable answer; the reason, for messages.
    Failed(String),
}

/// Asks nginx which profile answers.
pub(crate) fn probe(config: &Config) -> Probe {
    classify_answer(config, http::get(&config.probe_url, config.probe_timeout))
}

/// What an HTTP answer (or its failure) at the probe URL says.
pub fn classify_answer(config: &Config, answer: Result<http::Answer, String>) -> Probe {
    match answer {
        Err(why) => Probe::Failed(format!("{}: {why}", config.probe_url)),
        Ok(a) if !a.is_success() => {
            Probe::Failed(format!("{} answered HTTP {}", config.probe_url, a.status))
        }
        Ok(a) => match config.profile(a.body.trim()) {
            Some(p) => Probe::Answered(p.clone()),
            None => Probe::Failed(format!(
                "{} answered {}, which is not a configured profile",
                config.probe_url,
                quote_untrusted(a.body.trim(), 40)
            )),
        },
    }
}

/// Whether the probe URL gets the maintenance page of the switch with
/// `token` now: 503, this `Retry-After`, the page carrying
/// [`crate::route::page::marker`]'s comment. `Err` says what it got instead.
pub(crate) fn serves_page(config: &Config, marker: &str, retry_after: u32) -> Result<(), String> {
    let a = http::get_page(&config.probe_url, config.probe_timeout)
        .map_err(|why| format!("{}: {why}", config.probe_url))?;
    let want = retry_after.to_string();
    if a.status != 503 {
        return Err(format!("{} answered HTTP {}", config.probe_url, a.status));
    }
    if a.retry_after.as_deref() != Some(want.as_str()) {
        return Err(format!(
            "{} answered 503 with Retry-After {:?}, not {want}",
            config.probe_url,
            a.retry_after.as_deref().map(|r| quote_untrusted(r, 20))
        ));
    }
    if !a.head.contains(marker) {
        return Err(format!(
            "{} answered 503, but not with this switch's page",
            config.probe_url
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(r#"{"app": {"dir": "/a"}}"#, Path::new("t.json")).unwrap()
    }

    fn p(i: usize) -> Profile {
        config().profiles[i].clone()
    }

    #[test]
    fn probe_answers_must_be_exactly_a_profile_name() {
        let c = config();
        let ok = |status, body: &str| {
            Ok(http::Answer {
                status,
                body: body.into(),
            })
        };
        assert_eq!(
            classify_answer(&c, ok(200, "real2\n")),
            Probe::Answered(p(1))
        );
        // The book's `grep real` would take each of these for real.
        for body in ["real", "real1 real2", "surreal1", "<h1>real1</h1>", ""] {
            assert!(
                matches!(classify_answer(&c, ok(200, body)), Probe::Failed(_)),
                "{body}"
            );
        }
        assert!(matches!(
            classify_answer(&c, ok(500, "real1")),
            Probe::Failed(_)
        ));
        assert!(matches!(
            classify_answer(&c, ok(302, "real1")),
            Probe::Failed(_)
        ));
        match classify_answer(&c, ok(200, "rm -rf /\n\u{1b}[31m")) {
            Probe::Failed(why) => assert!(why.contains("\\n") || !why.contains('\n'), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
