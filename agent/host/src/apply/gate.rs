//! The health gate (its rule and its probes) and the verification through the edge
//! after a switch.

use std::collections::BTreeMap;
use std::time::Duration;

use veza_model::naming;
use veza_plan::desired::SlotSpec;
use veza_plan::plan::EdgeCheck;

use super::deploy::{exec_within, shell_quote};
use super::{Drivers, Edge, Hooks, StepError};
use crate::clock::Clock;
use crate::http::Probe;
use crate::incus::Incus;

/// What an in-slot probe's exec may take beyond the probe's own timeout (starting the
/// shell, Incus's own round trips).
const EXEC_MARGIN: Duration = Duration::from_secs(5);

/// One probe of a slot's health: on its loopback address from the host, or from inside
/// the slot for bridge-addressed slots.
async fn probe<I: Incus, P: Probe>(
    incus: &I,
    http: &P,
    instance: &str,
    slot: &SlotSpec,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(addr) = &slot.loopback {
        let r = http
            .get(addr, "localhost", &slot.health_path, timeout, false)
            .await
            .map_err(|e| e.to_string())?;
        if r.status != slot.expect_status {
            return Err(format!(
                "{} answered {} (expected {})",
                slot.health_path, r.status, slot.expect_status
            ));
        }
        if let Some(rel) = r.headers.get("x-release")
            && rel != slot.release.as_str()
        {
            return Err(format!("it reports release {rel}, not {}", slot.release));
        }
        return Ok(());
    }
    let url = format!("http://127.0.0.1:{}{}", slot.port, slot.health_path);
    let secs = timeout.as_secs().max(1);
    let script = format!(
        "if command -v curl >/dev/null 2>&1; then curl -s -o /dev/null -w '%{{http_code}}' --max-time {secs} {u}; \
         else timeout {secs} wget -q -S -O /dev/null {u} 2>&1 | awk '/^ *HTTP\\//{{c=$2}} END{{print c}}'; fi",
        u = shell_quote(&url)
    );
    // The command bounds itself; the exec is bounded too, so a hung exec cannot hold a
    // gate far past its deadline.
    let out = exec_within(incus, instance, &script, BTreeMap::new(), timeout + EXEC_MARGIN).await?;
    let code = out.trim();
    if code == slot.expect_status.to_string() {
        Ok(())
    } else {
        Err(format!("{} answered `{code}` (expected {})", slot.health_path, slot.expect_status))
    }
}

/// How long a slot must answer healthy, probe after probe, before its gate opens, at
/// the least: one good answer from a flapping slot is not health, and traffic moved on it
/// lands on a server HAProxy marks DOWN moments later.
pub const GATE_STABLE_FOR: Duration = Duration::from_secs(1);

/// Time between the gate's probes. The manifest's `health.interval` is the edge's check
/// interval (HAProxy `inter`); the gate probes faster so that a promotion does not wait
/// `rise × interval`.
pub const GATE_PROBE_EVERY: Duration = Duration::from_millis(200);

/// What HAProxy's own health checks said of the gated slot's server when its gate began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeView {
    /// HAProxy has no view of it: not in the running config (a new release's server), in
    /// maintenance (a `disabled` server is not checked), checks off, or no answer.
    Unknown,
    /// `UP`: its checks passed `rise` times and none failed since.
    Up,
    /// Anything else HAProxy checks: `DOWN`, going up or going down, draining.
    NotUp,
}

/// When the health gate opens: after `rise` consecutive healthy probes that also span
/// `stable_for` ([`GATE_STABLE_FOR`], or nothing for a slot HAProxy's checks already
/// hold healthy, see [`GateRule::for_slot`]). Any failed probe starts the count again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRule {
    /// Consecutive healthy probes required (at least 1).
    pub rise: u32,
    /// The least time between the first and the last of them.
    pub stable_for: Duration,
}

