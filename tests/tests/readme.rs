//! A book reader does it alone: README.md's server setup, its check before
//! the first deployment and its move from the book's scripts are shell
//! blocks (marked `<!-- test: NAME -->`) that these tests extract and run
//! verbatim on a Debian server of their own ([`Server`]: Debian's nginx on
//! :80 with its own nginx.conf and default site, a real `ec2-user`, real
//! sudo, the machine's own config untouched). The bundles are made by the
//! bundle tool from the repository's appspec.yml and examples/nonstop.json,
//! and the deployments run through the real CodeDeploy agent's Installer
//! and HookExecutor ([`Agent`]), under load through :80, POSTs included.
//! README.ko.md must carry the same blocks, byte for byte.
//!
//! Without the agent's source (NONSTOP_CODEDEPLOY_AGENT) the tests say they
//! skipped and how to get it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tests::{
    assert_all_served, cargo_bundle, readme_blocks, repo_root, wait_until, Agent, DeployOptions,
    Deployment, Jars, Load, Sample, Server, TestDir, DEPLOY_USER,
};

/// The blocks the tests run, in README.md's order.
const BLOCKS: [&str; 5] = [
    "setup-include",
    "setup-nginx",
    "setup-sudoers",
    "first-check",
    "from-the-book",
];

/// Where the bundle is copied on the server (`scp dist/app.zip ec2-user@SERVER:`).
const ZIP_ON_SERVER: &str = "/home/ec2-user/app.zip";

fn agent_or_skip(test: &str) -> Option<Agent> {
    match Agent::find() {
        Ok(a) => Some(a),
        Err(why) => {
            eprintln!("{test}: skipped: {why}");
            None
        }
    }
}

/// README.md's marked blocks by name; README.ko.md has the same, byte for byte.
fn blocks() -> BTreeMap<String, String> {
    let en = readme_blocks(&repo_root().join("README.md")).unwrap();
    let ko = readme_blocks(&repo_root().join("README.ko.md")).unwrap();
    let en: BTreeMap<String, String> = en.into_iter().map(|b| (b.name, b.text)).collect();
    for name in BLOCKS {
        assert!(en.contains_key(name), "README.md has no block {name}");
    }
    for b in &ko {
        assert_eq!(
            Some(&b.text),
            en.get(&b.name),
            "README.ko.md's block {} (line {}) differs from README.md's",
            b.name,
            b.line
        );
    }
    for name in BLOCKS {
        assert!(
            ko.iter().any(|b| b.name == name),
            "README.ko.md has no block {name}"
        );
    }
    en
}

/// Every file under `paths` (bytes, mode, owner; a link's target), to prove
/// the machine's own config is the same after a test.
fn snapshot(paths: &[&str]) -> BTreeMap<PathBuf, (Vec<u8>, u32, u32)> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, (Vec<u8>, u32, u32)>) {
        let Ok(meta) = fs::symlink_metadata(p) else {
            return;
        };
        let data = if meta.is_symlink() {
            fs::read_link(p)
                .map(|t| t.into_os_string().into_encoded_bytes())
                .unwrap_or_default()
        } else if meta.is_dir() {
            let mut names: Vec<PathBuf> = fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            names.sort();
            for n in &names {
                walk(n, out);
            }
            Vec::new()
        } else {
            fs::read(p).unwrap_or_default()
        };
        out.insert(p.to_path_buf(), (data, meta.mode(), meta.uid()));
    }
    let mut out = BTreeMap::new();
    for p in paths {
        walk(Path::new(p), &mut out);
    }
    out
}

const MACHINE_CONFIG: [&str; 4] = ["/etc/nginx", "/etc/sudoers.d", "/etc/passwd", "/etc/group"];

