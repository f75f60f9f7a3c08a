//! One sync, end to end: source → verify → model → observe → plan → apply → record.
//!
//! Shared by `plan` (stops after planning), `apply` (one full run) and `run` (the daemon
//! loop). Every stage returns data the next consumes; only this module decides what a
//! failure at each stage means for the host (keep the last good state) and for the
//! record (`rejected`, `failed`, `rolled-back`, quarantine).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use veza_host::apply::{ApplyOutcome, ApplyReport, Drivers, Edge, Gates, Hooks, apply};
use veza_host::artifact::ArtifactStore;
use veza_host::incus::{Incus, IncusClient, IncusLive, Scope};
use veza_host::systemd::{Systemd, Units};
use veza_model::Manifest;
use veza_model::config::HostConfig;
use veza_plan::live::{LiveInstance, LiveNetwork, LiveProfile, LiveState, UnitTarget};
use veza_plan::{Plan, PlanOptions, Step};
use veza_source::fetch::{Credentials, FetchOptions, Mirror};
use veza_source::{AllowedSigners, FetchError, Refusal, verify_commit};
use veza_state::record::{Event, ObservedApp, history_entry, record};
use veza_state::{AgentState, AppliedRevision, HistoryEntry, Journal, Outcome, RunRecord, Store};

use crate::edge::EdgeRuntime;

/// Incus server config key mirroring this host's anti-rollback high-water mark, so wiping
/// the state directory does not reopen rollback.
pub fn high_water_key(host: &str) -> String {
    format!("user.veza-agent.applied.{host}")
}

/// A verified revision and the manifests read from it.
pub struct Source {
    /// Tip commit id.
    pub commit: String,
    /// Signer principal.
    pub signer: String,
    /// The host's validated manifests (`metadata.host` = this host).
    pub manifests: Vec<Manifest>,
}

/// Why a revision was not used.
#[derive(Debug)]
pub enum SourceProblem {
    /// Fetch failed on every remote.
    Fetch(String),
    /// The revision could not be checked (the anti-rollback mark unreadable); nothing used.
    Failed(String),
    /// The revision was refused (signature, policy, rollback, invalid manifests).
    Rejected { commit: String, reason: String },
}

/// What a sync did, for the caller (exit codes, `sync` replies, logs).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SyncSummary {
    /// Outcome.
    pub outcome: Outcome,
    /// The commit worked on.
    pub commit: Option<String>,
    /// Why, when not applied or no-change.
    pub reason: Option<String>,
    /// Steps executed.
    pub steps: usize,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// A newer commit preempted this run: sync again at once.
    #[serde(default)]
    pub preempted: bool,
    /// What the plan refused to do (`resource: reason`): the run is not clean even when
    /// everything else applied.
    #[serde(default)]
    pub refusals: Vec<String>,
}

impl std::fmt::Display for SyncSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.outcome.as_str())?;
        if let Some(c) = &self.commit {
            write!(f, " {}", &c[..c.len().min(12)])?;
        }
        write!(f, " ({} steps, {} ms)", self.steps, self.duration_ms)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        if !self.refusals.is_empty() {
            write!(f, "; {} refused (not done):", self.refusals.len())?;
            for r in &self.refusals {
                write!(f, "\n  refused: {r}")?;
            }
        }
        Ok(())
    }
}

/// What a verified revision would do on this host (see [`Agent::plan_for`]).
#[derive(Debug)]
pub enum Decision {
    /// The commit's promotion was rolled back before: nothing is tried again.
    Quarantined(String),
    /// The plan to run.
    Plan(Plan),
}

/// How the stages of one sync ended, for the one exit path that records it.
struct End {
    outcome: Outcome,
    commit: Option<String>,
    reason: Option<String>,
    steps: usize,
    preempted: bool,
    /// The history entry to append, if this run is worth one.
    history: Option<HistoryEntry>,
    /// The apply engine ran and wrote the journal: clear it once the outcome is saved.
    journaled: bool,
}

impl End {
    fn new(outcome: Outcome, commit: Option<String>, reason: Option<String>) -> End {
        End { outcome, commit, reason, steps: 0, preempted: false, history: None, journaled: false }
    }
}

/// The agent: configuration and long-lived clients.
pub struct Agent {
    /// Host configuration.
    pub config: HostConfig,
    /// Where the configuration came from (re-read on SIGHUP).
    pub config_path: PathBuf,
    /// Incus client (pooled connections).
    pub incus: IncusClient,
}

