//! On the real 3-member Incus cluster of `tests/host/cluster` (run by `tests/cluster`,
//! which brings it up, runs these and tears it down; `#[ignore]`d in the normal suite,
//! which has no cluster): the lease's compare-and-swap through different members, its
//! renewal, a takeover after the leader's member dies (timed), the fence stopping a paused
//! leader, and the anti-rollback mark shared by every member.
//!
//! Each test clears the lease key first (a killed run's lease would otherwise make the
//! first take wait a TTL) and leaves every member running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use veza_host::clock::SystemClock;
use veza_host::incus::{
    ClientOptions, Incus, IncusClient, IncusError, SharedConfig, Transport, runtime,
};
use veza_host::lease::{Fenced, Keeper, Standing};
use veza_host::process::Cmd;
use veza_model::lease::LEASE_KEY;

const BASE: &str = "/var/lib/veza-cluster";
/// The shortest TTL the configuration accepts: takeovers take seconds, not half a minute.
const TTL: Duration = Duration::from_secs(3);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/host/cluster")
}

fn cluster(args: &[&str]) -> String {
    Cmd::new(script())
        .args(args)
        .timeout(Duration::from_secs(180))
        .run_stdout()
        .unwrap_or_else(|e| panic!("tests/host/cluster {args:?}: {e}"))
}

/// The agent's HTTPS client to member `n`, pinning the cluster's certificate.
fn member(n: u8) -> IncusClient {
    IncusClient::new(
        Transport::Https {
            url: format!("https://10.250.77.1{n}:8443"),
            client_cert: format!("{BASE}/client.crt").into(),
            client_key: format!("{BASE}/client.key").into(),
            server_cert: format!("{BASE}/cluster.crt").into(),
        },
        ClientOptions::default(),
    )
}

async fn clear_lease(via: &IncusClient) {
    for _ in 0..5 {
        let read = via.shared_user_config(LEASE_KEY).await.expect("read the lease");
        if read.value.is_none() {
            return;
        }
        if via.swap_shared_user_config(LEASE_KEY, None, &read.etag).await.is_ok() {
            return;
        }
    }
    panic!("could not clear {LEASE_KEY}");
}

fn who(s: &Standing) -> String {
    match s {
        Standing::Leading(l) => format!("lead {}#{}", l.holder, l.generation),
        Standing::Following { leader, .. } => format!(
            "follow {}",
            leader.as_ref().map_or("?".to_string(), |l| format!("{}#{}", l.holder, l.generation))
        ),
    }
}

#[test]
#[ignore = "needs the 3-member cluster: run tests/cluster"]
fn cluster_observed_through_one_member() {
    cluster(&["up"]);
    runtime().expect("runtime").block_on(async {
        let live = member(2).observe().await.expect("observe through member 2");
        assert!(live.pools.contains_key("default"), "the dir pool: {:?}", live.pools);
        assert!(live.profiles.contains_key("default"), "{:?}", live.profiles);
    });
}

#[test]
#[ignore = "needs the 3-member cluster: run tests/cluster"]
fn lease_compare_and_swap_across_members() {
    cluster(&["up"]);
    runtime().expect("runtime").block_on(async {
        let (m1, m2, m3) = (member(1), member(2), member(3));
        clear_lease(&m1).await;
        // A swap on a stale ETag is refused whichever member it goes through.
        let before = m2.shared_user_config(LEASE_KEY).await.expect("read");
        let a = Keeper::new(&m1, SystemClock, "veza-cl-1", TTL);
        let b = Keeper::new(&m3, SystemClock, "veza-cl-3", TTL);
        assert_eq!(who(&a.step().await.expect("a")), "lead veza-cl-1#1");
        assert_eq!(who(&b.step().await.expect("b")), "follow veza-cl-1#1");
        let stale = m2.swap_shared_user_config(LEASE_KEY, Some("x"), &before.etag).await;
        assert_eq!(stale.expect("swap"), veza_host::incus::Swap::Changed);
        // Renewed every third of the TTL: the standby keeps following.
        for _ in 0..4 {
            tokio::time::sleep(TTL / 3).await;
            assert!(a.step().await.expect("a renews").leads());
            assert_eq!(who(&b.step().await.expect("b")), "follow veza-cl-1#1");
        }
        // Released: the standby takes it at its next look.
        assert!(a.release().await.expect("release"));
        assert_eq!(who(&b.step().await.expect("b")), "lead veza-cl-3#1");
        clear_lease(&m1).await;
    });
}

