//! `incus monitor` for tests: [`LifecycleWatch`], the lifecycle events (every write) Incus
//! reports from the moment the watch starts, read back as JSON documents or as
//! `ACTION SOURCE` lines about one object.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use veza_host::process::Cmd;

use super::{TestProfile, incus};

/// Incus lifecycle events (every write: created, updated, started, snapshot-created, ...)
/// recorded by `incus monitor` from the moment [`LifecycleWatch::start`] returns.
#[derive(Debug)]
pub struct LifecycleWatch {
    pid: u32,
    log: std::path::PathBuf,
}

impl LifecycleWatch {
    /// Starts `incus monitor --type=lifecycle` into `log` and returns once it records
    /// (a throwaway profile created and seen), so no later event is missed.
    pub fn start(log: &std::path::Path) -> Result<LifecycleWatch> {
        let pid =
            incus(["monitor", "--type=lifecycle", "--format=json"]).spawn_daemon(Some(log))?;
        let watch = LifecycleWatch { pid, log: log.to_path_buf() };
        // A sentinel created before the monitor subscribed is never seen: another one
        // every 0.5 s until one is (on a loaded machine the monitor takes its time).
        let mut sentinels = Vec::new();
        for i in 0..3000 {
            if i % 50 == 0 {
                sentinels.push(TestProfile::create(&[], serde_json::json!({}))?);
            }
            let events = watch.events();
            let seen = sentinels.iter().any(|sentinel| {
                events.iter().any(|e| e.contains(&format!("/1.0/profiles/{}", sentinel.name())))
            });
            if seen {
                return Ok(watch);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        anyhow::bail!("`incus monitor` recorded nothing within 30s (see {})", log.display())
    }

    /// The events recorded so far, one JSON document per entry.
    pub fn events(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // `--format=json` prints one pretty-printed document per event.
        let mut docs = Vec::new();
        let stream = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
        for doc in stream {
            match doc {
                Ok(v) => docs.push(v.to_string()),
                Err(_) => break, // a document still being written
            }
        }
        docs
    }

    /// The events about an object whose name contains `needle`: `ACTION SOURCE` lines.
    pub fn about(&self, needle: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|e| {
                let m = e.get("metadata")?;
                let source = m.get("source")?.as_str()?;
                let action = m.get("action")?.as_str()?;
                source.contains(needle).then(|| format!("{action} {source}"))
            })
            .collect()
    }
}

impl Drop for LifecycleWatch {
    fn drop(&mut self) {
        let _ = Cmd::new("kill").args([self.pid.to_string()]).run();
    }
}
