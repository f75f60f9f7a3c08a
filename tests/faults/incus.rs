//! Incus going away: a socket that leads nowhere, and incusd's socket vanishing
//! mid-sync (a proxy the test owns; the shared incusd is never restarted).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use veza_testkit::proc::process_alive;
use veza_testkit::sockproxy::SocketProxy;

use super::*;

/// The shared incusd's socket, behind the proxy of `incusd_goes_away_mid_sync`.
const INCUS_SOCKET: &str = "/var/lib/incus/unix.socket";

#[test]
fn incus_socket_unreachable() {
    let (mut case, h, a, _) = case_with_green_promoted(
        "Incus unreachable",
        "config points at an Incus socket that does not exist (stands in for incusd down; the shared incusd is never restarted)",
    );
    let cfg = config_variant(&h, "no-incus", |t| {
        replace_once(
            &t,
            "state_dir:",
            "incus: {socket: /nonexistent/veza/incus.socket}\nstate_dir:",
        )
    });
    let edge_before = edge_bytes(&h);
    let metrics = h.dir.join("veza-agent.prom");
    let _ = std::fs::remove_file(&metrics);
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("failed"), "{r}");
    assert!(r.out.contains("Incus") || r.out.contains("incus"), "names Incus:\n{r}");
    // A sync that fails while observing is recorded like any other: counted as failed,
    // and the metrics file is written.
    let text = std::fs::read_to_string(&metrics).expect("metrics written on an observe failure");
    assert!(text.lines().any(|l| l == "veza_agent_sync_failures 1"), "{text}");
    case.saw("metrics written, veza_agent_sync_failures 1");
    assert!(r.out.contains("/nonexistent/veza/incus.socket"), "names the socket:\n{r}");
    let st = status(&cfg);
    assert!(st["problems"].to_string().contains("last sync failed"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(edge_bytes(&h), edge_before);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    // The state file gone too: the anti-rollback mark in Incus cannot be read, so the
    // revision is not used unchecked (fail closed), and the sync says why.
    let wiped = config_variant(&h, "no-incus-no-state", |t| {
        let state = state_dir(&h).display().to_string();
        replace_once(
            &t,
            &format!("state_dir: {state}\n"),
            &format!(
                "incus: {{socket: /nonexistent/veza/incus.socket}}\nstate_dir: {state}-wiped\n"
            ),
        )
    });
    let r = agent(&wiped, &["apply"]);
    case.saw(format!("state wiped too: apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("failed"), "{r}");
    assert!(r.out.contains("cannot read the anti-rollback mark"), "{r}");
    assert!(r.out.contains(&format!("user.veza-agent.applied.{}", h.env)), "names the key:\n{r}");
    assert_eq!(status(&wiped)["state"]["applied"], Value::Null);
    assert_eq!(edge_bytes(&h), edge_before);
    // With Incus back (the right socket), the same commit applies.
    let r = apply_ok(&h);
    assert!(r.out.starts_with("applied"), "{r}");
    assert_eq!(h.served_release().expect("serves"), h.releases[1].id);
    case.saw("with the real socket the next apply converged");
}

#[test]
fn incusd_goes_away_mid_sync() {
    let (mut case, h) = case_on_host(
        "incusd restarted mid-sync",
        "the Incus socket (a proxy the test owns) resets every connection and disappears during the deploy step, back 3 s later",
    );
    let proxy = SocketProxy::start(&h.dir.join("incus-proxy.sock"), Path::new(INCUS_SOCKET));
    let cfg = config_variant(&h, "proxy", |t| {
        replace_once(
            &t,
            "state_dir:",
            &format!("incus: {{socket: {}}}\nstate_dir:", proxy.path().display()),
        )
    });
    // Same state dir as the main config: the baseline through the proxy.
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue").expect("commit");
    setup_apply(&cfg);
    let b = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
    let state = state_dir(&h);
    let log = h.dir.join("cut-apply.log");
    let pid = spawn_apply(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "apply never reached its deploy step");
        if journal(&state)
            .is_some_and(|j| j.current.is_some_and(|c| c.starts_with("deploy release")))
        {
            break;
        }
        assert!(
            process_alive(pid),
            "apply ended early:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    proxy.cut();
    std::thread::sleep(Duration::from_secs(3));
    proxy.restore();
    let start = Instant::now();
    while process_alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(240), "apply hangs after incusd came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status(&cfg);
    let last = &st["state"]["last_run"];
    case.saw(format!(
        "the interrupted apply ended `{}`: {}",
        last["outcome"].as_str().unwrap_or("?"),
        last["reason"].as_str().unwrap_or("")
    ));
    match last["outcome"].as_str() {
        Some("failed") => {
            assert!(st["problems"].to_string().contains("last sync failed"), "{st:#}");
            assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
            assert_nothing_lost(&h, &state, &h.releases[0].id);
        }
        Some("applied") => assert_nothing_lost(&h, &state, &h.releases[1].id),
        other => panic!("unexpected outcome {other:?} after incusd went away:\n{st:#}"),
    }
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("next apply: {}", r.out.trim()));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.served_release().expect("serves"), h.releases[1].id);
    let st = status(&cfg);
    assert_eq!(st["state"]["applied"]["commit"], b, "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    let r = agent(&cfg, &["apply"]);
    assert!(r.out.starts_with("no-change"), "{r}");
    assert!(proxy.served() > 0, "the agent went through the proxy");
}
