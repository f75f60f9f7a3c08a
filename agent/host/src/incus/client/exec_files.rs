//! Exec and file helpers: a command run and its output logs fetched under a cap and
//! deleted, the parent directories of a pushed file created, and a private file made
//! private before its content is written.

use std::time::Instant;

use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::super::envelope::{self, Reply, ReplyError};
use super::super::error::IncusError;
use super::super::types::{ExecOutput, ExecRequest, FilePush};
use super::super::{Result, ancestors};
use super::{IncusClient, file_headers, files_path, json_body};

impl IncusClient {
    /// Runs a command in an instance without the ownership check: for `Incus::exec`
    /// after its check, and for the fixed probe of `Incus::probe_inside`.
    pub(super) async fn exec_unchecked(
        &self,
        instance: &str,
        request: &ExecRequest,
    ) -> Result<ExecOutput> {
        let mut body = json!({
            "command": request.command,
            "environment": request.env,
            "wait-for-websocket": false,
            "record-output": true,
            "interactive": false,
        });
        if let Some(obj) = body.as_object_mut() {
            if let Some(u) = request.user {
                obj.insert("user".into(), json!(u));
            }
            if let Some(g) = request.group {
                obj.insert("group".into(), json!(g));
            }
            if let Some(cwd) = &request.cwd {
                obj.insert("cwd".into(), json!(cwd));
            }
        }
        let path = format!("/1.0/instances/{instance}/exec");
        let headers = [("Content-Type", "application/json".to_string())];
        let resp = self
            .send(&Method::POST, &path, &headers, json_body(&body), self.options.request_timeout)
            .await?;
        let operation = match envelope::parse_reply(resp.status.as_u16(), &resp.body) {
            Ok(Reply::Async { operation }) => operation,
            Ok(Reply::Sync(_)) => {
                return Err(IncusError::Decode {
                    method: "POST".to_string(),
                    path,
                    detail: "expected a background operation for exec".to_string(),
                    excerpt: envelope::excerpt(&resp.body),
                });
            }
            Err(e) => return Err(self.reply_error(&Method::POST, &path, e)),
        };
        let deadline = Instant::now() + request.timeout;
        let result = match self.wait(&Method::POST, &path, &operation, deadline).await {
            Ok(v) => v,
            Err(e @ IncusError::Operation { .. }) => {
                self.discard_exec_logs(instance, &operation).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let exit =
            result.get("return").and_then(Value::as_i64).ok_or_else(|| IncusError::Decode {
                method: "POST".to_string(),
                path: path.clone(),
                detail: format!("operation {operation} reported no exit code (`return`)"),
                excerpt: envelope::excerpt(result.to_string().as_bytes()),
            })?;
        let url = |fd: &str| {
            result.pointer(&format!("/output/{fd}")).and_then(Value::as_str).map(str::to_string)
        };
        let shown = request.command.join(" ");
        let stdout = match url("1") {
            Some(u) => self.take_log(instance, &u, &format!("stdout of `{shown}`")).await?,
            None => Vec::new(),
        };
        let stderr = match url("2") {
            Some(u) => self.take_log(instance, &u, &format!("stderr of `{shown}`")).await?,
            None => Vec::new(),
        };
        Ok(ExecOutput { exit_code: i32::try_from(exit).unwrap_or(-1), stdout, stderr })
    }

    /// Fetches (up to `max_output_bytes`) and then deletes one exec output log.
    pub(super) async fn take_log(&self, instance: &str, url: &str, what: &str) -> Result<Vec<u8>> {
        if !url.starts_with(&format!("/1.0/instances/{instance}/logs/")) {
            return Err(IncusError::Decode {
                method: "POST".to_string(),
                path: format!("/1.0/instances/{instance}/exec"),
                detail: format!("unexpected exec output location `{url}`"),
                excerpt: String::new(),
            });
        }
        let max = self.options.max_output_bytes;
        let resp = match self
            .send_capped(&Method::GET, url, &[], Bytes::new(), self.options.request_timeout, max)
            .await
        {
            Err(IncusError::TooLarge { limit, .. }) => {
                // Not read, but not left on incusd's disk either.
                let _ = self.call(Method::DELETE, url, None, None, self.op_deadline()).await;
                return Err(IncusError::TooLarge {
                    what: format!("the {what} in instance `{instance}`"),
                    limit,
                    hint: format!(
                        " (hint: something in `{instance}` writes far more than expected; look \
                         with `incus exec {instance} -- ...`)"
                    ),
                });
            }
            other => other?,
        };
        if !resp.status.is_success() {
            let e = envelope::parse_reply(resp.status.as_u16(), &resp.body).err().unwrap_or(
                ReplyError::Api {
                    status: resp.status.as_u16(),
                    message: "unexpected reply".into(),
                },
            );
            return Err(self.reply_error(&Method::GET, url, e));
        }
        self.call(Method::DELETE, url, None, None, self.op_deadline()).await?;
        Ok(resp.body.to_vec())
    }

    /// After a failed exec, deletes its output logs if the operation still lists them.
    pub(super) async fn discard_exec_logs(&self, instance: &str, operation: &str) {
        let Ok(op) = self.get_as::<Value>(operation).await else { return };
        let Some(output) = op.pointer("/metadata/output").and_then(Value::as_object) else {
            return;
        };
        for url in output.values().filter_map(Value::as_str) {
            if url.starts_with(&format!("/1.0/instances/{instance}/logs/")) {
                let _ = self.call(Method::DELETE, url, None, None, self.op_deadline()).await;
            }
        }
    }

    /// Makes `file.path` an empty file of `file`'s (private) mode before its content is
    /// written: Incus creates a new file with mode 0644, writes it, and only then applies
    /// the mode, and it never changes the mode of a file that exists. So a secret pushed
    /// to a new path would be world-readable while it is written (for good, if the write
    /// failed), and one pushed over a wider-moded file would stay world-readable; nor does
    /// it change an existing file's owner. An empty file is created first; one with a
    /// wider mode or another owner is deleted and created again.
    pub(super) async fn prepare_private(&self, instance: &str, file: &FilePush) -> Result<()> {
        let url = files_path(instance, &file.path);
        let resp =
            self.send(&Method::HEAD, &url, &[], Bytes::new(), self.options.request_timeout).await?;
        let mode = resp
            .header("x-incus-mode")
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            .unwrap_or(0o777);
        let id = |name: &str| resp.header(name).and_then(|v| v.trim().parse::<u32>().ok());
        let owner = (id("x-incus-uid"), id("x-incus-gid"));
        let private = mode & 0o077 == 0 && owner == (Some(file.uid), Some(file.gid));
        match resp.status {
            StatusCode::NOT_FOUND => {}
            s if s.is_success() && private => return Ok(()),
            s if s.is_success() => {
                // A wider mode or another owner (or either unreadable): removed, then
                // created private, owned as asked.
                self.call(Method::DELETE, &url, None, None, self.op_deadline()).await?;
            }
            s => {
                return Err(IncusError::Api {
                    method: "HEAD".to_string(),
                    path: url,
                    status: s.as_u16(),
                    message: "unexpected reply to a file check".to_string(),
                });
            }
        }
        let headers = file_headers(file, false);
        let resp = self
            .send(&Method::POST, &url, &headers, Bytes::new(), self.options.request_timeout)
            .await?;
        envelope::parse_reply(resp.status.as_u16(), &resp.body)
            .map(drop)
            .map_err(|e| self.reply_error(&Method::POST, &url, e))
    }

    pub(super) async fn file_type(&self, instance: &str, path: &str) -> Result<Option<String>> {
        let url = files_path(instance, path);
        let resp =
            self.send(&Method::HEAD, &url, &[], Bytes::new(), self.options.request_timeout).await?;
        match resp.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                Ok(Some(resp.header("x-incus-type").unwrap_or("directory").to_string()))
            }
            s => Err(IncusError::Api {
                method: "HEAD".to_string(),
                path: url,
                status: s.as_u16(),
                message: "unexpected reply to a file check".to_string(),
            }),
        }
    }

    pub(super) async fn make_parents(&self, instance: &str, path: &str) -> Result<()> {
        let mut missing = Vec::new();
        for dir in ancestors(path) {
            match self.file_type(instance, &dir).await? {
                None => missing.push(dir),
                Some(t) if t == "directory" => break,
                Some(t) => {
                    return Err(IncusError::NotAFile {
                        instance: instance.to_string(),
                        path: dir,
                        found: format!("{t} where a directory is needed"),
                    });
                }
            }
        }
        for dir in missing.iter().rev() {
            let headers = [
                ("X-Incus-type", "directory".to_string()),
                ("X-Incus-mode", "0755".to_string()),
                ("X-Incus-uid", "0".to_string()),
                ("X-Incus-gid", "0".to_string()),
            ];
            let url = files_path(instance, dir);
            let resp = self
                .send(&Method::POST, &url, &headers, Bytes::new(), self.options.request_timeout)
                .await?;
            envelope::parse_reply(resp.status.as_u16(), &resp.body)
                .map_err(|e| self.reply_error(&Method::POST, &url, e))?;
        }
        Ok(())
    }
}
