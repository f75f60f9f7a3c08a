//! Release artifacts: downloaded once, checked against the sha256 pinned in the signed
//! manifest, cached by digest. Nothing unverified is ever pushed into a slot.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::fs::AtomicFile;
use crate::process::{Cmd, ProcessError};

/// Largest artifact accepted unless the host configuration says otherwise
/// (`artifacts.max_bytes`).
pub const MAX_ARTIFACT_BYTES: u64 = veza_model::config::DEFAULT_ARTIFACT_MAX_BYTES;

/// Why an artifact could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The download failed.
    #[error("downloading `{url}` failed: {detail}")]
    Download { url: String, detail: String },
    /// The artifact is bigger than the configured limit.
    #[error(
        "artifact `{url}` is larger than {limit} (`artifacts.max_bytes`); the download was stopped and nothing was cached (hint: if the release really is that big, raise `artifacts.max_bytes` in the host configuration)"
    )]
    TooLarge { url: String, limit: veza_model::config::ByteSize },
    /// The bytes do not match the pinned digest.
    #[error(
        "artifact `{url}` has sha256 {actual}, but the manifest pins {expected}; it was not used (hint: a re-uploaded artifact needs a new release or a new digest in the manifest)"
    )]
    Digest { url: String, expected: String, actual: String },
    /// The URL scheme is not supported.
    #[error("unsupported artifact url `{url}`: use https://, http:// or file://")]
    Scheme { url: String },
    /// Plain http to a host that is not this one.
    #[error(
        "refusing to download artifact `{url}` over plain http from a non-loopback host (hint: serve it over https://; plain http is only for 127.0.0.1, ::1 or localhost)"
    )]
    PlainHttp { url: String },
    /// The artifact is not packed in a way a slot can unpack.
    #[error(
        "artifact `{url}` is {found}; a release artifact must be a tar archive, plain, gzip- or zstd-compressed (hint: build it with `tar -czf` or `tar --zstd -cf`; see the runbook, \"What a release artifact must contain\")"
    )]
    Packing { url: String, found: String },
    /// A `.tar.zst` that unpacks past the size limit.
    #[error(
        "artifact `{url}` decompresses to more than {limit} (`artifacts.max_bytes`); it was not used (hint: if the release really is that big, raise `artifacts.max_bytes` in the host configuration)"
    )]
    UnpackedTooLarge { url: String, limit: veza_model::config::ByteSize },
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
    max_bytes: u64,
}

impl ArtifactStore {
    /// A cache in `dir` (created on first use), accepting artifacts up to
    /// [`MAX_ARTIFACT_BYTES`].
    pub fn new(dir: &Path) -> ArtifactStore {
        ArtifactStore { dir: dir.to_path_buf(), max_bytes: MAX_ARTIFACT_BYTES }
    }

