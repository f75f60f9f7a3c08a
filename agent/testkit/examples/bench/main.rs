//! The benchmark driver behind `packaging/bench`: the release `veza-agent` binary on a
//! simulated host ([`DemoHost`]: signed repository over smart HTTP, HAProxy master-worker
//! on loopback, real Incus slot containers), and side by side the same work done the
//! seed's way, with `ansible-playbook` running `packaging/bench-ansible/edge.yml` against
//! the same Incus and HAProxy.
//!
//! Every figure is a series of runs summarised as n, median, min, max (and p90 when
//! n ≥ 10) with the machine's load average when its runs started; the report never
//! relies on a single timing. Figures:
//!
//! 1. no-change sync (`veza-agent apply`, process wall time and the in-process time the
//!    command prints);
//! 2. new-commit sync with a config-only change (one Incus config key of the app);
//! 3. promotion between two running colors, under a bounded request loop whose failed
//!    requests are counted;
//! 4. slot deploy of a new release on the inactive, running slot (in place);
//! 5. fetch + verify in-process (the library calls `veza-agent`'s source stage makes),
//!    with Incus observe alongside for the breakdown of a no-change sync, and the forge's
//!    side of a no-change poll (CPU of `git http-backend`, bytes each way) with the
//!    arithmetic for 1000 hosts polling one forge (`forge.rs`);
//! 6. plan for 10/100/1000/10000 declared resources (read from `plan_scale --json`);
//! 7. idle and peak RSS of the daemon `veza-agent run`.
//!
//! Writes `OUT/report.md` and `OUT/report.json`.
//!
//! Usage: `bench --agent PATH [--out DIR] [--ansible PATH/TO/ansible-playbook
//! --playbooks DIR] [--plan-scale JSON] [--quick]`.
//!
//! Layout: this file runs the figures in order; `args.rs`, `stats.rs`, `agent.rs`,
//! `fetch.rs`, `forge.rs`, `ansible.rs`, `daemon.rs`, `machine.rs`, `report.rs` hold the
//! pieces.

mod agent;
mod ansible;
mod args;
mod daemon;
mod fetch;
mod forge;
mod machine;
mod report;
mod stats;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use veza_host::process::Cmd;
use veza_testkit::demo::DemoHost;
use veza_testkit::traffic::Traffic;

use crate::agent::{Desired, apply, expect_served, plan_steps, timed_applies};
use crate::ansible::{ansible_phase, ansible_version};
use crate::args::{Sizes, parse_args};
use crate::daemon::daemon_rss;
use crate::fetch::fetch_verify;
use crate::machine::{cpu_model, first_line, loadavg};
use crate::report::write_reports;
use crate::stats::{Figure, progress};

pub(crate) fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) struct Bench {
    pub(crate) figures: Vec<Figure>,
    /// (title, agent figure key, ansible figure key, comment)
    pub(crate) comparisons: Vec<(String, String, String, String)>,
    pub(crate) checks: Vec<(String, bool, String)>,
}

impl Bench {
    pub(crate) fn figure(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }
    pub(crate) fn check(&mut self, what: &str, ok: bool, detail: String) {
        progress(&format!("check: {what}: {} {detail}", if ok { "ok" } else { "FAILED" }));
        self.checks.push((what.to_string(), ok, detail));
    }
}

