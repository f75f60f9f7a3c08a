//! Error types of the signed-source crate, one enum per concern.
//!
//! Every variant carries the context an operator needs to act without reading the
//! code: which line, which key (as an OpenSSH `SHA256:` fingerprint), which header,
//! which time window. Verification failures ([`VerifyError`]) are verdicts about
//! untrusted input; the other enums are about configuration or I/O.

use std::path::PathBuf;
use std::time::Duration;

use crate::time::fmt_unix;

/// What kind of git object was being verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A commit object (`gpgsig` header).
    Commit,
    /// An annotated tag object (signature appended to the message).
    Tag,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tag => "tag",
        })
    }
}

/// A malformed or unsupported SSHSIG (OpenSSH `PROTOCOL.sshsig`) signature or SSH public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    /// The `-----BEGIN SSH SIGNATURE-----` armor is broken (markers, base64, size).
    #[error("SSH signature armor is malformed: {reason}")]
    Armor { reason: String },
    /// The decoded blob does not follow the SSHSIG layout.
    #[error("SSH signature blob is malformed: {reason}")]
    Blob { reason: String },
    /// An SSHSIG version other than 1.
    #[error("SSH signature version {version} is not supported (only version 1)")]
    UnsupportedVersion { version: u32 },
    /// A key or signature type other than `ssh-ed25519`.
    #[error("key type `{key_type}` is not supported (only ssh-ed25519)")]
    UnsupportedKeyType { key_type: String },
    /// A hash algorithm other than `sha512` / `sha256`.
    #[error("signature hash algorithm `{alg}` is not supported (only sha512 and sha256)")]
    UnsupportedHash { alg: String },
    /// An SSH wire-format public key that is not a valid ed25519 key.
    #[error("SSH public key is malformed: {reason}")]
    Key { reason: String },
}

/// Splitting a raw commit or tag object into signature and signed payload failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// No signature at all.
    #[error("{kind} is not signed")]
    Unsigned { kind: ObjectKind },
    /// More than one signature (git would concatenate or pick one; we refuse to guess).
    #[error("{kind} carries {count} signatures; exactly one is required")]
    MultipleSignatures { kind: ObjectKind, count: usize },
    /// A `gpgsig*` header other than the one `gpgsig` header (git silently drops these from the payload).
    #[error(
        "{kind} carries an extra signature header `{header}`; git ignores it when verifying, \
         so it could smuggle unsigned bytes (refusing)"
    )]
    ExtraSignatureHeader { kind: ObjectKind, header: String },
    /// An OpenPGP or X.509 signature.
    #[error("{kind} is signed with {format}, only SSH signatures are supported")]
    UnsupportedSignatureFormat { kind: ObjectKind, format: String },
    /// The object bytes are not a well-formed commit/tag.
    #[error("{kind} object is malformed: {reason}")]
    Malformed { kind: ObjectKind, reason: String },
}

