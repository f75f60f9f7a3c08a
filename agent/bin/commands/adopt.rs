//! `veza-agent adopt [--json]`: which instances and profiles the manifests name exist
//! without the agent's mark (a host the seed's Ansible pipeline built), whether each can
//! be taken over as it is, the live active colors against the manifests', and foreign
//! timers duplicating a job; read-only, the revision accepted and the host observed as for
//! `plan`. Exit 0 nothing to adopt, 2 something to adopt and nothing in the way, 1 a
//! conflict or refusal (`--apply` would change nothing), or an error.
//!
//! `veza-agent adopt --apply [--yes] [--reason TEXT]` (root): refused with exit 1 when
//! anything is in conflict or refused (nothing changed); otherwise asks the operator to
//! type `adopt` on the terminal (unless `--yes`; exit 2 without a terminal), takes the
//! host lock,
//! sets the marks and replaces the duplicate timers, and records who, why and what in the
//! history. Exit 0 adopted (or nothing to adopt), 1 not root, refused, declined, or
//! stopped part-way (recorded), 2 no terminal to confirm on.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Instant;

use veza_plan::adopt::Adoption;
use veza_state::record::{Event, record};
use veza_state::{AgentState, Reader, StateError, Store};

use crate::commands::common::{ConfigArg, fail, now, who, with_agent};
use crate::reconcile::{AdoptionReport, Agent, Source, SourceProblem};

/// Arguments of `adopt`.
#[derive(Debug, clap::Args)]
pub struct AdoptArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the report (and, with `--apply`, what was done) as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Adopt: set the agent's marks on what can be adopted and replace the duplicate
    /// timers. Root only; refused while anything is in conflict or refused.
    #[arg(long)]
    pub apply: bool,
    /// With `--apply`: do not ask for confirmation.
    #[arg(long, requires = "apply")]
    pub yes: bool,
    /// With `--apply`: why (kept in the history).
    #[arg(long, value_name = "TEXT", requires = "apply")]
    pub reason: Option<String>,
}

/// What the accepted revision and the observation give.
async fn report(
    agent: &Agent,
    state: &AgentState,
) -> Result<(Source, veza_plan::live::LiveState, AdoptionReport), ExitCode> {
    let source = match agent.source(state, now()).await {
        Ok(s) => s,
        Err(SourceProblem::Fetch(e)) => return Err(fail(&anyhow::anyhow!("fetch failed: {e}"), 1)),
        Err(SourceProblem::Failed(e)) => return Err(fail(&anyhow::anyhow!("{e}"), 1)),
        Err(SourceProblem::Rejected { commit, reason }) => {
            eprintln!("rejected {commit}: {reason}");
            return Err(ExitCode::from(1));
        }
    };
    let live = agent.observe(&source.manifests, state).await.map_err(|e| fail(&e, 1))?;
    match agent.adoption(state, &source, &live, now()).await {
        Ok(Ok(r)) => Ok((source, live, r)),
        Ok(Err(reason)) => {
            eprintln!("quarantined {}: {reason}", source.commit);
            Err(ExitCode::from(1))
        }
        Err(e) => Err(fail(&e, 1)),
    }
}

fn print_text(source: &Source, r: &AdoptionReport, ms: u128) {
    outln!("commit {} signed by {}", source.commit, source.signer);
    out!("{}", r.adoption);
    if r.after.steps.is_empty() && r.after.refusals.is_empty() {
        outln!("after adoption, the first apply changes nothing");
    } else {
        outln!("after adoption, the first apply would:");
        for line in r.after.to_string().lines() {
            outln!("  {line}");
        }
    }
    outln!("adoption report in {ms} ms");
}

