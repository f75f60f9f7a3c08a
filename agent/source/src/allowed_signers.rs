//! The OpenSSH `allowed_signers` file (ssh-keygen(1), ALLOWED SIGNERS), the same file
//! people pass to `git -c gpg.ssh.allowedSignersFile=… verify-commit`.
//!
//! Line format: `principals [options] keytype base64-key [comment]`; `#` comments and
//! blank lines are skipped. Supported:
//! * principals: a comma-separated pattern list (`*`, `?`, `!negation`), optionally quoted;
//! * options (comma-separated, keywords case-insensitive, values double-quoted as
//!   OpenSSH requires): `namespaces="pattern-list"`, `valid-after="TIME"`,
//!   `valid-before="TIME"` with TIME = `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`.
//!   **Deviation from OpenSSH:** a TIME without `Z` is read as UTC, not local time,
//!   so the verdict does not depend on the host's time zone;
//! * key type `ssh-ed25519` only.
//!
//! Rejected with an error naming the line: `cert-authority` (certificates are not
//! supported), other key types, unknown options, duplicate options, unquoted values,
//! `valid-before` not after `valid-after`.

use std::path::Path;

use crate::error::AllowedSignersError;
use crate::sshsig::PublicKey;
use crate::time::parse_openssh_time;

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the file.
    pub line: usize,
    /// The principals field as written (a pattern list), e.g. `alice@example.com` or `*@example.com`.
    pub principals: String,
    /// `namespaces=` pattern list, if restricted.
    pub namespaces: Option<String>,
    /// `valid-after=` as Unix seconds.
    pub valid_after: Option<i64>,
    /// `valid-before=` as Unix seconds.
    pub valid_before: Option<i64>,
    /// The signer's key.
    pub key: PublicKey,
}

/// Whether a key line is valid at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Inside the window (boundaries inclusive, as OpenSSH).
    Valid,
    /// `valid-before` lies before the time.
    Expired { valid_before: i64 },
    /// `valid-after` lies after the time.
    NotYetValid { valid_after: i64 },
}

impl Entry {
    /// Does `identity` match the principals pattern list (OpenSSH `match_pattern_list`, case-sensitive)?
    pub fn matches_principal(&self, identity: &str) -> bool {
        match_pattern_list(identity, &self.principals)
    }

    /// May this key sign for `namespace`? (No `namespaces=` option means any namespace.)
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.as_deref().is_none_or(|list| match_pattern_list(namespace, list))
    }

    /// Validity window check at Unix time `t`.
    pub fn validity_at(&self, t: i64) -> Validity {
        if let Some(after) = self.valid_after
            && t < after
        {
            return Validity::NotYetValid { valid_after: after };
        }
        if let Some(before) = self.valid_before
            && t > before
        {
            return Validity::Expired { valid_before: before };
        }
        Validity::Valid
    }
}

/// A parsed allowed_signers file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedSigners {
    entries: Vec<Entry>,
}

impl AllowedSigners {
    /// Parses the file content. Fails on the first bad line, naming it.
    pub fn parse(text: &str) -> Result<AllowedSigners, AllowedSignersError> {
        let mut entries = Vec::new();
        for (idx, raw) in text.split('\n').enumerate() {
            if let Some(entry) = parse_line(idx + 1, raw)? {
                entries.push(entry);
            }
        }
        Ok(AllowedSigners { entries })
    }

