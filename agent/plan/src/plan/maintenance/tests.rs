//! Which steps are disruptive (a table over hand-built plans and live states), and what
//! the planner's plans look like once held for a window (through the real planner, with
//! snapshots in `agent/plan/snapshots/`; `UPDATE_SNAPSHOTS=1` rewrites them).

use std::collections::BTreeMap;

use veza_model::Manifest;
use veza_model::manifest::Color;

use super::*;
use crate::desired::SlotSpec;
use crate::live::UnitTarget;
use crate::live::{
    InstanceStatus, LiveInstance, LivePool, LiveProfile, MARK_APP, MARK_ENV, MARK_PROTECT,
};
use crate::plan::{PlanOptions, plan};
use crate::testing::{check_snapshot, manifests};

// ------------------------------------------------------------------- classification

fn dev(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn proxy(port: u16) -> BTreeMap<String, String> {
    dev(&[
        ("type", "proxy"),
        ("listen", &format!("tcp:127.0.0.1:{port}")),
        ("connect", "tcp:127.0.0.1:80"),
    ])
}

fn instance(name: &str, running: bool, marks: &[(&str, &str)], profiles: &[&str]) -> LiveInstance {
    let mut config = dev(&[("user.veza.managed", "true"), (MARK_ENV, "prod")]);
    config.extend(dev(marks));
    LiveInstance {
        name: name.into(),
        status: if running { InstanceStatus::Running } else { InstanceStatus::Stopped },
        config,
        devices: [("http".to_string(), proxy(8080))].into_iter().collect(),
        profiles: profiles.iter().map(|p| p.to_string()).collect(),
        ..LiveInstance::default()
    }
}

/// A host with a running plain instance (`tools`), a stopped one (`cold`), protected data
/// (`db`), the serving (`web-blue`) and the idle (`web-green`) slot of an app, and the
/// profiles they use: `shared` (tools), `slots` (both slots), `idle` (only the idle
/// slot), `parked` (only the stopped instance).
fn host() -> LiveState {
    let slot = |color: &'static str| [(MARK_APP, "web"), (MARK_COLOR, color)];
    let mut live = LiveState::default();
    for i in [
        instance("tools", true, &[], &["default", "shared"]),
        instance("cold", false, &[], &["parked"]),
        instance("db", true, &[(MARK_PROTECT, "true")], &["default"]),
        instance("web-blue", true, &slot("blue"), &["slots"]),
        instance("web-green", true, &slot("green"), &["slots", "idle"]),
    ] {
        live.instances.insert(i.name.clone(), i);
    }
    for p in ["shared", "slots", "idle", "parked"] {
        let profile = LiveProfile {
            name: p.into(),
            config: dev(&[("limits.cpu", "2")]),
            devices: [(
                "disk".to_string(),
                dev(&[("type", "disk"), ("path", "/srv"), ("source", "/a")]),
            )]
            .into_iter()
            .collect(),
            ..LiveProfile::default()
        };
        live.profiles.insert(p.into(), profile);
    }
    live.edge.active.insert(("prod".into(), "web".into()), Color::Blue);
    live
}

fn slot_spec(color: Color) -> SlotSpec {
    crate::fixtures::slot("prod", "web", color, '1')
}

/// An update of `name` to these devices and profiles, config unchanged.
fn update(live: &LiveState, name: &str, devices: Devices, profiles: &[&str]) -> Action {
    let l = &live.instances[name];
    Action::UpdateInstance {
        name: name.into(),
        profiles: profiles.iter().map(|p| p.to_string()).collect(),
        config: l.config.clone(),
        remove_keys: Vec::new(),
        devices,
    }
}

/// An update of profile `name` to these config keys and devices.
fn update_profile(name: &str, config: &[(&str, &str)], devices: Devices) -> Action {
    Action::UpdateProfile {
        name: name.into(),
        description: String::new(),
        config: dev(config),
        devices,
    }
}

fn devices(list: &[(&str, BTreeMap<String, String>)]) -> Devices {
    list.iter().map(|(n, d)| (n.to_string(), d.clone())).collect()
}

#[test]
fn what_interrupts_something_running_is_disruptive_and_nothing_else() {
    use Disruption::*;
    let live = host();
    let same = devices(&[("http", proxy(8080))]);
    let moved = devices(&[("http", proxy(9090))]);
    let added = devices(&[("http", proxy(8080)), ("extra", proxy(9091))]);
    let srv = devices(&[("disk", dev(&[("type", "disk"), ("path", "/srv"), ("source", "/a")]))]);
    let srv_moved =
        devices(&[("disk", dev(&[("type", "disk"), ("path", "/srv"), ("source", "/b")]))]);
    let srv_added = {
        let mut d = srv.clone();
        d.insert("logs".into(), dev(&[("type", "disk"), ("path", "/logs"), ("source", "/l")]));
        d
    };
    let profile_change = |running: &[&str]| {
        Some(ChangesProfileDevices(running.iter().map(|s| s.to_string()).collect()))
    };
    /// (what, the plan's actions, the verdict of each)
    type Case<'a> = (&'a str, Vec<Action>, Vec<Option<Disruption>>);
    let table: Vec<Case> = vec![
        (
            "a plain instance deleted",
            vec![Action::DeleteInstance { name: "tools".into() }],
            vec![Some(DeletesInstance)],
        ),
        (
            "a stopped plain instance deleted",
            vec![Action::DeleteInstance { name: "cold".into() }],
            vec![Some(DeletesInstance)],
        ),
        ("a slot deleted", vec![Action::DeleteInstance { name: "web-green".into() }], vec![None]),
        (
            "an instance unknown to the host",
            vec![Action::DeleteInstance { name: "ghost".into() }],
            vec![None],
        ),
        (
            "a recreate: delete then create",
            vec![
                Action::DeleteInstance { name: "tools".into() },
                Action::CreateInstance {
                    name: "tools".into(),
                    image: "img2".into(),
                    kind: crate::live::InstanceKind::Container,
                    profiles: vec!["default".into()],
                    config: BTreeMap::new(),
                    devices: same.clone(),
                    target: None,
                },
            ],
            vec![Some(DeletesInstance), None],
        ),
        (
            "protected data: snapshot, then the update",
            vec![
                Action::Snapshot { instance: "db".into(), keep: 3 },
                update(&live, "db", same.clone(), &["default"]),
            ],
            vec![Some(ChangesProtectedData), Some(ChangesProtectedData)],
        ),
        (
            "protected data, marks only (no snapshot)",
            vec![update(&live, "db", same.clone(), &["default"])],
            vec![None],
        ),
        (
            "config only",
            vec![update(&live, "tools", same.clone(), &["default", "shared"])],
            vec![None],
        ),
        (
            "a device added",
            vec![update(&live, "tools", added.clone(), &["default", "shared"])],
            vec![None],
        ),
        (
            "a device changed",
            vec![update(&live, "tools", moved.clone(), &["default", "shared"])],
            vec![Some(ChangesDevices)],
        ),
        (
            "a device removed",
            vec![update(&live, "tools", Devices::new(), &["default", "shared"])],
            vec![Some(ChangesDevices)],
        ),
        (
            "the profile list changed",
            vec![update(&live, "tools", same.clone(), &["default"])],
            vec![Some(ChangesDevices)],
        ),
        (
            "a device of a stopped instance changed",
            vec![update(&live, "cold", moved.clone(), &["parked"])],
            vec![None],
        ),
        (
            "a device of the serving slot changed",
            vec![update(&live, "web-blue", moved.clone(), &["slots"])],
            vec![None],
        ),
        (
            "profile config only",
            vec![update_profile("shared", &[("limits.cpu", "4")], srv.clone())],
            vec![None],
        ),
        (
            "profile device added",
            vec![update_profile("shared", &[("limits.cpu", "2")], srv_added.clone())],
            vec![None],
        ),
        (
            "profile device changed, a running plain instance uses it",
            vec![update_profile("shared", &[("limits.cpu", "2")], srv_moved.clone())],
            vec![profile_change(&["tools"])],
        ),
        (
            "profile device removed, both slots use it",
            vec![update_profile("slots", &[("limits.cpu", "2")], Devices::new())],
            vec![profile_change(&["web-blue"])],
        ),
        (
            "profile device changed, only the idle slot uses it",
            vec![update_profile("idle", &[("limits.cpu", "2")], srv_moved.clone())],
            vec![None],
        ),
        (
            "profile device changed, only a stopped instance uses it",
            vec![update_profile("parked", &[], Devices::new())],
            vec![None],
        ),
        (
            "everything else",
            vec![
                Action::CreateNetwork { name: "n".into(), config: BTreeMap::new() },
                Action::CreateProfile {
                    name: "p".into(),
                    description: String::new(),
                    config: BTreeMap::new(),
                    devices: Devices::new(),
                },
                Action::StartInstance { name: "cold".into() },
                Action::DeployRelease {
                    instance: "web-green".into(),
                    slot: slot_spec(Color::Green),
                    files: crate::slot::slot_files(&slot_spec(Color::Green)),
                },
                Action::Migrate {
                    instance: "tools".into(),
                    slot: slot_spec(Color::Green),
                    files: crate::slot::MigrationFiles {
                        scratch: "/s".into(),
                        release_dir: "/s/r".into(),
                        env_file: "/s/env".into(),
                        script: "true".into(),
                    },
                },
                Action::HealthGate(gate()),
                Action::InstallEdge { runs_in: "host".into(), config: "c".into() },
                Action::Promote(crate::plan::Switch {
                    promotions: Vec::new(),
                    gates: vec![gate()],
                    runs_in: "host".into(),
                    config: "c".into(),
                    checks: Vec::new(),
                    fallback: None,
                }),
                Action::InstallUnits {
                    target: UnitTarget::Instance("tools".into()),
                    files: Vec::new(),
                    timers: Vec::new(),
                    environments: Vec::new(),
                },
                Action::RemoveUnits { target: UnitTarget::Host, names: vec!["x.timer".into()] },
                Action::DeleteProfile { name: "parked".into() },
            ],
            vec![None; 11],
        ),
    ];
    for (what, actions, want) in table {
        let p = plan_of(actions);
        assert_eq!(classify(&p, &live), want, "{what}");
    }
}

