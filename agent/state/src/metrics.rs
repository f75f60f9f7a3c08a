//! Prometheus textfile metrics (for node_exporter's textfile collector), rendered from
//! the recorded state. Rendering is pure; the caller writes the file atomically.

use std::fmt::Write;

use crate::AgentState;

/// Per-job facts the metrics need, usually built from the recorded jobs with
/// [`job_metrics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMetric {
    /// `env/name`.
    pub job: String,
    /// Unix seconds of the last successful run, if any.
    pub last_success: Option<i64>,
    /// Whether the last run failed.
    pub failed: bool,
    /// The job's `max_success_age` in seconds, when it declares one.
    pub max_success_age: Option<u64>,
    /// Whether the job needed attention when last observed (failed, stale, status unknown).
    pub problem: bool,
}

/// One [`JobMetric`] per job recorded in `state.jobs`, in key order.
pub fn job_metrics(state: &AgentState) -> Vec<JobMetric> {
    state
        .jobs
        .iter()
        .map(|(key, j)| JobMetric {
            job: key.clone(),
            last_success: j.last_success_at,
            failed: j.last_result.as_deref().is_some_and(|r| r != "success"),
            max_success_age: j.max_success_age_s,
            problem: j.problem.is_some(),
        })
        .collect()
}

/// Appends one metric in the textfile format: its `HELP` and `TYPE` lines, then one line
/// per `(labels, value)`.
fn write_metric(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    lines: Vec<(String, String)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in lines {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Renders the metrics text. `now` is unix seconds; `stale` is the freshness verdict.
pub fn render(state: &AgentState, jobs: &[JobMetric], now: i64, stale: bool) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        write_metric(&mut out, name, help, kind, lines)
    };
    let mut active = Vec::new();
    for (env, e) in &state.envs {
        for (app, a) in &e.apps {
            if let Some(color) = &a.active {
                let release = a.releases.get(color).cloned().unwrap_or_default();
                active.push((
                    format!(
                        "{{env=\"{}\",app=\"{}\",color=\"{}\",release=\"{}\"}}",
                        esc(env),
                        esc(app),
                        esc(color),
                        esc(&release)
                    ),
                    "1".to_string(),
                ));
            }
        }
    }
    metric(
        "veza_agent_app_active",
        "Active color and release of each app (value 1).",
        "gauge",
        active,
    );
    let applied_at = state.applied.as_ref().map_or(0, |a| a.applied_at);
    metric(
        "veza_agent_last_success_timestamp_seconds",
        "When the last commit was applied.",
        "gauge",
        vec![(String::new(), applied_at.to_string())],
    );
    metric(
        "veza_agent_last_verified_fetch_timestamp_seconds",
        "When the last verified fetch succeeded.",
        "gauge",
        vec![(String::new(), state.last_verified_fetch_at.unwrap_or(0).to_string())],
    );
    metric(
        "veza_agent_source_stale",
        "1 when no verified fetch succeeded within the staleness limit.",
        "gauge",
        vec![(String::new(), u8::from(stale).to_string())],
    );
    metric(
        "veza_agent_sync_failures",
        "Consecutive failed syncs.",
        "gauge",
        vec![(String::new(), state.sync_failures.to_string())],
    );
    // The commit last tried (a rollback records it as attempted), or the last run's: a
    // sync that failed before it had a commit (the forge unreachable) changes nothing.
    let tip_quarantined =
        [state.attempted.as_ref(), state.last_run.as_ref().and_then(|r| r.commit.as_ref())]
            .into_iter()
            .flatten()
            .any(|c| state.quarantined.contains_key(c));
    metric(
        "veza_agent_quarantined",
        "1 while the newest commit is quarantined after a rolled-back promotion (until a newer commit).",
        "gauge",
        vec![(String::new(), u8::from(tip_quarantined).to_string())],
    );
    metric(
        "veza_agent_suspended",
        "1 while an operator has suspended applying (`veza-agent suspend`).",
        "gauge",
        vec![(String::new(), u8::from(state.suspended.is_some()).to_string())],
    );
    metric(
        "veza_agent_status_post_failures_total",
        "Commit statuses the forge did not accept (retried at the next sync).",
        "counter",
        vec![(String::new(), state.status_post_failures_total.to_string())],
    );
    metric(
        "veza_agent_statuses_pending",
        "Commit statuses waiting to be posted again.",
        "gauge",
        vec![(String::new(), state.statuses_pending.len().to_string())],
    );
    metric(
        "veza_agent_held_steps",
        "Steps the last plan would apply but did not (suspended or report mode).",
        "gauge",
        vec![(String::new(), state.held.len().to_string())],
    );
    metric(
        "veza_agent_waiting_steps",
        "Steps the last plan holds until their environment's maintenance window opens.",
        "gauge",
        vec![(String::new(), state.waiting.len().to_string())],
    );
    let next_open = state.waiting.iter().filter_map(|w| w.next_open_unix).min().unwrap_or(0);
    metric(
        "veza_agent_window_next_open_timestamp_seconds",
        "When the maintenance window the first waiting step needs opens (0: nothing waits).",
        "gauge",
        vec![(String::new(), next_open.to_string())],
    );
    metric(
        "veza_agent_rejected_revisions_total",
        "Revisions refused (signature, policy, rollback, invalid manifest).",
        "counter",
        vec![(String::new(), state.rejected_total.to_string())],
    );
    let outcome = state.last_run.as_ref().map_or("none", |r| r.outcome.as_str());
    metric(
        "veza_agent_last_run_outcome",
        "Outcome of the last run (value 1).",
        "gauge",
        vec![(format!("{{outcome=\"{outcome}\"}}"), "1".to_string())],
    );
    let mut ages = Vec::new();
    let mut failed = Vec::new();
    let mut max_ages = Vec::new();
    let mut problems = Vec::new();
    for j in jobs {
        let labels = format!("{{job=\"{}\"}}", esc(&j.job));
        let age = j.last_success.map_or(-1, |t| (now - t).max(0));
        ages.push((labels.clone(), age.to_string()));
        failed.push((labels.clone(), u8::from(j.failed).to_string()));
        if let Some(max) = j.max_success_age {
            max_ages.push((labels.clone(), max.to_string()));
        }
        problems.push((labels, u8::from(j.problem).to_string()));
    }
    metric(
        "veza_agent_job_last_success_age_seconds",
        "Seconds since each job last succeeded (-1: never).",
        "gauge",
        ages,
    );
    metric("veza_agent_job_failed", "1 when the job's last run failed.", "gauge", failed);
    metric(
        "veza_agent_job_max_success_age_seconds",
        "The job's declared max_success_age (only jobs that declare one).",
        "gauge",
        max_ages,
    );
    metric(
        "veza_agent_job_problem",
        "1 when the job needed attention at the last sync (failed, stale or status unknown).",
        "gauge",
        problems,
    );
    out
}

