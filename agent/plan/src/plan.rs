//! The planner: desired state × live state → an ordered list of typed actions, each with
//! its reason. Pure and deterministic: the same inputs give the same plan, byte for byte.
//!
//! Order: networks → profiles → protected data instances (snapshot first) → other
//! instances → app slots (create, deploy) → health gates → edge switch → verification
//! through the edge → jobs → prune. Anything the agent must not do (touch a foreign
//! resource, delete protected data, promote while a gating job fails) becomes a
//! [`Refusal`], reported and never executed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use veza_model::Manifest;
use veza_model::manifest::{Color, Release};
use veza_model::naming;

use crate::desired::{Desired, DesiredInstance, SlotSpec, desired};
use crate::edge::{EdgeEnv, EdgeSettings, render_edge};
use crate::live::{Devices, LiveState, MARK_HOST, MARK_IMAGE, MARK_KEYS, MARK_RELEASE, UnitTarget};

/// What the planner needs besides desired and live state.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Paths the rendered HAProxy config refers to.
    pub edge_settings: EdgeSettings,
    /// Failing or stale jobs (`env/job` → why), for promotion gates.
    pub failing_jobs: BTreeMap<String, String>,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Create a managed network.
    CreateNetwork { name: String, config: BTreeMap<String, String> },
    /// Create a profile.
    CreateProfile {
        name: String,
        description: String,
        config: BTreeMap<String, String>,
        devices: Devices,
    },
    /// Replace a profile's config and devices.
    UpdateProfile {
        name: String,
        description: String,
        config: BTreeMap<String, String>,
        devices: Devices,
    },
    /// Snapshot a protected instance before changing it, keeping the newest `keep`.
    Snapshot { instance: String, keep: u32 },
    /// Create (and start) an instance.
    CreateInstance {
        name: String,
        image: String,
        kind: String,
        profiles: Vec<String>,
        config: BTreeMap<String, String>,
        devices: Devices,
    },
    /// Set an instance's managed config keys, devices and profiles.
    UpdateInstance {
        name: String,
        profiles: Vec<String>,
        config: BTreeMap<String, String>,
        remove_keys: Vec<String>,
        devices: Devices,
    },
    /// Start a stopped instance.
    StartInstance { name: String },
    /// Delete an owned, unprotected instance.
    DeleteInstance { name: String },
    /// Download the artifact, check its sha256, unpack it in the slot, start the app,
    /// and mark the slot with the release.
    DeployRelease { instance: String, slot: SlotSpec },
    /// Wait until the slot answers its health check.
    HealthGate { instance: String, slot: SlotSpec },
    /// Validate and install the edge config, then reload HAProxy.
    InstallEdge { runs_in: String, config: String, switch: bool },
    /// Send requests through the edge and check they reach the expected release.
    VerifyEdge {
        env: String,
        app: String,
        color: Color,
        release: String,
        host: String,
        path: String,
        listen: String,
    },
    /// Install (or update) job unit files and enable their timers.
    InstallUnits { target: UnitTarget, files: Vec<(String, String)>, timers: Vec<String> },
    /// Disable and remove job unit files that left the manifests.
    RemoveUnits { target: UnitTarget, names: Vec<String> },
    /// Delete an owned profile no longer declared.
    DeleteProfile { name: String },
}

impl Action {
    /// Whether the action touches the edge (a kill between such steps must not leave
    /// HAProxy half-switched; SIGTERM waits for them).
    pub fn is_edge(&self) -> bool {
        matches!(self, Action::InstallEdge { .. } | Action::VerifyEdge { .. })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateNetwork { name, .. } => write!(f, "create network {name}"),
            Action::CreateProfile { name, .. } => write!(f, "create profile {name}"),
            Action::UpdateProfile { name, .. } => write!(f, "update profile {name}"),
            Action::Snapshot { instance, keep } => {
                write!(f, "snapshot {instance} (keep {keep})")
            }
            Action::CreateInstance { name, image, .. } => {
                write!(f, "create instance {name} from {image}")
            }
            Action::UpdateInstance { name, .. } => write!(f, "update instance {name}"),
            Action::StartInstance { name } => write!(f, "start instance {name}"),
            Action::DeleteInstance { name } => write!(f, "delete instance {name}"),
            Action::DeployRelease { instance, slot } => {
                write!(f, "deploy release {} to {instance}", short(&slot.release))
            }
            Action::HealthGate { instance, slot } => {
                write!(
                    f,
                    "wait for {instance} to be healthy ({} {})",
                    slot.health_path, slot.expect_status
                )
            }
            Action::InstallEdge { runs_in, switch, .. } => {
                let what = if *switch { "switch" } else { "update" };
                write!(f, "{what} edge config (haproxy on {runs_in})")
            }
            Action::VerifyEdge { env, app, color, release, host, .. } => write!(
                f,
                "verify {env}/{app} serves {color} {} through the edge (Host: {host})",
                short(release)
            ),
            Action::InstallUnits { target, files, .. } => {
                let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
                write!(f, "install units on {target}: {}", names.join(", "))
            }
            Action::RemoveUnits { target, names } => {
                write!(f, "remove units on {target}: {}", names.join(", "))
            }
            Action::DeleteProfile { name } => write!(f, "delete profile {name}"),
        }
    }
}