    /// The same cache with another size limit (`artifacts.max_bytes`).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> ArtifactStore {
        self.max_bytes = max_bytes;
        self
    }

    /// The artifact at `url` whose sha256 must be `expected` (64 lowercase hex).
    ///
    /// A download streams into a temp file in the cache while it is hashed, and stops as
    /// soon as it passes the size limit; the file is renamed into the cache only when its
    /// digest matches.
    pub fn fetch(&self, url: &str, expected: &str) -> Result<Vec<u8>, ArtifactError> {
        let supported = ["file://", "https://", "http://"].iter().any(|p| url.starts_with(p));
        if !supported {
            return Err(ArtifactError::Scheme { url: url.to_string() });
        }
        if url.starts_with("http://") && !veza_model::config::is_loopback_url(url) {
            return Err(ArtifactError::PlainHttp { url: url.to_string() });
        }
        let valid_name = expected.len() == 64 && expected.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid_name {
            return Err(ArtifactError::Digest {
                url: url.to_string(),
                expected: expected.to_string(),
                actual: "(not computed: the pinned digest is not 64 hex characters)".to_string(),
            });
        }
        let cached = self.dir.join(expected);
        if let Some(bytes) = self.cached(&cached, expected) {
            return Ok(bytes);
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| ArtifactError::Cache { path: self.dir.clone(), source })?;
        let cache_err =
            |e: crate::fs::WriteError| ArtifactError::Cache { path: e.path, source: e.source };
        let mut sink = Sink {
            file: AtomicFile::create(&cached).map_err(cache_err)?,
            hasher: Sha256::new(),
            len: 0,
            max: self.max_bytes,
            too_large: false,
            write_error: None,
        };
        let download = |detail: String| ArtifactError::Download { url: url.to_string(), detail };
        if let Some(path) = url.strip_prefix("file://") {
            let mut src = std::fs::File::open(path).map_err(|e| download(e.to_string()))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = src.read(&mut buf).map_err(|e| download(e.to_string()))?;
                if n == 0 {
                    break;
                }
                if sink.take(&buf[..n]).is_err() {
                    break;
                }
            }
        } else {
            let result = Cmd::new("curl")
                .args([
                    "--fail",
                    "--silent",
                    "--show-error",
                    "--location",
                    "--proto",
                    "=https,http",
                    // A redirect may not downgrade to plain http (or leave loopback by it).
                    "--proto-redir",
                    "=https",
                ])
                .args(["--max-time", "600", "--max-filesize", &self.max_bytes.to_string()])
                .arg("--")
                .arg(url)
                .timeout(Duration::from_secs(620))
                .run_streaming(&mut |chunk| sink.take(chunk));
            // curl stops by itself (exit 63) when the announced length is over the limit.
            if result.as_ref().err().and_then(ProcessError::exit_code) == Some(63) {
                sink.too_large = true;
            }
            if let Err(e) = result
                && !sink.too_large
            {
                return Err(match sink.write_error.take() {
                    Some(source) => ArtifactError::Cache { path: cached.clone(), source },
                    None => download(e.to_string()),
                });
            }
        }
        if sink.too_large {
            return Err(ArtifactError::TooLarge {
                url: url.to_string(),
                limit: veza_model::config::ByteSize::from_bytes(self.max_bytes),
            });
        }
        if let Some(source) = sink.write_error {
            return Err(ArtifactError::Cache { path: cached, source });
        }
        let actual = hex(&sink.hasher.finalize());
        if actual != expected {
            return Err(ArtifactError::Digest {
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
        sink.file.commit(0o600).map_err(cache_err)?;
        self.cached(&cached, expected).ok_or_else(|| ArtifactError::Cache {
            path: cached,
            source: std::io::Error::other("the artifact just cached does not read back intact"),
        })
    }

    /// The cached artifact when it is there, within the limit and intact (a damaged one
    /// is removed).
    fn cached(&self, path: &Path, expected: &str) -> Option<Vec<u8>> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if meta.file_type().is_file() && meta.len() <= self.max_bytes {
            let bytes = std::fs::read(path).ok()?;
            if hex(&Sha256::digest(&bytes)) == expected {
                return Some(bytes);
            }
        }
        let _ = std::fs::remove_file(path);
        None
    }

    /// The verified artifact `bytes` (from `url`) as a slot unpacks it with its own
    /// `tar` (busybox or GNU): a plain or gzip-compressed tar is pushed as it is; a zstd
    /// one is decompressed here, up to the size limit, because slot images rarely carry
    /// `zstd` (Debian's minbase and busybox do not). The packing is read from the bytes,
    /// never from the URL.
    pub fn for_slot(&self, url: &str, bytes: Vec<u8>) -> Result<SlotArchive, ArtifactError> {
        let packing =
            |found: &str| ArtifactError::Packing { url: url.to_string(), found: found.to_string() };
        match Packing::of(&bytes) {
            Packing::Tar => Ok(SlotArchive { bytes, tar_option: "" }),
            Packing::Gzip => Ok(SlotArchive { bytes, tar_option: "-z" }),
            Packing::Zstd => {
                let tar = unzstd(&bytes, self.max_bytes).map_err(|e| match e {
                    Unzstd::TooLarge => ArtifactError::UnpackedTooLarge {
                        url: url.to_string(),
                        limit: veza_model::config::ByteSize::from_bytes(self.max_bytes),
                    },
                    Unzstd::Invalid(detail) => {
                        packing(&format!("not a valid zstd stream ({detail})"))
                    }
                })?;
                match Packing::of(&tar) {
                    Packing::Tar => Ok(SlotArchive { bytes: tar, tar_option: "" }),
                    inner => Err(packing(&format!(
                        "zstd-compressed, but what it holds is {}",
                        inner.describe()
                    ))),
                }
            }
            other => Err(packing(&other.describe())),
        }
    }
}

/// A release artifact ready to unpack in a slot: `tar {tar_option} -xf` reads `bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotArchive {
    /// What is pushed into the slot.
    pub bytes: Vec<u8>,
    /// `-z` for a gzip-compressed tar, empty for a plain one.
    pub tar_option: &'static str,
}

/// How an artifact is packed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    Tar,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
    Zip,
    Unknown,
}

impl Packing {
    fn of(bytes: &[u8]) -> Packing {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Packing::Gzip
        } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Packing::Zstd
        } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Packing::Xz
        } else if bytes.starts_with(b"BZh") {
            Packing::Bzip2
        } else if bytes.starts_with(b"PK\x03\x04") {
            Packing::Zip
        } else if bytes.get(257..262) == Some(b"ustar") {
            // POSIX (`ustar\0`) and GNU (`ustar  \0`) tar headers.
            Packing::Tar
        } else {
            Packing::Unknown
        }
    }

    fn describe(self) -> String {
        match self {
            Packing::Tar => "a tar archive",
            Packing::Gzip => "gzip-compressed",
            Packing::Zstd => "zstd-compressed",
            Packing::Xz => "xz-compressed (not supported: slot images lack xz)",
            Packing::Bzip2 => "bzip2-compressed (not supported: slot images lack bzip2)",
            Packing::Zip => "a zip archive",
            Packing::Unknown => "not a tar archive (no `ustar` header)",
        }
        .to_string()
    }
}

