//! Rules across the manifests of one host: names, public hosts, cookies, Incus
//! resources, listen addresses and unit names claimed once.

use std::collections::HashMap;

use super::Issue;
use super::values::{listen_port, normalize_listen};
use crate::manifest::{Color, DeviceType};
use crate::parse::{Parsed, Seg};
use crate::path;

/// Rules across the manifests of one host.
pub(super) fn check_host_set(
    files: &[(String, Parsed)],
    members: &[usize],
    issues: &mut Vec<Issue>,
) {
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
        // Profiles and networks are shared by the host: each declared once.
        let shared = [
            ("profile", "profiles", m.incus.profiles.keys().collect::<Vec<_>>(), &mut profiles),
            ("network", "networks", m.incus.networks.keys().collect(), &mut networks),
        ];
        for (kind, key, names, seen) in shared {
            for name in names {
                if let Some(first) = seen.insert(name, i) {
                    push(
                        i,
                        path!["incus", key, name.as_str()],
                        false,
                        format!(
                            "{kind} `{name}` is also declared in {}; declare it once",
                            name_of(first)
                        ),
                    );
                }
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