impl GateRule {
    /// The rule for a slot: `rise` probes in a row always; the [`GATE_STABLE_FOR`] window
    /// too, unless the slot was running before this run (`started_in_run` false) and
    /// HAProxy's own checks show its server `UP` — they already watched it pass `rise`
    /// checks, `inter` apart, so the window would only repeat them.
    pub fn for_slot(slot: &SlotSpec, started_in_run: bool, edge: EdgeView) -> GateRule {
        let checked = !started_in_run && edge == EdgeView::Up;
        GateRule {
            rise: slot.health_rise.max(1),
            stable_for: if checked { Duration::ZERO } else { GATE_STABLE_FOR },
        }
    }

    /// The shortest time in which the gate can open: `rise` probes [`GATE_PROBE_EVERY`]
    /// apart, and at least `stable_for`.
    pub fn least_time(&self) -> Duration {
        GATE_PROBE_EVERY.saturating_mul(self.rise.saturating_sub(1)).max(self.stable_for)
    }

    /// Whether `streak` consecutive healthy probes, the first of them `healthy_for` ago,
    /// open the gate.
    pub fn opens(&self, streak: u32, healthy_for: Duration) -> bool {
        streak >= self.rise && healthy_for >= self.stable_for
    }
}

/// The gate of `instance`: [`GateRule::for_slot`] with HAProxy's view of the slot's
/// server (read once, before the probes; an error reads as no view), then probes
/// [`GATE_PROBE_EVERY`] until the rule opens or `health_timeout` runs out.
pub(super) async fn health_gate<I: Incus, E: Edge, U, P: Probe, C: Clock, H: Hooks>(
    d: &Drivers<'_, I, E, U, P, C>,
    instance: &str,
    slot: &SlotSpec,
    started_in_run: bool,
    stoppable: bool,
    hooks: &H,
) -> Result<(), StepError> {
    let edge = if started_in_run {
        EdgeView::Unknown
    } else {
        let backend = naming::backend(&slot.env, &slot.app);
        let server = naming::server(slot.color, &slot.release);
        d.edge.server_view(&backend, &server).await.unwrap_or(EdgeView::Unknown)
    };
    let rule = GateRule::for_slot(slot, started_in_run, edge);
    let probe_timeout = Duration::from_millis(slot.health_timeout_ms.max(100));
    let least = rule.least_time();
    if least >= d.gates.health_timeout {
        return Err(StepError::Unhealthy(format!(
            "{} slot `{instance}` can never pass its gate: health.rise {} needs at least {least:?} \
             of probes, but promotion.health_timeout is {:?}; raise the timeout or lower rise",
            slot.color, rule.rise, d.gates.health_timeout
        )));
    }
    let deadline = d.clock.now() + d.gates.health_timeout;
    let mut last = String::from("no probe ran");
    let mut attempts = 0u32;
    let mut streak = 0u32;
    let mut healthy_since = None;
    while d.clock.now() < deadline {
        // Waiting on a slot traffic would move to moves nothing: a newer commit or a stop
        // request ends the wait. A serving slot's gate (after its redeploy) runs to its
        // end: its release mark is written, so nothing would gate it again.
        if stoppable && hooks.preempted() {
            return Err(StepError::Preempted);
        }
        if stoppable && hooks.stop_requested() {
            return Err(StepError::Stopped);
        }
        attempts += 1;
        match probe(d.incus, d.probe, instance, slot, probe_timeout).await {
            Ok(()) => {
                streak += 1;
                let since = *healthy_since.get_or_insert_with(|| d.clock.now());
                let healthy_for = d.clock.now().saturating_duration_since(since);
                if rule.opens(streak, healthy_for) {
                    return Ok(());
                }
                last = format!(
                    "{streak} of {} healthy probes in a row, healthy for {} ms of the {} ms required",
                    rule.rise,
                    healthy_for.as_millis(),
                    rule.stable_for.as_millis()
                );
            }
            Err(e) => {
                streak = 0;
                healthy_since = None;
                last = e;
            }
        }
        d.clock.sleep(GATE_PROBE_EVERY).await;
    }
    Err(StepError::Unhealthy(format!(
        "{} slot `{instance}` (release {}) was not healthy after {:?} ({attempts} probes; last: {last})",
        slot.color,
        slot.release.short(),
        d.gates.health_timeout
    )))
}

