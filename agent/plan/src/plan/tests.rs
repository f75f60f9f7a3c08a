//! Planner specification: data in (manifests + live state), plan out, compared with the
//! snapshots in `agent/plan/snapshots/`. Run with `UPDATE_SNAPSHOTS=1` to rewrite them,
//! then review the diff: the snapshot is the contract.

use std::collections::BTreeMap;

use veza_model::Manifest;
use veza_model::manifest::Color;

use crate::edge::{EdgeEnv, EdgeSettings, render_edge};
use crate::live::{
    InstanceKind, InstanceStatus, LiveEdge, LiveInstance, LivePool, LiveProfile, LiveState,
    UnitTarget,
};
use crate::plan::{Action, Plan, PlanOptions, plan};
use crate::testing::{check_snapshot, check_text, manifests};

const DEMO: &str = include_str!("../../../../manifests/examples/minimal.yaml");
const PROD: &str = include_str!("../../../../manifests/prod.yaml");
const STAGING: &str = include_str!("../../../../manifests/staging.yaml");

fn opts() -> PlanOptions {
    PlanOptions { edge_settings: EdgeSettings::default(), ..PlanOptions::default() }
}

fn run(ms: &[Manifest], live: &LiveState, opts: &PlanOptions) -> Plan {
    let refs: Vec<&Manifest> = ms.iter().collect();
    match plan(&refs, live, opts) {
        Ok(p) => p,
        Err(e) => panic!("planning failed: {e}"),
    }
}

/// What applying `plan` would leave behind: the planner's own model of its drivers.
fn applied(live: &LiveState, plan: &Plan) -> LiveState {
    crate::simulate::applied(live, plan).unwrap_or_else(|e| panic!("{e}"))
}

