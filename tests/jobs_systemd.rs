//! Scheduled jobs against a real systemd: a Debian 12 system container from the test kit,
//! marked `user.veza.managed=true` (the Incus driver refuses exec and push in unmarked
//! instances), receives the units `veza_model::units::render` produces through
//! `veza_host::systemd::Systemd` over the real Incus client, as the reconciler does for a
//! job with `on: <instance>`.
//!
//! Checked: install (`list-timers --output=json` next elapses equal
//! `CronSchedule::next_after`, timers enabled and active), a schedule change updated in
//! place, pruning a job that left, units without the ownership marker never listed nor
//! removed, and job results as `status` judges them (the agent's `jobs` module, compiled
//! in from `agent/bin/jobs.rs`): a failed run with its exit status, a successful one,
//! staleness against `max_success_age`, the last success remembered across a failure, and
//! a run started by the timer itself. Timings are printed (`--nocapture`).

#[allow(dead_code)] // the verdict functions only; the binary uses the rest
#[path = "../agent/bin/jobs.rs"]
mod agent_jobs;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use veza_host::incus::IncusClient;
use veza_host::systemd::{JobRun, Systemd, Units};
use veza_model::live::{MARK_MANAGED, UnitTarget};
use veza_model::schedule::{self, CronSchedule};
use veza_model::units::{self, JobUnitSpec, JobUnits};
use veza_testkit::TestContainer;
use veza_testkit::incus::{DEBIAN_IMAGE, require_incus};

const UNIT_DIR: &str = "/etc/systemd/system";

/// A Debian container owned by the agent (and by this test process), with systemd running,
/// plus a runtime and client to drive it. The container is deleted on drop.
struct Fixture {
    container: TestContainer,
    rt: tokio::runtime::Runtime,
    incus: IncusClient,
    /// Never written: every target here is an instance; the driver still wants a directory.
    host_dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        require_incus().expect("real test host");
        let container = TestContainer::spec(DEBIAN_IMAGE)
            .config(MARK_MANAGED, "true")
            .create()
            .expect("create the Debian container");
        container.wait_for_systemd(Duration::from_secs(60)).expect("systemd in the container");
        Fixture {
            container,
            rt: veza_host::incus::runtime().expect("tokio runtime"),
            incus: IncusClient::local(),
            host_dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    fn units(&self) -> Systemd<'_, IncusClient> {
        Systemd::new(&self.incus, self.host_dir.path())
    }

    fn target(&self) -> UnitTarget {
        UnitTarget::Instance(self.container.name().to_string())
    }

    fn list(&self) -> BTreeMap<String, String> {
        self.rt.block_on(self.units().list(&self.target())).expect("Units::list")
    }

    fn install(&self, jobs: &[&JobUnits]) -> Duration {
        let files: Vec<(String, String)> = jobs.iter().flat_map(|j| files(j)).collect();
        let timers: Vec<String> = jobs.iter().map(|j| j.timer.name.clone()).collect();
        let t = Instant::now();
        self.rt
            .block_on(self.units().install(&self.target(), &files, &timers))
            .expect("Units::install");
        t.elapsed()
    }

    fn remove(&self, names: &[String]) -> Duration {
        let t = Instant::now();
        self.rt.block_on(self.units().remove(&self.target(), names)).expect("Units::remove");
        t.elapsed()
    }

    fn job_run(&self, job: &JobUnits) -> (JobRun, Duration) {
        let t = Instant::now();
        let run = self
            .rt
            .block_on(self.units().job_run(&self.target(), &job.service.name, &job.timer.name))
            .expect("Units::job_run");
        (run, t.elapsed())
    }

    /// `systemctl ARGS` inside; its trimmed stdout and whether it exited 0.
    fn systemctl(&self, args: &[&str]) -> (String, bool) {
        let mut argv = vec!["systemctl"];
        argv.extend_from_slice(args);
        let out = self.container.exec(&argv).expect("incus exec systemctl");
        (out.stdout_str().trim().to_string(), out.status.success())
    }

