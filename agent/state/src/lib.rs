//! Record: what the agent applied, when, from which commit and signer, and how it went.
//!
//! Files under the state directory, each written atomically
//! (`veza_fs::write_atomic_if_changed`):
//! - `state.json`: the current [`AgentState`] (versioned; older versions are migrated
//!   by pure functions before use);
//! - `history.jsonl`: the bounded deploy history, newest last;
//! - `journal.json`: the write-ahead journal of the apply in progress, removed when the
//!   run ends, so a crash leaves a trace the next run reads;
//! - `lock`: held (`flock`) by the one agent running on the host;
//! - `previews.json`: the PR previews ([`previews::Previews`]), apart from `state.json`
//!   so that nothing a preview records is read by the branch's sync.
//!
//! A corrupted state file is moved aside (`state.json.corrupt-<time>`) and reported,
//! never silently trusted.

pub mod metrics;
pub mod previews;
pub mod record;
mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use veza_fs::WriteError;

pub use store::{Reader, Store, resume, suspend};

/// Current version of `state.json`.
pub const STATE_SCHEMA_VERSION: u32 = 1;
/// Deploy history entries kept.
pub const HISTORY_LIMIT: usize = 200;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state directory could not be created or read.
    #[error("state directory `{}`: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another agent holds the host lock.
    #[error(
        "another veza-agent is running on this host (lock `{}` is held); only one agent may apply at a time",
        path.display()
    )]
    Locked { path: PathBuf },
    /// A write failed (disk full, permissions).
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A state file is not valid JSON for its schema (as a reader sees it: nothing moved).
    #[error("state file `{}` is corrupt ({reason}); the next sync moves it aside and starts from empty state", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A corrupt state file was moved aside by a sync holding the lock.
    #[error("state file `{}` was corrupt ({reason}); it was moved to `{}` and the agent starts from empty state", path.display(), moved_to.display())]
    MovedAside { path: PathBuf, moved_to: PathBuf, reason: String },
    /// `previews.json` is not valid: the next preview pass starts from an empty cache.
    #[error("`{}` is corrupt ({reason}); the next preview pass starts from an empty cache (every PR head is previewed again)", path.display())]
    CorruptPreviews { path: PathBuf, reason: String },
    /// A state file was written by a newer agent.
    #[error("state file `{}` has schema version {found}, newer than this agent's {STATE_SCHEMA_VERSION}; upgrade veza-agent", path.display())]
    TooNew { path: PathBuf, found: u32 },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The commit was applied and every gate passed.
    Applied,
    /// A promotion failed a health gate; traffic went back to the previous color.
    RolledBack,
    /// The revision's promotion was rolled back by an earlier run: it is not tried again
    /// (nothing was done).
    Quarantined,
    /// The revision was refused before anything was applied (signature, policy, rollback, invalid manifest).
    Rejected,
    /// Applying failed; the last good edge was kept.
    Failed,
    /// Nothing to change.
    NoChange,
    /// Planned but not applied: the host is suspended (`veza-agent suspend`) or in report
    /// mode (`mode: report`). Also the history entry of a suspension.
    Suspended,
    /// The history entry of `veza-agent resume`.
    Resumed,
    /// Applied what may be applied now; disruptive steps wait for their environment's
    /// maintenance window (`maintenance.windows`). Not a failure: nothing is retried
    /// before the next poll.
    Waiting,
    /// The history entry of `veza-agent adopt --apply`: the operator took over what the
    /// manifests name (marks set, foreign timers replaced).
    Adopted,
    /// An outcome this agent does not know, written by a newer one (after a downgrade):
    /// read as such rather than taking the whole state file for corrupt and moving it
    /// aside (with its quarantine and its record of migrations).
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// The kebab-case name used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::RolledBack => "rolled-back",
            Outcome::Quarantined => "quarantined",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
            Outcome::NoChange => "no-change",
            Outcome::Suspended => "suspended",
            Outcome::Resumed => "resumed",
            Outcome::Waiting => "waiting",
            Outcome::Adopted => "adopted",
            Outcome::Unknown => "unknown",
        }
    }
}

