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