/// The PR preview metrics, appended to [`render`]'s text when previews are on.
pub fn render_previews(p: &crate::previews::Previews) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        write_metric(&mut out, name, help, kind, lines)
    };
    let failures = ["fetch", "plan", "post"]
        .iter()
        .map(|k| {
            (
                format!("{{kind=\"{k}\"}}"),
                p.failures_total.get(*k).copied().unwrap_or(0).to_string(),
            )
        })
        .collect();
    metric(
        "veza_agent_preview_failures_total",
        "PR previews that failed: PR heads not fetched, previews ended in error, statuses the forge did not accept.",
        "counter",
        failures,
    );
    let run = p.last_run.clone().unwrap_or_default();
    metric(
        "veza_agent_preview_last_run_timestamp_seconds",
        "When the last PR preview pass started (0: never).",
        "gauge",
        vec![(String::new(), run.at.to_string())],
    );
    metric(
        "veza_agent_preview_heads",
        "PR heads the remote advertised at the last preview pass.",
        "gauge",
        vec![(String::new(), run.heads.to_string())],
    );
    metric(
        "veza_agent_preview_heads_left",
        "PR heads not previewed yet (over previews.max_per_poll).",
        "gauge",
        vec![(String::new(), run.left.to_string())],
    );
    out
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppState, EnvState};

    #[test]
    fn preview_failures_are_counted_by_kind() {
        let mut p = crate::previews::Previews::default();
        let text = render_previews(&p);
        for kind in ["fetch", "plan", "post"] {
            let line = format!("veza_agent_preview_failures_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&line), "{text}");
        }
        assert!(text.contains("veza_agent_preview_last_run_timestamp_seconds 0\n"), "{text}");
        p.count_failure("post");
        p.last_run = Some(crate::previews::PreviewRun {
            at: 1_700_000_000,
            heads: 4,
            left: 1,
            ..Default::default()
        });
        let text = render_previews(&p);
        assert!(text.contains("veza_agent_preview_failures_total{kind=\"post\"} 1\n"), "{text}");
        assert!(text.contains("veza_agent_preview_heads 4\n"), "{text}");
        assert!(text.contains("veza_agent_preview_heads_left 1\n"), "{text}");
    }

    #[test]
    fn renders_active_colors_jobs_and_staleness() {
        let mut state = AgentState::default();
        let mut app = AppState { active: Some("green".into()), ..AppState::default() };
        app.releases.insert("green".into(), "e97b91f010".into());
        let mut env = EnvState::default();
        env.apps.insert("backend".into(), app);
        state.envs.insert("prod".into(), env);
        let jobs = [JobMetric {
            job: "prod/dr-drill".into(),
            last_success: Some(100),
            failed: false,
            max_success_age: None,
            problem: false,
        }];
        let text = render(&state, &jobs, 160, true);
        assert!(text.contains(
            "veza_agent_app_active{env=\"prod\",app=\"backend\",color=\"green\",release=\"e97b91f010\"} 1\n"
        ));
        assert!(text.contains("veza_agent_source_stale 1\n"));
        assert!(
            text.contains("veza_agent_job_last_success_age_seconds{job=\"prod/dr-drill\"} 60\n")
        );
        assert!(text.contains("veza_agent_last_run_outcome{outcome=\"none\"} 1\n"));
    }

    /// `veza_agent_quarantined` stays 1 for as long as the newest commit is quarantined
    /// (the last run's outcome says `rolled-back` once, then `quarantined`).
    #[test]
    fn a_quarantined_tip_is_a_gauge_until_a_newer_commit_runs() {
        use crate::{Outcome, Rejection, RunRecord};
        let run = |commit: &str, outcome| RunRecord {
            started_ms: 1_000,
            duration_ms: 1,
            outcome,
            reason: None,
            commit: Some(commit.into()),
        };
        let mut state = AgentState::default();
        let q = Rejection { commit: "bad".into(), reason: "green failed".into(), at: 1 };
        state.quarantined.insert("bad".into(), q);
        let failed = RunRecord { commit: None, ..run("-", Outcome::Failed) };
        // (last run, attempted commit, gauge)
        let table = [
            (None, None, "0"),
            (Some(run("bad", Outcome::RolledBack)), Some("bad"), "1"),
            (Some(run("bad", Outcome::Quarantined)), Some("bad"), "1"),
            (Some(failed), Some("bad"), "1"),
            (Some(run("good", Outcome::Applied)), None, "0"),
            (Some(run("newer", Outcome::Failed)), Some("newer"), "0"),
        ];
        for (last_run, attempted, want) in table {
            state.last_run = last_run.clone();
            state.attempted = attempted.map(str::to_string);
            let text = render(&state, &[], 0, false);
            assert!(text.contains(&format!("veza_agent_quarantined {want}\n")), "{last_run:?}");
        }
    }

    #[test]
    fn waiting_steps_and_the_next_window_are_gauges() {
        use crate::WaitingStep;
        let step = |name: &str, at: Option<i64>| WaitingStep {
            env: "prod".into(),
            step: format!("delete instance {name}"),
            because: "it deletes a plain instance".into(),
            next_open: at.map(|t| t.to_string()),
            next_open_unix: at,
        };
        // (waiting steps, the two lines)
        let table: Vec<(Vec<WaitingStep>, [&str; 2])> = vec![
            (
                vec![],
                [
                    "veza_agent_waiting_steps 0\n",
                    "veza_agent_window_next_open_timestamp_seconds 0\n",
                ],
            ),
            (
                vec![step("a", Some(2000)), step("b", Some(1500)), step("c", None)],
                [
                    "veza_agent_waiting_steps 3\n",
                    "veza_agent_window_next_open_timestamp_seconds 1500\n",
                ],
            ),
        ];
        for (waiting, lines) in table {
            let state = AgentState { waiting, ..AgentState::default() };
            let text = render(&state, &[], 1000, false);
            for line in lines {
                assert!(text.contains(line), "no {line:?} in\n{text}");
            }
        }
    }

    #[test]
    fn job_metrics_come_from_the_recorded_jobs() {
        use crate::JobState;
        let mut state = AgentState::default();
        state.jobs.insert(
            "prod/dr-drill".into(),
            JobState {
                last_result: Some("success".into()),
                last_success_at: Some(1000),
                max_success_age_s: Some(8 * 86_400),
                problem: Some("last success 9 d ago (max 8 d)".into()),
                ..JobState::default()
            },
        );
        state.jobs.insert(
            "prod/pgbackrest-diff".into(),
            JobState {
                last_result: Some("exit-code".into()),
                last_exit: Some(3),
                last_success_at: Some(900),
                problem: Some("last run failed (exit-code, exit status 3)".into()),
                ..JobState::default()
            },
        );
        state.jobs.insert("prod/new".into(), JobState::default());
        let jobs = job_metrics(&state);
        assert_eq!(
            jobs,
            [
                JobMetric {
                    job: "prod/dr-drill".into(),
                    last_success: Some(1000),
                    failed: false,
                    max_success_age: Some(691_200),
                    problem: true,
                },
                JobMetric {
                    job: "prod/new".into(),
                    last_success: None,
                    failed: false,
                    max_success_age: None,
                    problem: false,
                },
                JobMetric {
                    job: "prod/pgbackrest-diff".into(),
                    last_success: Some(900),
                    failed: true,
                    max_success_age: None,
                    problem: true,
                },
            ]
        );
        let text = render(&state, &jobs, 1000 + 9 * 86_400, false);
        for line in [
            "veza_agent_job_last_success_age_seconds{job=\"prod/dr-drill\"} 777600\n",
            "veza_agent_job_last_success_age_seconds{job=\"prod/new\"} -1\n",
            "veza_agent_job_failed{job=\"prod/pgbackrest-diff\"} 1\n",
            "veza_agent_job_failed{job=\"prod/dr-drill\"} 0\n",
            "veza_agent_job_max_success_age_seconds{job=\"prod/dr-drill\"} 691200\n",
            "veza_agent_job_problem{job=\"prod/dr-drill\"} 1\n",
            "veza_agent_job_problem{job=\"prod/new\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains("veza_agent_job_max_success_age_seconds{job=\"prod/new\"}"));
    }
}
