//! Fetch + verify in-process (the library calls of `veza-agent`'s source stage), with
//! Incus observe alongside for the breakdown of a no-change sync.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use veza_host::incus::{Incus, IncusClient};
use veza_source::fetch::{FetchOptions, Forge, Mirror};
use veza_testkit::demo::DemoHost;

use crate::Bench;
use crate::agent::Desired;
use crate::args::Sizes;
use crate::stats::{Figure, ms};

/// CPU time (user + system) of this process's children that have been waited for, in
/// milliseconds: `cutime` + `cstime` of `/proc/self/stat`, in clock ticks.
fn children_cpu_ms(tick_hz: f64) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3 (`state`).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // cutime and cstime are fields 16 and 17 of the file: 13 and 14 after the name.
    let ticks = |i: usize| -> Result<f64> {
        Ok(f.get(i).ok_or_else(|| anyhow::anyhow!("/proc/self/stat: no field {i}"))?.parse()?)
    };
    Ok((ticks(13)? + ticks(14)?) * 1000.0 / tick_hz)
}

/// Item 2 of issue 18: what one no-change poll costs the forge. The test forge runs
/// `git http-backend` as CGI, a child of this process, so the CPU time of the children
/// waited for during a run of polls is the forge-side git work; bytes are counted by the
/// server. Forgejo runs the same `git upload-pack` per request (its own HTTP, routing and
/// authentication come on top), so this is the git part of its cost. Measured for the
/// daemon's poll (one `ls-refs`, `Mirror::poll`) and for the full fetch it replaces.
fn forge_cost(
    host: &DemoHost,
    mirror: &mut Mirror,
    urls: &[String],
    opts: &FetchOptions,
    tip: veza_source::fetch::ObjectId,
    sizes: &Sizes,
    b: &mut Bench,
) -> Result<()> {
    let tick_hz: f64 = veza_host::process::Cmd::new("getconf")
        .arg("CLK_TCK")
        .timeout(Duration::from_secs(10))
        .run_stdout()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    let rt = veza_host::incus::runtime()?;
    let forge = Forge::new();
    let (cpu, wall) = poll_cost(host, sizes.forge_polls, tick_hz, tip, "poll", || {
        let fetched = rt.block_on(mirror.poll(&forge, urls, opts))?;
        if !fetched.probed {
            bail!("a no-change poll fetched");
        }
        Ok(fetched.tip)
    })?;
    b.figures.push(cpu);
    b.figures.push(wall);
    let (cpu, wall) = poll_cost(host, sizes.forge_polls, tick_hz, tip, "fetch", || {
        Ok(mirror.fetch(urls, opts)?.tip)
    })?;
    b.figures.push(cpu);
    b.figures.push(wall);
    Ok(())
}

/// The forge's CPU per poll and the poll's wall time over `polls` polls of `poll` (which
/// must keep finding `tip`); `way` is `poll` (the daemon's) or `fetch` (the full fetch).
fn poll_cost(
    host: &DemoHost,
    polls: usize,
    tick_hz: f64,
    tip: veza_source::fetch::ObjectId,
    way: &str,
    mut poll: impl FnMut() -> Result<veza_source::fetch::ObjectId>,
) -> Result<(Figure, Figure)> {
    let (cpu_title, wall_title) = match way {
        "poll" => (
            "forge side of one no-change poll (one `ls-refs`, as the daemon polls): CPU of `git http-backend` (user + system, mean per poll)",
            "one no-change poll (one `ls-refs` on a kept client), wall",
        ),
        _ => (
            "forge side of one full no-change fetch (capabilities + `ls-refs`, what a poll cost before): CPU of `git http-backend`",
            "one full no-change fetch (gix: capabilities + `ls-refs`), wall",
        ),
    };
    let mut cpu = Figure::new(&format!("forge_cpu_per_{way}"), cpu_title, "ms");
    let mut wall = Figure::new(&format!("forge_{way}_wall"), wall_title, "ms");
    let requests_before = host.http.requests().len();
    let (in0, out0) = host.http.bytes();
    // Series of 10 polls: the children's CPU is counted in clock ticks (10 ms), so a
    // single poll cannot be measured alone.
    for _ in 0..polls.div_ceil(10) {
        let before = children_cpu_ms(tick_hz)?;
        for _ in 0..10 {
            let t = Instant::now();
            if poll()? != tip {
                bail!("the tip moved during the forge-cost polls");
            }
            wall.samples.push(ms(t.elapsed()));
        }
        cpu.samples.push((children_cpu_ms(tick_hz)? - before) / 10.0);
    }
    let n = wall.samples.len() as f64;
    let requests = (host.http.requests().len() - requests_before) as f64 / n;
    let (in1, out1) = host.http.bytes();
    let (up, down) = ((in1 - in0) as f64 / n, (out1 - out0) as f64 / n);
    let per_request = cpu.summary().median / requests.max(1.0);
    cpu.extra.insert("requests_per_poll".into(), serde_json::json!(requests));
    cpu.extra.insert("bytes_to_forge_per_poll".into(), serde_json::json!(up));
    cpu.extra.insert("bytes_from_forge_per_poll".into(), serde_json::json!(down));
    cpu.extra.insert("tick_hz".into(), serde_json::json!(tick_hz));
    cpu.notes.push(format!(
        "each sample: the children's CPU over 10 polls / 10 (clock ticks of {:.0} ms); {requests:.1} HTTP requests per poll ({per_request:.2} ms CPU each), {up:.0} bytes to the forge and {down:.0} bytes back per poll",
        1000.0 / tick_hz
    ));
    Ok((cpu, wall))
}

/// Figure 5: the source stage in-process (fetch over smart HTTP into a bare mirror,
/// ancestry, signature, manifest read + validation), and Incus observe alone.
pub(crate) fn fetch_verify(
    host: &DemoHost,
    d: &mut Desired,
    sizes: &Sizes,
    b: &mut Bench,
) -> Result<()> {
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
            base: veza_source::Base::Descends(&last),
            policy_since: veza_source::PolicySince::Base,
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
    forge_cost(host, &mut mirror, &urls, &opts, last, sizes, b)?;
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
