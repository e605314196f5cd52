//! `profile --check` against a real nginx: one test per broken setup of the
//! book's issue tracker, each caught by its own check with the fix in its
//! line, and the good include, symlink and upstream-pair setups passing.
//!
//! These build their own small setup (no app is run): the profile ports are
//! chosen below the kernel's ephemeral range, where a real server's ports
//! are, so only the ephemeral-port test sees that check fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tests::{free_port, Bundle, HookRun, Nginx, TestDir};

/// How nginx is set up for a test.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The book's: include in the server block, `proxy_pass $service_url`.
    Include,
    /// nginx never includes the include file.
    NotIncluded,
    /// The include is in the server block, which proxies elsewhere.
    NotProxying,
    Symlink,
    Pair,
}

struct Fixture {
    dir: TestDir,
    ports: [u16; 2],
    bundle: Bundle,
    app_dir: PathBuf,
    // Dropped last.
    _nginx: Nginx,
}

/// Two free ports below the ephemeral range (a port the kernel never hands
/// out as a source port), as a server's configured ports are.
fn low_ports() -> [u16; 2] {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let lo: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let top = lo.min(32000);
    let seed = std::process::id() as u32;
    let mut found = Vec::new();
    for i in 0..2000u32 {
        let port = (10_000 + seed.wrapping_mul(7919).wrapping_add(i * 97) % u32::from(top - 10_000))
            as u16;
        if !found.contains(&port) && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            found.push(port);
            if found.len() == 2 {
                return [found[0], found[1]];
            }
        }
    }
    panic!("no free port below {top}");
}

impl Fixture {
    fn new(name: &str, kind: Kind) -> Fixture {
        let dir = TestDir::new(name);
        let [p1, p2] = low_ports();
        let nginx_port = free_port();
        let app_dir = dir.join("app");
        fs::create_dir_all(app_dir.join("zip")).unwrap();
        let prefix = dir.join("nginx");
        fs::create_dir_all(prefix.join("conf.d")).unwrap();
        let include = prefix.join("conf.d/service-url.inc");
        fs::write(
            &include,
            format!("set $service_url http://127.0.0.1:{p1};\n"),
        )
        .unwrap();
        let listen = format!("listen 127.0.0.1:{nginx_port};");
        let (server, route) = match kind {
            Kind::Include => (Nginx::include_server(nginx_port, &include), json!({"include": include})),
            Kind::NotIncluded => (
                format!("server {{ {listen} location / {{ proxy_pass http://127.0.0.1:{p1}; }} }}"),
                json!({"include": include}),
            ),
            Kind::NotProxying => (
                format!(
                    "server {{ {listen} include {}; location / {{ proxy_pass http://127.0.0.1:{p1}; }} }}",
                    include.display()
                ),
                json!({"include": include}),
            ),
            Kind::Symlink => {
                let sites = [prefix.join("sites-available/blue"), prefix.join("sites-available/green")];
                fs::create_dir_all(prefix.join("sites-available")).unwrap();
                fs::create_dir_all(prefix.join("sites-enabled")).unwrap();
                fs::write(&sites[0], Nginx::site(nginx_port, p1)).unwrap();
                fs::write(&sites[1], Nginx::site(nginx_port, p2)).unwrap();
                let link = prefix.join("sites-enabled/default");
                std::os::unix::fs::symlink("../sites-available/blue", &link).unwrap();
                (
                    format!("include {}/sites-enabled/*;", prefix.display()),
                    json!({"mode": "symlink", "link": link, "sites": {"real1": sites[0], "real2": sites[1]}}),
                )
            }
            Kind::Pair => (Nginx::pair_server(nginx_port, [p1, p2]), json!({"mode": "upstream-pair"})),
        };
        let nginx = Nginx::start_with(&prefix, nginx_port, &include, &server).unwrap();
        let mut config = json!({
            "profiles": [{"name": "real1", "port": p1}, {"name": "real2", "port": p2}],
            "probe_url": format!("http://127.0.0.1:{nginx_port}/profile"),
            "app": {"dir": app_dir, "log": "logs/{profile}.log"},
            "nginx": {
                "test": nginx.command(&["-t"]),
                "reload": nginx.command(&["-s", "reload"]),
                "pid_file": nginx.prefix.join("nginx.pid"),
            }
        });
        config["nginx"]
            .as_object_mut()
            .unwrap()
            .extend(route.as_object().unwrap().clone());
        let bundle = Bundle::new(&dir.join("bundle"), &config).unwrap();
        Fixture {
            dir,
            ports: [p1, p2],
            bundle,
            app_dir,
            _nginx: nginx,
        }
    }

    fn edit(&self, edit: impl FnOnce(&mut Value)) {
        self.bundle.edit_config(edit).unwrap();
    }

    fn check(&self) -> HookRun {
        self.bundle
            .hook("profile", &["--check"], None, Duration::from_secs(90))
            .unwrap()
    }
}

