//! Secrets, app environments and migrations, end to end on the real test host: a slot
//! app that will not start without its secret variable runs with it; the value shows
//! nowhere else; a migration runs once per release before traffic moves, and a failing
//! one keeps traffic where it was; a rotated secret goes through the idle color and a
//! gated switch; a secret this host cannot open is refused and changes nothing.

use std::time::Duration;

use sha2::{Digest, Sha256};
use veza_host::process::Cmd;
use veza_testkit::demo::DemoHost;
use veza_testkit::repo::SigningKey;
use veza_testkit::traffic::Traffic;

const AGENT: &str = env!("CARGO_BIN_EXE_veza-agent");

/// Runs `veza-agent ARGS` at debug level; (exit code, stdout + stderr).
fn agent(h: &DemoHost, args: &[&str]) -> (i32, String) {
    let out = Cmd::new(AGENT)
        .args(args)
        .arg("--config")
        .arg(&h.config_path)
        .env("VEZA_LOG", "debug")
        .timeout(Duration::from_secs(300))
        .output()
        .expect("veza-agent runs");
    (out.status.code().unwrap_or(-1), format!("{}\n{}", out.stdout_str(), out.stderr_str()))
}

fn encrypt(value: &str, to: &SigningKey) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("value");
    std::fs::write(&input, value).expect("value file");
    let out = Cmd::new(AGENT)
        .args(["secret", "encrypt", "--to-file"])
        .arg(&to.public)
        .arg(&input)
        .output()
        .expect("secret encrypt");
    assert!(out.status.success(), "{}", out.stderr_str());
    out.stdout_str()
}

fn sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn in_slot(name: &str, script: &str) -> String {
    Cmd::new("incus")
        .args(["exec", name, "--", "sh", "-c", script])
        .run_stdout()
        .unwrap_or_else(|e| panic!("in {name}: {e}"))
}

/// The demo manifest with the app's environment (its `DATABASE_URL` built from the
/// secret) and a migration that fails for `failing_release`, if any.
fn manifest(h: &DemoHost, active: &str, green: Option<usize>, failing: Option<&str>) -> String {
    let fail = failing
        .map(|r| {
            format!("[ {{release}} = {r} ] && {{ echo \"schema lock held at $DATABASE_URL\" >&2; exit 3; }}; ")
        })
        .unwrap_or_default();
    h.manifest(active, Some(0), green).replacen(
        "    port: 8080\n",
        &format!(
            "    port: 8080\n    env:\n      TESTAPP_REQUIRE_ENV: DATABASE_URL\n      \
             DATABASE_URL: 'postgres://veza:{{secret:db_password}}@db.{{env}}/veza?c={{color}}'\n    \
             migrate: {{command: '{fail}echo {{release}} >> /root/migrations.log'}}\n"
        ),
        1,
    )
}

fn served(h: &DemoHost) -> String {
    let r = h.get("/").expect("through the edge");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{body}");
    body
}

