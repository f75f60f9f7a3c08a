//! Fetching the manifests repository into a local bare mirror with gix, and reading
//! what the verifier needs from it without a worktree.
//!
//! * The mirror is a bare repository under a directory the caller owns. Each fetch uses an
//!   anonymous remote with the explicit refspec `+refs/heads/<branch>:refs/remotes/origin/<branch>`
//!   and, only when approvals are needed, a second one for the approval tags of the tip,
//!   `+refs/tags/gitops/approve/<tip>/*` (forced: the mirror is a cache; rollback
//!   protection is the caller's ancestry check against the last applied commit, looked up
//!   by object id with [`Mirror::commit_by_id`], never through the mirror's refs).
//! * What a forge may send is capped: the refs it advertises (`max_refs`) and the bytes of
//!   the pack (`max_pack_bytes`, counted as they arrive; the fetch is interrupted at the cap).
//! * Several remotes are tried in priority order; the first that succeeds wins and the
//!   failures of the ones before it are returned alongside.
//! * Every fetch is bounded: it runs on a worker thread, and a watchdog raises gix's
//!   interrupt flag and gives up when the timeout passes; curl's connect timeout and
//!   low-speed limit are set to the same bound so a stalled server also ends the worker.
//! * Reads are bounded too: file sizes are checked from the object header before a blob
//!   is loaded, tree listings and ancestry walks have caps.
//!
//! The mirror's configuration is isolated from the host's global/system git config.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use gix::ObjectId;
/// Kind of a git object (commit, tag, tree, blob).
pub use gix::object::Kind as ObjectType;

use crate::error::{FetchError, RemoteFailure};

/// The local ref the fetched branch is stored under.
pub fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Where approval tags live: `refs/tags/gitops/approve/<commit>/<name>`. Only the tags of
/// the tip being verified are fetched and read.
pub const APPROVAL_TAGS: &str = "refs/tags/gitops/approve/";

/// The ref prefix of the approval tags of `commit`.
pub fn approval_tags_of(commit: ObjectId) -> String {
    format!("{APPROVAL_TAGS}{commit}/")
}

/// Default cap on the pack one fetch may receive (`source.max_pack_bytes`): 512 MiB.
pub const DEFAULT_MAX_PACK_BYTES: u64 = 512 * 1024 * 1024;
/// Default cap on the refs a remote may advertise to one fetch (`source.max_refs`).
pub const DEFAULT_MAX_REFS: usize = 10_000;

/// How long to wait for the worker after raising the interrupt flag.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// HTTP credentials for a private remote (a Forgejo user and access token). Given to
/// the transport only when the server asks (a `401`), never put in a URL, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Access token (password).
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Branch name without `refs/heads/` (e.g. `main`).
    pub branch: String,
    /// Also fetch the approval tags of the tip ([`APPROVAL_TAGS`]`<tip>/*`), for a trust policy.
    pub approval_tags: bool,
    /// Refuse a remote that advertises more refs than this (`source.max_refs`).
    pub max_refs: usize,
    /// Interrupt a fetch whose pack grows beyond this many bytes (`source.max_pack_bytes`).
    pub max_pack_bytes: u64,
    /// Upper bound for one remote's fetch.
    pub timeout: Duration,
    /// Answer to an HTTP authentication request. Without it a remote that asks for
    /// credentials fails at once: the agent never prompts and never runs git's
    /// credential helpers.
    pub credentials: Option<Credentials>,
    /// PEM CA bundle for HTTPS remotes instead of the system's (`http.sslCAInfo`).
    pub ca_file: Option<PathBuf>,
}

impl FetchOptions {
    /// The branch alone with the given timeout and the default caps, no credentials, the
    /// system's CAs.
    pub fn new(branch: impl Into<String>, timeout: Duration) -> FetchOptions {
        FetchOptions {
            branch: branch.into(),
            approval_tags: false,
            max_refs: DEFAULT_MAX_REFS,
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
            timeout,
            credentials: None,
            ca_file: None,
        }
    }
}

/// How one remote is fetched: the parts of [`FetchOptions`] the transport needs.
#[derive(Debug, Clone)]
struct Transfer {
    timeout: Duration,
    credentials: Option<Credentials>,
    ca_file: Option<PathBuf>,
    max_refs: usize,
    max_pack_bytes: u64,
}

/// Result of a successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The remote that answered.
    pub url: String,
    /// The branch tip now in the mirror.
    pub tip: ObjectId,
    /// Whether a pack with new objects was received.
    pub received_pack: bool,
    /// Remotes tried before `url` that failed.
    pub failures: Vec<RemoteFailure>,
}

