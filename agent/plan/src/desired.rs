//! Desired state: what the validated manifests of one host ask for, resolved into the
//! shapes Incus, HAProxy and systemd use (string maps, unit files, rendered config).

use std::collections::BTreeMap;

use serde::Serialize;
use veza_model::Manifest;
use veza_model::manifest::{Color, Device, DeviceType, InstanceType, ProxyBind, Release};
use veza_model::units::{JobUnitSpec, UnitFile};
use veza_model::{naming, template};

use crate::live::{
    Devices, InstanceKind, MARK_APP, MARK_APP_SPEC, MARK_COLOR, MARK_ENV, MARK_HOST, MARK_IMAGE,
    MARK_KEYS, MARK_MANAGED, MARK_PROTECT, UnitTarget,
};

/// A profile the agent owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredProfile {
    /// Free text.
    pub description: String,
    /// Config, including the ownership mark.
    pub config: BTreeMap<String, String>,
    /// Devices, with `pool: auto` resolved.
    pub devices: Devices,
}

/// A managed network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredNetwork {
    /// Whether the agent creates it (else it must exist).
    pub managed: bool,
    /// Config for a managed network.
    pub config: BTreeMap<String, String>,
}

/// What an app slot runs and how it is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotSpec {
    /// Environment.
    pub env: String,
    /// App.
    pub app: String,
    /// Color.
    pub color: Color,
    /// Release (40 hex).
    pub release: Release,
    /// Artifact URL with the release substituted.
    pub artifact_url: String,
    /// Expected SHA-256 of the artifact.
    pub sha256: String,
    /// Where the artifact is unpacked inside the slot.
    pub install_dir: String,
    /// Command that starts the app (after unpacking), placeholders substituted.
    pub start: String,
    /// Port the app listens on inside the slot.
    pub port: u16,
    /// Health path.
    pub health_path: String,
    /// Expected health status.
    pub expect_status: u16,
    /// Consecutive healthy probes before the slot counts as up (the manifest's
    /// `health.rise`, at least 1).
    pub health_rise: u32,
    /// Time limit of one probe in milliseconds (the manifest's `health.timeout`).
    pub health_timeout_ms: u64,
    /// Host-side address of the slot when reachable on loopback (`127.0.0.1:P`).
    pub loopback: Option<String>,
    /// The app's environment: values with the plain placeholders substituted and
    /// `{secret:NAME}` left for apply (a plan never holds a secret's value).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// The secrets the environment references: name → SHA-256 of its age file in the
    /// commit. A rotated secret changes it, so the slot is redeployed like a new release.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The app's migration, if it declares one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate: Option<MigrateSpec>,
}

/// An app's migration, placeholders substituted but `{dir}`, which the engine sets to the
/// scratch copy of the release the command runs from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateSpec {
    /// Shell command run in the release's directory with the app's environment.
    pub command: String,
    /// The instance it runs in: `None` for the slot being deployed.
    pub on: Option<String>,
    /// Time limit in milliseconds.
    pub timeout_ms: u64,
}

/// `(environment, secret name)` → SHA-256 of the secret's age file in the commit.
pub type SecretDigests = BTreeMap<(String, String), String>;

/// An instance the agent owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredInstance {
    /// Environment that declares it.
    pub env: String,
    /// Image reference as written (`alias` or `remote:alias`).
    pub image: String,
    /// Container or VM.
    pub kind: InstanceKind,
    /// Profiles.
    pub profiles: Vec<String>,
    /// Config the agent manages, marks included.
    pub config: BTreeMap<String, String>,
    /// Instance-local devices.
    pub devices: Devices,
    /// Protected data.
    pub protect: bool,
    /// Snapshots kept before changes.
    pub snapshots_keep: u32,
    /// Only report drift.
    pub detect_only: bool,
    /// Set for app slots.
    pub slot: Option<SlotSpec>,
    /// The app accepts rebuilding its serving slot in place (`in_place_updates`).
    pub in_place_updates: bool,
    /// On a cluster, the member the manifest places it on (`target:`); `None`: the
    /// planner picks one (`plan::placement`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The devices its declared profiles give it (a local device equal to one of these,
    /// by name and settings, changes nothing the instance runs).
    #[serde(skip)]
    pub profile_devices: Devices,
}

