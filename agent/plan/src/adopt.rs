//! Adoption: taking over a host someone else built (the seed's Ansible pipeline), where the
//! instances and profiles the manifests name exist without the agent's ownership mark.
//!
//! [`assess`] says, for each instance (plain, protected data, app slots) and profile the
//! manifests name, whether it is `owned` already, can be adopted as it is (`adopt`: only
//! the agent's marks are added), is `missing` (the first apply creates it), or is a
//! `conflict`, with each difference (image family, profiles, devices, type, protected data
//! missing its flag, a serving slot whose release cannot be verified); which color the
//! live edge serves for each app, read from a config the agent did not write, and a
//! refusal when the manifest's `active:` disagrees (adoption never moves traffic); and the
//! foreign timers that duplicate a manifest job. Pure: [`needs`] says which facts the
//! caller must gather beyond the live observation ([`Facts`]); the caller executes the
//! marks and timer replacements the result lists.
//!
//! The marks an adopted instance gets are the ones the planner would set
//! (`desired::desired`), so the first plan after adoption sees an instance of its own
//! with nothing to rebuild: a slot's release is recorded only when verified (its health
//! probe answers with the release in `X-Release`, or Ansible's history names it for that
//! color), and its app-spec mark records the manifest's settings (the running app's are
//! taken as the declared ones; they cannot be read back).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use veza_model::Manifest;
use veza_model::manifest::Color;

use crate::desired::{DesiredInstance, DesiredProfile, SecretDigests, desired};
use crate::live::{
    Config, LiveInstance, LiveState, MARK_HOST, MARK_MANAGED, MARK_PREFIX, UnitTarget,
};
use crate::plan::PlanError;

mod colors;
mod devices;
pub mod image;
mod report;
#[cfg(test)]
mod tests;
pub mod timers;

use colors::{active_colors, assess_release};
use image::{ImageFamily, image_family, local_alias, used_image};

/// What became of a resource the manifests name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdoptState {
    /// It carries the agent's mark already.
    Owned,
    /// It exists without the mark and can be taken over as it is.
    Adopt,
    /// It does not exist: the first apply creates it.
    Missing,
    /// It exists without the mark and differs from the manifest (see its differences).
    Conflict,
}

impl AdoptState {
    /// The name used in the report and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AdoptState::Owned => "owned",
            AdoptState::Adopt => "adopt",
            AdoptState::Missing => "missing",
            AdoptState::Conflict => "conflict",
        }
    }
}

/// One instance or profile the manifests name, and what becomes of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceAdoption {
    /// Instance or profile name.
    pub name: String,
    /// The environment that declares it (instances only: a profile is assessed once,
    /// whichever environments use it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// What becomes of it.
    pub state: AdoptState,
    /// Why it cannot be adopted (`conflict` only), one line each.
    pub differences: Vec<String>,
    /// What adoption records or leaves to the first apply, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The marks `adopt --apply` sets (`adopt` only).
    #[serde(skip_serializing_if = "Config::is_empty")]
    pub marks: Config,
}

impl ResourceAdoption {
    /// `name`, not there yet: the first apply creates it.
    fn missing(name: &str, env: Option<String>) -> ResourceAdoption {
        ResourceAdoption {
            name: name.to_string(),
            env,
            state: AdoptState::Missing,
            differences: Vec::new(),
            notes: Vec::new(),
            marks: Config::new(),
        }
    }

    /// Adopted when nothing differs (keeping its marks), else in conflict (none).
    fn judged(mut self) -> ResourceAdoption {
        if self.differences.is_empty() {
            self.state = AdoptState::Adopt;
        } else {
            self.state = AdoptState::Conflict;
            self.marks.clear();
        }
        self
    }
}

/// The live active color of an app next to the manifest's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActiveColor {
    /// Environment.
    pub env: String,
    /// App.
    pub app: String,
    /// What the live edge serves: `blue`, `green`, `both` or `none`.
    pub live: String,
    /// The manifest's `active:`.
    pub manifest: Color,
    /// Adoption moves no traffic for this app: the edge serves the manifest's color, or
    /// nothing serves it yet.
    pub agrees: bool,
    /// The environment's color in Ansible's record (`/var/lib/veza/active-color-<env>` in
    /// the edge's instance), when there is one: a color, or `unreadable`. Shown, not
    /// judged: Ansible keeps one color per environment, and the live edge config is what
    /// routes the traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
}

