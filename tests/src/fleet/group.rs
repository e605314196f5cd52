//! The CodeDeploy service's part in an in-place deployment to a deployment
//! group ([`Group::deploy`]): which hosts get the revision, how many at once,
//! when the deployment stops and whether it succeeded, as AWS's user guide
//! defines them ("CodeDeploy instance health", "Working with deployment
//! configurations"). nonstop does nothing fleet-wide; this is the service the
//! fleet tests and the benchmark play.
//!
//! - **Minimum healthy hosts** ([`DeploymentConfig::min_healthy`]): a host
//!   count, or a percentage of the group's hosts rounded *up*; AllAtOnce is 0,
//!   HalfAtATime 50 %, OneAtATime "most concurrency 1" (all hosts but one).
//! - **Order**: unhealthy hosts first, then by revision health (unknown, old,
//!   current), then in the group's order.
//! - **How many at once**: a healthy host is taken offline only while the
//!   healthy hosts not being deployed to stay at or above the minimum; an
//!   unhealthy one can always be deployed to (it lowers nothing). When no host
//!   can be started and none is running, the deployment stops (failed): a
//!   minimum that is the whole group fails it before any host is touched.
//! - **Stop on failure**: a host that fails is unhealthy. When the healthy
//!   hosts (those running count as they were) fall to the minimum while hosts
//!   are still waiting, the deployment stops: no other host is started, the
//!   running ones finish, and the deployment has failed. A failure of the last
//!   hosts therefore does not stop anything (OneAtATime: "if the deployment to
//!   the last instance fails, the overall deployment is still successful").
//! - **Success**: not stopped, and at least the minimum of hosts, and at
//!   least one, succeeded (AllAtOnce succeeds when any one host does).
//! - **Afterwards** ([`Group`] keeps it across deployments): every host
//!   deployed to is healthy or not by its result and holds the revision when
//!   it succeeded; the group's revision becomes this one only when the
//!   deployment succeeded.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A deployment configuration of the EC2/On-Premises platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentConfig {
    /// CodeDeployDefault.AllAtOnce: minimum healthy hosts 0.
    AllAtOnce,
    /// CodeDeployDefault.HalfAtATime: minimum healthy hosts 50 % (rounded up).
    HalfAtATime,
    /// CodeDeployDefault.OneAtATime (the default): one host at a time, every
    /// host but one kept healthy.
    OneAtATime,
    /// A custom configuration: HOST_COUNT.
    HostCount(usize),
    /// A custom configuration: FLEET_PERCENT, rounded up to whole hosts.
    FleetPercent(u32),
}

impl DeploymentConfig {
    /// The minimum of healthy hosts for a group of `hosts`.
    pub fn min_healthy(self, hosts: usize) -> usize {
        let percent = |p: u32| (hosts * p as usize).div_ceil(100);
        match self {
            DeploymentConfig::AllAtOnce => 0,
            DeploymentConfig::HalfAtATime => percent(50),
            DeploymentConfig::OneAtATime => hosts.saturating_sub(1),
            DeploymentConfig::HostCount(n) => n,
            DeploymentConfig::FleetPercent(p) => percent(p),
        }
    }

    /// Its name in CodeDeploy.
    pub fn name(self) -> String {
        match self {
            DeploymentConfig::AllAtOnce => "CodeDeployDefault.AllAtOnce".into(),
            DeploymentConfig::HalfAtATime => "CodeDeployDefault.HalfAtATime".into(),
            DeploymentConfig::OneAtATime => "CodeDeployDefault.OneAtATime".into(),
            DeploymentConfig::HostCount(n) => format!("HOST_COUNT {n}"),
            DeploymentConfig::FleetPercent(p) => format!("FLEET_PERCENT {p}"),
        }
    }
}

/// What the service knows of one host between deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHealth {
    /// Instance health: its last deployment succeeded (a host never deployed
    /// to counts as healthy here, as a fresh instance in a group does once it
    /// runs the app; [`Group::new`] says which).
    pub healthy: bool,
    /// The revision its last successful deployment installed.
    pub revision: Option<String>,
}

/// The deployment group: its hosts' health and its last successful revision.
#[derive(Debug, Clone)]
pub struct Group {
    pub hosts: Vec<HostHealth>,
    pub revision: Option<String>,
}

/// How one host's deployment went, as the harness ran it.
#[derive(Debug, Clone)]
pub struct HostRun<T> {
    pub host: usize,
    pub succeeded: bool,
    /// Since the group's deployment began.
    pub started: Duration,
    pub finished: Duration,
    pub detail: T,
}

