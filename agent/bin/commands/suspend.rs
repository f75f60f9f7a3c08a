//! `veza-agent suspend --reason TEXT` / `veza-agent resume`: pause and resume applying.
//!
//! The pause is a root-only file in the state directory (`suspended.json`), read by every
//! sync, so it works while the daemon runs and survives restarts. While suspended, the
//! agent still fetches, verifies and plans: `status` shows what it would do, `apply` and
//! `sync` answer `suspended` (exit 4). The next sync records the change in the history
//! with who and why. Exit 0, 1 when not root, 2 on configuration or I/O errors.

use std::process::ExitCode;

use veza_state::Suspension;

use crate::commands::common::{ConfigArg, now, who};
use crate::reconcile::load_config;

/// Arguments of `suspend`.
#[derive(Debug, clap::Args)]
pub struct SuspendArgs {
    /// Why (shown by `status` and kept in the history).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// Arguments of `resume`.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

/// The operator behind a root-only command (`suspend`, `apply --now`, `sync --now`):
/// their name, or exit 1 when not root.
pub fn operator() -> Result<String, ExitCode> {
    if veza_fs::effective_uid() != Some(0) {
        eprintln!("error: only root may do this (hint: sudo)");
        return Err(ExitCode::FAILURE);
    }
    Ok(who())
}

fn state_dir(config: &ConfigArg) -> Result<std::path::PathBuf, ExitCode> {
    if veza_fs::effective_uid() != Some(0) {
        eprintln!("error: only root may suspend or resume the agent (hint: sudo)");
        return Err(ExitCode::FAILURE);
    }
    match load_config(&config.config) {
        Ok(c) => Ok(std::path::PathBuf::from(c.state_dir())),
        Err(e) => {
            eprintln!("error: {e:#}");
            Err(ExitCode::from(2))
        }
    }
}

/// Runs `suspend`.
pub fn suspend(args: &SuspendArgs) -> ExitCode {
    let dir = match state_dir(&args.config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let reason = args.reason.trim();
    if reason.is_empty() || reason.chars().any(char::is_control) {
        eprintln!("error: --reason must be one non-empty line");
        return ExitCode::from(2);
    }
    let s = Suspension { since: now(), by: who(), reason: reason.to_string() };
    match veza_state::suspend(&dir, &s) {
        Ok(()) => {
            outln!(
                "suspended by {}: {} (nothing is applied until `veza-agent resume`)",
                s.by,
                s.reason
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs `resume`.
pub fn resume(args: &ResumeArgs) -> ExitCode {
    let dir = match state_dir(&args.config) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match veza_state::resume(&dir) {
        Ok(true) => {
            outln!("resumed by {}: the next sync applies", who());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            outln!("not suspended");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
