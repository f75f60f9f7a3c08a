//! Tests of the job unit rendering: the seed jobs byte for byte (a snapshot), schedules
//! and time zones, escaping, and what the renderer refuses.

use super::*;
use crate::schedule::parse;

fn spec(env: &str, name: &str, schedule: &str, command: &str) -> JobUnitSpec {
    JobUnitSpec::new(env, name, parse(schedule).unwrap(), command)
}

/// The seed's jobs (Ansible's pgBackRest timers and the DR drill), service and timer
/// byte for byte, compared with `agent/model/snapshots/seed-job-units.txt`
/// (`UPDATE_SNAPSHOTS=1` rewrites it; then review the diff: the snapshot is the contract).
#[test]
fn units_of_the_seed_jobs() {
    let full = "pgbackrest --stanza=veza --type=full backup";
    let diff = "pgbackrest --stanza=veza --type=diff backup";
    let jobs = [
        JobUnitSpec {
            user: Some("postgres".into()),
            randomized_delay: Some(Duration::from_secs(600)),
            timeout: Some(Duration::from_secs(6 * 3600)),
            ..spec("prod", "pgbackrest-full", "0 2 * * 0", full)
        },
        JobUnitSpec {
            user: Some("postgres".into()),
            ..spec("prod", "pgbackrest-diff", "0 2 * * 1-6", diff)
        },
        JobUnitSpec {
            timeout: Some(Duration::from_secs(90 * 60)),
            persistent: false,
            description: Some("Veza DR drill: restore the latest backup (100% check)".into()),
            ..spec("prod", "dr-drill", "0 4 * * 0", "/usr/local/bin/dr-drill.sh")
        },
    ];
    let mut text = String::new();
    for job in &jobs {
        let units = render(job).unwrap();
        for unit in [&units.service, &units.timer] {
            text.push_str(&format!("==> {} <==\n{}", unit.name, unit.contents));
        }
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/seed-job-units.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).expect("write the snapshot");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text == expected,
        "the seed's job units differ from {}:\n{text}\n(rerun with UPDATE_SNAPSHOTS=1 and review the diff)",
        path.display()
    );
}

#[test]
fn units_or_schedule_and_time_zone_give_one_line_each() {
    let units = render(&JobUnitSpec {
        tz: Some("Europe/Paris".into()),
        ..spec("staging", "report", "30 6 1 * mon", "true")
    })
    .unwrap();
    let on_calendar: Vec<&str> =
        units.timer.contents.lines().filter(|l| l.starts_with("OnCalendar=")).collect();
    assert_eq!(
        on_calendar,
        ["OnCalendar=*-*-01 06:30:00 Europe/Paris", "OnCalendar=Mon *-*-* 06:30:00 Europe/Paris"]
    );
}

