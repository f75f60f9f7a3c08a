//! Secrets: age-encrypted values that live in the signed repository and are readable only
//! on the hosts they were encrypted to.
//!
//! - [`Ciphertext::parse`] takes an age file (ASCII-armored or binary), bounded to
//!   [`MAX_CIPHERTEXT_BYTES`], and reads its header without decrypting: who it was
//!   encrypted to ([`Stanza`]s), and the SHA-256 of the ciphertext (what the plan records,
//!   so a rotated secret is a changed input of its slot without its value in any plan).
//! - [`Identities`] are the host's private keys (its SSH host key, as agenix does, and any
//!   native age key), parsed from bytes the caller read.
//! - [`decrypt`] opens a ciphertext in memory into a [`SecretValue`], which never prints
//!   its value (`Debug` is redacted, there is no `Display` and no `Serialize`). A
//!   ciphertext this host cannot open is an error naming whom it was encrypted to and
//!   which keys the host has.
//! - [`encrypt`] is the author's side (`veza-agent secret encrypt`): plaintext to armored
//!   age text for SSH (`ssh-ed25519 …`) and age (`age1…`) recipients.
//!
//! Pure: no file, clock or environment access (the caller reads key files).

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest, Sha256};

/// The largest ciphertext accepted (armored or binary). Secrets are passwords and keys,
/// not files.
pub const MAX_CIPHERTEXT_BYTES: usize = 64 * 1024;

/// The first line of every age file.
const AGE_MAGIC: &str = "age-encryption.org/v1";

/// What can go wrong with a secret. Messages never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Too large to be a secret.
    #[error("{len} bytes is too large for a secret (at most {MAX_CIPHERTEXT_BYTES})")]
    TooLarge {
        /// Its size.
        len: usize,
    },
    /// Not an age file.
    #[error("not an age-encrypted file: {why} (hint: create it with `veza-agent secret encrypt`)")]
    Malformed {
        /// What is wrong.
        why: String,
    },
    /// None of the host's keys opens it.
    #[error(
        "this host cannot decrypt it: it was encrypted to {to}, and this host has {have} (hint: re-encrypt it with this host's key among the recipients: `veza-agent secret encrypt --to \"$(cat /etc/ssh/ssh_host_ed25519_key.pub)\" …`)"
    )]
    NotForThisHost {
        /// The recipients named by the file's header.
        to: String,
        /// The host's keys, by fingerprint.
        have: String,
    },
    /// Decryption failed for another reason (a corrupt or tampered payload).
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// The value is not UTF-8 text.
    #[error("the decrypted value is not UTF-8 text")]
    NotText,
    /// A key file that is not a usable private key.
    #[error("identity `{name}`: {why}")]
    Identity {
        /// Where it came from.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// A recipient that is not a public key.
    #[error(
        "recipient `{recipient}`: {why} (hint: an `ssh-ed25519 AAAA…` public key line, e.g. /etc/ssh/ssh_host_ed25519_key.pub, or an `age1…` key)"
    )]
    Recipient {
        /// What was given (a public key: not secret).
        recipient: String,
        /// What is wrong.
        why: String,
    },
    /// Encryption failed.
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// One recipient stanza of an age header: the key type and, for SSH keys, the 4-byte tag
/// (the start of the SHA-256 of the public key) that tells which key it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// `ssh-ed25519`, `ssh-rsa`, `X25519`, `scrypt`, or another plugin's type.
    pub kind: String,
    /// The SSH key tag (unpadded base64), for SSH stanzas.
    pub tag: Option<String>,
}

impl fmt::Display for Stanza {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind[..], &self.tag) {
            (_, Some(tag)) => write!(f, "{} key with tag {tag}", self.kind),
            ("X25519", None) => f.write_str("an age (X25519) key (age headers do not name it)"),
            ("scrypt", None) => f.write_str("a passphrase"),
            (kind, None) => write!(f, "a `{kind}` recipient"),
        }
    }
}

