//! `veza-agent sync`: asks the running daemon to sync now and prints the outcome.
//! Exit 0 when applied or in sync, 3 when applied with refusals, 4 when suspended, in
//! report mode or when steps wait for a maintenance window, 1 otherwise, 2 when no
//! daemon answers. `--now` (root) asks the daemon to run the steps that wait for a
//! window in that sync; the daemon checks the caller is root and records who asked.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::commands::common::{ConfigArg, fail};
use crate::reconcile::{SyncSummary, load_config};

/// Arguments of `sync`.
#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Give up waiting for the daemon's answer after this many seconds (a sync that
    /// waits for a new color to become healthy can take minutes).
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Run the steps that wait for a maintenance window in this sync (root only;
    /// recorded in the history with who asked).
    #[arg(long)]
    pub now: bool,
    /// Print the daemon's whole answer as JSON (with where the time went, stage by stage).
    #[arg(long)]
    pub json: bool,
}

/// Runs `sync`.
pub fn run(args: &SyncArgs) -> ExitCode {
    let run_now_by = match args.now.then(crate::commands::suspend::operator).transpose() {
        Ok(by) => by,
        Err(code) => return code,
    };
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let sock = crate::commands::run::control_socket(std::path::Path::new(config.state_dir()));
    let mut stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: no running veza-agent answers on `{}`: {e}\nhint: start it with `systemctl start veza-agent` or run `veza-agent apply` for a one-off sync",
                sock.display()
            );
            return ExitCode::from(2);
        }
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(args.timeout)));
    let request = crate::commands::run::request_line(run_now_by.as_deref());
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return fail(&anyhow::anyhow!("cannot send the request: {e}"), 2);
    }
    let mut line = String::new();
    if let Err(e) = BufReader::new(stream).read_line(&mut line) {
        return fail(&anyhow::anyhow!("no answer from the daemon: {e}"), 2);
    }
    let summary: SyncSummary = match serde_json::from_str(line.trim()) {
        Ok(s) => s,
        Err(_) if line.starts_with("error: ") => {
            eprint!("{line}");
            return ExitCode::from(2);
        }
        Err(e) => {
            return fail(&anyhow::anyhow!("unreadable answer from the daemon ({e}): {line}"), 2);
        }
    };
    if args.json {
        outln!("{}", line.trim());
    } else {
        outln!("{summary}");
    }
    crate::commands::apply::exit_code(&summary)
}
