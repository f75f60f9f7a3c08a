//! A whole simulated host for end-to-end runs, shared by the demo (the README's first
//! command) and the end-to-end tests: a signed manifests repository served over smart
//! HTTP on 127.0.0.1, release artifacts of the test app (two healthy, one broken),
//! HAProxy in master-worker mode on a loopback port, a host configuration, and the
//! `veza-agent` binary driven through its command line only.
//!
//! Everything it creates is named after one random environment name and cleaned up on
//! drop; the slot containers also carry the test ownership mark so a killed run's
//! leftovers are swept by `tests/host/setup` or [`crate::sweep_stale`].

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use veza_host::process::{Cmd, Output};

use crate::http::GitHttpServer;
use crate::repo::{RepoBuilder, SigningKey, allowed_signers};
use crate::{Haproxy, broken_release_artifact, free_port, release_artifact};

/// One release the demo can deploy.
#[derive(Debug, Clone)]
pub struct DemoRelease {
    /// 40-hex release id.
    pub id: String,
    /// sha256 of its artifact.
    pub sha256: String,
    /// Whether its `/health` fails.
    pub broken: bool,
}

/// The simulated host.
pub struct DemoHost {
    /// Working directory (repos, artifacts, state, config).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Environment name (unique per host), also the slot name prefix.
    pub env: String,
    /// Public host name routed by the edge.
    pub host_name: String,
    /// Edge listen port on 127.0.0.1.
    pub edge_port: u16,
    /// Loopback ports of the blue and green slots.
    pub slot_ports: (u16, u16),
    /// Releases: 0 and 1 healthy, 2 broken.
    pub releases: Vec<DemoRelease>,
    /// The manifests repository.
    pub repo: RepoBuilder,
    /// Smart-HTTP server in front of it.
    pub http: GitHttpServer,
    /// The edge.
    pub haproxy: Haproxy,
    /// The key Forgejo signs merges with (trusted).
    pub forgejo: SigningKey,
    /// An untrusted key.
    pub mallory: SigningKey,
    /// The agent's configuration file.
    pub config_path: PathBuf,
    agent_bin: PathBuf,
    /// When this host was made (unix seconds): the test owner mark `user.veza-test.created`.
    pub created: u64,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Simulated hosts of one test process run one at a time: each starts containers with
/// proxy devices, and on 2 cores several at once starve incusd's start hooks.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn random_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = Sha256::digest(format!("{nanos}-{}", std::process::id()).as_bytes());
    h.iter().take(3).map(|b| format!("{b:02x}")).collect()
}

fn release_id(seed: &str) -> String {
    Sha256::digest(seed.as_bytes()).iter().take(20).map(|b| format!("{b:02x}")).collect()
}

