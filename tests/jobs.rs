//! Scheduled jobs against the real systemd tools: every cron translation is checked with
//! `systemd-analyze calendar` (the union of systemd's next elapses must equal
//! `CronSchedule::next_after`), rendered units pass `systemd-analyze verify` with nothing on
//! stderr, and the `veza-agent schedule` command keeps its output and exit-code contract.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use veza_host::process::Cmd;
use veza_model::schedule;
use veza_model::units::{self, JobUnitSpec};

/// Cron expressions checked against systemd: the seed's jobs, steps (including steps that run
/// past the end of a field), ranges, lists, names, 0/7 = Sunday, both day-field rules, leap
/// days, month ends and every macro.
const EXPRESSIONS: &[&str] = &[
    // Seed jobs.
    "0 2 * * 0",
    "0 2 * * 1-6",
    "0 4 * * 0",
    // Minutes and hours.
    "* * * * *",
    "*/15 * * * *",
    "*/7 * * * *",
    "5/20 * * * *",
    "*/60 * * * *",
    "50/10 * * * *",
    "10-30/10 */6 * * *",
    "0-59/59 0 * * *",
    "0 */5 * * *",
    "0 23/2 * * *",
    "15 9-17 * * 1-5",
    "0,30 9-17 * * mon-fri",
    "1,2,3,5,8,13,21,34,55 * * * *",
    "0 0-23/4,1 * * *",
    "*,5 * * * *",
    "59 23 31 12 *",
    // Months.
    "0 0 1 jan,jul *",
    "0 0 1 */3 *",
    "0 0 1 2-11/3 *",
    "0 0 1 12/5 *",
    // Days of the month.
    "0 0 */2 * *",
    "0 0 1-15/7 * *",
    "0 0 31 * *",
    "0 0 29 2 *",
    "0 0 30 1-3 *",
    // Days of the week.
    "0 12 * * */2",
    "0 12 * * 1-5/2",
    "0 12 * * sun,tue,thu,sat",
    "0 4 * * 7",
    "30 1 * * 5-7",
    "0 0 * * 0-7",
    "0 0 * * 6,0",
    "0 0 * * 1,2,3,5",
    "0 0 * * 0,1,2,6",
    "0 0 * feb sun",
    // Both day fields restricted: OR (two lines).
    "0 0 1 * 1",
    "0 6 13 * fri",
    "0 0 1,15 * 0",
    "0 0 31 2 mon",
    "0 0 1-7 * 1",
    "0 0 15 */2 3",
    "0 0 1 * 0-6",
    "0 0 1-31 * 1",
    // A `*`-led day field: AND (one line).
    "0 0 */2 * 1",
    "0 0 1 * */1",
    // Macros.
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@yearly",
    "@annually",
];

/// Base instants (UTC): a Sunday noon, late evenings before a month change (where systemd's
/// open-ended repetitions go wrong), the last second of a year, the day before a leap day.
const BASES: &[&str] = &[
    "2026-11-29 12:00:00",
    "2026-11-30 20:00:00",
    "2027-01-31 23:00:00",
    "2027-04-30 23:59:00",
    "2027-12-31 23:59:59",
    "2028-02-28 12:00:00",
];

const ITERATIONS: usize = 10;

fn systemd_analyze(args: &[String]) -> Output {
    let out = Cmd::new("systemd-analyze")
        .args(args)
        .env("TZ", "UTC")
        .timeout(Duration::from_secs(60))
        .output()
        .expect("run systemd-analyze");
    Output { status: out.status, stdout: out.stdout, stderr: out.stderr }
}

/// The union, sorted, of the elapses `systemd-analyze calendar` prints for `lines`.
fn systemd_elapses(base: &str, lines: &[String], n: usize) -> Vec<DateTime<Utc>> {
    let mut args = vec![
        "calendar".to_string(),
        format!("--base-time={base} UTC"),
        format!("--iterations={n}"),
    ];
    args.extend(lines.iter().cloned());
    let out = systemd_analyze(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "systemd rejected {lines:?}:\n{stderr}");
    let mut elapses: Vec<DateTime<Utc>> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Next elapse:") || l.starts_with("Iter. #"))
        .filter_map(|l| l.split_once(": ").map(|(_, value)| value))
        .filter(|value| *value != "never")
        .map(|value| parse_systemd_timestamp(value).unwrap_or_else(|| panic!("{value:?}")))
        .collect();
    elapses.sort();
    elapses.dedup();
    elapses
}