/// Requests through the edge (over TLS to an environment that terminates it): every one
/// must succeed (< 500) and, when the app reports its release in `X-Release`, reach the
/// expected release.
pub(super) async fn verify_edge<P: Probe>(
    http: &P,
    check: &EdgeCheck,
    n: u32,
    timeout: Duration,
) -> Result<(), String> {
    let release = check.release.as_str();
    for i in 0..n.max(1) {
        let r = http
            .get(&check.listen, &check.host, &check.path, timeout, check.tls)
            .await
            .map_err(|e| e.to_string())?;
        if r.status >= 500 {
            return Err(format!("request {} through the edge answered {}", i + 1, r.status));
        }
        if let Some(rel) = r.headers.get("x-release")
            && rel != release
        {
            return Err(format!(
                "request {} through the edge reached release {rel}, not {release}",
                i + 1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_after_rise_healthy_probes_spanning_the_stable_time() {
        let ms = Duration::from_millis;
        let rule = |rise| GateRule { rise, stable_for: ms(1000) };
        // (rise, healthy probes in a row, healthy for, opens)
        let table = [
            (2, 1, ms(5000), false), // one probe is not a streak, however long ago
            (2, 2, ms(999), false),  // enough probes, not yet long enough
            (2, 2, ms(1000), true),
            (2, 6, ms(1000), true),
            (10, 6, ms(1000), false), // a larger rise waits for more probes
            (10, 10, ms(1800), true),
            (1, 1, ms(1000), true),
            (1, 0, ms(1000), false), // no healthy probe at all
        ];
        for (rise, streak, healthy_for, opens) in table {
            assert_eq!(
                rule(rise).opens(streak, healthy_for),
                opens,
                "rise {rise}, streak {streak}, healthy for {healthy_for:?}"
            );
        }
        // The least time the gate needs (checked against promotion.health_timeout).
        for (rise, least) in
            [(1, ms(1000)), (2, ms(1000)), (6, ms(1000)), (10, ms(1800)), (20, ms(3800))]
        {
            assert_eq!(rule(rise).least_time(), least, "rise {rise}");
        }
    }

    #[test]
    fn the_stable_window_is_skipped_only_for_a_running_slot_haproxy_holds_up() {
        use EdgeView::{NotUp, Unknown, Up};
        let ms = Duration::from_millis;
        let mut slot = crate::apply::tests::slot(veza_model::manifest::Color::Green);
        // (health.rise, started in this run, HAProxy's view, stable_for, least time)
        let table = [
            (2, false, Up, ms(0), ms(200)), // two healthy colors: rise probes only
            (1, false, Up, ms(0), ms(0)),
            (5, false, Up, ms(0), ms(800)),
            (2, true, Up, ms(1000), ms(1000)), // just started: HAProxy's UP predates it
            (2, false, Unknown, ms(1000), ms(1000)), // HAProxy does not know the server
            (2, false, NotUp, ms(1000), ms(1000)), // HAProxy sees it DOWN or flapping
            (2, true, Unknown, ms(1000), ms(1000)),
            (0, false, Up, ms(0), ms(0)), // rise 0 counts as 1
        ];
        for (rise, started, view, stable_for, least) in table {
            slot.health_rise = rise;
            let r = GateRule::for_slot(&slot, started, view);
            let case = format!("rise {rise}, started {started}, {view:?}");
            assert_eq!(r, GateRule { rise: rise.max(1), stable_for }, "{case}");
            assert_eq!(r.least_time(), least, "{case}");
        }
        // A server one probe short of `rise` does not open, whatever HAProxy says.
        let up = GateRule::for_slot(&slot, false, Up);
        assert!(!GateRule { rise: 2, ..up }.opens(1, ms(5000)));
        assert!(GateRule { rise: 2, ..up }.opens(2, ms(200)));
    }
}