fn short(release: &str) -> &str {
    &release[..release.len().min(10)]
}

/// One step: an action and why it is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Why.
    pub reason: String,
}

/// Something the agent will not do, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The resource concerned.
    pub resource: String,
    /// Why it is refused, with a hint.
    pub reason: String,
}

/// A color change the plan performs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Promotion {
    /// Environment.
    pub env: String,
    /// App.
    pub app: String,
    /// Color live before (none on first deploy).
    pub from: Option<Color>,
    /// Color after.
    pub to: Color,
    /// Release of the new color.
    pub release: String,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// What will not be done.
    pub refusals: Vec<Refusal>,
    /// Color changes.
    pub promotions: Vec<Promotion>,
    /// Drift found on detect-only resources (reported, not corrected).
    pub drift: Vec<String>,
    /// The edge config that routes promoted apps back to their previous color, used
    /// when a post-switch check fails.
    #[serde(skip)]
    pub fallback_edge: Option<String>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            writeln!(f, "no changes")?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "{:>3}. {}", i + 1, s.action)?;
            writeln!(f, "     because {}", s.reason)?;
        }
        for p in &self.promotions {
            let from = p.from.map_or("none".to_string(), |c| c.to_string());
            writeln!(f, "promote {}/{}: {from} -> {} ({})", p.env, p.app, p.to, short(&p.release))?;
        }
        for r in &self.refusals {
            writeln!(f, "refused: {}: {}", r.resource, r.reason)?;
        }
        for d in &self.drift {
            writeln!(f, "drift (detect-only): {d}")?;
        }
        Ok(())
    }
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
    fn refuse(&mut self, resource: impl Into<String>, reason: impl Into<String>) {
        self.refusals.push(Refusal { resource: resource.into(), reason: reason.into() });
    }
}