/// Why a signed commit or tag was rejected. Each variant is a distinct rejection class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The object itself: unsigned, several signatures, an extra signature header, an
    /// OpenPGP/X.509 signature, or malformed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The signing key is in no allowed_signers line.
    #[error("signing key {fingerprint} is not in allowed_signers (unknown or untrusted signer)")]
    UnknownKey { fingerprint: String },
    /// The ed25519 signature does not match the signed bytes (tampered object or forged signature).
    #[error(
        "bad signature by key {fingerprint}: {reason} (object modified after signing, or forged)"
    )]
    BadSignature { fingerprint: String, reason: String },
    /// The signature was made for another SSHSIG namespace than `git`.
    #[error(
        "signature was made for namespace `{found}`, not `{expected}` (signature made for another purpose)"
    )]
    WrongNamespace { found: String, expected: String },
    /// allowed_signers restricts the key to namespaces that do not include `git`.
    #[error(
        "key {fingerprint} of {principal} may only sign namespaces `{allowed}` per allowed_signers, not `{namespace}`"
    )]
    NamespaceNotAllowed {
        principal: String,
        fingerprint: String,
        namespace: String,
        allowed: String,
    },
    /// The key's `valid-before` lies before the verification time.
    #[error(
        "key {fingerprint} of {principal} expired: valid-before {} is earlier than the verification time {}",
        fmt_unix(*.valid_before), fmt_unix(*.verify_time)
    )]
    KeyExpired { principal: String, fingerprint: String, valid_before: i64, verify_time: i64 },
    /// The key's `valid-after` lies after the verification time.
    #[error(
        "key {fingerprint} of {principal} is not yet valid: valid-after {} is later than the verification time {}",
        fmt_unix(*.valid_after), fmt_unix(*.verify_time)
    )]
    KeyNotYetValid { principal: String, fingerprint: String, valid_after: i64, verify_time: i64 },
    /// The signature uses a key type other than ed25519.
    #[error("signature key type `{key_type}` is not supported (only ssh-ed25519)")]
    UnsupportedKeyType { key_type: String },
    /// The signature uses a hash other than sha512/sha256.
    #[error("signature hash algorithm `{alg}` is not supported (only sha512 and sha256)")]
    UnsupportedHash { alg: String },
    /// SSHSIG version other than 1.
    #[error("SSH signature version {version} is not supported (only version 1)")]
    UnsupportedVersion { version: u32 },
    /// Structurally broken object or signature.
    #[error("malformed signed object: {reason}")]
    Malformed { reason: String },
}

impl From<SshSigError> for VerifyError {
    fn from(e: SshSigError) -> Self {
        match e {
            SshSigError::UnsupportedVersion { version } => {
                VerifyError::UnsupportedVersion { version }
            }
            SshSigError::UnsupportedKeyType { key_type } => {
                VerifyError::UnsupportedKeyType { key_type }
            }
            SshSigError::UnsupportedHash { alg } => VerifyError::UnsupportedHash { alg },
            e
            @ (SshSigError::Armor { .. } | SshSigError::Blob { .. } | SshSigError::Key { .. }) => {
                VerifyError::Malformed { reason: e.to_string() }
            }
        }
    }
}

/// An allowed_signers file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AllowedSignersError {
    /// A line does not follow the OpenSSH ALLOWED SIGNERS syntax.
    #[error("allowed_signers line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    /// `cert-authority` lines (SSH certificates) are not supported.
    #[error(
        "allowed_signers line {line}: `cert-authority` (SSH certificate CA) is not supported; \
         list each signer's ed25519 key directly"
    )]
    CertAuthority { line: usize },
    /// A key type other than `ssh-ed25519`.
    #[error(
        "allowed_signers line {line}: key type `{key_type}` is not supported (only ssh-ed25519)"
    )]
    UnsupportedKeyType { line: usize, key_type: String },
    /// `valid-after` / `valid-before` is not a valid timestamp.
    #[error(
        "allowed_signers line {line}: invalid {option}=\"{value}\": expected YYYYMMDD[Z] or YYYYMMDDHHMM[SS][Z]"
    )]
    BadTime { line: usize, option: String, value: String },
    /// The file could not be read.
    #[error("cannot read allowed_signers file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The trust policy file is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A line of the policy file is invalid.
    #[error("policy line {line}: {reason}")]
    Syntax { line: usize, reason: String },
    /// A rule is internally inconsistent (threshold 0 or above the number of principals, no paths).
    #[error("policy rule {rule}: {reason}")]
    Rule { rule: String, reason: String },
}

/// One remote that could not be fetched, for the report of a multi-remote fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFailure {
    /// The remote's URL.
    pub url: String,
    /// What went wrong, with gix's error chain.
    pub reason: String,
}

