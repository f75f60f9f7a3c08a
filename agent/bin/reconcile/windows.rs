//! Maintenance windows in a sync: the host's clock and time zone read once per run, the
//! planner's plan held for the windows (or run whole when an operator says `--now`), and
//! how what waits is recorded and told (outcome `waiting`, history, status, the forge).

use chrono::TimeZone as _;
use veza_plan::Plan;
use veza_plan::maintenance::{Waiting, WindowClock, hold};
use veza_state::WaitingStep;

/// How a run treats maintenance windows: when it runs, in which time zone, and whether
/// an operator asked to run held steps now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows {
    /// The instant and the host's offset from UTC.
    pub clock: WindowClock,
    /// `--now`: who asked to run disruptive steps outside their window.
    pub run_now_by: Option<String>,
}

impl Windows {
    /// At `now` (unix seconds), in the host's time zone (`TZ`, else `/etc/localtime`).
    pub fn at(now: i64, run_now_by: Option<String>) -> Windows {
        let utc_offset_s = chrono::Local
            .timestamp_opt(now, 0)
            .single()
            .map_or(0, |t| t.offset().local_minus_utc());
        Windows { clock: WindowClock { now, utc_offset_s }, run_now_by }
    }

    /// `plan` held for the manifests' windows; with `--now`, the whole plan and the steps
    /// that would have waited (run now, for the record).
    pub fn apply_to(
        &self,
        plan: Plan,
        live: &veza_plan::live::LiveState,
        manifests: &[&veza_model::Manifest],
    ) -> (Plan, Vec<Waiting>) {
        if self.run_now_by.is_none() {
            return (hold(plan, live, manifests, self.clock), Vec::new());
        }
        let held = hold(plan.clone(), live, manifests, self.clock);
        (plan, held.waiting)
    }
}

/// What the state keeps of the waiting steps (for `status` and the metrics).
pub fn recorded(waiting: &[Waiting]) -> Vec<WaitingStep> {
    waiting
        .iter()
        .map(|w| WaitingStep {
            env: w.env.clone(),
            step: w.step.action.to_string(),
            because: w.because.clone(),
            next_open: w.next_open.clone(),
            next_open_unix: w.next_open_unix,
        })
        .collect()
}

/// The one line a run whose steps wait is reported with (outcome line, history, the
/// commit status): `waiting for window, opens at …; N step(s) held: …`.
pub fn waiting_reason(waiting: &[WaitingStep]) -> String {
    let first =
        waiting.iter().filter(|w| w.next_open_unix.is_some()).min_by_key(|w| w.next_open_unix);
    let opens = match first {
        Some(w) => format!("opens at {} ({})", w.next_open.as_deref().unwrap_or_default(), w.env),
        None => "none opens again".to_string(),
    };
    let steps: Vec<&str> = waiting.iter().map(|w| w.step.as_str()).collect();
    format!("waiting for window, {opens}; {} step(s) held: {}", steps.len(), steps.join(", "))
}

/// The history's note of an override: who ran which held steps outside their window.
pub fn override_note(by: &str, released: &[Waiting]) -> String {
    let steps: Vec<String> = released.iter().map(|w| w.step.action.to_string()).collect();
    format!(
        "maintenance windows overridden by {by} (--now): ran {} held step(s): {}",
        steps.len(),
        steps.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(env: &str, text: &str, at: Option<(&str, i64)>) -> WaitingStep {
        WaitingStep {
            env: env.into(),
            step: text.into(),
            because: "b".into(),
            next_open: at.map(|(t, _)| t.to_string()),
            next_open_unix: at.map(|(_, u)| u),
        }
    }

    #[test]
    fn the_reason_names_the_earliest_opening_and_every_held_step() {
        // (waiting steps, the reason)
        let table = [
            (
                vec![
                    step("prod", "snapshot db (keep 3)", Some(("2026-01-04T02:00:00+01:00", 20))),
                    step("staging", "delete instance x", Some(("2026-01-03T23:00:00+01:00", 10))),
                ],
                "waiting for window, opens at 2026-01-03T23:00:00+01:00 (staging); 2 step(s) held: snapshot db (keep 3), delete instance x",
            ),
            (
                vec![step("prod", "delete instance x", None)],
                "waiting for window, none opens again; 1 step(s) held: delete instance x",
            ),
        ];
        for (waiting, want) in table {
            assert_eq!(waiting_reason(&waiting), want);
        }
    }
}
