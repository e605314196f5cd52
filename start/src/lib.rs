//! `start` (CodeDeploy ApplicationStart): launch the new build on the idle port.
//!
//! The book's start.sh copies `zip/*.jar` over the jar the live JVM is
//! running (which can crash it), and its `nohup ... &` child keeps the hook's
//! stdout open, so CodeDeploy waits for the hook's timeout. Here:
//! - the newest artifact (`nonstop_common::app::artifact`: a symlink to a file is
//!   followed) is copied into `APP_DIR/PROFILE/` through a temp file
//!   and a rename, so no file a running process uses is ever written to;
//! - the command is an argv (no shell) with `{profile}`, `{port}` and
//!   `{artifact}` substituted, started in a new session with stdin from
//!   /dev/null and stdout/stderr appended to the log, so the hook returns;
//! - a taken port is refused, naming the pid, and so is one that cannot be
//!   bound because a connection holds it as its source port (naming it and
//!   the sysctl that reserves the port); an app that dies in its first
//!   moments fails the stage with the end of its log;
//! - the launch leads its own session and process group (what `stop`
//!   signals), and `start` is its child subreaper while it watches it: a
//!   launcher that forks the app and exits 0 has the app adopted (the
//!   leftover that listens on the port), and whatever a failed launch left
//!   is stopped, so no orphan keeps the idle port.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use clap::Parser;

use nonstop_common::app::artifact;
use nonstop_common::app::compose;
use nonstop_common::app::ports;
use nonstop_common::app::tree::{self, Proc};
use nonstop_common::config::{render, wildcard_match, Compose};
use nonstop_common::state::{BuildFacts, Launched};
use nonstop_common::sys::files;
use nonstop_common::sys::log::tail_for_message;
use nonstop_common::sys::procs::{cmdline, is_same_alive, listening, start_time};
use nonstop_common::sys::signals::{self, wait_for};
use nonstop_common::sys::time::{now_unix_ms, secs};
use nonstop_common::{run_stage, CommonArgs, Context, Log, Profile};

pub(crate) const LOG: Log = Log::new("start");

/// Launch the newest build on the idle profile's port.
#[derive(Debug, Parser)]
#[command(name = "start", version = nonstop_common::VERSION, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Start this profile instead of the idle one (its port must be free)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}

/// Entry point of the `start` binary.
pub fn run<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    run_stage(LOG, &args.common, args.profile.as_deref(), |ctx| {
        let target = ctx.target(args.profile.as_deref())?;
        start_profile(ctx, &target)
    })
}

fn start_profile(ctx: &mut Context, target: &Profile) -> Result<()> {
    if let Some(compose) = nonstop_common::app::compose::of(&ctx.config) {
        return start_service(ctx, target, compose);
    }
    let config = &ctx.config;
    let previous: Option<Launched> = ctx
        .state
        .read(&ctx.state.launched_path(&target.name), &LOG)?;
    if already_started(ctx, target, previous.as_ref()) {
        return Ok(());
    }
    check_idle_port(ctx, target, previous)?;
    let source = artifact::newest(&config.app.artifact_dir, &config.app.artifact_pattern)?;
    if ctx.dry_run {
        return dry_run(ctx, target, &source);
    }
    signals::check().context("nothing was changed")?;
    let artifact = install_artifact(config, target, &source)?;
    let (child, record) = launch(ctx, target, &artifact)?;
    ctx.build = Some(BuildFacts::of(&record));
    watch(ctx, target, child, record)
}

/// Run again within one deployment (after the first run was killed, say),
/// start finds its own app and leaves it be: the deployment converges.
/// Whether it did (and said so).
fn already_started(ctx: &Context, target: &Profile, previous: Option<&Launched>) -> bool {
    let Some(l) = previous.filter(|l| {
        ctx.deployment_id.is_some()
            && l.deployment_id == ctx.deployment_id
            && l.port == target.port
            && is_same_alive(l.pid, l.start_time)
    }) else {
        return false;
    };
    LOG.say(format!(
        "this deployment already started {} (pid {}, {}); not starting it twice",
        target.name,
        l.pid,
        l.artifact.display()
    ));
    true
}

