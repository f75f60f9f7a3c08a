//! The apply stage of a sync and what follows it: the journal written before anything,
//! the plan run through the drivers, the host read back, and the outcome recorded
//! (applied, rolled back, failed: the anti-rollback base and what stays owed). Also the
//! end of a sync that found nothing to do.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use veza_host::apply::{ApplyOutcome, ApplyReport, Drivers, Gates, Hooks, apply};
use veza_host::artifact::ArtifactStore;
use veza_plan::live::LiveState;
use veza_plan::maintenance::Waiting;
use veza_plan::{Action, Plan};
use veza_state::record::{Event, history_entry, record};
use veza_state::{AgentState, Journal, Outcome, Store};

use super::hooks::{JournalHooks, NewerCommit};
use super::warm::Reading;
use super::{Agent, End, Laps, Source, unverified, windows};

/// What the planning stages hand to the end of a sync.
pub(super) struct Planned<'a> {
    /// The accepted revision.
    pub source: &'a Source,
    /// What it does on this host now.
    pub plan: &'a Plan,
    /// Steps that would have waited for a window but run now (`--now`).
    pub released: &'a [Waiting],
    /// A killed run's journal, if any.
    pub interrupted: Option<&'a Journal>,
    /// Why steps wait for a maintenance window, if some do.
    pub waits: Option<String>,
    /// The revision is the one already applied.
    pub already: bool,
    /// What waits for a window changed since the last sync.
    pub waiting_changed: bool,
    /// When the run started (unix milliseconds), as its run record will say.
    pub started_ms: i64,
}

/// The end of a sync whose commit is quarantined: nothing is planned. A killed run's
/// rollback whose fallback landed (`reason` not recorded yet) is recorded now, with its
/// history entry and the apps its switch left owed, with or without a color to go back
/// to; an owed check whose fallback landed owes nothing any more. `interrupted`: a killed
/// run's journal was taken into this state (cleared once it is saved).
pub(super) fn quarantined(
    state: &mut AgentState,
    source: &Source,
    live: &LiveState,
    reason: String,
    interrupted: bool,
    now: i64,
) -> End {
    let recorded = state.quarantined.contains_key(&source.commit);
    let mut history = None;
    if !recorded {
        let promotions = state
            .owed_apps()
            .iter()
            .filter_map(|k| k.split_once('/'))
            .map(|(env, app)| (env.to_string(), app.to_string()))
            .collect();
        let commit = source.commit.clone();
        record(state, Event::RolledBack { commit, reason: reason.clone(), promotions, at: now });
        history = Some(history_entry(
            state,
            &source.commit,
            &source.signer,
            Outcome::RolledBack,
            Some(reason.clone()),
        ));
    }
    record(state, Event::Unverified(unverified::still_owed(&state.unverified, live)));
    let edge = unverified::edge_still_owed(state.unchecked_edge.as_ref(), live);
    record(state, Event::UncheckedEdge(edge));
    // Rolled back by an earlier run, this one did nothing (unless it is the killed run's
    // rollback, recorded just now).
    let outcome = if recorded { Outcome::Quarantined } else { Outcome::RolledBack };
    let mut end = End::new(outcome, Some(source.commit.clone()), Some(reason));
    end.history = history;
    end.journaled = interrupted;
    end
}

