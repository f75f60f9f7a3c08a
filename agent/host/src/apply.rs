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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use veza_plan::desired::SlotSpec;
use veza_plan::live::{MARK_RELEASE, UnitTarget};
use veza_plan::{Action, Plan, Step};

use crate::artifact::ArtifactStore;
use crate::incus::{
    ExecRequest, FilePush, ImageSource, Incus, IncusError, InstanceKind, InstanceSpec,
    InstanceUpdate, ProfileSpec, StateChange,
};
use crate::systemd::Units;

/// The edge as the apply engine needs it.
pub trait Edge {
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

/// The drivers a run uses.
pub struct Drivers<'a, I, E, U> {
    /// Incus.
    pub incus: &'a I,
    /// The edge.
    pub edge: &'a E,
    /// systemd units.
    pub units: &'a U,
    /// Release artifacts.
    pub artifacts: &'a ArtifactStore,
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
}

enum StepError {
    Failed(String),
    Unhealthy(String),
    Preempted,
}

/// Runs `plan`.
pub async fn apply<I, E, U, H>(plan: &Plan, d: &Drivers<'_, I, E, U>, hooks: &mut H) -> ApplyReport
where
    I: Incus + Sync,
    E: Edge + Sync,
    U: Units + Sync,
    H: Hooks,
{
    let mut timings = Vec::new();
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
            };
        }
        hooks.before_step(i, step);
        let started = Instant::now();
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
                listen,
                host,
                path,
                release,
                d.gates.verify_requests,
                d.gates.probe_timeout,
            )
            .map_err(|why| StepError::Unhealthy(format!("{env}/{app} on {color}: {why}"))),
            other => run_step(other, d, hooks).await,
        };
        match result {
            Ok(()) => timings.push((step.action.to_string(), started.elapsed().as_millis() as u64)),
            Err(StepError::Failed(error)) => {
                return ApplyReport {
                    outcome: ApplyOutcome::Failed { step: step.action.to_string(), error },
                    steps_done: i,
                    timings,
                };
            }
            Err(StepError::Preempted) => {
                return ApplyReport {
                    outcome: ApplyOutcome::Preempted { during: step.action.to_string() },
                    steps_done: i,
                    timings,
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
                                };
                            }
                        },
                        None => reason.push_str("; there was no previous edge to go back to"),
                    }
                } else if let Action::HealthGate { instance, slot } = &step.action
                    && !plan.promotions.iter().any(|p| p.env == slot.env && p.app == slot.app)
                {
                    // No promotion: the gate is on the serving slot itself, rebuilt in
                    // place (`in_place_updates`). Say what is true: it still gets traffic.
                    reason.push_str(&format!(
                        "; {instance} was rebuilt in place and still receives {}/{}'s traffic (in_place_updates: true); fix the release or promote the other color",
                        slot.env, slot.app
                    ));
                } else {
                    reason.push_str("; traffic was not moved");
                }
                return ApplyReport {
                    outcome: ApplyOutcome::RolledBack { reason },
                    steps_done: i,
                    timings,
                };
            }
        }
    }
    ApplyReport { outcome: ApplyOutcome::Applied, steps_done: plan.steps.len(), timings }
}

