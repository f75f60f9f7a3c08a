//! The shared HAProxy edge: every environment of a host rendered into one `haproxy.cfg`.
//!
//! One HAProxy serves every environment of the host (the seed's single `veza-haproxy`):
//! a host-name ACL per environment selects the environment, path ACLs select the app
//! within it (path routes before the environment's default route), and each
//! environment × app gets one backend `<env>_<app>` holding both colors. The active color
//! is enabled; the other is `disabled`, kept as a standby for an instant switch back.
//! Server names are `<color>-<short release>`, so a new release is a new server and the
//! server-state file can never pin a stale address onto it.
//!
//! Pure: [`render_edge`] turns [`EdgeEnv`]s (built from validated manifests with
//! [`EdgeEnv::from_manifest`]) and host [`EdgeSettings`] into the config text and an
//! [`EdgeSummary`] (which server is active in which backend) for status and install.
//! The output is deterministic: the same input always gives the same bytes, so an
//! unchanged edge is detected by comparing text and never reloads HAProxy.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use veza_model::manifest::{Balance, Color, Manifest, Release};
use veza_model::naming;

/// The template shipped with the project.
const TEMPLATE: &str = include_str!("../templates/haproxy.cfg.tera");
const TEMPLATE_NAME: &str = "haproxy.cfg";

/// Plain HTTP listen address when no environment declares `edge.listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
/// HTTPS listen address when TLS is on and no environment declares `edge.listen.https`.
pub const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:443";
/// The backend that answers 503 for unknown host names.
pub const DEFAULT_503_BACKEND: &str = "default_503";
/// Upstream DNS suffix when an app declares neither `dns_suffix` nor `loopback_ports`.
pub const DEFAULT_DNS_SUFFIX: &str = "lxd";

/// Why the edge could not be rendered. Nothing is written when this happens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// Two inputs describe the same environment.
    #[error("environment `{env}` is given twice to the edge renderer")]
    DuplicateEnv { env: String },
    /// An override names an app the environment does not declare.
    #[error("active-color override for `{env}/{app}`: the environment declares no app `{app}`")]
    UnknownOverride { env: String, app: String },
    /// A route names an app the environment does not declare.
    #[error("route `{route}` of environment `{env}` points to undefined app `{app}`")]
    UnknownApp { env: String, route: String, app: String },
    /// The active color of an app has no release (an empty slot cannot serve).
    #[error("`{env}/{app}`: the active color `{color}` has an empty slot; nothing could serve it")]
    ActiveSlotEmpty { env: String, app: String, color: Color },
    /// An app with loopback upstreams has no port for one of its non-empty slots.
    #[error(
        "`{env}/{app}`: the {color} slot has a release but `upstream.loopback_ports` has no port for it"
    )]
    MissingLoopbackPort { env: String, app: String, color: Color },
    /// Several routes to one app ask for different balance algorithms.
    #[error(
        "`{env}/{app}`: routes ask for different balance algorithms ({first} and {second}); one backend has one"
    )]
    ConflictingBalance { env: String, app: String, first: &'static str, second: &'static str },
    /// Environments declare different listen addresses for the shared edge.
    #[error(
        "edge listen addresses differ: `{first}` ({first_env}) and `{second}` ({second_env}); the shared edge has one set"
    )]
    ListenConflict { first_env: String, first: String, second_env: String, second: String },
    /// Two backends would get the same name.
    #[error("two backends would both be named `{name}` ({first} and {second}); rename one")]
    NameCollision { name: String, first: String, second: String },
    /// A value would not be a single safe HAProxy config token (whitespace, control or
    /// comment characters could change the meaning of the config).
    #[error("{what} `{value}` cannot be written into haproxy.cfg: {why}")]
    UnsafeValue { what: String, value: String, why: &'static str },
    /// The shipped template failed (a bug in the project, not in the input).
    #[error("haproxy.cfg template failed: {message}")]
    Template { message: String },
}

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
    /// `false` when the server is rendered `disabled` (the standby color).
    pub enabled: bool,
}

fn serialize_color<S: serde::Serializer>(color: &Option<Color>, s: S) -> Result<S::Ok, S::Error> {
    match color {
        Some(c) => s.serialize_some(c.as_str()),
        None => s.serialize_none(),
    }
}

// ------------------------------------------------------------------ template context