impl Agent {
    /// Loads the configuration and connects nothing yet.
    pub fn load(config_path: &Path) -> Result<Agent> {
        let config = load_config(config_path)?;
        let incus = match (
            &config.incus.endpoint,
            &config.incus.client_cert,
            &config.incus.client_key,
            &config.incus.server_cert,
        ) {
            (Some(url), Some(cert), Some(key), Some(server)) => IncusClient::new(
                veza_host::incus::Transport::Https {
                    url: url.clone(),
                    client_cert: cert.into(),
                    client_key: key.into(),
                    server_cert: server.into(),
                },
                veza_host::incus::ClientOptions::default(),
            ),
            _ => IncusClient::unix(config.incus_socket()),
        };
        Ok(Agent { config, config_path: config_path.to_path_buf(), incus })
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.config.state_dir())
    }

    fn edge(&self, runs_in: Option<&str>) -> EdgeRuntime<'_> {
        EdgeRuntime::new(&self.config, &self.incus, runs_in)
    }

    fn units(&self) -> Systemd<'_, IncusClient> {
        Systemd::new(
            &self.incus,
            self.config.systemd.unit_dir.clone().unwrap_or_else(|| "/etc/systemd/system".into()),
        )
    }

    /// Source and verify: fetch the branch, verify the tip, check policy and ancestry,
    /// read and validate the manifests. Pure decisions, effects limited to the mirror.
    pub async fn source(&self, state: &AgentState, now: i64) -> Result<Source, SourceProblem> {
        let c = &self.config;
        let mirror_dir = self.state_dir().join("mirror.git");
        let mut mirror =
            Mirror::open_or_init(&mirror_dir).map_err(|e| SourceProblem::Fetch(e.to_string()))?;
        let credentials = read_credentials(c).map_err(SourceProblem::Fetch)?;
        let secret = credentials.as_ref().map(|c| c.token.clone());
        let options = FetchOptions {
            credentials,
            ca_file: c.source.ca_file.as_ref().map(PathBuf::from),
            approval_tags: c.trust.policy.is_some(),
            max_refs: c.max_refs(),
            max_pack_bytes: c.max_pack_bytes(),
            ..FetchOptions::new(c.branch(), c.fetch_timeout())
        };
        let fetched = mirror
            .fetch(&c.source.remotes, &options)
            .map_err(|e| SourceProblem::Fetch(redact(&e.to_string(), secret.as_deref())))?;
        let commit = fetched.tip.to_string();
        let reject = |kind: Refusal, detail: String| SourceProblem::Rejected {
            commit: commit.clone(),
            reason: kind.reason(&detail),
        };
        let signers = AllowedSigners::from_file(Path::new(&c.trust.allowed_signers))
            .map_err(|e| reject(Refusal::TrustRoot, e.to_string()))?;
        let raw = mirror
            .raw_commit(fetched.tip)
            .map_err(|e| reject(Refusal::Signature, e.to_string()))?;
        let verdict = verify_commit(&raw, &signers, now)
            .map_err(|e| reject(Refusal::Signature, e.to_string()))?;
        // Anti-rollback: the tip must descend from the last applied commit, known from the
        // state file or, when that is gone, from the mirror in Incus. Unknown is not "none":
        // without the state file and without Incus, nothing is checked, so nothing is used.
        let key = high_water_key(&c.host);
        let applied = match &state.applied {
            Some(a) => Some(a.commit.clone()),
            None => self.incus.server_user_config(&key).await.map_err(|e| {
                SourceProblem::Failed(format!(
                    "cannot read the anti-rollback mark `{key}` from Incus ({e}), and the state \
                     file has no applied commit: refusing to use {commit} unchecked (hint: is \
                     incusd running? `incus info`)"
                ))
            })?,
        };
        let mut last_id = None;
        if let Some(last) = &applied {
            // By object id only: a ref the forge names like the id proves nothing.
            let id = mirror.commit_by_id(last).map_err(|e| match e {
                FetchError::ObjectNotFound { .. } => reject(
                    Refusal::Rollback,
                    format!(
                        "the last applied commit {last} is not in the fetched history: the \
                         branch was force-pushed or rewritten (hint: push the old tip back, then \
                         undo changes with `git revert` in new signed commits)"
                    ),
                ),
                e => reject(Refusal::Ancestry, format!("the last applied commit: {e}")),
            })?;
            let ok = mirror
                .is_descendant(fetched.tip, id, 100_000)
                .map_err(|e| reject(Refusal::Ancestry, e.to_string()))?;
            if !ok {
                return Err(reject(
                    Refusal::Rollback,
                    format!(
                        "{commit} does not descend from the last applied commit {last} (hint: \
                         undo a change with `git revert` in a new signed commit)"
                    ),
                ));
            }
            last_id = Some(id);
        }
        // The approval policy covers the paths changed since the last applied commit; on
        // a host that has applied nothing yet, every path of the tip (a fresh or wiped
        // host is no way around the approvals).
        let mut confine = None;
        if let Some(policy_path) = &c.trust.policy {
            let text = std::fs::read_to_string(policy_path)
                .map_err(|e| reject(Refusal::Policy, format!("`{policy_path}` unreadable: {e}")))?;
            let policy = veza_source::policy::Policy::from_yaml_str(&text)
                .map_err(|e| reject(Refusal::Policy, format!("`{policy_path}`: {e}")))?;
            let changed = mirror
                .changed_paths(last_id, fetched.tip, 1_000_000)
                .map_err(|e| reject(Refusal::Policy, e.to_string()))?;
            let tags = mirror
                .tags_pointing_at(fetched.tip, c.max_refs())
                .map_err(|e| reject(Refusal::Policy, e.to_string()))?;
            let (approvals, _) = veza_source::policy::collect_approvals(
                &commit,
                &verdict,
                &tags,
                &signers,
                now,
                policy.approval_ref.as_deref(),
            );
            if let Err(violations) = policy.evaluate(&verdict, &changed, &approvals) {
                let text: Vec<String> = violations.iter().map(ToString::to_string).collect();
                return Err(reject(Refusal::Policy, text.join("; ")));
            }
            confine = Some((policy_path, policy));
        }
        let mut files = Vec::new();
        for path in &c.source.manifests {
            let bytes = mirror
                .read_file(fetched.tip, path, veza_model::parse::MAX_MANIFEST_BYTES as u64)
                .map_err(|e| reject(Refusal::Manifest, e.to_string()))?;
            files.push((path.clone(), bytes));
        }
        let parsed = veza_model::load(&files).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            reject(Refusal::InvalidManifests, format!("\n{}", text.join("\n")))
        })?;
        let manifests: Vec<(String, Manifest)> = parsed
            .into_iter()
            .map(|(path, p)| (path, p.manifest))
            .filter(|(_, m)| m.metadata.host == c.host)
            .collect();
        // Capabilities: powers over the host only where the manifest path is granted them.
        if let Some((policy_path, policy)) = &confine {
            let set: Vec<(&str, &Manifest)> =
                manifests.iter().map(|(p, m)| (p.as_str(), m)).collect();
            policy.confine(&set).map_err(|refused| {
                let text: Vec<String> = refused.iter().map(ToString::to_string).collect();
                reject(Refusal::Policy, format!("`{policy_path}`: {}", text.join("; ")))
            })?;
        }
        let manifests = manifests.into_iter().map(|(_, m)| m).collect();
        Ok(Source { commit, signer: verdict.principal, manifests })
    }

    /// Observe: Incus, the edge's live config, job units.
    pub async fn observe(&self, manifests: &[Manifest]) -> Result<LiveState> {
        // Networks only when a manifest declares some (incusd's network endpoints stall
        // while containers start).
        let scope = if manifests.iter().any(|m| !m.incus.networks.is_empty()) {
            Scope::EVERYTHING
        } else {
            Scope::WITHOUT_NETWORKS
        };
        let live = self.incus.observe_scoped(scope).await.context("observing Incus")?;
        let mut state = to_live(&live);
        let runs_in = manifests.iter().find_map(|m| m.edge.as_ref().map(|e| e.runs_in.clone()));
        if let Some(r) = &runs_in {
            let edge_ready = r == "host" || state.instances.get(r).is_some_and(|i| i.running);
            if edge_ready {
                state.edge_config = self.edge(Some(r)).live_config().await.ok().flatten();
                if let Some(cfg) = &state.edge_config {
                    state.active_colors = veza_plan::live::active_colors_from_config(cfg);
                }
            }
        }
        let units = self.units();
        let mut targets: Vec<UnitTarget> = Vec::new();
        for m in manifests {
            for job in m.jobs.values() {
                let t = if job.on == "host" {
                    UnitTarget::Host
                } else {
                    UnitTarget::Instance(job.on.clone())
                };
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
        }
        for t in targets {
            let ready = match &t {
                UnitTarget::Host => true,
                UnitTarget::Instance(i) => {
                    state.instances.get(i).is_some_and(|x| x.running && x.is_owned())
                }
            };
            if ready && let Ok(files) = units.list(&t).await {
                state.units.insert(t, files);
            }
        }
        Ok(state)
    }

    /// Plan options for this host.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            edge_settings: crate::edge::settings(&self.config),
            failing_jobs: BTreeMap::new(),
        }
    }

    /// Runs the plan through the drivers.
    pub async fn apply(
        &self,
        plan: &Plan,
        runs_in: Option<&str>,
        hooks: &mut impl Hooks,
    ) -> ApplyReport {
        let edge = self.edge(runs_in);
        let units = self.units();
        let artifacts = ArtifactStore::new(&self.state_dir().join("artifacts"))
            .with_max_bytes(self.config.artifact_max_bytes());
        let gates = Gates {
            health_timeout: self.config.health_timeout(),
            verify_requests: self.config.promotion.verify_requests.unwrap_or(5),
            probe_timeout: Duration::from_secs(2),
            ..Gates::default()
        };
        let drivers = Drivers {
            incus: &self.incus,
            edge: &edge,
            units: &units,
            artifacts: &artifacts,
            probe: &veza_host::http::HttpProbe,
            clock: &veza_host::clock::SystemClock,
            gates,
        };
        apply(plan, &drivers, hooks).await
    }

    /// What this host would do with a verified revision, given the recorded state and
    /// the live observation: the one decision shared by `sync` and `plan`, so a plan
    /// never shows what an apply would refuse (quarantine, gated promotions). Pure.
    pub fn plan_for(
        &self,
        state: &AgentState,
        source: &Source,
        live: &LiveState,
        now: i64,
    ) -> Result<Decision, veza_plan::PlanError> {
        if let Some(q) = state.quarantined.get(&source.commit) {
            return Ok(Decision::Quarantined(format!(
                "commit is quarantined after a rolled-back promotion ({}); push a newer commit",
                q.reason
            )));
        }
        let mut opts = self.plan_options();
        opts.failing_jobs = failing_jobs(state, &source.manifests, now);
        let refs: Vec<&Manifest> = source.manifests.iter().collect();
        veza_plan::plan(&refs, live, &opts).map(Decision::Plan)
    }

    /// One full sync with the store locked. `stop` is checked between steps.
    ///
    /// The stages run in [`Agent::stages`]; whatever they end with, this one exit path
    /// records the run, appends history, saves the state, writes the metrics and only
    /// then clears the apply journal (a kill before the save leaves the journal, so
    /// `status` says the run was interrupted rather than claim the old commit is live).
    pub async fn sync(&self, store: &Store, stop: &AtomicBool) -> Result<SyncSummary> {
        let started = Instant::now();
        let started_ms = chrono::Utc::now().timestamp_millis();
        let now = started_ms / 1000;
        // A corrupt state file is moved aside here, under the lock; a state written by a
        // newer agent stops the sync (never overwritten).
        let (mut state, recovered) = store.load_or_recover()?;
        if let Some(e) = recovered {
            tracing::error!("{e}");
        }
        let interrupted = store.reader().journal();
        let end = self.stages(&mut state, store, stop, interrupted.as_ref(), now).await;
        let duration_ms = started.elapsed().as_millis() as u64;
        record(
            &mut state,
            Event::Finished(RunRecord {
                started_ms,
                duration_ms,
                outcome: end.outcome,
                reason: end.reason.clone(),
                commit: end.commit.clone(),
            }),
        );
        let save = (|| {
            if let Some(mut h) = end.history {
                h.at_ms = started_ms;
                h.duration_ms = duration_ms;
                store.append_history(&h)?;
            }
            store.save(&state)
        })();
        self.write_metrics(&state, now);
        save?;
        if end.journaled {
            store.clear_journal()?;
        }
        Ok(SyncSummary {
            outcome: end.outcome,
            commit: end.commit,
            reason: end.reason,
            steps: end.steps,
            duration_ms,
            preempted: end.preempted,
            refusals: state.refusals.clone(),
        })
    }

    /// The stages of one sync: accept → observe → plan → apply → observe again →
    /// record into `state`. Returns how the run ended; never saves (see [`Agent::sync`]).
    async fn stages(
        &self,
        state: &mut AgentState,
        store: &Store,
        stop: &AtomicBool,
        interrupted: Option<&Journal>,
        now: i64,
    ) -> End {
        let source = match self.source(state, now).await {
            Ok(s) => s,
            Err(SourceProblem::Fetch(e)) => {
                record(state, Event::FetchFailed { error: e.clone() });
                return End::new(Outcome::Failed, None, Some(format!("fetch: {e}")));
            }
            Err(SourceProblem::Failed(e)) => return End::new(Outcome::Failed, None, Some(e)),
            Err(SourceProblem::Rejected { commit, reason }) => {
                let mut end =
                    End::new(Outcome::Rejected, Some(commit.clone()), Some(reason.clone()));
                end.history = record(state, Event::Rejected { commit, reason, at: now });
                return end;
            }
        };
        record(state, Event::Accepted { commit: source.commit.clone(), at: now });
        let commit = Some(source.commit.clone());
        let live = match self.observe(&source.manifests).await {
            Ok(l) => l,
            Err(e) => return End::new(Outcome::Failed, commit, Some(format!("{e:#}"))),
        };
        let plan = match self.plan_for(state, &source, &live, now) {
            Ok(Decision::Plan(p)) => p,
            Ok(Decision::Quarantined(reason)) => {
                return End::new(Outcome::RolledBack, commit, Some(reason));
            }
            Err(e) => return End::new(Outcome::Failed, commit, Some(format!("plan: {e}"))),
        };
        for r in &plan.refusals {
            tracing::warn!(resource = %r.resource, "refused: {}", r.reason);
        }
        record(
            state,
            Event::Planned {
                refusals: plan
                    .refusals
                    .iter()
                    .map(|r| format!("{}: {}", r.resource, r.reason))
                    .collect(),
                drift: plan.drift.clone(),
            },
        );
        let already =
            state.applied.as_ref().map(|a| a.commit.as_str()) == Some(source.commit.as_str());
        if plan.is_empty() && interrupted.is_none() {
            self.record_applied(state, &source, &live, now).await;
            let outcome = if already { Outcome::NoChange } else { Outcome::Applied };
            let mut end = End::new(outcome, commit, None);
            if !already {
                end.history =
                    Some(history_entry(state, &source.commit, &source.signer, outcome, None));
            }
            return end;
        }
        if let Some(j) = interrupted {
            tracing::warn!(commit = %j.commit, step = ?j.current, "the previous run was interrupted; re-planned from live state");
        }
        let runs_in =
            source.manifests.iter().find_map(|m| m.edge.as_ref().map(|e| e.runs_in.clone()));
        let mut hooks = JournalHooks {
            store,
            journal: Journal {
                commit: source.commit.clone(),
                started_ms: now * 1000,
                steps: plan.steps.iter().map(|s| s.action.to_string()).collect(),
                done: 0,
                current: None,
            },
            stop,
            newer: NewerCommit {
                config: &self.config,
                mirror_dir: self.state_dir().join("mirror.git"),
                commit: source.commit.clone(),
                last_check: std::cell::Cell::new(Some(Instant::now())),
            },
        };
        let report = self.apply(&plan, runs_in.as_deref(), &mut hooks).await;
        let (outcome, reason) = match &report.outcome {
            ApplyOutcome::Applied => (Outcome::Applied, None),
            ApplyOutcome::RolledBack { reason } => (Outcome::RolledBack, Some(reason.clone())),
            ApplyOutcome::Failed { step, error } => {
                (Outcome::Failed, Some(format!("step `{step}` failed: {error}")))
            }
            ApplyOutcome::Interrupted { before } => {
                (Outcome::Failed, Some(format!("stopped before `{before}` (shutdown requested)")))
            }
            ApplyOutcome::Preempted { during } => {
                (Outcome::Failed, Some(format!("preempted by a newer commit during `{during}`")))
            }
        };
        let live_after = self.observe(&source.manifests).await.unwrap_or(live);
        match outcome {
            Outcome::Applied => {
                self.record_applied(state, &source, &live_after, now).await;
            }
            Outcome::RolledBack => {
                // The commit was verified and attempted: it becomes the high-water mark
                // (only its descendants, e.g. a revert, are accepted next).
                self.record_applied(state, &source, &live_after, now).await;
                record(
                    state,
                    Event::RolledBack {
                        commit: source.commit.clone(),
                        reason: reason.clone().unwrap_or_default(),
                        promotions: plan
                            .promotions
                            .iter()
                            .map(|p| (p.env.clone(), p.app.clone()))
                            .collect(),
                        at: now,
                    },
                );
            }
            _ => {}
        }
        let mut end = End::new(outcome, commit, reason.clone());
        end.history = Some(history_entry(state, &source.commit, &source.signer, outcome, reason));
        end.steps = report.steps_done;
        end.preempted = matches!(report.outcome, ApplyOutcome::Preempted { .. });
        end.journaled = true;
        end
    }

    /// Records `source` as what the host runs, as observed in `live` (the edge's active
    /// colors and health, the jobs), and mirrors the high-water mark into Incus.
    async fn record_applied(
        &self,
        state: &mut AgentState,
        source: &Source,
        live: &LiveState,
        now: i64,
    ) {
        let key = high_water_key(&self.config.host);
        if self.incus.server_user_config(&key).await.ok().flatten().as_deref()
            != Some(source.commit.as_str())
            && let Err(e) = self.incus.set_server_user_config(&key, Some(&source.commit)).await
        {
            tracing::warn!("could not mirror the high-water mark into Incus: {e}");
        }
        let runs_in =
            source.manifests.iter().find_map(|m| m.edge.as_ref().map(|e| e.runs_in.clone()));
        let health = match &runs_in {
            Some(r) => self.edge(Some(r)).health().await.unwrap_or_else(|e| {
                tracing::debug!("edge health unavailable: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let mut apps = Vec::new();
        for m in &source.manifests {
            let env = &m.metadata.name;
            for (app_name, app) in &m.apps {
                let backend = format!("{env}_{app_name}");
                let mut colors = BTreeMap::new();
                if let Some(b) = health.iter().find(|b| b.backend == backend) {
                    for srv in &b.servers {
                        let color = srv.server.split('-').next().unwrap_or("");
                        if color == "blue" || color == "green" {
                            colors.insert(color.to_string(), srv.status_text.clone());
                        }
                    }
                }
                apps.push(ObservedApp {
                    env: env.clone(),
                    app: app_name.clone(),
                    declared_active: app.active.to_string(),
                    live_active: live
                        .active_colors
                        .get(&(env.clone(), app_name.clone()))
                        .map(ToString::to_string),
                    releases: app
                        .slots
                        .iter()
                        .filter_map(|(c, s)| Some((c.to_string(), s.release.as_ref()?.to_string())))
                        .collect(),
                    health: colors,
                });
            }
        }
        let jobs = self.observe_jobs(&source.manifests, &state.jobs, now).await;
        let revision = AppliedRevision {
            commit: source.commit.clone(),
            signer: source.signer.clone(),
            applied_at: now,
        };
        record(state, Event::Applied { revision, apps, jobs });
    }

    /// Every manifest job's last run, next elapse and verdict (`crate::jobs::record`), for
    /// status and metrics; `prev` carries the last success across syncs.
    async fn observe_jobs(
        &self,
        manifests: &[Manifest],
        prev: &BTreeMap<String, veza_state::JobState>,
        now: i64,
    ) -> BTreeMap<String, veza_state::JobState> {
        let units = self.units();
        let mut out = BTreeMap::new();
        for m in manifests {
            for (name, job) in &m.jobs {
                let key = format!("{}/{name}", m.metadata.name);
                let target = if job.on == "host" {
                    UnitTarget::Host
                } else {
                    UnitTarget::Instance(job.on.clone())
                };
                let stem = veza_model::units::unit_stem(&m.metadata.name, name);
                let run = units
                    .job_run(&target, &format!("{stem}.service"), &format!("{stem}.timer"))
                    .await;
                let record = crate::jobs::record(
                    &job.on,
                    &job.schedule,
                    job.max_success_age.map(|d| d.get()),
                    run.as_ref().map_err(ToString::to_string),
                    prev.get(&key),
                    now,
                );
                out.insert(key, record);
            }
        }
        out
    }

    fn write_metrics(&self, state: &AgentState, now: i64) {
        let Some(path) = &self.config.metrics.textfile else { return };
        let stale = state
            .last_verified_fetch_at
            .is_none_or(|t| now - t > self.config.max_staleness().as_secs() as i64);
        let jobs = veza_state::metrics::job_metrics(state);
        let text = veza_state::metrics::render(state, &jobs, now, stale);
        // node_exporter's directory belongs to `prometheus`: written without following
        // anything planted there.
        if let Err(e) =
            veza_host::fs::write_atomic_in_shared_dir(Path::new(path), text.as_bytes(), 0o644)
        {
            tracing::warn!("metrics: {e}");
        }
    }
}

/// The `username:token` of `source.credentials_file`, if configured (first line, trimmed).
fn read_credentials(c: &HostConfig) -> Result<Option<Credentials>, String> {
    let Some(path) = &c.source.credentials_file else { return Ok(None) };
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let unreadable = |e: std::io::Error| format!("credentials file `{path}` unreadable: {e}");
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "credentials file `{path}` is readable by others (mode {mode:03o}); \
                 `chmod 600 {path}`"
            );
        }
    }
    parse_credentials(&text).map(Some).ok_or_else(|| {
        format!("credentials file `{path}` must hold one line `username:token` (no spaces)")
    })
}

