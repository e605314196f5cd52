//! The symlink mode, the sites-available / sites-enabled layout: one site
//! file per profile, and a symlink nginx includes pointing at the live
//! one's. A switch makes a new symlink beside the old one and renames it
//! over it (so nginx never sees a missing link), tests nginx's config,
//! reloads and confirms as the include mode does. The link names P when it
//! points (a relative target resolved against the link's directory) at P's
//! site file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Result};

use crate::config::waits::{Part, Steps};
use crate::config::{Config, Profile};
use crate::nginx::blocks::loaded;
use crate::nginx::conf::split_dump;
use crate::route::address::Seen;
use crate::route::host::{normalize, Entry, Host};
use crate::route::mode::{Commands, Include, Line, Mode, Witness};
use crate::route::reloading;
use crate::state::RouteId;
use crate::sys::log::Log;

/// The symlink `link` between the site files `sites` (in profile order),
/// on `host`.
#[derive(Debug)]
pub(crate) struct SymlinkSites<'a> {
    pub config: &'a Config,
    pub host: Host<'a>,
    pub link: &'a Path,
    pub sites: &'a [PathBuf],
}

impl SymlinkSites<'_> {
    /// The site file of `profile`.
    fn site(&self, profile: &Profile) -> Option<&PathBuf> {
        let i = self.config.profiles.iter().position(|p| p == profile)?;
        self.sites.get(i)
    }
}

impl SymlinkSites<'_> {
    /// The directory of the site files, where the maintenance page and its
    /// sites go.
    fn sites_dir(&self) -> Option<&Path> {
        self.sites.first()?.parent()
    }

    /// The maintenance site for `keep`: its site file with the page's
    /// lines in each server block.
    fn maintenance_site(&self, keep: &Profile) -> Option<PathBuf> {
        Some(
            self.sites_dir()?
                .join(format!("nonstop-maintenance-{}", keep.name)),
        )
    }
}