impl Agent {
    /// The end of a sync whose plan has nothing to run now: what is no longer owed is
    /// dropped, the host as read is recorded, and the outcome says whether steps wait.
    pub(super) async fn settle(
        &self,
        state: &mut AgentState,
        reading: Reading,
        planned: Planned<'_>,
        now: i64,
        laps: &mut Laps,
    ) -> End {
        let Planned { source, plan, waits, already, waiting_changed, .. } = planned;
        let commit = Some(source.commit.clone());
        let live = &reading.live;
        // Nothing to do now: an owed check the planner could not plan again (the color
        // it goes back to is no longer deployed, the edge is not updated) or whose
        // fallback landed is no longer owed; one held for a window still is.
        let owed = unverified::after_empty_plan(&state.unverified, live, plan);
        record(state, Event::Unverified(owed));
        let edge = (!plan.waiting.is_empty())
            .then(|| unverified::edge_still_owed(state.unchecked_edge.as_ref(), live))
            .flatten();
        record(state, Event::UncheckedEdge(edge));
        if !reading.reused {
            // Health and job runs are read with the rest; a reused reading keeps what
            // was recorded with it (`status` shows when: `observed_at`). Nothing ran,
            // so the mark is mirrored here (best effort: the state file is the mark).
            let _ = self.mirror_high_water(&source.commit).await;
            self.record_seen(state, source, live, now, true).await;
            if waits.is_none() {
                self.mirror_landed(&source.commit).await;
            }
            self.keep(source, reading.mark, reading.at, live);
            laps.lap("observe-record");
        }
        let outcome = match (&waits, already) {
            (Some(_), _) => Outcome::Waiting,
            (None, true) => Outcome::NoChange,
            (None, false) => Outcome::Applied,
        };
        let mut end = End::new(outcome, commit, waits.clone());
        // Worth a history entry: a new commit, or a change of what waits (the daemon
        // finds the same held steps every poll until the window opens).
        if !already || waiting_changed {
            end.history =
                Some(history_entry(state, &source.commit, &source.signer, outcome, waits));
        }
        end
    }

    /// Runs a plan that has steps (or follows a killed run): the journal first, then the
    /// drivers, then [`Agent::conclude`].
    pub(super) async fn execute(
        &self,
        state: &mut AgentState,
        store: &Store,
        stop: &AtomicBool,
        planned: Planned<'_>,
        at: &super::Windows,
        laps: &mut Laps,
    ) -> End {
        let Planned { source, plan, released, interrupted, waits, started_ms, .. } = planned;
        let now = at.clock.now;
        let commit = Some(source.commit.clone());
        if let Some(j) = interrupted {
            tracing::warn!(commit = %j.commit, step = ?j.current, "the previous run was interrupted; re-planned from live state");
        }
        let runs_in =
            source.manifests.iter().find_map(|m| m.edge.as_ref().map(|e| e.runs_in.clone()));
        let stamp = veza_host::process::stamp::own();
        let mut hooks = JournalHooks {
            store,
            journal: Journal {
                commit: source.commit.clone(),
                started_ms,
                steps: plan.steps.iter().map(|s| s.action.to_string()).collect(),
                done: 0,
                current: None,
                unverified: state.unverified.clone(),
                // A killed run's migrations stay in the journal until a state holding them
                // is saved: this run may be killed too.
                migrated: interrupted.map(|j| j.migrated.clone()).unwrap_or_default(),
                unchecked_edge: state.unchecked_edge.clone(),
                pid: stamp.as_ref().map(|s| s.pid).or(Some(std::process::id())),
                pid_start: stamp.as_ref().map(|s| s.start_ticks),
                boot_id: stamp.map(|s| s.boot_id),
                checks_failed: false,
                migrating: None,
            },
            owed: state.unverified.clone(),
            stop,
            newer: NewerCommit {
                config: &self.config,
                options: self.fetch_options().ok(),
                mirror_dir: self.state_dir().join("mirror.git"),
                commit: source.commit.clone(),
                applied: state.applied.as_ref().map(|a| a.commit.clone()),
                last_check: std::cell::Cell::new(Some(Instant::now())),
            },
            before: None,
        };
        // On a cluster, what a kill after the switch would leave owed is shared first, so
        // that a leader taking over checks it (`shared.rs`); a switch the next leader
        // could not know to check is not made.
        if self.cluster.is_some()
            && let Some(owed) = unverified::before_run(&state.unverified, plan)
            && let Err(e) = self.share_owed(&owed).await
        {
            return End::new(Outcome::Failed, commit, Some(format!("{e}; nothing applied")));
        }
        // This run's journal replaces a killed run's now, before anything: a kill after
        // the state is saved must not leave the older journal to be read as owed.
        if let Err(e) = store.write_journal(&hooks.journal) {
            return End::new(
                Outcome::Failed,
                commit,
                Some(format!("writing the journal failed, nothing applied: {e}")),
            );
        }
        // From its first step on, part of this commit may land: only its descendants may
        // be accepted next, whatever the run's end (a kill included; the journal names it).
        // Best effort: on a cluster a member down makes every `/1.0` write fail (Incus
        // notifies each peer), and stopping then would stop every failover apply too.
        let _ = self.mirror_high_water(&source.commit).await;
        let report =
            self.apply(plan, runs_in.as_deref(), &source.secrets.values(), &mut hooks).await;
        laps.lap("apply");
        for (env, app, release) in &report.migrated {
            record(
                state,
                Event::Migrated {
                    env: env.clone(),
                    app: app.clone(),
                    release: release.clone(),
                    at: now,
                },
            );
        }
        let (outcome, reason) = match &report.outcome {
            ApplyOutcome::Applied if waits.is_some() => (Outcome::Waiting, waits),
            ApplyOutcome::Applied => (Outcome::Applied, None),
            ApplyOutcome::RolledBack { reason } => (Outcome::RolledBack, Some(reason.clone())),
            ApplyOutcome::Failed { step, error } => {
                (Outcome::Failed, Some(format!("step `{step}` failed: {error}")))
            }
            ApplyOutcome::Interrupted { before } => {
                (Outcome::Failed, Some(format!("stopped before `{before}` (shutdown requested)")))
            }
            ApplyOutcome::Preempted { during } => {
                (Outcome::Failed, Some(format!("preempted by a newer commit during `{during}`")))
            }
        };
        // An operator's `--now` is recorded with the run, whatever its outcome.
        let reason = match at.run_now_by.as_deref().filter(|_| !released.is_empty()) {
            Some(by) => {
                let note = windows::override_note(by, released);
                Some(reason.map_or_else(|| note.clone(), |r| format!("{r}; {note}")))
            }
            None => reason,
        };
        self.conclude(state, source, plan, &report, &hooks.journal, (outcome, reason), now, laps)
            .await
    }