/// `username:token` on the first line; neither part empty, no whitespace inside.
fn parse_credentials(text: &str) -> Option<Credentials> {
    let line = text.lines().next().unwrap_or("").trim();
    let (username, token) = line.split_once(':')?;
    if username.is_empty() || token.is_empty() || line.contains(char::is_whitespace) {
        return None;
    }
    Some(Credentials { username: username.to_string(), token: token.to_string() })
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Removes the token (plain and percent-encoded) from a message before it is logged or
/// recorded.
pub fn redact(message: &str, token: Option<&str>) -> String {
    let Some(token) = token else { return message.to_string() };
    if token.is_empty() {
        return message.to_string();
    }
    message.replace(&pct(token), "***").replace(token, "***")
}

/// Gated jobs whose last observed run failed, or whose last success is too old, as
/// `env/job` → why. Reads what the previous sync recorded (a job never observed yet is
/// not failing: a freshly installed weekly drill gets its grace period).
pub fn failing_jobs(
    state: &AgentState,
    manifests: &[Manifest],
    now: i64,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in manifests {
        for app in m.apps.values() {
            for job in &app.gate_on_jobs {
                let key = format!("{}/{job}", m.metadata.name);
                if let Some(why) = state.jobs.get(&key).and_then(|j| crate::jobs::health(j, now)) {
                    out.insert(key, why);
                }
            }
        }
    }
    out
}

/// Converts the Incus driver's observation into the planner's live state.
pub fn to_live(live: &IncusLive) -> LiveState {
    LiveState {
        instances: live
            .instances
            .iter()
            .map(|(n, i)| {
                (
                    n.clone(),
                    LiveInstance {
                        config: i.config.clone(),
                        devices: i.devices.clone(),
                        expanded_devices: i.expanded_devices.clone(),
                        profiles: i.profiles.clone(),
                        running: i.is_running(),
                        kind: i.kind.as_str().to_string(),
                    },
                )
            })
            .collect(),
        profiles: live
            .profiles
            .iter()
            .map(|(n, p)| {
                (n.clone(), LiveProfile { config: p.config.clone(), devices: p.devices.clone() })
            })
            .collect(),
        networks: live
            .networks
            .iter()
            .map(|(n, x)| (n.clone(), LiveNetwork { managed: x.managed, config: x.config.clone() }))
            .collect(),
        pools: live.pools.keys().cloned().collect(),
        ..LiveState::default()
    }
}

/// Reads and validates the host configuration.
pub fn load_config(path: &Path) -> Result<HostConfig> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read configuration `{}`", path.display()))?;
    veza_model::config::parse_config(&bytes).map_err(|problems| {
        let text: Vec<String> = problems
            .iter()
            .map(|d| format!("{}:{}: error: {}", path.display(), d.pos, d.message))
            .collect();
        anyhow::anyhow!("invalid configuration:\n{}", text.join("\n"))
    })
}

