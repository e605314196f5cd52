//! A real nginx per test ([`Nginx`]): its own prefix, port, pid file and
//! logs, in the foreground so its master's pid is the harness's child; and
//! the server blocks of the seeds' layouts (include, sites, upstream pair).

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait_until;

/// A private nginx: own prefix, own port on 127.0.0.1, own pid file and logs.
#[derive(Debug)]
pub struct Nginx {
    pub port: u16,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    pub include: PathBuf,
    pub(crate) child: Child,
}

impl Nginx {
    /// The nginx binary: $NGINX, else `nginx` on PATH or in /usr/sbin.
    pub fn binary() -> String {
        if let Ok(b) = std::env::var("NGINX") {
            return b;
        }
        for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
            if Path::new(candidate).exists() {
                return candidate.to_string();
            }
        }
        "nginx".to_string()
    }

    /// Starts nginx in the foreground (`daemon off`, so its pid is ours)
    /// routing `/` to `$service_url` from `include`, which must exist.
    pub fn start(prefix: &Path, port: u16, include: &Path) -> Result<Nginx> {
        Self::start_with(prefix, port, include, &Self::include_server(port, include))
    }

    /// The book's server block: `proxy_pass $service_url`, set by the include.
    pub fn include_server(port: u16, include: &Path) -> String {
        format!(
            "server {{
        listen 127.0.0.1:{port};
        include {include};
        location / {{
            proxy_pass $service_url;
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_read_timeout 30s;
        }}
    }}",
            include = include.display()
        )
    }

    /// A site file of the sites-available layout: a whole server block
    /// proxying to one app port.
    pub fn site(port: u16, app_port: u16) -> String {
        format!(
            "server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://127.0.0.1:{app_port};
        proxy_set_header Host $host;
        proxy_read_timeout 30s;
    }}
}}
"
        )
    }

    /// An upstream over both app ports, the way seed 002 balances: nginx
    /// is never edited and moves a request to the other port when one refuses.
    pub fn pair_server(port: u16, app_ports: [u16; 2]) -> String {
        Self::pair_server_with(port, app_ports, "", "error timeout", "")
    }

    /// [`Nginx::pair_server`] with a pool of idle connections to the apps,
    /// as production configs have it: `keepalive 8;`, HTTP/1.1 and the
    /// `Connection` header cleared, and `retry` as `proxy_next_upstream`.
    pub fn pair_server_pooled(port: u16, app_ports: [u16; 2], retry: &str) -> String {
        Self::pair_server_with(
            port,
            app_ports,
            "\n        keepalive 8;",
            retry,
            "\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";",
        )
    }

    fn pair_server_with(
        port: u16,
        app_ports: [u16; 2],
        upstream: &str,
        retry: &str,
        location: &str,
    ) -> String {
        format!(
            "upstream app {{
        server 127.0.0.1:{a};
        server 127.0.0.1:{b};{upstream}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_next_upstream {retry};{location}
            proxy_set_header Host $host;
            proxy_read_timeout 30s;
        }}
    }}",
            a = app_ports[0],
            b = app_ports[1]
        )
    }

    /// The top of a private nginx.conf under `prefix`, up to the opening
    /// of its `http` block's own lines: pid, logs and temp paths all kept
    /// inside the prefix. The caller adds its includes and servers and
    /// closes the block.
    pub fn conf_head(prefix: &Path) -> String {
        let p = prefix.display();
        format!(
            "worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
"
        )
    }

    /// Starts nginx with `server` as the http block's own part (after the
    /// common settings and `include conf.d/*.conf`); `route` is the file or
    /// symlink a switch changes, kept for the tests.
    pub fn start_with(prefix: &Path, port: u16, route: &Path, server: &str) -> Result<Nginx> {
        fs::create_dir_all(prefix.join("tmp"))?;
        fs::create_dir_all(prefix.join("conf.d"))?;
        let p = prefix.display();
        let conf = prefix.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "{head}    include {p}/conf.d/*.conf;
    {server}
}}
",
                head = Nginx::conf_head(prefix)
            ),
        )?;
        let include = route;
        let mut child = Command::new(Self::binary())
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start nginx: install it (Debian: nginx)")?;
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(child.try_wait(), Ok(Some(_)))
        });
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("nginx exited at start ({status}): {err}");
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            bail!("nginx did not listen on {port} within 10 s");
        }
        Ok(Nginx {
            port,
            prefix: prefix.to_path_buf(),
            conf,
            include: include.to_path_buf(),
            child,
        })
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The master's worker processes now (a reload replaces them all).
    pub fn workers(&self) -> Vec<i32> {
        nonstop_common::sys::procs::children(self.pid())
    }

    /// The workers once none is an old one still finishing (`worker
    /// process is shutting down`, after a reload): a snapshot to compare
    /// later against, which an old worker's exit must not change. Panics
    /// when old workers are still there after 20 s.
    pub fn settled_workers(&self) -> Vec<i32> {
        let settled = wait_until(Duration::from_secs(20), || {
            self.workers()
                .iter()
                .all(|&w| !nonstop_common::sys::procs::cmdline(w).contains("shutting down"))
        });
        assert!(
            settled,
            "nginx's old workers still shutting down after 20 s: {:?}",
            self.workers()
        );
        self.workers()
    }

    /// The argv that runs nginx against this instance, plus `extra`.
    pub fn command(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![
            Self::binary(),
            "-p".into(),
            self.prefix.display().to_string(),
            "-c".into(),
            self.conf.display().to_string(),
            "-e".into(),
            self.prefix.join("error.log").display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    }

    /// Runs `nginx -t` against this instance's config.
    pub fn test_config(&self) -> bool {
        let argv = self.command(&["-t"]);
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Writes `conf` as its config (which must pass `nginx -t`), reloads
    /// (SIGHUP) and waits until new workers run and every old one is gone.
    pub fn reload_with(&self, conf: &str) -> Result<()> {
        fs::write(&self.conf, conf)?;
        anyhow::ensure!(self.test_config(), "nginx -t fails on:\n{conf}");
        let old = self.workers();
        kill(Pid::from_raw(self.pid()), Signal::SIGHUP)?;
        let done = wait_until(Duration::from_secs(20), || {
            let now = self.workers();
            !now.is_empty() && now.iter().all(|w| !old.contains(w))
        });
        anyhow::ensure!(done, "nginx's old workers {old:?} did not go within 20 s");
        Ok(())
    }
}

impl Nginx {
    /// Stops it (SIGQUIT, graceful) and waits for the master to exit.
    pub fn quit(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGQUIT: graceful shutdown of the master and its workers.
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGQUIT);
        let quit = wait_until(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !quit {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.quit();
    }
}
