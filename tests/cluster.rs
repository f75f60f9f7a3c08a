//! On the real 3-member Incus cluster of `tests/host/cluster` (run by `tests/cluster`,
//! which brings it up, runs these and tears it down, and fails unless every one of them
//! ran and passed; `tests/run` calls it first, then runs the rest of the suite without
//! them, by module name `real_cluster::`): the lease's compare-and-swap through different
//! members, its renewal, a takeover after the leader's member dies (timed), the fence
//! stopping a paused leader, and the anti-rollback mark shared by every member.
//!
//! Each test clears the lease key first (a killed run's lease would otherwise make the
//! first take wait a TTL) and leaves every member running.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veza_host::clock::SystemClock;
use veza_host::incus::{
    ClientOptions, Incus, IncusClient, IncusError, SharedConfig, Transport, runtime,
    set_shared_user_config,
};
use veza_host::lease::{Fenced, Keeper, Standing};
use veza_host::process::Cmd;
use veza_model::lease::{LEASE_KEY, Record};
use veza_model::live::InstanceStatus;

const BASE: &str = "/var/lib/veza-cluster";
/// The shortest TTL the configuration accepts: takeovers take seconds, not half a minute.
const TTL: Duration = Duration::from_secs(3);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/host/cluster")
}

fn cluster(args: &[&str]) -> String {
    Cmd::new(script())
        .args(args)
        .timeout(Duration::from_secs(240))
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
fn cluster_observed_through_one_member() {
    cluster(&["up"]);
    runtime().expect("runtime").block_on(async {
        let live = member(2).observe().await.expect("observe through member 2");
        assert!(live.pools.contains_key("default"), "the dir pool: {:?}", live.pools);
        assert!(live.profiles.contains_key("default"), "{:?}", live.profiles);
    });
}

#[test]
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
        // Given up: the standby takes it at its next look, with the next generation.
        assert!(a.release().await.expect("release"));
        assert_eq!(who(&b.step().await.expect("b")), "lead veza-cl-3#2");
        clear_lease(&m1).await;
    });
}

#[test]
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
fn takeover_after_the_leaders_member_dies_and_the_mark_survives() {
    cluster(&["up"]);
    let rt = runtime().expect("runtime");
    let mark = "user.veza-agent.applied.veza-cluster-test";
    // A value of this run's own: one left by an earlier run can never make the write a
    // no-op.
    let value = format!("c0ffee-{}", std::process::id());
    rt.block_on(async {
        let (m1, m2) = (member(1), member(2));
        clear_lease(&m2).await;
        let a = Keeper::new(&m1, SystemClock, "veza-cl-1", TTL);
        assert!(a.step().await.expect("a takes").leads());
        // The leader records what it applied (the anti-rollback mark) through its member,
        // in the `default` project's config, under its lease, as the agent does.
        let pinned = a.held_generation().expect("held");
        a.write_shared(mark, Some(&value), pinned).await.expect("mark");
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
        let read = m2.shared_user_config(mark).await.expect("mark");
        assert_eq!(read.value, Some(value.clone()));
        set_shared_user_config(&m2, mark, None).await.expect("cleanup");
        clear_lease(&m2).await;
    });
    cluster(&["start", "1"]);
    cluster(&["up"]);
}

/// `veza-agent ARGS --config CONFIG`.
fn agent(config: &Path, args: &[&str]) -> veza_testkit::cli::Run {
    veza_testkit::cli::agent(Path::new(env!("CARGO_BIN_EXE_veza-agent")), config, args)
}

const HOST: &str = "veza-cluster-test";
const PROFILE: &str = "vt-cluster-profile";

fn mark_key() -> String {
    format!("user.veza-agent.applied.{HOST}")
}

/// The cluster's record of the checks through the edge this host's leader owes.
fn owed_key() -> String {
    format!("user.veza-agent.owed.{HOST}")
}

