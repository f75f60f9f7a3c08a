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
//! - every leading sync (and `plan`, where this member would apply) adds what the key
//!   holds to its own owed checks, so it plans them again (switch, checks, the fallback if
//!   they fail); a sync writes back what is still owed at its end (the key removed when
//!   nothing is).
//!
//! A standby neither reads nor writes the key. What is shared is only the promotions with
//! a color to go back to: an edge switch with none (a takeover, first traffic) and the
//! record of migrations stay in the member's own state.

use veza_host::incus::SharedConfig;
use veza_state::AgentState;

use super::Agent;
use super::unverified::Owed;

/// The Incus server config key holding, on a cluster, the checks through the edge that
/// `host`'s leader owes (JSON: `env/app` → the color traffic goes back to).
pub fn owed_key(host: &str) -> String {
    format!("user.veza-agent.owed.{host}")
}

/// Adds to `owed` what another agent left owed in the cluster; an app this agent owes
/// itself keeps its own color.
fn merge(owed: &mut Owed, shared: &Owed) {
    for (app, back) in shared {
        owed.entry(app.clone()).or_insert_with(|| back.clone());
    }
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
    /// On a cluster member that leads (or would: `plan`): adds what the cluster's record
    /// holds to `state`'s owed checks, as a sync and `plan` both do so that they agree.
    /// Returns the record as read, to compare with at the sync's end; `None` when this is
    /// no cluster or the record cannot be read (nothing is then written back, so nothing
    /// is lost).
    pub(crate) async fn take_shared_owed(&self, state: &mut AgentState) -> Option<Owed> {
        self.cluster.as_ref()?;
        let key = owed_key(&self.config.host);
        let read = self.incus.shared_user_config(&key).await.map_err(|e| e.to_string());
        match read.and_then(|v| parse(&key, v.value.as_deref())) {
            Ok(shared) => {
                merge(&mut state.unverified, &shared);
                Some(shared)
            }
            Err(e) => {
                tracing::warn!("cluster: reading `{key}`: {e}");
                None
            }
        }
    }

    /// Writes `owed` as the cluster's record (removed when empty), as the lease's holder
    /// that planned this run: a member that does not lead writes nothing. Nothing is
    /// written when the record holds it already.
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
    fn what_another_leader_left_is_added_and_this_agents_own_color_wins() {
        // (own, shared, merged)
        let table = [
            (owed(&[]), owed(&[]), owed(&[])),
            (owed(&[]), owed(&[("prod/web", "blue")]), owed(&[("prod/web", "blue")])),
            (
                owed(&[("prod/api", "green")]),
                owed(&[("prod/web", "blue")]),
                owed(&[("prod/api", "green"), ("prod/web", "blue")]),
            ),
            (
                owed(&[("prod/web", "green")]),
                owed(&[("prod/web", "blue")]),
                owed(&[("prod/web", "green")]),
            ),
        ];
        for (own, shared, want) in table {
            let mut got = own.clone();
            merge(&mut got, &shared);
            assert_eq!(got, want, "own {own:?} + shared {shared:?}");
        }
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
