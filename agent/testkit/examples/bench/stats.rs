//! A figure: a series of samples, summarised (n, median, min, max, p90) with the machine's
//! load when it was measured, and progress lines.

use std::time::Duration;

use serde_json::{Value, json};

/// n, median, min, max and (n ≥ 10) p90 of a series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) p90: Option<f64>,
}

pub(crate) fn summarize(samples: &[f64]) -> Summary {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    // Nearest rank.
    let p90 = (n >= 10).then(|| v[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1]);
    Summary {
        n,
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        p90,
    }
}

/// One measured series.
pub(crate) struct Figure {
    pub(crate) key: String,
    pub(crate) title: String,
    pub(crate) unit: &'static str,
    pub(crate) samples: Vec<f64>,
    pub(crate) notes: Vec<String>,
    pub(crate) extra: serde_json::Map<String, Value>,
    /// The machine's load average (1, 5, 15 min) when the figure's runs started.
    pub(crate) load: String,
}

impl Figure {
    pub(crate) fn new(key: &str, title: &str, unit: &'static str) -> Figure {
        Figure {
            key: key.to_string(),
            title: title.to_string(),
            unit,
            samples: Vec::new(),
            notes: Vec::new(),
            extra: serde_json::Map::new(),
            load: crate::machine::loadavg(),
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        summarize(&self.samples)
    }

    pub(crate) fn json(&self) -> Value {
        let s = self.summary();
        let mut v = json!({
            "key": self.key, "title": self.title, "unit": self.unit,
            "n": s.n, "median": s.median, "min": s.min, "max": s.max,
            "samples": self.samples, "notes": self.notes, "loadavg_at_start": self.load,
        });
        if let (Some(p), Some(o)) = (s.p90, v.as_object_mut()) {
            o.insert("p90".into(), json!(p));
        }
        if let Some(o) = v.as_object_mut() {
            o.extend(self.extra.clone());
        }
        v
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}
