//! Running on a member of an Incus cluster (`cluster:` in the host configuration): an
//! agent runs on every member, and only the holder of the cluster lease applies
//! (`veza_host::lease`). Called from one place in a sync (`Agent::sync` asks
//! [`ClusterLease::hold`] beside the suspension), and its fence wraps the Incus driver the
//! apply engine gets. A standby fetches, verifies and plans, and its sync ends as
//! planned-not-applied (exit 4) saying who leads.
//!
//! Between syncs a task renews the lease every third of its TTL (the daemon's poll is
//! usually longer than the TTL); it stops when the agent is dropped. The lease is built
//! once, at start: a configuration reload that changes `cluster` is refused (restart). Each change of who leads is written to `cluster.json` in the state directory,
//! which `status` reads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use veza_host::clock::SystemClock;
use veza_host::incus::{IncusClient, Transport};
use veza_host::lease::{Fence, Keeper, Standing};
use veza_model::config::HostConfig;

type LeaseKeeper = Keeper<IncusClient, SystemClock>;

/// The file in the state directory that says who led at this agent's last look.
pub const STANDING_FILE: &str = "cluster.json";

/// What `cluster.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// This agent's member.
    pub member: String,
    /// Who leads (`None`: the lease key holds something unreadable).
    pub leader: Option<String>,
    /// The leader's generation.
    pub generation: Option<u64>,
    /// Since when that generation leads (unix seconds, the leader's clock).
    pub since: Option<i64>,
}

/// The cluster lease of this agent (see the module documentation).
pub struct ClusterLease {
    keeper: Arc<LeaseKeeper>,
    member: String,
    ttl: Duration,
    state_dir: PathBuf,
    renewing: OnceLock<AbortOnDrop>,
    /// The generation the last [`ClusterLease::hold`] found this member leading under:
    /// the run it let apply writes under that generation only.
    led: std::sync::Mutex<Option<u64>>,
}

/// The fence the apply engine's Incus driver passes: open when not on a cluster; on a
/// cluster, the lease as [`ClusterLease::hold`] found it at the start of the run
/// (`None`: it did not lead then, and nothing is written).
pub struct ClusterFence(Option<(Arc<LeaseKeeper>, Option<u64>)>);

impl Fence for ClusterFence {
    async fn check(&self, call: &str) -> veza_host::incus::Result<()> {
        match &self.0 {
            Some((keeper, Some(generation))) => keeper.check_pinned(call, *generation).await,
            Some((keeper, None)) => {
                keeper.check(call).await?;
                Err(veza_host::incus::IncusError::Fenced {
                    call: call.to_string(),
                    reason: "this run did not start as the cluster's leader".to_string(),
                })
            }
            None => Ok(()),
        }
    }
}

