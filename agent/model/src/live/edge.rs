//! The edge as observed: the servers a `haproxy.cfg` declares, and from them, once, the
//! color each app's backend routes to ([`LiveEdge`]). Pure: the caller reads the file.
//!
//! A config the agent did not write (the seed's Ansible pipeline) names its backends and
//! servers its own way: [`serving_colors`] reads which slot instances it routes to by
//! their addresses, and [`parse_color_record`] / [`parse_color_history`] read the record
//! Ansible keeps of the active color, for `veza-agent adopt`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::manifest::Color;
use crate::naming;

/// The edge as observed: the config HAProxy runs (none when the edge has none yet or is
/// not observed) and, explicitly, the color each app's backend routes traffic to. The
/// colors are read once, here, through [`naming::read_server`]; nobody reads names back
/// afterwards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveEdge {
    /// The live `haproxy.cfg`.
    pub config: Option<String>,
    /// Colors receiving traffic, by `(env, app)`.
    pub active: BTreeMap<(String, String), Color>,
    /// An install was interrupted between its swap and its confirmed reload: `config` is
    /// the one before it, and HAProxy may run either, so the planner installs its config
    /// again whatever it is (the installer reloads).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfirmed: bool,
}

impl LiveEdge {
    /// The edge running `config`: in each app backend (`<env>_<app>`), the color of the
    /// server that gets traffic (neither `disabled` nor `weight 0`).
    pub fn from_config(config: String) -> LiveEdge {
        let mut active = BTreeMap::new();
        for s in config_servers(&config).iter().filter(|s| s.enabled) {
            if let Some(slot) = naming::read_server(&s.backend, &s.server) {
                active.insert((slot.env.to_string(), slot.app.to_string()), slot.color);
            }
        }
        LiveEdge { config: Some(config), active, unconfirmed: false }
    }
}

/// A server as a `haproxy.cfg` declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigServer {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub server: String,
    /// `address:port` in the config (an IP or a DNS name).
    pub address: String,
    /// `false` when the config gives it no traffic: `disabled`, or `weight 0` (how the
    /// agent renders the standby color).
    pub enabled: bool,
    /// `true` for a `backup` server (it gets traffic only when every other one is down).
    pub backup: bool,
}

