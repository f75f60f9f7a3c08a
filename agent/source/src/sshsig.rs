//! OpenSSH signatures (`PROTOCOL.sshsig`) as git writes them with `gpg.format=ssh`:
//! armor, strict blob parsing, the signed-data construction, and ed25519 verification.
//!
//! Strictness, on purpose: magic `SSHSIG`, version exactly 1, exactly five wire
//! strings and no trailing bytes, key and signature type `ssh-ed25519` only (no FIDO
//! `sk-` keys, RSA, ECDSA or certificates), hash `sha512` or `sha256`, non-empty
//! namespace. Verification uses ed25519-dalek's `verify_strict`, which additionally
//! rejects small-order keys and signature points; every honestly produced signature
//! passes it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256, Sha512};

use crate::error::SshSigError;

/// The only key type supported.
pub const ED25519: &str = "ssh-ed25519";
/// First armor line.
pub const BEGIN_MARKER: &str = "-----BEGIN SSH SIGNATURE-----";
/// Last armor line.
pub const END_MARKER: &str = "-----END SSH SIGNATURE-----";
/// SSHSIG magic preamble, also the first bytes of the signed data.
const MAGIC: &[u8; 6] = b"SSHSIG";
/// Upper bound for an armored signature; an ed25519 SSHSIG is under 300 bytes.
const MAX_ARMOR: usize = 16 * 1024;

/// An ed25519 public key in SSH wire format.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    blob: Vec<u8>,
    key: [u8; 32],
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Parses an SSH wire public key blob: `string("ssh-ed25519") ‖ string(32 bytes)`, nothing after.
    pub fn from_blob(blob: &[u8]) -> Result<PublicKey, SshSigError> {
        let bad = |reason: &str| SshSigError::Key { reason: reason.to_string() };
        let mut r = Reader::new(blob);
        let key_type = r.string().map_err(|_| bad("missing key type"))?;
        if key_type != ED25519.as_bytes() {
            return Err(SshSigError::UnsupportedKeyType { key_type: lossy(key_type) });
        }
        let key = r.string().map_err(|_| bad("missing ed25519 key bytes"))?;
        let key: [u8; 32] =
            key.try_into().map_err(|_| bad("ed25519 key is not exactly 32 bytes"))?;
        if !r.is_empty() {
            return Err(bad("trailing bytes after the ed25519 key"));
        }
        Ok(PublicKey { blob: blob.to_vec(), key })
    }

    /// Parses the `<type> <base64>` part of an OpenSSH public key line (e.g. `alice.pub`).
    /// Anything after the base64 (a comment) is ignored.
    pub fn from_openssh(line: &str) -> Result<PublicKey, SshSigError> {
        let mut fields = line.split_ascii_whitespace();
        let (Some(key_type), Some(b64)) = (fields.next(), fields.next()) else {
            return Err(SshSigError::Key { reason: "expected `ssh-ed25519 <base64>`".to_string() });
        };
        Self::from_type_and_base64(key_type, b64)
    }

    /// Builds a key from the key-type field and the base64 blob field, checking they agree.
    pub fn from_type_and_base64(key_type: &str, b64: &str) -> Result<PublicKey, SshSigError> {
        if key_type != ED25519 {
            return Err(SshSigError::UnsupportedKeyType { key_type: key_type.to_string() });
        }
        let blob = STANDARD
            .decode(b64)
            .map_err(|e| SshSigError::Key { reason: format!("key is not valid base64: {e}") })?;
        let key = PublicKey::from_blob(&blob)?;
        Ok(key)
    }

    /// The SSH wire blob.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The raw 32-byte ed25519 point.
    pub fn ed25519_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// `SHA256:<unpadded base64>` as printed by `ssh-keygen -l` and git.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.blob)
    }

    /// The `ssh-ed25519 AAAA…` form.
    pub fn to_openssh(&self) -> String {
        format!("{ED25519} {}", STANDARD.encode(&self.blob))
    }
}

/// OpenSSH fingerprint of a public key blob: `SHA256:` + unpadded base64 of SHA-256(blob).
pub fn fingerprint(blob: &[u8]) -> String {
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(blob)))
}

/// The message digest algorithm named in the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// `sha256`
    Sha256,
    /// `sha512` (what git and ssh-keygen produce by default)
    Sha512,
}

impl HashAlg {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha512 => "sha512",
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => Sha256::digest(message).to_vec(),
            HashAlg::Sha512 => Sha512::digest(message).to_vec(),
        }
    }
}

/// A parsed SSHSIG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSig {
    /// The signer's public key (embedded in the signature; trust comes from allowed_signers).
    pub public_key: PublicKey,
    /// The namespace the signature was made for (`git` for commits and tags).
    pub namespace: Vec<u8>,
    /// The reserved field (ignored, but covered by the signature).
    pub reserved: Vec<u8>,
    /// The message hash.
    pub hash_alg: HashAlg,
    /// The raw 64-byte ed25519 signature `R ‖ S`.
    pub signature: [u8; 64],
}