/// A signed manifests repository served over smart HTTP whose one manifest declares the
/// profile `vt-cluster-profile` with `user.step`, and a configuration per member.
struct Fixture {
    dir: tempfile::TempDir,
    key: veza_testkit::repo::SigningKey,
    repo: veza_testkit::repo::RepoBuilder,
    server: veza_testkit::http::GitHttpServer,
}

impl Fixture {
    /// Removes what a killed run left (the profile, the mark, the lease) and commits step 1.
    fn new() -> (Fixture, String) {
        use veza_testkit::repo::{RepoBuilder, SigningKey};
        runtime().expect("runtime").block_on(async {
            let m2 = member(2);
            if m2.profile(PROFILE).await.expect("read").is_some() {
                delete_profile();
            }
            clear_mark(&m2).await;
            clear_lease(&m2).await;
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate(&dir.path().join("keys"), "ops").expect("key");
        let repos = dir.path().join("repos");
        let repo = RepoBuilder::with_name(&repos, "manifests.git").expect("repo");
        let server = veza_testkit::http::GitHttpServer::start(&repos).expect("git server");
        let f = Fixture { dir, key, repo, server };
        let c1 = f.commit(1);
        (f, c1)
    }

    fn commit(&self, step: u32) -> String {
        let manifest = format!(
            "apiVersion: veza-agent/v1\nkind: Environment\nmetadata:\n  name: cl\n  host: {HOST}\n\
             incus:\n  profiles:\n    {PROFILE}: {{config: {{user.step: \"{step}\"}}}}\n"
        );
        self.repo
            .commit_files_signed(&self.key, &[("cl.yaml", &manifest)], &format!("step {step}"))
            .expect("commit")
    }

    /// The configuration of member `n`'s agent (HTTPS to its member, lease TTL 3 s).
    fn config(&self, n: u8, poll: &str) -> PathBuf {
        let trust = self.dir.path().join("allowed_signers");
        std::fs::write(&trust, veza_testkit::repo::allowed_signers(&[("ops@example", &self.key)]))
            .expect("trust");
        let path = self.dir.path().join(format!("member-{n}.yaml"));
        std::fs::write(
            &path,
            format!(
                "host: {HOST}\nsource:\n  remotes: [\"{url}\"]\n  branch: main\n  manifests: [cl.yaml]\n\
                 trust:\n  allowed_signers: {trust}\nstate_dir: {state}\n{poll}\
                 incus:\n  endpoint: https://10.250.77.1{n}:8443\n  client_cert: {BASE}/client.crt\n  \
                 client_key: {BASE}/client.key\n  server_cert: {BASE}/cluster.crt\n\
                 cluster:\n  member: veza-cl-{n}\n  lease_ttl: 3s\n",
                url = self.server.url("manifests.git"),
                trust = trust.display(),
                state = self.state_dir(n).display(),
            ),
        )
        .expect("config");
        path
    }

    fn state_dir(&self, n: u8) -> PathBuf {
        self.dir.path().join(format!("state-{n}"))
    }

    /// Who member `n`'s agent last saw leading (`cluster.json`).
    fn leader_seen_by(&self, n: u8) -> Option<String> {
        let text = std::fs::read_to_string(self.state_dir(n).join("cluster.json")).ok()?;
        let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
        doc["leader"].as_str().map(str::to_string)
    }
}

fn delete_profile() {
    Cmd::new("incus")
        .args(["profile", "delete", PROFILE])
        .env("INCUS_DIR", format!("{BASE}/2/incus"))
        .run()
        .expect("delete the test profile");
}

/// After a test: every member running, the mark, the lease and the profile gone.
fn restore() {
    cluster(&["start", "1"]);
    cluster(&["up"]);
    runtime().expect("runtime").block_on(async {
        let m2 = member(2);
        clear_mark(&m2).await;
        clear_lease(&m2).await;
        if m2.profile(PROFILE).await.expect("read").is_some() {
            delete_profile();
        }
    });
}

fn step_of(n: u8) -> Option<String> {
    runtime().expect("runtime").block_on(async {
        let p = member(n).profile(PROFILE).await.expect("read the profile");
        p.and_then(|p| p.config.get("user.step").cloned())
    })
}

fn mark_via(n: u8) -> Option<String> {
    runtime()
        .expect("runtime")
        .block_on(async { member(n).shared_user_config(&mark_key()).await.expect("mark").value })
}

/// Removes the agent's anti-rollback mark (both places), and the cluster's record of owed
/// checks.
async fn clear_mark(via: &IncusClient) {
    set_shared_user_config(via, &mark_key(), None).await.expect("clear the mark");
    via.set_server_user_config(&mark_key(), None).await.expect("clear the old mark");
    set_shared_user_config(via, &owed_key(), None).await.expect("clear the owed checks");
}

#[test]
fn failover_between_two_commits_never_applies_older_than_any_leader() {
    cluster(&["up"]);
    let (f, c1) = Fixture::new();
    let (a, b) = (f.config(1, ""), f.config(2, ""));

    // Member 1's agent leads and applies the first commit.
    let r = agent(&a, &["apply"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(step_of(3).as_deref(), Some("1"));
    // Member 2's agent, a standby, plans only and says who leads.
    let r = agent(&b, &["apply"]);
    assert!(r.code == 0 || r.code == 4, "{r}");
    let status = agent(&b, &["status"]);
    assert!(status.out.contains("cluster:  `veza-cl-1` leads since"), "{status}");
    assert!(status.out.contains("this member: `veza-cl-2` (standby: plans only)"), "{status}");
    let json = agent(&b, &["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json.out).expect("status --json");
    assert_eq!(doc["cluster"]["leader"], "veza-cl-1", "{json}");
    assert_eq!(doc["cluster"]["member"], "veza-cl-2", "{json}");
    // `plan` on the standby says so first, and takes nothing.
    let plan = agent(&b, &["plan"]);
    assert!(
        plan.out.contains("NOTHING WILL BE APPLIED: standby: cluster member `veza-cl-1` leads"),
        "{plan}"
    );
    // A second commit, applied by the leader: the shared mark moves to it.
    let c2 = f.commit(2);
    let r = agent(&b, &["apply"]);
    assert_eq!(r.code, 4, "the standby holds the change: {r}");
    assert!(
        format!("{}{}", r.out, r.err).contains("standby: cluster member `veza-cl-1` leads"),
        "{r}"
    );
    assert_eq!(step_of(2).as_deref(), Some("1"), "the standby applied nothing");
    let r = agent(&a, &["apply"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(step_of(2).as_deref(), Some("2"));
    assert_eq!(mark_via(3).as_deref(), Some(c2.as_str()));

    // Member 1 dies; the operator hands the lease over at once (runbook) rather than
    // wait a TTL, and someone pushes the branch back to the first commit.
    cluster(&["kill", "1"]);
    runtime().expect("runtime").block_on(async { clear_lease(&member(2)).await });
    f.repo.force_reset(&c1).expect("force-push the first commit back");
    // Member 2's own state file says c1 was applied (it saw it applied as a standby), but
    // the mark in the cluster says c2: the new leader refuses the older commit.
    let r = agent(&b, &["apply"]);
    assert_eq!(r.code, 1, "rejected: {r}");
    assert!(format!("{}{}", r.out, r.err).contains(&c2[..12]), "names the applied commit: {r}");
    assert_eq!(step_of(2).as_deref(), Some("2"), "nothing older was applied");
    // A newer commit on top of c2 is applied by the new leader.
    f.repo.force_reset(&c2).expect("the branch back at c2");
    let c3 = f.commit(3);
    let r = agent(&b, &["apply"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(step_of(3).as_deref(), Some("3"));
    assert_eq!(mark_via(2).as_deref(), Some(c3.as_str()));
    restore();
}

/// A daemon (`veza-agent run`).
struct Daemon {
    pid: u32,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: PathBuf) -> Daemon {
        let pid = veza_testkit::cli::spawn(
            Path::new(env!("CARGO_BIN_EXE_veza-agent")),
            config,
            "run",
            &log,
        );
        Daemon { pid, log }
    }

    fn kill(&self) {
        veza_testkit::proc::kill_pid(self.pid, "KILL", Duration::from_secs(5));
    }

    /// Polls `f` every 100 ms for at most `limit`; fails with the daemon's log.
    fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out after {limit:?} waiting for {what}; daemon log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn daemons_on_two_members_the_standby_takes_over_when_the_leaders_member_dies() {
    cluster(&["up"]);
    let (f, _c1) = Fixture::new();
    let poll = "poll: {interval: 1h, jitter: 0s}\n";
    let (a, b) = (f.config(1, poll), f.config(2, poll));
    let da = Daemon::start(&a, f.dir.path().join("a.log"));
    da.wait_for("member 1's daemon to lead and apply", Duration::from_secs(60), || {
        f.leader_seen_by(1).as_deref() == Some("veza-cl-1") && step_of(2).as_deref() == Some("1")
    });
    let db = Daemon::start(&b, f.dir.path().join("b.log"));
    db.wait_for("member 2's daemon to see member 1 lead", Duration::from_secs(60), || {
        f.leader_seen_by(2).as_deref() == Some("veza-cl-1")
    });
    // The leader renews between its polls (hourly here): after three TTLs it still leads.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(f.leader_seen_by(2).as_deref(), Some("veza-cl-1"), "renewed between polls");
    // Member 1 dies: its incusd and its agent.
    cluster(&["kill", "1"]);
    da.kill();
    let took =
        db.wait_for("member 2's daemon to take the lease over", Duration::from_secs(60), || {
            f.leader_seen_by(2).as_deref() == Some("veza-cl-2")
        });
    eprintln!(
        "cluster: daemon takeover {took:?} after member 1's incusd and agent were killed (TTL 3s)"
    );
    // The new leader applies the next commit at its next sync (asked for here).
    f.commit(2);
    let r = Cmd::new(env!("CARGO_BIN_EXE_veza-agent"))
        .args(["sync", "--config"])
        .arg(&b)
        .timeout(Duration::from_secs(120))
        .output()
        .expect("sync");
    assert_eq!(r.status.code(), Some(0), "{}{}", r.stdout_str(), r.stderr_str());
    assert_eq!(step_of(2).as_deref(), Some("2"));
    // A member that applies nothing gives the lease up at once (a standby need not wait a
    // TTL), and takes no part until resumed: at its sync while suspended, then, resumed
    // and leading again, at a clean stop.
    let lease = || {
        runtime().expect("runtime").block_on(async {
            let v = member(2).shared_user_config(LEASE_KEY).await.expect("read the lease").value;
            match Record::parse(v.as_deref()) {
                Record::Held(l) if l.released() => {
                    format!("given up by {}#{}", l.holder, l.generation)
                }
                Record::Held(l) => format!("{}#{}", l.holder, l.generation),
                other => format!("{other:?}"),
            }
        })
    };
    let agent_b = |args: &[&str]| {
        let r = Cmd::new(env!("CARGO_BIN_EXE_veza-agent"))
            .args(args)
            .args(["--config"])
            .arg(&b)
            .timeout(Duration::from_secs(120))
            .output()
            .expect("veza-agent");
        (r.status.code(), format!("{}{}", r.stdout_str(), r.stderr_str()))
    };
    let leading = lease();
    assert!(leading.starts_with("veza-cl-2#"), "member 2 leads: {leading}");
    let (code, out) = agent_b(&["suspend", "--reason", "cluster test"]);
    assert_eq!(code, Some(0), "{out}");
    f.commit(3);
    let (code, out) = agent_b(&["sync"]);
    assert_eq!(code, Some(4), "a suspended sync holds step 3: {out}");
    assert_eq!(lease(), format!("given up by {leading}"));
    // Its renewal task takes nothing back while it is suspended (three TTL/3 looks).
    std::thread::sleep(Duration::from_millis(3_500));
    assert_eq!(lease(), format!("given up by {leading}"), "still given up");
    assert_eq!(step_of(2).as_deref(), Some("2"), "nothing applied while suspended");
    let (code, out) = agent_b(&["resume"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = agent_b(&["sync"]);
    assert_eq!(code, Some(0), "resumed: {out}");
    assert_eq!(step_of(2).as_deref(), Some("3"), "applied once resumed");
    let again = lease();
    assert!(again.starts_with("veza-cl-2#") && again != leading, "a new generation: {again}");
    veza_testkit::proc::kill_pid(db.pid, "TERM", Duration::from_secs(20));
    assert_eq!(
        lease(),
        format!("given up by {again}"),
        "given up at a clean stop; daemon log:\n{}",
        std::fs::read_to_string(&db.log).unwrap_or_default()
    );
    drop(db);
    restore();
}

// ------------------------------------------------------------------------- placement

const R1: &str = "c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const R2: &str = "c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";
const EDGE: &str = "vt-cl-edge";
const PINNED: &str = "vt-cl-pinned";
const EXTRA: &str = "vt-cl-extra";
const BLUE: &str = "vt-cl-web-blue";
const GREEN: &str = "vt-cl-web-green";
/// Where the edge listens: the address dnsmasq on the cluster's bridge leases to the
/// edge's MAC address, `EDGE_MAC`.
const EDGE_ADDR: &str = "10.250.77.99:80";
const EDGE_MAC: &str = "10:66:6a:76:7a:99";
/// The edge's name for the app (`dns_suffix: vtcl`: dnsmasq on the cluster's bridge).
const WEB: &str = "web.vtcl";

/// The releases `R1` and `R2` as file:// artifacts under `dir`; their sha256s.
fn artifacts(dir: &Path) -> [String; 2] {
    [R1, R2].map(|r| {
        let (bytes, sha) = veza_testkit::app::release_artifact(r).expect("artifact");
        std::fs::create_dir_all(dir.join(r)).expect("artifacts dir");
        std::fs::write(dir.join(r).join("app.tar.gz"), bytes).expect("artifact");
        sha
    })
}

/// The manifest of the placement and promotion tests: the app `web` (blue on `R1`, green
/// on `R2`, `active`), its two slots and the edge on the cluster's macvlan network (the
/// bridge's segment, so they reach each other across members; the edge resolves the
/// slots through dnsmasq on the bridge; a slot's app starts once its DHCP lease came, up
/// to 30 s, or the edge could not resolve it yet), the edge and `vt-cl-pinned` on member 1 by
/// `target:`, and `vt-cl-extra` when asked for (`Some(target)`).
fn cluster_manifest(
    art: &Path,
    shas: &[String; 2],
    active: &str,
    extra: Option<Option<&str>>,
) -> String {
    let extra = match extra {
        None => String::new(),
        Some(None) => format!("    {EXTRA}: {{image: veza-test-busybox, profiles: [default]}}\n"),
        Some(Some(m)) => {
            format!("    {EXTRA}: {{image: veza-test-busybox, profiles: [default], target: {m}}}\n")
        }
    };
    format!(
        r#"apiVersion: veza-agent/v1
kind: Environment
metadata: {{name: cl, host: {HOST}, instance_prefix: vt-cl-}}
incus:
  networks:
    vezacl-mac: {{managed: false}}
  profiles:
    vt-cl-net:
      devices:
        root: {{type: disk, path: /, pool: default}}
        eth0: {{type: nic, network: vezacl-mac}}
  instances:
    {EDGE}:
      image: veza-test-debian12
      profiles: [vt-cl-net]
      target: veza-cl-1
      devices:
        eth0: {{type: nic, network: vezacl-mac, options: {{hwaddr: "{EDGE_MAC}"}}}}
        resolv: {{type: disk, source: {BASE}/resolv.conf, path: /etc/resolv.conf, readonly: true}}
    {PINNED}: {{image: veza-test-busybox, profiles: [default], target: veza-cl-1}}
{extra}apps:
  web:
    image: veza-test-debian12
    profiles: [vt-cl-net]
    port: 8080
    start: "i=0; while [ $i -lt 150 ] && ! ls /run/systemd/netif/leases/* >/dev/null 2>&1; do sleep 0.2; i=$((i+1)); done; exec {{dir}}/start.sh"
    artifact:
      url: "file://{art}/{{release}}/app.tar.gz"
      sha256:
        {R1}: {s1}
        {R2}: {s2}
    health: {{path: /health, interval: 1s, timeout: 2s, rise: 2, fall: 2}}
    upstream: {{dns_suffix: vtcl}}
    slots:
      blue: {{release: {R1}}}
      green: {{release: {R2}}}
    active: {active}
edge:
  runs_in: {EDGE}
  hosts: [{WEB}]
  routes:
    - {{app: web}}
  listen: {{http: "{EDGE_ADDR}"}}
"#,
        art = art.display(),
        s1 = shas[0],
        s2 = shas[1],
    )
}

/// Where `name` lives, as the cluster says (through member `via`).
fn location(via: u8, name: &str) -> Option<String> {
    runtime()
        .expect("runtime")
        .block_on(async { member(via).instance(name).await.expect("read the instance") })
        .and_then(|i| i.location)
}

/// Deletes the instances and the profile of these tests (a killed run's too), by name.
fn delete_placed() {
    let incus = |args: &[&str]| {
        Cmd::new("incus")
            .args(args)
            .env("INCUS_DIR", format!("{BASE}/1/incus"))
            .timeout(Duration::from_secs(120))
            .run()
    };
    for name in [EDGE, PINNED, EXTRA, BLUE, GREEN] {
        if location(1, name).is_some() {
            incus(&["delete", "--force", name]).unwrap_or_else(|e| panic!("deleting {name}: {e}"));
        }
    }
    let _ = incus(&["profile", "delete", "vt-cl-net"]);
}

/// Waits until member `via` sees member `n` with `status` (bounded).
fn wait_member(via: u8, n: u8, status: &str) -> Duration {
    let start = Instant::now();
    let name = format!("veza-cl-{n}");
    loop {
        let seen = runtime().expect("runtime").block_on(async {
            let scope = veza_host::incus::Scope::WITHOUT_NETWORKS.with_members(true);
            match member(via).observe_scoped(scope).await {
                Ok(l) => l.members.get(&name).map(|m| m.status.clone()).ok_or_else(String::new),
                Err(e) => Err(e.to_string()),
            }
        });
        if seen.as_deref() == Ok(status) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{name} not {status} after 90 s: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (bounded) until member 1 lists `name` with a state: a member just restarted is
/// seen online before it serves its instances ("Server isn't ready yet").
fn wait_instance_state(name: &str) {
    let start = Instant::now();
    loop {
        let state = runtime().expect("runtime").block_on(async {
            let scope = veza_host::incus::Scope::WITHOUT_NETWORKS;
            let live = member(1).observe_scoped(scope).await;
            // An instance its member does not serve yet is listed in `Error`.
            live.map(|l| l.instances.get(name).is_some_and(|i| i.status != InstanceStatus::Error))
        });
        if matches!(state, Ok(true)) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(150), "{name} unreadable: {state:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A fixture whose branch holds the cluster manifest, the artifacts beside it.
struct Placement {
    f: Fixture,
    art: PathBuf,
    shas: [String; 2],
}

impl Placement {
    fn new() -> Placement {
        let (f, _) = Fixture::new();
        delete_placed();
        let art = f.dir.path().join("artifacts");
        let shas = artifacts(&art);
        Placement { f, art, shas }
    }

    fn commit(&self, active: &str, extra: Option<Option<&str>>) -> String {
        let text = cluster_manifest(&self.art, &self.shas, active, extra);
        self.f
            .repo
            .commit_files_signed(&self.f.key, &[("cl.yaml", &text)], "cluster")
            .expect("commit")
    }
}

/// The release the edge serves `WEB` from, by one request (`X-Release`).
fn served_release() -> Option<String> {
    let r = veza_host::http::get(EDGE_ADDR, WEB, "/", Duration::from_secs(3)).ok()?;
    (r.status == 200).then(|| r.headers.get("x-release").cloned()).flatten()
}

/// One walk through placement and the loss of a member (one test: the instances are
/// built once): `target:` obeyed and the colors apart; a promotion to green while green's
/// member dies reverts with no failed request through the edge (on a surviving member);
/// while that member is offline nothing is scheduled onto it and its instance is
/// reported; once it is back the promotion completes.
#[test]
fn placement_and_a_member_lost_during_a_promotion() {
    cluster(&["up"]);
    let p = Placement::new();
    p.commit("blue", None);
    let a = p.f.config(1, "promotion: {health_timeout: 8s}\n");
    let r = agent(&a, &["apply"]);
    assert_eq!(r.code, 0, "{r}");
    // `target:` is obeyed, the colors land apart, on the least loaded members.
    assert_eq!(location(2, EDGE).as_deref(), Some("veza-cl-1"), "{r}");
    assert_eq!(location(2, PINNED).as_deref(), Some("veza-cl-1"), "{r}");
    let (blue, green) = (location(2, BLUE).expect("blue"), location(2, GREEN).expect("green"));
    assert_ne!(blue, green, "anti-affinity: both colors on one member\n{r}");
    assert!(blue != "veza-cl-1" && green != "veza-cl-1", "the least loaded members: {r}");
    eprintln!("cluster: placed blue on {blue}, green on {green}, {EDGE} and {PINNED} on veza-cl-1");
    assert_eq!(served_release().as_deref(), Some(R1), "blue serves");
    let dead: u8 = green.trim_start_matches("veza-cl-").parse().expect("member number");

    // Requests through the edge all along; the promotion to green starts, and green's
    // member dies as soon as the run begins (its journal appears).
    let traffic =
        veza_testkit::traffic::Traffic::to(EDGE_ADDR, WEB, "/", 2, Duration::from_millis(20));
    p.commit("green", None);
    let journal = p.f.state_dir(1).join("journal.json");
    let run = {
        let a = a.clone();
        std::thread::spawn(move || agent(&a, &["apply"]))
    };
    let start = Instant::now();
    while !journal.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the apply never began");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster(&["kill", &dead.to_string()]);
    let killed_at = start.elapsed();
    let r = run.join().expect("the apply's thread");
    let (ok, failed) = traffic.stop();
    eprintln!(
        "cluster: promotion with member {dead} killed {killed_at:?} into the run: exit {}, {ok} requests through the edge, {failed} failed: {}",
        r.code,
        r.out.lines().next().unwrap_or("")
    );
    // Completed (green serves) or reverted (blue still serves): never in between.
    let serving = served_release();
    match r.code {
        0 => assert_eq!(serving.as_deref(), Some(R2), "completed: green serves\n{r}"),
        1 => {
            assert_eq!(serving.as_deref(), Some(R1), "reverted: blue serves\n{r}");
            assert!(r.out.contains("rolled-back"), "{r}");
        }
        c => panic!("exit {c}: neither completed nor reverted\n{r}"),
    }
    assert!(ok > 0, "the request loop ran");
    assert_eq!(failed, 0, "{failed} of {} requests through the edge failed\n{r}", ok + failed);

    // While the member is offline: an instance targeted at it is refused, the instance on
    // it is reported and left alone, one without a target goes to a live member.
    let offline = wait_member(1, dead, "Offline");
    eprintln!("cluster: member {dead} reported offline {offline:?} after the run");
    p.commit("green", Some(Some(&green)));
    let plan = agent(&a, &["plan"]);
    let text = format!("{}{}", plan.out, plan.err);
    let refused =
        format!("refused: instance {EXTRA}: its `target:` member is `{green}`, which is offline");
    assert!(text.contains(&refused), "{plan}");
    let reported = format!("cluster: instance `{GREEN}` is on member `{green}`, which is offline");
    assert!(text.contains(&reported), "{plan}");
    let skipped = format!("refused: instance {GREEN}: it is on member `{green}`, which is offline");
    assert!(text.contains(&skipped), "the promotion through it is skipped: {plan}");
    p.commit("green", Some(None));
    let r = agent(&a, &["apply"]);
    assert_eq!(r.code, 3, "applied but for the refusals: {r}");
    let extra = location(1, EXTRA).expect("created without a target");
    assert_ne!(extra, green, "{r}");
    assert_eq!(served_release().as_deref(), Some(R1), "blue still serves");

    // The member is back: the promotion completes.
    cluster(&["start", &dead.to_string()]);
    wait_member(1, dead, "Online");
    wait_instance_state(GREEN);
    let r = agent(&a, &["apply"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(served_release().as_deref(), Some(R2), "green serves");
    assert_eq!(owed_via(2).as_deref(), Some("{}"), "nothing owed after a checked promotion");

    leader_killed_during_checks_the_next_leader_checks_again(&p);
    delete_placed();
    restore();
}

/// The leader's agent is killed (-9) during the checks through the edge of its promotion
/// back to blue; blue then breaks. Member 2's agent, leading next with a state of its own,
/// finds the switch owed in the cluster (shared before the switch), checks blue through
/// the edge again and puts green back: a color nobody checked does not go on serving.
fn leader_killed_during_checks_the_next_leader_checks_again(p: &Placement) {
    // Every member seen online first: right after a member's restart another one's
    // heartbeat may lag, and a member seen offline has its instances left alone.
    for n in 1..=3 {
        wait_member(1, n, "Online");
    }
    // Long checks (400 requests through the edge), so that the kill lands in them.
    let a = p.f.config(1, "promotion: {health_timeout: 8s, verify_requests: 400}\n");
    p.commit("blue", Some(None));
    let journal = p.f.state_dir(1).join("journal.json");
    let log = p.f.dir.path().join("apply-killed.log");
    let pid =
        veza_testkit::cli::spawn(Path::new(env!("CARGO_BIN_EXE_veza-agent")), &a, "apply", &log);
    let start = Instant::now();
    let in_checks = || {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        doc["current"].as_str().is_some_and(|c| c.contains(": verify "))
    };
    while !in_checks() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(90), "the checks never began:\n{log}");
        assert!(veza_testkit::proc::process_alive(pid), "the apply ended first:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    veza_testkit::proc::kill_pid(pid, "KILL", Duration::from_secs(5));
    // Shared before the switch: green is what blue's checks would go back to.
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let seen = [owed_via(1), owed_via(2), owed_via(3)];
    assert_eq!(seen[1].as_deref(), Some(r#"{"cl/web":"green"}"#), "{seen:?}\n{log}");
    assert_eq!(served_release().as_deref(), Some(R1), "the switch to blue was made");
    // Blue breaks: the edge's checks take it down.
    Cmd::new("incus")
        .args(["exec", BLUE, "--", "touch", "/opt/veza/web/unhealthy"])
        .env("INCUS_DIR", format!("{BASE}/1/incus"))
        .timeout(Duration::from_secs(60))
        .run()
        .expect("break blue");
    let start = Instant::now();
    while served_release().as_deref() == Some(R1) {
        assert!(start.elapsed() < Duration::from_secs(30), "blue still answers");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Member 1's agent is gone; the test clears its lease rather than wait out its TTL.
    // Member 2's agent has a state of its own: what it owes comes from the cluster.
    runtime().expect("runtime").block_on(async { clear_lease(&member(2)).await });
    let b = p.f.config(2, "promotion: {health_timeout: 8s}\n");
    let plan = agent(&b, &["plan"]);
    assert!(plan.out.contains("promote cl/web: green -> blue"), "plan and apply agree: {plan}");
    let r = agent(&b, &["apply"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("rolled-back"), "{r}");
    assert_eq!(served_release().as_deref(), Some(R2), "green serves again\n{r}");
    assert_eq!(owed_via(3).as_deref(), Some("{}"), "nothing owed once traffic is back\n{r}");
}

/// The cluster's record of the checks this host's leader owes, through member `n`.
fn owed_via(n: u8) -> Option<String> {
    runtime()
        .expect("runtime")
        .block_on(async { member(n).shared_user_config(&owed_key()).await.expect("owed").value })
}
