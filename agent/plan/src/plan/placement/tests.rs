//! Placement, as a table: a cluster's members and where the instances live in, the plan
//! out. Every case's plan, as printed, is in `snapshots/cluster-placement.txt` (the
//! contract); the rules that must hold whatever the case are asserted on each.

use std::collections::BTreeMap;

use veza_model::Manifest;

use crate::live::{InstanceStatus, LiveMember, LivePool, LiveState};
use crate::plan::{Action, Plan, PlanOptions, plan};
use crate::testing::{check_text, manifests};

const R1: &str = "1111111111111111111111111111111111111111";
const R2: &str = "2222222222222222222222222222222222222222";

/// An app with both colors, an edge in an instance, a protected database.
fn manifest(edit: impl Fn(String) -> String) -> Vec<Manifest> {
    let text = format!(
        r#"apiVersion: veza-agent/v1
kind: Environment
metadata: {{name: demo, host: r720}}
incus:
  instances:
    edge: {{image: img, profiles: [default]}}
    db: {{image: img, profiles: [default], protect: true}}
apps:
  web:
    image: img
    profiles: [default]
    port: 8080
    artifact:
      url: "https://example.com/{{release}}.tar.gz"
      sha256:
        {R1}: {d}
        {R2}: {d}
    health: {{path: /health}}
    slots:
      blue: {{release: {R1}}}
      green: {{release: {R2}}}
    active: blue
edge:
  runs_in: edge
  hosts: [demo.example]
  routes:
    - {{app: web}}
"#,
        d = "a".repeat(64)
    );
    manifests(&[edit(text)])
}

fn run(ms: &[Manifest], live: &LiveState) -> Plan {
    let refs: Vec<&Manifest> = ms.iter().collect();
    plan(&refs, live, &PlanOptions::default()).unwrap_or_else(|e| panic!("planning failed: {e}"))
}

/// Members `veza-cl-1..=n`, those in `offline` not online.
fn cluster(n: u8, offline: &[u8]) -> BTreeMap<String, LiveMember> {
    (1..=n)
        .map(|i| {
            let name = format!("veza-cl-{i}");
            let down = offline.contains(&i);
            let m = LiveMember {
                name: name.clone(),
                status: if down { "Offline" } else { "Online" }.to_string(),
                message: if down { "No heartbeat for 30s".to_string() } else { String::new() },
            };
            (name, m)
        })
        .collect()
}

fn empty(members: BTreeMap<String, LiveMember>) -> LiveState {
    let pool = LivePool { name: "default".into(), status: "Created".into(), ..Default::default() };
    LiveState {
        pools: BTreeMap::from([("default".to_string(), pool)]),
        members,
        ..Default::default()
    }
}

/// What applying the first plan on `members` leaves: every instance where it was placed.
fn converged(ms: &[Manifest], members: BTreeMap<String, LiveMember>) -> LiveState {
    let live = empty(members);
    crate::simulate::applied(&live, &run(ms, &live)).unwrap_or_else(|e| panic!("{e}"))
}

/// `live` with member `n` down: its instances in `Error` with no config, devices or
/// profiles, as Incus lists them.
fn member_down(mut live: LiveState, n: u8) -> LiveState {
    let name = format!("veza-cl-{n}");
    if let Some(m) = live.members.get_mut(&name) {
        m.status = "Offline".into();
        m.message = "No heartbeat for 30s".into();
    }
    for i in live.instances.values_mut() {
        if i.location.as_deref() == Some(name.as_str()) {
            i.status = InstanceStatus::Error;
            i.config.clear();
            i.devices.clear();
            i.expanded_devices.clear();
            i.profiles.clear();
        }
    }
    live
}

fn located(mut live: LiveState, name: &str, member: &str) -> LiveState {
    if let Some(i) = live.instances.get_mut(name) {
        i.location = Some(member.to_string());
    }
    live
}

fn with_target(instance: &str, member: &str) -> impl Fn(String) -> String {
    let (instance, member) = (instance.to_string(), member.to_string());
    move |t| match instance.as_str() {
        "blue" | "green" => t.replace(
            &format!("      {instance}: {{release: "),
            &format!("      {instance}: {{target: {member}, release: "),
        ),
        _ => t.replace(
            &format!("    {instance}: {{image: img,"),
            &format!("    {instance}: {{target: {member}, image: img,"),
        ),
    }
}

fn same(t: String) -> String {
    t
}

