//! A minimal HTTP/1.1 client for the agent's own probes: slot health checks and
//! verification requests through the edge. Plain TCP, or TLS for the edge of an
//! environment that terminates it, to the addresses the manifests name (loopback in
//! tests); bounded in time and size. [`Probe`] is that client as the apply engine takes it
//! from its drivers; [`fake`] scripts its answers for tests.

pub mod fake;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response read, in bytes.
const MAX_RESPONSE: u64 = 1024 * 1024;

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// Body (capped).
    pub body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[error("GET {scheme}://{addr}{path} (Host: {host}): {detail}")]
pub struct HttpError {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Address.
    pub addr: String,
    /// Host header.
    pub host: String,
    /// Path.
    pub path: String,
    /// What went wrong.
    pub detail: String,
}

/// `GET path` on `addr` (`host:port`) with a `Host:` header, over plain TCP.
/// `0.0.0.0` and `[::]` are probed on loopback. `timeout` bounds the whole exchange
/// (connect, request, headers and body): an app that answers one byte at a time cannot
/// stall a sync or a shutdown.
pub fn get(addr: &str, host: &str, path: &str, timeout: Duration) -> Result<Reply, HttpError> {
    exchange(addr, host, path, timeout, false)
}

/// [`get`] over TLS, `host` as the server name (SNI), any server certificate accepted
/// (the edge's checks: where it routes, not who it is).
pub fn get_tls(addr: &str, host: &str, path: &str, timeout: Duration) -> Result<Reply, HttpError> {
    exchange(addr, host, path, timeout, true)
}

fn exchange(
    addr: &str,
    host: &str,
    path: &str,
    timeout: Duration,
    tls: bool,
) -> Result<Reply, HttpError> {
    let err = |detail: String| HttpError {
        scheme: if tls { "https" } else { "http" },
        addr: addr.to_string(),
        host: host.to_string(),
        path: path.to_string(),
        detail,
    };
    let target = addr.replace("0.0.0.0:", "127.0.0.1:").replace("[::]:", "[::1]:");
    let sock: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| err(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| err("no address".to_string()))?;
    let deadline = Instant::now() + timeout;
    let late = |raw: &[u8]| {
        err(format!("no complete reply within {timeout:?} (received {} bytes)", raw.len()))
    };
    let tcp =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| err(format!("connect: {e}")))?;
    let socket = Deadlined { tcp, deadline };
    let mut stream: Box<dyn ReadWrite> = if tls {
        let config = crate::tls::edge_check().map_err(&err)?;
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| err(format!("`{host}` is no TLS server name: {e}")))?;
        let conn =
            rustls::ClientConnection::new(config, name).map_err(|e| err(format!("TLS: {e}")))?;
        Box::new(rustls::StreamOwned::new(conn, socket))
    } else {
        Box::new(socket)
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: veza-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    // Under TLS, the first write runs the handshake: bounded by the deadline too.
    stream.write_all(req.as_bytes()).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => late(&[]),
        _ => err(format!("send: {e}")),
    })?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while (raw.len() as u64) < MAX_RESPONSE {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = (MAX_RESPONSE as usize).saturating_sub(raw.len());
                raw.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(late(&raw));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A TLS peer that closes without `close_notify` after its reply (HAProxy may):
            // the reply is whole when it parses.
            Err(e) if tls && e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(err(format!("read: {e}"))),
        }
    }
    parse_reply(&raw).ok_or_else(|| err(format!("malformed response ({} bytes)", raw.len())))
}

/// A byte stream both ways: plain TCP or TLS over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A TCP stream whose every read and write waits at most until `deadline` (`TimedOut`
/// once it passed): one deadline for the whole exchange, however many socket reads a
/// reply (or a TLS handshake and record) takes.
struct Deadlined {
    tcp: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    /// What is left of the deadline, or `TimedOut` once it passed.
    fn left(&self) -> std::io::Result<Duration> {
        self.deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(ErrorKind::TimedOut))
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

/// The requests the apply engine sends on its own: a slot's health probe on its loopback
/// address and the verification requests through the edge after a switch. The engine
/// takes it from its drivers so that tests can script the answers ([`fake::ScriptedProbe`]).
pub trait Probe: Sync {
    /// `GET path` on `addr` with a `Host:` header, bounded by `timeout` (as [`get`]);
    /// over TLS when `tls` (as [`get_tls`]).
    fn get(
        &self,
        addr: &str,
        host: &str,
        path: &str,
        timeout: Duration,
        tls: bool,
    ) -> impl Future<Output = Result<Reply, HttpError>> + Send;
}

/// The real probe: [`get`] over TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpProbe;

impl Probe for HttpProbe {
    async fn get(
        &self,
        addr: &str,
        host: &str,
        path: &str,
        timeout: Duration,
        tls: bool,
    ) -> Result<Reply, HttpError> {
        exchange(addr, host, path, timeout, tls)
    }
}

/// Parses a raw HTTP/1.x response (headers, then the body as sent).
pub fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Reply { status, headers, body: raw[split + 4..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a free loopback port for one connection: `serve` gets it and the first
    /// bytes read from it (the request). Returns the address and the server's thread.
    fn serve_once<T: Send + 'static>(
        serve: impl FnOnce(std::net::TcpStream, Vec<u8>) -> T + Send + 'static,
    ) -> (String, std::thread::JoinHandle<T>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            serve(s, buf[..n].to_vec())
        });
        (addr, server)
    }

    /// A self-signed certificate for `edge.test` (valid until 2126) and its key, as an
    /// edge's `tls.cert_dir` would hold them.
    const EDGE_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBlDCCATugAwIBAgIUNGoXBKZeW3l+ch9KmKDjtNjjssAwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJZWRnZS50ZXN0MCAXDTI2MTIwNzE4MjExMVoYDzIxMjYxMTEz