/// The files `plan` writes (run scripts, units, migration wrappers, edge configs, job
/// units), as rendered by the planner: `snapshots/<name>.files.txt`.
fn check_files_snapshot(name: &str, plan: &Plan) {
    let mut text = String::new();
    for (at, body) in plan.rendered_files() {
        text.push_str(&format!("==> {at} <==\n{body}"));
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    check_text(&format!("{name}.files"), &text);
}

fn pool(name: &str) -> (String, LivePool) {
    let p = LivePool { name: name.into(), status: "Created".into(), ..LivePool::default() };
    (name.to_string(), p)
}

fn live_with_default_pool() -> LiveState {
    LiveState { pools: BTreeMap::from([pool("default")]), ..LiveState::default() }
}

fn running_container(name: &str) -> LiveInstance {
    LiveInstance {
        name: name.into(),
        kind: InstanceKind::Container,
        status: InstanceStatus::Running,
        ..LiveInstance::default()
    }
}

fn with_foreign_forgejo(mut l: LiveState) -> LiveState {
    let mut forgejo = running_container("forgejo");
    let root = [("type", "disk"), ("path", "/"), ("pool", "ssd")];
    forgejo
        .expanded_devices
        .insert("root".into(), root.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    l.pools.extend([pool("ssd")]);
    l.instances.insert("forgejo".into(), forgejo);
    l.networks.insert("net-veza".into(), Default::default());
    l
}

#[test]
fn first_sync_builds_everything_in_order() {
    let ms = manifests(&[DEMO]);
    let p = run(&ms, &live_with_default_pool(), &opts());
    check_snapshot("demo-first-sync", &p);
    check_files_snapshot("demo-first-sync", &p);
    assert_eq!(p.promotions().len(), 1);
    assert!(p.refusals.is_empty());
}

#[test]
fn first_sync_of_the_veza_host_detects_the_pool_and_leaves_forgejo_alone() {
    let ms = manifests(&[PROD, STAGING]);
    let live = with_foreign_forgejo(live_with_default_pool());
    let p = run(&ms, &live, &opts());
    check_snapshot("veza-first-sync", &p);
    check_files_snapshot("veza-first-sync", &p);
    let text = serde_json::to_string(&p).expect("plan serializes");
    assert!(text.contains(r#""pool":"ssd""#), "pool: auto must follow forgejo's root disk");
    assert!(!text.contains(r#""name":"forgejo""#), "forgejo is never in a plan");
}

#[test]
fn applying_the_plan_converges_to_no_changes() {
    for texts in [vec![DEMO], vec![PROD, STAGING]] {
        let ms = manifests(&texts);
        let live = with_foreign_forgejo(live_with_default_pool());
        let first = run(&ms, &live, &opts());
        let after = applied(&live, &first);
        let second = run(&ms, &after, &opts());
        assert!(second.is_empty(), "second plan is not empty:\n{second}");
        assert_eq!(second.to_string(), "no changes\n");
    }
}

/// `p`'s steps (when `steps` is given) and refusals, in order, each starting with what is
/// wanted.
fn assert_steps_and_refusals(p: &Plan, what: &str, steps: Option<&[&str]>, refused: &[&str]) {
    if let Some(want) = steps {
        let got: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
        assert_eq!(got.len(), want.len(), "{what}: steps\n{p}");
        for (got, want) in got.iter().zip(want) {
            assert!(got.starts_with(want), "{what}: step `{got}`, wanted `{want}…`\n{p}");
        }
    }
    let refusals: Vec<String> =
        p.refusals.iter().map(|r| format!("{}: {}", r.resource, r.reason)).collect();
    assert_eq!(refusals.len(), refused.len(), "{what}: refusals {refusals:#?}");
    for (got, want) in refusals.iter().zip(refused) {
        assert!(got.starts_with(want), "{what}: refusal\n  {got}\nwanted\n  {want}…");
    }
}

fn converged(texts: &[&str]) -> (Vec<Manifest>, LiveState) {
    let ms = manifests(texts);
    let live = with_foreign_forgejo(live_with_default_pool());
    let after = applied(&live, &run(&ms, &live, &opts()));
    (ms, after)
}

const GREEN: &str = "2222222222222222222222222222222222222222";

fn demo_with(edit: impl Fn(String) -> String) -> String {
    edit(DEMO.to_string())
}

fn with_green_release(t: String) -> String {
    t.replace(
        "      sha256:\n",
        &format!("      sha256:\n        {GREEN}: 1111111111111111111111111111111111111111111111111111111111111111\n"),
    )
    .replace("      green: {}", &format!("      green: {{release: {GREEN}}}"))
}

#[test]
fn promotion_deploys_gates_switches_and_verifies() {
    let (_, live) = converged(&[&demo_with(with_green_release)]);
    let promoted =
        demo_with(|t| with_green_release(t).replace("    active: blue", "    active: green"));
    let p = run(&manifests(&[&promoted]), &live, &opts());
    check_snapshot("demo-promotion", &p);
    check_files_snapshot("demo-promotion", &p);
    assert_eq!(p.promotions().len(), 1);
    assert_eq!(p.promotions()[0].from, Some(Color::Blue));
    let fallback =
        p.switch().and_then(|s| s.fallback.as_deref()).expect("a promotion has a fallback edge");
    let back = LiveEdge::from_config(fallback.to_string());
    assert_eq!(back.active.get(&("demo".to_string(), "hello".to_string())), Some(&Color::Blue));
}

/// The checks through the edge take the path clients take: over TLS to the shared edge's
/// HTTPS listener when the environment terminates TLS (its plain HTTP may only redirect,
/// which reaches no slot), else to its HTTP one; the listener the edge binds, the one any
/// environment declares, else the default.
#[test]
fn the_checks_go_where_the_edge_listens_over_tls_when_the_environment_has_it() {
    let listen = "  listen: {http: \"127.0.0.1:18100\"}";
    let tls = "  tls: {cert_dir: /etc/haproxy/certs}";
    // (what, the edit of the edge, the check's listener, over TLS)
    let table = [
        ("plain HTTP, declared", listen.to_string(), "127.0.0.1:18100", false),
        ("TLS, default HTTPS", format!("{listen}\n{tls}"), "0.0.0.0:443", true),
        (
            "TLS, declared HTTPS",
            format!("  listen: {{http: \"127.0.0.1:18100\", https: \"127.0.0.1:18143\"}}\n{tls}"),
            "127.0.0.1:18143",
            true,
        ),
        ("plain HTTP, default", String::new(), "0.0.0.0:80", false),
    ];
    for (what, edge, want, over_tls) in table {
        let edited = |t: String| with_green_release(t).replace(listen, &edge);
        let (_, live) = converged(&[&demo_with(edited)]);
        let promoted = demo_with(|t| edited(t).replace("    active: blue", "    active: green"));
        let p = run(&manifests(&[&promoted]), &live, &opts());
        let switch = p.switch().unwrap_or_else(|| panic!("{what}: a promotion\n{p}"));
        let check = &switch.checks[0];
        assert_eq!((check.listen.as_str(), check.tls), (want, over_tls), "{what}");
        assert_eq!(
            check.to_string().ends_with("(Host: demo.localhost, HTTPS)"),
            over_tls,
            "{what}"
        );
    }
    // An environment that declares no listener is checked where another one's binds it.
    let declared = PROD.replace(
        "  tls: {cert_dir: /etc/haproxy/certs}",
        "  tls: {cert_dir: /etc/haproxy/certs}\n  listen: {http: \"10.0.0.1:80\", https: \"10.0.0.1:443\"}",
    );
    assert_ne!(declared, PROD);
    let ms = manifests(&[STAGING, &declared]);
    let ms: Vec<&Manifest> = ms.iter().collect();
    assert_eq!(super::edge_listen(&ms, true), "10.0.0.1:443");
    assert_eq!(super::edge_listen(&ms, false), "10.0.0.1:80");
}

/// A promotion whose switch was made and whose checks never passed (a killed run) is
/// planned again from the color it goes back to, though the live config already routes
/// to the target: the same switch, its gate, its checks and its fallback; and nothing
/// when the edge is already back on that color.
#[test]
fn an_unchecked_switch_is_promoted_again_with_its_checks_and_fallback() {
    let promoted =
        demo_with(|t| with_green_release(t).replace("    active: blue", "    active: green"));
    let (ms, live) = converged(&[&promoted]);
    assert!(run(&ms, &live, &opts()).is_empty(), "converged on green");
    let key = ("demo".to_string(), "hello".to_string());
    let owed = PlanOptions { unchecked: [(key.clone(), Color::Blue)].into(), ..opts() };
    let p = run(&ms, &live, &owed);
    let switch = p.switch().expect("a promotion");
    assert_eq!(p.promotions().len(), 1, "{p}");
    assert_eq!((p.promotions()[0].from, p.promotions()[0].to), (Some(Color::Blue), Color::Green));
    assert_eq!(
        Some(switch.config.as_str()),
        live.edge_config(),
        "the switch installs what is live"
    );
    // Green already has the traffic: no gate, its checks decide (and the fallback).
    assert!(switch.gates.is_empty(), "{p}");
    assert_eq!(switch.checks.len(), 1, "{p}");
    let back = LiveEdge::from_config(switch.fallback.clone().expect("a fallback"));
    assert_eq!(back.active.get(&key), Some(&Color::Blue));
    // Green stopped meanwhile (a reboot): started and deployed, then gated as the serving
    // slot it is, before its checks.
    let mut stopped = live.clone();
    if let Some(g) = stopped.instances.get_mut("demo-hello-green") {
        g.status = InstanceStatus::Stopped;
    }
    let steps: Vec<String> =
        run(&ms, &stopped, &owed).steps.iter().map(|s| s.action.to_string()).collect();
    assert_eq!(
        steps,
        [
            "start instance demo-hello-green",
            "deploy release 2222222222 to demo-hello-green",
            "wait for demo-hello-green to be healthy (/health 200)",
            "promote demo/hello: blue -> green (2222222222) through haproxy on host",
        ]
    );
    // The edge already back on blue (the fallback landed): an ordinary promotion to green.
    let (_, on_blue) = converged(&[&demo_with(with_green_release)]);
    assert_eq!(run(&ms, &on_blue, &owed), run(&ms, &on_blue, &opts()));
    // Blue no longer deployed (`blue: {}`): nothing to go back to, nothing owed.
    let retired =
        promoted.replace("blue: {release: 1111111111111111111111111111111111111111}", "blue: {}");
    assert_ne!(retired, promoted);
    let retired = manifests(&[&retired]);
    assert_eq!(run(&retired, &live, &owed), run(&retired, &live, &opts()));
}

/// An edge switch with no color to go back to (a takeover, or first traffic) whose checks
/// never passed: its apps are promoted again from none, with no gate, their checks, and
/// the config live before it as the fallback, until that config is back.
#[test]
fn an_unchecked_edge_switch_is_checked_again_and_falls_back_to_the_config_before_it() {
    let (ms, live) = converged(&[DEMO]);
    assert!(run(&ms, &live, &opts()).is_empty(), "converged on blue");
    let key = ("demo".to_string(), "hello".to_string());
    let before = "global\n    # the edge Ansible wrote\n".to_string();
    let owed = PlanOptions {
        unchecked_edge: Some(crate::plan::EdgeRecheck {
            apps: [key.clone()].into(),
            back_to: before.clone(),
        }),
        ..opts()
    };
    let p = run(&ms, &live, &owed);
    let switch = p.switch().expect("a promotion");
    assert_eq!(p.promotions().len(), 1, "{p}");
    assert_eq!((p.promotions()[0].from, p.promotions()[0].to), (None, Color::Blue));
    assert_eq!(
        Some(switch.config.as_str()),
        live.edge_config(),
        "the switch installs what is live"
    );
    assert!(switch.gates.is_empty(), "blue already has the traffic: {p}");
    assert_eq!(switch.checks.len(), 1, "{p}");
    assert_eq!(switch.fallback.as_deref(), Some(before.as_str()));
    assert!(
        p.steps.iter().any(|s| s.reason.starts_with("an edge switch was never checked")),
        "{p}"
    );
    // The config before it is live again (its fallback landed): nothing is owed.
    let mut back = live.clone();
    back.edge = LiveEdge::from_config(before.clone());
    let other = PlanOptions { unchecked_edge: None, ..owed.clone() };
    assert_eq!(run(&ms, &back, &owed), run(&ms, &back, &other));
    // An app it did not route: planned as ever.
    let elsewhere = PlanOptions {
        unchecked_edge: Some(crate::plan::EdgeRecheck {
            apps: [("demo".to_string(), "other".to_string())].into(),
            back_to: before,
        }),
        ..opts()
    };
    assert!(run(&ms, &live, &elsewhere).is_empty());
}

/// The edge is never written into an instance the agent does not own (before adoption):
/// refused once, with the fix, and nothing planned for it.
#[test]
fn the_edge_is_not_installed_into_an_instance_the_agent_does_not_own() {
    let (_, mut live) = converged(&[PROD, STAGING]);
    let promoted =
        manifests(&[&PROD.replacen("    active: blue", "    active: green", 1), STAGING]);
    assert!(run(&promoted, &live, &opts()).switch().is_some(), "a promotion, when owned");
    live.instances
        .get_mut("veza-haproxy")
        .expect("the edge's instance")
        .config
        .remove(crate::live::MARK_MANAGED);
    let p = run(&promoted, &live, &opts());
    assert!(p.switch().is_none(), "{p}");
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s.action, Action::InstallEdge { .. } | Action::VerifyEdge(_))),
        "{p}"
    );
    let edge: Vec<&str> =
        p.refusals.iter().filter(|r| r.resource == "edge").map(|r| r.reason.as_str()).collect();
    assert_eq!(
        edge,
        [
            "not updated: it runs in `veza-haproxy`, an instance that is not the agent's (no user.veza.managed mark) — adopt it first (`veza-agent adopt`)"
        ]
    );
}

/// The observer reads back, from the config text alone, the colors the renderer routed
/// to: a promotion, a fallback and `simulate` all rely on it.
#[test]
fn the_observed_edge_reads_back_the_rendered_colors() {
    let ms = manifests(&[PROD, STAGING]);
    // (environment, app, override of the manifest's `active`)
    let cases: [&[(&str, &str, Color)]; 3] = [
        &[],
        &[("prod", "backend", Color::Green)],
        &[("prod", "backend", Color::Green), ("staging", "backend", Color::Blue)],
    ];
    for overrides in cases {
        let envs: Vec<EdgeEnv> = ms
            .iter()
            .filter_map(|m| {
                let o: BTreeMap<String, Color> = overrides
                    .iter()
                    .filter(|(e, _, _)| *e == m.metadata.name)
                    .map(|(_, a, c)| (a.to_string(), *c))
                    .collect();
                EdgeEnv::from_manifest(m, &o).expect("edge of a valid manifest")
            })
            .collect();
        let rendered = render_edge(&envs, &EdgeSettings::default()).expect("renders");
        let want = rendered.summary.active_colors();
        assert_eq!(want.len(), 6, "{overrides:?}: every app of prod and staging routes somewhere");
        for (env, app, color) in overrides {
            assert_eq!(want.get(&(env.to_string(), app.to_string())), Some(color));
        }
        let observed = LiveEdge::from_config(rendered.config.clone());
        assert_eq!(observed.active, want, "{overrides:?}");
    }
}

#[test]
fn rollback_by_git_revert_is_a_promotion_back() {
    let promoted =
        demo_with(|t| with_green_release(t).replace("    active: blue", "    active: green"));
    let (_, live) = converged(&[&promoted]);
    let reverted = demo_with(with_green_release);
    let p = run(&manifests(&[&reverted]), &live, &opts());
    check_snapshot("demo-revert", &p);
    assert_eq!(p.promotions()[0].to, Color::Blue);
}

/// The demo with release 3333333333 declared on its idle green slot.
fn demo_with_newer_green() -> String {
    demo_with(|t| {
        with_green_release(t)
            .replace(
                &format!("green: {{release: {GREEN}}}"),
                "green: {release: 3333333333333333333333333333333333333333}",
            )
            .replace(
                &format!("        {GREEN}: "),
                "        3333333333333333333333333333333333333333: ",
            )
    })
}

#[test]
fn a_release_change_is_deployed_in_place_into_the_running_idle_slot() {
    let (_, live) = converged(&[&demo_with(with_green_release)]);
    let p = run(&manifests(&[&demo_with_newer_green()]), &live, &opts());
    check_snapshot("demo-release-change", &p);
}

#[test]
fn a_release_change_rebuilds_an_idle_slot_that_is_stopped_or_that_the_agent_did_not_deploy() {
    let stopped = |i: &mut veza_model::live::LiveInstance| {
        i.status = veza_model::live::InstanceStatus::Stopped;
    };
    // Adopted from Ansible: its own service may still run in it.
    let adopted = |i: &mut veza_model::live::LiveInstance| {
        i.config.remove(veza_model::live::MARK_DEPLOYED);
    };
    type Edit = fn(&mut veza_model::live::LiveInstance);
    let cases: [(&str, Edit); 2] = [("stopped", stopped), ("not deployed by the agent", adopted)];
    for (what, edit) in cases {
        let (_, mut live) = converged(&[&demo_with(with_green_release)]);
        edit(live.instances.get_mut("demo-hello-green").expect("the green slot"));
        let p = run(&manifests(&[&demo_with_newer_green()]), &live, &opts());
        check_snapshot("demo-release-change-rebuilds-the-slot", &p);
        let again = run(&manifests(&[&demo_with_newer_green()]), &applied(&live, &p), &opts());
        assert!(again.steps.is_empty(), "{what}: not converged:\n{again}");
    }
}

#[test]
fn promotion_is_refused_while_a_gating_job_fails() {
    // Prod's backend runs green; the PR asks for blue while the restore drill fails.
    let on_green = PROD.replacen("    active: blue", "    active: green", 1);
    let (_, live) = converged(&[&on_green, STAGING]);
    assert_eq!(live.active_color("prod", "backend"), Some(Color::Green));
    let ms = manifests(&[PROD, STAGING]);
    let mut o = opts();
    o.failing_jobs.insert("prod/dr-drill".into(), "last success 9 days ago (max 8d)".into());
    let p = run(&ms, &live, &o);
    check_snapshot("veza-gated-promotion", &p);
    assert!(p.promotions().is_empty());
}

#[test]
fn prune_deletes_owned_leftovers_but_refuses_protected_data() {
    let (_, mut live) = converged(&[PROD, STAGING]);
    let mut old = live.instances.get("veza-postgres").expect("postgres").clone();
    old.config.insert("user.veza.env".into(), "prod".into());
    live.instances.insert("veza-old-db".into(), old);
    let mut leftover = live.instances.get("veza-web-green").expect("web green").clone();
    leftover.config.insert("user.veza.env".into(), "prod".into());
    live.instances.insert("veza-tools".into(), leftover);
    // This host's leftover profile, and another host's on a shared incusd: not ours to prune.
    for (name, host) in [("veza-legacy", "r720"), ("other-host-app", "r630")] {
        let config = BTreeMap::from([
            ("user.veza.managed".into(), "true".into()),
            ("user.veza.host".into(), host.into()),
        ]);
        live.profiles.insert(name.into(), LiveProfile { config, ..LiveProfile::default() });
    }
    live.units.entry(UnitTarget::Host).or_default().insert(
        "veza-job-prod-old.timer".into(),
        "# Managed by veza-agent; do not edit. veza-agent-owner: prod/old\n".into(),
    );
    let (ms, _) = converged(&[PROD, STAGING]);
    let p = run(&ms, &live, &opts());
    check_snapshot("veza-prune", &p);
}

#[test]
fn foreign_collisions_are_refused_not_overwritten() {
    let mut live = live_with_default_pool();
    live.instances.insert("demo-hello-blue".into(), running_container("demo-hello-blue"));
    let p = run(&manifests(&[DEMO]), &live, &opts());
    check_snapshot("demo-foreign-collision", &p);
    assert!(
        p.steps.iter().all(|s| !s.action.to_string().contains("create instance demo-hello-blue"))
    );
}

#[test]
fn protected_instance_changes_are_snapshotted_first() {
    let (ms, mut live) = converged(&[PROD, STAGING]);
    live.instances.get_mut("veza-postgres").expect("postgres").profiles = vec!["default".into()];
    let p = run(&ms, &live, &opts());
    check_snapshot("veza-protected-change", &p);
    let kinds: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
    assert_eq!(
        kinds[..2],
        [
            "snapshot veza-postgres (keep 5)".to_string(),
            "update instance veza-postgres".to_string()
        ]
    );
}

#[test]
fn plans_are_deterministic() {
    let ms = manifests(&[PROD, STAGING]);
    let live = with_foreign_forgejo(live_with_default_pool());
    let a = serde_json::to_string(&run(&ms, &live, &opts())).expect("json");
    let b = serde_json::to_string(&run(&ms, &live, &opts())).expect("json");
    assert_eq!(a, b);
}

/// Every manifest edit of an existing instance either happens without dropping traffic or
/// data, or is refused with a reason: what Incus cannot change in place (the release of a
/// slot, the image, the type) is a rebuild where nothing depends on the instance, and a
/// refusal where traffic (the serving color) or protected data does.
#[test]
fn edits_incus_cannot_apply_in_place_are_rebuilds_or_refusals() {
    let blue_release = "1111111111111111111111111111111111111111";
    let newer = "3333333333333333333333333333333333333333";
    let new_blue = |t: String| {
        with_green_release(t)
            .replace(&format!("blue: {{release: {blue_release}}}"), &format!("blue: {{release: {newer}}}"))
            .replace(&format!("        {GREEN}: "), &format!("        {newer}: 3333333333333333333333333333333333333333333333333333333333333333\n        {GREEN}: "))
    };
    let new_green = |t: String| {
        with_green_release(t)
            .replace(
                &format!("green: {{release: {GREEN}}}"),
                &format!("green: {{release: {newer}}}"),
            )
            .replace(&format!("        {GREEN}: "), &format!("        {newer}: "))
    };
    let in_place =
        |t: String| t.replace("    active: blue", "    in_place_updates: true\n    active: blue");
    let haproxy_image = |t: String| {
        t.replacen(
            "      image: images:debian/13\n      profiles: [veza-app]",
            "      image: images:debian/14\n      profiles: [veza-app]",
            1,
        )
    };
    let haproxy_vm = |t: String| {
        t.replacen("      image: images:debian/13\n      profiles: [veza-app]", "      image: images:debian/13\n      type: virtual-machine\n      profiles: [veza-app]", 1)
    };
    let postgres_image = |t: String| {
        t.replace(
            "veza-postgres: {image: images:debian/13,",
            "veza-postgres: {image: images:debian/14,",
        )
    };
    let watched_image = |t: String| {
        t.replace(
            "veza-redis:    {image: images:debian/13, profiles: [veza-data], protect: true}",
            "veza-redis:    {image: images:debian/14, profiles: [veza-data], detect_only: true}",
        )
    };
    struct Case {
        what: &'static str,
        before: Vec<String>,
        after: Vec<String>,
        steps: &'static [&'static str],
        refused: &'static [&'static str],
        drift: &'static [&'static str],
    }
    /// The edge's instance rebuilt: its config is installed again in the new one.
    const EDGE_REBUILT: &[&str] =
        &["delete instance veza-haproxy", "create instance veza-haproxy", "update edge config"];
    let demo = |f: &dyn Fn(String) -> String| vec![demo_with(f)];
    let veza = |f: &dyn Fn(String) -> String| vec![f(PROD.to_string()), STAGING.to_string()];
    let watched_before = |t: String| {
        t.replace(
            "veza-redis:    {image: images:debian/13, profiles: [veza-data], protect: true}",
            "veza-redis:    {image: images:debian/13, profiles: [veza-data], detect_only: true}",
        )
    };
    let cases = [
        Case {
            what: "the serving color's release is edited",
            before: demo(&with_green_release),
            after: demo(&new_blue),
            steps: &[],
            refused: &[
                "instance demo-hello-blue: it serves demo/hello traffic and its release changes from 1111111111 to 3333333333: rebuilding it in place would drop requests — deploy the change to the idle green slot and promote it (`active: green`)",
            ],
            drift: &[],
        },
        Case {
            what: "the serving color's release is edited where the app accepts in-place updates",
            before: demo(&with_green_release),
            after: demo(&|t| in_place(new_blue(t))),
            // Redeployed in place: the interruption is the app's restart, not a new
            // container.
            steps: &[
                "deploy release 3333333333 to demo-hello-blue",
                "wait for demo-hello-blue to be healthy",
                "update edge config",
                "verify demo/hello serves blue 3333333333",
            ],
            refused: &[],
            drift: &[],
        },
        Case {
            what: "the serving color's release is edited in place in the commit that promotes the other",
            before: demo(&with_green_release),
            after: demo(&|t| {
                in_place(new_blue(t)).replace("    active: blue", "    active: green")
            }),
            // Blue serves until the switch, and again should green fail: it is gated
            // before traffic moves.
            steps: &[
                "deploy release 3333333333 to demo-hello-blue",
                "wait for demo-hello-blue to be healthy",
                "promote demo/hello: blue -> green (2222222222) through haproxy on host",
            ],
            refused: &[],
            drift: &[],
        },
        Case {
            what: "the app's port is edited (both colors run with the old one)",
            before: demo(&with_green_release),
            after: demo(&|t| with_green_release(t).replace("    port: 8080", "    port: 9090")),
            steps: &[
                "delete instance demo-hello-green",
                "create instance demo-hello-green",
                "deploy release 2222222222 to demo-hello-green",
            ],
            refused: &[
                "instance demo-hello-blue: it serves demo/hello traffic and its app settings (port, start, install_dir, environment or secrets) change: rebuilding it in place would drop requests",
            ],
            drift: &[],
        },
        Case {
            what: "the idle color's release is edited",
            before: demo(&with_green_release),
            after: demo(&new_green),
            // The slot runs: the new release is deployed in place, the container kept.
            // (The edge config names each slot's release.)
            steps: &["deploy release 3333333333 to demo-hello-green", "update edge config"],
            refused: &[],
            drift: &[],
        },
        Case {
            what: "a plain instance's image is edited",
            before: veza(&|t| t),
            after: veza(&haproxy_image),
            steps: EDGE_REBUILT,
            refused: &[],
            drift: &[],
        },
        Case {
            what: "a plain instance's type is edited",
            before: veza(&|t| t),
            after: veza(&haproxy_vm),
            steps: EDGE_REBUILT,
            refused: &[],
            drift: &[],
        },
        Case {
            what: "a protected instance's image is edited",
            before: veza(&|t| t),
            after: veza(&postgres_image),
            steps: &[],
            refused: &[
                "instance veza-postgres: protected data: its image changes from images:debian/13 to images:debian/14, which needs a new instance",
            ],
            drift: &[],
        },
        Case {
            what: "a detect-only instance's image is edited",
            before: veza(&watched_before),
            after: veza(&watched_image),
            steps: &[],
            refused: &[],
            drift: &[
                "instance veza-redis: image changes from images:debian/13 to images:debian/14",
            ],
        },
    ];
    for case in cases {
        let before: Vec<&str> = case.before.iter().map(String::as_str).collect();
        let (_, live) = converged(&before);
        let after: Vec<&str> = case.after.iter().map(String::as_str).collect();
        let p = run(&manifests(&after), &live, &opts());
        // Every step, in order (each named by how its line starts), and every refusal.
        assert_steps_and_refusals(&p, case.what, Some(case.steps), case.refused);
        // And the plan converges: once applied, the same manifests plan nothing more.
        let again = run(&manifests(&after), &applied(&live, &p), &opts());
        assert!(again.steps.is_empty(), "{}: not converged:\n{again}", case.what);
        assert_eq!(again.refusals.len(), p.refusals.len(), "{}", case.what);
        assert_eq!(p.drift.len(), case.drift.len(), "{}: drift {:#?}", case.what, p.drift);
        for (got, want) in p.drift.iter().zip(case.drift) {
            assert!(got.starts_with(want), "{}: drift `{got}`, wanted `{want}`", case.what);
        }
    }
}

