//! What the observers saw on the host, as plain data: the one live model.
//!
//! The effect crate (`veza-host`) fills these from Incus, HAProxy and systemd and the
//! planner (`veza-plan`) reads them; tests build them by hand. They live here, in the
//! pure leaf crate, so that the drivers that produce them and the planner that consumes
//! them share one definition (and one set of ownership marks) without the drivers
//! depending on the planner.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::manifest::Color;

mod edge;

pub use edge::{
    ConfigServer, LiveEdge, SlotInstance, ansible_color_file, ansible_history_file, config_servers,
    parse_color_history, parse_color_record, serving_colors,
};

/// The namespace of the agent's marks: a manifest may not set keys in it, and a change of
/// them alone changes nothing an instance runs.
pub const MARK_PREFIX: &str = "user.veza.";
/// The agent's ownership mark on instances, profiles and networks: only resources whose
/// config holds `user.veza.managed=true` are ever changed or deleted by the agent.
pub const MARK_MANAGED: &str = "user.veza.managed";
/// Environment of an owned instance.
pub const MARK_ENV: &str = "user.veza.env";
/// App of a slot instance.
pub const MARK_APP: &str = "user.veza.app";
/// Color of a slot instance.
pub const MARK_COLOR: &str = "user.veza.color";
/// Release running in a slot instance (set once the artifact is installed).
pub const MARK_RELEASE: &str = "user.veza.release";
/// Set by the agent's own deploy of a release into a slot (`agent`): only such a slot
/// runs nothing but the agent's app, so only it may take a new release in place. A slot
/// another tool built (adopted from Ansible, which left its own service enabled in it)
/// is rebuilt from its image instead.
pub const MARK_DEPLOYED: &str = "user.veza.deployed";
/// Protected data instance: never deleted.
pub const MARK_PROTECT: &str = "user.veza.protect";
/// Host whose manifests declare an owned profile: profiles are shared by the
/// environments of one host, and only that host's agent prunes them.
pub const MARK_HOST: &str = "user.veza.host";
/// The image reference an owned instance was created from, as the manifest wrote it: an
/// edit of `image:` is detected by comparing it (Incus keeps only the fingerprint).
pub const MARK_IMAGE: &str = "user.veza.image";
/// A digest of what a slot's app is started with besides its release (port, `start`,
/// install directory): a change needs a redeploy, like a new release.
pub const MARK_APP_SPEC: &str = "user.veza.app-spec";
/// Config keys the agent manages on an instance (comma separated), so it can remove
/// the ones that leave the manifest without touching keys set by hand.
pub const MARK_KEYS: &str = "user.veza.keys";

/// Config keys and values (`limits.cpu = "2"`, `user.veza.release = "…"`). Incus keeps
/// every value as a string.
pub type Config = BTreeMap<String, String>;
/// One device: its keys (`type`, `listen`, `connect`, `path`, `pool`, …).
pub type Device = BTreeMap<String, String>;
/// Incus devices as Incus stores them: name → key → value.
pub type Devices = BTreeMap<String, Device>;

/// Whether a config carries the ownership mark.
pub fn is_marked(config: &Config) -> bool {
    config.get(MARK_MANAGED).is_some_and(|v| v == "true")
}

/// Whether Incus manages `key` itself (`volatile.*`, `image.*`: never compared, always
/// preserved).
pub fn is_incus_key(key: &str) -> bool {
    key.starts_with("volatile.") || key.starts_with("image.")
}

