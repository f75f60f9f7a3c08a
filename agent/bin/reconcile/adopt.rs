//! Adoption through the pipeline's own stages: the revision accepted and the host
//! observed as for `plan`, the facts adoption needs gathered (`veza_host::adopt`), the
//! assessment (`veza_plan::adopt`), and what the first apply after the marks would do,
//! decided by the one decision of every sync (`Agent::plan_for`); then the execution.

use anyhow::{Result, anyhow};
use veza_host::adopt::{AdoptFailure, Adopted, execute, gather};
use veza_host::http::HttpProbe;
use veza_model::Manifest;
use veza_plan::Plan;
use veza_plan::adopt::{Adoption, assess, needs};
use veza_plan::live::LiveState;
use veza_state::AgentState;

use super::{Agent, Decision, Source, Windows};

/// What `adopt` reports.
pub struct AdoptionReport {
    /// The assessment.
    pub adoption: Adoption,
    /// The plan of the first apply once the marks are set.
    pub after: Plan,
}

impl Agent {
    /// Adoption of what `source` names on the host observed as `live`: read-only (but
    /// for the in-slot probes, a fixed GET on each foreign slot's loopback). `Ok(Err(_))`
    /// when the commit is quarantined (as `plan` decides).
    pub async fn adoption(
        &self,
        state: &AgentState,
        source: &Source,
        live: &LiveState,
        now: i64,
    ) -> Result<Result<AdoptionReport, String>> {
        let refs: Vec<&Manifest> = source.manifests.iter().collect();
        let images = &self.config.incus.images;
        let wanted = needs(&refs, live, images).map_err(|e| anyhow!("adopt: {e}"))?;
        let units = self.units();
        let facts = gather(&self.incus, &units, &HttpProbe, &wanted)
            .await
            .map_err(|e| anyhow!("adopt: {e}"))?;
        let adoption = assess(&refs, live, &facts, &source.secrets.digests(), images)
            .map_err(|e| anyhow!("adopt: {e}"))?;
        let at = Windows::at(now, None);
        let after = match self.plan_for(state, source, &adoption.marked(live), &at)? {
            Decision::Plan(p, _) => p,
            Decision::Quarantined(reason) => return Ok(Err(reason)),
        };
        Ok(Ok(AdoptionReport { adoption, after }))
    }

    /// Executes `adoption` (assessed on `live`) through the drivers.
    pub async fn adopt(
        &self,
        source: &Source,
        adoption: &Adoption,
        live: &LiveState,
    ) -> Result<Adopted, AdoptFailure> {
        let refs: Vec<&Manifest> = source.manifests.iter().collect();
        let jobs = veza_plan::desired::desired(&refs, &live.root_pool(), &source.secrets.digests())
            .map_err(|e| AdoptFailure { done: Adopted::default(), error: e.to_string() })?
            .jobs;
        // On a cluster, only under the lease the caller holds (every write fenced).
        let fence = crate::cluster::ClusterLease::fence(self.cluster.as_ref());
        let incus = veza_host::lease::Fenced::new(&self.incus, &fence);
        let units = self.units_over(&incus);
        execute(&incus, &units, &source.secrets.values(), adoption, live, &jobs).await
    }
}
