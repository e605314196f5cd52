//! nginx's worker processes, found as the children of the master whose pid
//! `nginx.pid_file` holds: the ones that accept connections now, and those
//! of a configuration before the current one, which go on proxying the
//! requests they took until they finish ("worker process is shutting
//! down").
//!
//! Only /proc/PID/stat and /proc/PID/cmdline are read, which any user may,
//! so this works when the hooks run as the deploy user and nginx's workers
//! as www-data. nginx on another host has none to see here.

use crate::config::Config;
use crate::sys::log::Log;
use crate::sys::procs;

/// The running master whose pid `nginx.pid_file` holds; `None` when nginx
/// is on another host (its processes are there), no pid file is
/// configured, or it names no running process.
fn master(config: &Config) -> Option<i32> {
    if config.nginx.ssh.is_some() {
        return None;
    }
    let pid_file = config.nginx.pid_file.as_ref()?;
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 1 && procs::is_alive(pid))
}

/// The nginx workers that accept connections now: the master's children
/// titled "worker process". `None`, with a warning, when they cannot be
/// seen; then only the probe tells.
pub(crate) fn accepting(config: &Config, log: &Log) -> Option<Vec<i32>> {
    let pid_file = config
        .nginx
        .pid_file
        .as_ref()
        .filter(|_| config.nginx.ssh.is_none())?;
    let Some(master) = master(config) else {
        log.warn(format!(
            "cannot read a running nginx master's pid from {}; confirming through the probe alone \
             (set nginx.pid_file, or \"\" to silence this)",
            pid_file.display()
        ));
        return None;
    };
    let workers: Vec<i32> = procs::children(master)
        .into_iter()
        .filter(|&w| still_accepting(w))
        .collect();
    if workers.is_empty() {
        log.warn(format!(
            "nginx master {master} has no worker process this user can see; confirming through the probe alone"
        ));
        return None;
    }
    Some(workers)
}

/// An nginx worker accepts until it exits or takes the shutdown signal: its
/// title then turns to "worker process is shutting down", set just before it
/// closes its listening sockets.
pub(crate) fn still_accepting(worker: i32) -> bool {
    let title = procs::cmdline(worker);
    procs::is_alive(worker) && title.contains("worker process") && !title.contains("shutting down")
}

/// The workers of nginx's configurations before the current one that are
/// still alive: the master's children (found through `nginx.pid_file`)
/// titled "worker process is shutting down". They may still be proxying a
/// request to the app `stop` is about to signal. Empty when nginx is on
/// another host or its master cannot be found: then only the app's own
/// connections tell.
pub(crate) fn previous(config: &Config) -> Vec<i32> {
    let Some(master) = master(config) else {
        return Vec::new();
    };
    procs::children(master)
        .into_iter()
        .filter(|&w| {
            let title = procs::cmdline(w);
            title.contains("worker process") && title.contains("shutting down")
        })
        .collect()
}
