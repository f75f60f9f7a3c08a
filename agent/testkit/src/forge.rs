//! A stand-in for Forgejo's commit status endpoint, since no Forgejo server can run here:
//! `POST /api/v1/repos/{owner}/{repo}/statuses/{sha}` checked as Forgejo's published API
//! (swagger `v1_json.tmpl`, operation `repoCreateStatus`) says: the method and path, a
//! 40-hex sha, `Authorization: token …`, a JSON body whose keys are those of
//! `CreateStatusOption` (`context`, `description`, `state`, `target_url`, all strings) and
//! whose `state` is a `CommitStatusState`. A valid request gets `201 Created`; it can be
//! told to answer 500 instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

/// One request as received, and what was wrong with it (empty: valid).
#[derive(Debug, Clone)]
pub struct Received {
    /// `METHOD PATH`.
    pub line: String,
    /// The parsed body, if JSON.
    pub body: serde_json::Value,
    /// Violations of the spec.
    pub violations: Vec<String>,
}

/// The stand-in server, stopped on drop.
pub struct StatusServer {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    fail: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

const STATES: [&str; 5] = ["pending", "success", "error", "failure", "warning"];
const KEYS: [&str; 4] = ["context", "description", "state", "target_url"];

impl StatusServer {
    /// Listens on 127.0.0.1 for `owner/repo`, accepting `token`.
    pub fn start(repo: &str, token: &str) -> Result<StatusServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let fail = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, f, s) = (received.clone(), fail.clone(), stop.clone());
        let prefix = format!("/api/v1/repos/{repo}/statuses/");
        let auth = format!("token {token}");
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve(stream, &prefix, &auth, &r, f.load(Ordering::SeqCst));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(StatusServer { addr, received, fail, stop })
    }

    /// The API base to configure (`http://127.0.0.1:P/api/v1`).
    pub fn api_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// Answer 500 to every request from now on (`true`), or serve normally.
    pub fn set_failing(&self, failing: bool) {
        self.fail.store(failing, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    stream: TcpStream,
    prefix: &str,
    auth: &str,
    received: &Mutex<Vec<Received>>,
    fail: bool,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let len: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; len.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    let mut violations = Vec::new();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "POST" {
        violations.push(format!("method {method}, the spec says POST"));
    }
    match path.strip_prefix(prefix) {
        Some(sha) if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        _ => violations.push(format!("path {path} is not {prefix}{{sha}}")),
    }
    if header("authorization").as_deref() != Some(auth) {
        violations.push("no valid `Authorization: token …` header".to_string());
    }
    if !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        violations.push("Content-Type is not application/json".to_string());
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match json.as_object() {
        None => violations.push("the body is not a JSON object".to_string()),
        Some(o) => {
            for (k, v) in o {
                if !KEYS.contains(&k.as_str()) {
                    violations.push(format!("`{k}` is not a field of CreateStatusOption"));
                }
                if !v.is_string() {
                    violations.push(format!("`{k}` is not a string"));
                }
            }
            if !o.get("state").and_then(|s| s.as_str()).is_some_and(|s| STATES.contains(&s)) {
                violations.push("`state` is not a CommitStatusState".to_string());
            }
        }
    }
    let (code, text) = match (fail, violations.is_empty()) {
        (true, _) => (500, "Internal Server Error"),
        (false, true) => (201, "Created"),
        (false, false) if violations.iter().any(|v| v.contains("Authorization")) => {
            (401, "Unauthorized")
        }
        (false, false) => (400, "Bad Request"),
    };
    if let Ok(mut r) = received.lock() {
        r.push(Received { line: format!("{method} {path}"), body: json.clone(), violations });
    }
    let reply = if code == 201 { json.to_string() } else { "{}".to_string() };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()?;
    Ok(())
}