/// Runs a README block on the server as root; panics with what it said.
#[track_caller]
fn run_block(server: &Server, blocks: &BTreeMap<String, String>, name: &str) -> String {
    let out = server.bash(&blocks[name], "/root").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README block {name} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `profile --check`'s output is all `ok`.
#[track_caller]
fn assert_all_ok(check: &str) {
    let lines: Vec<&str> = check.lines().collect();
    assert!(lines.len() > 8, "profile --check said too little:\n{check}");
    let other: Vec<&&str> = lines.iter().filter(|l| !l.starts_with("ok: ")).collect();
    assert!(other.is_empty(), "not all ok: {other:#?}\n{check}");
}

/// The CI side: one bundle per version, each made by the bundle tool from
/// the repository's appspec.yml and examples/nonstop.json. Each jar is
/// dated a minute after the one before, as builds are.
struct Builds {
    dir: TestDir,
    jars: Jars,
    made: usize,
}

impl Builds {
    fn new(name: &str) -> Builds {
        let dir = TestDir::new(name);
        let jars = Jars::build(&dir.join("jars")).unwrap();
        Builds { dir, jars, made: 0 }
    }

    /// The zip of `version` (a jar that does not run when `broken`).
    fn zip(&mut self, version: &str, broken: bool) -> PathBuf {
        self.made += 1;
        let ci = self.dir.join(format!("ci-{version}"));
        fs::create_dir_all(&ci).unwrap();
        let jar = ci.join(format!("demo-{version}.jar"));
        if broken {
            fs::write(&jar, b"a build that failed half-way: not a jar").unwrap();
        } else {
            self.jars.jar(version, &jar).unwrap();
        }
        let built = SystemTime::now() + Duration::from_secs(60 * self.made as u64);
        fs::File::options()
            .write(true)
            .open(&jar)
            .unwrap()
            .set_modified(built)
            .unwrap();
        cargo_bundle(
            &jar,
            &repo_root().join("examples/nonstop.json"),
            &repo_root().join("appspec.yml"),
            &ci.join("dist/app"),
        )
        .unwrap()
    }
}

/// Copies `zip` to the deploy user's home on the server.
fn upload(server: &Server, zip: &Path) {
    server
        .put(ZIP_ON_SERVER, &fs::read(zip).unwrap(), server.uid)
        .unwrap();
}

/// Checks a successful deployment: every command the agent reported
/// succeeded, each of the three hooks ran its stage, and nginx serves
/// `expect` on :80.
#[track_caller]
fn assert_deployed(server: &Server, d: &Deployment, expect: &str) {
    d.assert_succeeded();
    let commands: Vec<&str> = d.reported.iter().map(|r| r.command.as_str()).collect();
    assert_eq!(
        commands,
        [
            "ApplicationStop",
            "DownloadBundle",
            "BeforeInstall",
            "Install",
            "AfterInstall",
            "ApplicationStart",
            "ValidateService"
        ],
        "{}",
        d.describe()
    );
    for (event, script) in [
        ("AfterInstall", "scripts/stop"),
        ("ApplicationStart", "scripts/start"),
        ("ValidateService", "scripts/health"),
    ] {
        let r = d.reported.iter().find(|r| r.command == event).unwrap();
        assert!(
            r.script_log.contains(&format!("Script - {script}")),
            "{event} ran no {script}: {}",
            d.describe()
        );
    }
    assert_eq!(
        server.get("/").unwrap(),
        (200, expect.to_string()),
        "{}",
        d.describe()
    );
}

fn load(server: &Server) -> Load {
    server
        .inside(|| Load::start_with_posts(80, "/", 4, Duration::from_millis(5)))
        .unwrap()
}

fn figures(test: &str, samples: &[Sample], deployments: &[Deployment], started: Instant) {
    // Half the clients POST (Load::start_with_posts).
    let posts = samples.len() / 2;
    let failed = samples.iter().filter(|s| s.status != 200).count();
    let times: Vec<String> = deployments
        .iter()
        .map(|d| format!("{} {:.1} s", d.id, d.elapsed.as_secs_f64()))
        .collect();
    eprintln!(
        "{test}: {} requests through :80 (about {posts} POSTs), {failed} not 200; deployments: {}; {:.1} s in all",
        samples.len(),
        times.join(", "),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_new_server_set_up_from_the_readme_deploys_through_the_agent() {
    let Some(agent) = agent_or_skip("readme") else {
        return;
    };
    let started = Instant::now();
    let before = snapshot(&MACHINE_CONFIG);
    let blocks = blocks();
    {
        let server = Server::new("readme").unwrap();
        // A fresh Debian server: nginx as the package starts it.
        server.start_nginx().unwrap();
        assert_eq!(server.get("/").unwrap().0, 200, "Debian's welcome page");

        for name in ["setup-include", "setup-nginx", "setup-sudoers"] {
            run_block(&server, &blocks, name);
        }
        // The sudoers file is in force and valid as a whole.
        server.run_checked(&["visudo", "-c"]).unwrap();
        let sudoers = server.host_path("/etc/sudoers.d/nonstop").unwrap();
        assert_eq!(fs::metadata(&sudoers).unwrap().mode() & 0o7777, 0o440);
        // nginx routes to real1's port, where nothing listens yet (once
        // the reload, which `nginx -s reload` only signals, took).
        assert!(
            wait_until(Duration::from_secs(10), || server
                .get("/")
                .is_ok_and(|(status, _)| status == 502)),
            "nginx does not route to real1's empty port: {:?}",
            server.get("/")
        );

        // The CI side first: the load below measures the server, not the build.
        let mut builds = Builds::new("readme-ci");
        let zips: Vec<PathBuf> = ["v1", "v2", "v3", "v4", "v5", "v6"]
            .iter()
            .map(|v| builds.zip(v, *v == "v5"))
            .collect();
        upload(&server, &zips[0]);
        let check = run_block(&server, &blocks, "first-check");
        assert_all_ok(&check);
        // The temp directory is gone, and nothing was unpacked where the
        // agent copies to.
        assert!(!server
            .host_path("/home/ec2-user/app/step3")
            .unwrap()
            .exists());

        let mut deployments = Vec::new();
        // The first deployment: nothing live, nothing done by hand.
        let d = agent
            .deploy(
                &server,
                ZIP_ON_SERVER,
                "d-readme-1",
                &DeployOptions::default(),
            )
            .unwrap();
        assert_deployed(&server, &d, "demo v1 real2");
        deployments.push(d);

        let load = load(&server);
        let mut expect_profile = ["real1", "real2"].iter().cycle();
        for (n, version, forget_cleanup) in [(2, "v2", false), (3, "v3", true), (4, "v4", false)] {
            upload(&server, &zips[n - 1]);
            let d = agent
                .deploy(
                    &server,
                    ZIP_ON_SERVER,
                    &format!("d-readme-{n}"),
                    &DeployOptions { forget_cleanup },
                )
                .unwrap();
            let profile = expect_profile.next().unwrap();
            assert_deployed(&server, &d, &format!("demo {version} {profile}"));
            deployments.push(d);
        }
        let include = fs::read(
            server
                .host_path("/etc/nginx/nonstop/service-url.inc")
                .unwrap(),
        )
        .unwrap();

        // A failing build: the agent reports the host's deployment failed,
        // naming the hook, and nginx stays on the previous version.
        upload(&server, &zips[4]);
        let d = agent
            .deploy(
                &server,
                ZIP_ON_SERVER,
                "d-readme-5",
                &DeployOptions::default(),
            )
            .unwrap();
        let failed = d.failed().unwrap_or_else(|| panic!("{}", d.describe()));
        assert!(
            ["ApplicationStart", "ValidateService"].contains(&failed.command.as_str()),
            "{}",
            d.describe()
        );
        assert_eq!(failed.diagnostics["error_code"], 4, "{}", d.describe());
        let message = failed.diagnostics["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("run as user ec2-user failed with exit code 1"),
            "{}",
            d.describe()
        );
        assert_eq!(
            d.reported.last().unwrap().command,
            failed.command,
            "the agent stops at the failed hook: {}",
            d.describe()
        );
        deployments.push(d);
        assert_eq!(server.get("/").unwrap(), (200, "demo v4 real1".into()));
        assert_eq!(
            fs::read(
                server
                    .host_path("/etc/nginx/nonstop/service-url.inc")
                    .unwrap()
            )
            .unwrap(),
            include
        );
        let samples = load.finish();
        figures("readme", &samples, &deployments, started);
        assert_all_served(&samples, &["v1", "v2", "v3", "v4"]);

        // After the deployments, the same check is still all ok, now with
        // the state and app directories there.
        upload(&server, &zips[5]);
        assert_all_ok(&run_block(&server, &blocks, "first-check"));

        // A file left by a stage run as root in the state directory: named,
        // with a fix that changes only it.
        let planted = "/home/ec2-user/app/nonstop-state/plan.json.by-root";
        server.put(planted, b"{}", 0).unwrap();
        let out = server.bash(&blocks["first-check"], "/root").unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.lines().any(|l| l.starts_with("FAIL: ")
                && l.contains(planted)
                && l.contains(&format!("sudo chown {DEPLOY_USER}: {planted}"))),
            "{said}"
        );
        fs::remove_file(server.host_path(planted).unwrap()).unwrap();

        // A stage run as root by hand: refused, and the advice never takes
        // the deploy user's directories from it.
        let out = server
            .run_checked(&["/home/ec2-user/app/step3/zip/scripts/stop"])
            .map(|o| format!("stop as root succeeded: {o:?}"))
            .unwrap_or_else(|e| format!("{e:#}"));
        assert!(out.contains("run nonstop as ec2-user"), "{out}");
        assert!(!out.contains("chown"), "{out}");
        assert_eq!(server.get("/").unwrap(), (200, "demo v4 real1".into()));

        // The sudoers line without -T: deployments need no more, so the
        // check skips reading nginx's config instead of failing.
        let line = "ec2-user ALL=(root) NOPASSWD: /usr/sbin/nginx -t, /usr/sbin/nginx -s reload\n";
        fs::write(&sudoers, line).unwrap();
        let out = server.bash(&blocks["first-check"], "/root").unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{said}");
        assert!(
            said.lines()
                .any(|l| l.starts_with("skip: nginx's loaded config")
                    && l.contains("/usr/sbin/nginx -T")),
            "{said}"
        );
    }
    assert!(
        before == snapshot(&MACHINE_CONFIG),
        "the machine's own /etc/nginx, /etc/sudoers.d, /etc/passwd or /etc/group changed"
    );
}

/// The book's server as its scripts left it: the include in conf.d (root's),
/// the book's server block in Debian's default site, its sudo rule, and its
/// app started by start.sh with `nohup java -jar` on real1's port.
fn books_server(server: &Server, jars: &Jars) {
    let site = "server {
    listen 80 default_server;
    listen [::]:80 default_server;
    server_name _;
    include /etc/nginx/conf.d/service-url.inc;
    location / {
        proxy_pass $service_url;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header Host $http_host;
    }
}
";
    server
        .put("/etc/nginx/sites-available/default", site.as_bytes(), 0)
        .unwrap();
    server
        .put(
            "/etc/nginx/conf.d/service-url.inc",
            b"set $service_url http://127.0.0.1:8081;\n",
            0,
        )
        .unwrap();
    server
        .put(
            "/etc/sudoers.d/book",
            b"ec2-user ALL=(root) NOPASSWD: /usr/sbin/service nginx reload\n",
            0,
        )
        .unwrap();
    let book = server.host_path("/etc/sudoers.d/book").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&book, fs::Permissions::from_mode(0o440)).unwrap();
    server.start_nginx().unwrap();

    // What the book's deployments left: the jar in step3, its last bundle
    // in zip/ (the agent's copy), as ec2-user's.
    let step3 = "/home/ec2-user/app/step3";
    for dir in ["/home/ec2-user/app", step3] {
        let host = server.host_path(dir).unwrap();
        fs::create_dir_all(&host).unwrap();
        std::os::unix::fs::chown(&host, Some(server.uid), Some(server.uid)).unwrap();
    }
    let jar = jars
        .jar(
            "v0",
            &server.host_path(&format!("{step3}/demo-v0.jar")).unwrap(),
        )
        .unwrap();
    std::os::unix::fs::chown(&jar, Some(server.uid), Some(server.uid)).unwrap();
    for (file, text) in [
        ("zip/appspec.yml", "version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: /home/ec2-user/app/step3/zip/\n    overwrite: yes\n"),
        ("zip/scripts/deploy.sh", "#!/bin/bash\n# the book's deploy.sh\n"),
        ("zip/demo-v0.jar", "the book's last bundle"),
    ] {
        server
            .put(&format!("{step3}/{file}"), text.as_bytes(), server.uid)
            .unwrap();
    }
    for dir in ["zip", "zip/scripts"] {
        let host = server.host_path(&format!("{step3}/{dir}")).unwrap();
        std::os::unix::fs::chown(&host, Some(server.uid), Some(server.uid)).unwrap();
    }
    // start.sh's line, as the book writes it.
    let _ = server
        .spawn_as_user(&format!(
            "nohup java -jar -Dspring.config.location=classpath:/application.properties,/home/ec2-user/app/application-real.properties -Dspring.profiles.active=real1 {step3}/demo-v0.jar > {step3}/nohup.out 2>&1 &"
        ))
        .unwrap()
        .wait();
    assert!(
        wait_until(Duration::from_secs(30), || server.get("/").ok()
            == Some((200, "demo v0 real1".to_string()))),
        "the book's app never answered through nginx"
    );
}

