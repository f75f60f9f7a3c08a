//! The Incus driver (`veza_host::incus`) against the real incusd and the
//! `veza-test-busybox` image: lifecycle, device changes, snapshots, exec, files,
//! idempotence counted in API writes, foreign and protected instances, profiles, the
//! server config mirror, and operation waits (the agent's own, and those someone else left
//! running on an instance). Names are `vt-incus-<pid>-<tag>`; every
//! instance and profile carries `user.veza-test.owner=<pid>` (the testkit's dead-owner
//! sweep removes leftovers of killed runs) and is deleted on drop by name.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use veza_host::incus::{
    ClientOptions, Ensured, ExecRequest, FilePush, Incus, IncusClient, IncusError, InstanceSpec,
    ProfileSpec, ResourceKind, SharedConfig, StateChange, Transport, ensure_instance,
    ensure_profile, prune_snapshots, push_file_verified, runtime, set_shared_user_config,
    verify_file,
};
use veza_host::process::Cmd;
use veza_model::live::{
    Config, Device, InstanceStatus, MARK_APP, MARK_MANAGED, MARK_PROTECT, MARK_RELEASE,
};
use veza_testkit::incus::{
    BUSYBOX_IMAGE, CREATED_KEY, OWNER_KEY, TrustedClient, require_incus, self_signed_certificate,
};
use veza_testkit::{TestContainer, free_port};

fn name(tag: &str) -> String {
    format!("vt-incus-{}-{tag}", std::process::id())
}

fn unix_now() -> String {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).to_string()
}

fn cfg(pairs: &[(&str, &str)]) -> Config {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The test owner marks, which every desired config must keep (an update replaces the
/// whole settable config).
fn owner_marks() -> Config {
    cfg(&[(OWNER_KEY, &std::process::id().to_string()), (CREATED_KEY, &unix_now())])
}

fn spec(tag: &str, start: bool) -> InstanceSpec {
    let mut s = InstanceSpec::container(name(tag), BUSYBOX_IMAGE);
    s.config = owner_marks();
    s.config.insert(MARK_APP.into(), "web".into());
    s.config.insert(MARK_RELEASE.into(), "rel-1".into());
    s.start = start;
    s
}

fn proxy(host_port: u16) -> Device {
    cfg(&[
        ("type", "proxy"),
        ("listen", &format!("tcp:127.0.0.1:{host_port}")),
        ("connect", "tcp:127.0.0.1:8080"),
    ])
}

fn incus_cli(args: &[&str]) -> Cmd {
    Cmd::new("incus").args(args).timeout(Duration::from_secs(120))
}

/// Deletes what a test created, by exact name, whatever the test did.
#[derive(Default)]
struct Cleanup {
    instances: Vec<String>,
    profiles: Vec<String>,
    server_keys: Vec<String>,
}

impl Cleanup {
    fn instance(mut self, n: &str) -> Self {
        self.instances.push(n.to_string());
        self
    }
    fn profile(mut self, n: &str) -> Self {
        self.profiles.push(n.to_string());
        self
    }
    fn server_key(mut self, k: &str) -> Self {
        self.server_keys.push(k.to_string());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.instances {
            let _ = incus_cli(&["delete", "--force", n]).output();
        }
        for p in &self.profiles {
            let _ = incus_cli(&["profile", "delete", p]).output();
        }
        for k in &self.server_keys {
            let _ = incus_cli(&["config", "unset", k]).output();
            let _ = incus_cli(&["project", "unset", "default", k]).output();
        }
    }
}

/// One HTTP GET to 127.0.0.1:port; the raw reply.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries `f` for a few seconds (a proxy listener and httpd take a moment).
fn eventually<T>(mut f: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut last = None;
    for _ in 0..50 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("never tried")))
}

async fn exec_log_count(c: &IncusClient, instance: &str) -> usize {
    let r = c
        .raw("GET", &format!("/1.0/instances/{instance}/logs/exec-output"), &[], Vec::new())
        .await
        .expect("listing exec output logs");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("a JSON envelope");
    v["metadata"].as_array().map_or(0, Vec::len)
}

