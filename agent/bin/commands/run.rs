//! `veza-agent run`: the daemon. Polls the manifests repository (interval + jitter),
//! syncs, and serves `veza-agent sync` requests on a Unix socket in the state directory.
//!
//! A sync that failed (forge unreachable, incusd busy, a step that broke) is retried
//! sooner than the next poll: after 5 s, then 10 s, 20 s, … up to the poll interval.
//! A rejected revision or a rolled-back promotion waits for a new commit instead, and a
//! failure on credentials waits for the next poll (repeated 401s can lock the account).
//!
//! Signals: SIGTERM/SIGINT stop between actions (never between an edge switch and its
//! verification) and exit after recording the run; SIGHUP re-reads the configuration
//! (an invalid one is rejected and the old one stays). The trust root and the
//! configuration are also re-read at every cycle, so edits are picked up without a
//! restart.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use veza_state::Store;

use crate::commands::common::{ConfigArg, fail, runtime};
use crate::reconcile::{Agent, SyncSummary};

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Run this many syncs, then exit (for tests and benchmarks; default: forever).
    #[arg(long, value_name = "N")]
    pub max_syncs: Option<u64>,
}

/// The control socket of the daemon.
pub fn control_socket(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("control.sock")
}

type Waiter = oneshot::Sender<SyncSummary>;

/// Runs the daemon.
pub fn run(args: &RunArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 1),
    };
    rt.block_on(async {
        match daemon(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e, 1),
        }
    })
}

async fn daemon(args: &RunArgs) -> anyhow::Result<()> {
    let mut agent = Agent::load(&args.config.config)?;
    let state_dir = agent.state_dir();
    let store = Store::open(&state_dir)?;
    let sock = control_socket(&state_dir);
    let _ = veza_fs::remove_if_exists(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", sock.display()))?;
    let (tx, mut requests) = mpsc::channel::<Waiter>(16);
    tokio::spawn(serve_control(listener, tx));

    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    {
        let stop = stop.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stop requested; finishing the current action");
            stop.store(true, Ordering::SeqCst);
            wake.notify_one();
        });
    }
    let _watcher = watch_trust_files(&agent, wake.clone());
    tracing::info!(host = %agent.config.host, "veza-agent running; control socket {}", sock.display());
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut syncs = 0u64;
    let mut failures_in_a_row = 0u32;
    loop {
        let summary = match agent.sync(&store, &stop).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("sync failed: {e:#}");
                SyncSummary {
                    outcome: veza_state::Outcome::Failed,
                    commit: None,
                    reason: Some(format!("{e:#}")),
                    steps: 0,
                    duration_ms: 0,
                    preempted: false,
                    refusals: Vec::new(),
                }
            }
        };
        tracing::info!("sync: {summary}");
        for w in waiters.drain(..) {
            let _ = w.send(summary.clone());
        }
        syncs += 1;
        if stop.load(Ordering::SeqCst) || args.max_syncs.is_some_and(|m| syncs >= m) {
            break;
        }
        if summary.preempted {
            continue; // a newer commit is waiting: sync it now
        }
        failures_in_a_row =
            if retry_soon(&summary) { failures_in_a_row.saturating_add(1) } else { 0 };
        let pause = next_pause(agent.config.poll_interval(), failures_in_a_row)
            + jitter(agent.config.poll_jitter());
        if failures_in_a_row > 0 {
            tracing::info!(
                "sync failed {failures_in_a_row} time(s) in a row; retrying in {pause:?}"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            Some(w) = requests.recv() => {
                waiters.push(w);
                while let Ok(w) = requests.try_recv() {
                    waiters.push(w);
                }
            }
            () = wake.notified() => {}
            _ = hup.recv() => {
                reload(&mut agent);
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // Pick up configuration edits at every cycle, keeping the old one when invalid.
        reload(&mut agent);
    }
    let _ = veza_fs::remove_if_exists(&sock);
    tracing::info!("veza-agent stopped");
    Ok(())
}

/// Wakes the loop when the configuration or the trust root (allowed signers, policy)
/// changes on disk, so edits take effect without waiting for the next poll. The files
/// are re-read at every cycle anyway; the watch only shortens the wait.
fn watch_trust_files(
    agent: &Agent,
    wake: Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut files: Vec<PathBuf> =
        vec![agent.config_path.clone(), PathBuf::from(&agent.config.trust.allowed_signers)];
    if let Some(p) = &agent.config.trust.policy {
        files.push(PathBuf::from(p));
    }
    let watched = files.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = event
            .paths
            .iter()
            .any(|p| watched.iter().any(|w| w == p || w.file_name() == p.file_name()));
        if relevant && (event.kind.is_modify() || event.kind.is_create() || event.kind.is_remove())
        {
            tracing::info!("configuration or trust root changed on disk; syncing now");
            wake.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch the configuration for changes (polling only): {e}");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> =
        files.iter().filter_map(|f| f.parent().map(std::path::Path::to_path_buf)).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch `{}` (polling only): {e}", d.display());
        }
    }
    Some(watcher)
}

