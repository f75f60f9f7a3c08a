//! The Incus driver: observe instances, profiles, networks and storage pools, and change
//! instances and profiles the agent owns, through the Incus REST API.
//!
//! - [`Incus`] is the one trait the rest of the agent uses. [`IncusClient`] talks to a real
//!   incusd (pooled HTTP/1.1 over the unix socket); [`FakeIncus`] keeps an in-memory
//!   [`LiveState`], records every call and injects errors, for planner/apply tests.
//! - **Observation** returns the planner's live model (`veza_model::live`) directly: the
//!   Incus part of a [`LiveState`] (instances, profiles, networks, pools).
//! - **Ownership.** The agent's mark is `user.veza.managed=true` in an instance's or
//!   profile's config. Resources without it are observed but never changed: every mutating
//!   method first re-reads the resource (a fresh `GET`, never the observed snapshot) and
//!   returns [`IncusError::NotOwned`] for a foreign one. A name collision with a foreign
//!   resource is reported, never overwritten. Instances with `user.veza.protect=true` are
//!   never deleted ([`IncusError::Protected`]).
//! - **Async operations** are awaited with `GET {operation}/wait?timeout=N`, treating a
//!   `type:"error"` body as a failure even under HTTP 200, and polling again on
//!   `context deadline exceeded` until the caller's deadline (see `envelope`). Operations
//!   someone else left running on an instance (a killed agent's create) are awaited, with
//!   a deadline, through [`Incus::wait_for_operations`] before the instance is touched.
//! - **Updates** read the ETag and `PUT` with `If-Match` (devices can only be removed by a
//!   full `PUT`), retrying a bounded number of times on HTTP 412, and write nothing when
//!   the resource already matches. [`ensure_instance`] builds idempotent convergence on that.
//!
//! Design choice: the trait uses `fn … -> impl Future<Output = …> + Send` (implementations
//! write plain `async fn`). It is meant for generic use (`fn apply<I: Incus>(…)`), not as
//! `dyn Incus`; the futures are `Send`, so generic callers can `tokio::spawn` them.
//! Only the `default` Incus project is used.

mod adoption;
mod client;
mod envelope;
mod error;
mod fake;
mod feed;
pub(crate) mod shared;
mod types;

use std::future::Future;

pub(crate) use adoption::{
    adoption_writes, instance_changes, probe_command, profile_changes, validate_marks,
    validate_probe_path,
};
pub use client::{ClientOptions, IncusClient, RawResponse, Transport};
pub use error::{IncusError, ResourceKind};
pub use fake::{FailOn, FakeIncus};
pub use feed::{ChangeFeed, Mark, changes_state};
pub use shared::{SharedConfig, Swap, Versioned, set_shared_user_config};
pub use types::{
    ExecOutput, ExecRequest, FilePush, ImageSource, InstanceSpec, InstanceUpdate, ProfileSpec,
    RunningOperation, SNAPSHOT_PREFIX, SnapshotInfo, StateAction, StateChange,
};
use veza_model::live::{Config, Devices, LiveInstance, LiveProfile, LiveState, MARK_PROTECT};

/// Result alias for the driver.
pub type Result<T, E = IncusError> = std::result::Result<T, E>;

/// What an observation covers. Networks are optional: incusd's network endpoints are
/// slow (seconds, sometimes tens of seconds) while containers start, and the agent only
/// needs them when a manifest declares networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Also list networks (`GET /1.0/networks?recursion=1`).
    pub networks: bool,
    /// Also list the cluster's members (`GET /1.0/cluster/members?recursion=1`): only
    /// when the agent is configured for a cluster (a single host answers an error).
    pub members: bool,
}

impl Scope {
    /// Instances, profiles, networks and storage pools.
    pub const EVERYTHING: Scope = Scope { networks: true, members: false };
    /// Instances, profiles and storage pools.
    pub const WITHOUT_NETWORKS: Scope = Scope { networks: false, members: false };

    /// The same, with the cluster's members too when `on_cluster`.
    pub fn with_members(self, on_cluster: bool) -> Scope {
        Scope { members: on_cluster, ..self }
    }
}