/// A serving slot that is stopped serves nothing: an edit of its release rebuilds it
/// (refusing would leave the color the edge names down for good).
#[test]
fn a_stopped_serving_slot_is_rebuilt_not_refused() {
    let (_, mut live) = converged(&[&demo_with(with_green_release)]);
    live.instances.get_mut("demo-hello-blue").expect("blue").status = InstanceStatus::Stopped;
    let newer = "3333333333333333333333333333333333333333";
    let edited = demo_with(|t| {
        with_green_release(t)
            .replace("blue: {release: 1111111111111111111111111111111111111111}", &format!("blue: {{release: {newer}}}"))
            .replace(&format!("        {GREEN}: "), &format!("        {newer}: 3333333333333333333333333333333333333333333333333333333333333333\n        {GREEN}: "))
    });
    let p = run(&manifests(&[&edited]), &live, &opts());
    assert!(p.refusals.is_empty(), "{p}");
    let steps: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
    assert!(steps.iter().any(|s| s == "delete instance demo-hello-blue"), "{p}");
}

/// When an instance no longer has keys of the agent's, the list of them (`user.veza.keys`)
/// is removed too, and the plan converges.
#[test]
fn the_managed_keys_list_goes_when_no_key_is_managed_any_more() {
    let (ms, mut live) = converged(&[PROD, STAGING]);
    let haproxy = live.instances.get_mut("veza-haproxy").expect("veza-haproxy");
    assert!(!haproxy.config.contains_key(crate::live::MARK_KEYS));
    haproxy.config.insert(crate::live::MARK_KEYS.into(), "limits.cpu".into());
    let p = run(&ms, &live, &opts());
    assert!(p.to_string().contains("user.veza.keys"), "{p}");
    let again = run(&ms, &applied(&live, &p), &opts());
    assert!(again.is_empty(), "not converged:\n{again}");
}

