//! Maintenance windows in a plan: which steps are disruptive, which steps depend on
//! them, and the plan with every such step outside its environment's window held back
//! as a [`Waiting`] entry. Pure: the instant and the host's offset from UTC are
//! parameters ([`WindowClock`]), never read here.
//!
//! # What is disruptive
//!
//! A step is disruptive when it interrupts something running. Incus never restarts an
//! instance for a config change (a key that cannot change live waits for the next start)
//! and the agent never restarts one either, so what interrupts is:
//!
//! - deleting a plain (non-slot) instance, alone or to recreate it (image or type
//!   change), running or not;
//! - snapshotting protected data and the update that follows the snapshot;
//! - updating a running plain instance so that one of its own devices is changed or
//!   removed, or its profile list changes: Incus hot-unplugs the old device (a proxy's
//!   listener closes, a disk is unmounted, a NIC goes down) and plugs the new one;
//! - updating a profile so that one of its devices is changed or removed while an
//!   instance that uses it runs, unless every such instance is an idle slot (nothing is
//!   routed to it). A profile change hits both colors of an app at once, so blue/green
//!   does not shield the serving slot.
//!
//! Not disruptive: config-only changes (instance or profile), added devices, deploys
//! into slots (blue/green), health gates, promotions and edge changes, verification,
//! jobs, new instances, networks and profiles, starting a stopped instance, deleting an
//! unused profile, deleting a slot.
//!
//! # What waits with a held step
//!
//! - every later step on an instance whose deletion, creation or deploy is held (a
//!   recreate waits as a whole, with the job units, releases and edge config that go
//!   into it; a slot's health gate waits with its deploy);
//! - the deploy of a release whose migration is held;
//! - every edge step (an edge update, its verification, a promotion) after a held deploy,
//!   migration, health gate or edge step (the edge runs in an instance whose recreate
//!   waits), so traffic never moves to a slot that was not brought up and an update that
//!   waits is never verified; a promotion (one step: gates, switch, checks, fallback)
//!   waits as a whole;
//! - deleting a profile that an instance with a held step still uses.
//!
//! A step belongs to the environment that declares the resource (an instance or a
//! profile in its `incus` section; an instance no longer declared: its environment
//! mark); a dependant waits for its cause's environment. An environment that declares
//! no window holds nothing, and inside an open window nothing is held.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use veza_model::Manifest;
use veza_model::live::{Devices, LiveState, MARK_COLOR};
use veza_model::window::{Availability, availability, local_rfc3339};

use crate::plan::{Action, Plan, Step};

/// The instant and the host's time zone, as the binary read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowClock {
    /// Unix seconds.
    pub now: i64,
    /// The host's offset from UTC at `now`, seconds east.
    pub utc_offset_s: i32,
}

/// A step held until its environment's next maintenance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// The environment whose window it waits for.
    pub env: String,
    /// The step, as the plan had it.
    pub step: Step,
    /// Why it waits: what it interrupts, or the held step it depends on.
    pub because: String,
    /// When the next window opens, host local time, RFC 3339 (`None`: never again within
    /// the cron engine's range).
    pub next_open: Option<String>,
    /// The same instant, unix seconds.
    pub next_open_unix: Option<i64>,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.next_open {
            Some(at) => {
                writeln!(f, "waiting for window: {} (next opens at {at})", self.step.action)?
            }
            None => writeln!(
                f,
                "waiting for window: {} (no window of {} opens again)",
                self.step.action, self.env
            )?,
        }
        writeln!(
            f,
            "     because {} ({} is outside its maintenance windows)",
            self.because, self.env
        )
    }
}

/// Why a step interrupts something running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disruption {
    /// A plain instance is deleted (also the first half of a recreate).
    DeletesInstance,
    /// Protected data is snapshotted, then changed.
    ChangesProtectedData,
    /// A running plain instance has a device changed or removed, or its profiles change.
    ChangesDevices,
    /// A profile's device is changed or removed while these instances, which use it, run.
    ChangesProfileDevices(Vec<String>),
}

impl fmt::Display for Disruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disruption::DeletesInstance => f.write_str("it deletes a plain instance"),
            Disruption::ChangesProtectedData => {
                f.write_str("protected data is snapshotted, then changed")
            }
            Disruption::ChangesDevices => f.write_str(
                "a device of the running instance is changed or removed (unplugged live)",
            ),
            Disruption::ChangesProfileDevices(running) => write!(
                f,
                "a device of the profile is changed or removed while {} run(s) with it",
                running.join(", ")
            ),
        }
    }
}