MTgyMTExWjAUMRIwEAYDVQQDDAllZGdlLnRlc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQbd2/Ids1T6+4urEZ8LbyCXHztOGxfsg1gUjqu6Jyq4q6xgga25smx
m3lKI97tZDj1Br8S181Qm2ZGj+hme9Ojo2kwZzAdBgNVHQ4EFgQU1mGCzECfZnL1
ZFc3G7Yl9QFR5n8wHwYDVR0jBBgwFoAU1mGCzECfZnL1ZFc3G7Yl9QFR5n8wDwYD
VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALggllZGdlLnRlc3QwCgYIKoZIzj0EAwID
RwAwRAIgJKKLQZDSvh/DZuntZkWajMdDJ8YbdBCcy5piL9EQTJMCIDp3XQS77OGt
8JgEoth6i7r/EvafON5J/DE6ROnHXR+h
-----END CERTIFICATE-----
";
    const EDGE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgK5HC31cVTnEtBhdT
ox1QCaL/zqXpRRb9MGLZxNiJCo2hRANCAAQbd2/Ids1T6+4urEZ8LbyCXHztOGxf
sg1gUjqu6Jyq4q6xgga25smxm3lKI97tZDj1Br8S181Qm2ZGj+hme9Oj
-----END PRIVATE KEY-----
";

    /// A TLS server on a free loopback port for one connection: answers `reply` after
    /// reading the request's head, and returns the SNI name the client sent.
    fn serve_tls_once(reply: &'static str) -> (String, std::thread::JoinHandle<Option<String>>) {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(EDGE_CERT.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(EDGE_KEY.as_bytes()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (tcp, _) = l.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return None,
                }
            }
            tls.write_all(reply.as_bytes()).ok()?;
            tls.conn.send_close_notify();
            tls.flush().ok()?;
            tls.conn.server_name().map(str::to_string)
        });
        (addr, server)
    }

    /// An edge that terminates TLS: the check reaches it over TLS (the host name as SNI,
    /// its self-signed certificate accepted), and plain HTTP to it gets no reply.
    #[test]
    fn a_check_over_tls_reaches_an_edge_with_its_own_certificate() {
        let (addr, server) =
            serve_tls_once("HTTP/1.1 200 OK\r\nX-Release: r2\r\nContent-Length: 2\r\n\r\nok");
        let r = get_tls(&addr, "edge.test", "/", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.headers.get("x-release").map(String::as_str)), (200, Some("r2")));
        assert_eq!(r.body, b"ok");
        assert_eq!(server.join().unwrap().as_deref(), Some("edge.test"), "SNI");

        let (addr, _server) = serve_tls_once("HTTP/1.1 200 OK\r\n\r\n");
        let e = get(&addr, "edge.test", "/", Duration::from_millis(800)).unwrap_err();
        assert!(e.to_string().starts_with(&format!("GET http://{addr}/ ")), "{e}");
        let e = get_tls("127.0.0.1:1", "edge.test", "/", Duration::from_millis(800)).unwrap_err();
        assert!(
            e.to_string().starts_with("GET https://127.0.0.1:1/ (Host: edge.test): connect"),
            "{e}"
        );
    }

    /// A peer that accepts the connection and never answers the TLS handshake: the check
    /// fails at its deadline, not never.
    #[test]
    fn a_tls_handshake_never_answered_fails_at_the_deadline() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(3));
            drop(s);
        });
        let started = Instant::now();
        let e = get_tls(&addr, "edge.test", "/", Duration::from_millis(500)).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
        assert!(e.to_string().contains("no complete reply within 500ms"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn parses_status_headers_and_body() {
        let r = parse_reply(
            b"HTTP/1.1 503 Service Unavailable\r\nX-Release: abc\r\nContent-Length: 2\r\n\r\nno",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.headers.get("x-release").map(String::as_str), Some("abc"));
        assert_eq!(r.body, b"no");
        assert_eq!(parse_reply(b"garbage"), None);
        assert_eq!(parse_reply(b"SSH-2.0\r\n\r\n"), None);
    }

    #[test]
    fn a_closed_port_is_an_error_naming_the_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let e = get(&addr, "x", "/health", Duration::from_millis(500)).unwrap_err();
        assert!(e.to_string().contains(&addr), "{e}");
    }

    #[test]
    fn a_slow_dripping_server_fails_the_probe_at_its_deadline() {
        // One byte every 200 ms, at most 40 of them (8 s): each read sees data well within
        // any per-read timeout, so only a deadline for the whole exchange stops it.
        let (addr, server) = serve_once(|mut s, _| {
            for b in b"HTTP/1.1 200 OK\r\nX-Release: r1\r\nContent-Length: 2\r\n\r\nok"
                .iter()
                .cycle()
                .take(40)
            {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let started = Instant::now();
        let e = get(&addr, "x", "/health", Duration::from_secs(1)).unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(1500), "the probe took {took:?}: {e}");
        assert!(e.to_string().contains("no complete reply within 1s"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn talks_to_a_real_server() {
        let (addr, t) = serve_once(|mut s, req| {
            s.write_all(b"HTTP/1.1 200 OK\r\nX-Release: r1\r\n\r\nok").unwrap();
            String::from_utf8_lossy(&req).to_string()
        });
        let r = get(&addr, "demo.localhost", "/health", Duration::from_secs(2)).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        let req = t.join().unwrap();
        assert!(req.starts_with("GET /health HTTP/1.1\r\nHost: demo.localhost\r\n"), "{req}");
    }
}
