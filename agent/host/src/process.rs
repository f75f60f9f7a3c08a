//! The one wrapper through which every external command runs.
//!
//! Invariant: no other module in the workspace calls `std::process::Command::new`.
//! A failed command's error carries the program, its arguments, the exit status
//! (or the signal that killed it) and the captured stderr, so an operator can
//! re-run exactly what failed.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started at all (missing binary, permissions).
    #[error("could not start `{cmdline}`: {source}")]
    Spawn {
        cmdline: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully (or was killed).
    #[error("`{cmdline}` failed ({status}){}", stderr_suffix(.stderr))]
    Failed { cmdline: String, status: String, code: Option<i32>, stdout: String, stderr: String },
    /// The program did not finish within its time limit and was killed.
    #[error("`{cmdline}` did not finish within {timeout:?} and was killed{}", stderr_suffix(.stderr))]
    Timeout { cmdline: String, timeout: Duration, stderr: String },
    /// Reading or writing the child's pipes failed.
    #[error("i/o with `{cmdline}` failed: {source}")]
    Io {
        cmdline: String,
        #[source]
        source: std::io::Error,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() { String::new() } else { format!(": {trimmed}") }
}

impl ProcessError {
    /// The exit code when the program ran and exited non-zero.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ProcessError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

/// The captured result of a command that ran to completion.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Stdout as lossy UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as lossy UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A command to run: program, arguments, environment, working directory, stdin and a time limit.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Cmd {
    /// Starts building a command for `program`.
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            env_clear: false,
            cwd: None,
            stdin: None,
            timeout: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.args.push(arg.into());
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Cmd {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the child with an empty environment (plus what `env` adds).
    pub fn env_clear(mut self) -> Cmd {
        self.env_clear = true;
        self
    }

    /// Runs the child in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Feeds `bytes` to the child's stdin (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kills the child if it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Cmd {
        self.timeout = Some(timeout);
        self
    }

    /// The command line, shell-quoted where needed, for messages.
    pub fn cmdline(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        #[allow(clippy::disallowed_methods)] // reason: this is the one sanctioned place
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c
    }

    /// Runs the command to completion and returns its output, whatever the exit status.
    pub fn output(&self) -> Result<Output, ProcessError> {
        let cmdline = self.cmdline();
        let mut c = self.command();
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child =
            c.spawn().map_err(|source| ProcessError::Spawn { cmdline: cmdline.clone(), source })?;
        let writer = match (self.stdin.clone(), child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
                // A child that exits early closes the pipe; that is not our error to report.
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        let out = match self.timeout {
            None => child
                .wait_with_output()
                .map_err(|source| ProcessError::Io { cmdline: cmdline.clone(), source })?,
            Some(limit) => wait_with_timeout(child, limit, &cmdline)?,
        };
        if let Some(w) = writer {
            let _ = w.join();
        }
        Ok(Output { status: out.status, stdout: out.stdout, stderr: out.stderr })
    }

    /// Runs the command and fails unless it exits 0.
    pub fn run(&self) -> Result<Output, ProcessError> {
        let out = self.output()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ProcessError::Failed {
                cmdline: self.cmdline(),
                status: describe_status(out.status),
                code: out.status.code(),
                stdout: out.stdout_str(),
                stderr: out.stderr_str(),
            })
        }
    }

    /// Runs the command, fails unless it exits 0, and returns stdout as a string.
    pub fn run_stdout(&self) -> Result<String, ProcessError> {
        self.run().map(|o| o.stdout_str())
    }

    /// Starts the command detached from our pipes (stdin, stdout and stderr go to
    /// `/dev/null` or to `log`), in its own session, and returns its pid.
    /// Used for daemons that must not hold a caller's pipes open.
    pub fn spawn_daemon(&self, log: Option<&Path>) -> Result<u32, ProcessError> {
        use std::os::unix::process::CommandExt;
        let cmdline = self.cmdline();
        let mut c = self.command();
        c.stdin(Stdio::null());
        match log {
            Some(path) => {
                let open = || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| ProcessError::Io { cmdline: cmdline.clone(), source })
                };
                c.stdout(open()?).stderr(open()?);
            }
            None => {
                c.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        c.process_group(0);
        let child =
            c.spawn().map_err(|source| ProcessError::Spawn { cmdline: cmdline.clone(), source })?;
        Ok(child.id())
    }
}

fn wait_with_timeout(
    mut child: std::process::Child,
    limit: Duration,
    cmdline: &str,
) -> Result<std::process::Output, ProcessError> {
    use std::io::Read;
    let io_err = |source| ProcessError::Io { cmdline: cmdline.to_string(), source };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_err)? {
            break Some(status);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(std::process::Output { status, stdout, stderr }),
        None => Err(ProcessError::Timeout {
            cmdline: cmdline.to_string(),
            timeout: limit,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }),
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit status".to_string(),
    }
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+%".contains(&b));
    if plain { arg.to_string() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cmdline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_program_args_status_and_stderr() {
        let err = Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]).run().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`sh -c 'echo boom >&2; exit 3'`"), "{msg}");
        assert!(msg.contains("exit status 3"), "{msg}");
        assert!(msg.ends_with(": boom"), "{msg}");
        assert_eq!(err.exit_code(), Some(3));
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = Cmd::new("/nonexistent/veza-nope").run().unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }

    #[test]
    fn stdin_is_fed_and_stdout_captured() {
        let out = Cmd::new("cat").stdin("hello").run_stdout().unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn timeout_kills_the_child() {
        let err = Cmd::new("sleep").arg("5").timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
    }
}
