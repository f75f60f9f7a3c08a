//! The real Incus client: typed requests over one pooled hyper client (HTTP/1.1 keep-alive
//! on the unix socket), async operations awaited through `/wait`, ETag-guarded updates,
//! and a counter of writing requests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyperlocal::UnixConnector;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::envelope::{self, Reply, ReplyError, WaitOutcome};
use super::error::{IncusError, ResourceKind};
use super::types::{
    Config, ExecOutput, ExecRequest, FilePush, IncusLive, InstanceSpec, InstanceUpdate,
    LiveInstance, LiveProfile, ProfileSpec, RunningOperation, SnapshotInfo, StateAction,
    StateChange, wire, with_mark,
};
use super::{
    Incus, Result, Scope, ancestors, instance_matches, merged_put_config, profile_matches,
    require_deletable, require_owned, snapshot_name, validate_file_path, validate_name,
    validate_user_key,
};

/// The default socket of a Debian-packaged incusd.
pub const DEFAULT_SOCKET: &str = "/var/lib/incus/unix.socket";

/// How to reach incusd.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// The unix socket at `socket` (root, or a member of incusd's `--group`).
    Unix { socket: PathBuf },
    /// A remote incusd (a cluster member) over HTTPS, authenticated with a client
    /// certificate the server trusts (`incus config trust add-certificate`). The server's
    /// own certificate (`/var/lib/incus/server.crt`, or the cluster certificate) is pinned:
    /// no other certificate is accepted, whatever CA signed it.
    Https {
        /// `https://HOST:PORT` (no path).
        url: String,
        /// PEM client certificate.
        client_cert: PathBuf,
        /// PEM private key of the client certificate.
        client_key: PathBuf,
        /// PEM certificate the server must present.
        server_cert: PathBuf,
    },
}

impl Transport {
    /// The default local socket.
    pub fn local() -> Transport {
        Transport::Unix { socket: PathBuf::from(DEFAULT_SOCKET) }
    }

    fn describe(&self) -> String {
        match self {
            Transport::Unix { socket } => socket.display().to_string(),
            Transport::Https { url, .. } => url.clone(),
        }
    }
}