#[test]
fn lifecycle_create_observe_device_snapshot_exec_files_delete() {
    require_incus().unwrap();
    let n = name("life");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        c.create_instance(&spec("life", true)).await.unwrap();

        // Observe: owned, running, no local devices, root disk inherited from `default`.
        let live = c.observe().await.unwrap();
        let inst = &live.instances[&n];
        assert!(inst.is_owned() && !inst.is_protected());
        assert_eq!(inst.status, InstanceStatus::Running);
        assert_eq!(inst.profiles, ["default"]);
        assert!(inst.devices.is_empty(), "{:?}", inst.devices);
        assert_eq!(inst.root_disk_pool(), Some("default"));
        assert_eq!(inst.config[MARK_MANAGED], "true");
        assert_eq!(live.root_pool(), "default");
        assert!(live.profiles.contains_key("default") && live.pools.contains_key("default"));
        assert!(live.networks.contains_key("lo"), "{:?}", live.networks.keys());

        // Add a proxy device on a free loopback port; serve through it.
        let port = free_port().unwrap();
        let mut update = spec("life", true).update();
        update.config = inst.settable_config();
        update.devices.insert("http".into(), proxy(port));
        assert!(c.update_instance(&n, &update).await.unwrap());
        let served = c
            .exec(
                &n,
                &ExecRequest::sh(
                    "mkdir -p /www && echo hello-from-veza > /www/index.html && \
                     httpd -p 127.0.0.1:8080 -h /www",
                ),
            )
            .await
            .unwrap();
        assert_eq!(served.exit_code, 0, "{}", served.stderr_str());
        let reply = eventually(|| http_get(port)).unwrap();
        assert!(reply.contains("hello-from-veza"), "{reply}");
        let live = c.observe().await.unwrap();
        assert_eq!(live.instances[&n].devices["http"], proxy(port));
        assert!(live.instances[&n].expanded_devices.contains_key("http"));

        // Remove it again (a full PUT): the listener goes away.
        update.devices.clear();
        assert!(c.update_instance(&n, &update).await.unwrap());
        let live = c.observe().await.unwrap();
        assert!(live.instances[&n].devices.is_empty());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "listener survived removal");

        // Snapshot.
        let snap = c.create_snapshot(&n, None).await.unwrap();
        assert!(snap.starts_with("veza-"), "{snap}");
        let snaps = c.list_snapshots(&n).await.unwrap();
        assert_eq!(snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), [snap.as_str()]);
        assert!(snaps[0].created().is_some(), "{:?}", snaps[0]);

        // Exec: exit code, stdout and stderr exactly; env, cwd, user; logs cleaned up.
        let out = c
            .exec(&n, &ExecRequest::sh("echo out-line; printf 'err\\tline\\n' >&2; exit 7"))
            .await
            .unwrap();
        assert_eq!(
            (out.exit_code, out.stdout_str(), out.stderr_str()),
            (7, "out-line\n".into(), "err\tline\n".into())
        );
        let mut req = ExecRequest::sh("echo \"$FOO|$(pwd)|$(id -u)|$(id -g)\"");
        req.env.insert("FOO".into(), "bar baz".into());
        req.cwd = Some("/tmp".into());
        req.user = Some(1000);
        req.group = Some(1001);
        let out = c.exec(&n, &req).await.unwrap();
        assert_eq!(out.stdout_str(), "bar baz|/tmp|1000|1001\n", "{}", out.stderr_str());
        assert_eq!(exec_log_count(&c, &n).await, 0, "exec output logs were left behind");

        // Files: binary content, missing parents, mode and owner.
        let content: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let mut file = FilePush::new("/opt/veza/deep/dir/blob.bin", content.clone());
        file.create_parents = true;
        file.mode = 0o640;
        file.uid = 1000;
        push_file_verified(&c, &n, &file).await.unwrap();
        assert_eq!(c.pull_file(&n, &file.path).await.unwrap(), content);
        let st = c
            .exec(
                &n,
                &ExecRequest::sh(
                    "stat -c '%a %u %s' /opt/veza/deep/dir/blob.bin; stat -c %a /opt/veza",
                ),
            )
            .await
            .unwrap();
        assert_eq!(st.stdout_str(), "640 1000 70000\n755\n");
        // Append, then overwrite with a shorter file.
        let mut more = FilePush::new(&file.path, b"tail".to_vec());
        more.append = true;
        c.push_file(&n, &more).await.unwrap();
        assert_eq!(c.pull_file(&n, &file.path).await.unwrap().len(), 70_004);
        push_file_verified(&c, &n, &FilePush::new(&file.path, b"short".to_vec())).await.unwrap();
        // A private (0600) file is private before its content is written, new or over a
        // file with a wider mode or another owner (Incus would keep either).
        let mode_of = |path: &'static str| {
            let c = &c;
            let n = &n;
            async move {
                let req = ExecRequest::sh(format!("stat -c '%a %u' {path}"));
                c.exec(n, &req).await.unwrap().stdout_str().trim().to_string()
            }
        };
        let mut secret = FilePush::new("/etc/veza-app/env", b"PW=s3cret\n".to_vec());
        secret.mode = 0o600;
        secret.create_parents = true;
        push_file_verified(&c, &n, &secret).await.unwrap();
        assert_eq!(mode_of("/etc/veza-app/env").await, "600 0");
        c.exec(&n, &ExecRequest::sh("chmod 644 /etc/veza-app/env")).await.unwrap();
        push_file_verified(&c, &n, &secret).await.unwrap();
        assert_eq!(mode_of("/etc/veza-app/env").await, "600 0", "a wider mode is not kept");
        c.exec(&n, &ExecRequest::sh("chown 1000 /etc/veza-app/env")).await.unwrap();
        push_file_verified(&c, &n, &secret).await.unwrap();
        assert_eq!(mode_of("/etc/veza-app/env").await, "600 0", "another owner is not kept");
        // Already private and owned as asked: written in place (the same inode), never
        // deleted first (a service starting then would find no environment file).
        let inode = || async {
            let req = ExecRequest::sh("stat -c %i /etc/veza-app/env");
            c.exec(&n, &req).await.unwrap().stdout_str().trim().to_string()
        };
        let before = inode().await;
        push_file_verified(&c, &n, &secret).await.unwrap();
        assert_eq!(mode_of("/etc/veza-app/env").await, "600 0");
        assert_eq!(inode().await, before, "kept in place");
        let err = c.pull_file(&n, "/opt/veza").await.unwrap_err();
        assert!(matches!(err, IncusError::NotAFile { .. }), "{err}");
        let err = c.pull_file(&n, "/nope/x").await.unwrap_err();
        assert!(matches!(err, IncusError::NotFound { kind: ResourceKind::File, .. }), "{err}");
        let err = c.push_file(&n, &FilePush::new("/nope/x", "y")).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");

        // Delete (running: stopped first).
        c.delete_instance(&n).await.unwrap();
        assert!(c.instance(&n).await.unwrap().is_none());
        assert!(!c.observe().await.unwrap().instances.contains_key(&n));
        c.delete_instance(&n).await.unwrap();
    });
}