/// A job's units at their target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredJob {
    /// Environment.
    pub env: String,
    /// Job name.
    pub name: String,
    /// Where the units are installed.
    pub target: UnitTarget,
    /// The service and timer files.
    pub files: Vec<(String, String)>,
    /// The timer to enable.
    pub timer: String,
    /// The job's environment file, when it has variables.
    pub environment: Option<JobEnvironment>,
}

/// A job's environment file: rendered at apply time (secrets decrypted in memory) and
/// written root-only beside the service unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobEnvironment {
    /// File name in the unit directory (`veza-job-<env>-<name>.env`).
    pub file: String,
    /// Environment the secrets belong to.
    pub env: String,
    /// Variables as written (`{secret:NAME}` left for apply).
    pub vars: BTreeMap<String, String>,
}

/// The desired state of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// Environments applied.
    pub envs: Vec<String>,
    /// The host the manifests are bound to.
    pub host: String,
    /// Networks.
    pub networks: BTreeMap<String, DesiredNetwork>,
    /// Profiles.
    pub profiles: BTreeMap<String, DesiredProfile>,
    /// Instances, slots included.
    pub instances: BTreeMap<String, DesiredInstance>,
    /// Where the edge runs (`host` or an instance), if any env has an edge.
    pub edge_runs_in: Option<String>,
    /// Jobs.
    pub jobs: Vec<DesiredJob>,
}

/// Why the desired state could not be built (the manifests passed validation, so these
/// are rare: a rendering failure).
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// A job's units did not render.
    #[error("job `{env}/{name}`: {message}")]
    Job { env: String, name: String, message: String },
}

/// Resolves `pool: auto` and turns a manifest device into Incus's string map.
pub fn device_map(dev: &Device, pool: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let kind = match dev.kind {
        DeviceType::Disk => "disk",
        DeviceType::Proxy => "proxy",
        DeviceType::Nic => "nic",
    };
    m.insert("type".to_string(), kind.to_string());
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v.clone());
        }
    };
    put("path", &dev.path);
    put("source", &dev.source);
    put("listen", &dev.listen);
    put("connect", &dev.connect);
    put("network", &dev.network);
    put("name", &dev.name);
    if let Some(p) = &dev.pool {
        m.insert("pool".to_string(), if p == "auto" { pool.to_string() } else { p.clone() });
    }
    if let Some(ro) = dev.readonly {
        m.insert("readonly".to_string(), ro.to_string());
    }
    if let Some(bind) = dev.bind {
        let b = match bind {
            ProxyBind::Host => "host",
            ProxyBind::Instance => "instance",
        };
        m.insert("bind".to_string(), b.to_string());
    }
    for (k, v) in &dev.options {
        m.insert(k.clone(), v.clone());
    }
    m
}

fn devices(map: &BTreeMap<String, Device>, pool: &str) -> Devices {
    map.iter().map(|(k, d)| (k.clone(), device_map(d, pool))).collect()
}

