//! The `haproxy.cfg` text of a rendered edge: the context `render` builds (every value
//! already checked to be a safe token) written out line by line.
//!
//! Written by hand rather than through a template engine: the config of a host with
//! hundreds of apps is rendered on every poll (the plan compares it with the live one),
//! and a template's variable lookups cost more than the rest of the plan. The output is
//! the contract (plan snapshots hold it byte for byte); every line below is in the order
//! HAProxy reads it.

use std::fmt::Write;

/// Everything the config text holds, in the order it is written.
pub(super) struct Ctx {
    pub(super) env_list: String,
    pub(super) global: GlobalCtx,
    pub(super) defaults: DefaultsCtx,
    pub(super) binds: Vec<String>,
    pub(super) host_acls: Vec<HostAcl>,
    pub(super) path_acls: Vec<PathAcl>,
    pub(super) redirects: Vec<String>,
    pub(super) rules: Vec<Rule>,
    pub(super) default_backend: &'static str,
    pub(super) app_backends: Vec<AppBackend>,
    pub(super) external_backends: Vec<ExternalCtx>,
}

pub(super) struct GlobalCtx {
    pub(super) stats_socket: String,
    pub(super) server_state_file: String,
    pub(super) hard_stop_after: String,
    pub(super) log: String,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) chroot: Option<String>,
}

pub(super) struct DefaultsCtx {
    pub(super) timeout_connect: String,
    pub(super) timeout_client: String,
    pub(super) timeout_server: String,
    pub(super) timeout_http_request: String,
    pub(super) timeout_tunnel: String,
}

pub(super) struct HostAcl {
    pub(super) name: String,
    pub(super) hosts: String,
}

pub(super) struct PathAcl {
    pub(super) name: String,
    pub(super) criterion: &'static str,
    pub(super) value: String,
}

pub(super) struct Rule {
    pub(super) backend: String,
    pub(super) condition: String,
}

pub(super) struct AppBackend {
    pub(super) comment: String,
    pub(super) name: String,
    pub(super) balance: &'static str,
    pub(super) hash_consistent: bool,
    pub(super) cookie: Option<String>,
    pub(super) health_path: String,
    pub(super) expect_status: u16,
    pub(super) check_timeout: String,
    pub(super) inter: String,
    pub(super) fall: u32,
    pub(super) rise: u32,
    pub(super) servers: Vec<ServerCtx>,
}

pub(super) struct ServerCtx {
    pub(super) name: String,
    pub(super) address: String,
    pub(super) disabled: bool,
}

pub(super) struct ExternalCtx {
    pub(super) comment: String,
    pub(super) name: String,
    pub(super) health_path: Option<String>,
    pub(super) check_host: String,
    pub(super) servers: Vec<ServerCtx>,
}

/// A value that is present and not empty (an empty optional setting writes no line).
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

const HEADER: &str = "\
# Server names are `<color>-<release>` and `init-addr libc,none` takes addresses from
# this file (never from the server-state file), so no stale address can be pinned.
";

const TLS: &str = "    # Mozilla \"intermediate\" TLS, as Debian's default config.
    ssl-default-bind-ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384
    ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
";

/// The config text. Writing into a `String` cannot fail, so neither can this.
pub(super) fn config_text(c: &Ctx) -> String {
    let mut out = String::with_capacity(4096 + 700 * c.app_backends.len());
    // `fmt::Write` for `String` never returns an error.
    let _ = write_config(&mut out, c);
    out
}

