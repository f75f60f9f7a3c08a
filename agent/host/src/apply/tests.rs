//! The engine in process: plans run over the fakes (Incus, the edge, units, probes and the
//! clock), asserting the recorded calls and the report. No test sleeps: the gate's pauses
//! move a fake clock, and probe answers are scripted.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use veza_model::manifest::Color;
use veza_plan::desired::SlotSpec;
use veza_plan::fixtures::release;
use veza_plan::plan::{EdgeCheck, Gate, Phase, Promotion, Switch};
use veza_plan::slot::{APP_ENV_FILE, APP_RUN_SCRIPT, migration_files, slot_files};
use veza_plan::{Action, Plan, Step};

use super::*;
use crate::artifact::ArtifactStore;
use crate::clock::FakeClock;
use crate::haproxy::fake::{FakeEdge, FakeFault};
use crate::haproxy::install::EdgePaths;
use crate::haproxy::parse::ServerStatus;
use crate::http::fake::{Answer, ScriptedProbe};
use veza_model::live::{InstanceStatus, LiveInstance, MARK_DEPLOYED, MARK_RELEASE};

use crate::incus::{ExecOutput, FakeIncus, ImageSource, IncusError};
use crate::systemd::fake::FakeUnits;

// ------------------------------------------------------------ the world of a run

/// Every driver a run uses, as fakes.
struct World {
    incus: FakeIncus,
    edge: FakeEdge,
    units: FakeUnits,
    probe: ScriptedProbe,
    clock: FakeClock,
    gates: Gates,
}

impl World {
    /// The test host's Incus, an edge serving [`EDGE_BLUE`], nothing answering probes.
    fn new() -> World {
        let edge = FakeEdge::new();
        edge.set_file(&EdgePaths::debian().config, EDGE_BLUE.as_bytes());
        World {
            incus: FakeIncus::with_default_host(),
            edge,
            units: FakeUnits::new(),
            probe: ScriptedProbe::new(),
            clock: FakeClock::new(),
            gates: Gates {
                health_timeout: Duration::from_secs(10),
                verify_requests: 3,
                probe_timeout: Duration::from_secs(2),
                operations_timeout: Duration::from_secs(90),
            },
        }
    }

    fn run(&self, plan: &Plan, hooks: &mut impl Hooks) -> ApplyReport {
        self.run_over(&self.incus, plan, hooks)
    }

    /// Runs `plan` with `incus` in place of this world's.
    fn run_over(&self, incus: &FakeIncus, plan: &Plan, hooks: &mut impl Hooks) -> ApplyReport {
        // No plan here deploys a release: the artifact store is never read or written.
        let artifacts = ArtifactStore::new(Path::new("/nonexistent/veza-apply-test"));
        let drivers = Drivers {
            incus,
            edge: &self.edge,
            units: &self.units,
            artifacts: &artifacts,
            probe: &self.probe,
            clock: &self.clock,
            secrets: &veza_secrets::SecretValues::default(),
            gates: self.gates.clone(),
        };
        crate::incus::runtime().expect("runtime").block_on(apply(plan, &drivers, hooks))
    }

    /// The config the edge serves.
    fn edge_config(&self) -> String {
        let bytes = self.edge.file(&EdgePaths::debian().config).expect("an edge config");
        String::from_utf8(bytes).expect("utf-8")
    }
}

/// Hooks that record the steps started and the phases of promotions, and request a stop
/// or report a newer commit when told to.
#[derive(Default)]
struct Script {
    /// Steps started (`before_step`), by index.
    started: Vec<usize>,
    /// Phases entered (`phase`): step index, phase, on what.
    phases: Vec<(usize, Phase, String)>,
    /// A stop is requested once this many events (steps started and phases entered)
    /// happened.
    stop_after: Option<usize>,
    /// A newer commit is there from this look on (counting from 1).
    newer_commit_at: Option<u32>,
    /// A stop is requested from this look on (counting from 1).
    stop_at_look: Option<u32>,
    /// The journal write of this event (steps started and phases entered, counting
    /// from 1) fails.
    journal_fails_at: Option<usize>,
    /// Migrations reported done (`migrated`), with how many steps had started by then.
    migrated: Vec<(usize, String, String, String)>,
    /// What each promotion with no fallback was told it replaces (`switching_from`), with
    /// how many phases had been entered by then.
    before: Vec<(usize, Option<String>)>,
    looks: Cell<u32>,
}

impl Script {
    /// The journal write of the event just recorded.
    fn journal(&self) -> Result<(), String> {
        match self.journal_fails_at {
            Some(n) if self.started.len() + self.phases.len() == n => {
                Err("No space left on device (os error 28)".into())
            }
            _ => Ok(()),
        }
    }
}

impl Hooks for Script {
    fn before_step(&mut self, index: usize, _: &Step) -> Result<(), String> {
        self.started.push(index);
        self.journal()
    }
    fn phase(&mut self, index: usize, _: &Step, phase: Phase, what: &str) -> Result<(), String> {
        self.phases.push((index, phase, what.to_string()));
        self.journal()
    }
    fn switching_from(&mut self, before: Option<&str>) {
        self.before.push((self.phases.len(), before.map(str::to_string)));
    }
    fn migrated(&mut self, env: &str, app: &str, release: &str) {
        self.migrated.push((self.started.len(), env.into(), app.into(), release.into()));
    }
    fn stop_requested(&self) -> bool {
        self.stop_after.is_some_and(|n| self.started.len() + self.phases.len() >= n)
            || self.stop_at_look.is_some_and(|n| self.looks.get() >= n)
    }
    fn preempted(&self) -> bool {
        self.looks.set(self.looks.get() + 1);
        self.newer_commit_at.is_some_and(|n| self.looks.get() >= n)
    }
}

const EDGE_BLUE: &str = "# edge: prod/web on blue\n";
const EDGE_GREEN: &str = "# edge: prod/web on green\n";
/// Where the green slot answers its health probes.
const GREEN: &str = "127.0.0.1:18081";
/// Where the edge listens.
const LISTEN: &str = "127.0.0.1:18080";

fn ok(n: char) -> Answer {
    Answer::Release(200, release(n).to_string())
}

/// The `color` slot of prod/web with release 2, probed on `GREEN` (rise 2).
pub(super) fn slot(color: Color) -> SlotSpec {
    SlotSpec {
        loopback: Some(GREEN.into()),
        ..veza_plan::fixtures::slot("prod", "web", color, '2')
    }
}

/// The gate of a slot traffic would move to.
fn gate(instance: &str, color: Color) -> Gate {
    Gate { instance: instance.into(), slot: slot(color), serving: false }
}

/// The gate of the serving slot, rebuilt or started again.
fn serving_gate(instance: &str, color: Color) -> Gate {
    Gate { serving: true, ..gate(instance, color) }
}

/// prod/web from blue to green as one step: gate → switch → verify, blue's edge as the
/// fallback.
fn promote() -> Action {
    Action::Promote(Switch {
        promotions: vec![Promotion {
            env: "prod".into(),
            app: "web".into(),
            from: Some(Color::Blue),
            to: Color::Green,
            release: release('2'),
        }],
        gates: vec![gate("web-green", Color::Green)],
        runs_in: "host".into(),
        config: EDGE_GREEN.into(),
        checks: vec![EdgeCheck {
            env: "prod".into(),
            app: "web".into(),
            color: Color::Green,
            release: release('2'),
            host: "web.example".into(),
            path: "/".into(),
            listen: LISTEN.into(),
            tls: false,
        }],
        fallback: Some(EDGE_BLUE.into()),
    })
}

