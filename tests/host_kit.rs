//! Smoke tests of the real test host kit: Incus containers from the local images, the
//! test app behind Incus proxy devices, HAProxy in front of it, systemd in the Debian
//! system container, and the stale-container sweep. They fail (naming the component)
//! when the host is not prepared by `tests/host/setup`; they never skip.

use std::time::{Duration, Instant};

use veza_testkit::app::{deploy_release, process_alive};
use veza_testkit::incus::{BUSYBOX_IMAGE, OWNER_KEY, TrustedClient, self_signed_certificate};
use veza_testkit::{
    Haproxy, TestContainer, broken_release_artifact, free_port, http_get, release_artifact,
    require_host, sweep_stale,
};

#[test]
fn busybox_container_runs_commands() {
    require_host().unwrap();
    let c = TestContainer::busybox().unwrap();
    let out = c.exec(&["sh", "-c", "echo hello-$((6 * 7)); echo oops >&2; exit 3"]).unwrap();
    assert_eq!(out.stdout_str(), "hello-42\n");
    assert_eq!(out.stderr_str(), "oops\n");
    assert_eq!(out.status.code(), Some(3));
    let info = c.info().unwrap();
    assert_eq!(info["config"][OWNER_KEY], std::process::id().to_string());
}

/// One container, a healthy release on 8080 and a broken one on 8081, each exposed on
/// a host loopback port through a proxy device.
fn container_with_two_releases() -> anyhow::Result<(TestContainer, u16, u16)> {
    let (healthy, healthy_sha) = release_artifact("rel-good")?;
    let (broken, broken_sha) = broken_release_artifact("rel-bad")?;
    anyhow::ensure!(healthy_sha.len() == 64 && healthy_sha != broken_sha, "bad artifact digests");
    let (p_good, p_bad) = (free_port()?, free_port()?);
    let c = TestContainer::spec(BUSYBOX_IMAGE)
        .proxy("good", p_good, 8080)
        .proxy("bad", p_bad, 8081)
        .create()?;
    c.wait_for_loopback(Duration::from_secs(10))?;
    deploy_release(&c, &healthy, "/srv/good", 8080)?;
    deploy_release(&c, &broken, "/srv/bad", 8081)?;
    Ok((c, p_good, p_bad))
}

#[test]
fn testapp_releases_answer_through_incus_proxy_devices() {
    require_host().unwrap();
    let (_c, p_good, p_bad) = container_with_two_releases().unwrap();

    let r = http_get(("127.0.0.1", p_good), "/health").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = http_get(("127.0.0.1", p_good), "/some/path").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "release=rel-good path=/some/path\n");
    assert_eq!(r.header("x-release"), Some("rel-good"));
    assert_eq!(r.header("connection"), Some("close"));

    let r = http_get(("127.0.0.1", p_bad), "/health").unwrap();
    assert_eq!(r.status, 503);
    let r = http_get(("127.0.0.1", p_bad), "/").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "release=rel-bad path=/\n"));

    // Concurrent connections are served.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || http_get(("127.0.0.1", p_good), &format!("/c{i}")).unwrap())
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap().body, format!("release=rel-good path=/c{i}\n"));
    }
}

