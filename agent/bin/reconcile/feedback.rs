//! Feedback after a sync is recorded: a commit status on the handled commit through
//! Forgejo's API, and an optional hook command. Never on the critical path: it runs after
//! the state, history and metrics are written, and a failure only logs, counts
//! (`veza_agent_status_post_failures_total`) and keeps the status for the next sync.

use std::time::Duration;

use veza_host::forge::{CommitStatus, StatusClient, StatusState, one_line};
use veza_host::process::Cmd;
use veza_model::config::ForgejoStatusConfig;
use veza_state::{AgentState, Outcome, PendingStatus};

use super::{Agent, SyncSummary};

/// At most this many statuses wait for the forge (the oldest are dropped).
const MAX_PENDING: usize = 20;

/// The status a sync's outcome gives its commit. Pure.
pub fn status_of(summary: &SyncSummary) -> Option<(StatusState, String)> {
    summary.commit.as_ref()?;
    // The commit's status is the one its rollback posted: a poll that only finds it
    // quarantined says nothing new (nor replaces that status while it waits).
    if summary.outcome == Outcome::Quarantined {
        return None;
    }
    let reason = summary.reason.clone().unwrap_or_default();
    let refused = match summary.refusals.len() {
        0 => String::new(),
        n => format!("; {n} refused: {}", summary.refusals[0]),
    };
    Some(match summary.outcome {
        Outcome::Applied => (StatusState::Success, format!("applied{refused}")),
        Outcome::NoChange => (StatusState::Success, format!("in sync{refused}")),
        Outcome::RolledBack | Outcome::Quarantined => {
            (StatusState::Failure, format!("rolled back: {reason}"))
        }
        Outcome::Rejected => (StatusState::Failure, format!("rejected: {reason}")),
        Outcome::Failed => (StatusState::Error, format!("sync failed: {reason}")),
        Outcome::Suspended | Outcome::Resumed | Outcome::Adopted | Outcome::Unknown => {
            (StatusState::Pending, format!("not applied: {reason}"))
        }
        // `waiting for window, opens at …; N step(s) held: …`
        Outcome::Waiting => (StatusState::Pending, format!("{reason}{refused}")),
    })
}

/// The commit status client of `feedback.forgejo`, with its token read now (first line).
pub(super) fn status_client(cfg: &ForgejoStatusConfig) -> Result<StatusClient, String> {
    let token = std::fs::read_to_string(&cfg.token_file)
        .map_err(|e| format!("status token file `{}` unreadable: {e}", cfg.token_file))?;
    Ok(StatusClient {
        api_url: cfg.api_url.clone(),
        repo: cfg.repo.clone(),
        token: token.lines().next().unwrap_or_default().trim().to_string(),
        ca_file: cfg.ca_file.clone(),
        timeout: Duration::from_secs(5),
    })
}

impl Agent {
    /// Posts the status of this sync (and any left from earlier ones) and runs the hook.
    /// Returns whether `state` changed (pending statuses, the failure counter).
    pub(super) fn feedback(&self, state: &mut AgentState, summary: &SyncSummary) -> bool {
        let mut changed = false;
        if let Some(cfg) = &self.config.feedback.forgejo {
            let mut queue = std::mem::take(&mut state.statuses_pending);
            if let (Some(sha), Some((st, description))) = (&summary.commit, status_of(summary)) {
                let status = PendingStatus {
                    sha: sha.clone(),
                    state: st.as_str().to_string(),
                    description: one_line(&description),
                };
                // Posted once per change of the commit's state: a daemon in sync does not
                // repeat itself every poll.
                let same = state
                    .status_posted
                    .as_ref()
                    .is_some_and(|p| p.sha == status.sha && p.state == status.state);
                if !same {
                    // A newer status of the same commit replaces an older one still waiting.
                    queue.retain(|p| &p.sha != sha);
                    queue.push(status);
                }
            }
            changed |= !queue.is_empty();
            let client = status_client(cfg);
            for p in queue {
                let posted = client.as_ref().map_err(Clone::clone).and_then(|c| {
                    c.post(&CommitStatus {
                        sha: p.sha.clone(),
                        state: StatusState::named(&p.state),
                        context: format!("veza-agent/{}", self.config.host),
                        description: p.description.clone(),
                    })
                    .map_err(|e| e.to_string())
                });
                match posted {
                    Ok(()) => state.status_posted = Some(p),
                    Err(e) => {
                        tracing::warn!("{e} (retried at the next sync)");
                        state.status_post_failures_total += 1;
                        state.statuses_pending.push(p);
                    }
                }
            }
            let excess = state.statuses_pending.len().saturating_sub(MAX_PENDING);
            state.statuses_pending.drain(..excess);
        }
        if let Some(hook) = &self.config.feedback.hook {
            let out = Cmd::new(hook)
                .env("VEZA_OUTCOME", summary.outcome.as_str())
                .env("VEZA_COMMIT", summary.commit.clone().unwrap_or_default())
                .env("VEZA_REASON", summary.reason.clone().unwrap_or_default())
                .env("VEZA_HOST", &self.config.host)
                .env("VEZA_STATE", status_of(summary).map_or("none", |(s, _)| s.as_str()))
                .timeout(Duration::from_secs(30))
                .run();
            if let Err(e) = out {
                tracing::warn!("feedback hook: {e}");
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_maps_to_a_forge_state_and_a_line() {
        let base = SyncSummary {
            outcome: Outcome::Applied,
            commit: Some("c".repeat(40)),
            reason: None,
            steps: 3,
            duration_ms: 10,
            preempted: false,
            refusals: Vec::new(),
            stages_us: Vec::new(),
        };
        /// (outcome, reason, refusals, the status's state, its line)
        type Case<'a> = (Outcome, Option<&'a str>, Vec<&'a str>, StatusState, &'a str);
        let cases: Vec<Case> = vec![
            (Outcome::Applied, None, vec![], StatusState::Success, "applied"),
            (
                Outcome::NoChange,
                None,
                vec!["instance x: foreign"],
                StatusState::Success,
                "in sync; 1 refused: instance x: foreign",
            ),
            (
                Outcome::RolledBack,
                Some("green /health 503"),
                vec![],
                StatusState::Failure,
                "rolled back: green /health 503",
            ),
            (
                Outcome::Rejected,
                Some("signature: unsigned"),
                vec![],
                StatusState::Failure,
                "rejected: signature: unsigned",
            ),
            (
                Outcome::Failed,
                Some("fetch: refused"),
                vec![],
                StatusState::Error,
                "sync failed: fetch: refused",
            ),
            (
                Outcome::Waiting,
                Some(
                    "waiting for window, opens at 2026-01-04T02:00:00+01:00 (prod); 1 step(s) held: delete instance x",
                ),
                vec![],
                StatusState::Pending,
                "waiting for window, opens at 2026-01-04T02:00:00+01:00 (prod); 1 step(s) held: delete instance x",
            ),
            (
                Outcome::Suspended,
                Some("report mode"),
                vec![],
                StatusState::Pending,
                "not applied: report mode",
            ),
        ];
        for (outcome, reason, refusals, state, line) in cases {
            let s = SyncSummary {
                outcome,
                reason: reason.map(str::to_string),
                refusals: refusals.into_iter().map(str::to_string).collect(),
                ..base.clone()
            };
            assert_eq!(status_of(&s), Some((state, line.to_string())), "{outcome:?}");
        }
        assert_eq!(status_of(&SyncSummary { commit: None, ..base }), None, "no commit, no status");
    }
}
