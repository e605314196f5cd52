//! The confirmation through nginx, shared by every mode that writes a
//! route: nginx serves a profile once none of the workers a reload replaced
//! accepts connections any more (where there were such workers and they
//! could be seen) and the probe through nginx answers as that profile
//! without a break for as long as the mode says it must
//! ([`crate::route::mode::Mode::steady_for`]).

use std::time::{Duration, Instant};

use crate::config::{Config, Profile};
use crate::nginx::probe::{probe, Probe};
use crate::nginx::workers::still_accepting;
use crate::sys::signals::{self, Interrupted};
use crate::sys::time::{secs, wait_for};

/// How a watch of nginx may end besides its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// A signal ends it (the switch's own confirmation, which is undone then).
    BySignal,
    /// Nothing does: it runs while undoing, which a signal must not leave
    /// half-done, and it is bounded.
    Never,
}

/// What nginx must be seen to serve.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Want<'a> {
    /// The probe answers as this profile.
    Profile(&'a Profile),
    /// The probe URL gets the maintenance page (see
    /// [`crate::switch::maintenance`]): 503, this `Retry-After`, the page
    /// carrying this switch's token.
    Page { token: &'a str, retry_after: u32 },
}

/// Watches, at most `limit`, until nginx serves `want`: none of `leaving`
/// accepts any more, and the probe answers `want` without a break for
/// `steady`. With `want` `None` (there was no route before) only the
/// workers tell. Returns how long it took, `None` at the bound; `last` says
/// what was seen last.
pub(crate) fn watch(
    config: &Config,
    want: Option<Want<'_>>,
    leaving: &[i32],
    steady: Duration,
    limit: Duration,
    cut: Cut,
    last: &mut String,
) -> Result<Option<Duration>, Interrupted> {
    let mut streak: Option<Instant> = None;
    let done = || {
        if let Some(w) = leaving.iter().find(|&&w| still_accepting(w)) {
            *last = format!("worker {w} of the previous configuration still accepts connections");
            return false;
        }
        let Some(want) = want else {
            return true;
        };
        let want = match want {
            Want::Profile(p) => p,
            Want::Page { token, retry_after } => {
                return match crate::nginx::probe::serves_page(
                    config,
                    &crate::route::page::marker(token),
                    retry_after,
                ) {
                    Ok(()) => {
                        let since = *streak.get_or_insert_with(Instant::now);
                        *last = format!(
                            "it answered the maintenance page for {}",
                            secs(since.elapsed())
                        );
                        since.elapsed() >= steady
                    }
                    Err(why) => {
                        streak = None;
                        *last = why;
                        false
                    }
                };
            }
        };
        match probe(config) {
            Probe::Answered(p) if &p == want => {
                let since = *streak.get_or_insert_with(Instant::now);
                *last = format!("it answered {} for {}", p.name, secs(since.elapsed()));
                since.elapsed() >= steady
            }
            Probe::Answered(p) => {
                streak = None;
                *last = format!("{} answered {}", config.probe_url, p.name);
                false
            }
            Probe::Failed(why) => {
                streak = None;
                *last = why;
                false
            }
        }
    };
    let every = Duration::from_millis(10);
    match cut {
        Cut::BySignal => signals::wait_for(limit, every, done),
        Cut::Never => Ok(wait_for(limit, every, done)),
    }
}