fn write_config(o: &mut String, c: &Ctx) -> std::fmt::Result {
    let g = &c.global;
    writeln!(
        o,
        "# The shared HAProxy edge of this host, rendered by veza-agent from the environments"
    )?;
    writeln!(o, "# {}. Do not edit: the agent replaces this file on every change.", c.env_list)?;
    o.push_str(HEADER);
    o.push_str("\nglobal\n    master-worker\n");
    writeln!(o, "    stats socket {} mode 600 level admin expose-fd listeners", g.stats_socket)?;
    o.push_str("    stats timeout 30s\n");
    writeln!(o, "    server-state-file {}", g.server_state_file)?;
    writeln!(o, "    hard-stop-after {}", g.hard_stop_after)?;
    writeln!(o, "    log {}", g.log)?;
    for (directive, value) in [("chroot", &g.chroot), ("user", &g.user), ("group", &g.group)] {
        if let Some(v) = set(value) {
            writeln!(o, "    {directive} {v}")?;
        }
    }
    o.push_str(TLS);

    let d = &c.defaults;
    o.push_str("\ndefaults\n    mode http\n    log global\n    option httplog\n");
    o.push_str("    option dontlognull\n    option forwardfor\n");
    writeln!(o, "    timeout connect {}", d.timeout_connect)?;
    writeln!(o, "    timeout client {}", d.timeout_client)?;
    writeln!(o, "    timeout server {}", d.timeout_server)?;
    writeln!(o, "    timeout http-request {}", d.timeout_http_request)?;
    writeln!(o, "    timeout tunnel {}", d.timeout_tunnel)?;
    o.push_str("    load-server-state-from-file global\n");

    o.push_str("\nfrontend fe_edge\n");
    for bind in &c.binds {
        writeln!(o, "    bind {bind}")?;
    }
    o.push_str("\n    # Host name without the port, lowercased.\n");
    o.push_str("    http-request set-var(txn.host) req.hdr(host),field(1,:),lower\n");
    for acl in &c.host_acls {
        writeln!(o, "    acl {} var(txn.host) -m str {}", acl.name, acl.hosts)?;
    }
    if !c.path_acls.is_empty() {
        o.push('\n');
        for acl in &c.path_acls {
            writeln!(o, "    acl {} {} {}", acl.name, acl.criterion, acl.value)?;
        }
    }
    if !c.redirects.is_empty() {
        o.push('\n');
        for acl in &c.redirects {
            writeln!(o, "    http-request redirect scheme https code 301 if {acl} !{{ ssl_fc }}")?;
        }
    }
    o.push('\n');
    for rule in &c.rules {
        writeln!(o, "    use_backend {} if {}", rule.backend, rule.condition)?;
    }
    writeln!(o, "    default_backend {}", c.default_backend)?;

    for b in &c.app_backends {
        writeln!(o, "\n# {}\nbackend {}\n    balance {}", b.comment, b.name, b.balance)?;
        if b.hash_consistent {
            o.push_str("    hash-type consistent\n");
        }
        let cookie = set(&b.cookie);
        if let Some(cookie) = cookie {
            writeln!(o, "    cookie {cookie} insert indirect nocache")?;
        }
        o.push_str("    option httpchk\n");
        writeln!(
            o,
            "    http-check send meth GET uri {} ver HTTP/1.1 hdr Host localhost",
            b.health_path
        )?;
        writeln!(o, "    http-check expect status {}", b.expect_status)?;
        writeln!(o, "    timeout check {}", b.check_timeout)?;
        writeln!(
            o,
            "    default-server inter {} fall {} rise {} init-addr libc,none",
            b.inter, b.fall, b.rise
        )?;
        for s in &b.servers {
            write!(o, "    server {} {} check", s.name, s.address)?;
            if cookie.is_some() {
                write!(o, " cookie {}", s.name)?;
            }
            if s.disabled {
                o.push_str(" disabled");
            }
            o.push('\n');
        }
    }
    for b in &c.external_backends {
        writeln!(o, "\n# {}\nbackend {}\n    balance roundrobin", b.comment, b.name)?;
        let health = set(&b.health_path);
        if let Some(path) = health {
            o.push_str("    option httpchk\n");
            writeln!(
                o,
                "    http-check send meth GET uri {path} ver HTTP/1.1 hdr Host {}",
                b.check_host
            )?;
            o.push_str("    http-check expect status 200-399\n");
        }
        o.push_str("    default-server init-addr libc,none\n");
        for s in &b.servers {
            write!(o, "    server {} {}", s.name, s.address)?;
            if health.is_some() {
                o.push_str(" check");
            }
            o.push('\n');
        }
    }
    writeln!(o, "\n# Unknown host names.\nbackend {}", c.default_backend)?;
    o.push_str("    http-request return status 503 content-type text/plain string \"no site is served under this host name\"\n");
    Ok(())
}