    /// Reads the host back after an apply and records what the run leaves: what stays
    /// owed, and the outcome (only as read: a host that cannot be read back is not
    /// recorded as applied).
    #[allow(clippy::too_many_arguments)]
    async fn conclude(
        &self,
        state: &mut AgentState,
        source: &Source,
        plan: &Plan,
        report: &ApplyReport,
        journal: &Journal,
        (outcome, reason): (Outcome, Option<String>),
        now: i64,
        laps: &mut Laps,
    ) -> End {
        let commit = Some(source.commit.clone());
        let reread = self.read_live(&source.manifests, state).await;
        laps.lap("observe-after");
        let owed = unverified::after_run(
            &state.unverified,
            plan,
            report.steps_done,
            &journal.unverified,
            reread.as_ref().ok().map(|r| &r.live),
        );
        record(state, Event::Unverified(owed));
        let edge = journal.unchecked_edge.clone();
        let edge = match &reread {
            Ok(r) => unverified::edge_still_owed(edge.as_ref(), &r.live),
            Err(_) => edge,
        };
        record(state, Event::UncheckedEdge(edge));
        // What runs now is only recorded as read: when the host cannot be read back, the
        // run says so and the next sync, which reads it, records it.
        let (outcome, reason) = match &reread {
            Err(e) if matches!(outcome, Outcome::Applied | Outcome::Waiting) => (
                Outcome::Failed,
                Some(format!(
                    "{} step(s) applied, then reading the host back failed: {e:#}; nothing is \
                     recorded as applied until a sync reads it",
                    report.steps_done
                )),
            ),
            _ => (outcome, reason),
        };
        match (outcome, &reread) {
            (Outcome::Applied | Outcome::Waiting, Ok(after)) => {
                self.record_seen(state, source, &after.live, now, true).await;
                if outcome == Outcome::Applied {
                    self.mirror_landed(&source.commit).await;
                    self.keep(source, after.mark, after.at, &after.live);
                }
            }
            (Outcome::RolledBack, _) => {
                // The commit was verified and attempted: it becomes the anti-rollback base
                // (only its descendants, e.g. a revert, are accepted next), never the
                // applied commit (status would say it runs).
                if let Ok(after) = &reread {
                    self.record_seen(state, source, &after.live, now, false).await;
                }
                record(state, Event::Attempted { commit: source.commit.clone() });
                record(
                    state,
                    Event::RolledBack {
                        commit: source.commit.clone(),
                        reason: reason.clone().unwrap_or_default(),
                        promotions: rolled_back(plan, report.steps_done),
                        at: now,
                    },
                );
            }
            (Outcome::Failed, _) => {
                // Part of the commit may have landed: only its descendants are accepted
                // next, or the forge could serve the older commit again and undo it (the
                // Incus mark moved before the apply).
                record(state, Event::Attempted { commit: source.commit.clone() });
            }
            _ => {}
        }
        let mut end = End::new(outcome, commit, reason.clone());
        end.history = Some(history_entry(state, &source.commit, &source.signer, outcome, reason));
        end.steps = report.steps_done;
        end.preempted = matches!(report.outcome, ApplyOutcome::Preempted { .. });
        end.journaled = true;
        end
    }

