//! `veza-agent`: the command-line entry point.
//!
//! Parses the command line synchronously, then hands over to one module per
//! subcommand in `commands/`. Exit codes follow one rule across subcommands:
//! 0 success, 1 the input was rejected (invalid manifest, bad signature, …),
//! 2 usage or environment errors (clap's own usage errors exit 2 too).

mod commands;
mod edge;
mod reconcile;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Run the agent: poll the manifests repository and reconcile the host (the daemon).
    Run(commands::run::RunArgs),
    /// Sync once now, without a daemon: fetch, verify, plan, apply, record.
    ///
    /// Exit 0 when applied or already in sync, 1 when the revision was rejected, a
    /// promotion rolled back, or a step failed.
    Apply(commands::apply::ApplyArgs),
    /// Show what would change (a dry run against live state).
    ///
    /// Exit 0 when nothing would change, 2 when changes are pending, 1 on error.
    Plan(commands::plan::PlanArgs),
    /// Ask the running daemon to sync now and print the outcome.
    Sync(commands::sync::SyncArgs),
    /// What runs, from which commit, signed by whom, and what needs a human.
    ///
    /// Exit 0 when healthy, 1 when something needs attention, 2 on errors.
    Status(commands::status::StatusArgs),
    /// Recent deploys, newest first.
    History(commands::history::HistoryArgs),
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    ///
    /// The Debian package installs the bash and zsh scripts; for another shell, redirect
    /// the output into its completion directory. Exit 0, or 2 when stdout is not writable.
    #[command(hide = true)]
    Completions(commands::completions::CompletionsArgs),
    /// Write the man pages into DIR: `veza-agent.1` and `veza-agent-SUBCOMMAND.1`.
    ///
    /// Prints each path written. Exit 0, or 2 on I/O errors.
    #[command(hide = true)]
    Man(commands::man::ManArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match std::env::var("VEZA_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("warn") => tracing::Level::WARN,
        Ok("error") => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .init();
    match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Apply(args) => commands::apply::run(&args),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Sync(args) => commands::sync::run(&args),
        Command::Status(args) => commands::status::run(&args),
        Command::History(args) => commands::history::run(&args),
        Command::Validate(args) => commands::validate::run(&args),
        Command::Schedule(args) => commands::schedule::run(args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Completions(args) => commands::completions::run(&args, Cli::command()),
        Command::Man(args) => commands::man::run(&args, Cli::command()),
        Command::Schema => {
            print!("{}", veza_model::json_schema());
            ExitCode::SUCCESS
        }
    }
}