/// Refuses a launch the idle port could not take: a listener on it, a
/// connection holding it as its source port, or an app nonstop started
/// earlier that still runs; warns when the target is the live profile.
fn check_idle_port(ctx: &Context, target: &Profile, previous: Option<Launched>) -> Result<()> {
    let port = target.port;
    let seen = listening(port).with_context(|| format!("cannot read who listens on {port}"))?;
    if !seen.is_free() {
        let who = seen.holders();
        return Err(anyhow!(
            "port {port} ({}) is already taken by {who}; run `stop` first",
            target.name
        ));
    }
    // Nothing listens, yet a connection may hold the port as its source port
    // (it is in the kernel's ephemeral range): the app would die with
    // "Address already in use", so say which connection and how to fix it.
    ports::check_bindable(port).map_err(|why| {
        anyhow!(
            "port {port} ({}) is not free although nothing listens on it: {why}; nothing was started",
            target.name
        )
    })?;
    if let Some(l) = previous.filter(|l| is_same_alive(l.pid, l.start_time)) {
        return Err(anyhow!(
            "the app nonstop started for {} earlier (pid {}) is still running, though not listening on {port}; run `stop` first",
            target.name,
            l.pid
        ));
    }
    if ctx.slots.live.as_ref() == Some(target) {
        LOG.warn(format!(
            "{} is the profile nginx routes to, and nothing listens on its port: starting it again",
            target.name
        ));
    }
    Ok(())
}

/// `--dry-run`: where the artifact would go, what would run, and how long
/// it would be watched.
fn dry_run(ctx: &Context, target: &Profile, source: &Path) -> Result<()> {
    let config = &ctx.config;
    let dest = config.app.dir.join(&target.name).join(
        source
            .file_name()
            .ok_or_else(|| anyhow!("{} has no file name", source.display()))?,
    );
    LOG.say(format!(
        "would copy {} to {}",
        source.display(),
        dest.display()
    ));
    let log_path = config.log_path(target);
    let rotation = if rotates(config, &log_path) && log_path.exists() {
        format!(
            " (the previous one moved to {}.1, {} kept)",
            log_path.display(),
            config.app.log_keep
        )
    } else {
        String::new()
    };
    LOG.say(format!(
        "would run `{}` in {}, its output appended to {}{rotation}",
        command_for(ctx, target, &dest).join(" "),
        config.app.dir.display(),
        log_path.display()
    ));
    LOG.say(format!(
        "would watch it for up to {} and fail if it exits",
        secs(config.app.start_grace)
    ));
    Ok(())
}

/// Puts the artifact in place (see [`install`]) and says so; a signal after
/// that leaves it there, not started.
fn install_artifact(
    config: &nonstop_common::Config,
    target: &Profile,
    source: &Path,
) -> Result<PathBuf> {
    let artifact = install(
        &config.app.dir,
        target,
        source,
        &config.app.artifact_pattern,
    )?;
    LOG.say(format!(
        "copied {} to {}",
        source.display(),
        artifact.display()
    ));
    signals::check()
        .with_context(|| format!("{} is in place but was not started", artifact.display()))?;
    Ok(artifact)
}

/// Opens the app's log for this run (see [`open_log`]) with a marker line
/// for `argv`; returns it and the offset where this run's lines begin.
fn open_run_log(
    config: &nonstop_common::Config,
    target: &Profile,
    log_path: &Path,
    argv: &[String],
) -> Result<(File, u64)> {
    if let Some(dir) = log_path.parent() {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the log directory {}", dir.display()))?;
    }
    let mut log = open_log(config, log_path)?;
    let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    // A marker in the app's log, so an operator can tell the runs apart.
    let _ = writeln!(
        log,
        "--- nonstop start: {} on {}: {}",
        target.name,
        target.port,
        argv.join(" ")
    );
    Ok((log, log_offset))
}