/// `Sun 2026-11-29 12:15:00 UTC` → the instant.
fn parse_systemd_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let (_weekday, rest) = s.split_once(' ')?;
    let naive =
        NaiveDateTime::parse_from_str(rest.strip_suffix(" UTC")?, "%Y-%m-%d %H:%M:%S").ok()?;
    Some(Utc.from_utc_datetime(&naive))
}

fn base_instant(base: &str) -> DateTime<Utc> {
    let naive = NaiveDateTime::parse_from_str(base, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("base {base:?}: {e}"));
    Utc.from_utc_datetime(&naive)
}

#[test]
fn jobs_cron_translation_matches_systemd_calendar() {
    assert!(EXPRESSIONS.len() >= 40);
    let mut failures = Vec::new();
    for expr in EXPRESSIONS {
        let schedule = schedule::parse(expr).unwrap_or_else(|e| panic!("`{expr}`: {e}"));
        let lines = schedule.on_calendar(None);
        for base in BASES {
            let from_systemd: Vec<_> =
                systemd_elapses(base, &lines, ITERATIONS).into_iter().take(ITERATIONS).collect();
            let ours = schedule.next_after(base_instant(base), ITERATIONS);
            assert_eq!(ours.len(), ITERATIONS, "`{expr}` from {base}");
            if from_systemd != ours {
                failures.push(format!(
                    "`{expr}` → {lines:?} from {base}:\n  systemd: {from_systemd:?}\n  ours:    {ours:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn jobs_time_zone_lines_are_accepted_by_systemd() {
    // 02:00 in Paris is 01:00 UTC in winter: systemd honours the zone we append.
    let lines = schedule::parse("0 2 * * 0").unwrap().on_calendar(Some("Europe/Paris"));
    assert_eq!(lines, ["Sun *-*-* 02:00:00 Europe/Paris"]);
    let got = systemd_elapses(BASES[0], &lines, 2);
    assert_eq!(
        got,
        [
            Utc.with_ymd_and_hms(2026, 12, 6, 1, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 13, 1, 0, 0).unwrap()
        ]
    );
    let lines = schedule::parse("0 0 1 * 1").unwrap().on_calendar(Some("America/New_York"));
    assert_eq!(systemd_elapses(BASES[0], &lines, 3).len(), 6);
}

fn seed_specs() -> Vec<JobUnitSpec> {
    let job = |name: &str, cron: &str, command: &str| {
        let schedule = schedule::parse(cron).unwrap_or_else(|e| panic!("`{cron}`: {e}"));
        JobUnitSpec::new("prod", name, schedule, command)
    };
    vec![
        JobUnitSpec {
            user: Some("postgres".into()),
            randomized_delay: Some(Duration::from_secs(600)),
            timeout: Some(Duration::from_secs(6 * 3600)),
            ..job("pgbackrest-full", "0 2 * * 0", "pgbackrest --stanza=veza --type=full backup")
        },
        JobUnitSpec {
            user: Some("postgres".into()),
            ..job("pgbackrest-diff", "0 2 * * 1-6", "pgbackrest --stanza=veza --type=diff backup")
        },
        JobUnitSpec {
            timeout: Some(Duration::from_secs(5400)),
            ..job("dr-drill", "0 4 * * 0", "/usr/local/bin/dr-drill.sh")
        },
        JobUnitSpec {
            tz: Some("Europe/Paris".into()),
            persistent: false,
            description: Some(
                "Awkward command: quotes, $vars, 100% and \\ (escaping check)".into(),
            ),
            ..job(
                "awkward",
                "0 0 1 * 1",
                // Also a real tab, which is escaped as `\t`.
                concat!(
                    r#"echo "it's $HOME ${USER:-x}" 'a\b' 100% `date +%F` | tr a-z A-Z > /dev/null; printf 'x\ty\n'"#,
                    "\ttab"
                ),
            )
        },
    ]
}

/// Runs `systemd-analyze verify` on the files; any stderr output counts as a failure.
fn verify(paths: &[&Path]) -> Result<(), String> {
    let mut args = vec!["verify".to_string()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let out = systemd_analyze(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("exit {:?}: {stderr}", out.status.code()))
    }
}

#[test]
fn jobs_rendered_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for spec in seed_specs() {
        let rendered = units::render(&spec).unwrap();
        let service = dir.path().join(&rendered.service.name);
        let timer = dir.path().join(&rendered.timer.name);
        std::fs::write(&service, &rendered.service.contents).unwrap();
        std::fs::write(&timer, &rendered.timer.contents).unwrap();
        if let Err(e) = verify(&[&timer, &service]) {
            panic!(
                "{} / {}: {e}\n{}\n{}",
                rendered.timer.name, rendered.service.name, rendered.timer, rendered.service
            );
        }
    }
}

#[test]
fn jobs_verify_harness_catches_warnings() {
    // Guards the check above: a unit that only earns a warning (exit 0) must still fail it.
    let dir = tempfile::tempdir().unwrap();
    let rendered = units::render(&seed_specs()[0]).unwrap();
    let service = dir.path().join(&rendered.service.name);
    let timer = dir.path().join(&rendered.timer.name);
    std::fs::write(&service, &rendered.service.contents).unwrap();
    std::fs::write(&timer, rendered.timer.contents.replace("Persistent=", "Persistant=")).unwrap();
    let err = verify(&[&timer, &service]).unwrap_err();
    assert!(err.contains("Unknown key 'Persistant'"), "{err}");
}

fn agent(args: &[&str]) -> (Option<i32>, String, String) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent"));
    let out = veza_testkit::cli::output(bin, args, Duration::from_secs(60));
    (out.status.code(), out.stdout_str(), out.stderr_str())
}

#[test]
fn jobs_schedule_cli_prints_on_calendar_and_next_instants() {
    let (code, stdout, stderr) =
        agent(&["schedule", "--next", "3", "--from", "2026-11-29T12:00:00Z", "0 2 * * 0"]);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    assert_eq!(
        stdout,
        "OnCalendar=Sun *-*-* 02:00:00 UTC\n\
         next: 2026-12-06T02:00:00Z\n\
         next: 2026-12-13T02:00:00Z\n\
         next: 2026-12-20T02:00:00Z\n"
    );

    // Both day fields: two OnCalendar lines; an offset in --from is converted to UTC.
    let (code, stdout, _) =
        agent(&["schedule", "--next", "2", "--from", "2026-11-29T13:00:00+01:00", "0 0 1 * 1"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        stdout,
        "OnCalendar=*-*-01 00:00:00 UTC\n\
         OnCalendar=Mon *-*-* 00:00:00 UTC\n\
         next: 2026-11-30T00:00:00Z\n\
         next: 2026-12-01T00:00:00Z\n"
    );
}

#[test]
fn jobs_schedule_cli_defaults_to_five_instants_from_now() {
    let before = Utc::now();
    let (code, stdout, stderr) = agent(&["schedule", "@hourly"]);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("OnCalendar=*-*-* *:00:00 UTC"));
    let next: Vec<DateTime<Utc>> = lines
        .map(|l| {
            let t = l.strip_prefix("next: ").unwrap_or_else(|| panic!("{l:?}"));
            DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
        })
        .collect();
    assert_eq!(next.len(), 5, "{stdout}");
    assert!(next[0] > before && next[0] <= before + chrono::Duration::hours(1), "{stdout}");
    assert!(next.windows(2).all(|w| w[1] - w[0] == chrono::Duration::hours(1)), "{stdout}");
}

#[test]
fn jobs_schedule_cli_rejects_invalid_input_with_exit_1() {
    let (code, stdout, stderr) = agent(&["schedule", "@reboot"]);
    assert_eq!(code, Some(1));
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: invalid schedule `@reboot`: `@reboot` is not supported: it has no calendar equivalent (systemd uses `OnBootSec=`)\n"
    );

    let (code, _, stderr) = agent(&["schedule", "0 25 * * *"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("hour field: 25 is out of range 0-23"), "{stderr}");
}

#[test]
fn jobs_schedule_cli_usage_errors_exit_2() {
    for args in [
        &["schedule"][..],
        &["schedule", "--next", "x", "@daily"],
        &["schedule", "--next", "100000", "@daily"],
        &["schedule", "--from", "yesterday", "@daily"],
    ] {
        let (code, _, stderr) = agent(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
}

/// The systemd driver's `install` of `files` (enabling `timers`) into the unit directory
/// `dir` on the host; the error as the driver words it.
fn install_on_host(
    dir: &Path,
    files: &[(String, String)],
    timers: &[String],
) -> Result<(), String> {
    use veza_host::systemd::{Systemd, Units};
    let rt = veza_host::incus::runtime().expect("runtime");
    let incus = veza_host::incus::IncusClient::local();
    let driver = Systemd::new(&incus, dir);
    rt.block_on(driver.install(&veza_plan::live::UnitTarget::Host, files, timers))
        .map_err(|e| e.to_string())
}

/// Units rejected by `systemd-analyze verify` never stay in the unit directory: a new file
/// is removed and a replaced one is put back, so the next plan installs again.
#[test]
fn units_rejected_by_verify_are_not_left_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = veza_model::units::OWNER_MARKER_PREFIX;
    let good = format!(
        "{marker}t/x\n[Unit]\nDescription=x\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
    );
    std::fs::write(dir.path().join("veza-job-t-x.service"), &good).expect("seed a unit");
    let bad_timer = format!(
        "{marker}t/x\n[Unit]\nDescription=x\n\n[Timer]\nOnCalendar=*-*-* 25:00:00\nUnit=veza-job-t-x.service\n\n[Install]\nWantedBy=timers.target\n"
    );
    let bad_service = format!(
        "{marker}t/x\n[Unit]\nDescription=x\n\n[Service]\nType=oneshot\nExecStart=/nonexistent/veza\n"
    );
    let err = install_on_host(
        dir.path(),
        &[
            ("veza-job-t-x.service".to_string(), bad_service),
            ("veza-job-t-x.timer".to_string(), bad_timer),
        ],
        &["veza-job-t-x.timer".to_string()],
    )
    .expect_err("verify must reject these units");
    assert!(err.to_string().contains("systemd-analyze verify"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("veza-job-t-x.service")).expect("restored"),
        good
    );
    assert!(!dir.path().join("veza-job-t-x.timer").exists(), "the new timer was removed");
}

/// A unit file in the host's unit directory without the agent's marker (an operator's own
/// `veza-job-prod-db-backup.service`, or another tool's) is never overwritten: the install
/// is refused, naming the file, before any unit is written.
#[test]
fn a_host_unit_file_without_the_marker_is_never_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let theirs = "[Unit]\nDescription=the DBA's own backup\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n";
    let service = dir.path().join("veza-job-prod-db-backup.service");
    std::fs::write(&service, theirs).expect("seed a foreign unit");
    let daily = schedule::parse("@daily").expect("schedule");
    let units =
        units::render(&JobUnitSpec::new("prod-db", "backup", daily, "true")).expect("render");
    let err = install_on_host(
        dir.path(),
        &[
            (units.timer.name.clone(), units.timer.contents.clone()),
            (units.service.name.clone(), units.service.contents.clone()),
        ],
        std::slice::from_ref(&units.timer.name),
    )
    .expect_err("a foreign unit file must not be overwritten");
    assert_eq!(
        err.to_string(),
        format!(
            "refusing to overwrite `{}` on host: the file exists without the veza-agent marker on its first line, so it belongs to someone else (hint: rename the job in the manifest, or move that file away if nobody needs it)",
            service.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&service).expect("still there"), theirs);
    assert!(!dir.path().join(&units.timer.name).exists(), "no unit was written");
}
