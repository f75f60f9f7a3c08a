//! One sync, end to end: source → verify → model → observe → plan → apply → record; and,
//! after it, the PR previews (`preview.rs`), which plan without applying or recording.
//!
//! Shared by `plan` (stops after planning), `apply` (one full run) and `run` (the daemon
//! loop). Every stage returns data the next consumes; only this module decides what a
//! failure at each stage means for the host (keep the last good state) and for the
//! record (`rejected`, `failed`, `rolled-back`, quarantine).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Result;
use veza_host::incus::IncusClient;
use veza_host::systemd::Systemd;
use veza_model::Manifest;
use veza_model::config::{HostConfig, Mode};
use veza_plan::live::LiveState;
use veza_plan::{Plan, PlanOptions};
use veza_source::fetch::Forge;
use veza_state::record::{Event, record};
use veza_state::{AgentState, HistoryEntry, Journal, Outcome, RunRecord, Store};

use crate::edge::EdgeRuntime;

mod accept;
mod adopt;
mod execute;
mod feedback;
mod hooks;
mod load;
mod observe;
mod preview;
mod shared;
mod summary;
mod unverified;
mod warm;
mod windows;

pub use accept::{Source, SourceProblem};
pub use adopt::AdoptionReport;
use execute::{Planned, quarantined};
pub use load::load_config;
use observe::failing_jobs;
pub use preview::preview_line;
pub use summary::{Laps, SyncSummary, describe_stages};
use warm::Reading;
pub use warm::Warm;
pub use windows::{Windows, waiting_reason};

/// The `default` project's config key (and its copy's in the server config) mirroring this
/// host's anti-rollback high-water mark, so wiping the state directory does not reopen
/// rollback.
pub fn high_water_key(host: &str) -> String {
    format!("user.veza-agent.applied.{host}")
}

/// The `default` project's config key holding the last commit that landed on this host
/// (applied as a whole): where the trust policy's diff starts for a cluster member, or a
/// wiped host, with no record of its own. The anti-rollback mark may name a commit whose
/// apply failed, and an approval of what did not land covers nothing.
pub fn landed_key(host: &str) -> String {
    format!("user.veza-agent.landed.{host}")
}

/// What a verified revision would do on this host (see [`Agent::plan_for`]).
#[derive(Debug)]
pub enum Decision {
    /// The commit's promotion was rolled back before: nothing is tried again.
    Quarantined(String),
    /// The plan to run (held for the maintenance windows), and the steps that would
    /// have waited but run now because an operator said `--now`.
    Plan(Plan, Vec<veza_plan::maintenance::Waiting>),
}

/// How the stages of one sync ended, for the one exit path that records it.
struct End {
    outcome: Outcome,
    commit: Option<String>,
    reason: Option<String>,
    steps: usize,
    preempted: bool,
    /// The history entry to append, if this run is worth one.
    history: Option<HistoryEntry>,
    /// The apply engine ran and wrote the journal: clear it once the outcome is saved.
    journaled: bool,
}

impl End {
    fn new(outcome: Outcome, commit: Option<String>, reason: Option<String>) -> End {
        End { outcome, commit, reason, steps: 0, preempted: false, history: None, journaled: false }
    }
}

/// The agent: configuration and long-lived clients.
pub struct Agent {
    /// Host configuration.
    pub config: HostConfig,
    /// Where the configuration came from (re-read on SIGHUP).
    pub config_path: PathBuf,
    /// Incus client (pooled connections).
    pub incus: IncusClient,
    /// The forge's HTTP client, kept between polls (each poll first asks it, in one
    /// `ls-refs`, whether anything changed).
    pub forge: Forge,
    /// On a cluster member: the lease that decides whether this agent applies.
    pub cluster: Option<crate::cluster::ClusterLease>,
    /// What the daemon keeps between syncs (`None` for a one-shot command).
    pub warm: Option<Warm>,
}

/// What a sync found before its stages began.
#[derive(Clone, Copy)]
struct Found<'a> {
    /// The journal of a run that was interrupted (a kill): re-planned from live state.
    interrupted: Option<&'a Journal>,
    /// Why nothing is applied now (suspended, report mode), if so.
    hold: Option<&'a str>,
    /// When this run started (unix milliseconds): its journal and its run record carry
    /// it, so a journal is matched to the run that wrote it exactly.
    started_ms: i64,
}