    /// Reads and parses a file.
    pub fn from_file(path: &Path) -> Result<AllowedSigners, AllowedSignersError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| AllowedSignersError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text)
    }

    /// All lines, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The lines whose key is exactly `key`, in file order.
    pub fn entries_for_key<'a>(&'a self, key: &'a PublicKey) -> impl Iterator<Item = &'a Entry> {
        self.entries.iter().filter(move |e| &e.key == key)
    }

    /// Whether the file has no key lines at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_line(line_no: usize, raw: &str) -> Result<Option<Entry>, AllowedSignersError> {
    let syntax = |reason: String| AllowedSignersError::Syntax { line: line_no, reason };
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    let rest = line.trim_start_matches([' ', '\t']);
    if rest.is_empty() || rest.starts_with('#') {
        return Ok(None);
    }
    let (principals, rest) = take_field(rest).map_err(syntax)?;
    if principals.is_empty() {
        return Err(syntax("empty principals field".into()));
    }
    let (mut token, mut rest) = take_field(rest).map_err(syntax)?;
    if token.is_empty() {
        return Err(syntax(format!("missing key after principals `{principals}`")));
    }
    let mut opts = Options::default();
    if looks_like_options(&token) {
        opts = parse_options(line_no, &token)?;
        (token, rest) = take_field(rest).map_err(syntax)?;
        if token.is_empty() {
            return Err(syntax("missing key after the options".into()));
        }
    }
    let key_type = token;
    let (b64, _comment) = take_field(rest).map_err(syntax)?;
    if key_type != crate::sshsig::ED25519 {
        return Err(AllowedSignersError::UnsupportedKeyType { line: line_no, key_type });
    }
    if b64.is_empty() {
        return Err(syntax("missing base64 key after `ssh-ed25519`".into()));
    }
    let key = PublicKey::from_type_and_base64(&key_type, &b64)
        .map_err(|e| syntax(format!("invalid key: {e}")))?;
    Ok(Some(Entry {
        line: line_no,
        principals,
        namespaces: opts.namespaces,
        valid_after: opts.valid_after,
        valid_before: opts.valid_before,
        key,
    }))
}

/// Splits off one whitespace-delimited field; a field starting with `"` runs to the closing quote.
/// Returns (field without surrounding quotes, rest with leading whitespace removed).
fn take_field(s: &str) -> Result<(String, &str), String> {
    let s = s.trim_start_matches([' ', '\t']);
    if let Some(quoted) = s.strip_prefix('"') {
        let end = quoted.find('"').ok_or("unterminated quoted principals field")?;
        let after = &quoted[end + 1..];
        if !(after.is_empty() || after.starts_with([' ', '\t'])) {
            return Err("text directly after a closing quote".into());
        }
        return Ok((quoted[..end].to_string(), after.trim_start_matches([' ', '\t'])));
    }
    // Options may contain quoted values with spaces: scan honoring quotes.
    let mut in_quotes = false;
    let mut end = s.len();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes && bytes.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => in_quotes = !in_quotes,
            b' ' | b'\t' if !in_quotes => {
                end = i;
                break;
            }
            _ => {}
        }
        i += 1;
    }
    if in_quotes {
        return Err("unterminated double quote".into());
    }
    Ok((s[..end].to_string(), s[end..].trim_start_matches([' ', '\t'])))
}

fn looks_like_options(token: &str) -> bool {
    token.contains(['=', ',', '"']) || token.eq_ignore_ascii_case("cert-authority")
}