#[test]
fn ensure_instance_twice_makes_no_writes_the_second_time() {
    require_incus().unwrap();
    let n = name("idem");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        let mut desired = spec("idem", true);
        desired.config.insert("limits.memory".into(), "256MiB".into());
        desired.devices.insert("http".into(), proxy(free_port().unwrap()));
        assert_eq!(ensure_instance(&c, &desired).await.unwrap(), Ensured::Created);

        let before = c.writes();
        assert_eq!(ensure_instance(&c, &desired).await.unwrap(), Ensured::Unchanged);
        assert_eq!(c.writes(), before, "the second ensure wrote to the API");

        // A real change writes once, and converges.
        desired.config.insert(MARK_RELEASE.into(), "rel-2".into());
        desired.devices.clear();
        let before = c.writes();
        assert_eq!(
            ensure_instance(&c, &desired).await.unwrap(),
            Ensured::Changed { updated: true, started: false }
        );
        assert_eq!(c.writes(), before + 1);
        let before = c.writes();
        assert_eq!(ensure_instance(&c, &desired).await.unwrap(), Ensured::Unchanged);
        assert_eq!(c.writes(), before);

        // Stopped behind our back: ensure starts it, once.
        c.change_state(&n, &StateChange::stop(Duration::from_secs(10), true)).await.unwrap();
        assert_eq!(
            ensure_instance(&c, &desired).await.unwrap(),
            Ensured::Changed { updated: false, started: true }
        );
        let before = c.writes();
        c.change_state(&n, &StateChange::start()).await.unwrap();
        assert_eq!(ensure_instance(&c, &desired).await.unwrap(), Ensured::Unchanged);
        assert_eq!(c.writes(), before, "start of a running instance wrote");
        let live = c.instance(&n).await.unwrap().unwrap();
        assert_eq!(live.config[MARK_RELEASE], "rel-2");
        assert_eq!(live.config["limits.memory"], "256MiB");
    });
}

