//! The benchmark driver behind `packaging/bench`: the release `veza-agent` binary on a
//! simulated host ([`DemoHost`]: signed repository over smart HTTP, HAProxy master-worker
//! on loopback, real Incus slot containers), and side by side the same work done the
//! seed's way, with `ansible-playbook` running `packaging/bench-ansible/edge.yml` against
//! the same Incus and HAProxy.
//!
//! Every figure is a series of runs summarised as n, median, min, max (and p90 when
//! n ≥ 10); the report never relies on a single timing. Figures:
//!
//! 1. no-change sync (`veza-agent apply`, process wall time and the in-process time the
//!    command prints);
//! 2. new-commit sync with a config-only change (one Incus config key of the app);
//! 3. promotion between two running colors, under a bounded request loop whose failed
//!    requests are counted;
//! 4. full slot deploy of a new release on the inactive slot (delete, create, deploy);
//! 5. fetch + verify in-process (the library calls `veza-agent`'s source stage makes),
//!    with Incus observe alongside for the breakdown of a no-change sync;
//! 6. plan for 10/100/1000 declared resources (read from `plan_scale --json`);
//! 7. idle and peak RSS of the daemon `veza-agent run`.
//!
//! Writes `OUT/report.md` and `OUT/report.json`.
//!
//! Usage: `bench --agent PATH [--out DIR] [--ansible PATH/TO/ansible-playbook
//! --playbooks DIR] [--plan-scale JSON] [--quick]`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use veza_host::incus::{Incus, IncusClient};
use veza_host::process::{Cmd, Output};
use veza_source::fetch::{FetchOptions, Mirror};
use veza_testkit::app::{kill_pid, process_alive};
use veza_testkit::demo::DemoHost;
use veza_testkit::traffic::Traffic;

// ------------------------------------------------------------------------------- args

struct Args {
    agent: PathBuf,
    out: PathBuf,
    ansible: Option<PathBuf>,
    playbooks: Option<PathBuf>,
    plan_scale: Option<PathBuf>,
    quick: bool,
}

fn parse_args() -> Result<Args> {
    let usage = "usage: bench --agent PATH [--out DIR] [--ansible PATH --playbooks DIR] [--plan-scale JSON] [--quick]";
    let mut a = Args {
        agent: PathBuf::new(),
        out: PathBuf::from("target/bench"),
        ansible: None,
        playbooks: None,
        plan_scale: None,
        quick: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().map(PathBuf::from).context(usage);
        match arg.as_str() {
            "--agent" => a.agent = value()?,
            "--out" => a.out = value()?,
            "--ansible" => a.ansible = Some(value()?),
            "--playbooks" => a.playbooks = Some(value()?),
            "--plan-scale" => a.plan_scale = Some(value()?),
            "--quick" => a.quick = true,
            other => bail!("unknown argument `{other}`\n{usage}"),
        }
    }
    if a.agent.as_os_str().is_empty() {
        bail!("{usage}");
    }
    if a.ansible.is_some() != a.playbooks.is_some() {
        bail!("--ansible and --playbooks go together\n{usage}");
    }
    Ok(a)
}

/// Runs per figure.
struct Sizes {
    no_change: usize,
    config: usize,
    promotion: usize,
    deploy: usize,
    fetch: usize,
    ansible: usize,
    ansible_promotion: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                no_change: 5,
                config: 3,
                promotion: 2,
                deploy: 2,
                fetch: 5,
                ansible: 2,
                ansible_promotion: 2,
            }
        } else {
            Sizes {
                no_change: 20,
                config: 10,
                promotion: 8,
                deploy: 6,
                fetch: 20,
                ansible: 8,
                ansible_promotion: 8,
            }
        }
    }
}

// ------------------------------------------------------------------------------- stats

/// n, median, min, max and (n ≥ 10) p90 of a series.
#[derive(Debug, Clone, Copy)]
struct Summary {
    n: usize,
    median: f64,
    min: f64,
    max: f64,
    p90: Option<f64>,
}

