//! The edge as observed: the servers a `haproxy.cfg` declares, and from them, once, the
//! color each app's backend routes to ([`LiveEdge`]). Pure: the caller reads the file.

use std::collections::BTreeMap;

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
}

impl LiveEdge {
    /// The edge running `config`: in each app backend (`<env>_<app>`), the color of the
    /// server that is not `disabled`.
    pub fn from_config(config: String) -> LiveEdge {
        let mut active = BTreeMap::new();
        for s in config_servers(&config).iter().filter(|s| s.enabled) {
            if let Some(slot) = naming::read_server(&s.backend, &s.server) {
                active.insert((slot.env.to_string(), slot.app.to_string()), slot.color);
            }
        }
        LiveEdge { config: Some(config), active }
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
    /// `false` when the config renders it `disabled`.
    pub enabled: bool,
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
                        enabled: !rest.contains(&"disabled"),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_of_a_config() {
        let cfg = "global\n    master-worker\nfrontend fe\n    bind 127.0.0.1:1\nbackend be_app # app\n    default-server inter 1s\n    server blue-1 127.0.0.1:18101 check cookie blue-1\n    server green-2 x.lxd:80 check disabled\n    # server ghost 1.2.3.4:5\nbackend other\n    server s 10.0.0.1:3000\nfrontend stats\n    server nope 1.2.3.4:5\n";
        let got: Vec<(String, String, String, bool)> = config_servers(cfg)
            .into_iter()
            .map(|e| (e.backend, e.server, e.address, e.enabled))
            .collect();
        let want = [
            ("be_app", "blue-1", "127.0.0.1:18101", true),
            ("be_app", "green-2", "x.lxd:80", false),
            ("other", "s", "10.0.0.1:3000", true),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1.as_str(), g.2.as_str(), g.3), w);
        }
    }

    #[test]
    fn the_active_color_is_the_enabled_server_of_each_app_backend() {
        let cfg = "frontend fe\n    bind :80\nbackend prod_backend\n    server blue-0bd3e563b2 a:1 check disabled\n    server green-e97b91f010 b:1 check\nbackend staging_web\n    server blue-7c9e1b3d5f c:1 check\nbackend staging_api\n    server green-1 d:1 check disabled\nbackend default_503\nbackend forgejo\n    server s1 e:1 check\n";
        let edge = LiveEdge::from_config(cfg.to_string());
        let key = |e: &str, a: &str| (e.to_string(), a.to_string());
        let want = BTreeMap::from([
            (key("prod", "backend"), Color::Green),
            (key("staging", "web"), Color::Blue),
        ]);
        assert_eq!(edge.active, want);
        assert_eq!(edge.config.as_deref(), Some(cfg));
    }
}