    /// One property of one unit, from `systemctl show -p NAME --value`.
    fn property(&self, unit: &str, name: &str) -> String {
        self.container
            .exec_ok(&["systemctl", "show", "-p", name, "--value", unit])
            .expect("systemctl show")
            .trim()
            .to_string()
    }

    fn exists(&self, path: &str) -> bool {
        self.container.exec(&["test", "-e", path]).expect("incus exec test").status.success()
    }

    /// `systemctl list-timers --all --output=json`: timer → next elapse (µs since the epoch).
    fn list_timers(&self) -> BTreeMap<String, Option<i64>> {
        let text = self
            .container
            .exec_ok(&["systemctl", "list-timers", "--all", "--no-pager", "--output=json"])
            .expect("systemctl list-timers");
        let rows: Vec<Value> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("list-timers did not print a JSON array ({e}): {text}"));
        rows.iter()
            .map(|r| {
                let unit = r["unit"].as_str().unwrap_or_else(|| panic!("row without unit: {r}"));
                (unit.to_string(), r["next"].as_i64())
            })
            .collect()
    }

    /// The timer is enabled and active, and systemd's next elapse is the schedule's next
    /// instant (exactly: no random delay, `AccuracySec=` only moves the actual firing).
    fn assert_scheduled(&self, job: &JobUnits, schedule: &CronSchedule) {
        let timer = &job.timer.name;
        assert_eq!(self.systemctl(&["is-enabled", timer]), ("enabled".into(), true), "{timer}");
        assert_eq!(self.systemctl(&["is-active", timer]), ("active".into(), true), "{timer}");
        // An elapse may pass while we look (up to 1 s late with AccuracySec=1s): accept
        // the next instant from just before or just after the query.
        let before = Utc::now() - chrono::Duration::seconds(2);
        let timers = self.list_timers();
        let after = Utc::now();
        let next = timers
            .get(timer)
            .unwrap_or_else(|| panic!("{timer} is not in list-timers: {timers:?}"))
            .unwrap_or_else(|| panic!("{timer} has no next elapse"));
        let want: Vec<DateTime<Utc>> =
            [before, after].iter().flat_map(|t| schedule.next_after(*t, 1)).collect();
        assert!(
            want.iter().any(|w| w.timestamp_micros() == next),
            "{timer}: systemd's next elapse {} is not the schedule's `{schedule}` next instant {want:?}",
            DateTime::from_timestamp_micros(next)
                .map_or_else(|| next.to_string(), |t| t.to_rfc3339()),
        );
    }
}

fn spec(name: &str, cron: &str, command: &str) -> JobUnitSpec {
    let schedule = schedule::parse(cron).expect("test schedule");
    JobUnitSpec {
        timeout: Some(Duration::from_secs(60)),
        ..JobUnitSpec::new("test", name, schedule, command)
    }
}

fn render(spec: &JobUnitSpec) -> JobUnits {
    units::render(spec).expect("render units")
}

fn files(job: &JobUnits) -> Vec<(String, String)> {
    vec![
        (job.service.name.clone(), job.service.contents.clone()),
        (job.timer.name.clone(), job.timer.contents.clone()),
    ]
}

fn as_map(jobs: &[&JobUnits]) -> BTreeMap<String, String> {
    jobs.iter().flat_map(|j| files(j)).collect()
}

fn unix(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap_or_else(|e| panic!("{rfc3339}: {e}")).timestamp()
}

