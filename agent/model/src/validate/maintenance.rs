//! Rules of an environment's maintenance windows: a window lasts more than zero and at
//! most a week (its start, a cron expression, is checked while parsing).

use super::Rules;
use crate::manifest::Manifest;
use crate::path;

/// The longest window: a longer one would overlap itself every week.
const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

pub(super) fn check_maintenance(m: &Manifest, r: &mut Rules<'_>) {
    for (i, w) in m.maintenance.windows.iter().enumerate() {
        let d = w.duration.get();
        if d.is_zero() {
            r.value(
                path!["maintenance", "windows", i, "duration"],
                format!("window duration `{}` must be more than zero", w.duration),
            );
        } else if d > MAX_WINDOW {
            r.value(
                path!["maintenance", "windows", i, "duration"],
                format!(
                    "window duration `{}` is longer than a week (`7d`); to let disruptive steps run at any time, declare no window",
                    w.duration
                ),
            );
        }
    }
}
