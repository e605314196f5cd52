//! The frame every mutating stage runs in: find and validate the config, open
//! the state directory, take the lock, settle the deployment's plan, run the
//! stage's body, record its outcome.
//!
//! The plan is decided once per deployment (keyed by CodeDeploy's
//! `DEPLOYMENT_ID`) so that `stop`, `start` and `health` agree on the idle
//! profile even though `switch` changes what detection would say. An
//! unfinished plan is also the deployment's lease: a second deployment waits
//! for it (bounded), then fails naming it. Without a deployment id (an
//! operator running one stage by hand) the stage detects afresh.
//!
//! An operator's explicit `--to NAME` / `--profile NAME` does not wait for a
//! deployment none of whose stages runs now (this stage holds the lock): it
//! takes the plan over with a warning, and the abandoned deployment's later
//! stages refuse, naming who took it over (`taken-over.json`). A stage that
//! is running still holds the lock, and that wait stays.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::config::{self, Config, Profile};
use crate::route;
use crate::route::detect;
use crate::route::host::Host;
use crate::state::context::{Context, Slots};
use crate::state::lock::{self, Holder};
use crate::state::{
    Completed, HistoryLine, Owner, Plan, Running, StateDir, TakenOver, COMPLETED_KEPT,
};
use crate::switch::journal;
use crate::sys::error::usage;
use crate::sys::files;
use crate::sys::log::Log;
use crate::sys::procs::boot_id;
use crate::sys::signals;
use crate::sys::time::{now_unix_ms, secs};

/// Options every stage takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Config file [default: nonstop.json beside the executable, then in its parent directory]
    #[arg(long, value_name = "PATH", env = "NONSTOP_CONFIG")]
    pub config: Option<PathBuf>,

    /// The deployment this stage belongs to; stages with the same id share one plan
    #[arg(long, value_name = "ID", env = "DEPLOYMENT_ID")]
    pub deployment_id: Option<String>,

    /// Print what this stage would do, and change nothing (no lock, no state written)
    #[arg(long)]
    pub dry_run: bool,
}

impl CommonArgs {
    /// Finds and validates the config, and checks its waits against the
    /// hook timeouts of the appspec.yml shipped with it (exit 2 on any
    /// problem).
    pub fn load_config(&self) -> Result<Config> {
        let path = config::locate(self.config.as_deref())?;
        let config = config::load(&path)?;
        crate::frame::budget::check_beside(&config).map_err(crate::sys::error::usage)?;
        Ok(config)
    }

    fn deployment_id(&self) -> Result<Option<String>> {
        match self.deployment_id.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(id) if id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic()) => {
                Ok(Some(id.to_string()))
            }
            Some(id) => Err(usage(format!(
                "deployment id {:?} must be 1-128 printable ASCII characters without spaces",
                crate::sys::log::quote_untrusted(id, 40)
            ))),
        }
    }
}

/// Runs `body` inside the frame. Exit codes: whatever `body` returns; the
/// plan is closed (finished) when the body fails or completes the deployment.
///
/// `explicit` is the profile an operator named on the command line
/// (`--profile`, `--to`): with it, a stage goes on when detection fails
/// (probe and include disagree), because that is when an operator needs to
/// point nginx back or start an app by hand.
pub fn run_stage(
    log: Log,
    args: &CommonArgs,
    explicit: Option<&str>,
    body: impl FnOnce(&mut Context) -> Result<()>,
) -> Result<()> {
    let started = Instant::now();
    let config = args.load_config()?;
    if let Some(warning) = crate::app::ports::ephemeral_warning(&config) {
        log.warn(warning);
    }
    let deployment_id = args.deployment_id()?;
    let explicit = explicit
        .map(|name| config.profile_arg(name).cloned())
        .transpose()?;
    check_dirs(&config)?;
    let state = if args.dry_run {
        log.say("dry run: nothing will be changed");
        StateDir::read_only(&config.state_dir)
    } else {
        StateDir::open(&config.state_dir)?
    };
    let Some(mut ctx) = open(log, config, state, deployment_id, explicit.clone())? else {
        // A stage of a deployment that already completed: nothing to do.
        return Ok(());
    };
    ctx.worked_on = explicit;
    let result = body(&mut ctx);
    close(&mut ctx, &result, started.elapsed());
    result
}

