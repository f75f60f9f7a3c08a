//! Pruning of a `show servers state` dump before a reload: the state lines that may
//! safely be carried over to the new config (its servers as `veza_model::live::config_servers`
//! reads them).

use std::collections::BTreeMap;

use veza_model::live::ConfigServer;

use super::{OpState, ParseError, ServerStateRow, parse_servers_state, state_lines};

/// Why a state line was left out of the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The new config has no such server.
    NotInConfig,
    /// The config gives it another address or port; the state file would pin the old one.
    AddressChanged,
    /// The config gives traffic to a server that had none and that HAProxy does not hold
    /// up: a `disabled` one (stored "down in maintenance"), or a `weight 0` standby its
    /// checks have not (yet) seen up, e.g. a slot started moments ago, which the health
    /// gate just proved healthy. Its stored state would make it wait `rise` checks before
    /// taking traffic, with nothing else to serve.
    Enabled,
}

/// A state line that was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedServer {
    /// Backend name.
    pub backend: String,
    /// Server name.
    pub server: String,
    /// Why.
    pub reason: DropReason,
}

/// A state dump ready to be written as the server-state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedState {
    /// The file content: version, header and the kept lines.
    pub text: String,
    /// What was left out.
    pub dropped: Vec<DroppedServer>,
}

/// The header of an empty state file (version line + columns), which HAProxy loads
/// without a warning.
pub const EMPTY_STATE_FILE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n";

/// Keeps the lines of a `show servers state` dump that may safely be applied to the new
/// config: health and runtime maintenance continuity for servers that keep their name and
/// address (a promoted `weight 0` standby HAProxy holds up keeps its state and serves at
/// once; HAProxy takes the new weight from the config, since it changed there). Lines
/// the new config does not know, whose address or port changed, or that the config gives
/// traffic while they are not up ([`DropReason::Enabled`]) are dropped, so those servers
/// start from the config (enabled servers start up and are checked at once).
/// An empty dump gives [`EMPTY_STATE_FILE`].
pub fn prune_servers_state(
    dump: &str,
    expected: &[ConfigServer],
) -> Result<PrunedState, ParseError> {
    if dump.trim().is_empty() {
        return Ok(PrunedState { text: EMPTY_STATE_FILE.to_string(), dropped: Vec::new() });
    }
    let (version, layout, data) = state_lines(dump)?;
    let parsed = parse_servers_state(dump)?;
    let by_name: BTreeMap<(&str, &str), &ConfigServer> =
        expected.iter().map(|e| ((e.backend.as_str(), e.server.as_str()), e)).collect();
    let mut text = format!("{version}\n# ");
    let mut header: Vec<(&String, &usize)> = layout.columns.iter().collect();
    header.sort_by_key(|(_, i)| **i);
    text.push_str(&header.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" "));
    text.push('\n');
    let mut dropped = Vec::new();
    for ((_, line), row) in data.iter().zip(&parsed.rows) {
        let reason = match by_name.get(&(row.backend.as_str(), row.server.as_str())) {
            None => Some(DropReason::NotInConfig),
            Some(e) if !same_address(row, &e.address) => Some(DropReason::AddressChanged),
            Some(e) if e.enabled && row.admin.config_maintenance() => Some(DropReason::Enabled),
            Some(e)
                if e.enabled
                    && row.config_weight == Some(0)
                    && row.op_state != OpState::Running =>
            {
                Some(DropReason::Enabled)
            }
            Some(_) => None,
        };
        match reason {
            Some(reason) => dropped.push(DroppedServer {
                backend: row.backend.clone(),
                server: row.server.clone(),
                reason,
            }),
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    Ok(PrunedState { text, dropped })
}

/// Whether a state row still matches `address:port` from the config. For a server
/// declared by DNS name only the port (and the name, when recorded) can be compared.
fn same_address(row: &ServerStateRow, address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if row.port.map(|p| p.to_string()).as_deref() != Some(port) {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => row.addr.parse::<std::net::IpAddr>().is_ok_and(|a| a == ip),
        Err(_) => row.fqdn.as_deref().is_none_or(|f| f.eq_ignore_ascii_case(host)),
    }
}
