//! Accept: fetch the branch, verify the tip's signature against the host's trust root,
//! check it descends from the last applied commit (looked up by id, or from the Incus
//! high-water mark), hold it to the trust policy and its capability grants, and read and
//! validate the manifests bound to this host. Nothing is read as desired state otherwise.

use std::path::{Path, PathBuf};

use veza_host::incus::SharedConfig;
use veza_model::Manifest;
use veza_model::config::HostConfig;
use veza_secrets::Identities;
use veza_source::fetch::{Credentials, FetchOptions, Mirror};
use veza_source::{Acceptance, Base, PolicySince, Rejected, Secrets, accept};
use veza_state::AgentState;

use super::{Agent, Laps, high_water_key, landed_key};

/// A verified revision and the manifests read from it.
pub struct Source {
    /// Tip commit id.
    pub commit: String,
    /// Signer principal.
    pub signer: String,
    /// The host's validated manifests (`metadata.host` = this host).
    pub manifests: Vec<Manifest>,
    /// The secrets they reference, decrypted with this host's keys.
    pub secrets: Secrets,
}

/// The largest key file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// This host's keys for secrets (`secrets.identities`): each file read now; one that is
/// missing or unusable is noted, so a secret it cannot open says why.
pub fn host_identities(c: &HostConfig) -> Identities {
    let mut ids = Identities::none();
    for path in c.secret_identities() {
        let read = std::fs::File::open(&path).and_then(|f| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_KEY_FILE_BYTES), &mut bytes)
                .map(|_| bytes)
        });
        match read {
            Ok(bytes) => {
                if let Err(e) = ids.add(&path, &bytes) {
                    ids.note_unusable(e.to_string());
                }
            }
            Err(e) => ids.note_unusable(format!("{path}: {e}")),
        }
    }
    ids
}

/// Why a revision was not used.
#[derive(Debug)]
pub enum SourceProblem {
    /// Fetch failed on every remote.
    Fetch(String),
    /// The revision could not be checked (the anti-rollback mark unreadable); nothing used.
    Failed(String),
    /// The revision was refused (signature, policy, rollback, invalid manifests).
    Rejected { commit: String, reason: String },
}

/// The `username:token` of `source.credentials_file`, if configured (first line, trimmed).
fn read_credentials(c: &HostConfig) -> Result<Option<Credentials>, String> {
    let Some(path) = &c.source.credentials_file else { return Ok(None) };
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let unreadable = |e: std::io::Error| format!("credentials file `{path}` unreadable: {e}");
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(unreadable)?;
    if let Ok(meta) = file.metadata() {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "credentials file `{path}` is readable by others (mode {mode:03o}); \
                 `chmod 600 {path}`"
            );
        }
    }
    parse_credentials(&text).map(Some).ok_or_else(|| {
        format!("credentials file `{path}` must hold one line `username:token` (no spaces)")
    })
}