impl Mode for SymlinkSites<'_> {
    fn id(&self) -> RouteId {
        RouteId {
            mode: self.config.nginx.mode.to_string(),
            path: self.link.to_path_buf(),
            host: self.host.ssh().map(|s| s.destination.clone()),
        }
    }

    fn noun(&self) -> &'static str {
        "symlink"
    }

    fn describe(&self) -> String {
        format!("the symlink {}{}", self.link.display(), self.host.on())
    }

    fn directory(&self) -> Option<(&'static str, PathBuf)> {
        Some(("symlink's directory", self.link.parent()?.to_path_buf()))
    }

    fn witness(&self) -> Result<Witness> {
        Ok(Witness::Route(match self.read()? {
            None => Include::Missing,
            Some(bytes) => self.classify(&bytes),
        }))
    }

    fn content_for(&self, profile: &Profile) -> Option<Vec<u8>> {
        Some(
            self.site(profile)
                .map(|s| s.as_os_str().as_encoded_bytes().to_vec())
                .unwrap_or_default(),
        )
    }

    fn read(&self) -> Result<Option<Vec<u8>>> {
        match self.host.read_link(self.link, &self.describe())? {
            Entry::Missing => Ok(None),
            Entry::Link(target) => Ok(Some(target)),
            Entry::NotALink => Err(anyhow!(
                "{}{} exists but is not a symlink; make it one (`ln -sfn SITE {}`) or fix nginx.link",
                self.link.display(),
                self.host.on(),
                self.link.display()
            )),
        }
    }

    fn classify(&self, content: &[u8]) -> Include {
        let target = PathBuf::from(String::from_utf8_lossy(content).into_owned());
        let resolved = normalize(&self.link.parent().unwrap_or(Path::new("/")).join(target));
        if let Some(p) = self
            .config
            .profiles
            .iter()
            .find(|p| self.maintenance_site(p).map(|m| normalize(&m)) == Some(resolved.clone()))
        {
            return Include::Maintenance(p.clone());
        }
        match self.sites.iter().position(|s| normalize(s) == resolved) {
            Some(i) => self
                .config
                .profiles
                .get(i)
                .map(|p| Include::Names(p.clone()))
                .unwrap_or(Include::NamesNone),
            None => Include::NamesNone,
        }
    }

    /// A link's content is a path: nothing in it to lose.
    fn refuse_foreign(&self, _content: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    fn write(&self, content: &[u8]) -> Result<()> {
        let dest = String::from_utf8_lossy(content).into_owned();
        self.host.point_link(self.link, &dest, &self.describe())
    }

    fn remove(&self) -> Result<()> {
        self.host.remove(self.link, &self.describe())
    }

    fn commands(&self) -> Commands<'_> {
        reloading::commands(self.config)
    }

    fn before_write(&self, log: &Log) -> Result<()> {
        reloading::before_write(self.config, log)
    }

    fn accepting_workers(&self, log: &Log) -> Option<Vec<i32>> {
        reloading::accepting_workers(self.config, log)
    }

    fn steady_for(&self, workers: Option<&[i32]>) -> Duration {
        reloading::steady_for(workers)
    }

    fn await_traffic(&self, _log: &Log, _live: Option<&Profile>, _target: &Profile) -> Result<()> {
        Ok(())
    }

    fn rotation(&self) -> Option<&'static str> {
        None
    }

    fn check_ready(&self, _log: &Log) -> Result<()> {
        self.host.check_route_dir(self.directory())
    }

    /// The site file's `proxy_pass` or upstream `server`.
    fn connects_to(&self, target: &Profile) -> Seen {
        let Some(site) = self.site(target) else {
            return Seen::Unknown(format!("no site file is configured for {}", target.name));
        };
        let what = format!("the site file {}", site.display());
        match self.host.read_file(site, &what) {
            Ok(Some(bytes)) => Seen::in_text(&String::from_utf8_lossy(&bytes), what, target.port),
            Ok(None) => Seen::Unknown(format!("cannot read {what}: it does not exist")),
            Err(e) => Seen::Unknown(format!("{e:#}")),
        }
    }

    fn drain_note(&self, _port: u16) -> Option<String> {
        None
    }

    fn waits(&self, part: Part, steps: &mut Steps) {
        reloading::waits(self.config, part, steps);
    }

    /// nginx loads the link (as the link, not as the site it points at).
    fn check_config(&self, dump: &str) -> Vec<Line> {
        let link = self.link.display();
        vec![
            if loaded(self.host.is_local(), &split_dump(dump), self.link) {
                Line::Ok(format!("nginx loads the symlink {link}"))
            } else {
                Line::Fail(
                format!("nginx's loaded config never reads the symlink {link}, so moving it changes nothing (the port never switches)"),
                format!("add `include {link};` inside the http block, then `nginx -t && nginx -s reload`"),
            )
            },
        ]
    }

    fn check_route(&self) -> Vec<Line> {
        Vec::new()
    }

    fn needs_dump(&self) -> bool {
        false
    }

    fn maintenance_page(&self) -> Result<PathBuf> {
        let dir = self
            .sites_dir()
            .ok_or_else(|| anyhow!("nginx.sites: no site file is configured"))?;
        crate::route::page::page_dir_fits(dir)?;
        Ok(dir.join(crate::route::page::PAGE_NAME))
    }

    fn maintenance_content(&self, keep: &Profile, _retry_after: u32) -> Result<Vec<u8>> {
        self.maintenance_page()?;
        let site = self
            .maintenance_site(keep)
            .ok_or_else(|| anyhow!("nginx.sites: no site file is configured"))?;
        Ok(site.as_os_str().as_encoded_bytes().to_vec())
    }

    /// The page, and the maintenance site: `keep`'s site file with the
    /// page's lines at the top of each server block (its `listen` and
    /// `server_name` kept, so the page answers where the app did).
    fn write_page(&self, keep: &Profile, retry_after: u32, page: &[u8]) -> Result<()> {
        let path = self.maintenance_page()?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let site = self
            .site(keep)
            .ok_or_else(|| anyhow!("nginx.sites: no site file for {}", keep.name))?;
        let what = format!("the site file {}", site.display());
        let text = self
            .host
            .read_file(site, &what)?
            .ok_or_else(|| anyhow!("cannot read {what}: it does not exist"))?;
        let lines = crate::route::page::page_lines(dir, retry_after);
        let with_page = crate::route::page::inject(&String::from_utf8_lossy(&text), &lines)
            .map_err(|why| {
                crate::sys::error::usage(format!(
                    "switch --maintenance: cannot add the page to {what}: {why}; nothing was changed"
                ))
            })?;
        self.host.write_file(
            &path,
            page,
            &format!("the maintenance page {}", path.display()),
        )?;
        let target = self
            .maintenance_site(keep)
            .ok_or_else(|| anyhow!("nginx.sites: no site file is configured"))?;
        self.host.write_file(
            &target,
            with_page.as_bytes(),
            &format!("the maintenance site {}", target.display()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_symlink_targets_are_resolved_against_the_link() {
        assert_eq!(
            normalize(Path::new(
                "/etc/nginx/sites-enabled/../sites-available/blue"
            )),
            Path::new("/etc/nginx/sites-available/blue")
        );
    }
}
