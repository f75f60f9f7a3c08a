//! The edge as the planner sees it: which color serves each app now (under the agent's
//! config or one it did not write), the config rendered for the manifests with per-app
//! color overrides, the manifests as the edge must see them while a serving slot is kept
//! at its live release, and the diff shown when the agent takes over a foreign config.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use veza_model::Manifest;
use veza_model::live::{SlotInstance, serving_colors};
use veza_model::manifest::{Color, Release};
use veza_model::naming;

use super::{Action, PlanError, Refusal, Step, Switch};
use crate::edge::{DEFAULT_HTTP_LISTEN, DEFAULT_HTTPS_LISTEN, EdgeEnv, EdgeSettings, render_edge};
use crate::live::{LiveEdge, LiveState};

/// The colors each app's traffic goes to now, `(env, app, color)`: what the agent's own
/// config routes to, or, under an edge config veza-agent did not write (before its
/// takeover), every slot the config's serving servers address (both, when it balances
/// to both). A serving slot is never rebuilt in place, whoever
/// wrote the edge.
pub(super) fn serving_slots(
    manifests: &[&Manifest],
    live: &LiveState,
) -> BTreeSet<(String, String, Color)> {
    let mut out: BTreeSet<(String, String, Color)> =
        live.edge.active.iter().map(|((env, app), c)| (env.clone(), app.clone(), *c)).collect();
    let Some(config) = live.edge_config().filter(|c| !c.starts_with(RENDERED_HEADER)) else {
        return out;
    };
    let slots: Vec<SlotInstance> = manifests
        .iter()
        .flat_map(|m| {
            let prefix = m.metadata.instance_prefix();
            m.apps.keys().flat_map(move |app| {
                [Color::Blue, Color::Green].map(|color| SlotInstance {
                    instance: naming::slot_instance(&prefix, app, color),
                    env: m.metadata.name.clone(),
                    app: app.clone(),
                    color,
                })
            })
        })
        .collect();
    // Every color it balances to: a config that enables both serves from both.
    for ((env, app), colors) in serving_colors(config, &slots) {
        out.extend(colors.into_iter().map(|c| (env.clone(), app.clone(), c)));
    }
    out
}

/// [`serving_slots`] by slot instance name: instance → `(env, app, color)`.
pub(super) fn serving_instances(
    manifests: &[&Manifest],
    live: &LiveState,
) -> BTreeMap<String, (String, String, Color)> {
    serving_slots(manifests, live)
        .into_iter()
        .filter_map(|(env, app, color)| {
            let m = manifests.iter().find(|m| m.metadata.name == env)?;
            let name = naming::slot_instance(&m.metadata.instance_prefix(), &app, color);
            Some((name, (env, app, color)))
        })
        .collect()
}

