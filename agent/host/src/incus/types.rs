//! Plain data for the Incus driver: the observed state (`IncusLive` and its parts), the
//! requests callers build (`InstanceSpec`, `InstanceUpdate`, `ProfileSpec`, `StateChange`,
//! `ExecRequest`, `FilePush`) and the results (`ExecOutput`, `SnapshotInfo`,
//! `RunningOperation`).
//!
//! The observed types derive `Serialize`/`Deserialize` and `PartialEq` so that the planner
//! and snapshot tests can use them as plain data. Their wire forms (the JSON Incus sends)
//! live in `wire` (`types/wire.rs`) and are converted once, at the edge.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Config keys and values (`limits.cpu = "2"`, `user.veza.release = "…"`). Incus keeps
/// every value as a string.
pub type Config = BTreeMap<String, String>;
/// One device: its keys (`type`, `listen`, `connect`, `path`, `pool`, …).
pub type Device = BTreeMap<String, String>;
/// Devices by name.
pub type Devices = BTreeMap<String, Device>;

/// The ownership mark: only resources whose config holds `user.veza.managed=true` are ever
/// changed or deleted by the agent.
pub const MARK_MANAGED: &str = "user.veza.managed";
/// Environment the resource belongs to (set by callers).
pub const KEY_ENV: &str = "user.veza.env";
/// Application name (set by callers).
pub const KEY_APP: &str = "user.veza.app";
/// Blue/green color (set by callers).
pub const KEY_COLOR: &str = "user.veza.color";
/// Release the instance runs (set by callers).
pub const KEY_RELEASE: &str = "user.veza.release";
/// `true` forbids deletion by the agent (data containers).
pub const KEY_PROTECT: &str = "user.veza.protect";
/// Prefix of the snapshots the agent creates and prunes.
pub const SNAPSHOT_PREFIX: &str = "veza-";

/// Everything the agent observes in Incus, one list request each (networks only when the
/// observation scope asks for them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IncusLive {
    pub instances: BTreeMap<String, LiveInstance>,
    pub profiles: BTreeMap<String, LiveProfile>,
    pub networks: BTreeMap<String, LiveNetwork>,
    pub pools: BTreeMap<String, LivePool>,
}

impl IncusLive {
    /// The storage pool to put root disks on, detected the way the seed playbooks ended up
    /// doing it (commit 5f6625cc56): the pool that an existing instance's root disk uses
    /// (from `expanded_devices`, so a pool inherited from a profile counts), trying the
    /// `preferred` instances first and then every instance in name order; else the first
    /// pool (in name order) whose status is `Created`; else the first pool at all.
    ///
    /// Only pools that still exist are returned from the instance search.
    pub fn detect_root_pool(&self, preferred: &[&str]) -> Option<String> {
        let from_instance = |inst: &LiveInstance| {
            inst.root_disk_pool().filter(|p| self.pools.contains_key(*p)).map(str::to_string)
        };
        preferred
            .iter()
            .filter_map(|name| self.instances.get(*name))
            .chain(self.instances.values())
            .find_map(from_instance)
            .or_else(|| self.pools.values().find(|p| p.status == "Created").map(|p| p.name.clone()))
            .or_else(|| self.pools.keys().next().cloned())
    }

    /// Instances carrying the ownership mark.
    pub fn owned_instances(&self) -> impl Iterator<Item = &LiveInstance> {
        self.instances.values().filter(|i| i.is_owned())
    }
}

/// Container or virtual machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InstanceKind {
    #[default]
    #[serde(rename = "container")]
    Container,
    #[serde(rename = "virtual-machine")]
    VirtualMachine,
}

impl InstanceKind {
    /// The name Incus uses (`container`, `virtual-machine`).
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceKind::Container => "container",
            InstanceKind::VirtualMachine => "virtual-machine",
        }
    }
}

/// An instance's power status as Incus reports it in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum InstanceStatus {
    Running,
    Stopped,
    Frozen,
    Error,
    /// Any other status text (`Starting`, `Stopping`, …), kept verbatim.
    Other(String),
}

impl From<String> for InstanceStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "Running" => InstanceStatus::Running,
            "Stopped" => InstanceStatus::Stopped,
            "Frozen" => InstanceStatus::Frozen,
            "Error" => InstanceStatus::Error,
            _ => InstanceStatus::Other(s),
        }
    }
}

impl From<InstanceStatus> for String {
    fn from(s: InstanceStatus) -> Self {
        s.to_string()
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceStatus::Running => "Running",
            InstanceStatus::Stopped => "Stopped",
            InstanceStatus::Frozen => "Frozen",
            InstanceStatus::Error => "Error",
            InstanceStatus::Other(s) => s,
        })
    }
}

/// One instance as observed with `GET /1.0/instances?recursion=1`.
///
/// `config` is the instance's own config, verbatim (it includes Incus's `volatile.*` and
/// `image.*` keys; see [`LiveInstance::settable_config`]). `devices` are the
/// instance-local devices (what the agent owns and reconciles), `expanded_devices` the
/// effective ones after profiles are applied (where the root disk usually comes from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveInstance {
    pub name: String,
    pub kind: InstanceKind,
    pub status: InstanceStatus,
    pub config: Config,
    pub devices: Devices,
    pub expanded_devices: Devices,
    pub profiles: Vec<String>,
    pub description: String,
}

