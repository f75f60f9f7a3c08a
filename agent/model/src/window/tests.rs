//! When a window is open and when the next one opens: tables over fixed instants and
//! fixed offsets (no time zone database, no daylight-saving change).

use super::*;
use crate::manifest::{DurationSpec, Window, WindowStart};

fn at(rfc3339: &str) -> i64 {
    match DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t.timestamp(),
        Err(e) => panic!("{rfc3339}: {e}"),
    }
}

fn window(start: &str, duration: &str) -> Window {
    let start = WindowStart::try_from(start.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let duration = DurationSpec::try_from(duration.to_string()).unwrap_or_else(|e| panic!("{e}"));
    Window { start, duration }
}

/// 2026-01-02 is a Friday, 2026-01-03 a Saturday.
#[test]
fn a_window_is_open_from_its_start_until_its_end_and_says_when_it_opens_next() {
    // (start, duration, now, offset east of UTC in s, open, next opening as RFC 3339)
    let table: &[(&str, &str, &str, i32, bool, &str)] = &[
        // Open right now; the start is inside, the end outside.
        ("0 2 * * *", "1h", "2026-01-03T02:30:00Z", 0, true, "2026-01-03T02:30:00Z"),
        ("0 2 * * *", "1h", "2026-01-03T02:00:00Z", 0, true, "2026-01-03T02:00:00Z"),
        ("0 2 * * *", "1h", "2026-01-03T02:59:59Z", 0, true, "2026-01-03T02:59:59Z"),
        ("0 2 * * *", "1h", "2026-01-03T03:00:00Z", 0, false, "2026-01-04T02:00:00Z"),
        ("0 2 * * *", "1h", "2026-01-03T01:59:59Z", 0, false, "2026-01-03T02:00:00Z"),
        // Spanning midnight: opened yesterday at 23:00, still open at 01:30.
        ("0 23 * * *", "3h", "2026-01-04T01:30:00Z", 0, true, "2026-01-04T01:30:00Z"),
        ("0 23 * * *", "3h", "2026-01-04T02:00:00Z", 0, false, "2026-01-04T23:00:00Z"),
        ("0 23 * * *", "3h", "2026-01-03T22:59:00Z", 0, false, "2026-01-03T23:00:00Z"),
        // A host one hour east of UTC: 02:00 local is 01:00 UTC.
        ("0 2 * * *", "1h", "2026-01-03T01:30:00Z", 3600, true, "2026-01-03T01:30:00Z"),
        ("0 2 * * *", "1h", "2026-01-03T02:30:00Z", 3600, false, "2026-01-04T01:00:00Z"),
        ("0 2 * * *", "1h", "2026-01-03T00:59:00Z", 3600, false, "2026-01-03T01:00:00Z"),
        // Five hours west, Friday 22:00 local for 4 h: into Saturday local, and the UTC
        // day is already Saturday when it opens.
        ("0 22 * * fri", "4h", "2026-01-03T04:00:00Z", -18_000, true, "2026-01-03T04:00:00Z"),
        ("0 22 * * fri", "4h", "2026-01-03T07:00:00Z", -18_000, false, "2026-01-10T03:00:00Z"),
        ("0 22 * * fri", "4h", "2026-01-02T22:30:00Z", -18_000, false, "2026-01-03T03:00:00Z"),
        // A whole week from Sunday 00:00: always open.
        ("@weekly", "7d", "2026-01-03T23:59:59Z", 0, true, "2026-01-03T23:59:59Z"),
        // Weekdays only, two fields restricted; a leap day only every four years.
        ("30 1 * * 1-5", "30m", "2026-01-03T01:45:00Z", 0, false, "2026-01-05T01:30:00Z"),
        ("0 2 29 2 *", "2h", "2026-03-01T00:00:00Z", 0, false, "2028-02-29T02:00:00Z"),
        // Minute precision: a 1-minute window.
        ("15 3 * * *", "1m", "2026-01-03T03:15:59Z", 0, true, "2026-01-03T03:15:59Z"),
        ("15 3 * * *", "1m", "2026-01-03T03:16:00Z", 0, false, "2026-01-04T03:15:00Z"),
    ];
    for (start, duration, now, offset, open, next) in table {
        let w = window(start, duration);
        let now = at(now);
        let what =
            format!("`{start}` for {duration} at {} (offset {offset})", local_rfc3339(now, 0));
        assert_eq!(w.open_at(now, *offset), *open, "open: {what}");
        let got = w.next_open(now, *offset).map(|t| local_rfc3339(t, 0));
        assert_eq!(got.as_deref(), Some(next.replace('Z', "+00:00").as_str()), "next: {what}");
    }
}

#[test]
fn several_windows_are_open_when_any_is_and_the_earliest_opens_next() {
    let nightly = window("0 2 * * *", "1h");
    let saturday = window("0 10 * * sat", "4h");
    let both = [nightly.clone(), saturday.clone()];
    // (windows, now, availability)
    let table: Vec<(&[Window], &str, Option<Availability>)> = vec![
        (&[], "2026-01-03T12:00:00Z", None),
        (&both, "2026-01-03T12:00:00Z", Some(Availability::Open)),
        (&both, "2026-01-03T02:10:00Z", Some(Availability::Open)),
        (
            &both,
            "2026-01-03T08:00:00Z",
            Some(Availability::Closed { next_open: Some(at("2026-01-03T10:00:00Z")) }),
        ),
        (
            &both,
            "2026-01-03T15:00:00Z",
            Some(Availability::Closed { next_open: Some(at("2026-01-04T02:00:00Z")) }),
        ),
        (
            std::slice::from_ref(&saturday),
            "2026-01-03T15:00:00Z",
            Some(Availability::Closed { next_open: Some(at("2026-01-10T10:00:00Z")) }),
        ),
    ];
    for (windows, now, want) in table {
        assert_eq!(
            availability(windows, at(now), 0),
            want,
            "{now} with {} window(s)",
            windows.len()
        );
    }
}

#[test]
fn local_times_carry_the_host_offset() {
    let t = at("2026-01-03T01:00:00Z");
    assert_eq!(local_rfc3339(t, 3600), "2026-01-03T02:00:00+01:00");
    assert_eq!(local_time(t, 3600), "2026-01-03 02:00 +01:00");
    assert_eq!(local_time(t, -18_000), "2026-01-02 20:00 -05:00");
    assert_eq!(local_time(t, 0), "2026-01-03 01:00 +00:00");
}
