//! Requests: one request sent with its timeout and a cap on the reply, API errors with
//! their context, JSON calls whose background operations are awaited through `/wait`,
//! and reads retried when they time out or break in transit (with their ETag).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::super::Result;
use super::super::envelope::{self, Reply, ReplyError, WaitOutcome};
use super::super::error::IncusError;
use super::{Http, IncusClient, Resp, Tagged, Transport, chain, hex, is_write, json_body};

impl IncusClient {
    pub(super) fn uri(&self, path: &str) -> Result<hyper::Uri> {
        let invalid =
            |reason| IncusError::Invalid { what: "request path", value: path.to_string(), reason };
        if !path.starts_with('/') {
            return Err(invalid("it must start with `/`"));
        }
        match &self.transport {
            Transport::Unix { socket } => {
                use std::os::unix::ffi::OsStrExt;
                let host = hex(socket.as_os_str().as_bytes());
                format!("unix://{host}:0{path}")
                    .parse::<hyper::Uri>()
                    .map_err(|_| invalid("it is not a valid URI path"))
            }
            Transport::Https { url, .. } => format!("{}{path}", url.trim_end_matches('/'))
                .parse::<hyper::Uri>()
                .map_err(|_| invalid("it does not make a valid URL with the endpoint")),
        }
    }

    /// Sends a request and reads the whole reply (up to `max_reply_bytes`) within `limit`.
    pub(super) async fn send(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        limit: Duration,
    ) -> Result<Resp> {
        self.send_capped(method, path, headers, body, limit, self.options.max_reply_bytes).await
    }

