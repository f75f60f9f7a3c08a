//! What a long-running agent (the daemon) keeps between syncs: the last full observation,
//! reused while Incus's event stream reports no change, so a quiet host costs no list
//! call, no exec and no file read per poll. A one-shot `apply` or `plan` keeps nothing.
//!
//! Rules (see [`Reuse::decide`], pure and table-tested):
//! - only an observation of the commit being synced, taken while the feed was connected,
//!   younger than `poll.full_observation`, with no state-changing Incus event since it
//!   began (the mark is taken *before* reading), is reused;
//! - never after an interrupted run, a failed sync, or a configuration change;
//! - a reused observation only ever confirms "nothing to do": a plan from it that is not
//!   empty is thrown away, and the sync observes afresh before deciding anything
//!   ([`super::Agent::stages`]). Nothing is ever applied on a reused observation.
//!
//! The agent's side is here too: `Agent::keep_warm` (the daemon only), `read_live` (a
//! fresh [`Reading`], the feed's mark taken first) and `keep` (a reading kept for the
//! next syncs, with the names whose events count against it).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use veza_host::incus::{ChangeFeed, Mark};
use veza_model::Manifest;
use veza_plan::live::LiveState;

use super::{Agent, Source};

/// The last full observation and when it began.
#[derive(Debug, Clone)]
pub(super) struct Observed {
    /// The commit whose manifests shaped the observation (what was listed, which units).
    pub commit: String,
    /// The feed's position before the reading started.
    pub mark: Mark,
    /// When the reading started.
    pub at: Instant,
    /// What was seen.
    pub live: LiveState,
}

/// Why an observation is (not) reused: for the sync's stage log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reuse {
    /// Reuse it.
    Yes,
    /// Nothing kept (first sync, after a failure, a change of configuration, a one-shot
    /// command).
    NothingKept,
    /// Kept for another commit.
    OtherCommit,
    /// Older than `poll.full_observation`.
    TooOld,
    /// Incus reported a change since (or its event stream broke).
    Changed,
    /// The previous run was interrupted: re-read everything.
    Interrupted,
}

/// The facts the decision reads, gathered by the caller.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts<'a> {
    pub kept_commit: Option<&'a str>,
    pub commit: &'a str,
    pub age: Duration,
    pub full_every: Duration,
    pub unchanged: bool,
    pub interrupted: bool,
}

impl Reuse {
    /// Whether the kept observation may stand in for a new one. Pure.
    pub fn decide(f: Facts<'_>) -> Reuse {
        match f.kept_commit {
            None => Reuse::NothingKept,
            Some(_) if f.interrupted => Reuse::Interrupted,
            Some(c) if c != f.commit => Reuse::OtherCommit,
            Some(_) if !f.unchanged => Reuse::Changed,
            Some(_) if f.age >= f.full_every => Reuse::TooOld,
            Some(_) => Reuse::Yes,
        }
    }

    /// A word for the stage log.
    pub fn as_str(self) -> &'static str {
        match self {
            Reuse::Yes => "reused",
            Reuse::NothingKept => "nothing kept",
            Reuse::OtherCommit => "new commit",
            Reuse::TooOld => "full reading due",
            Reuse::Changed => "incus changed",
            Reuse::Interrupted => "interrupted run",
        }
    }
}

/// The daemon's memory between syncs.
#[derive(Debug)]
pub struct Warm {
    feed: ChangeFeed,
    observed: Mutex<Option<Observed>>,
}

impl Warm {
    /// Subscribes to the events of the incusd on `socket` (inside the runtime).
    pub fn start(socket: std::path::PathBuf) -> Warm {
        Warm { feed: ChangeFeed::start(socket), observed: Mutex::new(None) }
    }

    /// The feed's position now (`None` while not connected: nothing is kept then).
    pub(super) fn mark(&self) -> Option<Mark> {
        self.feed.mark()
    }

    /// Waits up to `limit` for the event stream (the daemon's first sync).
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        self.feed.wait_connected(limit).await
    }

    /// The kept observation, if it may stand in for reading `commit` now, and why (not).
    pub(super) async fn reuse(
        &self,
        commit: &str,
        full_every: Duration,
        interrupted: bool,
    ) -> (Option<LiveState>, Reuse) {
        let kept = self
            .observed
            .lock()
            .ok()
            .and_then(|k| k.as_ref().map(|k| (k.commit.clone(), k.mark, k.at)));
        let facts = |unchanged: bool| Facts {
            kept_commit: kept.as_ref().map(|(c, ..)| c.as_str()),
            commit,
            age: kept.as_ref().map_or(Duration::MAX, |(_, _, at)| at.elapsed()),
            full_every,
            unchanged,
            interrupted,
        };
        // Only when everything else allows reuse: every event incusd sent before now is
        // counted first (a ping through the stream), then the feed is compared.
        let mut decision = Reuse::decide(facts(true));
        if decision == Reuse::Yes {
            let now = self.feed.settled_mark().await;
            decision = Reuse::decide(facts(kept.as_ref().is_some_and(|(_, m, _)| now == Some(*m))));
        }
        let live = (decision == Reuse::Yes)
            .then(|| self.observed.lock().ok().and_then(|k| k.as_ref().map(|k| k.live.clone())))
            .flatten();
        match live {
            Some(live) => (Some(live), Reuse::Yes),
            None if decision == Reuse::Yes => (None, Reuse::NothingKept),
            None => (None, decision),
        }
    }

    /// Keeps `live`, read for `commit` from `at` on, with the feed at `mark` before the
    /// reading began (`None`: the feed was down, nothing is kept). From now on only Incus
    /// events about `interest` count (see [`interest`]).
    pub(super) fn keep(
        &self,
        commit: &str,
        mark: Option<Mark>,
        at: Instant,
        live: &LiveState,
        interest: BTreeSet<String>,
    ) {
        self.feed.set_interest(Some(interest));
        let kept =
            mark.map(|mark| Observed { commit: commit.to_string(), mark, at, live: live.clone() });
        if let Ok(mut slot) = self.observed.lock() {
            *slot = kept;
        }
    }

    /// Counts every Incus event from now on (before a reading: names new in this commit
    /// are not among the kept ones yet); [`Warm::keep`] narrows it again.
    pub(super) fn widen(&self) {
        self.feed.set_interest(None);
    }

    /// Forgets the kept observation (a failed sync, a new configuration).
    pub fn forget(&self) {
        self.feed.set_interest(None);
        if let Ok(mut slot) = self.observed.lock() {
            *slot = None;
        }
    }
}