fn summarize(samples: &[f64]) -> Summary {
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
struct Figure {
    key: String,
    title: String,
    unit: &'static str,
    samples: Vec<f64>,
    notes: Vec<String>,
    extra: serde_json::Map<String, Value>,
}

impl Figure {
    fn new(key: &str, title: &str, unit: &'static str) -> Figure {
        Figure {
            key: key.to_string(),
            title: title.to_string(),
            unit,
            samples: Vec::new(),
            notes: Vec::new(),
            extra: serde_json::Map::new(),
        }
    }

    fn summary(&self) -> Summary {
        summarize(&self.samples)
    }

    fn json(&self) -> Value {
        let s = self.summary();
        let mut v = json!({
            "key": self.key, "title": self.title, "unit": self.unit,
            "n": s.n, "median": s.median, "min": s.min, "max": s.max,
            "samples": self.samples, "notes": self.notes,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

// ------------------------------------------------------------------------------- agent

/// What one `veza-agent apply` printed and how long the process took.
#[derive(Debug)]
struct ApplyRun {
    wall_ms: f64,
    outcome: String,
    steps: usize,
    inproc_ms: f64,
}

/// Parses `OUTCOME COMMIT (N steps, M ms)[: reason]`.
fn parse_summary(line: &str) -> Option<(String, usize, f64)> {
    let outcome = line.split_whitespace().next()?.to_string();
    let inner = line.split_once('(')?.1.split_once(')')?.0;
    let (steps, rest) = inner.split_once(" steps, ")?;
    let m = rest.strip_suffix(" ms")?;
    Some((outcome, steps.trim().parse().ok()?, m.trim().parse().ok()?))
}

fn apply(host: &DemoHost, expect: &[&str]) -> Result<ApplyRun> {
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
fn plan_steps(host: &DemoHost) -> Result<String> {
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
struct Desired {
    active: &'static str,
    blue: usize,
    green: usize,
    /// Value of the app's `user.bench.rev` Incus config key.
    rev: String,
}

impl Desired {
    fn text(&self, host: &DemoHost) -> Result<String> {
        let base = host.manifest(self.active, Some(self.blue), Some(self.green));
        let text =
            base.replacen("config: {", &format!("config: {{user.bench.rev: \"{}\", ", self.rev), 1);
        if text == base {
            bail!("the demo manifest has no `config: {{` line to add the benchmark key to");
        }
        Ok(text)
    }

    fn commit(&self, host: &DemoHost, message: &str) -> Result<String> {
        host.commit(&self.text(host)?, message)
    }
}

fn expect_served(host: &DemoHost, release: &str) -> Result<()> {
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

// ------------------------------------------------------------------------------- ansible

/// `ansible-playbook` on the seed-style playbook.
struct Ansible {
    bin: PathBuf,
    dir: PathBuf,
    vars: PathBuf,
    python: PathBuf,
    /// `ANSIBLE_LOCAL_TEMP`, outside the source tree.
    tmp: PathBuf,
}

/// The recap counters of one play run.
#[derive(Debug, Default)]
struct Recap {
    changed: u64,
    failed: u64,
}

fn parse_recap(stdout: &str) -> Option<Recap> {
    let line = stdout.lines().rev().find(|l| l.contains(" changed=") && l.contains(" failed="))?;
    let get = |k: &str| -> Option<u64> {
        line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok())
    };
    Some(Recap { changed: get("changed=")?, failed: get("failed=")? })
}

impl Ansible {
    fn run(&self, playbook: &str, extra: &[String], check: bool) -> Result<(f64, Recap, Output)> {
        let mut cmd = Cmd::new(&self.bin)
            .args(["-c", "local", "-i", "localhost,", playbook])
            .arg("-e")
            .arg(format!("@{}", self.vars.display()))
            .arg("-e")
            .arg(format!("ansible_python_interpreter={}", self.python.display()))
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_LOCAL_TEMP", &self.tmp)
            .current_dir(&self.dir)
            .timeout(Duration::from_secs(300));
        for e in extra {
            cmd = cmd.arg("-e").arg(e);
        }
        if check {
            cmd = cmd.args(["--check", "--diff"]);
        }
        let t = Instant::now();
        let out = cmd.output()?;
        let wall = ms(t.elapsed());
        let stdout = out.stdout_str();
        // A play without tasks has no host line in its recap.
        let recap = parse_recap(&stdout).unwrap_or_default();
        if !out.status.success() || recap.failed > 0 {
            bail!("ansible-playbook {playbook} failed:\n{stdout}\n{}", out.stderr_str());
        }
        Ok((wall, recap, out))
    }
}

/// First line of `ansible-playbook --version`.
fn ansible_version(bin: &Path, dir: &Path) -> String {
    Cmd::new(bin)
        .arg("--version")
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .timeout(Duration::from_secs(60))
        .run_stdout()
        .map(|s| s.lines().next().unwrap_or_default().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn write_ansible_vars(host: &DemoHost, d: &Desired, path: &Path, state: &Path) -> Result<()> {
    let [blue, green] = host.slots();
    let hd = host.haproxy.dir();
    let vars = json!({
        "bench_env": host.env,
        "bench_host_name": host.host_name,
        "bench_edge_port": host.edge_port,
        "bench_cookie": format!("VEZA_{}", host.env),
        "bench_haproxy_cfg": host.haproxy.config_path(),
        "bench_master_socket": host.haproxy.master_socket(),
        "bench_stats_socket": hd.join("admin.sock"),
        "bench_server_state_file": hd.join("server-state"),
        "bench_state_dir": state,
        "bench_config_key": "user.bench.rev",
        "bench_slots": {
            "blue": {"name": blue, "port": host.slot_ports.0, "release": host.releases[d.blue].id},
            "green": {"name": green, "port": host.slot_ports.1, "release": host.releases[d.green].id},
        },
    });
    std::fs::write(path, serde_json::to_string_pretty(&vars)?)
        .with_context(|| format!("writing {}", path.display()))
}

// ------------------------------------------------------------------------------- daemon

/// A `veza-agent run` started by the bench, stopped (by pid) on drop.
struct Daemon(u32);

impl Drop for Daemon {
    fn drop(&mut self) {
        kill_pid(self.0, "TERM", Duration::from_secs(30));
    }
}

/// `(VmRSS, VmHWM)` of a process in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Ok((field("VmRSS:").context("no VmRSS")?, field("VmHWM:").context("no VmHWM")?))
}

fn daemon_sync(host: &DemoHost, expect: &str) -> Result<String> {
    let out = host.agent(&["sync", "--timeout", "120"])?;
    let line = out.stdout_str().trim().to_string();
    if !line.starts_with(expect) {
        bail!("`veza-agent sync` gave `{line}`, expected `{expect}`:\n{}", out.stderr_str());
    }
    Ok(line)
}

// ------------------------------------------------------------------------------- machine

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn first_line(cmd: Cmd) -> String {
    cmd.timeout(Duration::from_secs(30))
        .run_stdout()
        .map(|s| s.lines().next().unwrap_or_default().trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

// ------------------------------------------------------------------------------- main

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e:#}");
        std::process::exit(1);
    }
}

struct Bench {
    figures: Vec<Figure>,
    /// (title, agent figure key, ansible figure key, comment)
    comparisons: Vec<(String, String, String, String)>,
    checks: Vec<(String, bool, String)>,
}

impl Bench {
    fn figure(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }
    fn check(&mut self, what: &str, ok: bool, detail: String) {
        progress(&format!("check: {what}: {} {detail}", if ok { "ok" } else { "FAILED" }));
        self.checks.push((what.to_string(), ok, detail));
    }
}

fn run() -> Result<()> {
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
    let mut steps = Vec::new();
    for i in 0..sizes.config {
        d.rev = format!("agent-{i}");
        d.commit(&host, &format!("bench: config rev {i}"))?;
        if i == 0 {
            cfg.notes.push(format!("steps: {}", plan_steps(&host)?));
        }
        let r = apply(&host, &["applied"])?;
        cfg.samples.push(r.wall_ms);
        cfg_in.samples.push(r.inproc_ms);
        steps.push(r.steps);
    }
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
    let mut steps = Vec::new();
    for i in 0..sizes.deploy {
        d.green = if i % 2 == 0 { 0 } else { 1 };
        d.commit(&host, &format!("bench: release {} on green", d.green))?;
        if i == 0 {
            deploy.notes.push(format!("steps: {}", plan_steps(&host)?));
        }
        let r = apply(&host, &["applied"])?;
        deploy.samples.push(r.wall_ms);
        deploy_in.samples.push(r.inproc_ms);
        steps.push(r.steps);
    }
    if d.green != 1 {
        d.green = 1;
        d.commit(&host, "bench: release 1 on green")?;
        apply(&host, &["applied"])?;
    }
    deploy.notes.push(format!(
        "delete + create (busybox image, proxy device) + download/verify/unpack/start the artifact; steps per run: {steps:?}"
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
    daemon_rss(&host, &args.agent, &mut d, &mut b)?;

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

/// Figure 5: the source stage in-process (fetch over smart HTTP into a bare mirror,
/// ancestry, signature, manifest read + validation), and Incus observe alone.
fn fetch_verify(host: &DemoHost, d: &mut Desired, sizes: &Sizes, b: &mut Bench) -> Result<()> {
    let mirror_dir = host.dir.join("bench-mirror.git");
    let mut mirror = Mirror::open_or_init(&mirror_dir)?;
    let urls = vec![host.http.url("manifests.git")];
    let opts = FetchOptions::new("main", Duration::from_secs(20));
    let signers = host.dir.join("allowed_signers");
    let path = host.manifest_path();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut last = mirror.fetch(&urls, &opts)?.tip;
    let poll = |mirror: &mut Mirror,
                last: veza_source::fetch::ObjectId|
     -> Result<veza_source::fetch::ObjectId> {
        let tip = mirror.fetch(&urls, &opts)?.tip;
        let last = last.to_string();
        let acceptance = veza_source::Acceptance {
            allowed_signers: &signers,
            policy: None,
            last_applied: Some(&last),
            manifests: std::slice::from_ref(&path),
            host: &host.env,
            max_refs: 10_000,
            now,
            identities: None,
        };
        veza_source::accept(mirror, tip, &acceptance).map_err(|r| anyhow::anyhow!(r.reason))?;
        Ok(tip)
    };
    let mut idle =
        Figure::new("fetch_verify_idle", "fetch + verify, no new commit (in-process)", "ms");
    for _ in 0..sizes.fetch {
        let t = Instant::now();
        let tip = poll(&mut mirror, last)?;
        idle.samples.push(ms(t.elapsed()));
        if tip != last {
            bail!("the tip moved during the no-new-commit polls");
        }
    }
    let mut fresh =
        Figure::new("fetch_verify_new", "fetch + verify, one new signed commit (in-process)", "ms");
    let base = d.text(host)?;
    for i in 0..sizes.fetch.min(10) {
        host.commit(&format!("{base}# bench poll {i}\n"), &format!("bench: poll {i}"))?;
        let t = Instant::now();
        let tip = poll(&mut mirror, last)?;
        fresh.samples.push(ms(t.elapsed()));
        if tip == last {
            bail!("the new commit was not fetched");
        }
        last = tip;
    }
    let how = "gix fetch over smart HTTP (git http-backend on 127.0.0.1) into a bare mirror, ancestry check, SSHSIG ed25519 verification, manifest read + parse + validate: the library calls of `veza-agent`'s source stage, timed in-process (no Incus, no state file)";
    idle.notes.push(how.into());
    fresh.notes.push("as above, the fetch transfers one new commit".into());
    b.figures.push(idle);
    b.figures.push(fresh);

    let rt = veza_host::incus::runtime()?;
    let client = IncusClient::local();
    let mut obs =
        Figure::new("observe_incus", "observe Incus (in-process, for the breakdown)", "ms");
    // The agent's own scope for these manifests: no networks declared, so no network list.
    let scope = veza_host::incus::Scope::WITHOUT_NETWORKS;
    rt.block_on(client.observe_scoped(scope))?;
    for _ in 0..sizes.fetch {
        let t = Instant::now();
        rt.block_on(client.observe_scoped(scope))?;
        obs.samples.push(ms(t.elapsed()));
    }
    let count = rt.block_on(client.observe_scoped(scope))?.instances.len();
    obs.notes.push(format!(
        "instances, profiles and storage pools (`?recursion=1` each; no network list: the manifests declare no network) over the Unix socket, {count} instances on the host (other engineers' included)"
    ));
    b.figures.push(obs);
    Ok(())
}

fn ansible_phase(
    host: &DemoHost,
    d: &Desired,
    bin: &Path,
    dir: &Path,
    sizes: &Sizes,
    b: &mut Bench,
) -> Result<()> {
    progress("ansible: the seed's way");
    let state = host.dir.join("ansible-state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join(format!("active-color-{}", host.env)), format!("{}\n", d.active))?;
    let vars = host.dir.join("ansible-vars.json");
    write_ansible_vars(host, d, &vars, &state)?;
    let python =
        bin.parent().map(|p| p.join("python")).context("ansible-playbook has no directory")?;
    let tmp = host.dir.join("ansible-tmp");
    let a = Ansible { bin: bin.to_path_buf(), dir: dir.to_path_buf(), vars, python, tmp };
    let color = |c: &str| format!("active={c}");
    let cfgv = |v: &str| format!("bench_config_value={v}");

    // The template must reproduce the agent's config byte for byte, else "no change"
    // would not mean the same thing to both tools.
    let (_, recap, out) = a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], true)?;
    b.check(
        "ansible template renders the agent's live config byte for byte",
        recap.changed == 0,
        format!("--check --diff reported changed={}", recap.changed),
    );
    if recap.changed != 0 {
        bail!("the ansible template differs from the agent's config:\n{}", out.stdout_str());
    }

    let mut floor = Figure::new("ansible_floor", "ansible-playbook floor: empty play", "ms");
    for _ in 0..sizes.ansible.min(5) {
        floor.samples.push(a.run("empty.yml", &[], false)?.0);
    }
    floor.notes.push(
        "interpreter start + inventory + one play with no tasks: the fixed cost of every run"
            .into(),
    );
    b.figures.push(floor);

    progress("ansible: no-change");
    let mut nc = Figure::new("ansible_no_change", "ansible: no-change run of edge.yml", "ms");
    for _ in 0..sizes.ansible {
        let (ms, recap, _) = a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], false)?;
        if recap.changed != 0 {
            bail!("a no-change ansible run changed {} things", recap.changed);
        }
        nc.samples.push(ms);
    }
    nc.notes.push("incus info ×2, incus config get ×2, haproxy -c, active-color file, template compare: nothing changes, no reload".into());
    b.figures.push(nc);

    progress("ansible: config-only change");
    let mut cc = Figure::new(
        "ansible_config_change",
        "ansible: config-only change (incus config set on both slots)",
        "ms",
    );
    for i in 0..sizes.ansible.min(5) {
        let (ms, recap, _) =
            a.run("edge.yml", &[color(d.active), cfgv(&format!("ansible-{i}"))], false)?;
        if recap.changed == 0 {
            bail!("the ansible config change changed nothing");
        }
        cc.samples.push(ms);
    }
    a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], false)?; // back to the agent's value
    cc.notes.push("the no-change checks plus `incus config set` on both slots; no new commit to fetch or verify".into());
    b.figures.push(cc);

    progress("ansible: promotion");
    let mut pr = Figure::new(
        "ansible_promotion",
        "ansible: promotion blue <-> green (template, haproxy -c, reload, verify)",
        "ms",
    );
    let mut failed = Vec::new();
    let mut failed_total = 0;
    let mut active = d.active;
    for i in 0..sizes.ansible_promotion {
        active = if i % 2 == 0 { "green" } else { "blue" };
        let load = Traffic::start(host, 1, Duration::from_millis(5));
        let (ms, recap, _) = a.run("edge.yml", &[color(active), cfgv(&d.rev)], false)?;
        let (_, bad) = load.stop();
        if recap.changed == 0 {
            bail!("the ansible promotion changed nothing");
        }
        pr.samples.push(ms);
        failed.push(bad as f64);
        failed_total += bad;
        let want = if active == "blue" { d.blue } else { d.green };
        expect_served(host, &host.releases[want].id)?;
    }
    if active != d.active {
        a.run("edge.yml", &[color(d.active), cfgv(&d.rev)], false)?;
    }
    pr.notes.push("no health gate on the new color (the seed probed it in phase C, at deploy time), no server-state dump; verification: 5 requests in a row through the edge".into());
    let mut pf = Figure::new(
        "ansible_promotion_failed_requests",
        "failed requests during an ansible promotion",
        "requests",
    );
    pf.samples = failed;
    pf.extra.insert("total".into(), json!(failed_total));
    b.figures.push(pr);
    b.figures.push(pf);

    // The agent must find the host as it left it.
    let r = apply(host, &["no-change", "applied"])?;
    b.check(
        "after the ansible runs the agent finds nothing to change",
        r.steps == 0,
        format!("agent: {} ({} steps)", r.outcome, r.steps),
    );

    for (title, agent, ansible, comment) in [
        (
            "no-change sync",
            "no_change_sync",
            "ansible_no_change",
            "agent: also fetches and verifies the signed commit; ansible: given the desired state on its command line",
        ),
        (
            "config-only change",
            "config_change_sync",
            "ansible_config_change",
            "agent: includes fetch + verify of the new commit",
        ),
        (
            "promotion",
            "promotion",
            "ansible_promotion",
            "agent: includes the health gate of the new color and the fetch + verify of the commit",
        ),
    ] {
        b.comparisons.push((title.into(), agent.into(), ansible.into(), comment.into()));
    }
    Ok(())
}

/// Figure 7: RSS of `veza-agent run` idle (no-change polls every 2 s) and its peak
/// after a config change, two promotions and a slot deploy.
fn daemon_rss(host: &DemoHost, agent: &Path, d: &mut Desired, b: &mut Bench) -> Result<()> {
    let log = host.dir.join("daemon.log");
    let state_dir = host.dir.join("state");
    let pid = Cmd::new(agent)
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
        "poll interval 2 s + jitter, so ~4 no-change syncs fall inside the sampling window; peak so far (VmHWM) {:.1} MiB",
        hwm_idle as f64 / 1024.0
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

// ------------------------------------------------------------------------------- report

fn fmt_num(v: f64, unit: &str) -> String {
    if v.is_nan() {
        return "-".into();
    }
    match unit {
        "requests" => format!("{v:.0}"),
        "MiB" => format!("{v:.1}"),
        _ if v >= 100.0 => format!("{v:.0}"),
        _ if v >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

fn write_reports(
    args: &Args,
    b: &Bench,
    machine: &Value,
    versions: &Value,
    plan_scale: Option<&Value>,
    took: Duration,
    at: u64,
) -> Result<()> {
    let comparisons: Vec<Value> = b
        .comparisons
        .iter()
        .filter_map(|(title, ak, bk, comment)| {
            let (a, s) = (b.figure(ak)?.summary(), b.figure(bk)?.summary());
            Some(json!({
                "work": title, "agent": ak, "ansible": bk,
                "agent_median_ms": a.median, "ansible_median_ms": s.median,
                "ratio_agent_over_ansible": a.median / s.median,
                "speedup": s.median / a.median,
                "comment": comment,
            }))
        })
        .collect();
    let report = json!({
        "generated_at_unix": at,
        "duration_s": took.as_secs_f64(),
        "machine": machine,
        "versions": versions,
        "method": "medians of n runs on a shared, noisy machine; min/max show the spread; p90 (nearest rank) when n >= 10",
        "figures": b.figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "comparisons": comparisons,
        "plan_scale": plan_scale,
        "checks": b.checks.iter().map(|(w, ok, d)| json!({"check": w, "ok": ok, "detail": d})).collect::<Vec<_>>(),
    });
    std::fs::write(args.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;

    let mut md = String::new();
    let s = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    md.push_str("# veza-agent benchmark report\n\n");
    md.push_str(&format!(
        "All figures are **medians of n runs** (min, max and, when n ≥ 10, p90 show the spread) on a shared machine; single timings mean nothing here. Generated by `packaging/bench` in {:.0} s.\n\n",
        took.as_secs_f64()
    ));
    md.push_str("## Machine and versions\n\n| | |\n|---|---|\n");
    for (k, label) in [
        ("nproc", "nproc"),
        ("cpu", "CPU"),
        ("kernel", "kernel"),
        ("loadavg_start", "load average at start"),
        ("loadavg_end", "load average at end"),
    ] {
        md.push_str(&format!("| {label} | {} |\n", s(&machine[k])));
    }
    for k in ["veza-agent", "haproxy", "incus", "ansible-core", "rustc"] {
        md.push_str(&format!("| {k} | {} |\n", s(&versions[k])));
    }
    md.push_str("\n## Figures\n\n| figure | unit | n | median | min | max | p90 |\n|---|---|---:|---:|---:|---:|---:|\n");
    for f in &b.figures {
        let x = f.summary();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            f.title,
            f.unit,
            x.n,
            fmt_num(x.median, f.unit),
            fmt_num(x.min, f.unit),
            fmt_num(x.max, f.unit),
            x.p90.map(|p| fmt_num(p, f.unit)).unwrap_or_else(|| "-".into())
        ));
    }
    if !comparisons.is_empty() {
        md.push_str("\n## Agent vs the seed's Ansible way (same host, same run)\n\n| work | agent median (ms) | ansible median (ms) | agent / ansible | ansible is slower by | note |\n|---|---:|---:|---:|---:|---|\n");
        for c in &comparisons {
            let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} | ×{:.1} | {} |\n",
                s(&c["work"]),
                fmt_num(f("agent_median_ms"), "ms"),
                fmt_num(f("ansible_median_ms"), "ms"),
                f("ratio_agent_over_ansible"),
                f("speedup"),
                s(&c["comment"])
            ));
        }
        if let Some(fl) = b.figure("ansible_floor") {
            md.push_str(&format!(
                "\nAn empty `ansible-playbook` run (no tasks) takes {} ms (median of {}): that much of every Ansible figure is fixed cost before any check runs. Ansible here runs with `-c local`, no fact gathering and pipelining on; the seed ran over SSH and `incus exec` from a CI runner, which is slower, so the Ansible figures are a lower bound.\n",
                fmt_num(fl.summary().median, "ms"),
                fl.summary().n
            ));
        }
    }
    if let Some(ps) = plan_scale {
        md.push_str(&format!(
            "\n## Plan for N declared resources (pure, in-process, `agent/plan/examples/plan_scale.rs`, medians of {} runs)\n\nN/2 blue/green apps (both slots, one edge route each) + N/2 plain instances. *load* = parse + validate the manifest; *plan first* = against an empty host; *plan idle* = against the converged host (the cost of a poll that finds nothing to do; checked empty).\n\n| declared | live instances | manifest bytes | load (ms) | plan first (ms) | plan idle (ms) | plan idle per resource (µs) |\n|---:|---:|---:|---:|---:|---:|---:|\n",
            s(&ps["runs"])
        ));
        for r in ps["sizes"].as_array().into_iter().flatten() {
            let m = |k: &str| r[k]["median_ms"].as_f64().unwrap_or(f64::NAN);
            let n = r["declared"].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} |\n",
                s(&r["declared"]),
                s(&r["live_instances"]),
                s(&r["manifest_bytes"]),
                m("load"),
                m("plan_first_sync"),
                m("plan_converged"),
                m("plan_converged") * 1000.0 / n
            ));
        }
    }
    md.push_str("\n## Notes\n\n");
    for f in &b.figures {
        for n in &f.notes {
            md.push_str(&format!("- **{}**: {n}\n", f.title));
        }
        let x = f.summary();
        if f.unit == "ms" && x.n > 1 && x.max > 3.0 * x.median {
            md.push_str(&format!(
                "- **{}**: the max is {:.0}× the median: an outlier from the shared machine (other tenants' tests create containers and restart incusd); the median is unaffected\n",
                f.title,
                x.max / x.median
            ));
        }
    }
    md.push_str("\n## Checks\n\n");
    for (w, ok, d) in &b.checks {
        md.push_str(&format!("- {} {w} ({d})\n", if *ok { "ok:" } else { "**FAILED**:" }));
    }
    std::fs::write(args.out.join("report.md"), md)?;
    Ok(())
}
