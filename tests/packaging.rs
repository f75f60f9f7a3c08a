//! Packaging: the agent's systemd unit passes `systemd-analyze verify`, the packaged
//! default configuration parses (and so does every commented example in it), the shell
//! completions and man pages are generated, and the Debian package built by
//! `packaging/build-deb` installs in the Debian 12 system container of the test-host kit,
//! runs the agent under its hardened unit, and is removed and purged cleanly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veza_host::haproxy::{
    EdgeError, EdgePaths, EdgeRuntime, IncusExec, InstallOptions, InstallOutcome, InstanceRuntime,
    ReloadOutcome, install,
};
use veza_host::process::{Cmd, Output};
use veza_testkit::TestContainer;
use veza_testkit::http::GitHttpServer;
use veza_testkit::repo::{RepoBuilder, SigningKey, allowed_signers};

const AGENT: &str = env!("CARGO_BIN_EXE_veza-agent");
const UNIT: &str = "veza-agent.service";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn packaging(file: &str) -> PathBuf {
    repo_root().join("packaging").join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn agent(args: &[&str]) -> Output {
    Cmd::new(AGENT).args(args).timeout(Duration::from_secs(60)).output().expect("veza-agent runs")
}

/// The visible subcommands, from the binary's own help.
fn subcommands() -> Vec<String> {
    commands_in(&agent(&["help"]).stdout_str())
}

/// The commands a `--help` text lists (its `Commands:` section), without `help`.
fn commands_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

// ------------------------------------------------------------------ the unit

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // Verified as installed, except that ExecStart points at the binary under test (the
    // host has no /usr/bin/veza-agent) and man pages are checked below instead of
    // through `man` (not installed on a test host).
    let unit = read(&packaging(UNIT));
    assert!(unit.contains("ExecStart=/usr/bin/veza-agent run\n"), "{unit}");
    let path = dir.path().join(UNIT);
    std::fs::write(&path, unit.replace("/usr/bin/veza-agent", AGENT)).unwrap();
    let out = Cmd::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("systemd-analyze runs (tests/host/setup installs systemd)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify must pass silently:\n{}{}",
        out.stdout_str(),
        out.stderr_str()
    );

    // Every `man:` page the unit documents is one the binary generates.
    let pages = tempfile::tempdir().unwrap();
    let written = agent(&["man", &pages.path().display().to_string()]);
    assert!(written.status.success(), "{}", written.stderr_str());
    for doc in unit.lines().filter_map(|l| l.strip_prefix("Documentation=")) {
        for uri in doc.split_whitespace().filter_map(|u| u.strip_prefix("man:")) {
            let (name, section) = uri.trim_end_matches(')').split_once('(').unwrap();
            let page = pages.path().join(format!("{name}.{section}"));
            assert!(
                page.is_file(),
                "the unit documents {uri}, which `veza-agent man` does not write"
            );
        }
    }
}

#[test]
fn the_unit_grants_writes_only_where_the_default_config_points() {
    let unit = read(&packaging(UNIT));
    let config = veza_model::config::parse_config(read(&packaging("config.yaml")).as_bytes())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let writable: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(str::split_whitespace)
        .map(|p| p.trim_start_matches('-'))
        .collect();
    let dir_of = |p: &str| Path::new(p).parent().unwrap().display().to_string();
    for (what, needed) in [
        ("systemd.unit_dir", config.systemd.unit_dir.clone().unwrap()),
        ("edge.config_path", dir_of(config.edge.config_path.as_deref().unwrap())),
        ("edge.state_file", dir_of(config.edge.state_file.as_deref().unwrap())),
        ("metrics.textfile", "/var/lib/prometheus/node-exporter".to_string()),
    ] {
        assert!(writable.contains(&needed.as_str()), "{what}: {needed} is not in {writable:?}");
    }
    assert_eq!(config.state_dir(), "/var/lib/veza-agent");
    assert!(unit.contains("StateDirectory=veza-agent\n"));
    assert!(unit.contains("ProtectSystem=strict\n"));
    // Bounded: a runaway agent (or what it reads) cannot take the host's memory or pids.
    assert!(unit.contains("\nMemoryMax=2G\n") && unit.contains("\nTasksMax=256\n"), "{unit}");
}

