//! The apply engine: executes a [`Plan`] step by step through the drivers.
//!
//! - Steps run in plan order; the caller's [`Hooks::before_step`] writes the journal
//!   before each one, so a crash leaves a trace of where it stopped.
//! - The first failing step stops the run and is reported with its action and the
//!   driver's error (command, exit status, stderr).
//! - Promotions are health-gated and self-reverting: a slot that never becomes healthy,
//!   or not for [`GATE_STABLE_FOR`] in a row (a flapping slot), stops the run before
//!   traffic moves; a verification through the edge that fails
//!   after the switch installs the fallback edge (previous colors) — both end as
//!   [`ApplyOutcome::RolledBack`], never as success. The failed slot stays running for
//!   forensics.
//! - A stop request is honoured between steps only, and never between an edge switch
//!   and its verification.
//! - Before the first step that touches an instance, Incus operations still running on
//!   the plan's instances (a killed run's create or start, which hold Incus's instance
//!   lock) are waited for, up to [`Gates::operations_timeout`]: one `GET /1.0/operations`
//!   per run with such steps, none on a run without.
//!
//! The engine reaches the world only through [`Drivers`]: Incus, the edge, units,
//! artifacts, the HTTP [`Probe`] and the [`Clock`], so that `tests.rs` runs plans in
//! process over the fakes. `deploy.rs` puts a release into a slot; `gate.rs` holds the
//! health gate and the verification through the edge.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use veza_plan::live::UnitTarget;
use veza_plan::{Action, Plan, Step};

use crate::artifact::ArtifactStore;
use crate::clock::{Clock, SystemClock};
use crate::http::{HttpProbe, Probe};
use veza_model::live::InstanceKind;

use crate::incus::{
    ImageSource, Incus, IncusError, InstanceSpec, InstanceUpdate, ProfileSpec, StateChange,
};
use crate::systemd::Units;

mod deploy;
mod gate;
#[cfg(test)]
mod tests;

pub use deploy::{APP_ENV_FILE, APP_RUN_SCRIPT, app_run_script, app_unit};
use deploy::{MigrationError, deploy_release, redact, run_migration};
pub use gate::{GATE_PROBE_EVERY, GATE_STABLE_FOR, GateRule};
use gate::{health_gate, verify_edge};

/// The edge as the apply engine needs it (`Sync`, as every driver: the engine shares its
/// drivers across awaits).
pub trait Edge: Sync {
    /// The live config text, if any.
    fn live_config(&self) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// Validates, installs and reloads `config`; on any failure the previous config is
    /// back in place and serving, and the error says why.
    fn install(&self, config: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// What the caller wants to know or decide during a run.
pub trait Hooks {
    /// Called before step `index` runs (write the journal here).
    fn before_step(&mut self, index: usize, step: &Step);
    /// Whether a stop was requested (checked between steps).
    fn stop_requested(&self) -> bool;
    /// Whether a newer commit arrived (checked while waiting for health).
    fn preempted(&self) -> bool;
}

/// Timing and limits of gates.
#[derive(Debug, Clone)]
pub struct Gates {
    /// How long a slot may take to become healthy.
    pub health_timeout: Duration,
    /// Requests sent through the edge after a switch.
    pub verify_requests: u32,
    /// Time limit of one request through the edge after a switch (a slot's own probes
    /// use its `health.timeout`).
    pub probe_timeout: Duration,
    /// How long to wait for Incus operations still running on the plan's instances (a
    /// killed run's create or start) before the first step that touches one.
    pub operations_timeout: Duration,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            health_timeout: Duration::from_secs(60),
            verify_requests: 5,
            probe_timeout: Duration::from_secs(2),
            operations_timeout: Duration::from_secs(120),
        }
    }
}

/// The drivers a run uses. The probe and the clock default to the real ones
/// ([`HttpProbe`], [`SystemClock`]); tests give scripted ones.
pub struct Drivers<'a, I, E, U, P = HttpProbe, C = SystemClock> {
    /// Incus.
    pub incus: &'a I,
    /// The edge.
    pub edge: &'a E,
    /// systemd units.
    pub units: &'a U,
    /// Release artifacts.
    pub artifacts: &'a ArtifactStore,
    /// HTTP requests of health probes on loopback addresses and of verifications
    /// through the edge.
    pub probe: &'a P,
    /// The time source of the health gate and of step timings.
    pub clock: &'a C,
    /// The decrypted secrets environment files are rendered from.
    pub secrets: &'a veza_secrets::SecretValues,
    /// Gate settings.
    pub gates: Gates,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ApplyOutcome {
    /// Every step ran.
    Applied,
    /// A promotion gate failed; traffic is on the previous colors.
    RolledBack { reason: String },
    /// A step failed; the run stopped there.
    Failed { step: String, error: String },
    /// A stop was requested; the run stopped between steps.
    Interrupted { before: String },
    /// A newer commit arrived while waiting for health.
    Preempted { during: String },
}

