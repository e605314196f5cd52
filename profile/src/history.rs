//! `profile --history [N]`: the last N deployments, newest first, from the
//! history files nonstop keeps (`history.jsonl` and its one rotated copy,
//! nothing more): id, start, from -> to, outcome, each stage's duration,
//! the build. `--failed` keeps the failed ones; `--json` prints one JSON
//! line each.
//!
//! A deployment is the history lines that share its id; a stage run by
//! hand (no id) is one entry of its own. Its outcome is what its stages
//! recorded (exit codes, `outcome`, `action`), never guessed from files.

use serde::Serialize;

use nonstop_common::state::{BuildFacts, HistoryLine};
use nonstop_common::sys::time::{secs, utc};

use crate::table::align;

/// One stage of a deployment as the history recorded it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct StageRun {
    pub stage: String,
    pub elapsed_ms: u64,
    pub exit_code: u8,
    pub at_unix_ms: u64,
}

/// One deployment (or one stage run by hand).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Deployment {
    pub deployment_id: Option<String>,
    pub started_unix_ms: u64,
    pub started_at: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// `ok`, `rolled back`, `failed at STAGE`, `ok, retired cutting N
    /// connections`, `maintenance on`, `ok, nginx left on the maintenance
    /// page`, `unfinished (last stage: start)`.
    pub outcome: String,
    pub failed: bool,
    /// The failing stage's message.
    pub error: Option<String>,
    pub stages: Vec<StageRun>,
    pub build: Option<BuildFacts>,
}

/// The deployments in `lines` (oldest first), newest first.
pub(crate) fn deployments(lines: Vec<HistoryLine>) -> Vec<Deployment> {
    let mut groups: Vec<Vec<HistoryLine>> = Vec::new();
    for line in lines {
        // A stage of a completed deployment run again did nothing.
        if line.outcome.as_deref() == Some("already-completed") {
            continue;
        }
        let open = line.deployment_id.as_ref().and_then(|id| {
            groups
                .iter()
                .rposition(|g| g.first().and_then(|f| f.deployment_id.as_ref()) == Some(id))
        });
        match open {
            Some(i) => groups[i].push(line),
            None => groups.push(vec![line]),
        }
    }
    let mut list: Vec<Deployment> = groups.into_iter().filter_map(summarize).collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.started_unix_ms));
    list
}

fn summarize(lines: Vec<HistoryLine>) -> Option<Deployment> {
    let first = lines.first()?;
    let last = lines.last()?;
    let started = lines
        .iter()
        .map(|l| l.at_unix_ms.saturating_sub(l.elapsed_ms))
        .min()
        .unwrap_or(first.at_unix_ms);
    let from = lines.iter().find_map(|l| l.from.clone());
    // Where it went: the last stage that switched (or checked) says it best.
    let to = lines
        .iter()
        .rev()
        .find(|l| matches!(l.stage.as_str(), "health" | "switch"))
        .or(lines.first())
        .and_then(|l| l.to.clone());
    let failed = last.exit_code != 0;
    let cut = lines
        .iter()
        .rev()
        .find(|l| l.outcome.as_deref() == Some("retired-cutting-connections"));
    let action = lines.iter().rev().find_map(|l| l.action.as_deref());
    // Maintenance goes to the page, not to a profile.
    let to = match action {
        Some("maintenance-on") => Some("maintenance page".to_string()),
        _ => to,
    };
    let outcome = if failed {
        format!("failed at {} (exit {})", last.stage, last.exit_code)
    } else {
        match (action, cut) {
            (Some("rollback"), _) => "rolled back".to_string(),
            (Some("maintenance-on"), _) => "maintenance on".to_string(),
            (Some("maintenance-off"), _) => "maintenance off".to_string(),
            // Checked, not switched to: the page stayed on.
            (Some("maintenance-kept"), _) => "ok, nginx left on the maintenance page".to_string(),
            (_, Some(c)) => format!(
                "ok, retired cutting {} connections",
                c.cut_connections.unwrap_or(0)
            ),
            // A stage run by hand is whole by itself.
            _ if first.deployment_id.is_none() => "ok".to_string(),
            _ if matches!(last.stage.as_str(), "health" | "switch") => "ok".to_string(),
            _ => format!("unfinished (last stage: {})", last.stage),
        }
    };
    Some(Deployment {
        deployment_id: first.deployment_id.clone(),
        started_unix_ms: started,
        started_at: utc(started),
        from,
        to,
        outcome,
        failed,
        error: failed.then(|| last.message.clone()),
        stages: lines
            .iter()
            .map(|l| StageRun {
                stage: l.stage.clone(),
                elapsed_ms: l.elapsed_ms,
                exit_code: l.exit_code,
                at_unix_ms: l.at_unix_ms,
            })
            .collect(),
        build: lines.iter().rev().find_map(|l| l.build.clone()),
    })
}

