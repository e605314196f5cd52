//! The benchmark's figures: from the raw moments a deployment was watched
//! at, and the request samples, to per-deployment figures, medians against
//! the goals, and the Markdown that goes into the README.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::load::{Kind, Outcome, Sample};
use crate::startup::BinaryFigures;
use crate::Args;

/// One stage run, as moments since the load began.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub begin: Duration,
    pub end: Duration,
}

/// What was watched during one deployment (moments since the load began).
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub from: String,
    pub to: String,
    pub stages: Vec<Stage>,
    /// When the app `stop` stopped had exited, if one ran.
    pub old_app_exit: Option<Duration>,
    /// When the new app first answered `/profile` on its own port.
    pub first_answer: Duration,
    /// From `start` spawning it to that first answer.
    pub app_startup: Duration,
    /// The include file's (or the symlink's) mtime; none in upstream-pair mode.
    pub include_written: Option<Duration>,
    /// When `switch` said it had confirmed through nginx.
    pub confirmed: Option<Duration>,
    /// When `start` spawned the app (its `started_unix_ms`).
    pub spawned: Duration,
    /// When the app retired by `switch` exited, if one was.
    pub retired_exit: Option<Duration>,
    /// The most fds any stage of the deployment held open at once.
    pub peak_fds: usize,
}

/// The overhead to the switch's confirmation, piece by piece (seconds):
/// `profile` + `stop` + `start` up to the spawn + `health` after the first
/// answer + `switch` up to the include written + from there to the
/// confirmation. (`start` after the spawn and `health` before the first
/// answer are the app's own start-up.)
#[derive(Debug, Clone, Default, Serialize)]
pub struct Breakdown {
    pub profile_s: f64,
    pub stop_s: f64,
    /// Of `stop`: the old app's own shutdown.
    pub old_app_shutdown_s: f64,
    pub start_until_spawn_s: f64,
    pub health_after_answer_s: f64,
    pub switch_until_written_s: f64,
    pub written_until_confirmed_s: f64,
}

/// Latency of a set of requests, in ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests that took over 100 ms.
    pub over_100ms: usize,
}

