//! `veza-agent status`: what runs on this host, from which commit, signed by whom,
//! whether the last promotion held, how the scheduled jobs went, what the PR previews
//! said, and what needs a human.
//! Human text or `--json`.
//! Reads the recorded state only (no lock, no network), so it answers instantly even
//! while the daemon applies.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde::Serialize;
use veza_host::process::stamp;
use veza_state::previews::Previews;
use veza_state::{AgentState, JobState, Outcome, Reader};

use crate::commands::common::{ConfigArg, fail, now};
use crate::jobs;
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
    /// The step of the run in progress now (its journal's writer is running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// How long the run in progress has been running, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_for_s: Option<i64>,
    /// What the run in progress is checking through the edge (`env/app`): owed, and
    /// a problem, once it is no longer running.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checking: Vec<String>,
    /// Free bytes on the file system of the state directory (`None`: not measurable).
    pub state_dir_free_bytes: Option<u64>,
    /// Scheduled jobs by `env/job`, as recorded at the last sync and judged now.
    pub jobs: BTreeMap<String, JobStatus>,
    /// The PR previews (`previews.json`), when previews are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previews: Option<Previews>,
    /// On a cluster member: who led at this agent's last look (`cluster.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::Recorded>,
    /// The recorded state.
    pub state: AgentState,
}

/// One scheduled job in the status document: the recorded [`JobState`], with `problem`
/// judged again now (a job recorded fresh may have gone stale since), plus the age of
/// its last success.
#[derive(Debug, Serialize)]
pub struct JobStatus {
    /// As recorded at the last sync; `problem` as judged now.
    #[serde(flatten)]
    pub job: JobState,
    /// Seconds since the last successful run started.
    pub last_success_age_s: Option<i64>,
}

impl JobStatus {
    fn new(job: &JobState, now: i64) -> JobStatus {
        let judged = JobState { problem: jobs::health(job, now), ..job.clone() };
        JobStatus { last_success_age_s: job.last_success_at.map(|t| now - t), job: judged }
    }
}

impl std::ops::Deref for JobStatus {
    type Target = JobState;
    fn deref(&self) -> &JobState {
        &self.job
    }
}

/// Below this much free space in the state directory's file system, a sync can fail
/// without being able to record why, so `status` says so itself.
pub const LOW_SPACE_BYTES: u64 = 4 << 20;

/// A run in progress for this long (seconds) is a problem: stuck, or its process lived on
/// after a failed save left its journal.
pub const STUCK_RUN_S: i64 = 3600;

/// What `status` reads besides the recorded state.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The step a run was at (from the journal).
    pub interrupted: Option<String>,
    /// The journal's writer is running: the run is in progress, not interrupted.
    pub running: bool,
    /// When the journal's run started (unix seconds).
    pub run_started: Option<i64>,
    /// Now, unix seconds.
    pub now: i64,
    /// The configured `trust.max_staleness`, seconds.
    pub max_staleness_s: i64,
    /// Where the state lives, and its file system's free bytes.
    pub state_dir: String,
    pub state_dir_free_bytes: Option<u64>,
    /// The suspension in force (`suspended.json`), read now: a pause shows before the next
    /// sync.
    pub suspension: Option<veza_state::Suspension>,
    /// `mode: report` in the configuration.
    pub report_mode: bool,
    /// The PR previews recorded, when previews are on.
    pub previews: Option<Previews>,
}

