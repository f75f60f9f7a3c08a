//! End to end, driven only through the `veza-agent` command line against the real test
//! host: real incusd, real HAProxy in master-worker mode, real signed commits served
//! over smart HTTP on 127.0.0.1 (see `veza_testkit::demo`).

use std::time::Duration;

use veza_testkit::demo::DemoHost;

use crate::support::{agent, apply_ok, host, status_forge};
use veza_testkit::incus::TrustedClient;
use veza_testkit::traffic::Traffic;

/// `veza-agent apply` for `h`, detached, its output in `log`; returns its pid.
fn spawn_apply(h: &DemoHost, log: &std::path::Path) -> u32 {
    let agent = std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent"));
    veza_testkit::cli::spawn(agent, &h.config_path, "apply", log)
}

fn status_json(h: &DemoHost) -> serde_json::Value {
    let (_, out, err) = agent(h, &["status", "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json: {e}\n{out}\n{err}"))
}

#[test]
fn first_sync_builds_the_environment_and_a_second_sync_changes_nothing() {
    let h = host();
    let commit = h.commit(&h.manifest("blue", Some(0), None), "hello on blue").unwrap();
    let (code, out, err) = agent(&h, &["plan"]);
    assert_eq!(code, 2, "pending changes exit 2:\n{out}\n{err}");
    assert!(out.contains(&format!("create instance {}-hello-blue", h.env)), "{out}");
    let out = apply_ok(&h);
    assert!(out.starts_with(&format!("applied {}", &commit[..12])), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    // No change: exit 0 from plan, and apply writes nothing (the edge config file and the
    // slot's config stay byte-identical).
    let edge_before = std::fs::read(h.haproxy.config_path()).unwrap();
    let slot_before = incus_config(&format!("{}-hello-blue", h.env));
    let (code, out, _) = agent(&h, &["plan"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no changes"), "{out}");
    let out = apply_ok(&h);
    assert!(out.starts_with("no-change"), "{out}");
    assert!(out.contains("(0 steps"), "{out}");
    assert_eq!(std::fs::read(h.haproxy.config_path()).unwrap(), edge_before);
    assert_eq!(incus_config(&format!("{}-hello-blue", h.env)), slot_before);
    let st = status_json(&h);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], commit);
    assert_eq!(st["state"]["applied"]["signer"], "forgejo@forge.example");
}

/// A host whose first sync deployed release 0 on blue and serves it (no green slot).
fn serving_blue() -> DemoHost {
    let h = host();
    h.commit(&h.manifest("blue", Some(0), None), "blue").expect("commit blue");
    apply_ok(&h);
    h
}

/// `incus ARGS`' output, trimmed.
fn incus(args: &[&str]) -> String {
    let out = veza_host::process::Cmd::new("incus").args(args.iter().copied()).run_stdout();
    out.unwrap_or_else(|e| panic!("incus {args:?}: {e}")).trim().to_string()
}

fn incus_config(name: &str) -> String {
    veza_host::process::Cmd::new("incus")
        .args(["config", "show", name])
        .run_stdout()
        .unwrap_or_else(|e| panic!("incus config show {name}: {e}"))
}

#[test]
fn promotion_to_a_healthy_green_switches_with_zero_failed_requests() {
    let h = host();
    h.commit(&h.manifest("blue", Some(0), Some(1)), "blue and green deployed").unwrap();
    apply_ok(&h);
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").unwrap();
    let traffic = Traffic::start(&h, 3, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(200));
    let out = apply_ok(&h);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = traffic.stop();
    assert!(ok > 20, "the request loop ran ({ok} ok)");
    assert_eq!(failed, 0, "{failed} requests failed during the switch ({ok} ok)\n{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[1].id);
    let st = status_json(&h);
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "green", "{st:#}");
}

#[test]
fn promotion_to_a_broken_release_rolls_back_and_is_not_retried() {
    let h = serving_blue();
    // Release 2's /health answers 503: the gate fails, traffic stays on blue.
    let bad = h.commit(&h.manifest("green", Some(0), Some(2)), "promote broken green").unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.starts_with(&format!("rolled-back {}", &bad[..12])), "{out}");
    assert!(out.contains("/health answered 503"), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id, "traffic stayed on blue");
    let st = status_json(&h);
    assert_eq!(st["health"], "attention");
    assert!(st["headline"].as_str().unwrap().contains("rolled back"), "{st:#}");
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["last_outcome"], "rolled-back");
    // The failed slot is kept for forensics.
    assert!(incus_config(&format!("{}-hello-green", h.env)).contains(&h.releases[2].id));
    // The commit is quarantined: the next sync does not retry it.
    // It did nothing, and says so: not `rolled-back` again.
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("quarantined {}", &bad[..12])), "{out}");
    assert!(out.contains("(0 steps"), "{out}");
    let metrics = std::fs::read_to_string(h.dir.join("veza-agent.prom")).unwrap_or_default();
    assert!(metrics.contains("veza_agent_quarantined 1\n"), "{metrics}");
    // `plan` decides as `apply` does: it shows no promotion for the quarantined commit.
    let (code, out, err) = agent(&h, &["plan"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains(&format!("quarantined {bad}")), "{out}\n{err}");
    assert!(!out.contains("promote "), "{out}");
    // A newer commit (the revert) is applied.
    h.commit(&h.manifest("blue", Some(0), None), "revert").unwrap();
    apply_ok(&h);
    assert_eq!(status_json(&h)["health"], "ok");
}

#[test]
fn unsigned_and_untrusted_commits_change_nothing_and_status_says_why() {
    let h = serving_blue();
    let edge_before = std::fs::read(h.haproxy.config_path()).unwrap();

    let unsigned = h.commit_unsigned(&h.manifest("blue", Some(1), None), "sneaky").unwrap();
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("rejected {}", &unsigned[..12])), "{out}");
    assert!(out.contains("not signed"), "{out}");
    let st = status_json(&h);
    assert!(
        st["headline"].as_str().unwrap().contains("rejected: signature: commit is not signed"),
        "{st:#}"
    );
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);
    assert_eq!(std::fs::read(h.haproxy.config_path()).unwrap(), edge_before);

    h.repo.write(&h.manifest_path(), &h.manifest("blue", Some(1), None)).unwrap();
    let untrusted = h.repo.commit_signed(&h.mallory, "mallory's change").unwrap();
    h.repo.push().unwrap();
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1);
    assert!(out.starts_with(&format!("rejected {}", &untrusted[..12])), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);
    let (_, hist, _) = agent(&h, &["history", "--json"]);
    let rejected = hist.lines().filter(|l| l.contains("\"rejected\"")).count();
    assert_eq!(rejected, 2, "{hist}");
}