/// Kind of a tree entry, for listings and diffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// Regular file.
    Blob,
    /// Executable file.
    Executable,
    /// Symbolic link.
    Symlink,
    /// Submodule commit.
    Submodule,
}

/// One file of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEntry {
    /// Its kind.
    pub kind: FileKind,
    /// Its blob (or submodule commit) id.
    pub id: ObjectId,
}

/// An error and its sources, `: `-joined, without repeating a message its source already says.
fn why(e: impl std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn open_options(transfer: Option<&Transfer>) -> gix::open::Options {
    let mut overrides = Vec::new();
    if let Some(ca) = transfer.and_then(|t| t.ca_file.as_ref()) {
        overrides.push(format!("http.sslCAInfo={}", ca.display()));
    }
    if let Some(t) = transfer.map(|t| t.timeout) {
        // Backstops that end a stuck worker thread; a little longer than the watchdog so
        // that the watchdog, not curl, decides and reports the timeout.
        let backstop = t + Duration::from_secs(5);
        overrides.push(format!("gitoxide.http.connectTimeout={}", backstop.as_millis()));
        overrides.push("http.lowSpeedLimit=1".to_string());
        overrides.push(format!("http.lowSpeedTime={}", backstop.as_secs()));
    }
    gix::open::Options::isolated().config_overrides(overrides)
}

/// A git repository opened for reading: the agent's bare mirror or any local repository.
pub struct Mirror {
    dir: PathBuf,
    repo: gix::Repository,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mirror({})", self.dir.display())
    }
}

