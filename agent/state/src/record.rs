//! Recording: how each event of a sync changes the agent's state, and which history entry
//! it is worth. Pure functions over data (time passed in); the binary reports each stage's
//! outcome as an [`Event`], then saves the state, appends the history entries and writes
//! the metrics once, at its one exit path.

use std::collections::BTreeMap;

use crate::Suspension;

use crate::{
    AgentState, AppState, AppliedRevision, EnvState, HistoryEntry, JobState, Outcome, Rejection,
    RunRecord,
};

/// What an app looks like after a sync, as observed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedApp {
    /// Environment name.
    pub env: String,
    /// App name.
    pub app: String,
    /// The color the manifest asks to serve.
    pub declared_active: String,
    /// The color the edge serves (`None`: no edge, or the app is not on it).
    pub live_active: Option<String>,
    /// Release per color, for the colors that have one.
    pub releases: BTreeMap<String, String>,
    /// Health of each color's server as the edge reports it.
    pub health: BTreeMap<String, String>,
}

/// One event of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The fetch failed (forge unreachable, over a cap, ...).
    FetchFailed {
        /// What went wrong.
        error: String,
    },
    /// The revision was refused (signature, ancestry, policy, manifests).
    Rejected {
        /// The refused commit.
        commit: String,
        /// Why, for a human.
        reason: String,
        /// When (unix seconds).
        at: i64,
    },
    /// The tip verified and was accepted.
    Accepted {
        /// The accepted commit.
        commit: String,
        /// When (unix seconds).
        at: i64,
    },
    /// What the plan refuses and the drift it found (a plan was made: the quarantine of
    /// older commits no longer matters).
    Planned {
        /// `resource: reason` per refusal.
        refusals: Vec<String>,
        /// Drift on detect-only resources.
        drift: Vec<String>,
    },
    /// The sync began to apply `commit` and did not end with it applied (a failed step, a
    /// stop, a preemption): part of it may have landed, so it is the anti-rollback base
    /// until a descendant is applied ([`AgentState::attempted`]).
    Attempted { commit: String },
    /// The revision is what the host runs now (observed after the apply).
    Applied {
        /// The commit and its signer; `applied_at` is kept when the commit is the same.
        revision: AppliedRevision,
        /// Every app of the manifests, as observed.
        apps: Vec<ObservedApp>,
        /// Every job, as observed.
        jobs: BTreeMap<String, JobState>,
    },
    /// What runs, as read after a run that did not apply its commit as a whole (a
    /// rolled-back promotion): the apps and jobs, the applied commit unchanged.
    Observed {
        /// When (unix seconds).
        at: i64,
        /// Every app of the manifests, as observed.
        apps: Vec<ObservedApp>,
        /// Every job, as observed.
        jobs: BTreeMap<String, JobState>,
    },
    /// The suspension read at the start of a sync (`None`: not suspended). A change is a
    /// history entry.
    Suspension {
        /// What `suspended.json` says now.
        now: Option<Suspension>,
        /// The applied commit, for the history entry.
        commit: String,
    },
    /// A plan was made and not applied (suspended or report mode): its steps, for status.
    Held {
        /// The steps, as printed.
        steps: Vec<String>,
    },
    /// The steps the plan holds until a maintenance window opens (empty: none).
    Waiting {
        /// The held steps.
        steps: Vec<crate::WaitingStep>,
    },
    /// The promotions whose checks through the edge are still owed (`env/app` → the
    /// color traffic goes back to), as the sync leaves them.
    Unverified(BTreeMap<String, String>),
    /// Where the agent's job units are seen now ([`AgentState::unit_targets`]).
    UnitTargets(std::collections::BTreeSet<String>),
    /// The edge switch owed its checks with no color to go back to, if any
    /// ([`AgentState::unchecked_edge`]).
    UncheckedEdge(Option<crate::UncheckedEdge>),
    /// An app's migration succeeded for a release (never run again for it).
    Migrated {
        /// Environment.
        env: String,
        /// App.
        app: String,
        /// Release.
        release: String,
        /// When (unix seconds).
        at: i64,
    },
    /// A promotion was rolled back: the commit is quarantined (never retried) and the
    /// promoted apps say why.
    RolledBack {
        /// The commit.
        commit: String,
        /// Why.
        reason: String,
        /// `(env, app)` of each promotion of the plan.
        promotions: Vec<(String, String)>,
        /// When (unix seconds).
        at: i64,
    },
    /// The operator adopted what the manifests name (`veza-agent adopt --apply`): a
    /// history entry with who, why and what; the state is not changed.
    Adopted {
        /// The commit whose manifests were adopted.
        commit: String,
        /// Who: the login (`SUDO_USER`, else `USER`) and the uid.
        by: String,
        /// Why, as the operator said.
        reason: String,
        /// What was done, one item each (marked instances and profiles, replaced timers).
        done: Vec<String>,
        /// Why it stopped part-way, if it did (the entry is then `failed`).
        error: Option<String>,
    },
    /// The run ended.
    Finished(RunRecord),
}

