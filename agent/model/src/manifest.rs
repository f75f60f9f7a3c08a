//! The manifest types of `apiVersion: veza-agent/v1`.
//!
//! One file describes one environment (`kind: Environment`) bound to one host.
//! Every struct rejects unknown keys. Values that have a syntax of their own
//! (durations, releases, digests) are newtypes validated while deserializing, so
//! their errors carry the YAML position. Rules that relate several values live in
//! `validate`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::Deserialize;

mod maintenance;
mod values;

pub use maintenance::{Maintenance, Window, WindowStart};
pub(crate) use values::string_schema;
pub use values::{DurationSpec, Release, Sha256Hex, short_id};

/// A whole manifest file: one environment on one host.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "veza-agent manifest (veza-agent/v1)")]
pub struct Manifest {
    /// Manifest format version. Only `veza-agent/v1` exists.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    /// The kind of document. Only `Environment` exists.
    pub kind: Kind,
    /// Which environment this is and which host applies it.
    pub metadata: Metadata,
    /// Incus resources: networks, profiles and plain (non blue/green) instances.
    #[serde(default)]
    pub incus: Incus,
    /// Blue/green applications, by name.
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
    /// This environment's part of the host's shared HAProxy edge.
    #[serde(default)]
    pub edge: Option<Edge>,
    /// Scheduled jobs (systemd timers), by name.
    #[serde(default)]
    pub jobs: BTreeMap<String, Job>,
    /// When the environment's disruptive steps may run (none declared: any time).
    #[serde(default)]
    pub maintenance: Maintenance,
}

/// The manifest format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// Version 1 of the format.
    #[serde(rename = "veza-agent/v1")]
    V1,
}

/// The kind of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum Kind {
    /// One environment (for example `prod` or `staging`) on one host.
    Environment,
}

/// Identity of the environment and the host it is bound to.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Environment name, e.g. `prod`. Lowercase letters, digits and dashes.
    pub name: String,
    /// The host that applies this manifest; an agent configured for another host ignores it.
    pub host: String,
    /// Prefix of the app slot instance names (`<prefix><app>-<color>`).
    /// Defaults to `<name>-`.
    #[serde(default)]
    pub instance_prefix: Option<String>,
}

impl Metadata {
    /// The prefix used for app slot instance names.
    pub fn instance_prefix(&self) -> String {
        self.instance_prefix.clone().unwrap_or_else(|| format!("{}-", self.name))
    }
}

/// Incus resources of the environment.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Incus {
    /// Not supported: every resource lives in the `default` Incus project. Kept out of the
    /// schema and parsed only so `validate` can refuse it with a hint instead of a bare
    /// "unknown field".
    #[serde(default)]
    #[schemars(skip)]
    pub project: Option<String>,
    /// Networks, referenced (must exist) or managed (created and owned by the agent).
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Profiles owned by the agent.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// Plain instances: data stores, the edge container, tools.
    #[serde(default)]
    pub instances: BTreeMap<String, Instance>,
}

/// An Incus network.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `false` (the default): the network exists already and is only referenced.
    /// `true`: the agent creates it and owns it.
    #[serde(default)]
    pub managed: bool,
    /// Network type for a managed network. Defaults to `bridge`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Incus network config keys for a managed network (e.g. `ipv4.address`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// An Incus profile.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Free text shown by `incus profile list`.
    #[serde(default)]
    pub description: Option<String>,
    /// Incus config keys (e.g. `limits.cpu`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Devices, by name.
    #[serde(default)]
    pub devices: BTreeMap<String, Device>,
}

/// The type of an Incus device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    /// A disk: the root filesystem or a mount.
    Disk,
    /// A proxy: forwards a listen address to a connect address.
    Proxy,
    /// A network interface.
    Nic,
}

/// An Incus device. Which keys are required depends on `type`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// `disk`, `proxy` or `nic`.
    #[serde(rename = "type")]
    pub kind: DeviceType,
    /// disk: mount path inside the instance (`/` for the root disk).
    #[serde(default)]
    pub path: Option<String>,
    /// disk: storage pool. `auto` picks the pool existing instances use, as the seed did.
    #[serde(default)]
    pub pool: Option<String>,
    /// disk: host path or volume to mount.
    #[serde(default)]
    pub source: Option<String>,
    /// disk: mount read-only.
    #[serde(default)]
    pub readonly: Option<bool>,
    /// proxy: listen address, e.g. `tcp:0.0.0.0:80`.
    #[serde(default)]
    pub listen: Option<String>,
    /// proxy: connect address, e.g. `tcp:127.0.0.1:80`.
    #[serde(default)]
    pub connect: Option<String>,
    /// proxy: which side listens, `host` (default) or `instance`.
    #[serde(default)]
    pub bind: Option<ProxyBind>,
    /// nic: the network to attach to.
    #[serde(default)]
    pub network: Option<String>,
    /// nic: interface name inside the instance.
    #[serde(default)]
    pub name: Option<String>,
    /// Other raw Incus device keys, passed through unchanged. Never `type` or a key that has
    /// its own field above. `security.*` and `raw.*` keys are capabilities the host's trust
    /// policy must grant.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// Which side of a proxy device listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyBind {
    /// The host listens and forwards into the instance.
    Host,
    /// The instance listens and forwards to the host.
    Instance,
}