/// The result of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    /// How it ended.
    pub outcome: ApplyOutcome,
    /// Steps completed.
    pub steps_done: usize,
    /// Each completed step and how long it took, in milliseconds.
    pub timings: Vec<(String, u64)>,
    /// `(env, app, release)` of each migration that succeeded in this run.
    pub migrated: Vec<(String, String, String)>,
}

enum StepError {
    Failed(String),
    /// A migration failed: the deploy stops before traffic moves.
    Migration(String),
    Unhealthy(String),
    Preempted,
}

/// Runs `plan`.
pub async fn apply<I: Incus, E: Edge, U: Units, P: Probe, C: Clock, H: Hooks>(
    plan: &Plan,
    d: &Drivers<'_, I, E, U, P, C>,
    hooks: &mut H,
) -> ApplyReport {
    let mut timings = Vec::new();
    let mut migrated = Vec::new();
    let mut previous_edge: Option<String> = None;
    let mut switched = false;
    let touched: BTreeSet<&str> =
        plan.steps.iter().filter_map(|s| touched_instance(&s.action)).collect();
    let mut settled = touched.is_empty();
    for (i, step) in plan.steps.iter().enumerate() {
        let in_edge_switch = switched && step.action.is_edge();
        if hooks.stop_requested() && !in_edge_switch {
            return ApplyReport {
                outcome: ApplyOutcome::Interrupted { before: step.action.to_string() },
                steps_done: i,
                timings,
                migrated,
            };
        }
        hooks.before_step(i, step);
        let started = d.clock.now();
        if !settled && touched_instance(&step.action).is_some() {
            // Once per run, before the first step that touches an instance: what a killed
            // run left running there (a create, a start) holds Incus's instance lock.
            settled = true;
            let names: Vec<String> = touched.iter().map(|n| (*n).to_string()).collect();
            if let Err(e) = d.incus.wait_for_operations(&names, d.gates.operations_timeout).await {
                return ApplyReport {
                    outcome: ApplyOutcome::Failed {
                        step: step.action.to_string(),
                        error: e.to_string(),
                    },
                    steps_done: i,
                    timings,
                    migrated,
                };
            }
        }
        let result = match &step.action {
            Action::InstallEdge { config, switch, .. } => {
                if previous_edge.is_none() {
                    previous_edge = d.edge.live_config().await.ok().flatten();
                }
                let r = d.edge.install(config).await.map_err(StepError::Failed);
                if r.is_ok() && *switch {
                    switched = true;
                }
                r
            }
            Action::VerifyEdge { env, app, release, host, path, listen, color } => verify_edge(
                d.probe,
                listen,
                host,
                path,
                release,
                d.gates.verify_requests,
                d.gates.probe_timeout,
            )
            .await
            .map_err(|why| StepError::Unhealthy(format!("{env}/{app} on {color}: {why}"))),
            other => run_step(other, d, hooks).await,
        };
        match result {
            Ok(()) => {
                if let Action::Migrate { slot, .. } = &step.action {
                    migrated.push((slot.env.clone(), slot.app.clone(), slot.release.clone()));
                }
                timings.push((
                    step.action.to_string(),
                    d.clock.now().saturating_duration_since(started).as_millis() as u64,
                ))
            }
            Err(StepError::Migration(why)) => {
                // Nothing moved yet: the new release was not started, the serving color
                // still serves. Ends like a failed gate (the commit is quarantined).
                return ApplyReport {
                    outcome: ApplyOutcome::RolledBack {
                        reason: format!("{why}; traffic was not moved"),
                    },
                    steps_done: i,
                    timings,
                    migrated,
                };
            }
            Err(StepError::Failed(error)) => {
                return ApplyReport {
                    outcome: ApplyOutcome::Failed { step: step.action.to_string(), error },
                    steps_done: i,
                    timings,
                    migrated,
                };
            }
            Err(StepError::Preempted) => {
                return ApplyReport {
                    outcome: ApplyOutcome::Preempted { during: step.action.to_string() },
                    steps_done: i,
                    timings,
                    migrated,
                };
            }
            Err(StepError::Unhealthy(why)) => {
                let mut reason = why;
                if switched {
                    let back = plan.fallback_edge.clone().or(previous_edge.clone());
                    match back {
                        Some(cfg) => match d.edge.install(&cfg).await {
                            Ok(()) => reason.push_str("; traffic went back to the previous color"),
                            Err(e) => {
                                return ApplyReport {
                                    outcome: ApplyOutcome::Failed {
                                        step: "roll back the edge".to_string(),
                                        error: format!(
                                            "{reason}; and restoring the previous edge failed: {e}"
                                        ),
                                    },
                                    steps_done: i,
                                    timings,
                                    migrated,
                                };
                            }
                        },
                        None => reason.push_str("; there was no previous edge to go back to"),
                    }
                } else if let Action::HealthGate { instance, slot } = &step.action
                    && !plan.promotions.iter().any(|p| p.env == slot.env && p.app == slot.app)
                {
                    // No promotion: the gate is on the serving slot itself, rebuilt in
                    // place (`in_place_updates`) or started again. Say what is true: it
                    // still gets the traffic.
                    let rebuilt = plan.steps.iter().any(|s| {
                        matches!(&s.action, Action::DeleteInstance { name } if name == instance)
                    });
                    let what = if rebuilt {
                        "was rebuilt in place (in_place_updates: true)"
                    } else {
                        "was started again"
                    };
                    reason.push_str(&format!(
                        "; {instance} {what} and still receives {}/{}'s traffic; fix the release or promote the other color",
                        slot.env, slot.app
                    ));
                } else {
                    reason.push_str("; traffic was not moved");
                }
                return ApplyReport {
                    outcome: ApplyOutcome::RolledBack { reason },
                    steps_done: i,
                    timings,
                    migrated,
                };
            }
        }
    }
    ApplyReport { outcome: ApplyOutcome::Applied, steps_done: plan.steps.len(), timings, migrated }
}

