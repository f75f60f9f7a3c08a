//! The host configuration's feedback keys: where a sync's outcome is reported
//! (`feedback`: a commit status on the forge, a hook) and the PR previews (`previews`:
//! what this host would do with each open PR's head, posted as a commit status on it).

use schemars::JsonSchema;
use serde::Deserialize;

use super::HostConfig;
use crate::manifest::DurationSpec;
use crate::parse::Seg;
use crate::path;

/// Outcome feedback after each sync.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Post a commit status on the handled commit through Forgejo's API.
    #[serde(default)]
    pub forgejo: Option<ForgejoStatusConfig>,
    /// A command run after each outcome (no shell), with `VEZA_OUTCOME`, `VEZA_COMMIT`,
    /// `VEZA_REASON`, `VEZA_HOST` and `VEZA_STATE` in its environment; 30 s at most.
    #[serde(default)]
    pub hook: Option<String>,
}

/// Forgejo's commit status API (`POST /repos/{owner}/{repo}/statuses/{sha}`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgejoStatusConfig {
    /// The API base, e.g. `https://forgejo.example/api/v1`.
    pub api_url: String,
    /// `owner/name` of the manifests repository.
    pub repo: String,
    /// A file holding only a token with write access to commit statuses (mode 0600).
    pub token_file: String,
    /// A CA bundle for the forge's certificate (an internal CA).
    #[serde(default)]
    pub ca_file: Option<String>,
}

/// PR previews: after each sync, the heads of the repository's pull requests
/// (`refs/pull/<N>/head`, as Forgejo exposes them) are fetched, verified with the
/// branch's trust rules (not anti-rollback), planned read-only against live state, and
/// each gets a commit status (context `veza-agent/<host>/preview`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewsConfig {
    /// Turn previews on. Defaults to `false`.
    #[serde(default)]
    pub enabled: bool,
    /// Most PR heads planned per poll (highest PR numbers first). Defaults to 5.
    #[serde(default)]
    pub max_per_poll: Option<usize>,
    /// Time limit of one head's preview (observing live state and planning). Defaults
    /// to `10s`.
    #[serde(default)]
    pub plan_timeout: Option<DurationSpec>,
}

/// The default of `previews.max_per_poll`.
pub const DEFAULT_PREVIEWS_PER_POLL: usize = 5;
/// The default of `previews.plan_timeout`.
pub const DEFAULT_PREVIEW_PLAN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl PreviewsConfig {
    /// Most heads planned per poll.
    pub fn max_per_poll(&self) -> usize {
        self.max_per_poll.unwrap_or(DEFAULT_PREVIEWS_PER_POLL)
    }
    /// Time limit of one head's preview.
    pub fn plan_timeout(&self) -> std::time::Duration {
        self.plan_timeout.map_or(DEFAULT_PREVIEW_PLAN_TIMEOUT, DurationSpec::get)
    }
}

/// What is wrong with the feedback and preview keys, by key path.
pub(super) fn problems(c: &HostConfig) -> Vec<(Vec<Seg>, String)> {
    let mut out = Vec::new();
    let p = &c.previews;
    if p.enabled && c.feedback.forgejo.is_none() {
        out.push((
            path!["previews", "enabled"],
            "previews need `feedback.forgejo`: their results are posted as commit statuses"
                .to_string(),
        ));
    }
    if p.max_per_poll == Some(0) {
        out.push((
            path!["previews", "max_per_poll"],
            "previews.max_per_poll must be at least 1 (turn previews off with `enabled: false`)"
                .to_string(),
        ));
    }
    if p.plan_timeout().is_zero() {
        out.push((
            path!["previews", "plan_timeout"],
            "previews.plan_timeout must be longer than 0s".to_string(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::parse_config;
    use crate::config::tests::GOOD;

    const FORGE: &str = "feedback:\n  forgejo: {api_url: \"https://forge.example/api/v1\", repo: t/m, token_file: /etc/veza-agent/status-token}\n";

    #[test]
    fn previews_are_off_by_default_and_need_the_forge() {
        let c = parse_config(GOOD.as_bytes()).unwrap();
        assert!(!c.previews.enabled);
        assert_eq!(c.previews.max_per_poll(), 5);
        assert_eq!(c.previews.plan_timeout(), Duration::from_secs(10));
        let on = format!(
            "{GOOD}{FORGE}previews: {{enabled: true, max_per_poll: 2, plan_timeout: 3s}}\n"
        );
        let c = parse_config(on.as_bytes()).unwrap();
        assert!(c.previews.enabled);
        assert_eq!(
            (c.previews.max_per_poll(), c.previews.plan_timeout()),
            (2, Duration::from_secs(3))
        );
        // (config after GOOD, the located problem)
        let cases = [
            ("previews: {enabled: true}\n".to_string(), "7:21: previews need `feedback.forgejo`"),
            (
                format!("{FORGE}previews: {{enabled: true, max_per_poll: 0}}\n"),
                "9:41: previews.max_per_poll must be at least 1",
            ),
            (
                format!("{FORGE}previews: {{enabled: true, plan_timeout: 0s}}\n"),
                "9:41: previews.plan_timeout must be longer than 0s",
            ),
            (
                "previews: {enabled: true, every: 1}\n".to_string(),
                "7:27: previews: unknown field `every`",
            ),
        ];
        for (extra, want) in cases {
            let errs = parse_config(format!("{GOOD}{extra}").as_bytes()).unwrap_err();
            let got: Vec<String> =
                errs.iter().map(|d| format!("{}: {}", d.pos, d.message)).collect();
            assert!(got.iter().any(|g| g.starts_with(want)), "wanted {want}, got {got:#?}");
        }
    }
}
