//! Promotions whose checks through the edge are owed. A kill during a promotion's check
//! (or a fallback that failed to install) leaves the edge routing to a color nobody
//! checked; the next plan must not take that edge as the truth. The planner is told
//! which apps owe their checks and promotes them again from the color they go back to:
//! switch (the config already live), checks, and the fallback to that color. Pure
//! functions over data, shared by `sync` and `plan` so both decide alike.

use std::collections::BTreeMap;

use veza_model::manifest::Color;
use veza_plan::live::LiveState;
use veza_plan::plan::{EdgeRecheck, Switch};
use veza_plan::{Action, Plan};
use veza_state::UncheckedEdge;

/// `env/app` → the color traffic goes back to, as the state and the journal keep them.
pub(crate) type Owed = BTreeMap<String, String>;

fn key(env: &str, app: &str) -> String {
    format!("{env}/{app}")
}

/// The apps a switch moves to a color that its checks through the edge have still to
/// prove, with the color each goes back to. An app promoted for the first time (nothing to
/// go back to) or without a check through the edge is not among them.
pub(crate) fn switched(switch: &Switch) -> Owed {
    switch
        .promotions
        .iter()
        .filter(|p| switch.checks.iter().any(|c| c.env == p.env && c.app == p.app))
        .filter_map(|p| Some((key(&p.env, &p.app), p.from?.to_string())))
        .collect()
}

/// What a cluster's leader shares before running `plan` (`shared.rs`): what it owes, and
/// every app the plan's switch moves from a color, with that color, as [`switched`] will
/// owe them once the switch begins. `None` when the switch leaves nothing owed that way
/// (no switch, or none from a color with a check through the edge).
pub(crate) fn before_run(owed: &Owed, plan: &Plan) -> Option<Owed> {
    let switched = switched(plan.switch()?);
    if switched.is_empty() {
        return None;
    }
    let mut all = owed.clone();
    all.extend(switched);
    Some(all)
}

/// Drops from `owed` the apps of a switch whose checks passed.
pub(crate) fn pay(owed: &mut Owed, switch: &Switch) {
    for p in &switch.promotions {
        owed.remove(&key(&p.env, &p.app));
    }
}

fn color(name: &str) -> Option<Color> {
    Color::ALL.into_iter().find(|c| c.as_str() == name)
}

