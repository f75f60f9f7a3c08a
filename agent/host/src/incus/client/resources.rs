//! The resources of the [`Incus`] trait over the REST API: instances, profiles,
//! networks, snapshots, exec, files, server config and running operations.

use std::time::{Duration, Instant};

use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::super::envelope::{self, ReplyError};
use super::super::error::{IncusError, ResourceKind};
use super::super::types::{
    Config, ExecOutput, ExecRequest, FilePush, InstanceSpec, InstanceUpdate, LiveInstance,
    LiveNetwork, LivePool, LiveProfile, LiveState, ProfileSpec, RunningOperation, SnapshotInfo,
    StateAction, StateChange, wire, with_mark,
};
use super::super::{
    Incus, Result, Scope, instance_matches, merged_put_config, probe_command, profile_matches,
    refuse_existing, require_deletable, require_owned, snapshot_name, validate_file_path,
    validate_name, validate_probe_path, validate_user_key,
};
use super::{IncusClient, Tagged, file_headers, files_path, unix_now};

impl IncusClient {
    pub(super) async fn get_instance(&self, name: &str) -> Result<Option<Tagged<wire::Instance>>> {
        validate_name("instance name", name)?;
        self.get_with_etag(&format!("/1.0/instances/{name}")).await
    }

    /// A read-modify-write under `If-Match`: `desired` reads the resource afresh and gives
    /// the body to `PUT` with the ETag it read, or `None` when it already matches (no
    /// write: `Ok(false)`). A 412 means someone else wrote in between: read and try
    /// again, up to `etag_attempts` times, then [`IncusError::Conflict`].
    pub(super) async fn put_if_changed<F, Fut>(
        &self,
        kind: ResourceKind,
        name: &str,
        path: &str,
        mut desired: F,
    ) -> Result<bool>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<Tagged<Value>>>>,
    {
        for _ in 0..self.options.etag_attempts {
            let Some((body, etag)) = desired().await? else { return Ok(false) };
            match self
                .call(Method::PUT, path, Some(&body), etag.as_deref(), self.op_deadline())
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.http_status() == Some(412) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(IncusError::Conflict {
            kind,
            name: name.to_string(),
            attempts: self.options.etag_attempts,
        })
    }

    /// A fresh read of an instance that must exist and be owned.
    pub(super) async fn owned_instance(&self, name: &str) -> Result<Tagged<wire::Instance>> {
        let Some((inst, etag)) = self.get_instance(name).await? else {
            return Err(IncusError::not_found(ResourceKind::Instance, name));
        };
        require_owned(ResourceKind::Instance, name, &inst.config)?;
        Ok((inst, etag))
    }

    pub(super) async fn get_profile(&self, name: &str) -> Result<Option<Tagged<wire::Profile>>> {
        validate_name("profile name", name)?;
        self.get_with_etag(&format!("/1.0/profiles/{name}")).await
    }

    pub(super) async fn put_state(
        &self,
        name: &str,
        action: StateAction,
        timeout: Duration,
        force: bool,
    ) -> Result<()> {
        let secs = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX);
        let body = json!({"action": action.as_str(), "timeout": secs, "force": force});
        let deadline = Instant::now() + timeout + Duration::from_secs(30);
        self.call(Method::PUT, &format!("/1.0/instances/{name}/state"), Some(&body), None, deadline)
            .await
            .map(drop)
    }
}

impl Incus for IncusClient {
    async fn observe_scoped(&self, scope: Scope) -> Result<LiveState> {
        let networks = async {
            if scope.networks {
                self.get_as::<Vec<LiveNetwork>>("/1.0/networks?recursion=1").await
            } else {
                Ok(Vec::new())
            }
        };
        let members = async {
            if scope.members {
                self.get_as::<Vec<wire::Member>>("/1.0/cluster/members?recursion=1").await
            } else {
                Ok(Vec::new())
            }
        };
        let (instances, profiles, networks, pools, members) = tokio::try_join!(
            self.get_as::<Vec<wire::Instance>>("/1.0/instances?recursion=1"),
            self.get_as::<Vec<wire::Profile>>("/1.0/profiles?recursion=1"),
            networks,
            self.get_as::<Vec<LivePool>>("/1.0/storage-pools?recursion=1"),
            members,
        )?;
        Ok(LiveState {
            instances: instances.into_iter().map(|i| (i.name.clone(), i.into_live())).collect(),
            profiles: profiles.into_iter().map(|p| (p.name.clone(), p.into_live())).collect(),
            networks: networks.into_iter().map(|n| (n.name.clone(), n)).collect(),
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            members: members.into_iter().map(|m| (m.server_name.clone(), m.into_live())).collect(),
            ..LiveState::default()
        })
    }

