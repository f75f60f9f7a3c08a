//! Where the edge's HAProxy runs, behind one trait: [`EdgeRuntime`] gives the installer
//! file access, the config validator and the master CLI, either on this host
//! ([`HostRuntime`]: files + `haproxy -c` through `Cmd` + the master socket) or inside an
//! Incus instance ([`InstanceRuntime`]: file push/pull + exec, through any
//! [`InstanceExec`], which the Incus driver implements).
//!
//! Inside an instance the master CLI is reached by executing a tiny Perl client there
//! (`perl-base` is in every Debian, `Socket` and `Errno` are part of it), which speaks
//! the same half-close protocol as [`super::cli`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cli::{self, CliError};
use crate::incus::Incus as _;
use crate::process::{Cmd, ProcessError};

/// One effect on the edge that failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// A file could not be read, written, renamed or removed.
    #[error("{location}: cannot {op} `{}`: {source}", path.display())]
    File {
        location: String,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A command on the host failed to run.
    #[error("{location}: {source}")]
    Process {
        location: String,
        #[source]
        source: Box<ProcessError>,
    },
    /// The master CLI failed (other than "not running").
    #[error("{location}: HAProxy master CLI: {source}")]
    Cli {
        location: String,
        #[source]
        source: Box<CliError>,
    },
    /// Nothing answers on the master socket: HAProxy is not running.
    #[error("{location}: nothing answers on the HAProxy master socket `{}`: HAProxy is not running", socket.display())]
    NotRunning { location: String, socket: PathBuf },
    /// An operation inside the instance failed.
    #[error("{location}: {op} failed: {message}")]
    Instance { location: String, op: String, message: String },
    /// `haproxy -c` rejected the file.
    #[error("{location}: HAProxy rejects `{}`:\n{stderr}", path.display())]
    Invalid { location: String, path: PathBuf, stderr: String },
}

/// Access to the HAProxy that serves the edge: its files, its validator, its master CLI.
///
/// Implementations: [`HostRuntime`], [`InstanceRuntime`] and
/// [`super::fake::FakeEdge`]. The installer only uses this trait, so the same code
/// path runs on the host and inside an instance.
pub trait EdgeRuntime {
    /// Where HAProxy runs, for messages (`host`, `instance veza-haproxy`).
    fn location(&self) -> String;
    /// The file's bytes, or `None` when it does not exist.
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, EdgeError>;
    /// Replaces the file atomically (temporary file in the same directory + rename).
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), EdgeError>;
    /// Renames atomically within one directory, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> Result<(), EdgeError>;
    /// Removes the file; a missing file is not an error.
    fn remove_file(&self, path: &Path) -> Result<(), EdgeError>;
    /// Runs `haproxy -c -q -f path`; [`EdgeError::Invalid`] carries the diagnostics.
    fn check_config(&self, path: &Path) -> Result<(), EdgeError>;
    /// Sends one command to the master CLI and returns its answer;
    /// [`EdgeError::NotRunning`] when nothing listens.
    fn master(&self, command: &str) -> Result<String, EdgeError>;
}

/// Time limit of `haproxy -c` (a large config with DNS names checks in well under 1 s).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// HAProxy running on this host.
#[derive(Debug, Clone)]
pub struct HostRuntime {
    /// The `haproxy` binary.
    pub haproxy_bin: PathBuf,
    /// The master CLI socket (`-S`), e.g. `/run/haproxy-master.sock` on Debian.
    pub master_socket: PathBuf,
    /// Time limit of one CLI command.
    pub cli_timeout: Duration,
}

impl HostRuntime {
    /// A runtime for the master socket at `master_socket`, with `haproxy` from `PATH`.
    pub fn new(master_socket: impl Into<PathBuf>) -> HostRuntime {
        HostRuntime {
            haproxy_bin: PathBuf::from("haproxy"),
            master_socket: master_socket.into(),
            cli_timeout: cli::DEFAULT_TIMEOUT,
        }
    }