const PROMOTE: &str = "promote prod/web: blue -> green (2222222222) through haproxy on host";

/// The promotion step of `plan` (the first step).
fn switch_of(plan: &mut Plan) -> &mut Switch {
    match &mut plan.steps[0].action {
        Action::Promote(s) => s,
        other => panic!("not a promotion: {other}"),
    }
}

fn job_units() -> Action {
    Action::InstallUnits {
        target: UnitTarget::Host,
        files: vec![("veza-job-prod-web-backup.service".into(), "[Service]\n".into())],
        timers: Vec::new(),
        environments: Vec::new(),
    }
}

/// The promotion of prod/web to green, then `after`.
fn promotion(after: Vec<Action>) -> Plan {
    plan_of([vec![promote()], after].concat())
}

fn completed(report: &ApplyReport) -> Vec<&str> {
    report.timings.iter().map(|(step, _)| step.as_str()).collect()
}

// ------------------------------------------------------------ promotions

#[test]
fn a_promotion_gates_switches_and_verifies() {
    let w = World::new();
    w.probe.script(GREEN, [ok('2')]);
    w.probe.script(LISTEN, [ok('2')]);
    let mut hooks = Script::default();
    let report = w.run(&promotion(Vec::new()), &mut hooks);
    assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    assert_eq!(report.steps_done, 1);
    assert_eq!(hooks.started, [0], "the journal saw the step");
    assert_eq!(
        hooks.phases,
        [
            (0, Phase::Gate, "web-green".to_string()),
            (0, Phase::Switch, "host".to_string()),
            (0, Phase::Verify, "host".to_string()),
            (0, Phase::Checked, "host".to_string()),
        ],
        "and each phase of it, in order"
    );
    assert_eq!(completed(&report), [PROMOTE]);
    // rise 2 over at least 1 s, probes 200 ms apart: 6 probes, the last one at 1 s.
    assert_eq!(w.probe.requests_to(GREEN), 6, "{:?}", w.probe.requests());
    assert_eq!(w.clock.elapsed(), Duration::from_secs(1));
    assert_eq!(report.timings[0].1, 1000, "the gate's time on the clock");
    assert_eq!(w.edge_config(), EDGE_GREEN);
    assert_eq!(w.edge.reloads(), 1);
    assert_eq!(
        w.probe.requests()[6..],
        ["GET http://127.0.0.1:18080/ (Host: web.example)"; 3],
        "the verification: 3 requests through the edge, after the gate's probes"
    );
    assert_eq!(
        w.incus.calls(),
        ["GET /1.0/operations?recursion=1"],
        "a look at the operations, no exec: a loopback slot is probed from the host"
    );
}

/// An environment that terminates TLS at the edge is checked over TLS: its plain HTTP
/// may answer only a redirect, which reaches no slot.
#[test]
fn the_checks_of_an_environment_with_tls_go_over_tls() {
    let w = World::new();
    w.probe.script(GREEN, [ok('2')]);
    w.probe.script(LISTEN, [ok('2')]);
    let mut plan = promotion(Vec::new());
    switch_of(&mut plan).checks[0].tls = true;
    let report = w.run(&plan, &mut Script::default());
    assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    assert_eq!(w.probe.requests()[6..], ["GET https://127.0.0.1:18080/ (Host: web.example)"; 3]);
}

#[test]
fn the_gate_opens_after_rise_healthy_probes_over_the_stable_time_and_starts_over_on_a_failure() {
    let refused = || Answer::Refused;
    // (answers of the slot, probes sent, clock when the gate opened)
    let table: [(Vec<Answer>, usize, u64); 4] = [
        (vec![ok('2')], 6, 1000),
        (vec![refused(), refused(), ok('2')], 8, 1400),
        // One failed probe in the streak starts the count again.
        (vec![ok('2'), ok('2'), Answer::Status(503), ok('2')], 9, 1600),
        // No X-Release header: the status decides.
        (vec![Answer::Status(200)], 6, 1000),
    ];
    for (answers, probes, opened_at) in table {
        let w = World::new();
        w.probe.script(GREEN, answers.clone());
        w.probe.script(LISTEN, [ok('2')]);
        let report = w.run(&promotion(Vec::new()), &mut Script::default());
        assert_eq!(report.outcome, ApplyOutcome::Applied, "{answers:?}: {report:?}");
        assert_eq!(w.probe.requests_to(GREEN), probes, "{answers:?}");
        assert_eq!(report.timings[0].1, opened_at, "{answers:?}");
    }
}

/// Started by this run, HAProxy's `(server, status)`, the slot's answers, probes sent,
/// the gate's time on the clock in ms.
type Case = (bool, Option<(&'static str, &'static str)>, Vec<Answer>, usize, u64);

#[test]
fn a_running_slot_haproxy_holds_up_opens_after_rise_probes_and_any_other_waits_the_full_second() {
    let refused = || Answer::Refused;
    // The server prod/web's green slot (release 2) has in the edge's config.
    let green_2 = "green-2222222222";
    // (started by this run, HAProxy's status of a server, answers of the slot, probes
    // sent, gate time on the clock in ms)
    let table: [Case; 8] = [
        // Two healthy running colors: rise (2) probes, 200 ms apart.
        (false, Some((green_2, "UP")), vec![ok('2')], 2, 200),
        // The agent's probe must agree, `rise` times in a row.
        (false, Some((green_2, "UP")), vec![refused(), refused(), ok('2')], 4, 600),
        // HAProxy has no view of the slot: today's rule.
        (false, None, vec![ok('2')], 6, 1000),
        // A `disabled` server (MAINT) is not checked.
        (false, Some((green_2, "MAINT")), vec![ok('2')], 6, 1000),
        // Another release's server is UP: says nothing of this one.
        (false, Some(("green-1111111111", "UP")), vec![ok('2')], 6, 1000),
        // HAProxy sees it DOWN, or a check failed since it came up.
        (false, Some((green_2, "DOWN")), vec![ok('2')], 6, 1000),
        (false, Some((green_2, "UP 1/3")), vec![ok('2')], 6, 1000),
        // Started by this run: HAProxy's UP predates it.
        (true, Some((green_2, "UP")), vec![ok('2')], 6, 1000),
    ];
    for (started, status, answers, probes, opened_at) in table {
        let case = format!("started {started}, HAProxy {status:?}, answers {answers:?}");
        let w = World::new();
        if let Some((server, text)) = status {
            w.edge.set_server_status("prod_web", server, ServerStatus::parse(text));
        }
        w.probe.script(GREEN, answers);
        w.probe.script(LISTEN, [ok('2')]);
        let plan = if started {
            created_by_an_earlier_run(&w.incus, "web-green", "web");
            plan_of(vec![Action::StartInstance { name: "web-green".into() }, promote()])
        } else {
            promotion(Vec::new())
        };
        let report = w.run(&plan, &mut Script::default());
        assert_eq!(report.outcome, ApplyOutcome::Applied, "{case}: {report:?}");
        assert_eq!(w.probe.requests_to(GREEN), probes, "{case}");
        let gate_ms = report.timings.iter().find(|(step, _)| step == PROMOTE).map(|t| t.1);
        assert_eq!(gate_ms, Some(opened_at), "{case}: {:?}", report.timings);
        assert_eq!(w.edge_config(), EDGE_GREEN, "{case}");
    }
}