#[derive(Default)]
struct Options {
    namespaces: Option<String>,
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

fn parse_options(line: usize, text: &str) -> Result<Options, AllowedSignersError> {
    let syntax = |reason: String| AllowedSignersError::Syntax { line, reason };
    let mut opts = Options::default();
    let mut rest = text;
    loop {
        let (name, after_name) = match rest.find(['=', ',']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if name.eq_ignore_ascii_case("cert-authority") {
            return Err(AllowedSignersError::CertAuthority { line });
        }
        let Some(value_text) = after_name.strip_prefix('=') else {
            return Err(syntax(format!("unknown option `{name}`")));
        };
        let (value, after_value) = dequote(value_text).ok_or_else(|| {
            syntax(format!("value of option `{name}` must be in double quotes, e.g. {name}=\"…\""))
        })?;
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "namespaces" => {
                if opts.namespaces.replace(value).is_some() {
                    return Err(syntax("`namespaces` given twice".into()));
                }
            }
            "valid-after" | "valid-before" => {
                let t = parse_openssh_time(&value).ok_or_else(|| AllowedSignersError::BadTime {
                    line,
                    option: lower.clone(),
                    value: value.clone(),
                })?;
                let slot = if lower == "valid-after" {
                    &mut opts.valid_after
                } else {
                    &mut opts.valid_before
                };
                if slot.replace(t).is_some() {
                    return Err(syntax(format!("`{lower}` given twice")));
                }
            }
            _ => return Err(syntax(format!("unknown option `{name}`"))),
        }
        if after_value.is_empty() {
            break;
        }
        rest = after_value
            .strip_prefix(',')
            .ok_or_else(|| syntax(format!("expected `,` after the value of `{name}`")))?;
        if rest.is_empty() {
            return Err(syntax("options end with a comma".into()));
        }
    }
    if let (Some(after), Some(before)) = (opts.valid_after, opts.valid_before)
        && before <= after
    {
        return Err(syntax("`valid-before` is not later than `valid-after`".into()));
    }
    Ok(opts)
}

/// `"value"` → (value, rest after the closing quote); `\"` inside is an escaped quote.
fn dequote(s: &str) -> Option<(String, &str)> {
    let inner = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &inner[i + 1..])),
            '\\' if inner[i + 1..].starts_with('"') => {
                chars.next();
                out.push('"');
            }
            c => out.push(c),
        }
    }
    None
}