/// Launches the configured command for `artifact` in a session of its own,
/// with this process as its subreaper, and records it for `health` and
/// `stop` before saying so.
fn launch(ctx: &Context, target: &Profile, artifact: &Path) -> Result<(Child, Launched)> {
    let config = &ctx.config;
    let port = target.port;
    let log_path = config.log_path(target);
    let argv = command_for(ctx, target, artifact);
    let (log, log_offset) = open_run_log(config, target, &log_path, &argv)?;
    // Hashed before the launch, from the copy it runs: the record names the
    // build even once the file is replaced. A file that cannot be read here
    // fails the launch below anyway; its hash is then just unknown.
    let artifact_sha256 = match artifact::sha256(artifact) {
        Ok(h) => Some(h),
        Err(e) => {
            LOG.warn(format!("cannot hash {}: {e}", artifact.display()));
            None
        }
    };

    // Whatever the launch forks and leaves behind (a start.sh ending with
    // `&`, a daemonizing launcher) reparents to this process instead of init,
    // so it can be adopted or stopped below.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        LOG.warn(format!(
            "cannot become the launch's child subreaper ({e}); what it forks is followed through its session only"
        ));
    }
    let child = spawn_detached(&argv, &config.app.dir, &log).with_context(|| {
        format!(
            "cannot start `{}` in {}",
            argv.join(" "),
            config.app.dir.display()
        )
    })?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    let launch_start = start_time(pid);
    let record = Launched {
        profile: target.name.clone(),
        port,
        pid,
        start_time: launch_start,
        artifact: artifact.to_path_buf(),
        artifact_sha256,
        command: argv.clone(),
        log: log_path.clone(),
        log_offset,
        started_unix_ms: now_unix_ms(),
        deployment_id: ctx.deployment_id.clone(),
        container_id: None,
        image_id: None,
        // A session leader leads its process group too: `stop` signals it whole.
        group: Some(pid),
        group_start_time: launch_start,
        launcher_pid: None,
    };
    ctx.state
        .write(&ctx.state.launched_path(&target.name), &record)?;
    LOG.say(format!(
        "started {} (pid {pid}) on {port}: {}; log {}",
        target.name,
        argv.join(" "),
        log_path.display()
    ));
    Ok((child, record))
}

/// Watches the launch's first moments: an exit fails the stage now (unless
/// it left the app running), a listening port ends the watch early (the
/// launch itself or, for a wrapper that does not exec, one of its group),
/// and after the grace period `health` takes over.
fn watch(ctx: &Context, target: &Profile, mut child: Child, record: Launched) -> Result<()> {
    let config = &ctx.config;
    let (port, pid) = (target.port, record.pid);
    let mut exited = None;
    let mut listener = None;
    let settled = wait_for(config.app.start_grace, Duration::from_millis(10), || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        listener = listening(port).ok().and_then(|l| {
            l.pids
                .into_iter()
                .find(|&p| p == pid || tree::pgid(p) == Some(pid))
        });
        listener.is_some()
    })
    .with_context(|| {
        format!(
            "{} (pid {pid}) was started and keeps running; `stop --profile {}` stops it, `health --profile {} --no-switch` checks it",
            target.name, target.name, target.name
        )
    })?;
    if let Some(status) = exited {
        let launch = Proc {
            pid,
            start: record.start_time.unwrap_or(0),
        };
        return after_exit(ctx, target, record, launch, status);
    }
    match (settled, listener) {
        (Some(t), Some(p)) if p == pid => {
            LOG.say(format!("pid {pid} listens on {port} after {}", secs(t)))
        }
        (Some(t), Some(p)) => LOG.say(format!(
            "pid {p} ({}), of pid {pid}'s process group, listens on {port} after {}",
            cmdline(p),
            secs(t)
        )),
        _ => LOG.say(format!(
            "pid {pid} is running after {}; `health` will wait for it to answer",
            secs(config.app.start_grace)
        )),
    }
    Ok(())
}

/// What to do with a launch that exited within its first moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnExit {
    /// It left nothing running: the stage fails.
    Fail,
    /// It failed and left processes running: they are stopped, the stage fails.
    StopLeftovers,
    /// It exited 0 and left processes running (a launcher that forked the
    /// app): wait for one of them to listen.
    AwaitListener,
}