/// `steps` without the deletion of a running slot that serves traffic (`serving`, by
/// instance) and leaves for good (not created again: a rebuild is judged by the planner
/// with the slot), unless an edge step among them moves its app off it first (a deletion
/// runs after that step, and a run whose checks fail stops there), with a refusal for
/// each one kept. Run once the steps are final (placement may drop an edge step).
pub(super) fn keep_serving_slots(
    steps: Vec<Step>,
    serving: &BTreeMap<String, (String, String, Color)>,
    live: &LiveState,
) -> (Vec<Step>, Vec<Refusal>) {
    let created: std::collections::BTreeSet<String> = steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateInstance { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let edge_after = steps.iter().find_map(|s| match &s.action {
        Action::InstallEdge { config, .. } | Action::Promote(Switch { config, .. }) => {
            Some(LiveEdge::from_config(config.clone()))
        }
        _ => None,
    });
    let mut refusals = Vec::new();
    let kept = steps
        .into_iter()
        .filter(|s| {
            let Action::DeleteInstance { name } = &s.action else { return true };
            let running = live.instances.get(name).is_some_and(|l| l.is_running());
            let Some((env, app, color)) =
                serving.get(name).filter(|_| running && !created.contains(name))
            else {
                return true;
            };
            let key = (env.clone(), app.clone());
            let moved = edge_after.as_ref().is_some_and(|e| e.active.get(&key) != Some(color));
            if !moved {
                refusals.push(Refusal {
                    resource: format!("instance {name}"),
                    reason: format!(
                        "it serves {env}/{app} traffic ({color}) and this plan does not move it off: deleted once traffic has moved"
                    ),
                });
            }
            moved
        })
        .collect();
    (kept, refusals)
}

/// The first line of every config veza-agent renders (`templates/haproxy.cfg.tera`).
pub(super) const RENDERED_HEADER: &str =
    "# The shared HAProxy edge of this host, rendered by veza-agent";

/// When `steps` install the edge over a live config veza-agent did not write: the diff
/// from that config to the one installed.
pub(super) fn takeover(steps: &[Step], live: &LiveState) -> Option<String> {
    let live_config = live.edge_config()?;
    if live_config.starts_with(RENDERED_HEADER) {
        return None;
    }
    let new = steps.iter().find_map(|s| match &s.action {
        Action::InstallEdge { config, .. } | Action::Promote(Switch { config, .. }) => Some(config),
        _ => None,
    })?;
    Some(crate::edge::diff::unified(
        "haproxy.cfg (live, not written by veza-agent)",
        live_config,
        "haproxy.cfg (rendered by veza-agent)",
        new,
        3,
    ))
}

/// Renders the edge for all manifests, with per-env active-color overrides.
pub fn render_for(
    manifests: &[&Manifest],
    overrides: &BTreeMap<String, BTreeMap<String, Color>>,
    settings: &EdgeSettings,
) -> Result<String, PlanError> {
    let empty = BTreeMap::new();
    let mut envs: Vec<EdgeEnv> = Vec::new();
    for m in manifests {
        let o = overrides.get(&m.metadata.name).unwrap_or(&empty);
        if let Some(e) = EdgeEnv::from_manifest(m, o)? {
            envs.push(e);
        }
    }
    Ok(render_edge(&envs, settings)?.config)
}

/// Where the shared edge listens, as [`render_for`] binds it: the one `listen` the
/// environments declare (the render refuses two different ones), else the defaults; its
/// HTTPS address when `tls`.
pub(super) fn edge_listen(manifests: &[&Manifest], tls: bool) -> String {
    let declared = manifests.iter().find_map(|m| m.edge.as_ref()?.listen.as_ref());
    if tls {
        declared.and_then(|l| l.https.clone()).unwrap_or_else(|| DEFAULT_HTTPS_LISTEN.to_string())
    } else {
        declared.map_or_else(|| DEFAULT_HTTP_LISTEN.to_string(), |l| l.http.clone())
    }
}

/// A serving slot the plan leaves as it is (its rebuild was refused), with the release
/// it runs.
pub(super) struct KeptSlot {
    pub env: String,
    pub app: String,
    pub color: Color,
    pub release: Release,
}

/// The manifests as the edge must see them: kept slots at their live release. Only a
/// manifest with a kept slot is copied.
pub(super) fn keep_live_releases<'m>(
    manifests: &[&'m Manifest],
    kept: &[KeptSlot],
) -> Vec<Cow<'m, Manifest>> {
    manifests
        .iter()
        .map(|&m| {
            let env = &m.metadata.name;
            let mut m = Cow::Borrowed(m);
            for k in kept.iter().filter(|k| &k.env == env) {
                if !m.apps.get(&k.app).is_some_and(|a| a.slots.contains_key(&k.color)) {
                    continue;
                }
                if let Some(slot) =
                    m.to_mut().apps.get_mut(&k.app).and_then(|a| a.slots.get_mut(&k.color))
                {
                    slot.release = Some(k.release.clone());
                }
            }
            m
        })
        .collect()
}
