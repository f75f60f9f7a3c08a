//! Maintenance windows on the real test host, through the command line: a change of
//! protected data waits for its window while a slot deploy in the same commit proceeds;
//! `apply --now` and the daemon's `sync --now` run it, recorded with who asked; the sync
//! after that changes nothing in Incus.

use std::time::Duration;

use chrono::Timelike as _;
use veza_testkit::demo::DemoHost;

use crate::support::{agent, host};

fn json(h: &DemoHost, args: &[&str]) -> serde_json::Value {
    let (_, out, err) = agent(h, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}\n{err}"))
}

fn incus(args: &[&str]) -> String {
    veza_host::process::Cmd::new("incus")
        .args(args)
        .timeout(Duration::from_secs(60))
        .run_stdout()
        .unwrap_or_else(|e| panic!("incus {args:?}: {e}"))
}

fn snapshots(name: &str) -> usize {
    let out = incus(&["query", &format!("/1.0/instances/{name}/snapshots")]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("snapshot list");
    list.as_array().map_or(0, Vec::len)
}

/// The demo manifest plus a protected data instance (`role` in its config), a managed
/// profile carrying the test's owner marks, and a nightly window twelve hours away from
/// now, host time: closed for the whole test.
fn manifest(h: &DemoHost, green: Option<usize>, role: &str) -> String {
    let env = &h.env;
    let closed_hour = (chrono::Local::now().hour() + 12) % 24;
    let marks = h.owner_marks();
    h.manifest("blue", Some(0), green).replace(
        "\napps:\n",
        &format!(
            "\nmaintenance:\n  windows:\n    - {{start: \"0 {closed_hour} * * *\", duration: 1h}}\n\
             incus:\n  profiles:\n    {env}-owner: {{config: {marks}}}\n  instances:\n    \
             {env}-data: {{image: veza-test-busybox, profiles: [default, {env}-owner], protect: true, \
             config: {{user.role: {role}}}}}\n\napps:\n"
        ),
    )
}

/// `veza-agent apply`, which must exit `code` with `outcome` and no step, and write
/// nothing to Incus about this host's environment (watched with `incus monitor`).
fn apply_writing_nothing(h: &DemoHost, code: i32, outcome: &str) {
    let watch = veza_testkit::incus::LifecycleWatch::start(&h.dir.join(format!("{outcome}.json")))
        .expect("watch Incus");
    let (got, out, _) = agent(h, &["apply"]);
    assert_eq!(got, code, "{out}");
    assert!(out.starts_with(outcome) && out.contains("(0 steps"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let writes = watch.about(&h.env);
    assert!(writes.is_empty(), "a sync ending `{outcome}` wrote to Incus:\n{}", writes.join("\n"));
}

#[test]
fn a_protected_data_change_waits_for_its_window_until_an_operator_says_now() {
    let h = host();
    let data = format!("{}-data", h.env);
    let _cleanup = veza_testkit::incus::DeleteOnDrop {
        instances: vec![data.clone()],
        profiles: vec![format!("{}-owner", h.env)],
    };
    // A new instance interrupts nothing: created outside the window.
    h.commit(&manifest(&h, None, "primary"), "data on blue").unwrap();
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let before = incus(&["config", "show", &data]);
    assert!(before.contains("user.role: primary"), "{before}");

    // One commit: the protected instance changes (waits) and green gets a release (runs).
    let commit = h.commit(&manifest(&h, Some(1), "replica"), "data and green").unwrap();
    let (code, plan, err) = agent(&h, &["plan"]);
    assert_eq!(code, 2, "steps run now and others wait: changes pending\n{plan}\n{err}");
    for line in [
        format!("waiting for window: snapshot {data} (keep 3) (next opens at "),
        format!("waiting for window: update instance {data} (next opens at "),
        format!("deploy release {} to {}", &h.releases[1].id[..10], h.slots()[1]),
    ] {
        assert!(plan.contains(&line), "no `{line}` in\n{plan}");
    }
    let planned = json(&h, &["plan", "--json"]);
    assert_eq!(planned["plan"]["waiting"].as_array().map(Vec::len), Some(2), "{planned:#}");

    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 4, "an apply whose steps wait for a window exits 4:\n{out}\n{err}");
    assert!(out.starts_with(&format!("waiting {}", &commit[..12])), "{out}");
    assert!(out.contains("waiting for window, opens at "), "{out}");
    assert_eq!(incus(&["config", "show", &data]), before, "the held change reached Incus");
    assert_eq!(snapshots(&data), 0);
    let green = incus(&["config", "show", &h.slots()[1]]);
    assert!(green.contains(&h.releases[1].id), "the slot deploy did not proceed:\n{green}");
    let st = json(&h, &["status", "--json"]);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert!(st["headline"].as_str().unwrap_or_default().contains("waiting for window"), "{st:#}");
    assert_eq!(st["state"]["waiting"].as_array().map(Vec::len), Some(2), "{st:#}");
    // The releases shown are the slots' own marks: green's, deployed; blue's, unchanged.
    let releases = &st["state"]["envs"][&h.env]["apps"]["hello"]["releases"];
    assert_eq!(releases["green"], h.releases[1].id.as_str(), "{st:#}");
    assert_eq!(releases["blue"], h.releases[0].id.as_str(), "{st:#}");
    let metrics = std::fs::read_to_string(h.dir.join("veza-agent.prom")).unwrap();
    assert!(metrics.contains("veza_agent_waiting_steps 2\n"), "{metrics}");

    // Again: still waiting, nothing written to Incus, no second history entry.
    apply_writing_nothing(&h, 4, "waiting");
    let (_, history, _) = agent(&h, &["history", "--json"]);
    let waited = history.lines().filter(|l| l.contains("\"waiting\"")).count();
    assert_eq!(waited, 1, "one history entry for the held change:\n{history}");

    // The operator says now: the held steps run, recorded with who.
    let (code, out, err) = agent(&h, &["apply", "--now"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.starts_with(&format!("applied {}", &commit[..12])), "{out}");
    assert!(incus(&["config", "show", &data]).contains("user.role: replica"));
    assert_eq!(snapshots(&data), 1);
    let (_, history, _) = agent(&h, &["history", "--json"]);
    assert!(history.contains("maintenance windows overridden by ") && history.contains("(--now)"));
    assert_eq!(json(&h, &["status", "--json"])["state"]["waiting"], serde_json::json!([]));

    // In sync: the next sync writes nothing.
    apply_writing_nothing(&h, 0, "no-change");

    // The daemon: its sync holds the next change (`sync` says so, exit 4); `sync --now`
    // runs it.
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, text.replace("interval: 2s", "interval: 1h")).unwrap();
    h.commit(&manifest(&h, Some(1), "primary"), "data back to primary").unwrap();
    let log = h.dir.join("daemon.log");
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent"));
    let pid = veza_testkit::cli::spawn(bin, &h.config_path, "run", &log);
    let _daemon = Killed(pid);
    let socket = h.dir.join("state/control.sock");
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = agent(&h, &["sync"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(out.starts_with("waiting"), "{out}");
    let (code, out, err) = agent(&h, &["sync", "--now"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(out.starts_with("applied"), "{out}");
    assert!(incus(&["config", "show", &data]).contains("user.role: primary"));
    assert_eq!(snapshots(&data), 2);
}

/// Kills the daemon at the end of the test.
struct Killed(u32);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = veza_host::process::Cmd::new("kill").args(["-9", &self.0.to_string()]).run();
    }
}
