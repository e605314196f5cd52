//! The five stage binaries laid out like a CodeDeploy bundle ([`Bundle`])
//! and run the way the agent runs a hook: no arguments, stdin closed, the
//! working directory elsewhere, waited for until exit *and* both pipes
//! closed ([`Bundle::hook`], [`Spawned`]).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::netns::Place;
use crate::{wait_until, HookRun};

/// The five stage binaries.
pub const STAGES: [&str; 5] = ["profile", "stop", "start", "health", "switch"];

/// The binaries laid out like a deployment bundle: `ROOT/scripts/STAGE` with
/// `ROOT/nonstop.json`, so each binary finds its config in its parent directory.
#[derive(Debug)]
pub struct Bundle {
    pub root: PathBuf,
    pub config: PathBuf,
}

/// Where cargo put the stage binaries: beside the running executable or one
/// directory up (test binaries live in target/PROFILE/deps).
pub fn binaries_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        if STAGES.iter().all(|s| d.join(s).is_file()) {
            return Ok(d.to_path_buf());
        }
        dir = d.parent();
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
    }
    bail!(
        "the stage binaries are not built next to {}: run `cargo build --workspace --bins` first",
        exe.display()
    )
}

impl Bundle {
    pub fn new(root: &Path, config: &Value) -> Result<Bundle> {
        let scripts = root.join("scripts");
        fs::create_dir_all(&scripts)?;
        let bins = binaries_dir()?;
        for stage in STAGES {
            fs::copy(bins.join(stage), scripts.join(stage))
                .with_context(|| format!("copying {stage} from {}", bins.display()))?;
        }
        let path = root.join("nonstop.json");
        fs::write(&path, serde_json::to_string_pretty(config)?)?;
        Ok(Bundle {
            root: root.to_path_buf(),
            config: path,
        })
    }

    /// The bundle's nonstop.json now.
    pub fn read_config(&self) -> Result<Value> {
        let text = fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", self.config.display()))
    }

