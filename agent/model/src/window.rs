//! When an environment's maintenance windows are open, and when the next one opens.
//!
//! Pure: the instant (`now`, unix seconds) and the host's offset from UTC (`offset_s`,
//! seconds east) are parameters; the binary reads both from the clock and the host's
//! time zone. A window's cron start is read in local wall-clock time: the instant is
//! shifted by the offset, the cron engine (`crate::schedule`, which reads its fields as
//! UTC wall-clock time) runs on the shifted time, and what it finds is shifted back. With
//! a fixed offset this is exact; across a daylight-saving change the offset in force at
//! `now` is used, so the one occurrence after the change is off by the change (an hour).
//!
//! A window is the half-open interval `[start, start + duration)`: open at its start,
//! closed at its end. Windows may overlap; several windows of an environment are open
//! when any of them is.

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};

use crate::manifest::Window;

/// Whether disruptive steps may run now, for an environment that declares windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// A window is open.
    Open,
    /// Every window is closed; the next one opens then (unix seconds; `None`: never again
    /// within the cron engine's range, which ends in 2100).
    Closed {
        /// Unix seconds.
        next_open: Option<i64>,
    },
}

fn utc(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t, 0)
}

impl Window {
    fn duration(&self) -> TimeDelta {
        TimeDelta::from_std(self.duration.get()).unwrap_or(TimeDelta::MAX)
    }

    /// Whether the window is open at `now` (unix seconds) on a host `offset_s` east of UTC.
    pub fn open_at(&self, now: i64, offset_s: i32) -> bool {
        let Some(local) = utc(now.saturating_add(i64::from(offset_s))) else { return false };
        // Open iff a start lies in (local - duration, local]: the first start strictly
        // after `local - duration` is at or before `local`.
        let Some(from) = local.checked_sub_signed(self.duration()) else { return false };
        self.start.schedule().next_after(from, 1).first().is_some_and(|s| *s <= local)
    }

    /// When the window next opens at or after `now`: `now` itself when it is open.
    pub fn next_open(&self, now: i64, offset_s: i32) -> Option<i64> {
        if self.open_at(now, offset_s) {
            return Some(now);
        }
        let offset = i64::from(offset_s);
        let local = utc(now.saturating_add(offset))?;
        let start = self.start.schedule().next_after(local, 1).into_iter().next()?;
        Some(start.timestamp() - offset)
    }
}

/// Whether disruptive steps of an environment may run at `now`; `None` when it declares
/// no windows (nothing waits).
pub fn availability(windows: &[Window], now: i64, offset_s: i32) -> Option<Availability> {
    if windows.is_empty() {
        return None;
    }
    if windows.iter().any(|w| w.open_at(now, offset_s)) {
        return Some(Availability::Open);
    }
    let next_open = windows.iter().filter_map(|w| w.next_open(now, offset_s)).min();
    Some(Availability::Closed { next_open })
}

/// `t` (unix seconds) as the host's wall-clock time with its offset, RFC 3339
/// (`2026-01-03T02:00:00+01:00`).
pub fn local_rfc3339(t: i64, offset_s: i32) -> String {
    match (utc(t), FixedOffset::east_opt(offset_s)) {
        (Some(t), Some(o)) => t.with_timezone(&o).to_rfc3339(),
        _ => t.to_string(),
    }
}

/// `t` (unix seconds) for a human: `2026-01-03 02:00 +01:00`.
pub fn local_time(t: i64, offset_s: i32) -> String {
    match (utc(t), FixedOffset::east_opt(offset_s)) {
        (Some(t), Some(o)) => t.with_timezone(&o).format("%Y-%m-%d %H:%M %:z").to_string(),
        _ => t.to_string(),
    }
}

#[cfg(test)]
mod tests;