/// The commit last applied, and who signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedRevision {
    /// Full commit id.
    pub commit: String,
    /// Principal of the signer, from the allowed-signers file.
    pub signer: String,
    /// When it was applied (unix seconds).
    pub applied_at: i64,
}

/// A revision the agent refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Full commit id.
    pub commit: String,
    /// Why, for a human.
    pub reason: String,
    /// When (unix seconds).
    pub at: i64,
}

/// Per-app record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// The color receiving traffic.
    pub active: Option<String>,
    /// Release per color (`blue`/`green`).
    pub releases: BTreeMap<String, String>,
    /// Outcome of the last change to this app.
    pub last_outcome: Option<Outcome>,
    /// Why, when it was not `applied`.
    pub last_reason: Option<String>,
    /// Health of each color's server as the edge sees it (`UP`, `DOWN 1/2`, `MAINT`…).
    #[serde(default)]
    pub health: BTreeMap<String, String>,
}

/// Per-environment record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvState {
    /// Apps by name.
    pub apps: BTreeMap<String, AppState>,
}

/// One finished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Start (unix milliseconds).
    pub started_ms: i64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Outcome.
    pub outcome: Outcome,
    /// Why, when it was not applied or no-change.
    pub reason: Option<String>,
    /// The commit the run worked on.
    pub commit: Option<String>,
}

/// One scheduled job as last observed on its target (`systemctl show` of its service and
/// timer), recorded at the end of each sync for `status` and metrics.
///
/// Times are RFC 3339 UTC when systemd printed them in UTC, otherwise systemd's own text.
/// `last_success_at` is remembered across syncs: systemd only reports the *last* run, so
/// after a failure (or a reboot of the target, which forgets the service's last run) the
/// previous success comes from the previous record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobState {
    /// Where the units live: `host` or an Incus instance name.
    pub target: String,
    /// The cron expression, as written in the manifest.
    pub schedule: String,
    /// The timer's next elapse (random delay included); `None` when the timer is not active.
    pub next: Option<String>,
    /// `Result=` of the last finished run (`success`, `exit-code`, `timeout`, …); `None`
    /// when no run finished since the target booted. While a run is in progress
    /// ([`JobState::running`]), the previous record's.
    pub last_result: Option<String>,
    /// Exit status of the last finished run.
    pub last_exit: Option<i32>,
    /// When the last finished run started.
    pub last_start: Option<String>,
    /// Whether a run was in progress when observed (its outcome not known yet).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub running: bool,
    /// When the run in progress started, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_since: Option<String>,
    /// When the last successful run started (unix seconds).
    pub last_success_at: Option<i64>,
    /// The manifest's `max_success_age`, in seconds.
    pub max_success_age_s: Option<u64>,
    /// When the agent first recorded this job (unix seconds): a job that never succeeded
    /// is stale only once it has existed for longer than `max_success_age`.
    pub first_seen_at: Option<i64>,
    /// Why the job needed a human when it was observed (failed, stale, status unknown).
    pub problem: Option<String>,
    /// Its timer was seen loaded but not active (disabled or stopped by hand, or a kill
    /// between writing its units and enabling them): the next plan installs its units
    /// again, though their files are as they should be.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unscheduled: bool,
}

