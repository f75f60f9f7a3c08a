//! The systemd driver: install, update and prune the agent's job units, on the host
//! (files in the unit directory + `systemctl`) or inside an Incus instance (file push +
//! exec), and read each job's last result.
//!
//! Only units whose first line carries the agent's ownership marker are listed, changed
//! or removed; anything else in the unit directory is never touched: installing over a
//! file without the marker is refused ([`SystemdError::Foreign`]). Every unit is
//! checked with `systemd-analyze verify` where it will run before it is enabled, and any
//! diagnostic counts as a failure (verify exits 0 on unknown keys). Any failure of an
//! install once it began writing (a write, `verify`, `daemon-reload`, enabling or
//! restarting a timer) puts the previous files back, so the next plan, which compares
//! contents, plans the install again. [`fake`] holds in-memory units for tests.
//!
//! For adoption only, the driver also reads the unit files *without* the marker (enabled
//! timers and the services they start: `foreign.rs`, read-only, through Incus's file API
//! inside an instance, so an instance the agent does not own yet can be read) and retires
//! a foreign timer once the agent's own replacement is active (`disable --now`; its files
//! stay where they are).

pub mod fake;
mod foreign;
mod run;

pub use run::{JobRun, SERVICE_PROPERTIES, TIMER_PROPERTIES, parse_job_run};

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use veza_model::units::OWNER_MARKER_PREFIX;
use veza_plan::live::UnitTarget;

use crate::incus::{ExecRequest, FilePush, Incus};
use crate::process::Cmd;

/// The start of every job unit and environment file the agent writes.
const JOB_UNIT_PREFIX: &str = "veza-job-";

/// Where systemd keeps the last elapse of each system timer with `Persistent=true`
/// (`stamp-NAME.timer`), read when the timer starts.
const TIMER_STAMPS: &str = "/var/lib/systemd/timers";

/// Why a unit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// A command failed (locally).
    #[error(transparent)]
    Command(#[from] crate::process::ProcessError),
    /// A command inside an instance failed.
    #[error("in instance `{instance}`: `{command}` exited {code}: {stderr}")]
    Exec { instance: String, command: String, code: i32, stderr: String },
    /// The Incus driver failed.
    #[error(transparent)]
    Incus(#[from] crate::incus::IncusError),
    /// `systemd-analyze verify` reported a problem.
    #[error("units rejected by `systemd-analyze verify` on {target}: {diagnostics}")]
    Verify { target: String, diagnostics: String },
    /// A unit file of that name exists and is not the agent's (no marker on its first
    /// line): it is never overwritten.
    #[error(
        "refusing to overwrite `{path}` on {target}: the file exists without the veza-agent marker on its first line, so it belongs to someone else (hint: rename the job in the manifest, or move that file away if nobody needs it)"
    )]
    Foreign { target: String, path: String },
    /// Adoption was asked to retire a unit that is the agent's own.
    #[error(
        "refusing to retire `{path}` on {target}: it carries the veza-agent marker (remove a job from the manifests instead)"
    )]
    Ours { target: String, path: String },
    /// A file could not be written or read on the host.
    #[error("unit directory `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An install failed after it began writing, and undoing it (the previous unit files
    /// put back, new timers disabled, systemd reloaded) did not fully work either: what is
    /// left may look installed to the next plan.
    #[error("{error}; undoing the install did not fully work: {}", problems.join("; "))]
    NotRestored { error: Box<SystemdError>, problems: Vec<String> },
}

impl SystemdError {
    /// This failure of an install, after the previous files were put back with `problems`
    /// (none: they all are, and the error is unchanged).
    fn restored(self, problems: Vec<String>) -> SystemdError {
        if problems.is_empty() {
            return self;
        }
        match self {
            SystemdError::Verify { target, diagnostics } => SystemdError::Verify {
                target,
                diagnostics: format!("{diagnostics}; {}", problems.join("; ")),
            },
            other => SystemdError::NotRestored { error: Box::new(other), problems },
        }
    }
}

