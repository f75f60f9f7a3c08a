//! What the report says of the machine: CPU model and load.

use std::time::Duration;

use veza_host::process::Cmd;

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub(crate) fn first_line(cmd: Cmd) -> String {
    cmd.timeout(Duration::from_secs(30))
        .run_stdout()
        .map(|s| s.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
