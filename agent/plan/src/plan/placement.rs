//! Placement on an Incus cluster: which member each new instance is created on, what the
//! plan cannot do because a member is offline, and what the operator should know about
//! where things run. Pure: the members and their status are live data
//! ([`LiveState::members`], observed only when the agent is configured for a cluster).
//!
//! # Rules
//!
//! - A new instance goes to its manifest's `target:` member. Without one, a slot goes to
//!   an online member other than the one its app's other color is on or is planned on
//!   (anti-affinity: losing one member never takes both colors), and any instance goes,
//!   among the members it may use, to the one it was on before (a recreate), else to the
//!   one with the fewest instances (ties: the first name).
//! - Nothing is scheduled onto a member that is not `Online`: a new instance whose
//!   `target:` is offline (or not a member) is not created, and every step on an instance
//!   that lives on an offline member is not run (Incus cannot reach it). Such steps, and
//!   every later step on the same instances (a deploy, a gate, a promotion through them,
//!   the edge's checks after an edge update that is not run), become one refusal per
//!   instance, naming the member and the steps.
//! - Reported (`Plan::cluster`): every instance of the manifests on an offline member,
//!   with what to do when it serves traffic; both colors of an app on one member; an
//!   instance on another member than its `target:` (the agent never moves instances);
//!   a `target:` on a host that is not configured for a cluster (ignored there).
//!
//! On a single host (no members) nothing changes but that last note, so a single host's
//! plans are what they were before placement existed.

use std::collections::BTreeMap;

use veza_model::manifest::Color;

use super::types::{Action, Refusal, Step};
use crate::desired::{Desired, DesiredInstance};
use crate::live::{LiveMember, LiveState};

/// The plan's steps after placement, and what it reports about the cluster.
pub(super) struct Placed {
    /// The steps that run, each creation with its member.
    pub steps: Vec<Step>,
    /// What is not done because of a member, one per instance.
    pub refusals: Vec<Refusal>,
    /// What the operator should know ([`super::Plan::cluster`]).
    pub notes: Vec<String>,
}

/// Places the creations of `steps` and drops what an offline member makes impossible
/// (see the module documentation).
pub(super) fn place(steps: Vec<Step>, desired: &Desired, live: &LiveState) -> Placed {
    let want = &desired.instances;
    if live.members.is_empty() {
        return single_host(steps, want);
    }
    let promoting: Vec<(&str, &str)> = steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::Promote(switch) => Some(switch),
            _ => None,
        })
        .flat_map(|s| s.promotions.iter().map(|p| (p.env.as_str(), p.app.as_str())))
        .collect();
    let mut notes = report(want, desired.edge_runs_in.as_deref(), &promoting, live);
    let slots: Slots<'_> = want
        .iter()
        .filter_map(|(name, d)| {
            let s = d.slot.as_ref()?;
            Some(((s.env.as_str(), s.app.as_str(), s.color), name.as_str()))
        })
        .collect();
    // Instances per member: live ones, then each placement as it is decided.
    let mut load: BTreeMap<&str, usize> = live.members.keys().map(|m| (m.as_str(), 0)).collect();
    for i in live.instances.values() {
        if let Some(n) = i.location.as_deref().and_then(|m| load.get_mut(m)) {
            *n += 1;
        }
    }
    // Where each instance is, or will be once created: the plan's own choices win.
    let mut planned: BTreeMap<String, String> = BTreeMap::new();
    // Instances no step may touch, with why (member offline, creation impossible).
    let mut blocked: BTreeMap<String, String> = live
        .instances
        .iter()
        .filter_map(|(name, i)| {
            let member = i.location.as_deref()?;
            let m = live.members.get(member)?;
            (!m.is_online()).then(|| {
                (name.clone(), format!("it is on member {}: not changed until it is back", down(m)))
            })
        })
        .collect();
    let mut skipped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut edge_skipped = None;
    let mut kept = Vec::with_capacity(steps.len());
    for mut step in steps {
        let text = step.action.to_string();
        let on_blocked = step
            .action
            .instances()
            .into_iter()
            .find(|i| blocked.contains_key(*i))
            .map(str::to_string);
        if let Some(name) = on_blocked {
            if matches!(step.action, Action::InstallEdge { .. } | Action::Promote(_)) {
                edge_skipped = Some(name.clone());
            }
            skipped.entry(name).or_default().push(text);
            continue;
        }
        if let (Action::VerifyEdge(_), Some(name)) = (&step.action, &edge_skipped) {
            skipped.entry(name.clone()).or_default().push(text);
            continue;
        }
        if let Action::CreateInstance { name, target, .. } = &mut step.action {
            match choose(name, want.get(name.as_str()), &slots, live, &planned, &load) {
                Ok(choice) => {
                    if let Some(note) = choice.note {
                        notes.push(note);
                    }
                    if let Some(n) = load.get_mut(choice.member.as_str()) {
                        *n += 1;
                    }
                    planned.insert(name.clone(), choice.member.clone());
                    *target = Some(choice.member);
                }
                Err(why) => {
                    blocked.insert(name.clone(), why);
                    skipped.entry(name.clone()).or_default().push(text);
                    continue;
                }
            }
        }
        kept.push(step);
    }
    let refusals = skipped
        .into_iter()
        .map(|(name, steps)| Refusal {
            resource: format!("instance {name}"),
            reason: format!(
                "{} (skipped: {})",
                blocked.get(&name).map_or("its member is offline", String::as_str),
                steps.join("; ")
            ),
        })
        .collect();
    Placed { steps: kept, refusals, notes }
}

