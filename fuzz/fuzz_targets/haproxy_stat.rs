//! The HAProxy runtime-API parsers (`veza_host::haproxy::parse`): `show stat` CSV,
//! `show proc`, `show servers state`, and what consumes their results (edge health,
//! server-state pruning against the servers of a config).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veza_host::haproxy::parse::{
    config_servers, edge_health, parse_servers_state, parse_show_proc, parse_show_stat,
    prune_servers_state,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let stat = parse_show_stat(&text);
    let _ = parse_show_proc(&text);
    let state = parse_servers_state(&text);
    if let Ok(rows) = &stat {
        let _ = edge_health(rows, state.as_ref().ok());
    }
    let servers = config_servers(&text);
    let _ = prune_servers_state(&text, &servers);
});