/// A foreign timer that runs a manifest job's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateTimer {
    /// Where: `host`, or an instance name.
    pub target: String,
    /// The foreign timer unit (`pgbackrest-full.timer`).
    pub unit: String,
    /// The service it starts.
    pub service: String,
    /// The job, `<env>/<job>`.
    pub job: String,
    /// The job's environment.
    #[serde(skip)]
    pub env: String,
    /// The job's name.
    #[serde(skip)]
    pub name: String,
    /// The target, typed.
    #[serde(skip)]
    pub at: UnitTarget,
}

/// What adoption would do on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Adoption {
    /// Every instance the manifests name: plain ones, protected data, slots with a release.
    pub instances: Vec<ResourceAdoption>,
    /// Every profile the manifests declare.
    pub profiles: Vec<ResourceAdoption>,
    /// Each app's live active color against the manifest's.
    pub active: Vec<ActiveColor>,
    /// Foreign timers duplicating a manifest job (replaced by the job's units).
    pub timers: Vec<DuplicateTimer>,
    /// Why adoption must not happen as things are (the operator acts first).
    pub refusals: Vec<String>,
}

impl Adoption {
    /// How many instances and profiles are in `state`.
    pub fn count(&self, state: AdoptState) -> usize {
        self.instances.iter().filter(|i| i.state == state).count()
            + self.profiles.iter().filter(|p| p.state == state).count()
    }

    /// A conflict or a refusal: `adopt --apply` changes nothing.
    pub fn blocked(&self) -> bool {
        self.count(AdoptState::Conflict) > 0 || !self.refusals.is_empty()
    }

    /// Something to adopt or a timer to replace.
    pub fn pending(&self) -> bool {
        self.count(AdoptState::Adopt) > 0 || !self.timers.is_empty()
    }

    /// `live` as it will be observed once the marks are set: what the first plan after
    /// adoption reads.
    pub fn marked(&self, live: &LiveState) -> LiveState {
        let mut out = live.clone();
        for i in self.instances.iter().filter(|i| i.state == AdoptState::Adopt) {
            if let Some(l) = out.instances.get_mut(&i.name) {
                l.config.extend(i.marks.clone());
            }
        }
        for p in self.profiles.iter().filter(|p| p.state == AdoptState::Adopt) {
            if let Some(l) = out.profiles.get_mut(&p.name) {
                l.config.extend(p.marks.clone());
            }
        }
        out
    }
}

/// What a slot's health probe answered, as the adopter saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// HTTP status.
    pub status: u16,
    /// Its `X-Release` header, if any.
    pub release: Option<String>,
}

/// A slot to probe: its health path, from the host on its loopback address or from
/// inside the slot on its port, as the apply engine's gate probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeNeed {
    /// The slot instance.
    pub instance: String,
    /// `127.0.0.1:P` when the slot is reached on the host's loopback.
    pub loopback: Option<String>,
    /// The app's port inside the slot.
    pub port: u16,
    /// The health path.
    pub path: String,
    /// Time limit in milliseconds.
    pub timeout_ms: u64,
}

/// The facts [`assess`] needs beyond the Incus observation, for the caller to gather.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Local image aliases the manifests name: their properties.
    pub local_images: Vec<String>,
    /// Foreign plain instances: their snapshots.
    pub snapshots: Vec<String>,
    /// Where Ansible's records of the active colors are read (`host` or the edge's
    /// instance), and the environments with apps.
    pub records: Option<(String, Vec<String>)>,
    /// Foreign running slots: their health probes.
    pub probes: Vec<ProbeNeed>,
    /// The targets of the manifests' jobs: their foreign unit files.
    pub unit_targets: Vec<UnitTarget>,
}

/// What the caller gathered (see [`Needs`]). A missing entry means "could not be read".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Properties of each local image alias that exists (alias → properties).
    pub local_images: BTreeMap<String, Config>,
    /// How many snapshots each instance has.
    pub snapshots: BTreeMap<String, usize>,
    /// Ansible's `active-color-<env>` file of each environment that has one (env → text).
    pub color_records: BTreeMap<String, String>,
    /// Ansible's `active-color-<env>.history` of each environment that has one.
    pub color_histories: BTreeMap<String, String>,
    /// Each probed slot's answer, or why there is none.
    pub probes: BTreeMap<String, Result<ProbeAnswer, String>>,
    /// Unit files without the agent's marker at each target: timers and the services
    /// they start (name → contents).
    pub foreign_units: BTreeMap<UnitTarget, BTreeMap<String, String>>,
}

/// The key Incus protects an instance from deletion with.
pub const PROTECTION_DELETE: &str = "security.protection.delete";

pub(super) fn foreign<'a>(live: &'a LiveState, name: &str) -> Option<&'a LiveInstance> {
    live.instances.get(name).filter(|i| !i.is_owned())
}

