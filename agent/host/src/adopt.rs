//! Adoption's effects (`veza-agent adopt`): gathering the facts the pure assessment
//! (`veza_plan::adopt`) needs beyond the observation — read-only: local image
//! properties, snapshots, Ansible's color records in the edge's instance, each foreign
//! slot's health probe, foreign unit files — and executing an adoption: the marks
//! written through the Incus driver's ETag update path (nothing else changes: no restart,
//! no snapshot, no recreate), then each duplicate foreign timer replaced without a gap
//! (the job's units installed as the apply engine installs them, their timers checked
//! active, and only then the foreign timers disabled — their files kept).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use veza_model::live::{
    LiveInstance, LiveProfile, LiveState, UnitTarget, ansible_color_file, ansible_history_file,
};
use veza_plan::adopt::{
    AdoptState, Adoption, Facts, Needs, ProbeAnswer, ProbeNeed, ResourceAdoption,
};
use veza_plan::desired::DesiredJob;

use crate::http::Probe;
use crate::incus::{Incus, IncusError};
use crate::systemd::Units;

#[cfg(test)]
mod tests;

/// The largest record file read.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// The status and `X-Release` header in what the in-slot probe printed (`curl -D -` or
/// busybox `wget -S`): the last status line (`HTTP/1.1 200 OK`) and the headers after it.
pub fn parse_probe_output(text: &str) -> Option<ProbeAnswer> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let at = lines.iter().rposition(|l| l.starts_with("HTTP/"))?;
    let status = lines[at].split_whitespace().nth(1)?.parse().ok()?;
    let release = lines[at + 1..]
        .iter()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-release"))
        .map(|(_, v)| v.trim().to_string());
    Some(ProbeAnswer { status, release })
}

async fn probe_slot<I: Incus, P: Probe>(
    incus: &I,
    probe: &P,
    need: &ProbeNeed,
) -> Result<ProbeAnswer, String> {
    let timeout = Duration::from_millis(need.timeout_ms.max(100));
    if let Some(addr) = &need.loopback {
        let r = probe
            .get(addr, "localhost", &need.path, timeout, false)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(ProbeAnswer { status: r.status, release: r.headers.get("x-release").cloned() });
    }
    let out = incus
        .probe_inside(&need.instance, need.port, &need.path, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_probe_output(&text).ok_or_else(|| {
        let said = text.lines().last().unwrap_or_default().trim().to_string();
        if said.is_empty() {
            format!("no HTTP answer on port {}", need.port)
        } else {
            format!("no HTTP answer on port {} ({said})", need.port)
        }
    })
}

/// Reads a file of Ansible's in the edge's instance (or on the host); `None` when missing.
async fn read_record<I: Incus>(
    incus: &I,
    runs_in: &str,
    path: &str,
) -> Result<Option<String>, String> {
    if runs_in == "host" {
        return match std::fs::read(path) {
            Ok(b) if b.len() as u64 <= MAX_RECORD_BYTES => {
                Ok(Some(String::from_utf8_lossy(&b).into_owned()))
            }
            Ok(_) => Err(format!("`{path}` is larger than {MAX_RECORD_BYTES} bytes")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("reading `{path}`: {e}")),
        };
    }
    match incus.pull_file_max(runs_in, path, MAX_RECORD_BYTES).await {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(IncusError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Gathers what `needs` asks for. Read-only, but for the in-slot probes (one fixed HTTP
/// `GET` on the slot's loopback, `Incus::probe_inside`). A probe that fails is an answer
/// (the slot's release is then unverified); any other read that fails is an error.
pub async fn gather<I: Incus, U: Units, P: Probe>(
    incus: &I,
    units: &U,
    probe: &P,
    needs: &Needs,
) -> Result<Facts, String> {
    let mut facts = Facts::default();
    for alias in &needs.local_images {
        let props = incus.image_properties(alias).await.map_err(|e| e.to_string())?;
        if let Some(p) = props {
            facts.local_images.insert(alias.clone(), p);
        }
    }
    for name in &needs.snapshots {
        let n = incus.list_snapshots(name).await.map_err(|e| e.to_string())?.len();
        facts.snapshots.insert(name.clone(), n);
    }
    if let Some((runs_in, envs)) = &needs.records {
        for env in envs {
            if let Some(t) = read_record(incus, runs_in, &ansible_color_file(env)).await? {
                facts.color_records.insert(env.clone(), t);
            }
            if let Some(t) = read_record(incus, runs_in, &ansible_history_file(env)).await? {
                facts.color_histories.insert(env.clone(), t);
            }
        }
    }
    for need in &needs.probes {
        facts.probes.insert(need.instance.clone(), probe_slot(incus, probe, need).await);
    }
    for target in &needs.unit_targets {
        let files = units
            .foreign(target)
            .await
            .map_err(|e| format!("reading the unit files on {target}: {e}"))?;
        facts.foreign_units.insert(target.clone(), files);
    }
    Ok(facts)
}

/// What an adoption did, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Adopted {
    /// Profiles marked.
    pub profiles: Vec<String>,
    /// Instances marked.
    pub instances: Vec<String>,
    /// Timers replaced: `<foreign timer> on <target> -> <the job's timer> (disabled, kept)`.
    pub timers: Vec<String>,
}

impl std::fmt::Display for Adopted {
    /// `N profile(s), N instance(s), N timer(s)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} profile(s), {} instance(s), {} timer(s)",
            self.profiles.len(),
            self.instances.len(),
            self.timers.len()
        )
    }
}

impl Adopted {
    /// Nothing was done.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty() && self.instances.is_empty() && self.timers.is_empty()
    }
}

/// An adoption that stopped part-way: what was done, and why it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptFailure {
    /// Done before the failure.
    pub done: Adopted,
    /// What failed.
    pub error: String,
}