/// The keys of `config` the agent reconciles (all but Incus's own).
pub fn settable_config(config: &Config) -> Config {
    config.iter().filter(|(k, _)| !is_incus_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
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

    /// The kind Incus names `name`, if any.
    pub fn parse(name: &str) -> Option<InstanceKind> {
        [InstanceKind::Container, InstanceKind::VirtualMachine]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

impl fmt::Display for InstanceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance's power status as Incus reports it in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum InstanceStatus {
    Running,
    #[default]
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

/// One instance as observed (`GET /1.0/instances?recursion=1`).
///
/// `config` is the instance's own config, verbatim (it includes Incus's `volatile.*` and
/// `image.*` keys; see [`LiveInstance::settable_config`]). `devices` are the
/// instance-local devices (what the agent owns and reconciles), `expanded_devices` the
/// effective ones after profiles are applied (where the root disk usually comes from).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveInstance {
    pub name: String,
    pub kind: InstanceKind,
    pub status: InstanceStatus,
    pub config: Config,
    pub devices: Devices,
    pub expanded_devices: Devices,
    /// Profiles, in order.
    pub profiles: Vec<String>,
    pub description: String,
    /// On a cluster, the member it lives on (Incus's `location`); `None` on a single
    /// host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl LiveInstance {
    /// Whether the agent owns it (`user.veza.managed=true`).
    pub fn is_owned(&self) -> bool {
        is_marked(&self.config)
    }
    /// Whether it is marked protected (`user.veza.protect=true`): never deleted.
    pub fn is_protected(&self) -> bool {
        self.config.get(MARK_PROTECT).is_some_and(|v| v == "true")
    }
    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.status == InstanceStatus::Running
    }
    /// The release installed in it, for a slot.
    pub fn release(&self) -> Option<&str> {
        self.config.get(MARK_RELEASE).map(String::as_str)
    }
    /// Whether the agent itself deployed the release it runs (see [`MARK_DEPLOYED`]).
    pub fn deployed_by_agent(&self) -> bool {
        self.config.get(MARK_DEPLOYED).is_some_and(|v| v == "agent")
    }
    /// The digest of its app's start settings, when the agent recorded it.
    pub fn app_spec(&self) -> Option<&str> {
        self.config.get(MARK_APP_SPEC).map(String::as_str)
    }
    /// The image reference it was created from, when the agent recorded it.
    pub fn image(&self) -> Option<&str> {
        self.config.get(MARK_IMAGE).map(String::as_str)
    }
    /// The environment it belongs to.
    pub fn env(&self) -> Option<&str> {
        self.config.get(MARK_ENV).map(String::as_str)
    }
    /// The config without the keys Incus manages itself (`volatile.*`, `image.*`): what
    /// an update is compared against and replaces.
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

/// One profile as observed (`GET /1.0/profiles?recursion=1`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveProfile {
    pub name: String,
    pub description: String,
    pub config: Config,
    pub devices: Devices,
    /// API paths of the instances using this profile (`/1.0/instances/NAME`).
    pub used_by: Vec<String>,
}

impl LiveProfile {
    /// Whether the agent owns it (`user.veza.managed=true` in its config).
    pub fn is_owned(&self) -> bool {
        is_marked(&self.config)
    }
}

/// One network as observed (`GET /1.0/networks?recursion=1`, decoded directly: every
/// field but the name defaults, unknown fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNetwork {
    pub name: String,
    /// `bridge`, `loopback`, `physical`, … (Incus's `type`).
    #[serde(default, alias = "type")]
    pub kind: String,
    /// Whether Incus manages it (a bridge it created) or merely sees it (a host interface).
    #[serde(default)]
    pub managed: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: Config,
}

/// One storage pool as observed (`GET /1.0/storage-pools?recursion=1`, decoded directly as
/// a network is).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePool {
    pub name: String,
    /// `dir`, `zfs`, `btrfs`, `lvm`, …
    #[serde(default)]
    pub driver: String,
    /// `Created` when usable; anything else (`Unavailable`, `Errored`) is a warning sign.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: Config,
}

/// Where systemd units live: the host, or an Incus instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UnitTarget {
    /// The host's systemd.
    Host,
    /// systemd inside this instance.
    Instance(String),
}

impl UnitTarget {
    /// The target a job's `on:` names: `host`, or an instance.
    pub fn from_on(on: &str) -> UnitTarget {
        if on == "host" { UnitTarget::Host } else { UnitTarget::Instance(on.to_string()) }
    }

    /// As a job's `on:` (and the state's records) write it: `host`, or the instance name.
    pub fn as_on(&self) -> &str {
        match self {
            UnitTarget::Host => "host",
            UnitTarget::Instance(i) => i,
        }
    }
}