/// The host's image mapping (`incus.images`): reference in the manifests → what Incus is
/// asked for.
pub type ImageMap = BTreeMap<String, String>;

/// The facts [`assess`] will ask for, given the manifests, the observation and the host's
/// image mapping.
pub fn needs(
    manifests: &[&Manifest],
    live: &LiveState,
    images: &ImageMap,
) -> Result<Needs, PlanError> {
    let want = desired(manifests, &live.root_pool(), &SecretDigests::new())?;
    let mut n = Needs::default();
    let aliases: BTreeSet<&str> =
        want.instances.values().filter_map(|d| local_alias(used_image(&d.image, images))).collect();
    n.local_images = aliases.into_iter().map(str::to_string).collect();
    for (name, d) in &want.instances {
        let Some(l) = foreign(live, name) else { continue };
        match &d.slot {
            None => n.snapshots.push(name.clone()),
            Some(slot) if l.is_running() => n.probes.push(ProbeNeed {
                instance: name.clone(),
                loopback: slot.loopback.clone(),
                port: slot.port,
                path: slot.health_path.clone(),
                timeout_ms: slot.health_timeout_ms,
            }),
            Some(_) => {}
        }
    }
    let envs: Vec<String> =
        manifests.iter().filter(|m| !m.apps.is_empty()).map(|m| m.metadata.name.clone()).collect();
    if let Some(runs_in) = &want.edge_runs_in
        && !envs.is_empty()
        && (runs_in == "host" || live.instances.contains_key(runs_in))
    {
        n.records = Some((runs_in.clone(), envs));
    }
    for j in &want.jobs {
        let exists = match &j.target {
            UnitTarget::Host => true,
            UnitTarget::Instance(i) => live.instances.get(i).is_some_and(LiveInstance::is_running),
        };
        if exists && !n.unit_targets.contains(&j.target) {
            n.unit_targets.push(j.target.clone());
        }
    }
    Ok(n)
}

/// Assesses adoption of what `manifests` name on the host observed as `live`, with the
/// `facts` gathered for [`needs`]; `secrets` are the digests of the secrets the manifests
/// reference (they count in an app's spec mark, as in the planner), `images` the host's
/// image mapping.
pub fn assess(
    manifests: &[&Manifest],
    live: &LiveState,
    facts: &Facts,
    secrets: &SecretDigests,
    images: &ImageMap,
) -> Result<Adoption, PlanError> {
    let want = desired(manifests, &live.root_pool(), secrets)?;
    let mut out = Adoption::default();
    let serving = active_colors(manifests, live, facts, &mut out);
    for (name, d) in &want.instances {
        out.instances.push(assess_instance(name, d, live, facts, &serving, images, &want.profiles));
    }
    for (name, p) in &want.profiles {
        let mut a = ResourceAdoption::missing(name, None);
        match live.profiles.get(name) {
            None => {}
            Some(l) if l.is_owned() => a.state = AdoptState::Owned,
            Some(l) => {
                // What its new devices change for the instances using it that the
                // manifests do not name (the named ones are judged one by one).
                for i in live.instances.values().filter(|i| i.profiles.contains(name)) {
                    if want.instances.contains_key(&i.name) {
                        continue;
                    }
                    let then = devices::after(&i.profiles, &i.devices, &want.profiles, live);
                    let now = devices::now(&i.profiles, &i.devices, live);
                    a.differences.extend(devices::differences(
                        &format!("instance `{}` (which the manifests do not name)", i.name),
                        &now,
                        &then,
                    ));
                }
                let moved = devices::changed(&l.devices, &p.devices);
                if !moved.is_empty() {
                    a.notes.push(format!("the first apply sets its devices {}", moved.join(", ")));
                }
                // A config change reaches every instance using the profile: for those the
                // manifests do not name, it is a difference the operator settles first.
                let others: Vec<String> = live
                    .instances
                    .values()
                    .filter(|i| i.profiles.contains(name) && !want.instances.contains_key(&i.name))
                    .map(|i| format!("`{}`", i.name))
                    .collect();
                let keys: BTreeSet<&String> = l.config.keys().chain(p.config.keys()).collect();
                for k in keys.into_iter().filter(|k| !k.starts_with(MARK_PREFIX)) {
                    let change = match (l.config.get(k), p.config.get(k)) {
                        (Some(v), Some(w)) if v != w => format!("sets {k}: {v} -> {w}"),
                        (None, Some(w)) => format!("sets {k}: {w}"),
                        (Some(v), None) => format!("removes {k} ({v}): not declared"),
                        _ => continue,
                    };
                    if others.is_empty() {
                        a.notes.push(format!("the first apply {change}"));
                    } else {
                        a.differences.push(format!(
                            "the first apply {change}, which changes instance(s) {} (which the manifests do not name) too — declare the key as it is live, or move them off this profile",
                            others.join(", ")
                        ));
                    }
                }
                if l.description != p.description {
                    a.notes.push("the first apply sets its description".to_string());
                }
                a.marks = Config::from([
                    (MARK_MANAGED.to_string(), "true".to_string()),
                    (MARK_HOST.to_string(), want.host.clone()),
                ]);
                a = a.judged();
            }
        }
        out.profiles.push(a);
    }
    for m in manifests {
        let env = &m.metadata.name;
        for (job_name, job) in &m.jobs {
            let at = UnitTarget::from_on(&job.on);
            let Some(files) = facts.foreign_units.get(&at) else { continue };
            for (unit, service) in timers::duplicates(files, &job.command) {
                out.timers.push(DuplicateTimer {
                    target: at.as_on().to_string(),
                    unit,
                    service,
                    job: format!("{env}/{job_name}"),
                    env: env.clone(),
                    name: job_name.clone(),
                    at: at.clone(),
                });
            }
        }
    }
    Ok(out)
}

