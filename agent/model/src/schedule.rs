//! Cron schedules: classic 5-field cron to systemd `OnCalendar=` lines and next-run times.
//!
//! # Background
//!
//! Jobs in a manifest are written in classic (Vixie) cron, `minute hour day-of-month month
//! day-of-week`, because that is what operators know. The host runs them as systemd timers, so
//! each expression is translated into one or more `OnCalendar=` values that fire at exactly the
//! same instants. Next-run times are computed independently with the `cron` crate (6-field
//! dialect, 1 = Sunday), from the same parsed fields, and the integration tests check both
//! against the real `systemd-analyze calendar`.
//!
//! # Dialect
//!
//! - Fields: minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or `jan`-`dec`,
//!   day-of-week 0-7 or `sun`-`sat` (0 and 7 are Sunday). Names are case-insensitive.
//! - Items: `*`, `a`, `a-b`, `*/n`, `a-b/n`, `a/n` (= `a-<max>/n`, as in cronie and systemd),
//!   joined into lists with `,`. Steps become bounded systemd ranges (`*/15` → `00..45/15`),
//!   because systemd 252's open-ended `00/15` form skips runs after a month change.
//! - Day matching follows Vixie cron: when both day fields are restricted a day matches if
//!   *either* matches; a field whose text starts with `*` (including `*/n`) is unrestricted, and
//!   then both must match.
//! - Macros: `@hourly`, `@daily`, `@midnight`, `@weekly` (Sunday 00:00, not systemd's Monday),
//!   `@monthly`, `@yearly`, `@annually`.
//!
//! # Current limitations
//!
//! - Rejected on purpose: `@reboot` (no calendar equivalent), seconds and year fields, the
//!   Quartz extensions `L`, `W`, `#` and `?`, and `a/n` in the day-of-week field (cron
//!   implementations disagree on whether its range ends at Saturday or at 7 = Sunday).
//! - Expressions that can never fire (`0 0 30 2 *`) are rejected; `0 0 29 2 *` is accepted and
//!   fires in leap years only.
//! - [`CronSchedule::next_after`] reads the fields as UTC wall-clock time, whatever time zone the
//!   `OnCalendar=` lines carry, and the `cron` crate stops at the year 2100.

//!
//! # Layout
//!
//! This file: [`CronSchedule`], [`parse`], the `OnCalendar=` lines and next-run times.
//! `field.rs`: one field (items, values, names, steps) and its rendering; `error.rs`: why
//! an expression is rejected.

mod error;
mod field;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

pub use error::{FieldError, ScheduleError};
pub use field::CronField;
use field::{FULL_WEEK, Field, MAX_DAYS, SYSTEMD_DOW, crate_list, render_weekdays};

/// A parsed, validated classic cron schedule.
///
/// Build it with [`parse`] (or `str::parse`); `Display` gives back the expression as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    source: String,
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
    /// One `cron` crate schedule per `OnCalendar=` line, in the same order.
    crate_schedules: Vec<cron::Schedule>,
}

/// Parses a classic 5-field cron expression or an `@` macro.
///
/// ```
/// let s = veza_model::schedule::parse("0 2 * * 1-6").unwrap();
/// assert_eq!(s.on_calendar(None), ["Mon..Sat *-*-* 02:00:00 UTC"]);
/// ```
pub fn parse(expr: &str) -> Result<CronSchedule, ScheduleError> {
    let source = expr.trim();
    if source.is_empty() {
        return Err(ScheduleError::Empty);
    }
    let body = match source.strip_prefix('@') {
        Some(name) => expand_macro(name)?,
        None => source,
    };
    let parts: Vec<&str> = body.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = parts[..] else {
        return Err(ScheduleError::FieldCount { found: parts.len(), expr: source.to_string() });
    };
    let field = |kind, text| {
        Field::parse(kind, text).map_err(|reason| ScheduleError::Field { field: kind, reason })
    };
    let mut schedule = CronSchedule {
        source: source.to_string(),
        minute: field(CronField::Minute, minute)?,
        hour: field(CronField::Hour, hour)?,
        dom: field(CronField::DayOfMonth, dom)?,
        month: field(CronField::Month, month)?,
        dow: field(CronField::DayOfWeek, dow)?,
        crate_schedules: Vec::new(),
    };
    schedule.check_fires()?;
    schedule.crate_schedules = schedule.build_crate_schedules()?;
    Ok(schedule)
}

