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
    /// The include file's mtime.
    pub include_written: Duration,
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
    /// The overhead less the old app's own shutdown: what nonstop itself
    /// and nginx add.
    pub overhead_own_s: f64,
    /// From the old app's exit to `stop` returning.
    pub stop_after_exit_s: Option<f64>,
    /// From the new app's first answer to `health` returning.
    pub health_notice_s: f64,
    pub include_written_s: f64,
    /// From the include written to `switch` returning, which it does once
    /// it has confirmed through nginx.
    pub switch_confirmed_s: f64,
    /// From the include written to the first request after which every
    /// answer came from the new profile.
    pub only_new_after_s: Option<f64>,
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
            let during: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.at >= begin && x.at < end && x.kind != Kind::Slow)
                .collect();
            let stage = |name: &str| d.stages.iter().find(|x| x.name == name);
            let wall: f64 = d.stages.iter().map(|x| s(x.end - x.begin)).sum();
            let stop = stage("stop");
            let health_end = stage("health").map(|x| x.end).unwrap_or_default();
            let switch_end = stage("switch").map(|x| x.end).unwrap_or_default();

            // The last request the old profile answered; every one sent
            // after it went to the new one.
            let last_old = during
                .iter()
                .rposition(|x| x.served_by() == Some(d.from.as_str()));
            let only_new_after = match last_old {
                Some(k) => during[k + 1..]
                    .iter()
                    .find(|x| x.served_by() == Some(d.to.as_str()))
                    .map(|x| s(x.at) - s(d.include_written)),
                None => None,
            };

            let slow = slow.get(i).cloned().flatten();
            let slow = match slow {
                Some(x) => SlowFigures {
                    status: x.status(),
                    answered_by: x.served_by().map(str::to_string),
                    error: match &x.outcome {
                        Outcome::ConnectionError(e) | Outcome::KeepAliveReadError(e) => {
                            Some(e.clone())
                        }
                        Outcome::Answered { .. } => None,
                    },
                    secs: s(x.latency),
                    ok: x.served_by() == Some(d.from.as_str()),
                },
                None => SlowFigures {
                    status: None,
                    answered_by: None,
                    error: Some("not sent".into()),
                    secs: 0.0,
                    ok: false,
                },
            };

            DeploymentFigures {
                id: d.id.clone(),
                from: d.from.clone(),
                to: d.to.clone(),
                stages: d
                    .stages
                    .iter()
                    .map(|x| StageFigures {
                        name: x.name.clone(),
                        begin_s: s(x.begin),
                        end_s: s(x.end),
                        secs: s(x.end - x.begin),
                    })
                    .collect(),
                wall_s: wall,
                app_startup_s: s(d.app_startup),
                overhead_s: wall - s(d.app_startup),
                old_app_shutdown_s: match (stop, d.old_app_exit) {
                    (Some(st), Some(exit)) => Some(s(exit) - s(st.begin)),
                    _ => None,
                },
                overhead_own_s: wall
                    - s(d.app_startup)
                    - match (stop, d.old_app_exit) {
                        (Some(st), Some(exit)) => s(exit) - s(st.begin),
                        _ => 0.0,
                    },
                stop_after_exit_s: match (stop, d.old_app_exit) {
                    (Some(st), Some(exit)) => Some(s(st.end) - s(exit)),
                    _ => None,
                },
                health_notice_s: s(health_end) - s(d.first_answer),
                include_written_s: s(d.include_written),
                switch_confirmed_s: s(switch_end) - s(d.include_written),
                only_new_after_s: only_new_after,
                requests: during.len(),
                served: during.iter().filter(|x| x.served_by().is_some()).count(),
                status_5xx: during
                    .iter()
                    .filter(|x| x.status().is_some_and(|c| c >= 500))
                    .count(),
                status_other: during
                    .iter()
                    .filter(|x| {
                        x.status()
                            .is_some_and(|c| !(200..300).contains(&c) && c < 500)
                    })
                    .count(),
                connection_errors: during
                    .iter()
                    .filter(|x| matches!(x.outcome, Outcome::ConnectionError(_)))
                    .count(),
                keepalive_read_errors: during
                    .iter()
                    .filter(|x| matches!(x.outcome, Outcome::KeepAliveReadError(_)))
                    .count(),
                slow,
                window_s: (s(begin), s(end)),
            }
        })
        .collect()
}

/// Medians over the deployments and totals over the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub deployments: usize,
    pub median_wall_s: f64,
    pub median_app_startup_s: f64,
    pub median_overhead_s: f64,
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
    pub median_switch_confirmed_s: f64,
    pub median_only_new_after_s: Option<f64>,
    /// Every request of the run, deployments or not.
    pub requests: usize,
    pub status_5xx: usize,
    pub status_other: usize,
    pub connection_errors: usize,
    pub keepalive_read_errors: usize,
    pub slow_failed: usize,
}

