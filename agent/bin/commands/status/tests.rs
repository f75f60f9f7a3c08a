//! Tests of `veza-agent status`: the report read from recorded state, as text and JSON.

use super::*;
use veza_state::{AppState, AppliedRevision, EnvState, Rejection};

/// The weekly drill, last (successful) run at `at`.
fn drill(at: i64) -> JobState {
    JobState {
        target: "host".into(),
        schedule: "0 4 * * 0".into(),
        next: Some("1970-01-03T04:00:00Z".into()),
        last_result: Some("success".into()),
        last_exit: Some(0),
        last_start: chrono::DateTime::from_timestamp(at, 0).map(|t| t.to_rfc3339()),
        last_success_at: Some(at),
        max_success_age_s: Some(8 * 86_400),
        first_seen_at: Some(0),
        running: false,
        running_since: None,
        problem: None,
        unscheduled: false,
    }
}

/// The drill, first seen at `first_seen_at` and never run since.
fn never_ran(first_seen_at: i64) -> JobState {
    JobState {
        last_result: None,
        last_start: None,
        last_success_at: None,
        first_seen_at: Some(first_seen_at),
        ..drill(0)
    }
}

fn base() -> AgentState {
    let mut st = AgentState {
        applied: Some(AppliedRevision {
            commit: "a".repeat(40),
            signer: "forgejo@veza".into(),
            applied_at: 1000,
        }),
        last_verified_fetch_at: Some(1990),
        ..AgentState::default()
    };
    let mut app = AppState { active: Some("green".into()), ..AppState::default() };
    app.releases.insert("blue".into(), "1".repeat(40));
    app.releases.insert("green".into(), "2".repeat(40));
    let mut env = EnvState::default();
    env.apps.insert("backend".into(), app);
    st.envs.insert("prod".into(), env);
    st
}

/// Read at 2000 s, staleness limit 600 s, plenty of space.
fn seen() -> Observed {
    Observed {
        interrupted: None,
        running: false,
        run_started: None,
        now: 2000,
        max_staleness_s: 600,
        state_dir: "/var/lib/veza-agent".into(),
        state_dir_free_bytes: Some(1 << 30),
        suspension: None,
        report_mode: false,
        previews: None,
    }
}

/// A suspension shows from the file at once (before any sync recorded it), with what the
/// last plan would apply; report mode says the same without a person behind it.
#[test]
fn a_suspended_or_report_mode_host_says_what_it_would_do() {
    let mut state = base();
    state.held = vec!["deploy release 2222222222 to veza-web-green".into()];
    let suspension =
        veza_state::Suspension { since: 0, by: "alice".into(), reason: "db maintenance".into() };
    let s = build(state.clone(), Observed { suspension: Some(suspension), ..seen() });
    assert_eq!(
        s.headline,
        "NEEDS ATTENTION: suspended by alice since 1970-01-01T00:00:00+00:00: db maintenance; would apply 1 step(s): deploy release 2222222222 to veza-web-green (`veza-agent resume` lifts it)"
    );
    let s = build(state.clone(), Observed { report_mode: true, ..seen() });
    assert_eq!(
        s.headline,
        "NEEDS ATTENTION: report mode (`mode: report`): nothing is applied; would apply 1 step(s): deploy release 2222222222 to veza-web-green"
    );
    // Resumed, before the next sync: what was held is still not applied.
    let s = build(state, seen());
    assert_eq!(
        s.headline,
        "NEEDS ATTENTION: not in sync yet: the last sync held back 1 step(s): deploy release 2222222222 to veza-web-green (applying has been resumed since; the next sync applies them, `veza-agent sync` asks for it now)"
    );
    assert_eq!(build(base(), seen()).health, "ok");
}

