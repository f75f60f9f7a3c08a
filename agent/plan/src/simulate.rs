//! The planner's model of its drivers: what live state executing a plan leaves behind.
//! Used by the planner's specification (plan, apply, plan again: nothing to do) and by
//! the planning benchmark. Pure.

use crate::live::{
    InstanceStatus, LiveEdge, LiveInstance, LiveNetwork, LiveProfile, LiveState, MARK_DEPLOYED,
    MARK_RELEASE,
};
use crate::plan::{Action, Plan};

/// Why a plan cannot be replayed on the given live state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step `{step}` acts on instance `{instance}`, which the live state does not have")]
pub struct SimulateError {
    /// The step, as printed.
    pub step: String,
    /// The missing instance.
    pub instance: String,
}

/// `live` after every step of `plan` succeeded.
pub fn applied(live: &LiveState, plan: &Plan) -> Result<LiveState, SimulateError> {
    let mut l = live.clone();
    for s in &plan.steps {
        let missing = |instance: &str| SimulateError {
            step: s.action.to_string(),
            instance: instance.to_string(),
        };
        match &s.action {
            Action::CreateProfile { name, config, devices, .. }
            | Action::UpdateProfile { name, config, devices, .. } => {
                let profile = LiveProfile {
                    name: name.clone(),
                    config: config.clone(),
                    devices: devices.clone(),
                    ..LiveProfile::default()
                };
                l.profiles.insert(name.clone(), profile);
            }
            Action::CreateInstance { name, profiles, config, devices, kind, target, .. } => {
                l.instances.insert(
                    name.clone(),
                    LiveInstance {
                        name: name.clone(),
                        kind: *kind,
                        status: InstanceStatus::Running,
                        config: config.clone(),
                        devices: devices.clone(),
                        expanded_devices: devices.clone(),
                        profiles: profiles.clone(),
                        description: String::new(),
                        location: target.clone(),
                    },
                );
            }
            Action::UpdateInstance { name, profiles, config, remove_keys, devices } => {
                let i = l.instances.get_mut(name).ok_or_else(|| missing(name))?;
                i.config.extend(config.clone());
                for k in remove_keys {
                    i.config.remove(k);
                }
                i.devices.clone_from(devices);
                i.profiles.clone_from(profiles);
            }
            Action::StartInstance { name } => {
                l.instances.get_mut(name).ok_or_else(|| missing(name))?.status =
                    InstanceStatus::Running;
            }
            Action::DeleteInstance { name } => {
                l.instances.remove(name);
            }
            Action::DeployRelease { instance, slot, .. } => {
                let config =
                    &mut l.instances.get_mut(instance).ok_or_else(|| missing(instance))?.config;
                config.insert(MARK_RELEASE.to_string(), slot.release.to_string());
                config.insert(MARK_DEPLOYED.to_string(), "agent".to_string());
            }
            Action::InstallEdge { config, .. }
            | Action::Promote(crate::plan::Switch { config, .. }) => {
                l.edge = LiveEdge::from_config(config.clone());
            }
            Action::InstallUnits { target, files, .. } => {
                l.units.entry(target.clone()).or_default().extend(files.iter().cloned());
            }
            Action::RemoveUnits { target, names } => {
                let u = l.units.entry(target.clone()).or_default();
                for n in names {
                    u.remove(n);
                }
            }
            Action::DeleteProfile { name } => {
                l.profiles.remove(name);
            }
            Action::CreateNetwork { name, config } => {
                let network = LiveNetwork {
                    name: name.clone(),
                    managed: true,
                    config: config.clone(),
                    ..LiveNetwork::default()
                };
                l.networks.insert(name.clone(), network);
            }
            Action::Snapshot { .. }
            | Action::Migrate { .. }
            | Action::HealthGate(_)
            | Action::VerifyEdge(_) => {}
        }
    }
    Ok(l)
}
