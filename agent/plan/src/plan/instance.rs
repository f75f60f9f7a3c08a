//! One Incus instance: create, rebuild, redeploy or keep it, with the reason read from
//! the difference between what is declared and what runs.

use std::collections::{BTreeMap, BTreeSet};

use veza_model::manifest::{Color, Release};

use super::types::Action;
use super::{Builder, KeptSlot};
use crate::desired::{DesiredInstance, SlotSpec};
use crate::live::{
    Devices, LiveState, MARK_APP_SPEC, MARK_IMAGE, MARK_KEYS, MARK_PREFIX, MARK_RELEASE,
};
use crate::slot::slot_files;

#[allow(clippy::too_many_arguments)] // the planner's accumulators, passed down once
pub(super) fn plan_instance(
    name: &str,
    d: &DesiredInstance,
    live: &LiveState,
    serving: &BTreeSet<(String, String, Color)>,
    b: &mut Builder,
    drift: &mut Vec<String>,
    deployed: &mut BTreeSet<String>,
    kept: &mut Vec<KeptSlot>,
) {
    let create = |b: &mut Builder, reason: String| {
        b.step(
            Action::CreateInstance {
                name: name.to_string(),
                image: d.image.clone(),
                kind: d.kind,
                profiles: d.profiles.clone(),
                config: d.config.clone(),
                devices: d.devices.clone(),
                // Chosen once the whole plan is known (`super::placement`).
                target: None,
            },
            reason,
        );
    };
    let runs = |slot: &SlotSpec| {
        format!(
            "the {} slot of {}/{} runs release {}",
            slot.color,
            slot.env,
            slot.app,
            slot.release.short()
        )
    };
    let deploy =
        |b: &mut Builder, deployed: &mut BTreeSet<String>, slot: &SlotSpec, reason: String| {
            b.step(
                Action::DeployRelease {
                    instance: name.to_string(),
                    slot: slot.clone(),
                    files: slot_files(slot),
                },
                reason,
            );
            deployed.insert(name.to_string());
        };
    let Some(l) = live.instances.get(name) else {
        create(b, format!("instance `{name}` does not exist"));
        if let Some(slot) = &d.slot {
            deploy(b, deployed, slot, runs(slot));
        }
        return;
    };
    if live.on_offline_member(l) {
        // Unreachable, and listed without its marks: nothing is planned on it here
        // (`super::placement` reports it and refuses what would touch it).
        return;
    }
    if !l.is_owned() {
        b.refuse(
            format!("instance {name}"),
            "an instance with this name exists without the agent's mark (user.veza.managed); it is never touched — rename one of them",
        );
        return;
    }
    // What Incus cannot change in place: the image an instance was created from (known by
    // the agent's mark; an instance without it is not judged) and its type.
    let mut rebuild_for = Vec::new();
    if let (Some(was), Some(now)) = (l.image(), d.config.get(MARK_IMAGE))
        && was != now
    {
        rebuild_for.push(format!("image changes from {was} to {now}"));
    }
    if l.kind != d.kind {
        rebuild_for.push(format!("type changes from {} to {}", l.kind, d.kind));
    }
    // A running slot whose only change is its release gets the new release in place (the
    // artifact unpacked beside the old one, swapped in and the app restarted, as the
    // deploy step does for a new slot): the container, its devices and the proxy it
    // serves through are kept, and the release gate still checks the slot before any
    // promotion. Only a slot the agent deployed itself: one another tool built (adopted)
    // may run that tool's own service too. Anything Incus or the app's settings change
    // rebuilds it.
    let mut redeploy = None;
    if let Some(slot) = &d.slot {
        let release_changes = l.release() != Some(slot.release.as_str());
        let was = l.release().map_or("nothing".to_string(), |r| r.chars().take(10).collect());
        if release_changes {
            rebuild_for
                .insert(0, format!("release changes from {was} to {}", slot.release.short()));
        }
        if let (Some(was), Some(now)) = (l.app_spec(), d.config.get(MARK_APP_SPEC))
            && was != now
        {
            rebuild_for.push(
                "app settings (port, start, install_dir, environment or secrets) change"
                    .to_string(),
            );
        }
        let in_place =
            release_changes && rebuild_for.len() == 1 && l.is_running() && l.deployed_by_agent();
        if !rebuild_for.is_empty() {
            // A stopped slot serves nothing, whatever the edge names: it may be rebuilt.
            let serving = l.is_running()
                && serving.contains(&(slot.env.clone(), slot.app.clone(), slot.color));
            if serving && !d.in_place_updates {
                b.refuse(
                    format!("instance {name}"),
                    format!(
                        "it serves {}/{} traffic and its {}: rebuilding it in place would drop requests — deploy the change to the idle {} slot and promote it (`active: {}`), or set `in_place_updates: true` on the app to accept the interruption; it is rebuilt once traffic has moved off it",
                        slot.env,
                        slot.app,
                        rebuild_for.join(", "),
                        slot.color.other(),
                        slot.color.other(),
                    ),
                );
                if let Some(release) =
                    l.release().and_then(|r| Release::try_from(r.to_string()).ok())
                {
                    kept.push(KeptSlot {
                        env: slot.env.clone(),
                        app: slot.app.clone(),
                        color: slot.color,
                        release,
                    });
                }
                return;
            }
            if in_place {
                redeploy = Some((slot, was));
            } else {
                b.step(
                    Action::DeleteInstance { name: name.to_string() },
                    format!("{}: the slot is rebuilt from its image", rebuild_for.join(", ")),
                );
                create(b, format!("rebuild of the {} slot", slot.color));
                deploy(b, deployed, slot, runs(slot));
                return;
            }
        }
    } else if !rebuild_for.is_empty() {
        let why = rebuild_for.join(", ");
        if d.detect_only {
            drift.push(format!("instance {name}: {why}"));
        } else if d.protect || l.is_protected() {
            b.refuse(
                format!("instance {name}"),
                format!(
                    "protected data: its {why}, which needs a new instance — migrate the data by hand (snapshot, new instance, restore), then update the manifest; it is never deleted by the agent"
                ),
            );
        } else {
            b.step(
                Action::DeleteInstance { name: name.to_string() },
                format!("{why}: the instance is recreated (its local changes are lost)"),
            );
            create(
                b,
                format!(
                    "recreated for the new {}",
                    if l.kind != d.kind { "type" } else { "image" }
                ),
            );
        }
        return;
    }
    let managed_before: BTreeSet<&str> = l
        .config
        .get(MARK_KEYS)
        .map(|k| k.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let mut remove_keys: Vec<String> = managed_before
        .iter()
        .filter(|k| !d.config.contains_key(**k) && l.config.contains_key(**k))
        .map(|k| (*k).to_string())
        .collect();
    // No managed keys any more: the list of them goes too, or keys set by hand later
    // would be taken for the agent's.
    if !d.config.contains_key(MARK_KEYS) && l.config.contains_key(MARK_KEYS) {
        remove_keys.push(MARK_KEYS.to_string());
    }
    let config_differs =
        d.config.iter().any(|(k, v)| l.config.get(k) != Some(v)) || !remove_keys.is_empty();
    // A local device the manifest does not declare, but equal (name and settings) to one
    // its profiles give the instance, is what `incus launch --network` leaves: removing
    // it would unplug and plug the same NIC. It is kept, and no difference.
    let launched_with: Devices = l
        .devices
        .iter()
        .filter(|(n, dev)| !d.devices.contains_key(*n) && d.profile_devices.get(*n) == Some(dev))
        .map(|(n, dev)| (n.clone(), dev.clone()))
        .collect();
    let with_launched;
    let d = if launched_with.is_empty() {
        d
    } else {
        let mut devices = d.devices.clone();
        devices.extend(launched_with);
        with_launched = DesiredInstance { devices, ..d.clone() };
        &with_launched
    };
    let changed = config_differs || l.devices != d.devices || l.profiles != d.profiles;
    if changed {
        let reason = describe_instance_diff(l, d, &remove_keys);
        if d.detect_only {
            drift.push(format!("instance {name}: {reason}"));
        } else {
            // The agent's own marks (`user.veza.*`) change nothing the instance runs:
            // recording one is no reason to snapshot (or pause) protected data.
            let marks_only = remove_keys.is_empty()
                && l.devices == d.devices
                && l.profiles == d.profiles
                && d.config
                    .iter()
                    .filter(|(k, v)| l.config.get(*k) != Some(*v))
                    .all(|(k, _)| k.starts_with(MARK_PREFIX));
            if d.protect && !marks_only {
                b.step(
                    Action::Snapshot { instance: name.to_string(), keep: d.snapshots_keep.max(1) },
                    "protected data is snapshotted before any change",
                );
            }
            b.step(
                Action::UpdateInstance {
                    name: name.to_string(),
                    profiles: d.profiles.clone(),
                    config: d.config.clone(),
                    remove_keys,
                    devices: d.devices.clone(),
                },
                reason,
            );
        }
    }
    if let Some((slot, was)) = redeploy {
        let reason = format!("{} (was {was}): deployed in place, the container kept", runs(slot));
        deploy(b, deployed, slot, reason);
    }
    if !l.is_running() && !d.detect_only {
        b.step(
            Action::StartInstance { name: name.to_string() },
            format!("instance `{name}` is stopped"),
        );
        if let Some(slot) = &d.slot {
            let reason = "after a stop, the release is unpacked and started again (a slot may have been changed while stopped)";
            deploy(b, deployed, slot, reason.to_string());
        }
    }
}

fn describe_instance_diff(
    l: &crate::live::LiveInstance,
    d: &DesiredInstance,
    remove_keys: &[String],
) -> String {
    let mut parts = Vec::new();
    let keys: Vec<&str> = d
        .config
        .iter()
        .filter(|(k, v)| l.config.get(*k) != Some(*v) && k.as_str() != MARK_RELEASE)
        .map(|(k, _)| k.as_str())
        .collect();
    if !keys.is_empty() {
        parts.push(format!("config {}", keys.join(", ")));
    }
    if !remove_keys.is_empty() {
        parts.push(format!("config keys removed: {}", remove_keys.join(", ")));
    }
    let devs: BTreeSet<&String> = l.devices.keys().chain(d.devices.keys()).collect();
    let changed: Vec<&str> = devs
        .into_iter()
        .filter(|k| l.devices.get(*k) != d.devices.get(*k))
        .map(String::as_str)
        .collect();
    if !changed.is_empty() {
        parts.push(format!("devices {}", changed.join(", ")));
    }
    if l.profiles != d.profiles {
        parts.push(format!("profiles [{}] -> [{}]", l.profiles.join(", "), d.profiles.join(", ")));
    }
    format!("drift: {}", parts.join("; "))
}

pub(super) fn diff_reason(
    what: &str,
    name: &str,
    lc: &BTreeMap<String, String>,
    dc: &BTreeMap<String, String>,
    ld: &Devices,
    dd: &Devices,
) -> String {
    let mut parts = Vec::new();
    let keys: BTreeSet<&String> = lc.keys().chain(dc.keys()).collect();
    let k: Vec<&str> =
        keys.into_iter().filter(|k| lc.get(*k) != dc.get(*k)).map(String::as_str).collect();
    if !k.is_empty() {
        parts.push(format!("config {}", k.join(", ")));
    }
    let devs: BTreeSet<&String> = ld.keys().chain(dd.keys()).collect();
    let d: Vec<&str> =
        devs.into_iter().filter(|x| ld.get(*x) != dd.get(*x)).map(String::as_str).collect();
    if !d.is_empty() {
        parts.push(format!("devices {}", d.join(", ")));
    }
    format!("{what} `{name}` differs: {}", parts.join("; "))
}
