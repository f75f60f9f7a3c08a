//! The systemd driver: install, update and prune the agent's job units, on the host
//! (files in the unit directory + `systemctl`) or inside an Incus instance (file push +
//! exec), and read each job's last result.
//!
//! Only units whose first line carries the agent's ownership marker are listed, changed
//! or removed; anything else in the unit directory is never touched: installing over a
//! file without the marker is refused ([`SystemdError::Foreign`]). Every unit is
//! checked with `systemd-analyze verify` where it will run before it is enabled, and any
//! diagnostic counts as a failure (verify exits 0 on unknown keys). [`fake`] holds
//! in-memory units for tests.
//!
//! For adoption only, the driver also reads the unit files *without* the marker (enabled
//! timers and the services they start: `foreign.rs`, read-only, through Incus's file API
//! inside an instance, so an instance the agent does not own yet can be read) and retires
//! a foreign timer once the agent's own replacement is active (`disable --now`; its files
//! stay where they are).

pub mod fake;
mod foreign;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use veza_model::units::OWNER_MARKER_PREFIX;
use veza_plan::live::UnitTarget;

use crate::incus::{ExecRequest, FilePush, Incus};
use crate::process::Cmd;

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
}

/// The last run of a job's service.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JobRun {
    /// `Result=` of the service (`success`, `exit-code`, …); empty when it never ran.
    pub result: String,
    /// Exit status of the last run.
    pub exit_status: Option<i32>,
    /// When the last run started (as systemd prints it), empty when never.
    pub last_start: String,
    /// `ActiveState=` of the timer.
    pub timer_state: String,
    /// Next elapse as systemd prints it.
    pub next: String,
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
    /// effort, after a failed `verify`.
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
                (UnitTarget::Host, None) => {
                    std::fs::remove_file(self.host_path(name)).map_err(|e| e.to_string())
                }
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
        let mut paths = Vec::new();
        for (name, contents) in files {
            paths.push(self.write_file(target, name, contents, 0o644).await?);
        }
        if !paths.is_empty()
            && let Err(e) = self.verify(target, &paths).await
        {
            let problems = self.restore(target, &previous).await;
            return Err(match e {
                SystemdError::Verify { target, diagnostics } if !problems.is_empty() => {
                    SystemdError::Verify {
                        target,
                        diagnostics: format!("{diagnostics}; {}", problems.join("; ")),
                    }
                }
                other => other,
            });
        }
        self.run_in(target, &["systemctl", "daemon-reload"]).await?;
        for timer in timers {
            self.run_in(target, &["systemctl", "enable", "--now", timer]).await?;
            // A changed schedule is picked up by restarting an already active timer.
            self.run_in(target, &["systemctl", "restart", timer]).await?;
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
        let env_files: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_suffix(".service").map(|stem| format!("{stem}.env")))
            .collect();
        let names: Vec<String> = names.iter().cloned().chain(env_files).collect();
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
        let svc = self
            .run_in(
                target,
                &[
                    "systemctl",
                    "show",
                    "-p",
                    "Result,ExecMainStatus,ExecMainStartTimestamp",
                    service,
                ],
            )
            .await?;
        let tim = self
            .run_in(
                target,
                &["systemctl", "show", "-p", "ActiveState,NextElapseUSecRealtime", timer],
            )
            .await?;
        Ok(parse_job_run(&svc, &tim))
    }
}

/// Reads `systemctl show` output (properties in systemd's own order).
pub fn parse_job_run(service: &str, timer: &str) -> JobRun {
    let props = |text: &str| -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let s = props(service);
    let t = props(timer);
    let started = s.get("ExecMainStartTimestamp").cloned().unwrap_or_default();
    JobRun {
        result: if started.is_empty() {
            String::new()
        } else {
            s.get("Result").cloned().unwrap_or_default()
        },
        exit_status: if started.is_empty() {
            None
        } else {
            s.get("ExecMainStatus").and_then(|v| v.parse().ok())
        },
        last_start: started,
        timer_state: t.get("ActiveState").cloned().unwrap_or_default(),
        next: t.get("NextElapseUSecRealtime").cloned().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_run_reads_systemctl_show() {
        let r = parse_job_run(
            "Result=exit-code\nExecMainStatus=3\nExecMainStartTimestamp=Sun 2026-11-29 22:35:50 UTC\n",
            "NextElapseUSecRealtime=Sun 2026-11-29 22:36:00 UTC\nActiveState=active\n",
        );
        assert_eq!(r.result, "exit-code");
        assert_eq!(r.exit_status, Some(3));
        assert_eq!(r.timer_state, "active");
        assert_eq!(r.next, "Sun 2026-11-29 22:36:00 UTC");
        // `Result=success` of a service that never ran is not a success.
        let never =
            parse_job_run("Result=success\nExecMainStatus=0\nExecMainStartTimestamp=\n", "");
        assert_eq!((never.result.as_str(), never.exit_status), ("", None));
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

    #[test]
    fn only_marked_units_are_ours() {
        assert!(is_ours(&format!("{OWNER_MARKER_PREFIX}prod/x\n[Unit]\n")));
        assert!(!is_ours("[Unit]\nDescription=# Managed by veza-agent\n"));
    }
}