/// The instance a step changes or runs something in, if any.
fn touched_instance(action: &Action) -> Option<&str> {
    match action {
        Action::Snapshot { instance, .. }
        | Action::DeployRelease { instance, .. }
        | Action::Migrate { instance, .. }
        | Action::HealthGate { instance, .. } => Some(instance),
        Action::CreateInstance { name, .. }
        | Action::UpdateInstance { name, .. }
        | Action::StartInstance { name }
        | Action::DeleteInstance { name } => Some(name),
        Action::InstallUnits { target: UnitTarget::Instance(name), .. }
        | Action::RemoveUnits { target: UnitTarget::Instance(name), .. } => Some(name),
        Action::InstallEdge { runs_in, .. } if runs_in != "host" => Some(runs_in),
        Action::InstallUnits { .. }
        | Action::RemoveUnits { .. }
        | Action::InstallEdge { .. }
        | Action::VerifyEdge { .. }
        | Action::CreateNetwork { .. }
        | Action::CreateProfile { .. }
        | Action::UpdateProfile { .. }
        | Action::DeleteProfile { .. } => None,
    }
}

async fn run_step<I: Incus, E: Edge, U: Units, P: Probe, C: Clock, H: Hooks>(
    action: &Action,
    d: &Drivers<'_, I, E, U, P, C>,
    hooks: &H,
) -> Result<(), StepError> {
    let fail = |e: &dyn std::fmt::Display| StepError::Failed(e.to_string());
    match action {
        Action::CreateNetwork { name, config } => {
            d.incus.create_network(name, "bridge", config).await.map_err(|e| fail(&e))
        }
        Action::CreateProfile { name, description, config, devices } => d
            .incus
            .create_profile(&ProfileSpec {
                name: name.clone(),
                description: description.clone(),
                config: config.clone(),
                devices: devices.clone(),
            })
            .await
            .map_err(|e| fail(&e)),
        Action::UpdateProfile { name, description, config, devices } => d
            .incus
            .update_profile(&ProfileSpec {
                name: name.clone(),
                description: description.clone(),
                config: config.clone(),
                devices: devices.clone(),
            })
            .await
            .map(|_| ())
            .map_err(|e| fail(&e)),
        Action::DeleteProfile { name } => d.incus.delete_profile(name).await.map_err(|e| fail(&e)),
        Action::Snapshot { instance, keep } => {
            d.incus.create_snapshot(instance, None).await.map_err(|e| fail(&e))?;
            crate::incus::prune_snapshots(d.incus, instance, *keep as usize)
                .await
                .map(|_| ())
                .map_err(|e| fail(&e))
        }
        Action::CreateInstance { name, image, kind, profiles, config, devices } => {
            let source = image_source(image).map_err(StepError::Failed)?;
            let kind = if kind == "virtual-machine" {
                InstanceKind::VirtualMachine
            } else {
                InstanceKind::Container
            };
            let spec = InstanceSpec {
                name: name.clone(),
                kind,
                source,
                config: config.clone(),
                devices: devices.clone(),
                profiles: profiles.clone(),
                start: true,
            };
            match d.incus.create_instance(&spec).await {
                Ok(()) => Ok(()),
                // Created meanwhile by a run killed after its request (its operation was
                // waited for above): adopted when it is exactly what this step creates.
                Err(first @ IncusError::AlreadyExists { .. }) => adopt_created(d.incus, &spec)
                    .await
                    .map_err(|e| StepError::Failed(format!("{first}; {e}"))),
                // Created but not started (LXC's start hook timing out on a busy incusd):
                // one more start before the step fails.
                Err(first) => match d.incus.instance(name).await {
                    Ok(Some(i)) if i.is_owned() && !i.is_running() => {
                        d.incus.change_state(name, &StateChange::start()).await.map_err(|e| {
                            StepError::Failed(format!("{first}; a second start failed too: {e}"))
                        })
                    }
                    _ => Err(fail(&first)),
                },
            }
        }
        Action::UpdateInstance { name, profiles, config, remove_keys, devices } => {
            let live = d
                .incus
                .instance(name)
                .await
                .map_err(|e| fail(&e))?
                .ok_or_else(|| StepError::Failed(format!("instance `{name}` disappeared")))?;
            let mut merged = live.settable_config();
            for k in remove_keys {
                merged.remove(k);
            }
            merged.extend(config.clone());
            d.incus
                .update_instance(
                    name,
                    &InstanceUpdate {
                        config: merged,
                        devices: devices.clone(),
                        profiles: profiles.clone(),
                    },
                )
                .await
                .map(|_| ())
                .map_err(|e| fail(&e))
        }
        Action::StartInstance { name } => {
            d.incus.change_state(name, &StateChange::start()).await.map_err(|e| fail(&e))
        }
        Action::DeleteInstance { name } => {
            d.incus.delete_instance(name).await.map_err(|e| fail(&e))
        }
        Action::DeployRelease { instance, slot } => deploy_release(d, instance, slot)
            .await
            .map_err(|e| StepError::Failed(redact(&e, d.secrets, slot))),
        Action::Migrate { instance, slot } => {
            let what = format!(
                "the migration of {}/{} for release {}",
                slot.env,
                slot.app,
                &slot.release[..slot.release.len().min(10)]
            );
            run_migration(d, instance, slot).await.map_err(|e| match e {
                MigrationError::NotRun(e) => {
                    StepError::Failed(redact(&format!("{what} did not run: {e}"), d.secrets, slot))
                }
                MigrationError::Failed(e) => {
                    StepError::Migration(redact(&format!("{what} failed: {e}"), d.secrets, slot))
                }
            })
        }
        Action::HealthGate { instance, slot } => health_gate(d, instance, slot, hooks).await,
        Action::InstallUnits { target, files, timers, environments } => {
            let mut private = Vec::new();
            for e in environments {
                let text = veza_model::template::render_env_file(&e.vars, |name| {
                    d.secrets.get(&e.env, name)
                })
                .map_err(|why| StepError::Failed(format!("{}: {why}", e.file)))?;
                private.push((e.file.clone(), text));
            }
            // A job installed without an environment keeps no file from an older one.
            let stale: Vec<String> = files
                .iter()
                .filter_map(|(n, _)| n.strip_suffix(".service"))
                .map(|stem| format!("{stem}.env"))
                .filter(|env| !private.iter().any(|(n, _)| n == env))
                .collect();
            d.units.install_private(target, &private, &stale).await.map_err(|e| fail(&e))?;
            d.units.install(target, files, timers).await.map_err(|e| fail(&e))
        }
        Action::RemoveUnits { target, names } => {
            d.units.remove(target, names).await.map_err(|e| fail(&e))
        }
        Action::InstallEdge { .. } | Action::VerifyEdge { .. } => Ok(()),
    }
}