    /// Rewrites the bundle's nonstop.json through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) -> Result<()> {
        let mut config = self.read_config()?;
        edit(&mut config);
        fs::write(&self.config, serde_json::to_string_pretty(&config)?)?;
        Ok(())
    }

    pub fn bin(&self, stage: &str) -> PathBuf {
        self.root.join("scripts").join(stage)
    }

    /// Runs a stage the way the CodeDeploy agent runs a hook: no arguments
    /// (unless given), stdin closed, stdout and stderr piped, the working
    /// directory elsewhere, DEPLOYMENT_ID in the environment when given. It
    /// waits until the process exited *and* both pipes closed, at most `limit`.
    pub fn hook(
        &self,
        stage: &str,
        args: &[&str],
        deployment: Option<&str>,
        limit: Duration,
    ) -> Result<HookRun> {
        self.spawn(stage, args, deployment, |_| {})?.finish(limit)
    }

    /// Starts a stage as [`Bundle::hook`] does, without waiting; `adjust`
    /// may change the command first (another user, more environment).
    pub fn spawn(
        &self,
        stage: &str,
        args: &[&str],
        deployment: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Spawned> {
        self.spawn_in(&Place::loopback(), stage, args, deployment, adjust)
    }

    /// [`Bundle::spawn`] on another host: inside `place`'s network namespace.
    pub fn spawn_in(
        &self,
        place: &Place,
        stage: &str,
        args: &[&str],
        deployment: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Spawned> {
        self.spawn_command(
            place.command(self.bin(stage)),
            stage,
            args,
            deployment,
            adjust,
        )
    }

    /// [`Bundle::spawn`] through a command that execs the stage (its pid
    /// is the stage's): `prefix` then the stage's path and `args`, such as
    /// `nsenter --mount=...` ([`crate::SmallFs::prefix`]).
    pub fn spawn_under(
        &self,
        prefix: &[String],
        stage: &str,
        args: &[&str],
        deployment: Option<&str>,
    ) -> Result<Spawned> {
        let (program, rest) = prefix.split_first().context("an empty prefix")?;
        let mut command = Command::new(program);
        command.args(rest).arg(self.bin(stage));
        self.spawn_command(command, stage, args, deployment, |_| {})
    }

    fn spawn_command(
        &self,
        mut command: Command,
        stage: &str,
        args: &[&str],
        deployment: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Result<Spawned> {
        command
            .args(args)
            .current_dir("/")
            .env_remove("NONSTOP_CONFIG")
            .env_remove("DEPLOYMENT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(id) = deployment {
            command.env("DEPLOYMENT_ID", id);
        }
        adjust(&mut command);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot run {stage}"))?;
        let closed = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let out = {
            let closed = closed.clone();
            let pipe = child.stdout.take();
            std::thread::spawn(move || {
                let mut text = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut text);
                }
                closed.lock().unwrap().push(Instant::now());
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let err = {
            let closed = closed.clone();
            let text = stderr_text.clone();
            let pipe = child.stderr.take();
            std::thread::spawn(move || {
                if let Some(mut p) = pipe {
                    let mut buf = [0u8; 4096];
                    loop {
                        match p.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => text
                                .lock()
                                .unwrap()
                                .push_str(&String::from_utf8_lossy(&buf[..n])),
                        }
                    }
                }
                closed.lock().unwrap().push(Instant::now());
            })
        };
        Ok(Spawned {
            stage: stage.to_string(),
            child,
            started,
            closed,
            stderr: stderr_text,
            out: Some(out),
            err: Some(err),
        })
    }
}

/// A stage started by [`Bundle::spawn`] and not yet waited for.
#[derive(Debug)]
pub struct Spawned {
    pub stage: String,
    child: Child,
    started: Instant,
    closed: Arc<Mutex<Vec<Instant>>>,
    stderr: Arc<Mutex<String>>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<()>>,
}

impl Spawned {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it has written to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `text` (true) or `limit` passes or it exits (false).
    pub fn wait_for_stderr(&mut self, text: &str, limit: Duration) -> bool {
        wait_until(limit, || {
            self.stderr.lock().unwrap().contains(text)
                || matches!(self.child.try_wait(), Ok(Some(_)))
        }) && self.stderr.lock().unwrap().contains(text)
    }

    /// Sends it a signal.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), sig);
    }

    /// Waits until it exited and both pipes closed, at most `limit`.
    pub fn finish(mut self, limit: Duration) -> Result<HookRun> {
        let stage = self.stage.clone();
        let mut status = None;
        let closed = self.closed.clone();
        let exited = wait_until(limit, || {
            if let Ok(Some(s)) = self.child.try_wait() {
                status = Some(s);
            }
            status.is_some() && closed.lock().unwrap().len() == 2
        });
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("{stage} did not exit within {limit:?}");
        };
        let elapsed = self.started.elapsed();
        if !exited {
            bail!(
                "{stage} exited ({status}) but its stdout/stderr stayed open for {limit:?}: \
                 a child kept them, and the CodeDeploy agent would wait for the hook timeout"
            );
        }
        let closed_after = closed
            .lock()
            .unwrap()
            .iter()
            .max()
            .map(|t| *t - self.started)
            .unwrap_or(elapsed);
        let stdout = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(h) = self.err.take() {
            let _ = h.join();
        }
        Ok(HookRun {
            stage,
            status,
            stdout,
            stderr: self.stderr_so_far(),
            elapsed,
            closed_after,
        })
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The static stage binaries (tools/build-static, into target/static/),
/// built on first use in this process and shared.
pub fn static_binaries() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(crate::repo_root().join("tools/build-static"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run tools/build-static: {e}"))?;
        if !out.status.success() {
            return Err(format!("tools/build-static failed ({})", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(PathBuf::from(text.lines().last().unwrap_or("").trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// What `cargo bundle --build JAR --config CONFIG --appspec APPSPEC --out
/// OUT` makes (the bundle tool with the static binaries): the path of
/// `OUT.zip`.
pub fn cargo_bundle(jar: &Path, config: &Path, appspec: &Path, out: &Path) -> Result<PathBuf> {
    let made = Command::new(binaries_dir()?.join("bundle"))
        .arg("--build")
        .arg(jar)
        .arg("--config")
        .arg(config)
        .arg("--appspec")
        .arg(appspec)
        .arg("--binaries")
        .arg(static_binaries()?)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .context("cannot run the bundle tool")?;
    if !made.status.success() {
        bail!(
            "bundle failed ({}): {}",
            made.status,
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let zip = out.with_extension("zip");
    if !zip.is_file() {
        bail!("bundle made no {}", zip.display());
    }
    Ok(zip)
}