/// A journal whose writer still runs is a run in progress, not a killed one; once the
/// writer is gone the same journal is an interrupted run that needs attention.
#[test]
fn a_journal_is_a_run_in_progress_while_its_writer_runs() {
    let at = Some("deploy release 2222222222 to veza-web-green".to_string());
    let s = build(base(), Observed { interrupted: at.clone(), running: true, ..seen() });
    assert_eq!(
        (s.health, s.running.as_deref(), s.interrupted.as_deref()),
        ("ok", at.as_deref(), None)
    );
    assert!(render(&s, 2000).contains("running:  a sync is applying now, at `deploy release"));
    let s = build(base(), Observed { interrupted: at.clone(), running: false, ..seen() });
    assert_eq!((s.health, s.running, s.interrupted.as_deref()), ("attention", None, at.as_deref()));
    assert!(s.headline.contains("a run was interrupted at `deploy release"), "{}", s.headline);
    // What the journal owes (its switch's checks, being run now) is a problem only once
    // its writer is gone.
    let mut owing = base();
    owing.unverified.insert("prod/web".into(), "blue".into());
    owing.unchecked_edge = Some(veza_state::UncheckedEdge {
        config: "# before\n".into(),
        apps: vec!["prod/api".into()],
    });
    let running =
        Observed { interrupted: at.clone(), running: true, run_started: Some(1880), ..seen() };
    let s = build(owing.clone(), running.clone());
    assert_eq!(s.health, "ok", "{:?}", s.problems);
    assert!(
        render(&s, 2000).contains("running:  a sync is applying now (for 2m), at `deploy release 2222222222 to veza-web-green`; checking through the edge: prod/api, prod/web"),
        "{}",
        render(&s, 2000)
    );
    // Running for an hour: more likely stuck (or alive after a failed save), and what it
    // owes is shown as owed.
    let stuck = Observed { run_started: Some(2000 - STUCK_RUN_S), ..running };
    let s = build(owing.clone(), stuck);
    assert_eq!(s.health, "attention");
    assert!(
        s.problems.iter().any(|p| p.starts_with("a sync has been applying for 60m")),
        "{:?}",
        s.problems
    );
    assert!(
        s.problems.iter().any(|p| p.starts_with("prod/web: its promotion from blue")),
        "{:?}",
        s.problems
    );
    let s = build(owing, Observed { interrupted: at.clone(), running: false, ..seen() });
    let problems = s.problems.join("\n");
    assert!(problems.contains("prod/web: its promotion from blue"), "{problems}");
    assert!(problems.contains("prod/api: the edge switch"), "{problems}");
}

#[test]
fn a_full_state_directory_needs_attention_even_when_nothing_could_be_recorded() {
    // (free bytes, headline)
    let table = [
        (Some(1 << 30), "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza"),
        (Some(LOW_SPACE_BYTES), "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza"),
        (None, "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza"),
        (
            Some(LOW_SPACE_BYTES - 1),
            "NEEDS ATTENTION: disk full: 4095 KiB free for the state directory \
             /var/lib/veza-agent; syncs fail and cannot record why (free space, then \
             `veza-agent sync`)",
        ),
        (
            Some(0),
            "NEEDS ATTENTION: disk full: 0 KiB free for the state directory \
             /var/lib/veza-agent; syncs fail and cannot record why (free space, then \
             `veza-agent sync`)",
        ),
    ];
    for (free, want) in table {
        let s = build(base(), Observed { state_dir_free_bytes: free, ..seen() });
        assert_eq!(s.headline, want, "free {free:?}");
        assert_eq!(s.health == "ok", want.starts_with("OK"), "free {free:?}");
    }
}