/// The owed promotions that still matter against `live`: an app whose edge already
/// routes to the color it goes back to (a fallback that did land) or that the edge no
/// longer routes at all owes nothing.
pub(crate) fn still_owed(owed: &Owed, live: &LiveState) -> Owed {
    owed.iter()
        .filter(|(k, back)| {
            let Some((env, app)) = k.split_once('/') else { return false };
            color(back).is_some_and(|b| live.active_color(env, app).is_some_and(|c| c != b))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether `commit` is a killed run's whose checks through the edge failed (its journal
/// says so: `checks_failed`) and whose fallback landed (nothing of `owed` is still routed
/// away from the color it goes back to, and an owed edge switch with no color to go back
/// to has its config before it back): it is quarantined as its recorded rollback would
/// have been. A fallback that did not land leaves the check owed: promoted again from
/// those colors (or the config before it), checked, and put back again if the checks
/// fail.
pub(crate) fn rolled_back_unrecorded(
    checks_failed: Option<&str>,
    commit: &str,
    owed: (&Owed, Option<&UncheckedEdge>),
    live: &LiveState,
) -> bool {
    let (owed, edge) = owed;
    checks_failed == Some(commit)
        && still_owed(owed, live).is_empty()
        && edge_still_owed(edge, live).is_none()
}

/// The owed checks as the planner takes them ([`veza_plan::PlanOptions::unchecked`]):
/// `(env, app)` → the color traffic goes back to.
pub(crate) fn unchecked(owed: &Owed, live: &LiveState) -> BTreeMap<(String, String), Color> {
    still_owed(owed, live)
        .iter()
        .filter_map(|(k, back)| {
            let (env, app) = k.split_once('/')?;
            Some(((env.to_string(), app.to_string()), color(back)?))
        })
        .collect()
}

/// The edge switch of `switch` owed its checks, when it has no color to go back to (no
/// fallback: a takeover, or apps' first traffic) and replaces a config (`before`): its
/// apps with a check through the edge, and that config. Nothing to go back to (no config
/// before it), nothing is owed.
pub(crate) fn edge_switched(switch: &Switch, before: Option<&str>) -> Option<UncheckedEdge> {
    if switch.fallback.is_some() {
        return None;
    }
    let apps: Vec<String> = switch
        .promotions
        .iter()
        .filter(|p| switch.checks.iter().any(|c| c.env == p.env && c.app == p.app))
        .map(|p| key(&p.env, &p.app))
        .collect();
    let config = before?.to_string();
    (!apps.is_empty()).then_some(UncheckedEdge { config, apps })
}

/// Drops from an owed edge switch the apps `switch` checked; nothing is owed once none
/// is left.
pub(crate) fn pay_edge(owed: &mut Option<UncheckedEdge>, switch: &Switch) {
    if let Some(e) = owed {
        e.apps.retain(|a| !switch.promotions.iter().any(|p| key(&p.env, &p.app) == *a));
        if e.apps.is_empty() {
            *owed = None;
        }
    }
}

/// The owed edge switch while it still matters against `live`: not once the config it
/// replaced is back (its fallback landed), nor on an edge with no config.
pub(crate) fn edge_still_owed(
    owed: Option<&UncheckedEdge>,
    live: &LiveState,
) -> Option<UncheckedEdge> {
    owed.filter(|e| live.edge_config().is_some_and(|c| c != e.config)).cloned()
}

/// The owed edge switch as the planner takes it ([`veza_plan::PlanOptions::unchecked_edge`]).
pub(crate) fn edge_recheck(owed: Option<&UncheckedEdge>, live: &LiveState) -> Option<EdgeRecheck> {
    let e = edge_still_owed(owed, live)?;
    let apps = e
        .apps
        .iter()
        .filter_map(|k| k.split_once('/').map(|(env, app)| (env.to_string(), app.to_string())))
        .collect();
    Some(EdgeRecheck { apps, back_to: e.config })
}

/// What stays owed when `plan` has no step to run now: nothing, when the planner could
/// not plan an owed check again (the color it goes back to is no longer deployed, the edge
/// is not updated); what `live` still shows switched, when steps wait for a maintenance
/// window (the re-check may be among them).
pub(crate) fn after_empty_plan(owed: &Owed, live: &LiveState, plan: &Plan) -> Owed {
    if plan.waiting.is_empty() { Owed::new() } else { still_owed(owed, live) }
}

/// What is owed once a run of `plan` ends: what was owed before, less the promotions of
/// the `done` completed steps (their checks passed), plus what the run left switched and
/// unchecked (`left`, from the journal: a failed fallback), less what `live_after` shows
/// already back (nothing when the host could not be read back).
pub(crate) fn after_run(
    before: &Owed,
    plan: &Plan,
    done: usize,
    left: &Owed,
    live_after: Option<&LiveState>,
) -> Owed {
    let mut owed = before.clone();
    owed.extend(left.iter().map(|(k, v)| (k.clone(), v.clone())));
    for step in plan.steps.iter().take(done) {
        if let Action::Promote(switch) = &step.action {
            pay(&mut owed, switch);
        }
    }
    match live_after {
        Some(live) => still_owed(&owed, live),
        None => owed,
    }
}

#[cfg(test)]
mod tests {
    use veza_model::manifest::Release;
    use veza_plan::Step;
    use veza_plan::plan::{Promotion, Switch};

    use super::*;

    fn live(active: &[(&str, Color)]) -> LiveState {
        let mut l = LiveState::default();
        for (k, c) in active {
            let (env, app) = k.split_once('/').expect("env/app");
            l.edge.active.insert((env.into(), app.into()), *c);
        }
        l
    }

    /// `env/app` with a color, as the edge routes them.
    type Routes<'a> = &'a [(&'a str, Color)];
    /// `env/app` with the color it goes back to.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn owed(pairs: Pairs<'_>) -> Owed {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn an_owed_check_stands_until_the_edge_is_back_on_its_color() {
        use Color::{Blue, Green};
        // (what, live edge, owed, what the planner is told)
        let cases: &[(&str, Routes<'_>, Pairs<'_>, Routes<'_>)] = &[
            ("nothing owed", &[("prod/web", Green)], &[], &[]),
            (
                "switched, never checked",
                &[("prod/web", Green), ("prod/api", Green)],
                &[("prod/web", "blue")],
                &[("prod/web", Blue)],
            ),
            ("the fallback landed", &[("prod/web", Blue)], &[("prod/web", "blue")], &[]),
            ("the edge no longer routes it", &[], &[("prod/web", "blue")], &[]),
            (
                "an unreadable entry",
                &[("prod/web", Green)],
                &[("prod/web", "red"), ("web", "blue")],
                &[],
            ),
        ];
        for (what, edge, o, want) in cases {
            let want: BTreeMap<(String, String), Color> = live(want).edge.active;
            assert_eq!(unchecked(&owed(o), &live(edge)), want, "{what}");
        }
    }

    fn waiting() -> veza_plan::maintenance::Waiting {
        veza_plan::maintenance::Waiting {
            env: "prod".into(),
            step: promote(&["prod/web"]),
            because: "it moves traffic".into(),
            next_open: None,
            next_open_unix: None,
        }
    }

    fn check(app: &str) -> veza_plan::plan::EdgeCheck {
        veza_plan::plan::EdgeCheck {
            env: "prod".into(),
            app: app.into(),
            color: Color::Green,
            release: Release::try_from("1".repeat(40)).expect("release"),
            host: "x.example".into(),
            path: "/".into(),
            listen: "127.0.0.1:80".into(),
            tls: false,
        }
    }

    fn plan_of(steps: Vec<Step>) -> Plan {
        Plan {
            steps,
            refusals: Vec::new(),
            drift: Vec::new(),
            waiting: Vec::new(),
            edge_takeover: None,
            cluster: Vec::new(),
        }
    }

    /// Before a run, a cluster's leader shares what a kill after its switch would leave
    /// owed: the apps switched from a color with a check through the edge, with what it
    /// owes already (its own color kept for an app in both).
    #[test]
    fn a_cluster_leader_shares_before_its_run_what_its_switch_would_leave_owed() {
        let checked = |apps: &[&str], checks: &[&str]| {
            let mut step = promote(apps);
            if let Action::Promote(s) = &mut step.action {
                s.checks = checks.iter().map(|a| check(a)).collect();
            }
            plan_of(vec![step])
        };
        let (web, api, none): (Pairs, Pairs, Pairs) =
            (&[("prod/web", "blue")], &[("prod/api", "green")], &[]);
        // (what, owed, plan, shared)
        let cases: Vec<(&str, Pairs, Plan, Option<Owed>)> = vec![
            ("no switch", api, plan_of(Vec::new()), None),
            ("a switch without checks", api, checked(&["prod/web"], &[]), None),
            ("a checked switch", none, checked(&["prod/web"], &["web"]), Some(owed(web))),
            (
                "and what is owed already",
                api,
                checked(&["prod/web"], &["web"]),
                Some(owed(&[("prod/web", "blue"), ("prod/api", "green")])),
            ),
        ];
        for (what, before, plan, want) in cases {
            assert_eq!(before_run(&owed(before), &plan), want, "{what}");
        }
        // From no color (first traffic): owed with the config before it, not shared.
        let mut first = checked(&["prod/web"], &["web"]);
        if let Action::Promote(s) = &mut first.steps[0].action {
            s.promotions[0].from = None;
        }
        assert_eq!(before_run(&Owed::new(), &first), None);
    }

    fn promote(apps: &[&str]) -> Step {
        let promotions = apps
            .iter()
            .map(|k| {
                let (env, app) = k.split_once('/').expect("env/app");
                Promotion {
                    env: env.into(),
                    app: app.into(),
                    from: Some(Color::Blue),
                    to: Color::Green,
                    release: Release::try_from("1".repeat(40)).expect("release"),
                }
            })
            .collect();
        let switch = Switch {
            promotions,
            gates: Vec::new(),
            runs_in: "host".into(),
            config: String::new(),
            checks: Vec::new(),
            fallback: None,
        };
        Step { action: Action::Promote(switch), reason: "test".into() }
    }

    #[test]
    fn a_killed_runs_failed_checks_quarantine_its_commit_once_traffic_is_back() {
        let web_owed = owed(&[("prod/web", "blue")]);
        // A first-traffic switch (no color to go back to) over a config it replaced.
        let before = "# Ansible's edge\n";
        let edge_owed = UncheckedEdge { config: before.into(), apps: vec!["prod/api".to_string()] };
        let ours = "# the agent's edge\n";
        // (what, the journal's commit with failed checks, the commit planned, owed, live
        // web, live config, quarantined)
        type Row<'a> =
            (&'a str, Option<&'a str>, &'a str, Option<&'a UncheckedEdge>, Color, &'a str, bool);
        let table: &[Row<'_>] = &[
            ("its fallback landed", Some("c"), "c", None, Color::Blue, ours, true),
            ("its fallback did not land", Some("c"), "c", None, Color::Green, ours, false),
            ("another commit", Some("c"), "d", None, Color::Blue, ours, false),
            ("its checks did not fail", None, "c", None, Color::Blue, ours, false),
            (
                "the config before it is back",
                Some("c"),
                "c",
                Some(&edge_owed),
                Color::Blue,
                before,
                true,
            ),
            (
                "its config is still live",
                Some("c"),
                "c",
                Some(&edge_owed),
                Color::Blue,
                ours,
                false,
            ),
        ];
        for (what, failed, commit, edge, web, config, want) in table {
            let mut live = live(&[("prod/web", *web)]);
            live.edge.config = Some(config.to_string());
            assert_eq!(
                rolled_back_unrecorded(*failed, commit, (&web_owed, *edge), &live),
                *want,
                "{what}"
            );
        }
        // First traffic with no config before it: nothing is owed and there is nothing to
        // go back to; quarantined at once, as the run itself would have recorded it.
        let nothing = (&Owed::new(), None);
        assert!(rolled_back_unrecorded(Some("c"), "c", nothing, &LiveState::default()));
    }

    #[test]
    fn a_run_pays_what_its_completed_promotions_checked_and_owes_what_it_left_unchecked() {
        use Color::{Blue, Green};
        let plan = plan_of(vec![promote(&["prod/web"])]);
        let green = live(&[("prod/web", Green), ("prod/api", Green)]);
        let blue = live(&[("prod/web", Blue)]);
        let (web, api, none): (Pairs, Pairs, Pairs) =
            (&[("prod/web", "blue")], &[("prod/api", "blue")], &[]);
        // (what, owed before, steps done, left by the run, live after, owed after)
        type Case<'a> = (&'a str, Pairs<'a>, usize, Pairs<'a>, Option<&'a LiveState>, Pairs<'a>);
        let cases: &[Case<'_>] = &[
            ("the promotion passed its checks", web, 1, none, Some(&green), none),
            ("killed before it", web, 0, none, Some(&green), web),
            ("its fallback failed", none, 0, web, Some(&green), web),
            ("its fallback landed", web, 0, web, Some(&blue), none),
            ("another app stays owed", api, 1, none, Some(&green), api),
            ("its fallback landed, the host not read back", none, 0, web, None, web),
        ];
        // A plan with nothing to run now: owed only while steps wait for a window.
        let mut held = plan.clone();
        held.steps.clear();
        let idle = Plan { waiting: Vec::new(), ..held.clone() };
        held.waiting = vec![waiting()];
        assert_eq!(after_empty_plan(&owed(web), &green, &idle), owed(none));
        assert_eq!(after_empty_plan(&owed(web), &green, &held), owed(web));
        assert_eq!(after_empty_plan(&owed(web), &blue, &held), owed(none));
        for (what, before, done, left, after, want) in cases {
            let got = after_run(&owed(before), &plan, *done, &owed(left), *after);
            assert_eq!(got, owed(want), "{what}");
        }
    }

    /// A switch with no fallback owes its checks with the config it replaced, until they
    /// pass or that config is back; the planner is told which apps and what to go back to.
    #[test]
    fn an_edge_switch_without_a_fallback_owes_its_checks_with_the_config_before_it() {
        let Action::Promote(mut switch) = promote(&["prod/web", "prod/api"]).action else {
            unreachable!()
        };
        for p in &mut switch.promotions {
            p.from = None;
        }
        switch.checks = vec![check("web")];
        let before = "# Ansible's edge\n";
        let owed = edge_switched(&switch, Some(before)).expect("owed");
        assert_eq!(owed, UncheckedEdge { config: before.into(), apps: vec!["prod/web".into()] });
        // Nothing to go back to, or a fallback of its own: not owed this way.
        assert_eq!(edge_switched(&switch, None), None);
        let with_fallback = Switch { fallback: Some(before.into()), ..switch.clone() };
        assert_eq!(edge_switched(&with_fallback, Some(before)), None);
        // Still owed while the live config is another; told to the planner.
        let mut live = LiveState::default();
        live.edge = veza_plan::live::LiveEdge::from_config("# the agent's edge\n".into());
        let told = edge_recheck(Some(&owed), &live).expect("told");
        assert_eq!(told.apps, [("prod".to_string(), "web".to_string())].into());
        assert_eq!(told.back_to, before);
        live.edge = veza_plan::live::LiveEdge::from_config(before.into());
        assert_eq!(edge_still_owed(Some(&owed), &live), None, "the config before it is back");
        assert_eq!(edge_still_owed(Some(&owed), &LiveState::default()), None, "no edge");
        // Its checks passed: paid.
        let mut paid = Some(owed);
        pay_edge(&mut paid, &switch);
        assert_eq!(paid, None);
    }
}
