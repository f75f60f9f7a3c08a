//! The edge: a rendered config HAProxy refuses, and the live config corrupted on disk.

use std::path::PathBuf;

use super::*;

#[test]
fn haproxy_rejects_the_rendered_config() {
    let (mut case, h, a) = case_at_baseline(
        "HAProxy rejects the rendered config",
        "signed manifest turning on TLS with a certificate directory that does not exist: renders fine, `haproxy -c` refuses it",
    );
    let https = veza_testkit::free_port().expect("port");
    let tls = replace_once(
        &h.manifest("blue", Some(0), None),
        &format!("listen: {{http: \"127.0.0.1:{}\"}}", h.edge_port),
        &format!(
            "listen: {{http: \"127.0.0.1:{}\", https: \"127.0.0.1:{https}\"}}\n  tls: {{cert_dir: /nonexistent/veza-certs, redirect_http: false}}",
            h.edge_port
        ),
    );
    let bad = h.commit(&tls, "turn on TLS").expect("commit");
    let (r, edge_before) = apply_exits_1(&h, &mut case);
    assert!(r.out.starts_with(&format!("failed {}", short(&bad))), "{r}");
    assert!(r.out.contains("edge config"), "names the step:\n{r}");
    assert!(r.out.contains("/nonexistent/veza-certs"), "carries HAProxy's diagnostic:\n{r}");
    let st = status(&h.config_path);
    assert!(st["problems"].to_string().contains("last sync failed"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    assert_eq!(history(&h.config_path)[0]["outcome"], "failed");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(edge_bytes(&h), edge_before, "the live config is untouched");
    let candidate = PathBuf::from(format!("{}.candidate", h.haproxy.config_path().display()));
    assert!(!candidate.exists(), "the rejected candidate was removed");
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    // The fix (a revert) applies.
    h.commit(&h.manifest("blue", Some(0), Some(1)), "revert TLS, add green").expect("commit");
    let r = apply_ok(&h);
    case.saw(format!("after a revert commit: {}", r.out.trim()));
    assert_eq!(status(&h.config_path)["health"], "ok");
}

#[test]
fn live_edge_config_corrupted_on_disk() {
    let (mut case, h, _) = case_at_baseline(
        "live edge config corrupted on disk",
        "garbage written over the live haproxy.cfg behind the agent's back",
    );
    let good = edge_bytes(&h);
    std::fs::write(h.haproxy.config_path(), b"frontend {{ broken\n  bind nowhere\n\x00garbage\n")
        .expect("corrupt the edge");
    assert!(veza_testkit::haproxy::check_config(&h.haproxy.config_path()).is_err());
    // HAProxy still serves from memory.
    assert_eq!(h.served_release().expect("serves"), h.releases[0].id);
    let (code, out, _) = {
        let r = agent(&h.config_path, &["plan"]);
        (r.code, r.out, r.err)
    };
    case.saw(format!("plan exit {code}: {}", out.lines().last().unwrap_or("").trim()));
    assert_eq!(code, 2, "the drift is a pending change:\n{out}");
    assert!(out.contains("edge config"), "{out}");
    let r = apply_ok(&h);
    case.saw(format!("apply: {}", r.out.trim()));
    assert_eq!(edge_bytes(&h), good, "the agent wrote the desired config back");
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    assert_eq!(status(&h.config_path)["health"], "ok");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw("repaired and reloaded; the next apply is no-change");
}
