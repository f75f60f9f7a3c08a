//! Release artifacts: downloaded once, checked against the sha256 pinned in the signed
//! manifest, cached by digest. Nothing unverified is ever pushed into a slot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::process::Cmd;

/// Largest artifact accepted.
pub const MAX_ARTIFACT_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The download failed.
    #[error("downloading `{url}` failed: {detail}")]
    Download { url: String, detail: String },
    /// The bytes do not match the pinned digest.
    #[error(
        "artifact `{url}` has sha256 {actual}, but the manifest pins {expected}; it was not used (hint: a re-uploaded artifact needs a new release or a new digest in the manifest)"
    )]
    Digest { url: String, expected: String, actual: String },
    /// The URL scheme is not supported.
    #[error("unsupported artifact url `{url}`: use https://, http:// or file://")]
    Scheme { url: String },
    /// The cache could not be written.
    #[error("artifact cache `{}`: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The artifact cache under the state directory.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
}

impl ArtifactStore {
    /// A cache in `dir` (created on first use).
    pub fn new(dir: &Path) -> ArtifactStore {
        ArtifactStore { dir: dir.to_path_buf() }
    }

    /// The artifact at `url` whose sha256 must be `expected` (64 lowercase hex).
    pub fn fetch(&self, url: &str, expected: &str) -> Result<Vec<u8>, ArtifactError> {
        let supported = ["file://", "https://", "http://"].iter().any(|p| url.starts_with(p));
        if !supported {
            return Err(ArtifactError::Scheme { url: url.to_string() });
        }
        let cached = self.dir.join(expected);
        if let Ok(bytes) = std::fs::read(&cached) {
            if hex(&Sha256::digest(&bytes)) == expected {
                return Ok(bytes);
            }
            let _ = std::fs::remove_file(&cached);
        }
        let bytes = if let Some(path) = url.strip_prefix("file://") {
            let meta = std::fs::metadata(path).map_err(|e| ArtifactError::Download {
                url: url.to_string(),
                detail: e.to_string(),
            })?;
            if meta.len() > MAX_ARTIFACT_BYTES {
                return Err(ArtifactError::Download {
                    url: url.to_string(),
                    detail: format!(
                        "{} bytes is more than the {MAX_ARTIFACT_BYTES}-byte limit",
                        meta.len()
                    ),
                });
            }
            std::fs::read(path).map_err(|e| ArtifactError::Download {
                url: url.to_string(),
                detail: e.to_string(),
            })?
        } else if url.starts_with("https://") || url.starts_with("http://") {
            Cmd::new("curl")
                .args([
                    "--fail",
                    "--silent",
                    "--show-error",
                    "--location",
                    "--proto",
                    "=https,http",
                ])
                .args(["--max-time", "600", "--max-filesize", &MAX_ARTIFACT_BYTES.to_string()])
                .arg(url)
                .timeout(Duration::from_secs(620))
                .run()
                .map_err(|e| ArtifactError::Download {
                    url: url.to_string(),
                    detail: e.to_string(),
                })?
                .stdout
        } else {
            return Err(ArtifactError::Scheme { url: url.to_string() });
        };
        let actual = hex(&Sha256::digest(&bytes));
        if actual != expected {
            return Err(ArtifactError::Digest {
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| ArtifactError::Cache { path: self.dir.clone(), source })?;
        crate::fs::write_atomic_if_changed(&cached, &bytes, 0o600)
            .map_err(|e| ArtifactError::Cache { path: e.path, source: e.source })?;
        Ok(bytes)
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_and_caches_by_digest() {
        let dir = std::env::temp_dir().join(format!("veza-artifact-test-{}", std::process::id()));
        let src = dir.join("src.tar.gz");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&src, b"release bytes").unwrap();
        let store = ArtifactStore::new(&dir.join("cache"));
        let good = sha256_hex(b"release bytes");
        let url = format!("file://{}", src.display());
        assert_eq!(store.fetch(&url, &good).unwrap(), b"release bytes");
        // Served from the cache even when the source disappears.
        std::fs::remove_file(&src).unwrap();
        assert_eq!(store.fetch(&url, &good).unwrap(), b"release bytes");
        std::fs::write(&src, b"tampered").unwrap();
        let wrong = sha256_hex(b"something else");
        let e = store.fetch(&url, &wrong).unwrap_err();
        assert!(matches!(e, ArtifactError::Digest { .. }), "{e}");
        assert!(matches!(
            store.fetch("ftp://x/y", &good).unwrap_err(),
            ArtifactError::Scheme { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
