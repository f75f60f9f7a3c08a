//! The host configuration (`/etc/veza-agent/config.yaml`): where the manifests come
//! from, which of them apply to this host, the trust root, and where the agent keeps
//! state and talks to Incus, HAProxy and systemd.
//!
//! Parsed and validated like manifests: unknown keys are errors and every problem is
//! reported as `PATH:LINE:COL: error: MESSAGE`.

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

use crate::manifest::DurationSpec;
use crate::parse::{Diagnostic, Positions, Seg, parse_yaml};
use crate::path;

mod cluster;
mod feedback;
mod size;

pub use cluster::{ClusterConfig, DEFAULT_LEASE_TTL, is_member_name};
pub use feedback::{
    DEFAULT_PREVIEW_PLAN_TIMEOUT, DEFAULT_PREVIEWS_PER_POLL, FeedbackConfig, ForgejoStatusConfig,
    PreviewsConfig,
};
pub use size::ByteSize;

/// The default location of the host configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/veza-agent/config.yaml";

/// The whole host configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// This host's name; only manifests whose `metadata.host` equals it are applied.
    pub host: String,
    /// Where the manifests repository comes from.
    pub source: SourceConfig,
    /// The trust root: who may sign what.
    pub trust: TrustConfig,
    /// How often the agent polls.
    #[serde(default)]
    pub poll: PollConfig,
    /// Directory for the bare mirror, state, history and journal. Defaults to `/var/lib/veza-agent`.
    #[serde(default)]
    pub state_dir: Option<String>,
    /// How to reach Incus.
    #[serde(default)]
    pub incus: IncusConfig,
    /// Where the shared HAProxy edge keeps its files and sockets.
    #[serde(default)]
    pub edge: EdgeConfig,
    /// Where systemd units of jobs that run on the host are installed.
    #[serde(default)]
    pub systemd: SystemdConfig,
    /// Prometheus textfile output.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Promotion gates.
    #[serde(default)]
    pub promotion: PromotionConfig,
    /// Release artifact downloads.
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    /// Keys that decrypt the manifests' secrets.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// `apply` (the default) or `report`: fetch, verify, plan and report drift, apply
    /// nothing (a first week on a new host).
    #[serde(default)]
    pub mode: Mode,
    /// Where each sync's outcome is reported: a commit status on the forge, a hook.
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// PR previews: what this host would do with each open PR's head, as a commit status
    /// on the head. Off by default; needs `feedback.forgejo`.
    #[serde(default)]
    pub previews: PreviewsConfig,
    /// On an Incus cluster: this member's name; only the lease holder applies. Absent: one host.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// Whether the agent applies what it plans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Apply plans (the default).
    #[default]
    Apply,
    /// Plan and report only; nothing is changed on the host.
    Report,
}

/// The host's keys for the manifests' age-encrypted secrets.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Private key files: unencrypted OpenSSH keys or age identity files. Defaults to the
    /// host's own SSH key, `/etc/ssh/ssh_host_ed25519_key` (no new key to manage).
    #[serde(default)]
    pub identities: Option<Vec<String>>,
}

/// The default of `secrets.identities`.
pub const DEFAULT_SECRET_IDENTITY: &str = "/etc/ssh/ssh_host_ed25519_key";

/// The manifests repository.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Remote URLs in priority order (`https://`, `http://`, `file://`); the first that answers wins.
    pub remotes: Vec<String>,
    /// The branch to follow. Defaults to `main`.
    #[serde(default)]
    pub branch: Option<String>,
    /// Manifest files (paths inside the repository) that this host applies.
    pub manifests: Vec<String>,
    /// File with `username:token` (a Forgejo access token) for private repositories.
    /// Sent only over HTTPS, and only when the server asks.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// PEM CA certificate(s) that HTTPS remotes are checked against instead of the
    /// system's (a forge behind an internal CA).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Time limit of one fetch. Defaults to `60s`.
    #[serde(default)]
    pub fetch_timeout: Option<DurationSpec>,
    /// Largest pack one fetch may receive, in bytes; the fetch is interrupted beyond it.
    /// Defaults to 536870912 (512 MiB).
    #[serde(default)]
    pub max_pack_bytes: Option<u64>,
    /// Most refs a remote may advertise to one fetch. Defaults to 10000.
    #[serde(default)]
    pub max_refs: Option<usize>,
}