#[test]
fn jobs_systemd_install_change_and_prune_in_a_container() {
    let f = Fixture::new();
    assert!(f.list().is_empty(), "a fresh container has no agent units");

    // Install two jobs.
    let backup_spec = spec("backup", "30 2 * * *", "echo backup >> /var/log/veza-test-backup.log");
    let tick_spec = spec("tick", "*/15 * * * *", "true");
    let backup = render(&backup_spec);
    let tick = render(&tick_spec);
    let install_two = f.install(&[&backup, &tick]);
    assert_eq!(f.list(), as_map(&[&backup, &tick]));
    f.assert_scheduled(&backup, &backup_spec.schedule);
    f.assert_scheduled(&tick, &tick_spec.schedule);
    assert_eq!(f.property(&backup.service.name, "LoadState"), "loaded");
    assert_eq!(f.property(&backup.timer.name, "Persistent"), "yes");
    assert_eq!(f.property(&backup.timer.name, "AccuracyUSec"), "1s");

    // Its last elapse 40 days ago, as a `Persistent=` stamp says (every 40 days hold a 1st
    // of the month and a Monday): the new schedule's elapses since then are not "missed".
    let stamp = format!("/var/lib/systemd/timers/stamp-{}", backup.timer.name);
    f.container.exec_ok(&["touch", "-d", "40 days ago", &stamp]).expect("the stamp");

    // Change one schedule (to cron's day-of-month OR day-of-week: two OnCalendar= lines):
    // updated in place, systemd reloaded, the new next elapse in effect, and no run for
    // an elapse of the new schedule before the change.
    let backup2_spec =
        spec("backup", "0 5 1 * mon", "echo backup >> /var/log/veza-test-backup.log");
    let backup2 = render(&backup2_spec);
    assert_ne!(backup2.timer.contents, backup.timer.contents);
    let install_change = f.install(&[&backup2]);
    assert_eq!(f.list(), as_map(&[&backup2, &tick]));
    let path = format!("{UNIT_DIR}/{}", backup2.timer.name);
    assert_eq!(f.container.exec_ok(&["cat", &path]).unwrap(), backup2.timer.contents);
    for unit in [&backup2.timer.name, &backup2.service.name] {
        assert_eq!(f.property(unit, "NeedDaemonReload"), "no", "{unit}");
    }
    let calendar = f.property(&backup2.timer.name, "TimersCalendar");
    for line in backup2_spec.schedule.on_calendar(None) {
        assert!(calendar.contains(&format!("OnCalendar={line} ;")), "{line} not in {calendar}");
    }
    f.assert_scheduled(&backup2, &backup2_spec.schedule);
    f.assert_scheduled(&tick, &tick_spec.schedule);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        f.property(&backup2.service.name, "ExecMainStartTimestampMonotonic"),
        "0",
        "the changed schedule fired at once for a run it took as missed"
    );
    assert!(!f.exists("/var/log/veza-test-backup.log"));

    // Units the agent does not own, even named like its own: one without the marker, one
    // with the marker text below the first line. Never listed, never removed.
    let foreign_service =
        "[Unit]\nDescription=someone else's job\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n";
    let foreign_timer = "[Unit]\nDescription=someone else's timer\n\n[Timer]\nOnCalendar=*-*-* 03:00:00 UTC\n\n[Install]\nWantedBy=timers.target\n";
    let sneaky = format!(
        "[Unit]\nDescription=not ours either\n{}test/sneaky\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n",
        units::OWNER_MARKER_PREFIX
    );
    let foreign = [
        ("veza-job-test-foreign.service", foreign_service.to_string()),
        ("veza-job-test-foreign.timer", foreign_timer.to_string()),
        ("veza-job-test-sneaky.service", sneaky),
    ];
    for (name, contents) in &foreign {
        f.container.push_bytes(contents.as_bytes(), &format!("{UNIT_DIR}/{name}"), 0o644).unwrap();
    }
    f.container.exec_ok(&["systemctl", "daemon-reload"]).unwrap();
    f.container.exec_ok(&["systemctl", "enable", "--now", "veza-job-test-foreign.timer"]).unwrap();
    assert_eq!(f.list(), as_map(&[&backup2, &tick]), "foreign units must not be listed");

    // Prune the job that left the manifests, as the planner does: what `list` returned
    // minus what is wanted.
    let wanted = as_map(&[&backup2]);
    let gone: Vec<String> = f.list().into_keys().filter(|n| !wanted.contains_key(n)).collect();
    assert_eq!(gone, [tick.service.name.clone(), tick.timer.name.clone()]);
    let prune_one = f.remove(&gone);
    assert_eq!(f.list(), wanted);
    for name in &gone {
        assert!(!f.exists(&format!("{UNIT_DIR}/{name}")), "{name} still exists");
        assert_eq!(f.property(name, "LoadState"), "not-found", "{name}");
    }
    assert!(!f.exists(&format!("{UNIT_DIR}/timers.target.wants/{}", tick.timer.name)));
    assert!(!f.list_timers().contains_key(&tick.timer.name));
    assert!(!f.systemctl(&["is-enabled", &tick.timer.name]).1);
    f.assert_scheduled(&backup2, &backup2_spec.schedule);

    // Every job left: only the agent's units go.
    let all: Vec<String> = f.list().into_keys().collect();
    f.remove(&all);
    assert!(f.list().is_empty());
    assert!(!f.list_timers().contains_key(&backup2.timer.name));
    for (name, contents) in &foreign {
        assert_eq!(
            &f.container.exec_ok(&["cat", &format!("{UNIT_DIR}/{name}")]).unwrap(),
            contents
        );
    }
    assert_eq!(
        f.systemctl(&["is-enabled", "veza-job-test-foreign.timer"]),
        ("enabled".into(), true)
    );
    assert_eq!(f.systemctl(&["is-active", "veza-job-test-foreign.timer"]), ("active".into(), true));

    let stamp = format!("/var/lib/systemd/timers/stamp-{}", tick.timer.name);
    eprintln!(
        "jobs in container: install 2 jobs (4 units) {install_two:?}, change 1 job {install_change:?}, prune 1 job {prune_one:?}; Persistent stamp of the pruned timer left behind: {}",
        f.exists(&stamp)
    );
}

