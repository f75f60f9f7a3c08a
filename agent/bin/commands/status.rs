//! `veza-agent status`: what runs on this host, from which commit, signed by whom,
//! whether the last promotion held, and what needs a human. Human text or `--json`.
//! Reads the recorded state only (no lock, no network), so it answers instantly even
//! while the daemon applies.

use std::process::ExitCode;

use serde::Serialize;
use veza_state::{AgentState, Outcome, Reader};

use crate::commands::common::{ConfigArg, fail, now};
use crate::reconcile::load_config;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the status document as JSON (health, headline, problems, staleness and
    /// the whole recorded state) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The status document (`--json`).
#[derive(Debug, Serialize)]
pub struct Status {
    /// `ok` or `attention`.
    pub health: &'static str,
    /// One line for a human.
    pub headline: String,
    /// Everything that needs a human.
    pub problems: Vec<String>,
    /// Whether the source is stale (no verified fetch within the limit).
    pub stale: bool,
    /// Seconds since the last verified fetch.
    pub last_fetch_age_s: Option<i64>,
    /// A run that was interrupted (crash) and will be resumed.
    pub interrupted: Option<String>,
    /// The recorded state.
    pub state: AgentState,
}

/// Builds the status from recorded state. Pure: `now` and `max_staleness_s` are inputs.
pub fn build(
    state: AgentState,
    interrupted: Option<String>,
    now: i64,
    max_staleness_s: i64,
) -> Status {
    let mut problems = Vec::new();
    let age = state.last_verified_fetch_at.map(|t| now - t);
    let stale = age.is_none_or(|a| a > max_staleness_s);
    if let Some(r) = &state.rejected {
        problems.push(format!("revision {} rejected: {}", short(&r.commit), r.reason));
    }
    for (env, e) in &state.envs {
        for (app, a) in &e.apps {
            if a.last_outcome == Some(Outcome::RolledBack) {
                problems.push(format!(
                    "promotion of {env}/{app} rolled back: {}",
                    a.last_reason.as_deref().unwrap_or("no reason recorded")
                ));
            }
        }
    }
    for q in state.quarantined.values() {
        problems.push(format!(
            "commit {} is quarantined (not retried until a newer commit): {}",
            short(&q.commit),
            q.reason
        ));
    }
    if stale {
        problems.push(match age {
            Some(a) => format!(
                "source is stale: last verified fetch {a} s ago (limit {max_staleness_s} s)"
            ),
            None => "source is stale: no verified fetch yet".to_string(),
        });
    }
    if let Some(run) = &state.last_run
        && run.outcome == Outcome::Failed
    {
        problems.push(format!(
            "last sync failed: {}",
            run.reason.as_deref().unwrap_or("unknown reason")
        ));
    }
    if let Some(i) = &interrupted {
        problems
            .push(format!("a run was interrupted at `{i}`; the next sync resumes from live state"));
    }
    let headline = match (&problems.first(), &state.applied) {
        (Some(p), _) => format!("NEEDS ATTENTION: {p}"),
        (None, Some(a)) => format!("OK: in sync with {} signed by {}", short(&a.commit), a.signer),
        (None, None) => "nothing applied yet".to_string(),
    };
    Status {
        health: if problems.is_empty() { "ok" } else { "attention" },
        headline,
        problems,
        stale,
        last_fetch_age_s: age,
        interrupted,
        state,
    }
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// Runs `status`.
pub fn run(args: &StatusArgs) -> ExitCode {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let reader = Reader::new(std::path::Path::new(config.state_dir()));
    let state = match reader.load() {
        Ok(s) => s,
        Err(e) => return fail(&e.into(), 2),
    };
    let interrupted = reader.journal().and_then(|j| j.current);
    let now = now();
    let status = build(state, interrupted, now, config.max_staleness().as_secs() as i64);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        print!("{}", render(&status, now));
    }
    if status.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The human form.
pub fn render(s: &Status, now: i64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "{}", s.headline);
    let st = &s.state;
    match &st.applied {
        Some(a) => {
            let _ = writeln!(
                o,
                "commit:   {} signed by {} (applied {} ago)",
                a.commit,
                a.signer,
                ago(now - a.applied_at)
            );
        }
        None => {
            let _ = writeln!(o, "commit:   none applied yet");
        }
    }
    let _ = writeln!(
        o,
        "source:   {}",
        match s.last_fetch_age_s {
            Some(a) => format!(
                "last verified fetch {} ago{}",
                ago(a),
                if s.stale { " (STALE)" } else { "" }
            ),
            None => "never fetched".to_string(),
        }
    );
    if let Some(run) = &st.last_run {
        let _ = writeln!(
            o,
            "last run: {} in {} ms{}",
            run.outcome.as_str(),
            run.duration_ms,
            run.reason.as_ref().map(|r| format!(" — {r}")).unwrap_or_default()
        );
    }
    for (env, e) in &st.envs {
        let _ = writeln!(o, "env {env}:");
        for (app, a) in &e.apps {
            let active = a.active.as_deref().unwrap_or("none");
            let slots: Vec<String> = a
                .releases
                .iter()
                .map(|(c, r)| {
                    format!("{c}={}{}", &r[..r.len().min(10)], if c == active { "*" } else { "" })
                })
                .collect();
            let _ = writeln!(
                o,
                "  {app:<10} active {active:<5} [{}]{}",
                slots.join(" "),
                a.last_outcome.map(|x| format!(" last: {}", x.as_str())).unwrap_or_default()
            );
        }
    }
    for p in s.problems.iter().skip(1) {
        let _ = writeln!(o, "also:     {p}");
    }
    o
}

fn ago(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veza_state::{AppState, AppliedRevision, EnvState, Rejection};

    fn base() -> AgentState {
        let mut st = AgentState {
            applied: Some(AppliedRevision {
                commit: "a".repeat(40),
                signer: "forgejo@veza".into(),
                applied_at: 1000,
            }),
            last_verified_fetch_at: Some(1990),
            ..AgentState::default()
        };
        let mut app = AppState { active: Some("green".into()), ..AppState::default() };
        app.releases.insert("blue".into(), "1".repeat(40));
        app.releases.insert("green".into(), "2".repeat(40));
        let mut env = EnvState::default();
        env.apps.insert("backend".into(), app);
        st.envs.insert("prod".into(), env);
        st
    }

    /// Each row: a state edit, and the headline it must produce.
    #[test]
    fn headlines_say_what_needs_a_human() {
        type Edit = Box<dyn Fn(&mut AgentState)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("in sync", Box::new(|_| {}), "OK: in sync with aaaaaaaaaaaa signed by forgejo@veza"),
            (
                "rejected",
                Box::new(|s| {
                    s.rejected = Some(Rejection {
                        commit: "b".repeat(40),
                        reason: "signature: unsigned commit".into(),
                        at: 1,
                    })
                }),
                "NEEDS ATTENTION: revision bbbbbbbbbbbb rejected: signature: unsigned commit",
            ),
            (
                "rolled back",
                Box::new(|s| {
                    let a = s.envs.get_mut("prod").unwrap().apps.get_mut("backend").unwrap();
                    a.last_outcome = Some(Outcome::RolledBack);
                    a.last_reason = Some("green never became healthy".into());
                }),
                "NEEDS ATTENTION: promotion of prod/backend rolled back: green never became healthy",
            ),
            (
                "stale",
                Box::new(|s| s.last_verified_fetch_at = Some(0)),
                "NEEDS ATTENTION: source is stale: last verified fetch 2000 s ago (limit 600 s)",
            ),
        ];
        for (what, edit, want) in cases {
            let mut st = base();
            edit(&mut st);
            let s = build(st, None, 2000, 600);
            assert_eq!(s.headline, want, "{what}");
        }
    }

    #[test]
    fn human_form_shows_colors_and_releases() {
        let s = build(base(), None, 2000, 600);
        let text = render(&s, 2000);
        assert!(
            text.contains("  backend    active green [blue=1111111111 green=2222222222*]"),
            "{text}"
        );
        assert!(text.contains("commit:   aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa signed by forgejo@veza (applied 16m ago)"), "{text}");
    }
}
