//! The edge as the reconciler uses it: HAProxy on the host (files + master socket) or
//! inside an Incus instance (file push + exec through the Incus driver), behind the apply
//! engine's [`Edge`] trait. The installer itself (`veza_host::haproxy::install`) is
//! synchronous; it runs in `block_in_place`, and its in-instance operations call the
//! async Incus driver on the same runtime.

use std::path::PathBuf;

use veza_host::apply::{Edge, EdgeView};
use veza_host::haproxy::install::{
    EdgePaths, InstallOptions, InstallOutcome, ReloadOutcome, install,
};
use veza_host::haproxy::parse::{BackendHealth, edge_health, edge_view, parse_show_stat};
use veza_host::haproxy::runtime::{
    EdgeRuntime as HaproxyRuntime, HostRuntime, IncusExec, InstanceRuntime,
};
use veza_host::incus::IncusClient;
use veza_model::config::HostConfig;
use veza_model::live::LiveEdge;
use veza_plan::edge::EdgeSettings;

/// Paths the rendered config refers to, from the host configuration.
pub fn settings(config: &HostConfig) -> EdgeSettings {
    let mut s = EdgeSettings::default();
    if let Some(p) = &config.edge.state_file {
        s.server_state_file = p.clone();
    }
    if let Some(p) = &config.edge.stats_socket {
        s.stats_socket = p.clone();
    }
    s
}

/// The edge of this host.
pub struct EdgeRuntime<'a> {
    incus: &'a IncusClient,
    runs_in: Option<String>,
    paths: EdgePaths,
    master_socket: PathBuf,
}

impl<'a> EdgeRuntime<'a> {
    /// The edge as configured; `runs_in` is `host` or an instance name (from the manifests).
    pub fn new(
        config: &HostConfig,
        incus: &'a IncusClient,
        runs_in: Option<&str>,
    ) -> EdgeRuntime<'a> {
        let mut paths = EdgePaths::debian();
        if let Some(p) = &config.edge.config_path {
            paths.config = PathBuf::from(p);
        }
        if let Some(p) = &config.edge.state_file {
            paths.server_state_file = PathBuf::from(p);
        }
        let master_socket = PathBuf::from(
            config.edge.master_socket.clone().unwrap_or_else(|| "/run/haproxy-master.sock".into()),
        );
        EdgeRuntime {
            incus,
            runs_in: runs_in.filter(|r| *r != "host").map(str::to_string),
            paths,
            master_socket,
        }
    }

    fn with_runtime<T>(&self, f: impl FnOnce(&dyn HaproxyRuntime) -> T) -> T {
        match &self.runs_in {
            None => f(&HostRuntime::new(self.master_socket.clone())),
            Some(instance) => {
                let exec =
                    IncusExec { incus: self.incus, handle: tokio::runtime::Handle::current() };
                let mut rt = InstanceRuntime::new(exec, instance.clone());
                rt.master_socket = self.master_socket.clone();
                f(&rt)
            }
        }
    }
}

impl EdgeRuntime<'_> {
    /// The edge as the planner reads it: the config HAProxy runs (see
    /// [`Edge::live_config`]) and the color each app's backend routes to; no config
    /// observed gives an empty [`LiveEdge`].
    pub async fn observe(&self) -> Result<LiveEdge, String> {
        let (config, pending) = self.running()?;
        let mut edge = config.map(LiveEdge::from_config).unwrap_or_default();
        edge.unconfirmed = pending;
        Ok(edge)
    }

    /// The config HAProxy runs, and whether an install was interrupted between its swap
    /// and its confirmed reload (its `.reload-pending` marker is still there): then the
    /// config is the previous file, not the one on disk, and HAProxy may run either.
    fn running(&self) -> Result<(Option<String>, bool), String> {
        tokio::task::block_in_place(|| {
            self.with_runtime(|rt| {
                let pending = rt.read_file(&self.paths.pending())?.is_some();
                let running =
                    if pending { self.paths.previous() } else { self.paths.config.clone() };
                let text = rt.read_file(&running)?;
                Ok((text.map(|b| String::from_utf8_lossy(&b).into_owned()), pending))
            })
            .map_err(|e: veza_host::haproxy::runtime::EdgeError| e.to_string())
        })
    }

    /// Per-backend, per-server health as HAProxy sees it (`@1 show stat`).
    pub async fn health(&self) -> Result<Vec<BackendHealth>, String> {
        tokio::task::block_in_place(|| {
            let text =
                self.with_runtime(|rt| rt.master("@1 show stat")).map_err(|e| e.to_string())?;
            let rows = parse_show_stat(&text).map_err(|e| e.to_string())?;
            Ok(edge_health(&rows, None))
        })
    }
}

