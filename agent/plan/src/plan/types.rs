//! The plan as data: the typed [`Action`]s, each [`Step`] with its reason, the
//! [`Refusal`]s, the [`Promotion`]s, and how a [`Plan`] reads as text.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use veza_model::manifest::{Color, Release};

use crate::desired::{JobEnvironment, SlotSpec};
use crate::live::{Devices, InstanceKind, UnitTarget};
use crate::slot::{MigrationFiles, SlotFiles};

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
        kind: InstanceKind,
        profiles: Vec<String>,
        config: BTreeMap<String, String>,
        devices: Devices,
        /// On a cluster, the member it is created on (`POST /1.0/instances?target=`);
        /// `None` on a single host.
        #[serde(skip_serializing_if = "Option::is_none")]
        target: Option<String>,
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
    /// Download the artifact, check its sha256, unpack it in the slot, write the app's
    /// environment (rendered at apply time: it may hold secrets) and `files`, start the
    /// app, and mark the slot with the release.
    DeployRelease { instance: String, slot: SlotSpec, files: SlotFiles },
    /// Run the app's migration with the release and its environment, in the slot or the
    /// declared tools instance, before the release is started.
    Migrate { instance: String, slot: SlotSpec, files: MigrationFiles },
    /// Wait until the slot answers its health check (a slot that is not being promoted:
    /// the serving one rebuilt or started again).
    HealthGate(Gate),
    /// Validate and install an edge config that moves no traffic between colors, then
    /// reload HAProxy.
    InstallEdge { runs_in: String, config: String },
    /// Send requests through the edge and check they reach the expected release (after
    /// an edge update that moves no traffic).
    VerifyEdge(EdgeCheck),
    /// Move traffic to other colors as one unit: every gate passes, then the edge config
    /// is installed, then every check through the edge passes; a failed check installs
    /// `fallback` (the previous colors). Never interrupted between the switch and its
    /// checks.
    Promote(Switch),
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
    /// The instances the step changes or runs something in (`host` is not one).
    pub fn instances(&self) -> Vec<&str> {
        match self {
            Action::Snapshot { instance, .. }
            | Action::DeployRelease { instance, .. }
            | Action::Migrate { instance, .. } => vec![instance],
            Action::HealthGate(gate) => vec![&gate.instance],
            Action::CreateInstance { name, .. }
            | Action::UpdateInstance { name, .. }
            | Action::StartInstance { name }
            | Action::DeleteInstance { name } => vec![name],
            Action::InstallUnits { target: UnitTarget::Instance(name), .. }
            | Action::RemoveUnits { target: UnitTarget::Instance(name), .. } => vec![name],
            Action::InstallEdge { runs_in, .. } if runs_in != "host" => vec![runs_in],
            Action::Promote(switch) => {
                let mut names: Vec<&str> =
                    switch.gates.iter().map(|g| g.instance.as_str()).collect();
                if switch.runs_in != "host" {
                    names.push(&switch.runs_in);
                }
                names
            }
            Action::InstallUnits { .. }
            | Action::RemoveUnits { .. }
            | Action::InstallEdge { .. }
            | Action::VerifyEdge(_)
            | Action::CreateNetwork { .. }
            | Action::CreateProfile { .. }
            | Action::UpdateProfile { .. }
            | Action::DeleteProfile { .. } => vec![],
        }
    }
}

/// A slot that must answer its health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    /// The slot instance.
    pub instance: String,
    /// What runs there and how it is checked.
    pub slot: SlotSpec,
    /// Whether the slot receives its app's traffic (the serving slot rebuilt or started
    /// again): when its gate fails, it still does. `false` for a slot traffic would move
    /// to.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub serving: bool,
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wait for {} to be healthy ({} {})",
            self.instance, self.slot.health_path, self.slot.expect_status
        )
    }
}

/// Requests sent through the edge to check it reaches the expected release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeCheck {
    /// Environment.
    pub env: String,
    /// App.
    pub app: String,
    /// The color that must answer.
    pub color: Color,
    /// The release it must report.
    pub release: Release,
    /// `Host` header of the requests.
    pub host: String,
    /// Path requested.
    pub path: String,
    /// Where the requests go: the shared edge's HTTPS listener when `tls`, else its HTTP
    /// one.
    pub listen: String,
    /// Over TLS: the environment terminates TLS at the edge, whose plain HTTP may answer
    /// only a redirect (which reaches no slot and proves nothing).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl fmt::Display for EdgeCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verify {}/{} serves {} {} through the edge (Host: {}{})",
            self.env,
            self.app,
            self.color,
            self.release.short(),
            self.host,
            if self.tls { ", HTTPS" } else { "" }
        )
    }
}