fn json(source: &Source, r: &AdoptionReport, ms: u128, done: Option<serde_json::Value>) -> String {
    let a: &Adoption = &r.adoption;
    let mut v = serde_json::json!({
        "commit": source.commit,
        "signer": source.signer,
        "instances": a.instances,
        "profiles": a.profiles,
        "active": a.active,
        "timers": a.timers,
        "refusals": a.refusals,
        "first_apply": {
            "steps": r.after.steps.iter().map(|s| s.action.to_string()).collect::<Vec<_>>(),
            "refusals": r.after.refusals.iter().map(|x| format!("{}: {}", x.resource, x.reason)).collect::<Vec<_>>(),
        },
        "duration_ms": ms,
    });
    if let (Some(obj), Some(done)) = (v.as_object_mut(), done) {
        obj.insert("adopted".to_string(), done);
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Asks on the terminal; `None` when there is none.
fn confirm(a: &Adoption) -> Option<bool> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    eprint!(
        "this marks {} instance(s) and profile(s) as the agent's and replaces {} timer(s) on this host; type `adopt` to go on: ",
        a.count(veza_plan::adopt::AdoptState::Adopt),
        a.timers.len()
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok()?;
    Some(line.trim() == "adopt")
}

/// Runs `adopt`.
pub fn run(args: &AdoptArgs) -> ExitCode {
    let uid = veza_fs::effective_uid();
    if args.apply && uid != Some(0) {
        eprintln!("error: only root may adopt (hint: sudo veza-agent adopt --apply)");
        return ExitCode::FAILURE;
    }
    let reason =
        args.reason.as_deref().map(str::trim).unwrap_or("adoption of what the manifests name");
    if reason.is_empty() || reason.chars().any(char::is_control) {
        eprintln!("error: --reason must be one non-empty line");
        return ExitCode::from(2);
    }
    with_agent(&args.config, |agent| async move {
        let started = Instant::now();
        // With --apply, the host lock first: nothing else applies between the report and
        // the marks.
        let store = if args.apply {
            match Store::open(&agent.state_dir()) {
                Ok(s) => Some(s),
                Err(e @ StateError::Locked { .. }) => {
                    return fail(
                        &anyhow::anyhow!(
                            "{e} (hint: stop the daemon first, `systemctl stop veza-agent`)"
                        ),
                        1,
                    );
                }
                Err(e) => return fail(&e.into(), 1),
            }
        } else {
            None
        };
        // On a cluster, only the member holding the lease adopts (as it applies).
        if args.apply
            && let Some(cluster) = &agent.cluster
            && let Some(why) = cluster.hold().await
        {
            return fail(
                &anyhow::anyhow!(
                    "not adopted: {why} (hint: a stopped or suspended agent gives the lease \
                     up: suspend the other members' agents first (`veza-agent suspend`, then \
                     `veza-agent sync` there), stop this member's daemon, adopt, start it \
                     again, then resume the others)"
                ),
                1,
            );
        }
        let reader = Reader::new(&agent.state_dir());
        let loaded = match &store {
            // Saved below (the adopted commit becomes the anti-rollback base): a corrupt
            // file is moved aside first, as a sync does, never overwritten unread.
            Some(store) => store.load_or_recover().map(|(s, recovered)| {
                if let Some(e) = recovered {
                    eprintln!("warning: {e}");
                }
                s
            }),
            None => reader.load(),
        };
        let mut state = match loaded {
            Ok(s) => s,
            Err(e @ StateError::TooNew { .. }) => return fail(&e.into(), 1),
            Err(e) if store.is_some() => return fail(&e.into(), 1),
            Err(_) => AgentState::default(),
        };
        // A killed run's journal holds what it owes and its commit, as for `plan`.
        let journal = state.unfinished(reader.journal());
        state.take_owed_from(journal.as_ref());
        let (source, live, r) = match report(&agent, &state).await {
            Ok(x) => x,
            Err(code) => return code,
        };
        let ms = started.elapsed().as_millis();
        let a = &r.adoption;
        let Some(store) = store else {
            if args.json {
                outln!("{}", json(&source, &r, ms, None));
            } else {
                print_text(&source, &r, ms);
            }
            return if a.blocked() {
                ExitCode::from(1)
            } else if a.pending() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        };
        if !args.json {
            print_text(&source, &r, ms);
        }
        if a.blocked() {
            if args.json {
                outln!("{}", json(&source, &r, ms, None));
            }
            eprintln!(
                "adopt: refused, nothing changed: {} conflict(s), {} refusal(s) (listed above); resolve them, then adopt again",
                a.count(veza_plan::adopt::AdoptState::Conflict),
                a.refusals.len()
            );
            return ExitCode::from(1);
        }
        if !a.pending() {
            if args.json {
                outln!("{}", json(&source, &r, ms, Some(serde_json::json!({}))));
            } else {
                outln!("nothing to adopt");
            }
            return ExitCode::SUCCESS;
        }
        if !args.yes {
            match confirm(a) {
                None => {
                    eprintln!(
                        "error: adopt --apply asks for confirmation on a terminal; pass --yes to adopt without asking"
                    );
                    return ExitCode::from(2);
                }
                Some(false) => {
                    eprintln!("not adopted: nothing changed");
                    return ExitCode::FAILURE;
                }
                Some(true) => {}
            }
        }
        // The adopted commit's marks and units land now: from here on only its descendants
        // are accepted, as after an apply that began (state file and Incus mark).
        if state.applied.as_ref().is_none_or(|c| c.commit != source.commit) {
            record(&mut state, Event::Attempted { commit: source.commit.clone() });
            if let Err(e) = store.save(&state) {
                let e = anyhow::anyhow!(
                    "not adopted, nothing changed: recording the commit failed: {e}"
                );
                return fail(&e, 1);
            }
            // The state now holds what a killed run's journal held (taken above): left
            // behind, the next sync would take it again, its older commit as the base.
            if journal.is_some()
                && let Err(e) = store.clear_journal()
            {
                let e = anyhow::anyhow!(
                    "not adopted, nothing changed: removing the journal of the killed run \
                     (its contents are in the state now) failed: {e}"
                );
                return fail(&e, 1);
            }
            if let Err(e) = agent.mirror_high_water(&source.commit).await {
                eprintln!("warning: {e}");
            }
        }
        let applied = Instant::now();
        let result = agent.adopt(&source, a, &live).await;
        let (done, error) = match &result {
            Ok(d) => (d.clone(), None),
            Err(f) => (f.done.clone(), Some(f.error.clone())),
        };
        let items: Vec<String> = done
            .profiles
            .iter()
            .map(|p| format!("profile {p}"))
            .chain(done.instances.iter().map(|i| format!("instance {i}")))
            .chain(done.timers.iter().map(|t| format!("timer {t}")))
            .collect();
        let by = format!("{} (uid {})", who(), uid.unwrap_or(u32::MAX));
        let event = Event::Adopted {
            commit: source.commit.clone(),
            by: by.clone(),
            reason: reason.to_string(),
            done: items,
            error: error.clone(),
        };
        if let Some(mut entry) = record(&mut state, event) {
            entry.at_ms = chrono::Utc::now().timestamp_millis();
            entry.duration_ms = applied.elapsed().as_millis() as u64;
            if let Err(e) = store.append_history(&entry) {
                eprintln!("warning: the history could not record the adoption: {e}");
            }
        }
        let apply_ms = applied.elapsed().as_millis();
        if args.json {
            let mut d = serde_json::to_value(&done).unwrap_or_default();
            if let (Some(obj), Some(e)) = (d.as_object_mut(), &error) {
                obj.insert("error".to_string(), serde_json::json!(e));
            }
            if let Some(obj) = d.as_object_mut() {
                obj.insert("duration_ms".to_string(), serde_json::json!(apply_ms));
            }
            outln!("{}", json(&source, &r, ms, Some(d)));
        }
        match error {
            None => {
                if !args.json {
                    outln!("adopted by {by}: {done} replaced ({apply_ms} ms)");
                }
                ExitCode::SUCCESS
            }
            Some(e) => {
                eprintln!("adopt: stopped part-way: {e}");
                eprintln!("  done before it stopped (recorded in the history): {done}");
                ExitCode::FAILURE
            }
        }
    })
}
