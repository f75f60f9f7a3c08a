//! The daemon (`veza-agent run`) on the real test host: polling, `sync` requests, one
//! agent per host, SIGHUP with a bad configuration, drift correction, SIGTERM.

use std::time::{Duration, Instant};

use veza_host::process::Cmd;
use veza_testkit::demo::DemoHost;

fn host() -> DemoHost {
    DemoHost::new(std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent")), None)
        .unwrap_or_else(|e| panic!("the real test host is not usable: {e:#}"))
}

struct Daemon {
    pid: u32,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(h: &DemoHost) -> Daemon {
        let log = h.dir.join("daemon.log");
        let agent = std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent"));
        let pid = veza_testkit::cli::spawn(agent, &h.config_path, "run", &log);
        Daemon { pid, log }
    }

    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .is_ok_and(|s| s.contains(") Z "))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        Cmd::new("kill").args([&format!("-{sig}"), &self.pid.to_string()]).run().expect("kill");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = Cmd::new("kill").args(["-9", &self.pid.to_string()]).run();
        }
    }
}

impl Daemon {
    /// Polls `f` until it holds; on timeout fails with the daemon's log.
    fn wait_for(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out after {limit:?} waiting for {what}; daemon log:\n{}", self.log());
    }

    /// Waits until `status` says `commit` is applied on `h`.
    fn wait_applied(&self, h: &DemoHost, what: &str, limit: Duration, commit: &str) {
        self.wait_for(what, limit, || status(h)["state"]["applied"]["commit"] == commit);
    }

    /// SIGTERM, then waits for the daemon to exit.
    fn stop(&self) {
        self.signal("TERM");
        self.wait_for("the daemon to stop", Duration::from_secs(30), || !self.alive());
    }
}

/// Sets the host's poll interval to an hour: only something else can wake the daemon
/// within a test.
fn poll_hourly(h: &DemoHost) {
    let text = std::fs::read_to_string(&h.config_path).expect("config");
    assert!(text.contains("interval: 2s"), "{text}");
    std::fs::write(&h.config_path, text.replace("interval: 2s", "interval: 1h")).expect("config");
}

fn status(h: &DemoHost) -> serde_json::Value {
    let out = h.agent(&["status", "--json"]).expect("status runs");
    serde_json::from_str(&out.stdout_str()).unwrap_or(serde_json::Value::Null)
}

