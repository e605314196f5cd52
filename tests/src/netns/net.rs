//! The two namespaces and the veth pair between them ([`Net`]): made and
//! removed by the test, the link cut and mended (or its packets dropped) on
//! the test's word, every cut remembered.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::place::ip;
use super::{Place, APP_ADDR, APP_VETH, NGINX_ADDR, NGINX_VETH};
use crate::{alive, terminate};

/// The app host's and the nginx host's namespaces and the veth pair between
/// them. Remembers when the link was cut and mended.
#[derive(Debug)]
pub struct Net {
    pub app: String,
    pub nginx: String,
    created: Vec<String>,
    cuts: Mutex<Vec<(Instant, Option<Instant>)>>,
}

impl Net {
    /// Creates both namespaces (named after this test process, so parallel
    /// runs never share one), the link, and the addresses.
    pub fn create() -> Result<Net> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "nonstop-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        );
        let mut net = Net {
            app: format!("{id}-app"),
            nginx: format!("{id}-nginx"),
            created: Vec::new(),
            cuts: Mutex::new(Vec::new()),
        };
        for ns in [net.app.clone(), net.nginx.clone()] {
            ip(&["netns", "add", &ns]).context(
                "cannot create a network namespace; these tests need root and iproute2's `ip netns`",
            )?;
            net.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Made inside the namespaces: nothing appears in the machine's own network.
        ip(&[
            "-n", &net.app, "link", "add", APP_VETH, "type", "veth", "peer", "name", NGINX_VETH,
            "netns", &net.nginx,
        ])?;
        for (ns, dev, addr) in [
            (&net.app, APP_VETH, APP_ADDR),
            (&net.nginx, NGINX_VETH, NGINX_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(net)
    }

    /// The app host.
    pub fn app_place(&self) -> Place {
        Place {
            netns: Some(self.app.clone()),
            address: APP_ADDR,
        }
    }

    /// The nginx host.
    pub fn nginx_place(&self) -> Place {
        Place {
            netns: Some(self.nginx.clone()),
            address: NGINX_ADDR,
        }
    }

    fn cut_begins(&self) {
        self.cuts.lock().unwrap().push((Instant::now(), None));
    }

    pub(super) fn cut_ends(&self) {
        if let Some(last) = self.cuts.lock().unwrap().last_mut() {
            last.1.get_or_insert_with(Instant::now);
        }
    }

    /// Pulls the cable: the app host's end of the link goes down, so
    /// nothing passes either way (the app host gets "network unreachable"
    /// at once, the nginx host's packets are lost).
    pub fn cut(&self) -> Result<()> {
        self.cut_begins();
        ip(&["-n", &self.app, "link", "set", APP_VETH, "down"])
    }

    /// Plugs it back in.
    pub fn mend(&self) -> Result<()> {
        ip(&["-n", &self.app, "link", "set", APP_VETH, "up"])
    }

    /// A silent loss instead: the nginx host drops every packet from and to
    /// the app host (a firewall, a dead switch port), so connections hang
    /// and retry rather than fail at once.
    pub fn drop_packets(&self) -> Result<()> {
        self.cut_begins();
        let app = APP_ADDR.to_string();
        self.iptables(&["-I", "INPUT", "-s", &app, "-j", "DROP"])?;
        self.iptables(&["-I", "OUTPUT", "-d", &app, "-j", "DROP"])
    }

    /// Lets packets through again.
    pub fn pass_packets(&self) -> Result<()> {
        let app = APP_ADDR.to_string();
        self.iptables(&["-D", "INPUT", "-s", &app, "-j", "DROP"])?;
        self.iptables(&["-D", "OUTPUT", "-d", &app, "-j", "DROP"])
    }

    fn iptables(&self, args: &[&str]) -> Result<()> {
        let mut argv = vec!["netns", "exec", &self.nginx, "iptables", "-w"];
        argv.extend_from_slice(args);
        ip(&argv)
    }

    /// Every cut so far, from its start to the moment the link was known to
    /// work again (open-ended cuts end now).
    pub fn cuts(&self) -> Vec<(Instant, Instant)> {
        self.cuts
            .lock()
            .unwrap()
            .iter()
            .map(|&(from, to)| (from, to.unwrap_or_else(Instant::now)))
            .collect()
    }

    /// The pids of the processes in namespace `ns` (`ip netns pids`).
    pub fn pids(ns: &str) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|&p| p != std::process::id() as i32)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Whatever the test started in them (apps, nginx, sshd, a gate's
        // background reload) and is still there: every process in our own
        // namespaces is one the test started.
        for ns in &self.created {
            for pid in Net::pids(ns) {
                if alive(pid) {
                    terminate(pid, Duration::from_secs(5));
                }
            }
        }
        for ns in &self.created {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
