//! The realpath mode: a switch without a reload. nginx's `root` is a
//! symlink (`nginx.link`, say /etc/nginx/nonstop/live) pointing at
//! `ports/PORT` beside it, and a `map` turns `$realpath_root` (the link
//! resolved by realpath() on every request) into the upstream:
//!
//! ```nginx
//! map $realpath_root $service_url {
//!     "~/ports/(?<live_port>[0-9]+)$"  "http://127.0.0.1:$live_port";
//!     "~/maintenance/(?<live_port>[0-9]+)-[0-9]+$"  "http://127.0.0.1:$live_port";
//!     default                          "http://127.0.0.1:1";
//! }
//! ```
//!
//! A switch makes a new link at a random name beside the old one (made
//! exclusively: nothing planted is followed) and renames it over it, then
//! confirms through nginx: the next request nginx reads resolves the new
//! link, so one answer of the new profile through the probe proves it. No
//! `nginx -t`, no reload, so no old workers to wait for and no idle
//! kept-alive connection closed. A failed confirmation renames the old link
//! back; the switch journal covers a kill between the rename and the
//! confirmation as in every mode.
//!
//! The link names P when its target is `ports/P's port` (or that directory
//! by its absolute path) and that directory exists. Anything else (a
//! dangling link, a target that is not a profile's `ports/PORT`) is an
//! error naming it: nginx answers such a link with 502 (the map's
//! default), and nonstop never guesses which app should serve.
//!
//! The maintenance page (`switch --maintenance`), still without a reload:
//! the link points at `maintenance/PORT-SECONDS` beside `ports/` (PORT the
//! profile `switch --live` returns to, SECONDS the `Retry-After`), a
//! directory nonstop makes; a second `map` on `$realpath_root` turns it
//! into `$nonstop_retry_after`, and fixed lines in the server block answer
//! 503 with the page nginx serves from `maintenance/` whenever that
//! variable is set (README's realpath-nginx block). nginx resolves the
//! link twice in a request, for that `if` and for `proxy_pass`: a request
//! whose `if` ran just before the rename reaches `proxy_pass` with the
//! link on `maintenance/PORT-SECONDS`, so the first map routes that name
//! to PORT's app too, the app that was live (without it: the default, a
//! 502, 7 in 1891 requests across 400 renames). The operator's number
//! reaches nginx only as a directory name nonstop writes from a `u32`;
//! the page's words only as the page file.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::waits::{Part, Steps};
use crate::config::{Config, Profile};
use crate::nginx::blocks::{answering_url, has_proxy_pass, server_blocks, with_included};
use crate::nginx::conf::{split_dump, tokenize};
use crate::route::address::Seen;
use crate::route::host::{Entry, Host};
use crate::route::mode::{Commands, Include, Line, Mode, Witness};
use crate::state::RouteId;
use crate::sys::error::usage;
use crate::sys::log::Log;
use crate::sys::procs;

/// How long `test -d` (and `mkdir`, `nginx -T`) over ssh may take.
const REMOTE_TEST: Duration = Duration::from_secs(10);

/// The variable the maintenance lines answer 503 on, `Retry-After`'s value.
const RETRY_VAR: &str = "$nonstop_retry_after";

/// The upstream map's entry for `maintenance/PORT-SECONDS`: PORT's app.
const MAINTENANCE_REGEX: &str = "~/maintenance/(?<live_port>[0-9]+)-[0-9]+$";

/// The symlink `link` nginx's `root` names, on `host`.
#[derive(Debug)]
pub(crate) struct RealpathLink<'a> {
    pub config: &'a Config,
    pub host: Host<'a>,
    pub link: &'a Path,
}

/// What the link says, read whole: where it points and whether that is one
/// profile's directory.
enum Points {
    Missing,
    At(Profile),
    /// The maintenance page, returning to this profile.
    Maintenance(Profile),
    /// Not a symlink, a foreign target, or a dangling one: why, in words.
    Wrong(String),
}

