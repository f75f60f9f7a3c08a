//! The cluster lease's driver: one agent per Incus cluster applies, the holder of
//! `veza_model::lease::LEASE_KEY` in the cluster's shared configuration. [`Keeper::step`]
//! reads the key, asks the pure rules (`veza_model::lease::decide`) and writes what they
//! say by compare-and-swap; [`Keeper`] is also the [`Fence`] that [`Fenced`] (an
//! [`Incus`](crate::incus::Incus) wrapper) passes before every write, so an agent that
//! lost the lease, or could not renew it in time, sends nothing more.
//!
//! A take is read back after [`Keeper::settle`] before it counts: Incus checks `If-Match`
//! before its write transaction, so two takers racing within milliseconds could both be
//! told "done"; the later write is the one that stays, and the earlier taker sees it.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use veza_model::lease::{
    Decision, Held, LEASE_KEY, Lease, Memory, Record, Rules, decide, may_write,
};

use crate::clock::Clock;
use crate::incus::shared::{kept_changing, swap_if_changed};
use crate::incus::{IncusError, Result, SharedConfig, Swap};

mod fenced;

pub use fenced::Fenced;

/// A check that a write may still be sent.
pub trait Fence: Sync {
    /// `Ok` when this agent may write now; the error says why not. `call` names the
    /// write, for the error.
    fn check(&self, call: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Where this agent stands after a look at the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It holds the lease: it applies.
    Leading(Lease),
    /// Another agent holds it (`None`: the key holds something unreadable), or may still.
    Following {
        /// The lease seen.
        leader: Option<Lease>,
        /// When this agent may take over if the leader stays silent.
        expires_in: Duration,
        /// It held the lease until this look.
        lost: bool,
    },
}

impl Standing {
    /// Whether this agent applies.
    pub fn leads(&self) -> bool {
        matches!(self, Standing::Leading(_))
    }
}

/// The lease's driver for one agent (see the module documentation).
pub struct Keeper<S, C> {
    store: S,
    clock: C,
    rules: Rules,
    start: Instant,
    settle: Duration,
    memory: Mutex<Memory>,
    /// Standing aside ([`Keeper::stand_aside`]): a look writes nothing.
    aside: AtomicBool,
    /// One look or release at a time (the renewal task and a sync both look): a look in
    /// flight never races a release.
    turn: tokio::sync::Mutex<()>,
}

/// How many times a step looks again after a swap lost to another write.
const ATTEMPTS: usize = 3;

impl<S: SharedConfig, C: Clock> Keeper<S, C> {
    /// A keeper for the agent named `me`, writing leases of `ttl` (whole seconds).
    pub fn new(store: S, clock: C, me: &str, ttl: Duration) -> Keeper<S, C> {
        let start = clock.now();
        Keeper {
            store,
            clock,
            rules: Rules { me: me.to_string(), ttl_ms: ttl.as_secs().max(1) * 1000 },
            start,
            settle: Duration::from_millis(500),
            memory: Mutex::new(Memory::default()),
            aside: AtomicBool::new(false),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The pause before a take is read back (default 500 ms).
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The shared config the lease lives in.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().saturating_duration_since(self.start).as_millis())
            .unwrap_or(u64::MAX)
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.memory.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One look at the lease: read, decide, and take or renew it when the rules say so.
    pub async fn step(&self) -> Result<Standing> {
        let _turn = self.turn.lock().await;
        for _ in 0..ATTEMPTS {
            let read = self.store.shared_user_config(LEASE_KEY).await?;
            let now = self.now_ms();
            let record = Record::parse(read.value.as_deref());
            if self.aside.load(Ordering::SeqCst) {
                // Standing aside: nothing is written, whoever holds the record leads.
                let mut m = self.memory();
                m.held = None;
                m.saw(read.value.as_deref().unwrap_or(""), now);
                // (This member's own lease, left by a release that failed, leads nothing:
                // it expires.)
                let leader = match record {
                    Record::Held(l) if !l.released() && l.holder != self.rules.me => Some(l),
                    _ => None,
                };
                return Ok(Standing::Following { leader, expires_in: Duration::ZERO, lost: false });
            }
            if let Record::Held(l) = &record {
                let mut m = self.memory();
                m.max_generation = m.max_generation.max(l.generation);
            }
            let decision = {
                let mut m = self.memory();
                m.saw(read.value.as_deref().unwrap_or(""), now);
                decide(&self.rules, &record, &m, now, unix_now())
            };
            let (lease, take) = match decision {
                Decision::Lead => match record {
                    Record::Held(l) => return Ok(Standing::Leading(l)),
                    _ => continue,
                },
                Decision::Follow { leader, expires_in_ms, lost } => {
                    // Another agent writing under this member's name: the generation
                    // held is kept, so the next look follows it again rather than take it
                    // back as this agent's own lease from an earlier run.
                    if leader.as_ref().is_none_or(|l| l.holder != self.rules.me) {
                        self.memory().held = None;
                    }
                    return Ok(Standing::Following {
                        leader,
                        expires_in: Duration::from_millis(expires_in_ms),
                        lost,
                    });
                }
                Decision::Take(l) => (l, true),
                Decision::Renew(l) => (l, false),
            };
            let value = lease.to_value();
            let sent = self.now_ms();
            if take {
                // Until the answer comes: a take that landed although its answer was lost
                // is this agent's own, not another agent's of the same name.
                self.memory().pending = Some(lease.generation);
            }
            let swapped =
                self.store.swap_shared_user_config(LEASE_KEY, Some(&value), &read.etag).await?;
            self.memory().pending = None;
            match swapped {
                // Something else wrote since the read (a rival, or any edit of the
                // project): look again.
                Swap::Changed => continue,
                Swap::Done => {}
            }
            {
                let mut m = self.memory();
                m.held = Some(Held { generation: lease.generation, sent_ms: sent });
                m.saw(&value, self.now_ms());
            }
            if take {
                self.clock.sleep(self.settle).await;
                let back = self.store.shared_user_config(LEASE_KEY).await?;
                if back.value.as_deref() != Some(value.as_str()) {
                    // A rival's write landed after ours: it holds the lease.
                    let mut m = self.memory();
                    m.held = None;
                    m.saw(back.value.as_deref().unwrap_or(""), self.now_ms());
                    continue;
                }
            }
            return Ok(Standing::Leading(lease));
        }
        Err(kept_changing(LEASE_KEY, ATTEMPTS as u32))
    }

    /// Stands aside while this agent must not apply (suspended, report mode, stopping):
    /// gives the lease up ([`Keeper::release`]) and, until [`Keeper::rejoin`], no look
    /// renews or takes it (a look in flight finishes first: looks and releases take
    /// turns). Returns whether a lease was given up.
    pub async fn stand_aside(&self) -> Result<bool> {
        self.aside.store(true, Ordering::SeqCst);
        self.release().await
    }

    /// Ends [`Keeper::stand_aside`]: the next look takes or renews the lease as usual.
    pub fn rejoin(&self) {
        self.aside.store(false, Ordering::SeqCst);
    }

    /// Gives the lease up if this agent holds it, so a standby takes over at its next look
    /// instead of after a TTL: the record is kept with a TTL of 0 ([`Lease::given_up`]),
    /// so the next take raises the generation (deleting the key would let generations
    /// start again at 1, and a stale run's pinned generation come back). Returns whether
    /// it was given up.
    pub async fn release(&self) -> Result<bool> {
        let _turn = self.turn.lock().await;
        // Holding nothing (a member that stays aside, sync after sync): nothing to ask.
        let Some(held) = self.memory().held.take() else { return Ok(false) };
        for _ in 0..ATTEMPTS {
            let read = self.store.shared_user_config(LEASE_KEY).await?;
            let lease = match Record::parse(read.value.as_deref()) {
                Record::Held(l)
                    if l.holder == self.rules.me
                        && l.generation == held.generation
                        && !l.released() =>
                {
                    l
                }
                _ => return Ok(false),
            };
            let value = lease.given_up(unix_now()).to_value();
            match self.store.swap_shared_user_config(LEASE_KEY, Some(&value), &read.etag).await? {
                Swap::Done => return Ok(true),
                // Another edit of the project's config came between: look again.
                Swap::Changed => continue,
            }
        }
        Err(kept_changing(LEASE_KEY, ATTEMPTS as u32))
    }
}

impl<S: SharedConfig, C: Clock> Keeper<S, C> {
    /// The generation of the lease this agent holds, as its last look left it.
    pub fn held_generation(&self) -> Option<u64> {
        self.memory().held.map(|h| h.generation)
    }

