//! Adoption in process over the fakes: a host built by hand (unmarked profile, edge,
//! protected data and two slots; someone else's timers in the data container and on the
//! host) gathered, assessed and adopted, asserting every recorded call.

use std::collections::BTreeMap;

use veza_model::Manifest;
use veza_model::live::{
    Config, LiveEdge, LiveProfile, LiveState, MARK_MANAGED, MARK_RELEASE, UnitTarget,
};
use veza_plan::adopt::{AdoptState, Adoption, assess, needs};
use veza_plan::desired::{DesiredJob, SecretDigests, desired};

use super::{AdoptFailure, execute, gather, parse_probe_output};
use crate::http::fake::ScriptedProbe;
use crate::incus::{ExecOutput, FakeIncus, Incus, runtime};
use crate::systemd::Units;
use crate::systemd::fake::FakeUnits;

const BLUE: &str = "0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7";
const GREEN: &str = "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80";
const SHA: &str = "4f2a9c1e7b3d5f8a0c6e2b4d7f9a1c3e5b8d0f2a4c6e8b1d3f5a7c9e0b2d4f6a";

fn manifest() -> Vec<Manifest> {
    let text = format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: prod, host: r720, instance_prefix: veza-}}\n\
         incus:\n  profiles:\n    veza-app:\n      config: {{limits.cpu: \"2\"}}\n      devices:\n        root: {{type: disk, path: /, pool: auto}}\n\
         \x20 instances:\n    veza-haproxy: {{image: veza-debian, profiles: [veza-app]}}\n    veza-postgres: {{image: veza-debian, profiles: [veza-app], protect: true}}\n\
         apps:\n  api:\n    image: veza-debian\n    profiles: [veza-app]\n    port: 8080\n\
         \x20   artifact:\n      url: \"https://forge.example/api/{{release}}/api.tar.gz\"\n      sha256:\n        {BLUE}: {SHA}\n        {GREEN}: {SHA}\n\
         \x20   health: {{path: /health}}\n    slots:\n      blue: {{release: {BLUE}}}\n      green: {{release: {GREEN}}}\n    active: blue\n\
         edge:\n  runs_in: veza-haproxy\n  hosts: [veza.fr]\n  routes: [{{app: api}}]\n  sticky_cookie: VEZA_prod\n\
         jobs:\n  backup-full:\n    schedule: \"0 2 * * 0\"\n    on: veza-postgres\n    user: postgres\n    command: pgbackrest --stanza=veza --type=full backup\n\
         \x20 dr-drill:\n    schedule: \"0 4 * * 0\"\n    on: host\n    command: /usr/local/bin/dr-drill.sh\n"
    );
    match veza_model::load(&[("prod.yaml".to_string(), text.into_bytes())]) {
        Ok(parsed) => parsed.into_iter().map(|(_, p)| p.manifest).collect(),
        Err(e) => panic!("test manifest is invalid: {e:#?}"),
    }
}

/// Ansible's edge: blue serves, green is listed disabled.
const EDGE: &str = "global\n    master-worker\nfrontend fe\n    bind *:80\n    default_backend prod_api_pool\n\
backend prod_api_pool\n    cookie VEZA_SERVERID_prod insert indirect nocache\n    server api_blue veza-api-blue.lxd:8080 check cookie blue\n    server api_green veza-api-green.lxd:8080 check cookie green disabled\n";

struct Host {
    incus: FakeIncus,
    units: FakeUnits,
    probe: ScriptedProbe,
}

