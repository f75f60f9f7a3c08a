//! `veza-agent`: the command-line entry point.
//!
//! Parses the command line synchronously, then hands over to one module per
//! subcommand in `commands/`. Exit codes follow one rule across subcommands:
//! 0 success, 1 the input was rejected (invalid manifest, bad signature, …),
//! 2 usage or environment errors (clap's own usage errors exit 2 too).

/// `println!` that ignores a closed stdout (`veza-agent status | head -1` must not panic
/// on the broken pipe).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod cluster;
mod commands;
mod edge;
mod jobs;
mod reconcile;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// GitOps pull agent: pulls a signed manifests repository, verifies it, and reconciles
/// Incus instances, the HAProxy edge and systemd timers on this host.
///
/// Every poll interval the daemon (`veza-agent run`, normally the `veza-agent.service`
/// unit) fetches the configured branch, verifies the tip commit's SSH signature against
/// the host's own trust root (`trust.allowed_signers` in the host configuration), refuses
/// anything that does not descend from the last applied commit, validates the manifests
/// bound to this host, diffs them against live Incus, HAProxy and systemd state, and
/// applies the difference. Promotions (`active:` edits) are health-gated and revert
/// themselves when the new color fails its check.
///
/// Operators use `status` and `history` to see what runs and why, `plan` for a dry run,
/// `apply` for a one-off sync without the daemon and `sync` to wake the daemon. Manifest
/// authors and CI use `validate`, `schema`, `schedule` and `verify`, which need no host.
#[derive(Debug, Parser)]
#[command(name = "veza-agent", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: poll the manifests repository and reconcile the host (the daemon).
    ///
    /// Syncs at once, then every `poll.interval` plus up to `poll.jitter` (host
    /// configuration), and whenever `veza-agent sync` asks on the control socket
    /// (`STATE_DIR/control.sock`). The configuration and the trust root are re-read at
    /// every cycle; SIGHUP re-reads at once (an invalid configuration is rejected and the
    /// running one kept). SIGTERM and SIGINT stop between actions, never between an edge
    /// switch and its verification. Logs go to stderr (the journal under systemd).
    ///
    /// Exit 0 after a requested stop, 1 when the configuration or state directory is
    /// unusable at start.
    Run(commands::run::RunArgs),
    /// Sync once now, without a daemon: fetch, verify, plan, apply, record.
    ///
    /// Does exactly what one cycle of `run` does, in the foreground, and prints one line:
    /// the outcome (`applied`, `no-change`, `rejected`, `rolled-back`, `failed`), the
    /// commit, the number of steps and the wall time. Use it for the first sync after
    /// installing. One agent applies at a time: while the daemon holds the state lock,
    /// `apply` refuses at once; use `sync` instead. With `previews.enabled`, the PR
    /// previews pass follows (as after each of the daemon's syncs) and prints one more
    /// line: PR heads seen, previewed, statuses posted.
    ///
    /// Exit 0 when applied or already in sync, 3 when applied or in sync but something
    /// the manifests ask for was refused (the outcome line says `N refused (not done)`),
    /// 1 when the revision was rejected or quarantined, a promotion rolled back, or a
    /// step failed, 4 when the host is suspended or in report mode (planned, nothing
    /// applied) or when disruptive steps wait for their environment's maintenance window
    /// (outcome `waiting`: everything else applied). `--now` (root) runs those steps
    /// now; the history records who asked.
    Apply(commands::apply::ApplyArgs),
    /// Show what would change (a dry run against live state).
    ///
    /// Fetches and verifies the branch tip exactly as a sync would (a refused revision is
    /// reported, never planned), observes Incus, HAProxy and systemd, and prints the
    /// ordered steps a sync would execute. Changes nothing on the host; only the bare
    /// mirror in the state directory is updated by the fetch.
    ///
    /// Decides exactly as a sync would (`apply` and `plan` share one decision: quarantined
    /// commits, job gates and maintenance windows included: steps that wait for a window
    /// are listed as `waiting for window: STEP (next opens at TIME)`). When the host is
    /// suspended or in report mode, the first line says that nothing will be applied and
    /// why. With `previews.enabled`, what the last PR preview pass said of each PR head
    /// follows the plan.
    ///
    /// Exit 0 when nothing would change, 2 when changes are pending, 3 when the agent
    /// would refuse something the manifests ask for, 4 when changes are pending but an
    /// apply now would apply none of them (suspended, report mode, or every pending step
    /// waits for a maintenance window), 1 on error or when the revision is refused or
    /// quarantined (note: 2 differs from the other subcommands, so CI can tell pending
    /// changes from failures).
    Plan(commands::plan::PlanArgs),
    /// Take over what the manifests name on a host someone else built (the Ansible pipeline).
    ///
    /// Read-only by default, like `plan` (the revision accepted and the host observed the
    /// same way): for each instance (plain, protected data, app slots) and profile the
    /// manifests name, `owned` (already marked), `adopt` (exists without the mark and can
    /// be taken over as it is), `missing` (the first apply creates it) or `conflict`, with
    /// each difference (image family, profiles, devices, type, protected data missing its
    /// `protect: true`, a serving slot whose release cannot be verified); the color the
    /// live edge serves for each app (read from its config, whoever wrote it) and a
    /// refusal when the manifest's `active:` disagrees (adoption never moves traffic);
    /// foreign timers whose service runs a manifest job's command; and what the first
    /// apply after adoption would do. `--json` prints one document with `instances`,
    /// `profiles`, `active`, `timers`, `refusals`, `first_apply` and `duration_ms`.
    ///
    /// `--apply` (root) sets the agent's marks on everything `adopt` (through Incus's
    /// update with ETag: no restart, snapshot or recreate), replaces each duplicate timer
    /// with the job's units (installed and active before the foreign timer is disabled
    /// with `systemctl disable --now`; its files stay), and records who, why and what in
    /// the history. It asks on the terminal to type `adopt` unless `--yes`, and is
    /// refused, changing nothing, while anything is in conflict or refused.
    ///
    /// Exit 0 nothing to adopt (or adopted), 2 something to adopt and nothing in the way
    /// (report only), 1 a conflict or refusal, a declined confirmation, not root, or an
    /// error; with `--apply`, 2 when there is no terminal to confirm on and no `--yes`.
    Adopt(commands::adopt::AdoptArgs),
    /// Ask the running daemon to sync now and print the outcome.
    ///
    /// Connects to the daemon's control socket (`STATE_DIR/control.sock`), waits for the
    /// next completed sync and prints its outcome line, as `apply` does.
    ///
    /// `--now` (root; the daemon checks the caller's credentials) makes that sync run the
    /// steps that wait for a maintenance window, recorded in the history with who asked.
    ///
    /// Exit 0 when applied or in sync, 3 when it was with refusals, 4 when suspended, in
    /// report mode or when steps wait for a maintenance window, 1 when the sync did not
    /// succeed, 2 when no daemon answers, the request was refused or the configuration
    /// is unreadable.
    Sync(commands::sync::SyncArgs),
    /// What runs, from which commit, signed by whom, and what needs a human.
    ///
    /// Reads the recorded state only (no network, no lock), so it answers instantly even
    /// while a sync runs. Shows the applied commit and its signer, each app's colors,
    /// releases and active color, and the problems that need a human: a rejected
    /// revision, a rolled-back promotion, a quarantined commit, a stale source (no
    /// verified fetch within `trust.max_staleness`), an interrupted run.
    ///
    /// Exit 0 when healthy, 1 when something needs attention, 2 on errors.
    Status(commands::status::StatusArgs),
    /// Recent deploys, newest first.
    ///
    /// One line per new commit the agent acted on (applied, rejected, rolled back,
    /// failed; fetch failures, `no-change` syncs and repeated refusals of the same commit
    /// are not recorded: `status` shows those): time (UTC), outcome, commit, signer, duration, the active color of each
    /// app, and the reason when it did not succeed. Reads the state directory only.
    ///
    /// Exit 0, or 2 when the configuration or the history cannot be read.
    History(commands::history::HistoryArgs),
    /// Check manifests: syntax, unknown keys and semantic rules, all files together.
    ///
    /// Prints each problem as `PATH:LINE:COL: error: MESSAGE` on stderr. For a valid file,
    /// also prints the capabilities it uses (powers over the host such as `host-jobs`,
    /// which a host's trust policy must grant to its path), e.g.
    /// `PATH: uses capabilities: host-jobs (jobs.dr-drill.on)`; that is not an error.
    /// Exit 0 when every file is valid, 1 otherwise, 2 on usage errors.
    Validate(commands::validate::ValidateArgs),
    /// Pause applying: the agent goes on fetching, verifying and planning, applies nothing.
    ///
    /// Root only. Kept in the state directory (survives restarts); the next sync records
    /// who and why in the history; `status` shows what would be applied. Exit 0, 1 when
    /// not root, 2 on errors.
    Suspend(commands::suspend::SuspendArgs),
    /// Lift a suspension: the next sync applies.
    ///
    /// Root only. Exit 0, 1 when not root, 2 on errors.
    Resume(commands::suspend::ResumeArgs),
    /// Encrypt a secret for the manifests, or list whom a secret was encrypted to.
    ///
    /// `secret encrypt --to "$(cat /etc/ssh/ssh_host_ed25519_key.pub)" [FILE|-] >
    /// secrets/ENV/NAME.age`; `secret recipients FILE [--key PUB]`. The value is read from a
    /// file or stdin, never from the command line. Exit 0, 1 on a bad recipient or a key
    /// that is not a recipient, 2 on I/O errors.
    Secret(commands::secret::SecretArgs),
    /// Print the JSON Schema of the manifest format (as committed in `schemas/`).
    ///
    /// For editors and the manifests repository's CI. The schema checks shape only; run
    /// `validate` for the semantic rules (cross-environment ones included). Exit 0.
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
        // Colors only on a terminal: under systemd stderr goes to the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Apply(args) => commands::apply::run(&args),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Adopt(args) => commands::adopt::run(&args),
        Command::Sync(args) => commands::sync::run(&args),
        Command::Status(args) => commands::status::run(&args),
        Command::History(args) => commands::history::run(&args),
        Command::Validate(args) => commands::validate::run(&args),
        Command::Schedule(args) => commands::schedule::run(args),
        Command::Secret(args) => commands::secret::run(&args),
        Command::Suspend(args) => commands::suspend::suspend(&args),
        Command::Resume(args) => commands::suspend::resume(&args),
        Command::Verify(args) => commands::verify::run(args),
        Command::Completions(args) => commands::completions::run(&args, Cli::command()),
        Command::Man(args) => commands::man::run(&args, Cli::command()),
        Command::Schema => {
            out!("{}", veza_model::json_schema());
            ExitCode::SUCCESS
        }
    }
}
