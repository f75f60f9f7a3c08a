//! `veza-agent status`: what runs on this host, from which commit, signed by whom,
//! whether the last promotion held, how the scheduled jobs went, and what needs a human.
//! Human text or `--json`.
//! Reads the recorded state only (no lock, no network), so it answers instantly even
//! while the daemon applies.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;
use veza_state::{AgentState, JobState, Outcome, Reader};

use crate::commands::common::{ConfigArg, fail, now};
use crate::jobs;
use crate::reconcile::load_config;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the status document as JSON (health, headline, problems, staleness and
    /// the whole recorded state) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The status document (`--json`).
#[derive(Debug, Serialize)]
pub struct Status {
    /// `ok` or `attention`.
    pub health: &'static str,
    /// One line for a human.
    pub headline: String,
    /// Everything that needs a human.
    pub problems: Vec<String>,
    /// Whether the source is stale (no verified fetch within the limit).
    pub stale: bool,
    /// Seconds since the last verified fetch.
    pub last_fetch_age_s: Option<i64>,
    /// A run that was interrupted (crash) and will be resumed.
    pub interrupted: Option<String>,
    /// Free bytes on the file system of the state directory (`None`: not measurable).
    pub state_dir_free_bytes: Option<u64>,
    /// Scheduled jobs by `env/job`, as recorded at the last sync and judged now.
    pub jobs: BTreeMap<String, JobStatus>,
    /// The recorded state.
    pub state: AgentState,
}

/// One scheduled job in the status document: the recorded [`JobState`], with `problem`
/// judged again now (a job recorded fresh may have gone stale since), plus the age of
/// its last success.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    /// As recorded at the last sync; `problem` as judged now.
    #[serde(flatten)]
    pub job: JobState,
    /// Seconds since the last successful run started.
    pub last_success_age_s: Option<i64>,
}

impl JobStatus {
    fn new(job: &JobState, now: i64) -> JobStatus {
        let judged = JobState { problem: jobs::health(job, now), ..job.clone() };
        JobStatus { last_success_age_s: job.last_success_at.map(|t| now - t), job: judged }
    }
}

impl std::ops::Deref for JobStatus {
    type Target = JobState;
    fn deref(&self) -> &JobState {
        &self.job
    }
}

/// Below this much free space in the state directory's file system, a sync can fail
/// without being able to record why, so `status` says so itself.
pub const LOW_SPACE_BYTES: u64 = 4 << 20;

/// What `status` reads besides the recorded state.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The step a crashed run was at (from the journal).
    pub interrupted: Option<String>,
    /// Now, unix seconds.
    pub now: i64,
    /// The configured `trust.max_staleness`, seconds.
    pub max_staleness_s: i64,
    /// Where the state lives, and its file system's free bytes.
    pub state_dir: String,
    pub state_dir_free_bytes: Option<u64>,
}