/// A job's environment (a secret among it) reaches its command through the root-only
/// file beside the unit (`EnvironmentFile=%Y/…`), never through the unit; the file goes
/// with the job.
fn job_environment_reaches_the_command_only(f: &Fixture) {
    let value = "k3y w$th \"quotes\" and 'single' \\ too";
    let mut job = render(&spec(
        "with-secret",
        "0 3 * * *",
        "test \"$CIPHER_PASS\" = \"$(cat /var/tmp/veza-test-expected)\" && echo ok > /var/tmp/veza-test-secret",
    ));
    let vars = BTreeMap::from([("CIPHER_PASS".to_string(), "{secret:cipher}".to_string())]);
    units::with_environment(&mut job, &vars, &BTreeMap::from([("cipher".into(), "ab12".into())]));
    assert!(!job.service.contents.contains(value), "{}", job.service.contents);
    let env_file = units::environment_file_name(&job);
    let text = veza_model::template::render_env_file(&vars, |_| Some(value)).expect("env file");
    f.container.push_bytes(value.as_bytes(), "/var/tmp/veza-test-expected", 0o600).expect("push");
    f.rt.block_on(f.units().install_private(&f.target(), &[(env_file.clone(), text)], &[]))
        .expect("install_private");
    f.install(&[&job]);
    let out = f.container.exec(&["systemctl", "start", &job.service.name]).expect("start");
    assert!(out.status.success(), "the job failed: {}", out.stderr_str());
    assert!(f.exists("/var/tmp/veza-test-secret"), "the command did not see its variable");
    let path = format!("{UNIT_DIR}/{env_file}");
    let mode = f.container.exec_ok(&["stat", "-c", "%a %u", &path]).expect("stat");
    assert_eq!(mode.trim(), "600 0");
    assert!(!f.list().contains_key(&env_file), "an environment file is not a unit");
    f.remove(&[job.service.name.clone(), job.timer.name.clone()]);
    assert!(!f.exists(&path), "the environment file leaves with its job");
}

