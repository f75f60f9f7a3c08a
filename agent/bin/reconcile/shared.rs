//! On a cluster, the checks through the edge a leader owes outlive it. A member's agent
//! keeps what it owes in its own state and journal; when its member dies between a
//! switch and the switch's checks, the next leader (another member's agent) would find
//! the edge routing to a color nobody checked and plan nothing. So, on a cluster:
//!
//! - before a run whose plan switches traffic from a color, the leader writes into the
//!   shared config (`user.veza-agent.owed.<host>` in the `default` project's, beside the
//!   lease and the anti-rollback mark) what it owes and every app the switch moves from a
//!   color, with that color ([`super::unverified::before_run`]). An app whose switch never
//!   happened owes nothing: the next leader finds the edge still on the color it goes
//!   back to ([`super::unverified::still_owed`]);
//! - every leading sync (and `plan`, where this member would apply) takes what the key
//!   holds as its owed checks, so it plans them again (switch, checks, the fallback if
//!   they fail), and writes back what is still owed at its end when that changed (the key
//!   removed when nothing is). A run whose record cannot be written before its switch
//!   does not run, and a sync that cannot read it applies nothing: the record is the
//!   truth, and an entry of a member's own that it no longer holds was checked since.
//!
//! A standby neither reads nor writes the key. What is shared is only the promotions with
//! a color to go back to: an edge switch with none (a takeover, first traffic) and the
//! record of migrations stay in the member's own state.

use veza_host::incus::SharedConfig;
use veza_state::AgentState;

use super::Agent;
use super::unverified::Owed;

/// The key of the `default` project's config holding, on a cluster, the checks through the edge that
/// `host`'s leader owes (JSON: `env/app` → the color traffic goes back to).
pub fn owed_key(host: &str) -> String {
    format!("user.veza-agent.owed.{host}")
}

/// The key's value as read: `None` (no key) is nothing owed; a value that is not the
/// agent's JSON is an error naming the key.
fn parse(key: &str, value: Option<&str>) -> Result<Owed, String> {
    match value {
        None | Some("") => Ok(Owed::new()),
        Some(v) => serde_json::from_str(v).map_err(|e| {
            format!(
                "the cluster's record of owed checks `{key}` is not the agent's ({e}): fix or \
                 remove it (`incus project unset default {key}`); the checks it named are not re-run"
            )
        }),
    }
}

impl Agent {
    /// On a cluster member that leads (or would: `plan`): the cluster's record becomes
    /// `state`'s owed checks (the record is the truth: every leader writes it before its
    /// switch, and a run whose record cannot be written does not switch; an entry of this
    /// member's own that the record no longer holds was checked by a leader since), as a
    /// sync and `plan` both do, so that they agree. Returns the record as read, to compare
    /// with at the sync's end, or `None` when this is no cluster; `Err` (nothing is then
    /// applied, and nothing written) when the record cannot be read.
    pub(crate) async fn take_shared_owed(
        &self,
        state: &mut AgentState,
    ) -> Result<Option<Owed>, String> {
        if self.cluster.is_none() {
            return Ok(None);
        }
        let key = owed_key(&self.config.host);
        let read =
            self.incus.shared_user_config(&key).await.map_err(|e| {
                format!("cannot read the cluster's record of owed checks `{key}`: {e}")
            })?;
        let shared = parse(&key, read.value.as_deref())?;
        state.unverified.clone_from(&shared);
        Ok(Some(shared))
    }

    /// Writes `owed` as the cluster's record (removed when empty), as the lease's holder
    /// that planned this run, in one compare-and-swap with the lease's read
    /// ([`veza_host::lease::Keeper::write_shared`]): a member that does not lead writes
    /// nothing. Nothing is written when the record holds it already.
    pub(super) async fn share_owed(&self, owed: &Owed) -> Result<(), String> {
        let key = owed_key(&self.config.host);
        let value = match owed.is_empty() {
            true => None,
            false => Some(serde_json::to_string(owed).map_err(|e| e.to_string())?),
        };
        let fence = crate::cluster::ClusterLease::fence(self.cluster.as_ref());
        fence
            .write_shared(&self.incus, &key, value.as_deref())
            .await
            .map_err(|e| format!("writing the cluster's record of owed checks `{key}`: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(pairs: &[(&str, &str)]) -> Owed {
        pairs.iter().map(|(a, c)| (a.to_string(), c.to_string())).collect()
    }

    #[test]
    fn the_record_is_json_and_anything_else_is_refused_by_name() {
        let key = owed_key("r720");
        assert_eq!(key, "user.veza-agent.owed.r720");
        assert_eq!(parse(&key, None), Ok(Owed::new()));
        assert_eq!(parse(&key, Some("")), Ok(Owed::new()));
        let written = serde_json::to_string(&owed(&[("prod/web", "blue")])).expect("json");
        assert_eq!(written, r#"{"prod/web":"blue"}"#);
        assert_eq!(parse(&key, Some(&written)), Ok(owed(&[("prod/web", "blue")])));
        let e = parse(&key, Some("prod/web=blue")).expect_err("not JSON");
        assert!(e.contains("`user.veza-agent.owed.r720` is not the agent's"), "{e}");
        assert!(e.contains("incus project unset default user.veza-agent.owed.r720"), "{e}");
    }
}