impl Latency {
    pub fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Latency {
        let mut ms: Vec<f64> = samples
            .filter(|x| x.served_by().is_some())
            .map(|x| x.latency.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let q = |f: f64| {
            if ms.is_empty() {
                0.0
            } else {
                ms[((ms.len() - 1) as f64 * f).round() as usize]
            }
        };
        Latency {
            requests: ms.len(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
            over_100ms: ms.iter().filter(|&&x| x > 100.0).count(),
        }
    }
}

/// A stage in the output, in seconds since the load began.
#[derive(Debug, Clone, Serialize)]
pub struct StageFigures {
    pub name: String,
    pub begin_s: f64,
    pub end_s: f64,
    pub secs: f64,
}

/// The slow request sent just before the switch.
#[derive(Debug, Clone, Serialize)]
pub struct SlowFigures {
    pub status: Option<u16>,
    pub answered_by: Option<String>,
    pub error: Option<String>,
    pub secs: f64,
    pub ok: bool,
}

/// One deployment's figures. Durations in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct DeploymentFigures {
    pub id: String,
    pub from: String,
    pub to: String,
    pub stages: Vec<StageFigures>,
    /// Sum of the five stages' run times.
    pub wall_s: f64,
    /// From spawn to the first right answer on its port.
    pub app_startup_s: f64,
    /// wall − app start-up.
    pub overhead_s: f64,
    /// From `stop` beginning to the old app's exit: the app's own shutdown.
    pub old_app_shutdown_s: Option<f64>,
    /// From the old app's exit to `stop` returning.
    pub stop_after_exit_s: Option<f64>,
    /// From the new app's first answer to `health` returning.
    pub health_notice_s: f64,
    pub include_written_s: Option<f64>,
    /// From the include written to `switch` saying it confirmed through nginx.
    pub switch_confirmed_s: Option<f64>,
    /// From the include written (upstream pair: from `switch` beginning) to
    /// the first request after which every answer came from the new profile.
    pub only_new_after_s: Option<f64>,
    /// The stages' time up to the switch's confirmation (without the
    /// retiring that `switch` does after it) − app start-up.
    pub overhead_confirmed_s: f64,
    /// That, less the old app's own shutdown that `stop` waited for: what
    /// nonstop and nginx add where `stop` has nothing to wait for.
    pub overhead_own_s: f64,
    /// From the confirmation to `switch` returning: retiring the previous app.
    pub retire_s: Option<f64>,
    /// From `switch` beginning to the retired app's exit.
    pub retired_exit_s: Option<f64>,
    /// When traffic moved: the first request through nginx answered by the
    /// new profile (seconds since the load began).
    pub moved_s: Option<f64>,
    /// Requests sent in the steady stretch before the deployment began.
    pub latency_before: Latency,
    /// Requests sent in the second after traffic moved.
    pub latency_after: Latency,
    /// latency_after.p99 / latency_before.p99.
    pub p99_ratio: Option<f64>,
    /// The slowest of the new app's first 10 answers through nginx (ms):
    /// a fresh JVM's cold start shows here.
    pub new_app_first10_max_ms: Option<f64>,
    /// Requests that failed: an error answer or a failed new connection.
    pub failed: usize,
    pub post_requests: usize,
    pub post_failed: usize,
    /// Kept-alive connections nginx closed under their client: a request
    /// written onto one read EOF (nginx's `keepalive_requests` limit, which
    /// announces its close with `Connection: close`, is not counted).
    pub keepalive_closed: usize,
    pub peak_fds: usize,
    /// Where the overhead to the confirmation goes.
    pub breakdown: Breakdown,
    pub requests: usize,
    pub served: usize,
    pub status_5xx: usize,
    /// Answers other than 2xx and 5xx.
    pub status_other: usize,
    pub connection_errors: usize,
    pub keepalive_read_errors: usize,
    pub slow: SlowFigures,
    /// The stretch of time whose requests count for this deployment.
    pub window_s: (f64, f64),
}

impl DeploymentFigures {
    pub fn stage(&self, name: &str) -> Option<f64> {
        self.stages.iter().find(|s| s.name == name).map(|s| s.secs)
    }
}

fn s(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Turns the watched moments, the samples and the slow requests (one per
/// deployment, `None` if it was lost) into figures.
pub fn analyse(
    deployments: &[Deployment],
    samples: &[Sample],
    slow: &[Option<Sample>],
) -> Vec<DeploymentFigures> {
    let end_of_run = samples.last().map(|x| x.at).unwrap_or_default();
    // When traffic moved in each deployment, for the next one's baseline.
    let previous_moved: Vec<Option<Duration>> = deployments
        .iter()
        .map(|d| {
            let begin = d.stages.first().map(|x| x.begin).unwrap_or_default();
            samples
                .iter()
                .find(|x| x.at >= begin && x.served_by() == Some(d.to.as_str()))
                .map(|x| x.at)
        })
        .collect();
    deployments
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let begin = d.stages.first().map(|x| x.begin).unwrap_or_default();
            let end = deployments
                .get(i + 1)
                .and_then(|n| n.stages.first())
                .map(|x| x.begin)
                .unwrap_or(end_of_run + Duration::from_millis(1));
            // The steady stretch: up to 1.5 s before the deployment began,
            // and not within the second after the previous switch.
            let steady_from = begin.saturating_sub(Duration::from_millis(1500)).max(
                i.checked_sub(1)
                    .and_then(|p| previous_moved.get(p).copied().flatten())
                    .map(|m| m + Duration::from_secs(1))
                    .unwrap_or_default(),
            );
            let slow = slow_figures(slow.get(i).cloned().flatten(), &d.from);
            figures_of(d, samples, (begin, end), steady_from, slow)
        })
        .collect()
}

/// One deployment's figures, from the requests sent in its window
/// `begin..end` and, for the baseline, those from `steady_from` to `begin`.
fn figures_of(
    d: &Deployment,
    samples: &[Sample],
    (begin, end): (Duration, Duration),
    steady_from: Duration,
    slow: SlowFigures,
) -> DeploymentFigures {
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.at >= begin && x.at < end && x.kind != Kind::Slow)
        .collect();
    let stage = |name: &str| d.stages.iter().find(|x| x.name == name);
    let wall: f64 = d.stages.iter().map(|x| s(x.end - x.begin)).sum();
    let stop = stage("stop");
    let switch_end = stage("switch").map(|x| x.end).unwrap_or_default();
    let switch_begin = stage("switch").map(|x| x.begin).unwrap_or_default();
    let reference = d.include_written.unwrap_or(switch_begin);
    let moves = Moves::of(d, &during, samples, (steady_from, begin));
    let confirmed = d.confirmed.unwrap_or(switch_end);
    let to_confirmed: f64 = d
        .stages
        .iter()
        .map(|x| {
            if x.name == "switch" {
                s(confirmed) - s(x.begin)
            } else {
                s(x.end - x.begin)
            }
        })
        .sum();
    let old_shutdown = match (stop, d.old_app_exit) {
        (Some(st), Some(exit)) => s(exit) - s(st.begin),
        _ => 0.0,
    };
    let counts = Counts::of(&during);
    DeploymentFigures {
        id: d.id.clone(),
        from: d.from.clone(),
        to: d.to.clone(),
        stages: d.stages.iter().map(StageFigures::of).collect(),
        wall_s: wall,
        app_startup_s: s(d.app_startup),
        overhead_s: wall - s(d.app_startup),
        old_app_shutdown_s: match (stop, d.old_app_exit) {
            (Some(st), Some(exit)) => Some(s(exit) - s(st.begin)),
            _ => None,
        },
        stop_after_exit_s: match (stop, d.old_app_exit) {
            (Some(st), Some(exit)) => Some(s(st.end) - s(exit)),
            _ => None,
        },
        health_notice_s: s(health_end(d)) - s(d.first_answer),
        include_written_s: d.include_written.map(s),
        switch_confirmed_s: d.include_written.map(|w| s(confirmed) - s(w)),
        only_new_after_s: only_new_after(d, &during, reference),
        overhead_confirmed_s: to_confirmed - s(d.app_startup),
        overhead_own_s: to_confirmed - s(d.app_startup) - old_shutdown,
        retire_s: d.retired_exit.map(|_| s(switch_end) - s(confirmed)),
        retired_exit_s: d.retired_exit.map(|e| s(e) - s(switch_begin)),
        moved_s: moves.moved.map(s),
        latency_before: moves.before,
        latency_after: moves.after,
        p99_ratio: moves.p99_ratio,
        new_app_first10_max_ms: moves.first10,
        failed: counts.failed,
        post_requests: counts.post_requests,
        post_failed: counts.post_failed,
        keepalive_closed: counts.keepalive_closed,
        peak_fds: d.peak_fds,
        breakdown: breakdown(d, old_shutdown, confirmed),
        requests: during.len(),
        served: counts.served,
        status_5xx: counts.status_5xx,
        status_other: counts.status_other,
        connection_errors: counts.connection_errors,
        keepalive_read_errors: counts.keepalive_closed,
        slow,
        window_s: (s(begin), s(end)),
    }
}

