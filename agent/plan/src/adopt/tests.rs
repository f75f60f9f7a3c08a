//! Adoption over data: the shipped prod + staging manifests against a host shaped as the
//! seed's Ansible pipeline leaves it (every instance and profile unmarked, the edge's
//! config Ansible's, pgbackrest and drill timers Ansible's), then one change per row.

use std::collections::BTreeMap;

use veza_model::Manifest;
use veza_model::manifest::Color;

use super::image::{ImageFamily, image_family};
use super::timers::{normalise_command, same_command};
use super::{AdoptState, Adoption, Facts, ProbeAnswer, assess, needs};
use crate::desired::{SecretDigests, desired};
use crate::live::{
    Config, InstanceKind, InstanceStatus, LiveEdge, LiveInstance, LiveNetwork, LivePool,
    LiveProfile, LiveState, MARK_APP_SPEC, MARK_ENV, MARK_IMAGE, MARK_MANAGED, MARK_PROTECT,
    MARK_RELEASE, UnitTarget,
};
use crate::plan::{Action, PlanOptions, plan};

const PROD: &str = include_str!("../../../../manifests/prod.yaml");
const STAGING: &str = include_str!("../../../../manifests/staging.yaml");

fn manifests() -> Vec<Manifest> {
    let files = vec![
        ("prod.yaml".to_string(), PROD.as_bytes().to_vec()),
        ("staging.yaml".to_string(), STAGING.as_bytes().to_vec()),
    ];
    match veza_model::load(&files) {
        Ok(parsed) => parsed.into_iter().map(|(_, p)| p.manifest).collect(),
        Err(e) => panic!("shipped manifests are invalid: {e:#?}"),
    }
}

/// The live state and the gathered facts.
#[derive(Clone)]
struct World {
    live: LiveState,
    facts: Facts,
    images: BTreeMap<String, String>,
}

/// Server lines of the Ansible-shaped edge: which slots serve (prod: backend blue,
/// stream blue, web green; staging: backend green, stream blue, web blue).
const SERVING: [(&str, &str, &str); 6] = [
    ("prod_backend_api", "veza-backend-blue", "8080"),
    ("prod_stream_pool", "veza-stream-blue", "8082"),
    ("prod_web_pool", "veza-web-green", "8081"),
    ("staging_backend_api", "veza-staging-backend-green", "8080"),
    ("staging_stream_pool", "veza-staging-stream-blue", "8082"),
    ("staging_web_pool", "veza-staging-web-blue", "8081"),
];

fn ansible_edge(extra: &str) -> String {
    let mut cfg = String::from(
        "global\n    master-worker\n\ndefaults\n    mode http\n\nfrontend fe\n    bind *:80\n    acl host_prod hdr(host) -i veza.fr www.veza.fr\n    acl host_staging hdr(host) -i staging.veza.fr\n    use_backend prod_web_pool if host_prod\n    default_backend default_503\n",
    );
    for (backend, instance, port) in SERVING {
        let env = backend.split('_').next().unwrap_or_default();
        cfg.push_str(&format!(
            "\nbackend {backend}\n    cookie VEZA_SERVERID_{env} insert indirect nocache\n    server {instance} {instance}.lxd:{port} check cookie {instance}\n"
        ));
    }
    cfg.push_str(extra);
    cfg.push_str("\nbackend forgejo_backend\n    server forgejo 10.0.20.105:3000 check\n\nbackend talas_vitrine_backend\n    http-request return status 503\n\nbackend default_503\n    http-request return status 503\n");
    cfg
}

/// The live edge: Ansible's config with `from` replaced by `to`.
fn live_edge_edited(w: &mut World, from: &str, to: &str) {
    w.live.edge = LiveEdge::from_config(ansible_edge("").replace(from, to));
}

fn unit(text: &str) -> String {
    text.to_string()
}

