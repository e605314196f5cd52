//! The harness behind nonstop's end-to-end tests, its demo and its benchmark:
//! real parts only.
//!
//! - [`TestDir`]: a private temp directory per test, removed afterwards;
//! - [`Jars`]: the demo app (examples/demo-app) compiled with javac, one jar per version;
//! - [`pyz`]: the Python demo app (examples/demo-py), a non-JVM app, zipped per version;
//! - [`Nginx`]: a real nginx with its own prefix on a free loopback port;
//! - [`Bundle`]: the five binaries and a `nonstop.json`, laid out like a
//!   CodeDeploy bundle, run the way the agent runs hooks ([`Bundle::hook`]);
//! - [`Load`]: clients requesting through nginx the whole time, counting failures;
//! - [`netns`]: two hosts on one machine (network namespaces), for nginx on another host.
//!
//! Every process the harness starts is stopped by its pid when its owner is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

pub mod netns;

use netns::Place;

/// The five stage binaries.
pub const STAGES: [&str; 5] = ["profile", "stop", "start", "health", "switch"];

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

// ---------------------------------------------------------------- temp dirs

/// A temp directory of one test, removed on drop (kept when NONSTOP_KEEP is set).
#[derive(Debug)]
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir()
            .join("nonstop-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir { path }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("NONSTOP_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Where the tests' ports come from: below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768-60999 by default). A port the
/// kernel may hand out as a connection's source port (nginx's own to the
/// live app, under the load the tests run) can be taken between `stop` and
/// `start`, and the app then fails to bind it: a flake, not a finding.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// A port nobody can be using right now: bindable on every address, and
/// outside the kernel's ephemeral range.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports (see [`free_port`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // A different starting point per process and per call, so test
    // binaries running side by side do not all try the same ports first.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let span = u64::from(PORTS.end - PORTS.start);
    let seed = u64::from(std::process::id()) * 7919 + u64::from(nanos) / 1000;
    // Hold them all while choosing, so none is handed out twice.
    let mut held: Vec<(u16, TcpListener)> = Vec::new();
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = PORTS.start + ((seed + k * 37) % span) as u16;
        if (ephemeral.0..=ephemeral.1).contains(&port) || held.iter().any(|(p, _)| *p == port) {
            continue;
        }
        // The wildcard address: it conflicts with a listener or a
        // connection on any local address, as the app's bind would.
        if let Ok(l) = TcpListener::bind(("0.0.0.0", port)) {
            held.push((port, l));
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports in {PORTS:?}");
    held.into_iter().map(|(p, _)| p).collect()
}

// ---------------------------------------------------------------- processes

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. For processes the
/// harness itself is responsible for.
pub fn terminate(pid: i32, grace: Duration) {
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid.as_raw()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// True while the pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Polls until `cond` or the limit; `true` when `cond` held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------- HTTP

/// One GET on a new connection (`Connection: close`), the way a fresh
/// client reaches nginx. Returns status and body.
pub fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header in {:?}", text))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    Ok((status, body.to_string()))
}

// ---------------------------------------------------------------- demo jars

/// The demo app, compiled once, packed into jars that differ in version.
#[derive(Debug)]
pub struct Jars {
    classes: PathBuf,
    dir: PathBuf,
}

impl Jars {
    /// Compiles examples/demo-app/Demo.java into `dir/classes`.
    pub fn build(dir: &Path) -> Result<Jars> {
        let classes = dir.join("classes");
        fs::create_dir_all(&classes)?;
        let source = repo_root().join("examples/demo-app/Demo.java");
        let out = Command::new("javac")
            .args(["-nowarn", "-XDignore.symbol.file", "-d"])
            .arg(&classes)
            .arg(&source)
            .output()
            .context("cannot run javac: install a JDK (Debian: default-jdk-headless)")?;
        if !out.status.success() {
            bail!("javac failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Jars {
            classes,
            dir: dir.to_path_buf(),
        })
    }

    /// A jar whose GET / answers `demo VERSION PROFILE`, written to `dest`.
    pub fn jar(&self, version: &str, dest: &Path) -> Result<PathBuf> {
        let vdir = self.dir.join(format!("version-{version}"));
        fs::create_dir_all(&vdir)?;
        fs::write(vdir.join("version.txt"), version)?;
        let tmp = self.dir.join(format!("{version}.jar.tmp"));
        let out = Command::new("jar")
            .args(["--create", "--file"])
            .arg(&tmp)
            .args(["--main-class", "Demo", "-C"])
            .arg(&self.classes)
            .arg(".")
            .arg("-C")
            .arg(&vdir)
            .arg("version.txt")
            .output()
            .context("cannot run jar: install a JDK (Debian: default-jdk-headless)")?;
        if !out.status.success() {
            bail!("jar failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        // Renamed into place, the way a CodeDeploy agent lays files down.
        fs::rename(&tmp, dest)?;
        Ok(dest.to_path_buf())
    }
}

/// The Python demo app (examples/demo-py/server.py) and a version.txt packed
/// by `python3 -m zipapp` into `dest`: one file that carries its version, as
/// a jar does, run by `python3 DEST`.
pub fn pyz(build: &Path, version: &str, dest: &Path) -> Result<PathBuf> {
    let src = build.join(format!("py-{version}"));
    fs::create_dir_all(&src)?;
    fs::copy(
        repo_root().join("examples/demo-py/server.py"),
        src.join("server.py"),
    )?;
    fs::write(src.join("version.txt"), version)?;
    let tmp = build.join(format!("{version}.pyz.tmp"));
    let out = Command::new("python3")
        .args(["-m", "zipapp"])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .args(["-m", "server:main"])
        .output()
        .context("cannot run python3: install it (Debian: python3)")?;
    if !out.status.success() {
        bail!(
            "python3 -m zipapp failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(&tmp, dest)?;
    Ok(dest.to_path_buf())
}

// ---------------------------------------------------------------- nginx

/// A private nginx: own prefix, own port on 127.0.0.1, own pid file and logs.
#[derive(Debug)]
pub struct Nginx {
    pub port: u16,
    pub prefix: PathBuf,
    pub conf: PathBuf,
    pub include: PathBuf,
    child: Child,
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
        format!(
            "upstream app {{
        server 127.0.0.1:{a};
        server 127.0.0.1:{b};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_next_upstream error timeout;
            proxy_set_header Host $host;
            proxy_read_timeout 30s;
        }}
    }}",
            a = app_ports[0],
            b = app_ports[1]
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
    include {p}/conf.d/*.conf;
    {server}
}}
"
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
        nonstop_common::procs::children(self.pid())
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

// ---------------------------------------------------------------- the bundle

/// What one hook run gave.
#[derive(Debug)]
pub struct HookRun {
    pub stage: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
    /// From spawn to both stdout and stderr closed (what the CodeDeploy agent waits for).
    pub closed_after: Duration,
}

impl HookRun {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics with the hook's output unless it exited 0.
    pub fn assert_ok(&self) -> &HookRun {
        assert!(
            self.status.success(),
            "{} failed ({}):\n{}{}",
            self.stage,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

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
        let mut command = place.command(self.bin(stage));
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

// ---------------------------------------------------------------- compose

/// A Docker Compose project of the demo server (examples/demo-server), built
/// here into `FROM scratch` images (no registry is reachable): services
/// blue and green on the two ports, and blue-db, an unrelated service that
/// every deployment must leave running (and whose name a `grep blue` would
/// wrongly match). `down` and the images are removed on drop.
#[derive(Debug)]
pub struct ComposeProject {
    pub name: String,
    pub file: PathBuf,
    pub image: String,
    dir: PathBuf,
    versions: Mutex<Vec<String>>,
}

impl ComposeProject {
    pub fn create(dir: &Path, ports: [u16; 2], startup_delay_ms: u64) -> Result<ComposeProject> {
        fs::create_dir_all(dir)?;
        // The static demo server, std only: rustc alone builds it.
        let source = repo_root().join("examples/demo-server/main.rs");
        let out = Command::new("rustc")
            .args([
                "-O",
                "--edition",
                "2021",
                "-C",
                "target-feature=+crt-static",
                "-o",
            ])
            .arg(dir.join("demo-server"))
            .arg(&source)
            .output()
            .context("cannot run rustc")?;
        if !out.status.success() {
            bail!(
                "rustc {}: {}",
                source.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY demo-server /demo-server\nCOPY version.txt /version.txt\nENTRYPOINT [\"/demo-server\"]\n",
        )?;
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "nonstop{}x{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let image = format!("nonstop-demo-{name}");
        let [p1, p2] = ports;
        let service = |profile: &str, port: u16| {
            format!(
                "  {{name}}:
    image: {image}:current
    environment:
      PROFILE: {profile}
      PORT: \"{port}\"
      STARTUP_DELAY_MS: \"{startup_delay_ms}\"
    ports:
      - \"127.0.0.1:{port}:{port}\"
    stop_grace_period: 20s
"
            )
        };
        let file = dir.join("docker-compose.yml");
        fs::write(
            &file,
            format!(
                // blue-db stands in for the database the seed's compose file holds.
                "version: \"3.7\"\nservices:\n{}{}  blue-db:\n    image: {image}:db\n    environment:\n      PROFILE: db\n      PORT: \"7000\"\n",
                service("real1", p1).replace("{name}", "blue"),
                service("real2", p2).replace("{name}", "green"),
            ),
        )?;
        let project = ComposeProject {
            name,
            file,
            image,
            dir: dir.to_path_buf(),
            versions: Mutex::new(Vec::new()),
        };
        project.build("db")?;
        project.compose(&["up", "-d", "--no-deps", "blue-db"])?;
        Ok(project)
    }

    /// Builds the image of `version` (`IMAGE:version`).
    pub fn build(&self, version: &str) -> Result<()> {
        fs::write(self.dir.join("version.txt"), version)?;
        let tag = format!("{}:{version}", self.image);
        let out = Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(&self.dir)
            .output()
            .context("cannot run docker")?;
        if !out.status.success() {
            bail!(
                "docker build {tag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.versions.lock().unwrap().push(tag);
        Ok(())
    }

    /// Builds `version` and makes it the image the compose file names.
    pub fn release(&self, version: &str) -> Result<()> {
        self.build(version)?;
        let current = format!("{}:current", self.image);
        let out = Command::new("docker")
            .args(["tag", &format!("{}:{version}", self.image), &current])
            .output()?;
        if !out.status.success() {
            bail!("docker tag: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut v = self.versions.lock().unwrap();
        if !v.contains(&current) {
            v.push(current);
        }
        Ok(())
    }

    /// Runs docker-compose on this project.
    pub fn compose(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("docker-compose")
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.name])
            .args(args)
            .output()
            .context("cannot run docker-compose")?;
        if !out.status.success() {
            bail!(
                "docker-compose {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The id of the running container of `service`, if any.
    pub fn running(&self, service: &str) -> Option<String> {
        let out = Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter"])
            .arg(format!("label=com.docker.compose.project={}", self.name))
            .arg("--filter")
            .arg(format!("label=com.docker.compose.service={service}"))
            .output()
            .ok()?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!id.is_empty()).then_some(id)
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-t", "2", "--remove-orphans"]);
        let tags = self.versions.lock().map(|v| v.clone()).unwrap_or_default();
        for tag in tags {
            let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
        }
    }
}

// ---------------------------------------------------------------- sshd

/// A private OpenSSH server on a free loopback port (or at a namespace's
/// address), with its own host key and one client key pair made for it; it
/// lets in only the current user with that key. Stopped by pid on drop.
#[derive(Debug)]
pub struct Sshd {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    child: Child,
}

impl Sshd {
    pub fn start(dir: &Path) -> Result<Sshd> {
        Self::start_in(dir, &Place::loopback(), free_port())
    }

    /// Starts it in `place`, listening on that place's address and `port`.
    pub fn start_in(dir: &Path, place: &Place, port: u16) -> Result<Sshd> {
        fs::create_dir_all(dir)?;
        let keygen = |name: &str| -> Result<()> {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "nonstop-test", "-f"])
                .arg(dir.join(name))
                .output()
                .context("cannot run ssh-keygen: install openssh-client")?;
            if !out.status.success() {
                bail!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        keygen("host_key")?;
        keygen("client_key")?;
        fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        let user = Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
        let d = dir.display();
        let address = place.address.to_string();
        let conf = dir.join("sshd_config");
        fs::write(
            &conf,
            format!(
                "Port {port}
ListenAddress {address}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
LogLevel ERROR
"
            ),
        )?;
        // sshd run as root insists on its privilege separation directory,
        // which Debian's package creates only when the service starts.
        if user == "root" {
            fs::create_dir_all("/run/sshd")?;
        }
        let log = fs::File::create(dir.join("sshd.log"))?;
        let mut child = place
            .command("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start /usr/sbin/sshd: install openssh-server")?;
        let up = wait_until(Duration::from_secs(10), || {
            place.connects(place.address, port) || matches!(child.try_wait(), Ok(Some(_)))
        });
        if !up || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "sshd did not listen on {port}: {}",
                fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
        }
        let host_key = fs::read_to_string(dir.join("host_key.pub"))?;
        let known_hosts = dir.join("known_hosts");
        let host = if port == 22 {
            address.clone()
        } else {
            format!("[{address}]:{port}")
        };
        fs::write(&known_hosts, format!("{host} {host_key}"))?;
        Ok(Sshd {
            address,
            port,
            user,
            identity: dir.join("client_key"),
            known_hosts,
            child,
        })
    }

    /// The `nginx.ssh` section that reaches this server, host key checked.
    pub fn config(&self) -> Value {
        json!({
            "destination": format!("{}@{}", self.user, self.address),
            "port": self.port,
            "identity": self.identity,
            "options": [
                "-o", format!("UserKnownHostsFile={}", self.known_hosts.display()),
                "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes"
            ]
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        terminate(self.pid(), Duration::from_secs(5));
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- a whole setup

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
        let prefix = dir.join("nginx");
        let conf_d = prefix.join("conf.d");
        fs::create_dir_all(&conf_d)?;
        let include = conf_d.join("service-url.inc");
        let sites = [
            prefix.join("sites-available/blue"),
            prefix.join("sites-available/green"),
        ];
        let link = prefix.join("sites-enabled/default");
        let (nginx, route_config) = match opts.layout {
            Layout::Include => {
                fs::write(
                    &include,
                    format!("set $service_url http://127.0.0.1:{p1};\n"),
                )?;
                let nginx = Nginx::start(&prefix, nginx_port, &include)?;
                let route = json!({
                    "include": include,
                    "template": "set $service_url http://127.0.0.1:{port};",
                });
                (nginx, route)
            }
            Layout::Symlink => {
                fs::create_dir_all(prefix.join("sites-available"))?;
                fs::create_dir_all(prefix.join("sites-enabled"))?;
                fs::write(&sites[0], Nginx::site(nginx_port, p1))?;
                fs::write(&sites[1], Nginx::site(nginx_port, p2))?;
                // Relative, as `ln -s ../sites-available/blue default` makes it.
                std::os::unix::fs::symlink("../sites-available/blue", &link)?;
                let server = format!("include {}/sites-enabled/*;", prefix.display());
                let nginx = Nginx::start_with(&prefix, nginx_port, &link, &server)?;
                let route = json!({
                    "mode": "symlink",
                    "link": link,
                    "sites": {"real1": sites[0], "real2": sites[1]},
                });
                (nginx, route)
            }
            Layout::Pair => {
                let server = Nginx::pair_server(nginx_port, [p1, p2]);
                let nginx = Nginx::start_with(&prefix, nginx_port, &include, &server)?;
                (nginx, json!({"mode": "upstream-pair"}))
            }
        };
        let mut command = if opts.python {
            vec![
                "python3".to_string(),
                "{artifact}".into(),
                "--spring.profiles.active={profile}".into(),
                "--server.port={port}".into(),
                format!("--demo.startup.delay.ms={}", opts.startup_delay_ms),
            ]
        } else {
            Vec::new()
        };
        let java = vec![
            "java".to_string(),
            "-Dspring.profiles.active={profile}".into(),
            "-Dserver.port={port}".into(),
            format!("-Ddemo.startup.delay.ms={}", opts.startup_delay_ms),
            "-Xshare:auto".into(),
            "-XX:TieredStopAtLevel=1".into(),
        ];
        if !opts.python {
            command.extend(java);
            command.extend(opts.java_opts.iter().cloned());
            command.extend(["-jar".to_string(), "{artifact}".into()]);
        }
        let config = json!({
            "profiles": [{"name": "real1", "port": p1}, {"name": "real2", "port": p2}],
            "probe_url": format!("http://127.0.0.1:{nginx_port}/profile"),
            "state_dir": ".nonstop",
            "app": {
                "dir": app_dir,
                "artifact": if opts.python { "zip/*.pyz" } else { "zip/*.jar" },
                "command": command,
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
        });
        let mut config = config;
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
        if let (Some(n), Some(r)) = (config["nginx"].as_object_mut(), route_config.as_object()) {
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

    /// Rewrites the bundle's nonstop.json through `edit`.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) -> Result<()> {
        let mut config: Value = serde_json::from_str(&fs::read_to_string(&self.bundle.config)?)?;
        edit(&mut config);
        fs::write(&self.bundle.config, serde_json::to_string_pretty(&config)?)?;
        Ok(())
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

// ---------------------------------------------------------------- load

/// Fails unless every sample got 200 with a body `demo VERSION PROFILE` of
/// one of `versions` (either profile), and the load ran at all.
pub fn assert_all_served(samples: &[Sample], versions: &[&str]) {
    assert!(samples.len() > 20, "the load hardly ran: {}", samples.len());
    let allowed: Vec<String> = versions
        .iter()
        .flat_map(|v| ["real1", "real2"].map(|p| format!("demo {v} {p}")))
        .collect();
    let bad: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status != 200 || !allowed.contains(&s.body))
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} requests failed, first: {bad:?}",
        samples.iter().filter(|s| s.status != 200).count(),
        samples.len()
    );
}

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// HTTP status, or 0 when the request failed without one.
    pub status: u16,
    pub body: String,
    pub error: Option<String>,
}

/// Client threads that each send one request per call of their request
/// function, `pause` apart, until [`Clients::finish`]: the scaffolding of
/// [`Load`] and of the benchmark's load.
#[derive(Debug)]
pub struct Clients<S> {
    started: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<S>>>,
}

/// Each client is bounded in samples too, so a runaway run cannot eat memory.
const MAX_SAMPLES_PER_CLIENT: usize = 1_000_000;

impl<S: Send + 'static> Clients<S> {
    /// Starts `count` clients; `make(i)` gives client `i` its request
    /// function, called with the moment the load began.
    pub fn start<F>(count: usize, pause: Duration, mut make: impl FnMut(usize) -> F) -> Clients<S>
    where
        F: FnMut(Instant) -> S + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = (0..count)
            .map(|i| {
                let stop = stop.clone();
                let mut request = make(i);
                std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) && samples.len() < MAX_SAMPLES_PER_CLIENT {
                        samples.push(request(started));
                        std::thread::sleep(pause);
                    }
                    samples
                })
            })
            .collect();
        Clients {
            started,
            stop,
            threads,
        }
    }

    /// When the load began.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the clients; every sample, client by client.
    pub fn finish(self) -> Vec<S> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

/// Clients that GET a path through nginx in a loop, each request on a new
/// connection, `pause` apart, until stopped.
#[derive(Debug)]
pub struct Load(Clients<Sample>);

impl Load {
    pub fn start(port: u16, path: &str, clients: usize, pause: Duration) -> Load {
        Load(Clients::start(clients, pause, |_| {
            let path = path.to_string();
            move |t0: Instant| {
                let sent = Instant::now();
                let (status, body, error) = match http_get(port, &path, Duration::from_secs(10)) {
                    Ok((s, b)) => (s, b, None),
                    Err(e) => (0, String::new(), Some(e.to_string())),
                };
                Sample {
                    at: sent - t0,
                    latency: sent.elapsed(),
                    status,
                    body,
                    error,
                }
            }
        }))
    }

    /// When the load began: [`Sample::at`] counts from here.
    pub fn started(&self) -> Instant {
        self.0.started()
    }

    /// Stops the clients and returns every sample, in time order.
    pub fn finish(self) -> Vec<Sample> {
        let mut all = self.0.finish();
        all.sort_by_key(|s| s.at);
        all
    }
}
