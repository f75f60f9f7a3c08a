//! PR previews, pulled, not pushed (`previews.enabled`): after a sync, once its outcome
//! is recorded and its waiters answered, the heads of the repository's pull requests
//! (`refs/pull/<N>/head`) are fetched into their own namespace of the mirror; each new
//! head is verified with the branch's trust rules and planned read-only against live
//! state by [`Agent::plan_for`], and gets a commit status on the forge (context
//! `veza-agent/<host>/preview`, see [`describe`]) — a reviewer sees on the PR what this
//! host would do after the merge, without any runner reaching the host.
//!
//! What a preview may not do, by construction:
//! - move anything the branch reads: the pass reads `state.json` and writes only
//!   `previews.json` (and the metrics); it never records an applied commit, never touches
//!   the Incus high-water mark or a quarantine, never applies;
//! - skip a trust rule: the head's signature must verify against `allowed_signers`, and
//!   the policy (with the head's own approval tags) must hold for the paths changed since
//!   the applied commit — as if the head were the branch's tip. Anti-rollback is the one
//!   check left out ([`Base::Compare`]): a PR need not descend from what the host applied.
//!   An untrusted head gets a `failure` status and is never planned;
//! - decrypt a secret: a PR is unreviewed, so its secrets are only checked to be in its
//!   own signed commit and to be age files, and planned by digest (as plans always are);
//!   whether they open with this host's key is checked when the merge is applied;
//! - take long: at most `previews.max_per_poll` heads are planned per pass (highest PR
//!   numbers first), each within `previews.plan_timeout`, and a head is planned once
//!   (cached by commit id in `previews.json`; one that ended in `error` is tried again);
//!   a forge that does not answer is asked once per pass. Nothing here fails a sync: a
//!   problem is logged and counted (`veza_agent_preview_failures_total{kind}`).
//!
//! Forgejo keeps `refs/pull/<N>/head` after a PR is closed or merged: heads already in
//! the branch's history are recorded as `merged` without a status; heads of closed,
//! unmerged PRs are previewed once like the others.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use veza_host::forge::{CommitStatus, StatusClient, StatusState, one_line};
use veza_source::accept::MAX_ANCESTRY_WALK;
use veza_source::fetch::{FetchOptions, Mirror, ObjectId, tracking_ref};
use veza_source::{Acceptance, Base, accept};
use veza_state::previews::{MERGED, PreviewRun, PreviewedHead, Previews, select};
use veza_state::{AgentState, Store};

use super::accept::redact;
use super::feedback::status_client;
use super::{Agent, Decision, Source, Windows};

mod describe;

pub use describe::{Verdict, status_of};

/// A pass in one line: `previews: 3 PR head(s), 2 previewed, 2 status(es) posted, 1 left`.
pub fn preview_line(run: &PreviewRun) -> String {
    let mut line = format!(
        "previews: {} PR head(s), {} previewed, {} status(es) posted",
        run.heads, run.previewed, run.posted
    );
    if run.left > 0 {
        line.push_str(&format!(", {} left for the next pass", run.left));
    }
    if let Some(e) = &run.error {
        line.push_str(&format!("; failed: {e}"));
    }
    line
}

/// What the pass posts statuses with, and whether the forge has stopped answering.
struct Forge {
    client: Result<StatusClient, String>,
    context: String,
    down: bool,
}

impl Forge {
    /// Posts `head`'s status; `false` when the forge did not accept it (counted; after a
    /// first failure the rest of the pass posts nothing: retried next pass).
    fn post(
        &mut self,
        head: &str,
        state: StatusState,
        description: &str,
        c: &mut Previews,
    ) -> bool {
        if self.down {
            return false;
        }
        let posted = self.client.as_ref().map_err(Clone::clone).and_then(|client| {
            client
                .post(&CommitStatus {
                    sha: head.to_string(),
                    state,
                    context: self.context.clone(),
                    description: description.to_string(),
                })
                .map_err(|e| e.to_string())
        });
        match posted {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("preview status: {e} (posted again at the next pass)");
                c.count_failure("post");
                self.down = true;
                false
            }
        }
    }
}

impl Agent {
    /// One preview pass, when previews are on (see the module documentation). Never
    /// fails: what went wrong is in the returned run, the log and the metrics.
    pub async fn previews(&self, store: &Store, stop: &AtomicBool) -> Option<PreviewRun> {
        let cfg = self.config.feedback.forgejo.as_ref().filter(|_| self.config.previews.enabled)?;
        let started = Instant::now();
        let now = chrono::Utc::now().timestamp();
        let reader = store.reader();
        let mut cache = reader.previews().unwrap_or_else(|e| {
            tracing::warn!("{e}");
            Previews::default()
        });
        let mut run = PreviewRun { at: now, ..PreviewRun::default() };
        let state = match reader.load() {
            Ok(s) => Some(s),
            Err(e) => {
                run.error = Some(format!("state: {e}"));
                None
            }
        };
        if let Some(state) = &state {
            let mut forge = Forge {
                client: status_client(cfg),
                context: format!("veza-agent/{}/preview", self.config.host),
                down: false,
            };
            if let Err(e) = self.pass(state, &mut cache, &mut run, &mut forge, stop, now).await {
                tracing::warn!("previews: {e}");
                cache.count_failure("fetch");
                run.error = Some(e);
            }
        }
        run.duration_ms = started.elapsed().as_millis() as u64;
        cache.last_run = Some(run.clone());
        if let Err(e) = store.save_previews(&cache) {
            tracing::warn!("saving the previews: {e}");
        }
        if let Some(state) = &state {
            self.write_metrics(state, now);
        }
        Some(run)
    }

