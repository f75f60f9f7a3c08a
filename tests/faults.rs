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
//! | `huge_or_malformed_signature` | a commit whose `gpgsig` is garbage, 1 MB, or a truncated SSHSIG |
//!
//! Setup applies (not the fault under test) retry once: the shared incusd sometimes
//! stalls a container start for a minute while other engineers' suites load it.
//!
//! Every case writes its row to `target/faults/` and regenerates
//! `target/faults-report.md` (cases, the fault, what the operator saw, the outcome).

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use veza_host::process::Cmd;
use veza_testkit::app::process_alive;
use veza_testkit::demo::DemoHost;
use veza_testkit::http::Fault;
use veza_testkit::traffic::Traffic;

const AGENT: &str = env!("CARGO_BIN_EXE_veza-agent");
/// The unhealthy flag the gated manifests point the test app at (inside the slot).
const UNHEALTHY: &str = "/tmp/veza-unhealthy";

// ---------------------------------------------------------------------------------------
// The report.

/// One case of the report: what was injected and what the operator saw. Dropping it
/// writes its row (`pass`, or `FAIL` when the test is panicking).
struct Case {
    name: String,
    fault: String,
    seen: Vec<String>,
    started: Instant,
}

impl Case {
    fn new(name: &str, fault: &str) -> Case {
        Case { name: name.into(), fault: fault.into(), seen: Vec::new(), started: Instant::now() }
    }

    /// Records one observation (shortened for the table).
    fn saw(&mut self, what: impl AsRef<str>) {
        let one_line = what.as_ref().split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = one_line.chars().take(170).collect();
        println!("[{}] {short}", self.name);
        self.seen.push(if short.len() < one_line.len() { format!("{short}…") } else { short });
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() { "**FAIL**" } else { "pass" };
        let cell = |s: &str| s.replace('|', "\\|");
        let row = format!(
            "| {} | {} | {} | {} | {:.0} s |\n",
            cell(&self.name),
            cell(&self.fault),
            cell(&self.seen.join("; ")),
            outcome,
            self.started.elapsed().as_secs_f64()
        );
        let dir = target_dir().join("faults");
        let slug: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let _ = std::fs::create_dir_all(&dir);
        let _ = write_replace(&dir.join(format!("{slug}.md")), row.as_bytes());
        let report = render_report(&dir);
        let _ = write_replace(&target_dir().join("faults-report.md"), report.as_bytes());
        println!("\n{report}");
    }
}

/// `target/` of this build (the test executable is `target/<profile>/deps/<name>`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The report from every row file: latest run of each case, sorted by name.
fn render_report(dir: &Path) -> String {
    let mut rows: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    rows.sort();
    let failed = rows.iter().filter(|r| r.contains("**FAIL**")).count();
    format!(
        "# Fault-injection report\n\n`cargo test --test integration faults::` on the real test host \
         (tests/faults.rs). {} cases: {} pass, {} fail.\n\n\
         | case | fault injected | what the operator saw | outcome | time |\n|---|---|---|---|---|\n{}",
        rows.len(),
        rows.len() - failed,
        failed,
        rows.concat()
    )
}

// ---------------------------------------------------------------------------------------
// Driving the agent.

fn host() -> DemoHost {
    DemoHost::new(Path::new(AGENT), None)
        .unwrap_or_else(|e| panic!("the real test host is not usable: {e:#}"))
}

/// What one `veza-agent` invocation printed.
#[derive(Debug)]
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.out, self.err)
    }
}