#[test]
fn force_push_to_an_older_commit_is_refused_even_after_the_state_dir_is_wiped() {
    let h = host();
    let a = h.commit(&h.manifest("blue", Some(0), None), "A").unwrap();
    apply_ok(&h);
    // B changes nothing on the host (one slot is enough): applying it moves the mark.
    let b = h.commit(&format!("{}# B\n", h.manifest("blue", Some(0), None)), "B").unwrap();
    apply_ok(&h);
    h.repo.force_reset(&a).unwrap();
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not descend from the last applied commit"), "{out}");
    // Wipe the state directory: the high-water mark mirrored in Incus still refuses A.
    std::fs::remove_dir_all(h.dir.join("state")).unwrap();
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("rejected"), "{out}");
    // The mark is in the `default` project's config, its copy for agents before 2026-12 in
    // the server config; the newer of the two counts, and B, which the forge no longer
    // serves, wins over A either way (A is refused as a rewrite of history).
    let key = format!("user.veza-agent.applied.{}", h.env);
    assert_eq!(incus(&["project", "get", "default", &key]), b);
    assert_eq!(incus(&["config", "get", &key]), b, "the copy");
    // (project, copy): A is refused with B in either place.
    for (project, copy) in [(None, Some(&b)), (Some(&a), Some(&b)), (Some(&b), Some(&a))] {
        match project {
            Some(c) => incus(&["project", "set", "default", &key, c]),
            None => incus(&["project", "unset", "default", &key]),
        };
        match copy {
            Some(c) => incus(&["config", "set", &key, c]),
            None => incus(&["config", "unset", &key]),
        };
        let (code, out, _) = agent(&h, &["apply"]);
        assert_eq!(code, 1, "{project:?} {copy:?}: {out}");
        assert!(out.starts_with("rejected"), "{project:?} {copy:?}: {out}");
    }

    // C fails part-way (green is created, then its artifact's digest does not match):
    // part of it landed, so the forge may not serve B again to undo that.
    h.repo.force_reset(&b).unwrap();
    apply_ok(&h);
    // Written again in both places.
    assert_eq!(incus(&["project", "get", "default", &key]), b);
    assert_eq!(incus(&["config", "get", &key]), b);
    let broken =
        h.manifest("blue", Some(0), Some(1)).replace(&h.releases[1].sha256, &"0".repeat(64));
    h.commit(&broken, "C: green with a wrong digest").unwrap();
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("failed"), "{out}");
    h.repo.force_reset(&b).unwrap();
    let (code, out, _) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("does not descend from the last applied commit"), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);
}

