//! Calendar helpers without a clock: OpenSSH `valid-after`/`valid-before` timestamps
//! and UTC rendering of Unix seconds for messages.
//!
//! OpenSSH interprets timestamps without a `Z` suffix in the verifier's local time
//! zone. The agent runs on servers whose zone should not change the verdict, so
//! here **a timestamp without `Z` is UTC as well**. Write the `Z` to make that explicit.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses an OpenSSH absolute time: `YYYYMMDD[Z]` or `YYYYMMDDHHMM[SS][Z]`, as Unix seconds (UTC).
/// Returns `None` for anything else, including out-of-range fields.
pub fn parse_openssh_time(s: &str) -> Option<i64> {
    let digits = s.strip_suffix(['Z', 'z']).unwrap_or(s);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |r: std::ops::Range<usize>| digits.get(r).and_then(|f| f.parse::<i64>().ok());
    let (y, mo, d) = (field(0..4)?, field(4..6)?, field(6..8)?);
    let (h, mi, sec) = match digits.len() {
        8 => (0, 0, 0),
        12 => (field(8..10)?, field(10..12)?, 0),
        14 => (field(8..10)?, field(10..12)?, field(12..14)?),
        _ => return None,
    };
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Renders Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn fmt_unix(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs % 3600) / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_openssh_forms() {
        assert_eq!(parse_openssh_time("19700101"), Some(0));
        assert_eq!(parse_openssh_time("20240101Z"), Some(1_704_067_200));
        assert_eq!(parse_openssh_time("202401010000"), Some(1_704_067_200));
        assert_eq!(parse_openssh_time("20240101000001Z"), Some(1_704_067_201));
        assert_eq!(parse_openssh_time("20240229"), Some(1_709_164_800));
    }

    #[test]
    fn rejects_bad_times() {
        for bad in [
            "",
            "2024",
            "2024010",
            "20241301",
            "20230229",
            "20240132",
            "202401012400",
            "20240101236",
            "2024-01-01",
            "20240101ZZ",
            "+2024010",
        ] {
            assert_eq!(parse_openssh_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(fmt_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_unix(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(fmt_unix(-1), "1969-12-31T23:59:59Z");
        for t in [0i64, 951_782_400, 1_709_164_800, 4_102_444_800] {
            let s = fmt_unix(t);
            let compact: String = s.chars().filter(char::is_ascii_digit).collect();
            assert_eq!(parse_openssh_time(&compact), Some(t));
        }
    }
}
