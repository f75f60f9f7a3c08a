//! Why the agent refuses a revision: one kind per row of the runbook's table of rejection
//! reasons (`packaging/README.md`, "When something needs a human"). Every rejection
//! reason starts with its kind's prefix, so an operator (and `tests/packaging.rs`, which
//! checks the table against [`Refusal::ALL`]) can tell the kinds apart.

/// A kind of rejected revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The trust root (`allowed_signers`) cannot be read or parsed.
    TrustRoot,
    /// The tip's signature does not verify (unsigned, unknown key, bad signature, ...).
    Signature,
    /// The tip does not descend from the last applied commit, or that commit is not in
    /// the fetched history at all (force-push, history rewrite, replay of an old commit).
    Rollback,
    /// The ancestry check could not reach a verdict (history too long, a high-water mark
    /// that is not a commit id).
    Ancestry,
    /// The trust policy is unreadable or not met.
    Policy,
    /// A manifest file cannot be read from the tip (missing, not a file, too large).
    Manifest,
    /// The manifests do not parse or validate.
    InvalidManifests,
    /// A secret the manifests reference is missing from the commit, is not an age file,
    /// or cannot be decrypted by this host.
    Secret,
}

impl Refusal {
    /// Every kind, in the runbook's order.
    pub const ALL: [Refusal; 8] = [
        Refusal::Signature,
        Refusal::Rollback,
        Refusal::Ancestry,
        Refusal::Policy,
        Refusal::Manifest,
        Refusal::InvalidManifests,
        Refusal::Secret,
        Refusal::TrustRoot,
    ];

    /// The words every reason of this kind starts with (followed by `:`).
    pub fn prefix(self) -> &'static str {
        match self {
            Refusal::TrustRoot => "trust root unusable",
            Refusal::Signature => "signature",
            Refusal::Rollback => "refusing a rollback or force-push",
            Refusal::Ancestry => "anti-rollback check impossible",
            Refusal::Policy => "trust policy",
            Refusal::Manifest => "manifest",
            Refusal::InvalidManifests => "invalid manifests",
            Refusal::Secret => "secret",
        }
    }

    /// The reason recorded and printed: `PREFIX: DETAIL` (a detail starting with a line
    /// break keeps it, for multi-line lists).
    pub fn reason(self, detail: &str) -> String {
        let sep = if detail.starts_with('\n') { ":" } else { ": " };
        format!("{}{sep}{detail}", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_starts_with_a_prefix_no_other_kind_shares() {
        for kind in Refusal::ALL {
            let reason = kind.reason("detail");
            assert_eq!(reason, format!("{}: detail", kind.prefix()));
            let owners: Vec<Refusal> =
                Refusal::ALL.into_iter().filter(|k| reason.starts_with(k.prefix())).collect();
            assert_eq!(owners, [kind], "{reason}");
        }
        assert_eq!(Refusal::InvalidManifests.reason("\na\nb"), "invalid manifests:\na\nb");
    }
}