fn reload(agent: &mut Agent) {
    match crate::reconcile::load_config(&agent.config_path) {
        Ok(config) => {
            if config.host != agent.config.host || config.state_dir() != agent.config.state_dir() {
                tracing::warn!(
                    "`host` and `state_dir` changes need a restart; keeping the running values"
                );
                return;
            }
            agent.config = config;
        }
        Err(e) => tracing::error!("new configuration rejected, keeping the previous one: {e:#}"),
    }
}

/// Whether a sync is retried before the next poll: it failed, and not on credentials
/// (a quick retry cannot fix those, and repeated 401s can lock the account).
fn retry_soon(summary: &SyncSummary) -> bool {
    summary.outcome == veza_state::Outcome::Failed
        && !summary.reason.as_deref().is_some_and(veza_source::fetch::is_credentials_failure)
}

/// First retry delay after a failed sync; it doubles with each further failure.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// The wait before the next sync: the poll interval, or after `failures` failed syncs in
/// a row, `FIRST_RETRY × 2^(failures-1)` when that is shorter.
fn next_pause(poll: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return poll;
    }
    let backoff = FIRST_RETRY.saturating_mul(1u32 << (failures - 1).min(20));
    backoff.min(poll)
}

fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ms = max.as_millis() as u64;
    if ms == 0 { Duration::ZERO } else { Duration::from_millis(u64::from(nanos) % ms) }
}

/// Accepts `sync` requests; each gets the summary of the next completed sync.
async fn serve_control(listener: UnixListener, tx: mpsc::Sender<Waiter>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(64));
            if reader.read_line(&mut line).await.is_err() || line.trim() != "sync" {
                let _ = write.write_all(b"error: unknown request (expected `sync`)\n").await;
                return;
            }
            let (done, wait) = oneshot::channel();
            if tx.send(done).await.is_err() {
                return;
            }
            if let Ok(summary) = wait.await {
                let text = serde_json::to_string(&summary).unwrap_or_default();
                let _ = write.write_all(format!("{text}\n").as_bytes()).await;
            }
        });
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_a_retry_may_fix_are_retried_soon() {
        use veza_state::Outcome;
        let summary = |outcome, reason: &str| SyncSummary {
            outcome,
            commit: None,
            reason: Some(reason.to_string()),
            steps: 0,
            duration_ms: 0,
            preempted: false,
            refusals: Vec::new(),
        };
        // (outcome, reason, retried soon)
        let table = [
            (
                Outcome::Failed,
                "observing Incus: `GET /1.0/instances` did not finish within 30s",
                true,
            ),
            (Outcome::Failed, "fetch: all 1 remote(s) failed: [connection refused]", true),
            (Outcome::Failed, "step 2 (deploy release) failed: artifact download: HTTP 502", true),
            (
                Outcome::Failed,
                "fetch: Credentials provided for \"https://f/x.git\" were not accepted by the remote",
                false,
            ),
            (Outcome::Failed, "fetch: the server requires authentication (HTTP 401)", false),
            (Outcome::Rejected, "signature: unsigned commit", false),
            (Outcome::RolledBack, "green never became healthy", false),
            (Outcome::Applied, "", false),
            (Outcome::NoChange, "", false),
        ];
        for (outcome, reason, want) in table {
            assert_eq!(retry_soon(&summary(outcome, reason)), want, "{outcome:?}: {reason}");
        }
    }

    #[test]
    fn failed_syncs_are_retried_sooner_than_the_poll_with_a_doubling_delay() {
        let s = Duration::from_secs;
        // (poll interval, failures in a row, pause)
        let table = [
            (s(300), 0, s(300)),
            (s(300), 1, s(5)),
            (s(300), 2, s(10)),
            (s(300), 3, s(20)),
            (s(300), 6, s(160)),
            (s(300), 7, s(300)), // capped at the poll interval
            (s(300), 1000, s(300)),
            (s(2), 1, s(2)), // a poll shorter than the first retry wins
            (s(3600), 1, s(5)),
        ];
        for (poll, failures, want) in table {
            assert_eq!(next_pause(poll, failures), want, "poll {poll:?}, {failures} failures");
        }
    }
}