#[test]
fn a_slot_haproxy_holds_up_that_the_probe_never_confirms_keeps_the_traffic() {
    let w = World::new();
    w.edge.set_server_status("prod_web", "green-2222222222", ServerStatus::Up);
    w.probe.script(GREEN, [Answer::Status(503)]);
    let report = w.run(&promotion(Vec::new()), &mut Script::default());
    let ApplyOutcome::RolledBack { reason } = &report.outcome else {
        panic!("not rolled back: {report:?}");
    };
    assert!(reason.contains("traffic was not moved"), "{reason}");
    assert_eq!(w.edge_config(), EDGE_BLUE);
    assert_eq!(w.edge.reloads(), 0);
}

#[test]
fn a_slot_that_never_passes_its_gate_keeps_the_traffic_where_it_is() {
    // (answers of the slot, the reason's telling part)
    let table = [
        (Answer::Status(503), "last: /health answered 503 (expected 200)"),
        (ok('1'), "last: it reports release 1111111111111111111111111111111111111111, not 2222"),
        (Answer::Refused, "last: GET http://127.0.0.1:18081/health (Host: localhost): connect"),
    ];
    for (answer, why) in table {
        let w = World::new();
        w.probe.script(GREEN, [answer.clone()]);
        let report = w.run(&promotion(Vec::new()), &mut Script::default());
        let ApplyOutcome::RolledBack { reason } = &report.outcome else {
            panic!("{answer:?}: expected a roll-back, got {report:?}");
        };
        for part in [
            "green slot `web-green` (release 2222222222) was not healthy after 10s (50 probes; ",
            why,
            "; traffic was not moved",
        ] {
            assert!(reason.contains(part), "{answer:?}: `{part}` missing in: {reason}");
        }
        assert_eq!(report.steps_done, 0);
        assert_eq!(w.clock.elapsed(), Duration::from_secs(10), "it waited health_timeout");
        assert_eq!(w.edge_config(), EDGE_BLUE);
        assert_eq!(w.edge.reloads(), 0, "the edge was not touched");
        assert_eq!(w.probe.requests_to(LISTEN), 0);
    }
}

#[test]
fn a_failed_verification_puts_the_previous_edge_back_and_says_why() {
    // (answers through the edge, the reason)
    let table = [
        (
            vec![ok('2'), Answer::Status(503)],
            "prod/web on green: request 2 through the edge answered 503; traffic went back to the previous color",
        ),
        (
            vec![ok('1')],
            "prod/web on green: request 1 through the edge reached release 1111111111111111111111111111111111111111, not 2222222222222222222222222222222222222222; traffic went back to the previous color",
        ),
        (
            vec![Answer::Refused],
            "prod/web on green: GET http://127.0.0.1:18080/ (Host: web.example): connect: Connection refused (scripted); traffic went back to the previous color",
        ),
    ];
    for (answers, reason) in table {
        let w = World::new();
        w.probe.script(GREEN, [ok('2')]);
        w.probe.script(LISTEN, answers.clone());
        let report = w.run(&promotion(vec![job_units()]), &mut Script::default());
        assert_eq!(
            report.outcome,
            ApplyOutcome::RolledBack { reason: reason.to_string() },
            "{answers:?}"
        );
        assert_eq!(report.steps_done, 0, "{answers:?}: the promotion did not complete");
        assert_eq!(w.edge_config(), EDGE_BLUE, "{answers:?}: the fallback edge serves");
        assert_eq!(w.edge.reloads(), 2, "{answers:?}: switched, then back");
        assert!(w.units.calls().is_empty(), "{answers:?}: nothing after the verification ran");
    }
}

/// A promotion with no fallback (first traffic, a takeover) tells its hooks, before its
/// switch, the config it replaces: what a failed check puts back, and what a killed run's
/// next sync must know to check it again. One with a fallback does not.
#[test]
fn a_promotion_without_a_fallback_tells_what_it_replaces_before_its_switch() {
    for fallback in [None, Some(EDGE_BLUE.to_string())] {
        let w = World::new();
        w.probe.script(GREEN, [ok('2')]);
        w.probe.script(LISTEN, [Answer::Status(503)]);
        let mut plan = promotion(Vec::new());
        switch_of(&mut plan).fallback = fallback.clone();
        let mut hooks = Script::default();
        let report = w.run(&plan, &mut hooks);
        assert!(matches!(report.outcome, ApplyOutcome::RolledBack { .. }), "{report:?}");
        assert_eq!(w.edge_config(), EDGE_BLUE, "the config before it is back");
        let switch_at = hooks.phases.iter().position(|(_, p, _)| *p == Phase::Switch);
        match fallback {
            None => {
                assert_eq!(hooks.before, [(switch_at.expect("switched"), Some(EDGE_BLUE.into()))])
            }
            Some(_) => assert!(hooks.before.is_empty(), "{:?}", hooks.before),
        }
    }
}

/// What a promotion with no fallback replaces must be known before it switches: when the
/// live config cannot be read, no traffic moves (a failed check would otherwise have
/// nothing to go back to, and a killed run nothing owed).
#[test]
fn a_promotion_without_a_fallback_that_cannot_read_the_live_edge_moves_no_traffic() {
    let w = World::new();
    w.probe.script(GREEN, [ok('2')]);
    w.edge.inject(FakeFault::FailRead(EdgePaths::debian().config));
    let mut plan = promotion(Vec::new());
    switch_of(&mut plan).fallback = None;
    let mut hooks = Script::default();
    let report = w.run(&plan, &mut hooks);
    let ApplyOutcome::Failed { error, .. } = &report.outcome else {
        panic!("expected a failure, got {report:?}");
    };
    assert!(
        error.contains("injected read failure") && error.contains("traffic was not moved"),
        "{error}"
    );
    assert!(hooks.phases.iter().all(|(_, p, _)| *p != Phase::Switch), "{:?}", hooks.phases);
    assert_eq!(w.edge_config(), EDGE_BLUE, "the edge is as it was");
}

#[test]
fn a_fallback_edge_that_cannot_be_installed_fails_the_run_with_both_reasons() {
    let w = World::new();
    w.probe.script(GREEN, [ok('2')]);
    w.probe.script(LISTEN, [Answer::Status(502)]);
    let mut plan = promotion(Vec::new());
    switch_of(&mut plan).fallback = Some("# bogus fallback\n".into());
    let report = w.run(&plan, &mut Script::default());
    let ApplyOutcome::Failed { step, error } = &report.outcome else {
        panic!("expected a failure, got {report:?}");
    };
    assert_eq!(step, "roll back the edge");
    for part in [
        "prod/web on green: request 1 through the edge answered 502",
        "; and restoring the previous edge failed: ",
        "bogus_keyword",
    ] {
        assert!(error.contains(part), "`{part}` missing in: {error}");
    }
    assert_eq!(w.edge_config(), EDGE_GREEN, "the installer kept the last valid config");
}

// ------------------------------------------------------------ stops, failures, preemption