/// Whether each step of `plan` is disruptive, and why (see the module documentation).
pub fn classify(plan: &Plan, live: &LiveState) -> Vec<Option<Disruption>> {
    let mut snapshotted: BTreeSet<&str> = BTreeSet::new();
    plan.steps
        .iter()
        .map(|s| match &s.action {
            Action::DeleteInstance { name } => live
                .instances
                .get(name)
                .filter(|l| !is_slot(l))
                .map(|_| Disruption::DeletesInstance),
            Action::Snapshot { instance, .. } => {
                snapshotted.insert(instance);
                Some(Disruption::ChangesProtectedData)
            }
            Action::UpdateInstance { name, profiles, devices, .. } => {
                if snapshotted.contains(name.as_str()) {
                    return Some(Disruption::ChangesProtectedData);
                }
                let l = live.instances.get(name)?;
                let unplugs = loses_a_device(&l.devices, devices) || &l.profiles != profiles;
                (l.is_running() && !is_slot(l) && unplugs).then_some(Disruption::ChangesDevices)
            }
            Action::UpdateProfile { name, devices, .. } => {
                let l = live.profiles.get(name)?;
                if !loses_a_device(&l.devices, devices) {
                    return None;
                }
                let running: Vec<String> = live
                    .instances
                    .values()
                    .filter(|i| {
                        i.is_running() && i.profiles.contains(name) && !is_idle_slot(i, live)
                    })
                    .map(|i| i.name.clone())
                    .collect();
                (!running.is_empty()).then_some(Disruption::ChangesProfileDevices(running))
            }
            _ => None,
        })
        .collect()
}

/// Whether a device `live` has is missing from, or different in, `wanted`.
fn loses_a_device(live: &Devices, wanted: &Devices) -> bool {
    live.iter().any(|(name, d)| wanted.get(name) != Some(d))
}

fn is_slot(i: &veza_model::live::LiveInstance) -> bool {
    i.config.contains_key(MARK_COLOR)
}

/// A slot the edge does not route to.
fn is_idle_slot(i: &veza_model::live::LiveInstance, live: &LiveState) -> bool {
    let (Some(env), Some(app), Some(color)) =
        (i.env(), i.config.get(veza_model::live::MARK_APP), i.config.get(MARK_COLOR))
    else {
        return false;
    };
    live.active_color(env, app).is_none_or(|c| c.as_str() != color)
}

/// Whether a step acts on the edge (installs its config, switches it, checks through it).
fn is_edge(action: &Action) -> bool {
    matches!(action, Action::InstallEdge { .. } | Action::VerifyEdge(_) | Action::Promote(_))
}

/// The `(env, app, release)` a slot step is about.
fn release_of(slot: &crate::desired::SlotSpec) -> (String, String, String) {
    (slot.env.clone(), slot.app.clone(), slot.release.as_str().to_string())
}

/// The environment a step belongs to: the manifest that declares its instance or
/// profile, else the instance's environment mark.
fn env_of(action: &Action, manifests: &[&Manifest], live: &LiveState) -> Option<String> {
    let declaring = |found: &dyn Fn(&Manifest) -> bool| {
        manifests.iter().find(|m| found(m)).map(|m| m.metadata.name.clone())
    };
    if let Action::UpdateProfile { name, .. } = action {
        return declaring(&|m| m.incus.profiles.contains_key(name));
    }
    let name = *action.instances().first()?;
    declaring(&|m| m.incus.instances.contains_key(name))
        .or_else(|| live.instances.get(name).and_then(|l| l.env()).map(str::to_string))
}

/// Why a step waits, and for which environment's window.
#[derive(Debug, Clone)]
struct Cause {
    env: String,
    because: String,
    next_open: Option<i64>,
}

