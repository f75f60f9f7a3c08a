//! A real HAProxy for tests: master-worker mode in a temporary directory, with the
//! master CLI on a unix socket, reloads that report failure, and the master killed by
//! pid on drop.
//!
//! Started as `haproxy -W -S <dir>/master.sock -f <dir>/haproxy.cfg -p <dir>/haproxy.pid`,
//! detached from the test's pipes with its output in `<dir>/haproxy.log`. Configs must
//! bind only to 127.0.0.1 ports (see [`crate::ports::free_port`]).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veza_host::process::Cmd;

use crate::proc::{kill_pid, process_alive};

const START_TIMEOUT: Duration = Duration::from_secs(10);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// A running haproxy master (and its worker), stopped on drop.
#[derive(Debug)]
pub struct Haproxy {
    dir: tempfile::TempDir,
    pid: u32,
}

/// The master line of `show proc`: reload count and failed reloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MasterState {
    reloads: u64,
    failed: u64,
}

impl Haproxy {
    /// Validates `cfg_text` with `haproxy -c`, writes it and starts haproxy.
    pub fn start(cfg_text: &str) -> Result<Haproxy> {
        Haproxy::start_with(|_| cfg_text.to_string())
    }

    /// Like [`Haproxy::start`], with the config built from the working directory (for
    /// stats sockets, state files or maps kept next to the config).
    pub fn start_with(cfg: impl FnOnce(&Path) -> String) -> Result<Haproxy> {
        let dir = tempfile::Builder::new().prefix("veza-haproxy-").tempdir()?;
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg(dir.path()))?;
        check_config(&cfg_path)?;
        let sock = dir.path().join("master.sock");
        let log = dir.path().join("haproxy.log");
        let pid = Cmd::new("haproxy")
            .arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", sock.display()))
            .arg("-f")
            .arg(&cfg_path)
            .arg("-p")
            .arg(dir.path().join("haproxy.pid"))
            .current_dir(dir.path())
            .spawn_daemon(Some(&log))?;
        let haproxy = Haproxy { dir, pid };
        let start = Instant::now();
        loop {
            if let Ok(procs) = haproxy.master_cli("show proc")
                && procs.lines().any(|l| l.split_whitespace().nth(1) == Some("worker"))
            {
                return Ok(haproxy);
            }
            if !process_alive(pid) {
                bail!("haproxy exited during startup:\n{}", haproxy.log());
            }
            if start.elapsed() > START_TIMEOUT {
                bail!(
                    "haproxy did not start a worker within {START_TIMEOUT:?}:\n{}",
                    haproxy.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The working directory (config, sockets, pid file, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file haproxy reads on start and reload.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.cfg")
    }

    /// The master CLI socket.
    pub fn master_socket(&self) -> PathBuf {
        self.dir.path().join("master.sock")
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything haproxy wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// Sends one command to the master CLI: write it and a newline, close the write
    /// half (otherwise the master keeps the connection open), read to EOF.
    /// Prefix with `@1 ` to address the current worker.
    pub fn master_cli(&self, cmd: &str) -> Result<String> {
        let sock = self.master_socket();
        let mut stream = UnixStream::connect(&sock)
            .with_context(|| format!("connecting to haproxy master CLI {}", sock.display()))?;
        stream.set_read_timeout(Some(CLI_TIMEOUT))?;
        stream.set_write_timeout(Some(CLI_TIMEOUT))?;
        stream.write_all(format!("{cmd}\n").as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        stream
            .take(4 << 20)
            .read_to_string(&mut out)
            .with_context(|| format!("reading the reply to `{cmd}` from the master CLI"))?;
        Ok(out)
    }

    fn master_state(&self) -> Result<MasterState> {
        let procs = self.master_cli("show proc")?;
        parse_master_state(&procs)
            .with_context(|| format!("unexpected `show proc` reply:\n{procs}"))
    }

    /// Reloads from the config file through the master CLI; fails (with the log) when
    /// the new config did not load. The old worker keeps serving in that case.
    pub fn reload(&self) -> Result<()> {
        let before = self.master_state()?;
        // The master re-executes itself and drops the connection; the reply is empty.
        let _ = self.master_cli("reload");
        let start = Instant::now();
        loop {
            if let Ok(now) = self.master_state()
                && now.reloads > before.reloads
            {
                if now.failed > before.failed {
                    bail!("haproxy reload failed:\n{}", self.log());
                }
                return Ok(());
            }
            if !process_alive(self.pid) {
                bail!("haproxy master exited during reload:\n{}", self.log());
            }
            if start.elapsed() > RELOAD_TIMEOUT {
                bail!("haproxy reload not confirmed within {RELOAD_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Validates `cfg_text`, writes it as the config, then reloads.
    pub fn reload_with(&self, cfg_text: &str) -> Result<()> {
        let next = self.dir.path().join("haproxy.cfg.next");
        std::fs::write(&next, cfg_text)?;
        check_config(&next)?;
        std::fs::rename(&next, self.config_path())?;
        self.reload()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGTERM to the master stops its workers too.
        kill_pid(self.pid, "TERM", Duration::from_secs(3));
    }
}

/// Runs `haproxy -c -f path`; the error carries haproxy's alerts.
pub fn check_config(path: &Path) -> Result<()> {
    Cmd::new("haproxy")
        .args(["-c", "-f"])
        .arg(path)
        .timeout(Duration::from_secs(30))
        .run()
        .with_context(|| format!("haproxy rejects {}", path.display()))?;
    Ok(())
}

/// Parses `<pid> master <reloads> [failed: <n>] …` from `show proc`.
fn parse_master_state(procs: &str) -> Option<MasterState> {
    let line = procs.lines().find(|l| l.split_whitespace().nth(1) == Some("master"))?;
    let mut words = line.split_whitespace().skip(2);
    let reloads = words.next()?.parse().ok()?;
    let failed = line.split("[failed:").nth(1)?.split(']').next()?.trim().parse().ok()?;
    Some(MasterState { reloads, failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_proc() {
        let procs = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
                     1038            master          15 [failed: 1]  0d00h03m09s     2.6.12-1+deb12u4\n\
                     # workers\n\
                     6605            worker          1               0d00h00m14s     2.6.12-1+deb12u4\n";
        assert_eq!(parse_master_state(procs), Some(MasterState { reloads: 15, failed: 1 }));
        assert_eq!(parse_master_state("# workers\n"), None);
    }
}