fn host() -> Host {
    let mut live = FakeIncus::with_default_host().live();
    let root = Config::from([
        ("type".to_string(), "disk".to_string()),
        ("path".to_string(), "/".to_string()),
        ("pool".to_string(), "default".to_string()),
    ]);
    live.profiles.insert(
        "veza-app".into(),
        LiveProfile {
            name: "veza-app".into(),
            description: String::new(),
            config: Config::from([("limits.cpu".to_string(), "2".to_string())]),
            devices: BTreeMap::from([("root".to_string(), root)]),
            used_by: Vec::new(),
        },
    );
    let profiles = ["veza-app".to_string()];
    for name in ["veza-haproxy", "veza-postgres", "veza-api-blue", "veza-api-green"] {
        let foreign = veza_plan::fixtures::foreign_instance(name, "debian", "bookworm", &profiles);
        live.instances.insert(name.into(), foreign);
    }
    let incus = FakeIncus::new(live);
    incus.set_image(
        "veza-debian",
        Config::from([("os".into(), "Debian".into()), ("release".into(), "12".into())]),
    );
    incus.set_file("veza-haproxy", "/etc/haproxy/haproxy.cfg", EDGE);
    incus.set_file("veza-haproxy", "/var/lib/veza/active-color-prod", "blue\n");
    let out = |text: &str| ExecOutput {
        exit_code: 0,
        stdout: text.as_bytes().to_vec(),
        stderr: Vec::new(),
    };
    incus.set_probe_answer(
        "veza-api-blue",
        out(&format!("HTTP/1.1 200 OK\r\nX-Release: {BLUE}\r\nContent-Length: 2\r\n\r\n")),
    );
    incus.set_probe_answer(
        "veza-api-green",
        out(&format!("Connecting to 127.0.0.1:8080 (127.0.0.1:8080)\n  HTTP/1.1 200 OK\n  X-Release: {GREEN}\n  Connection: close\n")),
    );
    let units = FakeUnits::new();
    let pg = UnitTarget::Instance("veza-postgres".into());
    units.set_foreign(&pg, "pgbackrest-full.timer", "[Timer]\nOnCalendar=Sun 02:00\n");
    units.set_foreign(&pg, "pgbackrest-full.service", "[Service]\nUser=postgres\nExecStart=/usr/bin/pgbackrest --stanza=veza --type=full backup\n");
    units.set_foreign(&pg, "logrotate.timer", "[Timer]\nOnCalendar=daily\n");
    units.set_foreign(
        &pg,
        "logrotate.service",
        "[Service]\nExecStart=/usr/sbin/logrotate /etc/logrotate.conf\n",
    );
    units.set_foreign(&UnitTarget::Host, "dr-drill.timer", "[Timer]\nOnCalendar=Sun 04:00\n");
    units.set_foreign(
        &UnitTarget::Host,
        "dr-drill.service",
        "[Service]\nExecStart=/usr/local/bin/dr-drill.sh\n",
    );
    Host { incus, units, probe: ScriptedProbe::new() }
}

/// Observe (the edge's config read as the reconciler does), gather, assess.
fn adoption(h: &Host, ms: &[Manifest]) -> (LiveState, Adoption) {
    let refs: Vec<&Manifest> = ms.iter().collect();
    let rt = runtime().expect("runtime");
    let mut live = rt.block_on(h.incus.observe()).expect("observe");
    live.edge = LiveEdge::from_config(EDGE.to_string());
    let n = needs(&refs, &live, &BTreeMap::new()).expect("needs");
    let facts = rt.block_on(gather(&h.incus, &h.units, &h.probe, &n)).expect("gather");
    let a = assess(&refs, &live, &facts, &SecretDigests::new(), &BTreeMap::new()).expect("assess");
    (live, a)
}

/// Executes `a` (assessed on `live`) without secrets, expecting it to stop part-way.
fn execute_failing(h: &Host, ms: &[Manifest], a: &Adoption, live: &LiveState) -> AdoptFailure {
    runtime()
        .expect("runtime")
        .block_on(execute(&h.incus, &h.units, &Default::default(), a, live, &jobs(ms, live)))
        .expect_err("the adoption stops part-way")
}

fn jobs(ms: &[Manifest], live: &LiveState) -> Vec<DesiredJob> {
    let refs: Vec<&Manifest> = ms.iter().collect();
    desired(&refs, &live.root_pool(), &SecretDigests::new()).expect("desired").jobs
}