/// The one FAIL line, which must contain every one of `words`; the run exits 1.
#[track_caller]
fn assert_fails(run: &HookRun, words: &[&str]) {
    run.assert_code(1);
    let fails: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL: "))
        .collect();
    assert_eq!(fails.len(), 1, "exactly one check fails:\n{}", run.stdout);
    assert!(
        fails[0].contains(" — "),
        "the line says the fix: {}",
        fails[0]
    );
    for w in words {
        assert!(fails[0].contains(w), "{w:?} not in {}", fails[0]);
    }
}

#[track_caller]
fn assert_passes(run: &HookRun) {
    run.assert_code(0);
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .all(|l| l.starts_with("ok: ") || l.starts_with("skip: ")),
        "{}",
        run.stdout
    );
}

#[test]
fn good_include_symlink_and_pair_setups_pass() {
    for (name, kind, says) in [
        ("pre-good-include", Kind::Include, "proxies to $service_url"),
        ("pre-good-symlink", Kind::Symlink, "loads the symlink"),
        ("pre-good-pair", Kind::Pair, "upstream app"),
    ] {
        let f = Fixture::new(name, kind);
        let run = f.check();
        assert_passes(&run);
        assert!(run.stdout.contains(says), "{}", run.stdout);
        assert!(run.stdout.contains("reaches nginx"), "{}", run.stdout);
    }
}

#[test]
fn an_include_nginx_never_reads_is_caught() {
    let f = Fixture::new("pre-not-included", Kind::NotIncluded);
    let include = f.dir.join("nginx/conf.d/service-url.inc");
    assert_fails(
        &f.check(),
        &[
            "never reads the include file",
            &format!("add `include {};`", include.display()),
        ],
    );
}

#[test]
fn a_server_block_not_proxying_service_url_is_caught() {
    let f = Fixture::new("pre-not-proxying", Kind::NotProxying);
    assert_fails(
        &f.check(),
        &[
            "no `proxy_pass $service_url;`",
            "location / { proxy_pass $service_url; }",
        ],
    );
}