#[test]
fn a_newer_commit_preempts_a_health_wait() {
    let h = serving_blue();
    // A promotion to the broken release waits for health (up to 15 s in this config)...
    h.commit(&h.manifest("green", Some(0), Some(2)), "promote broken green").unwrap();
    let log = h.dir.join("preempted-apply.log");
    let started = std::time::Instant::now();
    let pid = spawn_apply(&h, &log);
    let journal = h.dir.join("state/journal.json");
    for _ in 0..3000 {
        if std::fs::read_to_string(&journal).is_ok_and(|j| j.contains(": gate ")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...and a newer signed commit (the revert) lands while it waits.
    let newer =
        h.commit(&h.manifest("blue", Some(0), Some(1)), "revert, deploy 1 on green").unwrap();
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("preempted by a newer commit"), "{text}");
    assert!(!text.contains("was not healthy after"), "the wait ran to its timeout: {text}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id, "traffic never moved");
    let out = apply_ok(&h);
    assert!(out.starts_with(&format!("applied {}", &newer[..12])), "{out}");
}

/// Past one machine: an agent whose host configuration names a remote incusd
/// (`incus.endpoint`, client certificate, pinned server certificate) does all its Incus
/// work over HTTPS. The unix socket it would otherwise use points nowhere, so a single
/// request through it would fail the sync.
#[test]
fn an_agent_configured_for_a_remote_incusd_works_over_https() {
    let mut client = TrustedClient::new().expect("a client certificate incusd trusts");
    let h = host();
    let mut config = std::fs::read_to_string(&h.config_path).unwrap();
    config.push_str(&format!(
        "incus:\n  socket: {dir}/no-such-incus.socket\n  endpoint: {url}\n  \
         client_cert: {cert}\n  client_key: {key}\n  server_cert: {server}\n",
        dir = h.dir.display(),
        url = client.url,
        cert = client.cert.display(),
        key = client.key.display(),
        server = client.server_cert.display(),
    ));
    std::fs::write(&h.config_path, config).unwrap();

    let commit = h.commit(&h.manifest("blue", Some(0), None), "hello on blue, via HTTPS").unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with(&format!("applied {}", &commit[..12])), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);
    let out = apply_ok(&h);
    assert!(out.starts_with("no-change"), "{out}");
    let st = status_json(&h);
    assert_eq!(st["health"], "ok", "{st:#}");

    // The same configuration without the trusted certificate: the sync fails and says
    // that incusd refused the client (and nothing was reached through the socket).
    client.revoke().expect("take the certificate out of incusd's trust");
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "apply with an untrusted certificate succeeded:\n{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("HTTP 403") && said.contains("not trusted by this incusd"), "{said}");
}

/// Waits (bounded) until the app in a slot answers on its loopback port with `release`.
fn slot_serves(port: u16, release: &str, within: Duration) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut last = String::from("no request made");
    while start.elapsed() < within {
        match veza_host::http::get(
            &format!("127.0.0.1:{port}"),
            "localhost",
            "/health",
            Duration::from_secs(1),
        ) {
            Ok(r)
                if r.status == 200
                    && r.headers.get("x-release").map(String::as_str) == Some(release) =>
            {
                return Ok(());
            }
            Ok(r) => last = format!("answered {} {:?}", r.status, r.headers.get("x-release")),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("not serving {release} on 127.0.0.1:{port} after {within:?}: {last}"))
}

fn in_slot(name: &str, script: &str) -> String {
    veza_host::process::Cmd::new("incus")
        .args(["exec", name, "--", "sh", "-c", script])
        .timeout(Duration::from_secs(60))
        .run_stdout()
        .unwrap_or_else(|e| panic!("incus exec {name}: {e}"))
}

/// The app in a slot is supervised by the slot's init: killed, it comes back; after a
/// restart of the slot, it comes back — without a sync (status would otherwise show the
/// active color DOWN until the next deploy). `image` picks busybox init (`respawn`) or
/// systemd (`veza-app.service`).
fn app_survives_crash_and_slot_restart(image: Option<&str>, supervisor: &str) {
    let h = host();
    // The start command keeps a shell as the app's parent (no `exec`): stopping the app
    // must stop its whole process group, or the old server keeps the port.
    let mut manifest = h.manifest("blue", Some(0), None).replacen(
        "    port: 8080\n",
        "    port: 8080\n    start: \"{dir}/start.sh & wait\"\n",
        1,
    );
    assert!(manifest.contains("start.sh & wait"), "{manifest}");
    if let Some(image) = image {
        manifest = manifest.replace("image: veza-test-busybox", &format!("image: {image}"));
    }
    h.commit(&manifest, "hello on blue").expect("commit");
    apply_ok(&h);
    let [blue, _] = h.slots();
    let (port, release) = (h.slot_ports.0, h.releases[0].id.clone());
    slot_serves(port, &release, Duration::from_secs(10)).expect("deployed app serves");
    let how = match supervisor {
        "systemd" => {
            "systemctl is-enabled veza-app.service && systemctl is-active veza-app.service"
        }
        _ => "grep -c '^::respawn:/etc/veza-app/run$' /etc/inittab",
    };
    let said = in_slot(&blue, how);
    assert!(said.contains(if supervisor == "systemd" { "active" } else { "1" }), "{said}");

    // The app dies (its whole process group): its supervisor starts it again.
    let pid = in_slot(&blue, "cut -d' ' -f1 /run/veza-app.pid").trim().to_string();
    in_slot(&blue, &format!("kill -9 -{pid}"));
    let started = std::time::Instant::now();
    while in_slot(&blue, "cut -d' ' -f1 /run/veza-app.pid 2>/dev/null || true").trim() == pid {
        assert!(started.elapsed() < Duration::from_secs(20), "the app was not restarted");
        std::thread::sleep(Duration::from_millis(200));
    }
    slot_serves(port, &release, Duration::from_secs(20)).expect("app back after a crash");

    // The slot restarts: the app comes back with it.
    veza_host::process::Cmd::new("incus")
        .args(["restart", &blue, "--timeout", "30"])
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap_or_else(|e| panic!("incus restart {blue}: {e}"));
    slot_serves(port, &release, Duration::from_secs(40)).expect("app back after a restart");
    let out = apply_ok(&h);
    assert!(out.starts_with("no-change"), "nothing to repair after the restart: {out}");

    // Stopped: the next sync starts the slot and deploys again, replacing the app its
    // supervisor started at boot — one server process afterwards, not two.
    veza_host::process::Cmd::new("incus")
        .args(["stop", &blue, "--timeout", "30"])
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap_or_else(|e| panic!("incus stop {blue}: {e}"));
    let out = apply_ok(&h);
    assert!(!out.starts_with("no-change"), "a stopped slot is work to do: {out}");
    slot_serves(port, &release, Duration::from_secs(20)).expect("app serves after start + deploy");
    std::thread::sleep(Duration::from_millis(500));
    // Every app server's process group: exactly one, the supervised run script's.
    let groups = in_slot(
        &blue,
        "for p in /proc/[0-9]*; do if tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^[^ ]*veza-testapp --listen'; then \
         cut -d' ' -f5 $p/stat; fi; done",
    );
    let leader = in_slot(&blue, "cut -d' ' -f1 /run/veza-app.pid").trim().to_string();
    assert_eq!(groups.trim(), leader, "app servers' process groups vs the supervised app");
}

#[test]
fn the_app_comes_back_after_a_crash_and_a_slot_restart_under_busybox_init() {
    app_survives_crash_and_slot_restart(None, "init");
}

#[test]
fn the_app_comes_back_after_a_crash_and_a_slot_restart_under_systemd() {
    app_survives_crash_and_slot_restart(Some(veza_testkit::incus::DEBIAN_IMAGE), "systemd");
}

/// Release artifacts packed as the runbook promises ("What a release artifact must
/// contain"): a `.tar.zst` (what prod ships) and a plain `.tar` are deployed into Debian
/// slots whose image has no `zstd`, and serve. (`.tar.gz` is what every other test ships.)
#[test]
fn zstd_and_plain_tar_release_artifacts_are_deployed_into_slots_without_zstd() {
    let h = host();
    let dir = tempfile::tempdir().unwrap();
    let run = |program: &str, args: &[&str]| {
        veza_host::process::Cmd::new(program)
            .args(args)
            .timeout(Duration::from_secs(60))
            .run()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
    };
    // The kit's `.tar.gz` of a release, repacked with the real tools as `.tar` or `.tar.zst`.
    let repack = |i: usize, name: &str| -> String {
        let release = &h.releases[i].id;
        let src = h.dir.join("artifacts").join(release).join("hello.tar.gz");
        let tar = dir.path().join(format!("{release}.tar"));
        let tar = tar.to_str().unwrap();
        run("sh", &["-c", "gzip -dc -- \"$1\" > \"$2\"", "sh", src.to_str().unwrap(), tar]);
        let dest = h.dir.join("artifacts").join(release).join(name);
        if name.ends_with(".zst") {
            run("zstd", &["-q", "-19", "-f", "-o", dest.to_str().unwrap(), tar]);
        } else {
            std::fs::copy(tar, &dest).unwrap();
        }
        veza_host::artifact::sha256_hex(&std::fs::read(&dest).unwrap())
    };
    // The manifest on the Debian image, with artifacts named `name` and their digests.
    let debian = |m: String, name: &str, shas: &[(usize, &str)]| {
        let mut m = m
            .replace(
                "image: veza-test-busybox",
                &format!("image: {}", veza_testkit::incus::DEBIAN_IMAGE),
            )
            .replace("/hello.tar.gz\"", &format!("/{name}\""));
        for (i, sha) in shas {
            m = m.replace(&h.releases[*i].sha256, sha);
        }
        m
    };

    // Blue from a .tar.zst.
    let zst = repack(0, "hello.tar.zst");
    let m = debian(h.manifest("blue", Some(0), None), "hello.tar.zst", &[(0, &zst)]);
    h.commit(&m, "blue: zst").unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with("applied"), "{out}");
    let [blue, green] = h.slots();
    let zstd = in_slot(&blue, "command -v zstd || echo none");
    assert_eq!(zstd.trim(), "none", "the slot image must lack zstd for this test to mean anything");
    slot_serves(h.slot_ports.0, &h.releases[0].id, Duration::from_secs(20)).expect("zst release");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    // Green from a plain .tar.
    let tars = [repack(0, "hello.tar"), repack(1, "hello.tar")];
    let m =
        debian(h.manifest("blue", Some(0), Some(1)), "hello.tar", &[(0, &tars[0]), (1, &tars[1])]);
    h.commit(&m, "green: plain tar").unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with("applied"), "{out}");
    slot_serves(h.slot_ports.1, &h.releases[1].id, Duration::from_secs(20)).expect("tar release");
    assert!(in_slot(&green, "ls /opt/veza/hello").contains("start.sh"));
}

