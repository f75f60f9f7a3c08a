//! Trust policy: who must have signed a change, per changed path.
//!
//! A policy is an ordered list of rules. Each rule has path globs, a set of principals
//! and a threshold. For every path that changed between the last applied commit and
//! the candidate, the **first** rule whose glob matches applies; a path that no rule
//! covers is a violation (fail closed: end the list with a `**` rule to set a default).
//!
//! Approvals of a candidate commit = its own signer ∪ the signers of valid signed
//! annotated tags whose `object` is exactly that commit (and, if `approval_ref` is set,
//! whose message names that ref in a line `ref: <ref>` or `gitops-approve: <ref>`).
//! A rule is met when at least `threshold` **distinct** principals from its set approved.
//! Principals are compared literally with the principals field of the allowed_signers
//! line that matched the key, so a wildcard line (`*@example.com`) never counts as a
//! named principal. Optional `publishers` restricts who may sign the tip commit itself.
//!
//! Globs: `*` and `?` match within one path segment, a `**` segment matches any number
//! of segments (including none). Example (YAML):
//!
//! ```yaml
//! publishers: [forgejo@forge.example, alice@example.com]
//! approval_ref: refs/heads/main
//! rules:
//!   - name: prod
//!     paths: ["manifests/prod.yaml", "manifests/prod/**"]
//!     principals: [alice@example.com, bob@example.com, carol@example.com]
//!     threshold: 2
//!   - name: default
//!     paths: ["**"]
//!     principals: [forgejo@forge.example, alice@example.com, bob@example.com]
//!     threshold: 1
//! capabilities:            # manifest path -> powers over the host it may use
//!   manifests/prod.yaml: [host-jobs]
//!   manifests/staging.yaml: []
//! ```
//!
//! Capabilities ([`veza_model::capabilities`]) confine what a signed manifest may ask of
//! the host (jobs on the host, host paths, `security.*`/`raw.*` keys, ...). With a policy,
//! a manifest path absent from `capabilities` is granted none of them; without a policy
//! file at all, nothing is confined (every allowed signer is trusted fully).

use std::collections::BTreeSet;

use serde::Deserialize;

use veza_model::Manifest;
use veza_model::capabilities::{Grants, Ungranted, check_grants, used_by_set};

use crate::allowed_signers::{AllowedSigners, match_pattern};
use crate::error::{ObjectKind, PolicyError, VerifyError};
use crate::object::{parse_tag, split_tag};
use crate::verify::{Verdict, verify_object};

/// One path rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Human name for messages; defaults to `rule N`.
    #[serde(default)]
    pub name: Option<String>,
    /// Path globs (repository-relative, `/`-separated).
    pub paths: Vec<String>,
    /// Principals whose approval counts for this rule.
    pub principals: Vec<String>,
    /// How many distinct principals of the set must approve.
    pub threshold: usize,
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// If set, the tip commit must be signed by one of these principals.
    #[serde(default)]
    pub publishers: Option<Vec<String>>,
    /// If set, approval tags must name this ref in their signed message.
    #[serde(default)]
    pub approval_ref: Option<String>,
    /// Ordered rules; first match wins per path.
    pub rules: Vec<Rule>,
    /// Capabilities granted per manifest path (exact path, as in `source.manifests`).
    /// A path that is not listed is granted none.
    #[serde(default)]
    pub capabilities: Grants,
}

/// Where an approval came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApprovalSource {
    /// The candidate commit's own signature.
    CommitSignature,
    /// A signed annotated tag (ref name).
    Tag(String),
}

/// One valid approval of the candidate commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Principal (allowed_signers principals field).
    pub principal: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Commit signature or tag.
    pub source: ApprovalSource,
}

impl std::fmt::Display for Approval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            ApprovalSource::CommitSignature => write!(f, "{} (commit signature)", self.principal),
            ApprovalSource::Tag(name) => write!(f, "{} (tag {name})", self.principal),
        }
    }
}

/// A tag that was considered as an approval and not counted, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredApproval {
    /// Tag ref name.
    pub tag: String,
    /// Why it does not count.
    pub reason: String,
}