#[test]
fn a_reload_through_sudo_that_needs_a_password_is_caught() {
    // .ci/install-deps.sh installs sudo: without it this test fails, it
    // does not skip.
    assert!(
        ["/usr/bin/sudo", "/bin/sudo"]
            .iter()
            .any(|p| std::path::Path::new(p).exists()),
        "sudo is not installed (Debian: sudo); .ci/install-deps.sh installs it"
    );
    let f = Fixture::new("pre-sudo", Kind::Include);
    f.edit(|c| c["nginx"]["reload"] = json!(["sudo", "-n", "nginx", "-s", "reload"]));
    // As nobody, whom no sudoers line names: sudo would ask for a password.
    let run = f
        .bundle
        .spawn("profile", &["--check"], None, |c| {
            use std::os::unix::process::CommandExt;
            c.uid(65534).gid(65534);
        })
        .unwrap()
        .finish(Duration::from_secs(90))
        .unwrap();
    run.assert_code(1);
    assert!(
        run.stdout.contains("NOPASSWD: /usr/sbin/nginx -s reload"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_world_writable_state_dir_is_caught() {
    let f = Fixture::new("pre-state-dir", Kind::Include);
    let state = f.app_dir.join(".nonstop");
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    assert_fails(
        &f.check(),
        &[
            "state directory",
            &format!("chmod go-w {}", state.display()),
        ],
    );
}

#[test]
fn a_program_only_on_the_operators_path_is_caught() {
    let f = Fixture::new("pre-path", Kind::Include);
    let bin = f.dir.join("opt-java/bin");
    fs::create_dir_all(&bin).unwrap();
    let java = bin.join("myjava");
    fs::write(&java, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&java, fs::Permissions::from_mode(0o755)).unwrap();
    f.edit(|c| c["app"]["command"] = json!(["myjava", "-jar", "{artifact}"]));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = f
        .bundle
        .spawn("profile", &["--check"], None, |c| {
            c.env("PATH", &path);
        })
        .unwrap()
        .finish(Duration::from_secs(90))
        .unwrap();
    assert_fails(
        &run,
        &[
            "not on the PATH a CodeDeploy hook gets",
            &format!("set app.command[0] to \"{}\"", java.display()),
        ],
    );
}

#[test]
fn a_port_held_by_a_stranger_is_caught() {
    let f = Fixture::new("pre-stranger", Kind::Include);
    // This test process, not a java of the book's kind, holds real2's port.
    let stranger = TcpListener::bind(("127.0.0.1", f.ports[1])).unwrap();
    let me = std::process::id();
    assert_fails(
        &f.check(),
        &[
            &format!("port {} is held by pid {me}", f.ports[1]),
            "will not adopt",
            &format!("kill {me}"),
        ],
    );
    drop(stranger);
}

#[test]
fn an_ephemeral_port_is_caught() {
    let f = Fixture::new("pre-ephemeral", Kind::Include);
    // The kernel picks it from its ephemeral range (the harness's
    // `free_port` never does).
    let ephemeral = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    f.edit(|c| c["profiles"][1]["port"] = json!(ephemeral));
    assert_fails(
        &f.check(),
        &[
            &format!("port {ephemeral} is inside the ephemeral range"),
            "sysctl -w net.ipv4.ip_local_reserved_ports=",
        ],
    );
}

#[test]
fn a_refused_probe_is_caught() {
    let f = Fixture::new("pre-probe", Kind::Include);
    let nobody = free_port();
    f.edit(|c| c["probe_url"] = json!(format!("http://127.0.0.1:{nobody}/profile")));
    assert_fails(&f.check(), &["does not reach nginx", "start nginx"]);
}

#[test]
fn an_unreachable_nginx_host_is_caught() {
    let f = Fixture::new("pre-ssh", Kind::Include);
    // nginx "on another host" whose sshd nobody runs: ssh is refused.
    let nobody = free_port();
    f.edit(|c| {
        c["nginx"]["ssh"] = json!({
            "destination": "root@127.0.0.1",
            "port": nobody,
            "options": ["ConnectTimeout=5"],
        })
    });
    let run = f.check();
    run.assert_code(1);
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL: ") && l.contains("nginx's host root@127.0.0.1"))
        .unwrap_or_else(|| panic!("no FAIL line names nginx's host:\n{}", run.stdout));
    assert!(
        line.contains("`ssh root@127.0.0.1 true`"),
        "the line says the fix: {line}"
    );
}

#[test]
fn a_compose_file_without_a_profiles_service_is_caught() {
    let f = Fixture::new("pre-compose", Kind::Include);
    // The compose backend, whose file has `blue` but not `green` (only
    // `config --services` reads it: no image is needed).
    let file = f.dir.join("compose.yml");
    fs::write(
        &file,
        "services:\n  blue:\n    image: nonstop-preflight-none:never\n",
    )
    .unwrap();
    f.edit(|c| {
        c["app"]["backend"] = json!("compose");
        c["app"]["compose"] = json!({
            "file": file,
            "project": format!("nonstop-pre-{}", std::process::id()),
            "services": {"real1": "blue", "real2": "green"},
        });
    });
    assert_fails(
        &f.check(),
        &[
            "has no service green for real2",
            "blue",
            "app.compose.services",
        ],
    );
}

#[test]
fn an_include_holding_more_than_the_route_is_caught() {
    let f = Fixture::new("pre-include-extra", Kind::Include);
    let include = f.dir.join("nginx/conf.d/service-url.inc");
    let mut text = fs::read_to_string(&include).unwrap();
    text.push_str("client_max_body_size 20m;\n");
    fs::write(&include, text).unwrap();
    assert_fails(
        &f.check(),
        &[
            "line 2: `client_max_body_size 20m;`",
            "rewrites the whole file",
            "move that line beside the `include`",
        ],
    );
}

#[test]
fn a_pid_file_of_another_nginx_is_caught() {
    let f = Fixture::new("pre-pid-file", Kind::Include);
    // Another nginx on this host: its pid file names a live master too.
    let other = Fixture::new("pre-pid-file-other", Kind::Include);
    let theirs = other.dir.join("nginx/nginx.pid");
    f.edit(|c| c["nginx"]["pid_file"] = json!(theirs));
    let ours = f.dir.join("nginx/nginx.pid");
    assert_fails(
        &f.check(),
        &[
            &format!("nginx.pid_file is {}", theirs.display()),
            &format!("writes its pid to {}", ours.display()),
            &format!("set \"pid_file\": \"{}\"", ours.display()),
        ],
    );
}

#[test]
fn a_bad_config_exits_2() {
    let f = Fixture::new("pre-config", Kind::Include);
    f.edit(|c| c["app"]["comand"] = json!(["java"]));
    let run = f.check();
    run.assert_code(2);
    assert!(
        run.stdout.starts_with("FAIL: the config") && run.stdout.contains("comand"),
        "{}",
        run.stdout
    );
    // A hook timeout shorter than what health can wait (the hook budget's check).
    f.edit(|c| {
        c["app"].as_object_mut().unwrap().remove("comand");
    });
    let appspec = fs::read_to_string(tests::repo_root().join("appspec.yml"))
        .unwrap()
        .replace("timeout: 180", "timeout: 20");
    fs::write(f.bundle.root.join("appspec.yml"), appspec).unwrap();
    let run = f.check();
    run.assert_code(2);
    assert!(
        run.stdout.starts_with("FAIL: the config")
            && run.stdout.contains("appspec.yml line")
            && run.stdout.contains("Raise that timeout"),
        "{}",
        run.stdout
    );
}
