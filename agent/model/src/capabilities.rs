//! Capabilities: the powers over the host itself that a manifest can ask for.
//!
//! A signed manifest describes containers; a few of its keys reach past them onto the host
//! (a job run as root on the host, a host directory mounted into a container, a privileged
//! container, raw LXC configuration). Per-path approval thresholds mean little if a path
//! that needs one signature can ask for any of those, so the host's trust policy grants
//! them per manifest path (`capabilities:` in the policy file, see
//! `veza_source::policy`), and the agent refuses a revision whose manifest uses a
//! capability its path was not granted.
//!
//! Pure: [`used_by_set`] lists what each manifest of a host uses, with where;
//! [`check_grants`] compares that with the grants.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

use crate::manifest::{Device, DeviceType, Manifest, ProxyBind};
use crate::parse::Seg;
use crate::path;

/// Capabilities granted, by manifest path (the policy file's `capabilities:`).
pub type Grants = BTreeMap<String, BTreeSet<Capability>>;

/// A profile's capability uses, relative to the profile, with the manifest declaring it.
type ProfileUses = (usize, Vec<(Capability, Vec<Seg>)>);

/// A power over the host that must be granted to a manifest path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `jobs.<name>.on: host`: a command run by systemd on the host, as root by default.
    HostJobs,
    /// A disk device with a `source` and no `pool`: a host path or block device inside an
    /// instance.
    HostDisk,
    /// A proxy device with `bind: instance`: the instance reaches an address on the host
    /// side (a host-only port, or a Unix socket such as Incus's own).
    HostProxy,
    /// A `security.*` config key or device option (`security.privileged`,
    /// `security.nesting`, idmaps, syscall interception, ...).
    SecurityConfig,
    /// A `raw.*` config key or device option (`raw.lxc`, `raw.idmap`, `raw.apparmor`,
    /// `raw.dnsmasq`, `raw.mount.options`, ...): anything Incus would otherwise refuse.
    RawConfig,
    /// `linux.kernel_modules`: modules loaded into the host's kernel when the instance
    /// starts.
    KernelModules,
}

impl Capability {
    /// Every capability, in documentation order.
    pub const ALL: [Capability; 6] = [
        Capability::HostJobs,
        Capability::HostDisk,
        Capability::HostProxy,
        Capability::SecurityConfig,
        Capability::RawConfig,
        Capability::KernelModules,
    ];

    /// The name used in the policy file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Capability::HostJobs => "host-jobs",
            Capability::HostDisk => "host-disk",
            Capability::HostProxy => "host-proxy",
            Capability::SecurityConfig => "security-config",
            Capability::RawConfig => "raw-config",
            Capability::KernelModules => "kernel-modules",
        }
    }

    /// What it lets a manifest do, completing "this manifest may …".
    pub fn power(self) -> &'static str {
        match self {
            Capability::HostJobs => "run jobs on the host",
            Capability::HostDisk => "mount host paths into instances",
            Capability::HostProxy => "let an instance reach addresses on the host side",
            Capability::SecurityConfig => "set `security.*` keys",
            Capability::RawConfig => "set `raw.*` keys",
            Capability::KernelModules => "load kernel modules on the host",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One use of a capability in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    /// What is used.
    pub capability: Capability,
    /// The key that uses it, in this manifest.
    pub path: Vec<Seg>,
    /// When the use comes with a profile this manifest attaches but another manifest
    /// declares: the profile's name and the key in its declaration.
    pub via_profile: Option<(String, Vec<Seg>)>,
}

impl Use {
    /// Where, for humans: `jobs.dr-drill.on`, `incus.profiles.p.config."security.nesting"`,
    /// or `apps.web.profiles[0] (profile `p`: config."raw.lxc")`.
    pub fn location(&self) -> String {
        let here = dotted(&self.path);
        match &self.via_profile {
            None => here,
            Some((name, inner)) => format!("{here} (profile `{name}`: {})", dotted(inner)),
        }
    }
}

/// A key path as `a.b."c.d"[0]`: keys that contain a dot are quoted.
pub fn dotted(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                if k.contains(['.', '"', ' ']) || k.is_empty() {
                    out.push_str(&format!("{k:?}"));
                } else {
                    out.push_str(k);
                }
            }
        }
    }
    out
}

