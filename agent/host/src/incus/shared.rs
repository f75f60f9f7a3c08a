//! The cluster's shared configuration: `user.*` keys of the `default` project's config,
//! read with the project's ETag and written by compare-and-swap (`PUT` with `If-Match`).
//!
//! Why the project and not the server config (`/1.0`): on an Incus cluster both hold
//! cluster-wide `user.*` keys, but a project is read from the cluster database on every
//! `GET`, and its ETag is checked against that read, while `/1.0` answers from each
//! member's in-memory copy (refreshed by notifications) and carries member-local keys in
//! its ETag. Verified on Incus 6.0.4 with `tests/host/cluster`: a write through one
//! member is seen at once through the others, and a `PUT` with a stale `If-Match` through
//! any member is refused with HTTP 412.
//!
//! Incus checks `If-Match` before it opens its write transaction, not inside it: two
//! writers racing within the same few milliseconds can both pass the check. The lease
//! (`crate::lease`) therefore reads its take back after a pause before it acts on it.

use std::future::Future;

use super::{IncusError, ResourceKind, Result};

/// A key's value and the ETag of the config it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value (`None`: no such key).
    pub value: Option<String>,
    /// The ETag to send back with a swap.
    pub etag: String,
}

/// How a compare-and-swap ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// Written.
    Done,
    /// The config changed since it was read (ETag mismatch, HTTP 412): nothing written.
    Changed,
}

/// Cluster-wide `user.*` keys with compare-and-swap.
pub trait SharedConfig: Sync {
    /// Reads `key` (a `user.*` key) and the ETag of the config holding it.
    fn shared_user_config(&self, key: &str) -> impl Future<Output = Result<Versioned>> + Send;

    /// Sets (or with `None` removes) `key` if the config's ETag is still `etag`; every
    /// other key is sent back as it was read.
    fn swap_shared_user_config(
        &self,
        key: &str,
        value: Option<&str>,
        etag: &str,
    ) -> impl Future<Output = Result<Swap>> + Send;
}

impl<T: SharedConfig> SharedConfig for &T {
    fn shared_user_config(&self, key: &str) -> impl Future<Output = Result<Versioned>> + Send {
        (**self).shared_user_config(key)
    }

    fn swap_shared_user_config(
        &self,
        key: &str,
        value: Option<&str>,
        etag: &str,
    ) -> impl Future<Output = Result<Swap>> + Send {
        (**self).swap_shared_user_config(key, value, etag)
    }
}

/// How many compare-and-swaps [`set_shared_user_config`] tries before it gives up.
const ATTEMPTS: u32 = 5;

/// Sets (or with `None` removes) `key` in the shared config, reading it first: nothing is
/// written when it already holds `value`, and another edit of the config between the read
/// and the write (the lease's renewals, another key) is read again and retried.
pub async fn set_shared_user_config(
    store: &impl SharedConfig,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    for _ in 0..ATTEMPTS {
        let read = store.shared_user_config(key).await?;
        if swap_if_changed(store, key, value, &read).await? == Swap::Done {
            return Ok(());
        }
    }
    Err(kept_changing(key, ATTEMPTS))
}

/// One compare-and-swap of `key` to `value` against `read` (its value and the config's
/// ETag): `Done` without a write when it holds `value` already.
pub(crate) async fn swap_if_changed(
    store: &impl SharedConfig,
    key: &str,
    value: Option<&str>,
    read: &Versioned,
) -> Result<Swap> {
    if read.value.as_deref() == value {
        return Ok(Swap::Done);
    }
    store.swap_shared_user_config(key, value, &read.etag).await
}

/// `key` could not be written in `attempts` compare-and-swaps: the config kept changing.
pub(crate) fn kept_changing(key: &str, attempts: u32) -> IncusError {
    IncusError::Conflict { kind: ResourceKind::SharedConfig, name: key.to_string(), attempts }
}
