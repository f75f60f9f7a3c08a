//! The state directory's files: [`Store`] (opened under the host lock; saves the state,
//! appends the history, writes and clears the journal, writes the PR previews, moves a
//! corrupt state file aside), [`Reader`] (reads them without the lock, migrating an
//! older `state.json` first), and the suspension file, which needs no lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use veza_fs::write_atomic_if_changed;

use crate::{
    AgentState, HISTORY_LIMIT, HistoryEntry, Journal, STATE_SCHEMA_VERSION, StateError, Suspension,
    previews,
};

/// The file that holds the PR previews.
const PREVIEWS_FILE: &str = "previews.json";

/// The files written only under the host lock (the suspension file is not: `suspend`
/// writes it while the daemon runs).
const LOCKED_FILES: &[&str] = &["state.json", "history.jsonl", "journal.json", PREVIEWS_FILE];

/// The file that holds a suspension.
const SUSPENSION_FILE: &str = "suspended.json";

/// Creates the state directory `dir` (and missing parents) root-only when the agent
/// creates it (a custom `state_dir` the package's units do not prepare): what the files
/// record may quote the forge and the apps. An existing directory is left as it is.
fn create_private(dir: &Path) -> std::io::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
}

/// Suspends the host whose state lives in `dir`: written atomically (root-only), read by
/// every sync. Needs no lock, so it works while the daemon runs.
pub fn suspend(dir: &Path, s: &Suspension) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(s).map_err(|e| StateError::Corrupt {
        path: dir.join(SUSPENSION_FILE),
        reason: e.to_string(),
    })?;
    create_private(dir).map_err(|source| StateError::Dir { path: dir.to_path_buf(), source })?;
    veza_fs::write_atomic_if_changed(&dir.join(SUSPENSION_FILE), &json, 0o600)?;
    Ok(())
}

/// Lifts the suspension; `false` when there was none.
pub fn resume(dir: &Path) -> Result<bool, StateError> {
    Ok(veza_fs::remove_if_exists(&dir.join(SUSPENSION_FILE))?)
}

/// The state directory, opened and locked.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
}

/// The state directory without the lock: for `status` and other readers.
#[derive(Debug, Clone)]
pub struct Reader {
    dir: PathBuf,
}