/// Fetching or reading the mirror failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No remote URL was configured.
    #[error("no remote URL given")]
    NoRemotes,
    /// Every remote failed; each failure is listed.
    #[error("all {} remote(s) failed: {}", .failures.len(), fmt_failures(.failures))]
    AllRemotesFailed { failures: Vec<RemoteFailure> },
    /// The fetch did not finish in time and was interrupted.
    #[error("fetch from {url} did not finish within {timeout:?} and was interrupted")]
    Timeout { url: String, timeout: Duration },
    /// The remote does not have the branch.
    #[error("remote {url} has no branch `{branch}`")]
    BranchMissing { url: String, branch: String },
    /// The remote advertised more refs than `source.max_refs` allows.
    #[error(
        "remote {url} advertised {count} refs, above the cap of {limit} (source.max_refs); \
         refusing to fetch (hint: prune old branches and tags on the forge, or raise \
         source.max_refs)"
    )]
    TooManyRefs { url: String, count: usize, limit: usize },
    /// The pack grew beyond `source.max_pack_bytes`; the fetch was interrupted.
    #[error(
        "remote {url} sent a pack larger than the cap of {limit} bytes (source.max_pack_bytes); \
         fetch interrupted, nothing kept (hint: keep large files out of the manifests \
         repository, or raise source.max_pack_bytes)"
    )]
    PackTooLarge { url: String, limit: u64 },
    /// Any other transport/protocol error from gix.
    #[error("fetch from {url} failed: {reason}")]
    Remote { url: String, reason: String },
    /// Creating or opening the local bare mirror failed.
    #[error("cannot open git repository {}: {reason}", .dir.display())]
    Open { dir: PathBuf, reason: String },
    /// A value that must be a full 40-hex object id is not one.
    #[error("`{value}` is not a full 40-hex commit id")]
    NotAnObjectId { value: String },
    /// A revision name could not be resolved.
    #[error("revision `{rev}` not found: {reason}")]
    RevNotFound { rev: String, reason: String },
    /// An object is missing from the object database.
    #[error("object {id} not found in the repository")]
    ObjectNotFound { id: String },
    /// An object has an unexpected kind.
    #[error("object {id} is a {actual}, expected a {expected}")]
    WrongKind { id: String, expected: String, actual: String },
    /// A path is not in the commit's tree.
    #[error("path `{path}` does not exist in commit {commit}")]
    PathNotFound { commit: String, path: String },
    /// A path names a tree, symlink or submodule instead of a regular file.
    #[error("path `{path}` in commit {commit} is a {kind}, not a regular file")]
    NotAFile { commit: String, path: String, kind: String },
    /// A blob exceeds the size cap (checked from the object header before loading).
    #[error("file `{path}` in commit {commit} is {size} bytes, above the limit of {limit} bytes")]
    FileTooLarge { commit: String, path: String, size: u64, limit: u64 },
    /// The tree has more files than allowed.
    #[error("commit {commit} has more than {limit} files; refusing to list it")]
    TooManyFiles { commit: String, limit: usize },
    /// A path of the tree nests too deep, is too long, or the paths add up to too much.
    #[error("commit {commit} has {what}; refusing to read its tree")]
    TreeTooLarge { commit: String, what: String },
    /// A commit carries more approval tags than allowed.
    #[error("commit {commit} has more than {limit} approval tags; refusing to read them")]
    TooManyTags { commit: String, limit: usize },
    /// The ancestry walk hit its bound before reaching a verdict.
    #[error(
        "ancestry check of {new} against {old} gave up after walking {limit} commits; history too long or unrelated"
    )]
    AncestryLimit { new: String, old: String, limit: usize },
    /// Reading from the object database failed.
    #[error("reading {what} failed: {reason}")]
    Odb { what: String, reason: String },
    /// A tree git itself would not write (`git fsck` refuses it): a name twice, out of
    /// order, empty, `.`, `..`, `.git` or with a `/`. Such a tree can show one file to a
    /// reviewer (the forge's view takes the first of two entries) and another to a reader
    /// that takes the last, so it is never read.
    #[error(
        "tree {tree} is malformed ({reason}); git never writes such a tree, so it is not read (hint: a crafted commit; find who pushed it)"
    )]
    MalformedTree { tree: String, reason: String },
}

fn fmt_failures(failures: &[RemoteFailure]) -> String {
    failures.iter().map(|f| format!("[{}: {}]", f.url, f.reason)).collect::<Vec<_>>().join("; ")
}
