//! Semantic validation: rules that relate several values, within one manifest and
//! across all the manifests one host applies.
//!
//! Every rule reports a key path; [`crate::parse::Positions`] turns it into a
//! `line:col`. All problems are collected, none stops the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::hint::closest;
use crate::lexical;
use crate::manifest::{Color, Device, DeviceType, Manifest};
use crate::parse::{Diagnostic, FileDiagnostic, Parsed, Seg};
use crate::path;

/// Config key prefixes the agent reserves for its own marks or Incus reserves.
const RESERVED_CONFIG_PREFIXES: [&str; 2] = ["user.veza.", "volatile."];

/// One problem found by a rule, before it is located.
#[derive(Debug, Clone)]
struct Issue {
    file: usize,
    path: Vec<Seg>,
    at_value: bool,
    message: String,
}

/// Collects issues for one manifest.
struct Rules<'a> {
    file: usize,
    issues: &'a mut Vec<Issue>,
}

impl Rules<'_> {
    fn key(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.issues.push(Issue { file: self.file, path, at_value: false, message: message.into() });
    }
    fn value(&mut self, path: Vec<Seg>, message: impl Into<String>) {
        self.issues.push(Issue { file: self.file, path, at_value: true, message: message.into() });
    }
}

/// Names declared anywhere in the set of manifests of one host.
#[derive(Default)]
struct Declared {
    profiles: BTreeSet<String>,
    networks: BTreeSet<String>,
    instances: BTreeSet<String>,
}