/// A policy violation: names the paths, the rule and who signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The tip commit's signer is not a publisher.
    #[error(
        "commit is signed by {principal} ({fingerprint}), who is not a publisher; publishers: {}",
        .publishers.join(", ")
    )]
    NotPublisher { principal: String, fingerprint: String, publishers: Vec<String> },
    /// A changed path matches no rule.
    #[error("changed path `{path}` is covered by no policy rule (add a rule or a `**` default)")]
    Uncovered { path: String },
    /// Too few distinct approvals for a rule.
    #[error(
        "changed path `{}`{} needs {threshold} of {{{}}} per {rule}, but {}; signed by: {}",
        .paths[0],
        if .paths.len() > 1 { format!(" (and {} more)", .paths.len() - 1) } else { String::new() },
        .required.join(", "),
        fmt_counted(.counted),
        fmt_signers(.signers),
    )]
    Threshold {
        /// The changed paths this rule governs (sorted; never empty).
        paths: Vec<String>,
        /// Rule name.
        rule: String,
        /// The rule's principal set.
        required: Vec<String>,
        /// The rule's threshold.
        threshold: usize,
        /// Distinct principals of the set that approved.
        counted: Vec<String>,
        /// Everyone who signed (commit and tags), for the operator.
        signers: Vec<String>,
    },
}

fn fmt_counted(counted: &[String]) -> String {
    if counted.is_empty() {
        "none of them approved".to_string()
    } else {
        format!("only {} approved", counted.join(", "))
    }
}

fn fmt_signers(signers: &[String]) -> String {
    if signers.is_empty() { "nobody".to_string() } else { signers.join(", ") }
}

/// A rule that was satisfied, for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Satisfied {
    /// Rule name.
    pub rule: String,
    /// Paths it governed.
    pub paths: Vec<String>,
    /// Principals that counted.
    pub counted: Vec<String>,
}

impl Rule {
    fn display_name(&self, index: usize) -> String {
        match &self.name {
            Some(n) => format!("rule `{n}`"),
            None => format!("rule {} ({})", index + 1, self.paths.join(", ")),
        }
    }

    /// Does this rule cover `path`?
    pub fn matches(&self, path: &str) -> bool {
        self.paths.iter().any(|g| glob_match(g, path))
    }
}

impl Policy {
    /// Parses and checks a YAML policy.
    pub fn from_yaml_str(text: &str) -> Result<Policy, PolicyError> {
        let policy: Policy = serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Syntax {
            line: e.location().map_or(0, |l| l.line()),
            reason: e.to_string(),
        })?;
        policy.check()?;
        Ok(policy)
    }

    /// Consistency checks: every rule has paths and principals, and 1 ≤ threshold ≤ |principals|.
    pub fn check(&self) -> Result<(), PolicyError> {
        for (i, rule) in self.rules.iter().enumerate() {
            let err = |reason: String| PolicyError::Rule { rule: rule.display_name(i), reason };
            if rule.paths.is_empty() {
                return Err(err("has no paths".into()));
            }
            let distinct: BTreeSet<&String> = rule.principals.iter().collect();
            if rule.threshold == 0 {
                return Err(err("threshold 0 would accept anything; use at least 1".into()));
            }
            if rule.threshold > distinct.len() {
                return Err(err(format!(
                    "threshold {} is more than its {} distinct principals, it can never be met",
                    rule.threshold,
                    distinct.len()
                )));
            }
        }
        Ok(())
    }

    /// Checks the candidate: publisher rule, then each changed path against the first matching rule.
    /// `commit` is the verdict of the tip commit's own signature; `approvals` includes it.
    pub fn evaluate(
        &self,
        commit: &Verdict,
        changed_paths: &[String],
        approvals: &[Approval],
    ) -> Result<Vec<Satisfied>, Vec<Violation>> {
        let mut violations = Vec::new();
        if let Some(publishers) = &self.publishers
            && !publishers.contains(&commit.principal)
        {
            violations.push(Violation::NotPublisher {
                principal: commit.principal.clone(),
                fingerprint: commit.fingerprint.clone(),
                publishers: publishers.clone(),
            });
        }
        let signers: Vec<String> = approvals.iter().map(ToString::to_string).collect();
        let mut per_rule: Vec<Vec<String>> = vec![Vec::new(); self.rules.len()];
        for path in changed_paths {
            match self.rules.iter().position(|r| r.matches(path)) {
                Some(i) => per_rule[i].push(path.clone()),
                None => violations.push(Violation::Uncovered { path: path.clone() }),
            }
        }
        let mut satisfied = Vec::new();
        for (i, (rule, mut paths)) in self.rules.iter().zip(per_rule).enumerate() {
            if paths.is_empty() {
                continue;
            }
            paths.sort();
            let counted: BTreeSet<&String> = approvals
                .iter()
                .map(|a| &a.principal)
                .filter(|p| rule.principals.contains(p))
                .collect();
            let counted: Vec<String> = counted.into_iter().cloned().collect();
            if counted.len() >= rule.threshold {
                satisfied.push(Satisfied { rule: rule.display_name(i), paths, counted });
            } else {
                violations.push(Violation::Threshold {
                    paths,
                    rule: rule.display_name(i),
                    required: rule.principals.clone(),
                    threshold: rule.threshold,
                    counted,
                    signers: signers.clone(),
                });
            }
        }
        if violations.is_empty() { Ok(satisfied) } else { Err(violations) }
    }

    /// Checks that each manifest (path, parsed manifest: the manifests one host applies)
    /// uses only the capabilities `capabilities` grants to its path.
    pub fn confine(&self, manifests: &[(&str, &Manifest)]) -> Result<(), Vec<Ungranted>> {
        let set: Vec<&Manifest> = manifests.iter().map(|(_, m)| *m).collect();
        let used: Vec<(String, _)> =
            manifests.iter().map(|(path, _)| (*path).to_string()).zip(used_by_set(&set)).collect();
        let refused = check_grants(&used, &self.capabilities);
        if refused.is_empty() { Ok(()) } else { Err(refused) }
    }
}