/// The trust root.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// OpenSSH `allowed_signers` file. Lives on the host, never in the repository.
    pub allowed_signers: String,
    /// Optional per-path policy file (who must sign changes to which paths).
    #[serde(default)]
    pub policy: Option<String>,
    /// Report `stale` when no verified fetch succeeded for this long. Defaults to `1h`.
    #[serde(default)]
    pub max_staleness: Option<DurationSpec>,
}

/// Polling.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// Time between polls. Defaults to `8s`: with the default jitter a merged commit is
    /// applied about 4.6 s after it reaches the forge (median), and 1000 hosts cost one
    /// forge about 220 small requests a second (the bench report's arithmetic).
    #[serde(default)]
    pub interval: Option<DurationSpec>,
    /// Random extra delay added to each poll, so hosts do not poll in lockstep. Defaults to `2s`.
    #[serde(default)]
    pub jitter: Option<DurationSpec>,
    /// The daemon reads the whole live state (Incus, the edge's config and health, job
    /// units) at least this often. Between such reads, while Incus's event stream reports
    /// no change, a poll whose commit is already applied reuses the last reading; what
    /// changes inside an instance (a file, a service, HAProxy's health) sends no Incus
    /// event and is seen at the next full reading. `0s` reads everything at every poll.
    /// Defaults to `60s`, or three polls (interval plus jitter) when that is longer.
    #[serde(default)]
    pub full_observation: Option<DurationSpec>,
}

/// Incus access.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IncusConfig {
    /// Unix socket. Defaults to `/var/lib/incus/unix.socket`.
    #[serde(default)]
    pub socket: Option<String>,
    /// A remote incusd (cluster member) instead of the socket: `https://HOST:PORT`.
    /// Needs `client_cert`, `client_key` and `server_cert`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// PEM client certificate the server trusts (`incus config trust add-certificate`).
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM key of the client certificate.
    #[serde(default)]
    pub client_key: Option<String>,
    /// PEM certificate the server presents; pinned, nothing else is accepted.
    #[serde(default)]
    pub server_cert: Option<String>,
    /// Where this host gets the images the manifests name: image reference as the
    /// manifests write it (`images:debian/13`) → what Incus is asked for instead: a local
    /// image alias (`veza-debian13` or `local:veza-debian13`, e.g. on an air-gapped host)
    /// or a simplestreams mirror as `https://SERVER/PATH:ALIAS`. The manifests (and the
    /// instances' `user.veza.image` mark) keep the reference; plans show what is used.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

/// The edge's files and sockets, on the host or inside the instance it runs in.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// Path of `haproxy.cfg`. Defaults to `/etc/haproxy/haproxy.cfg`.
    #[serde(default)]
    pub config_path: Option<String>,
    /// Master CLI socket. Defaults to `/run/haproxy-master.sock`.
    #[serde(default)]
    pub master_socket: Option<String>,
    /// Server-state file. Defaults to `/var/lib/haproxy/server-state`.
    #[serde(default)]
    pub state_file: Option<String>,
    /// Stats (admin) socket written into the config. Defaults to `/run/haproxy/admin.sock`.
    #[serde(default)]
    pub stats_socket: Option<String>,
}

/// systemd.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SystemdConfig {
    /// Unit directory. Defaults to `/etc/systemd/system`.
    #[serde(default)]
    pub unit_dir: Option<String>,
}

/// Metrics.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// node_exporter textfile path; no metrics file when absent.
    #[serde(default)]
    pub textfile: Option<String>,
}

/// Release artifact downloads.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Largest artifact downloaded; a bigger one is stopped while it streams and nothing
    /// is cached. Defaults to `512MiB`.
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
}

/// The default of `artifacts.max_bytes`.
pub const DEFAULT_ARTIFACT_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Promotion gates.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    /// How long a new color may take to become healthy. Defaults to `60s`.
    #[serde(default)]
    pub health_timeout: Option<DurationSpec>,
    /// Requests sent through the edge after a switch; all must reach the new release. Defaults to 5.
    #[serde(default)]
    pub verify_requests: Option<u32>,
}