/// Container or virtual machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceType {
    /// A system container (the default).
    #[default]
    Container,
    /// A virtual machine.
    VirtualMachine,
}

/// A plain Incus instance.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Image: a local alias (`veza-debian12`) or `remote:alias` (`images:debian/13`).
    pub image: String,
    /// Container (default) or virtual machine.
    #[serde(default, rename = "type")]
    pub kind: InstanceType,
    /// Profiles, in order. `default` is implied only when listed.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Incus config keys. `user.veza.*` and `volatile.*` are reserved.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Devices, by name.
    #[serde(default)]
    pub devices: BTreeMap<String, Device>,
    /// Protected data: never deleted, snapshotted before any change.
    #[serde(default)]
    pub protect: bool,
    /// Snapshots kept before changes to a protected instance. Defaults to 3.
    #[serde(default)]
    pub snapshots_keep: Option<u32>,
    /// Only report drift on this instance, never correct it.
    #[serde(default)]
    pub detect_only: bool,
    /// On an Incus cluster, the member it is created on (`incus cluster list`). Without
    /// it, the agent picks the online member with the fewest instances. Ignored, with a
    /// note in the plan, on a host that is not configured for a cluster.
    #[serde(default)]
    pub target: Option<String>,
}

/// One of the two colors of a blue/green app.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Deserialize,
    serde::Serialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The blue slot.
    Blue,
    /// The green slot.
    Green,
}

impl Color {
    /// Both colors, blue first.
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    /// The other color.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A blue/green application: two slot instances, one of which receives traffic.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Image of the slot instances.
    pub image: String,
    /// Profiles of the slot instances.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Extra Incus config keys of the slot instances.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// TCP port the app listens on inside its slot.
    pub port: u16,
    /// How a release is delivered: a tarball pinned by sha256.
    pub artifact: Artifact,
    /// Command that starts the app inside the slot, run after the artifact is unpacked.
    /// `{release}`, `{port}`, `{dir}`, `{env}`, `{app}` and `{color}` are substituted.
    /// Defaults to `{dir}/start.sh`. Secrets are not allowed here (a command line is
    /// visible in `ps`): put them in `env`.
    #[serde(default)]
    pub start: Option<String>,
    /// Environment variables of the app (and of its migration), by name. Values take the
    /// placeholders of `start` and `{secret:NAME}`, the value of the age-encrypted file
    /// `secrets/<env>/NAME.age` beside the manifest in the same commit, decrypted on the
    /// host only. Delivered
    /// as a root-only file in the slot, never on a command line or in Incus config.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Database migration run with the new release and its environment before the new
    /// color gets traffic, at most once per release in this environment.
    #[serde(default)]
    pub migrate: Option<Migrate>,
    /// Health check used by the in-slot probe and by HAProxy.
    pub health: Health,
    /// How the edge reaches a slot.
    #[serde(default)]
    pub upstream: Upstream,
    /// The two slots and the release each one runs.
    pub slots: BTreeMap<Color, Slot>,
    /// The color that receives traffic. A promotion is a change of this line.
    pub active: Color,
    /// Refuse promotions while one of these jobs (of this environment) is stale or failing.
    #[serde(default)]
    pub gate_on_jobs: Vec<String>,
    /// Allow a change of the serving color's release (or image) to rebuild it in place,
    /// interrupting its traffic. Off by default: such an edit is refused with a hint to
    /// deploy to the idle color and promote it.
    #[serde(default)]
    pub in_place_updates: bool,
}

/// A migration (the seed's phase A: `migrate_tool --up`). It must keep the previous
/// release working (expand/contract), since traffic may go back to it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Migrate {
    /// Shell command, run in the release's directory with the app's environment; takes
    /// the placeholders of `start`.
    pub command: String,
    /// Where it runs: `slot` (the new color's slot, the default) or the name of an
    /// instance of this environment (a tools container), which gets the release unpacked.
    #[serde(default)]
    pub on: Option<String>,
    /// Time limit. Defaults to `10m`.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
}

/// The release artifact of an app.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Download URL; `{release}` is replaced by the slot's release.
    pub url: String,
    /// Expected SHA-256 (64 hex) of the artifact, per release.
    pub sha256: BTreeMap<Release, Sha256Hex>,
    /// Directory inside the slot where the artifact is unpacked. Defaults to `/opt/veza/<app>`.
    #[serde(default)]
    pub install_dir: Option<String>,
}

