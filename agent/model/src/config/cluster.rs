//! The host configuration's `cluster` section: the agent runs on a member of an Incus
//! cluster, beside an agent on every other member, and only the holder of the cluster
//! lease (`veza_model::lease`) applies. Absent: a single host, no lease.

use schemars::JsonSchema;
use serde::Deserialize;

use super::HostConfig;
use crate::manifest::DurationSpec;
use crate::parse::Seg;
use crate::path;

/// Running on a member of an Incus cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This agent's name in the lease: the Incus member it runs on (unique in the
    /// cluster), e.g. `r720-2`.
    pub member: String,
    /// How long a lease lasts without a renewal; a standby takes over once it has seen
    /// the same lease unchanged for this long. Renewed every third of it. Defaults to `30s`.
    #[serde(default)]
    pub lease_ttl: Option<DurationSpec>,
}

/// The default of `cluster.lease_ttl`.
pub const DEFAULT_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl ClusterConfig {
    /// The lease's TTL.
    pub fn lease_ttl(&self) -> std::time::Duration {
        self.lease_ttl.map_or(DEFAULT_LEASE_TTL, DurationSpec::get)
    }
}

/// Whether `name` can be an Incus cluster member's name: 1 to 63 ASCII letters, digits,
/// `-` or `.` (`cluster.member`, a manifest's `target`).
pub fn is_member_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// What is wrong with the `cluster` section, located.
pub(super) fn problems(c: &HostConfig) -> Vec<(Vec<Seg>, String)> {
    let mut out = Vec::new();
    let Some(cl) = &c.cluster else { return out };
    if !is_member_name(&cl.member) {
        out.push((
            path!["cluster", "member"],
            format!(
                "cluster member `{}` must be 1 to 63 ASCII letters, digits, `-` or `.` (the Incus member name)",
                cl.member
            ),
        ));
    }
    let ttl = cl.lease_ttl();
    if ttl < std::time::Duration::from_secs(3) || ttl.subsec_nanos() != 0 {
        out.push((
            path!["cluster", "lease_ttl"],
            "cluster.lease_ttl must be whole seconds, at least 3s".to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::parse_config;
    use crate::config::tests::GOOD;

    #[test]
    fn the_cluster_section() {
        // (section, the lease TTL in seconds, or the error)
        let table: Vec<(&str, Result<u64, &str>)> = vec![
            ("", Err("absent")),
            ("cluster:\n  member: r720-1\n", Ok(30)),
            ("cluster:\n  member: r720-1\n  lease_ttl: 3s\n", Ok(3)),
            ("cluster:\n  member: r720-1\n  lease_ttl: 2s\n", Err("at least 3s")),
            ("cluster:\n  member: r720-1\n  lease_ttl: 3500ms\n", Err("whole seconds")),
            ("cluster:\n  member: r720 1\n", Err("cluster member `r720 1` must be")),
            ("cluster:\n  member: \"\"\n", Err("must be 1 to 63")),
            ("cluster:\n  lease_ttl: 3s\n", Err("member")),
        ];
        for (section, want) in table {
            let got = parse_config(format!("{GOOD}{section}").as_bytes());
            match (got, want) {
                (Ok(c), Ok(secs)) => {
                    let ttl = c.cluster.map(|cl| cl.lease_ttl().as_secs());
                    assert_eq!(ttl, Some(secs), "{section}");
                }
                (Ok(c), Err("absent")) => assert!(c.cluster.is_none()),
                (Err(problems), Err(w)) => {
                    let text: Vec<String> = problems.iter().map(|d| d.message.clone()).collect();
                    assert!(text.iter().any(|m| m.contains(w)), "{section}: {text:?}");
                }
                (got, want) => panic!("{section}: got {:?}, want {want:?}", got.map(|c| c.cluster)),
            }
        }
    }
}