/// The decision on a launch that exited: by its exit status and whether it
/// left anything running.
fn on_exit(success: bool, left_running: bool) -> OnExit {
    match (success, left_running) {
        (_, false) => OnExit::Fail,
        (false, true) => OnExit::StopLeftovers,
        (true, true) => OnExit::AwaitListener,
    }
}

/// What to do once the wait for a launcher's leftovers to listen is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterWait {
    /// This one listens on the port: it is the app.
    Adopt(Proc),
    /// All it left exited too: the stage fails.
    AllExited,
    /// None of them listened in time: they are stopped, the stage fails.
    StopLeftovers,
}

/// The decision after the wait: by the one that came to listen, if any, and
/// whether the wait ended before its limit.
fn after_wait(listener: Option<Proc>, settled: bool) -> AfterWait {
    match (listener, settled) {
        (Some(app), _) => AfterWait::Adopt(app),
        (None, true) => AfterWait::AllExited,
        (None, false) => AfterWait::StopLeftovers,
    }
}

/// The processes, described, in a list.
fn named(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(Proc::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The launch exited within its first moments. If it exited 0 and left
/// processes running (a launcher that forks the app and returns), the one
/// of them that comes to listen on the port is adopted: recorded as the app,
/// with its process group, for `health` and `stop`. Otherwise whatever it
/// left is stopped and the stage fails: no orphan keeps the idle port.
fn after_exit(
    ctx: &Context,
    target: &Profile,
    mut record: Launched,
    launch: Proc,
    status: std::process::ExitStatus,
) -> Result<()> {
    let config = &ctx.config;
    let port = target.port;
    let (log, log_offset) = (record.log.clone(), record.log_offset);
    let tail = || tail_for_message(&log, log_offset);
    let left = tree::leftovers(std::process::id() as i32, launch);
    match on_exit(status.success(), !left.is_empty()) {
        OnExit::Fail => {
            return Err(anyhow!(
                "{} (pid {}) exited at once ({status}) and left nothing running; {}",
                target.name,
                launch.pid,
                tail()
            ))
        }
        OnExit::StopLeftovers => {
            let what = named(&left);
            let stopped = stop_leftovers(config, &left)?;
            return Err(anyhow!(
                "{} (pid {}) exited at once ({status}), leaving {what} running; {stopped}; {}",
                target.name,
                launch.pid,
                tail()
            ));
        }
        OnExit::AwaitListener => {}
    }
    let (now, listener, settled) = await_listener(ctx, target, &mut record, launch, left)?;
    match after_wait(listener, settled) {
        AfterWait::Adopt(app) => adopt(ctx, target, record, app, launch, &now),
        AfterWait::AllExited => Err(anyhow!(
            "{} (pid {}) exited at once ({status}), and what it left running exited too; {}",
            target.name,
            launch.pid,
            tail()
        )),
        AfterWait::StopLeftovers => {
            let what = named(&now);
            let stopped = stop_leftovers(config, &now)?;
            Err(anyhow!(
                "the launch of {} (pid {}) exited 0 and left {what} running, none of which listened on {port} within {}; {stopped}; {}",
                target.name,
                launch.pid,
                secs(config.health.timeout),
                tail()
            ))
        }
    }
}

/// Exit 0 with something left: a launcher that forked the app. Until one
/// of them listens, the first one stands in the record, so that `stop`
/// finds it should this stage be interrupted. Waits up to
/// `health.timeout_secs` for one of them to listen on the port, or for all
/// of them to exit; returns what is left then, the listener, and whether
/// the wait ended before its limit.
fn await_listener(
    ctx: &Context,
    target: &Profile,
    record: &mut Launched,
    launch: Proc,
    left: Vec<Proc>,
) -> Result<(Vec<Proc>, Option<Proc>, bool)> {
    let config = &ctx.config;
    let port = target.port;
    let me = std::process::id() as i32;
    LOG.say(format!(
        "the launch (pid {}) exited 0 and left {} running; waiting up to {} for one of them to listen on {port}",
        launch.pid,
        named(&left),
        secs(config.health.timeout)
    ));
    record.launcher_pid = Some(launch.pid);
    if let Some(&first) = left.first() {
        adopt_into(record, first, launch);
    }
    ctx.state
        .write(&ctx.state.launched_path(&target.name), &*record)?;
    let mut now = left;
    let mut listener = None;
    let found = wait_for(config.health.timeout, Duration::from_millis(10), || {
        now = tree::leftovers(me, launch);
        let on_port = listening(port).map(|l| l.pids).unwrap_or_default();
        listener = now.iter().copied().find(|p| on_port.contains(&p.pid));
        now.is_empty() || listener.is_some()
    })
    .with_context(|| {
        format!(
            "what the launch of {} left ({}) is recorded; `stop --profile {}` stops it",
            target.name,
            named(&now),
            target.name
        )
    })?;
    Ok((now, listener, found.is_some()))
}

/// Records `app`, which listens on the port, as the app the launch
/// started, and warns about what the launch left outside its process group.
fn adopt(
    ctx: &Context,
    target: &Profile,
    mut record: Launched,
    app: Proc,
    launch: Proc,
    now: &[Proc],
) -> Result<()> {
    adopt_into(&mut record, app, launch);
    ctx.state
        .write(&ctx.state.launched_path(&target.name), &record)?;
    LOG.say(format!(
        "adopted {} as {}: it listens on {}; the launch (pid {}) had exited 0",
        app.describe(),
        target.name,
        target.port,
        launch.pid
    ));
    let group = record.group;
    let apart: Vec<Proc> = now
        .iter()
        .copied()
        .filter(|p| tree::pgid(p.pid) != group)
        .collect();
    if !apart.is_empty() {
        LOG.warn(format!(
            "the launch also left {} running outside {}'s process group; not adopted, left running",
            named(&apart),
            app.pid
        ));
    }
    Ok(())
}

/// Records `app` (one of what `launch` left) as the launched app, with its
/// process group and that group leader's start time.
fn adopt_into(record: &mut Launched, app: Proc, launch: Proc) {
    record.pid = app.pid;
    record.start_time = Some(app.start);
    record.group = tree::pgid(app.pid);
    record.group_start_time = match record.group {
        Some(g) if g == launch.pid => Some(launch.start),
        Some(g) if g == app.pid => Some(app.start),
        Some(g) => start_time(g),
        None => None,
    };
}

/// Stops what a failed launch left (SIGTERM, SIGKILL after
/// `app.stop_timeout_secs`), and says how that went.
fn stop_leftovers(config: &nonstop_common::Config, left: &[Proc]) -> Result<String> {
    let mut targets = tree::targets_for(left);
    let ended = tree::terminate(
        &mut targets,
        config.app.stop_timeout,
        Duration::from_secs(5),
        &LOG,
        || true,
    )
    .context("what the launch left may still be running")?;
    Ok(if !ended.left.is_empty() {
        format!(
            "they were sent SIGTERM and SIGKILL, and {} still run",
            ended.left.join(", ")
        )
    } else if ended.killed.is_empty() {
        "they were stopped (SIGTERM)".to_string()
    } else {
        format!(
            "they were stopped ({} needed SIGKILL)",
            ended.killed.join(", ")
        )
    })
}

/// The Compose backend: a fresh container of the profile's service only
/// (`up -d --no-deps --force-recreate`), recorded with its container and
/// image id, and watched for its first moments like a process.
fn start_service(ctx: &Context, target: &Profile, compose: &Compose) -> Result<()> {
    let service = compose::service(compose, &ctx.config, target);
    compose::check_service(compose, service)?;
    if service_started(ctx, target, compose, service)? {
        return Ok(());
    }
    check_service_port(ctx, target, compose, service)?;
    if ctx.dry_run {
        dry_run_service(ctx, compose, service);
        return Ok(());
    }
    let container = up_service(ctx, target, compose, service)?;
    watch_service(ctx, target, compose, service, &container)
}

/// Whether this deployment already started the service's running container
/// (said so: the deployment converges). A container of it that runs
/// otherwise, or is paused, is refused.
fn service_started(
    ctx: &Context,
    target: &Profile,
    compose: &Compose,
    service: &str,
) -> Result<bool> {
    let previous: Option<Launched> = ctx
        .state
        .read(&ctx.state.launched_path(&target.name), &LOG)?;
    let running = compose::up_container(compose, service)?;
    if let Some(advice) = running.as_ref().and_then(|c| c.paused_advice(service)) {
        return Err(anyhow!("{advice}; nothing was started"));
    }
    let Some(c) = &running else {
        return Ok(false);
    };
    let ours = previous.as_ref().is_some_and(|l| {
        ctx.deployment_id.is_some()
            && l.deployment_id == ctx.deployment_id
            && l.container_id.as_deref() == Some(c.id.as_str())
    });
    if ours {
        LOG.say(format!(
            "this deployment already started {} (service {service}, container {}); not starting it twice",
            target.name,
            compose::short_id(&c.id)
        ));
        return Ok(true);
    }
    Err(anyhow!(
        "service {service} ({}) already runs (container {}, {}, {}); run `stop` first",
        target.name,
        compose::short_id(&c.id),
        c.image,
        c.status
    ))
}

/// Refuses to start a service whose port something else holds (the
/// engine could not publish it); warns when the target is the live profile.
fn check_service_port(
    ctx: &Context,
    target: &Profile,
    compose: &Compose,
    service: &str,
) -> Result<()> {
    let port = target.port;
    let seen = listening(port).with_context(|| format!("cannot read who listens on {port}"))?;
    if !seen.is_free() {
        if let Some(oneoff) = compose::oneoff_holding(compose, port) {
            return Err(anyhow!(
                "service {service} ({}) could not publish its port: {}; nothing was started",
                target.name,
                oneoff.oneoff_words(port)
            ));
        }
        return Err(anyhow!(
            "port {port} ({}) is already taken by {}; service {service} could not publish it",
            target.name,
            seen.holders()
        ));
    }
    if ctx.slots.live.as_ref() == Some(target) {
        LOG.warn(format!(
            "{} is the profile nginx routes to, and its service is not running: starting it again",
            target.name
        ));
    }
    Ok(())
}

/// `--dry-run` with the Compose backend: what would be pulled, started and
/// watched.
fn dry_run_service(ctx: &Context, compose: &Compose, service: &str) {
    if compose.pull {
        LOG.say(format!("would pull the image of service {service}"));
    }
    LOG.say(format!(
        "would start service {service} alone (up -d --no-deps --force-recreate) from {}",
        compose.file.display()
    ));
    LOG.say(format!(
        "would watch it for up to {} and fail if its container exits",
        secs(ctx.config.app.start_grace)
    ));
}

/// Pulls (with `app.compose.pull`) and starts the service, records its
/// container for `health` and `stop`, and says so.
fn up_service(
    ctx: &Context,
    target: &Profile,
    compose: &Compose,
    service: &str,
) -> Result<compose::Container> {
    signals::check().context("nothing was changed")?;
    if compose.pull {
        compose::pull(compose, service)?;
        LOG.say(format!("pulled the image of service {service}"));
    }
    signals::check().context("nothing was started")?;
    compose::up(compose, service)?;
    let container = compose::containers(compose, service)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            anyhow!("service {service} was started but no container of it is to be found")
        })?;
    let record = Launched {
        profile: target.name.clone(),
        port: target.port,
        pid: container.pid,
        start_time: start_time(container.pid),
        artifact: PathBuf::from(&container.image),
        artifact_sha256: None,
        command: vec!["up".into(), "-d".into(), service.to_string()],
        log: PathBuf::new(),
        log_offset: 0,
        started_unix_ms: now_unix_ms(),
        deployment_id: ctx.deployment_id.clone(),
        container_id: Some(container.id.clone()),
        image_id: Some(container.image_id.clone()),
        group: None,
        group_start_time: None,
        launcher_pid: None,
    };
    ctx.state
        .write(&ctx.state.launched_path(&target.name), &record)?;
    LOG.say(format!(
        "started service {service} for {} on {}: container {} ({}, image {})",
        target.name,
        target.port,
        compose::short_id(&container.id),
        container.image,
        compose::short_id(&container.image_id)
    ));
    Ok(container)
}

