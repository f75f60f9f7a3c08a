//! The edge's data: what one environment contributes ([`EdgeEnv`], built from a
//! validated manifest), the host's [`EdgeSettings`], and what a render produced
//! ([`RenderedEdge`], [`EdgeSummary`]).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use veza_model::manifest::{Balance, Color, Manifest, Release};

use super::{DEFAULT_DNS_SUFFIX, RenderError};

/// Host-level settings of the edge that manifests do not carry (paths and timeouts of
/// the HAProxy installation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    /// Worker stats socket (`stats socket … level admin`).
    pub stats_socket: String,
    /// `server-state-file`, dumped by the agent right before every reload.
    pub server_state_file: String,
    /// `hard-stop-after`: how long an old worker may drain in-flight requests.
    pub hard_stop_after: Duration,
    /// Arguments of the global `log` line, e.g. `/dev/log local0`.
    pub log: String,
    /// `user` the workers run as (none: the user that started HAProxy).
    pub user: Option<String>,
    /// `group` the workers run as.
    pub group: Option<String>,
    /// `chroot` of the workers.
    pub chroot: Option<String>,
    /// `timeout connect`.
    pub timeout_connect: Duration,
    /// `timeout client`.
    pub timeout_client: Duration,
    /// `timeout server`.
    pub timeout_server: Duration,
    /// `timeout http-request`.
    pub timeout_http_request: Duration,
    /// `timeout tunnel` (websockets).
    pub timeout_tunnel: Duration,
}

impl Default for EdgeSettings {
    /// The Debian package's paths and account (`/run/haproxy/admin.sock`,
    /// `/var/lib/haproxy`, user and group `haproxy`, chrooted).
    fn default() -> Self {
        EdgeSettings {
            stats_socket: "/run/haproxy/admin.sock".to_string(),
            server_state_file: "/var/lib/haproxy/server-state".to_string(),
            hard_stop_after: Duration::from_secs(30),
            log: "/dev/log local0".to_string(),
            user: Some("haproxy".to_string()),
            group: Some("haproxy".to_string()),
            chroot: Some("/var/lib/haproxy".to_string()),
            timeout_connect: Duration::from_secs(5),
            timeout_client: Duration::from_secs(30),
            timeout_server: Duration::from_secs(30),
            timeout_http_request: Duration::from_secs(10),
            timeout_tunnel: Duration::from_secs(3600),
        }
    }
}

/// One environment's part of the edge, with defaults resolved and slot addresses computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeEnv {
    /// Environment name (`metadata.name`).
    pub name: String,
    /// Public host names of the environment's apps.
    pub hosts: Vec<String>,
    /// Path routes in manifest order (the default route has no prefix).
    pub routes: Vec<EdgeRoute>,
    /// Sticky-session cookie name, if any.
    pub sticky_cookie: Option<String>,
    /// Apps by name.
    pub apps: BTreeMap<String, EdgeApp>,
    /// Backends fronted but not deployed (Forgejo, static sites), by name.
    pub external_backends: BTreeMap<String, EdgeExternal>,
    /// TLS termination, if any.
    pub tls: Option<EdgeTls>,
    /// Explicit listen addresses (`http`, optional `https`), if declared.
    pub listen: Option<(String, Option<String>)>,
}

/// A path route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRoute {
    /// `None` for the environment's default route.
    pub path_prefix: Option<String>,
    /// The app serving the route.
    pub app: String,
    /// Requested balance algorithm.
    pub balance: Option<Balance>,
}

/// A blue/green app as the edge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeApp {
    /// The color that receives traffic.
    pub active: Color,
    /// HAProxy health check.
    pub health: EdgeHealth,
    /// Non-empty slots by color.
    pub slots: BTreeMap<Color, EdgeSlot>,
}

/// One non-empty slot: the release it runs and where the edge reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSlot {
    /// The release running in the slot.
    pub release: Release,
    /// `address:port` as HAProxy connects to it.
    pub address: String,
}

/// A health check with the manifest defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeHealth {
    /// Path requested with `GET`.
    pub path: String,
    /// `inter`.
    pub interval: Duration,
    /// `timeout check`.
    pub timeout: Duration,
    /// `rise`.
    pub rise: u32,
    /// `fall`.
    pub fall: u32,
    /// Expected status.
    pub expect_status: u16,
}

/// An external backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeExternal {
    /// Host names routed to it.
    pub hosts: Vec<String>,
    /// Servers as `address:port`.
    pub servers: Vec<String>,
    /// Optional health-check path.
    pub health_path: Option<String>,
}

/// TLS termination settings of one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTls {
    /// Directory of PEM certificates.
    pub cert_dir: String,
    /// Redirect plain HTTP to HTTPS for this environment's hosts.
    pub redirect_http: bool,
}