/// The overall status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
}

/// One deployment to the group.
#[derive(Debug, Clone)]
pub struct Rollout<T> {
    pub revision: String,
    pub config: DeploymentConfig,
    pub min_healthy: usize,
    pub status: Status,
    /// Why it failed (or stopped), in the service's words.
    pub reason: Option<String>,
    /// The hosts in the order they were started.
    pub order: Vec<usize>,
    /// Every host deployed to, by host index (`None`: not deployed to, the
    /// deployment having stopped first: CodeDeploy's Skipped).
    pub hosts: Vec<Option<HostRun<T>>>,
    /// The most hosts deployed to at once.
    pub max_in_flight: usize,
    /// From the first host started to the last host finished.
    pub elapsed: Duration,
}

impl<T> Rollout<T> {
    pub fn succeeded_hosts(&self) -> Vec<usize> {
        self.ran().filter(|r| r.succeeded).map(|r| r.host).collect()
    }

    pub fn failed_hosts(&self) -> Vec<usize> {
        self.ran()
            .filter(|r| !r.succeeded)
            .map(|r| r.host)
            .collect()
    }

    pub fn skipped_hosts(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].is_none())
            .collect()
    }

    pub fn ran(&self) -> impl Iterator<Item = &HostRun<T>> {
        self.hosts.iter().flatten()
    }

    /// One line: the status, the hosts, the time.
    pub fn summary(&self) -> String {
        let names = |v: Vec<usize>| {
            v.iter()
                .map(|i| format!("host{}", i + 1))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{} of {} with {} (minimum healthy {}): {:?}{}; succeeded [{}], failed [{}], skipped [{}]; at most {} at once; {:.1} s",
            self.revision,
            self.hosts.len(),
            self.config.name(),
            self.min_healthy,
            self.status,
            self.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            names(self.succeeded_hosts()),
            names(self.failed_hosts()),
            names(self.skipped_hosts()),
            self.max_in_flight,
            self.elapsed.as_secs_f64()
        )
    }
}

impl Group {
    /// A group of `hosts` hosts, all healthy, none with a revision yet.
    pub fn new(hosts: usize) -> Group {
        Group {
            hosts: vec![
                HostHealth {
                    healthy: true,
                    revision: None,
                };
                hosts
            ],
            revision: None,
        }
    }

