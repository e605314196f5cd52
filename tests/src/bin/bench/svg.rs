//! The timeline picture, written by hand as SVG (a plotting crate would be
//! the largest dependency of the workspace for a scatter plot and a few
//! lines).
//!
//! x is time since the load began; y is each request's latency on a log
//! scale; each request is a dot coloured by the profile that answered it,
//! red when it failed, orange for a kept-alive connection nginx closed. The
//! slow requests are ringed. Thin vertical lines mark where each stage began,
//! a dashed one the moment the include file was written, and a band shaded
//! in the new profile's colour the second after traffic moved. A gap or a red dot
//! near a dashed line would be a dropped request; the picture shows the
//! colour change without one.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::load::{Outcome, Sample};
use crate::report::DeploymentFigures;

const W: f64 = 1600.0;
const H: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = 50.0;
/// Latency axis, milliseconds, log scale.
const Y_MIN_MS: f64 = 0.1;
const Y_MAX_MS: f64 = 10_000.0;

const PROFILE_COLOURS: [&str; 2] = ["#1f77b4", "#2ca02c"];
const FAILED: &str = "#d62728";
const KEEPALIVE: &str = "#ff7f0e";
const OTHER: &str = "#7f7f7f";

fn colour(sample: &Sample, profiles: &[String]) -> &'static str {
    match &sample.outcome {
        Outcome::KeepAliveReadError(_) => KEEPALIVE,
        Outcome::ConnectionError(_) => FAILED,
        Outcome::Answered { status, .. } if !(200..300).contains(status) => FAILED,
        Outcome::Answered { profile, .. } => profiles
            .iter()
            .position(|p| p == profile)
            .and_then(|i| PROFILE_COLOURS.get(i).copied())
            .unwrap_or(OTHER),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The picture's scales and the profiles its colours stand for.
struct Plot {
    /// In the order they first appear; each has its colour.
    profiles: Vec<String>,
    /// The end of the time axis, seconds since the load began.
    t_max: f64,
}

impl Plot {
    /// Where `t` seconds since the load began lies on the x axis.
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.t_max) * (W - LEFT - RIGHT)
    }

    /// Where a latency of `latency_ms` lies on the (log) y axis.
    fn y(&self, latency_ms: f64) -> f64 {
        let v = latency_ms.clamp(Y_MIN_MS, Y_MAX_MS);
        let f = (v.log10() - Y_MIN_MS.log10()) / (Y_MAX_MS.log10() - Y_MIN_MS.log10());
        H - BOTTOM - f * (H - TOP - BOTTOM)
    }
}

pub fn timeline(
    samples: &[Sample],
    slow: &[Option<Sample>],
    deployments: &[DeploymentFigures],
) -> String {
    let mut profiles: Vec<String> = Vec::new();
    for d in deployments {
        for p in [&d.from, &d.to] {
            if !profiles.contains(p) {
                profiles.push(p.clone());
            }
        }
    }
    let t_max = samples
        .iter()
        .chain(slow.iter().flatten())
        .map(|s| (s.at + s.latency).as_secs_f64())
        .fold(1.0, f64::max);
    let plot = Plot { profiles, t_max };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="18" font-size="14">nonstop: {} requests through nginx over {} deployments; dot = one request (x: sent, y: latency), colour = profile that answered</text>"#,
        samples.len(),
        deployments.len()
    );
    axes(&mut svg, &plot);
    for d in deployments {
        deployment_marks(&mut svg, &plot, d);
    }
    dots(&mut svg, &plot, samples, slow);
    legend(&mut svg, &plot.profiles);
    svg.push_str("</svg>\n");
    svg
}

/// Axes and grid.
fn axes(svg: &mut String, plot: &Plot) {
    let (x, y, t_max) = (|t| plot.x(t), |ms| plot.y(ms), plot.t_max);
    let step = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0]
        .into_iter()
        .find(|s| t_max / s <= 20.0)
        .unwrap_or(120.0);
    let mut t = 0.0;
    while t <= t_max {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{t} s</text>"##,
            x(t),
            H - BOTTOM,
            H - BOTTOM + 15.0
        );
        t += step;
    }
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#eee"/><text x="{2}" y="{3:.1}" text-anchor="end">{ms} ms</text>"##,
            y(ms),
            W - RIGHT,
            LEFT - 5.0,
            y(ms) + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle">time since the load began</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">latency</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    );
}