#[test]
#[ignore = "needs the 3-member cluster: run tests/cluster"]
fn a_paused_leader_is_fenced_once_a_standby_took_over() {
    cluster(&["up"]);
    runtime().expect("runtime").block_on(async {
        let (m2, m3) = (member(2), member(3));
        clear_lease(&m2).await;
        let a = Keeper::new(&m2, SystemClock, "veza-cl-2", TTL);
        let b = Keeper::new(&m3, SystemClock, "veza-cl-3", TTL);
        assert!(a.step().await.expect("a takes").leads());
        let key = "user.veza-cluster-test.fenced";
        Fenced::new(&m2, &a)
            .set_server_user_config(key, Some("a-1"))
            .await
            .expect("the leader writes");
        // a pauses (no renewal); b takes over after seeing the same lease for a TTL.
        let started = Instant::now();
        let mut looks = 0;
        while !b.step().await.expect("b").leads() {
            looks += 1;
            assert!(looks < 40, "b never took over");
            tokio::time::sleep(TTL / 3).await;
        }
        eprintln!(
            "cluster: standby took over a silent leader's lease after {:?}",
            started.elapsed()
        );
        // a wakes up and writes: the fence refuses, nothing reaches Incus.
        let e = Fenced::new(&m2, &a)
            .set_server_user_config(key, Some("a-2"))
            .await
            .expect_err("fenced");
        assert!(matches!(e, IncusError::Fenced { .. }), "{e}");
        assert!(e.to_string().contains("veza-cl-3"), "{e}");
        assert_eq!(m3.server_user_config(key).await.expect("read").as_deref(), Some("a-1"));
        assert_eq!(who(&a.step().await.expect("a")), "follow veza-cl-3#2");
        m3.set_server_user_config(key, None).await.expect("cleanup");
        clear_lease(&m3).await;
    });
}

#[test]
#[ignore = "needs the 3-member cluster: run tests/cluster"]
fn takeover_after_the_leaders_member_dies_and_the_mark_survives() {
    cluster(&["up"]);
    let rt = runtime().expect("runtime");
    let mark = "user.veza-agent.applied.veza-cluster-test";
    rt.block_on(async {
        let (m1, m2) = (member(1), member(2));
        clear_lease(&m2).await;
        let a = Keeper::new(&m1, SystemClock, "veza-cl-1", TTL);
        assert!(a.step().await.expect("a takes").leads());
        // The leader records what it applied (the anti-rollback mark) through its member.
        Fenced::new(&m1, &a).set_server_user_config(mark, Some("c0ffee")).await.expect("mark");
    });
    // The leader's member dies: its incusd and, with it, its agent.
    let killed = Instant::now();
    cluster(&["kill", "1"]);
    rt.block_on(async {
        let m2 = member(2);
        let b = Keeper::new(&m2, SystemClock, "veza-cl-2", TTL);
        let mut looks = 0;
        loop {
            match b.step().await {
                Ok(s) if s.leads() => break,
                Ok(_) => {}
                // The database may be electing a new leader for a moment.
                Err(e) => eprintln!("cluster: standby's look failed (retried): {e}"),
            }
            looks += 1;
            assert!(looks < 90, "no takeover within 30 s of the member's death");
            tokio::time::sleep(TTL / 3).await;
        }
        eprintln!(
            "cluster: takeover {:?} after member 1's incusd was killed (TTL {TTL:?})",
            killed.elapsed()
        );
        // The new leader reads the mark the dead one wrote: it never applies older.
        assert_eq!(m2.server_user_config(mark).await.expect("mark").as_deref(), Some("c0ffee"));
        m2.set_server_user_config(mark, None).await.expect("cleanup");
        clear_lease(&m2).await;
    });
    cluster(&["start", "1"]);
    cluster(&["up"]);
}

/// A sync on member `n`'s agent: `veza-agent apply` with that member's configuration.
fn apply_on(config: &std::path::Path) -> veza_testkit::cli::Run {
    veza_testkit::cli::agent(
        std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")),
        config,
        &["apply"],
    )
}