impl SshSig {
    /// Parses an armored signature (`-----BEGIN SSH SIGNATURE-----` … `-----END SSH SIGNATURE-----`).
    pub fn from_armor(armor: &[u8]) -> Result<SshSig, SshSigError> {
        SshSig::from_blob(&dearmor(armor)?)
    }

    /// Parses a decoded SSHSIG blob.
    pub fn from_blob(blob: &[u8]) -> Result<SshSig, SshSigError> {
        let bad = |reason: String| SshSigError::Blob { reason };
        let magic = blob.get(..MAGIC.len()).ok_or_else(|| bad("shorter than the magic".into()))?;
        if magic != MAGIC {
            return Err(bad("does not start with the magic `SSHSIG`".into()));
        }
        let mut r = Reader::new(&blob[MAGIC.len()..]);
        let version = r.u32().map_err(|_| bad("missing version".into()))?;
        if version != 1 {
            return Err(SshSigError::UnsupportedVersion { version });
        }
        let field = |r: &mut Reader<'_>, name: &str| {
            r.string().map(<[u8]>::to_vec).map_err(|e| bad(format!("field {name}: {e}")))
        };
        let pk = field(&mut r, "publickey")?;
        let namespace = field(&mut r, "namespace")?;
        let reserved = field(&mut r, "reserved")?;
        let hash = field(&mut r, "hash_algorithm")?;
        let sig = field(&mut r, "signature")?;
        if !r.is_empty() {
            return Err(bad(format!("{} trailing bytes after the signature", r.remaining())));
        }
        let public_key = PublicKey::from_blob(&pk)?;
        if namespace.is_empty() {
            return Err(bad("namespace is empty".into()));
        }
        let hash_alg = match hash.as_slice() {
            b"sha512" => HashAlg::Sha512,
            b"sha256" => HashAlg::Sha256,
            other => return Err(SshSigError::UnsupportedHash { alg: lossy(other) }),
        };
        let mut s = Reader::new(&sig);
        let sig_type = s.string().map_err(|e| bad(format!("signature type: {e}")))?;
        if sig_type != ED25519.as_bytes() {
            return Err(SshSigError::UnsupportedKeyType { key_type: lossy(sig_type) });
        }
        let raw = s.string().map_err(|e| bad(format!("signature bytes: {e}")))?;
        let signature: [u8; 64] = raw
            .try_into()
            .map_err(|_| bad(format!("ed25519 signature is {} bytes, not 64", raw.len())))?;
        if !s.is_empty() {
            return Err(bad("trailing bytes after the ed25519 signature".into()));
        }
        Ok(SshSig { public_key, namespace, reserved, hash_alg, signature })
    }

    /// The namespace as text (lossy), for messages.
    pub fn namespace_str(&self) -> String {
        lossy(&self.namespace)
    }

    /// The bytes ed25519 signs:
    /// `"SSHSIG" ‖ string(namespace) ‖ string(reserved) ‖ string(hash_alg) ‖ string(H(message))`.
    pub fn signed_data(&self, message: &[u8]) -> Vec<u8> {
        let digest = self.hash_alg.digest(message);
        let mut out = Vec::with_capacity(6 + 4 * 4 + self.namespace.len() + 6 + digest.len());
        out.extend_from_slice(MAGIC);
        put_string(&mut out, &self.namespace);
        put_string(&mut out, &self.reserved);
        put_string(&mut out, self.hash_alg.name().as_bytes());
        put_string(&mut out, &digest);
        out
    }

    /// Checks the ed25519 signature over `message` with the embedded key (strict verification).
    /// Whether the key is trusted and the namespace right is the caller's business.
    pub fn verify(&self, message: &[u8]) -> Result<(), String> {
        let vk = VerifyingKey::from_bytes(self.public_key.ed25519_bytes())
            .map_err(|e| format!("embedded ed25519 key is invalid: {e}"))?;
        let sig = Signature::from_bytes(&self.signature);
        vk.verify_strict(&self.signed_data(message), &sig)
            .map_err(|_| "ed25519 signature verification failed".to_string())
    }
}