/// HAProxy running without the master socket the agent reloads through (Debian's unit
/// with its own EXTRAOPTS): the agent cannot tell it from a stopped HAProxy, leaves the
/// config on disk, and says so, naming the socket and the fix.
#[test]
fn an_edge_without_its_master_socket_is_reported_not_silently_left_on_disk() {
    let h = host();
    let socket = h.haproxy.master_socket().display().to_string();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let elsewhere = h.dir.join("no-such-master.sock").display().to_string();
    assert!(config.contains(&socket), "{config}");
    std::fs::write(&h.config_path, config.replace(&socket, &elsewhere)).unwrap();
    h.commit(&h.manifest("blue", Some(0), None), "hello on blue").unwrap();
    let started_with = std::fs::read(h.haproxy.config_path()).unwrap();

    let (code, out, err) = agent(&h, &["apply"]);

    // Over the config HAProxy was started with, the switch is not taken for done: the
    // promotion fails there, naming the socket and the fix.
    assert_eq!(code, 1, "the edge does not serve the release:\n{out}\n{err}");
    assert!(
        out.contains(&format!("HAProxy did not answer on its master socket `{elsewhere}`"))
            && out.contains("is not serving")
            && out.contains("hint: start HAProxy with `-S"),
        "{out}\n{err}"
    );
    assert!(out.starts_with("failed "), "{out}");
    // The config on disk is the one HAProxy runs: a restart loads nothing unchecked.
    assert!(out.contains("the earlier config is back in place"), "{out}");
    assert_eq!(std::fs::read(h.haproxy.config_path()).unwrap(), started_with);
    // Until HAProxy answers, the earlier config counts as live: the next apply tries the
    // switch again rather than take the file on disk for what serves.
    let (code, again, err) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{again}\n{err}");
    assert!(again.contains("did not answer on its master socket"), "{again}\n{err}");
    // The running HAProxy still serves what it was started with.
    assert_eq!(h.get("/").unwrap().status, 503);
}

/// What the minimal example's first lines promise, done by the test: its instance, host
/// mark and artifact path are fixed names, removed on drop.
struct MinimalExample {
    artifact_dir: std::path::PathBuf,
}

impl MinimalExample {
    const SLOTS: [&str; 2] = ["demo-hello-blue", "demo-hello-green"];

    fn clean() {
        for name in Self::SLOTS {
            let _ = veza_host::process::Cmd::new("incus")
                .args(["delete", "--force", name])
                .timeout(Duration::from_secs(60))
                .output();
        }
        let _ = veza_host::process::Cmd::new("incus")
            .args(["project", "unset", "default", "user.veza-agent.applied.localhost"])
            .timeout(Duration::from_secs(30))
            .output();
        let _ = veza_host::process::Cmd::new("incus")
            .args(["config", "unset", "user.veza-agent.applied.localhost"])
            .timeout(Duration::from_secs(30))
            .output();
        let _ = veza_host::process::Cmd::new("incus")
            .args(["project", "unset", "default", "user.veza-agent.landed.localhost"])
            .timeout(Duration::from_secs(30))
            .output();
    }
}

impl Drop for MinimalExample {
    fn drop(&mut self) {
        Self::clean();
        let _ = std::fs::remove_dir_all(&self.artifact_dir);
    }
}

/// `manifests/examples/minimal.yaml` runs as shipped (byte for byte) on a machine prepared
/// by tests/host/setup, following the steps its header comment gives.
#[test]
fn the_minimal_example_runs_as_shipped() {
    use veza_testkit::repo::{RepoBuilder, SigningKey, allowed_signers};
    veza_testkit::require_host().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("manifests/examples/minimal.yaml")).unwrap();
    // The header's steps: the release where the URL points, `host: localhost`.
    let install = example
        .lines()
        .skip_while(|l| !l.contains("install -D -m 0644 manifests/examples/hello.tar.gz"))
        .nth(1)
        .expect("the header says where the artifact goes");
    let dest = install.trim_start_matches(['#', ' ']);
    let url = format!(
        "url: \"file://{}\"",
        dest.replace("1111111111111111111111111111111111111111", "{release}")
    );
    assert!(example.contains(&url), "the header's path is the artifact URL: {url}");
    let artifact_dir = std::path::Path::new("/var/lib/veza-agent-demo");
    // A run killed before its cleanup left its owner mark: that leftover is removed; a
    // directory anyone else made is never touched.
    let owner_mark = artifact_dir.join(".veza-test-owner");
    if let Ok(owner) = std::fs::read_to_string(&owner_mark) {
        let pid = owner.trim().parse::<u32>().unwrap_or(0);
        if pid != 0 && !veza_testkit::proc::process_alive(pid) {
            std::fs::remove_dir_all(artifact_dir).unwrap();
        }
    }
    assert!(!artifact_dir.exists(), "{} is in the way", artifact_dir.display());
    MinimalExample::clean();
    let _guard = MinimalExample { artifact_dir: artifact_dir.to_path_buf() };
    std::fs::create_dir_all(std::path::Path::new(dest).parent().unwrap()).unwrap();
    std::fs::write(&owner_mark, std::process::id().to_string()).unwrap();
    std::fs::copy(root.join("manifests/examples/hello.tar.gz"), dest).unwrap();

    // A host as the runbook sets one up: a signed repository holding the example, HAProxy
    // in master-worker mode with its master socket, a configuration for `localhost`.
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate(&dir.path().join("keys"), "forgejo").unwrap();
    let repos = dir.path().join("repos");
    let repo = RepoBuilder::with_name(&repos, "manifests.git").unwrap();
    repo.commit_files_signed(&key, &[("manifests/examples/minimal.yaml", &example)], "example")
        .unwrap();
    let server = veza_testkit::http::GitHttpServer::start(&repos).unwrap();
    let trust = dir.path().join("allowed_signers");
    std::fs::write(&trust, allowed_signers(&[("forgejo@forge.example", &key)])).unwrap();
    let haproxy = veza_testkit::Haproxy::start_with(|d| {
        format!(
            "global\n    master-worker\n    stats socket {d}/admin.sock mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n\
             frontend fe\n    bind 127.0.0.1:18100\n    http-request return status 503\n",
            d = d.display()
        )
    })
    .unwrap();
    let hd = haproxy.dir().display().to_string();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "host: localhost\nsource:\n  remotes: [\"{url}\"]\n  branch: main\n  manifests: [manifests/examples/minimal.yaml]\n\
             trust:\n  allowed_signers: {trust}\nstate_dir: {state}\n\
             edge:\n  config_path: {cfg}\n  master_socket: {master}\n  state_file: {hd}/server-state\n  stats_socket: {hd}/admin.sock\n\
             systemd: {{unit_dir: {units}}}\n",
            url = server.url("manifests.git"),
            trust = trust.display(),
            state = dir.path().join("state").display(),
            cfg = haproxy.config_path().display(),
            master = haproxy.master_socket().display(),
            units = dir.path().join("units").display(),
        ),
    )
    .unwrap();

    let out = veza_host::process::Cmd::new(env!("CARGO_BIN_EXE_veza-agent"))
        .args(["apply", "--config"])
        .arg(&config)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}\n{}", out.stdout_str(), out.stderr_str());
    let r = veza_host::http::get("127.0.0.1:18100", "demo.localhost", "/", Duration::from_secs(3))
        .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello from veza-agent\n"[..]));
}

