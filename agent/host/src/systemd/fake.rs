//! In-memory [`Units`] for tests: unit files per target, a record of every change, and an
//! injectable rejection.

use std::collections::BTreeMap;

use veza_plan::live::UnitTarget;

use super::{JobRun, SystemdError, Units};
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
        _target: &UnitTarget,
        _service: &str,
        _timer: &str,
    ) -> Result<JobRun, SystemdError> {
        Ok(JobRun::default())
    }
}