/// What `open` does with the plan it finds under the lock: the table below,
/// first matching row wins ("another" = a deployment id that is not ours;
/// "active" = unfinished, its lease not run out, and from this boot).
///
/// | plan found                                          | action            |
/// |-----------------------------------------------------|-------------------|
/// | another's, active, a stage marked running           | TakeOverAbandoned |
/// | another's, active, an operator named a profile      | TakeOverAsAsked   |
/// | another's, active                                   | Wait              |
/// | another's, unfinished, from before a reboot         | GoOnAfterReboot   |
/// | ours, unfinished                                    | Follow            |
/// | none, finished, expired, ...                        | Fresh             |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanAction {
    /// We hold the lock, so the stage named in `running` is not running: it
    /// was killed, and so was its deployment. Take it over, detect afresh.
    TakeOverAbandoned,
    /// An operator named a profile: that wins over a deployment that stopped
    /// between stages. Take it over, detect afresh.
    TakeOverAsAsked,
    /// Another deployment is between its stages: wait for it (bounded).
    Wait,
    /// Another deployment never finished before the machine rebooted:
    /// detect afresh without it.
    GoOnAfterReboot,
    /// This deployment's own plan: follow it.
    Follow,
    /// Nothing in the way: detect afresh.
    Fresh,
}

/// What the plan decision looks at besides the plan itself.
#[derive(Debug, Clone, Copy)]
struct PlanFacts<'a> {
    now_unix_ms: u64,
    boot_id: &'a str,
    /// This stage's `--deployment-id`, if any.
    deployment_id: Option<&'a str>,
    /// Whether an operator named a profile (`--to`, `--profile`).
    explicit: bool,
}

/// The table on [`PlanAction`]; pure, so it is tested row by row.
fn decide_plan(plan: Option<&Plan>, facts: PlanFacts) -> PlanAction {
    let Some(p) = plan else {
        return PlanAction::Fresh;
    };
    let ours = facts.deployment_id == Some(p.deployment_id.as_str());
    let active_other = !ours && p.is_active(facts.now_unix_ms, facts.boot_id);
    if active_other && p.running.is_some() {
        PlanAction::TakeOverAbandoned
    } else if active_other && facts.explicit {
        PlanAction::TakeOverAsAsked
    } else if active_other {
        PlanAction::Wait
    } else if !ours && !p.finished && !p.boot_id.is_empty() && p.boot_id != facts.boot_id {
        PlanAction::GoOnAfterReboot
    } else if ours && !p.finished {
        PlanAction::Follow
    } else {
        PlanAction::Fresh
    }
}

/// What `open` works with while it settles the plan.
struct Opening<'a> {
    config: &'a Config,
    state: &'a StateDir,
    log: &'a Log,
    deployment_id: &'a Option<String>,
    explicit: &'a Option<Profile>,
    me: &'a Holder,
    deadline: Instant,
    dry_run: bool,
}

/// The slots settled on, whether they came from our own plan, and the plan
/// this stage keeps up to date.
type Settled = (Slots, bool, Option<Plan>);

