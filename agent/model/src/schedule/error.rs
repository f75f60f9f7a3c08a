//! Why a cron expression was rejected: [`ScheduleError`] for the expression,
//! [`FieldError`] for one of its fields.

use super::CronField;

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
