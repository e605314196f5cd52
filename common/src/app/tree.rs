//! Process trees: what `stop` signals as a whole, and what `start` adopts or
//! cleans up after a launch.
//!
//! An app is rarely one process: a wrapper script forks helpers, a launcher
//! forks the server and returns. `start` makes the launch a session (and so
//! process-group) leader, and itself the launch's child subreaper, so that
//! whatever the launch leaves behind reparents to it instead of to init;
//! `stop` signals the whole group, not only the pid on the port.
//!
//! A pid alone may be reused by the time a signal is sent (the app exits
//! during the SIGTERM wait, the counter wraps), so every signal re-checks the
//! process's start time (/proc/PID/stat field 22) right before it is sent,
//! the SIGKILL escalation included. A group is signalled only while its
//! leader is the same process, or, once the leader has exited, while a member
//! seen before is still in it: the kernel does not reuse a group's number
//! while any member lives, so a member seen again proves the group is ours.

use std::fmt;
use std::fs;
use std::io;
use std::time::Duration;

use anyhow::{Context as _, Result};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::state::Launched;
use crate::sys::log::Log;
use crate::sys::procs::{cmdline, stat_fields};
use crate::sys::signals;
use crate::sys::time::secs;

/// One process for good: its pid and its start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proc {
    pub pid: i32,
    pub start: u64,
}

impl Proc {
    /// The process `pid` is now, if it is alive.
    pub(crate) fn of(pid: i32) -> Option<Proc> {
        let stat = Stat::read(pid)?;
        (!stat.exited).then_some(Proc {
            pid,
            start: stat.start,
        })
    }

    /// True while this very process (same pid, same start time) is alive.
    pub(crate) fn is_alive(&self) -> bool {
        Proc::of(self.pid) == Some(*self)
    }

    /// Sends `sig` if this process is still the one we mean; `Ok(false)`
    /// when it has exited or its pid now names another process.
    pub(crate) fn signal(&self, sig: Signal) -> io::Result<bool> {
        if !self.is_alive() {
            return Ok(false);
        }
        match kill(Pid::from_raw(self.pid), sig) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ESRCH) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// "pid 12 (java -jar ...)", for messages.
    pub fn describe(&self) -> String {
        format!("pid {} ({})", self.pid, cmdline(self.pid))
    }
}

/// What /proc/PID/stat says about a process, the fields used here.
#[derive(Debug, Clone, Copy)]
struct Stat {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
    start: u64,
    /// A zombie (or dead) process has exited; it only waits to be reaped.
    exited: bool,
}

impl Stat {
    fn read(pid: i32) -> Option<Stat> {
        let f = stat_fields(pid)?;
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
        Some(Stat {
            pid,
            exited: matches!(f.first().map(String::as_str), Some("Z" | "X")),
            ppid: i32::try_from(num(1)?).ok()?,
            pgid: i32::try_from(num(2)?).ok()?,
            sid: i32::try_from(num(3)?).ok()?,
            start: u64::try_from(num(19)?).ok()?,
        })
    }

    fn proc(&self) -> Proc {
        Proc {
            pid: self.pid,
            start: self.start,
        }
    }
}

/// Every live process this user can see.
fn scan() -> Vec<Stat> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(Stat::read)
        .filter(|s| !s.exited)
        .collect()
}

/// The process group of `pid`, if it is alive.
pub fn pgid(pid: i32) -> Option<i32> {
    Stat::read(pid).filter(|s| !s.exited).map(|s| s.pgid)
}

/// The live members of process group `pgid`, whoever they are.
fn group_members(pgid: i32) -> Vec<Proc> {
    scan()
        .into_iter()
        .filter(|s| s.pgid == pgid)
        .map(|s| s.proc())
        .collect()
}

/// What a launch left running: the live descendants of `root` (this
/// process, the launch's subreaper, whom its orphans reparent to) and the
/// live members of the launch's session `sid` that started no earlier than
/// the launch itself (where this process could not become a subreaper).
pub fn leftovers(root: i32, launch: Proc) -> Vec<Proc> {
    let all = scan();
    let mut found: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for s in all.iter().filter(|s| s.ppid == parent) {
            if !found.contains(&s.proc()) {
                found.push(s.proc());
                frontier.push(s.pid);
            }
        }
    }
    for s in &all {
        if s.sid == launch.pid && s.start >= launch.start && !found.contains(&s.proc()) {
            found.push(s.proc());
        }
    }
    found.sort_unstable_by_key(|p| p.pid);
    found
}

/// A process group, followed as long as it is provably the same group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub pgid: i32,
    /// The start time of its leader (the process whose pid is `pgid`).
    leader_start: Option<u64>,
    /// Members seen at the last look.
    known: Vec<Proc>,
    /// How many times [`Group::is_running`] looked.
    looks: u32,
}