/// The health check of an app.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP path probed, e.g. `/api/v1/health`.
    pub path: String,
    /// Time between the edge's checks (HAProxy `inter`). Defaults to `5s`. The agent's
    /// own promotion gate probes every 200 ms instead.
    #[serde(default)]
    pub interval: Option<DurationSpec>,
    /// Time limit of one check, by the edge and by the agent's gate. Defaults to `2s`.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    /// Consecutive successes to be considered up, by the edge and by the agent's
    /// promotion gate (which also wants at least 1 s of health). Defaults to 2, at most 20.
    #[serde(default)]
    pub rise: Option<u32>,
    /// Consecutive failures to be considered down. Defaults to 3, at most 20.
    #[serde(default)]
    pub fall: Option<u32>,
    /// Expected HTTP status. Defaults to 200.
    #[serde(default)]
    pub expect_status: Option<u16>,
}

/// How the edge reaches the slots of an app.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Reach a slot by Incus DNS name `<instance>.<dns_suffix>:<port>` on the bridge.
    /// This is the default, with suffix `lxd`.
    #[serde(default)]
    pub dns_suffix: Option<String>,
    /// Reach a slot through a proxy device on `127.0.0.1:<port>` of the host, per color.
    #[serde(default)]
    pub loopback_ports: Option<BTreeMap<Color, u16>>,
}

/// One slot of an app.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    /// The release (40-hex commit id) this slot runs; absent for an empty slot.
    #[serde(default)]
    pub release: Option<Release>,
    /// On an Incus cluster, the member this color's slot is created on. Without it, the
    /// two colors of an app are created on different members (anti-affinity), so losing
    /// one member never takes both.
    #[serde(default)]
    pub target: Option<String>,
}

/// The environment's part of the shared HAProxy edge.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// Where HAProxy runs: `host`, or the name of an Incus instance.
    pub runs_in: String,
    /// Public host names served for this environment's apps.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path routes to apps, first match wins; a route without `path_prefix` is the default.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Name of the sticky-session cookie; must differ between environments.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    /// Backends the edge fronts but the agent does not deploy (Forgejo, static sites).
    #[serde(default)]
    pub external_backends: BTreeMap<String, ExternalBackend>,
    /// TLS termination.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// Listen addresses of the shared edge. Defaults to `0.0.0.0:80` and `0.0.0.0:443`.
    #[serde(default)]
    pub listen: Option<EdgeListen>,
}

/// A path route.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix, e.g. `/api`. Absent: the default route.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The app that serves this route.
    pub app: String,
    /// Load-balancing algorithm. Defaults to `roundrobin`.
    #[serde(default)]
    pub balance: Option<Balance>,
}

/// HAProxy load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Round robin.
    Roundrobin,
    /// Fewest connections.
    Leastconn,
    /// Hash of the URI (cache locality for streams).
    Uri,
    /// Hash of the client address.
    Source,
}

/// A backend fronted by the edge but not deployed by the agent.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalBackend {
    /// Host names routed to this backend.
    pub hosts: Vec<String>,
    /// Servers as `address:port`.
    pub servers: Vec<String>,
    /// Optional HTTP health-check path.
    #[serde(default)]
    pub health_path: Option<String>,
}

/// TLS settings of the edge.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Directory of PEM certificates (HAProxy `crt` directory).
    pub cert_dir: String,
    /// Redirect plain HTTP to HTTPS. Defaults to true.
    #[serde(default)]
    pub redirect_http: Option<bool>,
}

/// Listen addresses of the edge.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeListen {
    /// Plain HTTP `address:port`.
    pub http: String,
    /// HTTPS `address:port` (used only with `tls`).
    #[serde(default)]
    pub https: Option<String>,
}

/// A scheduled job, rendered as a systemd service + timer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Classic 5-field cron expression (`m h dom mon dow`) or `@daily`-style macro.
    pub schedule: String,
    /// Time zone of the schedule. Defaults to `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Where the job runs: `host`, or an Incus instance name.
    pub on: String,
    /// User the command runs as. Defaults to root.
    #[serde(default)]
    pub user: Option<String>,
    /// Shell command line. Secrets are not allowed here: put them in `env`.
    pub command: String,
    /// Environment variables of the job, by name; values take `{secret:NAME}` (see the
    /// app's `env`). Delivered in a root-only file next to the unit, not in the unit.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Random delay added to each run (`RandomizedDelaySec=`).
    #[serde(default)]
    pub randomized_delay: Option<DurationSpec>,
    /// Catch up a run missed while the machine was off. Defaults to true.
    #[serde(default)]
    pub persistent: Option<bool>,
    /// Time limit of one run.
    #[serde(default)]
    pub timeout: Option<DurationSpec>,
    /// The job is unhealthy when its last success is older than this (e.g. `8d`).
    #[serde(default)]
    pub max_success_age: Option<DurationSpec>,
}