/// `plan` with every disruptive step outside its environment's window, and every step
/// depending on one, moved into [`Plan::waiting`] (see the module documentation). The
/// windows are the manifests' (`maintenance.windows`); the order of what remains is kept.
pub fn hold(plan: Plan, live: &LiveState, manifests: &[&Manifest], clock: WindowClock) -> Plan {
    let disruptions = classify(&plan, live);
    let serving = super::edge_config::serving_instances(manifests, live);
    let created: BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateInstance { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let closed = |env: &str| -> Option<Option<i64>> {
        let m = manifests.iter().find(|m| m.metadata.name == env)?;
        match availability(&m.maintenance.windows, clock.now, clock.utc_offset_s)? {
            Availability::Open => None,
            Availability::Closed { next_open } => Some(next_open),
        }
    };
    let Plan { steps, refusals, drift, mut waiting, edge_takeover, cluster } = plan;
    let mut kept = Vec::with_capacity(steps.len());
    // Instances whose deletion, creation or release waits: later steps on them wait too.
    let mut blocked: BTreeMap<String, Cause> = BTreeMap::new();
    // Releases whose migration waits, and the first held slot step (the edge waits).
    let mut unmigrated: BTreeMap<(String, String, String), Cause> = BTreeMap::new();
    let mut slot_held: Option<Cause> = None;
    // The first held edge step: the edge steps after it (its verification) wait too.
    let mut edge_held: Option<Cause> = None;
    let mut held_instances: BTreeMap<String, Cause> = BTreeMap::new();
    for (step, disruption) in steps.into_iter().zip(disruptions) {
        let text = step.action.to_string();
        let own = disruption.and_then(|d| {
            let env = env_of(&step.action, manifests, live)?;
            let next_open = closed(&env)?;
            Some(Cause { env, because: d.to_string(), next_open })
        });
        let dependency = || -> Option<Cause> {
            let on_instance = step.action.instances().into_iter().find_map(|i| blocked.get(i));
            let by = |c: &Cause, what: String| Cause { because: what, ..c.clone() };
            if let Some(c) = on_instance {
                return Some(by(c, format!("it goes with `{}`, which waits", c.because)));
            }
            match &step.action {
                Action::DeployRelease { slot, .. } => unmigrated
                    .get(&release_of(slot))
                    .map(|c| by(c, "the migration of its release waits".to_string())),
                a if is_edge(a) => slot_held
                    .as_ref()
                    .map(|c| by(c, "a slot it routes to is not brought up yet".to_string()))
                    .or_else(|| {
                        edge_held
                            .as_ref()
                            .map(|c| by(c, format!("it goes with `{}`, which waits", c.because)))
                    }),
                // A serving slot goes only once the edge step moving traffic off it ran.
                Action::DeleteInstance { name }
                    if serving.contains_key(name) && !created.contains(name) =>
                {
                    edge_held.as_ref().map(|c| {
                        by(c, format!("traffic leaves it with `{}`, which waits", c.because))
                    })
                }
                Action::DeleteProfile { name } => held_instances
                    .iter()
                    .find(|(i, _)| {
                        live.instances.get(*i).is_some_and(|l| l.profiles.contains(name))
                    })
                    .map(|(i, c)| by(c, format!("`{i}`, which uses it, waits"))),
                _ => None,
            }
        };
        let Some(cause) = own.or_else(dependency) else {
            kept.push(step);
            continue;
        };
        // What this held step makes wait in turn: its dependants name it.
        let root = Cause { because: text.clone(), ..cause.clone() };
        match &step.action {
            Action::DeleteInstance { name } | Action::CreateInstance { name, .. } => {
                blocked.entry(name.clone()).or_insert_with(|| root.clone());
            }
            Action::Migrate { slot, .. } => {
                unmigrated.insert(release_of(slot), root.clone());
                slot_held.get_or_insert_with(|| root.clone());
            }
            Action::DeployRelease { instance, .. } => {
                blocked.entry(instance.clone()).or_insert_with(|| root.clone());
                slot_held.get_or_insert_with(|| root.clone());
            }
            Action::HealthGate(_) => {
                slot_held.get_or_insert_with(|| root.clone());
            }
            a if is_edge(a) => {
                edge_held.get_or_insert_with(|| root.clone());
            }
            _ => {}
        }
        for i in step.action.instances() {
            held_instances.entry(i.to_string()).or_insert_with(|| root.clone());
        }
        waiting.push(Waiting {
            env: cause.env.clone(),
            because: cause.because,
            next_open: cause.next_open.map(|t| local_rfc3339(t, clock.utc_offset_s)),
            next_open_unix: cause.next_open,
            step,
        });
    }
    // The takeover diff describes an edge step: it goes when that step waits.
    let edge_takeover = edge_takeover.filter(|_| {
        kept.iter().any(|s| matches!(s.action, Action::InstallEdge { .. } | Action::Promote(_)))
    });
    Plan { steps: kept, refusals, drift, waiting, edge_takeover, cluster }
}

#[cfg(test)]
mod tests;