#[test]
fn secrets_reach_the_app_only_and_migrations_run_once_before_traffic_moves() {
    let h = DemoHost::new(std::path::Path::new(AGENT), None).expect("test host");
    let keys = h.dir.join("keys");
    let host_key = SigningKey::generate(&keys, "ssh_host_ed25519_key").expect("host key");
    let other = SigningKey::generate(&keys, "other-host").expect("other key");
    let config = std::fs::read_to_string(&h.config_path).expect("config");
    std::fs::write(
        &h.config_path,
        format!("{config}secrets:\n  identities: [{}]\n", host_key.private.display()),
    )
    .expect("config");
    let secret_path = format!("manifests/secrets/{}/db_password.age", h.env);
    let value = format!("pw-{}-Zq9", std::process::id());
    let url = |color: &str, v: &str| format!("postgres://veza:{v}@db.{}/veza?c={color}", h.env);
    let (r0, r1) = (h.releases[0].id.clone(), h.releases[1].id.clone());
    let blue = format!("{}-hello-blue", h.env);
    let green = format!("{}-hello-green", h.env);

    // 1. Blue runs with its secret: the app (which refuses to start without it) reports
    //    the hash of what it read; the migration ran once, before the app started.
    h.repo.write(&secret_path, &encrypt(&value, &host_key)).expect("secret");
    h.commit(&manifest(&h, "blue", None, Some(&r1)), "blue with its database").expect("commit");
    let (code, out) = agent(&h, &["apply"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("migrate {}/hello for release {}", h.env, &r0[..10])), "{out}");
    assert!(served(&h).contains(&format!("env-sha256={}", sha256(&url("blue", &value)))));
    assert_eq!(in_slot(&blue, "cat /root/migrations.log"), format!("{r0}\n"));
    assert_eq!(in_slot(&blue, "stat -c '%a %u' /etc/veza-app/env"), "600 0\n");
    // Its output (which may quote its environment) is root-only too.
    assert_eq!(in_slot(&blue, "stat -c '%a %u' /var/log/veza-app.log"), "600 0\n");
    // A second sync changes nothing and migrates nothing.
    let (code, second) = agent(&h, &["apply"]);
    assert_eq!(code, 0, "{second}");
    assert!(second.contains("no-change"), "{second}");

    // 2. The value is nowhere but in the slot's root-only file and the app's memory.
    let mut seen = vec![("apply --debug", out), ("second apply", second)];
    for args in [&["status", "--json"][..], &["history", "--json"], &["plan", "--json"]] {
        seen.push((args[0], agent(&h, args).1));
    }
    for entry in std::fs::read_dir(h.dir.join("state")).expect("state dir").flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).expect("read");
            seen.push(("a state file", String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    seen.push(("metrics", std::fs::read_to_string(h.dir.join("veza-agent.prom")).expect("prom")));
    seen.push((
        "command lines in the slot",
        in_slot(&blue, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"),
    ));
    seen.push((
        "the slot's Incus config",
        Cmd::new("incus")
            .args(["config", "show", &blue, "--expanded"])
            .run_stdout()
            .expect("config"),
    ));
    let leaks = |seen: &[(&str, String)], value: &str| {
        for (what, text) in seen {
            assert!(!text.contains(value), "the secret shows in {what}:\n{text}");
        }
    };
    leaks(&seen, &value);

    // 3. A failing migration for green's release: traffic never moves, 0 failed requests,
    //    the commit is quarantined and status says why.
    let bad = h
        .commit(&manifest(&h, "green", Some(1), Some(&r1)), "green, migration fails")
        .expect("commit");
    let (_, plan) = agent(&h, &["plan", "--json"]);
    assert!(
        plan.contains("{secret:db_password}") && plan.contains(r#""action": "migrate""#),
        "{plan}"
    );
    assert!(!plan.contains(&value), "the secret shows in plan --json:\n{plan}");
    let traffic = Traffic::start(&h, 2, Duration::from_millis(5));
    let (code, out) = agent(&h, &["apply"]);
    let (ok, failed) = traffic.stop();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the migration of") && out.contains("schema lock held"), "{out}");
    // What the failing command printed is kept, its secret replaced by its name.
    assert!(out.contains("postgres://veza:{secret:db_password}@db."), "{out}");
    seen.push(("the failed migration's outcome", out.clone()));
    assert!(out.contains("traffic was not moved"), "{out}");
    assert_eq!((failed, ok > 10), (0, true), "{failed} failed, {ok} ok");
    assert!(served(&h).contains(&format!("release={r0}")));
    let (_, status) = agent(&h, &["status", "--json"]);
    assert!(status.contains("schema lock held") && status.contains(&bad), "{status}");
    let (_, history) = agent(&h, &["history", "--json"]);
    seen.push(("status after the failed migration", status));
    seen.push(("history after the failed migration", history));
    leaks(&seen, &value);

    // 4. Fixed: the migration runs for green's release, then the gated switch.
    h.commit(&manifest(&h, "green", Some(1), None), "green, migration fixed").expect("commit");
    let traffic = Traffic::start(&h, 2, Duration::from_millis(5));
    let (code, out) = agent(&h, &["apply"]);
    let (ok, failed) = traffic.stop();
    assert_eq!(code, 0, "{out}");
    assert_eq!((failed, ok > 10), (0, true), "{failed} failed, {ok} ok");
    assert_eq!(in_slot(&green, "cat /root/migrations.log"), format!("{r1}\n"));
    assert!(served(&h).contains(&format!("env-sha256={}", sha256(&url("green", &value)))));

    // 5. Rotation: the new value goes to the idle color (blue, rebuilt) and traffic moves
    //    to it through the gate; the serving green is never restarted in place.
    let rotated = format!("{value}-rotated");
    h.repo.write(&secret_path, &encrypt(&rotated, &host_key)).expect("secret");
    h.commit(&manifest(&h, "blue", Some(1), None), "rotate the database password").expect("commit");
    let traffic = Traffic::start(&h, 2, Duration::from_millis(5));
    let (code, out) = agent(&h, &["apply"]);
    let (ok, failed) = traffic.stop();
    assert!(code == 0 || code == 3, "{out}");
    assert_eq!((failed, ok > 10), (0, true), "{failed} failed, {ok} ok\n{out}");
    assert!(!out.contains("migrate "), "release 0 was migrated before:\n{out}");
    assert!(served(&h).contains(&format!("env-sha256={}", sha256(&url("blue", &rotated)))));
    // Green, idle now, takes the new value on the next sync; then nothing is left to do.
    let (code, out) = agent(&h, &["apply"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = agent(&h, &["apply"]);
    assert!(code == 0 && out.contains("no-change"), "{out}");

    // 6. A secret encrypted to another host only: refused, named with its recipients and
    //    this host's key; nothing changes.
    h.repo.write(&secret_path, &encrypt("other", &other)).expect("secret");
    h.commit(&manifest(&h, "blue", Some(1), None), "secret for another host").expect("commit");
    let (code, out) = agent(&h, &["apply"]);
    assert_eq!(code, 1, "{out}");
    let host_fp = Cmd::new("ssh-keygen").arg("-lf").arg(&host_key.public).run_stdout().expect("fp");
    let host_fp = host_fp.split_whitespace().nth(1).expect("fingerprint");
    for expect in [
        "secret: ",
        secret_path.as_str(),
        "this host cannot decrypt it",
        "ssh-ed25519 key with tag",
        host_fp,
    ] {
        assert!(out.contains(expect), "{expect:?} not in:\n{out}");
    }
    assert!(served(&h).contains(&format!("env-sha256={}", sha256(&url("blue", &rotated)))));
    seen.push(("the refusal", out));
    for args in [&["status", "--json"][..], &["history", "--json"]] {
        seen.push((args[0], agent(&h, args).1));
    }
    for entry in std::fs::read_dir(h.dir.join("state")).expect("state dir").flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).expect("read");
            seen.push(("a state file at the end", String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    leaks(&seen, &value);
    leaks(&seen, &rotated);
}