fn gate() -> crate::plan::Gate {
    crate::plan::Gate {
        instance: "web-green".into(),
        slot: slot_spec(Color::Green),
        serving: false,
    }
}

fn plan_of(actions: Vec<Action>) -> Plan {
    Plan {
        edge_takeover: None,
        cluster: Vec::new(),
        steps: actions.into_iter().map(|action| Step { action, reason: "test".into() }).collect(),
        refusals: Vec::new(),
        drift: Vec::new(),
        waiting: Vec::new(),
    }
}

// ------------------------------------------------------------ held plans, end to end

const R1: &str = "1111111111111111111111111111111111111111";
const R2: &str = "2222222222222222222222222222222222222222";
const SHA: &str = "3333333333333333333333333333333333333333333333333333333333333333";

/// 2026-01-03 12:00 UTC (a Saturday): the nightly window (02:00 for 2 h) is closed.
const NOON: i64 = 1_767_441_600;
/// 2026-01-03 03:00 UTC: inside the nightly window.
const THREE_AM: i64 = 1_767_409_200;

/// prod (with a nightly window unless `windows` is empty): protected data `db`, a tools
/// instance the app's migration runs in, an app `web` on the host's edge, jobs on both
/// instances. `edit` changes the text.
fn prod(windows: &str, edit: impl Fn(String) -> String) -> String {
    edit(format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: prod, host: h1}}\n{windows}\
         incus:\n  profiles:\n    data: {{config: {{limits.cpu: \"2\"}}, devices: {{root: {{type: disk, path: /, pool: auto}}}}}}\n\
         \x20 instances:\n    db: {{image: img, profiles: [data], protect: true}}\n    tools: {{image: img, profiles: [default]}}\n\
         apps:\n  web:\n    image: img\n    profiles: [default]\n    port: 8080\n\
         \x20   artifact: {{url: \"https://x/{{release}}.tgz\", sha256: {{{R1}: {SHA}, {R2}: {SHA}}}}}\n\
         \x20   health: {{path: /health}}\n\
         \x20   migrate: {{command: \"{{dir}}/migrate\", on: tools}}\n\
         \x20   slots: {{blue: {{release: {R1}}}, green: {{}}}}\n    active: blue\n\
         edge: {{runs_in: host, hosts: [a.fr], routes: [{{app: web}}], sticky_cookie: C1}}\n\
         jobs:\n  backup: {{schedule: \"@daily\", on: db, command: /bin/true}}\n  sweep: {{schedule: \"@daily\", on: tools, command: /bin/true}}\n"
    ))
}

const NIGHTLY: &str = "maintenance:\n  windows:\n    - {start: \"0 2 * * *\", duration: 2h}\n";

/// A second environment without windows, with an instance of its own.
fn staging(edit: impl Fn(String) -> String) -> String {
    edit(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {name: staging, host: h1}\n\
         incus:\n  instances:\n    scratch: {image: img, profiles: [default]}\n"
            .to_string(),
    )
}

fn planned(ms: &[Manifest], live: &LiveState) -> Plan {
    let refs: Vec<&Manifest> = ms.iter().collect();
    plan(&refs, live, &PlanOptions::default()).unwrap_or_else(|e| panic!("planning failed: {e}"))
}

/// The host after the first sync of `texts`.
fn converged(texts: &[String]) -> LiveState {
    let mut live = LiveState::default();
    live.pools.insert(
        "default".into(),
        LivePool { name: "default".into(), status: "Created".into(), ..LivePool::default() },
    );
    let first = planned(&manifests(texts), &live);
    crate::simulate::applied(&live, &first).unwrap_or_else(|e| panic!("{e}"))
}

fn held(texts: &[String], live: &LiveState, now: i64, utc_offset_s: i32) -> Plan {
    let ms = manifests(texts);
    let refs: Vec<&Manifest> = ms.iter().collect();
    hold(planned(&ms, live), live, &refs, WindowClock { now, utc_offset_s })
}

fn actions(steps: impl IntoIterator<Item = impl std::borrow::Borrow<Step>>) -> Vec<String> {
    steps.into_iter().map(|s| s.borrow().action.to_string()).collect()
}

fn waiting(p: &Plan) -> Vec<String> {
    actions(p.waiting.iter().map(|w| &w.step))
}

/// A change of protected data and a deploy into the idle slot in one commit: outside the
/// window the snapshot and its update wait, the deploy proceeds; in the window, or
/// without windows, nothing waits; the plan is the same as the planner's, minus the
/// held steps, in the same order.
#[test]
fn protected_data_waits_for_the_window_while_a_slot_deploy_proceeds() {
    let edit = |t: String| {
        t.replace("protect: true}", "protect: true, config: {limits.memory: 2GiB}}")
            .replace("green: {}", &format!("green: {{release: {R2}}}"))
    };
    let live = converged(&[prod(NIGHTLY, |t| t)]);
    let texts = [prod(NIGHTLY, edit)];
    let p = held(&texts, &live, NOON, 0);
    check_snapshot("windows-protected-data-waits", &p);
    assert_eq!(waiting(&p), ["snapshot db (keep 3)", "update instance db"]);
    assert!(p.waiting.iter().all(|w| w.env == "prod"), "{p}");
    assert!(
        p.waiting.iter().all(|w| w.next_open.as_deref() == Some("2026-01-04T02:00:00+00:00")),
        "{p}"
    );
    assert_eq!(p.waiting[0].next_open_unix, Some(NOON + 14 * 3600));
    let all = planned(&manifests(&texts), &live);
    let not_held: Vec<&Step> =
        all.steps.iter().filter(|s| !waiting(&p).contains(&s.action.to_string())).collect();
    assert_eq!(actions(&p.steps), actions(not_held), "the rest, in order");
    assert!(
        actions(&p.steps).contains(&"create instance prod-web-green from img".to_string()),
        "{p}"
    );
    // One hour east of UTC, the same instant is 13:00 local: the window opens at 02:00
    // local, 01:00 UTC, shown with the offset.
    let east = held(&texts, &live, NOON, 3600);
    assert_eq!(east.waiting[0].next_open.as_deref(), Some("2026-01-04T02:00:00+01:00"));
    assert_eq!(east.waiting[0].next_open_unix, Some(NOON + 13 * 3600));
    // In the window, or with no window declared: nothing waits.
    for p in [held(&texts, &live, THREE_AM, 0), held(&[prod("", edit)], &live, NOON, 0)] {
        assert!(p.waiting.is_empty(), "{p}");
        assert_eq!(p, planned(&manifests(&texts), &live));
    }
}

/// prod's green slot deployed with release 1.
fn green_on_r1(t: String) -> String {
    t.replace("green: {}", &format!("green: {{release: {R1}}}"))
}

/// From [`green_on_r1`]: the tools instance (the migration's) recreated from a new image,
/// and green on release 2 promoted.
fn tools_recreated_and_green_promoted(t: String) -> String {
    green_on_r1(t)
        .replace("tools: {image: img,", "tools: {image: img2,")
        .replace(&format!("green: {{release: {R1}}}"), &format!("green: {{release: {R2}}}"))
        .replace("active: blue", "active: green")
}

/// A recreate of the instance the migration runs in, in the same commit as a promotion:
/// the recreate waits with everything that goes into the instance (its job units, the
/// migration), the deploy of the migrated release, its health gate and the edge switch;
/// the promotion and its fallback edge leave the plan. The idle slot, whose new release
/// is deployed in place, keeps running its old one meanwhile. Another environment
/// without windows is not held.
#[test]
fn a_held_recreate_holds_what_depends_on_it_and_the_promotion_waits() {
    let live = converged(&[prod(NIGHTLY, green_on_r1), staging(|t| t)]);
    let texts = [
        prod(NIGHTLY, tools_recreated_and_green_promoted),
        staging(|t| t.replace("image: img,", "image: img2,")),
    ];
    let all = planned(&manifests(&texts), &live);
    assert_eq!(all.promotions().len(), 1, "{all}");
    let p = held(&texts, &live, NOON, 0);
    check_snapshot("windows-recreate-holds-dependants", &p);
    assert!(p.promotions().is_empty(), "{p}");
    assert!(!p.steps.iter().any(|s| is_edge(&s.action)), "the edge waits too:\n{p}");
    let waits = waiting(&p);
    for step in [
        "delete instance tools",
        "create instance tools from img2",
        "install units on instance `tools`: veza-job-prod-sweep.service, veza-job-prod-sweep.timer",
        "deploy release 2222222222 to prod-web-green",
        "promote prod/web: blue -> green (2222222222) through haproxy on host",
    ] {
        assert!(waits.iter().any(|w| w == step), "`{step}` does not wait:\n{p}");
    }
    assert!(waits.iter().any(|w| w.starts_with("migrate prod/web")), "{p}");
    // Every dependant names what it waits for; the recreate itself says why it waits.
    let because: BTreeMap<String, &str> =
        p.waiting.iter().map(|w| (w.step.action.to_string(), w.because.as_str())).collect();
    for (step, why) in [
        ("delete instance tools", "it deletes a plain instance"),
        ("create instance tools from img2", "it goes with `delete instance tools`, which waits"),
        ("deploy release 2222222222 to prod-web-green", "the migration of its release waits"),
        (
            "promote prod/web: blue -> green (2222222222) through haproxy on host",
            "it goes with `deploy release 2222222222 to prod-web-green`, which waits",
        ),
    ] {
        assert_eq!(because.get(step).copied(), Some(why), "{step}:\n{p}");
    }
    // What does not depend on the recreate proceeds, staging's recreate included.
    for step in ["delete instance scratch", "create instance scratch from img2"] {
        assert!(actions(&p.steps).iter().any(|s| s == step), "`{step}` was held:\n{p}");
    }
    // Inside the window the whole plan runs, promotion included.
    assert_eq!(held(&texts, &live, THREE_AM, 0), all);
}

/// A held promotion whose commit also empties the color traffic leaves: that slot still
/// serves, so its deletion waits with the promotion.
#[test]
fn a_serving_slot_emptied_with_a_held_promotion_waits_with_it() {
    let live = converged(&[prod(NIGHTLY, green_on_r1), staging(|t| t)]);
    let edit = |t: String| {
        tools_recreated_and_green_promoted(t)
            .replace(&format!("blue: {{release: {R1}}}"), "blue: {}")
    };
    let texts = [prod(NIGHTLY, edit), staging(|t| t)];
    let all = planned(&manifests(&texts), &live);
    assert!(actions(&all.steps).iter().any(|s| s == "delete instance prod-web-blue"), "{all}");
    let p = held(&texts, &live, NOON, 0);
    assert!(p.promotions().is_empty(), "{p}");
    let because: BTreeMap<String, &str> =
        p.waiting.iter().map(|w| (w.step.action.to_string(), w.because.as_str())).collect();
    let why = because.get("delete instance prod-web-blue").copied().unwrap_or_default();
    assert!(why.starts_with("traffic leaves it with `promote prod/web: blue -> green"), "{p}");
}

/// The edge runs in a plain instance whose recreate waits: a promotion through it waits
/// as a whole (gates, switch, checks); an edge update waits, and so does its
/// verification (it would check an update that did not happen).
#[test]
fn an_edge_in_an_instance_whose_recreate_waits_holds_the_promotion_or_the_update_and_its_check() {
    let base = |t: String| {
        t.replace("green: {}", &format!("green: {{release: {R1}}}"))
            .replace("    migrate: {command: \"{dir}/migrate\", on: tools}\n", "")
            .replace("runs_in: host", "runs_in: tools")
    };
    let live = converged(&[prod(NIGHTLY, base)]);
    let edit = |t: String| {
        base(t)
            .replace("tools: {image: img,", "tools: {image: img2,")
            .replace("active: blue", "active: green")
    };
    let texts = [prod(NIGHTLY, edit)];
    let all = planned(&manifests(&texts), &live);
    assert_eq!(all.promotions().len(), 1, "{all}");
    let p = held(&texts, &live, NOON, 0);
    assert!(p.promotions().is_empty() && p.steps.is_empty(), "{p}");
    let because: BTreeMap<String, &str> =
        p.waiting.iter().map(|w| (w.step.action.to_string(), w.because.as_str())).collect();
    assert_eq!(
        because
            .get("promote prod/web: blue -> green (1111111111) through haproxy on tools")
            .copied(),
        Some("it goes with `delete instance tools`, which waits"),
        "{p}"
    );
    // An edge update and its check (a plan as the planner makes one when the config
    // changes without moving traffic).
    let ms = manifests(&[prod(NIGHTLY, base)]);
    let refs: Vec<&Manifest> = ms.iter().collect();
    let check = crate::plan::EdgeCheck {
        env: "prod".into(),
        app: "web".into(),
        color: Color::Blue,
        release: gate().slot.release,
        host: "a.fr".into(),
        path: "/".into(),
        listen: "0.0.0.0:80".into(),
        tls: false,
    };
    let update = plan_of(vec![
        Action::DeleteInstance { name: "tools".into() },
        Action::InstallEdge { runs_in: "tools".into(), config: "c".into() },
        Action::VerifyEdge(check),
        Action::InstallUnits {
            target: UnitTarget::Host,
            files: Vec::new(),
            timers: Vec::new(),
            environments: Vec::new(),
        },
    ]);
    let p = hold(update, &live, &refs, WindowClock { now: NOON, utc_offset_s: 0 });
    let because: Vec<(String, &str)> =
        p.waiting.iter().map(|w| (w.step.action.to_string(), w.because.as_str())).collect();
    assert_eq!(
        because,
        [
            ("delete instance tools".to_string(), "it deletes a plain instance"),
            (
                "update edge config (haproxy on tools)".to_string(),
                "it goes with `delete instance tools`, which waits"
            ),
            (
                "verify prod/web serves blue 1111111111 through the edge (Host: a.fr)".to_string(),
                "it goes with `update edge config (haproxy on tools)`, which waits"
            ),
        ]
    );
    assert_eq!(actions(&p.steps), ["install units on host: "], "{p}");
}

/// A profile device edit waits while a plain instance using it runs; a config-only edit
/// of the same profile does not.
#[test]
fn a_profile_device_edit_waits_but_a_profile_config_edit_does_not() {
    let live = converged(&[prod(NIGHTLY, |t| t)]);
    let cpu = prod(NIGHTLY, |t| t.replace("limits.cpu: \"2\"", "limits.cpu: \"4\""));
    let p = held(&[cpu], &live, NOON, 0);
    assert!(p.waiting.is_empty(), "{p}");
    assert_eq!(actions(&p.steps), ["update profile data"]);
    let disk = prod(NIGHTLY, |t| {
        t.replace("path: /, pool: auto", "path: /, pool: auto, options: {size: 5GiB}")
    });
    let p = held(&[disk], &live, NOON, 0);
    assert_eq!(waiting(&p), ["update profile data"], "{p}");
    assert_eq!(
        p.waiting[0].because,
        "a device of the profile is changed or removed while db run(s) with it"
    );
}

#[test]
fn a_waiting_step_reads_as_text_with_its_local_opening_time() {
    let w = Waiting {
        env: "prod".into(),
        step: Step { action: Action::DeleteInstance { name: "tools".into() }, reason: "r".into() },
        because: "it deletes a plain instance".into(),
        next_open: Some("2026-01-04T02:00:00+01:00".into()),
        next_open_unix: Some(NOON),
    };
    assert_eq!(
        w.to_string(),
        "waiting for window: delete instance tools (next opens at 2026-01-04T02:00:00+01:00)\n     \
         because it deletes a plain instance (prod is outside its maintenance windows)\n"
    );
    let p = Plan { waiting: vec![w], ..plan_of(Vec::new()) };
    assert!(p.to_string().starts_with("nothing to apply now\nwaiting for window: "), "{p}");
    let json = serde_json::to_value(&p).expect("serializes");
    assert_eq!(json["waiting"][0]["step"]["action"], "delete-instance", "{json}");
    assert_eq!(json["waiting"][0]["next_open"], "2026-01-04T02:00:00+01:00", "{json}");
    assert!(
        serde_json::to_value(plan_of(Vec::new())).expect("serializes").get("waiting").is_none()
    );
}
