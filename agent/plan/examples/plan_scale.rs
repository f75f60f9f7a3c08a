//! How planning cost grows with the number of declared resources: synthetic manifests
//! with N top-level declarations (N/2 blue/green apps routed by the edge, N/2 plain
//! instances; at most 1000 per manifest, larger N spread over several environments of
//! the same host), parsed and validated with `veza_model::load`, then planned with
//! `veza_plan::plan` against
//!
//! - an empty host (the first sync: everything is created), and
//! - a converged host (the live state the first plan leaves behind, modelled in memory
//!   like the planner's own tests do; the plan must be empty, which is checked): the cost
//!   of every poll that finds nothing to do.
//!
//! Beside *load*, the floor under it: the YAML parser the manifests are read with
//! (`serde_yaml_ng`) scanning the same bytes into `IgnoredAny` (no typed value built).
//!
//! Pure and in-process: no Incus, no IO besides the optional JSON report.
//!
//! Run: `cargo run --release -p veza-plan --example plan_scale [-- --runs R] [--json PATH]
//! [SIZES...]` (sizes default to 10 100 1000 10000).

use std::collections::BTreeMap;
use std::error::Error;
use std::time::{Duration, Instant};

use veza_model::Manifest;
use veza_model::live::{LivePool, LiveState};
use veza_plan::edge::EdgeSettings;
use veza_plan::{Plan, PlanOptions};

type Res<T> = Result<T, Box<dyn Error>>;

const BLUE: &str = "1111111111111111111111111111111111111111";
const GREEN: &str = "2222222222222222222222222222222222222222";

/// Most declarations in one synthetic manifest: a manifest is capped at 1 MiB
/// (`veza_model::parse::MAX_MANIFEST_BYTES`, untrusted input), which ~2700 of these
/// declarations would pass; larger sizes are spread over several environments of the
/// same host, as a real host with that many resources would be.
const PER_MANIFEST: usize = 1000;

/// Environment `k` of the host with `apps` apps and `instances` plain instances and one
/// path route per app; environment 0 declares the edge instance (counted among its
/// instances) that every environment's edge runs in.
fn manifest(k: usize, apps: usize, instances: usize) -> String {
    let env = if k == 0 { "scale".to_string() } else { format!("scale{k}") };
    let mut m = format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata:\n  name: {env}\n  host: bench\n\n"
    );
    m.push_str("incus:\n  instances:\n");
    let first = if k == 0 {
        m.push_str("    edge: {image: veza-test-busybox, profiles: [default]}\n");
        1
    } else {
        0
    };
    for i in first..instances {
        m.push_str(&format!(
            "    k{k}i{i:04}: {{image: veza-test-busybox, profiles: [default], config: {{user.bench.index: \"{i}\"}}}}\n"
        ));
    }
    m.push_str("\napps:\n");
    for a in 0..apps {
        m.push_str(&format!(
            "  a{a:04}:\n    image: veza-test-busybox\n    profiles: [default]\n    port: 8080\n\
             \x20   artifact:\n      url: \"file:///srv/artifacts/{{release}}/a{a:04}.tar.gz\"\n      sha256:\n\
             \x20       {BLUE}: {z}\n        {GREEN}: {o}\n\
             \x20   health: {{path: /health, interval: 1s, timeout: 1s, rise: 1, fall: 2}}\n\
             \x20   slots:\n      blue: {{release: {BLUE}}}\n      green: {{release: {GREEN}}}\n    active: {color}\n",
            z = "0".repeat(64),
            o = "1".repeat(64),
            color = if a % 2 == 0 { "blue" } else { "green" },
        ));
    }
    m.push_str(&format!(
        "\nedge:\n  runs_in: edge\n  hosts: [{env}.example]\n  sticky_cookie: VEZA_{env}\n  routes:\n"
    ));
    for a in 0..apps {
        m.push_str(&format!("    - {{path_prefix: /a{a:04}, app: a{a:04}}}\n"));
    }
    m
}

/// The manifests of one host declaring `n` resources: `n/2` apps and `n - n/2` plain
/// instances, at most [`PER_MANIFEST`] declarations per manifest.
fn manifests(n: usize) -> Vec<(String, Vec<u8>)> {
    let parts = n.div_ceil(PER_MANIFEST).max(1);
    (0..parts)
        .map(|k| {
            let share = n / parts + usize::from(k < n % parts);
            let text = manifest(k, share / 2, share - share / 2);
            (format!("scale{k}.yaml"), text.into_bytes())
        })
        .collect()
}