/// Builds the status from recorded state. Pure: time, staleness limit and free space
/// are inputs.
pub fn build(state: AgentState, seen: Observed) -> Status {
    let Observed { interrupted, now, max_staleness_s, state_dir, state_dir_free_bytes } = seen;
    let mut problems = Vec::new();
    if let Some(free) = state_dir_free_bytes
        && free < LOW_SPACE_BYTES
    {
        problems.push(format!(
            "disk full: {} KiB free for the state directory {state_dir}; syncs fail and \
             cannot record why (free space, then `veza-agent sync`)",
            free / 1024
        ));
    }
    let age = state.last_verified_fetch_at.map(|t| now - t);
    let stale = age.is_none_or(|a| a > max_staleness_s);
    if let Some(r) = &state.rejected {
        problems.push(format!("revision {} rejected: {}", short(&r.commit), r.reason));
    }
    for (env, e) in &state.envs {
        for (app, a) in &e.apps {
            if a.last_outcome == Some(Outcome::RolledBack) {
                problems.push(format!(
                    "promotion of {env}/{app} rolled back: {}",
                    a.last_reason.as_deref().unwrap_or("no reason recorded")
                ));
            }
        }
    }
    for q in state.quarantined.values() {
        problems.push(format!(
            "commit {} is quarantined (not retried until a newer commit): {}",
            short(&q.commit),
            q.reason
        ));
    }
    if stale {
        problems.push(match age {
            Some(a) => format!(
                "source is stale: last verified fetch {a} s ago (limit {max_staleness_s} s)"
            ),
            None => "source is stale: no verified fetch yet".to_string(),
        });
    }
    if let Some(run) = &state.last_run
        && run.outcome == Outcome::Failed
    {
        problems.push(format!(
            "last sync failed: {}",
            run.reason.as_deref().unwrap_or("unknown reason")
        ));
    }
    let jobs: BTreeMap<String, JobStatus> =
        state.jobs.iter().map(|(key, j)| (key.clone(), JobStatus::new(j, now))).collect();
    for (key, j) in &jobs {
        if let Some(p) = &j.problem {
            problems.push(format!("job {key}: {p}"));
        }
    }
    if let Some(i) = &interrupted {
        problems
            .push(format!("a run was interrupted at `{i}`; the next sync resumes from live state"));
    }
    for r in &state.refusals {
        problems.push(format!("refused: {r}"));
    }
    for d in &state.drift {
        problems.push(format!("drift on a detect-only resource: {d}"));
    }
    for (env, e) in &state.envs {
        for (app, a) in &e.apps {
            if let Some(active) = &a.active
                && let Some(h) = a.health.get(active)
                && !h.starts_with("UP")
                && !h.starts_with("no check")
            {
                problems.push(format!("{env}/{app}: the active {active} slot is {h} at the edge"));
            }
        }
    }
    let headline = match (&problems.first(), &state.applied) {
        (Some(p), _) => format!("NEEDS ATTENTION: {p}"),
        (None, Some(a)) => format!("OK: in sync with {} signed by {}", short(&a.commit), a.signer),
        (None, None) => "nothing applied yet".to_string(),
    };
    Status {
        health: if problems.is_empty() { "ok" } else { "attention" },
        headline,
        problems,
        stale,
        last_fetch_age_s: age,
        interrupted,
        state_dir_free_bytes,
        jobs,
        state,
    }
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// Runs `status`.
pub fn run(args: &StatusArgs) -> ExitCode {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let reader = Reader::new(std::path::Path::new(config.state_dir()));
    let state = match reader.load() {
        Ok(s) => s,
        Err(e) => return fail(&e.into(), 2),
    };
    let now = now();
    let seen = Observed {
        interrupted: reader.journal().and_then(|j| j.current),
        now,
        max_staleness_s: config.max_staleness().as_secs() as i64,
        state_dir: config.state_dir().to_string(),
        state_dir_free_bytes: veza_host::fs::free_bytes(std::path::Path::new(config.state_dir()))
            .ok(),
    };
    let status = build(state, seen);
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        out!("{}", render(&status, now));
    }
    if status.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The human form.
pub fn render(s: &Status, now: i64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "{}", s.headline);
    let st = &s.state;
    match &st.applied {
        Some(a) => {
            let _ = writeln!(
                o,
                "commit:   {} signed by {} (applied {} ago)",
                a.commit,
                a.signer,
                ago(now - a.applied_at)
            );
        }
        None => {
            let _ = writeln!(o, "commit:   none applied yet");
        }
    }
    let _ = writeln!(
        o,
        "source:   {}",
        match s.last_fetch_age_s {
            Some(a) => format!(
                "last verified fetch {} ago{}",
                ago(a),
                if s.stale { " (STALE)" } else { "" }
            ),
            None => "never fetched".to_string(),
        }
    );
    if let Some(run) = &st.last_run {
        let _ = writeln!(
            o,
            "last run: {} in {} ms{}",
            run.outcome.as_str(),
            run.duration_ms,
            run.reason.as_ref().map(|r| format!(" — {r}")).unwrap_or_default()
        );
    }
    for (env, e) in &st.envs {
        let _ = writeln!(o, "env {env}:");
        for (app, a) in &e.apps {
            let active = a.active.as_deref().unwrap_or("none");
            let slots: Vec<String> = a
                .releases
                .iter()
                .map(|(c, r)| {
                    let health = a.health.get(c).map(|h| format!(" {h}")).unwrap_or_default();
                    format!(
                        "{c}={}{}{health}",
                        &r[..r.len().min(10)],
                        if c == active { "*" } else { "" }
                    )
                })
                .collect();
            let _ = writeln!(
                o,
                "  {app:<10} active {active:<5} [{}]{}",
                slots.join(" "),
                a.last_outcome.map(|x| format!(" last: {}", x.as_str())).unwrap_or_default()
            );
        }
    }
    if !s.jobs.is_empty() {
        let _ = writeln!(o, "jobs:");
        let key_width = s.jobs.keys().map(String::len).max().unwrap_or(0);
        let target_width = s.jobs.values().map(|j| j.target.len()).max().unwrap_or(0);
        for (key, j) in &s.jobs {
            let _ = writeln!(
                o,
                "  {key:<key_width$} on {:<target_width$}  next {}  last {}{}",
                j.target,
                j.next.as_deref().map_or_else(|| "none".to_string(), when),
                last_run(j, now),
                if j.problem.is_some() { "  [!]" } else { "" }
            );
        }
    }
    for p in s.problems.iter().skip(1) {
        let _ = writeln!(o, "also:     {p}");
    }
    o
}

