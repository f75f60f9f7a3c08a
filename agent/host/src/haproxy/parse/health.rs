//! The per-backend, per-server health view built from `show stat` and
//! `show servers state`, for status and health gates.

use std::collections::BTreeMap;

use veza_model::manifest::Color;

use crate::apply::EdgeView;
use veza_model::naming;

use super::{AdminState, ServerStatus, ServersState, StatRow, StatType};

/// Health of one server, for status and health gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    /// Server name.
    pub server: String,
    /// The slot color it routes to, for an app backend's server (read once, here, through
    /// `veza_model::naming`); `None` for any other.
    pub color: Option<Color>,
    /// Parsed `status`.
    pub status: ServerStatus,
    /// `status` as printed (`UP 1/2`).
    pub status_text: String,
    /// Last check result (`L7OK`, `L7STS`, `L4CON`, `INI`).
    pub check_status: Option<String>,
    /// HTTP status of the last check.
    pub check_code: Option<u16>,
    /// Human-readable check description.
    pub check_desc: Option<String>,
    /// Seconds since the last status change.
    pub last_change_secs: Option<u64>,
    /// Admin state from `show servers state`, when given.
    pub admin: Option<AdminState>,
    /// `address:port`.
    pub addr: Option<String>,
}

/// What a server's `show stat` status and last check tell the health gate (`None`:
/// HAProxy does not know the server). `UP` counts only with a passed last check
/// (`L4OK`, `L6OK`, `L7OK`): a server new in the config starts `UP` before its first
/// check (`INI`), and with `fall 1` nothing in its status says so.
pub fn edge_view(status: Option<&ServerStatus>, check_status: Option<&str>) -> EdgeView {
    match status {
        Some(ServerStatus::Up) => match check_status {
            Some("L4OK" | "L6OK" | "L7OK") => EdgeView::Up,
            _ => EdgeView::Unknown,
        },
        None
        | Some(ServerStatus::Maint { .. } | ServerStatus::NoCheck | ServerStatus::Other(_)) => {
            EdgeView::Unknown
        }
        Some(_) => EdgeView::NotUp,
    }
}

/// Health of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    /// Backend name.
    pub backend: String,
    /// The backend row's `status` (`UP` when at least one server serves).
    pub status: String,
    /// Servers in config order.
    pub servers: Vec<ServerHealth>,
}

impl BackendHealth {
    /// A server by name.
    pub fn server(&self, name: &str) -> Option<&ServerHealth> {
        self.servers.iter().find(|s| s.server == name)
    }
}

/// Builds the per-backend health view from `show stat` rows, adding admin states from a
/// `show servers state` dump when one is given. Frontends and internal proxies (named
/// `<…>`) are left out.
pub fn edge_health(stat: &[StatRow], state: Option<&ServersState>) -> Vec<BackendHealth> {
    let admin: BTreeMap<(&str, &str), AdminState> = state
        .map(|s| {
            s.rows.iter().map(|r| ((r.backend.as_str(), r.server.as_str()), r.admin)).collect()
        })
        .unwrap_or_default();
    let mut out: Vec<BackendHealth> = Vec::new();
    let entry = |out: &mut Vec<BackendHealth>, name: &str| -> usize {
        match out.iter().position(|b| b.backend == name) {
            Some(i) => i,
            None => {
                out.push(BackendHealth {
                    backend: name.to_string(),
                    status: String::new(),
                    servers: Vec::new(),
                });
                out.len() - 1
            }
        }
    };
    for row in stat {
        if row.proxy.starts_with('<') {
            continue;
        }
        match row.kind {
            StatType::Server => {
                let i = entry(&mut out, &row.proxy);
                out[i].servers.push(ServerHealth {
                    server: row.name.clone(),
                    color: naming::read_server(&row.proxy, &row.name).map(|s| s.color),
                    status: ServerStatus::parse(&row.status),
                    status_text: row.status.clone(),
                    check_status: row.check_status.clone(),
                    check_code: row.check_code,
                    check_desc: row.check_desc.clone(),
                    last_change_secs: row.last_change_secs,
                    admin: admin.get(&(row.proxy.as_str(), row.name.as_str())).copied(),
                    addr: row.addr.clone(),
                });
            }
            StatType::Backend => {
                let i = entry(&mut out, &row.proxy);
                out[i].status = row.status.clone();
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
    fn haproxy_statuses_read_as_views() {
        // (status, last check, what the gate reads)
        let table = [
            (None, None, EdgeView::Unknown),
            (Some("UP"), Some("L7OK"), EdgeView::Up),
            (Some("UP"), Some("L4OK"), EdgeView::Up),
            (Some("UP"), Some("L6OK"), EdgeView::Up),
            // New in the config, not checked yet: `UP` is HAProxy's assumption, not a check.
            (Some("UP"), Some("INI"), EdgeView::Unknown),
            (Some("UP"), None, EdgeView::Unknown),
            (Some("DOWN"), Some("L7STS"), EdgeView::NotUp),
            (Some("UP 1/3"), Some("L4CON"), EdgeView::NotUp), // a failed check since it came up
            (Some("DOWN 1/2"), Some("L7OK"), EdgeView::NotUp),
            (Some("MAINT"), None, EdgeView::Unknown), // a `disabled` server is not checked
            (Some("DRAIN"), Some("L7OK"), EdgeView::NotUp),
            (Some("no check"), None, EdgeView::Unknown),
        ];
        for (text, check, view) in table {
            let status = text.map(ServerStatus::parse);
            assert_eq!(edge_view(status.as_ref(), check), view, "{text:?} {check:?} -> {status:?}");
        }
    }
}