/// The names whose Incus events can change what a sync of `manifests` decides: what
/// they declare (instances and slots, profiles, networks), what the agent owns (a marked
/// resource no longer declared is pruned), and every storage pool. Events about anything
/// else (another tenant's instance) leave the kept reading standing; such a resource is
/// seen at the next full reading.
pub(super) fn interest(
    manifests: &[Manifest],
    live: &LiveState,
    secrets: &veza_plan::desired::SecretDigests,
) -> Option<BTreeSet<String>> {
    let refs: Vec<&Manifest> = manifests.iter().collect();
    let desired = veza_plan::desired::desired(&refs, &live.root_pool(), secrets).ok()?;
    let instance = |n: &String| format!("instances/{n}");
    let profile = |n: &String| format!("profiles/{n}");
    let mut names: BTreeSet<String> = BTreeSet::new();
    names.extend(desired.instances.keys().map(instance));
    names.extend(desired.profiles.keys().map(profile));
    names.extend(desired.networks.keys().map(|n| format!("networks/{n}")));
    names.extend(desired.edge_runs_in.iter().map(instance));
    names.extend(live.instances.values().filter(|i| i.is_owned()).map(|i| instance(&i.name)));
    names.extend(live.profiles.values().filter(|p| p.is_owned()).map(|p| profile(&p.name)));
    names.extend(live.pools.keys().map(|n| format!("storage-pools/{n}")));
    Some(names)
}

/// One observation of the live state, and where the Incus event feed stood before it
/// began (what lets the daemon reuse it, `warm.rs`).
pub(super) struct Reading {
    pub live: LiveState,
    pub mark: Option<Mark>,
    pub at: Instant,
    pub reused: bool,
}

impl Agent {
    /// Keeps observations between syncs, driven by Incus's event stream (the daemon; a
    /// remote incusd over HTTPS has no event feed here, so every poll reads everything).
    pub fn keep_warm(&mut self) {
        if self.config.incus.endpoint.is_none() {
            self.warm = Some(Warm::start(PathBuf::from(self.config.incus_socket())));
        }
    }

    /// Keeps a reading for the next syncs (the daemon), with the names whose Incus events
    /// count against it.
    pub(super) fn keep(&self, source: &Source, mark: Option<Mark>, at: Instant, live: &LiveState) {
        let Some(w) = &self.warm else { return };
        match interest(&source.manifests, live, &source.secrets.digests()) {
            Some(names) => w.keep(&source.commit, mark, at, live, names),
            None => w.forget(),
        }
    }

    /// Reads the live state, noting the event feed's position first.
    pub(super) async fn read_live(
        &self,
        manifests: &[Manifest],
        recorded: &veza_state::AgentState,
    ) -> Result<Reading> {
        if let Some(w) = &self.warm {
            w.widen();
        }
        let mark = self.warm.as_ref().and_then(Warm::mark);
        let at = Instant::now();
        let live = self.observe(manifests, recorded).await?;
        Ok(Reading { live, mark, at, reused: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_is_reused_only_for_the_same_commit_young_and_unchanged() {
        let s = Duration::from_secs;
        let base = Facts {
            kept_commit: Some("c1"),
            commit: "c1",
            age: s(10),
            full_every: s(60),
            unchanged: true,
            interrupted: false,
        };
        // (what differs from `base`, decision)
        let table: [(Facts<'_>, Reuse); 8] = [
            (base, Reuse::Yes),
            (Facts { kept_commit: None, ..base }, Reuse::NothingKept),
            (Facts { commit: "c2", ..base }, Reuse::OtherCommit),
            (Facts { age: s(60), ..base }, Reuse::TooOld),
            (Facts { age: s(59), ..base }, Reuse::Yes),
            (Facts { full_every: s(0), ..base }, Reuse::TooOld),
            (Facts { unchanged: false, ..base }, Reuse::Changed),
            (Facts { interrupted: true, ..base }, Reuse::Interrupted),
        ];
        for (facts, want) in table {
            assert_eq!(Reuse::decide(facts), want, "{facts:?}");
        }
    }
}
