//! What adoption asks of incusd: the marks written into a foreign instance or profile
//! (the ETag update path, nothing else changed), a local image's properties, and a
//! directory listing inside an instance.

use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};

use super::super::envelope::{self, Reply, ReplyError};
use super::super::error::{IncusError, ResourceKind};
use super::super::types::{Config, LiveInstance, LiveProfile};
use super::super::{
    Result, adoption_writes, instance_changes, profile_changes, validate_file_path, validate_marks,
    validate_name,
};
use super::{IncusClient, files_path};

impl IncusClient {
    pub(super) async fn adopt_instance(
        &self,
        name: &str,
        marks: &Config,
        seen: &LiveInstance,
    ) -> Result<bool> {
        validate_marks(marks)?;
        let path = format!("/1.0/instances/{name}");
        self.put_if_changed(ResourceKind::Instance, name, &path, move || async move {
            let Some((inst, etag)) = self.get_instance(name).await? else {
                return Err(IncusError::not_found(ResourceKind::Instance, name));
            };
            let live = inst.clone().into_live();
            let changes = instance_changes(&live, seen);
            if !adoption_writes(ResourceKind::Instance, name, &live.config, marks, changes)? {
                return Ok(None);
            }
            let mut config = inst.config.clone();
            config.extend(marks.clone());
            Ok(Some((inst.put_body(&config, &inst.devices, &inst.profiles), etag)))
        })
        .await
    }

    pub(super) async fn adopt_profile(
        &self,
        name: &str,
        marks: &Config,
        seen: &LiveProfile,
    ) -> Result<bool> {
        validate_marks(marks)?;
        let path = format!("/1.0/profiles/{name}");
        self.put_if_changed(ResourceKind::Profile, name, &path, move || async move {
            let Some((p, etag)) = self.get_profile(name).await? else {
                return Err(IncusError::not_found(ResourceKind::Profile, name));
            };
            let live = p.into_live();
            let changes = profile_changes(&live, seen);
            if !adoption_writes(ResourceKind::Profile, name, &live.config, marks, changes)? {
                return Ok(None);
            }
            let mut config = live.config.clone();
            config.extend(marks.clone());
            let body = json!({
                "description": live.description,
                "config": config,
                "devices": live.devices,
            });
            Ok(Some((body, etag)))
        })
        .await
    }

    pub(super) async fn local_image_properties(&self, alias: &str) -> Result<Option<Config>> {
        // Aliases may hold `/` (`debian/13`); each part is an ordinary name.
        for part in alias.split('/') {
            validate_name("image alias", part)?;
        }
        let Some((target, _)) =
            self.get_with_etag::<Value>(&format!("/1.0/images/aliases/{alias}")).await?
        else {
            return Ok(None);
        };
        let Some(fingerprint) = target.get("target").and_then(Value::as_str) else {
            return Ok(None);
        };
        if fingerprint.is_empty()
            || fingerprint.len() > 64
            || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(IncusError::Invalid {
                what: "image fingerprint",
                value: fingerprint.to_string(),
                reason: "it must be hexadecimal",
            });
        }
        let Some((image, _)) =
            self.get_with_etag::<Value>(&format!("/1.0/images/{fingerprint}")).await?
        else {
            return Ok(None);
        };
        let properties = image
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<Config>()
            })
            .unwrap_or_default();
        Ok(Some(properties))
    }

    pub(super) async fn directory(&self, instance: &str, dir: &str) -> Result<Option<Vec<String>>> {
        validate_name("instance name", instance)?;
        validate_file_path(dir)?;
        let url = files_path(instance, dir);
        let max = self.options.max_output_bytes;
        let resp = self
            .send_capped(&Method::GET, &url, &[], Bytes::new(), self.options.request_timeout, max)
            .await?;
        let reply = envelope::parse_reply(resp.status.as_u16(), &resp.body);
        let listing = match reply {
            Err(ReplyError::Api { status: 404, message }) if !message.contains("nstance") => {
                return Ok(None);
            }
            Err(e) => return Err(self.reply_error(&Method::GET, &url, e)),
            Ok(_) if resp.header("x-incus-type").is_some_and(|t| t != "directory") => {
                return Err(IncusError::NotAFile {
                    instance: instance.to_string(),
                    path: dir.to_string(),
                    found: format!(
                        "{} where a directory is needed",
                        resp.header("x-incus-type").unwrap_or_default()
                    ),
                });
            }
            Ok(Reply::Sync(v)) => v,
            Ok(Reply::Async { .. }) => Value::Null,
        };
        let names = listing
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .ok_or_else(|| IncusError::Decode {
                method: "GET".to_string(),
                path: url.clone(),
                detail: "expected a list of names for a directory".to_string(),
                excerpt: envelope::excerpt(&resp.body),
            })?;
        Ok(Some(names))
    }
}