    async fn instance(&self, name: &str) -> Result<Option<LiveInstance>> {
        Ok(self.get_instance(name).await?.map(|(i, _)| i.into_live()))
    }

    async fn create_instance(&self, spec: &InstanceSpec) -> Result<()> {
        if let Some((existing, _)) = self.get_instance(&spec.name).await? {
            return refuse_existing(ResourceKind::Instance, &spec.name, &existing.config);
        }
        for p in &spec.profiles {
            validate_name("profile name", p)?;
        }
        let body = json!({
            "name": spec.name,
            "type": spec.kind.as_str(),
            "source": spec.source.to_json(),
            "config": with_mark(&spec.config),
            "devices": spec.devices,
            "profiles": spec.profiles,
            "start": spec.start,
        });
        // On a cluster, the member it is created on (a name safe in a query string).
        let path = match &spec.target {
            Some(member) => {
                validate_name("cluster member name", member)?;
                format!("/1.0/instances?target={member}")
            }
            None => "/1.0/instances".to_string(),
        };
        match self.call(Method::POST, &path, Some(&body), None, self.op_deadline()).await {
            Ok(_) => Ok(()),
            Err(IncusError::Operation { method, path, operation, message, code, .. }) => {
                let hint = if message.contains("Image not provided")
                    || message.contains("not found")
                {
                    format!(
                        "; hint: {} may not exist (`incus image list`, `incus image alias list`)",
                        spec.source
                    )
                } else if message.contains("root disk") || message.contains("root device") {
                    "; hint: no profile gives it a root disk (add `root: {type: disk, path: /, pool: …}`)"
                        .to_string()
                } else {
                    String::new()
                };
                Err(IncusError::Operation { method, path, operation, message, code, hint })
            }
            Err(e) => Err(e),
        }
    }

    async fn update_instance(&self, name: &str, update: &InstanceUpdate) -> Result<bool> {
        let path = format!("/1.0/instances/{name}");
        self.put_if_changed(ResourceKind::Instance, name, &path, move || async move {
            let (inst, etag) = self.owned_instance(name).await?;
            let live = inst.clone().into_live();
            if instance_matches(&live, update) {
                return Ok(None);
            }
            let config = merged_put_config(&inst.config, &update.config);
            Ok(Some((inst.put_body(&config, &update.devices, &update.profiles), etag)))
        })
        .await
    }

    async fn change_state(&self, name: &str, change: &StateChange) -> Result<()> {
        let (inst, _) = self.owned_instance(name).await?;
        let action = match (change.action, inst.status.as_str()) {
            (StateAction::Start, "Running") | (StateAction::Stop, "Stopped") => return Ok(()),
            (StateAction::Restart, "Stopped") => StateAction::Start,
            (a, _) => a,
        };
        self.put_state(name, action, change.timeout, change.force).await
    }

    async fn delete_instance(&self, name: &str) -> Result<()> {
        let Some((inst, _)) = self.get_instance(name).await? else { return Ok(()) };
        require_deletable(name, &inst.config)?;
        if inst.status != "Stopped" {
            self.put_state(name, StateAction::Stop, Duration::from_secs(30), true).await?;
        }
        self.call(Method::DELETE, &format!("/1.0/instances/{name}"), None, None, self.op_deadline())
            .await
            .map(drop)
    }

    async fn profile(&self, name: &str) -> Result<Option<LiveProfile>> {
        Ok(self.get_profile(name).await?.map(|(p, _)| p.into_live()))
    }

    async fn create_profile(&self, spec: &ProfileSpec) -> Result<()> {
        if let Some((existing, _)) = self.get_profile(&spec.name).await? {
            return refuse_existing(ResourceKind::Profile, &spec.name, &existing.config);
        }
        let body = json!({
            "name": spec.name,
            "description": spec.description,
            "config": with_mark(&spec.config),
            "devices": spec.devices,
        });
        self.call(Method::POST, "/1.0/profiles", Some(&body), None, self.op_deadline())
            .await
            .map(drop)
    }