/// Adopts an owned instance that appeared between the observation and its create step
/// (an earlier run's create, finished meanwhile) when its config, devices and profiles are
/// the ones `spec` asks for, and starts it if needed. Anything else is left for the next
/// sync to plan from a fresh observation.
async fn adopt_created<I: Incus>(incus: &I, spec: &InstanceSpec) -> Result<(), String> {
    let name = &spec.name;
    let live = incus
        .instance(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("instance `{name}` is gone again"))?;
    if !crate::incus::instance_matches(&live, &spec.update()) {
        return Err("it is not what this step would create (another run made it with other \
                    settings); the next sync plans from what is there now"
            .to_string());
    }
    if !live.is_running() {
        incus.change_state(name, &StateChange::start()).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `images:debian/13` → the public simplestreams server; a bare name → a local alias.
pub fn image_source(image: &str) -> Result<ImageSource, String> {
    match image.split_once(':') {
        None => Ok(ImageSource::local(image)),
        Some(("images", alias)) => Ok(ImageSource::Simplestreams {
            server: "https://images.linuxcontainers.org".to_string(),
            alias: alias.to_string(),
        }),
        Some(("local", alias)) => Ok(ImageSource::local(alias)),
        Some((remote, _)) => Err(format!(
            "unknown image remote `{remote}` in `{image}`: use a local alias, `local:ALIAS` or `images:ALIAS`"
        )),
    }
}