#[derive(Serialize)]
struct Ctx {
    env_list: String,
    global: GlobalCtx,
    defaults: DefaultsCtx,
    binds: Vec<String>,
    host_acls: Vec<HostAcl>,
    path_acls: Vec<PathAcl>,
    redirects: Vec<String>,
    rules: Vec<Rule>,
    default_backend: &'static str,
    app_backends: Vec<AppBackend>,
    external_backends: Vec<ExternalCtx>,
}

#[derive(Serialize)]
struct GlobalCtx {
    stats_socket: String,
    server_state_file: String,
    hard_stop_after: String,
    log: String,
    user: Option<String>,
    group: Option<String>,
    chroot: Option<String>,
}

#[derive(Serialize)]
struct DefaultsCtx {
    timeout_connect: String,
    timeout_client: String,
    timeout_server: String,
    timeout_http_request: String,
    timeout_tunnel: String,
}

#[derive(Serialize)]
struct HostAcl {
    name: String,
    hosts: String,
}

#[derive(Serialize)]
struct PathAcl {
    name: String,
    criterion: &'static str,
    value: String,
}

#[derive(Serialize)]
struct Rule {
    backend: String,
    condition: String,
}

#[derive(Serialize)]
struct AppBackend {
    comment: String,
    name: String,
    balance: &'static str,
    hash_consistent: bool,
    cookie: Option<String>,
    health_path: String,
    expect_status: u16,
    check_timeout: String,
    inter: String,
    fall: u32,
    rise: u32,
    servers: Vec<ServerCtx>,
}

#[derive(Serialize)]
struct ServerCtx {
    name: String,
    address: String,
    disabled: bool,
}

#[derive(Serialize)]
struct ExternalCtx {
    comment: String,
    name: String,
    health_path: Option<String>,
    check_host: String,
    servers: Vec<ServerCtx>,
}

// ------------------------------------------------------------------ rendering

