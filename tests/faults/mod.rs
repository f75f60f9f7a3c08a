//! Fault injection on the real test host, driven only through the `veza-agent` command
//! line (see `veza_testkit::demo`). Each case injects one fault, then asserts what the
//! operator sees — exit code, `veza-agent status --json`, `history --json` — and that
//! nothing was lost: the edge still serves the last good release, `haproxy -c` accepts
//! the live config, and the state file loads.
//!
//! | case | fault |
//! |---|---|
//! | `kill_9_at_apply_step_*` | kill -9 of `apply` at each step of a promotion plan |
//! | `kill_9_between_edge_swap_and_reload` | kill -9 after the new edge config is on disk, before HAProxy's reload is confirmed |
//! | `kill_9_while_incus_creates_the_instance` | kill -9 while incusd still runs the agent's create (and start) of a slot, then an immediate `apply` |
//! | `incus_socket_unreachable` | the Incus socket path leads nowhere (state present: the failure is counted and the metrics written; state wiped: the anti-rollback mark cannot be read, so the sync fails closed) |
//! | `incusd_goes_away_mid_sync` | incusd's socket vanishes mid-apply and comes back (a proxy the test owns; the shared incusd is never restarted) |
//! | `haproxy_rejects_the_rendered_config` | a manifest whose edge HAProxy refuses (TLS certificate directory missing) |
//! | `live_edge_config_corrupted_on_disk` | garbage written over the live `haproxy.cfg` |
//! | `slot_slow_to_become_healthy` / `slot_never_healthy_rolls_back_without_moving_traffic` / `health_flaps_during_promotion` | a green slot whose `/health` is late, never 200, or flaps |
//! | `git_remote_down_or_failing` / `git_remote_stalls` | smart-HTTP remote closing connections, answering 500, or never answering |
//! | `git_remote_sends_an_oversized_pack` | a pack above `source.max_pack_bytes` |
//! | `force_push_with_state_and_mirror_deleted` | history rewritten, then the state directory and the mirror deleted |
//! | `forged_tag_named_like_the_applied_commit` | branch rewound, a tag named like the applied commit's id pointing at the old commit, state directory deleted |
//! | `state_dir_disk_full` | the state directory on a full 32 MiB tmpfs (mirror and artifact cache live there); status must say so although nothing could be recorded |
//! | `corrupted_state_file` | garbage in `state.json` (and in the journal): `status` reports it and writes nothing; the next sync moves it aside under the lock |
//! | `two_agents_at_once` | two `apply` started together |
//! | `manifest_over_the_size_cap` | a signed manifest above 1 MiB |
//! | `yaml_alias_bomb` | a signed billion-laughs manifest |
//! | `yaml_nesting_bomb` | a signed manifest nesting 300 000 block sequences (600 kB) |
//! | `huge_or_malformed_signature` | a commit whose `gpgsig` is garbage, 1 MB, or a truncated SSHSIG |
//!
//! Setup applies (not the fault under test) retry once: the shared incusd sometimes
//! stalls a container start for a minute while other engineers' suites load it.
//!
//! Every case writes its row to `target/faults/` and regenerates
//! `target/faults-report.md` (cases, the fault, what the operator saw, the outcome):
//! `veza_testkit::report::Case`.
//!
//! One file a fault family: `kill.rs` (kill -9 at a precise moment), `incus.rs` (Incus
//! going away), `edge.rs`, `health.rs` (health gates), `source.rs` (the git remote and
//! rewritten history), `state.rs` (the state directory, two agents), `hostile.rs`
//! (hostile manifests and signatures). This file: what they share.

mod edge;
mod health;
mod hostile;
mod incus;
mod kill;
mod source;
mod state;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use veza_host::process::Cmd;
use veza_testkit::cli::Run;
use veza_testkit::demo::DemoHost;
use veza_testkit::report::Case;

const AGENT: &str = env!("CARGO_BIN_EXE_veza-agent");
/// The unhealthy flag the gated manifests point the test app at (inside the slot).
const UNHEALTHY: &str = "/tmp/veza-unhealthy";