/// Settles the plan under the lock and builds the body's [`Context`];
/// `None` when this stage belongs to a deployment that already completed
/// (said and recorded in the history here): the body must not run.
fn open(
    log: Log,
    config: Config,
    state: StateDir,
    deployment_id: Option<String>,
    explicit: Option<Profile>,
) -> Result<Option<Context>> {
    let dry_run = state.is_read_only();
    let me = Holder {
        pid: std::process::id(),
        stage: log.stage().to_string(),
        deployment_id: deployment_id.clone(),
        since_unix_ms: now_unix_ms(),
        boot_id: boot_id(),
    };
    let o = Opening {
        config: &config,
        state: &state,
        log: &log,
        deployment_id: &deployment_id,
        explicit: &explicit,
        me: &me,
        deadline: Instant::now() + config.lock_timeout,
        dry_run,
    };
    let mut announced = false;
    // Under the lock, settle on the slots: another deployment's active plan
    // makes us wait (bounded), our own plan is followed, else detect afresh.
    let (lock, (slots, from_plan, plan)) = loop {
        let lock = if dry_run {
            None
        } else {
            Some(lock::acquire(&state.lock_path(), &me, o.deadline, &log)?)
        };
        let found = match settle_state(&o)? {
            Settling::Plan(plan) => plan,
            Settling::Completed(done) => {
                say_completed(&o, &done);
                return Ok(None);
            }
        };
        let facts = PlanFacts {
            now_unix_ms: now_unix_ms(),
            boot_id: &me.boot_id,
            deployment_id: deployment_id.as_deref(),
            explicit: explicit.is_some(),
        };
        let action = decide_plan(found.as_ref(), facts);
        if let Some(settled) = act_on_plan(&o, action, found, facts.now_unix_ms, &mut announced)? {
            break (lock, settled);
        }
        drop(lock);
        signals::pause(Duration::from_millis(100))?;
    };
    Ok(Some(Context {
        config,
        log,
        state,
        deployment_id,
        slots,
        from_plan,
        completes_deployment: false,
        ends_plan: false,
        switched_to: None,
        dry_run,
        outcome: None,
        worked_on: None,
        build: None,
        action: None,
        plan,
        _lock: lock,
    }))
}

/// What [`settle_state`] found: the plan to decide on, or that this
/// stage's deployment already completed.
enum Settling {
    Plan(Option<Plan>),
    Completed(Completed),
}

/// The record of this stage's deployment in `completed.json`, if it
/// completed (its switch was confirmed).
fn completed(
    state: &StateDir,
    log: &Log,
    deployment_id: Option<&str>,
) -> Result<Option<Completed>> {
    let Some(id) = deployment_id else {
        return Ok(None);
    };
    let list: Vec<Completed> = state
        .read(&state.completed_path(), log)?
        .unwrap_or_default();
    Ok(list.into_iter().rev().find(|c| c.deployment_id == id))
}

/// A stage of a completed deployment run again (CodeDeploy retrying a hook,
/// an operator re-running one with its DEPLOYMENT_ID): says so, and records
/// the no-op in the history.
fn say_completed(o: &Opening, done: &Completed) {
    let ago = Duration::from_millis(now_unix_ms().saturating_sub(done.at_unix_ms));
    let after = match &done.error {
        Some(e) if done.exit_code != 0 => {
            format!(", then exited {} after the switch: {e}", done.exit_code)
        }
        _ => String::new(),
    };
    let words = format!(
        "deployment {} already completed at {} ({} ago: its `{}` switched nginx to {}{after}): nothing to do. \
         To act outside that deployment, run this stage without DEPLOYMENT_ID and --deployment-id",
        done.deployment_id,
        crate::sys::time::utc(done.at_unix_ms),
        secs(ago),
        done.stage,
        done.live.name
    );
    o.log.say(&words);
    if o.dry_run {
        return;
    }
    let line = HistoryLine {
        at_unix_ms: now_unix_ms(),
        stage: o.log.stage().to_string(),
        deployment_id: Some(done.deployment_id.clone()),
        pid: std::process::id(),
        exit_code: 0,
        message: words,
        elapsed_ms: 0,
        outcome: Some("already-completed".to_string()),
        cut_connections: None,
        ..HistoryLine::default()
    };
    if let Err(e) = o.state.append_history(&line) {
        o.log.warn(format!("{e:#}"));
    }
}

