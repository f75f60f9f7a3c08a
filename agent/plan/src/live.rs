//! What the observers saw on the host, as plain data the planner reads.
//!
//! The effect crate (`veza-host`) fills these from Incus, HAProxy and systemd; tests
//! build them by hand. Only the keys the planner needs are kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veza_model::manifest::Color;
use veza_model::naming;

/// The agent's ownership mark on instances and profiles.
pub const MARK_MANAGED: &str = "user.veza.managed";
/// Environment of an owned instance.
pub const MARK_ENV: &str = "user.veza.env";
/// App of a slot instance.
pub const MARK_APP: &str = "user.veza.app";
/// Color of a slot instance.
pub const MARK_COLOR: &str = "user.veza.color";
/// Release running in a slot instance (set once the artifact is installed).
pub const MARK_RELEASE: &str = "user.veza.release";
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

/// Incus devices as Incus stores them: name → key → value.
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

/// An instance as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveInstance {
    /// Instance-local config (not expanded from profiles).
    pub config: BTreeMap<String, String>,
    /// Instance-local devices.
    pub devices: Devices,
    /// Devices including those inherited from profiles.
    pub expanded_devices: Devices,
    /// Profiles, in order.
    pub profiles: Vec<String>,
    /// Whether it is running.
    pub running: bool,
    /// `container` or `virtual-machine`.
    pub kind: String,
}

impl LiveInstance {
    /// Whether the agent owns it.
    pub fn is_owned(&self) -> bool {
        self.config.get(MARK_MANAGED).map(String::as_str) == Some("true")
    }
    /// Whether it is marked protected.
    pub fn is_protected(&self) -> bool {
        self.config.get(MARK_PROTECT).map(String::as_str) == Some("true")
    }
    /// The release installed in it, for a slot.
    pub fn release(&self) -> Option<&str> {
        self.config.get(MARK_RELEASE).map(String::as_str)
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
}

/// A profile as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveProfile {
    /// Config.
    pub config: BTreeMap<String, String>,
    /// Devices.
    pub devices: Devices,
}

impl LiveProfile {
    /// Whether the agent owns it.
    pub fn is_owned(&self) -> bool {
        self.config.get(MARK_MANAGED).map(String::as_str) == Some("true")
    }
}

/// A network as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveNetwork {
    /// Whether Incus manages it.
    pub managed: bool,
    /// Config.
    pub config: BTreeMap<String, String>,
}

/// Where systemd units live: the host, or an Incus instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UnitTarget {
    /// The host's systemd.
    Host,
    /// systemd inside this instance.
    Instance(String),
}

impl std::fmt::Display for UnitTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnitTarget::Host => f.write_str("host"),
            UnitTarget::Instance(i) => write!(f, "instance `{i}`"),
        }
    }
}

/// Everything observed on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveState {
    /// Incus instances by name (owned and foreign).
    pub instances: BTreeMap<String, LiveInstance>,
    /// Incus profiles by name.
    pub profiles: BTreeMap<String, LiveProfile>,
    /// Incus networks by name.
    pub networks: BTreeMap<String, LiveNetwork>,
    /// Storage pool names.
    pub pools: Vec<String>,
    /// The live `haproxy.cfg`, if the edge exists.
    pub edge_config: Option<String>,
    /// Colors currently receiving traffic, by `(env, app)`, as the live edge routes them.
    pub active_colors: BTreeMap<(String, String), Color>,
    /// Unit files carrying the agent's marker, by target and file name.
    pub units: BTreeMap<UnitTarget, BTreeMap<String, String>>,
}

impl LiveState {
    /// The storage pool for `pool: auto`, as the seed detected it: the pool that an
    /// existing instance's root disk uses, else the first pool, else `default`.
    pub fn detect_pool(&self) -> String {
        for inst in self.instances.values() {
            if let Some(pool) = inst.expanded_devices.get("root").and_then(|d| d.get("pool")) {
                return pool.clone();
            }
        }
        self.pools.first().cloned().unwrap_or_else(|| "default".to_string())
    }
}

/// Reads which color each backend routes to from a config the agent rendered: in
/// backend `<env>_<app>`, the `server <color>-<release>` line without `disabled`.
pub fn active_colors_from_config(config: &str) -> BTreeMap<(String, String), Color> {
    let mut out = BTreeMap::new();
    let mut backend: Option<(String, String)> = None;
    for line in config.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("backend ") {
            backend =
                naming::parse_backend(name.trim()).map(|(e, a)| (e.to_string(), a.to_string()));
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('\t') && !t.is_empty() {
            backend = None;
        }
        let (Some(key), Some(rest)) = (&backend, t.strip_prefix("server ")) else { continue };
        let mut words = rest.split_whitespace();
        let name = words.next().unwrap_or("");
        if words.any(|w| w == "disabled") {
            continue;
        }
        let Some(color) = naming::server_color(name) else { continue };
        out.insert(key.clone(), color);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_color_is_the_enabled_server() {
        let cfg = "frontend fe\n    bind :80\nbackend prod_backend\n    server blue-0bd3e563b2 a:1 check disabled\n    server green-e97b91f010 b:1 check\nbackend staging_web\n    server blue-7c9e1b3d5f c:1 check\nbackend default_503\n";
        let got = active_colors_from_config(cfg);
        assert_eq!(got.get(&("prod".into(), "backend".into())), Some(&Color::Green));
        assert_eq!(got.get(&("staging".into(), "web".into())), Some(&Color::Blue));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn pool_detection_prefers_an_existing_root_disk() {
        let mut live =
            LiveState { pools: vec!["first".into(), "second".into()], ..LiveState::default() };
        assert_eq!(live.detect_pool(), "first");
        let mut inst = LiveInstance::default();
        inst.expanded_devices
            .insert("root".into(), BTreeMap::from([("pool".into(), "second".into())]));
        live.instances.insert("forgejo".into(), inst);
        assert_eq!(live.detect_pool(), "second");
        assert_eq!(LiveState::default().detect_pool(), "default");
    }
}