enum Unzstd {
    TooLarge,
    Invalid(String),
}

/// Decompresses every frame of a zstd stream (skippable frames skipped), stopping past
/// `max` bytes of output.
fn unzstd(mut input: &[u8], max: u64) -> Result<Vec<u8>, Unzstd> {
    use ruzstd::decoding::StreamingDecoder;
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    let mut out = Vec::new();
    while !input.is_empty() {
        let decoder = match StreamingDecoder::new(&mut input) {
            Ok(d) => d,
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                length,
                ..
            })) => {
                input = input.get(length as usize..).ok_or_else(|| {
                    Unzstd::Invalid("a skippable frame runs past the end".to_string())
                })?;
                continue;
            }
            Err(e) => return Err(Unzstd::Invalid(e.to_string())),
        };
        let room = max.saturating_sub(out.len() as u64);
        decoder.take(room + 1).read_to_end(&mut out).map_err(|e| Unzstd::Invalid(e.to_string()))?;
        if out.len() as u64 > max {
            return Err(Unzstd::TooLarge);
        }
    }
    Ok(out)
}

/// Where a download goes: the temp file in the cache and the hash, with the size limit
/// checked before each chunk is kept.
struct Sink {
    file: AtomicFile,
    hasher: Sha256,
    len: u64,
    max: u64,
    too_large: bool,
    write_error: Option<std::io::Error>,
}