/// Applies `event` to `state`; returns the history entry it is worth, if any (only a
/// first rejection of a commit is: the daemon sees the same refused tip every poll).
pub fn record(state: &mut AgentState, event: Event) -> Option<HistoryEntry> {
    match event {
        Event::FetchFailed { error } => {
            state.last_fetch_error = Some(printable(error));
            None
        }
        Event::Rejected { commit, reason, at } => {
            let reason = printable(reason);
            state.last_fetch_error = None;
            let first_time = state.rejected.as_ref().map(|r| &r.commit) != Some(&commit);
            if first_time {
                state.rejected_total += 1;
            }
            state.rejected = Some(Rejection { commit: commit.clone(), reason: reason.clone(), at });
            first_time.then(|| HistoryEntry {
                at_ms: 0,
                commit,
                signer: None,
                outcome: Outcome::Rejected,
                reason: Some(reason),
                apps: BTreeMap::new(),
                duration_ms: 0,
            })
        }
        Event::Accepted { commit, at } => {
            state.last_verified_fetch_at = Some(at);
            state.last_fetch_error = None;
            if state.rejected.as_ref().is_some_and(|r| r.commit != commit) {
                // A newer good commit supersedes the last rejection.
                state.rejected = None;
            }
            None
        }
        Event::Suspension { now, commit } => {
            if state.suspended == now {
                return None;
            }
            let entry = match (&now, &state.suspended) {
                (Some(s), _) => HistoryEntry {
                    signer: None,
                    ..history_entry(
                        state,
                        &commit,
                        "",
                        Outcome::Suspended,
                        Some(format!("suspended by {}: {}", s.by, s.reason)),
                    )
                },
                (None, Some(was)) => HistoryEntry {
                    signer: None,
                    ..history_entry(
                        state,
                        &commit,
                        "",
                        Outcome::Resumed,
                        Some(format!(
                            "resumed (suspended by {} since {}: {})",
                            was.by, was.since, was.reason
                        )),
                    )
                },
                (None, None) => return None,
            };
            state.suspended = now;
            if state.suspended.is_none() {
                state.held.clear();
            }
            Some(entry)
        }
        Event::Held { steps } => {
            state.held = steps;
            None
        }
        Event::Waiting { steps } => {
            state.waiting = steps;
            None
        }
        Event::UnitTargets(targets) => {
            state.unit_targets = targets;
            None
        }
        Event::UncheckedEdge(owed) => {
            state.unchecked_edge = owed;
            None
        }
        Event::Unverified(promotions) => {
            state.unverified = promotions;
            None
        }
        Event::Planned { refusals, drift } => {
            state.held.clear();
            state.refusals = refusals;
            state.drift = drift;
            None
        }
        Event::Applied { revision, apps, jobs } => {
            // A newer commit landed: a quarantined one can only come back as a rollback.
            state.quarantined.retain(|c, _| *c == revision.commit);
            // What is applied descends from any commit attempted before it.
            state.attempted = None;
            // `applied_at` is the time of this observation.
            let at = revision.applied_at;
            if state.applied.as_ref().is_none_or(|a| a.commit != revision.commit) {
                state.applied = Some(revision);
            }
            record(state, Event::Observed { at, apps, jobs })
        }
        Event::Observed { at, apps, jobs } => {
            state.observed_at = Some(at);
            state.envs = envs(&state.envs, apps);
            state.jobs = jobs;
            None
        }
        Event::Attempted { commit } => {
            // A newer commit's apply began (planning one is not enough: a held plan, or
            // one that never started, must not let a rolled-back commit be tried again).
            state.quarantined.retain(|c, _| *c == commit);
            state.attempted = Some(commit);
            None
        }
        Event::Migrated { env, app, release, at } => {
            let done = state.migrations.entry(format!("{env}/{app}")).or_default();
            done.insert(release, at);
            while done.len() > crate::MIGRATIONS_KEPT {
                let oldest =
                    done.iter().min_by_key(|(r, at)| (**at, (*r).clone())).map(|(r, _)| r.clone());
                match oldest {
                    Some(r) => done.remove(&r),
                    None => break,
                };
            }
            None
        }
        Event::RolledBack { commit, reason, promotions, at } => {
            let reason = printable(reason);
            state
                .quarantined
                .insert(commit.clone(), Rejection { commit, reason: reason.clone(), at });
            for (env, app) in promotions {
                let a = state.envs.entry(env).or_default().apps.entry(app).or_default();
                a.last_outcome = Some(Outcome::RolledBack);
                a.last_reason = Some(reason.clone());
            }
            None
        }
        Event::Adopted { commit, by, reason, done, error } => {
            let what = if done.is_empty() { "nothing".to_string() } else { done.join("; ") };
            let (outcome, text) = match error {
                None => (Outcome::Adopted, format!("adopted by {by}: {reason} — {what}")),
                Some(e) => (
                    Outcome::Failed,
                    format!("adoption by {by} stopped part-way: {e} ({reason}) — done: {what}"),
                ),
            };
            Some(HistoryEntry {
                signer: None,
                ..history_entry(state, &commit, "", outcome, Some(text))
            })
        }
        Event::Finished(mut run) => {
            run.reason = run.reason.map(printable);
            match run.outcome {
                Outcome::Applied | Outcome::NoChange | Outcome::Waiting => state.sync_failures = 0,
                Outcome::Failed => state.sync_failures += 1,
                Outcome::Rejected
                | Outcome::RolledBack
                | Outcome::Quarantined
                | Outcome::Suspended
                | Outcome::Resumed
                | Outcome::Adopted
                | Outcome::Unknown => {}
            }
            state.last_run = Some(run);
            None
        }
    }
}