#[test]
fn the_books_server_moves_to_nonstop_in_two_readme_steps_under_load() {
    let Some(agent) = agent_or_skip("readme-book") else {
        return;
    };
    let started = Instant::now();
    let before = snapshot(&MACHINE_CONFIG);
    let blocks = blocks();
    {
        let server = Server::new("book").unwrap();
        let mut builds = Builds::new("readme-book-ci");
        books_server(&server, &builds.jars);

        // The CI side first: the load below measures the server, not the build.
        let zips = [builds.zip("v1", false), builds.zip("v2", false)];
        let load = load(&server);
        // Step 1.
        run_block(&server, &blocks, "from-the-book");
        server.run_checked(&["visudo", "-c"]).unwrap();
        // Step 2: the check from the bundle, then the deployments.
        upload(&server, &zips[0]);
        let check = run_block(&server, &blocks, "first-check");
        assert_all_ok(&check);
        assert!(
            check.contains("a book's start.sh app nonstop will adopt"),
            "{check}"
        );
        let mut deployments = Vec::new();
        let d = agent
            .deploy(
                &server,
                ZIP_ON_SERVER,
                "d-book-1",
                &DeployOptions::default(),
            )
            .unwrap();
        assert_deployed(&server, &d, "demo v1 real2");
        deployments.push(d);
        // The next deployment adopts the book's app on real1 and stops it.
        upload(&server, &zips[1]);
        let d = agent
            .deploy(
                &server,
                ZIP_ON_SERVER,
                "d-book-2",
                &DeployOptions::default(),
            )
            .unwrap();
        assert_deployed(&server, &d, "demo v2 real1");
        let stop = d
            .reported
            .iter()
            .find(|r| r.command == "AfterInstall")
            .unwrap();
        assert!(stop.script_log.contains("adopting it"), "{}", d.describe());
        deployments.push(d);
        let samples = load.finish();
        figures("readme-book", &samples, &deployments, started);
        assert_all_served(&samples, &["v0", "v1", "v2"]);
    }
    assert!(
        before == snapshot(&MACHINE_CONFIG),
        "the machine's own /etc/nginx, /etc/sudoers.d, /etc/passwd or /etc/group changed"
    );
}
