//! Shipping nonstop: the static stage binaries run in an empty (`FROM
//! scratch`) container, and the CodeDeploy bundle that `bundle` makes in one
//! command deploys, unpacked from its zip and run the way the agent runs
//! hooks, under load through a real nginx, or is refused before anything is
//! written when it could not deploy.
//!
//! The static binaries are built once per run of this suite by
//! tools/build-static (into target/static/) and shared by the tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{
    assert_all_served, binaries_dir, repo_root, Bundle, Load, Setup, SetupOptions, TestDir, STAGES,
};

/// The directory of the static stage binaries, built on first use.
fn static_binaries() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("tools/build-static"))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run tools/build-static: {e}"))?;
        if !out.status.success() {
            return Err(format!("tools/build-static failed ({})", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(PathBuf::from(text.lines().last().unwrap_or("").trim()))
    });
    dir.clone().unwrap()
}

/// The commit this checkout is at, as `--version` should name it.
fn head_commit() -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .unwrap();
    assert!(out.status.success(), "git rev-parse failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A local image, removed on drop.
struct Image(String);

impl Image {
    /// Builds `context` (no registry is reachable, and `FROM scratch` needs none).
    fn build(context: &Path, tag: &str) -> Image {
        let out = Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(context)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Image(tag.to_string())
    }

    /// Runs `argv` in a new container with no network but its own loopback,
    /// `docker_args` (mounts) added.
    fn run(&self, docker_args: &[&str], argv: &[&str]) -> Output {
        Command::new("docker")
            .args(["run", "--rm", "--network", "none"])
            .args(docker_args)
            .arg(&self.0)
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn static_binaries_run_in_an_empty_container() {
    let dir = TestDir::new("ship-scratch");
    let context = dir.join("image");
    fs::create_dir_all(context.join("scripts")).unwrap();
    let bins = static_binaries();
    for stage in STAGES {
        fs::copy(bins.join(stage), context.join("scripts").join(stage)).unwrap();
    }
    // The book's probe (`curl localhost/profile`): nothing listens in the
    // container, and there is no include file yet: a first deployment.
    let config = json!({
        "probe_url": "http://localhost:8080/profile",
        "state_dir": "/state",
        "app": {"dir": "/app"},
        "nginx": {"include": "/etc/nginx/nonstop/service-url.inc"}
    });
    fs::write(context.join("nonstop.json"), config.to_string()).unwrap();
    fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY scripts/ /scripts/\nCOPY nonstop.json /nonstop.json\n",
    )
    .unwrap();
    let image = Image::build(
        &context,
        &format!("nonstop-ship-test:{}", std::process::id()),
    );

    let commit = head_commit();
    for stage in STAGES {
        let out = image.run(&[], &[&format!("/scripts/{stage}"), "--version"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stage} --version in an empty container: {}{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.trim(),
            format!("{stage} {} (commit {commit})", env!("CARGO_PKG_VERSION")),
        );
    }

    // Docker gives every container an /etc/hosts; an empty one stands for a
    // system whose name lookup a static binary cannot use (no `localhost`
    // line, or NSS modules it cannot load): the probe must not depend on it.
    let hosts = dir.join("hosts");
    fs::write(&hosts, "").unwrap();
    let mount = format!("{}:/etc/hosts:ro", hosts.display());
    let out = image.run(&["-v", &mount], &["/scripts/profile", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "profile --json: {}\n{stderr}",
        out.status
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    // A first deployment: nothing live, the first profile is next.
    assert_eq!(answer["live"], Value::Null, "{answer:#}");
    assert_eq!(answer["idle"]["profile"], "real1", "{answer:#}");
    assert_eq!(answer["idle"]["port"], 8081, "{answer:#}");
    assert_eq!(answer["error"], Value::Null, "{answer:#}");
    // The probe reached the container's loopback and was refused: `localhost`
    // resolved without glibc's NSS modules, which a static binary lacks.
    let failed = answer["probe"]["failed"].as_str().unwrap_or("");
    assert!(
        failed.ends_with("localhost:8080/profile: connection refused"),
        "{answer:#}"
    );
    assert_eq!(answer["include"]["state"], "missing", "{answer:#}");
    for p in answer["profiles"].as_array().unwrap() {
        assert_eq!(p["listening"], false, "{answer:#}");
    }
}

/// An appspec like the repository's, copying the bundle into `destination`.
fn appspec(destination: &Path, health_timeout: u32) -> String {
    format!(
        "version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: {}/\n\
         hooks:\n  AfterInstall:\n    - location: scripts/stop\n      timeout: 180\n\
         \x20 ApplicationStart:\n    - location: scripts/start\n      timeout: 240\n\
         \x20 ValidateService:\n    - location: scripts/health\n      timeout: {health_timeout}\n",
        destination.display()
    )
}

/// Runs the bundle tool.
fn bundle(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(binaries_dir().unwrap().join("bundle"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Copies the tree `from` into `to`, as the agent's `files:` copy does.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_bundle_made_in_one_command_deploys_from_its_zip_under_load() {
    let setup = Setup::new("ship-bundle", &SetupOptions::default()).unwrap();
    // The server before this deployment: v1 live on real1.
    setup.bootstrap("v1").unwrap();
    assert_eq!(setup.get("/").unwrap(), (200, "demo v1 real1".to_string()));

    // The CI side: the build, the config, the appspec, one command.
    let ci = setup.dir.join("ci");
    fs::create_dir_all(ci.join("build/libs")).unwrap();
    let jar = setup
        .jars
        .jar("v2", &ci.join("build/libs/demo-v2.jar"))
        .unwrap();
    let spec = ci.join("appspec.yml");
    fs::write(&spec, appspec(&setup.app_dir.join("zip"), 180)).unwrap();
    let out_dir = ci.join("dist/app");
    let made = bundle(&[
        "--build".as_ref(),
        jar.as_os_str(),
        "--config".as_ref(),
        setup.bundle.config.as_os_str(),
        "--appspec".as_ref(),
        spec.as_os_str(),
        "--binaries".as_ref(),
        static_binaries().as_os_str(),
        "--out".as_ref(),
        out_dir.as_os_str(),
    ]);
    assert!(
        made.status.success(),
        "bundle: {}\n{}",
        made.status,
        String::from_utf8_lossy(&made.stderr)
    );
    let zip = ci.join("dist/app.zip");
    assert!(zip.is_file(), "no zip at {}", zip.display());

    // The agent's side: the zip unpacked into a new directory, its files:
    // copied to the destination, the hooks run from the unpacked bundle.
    let archive = setup.dir.join("deployment-archive");
    let unzip = Command::new("unzip")
        .args(["-q"])
        .arg(&zip)
        .arg("-d")
        .arg(&archive)
        .status()
        .unwrap();
    assert!(unzip.success(), "unzip failed");
    for file in [
        "appspec.yml",
        "nonstop.json",
        "demo-v2.jar",
        "man/man1/health.1",
        "completions/bash/switch",
    ] {
        assert!(archive.join(file).is_file(), "{file} missing from the zip");
    }
    copy_tree(&archive, &setup.app_dir.join("zip"));
    let shipped = Bundle {
        root: archive.clone(),
        config: archive.join("nonstop.json"),
    };
    let path = std::env::var("PATH").unwrap_or_default();
    let load = Load::start(setup.nginx.port, "/", 2, Duration::from_millis(2));
    for (event, stage) in [
        ("AfterInstall", "stop"),
        ("ApplicationStart", "start"),
        ("ValidateService", "health"),
    ] {
        // The agent's scrubbed environment: PATH and its own variables only.
        let run = shipped
            .spawn(stage, &[], None, |c| {
                c.env_clear()
                    .env("PATH", &path)
                    .env("DEPLOYMENT_ID", "d-ship-1")
                    .env("DEPLOYMENT_GROUP_NAME", "prod")
                    .env("APPLICATION_NAME", "demo")
                    .env("LIFECYCLE_EVENT", event);
            })
            .unwrap()
            .finish(Duration::from_secs(120))
            .unwrap();
        run.assert_ok();
    }
    let samples = load.finish();
    assert_all_served(&samples, &["v1", "v2"]);
    assert_eq!(setup.get("/").unwrap(), (200, "demo v2 real2".to_string()));
}

#[test]
fn a_bundle_that_could_not_deploy_is_refused_writing_nothing() {
    let dir = TestDir::new("ship-refused");
    let jar = dir.join("app-1.jar");
    fs::write(&jar, b"not run").unwrap();
    let config_path = dir.join("nonstop.json");
    let make = |config: &Value, spec: &str| -> (Output, PathBuf) {
        fs::write(&config_path, config.to_string()).unwrap();
        let spec_path = dir.join("appspec.yml");
        fs::write(&spec_path, spec).unwrap();
        let out = dir.join("dist/app");
        let o = bundle(&[
            "--build".as_ref(),
            jar.as_os_str(),
            "--config".as_ref(),
            config_path.as_os_str(),
            "--appspec".as_ref(),
            spec_path.as_os_str(),
            "--binaries".as_ref(),
            static_binaries().as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        (o, out)
    };
    let assert_refused = |o: &Output, out: &Path, parts: &[&str]| {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{stderr}");
        for part in parts {
            assert!(stderr.contains(part), "{part:?} missing: {stderr}");
        }
        assert!(!out.exists(), "{} was written", out.display());
        assert!(
            !out.with_file_name("app.zip").exists(),
            "the zip was written"
        );
    };

    // The appspec copies the bundle where app.artifact does not look.
    let config = json!({"app": {"dir": "/srv/app", "artifact": "zip/*.jar"}});
    let (o, out) = make(&config, &appspec(Path::new("/srv/other"), 180));
    assert_refused(
        &o,
        &out,
        &[
            "/srv/app/zip",
            "/srv/other/",
            "\"artifact\": \"/srv/other/*.jar\"",
            "the appspec's destination to /srv/app/zip/",
        ],
    );

    // Retiring makes health wait past ValidateService's 180 s.
    let config = json!({"app": {"dir": "/srv/app", "artifact": "zip/*.jar", "retire": true}});
    let (o, out) = make(&config, &appspec(Path::new("/srv/app/zip"), 180));
    assert_refused(
        &o,
        &out,
        &[
            "ValidateService",
            "180 s",
            "Raise that timeout to at least",
            "nginx.drain_timeout_secs",
        ],
    );

    // The same with enough time for it is made.
    let (o, out) = make(&config, &appspec(Path::new("/srv/app/zip"), 600));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The destination is app.artifact's directory: the build at the root.
    assert!(out.join("app-1.jar").is_file());
    assert!(out.with_file_name("app.zip").is_file());
}

/// The bundle tool with these arguments, its output piped.
fn bundle_args(
    jar: &Path,
    config: &Path,
    spec: &Path,
    binaries: &Path,
    out: &Path,
) -> Vec<std::ffi::OsString> {
    [
        "--build".as_ref(),
        jar.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--appspec".as_ref(),
        spec.as_os_str(),
        "--binaries".as_ref(),
        binaries.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]
    .into_iter()
    .map(|a: &std::ffi::OsStr| a.to_os_string())
    .collect()
}

/// What is beside `out` whose name is one of the bundle's temp names.
fn leftovers(dist: &Path) -> Vec<String> {
    fs::read_dir(dist)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".nonstop-"))
        .collect()
}

#[test]
fn an_appspec_source_climbing_out_of_the_bundle_is_refused_naming_its_line() {
    let dir = TestDir::new("ship-dotdot");
    let jar = dir.join("app-1.jar");
    fs::write(&jar, b"not run").unwrap();
    let config = dir.join("nonstop.json");
    fs::write(
        &config,
        json!({"app": {"dir": "/srv/app", "artifact": "zip/*.jar"}}).to_string(),
    )
    .unwrap();
    let spec = dir.join("appspec.yml");
    // Line 4: the agent would copy from beside its archive directory.
    fs::write(
        &spec,
        appspec(Path::new("/srv/app/zip"), 180).replace("source: /", "source: ../outside"),
    )
    .unwrap();
    let out = dir.join("dist/app");
    let args = bundle_args(&jar, &config, &spec, &static_binaries(), &out);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let o = bundle(&refs);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 4")
            && stderr.contains("source: ../outside")
            && stderr.contains("`..`"),
        "{stderr}"
    );
    // Nothing anywhere: not the bundle, not its zip, not the jar outside it.
    assert!(!out.exists(), "the bundle was written");
    assert!(!dir.join("dist/app.zip").exists(), "the zip was written");
    assert!(
        !dir.join("dist/outside").exists(),
        "the build was written outside --out"
    );
}

#[test]
fn two_bundle_runs_with_the_same_out_never_remove_each_others_output() {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = TestDir::new("ship-twice");
    let jar = dir.join("app-1.jar");
    fs::write(&jar, b"not run").unwrap();
    let config = dir.join("nonstop.json");
    fs::write(
        &config,
        json!({"app": {"dir": "/srv/app", "artifact": "zip/*.jar"}}).to_string(),
    )
    .unwrap();
    let spec = dir.join("appspec.yml");
    fs::write(&spec, appspec(Path::new("/srv/app/zip"), 180)).unwrap();
    let out = dir.join("dist/app");
    let zip = dir.join("dist/app.zip");

    // Run A reads its `profile` binary from a FIFO: it waits there, after
    // it found --out free and before it writes anything, until fed.
    let bins = static_binaries();
    let slow = dir.join("slow-binaries");
    fs::create_dir_all(&slow).unwrap();
    for stage in STAGES.iter().filter(|s| **s != "profile") {
        fs::copy(bins.join(stage), slow.join(stage)).unwrap();
    }
    let fifo = slow.join("profile");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let a = Command::new(binaries_dir().unwrap().join("bundle"))
        .args(bundle_args(&jar, &config, &spec, &slow, &out))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The FIFO opens for writing once A has opened it for reading.
    let mut feed = None;
    let opened = tests::wait_until(Duration::from_secs(60), || {
        feed = fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo)
            .ok();
        feed.is_some()
    });
    assert!(opened, "run A never reached its binaries");
    let mut feed = feed.unwrap();
    let flags = nix::fcntl::fcntl(&feed, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&feed, nix::fcntl::FcntlArg::F_SETFL(blocking)).unwrap();

    // Run B, meanwhile, makes its bundle.
    let args = bundle_args(&jar, &config, &spec, &bins, &out);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let b = bundle(&refs);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let zip_of_b = fs::read(&zip).unwrap();

    // A goes on, finds --out taken when it comes to put its bundle there.
    feed.write_all(&fs::read(bins.join("profile")).unwrap())
        .unwrap();
    drop(feed);
    let a = a.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&a.stderr);
    // B's bundle is whole, its zip the one it wrote; A left nothing behind.
    for file in [
        "app-1.jar",
        "appspec.yml",
        "nonstop.json",
        "scripts/profile",
        "man/man1/stop.1",
    ] {
        assert!(
            out.join(file).is_file(),
            "{file} of run B is gone; run A: {stderr}"
        );
    }
    assert_eq!(fs::read(&zip).ok(), Some(zip_of_b), "run B's zip changed");
    assert_eq!(leftovers(&dir.join("dist")), Vec::<String>::new());
    assert_eq!(a.status.code(), Some(2), "run A: {stderr}");
    assert!(
        stderr.contains(&format!("{} was made meanwhile", out.display())),
        "{stderr}"
    );
}