impl RealpathLink<'_> {
    /// The directory holding one directory per port, beside the link.
    fn ports_dir(&self) -> PathBuf {
        self.link.parent().unwrap_or(Path::new("/")).join("ports")
    }

    fn port_dir(&self, port: u16) -> PathBuf {
        self.ports_dir().join(port.to_string())
    }

    /// The directory of the maintenance page, beside `ports/`.
    fn maintenance_dir(&self) -> PathBuf {
        self.link
            .parent()
            .unwrap_or(Path::new("/"))
            .join("maintenance")
    }

    /// The link's target while maintenance is on: `maintenance/PORT-SECONDS`.
    fn maintenance_target(keep: &Profile, retry_after: u32) -> String {
        format!("maintenance/{}-{retry_after}", keep.port)
    }

    /// The profile and seconds a maintenance target names, written as
    /// nonstop writes it (or by its absolute path): digits only.
    fn maintenance_of(&self, content: &[u8]) -> Option<(Profile, u32)> {
        let target = std::str::from_utf8(content).ok()?;
        let absolute = format!("{}/", self.maintenance_dir().display());
        let name = target
            .strip_prefix("maintenance/")
            .or_else(|| target.strip_prefix(absolute.as_str()))?;
        let (port, seconds) = name.split_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(port) || !digits(seconds) {
            return None;
        }
        let seconds: u32 = seconds.parse().ok()?;
        let profile = self
            .config
            .profiles
            .iter()
            .find(|p| p.port.to_string() == port)?;
        (Self::maintenance_target(profile, seconds) == format!("maintenance/{name}"))
            .then(|| (profile.clone(), seconds))
    }

    /// The profile a link's target names: `ports/PORT` as nonstop writes
    /// it, or that directory by its absolute path.
    fn named(&self, content: &[u8]) -> Option<Profile> {
        let target = String::from_utf8_lossy(content);
        self.config.profiles.iter().find_map(|p| {
            let own = format!("ports/{}", p.port);
            let absolute = self.port_dir(p.port);
            (target == own || Path::new(target.as_ref()) == absolute).then(|| p.clone())
        })
    }

    /// Whether `dir` is a directory where nginx is.
    fn is_dir(&self, dir: &Path) -> Result<bool> {
        match self.host {
            Host::Local => Ok(fs::metadata(dir).is_ok_and(|m| m.is_dir())),
            Host::Ssh(_) => {
                let argv = ["test", "-d", &dir.to_string_lossy()].map(str::to_string);
                Ok(self.host.run(&argv, REMOTE_TEST)?.success())
            }
        }
    }

    /// Reads the link and judges it.
    fn points(&self) -> Result<Points> {
        let link = self.link.display();
        let on = self.host.on();
        let target = match self.host.read_link(self.link, &self.describe())? {
            Entry::Missing => return Ok(Points::Missing),
            Entry::NotALink => {
                return Ok(Points::Wrong(format!(
                    "{link}{on} exists but is not a symlink"
                )))
            }
            Entry::Link(target) => target,
        };
        let shown = String::from_utf8_lossy(&target).into_owned();
        if let Some((keep, seconds)) = self.maintenance_of(&target) {
            let dir = self
                .maintenance_dir()
                .join(format!("{}-{seconds}", keep.port));
            if !self.is_dir(&dir)? {
                return Ok(Points::Wrong(format!(
                    "the link {link}{on} points at {shown:?}, but {}{on} is not a directory (a dangling link: nginx answers 500)",
                    dir.display()
                )));
            }
            if let Err(why) = self.resolves_to_itself(&dir, "maintenance")? {
                return Ok(Points::Wrong(format!(
                    "the link {link}{on} points at {shown:?}, but {why}"
                )));
            }
            return Ok(Points::Maintenance(keep));
        }
        let Some(profile) = self.named(&target) else {
            let ports: Vec<String> = self
                .config
                .profiles
                .iter()
                .map(|p| format!("ports/{}", p.port))
                .collect();
            return Ok(Points::Wrong(format!(
                "the link {link}{on} points at {shown:?}, which is no profile's directory (expected {})",
                ports.join(" or ")
            )));
        };
        let dir = self.port_dir(profile.port);
        if !self.is_dir(&dir)? {
            return Ok(Points::Wrong(format!(
                "the link {link}{on} points at {shown:?}, but {}{on} is not a directory (a dangling link: nginx answers 502)",
                dir.display()
            )));
        }
        // nginx routes by the path realpath() makes of the link, not by the
        // link's words: `ports/P` itself a symlink leads elsewhere.
        match self.resolve(&dir)? {
            Some(real) if ends_in_port(&real, profile.port) => Ok(Points::At(profile)),
            real => Ok(Points::Wrong(format!(
                "the link {link}{on} points at {shown:?}, but realpath() resolves {} to {}, so nginx's map routes by that path, not to {}'s port",
                dir.display(),
                real.map_or_else(|| "nothing".to_string(), |r| format!("{:?}", r.display().to_string())),
                profile.name
            ))),
        }
    }

    /// Whether realpath() leaves `dir`'s last two names as they are
    /// (`parent/NAME`), so the map's regex reads what nonstop wrote.
    /// `Err`: where it leads instead, in words.
    fn resolves_to_itself(&self, dir: &Path, parent: &str) -> Result<Result<(), String>> {
        let real = self.resolve(dir)?;
        let same = real.as_deref().is_some_and(|r| {
            r.file_name() == dir.file_name()
                && r.parent()
                    .and_then(Path::file_name)
                    .is_some_and(|n| n == parent)
        });
        Ok(if same {
            Ok(())
        } else {
            Err(format!(
                "realpath() resolves {}{} to {}, so nginx's maps read that path, not {parent}/{}",
                dir.display(),
                self.host.on(),
                real.map_or_else(
                    || "nothing".to_string(),
                    |r| format!("{:?}", r.display().to_string())
                ),
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
        })
    }

    /// `dir` with every symlink resolved, as nginx's `$realpath_root`
    /// makes it; `None` when it cannot be resolved. Over ssh `readlink -f`
    /// (GNU and busybox both have it; `realpath -e` is GNU's only).
    fn resolve(&self, dir: &Path) -> Result<Option<PathBuf>> {
        match self.host {
            Host::Local => Ok(fs::canonicalize(dir).ok()),
            Host::Ssh(_) => {
                let argv = ["readlink", "-f", "--", &dir.to_string_lossy()].map(str::to_string);
                let out = self.host.run(&argv, REMOTE_TEST)?;
                Ok(out
                    .success()
                    .then(|| PathBuf::from(out.stdout.trim_end_matches('\n')))
                    .filter(|p| p.is_absolute()))
            }
        }
    }

    /// The fix for a wrong link.
    fn fix(&self) -> String {
        let port = self.config.profiles.first().map_or(0, |p| p.port);
        format!(
            "`mkdir -p {}` for each profile's port, and point the link at the live one: `ln -sfn ports/{port} {}` (then `switch --to PROFILE` if that is not the one that should serve)",
            self.ports_dir().join("PORT").display(),
            self.link.display(),
        )
    }

    /// The variable the upstream is in and the URL with `{port}`, from
    /// `nginx.template` (`set $service_url http://127.0.0.1:{port};`).
    fn variable_and_url(&self) -> (String, String) {
        let words = tokenize(&self.config.nginx.template);
        let var = (words.first().map(String::as_str) == Some("set"))
            .then(|| words.get(1).cloned())
            .flatten()
            .unwrap_or_else(|| "$service_url".into());
        let url = words
            .iter()
            .find(|w| w.contains("{port}"))
            .map(|w| w.trim_end_matches(';').to_string())
            .unwrap_or_else(|| "http://127.0.0.1:{port}".into());
        (var, url)
    }

    /// Whether nginx's config (`files`, as `nginx -T` shows it) answers
    /// 503 with the page while the link points at `maintenance/`: the map
    /// that sets [`RETRY_VAR`], and in `server` (the words of the block
    /// answering `probe_url`) the `if` returning 503, the `error_page` and
    /// the page's location. `Err`: what is missing.
    fn maintenance_lines(
        &self,
        files: &[(String, String)],
        server: &[String],
    ) -> Result<(), String> {
        let words: Vec<String> = files.iter().flat_map(|(_, t)| tokenize(t)).collect();
        let page = format!("/{}", crate::route::page::PAGE_NAME);
        let dir = self.maintenance_dir().display().to_string();
        let mut missing = Vec::new();
        let retry = map_on_realpath_root(&words, RETRY_VAR);
        if !retry.is_some_and(|body| body.iter().any(|w| w.contains("/maintenance/"))) {
            missing.push(format!(
                "`map $realpath_root {RETRY_VAR}` with a `/maintenance/` entry"
            ));
        }
        // The upstream's map must route the page's name to the app that was
        // live: a request whose `if` ran just before the rename resolves the
        // link again for `proxy_pass` (else the default: a 502).
        let (var, url) = self.variable_and_url();
        let want = url.replace("{port}", "$live_port");
        let routes = map_on_realpath_root(&words, &var).is_some_and(|body| {
            body.windows(2)
                .any(|w| w[0].contains("/maintenance/") && w[1] == want)
        });
        if !routes {
            missing.push(format!(
                "an entry `\"{MAINTENANCE_REGEX}\" \"{want}\";` in `map $realpath_root {var}` (a request in flight as the page goes on would get a 502)"
            ));
        }
        let has = |seq: &[&str]| {
            server
                .windows(seq.len())
                .any(|w| w.iter().zip(seq).all(|(a, b)| a == b))
        };
        for (seq, say) in [
            (
                vec!["error_page", "503", page.as_str()],
                format!("`error_page 503 {page};`"),
            ),
            (
                vec!["return", "503"],
                "`if (...) { return 503; }`".to_string(),
            ),
            (
                vec!["location", "=", page.as_str()],
                format!("`location = {page}`"),
            ),
            (
                vec!["root", dir.as_str()],
                format!("`root {dir};` (in the page's location)"),
            ),
            (
                vec!["add_header", "Retry-After", RETRY_VAR],
                format!("`add_header Retry-After {RETRY_VAR} always;`"),
            ),
        ] {
            if !has(&seq) {
                missing.push(say);
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }

    /// Before the link points at the maintenance page: nginx's config has
    /// the maintenance lines (without them nginx would answer that link
    /// with the map's default, 502, until the confirmation gave up, or
    /// answer a request in flight as the page goes on with it).
    fn check_maintenance_ready(&self) -> Result<()> {
        let (var, _) = self.variable_and_url();
        let refuse = |why: String| {
            usage(format!(
                "switch --maintenance: {why}; nothing was changed. Add the maintenance lines of README's realpath setup \
                 (the `/maintenance/` entry of `map $realpath_root {var}`, the `map $realpath_root {RETRY_VAR}` and, in \
                 the server block, the `if`, `error_page 503` and the page's location with `root {};`), then \
                 `nginx -t && nginx -s reload` (once)",
                self.maintenance_dir().display()
            ))
        };
        let argv = crate::nginx::conf::dump_argv(self.config);
        let unread = |why: String| {
            usage(format!(
                "switch --maintenance: cannot read nginx's config with `{}` ({why}), so whether it serves the page \
                 from {} is unknown; nothing was changed. Let this user run it (as `profile --check` does), or \
                 fix nginx.test",
                argv.join(" "),
                self.maintenance_dir().display()
            ))
        };
        let out = self
            .host
            .run(&argv, REMOTE_TEST)
            .map_err(|e| unread(format!("{e:#}")))?;
        if !out.success() {
            return Err(unread(out.message()));
        }
        let dump = out.stdout;
        let files = split_dump(&dump);
        let blocks = server_blocks(&files);
        let Some((answers, _, _)) = answering_url(&blocks, &self.config.probe_url) else {
            return Err(refuse(format!(
                "no server block of nginx's config answers {}",
                self.config.probe_url
            )));
        };
        let own = with_included(&files, &answers.words);
        self.maintenance_lines(&files, &own)
            .map_err(|missing| refuse(format!("nginx's config lacks {missing}")))
    }

    /// The `map` nginx's config needs, for messages.
    fn map_text(&self) -> String {
        let (var, url) = self.variable_and_url();
        format!(
            "map $realpath_root {var} {{ \"~/ports/(?<live_port>[0-9]+)$\" \"{url}\"; \"{MAINTENANCE_REGEX}\" \"{url}\"; default \"http://127.0.0.1:1\"; }}",
            url = url.replace("{port}", "$live_port")
        )
    }
}

impl Mode for RealpathLink<'_> {
    fn id(&self) -> RouteId {
        RouteId {
            mode: self.config.nginx.mode.to_string(),
            path: self.link.to_path_buf(),
            host: self.host.ssh().map(|s| s.destination.clone()),
        }
    }

    fn noun(&self) -> &'static str {
        "link"
    }

    fn describe(&self) -> String {
        format!("the link {}{}", self.link.display(), self.host.on())
    }

    fn directory(&self) -> Option<(&'static str, PathBuf)> {
        Some(("link's directory", self.link.parent()?.to_path_buf()))
    }

    /// The profile the link points at; a link that points at none (or at a
    /// directory that is not there) is an error naming it, never a guess.
    fn witness(&self) -> Result<Witness> {
        match self.points()? {
            Points::Missing => Ok(Witness::Route(Include::Missing)),
            Points::At(p) => Ok(Witness::Route(Include::Names(p))),
            Points::Maintenance(p) => Ok(Witness::Route(Include::Maintenance(p))),
            Points::Wrong(why) => Err(usage(format!(
                "{why}; nonstop does not guess which app should serve. Fix: {}",
                self.fix()
            ))),
        }
    }

    fn content_for(&self, profile: &Profile) -> Option<Vec<u8>> {
        Some(format!("ports/{}", profile.port).into_bytes())
    }

    fn read(&self) -> Result<Option<Vec<u8>>> {
        match self.host.read_link(self.link, &self.describe())? {
            Entry::Missing => Ok(None),
            Entry::Link(target) => Ok(Some(target)),
            Entry::NotALink => Err(anyhow!(
                "{}{} exists but is not a symlink; make it one (`ln -sfn ports/PORT {}`) or fix nginx.link",
                self.link.display(),
                self.host.on(),
                self.link.display()
            )),
        }
    }

    fn classify(&self, content: &[u8]) -> Include {
        if let Some((keep, _)) = self.maintenance_of(content) {
            return Include::Maintenance(keep);
        }
        match self.named(content) {
            Some(p) => Include::Names(p),
            None => Include::NamesNone,
        }
    }

    /// A link's content is a path: nothing in it to lose. (A wrong link is
    /// refused by [`Mode::check_ready`], before anything is stopped.)
    fn refuse_foreign(&self, _content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// A new link at a random name beside it (symlink(2) never follows or
    /// replaces an entry), renamed over it.
    fn write(&self, content: &[u8]) -> Result<()> {
        let dest = String::from_utf8_lossy(content).into_owned();
        self.host.point_link(self.link, &dest, &self.describe())
    }

    fn remove(&self) -> Result<()> {
        self.host.remove(self.link, &self.describe())
    }

    /// Nothing: nginx resolves the link on every request.
    fn commands(&self) -> Commands<'_> {
        Commands::default()
    }

    fn before_write(&self, _log: &Log) -> Result<()> {
        Ok(())
    }

    /// No reload, so no workers of a replaced configuration.
    fn accepting_workers(&self, _log: &Log) -> Option<Vec<i32>> {
        None
    }

    /// Every request resolves the link afresh (`$realpath_root` calls
    /// realpath(), no cache), so the first answer of the target through
    /// the probe, sent after the rename, proves the next request goes there.
    fn steady_for(&self, _workers: Option<&[i32]>) -> Duration {
        Duration::ZERO
    }

    fn await_traffic(&self, _log: &Log, _live: Option<&Profile>, _target: &Profile) -> Result<()> {
        Ok(())
    }

    fn rotation(&self) -> Option<&'static str> {
        None
    }

    /// Its directory takes a new entry, the link (if any) points at a
    /// profile's directory, and every profile's directory exists: a switch
    /// to a missing one would send every request to the map's default.
    fn check_ready(&self, _log: &Log) -> Result<()> {
        self.host.check_route_dir(self.directory())?;
        if let Points::Wrong(why) = self.points()? {
            return Err(usage(format!(
                "{why}; nonstop does not guess which app should serve, so nothing was changed. Fix: {}",
                self.fix()
            )));
        }
        for p in &self.config.profiles {
            let dir = self.port_dir(p.port);
            if !self.is_dir(&dir)? {
                return Err(usage(format!(
                    "{}{} (the directory the link points at for {}) does not exist, so a switch there would send every request to the map's default; nothing was changed. Fix: `mkdir -p {}`",
                    dir.display(),
                    self.host.on(),
                    p.name,
                    dir.display()
                )));
            }
            // A `ports/P` that realpath() leads elsewhere would route the
            // switch to another port (or the map's default, a 502) until
            // the confirmation gave up: refused before anything stops.
            if let Err(why) = self.resolves_to_itself(&dir, "ports")? {
                return Err(usage(format!(
                    "{why} (the directory the link points at for {}), so a switch there would not reach {}; nothing was changed. Fix: `rm {} && mkdir {}`",
                    p.name,
                    p.name,
                    dir.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The map's value, which `profile --check` holds to `nginx.template`'s URL.
    fn connects_to(&self, target: &Profile) -> Seen {
        Seen::in_text(
            &self.config.include_line(target),
            "nginx.template (the map's value)".to_string(),
            target.port,
        )
    }

    fn drain_note(&self, _port: u16) -> Option<String> {
        None
    }

    /// Finishing a killed switch renames the old link back (no command);
    /// the switch reads, writes and confirms (over ssh: the read, the
    /// write, the directory tests).
    fn waits(&self, part: Part, steps: &mut Steps) {
        match part {
            Part::Recover => steps.recover_route(0),
            Part::Ready => {
                if steps.remote > 0 {
                    steps.commands(
                        "checking the link, its directory and the ports directories",
                        5,
                    );
                }
            }
            Part::Switch | Part::SwitchBack => steps.switch_route(0),
        }
    }

    /// The server block that answers `probe_url` has `root LINK;` and
    /// proxies to the map's variable, and the map reads `$realpath_root`.
    fn check_config(&self, dump: &str) -> Vec<Line> {
        let files = split_dump(dump);
        let (var, url) = self.variable_and_url();
        let link = self.link.display().to_string();
        let mut lines = Vec::new();
        let words: Vec<String> = files.iter().flat_map(|(_, t)| tokenize(t)).collect();
        let want = url.replace("{port}", "$live_port");
        lines.push(match map_on_realpath_root(&words, &var) {
            None => Line::Fail(
                format!("nginx's loaded config has no `map $realpath_root {var}`, so the link routes nothing"),
                format!("add `{}` in the http block, then `nginx -t && nginx -s reload` (once)", self.map_text()),
            ),
            Some(body) => {
                let regex = body.iter().any(|w| w.contains("/ports/"));
                let value = body.contains(&want);
                let default = body
                    .windows(2)
                    .find(|w| w[0] == "default")
                    .map(|w| w[1].clone());
                let wrong_default = default.as_deref().is_some_and(|d| {
                    self.config
                        .profiles
                        .iter()
                        .any(|p| d.ends_with(&format!(":{}", p.port)))
                });
                if !regex || !value {
                    Line::Fail(
                        format!("the `map $realpath_root {var}` has no entry turning `/ports/PORT` into {want:?} (nginx.template's URL)"),
                        format!("make it `{}`, then `nginx -t && nginx -s reload` (once)", self.map_text()),
                    )
                } else if wrong_default {
                    Line::Fail(
                        format!("the `map $realpath_root {var}`'s default is a profile's port: a dangling link would send requests to an app nobody chose"),
                        "make it `default \"http://127.0.0.1:1\";` (a 502), then `nginx -t && nginx -s reload`".into(),
                    )
                } else {
                    Line::Ok(format!("nginx maps $realpath_root's /ports/PORT to {var} = {want}"))
                }
            }
        });
        let blocks = server_blocks(&files);
        let Some((answers, host, port)) = answering_url(&blocks, &self.config.probe_url) else {
            lines.push(Line::Skip(format!(
                "which server block answers {} (a regex server_name, or no block listens there)",
                self.config.probe_url
            )));
            return lines;
        };
        let own = with_included(&files, &answers.words);
        let root = own.windows(2).any(|w| w[0] == "root" && w[1] == link);
        let proxies = has_proxy_pass(&own, &var);
        lines.push(if root && proxies {
            Line::Ok(format!(
                "probe_url's request (Host {host}, port {port}) is answered by {}, which has `root {link};` and `proxy_pass {var};`",
                answers.describe()
            ))
        } else {
            let missing: Vec<String> = [
                (!root).then(|| format!("`root {link};`")),
                (!proxies).then(|| format!("`proxy_pass {var};`")),
            ]
            .into_iter()
            .flatten()
            .collect();
            Line::Fail(
                format!(
                    "probe_url's request (Host {host}, port {port}) is answered by {}, which lacks {}: moving the link changes nothing there",
                    answers.describe(),
                    missing.join(" and ")
                ),
                format!("add `root {link};` and `location / {{ proxy_pass {var}; }}` to that server block, then `nginx -t && nginx -s reload` (once)"),
            )
        });
        // `$realpath_root` is the root of the location a request is in:
        // a location with a `root` of its own maps to the default (502)
        // if it proxies to the map's variable, whatever the link says.
        let page_root = self.maintenance_dir().display().to_string();
        let others: Vec<&str> = own
            .windows(2)
            .filter(|w| w[0] == "root" && w[1] != link && w[1] != page_root)
            .map(|w| w[1].as_str())
            .collect();
        if !others.is_empty() {
            lines.push(Line::Warn(format!(
                "{} also has `root {};`: in that location $realpath_root is that path, not the link's, so `proxy_pass {var};` there gets the map's default (502) whatever the link says; give such a location `root {link};` or a proxy_pass of its own",
                answers.describe(),
                others.join(";` and `root ")
            )));
        }
        lines.push(match self.maintenance_lines(&files, &own) {
            Ok(()) => Line::Ok(format!(
                "the maintenance page can be served without a reload: {RETRY_VAR} from $realpath_root, the 503 and the page's location in {}",
                answers.describe()
            )),
            Err(missing) => Line::Warn(format!(
                "`switch --maintenance` is unavailable (refused, nothing changed) until nginx's config has {missing}: README's realpath setup has the lines (one reload)"
            )),
        });
        lines
    }

    /// The link points at a profile's directory, and every profile's
    /// directory exists, is a directory of its own (not a symlink, which
    /// realpath() would resolve elsewhere) and nginx's workers can search it.
    fn check_route(&self) -> Vec<Line> {
        let mut lines = vec![match self.points() {
            Ok(Points::Missing) => Line::Ok(format!(
                "{} does not exist yet; the first switch makes it",
                self.describe()
            )),
            Ok(Points::At(p)) => Line::Ok(format!(
                "{} points at ports/{} ({})",
                self.describe(),
                p.port,
                p.name
            )),
            Ok(Points::Maintenance(p)) => Line::Ok(format!(
                "{} points at the maintenance page: nginx answers every request 503; `switch --live` returns to ports/{} ({})",
                self.describe(),
                p.port,
                p.name
            )),
            Ok(Points::Wrong(why)) => Line::Fail(why, self.fix()),
            Err(e) => Line::Fail(
                format!("cannot read {}: {e:#}", self.describe()),
                "make its directory readable by this user".into(),
            ),
        }];
        let workers = self
            .host
            .is_local()
            .then(|| worker_ids(self.config))
            .flatten();
        for p in &self.config.profiles {
            let dir = self.port_dir(p.port);
            let shown = dir.display();
            let fix = format!("`mkdir -p {shown}`, and `chmod o+x` (or the workers' group) on it and every directory above");
            let found = self.is_dir(&dir);
            // Where realpath() leads it, when not to itself (over ssh too).
            let elsewhere = match found {
                Ok(true) => match self.resolves_to_itself(&dir, "ports") {
                    Ok(Err(why)) => Some(why),
                    _ => None,
                },
                _ => None,
            };
            lines.push(match found {
                Ok(false) => Line::Fail(
                    format!("{shown}{} ({}'s directory) does not exist: pointing the link there would send every request to the map's default", self.host.on(), p.name),
                    fix,
                ),
                Err(e) => Line::Fail(format!("cannot look at {shown}: {e:#}"), fix),
                Ok(true) if elsewhere.is_some() => Line::Fail(
                    format!(
                        "{} ({}'s directory is a symlink leading elsewhere: nginx's map would not route to its port)",
                        elsewhere.unwrap_or_default(),
                        p.name
                    ),
                    format!("make it a directory of its own: `rm {shown} && mkdir {shown}`"),
                ),
                Ok(true) if !self.host.is_local() => Line::Ok(format!(
                    "{shown}{} ({}'s directory) exists (who can search it is not checked over ssh)",
                    self.host.on(),
                    p.name
                )),
                Ok(true) => match unsearchable(&dir, workers) {
                    None => Line::Ok(format!(
                        "{shown} ({}'s directory) exists and {} can search it",
                        p.name,
                        who(workers)
                    )),
                    Some(blocked) => Line::Fail(
                        format!(
                            "{} cannot search {} on the way to {shown}, so realpath() fails and nginx answers 500",
                            who(workers),
                            blocked.display()
                        ),
                        fix,
                    ),
                },
            });
        }
        lines
    }

    fn needs_dump(&self) -> bool {
        false
    }

    /// `maintenance/nonstop-maintenance.html` beside `ports/`: nginx's
    /// page location serves it from there (`root .../maintenance`).
    fn maintenance_page(&self) -> Result<PathBuf> {
        Ok(self.maintenance_dir().join(crate::route::page::PAGE_NAME))
    }

    fn maintenance_content(&self, keep: &Profile, retry_after: u32) -> Result<Vec<u8>> {
        Ok(Self::maintenance_target(keep, retry_after).into_bytes())
    }

    /// Checks nginx's config has the maintenance lines (nothing written
    /// otherwise), makes `maintenance/PORT-SECONDS` (what the link will
    /// point at; nginx only reads its name) and writes the page beside it.
    fn write_page(&self, keep: &Profile, retry_after: u32, page: &[u8]) -> Result<()> {
        self.check_maintenance_ready()?;
        let dir = self
            .maintenance_dir()
            .join(format!("{}-{retry_after}", keep.port));
        match self.host {
            Host::Local => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|e| anyhow!("cannot make {}: {e}", dir.display()))?,
            Host::Ssh(_) => {
                let argv =
                    ["mkdir", "-p", "-m", "755", "--", &dir.to_string_lossy()].map(str::to_string);
                let out = self.host.run(&argv, REMOTE_TEST)?;
                if !out.success() {
                    return Err(anyhow!(
                        "cannot make {}{}: {}",
                        dir.display(),
                        self.host.on(),
                        out.message()
                    ));
                }
            }
        }
        // A symlink planted there would lead the link elsewhere (say to
        // `ports/P`, where nothing runs): refused before the link moves.
        if let Err(why) = self.resolves_to_itself(&dir, "maintenance")? {
            return Err(usage(format!(
                "switch --maintenance: {why}; nothing was changed. Fix: `rm {}` (nonstop makes it a directory)",
                dir.display()
            )));
        }
        let path = self.maintenance_page()?;
        self.host.write_file(
            &path,
            page,
            &format!("the maintenance page {}{}", path.display(), self.host.on()),
        )
    }
}

/// The words inside the first `map $realpath_root VAR { ... }` of nginx's
/// config (`words`, tokenized), if it has one.
fn map_on_realpath_root(words: &[String], var: &str) -> Option<Vec<String>> {
    words
        .windows(4)
        .position(|w| w[0] == "map" && w[1] == "$realpath_root" && w[2] == var && w[3] == "{")
        .map(|at| crate::nginx::blocks::block(words, at + 3))
}

/// Whether a resolved path ends in `ports/PORT`, what the map's regex
/// (`/ports/([0-9]+)$`) reads as `port`.
fn ends_in_port(real: &Path, port: u16) -> bool {
    real.file_name()
        .is_some_and(|n| n.to_str() == Some(port.to_string().as_str()))
        && real
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "ports")
}

/// The uid and gid of nginx's workers (children of the master the pid
/// file names), when they can be seen.
fn worker_ids(config: &Config) -> Option<(u32, u32)> {
    let pid_file = config.nginx.pid_file.as_ref()?;
    let master: i32 = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    let worker = *procs::children(master).first()?;
    let meta = fs::metadata(format!("/proc/{worker}")).ok()?;
    Some((meta.uid(), meta.gid()))
}

/// "nginx's workers (uid 33)", or "everyone" when they cannot be seen.
fn who(workers: Option<(u32, u32)>) -> String {
    match workers {
        Some((uid, _)) => format!("nginx's workers (uid {uid})"),
        None => "everyone (nginx's workers not seen: no pid file)".to_string(),
    }
}

/// The first directory on the way to `dir` (itself included) that
/// `workers` (or, unknown, everyone) cannot search.
fn unsearchable(dir: &Path, workers: Option<(u32, u32)>) -> Option<PathBuf> {
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|d| {
        let m = fs::metadata(d).ok()?;
        let mode = m.mode();
        let ok = match workers {
            Some((0, _)) => true,
            Some((uid, _)) if uid == m.uid() => mode & 0o100 != 0,
            Some((_, gid)) if gid == m.gid() => mode & 0o010 != 0,
            _ => mode & 0o001 != 0,
        };
        (!ok).then(|| d.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        crate::config::parse(
            r#"{"app": {"dir": "/a"}, "nginx": {"mode": "realpath", "link": "/e/nonstop/live"}}"#,
            Path::new("t.json"),
        )
        .unwrap()
    }

    #[test]
    fn the_link_names_a_profile_only_by_its_ports_directory() {
        let c = config();
        let mode = crate::route::of(&c);
        assert_eq!(
            mode.classify(b"ports/8082"),
            Include::Names(c.profiles[1].clone())
        );
        assert_eq!(
            mode.classify(b"/e/nonstop/ports/8081"),
            Include::Names(c.profiles[0].clone())
        );
        for foreign in [
            &b"ports/8083"[..],
            b"ports/80812",
            b"/srv/8081",
            b"../ports/8081",
        ] {
            assert_eq!(mode.classify(foreign), Include::NamesNone);
        }
        assert_eq!(mode.content_for(&c.profiles[0]).unwrap(), b"ports/8081");
        assert_eq!(
            mode.classify(b"maintenance/8082-30"),
            Include::Maintenance(c.profiles[1].clone())
        );
        assert_eq!(
            mode.classify(b"/e/nonstop/maintenance/8081-0"),
            Include::Maintenance(c.profiles[0].clone())
        );
        for foreign in [
            &b"maintenance/8083-30"[..],
            b"maintenance/8081-030",
            b"maintenance/8081-",
            b"maintenance/8081-3x",
            b"maintenance/8081-99999999999",
            b"maintenance/+8081-30",
        ] {
            assert_eq!(mode.classify(foreign), Include::NamesNone, "{foreign:?}");
        }
        assert_eq!(
            mode.maintenance_content(&c.profiles[0], 30).unwrap(),
            b"maintenance/8081-30"
        );
        assert!(mode.commands().reload.is_none() && mode.commands().test.is_none());
    }

    #[test]
    fn the_map_is_checked_against_the_template() {
        let c = config();
        let mode = crate::route::of(&c);
        let good = "# configuration file /e/nginx.conf:\nhttp { map $realpath_root $service_url { \"~/ports/(?<live_port>[0-9]+)$\" \"http://127.0.0.1:$live_port\"; default \"http://127.0.0.1:1\"; }\n server { listen 127.0.0.1:80; root /e/nonstop/live; location / { proxy_pass $service_url; } } }\n";
        let lines = mode.check_config(good);
        assert!(
            lines[..2].iter().all(|l| matches!(l, Line::Ok(_))),
            "{lines:?}"
        );
        // Without the maintenance lines: a warning, never a failure.
        assert!(
            matches!(&lines[2], Line::Warn(w) if w.contains("`switch --maintenance` is unavailable")),
            "{lines:?}"
        );
        let with_page = good.replace(
            "location / {",
            "set $nonstop_503 $nonstop_retry_after; if ($nonstop_503) { return 503; } error_page 503 /nonstop-maintenance.html; \
             location = /nonstop-maintenance.html { internal; root /e/nonstop/maintenance; add_header Retry-After $nonstop_retry_after always; } location / {",
        ).replace(
            "server {",
            "map $realpath_root $nonstop_retry_after { \"~/maintenance/[0-9]+-(?<s>[0-9]+)$\" $s; default \"\"; }\n server {",
        );
        // Without the upstream map's `/maintenance/` entry a request in
        // flight as the page goes on gets a 502: still unavailable.
        let lines = mode.check_config(&with_page);
        assert!(
            matches!(&lines[2], Line::Warn(w) if w.contains("`switch --maintenance` is unavailable")
                && w.contains("\"~/maintenance/(?<live_port>[0-9]+)-[0-9]+$\" \"http://127.0.0.1:$live_port\"")),
            "{lines:?}"
        );
        let with_page = with_page.replace(
            "default \"http://127.0.0.1:1\"",
            "\"~/maintenance/(?<live_port>[0-9]+)-[0-9]+$\" \"http://127.0.0.1:$live_port\"; default \"http://127.0.0.1:1\"",
        );
        let lines = mode.check_config(&with_page);
        assert!(lines.iter().all(|l| matches!(l, Line::Ok(_))), "{lines:?}");
        let elsewhere = with_page.replace("root /e/nonstop/maintenance;", "root /srv;");
        assert!(mode
            .check_config(&elsewhere)
            .iter()
            .any(|l| matches!(l, Line::Warn(w) if w.contains("root /e/nonstop/maintenance"))),);
        let bad_default = good.replace("127.0.0.1:1\"", "127.0.0.1:8081\"");
        assert!(
            matches!(&mode.check_config(&bad_default)[0], Line::Fail(w, _) if w.contains("default"))
        );
        let api = good.replace(
            "location / {",
            "location /api/ { root /srv/api; proxy_pass $service_url; } location / {",
        );
        let lines = mode.check_config(&api);
        assert!(
            matches!(&lines[2], Line::Warn(w) if w.contains("also has `root /srv/api;`")),
            "{lines:?}"
        );
        assert!(!mode
            .check_config(&with_page)
            .iter()
            .any(|l| matches!(l, Line::Warn(w) if w.contains("also has"))));
        let no_root = good.replace("root /e/nonstop/live;", "");
        assert!(
            matches!(&mode.check_config(&no_root)[1], Line::Fail(w, _) if w.contains("root /e/nonstop/live"))
        );
    }
}