impl StageFigures {
    fn of(x: &Stage) -> StageFigures {
        StageFigures {
            name: x.name.clone(),
            begin_s: s(x.begin),
            end_s: s(x.end),
            secs: s(x.end - x.begin),
        }
    }
}

/// When `health` returned (zero if it did not run).
fn health_end(d: &Deployment) -> Duration {
    d.stages
        .iter()
        .find(|x| x.name == "health")
        .map(|x| x.end)
        .unwrap_or_default()
}

/// From `reference` to the first request after which every answer came from
/// the new profile: after the last request the old profile answered.
fn only_new_after(d: &Deployment, during: &[&Sample], reference: Duration) -> Option<f64> {
    let last_old = during
        .iter()
        .rposition(|x| x.served_by() == Some(d.from.as_str()));
    match last_old {
        Some(k) => during[k + 1..]
            .iter()
            .find(|x| x.served_by() == Some(d.to.as_str()))
            .map(|x| s(x.at) - s(reference)),
        None => None,
    }
}

/// Traffic moving to the new app, and latency around it.
struct Moves {
    /// The first request nginx gave the new app.
    moved: Option<Duration>,
    before: Latency,
    after: Latency,
    p99_ratio: Option<f64>,
    first10: Option<f64>,
}

impl Moves {
    /// From the deployment's requests (`during`) and, for the steady
    /// stretch `from..to` before it, all of the run's.
    fn of(
        d: &Deployment,
        during: &[&Sample],
        samples: &[Sample],
        (steady_from, begin): (Duration, Duration),
    ) -> Moves {
        // Traffic moved with the first request nginx gave the new app.
        let new_answers: Vec<&&Sample> = during
            .iter()
            .filter(|x| x.served_by() == Some(d.to.as_str()))
            .collect();
        let moved = new_answers.first().map(|x| x.at);
        let after = match moved {
            Some(m) => Latency::of(
                during
                    .iter()
                    .copied()
                    .filter(|x| x.at >= m && x.at < m + Duration::from_secs(1)),
            ),
            None => Latency::default(),
        };
        let before = Latency::of(
            samples
                .iter()
                .filter(|x| x.at >= steady_from && x.at < begin && x.kind != Kind::Slow),
        );
        let p99_ratio =
            (before.p99_ms > 0.0 && after.requests > 0).then(|| after.p99_ms / before.p99_ms);
        let first10 = new_answers
            .iter()
            .take(10)
            .map(|x| x.latency.as_secs_f64() * 1000.0)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        Moves {
            moved,
            before,
            after,
            p99_ratio,
            first10,
        }
    }
}