/// Collects approvals for `commit_id` (40-hex): the commit's own signer plus every tag in
/// `tags` (ref name, raw tag object) that is validly signed, points at exactly that commit,
/// and names `approval_ref` when one is required. Tags that do not count come back with reasons.
pub fn collect_approvals(
    commit_id: &str,
    commit: &Verdict,
    tags: &[(String, Vec<u8>)],
    signers: &AllowedSigners,
    verify_time: i64,
    approval_ref: Option<&str>,
) -> (Vec<Approval>, Vec<IgnoredApproval>) {
    let mut approvals = vec![Approval {
        principal: commit.principal.clone(),
        fingerprint: commit.fingerprint.clone(),
        source: ApprovalSource::CommitSignature,
    }];
    let mut ignored = Vec::new();
    for (name, raw) in tags {
        match check_approval_tag(commit_id, raw, signers, verify_time, approval_ref) {
            Ok(v) => approvals.push(Approval {
                principal: v.principal,
                fingerprint: v.fingerprint,
                source: ApprovalSource::Tag(name.clone()),
            }),
            Err(reason) => ignored.push(IgnoredApproval { tag: name.clone(), reason }),
        }
    }
    (approvals, ignored)
}

fn check_approval_tag(
    commit_id: &str,
    raw: &[u8],
    signers: &AllowedSigners,
    verify_time: i64,
    approval_ref: Option<&str>,
) -> Result<Verdict, String> {
    let verdict = verify_object(ObjectKind::Tag, raw, signers, verify_time)
        .map_err(|e: VerifyError| e.to_string())?;
    let signed = split_tag(raw).map_err(|e| e.to_string())?;
    let info = parse_tag(&signed.payload).map_err(|e| e.to_string())?;
    if info.object_type != "commit" {
        return Err(format!("tags a {}, not a commit", info.object_type));
    }
    if !info.object.eq_ignore_ascii_case(commit_id) {
        return Err(format!("points at {}, not at {commit_id}", info.object));
    }
    if let Some(want) = approval_ref {
        let message = String::from_utf8_lossy(&info.message);
        let names_ref = message.lines().any(|l| {
            let l = l.trim();
            l.strip_prefix("ref:").or_else(|| l.strip_prefix("gitops-approve:")).map(str::trim)
                == Some(want)
        });
        if !names_ref {
            return Err(format!("signed message does not name the ref {want}"));
        }
    }
    Ok(verdict)
}