#[test]
fn a_stop_is_honoured_between_steps_and_gates_but_never_once_a_switch_began() {
    // (stop requested once this many events happened — the promotion step started, its
    //  gate, switch and verify phases entered —, interrupted before, steps done, edge
    //  serving, requests through the edge)
    let units = "install units on host: veza-job-prod-web-backup.service";
    let table = [
        (0, PROMOTE, 0, EDGE_BLUE, 0),
        // Requested as the promotion starts or during its gate: traffic does not move.
        (1, PROMOTE, 0, EDGE_BLUE, 0),
        (2, PROMOTE, 0, EDGE_BLUE, 0),
        // Requested during the switch or the checks: the promotion completes.
        (3, units, 1, EDGE_GREEN, 3),
        (4, units, 1, EDGE_GREEN, 3),
    ];
    for (stop_after, before, done, serving, verified) in table {
        let w = World::new();
        w.probe.script(GREEN, [ok('2')]);
        w.probe.script(LISTEN, [ok('2')]);
        let mut hooks = Script { stop_after: Some(stop_after), ..Script::default() };
        let report = w.run(&promotion(vec![job_units()]), &mut hooks);
        assert_eq!(
            report.outcome,
            ApplyOutcome::Interrupted { before: before.to_string() },
            "stop after {stop_after}"
        );
        assert_eq!(report.steps_done, done, "stop after {stop_after}");
        let started = if stop_after == 0 { 0 } else { 1 }; // the promotion only
        assert_eq!(hooks.started, (0..started).collect::<Vec<_>>(), "stop after {stop_after}");
        assert_eq!(w.edge_config(), serving, "stop after {stop_after}");
        assert_eq!(w.probe.requests_to(LISTEN), verified, "stop after {stop_after}");
        assert!(w.units.calls().is_empty(), "stop after {stop_after}");
    }
}

#[test]
fn a_journal_that_cannot_be_written_stops_the_run_before_the_switch_never_after() {
    // (the failing journal write — the promotion started, its gate, switch and verify
    //  phases entered —, the outcome's error (or none), edge serving)
    let table = [
        (1, Some("not started: writing the journal failed: No space left"), EDGE_BLUE),
        (2, Some("traffic was not moved: writing the journal failed: No space left"), EDGE_BLUE),
        (3, Some("traffic was not moved: writing the journal failed: No space left"), EDGE_BLUE),
        (4, None, EDGE_GREEN),
    ];
    for (fails_at, error, serving) in table {
        let w = World::new();
        w.probe.script(GREEN, [ok('2')]);
        w.probe.script(LISTEN, [ok('2')]);
        let mut hooks = Script { journal_fails_at: Some(fails_at), ..Script::default() };
        let report = w.run(&promotion(Vec::new()), &mut hooks);
        match (error, &report.outcome) {
            (None, ApplyOutcome::Applied) => {}
            (Some(want), ApplyOutcome::Failed { step, error }) => {
                assert_eq!(step, PROMOTE, "write {fails_at}");
                assert!(error.starts_with(want), "write {fails_at}: {error}");
            }
            (want, got) => panic!("write {fails_at}: want {want:?}, got {got:?}"),
        }
        assert_eq!(w.edge_config(), serving, "write {fails_at}");
    }
}

#[test]
fn a_failing_step_stops_the_run_there_and_names_the_step() {
    let steps = || {
        let profile = Action::CreateProfile {
            name: "web".into(),
            description: String::new(),
            config: Default::default(),
            devices: Default::default(),
        };
        promotion(Vec::new()).steps.into_iter().map(|s| s.action).fold(
            vec![profile, job_units(), Action::StartInstance { name: "web-green".into() }],
            |mut all, a| {
                all.push(a);
                all
            },
        )
    };
    // (the fault, the failing step, its index, the error's telling part)
    type Fault = fn(&World);
    let table: [(Fault, &str, usize, &str); 2] = [
        (
            |w| w.units.reject_installs("Unknown key name 'Bogus'"),
            "install units on host: veza-job-prod-web-backup.service",
            1,
            "units rejected by `systemd-analyze verify` on host: Unknown key name 'Bogus'",
        ),
        (
            |w| {
                w.incus.fail_on(
                    "PUT /1.0/instances/web-green/state",
                    IncusError::Api {
                        method: "PUT".into(),
                        path: "/1.0/instances/web-green/state".into(),
                        status: 500,
                        message: "Failed to start device \"eth0\"".into(),
                    },
                )
            },
            "start instance web-green",
            2,
            "(HTTP 500): Failed to start device \"eth0\"",
        ),
    ];
    for (fault, failing, n, why) in table {
        let w = World::new();
        created_by_an_earlier_run(&w.incus, "web-green", "web");
        w.probe.script(GREEN, [ok('2')]);
        w.probe.script(LISTEN, [ok('2')]);
        fault(&w);
        let mut plan = promotion(Vec::new());
        plan.steps = plan_of(steps()).steps;
        let mut hooks = Script::default();
        let report = w.run(&plan, &mut hooks);
        let ApplyOutcome::Failed { step, error } = &report.outcome else {
            panic!("{failing}: expected a failure, got {report:?}");
        };
        assert_eq!(step, failing);
        assert!(error.contains(why), "{failing}: `{why}` missing in: {error}");
        assert_eq!(report.steps_done, n, "{failing}");
        assert_eq!(report.timings.len(), n, "{failing}");
        assert_eq!(
            hooks.started,
            (0..=n).collect::<Vec<_>>(),
            "{failing}: nothing after it started"
        );
        assert!(w.probe.requests().is_empty(), "{failing}: no gate ran");
        assert_eq!(w.edge_config(), EDGE_BLUE, "{failing}");
        assert_eq!(w.edge.reloads(), 0, "{failing}");
    }
}

#[test]
fn a_newer_commit_or_a_stop_during_the_health_wait_ends_it_and_moves_no_traffic() {
    // (hooks that see it at the 4th look, the outcome)
    let table = [
        (
            Script { newer_commit_at: Some(4), ..Script::default() },
            ApplyOutcome::Preempted { during: PROMOTE.to_string() },
        ),
        (
            Script { stop_at_look: Some(4), ..Script::default() },
            ApplyOutcome::Interrupted { before: PROMOTE.to_string() },
        ),
    ];
    for (mut hooks, outcome) in table {
        let w = World::new();
        w.probe.script(GREEN, [Answer::Status(503)]);
        let report = w.run(&promotion(Vec::new()), &mut hooks);
        assert_eq!(report.outcome, outcome);
        assert_eq!(report.steps_done, 0);
        assert_eq!(w.probe.requests_to(GREEN), 3, "a look before each probe; the 4th saw it");
        assert_eq!(w.clock.elapsed(), Duration::from_millis(600), "not the 10 s health timeout");
        assert_eq!(w.edge_config(), EDGE_BLUE);
        assert_eq!(w.edge.reloads(), 0);
    }
}

#[test]
fn a_stop_or_a_newer_commit_ends_the_wait_on_a_slot_traffic_would_move_to_never_on_a_serving_one() {
    // A serving slot's gate after its redeploy is not planned again by the next sync (its
    // release mark is written): it runs to its end. (serving, hooks, the outcome)
    let wait = "wait for web-green to be healthy (/health 200)";
    let stop = || Script { stop_at_look: Some(1), ..Script::default() };
    let newer = || Script { newer_commit_at: Some(1), ..Script::default() };
    let table = [
        (true, stop(), ApplyOutcome::Applied),
        (true, newer(), ApplyOutcome::Applied),
        (false, stop(), ApplyOutcome::Interrupted { before: wait.into() }),
        (false, newer(), ApplyOutcome::Preempted { during: wait.into() }),
    ];
    for (serving, mut hooks, outcome) in table {
        let w = World::new();
        w.probe.script(GREEN, [ok('2')]);
        let gate = Gate { instance: "web-green".into(), slot: slot(Color::Green), serving };
        let report = w.run(&plan_of(vec![Action::HealthGate(gate)]), &mut hooks);
        assert_eq!(report.outcome, outcome, "serving: {serving}, stop: {:?}", hooks.stop_at_look);
    }
}

