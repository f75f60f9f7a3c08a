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
//!   they fail), and writes back what is still owed at its end when that changed (`{}` when
//!   nothing is: a missing key means no leader wrote one yet). A run whose record cannot
//!   be written before its switch does not run, and a sync that cannot read it fails: the
//!   record is the truth, and an entry of a member's own that it no longer holds was
//!   checked since.
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

/// The key's value as read: `None` when no leader wrote it yet (no key; a leader that
/// owes nothing writes `{}`); a value that is not the agent's JSON is an error naming the
/// key.
fn parse(key: &str, value: Option<&str>) -> Result<Option<Owed>, String> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => serde_json::from_str(v).map(Some).map_err(|e| {
            format!(
                "the cluster's record of owed checks `{key}` is not the agent's ({e}): nothing \
                 is applied until it is fixed or removed (`incus project unset default {key}`: \
                 the checks it named are then not made again)"
            )
        }),
    }
}

/// What a leader owes once it read the cluster's `record`: the record, which is the truth
/// (every leader writes it before its switch, and a run whose record cannot be written
/// does not switch); this member's `own` entries only while no leader wrote a record yet
/// (an upgrade, or `cluster:` newly added). A commit whose checks failed in this member's
/// killed run (`checks_failed`) stays quarantine-bound only while the record still holds
/// every check that run owed: one it no longer holds was settled by another leader since.
fn settle_with(own: &Owed, record: Option<&Owed>, checks_failed: &mut Option<String>) -> Owed {
    let Some(record) = record else { return own.clone() };
    if own.iter().any(|(app, back)| record.get(app) != Some(back)) {
        *checks_failed = None;
    }
    record.clone()
}

impl Agent {
    /// On a cluster member that leads (or would: `plan`): `state`'s owed checks become
    /// what the cluster's record says ([`settle_with`]), as a sync and `plan` both do, so
    /// that they agree. Returns what the record held (`{}` when no leader wrote one yet),
    /// to compare with at the sync's end, or `None` when this is no cluster; `Err`
    /// (the sync fails, nothing is applied or written) when the record cannot be read.
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
        let record = parse(&key, read.value.as_deref())?;
        state.unverified =
            settle_with(&state.unverified, record.as_ref(), &mut state.checks_failed);
        Ok(Some(record.unwrap_or_default()))
    }

    /// Writes `owed` as the cluster's record (`{}` when empty), as the lease's holder
    /// that planned this run, in one compare-and-swap with the lease's read
    /// ([`veza_host::lease::Keeper::write_shared`]): a member that does not lead writes
    /// nothing. Nothing is written when the record holds it already.
    pub(super) async fn share_owed(&self, owed: &Owed) -> Result<(), String> {
        let key = owed_key(&self.config.host);
        let value = serde_json::to_string(owed).map_err(|e| e.to_string())?;
        let fence = crate::cluster::ClusterLease::fence(self.cluster.as_ref());
        fence
            .write_shared(&self.incus, &key, Some(&value))
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
        assert_eq!(parse(&key, None), Ok(None), "no leader wrote it yet");
        assert_eq!(parse(&key, Some("")), Ok(None));
        assert_eq!(parse(&key, Some("{}")), Ok(Some(Owed::new())), "nothing owed");
        let written = serde_json::to_string(&owed(&[("prod/web", "blue")])).expect("json");
        assert_eq!(written, r#"{"prod/web":"blue"}"#);
        assert_eq!(parse(&key, Some(&written)), Ok(Some(owed(&[("prod/web", "blue")]))));
        let e = parse(&key, Some("prod/web=blue")).expect_err("not JSON");
        assert!(e.contains("`user.veza-agent.owed.r720` is not the agent's"), "{e}");
        assert!(e.contains("incus project unset default user.veza-agent.owed.r720"), "{e}");
    }

    /// The record is the truth once a leader wrote one; this member's own entries count
    /// only before; a killed run's failed checks stay quarantine-bound only while the
    /// record still holds what that run owed.
    #[test]
    fn a_leader_owes_what_the_record_says_once_there_is_one() {
        let (web, api, none) =
            (owed(&[("prod/web", "blue")]), owed(&[("prod/api", "green")]), owed(&[]));
        // (what, own, record, owed, checks_failed kept)
        let table = [
            ("no record yet: its own", &web, None, &web, true),
            ("the record, with its own", &web, Some(&web), &web, true),
            ("settled by another leader", &web, Some(&none), &none, false),
            ("another leader's", &none, Some(&api), &api, true),
            ("its own settled, another owed", &web, Some(&api), &api, false),
        ];
        for (what, own, record, want, kept) in table {
            let mut failed = Some("c".to_string());
            assert_eq!(settle_with(own, record, &mut failed), *want, "{what}");
            assert_eq!(failed.is_some(), kept, "{what}");
        }
    }
}