/// Sets the marks of each resource of `items` to adopt, as observed in `observed`, with
/// `mark`; each one marked is added to `done`. Stops at the first failure.
async fn mark_all<T>(
    kind: &str,
    items: &[ResourceAdoption],
    observed: &BTreeMap<String, T>,
    done: &mut Vec<String>,
    mut mark: impl AsyncFnMut(&ResourceAdoption, &T) -> Result<bool, IncusError>,
) -> Result<(), String> {
    for r in items.iter().filter(|r| r.state == AdoptState::Adopt) {
        let Some(seen) = observed.get(&r.name) else {
            return Err(format!("{kind} `{}` was not observed", r.name));
        };
        mark(r, seen).await.map_err(|e| e.to_string())?;
        done.push(r.name.clone());
    }
    Ok(())
}

/// Executes `adoption` (assessed on `live`): marks each profile and instance to adopt,
/// then, target by target, installs the units of the jobs a foreign timer duplicates
/// (from `jobs`, the desired state's), checks their timers are active, and only then
/// retires the foreign timers. Refuses a blocked adoption before touching anything.
pub async fn execute<I: Incus, U: Units>(
    incus: &I,
    units: &U,
    secrets: &veza_secrets::SecretValues,
    adoption: &Adoption,
    live: &LiveState,
    jobs: &[DesiredJob],
) -> Result<Adopted, AdoptFailure> {
    let mut done = Adopted::default();
    let fail = |done: &Adopted, error: String| AdoptFailure { done: done.clone(), error };
    if adoption.blocked() {
        return Err(fail(&done, "adoption is blocked by conflicts or refusals".to_string()));
    }
    let (profiles, instances) = (&adoption.profiles, &adoption.instances);
    let mark = async |p: &ResourceAdoption, seen: &LiveProfile| {
        incus.mark_profile(&p.name, &p.marks, seen).await
    };
    mark_all("profile", profiles, &live.profiles, &mut done.profiles, mark)
        .await
        .map_err(|e| fail(&done, e))?;
    let mark = async |i: &ResourceAdoption, seen: &LiveInstance| {
        incus.mark_instance(&i.name, &i.marks, seen).await
    };
    mark_all("instance", instances, &live.instances, &mut done.instances, mark)
        .await
        .map_err(|e| fail(&done, e))?;
    let mut targets: Vec<&UnitTarget> = Vec::new();
    for t in &adoption.timers {
        if !targets.contains(&&t.at) {
            targets.push(&t.at);
        }
    }
    for target in targets {
        let dups: Vec<_> = adoption.timers.iter().filter(|t| &t.at == target).collect();
        let wanted: BTreeSet<(&str, &str)> =
            dups.iter().map(|t| (t.env.as_str(), t.name.as_str())).collect();
        let js: Vec<&DesiredJob> = jobs
            .iter()
            .filter(|j| &j.target == target && wanted.contains(&(j.env.as_str(), j.name.as_str())))
            .collect();
        if js.len() != wanted.len() {
            return Err(fail(
                &done,
                format!(
                    "the jobs of the duplicate timers on {target} are not all in the manifests"
                ),
            ));
        }
        let files: Vec<(String, String)> =
            js.iter().flat_map(|j| j.files.iter().cloned()).collect();
        let timers: Vec<String> = js.iter().map(|j| j.timer.clone()).collect();
        let envs: Vec<_> = js.iter().filter_map(|j| j.environment.clone()).collect();
        crate::apply::install_units(units, secrets, target, &files, &timers, &envs)
            .await
            .map_err(|e| fail(&done, format!("installing the job units on {target}: {e}")))?;
        for timer in &timers {
            let active =
                units.is_active(target, timer).await.map_err(|e| fail(&done, e.to_string()))?;
            if !active {
                return Err(fail(
                    &done,
                    format!(
                        "{timer} on {target} is not active after its install: the foreign timers there are left running"
                    ),
                ));
            }
        }
        let mut retired: BTreeSet<&str> = BTreeSet::new();
        for d in dups {
            if !retired.insert(d.unit.as_str()) {
                continue;
            }
            units.retire(target, &d.unit).await.map_err(|e| fail(&done, e.to_string()))?;
            let ours = js
                .iter()
                .find(|j| j.env == d.env && j.name == d.name)
                .map_or(String::new(), |j| j.timer.clone());
            done.timers.push(format!("{} on {target} -> {ours} (disabled, kept)", d.unit));
        }
    }
    Ok(done)
}