/// Renders the shared edge of a host from all its environments.
///
/// The order of `envs` does not matter: environments are sorted by name. Host names are
/// matched without the port and lowercased. Every value written into the config is
/// checked to be one safe token, so no input can inject a directive.
pub fn render_edge(envs: &[EdgeEnv], settings: &EdgeSettings) -> Result<RenderedEdge, RenderError> {
    let mut envs: Vec<&EdgeEnv> = envs.iter().collect();
    envs.sort_by(|a, b| a.name.cmp(&b.name));
    for pair in envs.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(RenderError::DuplicateEnv { env: pair[0].name.clone() });
        }
    }
    for env in &envs {
        token("environment name", &env.name)?;
    }

    // Listen addresses: one set for the whole edge.
    let mut declared: Option<(&str, &(String, Option<String>))> = None;
    for env in &envs {
        if let Some(listen) = &env.listen {
            match declared {
                None => declared = Some((&env.name, listen)),
                Some((first_env, first)) if first != listen => {
                    let show = |l: &(String, Option<String>)| {
                        format!("{} {}", l.0, l.1.as_deref().unwrap_or("-"))
                    };
                    return Err(RenderError::ListenConflict {
                        first_env: first_env.to_string(),
                        first: show(first),
                        second_env: env.name.clone(),
                        second: show(listen),
                    });
                }
                Some(_) => {}
            }
        }
    }
    let http_listen = declared.map_or(DEFAULT_HTTP_LISTEN, |(_, l)| l.0.as_str());
    let https_listen = declared.and_then(|(_, l)| l.1.as_deref()).unwrap_or(DEFAULT_HTTPS_LISTEN);
    let cert_dirs: BTreeSet<&str> =
        envs.iter().filter_map(|e| e.tls.as_ref().map(|t| t.cert_dir.as_str())).collect();
    let mut binds = vec![token("listen address", http_listen)?.to_string()];
    if !cert_dirs.is_empty() {
        let mut bind = format!("{} ssl", token("listen address", https_listen)?);
        for dir in &cert_dirs {
            bind.push_str(&format!(" crt {}", token("certificate directory", dir)?));
        }
        bind.push_str(" alpn h2,http/1.1");
        binds.push(bind);
    }

    let mut host_acls = Vec::new();
    let mut path_acls = Vec::new();
    let mut redirects = Vec::new();
    let mut rules = Vec::new();
    let mut app_backends = Vec::new();
    let mut external_backends = Vec::new();
    let mut summary = Vec::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |name: &str, what: String| match names.get(name) {
        Some(first) => Err(RenderError::NameCollision {
            name: name.to_string(),
            first: first.clone(),
            second: what,
        }),
        None => {
            names.insert(name.to_string(), what);
            Ok(())
        }
    };
    claim(DEFAULT_503_BACKEND, "the 503 backend for unknown hosts".to_string())?;

    for env in &envs {
        let hosts = host_list(&env.hosts)?;
        let host_acl = format!("host_{}", env.name);
        let redirect = env.tls.as_ref().is_some_and(|t| t.redirect_http);
        if !hosts.is_empty() {
            host_acls.push(HostAcl { name: host_acl.clone(), hosts: hosts.join(" ") });
            if redirect {
                redirects.push(host_acl.clone());
            }
        }

        // Routes: path routes in manifest order, then the default route.
        let mut balances: BTreeMap<&str, (Balance, &str)> = BTreeMap::new();
        let mut per_app_count: BTreeMap<&str, usize> = BTreeMap::new();
        let mut default_rule = None;
        for route in &env.routes {
            let route_name = route.path_prefix.as_deref().unwrap_or("(default)");
            if !env.apps.contains_key(&route.app) {
                return Err(RenderError::UnknownApp {
                    env: env.name.clone(),
                    route: route_name.to_string(),
                    app: route.app.clone(),
                });
            }
            token("app name", &route.app)?;
            let balance = route.balance.unwrap_or(Balance::Roundrobin);
            match balances.get(route.app.as_str()) {
                Some((first, _)) if *first != balance => {
                    return Err(RenderError::ConflictingBalance {
                        env: env.name.clone(),
                        app: route.app.clone(),
                        first: balance_name(*first),
                        second: balance_name(balance),
                    });
                }
                Some(_) => {}
                None => {
                    balances.insert(&route.app, (balance, route_name));
                }
            }
            let backend = naming::backend(&env.name, &route.app);
            if hosts.is_empty() {
                continue;
            }
            match &route.path_prefix {
                None => default_rule = Some(Rule { backend, condition: host_acl.clone() }),
                Some(prefix) => {
                    token("path prefix", prefix)?;
                    let n = per_app_count.entry(&route.app).or_insert(0);
                    *n += 1;
                    let mut acl = format!("path_{}_{}", env.name, route.app);
                    if *n > 1 {
                        acl.push_str(&format!("_{n}"));
                    }
                    // `/api` matches `/api` and `/api/…`, not `/apiary`.
                    if prefix.ends_with('/') {
                        path_acls.push(PathAcl {
                            name: acl.clone(),
                            criterion: "path_beg",
                            value: prefix.clone(),
                        });
                    } else {
                        path_acls.push(PathAcl {
                            name: acl.clone(),
                            criterion: "path",
                            value: prefix.clone(),
                        });
                        path_acls.push(PathAcl {
                            name: acl.clone(),
                            criterion: "path_beg",
                            value: format!("{prefix}/"),
                        });
                    }
                    rules.push(Rule { backend, condition: format!("{host_acl} {acl}") });
                }
            }
        }
        rules.extend(default_rule);

        // One backend per app.
        if let Some(cookie) = &env.sticky_cookie {
            token("sticky cookie", cookie)?;
        }
        for (app_name, app) in &env.apps {
            token("app name", app_name)?;
            let name = naming::backend(&env.name, app_name);
            claim(&name, format!("app `{app_name}` of environment `{}`", env.name))?;
            if !app.slots.contains_key(&app.active) {
                return Err(RenderError::ActiveSlotEmpty {
                    env: env.name.clone(),
                    app: app_name.clone(),
                    color: app.active,
                });
            }
            let balance = balances.get(app_name.as_str()).map_or(Balance::Roundrobin, |b| b.0);
            let mut servers = Vec::new();
            let mut server_summaries = Vec::new();
            for color in Color::ALL {
                let Some(slot) = app.slots.get(&color) else { continue };
                let server = naming::server(color, &slot.release);
                token("server address", &slot.address)?;
                let enabled = color == app.active;
                servers.push(ServerCtx {
                    name: server.clone(),
                    address: slot.address.clone(),
                    disabled: !enabled,
                });
                server_summaries.push(ServerSummary {
                    name: server,
                    address: slot.address.clone(),
                    color: Some(color),
                    release: Some(slot.release.as_str().to_string()),
                    enabled,
                });
            }
            let h = &app.health;
            token("health path", &h.path)?;
            let routed: Vec<&str> = env
                .routes
                .iter()
                .filter(|r| &r.app == app_name)
                .map(|r| r.path_prefix.as_deref().unwrap_or("default route"))
                .collect();
            let comment = format!(
                "{}/{}: active {}, routes: {}",
                env.name,
                app_name,
                app.active,
                if routed.is_empty() { "none".to_string() } else { routed.join(", ") }
            );
            app_backends.push(AppBackend {
                comment,
                name: name.clone(),
                balance: balance_name(balance),
                hash_consistent: matches!(balance, Balance::Uri | Balance::Source),
                cookie: env.sticky_cookie.clone(),
                health_path: h.path.clone(),
                expect_status: h.expect_status,
                check_timeout: duration(h.timeout),
                inter: duration(h.interval),
                fall: h.fall.max(1),
                rise: h.rise.max(1),
                servers,
            });
            summary.push(BackendSummary {
                name,
                kind: BackendKind::App { env: env.name.clone(), app: app_name.clone() },
                hosts: if routed.is_empty() { Vec::new() } else { hosts.clone() },
                servers: server_summaries,
            });
        }
    }

    // External backends, after every environment (their host names are disjoint).
    let mut externals: Vec<(&str, &str, &EdgeExternal, bool)> = Vec::new();
    for env in &envs {
        let redirect = env.tls.as_ref().is_some_and(|t| t.redirect_http);
        for (name, ext) in &env.external_backends {
            externals.push((name, &env.name, ext, redirect));
        }
    }
    externals.sort_by(|a, b| a.0.cmp(b.0));
    for (ext_name, env_name, ext, redirect) in externals {
        token("external backend name", ext_name)?;
        let name = format!("ext_{ext_name}");
        claim(&name, format!("external backend `{ext_name}` of environment `{env_name}`"))?;
        let hosts = host_list(&ext.hosts)?;
        let acl = format!("host_ext_{ext_name}");
        if !hosts.is_empty() {
            host_acls.push(HostAcl { name: acl.clone(), hosts: hosts.join(" ") });
            if redirect {
                redirects.push(acl.clone());
            }
            rules.push(Rule { backend: name.clone(), condition: acl });
        }
        if let Some(path) = &ext.health_path {
            token("health path", path)?;
        }
        let mut servers = Vec::new();
        let mut server_summaries = Vec::new();
        for address in &ext.servers {
            token("server address", address)?;
            let mut server = external_server_name(address);
            if servers.iter().any(|s: &ServerCtx| s.name == server) {
                server = format!("{server}-{}", servers.len() + 1);
            }
            servers.push(ServerCtx {
                name: server.clone(),
                address: address.clone(),
                disabled: false,
            });
            server_summaries.push(ServerSummary {
                name: server,
                address: address.clone(),
                color: None,
                release: None,
                enabled: true,
            });
        }
        external_backends.push(ExternalCtx {
            comment: format!(
                "external `{ext_name}` (declared by {env_name}), not deployed by the agent"
            ),
            name: name.clone(),
            health_path: ext.health_path.clone(),
            check_host: hosts.first().cloned().unwrap_or_else(|| "localhost".to_string()),
            servers,
        });
        summary.push(BackendSummary {
            name,
            kind: BackendKind::External { name: ext_name.to_string() },
            hosts,
            servers: server_summaries,
        });
    }
    summary.push(BackendSummary {
        name: DEFAULT_503_BACKEND.to_string(),
        kind: BackendKind::Default,
        hosts: Vec::new(),
        servers: Vec::new(),
    });

    let ctx = Ctx {
        env_list: if envs.is_empty() {
            "(none)".to_string()
        } else {
            envs.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
        },
        global: GlobalCtx {
            stats_socket: token("stats socket", &settings.stats_socket)?.to_string(),
            server_state_file: token("server-state file", &settings.server_state_file)?.to_string(),
            hard_stop_after: duration(settings.hard_stop_after),
            log: line("log target", &settings.log)?.to_string(),
            user: settings
                .user
                .as_deref()
                .map(|u| token("user", u).map(str::to_string))
                .transpose()?,
            group: settings
                .group
                .as_deref()
                .map(|g| token("group", g).map(str::to_string))
                .transpose()?,
            chroot: settings
                .chroot
                .as_deref()
                .map(|c| token("chroot", c).map(str::to_string))
                .transpose()?,
        },
        defaults: DefaultsCtx {
            timeout_connect: duration(settings.timeout_connect),
            timeout_client: duration(settings.timeout_client),
            timeout_server: duration(settings.timeout_server),
            timeout_http_request: duration(settings.timeout_http_request),
            timeout_tunnel: duration(settings.timeout_tunnel),
        },
        binds: binds.clone(),
        host_acls,
        path_acls,
        redirects,
        rules,
        default_backend: DEFAULT_503_BACKEND,
        app_backends,
        external_backends,
    };
    let config = render_template(&ctx)?;
    Ok(RenderedEdge { config, summary: EdgeSummary { binds, backends: summary } })
}