/// The approval policy, through the agent: a change to the environment's manifest needs
/// two distinct approvers (commit signature or signed approval tags for `refs/heads/main`).
/// It holds on the very first sync too (a new or wiped host is no way around it), a tag
/// approving another ref does not count, and a second approval tag lets the commit in.
#[test]
fn the_approval_policy_holds_from_the_first_sync_and_counts_signed_tags() {
    use veza_testkit::repo::{SigningKey, allowed_signers};
    let h = host();
    let keys = h.dir.join("keys");
    let alice = SigningKey::generate(&keys, "alice").unwrap();
    let bob = SigningKey::generate(&keys, "bob").unwrap();
    std::fs::write(
        h.dir.join("allowed_signers"),
        allowed_signers(&[
            ("forgejo@forge.example", &h.forgejo),
            ("alice@example.com", &alice),
            ("bob@example.com", &bob),
        ]),
    )
    .unwrap();
    let policy = h.dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "publishers: [forgejo@forge.example]\napproval_ref: refs/heads/main\nrules:\n  \
             - name: environment\n    paths: [\"{m}\"]\n    principals: [alice@example.com, bob@example.com]\n    threshold: 2\n  \
             - name: rest\n    paths: [\"**\"]\n    principals: [forgejo@forge.example]\n    threshold: 1\n",
            m = h.manifest_path()
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let marker = format!("allowed_signers: {}\n", h.dir.join("allowed_signers").display());
    assert!(config.contains(&marker), "{config}");
    let config = config.replacen(&marker, &format!("{marker}  policy: {}\n", policy.display()), 1);
    std::fs::write(&h.config_path, config).unwrap();

    // First sync, merged by Forgejo, approved by alice only: refused, nothing built.
    let first = h.commit(&h.manifest("blue", Some(0), None), "hello on blue").unwrap();
    h.repo.approve(&alice, &first).unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "one approval of two was accepted:\n{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("trust policy") && said.contains("rule `environment`"), "{said}");
    assert!(said.contains("only alice@example.com approved"), "{said}");
    let st = status_json(&h);
    assert!(st["state"]["applied"].is_null(), "{st:#}");
    assert!(h.served_release().is_err(), "the edge serves an app nobody approved");

    // Bob approves, but for another ref: still refused.
    h.repo
        .tag_signed(
            &bob,
            &format!("gitops/approve/{first}/bob-elsewhere"),
            &first,
            "gitops-approve-v1\nref: refs/heads/staging",
        )
        .unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "an approval for another ref counted:\n{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(said.contains("only alice@example.com approved"), "{said}");

    // Bob approves main: applied.
    h.repo.approve(&bob, &first).unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with(&format!("applied {}", &first[..12])), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    // The next change is measured against what was applied: it needs its own approvals.
    // (a change of the manifest that changes nothing on the host: approvals are per commit)
    let touched = format!("{}# second\n", h.manifest("blue", Some(0), None));
    let second = h.commit(&touched, "a second change").unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "a change without approvals was accepted:\n{out}\n{err}");
    h.repo.approve(&alice, &second).unwrap();
    h.repo.approve(&bob, &second).unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with(&format!("applied {}", &second[..12])), "{out}");

    // An approved change that does not land (release 2 is broken: rolled back) becomes
    // the anti-rollback base, not where approvals are measured from; nor once the state
    // directory is gone: a publisher's commit on top of it that touches no manifest still
    // brings that change, which never landed, and needs its approvals.
    let third = h.commit(&h.manifest("green", Some(0), Some(2)), "broken green").unwrap();
    h.repo.approve(&alice, &third).unwrap();
    h.repo.approve(&bob, &third).unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.starts_with(&format!("rolled-back {}", &third[..12])), "{out}");
    std::fs::remove_dir_all(h.dir.join("state")).unwrap();
    h.repo.write("README.md", "how to deploy\n").unwrap();
    let fourth = h.repo.commit_signed(&h.forgejo, "docs").unwrap();
    h.repo.push().unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "a change that never landed went in unapproved:\n{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(said.contains(&fourth[..12]) && said.contains("rule `environment`"), "{said}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id, "traffic stayed on blue");
}

