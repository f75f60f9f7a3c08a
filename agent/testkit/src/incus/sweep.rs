//! The stale sweep: containers, profiles and trust entries left by test processes that
//! are gone, selected by the owner mark (never by name pattern) and deleted.

use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::Value;

use super::trust::trust_owner;
use super::{CREATED_KEY, OWNER_KEY, incus, query};
use crate::proc::process_alive_since;

/// Whether the owner recorded in `config` is dead: its pid is gone, a zombie, or a
/// newer process reusing the pid. Unmarked objects are never stale.
fn owner_is_dead(config: &Value) -> bool {
    let Some(owner) = config.get(OWNER_KEY).and_then(Value::as_str) else { return false };
    let Ok(pid) = owner.trim().parse::<u32>() else { return false };
    let created = config.get(CREATED_KEY).and_then(Value::as_str).and_then(|s| s.parse().ok());
    !process_alive_since(pid, created)
}

/// Deletes the containers and profiles that carry `user.veza-test.owner` and whose
/// owning process is dead, and the trust entries of test certificates
/// (`vt-https-<pid>-<created>`) whose process is dead; returns their names. Unmarked
/// objects are never touched.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = String::new();
    // Instances, then profiles: (list, where the owner mark is, the delete command). An
    // instance's mark may come from a profile (a manifest whose instances declare no
    // config of their own carries it in an agent-managed profile).
    let kinds: [(&str, &[&str], &[&str]); 2] = [
        ("/1.0/instances?recursion=1", &["expanded_config", "config"], &["delete", "--force"]),
        ("/1.0/profiles?recursion=1", &["config"], &["profile", "delete"]),
    ];
    for (list, config_keys, delete) in kinds {
        for item in query(list)?.as_array().into_iter().flatten() {
            let name = item.get("name").and_then(Value::as_str);
            let config = config_keys.iter().find_map(|k| item.get(*k));
            let (Some(name), Some(config)) = (name, config) else { continue };
            if owner_is_dead(config) {
                match incus(delete.iter().copied().chain([name])).run() {
                    Ok(_) => removed.push(name.to_string()),
                    Err(e) => {
                        let _ = writeln!(errors, "{e}");
                    }
                }
            }
        }
    }
    let certificates = query("/1.0/certificates?recursion=1")?;
    for cert in certificates.as_array().into_iter().flatten() {
        let (Some(name), Some(fingerprint)) = (
            cert.get("name").and_then(Value::as_str),
            cert.get("fingerprint").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Some((pid, created)) = trust_owner(name) else { continue };
        if !process_alive_since(pid, created) {
            match incus(["config", "trust", "remove", fingerprint]).run() {
                Ok(_) => removed.push(format!("trust {name}")),
                Err(e) => {
                    let _ = writeln!(errors, "{e}");
                }
            }
        }
    }
    if !errors.is_empty() {
        bail!("sweep removed {removed:?} but failed on:\n{errors}");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incus::unix_now;

    #[test]
    fn only_marked_objects_with_dead_owners_are_stale() {
        let me = std::process::id().to_string();
        let now = unix_now().to_string();
        assert!(!owner_is_dead(&serde_json::json!({})));
        assert!(!owner_is_dead(&serde_json::json!({OWNER_KEY: me, CREATED_KEY: now})));
        assert!(!owner_is_dead(&serde_json::json!({OWNER_KEY: "garbage"})));
        // pid 0 is never a live owner; pid_max is never a valid pid.
        assert!(owner_is_dead(&serde_json::json!({OWNER_KEY: "0"})));
        assert!(owner_is_dead(&serde_json::json!({OWNER_KEY: "4194304"})));
        // Our own pid, but the record predates our start: the pid was reused.
        assert!(owner_is_dead(&serde_json::json!({OWNER_KEY: me, CREATED_KEY: "1000"})));
    }
}
