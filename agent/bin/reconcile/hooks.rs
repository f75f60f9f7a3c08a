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
use veza_source::accept::descends_from;
use veza_source::fetch::{FetchOptions, Mirror};
use veza_source::{AllowedSigners, ObjectKind, Refusal, verify_object};
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
}

/// Checks, at most every few seconds, whether the branch moved past the commit being
/// applied: a newer commit that verifies preempts a health wait in progress.
pub(super) struct NewerCommit<'a> {
    pub(super) config: &'a HostConfig,
    pub(super) mirror_dir: PathBuf,
    pub(super) commit: String,
    pub(super) last_check: std::cell::Cell<Option<Instant>>,
}

impl NewerCommit<'_> {
    const EVERY: Duration = Duration::from_secs(3);

    fn check(&self) -> bool {
        if self.last_check.get().is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        self.last_check.set(Some(Instant::now()));
        let c = self.config;
        let verdict = tokio::task::block_in_place(|| {
            let mut mirror = Mirror::open_or_init(&self.mirror_dir).ok()?;
            let opts = FetchOptions {
                max_refs: c.max_refs(),
                max_pack_bytes: c.max_pack_bytes(),
                ..FetchOptions::new(c.branch(), c.fetch_timeout().min(Duration::from_secs(10)))
            };
            let tip = mirror.fetch(&c.source.remotes, &opts).ok()?.tip;
            if tip == self.commit.as_str() {
                return None;
            }
            let signers = AllowedSigners::from_file(Path::new(&c.trust.allowed_signers));
            let raw = mirror.raw_commit(tip).map_err(|e| e.to_string());
            let descends = || match descends_from(&mirror, tip, &self.commit) {
                Ok(_) => Ok(true),
                Err((Refusal::Rollback, _)) => Ok(false),
                Err((_, why)) => Err(why),
            };
            let now = chrono::Utc::now().timestamp();
            let verdict = match (signers, raw) {
                (Ok(signers), Ok(raw)) => preempts(&raw, &signers, now, descends),
                (Err(e), _) => Err(format!("trust root unusable: {e}")),
                (_, Err(e)) => Err(e),
            };
            Some((tip, verdict))
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

/// Whether a new branch tip (`raw_tip`, another commit than the one being applied) may
/// preempt a health wait: only when its signature verifies against the trust root and it
/// descends from the commit being applied. An unsigned or untrusted tip, or a rewind,
/// never interrupts a promotion (it would be rejected anyway). `Err` says why not.
fn preempts(
    raw_tip: &[u8],
    signers: &AllowedSigners,
    now: i64,
    descends: impl FnOnce() -> Result<bool, String>,
) -> Result<(), String> {
    verify_object(ObjectKind::Commit, raw_tip, signers, now)
        .map_err(|e| Refusal::Signature.reason(&e.to_string()))?;
    match descends() {
        Ok(true) => Ok(()),
        Ok(false) => Err("it does not descend from the commit being applied".to_string()),
        Err(e) => Err(format!("its ancestry is unknown: {e}")),
    }
}

impl Hooks for JournalHooks<'_> {
    fn before_step(&mut self, index: usize, step: &Step) -> Result<(), String> {
        self.journal.done = index;
        self.journal.current = Some(step.action.to_string());
        self.journal.unverified.clone_from(&self.owed);
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
            }
            (Phase::Checked, Action::Promote(switch)) => {
                // Checked: nothing of this switch is owed any more.
                unverified::pay(&mut self.journal.unverified, switch);
                unverified::pay(&mut self.owed, switch);
            }
            _ => {}
        }
        tracing::info!(step = index + 1, "{phase} {what}");
        self.store.write_journal(&self.journal).map_err(|e| {
            tracing::warn!("journal: {e}");
            e.to_string()
        })
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn preempted(&self) -> bool {
        self.newer.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_verified_descendant_preempts_a_health_wait() {
        let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("signing/vectors");
        let read = |name: &str| std::fs::read(vectors.join(name)).expect("signing vector");
        let signers = AllowedSigners::from_file(&vectors.join("allowed_signers")).expect("trust");
        // (new tip, its ancestry, preempts?, why not)
        let table: [(&str, Result<bool, String>, bool, &str); 6] = [
            ("commit2.raw", Ok(true), true, ""),
            ("commit2.raw", Ok(false), false, "does not descend"),
            ("commit2.raw", Err("walk limit".into()), false, "ancestry is unknown"),
            ("neg-unsigned.raw", Ok(true), false, "signature: commit is not signed"),
            ("neg-untrusted-key.raw", Ok(true), false, "not in allowed_signers"),
            ("neg-tampered.raw", Ok(true), false, "bad signature"),
        ];
        for (tip, ancestry, want, why) in table {
            let got = preempts(&read(tip), &signers, 1_800_000_000, || ancestry.clone());
            assert_eq!(got.is_ok(), want, "{tip} {ancestry:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.contains(why), "{tip}: {e}");
            }
        }
    }
}
