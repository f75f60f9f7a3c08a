//! The planner: desired state × live state → an ordered list of typed actions, each with
//! its reason. Pure and deterministic: the same inputs give the same plan, byte for byte.
//!
//! Order: networks → profiles → protected data instances (snapshot first) → other
//! instances → app slots (create, migrate, deploy) → health gates of slots that keep
//! their traffic → the edge: one [`Action::Promote`] (gates of the new colors → switch →
//! verification through the edge → fallback) when a color changes, else an edge update
//! and its verification → jobs → prune. Anything the agent must not do (touch a foreign
//! resource, delete protected data, promote while a gating job fails) becomes a
//! [`Refusal`], reported and never executed.

use std::collections::{BTreeMap, BTreeSet};

use veza_model::Manifest;
use veza_model::manifest::Color;
use veza_model::naming;

use crate::desired::{DesiredInstance, SlotSpec, desired};
use crate::edge::EdgeSettings;
use crate::live::{LiveState, UnitTarget};

mod edge_config;
mod instance;
mod jobs;
pub mod maintenance;
mod placement;
mod types;

pub use edge_config::render_for;
use edge_config::{
    KeptSlot, RENDERED_HEADER, edge_listen, keep_live_releases, keep_serving_slots,
    serving_instances, serving_slots, takeover,
};
use instance::{diff_reason, plan_instance};
use jobs::{plan_jobs, plan_prune};
pub use types::{Action, EdgeCheck, Gate, Phase, Plan, Promotion, Refusal, Step, Switch};

/// What the planner needs besides desired and live state.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Paths the rendered HAProxy config refers to.
    pub edge_settings: EdgeSettings,
    /// Failing or stale jobs (`env/job` → why), for promotion gates.
    pub failing_jobs: BTreeMap<String, String>,
    /// Jobs (`env/job`) whose timer was last seen not active: their units are installed
    /// again (which enables and starts the timer).
    pub unscheduled_jobs: BTreeSet<String>,
    /// Digests of the secrets the manifests reference (never their values).
    pub secrets: crate::desired::SecretDigests,
    /// `(env, app, release)` whose migration already ran: not run again.
    pub migrated: BTreeSet<(String, String, String)>,
    /// The host's image mapping (`incus.images`): reference in the manifests → what
    /// Incus is asked for when an instance is created.
    pub images: BTreeMap<String, String>,
    /// Promotions whose edge switch was made and whose checks through the edge never
    /// passed (a killed run, a fallback that failed to install), by `(env, app)`: the
    /// color traffic goes back to. Each such app is promoted again from that color, even
    /// when the live config already routes to the target: no gate (the target has the
    /// traffic), its checks through the edge, and its fallback. An entry whose color is no
    /// longer deployed is ignored (nothing to go back to).
    pub unchecked: BTreeMap<(String, String), Color>,
    /// An edge switch with no color to go back to (a takeover, apps' first traffic)
    /// whose checks through the edge never passed. While the live config is not the one
    /// it replaced, its apps routed to their declared color are promoted again from none:
    /// no gate, their checks through the edge, and that config back if they fail.
    pub unchecked_edge: Option<EdgeRecheck>,
}

/// An edge switch owed its checks ([`PlanOptions::unchecked_edge`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EdgeRecheck {
    /// The apps it gave traffic, `(env, app)`.
    pub apps: BTreeSet<(String, String)>,
    /// The config live before it: what a failed check puts back.
    pub back_to: String,
}

