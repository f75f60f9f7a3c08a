//! Pure verification of signed commits and tags against an allowed_signers trust root.
//!
//! No I/O and no clock: the caller passes the raw object bytes and the verification
//! time (Unix seconds) used for `valid-after`/`valid-before`. git itself uses the
//! committer time ([`crate::object::committer_time`]), which the signer writes; the
//! agent passes the current time so that an expired key stops being accepted even
//! for back-dated commits.
//!
//! Order of checks, each with its own [`VerifyError`] variant:
//! 1. split the object (unsigned, several signatures, extra `gpgsig*` header, not SSH);
//! 2. parse the SSHSIG (version, key type, hash, structure);
//! 3. the signature's namespace must be `git`;
//! 4. the key must be in allowed_signers (by exact key, never by author/committer text);
//! 5. the ed25519 signature must verify over the payload;
//! 6. the first allowed_signers line for that key that permits namespace `git` and is
//!    valid at the given time names the principal.

use crate::allowed_signers::{AllowedSigners, Entry, Validity};
use crate::error::{ObjectKind, VerifyError};
use crate::object::{split_commit, split_tag};
use crate::sshsig::{PublicKey, SshSig};

/// The SSHSIG namespace git uses for commits and tags.
pub const GIT_NAMESPACE: &str = "git";

/// A good signature by a trusted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What was verified.
    pub kind: ObjectKind,
    /// The principals field of the matching allowed_signers line (as git prints it).
    pub principal: String,
    /// `SHA256:…` fingerprint of the signing key.
    pub fingerprint: String,
    /// The signing key.
    pub key: PublicKey,
    /// Line of the allowed_signers file that matched.
    pub line: usize,
}

