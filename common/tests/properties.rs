//! Properties of the two rules a wrong answer from which would stop the live
//! app: detecting the live and idle profile, and reading the config.
//!
//! The fault suite in `tests/` covers the cases we could think of; these
//! generate the ones we did not — odd profile names and ports, include files
//! edited by hand or half-written, probe answers of any status and body —
//! and check the rule that matters for every one of them.

// A test reports a broken generator by panicking.
#![allow(clippy::panic)]

use std::path::Path;

use nonstop_common::config::{self, Config};
use nonstop_common::nginx::probe::{classify_answer, Probe};
use nonstop_common::route::detect;
use nonstop_common::route::mode::Include;
use nonstop_common::sys::http::Answer;
use nonstop_common::{exit_code, Profile};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Two profiles with distinct valid names and distinct ports, and a template
/// that may or may not mention the profile, so include lines vary too.
fn arb_config() -> impl Strategy<Value = Config> {
    let name = "[a-zA-Z0-9_.-]{1,12}".prop_filter("not . or ..", |n| n != "." && n != "..");
    (
        name.clone(),
        name,
        1u16..=65535,
        1u16..=65535,
        prop_oneof![
            Just("set $service_url http://127.0.0.1:{port};"),
            Just("proxy_pass http://localhost:{port}; # {profile}"),
            Just("server 127.0.0.1:{port};"),
        ],
    )
        // Port 80 is the default probe_url's own port on this machine,
        // which the config rightly refuses for a profile.
        .prop_filter("distinct names and ports, neither 80", |(a, b, p, q, _)| {
            a != b && p != q && *p != 80 && *q != 80
        })
        .prop_map(|(a, b, p, q, template)| {
            let text = json!({
                "profiles": [{"name": a, "port": p}, {"name": b, "port": q}],
                "app": {"dir": "/srv/app"},
                "nginx": {"template": template},
            })
            .to_string();
            match config::parse(&text, Path::new("generated.json")) {
                Ok(c) => c,
                Err(e) => panic!("a valid generated config was refused: {e:#}\n{text}"),
            }
        })
}

/// Pieces an include file is made of in the wild: our own line for either
/// profile, the book's line, bare and longer ports, comments, junk.
fn include_piece(config: &Config) -> BoxedStrategy<String> {
    let [a, b] = [&config.profiles[0], &config.profiles[1]];
    let known = vec![
        config.include_line(a),
        config.include_line(b),
        format!("set $service_url http://127.0.0.1:{};", a.port),
        format!("# was :{}", b.port),
        format!(":{}0", a.port),
        format!(":{}", b.port),
        format!("proxy_pass http://[::1]:{}/;", a.port),
        "set $service_url http://127.0.0.1:8080;".to_string(),
        String::new(),
        "\n".to_string(),
    ];
    prop_oneof![
        4 => proptest::sample::select(known),
        1 => any::<String>(),
        1 => "[ -~\n]{0,40}",
    ]
    .boxed()
}

fn arb_include(config: &Config) -> BoxedStrategy<Option<String>> {
    prop_oneof![
        1 => Just(None),
        6 => proptest::collection::vec(include_piece(config), 0..5)
            .prop_map(|parts| Some(parts.join(" "))),
    ]
    .boxed()
}

/// Any probe outcome: no answer, or any status with a body that may be a
/// profile name, a name padded with whitespace or markup, or anything.
fn arb_answer(config: &Config) -> BoxedStrategy<Result<Answer, String>> {
    let names: Vec<String> = config.profiles.iter().map(|p| p.name.clone()).collect();
    let body = prop_oneof![
        3 => proptest::sample::select(names.clone()),
        2 => proptest::sample::select(names.clone()).prop_map(|n| format!("  {n}\r\n")),
        1 => proptest::sample::select(names).prop_map(|n| format!("<b>{n}</b>")),
        1 => Just("real3".to_string()),
        2 => any::<String>(),
    ];
    let status = prop_oneof![
        4 => Just(200u16),
        1 => 100u16..600,
        1 => Just(502u16),
    ];
    prop_oneof![
        1 => Just(Err("connection refused".to_string())),
        6 => (status, body).prop_map(|(status, body)| Ok(Answer { status, body })),
    ]
    .boxed()
}

/// Whether `code` (comments removed) routes to `port`: `:PORT` not followed by
/// another digit. Written here separately from the crate's reading, from the
/// nginx side: this is what nginx would connect to.
fn routes_to(content: &str, port: u16) -> bool {
    content.lines().any(|line| {
        let code = line.split('#').next().unwrap_or("");
        let needle = format!(":{port}");
        let mut rest = code;
        while let Some(at) = rest.find(&needle) {
            let after = &rest[at + needle.len()..];
            if !after.starts_with(|c: char| c.is_ascii_digit()) {
                return true;
            }
            rest = after;
        }
        false
    })
}

