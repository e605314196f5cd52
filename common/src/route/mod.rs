//! Routing: how nginx is pointed at a profile, and which profile it points
//! at now.
//!
//! A routing mode (`nginx.mode`) is one file here, implementing
//! [`mode::Mode`]: the book's include file ([`include`]), a symlink between
//! site files ([`symlink`]), an upstream over both ports that is never
//! edited ([`upstream_pair`]), a symlink nginx resolves on every request,
//! switched without a reload ([`realpath`]). Each reaches nginx's files and commands
//! through a [`host::Host`], this host or nginx's over `ssh` ([`ssh`]).
//! [`of`] is the one place that turns the config into a mode; the rest
//! (detection in [`detect`], the switch in `crate::switch`, the stage
//! frame, the hook budget, `profile --check`) only calls the trait.

pub mod address;
pub mod detect;
pub mod host;
pub mod include;
pub mod mode;
pub mod page;
pub mod reach;
pub mod realpath;
pub mod reloading;
pub mod ssh;
pub mod symlink;
pub mod upstream_pair;

use crate::config::{Config, Routing};
use host::Host;
use mode::Mode;

/// The routing mode `config` names, acting on its keys, on the host where
/// nginx is.
pub fn of(config: &Config) -> Box<dyn Mode + '_> {
    let host = Host::of(config);
    match &config.nginx.routing {
        Routing::Include => Box::new(include::IncludeFile { config, host }),
        Routing::Symlink { link, sites } => Box::new(symlink::SymlinkSites {
            config,
            host,
            link,
            sites,
        }),
        Routing::UpstreamPair => Box::new(upstream_pair::UpstreamPair { config }),
        Routing::Realpath { link } => Box::new(realpath::RealpathLink { config, host, link }),
    }
}
