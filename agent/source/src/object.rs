//! Splitting raw git commit and tag objects into (signature armor, signed payload)
//! exactly as git does, with the strictness the agent needs on top.
//!
//! Commits (git `commit.c: parse_buffer_signed_by_header`): the signature is the value
//! of the `gpgsig` header plus its continuation lines (leading space removed); the
//! payload is every other byte, verbatim, including other headers' continuation lines
//! (a `mergetag` header with its embedded tag stays in the payload) and the message.
//! Where git would concatenate several `gpgsig` headers or silently drop other
//! `gpgsig*` headers (e.g. `gpgsig-sha256`) from the payload, we reject.
//!
//! Tags (git `gpg-interface.c: parse_signed_buffer`): the signature starts at the last
//! line that begins with a known signature marker and runs to the end; the payload is
//! everything before it. We reject more than one marker line and any `gpgsig*` header.

use crate::error::{ObjectError, ObjectKind};

/// The header name of the SSH/PGP signature on commits in SHA-1 repositories.
pub const SIGNATURE_HEADER: &[u8] = b"gpgsig";

/// Line prefixes git recognises as the start of an appended signature, with their format.
const SIGNATURE_MARKERS: &[(&[u8], &str)] = &[
    (b"-----BEGIN SSH SIGNATURE-----", "SSH"),
    (b"-----BEGIN PGP SIGNATURE-----", "OpenPGP"),
    (b"-----BEGIN PGP MESSAGE-----", "OpenPGP"),
    (b"-----BEGIN SIGNED MESSAGE-----", "X.509"),
];

/// A signed object split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The armored SSH signature (continuation spaces removed), as `ssh-keygen -Y verify -s` takes it.
    pub armor: Vec<u8>,
    /// The exact bytes that were signed.
    pub payload: Vec<u8>,
}

/// Iterates `(start, line)` over `buf`, each line including its LF (the last may lack one).
fn lines(buf: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= buf.len() {
            return None;
        }
        let start = pos;
        let end = buf[pos..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| pos + i + 1);
        pos = end;
        Some((start, &buf[start..end]))
    })
}

/// The header name of a header line: bytes up to the first space or LF.
fn header_name(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ' || b == b'\n').unwrap_or(line.len());
    &line[..end]
}

fn check_format(kind: ObjectKind, armor: &[u8]) -> Result<(), ObjectError> {
    for (marker, format) in SIGNATURE_MARKERS {
        if armor.starts_with(marker) {
            if *format == "SSH" {
                return Ok(());
            }
            return Err(ObjectError::UnsupportedSignatureFormat {
                kind,
                format: (*format).to_string(),
            });
        }
    }
    Err(ObjectError::Malformed {
        kind,
        reason: "signature does not start with `-----BEGIN SSH SIGNATURE-----`".to_string(),
    })
}

/// `Malformed` unless `raw` starts with the `header` line every object of `kind` starts
/// with (`article` for the message: "a `tree` header").
fn starts_with_header(
    raw: &[u8],
    kind: ObjectKind,
    header: &str,
    article: &str,
) -> Result<(), ObjectError> {
    if raw.starts_with(header.as_bytes()) && raw.get(header.len()) == Some(&b' ') {
        return Ok(());
    }
    Err(ObjectError::Malformed {
        kind,
        reason: format!("does not start with {article} `{header}` header"),
    })
}

/// Splits a raw commit object (the bytes of `git cat-file commit <id>`).
pub fn split_commit(raw: &[u8]) -> Result<Signed, ObjectError> {
    let kind = ObjectKind::Commit;
    starts_with_header(raw, kind, "tree", "a")?;
    let mut payload = Vec::with_capacity(raw.len());
    let mut armor = Vec::new();
    let mut count = 0usize;
    let mut in_signature = false;
    for (start, line) in lines(raw) {
        if line == b"\n" {
            // End of headers: the blank line and the message are payload, verbatim.
            payload.extend_from_slice(&raw[start..]);
            break;
        }
        if line[0] == b' ' {
            if in_signature {
                armor.extend_from_slice(&line[1..]);
            } else {
                payload.extend_from_slice(line);
            }
            continue;
        }
        let name = header_name(line);
        if name == SIGNATURE_HEADER {
            if line.get(name.len()) != Some(&b' ') {
                return Err(ObjectError::Malformed {
                    kind,
                    reason: "empty `gpgsig` header".to_string(),
                });
            }
            count += 1;
            armor.extend_from_slice(&line[name.len() + 1..]);
            in_signature = true;
        } else if name.starts_with(SIGNATURE_HEADER) {
            return Err(ObjectError::ExtraSignatureHeader {
                kind,
                header: String::from_utf8_lossy(name).into_owned(),
            });
        } else {
            payload.extend_from_slice(line);
            in_signature = false;
        }
    }
    match count {
        0 => Err(ObjectError::Unsigned { kind }),
        1 => {
            check_format(kind, &armor)?;
            Ok(Signed { armor, payload })
        }
        n => Err(ObjectError::MultipleSignatures { kind, count: n }),
    }
}

