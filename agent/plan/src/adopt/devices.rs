//! Devices, compared by what an instance runs with: its effective devices (its profiles'
//! in order, then its own on top, as Incus expands them), now and once the first apply has
//! set the manifests' profiles and instance devices. A device that only moves between an
//! instance and its profile (the `eth0` that `incus launch --network` puts on each
//! instance, declared in the profile by the manifests) changes nothing an instance runs
//! with, so Incus replugs nothing: that is a note, not a conflict.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::DesiredProfile;
use crate::live::{Devices, LiveState};

/// The devices an instance with `profiles` and its own `local` devices runs with.
fn effective<'a>(
    profiles: &[String],
    local: &Devices,
    profile_devices: impl Fn(&str) -> Option<&'a Devices>,
) -> Devices {
    let mut out = Devices::new();
    for p in profiles {
        if let Some(d) = profile_devices(p) {
            out.extend(d.clone());
        }
    }
    out.extend(local.clone());
    out
}

/// What an instance runs with now.
pub(super) fn now(profiles: &[String], local: &Devices, live: &LiveState) -> Devices {
    effective(profiles, local, |p| live.profiles.get(p).map(|x| &x.devices))
}

/// What an instance with `profiles` and `local` devices runs with once the first apply has
/// set the manifests' profiles (`want`; a profile they do not declare stays as it is).
pub(super) fn after(
    profiles: &[String],
    local: &Devices,
    want: &BTreeMap<String, DesiredProfile>,
    live: &LiveState,
) -> Devices {
    effective(profiles, local, |p| {
        want.get(p).map(|x| &x.devices).or_else(|| live.profiles.get(p).map(|x| &x.devices))
    })
}

fn show(d: Option<&BTreeMap<String, String>>) -> String {
    match d {
        None => "none".to_string(),
        Some(d) => {
            let kv: Vec<String> = d.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", kv.join(", "))
        }
    }
}

/// The names of the devices that differ between `a` and `b`.
pub(super) fn changed<'a>(a: &'a Devices, b: &'a Devices) -> Vec<&'a str> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names.into_iter().filter(|n| a.get(*n) != b.get(*n)).map(String::as_str).collect()
}

/// One line per device `subject` would run with differently: `now` against `then`.
pub(super) fn differences(subject: &str, now: &Devices, then: &Devices) -> Vec<String> {
    changed(now, then)
        .into_iter()
        .map(|n| {
            format!(
                "device `{n}`: {subject} runs with {}, the manifests give it {}",
                show(now.get(n)),
                show(then.get(n))
            )
        })
        .collect()
}