/// The capabilities one manifest uses through its own keys, in document order (networks,
/// profiles, instances, apps, jobs). Profiles it attaches are not followed: see
/// [`used_by_set`].
pub fn used(m: &Manifest) -> Vec<Use> {
    let mut out = Vec::new();
    let mut add = |capability, path: Vec<Seg>| {
        out.push(Use { capability, path, via_profile: None });
    };
    for (name, net) in &m.incus.networks {
        config_uses(&net.config, path!["incus", "networks", name.as_str()], false, &mut add);
    }
    for (name, profile) in &m.incus.profiles {
        let p = path!["incus", "profiles", name.as_str()];
        config_uses(&profile.config, p.clone(), true, &mut add);
        for (dev, d) in &profile.devices {
            device_uses(d, with(&p, ["devices", dev.as_str()]), &mut add);
        }
    }
    for (name, inst) in &m.incus.instances {
        let p = path!["incus", "instances", name.as_str()];
        config_uses(&inst.config, p.clone(), true, &mut add);
        for (dev, d) in &inst.devices {
            device_uses(d, with(&p, ["devices", dev.as_str()]), &mut add);
        }
    }
    for (name, app) in &m.apps {
        config_uses(&app.config, path!["apps", name.as_str()], true, &mut add);
    }
    for (name, job) in &m.jobs {
        if job.on == "host" {
            add(Capability::HostJobs, path!["jobs", name.as_str(), "on"]);
        }
    }
    out
}

/// The capabilities each manifest uses (same order as `manifests`): its own keys, plus what
/// comes with each profile it attaches that another manifest of the same host declares
/// (staging attaching prod's privileged profile uses `security-config` itself).
pub fn used_by_set(manifests: &[&Manifest]) -> Vec<Vec<Use>> {
    let own: Vec<Vec<Use>> = manifests.iter().map(|m| used(m)).collect();
    // Profile name -> (declaring manifest, uses inside the profile relative to it).
    let mut profiles: BTreeMap<(&str, &str), ProfileUses> = BTreeMap::new();
    for (i, uses) in own.iter().enumerate() {
        for name in manifests[i].incus.profiles.keys() {
            let prefix = path!["incus", "profiles", name.as_str()];
            let inside = uses
                .iter()
                .filter_map(|u| {
                    let rest = u.path.strip_prefix(prefix.as_slice())?;
                    Some((u.capability, rest.to_vec()))
                })
                .collect();
            profiles.insert((&manifests[i].metadata.host, name), (i, inside));
        }
    }
    let mut out = Vec::new();
    for (i, m) in manifests.iter().enumerate() {
        let mut uses = own[i].clone();
        let instances =
            m.incus.instances.iter().map(|(n, inst)| {
                (path!["incus", "instances", n.as_str(), "profiles"], &inst.profiles)
            });
        let apps =
            m.apps.iter().map(|(n, app)| (path!["apps", n.as_str(), "profiles"], &app.profiles));
        for (list, attached) in instances.chain(apps) {
            for (k, profile) in attached.iter().enumerate() {
                let Some((declared_in, inside)) =
                    profiles.get(&(m.metadata.host.as_str(), profile.as_str()))
                else {
                    continue;
                };
                if *declared_in == i {
                    continue; // counted where it is declared, in this same manifest
                }
                for (capability, inner) in inside {
                    let mut at = list.clone();
                    at.push(Seg::Index(k));
                    uses.push(Use {
                        capability: *capability,
                        path: at,
                        via_profile: Some((profile.clone(), inner.clone())),
                    });
                }
            }
        }
        out.push(uses);
    }
    out
}

/// A manifest uses a capability its path is not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ungranted {
    /// The manifest's path, as the host configuration names it.
    pub manifest: String,
    /// The capability.
    pub capability: Capability,
    /// Every use of it in that manifest ([`Use::location`]).
    pub locations: Vec<String>,
}

impl fmt::Display for Ungranted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "manifest `{m}` uses capability `{c}` ({locations}), which the trust policy does not grant to it (hint: if this manifest may {power}, add `{c}` to `capabilities.\"{m}\"` in the policy file; otherwise remove the key)",
            m = self.manifest,
            c = self.capability,
            locations = self.locations.join(", "),
            power = self.capability.power(),
        )
    }
}

/// Compares what each manifest uses with what its path is granted (a path absent from
/// `grants` is granted nothing). One [`Ungranted`] per manifest and capability, in input
/// order.
pub fn check_grants(used: &[(String, Vec<Use>)], grants: &Grants) -> Vec<Ungranted> {
    let none = BTreeSet::new();
    let mut out = Vec::new();
    for (manifest, uses) in used {
        let granted = grants.get(manifest).unwrap_or(&none);
        let mut missing: BTreeMap<Capability, Vec<String>> = BTreeMap::new();
        for u in uses.iter().filter(|u| !granted.contains(&u.capability)) {
            missing.entry(u.capability).or_default().push(u.location());
        }
        out.extend(missing.into_iter().map(|(capability, locations)| Ungranted {
            manifest: manifest.clone(),
            capability,
            locations,
        }));
    }
    out
}

