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

pub mod stamp;

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
    /// The program wrote more than its output limit and was killed.
    #[error(
        "`{cmdline}` wrote more than {limit} bytes to {stream} and was killed (hint: a command \
         the agent runs should never say that much; run it by hand to see why)"
    )]
    OutputTooLarge { cmdline: String, stream: &'static str, limit: u64 },
    /// Reading or writing the child's pipes failed (or the consumer of a streamed stdout
    /// gave up, and the child was killed).
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

/// Default limit of what is kept of a child's stdout, and of its stderr: a command that
/// says more is killed rather than allowed to fill the agent's memory.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 * 1024 * 1024;

/// A command to run: program, arguments, environment, working directory, stdin, a time
/// limit and an output limit.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    max_output: u64,
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
            max_output: DEFAULT_MAX_OUTPUT,
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

    /// Kills the child if it writes more than `bytes` to stdout or to stderr
    /// (default [`DEFAULT_MAX_OUTPUT`]).
    pub fn max_output(mut self, bytes: u64) -> Cmd {
        self.max_output = bytes;
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
        let (child, writer) = self.start()?;
        let out = supervise(child, self.timeout, self.max_output, None, &self.cmdline());
        if let Some(w) = writer {
            let _ = w.join();
        }
        out
    }

    /// Runs the command to completion, handing its stdout to `sink` chunk by chunk as it
    /// arrives (at most a few chunks are in memory at once); the returned output has an
    /// empty stdout. When `sink` fails the child is killed and the sink's error is returned
    /// as [`ProcessError::Io`]. Fails unless the command exits 0.
    pub fn run_streaming(&self, sink: Sink<'_>) -> Result<Output, ProcessError> {
        let (child, writer) = self.start()?;
        let out = supervise(child, self.timeout, self.max_output, Some(sink), &self.cmdline());
        if let Some(w) = writer {
            let _ = w.join();
        }
        self.check(out?)
    }

    fn start(
        &self,
    ) -> Result<(std::process::Child, Option<std::thread::JoinHandle<()>>), ProcessError> {
        let mut c = self.command();
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child =
            c.spawn().map_err(|source| ProcessError::Spawn { cmdline: self.cmdline(), source })?;
        let writer = match (self.stdin.clone(), child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
                // A child that exits early closes the pipe; that is not our error to report.
                let _ = pipe.write_all(&bytes);
            })),
            _ => None,
        };
        Ok((child, writer))
    }

    fn check(&self, out: Output) -> Result<Output, ProcessError> {
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

    /// Runs the command and fails unless it exits 0.
    pub fn run(&self) -> Result<Output, ProcessError> {
        self.check(self.output()?)
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

/// Where [`Cmd::run_streaming`] hands stdout.
type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> std::io::Result<()>;

/// Size of one read from a child's pipe.
const CHUNK: usize = 64 * 1024;

/// What a pipe reader thread saw.
enum Piped {
    Chunk(Vec<u8>),
    /// More than the limit arrived; the reader stopped (and closed its end).
    TooLarge,
}

/// Reads `pipe` in chunks into `tx` until EOF, or until more than `limit` bytes came
/// (then says so and stops). A bounded channel keeps at most a few chunks in flight.
fn pump(
    mut pipe: impl std::io::Read + Send + 'static,
    limit: u64,
    tx: std::sync::mpsc::SyncSender<Piped>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut total = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            total += n as u64;
            let msg = if total > limit { Piped::TooLarge } else { Piped::Chunk(buf[..n].to_vec()) };
            let stop = matches!(msg, Piped::TooLarge);
            if tx.send(msg).is_err() || stop {
                return;
            }
        }
    })
}