impl DemoHost {
    /// Builds the host in a temporary directory (tests) or in `keep` (the demo).
    pub fn new(agent_bin: &Path, keep: Option<&Path>) -> Result<DemoHost> {
        let serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::require_host()?;
        let (dir, tmp) = match keep {
            Some(k) => {
                if k.exists() {
                    std::fs::remove_dir_all(k)
                        .with_context(|| format!("clearing {}", k.display()))?;
                }
                std::fs::create_dir_all(k)?;
                (k.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new().prefix("veza-demo-").tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let env = format!("vd{}", random_suffix());
        let host_name = format!("{env}.localhost");
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys)?;
        let forgejo = SigningKey::generate(&keys, "forgejo")?;
        let mallory = SigningKey::generate(&keys, "mallory")?;
        let trust = dir.join("allowed_signers");
        std::fs::write(&trust, allowed_signers(&[("forgejo@forge.example", &forgejo)]))?;

        let mut releases = Vec::new();
        for (i, broken) in [false, false, true].into_iter().enumerate() {
            let id = release_id(&format!("{env}-{i}"));
            let (bytes, sha256) =
                if broken { broken_release_artifact(&id)? } else { release_artifact(&id)? };
            let path = dir.join("artifacts").join(&id);
            std::fs::create_dir_all(&path)?;
            std::fs::write(path.join("hello.tar.gz"), bytes)?;
            releases.push(DemoRelease { id, sha256, broken });
        }

        let edge_port = free_port()?;
        let slot_ports = (free_port()?, free_port()?);
        let haproxy = Haproxy::start_with(|d| initial_edge(d, edge_port))?;
        let repo = RepoBuilder::with_name(&dir.join("repos"), "manifests.git")?;
        let http = GitHttpServer::start(&dir.join("repos"))?;
        let config_path = dir.join("config.yaml");
        let hd = haproxy.dir().to_path_buf();
        std::fs::write(
            &config_path,
            format!(
                "# veza-agent configuration of the simulated host\n\
                 host: {env}\n\
                 source:\n  remotes: [\"{url}\"]\n  branch: main\n  manifests: [manifests/{env}.yaml]\n  fetch_timeout: 20s\n\
                 trust:\n  allowed_signers: {trust}\n  max_staleness: 1h\n\
                 poll: {{interval: 2s, jitter: 100ms}}\n\
                 state_dir: {state}\n\
                 edge:\n  config_path: {cfg}\n  master_socket: {master}\n  state_file: {hd}/server-state\n  stats_socket: {hd}/admin.sock\n\
                 systemd: {{unit_dir: {units}}}\n\
                 metrics: {{textfile: {metrics}}}\n\
                 promotion: {{health_timeout: 15s, verify_requests: 5}}\n",
                env = env,
                url = http.url("manifests.git"),
                trust = trust.display(),
                state = dir.join("state").display(),
                cfg = haproxy.config_path().display(),
                master = haproxy.master_socket().display(),
                hd = hd.display(),
                units = dir.join("units").display(),
                metrics = dir.join("veza-agent.prom").display(),
            ),
        )?;
        Ok(DemoHost {
            dir,
            _tmp: tmp,
            env,
            host_name,
            edge_port,
            slot_ports,
            releases,
            repo,
            http,
            haproxy,
            forgejo,
            mallory,
            config_path,
            agent_bin: agent_bin.to_path_buf(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            _serial: serial,
        })
    }

    /// The manifest path inside the repository.
    pub fn manifest_path(&self) -> String {
        format!("manifests/{}.yaml", self.env)
    }

    /// The test's owner marks as a YAML flow map (`{user.veza-test.owner: "PID",
    /// user.veza-test.created: "UNIX"}`), for the config of what a manifest creates: the
    /// sweep of a killed run finds it by them.
    pub fn owner_marks(&self) -> String {
        format!(
            "{{{}: \"{}\", {}: \"{}\"}}",
            crate::incus::OWNER_KEY,
            std::process::id(),
            crate::incus::CREATED_KEY,
            self.created
        )
    }

    /// The environment manifest with `active` and the releases (indexes into
    /// [`DemoHost::releases`]) of the blue and green slots.
    pub fn manifest(&self, active: &str, blue: Option<usize>, green: Option<usize>) -> String {
        let slot = |r: Option<usize>| match r {
            Some(i) => format!("{{release: {}}}", self.releases[i].id),
            None => "{}".to_string(),
        };
        let shas: Vec<String> =
            self.releases.iter().map(|r| format!("        {}: {}", r.id, r.sha256)).collect();
        format!(
            "apiVersion: veza-agent/v1\nkind: Environment\nmetadata:\n  name: {env}\n  host: {env}\n\n\
             apps:\n  hello:\n    image: veza-test-busybox\n    profiles: [default]\n    port: 8080\n\
             \x20   config: {marks}\n\
             \x20   artifact:\n      url: \"file://{art}/{{release}}/hello.tar.gz\"\n      sha256:\n{shas}\n\
             \x20   health: {{path: /health, interval: 1s, timeout: 1s, rise: 1, fall: 2}}\n\
             \x20   upstream:\n      loopback_ports: {{blue: {bp}, green: {gp}}}\n\
             \x20   slots:\n      blue: {blue}\n      green: {green}\n    active: {active}\n\n\
             edge:\n  runs_in: host\n  hosts: [{host}]\n  routes:\n    - {{app: hello}}\n  sticky_cookie: VEZA_{env}\n  listen: {{http: \"127.0.0.1:{ep}\"}}\n",
            env = self.env,
            marks = self.owner_marks(),
            art = self.dir.join("artifacts").display(),
            shas = shas.join("\n"),
            bp = self.slot_ports.0,
            gp = self.slot_ports.1,
            blue = slot(blue),
            green = slot(green),
            host = self.host_name,
            ep = self.edge_port,
        )
    }

    /// Commits `manifest` signed by the Forgejo key and pushes it.
    pub fn commit(&self, manifest: &str, message: &str) -> Result<String> {
        self.repo.write(&self.manifest_path(), manifest)?;
        let id = self.repo.commit_signed(&self.forgejo, message)?;
        self.repo.push()?;
        Ok(id)
    }

    /// Commits `manifest` without a signature and pushes it.
    pub fn commit_unsigned(&self, manifest: &str, message: &str) -> Result<String> {
        self.repo.write(&self.manifest_path(), manifest)?;
        let id = self.repo.commit_unsigned(message)?;
        self.repo.push()?;
        Ok(id)
    }

    /// Runs `veza-agent ARGS --config <this host>` and returns its output.
    pub fn agent(&self, args: &[&str]) -> Result<Output> {
        Ok(Cmd::new(&self.agent_bin)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .timeout(Duration::from_secs(300))
            .output()?)
    }

    /// `GET path` through the edge with this host's name.
    pub fn get(&self, path: &str) -> Result<veza_host::http::Reply> {
        Ok(veza_host::http::get(
            &format!("127.0.0.1:{}", self.edge_port),
            &self.host_name,
            path,
            Duration::from_secs(3),
        )?)
    }

    /// The release the edge currently serves (from the app's `X-Release` header).
    pub fn served_release(&self) -> Result<String> {
        let r = self.get("/")?;
        if r.status != 200 {
            bail!("the edge answered {} for {}", r.status, self.host_name);
        }
        Ok(r.headers.get("x-release").cloned().unwrap_or_default())
    }

    /// Slot container names.
    pub fn slots(&self) -> [String; 2] {
        [format!("{}-hello-blue", self.env), format!("{}-hello-green", self.env)]
    }
}

impl Drop for DemoHost {
    fn drop(&mut self) {
        if self._tmp.is_none() {
            return; // the demo keeps its host for the operator to look at
        }
        for name in self.slots() {
            let _ = Cmd::new("incus")
                .args(["delete", "--force", &name])
                .timeout(Duration::from_secs(60))
                .run();
        }
        // The anti-rollback mark, where agents before 2026-12 kept it, and the last
        // commit that landed.
        let key = format!("user.veza-agent.applied.{}", self.env);
        let landed = format!("user.veza-agent.landed.{}", self.env);
        for args in [
            &["project", "unset", "default", &key][..],
            &["config", "unset", &key],
            &["project", "unset", "default", &landed],
        ] {
            let _ =
                Cmd::new("incus").args(args.iter().copied()).timeout(Duration::from_secs(30)).run();
        }
    }
}

/// A valid edge config to start HAProxy with before the agent's first sync: every
/// request gets a 503 until the agent installs the real config.
fn initial_edge(dir: &Path, port: u16) -> String {
    format!(
        "global\n    master-worker\n    stats socket {d}/admin.sock mode 600 level admin\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe_http\n    bind 127.0.0.1:{port}\n    default_backend default_503\n\n\
         backend default_503\n    http-request return status 503 content-type text/plain string \"no route yet\"\n",
        d = dir.display()
    )
}
