//! A job's last run as `systemctl show` prints it: what counts as a finished run (and its
//! result), and what is a run still in progress.

use std::collections::BTreeMap;

/// The last run of a job's service, as [`parse_job_run`] reads it.
///
/// systemd sets `Result=` back to `success` when a run starts, so a result is read only
/// for a finished run: the service at rest (`inactive` or `failed`) and its main process
/// exited after it started (or the run failed before its main process ran). While a run is
/// in progress nothing is known of its outcome: `running`, no result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobRun {
    /// `Result=` of the last finished run (`success`, `exit-code`, …); empty when no run
    /// finished since the target booted, or while one is in progress.
    pub result: String,
    /// Exit status of the last finished run's main process.
    pub exit_status: Option<i32>,
    /// When the last finished run started (as systemd prints it); empty when none (or
    /// while a run is in progress: systemd keeps the times of the current run only).
    pub last_start: String,
    /// Whether a run is in progress (the service is `activating`, `active`,
    /// `deactivating`, …): its outcome is not known yet.
    pub running: bool,
    /// When the run in progress started its main process (as systemd prints it); empty
    /// when none is in progress or it has not reached its main process yet.
    pub running_since: String,
    /// `ActiveState=` of the timer.
    pub timer_state: String,
    /// Next elapse as systemd prints it.
    pub next: String,
}

/// The properties `job_run` asks `systemctl show` for about a job's service: every one
/// [`parse_job_run`] reads from the service's text.
pub const SERVICE_PROPERTIES: [&str; 6] = [
    "ActiveState",
    "Result",
    "ExecMainStatus",
    "ExecMainStartTimestamp",
    "ExecMainStartTimestampMonotonic",
    "ExecMainExitTimestampMonotonic",
];

/// The properties `job_run` asks `systemctl show` for about a job's timer.
pub const TIMER_PROPERTIES: [&str; 2] = ["ActiveState", "NextElapseUSecRealtime"];

/// Reads `systemctl show` output of a job's service ([`SERVICE_PROPERTIES`]) and timer
/// ([`TIMER_PROPERTIES`]), in any order. A run counts as finished, with its `Result=`, only
/// when the service is at rest (`inactive` or `failed`) and its main process exited after
/// it started; a service that `failed` before its main process ran (an `ExecStartPre=`, a
/// sandbox that could not be set up) is a failed run without an exit status. Any other
/// state is a run in progress, whose `Result=` (reset to `success` when it started) says
/// nothing yet. An `ActiveState=` that is missing is neither.
pub fn parse_job_run(service: &str, timer: &str) -> JobRun {
    let props = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    };
    let s = props(service);
    let t = props(timer);
    let get = |key: &str| s.get(key).map_or("", String::as_str);
    let monotonic = |key: &str| get(key).parse::<u64>().unwrap_or(0);
    let state = get("ActiveState");
    let started = get("ExecMainStartTimestamp");
    let at_rest = matches!(state, "inactive" | "failed");
    let running = !state.is_empty() && !at_rest;
    let exit = monotonic("ExecMainExitTimestampMonotonic");
    let exited =
        !started.is_empty() && exit != 0 && exit >= monotonic("ExecMainStartTimestampMonotonic");
    let result = get("Result");
    let (result, exit_status, last_start) = if at_rest && exited {
        (result, get("ExecMainStatus").parse().ok(), started)
    } else if state == "failed" && !result.is_empty() && result != "success" {
        (result, None, "")
    } else {
        ("", None, "")
    };
    JobRun {
        result: result.to_string(),
        exit_status,
        last_start: last_start.to_string(),
        running,
        running_since: if running { started.to_string() } else { String::new() },
        timer_state: t.get("ActiveState").cloned().unwrap_or_default(),
        next: t.get("NextElapseUSecRealtime").cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `systemctl show` of a job's service, as systemd prints it at each point of a run
    /// (times in UTC; monotonic in µs since boot), then what is read from it.
    #[test]
    fn job_run_reads_a_result_only_once_the_run_finished() {
        const T1: &str = "Sun 2026-11-29 22:35:50 UTC";
        const T2: &str = "Sun 2026-11-29 23:00:00 UTC";
        const NEXT: &str = "Sun 2026-11-30 22:35:00 UTC";
        struct Case {
            what: &'static str,
            service: String,
            /// (result, exit status, last start, running, running since)
            want: (&'static str, Option<i32>, &'static str, bool, &'static str),
        }
        let show = |state: &str, result: &str, status: i32, start: &str, mono: (u64, u64)| {
            format!(
                "Result={result}\nExecMainStartTimestamp={start}\nExecMainStartTimestampMonotonic={}\nExecMainExitTimestampMonotonic={}\nExecMainStatus={status}\nActiveState={state}\n",
                mono.0, mono.1
            )
        };
        let cases = [
            Case {
                what: "never ran since boot: systemd's `Result=success` is no run",
                service: show("inactive", "success", 0, "", (0, 0)),
                want: ("", None, "", false, ""),
            },
            Case {
                what: "a failed run",
                service: show("failed", "exit-code", 3, T1, (100, 250)),
                want: ("exit-code", Some(3), T1, false, ""),
            },
            Case {
                what: "a successful run",
                service: show("inactive", "success", 0, T1, (100, 250)),
                want: ("success", Some(0), T1, false, ""),
            },
            Case {
                what: "a run in progress: systemd reset `Result=` to success when it started",
                service: show("activating", "success", 0, T2, (900, 0)),
                want: ("", None, "", true, T2),
            },
            Case {
                what: "a run whose main process exited, still stopping",
                service: show("deactivating", "success", 0, T2, (900, 950)),
                want: ("", None, "", true, T2),
            },
            Case {
                what: "at rest, yet the main process did not exit after this start",
                service: show("inactive", "success", 0, T2, (900, 250)),
                want: ("", None, "", false, ""),
            },
            Case {
                what: "failed before its main process ran (an ExecStartPre=)",
                service: show("failed", "exit-code", 0, "", (0, 0)),
                want: ("exit-code", None, "", false, ""),
            },
            Case {
                what: "no ActiveState: nothing is known",
                service: format!(
                    "Result=success\nExecMainStatus=0\nExecMainStartTimestamp={T1}\nExecMainStartTimestampMonotonic=100\nExecMainExitTimestampMonotonic=250\n"
                ),
                want: ("", None, "", false, ""),
            },
        ];
        let timer = format!("NextElapseUSecRealtime={NEXT}\nActiveState=active\n");
        for case in cases {
            let r = parse_job_run(&case.service, &timer);
            let got = (
                r.result.as_str(),
                r.exit_status,
                r.last_start.as_str(),
                r.running,
                r.running_since.as_str(),
            );
            assert_eq!(got, case.want, "{}", case.what);
            assert_eq!(
                (r.timer_state.as_str(), r.next.as_str()),
                ("active", NEXT),
                "{}",
                case.what
            );
        }
    }
}