/// Adds the deployment `ctx` completed to `completed.json` (the last
/// [`COMPLETED_KEPT`]). Only a warning when it cannot be written: the switch
/// happened whatever the record says.
fn record_completed(ctx: &Context, exit_code: u8, error: Option<&anyhow::Error>) {
    let Some(id) = ctx.deployment_id.clone() else {
        return;
    };
    let state = &ctx.state;
    let mut list: Vec<Completed> = match state.read(&state.completed_path(), &ctx.log) {
        Ok(list) => list.unwrap_or_default(),
        Err(e) => {
            ctx.log.warn(format!("{e:#}; starting a new list"));
            Vec::new()
        }
    };
    list.retain(|c| c.deployment_id != id);
    list.push(Completed {
        deployment_id: id,
        at_unix_ms: now_unix_ms(),
        stage: ctx.log.stage().to_string(),
        live: ctx
            .switched_to
            .clone()
            .unwrap_or_else(|| ctx.slots.idle.clone()),
        exit_code,
        error: error.map(|e| crate::sys::log::quote_untrusted(&format!("{e:#}"), 400)),
    });
    let drop = list.len().saturating_sub(COMPLETED_KEPT);
    list.drain(..drop);
    if let Err(e) = state.write(&state.completed_path(), &list) {
        ctx.log.warn(format!(
            "{e:#}: a rerun of this deployment's stages will not know it completed"
        ));
    }
}

/// Under the lock: checks the state directory is this app's, settles what a
/// killed switch left (only says so in a dry run), refuses a taken-over
/// deployment, and reads the plan.
fn settle_state(o: &Opening) -> Result<Settling> {
    let (config, state, log) = (o.config, o.state, o.log);
    check_owner(config, state, log)?;
    // Before anything else, a finished switch's journal included: a
    // completed deployment's stage run again changes nothing.
    if let Some(done) = completed(state, log, o.deployment_id.as_deref())? {
        return Ok(Settling::Completed(done));
    }
    if o.dry_run {
        if let Some(repair) = journal::pending_repair(config) {
            log.warn(format!(
                "a real run would first settle it: {}",
                repair.action
            ));
        }
    } else {
        journal::recover(config, state, log)?;
    }
    refuse_if_taken_over(state, log, o.deployment_id.as_deref())?;
    state.read(&state.plan_path(), log).map(Settling::Plan)
}

/// Does what [`decide_plan`] said. `None`: wait and look again.
fn act_on_plan(
    o: &Opening,
    action: PlanAction,
    plan: Option<Plan>,
    now: u64,
    announced: &mut bool,
) -> Result<Option<Settled>> {
    let log = o.log;
    let Some(p) = plan.filter(|_| action != PlanAction::Fresh) else {
        return fresh_settled(o);
    };
    match action {
        PlanAction::TakeOverAbandoned => {
            if let Some(r) = &p.running {
                log.warn(format!(
                    "deployment {} is abandoned: its `{}` (pid {}) was killed half-way; taking over",
                    p.deployment_id, r.stage, r.pid
                ));
            }
            if !o.dry_run {
                take_over(o.state, log, p, o.me, o.explicit.as_ref())?;
            }
            fresh_settled(o)
        }
        PlanAction::TakeOverAsAsked => {
            // We hold the lock, so none of its stages runs (CodeDeploy gave
            // up, someone pressed stop).
            log.warn(format!(
                "deployment {} is unfinished (its last stage was `{}`) and none of its stages is running; \
                 taking it over as asked: its later stages will refuse",
                p.deployment_id, p.last_stage
            ));
            if !o.dry_run {
                take_over(o.state, log, p, o.me, o.explicit.as_ref())?;
            }
            fresh_settled(o)
        }
        PlanAction::Wait => wait_for(o, &p, now, announced).map(|()| None),
        PlanAction::GoOnAfterReboot => {
            log.warn(format!(
                "deployment {} never finished before the machine rebooted (its last stage was `{}`); going on without it",
                p.deployment_id, p.last_stage
            ));
            fresh_settled(o)
        }
        PlanAction::Follow => follow(o, p).map(Some),
        PlanAction::Fresh => fresh_settled(o),
    }
}

