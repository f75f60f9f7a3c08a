//! A tiny smart-HTTP git server on 127.0.0.1 for tests: `git http-backend` as CGI.
//!
//! One thread accepts on an ephemeral port, one thread per connection parses a bounded
//! HTTP/1.1 request (headers ≤ 64 KiB, body ≤ 64 MiB, `Content-Length` or chunked),
//! runs `git-http-backend` (found via `git --exec-path`) through [`Cmd`] with the CGI
//! environment and the body on stdin, and relays its `Status:` and headers. Gzip request
//! bodies are passed through as `HTTP_CONTENT_ENCODING` (http-backend inflates them);
//! `Git-Protocol` as `HTTP_GIT_PROTOCOL` (protocol v2). Each response closes the connection.
//!
//! Fault modes for failure tests: [`Fault::Stall`] accepts and never answers,
//! [`Fault::Down`] accepts and closes at once, [`Fault::Error500`] answers 500.
//! [`GitHttpServer::require_basic_auth`] makes it answer `401` with a `Basic` challenge
//! to any request without the right `Authorization` header, as Forgejo does for a
//! private repository. The server stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use veza_host::process::Cmd;

const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
const CGI_TIMEOUT: Duration = Duration::from_secs(60);

/// How the server misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve normally.
    None,
    /// Accept connections and never answer (until the server stops).
    Stall,
    /// Accept connections and close them immediately.
    Down,
    /// Answer every request with `500 Internal Server Error`.
    Error500,
}

struct Shared {
    root: PathBuf,
    backend: PathBuf,
    stop: AtomicBool,
    fault: Mutex<Fault>,
    /// `Basic <base64(user:token)>` every request must carry, when set.
    auth: Mutex<Option<String>>,
    log: Mutex<Vec<String>>,
    /// Bytes received (request heads and bodies) and sent (responses), for the bench's
    /// forge-side cost of a poll.
    received: AtomicU64,
    sent: AtomicU64,
}

/// A running smart-HTTP server; stops on drop.
pub struct GitHttpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for GitHttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GitHttpServer(http://{} → {})", self.addr, self.shared.root.display())
    }
}

impl GitHttpServer {
    /// Serves every repository under `project_root` at `http://127.0.0.1:<port>/<name>`.
    pub fn start(project_root: &Path) -> Result<GitHttpServer> {
        let exec_path = Cmd::new("git").arg("--exec-path").run_stdout()?;
        let backend = PathBuf::from(exec_path.trim()).join("git-http-backend");
        if !backend.exists() {
            bail!("git-http-backend not found at {}", backend.display());
        }
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        listener.set_nonblocking(true).context("set_nonblocking")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            root: project_root.to_path_buf(),
            backend,
            stop: AtomicBool::new(false),
            fault: Mutex::new(Fault::None),
            auth: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("git-http-accept".into())
            .spawn(move || accept_loop(&listener, &s))
            .context("spawn accept thread")?;
        Ok(GitHttpServer { addr, shared, accept: Some(accept) })
    }

    /// `http://127.0.0.1:<port>/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{}", self.addr, repo.trim_start_matches('/'))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault mode for new requests.
    pub fn set_fault(&self, fault: Fault) {
        if let Ok(mut f) = self.shared.fault.lock() {
            *f = fault;
        }
    }

    /// From now on, requests must authenticate as `user` with `token` (HTTP Basic);
    /// `None` serves everyone again.
    pub fn require_basic_auth(&self, credentials: Option<(&str, &str)>) {
        use base64::Engine as _;
        let expected = credentials.map(|(user, token)| {
            let pair = format!("{user}:{token}");
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        });
        if let Ok(mut a) = self.shared.auth.lock() {
            *a = expected;
        }
    }

