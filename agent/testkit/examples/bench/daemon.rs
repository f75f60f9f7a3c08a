//! The daemon `veza-agent run`: a sync through its socket, and its idle and peak RSS.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veza_host::process::Cmd;
use veza_testkit::app::{kill_pid, process_alive};
use veza_testkit::demo::DemoHost;

use crate::Bench;
use crate::agent::Desired;
use crate::stats::Figure;

/// A `veza-agent run` started by the bench, stopped (by pid) on drop.
pub(crate) struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_pid(self.0, "TERM", Duration::from_secs(30));
    }
}

/// `/proc/PID/status` of a process.
struct ProcStatus(String);

impl ProcStatus {
    fn read(pid: u32) -> Result<ProcStatus> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map(ProcStatus)
            .with_context(|| format!("reading /proc/{pid}/status"))
    }
    /// The first word of the line `NAME:` (a number of KiB, or a count).
    fn field(&self, name: &str) -> Option<u64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }
    fn mib(&self, name: &str) -> String {
        self.field(name).map_or_else(|| "?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
    }
}

/// `(VmRSS, VmHWM)` of a process in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = ProcStatus::read(pid)?;
    Ok((status.field("VmRSS").context("no VmRSS")?, status.field("VmHWM").context("no VmHWM")?))
}

/// What the resident set is made of (`RssAnon`, `RssFile`, `RssShmem`), and the
/// process's threads, for the report.
fn rss_parts(pid: u32) -> Result<String> {
    let status = ProcStatus::read(pid)?;
    Ok(format!(
        "of it anonymous (heap, stacks) {} MiB, file-backed (the binary's and libraries' code pages) {} MiB, shared memory {} MiB; {} threads",
        status.mib("RssAnon"),
        status.mib("RssFile"),
        status.mib("RssShmem"),
        status.field("Threads").map_or_else(|| "?".to_string(), |n| n.to_string())
    ))
}

pub(crate) fn daemon_sync(host: &DemoHost, expect: &str) -> Result<String> {
    let out = host.agent(&["sync", "--timeout", "120"])?;
    let line = out.stdout_str().trim().to_string();
    if !line.starts_with(expect) {
        bail!("`veza-agent sync` gave `{line}`, expected `{expect}`:\n{}", out.stderr_str());
    }
    Ok(line)
}

/// Figure 7: RSS of `veza-agent run` idle (no-change polls every 2 s) and its peak
/// after a config change, two promotions and a slot deploy.
pub(crate) fn daemon_rss(
    host: &DemoHost,
    agent: &Path,
    d: &mut Desired,
    b: &mut Bench,
) -> Result<()> {
    let log = host.dir.join("daemon.log");
    let state_dir = host.dir.join("state");
    // As packaging/veza-agent.service runs it (one malloc arena).
    let pid = Cmd::new(agent)
        .env("MALLOC_ARENA_MAX", "1")
        .args(["run", "--max-syncs", "500", "--config"])
        .arg(&host.config_path)
        .spawn_daemon(Some(&log))?;
    let daemon = Daemon(pid);
    let sock = state_dir.join("control.sock");
    let t = Instant::now();
    while !sock.exists() {
        if !process_alive(pid) || t.elapsed() > Duration::from_secs(30) {
            bail!(
                "the daemon did not open {}:\n{}",
                sock.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon_sync(host, "no-change")?;
    b.figures.push(daemon_no_change(host)?);
    let mut idle = Figure::new(
        "daemon_rss_idle",
        "daemon RSS, idle between no-change polls (VmRSS samples every 100 ms over ~8 s)",
        "MiB",
    );
    for _ in 0..80 {
        idle.samples.push(rss_kib(pid)?.0 as f64 / 1024.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, hwm_idle) = rss_kib(pid)?;
    idle.notes.push(format!(
        "poll interval 2 s + jitter, so ~4 no-change syncs fall inside the sampling window; peak so far (VmHWM) {:.1} MiB; {}",
        hwm_idle as f64 / 1024.0,
        rss_parts(pid)?
    ));

    d.rev = "daemon".into();
    d.commit(host, "bench: daemon config change")?;
    let mut work = vec![daemon_sync(host, "applied")?];
    for active in ["green", "blue"] {
        d.active = active;
        d.commit(host, &format!("bench: daemon promote {active}"))?;
        work.push(daemon_sync(host, "applied")?);
    }
    d.green = 0;
    d.commit(host, "bench: daemon slot deploy")?;
    work.push(daemon_sync(host, "applied")?);
    work.push(daemon_sync(host, "no-change")?);
    let (rss_after, hwm) = rss_kib(pid)?;
    drop(daemon);
    let mut peak = Figure::new(
        "daemon_rss_peak",
        "daemon peak RSS (VmHWM) after a config change, two promotions and a slot deploy",
        "MiB",
    );
    peak.samples.push(hwm as f64 / 1024.0);
    peak.notes.push(format!(
        "one process, one reading (a high-water mark, not a timing); RSS right after: {:.1} MiB; syncs: {}",
        rss_after as f64 / 1024.0,
        work.join(" | ")
    ));
    b.figures.push(idle);
    b.figures.push(peak);
    Ok(())
}

/// The daemon's no-change sync in process, stage by stage, from `veza-agent sync --json`:
/// the commit is applied and Incus quiet, so the daemon reuses its last reading.
fn daemon_no_change(host: &DemoHost) -> Result<Figure> {
    let mut fig = Figure::new(
        "daemon_no_change_sync_inproc",
        "no-change sync in the daemon, in process (sum of the stages `sync --json` reports)",
        "ms",
    );
    let mut stages: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let mut order: Vec<String> = Vec::new();
    for _ in 0..30 {
        let out = host.agent(&["sync", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(out.stdout_str().trim())
            .with_context(|| format!("`sync --json` printed {}", out.stdout_str()))?;
        if v["outcome"] != "no-change" {
            bail!("expected a no-change sync: {v}");
        }
        let mut total = 0.0;
        for s in v["stages_us"].as_array().into_iter().flatten() {
            let (Some(name), Some(us)) = (s[0].as_str(), s[1].as_u64()) else { continue };
            let ms = us as f64 / 1000.0;
            total += ms;
            if !order.iter().any(|o| o == name) {
                order.push(name.to_string());
            }
            stages.entry(name.to_string()).or_default().push(ms);
        }
        fig.samples.push(total);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let parts: Vec<String> = order
        .iter()
        .filter_map(|name| {
            let v = stages.get_mut(name)?;
            let n = v.len();
            Some(format!("{name} {:.2} ms (×{n})", median(v)))
        })
        .collect();
    fig.notes.push(format!("median per stage: {}", parts.join(", ")));
    fig.notes.push(
        "`fetch` is one smart-HTTP request when nothing changed (a protocol-v2 `ls-refs` on the kept client, `Mirror::poll`), a `git http-backend` + `git upload-pack` process on the forge side; the full fetch only runs when the forge advertises something new".into(),
    );
    Ok(fig)
}
