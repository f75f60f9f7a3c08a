//! Outcome feedback on the forge: a commit status posted through Forgejo's API
//! (`POST {api}/repos/{owner}/{repo}/statuses/{sha}`, body `CreateStatusOption`:
//! `context`, `description`, `state`, `target_url`; header `Authorization: token …`).
//!
//! The request goes through `curl` with its whole configuration on stdin (`--config -`):
//! the token is never on a command line. Errors never carry the token.

use std::time::Duration;

use crate::process::Cmd;

/// The states Forgejo accepts (`CommitStatusState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    /// In progress, or planned and held (suspended, report mode).
    Pending,
    /// Applied, or already in sync.
    Success,
    /// Rejected, rolled back.
    Failure,
    /// The sync failed for a reason that is not the commit's.
    Error,
}

impl StatusState {
    /// The name Forgejo uses (what the JSON carries).
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }

    /// The state named `name` ([`StatusState::as_str`]); anything else is `Error`.
    pub fn named(name: &str) -> StatusState {
        [StatusState::Pending, StatusState::Success, StatusState::Failure]
            .into_iter()
            .find(|s| s.as_str() == name)
            .unwrap_or(StatusState::Error)
    }
}

/// One status to post.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitStatus {
    /// The commit (40 hex).
    pub sha: String,
    /// `success`, `failure`, …
    pub state: StatusState,
    /// `veza-agent/<host>`.
    pub context: String,
    /// One line, at most [`MAX_DESCRIPTION`] characters.
    pub description: String,
}

/// Longest description sent (longer ones are cut with `…`).
pub const MAX_DESCRIPTION: usize = 140;

/// Why a status was not posted. Never holds the token.
#[derive(Debug, thiserror::Error)]
#[error("posting the commit status for {sha} to {url} failed: {why}")]
pub struct ForgeError {
    /// The commit.
    pub sha: String,
    /// Where.
    pub url: String,
    /// What went wrong.
    pub why: String,
}

/// A Forgejo commit status client.
#[derive(Debug, Clone)]
pub struct StatusClient {
    /// API base without a trailing slash.
    pub api_url: String,
    /// `owner/name`.
    pub repo: String,
    /// The token.
    pub token: String,
    /// CA bundle.
    pub ca_file: Option<String>,
    /// Time limit of one request.
    pub timeout: Duration,
}

/// A value inside a double-quoted curl config string.
fn curl_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `description` on one line, cut to [`MAX_DESCRIPTION`] characters.
pub fn one_line(description: &str) -> String {
    let flat: String = description.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX_DESCRIPTION {
        return flat;
    }
    let mut cut: String = flat.chars().take(MAX_DESCRIPTION - 1).collect();
    cut.push('…');
    cut
}

impl StatusClient {
    /// The request's URL.
    pub fn url(&self, sha: &str) -> String {
        format!("{}/repos/{}/statuses/{sha}", self.api_url.trim_end_matches('/'), self.repo)
    }

    /// The curl configuration (stdin) for `status`. Pure.
    pub fn curl_config(&self, status: &CommitStatus) -> String {
        let body = serde_json::json!({
            "context": status.context,
            "description": one_line(&status.description),
            "state": status.state,
        })
        .to_string();
        let mut c = String::new();
        c.push_str(&format!("url = {}\n", curl_quote(&self.url(&status.sha))));
        c.push_str("request = \"POST\"\n");
        c.push_str(&format!(
            "header = {}\n",
            curl_quote(&format!("Authorization: token {}", self.token))
        ));
        c.push_str("header = \"Content-Type: application/json\"\n");
        c.push_str("header = \"Accept: application/json\"\n");
        c.push_str(&format!("data-binary = {}\n", curl_quote(&body)));
        if let Some(ca) = &self.ca_file {
            c.push_str(&format!("cacert = {}\n", curl_quote(ca)));
        }
        c
    }

    /// Posts `status`; Forgejo answers `201 Created`.
    pub fn post(&self, status: &CommitStatus) -> Result<(), ForgeError> {
        let url = self.url(&status.sha);
        let err = |why: String| ForgeError {
            sha: status.sha.clone(),
            url: url.clone(),
            why: why.replace(&self.token, "***"),
        };
        if !(url.starts_with("https://") || veza_model::config::is_loopback_url(&url)) {
            return Err(err("the API must be https:// (plain http only to loopback): the token would travel in clear text".into()));
        }
        let secs = self.timeout.as_secs().max(1).to_string();
        let out = Cmd::new("curl")
            .args(["--silent", "--show-error", "--proto", "=https,http", "--max-time", &secs])
            .args(["--output", "/dev/null", "--write-out", "%{http_code}", "--config", "-"])
            .stdin(self.curl_config(status))
            .timeout(self.timeout + Duration::from_secs(5))
            .output()
            .map_err(|e| err(e.to_string()))?;
        let code = out.stdout_str();
        if !out.status.success() {
            return Err(err(format!("curl: {}", out.stderr_str().trim())));
        }
        match code.trim() {
            "201" | "200" => Ok(()),
            other => Err(err(format!("the forge answered HTTP {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> StatusClient {
        StatusClient {
            api_url: "https://forge.example/api/v1/".into(),
            repo: "talas/manifests".into(),
            token: "t0k\"en".into(),
            ca_file: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_request_is_forgejos_create_status_with_the_token_in_a_header_only() {
        let status = CommitStatus {
            sha: "a".repeat(40),
            state: StatusState::Failure,
            context: "veza-agent/r720".into(),
            description: "rolled back: prod/web on green: /health answered 503;\ntraffic went back"
                .into(),
        };
        let c = client().curl_config(&status);
        assert!(
            c.starts_with(&format!(
                "url = \"https://forge.example/api/v1/repos/talas/manifests/statuses/{}\"\n",
                "a".repeat(40)
            )),
            "{c}"
        );
        assert!(c.contains("request = \"POST\"\n"));
        assert!(c.contains("header = \"Authorization: token t0k\\\"en\"\n"), "{c}");
        assert!(c.contains(r#"data-binary = "{\"context\":\"veza-agent/r720\",\"description\":\"rolled back: prod/web on green: /health answered 503; traffic went back\",\"state\":\"failure\"}""#), "{c}");
    }

    #[test]
    fn descriptions_are_one_line_and_bounded() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        let long = "x".repeat(500);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), MAX_DESCRIPTION);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_plain_http_api_off_loopback_is_refused_before_anything_is_sent() {
        let mut c = client();
        c.api_url = "http://forge.example/api/v1".into();
        let status = CommitStatus {
            sha: "b".repeat(40),
            state: StatusState::Success,
            context: "x".into(),
            description: "y".into(),
        };
        let e = c.post(&status).expect_err("refused").to_string();
        assert!(e.contains("clear text") && !e.contains("t0k"), "{e}");
    }
}
