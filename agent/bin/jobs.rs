//! Scheduled jobs as `status` and the metrics see them: the record of each job's last run
//! ([`record`], built at the end of a sync from `Units::job_run`) and the verdict on it
//! ([`health`], evaluated again whenever the record is read).
//!
//! # Rules
//!
//! - A job needs attention when its last run did not succeed (`Result=` other than
//!   `success`), when it declares `max_success_age` and its last success is older than
//!   that, or when its state could not be read or its timer is not active.
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
/// returned (its error as text); `prev` is the job's previous record, if any.
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
            job.last_result = Some(run.result.clone()).filter(|r| !r.is_empty());
            job.last_exit = run.exit_status;
            job.last_start = timestamp_text(&run.last_start);
            if run.result == "success"
                && let Some(t) = systemd_time(&run.last_start)
            {
                let t = t.timestamp();
                job.last_success_at = Some(job.last_success_at.map_or(t, |p| p.max(t)));
            }
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
