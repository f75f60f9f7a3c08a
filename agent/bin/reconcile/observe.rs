//! Observe: what Incus, the edge and systemd run, as the planner's live types; and what
//! the host runs after a sync, recorded through `veza_state::record`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use futures_util::future::join_all;
use veza_host::incus::{Incus, Scope, SharedConfig};
use veza_host::systemd::Units;
use veza_model::Manifest;
use veza_model::live::{LiveState, UnitTarget};
use veza_model::manifest::Color;
use veza_model::naming;
use veza_state::record::{Event, ObservedApp, record};
use veza_state::{AgentState, AppliedRevision};

use super::{Agent, Source, high_water_key, landed_key};

impl Agent {
    /// Observe: Incus, the edge's live config, job units (where the manifests' jobs run,
    /// and where `recorded`'s jobs ran: the units of a target whose jobs all left must be
    /// seen to be removed).
    pub async fn observe(
        &self,
        manifests: &[Manifest],
        recorded: &AgentState,
    ) -> Result<LiveState> {
        // Networks only when a manifest declares some (incusd's network endpoints stall
        // while containers start).
        let scope = if manifests.iter().any(|m| !m.incus.networks.is_empty()) {
            Scope::EVERYTHING
        } else {
            Scope::WITHOUT_NETWORKS
        }
        .with_members(self.config.cluster.is_some());
        let mut state = self.incus.observe_scoped(scope).await.context("observing Incus")?;
        let runs_in = manifests.iter().find_map(|m| m.edge.as_ref().map(|e| e.runs_in.clone()));
        if let Some(r) = &runs_in {
            let edge_ready = r == "host" || state.instances.get(r).is_some_and(|i| i.is_running());
            if edge_ready {
                // Unreadable is not "no config": which color serves is unknown then, and a
                // plan from that could rebuild the serving slot in place. Fail the sync.
                state.edge =
                    self.edge(Some(r)).observe().await.map_err(|e| {
                        anyhow::anyhow!("reading the edge's live config (in {r}): {e}")
                    })?;
            }
        }
        let units = self.units();
        let mut targets = job_targets(manifests, recorded);
        targets.retain(|t| match t {
            UnitTarget::Host => true,
            UnitTarget::Instance(i) => {
                state.instances.get(i).is_some_and(|x| x.is_running() && x.is_owned())
            }
        });
        // Each listing is an exec or a directory read of its own: all at once. Unreadable
        // is not "no units" (a plan from that would install them again at every sync):
        // fail the observation, as for the edge.
        let listed = join_all(targets.iter().map(|t| units.list(t))).await;
        for (t, files) in targets.into_iter().zip(listed) {
            let files = files.with_context(|| format!("listing the job units on {t}"))?;
            state.units.insert(t, files);
        }
        Ok(state)
    }

    /// Reads the anti-rollback mark from Incus: `(the default project's, the server
    /// config's)`. The project's is read from the cluster database at every request; the
    /// server config, where agents before 2026-12 kept it, is answered by each member from
    /// memory (a member that missed a change answers an older mark): the newer of the two
    /// counts ([`veza_source::accept::newest_mark`]).
    pub(crate) async fn read_high_water(
        &self,
    ) -> veza_host::incus::Result<(Option<String>, Option<String>)> {
        let key = high_water_key(&self.config.host);
        let project = self.incus.shared_user_config(&key).await?.value;
        Ok((project, self.incus.server_user_config(&key).await?))
    }

