//! `FakeIncus`: an in-memory [`Incus`](super::Incus) for planner and apply tests.
//!
//! It holds an [`LiveState`] and changes it the way incusd would, enforcing the same
//! ownership and protection rules as the real client (they share the checks). Every request
//! the real client would send is recorded as one readable line (`GET /1.0/instances/x`,
//! `PUT /1.0/instances/x`), including the fresh ownership `GET` before each write;
//! waits on the agent's own operations and exec-log fetches are not recorded. Operations
//! left running by someone else can be planted ([`FakeIncus::start_operation`],
//! [`FakeIncus::start_endless_operation`]); waiting for them is recorded. Any recorded call can be made to
//! fail with [`FakeIncus::fail_on`] (by index or by substring), once per injection; the
//! failed call changes nothing.
//!
//! This file holds the state and the test-facing API; `resources` implements the trait.

use std::collections::{BTreeMap, VecDeque};

use super::error::{IncusError, ResourceKind};
use super::types::{
    Config, Devices, ExecOutput, ExecRequest, InstanceStatus, LiveInstance, LivePool, LiveProfile,
    LiveState, RunningOperation, SnapshotInfo,
};
use super::{Result, adoption_writes, refuse_existing, require_owned, validate_name};
use crate::fake_state::FakeState;

mod resources;
mod shared;

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

#[derive(Debug, Default)]
struct State {
    live: LiveState,
    calls: Vec<String>,
    failures: Vec<(FailOn, Option<IncusError>)>,
    writes: u64,
    files: BTreeMap<(String, String), Vec<u8>>,
    snapshots: BTreeMap<String, Vec<SnapshotInfo>>,
    server_config: Config,
    /// The shared (project) config and its ETag, raised by every write.
    project_config: Config,
    project_etag: u64,
    /// A rival's write that lands right after the next successful swap of its key.
    swap_rival: Option<(String, String)>,
    exec_results: VecDeque<ExecOutput>,
    images: BTreeMap<String, Config>,
    probe_answers: BTreeMap<String, ExecOutput>,
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
    state: FakeState<State>,
}

impl State {
    /// The start of every create: `NotOwned` or `AlreadyExists` when the resource is
    /// already there (`existing`: its config), else `POST /1.0/<collection>` recorded.
    fn begin_create(
        &mut self,
        kind: ResourceKind,
        name: &str,
        existing: Option<Config>,
        collection: &str,
    ) -> Result<()> {
        if let Some(config) = existing {
            return refuse_existing(kind, name, &config);
        }
        self.record(format!("POST /1.0/{collection}"), true)
    }

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
        let inst = self
            .get_instance(name)?
            .ok_or_else(|| IncusError::not_found(ResourceKind::Instance, name))?;
        require_owned(ResourceKind::Instance, name, &inst.config)?;
        Ok(inst)
    }

    fn get_profile(&mut self, name: &str) -> Result<Option<LiveProfile>> {
        validate_name("profile name", name)?;
        self.record(format!("GET /1.0/profiles/{name}"), false)?;
        Ok(self.live.profiles.get(name).cloned())
    }

    /// The start of every exec in `instance` (`inst`, as just read): `POST …/exec`
    /// recorded, refused (as incusd does) when the instance is not running.
    fn begin_exec(&mut self, instance: &str, inst: &LiveInstance) -> Result<()> {
        let path = format!("/1.0/instances/{instance}/exec");
        self.record(format!("POST {path}"), true)?;
        if inst.is_running() {
            return Ok(());
        }
        Err(IncusError::Api {
            method: "POST".to_string(),
            path,
            status: 400,
            message: "Instance is not running".to_string(),
        })
    }

    /// Adoption's marking write, the same for instances and profiles: `now` is the
    /// resource as read just before (what changed since it was assessed, its config),
    /// `config` finds its config in the state to add the marks to. `Ok(false)` when the
    /// marks are already there (nothing recorded past the read).
    fn write_marks(
        &mut self,
        kind: ResourceKind,
        name: &str,
        marks: &Config,
        now: Option<(Vec<String>, Config)>,
        config: impl FnOnce(&mut LiveState) -> Option<&mut Config>,
    ) -> Result<bool> {
        let (changes, current) = now.ok_or_else(|| IncusError::not_found(kind, name))?;
        if !adoption_writes(kind, name, &current, marks, changes)? {
            return Ok(false);
        }
        let collection = if kind == ResourceKind::Instance { "instances" } else { "profiles" };
        self.record(format!("PUT /1.0/{collection}/{name}"), true)?;
        if let Some(c) = config(&mut self.live) {
            c.extend(marks.clone());
        }
        Ok(true)
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
    pub fn new(live: LiveState) -> FakeIncus {
        let mut state = State { live, clock: 1_800_000_000, ..State::default() };
        state.refresh();
        FakeIncus { state: FakeState::new(state) }
    }

    /// A fake shaped like the test host: a `dir` pool `default` and a `default` profile
    /// with a root disk on it, no instances.
    pub fn with_default_host() -> FakeIncus {
        let mut live = LiveState::default();
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

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().calls.clone()
    }

    /// The calls so far, clearing the record.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().calls)
    }

    /// The writing calls so far (POST, PUT, PATCH, DELETE), in order.
    pub fn write_calls(&self) -> Vec<String> {
        self.state
            .lock()
            .calls
            .iter()
            .filter(|c| !c.starts_with("GET ") && !c.starts_with("HEAD "))
            .cloned()
            .collect()
    }

    /// The current state.
    pub fn live(&self) -> LiveState {
        self.state.lock().live.clone()
    }

    /// Replaces the state (e.g. to simulate someone else's change).
    pub fn set_live(&self, live: LiveState) {
        let mut s = self.state.lock();
        s.live = live;
        s.refresh();
    }

    /// Makes a call fail with `error`: the call with index `on`, or the next call whose
    /// line contains `on`. Each injection fires once.
    pub fn fail_on(&self, on: impl Into<FailOn>, error: IncusError) {
        self.state.lock().failures.push((on.into(), Some(error)));
    }

    /// Queues the result of the next `exec` (otherwise exit 0 with no output).
    pub fn push_exec_result(&self, output: ExecOutput) {
        self.state.lock().exec_results.push_back(output);
    }

    /// Makes `alias` a local image with `properties`.
    pub fn set_image(&self, alias: &str, properties: Config) {
        self.state.lock().images.insert(alias.to_string(), properties);
    }

    /// What the fixed probe inside `instance` prints (otherwise nothing: no answer).
    pub fn set_probe_answer(&self, instance: &str, output: ExecOutput) {
        self.state.lock().probe_answers.insert(instance.to_string(), output);
    }

    /// The commands run so far, with their instance.
    pub fn execs(&self) -> Vec<(String, ExecRequest)> {
        self.state.lock().execs.clone()
    }

    /// A file's content as pushed (or set).
    pub fn file(&self, instance: &str, path: &str) -> Option<Vec<u8>> {
        self.state.lock().files.get(&(instance.to_string(), path.to_string())).cloned()
    }

    /// Puts a file in place without a recorded call (e.g. a file the image ships).
    pub fn set_file(&self, instance: &str, path: &str, content: impl Into<Vec<u8>>) {
        self.state.lock().files.insert((instance.to_string(), path.to_string()), content.into());
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
        let mut s = self.state.lock();
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
        self.state.lock().clock = unix;
    }
}