#[test]
fn the_report_only_reads_and_apply_sets_marks_and_replaces_timers_without_a_gap() {
    let h = host();
    let ms = manifest();
    let (live, a) = adoption(&h, &ms);
    // Reading the host wrote nothing but the two in-slot probes (a fixed GET on loopback).
    assert_eq!(
        h.incus.write_calls(),
        ["POST /1.0/instances/veza-api-blue/exec", "POST /1.0/instances/veza-api-green/exec"]
    );
    assert!(!a.blocked() && a.pending(), "{a}");
    assert_eq!(a.count(AdoptState::Adopt), 5, "{a}");
    let blue = a.instances.iter().find(|i| i.name == "veza-api-blue").expect("blue");
    assert_eq!(blue.marks.get(MARK_RELEASE).map(String::as_str), Some(BLUE));
    let green = a.instances.iter().find(|i| i.name == "veza-api-green").expect("green");
    assert_eq!(green.marks.get(MARK_RELEASE).map(String::as_str), Some(GREEN), "probed with wget");
    assert_eq!(a.active[0].record.as_deref(), Some("blue"));
    let timers: Vec<&str> = a.timers.iter().map(|t| t.unit.as_str()).collect();
    assert_eq!(timers, ["pgbackrest-full.timer", "dr-drill.timer"], "{a}");

    h.incus.take_calls();
    let rt = runtime().expect("runtime");
    let secrets = veza_secrets::SecretValues::default();
    let done = rt
        .block_on(execute(&h.incus, &h.units, &secrets, &a, &live, &jobs(&ms, &live)))
        .unwrap_or_else(|f| panic!("{f:?}"));
    // Marks only: one PUT per resource, no DELETE, no state change, no snapshot, no exec.
    assert_eq!(
        h.incus.write_calls(),
        [
            "PUT /1.0/profiles/veza-app",
            "PUT /1.0/instances/veza-api-blue",
            "PUT /1.0/instances/veza-api-green",
            "PUT /1.0/instances/veza-haproxy",
            "PUT /1.0/instances/veza-postgres",
        ]
    );
    let after = h.incus.live();
    for (name, before) in &live.instances {
        let now = &after.instances[name];
        assert_eq!(now.config.get("volatile.uuid"), before.config.get("volatile.uuid"), "{name}");
        assert_eq!(
            (&now.status, &now.devices, &now.profiles),
            (&before.status, &before.devices, &before.profiles),
            "{name}"
        );
        assert_eq!(now.config.get(MARK_MANAGED).map(String::as_str), Some("true"), "{name}");
        for (k, v) in &before.config {
            assert_eq!(now.config.get(k), Some(v), "{name}: {k} kept");
        }
    }
    assert!(after.profiles["veza-app"].is_owned());
    // The job's timer is installed and active before the foreign one is retired.
    let calls = h.units.calls();
    let pos = |needle: &str| {
        calls
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in {calls:#?}"))
    };
    for (target, ours, theirs) in [
        ("host", "veza-job-prod-dr-drill.timer", "dr-drill.timer"),
        ("instance `veza-postgres`", "veza-job-prod-backup-full.timer", "pgbackrest-full.timer"),
    ] {
        let install = pos(&format!("install {target}: veza-job-prod-"));
        assert!(calls[install].ends_with(&format!("; enable {ours}")), "{}", calls[install]);
        let active = pos(&format!("is-active {target}: {ours}"));
        let retire = pos(&format!("retire {target}: {theirs}"));
        assert!(install < active && active < retire, "{calls:#?}");
    }
    assert!(!calls.iter().any(|c| c.contains("logrotate")), "{calls:#?}");
    let pg = UnitTarget::Instance("veza-postgres".into());
    assert!(h.units.foreign_files(&pg).contains_key("pgbackrest-full.timer"), "the file stays");
    assert!(!rt.block_on(h.units.is_active(&pg, "pgbackrest-full.timer")).expect("read"));
    assert_eq!(done.instances.len(), 4);
    assert_eq!(
        done.timers,
        [
            "pgbackrest-full.timer on instance `veza-postgres` -> veza-job-prod-backup-full.timer (disabled, kept)",
            "dr-drill.timer on host -> veza-job-prod-dr-drill.timer (disabled, kept)",
        ]
    );

    // A second adoption finds everything owned and changes nothing.
    h.incus.take_calls();
    let (live2, again) = adoption(&h, &ms);
    assert_eq!(again.count(AdoptState::Owned), 5, "{again}");
    assert!(!again.pending() && !again.blocked(), "{again}");
    let done = rt
        .block_on(execute(&h.incus, &h.units, &secrets, &again, &live2, &jobs(&ms, &live2)))
        .expect("nothing to do");
    assert!(done.is_empty());
    assert!(h.incus.write_calls().is_empty(), "{:?}", h.incus.write_calls());
}

#[test]
fn a_failed_install_leaves_the_foreign_timers_running() {
    let h = host();
    let ms = manifest();
    let (live, a) = adoption(&h, &ms);
    h.units.reject_installs("Unknown key name 'OnCalendar' in section 'Service'");
    let f = execute_failing(&h, &ms, &a, &live);
    assert!(
        f.error.starts_with("installing the job units on instance `veza-postgres`: units rejected"),
        "{}",
        f.error
    );
    assert_eq!(f.done.instances.len(), 4, "the marks were set before");
    assert!(f.done.timers.is_empty());
    let calls = h.units.calls();
    assert!(!calls.iter().any(|c| c.starts_with("retire")), "{calls:#?}");
    let rt = runtime().expect("runtime");
    let pg = UnitTarget::Instance("veza-postgres".into());
    assert!(rt.block_on(h.units.is_active(&pg, "pgbackrest-full.timer")).expect("read"));
}

#[test]
fn a_resource_changed_since_assessed_is_not_marked() {
    let h = host();
    let ms = manifest();
    let (live, a) = adoption(&h, &ms);
    // Someone adds a device to the edge between the report and the apply.
    let mut changed = h.incus.live();
    let edge = changed.instances.get_mut("veza-haproxy").expect("edge");
    edge.devices.insert("http".into(), Config::from([("type".into(), "proxy".into())]));
    h.incus.set_live(changed);
    h.incus.take_calls();
    let f = execute_failing(&h, &ms, &a, &live);
    assert!(
        f.error.starts_with("refusing to adopt instance `veza-haproxy`: it changed since it was assessed (its devices changed)"),
        "{}",
        f.error
    );
    assert!(
        !h.incus.write_calls().iter().any(|c| c.contains("veza-haproxy")),
        "{:?}",
        h.incus.write_calls()
    );
    assert!(!h.incus.live().instances["veza-haproxy"].is_owned());
    // A blocked adoption touches nothing at all.
    let mut blocked = a.clone();
    blocked.refusals.push("prod/api: both colors".into());
    h.incus.take_calls();
    let f = runtime()
        .expect("runtime")
        .block_on(execute(&h.incus, &h.units, &Default::default(), &blocked, &live, &[]))
        .expect_err("blocked");
    assert!(f.error.contains("blocked"), "{}", f.error);
    assert!(h.incus.calls().is_empty());
}

#[test]
fn probe_output_of_curl_and_busybox_wget() {
    // (what the in-slot probe printed, status and X-Release)
    type Case = (&'static str, Option<(u16, Option<&'static str>)>);
    let cases: [Case; 6] = [
        ("HTTP/1.1 200 OK\r\nX-Release: abc\r\n\r\n", Some((200, Some("abc")))),
        (
            "HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\nHTTP/1.1 200 OK\r\nx-release: def\r\n\r\n",
            Some((200, Some("def"))),
        ),
        (
            "Connecting to 127.0.0.1:8080 (127.0.0.1:8080)\n  HTTP/1.1 503 Service Unavailable\n  Content-Type: text/plain\nwget: server returned error: HTTP/1.1 503 Service Unavailable\n",
            Some((503, None)),
        ),
        ("  HTTP/1.0 200 OK\n  X-Release:  0bd3e563b2  \n", Some((200, Some("0bd3e563b2")))),
        ("wget: can't connect to remote host (127.0.0.1): Connection refused\n", None),
        ("", None),
    ];
    for (text, want) in cases {
        let got = parse_probe_output(text);
        assert_eq!(got.as_ref().map(|p| (p.status, p.release.as_deref())), want, "{text:?}");
    }
}