/// Another deployment is between its stages: says so once, and gives up
/// naming it at the deadline.
fn wait_for(o: &Opening, p: &Plan, now: u64, announced: &mut bool) -> Result<()> {
    let left = Duration::from_millis(p.expires_unix_ms.saturating_sub(now));
    let what = format!(
        "deployment {} is in progress (its last stage was `{}`; its lease runs out in {})",
        p.deployment_id,
        p.last_stage,
        secs(left)
    );
    if Instant::now() >= o.deadline {
        return Err(anyhow!(
            "{what}; gave up waiting after {}. If that deployment is dead, wait for its lease or remove {}",
            secs(o.config.lock_timeout),
            o.state.plan_path().display()
        ));
    }
    if !*announced {
        o.log.say(format!("waiting: {what}"));
        *announced = true;
    }
    Ok(())
}

/// This deployment's own plan: its slots, with this stage marked running.
fn follow(o: &Opening, mut p: Plan) -> Result<Settled> {
    if let Some(r) = &p.running {
        o.log.warn(format!(
            "the `{}` of this deployment (pid {}) was killed half-way; going on",
            r.stage, r.pid
        ));
    }
    o.log.say(format!(
        "plan of deployment {}: {}",
        p.deployment_id,
        describe(p.live.as_ref(), &p.idle)
    ));
    let slots = Slots {
        live: p.live.clone(),
        idle: p.idle.clone(),
    };
    if !o.dry_run {
        p.running = Some(running(o.me));
        o.state.write(&o.state.plan_path(), &p)?;
    }
    Ok((slots, true, Some(p)))
}

fn fresh_settled(o: &Opening) -> Result<Option<Settled>> {
    let (slots, plan) = fresh(o.config, o.state, o.log, o.deployment_id, o.explicit, o.me)?;
    Ok(Some((slots, false, plan)))
}

/// Detects afresh and, for a deployment, writes its plan (with this stage
/// marked as running). Checks first that the include file can be written,
/// so a deployment that could never switch fails before it stops anything.
fn fresh(
    config: &Config,
    state: &StateDir,
    log: &Log,
    deployment_id: &Option<String>,
    explicit: &Option<Profile>,
    me: &Holder,
) -> Result<(Slots, Option<Plan>)> {
    let detection = match (detect::detect(config), explicit) {
        (Ok(d), _) => d,
        (Err(e), Some(target)) => {
            log.warn(format!("{e:#}; going on with {} as asked", target.name));
            let slots = Slots {
                live: None,
                idle: target.clone(),
            };
            return Ok((slots, None));
        }
        (Err(e), None) => return Err(e),
    };
    for warning in &detection.warnings {
        log.warn(warning);
    }
    log.say(describe(detection.live.as_ref(), &detection.idle));
    let slots = Slots {
        live: detection.live,
        idle: detection.idle,
    };
    if state.is_read_only() {
        return Ok((slots, None));
    }
    if explicit.is_none() {
        // A deployment that could never switch fails before it stops anything.
        route::of(config).check_ready(log)?;
    }
    let Some(id) = deployment_id else {
        return Ok((slots, None));
    };
    let now = now_unix_ms();
    let plan = Plan {
        deployment_id: id.clone(),
        live: slots.live.clone(),
        idle: slots.idle.clone(),
        created_unix_ms: now,
        expires_unix_ms: now + lease(config).as_millis() as u64,
        boot_id: me.boot_id.clone(),
        last_stage: log.stage().to_string(),
        finished: false,
        running: Some(running(me)),
    };
    state.write(&state.plan_path(), &plan)?;
    Ok((slots, Some(plan)))
}

