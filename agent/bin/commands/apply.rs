//! `veza-agent apply`: one full sync now (fetch, verify, plan, apply, record), without
//! a daemon. Exit 0 when applied or already in sync, 1 when the revision was rejected,
//! the promotion rolled back, or a step failed, 3 when everything else applied but the
//! plan refused something (listed under the outcome line), 4 when the host is suspended
//! or in report mode and the plan was not applied, or when steps wait for a maintenance
//! window (what may run now ran). `--now` (root) runs those steps at once, recorded in
//! the history with who asked. With `previews.enabled`, the PR previews follow (one more
//! line; the exit code is the sync's).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use veza_state::{Outcome, Store};

use crate::reconcile::SyncSummary;

use crate::commands::common::{ConfigArg, fail, with_agent};

/// Arguments of `apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Run the steps that wait for a maintenance window now (root only; recorded in the
    /// history with who asked).
    #[arg(long)]
    pub now: bool,
}

/// Runs `apply`.
pub fn run(args: &ApplyArgs) -> ExitCode {
    let run_now_by = match args.now.then(crate::commands::suspend::operator).transpose() {
        Ok(by) => by,
        Err(code) => return code,
    };
    with_agent(&args.config, |agent| async move {
        let store = match Store::open(&agent.state_dir()) {
            Ok(s) => s,
            Err(e) => return fail(&e.into(), 1),
        };
        let stop = AtomicBool::new(false);
        match agent.sync(&store, &stop, run_now_by).await {
            Ok(summary) => {
                outln!("{summary}");
                // PR previews after the outcome is out; they never change the exit code.
                if let Some(run) = agent.previews(&store, &stop).await {
                    outln!("{}", crate::reconcile::preview_line(&run));
                }
                exit_code(&summary)
            }
            Err(e) => fail(&e, 1),
        }
    })
}

/// 0 clean, 3 applied with refusals, 4 planned but not applied (suspended, report mode)
/// or steps waiting for a maintenance window, 1 anything else (shared by `apply` and
/// `sync`).
pub fn exit_code(summary: &SyncSummary) -> ExitCode {
    match summary.outcome {
        Outcome::Suspended | Outcome::Waiting => ExitCode::from(4),
        Outcome::Applied | Outcome::NoChange if summary.refusals.is_empty() => ExitCode::SUCCESS,
        Outcome::Applied | Outcome::NoChange => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}
