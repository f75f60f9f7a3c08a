//! Prometheus textfile metrics (for node_exporter's textfile collector), rendered from
//! the recorded state. Rendering is pure; the caller writes the file atomically.

use std::fmt::Write;

use crate::AgentState;

/// Per-job facts the metrics need beyond the agent state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMetric {
    /// `env/name`.
    pub job: String,
    /// Unix seconds of the last successful run, if any.
    pub last_success: Option<i64>,
    /// Whether the last run failed.
    pub failed: bool,
}

/// Renders the metrics text. `now` is unix seconds; `stale` is the freshness verdict.
pub fn render(state: &AgentState, jobs: &[JobMetric], now: i64, stale: bool) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
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
    for j in jobs {
        let labels = format!("{{job=\"{}\"}}", esc(&j.job));
        let age = j.last_success.map_or(-1, |t| (now - t).max(0));
        ages.push((labels.clone(), age.to_string()));
        failed.push((labels, u8::from(j.failed).to_string()));
    }
    metric(
        "veza_agent_job_last_success_age_seconds",
        "Seconds since each job last succeeded (-1: never).",
        "gauge",
        ages,
    );
    metric("veza_agent_job_failed", "1 when the job's last run failed.", "gauge", failed);
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
    fn renders_active_colors_jobs_and_staleness() {
        let mut state = AgentState::default();
        let mut app = AppState { active: Some("green".into()), ..AppState::default() };
        app.releases.insert("green".into(), "e97b91f010".into());
        let mut env = EnvState::default();
        env.apps.insert("backend".into(), app);
        state.envs.insert("prod".into(), env);
        let jobs =
            [JobMetric { job: "prod/dr-drill".into(), last_success: Some(100), failed: false }];
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
}