/// A state directory serves one app (`owner.json`: its profiles and
/// `app.dir`): another app's config sharing it would settle that app's
/// switches with its own include and stop its apps. Refused naming both. The
/// same app with another route (a new bundle moved `nginx.include`) takes
/// its state over, with a note. The first stage to use a directory claims it.
fn check_owner(config: &Config, state: &StateDir, log: &Log) -> Result<()> {
    let mine = Owner {
        profiles: config.profiles.clone(),
        app_dir: config.app.dir.clone(),
        route: route::of(config).id(),
    };
    let recorded: Option<Owner> = state.read(&state.owner_path(), log)?;
    match recorded {
        Some(owner) if owner == mine => return Ok(()),
        Some(owner) if !owner.same_app(&mine) => {
            return Err(usage(format!(
                "state directory {} belongs to {}, but this config is {}; refusing to act on another app's state. \
                 Give this app its own `state_dir`, or, if it really is the same app, remove {}",
                state.root().display(),
                owner.describe(),
                mine.describe(),
                state.owner_path().display()
            )))
        }
        Some(owner) => {
            if owner.route != mine.route {
                log.say(format!(
                    "note: this app's route changed from {} to {}; taking over its state directory {}",
                    owner.route,
                    mine.route,
                    state.root().display()
                ));
            }
            if owner.profiles != mine.profiles {
                log.say(format!(
                    "note: this app's profile ports changed from {} to {}; taking over its state directory {}",
                    owner.ports(),
                    mine.ports(),
                    state.root().display()
                ));
            }
        }
        None => {}
    }
    if state.is_read_only() {
        return Ok(());
    }
    state.write(&state.owner_path(), &mine)
}

/// How many taken-over deployments `taken-over.json` remembers.
const TAKEN_OVER_KEPT: usize = 16;

/// Records that `plan`'s deployment was taken over by `me` and closes its
/// plan, so its later stages refuse instead of acting on a plan that is not
/// theirs any more.
fn take_over(
    state: &StateDir,
    log: &Log,
    mut plan: Plan,
    me: &Holder,
    explicit: Option<&Profile>,
) -> Result<()> {
    let by = match explicit {
        Some(p) => format!("{}, an operator's command naming {}", me.name(), p.name),
        None => me.name(),
    };
    let mut list: Vec<TakenOver> = state
        .read(&state.taken_over_path(), log)?
        .unwrap_or_default();
    list.retain(|t: &TakenOver| t.deployment_id != plan.deployment_id);
    list.push(TakenOver {
        deployment_id: plan.deployment_id.clone(),
        by,
        at_unix_ms: now_unix_ms(),
    });
    let drop = list.len().saturating_sub(TAKEN_OVER_KEPT);
    list.drain(..drop);
    state.write(&state.taken_over_path(), &list)?;
    plan.finished = true;
    plan.running = None;
    state.write(&state.plan_path(), &plan)
}

/// A stage of a deployment that was taken over does nothing.
fn refuse_if_taken_over(state: &StateDir, log: &Log, deployment_id: Option<&str>) -> Result<()> {
    let Some(id) = deployment_id else {
        return Ok(());
    };
    let list: Vec<TakenOver> = state
        .read(&state.taken_over_path(), log)?
        .unwrap_or_default();
    match list.iter().find(|t| t.deployment_id == id) {
        Some(t) => {
            let ago = Duration::from_millis(now_unix_ms().saturating_sub(t.at_unix_ms));
            Err(anyhow!(
                "deployment {id} was taken over by {} {} ago; this stage of it does nothing. \
                 Start a new deployment to go on",
                t.by,
                secs(ago)
            ))
        }
        None => Ok(()),
    }
}

