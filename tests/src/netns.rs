//! Two hosts on one machine, for the tests of nginx on another host (seed
//! 000): two network namespaces joined by a veth pair, made and removed by
//! the test itself, with traffic only inside them.
//!
//! - [`Place`]: where a server or a stage runs: this machine's loopback, or a
//!   namespace (its processes are started as `ip netns exec NS PROGRAM ...`);
//! - [`in_netns`]: runs a closure on a thread that entered a namespace (the
//!   load clients, a GET through nginx); the test's own threads stay put;
//! - [`Net`]: the two namespaces and the link between them, which it cuts
//!   and mends; on drop it kills every process left in them, by pid, and
//!   deletes them;
//! - [`TwoHosts`]: an nginx host (its own nginx and sshd at 10.77.0.2) and an
//!   app host (the bundle, the stages and the demo jars at 10.77.0.1): nginx
//!   proxies to the app host's address, the stages reach nginx's include and
//!   commands over ssh, and nginx's reload passes a gate the test controls.

use std::net::Ipv4Addr;

mod hosts;
mod net;
mod place;

pub use hosts::{outside_cuts, TwoHosts};
pub use net::Net;
pub use place::{in_netns, Place};

/// The app host's address on the link.
pub const APP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The nginx host's address on the link.
pub const NGINX_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Each namespace has its own ports, so the book's numbers are free there.
pub const NGINX_PORT: u16 = 8080;
pub const SSH_PORT: u16 = 22;
pub const APP_PORTS: [u16; 2] = [8081, 8082];

const APP_VETH: &str = "veth-app";
const NGINX_VETH: &str = "veth-nginx";