#[test]
fn foreign_container_is_observed_but_never_changed() {
    require_incus().unwrap();
    // Created with the incus CLI, without the agent's mark.
    let foreign = TestContainer::busybox().unwrap();
    let n = foreign.name().to_string();
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        let before = c.instance(&n).await.unwrap().expect("the foreign container is observed");
        assert!(!before.is_owned());

        let is_not_owned = |r: Result<(), IncusError>| match r {
            Err(IncusError::NotOwned { kind: ResourceKind::Instance, name }) => name == n,
            other => panic!("expected NotOwned, got {other:?}"),
        };
        let mut takeover = InstanceSpec::container(n.clone(), BUSYBOX_IMAGE);
        takeover.config = owner_marks();
        assert!(is_not_owned(c.create_instance(&takeover).await));
        assert!(is_not_owned(ensure_instance(&c, &takeover).await.map(drop)));
        assert!(is_not_owned(c.update_instance(&n, &takeover.update()).await.map(drop)));
        assert!(is_not_owned(
            c.change_state(&n, &StateChange::stop(Duration::from_secs(5), true)).await
        ));
        assert!(is_not_owned(
            c.change_state(&n, &StateChange::restart(Duration::from_secs(5), true)).await
        ));
        assert!(is_not_owned(c.delete_instance(&n).await));
        assert!(is_not_owned(c.create_snapshot(&n, None).await.map(drop)));
        assert!(is_not_owned(c.delete_snapshot(&n, "x").await));
        assert!(is_not_owned(c.exec(&n, &ExecRequest::sh("touch /owned")).await.map(drop)));
        assert!(is_not_owned(c.push_file(&n, &FilePush::new("/etc/x", "y")).await));
        assert!(prune_snapshots(&c, &n, 0).await.unwrap().is_empty(), "it has no agent snapshots");
        assert_eq!(c.writes(), 0, "a refused call reached the API");

        // Reading is fine.
        assert!(
            String::from_utf8_lossy(&c.pull_file(&n, "/etc/passwd").await.unwrap())
                .contains("root:")
        );

        let after = c.instance(&n).await.unwrap().unwrap();
        assert_eq!(after, before, "the foreign container changed");
        assert!(c.list_snapshots(&n).await.unwrap().is_empty());
        let err = c.delete_instance(&n).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!("`{n}`")) && err.contains("not managed by veza-agent"),
            "{err}"
        );
    });
}

#[test]
fn protected_instance_is_never_deleted() {
    require_incus().unwrap();
    let n = name("prot");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        let mut s = spec("prot", false);
        s.config.insert(MARK_PROTECT.into(), "true".into());
        c.create_instance(&s).await.unwrap();
        let writes = c.writes();
        let err = c.delete_instance(&n).await.unwrap_err();
        assert!(matches!(err, IncusError::Protected { ref name } if *name == n), "{err}");
        assert_eq!(c.writes(), writes);
        assert!(c.instance(&n).await.unwrap().is_some());
        // Other changes are still allowed (snapshots before changes, per the brief).
        let snap = c.create_snapshot(&n, Some("before-change")).await.unwrap();
        assert_eq!(snap, "before-change");
    });
}

