//! Client of HAProxy's master CLI (and of the worker stats socket) over a unix socket.
//!
//! Protocol: connect, write `command\n`, shut down the write half, read until EOF, all
//! within one time limit. Without the half-close the master keeps the connection open
//! and the client would wait for its timeout. `reload` answers nothing: the master
//! re-executes itself and closes the connection (sometimes with a reset), which is
//! read as the end of the answer.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Time limit of one CLI command unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer accepted (a `show stat` of a big edge is a few hundred KiB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// A CLI command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command would be split into several by the line protocol.
    #[error("HAProxy CLI command `{command}` contains a line break; send one command per call")]
    BadCommand { command: String },
    /// Nothing listens on the socket (missing file or connection refused).
    #[error("cannot connect to HAProxy socket `{}`: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the command or reading the answer failed.
    #[error("`{command}` on HAProxy socket `{}` failed: {source}", path.display())]
    Io {
        path: PathBuf,
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// No complete answer in time.
    #[error("`{command}` on HAProxy socket `{}` got no complete answer within {timeout:?}", path.display())]
    Timeout { path: PathBuf, command: String, timeout: Duration },
    /// The answer exceeded the size limit.
    #[error("`{command}` on HAProxy socket `{}`: answer larger than {MAX_ANSWER} bytes", path.display())]
    TooLarge { path: PathBuf, command: String },
}

impl CliError {
    /// Whether the error means that no HAProxy listens on the socket at all.
    pub fn is_not_running(&self) -> bool {
        matches!(self, CliError::Connect { source, .. }
            if matches!(source.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused))
    }
}

/// Sends one command to the unix socket at `path` and returns the whole answer.
pub fn unix_command(path: &Path, command: &str, timeout: Duration) -> Result<String, CliError> {
    if command.contains(['\n', '\r']) {
        return Err(CliError::BadCommand { command: command.to_string() });
    }
    let deadline = Instant::now() + timeout;
    let io =
        |source| CliError::Io { path: path.to_path_buf(), command: command.to_string(), source };
    let timed_out =
        || CliError::Timeout { path: path.to_path_buf(), command: command.to_string(), timeout };
    let mut stream = UnixStream::connect(path)
        .map_err(|source| CliError::Connect { path: path.to_path_buf(), source })?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(format!("{command}\n").as_bytes()).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() > MAX_ANSWER {
                    return Err(CliError::TooLarge {
                        path: path.to_path_buf(),
                        command: command.to_string(),
                    });
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // The master closes a `reload` connection by re-executing itself.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(io(e)),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A socket path in a fresh temporary directory, removed when the guard drops.
    fn sock() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        (dir, path)
    }

    #[test]
    fn sends_one_line_half_closes_and_reads_to_eof() {
        let (_dir, path) = sock();
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            // Reading to EOF only ends because the client shut down its write half.
            s.read_to_string(&mut got).unwrap();
            s.write_all(format!("got {got}").as_bytes()).unwrap();
        });
        let answer = unix_command(&path, "show proc", Duration::from_secs(2)).unwrap();
        assert_eq!(answer, "got show proc\n");
        server.join().unwrap();
    }

    #[test]
    fn times_out_when_the_server_never_closes() {
        let (_dir, path) = sock();
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let err = unix_command(&path, "help", Duration::from_millis(150)).unwrap_err();
        assert!(matches!(err, CliError::Timeout { .. }), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn missing_socket_means_not_running_and_newlines_are_refused() {
        let err = unix_command(Path::new("/nonexistent/veza.sock"), "show proc", DEFAULT_TIMEOUT)
            .unwrap_err();
        assert!(err.is_not_running(), "{err}");
        assert!(err.to_string().contains("/nonexistent/veza.sock"), "{err}");
        let err = unix_command(Path::new("/x"), "show proc\nreload", DEFAULT_TIMEOUT).unwrap_err();
        assert!(matches!(err, CliError::BadCommand { .. }), "{err}");
    }
}