fn load(files: &[(String, Vec<u8>)]) -> Res<Vec<Manifest>> {
    match veza_model::load(files) {
        Ok(parsed) => Ok(parsed.into_iter().map(|(_, p)| p.manifest).collect()),
        Err(problems) => {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            Err(format!("synthetic manifests rejected:\n{}", text.join("\n")).into())
        }
    }
}

/// The YAML parser alone over the same bytes: every event read, nothing built.
fn scan(files: &[(String, Vec<u8>)]) -> Res<usize> {
    for (_, bytes) in files {
        let _: serde::de::IgnoredAny = serde_yaml_ng::from_slice(bytes)?;
    }
    Ok(files.len())
}

/// What executing `plan` leaves behind, as the planner's specification models its drivers.
fn applied(live: &LiveState, plan: &Plan) -> Res<LiveState> {
    Ok(veza_plan::simulate::applied(live, plan)?)
}

struct Stats {
    n: usize,
    median: f64,
    min: f64,
    max: f64,
}

/// Milliseconds.
fn stats(xs: &[Duration]) -> Stats {
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        n,
        median,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

fn time<T>(runs: usize, mut f: impl FnMut() -> Res<T>) -> Res<(Vec<Duration>, T)> {
    let mut times = Vec::with_capacity(runs);
    let mut last = f()?; // warm-up, not counted
    for _ in 0..runs {
        let t = Instant::now();
        last = f()?;
        times.push(t.elapsed());
    }
    Ok((times, last))
}

fn json_stats(s: &Stats) -> serde_json::Value {
    serde_json::json!({"n": s.n, "median_ms": s.median, "min_ms": s.min, "max_ms": s.max})
}

fn main() -> Res<()> {
    let mut runs = 15usize;
    let mut json: Option<String> = None;
    let mut sizes: Vec<usize> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().ok_or("--runs needs a value")?.parse()?,
            "--json" => json = Some(args.next().ok_or("--json needs a path")?),
            s => sizes.push(s.parse().map_err(|e| format!("size `{s}`: {e}"))?),
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 100, 1000, 10000];
    }
    let runs = runs.max(1);
    let opts = PlanOptions { edge_settings: EdgeSettings::default(), ..PlanOptions::default() };
    let pool = LivePool { name: "default".into(), status: "Created".into(), ..LivePool::default() };
    let empty = LiveState {
        pools: BTreeMap::from([("default".to_string(), pool)]),
        ..LiveState::default()
    };

    println!("plan_scale: {runs} runs per median (after one warm-up run)");
    println!(
        "{:>9} {:>9} {:>10} {:>12} {:>14} {:>14} {:>16} {:>14}",
        "declared",
        "apps",
        "live inst.",
        "yaml bytes",
        "yaml scan (ms)",
        "load (ms)",
        "plan first (ms)",
        "plan idle (ms)"
    );
    let mut rows = Vec::new();
    for &n in &sizes {
        let n = n.max(2);
        let (apps, instances) = (n / 2, n - n / 2);
        let files = manifests(n);
        let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
        let (scan_t, _) = time(runs, || scan(&files))?;
        let (load_t, ms) = time(runs, || load(&files))?;
        let refs: Vec<&Manifest> = ms.iter().collect();
        let (first_t, first) = time(runs, || Ok(veza_plan::plan(&refs, &empty, &opts)?))?;
        let live = applied(&empty, &first)?;
        let (idle_t, idle) = time(runs, || Ok(veza_plan::plan(&refs, &live, &opts)?))?;
        if !idle.is_empty() {
            return Err(
                format!("the converged plan for {n} resources is not empty:\n{idle}").into()
            );
        }
        let (l, f, i) = (stats(&load_t), stats(&first_t), stats(&idle_t));
        let y = stats(&scan_t);
        println!(
            "{n:>9} {apps:>9} {:>10} {:>12} {:>14.3} {:>14.3} {:>16.3} {:>14.3}",
            live.instances.len(),
            bytes,
            y.median,
            l.median,
            f.median,
            i.median
        );
        rows.push(serde_json::json!({
            "declared": n,
            "apps": apps,
            "instances_declared": instances,
            "live_instances": live.instances.len(),
            "first_sync_steps": first.steps.len(),
            "manifests": files.len(),
            "manifest_bytes": bytes,
            "yaml_scan": json_stats(&y),
            "load": json_stats(&l),
            "plan_first_sync": json_stats(&f),
            "plan_converged": json_stats(&i),
        }));
    }
    if let Some(path) = json {
        let doc = serde_json::json!({ "runs": runs, "sizes": rows });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    Ok(())
}
