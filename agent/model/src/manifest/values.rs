//! Manifest values with a syntax of their own (durations, releases, SHA-256 digests):
//! newtypes checked while deserializing, with their JSON Schema.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A duration such as `500ms`, `5s`, `10m`, `4h`, `8d` or `2w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct DurationSpec(std::time::Duration);

impl DurationSpec {
    /// The duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl TryFrom<String> for DurationSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let bad = || {
            format!(
                "invalid duration `{s}`: expected a number and a unit (ms, s, m, h, d, w), e.g. `5s` or `8d`"
            )
        };
        if num.is_empty() || num.len() > 12 {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let millis = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            "w" => n.checked_mul(604_800_000),
            _ => return Err(bad()),
        };
        millis.map(|ms| DurationSpec(std::time::Duration::from_millis(ms))).ok_or_else(bad)
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        for (unit, size) in
            [("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)]
        {
            if ms != 0 && ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A release: the 40-hex commit id of the app's source, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub struct Release(String);

impl Release {
    /// The 40 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The first 10 characters, as shown to humans.
    pub fn short(&self) -> &str {
        &self.0[..10]
    }
}

/// The first `n` characters of an id read back from the host or the state (a release
/// mark, a commit), as shown to humans. Unlike [`Release::short`], the id is not known to
/// be hex (anyone with access to Incus can set a mark): never cuts inside a character.
pub fn short_id(id: &str, n: usize) -> &str {
    id.char_indices().nth(n).map_or(id, |(end, _)| &id[..end])
}

/// `s` when it is `len` lowercase hex digits (a commit id, a digest), else `s` back.
fn lower_hex(s: String, len: usize) -> Result<String, String> {
    if s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(s)
    } else {
        Err(s)
    }
}

impl TryFrom<String> for Release {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        lower_hex(s, 40).map(Release).map_err(|s| {
            let n = s.chars().count();
            format!(
                "invalid release `{s}`: expected a full 40-character lowercase hex commit id (got {n} characters)"
            )
        })
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256 digest as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        lower_hex(s, 64)
            .map(Sha256Hex)
            .map_err(|s| format!("invalid sha256 `{s}`: expected 64 lowercase hex characters"))
    }
}

/// JSON Schema of a string newtype: a named definition, with a pattern when the type has
/// one (the manifest's newtypes and the host configuration's `ByteSize`).
macro_rules! string_schema {
    ($ty:ty, $name:literal, $(pattern: $pattern:literal,)? $description:literal) => {
        impl schemars::JsonSchema for $ty {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                let mut schema = schemars::json_schema!({ "type": "string" });
                $(schema.insert("pattern".into(), $pattern.into());)?
                schema.insert("description".into(), $description.into());
                schema
            }
        }
    };
}
pub(crate) use string_schema;

string_schema!(
    DurationSpec,
    "Duration",
    pattern: "^[0-9]+(ms|s|m|h|d|w)$",
    "A duration: a number and a unit (ms, s, m, h, d, w), e.g. `5s` or `8d`."
);
string_schema!(
    Release,
    "Release",
    pattern: "^[0-9a-f]{40}$",
    "A release: a full 40-hex commit id."
);
string_schema!(
    Sha256Hex,
    "Sha256",
    pattern: "^[0-9a-f]{64}$",
    "A SHA-256 digest in 64 lowercase hex characters."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_id_is_its_first_characters_never_part_of_one() {
        // (id, n, shown)
        let table = [
            ("0123456789abcdef", 10, "0123456789"),
            ("0123", 10, "0123"),
            ("", 10, ""),
            ("ééééééééééé", 10, "éééééééééé"),
            ("abcdefghié", 9, "abcdefghi"),
            ("abcdefghié", 10, "abcdefghié"),
        ];
        for (id, n, shown) in table {
            assert_eq!(short_id(id, n), shown, "{id} {n}");
        }
    }
}