/// `veza-agent ARGS --config CONFIG`.
fn agent(config: &Path, args: &[&str]) -> Run {
    let out = Cmd::new(AGENT)
        .args(args)
        .arg("--config")
        .arg(config)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap_or_else(|e| panic!("veza-agent {args:?}: {e}"));
    Run { code: out.status.code().unwrap_or(-1), out: out.stdout_str(), err: out.stderr_str() }
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

/// Asserts a revision was refused and nothing changed: exit 1, `rejected <commit>`,
/// `status` names it, a `rejected` history entry, the edge file and served release intact.
fn assert_rejected(h: &DemoHost, case: &mut Case, commit: &str, needle: &str, good: &str) {
    let edge_before = edge_bytes(h);
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
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

// ---------------------------------------------------------------------------------------
// Killing the agent at a precise moment.

/// SIGKILL for `pid` with no process start in between: a shell blocked reading a FIFO
/// kills the moment [`Killer::fire`] writes to it.
struct Killer {
    fifo: PathBuf,
    shell: u32,
}

impl Killer {
    fn arm(dir: &Path, pid: u32) -> Killer {
        let fifo = dir.join(format!("kill-{pid}.fifo"));
        Cmd::new("mkfifo").arg(&fifo).run().expect("mkfifo");
        let shell = Cmd::new("sh")
            .arg("-c")
            .arg(format!("read _ < '{}'; kill -9 {pid}", fifo.display()))
            .spawn_daemon(None)
            .expect("spawn the killer");
        Killer { fifo, shell }
    }

    fn fire(&self) {
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.fifo).expect("open fifo");
        f.write_all(b"now\n").expect("write fifo");
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        veza_testkit::app::kill_pid(self.shell, "KILL", Duration::from_millis(100));
        let _ = std::fs::remove_file(&self.fifo);
    }
}

/// Starts `veza-agent apply` detached; returns its pid.
fn spawn_apply(config: &Path, log: &Path) -> u32 {
    Cmd::new(AGENT)
        .args(["apply", "--config"])
        .arg(config)
        .spawn_daemon(Some(log))
        .expect("spawn veza-agent apply")
}

fn wait_dead(pid: u32) {
    let start = Instant::now();
    while process_alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(10), "pid {pid} survived kill -9");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn journal(state: &Path) -> Option<veza_state::Journal> {
    veza_state::Reader::new(state).journal()
}

/// Steps of the promotion plan the kill cases interrupt (blue on 0 → green on 1 active).
const PROMOTION_STEPS: usize = 5;

/// One attempt at killing `apply` while step `k` runs. `Err` when the journal had
/// already moved past `k` at the first look (a step too short to catch): retried.
fn try_kill_at_step(k: usize, case: &mut Case) -> Result<(), String> {
    let h = host();
    // 200 requests through the edge make the verification step last long enough to
    // be caught; the gate step is held open with the unhealthy flag when it is the target.
    let cfg = std::fs::read_to_string(&h.config_path).expect("config");
    std::fs::write(
        &h.config_path,
        replace_once(&cfg, "verify_requests: 5", "verify_requests: 200"),
    )
    .expect("write config");
    let a = h.commit(&gated_manifest(&h, "blue", Some(0), None), "A: blue").expect("commit");
    setup_apply(&h.config_path);
    let b = h.commit(&gated_manifest(&h, "green", Some(0), Some(1)), "B: green").expect("commit");
    let green = h.slots()[1].clone();
    let state = state_dir(&h);
    let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
    let killer = Killer::arm(&h.dir, pid);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut flagged = false;
    let steps = loop {
        assert!(Instant::now() < deadline, "apply never reached step {k}");
        let Some(j) = journal(&state) else {
            assert!(
                process_alive(pid),
                "apply ended before step {k}:\n{}",
                std::fs::read_to_string(h.dir.join("killed-apply.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        assert_eq!(j.steps.len(), PROMOTION_STEPS, "the promotion plan changed: {:#?}", j.steps);
        let gate = j.steps.iter().position(|s| s.starts_with("wait for")).expect("a gate step");
        if j.done > k {
            return Err(format!("journal at step {} before step {k} was seen", j.done));
        }
        if k == gate && !flagged && j.done >= 1 {
            // The slot exists (its creation was step 0): hold the gate open.
            set_unhealthy(&green, true);
            flagged = true;
        }
        if j.done == k {
            killer.fire();
            break j.steps;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    wait_dead(pid);
    if flagged {
        set_unhealthy(&green, false);
    }
    case.saw(format!("killed in `{}`", steps[k]));

    // What the operator sees: the interrupted step, and no record of B yet.
    let st = status(&h.config_path);
    assert_eq!(st["interrupted"], steps[k], "{st:#}");
    assert!(st["problems"].to_string().contains("was interrupted"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    let hist = history(&h.config_path);
    assert_eq!(hist[0]["commit"], a, "no record of the interrupted commit: {hist:#?}");
    // Nothing lost: a valid edge serving blue (or green when killed after the switch).
    let switch = steps.iter().position(|s| s.starts_with("switch edge")).expect("switch step");
    let served = if k > switch { &h.releases[1].id } else { &h.releases[0].id };
    if k == switch {
        // Killed while installing: HAProxy runs either config, both valid and healthy.
        veza_testkit::haproxy::check_config(&h.haproxy.config_path()).expect("valid edge");
        let now = h.served_release().expect("the edge serves");
        assert!(now == h.releases[0].id || now == h.releases[1].id, "{now}");
        veza_state::Reader::new(&state).load().expect("state loads");
    } else {
        assert_nothing_lost(&h, &state, served);
    }
    // The next apply converges, and the one after changes nothing.
    let r = apply_ok(&h);
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    assert_eq!(h.served_release().expect("edge serves"), h.releases[1].id, "{r}");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["interrupted"], Value::Null, "{st:#}");
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "green", "{st:#}");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw(format!(
        "status showed `interrupted: {}`; next apply converged; then no-change",
        steps[k]
    ));
    Ok(())
}

fn kill_at_step(k: usize) {
    let mut case = Case::new(
        &format!("kill -9 at apply step {k}"),
        &format!(
            "kill -9 of `apply` while step {k} of {PROMOTION_STEPS} runs (journal `done: {k}`)"
        ),
    );
    for attempt in 1..=3 {
        match try_kill_at_step(k, &mut case) {
            Ok(()) => return,
            Err(why) => case.saw(format!("attempt {attempt} missed the step ({why}); retried")),
        }
    }
    panic!("could not catch step {k} in 3 attempts");
}

#[test]
fn kill_9_at_apply_step_0() {
    kill_at_step(0);
}
#[test]
fn kill_9_at_apply_step_1() {
    kill_at_step(1);
}
#[test]
fn kill_9_at_apply_step_2() {
    kill_at_step(2);
}
#[test]
fn kill_9_at_apply_step_3() {
    kill_at_step(3);
}
#[test]
fn kill_9_at_apply_step_4() {
    kill_at_step(4);
}

#[test]
fn kill_9_between_edge_swap_and_reload() {
    let mut case = Case::new(
        "kill -9 between edge swap and reload",
        "kill -9 while `<haproxy.cfg>.reload-pending` exists (new config on disk, reload not confirmed)",
    );
    let mut caught = false;
    for attempt in 1..=4 {
        let h = host();
        baseline(&h);
        let b = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
        let marker = PathBuf::from(format!("{}.reload-pending", h.haproxy.config_path().display()));
        let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
        let killer = Killer::arm(&h.dir, pid);
        let deadline = Instant::now() + Duration::from_secs(240);
        while process_alive(pid) && Instant::now() < deadline {
            // The marker is written just before the rename: wait for the new file too.
            if marker.exists()
                && String::from_utf8_lossy(&edge_bytes(&h)).contains(&h.releases[1].id[..10])
            {
                killer.fire();
                caught = true;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        wait_dead(pid);
        if !caught {
            case.saw(format!("attempt {attempt}: the swap window was missed; retried"));
            continue;
        }
        let served = h.served_release().expect("edge serves");
        case.saw(format!(
            "killed with the new config on disk; HAProxy served {}",
            if served == h.releases[0].id { "blue (reload not done)" } else { "green (reloaded)" }
        ));
        veza_testkit::haproxy::check_config(&h.haproxy.config_path()).expect("valid live config");
        let r = apply_ok(&h);
        case.saw(format!("next apply: {}", r.out.trim()));
        assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
        assert!(!marker.exists(), "the reload marker was consumed");
        assert_eq!(
            h.served_release().expect("edge serves"),
            h.releases[1].id,
            "after the next apply HAProxy must serve green, as status says:\n{r}"
        );
        let st = status(&h.config_path);
        assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "green", "{st:#}");
        let r = apply_ok(&h);
        assert!(r.out.starts_with("no-change"), "{r}");
        break;
    }
    assert!(caught, "never caught the window between the swap and the reload");
}

// ---------------------------------------------------------------------------------------
// Incus going away.

#[test]
fn incus_socket_unreachable() {
    let mut case = Case::new(
        "Incus unreachable",
        "config points at an Incus socket that does not exist (stands in for incusd down; the shared incusd is never restarted)",
    );
    let h = host();
    let a = baseline(&h);
    h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
    let cfg = config_variant(&h, "no-incus", |t| {
        replace_once(
            &t,
            "state_dir:",
            "incus: {socket: /nonexistent/veza/incus.socket}\nstate_dir:",
        )
    });
    let edge_before = edge_bytes(&h);
    let metrics = h.dir.join("veza-agent.prom");
    let _ = std::fs::remove_file(&metrics);
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("failed"), "{r}");
    assert!(r.out.contains("Incus") || r.out.contains("incus"), "names Incus:\n{r}");
    // A sync that fails while observing is recorded like any other: counted as failed,
    // and the metrics file is written.
    let text = std::fs::read_to_string(&metrics).expect("metrics written on an observe failure");
    assert!(text.lines().any(|l| l == "veza_agent_sync_failures 1"), "{text}");
    case.saw("metrics written, veza_agent_sync_failures 1");
    assert!(r.out.contains("/nonexistent/veza/incus.socket"), "names the socket:\n{r}");
    let st = status(&cfg);
    assert!(st["problems"].to_string().contains("last sync failed"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(edge_bytes(&h), edge_before);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    // The state file gone too: the anti-rollback mark in Incus cannot be read, so the
    // revision is not used unchecked (fail closed), and the sync says why.
    let wiped = config_variant(&h, "no-incus-no-state", |t| {
        let state = state_dir(&h).display().to_string();
        replace_once(
            &t,
            &format!("state_dir: {state}\n"),
            &format!(
                "incus: {{socket: /nonexistent/veza/incus.socket}}\nstate_dir: {state}-wiped\n"
            ),
        )
    });
    let r = agent(&wiped, &["apply"]);
    case.saw(format!("state wiped too: apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("failed"), "{r}");
    assert!(r.out.contains("cannot read the anti-rollback mark"), "{r}");
    assert!(r.out.contains(&format!("user.veza-agent.applied.{}", h.env)), "names the key:\n{r}");
    assert_eq!(status(&wiped)["state"]["applied"], Value::Null);
    assert_eq!(edge_bytes(&h), edge_before);
    // With Incus back (the right socket), the same commit applies.
    let r = apply_ok(&h);
    assert!(r.out.starts_with("applied"), "{r}");
    assert_eq!(h.served_release().expect("serves"), h.releases[1].id);
    case.saw("with the real socket the next apply converged");
}

/// A unix-socket proxy in front of the shared incusd socket. [`IncusProxy::cut`] resets
/// every connection and removes the socket, as incusd does when it restarts; the real
/// daemon, used by other tests, is never touched.
struct IncusProxy {
    path: PathBuf,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyShared {
    up: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<UnixStream>>,
    served: AtomicU64,
}

const INCUS_SOCKET: &str = "/var/lib/incus/unix.socket";

impl IncusProxy {
    fn start(path: &Path) -> IncusProxy {
        let shared = Arc::new(ProxyShared {
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
        });
        let (s, p) = (shared.clone(), path.to_path_buf());
        let accept = std::thread::spawn(move || proxy_loop(&p, &s));
        let start = Instant::now();
        while !path.exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "proxy socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        IncusProxy { path: path.to_path_buf(), shared, accept: Some(accept) }
    }

    fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        if let Ok(mut conns) = self.shared.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
        let start = Instant::now();
        while self.path.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn restore(&self) {
        self.shared.up.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while !self.path.exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for IncusProxy {
    fn drop(&mut self) {
        self.cut();
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn proxy_loop(path: &Path, shared: &Arc<ProxyShared>) {
    let mut listener: Option<UnixListener> = None;
    while !shared.stop.load(Ordering::SeqCst) {
        let up = shared.up.load(Ordering::SeqCst);
        if up && listener.is_none() {
            let _ = std::fs::remove_file(path);
            listener = UnixListener::bind(path).ok();
            if let Some(l) = &listener {
                let _ = l.set_nonblocking(true);
            }
        }
        if !up && listener.is_some() {
            listener = None;
            let _ = std::fs::remove_file(path);
        }
        match listener.as_ref().map(UnixListener::accept) {
            Some(Ok((client, _))) => {
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = UnixStream::connect(INCUS_SOCKET) else { continue };
                shared.served.fetch_add(1, Ordering::SeqCst);
                if let (Ok(mut c1), Ok(mut c2), Ok(mut u1), Ok(mut u2)) = (
                    client.try_clone(),
                    client.try_clone(),
                    upstream.try_clone(),
                    upstream.try_clone(),
                ) {
                    if let Ok(mut conns) = shared.conns.lock() {
                        conns.push(client);
                        conns.push(upstream);
                    }
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c1, &mut u1);
                        let _ = u1.shutdown(std::net::Shutdown::Write);
                    });
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut u2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn incusd_goes_away_mid_sync() {
    let mut case = Case::new(
        "incusd restarted mid-sync",
        "the Incus socket (a proxy the test owns) resets every connection and disappears during the deploy step, back 3 s later",
    );
    let h = host();
    let proxy = IncusProxy::start(&h.dir.join("incus-proxy.sock"));
    let cfg = config_variant(&h, "proxy", |t| {
        replace_once(
            &t,
            "state_dir:",
            &format!("incus: {{socket: {}}}\nstate_dir:", proxy.path.display()),
        )
    });
    // Same state dir as the main config: the baseline through the proxy.
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue").expect("commit");
    setup_apply(&cfg);
    let b = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
    let state = state_dir(&h);
    let log = h.dir.join("cut-apply.log");
    let pid = spawn_apply(&cfg, &log);
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "apply never reached its deploy step");
        if journal(&state)
            .is_some_and(|j| j.current.is_some_and(|c| c.starts_with("deploy release")))
        {
            break;
        }
        assert!(
            process_alive(pid),
            "apply ended early:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    proxy.cut();
    std::thread::sleep(Duration::from_secs(3));
    proxy.restore();
    let start = Instant::now();
    while process_alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(240), "apply hangs after incusd came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = status(&cfg);
    let last = &st["state"]["last_run"];
    case.saw(format!(
        "the interrupted apply ended `{}`: {}",
        last["outcome"].as_str().unwrap_or("?"),
        last["reason"].as_str().unwrap_or("")
    ));
    match last["outcome"].as_str() {
        Some("failed") => {
            assert!(st["problems"].to_string().contains("last sync failed"), "{st:#}");
            assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
            assert_nothing_lost(&h, &state, &h.releases[0].id);
        }
        Some("applied") => assert_nothing_lost(&h, &state, &h.releases[1].id),
        other => panic!("unexpected outcome {other:?} after incusd went away:\n{st:#}"),
    }
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("next apply: {}", r.out.trim()));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.served_release().expect("serves"), h.releases[1].id);
    let st = status(&cfg);
    assert_eq!(st["state"]["applied"]["commit"], b, "{st:#}");
    assert_eq!(st["health"], "ok", "{st:#}");
    let r = agent(&cfg, &["apply"]);
    assert!(r.out.starts_with("no-change"), "{r}");
    assert!(proxy.shared.served.load(Ordering::SeqCst) > 0, "the agent went through the proxy");
}

// ---------------------------------------------------------------------------------------
// The edge.

#[test]
fn haproxy_rejects_the_rendered_config() {
    let mut case = Case::new(
        "HAProxy rejects the rendered config",
        "signed manifest turning on TLS with a certificate directory that does not exist: renders fine, `haproxy -c` refuses it",
    );
    let h = host();
    let a = baseline(&h);
    let https = veza_testkit::free_port().expect("port");
    let tls = replace_once(
        &h.manifest("blue", Some(0), None),
        &format!("listen: {{http: \"127.0.0.1:{}\"}}", h.edge_port),
        &format!(
            "listen: {{http: \"127.0.0.1:{}\", https: \"127.0.0.1:{https}\"}}\n  tls: {{cert_dir: /nonexistent/veza-certs, redirect_http: false}}",
            h.edge_port
        ),
    );
    let bad = h.commit(&tls, "turn on TLS").expect("commit");
    let edge_before = edge_bytes(&h);
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("failed {}", short(&bad))), "{r}");
    assert!(r.out.contains("edge config"), "names the step:\n{r}");
    assert!(r.out.contains("/nonexistent/veza-certs"), "carries HAProxy's diagnostic:\n{r}");
    let st = status(&h.config_path);
    assert!(st["problems"].to_string().contains("last sync failed"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    assert_eq!(history(&h.config_path)[0]["outcome"], "failed");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(edge_bytes(&h), edge_before, "the live config is untouched");
    let candidate = PathBuf::from(format!("{}.candidate", h.haproxy.config_path().display()));
    assert!(!candidate.exists(), "the rejected candidate was removed");
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    // The fix (a revert) applies.
    h.commit(&h.manifest("blue", Some(0), Some(1)), "revert TLS, add green").expect("commit");
    let r = apply_ok(&h);
    case.saw(format!("after a revert commit: {}", r.out.trim()));
    assert_eq!(status(&h.config_path)["health"], "ok");
}

#[test]
fn live_edge_config_corrupted_on_disk() {
    let mut case = Case::new(
        "live edge config corrupted on disk",
        "garbage written over the live haproxy.cfg behind the agent's back",
    );
    let h = host();
    baseline(&h);
    let good = edge_bytes(&h);
    std::fs::write(h.haproxy.config_path(), b"frontend {{ broken\n  bind nowhere\n\x00garbage\n")
        .expect("corrupt the edge");
    assert!(veza_testkit::haproxy::check_config(&h.haproxy.config_path()).is_err());
    // HAProxy still serves from memory.
    assert_eq!(h.served_release().expect("serves"), h.releases[0].id);
    let (code, out, _) = {
        let r = agent(&h.config_path, &["plan"]);
        (r.code, r.out, r.err)
    };
    case.saw(format!("plan exit {code}: {}", out.lines().last().unwrap_or("").trim()));
    assert_eq!(code, 2, "the drift is a pending change:\n{out}");
    assert!(out.contains("edge config"), "{out}");
    let r = apply_ok(&h);
    case.saw(format!("apply: {}", r.out.trim()));
    assert_eq!(edge_bytes(&h), good, "the agent wrote the desired config back");
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    assert_eq!(status(&h.config_path)["health"], "ok");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw("repaired and reloaded; the next apply is no-change");
}

// ---------------------------------------------------------------------------------------
// Health gates.

/// Blue (release 0) and green (release 1) deployed, blue active, through the gated manifest.
fn two_colors(h: &DemoHost) {
    h.commit(&gated_manifest(h, "blue", Some(0), Some(1)), "blue and green").expect("commit");
    setup_apply(&h.config_path);
    assert_eq!(h.served_release().expect("serves"), h.releases[0].id);
}

#[test]
fn slot_slow_to_become_healthy() {
    let mut case = Case::new(
        "health: slot slow to become healthy",
        "green's /health answers 503 for the first 4 s of the promotion, then 200 (gate limit 15 s)",
    );
    let h = host();
    two_colors(&h);
    let green = h.slots()[1].clone();
    set_unhealthy(&green, true);
    let b =
        h.commit(&gated_manifest(&h, "green", Some(0), Some(1)), "promote green").expect("commit");
    let healer = {
        let green = green.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(4));
            set_unhealthy(&green, false);
        })
    };
    let started = Instant::now();
    let r = apply_ok(&h);
    let took = started.elapsed();
    healer.join().expect("healer");
    case.saw(format!("apply after {:.1} s: {}", took.as_secs_f64(), r.out.trim()));
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    assert!(took >= Duration::from_secs(4), "the gate waited for the slot ({took:?})");
    assert_eq!(h.served_release().expect("serves"), h.releases[1].id);
    assert_eq!(status(&h.config_path)["health"], "ok");
}

#[test]
fn slot_never_healthy_rolls_back_without_moving_traffic() {
    let mut case = Case::new(
        "health: slot never healthy",
        "green's /health answers 503 for the whole promotion (gate limit 15 s) while a client loads the edge",
    );
    let h = host();
    two_colors(&h);
    let green = h.slots()[1].clone();
    set_unhealthy(&green, true);
    let b =
        h.commit(&gated_manifest(&h, "green", Some(0), Some(1)), "promote green").expect("commit");
    let load = Traffic::start(&h, 1, Duration::from_millis(5));
    let r = agent(&h.config_path, &["apply"]);
    let (ok, bad) = load.stop();
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    case.saw(format!("{ok} requests during the attempt, {bad} failed"));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("rolled-back {}", short(&b))), "{r}");
    assert!(r.out.contains("traffic was not moved"), "{r}");
    assert_eq!(bad, 0, "no request failed while the gate held");
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
    let st = status(&h.config_path);
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["active"], "blue", "{st:#}");
    assert_eq!(st["state"]["envs"][&h.env]["apps"]["hello"]["last_outcome"], "rolled-back");
    set_unhealthy(&green, false);
}

#[test]
fn health_flaps_during_promotion() {
    let mut case = Case::new(
        "health: flapping slot",
        "green's /health is 200 for 0.3 s then 503 for 1.7 s, repeating, during the promotion; a client loads the edge during it and for 4 s after",
    );
    let h = host();
    two_colors(&h);
    let green = h.slots()[1].clone();
    let b =
        h.commit(&gated_manifest(&h, "green", Some(0), Some(1)), "promote green").expect("commit");
    // The flapping runs inside the slot (bounded: 60 cycles, or until the stop file).
    let flapper = Cmd::new("incus")
        .args(["exec", &green, "--", "sh", "-c"])
        .arg(format!(
            "i=0; while [ $i -lt 60 ] && [ ! -e /tmp/veza-flap-stop ]; do \
             rm -f {UNHEALTHY}; usleep 300000; touch {UNHEALTHY}; usleep 1700000; i=$((i+1)); done"
        ))
        .spawn_daemon(None)
        .expect("start the flapper");
    std::thread::sleep(Duration::from_secs(2));
    let load = Traffic::start(&h, 1, Duration::from_millis(5));
    let r = agent(&h.config_path, &["apply"]);
    let (ok_during, bad_during) = load.counts();
    // HAProxy's own checks (inter 1 s, fall 2) judge the slot now serving.
    std::thread::sleep(Duration::from_secs(4));
    let (ok_total, bad_total) = load.stop();
    incus_sh(&green, "touch /tmp/veza-flap-stop").expect("stop the flapper");
    let start = Instant::now();
    while process_alive(flapper) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    set_unhealthy(&green, false);
    std::thread::sleep(Duration::from_secs(3));
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    case.saw(format!(
        "{ok_during} ok / {bad_during} failed requests during the apply; {} ok / {} failed in the 4 s after",
        ok_total - ok_during,
        bad_total - bad_during
    ));
    let st = status(&h.config_path);
    let app = &st["state"]["envs"][&h.env]["apps"]["hello"];
    match r.out.split_whitespace().next() {
        Some("applied") => {
            assert_eq!(r.code, 0, "{r}");
            assert!(r.out.contains(short(&b)), "{r}");
            assert_eq!(app["active"], "green", "{st:#}");
        }
        Some("rolled-back") => {
            assert_eq!(r.code, 1, "{r}");
            assert_eq!(app["active"], "blue", "{st:#}");
        }
        _ => panic!("a flapping slot must end applied or rolled back:\n{r}"),
    }
    // Never traffic on a DOWN slot: no request failed, during the switch or after it.
    assert_eq!(bad_total, 0, "requests failed through the edge:\n{r}");
    // What status says is what the edge serves.
    let color = app["active"].as_str().unwrap_or("");
    let release = app["releases"][color].as_str().unwrap_or("").to_string();
    assert_nothing_lost(&h, &state_dir(&h), &release);
}

// ---------------------------------------------------------------------------------------
// The git remote.

/// Asserts a sync failed on fetch and nothing changed.
fn assert_fetch_failed(h: &DemoHost, config: &Path, case: &mut Case, applied: &str, what: &str) {
    let edge_before = edge_bytes(h);
    let r = agent(config, &["apply"]);
    case.saw(format!("{what}: apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with("failed"), "{r}");
    assert!(r.out.contains("fetch"), "says it was the fetch:\n{r}");
    let st = status(config);
    assert!(st["state"]["last_fetch_error"].is_string(), "{st:#}");
    assert!(st["problems"].to_string().contains("last sync failed: fetch"), "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], applied, "{st:#}");
    assert_eq!(edge_bytes(h), edge_before);
    assert_nothing_lost(h, &state_dir(h), &h.releases[0].id);
}

#[test]
fn git_remote_down_or_failing() {
    let mut case = Case::new(
        "git remote down / failing",
        "smart-HTTP remote closes every connection, then answers 500; a new signed commit waits behind it",
    );
    let h = host();
    let a = baseline(&h);
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "add green").expect("commit");
    h.http.set_fault(Fault::Down);
    assert_fetch_failed(&h, &h.config_path, &mut case, &a, "remote down");
    h.http.set_fault(Fault::Error500);
    assert_fetch_failed(&h, &h.config_path, &mut case, &a, "remote 500");
    h.http.set_fault(Fault::None);
    let r = apply_ok(&h);
    case.saw(format!("remote back: {}", r.out.trim()));
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["last_fetch_error"], Value::Null, "{st:#}");
}

#[test]
fn git_remote_stalls() {
    let mut case = Case::new(
        "git remote stalls",
        "smart-HTTP remote accepts and never answers; fetch_timeout 2 s",
    );
    let h = host();
    let a = baseline(&h);
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "add green").expect("commit");
    let cfg = config_variant(&h, "short-fetch", |t| {
        replace_once(&t, "fetch_timeout: 20s", "fetch_timeout: 2s")
    });
    h.http.set_fault(Fault::Stall);
    let started = Instant::now();
    assert_fetch_failed(&h, &cfg, &mut case, &a, "remote stalls");
    let took = started.elapsed();
    case.saw(format!("the stalled sync gave up after {:.1} s", took.as_secs_f64()));
    assert!(took < Duration::from_secs(30), "the fetch timeout bounds a stalled remote ({took:?})");
    h.http.set_fault(Fault::None);
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("remote back: {}", r.out.trim()));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    assert_eq!(status(&cfg)["health"], "ok");
}

#[test]
fn git_remote_sends_an_oversized_pack() {
    let mut case = Case::new(
        "oversized pack",
        "a signed commit with a 3 MiB incompressible blob; source.max_pack_bytes 1 MiB",
    );
    let h = host();
    let a = baseline(&h);
    std::fs::write(h.repo.work().join("big.bin"), veza_testkit::repo::noise(3 << 20, 11))
        .expect("write the blob");
    let big = h.repo.commit_signed(&h.forgejo, "a 3 MiB blob").expect("commit");
    let cfg = config_variant(&h, "small-pack", |t| {
        replace_once(&t, "fetch_timeout: 20s", "fetch_timeout: 20s\n  max_pack_bytes: 1048576")
    });
    assert_fetch_failed(&h, &cfg, &mut case, &a, "pack over the cap");
    let st = status(&cfg);
    let error = st["state"]["last_fetch_error"].as_str().unwrap_or("");
    assert!(
        error.contains("larger than the cap of 1048576 bytes (source.max_pack_bytes)"),
        "{st:#}"
    );
    // Under the default cap (512 MiB) the same commit applies.
    let r = apply_ok(&h);
    case.saw(format!("default cap: {}", r.out.trim()));
    assert!(r.out.starts_with(&format!("applied {}", short(&big))), "{r}");
}

#[test]
fn force_push_with_state_and_mirror_deleted() {
    let mut case = Case::new(
        "force-push, state dir and mirror deleted",
        "branch rewritten to an older commit plus a new signed commit on top; state dir (with the mirror) deleted",
    );
    let h = host();
    let a = baseline(&h);
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "B").expect("commit");
    apply_ok(&h);
    // The mirror alone deleted: re-fetched, nothing to do.
    std::fs::remove_dir_all(state_dir(&h).join("mirror.git")).expect("delete the mirror");
    let r = apply_ok(&h);
    case.saw(format!("mirror deleted alone: {}", r.out.trim()));
    assert!(r.out.starts_with("no-change"), "{r}");
    // Rewrite history: A, then a new signed commit that does not contain B.
    h.repo.force_reset(&a).expect("force-push");
    let c = h.commit(&h.manifest("blue", Some(1), None), "C, rewritten history").expect("commit");
    std::fs::remove_dir_all(state_dir(&h)).expect("delete the state dir");
    assert!(!state_dir(&h).join("mirror.git").exists());
    let edge_before = edge_bytes(&h);
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("rejected {}", short(&c))), "{r}");
    assert!(r.out.contains(&b), "names the high-water commit kept in Incus:\n{r}");
    assert!(r.out.contains("force-pushed") || r.out.contains("does not descend"), "{r}");
    let st = status(&h.config_path);
    assert_eq!(st["state"]["rejected"]["commit"], c, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(history(&h.config_path)[0]["outcome"], "rejected");
    assert_eq!(edge_bytes(&h), edge_before);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
}

#[test]
fn forged_tag_named_like_the_applied_commit() {
    let mut case = Case::new(
        "forged tag named like the applied commit",
        "branch rewound to an older signed commit A, plus a tag named like the applied commit B's id pointing at A; state dir (with the mirror) deleted, Incus still holds B",
    );
    let h = host();
    let a = baseline(&h);
    // B: same manifest, a new signed commit; applying it moves the high-water mark to B.
    let b = h.commit(&h.manifest("blue", Some(0), None), "B").expect("commit");
    let r = apply_ok(&h);
    assert!(r.out.starts_with(&format!("applied {}", short(&b))), "{r}");
    // The forge rewinds main to A and names a ref after B's id: a ref is not a commit.
    h.repo.force_reset(&a).expect("force-push");
    h.repo.set_ref(&format!("refs/tags/{b}"), &a).expect("forged tag");
    std::fs::remove_dir_all(state_dir(&h)).expect("delete the state dir");
    let edge_before = edge_bytes(&h);
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.out.starts_with(&format!("rejected {}", short(&a))), "{r}");
    assert!(r.out.contains("refusing a rollback or force-push"), "{r}");
    assert!(r.out.contains(&b), "names the high-water commit kept in Incus:\n{r}");
    let st = status(&h.config_path);
    assert_eq!(st["state"]["rejected"]["commit"], a, "{st:#}");
    assert_eq!(st["state"]["applied"], Value::Null, "{st:#}");
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(history(&h.config_path)[0]["outcome"], "rejected");
    assert_eq!(edge_bytes(&h), edge_before);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[0].id);
}

// ---------------------------------------------------------------------------------------
// The state directory.

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mountpoint");
        Cmd::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .run()
            .expect("mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Cmd::new("umount").arg("-l").arg(&self.0).timeout(Duration::from_secs(30)).run();
    }
}

#[test]
fn state_dir_disk_full() {
    let mut case = Case::new(
        "state dir disk full",
        "state_dir on a 32 MiB tmpfs (it holds the mirror and the artifact cache), filled to the last byte before a sync with a new commit",
    );
    let h = host();
    let small = h.dir.join("small-state");
    let fs = Tmpfs::mount(&small, "32m");
    let cfg = config_variant(&h, "small-state", |t| {
        replace_once(
            &t,
            &format!("state_dir: {}", state_dir(&h).display()),
            &format!("state_dir: {}", small.display()),
        )
    });
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue").expect("commit");
    setup_apply(&cfg);
    let state_before = std::fs::read(small.join("state.json")).expect("state written");
    let b = h.commit(&h.manifest("blue", Some(0), Some(1)), "add green").expect("commit");
    // Fill the file system.
    let filler = small.join("filler");
    {
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
        let _ = f.sync_all();
    }
    let r = agent(&cfg, &["apply"]);
    case.saw(format!(
        "apply exit {}: {} {}",
        r.code,
        r.out.trim(),
        r.err.lines().find(|l| l.contains("error")).unwrap_or("")
    ));
    assert_ne!(r.code, 0, "a full state dir is an error:\n{r}");
    let all = format!("{}{}", r.out, r.err);
    assert!(all.contains("No space left on device"), "the error says the disk is full:\n{r}");
    // No corruption: the last good state is intact and loads; no temp files left behind.
    assert_eq!(std::fs::read(small.join("state.json")).expect("state"), state_before);
    let loaded = veza_state::Reader::new(&small).load().expect("state loads");
    assert_eq!(loaded.applied.map(|x| x.commit).as_deref(), Some(a.as_str()));
    let st = status(&cfg);
    case.saw(format!("status: {}", st["headline"].as_str().unwrap_or("")));
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    // The failed sync could not be recorded (no space), but `status` sees the full disk
    // itself and says what to do.
    assert_eq!(st["health"], "attention", "{st:#}");
    let headline = st["headline"].as_str().unwrap_or_default();
    assert!(
        headline.starts_with("NEEDS ATTENTION: disk full: 0 KiB free for the state directory"),
        "{headline}"
    );
    let leftovers: Vec<String> = std::fs::read_dir(&small)
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp") || n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // The edge was not left half-done.
    veza_testkit::haproxy::check_config(&h.haproxy.config_path()).expect("valid edge");
    let served = h.served_release().expect("serves");
    assert_eq!(served, h.releases[0].id);
    // Space back: the next sync applies B.
    std::fs::remove_file(&filler).expect("free space");
    let r = agent(&cfg, &["apply"]);
    case.saw(format!("space freed: {}", r.out.trim()));
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains(short(&b)), "{r}");
    let st = status(&cfg);
    assert_eq!(st["state"]["applied"]["commit"], b);
    assert_eq!(st["health"], "ok", "{st:#}");
    drop(fs);
}

#[test]
fn corrupted_state_file() {
    let mut case = Case::new("corrupted state file", "garbage in state.json and in journal.json");
    let h = host();
    let a = baseline(&h);
    let state = state_dir(&h);
    std::fs::write(state.join("state.json"), b"{\"schema_version\": 1, \"applied\": {\x00garbage")
        .expect("corrupt");
    std::fs::write(state.join("journal.json"), b"not json").expect("corrupt journal");
    let r = agent(&h.config_path, &["status", "--json"]);
    case.saw(format!("status exit {}: {}", r.code, r.err.trim()));
    assert_eq!(r.code, 2, "{r}");
    assert!(r.err.contains("corrupt"), "{r}");
    let moved_aside = || -> Vec<PathBuf> {
        std::fs::read_dir(&state)
            .expect("ls")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("state.json.corrupt-"))
            })
            .collect()
    };
    // `status` only reads: the corrupt file stays where it is until a sync holds the lock.
    assert!(moved_aside().is_empty(), "status moved the state file: {:?}", moved_aside());
    assert!(state.join("state.json").exists(), "status removed the state file");
    // The next sync recovers: moves it aside under the lock, then the high-water mark in
    // Incus, the live state, no change to the host.
    let edge_before = edge_bytes(&h);
    let r = apply_ok(&h);
    case.saw(format!("next apply: {}", r.out.trim()));
    let moved = moved_aside();
    assert_eq!(moved.len(), 1, "the corrupt file was moved aside once: {moved:?}");
    assert!(std::fs::read(&moved[0]).expect("kept").ends_with(b"garbage"), "kept for forensics");
    assert!(r.out.contains(short(&a)), "{r}");
    assert_eq!(edge_bytes(&h), edge_before, "the host was not touched");
    let st = status(&h.config_path);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], a, "{st:#}");
    assert_eq!(st["interrupted"], Value::Null, "{st:#}");
    assert_nothing_lost(&h, &state, &h.releases[0].id);
    // Corrupt again, straight into apply: it reports and recovers in the same run.
    std::fs::write(state.join("state.json"), b"[1, 2").expect("corrupt");
    let r = apply_ok(&h);
    case.saw(format!(
        "corrupt again, apply directly: {} ({})",
        r.out.trim(),
        r.err.lines().find(|l| l.contains("corrupt")).unwrap_or("no log line")
    ));
    assert!(r.err.contains("corrupt"), "the apply reports the corruption:\n{r}");
    assert_eq!(status(&h.config_path)["health"], "ok");
}

