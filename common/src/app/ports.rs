//! Profile ports the kernel may hand out as source ports.
//!
//! A port inside `net.ipv4.ip_local_port_range` (32768-60999 by default) can
//! be taken as the *source* port of any outgoing connection, nginx's own to
//! the live app included. `stop` then finds nothing listening and says the
//! port is free, and the new app dies with "Address already in use". So each
//! stage warns about such a port unless `net.ipv4.ip_local_reserved_ports`
//! holds it, and `start` binds the port (and lets it go) before it launches
//! anything, naming the connection that holds it and the sysctl that fixes it.

use std::fs;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use crate::config::Config;
use crate::sys::procs::{cmdline, pids_holding_inode, tcp_sockets};

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Parses `ip_local_port_range` ("32768\t60999").
pub(crate) fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) => Some((lo, hi)),
        _ => None,
    }
}

/// Parses `ip_local_reserved_ports` ("8081,8082,10000-10005", or empty).
pub(crate) fn parse_reserved(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((lo, hi)) => Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)),
                None => part.parse().ok().map(|p| (p, p)),
            }
        })
        .collect()
}

/// What the kernel's sysctls say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ephemeral {
    pub range: (u16, u16),
    /// `ip_local_reserved_ports` as written ("" when none).
    pub reserved_text: String,
    pub reserved: Vec<(u16, u16)>,
}

impl Ephemeral {
    /// Read from /proc; `None` where the range cannot be read.
    pub(crate) fn read() -> Option<Ephemeral> {
        let range = parse_range(&fs::read_to_string(RANGE).ok()?)?;
        let reserved_text = fs::read_to_string(RESERVED)
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        Some(Ephemeral {
            range,
            reserved: parse_reserved(&reserved_text),
            reserved_text,
        })
    }

