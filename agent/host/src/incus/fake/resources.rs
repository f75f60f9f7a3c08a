//! The fake's [`Incus`] behaviour: each call recorded as the request the real client
//! would send, then applied to the in-memory state the way incusd would, with the same
//! ownership and protection checks.

use super::super::error::{IncusError, ResourceKind};
use super::super::types::{
    Config, ExecOutput, ExecRequest, FilePush, InstanceSpec, InstanceStatus, InstanceUpdate,
    LiveInstance, LiveNetwork, LiveProfile, LiveState, ProfileSpec, RunningOperation, SnapshotInfo,
    StateAction, StateChange, with_mark,
};
use super::super::{
    Incus, Result, Scope, instance_changes, instance_matches, merged_put_config, profile_changes,
    profile_matches, require_deletable, require_owned, snapshot_name, validate_file_path,
    validate_marks, validate_name, validate_probe_path, validate_user_key,
};
use super::{FakeIncus, FakeOperation, expand, has_root_disk};

impl Incus for FakeIncus {
    async fn observe_scoped(&self, scope: Scope) -> Result<LiveState> {
        let mut s = self.state.lock();
        for what in ["instances", "profiles", "networks", "storage-pools"] {
            if what != "networks" || scope.networks {
                s.record(format!("GET /1.0/{what}?recursion=1"), false)?;
            }
        }
        if scope.members {
            s.record("GET /1.0/cluster/members?recursion=1".to_string(), false)?;
        }
        let mut live = s.live.clone();
        if !scope.networks {
            live.networks.clear();
        }
        if !scope.members {
            live.members.clear();
        }
        Ok(live)
    }

    async fn instance(&self, name: &str) -> Result<Option<LiveInstance>> {
        self.state.lock().get_instance(name)
    }

    async fn create_instance(&self, spec: &InstanceSpec) -> Result<()> {
        let mut s = self.state.lock();
        let existing = s.get_instance(&spec.name)?.map(|i| i.config);
        s.begin_create(ResourceKind::Instance, &spec.name, existing, "instances")?;
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
        if let Some(target) = &spec.target {
            // What incusd answers for a member it cannot place on.
            let refused = match s.live.members.get(target) {
                _ if s.live.members.is_empty() => Some("This server is not clustered".to_string()),
                None => {
                    Some(format!("Failed to get cluster member: Member \"{target}\" not found"))
                }
                Some(m) if !m.is_online() => {
                    Some(format!("Target cluster member {target:?} is offline"))
                }
                Some(_) => None,
            };
            if let Some(message) = refused {
                return Err(IncusError::Operation {
                    method: "POST".to_string(),
                    path: format!("/1.0/instances?target={target}"),
                    operation: "/1.0/operations/fake".to_string(),
                    code: 400,
                    message,
                    hint: String::new(),
                });
            }
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
            location: spec.target.clone(),
        };
        s.live.instances.insert(spec.name.clone(), inst);
        s.refresh();
        Ok(())
    }

    async fn update_instance(&self, name: &str, update: &InstanceUpdate) -> Result<bool> {
        let mut s = self.state.lock();
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
        let mut s = self.state.lock();
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
        let mut s = self.state.lock();
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
        self.state.lock().get_profile(name)
    }

    async fn create_profile(&self, spec: &ProfileSpec) -> Result<()> {
        let mut s = self.state.lock();
        let existing = s.get_profile(&spec.name)?.map(|p| p.config);
        s.begin_create(ResourceKind::Profile, &spec.name, existing, "profiles")?;
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
        let mut s = self.state.lock();
        let existing = s.live.networks.get(name).map(|n| n.config.clone());
        s.begin_create(ResourceKind::Network, name, existing, "networks")?;
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
        let mut s = self.state.lock();
        let p = s
            .get_profile(&spec.name)?
            .ok_or_else(|| IncusError::not_found(ResourceKind::Profile, &spec.name))?;
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
        let mut s = self.state.lock();
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
        let mut s = self.state.lock();
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
        let mut s = self.state.lock();
        validate_name("instance name", instance)?;
        s.record(format!("GET /1.0/instances/{instance}/snapshots?recursion=1"), false)?;
        if !s.live.instances.contains_key(instance) {
            return Err(IncusError::not_found(ResourceKind::Instance, instance));
        }
        Ok(s.snapshots.get(instance).cloned().unwrap_or_default())
    }