    /// Mirrors the anti-rollback mark into Incus (`commit`: the newest applied, or
    /// attempted, commit), so a wiped state directory does not reopen older commits.
    /// `Err` when it could not be written, the lease refusing it included (a standby
    /// leaves it to the leader; a leader whose lease lapsed must not apply): on a cluster
    /// the mark is what every member checks against. Its copy in the server config, for
    /// agents before 2026-12, is written after it (best effort).
    pub(crate) async fn mirror_high_water(&self, commit: &str) -> Result<(), String> {
        let key = high_water_key(&self.config.host);
        let fence = crate::cluster::ClusterLease::fence(self.cluster.as_ref());
        let written = fence.write_shared(&self.incus, &key, Some(commit)).await;
        // The copy is written whatever became of the mark (fenced on its own), and only
        // when it changes: its fence would cost a read of the lease at every sync.
        if self.incus.server_user_config(&key).await.ok().flatten().as_deref() != Some(commit)
            && let Err(e) = veza_host::lease::Fenced::new(&self.incus, &fence)
                .set_server_user_config(&key, Some(commit))
                .await
        {
            tracing::debug!("the anti-rollback mark's copy for older agents: {e}");
        }
        if let Err(e) = written {
            // A cluster's standby leaves the mark to the leader.
            if matches!(e, veza_host::incus::IncusError::Fenced { .. }) {
                tracing::debug!("high-water mark left to the cluster's leader: {e}");
            } else {
                tracing::warn!("could not mirror the high-water mark into Incus: {e}");
            }
            return Err(format!("writing the anti-rollback mark `{key}` into Incus failed: {e}"));
        }
        Ok(())
    }

    /// Mirrors `commit`, just recorded as applied, as the last commit that landed
    /// ([`landed_key`]), fenced as the mark. Best effort: a missing or older one only
    /// asks for more approvals (the diff since it is longer).
    pub(super) async fn mirror_landed(&self, commit: &str) {
        let key = landed_key(&self.config.host);
        let fence = crate::cluster::ClusterLease::fence(self.cluster.as_ref());
        match fence.write_shared(&self.incus, &key, Some(commit)).await {
            Ok(()) => {}
            // A cluster's standby leaves it to the leader.
            Err(e @ veza_host::incus::IncusError::Fenced { .. }) => {
                tracing::debug!("`{key}` left to the cluster's leader: {e}");
            }
            Err(e) => tracing::warn!("could not record `{key}` (the last commit that landed): {e}"),
        }
    }

    /// Records what runs, as observed in `live` (the edge's active colors and health, the
    /// jobs), and with `applied`, `source` as what the host runs; without, the observation
    /// alone, after a run that did not apply `source` as a whole (a rolled-back promotion).
    /// The high-water mark is mirrored by the caller: before the first step of an apply,
    /// or by the sync when a plan had nothing to run.
    pub(super) async fn record_seen(
        &self,
        state: &mut AgentState,
        source: &Source,
        live: &LiveState,
        now: i64,
        applied: bool,
    ) {
        let (apps, jobs) = self.observed(state, source, live, now).await;
        let event = if applied {
            let revision = AppliedRevision {
                commit: source.commit.clone(),
                signer: source.signer.clone(),
                applied_at: now,
            };
            Event::Applied { revision, apps, jobs }
        } else {
            Event::Observed { at: now, apps, jobs }
        };
        record(state, event);
    }

