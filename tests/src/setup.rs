//! The book's whole setup wired together ([`Setup`]): a private nginx in one
//! of the seeds' layouts ([`Layout`]), the demo app, a bundle and its config,
//! optionally behind sshd or as Compose services ([`SetupOptions`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use crate::{
    alive, free_ports, http_get, pyz, readme_blocks, repo_root, terminate, Bundle, ComposeProject,
    HookRun, Jars, Nginx, Sshd, TestDir,
};

/// nginx, the demo jars, a bundle and an app directory, wired together: the
/// book's setup on loopback ports. Apps started through it are stopped by
/// pid (from the `launched-*.json` state files) on drop.
#[derive(Debug)]
pub struct Setup {
    pub dir: TestDir,
    pub jars: Jars,
    pub app_dir: PathBuf,
    pub ports: [u16; 2],
    pub bundle: Bundle,
    /// The sshd nonstop reaches nginx through, for [`SetupOptions::remote`].
    pub sshd: Option<Sshd>,
    /// The Compose project, for [`SetupOptions::compose`].
    pub compose: Option<ComposeProject>,
    /// The Python demo app instead of the jar, for [`SetupOptions::python`].
    pub python: bool,
    // Dropped last: nginx outlives the apps' shutdown.
    pub nginx: Nginx,
}

/// How the private nginx is told where to route: the setups of the seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The book's include file with `set $service_url ...;`.
    #[default]
    Include,
    /// sites-available/{blue,green} and a symlink sites-enabled/default (seed 004).
    Symlink,
    /// An upstream over both ports, never edited (seed 002).
    Pair,
    /// `root` is a symlink nonstop/live -> ports/PORT, and a `map` on
    /// `$realpath_root` picks the upstream: switched without a reload.
    Realpath,
}

/// Knobs for [`Setup::new`].
#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub startup_delay_ms: u64,
    /// Extra `-D` options for the app.
    pub java_opts: Vec<String>,
    pub layout: Layout,
    /// `app.retire` in the config.
    pub retire: bool,
    /// nginx "on another host": its files and commands reached only through
    /// a private sshd on a loopback port (seed 000).
    pub remote: bool,
    /// The app as Docker Compose services (blue, green, and an unrelated
    /// blue-db) of images built here, instead of `java -jar` processes.
    pub compose: bool,
    /// The app as the Python demo server (examples/demo-py), a non-JVM app
    /// that does not unblock signals itself, instead of the demo jar.
    pub python: bool,
    /// Upstream pair: the upstream keeps a pool of idle connections, and
    /// nginx retries with these `proxy_next_upstream` words
    /// ([`Nginx::pair_server_pooled`]).
    pub pair_pool: Option<&'static str>,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            startup_delay_ms: 300,
            java_opts: Vec::new(),
            layout: Layout::Include,
            retire: false,
            remote: false,
            compose: false,
            python: false,
            pair_pool: None,
        }
    }
}

impl Setup {
    /// Starts a private nginx whose include routes to the first profile's
    /// port (nothing listens there yet) and writes the bundle and its config.
    pub fn new(name: &str, opts: &SetupOptions) -> Result<Setup> {
        let dir = TestDir::new(name);
        let jars = Jars::build(&dir.join("build"))?;
        let [nginx_port, p1, p2] = free_ports(3)[..] else {
            unreachable!()
        };
        let app_dir = dir.join("app");
        fs::create_dir_all(app_dir.join("zip"))?;
        let (nginx, route) = start_nginx(opts, &dir.join("nginx"), nginx_port, [p1, p2])?;
        let mut config = base_config(opts, &nginx, &app_dir, [p1, p2]);
        let compose = if opts.compose {
            let project =
                ComposeProject::create(&dir.join("compose"), [p1, p2], opts.startup_delay_ms)?;
            config["app"]["backend"] = json!("compose");
            config["app"]["compose"] = json!({
                "file": project.file,
                "project": project.name,
                "services": {"real1": "blue", "real2": "green"},
            });
            Some(project)
        } else {
            None
        };
        let sshd = if opts.remote {
            let sshd = Sshd::start(&dir.join("sshd"))?;
            config["nginx"]["ssh"] = sshd.config();
            Some(sshd)
        } else {
            None
        };
        if let (Some(n), Some(r)) = (config["nginx"].as_object_mut(), route.as_object()) {
            n.extend(r.clone());
            if opts.layout == Layout::Pair {
                // nginx is never edited in this mode; `nginx.test` stays,
                // for the `nginx -T` that reads the upstream.
                n.remove("reload");
            }
        }
        let bundle = Bundle::new(&dir.join("bundle"), &config)?;
        Ok(Setup {
            dir,
            jars,
            app_dir,
            ports: [p1, p2],
            bundle,
            sshd,
            compose,
            python: opts.python,
            nginx,
        })
    }