#[test]
fn jobs_systemd_results_failure_success_and_staleness() {
    let f = Fixture::new();
    job_environment_reaches_the_command_only(&f);
    let now = || Utc::now().timestamp();
    let fails = render(&spec("fails", "0 3 * * *", "echo about to fail; exit 3"));
    let works_spec = spec("works", "0 3 * * *", "echo ok > /var/tmp/veza-test-works");
    let works = render(&works_spec);
    // A timer that fires at the next minute boundary: proof that the timer itself runs
    // the job, checked at the end.
    let minutely =
        render(&spec("minutely", "* * * * *", "echo tick >> /var/tmp/veza-test-minutely"));
    let installed_at = Utc::now();
    let install_three = f.install(&[&fails, &works, &minutely]);
    let max_age = Some(Duration::from_secs(8 * 86_400));
    let mut latencies = Vec::new();

    // Installed, never ran: no result, the timer active with a next elapse; not a problem
    // even with max_success_age (the agent has only just seen it).
    let (never, took) = f.job_run(&works);
    latencies.push(took);
    assert_eq!(
        (never.result.as_str(), never.exit_status, never.last_start.as_str()),
        ("", None, "")
    );
    assert_eq!(never.timer_state, "active");
    let rec = agent_jobs::record(f.container.name(), "0 3 * * *", max_age, Ok(&never), None, now());
    assert_eq!(rec.last_result, None);
    let next = rec.next.as_deref().unwrap_or_else(|| panic!("no next elapse: {never:?}"));
    assert_eq!(unix(next), works_spec.schedule.next_after(installed_at, 1)[0].timestamp());
    assert_eq!(agent_jobs::health(&rec, now()), None);

    // A failing run: `systemctl start` fails, systemd records exit-code and status 3.
    let out = f.container.exec(&["systemctl", "start", &fails.service.name]).unwrap();
    assert!(!out.status.success(), "starting a job that exits 3 must fail");
    let (failed, took) = f.job_run(&fails);
    latencies.push(took);
    assert_eq!((failed.result.as_str(), failed.exit_status), ("exit-code", Some(3)), "{failed:?}");
    let started = agent_jobs::systemd_time(&failed.last_start)
        .unwrap_or_else(|| panic!("last start not read: {failed:?}"));
    assert!((started.timestamp() - now()).abs() <= 10, "{started} is not now");
    let rec = agent_jobs::record("c", "0 3 * * *", None, Ok(&failed), None, now());
    let want = "last run failed (exit-code, exit status 3)";
    assert_eq!(rec.problem.as_deref(), Some(want));
    assert_eq!(agent_jobs::health(&rec, now()).as_deref(), Some(want));
    assert_eq!(f.systemctl(&["is-failed", &fails.service.name]).0, "failed");

    // A successful run sets the last start and the last success.
    f.container.exec_ok(&["systemctl", "start", &works.service.name]).unwrap();
    let (ok, took) = f.job_run(&works);
    latencies.push(took);
    assert_eq!((ok.result.as_str(), ok.exit_status), ("success", Some(0)), "{ok:?}");
    let rec = agent_jobs::record("c", "0 3 * * *", max_age, Ok(&ok), None, now());
    let success_at = rec.last_success_at.unwrap_or_else(|| panic!("no last success: {ok:?}"));
    assert!((success_at - now()).abs() <= 10, "last success {success_at} is not now");
    assert_eq!(rec.last_start.as_deref().map(unix), Some(success_at));
    assert_eq!((rec.problem.as_deref(), agent_jobs::health(&rec, now())), (None, None));
    assert_eq!(f.container.exec_ok(&["cat", "/var/tmp/veza-test-works"]).unwrap(), "ok\n");

    // Staleness: the same record judged later than max_success_age.
    let hourly = agent_jobs::record(
        "c",
        "0 3 * * *",
        Some(Duration::from_secs(60)),
        Ok(&ok),
        None,
        success_at,
    );
    assert_eq!(agent_jobs::health(&hourly, success_at + 60), None);
    assert_eq!(
        agent_jobs::health(&hourly, success_at + 3601).as_deref(),
        Some("last success 1 h ago (max 1 min)")
    );

    // The same job now fails (new command, updated in place): the failure is reported and
    // the earlier success is remembered from the previous record.
    let works_broken = render(&spec("works", "0 3 * * *", "exit 4"));
    f.install(&[&works_broken]);
    let out = f.container.exec(&["systemctl", "start", &works.service.name]).unwrap();
    assert!(!out.status.success());
    let (broken, took) = f.job_run(&works);
    latencies.push(took);
    assert_eq!((broken.result.as_str(), broken.exit_status), ("exit-code", Some(4)));
    let after = agent_jobs::record("c", "0 3 * * *", max_age, Ok(&broken), Some(&rec), now());
    assert_eq!(after.last_success_at, Some(success_at));
    assert_eq!(after.problem.as_deref(), Some("last run failed (exit-code, exit status 4)"));

    // A run in progress: systemd has already set `Result=success` for it; it is running,
    // with no result, and the failure before it still stands.
    let slow = render(&spec("slow", "0 3 * * *", "sleep 30"));
    f.install(&[&slow]);
    f.container.exec_ok(&["systemctl", "start", "--no-block", &slow.service.name]).unwrap();
    let mut run = f.job_run(&slow).0;
    for _ in 0..50 {
        if run.running && !run.running_since.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        run = f.job_run(&slow).0;
    }
    assert!(run.running && !run.running_since.is_empty(), "{run:?}");
    assert_eq!((run.result.as_str(), run.exit_status, run.last_start.as_str()), ("", None, ""));
    let during = agent_jobs::record("c", "0 3 * * *", max_age, Ok(&run), Some(&after), now());
    assert_eq!(during.last_success_at, Some(success_at), "no success from a run in progress");
    assert_eq!(during.problem.as_deref(), Some("last run failed (exit-code, exit status 4)"));
    f.container.exec_ok(&["systemctl", "stop", &slow.service.name]).unwrap();

    // A job on an instance that does not exist: status unknown, not a crash.
    let missing = UnitTarget::Instance("vt-no-such-instance".into());
    let err =
        f.rt.block_on(f.units().job_run(&missing, &works.service.name, &works.timer.name))
            .unwrap_err();
    let rec = agent_jobs::record(
        "vt-no-such-instance",
        "0 3 * * *",
        None,
        Err(err.to_string()),
        None,
        now(),
    );
    assert!(rec.problem.as_deref().is_some_and(|p| p.starts_with("status unknown: ")), "{rec:?}");

    // The timer itself runs the minutely job at the next minute boundary.
    let deadline = installed_at + chrono::Duration::seconds(75);
    let fired = loop {
        let (run, took) = f.job_run(&minutely);
        latencies.push(took);
        if !run.last_start.is_empty() {
            break run;
        }
        assert!(Utc::now() < deadline, "the minutely timer did not fire within 75 s: {run:?}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert_eq!(fired.result, "success", "{fired:?}");
    let started = agent_jobs::systemd_time(&fired.last_start).unwrap();
    assert!(
        started > installed_at && started.timestamp().rem_euclid(60) <= 1,
        "fired at {started}: expected a minute boundary (AccuracySec=1s) after {installed_at}"
    );
    assert!(f.list_timers()[&minutely.timer.name].is_some());

    latencies.sort();
    eprintln!(
        "jobs in container: install 3 jobs (6 units) {install_three:?}; job_run (2 execs) min {:?} median {:?} max {:?} over {} calls",
        latencies[0],
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        latencies.len()
    );
}