/// Each row: a state edit, and the headline it must produce.
#[test]
fn headlines_say_what_needs_a_human() {
    type Edit = Box<dyn Fn(&mut AgentState)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("in sync", Box::new(|_| {}), "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza"),
        (
            "rejected",
            Box::new(|s| {
                s.rejected = Some(Rejection {
                    commit: "b".repeat(40),
                    reason: "signature: unsigned commit".into(),
                    at: 1,
                })
            }),
            "NEEDS ATTENTION: revision bbbbbbbbbbbb rejected: signature: unsigned commit",
        ),
        (
            "rolled back",
            Box::new(|s| {
                let a = s.envs.get_mut("prod").unwrap().apps.get_mut("backend").unwrap();
                a.last_outcome = Some(Outcome::RolledBack);
                a.last_reason = Some("green never became healthy".into());
            }),
            "NEEDS ATTENTION: promotion of prod/backend rolled back: green never became healthy",
        ),
        (
            "a promotion's checks through the edge are owed",
            Box::new(|s| {
                s.unverified.insert("prod/backend".into(), "blue".into());
            }),
            "NEEDS ATTENTION: prod/backend: its promotion from blue got as far as the edge switch and its checks through the edge never passed (the run was killed, or putting blue back failed); the next sync checks it again and goes back to blue if it fails",
        ),
        (
            "a killed run's checks failed during its fallback",
            Box::new(|s| {
                s.unverified.insert("prod/backend".into(), "blue".into());
                s.checks_failed = Some("c".repeat(40));
            }),
            "NEEDS ATTENTION: prod/backend: the checks through the edge of its promotion from blue failed and the run was killed while putting blue back; the next sync reads the edge: back on blue, the commit is quarantined, else it checks again and goes back to blue if they fail",
        ),
        (
            "stale",
            Box::new(|s| s.last_verified_fetch_at = Some(0)),
            "NEEDS ATTENTION: source is stale: last verified fetch 2000 s ago (limit 600 s)",
        ),
        (
            "healthy job",
            Box::new(|s| {
                s.jobs.insert("prod/dr-drill".into(), drill(2000 - 86_400));
            }),
            "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza",
        ),
        (
            "stale job",
            Box::new(|s| {
                s.jobs.insert("prod/dr-drill".into(), drill(2000 - 9 * 86_400));
            }),
            "NEEDS ATTENTION: job prod/dr-drill: last success 9 d ago (max 8 d)",
        ),
        (
            // Recorded fresh at the last sync, stale by now: judged at read time.
            "job gone stale since the last sync",
            Box::new(|s| {
                let j = JobState { problem: None, ..drill(2000 - 8 * 86_400 - 3_600) };
                s.jobs.insert("prod/dr-drill".into(), j);
            }),
            "NEEDS ATTENTION: job prod/dr-drill: last success 8 d 1 h ago (max 8 d)",
        ),
        (
            "failed job",
            Box::new(|s| {
                s.jobs.insert(
                    "prod/pgbackrest-diff".into(),
                    JobState {
                        target: "veza-postgres".into(),
                        schedule: "0 2 * * 1-6".into(),
                        last_result: Some("exit-code".into()),
                        last_exit: Some(3),
                        last_start: Some("1970-01-01T00:30:00Z".into()),
                        last_success_at: Some(100),
                        ..JobState::default()
                    },
                );
            }),
            "NEEDS ATTENTION: job prod/pgbackrest-diff: last run failed (exit-code, exit status 3)",
        ),
        (
            "job whose state could not be read",
            Box::new(|s| {
                s.jobs.insert(
                    "prod/x".into(),
                    JobState {
                        target: "gone".into(),
                        problem: Some("status unknown: instance `gone` not found".into()),
                        ..JobState::default()
                    },
                );
            }),
            "NEEDS ATTENTION: job prod/x: status unknown: instance `gone` not found",
        ),
        (
            "new job that has not run yet",
            Box::new(|s| {
                s.jobs.insert("prod/dr-drill".into(), never_ran(1000));
            }),
            "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza",
        ),
        (
            "job that never succeeded in longer than its max age",
            Box::new(|s| {
                s.jobs.insert("prod/dr-drill".into(), never_ran(2000 - 9 * 86_400));
            }),
            "NEEDS ATTENTION: job prod/dr-drill: no successful run in 9 d (max 8 d)",
        ),
    ];
    for (what, edit, want) in cases {
        let mut st = base();
        edit(&mut st);
        let s = build(st, seen());
        assert_eq!(s.headline, want, "{what}");
    }
}