    async fn delete_snapshot(&self, instance: &str, name: &str) -> Result<()> {
        let mut s = self.state.lock();
        validate_name("snapshot name", name)?;
        s.owned_instance(instance)?;
        s.record(format!("DELETE /1.0/instances/{instance}/snapshots/{name}"), true)?;
        let snaps = s.snapshots.entry(instance.to_string()).or_default();
        let before = snaps.len();
        snaps.retain(|x| x.name != name);
        if snaps.len() == before {
            return Err(IncusError::not_found_in(ResourceKind::Snapshot, name, instance));
        }
        Ok(())
    }

    async fn exec(&self, instance: &str, request: &ExecRequest) -> Result<ExecOutput> {
        let mut s = self.state.lock();
        if request.command.is_empty() {
            return Err(IncusError::Invalid {
                what: "command",
                value: String::new(),
                reason: "it is empty",
            });
        }
        let inst = s.owned_instance(instance)?;
        s.begin_exec(instance, &inst)?;
        s.execs.push((instance.to_string(), request.clone()));
        Ok(s.exec_results.pop_front().unwrap_or_default())
    }

    async fn push_file(&self, instance: &str, file: &FilePush) -> Result<()> {
        let mut s = self.state.lock();
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
        let mut s = self.state.lock();
        validate_name("instance name", instance)?;
        validate_file_path(path)?;
        s.record(format!("GET /1.0/instances/{instance}/files?path={path}"), false)?;
        s.files
            .get(&(instance.to_string(), path.to_string()))
            .cloned()
            .ok_or_else(|| IncusError::not_found_in(ResourceKind::File, path, instance))
    }

    async fn server_user_config(&self, key: &str) -> Result<Option<String>> {
        let mut s = self.state.lock();
        validate_user_key(key)?;
        s.record("GET /1.0".to_string(), false)?;
        Ok(s.server_config.get(key).cloned())
    }

    async fn set_server_user_config(&self, key: &str, value: Option<&str>) -> Result<()> {
        let mut s = self.state.lock();
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
        let mut s = self.state.lock();
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

    async fn mark_instance(&self, name: &str, marks: &Config, seen: &LiveInstance) -> Result<bool> {
        let mut s = self.state.lock();
        validate_marks(marks)?;
        let now = s.get_instance(name)?.map(|i| (instance_changes(&i, seen), i.config));
        s.write_marks(ResourceKind::Instance, name, marks, now, |live| {
            live.instances.get_mut(name).map(|i| &mut i.config)
        })
    }

    async fn mark_profile(&self, name: &str, marks: &Config, seen: &LiveProfile) -> Result<bool> {
        let mut s = self.state.lock();
        validate_marks(marks)?;
        let now = s.get_profile(name)?.map(|p| (profile_changes(&p, seen), p.config));
        s.write_marks(ResourceKind::Profile, name, marks, now, |live| {
            live.profiles.get_mut(name).map(|p| &mut p.config)
        })
    }

    async fn image_properties(&self, alias: &str) -> Result<Option<Config>> {
        let mut s = self.state.lock();
        s.record(format!("GET /1.0/images/aliases/{alias}"), false)?;
        Ok(s.images.get(alias).cloned())
    }

    async fn list_files(&self, instance: &str, dir: &str) -> Result<Option<Vec<String>>> {
        let mut s = self.state.lock();
        validate_name("instance name", instance)?;
        validate_file_path(dir)?;
        s.record(format!("GET /1.0/instances/{instance}/files?path={dir}"), false)?;
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        let names: Vec<String> = s
            .files
            .keys()
            .filter(|(i, _)| i == instance)
            .filter_map(|(_, p)| p.strip_prefix(&prefix))
            .filter_map(|rest| rest.split('/').next())
            .map(str::to_string)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok((!names.is_empty()).then_some(names))
    }

    async fn probe_inside(
        &self,
        instance: &str,
        _port: u16,
        path: &str,
        _timeout: std::time::Duration,
    ) -> Result<ExecOutput> {
        let mut s = self.state.lock();
        validate_name("instance name", instance)?;
        validate_probe_path(path)?;
        let inst = s
            .get_instance(instance)?
            .ok_or_else(|| IncusError::not_found(ResourceKind::Instance, instance))?;
        s.begin_exec(instance, &inst)?;
        Ok(s.probe_answers.get(instance).cloned().unwrap_or_default())
    }

    fn api_writes(&self) -> u64 {
        self.state.lock().writes
    }
}