/// The per-app record after a sync: an app whose edge serves the declared color has
/// `applied` as its last outcome; any other keeps its previous outcome and reason (a
/// rolled-back promotion stays visible until a later one succeeds).
fn envs(prev: &BTreeMap<String, EnvState>, apps: Vec<ObservedApp>) -> BTreeMap<String, EnvState> {
    let mut out: BTreeMap<String, EnvState> = BTreeMap::new();
    for o in apps {
        let before = prev.get(&o.env).and_then(|e| e.apps.get(&o.app));
        let promoted = o.live_active.as_deref() == Some(o.declared_active.as_str());
        let a = AppState {
            active: o.live_active,
            releases: o.releases,
            last_outcome: if promoted {
                Some(Outcome::Applied)
            } else {
                before.and_then(|p| p.last_outcome)
            },
            last_reason: if promoted { None } else { before.and_then(|p| p.last_reason.clone()) },
            health: o.health,
        };
        out.entry(o.env).or_default().apps.insert(o.app, a);
    }
    out
}

/// `text` with every control character but line breaks and tabs written as an escape
/// (`\u{1b}`): reasons quote what the forge sent (a crafted commit's header, a signature's
/// namespace), and `status` and `history` print them to an operator's terminal.
pub fn printable(text: String) -> String {
    if !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The history entry of a run on `commit`: `env/app` → `color@release` from the state
/// as recorded after it.
pub fn history_entry(
    state: &AgentState,
    commit: &str,
    signer: &str,
    outcome: Outcome,
    reason: Option<String>,
) -> HistoryEntry {
    let mut apps = BTreeMap::new();
    for (env, e) in &state.envs {
        for (app, a) in &e.apps {
            let color = a.active.clone().unwrap_or_else(|| "none".into());
            let release = a
                .releases
                .get(&color)
                .map(|r| r.chars().take(10).collect::<String>())
                .unwrap_or_default();
            apps.insert(format!("{env}/{app}"), format!("{color}@{release}"));
        }
    }
    HistoryEntry {
        at_ms: 0,
        commit: commit.to_string(),
        signer: Some(signer.to_string()),
        outcome,
        reason: reason.map(printable),
        apps,
        duration_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: Outcome) -> Event {
        Event::Finished(RunRecord {
            started_ms: 1_000,
            duration_ms: 5,
            outcome,
            reason: None,
            commit: None,
        })
    }

    fn observed(declared: &str, live: Option<&str>) -> ObservedApp {
        ObservedApp {
            env: "prod".into(),
            app: "backend".into(),
            declared_active: declared.into(),
            live_active: live.map(str::to_string),
            releases: BTreeMap::from([
                ("blue".to_string(), "1".repeat(40)),
                ("green".to_string(), "2".repeat(40)),
            ]),
            health: BTreeMap::from([("blue".to_string(), "UP".to_string())]),
        }
    }

    /// A release read back from a slot's mark is whatever the mark holds (anyone with
    /// access to Incus can set it): the history shows its first ten characters, however
    /// many bytes they take.
    #[test]
    fn the_history_shows_a_releases_first_characters_whatever_they_are() {
        for (release, shown) in [
            ("1".repeat(40), "blue@1111111111".to_string()),
            ("éééééééééééé".to_string(), "blue@éééééééééé".to_string()),
            ("abcdefghiéj".to_string(), "blue@abcdefghié".to_string()),
            ("short".to_string(), "blue@short".to_string()),
        ] {
            let mut state = AgentState::default();
            let app = AppState {
                active: Some("blue".into()),
                releases: BTreeMap::from([("blue".to_string(), release.clone())]),
                ..AppState::default()
            };
            state.envs.entry("prod".into()).or_default().apps.insert("web".into(), app);
            let entry = history_entry(&state, "c", "s", Outcome::Applied, None);
            assert_eq!(entry.apps.get("prod/web"), Some(&shown), "{release}");
        }
    }

    fn revision(commit: &str, at: i64) -> AppliedRevision {
        AppliedRevision { commit: commit.into(), signer: "forgejo".into(), applied_at: at }
    }

    #[test]
    fn consecutive_failures_are_counted_until_a_sync_succeeds() {
        // (outcomes in order, failures after)
        let table: &[(&[Outcome], u64)] = &[
            (&[Outcome::Failed], 1),
            (&[Outcome::Failed, Outcome::Failed], 2),
            (&[Outcome::Failed, Outcome::Rejected], 1), // a refusal is no failure, no reset
            (&[Outcome::Failed, Outcome::RolledBack], 1),
            (&[Outcome::Failed, Outcome::NoChange], 0),
            (&[Outcome::Failed, Outcome::Failed, Outcome::Applied, Outcome::Failed], 1),
        ];
        for (outcomes, failures) in table {
            let mut s = AgentState::default();
            for o in *outcomes {
                assert_eq!(record(&mut s, run(*o)), None);
            }
            assert_eq!(s.sync_failures, *failures, "{outcomes:?}");
            assert_eq!(s.last_run.as_ref().map(|r| r.outcome), outcomes.last().copied());
        }
    }

    /// The anti-rollback base: the last applied commit, or a newer one whose apply began
    /// and failed (part of it may have landed) until a commit is applied again.
    #[test]
    fn an_attempted_commit_is_the_anti_rollback_base_until_a_commit_is_applied() {
        let mut s = AgentState::default();
        assert_eq!(s.high_water(), None);
        let applied = |c| Event::Applied {
            revision: revision(c, 100),
            apps: Vec::new(),
            jobs: BTreeMap::new(),
        };
        record(&mut s, applied("a"));
        assert_eq!(s.high_water(), Some("a"));
        record(&mut s, Event::Attempted { commit: "b".into() });
        assert_eq!(
            (s.high_water(), s.applied.as_ref().map(|a| a.commit.as_str())),
            (Some("b"), Some("a"))
        );
        record(&mut s, Event::Attempted { commit: "c".into() });
        assert_eq!(s.high_water(), Some("c"));
        record(&mut s, applied("d"));
        assert_eq!((s.high_water(), s.attempted.as_deref()), (Some("d"), None));
    }

    /// What the forge sent reaches `status` and `history` on an operator's terminal: its
    /// control characters are recorded as escapes, line breaks and tabs kept.
    #[test]
    fn reasons_quoting_the_forge_are_recorded_without_terminal_control_characters() {
        let crafted = "header `gpgsig\u{1b}]0;owned\u{7}` \r\nnext\tline";
        let want = "header `gpgsig\\u{1b}]0;owned\\u{7}` \\u{d}\nnext\tline";
        let mut s = AgentState::default();
        let entry =
            record(&mut s, Event::Rejected { commit: "bad".into(), reason: crafted.into(), at: 1 })
                .expect("history");
        assert_eq!(entry.reason.as_deref(), Some(want));
        assert_eq!(s.rejected.as_ref().map(|r| r.reason.as_str()), Some(want));
        record(&mut s, Event::FetchFailed { error: crafted.into() });
        assert_eq!(s.last_fetch_error.as_deref(), Some(want));
        let h = history_entry(&s, "c", "k", Outcome::Failed, Some(crafted.into()));
        assert_eq!(h.reason.as_deref(), Some(want));
        assert_eq!(printable("plain".into()), "plain");
    }

    #[test]
    fn a_rejected_commit_is_written_to_history_once_and_a_newer_good_one_clears_it() {
        let mut s = AgentState::default();
        let reject = |at| Event::Rejected {
            commit: "bad".into(),
            reason: "signature: commit is not signed".into(),
            at,
        };
        let first = record(&mut s, reject(10)).expect("the first rejection is history");
        assert_eq!((first.outcome, first.commit.as_str()), (Outcome::Rejected, "bad"));
        assert_eq!(record(&mut s, reject(70)), None, "the same tip next poll is not");
        assert_eq!((s.rejected_total, s.rejected.as_ref().map(|r| r.at)), (1, Some(70)));
        // A newer commit that verifies supersedes the rejection.
        record(&mut s, Event::Accepted { commit: "good".into(), at: 80 });
        assert_eq!((s.rejected.clone(), s.last_verified_fetch_at), (None, Some(80)));
        record(&mut s, Event::FetchFailed { error: "forge down".into() });
        assert_eq!(s.last_fetch_error.as_deref(), Some("forge down"));
        assert_eq!(s.last_verified_fetch_at, Some(80), "freshness is kept from the last fetch");
        record(&mut s, Event::Accepted { commit: "good".into(), at: 90 });
        assert_eq!(s.last_fetch_error, None);
    }

    #[test]
    fn an_app_is_applied_when_the_edge_serves_the_declared_color_else_keeps_its_outcome() {
        let mut s = AgentState::default();
        let applied =
            |apps| Event::Applied { revision: revision("c1", 100), apps, jobs: BTreeMap::new() };
        record(&mut s, applied(vec![observed("blue", Some("blue"))]));
        let app = |s: &AgentState| s.envs["prod"].apps["backend"].clone();
        assert_eq!(app(&s).last_outcome, Some(Outcome::Applied));
        assert_eq!(app(&s).health.get("blue").map(String::as_str), Some("UP"));
        // A promotion to green rolls back: the app says so, the commit is quarantined...
        record(
            &mut s,
            Event::RolledBack {
                commit: "c2".into(),
                reason: "green: /health answered 503".into(),
                promotions: vec![("prod".into(), "backend".into())],
                at: 200,
            },
        );
        assert!(s.quarantined.contains_key("c2"));
        let observed_at = |at, apps| Event::Observed { at, apps, jobs: BTreeMap::new() };
        record(&mut s, observed_at(200, vec![observed("green", Some("blue"))]));
        assert_eq!(s.applied.as_ref().map(|a| a.commit.as_str()), Some("c1"), "not applied");
        assert_eq!(s.observed_at, Some(200));
        assert_eq!(app(&s).last_outcome, Some(Outcome::RolledBack), "still visible");
        assert_eq!(app(&s).active.as_deref(), Some("blue"));
        // Planning a newer commit does not lift the quarantine (it may be held, or never
        // start)...
        record(&mut s, Event::Planned { refusals: vec!["x: y".into()], drift: vec![] });
        assert!(s.quarantined.contains_key("c2"));
        assert_eq!(s.refusals, ["x: y"]);
        // ...attempting the quarantined commit's record again keeps it...
        record(&mut s, Event::Attempted { commit: "c2".into() });
        assert!(s.quarantined.contains_key("c2"));
        // ...an attempt of a newer one lifts it, and a promotion that holds is applied.
        record(&mut s, Event::Attempted { commit: "c3".into() });
        assert!(s.quarantined.is_empty());
        let c3 =
            |apps| Event::Applied { revision: revision("c3", 300), apps, jobs: BTreeMap::new() };
        record(&mut s, c3(vec![observed("green", Some("green"))]));
        assert_eq!((app(&s).last_outcome, app(&s).last_reason), (Some(Outcome::Applied), None));
    }

    #[test]
    fn the_applied_time_is_kept_for_the_same_commit_and_apps_gone_from_the_manifests_go() {
        let mut s = AgentState::default();
        let event = |commit: &str, at, apps| Event::Applied {
            revision: revision(commit, at),
            apps,
            jobs: BTreeMap::new(),
        };
        record(&mut s, event("c1", 100, vec![observed("blue", Some("blue"))]));
        record(&mut s, event("c1", 500, vec![]));
        assert_eq!(s.applied, Some(revision("c1", 100)));
        assert!(s.envs.is_empty(), "{:?}", s.envs);
        record(&mut s, event("c2", 600, vec![]));
        assert_eq!(s.applied, Some(revision("c2", 600)));
    }

    #[test]
    fn history_entries_name_each_app_by_its_serving_color_and_short_release() {
        let mut s = AgentState::default();
        record(
            &mut s,
            Event::Applied {
                revision: revision("c1", 1),
                apps: vec![
                    observed("green", Some("green")),
                    ObservedApp { app: "web".into(), ..observed("blue", None) },
                ],
                jobs: BTreeMap::new(),
            },
        );
        let h = history_entry(&s, "c1", "forgejo", Outcome::Applied, None);
        assert_eq!(
            h.apps,
            BTreeMap::from([
                ("prod/backend".to_string(), "green@2222222222".to_string()),
                ("prod/web".to_string(), "none@".to_string()),
            ])
        );
        assert_eq!(h.signer.as_deref(), Some("forgejo"));
    }
    #[test]
    fn an_adoption_is_a_history_entry_with_who_why_and_what() {
        let mut s = AgentState::default();
        let before = s.clone();
        let event = |error: Option<&str>| Event::Adopted {
            commit: "c1".into(),
            by: "alice (uid 0)".into(),
            reason: "cutover from Ansible".into(),
            done: vec!["instance veza-postgres".into(), "timer pgbackrest-full.timer".into()],
            error: error.map(str::to_string),
        };
        // (error, outcome, reason)
        let cases = [
            (
                None,
                Outcome::Adopted,
                "adopted by alice (uid 0): cutover from Ansible — instance veza-postgres; timer pgbackrest-full.timer",
            ),
            (
                Some("boom"),
                Outcome::Failed,
                "adoption by alice (uid 0) stopped part-way: boom (cutover from Ansible) — done: instance veza-postgres; timer pgbackrest-full.timer",
            ),
        ];
        for (error, outcome, reason) in cases {
            let h = record(&mut s, event(error)).expect("a history entry");
            assert_eq!((h.outcome, h.commit.as_str(), h.signer.as_deref()), (outcome, "c1", None));
            assert_eq!(h.reason.as_deref(), Some(reason));
        }
        assert_eq!(s, before, "adoption changes no state");
        assert_eq!(Outcome::Adopted.as_str(), "adopted");
    }

    #[test]
    fn a_migration_is_remembered_per_release_and_the_oldest_are_forgotten() {
        let mut state = AgentState::default();
        for n in 0..(crate::MIGRATIONS_KEPT as i64 + 2) {
            let release = format!("{n:040}");
            record(
                &mut state,
                Event::Migrated { env: "prod".into(), app: "backend".into(), release, at: n },
            );
        }
        let done = state.migrated();
        assert_eq!(done.len(), crate::MIGRATIONS_KEPT);
        assert!(!done.contains(&("prod".into(), "backend".into(), format!("{:040}", 0))));
        assert!(done.contains(&("prod".into(), "backend".into(), format!("{:040}", 101))));
        let json = serde_json::to_string(&state).expect("json");
        let back: AgentState = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back.migrated(), done);
    }
}
