//! One field of a cron expression: its items (`*`, `a`, `a-b`, steps, names), the set of
//! values it selects, and its rendering in `OnCalendar=` and in the `cron` crate's dialect.

use std::fmt;

use super::FieldError;

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
pub(super) const SYSTEMD_DOW: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
/// Days in each month, with February counted as 29 (leap years exist).
pub(super) const MAX_DAYS: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// Bits 0-6 set: every weekday (cron numbering, 0 = Sunday).
pub(super) const FULL_WEEK: u64 = 0b111_1111;

/// One parsed field: its items (for rendering), the set of values it selects (bit v set when
/// value v is selected; day-of-week 7 is folded into 0) and Vixie's "starts with `*`" flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Field {
    pub(super) kind: CronField,
    pub(super) text: String,
    items: Vec<Item>,
    pub(super) values: u64,
    pub(super) star: bool,
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
    pub(super) fn parse(kind: CronField, text: &str) -> Result<Field, FieldError> {
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
                // A step near `u32::MAX` ends the walk rather than wrap to smaller values.
                let Some(next) = v.checked_add(step) else { break };
                v = next;
            }
        }
        if kind == CronField::DayOfWeek && values & (1 << 7) != 0 {
            values = (values & !(1 << 7)) | 1;
        }
        Ok(Field { kind, text: text.to_string(), items, values, star: text.starts_with('*') })
    }

    pub(super) fn contains(&self, v: u32) -> bool {
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
    pub(super) fn render(&self) -> String {
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
pub(super) fn render_weekdays(values: u64) -> String {
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
pub(super) fn crate_list(field: &Field) -> String {
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
