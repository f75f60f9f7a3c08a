//! Acceptance: the one function that decides whether a fetched tip may be read as desired
//! state (or previewed). The tip's signature must verify against the host's trust root,
//! the tip must descend from the last applied commit (looked up by object id only; not a
//! PR head's preview, [`Base::Compare`]), the trust policy (if configured) must hold for
//! every path changed since then — every path of the tip on a host that has applied
//! nothing — and the manifests bound to this host must parse, validate and use only the
//! capabilities their paths are granted. Only an [`Accepted`] holds manifests, and only
//! [`accept`] makes one.

use std::collections::BTreeMap;
use std::path::Path;

use veza_model::{Manifest, template};
use veza_secrets::{Ciphertext, Identities, SecretValue};

use crate::fetch::{Mirror, ObjectId};
use crate::policy::{Policy, collect_approvals};
use crate::{AllowedSigners, FetchError, ObjectKind, Refusal, verify_object};

/// The longest ancestry walk from the tip to the last applied commit.
pub const MAX_ANCESTRY_WALK: usize = 100_000;

/// What a tip is held to.
#[derive(Clone, Copy)]
pub struct Acceptance<'a> {
    /// The allowed signers file (the trust root), read at each call.
    pub allowed_signers: &'a Path,
    /// The trust policy file, if one is configured, read at each call.
    pub policy: Option<&'a str>,
    /// What the tip is held to besides its signature: descent from the last applied
    /// commit (the branch), or nothing (a PR head's preview).
    pub base: Base<'a>,
    /// The manifest files to read from the tip.
    pub manifests: &'a [String],
    /// This host: only manifests with `metadata.host` equal to it are kept.
    pub host: &'a str,
    /// Where the trust policy's diff starts: the base's commit, or, while the base is a
    /// newer commit whose apply began and failed, the last applied one (an approval of
    /// what did not land covers nothing), or every path when nothing was applied.
    pub policy_since: PolicySince<'a>,
    /// The most tags looked at for approvals.
    pub max_refs: usize,
    /// The verification time (unix seconds).
    pub now: i64,
    /// Reads this host's keys: every referenced secret must open with them. Called only
    /// when a manifest references a secret (a host without secrets never reads a key).
    /// `None` checks only that each secret is present and an age file (authors' tools,
    /// which have no host key).
    pub identities: Option<&'a dyn Fn() -> Identities>,
}

/// The most approval tags of one tip read: far more approvers than any policy names,
/// and a bound on what a forge can make the agent hold in memory.
pub const MAX_APPROVAL_TAGS: usize = 256;

/// Where the trust policy's diff starts ([`Acceptance::policy_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicySince<'a> {
    /// The base's commit (or every path, with [`Base::Nothing`]).
    #[default]
    Base,
    /// This commit.
    Commit(&'a str),
    /// Every path of the tip.
    Everything,
}

/// What a tip is compared with: the anti-rollback check, and the base of the paths the
/// trust policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base<'a> {
    /// A host that has applied nothing (the caller tells that from "unknown"): no
    /// ancestry to check; the policy covers every path of the tip.
    Nothing,
    /// The branch: the tip must descend from this commit, the last applied one (the
    /// anti-rollback high-water mark); the policy covers the paths changed since.
    Descends(&'a str),
    /// A PR head's preview: no ancestry is required (a PR need not descend from what the
    /// host applied); the policy covers the paths changed since this commit, the last
    /// applied one, as it would if the head became the branch's tip; every path when that
    /// commit is not in the mirror.
    Compare(&'a str),
}

/// A tip that passed every check, with the manifests read from it.
#[derive(Debug)]
pub struct Accepted {
    commit: String,
    signer: String,
    manifests: Vec<(String, Manifest)>,
    secrets: Secrets,
}

/// One referenced secret of the accepted commit.
#[derive(Debug, Clone)]
pub struct SecretEntry {
    /// Its path in the repository (`secrets/<env>/<name>.age`).
    pub path: String,
    /// SHA-256 of the file: a new value (or a re-encryption) changes it.
    pub sha256: String,
    /// Whom it was encrypted to.
    pub recipients: String,
    /// The value, when the acceptance was given this host's keys.
    pub value: Option<SecretValue>,
}

/// The secrets the accepted manifests reference, by `(environment, name)`.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub BTreeMap<(String, String), SecretEntry>);

impl Secrets {
    /// `(env, name) → sha256` of every secret: what plans record.
    pub fn digests(&self) -> BTreeMap<(String, String), String> {
        self.0.iter().map(|(k, e)| (k.clone(), e.sha256.clone())).collect()
    }
    /// The decrypted values, for the apply engine.
    pub fn values(&self) -> veza_secrets::SecretValues {
        let mut out = veza_secrets::SecretValues::default();
        for ((env, name), e) in &self.0 {
            if let Some(v) = &e.value {
                out.insert(env, name, v.clone());
            }
        }
        out
    }
}

impl Accepted {
    /// The full commit id.
    pub fn commit(&self) -> &str {
        &self.commit
    }
    /// The principal who signed it.
    pub fn signer(&self) -> &str {
        &self.signer
    }
    /// The manifests bound to this host, with their paths.
    pub fn manifests(&self) -> &[(String, Manifest)] {
        &self.manifests
    }
    /// The secrets they reference.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }
    /// `(commit, signer, manifests, secrets)`.
    pub fn into_parts(self) -> (String, String, Vec<Manifest>, Secrets) {
        (
            self.commit,
            self.signer,
            self.manifests.into_iter().map(|(_, m)| m).collect(),
            self.secrets,
        )
    }
}

/// A refused tip: its kind, and the reason written to status and history (it starts with
/// the kind's prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Which check refused it.
    pub kind: Refusal,
    /// The tip.
    pub commit: String,
    /// `PREFIX: DETAIL`, for a human.
    pub reason: String,
}