fn with_env_and_migration(t: String) -> String {
    t.replace(
        "    active: blue\n",
        "    active: blue\n    env:\n      DATABASE_URL: 'postgres://veza:{secret:db_password}@db/{env}'\n      COLOR: '{color}'\n    migrate: {command: '{dir}/migrate --up'}\n",
    )
}

fn secret_opts(digest: &str) -> PlanOptions {
    let mut o = opts();
    o.secrets.insert(("demo".into(), "db_password".into()), digest.into());
    o
}

#[test]
fn a_plan_names_secrets_by_digest_never_by_value_and_migrates_once() {
    let ms = manifests(&[&demo_with(|t| with_env_and_migration(with_green_release(t)))]);
    let p = run(&ms, &live_with_default_pool(), &secret_opts("aa11"));
    let json = serde_json::to_string(&p).expect("json");
    assert!(
        json.contains(r#""DATABASE_URL":"postgres://veza:{secret:db_password}@db/demo""#),
        "{json}"
    );
    assert!(json.contains(r#""secrets":{"db_password":"aa11"}"#), "{json}");
    let steps: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
    // Each color deploys its own release: one migration each, right before its deploy.
    let migrations: Vec<&String> = steps.iter().filter(|s| s.starts_with("migrate ")).collect();
    let blue = "migrate demo/hello for release 1111111111 in demo-hello-blue";
    let green = "migrate demo/hello for release 2222222222 in demo-hello-green";
    assert_eq!(migrations, [blue, green], "{steps:#?}");
    for (migration, deploy) in [
        (blue, "deploy release 1111111111 to demo-hello-blue"),
        (green, "deploy release 2222222222 to demo-hello-green"),
    ] {
        let m = steps.iter().position(|s| s == migration).expect("migration");
        let d = steps.iter().position(|s| s == deploy).expect("deploy");
        assert_eq!(m + 1, d, "{steps:#?}");
    }
    // A release already migrated in this environment is not migrated again.
    let mut o = secret_opts("aa11");
    o.migrated.insert(("demo".into(), "hello".into(), "1".repeat(40)));
    let again = run(&ms, &live_with_default_pool(), &o);
    let names: Vec<String> = again.steps.iter().map(|s| s.action.to_string()).collect();
    assert!(!names.iter().any(|s| s == blue) && names.iter().any(|s| s == green), "{names:#?}");
}

#[test]
fn two_colors_deploying_one_release_migrate_once_and_a_rebuild_with_the_same_release_never() {
    let same = demo_with(|t| {
        with_env_and_migration(t).replace(
            "      green: {}",
            "      green: {release: 1111111111111111111111111111111111111111}",
        )
    });
    let ms = manifests(&[&same]);
    let p = run(&ms, &live_with_default_pool(), &secret_opts("aa11"));
    let migrations: Vec<String> = p
        .steps
        .iter()
        .map(|s| s.action.to_string())
        .filter(|s| s.starts_with("migrate "))
        .collect();
    assert_eq!(migrations, ["migrate demo/hello for release 1111111111 in demo-hello-blue"]);
    let json = serde_json::to_string(&p).expect("json");
    assert!(
        json.contains(r#""command":"{dir}/migrate --up""#),
        "{{dir}} is set at apply time: {json}"
    );
    // Converged, then the secret rotates: both slots would be rebuilt with the release they
    // run; nothing is migrated, even with no migration on record (a state file lost).
    let after = applied(&live_with_default_pool(), &p);
    let rotated = run(&ms, &after, &secret_opts("bb22"));
    assert!(
        rotated.steps.iter().any(|s| s.action.to_string() == "delete instance demo-hello-green")
    );
    assert!(
        !rotated.steps.iter().any(|s| s.action.to_string().starts_with("migrate ")),
        "{rotated}"
    );
}

#[test]
fn a_rotated_secret_rebuilds_the_idle_color_and_never_the_serving_one() {
    let text = demo_with(|t| with_env_and_migration(with_green_release(t)));
    let ms = manifests(&[&text]);
    let live = live_with_default_pool();
    let after = applied(&live, &run(&ms, &live, &secret_opts("aa11")));
    assert!(run(&ms, &after, &secret_opts("aa11")).is_empty(), "converged");
    let mut rotated = secret_opts("bb22");
    rotated.migrated.insert(("demo".into(), "hello".into(), "1".repeat(40)));
    rotated.migrated.insert(("demo".into(), "hello".into(), GREEN.into()));
    let p = run(&ms, &after, &rotated);
    let steps: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
    assert!(steps.contains(&"delete instance demo-hello-green".to_string()), "{steps:#?}");
    assert!(
        !steps.iter().any(|s| s.contains("demo-hello-blue")),
        "serving blue untouched: {steps:#?}"
    );
    assert!(
        !steps.iter().any(|s| s.starts_with("migrate ")),
        "the release was migrated before: {steps:#?}"
    );
    let refusal =
        p.refusals.iter().find(|r| r.resource == "instance demo-hello-blue").expect("refused");
    assert!(refusal.reason.contains("environment or secrets"), "{}", refusal.reason);
    // The promotion that moves traffic to the rebuilt green is a normal, gated one.
    let promoted = manifests(&[&text.replace("    active: blue", "    active: green")]);
    let p = run(&promoted, &after, &rotated);
    assert_eq!(p.promotions().len(), 1, "{p}");
    let switch = p.switch().expect("a promotion step");
    assert_eq!(switch.gates.len(), 1, "{p}");
    assert_eq!(switch.gates[0].instance, "demo-hello-green", "{p}");
}

#[test]
fn a_migration_in_a_tools_instance_runs_there() {
    let text = demo_with(|t| {
        with_env_and_migration(t)
            .replace(
                "migrate: {command: '{dir}/migrate --up'}",
                "migrate: {command: '{dir}/migrate --up', on: tools}",
            )
            .replace(
                "edge:\n",
                "incus:\n  instances:\n    tools: {image: veza-test-busybox}\n\nedge:\n",
            )
    });
    let p = run(&manifests(&[&text]), &live_with_default_pool(), &secret_opts("aa11"));
    let steps: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
    let create = steps.iter().position(|s| s.starts_with("create instance tools")).expect("tools");
    let migrate = steps
        .iter()
        .position(|s| s == "migrate demo/hello for release 1111111111 in tools")
        .expect("migration in tools");
    assert!(create < migrate, "{steps:#?}");
}

#[test]
fn a_local_nic_equal_to_the_profiles_is_kept_not_unplugged() {
    let ms = manifests(&[PROD, STAGING]);
    let live = with_foreign_forgejo(live_with_default_pool());
    let after = applied(&live, &run(&ms, &live, &opts()));
    let nic = |network: &str| -> BTreeMap<String, String> {
        [("type", "nic"), ("network", network), ("name", "eth0")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // (the local eth0 `incus launch --network` left on veza-postgres, whether the plan
    //  updates the instance)
    let table = [(nic("net-veza"), false), (nic("incusbr0"), true)];
    for (local, updates) in table {
        let mut l = after.clone();
        let pg = l.instances.get_mut("veza-postgres").expect("created by the first sync");
        pg.devices.insert("eth0".into(), local.clone());
        let p = run(&ms, &l, &opts());
        let update = p.steps.iter().any(
            |s| matches!(&s.action, Action::UpdateInstance { name, .. } if name == "veza-postgres"),
        );
        assert_eq!(update, updates, "{local:?}:\n{p}");
        if updates {
            let kept = p.steps.iter().find_map(|s| match &s.action {
                Action::UpdateInstance { devices, .. } => Some(devices.contains_key("eth0")),
                _ => None,
            });
            assert_eq!(kept, Some(false), "a NIC unlike the profile's goes: {p}");
        }
    }
}

#[test]
fn the_host_image_mapping_decides_what_incus_is_asked_for_and_the_mark_keeps_the_reference() {
    let ms = manifests(&[PROD]);
    let live = with_foreign_forgejo(live_with_default_pool());
    let mut o = opts();
    o.images.insert("images:debian/13".into(), "veza-test-debian12".into());
    let p = run(&ms, &live, &o);
    let created: Vec<(&str, &str)> = p
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateInstance { image, config, .. } => {
                Some((image.as_str(), config["user.veza.image"].as_str()))
            }
            _ => None,
        })
        .collect();
    assert!(!created.is_empty());
    for (image, mark) in created {
        assert_eq!((image, mark), ("veza-test-debian12", "images:debian/13"));
    }
    // Mapped or not, the instances it made are what the manifests ask: nothing to do next.
    let after = applied(&live, &p);
    assert!(run(&ms, &after, &o).is_empty(), "{}", run(&ms, &after, &o));
}

#[test]
fn replacing_an_edge_config_the_agent_did_not_write_shows_the_diff_once() {
    let ms = manifests(&[DEMO]);
    let mut live = live_with_default_pool();
    let ansible = "# Managed by Ansible: do not edit.\nglobal\n    daemon\nfrontend veza_edge\n    bind *:80\n";
    live.edge = LiveEdge::from_config(ansible.to_string());
    let p = run(&ms, &live, &opts());
    let diff = p.edge_takeover.as_deref().expect("a takeover diff");
    assert!(diff.starts_with("--- haproxy.cfg (live, not written by veza-agent)\n"), "{diff}");
    assert!(diff.contains("\n-# Managed by Ansible: do not edit.\n"), "{diff}");
    assert!(
        diff.contains("\n+# The shared HAProxy edge of this host, rendered by veza-agent"),
        "{diff}"
    );
    assert!(p.to_string().contains("edge takeover: the live haproxy.cfg was not written"), "{p}");
    // Once the agent's config is live, a later edge change is an ordinary update.
    let mut after = applied(&live, &p);
    let edited = after.edge.config.clone().expect("installed") + "# edited by hand\n";
    after.edge = LiveEdge::from_config(edited);
    let again = run(&ms, &after, &opts());
    assert!(again.steps.iter().any(|s| matches!(s.action, Action::InstallEdge { .. })), "{again}");
    assert_eq!(again.edge_takeover, None);
}

/// The host converged on prod and staging, its edge then under Ansible's config, whose
/// backend for prod's backend app serves from `colors`.
fn under_ansible(colors: &[&str]) -> LiveState {
    let ms = manifests(&[PROD, STAGING]);
    let live = with_foreign_forgejo(live_with_default_pool());
    let mut adopted = applied(&live, &run(&ms, &live, &opts()));
    let servers: String = colors
        .iter()
        .map(|c| format!("    server backend-{c} veza-backend-{c}.lxd:8080 check\n"))
        .collect();
    adopted.edge =
        LiveEdge::from_config(format!("# Managed by Ansible\nbackend prod_backend_api\n{servers}"));
    adopted
}

/// A takeover that moves an app off the color the config it replaces serves from is a
/// move of traffic like any other: held while the app's gating jobs fail (the takeover
/// keeps it where it is), done once they pass.
#[test]
fn a_takeover_moving_an_app_waits_for_its_gating_jobs() {
    let ms = manifests(&[PROD, STAGING]);
    // Ansible's config serves prod's backend from green; the manifests say blue.
    let adopted = under_ansible(&["green"]);
    let key = ("prod".to_string(), "backend".to_string());
    let failing = PlanOptions {
        failing_jobs: [("prod/dr-drill".to_string(), "failed".to_string())].into(),
        ..opts()
    };
    // (options, the backend's color in the installed config, refused)
    for (o, routed, refused) in [(opts(), Color::Blue, false), (failing, Color::Green, true)] {
        let p = run(&ms, &adopted, &o);
        let switch = p.switch().unwrap_or_else(|| panic!("the takeover is a promotion\n{p}"));
        let config = LiveEdge::from_config(switch.config.clone());
        assert_eq!(config.active.get(&key), Some(&routed), "{p}");
        let said = p.refusals.iter().any(|r| {
            r.resource == "promotion prod/backend"
                && r.reason.starts_with("gated on jobs that are failing or stale (dr-drill: failed); traffic stays on green")
        });
        assert_eq!(said, refused, "{p}");
    }
}

/// Under a config the agent did not write that balances an app to both colors, both
/// slots serve: neither is rebuilt in place (Ansible's HAProxy still sends it requests).
#[test]
fn both_slots_serving_under_a_foreign_config_are_kept() {
    let adopted = under_ansible(&["blue", "green"]);
    let blue = "0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7";
    let green = "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80";
    let edited = PROD.replace(
        &format!("      green: {{release: {green}}}"),
        &format!("      green: {{release: {blue}}}"),
    );
    assert_ne!(edited, PROD);
    let p = run(&manifests(&[&edited, STAGING]), &adopted, &opts());
    assert!(
        p.refusals.iter().any(|r| r.resource == "instance veza-backend-green"
            && r.reason.starts_with("it serves prod/backend traffic")),
        "{p}"
    );
    assert!(!p.to_string().contains("delete instance veza-backend-green"), "{p}");
}

#[test]
fn a_slot_serving_under_a_config_the_agent_did_not_write_is_not_rebuilt_in_place() {
    // Before the takeover: Ansible's config serves prod's backend from blue.
    let adopted = under_ansible(&["blue"]);
    let blue = "0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7";
    let other = "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80";
    let edited = PROD.replace(
        &format!("      blue:  {{release: {blue}}}"),
        &format!("      blue:  {{release: {other}}}"),
    );
    assert_ne!(edited, PROD);
    let p = run(&manifests(&[&edited, STAGING]), &adopted, &opts());
    assert!(
        p.refusals.iter().any(|r| r.resource == "instance veza-backend-blue"
            && r.reason.starts_with("it serves prod/backend traffic")),
        "{p}"
    );
    assert!(!p.to_string().contains("delete instance veza-backend-blue"), "{p}");
    // The takeover gates and checks the kept slot against the release it runs.
    let switch = p.switch().unwrap_or_else(|| panic!("the takeover is a promotion:\n{p}"));
    let gate = switch.gates.iter().find(|g| g.instance == "veza-backend-blue").expect("gated");
    assert_eq!(gate.slot.release.as_str(), blue, "{p}");
    let check = switch.checks.iter().find(|c| c.env == "prod" && c.app == "backend");
    assert_eq!(check.map(|c| c.release.as_str()), Some(blue), "{p}");
}

/// A job whose timer was last seen not active has its units installed again (which
/// enables and starts the timer), though their files are as they should be; the others
/// at its target are left alone.
#[test]
fn a_job_whose_timer_was_seen_not_active_is_installed_again() {
    let (ms, live) = converged(&[PROD, STAGING]);
    assert!(run(&ms, &live, &opts()).is_empty(), "converged");
    let o = PlanOptions { unscheduled_jobs: ["prod/pgbackrest-diff".to_string()].into(), ..opts() };
    let p = run(&ms, &live, &o);
    assert_eq!(p.steps.len(), 1, "{p}");
    let Action::InstallUnits { target, timers, .. } = &p.steps[0].action else { panic!("{p}") };
    assert_eq!(target.as_on(), "veza-postgres", "{p}");
    assert_eq!(timers, &["veza-job-prod-pgbackrest-diff.timer".to_string()], "{p}");
    assert_eq!(
        p.steps[0].reason, "timers were seen not active: veza-job-prod-pgbackrest-diff",
        "{p}"
    );
}

/// Job units go only into an instance the agent owns that runs, or that the plan creates
/// or starts: a job on someone else's instance (before adoption: its owner's timers would
/// run every backup a second time) or on one that stays stopped is refused, not planned
/// (an install there writes secrets into a foreign container, or fails every sync).
#[test]
fn job_units_go_only_into_running_instances_the_agent_owns() {
    use crate::live::{LiveMember, MARK_MANAGED};
    type Edit = fn(String) -> String;
    type LiveEdit = fn(&mut LiveState);
    struct Case {
        what: &'static str,
        /// The prod manifest converged on, then the one planned.
        before: Edit,
        after: Edit,
        live: LiveEdit,
        /// Where units are installed (`host` or the instance).
        installs: &'static [&'static str],
        steps: &'static [&'static str],
        refused: &'static [&'static str],
    }
    const FOREIGN: &str =
        "instance veza-postgres: an instance with this name exists without the agent's mark";
    const JOBS_FOREIGN: [&str; 2] = [
        "job prod/pgbackrest-diff: its instance `veza-postgres` is not the agent's (no user.veza.managed mark): no units, secrets or timers are written into it — adopt it first (`veza-agent adopt`, which also retires the instance's own timers that duplicate a job); its units are installed then",
        "job prod/pgbackrest-full: its instance `veza-postgres` is not the agent's",
    ];
    fn same(t: String) -> String {
        t
    }
    fn watched(t: String) -> String {
        t.replace(
            "veza-postgres: {image: images:debian/13, profiles: [veza-data], protect: true, snapshots_keep: 5}",
            "veza-postgres: {image: images:debian/13, profiles: [veza-data], detect_only: true}",
        )
    }
    fn tools_job(t: String) -> String {
        t + "  tools-cleanup:\n    schedule: \"0 3 * * *\"\n    on: veza-backend-tools\n    command: /usr/local/bin/cleanup\n"
    }
    fn tools_job_new_image(t: String) -> String {
        tools_job(t).replace(
            "veza-backend-tools: {image: images:debian/13,",
            "veza-backend-tools: {image: images:debian/14,",
        )
    }
    /// What the observer sees of an instance it may not list units in: no units.
    fn unlisted(l: &mut LiveState, name: &str) {
        l.units.remove(&UnitTarget::Instance(name.into()));
    }
    fn foreign(l: &mut LiveState) {
        unlisted(l, "veza-postgres");
        let pg = l.instances.get_mut("veza-postgres").expect("postgres");
        pg.config.retain(|k, _| !k.starts_with("user.veza."));
    }
    fn stopped(l: &mut LiveState, name: &str) {
        unlisted(l, name);
        l.instances.get_mut(name).expect("instance").status = InstanceStatus::Stopped;
    }
    let cases = [
        Case {
            what: "postgres is someone else's (not adopted yet)",
            before: same,
            after: same,
            live: foreign,
            installs: &[],
            steps: &[],
            refused: &[FOREIGN, JOBS_FOREIGN[0], JOBS_FOREIGN[1]],
        },
        Case {
            what: "postgres is someone else's and stopped",
            before: same,
            after: same,
            live: |l| {
                foreign(l);
                stopped(l, "veza-postgres");
            },
            installs: &[],
            steps: &[],
            refused: &[FOREIGN, JOBS_FOREIGN[0], JOBS_FOREIGN[1]],
        },
        Case {
            what: "postgres is the agent's and stopped: started, then its units installed",
            before: same,
            after: same,
            live: |l| stopped(l, "veza-postgres"),
            installs: &["veza-postgres"],
            steps: &["start instance veza-postgres", "install units on instance `veza-postgres`"],
            refused: &[],
        },
        Case {
            what: "postgres is the agent's, detect-only and stopped: the agent does not start it",
            before: watched,
            after: watched,
            live: |l| stopped(l, "veza-postgres"),
            installs: &[],
            steps: &[],
            refused: &[
                "job prod/pgbackrest-diff: its instance `veza-postgres` is stopped and this plan does not start it: its units are installed once it runs (start it)",
                "job prod/pgbackrest-full: its instance `veza-postgres` is stopped and this plan does not start it",
            ],
        },
        Case {
            what: "postgres is the agent's and running, its units gone: installed again",
            before: same,
            after: same,
            live: |l| unlisted(l, "veza-postgres"),
            installs: &["veza-postgres"],
            steps: &["install units on instance `veza-postgres`"],
            refused: &[],
        },
        Case {
            what: "a new host: every instance created by the plan gets its units",
            before: same,
            after: same,
            live: |l| *l = with_foreign_forgejo(live_with_default_pool()),
            installs: &["host", "veza-postgres", "veza-staging-postgres"],
            steps: &[],
            refused: &[],
        },
        Case {
            what: "a stopped instance recreated for a new image gets its units",
            before: tools_job,
            after: tools_job_new_image,
            live: |l| stopped(l, "veza-backend-tools"),
            installs: &["veza-backend-tools"],
            steps: &[
                "delete instance veza-backend-tools",
                "create instance veza-backend-tools",
                "install units on instance `veza-backend-tools`",
            ],
            refused: &[],
        },
        Case {
            what: "postgres on an offline cluster member (listed without its marks): placement says why",
            before: same,
            after: same,
            live: |l| {
                l.members = [("a", "Online"), ("b", "Offline")]
                    .map(|(n, s)| {
                        let m = LiveMember {
                            name: n.into(),
                            status: s.into(),
                            ..LiveMember::default()
                        };
                        (n.to_string(), m)
                    })
                    .into();
                for i in l.instances.values_mut() {
                    i.location = Some("a".into());
                }
                foreign(l);
                let pg = l.instances.get_mut("veza-postgres").expect("postgres");
                pg.location = Some("b".into());
                pg.status = InstanceStatus::Error;
            },
            installs: &[],
            steps: &[],
            refused: &[
                "instance veza-postgres: it is on member `b`, which is offline: not changed until it is back (skipped: install units on instance `veza-postgres`",
            ],
        },
    ];
    for case in cases {
        let (_, mut live) = converged(&[&(case.before)(PROD.to_string()), STAGING]);
        assert!(live.instances["veza-postgres"].config.contains_key(MARK_MANAGED));
        (case.live)(&mut live);
        let ms = manifests(&[&(case.after)(PROD.to_string()), STAGING]);
        let p = run(&ms, &live, &opts());
        let mut installs: Vec<String> = p
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                Action::InstallUnits { target: UnitTarget::Host, .. } => Some("host".to_string()),
                Action::InstallUnits { target: UnitTarget::Instance(name), .. } => {
                    Some(name.clone())
                }
                _ => None,
            })
            .collect();
        installs.sort();
        assert_eq!(installs, case.installs, "{}: installs\n{p}", case.what);
        let steps = (!case.steps.is_empty()).then_some(case.steps);
        assert_steps_and_refusals(&p, case.what, steps, case.refused);
    }
}