/// A member that is not online, as the plan names it.
fn down(m: &LiveMember) -> String {
    if m.message.is_empty() {
        format!("`{}`, which is {}", m.name, m.status.to_lowercase())
    } else {
        format!("`{}`, which is {} ({})", m.name, m.status.to_lowercase(), m.message)
    }
}

/// The slot instances of the manifests by `(env, app, color)`.
type Slots<'a> = BTreeMap<(&'a str, &'a str, Color), &'a str>;

/// Where a creation goes, and what the plan should say about it.
struct Choice {
    member: String,
    note: Option<String>,
}

fn choose(
    name: &str,
    d: Option<&DesiredInstance>,
    slots: &Slots<'_>,
    live: &LiveState,
    planned: &BTreeMap<String, String>,
    load: &BTreeMap<&str, usize>,
) -> Result<Choice, String> {
    let members: Vec<&str> = live.members.keys().map(String::as_str).collect();
    if let Some(member) = d.and_then(|d| d.target.as_deref()) {
        return match live.members.get(member) {
            None => Err(format!(
                "its `target:` member `{member}` is not in the cluster (members: {}): fix the manifest",
                members.join(", ")
            )),
            Some(m) if !m.is_online() => {
                Err(format!("its `target:` member is {}: created once it is back", down(m)))
            }
            Some(_) => Ok(Choice { member: member.to_string(), note: None }),
        };
    }
    let online: Vec<&str> =
        live.members.values().filter(|m| m.is_online()).map(|m| m.name.as_str()).collect();
    if online.is_empty() {
        return Err("no member of the cluster is online: created once one is".to_string());
    }
    // The member of the app's other color, when this is a slot.
    let other = d.and_then(|d| d.slot.as_ref()).and_then(|slot| {
        let sibling: &str =
            slots.get(&(slot.env.as_str(), slot.app.as_str(), slot.color.other()))?;
        let at = planned
            .get(sibling)
            .map(String::as_str)
            .or_else(|| live.instances.get(sibling).and_then(|i| i.location.as_deref()))?;
        Some((sibling.to_string(), at.to_string()))
    });
    let allowed: Vec<&str> = match &other {
        Some((_, at)) if online.iter().any(|m| m != at) => {
            online.iter().copied().filter(|m| m != at).collect()
        }
        _ => online.clone(),
    };
    let before = live.instances.get(name).and_then(|i| i.location.as_deref());
    let least_loaded =
        || allowed.iter().copied().min_by_key(|m| (load.get(m).copied().unwrap_or(0), *m));
    let Some(member) = before.filter(|b| allowed.contains(b)).or_else(least_loaded) else {
        return Err("no member of the cluster is online: created once one is".to_string());
    };
    let note = match (&other, d.and_then(|d| d.slot.as_ref())) {
        (Some((sibling, at)), Some(slot)) if at == member => Some(format!(
            "both colors of {}/{} on member `{member}`: `{sibling}` is there and no other member is online; losing `{member}` takes both (once another member is back, delete the idle slot and the next sync recreates it there)",
            slot.env, slot.app
        )),
        _ => None,
    };
    Ok(Choice { member: member.to_string(), note })
}