/// A parsed age file: its header's recipients, the binary bytes to decrypt, and the
/// SHA-256 of what was given.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext {
    binary: Vec<u8>,
    stanzas: Vec<Stanza>,
    sha256: String,
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ciphertext")
            .field("stanzas", &self.stanzas)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Ciphertext {
    /// Reads an age file, armored (`-----BEGIN AGE ENCRYPTED FILE-----`) or binary,
    /// without decrypting it.
    pub fn parse(input: &[u8]) -> Result<Ciphertext, SecretError> {
        if input.len() > MAX_CIPHERTEXT_BYTES {
            return Err(SecretError::TooLarge { len: input.len() });
        }
        let malformed = |why: &str| SecretError::Malformed { why: why.to_string() };
        let trimmed = trim_ascii_start(input);
        let binary = if trimmed.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----") {
            let mut out = Vec::new();
            age::armor::ArmoredReader::new(trimmed)
                .take(MAX_CIPHERTEXT_BYTES as u64)
                .read_to_end(&mut out)
                .map_err(|e| SecretError::Malformed { why: format!("bad armor: {e}") })?;
            out
        } else {
            input.to_vec()
        };
        let stanzas = parse_header(&binary).map_err(|why| malformed(&why))?;
        Ok(Ciphertext { binary, stanzas, sha256: hex(&Sha256::digest(input)) })
    }

    /// The recipients named by the header.
    pub fn stanzas(&self) -> &[Stanza] {
        &self.stanzas
    }

    /// SHA-256 (hex) of the file as given: changes whenever the secret is re-encrypted.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The recipients, for a human: `ssh-ed25519 key with tag Ab12Cd, …`.
    pub fn recipients(&self) -> String {
        let list: Vec<String> = self.stanzas.iter().map(ToString::to_string).collect();
        list.join(", ")
    }
}