impl HostConfig {
    /// The branch followed.
    pub fn branch(&self) -> &str {
        self.source.branch.as_deref().unwrap_or("main")
    }
    /// The state directory.
    pub fn state_dir(&self) -> &str {
        self.state_dir.as_deref().unwrap_or("/var/lib/veza-agent")
    }
    /// The Incus socket.
    pub fn incus_socket(&self) -> &str {
        self.incus.socket.as_deref().unwrap_or("/var/lib/incus/unix.socket")
    }
    /// Poll interval.
    pub fn poll_interval(&self) -> std::time::Duration {
        self.poll.interval.map_or(std::time::Duration::from_secs(8), DurationSpec::get)
    }
    /// The longest a daemon reuses an observation (`poll.full_observation`).
    pub fn full_observation(&self) -> std::time::Duration {
        self.poll.full_observation.map_or_else(
            || {
                std::time::Duration::from_secs(60)
                    .max((self.poll_interval() + self.poll_jitter()) * 3)
            },
            DurationSpec::get,
        )
    }

    /// The most jitter added to a poll.
    pub fn poll_jitter(&self) -> std::time::Duration {
        self.poll.jitter.map_or(std::time::Duration::from_secs(2), DurationSpec::get)
    }
    /// Staleness limit.
    pub fn max_staleness(&self) -> std::time::Duration {
        self.trust.max_staleness.map_or(std::time::Duration::from_secs(3600), DurationSpec::get)
    }
    /// Fetch time limit.
    pub fn fetch_timeout(&self) -> std::time::Duration {
        self.source.fetch_timeout.map_or(std::time::Duration::from_secs(60), DurationSpec::get)
    }
    /// The key files tried on secrets.
    pub fn secret_identities(&self) -> Vec<String> {
        self.secrets.identities.clone().unwrap_or_else(|| vec![DEFAULT_SECRET_IDENTITY.to_string()])
    }
    /// Largest artifact downloaded, in bytes.
    pub fn artifact_max_bytes(&self) -> u64 {
        self.artifacts.max_bytes.map_or(DEFAULT_ARTIFACT_MAX_BYTES, ByteSize::bytes)
    }
    /// Cap on the pack of one fetch, in bytes.
    pub fn max_pack_bytes(&self) -> u64 {
        self.source.max_pack_bytes.unwrap_or(512 * 1024 * 1024)
    }
    /// Cap on the refs a remote may advertise to one fetch.
    pub fn max_refs(&self) -> usize {
        self.source.max_refs.unwrap_or(10_000)
    }
    /// Health wait limit of a promotion.
    pub fn health_timeout(&self) -> std::time::Duration {
        self.promotion.health_timeout.map_or(std::time::Duration::from_secs(60), DurationSpec::get)
    }
}

/// Parses and validates the host configuration. Errors are located.
pub fn parse_config(bytes: &[u8]) -> Result<HostConfig, Vec<Diagnostic>> {
    let (config, positions) =
        parse_yaml::<HostConfig>(bytes, "configuration").map_err(|d| vec![d])?;
    let problems = validate_config(&config, &positions);
    if problems.is_empty() { Ok(config) } else { Err(problems) }
}

