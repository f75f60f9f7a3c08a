//! Installing a rendered `haproxy.cfg` safely, through any [`EdgeRuntime`].
//!
//! 1. Skip everything when the live file already holds exactly this text (no reload).
//! 2. Write the candidate next to the live file and validate it with `haproxy -c -q`;
//!    an invalid candidate is removed and its diagnostics returned. Nothing else changed.
//! 3. Dump `show servers state` through the master (`@1`), prune it against the new
//!    config (see [`prune_servers_state`]) and write it as the server-state file.
//! 4. Keep the live file as `<config>.prev`, rename the candidate over the live file
//!    (atomic), reload through the master CLI and confirm with `show proc`: a new worker
//!    pid, the reload counter incremented and `[failed: 0]`, within a bounded wait.
//! 5. If the reload cannot be confirmed, write the previous file back and reload again.
//!
//! A `<config>.reload-pending` marker lives from the swap until the reload is
//! confirmed, so an agent killed in between reloads on its next run instead of taking
//! the unchanged file for an applied one.
//!
//! Invariant: the live file is always a config that passed `haproxy -c` (the old one or
//! the validated candidate), whatever step is interrupted, a kill -9 included.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use veza_model::live::config_servers;

use super::parse::{DroppedServer, ParseError, ProcList, parse_show_proc, prune_servers_state};
use super::runtime::{EdgeError, EdgeRuntime};

/// The files of an edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgePaths {
    /// The live config HAProxy was started with (`-f`).
    pub config: PathBuf,
    /// The `server-state-file` of the config.
    pub server_state_file: PathBuf,
}

impl EdgePaths {
    /// Debian's paths: `/etc/haproxy/haproxy.cfg`, `/var/lib/haproxy/server-state`.
    pub fn debian() -> EdgePaths {
        EdgePaths {
            config: PathBuf::from("/etc/haproxy/haproxy.cfg"),
            server_state_file: PathBuf::from("/var/lib/haproxy/server-state"),
        }
    }

    /// The candidate written and validated next to the live file.
    pub fn candidate(&self) -> PathBuf {
        with_suffix(&self.config, ".candidate")
    }

    /// The config that was live before the last install.
    pub fn previous(&self) -> PathBuf {
        with_suffix(&self.config, ".prev")
    }

    /// Marker present from the swap until the reload is confirmed: if the agent dies in
    /// between, the next install reloads even though the file is unchanged.
    pub fn pending(&self) -> PathBuf {
        with_suffix(&self.config, ".reload-pending")
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Bounds of the reload confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallOptions {
    /// How long to wait for `show proc` to confirm a reload (observed: about 100 ms).
    pub reload_timeout: Duration,
    /// Pause between two `show proc` polls.
    pub poll_interval: Duration,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            reload_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(10),
        }
    }
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The live file already holds this config: nothing was written, nothing reloaded.
    Unchanged,
    /// The config was installed.
    Installed(InstallReport),
}

/// Details of an install that changed the live config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// Whether and how HAProxy reloaded.
    pub reload: ReloadOutcome,
    /// State lines left out of the server-state file.
    pub dropped_state: Vec<DroppedServer>,
    /// Time spent in `haproxy -c`.
    pub validate_time: Duration,
    /// Time from sending `reload` to its confirmation (zero when not running).
    pub reload_time: Duration,
}

/// How the reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Confirmed by `show proc`.
    Reloaded {
        /// The master's reload counter afterwards.
        reloads: u64,
        /// Workers started by this reload.
        new_workers: Vec<u32>,
    },
    /// Nothing answers on the master socket: the file is in place for the next start.
    NotRunning,
}

/// What happened to the previous config after a failed reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The previous file is back and HAProxy reloaded it (confirmed).
    Reloaded,
    /// The previous file is back; HAProxy is not running to reload it.
    FileOnly,
    /// There was no previous file; the new (valid) config stays in place.
    NoPrevious,
    /// The previous file is back but reloading it failed too.
    ReloadFailed(String),
    /// The previous file could not be written back; the new (valid) config stays.
    WriteFailed(String),
}

