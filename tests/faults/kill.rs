//! kill -9 of `apply` at each step of a promotion, between the edge swap and its
//! reload, and while incusd still runs the agent's create of a slot.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use veza_host::process::Cmd;
use veza_testkit::proc::{Killer, process_alive, wait_dead};
use veza_testkit::report::Case;

use veza_testkit::traffic::Traffic;

use super::*;

/// Steps of the promotion plan the kill cases interrupt (blue on 0 → green on 1 active):
/// create the green slot, deploy to it, promote (gate → switch → verify).
const PROMOTION_STEPS: usize = 3;

/// The promotion's step.
const PROMOTE: usize = 2;

/// Where in the run a kill lands: a step, and for the promotion, one of its phases (as
/// the journal's `current` names it: `gate`, `switch`, `verify`).
#[derive(Clone, Copy)]
struct At {
    step: usize,
    phase: Option<&'static str>,
}

impl At {
    fn reached(&self, j: &veza_state::Journal) -> bool {
        // A journal without a current step is the run's own, written before its first.
        j.done == self.step
            && j.current.is_some()
            && self.phase.is_none_or(|p| {
                j.current.as_deref().is_some_and(|c| c.contains(&format!(": {p} ")))
            })
    }
    /// Whether the run is already past this point.
    fn passed(&self, j: &veza_state::Journal) -> bool {
        const ORDER: [&str; 4] = ["gate", "switch", "verify", "checked"];
        let rank = |c: Option<&str>| {
            ORDER.iter().position(|p| c.is_some_and(|c| c.contains(&format!(": {p} "))))
        };
        j.done > self.step
            || (j.done == self.step
                && self.phase.is_some_and(|p| {
                    rank(j.current.as_deref()) > ORDER.iter().position(|o| *o == p)
                }))
    }
}

/// A test host whose checks through the edge send 200 requests: long enough for a kill
/// to land in them.
fn host_with_long_checks() -> DemoHost {
    let h = host();
    let cfg = std::fs::read_to_string(&h.config_path).expect("config");
    std::fs::write(
        &h.config_path,
        replace_once(&cfg, "verify_requests: 5", "verify_requests: 200"),
    )
    .expect("write config");
    h
}