    /// The order CodeDeploy deploys in: unhealthy hosts, then unknown, old
    /// and current revision, each in the group's order.
    pub fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.hosts.len()).collect();
        order.sort_by_key(|&i| {
            let h = &self.hosts[i];
            let revision = match &h.revision {
                None => 0,
                Some(r) if Some(r) != self.revision.as_ref() => 1,
                Some(_) => 2,
            };
            (h.healthy, revision)
        });
        order
    }

    /// Deploys `revision` with `config`: `run(host)` deploys to one host (on
    /// a thread of its own, several at once as the configuration allows) and
    /// says whether it succeeded. Returns when every host started has
    /// finished.
    pub fn deploy<T: Send>(
        &mut self,
        revision: &str,
        config: DeploymentConfig,
        run: impl Fn(usize) -> (bool, T) + Sync,
    ) -> Rollout<T> {
        let n = self.hosts.len();
        let min = config.min_healthy(n);
        let mut pending: VecDeque<usize> = self.order().into();
        let mut results: Vec<Option<HostRun<T>>> = (0..n).map(|_| None).collect();
        let mut order = Vec::new();
        let mut health: Vec<bool> = self.hosts.iter().map(|h| h.healthy).collect();
        // Healthy hosts not being deployed to, and healthy ones counting
        // the running ones as they were.
        let mut settled = health.iter().filter(|&&h| h).count();
        let mut counted = settled;
        let mut in_flight = 0;
        let mut max_in_flight = 0;
        let mut reason: Option<String> = None;
        let started = Instant::now();
        let run = &run;
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(usize, bool, T, Duration, Duration)>();
            loop {
                if reason.is_none() {
                    while let Some(&host) = pending.front() {
                        if health[host] {
                            if settled < min + 1 {
                                break;
                            }
                            settled -= 1;
                        }
                        pending.pop_front();
                        order.push(host);
                        in_flight += 1;
                        max_in_flight = max_in_flight.max(in_flight);
                        let tx = tx.clone();
                        scope.spawn(move || {
                            let from = started.elapsed();
                            let (ok, detail) = run(host);
                            let _ = tx.send((host, ok, detail, from, started.elapsed()));
                        });
                    }
                    if in_flight == 0 && !pending.is_empty() {
                        reason = Some(format!(
                            "{settled} healthy host(s) of {n}: deploying to one more would leave fewer than the minimum of {min}"
                        ));
                    }
                }
                if in_flight == 0 {
                    break;
                }
                let Ok((host, ok, detail, from, to)) = rx.recv() else {
                    break;
                };
                in_flight -= 1;
                let was_healthy = health[host];
                if ok {
                    settled += 1;
                    if !was_healthy {
                        counted += 1;
                    }
                } else if was_healthy {
                    counted -= 1;
                }
                health[host] = ok;
                results[host] = Some(HostRun {
                    host,
                    succeeded: ok,
                    started: from,
                    finished: to,
                    detail,
                });
                if !ok && reason.is_none() && !pending.is_empty() && counted <= min {
                    reason = Some(format!(
                        "host{} failed: {counted} healthy host(s) left of {n}, the minimum is {min}; {} host(s) not deployed to",
                        host + 1,
                        pending.len()
                    ));
                }
            }
        });
        let succeeded = results.iter().flatten().filter(|r| r.succeeded).count();
        let status = if reason.is_some() || succeeded < min.max(1) {
            if reason.is_none() {
                reason = Some(format!(
                    "{succeeded} host(s) succeeded, fewer than the {} needed",
                    min.max(1)
                ));
            }
            Status::Failed
        } else {
            Status::Succeeded
        };
        for r in results.iter().flatten() {
            let h = &mut self.hosts[r.host];
            h.healthy = r.succeeded;
            h.revision = r.succeeded.then(|| revision.to_string());
        }
        if status == Status::Succeeded {
            self.revision = Some(revision.to_string());
        }
        let elapsed = results
            .iter()
            .flatten()
            .map(|r| r.finished)
            .max()
            .unwrap_or_default();
        Rollout {
            revision: revision.to_string(),
            config,
            min_healthy: min,
            status,
            reason,
            order,
            hosts: results,
            max_in_flight,
            elapsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deploys to a fresh group of `n` where the hosts in `fail` fail.
    fn roll(n: usize, config: DeploymentConfig, fail: &[usize]) -> (Group, Rollout<()>) {
        let mut g = Group::new(n);
        let r = g.deploy("v2", config, |h| (!fail.contains(&h), ()));
        (g, r)
    }

    #[test]
    fn minimum_healthy_hosts_as_aws_defines_them() {
        use DeploymentConfig::*;
        // "In an example of nine instances": HOST_COUNT 6 deploys three at
        // a time, FLEET_PERCENT 40 five at a time (40 % of 9 rounded up: 4).
        assert_eq!(HostCount(6).min_healthy(9), 6);
        assert_eq!(FleetPercent(40).min_healthy(9), 4);
        assert_eq!(HalfAtATime.min_healthy(9), 5);
        assert_eq!(HalfAtATime.min_healthy(3), 2);
        assert_eq!(OneAtATime.min_healthy(3), 2);
        assert_eq!(OneAtATime.min_healthy(1), 0);
        assert_eq!(AllAtOnce.min_healthy(3), 0);
        assert_eq!(FleetPercent(95).min_healthy(10), 10);
    }

    #[test]
    fn how_many_at_once() {
        use DeploymentConfig::*;
        for (n, config, at_once) in [
            (9, HostCount(6), 3),
            (9, FleetPercent(40), 5),
            (9, HalfAtATime, 4),
            (10, HostCount(9), 1),
            (10, HostCount(8), 2),
            (10, HostCount(0), 10),
            (3, AllAtOnce, 3),
            (3, HalfAtATime, 1),
            (3, OneAtATime, 1),
        ] {
            let (g, r) = roll(n, config, &[]);
            assert_eq!(r.max_in_flight, at_once, "{}", r.summary());
            assert_eq!(r.status, Status::Succeeded, "{}", r.summary());
            assert_eq!(r.succeeded_hosts().len(), n);
            assert_eq!(g.revision.as_deref(), Some("v2"));
        }
    }

    #[test]
    fn a_minimum_of_the_whole_group_fails_before_any_host() {
        // "Minimum healthy instances: 95%": 10 of 10, fails at once.
        let (g, r) = roll(10, DeploymentConfig::FleetPercent(95), &[]);
        assert_eq!(r.status, Status::Failed);
        assert!(r.order.is_empty(), "{}", r.summary());
        assert_eq!(r.skipped_hosts().len(), 10);
        assert_eq!(g.revision, None);
    }

    #[test]
    fn one_at_a_time_stops_at_a_failure_but_not_at_the_last_host() {
        // A failure before the last host stops it: the rest are skipped.
        let (g, r) = roll(3, DeploymentConfig::OneAtATime, &[1]);
        assert_eq!(r.status, Status::Failed, "{}", r.summary());
        assert_eq!(r.order, [0, 1]);
        assert_eq!(r.skipped_hosts(), [2]);
        assert_eq!(g.revision, None, "the group keeps its revision");
        assert!(g.hosts[0].healthy && !g.hosts[1].healthy && g.hosts[2].healthy);
        // The last host failing: still a success.
        let (g, r) = roll(3, DeploymentConfig::OneAtATime, &[2]);
        assert_eq!(r.status, Status::Succeeded, "{}", r.summary());
        assert_eq!(r.failed_hosts(), [2]);
        assert_eq!(g.revision.as_deref(), Some("v2"));
        // A group of one: only that host's success counts.
        let (_, r) = roll(1, DeploymentConfig::OneAtATime, &[0]);
        assert_eq!(r.status, Status::Failed, "{}", r.summary());
    }

    #[test]
    fn two_at_a_time_stops_at_the_second_failure() {
        // "Minimum healthy instances: 8" of 10: two at a time; two failures
        // stop it, unless the second is the last host.
        let (_, r) = roll(10, DeploymentConfig::HostCount(8), &[0]);
        assert_eq!(r.status, Status::Succeeded, "{}", r.summary());
        let (_, r) = roll(10, DeploymentConfig::HostCount(8), &[0, 1]);
        assert_eq!(r.status, Status::Failed, "{}", r.summary());
        assert_eq!(r.skipped_hosts().len(), 8, "{}", r.summary());
        let (_, r) = roll(10, DeploymentConfig::HostCount(8), &[0, 9]);
        assert_eq!(r.status, Status::Succeeded, "{}", r.summary());
    }

    #[test]
    fn all_at_once_succeeds_when_any_host_does() {
        let (g, r) = roll(3, DeploymentConfig::AllAtOnce, &[2]);
        assert_eq!(r.status, Status::Succeeded, "{}", r.summary());
        assert_eq!(r.failed_hosts(), [2]);
        assert_eq!(g.revision.as_deref(), Some("v2"));
        assert!(!g.hosts[2].healthy);
        let (g, r) = roll(3, DeploymentConfig::AllAtOnce, &[0, 1, 2]);
        assert_eq!(r.status, Status::Failed, "{}", r.summary());
        assert_eq!(g.revision, None);
    }

    #[test]
    fn half_at_a_time_needs_half_rounded_up() {
        // Nine hosts: four at a time, five successes needed.
        let (_, r) = roll(9, DeploymentConfig::HalfAtATime, &[5, 6, 7, 8]);
        assert_eq!(r.status, Status::Succeeded, "{}", r.summary());
        let (_, r) = roll(9, DeploymentConfig::HalfAtATime, &[0, 1, 2, 3]);
        assert_eq!(r.status, Status::Failed, "{}", r.summary());
        assert_eq!(r.skipped_hosts().len(), 5, "{}", r.summary());
    }

    #[test]
    fn unhealthy_hosts_go_first_and_lower_nothing() {
        let mut g = Group::new(3);
        let r = g.deploy("v2", DeploymentConfig::AllAtOnce, |h| (h != 2, ()));
        assert_eq!(r.status, Status::Succeeded);
        // host3 is unhealthy on an unknown revision: deployed to first.
        assert_eq!(g.order(), [2, 0, 1]);
        let r = g.deploy("v1", DeploymentConfig::OneAtATime, |_| (true, ()));
        assert_eq!(r.order, [2, 0, 1], "{}", r.summary());
        assert_eq!(r.max_in_flight, 1);
        assert!(g.hosts.iter().all(|h| h.healthy));
        assert_eq!(g.revision.as_deref(), Some("v1"));
        // Two unhealthy hosts of three with OneAtATime (minimum 2): both are
        // deployed to at once, then the healthy one.
        let mut g = Group::new(3);
        g.hosts[0].healthy = false;
        g.hosts[1].healthy = false;
        let r = g.deploy("v3", DeploymentConfig::OneAtATime, |_| (true, ()));
        assert_eq!(r.max_in_flight, 2, "{}", r.summary());
        assert_eq!(r.status, Status::Succeeded);
    }
}