/// Watches the container's first moments: its exit fails the stage with
/// the end of its logs, a published port ends the watch early, and after
/// the grace period `health` takes over.
fn watch_service(
    ctx: &Context,
    target: &Profile,
    compose: &Compose,
    service: &str,
    container: &compose::Container,
) -> Result<()> {
    let config = &ctx.config;
    let port = target.port;
    let mut state = container.clone();
    let settled = wait_for(config.app.start_grace, Duration::from_millis(20), || {
        if let Some(now) = compose::inspect(compose, &container.id) {
            state = now;
        }
        !state.is_running() || !listening(port).map(|l| l.is_free()).unwrap_or(true)
    })
    .with_context(|| {
        format!(
            "service {service} was started and keeps running; `stop --profile {}` stops it",
            target.name
        )
    })?;
    if !state.is_running() {
        return Err(anyhow!(
            "the container of service {service} ({}) is {} (exit code {}) right after it started; {}",
            compose::short_id(&container.id),
            state.status,
            state.exit_code,
            compose::logs_tail(compose, &container.id)
        ));
    }
    match settled {
        Some(t) => LOG.say(format!("port {port} is published after {}", secs(t))),
        None => LOG.say(format!(
            "the container is running after {}; `health` will wait for it to answer",
            secs(config.app.start_grace)
        )),
    }
    Ok(())
}