#[test]
fn a_probe_from_inside_a_slot_is_an_exec_bounded_by_the_probe_timeout() {
    let w = World::new();
    running_slot(&w.incus, "web-green");
    let healthy = ExecOutput { exit_code: 0, stdout: b"200".to_vec(), stderr: Vec::new() };
    for _ in 0..20 {
        w.incus.push_exec_result(healthy.clone());
    }
    // Bridge-addressed: probed with curl or wget run inside the slot.
    let slot = SlotSpec { loopback: None, ..slot(Color::Green) };
    let plan = plan_of(vec![Action::HealthGate(Gate {
        instance: "web-green".into(),
        slot,
        serving: true,
    })]);
    let report = w.run(&plan, &mut Script::default());
    assert_eq!(report.outcome, ApplyOutcome::Applied);
    let execs = w.incus.execs();
    assert!(execs.len() >= 2, "rise 2: {execs:?}");
    for (instance, request) in execs {
        assert_eq!(instance, "web-green");
        // The 2 s probe timeout and 5 s for the exec itself, not the 300 s of a deploy.
        assert_eq!(request.timeout, Duration::from_secs(7));
    }
}

#[test]
fn a_failed_gate_says_whether_the_slot_still_receives_the_traffic() {
    // (the plan, the end of the reason)
    let in_place = plan_of(vec![
        Action::DeleteInstance { name: "web-blue".into() },
        Action::HealthGate(serving_gate("web-blue", Color::Blue)),
    ]);
    let started_again = plan_of(vec![Action::HealthGate(serving_gate("web-blue", Color::Blue))]);
    // A new color gated where the edge does not change (a promotion the plan cannot do).
    let not_switched = plan_of(vec![Action::HealthGate(gate("web-green", Color::Green))]);
    let table = [
        (
            in_place,
            "; web-blue was rebuilt in place (in_place_updates: true) and still receives \
             prod/web's traffic; fix the release or promote the other color",
        ),
        (
            started_again,
            "; web-blue was started again and still receives prod/web's traffic; fix the \
             release or promote the other color",
        ),
        (promotion(Vec::new()), "; traffic was not moved"),
        (not_switched, "; traffic was not moved"),
    ];
    for (plan, end) in table {
        let w = World::new();
        w.probe.script(GREEN, [Answer::Status(500)]);
        let report = w.run(&plan, &mut Script::default());
        let ApplyOutcome::RolledBack { reason } = &report.outcome else {
            panic!("expected a roll-back, got {report:?}");
        };
        assert!(reason.ends_with(end), "{reason}");
        assert!(reason.contains("last: /health answered 500 (expected 200)"), "{reason}");
        assert_eq!(w.edge_config(), EDGE_BLUE);
        assert_eq!(w.edge.reloads(), 0);
    }
}

/// What the failure says of a serving slot the plan redeployed, started or left alone
/// (the engine's runs above cover the rebuilt and untouched ones end to end).
#[test]
fn a_failed_gate_names_what_was_done_to_the_serving_slot() {
    let deploy = || Action::DeployRelease {
        instance: "web-blue".into(),
        slot: slot(Color::Blue),
        files: slot_files(&slot(Color::Blue)),
    };
    let start = || Action::StartInstance { name: "web-blue".into() };
    let delete = || Action::DeleteInstance { name: "web-blue".into() };
    let table: [(Vec<Action>, &str); 4] = [
        (vec![delete(), deploy()], "was rebuilt in place (in_place_updates: true)"),
        (vec![deploy()], "was redeployed in place (in_place_updates: true)"),
        (vec![start(), deploy()], "was started again"),
        (Vec::new(), "was started again"),
    ];
    let gate = serving_gate("web-blue", Color::Blue);
    for (actions, what) in table {
        let said = still_serving(&plan_of(actions), &gate);
        assert_eq!(
            said,
            format!(
                "web-blue {what} and still receives prod/web's traffic; fix the release or promote the other color"
            )
        );
    }
}

#[test]
fn a_rise_the_timeout_cannot_fit_fails_the_gate_without_probing() {
    let w = World::new();
    let mut plan = promotion(Vec::new());
    switch_of(&mut plan).gates[0].slot.health_rise = 60; // 59 × 200 ms = 11.8 s > 10 s
    let report = w.run(&plan, &mut Script::default());
    let ApplyOutcome::RolledBack { reason } = &report.outcome else {
        panic!("expected a roll-back, got {report:?}");
    };
    assert!(
        reason.contains("can never pass its gate: health.rise 60 needs at least 11.8s"),
        "{reason}"
    );
    assert!(w.probe.requests().is_empty());
    assert_eq!(w.clock.elapsed(), Duration::ZERO);
}

// ------------------------------------------------------------ operations left running

fn plan_of(actions: Vec<Action>) -> Plan {
    Plan {
        steps: actions.into_iter().map(|action| Step { action, reason: "test".into() }).collect(),
        refusals: Vec::new(),
        drift: Vec::new(),
        edge_takeover: None,
        waiting: Vec::new(),
        cluster: Vec::new(),
    }
}

fn create(name: &str) -> Action {
    Action::CreateInstance {
        name: name.into(),
        image: "veza-test-busybox".into(),
        kind: Default::default(),
        profiles: vec!["default".into()],
        config: [("user.veza.app".to_string(), "web".to_string())].into_iter().collect(),
        devices: Default::default(),
        target: None,
    }
}