/// One switch that moves an app to its other color and gives another app its first
/// traffic: the fallback is the config live before it, for both (a config rendered from
/// the manifests would keep the new app routed to a slot whose check failed).
#[test]
fn a_switch_with_an_apps_first_traffic_falls_back_to_the_config_before_it() {
    let (_, live) = converged(&[&demo_with(with_green_release)]);
    let hello = &DEMO[DEMO.find("  hello:\n").expect("hello")..DEMO.find("\nedge:").expect("edge")];
    let api = hello
        .replace("  hello:", "  api:")
        .replace("blue: 18101, green: 18102", "blue: 18103, green: 18104");
    let both = demo_with(|t| {
        with_green_release(t)
            .replace("    active: blue", "    active: green")
            .replace("\nedge:", &format!("{api}\nedge:"))
            .replace(
                "    - {app: hello}",
                "    - {path_prefix: /api, app: api}\n    - {app: hello}",
            )
    });
    let p = run(&manifests(&[&both]), &live, &opts());
    let switch = p.switch().unwrap_or_else(|| panic!("a promotion\n{p}"));
    let moves: Vec<(&str, Option<Color>)> =
        switch.promotions.iter().map(|m| (m.app.as_str(), m.from)).collect();
    assert_eq!(moves, [("api", None), ("hello", Some(Color::Blue))], "{p}");
    assert_eq!(switch.fallback, None, "the config live before, read at the switch\n{p}");

    // Hello's switch to green owed (a killed run): the live config is that unchecked
    // switch, so the fallback is rendered with hello on blue.
    let greened =
        demo_with(|t| with_green_release(t).replace("    active: blue", "    active: green"));
    let (_, switched) = converged(&[&greened]);
    let key = ("demo".to_string(), "hello".to_string());
    let owed = PlanOptions { unchecked: [(key.clone(), Color::Blue)].into(), ..opts() };
    let p = run(&manifests(&[&both]), &switched, &owed);
    let switch = p.switch().unwrap_or_else(|| panic!("a promotion\n{p}"));
    let back = LiveEdge::from_config(switch.fallback.clone().expect("a rendered fallback"));
    assert_eq!(back.active.get(&key), Some(&Color::Blue), "{p}");
}

