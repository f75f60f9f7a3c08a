//! `veza-agent plan`: a dry run against live state, deciding exactly as `apply` would
//! (`Agent::plan_for`). Exit 0 when nothing would change, 2 when changes are pending,
//! 3 when the plan refuses something the manifests ask for (foreign or protected
//! resources, gated promotions, in-place changes of a serving slot), 1 on error or when
//! the revision is refused or quarantined.

use std::process::ExitCode;

use veza_state::{AgentState, Reader, StateError};

use crate::commands::common::{ConfigArg, fail, now, with_agent};
use crate::reconcile::{Decision, SourceProblem};

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
        let state = match Reader::new(&agent.state_dir()).load() {
            Ok(s) => s,
            Err(e @ StateError::TooNew { .. }) => return fail(&e.into(), 1),
            Err(_) => AgentState::default(),
        };
        let source = match agent.source(&state, now()).await {
            Ok(s) => s,
            Err(SourceProblem::Fetch(e)) => return fail(&anyhow::anyhow!("fetch failed: {e}"), 1),
            Err(SourceProblem::Failed(e)) => return fail(&anyhow::anyhow!("{e}"), 1),
            Err(SourceProblem::Rejected { commit, reason }) => {
                eprintln!("rejected {commit}: {reason}");
                return ExitCode::from(1);
            }
        };
        let live = match agent.observe(&source.manifests).await {
            Ok(l) => l,
            Err(e) => return fail(&e, 1),
        };
        let plan = match agent.plan_for(&state, &source, &live, now()) {
            Ok(Decision::Plan(p)) => p,
            Ok(Decision::Quarantined(reason)) => {
                eprintln!("quarantined {}: {reason}", source.commit);
                return ExitCode::from(1);
            }
            Err(e) => return fail(&e.into(), 1),
        };
        if args.json {
            let v = serde_json::json!({ "commit": source.commit, "signer": source.signer, "plan": plan });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            outln!("commit {} signed by {}", source.commit, source.signer);
            out!("{plan}");
        }
        if !plan.refusals.is_empty() {
            eprintln!(
                "plan: {} refused (the manifests ask for something the agent will not do; see `refused` above)",
                plan.refusals.len()
            );
            ExitCode::from(3)
        } else if plan.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        }
    })
}
