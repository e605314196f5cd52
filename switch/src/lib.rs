//! `switch`: point nginx at a profile and prove it took.
//!
//! The book's switch.sh writes the include with `tee` and runs
//! `service nginx reload`, trusting both. Here:
//! 1. the include is written atomically (temp file, fsync, rename);
//! 2. `nginx.test` runs; if it fails the previous include is put back byte
//!    for byte and nginx is never reloaded;
//! 3. `nginx.reload` runs;
//! 4. the probe through nginx is polled until it answers as the target,
//!    because a reload returns before the new workers take over and can exit
//!    0 even when the new config did not take. If the answer never comes the
//!    previous include is restored and nginx reloaded again;
//! 5. the active and previous profile are recorded in `switch.json`.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;

use nonstop_common::cmd;
use nonstop_common::detect::{self, Probe};
use nonstop_common::procs::{self, wait_for};
use nonstop_common::state::{read_capped, write_atomic, Switched};
use nonstop_common::time::{now_unix_ms, secs};
use nonstop_common::{run_stage, CommonArgs, Config, Context, Log, Profile};

/// How long nginx's own commands may take.
const NGINX_COMMAND_LIMIT: Duration = Duration::from_secs(30);

pub const LOG: Log = Log::new("switch");

/// Point nginx at a profile (default: the idle one), test, reload and confirm
/// through nginx; restore the previous include on any failure.
#[derive(Debug, Parser)]
#[command(name = "switch", version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Profile to route to [default: the idle one]
    #[arg(long, value_name = "NAME")]
    pub to: Option<String>,
}

/// Entry point of the `switch` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    run_stage(LOG, &args.common, args.to.as_deref(), |ctx| {
        let target = ctx.target(args.to.as_deref())?;
        switch_to(ctx, &target)?;
        ctx.completes_deployment = true;
        Ok(())
    })
}

/// Routes nginx to `target`; on any failure nginx's config is left as it was.
pub fn switch_to(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    let include = &config.nginx.include;
    let new = config.include_line(target);
    let old = read_capped(include, 1 << 20)
        .with_context(|| format!("cannot read the include file {}", include.display()))?;

    if old.as_deref() == Some(new.as_bytes())
        && matches!(detect::probe(config), Probe::Answered(ref p) if p == target)
    {
        LOG.say(format!(
            "nginx already routes to {} ({}); nothing to do",
            target.name, target.port
        ));
        return record(ctx, target);
    }

    write_atomic(include, new.as_bytes()).with_context(|| {
        format!(
            "cannot write the include file {}; nothing changed",
            include.display()
        )
    })?;
    LOG.say(format!("wrote {}: {}", include.display(), new.trim()));

    let test = cmd::run(&config.nginx.test, NGINX_COMMAND_LIMIT);
    match test {
        Ok(out) if out.success() => LOG.say(format!("`{}` passed", config.nginx.test.join(" "))),
        other => {
            let why = failure(other);
            restore(include, old.as_deref())?;
            return Err(anyhow!(
                "`{}` failed, nginx was not reloaded and the include file is restored: {why}",
                config.nginx.test.join(" ")
            ));
        }
    }

    let old_workers = accepting_workers(config);
    let reloaded_at = Instant::now();
    match cmd::run(&config.nginx.reload, NGINX_COMMAND_LIMIT) {
        Ok(out) if out.success() => {}
        other => {
            let why = failure(other);
            restore(include, old.as_deref())?;
            return Err(anyhow!(
                "`{}` failed and the include file is restored: {why}",
                config.nginx.reload.join(" ")
            ));
        }
    }
    LOG.say(format!(
        "`{}` done; waiting for nginx to answer as {}",
        config.nginx.reload.join(" "),
        target.name
    ));

    // Confirmed when no worker of the old configuration can take a connection
    // any more and a new connection through nginx reaches the target. nginx
    // keeps old workers accepting for ~100 ms after it starts the new ones,
    // so one good answer alone does not prove the next request goes there too.
    let mut last = String::new();
    let confirmed = wait_for(
        config.nginx.confirm_timeout,
        Duration::from_millis(10),
        || {
            if let Some(w) = old_workers.iter().flatten().find(|&&w| still_accepting(w)) {
                last =
                    format!("worker {w} of the previous configuration still accepts connections");
                return false;
            }
            match detect::probe(config) {
                Probe::Answered(p) if &p == target => true,
                Probe::Answered(p) => {
                    last = format!("it answered {}", p.name);
                    false
                }
                Probe::Failed(why) => {
                    last = why;
                    false
                }
            }
        },
    );
    match confirmed {
        Some(_) => {
            let how = if old_workers.is_some() {
                "the old workers stopped accepting and the probe answers"
            } else {
                "the probe answers"
            };
            LOG.say(format!(
                "nginx routes to {} ({}): confirmed {} after the reload ({how})",
                target.name,
                target.port,
                secs(reloaded_at.elapsed())
            ));
            record(ctx, target)
        }
        None => {
            restore(include, old.as_deref())?;
            let back = reload_previous(config);
            Err(anyhow!(
                "nginx did not answer as {} within {} of the reload ({last}); the include file is restored and {back}",
                target.name,
                secs(config.nginx.confirm_timeout)
            ))
        }
    }
}

