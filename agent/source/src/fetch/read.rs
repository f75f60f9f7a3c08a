//! Reading the mirror without a worktree: refs and commits by id, raw objects, files,
//! tree listings and diffs, ancestry and the tags pointing at a commit. Every read is
//! bounded (file sizes from the object header, caps on listings and walks).

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::{FileEntry, FileKind, Mirror, ObjectId, approval_tags_of, tracking_ref, why};
use crate::error::FetchError;

impl Mirror {
    pub(super) fn ref_target(&self, name: &str) -> Result<ObjectId, FetchError> {
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
    /// name tried as `refs/tags/`, `refs/heads/`, `refs/remotes/origin/` (git's order). Tags
    /// are **not** peeled: a tag name resolves to the tag object so that its own signature
    /// can be checked. Any other ref (a branch, `HEAD`) resolves to its commit.
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
            // Git's own order: a tag before a branch of the same name.
            vec![format!("refs/tags/{rev}"), format!("refs/heads/{rev}"), tracking_ref(rev)]
        };
        for name in &candidates {
            if let Ok(Some(mut r)) = self.repo.try_find_reference(name.as_str()) {
                let id = match r.target().try_id() {
                    Some(id) => id.to_owned(),
                    None => r.peel_to_id().map_err(|e| not_found(&why(e)))?.detach(),
                };
                // Only a tag name means the tag object; a branch names its commit, even
                // when the forge points it at a (signed) tag of an unsigned commit.
                if name.starts_with("refs/tags/") {
                    return Ok(id);
                }
                return self.peel_to_commit(id);
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
        let entries = decoded.entries.iter().map(|e| (e.filename.as_ref(), e.mode.is_tree()));
        check_tree(entries)
            .map_err(|reason| FetchError::MalformedTree { tree: tree.to_string(), reason })?;
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
        let mut budget = Budget::new(max_files, commit);
        self.collect_files(tree, "", 1, &mut out, &mut budget)?;
        Ok(out)
    }

    fn collect_files(
        &self,
        tree: ObjectId,
        prefix: &str,
        depth: usize,
        out: &mut BTreeMap<String, FileEntry>,
        budget: &mut Budget,
    ) -> Result<(), FetchError> {
        for (name, item) in self.tree_entries(tree)? {
            budget.spend()?;
            let path = budget.path(prefix, &name, depth)?;
            match item.kind() {
                None => self.collect_files(item.id, &path, depth + 1, out, budget)?,
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
    /// tree entries are examined, no deeper than [`MAX_TREE_DEPTH`], with paths within
    /// [`MAX_PATH_BYTES`] each and [`MAX_PATHS_BYTES`] in all. Without `old` (nothing applied yet), every path of `new`
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
        let mut budget = Budget::new(max_entries, new);
        self.diff_trees(old_tree, Some(new_tree), "", 1, &mut out, &mut budget)?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn diff_trees(
        &self,
        old: Option<ObjectId>,
        new: Option<ObjectId>,
        prefix: &str,
        depth: usize,
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
            let path = budget.path(prefix, name, depth)?;
            let o_tree = o.filter(|i| i.mode.is_tree()).map(|i| i.id);
            let n_tree = n.filter(|i| i.mode.is_tree()).map(|i| i.id);
            let o_file = o.is_some_and(|i| !i.mode.is_tree());
            let n_file = n.is_some_and(|i| !i.mode.is_tree());
            if o_file || n_file {
                out.push(path.clone());
            }
            if o_tree.is_some() || n_tree.is_some() {
                self.diff_trees(o_tree, n_tree, &path, depth + 1, out, budget)?;
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
    /// no signature), and so are tags over [`MAX_APPROVAL_TAG_BYTES`]; at most `max_tags`
    /// are read (the forge chooses how many there are: they are all held in memory).
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
            if header.kind() != gix::object::Kind::Tag || header.size() > MAX_APPROVAL_TAG_BYTES {
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
/// The largest approval tag read: a signed approval (`gitops-approve-v1`, the ref, an SSH
/// signature) is under 1 KiB.
pub const MAX_APPROVAL_TAG_BYTES: u64 = 8 * 1024;

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

/// Deepest directory nesting a tree walk follows: the walks recurse once per level.
pub const MAX_TREE_DEPTH: usize = 64;
/// Longest path a tree walk builds, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Most bytes of paths one tree walk builds in all.
pub const MAX_PATHS_BYTES: usize = 64 << 20;

/// What a tree walk may still examine: entries, and bytes of the paths it builds.
struct Budget {
    left: usize,
    limit: usize,
    bytes_left: usize,
    commit: ObjectId,
}

impl Budget {
    fn new(limit: usize, commit: ObjectId) -> Budget {
        Budget { left: limit, limit, bytes_left: MAX_PATHS_BYTES, commit }
    }

    fn too_large(&self, what: String) -> FetchError {
        FetchError::TreeTooLarge { commit: self.commit.to_string(), what }
    }

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

    /// `name` under `prefix`, `depth` levels down, within the path bounds.
    fn path(&mut self, prefix: &str, name: &[u8], depth: usize) -> Result<String, FetchError> {
        if depth > MAX_TREE_DEPTH {
            return Err(self.too_large(format!("directories nested deeper than {MAX_TREE_DEPTH}")));
        }
        let path = join(prefix, name);
        if path.len() > MAX_PATH_BYTES {
            return Err(self.too_large(format!("a path longer than {MAX_PATH_BYTES} bytes")));
        }
        self.bytes_left = self.bytes_left.checked_sub(path.len()).ok_or_else(|| {
            self.too_large(format!("paths that add up to more than {MAX_PATHS_BYTES} bytes"))
        })?;
        Ok(path)
    }
}

fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() { name.into_owned() } else { format!("{prefix}/{name}") }
}

/// What `git fsck` requires of a tree's entries (name, is a tree), in their stored order:
/// every name a plain, new path component, in git's order (a tree sorts as if its name
/// ended in `/`). The reason of the first violation, if any.
fn check_tree<'a>(entries: impl IntoIterator<Item = (&'a [u8], bool)>) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    let mut previous: Option<Vec<u8>> = None;
    for (name, is_tree) in entries {
        let shown = String::from_utf8_lossy(name).escape_debug().to_string();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(format!("an entry named `{shown}`"));
        }
        if name.eq_ignore_ascii_case(b".git") {
            return Err(format!("an entry named `{shown}`, git's own directory"));
        }
        if !names.insert(name) {
            return Err(format!("`{shown}` appears twice"));
        }
        let mut key = name.to_vec();
        if is_tree {
            key.push(b'/');
        }
        if previous.as_ref().is_some_and(|p| *p >= key) {
            return Err(format!("`{shown}` is out of order"));
        }
        previous = Some(key);
    }
    Ok(())
}

#[cfg(test)]
mod tree_tests {
    use super::check_tree;

    /// (entries as stored: name, is a tree), and the reason it is refused (`None`: read).
    #[test]
    fn only_trees_git_would_write_are_read() {
        /// Entries as stored (name, is a tree).
        type Entries<'a> = &'a [(&'a str, bool)];
        let table: &[(Entries<'_>, Option<&str>)] = &[
            (&[], None),
            (&[("a", false), ("b", true), ("c", false)], None),
            // Git's order: a tree sorts as if named `a/`, after `a-b` and `a.yaml`.
            (&[("a-b", false), ("a.yaml", false), ("a", true)], None),
            (&[("a.yaml", false), ("a", false)], Some("`a` is out of order")),
            (&[("a", true), ("a-b", false)], Some("`a-b` is out of order")),
            // The same name twice: one reader takes the first, another the last.
            (&[("prod.yaml", false), ("prod.yaml", false)], Some("`prod.yaml` appears twice")),
            (&[("m", false), ("m", true)], Some("`m` appears twice")),
            (&[("", false)], Some("an entry named ``")),
            (&[(".", true)], Some("an entry named `.`")),
            (&[("..", true)], Some("an entry named `..`")),
            (&[("a/b", false)], Some("an entry named `a/b`")),
            (&[(".GIT", true)], Some("an entry named `.GIT`, git's own directory")),
        ];
        for (entries, want) in table {
            let got = check_tree(entries.iter().map(|(n, t)| (n.as_bytes(), *t)));
            assert_eq!(got.err().as_deref(), *want, "{entries:?}");
        }
    }
}