    /// Every app of `source`'s manifests as `live` and the edge's health show it, and
    /// every job's last run.
    async fn observed(
        &self,
        state: &AgentState,
        source: &Source,
        live: &LiveState,
        now: i64,
    ) -> (Vec<ObservedApp>, BTreeMap<String, veza_state::JobState>) {
        let runs_in =
            source.manifests.iter().find_map(|m| m.edge.as_ref().map(|e| e.runs_in.clone()));
        let health = async {
            match &runs_in {
                Some(r) => self.edge(Some(r)).health().await,
                None => Ok(Vec::new()),
            }
        };
        // The edge's health and the jobs' runs are reads of their own: at once.
        let (health, jobs) =
            tokio::join!(health, self.observe_jobs(&source.manifests, &state.jobs, now));
        let mut apps = Vec::new();
        for m in &source.manifests {
            let env = &m.metadata.name;
            let prefix = m.metadata.instance_prefix();
            for (app_name, app) in &m.apps {
                let backend = veza_model::naming::backend(env, app_name);
                let mut colors = BTreeMap::new();
                match &health {
                    Ok(health) => {
                        if let Some(b) = health.iter().find(|b| b.backend == backend) {
                            for srv in &b.servers {
                                if let Some(color) = srv.color {
                                    colors.insert(color.to_string(), srv.status_text.clone());
                                }
                            }
                        }
                    }
                    // Unread is not healthy: the serving color says so (status flags it).
                    Err(e) => {
                        if let Some(c) = live.active_color(env, app_name) {
                            colors.insert(c.to_string(), format!("UNKNOWN ({e})"));
                        }
                    }
                }
                apps.push(ObservedApp {
                    env: env.clone(),
                    app: app_name.clone(),
                    declared_active: app.active.to_string(),
                    live_active: live.active_color(env, app_name).map(|c| c.to_string()),
                    // What each slot runs, as its release mark says (written once the
                    // release runs): a deploy held for a window, or stopped by a failed
                    // migration, shows the release the slot still runs.
                    releases: Color::ALL
                        .into_iter()
                        .filter_map(|c| {
                            let slot =
                                live.instances.get(&naming::slot_instance(&prefix, app_name, c))?;
                            Some((c.to_string(), slot.release()?.to_string()))
                        })
                        .collect(),
                    health: colors,
                });
            }
        }
        (apps, jobs)
    }