impl Store {
    /// Opens `dir` (created if missing) and takes the host lock, failing at once with
    /// [`StateError::Locked`] when another agent holds it.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let derr = |source| StateError::Dir { path: dir.to_path_buf(), source };
        create_private(dir).map_err(derr)?;
        let lock_path = dir.join("lock");
        let Some(lock) = veza_fs::try_lock(&lock_path)? else {
            return Err(StateError::Locked { path: lock_path });
        };
        // A run killed mid-write left its temp files; under the lock none is being filled.
        veza_fs::remove_stale_temps(dir, LOCKED_FILES)?;
        Ok(Store { dir: dir.to_path_buf(), _lock: lock })
    }

    /// A reader over the same directory.
    pub fn reader(&self) -> Reader {
        Reader { dir: self.dir.clone() }
    }

    /// Loads the state for a sync. A corrupt file is moved aside (under the lock, so no
    /// reader ever renames anything) and the sync goes on from empty state, with the
    /// [`StateError::MovedAside`] to report; a missing directory or a newer schema is an
    /// error the sync must stop on (never overwrite what a newer agent wrote).
    pub fn load_or_recover(&self) -> Result<(AgentState, Option<StateError>), StateError> {
        match self.reader().load() {
            Ok(s) => Ok((s, None)),
            Err(StateError::Corrupt { path, reason }) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let moved_to = self.dir.join(format!("state.json.corrupt-{stamp}"));
                veza_fs::rename(&path, &moved_to)
                    .map_err(|e| StateError::Dir { path: path.clone(), source: e.source })?;
                Ok((AgentState::default(), Some(StateError::MovedAside { path, moved_to, reason })))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        bytes.push(b'\n');
        write_atomic_if_changed(&self.dir.join("state.json"), &bytes, 0o644)?;
        Ok(())
    }

    /// Appends a history entry, keeping the newest [`HISTORY_LIMIT`] lines. The lines
    /// already there are kept whether this agent reads them or not (an entry written by a
    /// newer agent; a damaged byte becomes U+FFFD); a file that cannot be read is an
    /// error, never a reason to start the history afresh.
    pub fn append_history(&self, entry: &HistoryEntry) -> Result<(), StateError> {
        let path = self.dir.join("history.jsonl");
        let old = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(StateError::Dir { path, source }),
        };
        let old = String::from_utf8_lossy(&old);
        let new = serde_json::to_string(entry).unwrap_or_default();
        let mut lines: Vec<&str> = old.lines().filter(|l| !l.trim().is_empty()).collect();
        lines.push(&new);
        let skip = lines.len().saturating_sub(HISTORY_LIMIT);
        let mut text = lines[skip..].join("\n");
        text.push('\n');
        write_atomic_if_changed(&path, text.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Writes the PR previews (`previews.json`).
    pub fn save_previews(&self, previews: &previews::Previews) -> Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(previews).unwrap_or_default();
        bytes.push(b'\n');
        write_atomic_if_changed(&self.dir.join(PREVIEWS_FILE), &bytes, 0o644)?;
        Ok(())
    }

    /// Writes the journal before a step runs.
    pub fn write_journal(&self, journal: &Journal) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(journal).unwrap_or_default();
        write_atomic_if_changed(&self.dir.join("journal.json"), &bytes, 0o644)?;
        Ok(())
    }

    /// Removes the journal at the end of a run.
    pub fn clear_journal(&self) -> Result<(), StateError> {
        veza_fs::remove_if_exists(&self.dir.join("journal.json"))
            .map(|_| ())
            .map_err(|e| StateError::Dir { path: self.dir.clone(), source: e.source })
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Reader {
    /// A reader over `dir` (which may not exist yet).
    pub fn new(dir: &Path) -> Reader {
        Reader { dir: dir.to_path_buf() }
    }

    /// Loads the state. A missing file is empty state; a corrupt one is reported and left
    /// where it is (readers never write: recovery is [`Store::load_or_recover`]'s job).
    pub fn load(&self) -> Result<AgentState, StateError> {
        let path = self.dir.join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentState::default()),
            Err(source) => return Err(StateError::Dir { path, source }),
        };
        let value: serde_json::Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return Err(StateError::Corrupt { path, reason: e.to_string() }),
        };
        let version = value.get("schema_version").and_then(serde_json::Value::as_u64).unwrap_or(0);
        if version > u64::from(STATE_SCHEMA_VERSION) {
            return Err(StateError::TooNew {
                path,
                found: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        let value = migrate(value);
        serde_json::from_value(value)
            .map_err(|e| StateError::Corrupt { path, reason: e.to_string() })
    }

    /// The deploy history, oldest first. Unparseable lines are skipped.
    pub fn history(&self) -> Result<Vec<HistoryEntry>, StateError> {
        let path = self.dir.join("history.jsonl");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StateError::Dir { path, source }),
        };
        // A line this agent cannot read (a damaged byte, a newer agent's entry) is skipped.
        let text = String::from_utf8_lossy(&bytes);
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// The suspension in force, if any. An unreadable file counts as a suspension (with
    /// the error as its reason): a pause is never lifted by a broken file.
    pub fn suspension(&self) -> Option<Suspension> {
        let path = self.dir.join(SUSPENSION_FILE);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Suspension {
                since: 0,
                by: "?".into(),
                reason: format!("{} unreadable: {e}", path.display()),
            }),
            Ok(bytes) => Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| Suspension {
                since: 0,
                by: "?".into(),
                reason: format!(
                    "{} is not valid ({e}); `veza-agent resume` removes it",
                    path.display()
                ),
            })),
        }
    }

    /// The PR previews recorded so far; none when the file is missing. A corrupt file is
    /// reported (the next pass starts from an empty cache and rewrites it).
    pub fn previews(&self) -> Result<previews::Previews, StateError> {
        let path = self.dir.join(PREVIEWS_FILE);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(previews::Previews::default()),
            Err(source) => Err(StateError::Dir { path, source }),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StateError::CorruptPreviews { path, reason: e.to_string() }),
        }
    }

    /// The journal left by an interrupted run, if any.
    pub fn journal(&self) -> Option<Journal> {
        let bytes = std::fs::read(self.dir.join("journal.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Upgrades an older `state.json` to the current schema. Pure.
fn migrate(mut value: serde_json::Value) -> serde_json::Value {
    // Version 0 (no `schema_version`) never shipped; stamp it so the typed read succeeds.
    if let Some(obj) = value.as_object_mut() {
        obj.entry("schema_version").or_insert(serde_json::json!(STATE_SCHEMA_VERSION));
    }
    value
}