impl std::fmt::Display for Restore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Restore::Reloaded => f.write_str("the previous config was restored and reloaded"),
            Restore::FileOnly => f.write_str(
                "the previous config was restored on disk; HAProxy is not running to reload it",
            ),
            Restore::NoPrevious => {
                f.write_str("there was no previous config; the new (valid) config stays in place")
            }
            Restore::ReloadFailed(e) => {
                write!(
                    f,
                    "the previous config was restored on disk but reloading it failed too: {e}"
                )
            }
            Restore::WriteFailed(e) => write!(
                f,
                "restoring the previous config failed ({e}); the new (valid) config stays in place"
            ),
        }
    }
}

/// Why an install failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// `haproxy -c` rejected the rendered config. Nothing was changed.
    #[error(
        "the new HAProxy config was rejected by `haproxy -c` ({location}); nothing was changed:\n{stderr}"
    )]
    Invalid { location: String, stderr: String },
    /// A step before the live file changed failed. The live config is untouched.
    #[error("could not {step}; the live HAProxy config is untouched: {source}")]
    Prepare {
        step: &'static str,
        #[source]
        source: EdgeError,
    },
    /// HAProxy's output could not be understood before the live file changed.
    #[error("could not {step}; the live HAProxy config is untouched: {source}")]
    Parse {
        step: &'static str,
        #[source]
        source: ParseError,
    },
    /// The new config is in place but its reload was not confirmed; see `restore`.
    #[error("HAProxy did not confirm the reload of the new config: {cause}; {restore}")]
    ReloadFailed { cause: String, restore: Restore },
}

/// The processes of `rt`'s HAProxy master (`show proc`); `None` when HAProxy is not running.
fn master_processes(rt: &dyn EdgeRuntime) -> Result<Option<ProcList>, InstallError> {
    match rt.master("show proc") {
        Ok(text) => Ok(Some(parse_show_proc(&text).map_err(|source| InstallError::Parse {
            step: "read the HAProxy processes",
            source,
        })?)),
        Err(EdgeError::NotRunning { .. }) => Ok(None),
        Err(source) => {
            Err(InstallError::Prepare { step: "ask the HAProxy master for its processes", source })
        }
    }
}

/// Installs `config` as the live HAProxy config of `rt` (see the module documentation).
/// The server-state dump is pruned against the servers `config` declares.
pub fn install(
    rt: &dyn EdgeRuntime,
    paths: &EdgePaths,
    config: &str,
    opts: &InstallOptions,
) -> Result<InstallOutcome, InstallError> {
    let prepare = |step| move |source| InstallError::Prepare { step, source };
    let live = rt.read_file(&paths.config).map_err(prepare("read the live config"))?;
    let pending =
        rt.read_file(&paths.pending()).map_err(prepare("read the reload marker"))?.is_some();
    // After an install interrupted between the swap and the confirmation, the config on
    // disk may never have run: what a failed reload puts back is the one before it, kept.
    let confirmed = if pending {
        rt.read_file(&paths.previous()).map_err(prepare("read the previous config"))?
    } else {
        live.clone()
    };
    if live.as_deref() == Some(config.as_bytes()) {
        if !pending {
            return Ok(InstallOutcome::Unchanged);
        }
        let before = master_processes(rt)?;
        return finish(rt, paths, before, confirmed.as_deref(), Vec::new(), Duration::ZERO, opts);
    }

    let candidate = paths.candidate();
    rt.write_file(&candidate, config.as_bytes()).map_err(prepare("write the candidate config"))?;
    let checked = Instant::now();
    if let Err(e) = rt.check_config(&candidate) {
        let _ = rt.remove_file(&candidate);
        return Err(match e {
            EdgeError::Invalid { location, stderr, .. } => {
                InstallError::Invalid { location, stderr }
            }
            other => InstallError::Prepare { step: "validate the candidate config", source: other },
        });
    }
    let validate_time = checked.elapsed();

    // Everything below until the rename may fail without touching the live file.
    let prepared = (|| {
        let before = master_processes(rt)?;
        let dump = match &before {
            Some(_) => rt
                .master("@1 show servers state")
                .map_err(prepare("dump the server state before the reload"))?,
            None => rt
                .read_file(&paths.server_state_file)
                .map_err(prepare("read the server-state file"))?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        };
        let pruned = prune_servers_state(&dump, &config_servers(config))
            .map_err(|source| InstallError::Parse { step: "read the server state", source })?;
        rt.write_file(&paths.server_state_file, pruned.text.as_bytes())
            .map_err(prepare("write the server-state file"))?;
        if let Some(old) = live.as_ref().filter(|_| !pending) {
            rt.write_file(&paths.previous(), old).map_err(prepare("keep the previous config"))?;
        }
        rt.write_file(&paths.pending(), b"reload pending\n")
            .map_err(prepare("write the reload marker"))?;
        rt.rename(&candidate, &paths.config).map_err(prepare("move the candidate into place"))?;
        Ok((before, pruned.dropped))
    })();
    let (before, dropped_state) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = rt.remove_file(&candidate);
            let _ = rt.remove_file(&paths.pending());
            return Err(e);
        }
    };
    // The new, validated config is live on disk.
    finish(rt, paths, before, confirmed.as_deref(), dropped_state, validate_time, opts)
}