    fn file_err(&self, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> EdgeError {
        let location = self.location();
        let path = path.to_path_buf();
        move |source| EdgeError::File { location, op, path, source }
    }
}

impl EdgeRuntime for HostRuntime {
    fn location(&self) -> String {
        "host".to_string()
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, EdgeError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.file_err("read", path)(e)),
        }
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), EdgeError> {
        crate::fs::write_atomic_if_changed(path, bytes, 0o644)
            .map(|_| ())
            .map_err(|e| self.file_err("write", path)(e.source))
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), EdgeError> {
        veza_fs::rename(from, to).map_err(|e| self.file_err("rename into place", &e.path)(e.source))
    }

    fn remove_file(&self, path: &Path) -> Result<(), EdgeError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.file_err("remove", path)(e)),
        }
    }

    fn check_config(&self, path: &Path) -> Result<(), EdgeError> {
        let process =
            |source| EdgeError::Process { location: self.location(), source: Box::new(source) };
        let quiet = Cmd::new(&self.haproxy_bin)
            .args(["-c", "-q", "-f"])
            .arg(path)
            .timeout(CHECK_TIMEOUT)
            .output()
            .map_err(process)?;
        if quiet.status.success() {
            return Ok(());
        }
        // `-q` silences the diagnostics too; run again to get them.
        let loud = Cmd::new(&self.haproxy_bin)
            .args(["-c", "-f"])
            .arg(path)
            .timeout(CHECK_TIMEOUT)
            .output()
            .map_err(process)?;
        Err(EdgeError::Invalid {
            location: self.location(),
            path: path.to_path_buf(),
            stderr: diagnostics(&loud.stdout, &loud.stderr),
        })
    }

    fn master(&self, command: &str) -> Result<String, EdgeError> {
        cli::unix_command(&self.master_socket, command, self.cli_timeout).map_err(|source| {
            if source.is_not_running() {
                EdgeError::NotRunning {
                    location: self.location(),
                    socket: self.master_socket.clone(),
                }
            } else {
                EdgeError::Cli { location: self.location(), source: Box::new(source) }
            }
        })
    }
}

/// Validator output without the version banner, trimmed.
fn diagnostics(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(stderr), String::from_utf8_lossy(stdout));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("haproxy version is") && !l.contains("path to executable is"))
        .collect();
    lines.join("\n").trim().to_string()
}

/// What a command run inside an instance returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceOutput {
    /// Exit code (127: command not found).
    pub exit_code: i32,
    /// Recorded stdout.
    pub stdout: Vec<u8>,
    /// Recorded stderr.
    pub stderr: Vec<u8>,
}

/// An instance operation that failed before the command could report an exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InstanceError {
    /// What failed, with the instance and the path or command.
    pub message: String,
    /// The underlying error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl InstanceError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> InstanceError {
        InstanceError { message: message.into(), source: None }
    }
}

