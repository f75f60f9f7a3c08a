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

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

/// Why a cron expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is empty or only whitespace.
    #[error("empty schedule: expected 5 fields (minute hour day-of-month month day-of-week)")]
    Empty,
    /// `@reboot` is valid cron but not a calendar schedule.
    #[error(
        "`@reboot` is not supported: it has no calendar equivalent (systemd uses `OnBootSec=`)"
    )]
    Reboot,
    /// An `@` macro other than the supported ones.
    #[error(
        "unknown macro `{0}`: expected one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually"
    )]
    UnknownMacro(String),
    /// Not exactly five whitespace-separated fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), found {found}{}: `{expr}`",
        field_count_hint(*.found)
    )]
    FieldCount {
        /// How many fields the expression has.
        found: usize,
        /// The expression as given.
        expr: String,
    },
    /// One field is invalid.
    #[error("{field} field: {reason}")]
    Field {
        /// Which of the five fields.
        field: CronField,
        /// What is wrong with it.
        reason: FieldError,
    },
    /// Every field is valid but no day matches: the selected days of the month do not exist
    /// in any selected month.
    #[error(
        "the schedule never fires: no day selected by the day-of-month field (`{dom}`) exists in the months selected by the month field (`{month}`)"
    )]
    NeverFires {
        /// The day-of-month field as written.
        dom: String,
        /// The month field as written.
        month: String,
    },
    /// The `cron` crate rejected our translation: a bug in this module, not in the input.
    #[error(
        "internal error: the cron crate rejected the translation `{translated}` of `{expr}`: {message}"
    )]
    Translation {
        /// The expression as given.
        expr: String,
        /// The 6-field expression handed to the crate.
        translated: String,
        /// The crate's message.
        message: String,
    },
}

fn field_count_hint(found: usize) -> &'static str {
    match found {
        6 | 7 => " (seconds and year fields are not supported)",
        _ => "",
    }
}

/// What is wrong with one field; displayed after `<field> field: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A list has an empty item (`1,,2`, `1,`) or a range misses an end (`1-`).
    #[error("empty value in `{0}`")]
    EmptyValue(String),
    /// A number outside the field's range.
    #[error("{value} is out of range {min}-{max}")]
    OutOfRange {
        /// The offending number as written.
        value: String,
        /// Smallest allowed value.
        min: u32,
        /// Largest allowed value.
        max: u32,
    },
    /// A token that is neither a number nor a name this field accepts.
    #[error("`{token}` is not a valid value{}", expected_names(*.field))]
    InvalidValue {
        /// The offending token.
        token: String,
        /// The field, to say which names would be accepted.
        field: CronField,
    },
    /// A step of zero (`*/0`).
    #[error("step 0 in `{0}`: the step must be at least 1")]
    ZeroStep(String),
    /// A step that is not a positive number (`*/x`, `1/2/3`).
    #[error("invalid step in `{0}`: expected `*/n`, `a-b/n` or `a/n` with a number n")]
    InvalidStep(String),
    /// A range whose start is after its end.
    #[error("reversed range `{0}`: the start must not be greater than the end")]
    ReversedRange(String),
    /// Quartz or other non-classic syntax.
    #[error("`{token}` is not supported: {why}")]
    Unsupported {
        /// The offending token.
        token: String,
        /// Why, and what to write instead.
        why: &'static str,
    },
}

fn expected_names(field: CronField) -> &'static str {
    match field {
        CronField::Month => " (expected 1-12 or jan-dec)",
        CronField::DayOfWeek => " (expected 0-7 or sun-sat)",
        _ => " (expected a number)",
    }
}

/// The five fields of a classic cron expression, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    /// Minute, 0-59.
    Minute,
    /// Hour, 0-23.
    Hour,
    /// Day of the month, 1-31.
    DayOfMonth,
    /// Month, 1-12 or `jan`-`dec`.
    Month,
    /// Day of the week, 0-7 or `sun`-`sat`; 0 and 7 are Sunday.
    DayOfWeek,
}

impl CronField {
    fn min(self) -> u32 {
        match self {
            CronField::DayOfMonth | CronField::Month => 1,
            _ => 0,
        }
    }