/// The agent's state, as stored in `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Schema version of this file.
    pub schema_version: u32,
    /// The last applied revision: also the anti-rollback high-water mark.
    pub applied: Option<AppliedRevision>,
    /// Last successful verified fetch (unix seconds), for freshness.
    pub last_verified_fetch_at: Option<i64>,
    /// Last fetch error, cleared by a successful fetch.
    pub last_fetch_error: Option<String>,
    /// The last refused revision.
    pub rejected: Option<Rejection>,
    /// Commits never retried (a promotion rolled back); a newer commit clears this.
    pub quarantined: BTreeMap<String, Rejection>,
    /// Per environment.
    pub envs: BTreeMap<String, EnvState>,
    /// The last run.
    pub last_run: Option<RunRecord>,
    /// Consecutive failed syncs.
    pub sync_failures: u64,
    /// Total rejected revisions.
    pub rejected_total: u64,
    /// What the last plan refused to do (foreign resources, protected data, gated
    /// promotions), for a human.
    #[serde(default)]
    pub refusals: Vec<String>,
    /// Drift found on detect-only resources by the last plan.
    #[serde(default)]
    pub drift: Vec<String>,
    /// Scheduled jobs by `env/job`, observed at the end of each sync. Absent from state
    /// files written before jobs were recorded.
    #[serde(default)]
    pub jobs: BTreeMap<String, JobState>,
    /// Releases whose migration ran, by `env/app`: release → when (unix seconds). A
    /// migration runs at most once per release and environment; the newest
    /// [`MIGRATIONS_KEPT`] per app are kept.
    #[serde(default)]
    pub migrations: BTreeMap<String, BTreeMap<String, i64>>,
    /// The suspension in force when the last sync ran (`veza-agent suspend`).
    #[serde(default)]
    pub suspended: Option<Suspension>,
    /// The newest commit a sync began to apply without ending with it applied (a failed
    /// step, a stop, a preemption; cleared once a commit is applied). Part of it may have
    /// landed: the next tip must descend from it, not only from [`AgentState::applied`],
    /// or a forge could serve the older commit again and undo what landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempted: Option<String>,
    /// Where the agent's job units were last seen (`host` or an instance name): listed
    /// again at every sync until seen gone, so a target whose jobs all left, or moved
    /// elsewhere, has its timers removed even when the run that should have removed them
    /// stopped first or the target was stopped then.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub unit_targets: std::collections::BTreeSet<String>,
    /// What the last plan would have applied but did not (suspended or report mode).
    #[serde(default)]
    pub held: Vec<String>,
    /// What the last plan holds until a maintenance window opens.
    #[serde(default)]
    pub waiting: Vec<WaitingStep>,
    /// Commit statuses not yet accepted by the forge, retried at the next sync.
    #[serde(default)]
    pub statuses_pending: Vec<PendingStatus>,
    /// The last commit status the forge accepted: the same one is not posted again.
    #[serde(default)]
    pub status_posted: Option<PendingStatus>,
    /// Commit statuses the forge did not accept (a counter).
    #[serde(default)]
    pub status_post_failures_total: u64,
    /// When the apps' health and the jobs' runs above were last read from the host (the
    /// daemon reuses a reading between polls while Incus reports no change).
    #[serde(default)]
    pub observed_at: Option<i64>,
    /// Promotions whose new edge config was installed but whose checks through the edge
    /// never passed (a kill during the check, or a fallback that failed to install), by
    /// `env/app`: the color traffic goes back to should the check fail again. The next
    /// sync plans each as a promotion from that color, so it is checked before it is
    /// recorded as applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unverified: BTreeMap<String, String>,
    /// An edge switch with no color to go back to (taking over a config veza-agent did not
    /// write, or apps' first traffic) whose checks through the edge never passed: the next
    /// sync checks it again, and puts the config live before it back if they fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked_edge: Option<UncheckedEdge>,
    /// A killed run's commit whose checks through the edge failed (it was killed during
    /// the fallback, before its rollback was recorded): taken from its journal, never
    /// saved. The sync that finds the fallback landed records the rollback (quarantine).
    #[serde(skip)]
    pub checks_failed: Option<String>,
    /// A killed run's commit and the migration it was running (`the migration of …`),
    /// whose end nobody saw: taken from its journal, never saved. That commit is not
    /// tried again (its rollback is recorded by the sync that finds it).
    #[serde(skip)]
    pub migration_unseen: Option<(String, String)>,
}

