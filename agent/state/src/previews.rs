//! PR previews, as recorded: `previews.json` in the state directory, written only by the
//! preview pass that follows a sync and read by `status`, `plan` and the metrics. Nothing
//! the branch's sync reads is in it, and a preview writes nothing else: a PR head never
//! moves the high-water mark, the applied state or a quarantine.
//!
//! The file is the cache: a head (by commit id) recorded here is never planned or posted
//! again, except a preview that ended in `error` (the plan failed or timed out: tried
//! again) and a status the forge did not accept (posted again, not re-planned).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The `state` of a head found already in the branch: no status, nothing planned.
pub const MERGED: &str = "merged";
/// The `state` of a preview that could not be made (tried again next pass).
pub const ERROR: &str = "error";

/// Everything the preview passes recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Previews {
    /// Previewed heads by commit id (the cache); heads no PR advertises any more are
    /// dropped.
    pub heads: BTreeMap<String, PreviewedHead>,
    /// The last pass.
    pub last_run: Option<PreviewRun>,
    /// Failures by kind (`fetch`: the PR heads could not be fetched; `plan`: a preview
    /// ended in `error`; `post`: the forge did not accept a status). Counters.
    pub failures_total: BTreeMap<String, u64>,
}

/// One previewed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewedHead {
    /// The PR it heads (the highest number when several do).
    pub pr: u64,
    /// The status state (`success`, `failure`, `error`), or [`MERGED`].
    pub state: String,
    /// The status description (one line).
    pub description: String,
    /// When it was previewed (unix seconds).
    pub at: i64,
    /// Whether the forge accepted the status (a merged head has none to post).
    pub posted: bool,
}

/// One preview pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRun {
    /// When it started (unix seconds).
    pub at: i64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// PR heads the remote advertises.
    pub heads: usize,
    /// Heads planned (or refused before planning) in this pass.
    pub previewed: usize,
    /// Statuses the forge accepted in this pass.
    pub posted: usize,
    /// Heads not previewed yet: beyond `previews.max_per_poll`, for the next passes.
    pub left: usize,
    /// Why the pass stopped early (the PR heads could not be fetched).
    pub error: Option<String>,
}

/// What one pass does, decided from the advertised heads and the cache. Pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Heads to preview, in order: `(pr, head)`.
    pub preview: Vec<(u64, String)>,
    /// Heads already in the branch: recorded as [`MERGED`], nothing planned or posted.
    pub merged: Vec<(u64, String)>,
    /// Cached heads whose status the forge has not accepted yet: posted again.
    pub repost: Vec<String>,
    /// Heads left for later passes (over the cap).
    pub left: usize,
}

/// Which heads a pass previews: each head id once (under its highest PR number), highest
/// PR numbers first (the newest PRs), never a cached one — except one whose preview
/// ended in `error`, tried again after every head not yet previewed; heads already in the
/// branch (`merged`) are set aside without counting; at most `cap` previews.
pub fn select(
    advertised: &[(u64, String)],
    cache: &Previews,
    cap: usize,
    merged: &mut dyn FnMut(&str) -> bool,
) -> Pass {
    let mut heads: Vec<&(u64, String)> = advertised.iter().collect();
    heads.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut seen = BTreeSet::new();
    heads.retain(|(_, h)| seen.insert(h.as_str()));
    let mut pass = Pass::default();
    let (mut fresh, mut retry) = (Vec::new(), Vec::new());
    for (pr, head) in heads {
        match cache.heads.get(head) {
            None => fresh.push((*pr, head.clone())),
            Some(c) if c.state == ERROR => retry.push((*pr, head.clone())),
            Some(c) if !c.posted && c.state != MERGED => pass.repost.push(head.clone()),
            Some(_) => {}
        }
    }
    for (pr, head) in fresh.into_iter().chain(retry) {
        if pass.preview.len() >= cap {
            pass.left += 1;
        } else if merged(&head) {
            pass.merged.push((pr, head));
        } else {
            pass.preview.push((pr, head));
        }
    }
    pass
}