/// Verifies the SSH signature of a raw commit or annotated tag object (`kind`) for
/// namespace `git`.
pub fn verify_object(
    kind: ObjectKind,
    raw: &[u8],
    signers: &AllowedSigners,
    verify_time: i64,
) -> Result<Verdict, VerifyError> {
    let signed = match kind {
        ObjectKind::Commit => split_commit(raw)?,
        ObjectKind::Tag => split_tag(raw)?,
    };
    let sig = SshSig::from_armor(&signed.armor)?;
    if sig.namespace != GIT_NAMESPACE.as_bytes() {
        return Err(VerifyError::WrongNamespace {
            found: sig.namespace_str(),
            expected: GIT_NAMESPACE.to_string(),
        });
    }
    let fingerprint = sig.public_key.fingerprint();
    let candidates: Vec<&Entry> = signers.entries_for_key(&sig.public_key).collect();
    let Some(first) = candidates.first() else {
        return Err(VerifyError::UnknownKey { fingerprint });
    };
    sig.verify(&signed.payload)
        .map_err(|reason| VerifyError::BadSignature { fingerprint: fingerprint.clone(), reason })?;
    if let Some(entry) = candidates.iter().find(|e| {
        e.allows_namespace(GIT_NAMESPACE) && e.validity_at(verify_time) == Validity::Valid
    }) {
        return Ok(Verdict {
            kind,
            principal: entry.principals.clone(),
            fingerprint,
            key: sig.public_key.clone(),
            line: entry.line,
        });
    }
    // No line accepts it: report why, for the first line that permits the namespace, else the first line.
    let entry = candidates.iter().find(|e| e.allows_namespace(GIT_NAMESPACE)).unwrap_or(first);
    if !entry.allows_namespace(GIT_NAMESPACE) {
        return Err(VerifyError::NamespaceNotAllowed {
            principal: entry.principals.clone(),
            fingerprint,
            namespace: GIT_NAMESPACE.to_string(),
            allowed: entry.namespaces.clone().unwrap_or_default(),
        });
    }
    match entry.validity_at(verify_time) {
        Validity::Expired { valid_before } => Err(VerifyError::KeyExpired {
            principal: entry.principals.clone(),
            fingerprint,
            valid_before,
            verify_time,
        }),
        Validity::NotYetValid { valid_after } => Err(VerifyError::KeyNotYetValid {
            principal: entry.principals.clone(),
            fingerprint,
            valid_after,
            verify_time,
        }),
        // Unreachable by construction (a valid line would have been taken above); fail closed.
        Validity::Valid => Err(VerifyError::Malformed {
            reason: "internal: no allowed_signers line accepted a valid key".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::committer_time;
    use crate::testdata::{vector, vector_str};

    fn signers(name: &str) -> AllowedSigners {
        AllowedSigners::parse(&vector_str(name)).unwrap()
    }

    /// Table-driven over EXPECTED.tsv: every vector gives the expected verdict and principal,
    /// verified at the object's own committer/tagger time (as git does).
    #[test]
    fn expected_tsv() {
        let tsv = vector_str("EXPECTED.tsv");
        let trust = signers("allowed_signers");
        let mut rows = 0;
        for row in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = row.split('\t').collect();
            let (file, kind, id, expected, principal) =
                (cols[0], cols[1], cols[2], cols[3], cols[4]);
            let raw = vector(file);
            // The vector file really is that object.
            let object_kind =
                if kind == "tag" { gix::object::Kind::Tag } else { gix::object::Kind::Commit };
            let computed =
                gix::objs::compute_hash(gix::hash::Kind::Sha1, object_kind, &raw).unwrap();
            assert_eq!(computed.to_string(), id, "{file}: object id");
            let result = match kind {
                "commit" => {
                    verify_object(ObjectKind::Commit, &raw, &trust, committer_time(&raw).unwrap())
                }
                "tag" => {
                    let t = crate::object::parse_tag(&raw).unwrap().tagger_time.unwrap();
                    verify_object(ObjectKind::Tag, &raw, &trust, t)
                }
                other => panic!("unknown kind {other}"),
            };
            match expected {
                "GOOD" => {
                    let v = result.unwrap_or_else(|e| panic!("{file}: {e}"));
                    assert_eq!(v.principal, principal, "{file}");
                    assert!(v.fingerprint.starts_with("SHA256:"));
                }
                "REJECT" => {
                    let e = result.expect_err(file);
                    let ok = match file {
                        "neg-unsigned.raw" => {
                            matches!(
                                e,
                                VerifyError::Object(crate::error::ObjectError::Unsigned { .. })
                            )
                        }
                        "neg-untrusted-key.raw" => matches!(e, VerifyError::UnknownKey { .. }),
                        "neg-tampered.raw" => matches!(e, VerifyError::BadSignature { .. }),
                        "neg-wrong-namespace.raw" => {
                            matches!(e, VerifyError::WrongNamespace { ref found, .. } if found == "file")
                        }
                        "edge-extra-gpgsig-sha256.raw" => {
                            matches!(
                                e,
                                VerifyError::Object(
                                    crate::error::ObjectError::ExtraSignatureHeader { .. }
                                )
                            )
                        }
                        _ => panic!("no expectation for {file}: {e}"),
                    };
                    assert!(ok, "{file}: unexpected rejection {e:?}");
                }
                other => panic!("bad expectation {other}"),
            }
            rows += 1;
        }
        assert_eq!(rows, 12);
    }

    #[test]
    fn allowed_signers_variants() {
        let raw = vector("commit1.raw");
        let at_commit = committer_time(&raw).unwrap();
        let now = 1_800_000_000; // 2027-01-15

        // valid-before 2023-12-31 < commit time 2024-01-01 → expired (git agrees).
        let e = verify_object(
            ObjectKind::Commit,
            &raw,
            &signers("allowed_signers.as_expired"),
            at_commit,
        )
        .unwrap_err();
        assert!(matches!(e, VerifyError::KeyExpired { .. }), "{e}");
        assert!(e.to_string().contains("2023-12-31T00:00:00Z"), "{e}");

        // Window 2023-12-01..2024-01-02 contains the commit time but not "now".
        let win = signers("allowed_signers.as_window");
        assert_eq!(
            verify_object(ObjectKind::Commit, &raw, &win, at_commit).unwrap().principal,
            "alice@example.com"
        );
        assert!(matches!(
            verify_object(ObjectKind::Commit, &raw, &win, now),
            Err(VerifyError::KeyExpired { .. })
        ));
        assert!(matches!(
            verify_object(ObjectKind::Commit, &raw, &win, 1_700_000_000),
            Err(VerifyError::KeyNotYetValid { .. })
        ));

        let e =
            verify_object(ObjectKind::Commit, &raw, &signers("allowed_signers.as_wrongns"), now)
                .unwrap_err();
        assert!(
            matches!(e, VerifyError::NamespaceNotAllowed { ref allowed, .. } if allowed == "file"),
            "{e}"
        );

        // Wildcard principal: good, and git prints the pattern as the principal too.
        let v =
            verify_object(ObjectKind::Commit, &raw, &signers("allowed_signers.as_wildcard"), now)
                .unwrap();
        assert_eq!(v.principal, "*@example.com");
    }

    #[test]
    fn first_acceptable_line_wins() {
        let alice = vector_str("alice.pub");
        let key = alice.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let text = format!(
            "old@example.com valid-before=\"20200101Z\" {key}\nns@example.com namespaces=\"file\" {key}\nalice@example.com {key}\n"
        );
        let v = verify_object(
            ObjectKind::Commit,
            &vector("commit1.raw"),
            &AllowedSigners::parse(&text).unwrap(),
            1_800_000_000,
        )
        .unwrap();
        assert_eq!((v.principal.as_str(), v.line), ("alice@example.com", 3));
    }

    #[test]
    fn tags_verify_and_reject() {
        let trust = signers("allowed_signers");
        let raw = vector("approval-tag-bob.raw");
        assert_eq!(
            verify_object(ObjectKind::Tag, &raw, &trust, 1_800_000_000).unwrap().principal,
            "bob@example.com"
        );
        let mut tampered = raw.clone();
        let pos = tampered.windows(7).position(|w| w == b"approve").unwrap();
        tampered[pos] = b'A';
        assert!(matches!(
            verify_object(ObjectKind::Tag, &tampered, &trust, 0),
            Err(VerifyError::BadSignature { .. })
        ));
        assert!(matches!(
            verify_object(ObjectKind::Tag, &vector("commit1.raw"), &trust, 0),
            Err(VerifyError::Object(crate::error::ObjectError::Malformed { .. }))
        ));
    }
}