#[test]
fn placement_on_a_cluster() {
    let ms = manifest(same);
    let three = converged(&ms, cluster(3, &[]));
    let cases: Vec<(&str, Vec<Manifest>, LiveState)> = vec![
        ("first sync, three members online", ms.clone(), empty(cluster(3, &[]))),
        (
            "first sync, `target:` on the database and the green slot",
            manifest(|t| with_target("green", "veza-cl-1")(with_target("db", "veza-cl-3")(t))),
            empty(cluster(3, &[])),
        ),
        (
            "first sync, the green slot's `target:` is offline, the database's is not a member",
            manifest(|t| with_target("green", "veza-cl-2")(with_target("db", "veza-cl-9")(t))),
            empty(cluster(3, &[2])),
        ),
        (
            "first sync, one member online: both colors there, said",
            ms.clone(),
            empty(cluster(3, &[2, 3])),
        ),
        ("converged: nothing to do, nothing to say", ms.clone(), three.clone()),
        (
            "the serving blue slot's member dies",
            ms.clone(),
            member_down(three.clone(), member_of(&three, "demo-web-blue")),
        ),
        (
            "the serving blue slot's member stays down: green is promoted",
            manifest(|t| t.replace("active: blue", "active: green")),
            member_down(three.clone(), member_of(&three, "demo-web-blue")),
        ),
        (
            "the edge's member dies during a promotion to green",
            manifest(|t| t.replace("active: blue", "active: green")),
            member_down(three.clone(), member_of(&three, "edge")),
        ),
        (
            "the idle green slot is rebuilt for a new image: never next to blue",
            manifest(|t| {
                t.replace(
                    "    image: img\n    profiles: [default]\n    port",
                    "    image: img2\n    profiles: [default]\n    port",
                )
            }),
            three.clone(),
        ),
        (
            "both colors live on one member, the database away from its `target:`",
            manifest(with_target("db", "veza-cl-1")),
            located(
                located(
                    three.clone(),
                    "demo-web-green",
                    &format!("veza-cl-{}", member_of(&three, "demo-web-blue")),
                ),
                "db",
                "veza-cl-2",
            ),
        ),
        (
            "a single host: `target:` ignored, said",
            manifest(with_target("db", "r720-2")),
            empty(BTreeMap::new()),
        ),
    ];
    let mut out = String::new();
    for (what, ms, live) in &cases {
        let p = run(ms, live);
        check_rules(what, &p, live);
        out.push_str(&format!("## {what}\n{p}\n"));
    }
    check_text("cluster-placement", &out);
}

fn member_of(live: &LiveState, name: &str) -> u8 {
    let at = live.instances[name]
        .location
        .as_deref()
        .unwrap_or_else(|| panic!("{name} has no location"));
    at.trim_start_matches("veza-cl-").parse().unwrap_or_else(|e| panic!("{at}: {e}"))
}

/// What holds whatever the case: a creation goes only to an online member (and on a
/// cluster always to one), no step touches an instance on an offline member, and the two
/// colors of an app created on a cluster with two members online are apart.
fn check_rules(what: &str, p: &Plan, live: &LiveState) {
    let online = |m: &str| live.members.get(m).is_some_and(LiveMember::is_online);
    let mut created: BTreeMap<String, String> = BTreeMap::new();
    for s in &p.steps {
        if let Action::CreateInstance { name, target, .. } = &s.action {
            match (target, live.members.is_empty()) {
                (None, true) => {}
                (Some(m), false) => {
                    assert!(online(m), "{what}: {name} created on {m}, not online");
                    created.insert(name.clone(), m.clone());
                }
                (t, _) => panic!("{what}: {name} created with target {t:?}"),
            }
        }
        for i in s.action.instances() {
            let at = live.instances.get(i).and_then(|l| l.location.as_deref());
            assert!(at.is_none_or(online), "{what}: `{}` touches {i} on offline {at:?}", s.action);
        }
    }
    let colors = ["demo-web-blue", "demo-web-green"].map(|n| {
        created.get(n).cloned().or_else(|| live.instances.get(n).and_then(|l| l.location.clone()))
    });
    let two_online = live.members.values().filter(|m| m.is_online()).count() >= 2;
    let placed_here = ["demo-web-blue", "demo-web-green"].iter().any(|n| created.contains_key(*n));
    if let ([Some(a), Some(b)], true, true) = (&colors, two_online, placed_here) {
        assert_ne!(a, b, "{what}: both colors on {a}");
    }
}
