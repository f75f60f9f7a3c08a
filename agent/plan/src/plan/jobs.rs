//! Scheduled jobs' units (installed where missing or different, removed when their job
//! left) and the pruning of what the agent owns but the manifests no longer declare.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, Builder};
use crate::desired::Desired;
use crate::live::{LiveState, MARK_HOST, UnitTarget};

/// Installs the jobs' units where they are missing or differ, or where the job's timer
/// was last seen not active (`unscheduled`, `env/job`), and removes the agent's units of
/// jobs that left. Units go only into an instance the agent owns that runs, or
/// that this plan creates or starts; a job whose instance is someone else's, or stays
/// stopped, is refused ([`units_refused`]).
pub(super) fn plan_jobs(
    want: &Desired,
    live: &LiveState,
    unscheduled: &BTreeSet<String>,
    b: &mut Builder,
) {
    let mut by_target: BTreeMap<&UnitTarget, Vec<&crate::desired::DesiredJob>> = BTreeMap::new();
    for j in &want.jobs {
        by_target.entry(&j.target).or_default().push(j);
    }
    // Instances running once this plan's instance steps ran.
    let brought_up: BTreeSet<String> = b
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::CreateInstance { name, .. } | Action::StartInstance { name } => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect();
    let empty = BTreeMap::new();
    for (target, jobs) in &by_target {
        if let UnitTarget::Instance(name) = target
            && let Some(why) = units_refused(name, live, &brought_up)
        {
            for j in jobs {
                b.refuse(format!("job {}/{}", j.env, j.name), why.clone());
            }
            continue;
        }
        let have = live.units.get(*target).unwrap_or(&empty);
        let mut files = Vec::new();
        let mut timers = Vec::new();
        let mut environments = Vec::new();
        let (mut differ, mut inactive) = (Vec::new(), Vec::new());
        for j in jobs {
            let name = j.timer.trim_end_matches(".timer").to_string();
            if j.files.iter().any(|(n, c)| have.get(n) != Some(c)) {
                differ.push(name);
            } else if unscheduled.contains(&format!("{}/{}", j.env, j.name)) {
                inactive.push(name);
            } else {
                continue;
            }
            files.extend(j.files.iter().cloned());
            timers.push(j.timer.clone());
            environments.extend(j.environment.clone());
        }
        if !files.is_empty() {
            let mut why = Vec::new();
            if !differ.is_empty() {
                why.push(format!("job units are missing or differ: {}", differ.join(", ")));
            }
            if !inactive.is_empty() {
                why.push(format!("timers were seen not active: {}", inactive.join(", ")));
            }
            b.step(
                Action::InstallUnits { target: (*target).clone(), files, timers, environments },
                why.join("; "),
            );
        }
    }
    let wanted: BTreeSet<(&UnitTarget, &str)> = want
        .jobs
        .iter()
        .flat_map(|j| j.files.iter().map(move |(n, _)| (&j.target, n.as_str())))
        .collect();
    for (target, files) in &live.units {
        let gone: Vec<String> =
            files.keys().filter(|n| !wanted.contains(&(target, n.as_str()))).cloned().collect();
        if !gone.is_empty() {
            b.step(
                Action::RemoveUnits { target: target.clone(), names: gone },
                "these jobs left the manifests",
            );
        }
    }
}

/// Why no job units may be installed in instance `name` by this plan, if so: it is not the
/// agent's (a foreign instance is never written to: its owner's timers would run the same
/// backups a second time), or it is not running and `brought_up` (what this plan creates
/// or starts) does not include it. An instance on an offline cluster member is left to
/// placement, which refuses every step on it naming the member.
fn units_refused(name: &str, live: &LiveState, brought_up: &BTreeSet<String>) -> Option<String> {
    if brought_up.contains(name) {
        return None;
    }
    let Some(l) = live.instances.get(name) else {
        return Some(format!(
            "its instance `{name}` does not exist and this plan does not create it; its units are installed once it runs"
        ));
    };
    if live.on_offline_member(l) {
        return None;
    }
    if !l.is_owned() {
        return Some(format!(
            "its instance `{name}` is not the agent's (no user.veza.managed mark): no units, secrets or timers are written into it — adopt it first (`veza-agent adopt`, which also retires the instance's own timers that duplicate a job); its units are installed then"
        ));
    }
    if !l.is_running() {
        return Some(format!(
            "its instance `{name}` is {} and this plan does not start it: its units are installed once it runs (start it)",
            l.status.to_string().to_lowercase()
        ));
    }
    None
}

/// Deletes the owned instances and profiles that left the manifests (a slot that serves
/// traffic is kept afterwards unless the plan's edge step moves its app off it:
/// [`super::edge_config::keep_serving_slots`]).
pub(super) fn plan_prune(want: &Desired, live: &LiveState, b: &mut Builder) {
    for (name, l) in &live.instances {
        if want.instances.contains_key(name) || !l.is_owned() {
            continue;
        }
        let env = l.env().unwrap_or("");
        if !want.envs.iter().any(|e| e == env) {
            continue; // another host's or a removed environment's: not ours to judge
        }
        if l.is_protected() {
            b.refuse(
                format!("instance {name}"),
                "protected data left the manifests; it is never deleted automatically — delete it by hand once its data is safe",
            );
        } else {
            b.step(
                Action::DeleteInstance { name: name.clone() },
                format!("`{name}` is no longer declared in environment `{env}`"),
            );
        }
    }
    for (name, p) in &live.profiles {
        let ours = p.config.get(MARK_HOST).is_some_and(|h| *h == want.host);
        if p.is_owned() && ours && !want.profiles.contains_key(name) {
            b.step(
                Action::DeleteProfile { name: name.clone() },
                format!("profile `{name}` is no longer declared"),
            );
        }
    }
}