/// Everything the agent does with Incus. See the module documentation for the rules every
/// implementation follows (ownership, protection, operation waits, ETags). `Sync`: the apply
/// engine shares its drivers across awaits.
pub trait Incus: Sync {
    /// Observes instances, profiles, networks and storage pools, one `?recursion=1` list
    /// request each.
    fn observe(&self) -> impl Future<Output = Result<LiveState>> + Send {
        self.observe_scoped(Scope::EVERYTHING)
    }

    /// Observes what `scope` asks for; what it leaves out stays empty in the result, and
    /// so do the edge and the units (other observers fill them).
    fn observe_scoped(&self, scope: Scope) -> impl Future<Output = Result<LiveState>> + Send;

    /// One instance, freshly read; `None` when it does not exist.
    fn instance(&self, name: &str) -> impl Future<Output = Result<Option<LiveInstance>>> + Send;

    /// Creates an instance (marked as owned) and, when `spec.start`, starts it in the same
    /// operation. A foreign instance of that name gives `NotOwned`, an owned one
    /// `AlreadyExists`.
    fn create_instance(&self, spec: &InstanceSpec) -> impl Future<Output = Result<()>> + Send;

    /// Replaces an owned instance's settable config, local devices and profiles
    /// (`GET` + `PUT If-Match`). Returns whether anything was written.
    fn update_instance(
        &self,
        name: &str,
        update: &InstanceUpdate,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Starts, stops or restarts an owned instance and waits for it. Idempotent: starting a
    /// running or stopping a stopped instance writes nothing; restarting a stopped instance
    /// starts it.
    fn change_state(
        &self,
        name: &str,
        change: &StateChange,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes an owned, unprotected instance, force-stopping it first if it runs. A missing
    /// instance is not an error.
    fn delete_instance(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// One profile, freshly read; `None` when it does not exist.
    fn profile(&self, name: &str) -> impl Future<Output = Result<Option<LiveProfile>>> + Send;

    /// Creates a profile (marked as owned). A foreign profile of that name gives
    /// `NotOwned`, an owned one `AlreadyExists`.
    fn create_profile(&self, spec: &ProfileSpec) -> impl Future<Output = Result<()>> + Send;

    /// Replaces an owned profile's description, config and devices (`GET` + `PUT If-Match`).
    /// Returns whether anything was written.
    fn update_profile(&self, spec: &ProfileSpec) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes an owned profile. A missing profile is not an error; one still in use fails
    /// with Incus's `Profile is currently in use`.
    fn delete_profile(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Creates a managed network (a bridge by default) carrying the ownership mark. An
    /// existing network of that name gives `AlreadyExists` (owned) or `NotOwned`.
    fn create_network(
        &self,
        name: &str,
        kind: &str,
        config: &Config,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Snapshots an owned instance as `name`, or `veza-<unix time>` (with `-2`, `-3`, … on a
    /// collision), and returns the name used.
    fn create_snapshot(
        &self,
        instance: &str,
        name: Option<&str>,
    ) -> impl Future<Output = Result<String>> + Send;

    /// The instance's snapshots, oldest first.
    fn list_snapshots(
        &self,
        instance: &str,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>>> + Send;

    /// Deletes a snapshot of an owned instance.
    fn delete_snapshot(
        &self,
        instance: &str,
        name: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Runs a command in an owned, running instance and returns its exit code and output.
    fn exec(
        &self,
        instance: &str,
        request: &ExecRequest,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Writes a file into an owned instance.
    fn push_file(&self, instance: &str, file: &FilePush)
    -> impl Future<Output = Result<()>> + Send;

    /// Reads a regular file from an instance (owned or not: reading changes nothing), up
    /// to the driver's output limit: a bigger one is [`IncusError::TooLarge`].
    fn pull_file(&self, instance: &str, path: &str)
    -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// [`Incus::pull_file`] with the limit `max` (bytes) instead of the driver's.
    fn pull_file_max(
        &self,
        instance: &str,
        path: &str,
        max: u64,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        let _ = max;
        self.pull_file(instance, path)
    }

    /// Reads a server-wide `user.*` config key (`GET /1.0`).
    fn server_user_config(&self, key: &str) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Sets (or with `None` removes) a server-wide `user.*` config key (`PATCH /1.0`).
    /// Incus 6.0 accepts `user.*` keys in the server config (verified).
    fn set_server_user_config(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Adopts an instance the agent does not own: adds `marks` (only `user.veza.*` keys,
    /// `user.veza.managed=true` among them) to its config and changes nothing else —
    /// devices, profiles, Incus's own keys and every other key are sent back as they are,
    /// with `If-Match` on the ETag just read; no restart, no snapshot, no recreate. Refused
    /// ([`IncusError::Changed`]) when its type, profiles or local devices are no longer
    /// those of `seen` (what adoption assessed), or when it is the agent's already with
    /// other marks. Returns whether anything was written (its marks already there: no).
    fn mark_instance(
        &self,
        name: &str,
        marks: &Config,
        seen: &LiveInstance,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Adopts a profile the agent does not own, as [`Incus::mark_instance`] does: its
    /// description, other config keys and devices kept, refused when its config or devices
    /// are no longer those of `seen`.
    fn mark_profile(
        &self,
        name: &str,
        marks: &Config,
        seen: &LiveProfile,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// The properties (`os`, `release`, …) of the local image an alias names; `None` when
    /// no local alias has that name.
    fn image_properties(&self, alias: &str) -> impl Future<Output = Result<Option<Config>>> + Send;

    /// The names in a directory of an instance (owned or not: reading changes nothing);
    /// `None` when it does not exist.
    fn list_files(
        &self,
        instance: &str,
        dir: &str,
    ) -> impl Future<Output = Result<Option<Vec<String>>>> + Send;

    /// Runs the one fixed command the agent runs in an instance it may not own: an HTTP
    /// `GET` of `http://127.0.0.1:<port><path>` inside it, with `curl` or busybox `wget`,
    /// printing the status line and headers (`path`: absolute, no whitespace, quotes or
    /// control characters). It reads, it changes nothing; adoption uses it to see which
    /// release a slot runs before the slot is the agent's.
    fn probe_inside(
        &self,
        instance: &str,
        port: u16,
        path: &str,
        timeout: std::time::Duration,
    ) -> impl Future<Output = Result<ExecOutput>> + Send;

    /// Waits, for at most `limit`, until no Incus operation still runs on any of
    /// `instances` — the create or start a killed agent left behind holds Incus's
    /// per-instance lock, and any change sent meanwhile fails with `Instance is busy
    /// running a "start" operation`. One `GET /1.0/operations?recursion=1`, then
    /// `GET {operation}/wait` for each one found (only `task` operations: an interactive
    /// exec or a console locks nothing and is not waited for). How an operation ended is
    /// not an error here: the caller reads the instance afresh. Returns the operations
    /// waited for; one still running at the limit is [`IncusError::Busy`].
    fn wait_for_operations(
        &self,
        instances: &[String],
        limit: std::time::Duration,
    ) -> impl Future<Output = Result<Vec<RunningOperation>>> + Send;

    /// How many writing requests (POST, PUT, PATCH, DELETE) were sent so far.
    fn api_writes(&self) -> u64;
}

/// What [`ensure_instance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The instance did not exist and was created (and started if asked).
    Created,
    /// It existed and was updated and/or started.
    Changed { updated: bool, started: bool },
    /// It already matched: nothing was written.
    Unchanged,
}

/// Converges one instance to `desired`: creates it when missing; otherwise compares its
/// settable config (plus the ownership mark), local devices and profiles and writes only
/// when they differ; and starts it when `desired.start` and it is not running. The image
/// is not compared (a different image means a new instance, the planner's call).
///
/// A second call with the same `desired` makes no API writes.
pub async fn ensure_instance<I: Incus>(incus: &I, desired: &InstanceSpec) -> Result<Ensured> {
    let Some(live) = incus.instance(&desired.name).await? else {
        incus.create_instance(desired).await?;
        return Ok(Ensured::Created);
    };
    require_owned(ResourceKind::Instance, &live.name, &live.config)?;
    let updated = if instance_matches(&live, &desired.update()) {
        false
    } else {
        incus.update_instance(&desired.name, &desired.update()).await?
    };
    let started = if desired.start && !live.is_running() {
        incus.change_state(&desired.name, &StateChange::start()).await?;
        true
    } else {
        false
    };
    Ok(if updated || started { Ensured::Changed { updated, started } } else { Ensured::Unchanged })
}

/// Converges one profile: creates it when missing, else updates it when it differs.
/// Returns whether anything was written.
pub async fn ensure_profile<I: Incus>(incus: &I, desired: &ProfileSpec) -> Result<bool> {
    match incus.profile(&desired.name).await? {
        None => incus.create_profile(desired).await.map(|()| true),
        Some(p) => {
            require_owned(ResourceKind::Profile, &p.name, &p.config)?;
            if profile_matches(&p.description, &p.config, &p.devices, desired) {
                Ok(false)
            } else {
                incus.update_profile(desired).await
            }
        }
    }
}

/// Keeps the newest `keep` of the agent's snapshots (`veza-*`) of an owned instance and
/// deletes the older ones; other snapshots are left alone. Returns the deleted names,
/// oldest first.
pub async fn prune_snapshots<I: Incus>(
    incus: &I,
    instance: &str,
    keep: usize,
) -> Result<Vec<String>> {
    let mut ours: Vec<SnapshotInfo> =
        incus.list_snapshots(instance).await?.into_iter().filter(SnapshotInfo::is_agents).collect();
    // Newest first: by parsed creation time, then by name for equal or unparsable times.
    ours.sort_by(|a, b| b.created().cmp(&a.created()).then_with(|| b.name.cmp(&a.name)));
    let mut doomed: Vec<String> = ours.into_iter().skip(keep).map(|s| s.name).collect();
    doomed.reverse();
    for name in &doomed {
        incus.delete_snapshot(instance, name).await?;
    }
    Ok(doomed)
}

/// Pushes a file, then pulls it back and compares byte for byte. Catches the silent
/// failures a push can have (an empty file written under "Success", interfaces.md §1.11).
pub async fn push_file_verified<I: Incus>(
    incus: &I,
    instance: &str,
    file: &FilePush,
) -> Result<()> {
    incus.push_file(instance, file).await?;
    if file.append {
        return Ok(());
    }
    verify_file(incus, instance, &file.path, &file.content).await
}

/// Pulls a file and fails with [`IncusError::FileMismatch`] unless it holds exactly
/// `expected`.
pub async fn verify_file<I: Incus>(
    incus: &I,
    instance: &str,
    path: &str,
    expected: &[u8],
) -> Result<()> {
    // Read no more than what must be there (one byte more shows a longer file).
    let actual = match incus.pull_file_max(instance, path, expected.len() as u64 + 1).await {
        Err(IncusError::TooLarge { limit, .. }) => {
            return Err(IncusError::TooLarge {
                what: format!(
                    "file `{path}` in instance `{instance}`, just pushed with {} bytes,",
                    expected.len()
                ),
                limit,
                hint: " (hint: something in the instance is writing to it)".to_string(),
            });
        }
        other => other?,
    };
    if actual == expected {
        return Ok(());
    }
    Err(IncusError::FileMismatch {
        instance: instance.to_string(),
        path: path.to_string(),
        expected: expected.len(),
        actual: actual.len(),
        first_difference: expected.iter().zip(&actual).position(|(a, b)| a != b),
    })
}

/// A current-thread tokio runtime with IO and timers enabled, for callers (tests, the CLI)
/// that do not run one already. The driver needs timers: `tokio::time` must be enabled on
/// whatever runtime drives it.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

// ---------------------------------------------------------------------------- shared rules
// Used by both the real client and the fake, so that they refuse exactly the same things.

/// `NotOwned` unless `config` carries the mark.
pub(crate) fn require_owned(kind: ResourceKind, name: &str, config: &Config) -> Result<()> {
    if types::is_marked(config) {
        Ok(())
    } else {
        Err(IncusError::NotOwned { kind, name: name.to_string() })
    }
}

/// What a create that finds `name` already there says: `NotOwned` when the resource is
/// not the agent's, else `AlreadyExists`.
pub(crate) fn refuse_existing(kind: ResourceKind, name: &str, config: &Config) -> Result<()> {
    require_owned(kind, name, config)?;
    Err(IncusError::AlreadyExists { kind, name: name.to_string() })
}

/// `NotOwned` or `Protected` unless the instance may be deleted.
pub(crate) fn require_deletable(name: &str, config: &Config) -> Result<()> {
    require_owned(ResourceKind::Instance, name, config)?;
    if config.get(MARK_PROTECT).is_some_and(|v| v == "true") {
        return Err(IncusError::Protected { name: name.to_string() });
    }
    Ok(())
}

/// Whether an instance already has what `update` asks for.
pub(crate) fn instance_matches(live: &LiveInstance, update: &InstanceUpdate) -> bool {
    live.settable_config() == types::with_mark(&update.config)
        && live.devices == update.devices
        && live.profiles == update.profiles
}

/// The config an instance `PUT` sends: Incus's own keys from `live`, then the desired
/// settable keys with the mark.
pub(crate) fn merged_put_config(live: &Config, desired: &Config) -> Config {
    let mut c: Config = live
        .iter()
        .filter(|(k, _)| types::is_incus_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    c.extend(types::with_mark(desired).into_iter().filter(|(k, _)| !types::is_incus_key(k)));
    c
}

/// Whether a profile already has what `spec` asks for.
pub(crate) fn profile_matches(
    description: &str,
    config: &Config,
    devices: &Devices,
    spec: &ProfileSpec,
) -> bool {
    description == spec.description
        && *config == types::with_mark(&spec.config)
        && *devices == spec.devices
}

/// Rejects names that could escape their URL path segment or that Incus would refuse
/// anyway: empty, `.`/`..`, longer than 63 bytes, or anything but ASCII letters, digits,
/// `-`, `_` and `.`.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let ok_chars =
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "." || name == ".." {
        "`.` and `..` are not names"
    } else if name.len() > 63 {
        "it is longer than 63 characters"
    } else if !ok_chars {
        "only ASCII letters, digits, `-`, `_` and `.` are allowed"
    } else {
        return Ok(());
    };
    Err(IncusError::Invalid { what, value: name.to_string(), reason })
}

/// Rejects file paths that are not absolute and normal (no `..`, no NUL, no empty path).
pub(crate) fn validate_file_path(path: &str) -> Result<()> {
    let reason = if !path.starts_with('/') {
        "it must be absolute"
    } else if path.contains('\0') {
        "it contains a NUL byte"
    } else if path.split('/').any(|c| c == "..") {
        "it must not contain `..`"
    } else if path.trim_end_matches('/').is_empty() {
        "it names the root directory"
    } else {
        return Ok(());
    };
    Err(IncusError::Invalid { what: "file path", value: path.to_string(), reason })
}

/// Rejects server config keys outside `user.*`.
pub(crate) fn validate_user_key(key: &str) -> Result<()> {
    if key.starts_with("user.") && key.len() > 5 {
        Ok(())
    } else {
        Err(IncusError::Invalid {
            what: "server config key",
            value: key.to_string(),
            reason: "only `user.*` keys may be read or set by the agent",
        })
    }
}

/// The ancestors of an absolute path, nearest first (`/a/b/c` gives `/a/b`, `/a`).
pub(crate) fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = path.trim_end_matches('/');
    while let Some((parent, _)) = p.rsplit_once('/') {
        if parent.is_empty() {
            break;
        }
        out.push(parent.to_string());
        p = parent;
    }
    out
}

/// The default snapshot name for `unix` seconds, made unique against `existing`.
pub(crate) fn snapshot_name(unix: i64, existing: &[SnapshotInfo]) -> String {
    let base = format!("{SNAPSHOT_PREFIX}{unix}");
    let taken = |n: &str| existing.iter().any(|s| s.name == n);
    if !taken(&base) {
        return base;
    }
    (2u32..).map(|i| format!("{base}-{i}")).find(|n| !taken(n)).unwrap_or(base)
}

#[cfg(test)]
mod tests;
