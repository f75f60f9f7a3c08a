//! `ByteSize`, the host configuration's sizes: a number and a binary unit (`512MiB`),
//! parsed strictly and shown in the largest unit that divides them.

use serde::Deserialize;

/// A size such as `4096B`, `64KiB`, `512MiB` or `2GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ByteSize(u64);

const BYTE_UNITS: [(&str, u64); 5] =
    [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)];

impl ByteSize {
    /// A size of `bytes` bytes.
    pub fn from_bytes(bytes: u64) -> ByteSize {
        ByteSize(bytes)
    }
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl TryFrom<String> for ByteSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size `{s}`: expected a number and a unit (B, KiB, MiB, GiB, TiB), e.g. `512MiB`"
            )
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = if num.is_empty() || num.len() > 15 { None } else { num.parse().ok() }
            .ok_or_else(bad)?;
        let (_, size) = BYTE_UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
        n.checked_mul(*size).map(ByteSize).ok_or_else(bad)
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (unit, size) = BYTE_UNITS
            .iter()
            .find(|(_, size)| self.0 != 0 && self.0.is_multiple_of(*size))
            .unwrap_or(&("B", 1));
        write!(f, "{}{unit}", self.0 / size)
    }
}

crate::manifest::string_schema!(
    ByteSize,
    "ByteSize",
    pattern: "^[0-9]+(B|KiB|MiB|GiB|TiB)$",
    "A size: a number and a unit (B, KiB, MiB, GiB, TiB), e.g. `512MiB`."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_show_with_their_unit() {
        for (text, shown) in
            [("2GiB", "2GiB"), ("1536MiB", "1536MiB"), ("1024KiB", "1MiB"), ("7B", "7B")]
        {
            assert_eq!(ByteSize::try_from(text.to_string()).unwrap().to_string(), shown);
        }
        for bad in ["", "12", "MiB", "1.5GiB", "1gb", "99999999999999TiB"] {
            assert!(ByteSize::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