fn validate_config(c: &HostConfig, pos: &Positions) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut at = |path: Vec<Seg>, message: String| {
        out.push(Diagnostic { pos: pos.value(&path), message });
    };
    if c.host.is_empty() || c.host.contains(char::is_whitespace) {
        at(path!["host"], format!("invalid host name `{}`", c.host));
    }
    if c.source.remotes.is_empty() {
        at(path!["source", "remotes"], "at least one remote is needed".to_string());
    }
    for (i, remote) in c.source.remotes.iter().enumerate() {
        let scheme_ok = ["https://", "http://", "file://"].iter().any(|s| remote.starts_with(s))
            || remote.starts_with('/');
        if let Some((scheme, rest)) = remote.split_once("://")
            && let authority = rest.split('/').next().unwrap_or_default()
            && let Some((_, host)) = authority.rsplit_once('@')
        {
            // Not echoed: the part before `@` is a password or token.
            at(
                path!["source", "remotes", i],
                format!(
                    "remote `{scheme}://…@{host}` carries credentials in its URL: they would show \
                     in every fetch error, the logs and `status` (hint: put `user:token` in \
                     source.credentials_file, mode 0600)"
                ),
            );
            continue;
        }
        if !scheme_ok {
            at(
                path!["source", "remotes", i],
                format!(
                    "unsupported remote `{remote}`: use https://, http://, file:// or an absolute path"
                ),
            );
        }
        if remote.starts_with("http://") && !is_loopback_url(remote) {
            at(
                path!["source", "remotes", i],
                format!(
                    "remote `{remote}` uses plain http to a non-loopback host; signatures still protect content, but use https"
                ),
            );
        }
    }
    for (reference, used) in &c.incus.images {
        if let Err(why) = crate::image::parse(used) {
            at(path!["incus", "images", reference.as_str()], why);
        }
    }
    if c.source.manifests.is_empty() {
        at(path!["source", "manifests"], "list the manifest files this host applies".to_string());
    }
    for (i, m) in c.source.manifests.iter().enumerate() {
        if m.starts_with('/') || m.split('/').any(|s| s == ".." || s == ".git" || s.is_empty()) {
            at(
                path!["source", "manifests", i],
                format!(
                    "manifest path `{m}` must be relative to the repository root, without `..`, `.git` or empty parts"
                ),
            );
        }
    }
    for (p, value) in [
        (path!["trust", "allowed_signers"], Some(c.trust.allowed_signers.as_str())),
        (path!["trust", "policy"], c.trust.policy.as_deref()),
        (path!["state_dir"], c.state_dir.as_deref()),
        (path!["incus", "socket"], c.incus.socket.as_deref()),
        (path!["incus", "client_cert"], c.incus.client_cert.as_deref()),
        (path!["incus", "client_key"], c.incus.client_key.as_deref()),
        (path!["incus", "server_cert"], c.incus.server_cert.as_deref()),
        (path!["edge", "config_path"], c.edge.config_path.as_deref()),
        (path!["edge", "master_socket"], c.edge.master_socket.as_deref()),
        (path!["edge", "state_file"], c.edge.state_file.as_deref()),
        (path!["edge", "stats_socket"], c.edge.stats_socket.as_deref()),
        (path!["systemd", "unit_dir"], c.systemd.unit_dir.as_deref()),
        (path!["metrics", "textfile"], c.metrics.textfile.as_deref()),
        (path!["source", "credentials_file"], c.source.credentials_file.as_deref()),
        (path!["source", "ca_file"], c.source.ca_file.as_deref()),
    ] {
        if let Some(v) = value
            && !v.starts_with('/')
        {
            at(p, format!("`{v}` must be an absolute path"));
        }
    }
    if let Some(endpoint) = &c.incus.endpoint {
        if !endpoint.starts_with("https://")
            || endpoint.trim_end_matches('/').matches('/').count() > 2
        {
            at(
                path!["incus", "endpoint"],
                format!("incus endpoint `{endpoint}` must be `https://HOST:PORT`"),
            );
        }
        for (key, v) in [
            ("client_cert", &c.incus.client_cert),
            ("client_key", &c.incus.client_key),
            ("server_cert", &c.incus.server_cert),
        ] {
            if v.is_none() {
                at(path!["incus", "endpoint"], format!("an HTTPS endpoint needs `incus.{key}`"));
            }
        }
    }
    if c.artifacts.max_bytes.is_some_and(|b| b.bytes() < 1024) {
        at(
            path!["artifacts", "max_bytes"],
            "artifacts.max_bytes must be at least 1KiB".to_string(),
        );
    }
    if c.source.max_pack_bytes == Some(0) {
        at(path!["source", "max_pack_bytes"], "max_pack_bytes must be at least 1".to_string());
    }
    if c.source.max_refs == Some(0) {
        at(path!["source", "max_refs"], "max_refs must be at least 1 (the branch)".to_string());
    }
    if c.poll_interval() < std::time::Duration::from_secs(1) {
        at(path!["poll", "interval"], "poll interval must be at least 1s".to_string());
    }
    for (p, message) in feedback::problems(c).into_iter().chain(cluster::problems(c)) {
        at(p, message);
    }
    out.sort_by_key(|d| d.pos);
    out
}

