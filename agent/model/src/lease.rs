//! The cluster lease: which one of the agents running on an Incus cluster's members
//! applies. The lease is one key of the cluster's own configuration
//! ([`LEASE_KEY`], in the `default` project's config: cluster-wide, read from the cluster
//! database, written with `If-Match` on the project's ETag). This module is the record's
//! format and the decision rules, pure: the caller passes what it read, what it remembers
//! and the time (milliseconds of its own monotonic clock); the IO is
//! `veza_host::lease`.
//!
//! Expiry never compares clocks of different machines: a standby counts a lease as
//! expired only once it has seen the *same* record, unchanged, for the record's whole TTL
//! on its own clock; the holder counts its lease from the moment it *sent* its last
//! successful write, so it always gives up before any standby may take over.

use serde::{Deserialize, Serialize};

/// The key of the `default` project's config that holds the lease.
pub const LEASE_KEY: &str = "user.veza-agent.lease";

/// What the lease key holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The holding agent: its `cluster.member` name.
    pub holder: String,
    /// Raised by every take (never by a renewal): the fencing token.
    pub generation: u64,
    /// Raised by every renewal: a standby sees the holder is alive when it changes.
    pub beat: u64,
    /// When this generation was taken (unix seconds, the holder's clock; for `status`).
    pub since: i64,
    /// When it was last renewed (unix seconds, the holder's clock; for `status`).
    pub renewed: i64,
    /// How long the holder promises to renew within, in seconds.
    pub ttl_s: u64,
}

impl Lease {
    /// The key's value.
    pub fn to_value(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether its holder gave it up (a TTL of 0): anyone may take it at once. The key is
    /// kept, not deleted, so the next take raises the generation: a run that planned under
    /// an earlier one never finds its generation current again.
    pub fn released(&self) -> bool {
        self.ttl_s == 0
    }

    /// This lease given up at `now_unix`.
    pub fn given_up(&self, now_unix: i64) -> Lease {
        Lease { beat: self.beat + 1, renewed: now_unix, ttl_s: 0, ..self.clone() }
    }
}

/// What the lease key was found to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// No key (or an empty one): nobody holds the lease.
    Free,
    /// A lease.
    Held(Lease),
    /// Something that is not a lease (an operator's edit, a newer agent's format): left
    /// alone until it has stayed unchanged for a whole TTL.
    Unreadable(String),
}

impl Record {
    /// Reads the key's value (`None`: no key).
    pub fn parse(value: Option<&str>) -> Record {
        match value.map(str::trim) {
            None | Some("") => Record::Free,
            Some(v) => match serde_json::from_str::<Lease>(v) {
                Ok(l) => Record::Held(l),
                Err(_) => Record::Unreadable(v.to_string()),
            },
        }
    }
}

/// The lease this agent holds, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The generation it took.
    pub generation: u64,
    /// When its last successful write was sent (its own monotonic clock, ms).
    pub sent_ms: u64,
}

/// What an agent remembers between two looks at the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The key's value last read, and since when (monotonic ms) it has been seen unchanged.
    pub seen: Option<(String, u64)>,
    /// The lease this agent holds.
    pub held: Option<Held>,
    /// The generation of a take this agent sent and has no answer for (the swap failed
    /// in transit, and may have landed): a record of it is this agent's, not another
    /// agent's of the same name.
    pub pending: Option<u64>,
    /// The highest generation seen in the key: a take goes above it even after the key
    /// was deleted or overwritten by hand.
    pub max_generation: u64,
}

impl Memory {
    /// Remembers a read of the key at `now_ms`: the time a value was first seen is kept
    /// while it stays the same.
    pub fn saw(&mut self, value: &str, now_ms: u64) {
        if self.seen.as_ref().is_none_or(|(v, _)| v != value) {
            self.seen = Some((value.to_string(), now_ms));
        }
    }

    /// How long (ms) `value` has been seen unchanged at `now_ms` (0 if it was not the
    /// last value seen).
    fn unchanged_for(&self, value: &str, now_ms: u64) -> u64 {
        match &self.seen {
            Some((v, since)) if v == value => now_ms.saturating_sub(*since),
            _ => 0,
        }
    }
}

/// This agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Its `cluster.member` name.
    pub me: String,
    /// The TTL it writes into its leases (ms; a multiple of 1000).
    pub ttl_ms: u64,
}

impl Rules {
    /// A renewal is due once a third of the TTL has passed since the last write.
    pub fn renew_after_ms(&self) -> u64 {
        self.ttl_ms / 3
    }
}

/// What to do after a look at the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this lease over the record just read (compare-and-swap on its ETag): free,
    /// expired, or this member's own from an earlier run.
    Take(Lease),
    /// Write this renewal (same generation, next beat), compare-and-swap.
    Renew(Lease),
    /// This agent leads; its lease is fresh: nothing to write.
    Lead,
    /// Another agent leads, or may still: apply nothing. `lost`: this agent held the
    /// lease until this look.
    Follow {
        /// Who holds it (`None`: the record is unreadable).
        leader: Option<Lease>,
        /// When, on this agent's clock, it may take the lease over if nothing changes.
        expires_in_ms: u64,
        /// This agent believed it led.
        lost: bool,
    },
}