fn trim_ascii_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// Reads the header of a binary age file (`age-encryption.org/v1`, `-> TYPE ARGS…` stanza
/// lines each followed by base64 body lines, `--- MAC`) and returns its stanzas.
fn parse_header(binary: &[u8]) -> Result<Vec<Stanza>, String> {
    // The header is text; the payload after the MAC line is binary.
    let end = find(binary, b"\n---").ok_or("no header end (`---` line)")?;
    let header = std::str::from_utf8(&binary[..end]).map_err(|_| "the header is not text")?;
    let mut lines = header.split('\n');
    if lines.next() != Some(AGE_MAGIC) {
        return Err(format!("the first line is not `{AGE_MAGIC}`"));
    }
    let mut stanzas = Vec::new();
    let mut in_body = false;
    for line in lines {
        if let Some(rest) = line.strip_prefix("-> ") {
            let mut args = rest.split(' ');
            let kind = args.next().filter(|k| !k.is_empty()).ok_or("a stanza without a type")?;
            if !kind.bytes().all(|c| c.is_ascii_graphic()) {
                return Err("a stanza type that is not printable ASCII".to_string());
            }
            let tag = match kind {
                "ssh-ed25519" | "ssh-rsa" => {
                    let tag = args.next().ok_or("an SSH stanza without its key tag")?;
                    match STANDARD_NO_PAD.decode(tag) {
                        Ok(b) if b.len() == 4 => Some(tag.to_string()),
                        _ => return Err("an SSH stanza whose key tag is not 4 bytes".to_string()),
                    }
                }
                _ => None,
            };
            // Encryptors add random `*-grease` stanzas so parsers stay lenient: not a
            // recipient.
            if !kind.ends_with("-grease") {
                stanzas.push(Stanza { kind: kind.to_string(), tag });
            }
            in_body = true;
        } else if in_body {
            if line.len() > 64 || STANDARD_NO_PAD.decode(line).is_err() {
                return Err("a stanza body line that is not unpadded base64".to_string());
            }
        } else {
            return Err("text between the version line and the first stanza".to_string());
        }
    }
    if stanzas.is_empty() {
        return Err("no recipient stanza".to_string());
    }
    Ok(stanzas)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OpenSSH fingerprint (`SHA256:…`) and the age tag of an SSH public key given in
/// its wire encoding.
fn ssh_fingerprint(wire: &[u8]) -> (String, String) {
    let digest = Sha256::digest(wire);
    (format!("SHA256:{}", STANDARD_NO_PAD.encode(digest)), STANDARD_NO_PAD.encode(&digest[..4]))
}

/// A decrypted secret. Its value is reachable only through [`SecretValue::expose`]; it
/// never appears in `Debug` output.
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    /// The value, for the one place that delivers it (an environment file in a slot).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Wraps a value (tests and fakes).
    pub fn new(value: &str) -> SecretValue {
        SecretValue(SecretString::from(value.to_string()))
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

/// Decrypted secrets by `(environment, name)`: what the apply engine renders environment
/// files from. `Debug` shows names only.
#[derive(Clone, Default)]
pub struct SecretValues(std::collections::BTreeMap<(String, String), SecretValue>);

impl SecretValues {
    /// Adds a value.
    pub fn insert(&mut self, env: &str, name: &str, value: SecretValue) {
        self.0.insert((env.to_string(), name.to_string()), value);
    }
    /// The value of secret `name` of `env`.
    pub fn get(&self, env: &str, name: &str) -> Option<&str> {
        self.0.get(&(env.to_string(), name.to_string())).map(SecretValue::expose)
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// One private key of the host.
enum Key {
    Ssh(age::ssh::Identity),
    Age(age::x25519::Identity),
}

/// The host's private keys, with a public description of each.
pub struct Identities {
    keys: Vec<(Key, String)>,
    unusable: Vec<String>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|(_, d)| d)).finish()
    }
}

impl Identities {
    /// No keys: nothing decrypts.
    pub fn none() -> Identities {
        Identities { keys: Vec::new(), unusable: Vec::new() }
    }

    /// Records a key file that could not be used (unreadable, not a key), so a refusal
    /// says why this host has fewer keys than configured.
    pub fn note_unusable(&mut self, why: String) {
        self.unusable.push(why);
    }

    /// Adds the keys of one file: an unencrypted OpenSSH private key (the host key), or
    /// age identity lines (`AGE-SECRET-KEY-1…`, `#` comments allowed). `name` (its path)
    /// is used in messages.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<(), SecretError> {
        let bad =
            |why: &str| SecretError::Identity { name: name.to_string(), why: why.to_string() };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not a text key file"))?;
        if text.trim_start().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----") {
            let id = age::ssh::Identity::from_buffer(text.as_bytes(), Some(name.to_string()))
                .map_err(|e| bad(&format!("not a usable OpenSSH private key: {e}")))?;
            match &id {
                age::ssh::Identity::Unencrypted(_) => {}
                age::ssh::Identity::Encrypted(_) => {
                    return Err(bad(
                        "the key is passphrase-protected; the agent needs an unencrypted host key",
                    ));
                }
                age::ssh::Identity::Unsupported(_) => {
                    return Err(bad("unsupported SSH key type (use ssh-ed25519 or ssh-rsa)"));
                }
            }
            let public = age::ssh::Recipient::try_from(id.clone())
                .map_err(|e| bad(&format!("no public key: {e:?}")))?;
            let described = describe_ssh_recipient(&public.to_string());
            self.keys.push((Key::Ssh(id), described));
            return Ok(());
        }
        let mut found = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let id = age::x25519::Identity::from_str(line)
                .map_err(|_| bad("neither an OpenSSH private key nor age identity lines"))?;
            let public = id.to_public().to_string();
            self.keys.push((Key::Age(id), format!("age key {public}")));
            found += 1;
        }
        if found == 0 {
            return Err(bad("no key in the file"));
        }
        Ok(())
    }

    /// The keys, by public description.
    pub fn describe(&self) -> String {
        let mut out = if self.keys.is_empty() {
            "no key".to_string()
        } else {
            let list: Vec<&str> = self.keys.iter().map(|(_, d)| d.as_str()).collect();
            list.join(", ")
        };
        if !self.unusable.is_empty() {
            out.push_str(&format!(" (unusable: {})", self.unusable.join("; ")));
        }
        out
    }
}

/// `ssh-ed25519 SHA256:… (tag …)` for an SSH public key line.
fn describe_ssh_recipient(line: &str) -> String {
    let mut parts = line.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    match parts.next().and_then(|b| STANDARD.decode(b).ok()) {
        Some(wire) => {
            let (fp, tag) = ssh_fingerprint(&wire);
            format!("{kind} {fp} (tag {tag})")
        }
        None => kind.to_string(),
    }
}