/// Builds the status from recorded state. Pure: time, staleness limit and free space
/// are inputs.
pub fn build(state: AgentState, seen: Observed) -> Status {
    let Observed {
        interrupted,
        running,
        run_started,
        now,
        max_staleness_s,
        state_dir,
        state_dir_free_bytes,
        suspension,
        report_mode,
        previews,
    } = seen;
    let mut problems = Vec::new();
    let held = match state.held.len() {
        0 => "nothing pending".to_string(),
        n => format!("would apply {n} step(s): {}", state.held.join("; ")),
    };
    if let Some(s) = &suspension {
        let since = chrono::DateTime::from_timestamp(s.since, 0)
            .map_or_else(|| s.since.to_string(), |t| t.to_rfc3339());
        problems.push(format!(
            "suspended by {} since {since}: {}; {held} (`veza-agent resume` lifts it)",
            s.by, s.reason
        ));
    } else if report_mode {
        problems.push(format!("report mode (`mode: report`): nothing is applied; {held}"));
    } else if !state.held.is_empty() {
        // Resumed (or out of report mode) since the last sync: the steps it held are still
        // not applied, and the commit recorded as applied is not what the manifests say.
        problems.push(format!(
            "not in sync yet: the last sync held back {} step(s): {} (applying has been \
             resumed since; the next sync applies them, `veza-agent sync` asks for it now)",
            state.held.len(),
            state.held.join("; ")
        ));
    }
    if let Some(free) = state_dir_free_bytes
        && free < LOW_SPACE_BYTES
    {
        problems.push(format!(
            "disk full: {} KiB free for the state directory {state_dir}; syncs fail and \
             cannot record why (free space, then `veza-agent sync`)",
            free / 1024
        ));
    }
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
    let jobs: BTreeMap<String, JobStatus> =
        state.jobs.iter().map(|(key, j)| (key.clone(), JobStatus::new(j, now))).collect();
    for (key, j) in &jobs {
        if let Some(p) = &j.problem {
            problems.push(format!("job {key}: {p}"));
        }
    }
    let writer_runs = running;
    let (running, interrupted) = if running { (interrupted, None) } else { (None, interrupted) };
    if let Some(i) = &interrupted {
        problems
            .push(format!("a run was interrupted at `{i}`; the next sync resumes from live state"));
    }
    // While a run is in progress, what it owes is what it is checking now: not a problem,
    // unless the run has gone on for so long that it is more likely stuck (or its writer
    // lives on after a save that failed and left its journal).
    let running_for_s = run_started.filter(|_| writer_runs).map(|t| (now - t).max(0));
    let stuck_for = running_for_s.filter(|a| *a >= STUCK_RUN_S);
    if let Some(age) = stuck_for {
        problems.push(format!(
            "a sync has been applying for {} (its process still runs): if `journalctl -u \
             veza-agent` shows it stuck or a failed save, restart the agent; the next sync \
             resumes from live state",
            ago(age)
        ));
    }
    // What a run owes is its checks in progress only while it runs and is not stuck.
    let in_progress = writer_runs && stuck_for.is_none();
    let checking = if in_progress { state.owed_apps() } else { Vec::new() };
    let owed = if in_progress { BTreeMap::new() } else { state.unverified.clone() };
    for (app, back) in &owed {
        if state.checks_failed.is_some() {
            problems.push(format!(
                "{app}: the checks through the edge of its promotion from {back} failed and the \
                 run was killed while putting {back} back; the next sync reads the edge: back on \
                 {back}, the commit is quarantined, else it checks again and goes back to {back} \
                 if they fail"
            ));
            continue;
        }
        problems.push(format!(
            "{app}: its promotion from {back} got as far as the edge switch and its checks through \
             the edge never passed (the run was killed, or putting {back} back failed); the \
             next sync checks it again and goes back to {back} if it fails"
        ));
    }
    if let Some(e) = state.unchecked_edge.as_ref().filter(|_| !in_progress) {
        problems.push(format!(
            "{}: the edge switch that gave them traffic got as far as installing its config \
             and its checks through the edge never passed (the run was killed, or putting the \
             config before it back failed); the next sync checks them again and puts that \
             config back if they fail",
            e.apps.join(", ")
        ));
    }
    for r in &state.refusals {
        problems.push(format!("refused: {r}"));
    }
    for d in &state.drift {
        problems.push(format!("drift on a detect-only resource: {d}"));
    }
    for (env, e) in &state.envs {
        for (app, a) in &e.apps {
            if let Some(active) = &a.active
                && let Some(h) = a.health.get(active)
                && !h.starts_with("UP")
                && !h.starts_with("no check")
            {
                problems.push(format!("{env}/{app}: the active {active} slot is {h} at the edge"));
            }
        }
    }
    // Steps waiting for a maintenance window are expected, not a problem: said in the
    // headline, listed under `waiting:`.
    let waiting = match state.waiting.len() {
        0 => String::new(),
        _ => format!("; {}", crate::reconcile::waiting_reason(&state.waiting)),
    };
    let headline = match (&problems.first(), &state.applied) {
        (Some(p), _) => format!("NEEDS ATTENTION: {p}"),
        (None, Some(a)) => {
            format!("OK: in sync with {} signed by {}{waiting}", short(&a.commit), a.signer)
        }
        (None, None) => "nothing applied yet".to_string(),
    };
    Status {
        health: if problems.is_empty() { "ok" } else { "attention" },
        headline,
        problems,
        stale,
        last_fetch_age_s: age,
        interrupted,
        running,
        running_for_s,
        checking,
        state_dir_free_bytes,
        jobs,
        previews,
        cluster: None,
        state,
    }
}

