//! Signed source: fetch the manifests repository and verify SSH commit signatures
//! against the host trust root before anything is read as desired state.
//!
//! Pipeline: [`fetch`] mirrors the repository (gix, bare, no worktree) and reads raw
//! objects; [`object`] splits a raw commit/tag into signature and payload exactly as
//! git does; [`sshsig`] parses and checks the SSH signature; [`allowed_signers`] is
//! the trust root; [`verify`] ties them together without I/O or clock; [`policy`]
//! decides whether the approvals suffice for the paths that changed; [`refusal`] names
//! the kinds of rejected revision; [`accept`] is the one decision that composes them all
//! (signature, anti-rollback, policy, manifests, capabilities) into an `Accepted` tip.

pub mod accept;
pub mod allowed_signers;
pub mod error;
pub mod fetch;
pub mod object;
pub mod policy;
pub mod refusal;
pub mod sshsig;
pub mod time;
pub mod verify;

pub use accept::{Acceptance, Accepted, Base, PolicySince, Rejected, SecretEntry, Secrets, accept};
pub use allowed_signers::AllowedSigners;
pub use error::{AllowedSignersError, FetchError, ObjectKind, PolicyError, VerifyError};
pub use refusal::Refusal;
pub use verify::{Verdict, verify_object};

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testdata;