impl Summary {
    /// Nothing dropped: no 5xx or other error answer, no failed new
    /// connection, every slow request answered by the old profile.
    pub fn clean(&self) -> bool {
        self.status_5xx == 0
            && self.status_other == 0
            && self.connection_errors == 0
            && self.slow_failed == 0
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

pub fn summarise(results: &[DeploymentFigures], samples: &[Sample]) -> Summary {
    let m = |f: &dyn Fn(&DeploymentFigures) -> Option<f64>| {
        median(results.iter().filter_map(f).collect())
    };
    let z = |x: Option<f64>| x.unwrap_or(0.0);
    Summary {
        deployments: results.len(),
        median_wall_s: z(m(&|d| Some(d.wall_s))),
        median_app_startup_s: z(m(&|d| Some(d.app_startup_s))),
        median_overhead_s: z(m(&|d| Some(d.overhead_s))),
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
        median_switch_confirmed_s: z(m(&|d| Some(d.switch_confirmed_s))),
        median_only_new_after_s: m(&|d| d.only_new_after_s),
        requests: samples.len(),
        status_5xx: samples
            .iter()
            .filter(|x| x.status().is_some_and(|c| c >= 500))
            .count(),
        status_other: samples
            .iter()
            .filter(|x| {
                x.status()
                    .is_some_and(|c| !(200..300).contains(&c) && c < 500)
            })
            .count(),
        connection_errors: samples
            .iter()
            .filter(|x| matches!(x.outcome, Outcome::ConnectionError(_)))
            .count(),
        keepalive_read_errors: samples
            .iter()
            .filter(|x| matches!(x.outcome, Outcome::KeepAliveReadError(_)))
            .count(),
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
        "Machine: {} × {}, {}, kernel {}, {}, {}. Demo app start-up delay {} ms; a {} ms request in flight at each switch; load: 2 clients on new connections + 2 on kept-alive ones, 5 ms apart.\n",
        machine.cores, machine.cpu, machine.os, machine.kernel, machine.nginx, machine.java,
        args.startup_ms, args.slow_ms
    );
    let _ = writeln!(
        out,
        "| deployment | from → to | profile | stop | start | health | switch | total | app start-up | overhead | health notices | stop after exit | switch confirmed | only new after | requests | 5xx | conn. errors | keep-alive read errors | slow request |"
    );
    let _ = writeln!(out, "|{}", "---|".repeat(19));
    for d in results {
        let st = |n: &str| d.stage(n).map(secs).unwrap_or_else(|| "–".into());
        let slow = match (&d.slow.answered_by, d.slow.ok) {
            (Some(p), true) => format!("200 from {p} in {}", secs(d.slow.secs)),
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
            "| {} | {} → {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            ms(d.health_notice_s),
            opt_ms(d.stop_after_exit_s),
            ms(d.switch_confirmed_s),
            opt_ms(d.only_new_after_s),
            d.requests,
            d.status_5xx,
            d.connection_errors,
            d.keepalive_read_errors,
            slow
        );
    }

    let worst_start = binaries
        .iter()
        .filter(|b| b.command.ends_with("--help"))
        .map(|b| b.median_ms)
        .fold(0.0, f64::max);
    let goals: Vec<(&str, String, bool)> = vec![
        (
            "0 5xx, 0 failed slow requests",
            format!(
                "{} 5xx, {} other errors, {} connection errors, {} failed slow requests ({} requests)",
                summary.status_5xx,
                summary.status_other,
                summary.connection_errors,
                summary.slow_failed,
                summary.requests
            ),
            summary.clean(),
        ),
        (
            "overhead ≤ 0.3 s",
            format!(
                "{} ({} without the old app's own shutdown, median {})",
                ms(summary.median_overhead_s),
                ms(summary.median_overhead_own_s),
                opt_ms(summary.median_old_app_shutdown_s)
            ),
            summary.median_overhead_s <= 0.3,
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
            ms(summary.median_switch_confirmed_s),
            summary.median_switch_confirmed_s <= 0.2,
        ),
        (
            "each binary starts in ≤ 5 ms",
            format!("{worst_start:.1} ms (slowest median of `--help`)"),
            worst_start <= 5.0,
        ),
    ];
    let _ = writeln!(
        out,
        "\nMedians of {} deployments (keep-alive read errors: {}, nginx closing idle kept-alive connections at its reload; not failures):\n",
        summary.deployments, summary.keepalive_read_errors
    );
    let _ = writeln!(out, "| goal | measured | met |");
    let _ = writeln!(out, "|---|---|---|");
    for (goal, measured, met) in goals {
        let _ = writeln!(
            out,
            "| {goal} | {measured} | {} |",
            if met { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(
        out,
        "\nWhere the time goes (medians): profile {}, stop {} (when it stopped an app: {}, of which the app's own shutdown {}), start {}, health {}, switch {}; app start-up {}; only the new profile answers {} after the include is written.",
        ms(summary.median_profile_s),
        ms(summary.median_stop_s),
        opt_ms(summary.median_stop_with_app_s),
        opt_ms(summary.median_old_app_shutdown_s),
        ms(summary.median_start_s),
        ms(summary.median_health_s),
        ms(summary.median_switch_s),
        secs(summary.median_app_startup_s),
        opt_ms(summary.median_only_new_after_s),
    );

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
    out
}