    /// The bundle's nonstop.json now.
    pub fn config(&self) -> Result<Value> {
        self.bundle.read_config()
    }

    /// Rewrites the bundle's nonstop.json through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) -> Result<()> {
        self.bundle.edit_config(edit)
    }

    /// The include file's bytes now.
    pub fn include(&self) -> Vec<u8> {
        fs::read(&self.nginx.include).unwrap_or_default()
    }

    /// Drops a new build into the artifact directory (newest by mtime); with
    /// Compose, builds the image of that version and tags it as the one the
    /// compose file names, as a CI pipeline pushing `:current` would.
    pub fn drop_jar(&self, version: &str) -> Result<PathBuf> {
        if let Some(c) = &self.compose {
            c.release(version)?;
            return Ok(c.file.clone());
        }
        if self.python {
            return pyz(
                &self.dir.join("build"),
                version,
                &self.app_dir.join("zip").join(format!("demo-{version}.pyz")),
            );
        }
        self.jars.jar(
            version,
            &self.app_dir.join("zip").join(format!("demo-{version}.jar")),
        )
    }

    pub fn state_dir(&self) -> PathBuf {
        self.app_dir.join(".nonstop")
    }

    /// The pid `start` recorded for a profile.
    pub fn launched_pid(&self, profile: &str) -> Option<i32> {
        let text =
            fs::read_to_string(self.state_dir().join(format!("launched-{profile}.json"))).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["pid"].as_i64().map(|p| p as i32)
    }

    /// GET through nginx.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.nginx.port, path, Duration::from_secs(5))
    }

    /// A GET of `/slow?ms=MS` through nginx, returned once `profile`'s app
    /// has logged that it began (the demo app's `slow request for MS ms
    /// began`): in flight for sure, not merely sent, however loaded the
    /// machine. Panics when the app never logs it within 10 s.
    pub fn slow_request_through_nginx(
        &self,
        profile: &str,
        ms: u64,
    ) -> std::thread::JoinHandle<Result<(u16, String)>> {
        let log = self.app_dir.join(format!("logs/{profile}.log"));
        let line = format!("slow request for {ms} ms began");
        let began = || {
            fs::read_to_string(&log)
                .unwrap_or_default()
                .matches(&line)
                .count()
        };
        let before = began();
        let port = self.nginx.port;
        let slow = std::thread::spawn(move || {
            http_get(port, &format!("/slow?ms={ms}"), Duration::from_secs(30))
        });
        assert!(
            crate::wait_until(Duration::from_secs(10), || began() > before),
            "the slow request never reached {profile}'s app ({})",
            log.display()
        );
        slow
    }

    /// Runs one stage as a hook.
    pub fn hook(&self, stage: &str, args: &[&str], deployment: Option<&str>) -> Result<HookRun> {
        self.bundle
            .hook(stage, args, deployment, Duration::from_secs(90))
    }

    /// Brings version `version` up on the first profile, as an operator would
    /// by hand on a fresh server.
    pub fn bootstrap(&self, version: &str) -> Result<()> {
        self.start_by_hand("real1", version)
    }

    /// Brings `version` up on `profile` without switching, as an operator
    /// would by hand: `start --profile P`, then `health --profile P --no-switch`.
    pub fn start_by_hand(&self, profile: &str, version: &str) -> Result<()> {
        self.drop_jar(version)?;
        self.hook("start", &["--profile", profile], None)?
            .assert_ok();
        self.hook("health", &["--profile", profile, "--no-switch"], None)?
            .assert_ok();
        Ok(())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Before the fields go: `dir` goes first and holds the compose file
        // that `down` needs.
        if let Some(project) = self.compose.take() {
            drop(project);
            return;
        }
        for profile in ["real1", "real2"] {
            if let Some(pid) = self.launched_pid(profile) {
                if alive(pid) {
                    terminate(pid, Duration::from_secs(10));
                }
            }
        }
        // A test may have garbled the state files on purpose: any app still
        // running from this setup's directory is found by its command line.
        for pid in pids_running_from(&self.app_dir) {
            terminate(pid, Duration::from_secs(10));
        }
    }
}