impl LiveInstance {
    /// Whether the agent owns this instance (`user.veza.managed=true`).
    pub fn is_owned(&self) -> bool {
        is_marked(&self.config)
    }

    /// Whether the instance is protected from deletion (`user.veza.protect=true`).
    pub fn is_protected(&self) -> bool {
        self.config.get(KEY_PROTECT).is_some_and(|v| v == "true")
    }

    /// Whether the instance is running.
    pub fn is_running(&self) -> bool {
        self.status == InstanceStatus::Running
    }

    /// The config without the keys Incus manages itself (`volatile.*`, `image.*`): what
    /// [`InstanceUpdate::config`] is compared against and replaces.
    pub fn settable_config(&self) -> Config {
        settable_config(&self.config)
    }

    /// The pool of the effective root disk (a `disk` device with `path=/`), if any.
    pub fn root_disk_pool(&self) -> Option<&str> {
        self.expanded_devices
            .values()
            .find(|d| {
                d.get("type").is_some_and(|t| t == "disk")
                    && d.get("path").is_some_and(|p| p == "/")
            })
            .and_then(|d| d.get("pool"))
            .map(String::as_str)
    }
}

/// One profile as observed with `GET /1.0/profiles?recursion=1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveProfile {
    pub name: String,
    pub description: String,
    pub config: Config,
    pub devices: Devices,
    /// API paths of the instances using this profile (`/1.0/instances/NAME`).
    pub used_by: Vec<String>,
}

impl LiveProfile {
    /// Whether the agent owns this profile (`user.veza.managed=true` in its config).
    pub fn is_owned(&self) -> bool {
        is_marked(&self.config)
    }
}

/// One network as observed with `GET /1.0/networks?recursion=1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNetwork {
    pub name: String,
    /// `bridge`, `loopback`, `physical`, …
    pub kind: String,
    /// Whether Incus manages it (a bridge it created) or merely sees it (a host interface).
    pub managed: bool,
    pub status: String,
    pub description: String,
    pub config: Config,
}

/// One storage pool as observed with `GET /1.0/storage-pools?recursion=1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePool {
    pub name: String,
    /// `dir`, `zfs`, `btrfs`, `lvm`, …
    pub driver: String,
    /// `Created` when usable; anything else (`Unavailable`, `Errored`) is a warning sign.
    pub status: String,
    pub description: String,
    pub config: Config,
}

/// Where an instance's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageSource {
    /// An image alias in the local image store (`veza-test-busybox`).
    Local { alias: String },
    /// An image on a remote simplestreams server (`images:debian/13` is
    /// `server = "https://images.linuxcontainers.org"`, `alias = "debian/13"`).
    Simplestreams { server: String, alias: String },
}

impl ImageSource {
    /// A local alias.
    pub fn local(alias: impl Into<String>) -> ImageSource {
        ImageSource::Local { alias: alias.into() }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            ImageSource::Local { alias } => serde_json::json!({"type": "image", "alias": alias}),
            ImageSource::Simplestreams { server, alias } => serde_json::json!({
                "type": "image", "alias": alias, "server": server, "protocol": "simplestreams"
            }),
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Local { alias } => write!(f, "local image `{alias}`"),
            ImageSource::Simplestreams { server, alias } => {
                write!(f, "image `{alias}` from {server}")
            }
        }
    }
}

/// A desired instance: what `create_instance` creates and `ensure_instance` converges to.
///
/// The ownership mark `user.veza.managed=true` is added to `config` by the driver; callers
/// add the other labels (`user.veza.env`, `…app`, `…color`, `…release`, `…protect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub name: String,
    pub kind: InstanceKind,
    pub source: ImageSource,
    pub config: Config,
    pub devices: Devices,
    /// Applied in order. An empty list means no profile at all (so no inherited root disk).
    pub profiles: Vec<String>,
    /// Start the instance (on creation in the same operation, and later if it is stopped).
    pub start: bool,
}

impl InstanceSpec {
    /// A container from a local image alias with the `default` profile, not started.
    pub fn container(name: impl Into<String>, alias: impl Into<String>) -> InstanceSpec {
        InstanceSpec {
            name: name.into(),
            kind: InstanceKind::Container,
            source: ImageSource::local(alias),
            config: Config::new(),
            devices: Devices::new(),
            profiles: vec!["default".to_string()],
            start: false,
        }
    }

    /// The part of the spec that an update can change.
    pub fn update(&self) -> InstanceUpdate {
        InstanceUpdate {
            config: self.config.clone(),
            devices: self.devices.clone(),
            profiles: self.profiles.clone(),
        }
    }
}

/// The writable, agent-reconciled part of an instance. An update *replaces* the instance's
/// settable config (every key but `volatile.*` and `image.*`, which are kept as they are),
/// its local devices and its profile list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceUpdate {
    pub config: Config,
    pub devices: Devices,
    pub profiles: Vec<String>,
}

