//! Unit tests for the shared rules, the generic helpers and `FakeIncus` (the envelope
//! parser's tables live in `envelope.rs`). The real client is tested against a real
//! incusd in `tests/incus.rs`.

use std::time::Duration;

use veza_model::live::{
    Device, InstanceKind, InstanceStatus, LiveNetwork, MARK_APP, MARK_MANAGED, MARK_PROTECT,
    MARK_RELEASE,
};

use super::*;

fn block_on<F: Future>(f: F) -> F::Output {
    runtime().expect("runtime").block_on(f)
}

fn cfg(pairs: &[(&str, &str)]) -> Config {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn proxy(listen: &str) -> Device {
    cfg(&[("type", "proxy"), ("listen", listen), ("connect", "tcp:127.0.0.1:8080")])
}

fn foreign(name: &str) -> LiveInstance {
    LiveInstance {
        name: name.to_string(),
        kind: InstanceKind::Container,
        status: InstanceStatus::Running,
        config: cfg(&[("volatile.uuid", "u")]),
        devices: Devices::new(),
        expanded_devices: Devices::new(),
        profiles: vec!["default".into()],
        description: String::new(),
        location: None,
    }
}

fn spec(name: &str) -> InstanceSpec {
    let mut s = InstanceSpec::container(name, "veza-test-busybox");
    s.config = cfg(&[(MARK_APP, "web"), (MARK_RELEASE, "abc")]);
    s.devices.insert("http".into(), proxy("tcp:127.0.0.1:18001"));
    s.start = true;
    s
}

#[test]
fn names_are_validated_before_they_reach_a_url() {
    let cases = [
        ("web-blue", true),
        ("veza_1.0", true),
        ("", false),
        ("..", false),
        ("a/b", false),
        ("a?b", false),
        ("a b", false),
        ("a%2f", false),
        (&"x".repeat(64), false),
    ];
    for (name, ok) in cases {
        assert_eq!(validate_name("instance name", name).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn file_paths_must_be_absolute_and_normal() {
    let cases = [
        ("/etc/x.conf", true),
        ("/a b/ü", true),
        ("etc/x", false),
        ("/a/../b", false),
        ("/", false),
        ("/a\0b", false),
    ];
    for (path, ok) in cases {
        assert_eq!(validate_file_path(path).is_ok(), ok, "{path:?}");
    }
}

#[test]
fn ancestors_are_listed_nearest_first() {
    let cases: [(&str, &[&str]); 4] = [
        ("/a/b/c.txt", &["/a/b", "/a"]),
        ("/c.txt", &[]),
        ("/a/b/", &["/a"]),
        ("/etc/systemd/system/x.service", &["/etc/systemd/system", "/etc/systemd", "/etc"]),
    ];
    for (path, want) in cases {
        assert_eq!(ancestors(path), want, "{path}");
    }
}

#[test]
fn snapshot_names_are_unique() {
    let snap =
        |n: &str| SnapshotInfo { name: n.into(), created_at: String::new(), stateful: false };
    let cases: Vec<(Vec<SnapshotInfo>, &str)> = vec![
        (vec![], "veza-100"),
        (vec![snap("veza-99")], "veza-100"),
        (vec![snap("veza-100")], "veza-100-2"),
        (vec![snap("veza-100"), snap("veza-100-2")], "veza-100-3"),
    ];
    for (existing, want) in cases {
        assert_eq!(snapshot_name(100, &existing), want);
    }
}

#[test]
fn put_config_keeps_incus_keys_and_replaces_the_rest() {
    let live = cfg(&[
        ("volatile.uuid", "u"),
        ("image.os", "busybox"),
        ("user.veza.release", "old"),
        ("limits.cpu", "2"),
        (MARK_MANAGED, "true"),
    ]);
    let desired = cfg(&[("user.veza.release", "new"), ("volatile.uuid", "forged")]);
    assert_eq!(
        merged_put_config(&live, &desired),
        cfg(&[
            ("volatile.uuid", "u"),
            ("image.os", "busybox"),
            ("user.veza.release", "new"),
            (MARK_MANAGED, "true"),
        ])
    );
}

#[test]
fn fake_records_calls_and_ensure_is_idempotent() {
    let fake = FakeIncus::with_default_host();
    let desired = spec("web-blue");
    assert_eq!(block_on(ensure_instance(&fake, &desired)).unwrap(), Ensured::Created);
    assert_eq!(
        fake.take_calls(),
        ["GET /1.0/instances/web-blue", "GET /1.0/instances/web-blue", "POST /1.0/instances"]
    );
    let writes = fake.api_writes();

    assert_eq!(block_on(ensure_instance(&fake, &desired)).unwrap(), Ensured::Unchanged);
    assert_eq!(fake.api_writes(), writes, "second ensure wrote");
    assert_eq!(fake.take_calls(), ["GET /1.0/instances/web-blue"]);

    let live = fake.live();
    let inst = &live.instances["web-blue"];
    assert!(inst.is_owned() && inst.is_running());
    assert_eq!(inst.root_disk_pool(), Some("default"));
    assert!(inst.expanded_devices.contains_key("http"));
    assert_eq!(live.profiles["default"].used_by, ["/1.0/instances/web-blue"]);

    // Removing the device is an update (a PUT), and then idempotent again.
    let mut changed = desired.clone();
    changed.devices.clear();
    assert_eq!(
        block_on(ensure_instance(&fake, &changed)).unwrap(),
        Ensured::Changed { updated: true, started: false }
    );
    assert_eq!(fake.write_calls(), ["PUT /1.0/instances/web-blue"]);
    assert_eq!(block_on(ensure_instance(&fake, &changed)).unwrap(), Ensured::Unchanged);
    assert!(fake.live().instances["web-blue"].devices.is_empty());
}

#[test]
fn an_observation_without_networks_does_not_ask_for_them() {
    let mut live = block_on(FakeIncus::with_default_host().observe()).unwrap();
    live.networks.insert(
        "eth0".into(),
        LiveNetwork {
            name: "eth0".into(),
            kind: "physical".into(),
            managed: false,
            status: String::new(),
            description: String::new(),
            config: Config::new(),
        },
    );
    let fake = FakeIncus::new(live);
    let everything = block_on(fake.observe()).unwrap();
    assert!(everything.networks.contains_key("eth0"));
    assert_eq!(
        fake.take_calls(),
        [
            "GET /1.0/instances?recursion=1",
            "GET /1.0/profiles?recursion=1",
            "GET /1.0/networks?recursion=1",
            "GET /1.0/storage-pools?recursion=1"
        ]
    );
    let scoped = block_on(fake.observe_scoped(Scope::WITHOUT_NETWORKS)).unwrap();
    assert_eq!(
        fake.take_calls(),
        [
            "GET /1.0/instances?recursion=1",
            "GET /1.0/profiles?recursion=1",
            "GET /1.0/storage-pools?recursion=1"
        ]
    );
    assert!(scoped.networks.is_empty());
    assert_eq!(scoped.instances, everything.instances);
    assert_eq!(scoped.pools, everything.pools);
}

#[test]
fn foreign_and_protected_instances_are_refused_by_every_mutation() {
    let fake = FakeIncus::with_default_host();
    let mut live = fake.live();
    live.instances.insert("forgejo".into(), foreign("forgejo"));
    fake.set_live(live);
    let before = fake.live();

    let not_owned = |r: Result<()>| matches!(r, Err(IncusError::NotOwned { kind: ResourceKind::Instance, ref name }) if name == "forgejo");
    assert!(not_owned(block_on(fake.create_instance(&spec("forgejo")))));
    assert!(not_owned(
        block_on(fake.update_instance("forgejo", &spec("forgejo").update())).map(drop)
    ));
    assert!(not_owned(block_on(
        fake.change_state("forgejo", &StateChange::stop(Duration::ZERO, true))
    )));
    assert!(not_owned(block_on(fake.delete_instance("forgejo"))));
    assert!(not_owned(block_on(fake.create_snapshot("forgejo", None)).map(drop)));
    assert!(not_owned(block_on(fake.delete_snapshot("forgejo", "s"))));
    assert!(not_owned(block_on(fake.exec("forgejo", &ExecRequest::sh("true"))).map(drop)));
    assert!(not_owned(block_on(fake.push_file("forgejo", &FilePush::new("/x", "y")))));
    assert!(not_owned(block_on(ensure_instance(&fake, &spec("forgejo"))).map(drop)));
    assert_eq!(fake.api_writes(), 0);
    assert_eq!(fake.live(), before);

    let mut p = spec("db");
    p.config.insert(MARK_PROTECT.into(), "true".into());
    block_on(fake.create_instance(&p)).unwrap();
    let err = block_on(fake.delete_instance("db")).unwrap_err();
    assert!(matches!(err, IncusError::Protected { ref name } if name == "db"), "{err}");
    assert!(err.to_string().contains("user.veza.protect=true"), "{err}");
    assert!(fake.live().instances.contains_key("db"));
}

#[test]
fn foreign_profiles_are_refused_and_owned_ones_managed() {
    let fake = FakeIncus::with_default_host();
    let default = ProfileSpec { name: "default".into(), ..ProfileSpec::default() };
    for r in [
        block_on(fake.create_profile(&default)),
        block_on(fake.update_profile(&default)).map(drop),
        block_on(fake.delete_profile("default")),
    ] {
        assert!(
            matches!(r, Err(IncusError::NotOwned { kind: ResourceKind::Profile, .. })),
            "{r:?}"
        );
    }
    let mut app = ProfileSpec {
        name: "veza-app".into(),
        description: "apps".into(),
        ..ProfileSpec::default()
    };
    app.devices.insert("root".into(), cfg(&[("type", "disk"), ("path", "/"), ("pool", "default")]));
    assert!(block_on(ensure_profile(&fake, &app)).unwrap());
    assert!(!block_on(ensure_profile(&fake, &app)).unwrap());
    assert!(fake.live().profiles["veza-app"].is_owned());
    app.config.insert("limits.cpu".into(), "2".into());
    assert!(block_on(ensure_profile(&fake, &app)).unwrap());

    // In use: Incus refuses the delete.
    let mut s = spec("w");
    s.profiles = vec!["veza-app".into()];
    block_on(fake.create_instance(&s)).unwrap();
    let err = block_on(fake.delete_profile("veza-app")).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn creating_what_the_agent_already_owns_is_already_exists_for_every_kind() {
    let fake = FakeIncus::with_default_host();
    let profile = ProfileSpec { name: "veza-app".into(), ..ProfileSpec::default() };
    type Create<'a> = Box<dyn Fn() -> Result<()> + 'a>;
    let cases: [(ResourceKind, &str, Create<'_>); 3] = [
        (ResourceKind::Instance, "w", Box::new(|| block_on(fake.create_instance(&spec("w"))))),
        (ResourceKind::Profile, "veza-app", Box::new(|| block_on(fake.create_profile(&profile)))),
        (
            ResourceKind::Network,
            "veza-br",
            Box::new(|| block_on(fake.create_network("veza-br", "bridge", &Config::new()))),
        ),
    ];
    for (kind, name, create) in cases {
        create().unwrap_or_else(|e| panic!("{kind:?} first create: {e}"));
        let writes = fake.api_writes();
        let err = create().unwrap_err();
        assert!(
            matches!(err, IncusError::AlreadyExists { kind: k, name: ref n } if k == kind && n == name),
            "{kind:?}: {err}"
        );
        assert_eq!(fake.api_writes(), writes, "{kind:?}: nothing written the second time");
    }
}

#[test]
fn a_profile_without_root_disk_fails_like_incus() {
    let fake = FakeIncus::with_default_host();
    block_on(fake.create_profile(&ProfileSpec { name: "empty".into(), ..ProfileSpec::default() }))
        .unwrap();
    let mut s = spec("w");
    s.profiles = vec!["empty".into()];
    let err = block_on(fake.create_instance(&s)).unwrap_err();
    assert!(err.to_string().contains("No root device could be found"), "{err}");
}

#[test]
fn injected_failures_fire_once_by_index_or_pattern() {
    let boom = || IncusError::Api {
        method: "PUT".into(),
        path: "/x".into(),
        status: 500,
        message: "boom".into(),
    };
    let cases: Vec<(FailOn, usize)> =
        vec![(FailOn::Call(0), 0), (FailOn::Call(1), 1), ("POST /1.0/instances".into(), 1)];
    for (on, failing_index) in cases {
        let fake = FakeIncus::with_default_host();
        fake.fail_on(on.clone(), boom());
        let first = block_on(fake.create_instance(&spec("a")));
        let calls = fake.calls();
        assert!(first.is_err(), "{on:?}");
        assert_eq!(calls.len(), failing_index + 1, "{on:?}: {calls:?}");
        assert!(!fake.live().instances.contains_key("a"), "{on:?}: failed call changed state");
        // Once only: the retry succeeds.
        block_on(fake.create_instance(&spec("a"))).unwrap();
    }
}

#[test]
fn snapshots_are_named_listed_and_pruned_to_the_newest() {
    let fake = FakeIncus::with_default_host();
    block_on(fake.create_instance(&spec("db"))).unwrap();
    fake.set_clock(1000);
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(block_on(fake.create_snapshot("db", None)).unwrap());
    }
    assert_eq!(made, ["veza-1000", "veza-1001", "veza-1002", "veza-1003"]);
    block_on(fake.create_snapshot("db", Some("manual"))).unwrap();
    let deleted = block_on(prune_snapshots(&fake, "db", 2)).unwrap();
    assert_eq!(deleted, ["veza-1000", "veza-1001"]);
    let left: Vec<String> =
        block_on(fake.list_snapshots("db")).unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(left, ["veza-1002", "veza-1003", "manual"]);
    assert!(block_on(prune_snapshots(&fake, "db", 2)).unwrap().is_empty());
}

#[test]
fn exec_files_and_server_config_on_the_fake() {
    let fake = FakeIncus::with_default_host();
    block_on(fake.create_instance(&spec("w"))).unwrap();
    fake.push_exec_result(ExecOutput {
        exit_code: 3,
        stdout: b"out".to_vec(),
        stderr: b"err".to_vec(),
    });
    let out = block_on(fake.exec("w", &ExecRequest::sh("exit 3"))).unwrap();
    assert_eq!(
        (out.exit_code, out.stdout_str(), out.stderr_str()),
        (3, "out".into(), "err".into())
    );
    assert_eq!(fake.execs()[0].1.command, ["sh", "-c", "exit 3"]);

    block_on(push_file_verified(&fake, "w", &FilePush::new("/etc/app.conf", "v=1\n"))).unwrap();
    assert_eq!(fake.file("w", "/etc/app.conf").unwrap(), b"v=1\n");
    fake.set_file("w", "/etc/app.conf", "");
    let err = block_on(verify_file(&fake, "w", "/etc/app.conf", b"v=1\n")).unwrap_err();
    assert!(
        matches!(
            err,
            IncusError::FileMismatch { expected: 4, actual: 0, first_difference: None, .. }
        ),
        "{err}"
    );

    assert_eq!(block_on(fake.server_user_config("user.veza.hwm")).unwrap(), None);
    block_on(fake.set_server_user_config("user.veza.hwm", Some("7"))).unwrap();
    let writes = fake.api_writes();
    block_on(fake.set_server_user_config("user.veza.hwm", Some("7"))).unwrap();
    assert_eq!(fake.api_writes(), writes);
    assert_eq!(block_on(fake.server_user_config("user.veza.hwm")).unwrap().as_deref(), Some("7"));
    assert!(matches!(
        block_on(fake.set_server_user_config("core.https_address", Some(":8443"))),
        Err(IncusError::Invalid { .. })
    ));
}

#[test]
fn errors_read_well() {
    let cases: Vec<(IncusError, &str)> = vec![
        (
            IncusError::NotOwned { kind: ResourceKind::Instance, name: "forgejo".into() },
            "refusing to change instance `forgejo`: it exists but is not managed by veza-agent",
        ),
        (
            IncusError::Timeout {
                method: "POST".into(),
                path: "/1.0/instances/w/exec".into(),
                operation: Some("/1.0/operations/abc".into()),
                waited: Duration::from_secs(2),
            },
            "`POST /1.0/instances/w/exec` did not finish within 2s (operation /1.0/operations/abc; see `incus operation show abc`); incus may still complete it",
        ),
        (
            IncusError::Api {
                method: "PUT".into(),
                path: "/1.0/instances/w".into(),
                status: 412,
                message: "ETag doesn't match".into(),
            },
            "incus rejected `PUT /1.0/instances/w` (HTTP 412): ETag doesn't match",
        ),
        (
            IncusError::NotFound {
                kind: ResourceKind::File,
                name: "/x".into(),
                instance: Some("w".into()),
            },
            "file `/x` does not exist in instance `w`",
        ),
    ];
    for (err, want) in cases {
        assert!(err.to_string().starts_with(want), "got: {err}\nwant: {want}");
    }
}

#[test]
fn image_sources_serialize_as_incus_expects() {
    let cases = [
        (
            ImageSource::local("veza-test-busybox"),
            serde_json::json!({"type":"image","alias":"veza-test-busybox"}),
        ),
        (
            ImageSource::Simplestreams {
                server: "https://images.linuxcontainers.org".into(),
                alias: "debian/13".into(),
            },
            serde_json::json!({"type":"image","alias":"debian/13",
                "server":"https://images.linuxcontainers.org","protocol":"simplestreams"}),
        ),
    ];
    for (source, want) in cases {
        assert_eq!(source.to_json(), want, "{source}");
    }
}

/// A stand-in incusd on a unix socket: every connection gets one request read and, except
/// those listed in `stall` (1-based connection numbers), a sync reply with an empty list.
/// Returns the socket path and a counter of accepted connections.
fn stub_incusd(
    tag: &str,
    stall: &'static [usize],
) -> (std::path::PathBuf, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = std::env::temp_dir().join(format!("veza-stub-incusd-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("stub dir");
    let socket = dir.join("unix.socket");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind stub socket");
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|r| r > 0) && line != "\r\n" {
                    line.clear();
                }
                if stall.contains(&n) {
                    std::thread::sleep(Duration::from_secs(5)); // never answers in time
                    return;
                }
                let body = r#"{"type":"sync","status":"Success","status_code":200,"metadata":[]}"#;
                let mut out = stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    (socket, accepted)
}

#[test]
fn a_read_left_unanswered_is_sent_again_and_a_persistent_stall_is_a_timeout() {
    use std::sync::atomic::Ordering;
    let options = |attempts| ClientOptions {
        read_timeout: Duration::from_millis(300),
        read_attempts: attempts,
        ..ClientOptions::default()
    };
    // One of the four list GETs of `observe` is left unanswered: it is sent again.
    let (socket, accepted) = stub_incusd("retry", &[1]);
    let client = IncusClient::new(Transport::Unix { socket }, options(3));
    let live = block_on(client.observe()).expect("observe succeeds on the second attempt");
    assert!(live.instances.is_empty() && live.networks.is_empty());
    assert_eq!(accepted.load(Ordering::SeqCst), 5, "four GETs, one of them twice");

    // Every attempt unanswered: a timeout that says how long it waited in all.
    let (socket, _) = stub_incusd("stall", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    let client = IncusClient::new(Transport::Unix { socket: socket.clone() }, options(2));
    let err = block_on(client.observe()).expect_err("a persistent stall fails");
    assert!(
        matches!(err, IncusError::Timeout { waited, .. } if waited == Duration::from_millis(600)),
        "{err}"
    );
    for tag in ["retry", "stall"] {
        let dir =
            std::env::temp_dir().join(format!("veza-stub-incusd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// On a cluster, an instance on an offline member is listed with `null` devices and
/// profiles and the `Error` status; a single host says `location: "none"`.
#[test]
fn an_instance_on_an_offline_member_is_read_with_its_location() {
    let listed = serde_json::json!([
        {"name": "web-green", "status": "Error", "location": "veza-cl-3", "type": "container",
         "config": {"user.veza.managed": "true"}, "devices": null, "expanded_devices": null,
         "profiles": null},
        {"name": "solo", "status": "Running", "location": "none", "config": {}, "devices": {},
         "expanded_devices": {}, "profiles": ["default"]},
    ]);
    let read: Vec<super::types::wire::Instance> = serde_json::from_value(listed).expect("decoded");
    let live: Vec<LiveInstance> = read.into_iter().map(|i| i.into_live()).collect();
    assert_eq!(live[0].location.as_deref(), Some("veza-cl-3"));
    assert_eq!(live[0].status, InstanceStatus::Error);
    assert!(live[0].is_owned() && live[0].devices.is_empty() && live[0].profiles.is_empty());
    assert_eq!(live[1].location, None, "a single host's `none` is no location");
}