/// Collects (or streams into `sink`) the child's stdout and collects its stderr, each
/// capped at `limit`, until the child exits; kills it at `timeout`, past the limit, or
/// when `sink` fails.
fn supervise(
    mut child: std::process::Child,
    timeout: Option<Duration>,
    limit: u64,
    mut sink: Option<Sink<'_>>,
    cmdline: &str,
) -> Result<Output, ProcessError> {
    use std::sync::mpsc::{RecvTimeoutError, sync_channel};
    let (out_tx, out_rx) = sync_channel(4);
    let (err_tx, err_rx) = sync_channel(4);
    // A streamed stdout is the sink's to limit.
    let out_limit = if sink.is_some() { u64::MAX } else { limit };
    let readers = [
        child.stdout.take().map(|p| pump(p, out_limit, out_tx)),
        child.stderr.take().map(|p| pump(p, limit, err_tx)),
    ];
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut open = [true, true];
    let mut failure: Option<ProcessError> = None;
    let mut status = None;
    while failure.is_none() {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            failure = Some(ProcessError::Timeout {
                cmdline: cmdline.to_string(),
                timeout: timeout.unwrap_or_default(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            });
            break;
        }
        if !open[0] && !open[1] {
            match child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    break;
                }
                Ok(None) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(source) => {
                    failure = Some(ProcessError::Io { cmdline: cmdline.to_string(), source });
                    break;
                }
            }
        }
        for (i, (rx, stream)) in [(&out_rx, "stdout"), (&err_rx, "stderr")].into_iter().enumerate()
        {
            if !open[i] {
                continue;
            }
            // Wait on stdout while it is open; only glance at stderr.
            let wait = if i == 0 || !open[0] { Duration::from_millis(5) } else { Duration::ZERO };
            match rx.recv_timeout(wait) {
                Ok(Piped::Chunk(bytes)) => match (i, sink.as_mut()) {
                    (0, Some(f)) => {
                        if let Err(source) = f(&bytes) {
                            failure =
                                Some(ProcessError::Io { cmdline: cmdline.to_string(), source });
                        }
                    }
                    (0, None) => stdout.extend_from_slice(&bytes),
                    _ => stderr.extend_from_slice(&bytes),
                },
                Ok(Piped::TooLarge) => {
                    failure = Some(ProcessError::OutputTooLarge {
                        cmdline: cmdline.to_string(),
                        stream,
                        limit,
                    });
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open[i] = false,
            }
            if failure.is_some() {
                break;
            }
        }
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Unblock and finish the readers: dropping the receivers ends any pending send, and
    // the killed child's pipes reach EOF.
    drop((out_rx, err_rx));
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    match (failure, status) {
        (Some(e), _) => Err(e),
        (None, Some(status)) => Ok(Output { status, stdout, stderr }),
        (None, None) => Err(ProcessError::Io {
            cmdline: cmdline.to_string(),
            source: std::io::Error::other("the child's status was lost"),
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
    fn a_child_that_says_too_much_is_killed_at_the_output_limit() {
        // (script, the stream that overflows)
        let cases = [("yes", "stdout"), ("yes >&2", "stderr"), ("echo ok; yes >&2", "stderr")];
        for (script, stream) in cases {
            let started = Instant::now();
            let err = Cmd::new("sh")
                .args(["-c", script])
                .max_output(256 * 1024)
                .timeout(Duration::from_secs(10))
                .run()
                .unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, ProcessError::OutputTooLarge { stream: s, limit: 262144, .. } if s == stream),
                "{script}: {msg}"
            );
            assert!(msg.contains("more than 262144 bytes to"), "{msg}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{script}: {:?}",
                started.elapsed()
            );
        }
        let within = Cmd::new("sh").args(["-c", "head -c 262144 /dev/zero"]).max_output(262144);
        assert_eq!(within.run().unwrap().stdout.len(), 262144, "exactly the limit is fine");
    }

    #[test]
    fn streamed_stdout_reaches_the_sink_and_a_failing_sink_stops_the_child() {
        let mut seen = 0usize;
        let out = Cmd::new("sh")
            .args(["-c", "head -c 300000 /dev/zero; echo note >&2"])
            .run_streaming(&mut |chunk| {
                seen += chunk.len();
                Ok(())
            })
            .unwrap();
        assert_eq!((seen, out.stdout.len(), out.stderr_str().as_str()), (300000, 0, "note\n"));

        let started = Instant::now();
        let mut seen = 0usize;
        let err = Cmd::new("yes")
            .timeout(Duration::from_secs(10))
            .run_streaming(&mut |chunk| {
                seen += chunk.len();
                if seen > 100_000 { Err(std::io::Error::other("enough")) } else { Ok(()) }
            })
            .unwrap_err();
        assert!(
            matches!(err, ProcessError::Io { .. }) && err.to_string().contains("enough"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let err = Cmd::new("sh").args(["-c", "exit 4"]).run_streaming(&mut |_| Ok(())).unwrap_err();
        assert_eq!(err.exit_code(), Some(4));
    }

    #[test]
    fn timeout_kills_the_child() {
        let err = Cmd::new("sleep").arg("5").timeout(Duration::from_millis(100)).run().unwrap_err();
        assert!(matches!(err, ProcessError::Timeout { .. }), "{err}");
    }
}