/// The slow request's outcome; `ok` if the old profile (`from`) answered it.
fn slow_figures(slow: Option<Sample>, from: &str) -> SlowFigures {
    match slow {
        Some(x) => SlowFigures {
            status: x.status(),
            answered_by: x.served_by().map(str::to_string),
            error: match &x.outcome {
                Outcome::ConnectionError(e) | Outcome::KeepAliveReadError(e) => Some(e.clone()),
                Outcome::Answered { .. } => None,
            },
            secs: s(x.latency),
            ok: x.served_by() == Some(from),
        },
        None => SlowFigures {
            status: None,
            answered_by: None,
            error: Some("not sent".into()),
            secs: 0.0,
            ok: false,
        },
    }
}

/// Where the overhead to the switch's `confirmed` moment goes.
fn breakdown(d: &Deployment, old_shutdown: f64, confirmed: Duration) -> Breakdown {
    let stage = |name: &str| d.stages.iter().find(|x| x.name == name);
    let switch_begin = stage("switch").map(|x| x.begin).unwrap_or_default();
    Breakdown {
        profile_s: stage("profile").map(|x| s(x.end - x.begin)).unwrap_or(0.0),
        stop_s: stage("stop").map(|x| s(x.end - x.begin)).unwrap_or(0.0),
        old_app_shutdown_s: old_shutdown,
        start_until_spawn_s: stage("start")
            .map(|x| s(d.spawned) - s(x.begin))
            .unwrap_or(0.0),
        health_after_answer_s: s(health_end(d)) - s(d.first_answer),
        switch_until_written_s: d
            .include_written
            .map(|w| s(w) - s(switch_begin))
            .unwrap_or(0.0),
        written_until_confirmed_s: s(confirmed)
            - d.include_written.map(s).unwrap_or(s(switch_begin)),
    }
}

/// How the requests of a deployment's window went.
struct Counts {
    failed: usize,
    post_requests: usize,
    post_failed: usize,
    /// Requests written onto a kept-alive connection that read EOF.
    keepalive_closed: usize,
    served: usize,
    status_5xx: usize,
    status_other: usize,
    connection_errors: usize,
}

impl Counts {
    fn of(during: &[&Sample]) -> Counts {
        let count = |f: &dyn Fn(&Sample) -> bool| during.iter().filter(|x| f(x)).count();
        Counts {
            failed: count(&|x| x.failed()),
            post_requests: count(&|x| x.post),
            post_failed: count(&|x| x.post && (x.failed() || x.post_lost())),
            keepalive_closed: count(&|x| matches!(x.outcome, Outcome::KeepAliveReadError(_))),
            served: count(&|x| x.served_by().is_some()),
            status_5xx: count(&|x| x.status().is_some_and(|c| c >= 500)),
            status_other: count(&|x| {
                x.status()
                    .is_some_and(|c| !(200..300).contains(&c) && c < 500)
            }),
            connection_errors: count(&|x| matches!(x.outcome, Outcome::ConnectionError(_))),
        }
    }
}

/// Medians over the deployments and totals over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub deployments: usize,
    pub median_wall_s: f64,
    pub median_app_startup_s: f64,
    pub median_overhead_s: f64,
    pub median_overhead_confirmed_s: f64,
    pub median_overhead_own_s: f64,
    pub median_stop_s: f64,
    pub median_start_s: f64,
    pub median_health_s: f64,
    pub median_switch_s: f64,
    pub median_profile_s: f64,
    pub median_old_app_shutdown_s: Option<f64>,
    /// `stop` over the deployments that had an old app to stop.
    pub median_stop_with_app_s: Option<f64>,
    pub median_stop_after_exit_s: Option<f64>,
    pub median_health_notice_s: f64,
    pub median_switch_confirmed_s: Option<f64>,
    pub median_only_new_after_s: Option<f64>,
    pub median_retire_s: Option<f64>,
    pub median_before: Latency,
    pub median_after: Latency,
    pub median_p99_ratio: Option<f64>,
    pub median_new_app_first10_max_ms: Option<f64>,
    /// Requests over 100 ms in the second after a switch, all deployments.
    pub after_over_100ms: usize,
    /// And in the steady stretches before them.
    pub before_over_100ms: usize,
    pub median_keepalive_closed: f64,
    pub median_breakdown: Breakdown,
    /// Every request of the run, deployments or not.
    pub requests: usize,
    pub status_5xx: usize,
    pub status_other: usize,
    pub connection_errors: usize,
    pub keepalive_read_errors: usize,
    pub failed: usize,
    pub post_requests: usize,
    pub post_failed: usize,
    pub slow_failed: usize,
}