    /// `METHOD /path?query ENCODING AUTH` of every request seen so far, AUTH being
    /// `auth=none`, `auth=ok` or `auth=wrong` (the credentials themselves are not logged).
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Bytes received and sent so far: request heads and bodies (a chunked body counted
    /// as decoded), and whole responses.
    pub fn bytes(&self) -> (u64, u64) {
        (self.shared.received.load(Ordering::SeqCst), self.shared.sent.load(Ordering::SeqCst))
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A URL on 127.0.0.1 where nothing listens (connection refused).
pub fn refused_url(repo: &str) -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(format!("http://{addr}/{repo}"))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let s = Arc::clone(shared);
                let _ = std::thread::Builder::new()
                    .name("git-http-conn".into())
                    .spawn(move || handle_connection(stream, &s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn handle_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let fault = shared.fault.lock().map(|f| *f).unwrap_or(Fault::None);
    match fault {
        Fault::Stall => {
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Fault::Down => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        Fault::None | Fault::Error500 => {}
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let response = match read_request(BufReader::new(stream), &mut writer) {
        Ok(req) => {
            shared.received.fetch_add((req.head_bytes + req.body.len()) as u64, Ordering::SeqCst);
            let expected = shared.auth.lock().ok().and_then(|a| a.clone());
            let auth = match (req.header("Authorization"), &expected) {
                (None, _) => "auth=none",
                (Some(got), Some(want)) if got == want => "auth=ok",
                (Some(_), None) => "auth=ok",
                (Some(_), Some(_)) => "auth=wrong",
            };
            if let Ok(mut log) = shared.log.lock() {
                let encoding = req.header("Content-Encoding").unwrap_or("");
                log.push(format!("{} {}?{} {encoding} {auth}", req.method, req.path, req.query));
            }
            if expected.is_some() && auth != "auth=ok" {
                unauthorized()
            } else if fault == Fault::Error500 {
                plain(500, "Internal Server Error", "injected fault\n")
            } else {
                run_backend(shared, &req).unwrap_or_else(|e| {
                    plain(500, "Internal Server Error", &format!("http-backend: {e:#}\n"))
                })
            }
        }
        Err(e) => plain(400, "Bad Request", &format!("{e:#}\n")),
    };
    if writer.write_all(&response).is_ok() {
        shared.sent.fetch_add(response.len() as u64, Ordering::SeqCst);
    }
    let _ = writer.flush();
    let _ = writer.shutdown(std::net::Shutdown::Both);
}

struct Request {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    head_bytes: usize,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn read_request(mut r: BufReader<TcpStream>, w: &mut TcpStream) -> Result<Request> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = r.by_ref().take(MAX_HEADER_BYTES as u64 + 1).read_until(b'\n', &mut head)?;
        if n == 0 {
            bail!("connection closed inside the request head");
        }
        if head.len() > MAX_HEADER_BYTES {
            bail!("request head larger than {MAX_HEADER_BYTES} bytes");
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let head_bytes = head.len();
    let text = String::from_utf8(head).context("request head is not UTF-8")?;
    let mut lines = text.lines();
    let request_line = lines.next().context("empty request")?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line `{request_line}`");
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        head_bytes,
        body: Vec::new(),
    };
    if req.header("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    if req.header("Transfer-Encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        req.body = read_chunked(&mut r)?;
    } else if let Some(len) = req.header("Content-Length") {
        let len: usize = len.parse().context("bad Content-Length")?;
        if len > MAX_BODY_BYTES {
            bail!("request body of {len} bytes is above the {MAX_BODY_BYTES} byte limit");
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).context("short request body")?;
        req.body = body;
    }
    Ok(req)
}

fn read_chunked(r: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        r.by_ref().take(1024).read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size line `{}`", line.trim()))?;
        if size == 0 {
            // Trailers until the blank line.
            loop {
                let mut t = String::new();
                let n = r.by_ref().take(1024).read_line(&mut t)?;
                if n == 0 || t == "\r\n" || t == "\n" {
                    break;
                }
            }
            return Ok(body);
        }
        if body.len() + size > MAX_BODY_BYTES {
            bail!("chunked request body above the {MAX_BODY_BYTES} byte limit");
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
    }
}

fn run_backend(shared: &Shared, req: &Request) -> Result<Vec<u8>> {
    let mut cmd = Cmd::new(&shared.backend)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &req.path)
        .env("QUERY_STRING", &req.query)
        .env("CONTENT_LENGTH", req.body.len().to_string())
        .stdin(req.body.clone())
        .timeout(CGI_TIMEOUT);
    if let Some(ct) = req.header("Content-Type") {
        cmd = cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(enc) = req.header("Content-Encoding") {
        cmd = cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(proto) = req.header("Git-Protocol") {
        cmd = cmd.env("HTTP_GIT_PROTOCOL", proto);
    }
    let out = cmd.output()?;
    parse_cgi(&out.stdout)
}

/// `401` with the challenge Forgejo sends for a private repository.
fn unauthorized() -> Vec<u8> {
    let body = "Unauthorized\n";
    format!(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"Gitea\"\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Turns CGI output (headers, blank line, body) into an HTTP/1.1 response.
fn parse_cgi(out: &[u8]) -> Result<Vec<u8>> {
    let (split, sep) = match (find(out, b"\r\n\r\n"), find(out, b"\n\n")) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => bail!("CGI output has no header block"),
    };
    let head = String::from_utf8_lossy(&out[..split]);
    let body = &out[split + sep..];
    let mut status = "200 OK".to_string();
    let mut headers = String::new();
    for line in head.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("Status") => status = v.trim().to_string(),
            Some(_) => {
                headers.push_str(line);
                headers.push_str("\r\n");
            }
            None => bail!("bad CGI header line `{line}`"),
        }
    }
    let mut resp = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(body);
    Ok(resp)
}

fn plain(code: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// HTTPS in front of a [`GitHttpServer`], as a forge behind a TLS proxy: real HAProxy
/// terminating TLS on 127.0.0.1 with a fresh self-signed certificate for `127.0.0.1`
/// (also the CA file a client must trust), passing requests on to the plain server.
pub struct TlsFront {
    haproxy: crate::Haproxy,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    /// Starts HAProxy with TLS on a free loopback port in front of `backend`.
    pub fn start(backend: SocketAddr) -> Result<TlsFront> {
        let dir = tempfile::Builder::new().prefix("veza-tls-front-").tempdir()?;
        let (cert, key) = crate::incus::self_signed(dir.path(), "127.0.0.1", Some("IP:127.0.0.1"))?;
        let bundle = dir.path().join("front.pem");
        let mut pem = std::fs::read(&cert)?;
        pem.extend(std::fs::read(&key)?);
        std::fs::write(&bundle, pem)?;
        let port = crate::free_port()?;
        let config = format!(
            "global\n    maxconn 200\n\ndefaults\n    mode http\n    timeout connect 5s\n    \
             timeout client 60s\n    timeout server 60s\n\nfrontend tls\n    \
             bind 127.0.0.1:{port} ssl crt {bundle}\n    default_backend git\n\n\
             backend git\n    server git {backend}\n",
            bundle = bundle.display(),
        );
        let haproxy = crate::Haproxy::start(&config)?;
        Ok(TlsFront { haproxy, port, ca: cert, _dir: dir })
    }

    /// `https://127.0.0.1:<port>/<repo>`.
    pub fn url(&self, repo: &str) -> String {
        format!("https://127.0.0.1:{}/{}", self.port, repo.trim_start_matches('/'))
    }

    /// The certificate to trust (PEM).
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// The HAProxy doing TLS.
    pub fn haproxy(&self) -> &crate::Haproxy {
        &self.haproxy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_status_and_headers_are_relayed() {
        let resp =
            parse_cgi(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope").unwrap();
        let text = String::from_utf8(resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.ends_with("\r\n\r\nnope"));
        let ok = String::from_utf8(parse_cgi(b"Content-Type: x\n\nbody").unwrap()).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(parse_cgi(b"no header end").is_err());
    }
}