/// A private manifests repository behind HTTPS with an internal CA (Forgejo answers 401
/// without credentials): the agent trusts `source.ca_file`, authenticates with the token
/// from `source.credentials_file`; without it, or with a wrong token, the sync fails
/// saying what to fix; the token never shows in output, status, history or state. Over
/// plain `http://` the token is never sent at all.
#[test]
fn a_private_remote_is_fetched_with_the_credentials_file_and_the_token_never_shows() {
    let h = host();
    let front = veza_testkit::http::TlsFront::start(h.http.addr()).expect("TLS front");
    let token = format!("tok{}Secret", std::process::id());
    h.http.require_basic_auth(Some(("veza-agent", &token)));
    let commit = h.commit(&h.manifest("blue", Some(0), None), "hello on blue").unwrap();
    let creds = h.dir.join("credentials");
    let plain_url = h.http.url("manifests.git");
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let https = config.replacen(&plain_url, &front.url("manifests.git"), 1).replacen(
        "  branch: main\n",
        &format!("  branch: main\n  ca_file: {}\n", front.ca_file().display()),
        1,
    );
    let with_creds = https.replacen(
        "  branch: main\n",
        &format!("  branch: main\n  credentials_file: {}\n", creds.display()),
        1,
    );
    assert!(with_creds.contains("https://127.0.0.1:") && with_creds.contains("ca_file"));

    // No credentials: refused by the server, and the agent says what to configure.
    std::fs::write(&h.config_path, &https).unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "{out}\n{err}");
    assert!(format!("{out}{err}").contains("set source.credentials_file"), "{out}\n{err}");

    // A wrong token: refused as well, said so, and the wrong token is not echoed.
    std::fs::write(&h.config_path, &with_creds).unwrap();
    std::fs::write(&creds, "veza-agent:wrong-token-xyz\n").unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "{out}\n{err}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("were not accepted") && said.contains("source.credentials_file"),
        "{said}"
    );
    assert!(!said.contains("wrong-token-xyz"), "{said}");
    assert!(said.contains("is readable by others (mode 644)"), "{said}");

    // The right token, in a file only root reads: fetched over HTTPS, verified, applied.
    std::fs::write(&creds, format!("veza-agent:{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 0, "apply failed:\n{out}\n{err}");
    assert!(!err.contains("readable by others"), "{err}");
    assert!(out.starts_with(&format!("applied {}", &commit[..12])), "{out}");
    let requests = h.http.requests();
    assert!(requests.iter().any(|r| r.ends_with(" auth=ok")), "{requests:#?}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    // Nothing the agent recorded or printed holds the token.
    let (_, status, _) = agent(&h, &["status", "--json"]);
    let (_, history, _) = agent(&h, &["history", "--json"]);
    let mut recorded = String::new();
    for entry in std::fs::read_dir(h.dir.join("state")).unwrap().flatten() {
        if entry.path().is_file() {
            recorded.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()));
        }
    }
    let mirror_config = std::fs::read_to_string(h.dir.join("state/mirror.git/config")).unwrap();
    for (what, text) in [
        ("apply output", &out),
        ("status", &status),
        ("history", &history),
        ("state files", &recorded),
        ("mirror config", &mirror_config),
    ] {
        assert!(!text.contains(&token), "the token shows in the {what}:\n{text}");
    }

    // Plain http with the same credentials: the token is not sent in clear text.
    let before = h.http.requests().len();
    std::fs::write(&h.config_path, with_creds.replacen(&front.url("manifests.git"), &plain_url, 1))
        .unwrap();
    h.commit(&h.manifest("blue", Some(1), None), "release 1").unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_ne!(code, 0, "{out}\n{err}");
    let sent: Vec<String> = h.http.requests().split_off(before);
    assert!(!sent.is_empty(), "the agent did not even ask the plain-http remote");
    assert!(sent.iter().all(|r| r.ends_with(" auth=none")), "{sent:#?}");
    assert!(format!("{out}{err}").contains("clear text"), "{out}\n{err}");
}

/// node_exporter's textfile directory belongs to `prometheus` (here `nobody`): the agent
/// writes its metrics there, replacing a symlink planted in it without writing through it;
/// any other directory another user can write (here a world-writable state directory) is
/// refused with the fix in the message. A refused remote keeps the sync short: a failed
/// fetch still records state and metrics.
#[test]
fn metrics_replace_a_planted_symlink_and_a_world_writable_state_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mode = |p: &std::path::Path, m| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(dir, 0o755);
    let (textfile, state) = (dir.join("node-exporter"), dir.join("state"));
    std::fs::create_dir(&textfile).unwrap();
    std::os::unix::fs::chown(&textfile, Some(65534), Some(65534)).unwrap();
    std::fs::create_dir(&state).unwrap();
    mode(&state, 0o777);
    let shadow = dir.join("shadow");
    std::fs::write(&shadow, "root:secret\n").unwrap();
    mode(&shadow, 0o600);
    let prom = textfile.join("veza-agent.prom");
    veza_host::process::Cmd::new("runuser")
        .args(["-u", "nobody", "--", "ln", "-s"])
        .args([&shadow, &prom])
        .run()
        .expect("nobody plants a symlink");
    std::fs::write(dir.join("allowed_signers"), "").unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "host: h1\nsource:\n  remotes: [\"{remote}\"]\n  manifests: [m.yaml]\n\
             trust: {{allowed_signers: {d}/allowed_signers}}\nstate_dir: {state}\n\
             metrics: {{textfile: {prom}}}\n",
            remote = veza_testkit::http::refused_url("m.git").unwrap(),
            d = dir.display(),
            state = state.display(),
            prom = prom.display(),
        ),
    )
    .unwrap();
    let run = || {
        let out = veza_host::process::Cmd::new(env!("CARGO_BIN_EXE_veza-agent"))
            .args(["apply", "--config"])
            .arg(&config)
            .timeout(Duration::from_secs(60))
            .output()
            .expect("veza-agent runs");
        (out.status.code(), format!("{}{}", out.stdout_str(), out.stderr_str()))
    };

    let (code, out) = run();
    assert_ne!(code, Some(0), "{out}");
    let refusal =
        format!("refusing to write into `{}`: its mode 0777 lets others write", state.display());
    assert!(out.contains(&refusal) && out.contains("chmod go-w"), "{out}");
    assert!(!state.join("state.json").exists(), "state written into a world-writable dir");

    mode(&state, 0o755);
    let (code, out) = run();
    assert_eq!(code, Some(1), "a failed fetch: {out}");
    assert!(state.join("state.json").exists(), "{out}");
    assert_eq!(std::fs::read_to_string(&shadow).unwrap(), "root:secret\n");
    assert_eq!(std::fs::metadata(&shadow).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::symlink_metadata(&prom).unwrap().file_type().is_file(), "still a symlink");
    let metrics = std::fs::read_to_string(&prom).unwrap();
    assert!(metrics.contains("veza_agent_sync_failures 1"), "{metrics}");
}