#[test]
fn haproxy_routes_to_the_healthy_release_and_reloads() {
    require_host().unwrap();
    let (_c, p_good, p_bad) = container_with_two_releases().unwrap();
    let front = free_port().unwrap();
    let cfg = |extra: &str| {
        format!(
            "global\n    log stderr format short local0 info\n\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:{front}\n    default_backend be\n\n\
             backend be\n    balance roundrobin\n    option httpchk GET /health\n    \
             default-server inter 100ms fall 1 rise 1\n    \
             server good 127.0.0.1:{p_good} check\n    server bad 127.0.0.1:{p_bad} check\n{extra}"
        )
    };
    let haproxy = Haproxy::start(&cfg("")).unwrap();

    // The broken release fails its health check and leaves the rotation.
    let start = Instant::now();
    loop {
        let stat = haproxy.master_cli("@1 show stat").unwrap();
        let status = |srv: &str| {
            stat.lines()
                .find(|l| l.starts_with(&format!("be,{srv},")))
                .and_then(|l| l.split(',').nth(17))
                .map(str::to_string)
        };
        if status("bad").as_deref() == Some("DOWN") && status("good").as_deref() == Some("UP") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "checks never settled:\n{stat}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..6 {
        let r = http_get(("127.0.0.1", front), "/via-haproxy").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "release=rel-good path=/via-haproxy\n");
    }

    // A valid reload keeps serving; an invalid config is rejected before it is used.
    haproxy.reload_with(&cfg("    http-response set-header X-Reloaded yes\n")).unwrap();
    let r = http_get(("127.0.0.1", front), "/").unwrap();
    assert_eq!(r.header("x-reloaded"), Some("yes"), "{r:?}");
    let err = haproxy.reload_with(&cfg("    bogus_keyword\n")).unwrap_err();
    assert!(format!("{err:#}").contains("bogus_keyword"), "{err:#}");
    assert_eq!(http_get(("127.0.0.1", front), "/").unwrap().status, 200);

    let pid = haproxy.pid();
    drop(haproxy);
    assert!(!process_alive(pid), "haproxy master {pid} survived drop");
    assert!(http_get(("127.0.0.1", front), "/").is_err());
}

#[test]
fn systemd_timers_run_in_the_debian_system_container() {
    require_host().unwrap();
    let c = TestContainer::debian().unwrap();
    let timers = c.exec_ok(&["systemctl", "list-timers", "--all", "--no-pager"]).unwrap();
    assert!(timers.contains("systemd-tmpfiles-clean.timer"), "{timers}");
    let haproxy = c.exec_ok(&["haproxy", "-v"]).unwrap();
    assert!(haproxy.contains("HAProxy version 2.6"), "{haproxy}");
}

#[test]
fn sweep_removes_only_marked_containers_and_trust_entries_whose_owner_is_dead() {
    require_host().unwrap();
    // A pid that is certainly dead: a child that exited (a zombie counts as dead).
    let dead = veza_host::process::Cmd::new("true").spawn_daemon(None).unwrap();
    let start = Instant::now();
    while process_alive(dead) {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
    let stale = TestContainer::spec(BUSYBOX_IMAGE).stopped().owner_pid(dead).create().unwrap();
    let live = TestContainer::spec(BUSYBOX_IMAGE).stopped().create().unwrap();
    let unmarked = TestContainer::spec(BUSYBOX_IMAGE).stopped().owner_pid(dead).create().unwrap();
    unmarked.unset_config(OWNER_KEY).unwrap();
    // A test certificate left in incusd's trust store by that dead process, and one of ours.
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = self_signed_certificate(dir.path(), "stale").unwrap();
    let stale_trust = format!("vt-https-{dead}-0");
    veza_host::process::Cmd::new("incus")
        .args(["config", "trust", "add-certificate"])
        .arg(&cert)
        .args(["--name", &stale_trust])
        .run()
        .unwrap();
    let ours = TrustedClient::new().unwrap();
    let trusted = || {
        veza_host::process::Cmd::new("incus")
            .args(["config", "trust", "list", "--format", "csv"])
            .run_stdout()
            .unwrap()
    };

    // Another process's sweep may get to the stale one first: check what is left.
    let removed = sweep_stale().unwrap();
    assert!(!removed.contains(&live.name().to_string()), "{removed:?}");
    assert!(!removed.contains(&unmarked.name().to_string()), "{removed:?}");
    assert!(stale.info().is_err(), "stale container {} still exists", stale.name());
    live.info().unwrap();
    unmarked.info().unwrap();
    let list = trusted();
    assert!(!list.contains(&format!("{stale_trust},")), "stale trust entry survived:\n{list}");
    assert!(list.contains(&format!("vt-https-{}-", std::process::id())), "{list}");
    drop(ours);
    let list = trusted();
    assert!(!list.contains(&format!("vt-https-{}-", std::process::id())), "{list}");
}
