//! `FakeIncus`: an in-memory [`Incus`] for planner and apply tests.
//!
//! It holds an [`IncusLive`] and changes it the way incusd would, enforcing the same
//! ownership and protection rules as the real client (they share the checks). Every request
//! the real client would send is recorded as one readable line (`GET /1.0/instances/x`,
//! `PUT /1.0/instances/x`), including the fresh ownership `GET` before each write;
//! waits on the agent's own operations and exec-log fetches are not recorded. Operations
//! left running by someone else can be planted ([`FakeIncus::start_operation`],
//! [`FakeIncus::start_endless_operation`]); waiting for them is recorded. Any recorded call can be made to
//! fail with [`FakeIncus::fail_on`] (by index or by substring), once per injection; the
//! failed call changes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::error::{IncusError, ResourceKind};
use super::types::{
    Config, Devices, ExecOutput, ExecRequest, FilePush, IncusLive, InstanceSpec, InstanceStatus,
    InstanceUpdate, LiveInstance, LiveNetwork, LivePool, LiveProfile, ProfileSpec,
    RunningOperation, SnapshotInfo, StateAction, StateChange, with_mark,
};
use super::{
    Incus, Result, Scope, instance_matches, merged_put_config, profile_matches, require_deletable,
    require_owned, snapshot_name, validate_file_path, validate_name, validate_user_key,
};

/// Which recorded call an injected error hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOn {
    /// The call with this index in [`FakeIncus::calls`] (0-based, counting every call).
    Call(usize),
    /// The next call whose line contains this text (`"PUT /1.0/instances/web"`).
    Matching(String),
}

impl From<usize> for FailOn {
    fn from(i: usize) -> Self {
        FailOn::Call(i)
    }
}

impl From<&str> for FailOn {
    fn from(s: &str) -> Self {
        FailOn::Matching(s.to_string())
    }
}

impl From<String> for FailOn {
    fn from(s: String) -> Self {
        FailOn::Matching(s)
    }
}

#[derive(Debug, Default)]
struct State {
    live: IncusLive,
    calls: Vec<String>,
    failures: Vec<(FailOn, Option<IncusError>)>,
    writes: u64,
    files: BTreeMap<(String, String), Vec<u8>>,
    snapshots: BTreeMap<String, Vec<SnapshotInfo>>,
    server_config: Config,
    exec_results: VecDeque<ExecOutput>,
    execs: Vec<(String, ExecRequest)>,
    clock: i64,
    operations: Vec<FakeOperation>,
}

/// An operation someone else left running on an instance.
#[derive(Debug, Clone)]
struct FakeOperation {
    op: RunningOperation,
    /// Still running however long the caller waits.
    endless: bool,
}

/// An in-memory Incus. See the module documentation.
#[derive(Debug, Default)]
pub struct FakeIncus {
    state: Mutex<State>,
}