impl ClusterFence {
    /// Writes `key` of the shared config (the `default` project's; `None` removes it): on
    /// a cluster as the lease's holder that planned this run ([`LeaseKeeper::write_shared`]:
    /// fenced, and never racing this agent's own renewals), else directly.
    pub async fn write_shared(
        &self,
        incus: &veza_host::incus::IncusClient,
        key: &str,
        value: Option<&str>,
    ) -> veza_host::incus::Result<()> {
        match &self.0 {
            Some((keeper, Some(generation))) => keeper.write_shared(key, value, *generation).await,
            Some(_) => self.check(&format!("set {key} in the project's config")).await,
            None => veza_host::incus::set_shared_user_config(incus, key, value).await,
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ClusterLease {
    /// The lease, when the configuration says this host is a cluster member. Its own
    /// client to the same endpoint (call inside the runtime that drives it).
    pub fn new(config: &HostConfig) -> Option<ClusterLease> {
        let cluster = config.cluster.as_ref()?;
        let i = &config.incus;
        let transport = match (&i.endpoint, &i.client_cert, &i.client_key, &i.server_cert) {
            (Some(url), Some(cert), Some(key), Some(server)) => Transport::Https {
                url: url.clone(),
                client_cert: cert.into(),
                client_key: key.into(),
                server_cert: server.into(),
            },
            // Validation requires the endpoint with `cluster`; the socket still works.
            _ => Transport::Unix { socket: config.incus_socket().into() },
        };
        let client = IncusClient::new(transport, veza_host::incus::ClientOptions::default());
        let ttl = cluster.lease_ttl();
        Some(ClusterLease {
            keeper: Arc::new(Keeper::new(client, SystemClock, &cluster.member, ttl)),
            member: cluster.member.clone(),
            ttl,
            state_dir: PathBuf::from(config.state_dir()),
            renewing: OnceLock::new(),
            led: std::sync::Mutex::new(None),
        })
    }

    /// The fence for the apply engine: pinned to the generation the run's
    /// [`ClusterLease::hold`] found.
    pub fn fence(lease: Option<&ClusterLease>) -> ClusterFence {
        ClusterFence(lease.map(|l| (Arc::clone(&l.keeper), *l.led())))
    }

    fn led(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.led.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Looks at the lease (taking or renewing it when due) and says why this agent must
    /// not apply, if so. Starts the renewal task at the first call.
    pub async fn hold(&self) -> Option<String> {
        self.keep_renewing();
        self.keeper.rejoin();
        let standing = self.keeper.step().await;
        self.record(standing.as_ref().ok());
        *self.led() = match &standing {
            Ok(Standing::Leading(l)) => Some(l.generation),
            _ => None,
        };
        match standing {
            Ok(Standing::Leading(l)) => {
                tracing::debug!(generation = l.generation, "cluster: this member leads");
                None
            }
            Ok(Standing::Following { leader, expires_in, lost }) => {
                if lost && leader.as_ref().is_none_or(|l| l.holder != self.member) {
                    tracing::warn!("cluster: this member lost the lease");
                }
                Some(match leader {
                    Some(l) if l.holder == self.member => format!(
                        "standby: another agent writes the cluster lease as this member `{}` \
                         (generation {}, since {}): is `cluster.member` set to the same name on \
                         two hosts? Each member needs its own name; this one applies nothing \
                         while the other renews it",
                        l.holder,
                        l.generation,
                        rfc3339(l.since)
                    ),
                    Some(l) => format!(
                        "standby: cluster member `{}` leads (lease generation {}, since {}); \
                         this member (`{}`) takes over if that lease is not renewed within {} s",
                        l.holder,
                        l.generation,
                        rfc3339(l.since),
                        self.member,
                        expires_in.as_secs().max(1)
                    ),
                    None => format!(
                        "standby: the cluster lease key `{}` holds something that is not a lease; \
                         this member takes it once it stays unchanged for {} s",
                        veza_model::lease::LEASE_KEY,
                        expires_in.as_secs().max(1)
                    ),
                })
            }
            Err(e) => Some(format!(
                "standby: the cluster lease could not be read or written ({e}); applying nothing"
            )),
        }
    }

    /// Gives the lease up while this member must not apply (`why`: suspended, report
    /// mode, stopping), so a standby takes over at its next look rather than after a TTL;
    /// neither this call nor the renewal task takes it again until the next
    /// [`ClusterLease::hold`].
    pub async fn stand_aside(&self, why: &str) {
        *self.led() = None;
        match self.keeper.stand_aside().await {
            Ok(true) => {
                tracing::info!("cluster: gave the lease up ({why}); a standby takes over");
                let aside =
                    Standing::Following { leader: None, expires_in: Duration::ZERO, lost: true };
                self.record(Some(&aside));
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(
                "cluster: could not give the lease up ({why}): {e}; a standby takes over once \
                 it expires"
            ),
        }
    }

    /// Gives the lease up as the daemon stops cleanly, waiting at most one TTL (a call
    /// stuck on an Incus that does not answer: the lease then expires on its own). A
    /// one-shot `apply` keeps the lease it took until its TTL: another member's one-shot
    /// run within that time stands by, so one-shot runs do not take turns.
    pub async fn hand_on(&self, why: &str) {
        if tokio::time::timeout(self.ttl, self.stand_aside(why)).await.is_err() {
            tracing::warn!("cluster: giving the lease up took too long; it expires after its TTL");
        }
    }

    /// What `plan` says, read-only (it never takes or renews the lease): why an apply
    /// now would not apply, when another member holds a lease.
    pub async fn peek(&self) -> Option<String> {
        use veza_host::incus::SharedConfig;
        use veza_model::lease::{LEASE_KEY, Record};
        let read = match self.keeper.store().shared_user_config(LEASE_KEY).await {
            Ok(r) => r,
            Err(e) => return Some(format!("standby: the cluster lease could not be read ({e})")),
        };
        match Record::parse(read.value.as_deref()) {
            Record::Held(l) if l.holder != self.member && !l.released() => Some(format!(
                "standby: cluster member `{}` leads (lease generation {}, since {}, renewed {})",
                l.holder,
                l.generation,
                rfc3339(l.since),
                rfc3339(l.renewed)
            )),
            Record::Unreadable(_) => Some(format!(
                "standby: the cluster lease key `{LEASE_KEY}` holds something that is not a lease"
            )),
            // Free or this member's: an apply would take it.
            _ => None,
        }
    }

    fn keep_renewing(&self) {
        if self.renewing.get().is_some() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let keeper = Arc::downgrade(&self.keeper);
        let every = self.ttl / 3;
        let (state_dir, member) = (self.state_dir.clone(), self.member.clone());
        let task = handle.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(k) = keeper.upgrade() else { return };
                // A standby's look here also takes an expired lease over: the next sync
                // applies without waiting for it.
                match k.step().await {
                    Ok(standing) => record(&state_dir, &member, &standing),
                    Err(e) => tracing::warn!("cluster: lease renewal failed: {e}"),
                }
            }
        });
        let _ = self.renewing.set(AbortOnDrop(task.abort_handle()));
    }

    fn record(&self, standing: Option<&Standing>) {
        if let Some(standing) = standing {
            record(&self.state_dir, &self.member, standing);
        }
    }
}

/// Writes who leads into `cluster.json` (nothing when it did not change).
fn record(state_dir: &Path, member: &str, standing: &Standing) {
    let leader = match standing {
        Standing::Leading(l) => Some(l),
        Standing::Following { leader, .. } => leader.as_ref(),
    };
    let rec = Recorded {
        member: member.to_string(),
        leader: leader.map(|l| l.holder.clone()),
        generation: leader.map(|l| l.generation),
        since: leader.map(|l| l.since),
    };
    let bytes = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    if let Err(e) =
        veza_host::fs::write_atomic_if_changed(&state_dir.join(STANDING_FILE), &bytes, 0o644)
    {
        tracing::warn!("cluster: could not record who leads: {e}");
    }
}

/// Who led at this agent's last look (`cluster.json`), if it recorded one.
pub fn recorded(state_dir: &Path) -> Option<Recorded> {
    let bytes = std::fs::read(state_dir.join(STANDING_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The line `status` prints on a cluster member: who led at this agent's last look.
pub fn status_line(state_dir: &Path) -> Option<String> {
    let r = recorded(state_dir)?;
    Some(match (&r.leader, r.generation, r.since) {
        (Some(leader), Some(g), Some(since)) => format!(
            "cluster:  `{leader}` leads since {} (lease generation {g}); this member: `{}`{}",
            rfc3339(since),
            r.member,
            if *leader == r.member { " (leader, applies)" } else { " (standby: plans only)" }
        ),
        _ => format!(
            "cluster:  no member held the lease at the last look (given up, free or \
             unreadable); this member: `{}` (plans only until it takes the lease)",
            r.member
        ),
    })
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(status_line(dir.path()), None, "not on a cluster: no line");
        let table: Vec<(Recorded, &str)> = vec![
            (
                Recorded {
                    member: "m2".into(),
                    leader: Some("m1".into()),
                    generation: Some(3),
                    since: Some(0),
                },
                "cluster:  `m1` leads since 1970-01-01T00:00:00+00:00 (lease generation 3); this member: `m2` (standby: plans only)",
            ),
            (
                Recorded {
                    member: "m1".into(),
                    leader: Some("m1".into()),
                    generation: Some(3),
                    since: Some(0),
                },
                "cluster:  `m1` leads since 1970-01-01T00:00:00+00:00 (lease generation 3); this member: `m1` (leader, applies)",
            ),
            (
                Recorded { member: "m2".into(), leader: None, generation: None, since: None },
                "cluster:  no member held the lease at the last look (given up, free or unreadable); this member: `m2` (plans only until it takes the lease)",
            ),
        ];
        for (rec, want) in table {
            veza_host::fs::write_atomic_if_changed(
                &dir.path().join(STANDING_FILE),
                &serde_json::to_vec(&rec).expect("json"),
                0o644,
            )
            .expect("write");
            assert_eq!(status_line(dir.path()).as_deref(), Some(want));
        }
    }
}