/// OpenSSH `match_pattern`: `*` matches any run (including empty), `?` exactly one character.
/// Linear-time backtracking on the last `*`.
pub fn match_pattern(s: &str, pattern: &str) -> bool {
    let (s, p): (Vec<char>, Vec<char>) = (s.chars().collect(), pattern.chars().collect());
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == s[si])) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// OpenSSH `match_pattern_list`: comma-separated patterns, `!` negates. True when some
/// positive pattern matches and no negated one does.
pub fn match_pattern_list(s: &str, list: &str) -> bool {
    let mut positive = false;
    for pat in list.split(',') {
        let (negated, pat) = match pat.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pat),
        };
        if match_pattern(s, pat) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::vector_str;

    const ALICE: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMuVbl0/O+Bz1sPsWsEavpbn05rHtSaLS0Z9SDuMoZVS";

    #[test]
    fn shipped_file_parses() {
        let s = AllowedSigners::parse(&vector_str("allowed_signers")).unwrap();
        let names: Vec<_> = s.entries().iter().map(|e| e.principals.as_str()).collect();
        assert_eq!(names, ["alice@example.com", "bob@example.com", "forgejo@forge.example"]);
        assert!(s.entries().iter().all(|e| e.namespaces.as_deref() == Some("git")));
    }

    #[test]
    fn variants_parse() {
        let exp = AllowedSigners::parse(&vector_str("allowed_signers.as_expired")).unwrap();
        assert_eq!(exp.entries()[0].valid_before, Some(1_703_980_800));
        let win = AllowedSigners::parse(&vector_str("allowed_signers.as_window")).unwrap();
        assert_eq!(win.entries()[0].valid_after, Some(1_701_388_800));
        assert_eq!(win.entries()[0].validity_at(1_704_067_200), Validity::Valid);
        assert_eq!(
            win.entries()[0].validity_at(1_800_000_000),
            Validity::Expired { valid_before: 1_704_153_600 }
        );
        let ns = AllowedSigners::parse(&vector_str("allowed_signers.as_wrongns")).unwrap();
        assert!(!ns.entries()[0].allows_namespace("git"));
        assert!(ns.entries()[0].allows_namespace("file"));
        let wild = AllowedSigners::parse(&vector_str("allowed_signers.as_wildcard")).unwrap();
        assert!(wild.entries()[0].matches_principal("alice@example.com"));
        assert!(!wild.entries()[0].matches_principal("alice@evil.example"));
        assert!(wild.entries()[0].allows_namespace("git"));
    }

    #[test]
    fn comments_blank_lines_quotes_and_comments_after_key() {
        let text = format!(
            "# trust root\n\n   \t\n\"alice@example.com,ops@example.com\" NAMESPACES=\"git,file\" {ALICE} alice's laptop\r\n"
        );
        let s = AllowedSigners::parse(&text).unwrap();
        assert_eq!(s.entries().len(), 1);
        let e = &s.entries()[0];
        assert_eq!(e.line, 4);
        assert_eq!(e.principals, "alice@example.com,ops@example.com");
        assert!(e.matches_principal("ops@example.com"));
        assert!(e.allows_namespace("file"));
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, &str)] = &[
            ("alice@example.com", "missing key"),
            ("alice@example.com namespaces=\"git\"", "missing key"),
            ("alice@example.com namespaces=git KEY", "double quotes"),
            ("alice@example.com foo=\"x\" KEY", "unknown option `foo`"),
            ("alice@example.com namespaces=\"a\",namespaces=\"b\" KEY", "twice"),
            (
                "alice@example.com valid-after=\"20240102\",valid-before=\"20240101\" KEY",
                "not later",
            ),
            ("alice@example.com namespaces=\"git\", KEY", "comma"),
            ("alice@example.com ssh-ed25519 !!!", "invalid key"),
            ("alice@example.com ssh-ed25519", "missing base64"),
            ("\"alice@example.com ssh-ed25519 AAAA", "unterminated"),
        ];
        for (line, want) in cases {
            let text = format!("# c\n{}\n", line.replace("KEY", ALICE));
            let err = AllowedSigners::parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("allowed_signers line 2: "), "{line}: {err}");
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn cert_authority_and_other_key_types_are_rejected_clearly() {
        let err =
            AllowedSigners::parse(&format!("*@example.com cert-authority {ALICE}")).unwrap_err();
        assert!(matches!(err, AllowedSignersError::CertAuthority { line: 1 }), "{err}");
        assert!(err.to_string().contains("not supported"));
        let err = AllowedSigners::parse(&format!(
            "*@example.com namespaces=\"git\",Cert-Authority {ALICE}"
        ))
        .unwrap_err();
        assert!(matches!(err, AllowedSignersError::CertAuthority { line: 1 }), "{err}");
        let err = AllowedSigners::parse("\nbob ssh-rsa AAAAB3NzaC1yc2E=").unwrap_err();
        assert!(
            matches!(err, AllowedSignersError::UnsupportedKeyType { line: 2, ref key_type } if key_type == "ssh-rsa"),
            "{err}"
        );
    }

    #[test]
    fn bad_time_is_reported() {
        let err =
            AllowedSigners::parse(&format!("a valid-before=\"2024013\" {ALICE}")).unwrap_err();
        assert!(matches!(err, AllowedSignersError::BadTime { line: 1, .. }), "{err}");
    }

    #[test]
    fn patterns() {
        assert!(match_pattern("alice@example.com", "*@example.com"));
        assert!(match_pattern("a", "?"));
        assert!(!match_pattern("ab", "?"));
        assert!(match_pattern("", "*"));
        assert!(match_pattern("abcabd", "*abd"));
        assert!(match_pattern("x*y", "x*y"));
        assert!(!match_pattern("Alice@example.com", "alice@example.com"));
        assert!(match_pattern_list("bob@example.com", "alice@example.com,*@example.com"));
        assert!(!match_pattern_list("mallory@example.com", "*@example.com,!mallory@*"));
        assert!(!match_pattern_list("bob@example.com", "!mallory@*"));
        assert!(match_pattern_list("git", "git,file"));
        assert!(!match_pattern_list("gitx", "git,file"));
        // Pathological patterns stay fast.
        let s = "a".repeat(2000);
        assert!(!match_pattern(&s, &format!("{}b", "*a".repeat(200))));
    }
}