#[test]
fn snapshots_are_pruned_to_the_newest_agent_snapshots() {
    require_incus().unwrap();
    let n = name("snap");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        c.create_instance(&spec("snap", false)).await.unwrap();
        c.create_snapshot(&n, Some("manual")).await.unwrap();
        let mut made = Vec::new();
        for _ in 0..4 {
            made.push(c.create_snapshot(&n, None).await.unwrap());
        }
        let unique: std::collections::BTreeSet<_> = made.iter().collect();
        assert_eq!(unique.len(), 4, "{made:?}");
        let deleted = prune_snapshots(&c, &n, 2).await.unwrap();
        assert_eq!(deleted, made[..2]);
        let left: Vec<String> =
            c.list_snapshots(&n).await.unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(left, ["manual".to_string(), made[2].clone(), made[3].clone()]);
        let err = c.delete_snapshot(&n, "never-made").await.unwrap_err();
        assert!(matches!(err, IncusError::NotFound { kind: ResourceKind::Snapshot, .. }), "{err}");
    });
}

#[test]
fn exec_failures_timeouts_and_long_waits() {
    require_incus().unwrap();
    let n = name("exec");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        // Short /wait chunks: a 3 s command needs several `context deadline exceeded` rounds.
        let options =
            ClientOptions { wait_chunk: Duration::from_secs(1), ..ClientOptions::default() };
        let c = IncusClient::new(Transport::local(), options);
        c.create_instance(&spec("exec", true)).await.unwrap();

        let mut slow = ExecRequest::sh("sleep 3; echo done");
        slow.timeout = Duration::from_secs(20);
        let out = c.exec(&n, &slow).await.unwrap();
        assert_eq!((out.exit_code, out.stdout_str()), (0, "done\n".to_string()));

        let mut too_slow = ExecRequest::sh("sleep 4");
        too_slow.timeout = Duration::from_secs(1);
        let err = c.exec(&n, &too_slow).await.unwrap_err();
        assert!(matches!(err, IncusError::Timeout { operation: Some(_), .. }), "{err}");
        assert!(err.to_string().contains("incus operation show"), "{err}");

        let err = c.exec(&n, &ExecRequest::new(["/nonexistent/veza"])).await.unwrap_err();
        assert!(matches!(err, IncusError::Operation { .. }), "{err}");
        assert_eq!(err.incus_message(), Some("Command not found"), "{err}");
        assert!(err.operation().is_some_and(|o| o.starts_with("/1.0/operations/")), "{err}");

        // Only the timed-out exec's two logs (stdout, stderr) remain: nobody read them.
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(exec_log_count(&c, &n).await, 2, "exec output logs were left behind");

        c.change_state(&n, &StateChange::stop(Duration::from_secs(10), true)).await.unwrap();
        let err = c.exec(&n, &ExecRequest::sh("true")).await.unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
    });
}

#[test]
fn operations_left_running_on_an_instance_are_waited_for_within_a_limit() {
    require_incus().unwrap();
    let n = name("busy");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        c.create_instance(&spec("busy", true)).await.unwrap();
        // Someone else's restart, not waited for by its sender (a killed agent's request):
        // the busybox slot takes seconds to shut down cleanly.
        let r = c
            .raw(
                "PUT",
                &format!("/1.0/instances/{n}/state"),
                &[("Content-Type", "application/json")],
                br#"{"action":"restart","timeout":30}"#.to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let mine = vec![n.clone()];

        // Nothing runs on other instances: no wait at all.
        let others =
            c.wait_for_operations(&[name("not-there")], Duration::from_secs(30)).await.unwrap();
        assert!(others.is_empty(), "{others:?}");

        // Past the limit: a clear error naming the instance and the operation.
        let err = c.wait_for_operations(&mine, Duration::from_millis(500)).await.unwrap_err();
        assert!(matches!(err, IncusError::Busy { .. }), "{err}");
        let text = err.to_string();
        for part in [&format!("instance `{n}` is still busy"), "\"Restarting instance\"", "hint"] {
            assert!(text.contains(part), "`{part}` missing in: {text}");
        }

        // Within the limit: waited for, and the instance is free again.
        let waited = c.wait_for_operations(&mine, Duration::from_secs(60)).await.unwrap();
        let what: Vec<&str> = waited.iter().map(|o| o.description.as_str()).collect();
        assert_eq!(what, ["Restarting instance"]);
        assert!(c.wait_for_operations(&mine, Duration::from_secs(1)).await.unwrap().is_empty());
        let mut update = spec("busy", true).update();
        update.config.insert("user.veza-test.after".into(), "restart".into());
        assert!(c.update_instance(&n, &update).await.unwrap());
    });
}