/// Time limits and retry bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Limit for one ordinary request (sending it and reading the whole reply).
    pub request_timeout: Duration,
    /// Limit for waiting on an operation that has no caller-given limit (create, delete,
    /// update, snapshots). Remote image downloads count against it.
    pub operation_timeout: Duration,
    /// Longest single `GET {operation}/wait?timeout=N`; longer waits poll again.
    pub wait_chunk: Duration,
    /// How many read-modify-write rounds an `If-Match` update tries before `Conflict`.
    pub etag_attempts: u32,
    /// Limit for one attempt of a read (`GET` of a resource or a list).
    pub read_timeout: Duration,
    /// Attempts of a read that timed out or broke in transit. incusd occasionally leaves
    /// one request unanswered (seen on list GETs while containers start); reads are
    /// idempotent, so they are sent again on a fresh connection.
    pub read_attempts: u32,
    /// Largest exec output (each of stdout and stderr) and pulled file read: what a
    /// container writes must not be able to fill the agent's memory.
    pub max_output_bytes: u64,
    /// Largest reply to any other request (lists of instances, profiles, ...).
    pub max_reply_bytes: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(300),
            wait_chunk: Duration::from_secs(30),
            etag_attempts: 3,
            read_timeout: Duration::from_secs(30),
            read_attempts: 3,
            max_output_bytes: 8 * 1024 * 1024,
            max_reply_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A reply as received, for [`IncusClient::raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of a header (name in any case), if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

enum Http {
    Unix(Client<UnixConnector, Full<Bytes>>),
    Https(
        Client<
            hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
            Full<Bytes>,
        >,
    ),
    /// The transport could not be set up (unreadable certificates); every request fails
    /// with this message.
    Broken(String),
}

/// The real Incus client. Cheap to share by reference; holds one connection pool.
///
/// Create it inside the tokio runtime that will drive it (pooled connections belong to
/// the runtime that opened them). The runtime needs timers enabled.
pub struct IncusClient {
    transport: Transport,
    http: Http,
    options: ClientOptions,
    writes: AtomicU64,
}

impl std::fmt::Debug for IncusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncusClient")
            .field("transport", &self.transport)
            .field("options", &self.options)
            .field("writes", &self.writes.load(Ordering::Relaxed))
            .finish()
    }
}

/// One reply, read completely.
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Every error in a chain, joined: hyper's top-level messages alone (`client error
/// (Connect)`) do not tell an operator what happened.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Percent-encodes a query value (keeps unreserved characters and `/`).
pub(crate) fn encode_query(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn files_path(instance: &str, path: &str) -> String {
    format!("/1.0/instances/{instance}/files?path={}", encode_query(path))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn json_body(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

impl IncusClient {
    /// A client for `transport` with `options`.
    pub fn new(transport: Transport, options: ClientOptions) -> IncusClient {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8);
        let http = match &transport {
            Transport::Unix { .. } => Http::Unix(builder.build(UnixConnector)),
            Transport::Https { client_cert, client_key, server_cert, .. } => {
                match super::tls::client_config(client_cert, client_key, server_cert) {
                    Ok(config) => {
                        let connector = hyper_rustls::HttpsConnectorBuilder::new()
                            .with_tls_config(config)
                            .https_only()
                            .enable_http1()
                            .build();
                        Http::Https(builder.build(connector))
                    }
                    Err(e) => Http::Broken(e),
                }
            }
        };
        IncusClient { transport, http, options, writes: AtomicU64::new(0) }
    }

    /// A client for the unix socket at `socket`, default options.
    pub fn unix(socket: impl Into<PathBuf>) -> IncusClient {
        IncusClient::new(Transport::Unix { socket: socket.into() }, ClientOptions::default())
    }

    /// A client for the default local socket, default options.
    pub fn local() -> IncusClient {
        IncusClient::new(Transport::local(), ClientOptions::default())
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// How many writing requests (POST, PUT, PATCH, DELETE) this client has sent,
    /// including the ones that failed.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sends one request as given and returns the reply without interpreting it: an escape
    /// hatch for diagnostics and tests. It bypasses the ownership checks (and is counted as
    /// a write unless `GET`/`HEAD`).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<RawResponse> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| IncusError::Invalid {
            what: "HTTP method",
            value: method.to_string(),
            reason: "it is not a valid method token",
        })?;
        let headers: Vec<(&str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let resp = self
            .send(&method, path, &headers, Bytes::from(body), self.options.request_timeout)
            .await?;
        let headers = resp
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Ok(RawResponse { status: resp.status.as_u16(), headers, body: resp.body.to_vec() })
    }

    fn uri(&self, path: &str) -> Result<hyper::Uri> {
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
    async fn send(
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
    async fn send_capped(
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

    fn reply_error(&self, method: &Method, path: &str, e: ReplyError) -> IncusError {
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
    async fn call(
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
    async fn wait(
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

    fn op_deadline(&self) -> Instant {
        Instant::now() + self.options.operation_timeout
    }

    /// A GET, sent again (up to `read_attempts` times, `read_timeout` each) when it
    /// timed out or broke in transit.
    async fn send_read(&self, path: &str) -> Result<Resp> {
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
    fn decode_read<T: DeserializeOwned>(&self, path: &str, resp: &Resp) -> Result<T> {
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
    async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send_read(path).await?;
        self.decode_read(path, &resp)
    }

    /// GET of one object with its ETag; `None` on 404.
    async fn get_with_etag<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<(T, Option<String>)>> {
        let resp = self.send_read(path).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let etag = resp.header("etag").map(str::to_string);
        self.decode_read(path, &resp).map(|v| Some((v, etag)))
    }

    async fn get_instance(&self, name: &str) -> Result<Option<(wire::Instance, Option<String>)>> {
        validate_name("instance name", name)?;
        self.get_with_etag(&format!("/1.0/instances/{name}")).await
    }

    /// A fresh read of an instance that must exist and be owned.
    async fn owned_instance(&self, name: &str) -> Result<(wire::Instance, Option<String>)> {
        let Some((inst, etag)) = self.get_instance(name).await? else {
            return Err(IncusError::NotFound {
                kind: ResourceKind::Instance,
                name: name.to_string(),
                instance: None,
            });
        };
        require_owned(ResourceKind::Instance, name, &inst.config)?;
        Ok((inst, etag))
    }

    async fn get_profile(&self, name: &str) -> Result<Option<(wire::Profile, Option<String>)>> {
        validate_name("profile name", name)?;
        self.get_with_etag(&format!("/1.0/profiles/{name}")).await
    }

    async fn put_state(
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

    /// Fetches (up to `max_output_bytes`) and then deletes one exec output log.
    async fn take_log(&self, instance: &str, url: &str, what: &str) -> Result<Vec<u8>> {
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
    async fn discard_exec_logs(&self, instance: &str, operation: &str) {
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

    async fn file_type(&self, instance: &str, path: &str) -> Result<Option<String>> {
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

    async fn make_parents(&self, instance: &str, path: &str) -> Result<()> {
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

impl Incus for IncusClient {
    async fn observe_scoped(&self, scope: Scope) -> Result<IncusLive> {
        let networks = async {
            if scope.networks {
                self.get_as::<Vec<wire::Network>>("/1.0/networks?recursion=1").await
            } else {
                Ok(Vec::new())
            }
        };
        let (instances, profiles, networks, pools) = tokio::try_join!(
            self.get_as::<Vec<wire::Instance>>("/1.0/instances?recursion=1"),
            self.get_as::<Vec<wire::Profile>>("/1.0/profiles?recursion=1"),
            networks,
            self.get_as::<Vec<wire::Pool>>("/1.0/storage-pools?recursion=1"),
        )?;
        Ok(IncusLive {
            instances: instances.into_iter().map(|i| (i.name.clone(), i.into_live())).collect(),
            profiles: profiles.into_iter().map(|p| (p.name.clone(), p.into_live())).collect(),
            networks: networks.into_iter().map(|n| (n.name.clone(), n.into_live())).collect(),
            pools: pools.into_iter().map(|p| (p.name.clone(), p.into_live())).collect(),
        })
    }

    async fn instance(&self, name: &str) -> Result<Option<LiveInstance>> {
        Ok(self.get_instance(name).await?.map(|(i, _)| i.into_live()))
    }

    async fn create_instance(&self, spec: &InstanceSpec) -> Result<()> {
        if let Some((existing, _)) = self.get_instance(&spec.name).await? {
            require_owned(ResourceKind::Instance, &spec.name, &existing.config)?;
            return Err(IncusError::AlreadyExists {
                kind: ResourceKind::Instance,
                name: spec.name.clone(),
            });
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
        match self.call(Method::POST, "/1.0/instances", Some(&body), None, self.op_deadline()).await
        {
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
        for _ in 0..self.options.etag_attempts {
            let (inst, etag) = self.owned_instance(name).await?;
            let live = wire_instance_view(&inst);
            if instance_matches(&live, update) {
                return Ok(false);
            }
            let body = json!({
                "architecture": inst.architecture,
                "config": merged_put_config(&inst.config, &update.config),
                "devices": update.devices,
                "ephemeral": inst.ephemeral,
                "profiles": update.profiles,
                "stateful": inst.stateful,
                "description": inst.description,
            });
            match self
                .call(Method::PUT, &path, Some(&body), etag.as_deref(), self.op_deadline())
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.http_status() == Some(412) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(IncusError::Conflict {
            kind: ResourceKind::Instance,
            name: name.to_string(),
            attempts: self.options.etag_attempts,
        })
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
            require_owned(ResourceKind::Profile, &spec.name, &existing.config)?;
            return Err(IncusError::AlreadyExists {
                kind: ResourceKind::Profile,
                name: spec.name.clone(),
            });
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
        let networks = self.get_as::<Vec<wire::Network>>("/1.0/networks?recursion=1").await?;
        if let Some(existing) = networks.into_iter().find(|n| n.name == name) {
            require_owned(ResourceKind::Network, name, &existing.into_live().config)?;
            return Err(IncusError::AlreadyExists {
                kind: ResourceKind::Network,
                name: name.to_string(),
            });
        }
        let body = json!({ "name": name, "type": kind, "config": with_mark(config) });
        self.call(Method::POST, "/1.0/networks", Some(&body), None, self.op_deadline())
            .await
            .map(drop)
    }

    async fn update_profile(&self, spec: &ProfileSpec) -> Result<bool> {
        let path = format!("/1.0/profiles/{}", spec.name);
        for _ in 0..self.options.etag_attempts {
            let Some((p, etag)) = self.get_profile(&spec.name).await? else {
                return Err(IncusError::NotFound {
                    kind: ResourceKind::Profile,
                    name: spec.name.clone(),
                    instance: None,
                });
            };
            require_owned(ResourceKind::Profile, &spec.name, &p.config)?;
            if profile_matches(&p.description, &p.config, &p.devices, spec) {
                return Ok(false);
            }
            let body = json!({
                "description": spec.description,
                "config": with_mark(&spec.config),
                "devices": spec.devices,
            });
            match self
                .call(Method::PUT, &path, Some(&body), etag.as_deref(), self.op_deadline())
                .await
            {
                Ok(_) => return Ok(true),
                Err(e) if e.http_status() == Some(412) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(IncusError::Conflict {
            kind: ResourceKind::Profile,
            name: spec.name.clone(),
            attempts: self.options.etag_attempts,
        })
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
                return Err(IncusError::NotFound {
                    kind: ResourceKind::Instance,
                    name: instance.to_string(),
                    instance: None,
                });
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
            Err(e) if e.http_status() == Some(404) => Err(IncusError::NotFound {
                kind: ResourceKind::Snapshot,
                name: name.to_string(),
                instance: Some(instance.to_string()),
            }),
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

    async fn push_file(&self, instance: &str, file: &FilePush) -> Result<()> {
        validate_file_path(&file.path)?;
        self.owned_instance(instance).await?;
        if file.create_parents {
            self.make_parents(instance, &file.path).await?;
        }
        let url = files_path(instance, &file.path);
        // Without this Content-Type Incus writes an empty file and still says "Success".
        let headers = [
            ("Content-Type", "application/octet-stream".to_string()),
            ("X-Incus-type", "file".to_string()),
            ("X-Incus-uid", file.uid.to_string()),
            ("X-Incus-gid", file.gid.to_string()),
            ("X-Incus-mode", format!("{:04o}", file.mode & 0o7777)),
            ("X-Incus-write", if file.append { "append" } else { "overwrite" }.to_string()),
        ];
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
                Err(IncusError::NotFound {
                    kind: ResourceKind::File,
                    name: format!("{} (its parent directory)", file.path),
                    instance: Some(instance.to_string()),
                })
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
                    Err(IncusError::NotFound {
                        kind: ResourceKind::File,
                        name: path.to_string(),
                        instance: Some(instance.to_string()),
                    })
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

    fn api_writes(&self) -> u64 {
        self.writes()
    }
}

/// The comparable view of a freshly read instance (without consuming it).
fn wire_instance_view(inst: &wire::Instance) -> LiveInstance {
    LiveInstance {
        name: inst.name.clone(),
        kind: inst.kind.unwrap_or_default(),
        status: inst.status.clone().into(),
        config: inst.config.clone(),
        devices: inst.devices.clone(),
        expanded_devices: inst.expanded_devices.clone(),
        profiles: inst.profiles.clone(),
        description: inst.description.clone(),
    }
}

#[cfg(test)]
mod scripted;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        let cases = [
            ("/www/index.html", "/www/index.html"),
            ("/tmp/a b.txt", "/tmp/a%20b.txt"),
            ("/x?y=1&z#w", "/x%3Fy%3D1%26z%23w"),
            ("/été", "/%C3%A9t%C3%A9"),
        ];
        for (input, want) in cases {
            assert_eq!(encode_query(input), want, "{input}");
        }
    }

    #[test]
    fn unix_uris_hex_encode_the_socket() {
        let c = IncusClient::unix("/var/lib/incus/unix.socket");
        let uri = c.uri("/1.0/instances?recursion=1").unwrap();
        assert_eq!(uri.scheme_str(), Some("unix"));
        assert_eq!(uri.host(), Some(hex(b"/var/lib/incus/unix.socket").as_str()));
        assert_eq!(uri.path_and_query().map(|p| p.as_str()), Some("/1.0/instances?recursion=1"));
        assert!(matches!(c.uri("1.0"), Err(IncusError::Invalid { .. })));
        assert!(matches!(c.uri("/a b"), Err(IncusError::Invalid { .. })));
    }

    #[test]
    fn writes_are_methods_that_change_things() {
        for (m, w) in [
            (Method::GET, false),
            (Method::HEAD, false),
            (Method::POST, true),
            (Method::PUT, true),
            (Method::PATCH, true),
            (Method::DELETE, true),
        ] {
            assert_eq!(is_write(&m), w, "{m}");
        }
    }
}