/// A one-line summary of the capabilities `uses` asks for: `host-jobs (jobs.dr-drill.on)`.
pub fn summary(uses: &[Use]) -> String {
    let mut by: BTreeMap<Capability, Vec<String>> = BTreeMap::new();
    for u in uses {
        by.entry(u.capability).or_default().push(u.location());
    }
    by.into_iter()
        .map(|(c, locations)| format!("{c} ({})", locations.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn config_uses(
    config: &BTreeMap<String, String>,
    at: Vec<Seg>,
    instance_like: bool,
    add: &mut impl FnMut(Capability, Vec<Seg>),
) {
    for key in config.keys() {
        let capability = if key.starts_with("security.") {
            Capability::SecurityConfig
        } else if key.starts_with("raw.") {
            Capability::RawConfig
        } else if instance_like && key == "linux.kernel_modules" {
            Capability::KernelModules
        } else {
            continue;
        };
        add(capability, with(&at, ["config", key.as_str()]));
    }
}

fn device_uses(dev: &Device, at: Vec<Seg>, add: &mut impl FnMut(Capability, Vec<Seg>)) {
    match dev.kind {
        DeviceType::Disk if dev.source.is_some() && dev.pool.is_none() => {
            add(Capability::HostDisk, with(&at, ["source"]));
        }
        DeviceType::Proxy if dev.bind == Some(ProxyBind::Instance) => {
            add(Capability::HostProxy, with(&at, ["bind"]));
        }
        _ => {}
    }
    for key in dev.options.keys() {
        let capability = if key.starts_with("security.") {
            Capability::SecurityConfig
        } else if key.starts_with("raw.") {
            Capability::RawConfig
        } else {
            continue;
        };
        add(capability, with(&at, ["options", key.as_str()]));
    }
}

fn with<const N: usize>(p: &[Seg], more: [&str; N]) -> Vec<Seg> {
    let mut v = p.to_vec();
    v.extend(more.into_iter().map(Seg::from));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: veza-agent/v1\nkind: Environment\n";

    fn manifest(name: &str, body: &str) -> Manifest {
        let text = format!("{HEAD}metadata: {{name: {name}, host: h1}}\n{body}");
        crate::parse::parse(text.as_bytes())
            .unwrap_or_else(|d| panic!("does not parse: {}: {}\n{text}", d.pos, d.message))
            .manifest
    }

    /// `name: capability (location)` lines of every use, per manifest.
    fn uses(set: &[(&str, &str)]) -> Vec<String> {
        let ms: Vec<Manifest> = set.iter().map(|(n, b)| manifest(n, b)).collect();
        let refs: Vec<&Manifest> = ms.iter().collect();
        used_by_set(&refs)
            .into_iter()
            .zip(set)
            .flat_map(|(uses, (n, _))| {
                uses.into_iter().map(move |u| format!("{n}: {} ({})", u.capability, u.location()))
            })
            .collect()
    }

    /// Each row: the manifests of one host, and every capability use they make.
    #[test]
    fn each_power_over_the_host_is_found_where_it_is_asked_for() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "nothing but containers",
                &[(
                    "prod",
                    "incus:\n  profiles:\n    p: {config: {limits.cpu: '2'}, devices: {root: {type: disk, path: /, pool: auto}, data: {type: disk, path: /srv, pool: default, source: vol1}}}\n  instances:\n    db: {image: img, profiles: [p]}\njobs:\n  b: {schedule: '@daily', on: db, command: x}\n",
                )],
                &[],
            ),
            (
                "a job on the host",
                &[("prod", "jobs:\n  dr-drill: {schedule: '@daily', on: host, command: x}\n")],
                &["prod: host-jobs (jobs.dr-drill.on)"],
            ),
            (
                "a host path mounted into an instance",
                &[(
                    "prod",
                    "incus:\n  instances:\n    db: {image: img, devices: {etc: {type: disk, path: /mnt, source: /etc}}}\n",
                )],
                &["prod: host-disk (incus.instances.db.devices.etc.source)"],
            ),
            (
                "a proxy the instance listens on, connecting on the host side",
                &[(
                    "prod",
                    "incus:\n  instances:\n    db: {image: img, devices: {sock: {type: proxy, bind: instance, listen: 'unix:/run/x', connect: 'unix:/var/lib/incus/unix.socket'}}}\n",
                )],
                &["prod: host-proxy (incus.instances.db.devices.sock.bind)"],
            ),
            (
                "security and raw keys in every config map, and kernel modules",
                &[(
                    "prod",
                    "incus:\n  networks:\n    br0: {managed: true, config: {raw.dnsmasq: x}}\n  profiles:\n    p: {config: {security.privileged: 'true'}}\n  instances:\n    db: {image: img, config: {raw.lxc: x, linux.kernel_modules: zfs}}\napps:\n  web: {image: img, port: 80, config: {security.nesting: 'true'}, artifact: {url: x, sha256: {}}, health: {path: /}, slots: {}, active: blue}\n",
                )],
                &[
                    "prod: raw-config (incus.networks.br0.config.\"raw.dnsmasq\")",
                    "prod: security-config (incus.profiles.p.config.\"security.privileged\")",
                    "prod: kernel-modules (incus.instances.db.config.\"linux.kernel_modules\")",
                    "prod: raw-config (incus.instances.db.config.\"raw.lxc\")",
                    "prod: security-config (apps.web.config.\"security.nesting\")",
                ],
            ),
            (
                "security and raw device options",
                &[(
                    "prod",
                    "incus:\n  instances:\n    db: {image: img, devices: {sock: {type: proxy, listen: 'tcp:0.0.0.0:1', connect: 'tcp:127.0.0.1:1', options: {security.uid: '0'}}, data: {type: disk, path: /srv, pool: default, source: v, options: {raw.mount.options: x}}}}\n",
                )],
                &[
                    "prod: raw-config (incus.instances.db.devices.data.options.\"raw.mount.options\")",
                    "prod: security-config (incus.instances.db.devices.sock.options.\"security.uid\")",
                ],
            ),
            (
                "attaching another manifest's privileged profile is using it",
                &[
                    (
                        "prod",
                        "incus:\n  profiles:\n    priv: {config: {security.privileged: 'true'}}\n  instances:\n    a: {image: img, profiles: [priv]}\n",
                    ),
                    (
                        "staging",
                        "incus:\n  instances:\n    b: {image: img, profiles: [default, priv]}\n",
                    ),
                ],
                &[
                    "prod: security-config (incus.profiles.priv.config.\"security.privileged\")",
                    "staging: security-config (incus.instances.b.profiles[1] (profile `priv`: config.\"security.privileged\"))",
                ],
            ),
        ];
        let mut failures = Vec::new();
        for (what, set, want) in cases {
            let got = uses(set);
            if got != *want {
                failures.push(format!("{what}:\n  wanted: {want:#?}\n  got:    {got:#?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Each row: the grants, the capabilities a manifest uses, and the refusals.
    #[test]
    fn a_capability_is_used_only_where_it_is_granted() {
        let drill = Use {
            capability: Capability::HostJobs,
            path: path!["jobs", "dr-drill", "on"],
            via_profile: None,
        };
        let priv_ = Use {
            capability: Capability::SecurityConfig,
            path: path!["incus", "profiles", "p", "config", "security.privileged"],
            via_profile: None,
        };
        let grants = |rows: &[(&str, &[Capability])]| -> Grants {
            rows.iter().map(|(p, c)| (p.to_string(), c.iter().copied().collect())).collect()
        };
        let cases: Vec<(&str, Grants, Vec<Use>, Vec<&str>)> = vec![
            (
                "granted",
                grants(&[("m.yaml", &[Capability::HostJobs])]),
                vec![drill.clone()],
                vec![],
            ),
            ("uses nothing, granted nothing", grants(&[]), vec![], vec![]),
            (
                "path absent from the grants",
                grants(&[("other.yaml", &[Capability::HostJobs])]),
                vec![drill.clone()],
                vec!["m.yaml/host-jobs/jobs.dr-drill.on"],
            ),
            (
                "path granted nothing",
                grants(&[("m.yaml", &[])]),
                vec![drill.clone()],
                vec!["m.yaml/host-jobs/jobs.dr-drill.on"],
            ),
            (
                "granted one of two",
                grants(&[("m.yaml", &[Capability::HostJobs, Capability::RawConfig])]),
                vec![drill.clone(), priv_.clone()],
                vec!["m.yaml/security-config/incus.profiles.p.config.\"security.privileged\""],
            ),
        ];
        for (what, grants, uses, want) in cases {
            let got: Vec<String> = check_grants(&[("m.yaml".to_string(), uses)], &grants)
                .iter()
                .map(|u| format!("{}/{}/{}", u.manifest, u.capability, u.locations.join(",")))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_refusal_names_the_path_the_capability_and_the_policy_key() {
        let refusal = Ungranted {
            manifest: "manifests/staging.yaml".into(),
            capability: Capability::HostJobs,
            locations: vec!["jobs.dr-drill.on".into()],
        };
        assert_eq!(
            refusal.to_string(),
            "manifest `manifests/staging.yaml` uses capability `host-jobs` (jobs.dr-drill.on), which the trust policy does not grant to it (hint: if this manifest may run jobs on the host, add `host-jobs` to `capabilities.\"manifests/staging.yaml\"` in the policy file; otherwise remove the key)"
        );
    }

    #[test]
    fn names_parse_back() {
        for c in Capability::ALL {
            let parsed: Capability = serde_yaml_ng::from_str(c.name()).expect("parses");
            assert_eq!(parsed, c);
        }
    }
}