/// The decision rules. `now_ms`: this agent's monotonic clock; `now_unix`: wall time, only
/// written into the record for humans. `memory` must already hold this read
/// ([`Memory::saw`]).
pub fn decide(
    rules: &Rules,
    record: &Record,
    memory: &Memory,
    now_ms: u64,
    now_unix: i64,
) -> Decision {
    // A take raises the generation above any seen or held: never one used before.
    let next = |seen: u64| {
        seen.max(memory.held.map_or(0, |h| h.generation)).max(memory.max_generation) + 1
    };
    let fresh = |generation: u64, since: i64| Lease {
        holder: rules.me.clone(),
        generation,
        beat: 0,
        since,
        renewed: now_unix,
        ttl_s: rules.ttl_ms / 1000,
    };
    // Another holder's lease: followed until it stays unchanged for its whole TTL.
    let follow = |l: &Lease| {
        let ttl = l.ttl_s.saturating_mul(1000);
        let waited = memory.unchanged_for(&l.to_value(), now_ms);
        if waited >= ttl {
            Decision::Take(fresh(next(l.generation), now_unix))
        } else {
            Decision::Follow {
                leader: Some(l.clone()),
                expires_in_ms: ttl - waited,
                lost: memory.held.is_some(),
            }
        }
    };
    match record {
        Record::Free => Decision::Take(fresh(next(0), now_unix)),
        // Given up by its holder (this member's too): taken at once.
        Record::Held(l) if l.released() => Decision::Take(fresh(next(l.generation), now_unix)),
        Record::Held(l) if l.holder == rules.me => match memory.held {
            Some(h) if h.generation == l.generation => {
                let age = now_ms.saturating_sub(h.sent_ms);
                if age >= rules.ttl_ms {
                    // Not renewed in time: a standby may be taking it over right now.
                    // Take a new generation (the swap fails if one already wrote).
                    Decision::Take(fresh(next(l.generation), now_unix))
                } else if age >= rules.renew_after_ms() {
                    Decision::Renew(Lease { beat: l.beat + 1, renewed: now_unix, ..l.clone() })
                } else {
                    Decision::Lead
                }
            }
            // A newer generation under this member's name than the one this agent holds:
            // another agent writes as this member (`cluster.member` set alike on two
            // hosts). Taking it back each look would make both apply in turn: it is
            // followed as another holder's (the operator is told, see `hold`).
            // (Unless it is this agent's own take whose answer was lost.)
            Some(h) if l.generation > h.generation && memory.pending != Some(l.generation) => {
                follow(l)
            }
            // This member's lease from an earlier run of the agent (one agent per
            // member: the host lock), or its own take whose answer was lost: a new
            // generation fences whatever the old one began.
            _ => Decision::Take(fresh(next(l.generation), now_unix)),
        },
        Record::Held(l) => follow(l),
        Record::Unreadable(raw) => {
            let waited = memory.unchanged_for(raw, now_ms);
            if waited >= rules.ttl_ms {
                Decision::Take(fresh(next(0), now_unix))
            } else {
                Decision::Follow {
                    leader: None,
                    expires_in_ms: rules.ttl_ms - waited,
                    lost: memory.held.is_some(),
                }
            }
        }
    }
}

/// Whether `holder` may still write as the holder of `generation` at `now_ms` (the fence
/// every mutating step passes): the record read just now names it with that generation,
/// and its own lease, counted from its last write, has not run out.
pub fn may_write(
    rules: &Rules,
    record: &Record,
    held: Option<Held>,
    now_ms: u64,
) -> Result<u64, String> {
    let Some(h) = held else {
        return Err("this agent does not hold the cluster lease".to_string());
    };
    match record {
        Record::Held(l) if l.released() => {
            return Err(format!(
                "the cluster lease was given up by `{}` (generation {}); this agent held generation {}",
                l.holder, l.generation, h.generation
            ));
        }
        Record::Held(l) if l.holder == rules.me && l.generation == h.generation => {}
        Record::Held(l) => {
            return Err(format!(
                "the cluster lease is now held by `{}` (generation {}), not by `{}` (generation {})",
                l.holder, l.generation, rules.me, h.generation
            ));
        }
        Record::Free => {
            return Err(format!(
                "the cluster lease was released (`{LEASE_KEY}` is gone); this agent held generation {}",
                h.generation
            ));
        }
        Record::Unreadable(raw) => {
            return Err(format!("the cluster lease key holds `{raw}`, not this agent's lease"));
        }
    }
    let age = now_ms.saturating_sub(h.sent_ms);
    if age >= rules.ttl_ms {
        return Err(format!(
            "this agent's cluster lease (generation {}) was last renewed {} ms ago, past its TTL of {} ms",
            h.generation, age, rules.ttl_ms
        ));
    }
    Ok(h.generation)
}

#[cfg(test)]
mod tests;
