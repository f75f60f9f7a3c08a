//! Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory;
//! skipped when the content is already the same. And the free space of a file system
//! (status warns when the state directory can no longer be written).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A file write that failed, with the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("cannot write `{}`: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Whether a write changed anything on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Changed,
    Unchanged,
}

/// Writes `bytes` to `path` atomically with permission `mode`, unless the file already
/// holds exactly these bytes with that mode.
pub fn write_atomic_if_changed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<Written, WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o7777 == mode
        && meta.len() == bytes.len() as u64
        && std::fs::read(path).map_err(err)? == bytes
    {
        return Ok(Written::Unchanged);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)?;
    Ok(Written::Changed)
}

/// Free bytes on the file system holding `path`, as root sees them (reserved blocks
/// included: the agent runs as root).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.f_bfree.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_then_skips_identical_content_then_rewrites_on_change() {
        let dir = tempfile_dir();
        let p = dir.join("f.txt");
        assert_eq!(write_atomic_if_changed(&p, b"one", 0o644).unwrap(), Written::Changed);
        assert_eq!(write_atomic_if_changed(&p, b"one", 0o644).unwrap(), Written::Unchanged);
        assert_eq!(write_atomic_if_changed(&p, b"one", 0o600).unwrap(), Written::Changed);
        assert_eq!(write_atomic_if_changed(&p, b"two", 0o600).unwrap(), Written::Changed);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file may remain");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn free_bytes_reads_the_file_system_and_names_a_missing_path() {
        let dir = tempfile_dir();
        assert!(free_bytes(&dir).unwrap() > 0);
        let err = free_bytes(&dir.join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn error_names_the_path() {
        let err =
            write_atomic_if_changed(Path::new("/nonexistent-dir/x"), b"x", 0o644).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/x"), "{err}");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "veza-fs-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