/// Reloads the live config (when HAProxy runs) and clears the reload marker; on failure
/// restores `previous`.
fn finish(
    rt: &dyn EdgeRuntime,
    paths: &EdgePaths,
    before: Option<ProcList>,
    previous: Option<&[u8]>,
    dropped_state: Vec<DroppedServer>,
    validate_time: Duration,
    opts: &InstallOptions,
) -> Result<InstallOutcome, InstallError> {
    let Some(before) = before else {
        // Not running: the file is what HAProxy loads when it starts.
        let _ = rt.remove_file(&paths.pending());
        return Ok(InstallOutcome::Installed(InstallReport {
            reload: ReloadOutcome::NotRunning,
            dropped_state,
            validate_time,
            reload_time: Duration::ZERO,
        }));
    };
    let started = Instant::now();
    match reload_and_confirm(rt, &before, opts) {
        Ok((reloads, new_workers)) => {
            let reload_time = started.elapsed();
            // A leftover marker only costs one extra reload next time.
            let _ = rt.remove_file(&paths.pending());
            Ok(InstallOutcome::Installed(InstallReport {
                reload: ReloadOutcome::Reloaded { reloads, new_workers },
                dropped_state,
                validate_time,
                reload_time,
            }))
        }
        Err(cause) => {
            let restore = restore_previous(rt, paths, previous, opts);
            if matches!(restore, Restore::Reloaded | Restore::FileOnly | Restore::NoPrevious) {
                let _ = rt.remove_file(&paths.pending());
            }
            Err(InstallError::ReloadFailed { cause, restore })
        }
    }
}