impl Agent {
    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.config.state_dir())
    }

    fn edge(&self, runs_in: Option<&str>) -> EdgeRuntime<'_> {
        EdgeRuntime::new(&self.config, &self.incus, runs_in)
    }

    fn units(&self) -> Systemd<'_, IncusClient> {
        self.units_over(&self.incus)
    }

    /// The job units' driver over `incus` (the fenced client, when it writes).
    fn units_over<'i, I: veza_host::incus::Incus>(&self, incus: &'i I) -> Systemd<'i, I> {
        Systemd::new(
            incus,
            self.config.systemd.unit_dir.clone().unwrap_or_else(|| "/etc/systemd/system".into()),
        )
    }

    /// Plan options for this host.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            edge_settings: crate::edge::settings(&self.config),
            images: self.config.incus.images.clone(),
            ..PlanOptions::default()
        }
    }

    /// What this host would do with a verified revision, given the recorded state and
    /// the live observation: the one decision shared by `sync` and `plan`, so a plan
    /// never shows what an apply would refuse (quarantine, gated promotions) nor what it
    /// would hold for a maintenance window. Pure: the time and time zone are in `at`.
    pub fn plan_for(
        &self,
        state: &AgentState,
        source: &Source,
        live: &LiveState,
        at: &Windows,
    ) -> Result<Decision, veza_plan::PlanError> {
        let now = at.clock.now;
        if let Some(q) = state.quarantined.get(&source.commit) {
            return Ok(Decision::Quarantined(format!(
                "commit is quarantined after a rolled-back promotion ({}); push a newer commit",
                q.reason
            )));
        }
        if let Some((commit, what)) = &state.migration_unseen
            && *commit == source.commit
        {
            return Ok(Decision::Quarantined(format!(
                "the agent stopped during {what}: it may have run, or still run there; it is not \
                 started again for this commit (hint: `incus exec` into that instance and look \
                 with `ps`, then push a newer commit)"
            )));
        }
        if unverified::rolled_back_unrecorded(
            state.checks_failed.as_deref(),
            &source.commit,
            (&state.unverified, state.unchecked_edge.as_ref()),
            live,
        ) {
            return Ok(Decision::Quarantined(
                "its promotion's checks through the edge failed and traffic went back (the run \
                 was killed before recording its rollback); push a newer commit"
                    .to_string(),
            ));
        }
        let mut opts = self.plan_options();
        opts.failing_jobs = failing_jobs(state, &source.manifests, now);
        opts.unscheduled_jobs =
            state.jobs.iter().filter(|(_, j)| j.unscheduled).map(|(k, _)| k.clone()).collect();
        opts.secrets = source.secrets.digests();
        opts.migrated = state.migrated();
        // A promotion whose checks through the edge are owed is planned again.
        opts.unchecked = unverified::unchecked(&state.unverified, live);
        opts.unchecked_edge = unverified::edge_recheck(state.unchecked_edge.as_ref(), live);
        let refs: Vec<&Manifest> = source.manifests.iter().collect();
        let plan = veza_plan::plan(&refs, live, &opts)?;
        let (plan, released) = at.apply_to(plan, live, &refs);
        Ok(Decision::Plan(plan, released))
    }

    /// One full sync with the store locked. `stop` is checked between steps.
    /// `run_now_by`: an operator's `--now` (disruptive steps run outside their window).
    ///
    /// The stages run in [`Agent::stages`]; whatever they end with, this one exit path
    /// records the run, appends history, saves the state, writes the metrics and only
    /// then clears the apply journal (a kill before the save leaves the journal, so
    /// `status` says the run was interrupted rather than claim the old commit is live).
    pub async fn sync(
        &self,
        store: &Store,
        stop: &AtomicBool,
        run_now_by: Option<String>,
    ) -> Result<SyncSummary> {
        let started = Instant::now();
        let mut laps = Laps::start();
        let started_ms = chrono::Utc::now().timestamp_millis();
        let now = started_ms / 1000;
        let at = Windows::at(now, run_now_by);
        // A corrupt state file is moved aside here, under the lock; a state written by a
        // newer agent stops the sync (never overwritten).
        let (mut state, recovered) = store.load_or_recover()?;
        if let Some(e) = recovered {
            tracing::error!("{e}");
        }
        let journal = store.reader().journal();
        let interrupted = state.unfinished(journal.clone());
        if journal.is_some() && interrupted.is_none() {
            // The last run's own journal: it was killed after saving its outcome.
            store.clear_journal()?;
        }
        state.take_owed_from(interrupted.as_ref());
        // A suspension (`veza-agent suspend`, a file in the state directory) or report
        // mode: everything up to the plan runs, nothing is applied.
        let suspension = store.reader().suspension();
        let applied_commit = state.applied.as_ref().map(|a| a.commit.clone()).unwrap_or_default();
        let suspension_entry = record(
            &mut state,
            Event::Suspension { now: suspension.clone(), commit: applied_commit },
        );
        let mut hold = not_applied_because(suspension.as_ref(), self.config.mode);
        if let Some(cluster) = &self.cluster {
            match &hold {
                None => hold = cluster.hold().await,
                // A member that applies nothing gives the lease to one that does.
                Some(why) => cluster.stand_aside(why).await,
            }
        }
        // On a cluster, the leader takes up the cluster's record of owed checks (`shared.rs`);
        // one it cannot read fails the sync before anything.
        let taken = if hold.is_none() { self.take_shared_owed(&mut state).await } else { Ok(None) };
        laps.lap("load");
        let found = Found { interrupted: interrupted.as_ref(), hold: hold.as_deref(), started_ms };
        let end = match &taken {
            Err(e) => End::new(Outcome::Failed, None, Some(format!("{e}; nothing applied"))),
            Ok(_) => self.stages(&mut state, store, stop, found, &at, &mut laps).await,
        };
        let shared = taken.ok().flatten();
        if !matches!(end.outcome, Outcome::Applied | Outcome::NoChange)
            && let Some(w) = &self.warm
        {
            w.forget();
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        record(
            &mut state,
            Event::Finished(RunRecord {
                started_ms,
                duration_ms,
                outcome: end.outcome,
                reason: end.reason.clone(),
                commit: end.commit.clone(),
            }),
        );
        // The state (the applied commit: the anti-rollback mark) is saved first; history is
        // a log, and failing to append to it must not leave the state behind.
        let save = store.save(&state);
        if save.is_ok() {
            for (mut h, run) in suspension_entry
                .map(|h| (h, false))
                .into_iter()
                .chain(end.history.map(|h| (h, true)))
            {
                h.at_ms = started_ms;
                if run {
                    h.duration_ms = duration_ms;
                }
                if let Err(e) = store.append_history(&h) {
                    tracing::warn!("history: {e}");
                }
            }
        }
        self.write_metrics(&state, now);
        save?;
        // What is still owed, shared again once it changed (a run that applied may have
        // shared more before its switch).
        if let Some(seen) = shared
            && (state.unverified != seen || end.journaled)
            && let Err(e) = self.share_owed(&state.unverified).await
        {
            tracing::warn!("cluster: {e}");
        }
        if end.journaled {
            store.clear_journal()?;
        }
        laps.lap("record");
        let summary = SyncSummary {
            outcome: end.outcome,
            commit: end.commit,
            reason: end.reason,
            steps: end.steps,
            duration_ms,
            preempted: end.preempted,
            // Only a run that planned has refusals of its own (the state keeps the last
            // plan's for status).
            refusals: match end.outcome {
                Outcome::Applied | Outcome::NoChange | Outcome::Waiting => state.refusals.clone(),
                _ => Vec::new(),
            },
            stages_us: laps.into_stages(),
        };
        // After everything is recorded: the commit status and the hook (best effort).
        if self.feedback(&mut state, &summary) {
            if let Err(e) = store.save(&state) {
                tracing::warn!("saving the pending commit statuses: {e}");
            }
            self.write_metrics(&state, now);
        }
        Ok(summary)
    }

    /// The stages of one sync: accept → observe → plan → apply → observe again →
    /// record into `state`. Returns how the run ended; never saves (see [`Agent::sync`]).
    async fn stages(
        &self,
        state: &mut AgentState,
        store: &Store,
        stop: &AtomicBool,
        found: Found<'_>,
        at: &Windows,
        laps: &mut Laps,
    ) -> End {
        let Found { interrupted, hold, started_ms } = found;
        let now = at.clock.now;
        let source = match self.source_timed(state, now, laps).await {
            Ok(s) => s,
            Err(SourceProblem::Fetch(e)) => {
                record(state, Event::FetchFailed { error: e.clone() });
                return End::new(Outcome::Failed, None, Some(format!("fetch: {e}")));
            }
            Err(SourceProblem::Failed(e)) => return End::new(Outcome::Failed, None, Some(e)),
            Err(SourceProblem::Rejected { commit, reason }) => {
                let mut end =
                    End::new(Outcome::Rejected, Some(commit.clone()), Some(reason.clone()));
                end.history = record(state, Event::Rejected { commit, reason, at: now });
                return end;
            }
        };
        record(state, Event::Accepted { commit: source.commit.clone(), at: now });
        let commit = Some(source.commit.clone());
        let already =
            state.applied.as_ref().map(|a| a.commit.as_str()) == Some(source.commit.as_str());
        // The daemon's last reading stands in for a new one while Incus reports no change
        // (`warm.rs`); it may only confirm that nothing is to be done.
        let (kept, why) = match &self.warm {
            Some(w) => {
                w.reuse(&source.commit, self.config.full_observation(), interrupted.is_some()).await
            }
            None => (None, warm::Reuse::NothingKept),
        };
        let mut reading = match kept {
            Some(live) => Reading { live, mark: None, at: Instant::now(), reused: true },
            None => match self.read_live(&source.manifests, state).await {
                Ok(r) => r,
                Err(e) => return End::new(Outcome::Failed, commit, Some(format!("{e:#}"))),
            },
        };
        laps.lap(&format!("observe ({})", why.as_str()));
        let (plan, released) = loop {
            let (plan, released) = match self.plan_for(state, &source, &reading.live, at) {
                Ok(Decision::Plan(p, released)) => (p, released),
                Ok(Decision::Quarantined(reason)) => {
                    let interrupted = interrupted.is_some();
                    return quarantined(state, &source, &reading.live, reason, interrupted, now);
                }
                Err(e) => return End::new(Outcome::Failed, commit, Some(format!("plan: {e}"))),
            };
            let confirms_nothing = plan.is_empty() && plan.waiting.is_empty() && already;
            if !reading.reused || confirms_nothing {
                break (plan, released);
            }
            // A kept reading never decides a change: read afresh and plan again.
            tracing::debug!("the kept observation would change something; observing afresh");
            reading = match self.read_live(&source.manifests, state).await {
                Ok(r) => r,
                Err(e) => return End::new(Outcome::Failed, commit, Some(format!("{e:#}"))),
            };
            laps.lap("observe (again)");
        };
        record(
            state,
            Event::UnitTargets(observe::unit_targets(&state.unit_targets, &reading.live)),
        );
        for r in &plan.refusals {
            tracing::warn!(resource = %r.resource, "refused: {}", r.reason);
        }
        record(
            state,
            Event::Planned {
                refusals: plan
                    .refusals
                    .iter()
                    .map(|r| format!("{}: {}", r.resource, r.reason))
                    .collect(),
                drift: plan.drift.clone(),
            },
        );
        let waiting = windows::recorded(&plan.waiting);
        let waiting_changed = state.waiting != waiting;
        record(state, Event::Waiting { steps: waiting.clone() });
        let waits = (!waiting.is_empty()).then(|| windows::waiting_reason(&waiting));
        if let Some(why) = hold
            && (!plan.is_empty() || waits.is_some() || interrupted.is_some())
        {
            let steps: Vec<String> = plan.steps.iter().map(|s| s.action.to_string()).collect();
            let also = waits.as_ref().map(|w| format!("; {w}")).unwrap_or_default();
            let reason =
                format!("{why}; would apply {} step(s), nothing applied{also}", steps.len());
            record(state, Event::Held { steps });
            let mut end = End::new(Outcome::Suspended, commit, Some(reason));
            end.steps = 0;
            return end;
        }
        laps.lap("plan");
        let planned = Planned {
            source: &source,
            plan: &plan,
            released: &released,
            interrupted,
            waits,
            already,
            waiting_changed,
            started_ms,
        };
        if plan.is_empty() && interrupted.is_none() {
            self.settle(state, reading, planned, now, laps).await
        } else {
            self.execute(state, store, stop, planned, at, laps).await
        }
    }
}

/// Why nothing is applied on this host now, if so: a suspension (`veza-agent suspend`)
/// or report mode. Shared by `sync` (which then holds its plan) and `plan` (which says so).
pub fn not_applied_because(
    suspension: Option<&veza_state::Suspension>,
    mode: Mode,
) -> Option<String> {
    match (suspension, mode) {
        (Some(s), _) => Some(format!(
            "suspended by {} since {}: {} (`veza-agent resume` lifts it)",
            s.by,
            chrono::DateTime::from_timestamp(s.since, 0)
                .map_or_else(|| s.since.to_string(), |t| t.to_rfc3339()),
            s.reason
        )),
        (None, Mode::Report) => {
            Some("report mode (`mode: report` in the configuration)".to_string())
        }
        (None, Mode::Apply) => None,
    }
}
