//! Tests of the semantic validation rules: names and addresses, one environment, and
//! a set of environments together.

use super::values::{is_dns_name, is_proxy_address, listen_port, normalize_listen};
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
            "network declared in two files",
            vec![
                ("a", env("prod", "a.fr", "C1", "incus:\n  networks:\n    n: {}\n")),
                ("b", env("staging", "b.fr", "C2", "incus:\n  networks:\n    n: {}\n")),
            ],
            "b:15:5: network `n` is also declared in a; declare it once",
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
            "a secret on the start command line",
            vec![("a", env("prod", "a.fr", "C1", "").replace("active: blue", "active: blue\n    start: 'run --pw {secret:pw}'"))],
            "secrets are not allowed on a command line (visible in `ps`)",
        ),
        (
            "a secret on a job's command line",
            vec![("a", env("prod", "a.fr", "C1", "jobs:\n  b: {schedule: '@daily', on: host, command: 'x {secret:k}'}\n"))],
            "secrets are not allowed on a command line",
        ),
        (
            "environment variable names",
            vec![("a", env("prod", "a.fr", "C1", "").replace("active: blue", "active: blue\n    env: {1X: a}"))],
            "invalid variable name `1X`",
        ),
        (
            "the agent's own variables",
            vec![("a", env("prod", "a.fr", "C1", "").replace("active: blue", "active: blue\n    env: {VEZA_PORT: '1'}"))],
            "`VEZA_PORT`: names starting with VEZA_ are set by the agent",
        ),
        (
            "install_dir with a trailing slash (its staging directory would be inside it)",
            vec![("a", env("prod", "a.fr", "C1", "").replace("    artifact: {", "    artifact: {install_dir: /opt/app/, "))],
            "install_dir `/opt/app/` must be an absolute path below `/`: no `.` or `..`, no empty part (`//`) and no trailing `/`",
        ),
        (
            "install_dir with `..`",
            vec![("a", env("prod", "a.fr", "C1", "").replace("    artifact: {", "    artifact: {install_dir: /opt/../etc, "))],
            "install_dir `/opt/../etc`",
        ),
        (
            "install_dir `/`",
            vec![("a", env("prod", "a.fr", "C1", "").replace("    artifact: {", "    artifact: {install_dir: /, "))],
            "install_dir `/`",
        ),
        (
            "secret names become file names",
            vec![("a", env("prod", "a.fr", "C1", "").replace("active: blue", "active: blue\n    env: {PW: '{secret:../x}'}"))],
            "invalid secret name `../x`",
        ),
        (
            "an unterminated secret reference",
            vec![("a", env("prod", "a.fr", "C1", "").replace("active: blue", "active: blue\n    env: {PW: '{secret:pw'}"))],
            "without its closing",
        ),
        (
            "a migration runs in the slot or an instance of the environment",
            vec![("a", env("prod", "a.fr", "C1", "").replace("active: blue", "active: blue\n    migrate: {command: m, on: tools}"))],
            "unknown instance of this environment `tools`",
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
            "sticky_cookie: C1, listen: {http: \"nowhere\"}}",
            "a:12:94: invalid listen address `nowhere`: expected `address:port`",
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
        (
            "    active: blue\n",
            "    active: blue\njobs:\n  b: {schedule: \"@daily\", on: host, command: x, timeout: 0s}\n",
            "a:13:58: a time limit of 0 would stop every run at once: leave `timeout` out for none",
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

#[test]
fn maintenance_windows_last_more_than_zero_and_at_most_a_week() {
    // (duration, the problem reported at the duration, if any)
    let cases: &[(&str, Option<&str>)] = &[
        ("2h", None),
        ("1m", None),
        ("7d", None),
        ("1w", None),
        ("0s", Some("a:16:38: window duration `0ms` must be more than zero")),
        ("8d", Some("a:16:38: window duration `8d` is longer than a week (`7d`)")),
        ("169h", Some("a:16:38: window duration `169h` is longer than a week (`7d`)")),
    ];
    for (duration, expect) in cases {
        let extra = format!(
            "maintenance:\n  windows:\n    - {{start: \"0 2 * * *\", duration: 1h}}\n    - {{start: \"0 3 * * *\", duration: {duration}}}\n"
        );
        let out = check(&[("a", env("prod", "a.fr", "C1", &extra))]);
        match expect {
            None => assert!(out.is_empty(), "{duration}: {out:#?}"),
            Some(e) => assert!(
                out.len() == 1 && out[0].contains(e),
                "{duration}: wanted `{e}`, got {out:#?}"
            ),
        }
    }
}
