//! The health rule (`health.match`): which URL on a profile's own port is
//! asked, which answer passes, and the rule in words for messages. `health`
//! waits for it, `switch` asks it of the profile it routes to.

use crate::config::{Config, HealthMatch, Profile};
use crate::sys::http;
use crate::sys::log::quote_untrusted;

/// The URL the health rule asks, on the profile's own port (not through nginx).
pub(crate) fn health_url(config: &Config, target: &Profile) -> String {
    format!("http://127.0.0.1:{}{}", target.port, config.health.path)
}

/// One try of the health rule ([`healthy`]) on `target`'s own port. `Err`
/// says what it answered instead, or why nothing came.
pub(crate) fn check_health(config: &Config, target: &Profile) -> Result<(), String> {
    let answer = http::get(&health_url(config, target), config.health.request_timeout)?;
    if healthy(config, target, &answer) {
        Ok(())
    } else {
        Err(format!(
            "HTTP {}, body {}",
            answer.status,
            quote_untrusted(answer.body.trim(), 60)
        ))
    }
}

/// The health rule in words, for messages: `"real1"`, `a body containing
/// "UP"`, ...
pub(crate) fn health_words(config: &Config, target: &Profile) -> String {
    let expect = quote_untrusted(&config.expected_health_body(target), 60);
    match config.health.rule {
        HealthMatch::Exact => expect,
        HealthMatch::Contains => format!("a body containing {expect}"),
        HealthMatch::Actuator => "{\"status\":\"UP\"}".to_string(),
        HealthMatch::AnySuccess => "any 2xx".to_string(),
    }
}

/// The health rule (`health.match`) applied to one answer. Only a 2xx can
/// pass, whatever the rule: a redirect to a login page, a 404 from a
/// half-started app or a 503 while it warms up never counts.
pub(crate) fn healthy(config: &Config, target: &Profile, answer: &http::Answer) -> bool {
    if !answer.is_success() {
        return false;
    }
    let expect = config.expected_health_body(target);
    match config.health.rule {
        HealthMatch::Exact => answer.body.trim() == expect,
        HealthMatch::Contains => answer.body.contains(&expect),
        HealthMatch::Actuator => serde_json::from_str::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("status")?.as_str().map(|s| s == "UP"))
            .unwrap_or(false),
        HealthMatch::AnySuccess => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn health_rules_never_pass_a_non_2xx() {
        let answer = |status: u16, body: &str| http::Answer {
            status,
            body: body.to_string(),
        };
        let with = |rule: &str, expect: &str| {
            crate::config::parse(
                &format!(
                    r#"{{"app": {{"dir": "/a"}}, "health": {{"match": "{rule}", "expect": "{expect}"}}}}"#
                ),
                Path::new("t.json"),
            )
            .unwrap()
        };
        let real1 = Profile {
            name: "real1".into(),
            port: 8081,
        };
        let exact = with("exact", "{profile}");
        assert!(healthy(&exact, &real1, &answer(200, "real1\n")));
        assert!(!healthy(&exact, &real1, &answer(200, "real10")));
        assert!(!healthy(&exact, &real1, &answer(500, "real1")));

        let contains = with("contains", "healthy");
        assert!(healthy(
            &contains,
            &real1,
            &answer(200, "<p>I am healthy</p>")
        ));
        assert!(!healthy(&contains, &real1, &answer(200, "sick")));
        assert!(!healthy(&contains, &real1, &answer(302, "healthy")));

        let actuator = with("actuator", "-");
        assert!(healthy(
            &actuator,
            &real1,
            &answer(200, r#"{"status":"UP","groups":["liveness"]}"#)
        ));
        assert!(!healthy(
            &actuator,
            &real1,
            &answer(200, r#"{"status":"DOWN"}"#)
        ));
        assert!(!healthy(&actuator, &real1, &answer(200, "UP")));
        assert!(!healthy(
            &actuator,
            &real1,
            &answer(503, r#"{"status":"UP"}"#)
        ));

        let any = with("any-2xx", "-");
        assert!(healthy(&any, &real1, &answer(204, "")));
        assert!(!healthy(&any, &real1, &answer(301, "")));
        assert!(!healthy(&any, &real1, &answer(404, "real1")));
    }
}
