//! In-memory [`Units`] for tests: unit files per target, a record of every change, an
//! injectable rejection, and each job service's runs as systemd reports them (`Result=`
//! set back to `success` when a run starts, read through the real driver's
//! [`parse_job_run`](super::parse_job_run) from the properties it asks for).

use std::collections::BTreeMap;

use veza_plan::live::UnitTarget;

use super::{JobRun, SERVICE_PROPERTIES, SystemdError, TIMER_PROPERTIES, Units, parse_job_run};
use crate::fake_state::FakeState;

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<UnitTarget, BTreeMap<String, String>>,
    /// Unit files without the marker (someone else's), by target.
    foreign: BTreeMap<UnitTarget, BTreeMap<String, String>>,
    /// Timers enabled (and active): installed ones, and someone else's until retired.
    active: Vec<(UnitTarget, String)>,
    /// Root-only files beside the units (every target), by name.
    private: BTreeMap<String, String>,
    calls: Vec<String>,
    reject: Option<String>,
    /// What systemd knows of each job service's last run.
    runs: BTreeMap<(UnitTarget, String), ServiceRun>,
}

/// A service's last run as systemd keeps it: times in unix seconds (the fake's boot is
/// the epoch, so its monotonic clock is the same number in µs).
#[derive(Debug, Clone)]
struct ServiceRun {
    /// `ActiveState=`.
    state: &'static str,
    result: String,
    status: i32,
    start: Option<i64>,
    exit: Option<i64>,
}

impl ServiceRun {
    /// Every property the fake knows, as `systemctl show` prints them.
    fn show(&self) -> String {
        let realtime = |t: Option<i64>| {
            t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.format("%a %Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default()
        };
        let monotonic = |t: Option<i64>| t.map_or(0, |t| t.saturating_mul(1_000_000));
        format!(
            "Type=oneshot\nResult={}\nExecMainStartTimestamp={}\nExecMainStartTimestampMonotonic={}\nExecMainExitTimestamp={}\nExecMainExitTimestampMonotonic={}\nExecMainStatus={}\nLoadState=loaded\nActiveState={}\n",
            self.result,
            realtime(self.start),
            monotonic(self.start),
            realtime(self.exit),
            monotonic(self.exit),
            self.status,
            self.state,
        )
    }
}

impl Default for ServiceRun {
    /// A service that has not run since boot.
    fn default() -> ServiceRun {
        ServiceRun {
            state: "inactive",
            result: "success".into(),
            status: 0,
            start: None,
            exit: None,
        }
    }
}

/// The lines of `all` (`systemctl show` of every property) for the properties `asked`,
/// as `systemctl show -p A,B` prints them.
pub(super) fn asked_only(all: &str, asked: &[&str]) -> String {
    all.lines()
        .filter(|l| l.split_once('=').is_some_and(|(k, _)| asked.contains(&k)))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The fake units. Safe to share between threads.
#[derive(Debug, Default)]
pub struct FakeUnits {
    state: FakeState<State>,
}

impl FakeUnits {
    /// No units anywhere.
    pub fn new() -> FakeUnits {
        FakeUnits::default()
    }

    /// Puts someone else's unit file (no marker) at `target`, enabled and active.
    pub fn set_foreign(&self, target: &UnitTarget, name: &str, contents: &str) {
        let mut st = self.state.lock();
        st.foreign.entry(target.clone()).or_default().insert(name.into(), contents.into());
        st.active.push((target.clone(), name.to_string()));
    }

    /// Someone else's unit files at `target` (retired ones too: they stay, disabled).
    pub fn foreign_files(&self, target: &UnitTarget) -> BTreeMap<String, String> {
        self.state.lock().foreign.get(target).cloned().unwrap_or_default()
    }

    /// Every install and remove so far, as `install TARGET: FILES; enable TIMERS` and
    /// `remove TARGET: NAMES`; adoption's reads and retirements as `is-active TARGET:
    /// UNIT` and `retire TARGET: UNIT`.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().calls.clone()
    }

    /// The root-only files beside the units (jobs' environment files), by name.
    pub fn private_files(&self) -> BTreeMap<String, String> {
        self.state.lock().private.clone()
    }

    /// Installs are rejected from now on, as `systemd-analyze verify` would reject them.
    pub fn reject_installs(&self, diagnostics: &str) {
        self.state.lock().reject = Some(diagnostics.to_string());
    }

    /// A run of `service` at `target` starts at `at` (unix seconds), as systemd starts
    /// one: `activating`, `Result=` set back to `success`, the main process's exit
    /// forgotten.
    pub fn start_run(&self, target: &UnitTarget, service: &str, at: i64) {
        let run = ServiceRun {
            state: "activating",
            result: "success".into(),
            status: 0,
            start: Some(at),
            exit: None,
        };
        self.state.lock().runs.insert((target.clone(), service.to_string()), run);
    }

    /// The run of `service` at `target` in progress ends at `at` with `result` (`success`,
    /// `exit-code`, …) and the main process's exit `status`: `inactive`, or `failed`.
    pub fn finish_run(
        &self,
        target: &UnitTarget,
        service: &str,
        result: &str,
        status: i32,
        at: i64,
    ) {
        let mut st = self.state.lock();
        let run = st.runs.entry((target.clone(), service.to_string())).or_default();
        run.state = if result == "success" { "inactive" } else { "failed" };
        run.result = result.to_string();
        run.status = status;
        run.exit = Some(at);
    }

    /// The target rebooted: every service there forgot its last run.
    pub fn reboot(&self, target: &UnitTarget) {
        self.state.lock().runs.retain(|(t, _), _| t != target);
    }
}

/// Whether `unit` is enabled (and active) at `target` in the fake.
fn st_enabled(active: &[(UnitTarget, String)], target: &UnitTarget, unit: &str) -> bool {
    active.iter().any(|(t, u)| t == target && u == unit)
}

impl Units for FakeUnits {
    async fn list(&self, target: &UnitTarget) -> Result<BTreeMap<String, String>, SystemdError> {
        Ok(self.state.lock().files.get(target).cloned().unwrap_or_default())
    }