#[test]
fn two_agents_at_once() {
    let mut case = Case::new(
        "two agents at once",
        "two `veza-agent apply` started together on a pending promotion",
    );
    let h = host();
    baseline(&h);
    let b = h.commit(&h.manifest("green", Some(0), Some(1)), "promote green").expect("commit");
    let cfg = h.config_path.clone();
    let runs: Vec<JoinHandle<Run>> = (0..2)
        .map(|_| {
            let cfg = cfg.clone();
            std::thread::spawn(move || agent(&cfg, &["apply"]))
        })
        .collect();
    let runs: Vec<Run> = runs.into_iter().map(|t| t.join().expect("apply thread")).collect();
    let winners: Vec<&Run> = runs.iter().filter(|r| r.code == 0).collect();
    let losers: Vec<&Run> = runs.iter().filter(|r| r.code != 0).collect();
    for r in &runs {
        case.saw(format!(
            "exit {}: {}{}",
            r.code,
            r.out.trim(),
            r.err.lines().next().unwrap_or("")
        ));
    }
    assert_eq!(winners.len(), 1, "exactly one applies:\n{}\n{}", runs[0], runs[1]);
    assert_eq!(losers.len(), 1);
    assert!(winners[0].out.starts_with(&format!("applied {}", short(&b))), "{}", winners[0]);
    assert_eq!(losers[0].code, 1, "{}", losers[0]);
    assert!(losers[0].err.contains("another veza-agent is running"), "{}", losers[0]);
    let hist = history(&cfg);
    assert_eq!(hist.iter().filter(|e| e["commit"] == b.as_str()).count(), 1, "{hist:#?}");
    let st = status(&cfg);
    assert_eq!(st["health"], "ok", "{st:#}");
    assert_eq!(st["state"]["applied"]["commit"], b);
    assert_nothing_lost(&h, &state_dir(&h), &h.releases[1].id);
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
}