fn world() -> impl Strategy<Value = (Config, Option<String>, Result<Answer, String>)> {
    arb_config().prop_flat_map(|config| {
        let include = arb_include(&config);
        let answer = arb_answer(&config);
        (Just(config), include, answer)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The safety rule: whatever the probe answers and whatever the include
    /// holds, a profile that either witness shows as live is never called
    /// idle — nonstop may refuse, but never picks the live port to stop.
    #[test]
    fn detection_never_names_a_witnessed_live_profile_idle(
        (config, include_text, answer) in world()
    ) {
        let include = match &include_text {
            None => Include::Missing,
            Some(text) => nonstop_common::route::include::classify(&config, text),
        };
        let answered = match &answer {
            Ok(a) if a.is_success() => config.profile(a.body.trim()).cloned(),
            _ => None,
        };
        let probe = classify_answer(&config, answer);
        let decision = detect::decide(&config.profiles, &probe, &include, "include file");

        let mut witnessed: Vec<&Profile> = Vec::new();
        for p in &config.profiles {
            let by_include = include_text.as_deref().is_some_and(|t| routes_to(t, p.port));
            let by_probe = answered.as_ref() == Some(p);
            if by_include || by_probe {
                witnessed.push(p);
            }
        }
        if let Ok(d) = &decision {
            for live in &witnessed {
                prop_assert_ne!(&d.idle, *live, "include {:?}, probe {:?}", include_text, probe);
            }
            prop_assert!(config.profiles.contains(&d.idle));
            if let Some(l) = &d.live {
                prop_assert_ne!(l, &d.idle);
            }
        } else {
            // Refusing is only right when the witnesses really conflict or
            // the include names both ports.
            prop_assert!(witnessed.len() == 2 || include == Include::NamesBoth,
                "refused without a conflict: include {:?}, probe {:?}", include_text, probe);
        }
    }

    /// A probe body is only ever compared with the profile names: any bytes
    /// at all give a probe result, and a non-2xx answer is never a profile.
    #[test]
    fn any_probe_answer_is_classified(
        config in arb_config(),
        status in 0u16..1000,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let body = String::from_utf8_lossy(&body).into_owned();
        let probe = classify_answer(&config, Ok(Answer { status, body: body.clone() }));
        match probe {
            Probe::Answered(p) => {
                prop_assert!((200..300).contains(&status));
                prop_assert_eq!(p.name.as_str(), body.trim());
            }
            Probe::Failed(why) => prop_assert!(why.contains(&config.probe_url)),
        }
    }

    /// Any config text either gives a config that can be deployed with —
    /// two distinct profiles, an absolute app dir, a command — or a usage
    /// error (exit 2); never a panic.
    #[test]
    fn config_text_is_parsed_or_refused_with_exit_2(text in arb_config_text()) {
        match config::parse(&text, Path::new("fuzz.json")) {
            Ok(c) => {
                prop_assert_eq!(c.profiles.len(), 2);
                prop_assert_ne!(&c.profiles[0].name, &c.profiles[1].name);
                prop_assert_ne!(c.profiles[0].port, c.profiles[1].port);
                prop_assert!(c.app.dir.is_absolute());
                prop_assert!(!c.app.command.is_empty() && !c.app.command[0].trim().is_empty());
                prop_assert!(c.nginx.include.is_absolute());
            }
            Err(e) => {
                prop_assert_eq!(exit_code(&e), 2, "{:#}", e);
                let msg = format!("{e:#}");
                prop_assert!(msg.contains("fuzz.json"), "{}", msg);
            }
        }
    }
}

/// Config texts: arbitrary strings, and JSON objects built from the real keys
/// with values of any JSON type, so most inputs get past the JSON parser and
/// exercise the validation.
fn arb_config_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..70000).prop_map(Value::from),
        "[ -~]{0,20}".prop_map(Value::from),
        Just(Value::from("/srv/app")),
        Just(Value::from("relative/dir")),
        Just(Value::from("{port}")),
        Just(Value::from("")),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map(
                proptest::sample::select(vec!["name", "port", "dir", "command", "template", "x"]),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    });
    let keys = vec![
        "profiles",
        "probe_url",
        "probe_timeout_ms",
        "state_dir",
        "lock_timeout_secs",
        "app",
        "health",
        "nginx",
        "unknown",
    ];
    prop_oneof![
        1 => any::<String>(),
        4 => proptest::collection::btree_map(proptest::sample::select(keys), value, 0..6)
            .prop_map(|m| {
                let obj: serde_json::Map<String, Value> =
                    m.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                Value::Object(obj).to_string()
            }),
        2 => (proptest::collection::vec("[a-z]{1,6}", 0..3), 0u64..70000, 0u64..70000).prop_map(|(cmd, p, q)| {
            json!({
                "profiles": [{"name": "a", "port": p}, {"name": "b", "port": q}],
                "app": {"dir": "/srv/app", "command": cmd},
            })
            .to_string()
        }),
    ]
}