impl EdgeEnv {
    /// The edge part of one validated manifest, or `None` when it declares no `edge`.
    ///
    /// The active color of each app is the manifest's `active`, unless `active_overrides`
    /// names the app: the planner passes the live color there while a promotion waits for
    /// its health gate, or the previous color when it rolls back.
    pub fn from_manifest(
        manifest: &Manifest,
        active_overrides: &BTreeMap<String, Color>,
    ) -> Result<Option<EdgeEnv>, RenderError> {
        let env = &manifest.metadata.name;
        if let Some(app) = active_overrides.keys().find(|a| !manifest.apps.contains_key(*a)) {
            return Err(RenderError::UnknownOverride { env: env.clone(), app: app.clone() });
        }
        let Some(edge) = &manifest.edge else { return Ok(None) };
        let prefix = manifest.metadata.instance_prefix();
        let mut apps = BTreeMap::new();
        for (name, app) in &manifest.apps {
            let mut slots = BTreeMap::new();
            for (color, slot) in &app.slots {
                let Some(release) = &slot.release else { continue };
                let address = match &app.upstream.loopback_ports {
                    Some(ports) => match ports.get(color) {
                        Some(port) => format!("127.0.0.1:{port}"),
                        None => {
                            return Err(RenderError::MissingLoopbackPort {
                                env: env.clone(),
                                app: name.clone(),
                                color: *color,
                            });
                        }
                    },
                    None => {
                        let suffix =
                            app.upstream.dns_suffix.as_deref().unwrap_or(DEFAULT_DNS_SUFFIX);
                        format!("{prefix}{name}-{color}.{suffix}:{}", app.port)
                    }
                };
                slots.insert(*color, EdgeSlot { release: release.clone(), address });
            }
            let h = &app.health;
            let health = EdgeHealth {
                path: h.path.clone(),
                interval: h.interval.map_or(Duration::from_secs(5), |d| d.get()),
                timeout: h.timeout.map_or(Duration::from_secs(2), |d| d.get()),
                rise: h.rise.unwrap_or(2),
                fall: h.fall.unwrap_or(3),
                expect_status: h.expect_status.unwrap_or(200),
            };
            let active = active_overrides.get(name).copied().unwrap_or(app.active);
            apps.insert(name.clone(), EdgeApp { active, health, slots });
        }
        Ok(Some(EdgeEnv {
            name: env.clone(),
            hosts: edge.hosts.clone(),
            routes: edge
                .routes
                .iter()
                .map(|r| EdgeRoute {
                    path_prefix: r.path_prefix.clone(),
                    app: r.app.clone(),
                    balance: r.balance,
                })
                .collect(),
            sticky_cookie: edge.sticky_cookie.clone(),
            apps,
            external_backends: edge
                .external_backends
                .iter()
                .map(|(name, e)| {
                    let ext = EdgeExternal {
                        hosts: e.hosts.clone(),
                        servers: e.servers.clone(),
                        health_path: e.health_path.clone(),
                    };
                    (name.clone(), ext)
                })
                .collect(),
            tls: edge.tls.as_ref().map(|t| EdgeTls {
                cert_dir: t.cert_dir.clone(),
                redirect_http: t.redirect_http.unwrap_or(true),
            }),
            listen: edge.listen.as_ref().map(|l| (l.http.clone(), l.https.clone())),
        }))
    }
}

/// The rendered edge: the config text and what it routes where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEdge {
    /// The complete `haproxy.cfg`.
    pub config: String,
    /// Backends and servers of `config`.
    pub summary: EdgeSummary,
}

/// Which backends the config has and which server is active in each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EdgeSummary {
    /// Frontend bind lines (addresses, with TLS options).
    pub binds: Vec<String>,
    /// Every backend, in config order.
    pub backends: Vec<BackendSummary>,
}

impl EdgeSummary {
    /// The color each app's backend routes to, by `(env, app)`: what an observer of this
    /// config reads back (`veza_model::live::LiveEdge`).
    pub fn active_colors(&self) -> BTreeMap<(String, String), Color> {
        self.backends
            .iter()
            .filter_map(|b| match (&b.kind, b.active().and_then(|s| s.color)) {
                (BackendKind::App { env, app }, Some(color)) => {
                    Some(((env.clone(), app.clone()), color))
                }
                _ => None,
            })
            .collect()
    }
}

/// What a backend serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendKind {
    /// A blue/green app of an environment.
    App { env: String, app: String },
    /// An external backend.
    External { name: String },
    /// The 503 backend for unknown host names.
    Default,
}

/// One backend of the rendered config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSummary {
    /// Backend name in the config.
    pub name: String,
    /// What it serves.
    #[serde(flatten)]
    pub kind: BackendKind,
    /// Host names routed to it.
    pub hosts: Vec<String>,
    /// Its servers, blue before green.
    pub servers: Vec<ServerSummary>,
}

impl BackendSummary {
    /// The enabled server of an app backend (the active color).
    pub fn active(&self) -> Option<&ServerSummary> {
        self.servers.iter().find(|s| s.enabled && s.color.is_some())
    }
}

/// One server line of the rendered config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerSummary {
    /// Server name in the config (`blue-0bd3e563b2` for app slots).
    pub name: String,
    /// `address:port`.
    pub address: String,
    /// The slot color, for app backends.
    #[serde(serialize_with = "serialize_color")]
    pub color: Option<Color>,
    /// The full release, for app backends.
    pub release: Option<String>,
    /// `false` for the standby color (rendered `weight 0`: checked, never routed to).
    pub enabled: bool,
}

fn serialize_color<S: serde::Serializer>(color: &Option<Color>, s: S) -> Result<S::Ok, S::Error> {
    match color {
        Some(c) => s.serialize_some(c.as_str()),
        None => s.serialize_none(),
    }
}