/// Splits a raw annotated tag object (the bytes of `git cat-file tag <id>`).
pub fn split_tag(raw: &[u8]) -> Result<Signed, ObjectError> {
    let kind = ObjectKind::Tag;
    starts_with_header(raw, kind, "object", "an")?;
    let mut in_headers = true;
    let mut markers = Vec::new();
    for (start, line) in lines(raw) {
        if in_headers {
            if line == b"\n" {
                in_headers = false;
                continue;
            }
            let name = header_name(line);
            if line[0] != b' ' && name.starts_with(SIGNATURE_HEADER) {
                return Err(ObjectError::ExtraSignatureHeader {
                    kind,
                    header: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        if SIGNATURE_MARKERS.iter().any(|(m, _)| line.starts_with(m)) {
            markers.push(start);
        }
    }
    match markers.as_slice() {
        [] => Err(ObjectError::Unsigned { kind }),
        [start] => {
            let armor = raw[*start..].to_vec();
            check_format(kind, &armor)?;
            Ok(Signed { armor, payload: raw[..*start].to_vec() })
        }
        many => Err(ObjectError::MultipleSignatures { kind, count: many.len() }),
    }
}

/// The header block of an object (up to the first blank line), as (name, value) pairs with
/// continuation lines folded in (LF-joined).
fn headers(raw: &[u8]) -> Vec<(&[u8], Vec<u8>)> {
    let mut out: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for (_, line) in lines(raw) {
        if line == b"\n" {
            break;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        if let Some(cont) = body.strip_prefix(b" ") {
            if let Some((_, v)) = out.last_mut() {
                v.push(b'\n');
                v.extend_from_slice(cont);
            }
            continue;
        }
        let name = header_name(body);
        let value = body.get(name.len() + 1..).unwrap_or_default().to_vec();
        out.push((name, value));
    }
    out
}

/// The message (after the first blank line) of an object, if any.
fn message(raw: &[u8]) -> &[u8] {
    for (start, line) in lines(raw) {
        if line == b"\n" {
            return &raw[start + 1..];
        }
    }
    &[]
}

/// Unix seconds of an identity line `Name <email> 1704067200 +0000`.
fn identity_time(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let after_email = &text[text.rfind('>')? + 1..];
    let mut fields = after_email.split_ascii_whitespace();
    fields.next()?.parse().ok()
}

/// The committer timestamp of a raw commit (what git passes to ssh-keygen as `-Overify-time`).
pub fn committer_time(raw: &[u8]) -> Option<i64> {
    headers(raw).into_iter().find(|(n, _)| *n == b"committer").and_then(|(_, v)| identity_time(&v))
}

/// The fields of an annotated tag that approvals depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// Hex id of the tagged object.
    pub object: String,
    /// Type of the tagged object (`commit` for approvals).
    pub object_type: String,
    /// The tag name from the `tag` header.
    pub name: String,
    /// Tagger timestamp, if there is a tagger.
    pub tagger_time: Option<i64>,
    /// The message (for a signed tag: without the signature when taken from the payload).
    pub message: Vec<u8>,
}

/// Parses the headers and message of a tag (raw object or its signed payload).
pub fn parse_tag(raw: &[u8]) -> Result<TagInfo, ObjectError> {
    let malformed =
        |reason: &str| ObjectError::Malformed { kind: ObjectKind::Tag, reason: reason.to_string() };
    let hs = headers(raw);
    let get = |name: &[u8]| {
        hs.iter().find(|(n, _)| *n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let object = get(b"object").ok_or_else(|| malformed("missing `object` header"))?;
    if object.len() != 40 || !object.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("`object` is not a 40-hex object id"));
    }
    Ok(TagInfo {
        object: object.to_ascii_lowercase(),
        object_type: get(b"type").ok_or_else(|| malformed("missing `type` header"))?,
        name: get(b"tag").ok_or_else(|| malformed("missing `tag` header"))?,
        tagger_time: hs.iter().find(|(n, _)| *n == b"tagger").and_then(|(_, v)| identity_time(v)),
        message: message(raw).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::vector;

    #[test]
    fn vectors_split_exactly_like_git() {
        for name in [
            "commit1",
            "commit2",
            "commit1-sha256hash",
            "merge-forgejo",
            "merge-mergetag",
            "neg-tampered",
            "neg-untrusted-key",
            "neg-wrong-namespace",
        ] {
            let s = split_commit(&vector(&format!("{name}.raw"))).unwrap();
            assert_eq!(s.payload, vector(&format!("{name}.payload")), "{name} payload");
            assert_eq!(s.armor, vector(&format!("{name}.sig")), "{name} armor");
        }
        for name in ["tag-v1", "approval-tag-bob"] {
            let s = split_tag(&vector(&format!("{name}.raw"))).unwrap();
            assert_eq!(s.payload, vector(&format!("{name}.payload")), "{name} payload");
            assert_eq!(s.armor, vector(&format!("{name}.sig")), "{name} armor");
        }
    }

    #[test]
    fn an_object_without_its_first_header_is_malformed() {
        type Split = fn(&[u8]) -> Result<Signed, ObjectError>;
        let cases: [(Split, &[u8], &str); 4] = [
            (split_commit, b"parent 1\n\nmsg\n", "does not start with a `tree` header"),
            (split_commit, b"treetop 1\n\nmsg\n", "does not start with a `tree` header"),
            (split_tag, b"tree 1\n\nmsg\n", "does not start with an `object` header"),
            (split_tag, b"", "does not start with an `object` header"),
        ];
        for (split, raw, want) in cases {
            let err = split(raw).expect_err("malformed");
            assert!(
                matches!(&err, ObjectError::Malformed { reason, .. } if reason == want),
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn mergetag_continuations_stay_in_payload() {
        let s = split_commit(&vector("merge-mergetag.raw")).unwrap();
        let payload = String::from_utf8(s.payload).unwrap();
        assert!(payload.contains("mergetag object a5aee40"));
        assert!(payload.contains("\n \n side tag\n -----BEGIN SSH SIGNATURE-----\n"));
    }

    #[test]
    fn unsigned_multiple_and_extra_headers() {
        assert_eq!(
            split_commit(&vector("neg-unsigned.raw")),
            Err(ObjectError::Unsigned { kind: ObjectKind::Commit })
        );
        assert_eq!(
            split_commit(&vector("edge-extra-gpgsig-sha256.raw")),
            Err(ObjectError::ExtraSignatureHeader {
                kind: ObjectKind::Commit,
                header: "gpgsig-sha256".into()
            })
        );
        let raw = String::from_utf8(vector("commit1.raw")).unwrap();
        let sig_start = raw.find("gpgsig ").unwrap();
        let sig_end = raw.find("\n\n").unwrap() + 1;
        let doubled = format!("{}{}", &raw[..sig_end], &raw[sig_start..]);
        assert_eq!(
            split_commit(doubled.as_bytes()),
            Err(ObjectError::MultipleSignatures { kind: ObjectKind::Commit, count: 2 })
        );
        let pgp = raw.replace("BEGIN SSH SIGNATURE", "BEGIN PGP SIGNATURE");
        assert!(matches!(
            split_commit(pgp.as_bytes()),
            Err(ObjectError::UnsupportedSignatureFormat { .. })
        ));
        let tag = String::from_utf8(vector("tag-v1.raw")).unwrap();
        let two = format!("{tag}{}", &tag[tag.find("-----BEGIN").unwrap()..]);
        assert!(matches!(
            split_tag(two.as_bytes()),
            Err(ObjectError::MultipleSignatures { count: 2, .. })
        ));
        let unsigned = &tag[..tag.find("-----BEGIN").unwrap()];
        assert_eq!(
            split_tag(unsigned.as_bytes()),
            Err(ObjectError::Unsigned { kind: ObjectKind::Tag })
        );
    }

    #[test]
    fn gpgsig_in_message_is_payload() {
        let raw = b"tree 795f971d02072d4a2e3b6897d05e714dca7cf968\n\ngpgsig not a header\n";
        assert_eq!(split_commit(raw), Err(ObjectError::Unsigned { kind: ObjectKind::Commit }));
    }

    #[test]
    fn times_and_tag_fields() {
        assert_eq!(committer_time(&vector("commit1.raw")), Some(1_704_067_200));
        let info = parse_tag(&vector("approval-tag-bob.payload")).unwrap();
        assert_eq!(info.object, "060c31f62fd0dbff34cb38484a120f3b7a2f1040");
        assert_eq!(info.object_type, "commit");
        assert!(String::from_utf8_lossy(&info.message).contains("gitops-approve"));
        let v1 = parse_tag(&vector("tag-v1.payload")).unwrap();
        assert_eq!(v1.name, "v1");
        assert_eq!(v1.tagger_time, Some(1_704_240_000));
        assert_eq!(v1.message, b"release v1\n");
    }
}