/// The nginx workers that accept connections now: the master's children
/// (found through its pid file) titled "worker process". `None`, with a
/// warning, when they cannot be seen; then only the probe confirms a switch.
///
/// Only /proc/PID/stat and /proc/PID/cmdline are read, which any user may,
/// so this works when the hooks run as the deploy user and nginx's workers
/// as www-data.
fn accepting_workers(config: &Config) -> Option<Vec<i32>> {
    let pid_file = config.nginx.pid_file.as_ref()?;
    let master = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&pid| procs::is_alive(pid));
    let Some(master) = master else {
        LOG.warn(format!(
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
        LOG.warn(format!(
            "nginx master {master} has no worker process this user can see; confirming through the probe alone"
        ));
        return None;
    }
    Some(workers)
}

/// An nginx worker accepts until it exits or takes the shutdown signal: its
/// title then turns to "worker process is shutting down", set just before it
/// closes its listening sockets.
fn still_accepting(worker: i32) -> bool {
    let title = procs::cmdline(worker);
    procs::is_alive(worker) && title.contains("worker process") && !title.contains("shutting down")
}

fn failure(result: Result<cmd::Outcome>) -> String {
    match result {
        Ok(out) => format!("{} ({})", out.message(), out.status),
        Err(e) => format!("{e:#}"),
    }
}

/// Puts the include file back as it was (or removes it if there was none).
fn restore(include: &Path, old: Option<&[u8]>) -> Result<()> {
    let restored = match old {
        Some(bytes) => write_atomic(include, bytes),
        None => std::fs::remove_file(include).or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        }),
    };
    restored.with_context(|| {
        format!(
            "cannot restore the include file {}: check it by hand before nginx next reloads",
            include.display()
        )
    })?;
    LOG.say(format!("restored {}", include.display()));
    Ok(())
}

/// After a restore, brings nginx back to the restored config. Returns words
/// for the error message.
fn reload_previous(config: &Config) -> String {
    match cmd::run(&config.nginx.test, NGINX_COMMAND_LIMIT) {
        Ok(out) if out.success() => {}
        other => return format!("the restored config fails its test too: {}", failure(other)),
    }
    match cmd::run(&config.nginx.reload, NGINX_COMMAND_LIMIT) {
        Ok(out) if out.success() => "nginx was reloaded with it".to_string(),
        other => format!("reloading nginx with it failed: {}", failure(other)),
    }
}

fn record(ctx: &Context, target: &Profile) -> Result<()> {
    let previous = ctx.slots.live.clone().filter(|p| p != target);
    let record = Switched {
        active: target.clone(),
        previous,
        switched_unix_ms: now_unix_ms(),
        deployment_id: ctx.deployment_id.clone(),
    };
    ctx.state.write(&ctx.state.switched_path(), &record)
}