    /// Runs the plan through the drivers.
    pub async fn apply(
        &self,
        plan: &Plan,
        runs_in: Option<&str>,
        secrets: &veza_secrets::SecretValues,
        hooks: &mut impl Hooks,
    ) -> ApplyReport {
        // On a cluster every Incus write passes the lease first (fencing), job units in
        // instances included; elsewhere it is open. The edge's installs are not fenced: a
        // fallback refused by a lease check would leave traffic on a failed color.
        let fence = crate::cluster::ClusterLease::fence(self.cluster.as_ref());
        let edge = self.edge(runs_in);
        let incus = veza_host::lease::Fenced::new(&self.incus, &fence);
        let units = self.units_over(&incus);
        let artifacts = ArtifactStore::new(&self.state_dir().join("artifacts"))
            .with_max_bytes(self.config.artifact_max_bytes());
        let gates = Gates {
            health_timeout: self.config.health_timeout(),
            verify_requests: self.config.promotion.verify_requests.unwrap_or(5),
            probe_timeout: Duration::from_secs(2),
            ..Gates::default()
        };
        let drivers = Drivers {
            incus: &incus,
            edge: &edge,
            units: &units,
            artifacts: &artifacts,
            probe: &veza_host::http::HttpProbe,
            clock: &veza_host::clock::SystemClock,
            secrets,
            gates,
        };
        apply(plan, &drivers, hooks).await
    }
}

/// The apps whose promotion a rolled-back run gave up, from the step it stopped at: every
/// promotion of the switch when the switch itself rolled back; only the failing app when
/// an earlier step stopped the run (a failed migration stops the deploy of its app, a new
/// color failed its gate): the other promotions of the plan never began.
fn rolled_back(plan: &Plan, failed_at: usize) -> Vec<(String, String)> {
    let Some(step) = plan.steps.get(failed_at) else { return Vec::new() };
    match &step.action {
        Action::Promote(switch) => {
            switch.promotions.iter().map(|p| (p.env.clone(), p.app.clone())).collect()
        }
        Action::Migrate { slot, .. } => vec![(slot.env.clone(), slot.app.clone())],
        Action::HealthGate(g) if !g.serving => vec![(g.slot.env.clone(), g.slot.app.clone())],
        _ => Vec::new(),
    }
}