/// An owned, stopped instance as `create(name)` would have made it.
fn created_by_an_earlier_run(fake: &FakeIncus, name: &str, app: &str) {
    let mut live = fake.live();
    let config = [("user.veza.managed", "true"), ("user.veza.app", app)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    live.instances.insert(
        name.into(),
        LiveInstance {
            name: name.into(),
            kind: Default::default(),
            status: InstanceStatus::Stopped,
            config,
            devices: Default::default(),
            expanded_devices: Default::default(),
            profiles: vec!["default".into()],
            description: String::new(),
            location: None,
        },
    );
    fake.set_live(live);
}

/// Runs `plan` over `fake`, the other drivers idle.
fn run(fake: &FakeIncus, plan: &Plan, operations_timeout: Duration) -> ApplyReport {
    let mut w = World::new();
    w.gates.operations_timeout = operations_timeout;
    w.run_over(fake, plan, &mut Script::default())
}

#[test]
fn an_operation_still_running_past_the_limit_fails_the_run_before_anything_is_changed() {
    let fake = FakeIncus::with_default_host();
    created_by_an_earlier_run(&fake, "web-blue", "web");
    let op = fake.start_endless_operation("web-blue", "Starting instance");
    let plan = plan_of(vec![
        Action::CreateProfile {
            name: "web".into(),
            description: String::new(),
            config: Default::default(),
            devices: Default::default(),
        },
        Action::StartInstance { name: "web-blue".into() },
    ]);
    let report = run(&fake, &plan, Duration::from_secs(90));
    let ApplyOutcome::Failed { step, error } = &report.outcome else {
        panic!("expected a failure, got {report:?}");
    };
    assert_eq!(step, "start instance web-blue");
    assert_eq!(report.steps_done, 1, "the profile step before it ran");
    for part in [
        "instance `web-blue` is still busy",
        &op,
        "\"Starting instance\"",
        "after waiting 90.0 s",
        "nothing was changed",
        "hint: `incus operation show fake-1`",
    ] {
        assert!(error.contains(part), "`{part}` missing in: {error}");
    }
    assert_eq!(fake.write_calls(), ["POST /1.0/profiles"], "the instance was not touched");
}

#[test]
fn operations_left_running_are_waited_for_once_before_the_first_instance_step() {
    let fake = FakeIncus::with_default_host();
    created_by_an_earlier_run(&fake, "web-blue", "web");
    let op = fake.start_operation("web-blue", "Creating instance");
    fake.start_operation("someone-elses", "Starting instance");
    let plan = plan_of(vec![
        Action::StartInstance { name: "web-blue".into() },
        Action::StartInstance { name: "web-blue".into() },
    ]);
    let report = run(&fake, &plan, Duration::from_secs(90));
    assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    assert_eq!(
        fake.calls(),
        [
            "GET /1.0/operations?recursion=1".to_string(),
            format!("GET {op}/wait"),
            "GET /1.0/instances/web-blue".to_string(),
            "PUT /1.0/instances/web-blue/state".to_string(),
            "GET /1.0/instances/web-blue".to_string(),
        ],
        "one look at the operations, a wait for the one on web-blue only"
    );
}

#[test]
fn a_run_without_instance_steps_does_not_look_at_operations() {
    let fake = FakeIncus::with_default_host();
    fake.start_endless_operation("web-blue", "Starting instance");
    for plan in [plan_of(Vec::new()), plan_of(vec![Action::DeleteProfile { name: "gone".into() }])]
    {
        let report = run(&fake, &plan, Duration::from_secs(90));
        assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    }
    assert_eq!(fake.calls(), ["GET /1.0/profiles/gone"]);
}

#[test]
fn an_instance_created_meanwhile_is_adopted_only_when_it_is_what_the_step_creates() {
    // (app mark of the instance found, outcome)
    let table: [(&str, Result<(), &str>); 2] =
        [("web", Ok(())), ("api", Err("it is not what this step would create"))];
    for (app, want) in table {
        let fake = FakeIncus::with_default_host();
        created_by_an_earlier_run(&fake, "web-blue", app);
        let report = run(&fake, &plan_of(vec![create("web-blue")]), Duration::from_secs(90));
        match want {
            Ok(()) => {
                assert_eq!(report.outcome, ApplyOutcome::Applied, "{app}: {report:?}");
                assert_eq!(fake.write_calls(), ["PUT /1.0/instances/web-blue/state"], "{app}");
                assert!(fake.live().instances["web-blue"].is_running(), "{app}");
            }
            Err(why) => {
                let ApplyOutcome::Failed { error, .. } = &report.outcome else {
                    panic!("{app}: expected a failure, got {report:?}");
                };
                assert!(error.contains(why), "{app}: {error}");
                assert!(fake.write_calls().is_empty(), "{app}: {:?}", fake.write_calls());
            }
        }
    }
}

#[test]
fn image_sources() {
    assert_eq!(image_source("veza-test-busybox").unwrap(), ImageSource::local("veza-test-busybox"));
    assert!(matches!(image_source("images:debian/13").unwrap(), ImageSource::Simplestreams { .. }));
    assert!(image_source("ubuntu:24.04").unwrap_err().contains("unknown image remote"));
    // A simplestreams mirror, as the host's `incus.images` mapping writes it.
    assert_eq!(
        image_source("https://mirror.lan:8443/images:debian/13").unwrap(),
        ImageSource::Simplestreams {
            server: "https://mirror.lan:8443/images".into(),
            alias: "debian/13".into()
        }
    );
    assert!(image_source("https://mirror.lan:8443/images").is_err(), "no alias");
}

// ------------------------------------------------------------ migrations and secrets

/// `slot(Green)` with a migration and a secret-backed `DATABASE_URL`, its artifact a
/// file in `dir` (a gzip header is all the engine looks at; the fake unpacks nothing).
fn migrating_slot(dir: &Path) -> SlotSpec {
    let bytes = [0x1f_u8, 0x8b, 8, 0, 0, 0, 0, 0];
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    };
    std::fs::write(dir.join("web.tar.gz"), bytes).expect("artifact");
    let mut s = slot(Color::Green);
    s.artifact_url = format!("file://{}/web.tar.gz", dir.display());
    s.sha256 = sha;
    s.environment.insert("DATABASE_URL".into(), "postgres://web:{secret:pw}@db/web".into());
    s.secrets.insert("pw".into(), "ab12".into());
    s.migrate = Some(veza_plan::desired::MigrateSpec {
        command: "{dir}/migrate --up".into(),
        on: None,
        timeout_ms: 60_000,
    });
    s
}

/// A world whose green slot runs, and that slot with a migration (see
/// [`migrating_slot`]), its artifact in the returned directory.
fn migrating_world() -> (tempfile::TempDir, World, SlotSpec) {
    let tmp = tempfile::tempdir().expect("tmp");
    let w = World::new();
    running_slot(&w.incus, "web-green");
    let s = migrating_slot(tmp.path());
    (tmp, w, s)
}

/// An owned, running slot `name`.
fn running_slot(fake: &FakeIncus, name: &str) {
    created_by_an_earlier_run(fake, name, "web");
    let mut live = fake.live();
    if let Some(i) = live.instances.get_mut(name) {
        i.status = InstanceStatus::Running;
    }
    fake.set_live(live);
}

/// Runs `plan` over `w` with real artifacts from `dir` and the secret `pw` = `value`.
fn run_with_secret(w: &World, plan: &Plan, dir: &Path, value: &str) -> ApplyReport {
    run_with_secret_and(w, plan, dir, value, &mut Script::default())
}

/// [`run_with_secret`] with `hooks`.
fn run_with_secret_and(
    w: &World,
    plan: &Plan,
    dir: &Path,
    value: &str,
    hooks: &mut Script,
) -> ApplyReport {
    let artifacts = ArtifactStore::new(&dir.join("cache"));
    let mut secrets = veza_secrets::SecretValues::default();
    secrets.insert("prod", "pw", veza_secrets::SecretValue::new(value));
    let drivers = Drivers {
        incus: &w.incus,
        edge: &w.edge,
        units: &w.units,
        artifacts: &artifacts,
        probe: &w.probe,
        clock: &w.clock,
        secrets: &secrets,
        gates: w.gates.clone(),
    };
    crate::incus::runtime().expect("runtime").block_on(apply(plan, &drivers, hooks))
}

