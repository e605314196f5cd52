//! What the modes that change nginx's config and reload it share (the
//! include file, the symlink between site files): `nginx.test` and
//! `nginx.reload`, the workers of the configuration a reload replaces (the
//! confirmation waits until none of them accepts), the pid file they are
//! found through, and the waits all that adds to the hook budget.

use std::time::Duration;

use anyhow::Result;

use crate::config::waits::{Part, Steps, BLIND_CONFIRM};
use crate::config::Config;
use crate::nginx::{pidfile, workers};
use crate::route::mode::Commands;
use crate::sys::log::Log;

/// `nginx.test` before the reload, `nginx.reload` to load what was written.
pub(crate) fn commands(config: &Config) -> Commands<'_> {
    Commands {
        test: Some(&config.nginx.test),
        reload: Some(&config.nginx.reload),
    }
}

/// The confirmation watches the workers of the master the pid file names:
/// it must be the pid file of the nginx `nginx.test` tests.
pub(crate) fn before_write(config: &Config, log: &Log) -> Result<()> {
    pidfile::check(config, log)
}

/// The workers a reload replaces, when they can be seen.
pub(crate) fn accepting_workers(config: &Config, log: &Log) -> Option<Vec<i32>> {
    workers::accepting(config, log)
}

/// Once the replaced workers stopped accepting, one answer of the target
/// proves the next request goes there too. Where they cannot be seen (nginx
/// on another host, no pid file), the probe must answer the target without
/// a break for longer than nginx keeps old workers accepting.
pub(crate) fn steady_for(workers: Option<&[i32]>) -> Duration {
    match workers {
        Some(_) => Duration::ZERO,
        None => BLIND_CONFIRM,
    }
}

/// Their waits: finishing a killed switch runs the test and the reload
/// back; the switch runs them there and back, and reads nginx's pid file
/// from `nginx -T` first.
pub(crate) fn waits(config: &Config, part: Part, steps: &mut Steps) {
    match part {
        Part::Recover => steps.recover_route(2),
        Part::Ready => {
            if steps.remote > 0 {
                steps.commands("checking the include's directory and what it holds", 2);
            }
        }
        Part::Switch | Part::SwitchBack => {
            steps.switch_route(4);
            // `nginx -T`, for the pid file nginx's config names (nginx/pidfile.rs).
            if config.nginx.pid_file.is_some() && steps.remote == 0 {
                steps.commands("nginx -T: the pid file of nginx's config", 1);
            }
        }
    }
}
