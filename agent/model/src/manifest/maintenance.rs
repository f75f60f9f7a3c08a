//! Maintenance windows of an environment (`maintenance.windows`): when its disruptive
//! steps may run. The start is a classic cron expression read by the same engine as jobs
//! (`crate::schedule`), checked while deserializing so a bad one is located like any
//! other value; when a window is open is computed in `crate::window`.

use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;

use super::DurationSpec;
use crate::schedule::CronSchedule;

/// When disruptive steps of the environment may run.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    /// The windows. Outside all of them, steps that interrupt something running (a plain
    /// instance recreated or deleted, protected data snapshotted and changed, a device
    /// of a running instance or of a profile it uses changed or removed) wait; everything
    /// else (slot deploys, promotions, edge changes, jobs, new instances) proceeds. No
    /// windows: nothing waits.
    #[serde(default)]
    pub windows: Vec<Window>,
}

/// One recurring window, in the host's time zone.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// When it opens: a classic 5-field cron expression (`m h dom mon dow`) or an `@daily`
    /// style macro, read in the host's time zone, e.g. `"0 2 * * 6"` (Saturday 02:00).
    pub start: WindowStart,
    /// How long it stays open: more than zero, at most `7d`.
    pub duration: DurationSpec,
}

/// The start of a window: a cron expression, parsed while deserializing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct WindowStart(CronSchedule);

impl WindowStart {
    /// The parsed schedule.
    pub fn schedule(&self) -> &CronSchedule {
        &self.0
    }
}

impl TryFrom<String> for WindowStart {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.chars().any(char::is_control) {
            return Err(format!(
                "invalid window start `{}`: it contains a control character",
                s.escape_debug()
            ));
        }
        crate::schedule::parse(&s)
            .map(WindowStart)
            .map_err(|e| format!("invalid window start `{s}`: {e}"))
    }
}

impl fmt::Display for WindowStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

super::string_schema!(
    WindowStart,
    "CronStart",
    "A classic 5-field cron expression (`m h dom mon dow`) or an `@` macro (`@daily`, `@weekly`, ...)."
);
