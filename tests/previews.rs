//! PR previews on the real test host, through the command line: real `refs/pull/<N>/head`
//! refs in the repository served over smart HTTP, the real incusd and HAProxy, and the
//! forge's commit status endpoint played by `veza_testkit::forge::StatusServer` (which
//! checks each request as Forgejo's API specifies). A signed head that promotes green gets
//! a `success` status saying so while nothing on the host changes; an unsigned head gets
//! a `failure` without being planned; a head already in the branch gets nothing; a second
//! pass posts nothing new; the branch's sync, status and high-water mark are untouched.

use std::time::Duration;

use veza_testkit::demo::DemoHost;

use crate::support::{agent, apply_ok, host, status_forge};

fn high_water_mark(h: &DemoHost) -> String {
    veza_host::process::Cmd::new("incus")
        .args(["project", "get", "default", &format!("user.veza-agent.applied.{}", h.env)])
        .run_stdout()
        .unwrap_or_else(|e| panic!("incus project get: {e}"))
        .trim()
        .to_string()
}

/// Commits `manifest` on a branch from the current main (signed or not) and pushes its
/// head as `refs/pull/<pr>/head`, as Forgejo exposes a PR; main stays where it was.
fn open_pr(h: &DemoHost, pr: u64, manifest: &str, signed: bool) -> String {
    h.repo
        .git(&["checkout", "-q", "-B", &format!("pr{pr}"), "main"])
        .expect("git in the test repository");
    h.repo.write(&h.manifest_path(), manifest).expect("git in the test repository");
    let head = if signed {
        h.repo.commit_signed(&h.forgejo, &format!("PR {pr}")).expect("git in the test repository")
    } else {
        h.repo.commit_unsigned(&format!("PR {pr}")).expect("git in the test repository")
    };
    h.repo
        .git(&["push", "-q", "origin", &format!("HEAD:refs/pull/{pr}/head")])
        .expect("git in the test repository");
    h.repo.checkout("main").expect("git in the test repository");
    head
}

#[test]
fn pr_heads_are_previewed_read_only_and_posted_once() {
    let h = host();
    let (forge, token) =
        status_forge(&h, "pv", "previews: {enabled: true, max_per_poll: 5, plan_timeout: 10s}\n");

    // The branch: blue serves release 0, green holds release 1.
    let main = h.commit(&h.manifest("blue", Some(0), Some(1)), "blue and green").unwrap();
    let out = apply_ok(&h);
    assert!(out.contains("previews: 0 PR head(s), 0 previewed"), "{out}");
    let branch_statuses = forge.received().len();
    assert_eq!(branch_statuses, 1, "{:#?}", forge.received());

    // PR 1 promotes green, signed; PR 2 is unsigned; PR 3's head is main's tip (merged).
    let promote = open_pr(&h, 1, &h.manifest("green", Some(0), Some(1)), true);
    let unsigned = open_pr(&h, 2, &h.manifest("green", Some(0), Some(1)), false);
    h.repo.git(&["push", "-q", "origin", &format!("{main}:refs/pull/3/head")]).unwrap();

    let state_before = std::fs::read_to_string(h.dir.join("state/state.json")).unwrap();
    let mark_before = high_water_mark(&h);
    let watch = veza_testkit::incus::LifecycleWatch::start(&h.dir.join("lifecycle.json")).unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with("no-change"), "{out}");
    assert!(out.contains("previews: 3 PR head(s), 2 previewed, 2 status(es) posted"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let writes = watch.about(&h.env);
    assert!(writes.is_empty(), "a preview wrote to Incus:\n{}", writes.join("\n"));
    assert_eq!(h.served_release().unwrap(), h.releases[0].id, "traffic stayed on blue");

    let got = forge.received();
    let previews = &got[branch_statuses..];
    assert_eq!(previews.len(), 2, "{got:#?}");
    let context = format!("veza-agent/{}/preview", h.env);
    for (head, state, starts) in [
        (&promote, "success", format!("would: switch {}/hello to green", h.env)),
        (&unsigned, "failure", "unsigned, not planned: signature: commit is not signed".into()),
    ] {
        let r = previews
            .iter()
            .find(|r| r.line.ends_with(head.as_str()))
            .unwrap_or_else(|| panic!("no status for {head}: {got:#?}"));
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        assert_eq!(r.line, format!("POST /api/v1/repos/talas/manifests/statuses/{head}"));
        assert_eq!(
            (r.body["state"].as_str(), r.body["context"].as_str()),
            (Some(state), Some(context.as_str()))
        );
        let description = r.body["description"].as_str().unwrap_or_default();
        assert!(description.starts_with(&starts), "{description}");
    }

    // Unchanged heads: never planned or posted again. The branch is as it was.
    let out = apply_ok(&h);
    assert!(out.contains("previews: 3 PR head(s), 0 previewed, 0 status(es) posted"), "{out}");
    assert_eq!(forge.received().len(), branch_statuses + 2, "{:#?}", forge.received());
    let state_after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(h.dir.join("state/state.json")).unwrap())
            .unwrap();
    let state_before: serde_json::Value = serde_json::from_str(&state_before).unwrap();
    for key in ["quarantined", "rejected", "refusals", "held", "waiting"] {
        assert_eq!(state_after[key], state_before[key], "state.{key} moved");
    }
    assert_eq!(state_after["applied"]["commit"], main.as_str());
    assert_eq!(high_water_mark(&h), mark_before);
    assert_eq!(mark_before, main);

    let (code, status, err) = agent(&h, &["status", "--json"]);
    assert_eq!(code, 0, "{status}\n{err}");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["state"]["applied"]["commit"], main.as_str());
    assert_eq!(st["previews"]["last_run"]["heads"], 3, "{st:#}");
    assert_eq!(st["previews"]["heads"][&main]["state"], "merged", "{st:#}");
    assert_eq!(st["previews"]["heads"][&promote]["pr"], 1, "{st:#}");
    let (_, text, _) = agent(&h, &["status"]);
    assert!(text.contains(&format!("#1     {} success would: switch", &promote[..12])), "{text}");
    let metrics = std::fs::read_to_string(h.dir.join("veza-agent.prom")).unwrap();
    for line in [
        "veza_agent_preview_heads 3\n",
        "veza_agent_preview_failures_total{kind=\"plan\"} 0\n",
        "veza_agent_preview_failures_total{kind=\"post\"} 0\n",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    let (code, plan, _) = agent(&h, &["plan"]);
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains(&format!("#2     {} failure unsigned", &unsigned[..12])), "{plan}");
    assert!(!status.contains(&token) && !plan.contains(&token), "the token shows");
}
