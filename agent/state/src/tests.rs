//! Tests of the state directory: loading, saving, history, the journal, corruption and locking.

use super::*;

/// A state directory the agent creates is root-only; one that exists keeps its mode.
#[test]
fn a_state_directory_the_agent_creates_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("custom/state");
    let _store = Store::open(&fresh).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&fresh), 0o700);
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
    let _store = Store::open(&shared).unwrap();
    assert_eq!(mode(&shared), 0o750, "an existing directory is left as it is");
    // `suspend` before any sync creates it root-only as well.
    let suspended = dir.path().join("custom/suspended");
    let s = Suspension { since: 1, by: "ops".into(), reason: "db maintenance".into() };
    suspend(&suspended, &s).unwrap();
    assert_eq!(mode(&suspended), 0o700);
}

#[test]
fn state_round_trips_and_history_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let state = AgentState {
        applied: Some(AppliedRevision {
            commit: "abc".into(),
            signer: "alice".into(),
            applied_at: 7,
        }),
        ..AgentState::default()
    };
    store.save(&state).unwrap();
    assert_eq!(store.reader().load().unwrap(), state);
    for i in 0..(HISTORY_LIMIT + 5) {
        store
            .append_history(&HistoryEntry {
                at_ms: i as i64,
                commit: format!("c{i}"),
                signer: None,
                outcome: Outcome::Applied,
                reason: None,
                apps: BTreeMap::new(),
                duration_ms: 1,
            })
            .unwrap();
    }
    let h = store.reader().history().unwrap();
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h.last().unwrap().commit, format!("c{}", HISTORY_LIMIT + 4));
}

#[test]
fn appending_keeps_history_lines_this_agent_cannot_read_and_never_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry = |commit: &str| HistoryEntry {
        at_ms: 1,
        commit: commit.into(),
        signer: None,
        outcome: Outcome::Applied,
        reason: None,
        apps: BTreeMap::new(),
        duration_ms: 1,
    };
    store.append_history(&entry("a")).unwrap();
    let path = dir.path().join("history.jsonl");
    // A newer agent's outcome, and a damaged byte.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"{\"at_ms\":2,\"commit\":\"b\",\"outcome\":\"teleported\"}\n");
    bytes.extend_from_slice(b"{\"damaged\":\"\xff\"}\n");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(store.reader().history().unwrap().len(), 1, "the readable entry is read");
    store.append_history(&entry("c")).unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("\"outcome\":\"teleported\""), "{text}");
    let read: Vec<String> =
        store.reader().history().unwrap().into_iter().map(|e| e.commit).collect();
    assert_eq!(read, ["a", "c"]);
    // Unreadable (here: a directory where the file should be): an error, nothing rewritten.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert!(store.append_history(&entry("d")).is_err());
    assert!(path.is_dir());
}

#[test]
fn a_state_with_an_outcome_from_a_newer_agent_loads_and_keeps_its_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let newer = br#"{"schema_version":1,"applied":null,"last_verified_fetch_at":5,"last_fetch_error":null,"rejected":null,"quarantined":{"c":{"commit":"c","reason":"green never became healthy","at":1}},"envs":{},"last_run":{"started_ms":1,"duration_ms":2,"outcome":"teleported","reason":null,"commit":null},"sync_failures":0,"rejected_total":0}"#;
    std::fs::write(dir.path().join("state.json"), newer).unwrap();
    let state = Reader::new(dir.path()).load().unwrap();
    assert_eq!(state.last_run.map(|r| r.outcome), Some(Outcome::Unknown));
    assert!(state.quarantined.contains_key("c"));
}

#[test]
fn state_without_jobs_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let old = br#"{"schema_version":1,"applied":null,"last_verified_fetch_at":5,"last_fetch_error":null,"rejected":null,"quarantined":{},"envs":{},"last_run":null,"sync_failures":0,"rejected_total":2}"#;
    std::fs::write(dir.path().join("state.json"), old).unwrap();
    let state = Reader::new(dir.path()).load().unwrap();
    assert_eq!(state.rejected_total, 2);
    assert!(state.jobs.is_empty());
    // A job record round-trips, and a partial one (an older agent's) fills in defaults.
    let store = Store::open(dir.path()).unwrap();
    let mut with_jobs = state.clone();
    with_jobs.jobs.insert(
        "prod/dr-drill".into(),
        JobState {
            target: "host".into(),
            schedule: "0 4 * * 0".into(),
            last_result: Some("success".into()),
            last_success_at: Some(100),
            max_success_age_s: Some(8 * 86_400),
            ..JobState::default()
        },
    );
    store.save(&with_jobs).unwrap();
    assert_eq!(store.reader().load().unwrap(), with_jobs);
    let partial: JobState = serde_json::from_str(r#"{"target":"db"}"#).unwrap();
    assert_eq!(partial, JobState { target: "db".into(), ..JobState::default() });
}

#[test]
fn second_store_on_the_same_dir_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another veza-agent is running"));
}

/// A run killed between a temp file's creation and its rename leaves `.state.json.*.tmp`
/// behind; the next agent to take the lock removes it (the suspension's temp files stay:
/// `suspend` writes without the lock).
#[test]
fn opening_the_store_removes_the_temp_files_of_a_killed_writer() {
    let dir = tempfile::tempdir().unwrap();
    let left = [".state.json.00112233aabbccdd.tmp", ".journal.json.fedcba9876543210.tmp"];
    let kept = ".suspended.json.00112233aabbccdd.tmp";
    for name in left.iter().chain([&kept]) {
        std::fs::write(dir.path().join(name), b"{\"half").unwrap();
    }
    let _store = Store::open(dir.path()).unwrap();
    for name in left {
        assert!(!dir.path().join(name).exists(), "{name} was left");
    }
    assert!(dir.path().join(kept).exists());
}