/// The configured command with `{profile}`, `{port}` and `{artifact}` filled in.
fn command_for(ctx: &Context, target: &Profile, artifact: &Path) -> Vec<String> {
    let port = target.port.to_string();
    let artifact = artifact.to_string_lossy();
    ctx.config
        .app
        .command
        .iter()
        .map(|arg| {
            render(
                arg,
                &[
                    ("profile", &target.name),
                    ("port", &port),
                    ("artifact", &artifact),
                ],
            )
        })
        .collect()
}

/// Starts `argv` in a new session, stdin from /dev/null, stdout and stderr to
/// `log`. The hook's own stdout/stderr are not inherited, so the CodeDeploy
/// agent, which waits for them to close, is not held up by the app.
fn spawn_detached(argv: &[String], dir: &Path, log: &File) -> Result<std::process::Child> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    new_session(&mut command);
    // The app must see `stop`'s SIGTERM: not blocked as it is in this stage.
    signals::for_child(&mut command);
    Ok(command.spawn()?)
}

#[allow(unsafe_code)]
fn new_session(command: &mut Command) {
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls setsid(2), which is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
}

/// Opens the app log for the new run. With `app.log_keep` > 0 the previous
/// runs' log is rotated first (`LOG.1` the newest) and a new one created
/// (O_EXCL), so the book's ever-growing `nohup.out` cannot fill the disk; a
/// log both profiles share is never rotated (the live app writes it). Never
/// through a symlink (see `nonstop_common::sys::files`).
fn open_log(config: &nonstop_common::Config, log_path: &Path) -> Result<File> {
    let rotated = rotates(config, log_path)
        && files::rotate(log_path, config.app.log_keep)
            .with_context(|| format!("cannot rotate the app log {}", log_path.display()))?;
    files::open_append(log_path, rotated)
        .with_context(|| format!("cannot open the app log {}", log_path.display()))
}

