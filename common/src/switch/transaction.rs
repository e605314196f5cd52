//! The switch transaction, for every mode that writes a route: the route
//! written atomically, `nginx.test` and `nginx.reload` where the mode needs
//! them, then confirmed through nginx itself ([`crate::switch::confirm`]);
//! any failure or signal puts the previous route back byte for byte. The
//! journal ([`crate::switch::journal`]) records each phase before the step
//! after it, so that the next stage can finish or undo a switch this
//! process could not.
//!
//! A phase that cannot be recorded (a full disk, a read-only or failing
//! state file system) is decided by what the journal then still says:
//! - before the reload (`written`, `tested`, `reloading` not recorded): the
//!   journal says no reload ran, so none may run; the route is put back at
//!   once, without records, and the switch ends there (exit 1);
//! - after the reload (`reloaded`, `confirmed` not recorded): the journal
//!   says `reloading`, "nginx may be on the new config", which stays true
//!   whatever happens next, so the switch goes on: confirmed, or undone.
//!
//! Either way the message says where nginx sends traffic now.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};

use crate::config::Profile;
use crate::route::host::MaybeWritten;
use crate::route::mode::Mode;
use crate::state::context::Context;
use crate::switch::confirm::{watch, Cut, Want};
use crate::switch::journal::{self, Journal, PageWant, Phase};
use crate::sys::signals;
use crate::sys::time::secs;

/// Runs the transaction, the journal begun. Returns the workers of the
/// previous configuration, when a reload replaced them and they could be
/// seen (retiring waits for them).
pub(super) fn run(
    ctx: &Context,
    mode: &dyn Mode,
    mut journal: Journal,
    target: &Profile,
    new: &[u8],
    old: Option<&[u8]>,
) -> Result<Option<Vec<i32>>> {
    let page = journal.maintenance.clone();
    let tx = Tx {
        ctx,
        mode,
        target,
        old,
        page: page.as_ref(),
    };
    let written_at = tx.write_route(&mut journal, new)?;
    tx.test_config(&mut journal)?;
    let (old_workers, reloaded_at) = tx.reload(&mut journal)?;
    let mut last = String::new();
    let confirmed = tx.confirm(old_workers.as_deref(), &mut last);
    tx.settle(
        &mut journal,
        Settle {
            confirmed,
            last,
            old_workers,
            applied_at: reloaded_at.unwrap_or(written_at),
        },
    )
}

/// A transaction's fixed parts: where, which mode, to which profile, and
/// the route's content before it (`None`: there was none).
struct Tx<'a> {
    ctx: &'a Context,
    mode: &'a dyn Mode,
    target: &'a Profile,
    old: Option<&'a [u8]>,
    /// A switch to the maintenance page: what it answers with.
    page: Option<&'a PageWant>,
}

/// How the confirmation went, for [`Tx::settle`].
struct Settle {
    confirmed: Result<Option<Duration>, signals::Interrupted>,
    last: String,
    old_workers: Option<Vec<i32>>,
    /// When what was written took effect: the reload returned, or (a mode
    /// without reload) the route was written.
    applied_at: Instant,
}