impl Mirror {
    /// Opens the bare mirror at `dir`, creating it (and parents) if it does not exist yet.
    pub fn open_or_init(dir: &Path) -> Result<Mirror, FetchError> {
        let open_err = |reason: String| FetchError::Open { dir: dir.to_path_buf(), reason };
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
            gix::init_bare(dir).map_err(|e| open_err(format!("init: {}", why(e))))?;
        }
        Self::open(dir)
    }

    /// Opens an existing repository (bare, or a worktree's `.git`), with isolated config.
    pub fn open(dir: &Path) -> Result<Mirror, FetchError> {
        let repo = gix::open_opts(dir, open_options(None))
            .map_err(|e| FetchError::Open { dir: dir.to_path_buf(), reason: why(e) })?;
        Ok(Mirror { dir: dir.to_path_buf(), repo })
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fetches `options.branch` (and, when asked, the tip's approval tags) from the first
    /// of `remotes` that works.
    pub fn fetch(
        &mut self,
        remotes: &[String],
        options: &FetchOptions,
    ) -> Result<Fetched, FetchError> {
        if remotes.is_empty() {
            return Err(FetchError::NoRemotes);
        }
        let refspecs =
            vec![format!("+refs/heads/{}:{}", options.branch, tracking_ref(&options.branch))];
        let mut failures = Vec::new();
        for url in remotes {
            let branch_missing = || RemoteFailure {
                url: url.clone(),
                reason: FetchError::BranchMissing {
                    url: url.clone(),
                    branch: options.branch.clone(),
                }
                .to_string(),
            };
            let transfer = Transfer {
                timeout: options.timeout,
                credentials: options.credentials.clone(),
                ca_file: options.ca_file.clone(),
                max_refs: options.max_refs,
                max_pack_bytes: options.max_pack_bytes,
            };
            match self.fetch_one(url, &refspecs, transfer.clone()) {
                Ok(outcome) if !outcome.local_refs.contains(&tracking_ref(&options.branch)) => {
                    failures.push(branch_missing());
                }
                Ok(outcome) => {
                    let tip = self.ref_target(&tracking_ref(&options.branch))?;
                    if options.approval_tags
                        && let Err(e) = self.fetch_approval_tags(url, tip, transfer)
                    {
                        failures.push(RemoteFailure { url: url.clone(), reason: e.to_string() });
                        continue;
                    }
                    return Ok(Fetched {
                        url: url.clone(),
                        tip,
                        received_pack: outcome.received_pack,
                        failures,
                    });
                }
                // gix refuses a fetch whose refspecs match nothing the remote advertises;
                // report that as the missing branch it is.
                Err(FetchError::Remote { reason, .. })
                    if reason.contains("None of the refspec") =>
                {
                    failures.push(branch_missing());
                }
                Err(e) => failures.push(RemoteFailure { url: url.clone(), reason: e.to_string() }),
            }
        }
        Err(FetchError::AllRemotesFailed { failures })
    }

    /// Fetches the approval tags of `tip` ([`approval_tags_of`]) from `url`; none is fine.
    fn fetch_approval_tags(
        &mut self,
        url: &str,
        tip: ObjectId,
        transfer: Transfer,
    ) -> Result<(), FetchError> {
        let prefix = approval_tags_of(tip);
        let refspecs = [format!("+{prefix}*:{prefix}*")];
        match self.fetch_one(url, &refspecs, transfer) {
            Ok(_) => Ok(()),
            // No approval tag on the tip (a remote speaking protocol v1 lists its other refs).
            Err(FetchError::Remote { reason, .. }) if reason.contains("None of the refspec") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches arbitrary `refspecs` from one `url` within `timeout`, with the default caps.
    pub fn fetch_refspecs(
        &mut self,
        url: &str,
        refspecs: &[String],
        timeout: Duration,
    ) -> Result<FetchOutcome, FetchError> {
        let transfer = Transfer {
            timeout,
            credentials: None,
            ca_file: None,
            max_refs: DEFAULT_MAX_REFS,
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
        };
        self.fetch_one(url, refspecs, transfer)
    }

    fn fetch_one(
        &mut self,
        url: &str,
        refspecs: &[String],
        transfer: Transfer,
    ) -> Result<FetchOutcome, FetchError> {
        let timeout = transfer.timeout;
        let interrupt = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (dir, url_owned, specs, flag) =
            (self.dir.clone(), url.to_string(), refspecs.to_vec(), Arc::clone(&interrupt));
        let worker = std::thread::Builder::new()
            .name("veza-fetch".into())
            .spawn(move || {
                let result = fetch_blocking(&dir, &url_owned, &specs, &transfer, flag);
                let _ = tx.send(result);
            })
            .map_err(|e| FetchError::Remote { url: url.to_string(), reason: e.to_string() })?;
        let result = match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                interrupt.store(true, Ordering::SeqCst);
                // Give the worker a moment to notice; if it is stuck in I/O, leave it behind
                // (curl's own timeouts end it) and report the timeout now.
                let _ = rx.recv_timeout(INTERRUPT_GRACE);
                return Err(FetchError::Timeout { url: url.to_string(), timeout });
            }
        };
        let _ = worker.join();
        let outcome = result?;
        // Re-open so that refs and packs written by the worker are visible.
        self.repo = gix::open_opts(&self.dir, open_options(None))
            .map_err(|e| FetchError::Open { dir: self.dir.clone(), reason: why(e) })?;
        Ok(outcome)
    }

    fn ref_target(&self, name: &str) -> Result<ObjectId, FetchError> {
        let mut r = self
            .repo
            .find_reference(name)
            .map_err(|e| FetchError::RevNotFound { rev: name.to_string(), reason: why(e) })?;
        r.peel_to_id()
            .map(|id| id.detach())
            .map_err(|e| FetchError::RevNotFound { rev: name.to_string(), reason: why(e) })
    }

    /// The commit whose full 40-hex object id is `hex`, looked up in the object database
    /// only: the object must be there and be a commit. Never a ref name, never an
    /// abbreviation — a tag or branch *named* like an id is ignored. Use this for anything
    /// that checks ancestry (a forge can create refs, not objects with a given id).
    pub fn commit_by_id(&self, hex: &str) -> Result<ObjectId, FetchError> {
        let not_an_id = || FetchError::NotAnObjectId { value: hex.to_string() };
        if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_an_id());
        }
        let id = ObjectId::from_hex(hex.as_bytes()).map_err(|_| not_an_id())?;
        let header =
            self.repo.find_header(id).map_err(|_| FetchError::ObjectNotFound { id: hex.into() })?;
        if header.kind() != gix::object::Kind::Commit {
            return Err(FetchError::WrongKind {
                id: hex.to_string(),
                expected: "commit".into(),
                actual: header.kind().to_string(),
            });
        }
        Ok(id)
    }

    /// Resolves a revision: a full or abbreviated (≥ 4) hex id, a full ref name, or a short
    /// name tried as `refs/heads/`, `refs/remotes/origin/`, `refs/tags/`. Tags are **not**
    /// peeled: a tag name resolves to the tag object so that its own signature can be checked.
    /// A full 40-hex id is only ever an object id. Not for ancestry checks: see
    /// [`Mirror::commit_by_id`].
    pub fn resolve(&self, rev: &str) -> Result<ObjectId, FetchError> {
        let not_found = |reason: &str| FetchError::RevNotFound {
            rev: rev.to_string(),
            reason: reason.to_string(),
        };
        if rev.len() >= 4 && rev.len() <= 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            if let Ok(id) = ObjectId::from_hex(rev.as_bytes()) {
                return if self.exists(id) { Ok(id) } else { Err(not_found("no such object")) };
            }
            if let Ok(prefix) = gix::hash::Prefix::from_hex(rev) {
                match self.repo.objects.lookup_prefix(prefix, None) {
                    Ok(Some(Ok(id))) => return Ok(id),
                    Ok(Some(Err(()))) => return Err(not_found("ambiguous abbreviated object id")),
                    Ok(None) => {}
                    Err(e) => return Err(not_found(&why(e))),
                }
            }
        }
        let candidates: Vec<String> = if rev.starts_with("refs/") {
            vec![rev.to_string()]
        } else if rev == "HEAD" {
            vec!["HEAD".to_string()]
        } else {
            vec![format!("refs/heads/{rev}"), tracking_ref(rev), format!("refs/tags/{rev}")]
        };
        for name in &candidates {
            if let Ok(Some(mut r)) = self.repo.try_find_reference(name.as_str()) {
                let id = match r.target().try_id() {
                    Some(id) => id.to_owned(),
                    None => r.peel_to_id().map_err(|e| not_found(&why(e)))?.detach(),
                };
                return Ok(id);
            }
        }
        Err(not_found("no such object id, branch or tag"))
    }

    /// Whether the object exists in the object database.
    pub fn exists(&self, id: ObjectId) -> bool {
        self.repo.find_header(id).is_ok()
    }

    /// The raw bytes and kind of an object (what `git cat-file <kind> <id>` prints).
    pub fn raw_object(&self, id: ObjectId) -> Result<(gix::object::Kind, Vec<u8>), FetchError> {
        let obj = self
            .repo
            .find_object(id)
            .map_err(|_| FetchError::ObjectNotFound { id: id.to_string() })?
            .detach();
        Ok((obj.kind, obj.data))
    }

    /// The raw bytes of a commit; fails if `id` is not a commit.
    pub fn raw_commit(&self, id: ObjectId) -> Result<Vec<u8>, FetchError> {
        let (kind, data) = self.raw_object(id)?;
        if kind != gix::object::Kind::Commit {
            return Err(FetchError::WrongKind {
                id: id.to_string(),
                expected: "commit".into(),
                actual: kind.to_string(),
            });
        }
        Ok(data)
    }

    /// Follows tags to the commit they point at (at most 16 levels).
    pub fn peel_to_commit(&self, id: ObjectId) -> Result<ObjectId, FetchError> {
        let mut current = id;
        for _ in 0..16 {
            let (kind, data) = self.raw_object(current)?;
            match kind {
                gix::object::Kind::Commit => return Ok(current),
                gix::object::Kind::Tag => {
                    let info = crate::object::parse_tag(&data).map_err(|e| FetchError::Odb {
                        what: format!("tag {current}"),
                        reason: e.to_string(),
                    })?;
                    current = ObjectId::from_hex(info.object.as_bytes()).map_err(|e| {
                        FetchError::Odb { what: format!("tag {current}"), reason: e.to_string() }
                    })?;
                }
                other => {
                    return Err(FetchError::WrongKind {
                        id: current.to_string(),
                        expected: "commit".into(),
                        actual: other.to_string(),
                    });
                }
            }
        }
        Err(FetchError::Odb { what: format!("tag chain from {id}"), reason: "too deep".into() })
    }

    fn commit_tree(&self, commit: ObjectId) -> Result<ObjectId, FetchError> {
        let c = self.repo.find_commit(commit).map_err(|_| FetchError::WrongKind {
            id: commit.to_string(),
            expected: "commit".into(),
            actual: "missing or other object".into(),
        })?;
        c.tree_id()
            .map(|id| id.detach())
            .map_err(|e| FetchError::Odb { what: format!("tree of {commit}"), reason: why(e) })
    }

    fn tree_entries(&self, tree: ObjectId) -> Result<BTreeMap<Vec<u8>, TreeItem>, FetchError> {
        let t = self
            .repo
            .find_tree(tree)
            .map_err(|e| FetchError::Odb { what: format!("tree {tree}"), reason: why(e) })?;
        let decoded = t
            .decode()
            .map_err(|e| FetchError::Odb { what: format!("tree {tree}"), reason: why(e) })?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| {
                let item = TreeItem { mode: e.mode, id: e.oid.to_owned() };
                (e.filename.to_vec(), item)
            })
            .collect())
    }

    /// Reads `path` from `commit`'s tree (no worktree), refusing trees, symlinks, submodules
    /// and blobs larger than `max_bytes` (checked from the object header before loading).
    pub fn read_file(
        &self,
        commit: ObjectId,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, FetchError> {
        let not_found =
            || FetchError::PathNotFound { commit: commit.to_string(), path: path.to_string() };
        let mut tree = self.commit_tree(commit)?;
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
            return Err(not_found());
        }
        for (i, segment) in segments.iter().enumerate() {
            let entries = self.tree_entries(tree)?;
            let item = entries.get(segment.as_bytes()).ok_or_else(not_found)?;
            let last = i + 1 == segments.len();
            if !last {
                if !item.mode.is_tree() {
                    return Err(not_found());
                }
                tree = item.id;
                continue;
            }
            let kind = match item.kind() {
                Some(FileKind::Blob | FileKind::Executable) => {
                    let header = self.repo.find_header(item.id).map_err(|e| FetchError::Odb {
                        what: format!("`{path}` in {commit}"),
                        reason: why(e),
                    })?;
                    if header.size() > max_bytes {
                        return Err(FetchError::FileTooLarge {
                            commit: commit.to_string(),
                            path: path.to_string(),
                            size: header.size(),
                            limit: max_bytes,
                        });
                    }
                    let mut blob = self.repo.find_blob(item.id).map_err(|e| FetchError::Odb {
                        what: format!("`{path}` in {commit}"),
                        reason: why(e),
                    })?;
                    return Ok(blob.take_data());
                }
                Some(FileKind::Symlink) => "symbolic link",
                Some(FileKind::Submodule) => "submodule",
                None => "directory",
            };
            return Err(FetchError::NotAFile {
                commit: commit.to_string(),
                path: path.to_string(),
                kind: kind.to_string(),
            });
        }
        Err(not_found())
    }

    /// All files of `commit`'s tree (path → kind + id), at most `max_files`.
    pub fn list_files(
        &self,
        commit: ObjectId,
        max_files: usize,
    ) -> Result<BTreeMap<String, FileEntry>, FetchError> {
        let mut out = BTreeMap::new();
        let tree = self.commit_tree(commit)?;
        let mut budget = Budget { left: max_files, limit: max_files, commit };
        self.collect_files(tree, "", &mut out, &mut budget)?;
        Ok(out)
    }

    fn collect_files(
        &self,
        tree: ObjectId,
        prefix: &str,
        out: &mut BTreeMap<String, FileEntry>,
        budget: &mut Budget,
    ) -> Result<(), FetchError> {
        for (name, item) in self.tree_entries(tree)? {
            budget.spend()?;
            let path = join(prefix, &name);
            match item.kind() {
                None => self.collect_files(item.id, &path, out, budget)?,
                Some(kind) => {
                    out.insert(path, FileEntry { kind, id: item.id });
                }
            }
        }
        Ok(())
    }

    /// Paths (files, symlinks, submodules) that differ between the trees of `old` and `new`:
    /// added, removed, modified or changed kind. Renames show as remove + add. Equal subtrees
    /// are skipped by id, so the cost is proportional to the change; at most `max_entries`
    /// tree entries are examined. Without `old` (nothing applied yet), every path of `new`
    /// counts as changed.
    pub fn changed_paths(
        &self,
        old: Option<ObjectId>,
        new: ObjectId,
        max_entries: usize,
    ) -> Result<Vec<String>, FetchError> {
        let old_tree = match old {
            Some(old) => Some(self.commit_tree(old)?),
            None => None,
        };
        let new_tree = self.commit_tree(new)?;
        let mut out = Vec::new();
        let mut budget = Budget { left: max_entries, limit: max_entries, commit: new };
        self.diff_trees(old_tree, Some(new_tree), "", &mut out, &mut budget)?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn diff_trees(
        &self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        prefix: &str,
        out: &mut Vec<String>,
        budget: &mut Budget,
    ) -> Result<(), FetchError> {
        if old == new {
            return Ok(());
        }
        let empty = BTreeMap::new();
        let old_entries = match old {
            Some(t) => self.tree_entries(t)?,
            None => empty.clone(),
        };
        let new_entries = match new {
            Some(t) => self.tree_entries(t)?,
            None => empty,
        };
        let names: std::collections::BTreeSet<&Vec<u8>> =
            old_entries.keys().chain(new_entries.keys()).collect();
        for name in names {
            budget.spend()?;
            let (o, n) = (old_entries.get(name), new_entries.get(name));
            if o == n {
                continue;
            }
            let path = join(prefix, name);
            let o_tree = o.filter(|i| i.mode.is_tree()).map(|i| i.id);
            let n_tree = n.filter(|i| i.mode.is_tree()).map(|i| i.id);
            let o_file = o.is_some_and(|i| !i.mode.is_tree());
            let n_file = n.is_some_and(|i| !i.mode.is_tree());
            if o_file || n_file {
                out.push(path.clone());
            }
            if o_tree.is_some() || n_tree.is_some() {
                self.diff_trees(o_tree, n_tree, &path, out, budget)?;
            }
        }
        Ok(())
    }

    /// Whether `new` is `old` or has `old` as an ancestor. Walks at most `max_commits` commits;
    /// returns `Ok(false)` at once if `old` is not in the object database at all.
    pub fn is_descendant(
        &self,
        new: ObjectId,
        old: ObjectId,
        max_commits: usize,
    ) -> Result<bool, FetchError> {
        if new == old {
            return Ok(true);
        }
        if !self.exists(old) {
            return Ok(false);
        }
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([new]);
        seen.insert(new);
        while let Some(id) = queue.pop_front() {
            if seen.len() > max_commits {
                return Err(FetchError::AncestryLimit {
                    new: new.to_string(),
                    old: old.to_string(),
                    limit: max_commits,
                });
            }
            let commit = self.repo.find_commit(id).map_err(|e| FetchError::Odb {
                what: format!("commit {id} (history of {new})"),
                reason: why(e),
            })?;
            for parent in commit.parent_ids() {
                let parent = parent.detach();
                if parent == old {
                    return Ok(true);
                }
                if seen.insert(parent) {
                    queue.push_back(parent);
                }
            }
        }
        Ok(false)
    }

    /// Annotated approval tags of `commit` ([`approval_tags_of`]) whose tag object directly
    /// points at it: (ref name, raw tag object). Only that prefix is read, so the cost does
    /// not grow with the repository's other tags. Lightweight tags are skipped (they carry
    /// no signature); at most `max_tags` are read.
    pub fn tags_pointing_at(
        &self,
        commit: ObjectId,
        max_tags: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, FetchError> {
        let odb =
            |e: gix::Error| FetchError::Odb { what: "approval tag refs".into(), reason: why(e) };
        let platform = self.repo.references().map_err(odb)?;
        let prefix = approval_tags_of(commit);
        let iter = platform.prefixed(prefix.as_str()).map_err(odb)?;
        let want = format!("object {commit}\n");
        let mut out = Vec::new();
        for (seen, r) in iter.enumerate() {
            if seen >= max_tags {
                return Err(FetchError::TooManyTags {
                    commit: commit.to_string(),
                    limit: max_tags,
                });
            }
            let Ok(r) = r else { continue };
            let Some(id) = r.target().try_id().map(ToOwned::to_owned) else { continue };
            let Ok(header) = self.repo.find_header(id) else { continue };
            if header.kind() != gix::object::Kind::Tag || header.size() > 64 * 1024 {
                continue;
            }
            let (_, data) = self.raw_object(id)?;
            if data.starts_with(want.as_bytes()) {
                out.push((r.name().as_bstr().to_string(), data));
            }
        }
        Ok(out)
    }
}

/// Outcome of one remote's fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Whether a pack was received.
    pub received_pack: bool,
    /// Local refs the refspecs mapped to (those the remote advertised).
    pub local_refs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TreeItem {
    mode: gix::object::tree::EntryMode,
    id: ObjectId,
}

impl TreeItem {
    fn kind(&self) -> Option<FileKind> {
        use gix::object::tree::EntryKind;
        match self.mode.kind() {
            EntryKind::Tree => None,
            EntryKind::Blob => Some(FileKind::Blob),
            EntryKind::BlobExecutable => Some(FileKind::Executable),
            EntryKind::Link => Some(FileKind::Symlink),
            EntryKind::Commit => Some(FileKind::Submodule),
        }
    }
}

struct Budget {
    left: usize,
    limit: usize,
    commit: ObjectId,
}

impl Budget {
    fn spend(&mut self) -> Result<(), FetchError> {
        if self.left == 0 {
            return Err(FetchError::TooManyFiles {
                commit: self.commit.to_string(),
                limit: self.limit,
            });
        }
        self.left -= 1;
        Ok(())
    }
}

fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() { name.into_owned() } else { format!("{prefix}/{name}") }
}