    async fn install(
        &self,
        target: &UnitTarget,
        files: &[(String, String)],
        timers: &[String],
    ) -> Result<(), SystemdError> {
        let mut st = self.state.lock();
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        st.calls.push(format!(
            "install {target}: {}; enable {}",
            names.join(" "),
            timers.join(" ")
        ));
        if let Some(diagnostics) = st.reject.clone() {
            return Err(SystemdError::Verify { target: target.to_string(), diagnostics });
        }
        st.files.entry(target.clone()).or_default().extend(files.iter().cloned());
        st.active.extend(timers.iter().map(|t| (target.clone(), t.clone())));
        Ok(())
    }

    async fn install_private(
        &self,
        target: &UnitTarget,
        files: &[(String, String)],
        stale: &[String],
    ) -> Result<(), SystemdError> {
        let names: Vec<&str> = files.iter().map(|(name, _)| name.as_str()).collect();
        let mut st = self.state.lock();
        st.calls.push(format!(
            "install private {target}: {}; remove {}",
            names.join(" "),
            stale.join(" ")
        ));
        st.private.extend(files.iter().cloned());
        for name in stale {
            st.private.remove(name);
        }
        Ok(())
    }

    async fn remove(&self, target: &UnitTarget, names: &[String]) -> Result<(), SystemdError> {
        let mut st = self.state.lock();
        st.calls.push(format!("remove {target}: {}", names.join(" ")));
        if let Some(files) = st.files.get_mut(target) {
            for name in names {
                files.remove(name);
            }
        }
        Ok(())
    }

    async fn foreign(&self, target: &UnitTarget) -> Result<BTreeMap<String, String>, SystemdError> {
        let (files, active) = {
            let st = self.state.lock();
            (st.foreign.get(target).cloned().unwrap_or_default(), st.active.clone())
        };
        Ok(files
            .iter()
            .filter(|(name, _)| name.ends_with(".timer"))
            .filter(|(name, _)| st_enabled(&active, target, name))
            .flat_map(|(name, text)| {
                let service = veza_model::units::timer_unit(name, text);
                let svc = files.get(&service).map(|s| (service, s.clone()));
                std::iter::once((name.clone(), text.clone())).chain(svc)
            })
            .collect())
    }

    async fn is_active(&self, target: &UnitTarget, unit: &str) -> Result<bool, SystemdError> {
        let mut st = self.state.lock();
        st.calls.push(format!("is-active {target}: {unit}"));
        Ok(st.active.iter().any(|(t, u)| t == target && u == unit))
    }

    async fn retire(&self, target: &UnitTarget, unit: &str) -> Result<(), SystemdError> {
        let mut st = self.state.lock();
        st.calls.push(format!("retire {target}: {unit}"));
        st.active.retain(|(t, u)| !(t == target && u == unit));
        Ok(())
    }

    async fn job_run(
        &self,
        target: &UnitTarget,
        service: &str,
        timer: &str,
    ) -> Result<JobRun, SystemdError> {
        let st = self.state.lock();
        let run = st.runs.get(&(target.clone(), service.to_string())).cloned().unwrap_or_default();
        let timer_state = if st_enabled(&st.active, target, timer) { "active" } else { "inactive" };
        let timer_all =
            format!("NextElapseUSecRealtime=\nLoadState=loaded\nActiveState={timer_state}\n");
        Ok(parse_job_run(
            &asked_only(&run.show(), &SERVICE_PROPERTIES),
            &asked_only(&timer_all, &TIMER_PROPERTIES),
        ))
    }
}