impl Summary {
    /// Nothing dropped: no 5xx or other error answer, no failed new
    /// connection, every slow request answered by the old profile. A POST
    /// lost on a kept-alive connection nginx closed at its reload is counted
    /// (`post_failed`) but does not fail the run: no deployment tool can
    /// prevent it in the modes that reload nginx; the modes table shows it.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.slow_failed == 0
    }
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn median_latency(all: &[&Latency]) -> Latency {
    let m = |f: &dyn Fn(&Latency) -> f64| median(all.iter().map(|l| f(l)).collect()).unwrap_or(0.0);
    Latency {
        requests: all.iter().map(|l| l.requests).sum(),
        p50_ms: m(&|l| l.p50_ms),
        p99_ms: m(&|l| l.p99_ms),
        max_ms: m(&|l| l.max_ms),
        over_100ms: all.iter().map(|l| l.over_100ms).sum(),
    }
}

pub fn summarise(results: &[DeploymentFigures], samples: &[Sample]) -> Summary {
    let m = |f: &dyn Fn(&DeploymentFigures) -> Option<f64>| {
        median(results.iter().filter_map(f).collect())
    };
    let z = |x: Option<f64>| x.unwrap_or(0.0);
    let count = |f: &dyn Fn(&Sample) -> bool| samples.iter().filter(|x| f(x)).count();
    let befores: Vec<&Latency> = results.iter().map(|d| &d.latency_before).collect();
    let afters: Vec<&Latency> = results.iter().map(|d| &d.latency_after).collect();
    Summary {
        deployments: results.len(),
        median_wall_s: z(m(&|d| Some(d.wall_s))),
        median_app_startup_s: z(m(&|d| Some(d.app_startup_s))),
        median_overhead_s: z(m(&|d| Some(d.overhead_s))),
        median_overhead_confirmed_s: z(m(&|d| Some(d.overhead_confirmed_s))),
        median_overhead_own_s: z(m(&|d| Some(d.overhead_own_s))),
        median_stop_s: z(m(&|d| d.stage("stop"))),
        median_start_s: z(m(&|d| d.stage("start"))),
        median_health_s: z(m(&|d| d.stage("health"))),
        median_switch_s: z(m(&|d| d.stage("switch"))),
        median_profile_s: z(m(&|d| d.stage("profile"))),
        median_old_app_shutdown_s: m(&|d| d.old_app_shutdown_s),
        median_stop_with_app_s: m(&|d| d.old_app_shutdown_s.and(d.stage("stop"))),
        median_stop_after_exit_s: m(&|d| d.stop_after_exit_s),
        median_health_notice_s: z(m(&|d| Some(d.health_notice_s))),
        median_switch_confirmed_s: m(&|d| d.switch_confirmed_s),
        median_only_new_after_s: m(&|d| d.only_new_after_s),
        median_retire_s: m(&|d| d.retire_s),
        median_before: median_latency(&befores),
        median_after: median_latency(&afters),
        median_p99_ratio: m(&|d| d.p99_ratio),
        median_new_app_first10_max_ms: m(&|d| d.new_app_first10_max_ms),
        after_over_100ms: afters.iter().map(|l| l.over_100ms).sum(),
        before_over_100ms: befores.iter().map(|l| l.over_100ms).sum(),
        median_keepalive_closed: z(m(&|d| Some(d.keepalive_closed as f64))),
        median_breakdown: Breakdown {
            profile_s: z(m(&|d| Some(d.breakdown.profile_s))),
            stop_s: z(m(&|d| Some(d.breakdown.stop_s))),
            old_app_shutdown_s: z(m(&|d| Some(d.breakdown.old_app_shutdown_s))),
            start_until_spawn_s: z(m(&|d| Some(d.breakdown.start_until_spawn_s))),
            health_after_answer_s: z(m(&|d| Some(d.breakdown.health_after_answer_s))),
            switch_until_written_s: z(m(&|d| Some(d.breakdown.switch_until_written_s))),
            written_until_confirmed_s: z(m(&|d| Some(d.breakdown.written_until_confirmed_s))),
        },
        requests: samples.len(),
        status_5xx: count(&|x| x.status().is_some_and(|c| c >= 500)),
        status_other: count(&|x| {
            x.status()
                .is_some_and(|c| !(200..300).contains(&c) && c < 500)
        }),
        connection_errors: count(&|x| matches!(x.outcome, Outcome::ConnectionError(_))),
        keepalive_read_errors: count(&|x| matches!(x.outcome, Outcome::KeepAliveReadError(_))),
        failed: count(&|x| x.kind != Kind::Slow && x.failed()),
        post_requests: count(&|x| x.post),
        post_failed: count(&|x| x.post && (x.failed() || x.post_lost())),
        slow_failed: results.iter().filter(|d| !d.slow.ok).count(),
    }
}

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub os: String,
    pub kernel: String,
    pub nginx: String,
    pub java: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into());
    let version_of = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stderr).into_owned()
                    + &String::from_utf8_lossy(&o.stdout);
                text.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_else(|| "unknown".into())
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        os,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        nginx: version_of(&tests::Nginx::binary(), "-v"),
        java: version_of("java", "-version"),
    }
}