impl Previews {
    /// Drops the heads no PR advertises any more (closed PRs whose refs the forge
    /// removed, PRs that moved on to a new head).
    pub fn keep_only(&mut self, advertised: &[(u64, String)]) {
        let live: BTreeSet<&str> = advertised.iter().map(|(_, h)| h.as_str()).collect();
        self.heads.retain(|h, _| live.contains(h.as_str()));
    }

    /// Counts one failure of `kind`.
    pub fn count_failure(&mut self, kind: &str) {
        *self.failures_total.entry(kind.to_string()).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(c: char) -> String {
        c.to_string().repeat(40)
    }

    fn cached(state: &str, posted: bool) -> PreviewedHead {
        PreviewedHead { pr: 0, state: state.into(), description: String::new(), at: 0, posted }
    }

    #[test]
    fn a_pass_previews_new_heads_newest_pr_first_within_the_cap() {
        let mut cache = Previews::default();
        cache.heads.insert(head('c'), cached("success", true));
        cache.heads.insert(head('d'), cached("failure", false));
        cache.heads.insert(head('e'), cached(ERROR, true));
        cache.heads.insert(head('f'), cached(MERGED, false));
        let advertised: Vec<(u64, String)> = [
            (1, 'a'),
            (2, 'b'),
            (3, 'c'),
            (4, 'd'),
            (5, 'e'),
            (6, 'f'),
            (7, 'g'),
            (8, 'a'), // the same head as PR 1
            (9, 'm'),
        ]
        .into_iter()
        .map(|(n, c)| (n, head(c)))
        .collect();
        let ids = |v: &[(u64, String)]| -> Vec<u64> { v.iter().map(|(n, _)| *n).collect() };
        /// (cap, heads already in the branch, previewed, merged, left)
        type Case<'a> = (usize, &'a [char], &'a [u64], &'a [u64], usize);
        let table: [Case; 6] = [
            (10, &[], &[9, 8, 7, 2, 5], &[], 0),
            (3, &[], &[9, 8, 7], &[], 2),
            (1, &[], &[9], &[], 4),
            // A merged head does not count against the cap.
            (3, &['m'], &[8, 7, 2], &[9], 1),
            (10, &['m', 'g', 'b'], &[8, 5], &[9, 7, 2], 0),
            (0, &[], &[], &[], 5),
        ];
        for (cap, in_branch, want_preview, want_merged, want_left) in table {
            let mut asked = Vec::new();
            let pass = select(&advertised, &cache, cap, &mut |h: &str| {
                asked.push(h.to_string());
                in_branch.iter().any(|c| head(*c) == h)
            });
            assert_eq!(ids(&pass.preview), want_preview, "cap {cap}, merged {in_branch:?}");
            assert_eq!(ids(&pass.merged), want_merged, "cap {cap}, merged {in_branch:?}");
            assert_eq!(pass.left, want_left, "cap {cap}, merged {in_branch:?}");
            assert_eq!(pass.repost, [head('d')], "an unposted status is posted again, once");
            assert!(
                !asked.contains(&head('c')) && asked.len() <= 5,
                "cached heads are never looked at again: {asked:?}"
            );
        }
    }

    #[test]
    fn heads_no_pr_advertises_are_forgotten_and_failures_counted_by_kind() {
        let mut p = Previews::default();
        p.heads.insert(head('a'), cached("success", true));
        p.heads.insert(head('b'), cached("failure", true));
        p.keep_only(&[(2, head('b'))]);
        assert_eq!(p.heads.keys().collect::<Vec<_>>(), [&head('b')]);
        p.count_failure("post");
        p.count_failure("post");
        p.count_failure("fetch");
        assert_eq!(p.failures_total.get("post"), Some(&2));
        assert_eq!(p.failures_total.get("fetch"), Some(&1));
    }
}