#[test]
fn units_exec_arg_escapes_for_systemd() {
    let cases: &[(&str, &str)] = &[
        ("true", "'true'"),
        ("echo it's", r"'echo it\'s'"),
        (r#"echo "$HOME" ${USER}"#, r#"'echo "$$HOME" $${USER}'"#),
        ("date +%F 100%", "'date +%%F 100%%'"),
        (r"printf 'a\nb\\'", r"'printf \'a\\nb\\\\\''"),
        ("a\nb\tc\rd\x07e", r"'a\nb\tc\rd\x07e'"),
        ("x ; y && z | w", "'x ; y && z | w'"),
        ("echo é ✓", "'echo é ✓'"),
    ];
    for (command, want) in cases {
        assert_eq!(exec_arg(command).unwrap(), *want, "command {command:?}");
    }
    assert_eq!(exec_arg(" ").unwrap_err().to_string(), "invalid command: the command is empty");
    assert_eq!(
        exec_arg("a\0b").unwrap_err().to_string(),
        "invalid command: the command contains a NUL byte"
    );
}

#[test]
fn units_timespan() {
    let cases: &[(Duration, &str)] = &[
        (Duration::ZERO, "0"),
        (Duration::from_nanos(1), "1us"),
        (Duration::from_millis(1500), "1s 500ms"),
        (Duration::from_secs(600), "10min"),
        (Duration::from_secs(5400), "1h 30min"),
        (Duration::from_secs(8 * 86_400), "8d"),
        (Duration::from_secs(86_400 + 61), "1d 1min 1s"),
    ];
    for (d, want) in cases {
        assert_eq!(timespan(*d), *want, "{d:?}");
    }
}

#[test]
fn units_owner_marker_round_trips() {
    let units = render(&spec("prod", "dr-drill", "0 4 * * 0", "true")).unwrap();
    assert_eq!(owner(&units.service.contents), Some(("prod", "dr-drill")));
    assert_eq!(owner(&units.timer.contents), Some(("prod", "dr-drill")));
    assert_eq!(owner("[Unit]\nDescription=someone else's\n"), None);
    assert_eq!(owner(&format!("{OWNER_MARKER_PREFIX}\n")), None);
}

#[test]
fn units_reject_unsafe_input() {
    let base = spec("prod", "x", "@daily", "true");
    let cases: Vec<(JobUnitSpec, &str)> = vec![
        (
            JobUnitSpec { env: "Prod".into(), ..base.clone() },
            "job `Prod/x`: invalid environment name `Prod`: use 1-64 lowercase letters, digits and dashes, starting with a letter",
        ),
        (
            JobUnitSpec { name: "a/b".into(), ..base.clone() },
            "job `prod/a/b`: invalid job name `a/b`: use 1-64 lowercase letters, digits and dashes, starting with a letter",
        ),
        (
            JobUnitSpec { user: Some("root\nExecStartPre=/bin/evil".into()), ..base.clone() },
            "job `prod/x`: invalid user name `root\nExecStartPre=/bin/evil`: use letters, digits, `_`, `-` and `.`",
        ),
        (
            JobUnitSpec { tz: Some("UTC\nOnCalendar=minutely".into()), ..base.clone() },
            "job `prod/x`: invalid time zone `UTC\nOnCalendar=minutely`: use letters, digits, `/`, `_`, `+` and `-`",
        ),
        (
            JobUnitSpec { description: Some("a\n[Service]".into()), ..base.clone() },
            "job `prod/x`: invalid description `a\n[Service]`: use one line of printable text not ending with `\\`",
        ),
        (
            JobUnitSpec { description: Some("ends with \\".into()), ..base.clone() },
            "job `prod/x`: invalid description `ends with \\`: use one line of printable text not ending with `\\`",
        ),
        (
            JobUnitSpec { timeout: Some(Duration::ZERO), ..base.clone() },
            "job `prod/x`: timeout must be greater than zero (leave it unset for no limit)",
        ),
        (
            JobUnitSpec { schedule: parse("0 3\n* * *").unwrap(), ..base.clone() },
            "job `prod/x`: invalid schedule `0 3\\n* * *`: it contains a newline or another control character",
        ),
        (
            JobUnitSpec { command: "".into(), ..base.clone() },
            "job `prod/x`: invalid command: the command is empty",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(render(&spec).unwrap_err().to_string(), want);
    }
}

#[test]
fn units_zero_randomized_delay_is_omitted() {
    let units = render(&JobUnitSpec {
        randomized_delay: Some(Duration::ZERO),
        ..spec("prod", "x", "@daily", "true")
    })
    .unwrap();
    assert!(!units.timer.contents.contains("RandomizedDelaySec"), "{}", units.timer.contents);
}

#[test]
fn foreign_units_are_read_for_their_timer_and_commands() {
    // (timer file name, contents, the unit it activates)
    let timers = [
        (
            "pgbackrest-full.timer",
            "[Unit]\nDescription=x\n[Timer]\nOnCalendar=Sun 02:00\n",
            "pgbackrest-full.service",
        ),
        ("drill.timer", "[Timer]\nUnit=dr-drill.service\nOnCalendar=weekly\n", "dr-drill.service"),
        (
            "odd.timer",
            "[Unit]\nUnit=not-this.service\n[Timer]\n# Unit=commented.service\n",
            "odd.service",
        ),
    ];
    for (name, text, want) in timers {
        assert_eq!(timer_unit(name, text), want, "{name}");
    }
    // (service contents, its ExecStart commands)
    let services: [(&str, &[&str]); 4] = [
        (
            "[Service]\nType=oneshot\nUser=postgres\nExecStart=/usr/bin/pgbackrest --stanza=veza --type=full backup\n",
            &["/usr/bin/pgbackrest --stanza=veza --type=full backup"],
        ),
        (
            "[Service]\nExecStart=-/bin/true\nExecStart = /bin/echo  two \n",
            &["-/bin/true", "/bin/echo  two"],
        ),
        ("[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\n", &["/bin/b"]),
        ("[Unit]\nExecStart=/bin/not-a-service-key\n[Install]\nWantedBy=timers.target\n", &[]),
    ];
    for (text, want) in services {
        assert_eq!(exec_starts(text), want, "{text:?}");
    }
    // (timer contents, the targets it is enabled into)
    let installs: [(&str, &[&str]); 3] = [
        ("[Timer]\nOnCalendar=daily\n[Install]\nWantedBy=timers.target\n", &["timers.target"]),
        (
            "[Install]\nWantedBy=timers.target multi-user.target\nWantedBy=x.target\n",
            &["timers.target", "multi-user.target", "x.target"],
        ),
        ("[Timer]\nWantedBy=not-install.target\n", &[]),
    ];
    for (text, want) in installs {
        assert_eq!(wanted_by(text), want, "{text:?}");
    }
}
