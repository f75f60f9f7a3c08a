//! Processes as tests see them: liveness (not a zombie, not a newer process reusing the
//! pid) and a bounded kill. A leaf of the kit: `app`, `haproxy` and `incus` use it.

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
