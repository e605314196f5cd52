//! The harness behind nonstop's end-to-end tests, its demo and its benchmark:
//! real parts only. One module per part, everything re-exported here, so a
//! suite or a binary names `tests::Setup`, `tests::free_port`, ...:
//!
//! - `dirs`: [`repo_root`] and [`TestDir`], a private temp directory per test;
//! - `ports`: [`free_port`]s below the kernel's ephemeral range;
//! - `procs`: [`terminate`], [`alive`], [`wait_until`]: processes the harness owns;
//! - `http`: [`http_get`], one GET on a fresh connection;
//! - `jars`: [`Jars`], the demo app (examples/demo-app) compiled with javac,
//!   one jar per version; [`pyz`], the Python demo app (examples/demo-py) zipped per version;
//! - `nginx`: [`Nginx`], a real nginx with its own prefix on a free loopback port;
//! - `bundle`: [`Bundle`], the five binaries and a `nonstop.json`, laid out like a
//!   CodeDeploy bundle, run the way the agent runs hooks ([`Bundle::hook`]);
//! - `hook`: [`HookRun`], what a hook gave, with chained `#[track_caller]` checks;
//! - `compose`: [`ComposeProject`], the app as Docker Compose services;
//! - `sshd`: [`Sshd`], a private OpenSSH server for nginx "on another host";
//! - `setup`: [`Setup`], all of the above wired into the book's setup;
//! - `load`: [`Load`], clients requesting through nginx the whole time, over
//!   [`Clients`], the client loop the benchmark shares;
//! - `smallfs`: [`SmallFs`], a small tmpfs over a directory in a private mount
//!   namespace, to fill (a full disk under the state directory);
//! - [`netns`]: two hosts on one machine (network namespaces), for nginx on another host;
//! - `server`: [`Server`], a Debian server of the test's own (network and mount
//!   namespaces over the real paths: /etc/nginx, sudoers, ec2-user, nginx on :80);
//! - `agent`: [`Agent`], the real CodeDeploy agent's Installer and HookExecutor
//!   deploying a bundle zip on a [`Server`] (tests/agent/deploy.rb);
//! - `readme`: [`readme_blocks`], the shell blocks README.md marks for its tests;
//! - [`fleet`]: many servers behind a load balancer (HAProxy) on a bridge of
//!   their own, deployed by a deployment group the harness plays (AllAtOnce,
//!   HalfAtATime, OneAtATime, minimum healthy hosts, BlockTraffic/AllowTraffic).
//!
//! Every process the harness starts is stopped by its pid when its owner is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agent;
mod bundle;
mod compose;
mod dirs;
pub mod fleet;
mod hook;
mod http;
mod jars;
mod load;
pub mod netns;
mod nginx;
mod ports;
mod procs;
mod readme;
mod server;
mod setup;
mod smallfs;
mod sshd;

pub use agent::{Agent, DeployOptions, Deployment, Reported, AGENT_VAR};
pub use bundle::{binaries_dir, cargo_bundle, static_binaries, Bundle, Spawned, STAGES};
pub use compose::ComposeProject;
pub use dirs::{repo_root, TestDir};
pub use hook::HookRun;
pub use http::{http_get, http_post, KeptAlive};
pub use jars::{pyz, Jars};
pub use load::{assert_all_served, Clients, Load, Sample};
pub use nginx::Nginx;
pub use ports::{free_port, free_ports};
pub use procs::{alive, terminate, wait_until};
pub use readme::{readme_blocks, Block};
pub use server::{Server, AGENT_PATH, DEPLOY_USER};
pub use setup::{Layout, Setup, SetupOptions};
pub use smallfs::SmallFs;
pub use sshd::Sshd;