impl Group {
    /// The group `pgid` whose leader started at `leader_start`, with members
    /// already known to be ours (a listener on the port, the launched app).
    pub(crate) fn new(pgid: i32, leader_start: Option<u64>, known: Vec<Proc>) -> Group {
        Group {
            pgid,
            leader_start,
            known,
            looks: 0,
        }
    }

    /// Its members now, or nothing once it is gone or its number names
    /// another group. Remembers them for the next look.
    pub(crate) fn members(&mut self) -> Vec<Proc> {
        let now = group_members(self.pgid);
        if !self.is_same(&now) {
            self.known.clear();
            return Vec::new();
        }
        self.known = now.clone();
        now
    }

    fn is_same(&self, now: &[Proc]) -> bool {
        if let Some(leader) = now.iter().find(|p| p.pid == self.pgid) {
            return self.leader_start == Some(leader.start) || self.known.contains(leader);
        }
        now.iter().any(|p| self.known.contains(p))
    }

    /// Whether anything of it still runs. Mostly cheap: while a member seen
    /// before is still in it, one stat read; a full look through /proc
    /// otherwise, and every 16th call, so that members forked meanwhile are
    /// known before the ones seen before exit (see [`Group::members`]).
    pub(crate) fn is_running(&mut self) -> bool {
        self.looks = self.looks.wrapping_add(1);
        let pgid = self.pgid;
        let known_alive = self.known.iter().any(|p| {
            Stat::read(p.pid).is_some_and(|s| !s.exited && s.start == p.start && s.pgid == pgid)
        });
        (known_alive && self.looks % 16 != 0) || !self.members().is_empty()
    }

    /// Signals the whole group after checking it is still ours; `Ok(false)`
    /// when nothing of it is left to signal.
    pub(crate) fn signal(&mut self, sig: Signal) -> io::Result<bool> {
        if self.members().is_empty() {
            return Ok(false);
        }
        match killpg(Pid::from_raw(self.pgid), sig) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::ESRCH) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// The process group of what `start` launched, while it is provably the
/// same group; the recorded process seeds it. Records from before groups
/// were kept name none: then the recorded pid's group, if it leads one.
pub(crate) fn group_of(l: &Launched) -> Option<Group> {
    let me = l.start_time.map(|start| Proc { pid: l.pid, start });
    let pgid = match l.group {
        Some(g) => g,
        None => Some(l.pid).filter(|&p| pgid(p) == Some(p))?,
    };
    let leader_start = l
        .group_start_time
        .or(if pgid == l.pid { l.start_time } else { None });
    let known = me
        .filter(|p| p.is_alive() && self::pgid(p.pid) == Some(pgid))
        .into_iter()
        .collect();
    Some(Group::new(pgid, leader_start, known))
}

/// What `stop` (or `start`, cleaning up after a failed launch) signals: a
/// whole process group that nonstop launched, or one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Group(Group),
    One(Proc),
}

impl Target {
    /// Its live processes now.
    pub(crate) fn members(&mut self) -> Vec<Proc> {
        match self {
            Target::Group(g) => g.members(),
            Target::One(p) => Some(*p).filter(Proc::is_alive).into_iter().collect(),
        }
    }

    /// Whether anything of it still runs (see [`Group::is_running`]).
    pub(crate) fn is_running(&mut self) -> bool {
        match self {
            Target::Group(g) => g.is_running(),
            Target::One(p) => p.is_alive(),
        }
    }

    /// Sends `sig` after re-checking identity (see the module's doc).
    pub(crate) fn signal(&mut self, sig: Signal) -> io::Result<bool> {
        match self {
            Target::Group(g) => g.signal(sig),
            Target::One(p) => p.signal(sig),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Group(g) => write!(f, "process group {}", g.pgid),
            Target::One(p) => write!(f, "pid {}", p.pid),
        }
    }
}

/// How to signal `procs` (what a failed launch left) as a whole: each
/// process group all of whose members are among them at once, the rest one
/// by one.
pub fn targets_for(procs: &[Proc]) -> Vec<Target> {
    let mut targets = Vec::new();
    let mut groups: Vec<i32> = procs.iter().filter_map(|p| pgid(p.pid)).collect();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        let members = group_members(g);
        let inside: Vec<Proc> = procs
            .iter()
            .copied()
            .filter(|p| pgid(p.pid) == Some(g))
            .collect();
        if !members.is_empty() && members.iter().all(|m| procs.contains(m)) {
            let leader_start = members.iter().find(|m| m.pid == g).map(|m| m.start);
            targets.push(Target::Group(Group::new(g, leader_start, inside)));
        } else {
            targets.extend(inside.into_iter().map(Target::One));
        }
    }
    targets
}

/// How a [`terminate`] ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ended {
    /// How long after SIGTERM everything was gone, when SIGTERM sufficed.
    pub after_term: Option<Duration>,
    /// Processes still running after the SIGTERM timeout, sent SIGKILL.
    pub killed: Vec<String>,
    /// Processes still running after SIGKILL too (stuck in the kernel).
    pub left: Vec<String>,
}

