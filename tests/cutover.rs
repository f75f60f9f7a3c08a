//! The cutover from the Ansible pipeline, rehearsed end to end (issue 17): the rehearsal
//! R720 (`tests/host/rehearsal`: about twenty containers on `net-veza` as the seed's
//! pipeline left them, Ansible's `haproxy.cfg` in `veza-haproxy`, Ansible's timers), the
//! shipped `manifests/prod.yaml` and `staging.yaml` (changed only by the stand-ins the
//! rehearsal script lists, applied here by [`standin`]), signed and served over smart
//! HTTP, and `veza-agent` driven through its command line:
//!
//! 1. `adopt` reports every named instance adoptable, the live colors agreeing with the
//!    manifests, and Ansible's timers as duplicates of manifest jobs; `adopt --apply`
//!    marks them (same `volatile.uuid`, same PID 1) and replaces the timers;
//! 2. the first `plan` shows the edge takeover as a diff, the first `apply` takes the
//!    edge over with 0 failed requests under a request loop through it, and the next
//!    sync is `no-change` with zero Incus writes;
//! 3. the normal life of the host: a new release of each prod app deployed and promoted
//!    (the backend's migration first), then a staging promotion, each with 0 failed
//!    requests for prod and staging; the data containers untouched throughout; the jobs
//!    run in `veza-postgres` and on the host stand-in with their secrets.
//!
//! Timings (rehearsal build, adoption report, takeover, each promotion, the no-change
//! sync of the whole topology) are printed for the closing note (`--nocapture`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use veza_host::process::Cmd;
use veza_testkit::cli::{Run, agent};
use veza_testkit::http::GitHttpServer;
use veza_testkit::repo::{RepoBuilder, SigningKey, allowed_signers};

/// The edge's plain HTTP port as the host's proxy device publishes it (stand-ins keep the
/// manifests' ports).
const EDGE_HTTP: &str = "127.0.0.1:80";

const DATA: [&str; 8] = [
    "veza-postgres",
    "veza-redis",
    "veza-rabbitmq",
    "veza-minio",
    "veza-staging-postgres",
    "veza-staging-redis",
    "veza-staging-rabbitmq",
    "veza-staging-minio",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn rehearsal(command: &str) -> Duration {
    let started = Instant::now();
    let testapp = veza_testkit::testapp_binary().expect("the test app");
    let out = Cmd::new(repo_root().join("tests/host/rehearsal"))
        .arg(command)
        .env("VEZA_TESTAPP_BIN", &testapp)
        .timeout(Duration::from_secs(900))
        .output()
        .expect("tests/host/rehearsal runs");
    assert!(
        out.status.success(),
        "tests/host/rehearsal {command}:\n{}\n{}",
        out.stdout_str(),
        out.stderr_str()
    );
    started.elapsed()
}

/// Tears the rehearsal down when the test ends, passed or not.
struct Teardown;

impl Drop for Teardown {
    fn drop(&mut self) {
        if std::env::var_os("VEZA_KEEP_REHEARSAL").is_some() {
            return;
        }
        // Never panics (this may run while a failed assertion unwinds).
        let down = Cmd::new(repo_root().join("tests/host/rehearsal"))
            .arg("down")
            .timeout(Duration::from_secs(600))
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("tests/host/rehearsal down failed:\n{}", out.stderr_str()),
            Err(e) => eprintln!("tests/host/rehearsal down: {e}"),
        }
    }
}

fn sh_in(instance: &str, script: &str) -> String {
    Cmd::new("incus")
        .args(["exec", instance, "--", "sh", "-c", script])
        .timeout(Duration::from_secs(60))
        .run_stdout()
        .unwrap_or_else(|e| panic!("in {instance}: {script}: {e}"))
}

fn volatile_uuid(instance: &str) -> String {
    Cmd::new("incus")
        .args(["config", "get", instance, "volatile.uuid"])
        .run_stdout()
        .expect("incus config get")
        .trim()
        .to_string()
}