// ------------------------------------------------------------------ HAProxy on the host

/// Debian's haproxy.service with the shipped drop-in, as systemd reads it offline.
#[test]
fn the_haproxy_drop_in_passes_systemd_analyze_verify_and_names_the_agents_socket() {
    let drop_in = read(&packaging("haproxy-master-socket.conf"));
    let config = veza_model::config::parse_config(read(&packaging("config.yaml")).as_bytes())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let socket = config.edge.master_socket.expect("config.yaml sets edge.master_socket");
    let exec_start: Vec<&str> = drop_in.lines().filter(|l| l.starts_with("ExecStart=")).collect();
    assert_eq!(exec_start.len(), 2, "a reset, then the command:\n{drop_in}");
    assert!(exec_start[1].contains(" -Ws "), "master-worker under systemd: {drop_in}");
    assert!(exec_start[1].contains(&format!(" -S {socket} ")), "{socket}: {drop_in}");

    // Verified next to the haproxy.service Debian ships (tests/host/setup installs it).
    let dir = tempfile::tempdir().unwrap();
    let debian = read(Path::new("/lib/systemd/system/haproxy.service"));
    std::fs::write(dir.path().join("haproxy.service"), debian).unwrap();
    let d = dir.path().join("haproxy.service.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("veza-agent.conf"), &drop_in).unwrap();
    let out = Cmd::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("haproxy.service"))
        .env("SYSTEMD_LOG_LEVEL", "debug")
        .timeout(Duration::from_secs(60))
        .output()
        .expect("systemd-analyze runs");
    let log = format!("{}{}", out.stdout_str(), out.stderr_str());
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains(&format!("{}", d.join("veza-agent.conf").display())),
        "drop-in not read:\n{log}"
    );
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("haproxy.service") && (l.contains("ignoring") || l.contains("Invalid"))
        })
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
}

/// On Debian 12, HAProxy keeps the master socket the agent reloads through with the
/// shipped drop-in, even when /etc/default/haproxy sets its own EXTRAOPTS (which takes
/// the socket away from the stock unit); the agent's installer then reloads it.
#[test]
fn debian_haproxy_keeps_the_agents_master_socket_with_the_drop_in() {
    veza_testkit::require_host().unwrap();
    let c = TestContainer::spec(veza_testkit::incus::DEBIAN_IMAGE)
        .config("user.veza.managed", "true")
        .create()
        .unwrap();
    c.wait_for_systemd(Duration::from_secs(60)).unwrap();
    // The agent's own in-instance edge runtime (master CLI, files, `haproxy -c`).
    let tokio =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let incus = veza_host::incus::IncusClient::local();
    let exec = IncusExec { incus: &incus, handle: tokio.handle().clone() };
    let rt = InstanceRuntime::new(exec, c.name());
    let show_proc = || rt.master("show proc");
    assert!(show_proc().unwrap().contains("master"), "the stock unit has the socket");

    // The operator sets EXTRAOPTS as /etc/default/haproxy suggests: no master socket.
    sh_ok(&c, "echo 'EXTRAOPTS=\"-de\"' >>/etc/default/haproxy && systemctl restart haproxy");
    wait_for(&c, "haproxy restarted", "systemctl is-active haproxy", Duration::from_secs(20));
    let err = show_proc().unwrap_err();
    assert!(matches!(err, EdgeError::NotRunning { .. }), "{err}");

    // With the drop-in, the socket is there again, and the agent reloads through it.
    c.push_bytes(
        read(&packaging("haproxy-master-socket.conf")).as_bytes(),
        "/etc/systemd/system/haproxy.service.d/veza-agent.conf",
        0o644,
    )
    .unwrap();
    sh_ok(&c, "systemctl daemon-reload && systemctl restart haproxy");
    wait_for(&c, "haproxy restarted", "systemctl is-active haproxy", Duration::from_secs(20));
    let verify = sh(&c, "systemd-analyze verify --man=no haproxy.service 2>&1");
    assert_eq!(verify, (0, String::new()), "systemd-analyze verify inside the container");
    let started = Instant::now();
    while show_proc().is_err() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let procs = show_proc().expect("the master socket answers");
    let cmdline =
        sh_ok(&c, "tr '\\0' ' ' </proc/$(systemctl show -p MainPID --value haproxy)/cmdline");
    assert!(cmdline.contains(" -de"), "EXTRAOPTS still applies: {cmdline}");

    let config = "global\n    master-worker\n    stats socket /run/haproxy/admin.sock mode 600 level admin\n\
                  defaults\n    mode http\n    timeout connect 2s\n    timeout client 5s\n    timeout server 5s\n\
                  frontend fe\n    bind 127.0.0.1:18100\n    http-request return status 200 content-type text/plain string veza\n";
    let installed = install(&rt, &EdgePaths::debian(), config, &InstallOptions::default()).unwrap();
    let InstallOutcome::Installed(report) = installed else { panic!("{installed:?}") };
    assert!(
        matches!(report.reload, ReloadOutcome::Reloaded { .. }),
        "reloaded through the master socket, not left on disk: {report:?}\n{procs}"
    );
    let served = sh_ok(&c, "curl -s -m 2 http://127.0.0.1:18100/");
    assert_eq!(served, "veza");
}