/// The blocking fetch, run on the worker thread with its own repository handle.
/// Whether a fetch failure (its message) is about credentials: refused by the forge,
/// missing, or not sent (plain http, another host). Retrying those soon cannot help and
/// repeated 401s can lock the account. The phrases are the ones this module writes, plus
/// gix's own for a rejected identity.
pub fn is_credentials_failure(message: &str) -> bool {
    const PHRASES: [&str; 5] = [
        "were not accepted by the remote",
        "the server requires authentication",
        "rejected the credentials",
        "clear text refused",
        "they are only sent to",
    ];
    PHRASES.iter().any(|p| message.contains(p))
}

/// `https://HOST[:PORT]` of an https URL (userinfo dropped, host lower-cased); `None` for
/// any other scheme.
fn https_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    Some(format!("https://{}", host.to_ascii_lowercase()))
}

/// Whether two `https://HOST[:PORT]` authorities name the same server (443 is implied).
fn same_authority(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.strip_suffix(":443").map(str::to_string).unwrap_or(s)
    };
    norm(a) == norm(b)
}

/// A progress sink that counts the bytes of the pack as gix reads them from the remote
/// and raises the fetch's interrupt flag once they pass the cap (gix checks the flag on
/// every read of the pack stream, and removes its temporary pack file when interrupted).
#[derive(Clone)]
struct PackCap {
    id: gix::progress::Id,
    limit: u64,
    received: Arc<std::sync::atomic::AtomicU64>,
    exceeded: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
}