/// The three instance operations the edge needs; the Incus driver implements it
/// (exec with recorded output, file push with `Content-Type: application/octet-stream`,
/// file pull).
pub trait InstanceExec {
    /// Runs `command` (no shell) in `instance`, waits for it (at most `timeout`) and
    /// returns its exit code and recorded output.
    fn exec(
        &self,
        instance: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<InstanceOutput, InstanceError>;
    /// Writes `bytes` to `path` in `instance` with permission `mode`.
    fn push_file(
        &self,
        instance: &str,
        path: &Path,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), InstanceError>;
    /// Reads `path` from `instance`; `None` when it does not exist.
    fn pull_file(&self, instance: &str, path: &Path) -> Result<Option<Vec<u8>>, InstanceError>;
}

/// [`InstanceExec`] over the (async) Incus driver, for the blocking installer: run it
/// on a blocking thread (`tokio::task::spawn_blocking`, or `block_in_place`) with a
/// handle to the runtime the driver lives on. `incus` is any pointer to the driver
/// (`&IncusClient`, `Arc<IncusClient>`). Exec and push need an instance the agent owns.
pub struct IncusExec<P> {
    /// The driver.
    pub incus: P,
    /// The tokio runtime the driver's futures run on.
    pub handle: tokio::runtime::Handle,
}

impl<P> InstanceExec for IncusExec<P>
where
    P: std::ops::Deref,
    P::Target: crate::incus::Incus,
{
    fn exec(
        &self,
        instance: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<InstanceOutput, InstanceError> {
        let mut request = crate::incus::ExecRequest::new(command.iter().cloned());
        request.timeout = timeout;
        let out = self.handle.block_on(self.incus.exec(instance, &request)).map_err(|e| {
            InstanceError {
                message: format!("exec `{}`: {e}", command.join(" ")),
                source: Some(Box::new(e)),
            }
        })?;
        Ok(InstanceOutput { exit_code: out.exit_code, stdout: out.stdout, stderr: out.stderr })
    }

    fn push_file(
        &self,
        instance: &str,
        path: &Path,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), InstanceError> {
        let mut file = crate::incus::FilePush::new(path.to_string_lossy(), bytes.to_vec());
        file.mode = mode;
        self.handle.block_on(self.incus.push_file(instance, &file)).map_err(|e| InstanceError {
            message: format!("push `{}`: {e}", path.display()),
            source: Some(Box::new(e)),
        })
    }

    fn pull_file(&self, instance: &str, path: &Path) -> Result<Option<Vec<u8>>, InstanceError> {
        use crate::incus::{IncusError, ResourceKind};
        match self.handle.block_on(self.incus.pull_file(instance, &path.to_string_lossy())) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(IncusError::NotFound { kind: ResourceKind::File, .. }) => Ok(None),
            Err(e) => Err(InstanceError {
                message: format!("pull `{}`: {e}", path.display()),
                source: Some(Box::new(e)),
            }),
        }
    }
}

/// The master CLI client run inside the instance. Exit 3: nothing listens (not running),
/// 4: timeout, 2: other failure.
const PERL_CLI: &str = r#"use strict; use Socket;
my ($path, $cmd, $t) = @ARGV;
$SIG{ALRM} = sub { print STDERR "no complete answer within ${t}s\n"; exit 4 };
alarm $t;
socket(my $s, PF_UNIX, SOCK_STREAM, 0) or do { print STDERR "socket: $!\n"; exit 2 };
unless (connect($s, sockaddr_un($path))) {
    my $down = $!{ENOENT} || $!{ECONNREFUSED};
    print STDERR "connect $path: $!\n"; exit($down ? 3 : 2);
}
my $msg = "$cmd\n";
while (length $msg) {
    my $n = syswrite($s, $msg);
    defined $n or do { print STDERR "write: $!\n"; exit 2 };
    substr($msg, 0, $n) = "";
}
shutdown($s, 1);
binmode STDOUT;
while (1) {
    my $n = sysread($s, my $buf, 65536);
    if (!defined $n) { last if $!{ECONNRESET}; print STDERR "read: $!\n"; exit 2 }
    last if $n == 0;
    print $buf;
}
"#;

/// HAProxy running inside an Incus instance.
#[derive(Debug, Clone)]
pub struct InstanceRuntime<E> {
    /// The instance driver.
    pub exec: E,
    /// Instance name.
    pub instance: String,
    /// The `haproxy` binary inside the instance.
    pub haproxy_bin: String,
    /// The master CLI socket inside the instance (`/run/haproxy-master.sock` on Debian).
    pub master_socket: PathBuf,
    /// Time limit of one CLI command.
    pub cli_timeout: Duration,
}

impl<E: InstanceExec> InstanceRuntime<E> {
    /// A runtime for `instance` with Debian's paths.
    pub fn new(exec: E, instance: impl Into<String>) -> InstanceRuntime<E> {
        InstanceRuntime {
            exec,
            instance: instance.into(),
            haproxy_bin: "haproxy".to_string(),
            master_socket: PathBuf::from("/run/haproxy-master.sock"),
            cli_timeout: cli::DEFAULT_TIMEOUT,
        }
    }

