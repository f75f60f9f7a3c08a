//! What a PR head's preview says on the forge: the status state and its one line, from
//! how the head fared (refused before planning, quarantined, planned, planning failed).
//! Pure. The line fits Forgejo's description (`veza_host::forge::MAX_DESCRIPTION`
//! characters): whole items while they fit, then `+N more`.

use veza_host::forge::{MAX_DESCRIPTION, StatusState};
use veza_plan::{Action, Plan};
use veza_source::Refusal;

/// How a head's preview ended.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    /// Refused by the trust rules or the manifests: never planned.
    Rejected { kind: Refusal, reason: &'a str },
    /// The head is a commit quarantined after a rolled-back promotion.
    Quarantined(&'a str),
    /// Planned against live state.
    Planned(&'a Plan),
    /// Observing or planning failed, or took longer than `previews.plan_timeout`.
    Failed(&'a str),
}

/// The status a verdict gives the head: `success` when the plan refuses nothing,
/// `failure` when the head is refused or its plan refuses something, `error` when no
/// plan could be made.
pub fn status_of(v: Verdict<'_>) -> (StatusState, String) {
    match v {
        Verdict::Rejected { kind, reason } => {
            let what = match kind {
                Refusal::Signature if reason.contains(" is not signed") => "unsigned",
                Refusal::Signature | Refusal::TrustRoot => "untrusted",
                Refusal::Policy => "not approved",
                _ => "refused",
            };
            (StatusState::Failure, fit(&format!("{what}, not planned: "), &[reason.to_string()]))
        }
        Verdict::Quarantined(why) => {
            (StatusState::Failure, fit("quarantined, not planned: ", &[why.to_string()]))
        }
        Verdict::Failed(why) => (StatusState::Error, fit("preview failed: ", &[why.to_string()])),
        Verdict::Planned(plan) => planned(plan),
    }
}

fn planned(plan: &Plan) -> (StatusState, String) {
    let steps: Vec<String> = plan.steps.iter().flat_map(|s| phrases(&s.action)).collect();
    let waits = match plan.waiting.len() {
        0 => String::new(),
        n => format!("; {n} step(s) would wait for a maintenance window"),
    };
    if !plan.refusals.is_empty() {
        let refused: Vec<String> =
            plan.refusals.iter().map(|r| format!("{}: {}", r.resource, r.reason)).collect();
        let head = format!("would refuse {}: ", refused.len());
        return (StatusState::Failure, fit(&head, &refused));
    }
    let line = match (steps.is_empty(), plan.waiting.is_empty()) {
        (true, true) => "would change nothing (in sync)".to_string(),
        (true, false) => format!("would apply nothing now{waits}"),
        (false, _) => {
            let budget = MAX_DESCRIPTION - waits.chars().count();
            format!("{}{waits}", fit_within("would: ", &steps, budget))
        }
    };
    (StatusState::Success, line)
}

/// A step in a few words, as a reviewer reads it; steps that only accompany another
/// (health gates, checks through the edge) say nothing.
fn phrases(a: &Action) -> Vec<String> {
    let one = |s: String| vec![s];
    match a {
        Action::DeployRelease { slot, .. } => {
            one(format!("deploy {} {} {}", slot.app, slot.color, slot.release.short()))
        }
        Action::Migrate { slot, .. } => {
            one(format!("migrate {}/{} {}", slot.env, slot.app, slot.release.short()))
        }
        Action::Promote(s) => {
            s.promotions.iter().map(|p| format!("switch {}/{} to {}", p.env, p.app, p.to)).collect()
        }
        Action::CreateNetwork { name, .. } => one(format!("create network {name}")),
        Action::CreateProfile { name, .. } => one(format!("create profile {name}")),
        Action::UpdateProfile { name, .. } => one(format!("update profile {name}")),
        Action::DeleteProfile { name } => one(format!("delete profile {name}")),
        Action::Snapshot { instance, .. } => one(format!("snapshot {instance}")),
        Action::CreateInstance { name, .. } => one(format!("create {name}")),
        Action::UpdateInstance { name, .. } => one(format!("update {name}")),
        Action::StartInstance { name } => one(format!("start {name}")),
        Action::DeleteInstance { name } => one(format!("delete {name}")),
        Action::InstallEdge { .. } => one("update the edge".to_string()),
        Action::InstallUnits { target, files, .. } => {
            one(format!("install {} unit(s) on {target}", files.len()))
        }
        Action::RemoveUnits { target, names } => {
            one(format!("remove {} unit(s) on {target}", names.len()))
        }
        Action::HealthGate(_) | Action::VerifyEdge(_) => Vec::new(),
    }
}

/// `head` and as many of `items` (`, `-separated) as fit in [`MAX_DESCRIPTION`].
fn fit(head: &str, items: &[String]) -> String {
    fit_within(head, items, MAX_DESCRIPTION)
}

/// `head` and as many whole `items` as fit in `budget` characters, then `+N more`; a
/// first item that alone does not fit is cut with `…`. Whitespace runs become one space.
fn fit_within(head: &str, items: &[String], budget: usize) -> String {
    let flat = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let items: Vec<String> = items.iter().map(|i| flat(i)).collect();
    let mut out = head.to_string();
    let len = |s: &str| s.chars().count();
    for (i, item) in items.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let rest = items.len() - i - 1;
        // Room for this item, and for the `, +N more` of the ones after it.
        let more = if rest == 0 { 0 } else { len(&format!(", +{rest} more")) };
        if len(&out) + len(sep) + len(item) + more <= budget {
            out.push_str(sep);
            out.push_str(item);
            continue;
        }
        let left = items.len() - i;
        if i == 0 {
            let tail = if left > 1 { format!(", +{} more", left - 1) } else { String::new() };
            let room = budget.saturating_sub(len(&out) + len(&tail) + 1);
            out.extend(item.chars().take(room));
            out.push('…');
            out.push_str(&tail);
        } else {
            out.push_str(&format!(", +{left} more"));
        }
        break;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use veza_model::manifest::{Color, Release};
    use veza_plan::desired::SlotSpec;
    use veza_plan::plan::{Promotion, Refusal as PlanRefusal, Switch};
    use veza_plan::slot::SlotFiles;
    use veza_plan::{Step, maintenance::Waiting};

    use super::*;

    fn release(c: char) -> Release {
        Release::try_from(c.to_string().repeat(40)).unwrap()
    }

    fn deploy(app: &str, color: Color, r: char) -> Action {
        Action::DeployRelease {
            instance: format!("prod-{app}-{color}"),
            slot: SlotSpec {
                env: "prod".into(),
                app: app.into(),
                color,
                release: release(r),
                artifact_url: "https://forge.example/a.tar.gz".into(),
                sha256: "0".repeat(64),
                install_dir: "/srv/a".into(),
                start: "./a".into(),
                port: 8080,
                health_path: "/health".into(),
                expect_status: 200,
                health_rise: 1,
                health_timeout_ms: 1000,
                loopback: None,
                environment: BTreeMap::new(),
                secrets: BTreeMap::new(),
                migrate: None,
            },
            files: SlotFiles { run_script: String::new(), unit: String::new() },
        }
    }

    fn switch(apps: &[&str]) -> Action {
        Action::Promote(Switch {
            promotions: apps
                .iter()
                .map(|a| Promotion {
                    env: "prod".into(),
                    app: (*a).into(),
                    from: Some(Color::Blue),
                    to: Color::Green,
                    release: release('0'),
                })
                .collect(),
            gates: Vec::new(),
            runs_in: "veza-haproxy".into(),
            config: String::new(),
            checks: Vec::new(),
            fallback: None,
        })
    }

    fn plan(actions: Vec<Action>, waiting: usize, refusals: &[(&str, &str)]) -> Plan {
        let step = |action| Step { action, reason: "r".into() };
        Plan {
            waiting: (0..waiting)
                .map(|_| Waiting {
                    env: "prod".into(),
                    step: step(Action::DeleteInstance { name: "old".into() }),
                    because: "b".into(),
                    next_open: None,
                    next_open_unix: None,
                })
                .collect(),
            steps: actions.into_iter().map(step).collect(),
            refusals: refusals
                .iter()
                .map(|(r, why)| PlanRefusal { resource: (*r).into(), reason: (*why).into() })
                .collect(),
            drift: Vec::new(),
            edge_takeover: None,
            cluster: Vec::new(),
        }
    }

    #[test]
    fn a_plan_says_what_would_happen_within_the_description_limit() {
        let many: Vec<Action> = (0..12)
            .map(|i| Action::CreateInstance {
                name: format!("prod-worker-{i:02}"),
                image: "images:debian/13".into(),
                kind: veza_plan::live::InstanceKind::Container,
                profiles: Vec::new(),
                config: BTreeMap::new(),
                devices: BTreeMap::new(),
                target: None,
            })
            .collect();
        let long = "x".repeat(300);
        // (plan, state, description)
        let table: Vec<(Plan, StatusState, String)> = vec![
            (plan(vec![], 0, &[]), StatusState::Success, "would change nothing (in sync)".into()),
            (
                plan(vec![deploy("backend", Color::Green, '0'), switch(&["backend", "web"])], 0, &[]),
                StatusState::Success,
                "would: deploy backend green 0000000000, switch prod/backend to green, switch prod/web to green".into(),
            ),
            (
                plan(vec![switch(&["web"])], 1, &[]),
                StatusState::Success,
                "would: switch prod/web to green; 1 step(s) would wait for a maintenance window".into(),
            ),
            (
                plan(vec![], 2, &[]),
                StatusState::Success,
                "would apply nothing now; 2 step(s) would wait for a maintenance window".into(),
            ),
            (
                plan(many.clone(), 0, &[]),
                StatusState::Success,
                "would: create prod-worker-00, create prod-worker-01, create prod-worker-02, create prod-worker-03, create prod-worker-04, +7 more".into(),
            ),
            (
                plan(vec![switch(&["web"])], 0, &[("instance db", "foreign: not managed"), ("app web", "in place")]),
                StatusState::Failure,
                "would refuse 2: instance db: foreign: not managed, app web: in place".into(),
            ),
            (
                plan(vec![], 0, &[("instance db", &long), ("app web", "in place")]),
                StatusState::Failure,
                format!("would refuse 2: instance db: {}…, +1 more", "x".repeat(101)),
            ),
        ];
        for (p, state, line) in table {
            let (got_state, got) = status_of(Verdict::Planned(&p));
            assert_eq!((got_state, got.as_str()), (state, line.as_str()));
            assert!(got.chars().count() <= MAX_DESCRIPTION, "{got}");
        }
    }

    #[test]
    fn a_head_refused_or_not_planned_gets_a_failure_or_an_error() {
        let unsigned = Refusal::Signature.reason("commit is not signed");
        let unknown = Refusal::Signature.reason("signing key SHA256:x is not in allowed_signers");
        let policy = Refusal::Policy.reason("manifests/prod.yaml needs 2 approvals, has 0");
        let invalid = Refusal::InvalidManifests.reason("prod.yaml:3:1: error: unknown field");
        let secret = Refusal::Secret.reason("`secrets/prod/db.age` is not in the commit");
        // (verdict, state, description)
        let table: Vec<(Verdict, StatusState, String)> = vec![
            (
                Verdict::Rejected { kind: Refusal::Signature, reason: &unsigned },
                StatusState::Failure,
                "unsigned, not planned: signature: commit is not signed".into(),
            ),
            (
                Verdict::Rejected { kind: Refusal::Signature, reason: &unknown },
                StatusState::Failure,
                format!("untrusted, not planned: {unknown}"),
            ),
            (
                Verdict::Rejected { kind: Refusal::Policy, reason: &policy },
                StatusState::Failure,
                format!("not approved, not planned: {policy}"),
            ),
            (
                Verdict::Rejected { kind: Refusal::InvalidManifests, reason: &invalid },
                StatusState::Failure,
                format!("refused, not planned: {invalid}"),
            ),
            (
                Verdict::Rejected { kind: Refusal::Secret, reason: &secret },
                StatusState::Failure,
                format!("refused, not planned: {secret}"),
            ),
            (
                Verdict::Quarantined("rolled back: /health answered 503"),
                StatusState::Failure,
                "quarantined, not planned: rolled back: /health answered 503".into(),
            ),
            (
                Verdict::Failed("timed out after 10s"),
                StatusState::Error,
                "preview failed: timed out after 10s".into(),
            ),
        ];
        for (verdict, state, line) in table {
            assert_eq!(status_of(verdict), (state, line));
        }
        let (_, cut) = status_of(Verdict::Failed(&"y".repeat(500)));
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION);
        assert!(cut.ends_with('…'), "{cut}");
    }
}
