//! The test app (`veza-testapp`) as tests use it: its binary, release artifacts built
//! from it (healthy and broken), deployment into a container, a copy running on the
//! host, a minimal HTTP/1.1 GET client (process liveness checks live in [`crate::proc`]).
//!
//! How the binary is found: a library cannot use `env!("CARGO_BIN_EXE_…")`, and a
//! dev-dependency on a binary-only crate does not build its binary. So the first call to
//! [`testapp_binary`] runs `cargo build -p veza-testapp` once per test process, with the
//! same cargo (`$CARGO`, set by `cargo test`) and profile as the running test, and takes
//! the executable path from cargo's JSON messages. `cargo test` holds no build lock while
//! tests run, so this nested build does not block; when the binary is fresh it is a
//! no-op of a few hundred milliseconds. `VEZA_TESTAPP_BIN=/path` skips the build.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use veza_host::process::Cmd;

use crate::incus::TestContainer;
pub use crate::proc::{kill_pid, process_alive, process_alive_since};

/// Path of the `veza-testapp` binary, built on first use (see the module docs).
pub fn testapp_binary() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let outcome = BIN.get_or_init(|| build_testapp().map_err(|e| format!("{e:#}")));
    outcome.clone().map_err(|e| anyhow!("building veza-testapp: {e}"))
}

fn build_testapp() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("VEZA_TESTAPP_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("VEZA_TESTAPP_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testapp/Cargo.toml");
    let out = Cmd::new(cargo)
        .args(["build", "--quiet", "--message-format=json", "-p", "veza-testapp"])
        .args(["--profile", &current_profile()])
        .arg("--manifest-path")
        .arg(manifest)
        .timeout(Duration::from_secs(900))
        .run_stdout()?;
    out.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| {
            msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "veza-testapp"
        })
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo reported no veza-testapp executable")
}

/// The cargo profile the running test was built with, from its path
/// (`target/<profile dir>/deps/<test>` or `…/examples/<example>`): `debug` is the `dev`
/// profile.
fn current_profile() -> String {
    let dir = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        let name = deps.file_name()?;
        let profile_dir = if name == "deps" || name == "examples" { deps.parent()? } else { deps };
        Some(profile_dir.file_name()?.to_string_lossy().into_owned())
    });
    match dir.as_deref() {
        None | Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
    }
}

/// A release artifact for `release_id`: a `.tar.gz` holding `veza-testapp` and
/// `start.sh`, and the sha256 (hex) of the tarball. `/health` answers 200.
///
/// `start.sh` runs the app in the foreground on `$VEZA_LISTEN` (default
/// `127.0.0.1:8080`); `/health` turns 503 while `$VEZA_UNHEALTHY_FILE` (default
/// `<release dir>/unhealthy`) exists.
pub fn release_artifact(release_id: &str) -> Result<(Vec<u8>, String)> {
    artifact(release_id, false)
}

/// Like [`release_artifact`], but the app's `/health` always answers 503.
pub fn broken_release_artifact(release_id: &str) -> Result<(Vec<u8>, String)> {
    artifact(release_id, true)
}

/// Like [`release_artifact`], with `extra` executable files `(name, text)` beside the app
/// (a migration tool, say).
pub fn release_artifact_with(
    release_id: &str,
    extra: &[(&str, &str)],
) -> Result<(Vec<u8>, String)> {
    artifact_with(release_id, false, extra)
}

fn artifact(release_id: &str, broken: bool) -> Result<(Vec<u8>, String)> {
    artifact_with(release_id, broken, &[])
}

fn artifact_with(
    release_id: &str,
    broken: bool,
    extra: &[(&str, &str)],
) -> Result<(Vec<u8>, String)> {
    if release_id.is_empty()
        || !release_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        bail!("release id {release_id:?} must be non-empty [A-Za-z0-9._-]");
    }
    let bin = testapp_binary()?;
    let dir = tempfile::tempdir()?;
    let app = dir.path().join("veza-testapp");
    std::fs::copy(&bin, &app).with_context(|| format!("copying {}", bin.display()))?;
    let start = dir.path().join("start.sh");
    std::fs::write(&start, start_script(release_id, broken))?;
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![app, start];
    for (name, text) in extra {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        files.push(path);
    }
    for f in &files {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755))?;
    }
    let tarball = dir.path().join("release.tar.gz");
    Cmd::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-czf"])
        .arg(&tarball)
        .arg("-C")
        .arg(dir.path())
        .args(["veza-testapp", "start.sh"])
        .args(extra.iter().map(|(name, _)| *name))
        .timeout(Duration::from_secs(60))
        .run()?;
    let bytes = std::fs::read(&tarball)?;
    let sha = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, sha))
}

fn start_script(release_id: &str, broken: bool) -> String {
    let broken_flag = if broken { " --broken" } else { "" };
    format!(
        "#!/bin/sh\n\
         # veza-testapp release {release_id}{broken_note}: runs in the foreground.\n\
         dir=$(cd \"$(dirname \"$0\")\" && pwd)\n\
         exec \"$dir/veza-testapp\" --listen \"${{VEZA_LISTEN:-127.0.0.1:8080}}\" \\\n  \
         --release '{release_id}' --unhealthy-file \"${{VEZA_UNHEALTHY_FILE:-$dir/unhealthy}}\"{broken_flag}\n",
        broken_note = if broken { " (broken: /health is 503)" } else { "" },
    )
}