impl Sink {
    fn take(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.len += chunk.len() as u64;
        if self.len > self.max {
            self.too_large = true;
            return Err(std::io::Error::other("artifact larger than the limit"));
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).inspect_err(|e| {
            self.write_error = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
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
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("veza-artifact-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        /// What the cache directory holds, temp files included.
        fn cache_entries(&self) -> Vec<String> {
            let Ok(rd) = std::fs::read_dir(self.0.join("cache")) else { return Vec::new() };
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn verifies_and_caches_by_digest() {
        let dir = Dir::new("cache");
        let src = dir.0.join("src.tar.gz");
        std::fs::write(&src, b"release bytes").unwrap();
        let store = ArtifactStore::new(&dir.0.join("cache"));
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
        assert_eq!(dir.cache_entries(), [good.as_str()], "nothing unverified is cached");
        assert!(matches!(
            store.fetch("ftp://x/y", &good).unwrap_err(),
            ArtifactError::Scheme { .. }
        ));
    }

    /// Serves one chunked response of `chunks` × 64 KiB on 127.0.0.1; counts what the
    /// client accepted before it hung up.
    fn chunked_server(chunks: usize) -> (String, Arc<AtomicU64>, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/release.tar.gz", l.local_addr().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&sent);
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            if s.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..chunks {
                let framed =
                    [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if s.write_all(&framed).is_err() {
                    return;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            let _ = s.write_all(b"0\r\n\r\n");
        });
        (url, sent, t)
    }

    #[test]
    fn a_chunked_download_past_the_limit_is_stopped_while_it_streams_and_nothing_is_cached() {
        let dir = Dir::new("chunked");
        // 256 MiB offered (no Content-Length: curl's --max-filesize cannot see it coming).
        let (url, sent, server) = chunked_server(4096);
        let store = ArtifactStore::new(&dir.0.join("cache")).with_max_bytes(1024 * 1024);

        let e = store.fetch(&url, &sha256_hex(b"whatever")).unwrap_err();

        assert!(matches!(e, ArtifactError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("larger than 1MiB (`artifacts.max_bytes`)"), "{e}");
        server.join().unwrap();
        let sent = sent.load(Ordering::Relaxed);
        assert!(sent < 32 * 1024 * 1024, "the download went on to {sent} bytes");
        assert_eq!(dir.cache_entries(), Vec::<String>::new());
    }

    #[test]
    fn a_download_within_the_limit_streams_into_the_cache() {
        let dir = Dir::new("within");
        let (url, _, server) = chunked_server(4);
        let body = vec![b'x'; 4 * 64 * 1024];
        let store = ArtifactStore::new(&dir.0.join("cache")).with_max_bytes(body.len() as u64);
        assert_eq!(store.fetch(&url, &sha256_hex(&body)).unwrap(), body);
        server.join().unwrap();
        assert_eq!(dir.cache_entries(), [sha256_hex(&body)]);
    }

    #[test]
    fn plain_http_is_refused_before_any_connection_unless_loopback() {
        let dir = Dir::new("plain");
        let store = ArtifactStore::new(&dir.0.join("cache"));
        let digest = sha256_hex(b"x");
        for url in [
            "http://releases.example/r.tgz",
            "http://192.0.2.1/r.tgz",
            "http://127.0.0.1@releases.example/r.tgz",
        ] {
            let e = store.fetch(url, &digest).unwrap_err();
            assert!(matches!(e, ArtifactError::PlainHttp { .. }), "{url}: {e}");
            assert!(e.to_string().contains("hint: serve it over https://"), "{e}");
        }
        assert!(!dir.0.join("cache").exists(), "refused before anything was prepared");
    }

    #[test]
    fn a_local_file_past_the_limit_is_refused() {
        let dir = Dir::new("file");
        let src = dir.0.join("big.tar");
        std::fs::write(&src, vec![0u8; 5000]).unwrap();
        let store = ArtifactStore::new(&dir.0.join("cache")).with_max_bytes(4096);
        let e = store.fetch(&format!("file://{}", src.display()), &sha256_hex(b"x")).unwrap_err();
        assert!(e.to_string().contains("larger than 4KiB"), "{e}");
        assert_eq!(dir.cache_entries(), Vec::<String>::new());
    }

    /// Fixtures made with the real tools from one `start.sh` (GNU tar `-b 1`, `gzip -n`,
    /// `zstd -19`, `xz`, `bzip2`); `release-frames.tar.zst` is two zstd frames with a
    /// skippable frame between them, as `pzstd` and concatenated streams make.
    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/testdata/artifact").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn what_a_slot_is_handed_for_each_packing() {
        let store = ArtifactStore::new(Path::new("/nonexistent")).with_max_bytes(1024 * 1024);
        let tar = fixture("release.tar");
        // (fixture, tar option, bytes pushed) or the error it gets.
        let accepted: [(&str, &str, Vec<u8>); 4] = [
            ("release.tar", "", tar.clone()),
            ("release.tar.gz", "-z", fixture("release.tar.gz")),
            ("release.tar.zst", "", tar.clone()),
            ("release-frames.tar.zst", "", tar.clone()),
        ];
        for (name, option, pushed) in accepted {
            // The URL's suffix proves nothing: the bytes decide.
            let url = format!("https://forge.example/{name}.bin");
            let got = store.for_slot(&url, fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.tar_option, option, "{name}");
            assert!(got.bytes == pushed, "{name}: not the bytes expected");
        }
        let refused = [
            ("release.tar.xz", "is xz-compressed (not supported"),
            ("release.tar.bz2", "is bzip2-compressed (not supported"),
            ("not-a-tar.zst", "is zstd-compressed, but what it holds is not a tar archive"),
        ];
        for (name, message) in refused {
            let e = store.for_slot(name, fixture(name)).unwrap_err();
            assert!(matches!(e, ArtifactError::Packing { .. }), "{name}: {e}");
            assert!(e.to_string().contains(message), "{name}: {e}");
            assert!(e.to_string().contains("hint: build it with `tar -czf`"), "{e}");
        }
        for (what, bytes) in [
            ("a zip archive", b"PK\x03\x04rest".to_vec()),
            ("not a tar archive", b"#!/bin/sh\necho not packed\n".to_vec()),
            ("not a valid zstd stream", fixture("release.tar.zst")[..40].to_vec()),
        ] {
            let e = store.for_slot("r", bytes).unwrap_err();
            assert!(e.to_string().contains(&format!("`r` is {what}")), "{e}");
        }
    }

    #[test]
    fn a_zstd_artifact_that_unpacks_past_the_limit_is_refused() {
        let zeros = fixture("zeros-2MiB.zst");
        assert!(zeros.len() < 100, "a 2 MiB bomb in a few bytes");
        let store = ArtifactStore::new(Path::new("/nonexistent")).with_max_bytes(1024 * 1024);
        let e = store.for_slot("https://forge.example/r.tar.zst", zeros).unwrap_err();
        assert!(matches!(e, ArtifactError::UnpackedTooLarge { .. }), "{e}");
        assert!(e.to_string().contains("decompresses to more than 1MiB (`artifacts.max_bytes`)"));
        // Exactly at the limit is fine.
        let tar = fixture("release.tar");
        let store = store.with_max_bytes(tar.len() as u64);
        assert_eq!(store.for_slot("r", fixture("release.tar.zst")).unwrap().bytes, tar);
        let store = store.with_max_bytes(tar.len() as u64 - 1);
        let e = store.for_slot("r", fixture("release.tar.zst")).unwrap_err();
        assert!(matches!(e, ArtifactError::UnpackedTooLarge { .. }), "{e}");
    }
}