/// A deployment's stage boundaries, the second after traffic moved and the
/// include write.
fn deployment_marks(svg: &mut String, plot: &Plot, d: &DeploymentFigures) {
    let x = |t| plot.x(t);
    for stage in &d.stages {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#999" stroke-width="0.7"/><text x="{2:.1}" y="{3}" transform="rotate(-60 {2:.1} {3})" fill="#555" font-size="9">{4}</text>"##,
            x(stage.begin_s),
            H - BOTTOM,
            x(stage.begin_s) + 2.0,
            TOP - 3.0,
            escape(&stage.name)
        );
    }
    // The second after traffic moved, shaded in the new profile's
    // colour: the requests whose latency the report compares with the
    // steady stretch before (a fresh JVM's cold first answers land here).
    if let Some(m) = d.moved_s {
        let c = plot
            .profiles
            .iter()
            .position(|p| p == &d.to)
            .and_then(|i| PROFILE_COLOURS.get(i).copied())
            .unwrap_or(OTHER);
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{}" fill="{c}" fill-opacity="0.08"/>"#,
            x(m),
            x(m + 1.0) - x(m),
            H - TOP - BOTTOM
        );
    }
    if let Some(w) = d.include_written_s.or(d.moved_s) {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#8e44ad" stroke-dasharray="4 3"/><text x="{2:.1}" y="{3}" fill="#8e44ad" font-size="9">{4} → {5}</text>"##,
            x(w),
            H - BOTTOM,
            x(w) + 3.0,
            TOP + 10.0,
            escape(&d.from),
            escape(&d.to)
        );
    }
}

/// The requests: a dot each, failures ringed on top, the slow requests.
fn dots(svg: &mut String, plot: &Plot, samples: &[Sample], slow: &[Option<Sample>]) {
    let (x, y, profiles) = (|t| plot.x(t), |ms| plot.y(ms), &plot.profiles);
    // One dot per request; requests that land on the same pixel in the
    // same colour are drawn once, which keeps the file small.
    let mut drawn = BTreeSet::new();
    for s in samples {
        let px = x(s.at.as_secs_f64()).round() as i64;
        let py = y(s.latency.as_secs_f64() * 1000.0).round() as i64;
        let c = colour(s, profiles);
        if drawn.insert((px, py, c)) {
            let _ = writeln!(
                svg,
                r#"<rect x="{}" y="{}" width="2" height="2" fill="{c}"/>"#,
                px - 1,
                py - 1
            );
        }
    }
    // Failures on top, bigger, so a single one cannot hide.
    for s in samples {
        let c = colour(s, profiles);
        if c == FAILED || c == KEEPALIVE {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                x(s.at.as_secs_f64()),
                y(s.latency.as_secs_f64() * 1000.0)
            );
        }
    }
    for s in slow.iter().flatten() {
        let c = colour(s, profiles);
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="none" stroke="{c}" stroke-width="2"/>"#,
            x(s.at.as_secs_f64()),
            y(s.latency.as_secs_f64() * 1000.0)
        );
    }
}

/// What each colour means.
fn legend(svg: &mut String, profiles: &[String]) {
    let mut lx = LEFT;
    let mut entries: Vec<(String, &str)> = profiles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                format!("answered by {p}"),
                PROFILE_COLOURS.get(i).copied().unwrap_or(OTHER),
            )
        })
        .collect();
    entries.push(("failed (5xx, refused, reset)".into(), FAILED));
    entries.push(("kept-alive connection closed by nginx".into(), KEEPALIVE));
    for (label, c) in entries {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx:.1}" y="32" width="8" height="8" fill="{c}"/><text x="{:.1}" y="40">{}</text>"#,
            lx + 11.0,
            escape(&label)
        );
        lx += 14.0 + 6.2 * label.len() as f64;
    }
}