/// `username:token` on the first line; neither part empty, no whitespace inside.
fn parse_credentials(text: &str) -> Option<Credentials> {
    let line = text.lines().next().unwrap_or("").trim();
    let (username, token) = line.split_once(':')?;
    if username.is_empty() || token.is_empty() || line.contains(char::is_whitespace) {
        return None;
    }
    Some(Credentials { username: username.to_string(), token: token.to_string() })
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Removes the token (plain and percent-encoded) from a message before it is logged or
/// recorded.
pub fn redact(message: &str, token: Option<&str>) -> String {
    let Some(token) = token else { return message.to_string() };
    if token.is_empty() {
        return message.to_string();
    }
    message.replace(&pct(token), "***").replace(token, "***")
}

impl Agent {
    /// How the manifests repository is fetched: the branch (and its approval tags with a
    /// trust policy), the credentials, the caps. PR heads are fetched with the same.
    pub(super) fn fetch_options(&self) -> Result<FetchOptions, String> {
        let c = &self.config;
        Ok(FetchOptions {
            credentials: read_credentials(c)?,
            ca_file: c.source.ca_file.as_ref().map(PathBuf::from),
            approval_tags: c.trust.policy.is_some(),
            max_refs: c.max_refs(),
            max_pack_bytes: c.max_pack_bytes(),
            ..FetchOptions::new(c.branch(), c.fetch_timeout())
        })
    }

    /// Source and verify: fetch the branch, verify the tip, check policy and ancestry,
    /// read and validate the manifests. Pure decisions, effects limited to the mirror.
    pub async fn source(&self, state: &AgentState, now: i64) -> Result<Source, SourceProblem> {
        self.source_timed(state, now, &mut Laps::start()).await
    }

    /// [`Agent::source`], timing the fetch and the acceptance into `laps`.
    pub(super) async fn source_timed(
        &self,
        state: &AgentState,
        now: i64,
        laps: &mut Laps,
    ) -> Result<Source, SourceProblem> {
        let c = &self.config;
        let mirror_dir = self.state_dir().join("mirror.git");
        let mut mirror =
            Mirror::open_or_init(&mirror_dir).map_err(|e| SourceProblem::Fetch(e.to_string()))?;
        let options = self.fetch_options().map_err(SourceProblem::Fetch)?;
        let secret = options.credentials.as_ref().map(|c| c.token.clone());
        let fetched = mirror
            .poll(&self.forge, &c.source.remotes, &options)
            .await
            .map_err(|e| SourceProblem::Fetch(redact(&e.to_string(), secret.as_deref())))?;
        let commit = fetched.tip.to_string();
        laps.lap("fetch");
        // Anti-rollback: the tip must descend from the last applied commit (or one whose
        // apply began and failed: part of it may have landed), known from the state file
        // or, when that is gone, from the mirror in Incus. Unknown is not "none":
        // without the state file and without Incus, nothing is checked, so nothing is used.
        let key = high_water_key(&c.host);
        // On a cluster the mark is the newest commit any member's agent applied: it wins
        // over this member's own state file, which may be from before another member led,
        // unless this member's record descends from it (the mark's write failed).
        let applied = match state.high_water().map(str::to_string) {
            Some(local) if c.cluster.is_none() => Some(local),
            local => {
                let mark = self.read_high_water().await.map_err(|e| {
                    SourceProblem::Failed(format!(
                        "cannot read the anti-rollback mark `{key}` from Incus ({e}), and {}: \
                         refusing to use {commit} unchecked (hint: is incusd running? `incus info`)",
                        if c.cluster.is_some() {
                            "on a cluster it is what any member applied last"
                        } else {
                            "the state file has no applied commit"
                        }
                    ))
                })?;
                // With its copy for older agents (the server config): the newer of the two
                // (an older agent in a cluster being upgraded applied after the project's
                // mark), and one the history no longer holds over one it does.
                let mark = match mark {
                    (Some(project), Some(copy)) => {
                        Some(veza_source::accept::newest_mark(&mirror, &project, &copy).to_string())
                    }
                    (project, copy) => project.or(copy),
                };
                match (mark, local) {
                    // A mark left behind (its write failed while this member applied a
                    // newer commit) must not lower the base below what this member applied.
                    (Some(mark), Some(local)) => {
                        Some(veza_source::accept::newer_base(&mirror, &local, &mark).to_string())
                    }
                    (mark, local) => mark.or(local),
                }
            }
        };
        // Approvals cover what changed since what landed, not since a failed attempt:
        // this host's own record, and on a cluster (or once the state file is gone) the
        // one every leader writes, which the mark above is not (it moves before an apply).
        let own = state.applied.as_ref().map(|a| a.commit.clone());
        let landed = if c.cluster.is_none() && state.high_water().is_some() {
            own
        } else {
            let key = landed_key(&c.host);
            let mark = self.incus.shared_user_config(&key).await.map_err(|e| {
                SourceProblem::Failed(format!(
                    "cannot read `{key}` (the last commit that landed) from Incus ({e}): \
                     refusing to judge {commit}'s approvals without it (hint: is incusd \
                     running? `incus info`)"
                ))
            })?;
            match (mark.value, own) {
                (Some(mark), Some(own)) => {
                    Some(veza_source::accept::newer_base(&mirror, own.as_str(), &mark).to_string())
                }
                (mark, own) => mark.or(own),
            }
        };
        let read_keys = || host_identities(c);
        let acceptance = Acceptance {
            allowed_signers: Path::new(&c.trust.allowed_signers),
            policy: c.trust.policy.as_deref(),
            base: applied.as_deref().map_or(Base::Nothing, Base::Descends),
            policy_since: match (&landed, &state.attempted) {
                // One the fetched history does not hold (rewritten, or another
                // repository's): every path.
                (Some(l), _) if mirror.commit_by_id(l).is_err() => PolicySince::Everything,
                (Some(l), _) => PolicySince::Commit(l),
                (None, Some(_)) => PolicySince::Everything,
                // Nothing landed that this host knows of: a first sync (the base is
                // nothing: every path), or a mark written by agents before 2026-12, which
                // recorded no landed commit (the diff since the mark, as they judged it).
                (None, None) => PolicySince::Base,
            },
            manifests: &c.source.manifests,
            host: &c.host,
            max_refs: c.max_refs(),
            now,
            identities: Some(&read_keys),
        };
        let accepted = accept(&mirror, fetched.tip, &acceptance).map_err(
            |Rejected { commit, reason, .. }| SourceProblem::Rejected { commit, reason },
        )?;
        let (commit, signer, manifests, secrets) = accepted.into_parts();
        laps.lap("accept");
        Ok(Source { commit, signer, manifests, secrets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_one_line_user_colon_token_and_never_reach_messages() {
        // (file content, parsed user and token)
        let table: [(&str, Option<(&str, &str)>); 7] = [
            ("agent:s3cr/t\n", Some(("agent", "s3cr/t"))),
            ("agent:tok:with:colons", Some(("agent", "tok:with:colons"))),
            ("  agent:tok  \nignored second line", Some(("agent", "tok"))),
            ("agent", None),
            (":tok", None),
            ("agent:", None),
            ("agent:to k", None),
        ];
        for (text, want) in table {
            let got = parse_credentials(text);
            assert_eq!(
                got.as_ref().map(|c| (c.username.as_str(), c.token.as_str())),
                want,
                "{text:?}"
            );
            if let Some(c) = got {
                assert!(!format!("{c:?}").contains(&c.token), "Debug shows the token");
            }
        }
        let msg = "fetch https://agent:s3cr%2Ft@forge.example failed; token s3cr/t";
        let clean = redact(msg, Some("s3cr/t"));
        assert!(!clean.contains("s3cr"), "{clean}");
        assert_eq!(redact(msg, None), msg);
    }
}