/// Starts the private nginx under `prefix` in `opts.layout`, routing to the
/// first of `app_ports`; with it, the config's `nginx` keys naming its route.
fn start_nginx(
    opts: &SetupOptions,
    prefix: &Path,
    nginx_port: u16,
    app_ports: [u16; 2],
) -> Result<(Nginx, Value)> {
    let [p1, p2] = app_ports;
    let conf_d = prefix.join("conf.d");
    fs::create_dir_all(&conf_d)?;
    let include = conf_d.join("service-url.inc");
    match opts.layout {
        Layout::Include => {
            fs::write(
                &include,
                format!("set $service_url http://127.0.0.1:{p1};\n"),
            )?;
            let nginx = Nginx::start(prefix, nginx_port, &include)?;
            let route = json!({
                "include": include,
                "template": "set $service_url http://127.0.0.1:{port};",
            });
            Ok((nginx, route))
        }
        Layout::Symlink => {
            let sites = [
                prefix.join("sites-available/blue"),
                prefix.join("sites-available/green"),
            ];
            let link = prefix.join("sites-enabled/default");
            fs::create_dir_all(prefix.join("sites-available"))?;
            fs::create_dir_all(prefix.join("sites-enabled"))?;
            fs::write(&sites[0], Nginx::site(nginx_port, p1))?;
            fs::write(&sites[1], Nginx::site(nginx_port, p2))?;
            // Relative, as `ln -s ../sites-available/blue default` makes it.
            std::os::unix::fs::symlink("../sites-available/blue", &link)?;
            let server = format!("include {}/sites-enabled/*;", prefix.display());
            let nginx = Nginx::start_with(prefix, nginx_port, &link, &server)?;
            let route = json!({
                "mode": "symlink",
                "link": link,
                "sites": {"real1": sites[0], "real2": sites[1]},
            });
            Ok((nginx, route))
        }
        Layout::Realpath => realpath_layout(prefix, nginx_port, app_ports),
        Layout::Pair => {
            let server = match opts.pair_pool {
                Some(retry) => Nginx::pair_server_pooled(nginx_port, [p1, p2], retry),
                None => Nginx::pair_server(nginx_port, [p1, p2]),
            };
            let nginx = Nginx::start_with(prefix, nginx_port, &include, &server)?;
            Ok((nginx, json!({"mode": "upstream-pair"})))
        }
    }
}

