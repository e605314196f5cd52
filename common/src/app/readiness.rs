//! Waiting until a freshly started app answers as its profile, and warming
//! it up before nginx sends it users: what `health` does before the switch.
//!
//! The book's health.sh sleeps 10 s, then tries 10 times 10 s apart and
//! counts any body containing "real" as healthy, so a slow start fails and a
//! wrong app passes. Here the check polls every `health.interval_ms` from
//! the first moment, needs the body to equal `health.expect` (default: the
//! profile's own name), gives up after `health.timeout_secs`, and fails at
//! once when the started process (or container) has died, quoting the end of
//! its log. `health.warmup` then sends the new app requests on its own port.
//!
//! Every line goes through the caller's log (`ctx.log`).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use crate::app::compose;
use crate::app::health_rule;
use crate::state::Launched;
use crate::sys::log::tail_for_message;
use crate::sys::procs::is_same_alive;
use crate::sys::time::secs;
use crate::sys::{http, signals};
use crate::{Context, Profile};

/// The most time a warm-up may take: it delays the switch, and its
/// requests are each bounded by `health.request_timeout_ms` only.
const WARMUP_LIMIT: Duration = crate::config::MAX_WARMUP;

/// How often a still-waiting check says so.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Says what a real run would do: one try of the health rule now, then the
/// switch's steps.
pub fn dry_run(ctx: &Context, target: &Profile, no_switch: bool) -> Result<()> {
    let config = &ctx.config;
    let url = health_rule::health_url(config, target);
    let expect = health_rule::health_words(config, target);
    match health_rule::check_health(config, target) {
        Ok(()) => ctx.log.say(format!("{url} answers {expect} now")),
        Err(why) => ctx
            .log
            .say(format!("{url} does not answer {expect} now ({why})")),
    }
    ctx.log.say(format!(
        "would check {url} every {} for at most {}",
        secs(config.health.interval),
        secs(config.health.timeout)
    ));
    if let Some(w) = &config.health.warmup {
        ctx.log.say(format!(
            "would then send {} warm-up requests to {} on port {}",
            w.requests,
            w.paths.join(", "),
            target.port
        ));
    }
    if no_switch {
        ctx.log.say("would leave nginx as it is (--no-switch)");
    }
    Ok(())
}

/// `health.warmup`: GETs to the paths in turn on the target's own port,
/// once it is healthy, so that a fresh JVM has loaded and compiled its
/// request path before nginx sends it users (measured by the benchmark:
/// the new app's first answers through nginx are several times slower
/// without). Answers that are not 2xx are reported, not fatal: the app
/// passed its health check. Bounded by [`WARMUP_LIMIT`].
pub fn warm_up(ctx: &Context, target: &Profile) -> Result<()> {
    let Some(warmup) = &ctx.config.health.warmup else {
        return Ok(());
    };
    let started = Instant::now();
    let mut sent = 0u32;
    let mut not_ok = 0u32;
    let mut last_problem = String::new();
    for path in warmup.paths.iter().cycle().take(warmup.requests as usize) {
        signals::check()
            .with_context(|| format!("{} was not switched to; nginx is as it was", target.name))?;
        if started.elapsed() >= WARMUP_LIMIT {
            ctx.log.warn(format!(
                "warm-up of {} stopped after {} ({sent} of {} requests sent)",
                target.name,
                secs(WARMUP_LIMIT),
                warmup.requests
            ));
            break;
        }
        let url = format!("http://127.0.0.1:{}{path}", target.port);
        sent += 1;
        match http::get(&url, ctx.config.health.request_timeout) {
            Ok(answer) if answer.is_success() => {}
            Ok(answer) => {
                not_ok += 1;
                last_problem = format!("{url} answered HTTP {}", answer.status);
            }
            Err(why) => {
                not_ok += 1;
                last_problem = format!("{url}: {why}");
            }
        }
    }
    ctx.log.say(format!(
        "warmed up {} with {sent} requests to {} in {}",
        target.name,
        warmup.paths.join(", "),
        secs(started.elapsed())
    ));
    if not_ok > 0 {
        ctx.log.warn(format!(
            "{not_ok} of the {sent} warm-up requests got no 2xx (last: {last_problem})"
        ));
    }
    Ok(())
}