/// Unpacks `tarball` into `dir` inside `container` and starts its `start.sh` detached
/// (own session, output to `<dir>/app.log`) listening on `127.0.0.1:<port>`; waits
/// until the port listens.
pub fn deploy_release(
    container: &TestContainer,
    tarball: &[u8],
    dir: &str,
    port: u16,
) -> Result<()> {
    let remote_tar = format!("/tmp/release-{port}.tar.gz");
    container.push_bytes(tarball, &remote_tar, 0o644)?;
    container.sh(&format!(
        "mkdir -p '{dir}' && tar -xzf '{remote_tar}' -C '{dir}' && rm -f '{remote_tar}' && \
         cd '{dir}' && VEZA_LISTEN=127.0.0.1:{port} setsid sh ./start.sh \
         </dev/null >'{dir}/app.log' 2>&1 &"
    ))?;
    container.wait_listening(port, Duration::from_secs(10)).with_context(|| {
        let log = container.exec(&["cat", &format!("{dir}/app.log")]).map(|o| o.stdout_str());
        format!("release in {dir} did not start; app.log: {}", log.unwrap_or_default())
    })
}

/// A `veza-testapp` running on the host on `127.0.0.1:<port>`, killed on drop.
#[derive(Debug)]
pub struct HostApp {
    pid: u32,
    port: u16,
    dir: tempfile::TempDir,
}

impl HostApp {
    /// Starts release `release_id` on `127.0.0.1:port` (broken: `/health` is 503) and
    /// waits until it answers.
    pub fn start(release_id: &str, port: u16, broken: bool) -> Result<HostApp> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Cmd::new(testapp_binary()?)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--release", release_id])
            .arg("--unhealthy-file")
            .arg(dir.path().join("unhealthy"));
        if broken {
            cmd = cmd.arg("--broken");
        }
        let log = dir.path().join("app.log");
        let pid = cmd.spawn_daemon(Some(&log))?;
        let app = HostApp { pid, port, dir };
        let start = Instant::now();
        while http_get(("127.0.0.1", port), "/health").is_err() {
            if !process_alive(pid) || start.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("veza-testapp on port {port} did not start: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(app)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes `/health` answer 503 (`true`) or 200 (`false`).
    pub fn set_unhealthy(&self, unhealthy: bool) -> Result<()> {
        let flag = self.dir.path().join("unhealthy");
        if unhealthy {
            std::fs::write(flag, b"")?;
        } else if flag.exists() {
            std::fs::remove_file(flag)?;
        }
        Ok(())
    }
}

impl Drop for HostApp {
    fn drop(&mut self) {
        kill_pid(self.pid, "TERM", Duration::from_secs(2));
    }
}

/// An HTTP reply: status, headers (names lower-cased) and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers_named(name).into_iter().next()
    }

    /// Every header named `name` (case-insensitive), in order (`Set-Cookie` may repeat).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// `GET path` over a fresh connection (`Connection: close`), 5 s connect and 10 s read
/// limits, body up to 1 MiB.
pub fn http_get(addr: impl ToSocketAddrs, path: &str) -> Result<HttpReply> {
    let addr: SocketAddr =
        addr.to_socket_addrs()?.next().ok_or_else(|| anyhow!("address resolves to nothing"))?;
    let limits = (Duration::from_secs(5), Duration::from_secs(10));
    get_over(addr, &addr.to_string(), path, None, limits)
}

/// `GET path` to `addr` as `Host: host` (with `Cookie: cookie` when given) over a fresh
/// connection (`Connection: close`); connect, write and each read bounded by `timeout`,
/// body up to 1 MiB.
pub fn http_get_as(
    addr: SocketAddr,
    host: &str,
    path: &str,
    cookie: Option<&str>,
    timeout: Duration,
) -> Result<HttpReply> {
    get_over(addr, host, path, cookie, (timeout, timeout))
}

/// One GET; `limits` are the connect and the read/write timeouts.
fn get_over(
    addr: SocketAddr,
    host: &str,
    path: &str,
    cookie: Option<&str>,
    (connect, io): (Duration, Duration),
) -> Result<HttpReply> {
    let mut stream = TcpStream::connect_timeout(&addr, connect)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(io))?;
    stream.set_write_timeout(Some(io))?;
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{cookie}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw).with_context(|| format!("reading from {addr}"))?;
    parse_reply(&raw).with_context(|| format!("reply from {addr}{path}"))
}

fn parse_reply(raw: &[u8]) -> Result<HttpReply> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete HTTP head in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
    Ok(HttpReply { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_reply() {
        let r = parse_reply(b"HTTP/1.1 503 Service Unavailable\r\nX-Release: a\r\n\r\nno").unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-release"), Some("a"));
        assert_eq!(r.body, "no");
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn start_script_passes_release_and_broken_flag() {
        let s = start_script("r-1", true);
        assert!(s.contains("--release 'r-1'"), "{s}");
        assert!(s.trim_end().ends_with("--broken"), "{s}");
        assert!(!start_script("r-1", false).contains("--broken"));
    }
}