impl fmt::Display for UnitTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnitTarget::Host => f.write_str("host"),
            UnitTarget::Instance(i) => write!(f, "instance `{i}`"),
        }
    }
}

/// Everything observed on the host. The Incus driver fills the Incus part (`instances`,
/// `profiles`, `networks`, `pools`); the reconciler adds the edge and the units.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// Incus instances by name (owned and foreign).
    pub instances: BTreeMap<String, LiveInstance>,
    /// Incus profiles by name.
    pub profiles: BTreeMap<String, LiveProfile>,
    /// Incus networks by name (empty when the observation left them out).
    pub networks: BTreeMap<String, LiveNetwork>,
    /// Incus storage pools by name.
    pub pools: BTreeMap<String, LivePool>,
    /// The live edge: its config and the colors it routes to.
    pub edge: LiveEdge,
    /// Unit files carrying the agent's marker, by target and file name.
    pub units: BTreeMap<UnitTarget, BTreeMap<String, String>>,
    /// The members of the Incus cluster by name, observed only when the agent is
    /// configured for a cluster (`cluster:`); empty on a single host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, LiveMember>,
}

/// A member of the Incus cluster, as `GET /1.0/cluster/members?recursion=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMember {
    pub name: String,
    /// `Online`, `Offline`, `Evacuated`, `Blocked`…: only an `Online` member takes new
    /// instances or changes.
    pub status: String,
    /// What Incus says about it (`Unavailable due to heartbeat timeout`…).
    #[serde(default)]
    pub message: String,
}

impl LiveMember {
    /// Whether it takes new instances and changes (`status: Online`).
    pub fn is_online(&self) -> bool {
        self.status == "Online"
    }
}

impl LiveState {
    /// The storage pool for `pool: auto`, detected the way the seed playbooks ended up
    /// doing it (commit 5f6625cc56): the pool an existing instance's root disk uses (from
    /// `expanded_devices`, so a pool inherited from a profile counts; instances in name
    /// order; only a pool that still exists); else the first pool (in name order) whose
    /// status is `Created`; else the first pool at all; else `default`.
    pub fn root_pool(&self) -> String {
        self.instances
            .values()
            .find_map(|i| i.root_disk_pool().filter(|p| self.pools.contains_key(*p)))
            .map(str::to_string)
            .or_else(|| self.pools.values().find(|p| p.status == "Created").map(|p| p.name.clone()))
            .or_else(|| self.pools.keys().next().cloned())
            .unwrap_or_else(|| "default".to_string())
    }

    /// Instances carrying the ownership mark.
    pub fn owned_instances(&self) -> impl Iterator<Item = &LiveInstance> {
        self.instances.values().filter(|i| i.is_owned())
    }

    /// The live edge's config text, if any.
    pub fn edge_config(&self) -> Option<&str> {
        self.edge.config.as_deref()
    }

    /// Whether `instance` lives on a cluster member that is not online: Incus lists it
    /// in `Error` with no config (no marks) and cannot change it.
    pub fn on_offline_member(&self, instance: &LiveInstance) -> bool {
        instance
            .location
            .as_deref()
            .and_then(|m| self.members.get(m))
            .is_some_and(|m| !m.is_online())
    }

