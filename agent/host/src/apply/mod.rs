//! The apply engine: executes a [`Plan`] step by step through the drivers.
//!
//! - Steps run in plan order; the caller's [`Hooks::before_step`] writes the journal
//!   before each one, so a crash leaves a trace of where it stopped.
//! - The first failing step stops the run and is reported with its action and the
//!   driver's error (command, exit status, stderr).
//! - A promotion is one step ([`Action::Promote`]), run as one unit: its gates, the
//!   switch, its checks through the edge, and the fallback. A slot that never becomes
//!   healthy, or not for [`GATE_STABLE_FOR`] in a row (a flapping slot), stops the run
//!   before traffic moves; a check through the edge that fails after the switch installs
//!   the fallback edge (previous colors) — both end as [`ApplyOutcome::RolledBack`], never
//!   as success. The failed slot stays running for forensics. [`Hooks::phase`] tells
//!   the journal which part of the promotion runs.
//! - A stop request is honoured between steps, and between the gates of a promotion;
//!   never once its switch began.
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
use veza_plan::plan::{Gate, Phase, Switch};
use veza_plan::{Action, Plan, Step};

use crate::artifact::ArtifactStore;
use crate::clock::{Clock, SystemClock};
use crate::http::{HttpProbe, Probe};

use crate::incus::{
    ImageSource, Incus, IncusError, InstanceSpec, InstanceUpdate, ProfileSpec, StateChange,
};
use crate::systemd::Units;

mod deploy;
mod gate;
#[cfg(test)]
mod tests;

use deploy::{MigrationError, deploy_release, redact, run_migration};
pub use gate::{EdgeView, GATE_PROBE_EVERY, GATE_STABLE_FOR, GateRule};
use gate::{health_gate, verify_edge};
pub use veza_plan::slot::{APP_ENV_FILE, APP_RUN_SCRIPT};