fn ms(x: f64) -> String {
    format!("{:.0} ms", x * 1000.0)
}

fn opt_ms(x: Option<f64>) -> String {
    x.map(ms).unwrap_or_else(|| "–".into())
}

fn secs(x: f64) -> String {
    format!("{x:.2} s")
}

/// "1.23" or "–".
fn ratio(x: Option<f64>) -> String {
    x.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into())
}

/// "p50 / p99 / max" in ms.
fn lat(l: &Latency) -> String {
    format!("{:.1} / {:.1} / {:.1}", l.p50_ms, l.p99_ms, l.max_ms)
}

/// The load, in words.
pub const LOAD_WORDS: &str = "2 clients on new connections + 2 on kept-alive ones sending GETs, 1 of each sending POSTs, 5 ms apart";

/// The per-deployment tables (stages; latency around the switch).
pub fn deployment_tables(out: &mut String, results: &[DeploymentFigures]) {
    let _ = writeln!(
        out,
        "| deployment | from → to | profile | stop | start | health | switch | total | app start-up | overhead | overhead to confirmed | health notices | stop after exit | switch confirmed | only new after | requests | failed | POSTs failed | keep-alive closed | slow request |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(20));
    for d in results {
        let st = |n: &str| d.stage(n).map(secs).unwrap_or_else(|| "–".into());
        let slow = match (&d.slow.answered_by, d.slow.ok) {
            (Some(p), true) => format!("200 from {p} in {}", secs(d.slow.secs)),
            (None, false) if d.slow.error.as_deref() == Some("not sent") => "–".into(),
            _ => format!(
                "FAILED ({})",
                d.slow
                    .error
                    .clone()
                    .or(d.slow.status.map(|c| format!("HTTP {c}")))
                    .unwrap_or_default()
            ),
        };
        let _ = writeln!(
            out,
            "| {} | {} → {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.id,
            d.from,
            d.to,
            st("profile"),
            st("stop"),
            st("start"),
            st("health"),
            st("switch"),
            secs(d.wall_s),
            secs(d.app_startup_s),
            ms(d.overhead_s),
            ms(d.overhead_confirmed_s),
            ms(d.health_notice_s),
            opt_ms(d.stop_after_exit_s),
            opt_ms(d.switch_confirmed_s),
            opt_ms(d.only_new_after_s),
            d.requests,
            d.failed,
            d.post_failed,
            d.keepalive_closed,
            slow
        );
    }
    let _ = writeln!(
        out,
        "\nLatency through nginx (ms, p50 / p99 / max of the requests that got a 2xx) in the steady stretch before each deployment began and in the second after traffic moved (the first request the new app answered):\n"
    );
    let _ = writeln!(
        out,
        "| deployment | before | after | p99 ratio | over 100 ms after (before) | new app's first 10 answers, slowest |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for d in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} ({}) | {} |",
            d.id,
            lat(&d.latency_before),
            lat(&d.latency_after),
            ratio(d.p99_ratio),
            d.latency_after.over_100ms,
            d.latency_before.over_100ms,
            d.new_app_first10_max_ms
                .map(|x| format!("{x:.1} ms"))
                .unwrap_or_else(|| "–".into())
        );
    }
}

/// The tables: per deployment, the goals, the binaries.
pub fn markdown(
    machine: &Machine,
    args: &Args,
    results: &[DeploymentFigures],
    summary: &Summary,
    binaries: &[BinaryFigures],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {} × {}, {}, kernel {}, {}, {}. Demo app start-up delay {} ms; a {} ms request in flight at each switch; retire {}; load: {LOAD_WORDS}.{}\n",
        machine.cores, machine.cpu, machine.os, machine.kernel, machine.nginx, machine.java,
        args.startup_ms, args.slow_ms,
        if args.retire { "on" } else { "off" },
        if args.warmup_requests > 0 {
            format!(" `health.warmup`: {} GETs of / to the new app's port before each switch.", args.warmup_requests)
        } else {
            String::new()
        }
    );
    deployment_tables(&mut out, results);
    goals_table(&mut out, summary, binaries);
    where_the_time_goes(&mut out, summary);
    binaries_table(&mut out, binaries);
    out
}