#[test]
fn a_garbled_push_is_caught_by_pulling_back() {
    require_incus().unwrap();
    let n = name("push");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        c.create_instance(&spec("push", true)).await.unwrap();
        let unit = b"[Unit]\nDescription=veza\n\n[Service]\nExecStart=/bin/true\n".to_vec();
        push_file_verified(&c, &n, &FilePush::new("/tmp/app.service", unit.clone())).await.unwrap();

        // The known trap: a form-encoded body writes an empty file and reports success.
        let r = c
            .raw(
                "POST",
                &format!("/1.0/instances/{n}/files?path=/tmp/app.service"),
                &[("Content-Type", "application/x-www-form-urlencoded"), ("X-Incus-write", "overwrite")],
                unit.clone(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let err = verify_file(&c, &n, "/tmp/app.service", &unit).await.unwrap_err();
        assert!(
            matches!(err, IncusError::FileMismatch { expected, actual: 0, .. } if expected == unit.len()),
            "{err}"
        );
        assert!(err.to_string().contains("does not hold what was pushed"), "{err}");

        // Garbled content of the same length is caught too, at the first differing byte.
        let mut garbled = unit.clone();
        garbled[10] ^= 0x20;
        c.push_file(&n, &FilePush::new("/tmp/app.service", garbled)).await.unwrap();
        let err = verify_file(&c, &n, "/tmp/app.service", &unit).await.unwrap_err();
        assert!(matches!(err, IncusError::FileMismatch { first_difference: Some(10), .. }), "{err}");
    });
}

#[test]
fn owned_profiles_are_managed_and_foreign_ones_refused() {
    require_incus().unwrap();
    let p = name("prof");
    let i = name("profuser");
    // Instances first: a profile in use cannot be deleted.
    let _cleanup = Cleanup::default().instance(&i).profile(&p);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        let mut desired = ProfileSpec {
            name: p.clone(),
            description: "veza test profile".into(),
            config: owner_marks(),
            ..ProfileSpec::default()
        };
        desired.config.insert("limits.cpu".into(), "1".into());
        desired
            .devices
            .insert("root".into(), cfg(&[("type", "disk"), ("path", "/"), ("pool", "default")]));
        assert!(ensure_profile(&c, &desired).await.unwrap());
        let writes = c.writes();
        assert!(!ensure_profile(&c, &desired).await.unwrap());
        assert_eq!(c.writes(), writes);
        assert!(c.profile(&p).await.unwrap().unwrap().is_owned());
        let err = c.create_profile(&desired).await.unwrap_err();
        assert!(matches!(err, IncusError::AlreadyExists { .. }), "{err}");

        // An instance using only this profile gets its root disk from it.
        let mut s = spec("profuser", false);
        s.profiles = vec![p.clone()];
        c.create_instance(&s).await.unwrap();
        assert_eq!(c.instance(&i).await.unwrap().unwrap().root_disk_pool(), Some("default"));
        let err = c.delete_profile(&p).await.unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");

        desired.config.insert("limits.cpu".into(), "2".into());
        assert!(c.update_profile(&desired).await.unwrap());
        assert_eq!(c.profile(&p).await.unwrap().unwrap().config["limits.cpu"], "2");

        // `default` is not ours.
        let default = ProfileSpec { name: "default".into(), ..ProfileSpec::default() };
        for r in [
            c.update_profile(&default).await.map(drop),
            c.delete_profile("default").await,
            c.create_profile(&default).await,
        ] {
            assert!(
                matches!(r, Err(IncusError::NotOwned { kind: ResourceKind::Profile, .. })),
                "{r:?}"
            );
        }

        c.delete_instance(&i).await.unwrap();
        c.delete_profile(&p).await.unwrap();
        assert!(c.profile(&p).await.unwrap().is_none());
    });
}