/// A desired profile. The ownership mark is added to `config` by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProfileSpec {
    pub name: String,
    pub description: String,
    pub config: Config,
    pub devices: Devices,
}

/// Power actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateAction {
    Start,
    Stop,
    Restart,
}

impl StateAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StateAction::Start => "start",
            StateAction::Stop => "stop",
            StateAction::Restart => "restart",
        }
    }
}

/// A power change. `timeout` is the graceful shutdown time Incus allows for stop/restart
/// (after which a non-forced stop fails) and bounds how long the driver waits for start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    pub action: StateAction,
    pub timeout: Duration,
    /// Kill instead of a clean shutdown (stop/restart).
    pub force: bool,
}

impl StateChange {
    /// Start, waiting up to 60 s.
    pub fn start() -> StateChange {
        StateChange { action: StateAction::Start, timeout: Duration::from_secs(60), force: false }
    }
    /// Stop: a clean shutdown within `timeout`, or a kill when `force`.
    pub fn stop(timeout: Duration, force: bool) -> StateChange {
        StateChange { action: StateAction::Stop, timeout, force }
    }
    /// Restart: like stop, then start.
    pub fn restart(timeout: Duration, force: bool) -> StateChange {
        StateChange { action: StateAction::Restart, timeout, force }
    }
}

/// A command to run in an instance, non-interactively, with its output recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments (no shell unless you run one).
    pub command: Vec<String>,
    /// Extra environment; Incus sets `HOME`, `LANG`, `PATH` and `USER` by default.
    pub env: BTreeMap<String, String>,
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub cwd: Option<String>,
    /// How long to wait for the command. On expiry the driver returns `Timeout`; the
    /// command keeps running in the instance (Incus cannot cancel a recorded exec).
    pub timeout: Duration,
}

impl ExecRequest {
    /// `command` as root with the default environment and a 60 s timeout.
    pub fn new<I, S>(command: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            user: None,
            group: None,
            cwd: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// A shell command: `sh -c SCRIPT`.
    pub fn sh(script: impl Into<String>) -> ExecRequest {
        ExecRequest::new(["sh".to_string(), "-c".to_string(), script.into()])
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Stdout as lossy UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as lossy UTF-8.
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A file to write into an instance. `Debug` shows its size, never its content (an
/// environment file holds secrets).
#[derive(Clone, PartialEq, Eq)]
pub struct FilePush {
    /// Absolute path inside the instance.
    pub path: String,
    pub content: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o644`).
    pub mode: u32,
    /// Create missing parent directories (root-owned, mode 0755) first.
    pub create_parents: bool,
    /// Append instead of overwrite.
    pub append: bool,
}

impl std::fmt::Debug for FilePush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePush")
            .field("path", &self.path)
            .field("bytes", &self.content.len())
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("create_parents", &self.create_parents)
            .field("append", &self.append)
            .finish()
    }
}

impl FilePush {
    /// `content` to `path`, root-owned, mode 0644, overwriting, no parent creation.
    pub fn new(path: impl Into<String>, content: impl Into<Vec<u8>>) -> FilePush {
        FilePush {
            path: path.into(),
            content: content.into(),
            uid: 0,
            gid: 0,
            mode: 0o644,
            create_parents: false,
            append: false,
        }
    }
}

/// A snapshot of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// RFC 3339 as Incus reports it (`2026-11-29T22:27:05.56074947Z`).
    pub created_at: String,
    pub stateful: bool,
}

impl SnapshotInfo {
    /// Creation time, if Incus's timestamp parses.
    pub fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::parse_from_rfc3339(&self.created_at).ok().map(|t| t.to_utc())
    }

    /// Whether the agent made this snapshot (its name starts with `veza-`).
    pub fn is_agents(&self) -> bool {
        self.name.starts_with(SNAPSHOT_PREFIX)
    }
}

/// An Incus operation still running on an instance: the create or start a killed agent
/// left behind, or someone else's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningOperation {
    /// `/1.0/operations/UUID`.
    pub operation: String,
    /// Incus's description (`Creating instance`, `Starting instance`, …).
    pub description: String,
    /// The instance it concerns (the first of the caller's instances it names).
    pub instance: String,
}

/// Whether a config carries the ownership mark.
pub(crate) fn is_marked(config: &Config) -> bool {
    config.get(MARK_MANAGED).is_some_and(|v| v == "true")
}

/// Whether Incus manages `key` itself (never compared, always preserved).
pub(crate) fn is_incus_key(key: &str) -> bool {
    key.starts_with("volatile.") || key.starts_with("image.")
}

/// The keys of `config` the agent reconciles.
pub(crate) fn settable_config(config: &Config) -> Config {
    config.iter().filter(|(k, _)| !is_incus_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `config` with the ownership mark added.
pub(crate) fn with_mark(config: &Config) -> Config {
    let mut c = config.clone();
    c.insert(MARK_MANAGED.to_string(), "true".to_string());
    c
}

pub(crate) mod wire;