/// Whether `url` names a loopback host: `localhost`, an address in 127.0.0.0/8, or `[::1]`.
/// User info (`user@`) is skipped, so `http://127.0.0.1@example.org/` is not loopback.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(h, _)| h),
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid host configuration; the tests of `cluster` and `feedback`
    /// extend it too.
    pub(super) const GOOD: &str = "host: r720\nsource:\n  remotes: [https://forge.example/veza/manifests.git]\n  manifests: [manifests/prod.yaml]\ntrust:\n  allowed_signers: /etc/veza-agent/allowed_signers\n";

    #[test]
    fn a_minimal_config_gets_defaults() {
        let c = parse_config(GOOD.as_bytes()).unwrap();
        assert_eq!(c.branch(), "main");
        assert_eq!(c.state_dir(), "/var/lib/veza-agent");
        let s = std::time::Duration::from_secs;
        assert_eq!((c.poll_interval(), c.poll_jitter(), c.full_observation()), (s(8), s(2), s(60)));
        // A full reading is due at least every three polls.
        let slow = GOOD.to_string() + "poll: {interval: 60s}\n";
        assert_eq!(parse_config(slow.as_bytes()).unwrap().full_observation(), s(186));
        assert_eq!(c.max_pack_bytes(), 512 * 1024 * 1024);
        assert_eq!(c.max_refs(), 10_000);
        let capped =
            GOOD.replace("  manifests:", "  max_pack_bytes: 1048576\n  max_refs: 50\n  manifests:");
        let c = parse_config(capped.as_bytes()).unwrap();
        assert_eq!((c.max_pack_bytes(), c.max_refs()), (1_048_576, 50));
    }

    #[test]
    fn loopback_urls_are_told_from_the_rest() {
        let cases = [
            ("http://127.0.0.1:8080/a.tgz", true),
            ("http://127.1.2.3/a", true),
            ("http://localhost/a", true),
            ("http://LOCALHOST:80", true),
            ("http://[::1]:8080/a", true),
            ("http://user:pw@127.0.0.1/a", true),
            ("http://example.org/a", false),
            ("http://127.0.0.1.nip.io/a", false),
            ("http://127.0.0.1@example.org/a", false),
            ("http://localhost.example.org/a", false),
            ("http://[::2]/a", false),
            ("http://10.0.0.1/a", false),
        ];
        for (url, loopback) in cases {
            assert_eq!(is_loopback_url(url), loopback, "{url}");
        }
    }

    #[test]
    fn sizes_have_a_unit() {
        let c =
            parse_config(format!("{GOOD}artifacts: {{max_bytes: 64MiB}}\n").as_bytes()).unwrap();
        assert_eq!(c.artifact_max_bytes(), 64 << 20);
        assert_eq!(parse_config(GOOD.as_bytes()).unwrap().artifact_max_bytes(), 512 << 20);
    }

    /// A token in a remote's URL is refused without being echoed.
    #[test]
    fn credentials_in_a_remote_url_are_refused_and_not_repeated() {
        let text = GOOD.replace("https://forge", "https://agent:s3cr3t@forge");
        let Err(problems) = parse_config(text.as_bytes()) else { panic!("accepted") };
        let said = format!("{problems:?}");
        assert!(said.contains("credentials_file") && !said.contains("s3cr3t"), "{said}");
    }

    #[test]
    fn problems_are_located() {
        let cases = [
            (GOOD.replace("remotes: [https", "remotes: [ftp"), "3:13: unsupported remote"),
            (
                GOOD.replace("https://forge", "https://agent:s3cr3t@forge"),
                "3:13: remote `https://…@forge.example` carries credentials in its URL",
            ),
            (
                GOOD.replace("manifests/prod.yaml", "../prod.yaml"),
                "4:15: manifest path `../prod.yaml`",
            ),
            (
                GOOD.replace("/etc/veza-agent/allowed_signers", "allowed_signers"),
                "6:20: `allowed_signers` must be an absolute path",
            ),
            (GOOD.replace("host: r720", "hots: r720"), "1:1: unknown field `hots`"),
            (
                GOOD.replace("  manifests:", "  max_refs: 0\n  manifests:"),
                "4:13: max_refs must be at least 1",
            ),
            (
                GOOD.replace("  manifests:", "  max_pack_bytes: 0\n  manifests:"),
                "4:19: max_pack_bytes must be at least 1",
            ),
            (format!("{GOOD}poll: {{interval: 0s}}\n"), "7:18: poll interval must be at least 1s"),
            (
                format!("{GOOD}artifacts: {{max_bytes: 2GB}}\n"),
                "7:24: artifacts: invalid size `2GB`",
            ),
            (
                format!("{GOOD}artifacts: {{max_bytes: 10B}}\n"),
                "7:24: artifacts.max_bytes must be at least 1KiB",
            ),
            (
                format!("{GOOD}incus: {{endpoint: \"https://10.0.0.2:8443\"}}\n"),
                "7:19: an HTTPS endpoint needs `incus.client_cert`",
            ),
        ];
        for (text, expect) in cases {
            let errs = parse_config(text.as_bytes()).unwrap_err();
            let got: Vec<String> =
                errs.iter().map(|d| format!("{}: {}", d.pos, d.message)).collect();
            assert!(got.iter().any(|g| g.starts_with(expect)), "wanted {expect}, got {got:#?}");
        }
    }
}