/// One slot is enough here: the promotion itself is proven by `e2e` (one-off `apply`) and
/// in-process (`veza-host`'s `apply/tests.rs`); what this proves is the daemon's wiring —
/// the poll, the lock, `sync` over the control socket, drift put back, reload and stop.
#[test]
fn daemon_polls_answers_sync_keeps_one_agent_and_stops_cleanly() {
    let h = host();
    let first = h.commit(&h.manifest("blue", Some(0), None), "blue").unwrap();
    let d = Daemon::start(&h);
    d.wait_applied(&h, "the first sync", Duration::from_secs(90), &first);
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);

    // Only one agent per host: a one-off apply is refused while the daemon holds the lock.
    let out = h.agent(&["apply"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_str());
    assert!(out.stderr_str().contains("another veza-agent is running"), "{}", out.stderr_str());

    // `sync` triggers a run now and reports its outcome (a new commit, nothing to change).
    let touched = format!("{}# touched\n", h.manifest("blue", Some(0), None));
    let second = h.commit(&touched, "a new commit").unwrap();
    let out = h.agent(&["sync"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout_str(), out.stderr_str());
    assert!(
        out.stdout_str().starts_with(&format!("applied {}", &second[..12]))
            || status(&h)["state"]["applied"]["commit"] == second,
        "{}",
        out.stdout_str()
    );

    // Drift: someone removes the serving slot's upstream proxy device by hand; the next
    // cycle puts it back (the edge serves blue again).
    let blue = format!("{}-hello-blue", h.env);
    Cmd::new("incus").args(["config", "device", "remove", &blue, "veza-upstream"]).run().unwrap();
    let out = h.agent(&["sync"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", out.stdout_str());
    let devices = Cmd::new("incus").args(["config", "device", "list", &blue]).run_stdout().unwrap();
    assert!(devices.contains("veza-upstream"), "drift was not corrected: {devices}");
    d.wait_for("blue to serve again", Duration::from_secs(30), || {
        h.served_release().is_ok_and(|r| r == h.releases[0].id)
    });

    // SIGHUP with an invalid configuration: rejected, the old one stays, syncs go on.
    let good = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(&h.config_path, good.replace("host:", "hots:")).unwrap();
    d.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&h.config_path, &good).unwrap();
    assert!(d.alive(), "the daemon died on a bad configuration:\n{}", d.log());
    assert!(d.log().contains("new configuration rejected"), "{}", d.log());
    let out = h.agent(&["sync"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", out.stdout_str());

    // SIGTERM: the daemon stops, removing its control socket and releasing the lock.
    d.stop();
    assert!(!h.dir.join("state/control.sock").exists());
    assert!(d.log().contains("veza-agent stopped"), "{}", d.log());
    let out = h.agent(&["apply"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "the lock was released: {}", out.stderr_str());
    assert!(out.stdout_str().starts_with("no-change"), "{}", out.stdout_str());
}

#[test]
fn sync_without_a_daemon_says_so() {
    let h = host();
    let out = h.agent(&["sync"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr_str().contains("no running veza-agent answers"), "{}", out.stderr_str());
}

#[test]
fn a_changed_configuration_wakes_the_daemon_without_waiting_for_the_poll() {
    let h = host();
    // Poll once an hour: only the file watch can wake the daemon within the test.
    poll_hourly(&h);
    let first = h.commit(&h.manifest("blue", Some(0), None), "blue").unwrap();
    let d = Daemon::start(&h);
    d.wait_applied(&h, "the first sync", Duration::from_secs(90), &first);
    // A new commit with nothing to change: only its sync can record it.
    let touched = format!("{}# touched\n", h.manifest("blue", Some(0), None));
    let second = h.commit(&touched, "a new commit").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let edited = std::fs::read_to_string(&h.config_path).unwrap() + "# edited by an operator\n";
    std::fs::write(&h.config_path, edited).unwrap();
    d.wait_applied(&h, "the sync woken by the config change", Duration::from_secs(60), &second);
    assert!(d.log().contains("configuration or trust root changed"), "{}", d.log());
    d.stop();
}

/// Refused credentials are not asked again at every poll (repeated 401s can lock the
/// forge account): the daemon backs off, and a fixed credentials file wakes it at once.
/// Polling hourly, only the file watch can make the second attempt within the test.
#[test]
fn refused_credentials_wait_for_a_change_of_the_credentials_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = host();
    poll_hourly(&h);
    let front = veza_testkit::http::TlsFront::start(h.http.addr()).expect("TLS front");
    let token = format!("tok{}Daemon", std::process::id());
    h.http.require_basic_auth(Some(("veza-agent", &token)));
    let first = h.commit(&h.manifest("blue", Some(0), None), "blue").unwrap();
    let creds = h.dir.join("credentials");
    std::fs::write(&creds, "veza-agent:wrong-token-xyz\n").unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let private =
        config.replacen(&h.http.url("manifests.git"), &front.url("manifests.git"), 1).replacen(
            "  branch: main\n",
            &format!(
                "  branch: main\n  ca_file: {}\n  credentials_file: {}\n",
                front.ca_file().display(),
                creds.display()
            ),
            1,
        );
    assert!(private.contains("https://127.0.0.1:") && private.contains("credentials_file"));
    std::fs::write(&h.config_path, private).unwrap();

    let d = Daemon::start(&h);
    d.wait_for("the refused first sync", Duration::from_secs(60), || {
        d.log().contains("the forge refused the credentials 1 time(s) in a row")
    });
    let refused =
        |h: &DemoHost| h.http.requests().iter().filter(|r| r.ends_with(" auth=wrong")).count();
    let asked = refused(&h);
    assert!(asked > 0, "{:#?}", h.http.requests());
    assert!(status(&h)["state"]["applied"].is_null());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(refused(&h), asked, "the refused credentials were sent again before any change");

    std::fs::write(&creds, format!("veza-agent:{token}\n")).unwrap();
    d.wait_applied(&h, "the sync woken by the credentials file", Duration::from_secs(60), &first);
    assert!(d.log().contains("(or the forge credentials); syncing now"), "{}", d.log());
    assert!(h.http.requests().iter().any(|r| r.ends_with(" auth=ok")));
    assert!(!d.log().contains(&token) && !d.log().contains("wrong-token-xyz"), "{}", d.log());
    d.stop();
}

/// A failed sync is retried after 5 s, not after the poll interval (an hour here): the
/// forge is down when the daemon starts, comes back, and the daemon applies on its own.
#[test]
fn a_failed_sync_is_retried_soon_not_at_the_next_poll() {
    let h = host();
    poll_hourly(&h);
    let first = h.commit(&h.manifest("blue", Some(0), None), "blue").unwrap();
    h.http.set_fault(veza_testkit::http::Fault::Down);
    let d = Daemon::start(&h);
    d.wait_for("the first (failing) sync", Duration::from_secs(60), || {
        d.log().contains("retrying in")
    });
    assert!(status(&h)["state"]["applied"].is_null());
    h.http.set_fault(veza_testkit::http::Fault::None);
    d.wait_applied(&h, "the retried sync", Duration::from_secs(60), &first);
    assert!(d.log().contains("sync failed 1 time(s) in a row; retrying in 5"), "{}", d.log());
    d.stop();
}

/// Issue 19: a suspended daemon goes on polling and planning but applies nothing across a
/// new signed commit; after `resume` the next poll applies it. The held change is an edge
/// change (the sticky cookie's name): holding a promotion is `e2e`'s suspend test.
#[test]
fn a_suspended_daemon_applies_nothing_until_resumed_then_applies_at_the_next_poll() {
    let h = host();
    let manifest = h.manifest("blue", Some(0), None);
    let first = h.commit(&manifest, "blue").unwrap();
    let d = Daemon::start(&h);
    d.wait_applied(&h, "the first sync", Duration::from_secs(90), &first);
    let out = h.agent(&["suspend", "--reason", "rehearsing the database upgrade"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout_str(), out.stderr_str());
    let cookie = format!("VEZA_{}_2", h.env);
    let edited = manifest.replace(
        &format!("sticky_cookie: VEZA_{}\n", h.env),
        &format!("sticky_cookie: {cookie}\n"),
    );
    assert_ne!(edited, manifest);
    let change = h.commit(&edited, "rename the sticky cookie").unwrap();
    let edge = || std::fs::read_to_string(h.haproxy.config_path()).unwrap_or_default();
    // Polls (2 s apart) see the new commit, plan it and hold it: two of them, at least.
    d.wait_for("two polls that hold the new commit", Duration::from_secs(30), || {
        d.log().matches("nothing applied").count() >= 2
    });
    let st = status(&h);
    assert_eq!(st["state"]["applied"]["commit"], first, "applied while suspended: {st:#}");
    assert!(!edge().contains(&cookie), "the edge changed while suspended:\n{}", edge());

    let out = h.agent(&["resume"]).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout_str(), out.stderr_str());
    let resumed = Instant::now();
    d.wait_applied(&h, "the held commit applied after resume", Duration::from_secs(60), &change);
    // The poll after `resume` (2 s + jitter) applied it: no second cycle was needed.
    let history = h.agent(&["history", "--json"]).unwrap().stdout_str();
    // One JSON entry per line.
    let entries: Vec<serde_json::Value> =
        history.lines().map(|l| serde_json::from_str(l).expect("a history entry")).collect();
    let applied = entries
        .iter()
        .position(|x| x["commit"] == change.as_str() && x["outcome"] == "applied")
        .unwrap_or_else(|| panic!("the held change is not in the history: {entries:#?}"));
    let resumed_at = entries
        .iter()
        .position(|x| x["outcome"] == "resumed")
        .unwrap_or_else(|| panic!("the resume is not in the history: {entries:#?}"));
    let at = |i: usize| entries[i]["at_ms"].as_i64().unwrap_or_default();
    assert!(at(applied) >= at(resumed_at), "applied before the resume? {entries:#?}");
    // Nothing but held syncs between the resume and the held change's sync.
    let between = entries
        .iter()
        .filter(|x| {
            let t = x["at_ms"].as_i64().unwrap_or_default();
            t > at(resumed_at) && t < at(applied)
        })
        .count();
    assert_eq!(between, 0, "a sync ran between the resume and the held change: {entries:#?}");
    eprintln!("applied {:.1} s after resume (poll 2 s)", resumed.elapsed().as_secs_f64());
    assert!(edge().contains(&cookie), "the held change is not in the edge:\n{}", edge());
    assert_eq!(h.served_release().unwrap(), h.releases[0].id);
}

/// Issue 18: between full readings, a daemon whose commit is applied reuses its last
/// observation while Incus's event stream reports no change; a change made through Incus
/// is seen by the very next sync; a change Incus cannot report (a file on the host) waits
/// for the next full reading (`poll.full_observation`), and nothing is ever applied from a
/// reused reading.
#[test]
fn a_quiet_host_is_not_read_again_until_incus_reports_a_change_or_a_full_reading_is_due() {
    let h = host();
    poll_hourly(&h);
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        text.replace("interval: 1h", "interval: 1h, full_observation: 8s"),
    )
    .unwrap();
    // Started first (it takes its time on a loaded machine); its own sentinel profiles are
    // Incus changes, but not of anything this host declares or owns: they do not count.
    let watch = veza_testkit::incus::LifecycleWatch::start(&h.dir.join("lifecycle.json")).unwrap();
    let first = h.commit(&h.manifest("blue", Some(0), Some(1)), "two slots").unwrap();
    let d = Daemon::start(&h);
    d.wait_for("the first sync", Duration::from_secs(90), || {
        status(&h)["state"]["applied"]["commit"] == first
    });
    // `sync --json`: the outcome and how the observation stage went.
    let sync = || -> (String, String) {
        let out = h.agent(&["sync", "--json"]).unwrap();
        assert_eq!(out.status.code(), Some(0), "{}{}", out.stdout_str(), out.stderr_str());
        let v: serde_json::Value = serde_json::from_str(out.stdout_str().trim()).unwrap();
        let observe = v["stages_us"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s[0].as_str())
            .filter(|s| s.starts_with("observe ("))
            .collect::<Vec<_>>()
            .join(", ");
        (v["outcome"].as_str().unwrap_or_default().to_string(), observe)
    };
    // Read once (the first sync kept its reading), then reused while nothing changes.
    let (outcome, observe) = sync();
    assert_eq!(outcome, "no-change");
    let (outcome, observe2) = sync();
    assert_eq!(
        (outcome.as_str(), observe2.as_str()),
        ("no-change", "observe (reused)"),
        "{observe}"
    );
    let before = watch.about(&h.env).len();
    let (_, again) = sync();
    assert_eq!(again, "observe (reused)");
    std::thread::sleep(Duration::from_millis(300));
    let touched = watch.about(&h.env).split_off(before);
    assert!(touched.is_empty(), "a reused no-change sync touched Incus: {touched:?}");
    drop(watch);

    // Drift through Incus: the next sync sees it (the event stream) and corrects it.
    let green = format!("{}-hello-green", h.env);
    Cmd::new("incus").args(["config", "device", "remove", &green, "veza-upstream"]).run().unwrap();
    let (outcome, observe) = sync();
    assert_eq!((outcome.as_str(), observe.as_str()), ("applied", "observe (incus changed)"));
    let devices =
        Cmd::new("incus").args(["config", "device", "list", &green]).run_stdout().unwrap();
    assert!(devices.contains("veza-upstream"), "drift was not corrected: {devices}");
    // After a change, the next sync reads again (the run's own writes moved the stream),
    // then reuses.
    let (outcome, _) = sync();
    assert_eq!(outcome, "no-change");
    let (outcome, observe) = sync();
    assert_eq!((outcome.as_str(), observe.as_str()), ("no-change", "observe (reused)"));

    // Drift Incus cannot report: the edge's config on the host. A reused reading does not
    // see it; the full reading `full_observation` after the last one does, and repairs it.
    let cfg = h.haproxy.config_path().to_path_buf();
    let rendered = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{rendered}# edited by hand\n")).unwrap();
    let (outcome, observe) = sync();
    assert_eq!((outcome.as_str(), observe.as_str()), ("no-change", "observe (reused)"));
    assert!(std::fs::read_to_string(&cfg).unwrap().ends_with("# edited by hand\n"));
    std::thread::sleep(Duration::from_secs(8));
    let (outcome, observe) = sync();
    assert_eq!((outcome.as_str(), observe.as_str()), ("applied", "observe (full reading due)"));
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), rendered, "the edge config was repaired");
    assert!(h.served_release().is_ok_and(|r| r == h.releases[0].id));
    d.signal("TERM");
    d.wait_for("the daemon to stop", Duration::from_secs(30), || !d.alive());
}