    /// Fetches the PR heads and previews what [`select`] picks; `Err` only when the heads
    /// could not be fetched.
    async fn pass(
        &self,
        state: &AgentState,
        cache: &mut Previews,
        run: &mut PreviewRun,
        forge: &mut Forge,
        stop: &AtomicBool,
        now: i64,
    ) -> Result<(), String> {
        let c = &self.config;
        let mut mirror = Mirror::open_or_init(&self.state_dir().join("mirror.git"))
            .map_err(|e| e.to_string())?;
        let options = self.fetch_options()?;
        let token = options.credentials.as_ref().map(|c| c.token.clone());
        let pulls = mirror
            .fetch_pull_heads(&c.source.remotes, &options)
            .map_err(|e| redact(&format!("fetching the PR heads: {e}"), token.as_deref()))?;
        let advertised: Vec<(u64, String)> =
            pulls.heads.iter().map(|h| (h.number, h.head.to_string())).collect();
        run.heads = advertised.len();
        // The branch's history, walked once and only when a new head needs the answer.
        let tip = mirror.resolve(&tracking_ref(c.branch())).ok();
        let mut history: Option<HashSet<ObjectId>> = None;
        let pass = select(&advertised, cache, c.previews.max_per_poll(), &mut |head| {
            let Some(tip) = tip else { return false };
            let set = history.get_or_insert_with(|| {
                mirror.ancestors(tip, MAX_ANCESTRY_WALK).unwrap_or_default()
            });
            ObjectId::from_hex(head.as_bytes()).is_ok_and(|id| set.contains(&id))
        });
        run.left = pass.left;
        for (pr, head) in pass.merged {
            let description = "already in the branch: not previewed".to_string();
            let entry =
                PreviewedHead { pr, state: MERGED.into(), description, at: now, posted: false };
            cache.heads.insert(head, entry);
        }
        let total = pass.preview.len();
        for (i, (pr, head)) in pass.preview.into_iter().enumerate() {
            if stop.load(Ordering::SeqCst) {
                run.left += total - i;
                break;
            }
            let (state_of, description) =
                self.preview_head(&mut mirror, &pulls.url, &options, state, &head, now).await;
            let description = one_line(&description);
            tracing::info!(pr, head = %head, "preview: {} {description}", state_of.as_str());
            if state_of == StatusState::Error {
                cache.count_failure("plan");
            }
            run.previewed += 1;
            // A preview tried again (it ended in `error`) that says the same is not posted again.
            let said = cache.heads.get(&head).is_some_and(|o| {
                o.posted && o.state == state_of.as_str() && o.description == description
            });
            let posted = said || forge.post(&head, state_of, &description, cache);
            run.posted += usize::from(posted && !said);
            let entry = PreviewedHead {
                pr,
                state: state_of.as_str().to_string(),
                description,
                at: now,
                posted,
            };
            cache.heads.insert(head, entry);
        }
        for head in pass.repost {
            let Some(h) = cache.heads.get(&head).cloned() else { continue };
            let posted = forge.post(&head, StatusState::named(&h.state), &h.description, cache);
            run.posted += usize::from(posted);
            if let Some(entry) = cache.heads.get_mut(&head) {
                entry.posted = posted;
            }
        }
        cache.keep_only(&advertised);
        Ok(())
    }

    /// Verifies one head and plans it read-only: the status it gets.
    async fn preview_head(
        &self,
        mirror: &mut Mirror,
        url: &str,
        options: &FetchOptions,
        state: &AgentState,
        head: &str,
        now: i64,
    ) -> (StatusState, String) {
        let c = &self.config;
        let Ok(id) = ObjectId::from_hex(head.as_bytes()) else {
            return status_of(Verdict::Failed(&format!("`{head}` is not an object id")));
        };
        // With a policy, the head's own approval tags count (as the tip's do).
        if c.trust.policy.is_some()
            && let Err(e) = mirror.fetch_approvals_of(url, id, options)
        {
            let token = options.credentials.as_ref().map(|c| c.token.as_str());
            let why = redact(&format!("fetching its approval tags: {e}"), token);
            return status_of(Verdict::Failed(&why));
        }
        let acceptance = Acceptance {
            allowed_signers: Path::new(&c.trust.allowed_signers),
            policy: c.trust.policy.as_deref(),
            base: state.applied.as_ref().map_or(Base::Nothing, |a| Base::Compare(&a.commit)),
            policy_since: veza_source::PolicySince::Base,
            manifests: &c.source.manifests,
            host: &c.host,
            max_refs: c.max_refs(),
            now,
            // Never decrypted for a preview: see the module documentation.
            identities: None,
        };
        let accepted = match accept(mirror, id, &acceptance) {
            Ok(a) => a,
            Err(r) => return status_of(Verdict::Rejected { kind: r.kind, reason: &r.reason }),
        };
        let (commit, signer, manifests, secrets) = accepted.into_parts();
        let source = Source { commit, signer, manifests, secrets };
        let limit = c.previews.plan_timeout();
        let planned = tokio::time::timeout(limit, async {
            let live =
                self.observe(&source.manifests, state).await.map_err(|e| format!("{e:#}"))?;
            self.plan_for(state, &source, &live, &Windows::at(now, None))
                .map_err(|e| format!("plan: {e}"))
        })
        .await;
        match planned {
            Err(_) => status_of(Verdict::Failed(&format!(
                "observing and planning took longer than {limit:?} (previews.plan_timeout)"
            ))),
            Ok(Err(e)) => status_of(Verdict::Failed(&e)),
            Ok(Ok(Decision::Quarantined(why))) => status_of(Verdict::Quarantined(&why)),
            Ok(Ok(Decision::Plan(plan, _))) => status_of(Verdict::Planned(&plan)),
        }
    }
}
