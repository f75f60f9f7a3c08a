//! The apply engine's hooks during a sync: the write-ahead journal before each step, the
//! stop request, and preemption of a health wait by a newer commit that verifies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use veza_host::apply::Hooks;
use veza_model::config::HostConfig;
use veza_plan::plan::Phase;
use veza_plan::{Action, Step};
use veza_source::fetch::{FetchOptions, Mirror};
use veza_source::{Acceptance, Base, accept};
use veza_state::{Journal, Store};

use super::unverified;

pub(super) struct JournalHooks<'a> {
    pub(super) store: &'a Store,
    pub(super) journal: Journal,
    /// The checks through the edge owed before this run (the state's): carried in every
    /// journal entry until the run's outcome is saved, so a second kill loses none.
    pub(super) owed: BTreeMap<String, String>,
    pub(super) stop: &'a AtomicBool,
    /// Looks for a newer commit on the branch while a health gate waits.
    pub(super) newer: NewerCommit<'a>,
    /// The edge config a promotion with no fallback replaces (told just before its
    /// switch): what its owed checks go back to.
    pub(super) before: Option<String>,
}

/// Checks, at most every few seconds, whether the branch moved past the commit being
/// applied: a newer commit that the sync itself would accept preempts a health wait in
/// progress.
pub(super) struct NewerCommit<'a> {
    pub(super) config: &'a HostConfig,
    /// The sync's own fetch options (credentials, CA, approval tags); `None` when they
    /// could not be built (no check, the health wait runs to its end).
    pub(super) options: Option<FetchOptions>,
    pub(super) mirror_dir: PathBuf,
    pub(super) commit: String,
    /// The last applied commit: a preempted run ends attempted, so the sync that follows
    /// holds the newer tip's approvals to what changed since this commit (none: every
    /// path), and so does the preemption.
    pub(super) applied: Option<String>,
    pub(super) last_check: std::cell::Cell<Option<Instant>>,
}

impl NewerCommit<'_> {
    const EVERY: Duration = Duration::from_secs(3);

    fn check(&self) -> bool {
        if self.last_check.get().is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        self.last_check.set(Some(Instant::now()));
        let Some(options) = &self.options else { return false };
        let c = self.config;
        let verdict = tokio::task::block_in_place(|| {
            let mut mirror = Mirror::open_or_init(&self.mirror_dir).ok()?;
            let opts = FetchOptions {
                timeout: options.timeout.min(Duration::from_secs(10)),
                ..options.clone()
            };
            let tip = mirror.fetch(&c.source.remotes, &opts).ok()?.tip;
            if tip == self.commit.as_str() {
                return None;
            }
            // Held to everything the sync holds a tip to: signature, descent from the
            // commit being applied, the trust policy and its approvals, valid manifests
            // whose secrets open with this host's keys.
            let read_keys = || super::accept::host_identities(c);
            let acceptance = Acceptance {
                allowed_signers: Path::new(&c.trust.allowed_signers),
                policy: c.trust.policy.as_deref(),
                base: Base::Descends(&self.commit),
                policy_since: match &self.applied {
                    Some(a) => veza_source::PolicySince::Commit(a),
                    None => veza_source::PolicySince::Everything,
                },
                manifests: &c.source.manifests,
                host: &c.host,
                max_refs: c.max_refs(),
                now: chrono::Utc::now().timestamp(),
                identities: Some(&read_keys),
            };
            Some((tip, accept(&mirror, tip, &acceptance).map(|_| ()).map_err(|r| r.reason)))
        });
        match verdict {
            Some((tip, Ok(()))) => {
                tracing::info!(newer = %tip, "a newer commit arrived; preempting the health wait");
                true
            }
            Some((tip, Err(why))) => {
                tracing::warn!(tip = %tip, "the branch moved, but not to a commit that may preempt the health wait: {why}");
                false
            }
            None => false,
        }
    }
}

impl Hooks for JournalHooks<'_> {
    fn before_step(&mut self, index: usize, step: &Step) -> Result<(), String> {
        self.journal.done = index;
        self.journal.current = Some(step.action.to_string());
        self.journal.unverified.clone_from(&self.owed);
        self.journal.migrating = match &step.action {
            Action::Migrate { instance, slot, .. } => Some(format!(
                "the migration of {}/{} for release {} in `{instance}`",
                slot.env,
                slot.app,
                slot.release.short()
            )),
            _ => None,
        };
        tracing::info!(step = index + 1, "{} ({})", step.action, step.reason);
        self.store.write_journal(&self.journal).map_err(|e| e.to_string())
    }
    fn phase(&mut self, index: usize, step: &Step, phase: Phase, what: &str) -> Result<(), String> {
        self.journal.done = index;
        self.journal.current = Some(format!("{}: {phase} {what}", step.action));
        match (phase, &step.action) {
            (Phase::Switch, Action::Promote(switch)) => {
                // Written before the new config is installed: from here until its checks
                // pass, a kill leaves traffic on colors nobody checked through the edge.
                self.journal.unverified.extend(unverified::switched(switch));
                if let Some(e) = unverified::edge_switched(switch, self.before.as_deref()) {
                    self.journal.unchecked_edge = Some(e);
                }
            }
            (Phase::Fallback, Action::Promote(_)) => {
                // The checks failed: once traffic is back, this commit is not tried again,
                // even if the run is killed before its rollback is recorded.
                self.journal.checks_failed = true;
            }
            (Phase::Checked, Action::Promote(switch)) => {
                // Checked: nothing of this switch is owed any more.
                unverified::pay(&mut self.journal.unverified, switch);
                unverified::pay(&mut self.owed, switch);
                unverified::pay_edge(&mut self.journal.unchecked_edge, switch);
            }
            _ => {}
        }
        tracing::info!(step = index + 1, "{phase} {what}");
        self.store.write_journal(&self.journal).map_err(|e| {
            tracing::warn!("journal: {e}");
            e.to_string()
        })
    }
    fn switching_from(&mut self, before: Option<&str>) {
        self.before = before.map(str::to_string);
    }
    fn migrated(&mut self, env: &str, app: &str, release: &str) {
        self.journal.migrated.push((env.to_string(), app.to_string(), release.to_string()));
        self.journal.migrating = None;
        if let Err(e) = self.store.write_journal(&self.journal) {
            tracing::warn!("journal: the migration of {env}/{app} ran; recording it failed: {e}");
        }
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn preempted(&self) -> bool {
        self.newer.check()
    }
}