/// A fault case on a fresh host: the report row first (a host that cannot be built is a
/// `FAIL` row), then the host.
fn case_on_host(name: &str, fault: &str) -> (Case, DemoHost) {
    let case = Case::new(name, fault);
    (case, host())
}

/// [`case_on_host`] at the [`baseline`]; also returns the baseline commit.
fn case_at_baseline(name: &str, fault: &str) -> (Case, DemoHost, String) {
    let (case, h) = case_on_host(name, fault);
    let a = baseline(&h);
    (case, h, a)
}

/// [`case_at_baseline`], then a new signed commit waiting on the branch that adds green
/// (blue still active). Returns the case, the host, the baseline commit and the new one.
fn case_with_green_added(name: &str, fault: &str) -> (Case, DemoHost, String, String) {
    let (case, h, a) = case_at_baseline(name, fault);
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "add green").expect("commit");
    (case, h, a, b)
}

/// [`case_at_baseline`], then green's promotion committed and waiting. Returns the case,
/// the host, the baseline commit and the promotion's.
fn case_with_green_promoted(name: &str, fault: &str) -> (Case, DemoHost, String, String) {
    let (case, h, a) = case_at_baseline(name, fault);
    let b = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
    (case, h, a, b)
}

fn host() -> DemoHost {
    DemoHost::new(Path::new(AGENT), None)
        .unwrap_or_else(|e| panic!("the real test host is not usable: {e:#}"))
}

/// `veza-agent ARGS --config CONFIG`.
fn agent(config: &Path, args: &[&str]) -> Run {
    veza_testkit::cli::agent(Path::new(AGENT), config, args)
}

fn apply_ok(h: &DemoHost) -> Run {
    let r = agent(&h.config_path, &["apply"]);
    assert_eq!(r.code, 0, "apply failed:\n{r}");
    r
}

/// `apply` for a case's setup (not the fault under test): one retry, as the daemon's
/// next poll would, when the shared incusd was too busy (it serves every engineer's
/// tests on this host and sometimes stalls a container start for a minute).
fn setup_apply(config: &Path) -> Run {
    let first = agent(config, &["apply"]);
    if first.code == 0 {
        return first;
    }
    println!("setup apply failed, retrying once:\n{first}");
    let second = agent(config, &["apply"]);
    assert_eq!(second.code, 0, "setup apply failed twice:\n{first}\n{second}");
    second
}

fn status(config: &Path) -> Value {
    let r = agent(config, &["status", "--json"]);
    assert!(r.code == 0 || r.code == 1, "status --json exits 0 or 1:\n{r}");
    serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("status --json: {e}\n{r}"))
}

/// History entries, newest first.
fn history(config: &Path) -> Vec<Value> {
    let r = agent(config, &["history", "--json", "-n", "200"]);
    assert_eq!(r.code, 0, "{r}");
    r.out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("history line {l}: {e}")))
        .collect()
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Writes a variant of the host's configuration (`edit` over its text) and returns its path.
fn config_variant(h: &DemoHost, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(&h.config_path).expect("read the demo config");
    let path = h.dir.join(format!("config-{name}.yaml"));
    std::fs::write(&path, edit(text)).expect("write the config variant");
    path
}

/// Replaces exactly one occurrence of `from` in `text`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "`{from}` must occur once in:\n{text}");
    text.replacen(from, to, 1)
}

/// The demo manifest with the test app's unhealthy flag at [`UNHEALTHY`] (outside the
/// release directory, so it survives a redeploy and can be set before a gate starts).
fn gated_manifest(h: &DemoHost, active: &str, blue: Option<usize>, green: Option<usize>) -> String {
    replace_once(
        &h.manifest(active, blue, green),
        "    port: 8080\n",
        &format!(
            "    port: 8080\n    start: \"VEZA_UNHEALTHY_FILE={UNHEALTHY} {{dir}}/start.sh\"\n"
        ),
    )
}