impl PackCap {
    /// gix-pack's progress id for the bytes of the pack being read (`ReadPackBytes`).
    const PACK_BYTES: gix::progress::Id = *b"BWRB";

    fn new(limit: u64, interrupt: Arc<AtomicBool>) -> PackCap {
        PackCap {
            id: gix::progress::UNKNOWN,
            limit,
            received: Arc::default(),
            exceeded: Arc::default(),
            interrupt,
        }
    }

    fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::SeqCst)
    }

    fn child(&self, id: gix::progress::Id) -> PackCap {
        PackCap { id, ..self.clone() }
    }
}

impl gix::progress::Count for PackCap {
    fn set(&self, _step: gix::progress::Step) {}

    fn step(&self) -> gix::progress::Step {
        0
    }

    fn inc_by(&self, step: gix::progress::Step) {
        if self.id != Self::PACK_BYTES {
            return;
        }
        let total = self.received.fetch_add(step as u64, Ordering::SeqCst) + step as u64;
        if total > self.limit {
            self.exceeded.store(true, Ordering::SeqCst);
            self.interrupt.store(true, Ordering::SeqCst);
        }
    }

    fn counter(&self) -> gix::progress::StepShared {
        Arc::default()
    }
}

impl gix::progress::Progress for PackCap {
    fn init(&mut self, _max: Option<gix::progress::Step>, _unit: Option<gix::progress::Unit>) {}