    /// The color the live edge routes `env`/`app` to, if any.
    pub fn active_color(&self, env: &str, app: &str) -> Option<Color> {
        self.edge.active.get(&(env.to_string(), app.to_string())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_root(name: &str, device: &str, keys: &[(&str, &str)]) -> LiveInstance {
        let mut i = LiveInstance { name: name.into(), ..LiveInstance::default() };
        let d = keys.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        i.expanded_devices.insert(device.into(), d);
        i
    }

    fn pool(name: &str, status: &str) -> LivePool {
        LivePool { name: name.into(), status: status.into(), ..LivePool::default() }
    }

    #[test]
    fn networks_and_pools_decode_from_incus_replies() {
        // As incusd 6 answers (research/interfaces.md §1.12, §1.13).
        let network = r#"{"config":{"ipv4.address":"10.123.45.1/24"},"name":"rsbr0","type":"bridge","used_by":[],"managed":true,"status":"Created","locations":["none"],"project":"default"}"#;
        let n: LiveNetwork = serde_json::from_str(network).expect("network");
        let expected = LiveNetwork {
            name: "rsbr0".into(),
            kind: "bridge".into(),
            managed: true,
            status: "Created".into(),
            description: String::new(),
            config: [("ipv4.address".to_string(), "10.123.45.1/24".to_string())].into(),
        };
        assert_eq!(n, expected);
        let p: LivePool = serde_json::from_str(
            r#"{"config":{"source":"/var/lib/incus/storage-pools/default"},"description":"","name":"default","driver":"dir","used_by":["/1.0/profiles/default"],"status":"Created","locations":["none"]}"#,
        )
        .expect("pool");
        assert_eq!(
            (p.name.as_str(), p.driver.as_str(), p.status.as_str()),
            ("default", "dir", "Created")
        );
        // Only the name is required.
        let bare: LiveNetwork = serde_json::from_str(r#"{"name":"lo"}"#).expect("bare network");
        assert_eq!(bare, LiveNetwork { name: "lo".into(), ..LiveNetwork::default() });
        assert!(serde_json::from_str::<LivePool>(r#"{"driver":"dir"}"#).is_err());
    }

    #[test]
    fn root_pool_follows_the_seed() {
        let disk = |p: &'static str| [("type", "disk"), ("path", "/"), ("pool", p)];
        // (case, instances, pools, pool for `pool: auto`)
        let cases: Vec<(&str, Vec<LiveInstance>, Vec<LivePool>, &str)> = vec![
            (
                "an existing instance's root disk wins",
                vec![with_root("forgejo", "root", &disk("data"))],
                vec![pool("data", "Created"), pool("fast", "Created")],
                "data",
            ),
            (
                "instances in name order",
                vec![with_root("b", "root", &disk("fast")), with_root("a", "root", &disk("data"))],
                vec![pool("data", "Created"), pool("fast", "Created")],
                "data",
            ),
            (
                "the root disk is the disk at /, whatever its name",
                vec![
                    with_root("a", "data", &[("type", "disk"), ("path", "/srv"), ("pool", "fast")]),
                    with_root("b", "rootfs", &disk("slow")),
                ],
                vec![pool("fast", "Created"), pool("slow", "Created")],
                "slow",
            ),
            (
                "a vanished pool is skipped",
                vec![with_root("a", "root", &disk("gone"))],
                vec![pool("data", "Created")],
                "data",
            ),
            (
                "else the first created pool",
                vec![],
                vec![pool("broken", "Unavailable"), pool("ok", "Created")],
                "ok",
            ),
            ("else the first pool", vec![], vec![pool("b", "Errored")], "b"),
            ("no pools at all", vec![], vec![], "default"),
        ];
        for (case, instances, pools, want) in cases {
            let live = LiveState {
                instances: instances.into_iter().map(|i| (i.name.clone(), i)).collect(),
                pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
                ..LiveState::default()
            };
            assert_eq!(live.root_pool(), want, "case `{case}`");
        }
    }

    #[test]
    fn instance_kinds_read_back_as_incus_names_them() {
        for kind in [InstanceKind::Container, InstanceKind::VirtualMachine] {
            assert_eq!(InstanceKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(InstanceKind::parse("vm"), None);
    }

    #[test]
    fn the_active_color_is_what_the_edge_summary_says() {
        let active = BTreeMap::from([(("prod".to_string(), "web".to_string()), Color::Green)]);
        let live = LiveState {
            edge: LiveEdge { config: Some("cfg".into()), active, unconfirmed: false },
            ..LiveState::default()
        };
        assert_eq!(live.active_color("prod", "web"), Some(Color::Green));
        assert_eq!(live.active_color("prod", "api"), None);
        assert_eq!(live.edge_config(), Some("cfg"));
        assert_eq!(LiveState::default().active_color("prod", "web"), None);
    }
}