/// SIGTERM to every target; waits until their processes are all gone and
/// `also` holds (the port free, say), up to `timeout`; then SIGKILL to what
/// is left, waiting up to `kill_wait`. Every signal re-checks identity. A
/// signal to this stage ends the wait with an `Interrupted` error.
pub fn terminate(
    targets: &mut [Target],
    timeout: Duration,
    kill_wait: Duration,
    log: &Log,
    mut also: impl FnMut() -> bool,
) -> Result<Ended> {
    let poll = Duration::from_millis(5);
    for t in targets.iter_mut() {
        t.signal(Signal::SIGTERM)
            .with_context(|| format!("cannot send SIGTERM to {t}"))?;
    }
    let running = |targets: &mut [Target]| -> Vec<Proc> {
        let mut all: Vec<Proc> = targets.iter_mut().flat_map(Target::members).collect();
        all.sort_unstable_by_key(|p| p.pid);
        all.dedup();
        all
    };
    let mut ended = Ended::default();
    // Polled every few ms: a look at the known members, not all of /proc.
    let any_running = |targets: &mut [Target]| targets.iter_mut().any(Target::is_running);
    let waited = signals::wait_for(timeout, poll, || !any_running(targets) && also())?;
    if waited.is_some() {
        ended.after_term = waited;
        return Ok(ended);
    }
    let stubborn = running(targets);
    ended.killed = stubborn.iter().map(Proc::describe).collect();
    if !stubborn.is_empty() {
        log.warn(format!(
            "still running {} after SIGTERM: {}; sending SIGKILL",
            secs(timeout),
            ended.killed.join(", ")
        ));
    }
    for t in targets.iter_mut() {
        t.signal(Signal::SIGKILL)
            .with_context(|| format!("cannot send SIGKILL to {t}"))?;
    }
    signals::wait_for(kill_wait, poll, || !any_running(targets) && also())?;
    ended.left = running(targets).iter().map(Proc::describe).collect();
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sleeper() -> std::process::Child {
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_process_with_another_start_time_is_never_signalled() {
        let mut child = sleeper();
        let me = Proc::of(child.id() as i32).unwrap();
        // The same pid, as a process that started at another time: what a
        // reused pid looks like.
        let other = Proc {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.is_alive());
        assert!(!other.signal(Signal::SIGKILL).unwrap());
        assert!(me.is_alive(), "a reused pid was signalled");
        assert!(me.signal(Signal::SIGKILL).unwrap());
        child.wait().unwrap();
        // Gone (reaped): nothing is sent, and that is not an error.
        assert!(!me.is_alive());
        assert!(!me.signal(Signal::SIGKILL).unwrap());
    }

    #[test]
    fn a_group_whose_leader_was_replaced_is_never_signalled() {
        let mut leader = {
            use std::os::unix::process::CommandExt;
            let mut c = Command::new("sleep");
            c.arg("30").process_group(0);
            c.spawn().unwrap()
        };
        let me = Proc::of(leader.id() as i32).unwrap();
        // A group whose leader started at another time: the number was reused.
        let mut reused = Group::new(me.pid, Some(me.start + 1), Vec::new());
        assert!(reused.members().is_empty());
        assert!(!reused.signal(Signal::SIGKILL).unwrap());
        assert!(me.is_alive(), "a reused group was signalled");
        let mut ours = Target::Group(Group::new(me.pid, Some(me.start), Vec::new()));
        assert_eq!(ours.members(), vec![me]);
        assert!(ours.signal(Signal::SIGKILL).unwrap());
        leader.wait().unwrap();
        assert!(ours.members().is_empty());
        assert!(!ours.signal(Signal::SIGKILL).unwrap());
    }

    #[test]
    fn the_kill_escalation_rechecks_identity() {
        // A target whose process was replaced between SIGTERM and SIGKILL
        // (simulated by a start time that does not match) gets neither.
        let mut child = sleeper();
        let real = Proc::of(child.id() as i32).unwrap();
        let mut targets = [Target::One(Proc {
            pid: real.pid,
            start: real.start + 1,
        })];
        let ended = terminate(
            &mut targets,
            Duration::from_millis(50),
            Duration::from_millis(50),
            &Log::new("test"),
            || true,
        )
        .unwrap();
        assert!(ended.killed.is_empty() && ended.left.is_empty());
        assert!(
            real.is_alive(),
            "a process with another start time was killed"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn leftovers_are_the_descendants() {
        let me = std::process::id() as i32;
        let mut child = sleeper();
        let kid = Proc::of(child.id() as i32).unwrap();
        let launch = Proc::of(me).unwrap();
        assert!(leftovers(me, launch).contains(&kid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!leftovers(me, launch).contains(&kid));
    }
}