    fn set_name(&mut self, _name: String) {}

    fn name(&self) -> Option<String> {
        None
    }

    fn id(&self) -> gix::progress::Id {
        self.id
    }

    fn message(&self, _level: gix::progress::MessageLevel, _message: String) {}
}

impl gix::progress::NestedProgress for PackCap {
    type SubProgress = PackCap;

    fn add_child(&mut self, _name: impl Into<String>) -> PackCap {
        self.child(gix::progress::UNKNOWN)
    }

    fn add_child_with_id(&mut self, _name: impl Into<String>, id: gix::progress::Id) -> PackCap {
        self.child(id)
    }
}

fn fetch_blocking(
    dir: &Path,
    url: &str,
    refspecs: &[String],
    transfer: &Transfer,
    interrupt: Arc<AtomicBool>,
) -> Result<FetchOutcome, FetchError> {
    let (timeout, credentials) = (transfer.timeout, transfer.credentials.as_ref());
    let remote_err = |e: gix::Error| {
        let mut reason = why(e);
        if reason.contains("were not accepted by the remote") {
            reason.push_str(
                " (check the user and token in source.credentials_file, and that the token \
                 may read the repository)",
            );
        }
        FetchError::Remote { url: url.to_string(), reason }
    };
    let repo = gix::open_opts(dir, open_options(Some(transfer)))
        .map_err(|e| FetchError::Open { dir: dir.to_path_buf(), reason: why(e) })?;
    let remote = repo
        .remote_at(url)
        .map_err(remote_err)?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(refspecs.iter().map(String::as_str), gix::remote::Direction::Fetch)
        .map_err(remote_err)?;
    // Credentials come from the host config only: no prompt, no credential helpers, and
    // only for the https remote being fetched (not another host, not plain http, not a
    // redirect elsewhere). gix asks again after a rejection; a second ask (or any ask
    // without credentials) ends the fetch with a message that says what to configure.
    let mut asked = 0u32;
    let home = https_authority(url);
    let answer = move |action: gix::credentials::helper::Action| -> gix::Result<
        Option<gix::credentials::protocol::Outcome>,
    > {
        let gix::credentials::helper::Action::Get(ctx) = action else { return Ok(None) };
        asked += 1;
        let refuse = |why: String| Err(gix::Error::from_error(std::io::Error::other(why)));
        let Some(c) = credentials else {
            return refuse(
                "the server requires authentication (HTTP 401): set source.credentials_file to a \
                 file holding `username:token`"
                    .to_string(),
            );
        };
        // Who asks: gix fills in the URL it talks to (after redirects); protocol and host
        // only in some versions.
        let asking = match (ctx.url.as_ref(), ctx.protocol.as_deref(), ctx.host.as_deref()) {
            (Some(u), _, _) => Some(u.to_string()),
            (None, Some(protocol), Some(host)) => Some(format!("{protocol}://{host}")),
            _ => None,
        };
        let clear_text = || {
            refuse(
                "the server asked for credentials over plain http: they are only ever sent over \
                 https (clear text refused); use an https remote"
                    .to_string(),
            )
        };
        let Some(home) = &home else { return clear_text() };
        let Some(asking) = asking else {
            return refuse("a server asked for credentials without saying which URL".to_string());
        };
        let Some(asking) = https_authority(&asking) else { return clear_text() };
        if !same_authority(home, &asking) {
            return refuse(format!(
                "{asking} asked for credentials: they are only sent to {home}, the remote being \
                 fetched"
            ));
        }
        if asked > 1 {
            return refuse(format!(
                "the server rejected the credentials of user `{}` (HTTP 401): check the token in \
                 source.credentials_file and its access to the repository",
                c.username
            ));
        }
        Ok(Some(gix::credentials::protocol::Outcome {
            identity: gix::sec::identity::Account {
                username: c.username.clone(),
                password: c.token.clone(),
                oauth_refresh_token: None,
            },
            next: ctx.into(),
        }))
    };
    let connection =
        remote.connect(gix::remote::Direction::Fetch).map_err(remote_err)?.with_credentials(answer);
    let prepared =
        connection.prepare_fetch(gix::progress::Discard, Default::default()).map_err(remote_err)?;
    let advertised = prepared.ref_map().remote_refs.len();
    if advertised > transfer.max_refs {
        return Err(FetchError::TooManyRefs {
            url: url.to_string(),
            count: advertised,
            limit: transfer.max_refs,
        });
    }
    let cap = PackCap::new(transfer.max_pack_bytes, Arc::clone(&interrupt));
    let outcome = prepared.receive(cap.clone(), &interrupt).map_err(|e| {
        if cap.exceeded() {
            FetchError::PackTooLarge { url: url.to_string(), limit: transfer.max_pack_bytes }
        } else if interrupt.load(Ordering::SeqCst) {
            FetchError::Timeout { url: url.to_string(), timeout }
        } else {
            remote_err(e)
        }
    })?;
    let local_refs = outcome
        .ref_map
        .mappings
        .iter()
        .filter_map(|m| m.local.as_ref().map(ToString::to_string))
        .collect();
    let received_pack = matches!(outcome.status, gix::remote::fetch::Status::Change { .. });
    Ok(FetchOutcome { received_pack, local_refs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_https_server_being_fetched() {
        // (remote URL, its authority)
        let authorities = [
            ("https://forge.example/veza/manifests.git", Some("https://forge.example")),
            ("https://Forge.Example:8443/x.git", Some("https://forge.example:8443")),
            ("https://agent:tok@forge.example/x.git", Some("https://forge.example")),
            ("http://forge.example/x.git", None),
            ("file:///srv/x.git", None),
        ];
        for (url, want) in authorities {
            assert_eq!(https_authority(url).as_deref(), want, "{url}");
        }
        // (remote, who asks, same server)
        let asks = [
            ("https://forge.example", "https://forge.example", true),
            ("https://forge.example", "https://forge.example:443", true),
            ("https://forge.example", "https://FORGE.example", true),
            ("https://forge.example", "https://mirror.example", false),
            ("https://forge.example", "https://forge.example:8443", false),
            ("https://forge.example", "http://forge.example", false),
        ];
        for (home, asking, same) in asks {
            assert_eq!(same_authority(home, asking), same, "{home} vs {asking}");
        }
    }
}