/// The state directory of the host's main configuration.
fn state_dir(h: &DemoHost) -> PathBuf {
    h.dir.join("state")
}

/// Asserts nothing was lost: the live edge config passes `haproxy -c`, the edge serves
/// `release`, and the state file in `state` loads.
fn assert_nothing_lost(h: &DemoHost, state: &Path, release: &str) {
    veza_testkit::haproxy::check_config(&h.haproxy.config_path())
        .unwrap_or_else(|e| panic!("the live edge config is not valid: {e:#}"));
    let served = h.served_release().unwrap_or_else(|e| panic!("the edge does not serve: {e:#}"));
    assert_eq!(served, release, "the edge serves the last good release");
    veza_state::Reader::new(state)
        .load()
        .unwrap_or_else(|e| panic!("the state file does not load: {e}"));
}

/// `incus exec NAME -- sh -c SCRIPT`.
fn incus_sh(name: &str, script: &str) -> Result<String, String> {
    Cmd::new("incus")
        .args(["exec", name, "--", "sh", "-c", script])
        .timeout(Duration::from_secs(60))
        .run_stdout()
        .map_err(|e| e.to_string())
}

fn set_unhealthy(slot: &str, unhealthy: bool) {
    let script =
        if unhealthy { format!("touch {UNHEALTHY}") } else { format!("rm -f {UNHEALTHY}") };
    incus_sh(slot, &script).unwrap_or_else(|e| panic!("flag {slot} unhealthy={unhealthy}: {e}"));
}

/// The edge config file's bytes.
fn edge_bytes(h: &DemoHost) -> Vec<u8> {
    std::fs::read(h.haproxy.config_path()).expect("read the live edge config")
}

/// Blue on release 0, applied: the baseline every case starts from. Returns the commit.
fn baseline(h: &DemoHost) -> String {
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue on release 0").expect("commit");
    setup_apply(&h.config_path);
    assert_eq!(h.served_release().expect("edge serves"), h.releases[0].id);
    a
}

/// `apply` expected to exit 1 (a refused or failed revision), what it printed recorded in
/// the case. Returns the run and the live edge config's bytes from before it.
fn apply_exits_1(h: &DemoHost, case: &mut Case) -> (Run, Vec<u8>) {
    let edge_before = edge_bytes(h);
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    (r, edge_before)
}

/// Asserts a revision was refused and nothing changed: exit 1, `rejected <commit>`,
/// `status` names it, a `rejected` history entry, the edge file and served release intact.
fn assert_rejected(h: &DemoHost, case: &mut Case, commit: &str, needle: &str, good: &str) {
    let (r, edge_before) = apply_exits_1(h, case);
    assert!(r.out.starts_with(&format!("rejected {}", short(commit))), "{r}");
    assert!(r.out.contains(needle), "expected `{needle}`:\n{r}");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "attention", "{st:#}");
    assert!(st["headline"].as_str().is_some_and(|s| s.contains("rejected")), "{st:#}");
    assert_eq!(st["state"]["rejected"]["commit"], commit, "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], good, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    let hist = history(&h.config_path);
    assert_eq!(hist[0]["outcome"], "rejected", "{hist:#?}");
    assert_eq!(hist[0]["commit"], commit);
    assert_eq!(edge_bytes(h), edge_before, "the edge config was not touched");
    assert_nothing_lost(h, &state_dir(h), &h.releases[0].id);
    // Rejected once, recorded once: a second sync repeats the verdict without a new entry.
    let again = agent(&h.config_path, &["apply"]);
    assert_eq!(again.code, 1, "{again}");
    assert_eq!(history(&h.config_path).len(), hist.len(), "no duplicate history entry");
}

/// Starts `veza-agent apply` detached; returns its pid.
fn spawn_apply(config: &Path, log: &Path) -> u32 {
    veza_testkit::cli::spawn(Path::new(AGENT), config, "apply", log)
}

fn journal(state: &Path) -> Option<veza_state::Journal> {
    veza_state::Reader::new(state).journal()
}
