//! The engine in process: plans run over the fakes (Incus, the edge, units, probes and the
//! clock), asserting the recorded calls and the report.

use std::time::Duration;

use veza_plan::{Action, Plan, Step};

use super::*;
use crate::artifact::ArtifactStore;
use crate::incus::{FakeIncus, ImageSource, InstanceStatus, LiveInstance};

// ------------------------------------------------------------ operations left running

struct NoEdge;

impl Edge for NoEdge {
    async fn live_config(&self) -> Result<Option<String>, String> {
        Ok(None)
    }
    async fn install(&self, _: &str) -> Result<(), String> {
        Err("no edge in this test".to_string())
    }
}

struct Quiet;

impl Hooks for Quiet {
    fn before_step(&mut self, _: usize, _: &Step) {}
    fn stop_requested(&self) -> bool {
        false
    }
    fn preempted(&self) -> bool {
        false
    }
}

fn plan_of(actions: Vec<Action>) -> Plan {
    Plan {
        steps: actions.into_iter().map(|action| Step { action, reason: "test".into() }).collect(),
        refusals: Vec::new(),
        promotions: Vec::new(),
        drift: Vec::new(),
        fallback_edge: None,
    }
}

fn create(name: &str) -> Action {
    Action::CreateInstance {
        name: name.into(),
        image: "veza-test-busybox".into(),
        kind: "container".into(),
        profiles: vec!["default".into()],
        config: [("user.veza.app".to_string(), "web".to_string())].into_iter().collect(),
        devices: Default::default(),
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
        },
    );
    fake.set_live(live);
}

fn run(fake: &FakeIncus, plan: &Plan, operations_timeout: Duration) -> ApplyReport {
    // Neither is used by these plans (no deploy, no host units): nothing is written.
    let unused = std::path::Path::new("/nonexistent/veza-apply-test");
    let artifacts = ArtifactStore::new(unused);
    let units = crate::systemd::Systemd::new(fake, unused.join("units"));
    let drivers = Drivers {
        incus: fake,
        edge: &NoEdge,
        units: &units,
        artifacts: &artifacts,
        gates: Gates { operations_timeout, ..Gates::default() },
    };
    crate::incus::runtime().expect("runtime").block_on(apply(plan, &drivers, &mut Quiet))
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
}