/// Decides whether `tip` is accepted (see the module documentation).
pub fn accept(mirror: &Mirror, tip: ObjectId, a: &Acceptance<'_>) -> Result<Accepted, Rejected> {
    let commit = tip.to_string();
    let reject = |kind: Refusal, detail: String| Rejected {
        kind,
        commit: commit.clone(),
        reason: kind.reason(&detail),
    };
    let signers = AllowedSigners::from_file(a.allowed_signers)
        .map_err(|e| reject(Refusal::TrustRoot, e.to_string()))?;
    let raw = mirror.raw_commit(tip).map_err(|e| reject(Refusal::Signature, e.to_string()))?;
    let verdict = verify_object(ObjectKind::Commit, &raw, &signers, a.now)
        .map_err(|e| reject(Refusal::Signature, e.to_string()))?;
    let last = match a.base {
        Base::Descends(last) => {
            Some(descends_from(mirror, tip, last).map_err(|(k, d)| reject(k, d))?)
        }
        Base::Compare(base) => mirror.commit_by_id(base).ok(),
        Base::Nothing => None,
    };
    // The approval policy covers the paths changed since the last applied commit; on a
    // host that has applied nothing yet, every path of the tip (a fresh or wiped host is
    // no way around the approvals).
    let mut confine = None;
    if let Some(policy_path) = a.policy {
        let text = std::fs::read_to_string(policy_path)
            .map_err(|e| reject(Refusal::Policy, format!("`{policy_path}` unreadable: {e}")))?;
        let policy = Policy::from_yaml_str(&text)
            .map_err(|e| reject(Refusal::Policy, format!("`{policy_path}`: {e}")))?;
        let since = match a.policy_since {
            PolicySince::Base => last,
            PolicySince::Commit(c) => {
                Some(mirror.commit_by_id(c).map_err(|e| reject(Refusal::Policy, e.to_string()))?)
            }
            PolicySince::Everything => None,
        };
        let changed = mirror
            .changed_paths(since, tip, 1_000_000)
            .map_err(|e| reject(Refusal::Policy, e.to_string()))?;
        let tags = mirror
            .tags_pointing_at(tip, a.max_refs.min(MAX_APPROVAL_TAGS))
            .map_err(|e| reject(Refusal::Policy, e.to_string()))?;
        let (approvals, _) = collect_approvals(
            &commit,
            &verdict,
            &tags,
            &signers,
            a.now,
            policy.approval_ref.as_deref(),
        );
        if let Err(violations) = policy.evaluate(&verdict, &changed, &approvals) {
            let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(reject(Refusal::Policy, text.join("; ")));
        }
        confine = Some((policy_path, policy));
    }
    let mut files = Vec::new();
    for path in a.manifests {
        let bytes = mirror
            .read_file(tip, path, veza_model::parse::MAX_MANIFEST_BYTES as u64)
            .map_err(|e| reject(Refusal::Manifest, e.to_string()))?;
        files.push((path.clone(), bytes));
    }
    let parsed = veza_model::load(&files).map_err(|problems| {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        reject(Refusal::InvalidManifests, format!("\n{}", text.join("\n")))
    })?;
    let manifests: Vec<(String, Manifest)> = parsed
        .into_iter()
        .map(|(path, p)| (path, p.manifest))
        .filter(|(_, m)| m.metadata.host == a.host)
        .collect();
    // Capabilities: powers over the host only where the manifest path is granted them.
    if let Some((policy_path, policy)) = &confine {
        let set: Vec<(&str, &Manifest)> = manifests.iter().map(|(p, m)| (p.as_str(), m)).collect();
        policy.confine(&set).map_err(|refused| {
            let text: Vec<String> = refused.iter().map(ToString::to_string).collect();
            reject(Refusal::Policy, format!("`{policy_path}`: {}", text.join("; ")))
        })?;
    }
    let secrets = read_secrets(mirror, tip, &manifests, a.identities)
        .map_err(|detail| reject(Refusal::Secret, detail))?;
    Ok(Accepted { commit, signer: verdict.principal, manifests, secrets })
}

