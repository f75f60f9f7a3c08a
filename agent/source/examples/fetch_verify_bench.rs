//! Times one agent poll over smart HTTP: fetch (gix, bare mirror) + signature verification +
//! ancestry check (+ changed paths when there is a new commit). Median of N runs each for
//! "no new commit" and "one new signed commit". Test data only: keys, repo and server are
//! made on the fly with `veza_testkit`.
//!
//! Run: `cargo run --release -p veza-source --example fetch_verify_bench [-- RUNS [HISTORY]]`.

use std::time::{Duration, Instant};

use veza_source::AllowedSigners;
use veza_source::fetch::{FetchOptions, Mirror, ObjectId};
use veza_testkit::http::GitHttpServer;
use veza_testkit::repo::{RepoBuilder, SigningKey, allowed_signers};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(10);
    let history: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let tmp = tempfile::tempdir()?;
    let alice = SigningKey::generate(&tmp.path().join("keys"), "alice")?;
    let signers = AllowedSigners::parse(&allowed_signers(&[("alice@example.com", &alice)]))?;
    let srv = tmp.path().join("srv");
    let repo = RepoBuilder::new(&srv)?;
    for i in 0..history {
        repo.write(&format!("manifests/app{}.yaml", i % 10), &format!("replicas: {i}\n"))?;
        repo.commit_signed(&alice, &format!("change {i}"))?;
    }
    let server = GitHttpServer::start(&srv)?;
    let url = vec![server.url("origin.git")];
    let opts = FetchOptions::new("main", Duration::from_secs(30));
    let mut mirror = Mirror::open_or_init(&tmp.path().join("mirror.git"))?;
    let mut last = mirror.fetch(&url, &opts)?.tip;
    let now = 2_000_000_000;

    let poll = |mirror: &mut Mirror, last: ObjectId| -> anyhow::Result<(ObjectId, usize)> {
        let tip = mirror.fetch(&url, &opts)?.tip;
        anyhow::ensure!(mirror.is_descendant(tip, last, 100_000)?, "not a descendant");
        veza_source::verify_object(
            veza_source::ObjectKind::Commit,
            &mirror.raw_commit(tip)?,
            &signers,
            now,
        )?;
        let changed =
            if tip == last { 0 } else { mirror.changed_paths(Some(last), tip, 100_000)?.len() };
        Ok((tip, changed))
    };

    let mut idle = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let (tip, changed) = poll(&mut mirror, last)?;
        idle.push(t.elapsed());
        anyhow::ensure!(tip == last && changed == 0);
    }
    let mut fresh = Vec::new();
    for i in 0..runs {
        repo.write("manifests/app0.yaml", &format!("replicas: {}\n", 1000 + i))?;
        let new = repo.commit_signed(&alice, &format!("bench {i}"))?;
        let t = Instant::now();
        let (tip, changed) = poll(&mut mirror, last)?;
        fresh.push(t.elapsed());
        anyhow::ensure!(
            tip == ObjectId::from_hex(new.as_bytes())? && changed == 1,
            "unexpected tip/changes"
        );
        last = tip;
    }
    println!(
        "history {history} commits, {runs} runs each, smart HTTP on 127.0.0.1 (git http-backend CGI)"
    );
    println!(
        "no new commit: median {:?} (min {:?}, max {:?})",
        median(idle.clone()),
        idle.iter().min().unwrap_or(&Duration::ZERO),
        idle.iter().max().unwrap_or(&Duration::ZERO)
    );
    println!(
        "new commit:    median {:?} (min {:?}, max {:?})",
        median(fresh.clone()),
        fresh.iter().min().unwrap_or(&Duration::ZERO),
        fresh.iter().max().unwrap_or(&Duration::ZERO)
    );
    Ok(())
}