/// What the operator should know about where the manifests' instances run.
fn report(
    want: &BTreeMap<String, DesiredInstance>,
    edge: Option<&str>,
    promoting: &[(&str, &str)],
    live: &LiveState,
) -> Vec<String> {
    let mut notes = Vec::new();
    // The members of each app's slots, by `(env, app)`.
    let mut colors: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (name, d) in want {
        let Some(l) = live.instances.get(name) else { continue };
        let Some(member) = l.location.as_deref() else { continue };
        if let Some(m) = live.members.get(member).filter(|m| !m.is_online()) {
            let serving =
                d.slot.as_ref().filter(|s| live.active_color(&s.env, &s.app) == Some(s.color));
            notes.push(match serving {
                Some(s) if promoting.contains(&(s.env.as_str(), s.app.as_str())) => format!(
                    "instance `{name}` is on member {}: it serves {}/{}, which gets no answer from it until this plan's promotion moves the traffic",
                    down(m),
                    s.env,
                    s.app,
                ),
                Some(s) => format!(
                    "instance `{name}` is on member {}: it serves {}/{}, which gets no answer from it; if the member stays down, promote the {} slot (`active: {}`)",
                    down(m),
                    s.env,
                    s.app,
                    s.color.other(),
                    s.color.other()
                ),
                None if edge == Some(name.as_str()) => format!(
                    "instance `{name}` is on member {}: the edge runs there, so no app gets traffic until it is back (runbook, \"Running on an Incus cluster\")",
                    down(m)
                ),
                None => format!("instance `{name}` is on member {}", down(m)),
            });
        }
        if let Some(target) = d.target.as_deref().filter(|t| *t != member) {
            let how = if d.slot.is_some() {
                "delete it while it is the idle color and the next sync recreates it there"
            } else {
                "stop it and `incus move` it with `--target`"
            };
            notes.push(format!(
                "instance `{name}` is on member `{member}`, its `target:` is `{target}`: the agent does not move instances ({how})"
            ));
        }
        if let Some(slot) = &d.slot
            && d.target.is_none()
            && l.is_owned()
        {
            colors.entry((slot.env.as_str(), slot.app.as_str())).or_default().push(member);
        }
    }
    for ((env, app), slots) in colors {
        if let [a, b] = slots.as_slice()
            && a == b
        {
            notes.push(format!(
                "both colors of {env}/{app} run on member `{a}`: losing it takes both (delete the idle slot and the next sync recreates it on another member)"
            ));
        }
    }
    notes
}

/// On a single host: creations as planned, a note for each `target:` ignored.
fn single_host(steps: Vec<Step>, want: &BTreeMap<String, DesiredInstance>) -> Placed {
    let notes = steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateInstance { name, .. } => {
                let target = want.get(name)?.target.as_deref()?;
                Some(format!(
                    "instance `{name}`: `target: {target}` is ignored: this agent is not configured for a cluster (`cluster:` in the host configuration)"
                ))
            }
            _ => None,
        })
        .collect();
    Placed { steps, refusals: Vec::new(), notes }
}

#[cfg(test)]
mod tests;