/// The servers a `haproxy.cfg` declares, read from its `backend` sections
/// (`server NAME ADDRESS … [disabled]`; comments ignored): the one reader of a config's
/// servers, for the active colors and for pruning the server-state dump before a reload.
pub fn config_servers(config: &str) -> Vec<ConfigServer> {
    let mut out = Vec::new();
    let mut backend: Option<&str> = None;
    for line in config.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["backend", name, ..] => backend = Some(name),
            [
                "frontend" | "listen" | "defaults" | "global" | "resolvers" | "peers" | "userlist"
                | "program" | "http-errors" | "ring" | "cache" | "mailers",
                ..,
            ] => backend = None,
            ["server", name, address, rest @ ..] => {
                if let Some(be) = backend {
                    out.push(ConfigServer {
                        backend: be.to_string(),
                        server: name.to_string(),
                        address: address.to_string(),
                        enabled: !rest.contains(&"disabled") && !zero_weight(rest),
                        backup: rest.contains(&"backup"),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a server line's options say `weight 0` (checked, but no load-balanced traffic).
fn zero_weight(options: &[&str]) -> bool {
    options.windows(2).any(|w| w[0] == "weight" && w[1].parse::<u32>() == Ok(0))
}

/// A slot instance as the manifests name it (`naming::slot_instance`): what a foreign
/// edge config's server addresses are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInstance {
    /// The instance name, e.g. `veza-backend-blue`.
    pub instance: String,
    /// Environment.
    pub env: String,
    /// App.
    pub app: String,
    /// Color.
    pub color: Color,
}

/// The instance a server address names: `<instance>.lxd:<port>`, `<instance>.incus:<port>`
/// or `<instance>:<port>` (the port optional); `None` for an IP address.
fn address_instance(address: &str) -> Option<&str> {
    let host = match address.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        Some(_) => return None,
        None => address,
    };
    let host = host.strip_suffix(".lxd").or_else(|| host.strip_suffix(".incus")).unwrap_or(host);
    (!host.is_empty() && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')).then_some(host)
}

/// The colors `config` sends each app's traffic to, whatever it names its backends and
/// servers: an app's color serves when a server that is neither `disabled`, `weight 0` nor `backup`,
/// in any backend, has the address of that color's slot instance (`<instance>.lxd:<port>`,
/// `<instance>.incus:<port>` or `<instance>:<port>`). Every `(env, app)` of `slots` has an
/// entry: empty when none of its slots serves, both colors when both do.
pub fn serving_colors(
    config: &str,
    slots: &[SlotInstance],
) -> BTreeMap<(String, String), BTreeSet<Color>> {
    let mut out: BTreeMap<(String, String), BTreeSet<Color>> =
        slots.iter().map(|s| ((s.env.clone(), s.app.clone()), BTreeSet::new())).collect();
    for server in config_servers(config).iter().filter(|s| s.enabled && !s.backup) {
        let Some(instance) = address_instance(&server.address) else { continue };
        for slot in slots.iter().filter(|s| s.instance == instance) {
            out.entry((slot.env.clone(), slot.app.clone())).or_default().insert(slot.color);
        }
    }
    out
}

/// Where the seed's Ansible pipeline records an environment's active color, inside the
/// edge's instance (`roles/veza_haproxy_switch`): one word, `blue` or `green`.
pub fn ansible_color_file(env: &str) -> String {
    format!("/var/lib/veza/active-color-{env}")
}

/// Ansible's history of an environment's switches, beside [`ansible_color_file`].
pub fn ansible_history_file(env: &str) -> String {
    format!("{}.history", ansible_color_file(env))
}

fn color_word(word: &str) -> Option<Color> {
    match word {
        "blue" => Some(Color::Blue),
        "green" => Some(Color::Green),
        _ => None,
    }
}

/// The color an [`ansible_color_file`] names: its one word (surrounding whitespace
/// ignored); `None` for anything else.
pub fn parse_color_record(text: &str) -> Option<Color> {
    color_word(text.trim())
}

/// The last entry of an [`ansible_history_file`]: the color and the 40-hex release it
/// names. The seed does not show the file's format, so a line is read as
/// whitespace-separated words holding exactly one color word (`blue`/`green`) and exactly
/// one 40-hex release, in any order, other words (a timestamp) ignored; `#` comments and
/// blank lines are skipped. `None` when the last entry is not such a line.
pub fn parse_color_history(text: &str) -> Option<(Color, String)> {
    let line = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .rfind(|l| !l.is_empty())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let colors: Vec<Color> = words.iter().filter_map(|w| color_word(w)).collect();
    let releases: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| w.len() == 40 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    match (colors.as_slice(), releases.as_slice()) {
        ([color], [release]) => Some((*color, release.to_ascii_lowercase())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_of_a_config() {
        let cfg = "global\n    master-worker\nfrontend fe\n    bind 127.0.0.1:1\nbackend be_app # app\n    default-server inter 1s\n    server blue-1 127.0.0.1:18101 check cookie blue-1\n    server green-2 x.lxd:80 check disabled\n    # server ghost 1.2.3.4:5\nbackend other\n    server s 10.0.0.1:3000\n    server w0 10.0.0.2:3000 check weight 0\n    server w10 10.0.0.3:3000 check weight 10\nfrontend stats\n    server nope 1.2.3.4:5\n";
        let got: Vec<(String, String, String, bool)> = config_servers(cfg)
            .into_iter()
            .map(|e| (e.backend, e.server, e.address, e.enabled))
            .collect();
        let want = [
            ("be_app", "blue-1", "127.0.0.1:18101", true),
            ("be_app", "green-2", "x.lxd:80", false),
            ("other", "s", "10.0.0.1:3000", true),
            ("other", "w0", "10.0.0.2:3000", false), // weight 0: checked, never routed to
            ("other", "w10", "10.0.0.3:3000", true),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1.as_str(), g.2.as_str(), g.3), w);
        }
    }

    #[test]
    fn the_active_color_is_the_enabled_server_of_each_app_backend() {
        let cfg = "frontend fe\n    bind :80\nbackend prod_backend\n    server blue-0bd3e563b2 a:1 check disabled\n    server green-e97b91f010 b:1 check\nbackend staging_web\n    server blue-7c9e1b3d5f c:1 check\n    server green-8d0c2e4a6b c:2 check weight 0\nbackend staging_api\n    server green-1 d:1 check disabled\nbackend default_503\nbackend forgejo\n    server s1 e:1 check\n";
        let edge = LiveEdge::from_config(cfg.to_string());
        let key = |e: &str, a: &str| (e.to_string(), a.to_string());
        let want = BTreeMap::from([
            (key("prod", "backend"), Color::Green),
            (key("staging", "web"), Color::Blue),
        ]);
        assert_eq!(edge.active, want);
        assert_eq!(edge.config.as_deref(), Some(cfg));
    }

    /// An edge config shaped as the seed's `roles/haproxy/templates/haproxy.cfg.j2` renders
    /// it (commit 5153ab113d): per-env backends `<env>_backend_api`, `<env>_stream_pool`,
    /// `<env>_web_pool`, host ACLs, sticky cookies suffixed `_<env>`, Forgejo, Talas and
    /// a 503 default. `{prod_backend}` … are the server lines of each backend.
    fn ansible_cfg(servers: &[(&str, &str)]) -> String {
        let mut cfg = String::from(
            "global\n    log /dev/log local0\n    master-worker\n    stats socket /run/haproxy/admin.sock mode 660 level admin\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n\
             frontend fe_https\n    bind *:80\n    bind *:443 ssl crt /etc/haproxy/certs/\n\
             \x20   acl host_staging hdr(host) -i staging.veza.fr\n\
             \x20   acl host_prod hdr(host) -i veza.fr www.veza.fr\n\
             \x20   acl host_forgejo hdr(host) -i forgejo.talas.group\n\
             \x20   acl host_talas hdr(host) -i talas.fr www.talas.fr\n\
             \x20   acl is_api path_beg /api\n    acl is_stream_seg path_beg /stream\n\
             \x20   use_backend prod_backend_api if host_prod is_api\n\
             \x20   use_backend prod_stream_pool if host_prod is_stream_seg\n\
             \x20   use_backend prod_web_pool if host_prod\n\
             \x20   use_backend staging_backend_api if host_staging is_api\n\
             \x20   use_backend staging_web_pool if host_staging\n\
             \x20   use_backend forgejo_backend if host_forgejo\n\
             \x20   use_backend talas_vitrine_backend if host_talas\n\
             \x20   default_backend default_503\n",
        );
        for (backend, lines) in servers {
            let cookie = backend.split('_').next().unwrap_or_default();
            cfg.push_str(&format!(
                "\nbackend {backend}\n    balance roundrobin\n    option httpchk GET /api/v1/health\n    cookie VEZA_SERVERID_{cookie} insert indirect nocache\n{lines}"
            ));
        }
        cfg.push_str(
            "\nbackend forgejo_backend\n    server forgejo 10.0.20.105:3000 check\n\
             \nbackend talas_vitrine_backend\n    http-request return status 503\n\
             \nbackend default_503\n    http-request return status 503\n",
        );
        cfg
    }

    fn slots() -> Vec<SlotInstance> {
        let mut out = Vec::new();
        for (env, prefix) in [("prod", "veza-"), ("staging", "veza-staging-")] {
            for app in ["backend", "web"] {
                for color in Color::ALL {
                    out.push(SlotInstance {
                        instance: naming::slot_instance(prefix, app, color),
                        env: env.into(),
                        app: app.into(),
                        color,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn the_colors_a_foreign_config_serves_are_read_from_its_server_addresses() {
        use Color::{Blue, Green};
        // (case, backends and their server lines, prod/backend, prod/web, staging/backend,
        // staging/web)
        type Row = (&'static str, Vec<(&'static str, &'static str)>, [&'static [Color]; 4]);
        let rows: Vec<Row> = vec![
            (
                "only the active color is listed, in .lxd names",
                vec![
                    (
                        "prod_backend_api",
                        "    server backend_api_blue veza-backend-blue.lxd:8080 check cookie blue\n",
                    ),
                    ("prod_web_pool", "    server web_green veza-web-green.lxd:8081 check\n"),
                    (
                        "staging_backend_api",
                        "    server backend_api_green veza-staging-backend-green.lxd:8080 check\n",
                    ),
                    (
                        "staging_web_pool",
                        "    server web_blue veza-staging-web-blue.lxd:8081 check\n",
                    ),
                ],
                [&[Blue], &[Green], &[Green], &[Blue]],
            ),
            (
                "the idle color listed but disabled, weight 0 or backup; .incus and bare names",
                vec![
                    (
                        "prod_backend_api",
                        "    server b veza-backend-blue.incus:8080 check\n    server g veza-backend-green.incus:8080 check disabled\n",
                    ),
                    (
                        "prod_web_pool",
                        "    server b veza-web-blue:8081 check backup\n    server g veza-web-green:8081 check\n",
                    ),
                    (
                        "staging_backend_api",
                        "    server b veza-staging-backend-blue:8080 check weight 0\n    server g veza-staging-backend-green:8080 check weight 1\n",
                    ),
                ],
                [&[Blue], &[Green], &[Green], &[]],
            ),
            (
                "both colors enabled, and an app with no server at all",
                vec![
                    (
                        "prod_backend_api",
                        "    server b veza-backend-blue.lxd:8080 check\n    server g veza-backend-green.lxd:8080 check\n",
                    ),
                    ("staging_web_pool", "    server x 10.0.20.31:8081 check\n"),
                ],
                [&[Blue, Green], &[], &[], &[]],
            ),
            (
                "a prod name is not a staging one; comments are not servers",
                vec![(
                    "staging_backend_api",
                    "    server b veza-backend-blue.lxd:8080 check\n    # server g veza-staging-backend-green.lxd:8080\n",
                )],
                [&[Blue], &[], &[], &[]],
            ),
        ];
        for (case, servers, want) in rows {
            let got = serving_colors(&ansible_cfg(&servers), &slots());
            let keys =
                [("prod", "backend"), ("prod", "web"), ("staging", "backend"), ("staging", "web")];
            assert_eq!(got.len(), 4, "case `{case}`: {got:?}");
            for ((env, app), want) in keys.into_iter().zip(want) {
                let colors: Vec<Color> =
                    got[&(env.to_string(), app.to_string())].iter().copied().collect();
                assert_eq!(colors, want, "case `{case}`: {env}/{app}");
            }
        }
        // The agent's own reader sees none of it: these are not its names.
        let cfg = ansible_cfg(&[(
            "prod_backend_api",
            "    server backend-blue veza-backend-blue.lxd:8080 check\n",
        )]);
        assert!(LiveEdge::from_config(cfg).active.is_empty());
    }

    #[test]
    fn ansible_records_of_the_active_color() {
        assert_eq!(ansible_color_file("prod"), "/var/lib/veza/active-color-prod");
        assert_eq!(ansible_history_file("staging"), "/var/lib/veza/active-color-staging.history");
        // (record text, color)
        let records = [
            ("blue\n", Some(Color::Blue)),
            ("  green  ", Some(Color::Green)),
            ("", None),
            ("Blue", None),
            ("blue green", None),
            ("red\n", None),
        ];
        for (text, want) in records {
            assert_eq!(parse_color_record(text), want, "{text:?}");
        }
        let a = "0bd3e563b2c4f1a9e8d7c6b5a4f3e2d1c0b9a8f7";
        let b = "e97b91f010a2b3c4d5e6f708192a3b4c5d6e7f80";
        // (history text, last entry)
        let histories: Vec<(String, Option<(Color, &str)>)> = vec![
            (format!("blue {a}\ngreen {b}\n"), Some((Color::Green, b))),
            (
                format!("2026-04-29T16:32:49Z green {b}\n2026-04-30T10:00:00Z blue {a}\n\n"),
                Some((Color::Blue, a)),
            ),
            (format!("{a} blue\n# rolled back by hand\n"), Some((Color::Blue, a))),
            (format!("green {}\n", b.to_uppercase()), Some((Color::Green, b))),
            (format!("green {b}\nblue\n"), None),
            (format!("green {b} blue\n"), None),
            ("green 0bd3e563b2\n".to_string(), None),
            (String::new(), None),
        ];
        for (text, want) in histories {
            let got = parse_color_history(&text);
            assert_eq!(got.as_ref().map(|(c, r)| (*c, r.as_str())), want, "{text:?}");
        }
    }
}
