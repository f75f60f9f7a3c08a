//! `veza-agent run`: the daemon. Polls the manifests repository (interval + jitter),
//! syncs, and serves `veza-agent sync` requests on a Unix socket in the state directory.
//!
//! A sync that failed (forge unreachable, incusd busy, a step that broke) is retried
//! sooner than the next poll: after 5 s, then 10 s, 20 s, … up to the poll interval.
//! A rejected revision or a rolled-back promotion waits for a new commit instead, and a
//! failure on credentials waits for the next poll (repeated 401s can lock the account).
//! PR previews (`previews.enabled`) run after each sync's waiters have their answer.
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

use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
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

mod control;
mod drive;

pub use control::control_socket;
pub(crate) use control::request_line;
use control::{Waiter, serve_control};
use drive::{Cycle, Inputs, drive};

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
    agent.keep_warm();
    let state_dir = agent.state_dir();
    let store = Store::open(&state_dir)?;
    let sock = control_socket(&state_dir);
    let _ = veza_fs::remove_if_exists(&sock);
    let listener = UnixListener::bind(&sock)
        .map_err(|e| anyhow::anyhow!("cannot listen on `{}`: {e}", sock.display()))?;
    let (tx, requests) = mpsc::channel::<Waiter>(16);
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
    let (reload_tx, reloads) = mpsc::channel::<()>(4);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if reload_tx.send(()).await.is_err() {
                break;
            }
        }
    });
    let _watcher = watch_trust_files(&agent, wake.clone());
    tracing::info!(host = %agent.config.host, "veza-agent running; control socket {}", sock.display());
    if let Some(w) = &agent.warm
        && !w.wait_connected(Duration::from_secs(2)).await
    {
        tracing::info!(
            "Incus's event stream is not up yet: every poll reads everything until it is"
        );
    }
    let mut cycle = AgentCycle { agent, store };
    let inputs = Inputs { requests, reloads, wake, stop, max_syncs: args.max_syncs };
    drive(&mut cycle, inputs, jitter).await;
    if let Some(cluster) = &cycle.agent.cluster {
        // A clean stop hands the lease on now rather than after its TTL.
        cluster.hand_on("the agent is stopping").await;
    }
    let _ = veza_fs::remove_if_exists(&sock);
    tracing::info!("veza-agent stopped");
    Ok(())
}

/// The real cycle: the agent's sync against its store.
struct AgentCycle {
    agent: Agent,
    store: Store,
}

impl Cycle for AgentCycle {
    async fn sync(&mut self, stop: &AtomicBool, run_now_by: Option<String>) -> SyncSummary {
        match self.agent.sync(&self.store, stop, run_now_by).await {
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
                    stages_us: Vec::new(),
                }
            }
        }
    }

    async fn after(&mut self, stop: &AtomicBool) {
        if let Some(run) = self.agent.previews(&self.store, stop).await {
            tracing::info!("{}", crate::reconcile::preview_line(&run));
        }
    }

    fn schedule(&self) -> (Duration, Duration) {
        (self.agent.config.poll_interval(), self.agent.config.poll_jitter())
    }

    fn reload(&mut self) {
        reload(&mut self.agent);
    }
}

/// Wakes the loop when the configuration, the trust root (allowed signers, policy) or the
/// forge credentials change on disk, so edits take effect without waiting for the next
/// poll (or for the back-off after refused credentials). The files are re-read at every
/// cycle anyway; the watch only shortens the wait.
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
    if let Some(p) = &agent.config.source.credentials_file {
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
            tracing::info!(
                "configuration or trust root changed on disk (or the forge credentials); syncing now"
            );
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
            if config.host != agent.config.host
                || config.state_dir() != agent.config.state_dir()
                || config.cluster != agent.config.cluster
            {
                // The lease is built once, at start: a reload that joined or changed a
                // cluster would apply without it.
                tracing::warn!(
                    "`host`, `state_dir` and `cluster` changes need a restart \
                     (`systemctl restart veza-agent`); keeping the running configuration"
                );
                return;
            }
            if config != agent.config
                && let Some(w) = &agent.warm
            {
                w.forget();
            }
            agent.config = config;
        }
        Err(e) => tracing::error!("new configuration rejected, keeping the previous one: {e:#}"),
    }
}

fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ms = max.as_millis() as u64;
    if ms == 0 { Duration::ZERO } else { Duration::from_millis(u64::from(nanos) % ms) }
}