fn running(me: &Holder) -> Running {
    Running {
        stage: me.stage.clone(),
        pid: me.pid,
        since_unix_ms: me.since_unix_ms,
    }
}

/// Refuses, before anything is stopped or started, directories nonstop
/// writes in (the state dir, the app dir and its logs' directories, the
/// directory of a route it writes on this host) that someone other than the
/// running user and root could write: a link planted there could make the
/// stage (often root) overwrite any file. See [`files::check_dirs`].
fn check_dirs(config: &Config) -> Result<()> {
    let mut dirs: Vec<(&str, PathBuf)> = vec![
        ("state directory", config.state_dir.clone()),
        ("app directory", config.app.dir.clone()),
    ];
    for p in &config.profiles {
        if let Some(d) = config.log_path(p).parent() {
            dirs.push(("app log's directory", d.to_path_buf()));
        }
    }
    if Host::of(config).is_local() {
        dirs.extend(route::of(config).directory());
    }
    let dirs: Vec<(&str, &std::path::Path)> = dirs.iter().map(|(w, d)| (*w, d.as_path())).collect();
    files::check_dirs(&dirs).map_err(|why| anyhow!("{why}; nothing was changed"))
}

fn describe(live: Option<&Profile>, idle: &Profile) -> String {
    match live {
        Some(l) => format!(
            "live {} ({}), idle {} ({})",
            l.name, l.port, idle.name, idle.port
        ),
        None => format!("nothing live, idle {} ({})", idle.name, idle.port),
    }
}

/// How long a deployment's plan holds off another deployment after its last
/// stage: enough for the remaining stages to run, short enough that a
/// deployment whose hooks were killed does not block the next one for long.
fn lease(config: &Config) -> Duration {
    config.app.stop_timeout
        + config.app.start_grace
        + config.health.timeout
        + config.nginx.confirm_timeout
        + Duration::from_secs(60)
}