/// Plans the changes that bring `live` to what `manifests` (all manifests this host
/// applies, already validated) declare.
pub fn plan(
    manifests: &[&Manifest],
    live: &LiveState,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let want = desired(manifests, &live.detect_pool())?;
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
    for (name, d) in order {
        plan_instance(name, d, live, &mut b, &mut drift, &mut deployed, &mut kept);
    }
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
            l.edge_config = None;
        }
        l.units
            .retain(|t, _| !matches!(t, UnitTarget::Instance(n) if recreated.contains(n.as_str())));
        fresh = l;
        &fresh
    };
    // A serving slot whose rebuild is refused keeps its live release: the edge goes on
    // naming what really runs there.
    let kept_manifests = keep_live_releases(manifests, &kept);
    let manifests: Vec<&Manifest> = kept_manifests.iter().collect();
    let manifests = manifests.as_slice();

    // Promotions, health gates and the edge.
    let mut promotions = Vec::new();
    let mut overrides: BTreeMap<String, BTreeMap<String, Color>> = BTreeMap::new();
    let mut fallback_overrides: BTreeMap<String, BTreeMap<String, Color>> = BTreeMap::new();
    let mut verify = Vec::new();
    let mut blocked_edge: Vec<String> = Vec::new();
    for m in manifests {
        let env = &m.metadata.name;
        let prefix = m.metadata.instance_prefix();
        for (app_name, app) in &m.apps {
            let target = app.active;
            let live_active = live.active_colors.get(&(env.clone(), app_name.clone())).copied();
            let instance = naming::slot_instance(&prefix, app_name, target);
            let Some(slot) = want.instances.get(&instance).and_then(|d| d.slot.clone()) else {
                continue;
            };
            let changes_color = live_active != Some(target);
            let redeployed = deployed.contains(&instance);
            if !changes_color && !redeployed {
                continue;
            }
            if b.refusals.iter().any(|r| r.resource == format!("instance {instance}")) {
                // The target slot is a foreign instance: never route traffic to it.
                match live_active {
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
            if changes_color && live_active.is_some() {
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
                            live_active.map_or("none".to_string(), |c| c.to_string())
                        ),
                    );
                    if let Some(c) = live_active {
                        overrides.entry(env.clone()).or_default().insert(app_name.clone(), c);
                    }
                    continue;
                }
            }
            b.step(
                Action::HealthGate { instance: instance.clone(), slot: slot.clone() },
                if changes_color {
                    format!("{target} must be healthy before traffic moves to it")
                } else {
                    format!("the active slot was redeployed with release {}", short(&slot.release))
                },
            );
            if changes_color {
                promotions.push(Promotion {
                    env: env.clone(),
                    app: app_name.clone(),
                    from: live_active,
                    to: target,
                    release: slot.release.clone(),
                });
                if let Some(prev) = live_active {
                    fallback_overrides
                        .entry(env.clone())
                        .or_default()
                        .insert(app_name.clone(), prev);
                }
            }
            if let Some(edge) = &m.edge {
                let path = edge
                    .routes
                    .iter()
                    .find(|r| &r.app == app_name)
                    .and_then(|r| r.path_prefix.clone())
                    .unwrap_or_else(|| "/".to_string());
                let listen =
                    edge.listen.as_ref().map_or("0.0.0.0:80".to_string(), |l| l.http.clone());
                if let Some(host) = edge.hosts.first() {
                    verify.push(Step {
                        action: Action::VerifyEdge {
                            env: env.clone(),
                            app: app_name.clone(),
                            color: target,
                            release: slot.release.clone(),
                            host: host.clone(),
                            path,
                            listen,
                        },
                        reason: "the switch is confirmed through the edge itself".to_string(),
                    });
                }
            }
        }
    }

    let mut fallback_edge = None;
    if !blocked_edge.is_empty() {
        b.refuse(
            "edge",
            format!(
                "not updated: {} would have no slot of the agent's to route to",
                blocked_edge.join(", ")
            ),
        );
    } else if let Some(runs_in) = &want.edge_runs_in {
        let config = render_for(manifests, &overrides, &opts.edge_settings)?;
        if live.edge_config.as_deref() != Some(config.as_str()) {
            let switch = !promotions.is_empty();
            b.step(
                Action::InstallEdge { runs_in: runs_in.clone(), config, switch },
                if switch {
                    let list: Vec<String> = promotions
                        .iter()
                        .map(|p| format!("{}/{} -> {}", p.env, p.app, p.to))
                        .collect();
                    format!("promotion: {}", list.join(", "))
                } else if live.edge_config.is_none() {
                    "the edge has no config yet".to_string()
                } else {
                    "the rendered edge config differs from the live one".to_string()
                },
            );
            if !fallback_overrides.is_empty() {
                let mut merged = overrides.clone();
                for (env, apps) in fallback_overrides {
                    merged.entry(env).or_default().extend(apps);
                }
                fallback_edge = Some(render_for(manifests, &merged, &opts.edge_settings)?);
            }
            b.steps.extend(verify);
        }
    }

    plan_jobs(&want, live, &mut b);
    plan_prune(&want, live, &mut b);

    Ok(Plan { steps: b.steps, refusals: b.refusals, promotions, drift, fallback_edge })
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

/// A serving slot the plan leaves as it is (its rebuild was refused), with the release
/// it runs.
struct KeptSlot {
    env: String,
    app: String,
    color: Color,
    release: Release,
}

/// The manifests as the edge must see them: kept slots at their live release.
fn keep_live_releases(manifests: &[&Manifest], kept: &[KeptSlot]) -> Vec<Manifest> {
    manifests
        .iter()
        .map(|m| {
            let mut m = (*m).clone();
            for k in kept.iter().filter(|k| k.env == m.metadata.name) {
                if let Some(slot) = m.apps.get_mut(&k.app).and_then(|a| a.slots.get_mut(&k.color)) {
                    slot.release = Some(k.release.clone());
                }
            }
            m
        })
        .collect()
}