/// A manifest whose instances declare no `config:` (like the shipped `prod.yaml`) converges
/// on the first sync: the second is `no-change` with zero Incus writes and zero snapshots,
/// for an app slot, a plain instance and a protected one.
#[test]
fn the_first_sync_converges_without_instance_config() {
    let h = host();
    let env = h.env.clone();
    let (owner, plain, data) =
        (format!("{env}-owner"), format!("{env}-plain"), format!("{env}-data"));
    let _cleanup = veza_testkit::incus::DeleteOnDrop {
        instances: vec![plain.clone(), data.clone()],
        profiles: vec![owner.clone()],
    };
    // The test's owner marks (for the sweep of a killed run) live in a managed profile.
    let marks = h.owner_marks();
    let app_config = h
        .manifest("blue", Some(0), None)
        .lines()
        .find(|l| l.trim_start().starts_with("config: {user.veza-test.owner"))
        .expect("the demo app carries the owner marks")
        .to_string();
    let manifest = h
        .manifest("blue", Some(0), None)
        .replace(&format!("{app_config}\n"), "")
        .replace("    profiles: [default]\n", &format!("    profiles: [default, {owner}]\n"))
        .replace(
            "\napps:\n",
            &format!(
                "\nincus:\n  profiles:\n    {owner}: {{config: {marks}}}\n  instances:\n    \
                 {plain}: {{image: veza-test-busybox, profiles: [default, {owner}]}}\n    \
                 {data}: {{image: veza-test-busybox, profiles: [default, {owner}], protect: true}}\n\napps:\n"
            ),
        );
    assert!(!manifest.contains(&app_config), "{manifest}");
    h.commit(&manifest, "no instance config").unwrap();
    let out = apply_ok(&h);
    assert!(out.starts_with("applied"), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    let watch = veza_testkit::incus::LifecycleWatch::start(&h.dir.join("lifecycle.json")).unwrap();
    let (code, plan, err) = agent(&h, &["plan"]);
    assert_eq!(code, 0, "the plan after the first sync is not empty:\n{plan}\n{err}");
    let out = apply_ok(&h);
    assert!(out.starts_with("no-change"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let writes = watch.about(&env);
    assert!(writes.is_empty(), "the no-change sync wrote to Incus:\n{}", writes.join("\n"));
    for name in [&plain, &data, &h.slots()[0]] {
        let snaps = veza_host::process::Cmd::new("incus")
            .args(["query", &format!("/1.0/instances/{name}/snapshots")])
            .run_stdout()
            .unwrap();
        let snaps: serde_json::Value = serde_json::from_str(&snaps).unwrap();
        assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{name} was snapshotted: {snaps}");
    }
    // An image edit Incus cannot apply in place is shown by `plan`, never ignored: the
    // plain instance is recreated, the protected one is a refusal (exit 3).
    let reimaged = manifest
        .replace(
            &format!("{plain}: {{image: veza-test-busybox,"),
            &format!("{plain}: {{image: veza-test-debian12,"),
        )
        .replace(
            &format!("{data}: {{image: veza-test-busybox,"),
            &format!("{data}: {{image: veza-test-debian12,"),
        );
    assert_ne!(reimaged, manifest);
    h.commit(&reimaged, "new images").unwrap();
    let (code, plan, err) = agent(&h, &["plan"]);
    assert_eq!(code, 3, "{plan}\n{err}");
    for line in [
        format!("delete instance {plain}"),
        format!("create instance {plain} from veza-test-debian12"),
        format!(
            "refused: instance {data}: protected data: its image changes from veza-test-busybox to veza-test-debian12"
        ),
    ] {
        assert!(plan.contains(&line), "no `{line}` in\n{plan}");
    }
    assert!(!plan.contains(&format!("delete instance {data}")), "{plan}");
}

/// Editing the release of the color that serves is refused (it would be rebuilt in place,
/// dropping requests): no request fails, the outcome line and exit code say so, and the
/// idle color is where the change goes.
#[test]
fn an_edit_of_the_serving_color_is_refused_and_drops_no_request() {
    let h = host();
    h.commit(&h.manifest("blue", Some(0), Some(1)), "blue serves, green idle").unwrap();
    apply_ok(&h);
    h.commit(&h.manifest("blue", Some(1), Some(1)), "release 1 on blue, in place").unwrap();
    let (code, plan, _) = agent(&h, &["plan"]);
    assert_eq!(code, 3, "a plan with refusals exits 3:\n{plan}");
    assert!(plan.contains("it serves") && plan.contains("idle green slot"), "{plan}");
    let traffic = Traffic::start(&h, 3, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(200));
    let (code, out, err) = agent(&h, &["apply"]);
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = traffic.stop();
    assert_eq!(code, 3, "an apply with refusals exits 3:\n{out}\n{err}");
    assert!(out.starts_with("applied") && out.contains("(0 steps"), "{out}");
    assert!(out.contains("; 1 refused (not done):"), "{out}");
    assert!(out.contains("refused: instance"), "{out}");
    assert!(ok > 20, "the request loop ran ({ok} ok)");
    assert_eq!(failed, 0, "{failed} requests failed ({ok} ok)\n{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id, "blue still runs release 0");
    let st = status_json(&h);
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "blue", "{st:#}");
    // An app that opts into in-place updates gets the new release in its serving slot; when the new
    // release is broken, the outcome says the slot still gets the traffic (it does), not
    // that "traffic was not moved".
    let in_place = h
        .manifest("blue", Some(2), Some(1))
        .replace("    active: blue", "    in_place_updates: true\n    active: blue");
    let broken = h.commit(&in_place, "release 2 on blue, in place").unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.starts_with(&format!("rolled-back {}", &broken[..12])), "{out}");
    assert!(!out.contains("traffic was not moved"), "{out}");
    assert!(
        out.contains(&format!(
            "{}-hello-blue was redeployed in place (in_place_updates: true) and still receives",
            h.env
        )),
        "{out}"
    );
}

/// kill -9 the moment the journal of a promotion goes away: by then the outcome is
/// recorded, so `status` names the commit the edge serves (before, a kill in that window
/// left "in sync with" the previous commit while the edge served the new release).
#[test]
fn a_kill_when_the_journal_is_cleared_leaves_status_telling_the_truth() {
    let h = host();
    h.commit(&h.manifest("blue", Some(0), Some(1)), "blue").unwrap();
    apply_ok(&h);
    let promoted = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").unwrap();
    let pid = spawn_apply(&h, &h.dir.join("killed-at-clear.log"));
    let journal = h.dir.join("state/journal.json");
    let (mut seen, mut cleared) = (false, false);
    for _ in 0..120_000 {
        let exists = journal.exists();
        if seen && !exists {
            cleared = true;
            break;
        }
        seen |= exists;
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_micros(250));
    }
    let _ = veza_host::process::Cmd::new("kill").args(["-9", &pid.to_string()]).run();
    assert!(seen && cleared, "the apply never journaled and cleared (seen {seen})");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(h.served_release().unwrap(), h.releases[1].id, "the promotion happened");
    let st = status_json(&h);
    assert_eq!(st["state"]["applied"]["commit"], promoted, "status lies:\n{st:#}");
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "green", "{st:#}");
}