/// Sends `reload` and polls `show proc` until the reload is confirmed or refused.
/// Returns the new reload counter and the new workers' pids.
pub fn reload_and_confirm(
    rt: &dyn EdgeRuntime,
    before: &ProcList,
    opts: &InstallOptions,
) -> Result<(u64, Vec<u32>), String> {
    let started = Instant::now();
    match rt.master("reload") {
        Ok(_) => {}
        Err(e @ EdgeError::NotRunning { .. }) => return Err(e.to_string()),
        // The master may drop the connection while re-executing; confirm below.
        Err(_) => {}
    }
    let mut last = "no answer yet".to_string();
    loop {
        if started.elapsed() >= opts.reload_timeout {
            return Err(format!("not confirmed within {:?} (last: {last})", opts.reload_timeout));
        }
        std::thread::sleep(opts.poll_interval);
        let now = match rt.master("show proc").map(|t| parse_show_proc(&t)) {
            Ok(Ok(now)) => now,
            Ok(Err(e)) => {
                last = e.to_string();
                continue;
            }
            // The master CLI is unavailable while the master re-executes itself.
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        if now.master.pid != before.master.pid {
            return Err(format!(
                "the HAProxy master changed during the reload (pid {} -> {})",
                before.master.pid, now.master.pid
            ));
        }
        if now.master.reloads <= before.master.reloads {
            last = format!("reload counter still {}", now.master.reloads);
            continue;
        }
        if now.master.failed_reloads > 0 {
            return Err(format!(
                "HAProxy reports the reload failed (reloads {}, [failed: {}]); the old worker keeps serving",
                now.master.reloads, now.master.failed_reloads
            ));
        }
        let old: Vec<u32> = before.workers.iter().map(|w| w.pid).collect();
        let new: Vec<u32> =
            now.current_workers().map(|w| w.pid).filter(|pid| !old.contains(pid)).collect();
        if new.is_empty() {
            last = "no new worker listed yet".to_string();
            continue;
        }
        return Ok((now.master.reloads, new));
    }
}

fn restore_previous(
    rt: &dyn EdgeRuntime,
    paths: &EdgePaths,
    previous: Option<&[u8]>,
    opts: &InstallOptions,
) -> Restore {
    let Some(previous) = previous else { return Restore::NoPrevious };
    if let Err(e) = rt.write_file(&paths.config, previous) {
        return Restore::WriteFailed(e.to_string());
    }
    let before = match rt.master("show proc") {
        Ok(text) => match parse_show_proc(&text) {
            Ok(p) => p,
            Err(e) => return Restore::ReloadFailed(e.to_string()),
        },
        Err(EdgeError::NotRunning { .. }) => return Restore::FileOnly,
        Err(e) => return Restore::ReloadFailed(e.to_string()),
    };
    match reload_and_confirm(rt, &before, opts) {
        Ok(_) => Restore::Reloaded,
        Err(e) => Restore::ReloadFailed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::fake::{FakeEdge, FakeFault, FakeOp};
    use crate::haproxy::parse::{DropReason, EMPTY_STATE_FILE};

    const OLD: &str = "# old config\nbackend be\n    server blue-1111111111 127.0.0.1:1 check\n";
    const NEW: &str = "# new config\nbackend be\n    server blue-1111111111 127.0.0.1:1 check disabled\n    server green-2222222222 127.0.0.1:2 check\n";

    fn paths() -> EdgePaths {
        EdgePaths {
            config: PathBuf::from("/etc/haproxy/haproxy.cfg"),
            server_state_file: PathBuf::from("/var/lib/haproxy/server-state"),
        }
    }

    fn fake() -> FakeEdge {
        let f = FakeEdge::new();
        f.set_file(&paths().config, OLD.as_bytes());
        f.set_servers_state(&format!(
            "{EMPTY_STATE_FILE}3 be 1 blue-1111111111 127.0.0.1 2 0 1 1 9 15 3 3 6 0 0 0 - 1 - 0 0 - - 0\n3 be 2 green-2222222222 127.0.0.1 0 5 1 1 9 1 0 0 14 0 0 0 - 2 - 0 0 - - 0\n"
        ));
        f
    }

    fn opts() -> InstallOptions {
        InstallOptions {
            reload_timeout: Duration::from_millis(200),
            poll_interval: Duration::from_millis(1),
        }
    }

    fn reloads(ops: &[FakeOp]) -> usize {
        ops.iter().filter(|o| matches!(o, FakeOp::Master(c) if c == "reload")).count()
    }

    #[test]
    fn unchanged_config_does_nothing() {
        let f = fake();
        let out = install(&f, &paths(), OLD, &opts()).unwrap();
        assert_eq!(out, InstallOutcome::Unchanged);
        assert_eq!(f.ops(), vec![FakeOp::Read(paths().config), FakeOp::Read(paths().pending())]);
    }

    #[test]
    fn happy_path_order_state_pruning_and_prev() {
        let f = fake();
        let out = install(&f, &paths(), NEW, &opts()).unwrap();
        let InstallOutcome::Installed(report) = out else { panic!("{out:?}") };
        assert!(matches!(report.reload, ReloadOutcome::Reloaded { reloads: 1, .. }), "{report:?}");
        assert_eq!(f.file(&paths().config).as_deref(), Some(NEW.as_bytes()));
        assert_eq!(f.file(&paths().previous()).as_deref(), Some(OLD.as_bytes()));
        assert_eq!(f.file(&paths().candidate()), None);
        // green goes from disabled to enabled: its stale "maintenance" line is dropped.
        let dropped: Vec<_> =
            report.dropped_state.iter().map(|d| (d.server.as_str(), d.reason)).collect();
        assert_eq!(dropped, [("green-2222222222", DropReason::Enabled)]);
        let state = String::from_utf8(f.file(&paths().server_state_file).unwrap()).unwrap();
        assert!(
            state.contains("blue-1111111111") && !state.contains("green-2222222222"),
            "{state}"
        );
        let ops = f.ops();
        let pos = |op: &FakeOp| ops.iter().position(|o| o == op).unwrap();
        let check = pos(&FakeOp::Check(paths().candidate()));
        let dump = pos(&FakeOp::Master("@1 show servers state".into()));
        let state_write = pos(&FakeOp::Write(paths().server_state_file));
        let swap = pos(&FakeOp::Rename(paths().candidate(), paths().config));
        let reload = pos(&FakeOp::Master("reload".into()));
        assert!(
            check < dump && dump < state_write && state_write < swap && swap < reload,
            "{ops:#?}"
        );
        assert_eq!(reloads(&ops), 1);
    }

    #[test]
    fn invalid_candidate_is_removed_and_never_reloaded() {
        let f = fake();
        let bad = format!("{NEW}    bogus_keyword\n");
        let err = install(&f, &paths(), &bad, &opts()).unwrap_err();
        assert!(
            matches!(&err, InstallError::Invalid { stderr, .. } if stderr.contains("bogus")),
            "{err}"
        );
        assert_eq!(f.file(&paths().config).as_deref(), Some(OLD.as_bytes()));
        assert_eq!(f.file(&paths().candidate()), None);
        assert_eq!(reloads(&f.ops()), 0);
        assert_eq!(f.reloads(), 0);
    }

    #[test]
    fn refused_reload_restores_the_previous_config_and_reloads_it() {
        let f = fake();
        f.inject(FakeFault::ReloadRefusedOnce);
        let err = install(&f, &paths(), NEW, &opts()).unwrap_err();
        let InstallError::ReloadFailed { cause, restore } = &err else { panic!("{err}") };
        assert!(cause.contains("[failed: 1]"), "{cause}");
        assert_eq!(restore, &Restore::Reloaded);
        assert_eq!(f.file(&paths().config).as_deref(), Some(OLD.as_bytes()));
        assert_eq!(reloads(&f.ops()), 2);
        assert!(err.to_string().contains("restored and reloaded"), "{err}");
    }

    #[test]
    fn master_killed_mid_reload_leaves_a_valid_file() {
        for fault in [FakeFault::MasterDiesOnReload, FakeFault::ReloadNeverConfirms] {
            let f = fake();
            f.inject(fault.clone());
            let err = install(&f, &paths(), NEW, &opts()).unwrap_err();
            let InstallError::ReloadFailed { restore, .. } = &err else { panic!("{err}") };
            let live = f.file(&paths().config).unwrap();
            assert_eq!(live, OLD.as_bytes(), "{fault:?}: the previous config is back");
            assert!(f.valid(&live));
            match fault {
                FakeFault::MasterDiesOnReload => assert_eq!(restore, &Restore::FileOnly),
                _ => assert!(matches!(restore, Restore::ReloadFailed(_)), "{restore:?}"),
            }
        }
    }

    #[test]
    fn not_running_installs_the_file_and_prunes_the_existing_state_file() {
        let f = fake();
        f.set_running(false);
        let existing = format!(
            "{EMPTY_STATE_FILE}3 be 2 green-2222222222 127.0.0.1 0 5 1 1 9 1 0 0 14 0 0 0 - 2 - 0 0 - - 0\n"
        );
        f.set_file(&paths().server_state_file, existing.as_bytes());
        let out = install(&f, &paths(), NEW, &opts()).unwrap();
        let InstallOutcome::Installed(report) = out else { panic!() };
        assert_eq!(report.reload, ReloadOutcome::NotRunning);
        assert_eq!(f.file(&paths().config).as_deref(), Some(NEW.as_bytes()));
        assert_eq!(
            f.file(&paths().server_state_file).as_deref(),
            Some(EMPTY_STATE_FILE.as_bytes())
        );
    }

    #[test]
    fn failures_before_the_swap_change_nothing() {
        for (fault, step) in [
            (FakeFault::FailWrite(paths().server_state_file), "write the server-state file"),
            (FakeFault::FailRename, "move the candidate into place"),
            (FakeFault::FailMaster("@1 show servers state".into()), "dump the server state"),
        ] {
            let f = fake();
            f.inject(fault);
            let err = install(&f, &paths(), NEW, &opts()).unwrap_err();
            assert!(err.to_string().contains(step), "{err}");
            assert!(err.to_string().contains("untouched"), "{err}");
            assert_eq!(f.file(&paths().config).as_deref(), Some(OLD.as_bytes()));
            assert_eq!(f.file(&paths().candidate()), None);
            assert_eq!(reloads(&f.ops()), 0);
        }
    }

    #[test]
    fn interrupted_install_reloads_on_the_next_run() {
        let f = fake();
        // The agent died after the swap: new file live, marker present, no reload yet.
        f.set_file(&paths().config, NEW.as_bytes());
        f.set_file(&paths().previous(), OLD.as_bytes());
        f.set_file(&paths().pending(), b"reload pending\n");
        let out = install(&f, &paths(), NEW, &opts()).unwrap();
        assert!(
            matches!(
                out,
                InstallOutcome::Installed(InstallReport {
                    reload: ReloadOutcome::Reloaded { .. },
                    ..
                })
            ),
            "{out:?}"
        );
        assert_eq!(f.file(&paths().pending()), None);
        assert_eq!(f.reloads(), 1);
        // And the run after that is a no-op.
        assert_eq!(install(&f, &paths(), NEW, &opts()).unwrap(), InstallOutcome::Unchanged);
    }

    /// After an interrupted install, the config on disk may never have run: a new
    /// install keeps the one before it as the previous config, and a refused reload puts
    /// that one back.
    #[test]
    fn after_an_interrupted_install_a_refused_reload_puts_back_the_config_before_it() {
        let third = "# third config\nbackend be\n    server blue-3333333333 127.0.0.1:3 check\n";
        let f = fake();
        f.set_file(&paths().config, NEW.as_bytes());
        f.set_file(&paths().previous(), OLD.as_bytes());
        f.set_file(&paths().pending(), b"reload pending\n");
        f.inject(FakeFault::ReloadRefusedOnce);
        let err = install(&f, &paths(), third, &opts()).unwrap_err();
        let InstallError::ReloadFailed { restore, .. } = &err else { panic!("{err}") };
        assert_eq!(restore, &Restore::Reloaded);
        assert_eq!(f.file(&paths().config).as_deref(), Some(OLD.as_bytes()));
        assert_eq!(f.file(&paths().previous()).as_deref(), Some(OLD.as_bytes()));
        assert_eq!(f.file(&paths().pending()), None);
    }

    #[test]
    fn first_install_without_previous_file() {
        let f = FakeEdge::new();
        let out = install(&f, &paths(), NEW, &opts()).unwrap();
        assert!(matches!(out, InstallOutcome::Installed(_)));
        assert_eq!(f.file(&paths().previous()), None);
        let f = FakeEdge::new();
        f.inject(FakeFault::ReloadRefusedOnce);
        let err = install(&f, &paths(), NEW, &opts()).unwrap_err();
        assert!(matches!(err, InstallError::ReloadFailed { restore: Restore::NoPrevious, .. }));
    }
}