    /// Every manifest job's last run, next elapse and verdict (`crate::jobs::record`), for
    /// status and metrics; `prev` carries the last success across syncs.
    pub(super) async fn observe_jobs(
        &self,
        manifests: &[Manifest],
        prev: &BTreeMap<String, veza_state::JobState>,
        now: i64,
    ) -> BTreeMap<String, veza_state::JobState> {
        let units = self.units();
        let jobs: Vec<(String, &veza_model::manifest::Job, UnitTarget, String, String)> = manifests
            .iter()
            .flat_map(|m| {
                m.jobs.iter().map(|(name, job)| {
                    let target = UnitTarget::from_on(&job.on);
                    let stem = veza_model::units::unit_stem(&m.metadata.name, name);
                    let key = format!("{}/{name}", m.metadata.name);
                    (key, job, target, format!("{stem}.service"), format!("{stem}.timer"))
                })
            })
            .collect();
        // One `systemctl show` per job, each an exec of its own: all at once.
        let runs = join_all(
            jobs.iter().map(|(_, _, target, service, timer)| units.job_run(target, service, timer)),
        )
        .await;
        let mut out = BTreeMap::new();
        for ((key, job, ..), run) in jobs.into_iter().zip(runs) {
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
        out
    }

    pub(super) fn write_metrics(&self, state: &AgentState, now: i64) {
        let Some(path) = &self.config.metrics.textfile else { return };
        let stale = state
            .last_verified_fetch_at
            .is_none_or(|t| now - t > self.config.max_staleness().as_secs() as i64);
        let jobs = veza_state::metrics::job_metrics(state);
        let mut text = veza_state::metrics::render(state, &jobs, now, stale);
        if self.config.previews.enabled {
            let previews =
                veza_state::Reader::new(&self.state_dir()).previews().unwrap_or_default();
            text.push_str(&veza_state::metrics::render_previews(&previews));
        }
        // node_exporter's directory belongs to `prometheus`: written without following
        // anything planted there.
        if let Err(e) =
            veza_host::fs::write_atomic_in_shared_dir(Path::new(path), text.as_bytes(), 0o644)
        {
            tracing::warn!("metrics: {e}");
        }
    }
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

/// Where the agent's job units are seen in `live` (`host` or an instance name), and the
/// targets of `prev` not listed this time (stopped, foreign now, on an offline member)
/// while their instance exists: [`AgentState::unit_targets`].
pub(super) fn unit_targets(prev: &BTreeSet<String>, live: &LiveState) -> BTreeSet<String> {
    let name = |t: &UnitTarget| t.as_on().to_string();
    let listed: BTreeSet<String> = live.units.keys().map(name).collect();
    let mut seen: BTreeSet<String> =
        live.units.iter().filter(|(_, u)| !u.is_empty()).map(|(t, _)| name(t)).collect();
    seen.extend(
        prev.iter()
            .filter(|t| !listed.contains(*t))
            .filter(|t| *t == "host" || live.instances.contains_key(*t))
            .cloned(),
    );
    seen
}

/// Where job units are listed: where the manifests' jobs run, where the recorded jobs ran,
/// and where the agent's units were last seen (a target whose jobs all left or moved still
/// holds their units, to be removed).
fn job_targets(manifests: &[Manifest], recorded: &AgentState) -> Vec<UnitTarget> {
    let declared = manifests.iter().flat_map(|m| m.jobs.values().map(|j| j.on.as_str()));
    let ran = recorded.jobs.values().map(|j| j.target.as_str());
    let seen = recorded.unit_targets.iter().map(String::as_str);
    let mut targets: Vec<UnitTarget> = Vec::new();
    for on in declared.chain(ran).chain(seen) {
        let t = UnitTarget::from_on(on);
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Vec<Manifest> {
        let prod = include_str!("../../../manifests/prod.yaml");
        let staging = include_str!("../../../manifests/staging.yaml");
        let files = vec![
            ("prod.yaml".to_string(), prod.as_bytes().to_vec()),
            ("staging.yaml".to_string(), staging.as_bytes().to_vec()),
        ];
        veza_model::load(&files)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_iter()
            .map(|(_, p)| p.manifest)
            .collect()
    }

    /// A target whose jobs all left the manifests is still listed (its units are removed
    /// by the next plan); each target once.
    #[test]
    fn job_units_are_listed_where_jobs_run_and_where_recorded_jobs_ran() {
        let manifests = shipped();
        let mut state = AgentState::default();
        let declared = job_targets(&manifests, &state);
        assert!(!declared.is_empty());
        let job = |target: &str| veza_state::JobState {
            target: target.into(),
            ..veza_state::JobState::default()
        };
        state.jobs.insert("prod/retired".into(), job("veza-old-tools"));
        state.jobs.insert("prod/other".into(), job("host"));
        let all = job_targets(&manifests, &state);
        let old = UnitTarget::Instance("veza-old-tools".into());
        assert!(all.contains(&old), "{all:?}");
        assert_eq!(all.len(), declared.len() + 1 - usize::from(declared.contains(&old)));
        assert!(all.iter().filter(|t| **t == UnitTarget::Host).count() <= 1, "{all:?}");
        assert!(job_targets(&[], &AgentState::default()).is_empty());
    }

    /// Where units were seen stays listed until they are seen gone: a target not listed
    /// this time (stopped, foreign) is kept while its instance exists.
    #[test]
    fn unit_targets_stay_until_their_units_are_seen_gone() {
        let mut live = LiveState::default();
        let units = |names: &[&str]| -> BTreeMap<String, String> {
            names.iter().map(|n| (n.to_string(), String::new())).collect()
        };
        live.units.insert(UnitTarget::Host, units(&["veza-job-prod-drill.timer"]));
        live.units.insert(UnitTarget::Instance("tools".into()), units(&[]));
        live.instances.insert("old".into(), veza_model::live::LiveInstance::default());
        let prev: BTreeSet<String> =
            ["tools", "old", "deleted"].into_iter().map(String::from).collect();
        let seen = unit_targets(&prev, &live);
        // host: units seen; tools: listed, empty (removed); old: not listed, still there;
        // deleted: its instance is gone, and its units with it.
        assert_eq!(seen, ["host", "old"].into_iter().map(String::from).collect());
        let state = AgentState { unit_targets: seen, ..AgentState::default() };
        assert!(job_targets(&[], &state).contains(&UnitTarget::Instance("old".into())));
    }

    #[test]
    fn gating_reads_the_recorded_job_health() {
        let manifests = shipped();
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
}