/// The instance a step changes or runs something in, if any.
fn touched_instance(action: &Action) -> Option<&str> {
    match action {
        Action::Snapshot { instance, .. }
        | Action::DeployRelease { instance, .. }
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

async fn run_step<I, E, U, H>(
    action: &Action,
    d: &Drivers<'_, I, E, U>,
    hooks: &H,
) -> Result<(), StepError>
where
    I: Incus + Sync,
    E: Edge + Sync,
    U: Units + Sync,
    H: Hooks,
{
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
        Action::DeployRelease { instance, slot } => {
            deploy_release(d, instance, slot).await.map_err(StepError::Failed)
        }
        Action::HealthGate { instance, slot } => health_gate(d, instance, slot, hooks).await,
        Action::InstallUnits { target, files, timers } => {
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
async fn adopt_created<I: Incus + Sync>(incus: &I, spec: &InstanceSpec) -> Result<(), String> {
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

async fn exec_ok<I: Incus + Sync>(
    incus: &I,
    instance: &str,
    script: &str,
    env: BTreeMap<String, String>,
) -> Result<String, String> {
    let mut req = ExecRequest::sh(script);
    req.env = env;
    req.timeout = Duration::from_secs(300);
    let out = incus.exec(instance, &req).await.map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "in `{instance}`: `sh -c {script}` exited {}: {}",
            out.exit_code,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the slot's app supervision lives inside the slot.
pub const APP_RUN_SCRIPT: &str = "/etc/veza-app/run";

/// The script that runs the app in the foreground, with its environment: what init
/// (busybox `respawn`) or systemd (`veza-app.service`, `Restart=always`) supervises, so
/// the app comes back after a crash and after the slot restarts.
///
/// `VEZA_LISTEN` is where the edge can reach the app: `127.0.0.1:<port>` when a proxy
/// device carries it to the host's loopback, every IPv4 address of the slot otherwise
/// (the edge connects over the bridge).
pub fn app_run_script(slot: &SlotSpec) -> String {
    let listen = if slot.loopback.is_some() { "127.0.0.1" } else { "0.0.0.0" };
    let env = [
        ("VEZA_RELEASE", slot.release.clone()),
        ("VEZA_PORT", slot.port.to_string()),
        ("VEZA_LISTEN", format!("{listen}:{}", slot.port)),
        ("VEZA_ENV", slot.env.clone()),
        ("VEZA_APP", slot.app.clone()),
    ];
    let mut out = String::from(
        "#!/bin/sh\n# Written by veza-agent: runs this slot's app in the foreground under a \
         supervisor\n# (init `respawn` or veza-app.service). Changed only by a deploy.\n",
    );
    for (k, v) in env {
        out.push_str(&format!("export {k}={}\n", shell_quote(&v)));
    }
    out.push_str(&format!(
        "cd {} || exit 1\n\
         echo \"$$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)\" > /run/veza-app.pid\n\
         exec >>/var/log/veza-app.log 2>&1 </dev/null\nexec /bin/sh -c {}\n",
        shell_quote(&slot.install_dir),
        shell_quote(&slot.start)
    ));
    out
}

/// systemd unit for slots whose PID 1 is systemd.
pub fn app_unit(slot: &SlotSpec) -> String {
    format!(
        "# Written by veza-agent: the {env}/{app} app ({color} slot).\n[Unit]\n\
         Description=veza-agent app {env}/{app}\nAfter=network.target\n\
         StartLimitIntervalSec=0\n\n[Service]\n\
         ExecStart={APP_RUN_SCRIPT}\nRestart=always\nRestartSec=1\nKillMode=control-group\n\
         TimeoutStopSec=10\n\n[Install]\nWantedBy=multi-user.target\n",
        env = slot.env,
        app = slot.app,
        color = slot.color,
    )
}

/// Puts the unpacked release (`DIR.new`) in place and (re)starts the app under the
/// slot's supervisor: systemd when it is PID 1 (`unit` written to
/// `/etc/systemd/system/veza-app.service`), busybox init's `respawn` when that is, else
/// a detached process (which does not survive a restart of the slot). Prints
/// `supervisor=systemd|init|none`.
fn swap_and_restart_script(dir: &str, unit: &str) -> String {
    format!(
        r#"set -e
# The app's pid (its run script's, a process group leader) when it is still our app: the
# pid file holds the pid and its start time, and a pid file left by a dead app may name
# an unrelated process by now.
app_pid() {{
    read -r pid started 2>/dev/null < /run/veza-app.pid || return 0
    [ -n "$pid" ] && [ -n "$started" ] || return 0
    now=$(sed 's/.*) //' /proc/"$pid"/stat 2>/dev/null | cut -d' ' -f20)
    [ "$now" = "$started" ] && echo "$pid"
    return 0
}}
# Stops the app and everything it started (its process group): TERM, up to 10 s for the
# whole group to exit, then KILL.
stop_old() {{
    pid=$(app_pid)
    [ -n "$pid" ] || return 0
    kill -TERM -"$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    i=0
    while {{ kill -0 -"$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; }} && [ $i -lt 100 ]; do
        sleep 0.1
        i=$((i+1))
    done
    kill -KILL -"$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}}
# The new release in place; the old one is removed only after the app stopped.
swap() {{ rm -rf {dir}.old; if [ -e {dir} ]; then mv {dir} {dir}.old; fi; mv {dir}.new {dir}; }}
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet veza-app.service; then
        systemctl stop veza-app.service
    else
        stop_old
    fi
    rm -f /run/veza-app.pid
    swap
    cat > /etc/systemd/system/veza-app.service.tmp <<'VEZA_UNIT_END'
{unit}VEZA_UNIT_END
    mv /etc/systemd/system/veza-app.service.tmp /etc/systemd/system/veza-app.service
    systemctl daemon-reload
    systemctl enable --quiet veza-app.service
    systemctl restart veza-app.service
    rm -rf {dir}.old
    echo supervisor=systemd
elif [ -f /etc/inittab ] && [ "$(readlink /proc/1/exe 2>/dev/null)" = /bin/busybox ]; then
    swap
    stop_old
    rm -rf {dir}.old
    if ! grep -q '^::respawn:{run}$' /etc/inittab; then
        echo '::respawn:{run}' >> /etc/inittab
        kill -HUP 1
    fi
    echo supervisor=init
else
    stop_old
    swap
    rm -rf {dir}.old
    ( setsid {run} </dev/null >/dev/null 2>&1 & )
    echo supervisor=none
fi
"#,
        run = APP_RUN_SCRIPT,
    )
}

/// Downloads (or takes from the cache) the artifact, checks its digest, unpacks it in
/// the slot, (re)starts the app under the slot's supervisor, and marks the slot with the
/// release.
async fn deploy_release<I, E, U>(
    d: &Drivers<'_, I, E, U>,
    instance: &str,
    slot: &SlotSpec,
) -> Result<(), String>
where
    I: Incus + Sync,
{
    let bytes = d.artifacts.fetch(&slot.artifact_url, &slot.sha256).map_err(|e| e.to_string())?;
    let archive = d.artifacts.for_slot(&slot.artifact_url, bytes).map_err(|e| e.to_string())?;
    let tarball = "/tmp/veza-release.tar";
    let mut push = FilePush::new(tarball, archive.bytes);
    push.mode = 0o600;
    crate::incus::push_file_verified(d.incus, instance, &push).await.map_err(|e| e.to_string())?;
    let dir = shell_quote(&slot.install_dir);
    let unpack = format!(
        "set -e; rm -rf {dir}.new; mkdir -p {dir}.new; tar {opt} -xf {tarball} -C {dir}.new; rm -f {tarball}",
        opt = archive.tar_option,
    );
    exec_ok(d.incus, instance, &unpack, BTreeMap::new()).await?;
    let mut run = FilePush::new(APP_RUN_SCRIPT, app_run_script(slot));
    run.mode = 0o755;
    run.create_parents = true;
    crate::incus::push_file_verified(d.incus, instance, &run).await.map_err(|e| e.to_string())?;
    let script = swap_and_restart_script(&dir, &app_unit(slot));
    exec_ok(d.incus, instance, &script, BTreeMap::new()).await?;
    let live = d
        .incus
        .instance(instance)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("instance `{instance}` disappeared"))?;
    let mut config = live.settable_config();
    config.insert(MARK_RELEASE.to_string(), slot.release.clone());
    d.incus
        .update_instance(
            instance,
            &InstanceUpdate {
                config,
                devices: live.devices.clone(),
                profiles: live.profiles.clone(),
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One probe of a slot's health: on its loopback address from the host, or from inside
/// the slot for bridge-addressed slots.
async fn probe<I: Incus + Sync>(
    incus: &I,
    instance: &str,
    slot: &SlotSpec,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(addr) = &slot.loopback {
        let r = crate::http::get(addr, "localhost", &slot.health_path, timeout)
            .map_err(|e| e.to_string())?;
        if r.status != slot.expect_status {
            return Err(format!(
                "{} answered {} (expected {})",
                slot.health_path, r.status, slot.expect_status
            ));
        }
        if let Some(rel) = r.headers.get("x-release")
            && rel != &slot.release
        {
            return Err(format!("it reports release {rel}, not {}", slot.release));
        }
        return Ok(());
    }
    let url = format!("http://127.0.0.1:{}{}", slot.port, slot.health_path);
    let secs = timeout.as_secs().max(1);
    let script = format!(
        "if command -v curl >/dev/null 2>&1; then curl -s -o /dev/null -w '%{{http_code}}' --max-time {secs} {u}; \
         else wget -q -S -T {secs} -O /dev/null {u} 2>&1 | awk '/HTTP\\//{{c=$2}} END{{print c}}'; fi",
        u = shell_quote(&url)
    );
    let out = exec_ok(incus, instance, &script, BTreeMap::new()).await?;
    let code = out.trim();
    if code == slot.expect_status.to_string() {
        Ok(())
    } else {
        Err(format!("{} answered `{code}` (expected {})", slot.health_path, slot.expect_status))
    }
}

/// How long a slot must answer healthy, probe after probe, before its gate opens, at
/// the least: one good answer from a flapping slot is not health, and traffic moved on it
/// lands on a server HAProxy marks DOWN moments later.
pub const GATE_STABLE_FOR: Duration = Duration::from_secs(1);

/// Time between the gate's probes. The manifest's `health.interval` is the edge's check
/// interval (HAProxy `inter`); the gate probes faster so that a promotion does not wait
/// `rise × interval`.
pub const GATE_PROBE_EVERY: Duration = Duration::from_millis(200);

/// When the health gate opens: after `rise` consecutive healthy probes that also span
/// [`GATE_STABLE_FOR`]. Any failed probe starts the count again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRule {
    /// Consecutive healthy probes required (at least 1).
    pub rise: u32,
    /// The least time between the first and the last of them.
    pub stable_for: Duration,
}

impl GateRule {
    /// The rule for a slot.
    pub fn for_slot(slot: &SlotSpec) -> GateRule {
        GateRule { rise: slot.health_rise.max(1), stable_for: GATE_STABLE_FOR }
    }

    /// The shortest time in which the gate can open: `rise` probes [`GATE_PROBE_EVERY`]
    /// apart, and at least `stable_for`.
    pub fn least_time(&self) -> Duration {
        GATE_PROBE_EVERY.saturating_mul(self.rise.saturating_sub(1)).max(self.stable_for)
    }

    /// Whether `streak` consecutive healthy probes, the first of them `healthy_for` ago,
    /// open the gate.
    pub fn opens(&self, streak: u32, healthy_for: Duration) -> bool {
        streak >= self.rise && healthy_for >= self.stable_for
    }
}

async fn health_gate<I, E, U, H>(
    d: &Drivers<'_, I, E, U>,
    instance: &str,
    slot: &SlotSpec,
    hooks: &H,
) -> Result<(), StepError>
where
    I: Incus + Sync,
    H: Hooks,
{
    let rule = GateRule::for_slot(slot);
    let probe_timeout = Duration::from_millis(slot.health_timeout_ms.max(100));
    let least = rule.least_time();
    if least >= d.gates.health_timeout {
        return Err(StepError::Unhealthy(format!(
            "{} slot `{instance}` can never pass its gate: health.rise {} needs at least {least:?} \
             of probes, but promotion.health_timeout is {:?}; raise the timeout or lower rise",
            slot.color, rule.rise, d.gates.health_timeout
        )));
    }
    let deadline = Instant::now() + d.gates.health_timeout;
    let mut last = String::from("no probe ran");
    let mut attempts = 0u32;
    let mut streak = 0u32;
    let mut healthy_since: Option<Instant> = None;
    while Instant::now() < deadline {
        if hooks.preempted() {
            return Err(StepError::Preempted);
        }
        attempts += 1;
        match probe(d.incus, instance, slot, probe_timeout).await {
            Ok(()) => {
                streak += 1;
                let since = *healthy_since.get_or_insert_with(Instant::now);
                if rule.opens(streak, since.elapsed()) {
                    return Ok(());
                }
                last = format!(
                    "{streak} of {} healthy probes in a row, healthy for {} ms of the {} ms required",
                    rule.rise,
                    since.elapsed().as_millis(),
                    rule.stable_for.as_millis()
                );
            }
            Err(e) => {
                streak = 0;
                healthy_since = None;
                last = e;
            }
        }
        tokio::time::sleep(GATE_PROBE_EVERY).await;
    }
    Err(StepError::Unhealthy(format!(
        "{} slot `{instance}` (release {}) was not healthy after {:?} ({attempts} probes; last: {last})",
        slot.color,
        &slot.release[..slot.release.len().min(10)],
        d.gates.health_timeout
    )))
}

/// Requests through the edge: every one must succeed (< 500) and, when the app reports
/// its release in `X-Release`, reach the expected release.
fn verify_edge(
    listen: &str,
    host: &str,
    path: &str,
    release: &str,
    n: u32,
    timeout: Duration,
) -> Result<(), String> {
    for i in 0..n.max(1) {
        let r = crate::http::get(listen, host, path, timeout).map_err(|e| e.to_string())?;
        if r.status >= 500 {
            return Err(format!("request {} through the edge answered {}", i + 1, r.status));
        }
        if let Some(rel) = r.headers.get("x-release")
            && rel != release
        {
            return Err(format!(
                "request {} through the edge reached release {rel}, not {release}",
                i + 1
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> SlotSpec {
        SlotSpec {
            env: "prod".into(),
            app: "backend".into(),
            color: veza_model::manifest::Color::Green,
            release: "2".repeat(40),
            artifact_url: "https://forge.example/backend.tar.gz".into(),
            sha256: "0".repeat(64),
            install_dir: "/srv/it's".into(),
            start: "./bin/server --port 8080 && echo done".into(),
            port: 8080,
            health_path: "/health".into(),
            expect_status: 200,
            health_rise: 2,
            health_timeout_ms: 2000,
            loopback: None,
        }
    }

    #[test]
    fn the_app_listens_where_the_edge_reaches_it() {
        // (how the edge reaches the slot, VEZA_LISTEN)
        let table = [
            (None, "0.0.0.0:8080"), // over the bridge, by the slot's DNS name
            (Some("127.0.0.1:18101".to_string()), "127.0.0.1:8080"), // a proxy device
        ];
        for (loopback, listen) in table {
            let script = app_run_script(&SlotSpec { loopback: loopback.clone(), ..slot() });
            let line = format!("\nexport VEZA_LISTEN='{listen}'\n");
            assert!(script.contains(&line), "{loopback:?}: {script}");
        }
    }

    #[test]
    fn the_app_runs_in_the_foreground_with_its_environment_quoted() {
        let script = app_run_script(&slot());
        let want = format!(
            "export VEZA_RELEASE='{r}'\nexport VEZA_PORT='8080'\nexport VEZA_LISTEN='0.0.0.0:8080'\n\
             export VEZA_ENV='prod'\nexport VEZA_APP='backend'\ncd '/srv/it'\\''s' || exit 1\n\
             echo \"$$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)\" > /run/veza-app.pid\n\
             exec >>/var/log/veza-app.log 2>&1 </dev/null\n\
             exec /bin/sh -c './bin/server --port 8080 && echo done'\n",
            r = "2".repeat(40)
        );
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.ends_with(&want), "{script}");
        let unit = app_unit(&slot());
        for line in
            ["ExecStart=/etc/veza-app/run\n", "Restart=always\n", "WantedBy=multi-user.target\n"]
        {
            assert!(unit.contains(line), "{line:?} missing in\n{unit}");
        }
        // The unit goes through a quoted here-document: its end marker must not occur in it.
        let restart = swap_and_restart_script("'/srv/app'", &unit);
        assert_eq!(restart.matches("VEZA_UNIT_END").count(), 2, "{restart}");
        assert!(
            restart.contains(&format!("<<'VEZA_UNIT_END'\n{unit}VEZA_UNIT_END\n")),
            "{restart}"
        );
    }

    #[test]
    fn the_gate_opens_after_rise_healthy_probes_spanning_the_stable_time() {
        let ms = Duration::from_millis;
        let rule = |rise| GateRule { rise, stable_for: ms(1000) };
        // (rise, healthy probes in a row, healthy for, opens)
        let table = [
            (2, 1, ms(5000), false), // one probe is not a streak, however long ago
            (2, 2, ms(999), false),  // enough probes, not yet long enough
            (2, 2, ms(1000), true),
            (2, 6, ms(1000), true),
            (10, 6, ms(1000), false), // a larger rise waits for more probes
            (10, 10, ms(1800), true),
            (1, 1, ms(1000), true),
            (1, 0, ms(1000), false), // no healthy probe at all
        ];
        for (rise, streak, healthy_for, opens) in table {
            assert_eq!(
                rule(rise).opens(streak, healthy_for),
                opens,
                "rise {rise}, streak {streak}, healthy for {healthy_for:?}"
            );
        }
        // The least time the gate needs (checked against promotion.health_timeout).
        for (rise, least) in
            [(1, ms(1000)), (2, ms(1000)), (6, ms(1000)), (10, ms(1800)), (20, ms(3800))]
        {
            assert_eq!(rule(rise).least_time(), least, "rise {rise}");
        }
    }

    // ------------------------------------------------------------ operations left running

    use crate::incus::{FakeIncus, InstanceStatus, LiveInstance};
    use veza_plan::{Plan, Step};

    struct NoEdge;

    impl Edge for NoEdge {
        async fn live_config(&self) -> Result<Option<String>, String> {
            Ok(None)
        }
        async fn install(&self, _: &str) -> Result<(), String> {
            Err("no edge in this test".to_string())
        }
    }

    struct Quiet;

    impl Hooks for Quiet {
        fn before_step(&mut self, _: usize, _: &Step) {}
        fn stop_requested(&self) -> bool {
            false
        }
        fn preempted(&self) -> bool {
            false
        }
    }

    fn plan_of(actions: Vec<Action>) -> Plan {
        Plan {
            steps: actions
                .into_iter()
                .map(|action| Step { action, reason: "test".into() })
                .collect(),
            refusals: Vec::new(),
            promotions: Vec::new(),
            drift: Vec::new(),
            fallback_edge: None,
        }
    }

    fn create(name: &str) -> Action {
        Action::CreateInstance {
            name: name.into(),
            image: "veza-test-busybox".into(),
            kind: "container".into(),
            profiles: vec!["default".into()],
            config: [("user.veza.app".to_string(), "web".to_string())].into_iter().collect(),
            devices: Default::default(),
        }
    }

    /// An owned, stopped instance as `create(name)` would have made it.
    fn created_by_an_earlier_run(fake: &FakeIncus, name: &str, app: &str) {
        let mut live = fake.live();
        let config = [("user.veza.managed", "true"), ("user.veza.app", app)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        live.instances.insert(
            name.into(),
            LiveInstance {
                name: name.into(),
                kind: Default::default(),
                status: InstanceStatus::Stopped,
                config,
                devices: Default::default(),
                expanded_devices: Default::default(),
                profiles: vec!["default".into()],
                description: String::new(),
            },
        );
        fake.set_live(live);
    }

    fn run(fake: &FakeIncus, plan: &Plan, operations_timeout: Duration) -> ApplyReport {
        // Neither is used by these plans (no deploy, no host units): nothing is written.
        let unused = std::path::Path::new("/nonexistent/veza-apply-test");
        let artifacts = ArtifactStore::new(unused);
        let units = crate::systemd::Systemd::new(fake, unused.join("units"));
        let drivers = Drivers {
            incus: fake,
            edge: &NoEdge,
            units: &units,
            artifacts: &artifacts,
            gates: Gates { operations_timeout, ..Gates::default() },
        };
        crate::incus::runtime().expect("runtime").block_on(apply(plan, &drivers, &mut Quiet))
    }

    #[test]
    fn an_operation_still_running_past_the_limit_fails_the_run_before_anything_is_changed() {
        let fake = FakeIncus::with_default_host();
        created_by_an_earlier_run(&fake, "web-blue", "web");
        let op = fake.start_endless_operation("web-blue", "Starting instance");
        let plan = plan_of(vec![
            Action::CreateProfile {
                name: "web".into(),
                description: String::new(),
                config: Default::default(),
                devices: Default::default(),
            },
            Action::StartInstance { name: "web-blue".into() },
        ]);
        let report = run(&fake, &plan, Duration::from_secs(90));
        let ApplyOutcome::Failed { step, error } = &report.outcome else {
            panic!("expected a failure, got {report:?}");
        };
        assert_eq!(step, "start instance web-blue");
        assert_eq!(report.steps_done, 1, "the profile step before it ran");
        for part in [
            "instance `web-blue` is still busy",
            &op,
            "\"Starting instance\"",
            "after waiting 90.0 s",
            "nothing was changed",
            "hint: `incus operation show fake-1`",
        ] {
            assert!(error.contains(part), "`{part}` missing in: {error}");
        }
        assert_eq!(fake.write_calls(), ["POST /1.0/profiles"], "the instance was not touched");
    }

    #[test]
    fn operations_left_running_are_waited_for_once_before_the_first_instance_step() {
        let fake = FakeIncus::with_default_host();
        created_by_an_earlier_run(&fake, "web-blue", "web");
        let op = fake.start_operation("web-blue", "Creating instance");
        fake.start_operation("someone-elses", "Starting instance");
        let plan = plan_of(vec![
            Action::StartInstance { name: "web-blue".into() },
            Action::StartInstance { name: "web-blue".into() },
        ]);
        let report = run(&fake, &plan, Duration::from_secs(90));
        assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
        assert_eq!(
            fake.calls(),
            [
                "GET /1.0/operations?recursion=1".to_string(),
                format!("GET {op}/wait"),
                "GET /1.0/instances/web-blue".to_string(),
                "PUT /1.0/instances/web-blue/state".to_string(),
                "GET /1.0/instances/web-blue".to_string(),
            ],
            "one look at the operations, a wait for the one on web-blue only"
        );
    }

    #[test]
    fn a_run_without_instance_steps_does_not_look_at_operations() {
        let fake = FakeIncus::with_default_host();
        fake.start_endless_operation("web-blue", "Starting instance");
        for plan in
            [plan_of(Vec::new()), plan_of(vec![Action::DeleteProfile { name: "gone".into() }])]
        {
            let report = run(&fake, &plan, Duration::from_secs(90));
            assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
        }
        assert_eq!(fake.calls(), ["GET /1.0/profiles/gone"]);
    }

    #[test]
    fn an_instance_created_meanwhile_is_adopted_only_when_it_is_what_the_step_creates() {
        // (app mark of the instance found, outcome)
        let table: [(&str, Result<(), &str>); 2] =
            [("web", Ok(())), ("api", Err("it is not what this step would create"))];
        for (app, want) in table {
            let fake = FakeIncus::with_default_host();
            created_by_an_earlier_run(&fake, "web-blue", app);
            let report = run(&fake, &plan_of(vec![create("web-blue")]), Duration::from_secs(90));
            match want {
                Ok(()) => {
                    assert_eq!(report.outcome, ApplyOutcome::Applied, "{app}: {report:?}");
                    assert_eq!(fake.write_calls(), ["PUT /1.0/instances/web-blue/state"], "{app}");
                    assert!(fake.live().instances["web-blue"].is_running(), "{app}");
                }
                Err(why) => {
                    let ApplyOutcome::Failed { error, .. } = &report.outcome else {
                        panic!("{app}: expected a failure, got {report:?}");
                    };
                    assert!(error.contains(why), "{app}: {error}");
                    assert!(fake.write_calls().is_empty(), "{app}: {:?}", fake.write_calls());
                }
            }
        }
    }

    #[test]
    fn image_sources() {
        assert_eq!(
            image_source("veza-test-busybox").unwrap(),
            ImageSource::local("veza-test-busybox")
        );
        assert!(matches!(
            image_source("images:debian/13").unwrap(),
            ImageSource::Simplestreams { .. }
        ));
        assert!(image_source("ubuntu:24.04").unwrap_err().contains("unknown image remote"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