#[test]
fn corrupt_state_is_reported_by_readers_and_moved_aside_only_under_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
    let err = Reader::new(dir.path()).load().unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    assert!(dir.path().join("state.json").exists(), "a reader moved the state file");
    let store = Store::open(dir.path()).unwrap();
    let (state, recovered) = store.load_or_recover().unwrap();
    assert_eq!(state, AgentState::default());
    assert!(matches!(recovered, Some(StateError::MovedAside { .. })), "{recovered:?}");
    assert!(!dir.path().join("state.json").exists());
    let (again, none) = store.load_or_recover().unwrap();
    assert_eq!(again, AgentState::default());
    assert!(none.is_none(), "{none:?}");
}

#[test]
fn newer_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state.json"), br#"{"schema_version": 99}"#).unwrap();
    let err = Reader::new(dir.path()).load().unwrap_err();
    assert!(matches!(err, StateError::TooNew { found: 99, .. }), "{err}");
}

#[test]
fn journal_survives_until_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let j = Journal {
        commit: "c".into(),
        started_ms: 1,
        steps: vec!["a".into()],
        done: 0,
        current: Some("a".into()),
        unverified: [("prod/web".to_string(), "blue".to_string())].into(),
        migrated: vec![("prod".into(), "web".into(), "2222".into())],
        ..Journal::default()
    };
    store.write_journal(&j).unwrap();
    assert_eq!(store.reader().journal(), Some(j));
    store.clear_journal().unwrap();
    assert_eq!(store.reader().journal(), None);
}

/// A run killed after a migration ran and before its outcome was saved: the journal holds
/// the migration, and the state the next sync (and `plan`, `status`) starts from has it,
/// so it is not run again for that release.
#[test]
fn a_killed_runs_migrations_are_taken_from_its_journal() {
    let mut state = AgentState::default();
    let j = Journal {
        commit: "c".into(),
        started_ms: 1_700_000_000_000,
        steps: vec!["migrate prod/web".into(), "deploy".into()],
        done: 1,
        current: Some("deploy".into()),
        migrated: vec![("prod".into(), "web".into(), "2222".into())],
        ..Journal::default()
    };
    assert!(state.migrated().is_empty());
    state.take_owed_from(Some(&j));
    let want = ("prod".to_string(), "web".to_string(), "2222".to_string());
    assert_eq!(state.migrated(), [want].into());
    assert_eq!(state.migrations["prod/web"]["2222"], 1_700_000_000);
    // Its commit began to apply: the anti-rollback base.
    assert_eq!(state.high_water(), Some("c"));
    state.take_owed_from(None);
    assert_eq!(state.migrated().len(), 1);
}

/// A journal left by a kill after its run's outcome was saved is not an interrupted run;
/// any other journal is (another commit, or another run: even one that started in the
/// same second, such as an operator's `sync --now` right after a poll).
/// A run killed during a migration: its command may have run or still run, so the next
/// sync is told which commit and which migration (it records that commit's rollback and
/// never tries it again); one killed after the migration ended tells nothing.
#[test]
fn a_run_killed_during_a_migration_names_it_and_its_commit() {
    let what = "the migration of prod/web for release 2222222222 in `web-tools`";
    for migrating in [Some(what.to_string()), None] {
        let mut state = AgentState::default();
        let j = Journal {
            commit: "c".into(),
            started_ms: 1_700_000_000_000,
            current: Some("migrate".into()),
            migrating: migrating.clone(),
            ..Journal::default()
        };
        state.take_owed_from(Some(&j));
        assert_eq!(state.migration_unseen, migrating.map(|w| ("c".to_string(), w)));
        assert!(state.quarantined.is_empty(), "recorded by the sync, with its history");
    }
}

#[test]
fn the_last_recorded_runs_own_journal_is_not_an_interrupted_run() {
    let run = |started_ms: i64, commit: &str| RunRecord {
        started_ms,
        duration_ms: 5,
        outcome: Outcome::Applied,
        reason: None,
        commit: Some(commit.to_string()),
    };
    let journal = Journal {
        commit: "c".into(),
        started_ms: 1_700_000_000_417,
        steps: vec!["a".into()],
        done: 1,
        current: Some("a".into()),
        ..Journal::default()
    };
    // (last recorded run, the journal still counts)
    let table = [
        (None, true),
        (Some(run(1_700_000_000_417, "c")), false),
        (Some(run(1_700_000_000_417, "d")), true),
        (Some(run(1_700_000_000_016, "c")), true),
        (Some(run(1_699_999_999_417, "c")), true),
        (Some(run(1_700_000_001_417, "c")), true),
    ];
    for (last_run, counts) in table {
        let state = AgentState { last_run: last_run.clone(), ..AgentState::default() };
        assert_eq!(state.unfinished(Some(journal.clone())).is_some(), counts, "{last_run:?}");
    }
    // A journal written by an earlier agent (whole seconds, no writer stamp) still
    // matches its run; one with a stamp must match to the millisecond.
    let old = Journal { started_ms: 1_700_000_000_000, ..journal.clone() };
    let stamped = Journal { pid_start: Some(7), ..old.clone() };
    let state = AgentState { last_run: Some(run(1_700_000_000_417, "c")), ..AgentState::default() };
    assert!(state.unfinished(Some(old)).is_none());
    assert!(state.unfinished(Some(stamped)).is_some());
}