    fn fail(&self, op: impl Into<String>, message: impl Into<String>) -> EdgeError {
        EdgeError::Instance { location: self.location(), op: op.into(), message: message.into() }
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Result<InstanceOutput, EdgeError> {
        let command: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.exec
            .exec(&self.instance, &command, timeout)
            .map_err(|e| self.fail(format!("`{}`", args.join(" ")), e.to_string()))
    }

    /// Runs a command that must exit 0.
    fn run_ok(&self, args: &[&str]) -> Result<(), EdgeError> {
        let out = self.run(args, CHECK_TIMEOUT)?;
        if out.exit_code == 0 {
            Ok(())
        } else {
            Err(self.fail(
                format!("`{}`", args.join(" ")),
                format!(
                    "exit code {}: {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ))
        }
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl<E: InstanceExec> EdgeRuntime for InstanceRuntime<E> {
    fn location(&self) -> String {
        format!("instance {}", self.instance)
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, EdgeError> {
        self.exec
            .pull_file(&self.instance, path)
            .map_err(|e| self.fail(format!("reading `{}`", path.display()), e.to_string()))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), EdgeError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".veza-tmp");
        let tmp = PathBuf::from(tmp);
        self.exec
            .push_file(&self.instance, &tmp, bytes, 0o644)
            .map_err(|e| self.fail(format!("pushing `{}`", tmp.display()), e.to_string()))?;
        // fsync the data, then rename over the target: atomic within the directory.
        self.run_ok(&[
            "sh",
            "-c",
            "sync -- \"$1\" && mv -f -- \"$1\" \"$2\"",
            "sh",
            &path_str(&tmp),
            &path_str(path),
        ])
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), EdgeError> {
        self.run_ok(&["mv", "-f", "--", &path_str(from), &path_str(to)])
    }

    fn remove_file(&self, path: &Path) -> Result<(), EdgeError> {
        self.run_ok(&["rm", "-f", "--", &path_str(path)])
    }

    fn check_config(&self, path: &Path) -> Result<(), EdgeError> {
        let p = path_str(path);
        let quiet = self.run(&[&self.haproxy_bin, "-c", "-q", "-f", &p], CHECK_TIMEOUT)?;
        if quiet.exit_code == 0 {
            return Ok(());
        }
        let loud = self.run(&[&self.haproxy_bin, "-c", "-f", &p], CHECK_TIMEOUT)?;
        Err(EdgeError::Invalid {
            location: self.location(),
            path: path.to_path_buf(),
            stderr: diagnostics(&loud.stdout, &loud.stderr),
        })
    }

    fn master(&self, command: &str) -> Result<String, EdgeError> {
        if command.contains(['\n', '\r']) {
            return Err(EdgeError::Cli {
                location: self.location(),
                source: Box::new(CliError::BadCommand { command: command.to_string() }),
            });
        }
        let secs = self.cli_timeout.as_secs().max(1).to_string();
        let socket = path_str(&self.master_socket);
        let out = self.run(
            &["perl", "-e", PERL_CLI, &socket, command, &secs],
            self.cli_timeout + Duration::from_secs(5),
        )?;
        match out.exit_code {
            0 => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
            3 => Err(EdgeError::NotRunning {
                location: self.location(),
                socket: self.master_socket.clone(),
            }),
            code => Err(self.fail(
                format!("master CLI `{command}`"),
                format!("exit code {code}: {}", String::from_utf8_lossy(&out.stderr).trim()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Runs "inside the instance" by running the same argv on this host, so the Perl
    /// client and the shell snippets are exercised for real.
    struct LocalExec {
        calls: RefCell<Vec<Vec<String>>>,
    }

    impl InstanceExec for LocalExec {
        fn exec(
            &self,
            _: &str,
            command: &[String],
            timeout: Duration,
        ) -> Result<InstanceOutput, InstanceError> {
            self.calls.borrow_mut().push(command.to_vec());
            let out = Cmd::new(&command[0])
                .args(&command[1..])
                .timeout(timeout)
                .output()
                .map_err(|e| InstanceError::new(e.to_string()))?;
            Ok(InstanceOutput {
                exit_code: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        }
        fn push_file(
            &self,
            _: &str,
            path: &Path,
            bytes: &[u8],
            _: u32,
        ) -> Result<(), InstanceError> {
            std::fs::write(path, bytes).map_err(|e| InstanceError::new(e.to_string()))
        }
        fn pull_file(&self, _: &str, path: &Path) -> Result<Option<Vec<u8>>, InstanceError> {
            match std::fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(InstanceError::new(e.to_string())),
            }
        }
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("veza-rt-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn instance_runtime_files_and_perl_cli_protocol() {
        use std::io::{Read, Write};
        let dir = tmpdir("inst");
        let socket = dir.join("master.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap(); // ends only on the client's half-close
            s.write_all(format!("answer to {got}").as_bytes()).unwrap();
        });
        let mut rt = InstanceRuntime::new(LocalExec { calls: RefCell::new(Vec::new()) }, "edge");
        rt.master_socket = socket.clone();
        assert_eq!(rt.master("show proc").unwrap(), "answer to show proc\n");
        server.join().unwrap();
        std::fs::remove_file(&socket).unwrap();
        assert!(matches!(rt.master("show proc"), Err(EdgeError::NotRunning { .. })));

        let f = dir.join("haproxy.cfg");
        assert_eq!(rt.read_file(&f).unwrap(), None);
        rt.write_file(&f, b"one").unwrap();
        assert_eq!(rt.read_file(&f).unwrap().as_deref(), Some(&b"one"[..]));
        assert!(!dir.join("haproxy.cfg.veza-tmp").exists());
        rt.rename(&f, &dir.join("moved")).unwrap();
        rt.remove_file(&dir.join("moved")).unwrap();
        rt.remove_file(&dir.join("moved")).unwrap();
        assert_eq!(rt.location(), "instance edge");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn both_runtimes_report_validator_diagnostics() {
        let dir = tmpdir("check");
        let bad = dir.join("bad.cfg");
        std::fs::write(&bad, "frontend f\n    bind 127.0.0.1:1\n    bogus_keyword\n").unwrap();
        let host = HostRuntime::new(dir.join("none.sock"));
        let inst = InstanceRuntime::new(LocalExec { calls: RefCell::new(Vec::new()) }, "edge");
        for rt in [&host as &dyn EdgeRuntime, &inst] {
            match rt.check_config(&bad) {
                Err(EdgeError::Invalid { stderr, .. }) => {
                    assert!(stderr.contains("bogus_keyword"), "{stderr}");
                    assert!(!stderr.contains("haproxy version is"), "{stderr}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(host.master("show proc"), Err(EdgeError::NotRunning { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