#[test]
fn server_user_config_round_trips() {
    require_incus().unwrap();
    let key = format!("user.veza-test.hwm-{}", std::process::id());
    let _cleanup = Cleanup::default().server_key(&key);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        assert_eq!(c.server_user_config(&key).await.unwrap(), None);
        c.set_server_user_config(&key, Some("1764460000:abc123")).await.unwrap();
        assert_eq!(c.server_user_config(&key).await.unwrap().as_deref(), Some("1764460000:abc123"));
        let writes = c.writes();
        c.set_server_user_config(&key, Some("1764460000:abc123")).await.unwrap();
        assert_eq!(c.writes(), writes);
        c.set_server_user_config(&key, None).await.unwrap();
        assert_eq!(c.server_user_config(&key).await.unwrap(), None);
        let err = c.set_server_user_config("core.https_address", Some(":8443")).await.unwrap_err();
        assert!(matches!(err, IncusError::Invalid { .. }), "{err}");
    });
}

/// The anti-rollback mark's place: the `default` project's config, written only when it
/// changes, every other key of the project kept.
#[test]
fn shared_user_config_round_trips() {
    require_incus().unwrap();
    let key = format!("user.veza-test.shared-{}", std::process::id());
    let other = format!("{key}-other");
    let _cleanup = Cleanup::default().server_key(&key).server_key(&other);
    runtime().unwrap().block_on(async {
        let c = IncusClient::local();
        let value = |k: &str| {
            let k = k.to_string();
            let c = &c;
            async move { c.shared_user_config(&k).await.unwrap().value }
        };
        assert_eq!(value(&key).await, None);
        set_shared_user_config(&c, &other, Some("kept")).await.unwrap();
        set_shared_user_config(&c, &key, Some("abc123")).await.unwrap();
        assert_eq!(value(&key).await.as_deref(), Some("abc123"));
        let writes = c.writes();
        set_shared_user_config(&c, &key, Some("abc123")).await.unwrap();
        assert_eq!(c.writes(), writes, "an unchanged value is not written");
        set_shared_user_config(&c, &key, None).await.unwrap();
        assert_eq!(value(&key).await, None);
        assert_eq!(value(&other).await.as_deref(), Some("kept"), "other keys are kept");
        let err = set_shared_user_config(&c, "features.images", Some("false")).await.unwrap_err();
        assert!(matches!(err, IncusError::Invalid { .. }), "{err}");
    });
}

#[test]
fn errors_name_the_request_and_incus_reason() {
    require_incus().unwrap();
    let n = name("err");
    let _cleanup = Cleanup::default().instance(&n);
    runtime().unwrap().block_on(async {
        // No daemon behind the socket.
        let c = IncusClient::unix("/nonexistent/incus.socket");
        let err = c.observe().await.unwrap_err();
        assert!(matches!(err, IncusError::Connect { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/incus.socket") && msg.contains("No such file"), "{msg}");

        let c = IncusClient::local();
        let mut s = spec("err", false);
        s.source = veza_host::incus::ImageSource::local("veza-no-such-image");
        let err = c.create_instance(&s).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, IncusError::Operation { .. }), "{msg}");
        assert!(msg.contains("POST /1.0/instances") && msg.contains("veza-no-such-image"), "{msg}");

        let err = c.update_instance(&n, &s.update()).await.unwrap_err();
        assert!(matches!(err, IncusError::NotFound { kind: ResourceKind::Instance, .. }), "{err}");
        let err = c.instance("../profiles/default").await.unwrap_err();
        assert!(matches!(err, IncusError::Invalid { .. }), "{err}");

        // Incus's own rejection: an unknown non-user key.
        c.create_instance(&spec("err", false)).await.unwrap();
        let mut bad = spec("err", false).update();
        bad.config.insert("veza.release".into(), "x".into());
        let err = c.update_instance(&n, &bad).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("PUT /1.0/instances/{n}"))
                && msg.contains("Unknown configuration key"),
            "{msg}"
        );
    });
}

