//! Rules within one manifest: names, apps and their slots, health, edge, Incus
//! resources and devices, jobs.

use std::collections::{BTreeMap, HashMap};

use super::values::{
    extend, haproxy_address_port, haproxy_token, is_dns_name, is_env_name, is_incus_name,
    is_proxy_address, shown, unknown_ref,
};
use super::{Declared, Rules};
use crate::lexical;
use crate::manifest::{Color, Device, DeviceType, Manifest};
use crate::parse::Seg;
use crate::path;
use crate::template;

/// Config key prefixes the agent reserves for its own marks or Incus reserves.
const RESERVED_CONFIG_PREFIXES: [&str; 2] = [crate::live::MARK_PREFIX, "volatile."];

/// Upper bound of `health.rise` and `health.fall`: the promotion gate probes a slot
/// `rise` times in a row, 200 ms apart, within the host's `promotion.health_timeout`.
const MAX_RISE_FALL: u32 = 20;

pub(super) fn check_manifest(m: &Manifest, declared: &Declared, r: &mut Rules<'_>) {
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
        check_target(inst.target.as_deref(), &p, r);
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
            && (!dir.starts_with('/')
                || dir.split('/').skip(1).any(|s| s.is_empty() || s == "." || s == ".."))
        {
            // The staging directory is the path with `.new` appended: a trailing `/` would
            // put it inside the install directory, and the swap would fail once the app
            // was stopped.
            r.value(
                extend(&art, "install_dir"),
                format!(
                    "install_dir `{dir}` must be an absolute path below `/`: no `.` or `..`, no \
                     empty part (`//`) and no trailing `/`"
                ),
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
            check_target(slot.target.as_deref(), &extend(&slots, color.as_str()), r);
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
        check_env(&app.env, &extend(&p, "env"), r);
        no_secret_in_command(app.start.as_deref().unwrap_or(""), extend(&p, "start"), r);
        if let Some(mig) = &app.migrate {
            let mp = extend(&p, "migrate");
            if mig.command.trim().is_empty() || mig.command.contains(['\n', '\0']) {
                r.value(extend(&mp, "command"), "command must be one non-empty line");
            }
            no_secret_in_command(&mig.command, extend(&mp, "command"), r);
            if let Some(on) = &mig.on
                && on != "slot"
                && !m.incus.instances.contains_key(on)
            {
                r.value(
                    extend(&mp, "on"),
                    unknown_ref("instance of this environment", on, m.incus.instances.keys())
                        + " (or `slot`)",
                );
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
                haproxy_address_port(r, sp, ("server", "server address"), server);
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
                haproxy_address_port(r, lp, ("listen address", "listen address"), addr);
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
        if job.timeout.is_some_and(|t| t.get().is_zero()) {
            r.value(
                extend(&p, "timeout"),
                "a time limit of 0 would stop every run at once: leave `timeout` out for none",
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
        check_env(&job.env, &extend(&p, "env"), r);
        no_secret_in_command(&job.command, extend(&p, "command"), r);
    }
}

/// Environment variables: portable names, not the agent's own `VEZA_*`, one-line values,
/// well-formed secret references.
fn check_env(env: &BTreeMap<String, String>, p: &[Seg], r: &mut Rules<'_>) {
    for (var, value) in env {
        let vp = extend(p, var.as_str());
        if !template::is_env_var_name(var) {
            r.key(vp.clone(), format!("invalid variable name `{}`: letters, digits and `_`, not starting with a digit", shown(var)));
        } else if var.starts_with("VEZA_") {
            r.key(vp.clone(), format!("`{var}`: names starting with VEZA_ are set by the agent"));
        }
        if value.contains(['\n', '\r', '\0']) {
            r.value(
                vp.clone(),
                "the value must be one line (an environment file cannot hold line breaks)",
            );
        }
        match template::secret_refs(value) {
            Err(why) => r.value(vp, why),
            Ok(names) => {
                for name in names.into_iter().filter(|n| !template::is_secret_name(n)) {
                    r.value(vp.clone(), format!("invalid secret name `{}` in `{{secret:…}}`: 1-64 lowercase letters, digits, `_` and `-`", shown(name)));
                }
            }
        }
    }
}

/// A command line is visible to every user of the machine (`ps`): no secret on it.
fn no_secret_in_command(command: &str, p: Vec<Seg>, r: &mut Rules<'_>) {
    if command.contains("{secret:") {
        r.value(p, "secrets are not allowed on a command line (visible in `ps`): set a variable in `env` to `{secret:NAME}` and use the variable");
    }
}

/// A cluster member's name (`target:`): Incus names its members like instances.
fn check_target(target: Option<&str>, p: &[Seg], r: &mut Rules<'_>) {
    if let Some(member) = target
        && !crate::config::is_member_name(member)
    {
        r.value(
            extend(p, "target"),
            format!("invalid cluster member name `{member}`: 1 to 63 ASCII letters, digits, `-` or `.`, as `incus cluster list` shows it"),
        );
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