pub(crate) fn run() -> Result<()> {
    let args = parse_args()?;
    let sizes = Sizes::new(args.quick);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();
    let load_start = loadavg();
    let mut b = Bench { figures: Vec::new(), comparisons: Vec::new(), checks: Vec::new() };

    progress("building the simulated host");
    let host = DemoHost::new(&args.agent, None)?;
    progress(&format!("host `{}` in {}", host.env, host.dir.display()));
    let mut d = Desired { active: "blue", blue: 0, green: 1, rev: "0".into() };
    d.commit(&host, "bench: hello on blue, release 1 on green")?;
    let first = apply(&host, &["applied"])?;
    progress(&format!("first sync: {} steps in {:.0} ms", first.steps, first.wall_ms));
    expect_served(&host, &host.releases[0].id)?;
    apply(&host, &["no-change"])?; // warm-up

    // 1. no-change sync.
    progress("1. no-change sync");
    let mut wall =
        Figure::new("no_change_sync", "no-change sync: `veza-agent apply` process", "ms");
    let mut inproc = Figure::new(
        "no_change_sync_inproc",
        "no-change sync: in-process part (printed by apply)",
        "ms",
    );
    for _ in 0..sizes.no_change {
        let r = apply(&host, &["no-change"])?;
        wall.samples.push(r.wall_ms);
        inproc.samples.push(r.inproc_ms);
    }
    wall.notes.push("fetch over smart HTTP + verify + observe Incus/HAProxy + plan + record state, whole process".into());
    inproc.notes.push("the `(N steps, M ms)` the command prints: the sync without process start, config load and runtime setup".into());
    b.figures.push(wall);
    b.figures.push(inproc);

    // 5. fetch + verify, and observe, in-process.
    progress("5. fetch + verify, observe (in-process)");
    fetch_verify(&host, &mut d, &sizes, &mut b)?;
    apply(&host, &["applied", "no-change"])?; // catch up with the poll commits

    // 2. config-only change.
    progress("2. config-only change");
    let mut cfg = Figure::new("config_change_sync", "new-commit sync, config-only change", "ms");
    let mut cfg_in = Figure::new(
        "config_change_sync_inproc",
        "new-commit sync, config-only change: in-process part",
        "ms",
    );
    let steps = timed_applies(&host, sizes.config, &mut cfg, &mut cfg_in, |i| {
        d.rev = format!("agent-{i}");
        d.commit(&host, &format!("bench: config rev {i}"))
    })?;
    let got = Cmd::new("incus")
        .args(["config", "get", &host.slots()[1], "user.bench.rev"])
        .timeout(Duration::from_secs(30))
        .run_stdout()?;
    b.check(
        "config-only change reached the slot",
        got.trim() == d.rev,
        format!("green has user.bench.rev={}", got.trim()),
    );
    cfg.notes.push(format!(
        "the app's `config:` gains a changed key, so both slots get an `update instance` step (steps per run: {steps:?})"
    ));
    cfg.notes.push("includes fetching and verifying the new commit".into());
    b.figures.push(cfg);
    b.figures.push(cfg_in);

    // 3. promotion.
    progress("3. promotion between two running colors");
    let mut promo = Figure::new(
        "promotion",
        "promotion blue <-> green (commit flips `active`), `veza-agent apply`",
        "ms",
    );
    let mut promo_in = Figure::new("promotion_inproc", "promotion: in-process part", "ms");
    let mut failed_total = 0;
    let mut failed = Vec::new();
    let mut served = Vec::new();
    for i in 0..sizes.promotion {
        d.active = if i % 2 == 0 { "green" } else { "blue" };
        d.commit(&host, &format!("bench: promote {}", d.active))?;
        if i == 0 {
            promo.notes.push(format!("steps: {}", plan_steps(&host)?));
        }
        let load = Traffic::start(&host, 1, Duration::from_millis(5));
        let r = apply(&host, &["applied"])?;
        let (ok, bad) = load.stop();
        promo.samples.push(r.wall_ms);
        promo_in.samples.push(r.inproc_ms);
        failed.push(bad as f64);
        served.push(ok);
        failed_total += bad;
        let want = if d.active == "blue" { d.blue } else { d.green };
        expect_served(&host, &host.releases[want].id)?;
    }
    promo.notes.push(format!(
        "health gate + validated config install + master-CLI reload + 5 verification requests through the edge; {} promotions alternating green/blue; requests during each: {served:?} ok",
        sizes.promotion
    ));
    let mut fail_fig = Figure::new(
        "promotion_failed_requests",
        "failed requests during an agent promotion",
        "requests",
    );
    fail_fig.samples = failed;
    fail_fig.extra.insert("total".into(), json!(failed_total));
    b.check(
        "no failed request during agent promotions",
        failed_total == 0,
        format!("{failed_total} failed"),
    );
    b.figures.push(promo);
    b.figures.push(promo_in);
    b.figures.push(fail_fig);

    // 4. full slot deploy.
    progress("4. full slot deploy on the inactive slot");
    let mut deploy =
        Figure::new("slot_deploy", "full slot deploy of a new release on the inactive slot", "ms");
    let mut deploy_in =
        Figure::new("slot_deploy_inproc", "full slot deploy: in-process part", "ms");
    let steps = timed_applies(&host, sizes.deploy, &mut deploy, &mut deploy_in, |i| {
        d.green = if i % 2 == 0 { 0 } else { 1 };
        d.commit(&host, &format!("bench: release {} on green", d.green))
    })?;
    if d.green != 1 {
        d.green = 1;
        d.commit(&host, "bench: release 1 on green")?;
        apply(&host, &["applied"])?;
    }
    deploy.notes.push(format!(
        "the release deployed in place into the running green slot (artifact from the cache, digest checked, pushed, unpacked, swapped in, app restarted; the container and its proxy device kept); steps per run: {steps:?}"
    ));
    b.figures.push(deploy);
    b.figures.push(deploy_in);
    apply(&host, &["no-change"])?;

    // Ansible, the seed's way.
    if let (Some(bin), Some(dir)) = (&args.ansible, &args.playbooks) {
        ansible_phase(&host, &d, bin, dir, &sizes, &mut b)?;
    }

    // 7. daemon RSS.
    progress("7. daemon RSS");
    // A failure here (the shared incusd can stall an operation past its limit) is a
    // failed check in a report that keeps every figure measured before it.
    if let Err(e) = daemon_rss(&host, &args.agent, &mut d, &mut b) {
        b.check("the daemon phase ran to its end", false, format!("{e:#}"));
    }

    // 6. plan scale.
    let plan_scale = match &args.plan_scale {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                serde_json::from_str::<Value>(&text)
                    .with_context(|| format!("parsing {}", p.display()))?,
            )
        }
        None => None,
    };

    let load_end = loadavg();
    let versions = json!({
        "veza-agent": first_line(Cmd::new(&args.agent).arg("--version")),
        "haproxy": first_line(Cmd::new("haproxy").arg("-v")),
        "incus": Cmd::new("incus")
            .arg("version")
            .timeout(Duration::from_secs(30))
            .run_stdout()
            .map(|s| s.lines().map(str::trim).collect::<Vec<_>>().join("; "))
            .unwrap_or_else(|e| format!("unknown ({e})")),
        "rustc": first_line(Cmd::new("rustc").arg("-V")),
        "ansible-core": match (&args.ansible, &args.playbooks) {
            (Some(bin), Some(dir)) => ansible_version(bin, dir),
            _ => "not run".to_string(),
        },
    });
    let machine = json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu_model(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
    });
    let at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    write_reports(&args, &b, &machine, &versions, plan_scale.as_ref(), started.elapsed(), at)?;
    if b.checks.iter().any(|(_, ok, _)| !ok) {
        bail!("some checks failed; see {}", args.out.join("report.md").display());
    }
    Ok(())
}