/// `2026-11-30 02:30 UTC` for an RFC 3339 time, the text itself otherwise.
fn when(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string(),
        Err(_) => t.to_string(),
    }
}

/// The last run in a few words: `success 2d ago`, `FAILED exit-code (exit status 3) 1h ago`.
fn last_run(j: &JobStatus, now: i64) -> String {
    let started = j.last_start.as_deref().map(|t| match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => format!(" {} ago", ago(now - t.timestamp())),
        Err(_) => format!(" at {t}"),
    });
    match (j.last_result.as_deref(), j.last_success_age_s) {
        (Some("success"), _) => format!("success{}", started.unwrap_or_default()),
        (Some(result), _) => format!(
            "FAILED {result}{}{}",
            j.last_exit.map(|c| format!(" (exit status {c})")).unwrap_or_default(),
            started.unwrap_or_default()
        ),
        (None, Some(age)) => format!("success {} ago (from an earlier sync)", ago(age)),
        (None, None) => "never ran".to_string(),
    }
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
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
            problem: None,
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
            now: 2000,
            max_staleness_s: 600,
            state_dir: "/var/lib/veza-agent".into(),
            state_dir_free_bytes: Some(1 << 30),
        }
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
                    let j = JobState {
                        last_result: None,
                        last_start: None,
                        last_success_at: None,
                        first_seen_at: Some(1000),
                        ..drill(0)
                    };
                    s.jobs.insert("prod/dr-drill".into(), j);
                }),
                "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza",
            ),
            (
                "job that never succeeded in longer than its max age",
                Box::new(|s| {
                    let j = JobState {
                        last_result: None,
                        last_start: None,
                        last_success_at: None,
                        first_seen_at: Some(2000 - 9 * 86_400),
                        ..drill(0)
                    };
                    s.jobs.insert("prod/dr-drill".into(), j);
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
            s.problems
                .iter()
                .any(|p| p == "prod/backend: the active green slot is DOWN at the edge"),
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
        st.jobs.insert(
            "prod/report".into(),
            JobState { target: "host".into(), ..JobState::default() },
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
        // The raw record stays under `state`.
        assert_eq!(json["state"]["jobs"]["prod/pgbackrest-diff"]["last_exit"], 3);
    }
}
