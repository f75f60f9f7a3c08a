//! Benchmark of the Incus driver against the real incusd (needs `tests/host/setup`).
//!
//! Prints medians of: `observe()` (four `?recursion=1` lists, concurrently) and of the
//! instance list alone, with 10 and with 100 extra (stopped) busybox instances; and
//! create+start of an app slot (one operation with `start: true`), with and without a
//! proxy device. Every instance it creates is named `vt-incus-<pid>-bench-…`, carries
//! `user.veza-test.owner=<pid>` (so a killed run is swept by the test kit) and is
//! deleted before exit, also on panic.
//!
//! Run: `cargo run -p veza-host --release --example incus_bench [RUNS]`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use veza_host::incus::{Incus, IncusClient, InstanceSpec, runtime};
use veza_host::process::Cmd;

const IMAGE: &str = "veza-test-busybox";

/// Deletes every instance it was told about, with the CLI, on drop.
struct Created(Vec<String>);

impl Drop for Created {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Cmd::new("incus")
                .args(["delete", "--force", name.as_str()])
                .timeout(Duration::from_secs(60))
                .output();
        }
    }
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs.get(xs.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn spec(name: &str, start: bool) -> InstanceSpec {
    let mut s = InstanceSpec::container(name, IMAGE);
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    s.config.insert("user.veza-test.owner".into(), std::process::id().to_string());
    s.config.insert("user.veza-test.created".into(), created.to_string());
    s.start = start;
    s
}

const LISTS: [&str; 4] = [
    "/1.0/instances?recursion=1",
    "/1.0/profiles?recursion=1",
    "/1.0/networks?recursion=1",
    "/1.0/storage-pools?recursion=1",
];

/// Medians of `observe()` and of each of its four list requests sent alone.
async fn time_observe(
    c: &IncusClient,
    runs: usize,
) -> Result<(Duration, Vec<Duration>, usize), String> {
    let mut full = Vec::new();
    let mut each: Vec<Vec<Duration>> = vec![Vec::new(); LISTS.len()];
    let mut count = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let live = c.observe().await.map_err(|e| e.to_string())?;
        full.push(t.elapsed());
        count = live.instances.len();
        for (path, times) in LISTS.iter().zip(each.iter_mut()) {
            let t = Instant::now();
            c.raw("GET", path, &[], Vec::new()).await.map_err(|e| e.to_string())?;
            times.push(t.elapsed());
        }
    }
    Ok((median(full), each.into_iter().map(median).collect(), count))
}

async fn bench(created: &mut Created, runs: usize) -> Result<(), String> {
    let c = IncusClient::local();
    let pid = std::process::id();
    let base = c.observe().await.map_err(|e| e.to_string())?.instances.len();
    println!("incus_bench: {base} instances exist before the run; {runs} runs per median");

    for target in [10usize, 100] {
        let t = Instant::now();
        let before = created.0.len();
        while created.0.len() < target {
            let name = format!("vt-incus-{pid}-bench-{:03}", created.0.len());
            created.0.push(name.clone());
            c.create_instance(&spec(&name, false)).await.map_err(|e| e.to_string())?;
        }
        let made = created.0.len() - before;
        println!(
            "created {made} stopped instances in {} ({} each)",
            ms(t.elapsed()),
            ms(t.elapsed() / u32::try_from(made.max(1)).unwrap_or(1))
        );
        let (full, each, count) = time_observe(&c, runs).await?;
        println!("observe() with {count} instances: median {}", ms(full));
        for (path, d) in LISTS.iter().zip(each) {
            println!("    GET {path} alone: median {}", ms(d));
        }
    }

    for with_proxy in [false, true] {
        let mut totals = Vec::new();
        for i in 0..runs.min(5) {
            let name = format!("vt-incus-{pid}-bench-slot-{}-{i}", u8::from(with_proxy));
            created.0.push(name.clone());
            let mut s = spec(&name, true);
            if with_proxy {
                let port = free_port().map_err(|e| e.to_string())?;
                s.devices.insert(
                    "http".into(),
                    [
                        ("type", "proxy".to_string()),
                        ("listen", format!("tcp:127.0.0.1:{port}")),
                        ("connect", "tcp:127.0.0.1:8080".to_string()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                );
            }
            let t = Instant::now();
            c.create_instance(&s).await.map_err(|e| e.to_string())?;
            totals.push(t.elapsed());
            c.delete_instance(&name).await.map_err(|e| e.to_string())?;
        }
        println!(
            "create+start of a slot ({} proxy device): median {} over {} runs",
            if with_proxy { "with a" } else { "without" },
            ms(median(totals.clone())),
            totals.len()
        );
    }

    let t = Instant::now();
    for name in &created.0 {
        c.delete_instance(name).await.map_err(|e| e.to_string())?;
    }
    println!(
        "deleted {} instances in {}; API writes: {}",
        created.0.len(),
        ms(t.elapsed()),
        c.writes()
    );
    created.0.clear();
    Ok(())
}

fn main() {
    let runs = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(30usize).max(1);
    let mut created = Created(Vec::new());
    let outcome = match runtime() {
        Ok(rt) => rt.block_on(bench(&mut created, runs)),
        Err(e) => Err(format!("could not start the runtime: {e}")),
    };
    drop(created);
    if let Err(e) = outcome {
        eprintln!("incus_bench: error: {e}");
        std::process::exit(1);
    }
}