/// Reads every secret the manifests reference from `tip`, checks it is an age file and,
/// given the host's keys, decrypts it (in memory only).
fn read_secrets(
    mirror: &Mirror,
    tip: ObjectId,
    manifests: &[(String, Manifest)],
    identities: Option<&dyn Fn() -> Identities>,
) -> Result<Secrets, String> {
    let mut out = Secrets::default();
    let mut keys: Option<Identities> = None;
    for (file, m) in manifests {
        let env = &m.metadata.name;
        for (name, used_by) in template::manifest_secrets(m) {
            let path = template::secret_path(file, env, &name);
            let what = format!("`{path}` ({used_by} in {file})");
            let bytes = mirror
                .read_file(tip, &path, veza_secrets::MAX_CIPHERTEXT_BYTES as u64)
                .map_err(|e| match e {
                    FetchError::PathNotFound { .. } => format!(
                        "{what} is not in the commit (hint: `veza-agent secret encrypt --to HOST_KEY > {path}` and commit it)"
                    ),
                    e => format!("{what}: {e}"),
                })?;
            let ct = Ciphertext::parse(&bytes).map_err(|e| format!("{what}: {e}"))?;
            let value = match identities {
                Some(read) => {
                    let ids = keys.get_or_insert_with(read);
                    Some(veza_secrets::decrypt(&ct, ids).map_err(|e| format!("{what}: {e}"))?)
                }
                None => None,
            };
            out.0.insert(
                (env.clone(), name),
                SecretEntry {
                    path,
                    sha256: ct.sha256().to_string(),
                    recipients: ct.recipients(),
                    value,
                },
            );
        }
    }
    Ok(out)
}

/// The newer of two anti-rollback bases (full commit ids): `a` when it is `b` or descends
/// from it, else `b`. On a cluster the mark in Incus (`b`) and a member's own record (`a`)
/// can disagree when writing the mark failed: the member's record wins only when it is
/// provably newer, so neither a stale mark nor a stale state file reopens a rollback.
pub fn newer_base<'a>(mirror: &Mirror, a: &'a str, b: &'a str) -> &'a str {
    if descends(mirror, a, b) { a } else { b }
}

/// Whether commit `a` is `b` or provably descends from it (both in the mirror, within the
/// ancestry walk's bound).
fn descends(mirror: &Mirror, a: &str, b: &str) -> bool {
    let ids = mirror.commit_by_id(a).and_then(|a| Ok((a, mirror.commit_by_id(b)?)));
    ids.and_then(|(a, b)| mirror.is_descendant(a, b, MAX_ANCESTRY_WALK)).unwrap_or(false)
}

/// The newest of two marks that should be one commit (the anti-rollback mark and its copy
/// for older agents): the one that provably descends from the other; when neither does
/// (they diverged, or the mirror no longer holds one: history rewritten), the one the
/// mirror does not hold, so that the tip is refused as a rewrite, else `a`. Never the
/// older of two comparable marks, and never a way around one the history lost.
pub fn newest_mark<'a>(mirror: &Mirror, a: &'a str, b: &'a str) -> &'a str {
    if descends(mirror, a, b) {
        a
    } else if descends(mirror, b, a) || mirror.commit_by_id(b).is_err() {
        b
    } else {
        a
    }
}

/// Anti-rollback: `tip` must descend from `last` (a full commit id, looked up by object id
/// only: a ref the forge names like the id proves nothing). Returns `last`'s object id,
/// or the kind of refusal and its detail.
pub fn descends_from(
    mirror: &Mirror,
    tip: ObjectId,
    last: &str,
) -> Result<ObjectId, (Refusal, String)> {
    let id = mirror.commit_by_id(last).map_err(|e| match e {
        FetchError::ObjectNotFound { .. } => (
            Refusal::Rollback,
            format!(
                "the last applied commit {last} is not in the fetched history: history was \
                 rewritten (the branch was force-pushed) (hint: push the old tip back, then undo \
                 changes with `git revert` in new signed commits)"
            ),
        ),
        e => (Refusal::Ancestry, format!("the last applied commit: {e}")),
    })?;
    match mirror.is_descendant(tip, id, MAX_ANCESTRY_WALK) {
        Ok(true) => Ok(id),
        Ok(false) => Err((
            Refusal::Rollback,
            format!(
                "{tip} does not descend from the last applied commit {last} (hint: undo a \
                 change with `git revert` in a new signed commit)"
            ),
        )),
        Err(e) => Err((Refusal::Ancestry, e.to_string())),
    }
}
