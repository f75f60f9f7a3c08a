//! Fetch + verify in-process (the library calls of `veza-agent`'s source stage), with
//! Incus observe alongside for the breakdown of a no-change sync.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use veza_host::incus::{Incus, IncusClient};
use veza_source::fetch::{FetchOptions, Mirror};
use veza_testkit::demo::DemoHost;

use crate::Bench;
use crate::agent::Desired;
use crate::args::Sizes;
use crate::stats::{Figure, ms};

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
