//! `veza-agent plan`: a dry run against live state. Exit 0 when nothing would change,
//! 2 when changes are pending, 1 on error or when the revision is refused.

use std::process::ExitCode;

use veza_state::Reader;

use crate::commands::common::{ConfigArg, fail, now, with_agent};
use crate::reconcile::SourceProblem;

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
        let state = Reader::new(&agent.state_dir()).load().unwrap_or_default();
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
        let refs: Vec<&veza_model::Manifest> = source.manifests.iter().collect();
        let plan = match veza_plan::plan(&refs, &live, &agent.plan_options()) {
            Ok(p) => p,
            Err(e) => return fail(&e.into(), 1),
        };
        if args.json {
            let v = serde_json::json!({ "commit": source.commit, "signer": source.signer, "plan": plan });
            outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            outln!("commit {} signed by {}", source.commit, source.signer);
            out!("{plan}");
        }
        if plan.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) }
    })
}
