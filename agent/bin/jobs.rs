//! Scheduled jobs as `status` and the metrics see them: the record of each job's last run
//! ([`record`], built at the end of a sync from `Units::job_run`) and the verdict on it
//! ([`health`], evaluated again whenever the record is read).
//!
//! # Rules
//!
//! - A job needs attention when its last run did not succeed (`Result=` other than
//!   `success`), when it declares `max_success_age` and its last success is older than
//!   that, or when its state could not be read or its timer is not active.
//! - A run counts once it finished ([`JobRun`]: the service at rest, its main process
//!   exited): systemd sets `Result=` back to `success` when a run starts, so a run in
//!   progress is `running`, never a success at its start. Meanwhile the previous record's
//!   last finished run stands (a failed drill that runs again is still failing, and its
//!   staleness still counts from the last real success).
//! - A job that never succeeded is stale once the agent has known it for longer than
//!   `max_success_age` (counted from [`JobState::first_seen_at`]), so a weekly drill that was
//!   just installed is not reported before it had a chance to run.
//! - systemd only reports the *last* run, so the last success is remembered across syncs:
//!   after a failure, or after the target rebooted (which forgets the service's last run),
//!   the previous record's `last_success_at` still counts.
//!
//! The verdict recorded at sync time ([`JobState::problem`]) is never less severe than
//! [`health`] at a later time: a failure stays a failure, and staleness only grows until
//! the next sync replaces the record.
//!
//! This module depends on library crates only (no `crate::` paths), so the systemd
//! integration tests compile it as is and check the verdicts on real `systemctl` output.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use veza_host::systemd::JobRun;
use veza_state::JobState;

/// The record of one job from its last observation. `run` is what `Units::job_run`
/// returned (its error as text); `prev` is the job's previous record, if any (its last
/// success, and its last finished run while another is in progress).
pub fn record(
    target: &str,
    schedule: &str,
    max_success_age: Option<Duration>,
    run: Result<&JobRun, String>,
    prev: Option<&JobState>,
    now: i64,
) -> JobState {
    let mut job = JobState {
        target: target.to_string(),
        schedule: schedule.to_string(),
        max_success_age_s: max_success_age.map(|d| d.as_secs()),
        first_seen_at: prev.and_then(|p| p.first_seen_at).or(Some(now)),
        last_success_at: prev.and_then(|p| p.last_success_at),
        ..JobState::default()
    };
    let observed = match run {
        Err(e) => Some(format!("status unknown: {e}")),
        Ok(run) => {
            job.next = timestamp_text(&run.next);
            if run.running {
                // Its outcome is not known yet (`Result=` says `success` until it ends):
                // the last finished run is still the one recorded before.
                job.running = true;
                job.running_since = timestamp_text(&run.running_since);
                if let Some(p) = prev {
                    job.last_result.clone_from(&p.last_result);
                    job.last_exit = p.last_exit;
                    job.last_start.clone_from(&p.last_start);
                }
            } else {
                job.last_result = Some(run.result.clone()).filter(|r| !r.is_empty());
                job.last_exit = run.exit_status;
                job.last_start = timestamp_text(&run.last_start);
                if run.result == "success"
                    && let Some(t) = systemd_time(&run.last_start)
                {
                    let t = t.timestamp();
                    job.last_success_at = Some(job.last_success_at.map_or(t, |p| p.max(t)));
                }
            }
            job.unscheduled = !matches!(run.timer_state.as_str(), "active" | "");
            match run.timer_state.as_str() {
                "active" => None,
                "" => Some("timer state unknown: the job may not be scheduled".to_string()),
                other => Some(format!("timer is {other}: the job is not scheduled")),
            }
        }
    };
    job.problem = failure(&job).or_else(|| staleness(&job, now)).or(observed);
    job
}

/// Why the job needs a human at `now`, if it does (see the module docs for the rules).
pub fn health(job: &JobState, now: i64) -> Option<String> {
    failure(job).or_else(|| staleness(job, now)).or_else(|| job.problem.clone())
}

fn failure(job: &JobState) -> Option<String> {
    let result = job.last_result.as_deref().filter(|r| *r != "success")?;
    Some(match job.last_exit {
        Some(code) => format!("last run failed ({result}, exit status {code})"),
        None => format!("last run failed ({result})"),
    })
}

fn staleness(job: &JobState, now: i64) -> Option<String> {
    let max = i64::try_from(job.max_success_age_s?).unwrap_or(i64::MAX);
    match job.last_success_at {
        Some(t) if now.saturating_sub(t) > max => {
            Some(format!("last success {} ago (max {})", span(now.saturating_sub(t)), span(max)))
        }
        Some(_) => None,
        None => {
            let known = now.saturating_sub(job.first_seen_at.unwrap_or(now));
            (known > max)
                .then(|| format!("no successful run in {} (max {})", span(known), span(max)))
        }
    }
}