/// A promotion as one unit: gate → switch → verify → fallback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switch {
    /// The color changes it performs.
    pub promotions: Vec<Promotion>,
    /// Slots that must be healthy before traffic moves (the promoted colors).
    pub gates: Vec<Gate>,
    /// Where HAProxy runs (`host` or an instance).
    pub runs_in: String,
    /// The edge config routing to the new colors (every environment of the host).
    pub config: String,
    /// Checks through the edge once the config is installed.
    pub checks: Vec<EdgeCheck>,
    /// The config routing promoted apps back to their previous colors, installed when a
    /// check fails; `None` when no promoted app had a previous color (the config live
    /// before the switch is put back then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// A phase of a promotion, as the journal and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a gate.
    Gate,
    /// Installing the new edge config.
    Switch,
    /// Checking through the edge.
    Verify,
    /// Putting the previous colors back.
    Fallback,
    /// Every check through the edge passed (the end of a promotion that kept its switch).
    Checked,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Gate => "gate",
            Phase::Switch => "switch",
            Phase::Verify => "verify",
            Phase::Fallback => "fallback",
            Phase::Checked => "checked",
        })
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
            Action::CreateInstance { name, image, target, .. } => {
                write!(f, "create instance {name} from {image}")?;
                match target {
                    Some(member) => write!(f, " on member {member}"),
                    None => Ok(()),
                }
            }
            Action::UpdateInstance { name, .. } => write!(f, "update instance {name}"),
            Action::StartInstance { name } => write!(f, "start instance {name}"),
            Action::DeleteInstance { name } => write!(f, "delete instance {name}"),
            Action::DeployRelease { instance, slot, .. } => {
                write!(f, "deploy release {} to {instance}", slot.release.short())
            }
            Action::Migrate { instance, slot, .. } => write!(
                f,
                "migrate {}/{} for release {} in {instance}",
                slot.env,
                slot.app,
                slot.release.short()
            ),
            Action::HealthGate(gate) => gate.fmt(f),
            Action::InstallEdge { runs_in, .. } => {
                write!(f, "update edge config (haproxy on {runs_in})")
            }
            Action::VerifyEdge(check) => check.fmt(f),
            Action::Promote(s) => {
                let moves: Vec<String> = s
                    .promotions
                    .iter()
                    .map(|p| {
                        let from = p.from.map_or("none".to_string(), |c| c.to_string());
                        format!("{}/{}: {from} -> {} ({})", p.env, p.app, p.to, p.release.short())
                    })
                    .collect();
                write!(f, "promote {} through haproxy on {}", moves.join(", "), s.runs_in)
            }
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
    pub release: Release,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Steps, in order.
    pub steps: Vec<Step>,
    /// What will not be done.
    pub refusals: Vec<Refusal>,
    /// Drift found on detect-only resources (reported, not corrected).
    pub drift: Vec<String>,
    /// Disruptive steps (and their dependants) held until their environment's next
    /// maintenance window (`super::maintenance::hold`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<super::maintenance::Waiting>,
    /// When the plan replaces a live edge config veza-agent did not write (the first
    /// install after a cutover): the unified diff from it to the rendered config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge_takeover: Option<String>,
    /// On a cluster, what the operator should know about where instances run (an
    /// instance on an offline member, both colors of an app on one member…;
    /// `super::placement`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The color changes the plan performs (those of its [`Action::Promote`] step).
    pub fn promotions(&self) -> Vec<&Promotion> {
        self.switch().map(|s| s.promotions.iter().collect()).unwrap_or_default()
    }

    /// Every file the plan writes, as rendered: where (`instance:path`, `host:path`, or
    /// what the text is) and the text. Environment files are not among them: they may
    /// hold secrets and are rendered at apply time.
    pub fn rendered_files(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for s in &self.steps {
            match &s.action {
                Action::DeployRelease { instance, files, .. } => {
                    out.push((
                        format!("{instance}:{}", crate::slot::APP_RUN_SCRIPT),
                        files.run_script.as_str(),
                    ));
                    out.push((
                        format!("{instance}:/etc/systemd/system/veza-app.service (when PID 1 is systemd)"),
                        files.unit.as_str(),
                    ));
                }
                Action::Migrate { instance, slot, files } => out.push((
                    format!("{instance}: the migration of {}/{} (sh -c)", slot.env, slot.app),
                    files.script.as_str(),
                )),
                Action::InstallEdge { runs_in, config } => {
                    out.push((format!("{runs_in}: haproxy.cfg"), config.as_str()));
                }
                Action::Promote(switch) => {
                    out.push((format!("{}: haproxy.cfg", switch.runs_in), switch.config.as_str()));
                    if let Some(back) = &switch.fallback {
                        out.push((
                            format!("{}: haproxy.cfg when a check fails", switch.runs_in),
                            back.as_str(),
                        ));
                    }
                }
                Action::InstallUnits { target, files, .. } => {
                    for (name, text) in files {
                        out.push((format!("{target}:{name}"), text.as_str()));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The plan's promotion step, if it moves traffic (at most one: the edge config is
    /// shared by every environment of the host).
    pub fn switch(&self) -> Option<&Switch> {
        self.steps.iter().find_map(|s| match &s.action {
            Action::Promote(switch) => Some(switch),
            _ => None,
        })
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
            if let Action::Promote(switch) = &s.action {
                for g in &switch.gates {
                    writeln!(f, "     - {g}")?;
                }
                writeln!(f, "     - switch the edge config")?;
                for c in &switch.checks {
                    writeln!(f, "     - {c}")?;
                }
                let back = if switch.fallback.is_some() {
                    "the previous colors"
                } else {
                    "the config live before"
                };
                writeln!(f, "     - on a failed check: {back} back on the edge")?;
            }
            writeln!(f, "     because {}", s.reason)?;
        }
        for w in &self.waiting {
            write!(f, "{w}")?;
        }
        if let Some(diff) = &self.edge_takeover {
            writeln!(
                f,
                "edge takeover: the live haproxy.cfg was not written by veza-agent; it is replaced by the rendered one:"
            )?;
            for line in diff.lines() {
                writeln!(f, "  {line}")?;
            }
        }
        for r in &self.refusals {
            writeln!(f, "refused: {}: {}", r.resource, r.reason)?;
        }
        for d in &self.drift {
            writeln!(f, "drift (detect-only): {d}")?;
        }
        for c in &self.cluster {
            writeln!(f, "cluster: {c}")?;
        }
        Ok(())
    }
}
