//! Plain data for the Incus driver: the requests callers build (`InstanceSpec`,
//! `InstanceUpdate`, `ProfileSpec`, `StateChange`, `ExecRequest`, `FilePush`) and the
//! results (`ExecOutput`, `SnapshotInfo`, `RunningOperation`).
//!
//! What the driver observes is the planner's live model, `veza_model::live` (`LiveState`
//! and its parts, with the ownership marks); the JSON shapes Incus sends live in `wire`
//! (`types/wire.rs`) and are converted to it once, at the edge.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub(crate) use veza_model::live::{
    Config, Devices, InstanceKind, InstanceStatus, LiveInstance, LiveNetwork, LivePool,
    LiveProfile, LiveState, MARK_MANAGED, is_incus_key, is_marked,
};

/// Prefix of the snapshots the agent creates and prunes.
pub const SNAPSHOT_PREFIX: &str = "veza-";

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
    /// On a cluster, the member to create it on (`?target=`); `None`: Incus decides (a
    /// single host).
    pub target: Option<String>,
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
            target: None,
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

/// `config` with the ownership mark added.
pub(crate) fn with_mark(config: &Config) -> Config {
    let mut c = config.clone();
    c.insert(MARK_MANAGED.to_string(), "true".to_string());
    c
}

pub(crate) mod wire;