/// A migration whose exec failed once its operation existed (its limit passed, incusd
/// restarted under it, its wait or its output could not be read) may have run or still
/// run: the step fails as a migration failure (the commit is not retried, so the command
/// never runs twice at once) and its scratch directory is left to the wrapper. Only an
/// exec Incus refused or never received did not run: retried, its scratch removed.
#[test]
fn a_migration_whose_exec_may_have_started_is_never_started_again_for_the_commit() {
    // Where the migration's exec (the second: the first unpacks) falls among the calls.
    let (tmp, w, s) = migrating_world();
    let plan = promotion_after_deploy(&s);
    run_with_secret(&w, &plan, tmp.path(), "pw");
    let execs: Vec<usize> = w
        .incus
        .calls()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.ends_with("/exec"))
        .map(|(i, _)| i)
        .collect();
    let exec = "/1.0/instances/web-green/exec".to_string();
    let op = "/1.0/operations/1".to_string();
    // (what, the error, how the failure reads: `None` for "did not run")
    let table: Vec<(&str, IncusError, Option<&str>)> = vec![
        (
            "outlived its limit",
            IncusError::Timeout {
                method: "POST".into(),
                path: exec.clone(),
                operation: None,
                waited: Duration::from_secs(90),
            },
            Some("did not finish in `web-green` within its limit and may still be running there"),
        ),
        (
            "incusd restarted during its wait",
            IncusError::Transport {
                endpoint: "unix".into(),
                method: "GET".into(),
                path: format!("{op}/wait?timeout=30"),
                detail: "connection reset".into(),
            },
            Some("was started in `web-green` and its end was not seen"),
        ),
        (
            "its operation was lost",
            IncusError::OperationLost { method: "POST".into(), path: exec.clone(), operation: op },
            Some("may have run, or still run"),
        ),
        (
            "Incus refused the exec",
            IncusError::Api {
                method: "POST".into(),
                path: exec.clone(),
                status: 500,
                message: "instance is not running".into(),
            },
            None,
        ),
        (
            "Incus could not be reached",
            IncusError::Connect {
                endpoint: "unix".into(),
                method: "POST".into(),
                path: exec,
                detail: "connection refused".into(),
            },
            None,
        ),
        (
            "the ownership check before the exec could not read the instance",
            IncusError::Connect {
                endpoint: "unix".into(),
                method: "GET".into(),
                path: "/1.0/instances/web-green".into(),
                detail: "connection refused".into(),
            },
            None,
        ),
        (
            "the cluster fence refused the exec",
            IncusError::Fenced {
                call: "exec in web-green".into(),
                reason: "the cluster lease is now held by `b`".into(),
            },
            None,
        ),
        (
            "its output could not be read",
            IncusError::Transport {
                endpoint: "unix".into(),
                method: "GET".into(),
                path: "/1.0/instances/web-green/logs/exec_1.stdout".into(),
                detail: "connection reset".into(),
            },
            Some("may have run, or still run"),
        ),
    ];
    for (what, error, reads) in table {
        let (tmp, w, _) = migrating_world();
        w.incus.fail_on(execs[1], error);
        let report = run_with_secret(&w, &plan, tmp.path(), "pw");
        let scratch_removed = w.incus.execs().iter().any(|(_, r)| {
            r.command.last().is_some_and(|c| c == "rm -rf '/var/lib/veza-migrate/prod-web'")
        });
        match reads {
            Some(reads) => {
                let ApplyOutcome::RolledBack { reason } = &report.outcome else {
                    panic!("{what}: a migration that may have run ends as failed: {report:?}")
                };
                assert!(
                    reason.starts_with("the migration of prod/web for release 2222222222 failed: `{dir}/migrate --up`")
                        && reason.contains(reads),
                    "{what}: {reason}"
                );
                assert!(!scratch_removed, "{what}: the scratch directory is the wrapper's");
            }
            None => {
                assert!(
                    matches!(&report.outcome, ApplyOutcome::Failed { error, .. } if error.contains("did not run")),
                    "{what}: {report:?}"
                );
                assert!(scratch_removed, "{what}: the scratch directory is removed");
            }
        }
        assert!(report.migrated.is_empty(), "{what}");
        assert_eq!(w.edge_config(), EDGE_BLUE, "{what}: traffic stayed on blue");
    }
}

