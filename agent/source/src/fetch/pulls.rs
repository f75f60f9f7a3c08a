//! PR heads for previews: `refs/pull/<N>/head` as Forgejo exposes them, fetched by a call
//! of their own (after the sync, so a PR can never fail or slow the branch's fetch) into
//! their own namespace of the mirror, [`PULL_HEADS`]. Nothing that reads the branch looks
//! there: its tip is read from the tracking ref only, `resolve` tries `refs/heads/`,
//! `refs/remotes/origin/` and `refs/tags/`, and ancestry is checked by object id.
//!
//! The caps of the branch's fetch apply: the refs the remote advertises for the refspec
//! (`source.max_refs`: every ref under `refs/pull/` counts) and the bytes of the pack
//! (`source.max_pack_bytes`). The heads of a fetch are those the remote advertised to it
//! (the fetch's ref mappings): a ref the remote stopped advertising stays in the mirror
//! (a cache, never pruned) but is never read again.

use std::collections::{HashSet, VecDeque};

use super::{FetchOptions, Mirror, ObjectId, why};
use crate::error::{FetchError, RemoteFailure};

/// Where PR heads are kept in the mirror: `refs/veza-preview/pull/<N>/head`.
pub const PULL_HEADS: &str = "refs/veza-preview/pull/";

/// One pull request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullHead {
    /// The PR number.
    pub number: u64,
    /// Its head commit.
    pub head: ObjectId,
}

/// The PR heads a remote advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullHeads {
    /// The remote that answered.
    pub url: String,
    /// Every head it advertises now, in PR number order (closed PRs included: Forgejo
    /// keeps their refs).
    pub heads: Vec<PullHead>,
}

/// The PR number of a local ref `refs/veza-preview/pull/<N>/head`; `None` for anything
/// else (the refspec's `*` may match several components: `refs/pull/a/b/head`).
pub fn pull_number(local_ref: &str) -> Option<u64> {
    let n = local_ref.strip_prefix(PULL_HEADS)?.strip_suffix("/head")?;
    if n.is_empty() || n.len() > 18 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

impl Mirror {
    /// Fetches every `refs/pull/*/head` from the first of `remotes` that answers, into
    /// [`PULL_HEADS`]; a remote without PR refs answers none.
    pub fn fetch_pull_heads(
        &mut self,
        remotes: &[String],
        options: &FetchOptions,
    ) -> Result<PullHeads, FetchError> {
        if remotes.is_empty() {
            return Err(FetchError::NoRemotes);
        }
        let refspecs = [format!("+refs/pull/*/head:{PULL_HEADS}*/head")];
        let mut failures = Vec::new();
        for url in remotes {
            match self.fetch_one(url, &refspecs, options.transfer()) {
                Ok(outcome) => {
                    let mut heads: Vec<PullHead> = outcome
                        .local_refs
                        .iter()
                        .filter_map(|r| {
                            Some(PullHead {
                                number: pull_number(r)?,
                                head: self.ref_target(r).ok()?,
                            })
                        })
                        .collect();
                    heads.sort_by_key(|h| h.number);
                    heads.dedup_by_key(|h| h.number);
                    return Ok(PullHeads { url: url.clone(), heads });
                }
                Err(FetchError::Remote { reason, .. })
                    if reason.contains("None of the refspec") =>
                {
                    return Ok(PullHeads { url: url.clone(), heads: Vec::new() });
                }
                Err(e) => failures.push(RemoteFailure { url: url.clone(), reason: e.to_string() }),
            }
        }
        Err(FetchError::AllRemotesFailed { failures })
    }

    /// Fetches the approval tags of `commit` from `url` (for a trust policy); none is fine.
    pub fn fetch_approvals_of(
        &mut self,
        url: &str,
        commit: ObjectId,
        options: &FetchOptions,
    ) -> Result<(), FetchError> {
        self.fetch_approval_tags(url, commit, options.transfer())
    }

    /// The commits reachable from `tip` (itself included), at most `max_commits` of them
    /// (a longer history is cut: what lies beyond is not in the set). For telling the PR
    /// heads already merged into the branch.
    pub fn ancestors(
        &self,
        tip: ObjectId,
        max_commits: usize,
    ) -> Result<HashSet<ObjectId>, FetchError> {
        let mut seen = HashSet::from([tip]);
        let mut queue = VecDeque::from([tip]);
        while let Some(id) = queue.pop_front() {
            let commit = self.repo.find_commit(id).map_err(|e| FetchError::Odb {
                what: format!("commit {id} (history of {tip})"),
                reason: why(e),
            })?;
            for parent in commit.parent_ids() {
                if seen.len() >= max_commits {
                    return Ok(seen);
                }
                let parent = parent.detach();
                if seen.insert(parent) {
                    queue.push_back(parent);
                }
            }
        }
        Ok(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_numbered_heads_in_the_preview_namespace_are_pull_requests() {
        // (local ref, PR number)
        let table = [
            ("refs/veza-preview/pull/7/head", Some(7)),
            ("refs/veza-preview/pull/0012/head", Some(12)),
            ("refs/veza-preview/pull/a/b/head", None),
            ("refs/veza-preview/pull//head", None),
            ("refs/veza-preview/pull/7/merge", None),
            ("refs/veza-preview/pull/-1/head", None),
            ("refs/veza-preview/pull/99999999999999999999/head", None),
            ("refs/remotes/origin/main", None),
            ("refs/pull/7/head", None),
        ];
        for (name, want) in table {
            assert_eq!(pull_number(name), want, "{name}");
        }
    }
}