impl Edge for EdgeRuntime<'_> {
    /// The config HAProxy runs. After an install interrupted between the swap and the
    /// confirmed reload, that is the previous file, not the one on disk ([`Self::running`];
    /// the planner then installs again, and the installer reloads instead of taking an
    /// unchanged file as applied).
    async fn live_config(&self) -> Result<Option<String>, String> {
        Ok(self.running()?.0)
    }

    /// Installs `config`. When HAProxy does not answer on its master socket, the file is
    /// left for its next start; that is an install only when there was no config before
    /// (a first install, HAProxy not started yet). Over an earlier config it is an error:
    /// a HAProxy running without that socket keeps serving the earlier one, and a switch
    /// that did not happen must not be taken for one.
    async fn install(&self, config: &str) -> Result<(), String> {
        tokio::task::block_in_place(|| {
            self.with_runtime(|rt| {
                // What runs, as `live_config` reads it (after an interrupted install, the
                // previous file).
                let pending =
                    rt.read_file(&self.paths.pending()).map_err(|e| e.to_string())?.is_some();
                let running =
                    if pending { self.paths.previous() } else { self.paths.config.clone() };
                let earlier = rt.read_file(&running).map_err(|e| e.to_string())?;
                let outcome = install(rt, &self.paths, config, &InstallOptions::default())
                    .map_err(|e| e.to_string())?;
                if let InstallOutcome::Installed(report) = &outcome
                    && report.reload == ReloadOutcome::NotRunning
                {
                    let why = format!(
                        "HAProxy did not answer on its master socket `{socket}` ({location}): the new config is on disk for its next start and is not serving; a HAProxy running without that socket keeps its old config (hint: start HAProxy with `-S {socket}`, or set `edge.master_socket`; runbook, \"HAProxy on the host\")",
                        socket = self.master_socket.display(),
                        location = rt.location(),
                    );
                    if let Some(earlier) = earlier {
                        // Until HAProxy answers, the earlier config is what runs: it goes
                        // back on disk (a restart must not load a config whose checks
                        // never ran), and the next sync installs the new one again. Should
                        // that fail, the marker makes `live_config` say the same.
                        if rt.write_file(&self.paths.config, &earlier).is_ok() {
                            let _ = rt.remove_file(&self.paths.pending());
                            return Err(format!("{why}; the earlier config is back in place"));
                        }
                        rt.write_file(&self.paths.pending(), b"reload pending\n")
                            .map_err(|e| format!("{why}; and marking it pending failed: {e}"))?;
                        return Err(why);
                    }
                    tracing::warn!("{why}");
                }
                Ok(())
            })
        })
    }
    /// From `show stat` through the master socket (the health view `status` shows).
    async fn server_view(&self, backend: &str, server: &str) -> Result<EdgeView, String> {
        let health = self.health().await?;
        let server = health.iter().find(|b| b.backend == backend).and_then(|b| b.server(server));
        Ok(edge_view(server.map(|s| &s.status), server.and_then(|s| s.check_status.as_deref())))
    }
}
