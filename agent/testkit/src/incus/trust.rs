//! incusd's trust store for tests of its HTTPS listener: a client certificate it trusts
//! for the life of a [`TrustedClient`] (named `vt-https-<pid>-<unix seconds>`, so
//! [`super::sweep_stale`] removes it once that pid is gone), and the listener's address.

use std::path::Path;

use anyhow::{Context, Result, bail};
use veza_host::process::Cmd;

use super::{SETUP_HINT, incus, require_incus, unix_now};

/// A client certificate incusd trusts, for its HTTPS listener (`core.https_address`,
/// opened on loopback by tests/host/setup): a fresh self-signed EC certificate in a
/// temporary directory, added to incusd's trust store as `vt-https-<pid>-<unix seconds>`
/// and removed from it by fingerprint on drop (or by [`sweep_stale`] once that pid is
/// gone).
pub struct TrustedClient {
    /// `https://127.0.0.1:PORT` (a wildcard listener is reached on loopback).
    pub url: String,
    /// PEM client certificate.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// The server certificate to pin (`/var/lib/incus/server.crt`).
    pub server_cert: std::path::PathBuf,
    fingerprint: String,
    _dir: tempfile::TempDir,
}

impl TrustedClient {
    /// Makes a certificate and has incusd trust it.
    pub fn new() -> Result<TrustedClient> {
        require_incus()?;
        let url = https_endpoint()?;
        let dir = tempfile::Builder::new().prefix("veza-https-").tempdir()?;
        let (cert, key) = self_signed_certificate(dir.path(), "veza-agent-test")?;
        let trust_name = format!("{TRUST_PREFIX}{}-{}", std::process::id(), unix_now());
        let fingerprint = certificate_fingerprint(&cert)?;
        incus(["config", "trust", "add-certificate"])
            .arg(&cert)
            .args(["--name", &trust_name])
            .run()
            .context("adding the test client certificate to incusd's trust store")?;
        Ok(TrustedClient {
            url,
            cert,
            key,
            server_cert: "/var/lib/incus/server.crt".into(),
            fingerprint,
            _dir: dir,
        })
    }
}

impl TrustedClient {
    /// Takes the certificate out of incusd's trust store (the files stay, now untrusted).
    pub fn revoke(&mut self) -> Result<()> {
        if self.fingerprint.is_empty() {
            return Ok(());
        }
        incus(["config", "trust", "remove", &self.fingerprint]).run()?;
        self.fingerprint.clear();
        Ok(())
    }
}

impl Drop for TrustedClient {
    fn drop(&mut self) {
        if let Err(e) = self.revoke() {
            eprintln!("testkit: could not remove the test certificate from incusd's trust: {e}");
        }
    }
}

/// Trust store names of test certificates: `vt-https-<pid>-<unix seconds>`.
const TRUST_PREFIX: &str = "vt-https-";

/// Incus's certificate fingerprint: the SHA-256 of the DER encoding, lowercase hex.
fn certificate_fingerprint(cert: &Path) -> Result<String> {
    let out = Cmd::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .run_stdout()?;
    let hex = out.trim().rsplit('=').next().unwrap_or_default().replace(':', "").to_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("unexpected `openssl x509 -fingerprint` output: {out}");
    }
    Ok(hex)
}

/// The owner pid and creation time in a test certificate's trust store name.
pub(super) fn trust_owner(name: &str) -> Option<(u32, Option<u64>)> {
    let rest = name.strip_prefix(TRUST_PREFIX)?;
    let (pid, created) = rest.split_once('-').map_or((rest, None), |(p, c)| (p, Some(c)));
    Some((pid.parse().ok()?, created.and_then(|c| c.parse().ok())))
}

/// Where incusd's HTTPS listener is reached from this host, from `core.https_address`.
pub fn https_endpoint() -> Result<String> {
    let addr = incus(["config", "get", "core.https_address"]).run_stdout()?.trim().to_string();
    if addr.is_empty() {
        bail!("incusd has no HTTPS listener (core.https_address is empty); {SETUP_HINT}");
    }
    let (host, port) = addr.rsplit_once(':').unwrap_or(("", addr.as_str()));
    let host = match host {
        "" | "0.0.0.0" | "[::]" | "::" => "127.0.0.1",
        h => h,
    };
    Ok(format!("https://{host}:{port}"))
}

/// A fresh self-signed EC (P-256) certificate `CN.crt` and key `CN.key` in `dir`.
pub fn self_signed_certificate(
    dir: &Path,
    cn: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    self_signed(dir, cn, None)
}

/// [`self_signed_certificate`], with a `subjectAltName` (e.g. `IP:127.0.0.1`) when given.
pub(crate) fn self_signed(
    dir: &Path,
    cn: &str,
    subject_alt_name: Option<&str>,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let mut openssl = Cmd::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={cn}"));
    if let Some(san) = subject_alt_name {
        openssl = openssl.arg("-addext").arg(format!("subjectAltName={san}"));
    }
    openssl.arg("-keyout").arg(&key).arg("-out").arg(&cert).run()?;
    Ok((cert, key))
}