/// Job units at one target (`Sync`: shared by the apply engine across awaits).
pub trait Units: Sync {
    /// The agent's unit files at `target`: name → contents.
    fn list(
        &self,
        target: &UnitTarget,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, SystemdError>> + Send;
    /// Writes `files`, verifies them, reloads systemd and enables + starts `timers`.
    fn install(
        &self,
        target: &UnitTarget,
        files: &[(String, String)],
        timers: &[String],
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Writes root-only (0600) files beside the units (jobs' environment files, which
    /// may hold secrets) and removes the `stale` ones (a job that no longer has an
    /// environment). They are not unit files: never listed, removed with their service.
    fn install_private(
        &self,
        target: &UnitTarget,
        files: &[(String, String)],
        stale: &[String],
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// Disables, stops and removes the named unit files (and a service's environment
    /// file), then reloads systemd.
    fn remove(
        &self,
        target: &UnitTarget,
        names: &[String],
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// The enabled timer files at `target` without the agent's marker (linked in the
    /// `<target>.wants/` directory of one of their `WantedBy=`), and the service file each
    /// starts when there is one without the marker too (name → contents). Read-only.
    fn foreign(
        &self,
        target: &UnitTarget,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, SystemdError>> + Send;
    /// Whether `unit` is active at `target` (`systemctl is-active`).
    fn is_active(
        &self,
        target: &UnitTarget,
        unit: &str,
    ) -> impl Future<Output = Result<bool, SystemdError>> + Send;
    /// Retires a foreign timer: `systemctl disable --now` (its files stay, so going back
    /// is `systemctl enable --now`). Refused for a file carrying the agent's marker.
    fn retire(
        &self,
        target: &UnitTarget,
        unit: &str,
    ) -> impl Future<Output = Result<(), SystemdError>> + Send;
    /// The last run of `service` and the state of its timer.
    fn job_run(
        &self,
        target: &UnitTarget,
        service: &str,
        timer: &str,
    ) -> impl Future<Output = Result<JobRun, SystemdError>> + Send;
}

/// The real driver.
#[derive(Debug, Clone)]
pub struct Systemd<'a, I> {
    incus: &'a I,
    host_unit_dir: PathBuf,
    /// Unit directory inside instances.
    instance_unit_dir: String,
}

impl<'a, I: Incus> Systemd<'a, I> {
    /// A driver that installs host units in `host_unit_dir` and instance units in
    /// `/etc/systemd/system`.
    pub fn new(incus: &'a I, host_unit_dir: impl Into<PathBuf>) -> Systemd<'a, I> {
        Systemd {
            incus,
            host_unit_dir: host_unit_dir.into(),
            instance_unit_dir: "/etc/systemd/system".to_string(),
        }
    }

    pub(super) async fn run_in(
        &self,
        target: &UnitTarget,
        argv: &[&str],
    ) -> Result<String, SystemdError> {
        match target {
            // Timestamps from `systemctl show` are read as UTC.
            UnitTarget::Host => Ok(Cmd::new(argv[0])
                .args(&argv[1..])
                .env("TZ", "UTC")
                .timeout(Duration::from_secs(120))
                .run_stdout()?),
            UnitTarget::Instance(name) => {
                let mut req = ExecRequest::new(argv.iter().map(|s| (*s).to_string()));
                req.env.insert("TZ".to_string(), "UTC".to_string());
                req.timeout = Duration::from_secs(120);
                let out = self.incus.exec(name, &req).await?;
                if out.exit_code != 0 {
                    return Err(SystemdError::Exec {
                        instance: name.clone(),
                        command: argv.join(" "),
                        code: out.exit_code,
                        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        }
    }

    /// Runs `systemd-analyze verify` and treats any output on stderr as failure.
    async fn verify(&self, target: &UnitTarget, paths: &[String]) -> Result<(), SystemdError> {
        let mut argv = vec!["systemd-analyze", "verify"];
        argv.extend(paths.iter().map(String::as_str));
        let (code, stderr) = match target {
            UnitTarget::Host => {
                let out =
                    Cmd::new(argv[0]).args(&argv[1..]).timeout(Duration::from_secs(60)).output()?;
                (out.status.code().unwrap_or(-1), out.stderr_str())
            }
            UnitTarget::Instance(name) => {
                let out = self
                    .incus
                    .exec(name, &ExecRequest::new(argv.iter().map(|s| (*s).to_string())))
                    .await?;
                (out.exit_code, String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        if code != 0 || !stderr.trim().is_empty() {
            return Err(SystemdError::Verify {
                target: target.to_string(),
                diagnostics: stderr.trim().to_string(),
            });
        }
        Ok(())
    }

    /// Puts back the files `install` replaced (or removes the ones it created); best
    /// effort, after any failure once it started writing.
    async fn restore(
        &self,
        target: &UnitTarget,
        previous: &[(String, Option<Vec<u8>>)],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, old) in previous {
            let result = match (target, old) {
                (UnitTarget::Host, Some(bytes)) => {
                    crate::fs::write_atomic_if_changed(&self.host_path(name), bytes, 0o644)
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                (UnitTarget::Host, None) => crate::fs::remove_if_exists(&self.host_path(name))
                    .map(drop)
                    .map_err(|e| e.to_string()),
                (UnitTarget::Instance(inst), Some(bytes)) => {
                    let push = FilePush::new(self.instance_path(name), bytes.clone());
                    self.incus.push_file(inst, &push).await.map_err(|e| e.to_string())
                }
                (UnitTarget::Instance(_), None) => {
                    let path = self.instance_path(name);
                    self.run_in(target, &["rm", "-f", &path])
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            };
            if let Err(e) = result {
                problems.push(format!("restoring `{name}` failed: {e}"));
            }
        }
        problems
    }

    /// Writes `contents` as `name` in the unit directory of `target` (created if missing)
    /// with `mode`, verified; returns the path written.
    async fn write_file(
        &self,
        target: &UnitTarget,
        name: &str,
        contents: &str,
        mode: u32,
    ) -> Result<String, SystemdError> {
        match target {
            UnitTarget::Host => {
                std::fs::create_dir_all(&self.host_unit_dir).map_err(|source| {
                    SystemdError::Io { path: self.host_unit_dir.clone(), source }
                })?;
                let path = self.host_path(name);
                crate::fs::write_atomic_if_changed(&path, contents.as_bytes(), mode)
                    .map_err(|e| SystemdError::Io { path: e.path, source: e.source })?;
                Ok(path.display().to_string())
            }
            UnitTarget::Instance(inst) => {
                let mut push =
                    FilePush::new(self.instance_path(name), contents.as_bytes().to_vec());
                push.mode = mode;
                push.create_parents = true;
                crate::incus::push_file_verified(self.incus, inst, &push).await?;
                Ok(self.instance_path(name))
            }
        }
    }

    /// Removes `name` from the unit directory of `target`; a file already gone is fine.
    async fn remove_file(&self, target: &UnitTarget, name: &str) -> Result<(), SystemdError> {
        match target {
            UnitTarget::Host => crate::fs::remove_if_exists(&self.host_path(name))
                .map(drop)
                .map_err(|e| SystemdError::Io { path: e.path, source: e.source }),
            UnitTarget::Instance(_) => {
                self.run_in(target, &["rm", "-f", &self.instance_path(name)]).await.map(drop)
            }
        }
    }

    /// Reloads systemd and enables and starts (or restarts) `timers`, in order; those
    /// `rescheduled` (their file new or changed) are stopped and their persistent stamp
    /// (in [`TIMER_STAMPS`]) removed first. `tried` gets each timer as its turn comes.
    async fn activate<'t>(
        &self,
        target: &UnitTarget,
        timers: &'t [String],
        rescheduled: &[&String],
        tried: &mut Vec<&'t String>,
    ) -> Result<(), SystemdError> {
        self.run_in(target, &["systemctl", "daemon-reload"]).await?;
        for timer in timers {
            tried.push(timer);
            if rescheduled.contains(&timer) {
                // Stopped, the timer reads its stamp again when it starts. (`systemctl
                // clean --what=state` does the same, but only from systemd 243 on, and
                // fails for a timer without `Persistent=`.)
                self.run_in(target, &["systemctl", "stop", timer]).await?;
                let stamp = format!("{TIMER_STAMPS}/stamp-{timer}");
                self.run_in(target, &["rm", "-f", &stamp]).await?;
            }
            self.run_in(target, &["systemctl", "enable", "--now", timer]).await?;
            // A changed schedule is picked up by restarting an already active timer.
            self.run_in(target, &["systemctl", "restart", timer]).await?;
        }
        Ok(())
    }

    /// Undoes a failed [`Self::activate`] (best effort; what failed, as text): the new
    /// timers it `tried` disabled and stopped, the previous files put back, systemd reloaded
    /// with them, and the timers that were there before restarted on their old schedule.
    async fn deactivate(
        &self,
        target: &UnitTarget,
        previous: &[(String, Option<Vec<u8>>)],
        tried: &[&String],
    ) -> Vec<String> {
        let existed = |timer: &str| previous.iter().any(|(n, old)| n == timer && old.is_some());
        let mut problems = Vec::new();
        for timer in tried.iter().filter(|t| !existed(t)) {
            if let Err(e) = self.run_in(target, &["systemctl", "disable", "--now", timer]).await {
                problems.push(format!("disabling `{timer}` failed: {e}"));
            }
        }
        problems.extend(self.restore(target, previous).await);
        if let Err(e) = self.run_in(target, &["systemctl", "daemon-reload"]).await {
            problems.push(format!("reloading systemd after restoring failed: {e}"));
            return problems;
        }
        for timer in tried.iter().filter(|t| existed(t)) {
            if let Err(e) = self.run_in(target, &["systemctl", "restart", timer]).await {
                problems.push(format!("restarting `{timer}` on its previous schedule failed: {e}"));
            }
        }
        problems
    }

    pub(super) fn host_path(&self, name: &str) -> PathBuf {
        self.host_unit_dir.join(name)
    }

    pub(super) fn instance_path(&self, name: &str) -> String {
        format!("{}/{name}", self.instance_unit_dir)
    }
}

pub(super) fn is_ours(contents: &str) -> bool {
    contents.lines().next().is_some_and(|l| l.starts_with(OWNER_MARKER_PREFIX))
}

impl<I: Incus> Units for Systemd<'_, I> {
    async fn list(&self, target: &UnitTarget) -> Result<BTreeMap<String, String>, SystemdError> {
        let mut out = BTreeMap::new();
        match target {
            UnitTarget::Host => {
                let dir = &self.host_unit_dir;
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                    Err(source) => return Err(SystemdError::Io { path: dir.clone(), source }),
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with("veza-job-") {
                        continue;
                    }
                    if let Ok(text) = std::fs::read_to_string(entry.path())
                        && is_ours(&text)
                    {
                        out.insert(name, text);
                    }
                }
            }
            UnitTarget::Instance(inst) => {
                let script = format!(
                    "cd {} 2>/dev/null || exit 0; for f in veza-job-*; do [ -f \"$f\" ] && echo \"$f\"; done; exit 0",
                    self.instance_unit_dir
                );
                let names = self.run_in(target, &["sh", "-c", &script]).await?;
                for name in names.lines().filter(|l| !l.is_empty()) {
                    let bytes = self.incus.pull_file(inst, &self.instance_path(name)).await?;
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    if is_ours(&text) {
                        out.insert(name.to_string(), text);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn install(
        &self,
        target: &UnitTarget,
        files: &[(String, String)],
        timers: &[String],
    ) -> Result<(), SystemdError> {
        if let UnitTarget::Host = target {
            // What a killed install left (temp files, an environment file's secrets
            // among them): only the agent writes `veza-job-*`, under its lock.
            crate::fs::remove_stale_temps_prefixed(&self.host_unit_dir, JOB_UNIT_PREFIX)
                .map_err(|e| SystemdError::Io { path: e.path, source: e.source })?;
        }
        // Keep what was there, so files rejected by `verify` never stay in place (a unit
        // left behind would look installed to the next plan and never be enabled). A file
        // that is there without the marker is someone else's: refused before writing any.
        let mut previous: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        for (name, _) in files {
            let old = match target {
                UnitTarget::Host => {
                    let path = self.host_path(name);
                    match std::fs::read(&path) {
                        Ok(bytes) => Some(bytes),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(source) => return Err(SystemdError::Io { path, source }),
                    }
                }
                UnitTarget::Instance(inst) => {
                    match self.incus.pull_file(inst, &self.instance_path(name)).await {
                        Ok(bytes) => Some(bytes),
                        Err(crate::incus::IncusError::NotFound { .. }) => None,
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if let Some(bytes) = &old
                && !is_ours(&String::from_utf8_lossy(bytes))
            {
                let path = match target {
                    UnitTarget::Host => self.host_path(name).display().to_string(),
                    UnitTarget::Instance(_) => self.instance_path(name),
                };
                return Err(SystemdError::Foreign { target: target.to_string(), path });
            }
            previous.push((name.clone(), old));
        }
        // From the first write on, any failure puts the previous files back: the next plan
        // compares contents only, so a file left in place would look installed and its
        // timer would never be enabled.
        let mut paths = Vec::new();
        for (i, (name, contents)) in files.iter().enumerate() {
            match self.write_file(target, name, contents, 0o644).await {
                Ok(path) => paths.push(path),
                Err(e) => {
                    let problems = self.restore(target, &previous[..=i]).await;
                    return Err(e.restored(problems));
                }
            }
        }
        if !paths.is_empty()
            && let Err(e) = self.verify(target, &paths).await
        {
            let problems = self.restore(target, &previous).await;
            return Err(e.restored(problems));
        }
        // A timer whose file is new or changed starts afresh: a `Persistent=` stamp left
        // from before (its last elapse, or a removed job's of the same name) would make
        // systemd fire it at once for an elapse of the new schedule "missed" since then.
        let rescheduled: Vec<&String> = timers
            .iter()
            .filter(|t| {
                let new = files.iter().find(|(n, _)| n == *t).map(|(_, c)| c.as_bytes());
                let old = previous.iter().find(|(n, _)| n == *t).and_then(|(_, o)| o.as_deref());
                new.is_some() && new != old
            })
            .collect();
        let mut tried = Vec::new();
        if let Err(e) = self.activate(target, timers, &rescheduled, &mut tried).await {
            let problems = self.deactivate(target, &previous, &tried).await;
            return Err(e.restored(problems));
        }
        Ok(())
    }

    async fn install_private(
        &self,
        target: &UnitTarget,
        files: &[(String, String)],
        stale: &[String],
    ) -> Result<(), SystemdError> {
        for name in stale {
            self.remove_file(target, name).await?;
        }
        for (name, contents) in files {
            self.write_file(target, name, contents, 0o600).await?;
        }
        Ok(())
    }

    async fn remove(&self, target: &UnitTarget, names: &[String]) -> Result<(), SystemdError> {
        // A job's environment file (its secrets) goes first, named from its service or its
        // timer: a kill part-way must not leave it behind a service already removed (it is
        // no unit file: never listed, so never planned for removal again).
        let mut env_files: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".service").or_else(|| n.strip_suffix(".timer")))
            .map(|stem| format!("{stem}.env"))
            .collect();
        env_files.sort();
        env_files.dedup();
        let names: Vec<String> = env_files.into_iter().chain(names.iter().cloned()).collect();
        if let UnitTarget::Host = target {
            crate::fs::remove_stale_temps_prefixed(&self.host_unit_dir, JOB_UNIT_PREFIX)
                .map_err(|e| SystemdError::Io { path: e.path, source: e.source })?;
        }
        let names = &names;
        for name in names {
            if name.ends_with(".timer") {
                // Disabling a unit that is already gone is fine; anything else is reported.
                let _ = self.run_in(target, &["systemctl", "disable", "--now", name]).await;
            }
        }
        for name in names {
            self.remove_file(target, name).await?;
        }
        self.run_in(target, &["systemctl", "daemon-reload"]).await?;
        Ok(())
    }

    async fn foreign(&self, target: &UnitTarget) -> Result<BTreeMap<String, String>, SystemdError> {
        self.foreign_units(target).await
    }

    async fn is_active(&self, target: &UnitTarget, unit: &str) -> Result<bool, SystemdError> {
        self.unit_active(target, unit).await
    }

    async fn retire(&self, target: &UnitTarget, unit: &str) -> Result<(), SystemdError> {
        self.retire_unit(target, unit).await
    }

    async fn job_run(
        &self,
        target: &UnitTarget,
        service: &str,
        timer: &str,
    ) -> Result<JobRun, SystemdError> {
        let svc = SERVICE_PROPERTIES.join(",");
        let svc = self.run_in(target, &["systemctl", "show", "-p", &svc, service]).await?;
        let tim = TIMER_PROPERTIES.join(",");
        let tim = self.run_in(target, &["systemctl", "show", "-p", &tim, timer]).await?;
        Ok(parse_job_run(&svc, &tim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake Incus holding one running instance `db` the agent owns.
    fn owned_running_db() -> crate::incus::FakeIncus {
        use veza_model::live::{InstanceStatus, LiveInstance, LiveState, MARK_MANAGED};
        let mut live = LiveState::default();
        let db = LiveInstance {
            name: "db".into(),
            status: InstanceStatus::Running,
            config: [(MARK_MANAGED.to_string(), "true".to_string())].into(),
            ..LiveInstance::default()
        };
        live.instances.insert("db".into(), db);
        crate::incus::FakeIncus::new(live)
    }

    /// What `systemctl show -p A,B UNIT` (`argv`) prints of a unit whose every property is
    /// in `all`: only the ones asked for.
    fn systemctl_show(all: &str, argv: &[String]) -> String {
        let asked: Vec<&str> = argv
            .iter()
            .position(|a| a == "-p")
            .and_then(|i| argv.get(i + 1))
            .map(|list| list.split(',').collect())
            .unwrap_or_default();
        fake::asked_only(all, &asked)
    }

    /// The driver asks `systemctl show` for every property it reads (each row needs
    /// some of them): a run in progress read through it (in an instance) is running, not a
    /// success at its start.
    #[test]
    fn job_run_asks_systemctl_for_what_it_reads() {
        use crate::incus::ExecOutput;
        let fake = owned_running_db();
        let units = Systemd::new(&fake, "/nonexistent");
        let target = UnitTarget::Instance("db".to_string());
        let rt = crate::incus::runtime().expect("runtime");
        let (service, timer) = ("veza-job-prod-drill.service", "veza-job-prod-drill.timer");
        const AT: &str = "Sun 2026-11-29 04:00:00 UTC";
        // Every property of the service: its state, result, main exit status, and start
        // and exit of the main process (monotonic µs).
        let service_all = |state: &str, result: &str, status: i32, exit: u64| {
            format!(
                "Type=oneshot\nRestart=no\nMainPID=0\nResult={result}\nExecMainStartTimestamp={AT}\nExecMainStartTimestampMonotonic=5000000\nExecMainExitTimestamp=\nExecMainExitTimestampMonotonic={exit}\nExecMainPID=4242\nExecMainCode=1\nExecMainStatus={status}\nLoadState=loaded\nActiveState={state}\nSubState=dead\n"
            )
        };
        let timer_all = "Unit=veza-job-prod-drill.service\nNextElapseUSecRealtime=Sun 2026-12-06 04:00:00 UTC\nLastTriggerUSec=Sun 2026-11-29 04:00:00 UTC\nLoadState=loaded\nActiveState=active\nSubState=waiting\n";
        // (what, the service's properties, then: result, exit status, last start, running)
        let cases = [
            (
                "a drill still running",
                service_all("activating", "success", 0, 0),
                ("", None, "", true),
            ),
            (
                "a drill that failed",
                service_all("failed", "exit-code", 3, 9_000_000),
                ("exit-code", Some(3), AT, false),
            ),
            (
                "at rest, the main process's last exit before this start",
                service_all("inactive", "success", 0, 4_000_000),
                ("", None, "", false),
            ),
        ];
        for (what, all, want) in cases {
            // First the questions (answered with nothing), then the same questions answered
            // with only what they asked for.
            let before = fake.execs().len();
            rt.block_on(units.job_run(&target, service, timer)).expect("job_run");
            let asked: Vec<Vec<String>> =
                fake.execs().into_iter().skip(before).map(|(_, req)| req.command).collect();
            assert_eq!(asked.len(), 2, "{asked:?}");
            assert_eq!(asked[0].last().map(String::as_str), Some(service), "{asked:?}");
            assert_eq!(asked[1].last().map(String::as_str), Some(timer), "{asked:?}");
            for (all, argv) in [(all.as_str(), &asked[0]), (timer_all, &asked[1])] {
                let stdout = systemctl_show(all, argv).into_bytes();
                fake.push_exec_result(ExecOutput { exit_code: 0, stdout, stderr: Vec::new() });
            }
            let run = rt.block_on(units.job_run(&target, service, timer)).expect("job_run");
            let got = (run.result.as_str(), run.exit_status, run.last_start.as_str(), run.running);
            assert_eq!(got, want, "{what}");
            let since = if run.running { AT } else { "" };
            assert_eq!(run.running_since, since, "{what}");
            assert_eq!(
                (run.timer_state.as_str(), run.next.as_str()),
                ("active", "Sun 2026-12-06 04:00:00 UTC"),
                "{what}"
            );
        }
    }

    /// A unit file without the marker is never overwritten, in an instance (here) or on the
    /// host (`tests/jobs.rs`): the install is refused before anything is written.
    #[test]
    fn a_unit_file_without_the_marker_is_never_overwritten() {
        use crate::incus::FakeIncus;
        let fake = FakeIncus::with_default_host();
        let path = "/etc/systemd/system/veza-job-prod-db-backup.service";
        let theirs = "[Unit]\nDescription=the DBA's own backup\n";
        fake.set_file("db", path, theirs);
        let units = Systemd::new(&fake, "/nonexistent");
        let ours = format!("{OWNER_MARKER_PREFIX}prod-db/backup\n[Unit]\n");
        let target = UnitTarget::Instance("db".to_string());
        let err = crate::incus::runtime()
            .expect("runtime")
            .block_on(units.install(
                &target,
                &[
                    ("veza-job-prod-db-backup.timer".to_string(), ours.clone()),
                    ("veza-job-prod-db-backup.service".to_string(), ours),
                ],
                &["veza-job-prod-db-backup.timer".to_string()],
            ))
            .expect_err("a foreign unit file must not be overwritten");
        assert!(matches!(err, SystemdError::Foreign { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&format!("refusing to overwrite `{path}` on ")),
            "{err}"
        );
        assert_eq!(fake.file("db", path).as_deref(), Some(theirs.as_bytes()));
        let writes: Vec<String> =
            fake.calls().into_iter().filter(|c| !c.starts_with("GET ")).collect();
        assert!(writes.is_empty(), "nothing is written: {writes:?}");
    }

    /// Any failure of an install once it began writing puts the previous unit files back
    /// (so the next plan, which compares contents, installs again), disables the new timers
    /// it enabled, and reloads systemd with what is on disk again: here in an instance, with
    /// the commands (`incus exec`) or a file push failing at each point.
    #[test]
    fn a_failed_install_puts_the_previous_units_back() {
        use crate::incus::{ExecOutput, IncusError};
        const DIR: &str = "/etc/systemd/system";
        const SERVICE: &str = "veza-job-prod-backup.service";
        const TIMER: &str = "veza-job-prod-backup.timer";
        let ours = |what: &str| format!("{OWNER_MARKER_PREFIX}prod/backup\n# {what}\n");
        enum Fail {
            /// The n-th command (0: `systemd-analyze verify`) exits 1.
            Exec(usize),
            /// Pushing the timer file fails.
            PushTimer,
        }
        struct Case {
            what: &'static str,
            /// Whether the job's units were there before (an update) or not (a new job).
            update: bool,
            fail: Fail,
            /// The commands run, in order, failed one included.
            commands: &'static [&'static str],
        }
        let cases = [
            Case {
                what: "daemon-reload fails",
                update: true,
                fail: Fail::Exec(1),
                commands: &[
                    "systemd-analyze verify",
                    "systemctl daemon-reload",
                    "systemctl daemon-reload",
                ],
            },
            Case {
                what: "removing the changed timer's stamp fails",
                update: true,
                fail: Fail::Exec(3),
                commands: &[
                    "systemd-analyze verify",
                    "systemctl daemon-reload",
                    "systemctl stop veza-job-prod-backup.timer",
                    "rm -f /var/lib/systemd/timers/stamp-veza-job-prod-backup.timer",
                    "systemctl daemon-reload",
                    "systemctl restart veza-job-prod-backup.timer",
                ],
            },
            Case {
                what: "enable --now fails",
                update: true,
                fail: Fail::Exec(4),
                commands: &[
                    "systemd-analyze verify",
                    "systemctl daemon-reload",
                    "systemctl stop veza-job-prod-backup.timer",
                    "rm -f /var/lib/systemd/timers/stamp-veza-job-prod-backup.timer",
                    "systemctl enable --now veza-job-prod-backup.timer",
                    "systemctl daemon-reload",
                    "systemctl restart veza-job-prod-backup.timer",
                ],
            },
            Case {
                what: "restart fails",
                update: true,
                fail: Fail::Exec(5),
                commands: &[
                    "systemd-analyze verify",
                    "systemctl daemon-reload",
                    "systemctl stop veza-job-prod-backup.timer",
                    "rm -f /var/lib/systemd/timers/stamp-veza-job-prod-backup.timer",
                    "systemctl enable --now veza-job-prod-backup.timer",
                    "systemctl restart veza-job-prod-backup.timer",
                    "systemctl daemon-reload",
                    "systemctl restart veza-job-prod-backup.timer",
                ],
            },
            Case {
                what: "the timer's file cannot be pushed",
                update: true,
                fail: Fail::PushTimer,
                commands: &[],
            },
            Case {
                what: "verify rejects the units",
                update: true,
                fail: Fail::Exec(0),
                commands: &["systemd-analyze verify"],
            },
            Case {
                what: "a new job whose timer does not start: disabled, its files removed",
                update: false,
                fail: Fail::Exec(4),
                commands: &[
                    "systemd-analyze verify",
                    "systemctl daemon-reload",
                    "systemctl stop veza-job-prod-backup.timer",
                    "rm -f /var/lib/systemd/timers/stamp-veza-job-prod-backup.timer",
                    "systemctl enable --now veza-job-prod-backup.timer",
                    "systemctl disable --now veza-job-prod-backup.timer",
                    "rm -f /etc/systemd/system/veza-job-prod-backup.service",
                    "rm -f /etc/systemd/system/veza-job-prod-backup.timer",
                    "systemctl daemon-reload",
                ],
            },
        ];
        let rt = crate::incus::runtime().expect("runtime");
        for case in cases {
            let fake = owned_running_db();
            let before: Vec<(String, String)> = if case.update {
                [SERVICE, TIMER].map(|n| (n.to_string(), ours(&format!("old {n}")))).into()
            } else {
                Vec::new()
            };
            for (name, text) in &before {
                fake.set_file("db", &format!("{DIR}/{name}"), text.as_str());
            }
            let failed = ExecOutput { exit_code: 1, stdout: Vec::new(), stderr: b"boom".to_vec() };
            match case.fail {
                Fail::Exec(n) => {
                    for _ in 0..n {
                        fake.push_exec_result(ExecOutput::default());
                    }
                    fake.push_exec_result(failed);
                }
                Fail::PushTimer => fake.fail_on(
                    format!("POST /1.0/instances/db/files?path={DIR}/{TIMER}").as_str(),
                    IncusError::Invalid { what: "file", value: TIMER.into(), reason: "injected" },
                ),
            }
            let units = Systemd::new(&fake, "/nonexistent");
            let new = [SERVICE, TIMER].map(|n| (n.to_string(), ours(&format!("new {n}"))));
            let target = UnitTarget::Instance("db".to_string());
            let err = rt
                .block_on(units.install(&target, &new, &[TIMER.to_string()]))
                .expect_err(case.what);
            assert!(!matches!(err, SystemdError::NotRestored { .. }), "{}: {err}", case.what);
            // The commands run (`verify` without its paths).
            let got: Vec<String> = fake
                .execs()
                .into_iter()
                .map(|(_, req)| req.command.join(" "))
                .map(|c| match c.strip_prefix("systemd-analyze verify ") {
                    Some(_) => "systemd-analyze verify".to_string(),
                    None => c,
                })
                .collect();
            assert_eq!(got, case.commands, "{}: commands", case.what);
            for (name, old) in &before {
                let now = fake.file("db", &format!("{DIR}/{name}"));
                assert_eq!(
                    now.as_deref().map(String::from_utf8_lossy).as_deref(),
                    Some(old.as_str()),
                    "{}: {name} is not what it was before",
                    case.what
                );
            }
        }
    }

    /// A failed install says what could not be put back, if anything.
    #[test]
    fn a_failed_install_says_what_could_not_be_put_back() {
        let reload = || SystemdError::Exec {
            instance: "db".into(),
            command: "systemctl daemon-reload".into(),
            code: 1,
            stderr: "boom".into(),
        };
        let verify = || SystemdError::Verify { target: "host".into(), diagnostics: "bad".into() };
        let lost = || vec!["restoring `x.timer` failed: gone".to_string()];
        let cases = [
            (reload().restored(Vec::new()), reload().to_string()),
            (
                reload().restored(lost()),
                "in instance `db`: `systemctl daemon-reload` exited 1: boom; undoing the install did not fully work: restoring `x.timer` failed: gone".to_string(),
            ),
            (
                verify().restored(lost()),
                "units rejected by `systemd-analyze verify` on host: bad; restoring `x.timer` failed: gone".to_string(),
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.to_string(), want);
        }
    }

    /// The fake reports a job's runs as systemd does, through the same reading: a run in
    /// progress is running (systemd set `Result=` back to `success`), never a success.
    #[test]
    fn the_fake_reports_runs_as_systemd_does() {
        use fake::FakeUnits;
        let units = FakeUnits::new();
        let target = UnitTarget::Instance("db".into());
        let (service, timer) = ("veza-job-prod-drill.service", "veza-job-prod-drill.timer");
        type Event = fn(&FakeUnits, &UnitTarget, &str);
        /// Result, exit status, running, running since.
        type Read = (&'static str, Option<i32>, bool, &'static str);
        // (what happens, then what is read)
        let steps: [(&str, Event, Read); 6] = [
            ("installed, never ran", |_, _, _| {}, ("", None, false, "")),
            (
                "the first run starts",
                |u, t, s| u.start_run(t, s, 1_000),
                ("", None, true, "Thu 1970-01-01 00:16:40 UTC"),
            ),
            (
                "it succeeds",
                |u, t, s| u.finish_run(t, s, "success", 0, 1_600),
                ("success", Some(0), false, ""),
            ),
            (
                "the next run starts",
                |u, t, s| u.start_run(t, s, 2_000),
                ("", None, true, "Thu 1970-01-01 00:33:20 UTC"),
            ),
            (
                "it fails",
                |u, t, s| u.finish_run(t, s, "exit-code", 3, 2_400),
                ("exit-code", Some(3), false, ""),
            ),
            ("the target reboots", |u, t, _| u.reboot(t), ("", None, false, "")),
        ];
        let rt = crate::incus::runtime().expect("runtime");
        rt.block_on(units.install(&target, &[], &[timer.to_string()])).expect("install");
        for (what, event, want) in steps {
            event(&units, &target, service);
            let run = rt.block_on(units.job_run(&target, service, timer)).expect("job_run");
            let got =
                (run.result.as_str(), run.exit_status, run.running, run.running_since.as_str());
            assert_eq!(got, want, "{what}");
            assert_eq!(run.timer_state, "active", "{what}");
        }
    }

    #[test]
    fn only_marked_units_are_ours() {
        assert!(is_ours(&format!("{OWNER_MARKER_PREFIX}prod/x\n[Unit]\n")));
        assert!(!is_ours("[Unit]\nDescription=# Managed by veza-agent\n"));
    }
}
