//! `veza-agent history`: the recent deploys, newest first.

use std::process::ExitCode;

use veza_state::Reader;

use crate::commands::common::{ConfigArg, fail};
use crate::reconcile::load_config;

/// Arguments of `history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// How many entries to print, newest first.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
    pub limit: usize,
    /// Print one JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `history`.
pub fn run(args: &HistoryArgs) -> ExitCode {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let entries = match Reader::new(std::path::Path::new(config.state_dir())).history() {
        Ok(h) => h,
        Err(e) => return fail(&e.into(), 2),
    };
    for e in entries.iter().rev().take(args.limit) {
        if args.json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
            continue;
        }
        let when = chrono::DateTime::from_timestamp_millis(e.at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let apps: Vec<String> = e.apps.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{when}  {:<11} {}  {:<24} {:>6} ms  {}{}",
            e.outcome.as_str(),
            veza_model::manifest::short_id(&e.commit, 12),
            e.signer.as_deref().unwrap_or("-"),
            e.duration_ms,
            apps.join(" "),
            e.reason.as_ref().map(|r| format!("\n    reason: {r}")).unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}
