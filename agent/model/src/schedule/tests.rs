//! Tests of the cron schedules: parsing, `OnCalendar=` translation and next-run times.

use super::*;
use chrono::TimeZone;

/// Sunday 2026-11-29 12:00:00 UTC, the base used in the research notes.
fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// (expression, OnCalendar lines, first instants after `base()`).
const CASES: &[(&str, &[&str], &[&str])] = &[
    // The seed's jobs.
    (
        "0 2 * * 0",
        &["Sun *-*-* 02:00:00 UTC"],
        &["2026-12-06T02:00:00Z", "2026-12-13T02:00:00Z", "2026-12-20T02:00:00Z"],
    ),
    (
        "0 2 * * 1-6",
        &["Mon..Sat *-*-* 02:00:00 UTC"],
        &["2026-11-30T02:00:00Z", "2026-12-01T02:00:00Z", "2026-12-02T02:00:00Z"],
    ),
    ("0 4 * * 0", &["Sun *-*-* 04:00:00 UTC"], &["2026-12-06T04:00:00Z", "2026-12-13T04:00:00Z"]),
    // 7 is Sunday too; 0-7 is every day.
    ("0 4 * * 7", &["Sun *-*-* 04:00:00 UTC"], &["2026-12-06T04:00:00Z"]),
    ("30 1 * * 5-7", &["Fri..Sun *-*-* 01:30:00 UTC"], &["2026-12-04T01:30:00Z"]),
    ("0 0 * * 0-7", &["*-*-* 00:00:00 UTC"], &["2026-11-30T00:00:00Z"]),
    // Every minute, steps.
    ("* * * * *", &["*-*-* *:*:00 UTC"], &["2026-11-29T12:01:00Z", "2026-11-29T12:02:00Z"]),
    (
        "*/15 * * * *",
        &["*-*-* *:00..45/15:00 UTC"],
        &["2026-11-29T12:15:00Z", "2026-11-29T12:30:00Z", "2026-11-29T12:45:00Z"],
    ),
    (
        "5/20 * * * *",
        &["*-*-* *:05..45/20:00 UTC"],
        &["2026-11-29T12:05:00Z", "2026-11-29T12:25:00Z", "2026-11-29T12:45:00Z"],
    ),
    (
        "10-30/10 */6 * * *",
        &["*-*-* 00..18/6:10..30/10:00 UTC"],
        &[
            "2026-11-29T12:10:00Z",
            "2026-11-29T12:20:00Z",
            "2026-11-29T12:30:00Z",
            "2026-11-29T18:10:00Z",
        ],
    ),
    // A step past the end of the field selects the start only.
    ("*/60 * * * *", &["*-*-* *:00:00 UTC"], &["2026-11-29T13:00:00Z"]),
    ("50/10 1 * * *", &["*-*-* 01:50:00 UTC"], &["2026-11-30T01:50:00Z"]),
    // Lists, ranges, names.
    (
        "0,30 9-17 * * mon-FRI",
        &["Mon..Fri *-*-* 09..17:00,30:00 UTC"],
        &["2026-11-30T09:00:00Z", "2026-11-30T09:30:00Z"],
    ),
    (
        "0 0 1 jan,Jul *",
        &["*-01,07-01 00:00:00 UTC"],
        &["2027-01-01T00:00:00Z", "2027-07-01T00:00:00Z"],
    ),
    (
        "0 0 1 */3 *",
        &["*-01..10/3-01 00:00:00 UTC"],
        &["2027-01-01T00:00:00Z", "2027-04-01T00:00:00Z"],
    ),
    (
        "0 12 * * sun,tue,thu,sat",
        &["Tue,Thu,Sat,Sun *-*-* 12:00:00 UTC"],
        &["2026-12-01T12:00:00Z", "2026-12-03T12:00:00Z"],
    ),
    (
        "0 12 * * */2",
        &["Tue,Thu,Sat,Sun *-*-* 12:00:00 UTC"],
        &[
            "2026-12-01T12:00:00Z",
            "2026-12-03T12:00:00Z",
            "2026-12-05T12:00:00Z",
            "2026-12-06T12:00:00Z",
        ],
    ),
    (
        "0 12 * * 1-5/2",
        &["Mon,Wed,Fri *-*-* 12:00:00 UTC"],
        &["2026-11-30T12:00:00Z", "2026-12-02T12:00:00Z"],
    ),
    // Both day fields restricted: day-of-month OR day-of-week, two lines.
    (
        "0 0 1 * 1",
        &["*-*-01 00:00:00 UTC", "Mon *-*-* 00:00:00 UTC"],
        &["2026-11-30T00:00:00Z", "2026-12-01T00:00:00Z", "2026-12-07T00:00:00Z"],
    ),
    (
        "0 6 13 * fri",
        &["*-*-13 06:00:00 UTC", "Fri *-*-* 06:00:00 UTC"],
        &[
            "2026-12-04T06:00:00Z",
            "2026-12-11T06:00:00Z",
            "2026-12-13T06:00:00Z",
            "2026-12-18T06:00:00Z",
        ],
    ),
    // A `*`-led day field is unrestricted: the other day field must also match (AND).
    (
        "0 0 */2 * 1",
        &["Mon *-*-01..31/2 00:00:00 UTC"],
        &["2026-12-07T00:00:00Z", "2026-12-21T00:00:00Z", "2027-01-11T00:00:00Z"],
    ),
    ("0 0 1 * */1", &["*-*-01 00:00:00 UTC"], &["2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
    // Leap day.
    ("0 0 29 2 *", &["*-02-29 00:00:00 UTC"], &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]),
    // Macros.
    ("@hourly", &["*-*-* *:00:00 UTC"], &["2026-11-29T13:00:00Z"]),
    ("@daily", &["*-*-* 00:00:00 UTC"], &["2026-11-30T00:00:00Z"]),
    ("@midnight", &["*-*-* 00:00:00 UTC"], &["2026-11-30T00:00:00Z"]),
    ("@weekly", &["Sun *-*-* 00:00:00 UTC"], &["2026-12-06T00:00:00Z"]),
    ("@monthly", &["*-*-01 00:00:00 UTC"], &["2026-12-01T00:00:00Z"]),
    ("@yearly", &["*-01-01 00:00:00 UTC"], &["2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"]),
    ("@ANNUALLY", &["*-01-01 00:00:00 UTC"], &["2027-01-01T00:00:00Z"]),
];

#[test]
fn schedule_table() {
    for (expr, lines, next) in CASES {
        let s = parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(s.on_calendar(None), *lines, "OnCalendar for `{expr}`");
        let expected: Vec<_> = next.iter().map(|t| ts(t)).collect();
        assert_eq!(s.next_after(base(), next.len()), expected, "next_after for `{expr}`");
        assert_eq!(s.to_string(), *expr);
    }
}

#[test]
fn schedule_rejections() {
    let cases: &[(&str, &str)] = &[
        ("", "empty schedule: expected 5 fields (minute hour day-of-month month day-of-week)"),
        ("   ", "empty schedule: expected 5 fields (minute hour day-of-month month day-of-week)"),
        (
            "@reboot",
            "`@reboot` is not supported: it has no calendar equivalent (systemd uses `OnBootSec=`)",
        ),
        (
            "@fortnightly",
            "unknown macro `@fortnightly`: expected one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually",
        ),
        (
            "0 2 * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), found 4: `0 2 * *`",
        ),
        (
            "0 0 2 * * *",
            "expected 5 fields (minute hour day-of-month month day-of-week), found 6 (seconds and year fields are not supported): `0 0 2 * * *`",
        ),
        (
            "0 0 2 * * * 2028",
            "expected 5 fields (minute hour day-of-month month day-of-week), found 7 (seconds and year fields are not supported): `0 0 2 * * * 2028`",
        ),
        ("0 25 * * *", "hour field: 25 is out of range 0-23"),
        ("60 0 * * *", "minute field: 60 is out of range 0-59"),
        ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month field: 32 is out of range 1-31"),
        ("0 0 * 13 *", "month field: 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("0 0 * * 99999999999", "day-of-week field: 99999999999 is out of range 0-7"),
        ("0 0 * foo *", "month field: `foo` is not a valid value (expected 1-12 or jan-dec)"),
        (
            "0 0 * * monday",
            "day-of-week field: `monday` is not a valid value (expected 0-7 or sun-sat)",
        ),
        ("0 x * * *", "hour field: `x` is not a valid value (expected a number)"),
        ("1,,2 0 * * *", "minute field: empty value in `1,,2`"),
        ("0 0 * * 1é", "day-of-week field: `1é` is not a valid value (expected 0-7 or sun-sat)"),
        ("1,2, 0 * * *", "minute field: empty value in `1,2,`"),
        ("5- 0 * * *", "minute field: empty value in `5-`"),
        ("-5 0 * * *", "minute field: empty value in `-5`"),
        ("*/0 0 * * *", "minute field: step 0 in `*/0`: the step must be at least 1"),
        (
            "*/x 0 * * *",
            "minute field: invalid step in `*/x`: expected `*/n`, `a-b/n` or `a/n` with a number n",
        ),
        (
            "*/ 0 * * *",
            "minute field: invalid step in `*/`: expected `*/n`, `a-b/n` or `a/n` with a number n",
        ),
        (
            "1/2/3 0 * * *",
            "minute field: invalid step in `1/2/3`: expected `*/n`, `a-b/n` or `a/n` with a number n",
        ),
        (
            "30-10 0 * * *",
            "minute field: reversed range `30-10`: the start must not be greater than the end",
        ),
        (
            "0 0 * * fri-mon",
            "day-of-week field: reversed range `fri-mon`: the start must not be greater than the end",
        ),
        (
            "0 0 L * *",
            "day-of-month field: `L` is not supported: Quartz extensions (`L`, `W`, `#`, `?`) are not classic cron; list the days instead",
        ),
        (
            "0 0 15W * *",
            "day-of-month field: `15W` is not supported: Quartz extensions (`L`, `W`, `#`, `?`) are not classic cron; list the days instead",
        ),
        (
            "0 0 * * 5L",
            "day-of-week field: `5L` is not supported: Quartz extensions (`L`, `W`, `#`, `?`) are not classic cron; list the days instead",
        ),
        (
            "0 0 * * 1#2",
            "day-of-week field: `1#2` is not supported: Quartz extensions (`L`, `W`, `#`, `?`) are not classic cron; list the days instead",
        ),
        (
            "0 0 ? * 1",
            "day-of-month field: `?` is not supported: Quartz extensions (`L`, `W`, `#`, `?`) are not classic cron; list the days instead",
        ),
        (
            "0 0 * * 1/2",
            "day-of-week field: `1/2` is not supported: a start with a step is ambiguous in the day-of-week field (does it wrap to 7 = Sunday?); write a range such as `1-6/2` or a list",
        ),
        (
            "0 0 30 2 *",
            "the schedule never fires: no day selected by the day-of-month field (`30`) exists in the months selected by the month field (`2`)",
        ),
        (
            "0 0 31 apr,jun,sep,nov *",
            "the schedule never fires: no day selected by the day-of-month field (`31`) exists in the months selected by the month field (`apr,jun,sep,nov`)",
        ),
    ];
    for (expr, want) in cases {
        let err = parse(expr).expect_err(expr);
        assert_eq!(err.to_string(), *want, "error for `{expr}`");
    }
}

#[test]
fn schedule_field_errors_name_the_field() {
    let err = parse("0 25 * * *").unwrap_err();
    assert_eq!(
        err,
        ScheduleError::Field {
            field: CronField::Hour,
            reason: FieldError::OutOfRange { value: "25".into(), min: 0, max: 23 },
        }
    );
}

#[test]
fn schedule_never_fires_check_ignores_or_days() {
    // Day 31 never exists in February, but the weekday branch of the OR still fires.
    let s = parse("0 0 31 2 mon").unwrap();
    assert_eq!(s.on_calendar(None), ["*-02-31 00:00:00 UTC", "Mon *-02-* 00:00:00 UTC"]);
    assert_eq!(s.next_after(base(), 1), [ts("2027-02-01T00:00:00Z")]);
}

#[test]
fn schedule_time_zone_is_appended() {
    let s = parse("0 0 1 * 1").unwrap();
    assert_eq!(
        s.on_calendar(Some("Europe/Paris")),
        ["*-*-01 00:00:00 Europe/Paris", "Mon *-*-* 00:00:00 Europe/Paris"]
    );
}

#[test]
fn schedule_next_after_is_strict_merged_and_deduplicated() {
    // 2026-12-07 is both a Monday and ... not the 1st; 2027-02-01 is a Monday and the 1st.
    let s = parse("0 0 1 * 1").unwrap();
    let from = ts("2027-01-31T00:00:00Z");
    assert_eq!(
        s.next_after(from, 3),
        [ts("2027-02-01T00:00:00Z"), ts("2027-02-08T00:00:00Z"), ts("2027-02-15T00:00:00Z")]
    );
    // Strictly after: an instant that matches is not returned again.
    let s = parse("0 2 * * 0").unwrap();
    assert_eq!(s.next_after(ts("2026-12-06T02:00:00Z"), 1), [ts("2026-12-13T02:00:00Z")]);
    assert_eq!(s.next_after(ts("2026-12-06T01:59:59.5Z"), 1), [ts("2026-12-06T02:00:00Z")]);
    assert!(s.next_after(base(), 0).is_empty());
}

#[test]
fn schedule_is_bounded_by_the_crate_years() {
    let s = parse("0 0 1 1 *").unwrap();
    let got = s.next_after(ts("2098-06-01T00:00:00Z"), 10);
    assert_eq!(got, [ts("2099-01-01T00:00:00Z"), ts("2100-01-01T00:00:00Z")]);
}

#[test]
fn schedule_source_is_trimmed_and_parse_forms_agree() {
    let s: CronSchedule = "  0 2 * * 0 \n".parse().unwrap();
    assert_eq!(s.to_string(), "0 2 * * 0");
    assert_eq!(CronSchedule::try_from("0 2 * * 0".to_string()).unwrap(), s);
}

#[test]
fn schedule_step_near_the_integer_limit_does_not_wrap() {
    // `30/4294967295` is minute 30 alone: the walk from 30 stops instead of wrapping to
    // 29 (and in debug builds, panicking).
    let s = parse("30/4294967295 * * * *").unwrap();
    let got = s.next_after(base(), 2);
    assert_eq!(got, vec![ts("2026-11-29T12:30:00Z"), ts("2026-11-29T13:30:00Z")]);
    assert_eq!(s.on_calendar(None), vec!["*-*-* *:30:00 UTC".to_string()]);
}