/// Opens `ct` with the host's keys, in memory.
pub fn decrypt(ct: &Ciphertext, ids: &Identities) -> Result<SecretValue, SecretError> {
    let not_for_us = || SecretError::NotForThisHost { to: ct.recipients(), have: ids.describe() };
    if ids.keys.is_empty() {
        return Err(not_for_us());
    }
    let decryptor = age::Decryptor::new(&ct.binary[..])
        .map_err(|e| SecretError::Malformed { why: e.to_string() })?;
    let boxed: Vec<&dyn age::Identity> = ids
        .keys
        .iter()
        .map(|(k, _)| match k {
            Key::Ssh(i) => i as &dyn age::Identity,
            Key::Age(i) => i as &dyn age::Identity,
        })
        .collect();
    let mut reader = match decryptor.decrypt(boxed.into_iter()) {
        Ok(r) => r,
        Err(age::DecryptError::NoMatchingKeys) => return Err(not_for_us()),
        Err(e) => return Err(SecretError::Decrypt(e.to_string())),
    };
    let mut out = Vec::new();
    reader
        .by_ref()
        .take(MAX_CIPHERTEXT_BYTES as u64)
        .read_to_end(&mut out)
        .map_err(|e| SecretError::Decrypt(e.to_string()))?;
    let text = String::from_utf8(out).map_err(|_| SecretError::NotText)?;
    Ok(SecretValue(SecretString::from(text)))
}

/// A public key to encrypt to.
pub enum Recipient {
    /// An SSH public key (`ssh-ed25519 AAAA… [comment]`).
    Ssh(age::ssh::Recipient),
    /// A native age key (`age1…`).
    Age(age::x25519::Recipient),
}

impl Recipient {
    /// Parses one public key line.
    pub fn parse(s: &str) -> Result<Recipient, SecretError> {
        let s = s.trim();
        // A private key given by mistake (an age identity file, an SSH private key) is
        // never echoed: it opens every secret encrypted to its host.
        if s.starts_with("AGE-SECRET-KEY-") || s.starts_with("-----BEGIN") {
            return Err(SecretError::Recipient {
                recipient: "(a private key, not shown)".to_string(),
                why: "this is a private key; give the matching public key".to_string(),
            });
        }
        let bad =
            |why: String| SecretError::Recipient { recipient: s.chars().take(80).collect(), why };
        if s.starts_with("age1") {
            return age::x25519::Recipient::from_str(s)
                .map(Recipient::Age)
                .map_err(|e| bad(e.to_string()));
        }
        // `ssh-ed25519 BASE64 comment`: the comment is not part of the key.
        let key: Vec<&str> = s.split_whitespace().take(2).collect();
        age::ssh::Recipient::from_str(&key.join(" "))
            .map(Recipient::Ssh)
            .map_err(|e| bad(format!("{e:?}")))
    }

    /// `ssh-ed25519 SHA256:… (tag …)` or `age key age1…`.
    pub fn describe(&self) -> String {
        match self {
            Recipient::Ssh(r) => describe_ssh_recipient(&r.to_string()),
            Recipient::Age(r) => format!("age key {r}"),
        }
    }
}

/// Encrypts `plaintext` to every recipient, as armored age text.
pub fn encrypt(plaintext: &[u8], to: &[Recipient]) -> Result<String, SecretError> {
    if to.is_empty() {
        return Err(SecretError::Encrypt("no recipient given (--to)".to_string()));
    }
    let list: Vec<&dyn age::Recipient> = to
        .iter()
        .map(|r| match r {
            Recipient::Ssh(r) => r as &dyn age::Recipient,
            Recipient::Age(r) => r as &dyn age::Recipient,
        })
        .collect();
    let enc = age::Encryptor::with_recipients(list.into_iter())
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| SecretError::Encrypt(e.to_string()))?;
    let mut w = enc.wrap_output(armor).map_err(|e| SecretError::Encrypt(e.to_string()))?;
    w.write_all(plaintext).map_err(|e| SecretError::Encrypt(e.to_string()))?;
    let armor = w.finish().map_err(|e| SecretError::Encrypt(e.to_string()))?;
    armor.finish().map_err(|e| SecretError::Encrypt(e.to_string()))?;
    String::from_utf8(out).map_err(|e| SecretError::Encrypt(e.to_string()))
}

/// The recipients of an age file, for `veza-agent secret recipients`: one line each,
/// with this host's (or a given key's) match marked by the caller.
pub fn tag_of(recipient: &Recipient) -> Option<String> {
    match recipient {
        Recipient::Ssh(r) => {
            let line = r.to_string();
            let wire = line.split_whitespace().nth(1).and_then(|b| STANDARD.decode(b).ok())?;
            Some(ssh_fingerprint(&wire).1)
        }
        Recipient::Age(_) => None,
    }
}

#[cfg(test)]
mod tests;
