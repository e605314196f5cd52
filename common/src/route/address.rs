//! Where nginx connects to a profile's app, as nginx's config writes it:
//! a host (`127.0.0.2`, `[::1]`, `app.internal`) joined to the profile's
//! port. Each routing mode reads it from what it routes through (the
//! include's line, a site file, an upstream's `server`); `reach` asks the
//! app there.

use std::net::IpAddr;

use crate::config::Config;

/// Where nginx connects to an app: a host as nginx's config writes it
/// (`127.0.0.2`, `[::1]`, `app.internal`) and the profile's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// The health URL at this address.
    pub(crate) fn health_url(&self, config: &Config) -> String {
        format!("http://{}:{}{}", self.host, self.port, config.health.path)
    }

    /// An IP literal (bracketed for IPv6) or `localhost`: no name lookup
    /// decides where it goes.
    pub(crate) fn is_literal(&self) -> bool {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || bare
                .strip_suffix('.')
                .unwrap_or(bare)
                .eq_ignore_ascii_case("localhost")
    }
}

/// What nginx's config says about where it connects to a profile's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// These addresses, read from `source` ("nginx.template", "the site file X").
    At(Vec<Address>, String),
    /// It cannot be read; why.
    Unknown(String),
}

impl Seen {
    /// The addresses `text` (read from `source`, "nginx.template") joins to
    /// `port`, or why there are none.
    pub(crate) fn in_text(text: &str, source: String, port: u16) -> Seen {
        let hosts = hosts_in(text, port);
        if hosts.is_empty() {
            return Seen::Unknown(format!(
                "{source} names no host with port {port} (an upstream defined elsewhere, or a variable)"
            ));
        }
        Seen::At(
            hosts
                .into_iter()
                .map(|host| Address { host, port })
                .collect(),
            source,
        )
    }
}

/// The hosts that `text` joins to `:PORT` (outside `#` comments), each once:
/// `http://10.0.1.20:8082` and `server [::1]:8082` give `10.0.1.20` and
/// `[::1]`. A host that is an nginx variable or empty is left out.
pub(crate) fn hosts_in(text: &str, port: u16) -> Vec<String> {
    let needle = format!(":{port}");
    let mut hosts: Vec<String> = Vec::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("");
        for (at, _) in code.match_indices(&needle) {
            let after = &code[at + needle.len()..];
            if after.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                continue;
            }
            let before = &code[..at];
            let host = if before.ends_with(']') {
                match before.rfind('[') {
                    Some(open) => &before[open..],
                    None => continue,
                }
            } else {
                let start = before
                    .rfind(|c: char| {
                        !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
                    })
                    .map(|i| i + 1)
                    .unwrap_or(0);
                // `$name:8082`: nginx fills it in at run time.
                if before[..start].ends_with('$') {
                    continue;
                }
                &before[start..]
            };
            if !host.is_empty() && !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_string());
            }
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_from_what_nginx_connects_to() {
        assert_eq!(
            hosts_in("set $service_url http://10.0.1.20:8082;", 8082),
            ["10.0.1.20"]
        );
        assert_eq!(
            hosts_in("upstream u { server [::1]:8082 max_fails=0; }", 8082),
            ["[::1]"]
        );
        assert_eq!(
            hosts_in(
                "# was http://127.0.0.9:8082\nlocation / { proxy_pass http://app.internal:8082/; }\n\
                 location /b { proxy_pass http://app.internal:8082; }",
                8082
            ),
            ["app.internal"]
        );
        // Another port, a longer one, a variable, nothing.
        assert!(hosts_in("proxy_pass http://127.0.0.1:80821;", 8082).is_empty());
        assert!(hosts_in("proxy_pass http://127.0.0.1:8081;", 8082).is_empty());
        assert!(hosts_in("proxy_pass http://$backend:8082;", 8082).is_empty());
        assert!(hosts_in("listen :8082;", 8082).is_empty());
    }

    #[test]
    fn literals_need_no_lookup() {
        let at = |host: &str| Address {
            host: host.into(),
            port: 1,
        };
        assert!(at("127.0.0.2").is_literal());
        assert!(at("[::1]").is_literal());
        assert!(at("LocalHost").is_literal());
        assert!(!at("app.internal").is_literal());
    }
}