#[test]
fn human_form_shows_colors_and_releases() {
    let s = build(base(), seen());
    let text = render(&s, 2000);
    assert!(
        text.contains("  backend    active green [blue=1111111111 green=2222222222*]"),
        "{text}"
    );
    assert!(text.contains("commit:   aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa signed by forgejo@veza (applied 16m ago)"), "{text}");
    let mut st = base();
    let app = st.envs.get_mut("prod").unwrap().apps.get_mut("backend").unwrap();
    app.health.insert("green".into(), "UP".into());
    app.health.insert("blue".into(), "MAINT".into());
    let text = render(&build(st.clone(), seen()), 2000);
    assert!(text.contains("[blue=1111111111 MAINT green=2222222222* UP]"), "{text}");
    // The active color DOWN at the edge needs a human.
    let app = st.envs.get_mut("prod").unwrap().apps.get_mut("backend").unwrap();
    app.health.insert("green".into(), "DOWN".into());
    st.refusals.push("instance forgejo-like: not the agent's".into());
    let s = build(st, seen());
    assert_eq!(s.headline, "NEEDS ATTENTION: refused: instance forgejo-like: not the agent's");
    assert!(
        s.problems.iter().any(|p| p == "prod/backend: the active green slot is DOWN at the edge"),
        "{:?}",
        s.problems
    );
}

#[test]
fn human_and_json_forms_show_jobs() {
    let mut st = base();
    st.jobs.insert("prod/dr-drill".into(), drill(2000 - 9 * 86_400));
    st.jobs.insert(
        "prod/pgbackrest-diff".into(),
        JobState {
            target: "veza-postgres".into(),
            schedule: "0 2 * * 1-6".into(),
            next: Some("1970-01-02T02:00:00Z".into()),
            last_result: Some("exit-code".into()),
            last_exit: Some(3),
            last_start: Some("1970-01-01T00:30:00Z".into()),
            ..JobState::default()
        },
    );
    st.jobs.insert("prod/report".into(), JobState { target: "host".into(), ..JobState::default() });
    // A run in progress: the last finished one still shows.
    st.jobs.insert(
        "prod/pgbackrest-full".into(),
        JobState {
            running: true,
            running_since: Some("1970-01-01T00:25:00Z".into()),
            ..drill(2000 - 3600)
        },
    );
    st.jobs.insert(
        "prod/vacuum".into(),
        JobState { target: "host".into(), running: true, ..JobState::default() },
    );
    let s = build(st, seen());
    assert_eq!(s.health, "attention");
    assert_eq!(
        s.problems,
        [
            "job prod/dr-drill: last success 9 d ago (max 8 d)",
            "job prod/pgbackrest-diff: last run failed (exit-code, exit status 3)",
        ]
    );
    let text = render(&s, 2000);
    for line in [
        "jobs:\n",
        "  prod/dr-drill        on host           next 1970-01-03 04:00 UTC  last success 9d ago  [!]\n",
        "  prod/pgbackrest-diff on veza-postgres  next 1970-01-02 02:00 UTC  last FAILED exit-code (exit status 3) 3m ago  [!]\n",
        "  prod/report          on host           next none  last never ran\n",
        "  prod/pgbackrest-full on host           next 1970-01-03 04:00 UTC  last running (started 8m ago), before: success 60m ago\n",
        "  prod/vacuum          on host           next none  last running\n",
        "also:     job prod/pgbackrest-diff: last run failed (exit-code, exit status 3)\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(
        json["jobs"]["prod/dr-drill"],
        serde_json::json!({
            "target": "host",
            "schedule": "0 4 * * 0",
            "next": "1970-01-03T04:00:00Z",
            "last_result": "success",
            "last_exit": 0,
            "last_start": chrono::DateTime::from_timestamp(2000 - 9 * 86_400, 0).unwrap().to_rfc3339(),
            "last_success_at": 2000 - 9 * 86_400,
            "last_success_age_s": 777_600,
            "max_success_age_s": 691_200,
            "first_seen_at": 0,
            "problem": "last success 9 d ago (max 8 d)",
        })
    );
    assert_eq!(json["jobs"]["prod/report"]["problem"], serde_json::Value::Null);
    assert_eq!(json["jobs"]["prod/pgbackrest-full"]["running"], true);
    assert_eq!(json["jobs"]["prod/pgbackrest-full"]["running_since"], "1970-01-01T00:25:00Z");
    // The raw record stays under `state`.
    assert_eq!(json["state"]["jobs"]["prod/pgbackrest-diff"]["last_exit"], 3);
}