/// The edge as the apply engine needs it (`Sync`, as every driver: the engine shares its
/// drivers across awaits).
pub trait Edge: Sync {
    /// The live config text, if any.
    fn live_config(&self) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// Validates, installs and reloads `config`; on any failure the previous config is
    /// back in place and serving, and the error says why.
    fn install(&self, config: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// What HAProxy's own health checks say of `server` in `backend` (from `show stat`,
    /// through `haproxy::parse::edge_view`); [`EdgeView::Unknown`] when HAProxy has no
    /// view of it (not in the running config, not checked, or not running). The health
    /// gate reads it once, before its probes; an error counts as no view.
    fn server_view(
        &self,
        backend: &str,
        server: &str,
    ) -> impl Future<Output = Result<EdgeView, String>> + Send;
}

/// What the caller wants to know or decide during a run.
pub trait Hooks {
    /// Called before step `index` runs (write the journal here). An error (the journal
    /// could not be written) stops the run before the step: a kill after it would leave
    /// no record of what was under way.
    fn before_step(&mut self, index: usize, step: &Step) -> Result<(), String>;
    /// Called when promotion step `index` enters `phase` (on `what`: the gated instance,
    /// or where the edge runs), so the journal tells how far it got. An error before the
    /// switch stops the promotion with traffic where it is; from the switch on, the
    /// promotion goes on (the journal written at the switch still holds what is owed).
    fn phase(&mut self, index: usize, step: &Step, phase: Phase, what: &str) -> Result<(), String> {
        let _ = (index, step, phase, what);
        Ok(())
    }
    /// Called by a promotion with no fallback (no color to go back to: a takeover, or
    /// apps' first traffic) just before its switch, with the config live before it: what
    /// a failed check puts back, and so what a killed run's next sync needs to know.
    fn switching_from(&mut self, before: Option<&str>) {
        let _ = before;
    }
    /// Called when a migration step ran to success, at once: a kill before the run's end
    /// must not forget that it ran (it runs at most once per release). Best effort: the
    /// run's report still carries it.
    fn migrated(&mut self, env: &str, app: &str, release: &str) {
        let _ = (env, app, release);
    }
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
    /// A step failed while doing something the outcome names instead of the step (the
    /// rollback of a promotion).
    FailedAt {
        step: String,
        error: String,
    },
    /// A migration failed: the deploy stops before traffic moves.
    Migration(String),
    /// A slot did not pass its gate (the caller says where traffic is).
    Unhealthy(String),
    /// A gate or a check failed; the reason says where traffic is.
    RolledBack(String),
    Preempted,
    /// A stop was requested during a promotion, before its switch.
    Stopped,
}

/// Runs `plan`.
pub async fn apply<I: Incus, E: Edge, U: Units, P: Probe, C: Clock, H: Hooks>(
    plan: &Plan,
    d: &Drivers<'_, I, E, U, P, C>,
    hooks: &mut H,
) -> ApplyReport {
    let mut timings = Vec::new();
    let mut migrated = Vec::new();
    let touched: BTreeSet<&str> = plan.steps.iter().flat_map(|s| s.action.instances()).collect();
    let mut settled = touched.is_empty();
    for (i, step) in plan.steps.iter().enumerate() {
        let end = |outcome| ApplyReport {
            outcome,
            steps_done: i,
            timings: timings.clone(),
            migrated: migrated.clone(),
        };
        if hooks.stop_requested() {
            return end(ApplyOutcome::Interrupted { before: step.action.to_string() });
        }
        if let Err(e) = hooks.before_step(i, step) {
            return end(ApplyOutcome::Failed {
                step: step.action.to_string(),
                error: format!("not started: writing the journal failed: {e}"),
            });
        }
        let started = d.clock.now();
        if !settled && !step.action.instances().is_empty() {
            // Once per run, before the first step that touches an instance: what a killed
            // run left running there (a create, a start) holds Incus's instance lock.
            settled = true;
            let names: Vec<String> = touched.iter().map(|n| (*n).to_string()).collect();
            if let Err(e) = d.incus.wait_for_operations(&names, d.gates.operations_timeout).await {
                return end(ApplyOutcome::Failed {
                    step: step.action.to_string(),
                    error: e.to_string(),
                });
            }
        }
        let result = match &step.action {
            Action::Promote(switch) => promote(plan, i, step, switch, d, hooks).await,
            Action::VerifyEdge(check) => {
                verify_edge(d.probe, check, d.gates.verify_requests, d.gates.probe_timeout)
                    .await
                    .map_err(|why| {
                        StepError::RolledBack(format!(
                            "{}/{} on {}: {why}; the edge config was updated without moving \
                             traffic between colors, so there is no other color to go back to",
                            check.env, check.app, check.color
                        ))
                    })
            }
            Action::HealthGate(gate) => {
                let fresh = started_in_run(plan, &gate.instance);
                health_gate(d, &gate.instance, &gate.slot, fresh, !gate.serving, hooks)
                    .await
                    .map_err(|e| match e {
                        // A slot that keeps its traffic (no color change) was rebuilt in place
                        // (`in_place_updates`) or started again: it still gets the traffic.
                        // Any other slot never had it. Say what is true.
                        StepError::Unhealthy(why) if gate.serving => {
                            StepError::RolledBack(format!("{why}; {}", still_serving(plan, gate)))
                        }
                        StepError::Unhealthy(why) => {
                            StepError::RolledBack(format!("{why}; traffic was not moved"))
                        }
                        other => other,
                    })
            }
            other => run_step(other, d).await,
        };
        match result {
            Ok(()) => {
                if let Action::Migrate { slot, .. } = &step.action {
                    hooks.migrated(&slot.env, &slot.app, slot.release.as_str());
                    migrated.push((slot.env.clone(), slot.app.clone(), slot.release.to_string()));
                }
                timings.push((
                    step.action.to_string(),
                    d.clock.now().saturating_duration_since(started).as_millis() as u64,
                ))
            }
            Err(StepError::Migration(why)) => {
                // Nothing moved yet: the new release was not started, the serving color
                // still serves. Ends like a failed gate (the commit is quarantined).
                return end(ApplyOutcome::RolledBack {
                    reason: format!("{why}; traffic was not moved"),
                });
            }
            Err(StepError::Failed(error)) => {
                return end(ApplyOutcome::Failed { step: step.action.to_string(), error });
            }
            Err(StepError::FailedAt { step, error }) => {
                return end(ApplyOutcome::Failed { step, error });
            }
            Err(StepError::Preempted) => {
                return end(ApplyOutcome::Preempted { during: step.action.to_string() });
            }
            Err(StepError::Stopped) => {
                return end(ApplyOutcome::Interrupted { before: step.action.to_string() });
            }
            Err(StepError::Unhealthy(reason) | StepError::RolledBack(reason)) => {
                return end(ApplyOutcome::RolledBack { reason });
            }
        }
    }
    ApplyReport { outcome: ApplyOutcome::Applied, steps_done: plan.steps.len(), timings, migrated }
}

/// What is true of a slot that keeps its traffic when its gate fails.
fn still_serving(plan: &Plan, gate: &Gate) -> String {
    let Gate { instance, slot, .. } = gate;
    let here = |f: fn(&Action, &str) -> bool| plan.steps.iter().any(|s| f(&s.action, instance));
    let deleted = here(|a, i| matches!(a, Action::DeleteInstance { name } if name == i));
    let started = here(|a, i| matches!(a, Action::StartInstance { name } if name == i));
    let deployed =
        here(|a, i| matches!(a, Action::DeployRelease { instance, .. } if instance == i));
    let what = if deleted {
        "was rebuilt in place (in_place_updates: true)"
    } else if deployed && !started {
        "was redeployed in place (in_place_updates: true)"
    } else {
        "was started again"
    };
    format!(
        "{instance} {what} and still receives {}/{}'s traffic; fix the release or promote the other color",
        slot.env, slot.app
    )
}

/// A promotion, as one unit: every gate, then the switch, then every check through the
/// edge; a failed check puts the fallback (or the config live before) back. A stop
/// request is honoured between gates, never once the switch began.
async fn promote<I: Incus, E: Edge, U: Units, P: Probe, C: Clock, H: Hooks>(
    plan: &Plan,
    index: usize,
    step: &Step,
    switch: &Switch,
    d: &Drivers<'_, I, E, U, P, C>,
    hooks: &mut H,
) -> Result<(), StepError> {
    for gate in &switch.gates {
        if hooks.stop_requested() {
            return Err(StepError::Stopped);
        }
        hooks.phase(index, step, Phase::Gate, &gate.instance).map_err(journal_failed)?;
        let fresh = started_in_run(plan, &gate.instance);
        health_gate(d, &gate.instance, &gate.slot, fresh, true, hooks).await.map_err(
            |e| match e {
                StepError::Unhealthy(why) => {
                    StepError::RolledBack(format!("{why}; traffic was not moved"))
                }
                other => other,
            },
        )?;
    }
    if !switch.gates.is_empty() && hooks.stop_requested() {
        return Err(StepError::Stopped);
    }
    let before = match &switch.fallback {
        Some(_) => None,
        None => {
            // What the owed checks go back to: unread is not "nothing before" (a failed
            // check would then leave traffic on the new config with nothing owed).
            let before = d.edge.live_config().await.map_err(|e| {
                StepError::Failed(format!(
                    "reading the live edge config before the switch failed: {e}; traffic was not moved"
                ))
            })?;
            hooks.switching_from(before.as_deref());
            before
        }
    };
    hooks.phase(index, step, Phase::Switch, &switch.runs_in).map_err(journal_failed)?;
    d.edge.install(&switch.config).await.map_err(StepError::Failed)?;
    // Past the switch: a journal that cannot be written no longer stops anything.
    let _ = hooks.phase(index, step, Phase::Verify, &switch.runs_in);
    for check in &switch.checks {
        let Err(why) =
            verify_edge(d.probe, check, d.gates.verify_requests, d.gates.probe_timeout).await
        else {
            continue;
        };
        let reason = format!("{}/{} on {}: {why}", check.env, check.app, check.color);
        let _ = hooks.phase(index, step, Phase::Fallback, &switch.runs_in);
        let Some(back) = switch.fallback.as_ref().or(before.as_ref()) else {
            return Err(StepError::RolledBack(format!(
                "{reason}; there was no previous edge to go back to"
            )));
        };
        return match d.edge.install(back).await {
            Ok(()) => Err(StepError::RolledBack(format!(
                "{reason}; traffic went back to the previous color"
            ))),
            Err(e) => Err(StepError::FailedAt {
                step: "roll back the edge".to_string(),
                error: format!("{reason}; and restoring the previous edge failed: {e}"),
            }),
        };
    }
    // Every check passed: the journal stops counting the switch as unchecked.
    let _ = hooks.phase(index, step, Phase::Checked, &switch.runs_in);
    Ok(())
}

/// A promotion stopped before its switch because the journal could not be written.
fn journal_failed(e: String) -> StepError {
    StepError::Failed(format!("traffic was not moved: writing the journal failed: {e}"))
}

/// Whether `instance` is (re)started by this run: created, updated, deployed to, started,
/// or given new units by one of `plan`'s steps. Such a slot's gate keeps the full
/// stability window ([`GATE_STABLE_FOR`]): HAProxy's view of it predates the change.
fn started_in_run(plan: &Plan, instance: &str) -> bool {
    plan.steps.iter().any(|s| match &s.action {
        Action::Snapshot { .. } | Action::HealthGate(_) | Action::Promote(_) => false,
        other => other.instances().contains(&instance),
    })
}

async fn run_step<I: Incus, E: Edge, U: Units, P: Probe, C: Clock>(
    action: &Action,
    d: &Drivers<'_, I, E, U, P, C>,
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
        Action::CreateInstance { name, image, kind, profiles, config, devices, target } => {
            let source = image_source(image).map_err(StepError::Failed)?;
            let spec = InstanceSpec {
                name: name.clone(),
                kind: *kind,
                source,
                config: config.clone(),
                devices: devices.clone(),
                profiles: profiles.clone(),
                start: true,
                target: target.clone(),
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
        Action::DeployRelease { instance, slot, files } => deploy_release(d, instance, slot, files)
            .await
            .map_err(|e| StepError::Failed(redact(&e, d.secrets, slot))),
        Action::Migrate { instance, slot, files } => {
            let what = format!(
                "the migration of {}/{} for release {}",
                slot.env,
                slot.app,
                slot.release.short()
            );
            run_migration(d, instance, slot, files).await.map_err(|e| match e {
                MigrationError::NotRun(e) => {
                    StepError::Failed(redact(&format!("{what} did not run: {e}"), d.secrets, slot))
                }
                MigrationError::Failed(e) => {
                    StepError::Migration(redact(&format!("{what} failed: {e}"), d.secrets, slot))
                }
            })
        }
        Action::InstallUnits { target, files, timers, environments } => {
            install_units(d.units, d.secrets, target, files, timers, environments)
                .await
                .map_err(StepError::Failed)
        }
        Action::RemoveUnits { target, names } => {
            d.units.remove(target, names).await.map_err(|e| fail(&e))
        }
        Action::InstallEdge { config, .. } => {
            d.edge.install(config).await.map_err(StepError::Failed)
        }
        // Run by `apply` itself (they need the hooks or decide the outcome).
        Action::HealthGate(_) | Action::VerifyEdge(_) | Action::Promote(_) => Ok(()),
    }
}

/// Installs jobs' units at `target` and enables their `timers`: each job's environment
/// file rendered from the secrets and written root-only beside its unit (a stale one
/// removed), then the unit files, verified, and the timers enabled. The apply engine's
/// `InstallUnits` step, and what adoption runs to replace a foreign timer.
pub async fn install_units<U: Units>(
    units: &U,
    secrets: &veza_secrets::SecretValues,
    target: &UnitTarget,
    files: &[(String, String)],
    timers: &[String],
    environments: &[veza_plan::desired::JobEnvironment],
) -> Result<(), String> {
    let mut private = Vec::new();
    for e in environments {
        let text = veza_model::template::render_env_file(&e.vars, |name| secrets.get(&e.env, name))
            .map_err(|why| format!("{}: {why}", e.file))?;
        private.push((e.file.clone(), text));
    }
    // A job installed without an environment keeps no file from an older one.
    let stale: Vec<String> = files
        .iter()
        .filter_map(|(n, _)| n.strip_suffix(".service"))
        .map(|stem| format!("{stem}.env"))
        .filter(|env| !private.iter().any(|(n, _)| n == env))
        .collect();
    units.install_private(target, &private, &stale).await.map_err(|e| e.to_string())?;
    units.install(target, files, timers).await.map_err(|e| e.to_string())
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

/// What Incus is asked for: `images:debian/13` → the public simplestreams server; a bare
/// name or `local:NAME` → a local alias; `https://SERVER/PATH:ALIAS` → a simplestreams
/// mirror (the host's `incus.images` mapping writes these). See `veza_model::image`.
pub fn image_source(image: &str) -> Result<ImageSource, String> {
    Ok(match veza_model::image::parse(image)? {
        veza_model::image::ImageRef::Local(alias) => ImageSource::local(alias),
        veza_model::image::ImageRef::Simplestreams { server, alias } => {
            ImageSource::Simplestreams { server, alias }
        }
    })
}
