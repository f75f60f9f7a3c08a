//! The real Incus client: typed requests over one pooled hyper client (HTTP/1.1 keep-alive
//! on the unix socket), async operations awaited through `/wait`, ETag-guarded updates,
//! and a counter of writing requests.
//!
//! This file holds the client, its transport and options; `request` sends requests and
//! awaits operations, `resources` implements [`Incus`](super::Incus) over them, and
//! `exec_files` holds the exec-log and file helpers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyperlocal::UnixConnector;
use serde_json::Value;

use super::Result;
use super::error::IncusError;
use super::types::FilePush;

mod adopt;
mod exec_files;
mod request;
mod resources;
mod shared;

/// A resource as read, with its ETag: the `If-Match` of the write that follows.
type Tagged<T> = (T, Option<String>);

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

/// The headers of a file push: `file`'s type, owner and mode, written over or appended to.
fn file_headers(file: &FilePush, append: bool) -> [(&'static str, String); 6] {
    [
        // Without this Content-Type Incus writes an empty file and still says "Success".
        ("Content-Type", "application/octet-stream".to_string()),
        ("X-Incus-type", "file".to_string()),
        ("X-Incus-uid", file.uid.to_string()),
        ("X-Incus-gid", file.gid.to_string()),
        ("X-Incus-mode", format!("{:04o}", file.mode & 0o7777)),
        ("X-Incus-write", if append { "append" } else { "overwrite" }.to_string()),
    ]
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
                match crate::tls::client_config(client_cert, client_key, server_cert) {
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