/// Path glob: `*`/`?` within a segment, `**` as a whole segment spans any number of segments.
pub fn glob_match(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    // Dynamic programming over (glob segment, path segment): polynomial, no backtracking blowup.
    let mut reach = vec![vec![false; p.len() + 1]; g.len() + 1];
    reach[0][0] = true;
    for gi in 0..g.len() {
        for pi in 0..=p.len() {
            if !reach[gi][pi] {
                continue;
            }
            if g[gi] == "**" {
                for r in reach[gi + 1].iter_mut().skip(pi) {
                    *r = true;
                }
            } else if pi < p.len() && match_pattern(p[pi], g[gi]) {
                reach[gi + 1][pi + 1] = true;
            }
        }
    }
    reach[g.len()][p.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ObjectKind;
    use crate::sshsig::PublicKey;
    use crate::testdata::{vector, vector_str};

    fn verdict(principal: &str) -> Verdict {
        let key = PublicKey::from_openssh(&vector_str("alice.pub")).unwrap();
        Verdict {
            kind: ObjectKind::Commit,
            principal: principal.into(),
            fingerprint: key.fingerprint(),
            key,
            line: 1,
        }
    }

    fn approval(p: &str, tag: Option<&str>) -> Approval {
        Approval {
            principal: p.into(),
            fingerprint: "SHA256:x".into(),
            source: tag.map_or(ApprovalSource::CommitSignature, |t| ApprovalSource::Tag(t.into())),
        }
    }

    const POLICY: &str = r#"
publishers: [forgejo@forge.example, alice@example.com]
rules:
  - name: prod
    paths: ["manifests/prod.yaml", "manifests/prod/**"]
    principals: [alice@example.com, bob@example.com, carol@example.com]
    threshold: 2
  - paths: ["manifests/**"]
    principals: [forgejo@forge.example, alice@example.com, bob@example.com]
    threshold: 1
"#;

    #[test]
    fn globs() {
        assert!(glob_match("manifests/**", "manifests/a/b.yaml"));
        assert!(glob_match("manifests/**", "manifests/a.yaml"));
        assert!(glob_match("**", "x"));
        assert!(glob_match("**/prod.yaml", "a/b/prod.yaml"));
        assert!(glob_match("**/prod.yaml", "prod.yaml"));
        assert!(glob_match("apps/*/prod.yaml", "apps/web/prod.yaml"));
        assert!(!glob_match("apps/*/prod.yaml", "apps/web/x/prod.yaml"));
        assert!(!glob_match("manifests/*.yaml", "manifests/a/b.yaml"));
        assert!(glob_match("manifests/prod.yaml", "manifests/prod.yaml"));
        assert!(!glob_match("manifests/prod.yaml", "manifests/prod.yaml.bak"));
        let deep = "a/".repeat(200) + "b";
        assert!(!glob_match(&"**/".repeat(50).to_string(), &deep));
    }

    #[test]
    fn policy_checks() {
        assert!(Policy::from_yaml_str(POLICY).is_ok());
        let zero = "rules:\n  - paths: ['**']\n    principals: [a]\n    threshold: 0\n";
        assert!(matches!(Policy::from_yaml_str(zero), Err(PolicyError::Rule { .. })));
        let high = "rules:\n  - paths: ['**']\n    principals: [a, a]\n    threshold: 2\n";
        assert!(Policy::from_yaml_str(high).unwrap_err().to_string().contains("never be met"));
        let unknown = "rules: []\nfoo: 1\n";
        assert!(matches!(Policy::from_yaml_str(unknown), Err(PolicyError::Syntax { .. })));
    }

    #[test]
    fn threshold_of_distinct_principals() {
        let p = Policy::from_yaml_str(POLICY).unwrap();
        let changed = vec!["manifests/prod.yaml".to_string(), "manifests/dev.yaml".into()];
        // Alice twice (commit + tag) is still one principal.
        let once = [approval("alice@example.com", None), approval("alice@example.com", Some("t1"))];
        let v = p.evaluate(&verdict("alice@example.com"), &changed, &once).unwrap_err();
        assert_eq!(v.len(), 1);
        let msg = v[0].to_string();
        assert!(msg.contains("`manifests/prod.yaml`"), "{msg}");
        assert!(msg.contains("rule `prod`"), "{msg}");
        assert!(msg.contains("needs 2 of"), "{msg}");
        assert!(msg.contains("only alice@example.com approved"), "{msg}");
        assert!(msg.contains("alice@example.com (tag t1)"), "{msg}");

        let two = [approval("alice@example.com", None), approval("bob@example.com", Some("t"))];
        let ok = p.evaluate(&verdict("alice@example.com"), &changed, &two).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].counted, ["alice@example.com", "bob@example.com"]);
    }

    #[test]
    fn forge_alone_cannot_change_prod_and_publishers_are_enforced() {
        let p = Policy::from_yaml_str(POLICY).unwrap();
        let prod = vec!["manifests/prod/web.yaml".to_string()];
        let forge = [approval("forgejo@forge.example", None)];
        let v = p.evaluate(&verdict("forgejo@forge.example"), &prod, &forge).unwrap_err();
        assert!(v[0].to_string().contains("none of them approved"), "{}", v[0]);
        let dev = vec!["manifests/dev.yaml".to_string()];
        assert!(p.evaluate(&verdict("forgejo@forge.example"), &dev, &forge).is_ok());
        let bob = [approval("bob@example.com", None)];
        let v = p.evaluate(&verdict("bob@example.com"), &dev, &bob).unwrap_err();
        assert!(matches!(v[0], Violation::NotPublisher { .. }));
        let v =
            p.evaluate(&verdict("alice@example.com"), &["README.md".into()], &forge).unwrap_err();
        assert!(matches!(v[0], Violation::Uncovered { .. }), "{}", v[0]);
    }

    /// Each row: the policy's `capabilities:` (absent: none), whether staging adds a job on
    /// the host, and the refusals (`path/capability`).
    #[test]
    fn capabilities_are_granted_per_manifest_path() {
        let head = "apiVersion: veza-agent/v1\nkind: Environment\n";
        let drill = "jobs:\n  dr-drill: {schedule: '@daily', on: host, command: x}\n";
        let parse = |env: &str, body: &str| {
            let text = format!("{head}metadata: {{name: {env}, host: h}}\n{body}");
            veza_model::parse::parse(text.as_bytes()).expect("manifest parses").manifest
        };
        let prod = parse("prod", drill);
        let staging_ok = parse("staging", "");
        let staging_drill = parse("staging", drill);
        let grants =
            "capabilities:\n  manifests/prod.yaml: [host-jobs]\n  manifests/staging.yaml: []\n";
        let cases: &[(&str, bool, &[&str])] = &[
            (grants, false, &[]),
            (grants, true, &["manifests/staging.yaml/host-jobs"]),
            ("", false, &["manifests/prod.yaml/host-jobs"]),
            (
                "capabilities:\n  manifests/prod.yaml: [host-jobs]\n",
                true,
                &["manifests/staging.yaml/host-jobs"],
            ),
            (
                "capabilities:\n  manifests/prod.yaml: [raw-config, host-jobs]\n  manifests/staging.yaml: [host-jobs]\n",
                true,
                &[],
            ),
        ];
        for (caps, staging_has_drill, want) in cases {
            let policy = Policy::from_yaml_str(&format!("{POLICY}{caps}")).expect("policy parses");
            let staging = if *staging_has_drill { &staging_drill } else { &staging_ok };
            let got: Vec<String> = policy
                .confine(&[("manifests/prod.yaml", &prod), ("manifests/staging.yaml", staging)])
                .err()
                .unwrap_or_default()
                .iter()
                .map(|u| format!("{}/{}", u.manifest, u.capability))
                .collect();
            assert_eq!(got, *want, "{caps}, staging drill: {staging_has_drill}");
        }
        let typo = format!("{POLICY}capabilities:\n  manifests/prod.yaml: [host-job]\n");
        let err = Policy::from_yaml_str(&typo).expect_err("unknown capability").to_string();
        assert!(err.contains("unknown variant `host-job`") && err.contains("host-jobs"), "{err}");
    }

    #[test]
    fn approval_tags_from_vectors() {
        let trust = AllowedSigners::parse(&vector_str("allowed_signers")).unwrap();
        let merge = "060c31f62fd0dbff34cb38484a120f3b7a2f1040";
        let commit = verdict("forgejo@forge.example");
        let tags = vec![
            ("refs/tags/approve-bob".to_string(), vector("approval-tag-bob.raw")),
            ("refs/tags/v1".to_string(), vector("tag-v1.raw")),
            ("refs/tags/junk".to_string(), b"not a tag".to_vec()),
        ];
        let (ok, ignored) = collect_approvals(
            merge,
            &commit,
            &tags,
            &trust,
            1_800_000_000,
            Some("refs/heads/main"),
        );
        let names: Vec<_> = ok.iter().map(|a| a.principal.as_str()).collect();
        assert_eq!(names, ["forgejo@forge.example", "bob@example.com"]);
        assert_eq!(ignored.len(), 2);
        assert!(ignored[0].reason.contains("points at 016718e"), "{:?}", ignored);
        let (_, ignored) = collect_approvals(
            merge,
            &commit,
            &tags[..1],
            &trust,
            1_800_000_000,
            Some("refs/heads/prod"),
        );
        assert!(ignored[0].reason.contains("does not name the ref"), "{ignored:?}");
    }
}
