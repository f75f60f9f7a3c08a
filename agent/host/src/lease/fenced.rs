//! [`Fenced`]: an [`Incus`] whose every write passes the lease's [`Fence`] first. Reads
//! go straight through; a write the fence refuses is never sent (`IncusError::Fenced`).

use std::time::Duration;

use veza_model::live::{Config, LiveInstance, LiveProfile, LiveState};

use super::Fence;
use crate::incus::{
    ExecOutput, ExecRequest, FilePush, Incus, InstanceSpec, InstanceUpdate, ProfileSpec, Result,
    RunningOperation, Scope, SnapshotInfo, StateChange,
};

/// An [`Incus`] fenced by the cluster lease (see the module documentation).
pub struct Fenced<'a, I, F> {
    incus: &'a I,
    fence: &'a F,
}

impl<'a, I: Incus, F: Fence> Fenced<'a, I, F> {
    /// `incus`, every write of which passes `fence` first.
    pub fn new(incus: &'a I, fence: &'a F) -> Self {
        Fenced { incus, fence }
    }
}

impl<I: Incus, F: Fence> Incus for Fenced<'_, I, F> {
    async fn observe_scoped(&self, scope: Scope) -> Result<LiveState> {
        self.incus.observe_scoped(scope).await
    }

    async fn instance(&self, name: &str) -> Result<Option<LiveInstance>> {
        self.incus.instance(name).await
    }

    async fn create_instance(&self, spec: &InstanceSpec) -> Result<()> {
        self.fence.check(&format!("create instance {}", spec.name)).await?;
        self.incus.create_instance(spec).await
    }

    async fn update_instance(&self, name: &str, update: &InstanceUpdate) -> Result<bool> {
        self.fence.check(&format!("update instance {name}")).await?;
        self.incus.update_instance(name, update).await
    }

    async fn change_state(&self, name: &str, change: &StateChange) -> Result<()> {
        self.fence.check(&format!("{} instance {name}", change.action.as_str())).await?;
        self.incus.change_state(name, change).await
    }

    async fn delete_instance(&self, name: &str) -> Result<()> {
        self.fence.check(&format!("delete instance {name}")).await?;
        self.incus.delete_instance(name).await
    }

    async fn profile(&self, name: &str) -> Result<Option<LiveProfile>> {
        self.incus.profile(name).await
    }

    async fn create_profile(&self, spec: &ProfileSpec) -> Result<()> {
        self.fence.check(&format!("create profile {}", spec.name)).await?;
        self.incus.create_profile(spec).await
    }

    async fn update_profile(&self, spec: &ProfileSpec) -> Result<bool> {
        self.fence.check(&format!("update profile {}", spec.name)).await?;
        self.incus.update_profile(spec).await
    }

    async fn delete_profile(&self, name: &str) -> Result<()> {
        self.fence.check(&format!("delete profile {name}")).await?;
        self.incus.delete_profile(name).await
    }

    async fn create_network(&self, name: &str, kind: &str, config: &Config) -> Result<()> {
        self.fence.check(&format!("create network {name}")).await?;
        self.incus.create_network(name, kind, config).await
    }

    async fn create_snapshot(&self, instance: &str, name: Option<&str>) -> Result<String> {
        self.fence.check(&format!("snapshot instance {instance}")).await?;
        self.incus.create_snapshot(instance, name).await
    }

    async fn list_snapshots(&self, instance: &str) -> Result<Vec<SnapshotInfo>> {
        self.incus.list_snapshots(instance).await
    }

    async fn delete_snapshot(&self, instance: &str, name: &str) -> Result<()> {
        self.fence.check(&format!("delete snapshot {instance}/{name}")).await?;
        self.incus.delete_snapshot(instance, name).await
    }

    async fn exec(&self, instance: &str, request: &ExecRequest) -> Result<ExecOutput> {
        self.fence.check(&format!("exec in instance {instance}")).await?;
        self.incus.exec(instance, request).await
    }

    async fn push_file(&self, instance: &str, file: &FilePush) -> Result<()> {
        self.fence.check(&format!("push {} into instance {instance}", file.path)).await?;
        self.incus.push_file(instance, file).await
    }

    async fn pull_file(&self, instance: &str, path: &str) -> Result<Vec<u8>> {
        self.incus.pull_file(instance, path).await
    }

    async fn pull_file_max(&self, instance: &str, path: &str, max: u64) -> Result<Vec<u8>> {
        self.incus.pull_file_max(instance, path, max).await
    }

    async fn server_user_config(&self, key: &str) -> Result<Option<String>> {
        self.incus.server_user_config(key).await
    }

    async fn set_server_user_config(&self, key: &str, value: Option<&str>) -> Result<()> {
        self.fence.check(&format!("set server config {key}")).await?;
        self.incus.set_server_user_config(key, value).await
    }

    async fn mark_instance(&self, name: &str, marks: &Config, seen: &LiveInstance) -> Result<bool> {
        self.fence.check(&format!("mark instance {name}")).await?;
        self.incus.mark_instance(name, marks, seen).await
    }

    async fn mark_profile(&self, name: &str, marks: &Config, seen: &LiveProfile) -> Result<bool> {
        self.fence.check(&format!("mark profile {name}")).await?;
        self.incus.mark_profile(name, marks, seen).await
    }

    async fn image_properties(&self, alias: &str) -> Result<Option<Config>> {
        self.incus.image_properties(alias).await
    }

    async fn list_files(&self, instance: &str, dir: &str) -> Result<Option<Vec<String>>> {
        self.incus.list_files(instance, dir).await
    }

    async fn probe_inside(
        &self,
        instance: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        // A fixed read-only GET inside the instance: a standby may look too.
        self.incus.probe_inside(instance, port, path, timeout).await
    }

    async fn wait_for_operations(
        &self,
        instances: &[String],
        limit: Duration,
    ) -> Result<Vec<RunningOperation>> {
        self.incus.wait_for_operations(instances, limit).await
    }

    fn api_writes(&self) -> u64 {
        self.incus.api_writes()
    }
}