/// The table for people.
pub(crate) fn table(list: &[Deployment]) -> String {
    let mut rows = vec![vec![
        "DEPLOYMENT".to_string(),
        "STARTED".into(),
        "FROM -> TO".into(),
        "OUTCOME".into(),
        "STAGES".into(),
        "BUILD".into(),
    ]];
    for d in list {
        let stages: Vec<String> = d
            .stages
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.stage,
                    secs(std::time::Duration::from_millis(s.elapsed_ms)).replace(" s", "s")
                )
            })
            .collect();
        let build = d
            .build
            .as_ref()
            .map(|b| match &b.sha256 {
                Some(h) => format!("{} {}", b.artifact, h.get(..12).unwrap_or(h)),
                None => b.artifact.clone(),
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            d.deployment_id
                .clone()
                .unwrap_or_else(|| "(by hand)".into()),
            d.started_at.clone(),
            format!(
                "{} -> {}",
                d.from.as_deref().unwrap_or("none"),
                d.to.as_deref().unwrap_or("?")
            ),
            d.outcome.clone(),
            stages.join(", "),
            build,
        ]);
    }
    align(&rows).join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: u64, stage: &str, id: Option<&str>, exit: u8) -> HistoryLine {
        HistoryLine {
            at_unix_ms: at,
            stage: stage.into(),
            deployment_id: id.map(str::to_string),
            exit_code: exit,
            message: if exit == 0 {
                "ok".into()
            } else {
                "it broke".into()
            },
            elapsed_ms: 10,
            from: Some("real1".into()),
            to: Some("real2".into()),
            ..HistoryLine::default()
        }
    }

    #[test]
    fn stages_of_one_id_are_one_deployment_newest_first() {
        let mut start = line(200, "start", Some("d-1"), 0);
        start.build = Some(BuildFacts {
            artifact: "demo-v2.jar".into(),
            size: Some(5),
            sha256: Some("ab".repeat(32)),
        });
        let list = deployments(vec![
            line(100, "stop", Some("d-1"), 0),
            start,
            line(300, "health", Some("d-1"), 0),
            line(400, "stop", Some("d-2"), 0),
            line(500, "start", Some("d-2"), 1),
            line(600, "health", Some("d-1"), 0).tap_outcome("already-completed"),
            line(700, "switch", None, 0).tap_action("rollback"),
        ]);
        let kept = deployments(vec![
            line(800, "start", Some("d-3"), 0),
            line(900, "health", Some("d-3"), 0).tap_action("maintenance-kept"),
        ]);
        assert_eq!(kept[0].outcome, "ok, nginx left on the maintenance page");
        let ids: Vec<Option<&str>> = list.iter().map(|d| d.deployment_id.as_deref()).collect();
        assert_eq!(ids, vec![None, Some("d-2"), Some("d-1")]);
        assert_eq!(list[0].outcome, "rolled back");
        assert_eq!(list[1].outcome, "failed at start (exit 1)");
        assert_eq!(list[1].error.as_deref(), Some("it broke"));
        assert_eq!(list[2].outcome, "ok");
        assert_eq!(list[2].stages.len(), 3, "the retried health is not a stage");
        assert_eq!(list[2].started_unix_ms, 90);
        assert_eq!(list[2].build.as_ref().unwrap().artifact, "demo-v2.jar");
        let table = table(&list);
        assert!(table.contains("real1 -> real2"), "{table}");
        assert!(
            table.contains("stop 0.01s, start 0.01s, health 0.01s"),
            "{table}"
        );
    }

    trait Tap {
        fn tap_outcome(self, o: &str) -> Self;
        fn tap_action(self, a: &str) -> Self;
    }

    impl Tap for HistoryLine {
        fn tap_outcome(mut self, o: &str) -> Self {
            self.outcome = Some(o.into());
            self
        }
        fn tap_action(mut self, a: &str) -> Self {
            self.action = Some(a.into());
            self
        }
    }
}
