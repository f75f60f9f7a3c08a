//! Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory;
//! skipped when the content is already the same. And the few other changes the agent makes
//! to its own files (the host lock, a rename in place, a removal), and the free space of a
//! file system (status warns when the state directory can no longer be written).
//!
//! A leaf crate (no other `veza-*` dependency) so that every crate that writes a file —
//! `veza-state`, `veza-host` (re-exported as `veza_host::fs`), the binary — writes it the
//! same way, without depending on the effects crate. The tidy test
//! (`tests/tidy.rs`) refuses `std::fs::write`, `File::create`, `OpenOptions` and
//! `std::fs::rename` in product code outside this crate.
//!
//! The agent runs as root and some of the directories it writes into may be writable by
//! another user (node_exporter's textfile directory belongs to `prometheus`). So every
//! write works relative to the directory opened once without following a symlink: the
//! temp file gets an unpredictable name and is created with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//! a symlink at the destination is replaced by the rename (never written or read
//! through), and the "unchanged" check reads only a regular file the agent owns. Plain
//! [`write_atomic_if_changed`] refuses a directory that anyone but root (or the user the
//! agent runs as) may write to; [`write_atomic_in_shared_dir`] is for the one configured
//! directory that is shared on purpose (`metrics.textfile`).

use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

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

/// Who may write the destination's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirTrust {
    /// Only root (or the user the agent runs as): anything else is refused.
    Private,
    /// Anyone: the directory is shared on purpose (the metrics textfile directory).
    Shared,
}

/// How many unpredictable temp names are tried before giving up (a name is only taken
/// again when someone else created it first).
const TEMP_ATTEMPTS: u32 = 8;

/// Writes `bytes` to `path` atomically with permission `mode`, unless the file already
/// holds exactly these bytes with that mode. Refuses a directory that users other than
/// root (or the user the agent runs as) can write to, and a directory path ending in a
/// symlink.
pub fn write_atomic_if_changed(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<Written, WriteError> {
    write_atomic(path, bytes, mode, DirTrust::Private)
}

/// [`write_atomic_if_changed`] into a directory that another user may write to on
/// purpose (the configured metrics directory, owned by `prometheus`). Symlinks planted
/// there are neither followed nor read through.
pub fn write_atomic_in_shared_dir(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<Written, WriteError> {
    write_atomic(path, bytes, mode, DirTrust::Shared)
}

fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    trust: DirTrust,
) -> Result<Written, WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    let (dir_path, name) = split(path).map_err(err)?;
    let dir = open_dir(dir_path).map_err(err)?;
    if trust == DirTrust::Private {
        check_private(dir_path, &dir).map_err(err)?;
    }
    if holds(&dir, name, bytes, mode).map_err(err)? {
        return Ok(Written::Unchanged);
    }
    let mut file = AtomicFile::create_in(path, dir, name)?;
    file.write_all(bytes).map_err(err)?;
    file.commit(mode)?;
    Ok(Written::Changed)
}

/// A file written in pieces (a download) that appears at its path only when
/// [`AtomicFile::commit`] is called, with the same rules as [`write_atomic_if_changed`];
/// dropped without a commit, it leaves nothing behind.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    dir: std::fs::File,
    tmp: PathBuf,
    file: std::fs::File,
    committed: bool,
}

impl AtomicFile {
    /// Starts a new version of `path`, in a directory only root may write to.
    pub fn create(path: &Path) -> Result<AtomicFile, WriteError> {
        let err = |source| WriteError { path: path.to_path_buf(), source };
        let (dir_path, name) = split(path).map_err(err)?;
        let dir = open_dir(dir_path).map_err(err)?;
        check_private(dir_path, &dir).map_err(err)?;
        AtomicFile::create_in(path, dir, name)
    }