fn close(ctx: &mut Context, result: &Result<()>, elapsed: Duration) {
    let exit_code = match result {
        Ok(()) => 0,
        Err(e) => crate::sys::error::exit_code(e),
    };
    let message = match result {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{e:#}"),
    };
    if ctx.dry_run {
        return;
    }
    if ctx.completes_deployment {
        record_completed(ctx, exit_code, result.as_ref().err());
    }
    if let Some(plan) = ctx.plan.as_mut() {
        let now = now_unix_ms();
        plan.running = None;
        plan.last_stage = ctx.log.stage().to_string();
        if result.is_err() || ctx.completes_deployment || ctx.ends_plan {
            plan.finished = true;
        } else {
            plan.expires_unix_ms = now + lease(&ctx.config).as_millis() as u64;
        }
        if let Err(e) = ctx.state.write(&ctx.state.plan_path(), &*plan) {
            ctx.log.warn(format!("{e:#}"));
        }
    }
    let line = HistoryLine {
        at_unix_ms: now_unix_ms(),
        stage: ctx.log.stage().to_string(),
        deployment_id: ctx.deployment_id.clone(),
        pid: std::process::id(),
        exit_code,
        message,
        elapsed_ms: elapsed.as_millis() as u64,
        outcome: ctx.outcome.as_ref().map(|(o, _)| o.clone()),
        cut_connections: ctx.outcome.as_ref().map(|(_, n)| *n),
        from: ctx.slots.live.as_ref().map(|p| p.name.clone()),
        to: Some(
            ctx.switched_to
                .as_ref()
                .unwrap_or(ctx.worked_on.as_ref().unwrap_or(&ctx.slots.idle))
                .name
                .clone(),
        ),
        build: ctx.build.clone(),
        action: ctx.action.map(str::to_string),
    };
    if let Err(e) = ctx.state.append_history(&line) {
        ctx.log.warn(format!("{e:#}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deployment d-1's plan, unfinished, from boot "b", its lease running
    /// until 100; no stage of it running.
    fn plan() -> Plan {
        Plan {
            deployment_id: "d-1".into(),
            live: None,
            idle: Profile {
                name: "real1".into(),
                port: 8081,
            },
            created_unix_ms: 1,
            expires_unix_ms: 100,
            boot_id: "b".into(),
            last_stage: "stop".into(),
            finished: false,
            running: None,
        }
    }

    fn killed_stage() -> Plan {
        Plan {
            running: Some(Running {
                stage: "start".into(),
                pid: 42,
                since_unix_ms: 10,
            }),
            ..plan()
        }
    }

    /// At 50 on boot "b", as deployment `id`, with or without `--to`/`--profile`.
    fn decide(plan: Option<&Plan>, id: Option<&str>, explicit: bool) -> PlanAction {
        decide_plan(
            plan,
            PlanFacts {
                now_unix_ms: 50,
                boot_id: "b",
                deployment_id: id,
                explicit,
            },
        )
    }

    #[test]
    fn another_active_deployment_with_a_stage_marked_running_is_taken_over_as_abandoned() {
        for (id, explicit) in [(Some("d-2"), false), (None, false), (Some("d-2"), true)] {
            assert_eq!(
                decide(Some(&killed_stage()), id, explicit),
                PlanAction::TakeOverAbandoned,
                "{id:?} {explicit}"
            );
        }
    }

    #[test]
    fn another_active_deployment_is_taken_over_when_an_operator_names_a_profile() {
        assert_eq!(
            decide(Some(&plan()), None, true),
            PlanAction::TakeOverAsAsked
        );
        assert_eq!(
            decide(Some(&plan()), Some("d-2"), true),
            PlanAction::TakeOverAsAsked
        );
    }

    #[test]
    fn another_active_deployment_is_waited_for() {
        assert_eq!(decide(Some(&plan()), Some("d-2"), false), PlanAction::Wait);
        assert_eq!(decide(Some(&plan()), None, false), PlanAction::Wait);
    }

    #[test]
    fn another_unfinished_deployment_from_before_a_reboot_is_gone_on_without() {
        let before = Plan {
            boot_id: "a".into(),
            ..killed_stage()
        };
        assert_eq!(
            decide(Some(&before), Some("d-2"), false),
            PlanAction::GoOnAfterReboot
        );
        assert_eq!(
            decide(Some(&before), None, true),
            PlanAction::GoOnAfterReboot
        );
        // A plan that names no boot is not taken for one from another boot.
        let unknown = Plan {
            boot_id: String::new(),
            ..plan()
        };
        assert_eq!(decide(Some(&unknown), None, false), PlanAction::Fresh);
    }

    #[test]
    fn our_own_unfinished_plan_is_followed() {
        for p in [
            plan(),
            killed_stage(),
            Plan {
                expires_unix_ms: 10,
                ..plan()
            },
            Plan {
                boot_id: "a".into(),
                ..plan()
            },
        ] {
            assert_eq!(decide(Some(&p), Some("d-1"), false), PlanAction::Follow);
            assert_eq!(decide(Some(&p), Some("d-1"), true), PlanAction::Follow);
        }
    }

    #[test]
    fn no_plan_a_finished_one_or_an_expired_one_means_detecting_afresh() {
        let finished = Plan {
            finished: true,
            ..killed_stage()
        };
        let expired = Plan {
            expires_unix_ms: 50,
            ..killed_stage()
        };
        for id in [None, Some("d-1"), Some("d-2")] {
            for explicit in [false, true] {
                assert_eq!(decide(None, id, explicit), PlanAction::Fresh);
                assert_eq!(decide(Some(&finished), id, explicit), PlanAction::Fresh);
            }
        }
        assert_eq!(
            decide(Some(&expired), Some("d-2"), false),
            PlanAction::Fresh
        );
        assert_eq!(decide(Some(&expired), None, true), PlanAction::Fresh);
    }
}