    async fn create_network(&self, name: &str, kind: &str, config: &Config) -> Result<()> {
        validate_name("network name", name)?;
        let networks = self.get_as::<Vec<LiveNetwork>>("/1.0/networks?recursion=1").await?;
        if let Some(existing) = networks.into_iter().find(|n| n.name == name) {
            return refuse_existing(ResourceKind::Network, name, &existing.config);
        }
        let body = json!({ "name": name, "type": kind, "config": with_mark(config) });
        self.call(Method::POST, "/1.0/networks", Some(&body), None, self.op_deadline())
            .await
            .map(drop)
    }

    async fn update_profile(&self, spec: &ProfileSpec) -> Result<bool> {
        let path = format!("/1.0/profiles/{}", spec.name);
        self.put_if_changed(ResourceKind::Profile, &spec.name, &path, move || async move {
            let Some((p, etag)) = self.get_profile(&spec.name).await? else {
                return Err(IncusError::not_found(ResourceKind::Profile, &spec.name));
            };
            require_owned(ResourceKind::Profile, &spec.name, &p.config)?;
            if profile_matches(&p.description, &p.config, &p.devices, spec) {
                return Ok(None);
            }
            let body = json!({
                "description": spec.description,
                "config": with_mark(&spec.config),
                "devices": spec.devices,
            });
            Ok(Some((body, etag)))
        })
        .await
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        let Some((p, _)) = self.get_profile(name).await? else { return Ok(()) };
        require_owned(ResourceKind::Profile, name, &p.config)?;
        self.call(Method::DELETE, &format!("/1.0/profiles/{name}"), None, None, self.op_deadline())
            .await
            .map(drop)
    }

    async fn create_snapshot(&self, instance: &str, name: Option<&str>) -> Result<String> {
        self.owned_instance(instance).await?;
        let name = match name {
            Some(n) => {
                validate_name("snapshot name", n)?;
                n.to_string()
            }
            None => snapshot_name(unix_now(), &self.list_snapshots(instance).await?),
        };
        let body = json!({"name": name, "stateful": false});
        self.call(
            Method::POST,
            &format!("/1.0/instances/{instance}/snapshots"),
            Some(&body),
            None,
            self.op_deadline(),
        )
        .await?;
        Ok(name)
    }

    async fn list_snapshots(&self, instance: &str) -> Result<Vec<SnapshotInfo>> {
        validate_name("instance name", instance)?;
        let path = format!("/1.0/instances/{instance}/snapshots?recursion=1");
        let snaps = match self.get_as::<Vec<wire::Snapshot>>(&path).await {
            Err(e) if e.http_status() == Some(404) => {
                return Err(IncusError::not_found(ResourceKind::Instance, instance));
            }
            other => other?,
        };
        let mut snaps: Vec<SnapshotInfo> =
            snaps.into_iter().map(wire::Snapshot::into_info).collect();
        snaps.sort_by(|a, b| a.created().cmp(&b.created()).then_with(|| a.name.cmp(&b.name)));
        Ok(snaps)
    }

    async fn delete_snapshot(&self, instance: &str, name: &str) -> Result<()> {
        validate_name("snapshot name", name)?;
        self.owned_instance(instance).await?;
        let path = format!("/1.0/instances/{instance}/snapshots/{name}");
        match self.call(Method::DELETE, &path, None, None, self.op_deadline()).await {
            Err(e) if e.http_status() == Some(404) => {
                Err(IncusError::not_found_in(ResourceKind::Snapshot, name, instance))
            }
            other => other.map(drop),
        }
    }

    async fn exec(&self, instance: &str, request: &ExecRequest) -> Result<ExecOutput> {
        if request.command.is_empty() {
            return Err(IncusError::Invalid {
                what: "command",
                value: String::new(),
                reason: "it is empty",
            });
        }
        self.owned_instance(instance).await?;
        self.exec_unchecked(instance, request).await
    }

    async fn push_file(&self, instance: &str, file: &FilePush) -> Result<()> {
        validate_file_path(&file.path)?;
        self.owned_instance(instance).await?;
        if file.create_parents {
            self.make_parents(instance, &file.path).await?;
        }
        if file.mode & 0o077 == 0 && !file.append && !file.content.is_empty() {
            self.prepare_private(instance, file).await?;
        }
        let url = files_path(instance, &file.path);
        let headers = file_headers(file, file.append);
        let resp = self
            .send(
                &Method::POST,
                &url,
                &headers,
                Bytes::from(file.content.clone()),
                self.options.request_timeout,
            )
            .await?;
        match envelope::parse_reply(resp.status.as_u16(), &resp.body) {
            Ok(_) => Ok(()),
            Err(ReplyError::Api { status: 404, .. }) if !file.create_parents => {
                Err(IncusError::not_found_in(
                    ResourceKind::File,
                    format!("{} (its parent directory)", file.path),
                    instance,
                ))
            }
            Err(e) => Err(self.reply_error(&Method::POST, &url, e)),
        }
    }

