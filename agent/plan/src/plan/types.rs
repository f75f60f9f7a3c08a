//! The plan as data: the typed [`Action`]s, each [`Step`] with its reason, the
//! [`Refusal`]s, the [`Promotion`]s, and how a [`Plan`] reads as text.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use veza_model::manifest::Color;

use crate::desired::{JobEnvironment, SlotSpec};
use crate::live::{Devices, UnitTarget};

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
    /// Run the app's migration with the release and its environment, in the slot or the
    /// declared tools instance, before the release is started.
    Migrate { instance: String, slot: SlotSpec },
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
    /// Each job's environment file (root-only, beside its unit) is rendered at apply time.
    InstallUnits {
        target: UnitTarget,
        files: Vec<(String, String)>,
        timers: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        environments: Vec<JobEnvironment>,
    },
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
            Action::Migrate { instance, slot } => write!(
                f,
                "migrate {}/{} for release {} in {instance}",
                slot.env,
                slot.app,
                short(&slot.release)
            ),
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

pub(super) fn short(release: &str) -> &str {
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
    /// Disruptive steps (and their dependants) held until their environment's next
    /// maintenance window (`super::maintenance::hold`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<super::maintenance::Waiting>,
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
            writeln!(
                f,
                "{}",
                if self.waiting.is_empty() { "no changes" } else { "nothing to apply now" }
            )?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "{:>3}. {}", i + 1, s.action)?;
            writeln!(f, "     because {}", s.reason)?;
        }
        for w in &self.waiting {
            write!(f, "{w}")?;
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