// ------------------------------------------------------------------ default config

/// Uncomments every `# key: value` line and every `# key:` block opener, keeping the
/// indentation after `# ` (so `#   textfile: ...` lands under `metrics:`): the config
/// with every optional key set. Prose comments are left alone.
fn uncomment_examples(text: &str) -> String {
    let is_key_line = |body: &str| {
        let body = body.trim_start();
        body.split_once(':').is_some_and(|(key, rest)| {
            !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && (rest.is_empty() || rest.starts_with(' '))
        })
    };
    text.lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            match line[indent..].strip_prefix("# ") {
                Some(body) if is_key_line(body) => format!("{}{body}", &line[..indent]),
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_default_config_parses_with_and_without_its_commented_examples() {
    let text = read(&packaging("config.yaml"));
    let config = veza_model::config::parse_config(text.as_bytes())
        .unwrap_or_else(|e| panic!("packaging/config.yaml: {e:#?}"));
    assert_eq!(config.trust.allowed_signers, "/etc/veza-agent/allowed_signers");
    assert_eq!(config.branch(), "main");

    let full = uncomment_examples(&text);
    let c = veza_model::config::parse_config(full.as_bytes()).unwrap_or_else(|e| {
        panic!("packaging/config.yaml with examples uncommented: {e:#?}\n{full}")
    });
    // Every optional key has a documented example.
    let set = [
        ("source.credentials_file", c.source.credentials_file.is_some()),
        ("source.fetch_timeout", c.source.fetch_timeout.is_some()),
        ("source.max_pack_bytes", c.source.max_pack_bytes.is_some()),
        ("source.max_refs", c.source.max_refs.is_some()),
        ("source.branch", c.source.branch.is_some()),
        ("trust.policy", c.trust.policy.is_some()),
        ("trust.max_staleness", c.trust.max_staleness.is_some()),
        ("poll.interval", c.poll.interval.is_some()),
        ("poll.jitter", c.poll.jitter.is_some()),
        ("state_dir", c.state_dir.is_some()),
        ("incus.socket", c.incus.socket.is_some()),
        ("edge.config_path", c.edge.config_path.is_some()),
        ("edge.master_socket", c.edge.master_socket.is_some()),
        ("edge.state_file", c.edge.state_file.is_some()),
        ("edge.stats_socket", c.edge.stats_socket.is_some()),
        ("systemd.unit_dir", c.systemd.unit_dir.is_some()),
        ("metrics.textfile", c.metrics.textfile.is_some()),
        ("promotion.health_timeout", c.promotion.health_timeout.is_some()),
        ("promotion.verify_requests", c.promotion.verify_requests.is_some()),
        ("artifacts.max_bytes", c.artifacts.max_bytes.is_some()),
        ("previews.enabled", c.previews.enabled),
        ("previews.max_per_poll", c.previews.max_per_poll.is_some()),
        ("previews.plan_timeout", c.previews.plan_timeout.is_some()),
        ("cluster.member", c.cluster.is_some()),
        ("cluster.lease_ttl", c.cluster.as_ref().is_some_and(|cl| cl.lease_ttl.is_some())),
    ];
    let missing: Vec<&str> = set.iter().filter(|(_, ok)| !ok).map(|(k, _)| *k).collect();
    assert!(missing.is_empty(), "keys without an example in packaging/config.yaml: {missing:?}");
}

// ------------------------------------------------------------------ runbook

/// The runbook's table of rejection reasons: (first cell, cause cell) of each row.
fn rejection_table(runbook: &str) -> Vec<(String, String)> {
    runbook
        .lines()
        .skip_while(|l| !l.starts_with("| reason starts with |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let first = cells.first().map_or("", |c| c.trim_start_matches("| "));
            (first.to_string(), cells.get(1).unwrap_or(&"").to_string())
        })
        .collect()
}

/// The `backticked` texts of a cell.
fn quoted(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn the_runbook_quotes_the_rejection_reasons_the_agent_writes() {
    let runbook = read(&packaging("README.md"));
    let rows = rejection_table(&runbook);
    // One row per kind of rejection, in order, headed by the words every reason of that
    // kind starts with.
    let heads: Vec<Vec<&str>> = rows.iter().map(|(first, _)| quoted(first)).collect();
    let kinds: Vec<String> =
        veza_source::Refusal::ALL.iter().map(|k| format!("{}:", k.prefix())).collect();
    assert_eq!(heads, kinds.iter().map(|k| vec![k.as_str()]).collect::<Vec<_>>());
    // The examples quoted as causes are what the code writes (`...` stands for a value).
    let sources = [
        "agent/bin/reconcile/accept.rs",
        "agent/source/src/accept.rs",
        "agent/source/src/error.rs",
        "agent/source/src/policy.rs",
        "agent/model/src/config.rs",
        "agent/model/src/capabilities.rs",
        "agent/secrets/src/lib.rs",
    ];
    let code: String = sources.iter().map(|f| read(&repo_root().join(f))).collect();
    let code = format!("{code}{}", code.replace("{kind}", "commit"));
    let mut checked = 0;
    for (first, cause) in &rows {
        for example in quoted(cause) {
            for fragment in example.split("...").map(str::trim).filter(|f| !f.is_empty()) {
                assert!(code.contains(fragment), "row {first}: `{fragment}` is in no message");
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} quoted examples");
    // Every rejection goes through a kind, so no reason escapes the table: the one
    // acceptance function builds every `Rejected` with its kind's reason, and the binary
    // only passes them on.
    let acceptance = read(&repo_root().join("agent/source/src/accept.rs"));
    let built: Vec<&str> = acceptance.split("Rejected {").skip(1).collect();
    assert!(!built.is_empty());
    for after in built {
        let after = &after[..after.len().min(160)];
        assert!(
            after.contains("reason: kind.reason(") || after.trim_start().starts_with("///"),
            "a rejection built without its kind's reason: {after}"
        );
    }
    let reconcile = read(&repo_root().join("agent/bin/reconcile/accept.rs"))
        + &read(&repo_root().join("agent/bin/reconcile/mod.rs"));
    for after in reconcile.split("SourceProblem::Rejected {").skip(1) {
        assert!(after.trim_start().starts_with("commit, reason }"), "{after:.120}");
    }
    // The failure that is not a rejection, and words the agent never prints.
    assert!(runbook.contains("`cannot read the anti-rollback mark`"));
    assert!(reconcile.contains("cannot read the anti-rollback mark"));
    for stale in ["`signature: ... unsigned`", "\"force-pushed or rewritten\""] {
        assert!(!runbook.contains(stale), "the runbook still says {stale}");
    }
}

// ------------------------------------------------------------------ completions, man

#[test]
fn completions_name_every_subcommand_and_are_valid_bash() {
    let subs = subcommands();
    assert!(subs.len() >= 10, "{subs:?}");
    let out = agent(&["completions", "bash"]);
    assert!(out.status.success(), "{}", out.stderr_str());
    let script = out.stdout_str();
    assert!(script.len() > 1000, "{script}");
    for s in &subs {
        assert!(
            script.contains(&format!("cmd=\"veza__agent__subcmd__{s}\"")),
            "bash completion lacks `{s}`"
        );
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &script).unwrap();
    Cmd::new("bash").arg("-n").arg(file.path()).run().expect("the bash completion parses");

    let zsh = agent(&["completions", "zsh"]);
    assert!(zsh.status.success() && zsh.stdout_str().starts_with("#compdef veza-agent"));
    let bad = agent(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn man_writes_one_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("man1");
    let out = agent(&["man", &target.display().to_string()]);
    assert!(out.status.success(), "{}", out.stderr_str());
    let mut want = vec!["veza-agent.1".to_string()];
    for s in subcommands() {
        // A subcommand with subcommands of its own gets a page for each of them too.
        for nested in commands_in(&agent(&[s.as_str(), "--help"]).stdout_str()) {
            want.push(format!("veza-agent-{s}-{nested}.1"));
        }
        want.push(format!("veza-agent-{s}.1"));
    }
    let mut got: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(out.stdout_str().lines().count(), want.len(), "one path printed per page");

    let main = read(&target.join("veza-agent.1"));
    for section in [".TH veza-agent 1", ".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION"] {
        assert!(main.contains(section), "missing {section}:\n{main}");
    }
    for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
        assert!(main.contains(&format!(".SH \"{section}\"")), "missing {section}:\n{main}");
    }
    let plan = read(&target.join("veza-agent-plan.1"));
    assert!(plan.contains("changes are pending"), "{plan}");
    // Writing again changes nothing (atomic, skipped when equal).
    let before = std::fs::metadata(target.join("veza-agent.1")).unwrap().modified().unwrap();
    assert!(agent(&["man", &target.display().to_string()]).status.success());
    let after = std::fs::metadata(target.join("veza-agent.1")).unwrap().modified().unwrap();
    assert_eq!(before, after);
}

// ------------------------------------------------------------------ the .deb

/// Builds the .deb from the binary under test; returns (tempdir holding it, path).
fn build_deb() -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();
    let stdout = Cmd::new(packaging("build-deb"))
        .args(["--fast", "--binary", AGENT, "--out"])
        .arg(out.path())
        .timeout(Duration::from_secs(300))
        .run_stdout()
        .expect("packaging/build-deb succeeds");
    let deb = PathBuf::from(stdout.trim());
    let size = std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "packaging: built {} ({} KiB) in {:?}",
        deb.display(),
        size / 1024,
        started.elapsed()
    );
    (out, deb)
}

/// `dpkg-deb OPTION DEB [ARGS]`.
fn dpkg_deb(option: &str, deb: &Path, args: &[&str]) -> String {
    Cmd::new("dpkg-deb")
        .arg(option)
        .arg(deb)
        .args(args)
        .run_stdout()
        .expect("dpkg-deb reads the package")
}

/// Runs `script` with `sh -c` in the container; returns (exit code, stdout + stderr).
fn sh(c: &TestContainer, script: &str) -> (i32, String) {
    let out = c.exec(&["sh", "-c", script]).expect("incus exec runs");
    (out.status.code().unwrap_or(-1), format!("{}{}", out.stdout_str(), out.stderr_str()))
}

fn sh_ok(c: &TestContainer, script: &str) -> String {
    let (code, out) = sh(c, script);
    assert_eq!(code, 0, "`{script}` failed in {}:\n{out}", c.name());
    out
}

fn wait_for(c: &TestContainer, what: &str, script: &str, timeout: Duration) -> String {
    let started = Instant::now();
    loop {
        let (code, out) = sh(c, script);
        if code == 0 {
            return out;
        }
        assert!(started.elapsed() < timeout, "{what}: still not true after {timeout:?}:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const HOST: &str = "pkgtest";

/// A signed manifests repository served over smart HTTP on the host's 127.0.0.1: one
/// signed commit with a valid manifest for `HOST`. Returns the server (stops on drop),
/// the repository URL and the allowed_signers that trusts the commit.
fn signed_manifests_repo(dir: &Path) -> (GitHttpServer, String, String) {
    let key = SigningKey::generate(&dir.join("keys"), "forgejo").expect("ssh-keygen makes a key");
    let repos = dir.join("repos");
    let repo = RepoBuilder::with_name(&repos, "manifests.git").expect("git makes a repository");
    let manifest = format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: pkg, host: {HOST}}}\n"
    );
    repo.commit_files_signed(&key, &[("manifests/pkg.yaml", &manifest)], "first")
        .expect("a signed commit");
    let server = GitHttpServer::start(&repos).expect("the smart-HTTP server starts");
    let url = server.url("manifests.git");
    (server, url, allowed_signers(&[("forgejo@forge.example", &key)]))
}

/// What the sandbox of the real unit must allow the agent and its children to do, and
/// what it must refuse. Runs as the unit's ExecStart through a drop-in.
const SANDBOX_PROBE: &str = r#"#!/bin/sh
set -eu
fail() { echo "probe: $*"; exit 1; }
# allowed
echo ok >/var/lib/veza-agent/probe
echo '# probe' >/etc/systemd/system/veza-probe.service
echo '# probe' >/etc/haproxy/probe.cfg
echo probe >/var/lib/haproxy/probe
echo 'probe 1' >/var/lib/prometheus/node-exporter/probe.prom  # owned by nobody: CAP_DAC_OVERRIDE
haproxy -c -q -f /etc/haproxy/haproxy.cfg
systemctl daemon-reload
systemctl show -p ActiveState veza-agent.service >/dev/null
test -S /run/systemd/private || fail "no PID 1 socket"
test -r /etc/veza-agent/config.yaml || fail "config not readable"
# refused
if echo x >/usr/probe 2>/dev/null; then fail "/usr is writable"; fi
if echo x >/etc/veza-agent/probe 2>/dev/null; then fail "/etc/veza-agent is writable"; fi
if ls /root >/dev/null 2>&1 && test -n "$(ls -A /root)"; then fail "/root is visible"; fi
# the bounding set is CAP_DAC_OVERRIDE (bit 1) alone
grep -q '^CapBnd:[[:space:]]*0000000000000002$' /proc/self/status ||
    fail "capabilities: $(grep Cap /proc/self/status | tr '\n' ' ')"
grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || fail "NoNewPrivileges is off"
rm -f /var/lib/veza-agent/probe /etc/systemd/system/veza-probe.service /etc/haproxy/probe.cfg \
    /var/lib/haproxy/probe /var/lib/prometheus/node-exporter/probe.prom
echo "probe: sandbox ok"
"#;

#[test]
fn the_deb_installs_runs_under_systemd_and_uninstalls_cleanly_in_a_debian_container() {
    veza_testkit::require_host().unwrap();
    let (_built, deb) = build_deb();

    // The package as dpkg sees it.
    let control = dpkg_deb("--field", &deb, &[]);
    assert!(control.contains("Package: veza-agent\n"), "{control}");
    let depends = dpkg_deb("--field", &deb, &["Depends"])
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or_default().to_string())
        .collect::<Vec<_>>();
    for needed in ["libc6", "curl", "ca-certificates"] {
        assert!(depends.iter().any(|d| d == needed), "Depends lacks {needed}: {depends:?}");
    }
    // gix fetches over rustls in process: no libcurl (and its TLS libraries) linked.
    assert!(!depends.iter().any(|d| d.starts_with("libcurl")), "libcurl linked: {depends:?}");
    assert!(!depends.iter().any(|d| d == "git"), "the agent fetches in-process: {depends:?}");
    let contents = dpkg_deb("--contents", &deb, &[]);
    for path in [
        "./usr/bin/veza-agent",
        "./lib/systemd/system/veza-agent.service",
        "./etc/veza-agent/config.yaml",
        "./usr/lib/tmpfiles.d/veza-agent.conf",
        "./usr/share/bash-completion/completions/veza-agent",
        "./usr/share/zsh/vendor-completions/_veza-agent",
        "./usr/share/man/man1/veza-agent.1.gz",
        "./usr/share/man/man1/veza-agent-run.1.gz",
        "./usr/share/doc/veza-agent/README.md",
        "./usr/share/doc/veza-agent/copyright",
        "./usr/share/doc/veza-agent/runbook.md",
        "./usr/share/doc/veza-agent/haproxy-master-socket.conf",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} not packaged:\n{contents}");
    }
    assert!(
        contents.lines().all(|l| l.contains(" root/root ")),
        "every file is owned by root:\n{contents}"
    );

    let c = TestContainer::debian().unwrap();
    c.push_file(&deb, "/tmp/veza-agent.deb", 0o644).unwrap();

    // Install: dependencies are already in the image; the service stays off.
    let started = Instant::now();
    let out = sh_ok(&c, "dpkg -i /tmp/veza-agent.deb 2>&1");
    let install_time = started.elapsed();
    assert!(out.contains("installed but not started"), "postinst hint missing:\n{out}");
    assert_eq!(sh(&c, "systemctl is-enabled veza-agent").1.trim(), "disabled");
    assert_eq!(sh(&c, "systemctl is-active veza-agent").1.trim(), "inactive");
    sh_ok(&c, "test -d /var/lib/veza-agent && test $(stat -c %a /var/lib/veza-agent) = 700");
    let verify =
        sh(&c, "systemd-analyze verify --man=no /lib/systemd/system/veza-agent.service 2>&1");
    assert_eq!(verify, (0, String::new()), "systemd-analyze verify inside the container");
    sh_ok(
        &c,
        "for p in veza-agent veza-agent-run; do test -s /usr/share/man/man1/$p.1.gz || exit 1; done",
    );
    let version = sh_ok(&c, "veza-agent --version");
    assert!(version.starts_with("veza-agent "), "{version}");

    // A trust root, and the signed repository reached from inside the container on its
    // own 127.0.0.1 through an Incus proxy device (bind=instance) to the host's server.
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, signers) = signed_manifests_repo(dir.path());
    let port = url.split(':').nth(2).and_then(|p| p.split('/').next()).unwrap().to_string();
    let hop = format!("tcp:127.0.0.1:{port}");
    c.add_device(
        "manifests",
        &[("type", "proxy"), ("listen", &hop), ("connect", &hop), ("bind", "instance")],
    )
    .unwrap();
    c.push_bytes(signers.as_bytes(), "/etc/veza-agent/allowed_signers", 0o644).unwrap();
    let config = format!(
        "host: {HOST}\nsource:\n  remotes: [\"{url}\"]\n  manifests: [manifests/pkg.yaml]\n\
         trust:\n  allowed_signers: /etc/veza-agent/allowed_signers\npoll:\n  interval: 1h\n"
    );
    c.push_bytes(config.as_bytes(), "/etc/veza-agent/config.yaml", 0o644).unwrap();

    // The agent under its own unit: enabled and started as the runbook says.
    sh_ok(&c, "systemctl enable --now veza-agent 2>&1");
    wait_for(&c, "the agent is active", "systemctl is-active veza-agent", Duration::from_secs(20));
    // Its first sync fetched the signed commit into the mirror inside the sandbox and
    // verified its signature; with nothing applied yet and no Incus in this container to
    // hold the anti-rollback mark, it refuses to use it unchecked and records that.
    let status = wait_for(
        &c,
        "the first sync is recorded",
        "veza-agent status --json >/tmp/status.json; \
         grep -q 'anti-rollback mark' /tmp/status.json && cat /tmp/status.json",
        Duration::from_secs(30),
    );
    let v: serde_json::Value =
        serde_json::from_str(status.trim()).unwrap_or_else(|e| panic!("{e}: {status}"));
    let reason = v["state"]["last_run"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cannot read the anti-rollback mark") && reason.contains("Incus"),
        "{v:#}"
    );
    sh_ok(&c, "test -n \"$(ls /var/lib/veza-agent/mirror.git/objects/pack/*.pack)\"");
    let (code, text) = sh(&c, "veza-agent status");
    assert_eq!(code, 1, "status: attention (the sync cannot reach Incus here):\n{text}");
    assert!(text.starts_with("NEEDS ATTENTION: "), "{text}");
    assert!(text.contains("last sync failed: cannot read the anti-rollback mark"), "{text}");
    // The control socket answers `sync` through the sandbox.
    let (code, text) = sh(&c, "veza-agent sync --timeout 60");
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("failed"), "{text}");
    let journal = sh_ok(&c, "journalctl -u veza-agent --no-pager -o cat");
    assert!(journal.contains("veza-agent running"), "{journal}");
    assert_eq!(sh(&c, "systemctl is-active veza-agent").1.trim(), "active", "{journal}");

    // The sandbox allows what the agent and its children do, and nothing more.
    c.push_bytes(SANDBOX_PROBE.as_bytes(), "/usr/local/lib/veza-probe", 0o755).unwrap();
    sh_ok(
        &c,
        "mkdir -p /var/lib/prometheus/node-exporter && chown nobody:nogroup /var/lib/prometheus/node-exporter && \
         chmod 755 /var/lib/prometheus/node-exporter && mkdir -p /etc/systemd/system/veza-agent.service.d && \
         printf '[Service]\\nExecStart=\\nExecStart=/usr/local/lib/veza-probe\\nRestart=no\\n' \
           >/etc/systemd/system/veza-agent.service.d/probe.conf && systemctl daemon-reload && \
         systemctl restart veza-agent",
    );
    wait_for(
        &c,
        "the sandbox probe ends",
        "test \"$(systemctl show -p ActiveState --value veza-agent)\" != active",
        Duration::from_secs(30),
    );
    let probe = sh_ok(&c, "journalctl -u veza-agent --no-pager -o cat | grep '^probe:' || true");
    let result = sh_ok(&c, "systemctl show -p Result,ExecMainStatus veza-agent");
    assert!(
        probe.contains("probe: sandbox ok") && result.contains("Result=success"),
        "{probe}\n{result}"
    );
    sh_ok(&c, "rm -r /etc/systemd/system/veza-agent.service.d && systemctl daemon-reload");
    sh_ok(&c, "systemctl start veza-agent");
    wait_for(&c, "the agent is back", "systemctl is-active veza-agent", Duration::from_secs(20));

    // Upgrade over the running agent: it is restarted (not left stopped), and the
    // operator's edited config.yaml (a conffile) is kept without a prompt.
    let pid = sh_ok(&c, "systemctl show -p MainPID --value veza-agent");
    let started = Instant::now();
    sh_ok(&c, "dpkg -i /tmp/veza-agent.deb 2>&1 </dev/null");
    let upgrade_time = started.elapsed();
    wait_for(&c, "the agent runs again", "systemctl is-active veza-agent", Duration::from_secs(20));
    let restarted = sh_ok(&c, "systemctl show -p MainPID --value veza-agent");
    assert_ne!(pid.trim(), restarted.trim(), "postinst try-restart on upgrade");
    sh_ok(&c, &format!("grep -qx 'host: {HOST}' /etc/veza-agent/config.yaml"));

    // Remove: stopped, disabled, binary and unit gone; config, trust root, state stay.
    let started = Instant::now();
    sh_ok(&c, "dpkg -r veza-agent 2>&1");
    let remove_time = started.elapsed();
    sh_ok(
        &c,
        "! test -e /usr/bin/veza-agent && ! test -e /lib/systemd/system/veza-agent.service && \
         ! test -e /etc/systemd/system/multi-user.target.wants/veza-agent.service && \
         ! pgrep -x veza-agent && test -f /etc/veza-agent/config.yaml && \
         test -f /etc/veza-agent/allowed_signers && test -f /var/lib/veza-agent/state.json",
    );
    let (_, units) = sh(&c, "systemctl list-unit-files veza-agent.service --no-legend");
    assert!(units.trim().is_empty(), "unit still known after remove: {units}");
    assert_ne!(sh(&c, "systemctl is-active veza-agent").1.trim(), "active");

    // Purge: state and packaged config gone; the operator's trust root stays.
    let started = Instant::now();
    sh_ok(&c, "dpkg -P veza-agent 2>&1");
    let purge_time = started.elapsed();
    sh_ok(
        &c,
        "! test -e /var/lib/veza-agent && ! test -e /etc/veza-agent/config.yaml && \
         test -f /etc/veza-agent/allowed_signers && ! dpkg -s veza-agent >/dev/null 2>&1",
    );
    sh_ok(&c, "test -z \"$(dpkg -L veza-agent 2>/dev/null)\"");
    eprintln!(
        "packaging: dpkg -i {install_time:?}, upgrade {upgrade_time:?}, dpkg -r {remove_time:?}, dpkg -P {purge_time:?}"
    );
}