impl State {
    /// Records a call and fires a matching injected failure.
    fn record(&mut self, call: String, write: bool) -> Result<()> {
        let index = self.calls.len();
        if write {
            self.writes += 1;
        }
        let hit = self.failures.iter_mut().find(|(on, err)| {
            err.is_some()
                && match on {
                    FailOn::Call(i) => *i == index,
                    FailOn::Matching(pat) => call.contains(pat.as_str()),
                }
        });
        let injected = hit.and_then(|(_, err)| err.take());
        self.calls.push(call);
        match injected {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn get_instance(&mut self, name: &str) -> Result<Option<LiveInstance>> {
        validate_name("instance name", name)?;
        self.record(format!("GET /1.0/instances/{name}"), false)?;
        Ok(self.live.instances.get(name).cloned())
    }

    fn owned_instance(&mut self, name: &str) -> Result<LiveInstance> {
        let inst = self.get_instance(name)?.ok_or_else(|| IncusError::NotFound {
            kind: ResourceKind::Instance,
            name: name.to_string(),
            instance: None,
        })?;
        require_owned(ResourceKind::Instance, name, &inst.config)?;
        Ok(inst)
    }

    fn get_profile(&mut self, name: &str) -> Result<Option<LiveProfile>> {
        validate_name("profile name", name)?;
        self.record(format!("GET /1.0/profiles/{name}"), false)?;
        Ok(self.live.profiles.get(name).cloned())
    }

    /// Recomputes what incusd derives: expanded devices and profiles' `used_by`.
    fn refresh(&mut self) {
        let profiles = self.live.profiles.clone();
        for inst in self.live.instances.values_mut() {
            inst.expanded_devices = expand(&profiles, &inst.profiles, &inst.devices);
        }
        for p in self.live.profiles.values_mut() {
            p.used_by = self
                .live
                .instances
                .values()
                .filter(|i| i.profiles.contains(&p.name))
                .map(|i| format!("/1.0/instances/{}", i.name))
                .collect();
        }
    }

    fn set_status(&mut self, name: &str, status: InstanceStatus) {
        if let Some(i) = self.live.instances.get_mut(name) {
            i.status = status;
        }
    }

    fn check_profiles_exist(&self, profiles: &[String]) -> Result<()> {
        match profiles.iter().find(|p| !self.live.profiles.contains_key(*p)) {
            Some(p) => Err(IncusError::Api {
                method: "POST".to_string(),
                path: "/1.0/instances".to_string(),
                status: 404,
                message: format!("Requested profile \"{p}\" doesn't exist"),
            }),
            None => Ok(()),
        }
    }
}

fn expand(profiles: &BTreeMap<String, LiveProfile>, names: &[String], local: &Devices) -> Devices {
    let mut devices = Devices::new();
    for p in names.iter().filter_map(|n| profiles.get(n)) {
        devices.extend(p.devices.clone());
    }
    devices.extend(local.clone());
    devices
}

fn has_root_disk(devices: &Devices) -> bool {
    devices.values().any(|d| {
        d.get("type").is_some_and(|t| t == "disk") && d.get("path").is_some_and(|p| p == "/")
    })
}

impl FakeIncus {
    /// A fake holding `live`.
    pub fn new(live: IncusLive) -> FakeIncus {
        let mut state = State { live, clock: 1_800_000_000, ..State::default() };
        state.refresh();
        FakeIncus { state: Mutex::new(state) }
    }

    /// A fake shaped like the test host: a `dir` pool `default` and a `default` profile
    /// with a root disk on it, no instances.
    pub fn with_default_host() -> FakeIncus {
        let mut live = IncusLive::default();
        live.pools.insert(
            "default".to_string(),
            LivePool {
                name: "default".to_string(),
                driver: "dir".to_string(),
                status: "Created".to_string(),
                description: String::new(),
                config: Config::new(),
            },
        );
        let root: Config = [("type", "disk"), ("path", "/"), ("pool", "default")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        live.profiles.insert(
            "default".to_string(),
            LiveProfile {
                name: "default".to_string(),
                description: "Default Incus profile".to_string(),
                config: Config::new(),
                devices: [("root".to_string(), root)].into_iter().collect(),
                used_by: Vec::new(),
            },
        );
        FakeIncus::new(live)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The calls so far, clearing the record.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The writing calls so far (POST, PUT, PATCH, DELETE), in order.
    pub fn write_calls(&self) -> Vec<String> {
        self.lock()
            .calls
            .iter()
            .filter(|c| !c.starts_with("GET ") && !c.starts_with("HEAD "))
            .cloned()
            .collect()
    }

    /// The current state.
    pub fn live(&self) -> IncusLive {
        self.lock().live.clone()
    }

    /// Replaces the state (e.g. to simulate someone else's change).
    pub fn set_live(&self, live: IncusLive) {
        let mut s = self.lock();
        s.live = live;
        s.refresh();
    }

    /// Makes a call fail with `error`: the call with index `on`, or the next call whose
    /// line contains `on`. Each injection fires once.
    pub fn fail_on(&self, on: impl Into<FailOn>, error: IncusError) {
        self.lock().failures.push((on.into(), Some(error)));
    }

    /// Queues the result of the next `exec` (otherwise exit 0 with no output).
    pub fn push_exec_result(&self, output: ExecOutput) {
        self.lock().exec_results.push_back(output);
    }

    /// The commands run so far, with their instance.
    pub fn execs(&self) -> Vec<(String, ExecRequest)> {
        self.lock().execs.clone()
    }

    /// A file's content as pushed (or set).
    pub fn file(&self, instance: &str, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(&(instance.to_string(), path.to_string())).cloned()
    }

    /// Puts a file in place without a recorded call (e.g. a file the image ships).
    pub fn set_file(&self, instance: &str, path: &str, content: impl Into<Vec<u8>>) {
        self.lock().files.insert((instance.to_string(), path.to_string()), content.into());
    }

    /// Leaves an operation running on `instance` (as a killed agent's create would), one
    /// that ends when waited for. Returns its path (`/1.0/operations/…`).
    pub fn start_operation(&self, instance: &str, description: &str) -> String {
        self.add_operation(instance, description, false)
    }

    /// Leaves an operation running on `instance` that never ends: waiting for it runs into
    /// the caller's limit ([`IncusError::Busy`]). Returns its path.
    pub fn start_endless_operation(&self, instance: &str, description: &str) -> String {
        self.add_operation(instance, description, true)
    }

    fn add_operation(&self, instance: &str, description: &str, endless: bool) -> String {
        let mut s = self.lock();
        let operation = format!("/1.0/operations/fake-{}", s.operations.len() + 1);
        s.operations.push(FakeOperation {
            op: RunningOperation {
                operation: operation.clone(),
                description: description.to_string(),
                instance: instance.to_string(),
            },
            endless,
        });
        operation
    }

    /// Sets the clock (unix seconds) used for snapshot names and times; each snapshot
    /// advances it by one second.
    pub fn set_clock(&self, unix: i64) {
        self.lock().clock = unix;
    }
}

impl Incus for FakeIncus {
    async fn observe_scoped(&self, scope: Scope) -> Result<IncusLive> {
        let mut s = self.lock();
        for what in ["instances", "profiles", "networks", "storage-pools"] {
            if what != "networks" || scope.networks {
                s.record(format!("GET /1.0/{what}?recursion=1"), false)?;
            }
        }
        let mut live = s.live.clone();
        if !scope.networks {
            live.networks.clear();
        }
        Ok(live)
    }

    async fn instance(&self, name: &str) -> Result<Option<LiveInstance>> {
        self.lock().get_instance(name)
    }

    async fn create_instance(&self, spec: &InstanceSpec) -> Result<()> {
        let mut s = self.lock();
        if let Some(existing) = s.get_instance(&spec.name)? {
            require_owned(ResourceKind::Instance, &spec.name, &existing.config)?;
            return Err(IncusError::AlreadyExists {
                kind: ResourceKind::Instance,
                name: spec.name.clone(),
            });
        }
        s.record("POST /1.0/instances".to_string(), true)?;
        s.check_profiles_exist(&spec.profiles)?;
        let expanded = expand(&s.live.profiles, &spec.profiles, &spec.devices);
        if !has_root_disk(&expanded) {
            return Err(IncusError::Operation {
                method: "POST".to_string(),
                path: "/1.0/instances".to_string(),
                operation: "/1.0/operations/fake".to_string(),
                code: 500,
                message: "Failed initializing instance: Invalid devices: Failed detecting root disk device: No root device could be found".to_string(),
                hint: String::new(),
            });
        }
        let mut config = with_mark(&spec.config);
        config.insert("volatile.base_image".to_string(), "fake".to_string());
        let inst = LiveInstance {
            name: spec.name.clone(),
            kind: spec.kind,
            status: if spec.start { InstanceStatus::Running } else { InstanceStatus::Stopped },
            config,
            devices: spec.devices.clone(),
            expanded_devices: expanded,
            profiles: spec.profiles.clone(),
            description: String::new(),
        };
        s.live.instances.insert(spec.name.clone(), inst);
        s.refresh();
        Ok(())
    }

    async fn update_instance(&self, name: &str, update: &InstanceUpdate) -> Result<bool> {
        let mut s = self.lock();
        let inst = s.owned_instance(name)?;
        if instance_matches(&inst, update) {
            return Ok(false);
        }
        s.record(format!("PUT /1.0/instances/{name}"), true)?;
        s.check_profiles_exist(&update.profiles)?;
        let config = merged_put_config(&inst.config, &update.config);
        if let Some(i) = s.live.instances.get_mut(name) {
            i.config = config;
            i.devices = update.devices.clone();
            i.profiles = update.profiles.clone();
        }
        s.refresh();
        Ok(true)
    }

    async fn change_state(&self, name: &str, change: &StateChange) -> Result<()> {
        let mut s = self.lock();
        let inst = s.owned_instance(name)?;
        let target = match (change.action, inst.is_running()) {
            (StateAction::Start, true) => return Ok(()),
            (StateAction::Stop, false) if inst.status == InstanceStatus::Stopped => return Ok(()),
            (StateAction::Stop, _) => InstanceStatus::Stopped,
            (StateAction::Start | StateAction::Restart, _) => InstanceStatus::Running,
        };
        s.record(format!("PUT /1.0/instances/{name}/state"), true)?;
        s.set_status(name, target);
        Ok(())
    }

    async fn delete_instance(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        let Some(inst) = s.get_instance(name)? else { return Ok(()) };
        require_deletable(name, &inst.config)?;
        if inst.status != InstanceStatus::Stopped {
            s.record(format!("PUT /1.0/instances/{name}/state"), true)?;
            s.set_status(name, InstanceStatus::Stopped);
        }
        s.record(format!("DELETE /1.0/instances/{name}"), true)?;
        s.live.instances.remove(name);
        s.snapshots.remove(name);
        s.files.retain(|(i, _), _| i != name);
        s.refresh();
        Ok(())
    }

    async fn profile(&self, name: &str) -> Result<Option<LiveProfile>> {
        self.lock().get_profile(name)
    }

    async fn create_profile(&self, spec: &ProfileSpec) -> Result<()> {
        let mut s = self.lock();
        if let Some(existing) = s.get_profile(&spec.name)? {
            require_owned(ResourceKind::Profile, &spec.name, &existing.config)?;
            return Err(IncusError::AlreadyExists {
                kind: ResourceKind::Profile,
                name: spec.name.clone(),
            });
        }
        s.record("POST /1.0/profiles".to_string(), true)?;
        s.live.profiles.insert(
            spec.name.clone(),
            LiveProfile {
                name: spec.name.clone(),
                description: spec.description.clone(),
                config: with_mark(&spec.config),
                devices: spec.devices.clone(),
                used_by: Vec::new(),
            },
        );
        s.refresh();
        Ok(())
    }

    async fn create_network(&self, name: &str, kind: &str, config: &Config) -> Result<()> {
        let mut s = self.lock();
        if let Some(existing) = s.live.networks.get(name) {
            require_owned(ResourceKind::Network, name, &existing.config)?;
            return Err(IncusError::AlreadyExists {
                kind: ResourceKind::Network,
                name: name.to_string(),
            });
        }
        s.record("POST /1.0/networks".to_string(), true)?;
        s.live.networks.insert(
            name.to_string(),
            LiveNetwork {
                name: name.to_string(),
                kind: kind.to_string(),
                managed: true,
                status: "Created".to_string(),
                description: String::new(),
                config: with_mark(config),
            },
        );
        Ok(())
    }

    async fn update_profile(&self, spec: &ProfileSpec) -> Result<bool> {
        let mut s = self.lock();
        let p = s.get_profile(&spec.name)?.ok_or_else(|| IncusError::NotFound {
            kind: ResourceKind::Profile,
            name: spec.name.clone(),
            instance: None,
        })?;
        require_owned(ResourceKind::Profile, &spec.name, &p.config)?;
        if profile_matches(&p.description, &p.config, &p.devices, spec) {
            return Ok(false);
        }
        s.record(format!("PUT /1.0/profiles/{}", spec.name), true)?;
        if let Some(p) = s.live.profiles.get_mut(&spec.name) {
            p.description = spec.description.clone();
            p.config = with_mark(&spec.config);
            p.devices = spec.devices.clone();
        }
        s.refresh();
        Ok(true)
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        let mut s = self.lock();
        let Some(p) = s.get_profile(name)? else { return Ok(()) };
        require_owned(ResourceKind::Profile, name, &p.config)?;
        s.record(format!("DELETE /1.0/profiles/{name}"), true)?;
        if !p.used_by.is_empty() {
            return Err(IncusError::Api {
                method: "DELETE".to_string(),
                path: format!("/1.0/profiles/{name}"),
                status: 400,
                message: "Profile is currently in use".to_string(),
            });
        }
        s.live.profiles.remove(name);
        Ok(())
    }

    async fn create_snapshot(&self, instance: &str, name: Option<&str>) -> Result<String> {
        let mut s = self.lock();
        s.owned_instance(instance)?;
        let name = match name {
            Some(n) => {
                validate_name("snapshot name", n)?;
                n.to_string()
            }
            None => {
                s.record(format!("GET /1.0/instances/{instance}/snapshots?recursion=1"), false)?;
                let existing = s.snapshots.get(instance).cloned().unwrap_or_default();
                snapshot_name(s.clock, &existing)
            }
        };
        s.record(format!("POST /1.0/instances/{instance}/snapshots"), true)?;
        if s.snapshots.get(instance).is_some_and(|v| v.iter().any(|x| x.name == name)) {
            return Err(IncusError::Operation {
                method: "POST".to_string(),
                path: format!("/1.0/instances/{instance}/snapshots"),
                operation: "/1.0/operations/fake".to_string(),
                code: 500,
                message: format!("Snapshot \"{name}\" already exists"),
                hint: String::new(),
            });
        }
        let created_at = chrono::DateTime::from_timestamp(s.clock, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
            .unwrap_or_default();
        s.clock += 1;
        s.snapshots.entry(instance.to_string()).or_default().push(SnapshotInfo {
            name: name.clone(),
            created_at,
            stateful: false,
        });
        Ok(name)
    }

    async fn list_snapshots(&self, instance: &str) -> Result<Vec<SnapshotInfo>> {
        let mut s = self.lock();
        validate_name("instance name", instance)?;
        s.record(format!("GET /1.0/instances/{instance}/snapshots?recursion=1"), false)?;
        if !s.live.instances.contains_key(instance) {
            return Err(IncusError::NotFound {
                kind: ResourceKind::Instance,
                name: instance.to_string(),
                instance: None,
            });
        }
        Ok(s.snapshots.get(instance).cloned().unwrap_or_default())
    }

    async fn delete_snapshot(&self, instance: &str, name: &str) -> Result<()> {
        let mut s = self.lock();
        validate_name("snapshot name", name)?;
        s.owned_instance(instance)?;
        s.record(format!("DELETE /1.0/instances/{instance}/snapshots/{name}"), true)?;
        let snaps = s.snapshots.entry(instance.to_string()).or_default();
        let before = snaps.len();
        snaps.retain(|x| x.name != name);
        if snaps.len() == before {
            return Err(IncusError::NotFound {
                kind: ResourceKind::Snapshot,
                name: name.to_string(),
                instance: Some(instance.to_string()),
            });
        }
        Ok(())
    }

    async fn exec(&self, instance: &str, request: &ExecRequest) -> Result<ExecOutput> {
        let mut s = self.lock();
        if request.command.is_empty() {
            return Err(IncusError::Invalid {
                what: "command",
                value: String::new(),
                reason: "it is empty",
            });
        }
        let inst = s.owned_instance(instance)?;
        s.record(format!("POST /1.0/instances/{instance}/exec"), true)?;
        if !inst.is_running() {
            return Err(IncusError::Api {
                method: "POST".to_string(),
                path: format!("/1.0/instances/{instance}/exec"),
                status: 400,
                message: "Instance is not running".to_string(),
            });
        }
        s.execs.push((instance.to_string(), request.clone()));
        Ok(s.exec_results.pop_front().unwrap_or_default())
    }

    async fn push_file(&self, instance: &str, file: &FilePush) -> Result<()> {
        let mut s = self.lock();
        validate_file_path(&file.path)?;
        s.owned_instance(instance)?;
        s.record(format!("POST /1.0/instances/{instance}/files?path={}", file.path), true)?;
        let entry = s.files.entry((instance.to_string(), file.path.clone())).or_default();
        if !file.append {
            entry.clear();
        }
        entry.extend_from_slice(&file.content);
        Ok(())
    }

    async fn pull_file(&self, instance: &str, path: &str) -> Result<Vec<u8>> {
        let mut s = self.lock();
        validate_name("instance name", instance)?;
        validate_file_path(path)?;
        s.record(format!("GET /1.0/instances/{instance}/files?path={path}"), false)?;
        s.files.get(&(instance.to_string(), path.to_string())).cloned().ok_or_else(|| {
            IncusError::NotFound {
                kind: ResourceKind::File,
                name: path.to_string(),
                instance: Some(instance.to_string()),
            }
        })
    }

    async fn server_user_config(&self, key: &str) -> Result<Option<String>> {
        let mut s = self.lock();
        validate_user_key(key)?;
        s.record("GET /1.0".to_string(), false)?;
        Ok(s.server_config.get(key).cloned())
    }

    async fn set_server_user_config(&self, key: &str, value: Option<&str>) -> Result<()> {
        let mut s = self.lock();
        validate_user_key(key)?;
        s.record("GET /1.0".to_string(), false)?;
        if s.server_config.get(key).map(String::as_str) == value {
            return Ok(());
        }
        s.record("PATCH /1.0".to_string(), true)?;
        match value {
            Some(v) => s.server_config.insert(key.to_string(), v.to_string()),
            None => s.server_config.remove(key),
        };
        Ok(())
    }

    async fn wait_for_operations(
        &self,
        instances: &[String],
        limit: std::time::Duration,
    ) -> Result<Vec<RunningOperation>> {
        let mut s = self.lock();
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        s.record("GET /1.0/operations?recursion=1".to_string(), false)?;
        let running: Vec<FakeOperation> =
            s.operations.iter().filter(|o| instances.contains(&o.op.instance)).cloned().collect();
        for o in &running {
            s.record(format!("GET {}/wait", o.op.operation), false)?;
            if o.endless {
                return Err(IncusError::Busy {
                    instance: o.op.instance.clone(),
                    operation: o.op.operation.clone(),
                    description: o.op.description.clone(),
                    waited: limit,
                });
            }
            s.operations.retain(|x| x.op.operation != o.op.operation);
        }
        Ok(running.into_iter().map(|o| o.op).collect())
    }

    fn api_writes(&self) -> u64 {
        self.lock().writes
    }
}