impl Tx<'_> {
    /// Undoes the switch: the route put back and, when `reload_back`
    /// (nginx may serve the new route), nginx brought back to it and
    /// watched. Words for the message.
    fn undo(&self, journal: &mut Journal, reload_back: bool) -> Result<String> {
        let ctx = self.ctx;
        journal::undo(
            &ctx.config,
            &ctx.state,
            journal,
            self.old,
            reload_back,
            &ctx.log,
        )
    }

    /// The first step: the new route written and the journal marked; on
    /// failure the old one is back, or the journal kept for the next stage
    /// when what the write did cannot be told. Returns when it was written.
    fn write_route(&self, journal: &mut Journal, new: &[u8]) -> Result<Instant> {
        let Tx {
            ctx, mode, target, ..
        } = *self;
        if let Err(e) = mode.write(new) {
            // An atomic write that failed left the old route, unless the
            // rename went through and only the directory's sync failed (or,
            // over ssh, the answer was lost after the write): then put the
            // old one back (nginx was not reloaded).
            // Only a read that worked counts: over a dead link a failed read
            // says nothing about what the write did.
            if matches!(mode.read(), Ok(ref now) if now.as_deref() == self.old) {
                journal::end(&ctx.state, &ctx.log);
                return Err(e.context("nothing changed"));
            }
            let maybe_written = e.chain().any(|c| c.is::<MaybeWritten>());
            let undone = self.undo(journal, false).with_context(|| {
                if maybe_written {
                    // Not "nothing changed": over ssh the write may have happened.
                    format!(
                        "{e:#}; the state of {} is unknown until it can be read back; nginx was not reloaded. \
                         The switch journal is kept: the next stage puts the previous one back before anything else \
                         (reloading nginx if it no longer answers as before), so the switch to {} is undone",
                        mode.describe(),
                        target.name
                    )
                } else {
                    format!("{e:#}")
                }
            })?;
            return Err(e.context(format!("nginx was not reloaded; {undone}")));
        }
        let written_at = Instant::now();
        ctx.log.say(format!(
            "wrote {}: {}",
            mode.describe(),
            String::from_utf8_lossy(new).trim()
        ));
        journal::mark(&ctx.state, journal, Phase::Written)
            .map_err(|e| self.unrecorded(journal, e))?;
        Ok(written_at)
    }

    /// A phase before the reload could not be recorded: the journal says no
    /// reload ran, so none may. Puts the route back (no records needed) and
    /// says where traffic is now.
    fn unrecorded(&self, journal: &mut Journal, why: anyhow::Error) -> anyhow::Error {
        let config = &self.ctx.config;
        match self.undo(journal, false) {
            Ok(undone) => anyhow!(
                "{why:#}; without it the switch to {} stops before nginx is reloaded: {undone}; {}",
                self.target.name,
                journal::traffic_now(config)
            ),
            Err(e) => anyhow!(
                "{why:#}; without it the switch to {} stops before nginx is reloaded, but putting the route back failed: {e:#}; {}",
                self.target.name,
                journal::traffic_now(config)
            ),
        }
    }

    /// `nginx.test` (where the mode runs it), then a last look for a signal
    /// before the change takes effect; either failing puts the old route
    /// back without a reload.
    fn test_config(&self, journal: &mut Journal) -> Result<()> {
        let Tx { ctx, mode, .. } = *self;
        let config = &ctx.config;
        if let Some(test) = mode.commands().test {
            if let Err(why) = journal::run(config, Some(test)) {
                self.undo(journal, false)?;
                return Err(anyhow!(
                    "`{}` failed, nginx was not reloaded and {} is restored: {why}; {}",
                    test.join(" "),
                    mode.describe(),
                    journal::traffic_now(config)
                ));
            }
            ctx.log.say(format!("`{}` passed", test.join(" ")));
            journal::mark(&ctx.state, journal, Phase::Tested)
                .map_err(|e| self.unrecorded(journal, e))?;
        }
        if let Err(i) = signals::check() {
            self.undo(journal, false)?;
            return Err(anyhow!(i).context(format!(
                "{} is restored and nginx was not reloaded",
                mode.describe()
            )));
        }
        Ok(())
    }

    /// `nginx.reload` (where the mode runs it), with the workers of the
    /// configuration before noted in the journal first. Returns them (when
    /// they could be seen) and when the reload returned; nothing for a mode
    /// whose route takes effect as it is written.
    fn reload(&self, journal: &mut Journal) -> Result<(Option<Vec<i32>>, Option<Instant>)> {
        let Tx {
            ctx, mode, target, ..
        } = *self;
        let Some(reload) = mode.commands().reload else {
            return Ok((None, None));
        };
        let state = &ctx.state;
        let old_workers = mode.accepting_workers(&ctx.log);
        journal.workers_before = old_workers.clone();
        journal::mark(state, journal, Phase::Reloading).map_err(|e| self.unrecorded(journal, e))?;
        let reloaded_at = Instant::now();
        if let Err(why) = journal::run(&ctx.config, Some(reload)) {
            // A reload that reports failure may still have taken effect (ssh
            // dropped after the remote reload ran, `systemctl reload` timing
            // out): undo as if it had, and watch nginx come back.
            let undone = self.undo(journal, true).with_context(|| {
                format!(
                    "`{}` failed ({why}) and may still have taken effect",
                    reload.join(" ")
                )
            })?;
            return Err(anyhow!(
                "`{}` failed: {why}; it may still have taken effect, so the switch is undone: {undone}",
                reload.join(" "),
            ));
        }
        if let Err(e) = journal::mark(state, journal, Phase::Reloaded) {
            // The journal says `reloading`: nginx may be on the new config.
            // That stays true until the switch is confirmed or undone, so
            // neither needs this record.
            ctx.log.warn(format!(
                "{e:#}; going on: the journal says a reload may have run, which is so"
            ));
        }
        ctx.log.say(format!(
            "`{}` done; waiting for nginx to answer {}",
            reload.join(" "),
            match self.page {
                Some(_) => "with the maintenance page".to_string(),
                None => format!("as {}", target.name),
            }
        ));
        Ok((old_workers, Some(reloaded_at)))
    }

    /// Waits, within `nginx.confirm_timeout_secs`, until nginx is seen to
    /// serve the target: no worker of the old configuration can take a
    /// connection any more and a new connection through nginx reaches the
    /// target, for as long as the mode says one answer needs to last (nginx
    /// keeps old workers accepting for ~100 ms after it starts the new
    /// ones; where they cannot be seen, only a longer run of answers
    /// tells). `last` says what was seen last.
    fn confirm(
        &self,
        old_workers: Option<&[i32]>,
        last: &mut String,
    ) -> Result<Option<Duration>, signals::Interrupted> {
        let config = &self.ctx.config;
        let want = match self.page {
            Some(p) => Want::Page {
                token: &p.token,
                retry_after: p.retry_after,
            },
            None => Want::Profile(self.target),
        };
        watch(
            config,
            Some(want),
            old_workers.unwrap_or_default(),
            self.mode.steady_for(old_workers),
            config.nginx.confirm_timeout,
            Cut::BySignal,
            last,
        )
    }

    /// Ends the transaction: the journal ended on a confirmed switch, the
    /// switch undone on a timeout or a signal.
    fn settle(&self, journal: &mut Journal, how: Settle) -> Result<Option<Vec<i32>>> {
        let Tx {
            ctx, mode, target, ..
        } = *self;
        let Settle {
            confirmed,
            last,
            old_workers,
            applied_at,
        } = how;
        let applied = if mode.commands().reload.is_some() {
            "the reload"
        } else {
            "the write"
        };
        match confirmed {
            Ok(Some(_)) => {
                if let Err(e) = journal::mark(&ctx.state, journal, Phase::Confirmed) {
                    // Ending the journal is what counts; a journal left behind
                    // in `reloading` is kept by the next stage once it sees
                    // nginx answer as the target.
                    ctx.log
                        .warn(format!("{e:#}; the switch is confirmed all the same"));
                }
                journal::end(&ctx.state, &ctx.log);
                let how = if old_workers.is_some() {
                    "the old workers stopped accepting and the probe answers"
                } else if mode.steady_for(None).is_zero() {
                    "the probe answers"
                } else {
                    "the probe answers without a break"
                };
                let routes = match self.page {
                    Some(_) => {
                        "nginx answers every request with the maintenance page (503)".to_string()
                    }
                    None => format!("nginx routes to {} ({})", target.name, target.port),
                };
                ctx.log.say(format!(
                    "{routes}: confirmed {} after {applied} ({how})",
                    secs(applied_at.elapsed())
                ));
                Ok(old_workers)
            }
            Ok(None) => {
                let what = format!(
                    "nginx did not answer as {} within {} of {applied} ({last})",
                    target.name,
                    secs(ctx.config.nginx.confirm_timeout),
                );
                let undone = self.undo(journal, true).with_context(|| what.clone())?;
                Err(anyhow!("{what}; {undone}"))
            }
            Err(i) => {
                let undone = self
                    .undo(journal, true)
                    .with_context(|| format!("{i}; undoing the switch to {}", target.name))?;
                Err(anyhow!(i).context(format!(
                    "the switch to {} was undone: {undone}",
                    target.name,
                )))
            }
        }
    }
}