/// An edge switch whose checks through the edge never passed, with no color to go back
/// to: what the edge goes back to should they fail again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncheckedEdge {
    /// The config live before the switch (a config veza-agent did not write, on a
    /// takeover), as the edge read it.
    pub config: String,
    /// The apps the switch gave traffic, `env/app`.
    pub apps: Vec<String>,
}

/// A step held until its environment's next maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingStep {
    /// The environment whose window it waits for.
    pub env: String,
    /// The step, as printed.
    pub step: String,
    /// Why it waits.
    pub because: String,
    /// When the window opens, host local time, RFC 3339 (`None`: no window opens again).
    pub next_open: Option<String>,
    /// The same, unix seconds.
    pub next_open_unix: Option<i64>,
}

/// A commit status waiting to be posted again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingStatus {
    /// The commit.
    pub sha: String,
    /// `success`, `failure`, `error` or `pending`.
    pub state: String,
    /// One line.
    pub description: String,
}

/// An operator's pause: nothing is applied until `veza-agent resume`; fetch, verification
/// and planning go on. Kept in `suspended.json` in the state directory, so it survives
/// restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// Since when (unix seconds).
    pub since: i64,
    /// Who asked (the login behind `sudo`, else the user).
    pub by: String,
    /// Why, as given with `--reason`.
    pub reason: String,
}

/// How many migrated releases are remembered per app.
pub const MIGRATIONS_KEPT: usize = 100;

impl AgentState {
    /// `journal`, unless it is the journal of the last recorded run: a kill between saving
    /// that run's outcome and clearing its journal left it, and the run is not
    /// interrupted (its outcome, and what it owed, are in this state).
    pub fn unfinished(&self, journal: Option<Journal>) -> Option<Journal> {
        journal.filter(|j| {
            !self.last_run.as_ref().is_some_and(|r| {
                r.commit.as_deref() == Some(j.commit.as_str())
                    && (r.started_ms == j.started_ms
                        // A journal of an agent before 2026-12 gave whole seconds.
                        || (j.pid_start.is_none()
                            && j.started_ms % 1000 == 0
                            && r.started_ms.div_euclid(1000) * 1000 == j.started_ms))
            })
        })
    }

    /// The state as the next sync sees it after a killed run: that run's journal holds
    /// what is owed (what it found owed, less what its checks paid, plus what it switched
    /// unchecked). Shared by the sync, `plan` and `status`, so all three agree.
    pub fn take_owed_from(&mut self, journal: Option<&Journal>) {
        if let Some(j) = journal {
            self.unverified.clone_from(&j.unverified);
            self.unchecked_edge.clone_from(&j.unchecked_edge);
            self.checks_failed = j.checks_failed.then(|| j.commit.clone());
            // Its commit began to apply: the anti-rollback base until one is applied.
            if self.applied.as_ref().is_none_or(|a| a.commit != j.commit) {
                self.attempted = Some(j.commit.clone());
            }
            // A migration it was running: as one whose end was not seen, never started
            // again for this commit (a newer commit runs it, once a human looked).
            self.migration_unseen = j.migrating.clone().map(|what| (j.commit.clone(), what));
            // And the migrations it completed: each runs at most once per release.
            for (env, app, release) in &j.migrated {
                let event = record::Event::Migrated {
                    env: env.clone(),
                    app: app.clone(),
                    release: release.clone(),
                    at: j.started_ms / 1000,
                };
                record::record(self, event);
            }
        }
    }

    /// The apps whose checks through the edge a run left owed, `env/app`, sorted and once
    /// each: those with a color to go back to ([`AgentState::unverified`]) and those an
    /// unchecked edge switch gave traffic ([`AgentState::unchecked_edge`]).
    pub fn owed_apps(&self) -> Vec<String> {
        let edge = self.unchecked_edge.iter().flat_map(|e| e.apps.iter());
        let apps: std::collections::BTreeSet<&String> =
            self.unverified.keys().chain(edge).collect();
        apps.into_iter().cloned().collect()
    }

