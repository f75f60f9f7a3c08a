//! `veza-agent plan`: a dry run against live state, deciding exactly as `apply` would
//! (`Agent::plan_for`: quarantine, job gates, maintenance windows). Exit 0 when nothing
//! would change, 2 when changes are pending, 3 when the plan refuses something the
//! manifests ask for (foreign or protected resources, gated promotions, in-place changes
//! of a serving slot), 4 when changes are pending but an apply now would apply none of
//! them (the host is suspended or in report mode, said on the first line; or every
//! pending step waits for a maintenance window), 1 on error or when the revision is
//! refused or quarantined. With `previews.enabled`, what the last preview pass said of
//! each PR head follows the plan (`previews` in `--json`).

use std::process::ExitCode;

use veza_plan::Plan;
use veza_state::{AgentState, Reader, StateError};

use crate::commands::common::{ConfigArg, fail, now, with_agent};
use crate::reconcile::{Decision, SourceProblem, Windows, not_applied_because};

/// Arguments of `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the commit, its signer and the plan as one JSON document.
    #[arg(long)]
    pub json: bool,
}

/// Runs `plan`.
pub fn run(args: &PlanArgs) -> ExitCode {
    with_agent(&args.config, |agent| async move {
        // As a sync decides: a corrupt state file counts as empty (the sync moves it aside
        // and starts from nothing), a state written by a newer agent stops everything.
        let reader = Reader::new(&agent.state_dir());
        let mut state = match reader.load() {
            Ok(s) => s,
            Err(e @ StateError::TooNew { .. }) => return fail(&e.into(), 1),
            Err(_) => AgentState::default(),
        };
        let journal = state.unfinished(reader.journal());
        state.take_owed_from(journal.as_ref());
        let mut not_applied = not_applied_because(reader.suspension().as_ref(), agent.config.mode);
        if not_applied.is_none()
            && let Some(cluster) = &agent.cluster
        {
            not_applied = cluster.peek().await;
        }
        // As a leading sync: the cluster's record of owed checks is planned too.
        if not_applied.is_none()
            && let Err(e) = agent.take_shared_owed(&mut state).await
        {
            not_applied = Some(e);
        }
        let source = match agent.source(&state, now()).await {
            Ok(s) => s,
            Err(SourceProblem::Fetch(e)) => return fail(&anyhow::anyhow!("fetch failed: {e}"), 1),
            Err(SourceProblem::Failed(e)) => return fail(&anyhow::anyhow!("{e}"), 1),
            Err(SourceProblem::Rejected { commit, reason }) => {
                eprintln!("rejected {commit}: {reason}");
                return ExitCode::from(1);
            }
        };
        let live = match agent.observe(&source.manifests, &state).await {
            Ok(l) => l,
            Err(e) => return fail(&e, 1),
        };
        let plan = match agent.plan_for(&state, &source, &live, &Windows::at(now(), None)) {
            Ok(Decision::Plan(p, _)) => p,
            Ok(Decision::Quarantined(reason)) => {
                eprintln!("quarantined {}: {reason}", source.commit);
                return ExitCode::from(1);
            }
            Err(e) => return fail(&e.into(), 1),
        };
        // What the PR previews said, as recorded by the last pass (previews plan in the
        // pass after a sync, not here).
        let previews = agent.config.previews.enabled.then(|| reader.previews().unwrap_or_default());
        if args.json {
            let v = serde_json::json!({
                "commit": source.commit,
                "signer": source.signer,
                "applies": not_applied.is_none(),
                "not_applied_because": not_applied,
                "plan": plan,
                "previews": previews,
            });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            if let Some(why) = &not_applied {
                outln!("NOTHING WILL BE APPLIED: {why}");
            }
            outln!("commit {} signed by {}", source.commit, source.signer);
            out!("{plan}");
            if let Some(p) = &previews {
                let mut text = String::new();
                crate::commands::status::previews(&mut text, p, now());
                out!("{text}");
            }
        }
        let code = exit_code(&plan, not_applied.is_some());
        if !plan.refusals.is_empty() && code == 3 {
            eprintln!(
                "plan: {} refused (the manifests ask for something the agent will not do; see `refused` above)",
                plan.refusals.len()
            );
        }
        ExitCode::from(code)
    })
}

/// The exit code of a plan (see the module documentation); `held`: the host applies
/// nothing now (suspended, report mode). As `apply` would answer: 4 when it would apply
/// nothing of pending changes, before refusals (3); then 2 for changes it would apply.
pub fn exit_code(plan: &Plan, held: bool) -> u8 {
    let pending = !plan.is_empty() || !plan.waiting.is_empty();
    if pending && (held || plan.is_empty()) {
        4
    } else if !plan.refusals.is_empty() {
        3
    } else if pending {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use veza_plan::maintenance::Waiting;
    use veza_plan::plan::Refusal;
    use veza_plan::{Action, Step};

    use super::*;

    #[test]
    fn the_exit_code_says_what_an_apply_now_would_do() {
        let step =
            || Step { action: Action::StartInstance { name: "x".into() }, reason: "r".into() };
        let waiting = || Waiting {
            env: "prod".into(),
            step: step(),
            because: "b".into(),
            next_open: None,
            next_open_unix: None,
        };
        let refusal = || Refusal { resource: "instance y".into(), reason: "foreign".into() };
        let plan = |steps: usize, waits: usize, refusals: usize| Plan {
            steps: (0..steps).map(|_| step()).collect(),
            waiting: (0..waits).map(|_| waiting()).collect(),
            refusals: (0..refusals).map(|_| refusal()).collect(),
            drift: Vec::new(),
            edge_takeover: None,
            cluster: Vec::new(),
        };
        // (steps, waiting steps, refusals, suspended or report mode, exit code)
        let table = [
            (0, 0, 0, false, 0),
            (0, 0, 0, true, 0),
            (1, 0, 0, false, 2),
            (1, 0, 0, true, 4),
            (0, 1, 0, false, 4),
            (0, 1, 0, true, 4),
            (1, 1, 0, false, 2),
            (0, 0, 1, false, 3),
            (0, 0, 1, true, 3),
            (1, 0, 1, false, 3),
            (1, 0, 1, true, 4),
            (0, 1, 1, false, 4),
        ];
        for (steps, waits, refusals, held, want) in table {
            assert_eq!(
                exit_code(&plan(steps, waits, refusals), held),
                want,
                "{steps} step(s), {waits} waiting, {refusals} refused, held {held}"
            );
        }
    }
}