fn short(c: &str) -> &str {
    veza_model::manifest::short_id(c, 12)
}

/// Runs `status`.
pub fn run(args: &StatusArgs) -> ExitCode {
    let config = match load_config(&args.config.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let reader = Reader::new(std::path::Path::new(config.state_dir()));
    let mut state = match reader.load() {
        Ok(s) => s,
        Err(e) => return fail(&e.into(), 2),
    };
    let journal = state.unfinished(reader.journal());
    state.take_owed_from(journal.as_ref());
    let now = now();
    let running = journal.as_ref().is_some_and(|j| {
        j.pid.is_some_and(|pid| {
            stamp::still_running(pid, j.pid_start, j.boot_id.as_deref(), "veza-agent")
        })
    });
    let seen = Observed {
        run_started: journal.as_ref().map(|j| j.started_ms.div_euclid(1000)),
        interrupted: journal.and_then(|j| j.current),
        running,
        now,
        max_staleness_s: config.max_staleness().as_secs() as i64,
        state_dir: config.state_dir().to_string(),
        state_dir_free_bytes: veza_host::fs::free_bytes(std::path::Path::new(config.state_dir()))
            .ok(),
        suspension: reader.suspension(),
        report_mode: config.mode == veza_model::config::Mode::Report,
        previews: config.previews.enabled.then(|| reader.previews().unwrap_or_default()),
    };
    let mut status = build(state, seen);
    if config.cluster.is_some() {
        status.cluster = crate::cluster::recorded(std::path::Path::new(config.state_dir()));
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        out!("{}", render(&status, now));
        if config.cluster.is_some()
            && let Some(line) =
                crate::cluster::status_line(std::path::Path::new(config.state_dir()))
        {
            outln!("{line}");
        }
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
    if let Some(step) = &s.running {
        let since = s.running_for_s.map(|a| format!(" (for {})", ago(a))).unwrap_or_default();
        let checking = if s.checking.is_empty() {
            String::new()
        } else {
            format!("; checking through the edge: {}", s.checking.join(", "))
        };
        let _ = writeln!(o, "running:  a sync is applying now{since}, at `{step}`{checking}");
    }
    if let Some(c) = &st.attempted {
        let _ = writeln!(
            o,
            "tried:    {c} (its apply began and did not end applied; only its descendants are \
             accepted next)"
        );
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
    if let Some(t) = st.observed_at {
        let _ = writeln!(o, "observed: health and jobs below as read {} ago", ago(now - t));
    }
    for (env, e) in &st.envs {
        let _ = writeln!(o, "env {env}:");
        for (app, a) in &e.apps {
            let active = a.active.as_deref().unwrap_or("none");
            let slots: Vec<String> = a
                .releases
                .iter()
                .map(|(c, r)| {
                    let health = a.health.get(c).map(|h| format!(" {h}")).unwrap_or_default();
                    format!(
                        "{c}={}{}{health}",
                        veza_model::manifest::short_id(r, 10),
                        if c == active { "*" } else { "" }
                    )
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
    if !s.jobs.is_empty() {
        let _ = writeln!(o, "jobs:");
        let key_width = s.jobs.keys().map(String::len).max().unwrap_or(0);
        let target_width = s.jobs.values().map(|j| j.target.len()).max().unwrap_or(0);
        for (key, j) in &s.jobs {
            let _ = writeln!(
                o,
                "  {key:<key_width$} on {:<target_width$}  next {}  last {}{}",
                j.target,
                j.next.as_deref().map_or_else(|| "none".to_string(), when),
                last_run(j, now),
                if j.problem.is_some() { "  [!]" } else { "" }
            );
        }
    }
    if !st.waiting.is_empty() {
        let _ = writeln!(o, "waiting for a maintenance window:");
        for w in &st.waiting {
            let _ = writeln!(
                o,
                "  {}: {} (next opens at {}) — {}",
                w.env,
                w.step,
                w.next_open.as_deref().unwrap_or("never"),
                w.because
            );
        }
    }
    if let Some(p) = &s.previews {
        previews(&mut o, p, now);
    }
    for p in s.problems.iter().skip(1) {
        let _ = writeln!(o, "also:     {p}");
    }
    o
}

/// The PR previews: the last pass, what each head got (newest PRs first; at most
/// [`PREVIEWS_SHOWN`]), and the failure counters. Shared with `plan`.
pub fn previews(o: &mut String, p: &Previews, now: i64) {
    use std::fmt::Write;
    let _ = match &p.last_run {
        Some(run) => writeln!(
            o,
            "{} ({} ago, {} ms)",
            crate::reconcile::preview_line(run),
            ago(now - run.at),
            run.duration_ms
        ),
        None => writeln!(o, "previews: no pass yet"),
    };
    let mut heads: Vec<(&String, &veza_state::previews::PreviewedHead)> =
        p.heads.iter().filter(|(_, h)| h.state != veza_state::previews::MERGED).collect();
    heads.sort_by_key(|h| std::cmp::Reverse(h.1.pr));
    for (head, h) in heads.iter().take(PREVIEWS_SHOWN) {
        let _ = writeln!(
            o,
            "  #{:<5} {} {:<7} {}{}",
            h.pr,
            short(head),
            h.state,
            h.description,
            if h.posted { "" } else { " (status not posted yet)" }
        );
    }
    if heads.len() > PREVIEWS_SHOWN {
        let _ = writeln!(o, "  … {} more (`status --json`)", heads.len() - PREVIEWS_SHOWN);
    }
    let failures: Vec<String> = p.failures_total.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if !failures.is_empty() {
        let _ = writeln!(o, "  preview failures so far: {}", failures.join(", "));
    }
}

/// Heads listed by the text form of `status`.
const PREVIEWS_SHOWN: usize = 10;

/// `2026-11-30 02:30 UTC` for an RFC 3339 time, the text itself otherwise.
fn when(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M UTC").to_string(),
        Err(_) => t.to_string(),
    }
}

/// The last run in a few words: `success 2d ago`, `FAILED exit-code (exit status 3) 1h ago`,
/// `running (started 5m ago), before: success 7d ago`.
fn last_run(j: &JobStatus, now: i64) -> String {
    let at = |t: &str| match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => format!("{} ago", ago(now - t.timestamp())),
        Err(_) => format!("at {t}"),
    };
    let finished = last_finished_run(j, now);
    if !j.running {
        return finished;
    }
    let since = j.running_since.as_deref().map(|t| format!(" (started {})", at(t)));
    match finished.as_str() {
        "never ran" => format!("running{}", since.unwrap_or_default()),
        _ => format!("running{}, before: {finished}", since.unwrap_or_default()),
    }
}

/// The last finished run in a few words.
fn last_finished_run(j: &JobStatus, now: i64) -> String {
    let started = j.last_start.as_deref().map(|t| match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => format!(" {} ago", ago(now - t.timestamp())),
        Err(_) => format!(" at {t}"),
    });
    match (j.last_result.as_deref(), j.last_success_age_s) {
        (Some("success"), _) => format!("success{}", started.unwrap_or_default()),
        (Some(result), _) => format!(
            "FAILED {result}{}{}",
            j.last_exit.map(|c| format!(" (exit status {c})")).unwrap_or_default(),
            started.unwrap_or_default()
        ),
        (None, Some(age)) => format!("success {} ago (from an earlier sync)", ago(age)),
        (None, None) => "never ran".to_string(),
    }
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
mod tests;