    /// [`Self::send`] reading at most `max_body` bytes of the reply: a longer one is
    /// [`IncusError::TooLarge`], named after the request.
    pub(super) async fn send_capped(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        limit: Duration,
        max_body: u64,
    ) -> Result<Resp> {
        let uri = self.uri(path)?;
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            let value = HeaderValue::from_str(value).map_err(|_| IncusError::Invalid {
                what: "header value",
                value: value.clone(),
                reason: "it contains characters not allowed in an HTTP header",
            })?;
            builder = builder.header(*name, value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| IncusError::Invalid {
            what: "request",
            value: format!("{method} {path}"),
            reason: if e.is::<hyper::http::header::InvalidHeaderName>() {
                "invalid header name"
            } else {
                "it could not be built"
            },
        })?;
        if is_write(method) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let endpoint = self.transport.describe();
        let exchange = async {
            let response = match &self.http {
                Http::Unix(client) => client.request(request).await,
                Http::Https(client) => client.request(request).await,
                Http::Broken(why) => {
                    return Err(IncusError::Connect {
                        endpoint: endpoint.clone(),
                        method: method.to_string(),
                        path: path.to_string(),
                        detail: why.clone(),
                    });
                }
            };
            let response = response.map_err(|e| {
                let detail = chain(&e);
                if e.is_connect() {
                    IncusError::Connect {
                        endpoint: endpoint.clone(),
                        method: method.to_string(),
                        path: path.to_string(),
                        detail,
                    }
                } else {
                    IncusError::Transport {
                        endpoint: endpoint.clone(),
                        method: method.to_string(),
                        path: path.to_string(),
                        detail,
                    }
                }
            })?;
            let (parts, body) = response.into_parts();
            let cap = usize::try_from(max_body).unwrap_or(usize::MAX);
            let body = http_body_util::Limited::new(body, cap).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    IncusError::TooLarge {
                        what: format!("the reply to `{method} {path}`"),
                        limit: max_body,
                        hint: String::new(),
                    }
                } else {
                    IncusError::Transport {
                        endpoint: endpoint.clone(),
                        method: method.to_string(),
                        path: path.to_string(),
                        detail: format!("reading the reply: {}", chain(&*e)),
                    }
                }
            })?;
            Ok(Resp { status: parts.status, headers: parts.headers, body: body.to_bytes() })
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(IncusError::Timeout {
                method: method.to_string(),
                path: path.to_string(),
                operation: None,
                waited: limit,
            }),
        }
    }

    pub(super) fn reply_error(&self, method: &Method, path: &str, e: ReplyError) -> IncusError {
        match e {
            ReplyError::Api { status, mut message } => {
                if status == 403 && matches!(self.transport, Transport::Https { .. }) {
                    message.push_str(
                        "; the client certificate is not trusted by this incusd (on the \
                         server: `incus config trust add-certificate CERT`)",
                    );
                }
                IncusError::Api {
                    method: method.to_string(),
                    path: path.to_string(),
                    status,
                    message,
                }
            }
            ReplyError::Decode { detail, excerpt } => IncusError::Decode {
                method: method.to_string(),
                path: path.to_string(),
                detail,
                excerpt,
            },
        }
    }

    /// Sends a JSON request; a sync reply gives its metadata, an async one is awaited until
    /// `deadline` and gives the operation's metadata.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        deadline: Instant,
    ) -> Result<Value> {
        let mut headers: Vec<(&str, String)> = Vec::new();
        if body.is_some() {
            headers.push(("Content-Type", "application/json".to_string()));
        }
        if let Some(etag) = if_match {
            headers.push(("If-Match", etag.to_string()));
        }
        let bytes = body.map(json_body).unwrap_or_default();
        let resp = self.send(&method, path, &headers, bytes, self.options.request_timeout).await?;
        match envelope::parse_reply(resp.status.as_u16(), &resp.body) {
            Ok(Reply::Sync(metadata)) => Ok(metadata),
            Ok(Reply::Async { operation }) => self.wait(&method, path, &operation, deadline).await,
            Err(e) => Err(self.reply_error(&method, path, e)),
        }
    }

    /// Awaits an operation until `deadline`, polling `/wait` in chunks.
    pub(super) async fn wait(
        &self,
        method: &Method,
        path: &str,
        operation: &str,
        deadline: Instant,
    ) -> Result<Value> {
        let started = Instant::now();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(IncusError::Timeout {
                    method: method.to_string(),
                    path: path.to_string(),
                    operation: Some(operation.to_string()),
                    waited: now.duration_since(started),
                });
            }
            let remaining = deadline.duration_since(now);
            let secs = remaining
                .as_secs_f64()
                .ceil()
                .clamp(1.0, self.options.wait_chunk.as_secs_f64().max(1.0))
                as u64;
            let wait_path = format!("{operation}/wait?timeout={secs}");
            let limit = Duration::from_secs(secs) + self.options.request_timeout;
            let asked = Instant::now();
            let resp = self.send(&Method::GET, &wait_path, &[], Bytes::new(), limit).await?;
            match envelope::parse_wait(resp.status.as_u16(), &resp.body) {
                Ok(WaitOutcome::Success(metadata)) => return Ok(metadata),
                Ok(WaitOutcome::Failed { message, code }) => {
                    return Err(IncusError::Operation {
                        method: method.to_string(),
                        path: path.to_string(),
                        operation: operation.to_string(),
                        message,
                        code,
                        hint: String::new(),
                    });
                }
                Ok(WaitOutcome::StillRunning) => {
                    // Guard against a server that answers "running" without waiting.
                    if asked.elapsed() < Duration::from_millis(100) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Ok(WaitOutcome::Gone) => {
                    return Err(IncusError::OperationLost {
                        method: method.to_string(),
                        path: path.to_string(),
                        operation: operation.to_string(),
                    });
                }
                Err(e) => return Err(self.reply_error(&Method::GET, &wait_path, e)),
            }
        }
    }

    pub(super) fn op_deadline(&self) -> Instant {
        Instant::now() + self.options.operation_timeout
    }

    /// A GET, sent again (up to `read_attempts` times, `read_timeout` each) when it
    /// timed out or broke in transit.
    pub(super) async fn send_read(&self, path: &str) -> Result<Resp> {
        let mut attempt = 1;
        loop {
            match self.send(&Method::GET, path, &[], Bytes::new(), self.options.read_timeout).await
            {
                Err(IncusError::Timeout { .. } | IncusError::Transport { .. })
                    if attempt < self.options.read_attempts =>
                {
                    attempt += 1;
                }
                Err(IncusError::Timeout { method, path, operation, waited }) => {
                    return Err(IncusError::Timeout {
                        method,
                        path,
                        operation,
                        waited: waited.saturating_mul(attempt),
                    });
                }
                other => return other,
            }
        }
    }

    /// The sync metadata of a GET's reply decoded as `T`.
    pub(super) fn decode_read<T: DeserializeOwned>(&self, path: &str, resp: &Resp) -> Result<T> {
        let decode = |detail: String| IncusError::Decode {
            method: "GET".to_string(),
            path: path.to_string(),
            detail,
            excerpt: envelope::excerpt(&resp.body),
        };
        match envelope::parse_reply(resp.status.as_u16(), &resp.body) {
            Ok(Reply::Sync(value)) => {
                serde_json::from_value(value).map_err(|e| decode(e.to_string()))
            }
            Ok(Reply::Async { operation }) => {
                Err(decode(format!("unexpected background operation `{operation}`")))
            }
            Err(e) => Err(self.reply_error(&Method::GET, path, e)),
        }
    }

    /// GET returning the sync metadata decoded as `T`.
    pub(super) async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send_read(path).await?;
        self.decode_read(path, &resp)
    }

    /// GET of one object with its ETag; `None` on 404.
    pub(super) async fn get_with_etag<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<Tagged<T>>> {
        let resp = self.send_read(path).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let etag = resp.header("etag").map(str::to_string);
        self.decode_read(path, &resp).map(|v| Some((v, etag)))
    }
}
