//! The rules of adoption both the real client and the fake follow (shared, so that they
//! refuse exactly the same things): which marks adoption may write, what counts as a
//! change since adoption assessed a resource, and the one fixed command run inside an
//! instance the agent may not own (the slot probe).

use veza_model::live::{MARK_MANAGED, MARK_PREFIX};

use super::Result;
use super::error::{IncusError, ResourceKind};
use super::types::{self, Config, LiveInstance, LiveProfile};

/// Rejects adoption marks that are not the agent's (`user.veza.*`, with the ownership mark).
pub(crate) fn validate_marks(marks: &Config) -> Result<()> {
    if let Some(k) = marks.keys().find(|k| !k.starts_with(MARK_PREFIX)) {
        return Err(IncusError::Invalid {
            what: "adoption mark",
            value: k.clone(),
            reason: "adoption sets the agent's `user.veza.*` marks only",
        });
    }
    if marks.get(MARK_MANAGED).map(String::as_str) != Some("true") {
        return Err(IncusError::Invalid {
            what: "adoption marks",
            value: marks.keys().cloned().collect::<Vec<_>>().join(","),
            reason: "they must include `user.veza.managed=true`",
        });
    }
    Ok(())
}

/// What differs between an instance as adoption assessed it (`seen`) and as it is now.
pub(crate) fn instance_changes(now: &LiveInstance, seen: &LiveInstance) -> Vec<String> {
    let mut out = Vec::new();
    if now.kind != seen.kind {
        out.push(format!("its type is now {}", now.kind));
    }
    if now.profiles != seen.profiles {
        out.push(format!("its profiles are now [{}]", now.profiles.join(", ")));
    }
    if now.devices != seen.devices {
        out.push("its devices changed".to_string());
    }
    out
}

/// What differs between a profile as adoption assessed it and as it is now (marks aside).
pub(crate) fn profile_changes(now: &LiveProfile, seen: &LiveProfile) -> Vec<String> {
    let unmarked = |c: &Config| -> Config {
        c.iter()
            .filter(|(k, _)| !k.starts_with(MARK_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut out = Vec::new();
    if unmarked(&now.config) != unmarked(&seen.config) {
        out.push("its config changed".to_string());
    }
    if now.devices != seen.devices {
        out.push("its devices changed".to_string());
    }
    out
}

/// Whether adoption writes `marks` into a resource whose config is `config` now: `false`
/// when they are all there already; [`IncusError::Changed`] when it changed since
/// assessed (`changes`) or is the agent's already with other marks.
pub(crate) fn adoption_writes(
    kind: ResourceKind,
    name: &str,
    config: &Config,
    marks: &Config,
    changes: Vec<String>,
) -> Result<bool> {
    let changed = |what: String| IncusError::Changed { kind, name: name.to_string(), what };
    if !changes.is_empty() {
        return Err(changed(format!("it changed since it was assessed ({})", changes.join(", "))));
    }
    if marks.iter().all(|(k, v)| config.get(k) == Some(v)) {
        return Ok(false);
    }
    if types::is_marked(config) {
        return Err(changed("it is managed by veza-agent already, with other marks".to_string()));
    }
    Ok(true)
}

/// Rejects a probe path that could not go into the fixed probe command as it is.
pub(crate) fn validate_probe_path(path: &str) -> Result<()> {
    if path.starts_with('/')
        && path.len() <= 1024
        && !path.chars().any(|c| c.is_whitespace() || c.is_control() || "'\"`$\\".contains(c))
    {
        Ok(())
    } else {
        Err(IncusError::Invalid {
            what: "probe path",
            value: path.to_string(),
            reason: "it must be absolute, without whitespace, quotes, `$`, `\\` or control characters",
        })
    }
}

/// The fixed command of [`Incus::probe_inside`]: prints the status line and headers of
/// `GET http://127.0.0.1:<port><path>` with curl, else busybox wget (bounded by
/// `timeout`, not by wget's `-T`, which crashes the static busybox of Debian 12); always
/// exits 0.
pub(crate) fn probe_command(port: u16, path: &str, timeout: std::time::Duration) -> Vec<String> {
    let secs = timeout.as_secs().max(1);
    let url = format!("'http://127.0.0.1:{port}{path}'");
    let script = format!(
        "if command -v curl >/dev/null 2>&1; then curl -s -o /dev/null -D - --max-time {secs} {url}; \
         else t=; command -v timeout >/dev/null 2>&1 && t='timeout {secs}'; \
         $t wget -S -O /dev/null {url} 2>&1; fi; exit 0"
    );
    vec!["sh".to_string(), "-c".to_string(), script]
}