    fn max(self) -> u32 {
        match self {
            CronField::Minute => 59,
            CronField::Hour => 23,
            CronField::DayOfMonth => 31,
            CronField::Month => 12,
            CronField::DayOfWeek => 7,
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &MONTH_NAMES,
            CronField::DayOfWeek => &DOW_NAMES,
            _ => &[],
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Month names; index + 1 is the month number.
const MONTH_NAMES: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
/// Weekday names; the index is the cron number (0 = Sunday).
const DOW_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// systemd weekday names, indexed by cron number (0 = Sunday).
const SYSTEMD_DOW: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
/// Days in each month, with February counted as 29 (leap years exist).
const MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

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

/// Bits 0-6 set: every weekday (cron numbering, 0 = Sunday).
const FULL_WEEK: u64 = 0b111_1111;

/// One parsed field: its items (for rendering), the set of values it selects (bit v set when
/// value v is selected; day-of-week 7 is folded into 0) and Vixie's "starts with `*`" flag.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    kind: CronField,
    text: String,
    items: Vec<Item>,
    values: u64,
    star: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Star,
    Value(u32),
    Range(u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    base: Base,
    step: Option<u32>,
}

impl Field {
    fn parse(kind: CronField, text: &str) -> Result<Field, FieldError> {
        let mut items = Vec::new();
        for raw in text.split(',') {
            items.push(parse_item(kind, raw, text)?);
        }
        let mut values = 0u64;
        for item in &items {
            let (lo, hi, step) = item.bounds(kind);
            let mut v = lo;
            while v <= hi {
                values |= 1 << v;
                v += step;
            }
        }
        if kind == CronField::DayOfWeek && values & (1 << 7) != 0 {
            values = (values & !(1 << 7)) | 1;
        }
        Ok(Field { kind, text: text.to_string(), items, values, star: text.starts_with('*') })
    }

    fn contains(&self, v: u32) -> bool {
        v < 64 && self.values & (1 << v) != 0
    }

    /// The systemd token for this field (not used for day-of-week, which has no steps there).
    ///
    /// Steps are always rendered as bounded ranges, `start..last/n` (cron `*/5` in the hour
    /// field is `00..20/5`), never as systemd's open-ended `start/n`: systemd 252 computes
    /// the next match of an open-ended repetition by adding the step and letting `mktime`
    /// normalise the overflow, which skips the first match after a month change (`00/5` from
    /// `2026-11-30 20:00` gives `12-01 05:00`, not `00:00`; systemd issues #22665 and #40260).
    /// With an explicit end the overflow carries into the next day correctly.
    fn render(&self) -> String {
        if self.items.iter().any(|i| i.base == Base::Star && i.step.is_none()) {
            return "*".to_string();
        }
        self.items
            .iter()
            .map(|item| match (item.base, item.step) {
                (Base::Star, None) => "*".to_string(),
                (Base::Value(v), None) => format!("{v:02}"),
                (Base::Range(a, b), None) if a == b => format!("{a:02}"),
                (Base::Range(a, b), None) => format!("{a:02}..{b:02}"),
                (_, Some(n)) => {
                    let (start, end, _) = item.bounds(self.kind);
                    let last = start + (end - start) / n * n;
                    if last == start {
                        format!("{start:02}")
                    } else {
                        format!("{start:02}..{last:02}/{n}")
                    }
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Item {
    /// Inclusive bounds and step of the values this item selects.
    fn bounds(&self, kind: CronField) -> (u32, u32, u32) {
        let step = self.step.unwrap_or(1);
        match self.base {
            Base::Star => (kind.min(), kind.max(), step),
            Base::Value(v) if self.step.is_some() => (v, kind.max(), step),
            Base::Value(v) => (v, v, 1),
            Base::Range(a, b) => (a, b, step),
        }
    }
}

fn parse_item(kind: CronField, raw: &str, field_text: &str) -> Result<Item, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::EmptyValue(field_text.to_string()));
    }
    check_unsupported(kind, raw)?;
    let (base_text, step) = match raw.split_once('/') {
        None => (raw, None),
        Some((base, step)) => {
            if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
                return Err(FieldError::InvalidStep(raw.to_string()));
            }
            match step.parse::<u32>() {
                Ok(0) => return Err(FieldError::ZeroStep(raw.to_string())),
                Ok(n) => (base, Some(n)),
                // More digits than fit: larger than any field, so it selects the start only.
                Err(_) => (base, Some(u32::MAX / 2)),
            }
        }
    };
    let base = if base_text == "*" {
        Base::Star
    } else if let Some((a, b)) = base_text.split_once('-') {
        let (a, b) = (parse_value(kind, a, raw)?, parse_value(kind, b, raw)?);
        if a > b {
            return Err(FieldError::ReversedRange(raw.to_string()));
        }
        Base::Range(a, b)
    } else {
        let v = parse_value(kind, base_text, raw)?;
        if step.is_some() && kind == CronField::DayOfWeek {
            return Err(FieldError::Unsupported {
                token: raw.to_string(),
                why: "a start with a step is ambiguous in the day-of-week field (does it wrap to 7 = Sunday?); write a range such as `1-6/2` or a list",
            });
        }
        Base::Value(v)
    };
    Ok(Item { base, step })
}

fn check_unsupported(kind: CronField, raw: &str) -> Result<(), FieldError> {
    // `5L`, `15W`: digits followed by one Quartz letter (bytes, so any UTF-8 input is safe).
    let digits_then_letter = match raw.as_bytes().split_last() {
        Some((last, rest)) => {
            !rest.is_empty()
                && rest.iter().all(u8::is_ascii_digit)
                && matches!(last, b'L' | b'l' | b'W' | b'w')
        }
        None => false,
    };
    let quartz = matches!(kind, CronField::DayOfMonth | CronField::DayOfWeek)
        && (raw == "?"
            || raw.contains('#')
            || raw.eq_ignore_ascii_case("l")
            || raw.eq_ignore_ascii_case("lw")
            || digits_then_letter);
    if quartz {
        return Err(FieldError::Unsupported {
            token: raw.to_string(),
            why: "Quartz extensions (`L`, `W`, `#`, `?`) are not classic cron; list the days instead",
        });
    }
    Ok(())
}

fn parse_value(kind: CronField, token: &str, item: &str) -> Result<u32, FieldError> {
    if token.is_empty() {
        return Err(FieldError::EmptyValue(item.to_string()));
    }
    let (min, max) = (kind.min(), kind.max());
    if token.bytes().all(|b| b.is_ascii_digit()) {
        return match token.parse::<u32>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(FieldError::OutOfRange { value: token.to_string(), min, max }),
        };
    }
    let lower = token.to_ascii_lowercase();
    let names = kind.names();
    match names.iter().position(|n| *n == lower) {
        Some(i) => Ok(i as u32 + if kind == CronField::Month { 1 } else { 0 }),
        None => Err(FieldError::InvalidValue { token: token.to_string(), field: kind }),
    }
}

/// systemd weekday list in its Monday-first order; runs of three or more become `A..B`.
fn render_weekdays(values: u64) -> String {
    const MONDAY_FIRST: [u32; 7] = [1, 2, 3, 4, 5, 6, 0];
    let selected: Vec<bool> = MONDAY_FIRST.iter().map(|d| values & (1 << d) != 0).collect();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < selected.len() {
        if !selected[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i + 1 < selected.len() && selected[i + 1] {
            i += 1;
        }
        let name = |k: usize| SYSTEMD_DOW[MONDAY_FIRST[k] as usize];
        match i - start {
            0 => parts.push(name(start).to_string()),
            1 => parts.push(format!("{},{}", name(start), name(i))),
            _ => parts.push(format!("{}..{}", name(start), name(i))),
        }
        i += 1;
    }
    parts.join(",")
}

/// `*` when the field selects every value, else an explicit comma list of numbers.
fn crate_list(field: &Field) -> String {
    let all = (field.kind.min()..=field.kind.max()).all(|v| field.contains(v));
    if all {
        return "*".to_string();
    }
    (field.kind.min()..=field.kind.max())
        .filter(|v| field.contains(*v))
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