struct JournalHooks<'a> {
    store: &'a Store,
    journal: Journal,
    stop: &'a AtomicBool,
    /// Looks for a newer commit on the branch while a health gate waits.
    newer: NewerCommit<'a>,
}

/// Checks, at most every few seconds, whether the branch moved past the commit being
/// applied: a newer commit that verifies preempts a health wait in progress.
struct NewerCommit<'a> {
    config: &'a HostConfig,
    mirror_dir: PathBuf,
    commit: String,
    last_check: std::cell::Cell<Option<Instant>>,
}

impl NewerCommit<'_> {
    const EVERY: Duration = Duration::from_secs(3);

    fn check(&self) -> bool {
        if self.last_check.get().is_some_and(|t| t.elapsed() < Self::EVERY) {
            return false;
        }
        self.last_check.set(Some(Instant::now()));
        let c = self.config;
        let verdict = tokio::task::block_in_place(|| {
            let mut mirror = Mirror::open_or_init(&self.mirror_dir).ok()?;
            let opts = FetchOptions {
                max_refs: c.max_refs(),
                max_pack_bytes: c.max_pack_bytes(),
                ..FetchOptions::new(c.branch(), c.fetch_timeout().min(Duration::from_secs(10)))
            };
            let tip = mirror.fetch(&c.source.remotes, &opts).ok()?.tip;
            if tip == self.commit.as_str() {
                return None;
            }
            let signers = AllowedSigners::from_file(Path::new(&c.trust.allowed_signers));
            let raw = mirror.raw_commit(tip).map_err(|e| e.to_string());
            let descends = || {
                let applying = mirror.commit_by_id(&self.commit).map_err(|e| e.to_string())?;
                mirror.is_descendant(tip, applying, 100_000).map_err(|e| e.to_string())
            };
            let now = chrono::Utc::now().timestamp();
            let verdict = match (signers, raw) {
                (Ok(signers), Ok(raw)) => preempts(&raw, &signers, now, descends),
                (Err(e), _) => Err(format!("trust root unusable: {e}")),
                (_, Err(e)) => Err(e),
            };
            Some((tip, verdict))
        });
        match verdict {
            Some((tip, Ok(()))) => {
                tracing::info!(newer = %tip, "a newer commit arrived; preempting the health wait");
                true
            }
            Some((tip, Err(why))) => {
                tracing::warn!(tip = %tip, "the branch moved, but not to a commit that may preempt the health wait: {why}");
                false
            }
            None => false,
        }
    }
}