/// The goals, each with what was measured and whether it was met.
fn goals(summary: &Summary, binaries: &[BinaryFigures]) -> Vec<(&'static str, String, bool)> {
    let worst_start = binaries
        .iter()
        .filter(|b| b.command.ends_with("--help"))
        .map(|b| b.median_ms)
        .fold(0.0, f64::max);
    vec![
        (
            "0 failed requests, 0 failed slow requests",
            format!(
                "{} failed ({} 5xx, {} other errors, {} connection errors), {} failed slow requests ({} requests); POSTs lost on a kept-alive connection nginx closed: {} of {}",
                summary.failed,
                summary.status_5xx,
                summary.status_other,
                summary.connection_errors,
                summary.slow_failed,
                summary.requests,
                summary.post_failed,
                summary.post_requests,
            ),
            summary.clean(),
        ),
        (
            "overhead ≤ 0.25 s where `stop` has nothing to wait for",
            format!(
                "{} (to the switch's confirmation, less the old app's own shutdown, median {}; hook time − start-up: {})",
                ms(summary.median_overhead_own_s),
                opt_ms(summary.median_old_app_shutdown_s),
                ms(summary.median_overhead_s),
            ),
            summary.median_overhead_own_s <= 0.25,
        ),
        (
            "p99 in the second after the switch ≤ 1.5 × steady p99",
            format!(
                "{} (p99 {:.1} ms after, {:.1} ms before)",
                ratio(summary.median_p99_ratio),
                summary.median_after.p99_ms,
                summary.median_before.p99_ms
            ),
            summary.median_p99_ratio.is_some_and(|r| r <= 1.5),
        ),
        (
            "no request over 100 ms caused by the switch",
            format!(
                "{} over 100 ms in the seconds after the switches, {} in the steady stretches",
                summary.after_over_100ms, summary.before_over_100ms
            ),
            summary.after_over_100ms <= summary.before_over_100ms,
        ),
        (
            "health notices ≤ 0.25 s after the first answer",
            ms(summary.median_health_notice_s),
            summary.median_health_notice_s <= 0.25,
        ),
        (
            "`stop` returns ≤ 0.1 s after the app exits",
            opt_ms(summary.median_stop_after_exit_s),
            summary.median_stop_after_exit_s.is_none_or(|x| x <= 0.1),
        ),
        (
            "switch confirmed ≤ 0.2 s after the include is written",
            opt_ms(summary.median_switch_confirmed_s),
            summary.median_switch_confirmed_s.is_none_or(|x| x <= 0.2),
        ),
        (
            "each binary starts in ≤ 5 ms",
            format!("{worst_start:.1} ms (slowest median of `--help`)"),
            worst_start <= 5.0,
        ),
    ]
}

/// The medians against the goals.
fn goals_table(out: &mut String, summary: &Summary, binaries: &[BinaryFigures]) {
    let _ = writeln!(
        out,
        "\nMedians of {} deployments (kept-alive connections closed under their client: {} per deployment; {} GETs on them a client retries):\n",
        summary.deployments, summary.median_keepalive_closed, summary.keepalive_read_errors.saturating_sub(summary.post_failed)
    );
    let _ = writeln!(out, "| goal | measured | met |");
    let _ = writeln!(out, "|---|---|---|");
    for (goal, measured, met) in goals(summary, binaries) {
        let _ = writeln!(
            out,
            "| {goal} | {measured} | {} |",
            if met { "yes" } else { "**no**" }
        );
    }
}

/// The overhead piece by piece, and the stages' medians, in words.
fn where_the_time_goes(out: &mut String, summary: &Summary) {
    let b = &summary.median_breakdown;
    let _ = writeln!(
        out,
        "\nThe overhead to the confirmation, piece by piece (medians): profile {}, stop {} (of which the old app's own shutdown {}), start until it spawned the app {}, health after the app's first answer {}, switch until the include was written {}, from there until confirmed through nginx {}.",
        ms(b.profile_s),
        ms(b.stop_s),
        ms(b.old_app_shutdown_s),
        ms(b.start_until_spawn_s),
        ms(b.health_after_answer_s),
        ms(b.switch_until_written_s),
        ms(b.written_until_confirmed_s),
    );
    let _ = writeln!(
        out,
        "\nWhere the time goes (medians): profile {}, stop {} (when it stopped an app: {}, of which the app's own shutdown {}), start {}, health {}, switch {} (of which retiring the previous app {}); app start-up {}; only the new profile answers {} after the include is written; the new app's slowest of its first 10 answers {}.",
        ms(summary.median_profile_s),
        ms(summary.median_stop_s),
        opt_ms(summary.median_stop_with_app_s),
        opt_ms(summary.median_old_app_shutdown_s),
        ms(summary.median_start_s),
        ms(summary.median_health_s),
        ms(summary.median_switch_s),
        opt_ms(summary.median_retire_s),
        secs(summary.median_app_startup_s),
        opt_ms(summary.median_only_new_after_s),
        summary
            .median_new_app_first10_max_ms
            .map(|x| format!("{x:.1} ms"))
            .unwrap_or_else(|| "–".into()),
    );
}