/// Why planning failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// Building the desired state failed.
    #[error(transparent)]
    Desired(#[from] crate::desired::DesiredError),
    /// Rendering the edge failed.
    #[error("rendering the edge config failed: {0}")]
    Edge(#[from] crate::edge::RenderError),
}

struct Builder {
    steps: Vec<Step>,
    refusals: Vec<Refusal>,
}

impl Builder {
    fn step(&mut self, action: Action, reason: impl Into<String>) {
        self.steps.push(Step { action, reason: reason.into() });
    }
    /// A health gate on a slot that serves (or serves again on a fallback), redeployed by
    /// this plan with `slot`'s release: `active` names it the active slot, otherwise the
    /// serving one (a promotion's source, or an owed switch's target).
    fn gate_serving(&mut self, instance: String, slot: SlotSpec, active: bool) {
        let reason = format!(
            "the {} slot was redeployed with release {}",
            if active { "active" } else { "serving" },
            slot.release.short()
        );
        self.step(Action::HealthGate(Gate { instance, slot, serving: true }), reason);
    }
    fn refuse(&mut self, resource: impl Into<String>, reason: impl Into<String>) {
        self.refusals.push(Refusal { resource: resource.into(), reason: reason.into() });
    }
}

/// Puts each app's migration before the first deploy of a release it has not run for
/// (once per `(env, app, release)`, whichever color deploys it first). A slot rebuilt with
/// the release it already runs (an environment or secret change) migrates nothing: that
/// release ran against this database before, and an older release's migration must not
/// run after a newer one's.
fn insert_migrations(
    steps: &mut Vec<Step>,
    migrated: &BTreeSet<(String, String, String)>,
    live: &LiveState,
) {
    let mut planned = BTreeSet::new();
    let mut out = Vec::with_capacity(steps.len());
    for step in steps.drain(..) {
        if let Action::DeployRelease { instance, slot, .. } = &step.action
            && let Some(m) = &slot.migrate
        {
            let key = (slot.env.clone(), slot.app.clone(), slot.release.to_string());
            let ran_here = live
                .instances
                .get(instance)
                .and_then(|l| l.release())
                .is_some_and(|r| r == slot.release.as_str());
            let files = crate::slot::migration_files(slot);
            if let Some(files) = files
                && !ran_here
                && !migrated.contains(&key)
                && planned.insert(key)
            {
                let on = m.on.clone().unwrap_or_else(|| instance.clone());
                out.push(Step {
                    action: Action::Migrate { instance: on, slot: slot.clone(), files },
                    reason: format!(
                        "release {} of {}/{} has not been migrated yet (once per release, before the new color gets traffic)",
                        slot.release.short(),
                        slot.env,
                        slot.app
                    ),
                });
            }
        }
        out.push(step);
    }
    *steps = out;
}

/// Plans the changes that bring `live` to what `manifests` (all manifests this host
/// applies, already validated) declare.
pub fn plan(
    manifests: &[&Manifest],
    live: &LiveState,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let mut want = desired(manifests, &live.root_pool(), &opts.secrets)?;
    for d in want.instances.values_mut() {
        if let Some(mapped) = opts.images.get(&d.image) {
            d.image.clone_from(mapped);
        }
    }
    let mut b = Builder { steps: Vec::new(), refusals: Vec::new() };
    let mut drift = Vec::new();

    for (name, net) in &want.networks {
        match (live.networks.get(name), net.managed) {
            (None, true) => b.step(
                Action::CreateNetwork { name: name.clone(), config: net.config.clone() },
                format!("managed network `{name}` does not exist"),
            ),
            (None, false) => b.refuse(
                format!("network {name}"),
                "it is referenced but does not exist; create it (or set `managed: true`) — instances using it will fail to start",
            ),
            _ => {}
        }
    }

    for (name, p) in &want.profiles {
        match live.profiles.get(name) {
            None => b.step(
                Action::CreateProfile {
                    name: name.clone(),
                    description: p.description.clone(),
                    config: p.config.clone(),
                    devices: p.devices.clone(),
                },
                format!("profile `{name}` does not exist"),
            ),
            Some(l) if !l.is_owned() => b.refuse(
                format!("profile {name}"),
                "a profile with this name exists without the agent's mark (user.veza.managed); it is never overwritten — rename one of them",
            ),
            Some(l) if l.config != p.config || l.devices != p.devices => b.step(
                Action::UpdateProfile {
                    name: name.clone(),
                    description: p.description.clone(),
                    config: p.config.clone(),
                    devices: p.devices.clone(),
                },
                diff_reason("profile", name, &l.config, &p.config, &l.devices, &p.devices),
            ),
            Some(_) => {}
        }
    }

    // Instances: protected first, then plain ones, then slots.
    let mut order: Vec<(&String, &DesiredInstance)> = want.instances.iter().collect();
    order.sort_by_key(|(name, d)| (!d.protect, d.slot.is_some(), (*name).clone()));
    let mut deployed: BTreeSet<String> = BTreeSet::new();
    let mut kept: Vec<KeptSlot> = Vec::new();
    let serving = serving_slots(manifests, live);
    for (name, d) in order {
        plan_instance(name, d, live, &serving, &mut b, &mut drift, &mut deployed, &mut kept);
    }
    insert_migrations(&mut b.steps, &opts.migrated, live);
    // What an instance that is recreated held is gone with it: the edge's config (when the
    // edge runs in it) and its job units are installed again.
    let recreated: BTreeSet<&str> = b
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::DeleteInstance { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let fresh;
    let live = if recreated.is_empty() {
        live
    } else {
        let mut l = live.clone();
        if want.edge_runs_in.as_deref().is_some_and(|r| recreated.contains(r)) {
            l.edge.config = None;
        }
        l.units
            .retain(|t, _| !matches!(t, UnitTarget::Instance(n) if recreated.contains(n.as_str())));
        fresh = l;
        &fresh
    };
    // A serving slot whose rebuild is refused keeps its live release: the edge goes on
    // naming what really runs there.
    let kept_manifests = keep_live_releases(manifests, &kept);
    let manifests: Vec<&Manifest> = kept_manifests.iter().map(|m| &**m).collect();
    let manifests = manifests.as_slice();

    // Promotions, health gates and the edge.
    let mut promotions = Vec::new();
    let mut promoted_gates = Vec::new();
    let mut overrides: BTreeMap<String, BTreeMap<String, Color>> = BTreeMap::new();
    let mut fallback_overrides: BTreeMap<String, BTreeMap<String, Color>> = BTreeMap::new();
    let mut checks = Vec::new();
    let mut blocked_edge: Vec<String> = Vec::new();
    // Whether an owed switch is promoted again: its config is live already, and is
    // installed again all the same (the switch's checks and fallback come with it).
    let mut recheck = false;
    // An owed edge switch, while the config it replaced is not back, and whether this
    // plan promotes any of its apps again.
    let edge_owed =
        opts.unchecked_edge.as_ref().filter(|e| live.edge_config() != Some(e.back_to.as_str()));
    let mut edge_recheck = false;
    // Whether an app promoted has no color of the manifests to go back to (its first
    // traffic, or its previous color emptied): then the fallback is the config live
    // before the switch, for every app (the engine reads it, and a kill owes it).
    let mut no_color_back = false;
    // Whether an owed switch of an app with a color to go back to is promoted again.
    let mut owed_again = false;
    for m in manifests {
        let env = &m.metadata.name;
        let prefix = m.metadata.instance_prefix();
        // Each app's first route's path, looked up once per environment rather than by a
        // scan of the routes per app (quadratic in the number of apps).
        let mut route_paths: BTreeMap<&str, Option<&String>> = BTreeMap::new();
        for r in m.edge.iter().flat_map(|e| &e.routes) {
            route_paths.entry(r.app.as_str()).or_insert(r.path_prefix.as_ref());
        }
        for (app_name, app) in &m.apps {
            let target = app.active;
            let routed = live.active_color(env, app_name);
            // A switch nobody checked counts as not made, while the color it goes back to
            // is still deployed (a fallback needs it).
            let owed = (!opts.unchecked.is_empty())
                .then(|| opts.unchecked.get(&(env.clone(), app_name.clone())).copied())
                .flatten()
                .filter(|back| routed.is_some_and(|r| r != *back))
                .filter(|back| {
                    let back = naming::slot_instance(&prefix, app_name, *back);
                    want.instances.get(&back).is_some_and(|d| d.slot.is_some())
                });
            // Under an owed edge switch, an app it gave traffic counts as having none yet.
            let first_owed = owed.is_none()
                && routed == Some(target)
                && edge_owed.is_some_and(|e| e.apps.contains(&(env.clone(), app_name.clone())));
            let live_active = if first_owed { None } else { owed.or(routed) };
            // Whether the manifests declare a slot of `color` for this app.
            let declared = |color| {
                let name = naming::slot_instance(&prefix, app_name, color);
                want.instances.get(&name).is_some_and(|d| d.slot.is_some())
            };
            let instance = naming::slot_instance(&prefix, app_name, target);
            let Some(mut slot) = want.instances.get(&instance).and_then(|d| d.slot.clone()) else {
                continue;
            };
            // A kept slot (serving, its rebuild refused) runs its live release: its gate
            // and checks expect that one.
            let kept_slot =
                kept.iter().find(|k| &k.env == env && &k.app == app_name && k.color == target);
            if let Some(k) = kept_slot {
                slot.release = k.release.clone();
            }
            let changes_color = live_active != Some(target);
            // The color losing traffic, redeployed in place (`in_place_updates`): it
            // serves until the switch, and again should the promotion fail or fall back,
            // so it is gated like any serving slot that was redeployed.
            if let Some(from) = live_active.filter(|_| changes_color) {
                let serving = naming::slot_instance(&prefix, app_name, from);
                if deployed.contains(&serving)
                    && let Some(slot) = want.instances.get(&serving).and_then(|d| d.slot.clone())
                {
                    b.gate_serving(serving, slot, false);
                }
            }
            let redeployed = deployed.contains(&instance);
            if !changes_color && !redeployed {
                continue;
            }
            if kept_slot.is_none()
                && b.refusals.iter().any(|r| {
                    r.resource.strip_prefix("instance ").is_some_and(|name| name == instance)
                })
            {
                // The target slot is a foreign instance: never route traffic to it.
                match live_active.filter(|c| declared(*c)) {
                    Some(c) => {
                        overrides.entry(env.clone()).or_default().insert(app_name.clone(), c);
                    }
                    None => blocked_edge.push(format!("{env}/{app_name}")),
                }
                b.refuse(
                    format!("promotion {env}/{app_name}"),
                    format!("its {target} slot `{instance}` is not the agent's; traffic is not moved to it"),
                );
                continue;
            }
            // Where traffic goes now: the agent's routing, or under a config it did not
            // write (a takeover), the one color that config serves from.
            let foreign: Vec<Color> = serving
                .iter()
                .filter(|(e, a, _)| live_active.is_none() && e == env && a == app_name)
                .map(|(_, _, c)| *c)
                .collect();
            let now_on = live_active.or(match foreign.as_slice() {
                [one] => Some(*one),
                _ => None,
            });
            let moves_traffic = live_active.is_some() || foreign.iter().any(|c| *c != target);
            if changes_color && moves_traffic {
                let failing: Vec<String> = app
                    .gate_on_jobs
                    .iter()
                    .filter_map(|j| {
                        opts.failing_jobs
                            .get(&format!("{env}/{j}"))
                            .map(|why| format!("{j}: {why}"))
                    })
                    .collect();
                if !failing.is_empty() {
                    b.refuse(
                        format!("promotion {env}/{app_name}"),
                        format!(
                            "gated on jobs that are failing or stale ({}); traffic stays on {}",
                            failing.join("; "),
                            now_on.map_or("both colors".to_string(), |c| c.to_string())
                        ),
                    );
                    match now_on.filter(|c| declared(*c)) {
                        Some(c) => {
                            overrides.entry(env.clone()).or_default().insert(app_name.clone(), c);
                        }
                        // Its color is emptied: no config routes there any more.
                        None => blocked_edge.push(format!("{env}/{app_name}")),
                    }
                    continue;
                }
            }
            if changes_color {
                // An owed switch's target already has the traffic: its checks through the
                // edge decide, and a failed one puts the fallback back. Restarted or
                // redeployed by this plan, it is gated first, as the serving slot it is.
                if owed.is_none() && !first_owed {
                    promoted_gates.push(Gate {
                        instance: instance.clone(),
                        slot: slot.clone(),
                        serving: false,
                    });
                } else if redeployed {
                    b.gate_serving(instance.clone(), slot.clone(), false);
                }
                recheck |= owed.is_some() || first_owed;
                owed_again |= owed.is_some();
                edge_recheck |= first_owed;
                promotions.push(Promotion {
                    env: env.clone(),
                    app: app_name.clone(),
                    from: live_active,
                    to: target,
                    release: slot.release.clone(),
                });
                match live_active {
                    Some(prev) if declared(prev) => {
                        fallback_overrides
                            .entry(env.clone())
                            .or_default()
                            .insert(app_name.clone(), prev);
                    }
                    // First traffic, or a color the manifests empty: no config rendered
                    // from them routes as before.
                    _ => no_color_back = true,
                }
            } else {
                b.gate_serving(instance.clone(), slot.clone(), true);
            }
            if let Some(edge) = &m.edge {
                let path = route_paths
                    .get(app_name.as_str())
                    .copied()
                    .flatten()
                    .cloned()
                    .unwrap_or_else(|| "/".to_string());
                let tls = edge.tls.is_some();
                let listen = edge_listen(manifests, tls);
                if let Some(host) = edge.hosts.first() {
                    checks.push(EdgeCheck {
                        env: env.clone(),
                        app: app_name.clone(),
                        color: target,
                        release: slot.release.clone(),
                        host: host.clone(),
                        path,
                        listen,
                        tls,
                    });
                }
            }
        }
    }

    let foreign_edge = want
        .edge_runs_in
        .as_ref()
        .and_then(|r| live.instances.get(r))
        .filter(|l| !l.is_owned() && !live.on_offline_member(l));
    let install = if !blocked_edge.is_empty() {
        b.refuse(
            "edge",
            format!(
                "not updated: {} would have no slot of the agent's to route to",
                blocked_edge.join(", ")
            ),
        );
        None
    } else if let Some(l) = foreign_edge {
        // Never written into someone else's instance (its exec and file API are refused
        // to the agent anyway): said once, here.
        b.refuse(
            "edge",
            format!(
                "not updated: it runs in `{}`, an instance that is not the agent's (no user.veza.managed mark) — adopt it first (`veza-agent adopt`)",
                l.name
            ),
        );
        None
    } else if let Some(runs_in) = &want.edge_runs_in {
        let config = render_for(manifests, &overrides, &opts.edge_settings)?;
        // Installed again when an interrupted install left HAProxy running either config.
        let changed = live.edge.unconfirmed || live.edge_config() != Some(config.as_str());
        (recheck || changed).then(|| (runs_in.clone(), config))
    } else {
        None
    };
    match install {
        Some((runs_in, config)) if !promotions.is_empty() => {
            let fallback = if let Some(e) = edge_owed.filter(|_| edge_recheck) {
                // What was live before the owed switch: every app's traffic as it was.
                Some(e.back_to.clone())
            } else if (no_color_back && !owed_again) || fallback_overrides.is_empty() {
                // The config live before; not under an owed re-check, whose live config is
                // the unchecked switch itself (its colors are rendered back, below; an app
                // with none stays routed then, as before its switch was owed).
                None
            } else {
                let mut merged = overrides.clone();
                for (env, apps) in fallback_overrides {
                    merged.entry(env).or_default().extend(apps);
                }
                Some(render_for(manifests, &merged, &opts.edge_settings)?)
            };
            let taken_over = live.edge_config().is_some_and(|c| !c.starts_with(RENDERED_HEADER));
            let reason = if edge_recheck {
                "an edge switch was never checked through the edge (the run was killed, or putting the earlier config back failed): checked again, and the config live before it comes back if the checks fail".to_string()
            } else if taken_over {
                "the edge is taken over from a config veza-agent did not write: each app's slot must be healthy, and the edge must serve it, or the config live before comes back".to_string()
            } else if promotions.iter().all(|p| p.from.is_none()) {
                "these slots get their first traffic, once healthy".to_string()
            } else {
                "the manifests change the active color: traffic moves only to healthy slots, and back when the edge does not serve them".to_string()
            };
            b.step(
                Action::Promote(Switch {
                    promotions,
                    gates: promoted_gates,
                    runs_in,
                    config,
                    checks,
                    fallback,
                }),
                reason,
            );
        }
        Some((runs_in, config)) => {
            let reason = if live.edge_config().is_none() {
                "the edge has no config yet"
            } else {
                "the rendered edge config differs from the live one"
            };
            b.step(Action::InstallEdge { runs_in, config }, reason);
            for check in checks {
                b.step(
                    Action::VerifyEdge(check),
                    "the new config is confirmed through the edge itself",
                );
            }
        }
        None => {
            // Traffic cannot move: the new colors are only checked for health.
            for gate in promoted_gates {
                let reason = format!(
                    "{} {}/{} must be healthy (the edge is not changed by this plan)",
                    gate.slot.color, gate.slot.env, gate.slot.app
                );
                b.step(Action::HealthGate(gate), reason);
            }
        }
    }

    plan_jobs(&want, live, &opts.unscheduled_jobs, &mut b);
    plan_prune(&want, live, &mut b);

    // On a cluster: the member of each creation; nothing onto or on an offline member.
    let placed = placement::place(b.steps, &want, live);
    b.refusals.extend(placed.refusals);
    // A serving slot goes only with the edge step that moves its traffic off it.
    let serving = serving_instances(manifests, live);
    let (steps, kept) = keep_serving_slots(placed.steps, &serving, live);
    b.refusals.extend(kept);
    let edge_takeover = takeover(&steps, live);
    Ok(Plan {
        steps,
        refusals: b.refusals,
        drift,
        waiting: Vec::new(),
        edge_takeover,
        cluster: placed.notes,
    })
}

#[cfg(test)]
mod tests;