/// One attempt at killing `apply` at `at`. `Err` when the journal had already moved past
/// it at the first look (a step too short to catch): retried.
fn try_kill_at(at: At, case: &mut Case) -> Result<(), String> {
    let k = at.step;
    // The gate step is held open with the unhealthy flag when it is the target.
    let h = host_with_long_checks();
    let a = h.commit(&gated_manifest(&h, "blue", Some(0), None), "A: blue").expect("commit");
    setup_apply(&h.config_path);
    let b = h.commit(&gated_manifest(&h, "green", Some(0), Some(1)), "B: green").expect("commit");
    let green = h.slots()[1].clone();
    let state = state_dir(&h);
    let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
    let killer = Killer::arm(&h.dir, pid);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut flagged = false;
    let (steps, current) = loop {
        assert!(Instant::now() < deadline, "apply never reached step {k}");
        let Some(j) = journal(&state) else {
            assert!(
                process_alive(pid),
                "apply ended before step {k}:\n{}",
                std::fs::read_to_string(h.dir.join("killed-apply.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        assert_eq!(j.steps.len(), PROMOTION_STEPS, "the promotion plan changed: {:#?}", j.steps);
        assert!(j.steps[PROMOTE].starts_with("promote "), "{:#?}", j.steps);
        if at.passed(&j) {
            return Err(format!("journal at `{:?}` before it was seen", j.current));
        }
        if at.phase == Some("gate") && !flagged && j.done >= 1 {
            // The slot exists (its creation was step 0): hold the gate open.
            set_unhealthy(&green, true);
            flagged = true;
        }
        if at.reached(&j) {
            killer.fire();
            break (j.steps, j.current.unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    wait_dead(pid);
    if flagged {
        set_unhealthy(&green, false);
    }
    case.saw(format!("killed in `{current}`"));

    // What the operator sees: the interrupted step (and phase), and no record of B yet.
    let st = status(&h.config_path);
    assert_eq!(st["interrupted"], current.as_str(), "{st:#}");
    assert!(current.starts_with(&steps[k]), "{current} is in {}", steps[k]);
    assert!(st["problems"].to_string().contains("was interrupted"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    let hist = history(&h.config_path);
    assert_eq!(hist[0]["commit"], a, "no record of the interrupted commit: {hist:#?}");
    // Nothing lost: a valid edge serving blue (or green when killed after the switch).
    let served = if at.phase == Some("verify") { &h.releases[1].id } else { &h.releases[0].id };
    if at.phase == Some("switch") {
        // Killed while installing: HAProxy runs either config, both valid and healthy.
        veza_testkit::haproxy::check_config(&h.haproxy.config_path()).expect("valid edge");
        let now = h.served_release().expect("the edge serves");
        assert!(now == h.releases[0].id || now == h.releases[1].id, "{now}");
        veza_state::Reader::new(&state).load().expect("state loads");
    } else {
        assert_nothing_lost(&h, &state, served);
    }
    // Killed once the new config may be live and before its checks passed: the check
    // is owed, `status` says so, and `plan` and the next apply promote again (the edge
    // is not taken as the truth).
    let owed = matches!(at.phase, Some("switch" | "verify"));
    let said = st["problems"].to_string().contains("checks through the edge never passed");
    assert_eq!(said, owed, "{st:#}");
    if at.step == 1 && at.phase.is_none() {
        // Part of B landed (green created, being deployed): the forge may not serve A
        // again to undo it, though B was never recorded as applied.
        h.repo.force_reset(&a).expect("force-push A");
        let p = agent(&h.config_path, &["plan"]);
        assert_eq!(p.code, 1, "{p}");
        assert!(format!("{p}").contains("does not descend from the last applied commit"), "{p}");
        h.repo.force_reset(&b).expect("push B back");
        case.saw("a force-push back to A was refused");
    }
    let p = agent(&h.config_path, &["plan"]);
    assert_eq!(p.code, 2, "a plan with steps:\n{p}");
    if owed {
        assert!(p.out.contains("promote "), "the promotion is checked again:\n{p}");
    }
    // The next apply converges, and the one after changes nothing.
    let r = apply_ok(&h);
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    assert_eq!(h.served_release().expect("edge serves"), h.releases[1].id, "{r}");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["interrupted"], Value::Null, "{st:#}");
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "green", "{st:#}");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw(format!(
        "status showed `interrupted: {current}`; next apply converged; then no-change"
    ));
    Ok(())
}

fn kill_at(step: usize, phase: Option<&'static str>) {
    let at = At { step, phase };
    let (name, what) = match phase {
        None => (
            format!("kill -9 at apply step {step}"),
            format!(
                "kill -9 of `apply` while step {step} of {PROMOTION_STEPS} runs (journal `done: {step}`)"
            ),
        ),
        Some(p) => (
            format!("kill -9 in the promotion's {p}"),
            format!(
                "kill -9 of `apply` in the {p} phase of the promotion (step {step} of {PROMOTION_STEPS}, journal `current: promote …: {p} …`)"
            ),
        ),
    };
    let mut case = Case::new(&name, &what);
    for attempt in 1..=3 {
        match try_kill_at(at, &mut case) {
            Ok(()) => return,
            Err(why) => case.saw(format!("attempt {attempt} missed the step ({why}); retried")),
        }
    }
    panic!("could not catch `{name}` in 3 attempts");
}

#[test]
fn kill_9_at_apply_step_0() {
    kill_at(0, None);
}
#[test]
fn kill_9_at_apply_step_1() {
    kill_at(1, None);
}
#[test]
fn kill_9_in_the_promotion_gate() {
    kill_at(PROMOTE, Some("gate"));
}
#[test]
fn kill_9_in_the_promotion_switch() {
    kill_at(PROMOTE, Some("switch"));
}
#[test]
fn kill_9_in_the_promotion_verify() {
    kill_at(PROMOTE, Some("verify"));
}

/// The first sync takes the edge over from the config the host was started with (not
/// written by the agent): killed during its checks through the edge, nothing is recorded
/// as applied, `status` names the owed check, and the next apply checks it again, with
/// that config as its fallback, before recording anything.
#[test]
fn kill_9_in_the_checks_of_the_edge_takeover() {
    let mut case = Case::new(
        "kill -9 in the checks of the edge takeover",
        "kill -9 of the first `apply` in the verify phase of its promotion (the edge taken over from a config the agent did not write)",
    );
    for attempt in 1..=3 {
        let h = host_with_long_checks();
        let before = edge_bytes(&h);
        let a = h.commit(&gated_manifest(&h, "blue", Some(0), None), "A: blue").expect("commit");
        let state = state_dir(&h);
        let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
        let killer = Killer::arm(&h.dir, pid);
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut caught = None;
        while process_alive(pid) && Instant::now() < deadline {
            if let Some(j) = journal(&state)
                && j.current.as_deref().is_some_and(|c| c.contains(": verify "))
            {
                killer.fire();
                caught = j.current;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        wait_dead(pid);
        let Some(current) = caught else {
            case.saw(format!("attempt {attempt}: the checks were missed; retried"));
            continue;
        };
        case.saw(format!("killed in `{current}`"));
        assert!(edge_bytes(&h) != before, "the agent's config is live");
        let st = status(&h.config_path);
        assert!(st["state"]["applied"].is_null(), "{st:#}");
        assert!(
            st["problems"].to_string().contains("its checks through the edge never passed"),
            "{st:#}"
        );
        let p = agent(&h.config_path, &["plan"]);
        assert_eq!(p.code, 2, "a plan with steps:\n{p}");
        assert!(p.out.contains("an edge switch was never checked through the edge"), "{p}");
        let r = apply_ok(&h);
        assert!(r.out.starts_with(&format!("applied {}", short(&a))), "{r}");
        assert_eq!(h.served_release().expect("edge serves"), h.releases[0].id, "{r}");
        let st = status(&h.config_path);
        assert_eq!(st["health"], "ok", "{st:#}");
        let r = apply_ok(&h);
        assert!(r.out.starts_with("no-change"), "{r}");
        case.saw("status named the owed check; the next apply checked it again; then no-change");
        return;
    }
    panic!("could not catch the takeover's checks in 3 attempts");
}

#[test]
fn kill_9_between_edge_swap_and_reload() {
    let mut case = Case::new(
        "kill -9 between edge swap and reload",
        "kill -9 while `<haproxy.cfg>.reload-pending` exists (new config on disk, reload not confirmed)",
    );
    let mut caught = false;
    for attempt in 1..=4 {
        let h = host();
        baseline(&h);
        let b = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
        let marker = PathBuf::from(format!("{}.reload-pending", h.haproxy.config_path().display()));
        let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
        let killer = Killer::arm(&h.dir, pid);
        let deadline = Instant::now() + Duration::from_secs(240);
        while process_alive(pid) && Instant::now() < deadline {
            // The marker is written just before the rename: wait for the new file too.
            if marker.exists()
                && String::from_utf8_lossy(&edge_bytes(&h)).contains(&h.releases[1].id[..10])
            {
                killer.fire();
                caught = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        wait_dead(pid);
        if !caught {
            case.saw(format!("attempt {attempt}: the swap window was missed; retried"));
            continue;
        }
        let served = h.served_release().expect("edge serves");
        case.saw(format!(
            "killed with the new config on disk; HAProxy served {}",
            if served == h.releases[0].id { "blue (reload not done)" } else { "green (reloaded)" }
        ));
        veza_testkit::haproxy::check_config(&h.haproxy.config_path()).expect("valid live config");
        let r = apply_ok(&h);
        case.saw(format!("next apply: {}", r.out.trim()));
        assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
        assert!(!marker.exists(), "the reload marker was consumed");
        assert_eq!(
            h.served_release().expect("edge serves"),
            h.releases[1].id,
            "after the next apply HAProxy must serve green, as status says:\n{r}"
        );
        let st = status(&h.config_path);
        assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "green", "{st:#}");
        let r = apply_ok(&h);
        assert!(r.out.starts_with("no-change"), "{r}");
        break;
    }
    assert!(caught, "never caught the window between the swap and the reload");
}

/// The state a kill between the edge's swap and its confirmed reload leaves (the new
/// config on disk, the one before it in `.prev`, the reload marker), followed by a commit
/// going back to the config from before: that config goes back on disk and is reloaded,
/// though it is what the marker says may still run. Made deterministic (no kill: the
/// window is the one `kill_9_between_edge_swap_and_reload` catches), with requests
/// through the edge all along.
#[test]
fn an_interrupted_install_then_a_revert_puts_the_reverted_config_back() {
    let h = host();
    baseline(&h);
    h.commit(&h.manifest("blue", Some(0), Some(1)), "green deployed").expect("commit");
    setup_apply(&h.config_path);
    let blue_config = edge_bytes(&h);
    let load = Traffic::start(&h, 1, Duration::from_millis(5));
    h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
    apply_ok(&h);
    assert_eq!(h.served_release().expect("edge serves"), h.releases[1].id);
    // As if killed right after the swap to green: the marker and the previous file.
    let config = h.haproxy.config_path();
    let marker = PathBuf::from(format!("{}.reload-pending", config.display()));
    std::fs::write(format!("{}.prev", config.display()), &blue_config).expect("prev");
    std::fs::write(&marker, "reload pending\n").expect("marker");

    let revert = h.commit(&h.manifest("blue", Some(0), Some(1)), "back to blue").expect("commit");
    let r = apply_ok(&h);
    assert!(r.out.starts_with(&format!("applied {}", short(&revert))), "{r}");
    assert_eq!(edge_bytes(&h), blue_config, "the reverted config is on disk:\n{r}");
    assert!(!marker.exists(), "the reload marker was consumed");
    assert_eq!(h.served_release().expect("edge serves"), h.releases[0].id, "{r}");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    let (ok, bad) = load.stop();
    assert!(ok > 0 && bad == 0, "{ok} requests through the edge, {bad} failed");
}

/// A run killed during a migration (`systemctl restart` past `TimeoutStopSec`, an OOM):
/// the command may still run in its instance, so the next sync never starts it again for
/// that commit (quarantined, saying why); it ran once.
#[test]
fn kill_9_during_a_migration_never_runs_it_twice() {
    let h = host();
    baseline(&h);
    let manifest = h.manifest("blue", Some(0), Some(1)).replacen(
        "    port: 8080\n",
        "    port: 8080\n    migrate: {command: 'sleep 4; echo {release} >> /root/migrations.log'}\n",
        1,
    );
    let b = h.commit(&manifest, "green with a slow migration").expect("commit");
    let state = state_dir(&h);
    let log = h.dir.join("killed-apply.log");
    let pid = spawn_apply(&h.config_path, &log);
    let killer = Killer::arm(&h.dir, pid);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(Instant::now() < deadline, "apply never reached the migration");
        assert!(
            process_alive(pid),
            "apply ended before its migration:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if journal(&state).is_some_and(|j| j.migrating.is_some()) {
            killer.fire();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_dead(pid);
    // Recorded as that commit's rollback (history, commit status), then never tried again.
    let r = agent(&h.config_path, &["apply"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("rolled-back {}", short(&b))), "{r}");
    assert!(r.out.contains("the agent stopped during the migration of"), "{r}");
    let r = agent(&h.config_path, &["apply"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("quarantined {}", short(&b))), "{r}");
    let st = status(&h.config_path);
    assert!(st.to_string().contains("the agent stopped during the migration of"), "{st:#}");
    // The killed run's command ends on its own (or was ended with its exec): once at most.
    std::thread::sleep(Duration::from_secs(6));
    let green = h.slots()[1].clone();
    let ran = incus_sh(&green, "cat /root/migrations.log 2>/dev/null || true").expect("read");
    assert!(ran.lines().count() <= 1, "the migration ran again:\n{ran}");
    assert_eq!(h.served_release().expect("edge serves"), h.releases[0].id, "traffic stayed");
}

/// The Incus operations still running on `instance` (`GET /1.0/operations?recursion=1`):
/// their descriptions. An error (incusd slow under the other suites' load) is an empty
/// answer: the caller polls again within its deadline.
fn running_operations_on(instance: &str) -> Vec<String> {
    let Ok(out) = Cmd::new("incus")
        .args(["query", "/1.0/operations?recursion=1"])
        .timeout(Duration::from_secs(10))
        .run_stdout()
    else {
        return Vec::new();
    };
    let ops: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let me = Value::from(format!("/1.0/instances/{instance}"));
    ops["running"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["resources"]["instances"].as_array().is_some_and(|v| v.contains(&me)))
        .filter_map(|op| op["description"].as_str().map(str::to_string))
        .collect()
}

/// One attempt: kill `apply` while incusd runs its create of the blue slot, then apply
/// at once. `Err` when the create was over before it was seen (retried).
fn try_kill_while_incus_creates(case: &mut Case) -> Result<(), String> {
    let h = host();
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue on release 0").expect("commit");
    let blue = h.slots()[0].clone();
    let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
    let killer = Killer::arm(&h.dir, pid);
    let state = state_dir(&h);
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        assert!(Instant::now() < deadline, "incusd never showed the creation of {blue}");
        if !process_alive(pid) || journal(&state).is_some_and(|j| j.done > 0) {
            return Err("the create was over before it was seen".to_string());
        }
        let ops = running_operations_on(&blue);
        if ops.iter().any(|d| d == "Creating instance" || d == "Starting instance") {
            killer.fire();
            break ops;
        }
    };
    wait_dead(pid);
    case.saw(format!("killed while incusd ran `{}` on the slot", seen.join(", ")));
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("next apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 0, "the apply after the kill must wait for incusd's operation:\n{r}");
    assert!(r.out.starts_with(&format!("applied {}", short(&a))), "{r}");
    assert_eq!(h.served_release().expect("edge serves"), h.releases[0].id);
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw("the apply after that: no-change");
    Ok(())
}

#[test]
fn kill_9_while_incus_creates_the_instance() {
    let mut case = Case::new(
        "kill -9 while Incus creates the instance",
        "kill -9 of `apply` while incusd runs its `POST /1.0/instances` (create and start), then an immediate `apply`",
    );
    for attempt in 1..=3 {
        match try_kill_while_incus_creates(&mut case) {
            Ok(()) => return,
            Err(why) => case.saw(format!("attempt {attempt}: {why}; retried")),
        }
    }
    panic!("could not catch incusd's create in 3 attempts");
}