/// Strips the armor and base64-decodes the body.
///
/// Accepted: `BEGIN` line, one or more base64 lines, `END` line, optionally one final LF.
/// Nothing before or after, no blank lines, no CR, at most 16 KiB.
pub fn dearmor(armor: &[u8]) -> Result<Vec<u8>, SshSigError> {
    let bad = |reason: &str| SshSigError::Armor { reason: reason.to_string() };
    if armor.len() > MAX_ARMOR {
        return Err(bad("larger than 16 KiB"));
    }
    let text = std::str::from_utf8(armor).map_err(|_| bad("not ASCII text"))?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = text.split('\n');
    if lines.next() != Some(BEGIN_MARKER) {
        return Err(bad("does not start with `-----BEGIN SSH SIGNATURE-----` on its own line"));
    }
    let mut body = String::with_capacity(text.len());
    let mut ended = false;
    for line in lines {
        if ended {
            return Err(bad("text after `-----END SSH SIGNATURE-----`"));
        }
        if line == END_MARKER {
            ended = true;
            continue;
        }
        if line.is_empty() {
            return Err(bad("blank line inside the armor"));
        }
        if !line.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') {
            return Err(bad("non-base64 character inside the armor"));
        }
        body.push_str(line);
    }
    if !ended {
        return Err(bad("missing `-----END SSH SIGNATURE-----`"));
    }
    if body.is_empty() {
        return Err(bad("empty body"));
    }
    STANDARD
        .decode(body.as_bytes())
        .map_err(|e| SshSigError::Armor { reason: format!("body is not valid base64: {e}") })
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // Lengths here are small (namespace, digest); a u32 overflow cannot happen for our inputs,
    // but saturate rather than truncate silently.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// RFC 4253 wire reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let (head, rest) = self.buf.split_first_chunk::<4>().ok_or("truncated length")?;
        self.buf = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.u32()? as usize;
        if len > self.buf.len() {
            return Err("length runs past the end");
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::vector;

    const ALICE_FP: &str = "SHA256:9h8eV4rt1awC43QRQVMXNoG5L5IhTSCpFzQBBNeDC3g";

    #[test]
    fn commit1_signature_decodes_field_by_field() {
        let sig = SshSig::from_armor(&vector("commit1.sig")).unwrap();
        assert_eq!(sig.public_key.fingerprint(), ALICE_FP);
        assert_eq!(sig.namespace, b"git");
        assert!(sig.reserved.is_empty());
        assert_eq!(sig.hash_alg, HashAlg::Sha512);
        assert_eq!(sig.signature[..4], [0x56, 0xb0, 0xe6, 0x3c]);
    }

    #[test]
    fn commit1_signed_data_matches_the_dump() {
        let sig = SshSig::from_armor(&vector("commit1.sig")).unwrap();
        let data = sig.signed_data(&vector("commit1.payload"));
        assert_eq!(data.len(), 95);
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        assert!(hex.starts_with(
            "5353485349470000000367697400000000000000067368613531320000004\
0aa67d6d3c2bc024f27"
        ));
        assert!(hex.ends_with("be3eb1daaecb12"));
        sig.verify(&vector("commit1.payload")).unwrap();
    }

    #[test]
    fn sha256_variant_verifies() {
        let sig = SshSig::from_armor(&vector("commit1-sha256hash.sig")).unwrap();
        assert_eq!(sig.hash_alg, HashAlg::Sha256);
        sig.verify(&vector("commit1-sha256hash.payload")).unwrap();
    }

    #[test]
    fn tampered_payload_fails() {
        let sig = SshSig::from_armor(&vector("neg-tampered.sig")).unwrap();
        assert!(sig.verify(&vector("neg-tampered.payload")).is_err());
    }

    #[test]
    fn pub_file_fingerprint() {
        let text = String::from_utf8(vector("alice.pub")).unwrap();
        let key = PublicKey::from_openssh(&text).unwrap();
        assert_eq!(key.fingerprint(), ALICE_FP);
        assert!(text.starts_with(&key.to_openssh()));
    }

    fn blob_of(name: &str) -> Vec<u8> {
        dearmor(&vector(name)).unwrap()
    }

    #[test]
    fn strict_blob_checks() {
        let good = blob_of("commit1.sig");
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(SshSig::from_blob(&trailing), Err(SshSigError::Blob { .. })));
        let mut v2 = good.clone();
        v2[9] = 2;
        assert_eq!(SshSig::from_blob(&v2), Err(SshSigError::UnsupportedVersion { version: 2 }));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(SshSig::from_blob(&magic), Err(SshSigError::Blob { .. })));
        for cut in 0..good.len() {
            assert!(SshSig::from_blob(&good[..cut]).is_err(), "truncated at {cut}");
        }
        // Key type renamed to an unsupported one of the same length.
        let mut rsa = good.clone();
        let pos = 6 + 4 + 4 + 4;
        rsa[pos..pos + 11].copy_from_slice(b"ssh-ed448xx");
        assert_eq!(
            SshSig::from_blob(&rsa),
            Err(SshSigError::UnsupportedKeyType { key_type: "ssh-ed448xx".into() })
        );
    }

    #[test]
    fn strict_armor_checks() {
        let good = vector("commit1.sig");
        assert!(dearmor(&good).is_ok());
        let text = String::from_utf8(good).unwrap();
        let no_nl = text.trim_end_matches('\n').to_string();
        assert!(dearmor(no_nl.as_bytes()).is_ok());
        for bad in [
            format!("x{text}"),
            format!("{text}x"),
            format!("{text}\n"),
            text.replacen('\n', "\n\n", 2),
            text.replace("-----END SSH SIGNATURE-----", ""),
            text.replace("U1NI", "U1N*"),
            text.replace('\n', "\r\n"),
            format!("{BEGIN_MARKER}\n{END_MARKER}\n"),
        ] {
            assert!(dearmor(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }
}
