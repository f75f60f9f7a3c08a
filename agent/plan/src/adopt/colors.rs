//! The live side of an app for adoption: which color the live edge serves (read from a
//! config whoever wrote it, by the slots' addresses) against the manifest's `active:`,
//! and which release a slot runs (its health probe's `X-Release`, or Ansible's history).

use std::collections::{BTreeMap, BTreeSet};

use veza_model::Manifest;
use veza_model::live::{SlotInstance, parse_color_history, parse_color_record, serving_colors};
use veza_model::manifest::Color;
use veza_model::naming;

use super::{ActiveColor, Adoption, Facts, ResourceAdoption, foreign};
use crate::desired::SlotSpec;
use crate::live::{LiveInstance, LiveState, MARK_RELEASE};

/// Each app's live colors (from a foreign config by the slots' addresses, else from the
/// agent's own config), recorded in `out.active` with the refusals they call for.
pub(super) fn active_colors(
    manifests: &[&Manifest],
    live: &LiveState,
    facts: &Facts,
    out: &mut Adoption,
) -> BTreeMap<(String, String), BTreeSet<Color>> {
    let mut slots = Vec::new();
    for m in manifests {
        let prefix = m.metadata.instance_prefix();
        for app in m.apps.keys() {
            for color in Color::ALL {
                slots.push(SlotInstance {
                    instance: naming::slot_instance(&prefix, app, color),
                    env: m.metadata.name.clone(),
                    app: app.clone(),
                    color,
                });
            }
        }
    }
    let mut serving = live.edge_config().map(|c| serving_colors(c, &slots)).unwrap_or_default();
    for m in manifests {
        let env = &m.metadata.name;
        let record = facts
            .color_records
            .get(env)
            .map(|t| parse_color_record(t).map_or("unreadable".to_string(), |c| c.to_string()));
        for (app, spec) in &m.apps {
            let key = (env.clone(), app.clone());
            let colors = serving.entry(key).or_default();
            if colors.is_empty()
                && let Some(c) = live.active_color(env, app)
            {
                colors.insert(c);
            }
            let what = format!("{env}/{app}");
            let foreign_slots = slots
                .iter()
                .filter(|s| s.env == *env && s.app == *app)
                .any(|s| foreign(live, &s.instance).is_some());
            let shown = match colors.iter().collect::<Vec<_>>().as_slice() {
                [] => "none".to_string(),
                [c] => c.to_string(),
                _ => "both".to_string(),
            };
            let mut agrees = true;
            match colors.iter().copied().collect::<Vec<Color>>().as_slice() {
                [c] if *c != spec.active => {
                    agrees = false;
                    out.refusals.push(format!(
                        "{what}: the live edge serves {c}, the manifest says `active: {}`: adoption never moves traffic — set `active: {c}` in the manifest (a signed commit), then adopt",
                        spec.active
                    ));
                }
                // Ansible's record is shown beside, never decides: it keeps one color per
                // environment, the manifests one per app, and the edge's config is what
                // routes the traffic.
                [_] => {}
                [] if foreign_slots && live.edge_config().is_some() => {
                    agrees = false;
                    out.refusals.push(format!(
                        "{what}: no enabled server of the live edge config routes to a slot of it (`<slot>.lxd:<port>`, `<slot>.incus:<port>` or `<slot>:<port>`): which color serves cannot be told — adoption never guesses"
                    ));
                }
                [] => {}
                _ => {
                    agrees = false;
                    out.refusals.push(format!(
                        "{what}: the live edge sends traffic to both colors: adoption never moves traffic — leave one color serving (as the manifest's `active: {}` says), then adopt",
                        spec.active
                    ));
                }
            }
            out.active.push(ActiveColor {
                env: env.clone(),
                app: app.clone(),
                live: shown,
                manifest: spec.active,
                agrees,
                record: record.clone(),
            });
        }
    }
    serving
}

/// Records a slot's release when verified; a serving slot whose release cannot be
/// verified is a conflict (the planner would rebuild it in place), an idle one is adopted
/// without it (the first apply rebuilds it from its image).
pub(super) fn assess_release(
    a: &mut ResourceAdoption,
    l: &LiveInstance,
    slot: &SlotSpec,
    facts: &Facts,
    serving: &BTreeMap<(String, String), BTreeSet<Color>>,
) {
    let release = slot.release.as_str();
    let probed = match facts.probes.get(&a.name) {
        Some(Ok(p)) if p.status == slot.expect_status && p.release.as_deref() == Some(release) => {
            Ok("its health probe answers with it in X-Release".to_string())
        }
        Some(Ok(p)) => Err(match &p.release {
            Some(r) => format!("its health probe answered {} with X-Release {r}", p.status),
            None => format!("its health probe answered {} without X-Release", p.status),
        }),
        Some(Err(e)) => Err(format!("its health probe failed: {e}")),
        None if !l.is_running() => Err("it is stopped (not probed)".to_string()),
        None => Err("it was not probed".to_string()),
    };
    let history = facts.color_histories.get(&slot.env).and_then(|t| parse_color_history(t));
    // A probe that named another release outranks Ansible's history: the slot runs that.
    let other_release = matches!(
        facts.probes.get(&a.name),
        Some(Ok(p)) if p.release.as_deref().is_some_and(|r| r != release)
    );
    let verified = match (probed, history) {
        (Ok(how), _) => Ok(how),
        (Err(_), Some((c, r))) if !other_release && c == slot.color && r == release => Ok(format!(
            "the last entry of Ansible's history (`{}`) names it for {c}",
            veza_model::live::ansible_history_file(&slot.env)
        )),
        (Err(why), _) => Err(why),
    };
    let is_serving = l.is_running()
        && serving
            .get(&(slot.env.clone(), slot.app.clone()))
            .is_some_and(|c| c.contains(&slot.color));
    match verified {
        Ok(how) => {
            a.marks.insert(MARK_RELEASE.to_string(), release.to_string());
            a.notes.push(format!("release {} verified: {how}", slot.release.short()));
        }
        Err(why) if is_serving => a.differences.push(format!(
            "release unknown: it serves {}/{} traffic and release {} cannot be verified ({why}; nor does the last entry of Ansible's history name it for {}) — the planner would rebuild a serving slot it cannot vouch for: deploy a release that answers `X-Release` on its health path, or fix the manifest's release",
            slot.env,
            slot.app,
            slot.release.short(),
            slot.color
        )),
        Err(why) => a.notes.push(format!(
            "release {} not verified ({why}): not recorded — the first apply rebuilds this slot, which serves no traffic, from its image: its container is deleted and created anew (if it is kept for forensics, `incus copy` it first)",
            slot.release.short()
        )),
    }
    a.notes.push(
        "app settings (port, start, install_dir, environment, secrets) taken as the declared ones: its user.veza.app-spec records the manifest's, the running app's cannot be read back".to_string(),
    );
}
