//! The git remote: down, failing, stalling, sending an oversized pack; history
//! rewritten (force-push, a forged tag named like the applied commit) with the state lost.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use veza_testkit::http::Fault;
use veza_testkit::report::Case;

use super::*;

/// Asserts a sync failed on fetch and nothing changed.
fn assert_fetch_failed(h: &DemoHost, config: &Path, case: &mut Case, applied: &str, what: &str) {
    let edge_before = edge_bytes(h);
    let r = agent(config, &["apply"]);
    case.saw(format!("{what}: apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("failed"), "{r}");
    assert!(r.out.contains("fetch"), "says it was the fetch:\n{r}");
    let st = status(config);
    assert!(st["state"]["last_fetch_error"].is_string(), "{st:#}");
    assert!(st["problems"].to_string().contains("last sync failed: fetch"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], applied, "{st:#}");
    assert_eq!(edge_bytes(h), edge_before);
    assert_nothing_lost(h, &state_dir(h), &h.releases[0].id);
}

#[test]
fn git_remote_down_or_failing() {
    let (mut case, h, a, b) = case_with_green_added(
        "git remote down / failing",
        "smart-HTTP remote closes every connection, then answers 500; a new signed commit waits behind it",
    );
    h.http.set_fault(Fault::Down);
    assert_fetch_failed(&h, &h.config_path, &mut case, &a, "remote down");
    h.http.set_fault(Fault::Error500);
    assert_fetch_failed(&h, &h.config_path, &mut case, &a, "remote 500");
    h.http.set_fault(Fault::None);
    let r = apply_ok(&h);
    case.saw(format!("remote back: {}", r.out.trim()));
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["last_fetch_error"], Value::Null, "{st:#}");
}

#[test]
fn git_remote_stalls() {
    let (mut case, h, a, b) = case_with_green_added(
        "git remote stalls",
        "smart-HTTP remote accepts and never answers; fetch_timeout 2 s",
    );
    let cfg = config_variant(&h, "short-fetch", |t| {
        replace_once(&t, "fetch_timeout: 20s", "fetch_timeout: 2s")
    });
    h.http.set_fault(Fault::Stall);
    let started = Instant::now();
    assert_fetch_failed(&h, &cfg, &mut case, &a, "remote stalls");
    let took = started.elapsed();
    case.saw(format!("the stalled sync gave up after {:.1} s", took.as_secs_f64()));
    assert!(took < Duration::from_secs(30), "the fetch timeout bounds a stalled remote ({took:?})");
    h.http.set_fault(Fault::None);
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("remote back: {}", r.out.trim()));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    assert_eq!(status(&cfg)["health"], "ok");
}

#[test]
fn git_remote_sends_an_oversized_pack() {
    let (mut case, h, a) = case_at_baseline(
        "oversized pack",
        "a signed commit with a 3 MiB incompressible blob; source.max_pack_bytes 1 MiB",
    );
    std::fs::write(h.repo.work().join("big.bin"), veza_testkit::repo::noise(3 << 20, 11))
        .expect("write the blob");
    let big = h.repo.commit_signed(&h.forgejo, "a 3 MiB blob").expect("commit");
    let cfg = config_variant(&h, "small-pack", |t| {
        replace_once(&t, "fetch_timeout: 20s", "fetch_timeout: 20s\n  max_pack_bytes: 1048576")
    });
    assert_fetch_failed(&h, &cfg, &mut case, &a, "pack over the cap");
    let st = status(&cfg);
    let error = st["state"]["last_fetch_error"].as_str().unwrap_or("");
    assert!(
        error.contains("larger than the cap of 1048576 bytes (source.max_pack_bytes)"),
        "{st:#}"
    );
    // Under the default cap (512 MiB) the same commit applies.
    let r = apply_ok(&h);
    case.saw(format!("default cap: {}", r.out.trim()));
    assert!(r.out.starts_with(&format!("applied {}", short(&big))), "{r}");
}

#[test]
fn force_push_with_state_and_mirror_deleted() {
    let (mut case, h, a) = case_at_baseline(
        "force-push, state dir and mirror deleted",
        "branch rewritten to an older commit plus a new signed commit on top; state dir (with the mirror) deleted",
    );
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "B").expect("commit");
    apply_ok(&h);
    // The mirror alone deleted: re-fetched, nothing to do.
    std::fs::remove_dir_all(state_dir(&h).join("mirror.git")).expect("delete the mirror");
    let r = apply_ok(&h);
    case.saw(format!("mirror deleted alone: {}", r.out.trim()));
    assert!(r.out.starts_with("no-change"), "{r}");
    // Rewrite history: A, then a new signed commit that does not contain B.
    h.repo.force_reset(&a).expect("force-push");
    let c = h.commit(&h.manifest("blue", Some(1), None), "C, rewritten history").expect("commit");
    std::fs::remove_dir_all(state_dir(&h)).expect("delete the state dir");
    assert!(!state_dir(&h).join("mirror.git").exists());
    let (r, edge_before) = apply_exits_1(&h, &mut case);
    assert!(r.out.starts_with(&format!("rejected {}", short(&c))), "{r}");
    assert!(r.out.contains(&b), "names the high-water commit kept in Incus:\n{r}");
    assert!(r.out.contains("force-pushed") || r.out.contains("does not descend"), "{r}");
    let st = status(&h.config_path);
    assert_eq!(st["state"]["rejected"]["commit"], c, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(history(&h.config_path)[0]["outcome"], "rejected");
    assert_eq!(edge_bytes(&h), edge_before);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
}

#[test]
fn forged_tag_named_like_the_applied_commit() {
    let (mut case, h, a) = case_at_baseline(
        "forged tag named like the applied commit",
        "branch rewound to an older signed commit A, plus a tag named like the applied commit B's id pointing at A; state dir (with the mirror) deleted, Incus still holds B",
    );
    // B: same manifest, a new signed commit; applying it moves the high-water mark to B.
    let b = h.commit(&h.manifest("blue", Some(0), None), "B").expect("commit");
    let r = apply_ok(&h);
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    // The forge rewinds main to A and names a ref after B's id: a ref is not a commit.
    h.repo.force_reset(&a).expect("force-push");
    h.repo.set_ref(&format!("refs/tags/{b}"), &a).expect("forged tag");
    std::fs::remove_dir_all(state_dir(&h)).expect("delete the state dir");
    let (r, edge_before) = apply_exits_1(&h, &mut case);
    assert!(r.out.starts_with(&format!("rejected {}", short(&a))), "{r}");
    assert!(r.out.contains("refusing a rollback or force-push"), "{r}");
    assert!(r.out.contains(&b), "names the high-water commit kept in Incus:\n{r}");
    let st = status(&h.config_path);
    assert_eq!(st["state"]["rejected"]["commit"], a, "{st:#}");
    assert_eq!(st["state"]["applied"], Value::Null, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(history(&h.config_path)[0]["outcome"], "rejected");
    assert_eq!(edge_bytes(&h), edge_before);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
}