fn assess_instance(
    name: &str,
    d: &DesiredInstance,
    live: &LiveState,
    facts: &Facts,
    serving: &BTreeMap<(String, String), BTreeSet<Color>>,
    images: &ImageMap,
    profiles: &BTreeMap<String, DesiredProfile>,
) -> ResourceAdoption {
    let mut a = ResourceAdoption::missing(name, Some(d.env.clone()));
    let Some(l) = live.instances.get(name) else { return a };
    if l.is_owned() {
        a.state = AdoptState::Owned;
        return a;
    }
    if l.kind != d.kind {
        a.differences.push(format!(
            "type: the instance is a {}, the manifest declares a {}",
            l.kind, d.kind
        ));
    }
    let want_family = image_family(&d.image, images, &facts.local_images);
    let named = match images.get(&d.image) {
        Some(used) => format!("`{}` (mapped to `{used}`)", d.image),
        None => format!("`{}`", d.image),
    };
    match (ImageFamily::of_instance(l), want_family) {
        (Some(have), Some(want)) if have != want => a.differences.push(format!(
            "image: the instance was made from {have} (image.os/image.release), the manifest names {named} ({want})"
        )),
        (Some(_), Some(_)) => {}
        (None, _) => a.differences.push(
            "image: the instance records no image family (image.os/image.release): it cannot be compared with the manifest's".to_string(),
        ),
        (Some(_), None) => a.differences.push(format!(
            "image: the family of {named} is unknown (no local image with that alias, or a remote other than `images:` or a mirror)"
        )),
    }
    if l.profiles != d.profiles {
        a.differences.push(format!(
            "profiles: live [{}], manifest [{}]",
            l.profiles.join(", "),
            d.profiles.join(", ")
        ));
    }
    let now = devices::now(&l.profiles, &l.devices, live);
    let then = devices::after(&d.profiles, &d.devices, profiles, live);
    a.differences.extend(devices::differences("the instance", &now, &then));
    let own = devices::changed(&l.devices, &d.devices);
    if !own.is_empty() && now == then {
        a.notes.push(format!(
            "the first apply sets its own devices {} as the manifests declare them: what it runs with stays the same",
            own.join(", ")
        ));
    }
    if d.slot.is_none() && !d.protect {
        let mut held = Vec::new();
        if l.config.get(PROTECTION_DELETE).is_some_and(|v| v == "true") {
            held.push(format!("Incus protects it ({PROTECTION_DELETE}=true)"));
        }
        if let Some(n) = facts.snapshots.get(name).filter(|n| **n > 0) {
            held.push(format!("it has {n} snapshot(s)"));
        }
        if !held.is_empty() {
            a.differences.push(format!(
                "protected data missing its flag: {}, but the manifest does not set `protect: true` — adopted unprotected, the agent could recreate it",
                held.join(" and ")
            ));
        }
    }
    a.marks = d
        .config
        .iter()
        .filter(|(k, _)| k.starts_with(MARK_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in d.config.iter().filter(|(k, _)| !k.starts_with(MARK_PREFIX)) {
        if l.config.get(k) != Some(v) {
            a.notes.push(format!("the first apply sets {k}={v}"));
        }
    }
    if let Some(slot) = &d.slot {
        assess_release(&mut a, l, slot, facts, serving);
    }
    a.judged()
}