fn plan_instance(
    name: &str,
    d: &DesiredInstance,
    live: &LiveState,
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
                kind: d.kind.to_string(),
                profiles: d.profiles.clone(),
                config: d.config.clone(),
                devices: d.devices.clone(),
            },
            reason,
        );
    };
    let deploy = |b: &mut Builder, deployed: &mut BTreeSet<String>, slot: &SlotSpec| {
        b.step(
            Action::DeployRelease { instance: name.to_string(), slot: slot.clone() },
            format!(
                "the {} slot of {}/{} runs release {}",
                slot.color,
                slot.env,
                slot.app,
                short(&slot.release)
            ),
        );
        deployed.insert(name.to_string());
    };
    let Some(l) = live.instances.get(name) else {
        create(b, format!("instance `{name}` does not exist"));
        if let Some(slot) = &d.slot {
            deploy(b, deployed, slot);
        }
        return;
    };
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
    if !l.kind.is_empty() && l.kind != d.kind {
        rebuild_for.push(format!("type changes from {} to {}", l.kind, d.kind));
    }
    if let Some(slot) = &d.slot {
        if l.release() != Some(slot.release.as_str()) {
            let was = l.release().map_or("nothing".to_string(), |r| short(r).to_string());
            rebuild_for
                .insert(0, format!("release changes from {was} to {}", short(&slot.release)));
        }
        if !rebuild_for.is_empty() {
            let serving =
                live.active_colors.get(&(slot.env.clone(), slot.app.clone())) == Some(&slot.color);
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
            b.step(
                Action::DeleteInstance { name: name.to_string() },
                format!("{}: the slot is rebuilt from its image", rebuild_for.join(", ")),
            );
            create(b, format!("rebuild of the {} slot", slot.color));
            deploy(b, deployed, slot);
            return;
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
    let remove_keys: Vec<String> = managed_before
        .iter()
        .filter(|k| !d.config.contains_key(**k) && l.config.contains_key(**k))
        .map(|k| (*k).to_string())
        .collect();
    let config_differs =
        d.config.iter().any(|(k, v)| l.config.get(k) != Some(v)) || !remove_keys.is_empty();
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
                    .all(|(k, _)| k.starts_with("user.veza."));
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
    if !l.running && !d.detect_only {
        b.step(
            Action::StartInstance { name: name.to_string() },
            format!("instance `{name}` is stopped"),
        );
        if let Some(slot) = &d.slot {
            b.step(
                Action::DeployRelease { instance: name.to_string(), slot: slot.clone() },
                "after a stop, the release is unpacked and started again (a slot may have been changed while stopped)",
            );
            deployed.insert(name.to_string());
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

fn diff_reason(
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

fn plan_jobs(want: &Desired, live: &LiveState, b: &mut Builder) {
    let mut by_target: BTreeMap<&UnitTarget, Vec<&crate::desired::DesiredJob>> = BTreeMap::new();
    for j in &want.jobs {
        by_target.entry(&j.target).or_default().push(j);
    }
    let empty = BTreeMap::new();
    for (target, jobs) in &by_target {
        let have = live.units.get(*target).unwrap_or(&empty);
        let mut files = Vec::new();
        let mut timers = Vec::new();
        for j in jobs {
            let stale = j.files.iter().any(|(n, c)| have.get(n) != Some(c));
            if stale {
                files.extend(j.files.iter().cloned());
                timers.push(j.timer.clone());
            }
        }
        if !files.is_empty() {
            let names: Vec<String> =
                timers.iter().map(|t| t.trim_end_matches(".timer").to_string()).collect();
            b.step(
                Action::InstallUnits { target: (*target).clone(), files, timers },
                format!("job units are missing or differ: {}", names.join(", ")),
            );
        }
    }
    let wanted: BTreeSet<(&UnitTarget, &str)> = want
        .jobs
        .iter()
        .flat_map(|j| j.files.iter().map(move |(n, _)| (&j.target, n.as_str())))
        .collect();
    for (target, files) in &live.units {
        let gone: Vec<String> =
            files.keys().filter(|n| !wanted.contains(&(target, n.as_str()))).cloned().collect();
        if !gone.is_empty() {
            b.step(
                Action::RemoveUnits { target: target.clone(), names: gone },
                "these jobs left the manifests",
            );
        }
    }
}

fn plan_prune(want: &Desired, live: &LiveState, b: &mut Builder) {
    for (name, l) in &live.instances {
        if want.instances.contains_key(name) || !l.is_owned() {
            continue;
        }
        let env = l.env().unwrap_or("");
        if !want.envs.iter().any(|e| e == env) {
            continue; // another host's or a removed environment's: not ours to judge
        }
        if l.is_protected() {
            b.refuse(
                format!("instance {name}"),
                "protected data left the manifests; it is never deleted automatically — delete it by hand once its data is safe",
            );
        } else {
            b.step(
                Action::DeleteInstance { name: name.clone() },
                format!("`{name}` is no longer declared in environment `{env}`"),
            );
        }
    }
    for (name, p) in &live.profiles {
        let ours = p.config.get(MARK_HOST).is_some_and(|h| *h == want.host);
        if p.is_owned() && ours && !want.profiles.contains_key(name) {
            b.step(
                Action::DeleteProfile { name: name.clone() },
                format!("profile `{name}` is no longer declared"),
            );
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