    fn create_in(
        path: &Path,
        dir: std::fs::File,
        name: &std::ffi::OsStr,
    ) -> Result<AtomicFile, WriteError> {
        let (tmp, file) = create_temp(&dir, name)
            .map_err(|source| WriteError { path: path.to_path_buf(), source })?;
        Ok(AtomicFile { path: path.to_path_buf(), dir, tmp, file, committed: false })
    }

    /// Sets `mode`, flushes the file to disk and renames it into place.
    pub fn commit(mut self, mode: u32) -> Result<(), WriteError> {
        let name = split(&self.path).map(|(_, n)| n.to_os_string());
        let result = (|| {
            let name = name?;
            self.file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            self.file.sync_all()?;
            rustix::fs::renameat(&self.dir, &self.tmp, &self.dir, &name)?;
            self.committed = true;
            self.dir.sync_all()
        })();
        result.map_err(|source| WriteError { path: self.path.clone(), source })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir, &self.tmp, AtFlags::empty());
        }
    }
}

/// The directory and the file name of `path`; the name must be a plain file name.
fn split(path: &Path) -> std::io::Result<(&Path, &std::ffi::OsStr)> {
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path does not end in a file name",
            ));
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Opens the directory itself without following a symlink in its last component.
fn open_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(rustix::fs::CWD, dir, flags, Mode::empty()) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "directory `{}` is a symlink, which the agent does not follow when \
                     writing (hint: configure the real directory)",
                    dir.display()
                ),
            ))
        }
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Fails unless only root (or the user the agent runs as) can write into `dir`.
fn check_private(dir_path: &Path, dir: &std::fs::File) -> std::io::Result<()> {
    let meta = dir.metadata()?;
    let uid = meta.uid();
    let writable_by_others = meta.mode() & 0o022 != 0;
    let foreign_owner = uid != 0 && Some(uid) != effective_uid();
    if !writable_by_others && !foreign_owner {
        return Ok(());
    }
    let who = if foreign_owner {
        format!("it belongs to uid {uid}")
    } else {
        format!("its mode {:04o} lets others write", meta.mode() & 0o7777)
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "refusing to write into `{d}`: {who}, so another user could redirect a write \
             by root (hint: `chown root: {d} && chmod go-w {d}`, or choose a root-owned \
             directory)",
            d = dir_path.display()
        ),
    ))
}

/// The effective uid of this process (`Uid:` in `/proc/self/status`).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `name` in `dir` is already a regular file of ours, not linked elsewhere, with
/// exactly `bytes` and `mode`. A symlink (or anything else) there is "not the same": the
/// rename replaces it without reading through it.
fn holds(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<bool> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::LOOP) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let meta = file.metadata()?;
    let ours = meta.file_type().is_file()
        && meta.nlink() == 1
        && (meta.uid() == 0 || Some(meta.uid()) == effective_uid());
    if !ours || meta.permissions().mode() & 0o7777 != mode || meta.len() != bytes.len() as u64 {
        return Ok(false);
    }
    let mut current = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1).read_to_end(&mut current)?;
    Ok(current == bytes)
}

/// Creates a new temp file next to `name` under an unpredictable name, never following
/// or reusing anything already there.
fn create_temp(
    dir: &std::fs::File,
    name: &std::ffi::OsStr,
) -> std::io::Result<(PathBuf, std::fs::File)> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = PathBuf::from(format!(".{}.{:016x}.tmp", name.to_string_lossy(), random_u64()));
        match rustix::fs::openat(dir, &tmp, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok((tmp, std::fs::File::from(fd))),
            Err(e @ rustix::io::Errno::EXIST) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.map_or_else(|| std::io::Error::other("no temp file name"), std::io::Error::from))
}