fn render_template(ctx: &Ctx) -> Result<String, RenderError> {
    // The template is parsed once per process; rendering it is the only per-call work.
    static TERA: std::sync::OnceLock<Result<tera::Tera, String>> = std::sync::OnceLock::new();
    let tera = TERA
        .get_or_init(|| {
            let mut tera = tera::Tera::default();
            tera.autoescape_on(Vec::new());
            tera.add_raw_template(TEMPLATE_NAME, TEMPLATE).map_err(|e| error_chain(&e))?;
            Ok(tera)
        })
        .as_ref()
        .map_err(|message| RenderError::Template { message: message.clone() })?;
    let failed = |e: tera::Error| RenderError::Template { message: error_chain(&e) };
    let context = tera::Context::from_serialize(ctx).map_err(failed)?;
    tera.render(TEMPLATE_NAME, &context).map_err(failed)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Lowercased, checked host names, in input order.
fn host_list(hosts: &[String]) -> Result<Vec<String>, RenderError> {
    hosts
        .iter()
        .map(|h| {
            let lower = h.to_ascii_lowercase();
            token("host name", &lower)?;
            Ok(lower)
        })
        .collect()
}

/// `10.0.20.105:3000` → `srv-10.0.20.105-3000`: the name encodes the address, so the
/// state file cannot pin an old address onto a changed server.
fn external_server_name(address: &str) -> String {
    let mut cleaned = String::new();
    for c in address.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' };
        if !(c == '-' && (cleaned.is_empty() || cleaned.ends_with('-'))) {
            cleaned.push(c);
        }
    }
    format!("srv-{}", cleaned.trim_end_matches('-'))
}

