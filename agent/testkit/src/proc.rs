//! Processes as tests see them: liveness (not a zombie, not a newer process reusing the
//! pid), a bounded kill, and a kill -9 at a precise moment ([`Killer`]). A leaf of the kit:
//! `app`, `haproxy` and `incus` use it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veza_host::process::Cmd;

/// Whether `pid` is a live process (not a zombie) that started no later than
/// `created` (unix seconds, with slack), i.e. not a newer process reusing the pid.
pub fn process_alive_since(pid: u32, created: Option<u64>) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // Fields after the parenthesised command name: state is the 1st, starttime the 20th.
    let Some((_, rest)) = stat.rsplit_once(") ") else { return true };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return false;
    }
    let (Some(created), Some(start_ticks)) =
        (created, fields.get(19).and_then(|s| s.parse::<u64>().ok()))
    else {
        return true;
    };
    match boot_time() {
        // /proc reports start times in USER_HZ, which is 100 on Linux.
        Some(btime) => btime + start_ticks / 100 <= created + 2,
        None => true,
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn process_alive(pid: u32) -> bool {
    process_alive_since(pid, None)
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|s| s.trim().parse().ok())
}

/// Sends `signal` (e.g. `TERM`) to `pid` with `kill`, then waits up to `grace` for it to
/// die, and sends `KILL` if it did not.
pub fn kill_pid(pid: u32, signal: &str, grace: Duration) {
    if !process_alive(pid) {
        return;
    }
    let _ = Cmd::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).run();
    let start = Instant::now();
    while start.elapsed() < grace {
        if !process_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Cmd::new("kill").arg("-KILL").arg(pid.to_string()).run();
}

/// Waits (up to 10 s) for `pid` to be gone after a kill -9; panics if it survives.
pub fn wait_dead(pid: u32) {
    let start = Instant::now();
    while process_alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(10), "pid {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILL for `pid` with no process start in between: a shell blocked reading a FIFO
/// kills the moment [`Killer::fire`] writes to it.
pub struct Killer {
    fifo: PathBuf,
    shell: u32,
}

impl Killer {
    /// Starts the shell that will kill `pid`, its FIFO in `dir`. Panics when it cannot.
    pub fn arm(dir: &Path, pid: u32) -> Killer {
        let fifo = dir.join(format!("kill-{pid}.fifo"));
        Cmd::new("mkfifo").arg(&fifo).run().expect("mkfifo");
        let shell = Cmd::new("sh")
            .arg("-c")
            .arg(format!("read _ < '{}'; kill -9 {pid}", fifo.display()))
            .spawn_daemon(None)
            .expect("spawn the killer");
        Killer { fifo, shell }
    }

    /// Kills now.
    pub fn fire(&self) {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.fifo).expect("open fifo");
        f.write_all(b"now\n").expect("write fifo");
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        kill_pid(self.shell, "KILL", Duration::from_millis(100));
        let _ = std::fs::remove_file(&self.fifo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_of_self_zombies_and_reused_pids() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(0));
        let pid = Cmd::new("true").spawn_daemon(None).unwrap();
        // Never reaped by us: it becomes a zombie, which counts as dead.
        let start = Instant::now();
        while process_alive(pid) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!process_alive(pid));
        assert!(!process_alive_since(std::process::id(), Some(1000)));
    }
}