#[test]
fn a_failing_migration_stops_before_traffic_moves_and_never_quotes_the_secret() {
    let (tmp, w, s) = migrating_world();
    let plan = promotion_after_deploy(&s);
    // unpack, then the migration: it fails and prints its connection string.
    w.incus.push_exec_result(ExecOutput::default());
    w.incus.push_exec_result(ExecOutput {
        exit_code: 3,
        stdout: Vec::new(),
        stderr: b"connecting to postgres://web:p%40ss%2Fw0rd@db/web\nFATAL: p@ss/w0rd rejected\n"
            .to_vec(),
    });
    let report = run_with_secret(&w, &plan, tmp.path(), "p@ss/w0rd");
    let ApplyOutcome::RolledBack { reason } = &report.outcome else {
        panic!("a failed migration ends as rolled back: {report:?}")
    };
    assert!(
        reason.starts_with(
            "the migration of prod/web for release 2222222222 failed: `{dir}/migrate --up` exited 3"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("postgres://web:{secret:pw}@db/web")
            && reason.ends_with("traffic was not moved"),
        "{reason}"
    );
    assert!(!reason.contains("p@ss") && !reason.contains("p%40ss"), "{reason}");
    assert_eq!(report.steps_done, 0);
    assert!(report.migrated.is_empty());
    assert_eq!(w.edge_config(), EDGE_BLUE, "traffic stayed on blue");
    assert_eq!(w.edge.reloads(), 0);
    // The command ran from the scratch copy, with `{dir}` pointing at it; the environment
    // file was root-only and removed by the script itself.
    let execs = w.incus.execs();
    let script = execs[1].1.command.join(" ");
    assert!(
        script.contains("/bin/sh -c '/var/lib/veza-migrate/prod-web/release/migrate --up'"),
        "{script}"
    );
    assert!(
        script.contains("rm -f '/var/lib/veza-migrate/prod-web/env'") && script.contains("trap"),
        "{script}"
    );
    assert!(!script.contains("p@ss"), "{script}");
    let env = w.incus.file("web-green", "/var/lib/veza-migrate/prod-web/env").expect("env pushed");
    assert_eq!(
        String::from_utf8_lossy(&env).lines().nth(1),
        Some("DATABASE_URL=\"postgres://web:p@ss/w0rd@db/web\"")
    );
}

#[test]
fn a_migration_that_cannot_run_is_an_ordinary_failure_retried_next_sync() {
    let (tmp, w, mut s) = migrating_world();
    s.sha256 = "0".repeat(64); // the artifact does not match: nothing ran
    let report = run_with_secret(&w, &promotion_after_deploy(&s), tmp.path(), "pw");
    assert!(
        matches!(&report.outcome, ApplyOutcome::Failed { error, .. } if error.contains("did not run")),
        "{report:?}"
    );
}

/// The wrapper's own "could not start" exits (201, 202) count only with its last line:
/// a command that itself exits 201 failed as a migration (never retried for the commit).
#[test]
fn only_the_wrapper_saying_so_makes_an_exit_201_a_migration_that_did_not_start() {
    use veza_plan::slot::MIGRATE_NOT_STARTED;
    // (exit code, stderr, did not start?)
    let table = [
        (201, format!("cd: no such directory\n{MIGRATE_NOT_STARTED}\n"), true),
        (202, format!("{MIGRATE_NOT_STARTED}\n"), true),
        (201, "migrate: schema lock held\n".to_string(), false),
        (202, format!("{MIGRATE_NOT_STARTED}\nthen the command's own line\n"), false),
    ];
    for (code, stderr, not_started) in table {
        let (tmp, w, s) = migrating_world();
        w.incus.push_exec_result(ExecOutput::default());
        w.incus.push_exec_result(ExecOutput {
            exit_code: code,
            stdout: Vec::new(),
            stderr: stderr.clone().into_bytes(),
        });
        let report = run_with_secret(&w, &promotion_after_deploy(&s), tmp.path(), "pw");
        let got = match &report.outcome {
            ApplyOutcome::Failed { error, .. } if error.contains("did not run") => true,
            ApplyOutcome::RolledBack { reason } if reason.contains(&format!("exited {code}")) => {
                false
            }
            other => panic!("{code} {stderr:?}: {other:?}"),
        };
        assert_eq!(got, not_started, "{code} {stderr:?}");
    }
}

#[test]
fn a_successful_migration_is_reported_and_the_deploy_goes_on() {
    let (tmp, w, s) = migrating_world();
    let plan = plan_of(vec![migrate(&s), Action::StartInstance { name: "web-green".into() }]);
    let mut hooks = Script::default();
    let report = run_with_secret_and(&w, &plan, tmp.path(), "pw", &mut hooks);
    assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    let done = ("prod".to_string(), "web".to_string(), release('2').to_string());
    assert_eq!(report.migrated, std::slice::from_ref(&done));
    // Told at once, before the next step started (the journal keeps it through a kill).
    assert_eq!(hooks.migrated, [(1, done.0, done.1, done.2)]);
}

#[test]
fn job_environments_are_rendered_into_root_only_files_and_dropped_with_the_env() {
    let tmp = tempfile::tempdir().expect("tmp");
    let w = World::new();
    let with_env = Action::InstallUnits {
        target: UnitTarget::Host,
        files: vec![("veza-job-prod-backup.service".into(), "[Service]\n".into())],
        timers: Vec::new(),
        environments: vec![veza_plan::desired::JobEnvironment {
            file: "veza-job-prod-backup.env".into(),
            env: "prod".into(),
            vars: BTreeMap::from([("CIPHER".to_string(), "{secret:pw}".to_string())]),
        }],
    };
    let report = run_with_secret(&w, &plan_of(vec![with_env]), tmp.path(), "k3y");
    assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    let files = w.units.private_files();
    assert_eq!(files["veza-job-prod-backup.env"].lines().nth(1), Some("CIPHER=\"k3y\""));
    // The same job without an environment: its old file goes.
    let without = Action::InstallUnits {
        target: UnitTarget::Host,
        files: vec![("veza-job-prod-backup.service".into(), "[Service]\n".into())],
        timers: Vec::new(),
        environments: Vec::new(),
    };
    run_with_secret(&w, &plan_of(vec![without]), tmp.path(), "k3y");
    assert!(w.units.private_files().is_empty(), "{:?}", w.units.calls());
}

fn migrate(s: &SlotSpec) -> Action {
    let files = migration_files(s).expect("the slot has a migration");
    Action::Migrate { instance: "web-green".into(), slot: s.clone(), files }
}

/// Migrate, deploy, then promote green.
fn promotion_after_deploy(s: &SlotSpec) -> Plan {
    plan_of(vec![
        migrate(s),
        Action::DeployRelease {
            instance: "web-green".into(),
            slot: s.clone(),
            files: slot_files(s),
        },
        promote(),
    ])
}

/// The green slot running release 1 (its mark set), and release 2 deployed into it in
/// place; the unpack-and-restart exec answers `exit_code`.
fn redeploy_in_place(exit_code: i32) -> (ApplyReport, (Option<String>, Option<String>)) {
    let (tmp, w, mut s) = migrating_world();
    s.migrate = None;
    let mut live = w.incus.live();
    let green = live.instances.get_mut("web-green").expect("the green slot");
    green.config.insert(MARK_RELEASE.into(), release('1').to_string());
    w.incus.set_live(live);
    w.incus.push_exec_result(ExecOutput {
        exit_code,
        stdout: Vec::new(),
        stderr: b"veza-app.service: start failed".to_vec(),
    });
    let deploy = Action::DeployRelease {
        instance: "web-green".into(),
        slot: s.clone(),
        files: slot_files(&s),
    };
    let report = run_with_secret(&w, &plan_of(vec![deploy]), tmp.path(), "pw");
    let config = w.incus.live().instances["web-green"].config.clone();
    (report, (config.get(MARK_RELEASE).cloned(), config.get(MARK_DEPLOYED).cloned()))
}

#[test]
fn a_release_deployed_in_place_is_marked_only_once_it_runs_and_never_keeps_the_old_mark() {
    let (report, mark) = redeploy_in_place(0);
    assert_eq!(report.outcome, ApplyOutcome::Applied, "{report:?}");
    assert_eq!(mark, (Some(release('2').to_string()), Some("agent".to_string())));
    // Swapped but not started: the slot claims no release (status: unknown), and the next
    // sync, seeing a release that differs, deploys it again.
    let (report, mark) = redeploy_in_place(1);
    assert!(
        matches!(&report.outcome, ApplyOutcome::Failed { error, .. } if error.contains("start failed")),
        "{report:?}"
    );
    assert_eq!(mark.0, None, "the old release's mark is gone");
}

/// A deploy pushes the app's environment and run script beside the ones in place, and
/// its unpack-and-swap exec moves them in with the release: a deploy that fails before the
/// swap leaves the old release with its own environment and start command.
#[test]
fn a_deploy_that_fails_before_its_swap_leaves_the_old_environment_in_place() {
    let (tmp, w, mut s) = migrating_world();
    s.migrate = None;
    w.incus.set_file("web-green", APP_ENV_FILE, b"OLD=1\n".to_vec());
    w.incus.set_file("web-green", APP_RUN_SCRIPT, b"#!/bin/sh\nold\n".to_vec());
    w.incus.push_exec_result(ExecOutput {
        exit_code: 2,
        stdout: Vec::new(),
        stderr: b"tar: short read".to_vec(),
    });
    let deploy = Action::DeployRelease {
        instance: "web-green".into(),
        slot: s.clone(),
        files: slot_files(&s),
    };
    let report = run_with_secret(&w, &plan_of(vec![deploy]), tmp.path(), "pw");
    assert!(matches!(report.outcome, ApplyOutcome::Failed { .. }), "{report:?}");
    assert_eq!(w.incus.file("web-green", APP_ENV_FILE), Some(b"OLD=1\n".to_vec()));
    assert_eq!(w.incus.file("web-green", APP_RUN_SCRIPT), Some(b"#!/bin/sh\nold\n".to_vec()));
    let pushed = w.incus.file("web-green", &format!("{APP_ENV_FILE}.new")).expect("pushed");
    assert!(!pushed.is_empty());
    let mut execs: Vec<String> =
        w.incus.execs().into_iter().map(|(_, e)| e.command.join(" ")).collect();
    // The environment pushed for the swap that failed is removed (it holds secrets).
    let removed = execs.pop().expect("the removal");
    assert!(
        removed.ends_with(&format!("rm -f {APP_ENV_FILE}.new {APP_RUN_SCRIPT}.new")),
        "{removed}"
    );
    let script = execs.pop().expect("the unpack-and-swap exec");
    let unpacked = script.find(".new").expect("unpacks beside");
    let moved = script.find(&format!("mv -f {APP_ENV_FILE}.new {APP_ENV_FILE}")).expect("moves in");
    assert!(unpacked < moved, "{script}");
    assert!(script.contains(&format!("mv -f {APP_RUN_SCRIPT}.new {APP_RUN_SCRIPT}")), "{script}");
}

#[test]
fn an_edge_update_that_moves_no_traffic_is_verified_and_says_there_is_no_color_to_go_back_to() {
    let check = match promote() {
        Action::Promote(s) => s.checks[0].clone(),
        _ => unreachable!("promote() is a promotion"),
    };
    let plan = plan_of(vec![
        Action::InstallEdge { runs_in: "host".into(), config: EDGE_GREEN.into() },
        Action::VerifyEdge(check),
    ]);
    // (answers through the edge, outcome)
    let table = [
        (ok('2'), None),
        (
            Answer::Status(503),
            Some(
                "prod/web on green: request 1 through the edge answered 503; the edge config \
                 was updated without moving traffic between colors, so there is no other color \
                 to go back to",
            ),
        ),
    ];
    for (answer, rolled_back) in table {
        let w = World::new();
        w.probe.script(LISTEN, [answer.clone()]);
        let mut hooks = Script::default();
        let report = w.run(&plan, &mut hooks);
        match rolled_back {
            None => assert_eq!(report.outcome, ApplyOutcome::Applied, "{answer:?}"),
            Some(reason) => assert_eq!(
                report.outcome,
                ApplyOutcome::RolledBack { reason: reason.to_string() },
                "{answer:?}"
            ),
        }
        assert_eq!(w.edge_config(), EDGE_GREEN, "{answer:?}: the update stays");
        assert_eq!(w.edge.reloads(), 1, "{answer:?}");
        assert!(hooks.phases.is_empty(), "{answer:?}: not a promotion");
    }
}