/// A commit that moves traffic off a color and empties that color at once: the promotion
/// falls back to the config live before its switch (it routes to the old slot, deleted
/// only after the checks passed; a kill owes it, as a first traffic's), and a promotion held by its gating jobs leaves the edge
/// as it is (no config can route to an emptied color), both said, never a failed render.
#[test]
fn moving_traffic_off_a_color_and_emptying_it_in_one_commit() {
    let (_, live) = converged(&[&demo_with(with_green_release)]);
    let blue = "      blue: {release: 1111111111111111111111111111111111111111}";
    let flipped = |t: String| {
        with_green_release(t)
            .replace("    active: blue", "    active: green")
            .replace(blue, "      blue: {}")
    };
    let ms = manifests(&[&demo_with(flipped)]);
    let p = run(&ms, &live, &opts());
    let switch = p.switch().unwrap_or_else(|| panic!("a promotion\n{p}"));
    assert_eq!(switch.fallback, None, "the config live before, read at the switch\n{p}");
    assert!(p.to_string().contains("on a failed check: the config live before back"), "{p}");
    let steps: Vec<String> = p.steps.iter().map(|s| s.action.to_string()).collect();
    assert!(steps[0].starts_with("promote demo/hello: blue -> green"), "{p}");
    assert_eq!(steps[1], "delete instance demo-hello-blue", "after the checks passed\n{p}");

    let gated = |t: String| {
        let jobs = "\njobs:\n  backup: {schedule: \"@daily\", on: host, command: /bin/true}\n";
        flipped(t).replace("    active: green", "    active: green\n    gate_on_jobs: [backup]")
            + jobs
    };
    let ms = manifests(&[&demo_with(gated)]);
    let failing = PlanOptions {
        failing_jobs: [("demo/backup".to_string(), "failed".to_string())].into(),
        ..opts()
    };
    let p = run(&ms, &live, &failing);
    assert!(p.switch().is_none(), "{p}");
    let refused: Vec<String> =
        p.refusals.iter().map(|r| format!("{}: {}", r.resource, r.reason)).collect();
    assert!(refused.iter().any(|r| r.starts_with("promotion demo/hello: gated on jobs")), "{p}");
    assert!(refused.iter().any(|r| r.starts_with("edge: not updated: demo/hello")), "{p}");
    // Blue still serves: not deleted while its promotion is held.
    assert!(!p.to_string().contains("delete instance demo-hello-blue"), "{p}");
    assert!(
        refused.iter().any(|r| r.starts_with("instance demo-hello-blue: it serves demo/hello")),
        "{p}"
    );
}