/// The binaries' start-up times.
fn binaries_table(out: &mut String, binaries: &[BinaryFigures]) {
    let _ = writeln!(
        out,
        "\nStart-up, exec to exit, from a helper process of its own: the cold first run apart, then {} warm-up runs dropped, then the median of the rest; `hyperfine -N --warmup 20` on the same command beside it.\n",
        crate::startup::WARMUP
    );
    let _ = writeln!(
        out,
        "| binary | cold first run | median | max | hyperfine median (mean ± σ) | peak RSS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for b in binaries {
        let hf = b
            .hyperfine
            .as_ref()
            .map(|h| {
                format!(
                    "{:.2} ms ({:.2} ± {:.2})",
                    h.median_ms, h.mean_ms, h.stddev_ms
                )
            })
            .unwrap_or_else(|| "not installed".into());
        let _ = writeln!(
            out,
            "| `{}` | {:.2} ms | {:.2} ms | {:.2} ms | {hf} | {} KiB |",
            b.command, b.cold_ms, b.median_ms, b.max_ms, b.peak_rss_kib
        );
    }
}

#[cfg(test)]
// Not `tests`: that name is the harness crate, which `machine` reaches by path.
mod unit {
    use super::*;

    fn answer(at_ms: u64, status: u16, profile: &str) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            latency: Duration::from_millis(1),
            kind: Kind::Fresh,
            post: false,
            outcome: Outcome::Answered {
                status,
                profile: profile.into(),
            },
        }
    }

    fn deployment() -> Deployment {
        Deployment {
            id: "d".into(),
            from: "real1".into(),
            to: "real2".into(),
            stages: vec![],
            old_app_exit: None,
            first_answer: Duration::ZERO,
            app_startup: Duration::ZERO,
            include_written: None,
            confirmed: None,
            spawned: Duration::ZERO,
            retired_exit: None,
            peak_fds: 0,
        }
    }

    #[test]
    fn only_new_after_counts_from_the_first_new_answer_after_the_last_old_one() {
        let samples = [
            answer(100, 200, "real1"),
            answer(200, 200, "real2"),
            answer(300, 200, "real1"),
            answer(400, 502, "real2"),
            answer(500, 200, "real2"),
        ];
        let during: Vec<&Sample> = samples.iter().collect();
        let after = only_new_after(&deployment(), &during, Duration::from_millis(50));
        assert_eq!(after.map(|x| (x * 1000.0).round()), Some(450.0));
    }

    #[test]
    fn only_new_after_is_none_when_the_old_profile_never_answered() {
        let samples = [answer(100, 200, "real2")];
        let during: Vec<&Sample> = samples.iter().collect();
        assert_eq!(only_new_after(&deployment(), &during, Duration::ZERO), None);
    }

    #[test]
    fn a_lost_slow_request_is_a_failed_one() {
        let slow = slow_figures(None, "real1");
        assert!(!slow.ok);
        assert_eq!(slow.error.as_deref(), Some("not sent"));
        assert!(slow_figures(Some(answer(0, 200, "real1")), "real1").ok);
        assert!(!slow_figures(Some(answer(0, 200, "real2")), "real1").ok);
    }

    #[test]
    fn counts_sort_the_requests_by_outcome() {
        let mut post = answer(0, 200, "real1");
        post.post = true;
        post.outcome = Outcome::KeepAliveReadError("eof".into());
        let samples = [
            answer(0, 200, "real1"),
            answer(0, 503, "real1"),
            answer(0, 404, "real1"),
            post,
        ];
        let during: Vec<&Sample> = samples.iter().collect();
        let c = Counts::of(&during);
        assert_eq!(
            (c.served, c.status_5xx, c.status_other, c.failed),
            (1, 1, 1, 2)
        );
        assert_eq!(
            (c.post_requests, c.post_failed, c.keepalive_closed),
            (1, 1, 1)
        );
        assert_eq!(c.connection_errors, 0);
    }
}
