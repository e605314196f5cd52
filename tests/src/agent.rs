//! The real CodeDeploy agent's code on a test's [`Server`]: [`Agent`] finds
//! the agent's source (NONSTOP_CODEDEPLOY_AGENT, which `.ci/run` points at
//! `../shared/codedeploy-agent`) and runs tests/agent/deploy.rb, which plays
//! the service's part and hands the host's commands to the agent's own
//! Installer and HookExecutor; [`Deployment`] is what the agent reported.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::server::AGENT_PATH;
use crate::{repo_root, Server};

/// The environment variable naming the agent's source tree.
pub const AGENT_VAR: &str = "NONSTOP_CODEDEPLOY_AGENT";

/// The agent's source, and the driver that runs it.
#[derive(Debug, Clone)]
pub struct Agent {
    pub source: PathBuf,
    pub driver: PathBuf,
}

/// One deployment's options beyond the bundle and the id.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Delete the agent's cleanup list of the previous deployment before
    /// Install, as on a host whose agent lost it (reinstalled, another
    /// deployment group copying to the same place).
    pub forget_cleanup: bool,
}

/// What the agent reported for one command of a deployment.
#[derive(Debug, Clone)]
pub struct Reported {
    pub command: String,
    /// "Succeeded" or "Failed".
    pub status: String,
    /// The agent's diagnostics: error_code, script_name, message, log.
    pub diagnostics: Value,
    /// The hook's script log (what the scripts printed), for hooks.
    pub script_log: String,
}

/// A deployment as the agent reported it, command by command.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: String,
    pub reported: Vec<Reported>,
    pub elapsed: Duration,
    pub stderr: String,
}

impl Deployment {
    /// Whether every command succeeded.
    pub fn succeeded(&self) -> bool {
        !self.reported.is_empty() && self.reported.iter().all(|r| r.status == "Succeeded")
    }

    /// The command that failed, if one did.
    pub fn failed(&self) -> Option<&Reported> {
        self.reported.iter().find(|r| r.status != "Succeeded")
    }

    /// Everything the agent reported, for a failing assertion's message.
    pub fn describe(&self) -> String {
        let mut s = format!("deployment {} ({:?}):\n", self.id, self.elapsed);
        for r in &self.reported {
            s.push_str(&format!(
                "  {} {}: {}\n{}",
                r.command, r.status, r.diagnostics, r.script_log
            ));
        }
        if !self.stderr.is_empty() {
            s.push_str(&format!("  driver's stderr: {}\n", self.stderr));
        }
        s
    }

    /// Panics with everything the agent said unless every command succeeded.
    #[track_caller]
    pub fn assert_succeeded(&self) -> &Deployment {
        assert!(self.succeeded(), "{}", self.describe());
        self
    }
}

impl Agent {
    /// The agent named by NONSTOP_CODEDEPLOY_AGENT, or why there is none
    /// (the suite then says it skipped, and how to get the agent).
    pub fn find() -> std::result::Result<Agent, String> {
        let how = format!(
            "set {AGENT_VAR} to a clone of github.com/aws/aws-codedeploy-agent \
             (.ci/run points it at ../shared/codedeploy-agent); Debian's ruby and ruby-logging run it"
        );
        let Some(source) = std::env::var_os(AGENT_VAR).filter(|v| !v.is_empty()) else {
            return Err(format!("{AGENT_VAR} is not set: {how}"));
        };
        let source = PathBuf::from(source);
        let hook_executor = source.join("lib/instance_agent/plugins/codedeploy/hook_executor.rb");
        if !hook_executor.is_file() {
            return Err(format!(
                "{AGENT_VAR}={} has no {}: {how}",
                source.display(),
                hook_executor.display()
            ));
        }
        let source = source.canonicalize().map_err(|e| e.to_string())?;
        Ok(Agent {
            source,
            driver: repo_root().join("tests/agent/deploy.rb"),
        })
    }

    /// Runs one deployment of the zip at the server path `bundle` on
    /// `server`, as root with the agent service's environment, and returns
    /// what the agent reported. Fails only when the driver itself could not
    /// run (a failed deployment is an answer, not an error).
    pub fn deploy(
        &self,
        server: &Server,
        bundle: &str,
        id: &str,
        options: &DeployOptions,
    ) -> Result<Deployment> {
        let mut c = server.command("env");
        c.arg("-i")
            .arg(format!("PATH={AGENT_PATH}"))
            .arg("LANG=C.UTF-8")
            .arg(format!("{AGENT_VAR}={}", self.source.display()))
            .arg("ruby")
            .arg(&self.driver)
            .args(["--bundle", bundle, "--deployment-id", id]);
        if options.forget_cleanup {
            c.arg("--forget-cleanup");
        }
        let started = Instant::now();
        let out = c
            .output()
            .context("cannot run ruby (Debian: ruby, ruby-logging)")?;
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut reported = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("the driver printed {line:?}; stderr: {stderr}"))?;
            reported.push(Reported {
                command: v["command"].as_str().unwrap_or_default().to_string(),
                status: v["status"].as_str().unwrap_or_default().to_string(),
                diagnostics: v["diagnostics"].clone(),
                script_log: v["script_log"].as_str().unwrap_or_default().to_string(),
            });
        }
        if reported.is_empty() || !matches!(out.status.code(), Some(0 | 1)) {
            bail!(
                "the agent's driver failed ({}) for {id}: {stderr}",
                out.status
            );
        }
        Ok(Deployment {
            id: id.to_string(),
            reported,
            elapsed,
            stderr,
        })
    }
}