/// Whether this start moves the log aside: `app.log_keep` > 0, a log of
/// this profile's own, and something in it.
fn rotates(config: &nonstop_common::Config, log_path: &Path) -> bool {
    let shared = config
        .profiles
        .iter()
        .filter(|p| config.log_path(p) == log_path)
        .count()
        > 1;
    let empty = fs::symlink_metadata(log_path).is_ok_and(|m| m.is_file() && m.len() == 0);
    config.app.log_keep > 0 && !shared && !empty
}

/// Copies the artifact into `APP_DIR/PROFILE/NAME` by way of a temp file and
/// a rename, then removes older artifacts of that profile. Only the idle
/// profile's directory is written to; its process has been stopped.
fn install(app_dir: &Path, target: &Profile, source: &Path, pattern: &str) -> Result<PathBuf> {
    let dir = app_dir.join(&target.name);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = source
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", source.display()))?;
    let dest = dir.join(name);
    // A random temp name created O_EXCL|O_NOFOLLOW: nothing planted in the
    // app dir is written through. The source's permissions are kept, as
    // `fs::copy` did (an artifact may be an executable).
    let (mut file, tmp) = files::create_temp(&dest)
        .map_err(|e| anyhow!("cannot create a temp file in {}: {e}", dir.display()))?;
    let copied = File::open(source)
        .and_then(|mut from| {
            let mode = from.metadata()?.permissions();
            std::io::copy(&mut from, &mut file)?;
            file.set_permissions(mode)
        })
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, &dest));
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!(
            "cannot copy {} to {}: {e}",
            source.display(),
            dest.display()
        ));
    }
    if dir != source.parent().unwrap_or(Path::new("")) {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let old = entry.path();
            let matches = entry
                .file_name()
                .to_str()
                .is_some_and(|n| wildcard_match(pattern, n));
            if matches && old != dest && old.is_file() {
                // An old build of this stopped profile; failing to remove it only costs disk.
                let _ = fs::remove_file(&old);
            }
        }
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_that_exited_is_failed_stopped_or_awaited() {
        // (exited 0, left something running) => what start does
        let table = [
            (false, false, OnExit::Fail),
            (true, false, OnExit::Fail),
            (false, true, OnExit::StopLeftovers),
            (true, true, OnExit::AwaitListener),
        ];
        for (success, left, want) in table {
            assert_eq!(on_exit(success, left), want, "{success} {left}");
        }
    }

    #[test]
    fn a_launchers_leftovers_are_adopted_failed_or_stopped() {
        let app = Proc { pid: 42, start: 7 };
        // (the one listening, the wait ended before its limit) => what start does
        let table = [
            (Some(app), true, AfterWait::Adopt(app)),
            (Some(app), false, AfterWait::Adopt(app)),
            (None, true, AfterWait::AllExited),
            (None, false, AfterWait::StopLeftovers),
        ];
        for (listener, settled, want) in table {
            assert_eq!(
                after_wait(listener, settled),
                want,
                "{listener:?} {settled}"
            );
        }
    }

    #[test]
    fn the_app_log_is_rotated_at_each_start_unless_shared_or_keep_is_0() {
        let dir = std::env::temp_dir().join(format!("nonstop-start-log-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let config = |log: &str, keep: u32| {
            let text = format!(
                r#"{{"app": {{"dir": {:?}, "log": {log:?}, "log_keep": {keep}}}}}"#,
                dir.display().to_string()
            );
            nonstop_common::config::parse(&text, &dir.join("nonstop.json")).unwrap()
        };
        let run = |c: &nonstop_common::Config, path: &Path, line: &str| {
            let mut f = open_log(c, path).unwrap();
            writeln!(f, "{line}").unwrap();
        };
        let own = config("{profile}.log", 2);
        let path = own.log_path(&own.profiles[1]);
        for n in 1..=4 {
            run(&own, &path, &format!("run {n}"));
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "run 4\n");
        assert_eq!(
            fs::read_to_string(dir.join("real2.log.1")).unwrap(),
            "run 3\n"
        );
        assert_eq!(
            fs::read_to_string(dir.join("real2.log.2")).unwrap(),
            "run 2\n"
        );
        assert!(!dir.join("real2.log.3").exists());

        // One log for both profiles: the live app writes it too; appended.
        let shared = config("app.log", 2);
        let path = shared.log_path(&shared.profiles[1]);
        run(&shared, &path, "a");
        run(&shared, &path, "b");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\nb\n");
        assert!(!dir.join("app.log.1").exists());

        // log_keep 0: appended, as the book's nohup.out.
        let append = config("{profile}.log", 0);
        let path = append.log_path(&append.profiles[0]);
        run(&append, &path, "a");
        run(&append, &path, "b");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a\nb\n");
        assert!(!dir.join("real1.log.1").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