#[test]
#[ignore = "needs the 3-member cluster: run tests/cluster"]
fn failover_between_two_commits_never_applies_older_than_any_leader() {
    use veza_testkit::repo::{RepoBuilder, SigningKey, allowed_signers};
    cluster(&["up"]);
    let host = "veza-cluster-test";
    let profile = "vt-cluster-profile";
    let mark = format!("user.veza-agent.applied.{host}");
    let rt = runtime().expect("runtime");
    let step_of = |n: u8| -> Option<String> {
        rt.block_on(async {
            let p = member(n).profile(profile).await.expect("read the profile");
            p.and_then(|p| p.config.get("user.step").cloned())
        })
    };
    // Leftovers of a killed run: the profile, the mark, the lease.
    rt.block_on(async {
        let m2 = member(2);
        if m2.profile(profile).await.expect("read").is_some() {
            Cmd::new("incus")
                .args(["profile", "delete", profile])
                .env("INCUS_DIR", format!("{BASE}/2/incus"))
                .run()
                .expect("delete the leftover profile");
        }
        m2.set_server_user_config(&mark, None).await.expect("clear the mark");
        clear_lease(&m2).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate(&dir.path().join("keys"), "ops").expect("key");
    let repos = dir.path().join("repos");
    let repo = RepoBuilder::with_name(&repos, "manifests.git").expect("repo");
    let manifest = |step: u32| {
        format!(
            "apiVersion: veza-agent/v1\nkind: Environment\nmetadata:\n  name: cl\n  host: {host}\n\
             incus:\n  profiles:\n    {profile}: {{config: {{user.step: \"{step}\"}}}}\n"
        )
    };
    let c1 = repo.commit_files_signed(&key, &[("cl.yaml", &manifest(1))], "step 1").expect("c1");
    let server = veza_testkit::http::GitHttpServer::start(&repos).expect("git server");
    let trust = dir.path().join("allowed_signers");
    std::fs::write(&trust, allowed_signers(&[("ops@example", &key)])).expect("trust");
    let config_of = |n: u8| {
        let path = dir.path().join(format!("member-{n}.yaml"));
        std::fs::write(
            &path,
            format!(
                "host: {host}\nsource:\n  remotes: [\"{url}\"]\n  branch: main\n  manifests: [cl.yaml]\n\
                 trust:\n  allowed_signers: {trust}\nstate_dir: {state}\n\
                 incus:\n  endpoint: https://10.250.77.1{n}:8443\n  client_cert: {BASE}/client.crt\n  \
                 client_key: {BASE}/client.key\n  server_cert: {BASE}/cluster.crt\n\
                 cluster:\n  member: veza-cl-{n}\n  lease_ttl: 3s\n",
                url = server.url("manifests.git"),
                trust = trust.display(),
                state = dir.path().join(format!("state-{n}")).display(),
            ),
        )
        .expect("config");
        path
    };
    let (a, b) = (config_of(1), config_of(2));

    // Member 1's agent leads and applies the first commit.
    let r = apply_on(&a);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(step_of(3).as_deref(), Some("1"));
    // Member 2's agent, a standby, plans only and says who leads.
    let r = apply_on(&b);
    assert!(r.code == 0 || r.code == 4, "{r}");
    let status = veza_testkit::cli::agent(
        std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")),
        &b,
        &["status"],
    );
    assert!(status.out.contains("cluster:  `veza-cl-1` leads since"), "{status}");
    assert!(status.out.contains("this member: `veza-cl-2` (standby: plans only)"), "{status}");
    let json = veza_testkit::cli::agent(
        std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")),
        &b,
        &["status", "--json"],
    );
    let doc: serde_json::Value = serde_json::from_str(&json.out).expect("status --json");
    assert_eq!(doc["cluster"]["leader"], "veza-cl-1", "{json}");
    assert_eq!(doc["cluster"]["member"], "veza-cl-2", "{json}");
    // `plan` on the standby says so first, and takes nothing.
    let plan = veza_testkit::cli::agent(
        std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")),
        &b,
        &["plan"],
    );
    assert!(
        plan.out.contains("NOTHING WILL BE APPLIED: standby: cluster member `veza-cl-1` leads"),
        "{plan}"
    );
    // A second commit, applied by the leader: the shared mark moves to it.
    let c2 = repo.commit_files_signed(&key, &[("cl.yaml", &manifest(2))], "step 2").expect("c2");
    let r = apply_on(&b);
    assert_eq!(r.code, 4, "the standby holds the change: {r}");
    assert!(
        r.out.contains("standby: cluster member `veza-cl-1` leads")
            || r.err.contains("standby: cluster member `veza-cl-1` leads"),
        "{r}"
    );
    assert_eq!(step_of(2).as_deref(), Some("1"), "the standby applied nothing");
    let r = apply_on(&a);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(step_of(2).as_deref(), Some("2"));
    let shared = rt.block_on(async { member(3).server_user_config(&mark).await.expect("mark") });
    assert_eq!(shared.as_deref(), Some(c2.as_str()));

    // Member 1 dies; the operator hands the lease over at once (runbook) rather than
    // wait a TTL, and someone pushes the branch back to the first commit.
    cluster(&["kill", "1"]);
    rt.block_on(async { clear_lease(&member(2)).await });
    repo.force_reset(&c1).expect("force-push the first commit back");
    // Member 2's own state file says c1 was applied (it saw it applied as a standby), but
    // the mark in the cluster says c2: the new leader refuses the older commit.
    let r = apply_on(&b);
    assert_eq!(r.code, 1, "rejected: {r}");
    assert!(format!("{}{}", r.out, r.err).contains(&c2[..12]), "names the applied commit: {r}");
    assert_eq!(step_of(2).as_deref(), Some("2"), "nothing older was applied");
    // A newer commit on top of c2 is applied by the new leader.
    repo.force_reset(&c2).expect("the branch back at c2");
    let c3 = repo.commit_files_signed(&key, &[("cl.yaml", &manifest(3))], "step 3").expect("c3");
    let r = apply_on(&b);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(step_of(3).as_deref(), Some("3"));
    let shared = rt.block_on(async { member(2).server_user_config(&mark).await.expect("mark") });
    assert_eq!(shared.as_deref(), Some(c3.as_str()));

    cluster(&["start", "1"]);
    cluster(&["up"]);
    rt.block_on(async {
        let m2 = member(2);
        m2.set_server_user_config(&mark, None).await.expect("clear the mark");
        clear_lease(&m2).await;
    });
    Cmd::new("incus")
        .args(["profile", "delete", profile])
        .env("INCUS_DIR", format!("{BASE}/2/incus"))
        .run()
        .expect("delete the profile");
}