/// 64 unpredictable bits: the standard library seeds each `RandomState` from the OS.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Renames `from` to `to` (replacing it, never following a symlink there) and flushes
/// the directory of `to`, so the rename survives a crash.
pub fn rename(from: &Path, to: &Path) -> Result<(), WriteError> {
    let err = |source| WriteError { path: to.to_path_buf(), source };
    std::fs::rename(from, to).map_err(|source| WriteError { path: from.to_path_buf(), source })?;
    let (dir, _) = split(to).map_err(err)?;
    open_dir(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// Removes the file (or socket, or symlink: never followed) at `path`; `false` when there
/// was nothing to remove.
pub fn remove_if_exists(path: &Path) -> Result<bool, WriteError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(WriteError { path: path.to_path_buf(), source }),
    }
}

/// Removes what a killed writer left of its atomic writes of `names` in `dir`: the temp
/// files `.<name>.<16 hex digits>.tmp` that [`write_atomic_if_changed`] creates and a kill
/// between create and rename leaves behind. Only for files written under a lock the
/// caller holds, so no temp file removed can be one a live writer is still filling.
/// Returns how many were removed; anything else in `dir` is left alone.
pub fn remove_stale_temps(dir: &Path, names: &[&str]) -> Result<usize, WriteError> {
    let err = |source| WriteError { path: dir.to_path_buf(), source };
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if names.iter().any(|n| is_temp_of(file, n)) {
            remove_if_exists(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// As [`remove_stale_temps`], for the temp files of every file whose name starts with
/// `prefix`: the caller's own files in a shared directory (the agent's job units and
/// their environment files in the host's unit directory), written only under its lock.
pub fn remove_stale_temps_prefixed(dir: &Path, prefix: &str) -> Result<usize, WriteError> {
    let err = |source| WriteError { path: dir.to_path_buf(), source };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(err(source)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(err)?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        let name = file
            .strip_prefix('.')
            .and_then(|f| f.strip_suffix(".tmp"))
            .and_then(|f| f.rsplit_once('.'))
            .map(|(name, _)| name);
        if name.is_some_and(|n| n.starts_with(prefix) && is_temp_of(file, n)) {
            remove_if_exists(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `file` is the name of a temp file of an atomic write of `name`.
fn is_temp_of(file: &str, name: &str) -> bool {
    file.strip_prefix('.')
        .and_then(|f| f.strip_prefix(name))
        .and_then(|f| f.strip_prefix('.'))
        .and_then(|f| f.strip_suffix(".tmp"))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Opens the lock file `path` (created, mode 0600, when missing; never through a symlink)
/// and takes an exclusive `flock` on it without waiting: `None` when another process
/// holds it. The lock lasts as long as the returned file is open.
pub fn try_lock(path: &Path) -> Result<Option<std::fs::File>, WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| err(e.into()))?;
    let file = std::fs::File::from(fd);
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
    }
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

    /// A writer killed between creating its temp file and the rename leaves the temp file;
    /// the next holder of the lock removes those of the files it writes, and nothing else.
    #[test]
    fn stale_temps_of_the_named_files_are_removed_and_nothing_else() {
        let dir = tempfile_dir();
        for name in ["state.json", "suspended.json"] {
            // What a kill leaves: the temp file of a write that never reached its rename.
            let mut left = AtomicFile::create(&dir.join(name)).unwrap();
            left.write_all(b"half").unwrap();
            std::mem::forget(left);
        }
        let others = [
            "state.json",
            ".state.json.tmp",
            ".state.json.0123456789abcdeg.tmp",
            ".state.json.0123456789abcdef.tmp.keep",
            "state.json.corrupt-1700000000",
        ];
        for name in others {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let listing = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(listing(&dir).len(), others.len() + 2);

        assert_eq!(remove_stale_temps(&dir, &["state.json", "journal.json"]).unwrap(), 1);
        let left = listing(&dir);
        assert!(!left.iter().any(|n| is_temp_of(n, "state.json")), "{left:?}");
        assert!(left.iter().any(|n| is_temp_of(n, "suspended.json")), "{left:?}");
        assert_eq!(left.len(), others.len() + 1, "{left:?}");
        assert_eq!(remove_stale_temps(&dir, &["state.json"]).unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// In a shared directory, only the temp files of the caller's own names (a prefix)
    /// are removed.
    #[test]
    fn stale_temps_under_a_prefix_are_removed_and_nothing_else() {
        let dir = tempfile_dir();
        let files = [
            (".veza-job-prod-drill.env.0123456789abcdef.tmp", false),
            (".veza-job-prod-drill.timer.fedcba9876543210.tmp", false),
            (".ssh.service.0123456789abcdef.tmp", true),
            (".veza-job-x.env.tmp", true),
            ("veza-job-prod-drill.env", true),
            (".veza-job-prod-drill.env.0123456789abcdef.tmp.keep", true),
        ];
        for (name, _) in files {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        assert_eq!(remove_stale_temps_prefixed(&dir, "veza-job-").unwrap(), 2);
        for (name, kept) in files {
            assert_eq!(dir.join(name).exists(), kept, "{name}");
        }
        assert_eq!(remove_stale_temps_prefixed(&dir.join("missing"), "veza-job-").unwrap(), 0);
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

    /// A directory owned by an unprivileged user (`nobody`), as node_exporter's textfile
    /// directory is by `prometheus`, next to a root-only directory holding a file that
    /// user must not be able to touch through root's writes.
    struct SharedDir {
        root: PathBuf,
        shared: PathBuf,
        private: PathBuf,
    }

    impl SharedDir {
        fn new(tag: &str) -> SharedDir {
            let root =
                std::env::temp_dir().join(format!("veza-fs-test-{}-{tag}", std::process::id()));
            let (shared, private) = (root.join("textfile"), root.join("private"));
            std::fs::create_dir_all(&shared).unwrap();
            std::fs::create_dir_all(&private).unwrap();
            for (dir, mode) in [(&root, 0o755), (&private, 0o700)] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            std::os::unix::fs::chown(&shared, Some(NOBODY), Some(NOBODY)).unwrap();
            SharedDir { root, shared, private }
        }

        /// A root-owned file in the private directory.
        fn secret(&self, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
            let p = self.private.join(name);
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }

        /// `nobody` plants `link` → `target` (replacing what was there).
        fn plant(&self, target: &Path, link: &str) {
            let link = self.shared.join(link);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link).expect("plant a symlink");
            std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).expect("chown it");
        }
    }

    impl Drop for SharedDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    const NOBODY: u32 = 65534;

    fn mode_of(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn symlinks_planted_in_the_shared_directory_are_replaced_never_followed() {
        let d = SharedDir::new("planted");
        let shadow = d.secret("shadow", b"root:secret\n", 0o600);
        let dest = d.shared.join("veza-agent.prom");
        // At the destination, and at the temp name the agent used to derive from its pid.
        d.plant(&shadow, "veza-agent.prom");
        d.plant(&shadow, &format!(".veza-agent.prom.tmp.{}", std::process::id()));

        let written = write_atomic_in_shared_dir(&dest, b"veza_up 1\n", 0o644).unwrap();

        assert_eq!(written, Written::Changed);
        assert_eq!(std::fs::read(&shadow).unwrap(), b"root:secret\n", "target overwritten");
        assert_eq!(mode_of(&shadow), 0o600, "target's mode changed");
        let meta = std::fs::symlink_metadata(&dest).unwrap();
        assert!(meta.file_type().is_file(), "the destination must be a regular file now");
        assert_eq!((meta.uid(), mode_of(&dest)), (0, 0o644));
        assert_eq!(std::fs::read(&dest).unwrap(), b"veza_up 1\n");
    }

    #[test]
    fn the_unchanged_check_does_not_read_through_a_planted_symlink() {
        let d = SharedDir::new("unchanged");
        // A root file that holds exactly what is about to be written, with that mode:
        // reading through the link would answer "unchanged" and leave the link in place.
        let config = d.secret("config", b"veza_up 1\n", 0o644);
        let dest = d.shared.join("veza-agent.prom");
        d.plant(&config, "veza-agent.prom");

        let written = write_atomic_in_shared_dir(&dest, b"veza_up 1\n", 0o644).unwrap();

        assert_eq!(written, Written::Changed);
        assert!(std::fs::symlink_metadata(&dest).unwrap().file_type().is_file());
        assert_eq!(
            write_atomic_in_shared_dir(&dest, b"veza_up 1\n", 0o644).unwrap(),
            Written::Unchanged
        );
    }

    #[test]
    fn directories_others_can_write_are_refused_unless_shared_on_purpose() {
        // (case, directory mode, owner, refusal names)
        let cases = [
            ("world-writable", 0o777, 0, "its mode 0777 lets others write"),
            ("group-writable", 0o775, 0, "its mode 0775 lets others write"),
            ("sticky and world-writable (like /tmp)", 0o1777, 0, "its mode 1777 lets others write"),
            ("owned by an unprivileged user", 0o755, NOBODY, "it belongs to uid 65534"),
        ];
        let base = SharedDir::new("refused");
        for (case, mode, owner, expect) in cases {
            let dir = base.root.join(format!("case-{mode:o}-{owner}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            std::os::unix::fs::chown(&dir, Some(owner), None).unwrap();
            let dest = dir.join("state.json");

            let err = write_atomic_if_changed(&dest, b"{}", 0o644).unwrap_err();

            let msg = err.to_string();
            assert!(msg.contains(expect) && msg.contains("hint:"), "{case}: {msg}");
            assert!(msg.contains(&dir.display().to_string()), "{case}: {msg}");
            assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "{case}: wrote anyway");
            let shared = write_atomic_in_shared_dir(&dest, b"{}", 0o644);
            assert_eq!(shared.unwrap(), Written::Changed, "{case}: the shared entry point");
        }
    }

    #[test]
    fn a_directory_path_ending_in_a_symlink_is_refused_even_when_shared() {
        let d = SharedDir::new("dirlink");
        d.plant(&d.private, "elsewhere");
        let dest = d.shared.join("elsewhere").join("veza-agent.prom");
        for result in [
            write_atomic_if_changed(&dest, b"x", 0o644),
            write_atomic_in_shared_dir(&dest, b"x", 0o644),
        ] {
            let msg = result.unwrap_err().to_string();
            assert!(msg.contains("is a symlink"), "{msg}");
        }
        assert!(std::fs::read_dir(&d.private).unwrap().next().is_none());
    }

    #[test]
    fn the_lock_is_exclusive_released_on_drop_and_never_taken_through_a_symlink() {
        let d = SharedDir::new("lock");
        let lock = d.private.join("lock");

        let held = try_lock(&lock).unwrap();
        assert!(held.is_some(), "a free lock is taken");
        assert!(try_lock(&lock).unwrap().is_none(), "a held lock is refused, without waiting");
        drop(held);
        assert!(try_lock(&lock).unwrap().is_some(), "a dropped lock is free again");
        assert_eq!(mode_of(&lock), 0o600);

        let target = d.secret("target", b"", 0o600);
        d.plant(&target, "lock");
        let err = try_lock(&d.shared.join("lock")).unwrap_err();
        assert!(err.to_string().contains("lock"), "{err}");
    }

    #[test]
    fn rename_replaces_the_destination_and_remove_reports_what_it_did() {
        let d = SharedDir::new("rename");
        let from = d.secret("state.json", b"{bad", 0o644);
        let to = d.private.join("state.json.corrupt-1");

        rename(&from, &to).unwrap();

        assert_eq!(std::fs::read(&to).unwrap(), b"{bad");
        assert!(!from.exists());
        assert!(remove_if_exists(&to).unwrap(), "an existing file is removed");
        assert!(!remove_if_exists(&to).unwrap(), "a missing file is not an error");
        let err = rename(&from, &to).unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
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