/// Adds the agent's marks and the managed-keys list to an instance config.
/// A stable digest (FNV-1a, 64 bits, hex) of what a slot's app is started with besides its
/// release; recorded as [`MARK_APP_SPEC`]. Not a security check: it only tells a change.
/// The environment and its secrets' digests count only when there are any, so a slot
/// without them keeps the digest it was marked with before environments existed.
fn app_spec_digest(
    port: u16,
    start: &str,
    install_dir: &str,
    environment: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut parts = vec![port.to_string(), start.to_string(), install_dir.to_string()];
    for (k, v) in environment.iter().chain(secrets) {
        parts.push(format!("{k}={v}"));
    }
    for part in parts.iter().map(String::as_str) {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn with_marks(
    mut config: BTreeMap<String, String>,
    marks: &[(&str, String)],
) -> BTreeMap<String, String> {
    let keys: Vec<String> = config.keys().cloned().collect();
    config.insert(MARK_MANAGED.to_string(), "true".to_string());
    for (k, v) in marks {
        config.insert((*k).to_string(), v.clone());
    }
    // Incus drops a key set to "": an empty list is no key at all, or the next
    // observation would differ from what was written and the instance would never converge.
    if !keys.is_empty() {
        config.insert(MARK_KEYS.to_string(), keys.join(","));
    }
    config
}

/// Builds the desired state of a host from its validated manifests. `pool` is the pool
/// `pool: auto` resolves to (see [`crate::live::LiveState::root_pool`]).
/// `secrets` are the digests of the secrets the manifests reference.
pub fn desired(
    manifests: &[&Manifest],
    pool: &str,
    secrets: &SecretDigests,
) -> Result<Desired, DesiredError> {
    let mut d = Desired {
        envs: Vec::new(),
        host: manifests.first().map(|m| m.metadata.host.clone()).unwrap_or_default(),
        networks: BTreeMap::new(),
        profiles: BTreeMap::new(),
        instances: BTreeMap::new(),
        edge_runs_in: None,
        jobs: Vec::new(),
    };
    for m in manifests {
        let env = m.metadata.name.clone();
        d.envs.push(env.clone());
        for (name, net) in &m.incus.networks {
            d.networks.insert(
                name.clone(),
                DesiredNetwork { managed: net.managed, config: net.config.clone() },
            );
        }
        for (name, p) in &m.incus.profiles {
            let mut config = p.config.clone();
            config.insert(MARK_MANAGED.to_string(), "true".to_string());
            config.insert(MARK_HOST.to_string(), m.metadata.host.clone());
            d.profiles.insert(
                name.clone(),
                DesiredProfile {
                    description: p.description.clone().unwrap_or_default(),
                    config,
                    devices: devices(&p.devices, pool),
                },
            );
        }
        for (name, inst) in &m.incus.instances {
            let mut marks = vec![(MARK_ENV, env.clone()), (MARK_IMAGE, inst.image.clone())];
            if inst.protect {
                marks.push((MARK_PROTECT, "true".to_string()));
            }
            d.instances.insert(
                name.clone(),
                DesiredInstance {
                    env: env.clone(),
                    image: inst.image.clone(),
                    kind: kind_of(inst.kind),
                    profiles: inst.profiles.clone(),
                    config: with_marks(inst.config.clone(), &marks),
                    devices: devices(&inst.devices, pool),
                    protect: inst.protect,
                    snapshots_keep: inst.snapshots_keep.unwrap_or(3),
                    detect_only: inst.detect_only,
                    slot: None,
                    in_place_updates: false,
                    target: inst.target.clone(),
                    profile_devices: Devices::new(),
                },
            );
        }
        let prefix = m.metadata.instance_prefix();
        for (app_name, app) in &m.apps {
            for (color, slot) in &app.slots {
                let Some(release) = &slot.release else { continue };
                let name = naming::slot_instance(&prefix, app_name, *color);
                let install_dir = app
                    .artifact
                    .install_dir
                    .clone()
                    .unwrap_or_else(|| format!("/opt/veza/{app_name}"));
                let vars = template::Vars {
                    release: release.as_str(),
                    port: app.port,
                    dir: &install_dir,
                    env: &env,
                    app: app_name,
                    color: color.as_str(),
                };
                let subst = |s: &str| template::substitute(s, &vars);
                let start = subst(app.start.as_deref().unwrap_or("{dir}/start.sh"));
                let environment: BTreeMap<String, String> =
                    app.env.iter().map(|(k, v)| (k.clone(), subst(v))).collect();
                let slot_secrets: BTreeMap<String, String> = environment
                    .values()
                    .flat_map(|v| template::secret_refs(v).unwrap_or_default())
                    .map(|name| {
                        let digest = secrets
                            .get(&(env.clone(), name.to_string()))
                            .cloned()
                            .unwrap_or_default();
                        (name.to_string(), digest)
                    })
                    .collect();
                // `{dir}` of a migration is where it runs from (a scratch copy of the
                // release, known at apply time), not the install directory.
                let migrate = app.migrate.as_ref().map(|m| MigrateSpec {
                    command: template::substitute(
                        &m.command,
                        &template::Vars { dir: "{dir}", ..vars },
                    ),
                    on: m.on.clone().filter(|on| on != "slot"),
                    timeout_ms: m.timeout.map_or(600_000, |t| t.get().as_millis() as u64),
                });
                let mut devs = Devices::new();
                let loopback =
                    app.upstream.loopback_ports.as_ref().and_then(|p| p.get(color)).map(|port| {
                        devs.insert(
                            "veza-upstream".to_string(),
                            BTreeMap::from([
                                ("type".to_string(), "proxy".to_string()),
                                ("listen".to_string(), format!("tcp:127.0.0.1:{port}")),
                                ("connect".to_string(), format!("tcp:127.0.0.1:{}", app.port)),
                            ]),
                        );
                        format!("127.0.0.1:{port}")
                    });
                let marks = [
                    (MARK_ENV, env.clone()),
                    (MARK_APP, app_name.clone()),
                    (MARK_COLOR, color.to_string()),
                    (MARK_IMAGE, app.image.clone()),
                    (
                        MARK_APP_SPEC,
                        app_spec_digest(
                            app.port,
                            app.start.as_deref().unwrap_or("{dir}/start.sh"),
                            &install_dir,
                            &app.env,
                            &slot_secrets,
                        ),
                    ),
                ];
                let sha256 = app
                    .artifact
                    .sha256
                    .get(release)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                d.instances.insert(
                    name,
                    DesiredInstance {
                        env: env.clone(),
                        image: app.image.clone(),
                        kind: InstanceKind::Container,
                        profiles: app.profiles.clone(),
                        config: with_marks(app.config.clone(), &marks),
                        devices: devs,
                        protect: false,
                        snapshots_keep: 0,
                        detect_only: false,
                        in_place_updates: app.in_place_updates,
                        target: slot.target.clone(),
                        profile_devices: Devices::new(),
                        slot: Some(SlotSpec {
                            env: env.clone(),
                            app: app_name.clone(),
                            color: *color,
                            release: release.clone(),
                            artifact_url: app.artifact.url.replace("{release}", release.as_str()),
                            sha256,
                            install_dir: install_dir.clone(),
                            start,
                            port: app.port,
                            health_path: app.health.path.clone(),
                            expect_status: app.health.expect_status.unwrap_or(200),
                            health_rise: app.health.rise.unwrap_or(2).max(1),
                            health_timeout_ms: app
                                .health
                                .timeout
                                .map_or(2000, |t| t.get().as_millis() as u64),
                            loopback,
                            environment,
                            secrets: slot_secrets,
                            migrate,
                        }),
                    },
                );
            }
        }
        if let Some(edge) = &m.edge {
            d.edge_runs_in = Some(edge.runs_in.clone());
        }
        for (name, job) in &m.jobs {
            let err = |message: String| DesiredError::Job {
                env: env.clone(),
                name: name.clone(),
                message,
            };
            let schedule =
                veza_model::schedule::parse(&job.schedule).map_err(|e| err(e.to_string()))?;
            let spec = JobUnitSpec {
                env: env.clone(),
                name: name.clone(),
                schedule,
                tz: job.timezone.clone(),
                user: job.user.clone(),
                command: job.command.clone(),
                randomized_delay: job.randomized_delay.map(|d| d.get()),
                persistent: job.persistent.unwrap_or(true),
                timeout: job.timeout.map(|d| d.get()),
                description: None,
            };
            let mut units = veza_model::units::render(&spec).map_err(|e| err(e.to_string()))?;
            let environment = (!job.env.is_empty()).then(|| {
                let used: BTreeMap<String, String> = job
                    .env
                    .values()
                    .flat_map(|v| template::secret_refs(v).unwrap_or_default())
                    .map(|n| {
                        let digest = secrets.get(&(env.clone(), n.to_string())).cloned();
                        (n.to_string(), digest.unwrap_or_default())
                    })
                    .collect();
                veza_model::units::with_environment(&mut units, &job.env, &used);
                JobEnvironment {
                    file: veza_model::units::environment_file_name(&units),
                    env: env.clone(),
                    vars: job.env.clone(),
                }
            });
            let files: Vec<UnitFile> = vec![units.service.clone(), units.timer.clone()];
            d.jobs.push(DesiredJob {
                env: env.clone(),
                name: name.clone(),
                target: UnitTarget::from_on(&job.on),
                files: files.into_iter().map(|f| (f.name, f.contents)).collect(),
                timer: units.timer.name.clone(),
                environment,
            });
        }
    }
    for inst in d.instances.values_mut() {
        for p in &inst.profiles {
            if let Some(profile) = d.profiles.get(p) {
                inst.profile_devices.extend(profile.devices.clone());
            }
        }
    }
    Ok(d)
}

fn kind_of(k: InstanceType) -> InstanceKind {
    match k {
        InstanceType::Container => InstanceKind::Container,
        InstanceType::VirtualMachine => InstanceKind::VirtualMachine,
    }
}
