//! Tiny HTTP/1.1 app that tests deploy as a release artifact.
//!
//! `veza-testapp --listen 127.0.0.1:8080 --release <id> [--unhealthy-file PATH] [--broken]`
//!
//! - `GET /health` answers `200 ok`, or `503 unhealthy` while the unhealthy file exists or
//!   when started with `--broken`;
//! - any other path answers `200` with `release=<id> path=<path>\n`.
//!
//! When `TESTAPP_REQUIRE_ENV` names a variable, the app refuses to start unless that
//! variable is set and non-empty (as an app that needs its `DATABASE_URL`), and every
//! non-health reply adds `env-sha256=<hex>`: the SHA-256 of the value, so a test proves
//! the app read its secret without the value ever being printed.
//!
//! Every reply carries `X-Release: <id>`, `Content-Length` and `Connection: close`.
//! One thread per connection, bounded in number, with a bounded request head and read
//! timeouts. It never forks: tests detach it with `setsid ... &`. It writes nothing but
//! errors on stderr.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Largest request head read; anything longer gets `431`.
const MAX_HEAD: usize = 16 * 1024;
/// Connections served at once; beyond that a connection gets `503` right away.
const MAX_CONNECTIONS: usize = 512;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str =
    "usage: veza-testapp --listen ADDR:PORT --release ID [--unhealthy-file PATH] [--broken]";

struct Config {
    listen: String,
    release: String,
    unhealthy_file: Option<PathBuf>,
    broken: bool,
    /// SHA-256 (hex) of the required variable's value, when one is required.
    env_sha256: Option<String>,
}

/// Reads the variable `TESTAPP_REQUIRE_ENV` names: `Ok(None)` when none is required.
fn required_env() -> Result<Option<String>, String> {
    use sha2::{Digest, Sha256};
    let Ok(name) = std::env::var("TESTAPP_REQUIRE_ENV") else { return Ok(None) };
    match std::env::var(&name) {
        Ok(v) if !v.is_empty() => {
            Ok(Some(Sha256::digest(v.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()))
        }
        _ => Err(format!("{name} is not set: refusing to start without it")),
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut listen = None;
    let mut release = None;
    let mut unhealthy_file = None;
    let mut broken = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => listen = Some(value("--listen")?),
            "--release" => release = Some(value("--release")?),
            "--unhealthy-file" => unhealthy_file = Some(PathBuf::from(value("--unhealthy-file")?)),
            "--broken" => broken = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let release = release.ok_or("--release is required")?;
    if release.is_empty() || release.bytes().any(|b| b.is_ascii_control()) {
        return Err("--release must be non-empty printable text".to_string());
    }
    Ok(Config {
        listen: listen.ok_or("--listen is required")?,
        release,
        unhealthy_file,
        broken,
        env_sha256: None,
    })
}

fn main() -> ExitCode {
    let mut config = match parse_args(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("veza-testapp: {msg}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match required_env() {
        Ok(hash) => config.env_sha256 = hash,
        Err(msg) => {
            eprintln!("veza-testapp: {msg}");
            return ExitCode::from(1);
        }
    }
    let listener = match TcpListener::bind(&config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("veza-testapp: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let config = Arc::new(config);
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = respond(&stream, &config.release, 503, "busy\n", false);
            continue;
        }
        let config = Arc::clone(&config);
        let guard = Arc::clone(&active);
        let spawned = std::thread::Builder::new().spawn(move || {
            serve(stream, &config);
            guard.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    ExitCode::SUCCESS
}

/// Reads one request head and answers it.
fn serve(mut stream: TcpStream, config: &Config) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let head = match read_head(&mut stream) {
        Ok(Some(head)) => head,
        Ok(None) => {
            let _ = respond(&stream, &config.release, 431, "request head too large\n", false);
            return;
        }
        Err(_) => return,
    };
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        let _ = respond(&stream, &config.release, 400, "bad request\n", false);
        return;
    };
    let head_only = method == "HEAD";
    let path = target.split('?').next().unwrap_or(target);
    let (status, body) = if path == "/health" {
        let unhealthy = config.broken || config.unhealthy_file.as_ref().is_some_and(|f| f.exists());
        if unhealthy { (503, "unhealthy".to_string()) } else { (200, "ok".to_string()) }
    } else {
        let env =
            config.env_sha256.as_ref().map(|h| format!(" env-sha256={h}")).unwrap_or_default();
        (200, format!("release={} path={}{env}\n", config.release, target))
    };
    let _ = respond(&stream, &config.release, status, &body, head_only);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Reads until the blank line ending the head. `Ok(None)` when it exceeds `MAX_HEAD`.
fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

fn respond(
    mut stream: &TcpStream,
    release: &str,
    status: u16,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut reply = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         X-Release: {release}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        reply.push_str(body);
    }
    stream.write_all(reply.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter().map(|s| s.to_string()).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn parses_all_flags() {
        let c = parse_args(args(&[
            "--listen",
            "127.0.0.1:1",
            "--release",
            "r1",
            "--unhealthy-file",
            "/x",
            "--broken",
        ]))
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1");
        assert_eq!(c.release, "r1");
        assert_eq!(c.unhealthy_file, Some(PathBuf::from("/x")));
        assert!(c.broken);
    }

    #[test]
    fn rejects_missing_and_unknown_flags() {
        assert!(parse_args(args(&["--listen", "127.0.0.1:1"])).is_err());
        assert!(parse_args(args(&["--release", "r"])).is_err());
        assert!(parse_args(args(&["--release", "r", "--listen", "a", "--x"])).is_err());
        assert!(parse_args(args(&["--release"])).is_err());
    }

    #[test]
    fn serves_health_and_release_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = std::env::temp_dir().join(format!("veza-testapp-{}", std::process::id()));
        let flag = dir.with_extension("down");
        let config = Arc::new(Config {
            listen: addr.to_string(),
            release: "rel-1".into(),
            unhealthy_file: Some(flag.clone()),
            broken: false,
            env_sha256: Some("ab12".into()),
        });
        let server_config = Arc::clone(&config);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let c = Arc::clone(&server_config);
                std::thread::spawn(move || serve(s, &c));
            }
        });
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let health = get("/health");
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok"), "{health}");
        assert!(health.contains("Content-Length: 2\r\n"), "{health}");
        assert!(health.contains("Connection: close\r\n"), "{health}");
        let root = get("/a/b?q=1");
        assert!(root.contains("X-Release: rel-1\r\n"), "{root}");
        assert!(root.ends_with("\r\n\r\nrelease=rel-1 path=/a/b?q=1 env-sha256=ab12\n"), "{root}");
        std::fs::write(&flag, b"").unwrap();
        let down = get("/health");
        std::fs::remove_file(&flag).unwrap();
        assert!(down.starts_with("HTTP/1.1 503 "), "{down}");
    }
}