    /// The commit every new tip must descend from (the anti-rollback base): the newest
    /// attempted one, else the last applied one.
    pub fn high_water(&self) -> Option<&str> {
        self.attempted.as_deref().or(self.applied.as_ref().map(|a| a.commit.as_str()))
    }

    /// `(env, app, release)` of every recorded migration, for the planner.
    pub fn migrated(&self) -> std::collections::BTreeSet<(String, String, String)> {
        let mut out = std::collections::BTreeSet::new();
        for (key, releases) in &self.migrations {
            if let Some((env, app)) = key.split_once('/') {
                for release in releases.keys() {
                    out.insert((env.to_string(), app.to_string(), release.clone()));
                }
            }
        }
        out
    }
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            schema_version: STATE_SCHEMA_VERSION,
            applied: None,
            last_verified_fetch_at: None,
            last_fetch_error: None,
            rejected: None,
            quarantined: BTreeMap::new(),
            envs: BTreeMap::new(),
            last_run: None,
            sync_failures: 0,
            rejected_total: 0,
            refusals: Vec::new(),
            drift: Vec::new(),
            jobs: BTreeMap::new(),
            migrations: BTreeMap::new(),
            suspended: None,
            attempted: None,
            unchecked_edge: None,
            checks_failed: None,
            migration_unseen: None,
            unit_targets: std::collections::BTreeSet::new(),
            held: Vec::new(),
            waiting: Vec::new(),
            statuses_pending: Vec::new(),
            status_posted: None,
            status_post_failures_total: 0,
            observed_at: None,
            unverified: BTreeMap::new(),
        }
    }
}

/// One deploy history entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When the run started (unix milliseconds).
    pub at_ms: i64,
    /// The commit.
    pub commit: String,
    /// Its signer.
    pub signer: Option<String>,
    /// Outcome.
    pub outcome: Outcome,
    /// Why, when not applied.
    pub reason: Option<String>,
    /// `env/app` → `color@release` after the run.
    pub apps: BTreeMap<String, String>,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// The write-ahead journal of an apply in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    /// The commit being applied.
    pub commit: String,
    /// Start (unix milliseconds).
    pub started_ms: i64,
    /// The plan's steps, as printed.
    pub steps: Vec<String>,
    /// How many steps completed.
    pub done: usize,
    /// The step in progress when the journal was last written.
    pub current: Option<String>,
    /// While a promotion's new edge config is installed and not yet checked (its switch,
    /// check and fallback phases): the promoted apps, by `env/app`, with the color each
    /// goes back to (as [`AgentState::unverified`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unverified: BTreeMap<String, String>,
    /// From the switch of a promotion with no color to go back to until its checks pass:
    /// the config live before it (as [`AgentState::unchecked_edge`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchecked_edge: Option<UncheckedEdge>,
    /// The migrations this run completed, `(env, app, release)`: a kill before the run's
    /// outcome is saved must not make the next sync run one again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrated: Vec<(String, String, String)>,
    /// The process that writes it: `status` tells a run in progress (this process still
    /// running) from a killed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// With `pid`, when that process started (clock ticks after boot) and in which boot:
    /// a later process given the same pid (after a reboot, or once pids wrap) is not
    /// taken for the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// A promotion's checks through the edge failed and its fallback began: a kill from
    /// here on must not let the next sync promote the commit again once traffic is back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checks_failed: bool,
    /// A migration step began and its end is not recorded yet (`the migration of
    /// prod/web for release … in \`instance\``): after a kill, its command may have run or
    /// still run, so it is not started again for this commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrating: Option<String>,
}

#[cfg(test)]
mod tests;
