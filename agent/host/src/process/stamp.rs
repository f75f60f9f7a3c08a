//! Which process wrote something: its pid, when it started (clock ticks after boot,
//! field 22 of `/proc/<pid>/stat`) and the boot it started in. A pid alone names a later
//! process after a reboot or once pids wrap; the three together name one process.
//!
//! Read from `/proc` only (no command runs).

/// A process as the kernel knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Its pid.
    pub pid: u32,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id` when it ran.
    pub boot_id: String,
}

/// This process's stamp (`None` where `/proc` cannot be read).
pub fn own() -> Option<Stamp> {
    let pid = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, _, start_ticks) = parse_stat(&stat)?;
    Some(Stamp { pid, start_ticks, boot_id: boot_id()? })
}

/// Whether the process `pid` (started at `start_ticks` in boot `boot_id`, where they are
/// known) still runs as `name`, not a zombie. What is not known is not compared: a stamp
/// written by an older agent (a pid only) is judged by the pid and the name.
pub fn still_running(pid: u32, start_ticks: Option<u64>, boot: Option<&str>, name: &str) -> bool {
    if boot.is_some_and(|b| boot_id().is_some_and(|now| now != b)) {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some((comm, state, start)) = parse_stat(&stat) else { return false };
    comm == name && !matches!(state, 'Z' | 'X' | 'x') && start_ticks.is_none_or(|t| t == start)
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// `pid (comm) state ppid … starttime …`: the name (which may hold spaces and
/// parentheses), the state and the start time (field 22). The fields after the name
/// follow the last `)`.
fn parse_stat(stat: &str) -> Option<(&str, char, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat.get(open + 1..close)?;
    let mut fields = stat.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4 to 21 lie between the state (3) and the start time (22).
    let start = fields.nth(18)?.parse().ok()?;
    Some((comm, state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_state_and_start_time() {
        let line = "4242 (veza agent) (x)) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 987654 12345 200 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("veza agent) (x)", 'S', 987654)));
        assert_eq!(parse_stat("12 (short) R 1 2"), None);
        assert_eq!(parse_stat("no parentheses"), None);
    }

    #[test]
    fn this_process_is_running_under_its_stamp_and_not_under_another() {
        let me = own().expect("/proc is readable in tests");
        let name = std::fs::read_to_string(format!("/proc/{}/comm", me.pid)).expect("comm");
        let name = name.trim();
        let boot = Some(me.boot_id.as_str());
        assert!(still_running(me.pid, Some(me.start_ticks), boot, name));
        assert!(still_running(me.pid, None, None, name), "a pid-only stamp");
        assert!(!still_running(me.pid, Some(me.start_ticks + 1), boot, name), "another start");
        assert!(!still_running(me.pid, Some(me.start_ticks), Some("another boot"), name));
        assert!(!still_running(me.pid, Some(me.start_ticks), boot, "veza-agent-other"));
        assert!(!still_running(0, None, None, name), "no process has pid 0");
    }
}