/// A duration for humans, in at most two units: `9 d`, `8 d 23 h`, `2 h 5 min`, `45 s`.
pub fn span(secs: i64) -> String {
    let secs = secs.max(0);
    let units = [("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (name, size) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{} {name}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            break; // only adjacent units: `8 d 5 min` would read as precise
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// A timestamp as `systemctl show` prints it (`Sun 2026-11-29 22:35:50 UTC`), read only
/// when it is in UTC: other zones are abbreviations (`CET`) that do not name an offset.
pub fn systemd_time(s: &str) -> Option<DateTime<Utc>> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_weekday, date, time, zone] = parts[..] else { return None };
    if zone != "UTC" && zone != "GMT" {
        return None;
    }
    let naive =
        NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M:%S").ok()?;
    Some(naive.and_utc())
}

/// RFC 3339 when systemd printed the time in UTC, systemd's text otherwise, `None` when empty.
fn timestamp_text(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    Some(match systemd_time(s) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => s.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use veza_host::systemd::Units;
    use veza_host::systemd::fake::FakeUnits;
    use veza_model::live::UnitTarget;

    const DAY: i64 = 86_400;
    const MIN: i64 = 60;

    /// A weekly restore drill (`max_success_age: 8d`, runs of 40 minutes) read by a sync
    /// after each thing that happens to it: what the sync records, and that the verdict
    /// (what `gate_on_jobs` reads) says the same at that time.
    #[test]
    fn a_run_in_progress_is_running_not_a_success() {
        type Event = fn(&FakeUnits, &UnitTarget, &str);
        struct Step {
            what: &'static str,
            event: Event,
            /// When the sync reads it.
            at: i64,
            last_success_at: Option<i64>,
            running: bool,
            last_result: Option<&'static str>,
            problem: Option<&'static str>,
        }
        const STALE: &str = "last success 9 d ago (max 8 d)";
        const FAILED: &str = "last run failed (exit-code, exit status 3)";
        let steps = [
            Step {
                what: "the drill ran and succeeded",
                event: |u, t, s| {
                    u.start_run(t, s, 0);
                    u.finish_run(t, s, "success", 0, 40 * MIN);
                },
                at: 60 * MIN,
                last_success_at: Some(0),
                running: false,
                last_result: Some("success"),
                problem: None,
            },
            Step {
                what: "nine days later the drill runs: no success at its start, still stale",
                event: |u, t, s| u.start_run(t, s, 9 * DAY),
                at: 9 * DAY + 10 * MIN,
                last_success_at: Some(0),
                running: true,
                last_result: Some("success"),
                problem: Some(STALE),
            },
            Step {
                what: "it failed",
                event: |u, t, s| u.finish_run(t, s, "exit-code", 3, 9 * DAY + 40 * MIN),
                at: 9 * DAY + 60 * MIN,
                last_success_at: Some(0),
                running: false,
                last_result: Some("exit-code"),
                problem: Some(FAILED),
            },
            Step {
                what: "run again by hand: still failing until it ends",
                event: |u, t, s| u.start_run(t, s, 9 * DAY + 120 * MIN),
                at: 9 * DAY + 125 * MIN,
                last_success_at: Some(0),
                running: true,
                last_result: Some("exit-code"),
                problem: Some(FAILED),
            },
            Step {
                what: "the target rebooted during that run: its last success is still day 0",
                event: |u, t, _| u.reboot(t),
                at: 9 * DAY + 180 * MIN,
                last_success_at: Some(0),
                running: false,
                last_result: None,
                problem: Some("last success 9 d 3 h ago (max 8 d)"),
            },
            Step {
                what: "the next drill succeeds",
                event: |u, t, s| {
                    u.start_run(t, s, 10 * DAY);
                    u.finish_run(t, s, "success", 0, 10 * DAY + 40 * MIN);
                },
                at: 10 * DAY + 60 * MIN,
                last_success_at: Some(10 * DAY),
                running: false,
                last_result: Some("success"),
                problem: None,
            },
        ];
        let units = FakeUnits::new();
        let target = UnitTarget::Host;
        let (service, timer) = ("veza-job-prod-dr-drill.service", "veza-job-prod-dr-drill.timer");
        let rt = veza_host::incus::runtime().expect("runtime");
        rt.block_on(units.install(&target, &[], &[timer.to_string()])).expect("install");
        let max_age = Some(Duration::from_secs(8 * DAY as u64));
        let mut prev: Option<JobState> = None;
        for step in steps {
            (step.event)(&units, &target, service);
            let run = rt.block_on(units.job_run(&target, service, timer));
            let run = run.as_ref().map_err(ToString::to_string);
            let job = record("host", "0 4 * * 0", max_age, run, prev.as_ref(), step.at);
            let got = (
                job.last_success_at,
                job.running,
                job.last_result.as_deref(),
                job.problem.as_deref(),
            );
            let want = (step.last_success_at, step.running, step.last_result, step.problem);
            assert_eq!(got, want, "{}: {job:?}", step.what);
            assert_eq!(health(&job, step.at).as_deref(), step.problem, "{}", step.what);
            assert_eq!(job.running_since.is_some(), step.running, "{}: {job:?}", step.what);
            prev = Some(job);
        }
    }
}
