//! [`SharedConfig`] over the REST API: the `default` project's config.

use hyper::Method;
use serde_json::{Value, json};

use super::super::error::{IncusError, ResourceKind};
use super::super::shared::{SharedConfig, Swap, Versioned};
use super::super::{Result, validate_user_key};
use super::IncusClient;

const PROJECT: &str = "/1.0/projects/default";

impl IncusClient {
    /// The `default` project as read, with its ETag.
    async fn project(&self) -> Result<(Value, String)> {
        let Some((project, etag)) = self.get_with_etag::<Value>(PROJECT).await? else {
            return Err(IncusError::not_found(ResourceKind::ServerConfig, "project `default`"));
        };
        Ok((project, etag.unwrap_or_default()))
    }
}

impl SharedConfig for IncusClient {
    async fn shared_user_config(&self, key: &str) -> Result<Versioned> {
        validate_user_key(key)?;
        let (project, etag) = self.project().await?;
        let value = project.pointer("/config").and_then(|c| c.get(key)).and_then(Value::as_str);
        Ok(Versioned { value: value.map(str::to_string), etag })
    }

    async fn swap_shared_user_config(
        &self,
        key: &str,
        value: Option<&str>,
        etag: &str,
    ) -> Result<Swap> {
        validate_user_key(key)?;
        let (project, now) = self.project().await?;
        if now != etag {
            return Ok(Swap::Changed);
        }
        let mut config =
            project.get("config").and_then(Value::as_object).cloned().unwrap_or_default();
        match value {
            Some(v) => config.insert(key.to_string(), Value::String(v.to_string())),
            None => config.remove(key),
        };
        let description =
            project.get("description").cloned().unwrap_or(Value::String(String::new()));
        let body = json!({"description": description, "config": config});
        match self.call(Method::PUT, PROJECT, Some(&body), Some(etag), self.op_deadline()).await {
            Ok(_) => Ok(Swap::Done),
            Err(e) if e.http_status() == Some(412) => Ok(Swap::Changed),
            Err(e) => Err(e),
        }
    }
}
