//! Unit files without the agent's marker, for adoption: read (enabled timers and the
//! services they start), checked active, and retired once the agent's own timer replaced
//! them (`systemctl disable --now`; the files stay where they are, so going back is
//! `systemctl enable --now`). Inside an instance the files are read through Incus's file
//! API (no command runs), so an instance the agent does not own yet can be read.

use std::collections::BTreeMap;

use veza_model::units::{timer_unit, wanted_by};
use veza_plan::live::UnitTarget;

use super::{Systemd, SystemdError, is_ours};
use crate::incus::{ExecRequest, Incus, IncusError};
use crate::process::Cmd;

/// The largest foreign unit file read.
const MAX_UNIT_BYTES: u64 = 64 * 1024;

impl<I: Incus> Systemd<'_, I> {
    /// A regular file's text in the unit directory of `target`; `None` when it is missing
    /// or not a regular file (a symlink, a directory).
    async fn read_unit(
        &self,
        target: &UnitTarget,
        name: &str,
    ) -> Result<Option<String>, SystemdError> {
        match target {
            UnitTarget::Host => {
                let path = self.host_path(name);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_file() && m.len() <= MAX_UNIT_BYTES => {}
                    Ok(_) => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(SystemdError::Io { path, source }),
                }
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(SystemdError::Io { path, source }),
                }
            }
            UnitTarget::Instance(inst) => {
                match self
                    .incus
                    .pull_file_max(inst, &self.instance_path(name), MAX_UNIT_BYTES)
                    .await
                {
                    Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
                    Err(
                        IncusError::NotFound { .. }
                        | IncusError::NotAFile { .. }
                        | IncusError::TooLarge { .. },
                    ) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Whether `timer` (its text `text`) is enabled at `target`: a link named after it in
    /// the `<target>.wants/` directory of one of its `WantedBy=` targets.
    async fn enabled(
        &self,
        target: &UnitTarget,
        timer: &str,
        text: &str,
    ) -> Result<bool, SystemdError> {
        for wants in wanted_by(text).iter().map(|t| format!("{t}.wants")) {
            if wants.contains('/') || wants.starts_with('.') {
                continue;
            }
            let linked = match target {
                UnitTarget::Host => {
                    std::fs::symlink_metadata(self.host_unit_dir.join(&wants).join(timer)).is_ok()
                }
                UnitTarget::Instance(inst) => self
                    .incus
                    .list_files(inst, &self.instance_path(&wants))
                    .await?
                    .is_some_and(|names| names.iter().any(|n| n == timer)),
            };
            if linked {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(super) async fn foreign_units(
        &self,
        target: &UnitTarget,
    ) -> Result<BTreeMap<String, String>, SystemdError> {
        let names: Vec<String> = match target {
            UnitTarget::Host => match std::fs::read_dir(&self.host_unit_dir) {
                Ok(entries) => entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(source) => {
                    return Err(SystemdError::Io { path: self.host_unit_dir.clone(), source });
                }
            },
            UnitTarget::Instance(inst) => {
                self.incus.list_files(inst, &self.instance_unit_dir).await?.unwrap_or_default()
            }
        };
        let mut out = BTreeMap::new();
        for timer in names.iter().filter(|n| n.ends_with(".timer")) {
            let Some(text) = self.read_unit(target, timer).await? else { continue };
            if is_ours(&text) || !self.enabled(target, timer, &text).await? {
                continue;
            }
            let service = timer_unit(timer, &text);
            out.insert(timer.clone(), text);
            if !service.contains('/')
                && let Some(svc) = self.read_unit(target, &service).await?
                && !is_ours(&svc)
            {
                out.insert(service, svc);
            }
        }
        Ok(out)
    }

    pub(super) async fn unit_active(
        &self,
        target: &UnitTarget,
        unit: &str,
    ) -> Result<bool, SystemdError> {
        let argv = ["systemctl", "is-active", "--quiet", unit];
        match target {
            UnitTarget::Host => Ok(Cmd::new(argv[0])
                .args(&argv[1..])
                .timeout(std::time::Duration::from_secs(30))
                .output()?
                .status
                .success()),
            UnitTarget::Instance(inst) => {
                let out = self
                    .incus
                    .exec(inst, &ExecRequest::new(argv.iter().map(|s| (*s).to_string())))
                    .await?;
                Ok(out.exit_code == 0)
            }
        }
    }

    pub(super) async fn retire_unit(
        &self,
        target: &UnitTarget,
        unit: &str,
    ) -> Result<(), SystemdError> {
        if let Some(text) = self.read_unit(target, unit).await?
            && is_ours(&text)
        {
            let path = match target {
                UnitTarget::Host => self.host_path(unit).display().to_string(),
                UnitTarget::Instance(_) => self.instance_path(unit),
            };
            return Err(SystemdError::Ours { target: target.to_string(), path });
        }
        self.run_in(target, &["systemctl", "disable", "--now", unit]).await.map(drop)
    }
}