/// Whether a new branch tip (`raw_tip`, another commit than the one being applied) may
/// preempt a health wait: only when its signature verifies against the trust root and it
/// descends from the commit being applied. An unsigned or untrusted tip, or a rewind,
/// never interrupts a promotion (it would be rejected anyway). `Err` says why not.
fn preempts(
    raw_tip: &[u8],
    signers: &AllowedSigners,
    now: i64,
    descends: impl FnOnce() -> Result<bool, String>,
) -> Result<(), String> {
    verify_commit(raw_tip, signers, now).map_err(|e| Refusal::Signature.reason(&e.to_string()))?;
    match descends() {
        Ok(true) => Ok(()),
        Ok(false) => Err("it does not descend from the commit being applied".to_string()),
        Err(e) => Err(format!("its ancestry is unknown: {e}")),
    }
}

impl Hooks for JournalHooks<'_> {
    fn before_step(&mut self, index: usize, step: &Step) {
        self.journal.done = index;
        self.journal.current = Some(step.action.to_string());
        tracing::info!(step = index + 1, "{} ({})", step.action, step.reason);
        if let Err(e) = self.store.write_journal(&self.journal) {
            tracing::warn!("journal: {e}");
        }
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn preempted(&self) -> bool {
        self.newer.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gating_reads_the_recorded_job_health() {
        let prod = include_str!("../../manifests/prod.yaml");
        let staging = include_str!("../../manifests/staging.yaml");
        let files = vec![
            ("prod.yaml".to_string(), prod.as_bytes().to_vec()),
            ("staging.yaml".to_string(), staging.as_bytes().to_vec()),
        ];
        let manifests: Vec<Manifest> = veza_model::load(&files)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_iter()
            .map(|(_, p)| p.manifest)
            .collect();
        let mut state = AgentState::default();
        assert!(failing_jobs(&state, &manifests, 1_000_000).is_empty(), "unknown jobs do not gate");
        let drill = veza_state::JobState {
            max_success_age_s: Some(8 * 86_400),
            last_success_at: Some(0),
            first_seen_at: Some(0),
            ..veza_state::JobState::default()
        };
        state.jobs.insert("prod/dr-drill".into(), drill);
        let failing = failing_jobs(&state, &manifests, 9 * 86_400);
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert!(failing["prod/dr-drill"].contains("last success 9 d ago"), "{failing:?}");
        assert!(failing_jobs(&state, &manifests, 86_400).is_empty());
    }

    #[test]
    fn only_a_verified_descendant_preempts_a_health_wait() {
        let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("signing/vectors");
        let read = |name: &str| std::fs::read(vectors.join(name)).expect("signing vector");
        let signers = AllowedSigners::from_file(&vectors.join("allowed_signers")).expect("trust");
        // (new tip, its ancestry, preempts?, why not)
        let table: [(&str, Result<bool, String>, bool, &str); 6] = [
            ("commit2.raw", Ok(true), true, ""),
            ("commit2.raw", Ok(false), false, "does not descend"),
            ("commit2.raw", Err("walk limit".into()), false, "ancestry is unknown"),
            ("neg-unsigned.raw", Ok(true), false, "signature: commit is not signed"),
            ("neg-untrusted-key.raw", Ok(true), false, "not in allowed_signers"),
            ("neg-tampered.raw", Ok(true), false, "bad signature"),
        ];
        for (tip, ancestry, want, why) in table {
            let got = preempts(&read(tip), &signers, 1_800_000_000, || ancestry.clone());
            assert_eq!(got.is_ok(), want, "{tip} {ancestry:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.contains(why), "{tip}: {e}");
            }
        }
    }

    #[test]
    fn credentials_are_one_line_user_colon_token_and_never_reach_messages() {
        // (file content, parsed user and token)
        let table: [(&str, Option<(&str, &str)>); 7] = [
            ("agent:s3cr/t\n", Some(("agent", "s3cr/t"))),
            ("agent:tok:with:colons", Some(("agent", "tok:with:colons"))),
            ("  agent:tok  \nignored second line", Some(("agent", "tok"))),
            ("agent", None),
            (":tok", None),
            ("agent:", None),
            ("agent:to k", None),
        ];
        for (text, want) in table {
            let got = parse_credentials(text);
            assert_eq!(
                got.as_ref().map(|c| (c.username.as_str(), c.token.as_str())),
                want,
                "{text:?}"
            );
            if let Some(c) = got {
                assert!(!format!("{c:?}").contains(&c.token), "Debug shows the token");
            }
        }
        let msg = "fetch https://agent:s3cr%2Ft@forge.example failed; token s3cr/t";
        let clean = redact(msg, Some("s3cr/t"));
        assert!(!clean.contains("s3cr"), "{clean}");
        assert_eq!(redact(msg, None), msg);
    }
}