fn balance_name(b: Balance) -> &'static str {
    match b {
        Balance::Roundrobin => "roundrobin",
        Balance::Leastconn => "leastconn",
        Balance::Uri => "uri",
        Balance::Source => "source",
    }
}

/// HAProxy time format: the largest of `d`, `h`, `m`, `s` that divides exactly, else `ms`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A single config token: no whitespace, quotes, backslashes, comment signs or control
/// characters (the rule `validate` applies too: [`veza_model::lexical::haproxy_token`]).
fn token<'a>(what: &str, value: &'a str) -> Result<&'a str, RenderError> {
    veza_model::lexical::haproxy_token(value).map(|()| value).map_err(|why| {
        RenderError::UnsafeValue { what: what.to_string(), value: value.to_string(), why }
    })
}

/// Several space-separated tokens on one line.
fn line<'a>(what: &str, value: &'a str) -> Result<&'a str, RenderError> {
    veza_model::lexical::haproxy_words(value).map(|()| value).map_err(|why| {
        RenderError::UnsafeValue { what: what.to_string(), value: value.to_string(), why }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_haproxy_units() {
        for (d, s) in [
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::ZERO, "0ms"),
        ] {
            assert_eq!(duration(d), s);
        }
    }

    #[test]
    fn tokens_refuse_what_could_inject_directives() {
        for bad in ["", "a b", "a\nbackend x", "a#b", "x\"y", "tab\there", "q'", "b\\s"] {
            assert!(token("t", bad).is_err(), "{bad:?}");
        }
        for good in ["/api/v1/health", "veza-backend-blue.lxd:8080", "VEZA_prod", "[::1]:80"] {
            assert!(token("t", good).is_ok(), "{good:?}");
        }
        assert!(line("log", "/dev/log local0").is_ok());
        assert!(line("log", "stderr format short local0 info").is_ok());
        assert!(line("log", "x\nfrontend evil").is_err());
    }

    #[test]
    fn external_server_names_encode_the_address() {
        assert_eq!(external_server_name("10.0.20.105:3000"), "srv-10.0.20.105-3000");
        assert_eq!(external_server_name("[::1]:80"), "srv-1-80");
        assert_eq!(external_server_name("forgejo.lxd:3000"), "srv-forgejo.lxd-3000");
    }
}