/// Validates a set of parsed manifests together (the manifests one host applies,
/// or all manifests of a repository). Returns every problem, sorted by file and position.
pub fn validate_set(files: &[(String, Parsed)]) -> Vec<FileDiagnostic> {
    let mut issues = Vec::new();
    let mut by_host: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (_, parsed)) in files.iter().enumerate() {
        by_host.entry(parsed.manifest.metadata.host.as_str()).or_default().push(i);
    }
    for members in by_host.values() {
        let mut declared = Declared::default();
        for &i in members {
            let m = &files[i].1.manifest;
            declared.profiles.extend(m.incus.profiles.keys().cloned());
            declared.networks.extend(m.incus.networks.keys().cloned());
            declared.instances.extend(m.incus.instances.keys().cloned());
        }
        for &i in members {
            let mut rules = Rules { file: i, issues: &mut issues };
            check_manifest(&files[i].1.manifest, &declared, &mut rules);
        }
        check_host_set(files, members, &mut issues);
    }
    let mut out: Vec<FileDiagnostic> = issues
        .into_iter()
        .map(|issue| {
            let (name, parsed) = &files[issue.file];
            let pos = if issue.at_value {
                parsed.positions.value(&issue.path)
            } else {
                parsed.positions.key(&issue.path)
            };
            (
                issue.file,
                FileDiagnostic {
                    file: name.clone(),
                    diagnostic: Diagnostic { pos, message: issue.message },
                },
            )
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    out.sort_by(|a, b| {
        (a.file.as_str(), a.diagnostic.pos, a.diagnostic.message.as_str()).cmp(&(
            b.file.as_str(),
            b.diagnostic.pos,
            b.diagnostic.message.as_str(),
        ))
    });
    out.dedup();
    out
}

/// Upper bound of `health.rise` and `health.fall`: the promotion gate probes a slot
/// `rise` times in a row, 200 ms apart, within the host's `promotion.health_timeout`.
const MAX_RISE_FALL: u32 = 20;

fn check_manifest(m: &Manifest, declared: &Declared, r: &mut Rules<'_>) {
    let env = &m.metadata.name;
    if !is_env_name(env) {
        r.value(
            path!["metadata", "name"],
            format!("invalid environment name `{env}`: use 1-32 lowercase letters, digits and dashes, starting with a letter"),
        );
    }
    if !is_dns_name(&m.metadata.host) {
        r.value(path!["metadata", "host"], format!("invalid host name `{}`", m.metadata.host));
    }
    if let Some(prefix) = &m.metadata.instance_prefix
        && !prefix.is_empty()
        && !is_incus_name(prefix.trim_end_matches('-'))
    {
        r.value(
            path!["metadata", "instance_prefix"],
            format!("invalid instance prefix `{prefix}`"),
        );
    }

    if let Some(project) = &m.incus.project {
        r.key(
            path!["incus", "project"],
            format!("`incus.project: {project}` is not supported: the agent manages the `default` Incus project only (hint: remove the key; give each environment its own `instance_prefix` instead)"),
        );
    }

    for (name, net) in &m.incus.networks {
        let p = path!["incus", "networks", name.as_str()];
        if !is_incus_name(name) || name.len() > 15 {
            r.key(p.clone(), format!("invalid network name `{name}`: 1-15 letters, digits and dashes, starting with a letter"));
        }
        if !net.managed && (net.kind.is_some() || !net.config.is_empty()) {
            r.key(p.clone(), format!("network `{name}` is referenced (managed: false), so `type` and `config` do not apply; set `managed: true` to let the agent own it"));
        }
        if let Some(kind) = &net.kind
            && kind != "bridge"
        {
            let mut q = p.clone();
            q.push("type".into());
            r.value(q, format!("unsupported network type `{kind}`: only `bridge` is supported"));
        }
    }

    for (name, profile) in &m.incus.profiles {
        let p = path!["incus", "profiles", name.as_str()];
        if !is_incus_name(name) {
            r.key(p.clone(), format!("invalid profile name `{name}`"));
        }
        check_config(&profile.config, &p, r);
        for (dev_name, dev) in &profile.devices {
            let mut q = p.clone();
            q.extend(path!["devices", dev_name.as_str()]);
            check_device(dev_name, dev, &q, declared, r);
        }
    }

    for (name, inst) in &m.incus.instances {
        let p = path!["incus", "instances", name.as_str()];
        if !is_incus_name(name) {
            r.key(p.clone(), format!("invalid instance name `{name}`: 1-63 letters, digits and dashes, starting with a letter, not ending with a dash"));
        }
        check_image(&inst.image, &extend(&p, "image"), r);
        check_profiles(&inst.profiles, &extend(&p, "profiles"), declared, r);
        check_config(&inst.config, &p, r);
        for (dev_name, dev) in &inst.devices {
            let mut q = p.clone();
            q.extend(path!["devices", dev_name.as_str()]);
            check_device(dev_name, dev, &q, declared, r);
        }
        if inst.snapshots_keep == Some(0) && inst.protect {
            r.value(
                extend(&p, "snapshots_keep"),
                "a protected instance keeps at least one snapshot",
            );
        }
    }

    let prefix = m.metadata.instance_prefix();
    for (app_name, app) in &m.apps {
        let p = path!["apps", app_name.as_str()];
        if !is_env_name(app_name) {
            r.key(p.clone(), format!("invalid app name `{app_name}`: lowercase letters, digits and dashes, starting with a letter"));
        }
        for color in Color::ALL {
            let inst = crate::naming::slot_instance(&prefix, app_name, color);
            if !is_incus_name(&inst) {
                r.key(p.clone(), format!("slot instance name `{inst}` is not a valid Incus name (at most 63 characters)"));
                break;
            }
            if m.incus.instances.contains_key(&inst) {
                r.key(
                    path!["incus", "instances", inst.as_str()],
                    format!("instance `{inst}` collides with the {color} slot of app `{app_name}`"),
                );
            }
        }
        check_image(&app.image, &extend(&p, "image"), r);
        check_profiles(&app.profiles, &extend(&p, "profiles"), declared, r);
        check_config(&app.config, &p, r);
        if app.port == 0 {
            r.value(extend(&p, "port"), "port must be between 1 and 65535");
        }
        let url = &app.artifact.url;
        let art = extend(&p, "artifact");
        if !(url.starts_with("https://")
            || url.starts_with("http://")
            || url.starts_with("file://"))
        {
            r.value(
                extend(&art, "url"),
                format!("artifact url `{url}` must start with https://, http:// or file://"),
            );
        } else if !url.contains("{release}") {
            r.value(
                extend(&art, "url"),
                "artifact url must contain `{release}` so each release has its own artifact",
            );
        } else if url.starts_with("http://") && !crate::config::is_loopback_url(url) {
            r.value(
                extend(&art, "url"),
                format!(
                    "artifact url `{url}` uses plain http to a non-loopback host; the agent refuses to download it (hint: serve it over https://; plain http is only for 127.0.0.1, ::1 or localhost)"
                ),
            );
        }
        if let Some(dir) = &app.artifact.install_dir
            && (!dir.starts_with('/') || dir.split('/').any(|s| s == "..") || dir == "/")
        {
            r.value(
                extend(&art, "install_dir"),
                format!("install_dir `{dir}` must be an absolute path below `/`, without `..`"),
            );
        }
        let health_path = path!["apps", app_name.as_str(), "health", "path"];
        if !app.health.path.starts_with('/') {
            r.value(
                health_path.clone(),
                format!("health path `{}` must start with `/`", app.health.path),
            );
        }
        haproxy_token(r, health_path, "health path", &app.health.path);
        for (field, v) in [("rise", app.health.rise), ("fall", app.health.fall)] {
            if let Some(n) = v
                && !(1..=MAX_RISE_FALL).contains(&n)
            {
                r.value(
                    path!["apps", app_name.as_str(), "health", field],
                    format!("{field} must be between 1 and {MAX_RISE_FALL}"),
                );
            }
        }
        if let Some(status) = app.health.expect_status
            && !(100..=599).contains(&status)
        {
            r.value(
                path!["apps", app_name.as_str(), "health", "expect_status"],
                format!("`{status}` is not an HTTP status"),
            );
        }
        match (&app.upstream.dns_suffix, &app.upstream.loopback_ports) {
            (Some(_), Some(_)) => r.key(
                extend(&p, "upstream"),
                "set either `dns_suffix` or `loopback_ports`, not both",
            ),
            (None, Some(ports)) => {
                let up = path!["apps", app_name.as_str(), "upstream", "loopback_ports"];
                for color in Color::ALL {
                    match ports.get(&color) {
                        None => {
                            r.key(up.clone(), format!("loopback_ports needs a port for `{color}`"))
                        }
                        Some(0) => {
                            r.value(extend(&up, color.as_str()), "port must be between 1 and 65535")
                        }
                        Some(_) => {}
                    }
                }
                if ports.get(&Color::Blue).is_some()
                    && ports.get(&Color::Blue) == ports.get(&Color::Green)
                {
                    r.value(extend(&up, "green"), "blue and green need different loopback ports");
                }
            }
            (Some(suffix), None) if !is_dns_name(suffix) => {
                r.value(
                    path!["apps", app_name.as_str(), "upstream", "dns_suffix"],
                    format!("invalid DNS suffix `{suffix}`"),
                );
            }
            _ => {}
        }
        // Slots, releases and artifacts.
        let slots = extend(&p, "slots");
        match app.slots.get(&app.active) {
            None => r.value(
                extend(&p, "active"),
                format!(
                    "`active: {}` but app `{app_name}` declares no `{}` slot",
                    app.active, app.active
                ),
            ),
            Some(slot) if slot.release.is_none() => r.value(
                extend(&p, "active"),
                format!("`active: {}` but the `{}` slot has no release", app.active, app.active),
            ),
            Some(_) => {}
        }
        for (color, slot) in &app.slots {
            if let Some(release) = &slot.release
                && !app.artifact.sha256.contains_key(release)
            {
                let mut q = slots.clone();
                q.extend(path![color.as_str(), "release"]);
                r.value(q, format!("release `{}` of the {color} slot has no sha256 in `artifact.sha256`; add its digest so the artifact can be verified", release.short()));
            }
        }
        for job in &app.gate_on_jobs {
            if !m.jobs.contains_key(job) {
                r.value(extend(&p, "gate_on_jobs"), unknown_ref("job", job, m.jobs.keys()));
            }
        }
    }

    if let Some(edge) = &m.edge {
        let p = path!["edge"];
        if edge.runs_in != "host" && !declared.instances.contains(&edge.runs_in) {
            r.value(
                extend(&p, "runs_in"),
                unknown_ref("instance", &edge.runs_in, declared.instances.iter()) + " (or `host`)",
            );
        }
        for (i, host) in edge.hosts.iter().enumerate() {
            if !is_dns_name(host) {
                r.value(path!["edge", "hosts", i], format!("invalid host name `{host}`"));
            }
        }
        let mut prefixes: HashMap<Option<&str>, usize> = HashMap::new();
        for (i, route) in edge.routes.iter().enumerate() {
            let rp = path!["edge", "routes", i];
            if !m.apps.contains_key(&route.app) {
                r.value(
                    extend(&rp, "app"),
                    format!(
                        "route to undefined app: {}",
                        unknown_ref("app", &route.app, m.apps.keys())
                    ),
                );
            }
            if let Some(prefix) = &route.path_prefix {
                if !prefix.starts_with('/') {
                    r.value(
                        extend(&rp, "path_prefix"),
                        format!("path_prefix `{prefix}` must start with `/`"),
                    );
                }
                haproxy_token(r, extend(&rp, "path_prefix"), "path_prefix", prefix);
            }
            if let Some(first) = prefixes.insert(route.path_prefix.as_deref(), i) {
                let what = route
                    .path_prefix
                    .as_deref()
                    .map_or("a default route (no path_prefix)".to_string(), |s| {
                        format!("path_prefix `{s}`")
                    });
                r.key(rp, format!("duplicate route: {what} is already routed by route {first}"));
            }
        }
        if !edge.routes.is_empty() && edge.hosts.is_empty() {
            r.key(extend(&p, "routes"), "routes need at least one host name in `edge.hosts`");
        }
        if let Some(cookie) = &edge.sticky_cookie
            && (cookie.is_empty()
                || !cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        {
            r.value(
                extend(&p, "sticky_cookie"),
                format!("invalid cookie name `{cookie}`: letters, digits, `_` and `-`"),
            );
        }
        for (name, ext) in &edge.external_backends {
            let ep = path!["edge", "external_backends", name.as_str()];
            if !is_env_name(name) {
                r.key(ep.clone(), format!("invalid backend name `{name}`"));
            }
            if ext.hosts.is_empty() {
                r.key(
                    ep.clone(),
                    format!("external backend `{name}` needs at least one host name"),
                );
            }
            for (i, host) in ext.hosts.iter().enumerate() {
                if !is_dns_name(host) {
                    r.value(
                        path!["edge", "external_backends", name.as_str(), "hosts", i],
                        format!("invalid host name `{host}`"),
                    );
                }
            }
            if ext.servers.is_empty() {
                r.key(ep.clone(), format!("external backend `{name}` needs at least one server"));
            }
            for (i, server) in ext.servers.iter().enumerate() {
                let sp = path!["edge", "external_backends", name.as_str(), "servers", i];
                if parse_host_port(server).is_none() {
                    r.value(
                        sp.clone(),
                        format!("invalid server `{server}`: expected `address:port`"),
                    );
                }
                haproxy_token(r, sp, "server address", server);
            }
            if let Some(health) = &ext.health_path {
                let hp = path!["edge", "external_backends", name.as_str(), "health_path"];
                if !health.starts_with('/') {
                    r.value(hp.clone(), format!("health path `{health}` must start with `/`"));
                }
                haproxy_token(r, hp, "health path", health);
            }
        }
        if let Some(listen) = &edge.listen {
            for (key, addr) in [("http", Some(&listen.http)), ("https", listen.https.as_ref())] {
                let Some(addr) = addr else { continue };
                let lp = path!["edge", "listen", key];
                if parse_host_port(addr).is_none() {
                    r.value(
                        lp.clone(),
                        format!("invalid listen address `{addr}`: expected `address:port`"),
                    );
                }
                haproxy_token(r, lp, "listen address", addr);
            }
        }
        if let Some(tls) = &edge.tls {
            let cp = path!["edge", "tls", "cert_dir"];
            if !tls.cert_dir.starts_with('/') {
                r.value(cp.clone(), "cert_dir must be an absolute path");
            }
            haproxy_token(r, cp, "certificate directory", &tls.cert_dir);
        }
    } else if !m.apps.is_empty() {
        r.key(path!["apps"], "apps are declared but no `edge` routes traffic to them");
    }

    for (name, job) in &m.jobs {
        let p = path!["jobs", name.as_str()];
        if !is_env_name(name) {
            r.key(p.clone(), format!("invalid job name `{name}`: lowercase letters, digits and dashes, starting with a letter"));
        }
        if let Err(why) = lexical::unit_line(&job.schedule) {
            r.value(
                extend(&p, "schedule"),
                format!("invalid schedule `{}`: {why}", shown(&job.schedule)),
            );
        } else if let Err(e) = crate::schedule::parse(&job.schedule) {
            r.value(extend(&p, "schedule"), format!("invalid schedule `{}`: {e}", job.schedule));
        }
        if let Some(tz) = &job.timezone
            && let Err(why) = lexical::time_zone(tz)
        {
            r.value(extend(&p, "timezone"), format!("invalid time zone `{tz}`: {why}"));
        }
        if job.on != "host" && !declared.instances.contains(&job.on) {
            r.value(
                extend(&p, "on"),
                unknown_ref("instance", &job.on, declared.instances.iter()) + " (or `host`)",
            );
        }
        if job.command.trim().is_empty() || job.command.contains(['\n', '\0']) {
            r.value(extend(&p, "command"), "command must be one non-empty line");
        }
        if let Some(user) = &job.user
            && let Err(why) = lexical::unit_user(user)
        {
            r.value(extend(&p, "user"), format!("invalid user name `{user}`: {why}"));
        }
    }
}

/// Rules across the manifests of one host.
fn check_host_set(files: &[(String, Parsed)], members: &[usize], issues: &mut Vec<Issue>) {
    let mut push = |file: usize, path: Vec<Seg>, at_value: bool, message: String| {
        issues.push(Issue { file, path, at_value, message });
    };
    let mut envs: HashMap<&str, usize> = HashMap::new();
    let mut public_hosts: HashMap<&str, (usize, &str)> = HashMap::new();
    let mut cookies: HashMap<&str, usize> = HashMap::new();
    let mut instances: HashMap<String, usize> = HashMap::new();
    let mut profiles: HashMap<&str, usize> = HashMap::new();
    let mut networks: HashMap<&str, usize> = HashMap::new();
    let mut listens: HashMap<String, (usize, String)> = HashMap::new();
    let mut unit_stems: HashMap<String, (usize, &str, &str)> = HashMap::new();
    let mut edge_site: Option<(usize, &str)> = None;
    let mut edge_listen: Option<(usize, String)> = None;
    let name_of = |i: usize| files[i].0.as_str();

    for &i in members {
        let m = &files[i].1.manifest;
        let env = m.metadata.name.as_str();
        if let Some(first) = envs.insert(env, i) {
            push(
                i,
                path!["metadata", "name"],
                true,
                format!("environment `{env}` is also declared in {}", name_of(first)),
            );
        }
        for name in m.incus.profiles.keys() {
            if let Some(first) = profiles.insert(name, i) {
                push(
                    i,
                    path!["incus", "profiles", name.as_str()],
                    false,
                    format!(
                        "profile `{name}` is also declared in {}; declare it once",
                        name_of(first)
                    ),
                );
            }
        }
        for name in m.incus.networks.keys() {
            if let Some(first) = networks.insert(name, i) {
                push(
                    i,
                    path!["incus", "networks", name.as_str()],
                    false,
                    format!(
                        "network `{name}` is also declared in {}; declare it once",
                        name_of(first)
                    ),
                );
            }
        }
        // Job units are named `veza-job-<env>-<job>`: `prod`/`db-backup` and
        // `prod-db`/`backup` would write the same files.
        for job in m.jobs.keys() {
            let stem = crate::units::unit_stem(env, job);
            match unit_stems.get(&stem) {
                Some((first, first_env, first_job)) if *first_env != env => push(
                    i,
                    path!["jobs", job.as_str()],
                    false,
                    format!(
                        "job `{job}` of environment `{env}` would be installed as `{stem}.service` and `.timer`, the unit files of job `{first_job}` of environment `{first_env}` ({}); rename one of the jobs",
                        name_of(*first)
                    ),
                ),
                Some(_) => {}
                None => {
                    unit_stems.insert(stem, (i, env, job));
                }
            }
        }
        let prefix = m.metadata.instance_prefix();
        let mut names: Vec<(String, Vec<Seg>)> = m
            .incus
            .instances
            .keys()
            .map(|n| (n.clone(), path!["incus", "instances", n.as_str()]))
            .collect();
        for app in m.apps.keys() {
            for color in Color::ALL {
                names.push((
                    crate::naming::slot_instance(&prefix, app, color),
                    path!["apps", app.as_str()],
                ));
            }
        }
        for (name, p) in names {
            if let Some(first) = instances.get(&name) {
                if *first != i {
                    push(
                        i,
                        p,
                        false,
                        format!("instance `{name}` is also declared in {}", name_of(*first)),
                    );
                }
            } else {
                instances.insert(name, i);
            }
        }
        // Listen addresses of proxy devices and loopback upstream ports.
        let mut claim = |file: usize, path: Vec<Seg>, addr: String, what: String| {
            let key = normalize_listen(&addr);
            let clash = listens.get(&key).or_else(|| {
                // A wildcard listener clashes with every address on the same port.
                let (proto, port) = listen_port(&key)?;
                listens
                    .iter()
                    .find(|(k, _)| {
                        listen_port(k) == Some((proto, port))
                            && (k.contains(":*:") || key.contains(":*:"))
                    })
                    .map(|(_, v)| v)
            });
            if let Some((first, first_what)) = clash {
                let other =
                    if *first == file { String::new() } else { format!(" in {}", name_of(*first)) };
                push(
                    file,
                    path,
                    true,
                    format!(
                        "duplicate listen address `{addr}`: already used by {first_what}{other}"
                    ),
                );
            } else {
                listens.insert(key, (file, what));
            }
        };
        for (iname, inst) in &m.incus.instances {
            for (dname, dev) in &inst.devices {
                if let (DeviceType::Proxy, Some(listen)) = (dev.kind, &dev.listen)
                    && dev.bind != Some(crate::manifest::ProxyBind::Instance)
                {
                    claim(
                        i,
                        path![
                            "incus",
                            "instances",
                            iname.as_str(),
                            "devices",
                            dname.as_str(),
                            "listen"
                        ],
                        listen.clone(),
                        format!("device `{dname}` of `{iname}`"),
                    );
                }
            }
        }
        for (app, def) in &m.apps {
            if let Some(ports) = &def.upstream.loopback_ports {
                for (color, port) in ports {
                    claim(
                        i,
                        path!["apps", app.as_str(), "upstream", "loopback_ports", color.as_str()],
                        format!("tcp:127.0.0.1:{port}"),
                        format!("the {color} slot of `{env}/{app}`"),
                    );
                }
            }
        }
        if let Some(edge) = &m.edge {
            if let Some(first) = cookies.insert(edge.sticky_cookie.as_deref().unwrap_or(""), i)
                && edge.sticky_cookie.is_some()
            {
                push(
                    i,
                    path!["edge", "sticky_cookie"],
                    true,
                    format!(
                        "sticky cookie `{}` is also used by {}; each environment needs its own so sessions do not leak across environments",
                        edge.sticky_cookie.as_deref().unwrap_or(""),
                        name_of(first)
                    ),
                );
            }
            let mut hosts: Vec<(&str, Vec<Seg>)> = edge
                .hosts
                .iter()
                .enumerate()
                .map(|(k, h)| (h.as_str(), path!["edge", "hosts", k]))
                .collect();
            for (bname, ext) in &edge.external_backends {
                hosts.extend(ext.hosts.iter().enumerate().map(|(k, h)| {
                    (h.as_str(), path!["edge", "external_backends", bname.as_str(), "hosts", k])
                }));
            }
            for (host, p) in hosts {
                if let Some((first, first_env)) = public_hosts.insert(host, (i, env)) {
                    let where_ = if first == i {
                        "this environment".to_string()
                    } else {
                        format!("environment `{first_env}` ({})", name_of(first))
                    };
                    push(i, p, true, format!("host name `{host}` is already claimed by {where_}"));
                }
            }
            match edge_site {
                None => edge_site = Some((i, edge.runs_in.as_str())),
                Some((first, site)) if site != edge.runs_in => push(
                    i,
                    path!["edge", "runs_in"],
                    true,
                    format!(
                        "the edge is shared by every environment of the host, but {} runs it in `{site}` and this manifest in `{}`",
                        name_of(first),
                        edge.runs_in
                    ),
                ),
                Some(_) => {}
            }
            if let Some(listen) = &edge.listen {
                let this = format!("{} {}", listen.http, listen.https.as_deref().unwrap_or("-"));
                match &edge_listen {
                    None => edge_listen = Some((i, this)),
                    Some((first, other)) if *other != this => push(
                        i,
                        path!["edge", "listen"],
                        false,
                        format!(
                            "edge listen addresses differ from {} (`{other}`); the shared edge has one set",
                            name_of(*first)
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
}

fn check_image(image: &str, p: &[Seg], r: &mut Rules<'_>) {
    let alias = image.split_once(':').map_or(image, |(_, a)| a);
    if image.is_empty() || alias.is_empty() || image.contains(char::is_whitespace) {
        r.value(
            p.to_vec(),
            format!("invalid image `{image}`: expected a local alias or `remote:alias`"),
        );
    }
}

fn check_profiles(list: &[String], p: &[Seg], declared: &Declared, r: &mut Rules<'_>) {
    for (i, name) in list.iter().enumerate() {
        if name != "default" && !declared.profiles.contains(name) {
            r.value(extend(p, i), unknown_ref("profile", name, declared.profiles.iter()));
        }
        if list[..i].contains(name) {
            r.value(extend(p, i), format!("profile `{name}` is listed twice"));
        }
    }
}

fn check_config(config: &BTreeMap<String, String>, p: &[Seg], r: &mut Rules<'_>) {
    for key in config.keys() {
        if let Some(prefix) = RESERVED_CONFIG_PREFIXES.iter().find(|pre| key.starts_with(**pre)) {
            let mut q = p.to_vec();
            q.extend(path!["config", key.as_str()]);
            r.key(
                q,
                format!(
                    "config key `{key}` is reserved (`{prefix}*` belongs to the agent or to Incus)"
                ),
            );
        }
    }
}

fn check_device(name: &str, dev: &Device, p: &[Seg], declared: &Declared, r: &mut Rules<'_>) {
    let present = [
        ("path", dev.path.is_some()),
        ("pool", dev.pool.is_some()),
        ("source", dev.source.is_some()),
        ("readonly", dev.readonly.is_some()),
        ("listen", dev.listen.is_some()),
        ("connect", dev.connect.is_some()),
        ("bind", dev.bind.is_some()),
        ("network", dev.network.is_some()),
        ("name", dev.name.is_some()),
    ];
    let (allowed, required, kind): (&[&str], &[&str], &str) = match dev.kind {
        DeviceType::Disk => (&["path", "pool", "source", "readonly"], &["path"], "disk"),
        DeviceType::Proxy => (&["listen", "connect", "bind"], &["listen", "connect"], "proxy"),
        DeviceType::Nic => (&["network", "name"], &["network"], "nic"),
    };
    for (key, set) in present {
        if set && !allowed.contains(&key) {
            r.key(extend(p, key), format!("`{key}` does not apply to a {kind} device"));
        }
        if !set && required.contains(&key) {
            r.key(p.to_vec(), format!("{kind} device `{name}` needs `{key}`"));
        }
    }
    for key in dev.options.keys() {
        if key == "type" || present.iter().any(|(field, _)| field == key) {
            r.key(
                extend(&extend(p, "options"), key.as_str()),
                format!("`options.{key}` would override the device's own `{key}`: `options` carries only Incus keys the manifest has no field for (hint: set `{key}` on the device itself)"),
            );
        }
    }
    if dev.kind == DeviceType::Disk && dev.path.as_deref() != Some("/") && dev.source.is_none() {
        r.key(
            p.to_vec(),
            format!(
                "disk device `{name}` mounts `{}` but has no `source`",
                dev.path.as_deref().unwrap_or("")
            ),
        );
    }
    for (key, addr) in [("listen", &dev.listen), ("connect", &dev.connect)] {
        if let Some(addr) = addr
            && !is_proxy_address(addr)
        {
            r.value(extend(p, key), format!("invalid proxy address `{addr}`: expected `tcp:ADDRESS:PORT`, `udp:ADDRESS:PORT` or `unix:/PATH`"));
        }
    }
    if let Some(net) = &dev.network
        && !declared.networks.contains(net)
    {
        r.value(extend(p, "network"), unknown_ref("network", net, declared.networks.iter()));
    }
}

/// A value written into `haproxy.cfg` as one token: the renderer's own rule.
fn haproxy_token(r: &mut Rules<'_>, path: Vec<Seg>, what: &str, value: &str) {
    if let Err(why) = lexical::haproxy_token(value) {
        r.value(
            path,
            format!("{what} `{}` cannot be written into haproxy.cfg: {why}", shown(value)),
        );
    }
}

/// A value with its control characters escaped (`\n`), so a message stays on one line.
fn shown(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

fn extend(p: &[Seg], seg: impl Into<Seg>) -> Vec<Seg> {
    let mut v = p.to_vec();
    v.push(seg.into());
    v
}

/// "unknown profile `x`" with a did-you-mean hint when a declared name is close.
fn unknown_ref<'a>(what: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<&String> = known.collect();
    match closest(name, known.iter().map(|s| s.as_str())) {
        Some(best) => format!("unknown {what} `{name}`; did you mean `{best}`?"),
        None if known.is_empty() => format!("unknown {what} `{name}`: none is declared"),
        None => format!(
            "unknown {what} `{name}`; declared: {}",
            known.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !s.ends_with('-')
}

/// Incus instance/profile name rules: 1-63 characters, ASCII letters, digits and
/// dashes, starting with a letter, not ending with a dash.
pub fn is_incus_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (port != 0 && !host.is_empty() && !host.contains(char::is_whitespace)).then_some((host, port))
}

fn is_proxy_address(s: &str) -> bool {
    match s.split_once(':') {
        Some(("tcp" | "udp", rest)) => parse_host_port(rest).is_some(),
        Some(("unix", rest)) => rest.starts_with('/') || rest.starts_with('@'),
        _ => false,
    }
}

/// Protocol and port of a normalized `proto:host:port` listen key.
fn listen_port(key: &str) -> Option<(&str, &str)> {
    let (proto, rest) = key.split_once(':')?;
    let (_, port) = rest.rsplit_once(':')?;
    Some((proto, port))
}

/// A listen address with every wildcard host spelled `*`, so `tcp:0.0.0.0:80` and
/// `tcp:[::]:80` compare equal; wildcard-versus-specific clashes are checked by the caller.
fn normalize_listen(addr: &str) -> String {
    match addr.split_once(':') {
        Some((proto @ ("tcp" | "udp"), rest)) => match parse_host_port(rest) {
            Some((host, port)) if host == "0.0.0.0" || host == "::" || host == "*" => {
                format!("{proto}:*:{port}")
            }
            Some((host, port)) => format!("{proto}:{host}:{port}"),
            None => addr.to_string(),
        },
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for (name, ok) in [
            ("veza-backend-blue", true),
            ("1abc", false),
            ("abc-", false),
            ("a_b", false),
            ("", false),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(is_incus_name(name), ok, "{name}");
        }
        for (name, ok) in [
            ("veza.fr", true),
            ("www.veza.fr", true),
            ("-x.fr", false),
            ("a..b", false),
            ("a b", false),
        ] {
            assert_eq!(is_dns_name(name), ok, "{name}");
        }
    }

    #[test]
    fn proxy_addresses() {
        for (addr, ok) in [
            ("tcp:0.0.0.0:80", true),
            ("tcp:127.0.0.1:8080", true),
            ("udp:[::1]:53", true),
            ("unix:/run/x.sock", true),
            ("tcp:80", false),
            ("http:1.2.3.4:80", false),
            ("tcp:1.2.3.4:0", false),
        ] {
            assert_eq!(is_proxy_address(addr), ok, "{addr}");
        }
        assert_eq!(normalize_listen("tcp:0.0.0.0:80"), normalize_listen("tcp:*:80"));
        assert_eq!(listen_port(&normalize_listen("tcp:127.0.0.1:80")), Some(("tcp", "80")));
    }

    const HEAD: &str = "apiVersion: veza-agent/v1\nkind: Environment\n";
    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const REL: &str = "1111111111111111111111111111111111111111";

    /// A valid environment `env` with one app, served on `host_name` with `cookie`.
    fn env(name: &str, host_name: &str, cookie: &str, extra: &str) -> String {
        format!(
            "{HEAD}metadata: {{name: {name}, host: h1}}\n\
             apps:\n  web:\n    image: img\n    port: 8080\n\
             \x20   artifact: {{url: \"https://x/{{release}}.tgz\", sha256: {{{REL}: {SHA}}}}}\n\
             \x20   health: {{path: /health}}\n\
             \x20   slots: {{blue: {{release: {REL}}}}}\n    active: blue\n\
             edge: {{runs_in: host, hosts: [{host_name}], routes: [{{app: web}}], sticky_cookie: {cookie}}}\n{extra}"
        )
    }

    /// Validates `files` together and returns `name:line:col: message` lines.
    fn check(files: &[(&str, String)]) -> Vec<String> {
        let parsed: Vec<(String, Parsed)> = files
            .iter()
            .map(|(n, text)| {
                let p = crate::parse::parse(text.as_bytes())
                    .unwrap_or_else(|d| panic!("{n} does not parse: {}: {}", d.pos, d.message));
                ((*n).to_string(), p)
            })
            .collect();
        validate_set(&parsed)
            .into_iter()
            .map(|d| format!("{}:{}: {}", d.file, d.diagnostic.pos, d.diagnostic.message))
            .collect()
    }

    #[test]
    fn a_valid_pair_of_environments_has_no_problem() {
        let out = check(&[
            ("a", env("prod", "a.example", "C_prod", "")),
            ("b", env("staging", "b.example", "C_st", "")),
        ]);
        assert!(out.is_empty(), "{out:#?}");
    }

    /// Each row: the files validated together, and text the diagnostics must contain
    /// (`file:line:col: message`), in order.
    #[test]
    fn every_rule_reports_where_and_why() {
        type Case = (&'static str, Vec<(&'static str, String)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "two envs claim the same public host name",
                vec![("a", env("prod", "veza.fr", "C1", "")), ("b", env("staging", "veza.fr", "C2", ""))],
                "b:12:31: host name `veza.fr` is already claimed by environment `prod` (a)",
            ),
            (
                "sticky cookies must differ per env",
                vec![("a", env("prod", "a.fr", "SAME", "")), ("b", env("staging", "b.fr", "SAME", ""))],
                "b:12:75: sticky cookie `SAME` is also used by a",
            ),
            (
                "environment declared twice",
                vec![("a", env("prod", "a.fr", "C1", "")), ("b", env("prod", "b.fr", "C2", ""))],
                "b:3:18: environment `prod` is also declared in a",
            ),
            (
                "slot instance collides with another env's instance",
                vec![
                    ("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    staging-web-blue: {image: img}\n")),
                    ("b", env("staging", "b.fr", "C2", "")),
                ],
                "b:5:3: instance `staging-web-blue` is also declared in a",
            ),
            (
                "edge must run in the same place for all envs",
                vec![
                    ("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    edge: {image: img}\n")),
                    ("b", env("staging", "b.fr", "C2", "").replace("runs_in: host", "runs_in: edge")),
                ],
                "b:12:17: the edge is shared by every environment of the host, but a runs it in `host` and this manifest in `edge`",
            ),
            (
                "profile declared in two files",
                vec![
                    ("a", env("prod", "a.fr", "C1", "incus:\n  profiles:\n    p: {}\n")),
                    ("b", env("staging", "b.fr", "C2", "incus:\n  profiles:\n    p: {}\n")),
                ],
                "b:15:5: profile `p` is also declared in a; declare it once",
            ),
            (
                "loopback ports collide across envs",
                vec![
                    ("a", env("prod", "a.fr", "C1", "").replace("    active: blue", "    active: blue\n    upstream: {loopback_ports: {blue: 18001, green: 18002}}")),
                    ("b", env("staging", "b.fr", "C2", "").replace("    active: blue", "    active: blue\n    upstream: {loopback_ports: {blue: 18002, green: 18003}}")),
                ],
                "b:12:39: duplicate listen address `tcp:127.0.0.1:18002`: already used by the green slot of `prod/web` in a",
            ),
            (
                "a wildcard listener clashes with a loopback one on the same port",
                vec![
                    ("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    e: {image: img, devices: {h: {type: proxy, listen: \"tcp:0.0.0.0:18001\", connect: \"tcp:127.0.0.1:80\"}}}\n")),
                    ("b", env("staging", "b.fr", "C2", "").replace("    active: blue", "    active: blue\n    upstream: {loopback_ports: {blue: 18001, green: 18003}}")),
                ],
                "b:12:39: duplicate listen address `tcp:127.0.0.1:18001`: already used by device `h` of `e` in a",
            ),
            (
                "upstream takes one mode",
                vec![("a", env("prod", "a.fr", "C1", "").replace("    active: blue", "    active: blue\n    upstream: {dns_suffix: lxd, loopback_ports: {blue: 1, green: 2}}"))],
                "a:12:5: set either `dns_suffix` or `loopback_ports`, not both",
            ),
            (
                "loopback ports need both colors and distinct ports",
                vec![("a", env("prod", "a.fr", "C1", "").replace("    active: blue", "    active: blue\n    upstream: {loopback_ports: {blue: 7}}"))],
                "a:12:16: loopback_ports needs a port for `green`",
            ),
            (
                "duplicate default route",
                vec![("a", env("prod", "a.fr", "C1", "").replace("routes: [{app: web}]", "routes: [{app: web}, {app: web}]"))],
                "a:12:59: duplicate route: a default route (no path_prefix) is already routed by route 0",
            ),
            (
                "gate on an undeclared job",
                vec![("a", env("prod", "a.fr", "C1", "").replace("    active: blue", "    active: blue\n    gate_on_jobs: [drill]"))],
                "a:12:19: unknown job `drill`: none is declared",
            ),
            (
                "apps without an edge",
                vec![("a", format!("{HEAD}metadata: {{name: prod, host: h1}}\napps:\n  web:\n    image: img\n    port: 80\n    artifact: {{url: \"https://x/{{release}}\", sha256: {{}}}}\n    health: {{path: /h}}\n    slots: {{blue: {{}}}}\n    active: green\n"))],
                "a:4:1: apps are declared but no `edge` routes traffic to them",
            ),
            (
                "active color without a slot",
                vec![("a", format!("{HEAD}metadata: {{name: prod, host: h1}}\napps:\n  web:\n    image: img\n    port: 80\n    artifact: {{url: \"https://x/{{release}}\", sha256: {{}}}}\n    health: {{path: /h}}\n    slots: {{blue: {{}}}}\n    active: green\n"))],
                "a:11:13: `active: green` but app `web` declares no `green` slot",
            ),
            (
                "artifact url must carry the release",
                vec![("a", env("prod", "a.fr", "C1", "").replace("https://x/{release}.tgz", "https://x/latest.tgz"))],
                "a:8:21: artifact url must contain `{release}`",
            ),
            (
                "plain http artifacts only from loopback",
                vec![("a", env("prod", "a.fr", "C1", "").replace("https://x/{release}.tgz", "http://x/{release}.tgz"))],
                "a:8:21: artifact url `http://x/{release}.tgz` uses plain http to a non-loopback host; the agent refuses to download it (hint: serve it over https://",
            ),
            (
                "health path and counters",
                vec![("a", env("prod", "a.fr", "C1", "").replace("health: {path: /health}", "health: {path: health, rise: 0}"))],
                "a:9:20: health path `health` must start with `/`",
            ),
            (
                "rise is bounded",
                vec![("a", env("prod", "a.fr", "C1", "").replace("health: {path: /health}", "health: {path: /health, rise: 500}"))],
                "a:9:35: rise must be between 1 and 20",
            ),
            (
                "referenced network carries no config",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  networks:\n    br0: {config: {ipv4.address: 10.0.0.1/24}}\n"))],
                "a:15:5: network `br0` is referenced (managed: false), so `type` and `config` do not apply",
            ),
            (
                "network names are interface names",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  networks:\n    a-very-long-bridge-name: {}\n"))],
                "a:15:5: invalid network name `a-very-long-bridge-name`",
            ),
            (
                "nic on an undeclared network",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  profiles:\n    p:\n      devices: {eth0: {type: nic, network: net-vez}}\n  networks:\n    net-veza: {}\n"))],
                "a:16:44: unknown network `net-vez`; did you mean `net-veza`?",
            ),
            (
                "device keys must fit the device type",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  profiles:\n    p:\n      devices: {root: {type: disk, path: /, listen: \"tcp:0.0.0.0:1\"}}\n"))],
                "a:16:45: `listen` does not apply to a disk device",
            ),
            (
                "a non-root disk needs a source",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  profiles:\n    p:\n      devices: {data: {type: disk, path: /srv}}\n"))],
                "a:16:17: disk device `data` mounts `/srv` but has no `source`",
            ),
            (
                "profile listed twice",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    db: {image: img, profiles: [default, default]}\n"))],
                "a:15:42: profile `default` is listed twice",
            ),
            (
                "protected instances keep a snapshot",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    db: {image: img, protect: true, snapshots_keep: 0}\n"))],
                "a:15:53: a protected instance keeps at least one snapshot",
            ),
            (
                "job command is one line, user is a user name",
                vec![("a", env("prod", "a.fr", "C1", "jobs:\n  b:\n    schedule: '@daily'\n    on: host\n    command: ' '\n    user: 'ro ot'\n"))],
                "a:17:14: command must be one non-empty line",
            ),
            (
                "invalid external backend server",
                vec![("a", env("prod", "a.fr", "C1", "").replace("sticky_cookie: C1}", "sticky_cookie: C1, external_backends: {forge: {hosts: [f.fr], servers: [nowhere]}}}"))],
                "a:12:132: invalid server `nowhere`: expected `address:port`",
            ),
            (
                "environment and app names",
                vec![("a", env("Prod", "a.fr", "C1", ""))],
                "a:3:18: invalid environment name `Prod`",
            ),
            (
                "two environments' jobs would write the same unit files",
                vec![
                    ("a", env("prod", "a.fr", "C1", "jobs:\n  db-backup: {schedule: '@daily', on: host, command: x}\n")),
                    ("b", env("prod-db", "b.fr", "C2", "jobs:\n  backup: {schedule: '@daily', on: host, command: x}\n")),
                ],
                "b:14:3: job `backup` of environment `prod-db` would be installed as `veza-job-prod-db-backup.service` and `.timer`, the unit files of job `db-backup` of environment `prod` (a); rename one of the jobs",
            ),
            (
                "device options cannot change the device type",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    t: {image: img, devices: {d: {type: disk, path: /, pool: p, options: {type: unix-char}}}}\n"))],
                "a:15:75: `options.type` would override the device's own `type`",
            ),
            (
                "device options cannot set a key the model has a field for",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  instances:\n    t: {image: img, devices: {d: {type: disk, path: /, pool: p, options: {source: /etc}}}}\n"))],
                "a:15:75: `options.source` would override the device's own `source`: `options` carries only Incus keys the manifest has no field for (hint: set `source` on the device itself)",
            ),
            (
                "Incus projects are not supported",
                vec![("a", env("prod", "a.fr", "C1", "incus:\n  project: veza\n"))],
                "a:14:3: `incus.project: veza` is not supported: the agent manages the `default` Incus project only",
            ),
        ];
        let mut failures = Vec::new();
        for (what, files, expect) in &cases {
            let out = check(files);
            if !out.iter().any(|line| line.contains(expect)) {
                failures.push(format!("{what}:\n  wanted: {expect}\n  got:    {out:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Values the edge and unit renderers would refuse at plan time are refused by
    /// `validate` first, at the key, with the renderer's reason. Each row: what to replace
    /// in a valid manifest, with what, and the diagnostic.
    #[test]
    fn values_the_renderers_refuse_fail_validation_at_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "health: {path: /health}",
                "health: {path: \"/a b\"}",
                "a:9:20: health path `/a b` cannot be written into haproxy.cfg: it contains whitespace or control characters",
            ),
            (
                "health: {path: /health}",
                "health: {path: \"/a#b\"}",
                "a:9:20: health path `/a#b` cannot be written into haproxy.cfg: it contains `#`, a quote or a backslash",
            ),
            (
                "health: {path: /health}",
                "health: {path: \"/a\\nb\"}",
                "a:9:20: health path `/a\\nb` cannot be written into haproxy.cfg: it contains whitespace or control characters",
            ),
            (
                "routes: [{app: web}]",
                "routes: [{app: web, path_prefix: \"/a#b\"}]",
                "a:12:71: path_prefix `/a#b` cannot be written into haproxy.cfg: it contains `#`, a quote or a backslash",
            ),
            (
                "routes: [{app: web}]",
                "routes: [{app: web, path_prefix: \"/a'b\"}]",
                "a:12:71: path_prefix `/a'b` cannot be written into haproxy.cfg: it contains `#`, a quote or a backslash",
            ),
            (
                "sticky_cookie: C1}",
                "sticky_cookie: C1, listen: {http: \"127.0.0.1#:80\"}}",
                "a:12:94: listen address `127.0.0.1#:80` cannot be written into haproxy.cfg: it contains `#`, a quote or a backslash",
            ),
            (
                "sticky_cookie: C1}",
                "sticky_cookie: C1, tls: {cert_dir: \"/etc/certs\\n  bind :81\"}}",
                "a:12:95: certificate directory `/etc/certs\\n  bind :81` cannot be written into haproxy.cfg: it contains whitespace or control characters",
            ),
            (
                "sticky_cookie: C1}",
                "sticky_cookie: C1, external_backends: {f: {hosts: [f.fr], servers: [\"10.0.0.1:80\\n\"]}}}",
                "a:12:128: server address `10.0.0.1:80\\n` cannot be written into haproxy.cfg: it contains whitespace or control characters",
            ),
            (
                "sticky_cookie: C1}",
                "sticky_cookie: C1, external_backends: {f: {hosts: [f.fr], servers: [\"10.0.0.1:80\"], health_path: \"/ok now\"}}}",
                "a:12:157: health path `/ok now` cannot be written into haproxy.cfg: it contains whitespace or control characters",
            ),
            (
                "    active: blue\n",
                "    active: blue\njobs:\n  b: {schedule: \"0 3\\n* * *\", on: host, command: x}\n",
                "a:13:17: invalid schedule `0 3\\n* * *`: it contains a newline or another control character",
            ),
        ];
        let mut failures = Vec::new();
        for (from, to, expect) in cases {
            let text = env("prod", "a.fr", "C1", "").replacen(from, to, 1);
            let out = check(&[("a", text)]);
            if !out.iter().any(|line| line.contains(expect)) {
                failures.push(format!("{to}:\n  wanted: {expect}\n  got:    {out:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