    /// The fence's check, returning the generation this agent may write as.
    async fn may_write_now(&self, call: &str) -> Result<u64> {
        self.may_write_versioned(call).await.map(|(generation, _)| generation)
    }

    /// [`Keeper::may_write_now`], with the ETag of the config the lease was read from.
    async fn may_write_versioned(&self, call: &str) -> Result<(u64, String)> {
        let read = self.store.shared_user_config(LEASE_KEY).await?;
        let record = Record::parse(read.value.as_deref());
        let held = self.memory().held;
        let generation = may_write(&self.rules, &record, held, self.now_ms())
            .map_err(|reason| IncusError::Fenced { call: call.to_string(), reason })?;
        Ok((generation, read.etag))
    }

    /// Writes `key` of the shared config (`None` removes it) as the holder of lease
    /// generation `pinned`, in one compare-and-swap with the fence's own read: the lease
    /// and the key are read (one project, one ETag), the fence decided on that lease
    /// ([`Keeper::check_pinned`]'s rule), and the write sent with that ETag, so a lease
    /// taken by another member since is seen (the swap is refused, the fence read again).
    /// Under the lease's turn: no renewal of this agent's comes between. Nothing is
    /// written when the key holds `value` already.
    pub async fn write_shared(&self, key: &str, value: Option<&str>, pinned: u64) -> Result<()> {
        let _turn = self.turn.lock().await;
        let call = format!("set {key} in the project's config");
        for _ in 0..ATTEMPTS {
            let etag = self.may_write_pinned(&call, pinned).await?;
            let read = self.store.shared_user_config(key).await?;
            // Edited between the two reads: look again.
            if read.etag == etag
                && swap_if_changed(&self.store, key, value, &read).await? == Swap::Done
            {
                return Ok(());
            }
        }
        Err(kept_changing(key, ATTEMPTS as u32))
    }

    /// [`Fence::check`], and only under the lease generation `pinned` (the one a run
    /// planned under): a lease lost and taken again while the run went on (its renewal
    /// lapsed, and another member may have applied in between) passes the plain check,
    /// but the run's plan is stale and its writes are not sent.
    pub async fn check_pinned(&self, call: &str, pinned: u64) -> Result<()> {
        self.may_write_pinned(call, pinned).await.map(drop)
    }

    /// [`Keeper::check_pinned`], returning the ETag of the config the lease was read from.
    async fn may_write_pinned(&self, call: &str, pinned: u64) -> Result<String> {
        let (generation, etag) = self.may_write_versioned(call).await?;
        if generation == pinned {
            return Ok(etag);
        }
        Err(IncusError::Fenced {
            call: call.to_string(),
            reason: format!(
                "this run planned under cluster lease generation {pinned}, and this agent now \
                 holds generation {generation} (the lease lapsed and was taken again: another \
                 member may have applied in between); the next sync plans again"
            ),
        })
    }
}

impl<S: SharedConfig, C: Clock> Fence for Keeper<S, C> {
    async fn check(&self, call: &str) -> Result<()> {
        self.may_write_now(call).await.map(drop)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
