//! The `veza-agent` command line as tests drive it: one invocation against a
//! configuration file and what it printed, or one started detached.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use veza_host::process::{Cmd, Output};

/// What one `veza-agent` invocation printed.
#[derive(Debug)]
pub struct Run {
    /// Its exit code (-1 when killed by a signal).
    pub code: i32,
    /// Its standard output.
    pub out: String,
    /// Its standard error.
    pub err: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.out, self.err)
    }
}

/// `BIN ARGS --config CONFIG`, bounded by five minutes. Panics when it cannot run.
pub fn agent(bin: &Path, config: &Path, args: &[&str]) -> Run {
    let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
    all.extend([OsString::from("--config"), config.into()]);
    let out = output(bin, &all, Duration::from_secs(300));
    Run { code: out.status.code().unwrap_or(-1), out: out.stdout_str(), err: out.stderr_str() }
}

/// `BIN ARGS` bounded by `limit`: what it printed and its status. Panics when it cannot
/// run (or outlives `limit`).
pub fn output(bin: &Path, args: &[impl AsRef<OsStr>], limit: Duration) -> Output {
    Cmd::new(bin).args(args).timeout(limit).output().unwrap_or_else(|e| {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        panic!("veza-agent {args:?}: {e}")
    })
}

/// `BIN COMMAND --config CONFIG` started detached (its own session), stdout and stderr
/// in `log`; returns its pid. Panics when it cannot start.
pub fn spawn(bin: &Path, config: &Path, command: &str, log: &Path) -> u32 {
    Cmd::new(bin)
        .args([command, "--config"])
        .arg(config)
        .spawn_daemon(Some(log))
        .unwrap_or_else(|e| panic!("veza-agent {command}: {e}"))
}