// ---------------------------------------------------------------------------------------
// Hostile input.

#[test]
fn manifest_over_the_size_cap() {
    let mut case =
        Case::new("manifest over the size cap", "signed manifest of 1.1 MiB (limit 1 MiB)");
    let h = host();
    let a = baseline(&h);
    let mut big = h.manifest("blue", Some(0), Some(1));
    while big.len() <= 1024 * 1024 + 100 * 1024 {
        big.push_str("# padding padding padding padding padding padding padding padding padding\n");
    }
    let c = h.commit(&big, "huge manifest").expect("commit");
    assert_rejected(&h, &mut case, &c, "above the limit of 1048576 bytes", &a);
}

#[test]
fn yaml_alias_bomb() {
    let mut case =
        Case::new("YAML alias bomb", "signed billion-laughs manifest (9 levels × 9 aliases)");
    let h = host();
    let a = baseline(&h);
    let mut bomb = format!(
        "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: {e}, host: {e}}}\n",
        e = h.env
    );
    bomb.push_str(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        bomb.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    let started = Instant::now();
    let c = h.commit(&bomb, "alias bomb").expect("commit");
    assert_rejected(&h, &mut case, &c, "YAML aliases; refusing to expand them", &a);
    assert!(started.elapsed() < Duration::from_secs(60), "rejected without expanding");
}

#[test]
fn huge_or_malformed_signature() {
    let mut case = Case::new(
        "huge or malformed signature",
        "commits whose gpgsig is garbage text, a 1 MB armor, and a valid armor with a truncated SSHSIG blob",
    );
    let h = host();
    let a = baseline(&h);
    // The crafted commits reuse A's tree: it is in the served repository, and the
    // signature is refused before any manifest is read.
    let tree =
        h.repo.git_bare(&["rev-parse", &format!("{a}^{{tree}}")]).expect("tree").trim().to_string();
    let head = h.repo.git_bare(&["rev-parse", "refs/heads/main"]).expect("head").trim().to_string();
    assert_eq!(head, a);
    let replace_sig = |raw: Vec<u8>, sig: &str| -> Vec<u8> {
        let text = String::from_utf8(raw).expect("commit is text");
        let start = text.find("gpgsig ").expect("gpgsig header");
        let end = text.find(" -----END SSH SIGNATURE-----\n").expect("armor end")
            + " -----END SSH SIGNATURE-----\n".len();
        let continued: String = sig.lines().collect::<Vec<_>>().join("\n ");
        format!("{}gpgsig {continued}\n{}", &text[..start], &text[end..]).into_bytes()
    };
    let garbage =
        "-----BEGIN SSH SIGNATURE-----\nthis is not base64 !!!\n-----END SSH SIGNATURE-----";
    let huge = format!(
        "-----BEGIN SSH SIGNATURE-----\n{}-----END SSH SIGNATURE-----",
        "U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg\n".repeat(1024 * 1024 / 45)
    );
    let truncated = "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg\n-----END SSH SIGNATURE-----";
    let cases: [(&str, &str, &str); 3] = [
        ("garbage armor", garbage, "non-base64"),
        ("1 MB armor", &huge, "larger than"),
        ("truncated SSHSIG", truncated, "signature"),
    ];
    for (what, sig, needle) in cases {
        let id = h
            .repo
            .craft_signed_commit(&h.forgejo, "git", &tree, &[&a], what, |raw| replace_sig(raw, sig))
            .expect("craft commit");
        h.repo.set_ref("refs/heads/main", &id).expect("point main at it");
        case.saw(format!("{what} ({} bytes of signature)", sig.len()));
        assert_rejected(&h, &mut case, &id, needle, &a);
        assert!(agent(&h.config_path, &["apply"]).out.contains("signature"));
    }
    // The branch back on the applied commit: in sync, nothing to do.
    h.repo.set_ref("refs/heads/main", &a).expect("reset main");
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw("branch back on the applied commit: no-change");
}

// ---------------------------------------------------------------------------------------
// Incus operations left running by a killed agent.

/// The Incus operations still running on `instance` (`GET /1.0/operations?recursion=1`):
/// their descriptions. An error (incusd slow under the other suites' load) is an empty
/// answer: the caller polls again within its deadline.
fn running_operations_on(instance: &str) -> Vec<String> {
    let Ok(out) = Cmd::new("incus")
        .args(["query", "/1.0/operations?recursion=1"])
        .timeout(Duration::from_secs(10))
        .run_stdout()
    else {
        return Vec::new();
    };
    let ops: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let me = Value::from(format!("/1.0/instances/{instance}"));
    ops["running"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["resources"]["instances"].as_array().is_some_and(|v| v.contains(&me)))
        .filter_map(|op| op["description"].as_str().map(str::to_string))
        .collect()
}

/// One attempt: kill `apply` while incusd runs its create of the blue slot, then apply
/// at once. `Err` when the create was over before it was seen (retried).
fn try_kill_while_incus_creates(case: &mut Case) -> Result<(), String> {
    let h = host();
    let a = h.commit(&h.manifest("blue", Some(0), None), "blue on release 0").expect("commit");
    let blue = h.slots()[0].clone();
    let pid = spawn_apply(&h.config_path, &h.dir.join("killed-apply.log"));
    let killer = Killer::arm(&h.dir, pid);
    let state = state_dir(&h);
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        assert!(Instant::now() < deadline, "incusd never showed the creation of {blue}");
        if !process_alive(pid) || journal(&state).is_some_and(|j| j.done > 0) {
            return Err("the create was over before it was seen".to_string());
        }
        let ops = running_operations_on(&blue);
        if ops.iter().any(|d| d == "Creating instance" || d == "Starting instance") {
            killer.fire();
            break ops;
        }
    };
    wait_dead(pid);
    case.saw(format!("killed while incusd ran `{}` on the slot", seen.join(", ")));
    let r = agent(&h.config_path, &["apply"]);
    case.saw(format!("next apply exit {}: {}", r.code, r.out.trim()));
    assert_eq!(r.code, 0, "the apply after the kill must wait for incusd's operation:\n{r}");
    assert!(r.out.starts_with(&format!("applied {}", short(&a))), "{r}");
    assert_eq!(h.served_release().expect("edge serves"), h.releases[0].id);
    let r = apply_ok(&h);
    assert!(r.out.starts_with("no-change"), "{r}");
    case.saw("the apply after that: no-change");
    Ok(())
}

#[test]
fn kill_9_while_incus_creates_the_instance() {
    let mut case = Case::new(
        "kill -9 while Incus creates the instance",
        "kill -9 of `apply` while incusd runs its `POST /1.0/instances` (create and start), then an immediate `apply`",
    );
    for attempt in 1..=3 {
        match try_kill_while_incus_creates(&mut case) {
            Ok(()) => return,
            Err(why) => case.saw(format!("attempt {attempt}: {why}; retried")),
        }
    }
    panic!("could not catch incusd's create in 3 attempts");
}