fn ansible_world() -> World {
    let ms = manifests();
    let refs: Vec<&Manifest> = ms.iter().collect();
    let want = desired(&refs, "default", &SecretDigests::new()).expect("desired");
    let mut live = LiveState::default();
    live.pools.insert(
        "default".into(),
        LivePool { name: "default".into(), status: "Created".into(), ..LivePool::default() },
    );
    live.networks.insert(
        "net-veza".into(),
        LiveNetwork {
            name: "net-veza".into(),
            kind: "bridge".into(),
            managed: true,
            ..LiveNetwork::default()
        },
    );
    for (name, p) in &want.profiles {
        let config = p
            .config
            .iter()
            .filter(|(k, _)| !k.starts_with("user.veza."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        live.profiles.insert(
            name.clone(),
            LiveProfile {
                name: name.clone(),
                description: p.description.clone(),
                config,
                devices: p.devices.clone(),
                used_by: Vec::new(),
            },
        );
    }
    let mut facts = Facts::default();
    for (name, d) in &want.instances {
        let foreign = crate::fixtures::foreign_instance(name, "Debian", "trixie", &d.profiles);
        live.instances.insert(name.clone(), LiveInstance { devices: d.devices.clone(), ..foreign });
        if let Some(slot) = &d.slot {
            facts.probes.insert(
                name.clone(),
                Ok(ProbeAnswer { status: 200, release: Some(slot.release.to_string()) }),
            );
        } else {
            facts.snapshots.insert(name.clone(), 0);
        }
    }
    live.edge = LiveEdge::from_config(ansible_edge(""));
    let pg = BTreeMap::from([
        (
            "pgbackrest-full.timer".to_string(),
            unit(
                "[Timer]\nOnCalendar=Sun 02:00\nRandomizedDelaySec=600\n[Install]\nWantedBy=timers.target\n",
            ),
        ),
        (
            "pgbackrest-full.service".to_string(),
            unit(
                "[Service]\nType=oneshot\nUser=postgres\nExecStart=/usr/bin/pgbackrest --stanza=veza --type=full backup\n",
            ),
        ),
        ("pgbackrest-diff.timer".to_string(), unit("[Timer]\nOnCalendar=Mon..Sat 02:00\n")),
        (
            "pgbackrest-diff.service".to_string(),
            unit(
                "[Service]\nUser=postgres\nExecStart=/usr/bin/pgbackrest  --stanza=veza --type=diff   backup\n",
            ),
        ),
        ("postgres-vacuum.timer".to_string(), unit("[Timer]\nOnCalendar=daily\n")),
        (
            "postgres-vacuum.service".to_string(),
            unit("[Service]\nExecStart=/usr/bin/vacuumdb --all\n"),
        ),
    ]);
    facts.foreign_units.insert(UnitTarget::Instance("veza-postgres".into()), pg);
    let host = BTreeMap::from([
        (
            "veza-dr-drill.timer".to_string(),
            unit("[Timer]\nUnit=dr-drill.service\nOnCalendar=Sun 04:00\n"),
        ),
        (
            "dr-drill.service".to_string(),
            unit("[Service]\nExecStart=/bin/sh -c '/usr/local/bin/dr-drill.sh'\n"),
        ),
    ]);
    facts.foreign_units.insert(UnitTarget::Host, host);
    facts.local_images.insert("unused".into(), Config::new());
    World { live, facts, images: BTreeMap::new() }
}

fn run(w: &World) -> Adoption {
    let ms = manifests();
    let refs: Vec<&Manifest> = ms.iter().collect();
    assess(&refs, &w.live, &w.facts, &SecretDigests::new(), &w.images)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn state_of(a: &Adoption, name: &str) -> AdoptState {
    a.instances
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.state)
        .or_else(|| a.profiles.iter().find(|p| p.name == name).map(|p| p.state))
        .unwrap_or_else(|| panic!("{name} is not in the report:\n{a}"))
}

fn lines_of(a: &Adoption, name: &str) -> Vec<String> {
    let i = a.instances.iter().find(|i| i.name == name);
    let p = a.profiles.iter().find(|p| p.name == name);
    match (i, p) {
        (Some(i), _) => i.differences.iter().chain(&i.notes).cloned().collect(),
        (_, Some(p)) => p.differences.iter().chain(&p.notes).cloned().collect(),
        _ => Vec::new(),
    }
}

fn inst<'a>(w: &'a mut World, name: &str) -> &'a mut LiveInstance {
    w.live.instances.get_mut(name).unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn an_ansible_built_host_is_adopted_whole_and_the_first_plan_rebuilds_nothing() {
    let w = ansible_world();
    let a = run(&w);
    assert!(!a.blocked(), "{a}");
    assert!(a.pending());
    assert_eq!(a.count(AdoptState::Adopt), a.instances.len() + a.profiles.len(), "{a}");
    assert_eq!(a.instances.len(), 19, "every plain instance and every slot with a release: {a}");
    for act in &a.active {
        assert!(act.agrees, "{act:?}");
    }
    let live: BTreeMap<(&str, &str), &str> =
        a.active.iter().map(|x| ((x.env.as_str(), x.app.as_str()), x.live.as_str())).collect();
    assert_eq!(live[&("prod", "web")], "green");
    assert_eq!(live[&("staging", "backend")], "green");
    let timers: Vec<(&str, &str, &str)> =
        a.timers.iter().map(|t| (t.target.as_str(), t.unit.as_str(), t.job.as_str())).collect();
    assert_eq!(
        timers,
        [
            ("host", "veza-dr-drill.timer", "prod/dr-drill"),
            ("veza-postgres", "pgbackrest-diff.timer", "prod/pgbackrest-diff"),
            ("veza-postgres", "pgbackrest-full.timer", "prod/pgbackrest-full"),
        ]
    );
    // The marks the planner would set.
    let pg = a.instances.iter().find(|i| i.name == "veza-postgres").expect("postgres");
    let want: Vec<(&str, &str)> = vec![
        (MARK_ENV, "prod"),
        (MARK_IMAGE, "images:debian/13"),
        (MARK_MANAGED, "true"),
        (MARK_PROTECT, "true"),
    ];
    let got: Vec<(&str, &str)> = pg.marks.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(got, want);
    let blue = a.instances.iter().find(|i| i.name == "veza-backend-blue").expect("slot");
    assert_eq!(
        blue.marks.get(MARK_RELEASE).map(String::as_str),
        Some("0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7")
    );
    assert!(blue.marks.contains_key(MARK_APP_SPEC), "{blue:?}");
    assert!(blue.notes.iter().any(|n| n.contains("taken as the declared ones")), "{blue:?}");

    // After the marks, the planner sees its own instances: nothing is created, rebuilt,
    // redeployed or snapshotted, and nothing is refused.
    let touched = first_plan_steps(&a, &w.live, touches);
    assert!(
        touched.is_empty(),
        "the first apply after adoption must not touch adopted instances: {touched:#?}"
    );
    // And adopting what is owned changes nothing.
    let again =
        run(&World { live: a.marked(&w.live), facts: Facts::default(), images: BTreeMap::new() });
    assert_eq!(
        again.count(AdoptState::Owned),
        again.instances.len() + again.profiles.len(),
        "{again}"
    );
    assert!(!again.pending() && !again.blocked(), "{again}");
}

/// Profiles holding only the root disk and a NIC on each instance (`incus launch --profile P
/// --network net-veza`, as the seed's pipeline did): adopted, since the NIC only moves
/// into the profile; the first apply updates profiles and instances in place.
#[test]
fn a_nic_that_moves_from_the_instances_into_their_profile_is_no_conflict() {
    let mut w = ansible_world();
    let nic: Config = [("type", "nic"), ("network", "net-veza"), ("name", "eth0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for p in w.live.profiles.values_mut() {
        p.devices.remove("eth0");
        p.config.clear();
    }
    for i in w.live.instances.values_mut() {
        i.devices.insert("eth0".into(), nic.clone());
    }
    let a = run(&w);
    assert!(!a.blocked(), "{a}");
    assert_eq!(a.count(AdoptState::Adopt), a.instances.len() + a.profiles.len(), "{a}");
    let pg = lines_of(&a, "veza-postgres");
    assert!(pg.contains(&"the first apply sets its own devices eth0 as the manifests declare them: what it runs with stays the same".to_string()), "{pg:#?}");
    let app = lines_of(&a, "veza-app");
    assert!(app.contains(&"the first apply sets its devices eth0".to_string()), "{app:#?}");
    assert!(app.contains(&"the first apply sets limits.cpu: 4".to_string()), "{app:#?}");
    let replaced = first_plan_steps(&a, &w.live, replaces);
    assert!(replaced.is_empty(), "{replaced:#?}");
}

/// The steps of the first plan after `a`'s marks are set on `live` that `pick` picks
/// out, as printed; that plan refuses nothing.
fn first_plan_steps(a: &Adoption, live: &LiveState, pick: fn(&Action) -> bool) -> Vec<String> {
    let ms = manifests();
    let refs: Vec<&Manifest> = ms.iter().collect();
    let after = plan(&refs, &a.marked(live), &PlanOptions::default()).expect("plan");
    assert!(after.refusals.is_empty(), "{after}");
    after.steps.iter().filter(|s| pick(&s.action)).map(|s| s.action.to_string()).collect()
}

/// Creates, deletes or redeploys an instance.
fn replaces(action: &Action) -> bool {
    matches!(
        action,
        Action::CreateInstance { .. }
            | Action::DeleteInstance { .. }
            | Action::DeployRelease { .. }
    )
}

/// Changes an instance or a profile in any way.
fn touches(action: &Action) -> bool {
    replaces(action)
        || matches!(
            action,
            Action::Snapshot { .. }
                | Action::UpdateInstance { .. }
                | Action::UpdateProfile { .. }
                | Action::Migrate { .. }
        )
}

/// One change to the Ansible-built host, and what adoption says of it.
struct Row {
    case: &'static str,
    change: fn(&mut World),
    /// The resources in conflict, the first one saying `says` (none: a refusal says it).
    conflict: &'static [&'static str],
    /// Text expected among that resource's differences, or among the refusals.
    says: &'static str,
}

#[test]
fn each_conflict_kind_is_reported_with_its_difference() {
    let rows = [
        Row {
            case: "image family",
            change: |w| {
                inst(w, "veza-redis").config.insert("image.release".into(), "bookworm".into());
            },
            conflict: &["veza-redis"],
            says: "image: the instance was made from debian 12 (image.os/image.release), the manifest names `images:debian/13` (debian 13)",
        },
        Row {
            case: "image family through the host's mapping",
            change: |w| {
                w.images.insert("images:debian/13".into(), "veza-debian12".into());
                w.facts.local_images.insert(
                    "veza-debian12".into(),
                    Config::from([
                        ("os".into(), "debian".into()),
                        ("release".into(), "bookworm".into()),
                    ]),
                );
                for (_, i) in
                    w.live.instances.iter_mut().filter(|(n, _)| n.as_str() != "veza-postgres")
                {
                    i.config.insert("image.release".into(), "bookworm".into());
                }
            },
            conflict: &["veza-postgres"],
            says: "image: the instance was made from debian 13 (image.os/image.release), the manifest names `images:debian/13` (mapped to `veza-debian12`) (debian 12)",
        },
        Row {
            case: "no image family recorded",
            change: |w| {
                inst(w, "veza-staging-redis").config.remove("image.os");
            },
            conflict: &["veza-staging-redis"],
            says: "image: the instance records no image family",
        },
        Row {
            case: "profiles",
            change: |w| inst(w, "veza-minio").profiles = vec!["default".into(), "veza-data".into()],
            conflict: &["veza-minio"],
            says: "profiles: live [default, veza-data], manifest [veza-data]",
        },
        Row {
            case: "instance device",
            change: |w| {
                let d = inst(w, "veza-haproxy").devices.get_mut("https").expect("https");
                d.insert("listen".into(), "tcp:0.0.0.0:8443".into());
            },
            conflict: &["veza-haproxy"],
            says: "device `https`: the instance runs with {connect=tcp:127.0.0.1:443, listen=tcp:0.0.0.0:8443, type=proxy}, the manifests give it {connect=tcp:127.0.0.1:443, listen=tcp:0.0.0.0:443, type=proxy}",
        },
        Row {
            case: "a local device that changes what the instance runs with",
            change: |w| {
                let nic = [("type", "nic"), ("network", "incusbr0"), ("name", "eth0")];
                let nic = nic.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                inst(w, "veza-web-green").devices.insert("eth0".into(), nic);
            },
            conflict: &["veza-web-green"],
            says: "device `eth0`: the instance runs with {name=eth0, network=incusbr0, type=nic}, the manifests give it {name=eth0, network=net-veza, type=nic}",
        },
        Row {
            case: "a profile device its instances run with (`pool: auto` resolved as the planner does)",
            change: |w| {
                let p = w.live.profiles.get_mut("veza-data").expect("profile");
                p.devices.get_mut("root").expect("root").insert("pool".into(), "slow".into());
            },
            conflict: &[
                "veza-minio",
                "veza-postgres",
                "veza-rabbitmq",
                "veza-redis",
                "veza-staging-minio",
                "veza-staging-postgres",
                "veza-staging-rabbitmq",
                "veza-staging-redis",
            ],
            says: "device `root`: the instance runs with {path=/, pool=slow, type=disk}, the manifests give it {path=/, pool=default, type=disk}",
        },
        Row {
            case: "a profile device that changes an instance the manifests do not name",
            change: |w| {
                w.live.profiles.get_mut("veza-app").expect("profile").devices.remove("eth0");
                let mut forgejo = w.live.instances["veza-backend-tools"].clone();
                forgejo.name = "forgejo".into();
                w.live.instances.insert("forgejo".into(), forgejo);
                // The named ones carry their own eth0 (`incus launch --network`).
                let nic: Config = [("type", "nic"), ("network", "net-veza"), ("name", "eth0")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                for (name, i) in &mut w.live.instances {
                    if name != "forgejo" && i.profiles.contains(&"veza-app".to_string()) {
                        i.devices.insert("eth0".into(), nic.clone());
                    }
                }
            },
            conflict: &["veza-app"],
            says: "device `eth0`: instance `forgejo` (which the manifests do not name) runs with none, the manifests give it {name=eth0, network=net-veza, type=nic}",
        },
        Row {
            case: "a profile config key that changes an instance the manifests do not name",
            change: |w| {
                let p = w.live.profiles.get_mut("veza-app").expect("profile");
                p.config.insert("security.nesting".into(), "true".into());
                let mut forgejo = w.live.instances["veza-backend-tools"].clone();
                forgejo.name = "forgejo".into();
                w.live.instances.insert("forgejo".into(), forgejo);
            },
            conflict: &["veza-app"],
            says: "the first apply removes security.nesting (true): not declared, which changes instance(s) `forgejo` (which the manifests do not name) too",
        },
        Row {
            case: "protected data missing its flag: Incus protection",
            change: |w| {
                inst(w, "veza-backend-tools")
                    .config
                    .insert("security.protection.delete".into(), "true".into());
            },
            conflict: &["veza-backend-tools"],
            says: "protected data missing its flag: Incus protects it (security.protection.delete=true), but the manifest does not set `protect: true`",
        },
        Row {
            case: "protected data missing its flag: snapshots",
            change: |w| {
                w.facts.snapshots.insert("veza-staging-backend-tools".into(), 2);
            },
            conflict: &["veza-staging-backend-tools"],
            says: "protected data missing its flag: it has 2 snapshot(s)",
        },
        Row {
            case: "type",
            change: |w| inst(w, "veza-rabbitmq").kind = InstanceKind::VirtualMachine,
            conflict: &["veza-rabbitmq"],
            says: "type: the instance is a virtual-machine, the manifest declares a container",
        },
        Row {
            case: "a serving slot whose release cannot be verified",
            change: |w| {
                w.facts.probes.insert(
                    "veza-backend-blue".into(),
                    Ok(ProbeAnswer { status: 200, release: None }),
                );
            },
            conflict: &["veza-backend-blue"],
            says: "release unknown: it serves prod/backend traffic and release 0bd3e563b2 cannot be verified (its health probe answered 200 without X-Release",
        },
        Row {
            case: "a serving slot running another release",
            change: |w| {
                let other = "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80".to_string();
                w.facts.probes.insert(
                    "veza-stream-blue".into(),
                    Ok(ProbeAnswer { status: 200, release: Some(other) }),
                );
            },
            conflict: &["veza-stream-blue"],
            says: "its health probe answered 200 with X-Release e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80",
        },
        Row {
            case: "active color disagreement",
            change: |w| {
                live_edge_edited(
                    w,
                    "veza-web-green veza-web-green.lxd",
                    "veza-web-blue veza-web-blue.lxd",
                )
            },
            conflict: &[],
            says: "prod/web: the live edge serves blue, the manifest says `active: green`: adoption never moves traffic",
        },
        Row {
            case: "both colors serving",
            change: |w| {
                let extra = "\nbackend prod_backend_canary\n    server g veza-backend-green.lxd:8080 check\n";
                w.live.edge = LiveEdge::from_config(ansible_edge(extra));
            },
            conflict: &[],
            says: "prod/backend: the live edge sends traffic to both colors",
        },
        Row {
            case: "no color serving while foreign slots exist",
            change: |w| {
                live_edge_edited(
                    w,
                    "server veza-staging-web-blue veza-staging-web-blue.lxd:8081 check",
                    "server x 10.0.20.31:8081 check",
                )
            },
            conflict: &[],
            says: "staging/web: no enabled server of the live edge config routes to a slot of it",
        },
    ];
    for row in rows {
        let mut w = ansible_world();
        (row.change)(&mut w);
        let a = run(&w);
        assert!(a.blocked(), "case `{}`: adoption must be blocked:\n{a}", row.case);
        match row.conflict {
            [first, ..] => {
                for name in row.conflict {
                    let st = state_of(&a, name);
                    assert_eq!(st, AdoptState::Conflict, "case `{}`: {name}\n{a}", row.case);
                }
                let lines = lines_of(&a, first);
                let found = lines.iter().any(|l| l.contains(row.says));
                assert!(found, "case `{}`: {lines:#?}", row.case);
                let n = a.count(AdoptState::Conflict);
                assert_eq!(n, row.conflict.len(), "case `{}`:\n{a}", row.case);
                assert!(a.refusals.is_empty(), "case `{}`:\n{a}", row.case);
            }
            [] => {
                assert_eq!(a.count(AdoptState::Conflict), 0, "case `{}`:\n{a}", row.case);
                assert_eq!(a.refusals.len(), 1, "case `{}`:\n{a}", row.case);
                assert!(a.refusals[0].contains(row.says), "case `{}`: {}", row.case, a.refusals[0]);
                assert!(a.active.iter().any(|x| !x.agrees), "case `{}`", row.case);
            }
        }
    }
}

#[test]
fn releases_are_recorded_only_when_verified() {
    let green = "a4c6e8b0d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1";
    // (case, change, slot, release recorded, a line of its notes)
    type Case = (&'static str, fn(&mut World), &'static str, Option<&'static str>, &'static str);
    let cases: [Case; 5] = [
        (
            "the probe's X-Release",
            |_| {},
            "veza-staging-backend-green",
            Some(green),
            "release a4c6e8b0d2 verified: its health probe answers with it in X-Release",
        ),
        (
            "the last entry of Ansible's history, for a serving slot without X-Release",
            |w| {
                w.facts
                    .probes
                    .insert("veza-staging-backend-green".into(), Err("connection refused".into()));
                let h = "blue e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80\ngreen a4c6e8b0d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1\n";
                w.facts.color_histories.insert("staging".into(), h.into());
            },
            "veza-staging-backend-green",
            Some(green),
            "the last entry of Ansible's history (`/var/lib/veza/active-color-staging.history`) names it for green",
        ),
        (
            "an idle slot that cannot be verified is adopted without its release",
            |w| {
                w.facts.probes.insert(
                    "veza-staging-backend-blue".into(),
                    Ok(ProbeAnswer { status: 503, release: None }),
                );
                let h = "green a4c6e8b0d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1\n";
                w.facts.color_histories.insert("staging".into(), h.into());
            },
            "veza-staging-backend-blue",
            None,
            "release e97b91f010 not verified (its health probe answered 503 without X-Release): not recorded — the first apply rebuilds this slot, which serves no traffic, from its image: its container is deleted",
        ),
        (
            "a probe naming another release outranks Ansible's history",
            |w| {
                w.facts.probes.insert(
                    "veza-staging-backend-blue".into(),
                    Ok(ProbeAnswer { status: 200, release: Some("1111111111".into()) }),
                );
                let h = "blue e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80\n";
                w.facts.color_histories.insert("staging".into(), h.into());
            },
            "veza-staging-backend-blue",
            None,
            "release e97b91f010 not verified (its health probe answered 200 with X-Release 1111111111): not recorded",
        ),
        (
            "a stopped slot serves nothing",
            |w| {
                inst(w, "veza-backend-blue").status = InstanceStatus::Stopped;
                w.facts.probes.remove("veza-backend-blue");
            },
            "veza-backend-blue",
            None,
            "(it is stopped (not probed)): not recorded",
        ),
    ];
    for (case, change, slot, release, note) in cases {
        let mut w = ansible_world();
        change(&mut w);
        let a = run(&w);
        assert_eq!(state_of(&a, slot), AdoptState::Adopt, "case `{case}`:\n{a}");
        let i = a.instances.iter().find(|i| i.name == slot).expect("slot");
        assert_eq!(i.marks.get(MARK_RELEASE).map(String::as_str), release, "case `{case}`");
        assert!(i.notes.iter().any(|n| n.contains(note)), "case `{case}`: {:#?}", i.notes);
    }
}

#[test]
fn owned_missing_and_what_adoption_leaves_alone() {
    let mut w = ansible_world();
    w.live.instances.remove("veza-minio");
    inst(&mut w, "veza-redis").config.insert(MARK_MANAGED.into(), "true".into());
    // An Ansible record that disagrees with the edge for some apps (it keeps one color per
    // environment) is shown, not refused: the edge's config routes the traffic.
    w.facts.color_records.insert("prod".into(), "blue\n".into());
    w.facts.color_records.insert("staging".into(), "purple".into());
    // A foreign timer running something else is not a duplicate.
    let pg =
        w.facts.foreign_units.get_mut(&UnitTarget::Instance("veza-postgres".into())).expect("pg");
    pg.insert(
        "pgbackrest-diff.service".into(),
        "[Service]\nExecStart=/usr/bin/pgbackrest --stanza=veza --type=incr backup\n".into(),
    );
    let a = run(&w);
    assert_eq!(state_of(&a, "veza-minio"), AdoptState::Missing);
    assert_eq!(state_of(&a, "veza-redis"), AdoptState::Owned);
    assert!(!a.blocked(), "{a}");
    let records: Vec<(&str, &str, Option<&str>)> = a
        .active
        .iter()
        .filter(|x| x.app == "web")
        .map(|x| (x.env.as_str(), x.live.as_str(), x.record.as_deref()))
        .collect();
    assert_eq!(records, [("prod", "green", Some("blue")), ("staging", "blue", Some("unreadable"))]);
    assert_eq!(a.timers.len(), 2, "{a}");
    let text = a.to_string();
    assert!(text.contains("instance veza-minio (prod): missing\n"), "{text}");
    assert!(
        text.contains(
            "active prod/web: live green, manifest green: agrees (Ansible's record: blue)\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with(
            "19 to adopt, 1 owned, 1 missing, 0 in conflict; 2 duplicate timer(s); 0 refusal(s)\n"
        ),
        "{text}"
    );
}

#[test]
fn needs_name_the_facts_to_gather() {
    let w = ansible_world();
    let ms = manifests();
    let refs: Vec<&Manifest> = ms.iter().collect();
    let n = needs(&refs, &w.live, &BTreeMap::new()).expect("needs");
    assert!(n.local_images.is_empty(), "the manifests name images:debian/13 only");
    assert_eq!(n.snapshots.len(), 11, "{:?}", n.snapshots);
    assert_eq!(n.probes.len(), 8, "{:?}", n.probes);
    let p = n.probes.iter().find(|p| p.instance == "veza-backend-blue").expect("probe");
    assert_eq!((p.port, p.path.as_str(), p.loopback.as_deref()), (8080, "/api/v1/health", None));
    assert_eq!(n.records, Some(("veza-haproxy".into(), vec!["prod".into(), "staging".into()])));
    let targets = [
        UnitTarget::Host,
        UnitTarget::Instance("veza-postgres".into()),
        UnitTarget::Instance("veza-staging-postgres".into()),
    ];
    assert_eq!(n.unit_targets, targets);
}

#[test]
fn image_families_compare_like_with_like() {
    let local = BTreeMap::from([
        (
            "veza-test-busybox".to_string(),
            Config::from([("os".into(), "busybox".into()), ("release".into(), "1:1.35.0".into())]),
        ),
        ("bare".to_string(), Config::from([("description".into(), "no os".into())])),
    ]);
    let fam = |os: &str, rel: &str| Some(ImageFamily { os: os.into(), release: rel.into() });
    // (reference, family)
    let cases = [
        ("images:debian/13", fam("debian", "13")),
        ("images:debian/trixie/cloud", fam("debian", "13")),
        ("images:ubuntu/jammy", fam("ubuntu", "22.04")),
        ("images:debian", None),
        ("other:debian/13", None),
        ("veza-test-busybox", fam("busybox", "1:1.35.0")),
        ("local:veza-test-busybox", fam("busybox", "1:1.35.0")),
        ("bare", None),
        ("missing", None),
    ];
    for (reference, want) in cases {
        assert_eq!(image_family(reference, &BTreeMap::new(), &local), want, "{reference}");
    }
    // Through the host's mapping, as the planner uses it: (mapped to, family)
    let mapped = [
        ("veza-test-busybox", fam("busybox", "1:1.35.0")),
        ("local:missing", None),
        ("https://mirror.lan/images:debian/12", fam("debian", "12")),
        ("images:debian/trixie", fam("debian", "13")),
    ];
    for (to, want) in mapped {
        let map = BTreeMap::from([("images:debian/13".to_string(), to.to_string())]);
        assert_eq!(image_family("images:debian/13", &map, &local), want, "mapped to {to}");
    }
    assert_eq!(ImageFamily::new("Debian", "bookworm"), ImageFamily::new("debian", "12"));
    assert_ne!(ImageFamily::new("debian", "12"), ImageFamily::new("debian", "13"));
}

#[test]
fn the_same_command_rule() {
    // (ExecStart=, job command, same)
    let cases = [
        (
            "/usr/bin/pgbackrest --stanza=veza --type=full backup",
            "pgbackrest --stanza=veza --type=full backup",
            true,
        ),
        (
            "-/usr/bin/pgbackrest  --stanza=veza\t--type=full backup",
            "pgbackrest --stanza=veza --type=full backup",
            true,
        ),
        (
            "/bin/sh -c 'pgbackrest --stanza=veza --type=full backup'",
            "pgbackrest --stanza=veza --type=full backup",
            true,
        ),
        ("/bin/bash -c \"/usr/local/bin/dr-drill.sh\"", "/usr/local/bin/dr-drill.sh", true),
        (
            "/usr/bin/pgbackrest --stanza=veza --type=diff backup",
            "pgbackrest --stanza=veza --type=full backup",
            false,
        ),
        (
            "/usr/bin/pgbackrest --stanza=veza backup --type=full",
            "pgbackrest --stanza=veza --type=full backup",
            false,
        ),
        ("/usr/local/bin/dr-drill.sh --keep", "/usr/local/bin/dr-drill.sh", false),
        ("", "true", false),
    ];
    for (exec, command, same) in cases {
        assert_eq!(same_command(exec, command), same, "{exec:?} vs {command:?}");
    }
    assert_eq!(normalise_command("/bin/sh -c 'a  b'"), ["a", "b"]);
    let _ = Color::Blue;
}
