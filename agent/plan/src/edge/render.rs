//! Rendering: the template context built from [`EdgeEnv`]s and [`EdgeSettings`], the
//! `haproxy.cfg` text, and the checks that keep every value one safe token.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use veza_model::error::error_chain;
use veza_model::manifest::{Balance, Color};
use veza_model::naming;

use super::model::{
    BackendKind, BackendSummary, EdgeEnv, EdgeExternal, EdgeSettings, EdgeSummary, RenderedEdge,
    ServerSummary,
};
use super::{DEFAULT_503_BACKEND, DEFAULT_HTTP_LISTEN, DEFAULT_HTTPS_LISTEN, RenderError};

/// The template shipped with the project.
const TEMPLATE: &str = include_str!("../../templates/haproxy.cfg.tera");
const TEMPLATE_NAME: &str = "haproxy.cfg";

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
    /// The idle color: health-checked by HAProxy but given no traffic (`weight 0`, no
    /// persistence cookie), so its checks are current when it is promoted.
    standby: bool,
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
        // Each app's routes, as its backend's comment lists them (one pass over the
        // routes, not one per app).
        let mut routed_by_app: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut default_rule = None;
        for route in &env.routes {
            let route_name = route.path_prefix.as_deref().unwrap_or("(default)");
            routed_by_app
                .entry(route.app.as_str())
                .or_default()
                .push(route.path_prefix.as_deref().unwrap_or("default route"));
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
                    standby: !enabled,
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
            let routed = routed_by_app.get(app_name.as_str()).map_or(&[][..], Vec::as_slice);
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
                standby: false,
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