/// `suspend` pauses applying (the daemon-less `apply` answers `suspended`, exit 4, and
/// changes nothing) while the agent still fetches and plans: `status` says who, why and
/// what would be applied; the history keeps who and why; `resume` and the next sync apply
/// (a promotion, under a request loop). Report mode (`mode: report`) holds the same way.
#[test]
fn suspend_and_report_mode_plan_but_apply_nothing_until_resumed() {
    let h = serving_blue();
    let (code, out, err) = agent(&h, &["suspend", "--reason", "db maintenance"]);
    assert_eq!(code, 0, "{out}\n{err}");
    h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(out.starts_with("suspended "), "{out}");
    assert!(out.contains("db maintenance") && out.contains("nothing applied"), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[0].id, "nothing moved");
    let green = veza_host::process::Cmd::new("incus")
        .args(["list", "--format", "csv", "-c", "n", &format!("^{}-hello-green$", h.env)])
        .run_stdout()
        .unwrap();
    assert_eq!(green.trim(), "", "nothing created");
    let st = status_json(&h);
    let headline = st["headline"].as_str().unwrap_or_default();
    assert!(headline.contains("suspended by") && headline.contains("db maintenance"), "{st:#}");
    assert!(headline.contains(&format!("create instance {}-hello-green", h.env)), "{headline}");
    let metrics = std::fs::read_to_string(h.dir.join("veza-agent.prom")).unwrap();
    assert!(metrics.contains("veza_agent_suspended 1"), "{metrics}");
    // `plan` still shows the plan, says first that nothing will be applied and why, and
    // exits 4 as `apply` does.
    let (code, plan, err) = agent(&h, &["plan"]);
    assert_eq!(code, 4, "{plan}\n{err}");
    let first = plan.lines().next().unwrap_or_default();
    assert!(first.starts_with("NOTHING WILL BE APPLIED: suspended by "), "{plan}");
    assert!(first.contains("db maintenance"), "{plan}");
    assert!(plan.contains(&format!("create instance {}-hello-green", h.env)), "{plan}");
    let (code, json, _) = agent(&h, &["plan", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((code, &json["applies"]), (4, &serde_json::json!(false)), "{json:#}");

    let (code, out, err) = agent(&h, &["resume"]);
    assert_eq!(code, 0, "{out}\n{err}");
    // Resumed, not yet synced: the held steps are still not applied, and status says so.
    let st = status_json(&h);
    let headline = st["headline"].as_str().unwrap_or_default();
    assert!(headline.starts_with("NEEDS ATTENTION: not in sync yet"), "{st:#}");
    assert!(headline.contains(&format!("create instance {}-hello-green", h.env)), "{headline}");
    let traffic = Traffic::start(&h, 2, Duration::from_millis(5));
    let out = apply_ok(&h);
    let (ok, failed) = traffic.stop();
    assert_eq!((failed, ok > 10), (0, true), "{failed} failed, {ok} ok\n{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[1].id);
    let (_, history, _) = agent(&h, &["history", "--json"]);
    assert!(history.contains("suspended by") && history.contains("db maintenance"), "{history}");
    assert!(history.contains("\"resumed\""), "{history}");

    // Report mode: the same hold, from the configuration.
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, format!("{config}mode: report\n")).unwrap();
    h.commit(&h.manifest("blue", Some(0), Some(1)), "back to blue").unwrap();
    let (code, plan, _) = agent(&h, &["plan"]);
    assert_eq!(code, 4, "{plan}");
    assert!(plan.starts_with("NOTHING WILL BE APPLIED: report mode"), "{plan}");
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(out.contains("report mode"), "{out}");
    assert_eq!(h.served_release().unwrap(), h.releases[1].id, "nothing moved");
}

/// After each sync the handled commit gets a status on the forge (a stand-in that checks
/// requests as Forgejo's API spec says): success when applied, failure with the reason
/// when a promotion rolls back, posted once per change; when the forge fails, the sync is
/// not affected, the failure is counted and the status is posted at the next sync. The
/// hook runs after each outcome with it in its environment; the token shows nowhere.
#[test]
fn outcomes_are_posted_as_commit_statuses_and_given_to_the_hook() {
    let h = host();
    let hook_log = h.dir.join("hook.log");
    let hook = h.dir.join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$VEZA_OUTCOME $VEZA_STATE $VEZA_COMMIT\" >> {}\n",
            hook_log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (forge, token) = status_forge(&h, "st", &format!("  hook: {}\n", hook.display()));

    let first = h.commit(&h.manifest("blue", Some(0), None), "blue").unwrap();
    apply_ok(&h);
    apply_ok(&h); // no change: nothing new to say
    let got = forge.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].violations.is_empty(), "{:?}", got[0].violations);
    assert_eq!(got[0].line, format!("POST /api/v1/repos/talas/manifests/statuses/{first}"));
    assert_eq!(got[0].body["state"], "success");
    assert_eq!(got[0].body["context"], format!("veza-agent/{}", h.env));

    // The forge is down: the rolled-back promotion is still recorded and reported by the
    // agent; the status waits.
    forge.set_failing(true);
    let bad = h.commit(&h.manifest("green", Some(0), Some(2)), "broken green").unwrap();
    let traffic = Traffic::start(&h, 2, Duration::from_millis(5));
    let (code, out, _) = agent(&h, &["apply"]);
    let (ok, failed) = traffic.stop();
    assert_eq!((failed, ok > 10), (0, true), "{failed} failed, {ok} ok");
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("rolled-back"), "{out}");
    let metrics = std::fs::read_to_string(h.dir.join("veza-agent.prom")).unwrap();
    assert!(metrics.contains("veza_agent_status_post_failures_total 1"), "{metrics}");
    assert!(metrics.contains("veza_agent_statuses_pending 1"), "{metrics}");

    // Back up: the next sync posts what was waiting.
    forge.set_failing(false);
    agent(&h, &["apply"]);
    let got = forge.received();
    let last = got.last().unwrap();
    assert!(last.violations.is_empty(), "{:?}", last.violations);
    assert!(last.line.ends_with(&bad), "{last:?}");
    assert_eq!(last.body["state"], "failure");
    let description = last.body["description"].as_str().unwrap_or_default();
    assert!(description.starts_with("rolled back: "), "{description}");

    let hooked = std::fs::read_to_string(&hook_log).unwrap();
    assert!(hooked.contains(&format!("applied success {first}")), "{hooked}");
    assert!(hooked.contains(&format!("rolled-back failure {bad}")), "{hooked}");
    let (_, status, _) = agent(&h, &["status", "--json"]);
    let state = std::fs::read_to_string(h.dir.join("state/state.json")).unwrap();
    for text in [&out, &status, &state, &hooked] {
        assert!(!text.contains(&token), "the token shows:\n{text}");
    }
}
