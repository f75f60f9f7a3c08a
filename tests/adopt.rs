//! `veza-agent adopt` on the real test host: a container made by hand with the `incus` CLI
//! (no agent mark), named by a signed manifest, reported `adopt`, adopted with `--apply`
//! without a restart or a recreate (same `volatile.uuid`, same init process), then
//! `apply` changes nothing and a second `adopt` reports it `owned`. Also the one command
//! adoption runs inside an instance it does not own yet (the slot probe), against busybox
//! `httpd`.

use std::time::{Duration, Instant};

use veza_host::incus::{Incus, IncusClient};
use veza_testkit::demo::DemoHost;
use veza_testkit::incus::{BUSYBOX_IMAGE, TestContainer};

fn agent(h: &DemoHost, args: &[&str]) -> (i32, String, String) {
    let out = h.agent(args).expect("veza-agent runs");
    (out.status.code().unwrap_or(-1), out.stdout_str(), out.stderr_str())
}

fn config_get(name: &str, key: &str) -> String {
    veza_host::process::Cmd::new("incus")
        .args(["config", "get", name, key])
        .run_stdout()
        .unwrap_or_else(|e| panic!("incus config get {name} {key}: {e}"))
        .trim()
        .to_string()
}

/// The host pid of the container's init and its start time (clock ticks after boot,
/// field 22 of `/proc/PID/stat`): both change with any restart or recreate.
fn init_process(name: &str) -> (u64, String) {
    let state = veza_host::process::Cmd::new("incus")
        .args(["query", &format!("/1.0/instances/{name}/state")])
        .run_stdout()
        .expect("instance state");
    let v: serde_json::Value = serde_json::from_str(&state).expect("json");
    let pid = v["pid"].as_u64().expect("a running container has an init pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("init's stat");
    let after_comm = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    // Fields after `(comm)` start at field 3; the start time is field 22.
    let start = after_comm.split_whitespace().nth(19).unwrap_or_default().to_string();
    (pid, start)
}

#[test]
fn a_container_made_by_hand_is_adopted_in_place_and_then_owned() {
    let h = DemoHost::new(std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")), None)
        .unwrap_or_else(|e| panic!("the real test host is not usable: {e:#}"));
    let c = TestContainer::spec(BUSYBOX_IMAGE).create().expect("a container made by hand");
    let name = c.name().to_string();
    let manifest = format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata:\n  name: {env}\n  host: {env}\n\n\
         incus:\n  instances:\n    {name}: {{image: {BUSYBOX_IMAGE}, profiles: [default], protect: true}}\n",
        env = h.env
    );
    let previous = h.commit(&format!("{manifest}# a first draft\n"), "draft").expect("commit");
    let commit = h.commit(&manifest, "name the container made by hand").expect("commit");

    // Today's refusal: the planner never touches an instance without its mark.
    let (code, out, _) = agent(&h, &["plan"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(&format!(
            "refused: instance {name}: an instance with this name exists without the agent's mark"
        )),
        "{out}"
    );

    let started = Instant::now();
    let (code, out, err) = agent(&h, &["adopt"]);
    let report_time = started.elapsed();
    assert_eq!(code, 2, "something to adopt:\n{out}\n{err}");
    assert!(out.contains(&format!("instance {name} ({}): adopt\n", h.env)), "{out}");
    assert!(
        out.contains(
            "1 to adopt, 0 owned, 0 missing, 0 in conflict; 0 duplicate timer(s); 0 refusal(s)"
        ),
        "{out}"
    );
    let (code, out, _) = agent(&h, &["adopt", "--json"]);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("adopt --json");
    assert_eq!(v["commit"], commit.as_str());
    assert_eq!(v["instances"][0]["name"], name.as_str());
    assert_eq!(v["instances"][0]["state"], "adopt");
    assert_eq!(v["instances"][0]["differences"], serde_json::json!([]));
    assert_eq!(v["instances"][0]["marks"]["user.veza.protect"], "true");
    assert_eq!(v["refusals"], serde_json::json!([]));
    eprintln!(
        "adoption report: {} ms wall for `veza-agent adopt` (its own figure: {} ms)",
        report_time.as_millis(),
        v["duration_ms"]
    );

    // A run on the previous commit was killed: its journal makes that commit the base
    // until adoption makes this one the base, for good (the journal is in the state then).
    let state_dir = h.dir.join("state");
    let killed = veza_state::Journal {
        commit: previous,
        started_ms: 1_000,
        steps: vec!["create instance".into()],
        ..veza_state::Journal::default()
    };
    veza_state::Store::open(&state_dir).and_then(|s| s.write_journal(&killed)).expect("journal");

    let uuid = config_get(&name, "volatile.uuid");
    let init = init_process(&name);
    // No terminal and no --yes: nothing is done.
    let (code, _, err) = agent(&h, &["adopt", "--apply"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(config_get(&name, "user.veza.managed"), "");
    let (code, out, err) =
        agent(&h, &["adopt", "--apply", "--yes", "--reason", "rehearsal of the cutover"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("adopted by ")
            && out.contains("0 profile(s), 1 instance(s), 0 timer(s) replaced"),
        "{out}"
    );
    for (key, want) in [
        ("user.veza.managed", "true"),
        ("user.veza.env", h.env.as_str()),
        ("user.veza.image", BUSYBOX_IMAGE),
        ("user.veza.protect", "true"),
    ] {
        assert_eq!(config_get(&name, key), want, "{key}");
    }
    assert_eq!(config_get(&name, "volatile.uuid"), uuid, "never recreated");
    assert_eq!(init_process(&name), init, "never restarted");
    // What adoption put in place came from this commit: only its descendants are accepted
    // from now on, as after an apply that began.
    let (_, out, _) = agent(&h, &["status"]);
    assert!(out.contains(&format!("tried:    {commit}")), "{out}");
    assert_eq!(veza_state::Reader::new(&state_dir).journal(), None, "taken into the state");

    let (code, out, _) = agent(&h, &["history", "-n", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("adopted") && out.contains("rehearsal of the cutover"), "{out}");
    assert!(out.contains(&format!("instance {name}")), "{out}");

    // The first apply finds its own instance as declared.
    let (code, out, err) = agent(&h, &["apply"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.starts_with(&format!("applied {}", &commit[..12])) && out.contains("(0 steps"),
        "{out}"
    );
    assert_eq!(init_process(&name), init, "the apply left it running as it was");
    let (code, out, _) = agent(&h, &["adopt"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("instance {name} ({}): owned\n", h.env)), "{out}");
    let (code, out, _) = agent(&h, &["adopt", "--apply", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing to adopt"), "{out}");
}

#[test]
fn the_slot_probe_runs_in_a_container_the_agent_does_not_own() {
    let c = TestContainer::busybox().expect("busybox");
    c.sh("mkdir -p /www && echo ok > /www/health && httpd -p 127.0.0.1:8080 -h /www")
        .expect("busybox httpd");
    let incus = IncusClient::local();
    let rt = veza_host::incus::runtime().expect("runtime");
    // (path, status)
    for (path, status) in [("/health", 200), ("/missing", 404)] {
        let out = rt
            .block_on(incus.probe_inside(c.name(), 8080, path, Duration::from_secs(3)))
            .expect("the probe runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let answer = veza_host::adopt::parse_probe_output(&text)
            .unwrap_or_else(|| panic!("no answer parsed from {text:?}"));
        assert_eq!(answer.status, status, "{path}: {text}");
    }
    let out = rt
        .block_on(incus.probe_inside(c.name(), 8081, "/health", Duration::from_secs(2)))
        .expect("the probe runs");
    assert_eq!(veza_host::adopt::parse_probe_output(&String::from_utf8_lossy(&out.stdout)), None);
    // The container is not the agent's: everything else is still refused.
    let err = rt
        .block_on(incus.exec(c.name(), &veza_host::incus::ExecRequest::new(["true".to_string()])))
        .expect_err("exec on a foreign instance");
    assert!(err.to_string().contains("not managed by veza-agent"), "{err}");
}