/// The realpath layout from README's own blocks (`realpath-setup`,
/// `realpath-nginx`, `realpath-config`), with /etc/nginx/nonstop under
/// `prefix`, the book's ports as `app_ports`, nginx on `nginx_port`: the
/// shell block's `mkdir` and `ln` run as written (without sudo; its `chown`
/// and reload are this harness's own nginx started on the config).
fn realpath_layout(prefix: &Path, nginx_port: u16, app_ports: [u16; 2]) -> Result<(Nginx, Value)> {
    let [p1, p2] = app_ports;
    let blocks = readme_blocks(&repo_root().join("README.md"))?;
    let block = |name: &str| -> Result<String> {
        let text = blocks
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.text.clone())
            .with_context(|| format!("README.md has no block {name}"))?;
        Ok(text
            .replace(
                "/etc/nginx/nonstop",
                &prefix.join("nonstop").to_string_lossy(),
            )
            .replace("8081", &p1.to_string())
            .replace("8082", &p2.to_string()))
    };
    let script: Vec<String> = block("realpath-setup")?
        .lines()
        .filter(|l| !l.contains("chown") && !l.contains("nginx -t"))
        .map(|l| l.replace("sudo ", ""))
        .collect();
    let ran = std::process::Command::new("bash")
        .args(["-euc", &script.join("\n")])
        .status()?;
    anyhow::ensure!(ran.success(), "README's realpath-setup block failed: {ran}");
    let server =
        block("realpath-nginx")?.replace("listen 80;", &format!("listen 127.0.0.1:{nginx_port};"));
    let config: Value = serde_json::from_str(&format!("{{{}}}", block("realpath-config")?))
        .context("README's realpath-config block")?;
    let link = PathBuf::from(config["nginx"]["link"].as_str().unwrap_or_default());
    let nginx = Nginx::start_with(prefix, nginx_port, &link, &server)?;
    Ok((nginx, config["nginx"].clone()))
}

/// `app.command`: the Python demo server, or `java` with the options asked
/// for and `-jar {artifact}`.
fn app_command(opts: &SetupOptions) -> Vec<String> {
    if opts.python {
        return vec![
            "python3".to_string(),
            "{artifact}".into(),
            "--spring.profiles.active={profile}".into(),
            "--server.port={port}".into(),
            format!("--demo.startup.delay.ms={}", opts.startup_delay_ms),
        ];
    }
    let mut command = vec![
        "java".to_string(),
        "-Dspring.profiles.active={profile}".into(),
        "-Dserver.port={port}".into(),
        format!("-Ddemo.startup.delay.ms={}", opts.startup_delay_ms),
        "-Xshare:auto".into(),
        "-XX:TieredStopAtLevel=1".into(),
    ];
    command.extend(opts.java_opts.iter().cloned());
    command.extend(["-jar".to_string(), "{artifact}".into()]);
    command
}

/// The config of a setup before its route, Compose and ssh parts: both
/// profiles, the probe through `nginx`, the app in `app_dir`, nginx's commands.
fn base_config(opts: &SetupOptions, nginx: &Nginx, app_dir: &Path, ports: [u16; 2]) -> Value {
    let [p1, p2] = ports;
    json!({
        "profiles": [{"name": "real1", "port": p1}, {"name": "real2", "port": p2}],
        "probe_url": format!("http://127.0.0.1:{}/profile", nginx.port),
        "state_dir": ".nonstop",
        "app": {
            "dir": app_dir,
            "artifact": if opts.python { "zip/*.pyz" } else { "zip/*.jar" },
            "command": app_command(opts),
            "log": "logs/{profile}.log",
            "stop_timeout_secs": 20,
            "start_grace_ms": 1000,
            "retire": opts.retire
        },
        "health": {"path": "/profile", "expect": "{profile}", "interval_ms": 50, "timeout_secs": 30},
        "nginx": {
            "test": nginx.command(&["-t"]),
            "reload": nginx.command(&["-s", "reload"]),
            "pid_file": nginx.prefix.join("nginx.pid"),
            "confirm_timeout_secs": 10
        }
    })
}

/// Live processes whose command line mentions `dir`.
fn pids_running_from(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != std::process::id() as i32 && alive(pid))
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}