    async fn pull_file(&self, instance: &str, path: &str) -> Result<Vec<u8>> {
        self.pull_file_max(instance, path, self.options.max_output_bytes).await
    }

    async fn pull_file_max(&self, instance: &str, path: &str, max: u64) -> Result<Vec<u8>> {
        validate_name("instance name", instance)?;
        validate_file_path(path)?;
        let url = files_path(instance, path);
        let resp = self
            .send_capped(&Method::GET, &url, &[], Bytes::new(), self.options.request_timeout, max)
            .await
            .map_err(|e| match e {
                IncusError::TooLarge { limit, .. } => IncusError::TooLarge {
                    what: format!("file `{path}` in instance `{instance}`"),
                    limit,
                    hint: String::new(),
                },
                e => e,
            })?;
        if !resp.status.is_success() {
            let e = envelope::parse_reply(resp.status.as_u16(), &resp.body).err().unwrap_or(
                ReplyError::Api {
                    status: resp.status.as_u16(),
                    message: "unexpected reply".into(),
                },
            );
            return match e {
                ReplyError::Api { status: 404, message } if !message.contains("nstance") => {
                    Err(IncusError::not_found_in(ResourceKind::File, path, instance))
                }
                e => Err(self.reply_error(&Method::GET, &url, e)),
            };
        }
        match resp.header("x-incus-type") {
            None | Some("file") => Ok(resp.body.to_vec()),
            Some(other) => Err(IncusError::NotAFile {
                instance: instance.to_string(),
                path: path.to_string(),
                found: other.to_string(),
            }),
        }
    }

    async fn server_user_config(&self, key: &str) -> Result<Option<String>> {
        validate_user_key(key)?;
        let server: Value = self.get_as("/1.0").await?;
        Ok(server
            .pointer("/config")
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    async fn set_server_user_config(&self, key: &str, value: Option<&str>) -> Result<()> {
        validate_user_key(key)?;
        if self.server_user_config(key).await?.as_deref() == value {
            return Ok(());
        }
        // PATCH merges; an empty value deletes the key.
        let mut config = Config::new();
        config.insert(key.to_string(), value.unwrap_or("").to_string());
        let body = json!({"config": config});
        self.call(Method::PATCH, "/1.0", Some(&body), None, self.op_deadline()).await.map(drop)
    }

    async fn wait_for_operations(
        &self,
        instances: &[String],
        limit: Duration,
    ) -> Result<Vec<RunningOperation>> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let deadline = started + limit;
        let list: Value = self.get_as("/1.0/operations?recursion=1").await?;
        let running = envelope::running_operations(&list, instances);
        for op in &running {
            match self.wait(&Method::GET, &op.operation, &op.operation, deadline).await {
                // Its result is the instance's state, which the caller reads afresh.
                Ok(_) | Err(IncusError::Operation { .. } | IncusError::OperationLost { .. }) => {}
                Err(IncusError::Timeout { operation: Some(_), .. }) => {
                    return Err(IncusError::Busy {
                        instance: op.instance.clone(),
                        operation: op.operation.clone(),
                        description: op.description.clone(),
                        waited: started.elapsed(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(running)
    }

    async fn mark_instance(&self, name: &str, marks: &Config, seen: &LiveInstance) -> Result<bool> {
        self.adopt_instance(name, marks, seen).await
    }

    async fn mark_profile(&self, name: &str, marks: &Config, seen: &LiveProfile) -> Result<bool> {
        self.adopt_profile(name, marks, seen).await
    }

    async fn image_properties(&self, alias: &str) -> Result<Option<Config>> {
        self.local_image_properties(alias).await
    }

    async fn list_files(&self, instance: &str, dir: &str) -> Result<Option<Vec<String>>> {
        self.directory(instance, dir).await
    }

    async fn probe_inside(
        &self,
        instance: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        validate_name("instance name", instance)?;
        validate_probe_path(path)?;
        let mut request = ExecRequest::new(probe_command(port, path, timeout));
        request.timeout = timeout + Duration::from_secs(10);
        self.exec_unchecked(instance, &request).await
    }

    fn api_writes(&self) -> u64 {
        self.writes()
    }
}