/// A managed network is created with the agent's mark (no addresses, no NAT: nothing is
/// routed); creating it again is `AlreadyExists`, and a foreign bridge is `NotOwned`.
#[test]
fn managed_network_is_created_marked_and_never_taken_over() {
    require_incus().expect("real incusd");
    let ours = format!("vtn{}", std::process::id() % 100_000);
    let foreign = format!("vtf{}", std::process::id() % 100_000);
    struct Nets(Vec<String>);
    impl Drop for Nets {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = incus_cli(&["network", "delete", n]).output();
            }
        }
    }
    let _nets = Nets(vec![ours.clone(), foreign.clone()]);
    let quiet = cfg(&[("ipv4.address", "none"), ("ipv6.address", "none")]);
    let rt = runtime().expect("runtime");
    rt.block_on(async {
        let c = IncusClient::local();
        c.create_network(&ours, "bridge", &quiet).await.expect("create the bridge");
        let live = c.observe().await.expect("observe");
        let net = live.networks.get(&ours).expect("the bridge is observed");
        assert!(net.managed);
        assert_eq!(net.config.get(MARK_MANAGED).map(String::as_str), Some("true"));
        let again = c.create_network(&ours, "bridge", &quiet).await.unwrap_err();
        assert!(matches!(again, IncusError::AlreadyExists { .. }), "{again}");
        incus_cli(&["network", "create", &foreign, "ipv4.address=none", "ipv6.address=none"])
            .run()
            .expect("a foreign bridge");
        let theirs = c.create_network(&foreign, "bridge", &quiet).await.unwrap_err();
        assert!(matches!(theirs, IncusError::NotOwned { .. }), "{theirs}");
    });
}

/// The HTTPS transport (the way past one machine): a client certificate the server
/// trusts, the server certificate pinned. Observed through HTTPS = observed through the
/// socket, and a change made over HTTPS is seen over the socket; a client certificate the
/// server does not trust is refused by incusd; a server certificate other than the pinned
/// one is refused before any request is sent. The listener itself is opened once by
/// tests/host/setup (never toggled here); only the trust entry is added and removed.
#[test]
fn https_transport_with_a_client_certificate_and_a_pinned_server() {
    let client = TrustedClient::new().expect("a client certificate incusd trusts");
    let dir = tempfile::tempdir().expect("tempdir");
    let (stranger_cert, stranger_key) =
        self_signed_certificate(dir.path(), "veza-agent-stranger").expect("openssl");
    let profile = name("https-profile");
    let _cleanup = Cleanup::default().profile(&profile);
    let https =
        |client_cert: &std::path::Path, client_key: &std::path::Path, pinned: &std::path::Path| {
            IncusClient::new(
                Transport::Https {
                    url: client.url.clone(),
                    client_cert: client_cert.to_path_buf(),
                    client_key: client_key.to_path_buf(),
                    server_cert: pinned.to_path_buf(),
                },
                ClientOptions::default(),
            )
        };
    let rt = runtime().expect("runtime");
    rt.block_on(async {
        let trusted = https(&client.cert, &client.key, &client.server_cert);
        let local = IncusClient::local();
        let before = local.observe().await.expect("observe over the socket");
        let remote = trusted.observe().await.expect("observe over HTTPS");
        assert_eq!(
            remote.pools.keys().collect::<Vec<_>>(),
            before.pools.keys().collect::<Vec<_>>()
        );
        assert_eq!(
            remote.profiles.keys().collect::<Vec<_>>(),
            before.profiles.keys().collect::<Vec<_>>()
        );

        // A write over HTTPS: create a marked profile, see it through the socket, delete it.
        let p = ProfileSpec {
            name: profile.clone(),
            description: "made over HTTPS".into(),
            config: owner_marks(),
            ..ProfileSpec::default()
        };
        assert!(ensure_profile(&trusted, &p).await.expect("create a profile over HTTPS"));
        let seen = local.observe().await.expect("observe over the socket");
        assert!(seen.profiles.contains_key(&profile), "profile made over HTTPS is not visible");
        trusted.delete_profile(&profile).await.expect("delete the profile over HTTPS");
        let after = local.observe().await.expect("observe over the socket");
        assert!(!after.profiles.contains_key(&profile));

        // A certificate incusd does not trust: the TLS session works, incusd refuses.
        let err =
            https(&stranger_cert, &stranger_key, &client.server_cert).observe().await.unwrap_err();
        assert!(matches!(err, IncusError::Api { status: 403, .. }), "{err}");
        assert!(err.to_string().contains("not trusted by this incusd"), "{err}");

        // Pinning another certificate than the server's: refused during the handshake.
        let err = https(&client.cert, &client.key, &client.cert).observe().await.unwrap_err();
        assert!(matches!(err, IncusError::Connect { .. } | IncusError::Transport { .. }), "{err}");
        assert!(err.to_string().contains("pinned"), "{err}");
    });
}
