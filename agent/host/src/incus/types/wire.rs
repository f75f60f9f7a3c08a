//! The JSON shapes Incus sends, decoded leniently (every field defaults) and converted to
//! the public types.

use super::*;

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Instance {
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<InstanceKind>,
    #[serde(default)]
    pub status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: Config,
    #[serde(default, deserialize_with = "null_as_default")]
    pub devices: Devices,
    #[serde(default, deserialize_with = "null_as_default")]
    pub expanded_devices: Devices,
    #[serde(default, deserialize_with = "null_as_default")]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub stateful: bool,
    /// The cluster member it lives on; `none` on a single host.
    #[serde(default)]
    pub location: String,
}

/// `null` read as the empty value: on a cluster, an instance on an offline member is
/// listed with `null` devices (its member cannot be asked).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Instance {
    pub(crate) fn into_live(self) -> LiveInstance {
        LiveInstance {
            name: self.name,
            kind: self.kind.unwrap_or_default(),
            status: InstanceStatus::from(self.status),
            config: self.config,
            devices: self.devices,
            expanded_devices: self.expanded_devices,
            profiles: self.profiles,
            description: self.description,
            location: (!self.location.is_empty() && self.location != "none")
                .then_some(self.location),
        }
    }

    /// The body of a `PUT` of this instance: what it was read with, but `config`,
    /// `devices` and `profiles` (a `PUT` replaces every field, so none may be left out).
    pub(crate) fn put_body(
        &self,
        config: &Config,
        devices: &Devices,
        profiles: &[String],
    ) -> serde_json::Value {
        serde_json::json!({
            "architecture": self.architecture,
            "config": config,
            "devices": devices,
            "ephemeral": self.ephemeral,
            "profiles": profiles,
            "stateful": self.stateful,
            "description": self.description,
        })
    }
}

/// A cluster member (`GET /1.0/cluster/members?recursion=1`).
#[derive(Debug, Deserialize)]
pub(crate) struct Member {
    pub server_name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
}

impl Member {
    pub(crate) fn into_live(self) -> veza_model::live::LiveMember {
        veza_model::live::LiveMember {
            name: self.server_name,
            status: self.status,
            message: self.message,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub config: Config,
    #[serde(default)]
    pub devices: Devices,
    #[serde(default)]
    pub used_by: Vec<String>,
}

impl Profile {
    pub(crate) fn into_live(self) -> LiveProfile {
        LiveProfile {
            name: self.name,
            description: self.description,
            config: self.config,
            devices: self.devices,
            used_by: self.used_by,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Snapshot {
    pub name: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub stateful: bool,
}

impl Snapshot {
    pub(crate) fn into_info(self) -> SnapshotInfo {
        // Some Incus versions report `instance/snap`; keep the snapshot part.
        let name = match self.name.rsplit_once('/') {
            Some((_, n)) => n.to_string(),
            None => self.name,
        };
        SnapshotInfo { name, created_at: self.created_at, stateful: self.stateful }
    }
}
