//! Driving `veza-agent` on the simulated host: `apply` and its printed summary, `plan`, the
//! desired manifest, and what the edge serves.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veza_testkit::demo::DemoHost;

use crate::stats::{Figure, ms};

/// What one `veza-agent apply` printed and how long the process took.
#[derive(Debug)]
pub(crate) struct ApplyRun {
    pub(crate) wall_ms: f64,
    pub(crate) outcome: String,
    pub(crate) steps: usize,
    pub(crate) inproc_ms: f64,
}

/// Parses `OUTCOME COMMIT (N steps, M ms)[: reason]`.
pub(crate) fn parse_summary(line: &str) -> Option<(String, usize, f64)> {
    let outcome = line.split_whitespace().next()?.to_string();
    let inner = line.split_once('(')?.1.split_once(')')?.0;
    let (steps, rest) = inner.split_once(" steps, ")?;
    let m = rest.strip_suffix(" ms")?;
    Some((outcome, steps.trim().parse().ok()?, m.trim().parse().ok()?))
}

pub(crate) fn apply(host: &DemoHost, expect: &[&str]) -> Result<ApplyRun> {
    let t = Instant::now();
    let out = host.agent(&["apply"])?;
    let wall_ms = ms(t.elapsed());
    let stdout = out.stdout_str();
    let line = stdout.lines().last().unwrap_or_default();
    let (outcome, steps, inproc_ms) = parse_summary(line).with_context(|| {
        format!("unexpected `veza-agent apply` output:\n{stdout}\n{}", out.stderr_str())
    })?;
    if !expect.contains(&outcome.as_str()) || !out.status.success() {
        bail!("`veza-agent apply` gave `{line}` (expected {expect:?}):\n{}", out.stderr_str());
    }
    Ok(ApplyRun { wall_ms, outcome, steps, inproc_ms })
}

/// The steps `veza-agent plan` lists for the pending commit (untimed; for the notes).
pub(crate) fn plan_steps(host: &DemoHost) -> Result<String> {
    let out = host.agent(&["plan"])?;
    let steps: Vec<String> = out
        .stdout_str()
        .lines()
        .filter_map(|l| {
            let (num, rest) = l.trim_start().split_once(". ")?;
            num.parse::<usize>().ok().map(|_| rest.trim().to_string())
        })
        .collect();
    Ok(steps.join("; "))
}

/// What the manifest declares; committed by [`Desired::commit`].
#[derive(Debug, Clone)]
pub(crate) struct Desired {
    pub(crate) active: &'static str,
    pub(crate) blue: usize,
    pub(crate) green: usize,
    /// Value of the app's `user.bench.rev` Incus config key.
    pub(crate) rev: String,
}

impl Desired {
    pub(crate) fn text(&self, host: &DemoHost) -> Result<String> {
        let base = host.manifest(self.active, Some(self.blue), Some(self.green));
        let text =
            base.replacen("config: {", &format!("config: {{user.bench.rev: \"{}\", ", self.rev), 1);
        if text == base {
            bail!("the demo manifest has no `config: {{` line to add the benchmark key to");
        }
        Ok(text)
    }

    pub(crate) fn commit(&self, host: &DemoHost, message: &str) -> Result<String> {
        host.commit(&self.text(host)?, message)
    }
}

pub(crate) fn expect_served(host: &DemoHost, release: &str) -> Result<()> {
    // The switch is verified by the tool that made it; this is the driver's own check.
    let mut last = String::new();
    for _ in 0..100 {
        last = host.served_release().unwrap_or_default();
        if last == release {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the edge serves `{last}`, expected release `{release}`")
}

/// `runs` syncs of a new commit each: `change(i)` commits run `i`'s change (its id), then one
/// `veza-agent apply` must end `applied`; its process time goes into `wall`, its
/// in-process time into `inproc`, and the plan of the first run into `wall`'s notes.
/// Returns the steps of each run.
pub(crate) fn timed_applies(
    host: &DemoHost,
    runs: usize,
    wall: &mut Figure,
    inproc: &mut Figure,
    mut change: impl FnMut(usize) -> Result<String>,
) -> Result<Vec<usize>> {
    let mut steps = Vec::new();
    for i in 0..runs {
        change(i)?;
        if i == 0 {
            wall.notes.push(format!("steps: {}", plan_steps(host)?));
        }
        let r = apply(host, &["applied"])?;
        wall.samples.push(r.wall_ms);
        inproc.samples.push(r.inproc_ms);
        steps.push(r.steps);
    }
    Ok(steps)
}