/// Polls the target's health URL until it answers as expected.
pub fn wait_healthy(ctx: &Context, target: &Profile) -> Result<()> {
    let config = &ctx.config;
    let url = health_rule::health_url(config, target);
    let expect = health_rule::health_words(config, target);
    let launched: Option<Launched> = ctx
        .state
        .read::<Launched>(&ctx.state.launched_path(&target.name), &ctx.log)?
        .filter(|l| l.port == target.port);
    ctx.log.say(format!(
        "checking {url} every {} until it answers {} (at most {})",
        secs(config.health.interval),
        expect,
        secs(config.health.timeout)
    ));

    let started = Instant::now();
    let mut next_progress = PROGRESS_EVERY;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let tried_at = Instant::now();
        let last = match health_rule::check_health(config, target) {
            Ok(()) => {
                ctx.log.say(format!(
                    "{} answers {} after {} (attempt {attempt})",
                    target.name,
                    expect,
                    secs(started.elapsed())
                ));
                return Ok(());
            }
            Err(why) => why,
        };
        if let Some(l) = &launched {
            if let Some(died) = died(ctx, target, l, started, &last) {
                return Err(died);
            }
        }
        let elapsed = started.elapsed();
        if elapsed >= config.health.timeout {
            let log_note = launched
                .as_ref()
                .map(|l| match (&l.container_id, compose::of(config)) {
                    (Some(id), Some(compose)) => format!("; {}", compose::logs_tail(compose, id)),
                    _ => format!("; {}", tail_for_message(&l.log, l.log_offset)),
                })
                .unwrap_or_default();
            return Err(anyhow!(
                "{} did not answer {} at {url} within {} ({attempt} attempts; last: {last}){log_note}",
                target.name,
                expect,
                secs(config.health.timeout)
            ));
        }
        if elapsed >= next_progress {
            ctx.log
                .say(format!("attempt {attempt}, {}: {last}", secs(elapsed)));
            next_progress = elapsed + PROGRESS_EVERY;
        }
        let pause = config
            .health
            .interval
            .saturating_sub(tried_at.elapsed())
            .min(config.health.timeout.saturating_sub(started.elapsed()));
        signals::pause(pause)
            .with_context(|| format!("{} was not switched to; nginx is as it was", target.name))?;
    }
}

/// The error that ends the wait at once when what `start` launched for the
/// target has died (or its container exited or restarted), quoting the end
/// of its log; `None` while it still runs.
fn died(
    ctx: &Context,
    target: &Profile,
    l: &Launched,
    started: Instant,
    last: &str,
) -> Option<anyhow::Error> {
    if let Some(compose) = compose::of(&ctx.config) {
        // A container: its main process (pid and start time recorded by
        // `start`) gone means it exited or restarted under a restart
        // policy; only then is the engine asked what became of it.
        let id = l
            .container_id
            .as_ref()
            .filter(|_| !is_same_alive(l.pid, l.start_time))?;
        let how = match compose::inspect(compose, id) {
            Some(c) if c.is_running() => "restarted".to_string(),
            Some(c) => format!("{} (exit code {})", c.status, c.exit_code),
            None => "gone".to_string(),
        };
        return Some(anyhow!(
            "the container {} started for {} is {how} after {} without answering ({last}); {}",
            compose::short_id(id),
            target.name,
            secs(started.elapsed()),
            compose::logs_tail(compose, id)
        ));
    }
    if is_same_alive(l.pid, l.start_time) {
        return None;
    }
    Some(anyhow!(
        "the app started for {} (pid {}) has exited after {} without answering ({last}); {}",
        target.name,
        l.pid,
        secs(started.elapsed()),
        tail_for_message(&l.log, l.log_offset)
    ))
}
