//! What one sync did, as its caller sees it ([`SyncSummary`]: exit codes, `sync` replies,
//! the daemon's log lines) and where its time went ([`Laps`], stage by stage).

use std::time::Instant;

use veza_state::Outcome;

/// What a sync did, for the caller (exit codes, `sync` replies, logs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SyncSummary {
    /// Outcome.
    pub outcome: Outcome,
    /// The commit worked on.
    pub commit: Option<String>,
    /// Why, when not applied or no-change.
    pub reason: Option<String>,
    /// Steps executed.
    pub steps: usize,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// A newer commit preempted this run: sync again at once.
    #[serde(default)]
    pub preempted: bool,
    /// What the plan refused to do (`resource: reason`): the run is not clean even when
    /// everything else applied.
    #[serde(default)]
    pub refusals: Vec<String>,
    /// Where the time went, stage by stage, in microseconds (`sync --json`, the daemon's
    /// debug log, the bench).
    #[serde(default)]
    pub stages_us: Vec<(String, u64)>,
}

/// Laps of one sync: each stage's wall time, in order.
#[derive(Debug)]
pub struct Laps {
    last: Instant,
    done: Vec<(String, u64)>,
}

impl Laps {
    /// Starts timing now.
    pub fn start() -> Laps {
        Laps { last: Instant::now(), done: Vec::new() }
    }

    /// Ends the stage `name` now (the next one starts).
    pub fn lap(&mut self, name: &str) {
        let now = Instant::now();
        self.done.push((name.to_string(), now.duration_since(self.last).as_micros() as u64));
        self.last = now;
    }

    /// The stages so far.
    pub fn into_stages(self) -> Vec<(String, u64)> {
        self.done
    }
}

/// `fetch 2.1 ms, accept 0.4 ms, …` for a log line.
pub fn describe_stages(stages: &[(String, u64)]) -> String {
    stages
        .iter()
        .map(|(name, us)| format!("{name} {:.1} ms", *us as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.outcome.as_str())?;
        if let Some(c) = &self.commit {
            write!(f, " {}", veza_model::manifest::short_id(c, 12))?;
        }
        write!(f, " ({} steps, {} ms)", self.steps, self.duration_ms)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        if !self.refusals.is_empty() {
            write!(f, "; {} refused (not done):", self.refusals.len())?;
            for r in &self.refusals {
                write!(f, "\n  refused: {r}")?;
            }
        }
        Ok(())
    }
}