fn expand_macro(name: &str) -> Result<&'static str, ScheduleError> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "hourly" => "0 * * * *",
        "daily" | "midnight" => "0 0 * * *",
        "weekly" => "0 0 * * 0",
        "monthly" => "0 0 1 * *",
        "yearly" | "annually" => "0 0 1 1 *",
        "reboot" => return Err(ScheduleError::Reboot),
        _ => return Err(ScheduleError::UnknownMacro(format!("@{name}"))),
    })
}

impl CronSchedule {
    /// The `OnCalendar=` values (without the key) that together fire at exactly this schedule's
    /// instants, each ending in ` UTC` or in ` <tz>` when a time zone is given.
    ///
    /// Usually one line; two when both day fields are restricted (cron's day-of-month OR
    /// day-of-week rule, which systemd cannot express in one line).
    pub fn on_calendar(&self, tz: Option<&str>) -> Vec<String> {
        let zone = tz.unwrap_or("UTC");
        let time = format!("{}:{}:00", self.hour.render(), self.minute.render());
        let month = self.month.render();
        if self.day_or() {
            vec![
                format!("*-{month}-{} {time} {zone}", self.dom.render()),
                format!("{} *-{month}-* {time} {zone}", render_weekdays(self.dow.values)),
            ]
        } else {
            let prefix = if self.dow.values == FULL_WEEK {
                String::new()
            } else {
                format!("{} ", render_weekdays(self.dow.values))
            };
            vec![format!("{prefix}*-{month}-{} {time} {zone}", self.dom.render())]
        }
    }

    /// The first `n` instants strictly after `after`, in order, reading the fields as UTC.
    ///
    /// Fewer than `n` are returned only when the `cron` crate runs out of years (after 2100).
    pub fn next_after(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        // The first n of the union are among the first n of each line.
        let merged: BTreeSet<DateTime<Utc>> =
            self.crate_schedules.iter().flat_map(|s| s.after(&after).take(n)).collect();
        merged.into_iter().take(n).collect()
    }

    /// Vixie cron's rule: OR the day fields only when neither starts with `*`.
    fn day_or(&self) -> bool {
        !self.dom.star && !self.dow.star
    }

    fn check_fires(&self) -> Result<(), ScheduleError> {
        if self.day_or() {
            return Ok(());
        }
        let fires = (1..=12u32).filter(|m| self.month.contains(*m)).any(|m| {
            let last = MAX_DAYS.get(m as usize - 1).copied().unwrap_or(31);
            (1..=last).any(|d| self.dom.contains(d))
        });
        if fires {
            Ok(())
        } else {
            Err(ScheduleError::NeverFires {
                dom: self.dom.text.clone(),
                month: self.month.text.clone(),
            })
        }
    }

    /// The `cron` crate (6 fields, `sec min hour dom mon dow`, 1 = Sunday, day fields ANDed)
    /// translation: explicit lists of the values we computed, so the crate's own reading of
    /// steps and ranges never matters; weekdays by name, so its numbering never matters.
    fn build_crate_schedules(&self) -> Result<Vec<cron::Schedule>, ScheduleError> {
        let minute = crate_list(&self.minute);
        let hour = crate_list(&self.hour);
        let dom = crate_list(&self.dom);
        let month = crate_list(&self.month);
        let dow = if self.dow.values == FULL_WEEK {
            "*".to_string()
        } else {
            (0..7)
                .filter(|d| self.dow.contains(*d))
                .map(|d| SYSTEMD_DOW[d as usize])
                .collect::<Vec<_>>()
                .join(",")
        };
        let lines = if self.day_or() {
            vec![
                format!("0 {minute} {hour} {dom} {month} *"),
                format!("0 {minute} {hour} * {month} {dow}"),
            ]
        } else {
            vec![format!("0 {minute} {hour} {dom} {month} {dow}")]
        };
        lines
            .into_iter()
            .map(|translated| {
                cron::Schedule::from_str(&translated).map_err(|e| ScheduleError::Translation {
                    expr: self.source.clone(),
                    message: e.to_string(),
                    translated,
                })
            })
            .collect()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for CronSchedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl TryFrom<String> for CronSchedule {
    type Error = ScheduleError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        parse(&s)
    }
}

#[cfg(test)]
mod tests;
