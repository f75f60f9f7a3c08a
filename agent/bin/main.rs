//! `veza-agent`: the command-line entry point.
//!
//! Parses the command line synchronously, then hands over to one module per
//! subcommand in `commands/`. Exit codes follow one rule across subcommands:
//! 0 success, 1 the input was rejected (invalid manifest, bad signature, …),
//! 2 usage or environment errors (clap's own usage errors exit 2 too).

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// GitOps pull agent: pulls a signed manifests repository, verifies it, and reconciles
/// Incus instances, the HAProxy edge and systemd timers on this host.
#[derive(Debug, Parser)]
#[command(name = "veza-agent", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check manifests: syntax, unknown keys and semantic rules, all files together.
    ///
    /// Prints each problem as `PATH:LINE:COL: error: MESSAGE` on stderr.
    /// Exit 0 when every file is valid, 1 otherwise, 2 on usage errors.
    Validate(commands::validate::ValidateArgs),
    /// Print the JSON Schema of the manifest format (as committed in `schemas/`).
    Schema,
    /// Translate a cron expression into systemd `OnCalendar=` lines and show the next runs.
    ///
    /// Prints each `OnCalendar=...` line, then N lines `next: <RFC3339 UTC>`.
    /// Exit 0 on success, 1 when the expression is invalid, 2 on usage errors.
    Schedule(commands::schedule::ScheduleArgs),
    /// Verify the SSH signature of a commit against an allowed-signers file.
    ///
    /// Prints `good signature ...` with the signer's principal and exits 0, or prints why
    /// the commit is rejected and exits 1 (unsigned, unknown key, bad signature, wrong
    /// namespace, expired key, extra signature header, not a descendant of `--after`).
    /// Exit 2 on usage or I/O errors.
    Verify(commands::verify::VerifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => commands::validate::run(&args),
        Command::Schedule(args) => commands::schedule::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Schema => {
            print!("{}", veza_model::json_schema());
            ExitCode::SUCCESS
        }
    }
}