/// What must not change in a data container: its identity, its data, its boot.
fn data_fingerprint(instance: &str) -> (String, String, String) {
    (
        volatile_uuid(instance),
        sh_in(instance, "sha256sum /var/lib/veza-data/data.bin").trim().to_string(),
        sh_in(instance, "cut -d' ' -f22 /proc/1/stat").trim().to_string(),
    )
}

fn release_id(seed: &str) -> String {
    Sha256::digest(seed.as_bytes()).iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// The stand-in `migrate_tool` the backend's artifacts carry (stand-in 2).
const MIGRATE_TOOL: &str = "#!/bin/sh\n# Rehearsal stand-in (tests/host/rehearsal, stand-in 2): records the migration.\n\
[ -n \"$DATABASE_URL\" ] || { echo 'DATABASE_URL is not set' >&2; exit 3; }\n\
echo \"$VEZA_RELEASE $*\" >> /var/log/veza-migrations.log\n";

/// The manifests as the rehearsal runs them: the shipped ones with the manifest side of
/// the stand-ins of `tests/host/rehearsal` (2: artifact URLs and sha256 pins; 6: the host
/// stand-in) and nothing else. `shas` is (app, release) → the test artifact's sha256.
fn standin(text: &str, artifacts: &Path, shas: &BTreeMap<(String, String), String>) -> String {
    let text = text.replace(
        "https://forgejo.veza.fr/api/packages/talas/generic/",
        &format!("file://{}/", artifacts.display()),
    );
    let mut app = String::new();
    let mut in_apps = false;
    let mut out = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.is_empty() {
            in_apps = line == "apps:";
        }
        if in_apps && line.len() > 2 && line.starts_with("  ") && !line.starts_with("   ") {
            app = line.trim().trim_end_matches(':').to_string();
        }
        let pin = line.trim().split_once(": ").filter(|(r, s)| {
            r.len() == 40 && s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
        });
        match pin {
            Some((release, _)) => {
                let sha = shas
                    .get(&(app.clone(), release.to_string()))
                    .unwrap_or_else(|| panic!("no test artifact for {app} {release}"));
                let indent = &line[..line.len() - line.trim_start().len()];
                out.push_str(&format!("{indent}{release}: {sha}\n"));
            }
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

/// Stand-in 6 (prod only): the host's own jobs run in `veza-r720-host`.
fn host_standin(prod: &str) -> String {
    for line in [
        "    on: host\n",
        "    veza-backend-tools: {image: images:debian/13, profiles: [veza-app]}",
    ] {
        assert_eq!(prod.matches(line).count(), 1, "prod.yaml no longer has `{line}` once");
    }
    let out = prod.replace("    on: host\n", "    on: veza-r720-host\n").replace(
        "    veza-backend-tools: {image: images:debian/13, profiles: [veza-app]}",
        "    veza-backend-tools: {image: images:debian/13, profiles: [veza-app]}\n    veza-r720-host: {image: images:debian/13, profiles: [veza-app]}   # rehearsal stand-in 6",
    );
    assert_ne!(out, prod, "prod.yaml no longer has the lines stand-in 6 replaces");
    out
}

struct Host {
    dir: tempfile::TempDir,
    repo: RepoBuilder,
    _http: GitHttpServer,
    forgejo: SigningKey,
    config: PathBuf,
    bin: PathBuf,
    shas: BTreeMap<(String, String), String>,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::Builder::new().prefix("veza-cutover-").tempdir().expect("tmp");
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("keys dir");
        let forgejo = SigningKey::generate(&keys, "forgejo").expect("key");
        let trust = dir.path().join("allowed_signers");
        std::fs::write(&trust, allowed_signers(&[("forgejo@forge.example", &forgejo)]))
            .expect("trust root");
        // Stand-in 7: the key the shipped secrets are encrypted to, as the host's key.
        let host_key = dir.path().join("ssh_host_ed25519_key");
        std::fs::copy(repo_root().join("agent/secrets/testdata/host_ed25519"), &host_key)
            .expect("host key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&host_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let repo =
            RepoBuilder::with_name(&dir.path().join("repos"), "manifests.git").expect("repo");
        let http = GitHttpServer::start(&dir.path().join("repos")).expect("git server");
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "# veza-agent on the rehearsal R720\n\
                 host: r720\n\
                 source:\n  remotes: [\"{url}\"]\n  branch: main\n  manifests: [manifests/prod.yaml, manifests/staging.yaml]\n  fetch_timeout: 30s\n\
                 trust:\n  allowed_signers: {trust}\n  max_staleness: 1h\n\
                 state_dir: {state}\n\
                 incus:\n  images: {{\"images:debian/13\": veza-test-debian12}}   # rehearsal stand-in 1\n\
                 metrics: {{textfile: {metrics}}}\n\
                 promotion: {{health_timeout: 60s, verify_requests: 5}}\n\
                 secrets:\n  identities: [{key}]\n",
                url = http.url("manifests.git"),
                trust = trust.display(),
                state = dir.path().join("state").display(),
                metrics = dir.path().join("veza-agent.prom").display(),
                key = host_key.display(),
            ),
        )
        .expect("config");
        Host {
            dir,
            repo,
            _http: http,
            forgejo,
            config,
            bin: PathBuf::from(env!("CARGO_BIN_EXE_veza-agent")),
            shas: BTreeMap::new(),
        }
    }

    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    /// Packs the test app as `app`'s `release` (`veza-<app>/<release>/<app>.tar.zst`, a
    /// gzip tarball: the agent reads the packing from the bytes).
    fn add_release(&mut self, app: &str, release: &str) {
        let extra: &[(&str, &str)] =
            if app == "backend" { &[("migrate_tool", MIGRATE_TOOL)] } else { &[] };
        let (bytes, sha) =
            veza_testkit::release_artifact_with(release, extra).expect("test artifact");
        let dir = self.artifacts().join(format!("veza-{app}")).join(release);
        std::fs::create_dir_all(&dir).expect("artifact dir");
        std::fs::write(dir.join(format!("{app}.tar.zst")), bytes).expect("artifact");
        self.shas.insert((app.to_string(), release.to_string()), sha);
    }

    /// Commits `prod` and `staging` (shipped texts, stand-ins applied here) with the
    /// shipped secrets, signed by the trusted key.
    fn commit(&self, prod: &str, staging: &str, message: &str) -> String {
        let work = self.repo.work();
        let secrets = work.join("manifests/secrets");
        for env in ["prod", "staging"] {
            let to = secrets.join(env);
            std::fs::create_dir_all(&to).expect("secrets dir");
            for entry in std::fs::read_dir(repo_root().join("manifests/secrets").join(env))
                .expect("shipped secrets")
            {
                let entry = entry.expect("entry");
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy secret");
            }
        }
        std::fs::write(
            work.join("manifests/prod.yaml"),
            standin(&host_standin(prod), &self.artifacts(), &self.shas),
        )
        .expect("prod.yaml");
        std::fs::write(
            work.join("manifests/staging.yaml"),
            standin(staging, &self.artifacts(), &self.shas),
        )
        .expect("staging.yaml");
        self.repo.commit_signed(&self.forgejo, message).expect("signed commit")
    }

    fn agent(&self, args: &[&str]) -> Run {
        agent(&self.bin, &self.config, args)
    }

    fn ok(&self, args: &[&str]) -> Run {
        let r = self.agent(args);
        assert_eq!(r.code, 0, "veza-agent {args:?}:\n{r}");
        r
    }
}

/// The release `host` (a public name the edge routes) serves at `path`, through the edge
/// over HTTPS (both Ansible's config and the manifests serve TLS on 443; the manifests
/// redirect plain HTTP there).
fn served(host: &str, path: &str) -> String {
    let out = Cmd::new("curl")
        .args(["-sk", "-m", "5", "-o", "/dev/null", "-D", "-", "--resolve"])
        .arg(format!("{host}:443:127.0.0.1"))
        .arg(format!("https://{host}{path}"))
        .timeout(Duration::from_secs(10))
        .run_stdout()
        .unwrap_or_else(|e| panic!("GET https://{host}{path} through the edge: {e}"));
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/2 200"),
        "{host}{path}:\n{out}"
    );
    out.lines()
        .find_map(|l| l.strip_prefix("x-release: ").or_else(|| l.strip_prefix("X-Release: ")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A request loop through the edge over HTTPS for one public name: a bounded shell loop
/// of `curl` (at most 20 000 requests, 5 ms apart), one status code per line.
struct HttpsLoop {
    name: String,
    pid: u32,
    out: PathBuf,
    stop: PathBuf,
}

impl HttpsLoop {
    fn start(dir: &Path, host: &str, path: &str) -> HttpsLoop {
        let tag = format!("{}{}", host, path).replace(['/', '.'], "_");
        let (out, stop) =
            (dir.join(format!("load-{tag}.codes")), dir.join(format!("load-{tag}.stop")));
        let _ = std::fs::remove_file(&stop);
        let script = format!(
            "i=0; while [ $i -lt 20000 ] && [ ! -e '{stop}' ]; do \
             curl -sk -m 3 -o /dev/null -w '%{{http_code}}\\n' --resolve {host}:443:127.0.0.1 'https://{host}{path}' >> '{out}'; \
             sleep 0.005; i=$((i+1)); done",
            stop = stop.display(),
            out = out.display(),
        );
        let pid = Cmd::new("sh").args(["-c", &script]).spawn_daemon(None).expect("request loop");
        HttpsLoop { name: format!("{host}{path}"), pid, out, stop }
    }

    fn halt(&self) {
        let _ = std::fs::write(&self.stop, b"");
        let started = Instant::now();
        while veza_testkit::proc::process_alive(self.pid)
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the loop; returns (ok, failed).
    fn stop(self) -> (u64, u64) {
        self.halt();
        let codes = std::fs::read_to_string(&self.out).unwrap_or_default();
        let ok = codes.lines().filter(|c| *c == "200").count() as u64;
        (ok, codes.lines().count() as u64 - ok)
    }
}

impl Drop for HttpsLoop {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Request loops through the edge for each environment.
struct Load {
    loops: Vec<HttpsLoop>,
}

impl Load {
    fn start(dir: &Path) -> Load {
        Load {
            loops: vec![
                HttpsLoop::start(dir, "veza.fr", "/"),
                HttpsLoop::start(dir, "veza.fr", "/api/v1/health"),
                HttpsLoop::start(dir, "veza.fr", "/stream/seg1"),
                HttpsLoop::start(dir, "staging.veza.fr", "/"),
                HttpsLoop::start(dir, "staging.veza.fr", "/api/v1/health"),
            ],
        }
    }

    /// Stops the loops; asserts none failed; returns the requests sent.
    fn stop(mut self, during: &str) -> u64 {
        let mut sent = 0;
        for l in std::mem::take(&mut self.loops) {
            let name = l.name.clone();
            let (ok, failed) = l.stop();
            eprintln!("cutover: {during}: {name}: {ok} ok, {failed} failed");
            assert!(ok > 0, "{during}: no request went through for {name}");
            assert_eq!(failed, 0, "{during}: {failed} requests failed for {name}");
            sent += ok + failed;
        }
        sent
    }
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("not JSON ({e}):\n{r}"))
}

#[test]
fn the_ansible_built_r720_is_adopted_taken_over_and_lives_on_with_zero_failed_requests() {
    veza_testkit::incus::require_incus().expect("real test host");
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let _teardown = Teardown;
    timings.push(("rehearsal build (reset: down + up)".into(), rehearsal("reset")));
    let data_before: Vec<_> = DATA.iter().map(|d| data_fingerprint(d)).collect();

    let mut h = Host::new();
    let prod = std::fs::read_to_string(repo_root().join("manifests/prod.yaml")).expect("prod");
    let staging =
        std::fs::read_to_string(repo_root().join("manifests/staging.yaml")).expect("staging");
    for (app, release) in [
        ("backend", "0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7"),
        ("backend", "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80"),
        ("backend", "a4c6e8b0d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1"),
        ("stream", "5a1c3e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c"),
        ("web", "7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e"),
    ] {
        h.add_release(app, release);
    }
    h.commit(&prod, &staging, "the shipped manifests");

    // 1. Adoption: a report first, read-only.
    let pid1: Vec<String> = ["veza-backend-blue", "veza-haproxy", "veza-postgres"]
        .iter()
        .map(|i| sh_in(i, "cut -d' ' -f22 /proc/1/stat"))
        .collect();
    let started = Instant::now();
    let report = h.agent(&["adopt", "--json"]);
    timings.push(("adoption report".into(), started.elapsed()));
    assert_eq!(report.code, 2, "something to adopt, nothing in the way:\n{report}");
    let report = json(&report);
    for i in report["instances"].as_array().expect("instances") {
        assert_eq!(i["state"], "adopt", "{i:#}");
    }
    assert_eq!(report["instances"].as_array().map(Vec::len), Some(20), "{report:#}");
    let active = report["active"].as_array().expect("active colors");
    assert_eq!(active.len(), 6, "three apps in each environment: {report:#}");
    for a in active {
        assert_eq!(a["agrees"], true, "{a:#}");
    }
    assert_eq!(report["timers"].as_array().map(Vec::len), Some(4), "{report:#}");
    assert!(report["refusals"].as_array().is_some_and(Vec::is_empty), "{report:#}");
    let apply = h.ok(&["adopt", "--apply", "--yes", "--reason", "rehearsal cutover"]);
    eprintln!("cutover: adopt --apply: {}", apply.out.trim());
    for (i, name) in ["veza-backend-blue", "veza-haproxy", "veza-postgres"].iter().enumerate() {
        assert_eq!(sh_in(name, "cut -d' ' -f22 /proc/1/stat"), pid1[i], "{name} restarted");
    }
    // No gap: the agent's timers run, Ansible's are retired.
    let systemctl = |instance: &str, verb: &str, unit: &str| {
        Cmd::new("incus")
            .args(["exec", instance, "--", "systemctl", verb, unit])
            .output()
            .expect("systemctl")
            .stdout_str()
            .trim()
            .to_string()
    };
    for (instance, ansible, agent) in [
        ("veza-postgres", "pgbackrest-full.timer", "veza-job-prod-pgbackrest-full.timer"),
        ("veza-postgres", "pgbackrest-diff.timer", "veza-job-prod-pgbackrest-diff.timer"),
        (
            "veza-staging-postgres",
            "pgbackrest-diff.timer",
            "veza-job-staging-pgbackrest-diff.timer",
        ),
        ("veza-r720-host", "dr-drill.timer", "veza-job-prod-dr-drill.timer"),
    ] {
        assert_eq!(systemctl(instance, "is-active", agent), "active", "{instance}: {agent}");
        assert_eq!(systemctl(instance, "is-enabled", ansible), "disabled", "{instance}: {ansible}");
    }
    let again = json(&h.agent(&["adopt", "--json"]));
    let instances = again["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 20, "{again:#}");
    for i in instances {
        assert_eq!(i["state"], "owned", "{i:#}");
    }

    // 2. The edge takeover: shown, then done under load.
    let plan = h.agent(&["plan"]);
    assert_eq!(plan.code, 2, "{plan}");
    assert!(plan.out.contains("edge takeover: the live haproxy.cfg was not written"), "{plan}");
    assert!(plan.out.contains("-# Managed by Ansible (roles/haproxy"), "{plan}");
    let load = Load::start(h.dir.path());
    let started = Instant::now();
    let first = h.ok(&["apply"]);
    timings.push(("takeover (first apply)".into(), started.elapsed()));
    eprintln!("cutover: first apply: {}", first.out.trim());
    let sent = load.stop("the takeover");
    eprintln!("cutover: takeover: {sent} requests, 0 failed");
    // What the diff showed: the manifests serve plain HTTP as a redirect to HTTPS.
    let plain = veza_host::http::get(EDGE_HTTP, "veza.fr", "/", Duration::from_secs(3))
        .expect("plain HTTP through the edge");
    assert_eq!(plain.status, 301, "{plain:?}");
    assert_eq!(served("veza.fr", "/api/v1/health"), "0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7");
    assert_eq!(served("staging.veza.fr", "/"), "7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e");
    let watch = veza_testkit::incus::LifecycleWatch::start(&h.dir.path().join("lifecycle.json"))
        .expect("lifecycle watch");
    let started = Instant::now();
    let quiet = h.ok(&["apply"]);
    timings.push(("no-change sync of the whole topology (process)".into(), started.elapsed()));
    assert!(quiet.out.starts_with("no-change"), "{quiet}");
    std::thread::sleep(Duration::from_millis(300));
    // Reads show as lifecycle events too (the jobs' state is read with `systemctl` in
    // their instances, the edge's config is read back): only changes count.
    const READS: [&str; 4] = [
        "instance-file-retrieved ",
        "instance-exec ",
        "instance-log-retrieved ",
        "instance-log-deleted ",
    ];
    let events = watch.about("veza-");
    let writes: Vec<&String> =
        events.iter().filter(|e| !READS.iter().any(|r| e.starts_with(r))).collect();
    assert!(!events.is_empty(), "the watch saw nothing at all (not even the sync's reads)");
    assert!(writes.is_empty(), "the no-change sync wrote to Incus:\n{writes:#?}");

    // 3. The normal life of the host: a new release of each prod app, promoted.
    let (backend, stream, web) =
        (release_id("cutover-backend"), release_id("cutover-stream"), release_id("cutover-web"));
    h.add_release("backend", &backend);
    h.add_release("stream", &stream);
    h.add_release("web", &web);
    let pin = |text: &str, app: &str, release: &str| {
        // A new sha256 pin after the app's `sha256:` line (the test artifact's sha is
        // filled in by `standin`).
        let at = text.find(&format!("  {app}:\n")).expect("app");
        let sha_at = at + text[at..].find("      sha256:\n").expect("sha256 map") + 14;
        format!("{}        {release}: {}\n{}", &text[..sha_at], "0".repeat(64), &text[sha_at..])
    };
    let mut prod2 = pin(&prod, "backend", &backend);
    prod2 = pin(&prod2, "stream", &stream);
    prod2 = pin(&prod2, "web", &web);
    let prod2 = prod2
        .replace(
            "      green: {release: e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80}\n    active: blue                    # a promotion",
            &format!("      green: {{release: {backend}}}\n    active: green                   # a promotion"),
        )
        .replace(
            "      green: {}\n    active: blue\n  web:",
            &format!("      green: {{release: {stream}}}\n    active: green\n  web:"),
        )
        .replace(
            "      blue:  {}\n      green: {release: 7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e}\n    active: green",
            &format!(
                "      blue:  {{release: {web}}}\n      green: {{release: 7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a4c6e}}\n    active: blue"
            ),
        );
    assert_eq!(prod2.matches("active: green").count(), 2, "{prod2}");
    h.commit(&prod2, &staging, "prod: new backend, stream and web, promoted");
    let staging_before = served("staging.veza.fr", "/api/v1/health");
    let load = Load::start(h.dir.path());
    let started = Instant::now();
    let promoted = h.ok(&["apply"]);
    timings.push(("prod: three releases deployed and promoted".into(), started.elapsed()));
    eprintln!("cutover: prod release: {}", promoted.out.trim());
    load.stop("the prod promotions");
    assert_eq!(served("veza.fr", "/api/v1/health"), backend);
    assert_eq!(served("veza.fr", "/stream/seg1"), stream);
    assert_eq!(served("veza.fr", "/"), web);
    assert_eq!(served("staging.veza.fr", "/api/v1/health"), staging_before, "staging untouched");
    let migrations = sh_in("veza-backend-tools", "cat /var/log/veza-migrations.log");
    assert!(migrations.contains(&format!("{backend} --up")), "{migrations}");
    assert!(h.ok(&["apply"]).out.starts_with("no-change"));

    // A staging promotion (backend back to blue) reloads the shared edge: prod sees no
    // failed request.
    let staging2 = staging.replace("    active: green\n  stream:", "    active: blue\n  stream:");
    assert_ne!(staging2, staging);
    h.commit(&prod2, &staging2, "staging: backend back to blue");
    let load = Load::start(h.dir.path());
    let started = Instant::now();
    h.ok(&["apply"]);
    timings.push(("staging: promotion between running colors".into(), started.elapsed()));
    load.stop("the staging promotion");
    assert_eq!(
        served("staging.veza.fr", "/api/v1/health"),
        "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80"
    );
    assert_eq!(served("veza.fr", "/api/v1/health"), backend, "prod untouched");

    // The jobs run where the manifests put them, with their secrets.
    sh_in("veza-postgres", "systemctl start veza-job-prod-pgbackrest-full.service");
    let log = sh_in("veza-postgres", "cat /var/log/veza-standin.log");
    assert!(log.contains("--stanza=veza --type=full backup secrets=yes"), "{log}");
    let runs = |log: &str| log.lines().filter(|l| l.contains("dr-drill.sh")).count();
    let before = runs(&sh_in("veza-r720-host", "cat /var/log/veza-standin.log"));
    sh_in("veza-r720-host", "systemctl start veza-job-prod-dr-drill.service");
    let log = sh_in("veza-r720-host", "cat /var/log/veza-standin.log");
    assert_eq!(runs(&log), before + 1, "the agent's drill unit ran the drill once:\n{log}");

    // A timer stopped by hand (as a kill between writing a job's units and enabling its
    // timer leaves it): the next sync sees it, the one after enables it again; then there
    // is nothing to do.
    let timer = "veza-job-prod-pgbackrest-diff.timer";
    sh_in("veza-postgres", &format!("systemctl disable --now {timer}"));
    let seen = h.ok(&["apply"]);
    assert!(seen.out.starts_with("no-change"), "{seen}");
    // (exit 1: the host needs attention)
    let st: Value = serde_json::from_str(&h.agent(&["status", "--json"]).out).expect("status");
    let problem = &st["state"]["jobs"]["prod/pgbackrest-diff"]["problem"];
    assert!(problem.to_string().contains("the job is not scheduled"), "{st:#}");
    let again = h.ok(&["apply"]);
    assert!(again.out.contains("(1 steps"), "{again}");
    assert_eq!(sh_in("veza-postgres", &format!("systemctl is-active {timer}")).trim(), "active");
    let quiet = h.ok(&["apply"]);
    assert!(quiet.out.starts_with("no-change"), "{quiet}");

    // The data containers never moved.
    let data_after: Vec<_> = DATA.iter().map(|d| data_fingerprint(d)).collect();
    assert_eq!(data_after, data_before, "data containers: uuid, data checksum, PID 1 start");
    // 4. The daemon on the whole topology: after its first sync, a poll that finds the
    // commit applied and Incus quiet reuses its reading (issue 17's in-process figure).
    let log = h.dir.path().join("daemon.log");
    struct Stop(u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            veza_testkit::app::kill_pid(self.0, "TERM", Duration::from_secs(30));
        }
    }
    let daemon = Stop(veza_testkit::cli::spawn(&h.bin, &h.config, "run", &log));
    let sock = h.dir.path().join("state/control.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut inproc = Vec::new();
    for i in 0..8 {
        let reply = h.ok(&["sync", "--json"]);
        let v: Value = serde_json::from_str(reply.out.trim()).expect("sync --json");
        assert_eq!(v["outcome"], "no-change", "{v}");
        let stages = v["stages_us"].as_array().cloned().unwrap_or_default();
        let observe = stages
            .iter()
            .find_map(|s| s[0].as_str().filter(|n| n.starts_with("observe (")).map(str::to_string));
        if i >= 2 {
            // (a helper's container elsewhere on a shared test machine does not count:
            // only events about what this host declares or owns do)
            assert_eq!(observe.as_deref(), Some("observe (reused)"), "{v}");
            assert!(!stages.iter().any(|s| s[0] == "observe (again)"), "read again: {v}");
        }
        let total: u64 = stages.iter().filter_map(|s| s[1].as_u64()).sum();
        inproc.push(total);
        eprintln!("cutover: daemon sync {i}: {} µs: {}", total, reply.out.trim());
    }
    drop(daemon);
    let mut reused = inproc[2..].to_vec();
    reused.sort_unstable();
    timings.push((
        "no-change daemon sync of the whole topology, reused reading (in process, median)".into(),
        Duration::from_micros(reused[reused.len() / 2]),
    ));
    for (what, t) in &timings {
        eprintln!("cutover: {what}: {} ms", t.as_millis());
    }
}