    /// True when the kernel may hand `port` out as a source port.
    pub(crate) fn exposes(&self, port: u16) -> bool {
        (self.range.0..=self.range.1).contains(&port)
            && !self
                .reserved
                .iter()
                .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// The command that reserves `ports` and keeps what is reserved already.
    pub(crate) fn fix(&self, ports: &[u16]) -> String {
        let mut list: Vec<String> = Vec::new();
        if !self.reserved_text.is_empty() {
            list.push(self.reserved_text.clone());
        }
        list.extend(ports.iter().map(u16::to_string));
        format!(
            "sysctl -w net.ipv4.ip_local_reserved_ports={}",
            list.join(",")
        )
    }

    /// One warning naming the profile ports the kernel may take as source ports.
    pub(crate) fn warning(&self, config: &Config) -> Option<String> {
        let exposed: Vec<String> = config
            .profiles
            .iter()
            .filter(|p| self.exposes(p.port))
            .map(|p| format!("{} ({})", p.port, p.name))
            .collect();
        if exposed.is_empty() {
            return None;
        }
        let ports: Vec<u16> = config
            .profiles
            .iter()
            .filter(|p| self.exposes(p.port))
            .map(|p| p.port)
            .collect();
        Some(format!(
            "port {} is inside net.ipv4.ip_local_port_range ({}-{}) and not in net.ipv4.ip_local_reserved_ports: \
             the kernel may take it as the source port of a connection (nginx's to the live app, say) and the app \
             then cannot bind it. Reserve it: `{}` (and in /etc/sysctl.d/ to keep it), or use ports below {}",
            exposed.join(", "),
            self.range.0,
            self.range.1,
            self.fix(&ports),
            self.range.0
        ))
    }
}

/// The warning for `config`'s ports on this machine, if any.
pub fn ephemeral_warning(config: &Config) -> Option<String> {
    Ephemeral::read()?.warning(config)
}

/// Binds `port` on every address (as the app will) and lets it go at once.
/// On failure: why, which connections hold the port, and how to reserve it.
pub fn check_bindable(port: u16) -> Result<(), String> {
    let mut error = None;
    // The IPv6 wildcard covers IPv4 too where the machine is dual-stack; the
    // IPv4 one on its own where it has no IPv6.
    for addr in [
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ] {
        match TcpListener::bind(addr) {
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                error = Some(e);
                break;
            }
            Err(e) if addr.is_ipv6() => {
                // No IPv6 on this machine: nothing to learn from it.
                let _ = e;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let Some(e) = error else { return Ok(()) };
    let holders: Vec<String> = tcp_sockets(port)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let pids = pids_holding_inode(s.inode);
            let who = if s.inode == 0 {
                " (no process: the kernel keeps it)".to_string()
            } else if pids.is_empty() {
                String::new()
            } else {
                format!(
                    ", {}",
                    pids.iter()
                        .map(|&p| format!("pid {p} ({})", cmdline(p)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("{} -> {} {}{who}", s.local, s.remote, s.state_name())
        })
        .collect();
    let held = if holders.is_empty() {
        String::new()
    } else {
        format!("; held by {}", holders.join("; "))
    };
    let advice = match Ephemeral::read() {
        Some(eph) if eph.exposes(port) => format!(
            ": it is inside net.ipv4.ip_local_port_range ({}-{}), so the kernel hands it out as a source port. \
             Reserve it: `{}` (and in /etc/sysctl.d/ to keep it), or use a port below {}",
            eph.range.0,
            eph.range.1,
            eph.fix(&[port]),
            eph.range.0
        ),
        Some(eph) => format!(
            ". If a connection took it as its source port, reserve it: `{}`",
            eph.fix(&[port])
        ),
        None => String::new(),
    };
    Err(format!("cannot bind port {port}: {e}{held}{advice}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sysctls_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("garbage"), None);
        assert_eq!(parse_reserved(""), Vec::<(u16, u16)>::new());
        assert_eq!(
            parse_reserved("8081,38000-38010\n"),
            vec![(8081, 8081), (38000, 38010)]
        );
    }

    #[test]
    fn a_port_in_the_range_warns_unless_reserved() {
        let eph = Ephemeral {
            range: (32768, 60999),
            reserved_text: "38082".into(),
            reserved: parse_reserved("38082"),
        };
        assert!(eph.exposes(38081));
        assert!(!eph.exposes(38082), "reserved");
        assert!(!eph.exposes(8081), "below the range");
        assert_eq!(
            eph.fix(&[38081]),
            "sysctl -w net.ipv4.ip_local_reserved_ports=38082,38081"
        );
        let config = |ports: [u16; 2]| {
            let text = format!(
                r#"{{"profiles": [{{"name": "real1", "port": {}}}, {{"name": "real2", "port": {}}}],
                    "app": {{"dir": "/srv/app"}}}}"#,
                ports[0], ports[1]
            );
            crate::config::parse(&text, std::path::Path::new("/srv/nonstop.json")).unwrap()
        };
        // The seed's ports: one reserved, one not.
        let warning = eph.warning(&config([38081, 38082])).unwrap();
        assert!(
            warning.starts_with(
                "port 38081 (real1) is inside net.ipv4.ip_local_port_range (32768-60999)"
            ),
            "{warning}"
        );
        assert!(
            warning.contains("`sysctl -w net.ipv4.ip_local_reserved_ports=38082,38081`"),
            "{warning}"
        );
        // The book's ports are below the range: nothing to say.
        assert_eq!(eph.warning(&config([8081, 8082])), None);
    }

    #[test]
    fn a_source_port_in_use_is_named_with_the_fix() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_port = server.local_addr().unwrap().port();
        // The kernel picks the client's source port from the ephemeral
        // range; nothing listens on it, yet nothing else can bind it.
        let client = std::net::TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        let port = client.local_addr().unwrap().port();
        let err = check_bindable(port).unwrap_err();
        assert!(err.contains(&format!("cannot bind port {port}")), "{err}");
        assert!(
            err.contains(&format!(
                "127.0.0.1:{port} -> 127.0.0.1:{server_port} ESTABLISHED, pid {}",
                std::process::id()
            )),
            "{err}"
        );
        assert!(err.contains("net.ipv4.ip_local_reserved_ports="), "{err}");
        drop(client);
        drop(server);
    }
}