/// Steps waiting for a maintenance window are expected: the host stays `ok` (exit 0),
/// the headline says when the window opens, the text lists each step with why.
#[test]
fn waiting_steps_show_when_their_window_opens_without_needing_attention() {
    let mut state = base();
    state.waiting = vec![veza_state::WaitingStep {
        env: "prod".into(),
        step: "snapshot veza-postgres (keep 5)".into(),
        because: "protected data is snapshotted, then changed".into(),
        next_open: Some("2026-01-04T02:00:00+01:00".into()),
        next_open_unix: Some(1_767_488_400),
    }];
    let s = build(state, seen());
    assert_eq!(s.health, "ok");
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_eq!(
        s.headline,
        "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza; waiting for window, opens at 2026-01-04T02:00:00+01:00 (prod); 1 step(s) held: snapshot veza-postgres (keep 5)"
    );
    let text = render(&s, 2000);
    assert!(
        text.contains(
            "waiting for a maintenance window:\n  prod: snapshot veza-postgres (keep 5) (next opens at 2026-01-04T02:00:00+01:00) — protected data is snapshotted, then changed\n"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&s).expect("serializes");
    assert_eq!(json["state"]["waiting"][0]["next_open_unix"], 1_767_488_400, "{json:#}");
}

/// PR previews are shown, newest PR first, without merged heads and without making the
/// host need attention; `--json` carries them whole.
#[test]
fn previews_show_the_last_pass_and_what_each_head_got() {
    use veza_state::previews::{MERGED, PreviewRun, PreviewedHead, Previews};
    let head = |pr: u64, state: &str, description: &str, posted: bool| PreviewedHead {
        pr,
        state: state.into(),
        description: description.into(),
        at: 1900,
        posted,
    };
    let mut p = Previews::default();
    p.heads.insert("1".repeat(40), head(7, "success", "would: switch prod/web to green", true));
    p.heads.insert("2".repeat(40), head(9, "failure", "unsigned, not planned: x", false));
    p.heads.insert("3".repeat(40), head(3, MERGED, "already in the branch", false));
    p.count_failure("post");
    p.last_run = Some(PreviewRun {
        at: 1880,
        duration_ms: 420,
        heads: 3,
        previewed: 2,
        posted: 1,
        left: 0,
        error: None,
    });
    let s = build(base(), Observed { previews: Some(p), ..seen() });
    assert_eq!(s.health, "ok", "{:?}", s.problems);
    let text = render(&s, 2000);
    let want = "previews: 3 PR head(s), 2 previewed, 1 status(es) posted (2m ago, 420 ms)\n  \
                #9     222222222222 failure unsigned, not planned: x (status not posted yet)\n  \
                #7     111111111111 success would: switch prod/web to green\n  \
                preview failures so far: post 1\n";
    assert!(text.contains(want), "{text}");
    assert!(!text.contains("333333333333"), "merged heads are not listed:\n{text}");
    let json = serde_json::to_value(&s).expect("serializes");
    assert_eq!(json["previews"]["heads"]["1".repeat(40)]["state"], "success", "{json:#}");
    assert_eq!(json["previews"]["failures_total"]["post"], 1, "{json:#}");
    let off = serde_json::to_value(build(base(), seen())).expect("serializes");
    assert!(off.get("previews").is_none(), "no previews key when previews are off: {off:#}");
}
