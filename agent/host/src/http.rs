//! A minimal HTTP/1.1 client for the agent's own probes: slot health checks and
//! verification requests through the edge. Plain TCP to the addresses the manifests
//! name (loopback in tests); bounded in time and size. [`Probe`] is that client as the
//! apply engine takes it from its drivers; [`fake`] scripts its answers for tests.

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
#[error("GET http://{addr}{path} (Host: {host}): {detail}")]
pub struct HttpError {
    /// Address.
    pub addr: String,
    /// Host header.
    pub host: String,
    /// Path.
    pub path: String,
    /// What went wrong.
    pub detail: String,
}

/// `GET path` on `addr` (`host:port`) with a `Host:` header and optional cookie.
/// `0.0.0.0` and `[::]` are probed on loopback. `timeout` bounds the whole exchange
/// (connect, request, headers and body): an app that answers one byte at a time cannot
/// stall a sync or a shutdown.
pub fn get(addr: &str, host: &str, path: &str, timeout: Duration) -> Result<Reply, HttpError> {
    let err = |detail: String| HttpError {
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
    // What is left of the deadline, or `None` once it passed.
    let left = || deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero());
    let mut stream =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| err(format!("connect: {e}")))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: veza-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .set_write_timeout(Some(left().ok_or_else(|| late(&[]))?))
        .map_err(|e| err(e.to_string()))?;
    stream.write_all(req.as_bytes()).map_err(|e| err(format!("send: {e}")))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while (raw.len() as u64) < MAX_RESPONSE {
        let Some(wait) = left() else { return Err(late(&raw)) };
        stream.set_read_timeout(Some(wait)).map_err(|e| err(e.to_string()))?;
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
            Err(e) => return Err(err(format!("read: {e}"))),
        }
    }
    parse_reply(&raw).ok_or_else(|| err(format!("malformed response ({} bytes)", raw.len())))
}

/// The requests the apply engine sends on its own: a slot's health probe on its loopback
/// address and the verification requests through the edge after a switch. The engine
/// takes it from its drivers so that tests can script the answers ([`fake::ScriptedProbe`]).
pub trait Probe: Sync {
    /// `GET path` on `addr` with a `Host:` header, bounded by `timeout` (as [`get`]).
    fn get(
        &self,
        addr: &str,
        host: &str,
        path: &str,
        timeout: Duration,
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
    ) -> Result<Reply, HttpError> {
        get(addr, host, path, timeout)
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
