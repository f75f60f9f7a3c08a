//! Pure parsers of HAProxy 2.6 runtime output: `show proc` (master CLI), `show stat`
//! (CSV, read by column name) and `show servers state`; the per-backend, per-server
//! health view built from them; and the pruning of a state dump before a reload.
//!
//! No IO here: every function takes text and returns data, and is tested with real
//! output captured from HAProxy 2.6.12 (`testdata/`).

use std::collections::BTreeMap;
use std::fmt;

/// Output that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse `{what}` output, line {line}: {message}")]
pub struct ParseError {
    /// Which command's output.
    pub what: &'static str,
    /// 1-based line number (0: the whole text).
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

fn perr(what: &'static str, line: usize, message: impl Into<String>) -> ParseError {
    ParseError { what, line, message: message.into() }
}

// ------------------------------------------------------------------ show proc

/// The master process as `show proc` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterProc {
    /// Master pid (stays the same across reloads: the master re-executes itself).
    pub pid: u32,
    /// Reloads since the master started.
    pub reloads: u64,
    /// Failed reloads since the last successful one (`[failed: N]`).
    pub failed_reloads: u64,
    /// Uptime as printed (`0d00h00m06s`).
    pub uptime: String,
    /// HAProxy version.
    pub version: String,
}

/// A worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerProc {
    /// Worker pid.
    pub pid: u32,
    /// Reloads since this worker was started (0 for the newest).
    pub reloads: u64,
    /// Uptime as printed.
    pub uptime: String,
    /// HAProxy version.
    pub version: String,
    /// Listed under `# old workers`: stopping, draining its in-flight requests.
    pub leaving: bool,
}

/// The parsed answer of the master CLI's `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcList {
    /// The master.
    pub master: MasterProc,
    /// Current and old workers, in listed order.
    pub workers: Vec<WorkerProc>,
}

impl ProcList {
    /// Workers that serve new connections.
    pub fn current_workers(&self) -> impl Iterator<Item = &WorkerProc> {
        self.workers.iter().filter(|w| !w.leaving)
    }
}

/// Parses `show proc` of HAProxy 2.6.
pub fn parse_show_proc(text: &str) -> Result<ProcList, ParseError> {
    const WHAT: &str = "show proc";
    #[derive(PartialEq)]
    enum Section {
        Master,
        Workers,
        OldWorkers,
        Other,
    }
    let mut section = Section::Master;
    let mut master = None;
    let mut workers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("#<PID>") {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('#') {
            section = match name.trim() {
                "workers" => Section::Workers,
                "old workers" => Section::OldWorkers,
                _ => Section::Other,
            };
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let first = words.first().copied().unwrap_or_default();
        let pid = || -> Result<u32, ParseError> {
            first.parse().map_err(|_| perr(WHAT, n, format!("bad pid `{first}`")))
        };
        match section {
            Section::Master if words.get(1) == Some(&"master") => {
                // 1038 master 0 [failed: 0] 0d00h00m06s 2.6.12-1+deb12u4
                let reloads = words.get(2).and_then(|w| w.parse().ok());
                let failed = trimmed
                    .split_once("[failed:")
                    .and_then(|(_, rest)| rest.split(']').next())
                    .and_then(|d| d.trim().parse().ok());
                let (Some(reloads), Some(failed), [.., uptime, version]) =
                    (reloads, failed, words.as_slice())
                else {
                    return Err(perr(WHAT, n, format!("unexpected master line `{trimmed}`")));
                };
                master = Some(MasterProc {
                    pid: pid()?,
                    reloads,
                    failed_reloads: failed,
                    uptime: uptime.to_string(),
                    version: version.to_string(),
                });
            }
            Section::Workers | Section::OldWorkers => {
                // 1041 worker 0 0d00h00m06s 2.6.12-1+deb12u4
                let [_, kind, reloads, uptime, version, ..] = words.as_slice() else {
                    return Err(perr(WHAT, n, format!("unexpected worker line `{trimmed}`")));
                };
                if *kind != "worker" {
                    continue;
                }
                let reloads = reloads
                    .parse()
                    .map_err(|_| perr(WHAT, n, format!("bad reload count `{reloads}`")))?;
                workers.push(WorkerProc {
                    pid: pid()?,
                    reloads,
                    uptime: uptime.to_string(),
                    version: version.to_string(),
                    leaving: section == Section::OldWorkers,
                });
            }
            _ => {}
        }
    }
    let master = master.ok_or_else(|| perr(WHAT, 0, "no master line (is this the master CLI?)"))?;
    Ok(ProcList { master, workers })
}

// ------------------------------------------------------------------ show servers state

/// `srv_op_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    /// 0: down.
    Stopped,
    /// 1: starting (slowstart).
    Starting,
    /// 2: up.
    Running,
    /// 3: stopping.
    Stopping,
    /// Anything else.
    Unknown(u32),
}

impl OpState {
    fn from_code(code: u32) -> OpState {
        match code {
            0 => OpState::Stopped,
            1 => OpState::Starting,
            2 => OpState::Running,
            3 => OpState::Stopping,
            other => OpState::Unknown(other),
        }
    }
}

/// `srv_admin_state`, a bitmask (management.txt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdminState(pub u32);

impl AdminState {
    /// Maintenance forced from the CLI.
    pub const FMAINT: u32 = 0x01;
    /// Maintenance inherited from a tracked server.
    pub const IMAINT: u32 = 0x02;
    /// Maintenance from the config (`disabled`).
    pub const CMAINT: u32 = 0x04;
    /// Drain forced from the CLI.
    pub const FDRAIN: u32 = 0x08;
    /// Drain inherited from a tracked server.
    pub const IDRAIN: u32 = 0x10;
    /// Maintenance because the address does not resolve.
    pub const RMAINT: u32 = 0x20;
    /// Maintenance forced through the stats page / agent.
    pub const HMAINT: u32 = 0x40;

    const NAMES: [(u32, &'static str); 7] = [
        (Self::FMAINT, "FMAINT"),
        (Self::IMAINT, "IMAINT"),
        (Self::CMAINT, "CMAINT"),
        (Self::FDRAIN, "FDRAIN"),
        (Self::IDRAIN, "IDRAIN"),
        (Self::RMAINT, "RMAINT"),
        (Self::HMAINT, "HMAINT"),
    ];

    /// Any kind of maintenance.
    pub fn in_maintenance(self) -> bool {
        self.0 & (Self::FMAINT | Self::IMAINT | Self::CMAINT | Self::RMAINT | Self::HMAINT) != 0
    }
    /// Disabled by the config.
    pub fn config_maintenance(self) -> bool {
        self.0 & Self::CMAINT != 0
    }
    /// Draining.
    pub fn draining(self) -> bool {
        self.0 & (Self::FDRAIN | Self::IDRAIN) != 0
    }
    /// The set flags by name, e.g. `["FMAINT", "CMAINT"]`.
    pub fn flags(self) -> Vec<&'static str> {
        Self::NAMES.iter().filter(|(bit, _)| self.0 & bit != 0).map(|(_, n)| *n).collect()
    }
}

impl fmt::Display for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = self.flags();
        if flags.is_empty() { f.write_str("READY") } else { f.write_str(&flags.join("|")) }
    }
}

/// One server line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStateRow {
    /// `be_name`.
    pub backend: String,
    /// `srv_name`.
    pub server: String,
    /// `srv_addr`: the resolved IP address.
    pub addr: String,
    /// `srv_port`.
    pub port: Option<u16>,
    /// `srv_fqdn`, when the server was declared by name.
    pub fqdn: Option<String>,
    /// `srv_op_state`.
    pub op_state: OpState,
    /// `srv_admin_state`.
    pub admin: AdminState,
    /// `srv_time_since_last_change`, seconds.
    pub since_last_change: u64,
    /// `srv_check_result`: 0 unknown, 1 neutral, 2 failed, 3 passed, 4 condpass.
    pub check_result: u32,
}

/// A parsed `show servers state` dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServersState {
    /// Format version (first line, `1`).
    pub version: u32,
    /// Server lines in order.
    pub rows: Vec<ServerStateRow>,
}

struct StateLayout {
    columns: BTreeMap<String, usize>,
    width: usize,
}

impl StateLayout {
    fn get<'a>(&self, words: &[&'a str], name: &str) -> Option<&'a str> {
        self.columns.get(name).and_then(|&i| words.get(i).copied())
    }
}

/// Version, column layout and numbered data lines of a state dump.
type StateLines<'a> = (u32, StateLayout, Vec<(usize, &'a str)>);

/// Splits a state dump into its version, column layout and data lines (with numbers).
fn state_lines(text: &str) -> Result<StateLines<'_>, ParseError> {
    const WHAT: &str = "show servers state";
    let mut version = None;
    let mut layout = None;
    let mut data = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if version.is_none() {
            version = Some(trimmed.parse::<u32>().map_err(|_| {
                perr(WHAT, n, format!("expected the version line, got `{trimmed}`"))
            })?);
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('#') {
            let names: Vec<&str> = header.split_whitespace().collect();
            if names.first() == Some(&"be_id") {
                layout = Some(StateLayout {
                    columns: names.iter().enumerate().map(|(i, n)| (n.to_string(), i)).collect(),
                    width: names.len(),
                });
            }
            continue;
        }
        data.push((n, trimmed));
    }
    let version = version.ok_or_else(|| perr(WHAT, 0, "empty output"))?;
    let layout = layout.ok_or_else(|| perr(WHAT, 0, "no `# be_id be_name …` header"))?;
    for required in ["be_name", "srv_name", "srv_addr", "srv_op_state", "srv_admin_state"] {
        if !layout.columns.contains_key(required) {
            return Err(perr(WHAT, 0, format!("header has no `{required}` column")));
        }
    }
    Ok((version, layout, data))
}

/// Parses `show servers state` (also the content of a server-state file).
pub fn parse_servers_state(text: &str) -> Result<ServersState, ParseError> {
    const WHAT: &str = "show servers state";
    let (version, layout, data) = state_lines(text)?;
    let mut rows = Vec::new();
    for (n, line) in data {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < layout.width {
            return Err(perr(
                WHAT,
                n,
                format!("{} fields, the header has {}", words.len(), layout.width),
            ));
        }
        let num = |name: &str| -> Result<u64, ParseError> {
            let v = layout.get(&words, name).unwrap_or("0");
            v.parse().map_err(|_| perr(WHAT, n, format!("`{name}` is not a number: `{v}`")))
        };
        let text_field = |name: &str| layout.get(&words, name).unwrap_or("-").to_string();
        let optional =
            |name: &str| layout.get(&words, name).filter(|v| *v != "-").map(str::to_string);
        rows.push(ServerStateRow {
            backend: text_field("be_name"),
            server: text_field("srv_name"),
            addr: text_field("srv_addr"),
            port: layout.get(&words, "srv_port").and_then(|p| p.parse().ok()),
            fqdn: optional("srv_fqdn"),
            op_state: OpState::from_code(u32::try_from(num("srv_op_state")?).unwrap_or(u32::MAX)),
            admin: AdminState(u32::try_from(num("srv_admin_state")?).unwrap_or(u32::MAX)),
            since_last_change: num("srv_time_since_last_change")?,
            check_result: u32::try_from(num("srv_check_result")?).unwrap_or(0),
        });
    }
    Ok(ServersState { version, rows })
}

/// A server as the new config declares it, to prune the state dump against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedServer {
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
/// (`server NAME ADDRESS … [disabled]`), for pruning the state dump against it.
pub fn config_servers(config: &str) -> Vec<ExpectedServer> {
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
                    out.push(ExpectedServer {
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

/// Why a state line was left out of the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The new config has no such server.
    NotInConfig,
    /// The config gives it another address or port; the state file would pin the old one.
    AddressChanged,
    /// The config enables a server that was `disabled`: its stored state is "down in
    /// maintenance", which would make it wait `rise` checks before taking traffic.
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
/// config: health and runtime maintenance continuity for servers that keep their name,
/// address and enabled state. Lines the new config does not know, whose address or port
/// changed, or that the config switches from `disabled` to enabled are dropped, so those
/// servers start from the config (enabled servers start up and are checked at once).
/// An empty dump gives [`EMPTY_STATE_FILE`].
pub fn prune_servers_state(
    dump: &str,
    expected: &[ExpectedServer],
) -> Result<PrunedState, ParseError> {
    if dump.trim().is_empty() {
        return Ok(PrunedState { text: EMPTY_STATE_FILE.to_string(), dropped: Vec::new() });
    }
    let (version, layout, data) = state_lines(dump)?;
    let parsed = parse_servers_state(dump)?;
    let by_name: BTreeMap<(&str, &str), &ExpectedServer> =
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

// ------------------------------------------------------------------ show stat

/// `status` of a server row in `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStatus {
    /// `UP`.
    Up,
    /// `DOWN`.
    Down,
    /// `UP i/n`: up, `i` failed checks of the `n` (fall) that take it down.
    GoingDown { failed: u32, of: u32 },
    /// `DOWN i/n`: down, `i` good checks of the `n` (rise) that bring it up.
    GoingUp { passed: u32, of: u32 },
    /// `MAINT`, `MAINT (via …)`, `MAINT (resolution)`; the detail in parentheses.
    Maint { detail: Option<String> },
    /// `DRAIN` (possibly `DRAIN (agent)`).
    Drain,
    /// `NOLB`.
    NoLb,
    /// `no check`: health checks disabled.
    NoCheck,
    /// Anything else, as printed.
    Other(String),
}

impl ServerStatus {
    /// Parses a `status` field.
    pub fn parse(s: &str) -> ServerStatus {
        let s = s.trim();
        let fraction = |rest: &str| -> Option<(u32, u32)> {
            let (a, b) = rest.trim().split_once('/')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let (word, rest) = s.split_once(' ').unwrap_or((s, ""));
        match word {
            "UP" if rest.is_empty() => ServerStatus::Up,
            "DOWN" if rest.is_empty() => ServerStatus::Down,
            "UP" => fraction(rest).map_or(ServerStatus::Other(s.to_string()), |(failed, of)| {
                ServerStatus::GoingDown { failed, of }
            }),
            "DOWN" => fraction(rest).map_or(ServerStatus::Other(s.to_string()), |(passed, of)| {
                ServerStatus::GoingUp { passed, of }
            }),
            w if w.starts_with("MAINT") => {
                let detail = s
                    .split_once('(')
                    .map(|(_, d)| d.trim_end_matches(')').trim().to_string())
                    .filter(|d| !d.is_empty());
                ServerStatus::Maint { detail }
            }
            "DRAIN" => ServerStatus::Drain,
            "NOLB" => ServerStatus::NoLb,
            "no" if rest == "check" => ServerStatus::NoCheck,
            _ => ServerStatus::Other(s.to_string()),
        }
    }

    /// Whether the server takes new traffic in this state.
    pub fn serving(&self) -> bool {
        matches!(self, ServerStatus::Up | ServerStatus::GoingDown { .. } | ServerStatus::NoCheck)
    }
}

/// `type` of a `show stat` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatType {
    /// 0.
    Frontend,
    /// 1.
    Backend,
    /// 2.
    Server,
    /// 3.
    Listener,
    /// Anything else.
    Unknown,
}

/// One row of `show stat`, the fields the agent reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`: proxy (frontend or backend) name.
    pub proxy: String,
    /// `svname`: server name, or `FRONTEND`/`BACKEND`.
    pub name: String,
    /// `type`.
    pub kind: StatType,
    /// `status` as printed.
    pub status: String,
    /// `check_status` (`L7OK`, `L7STS`, `L4CON`, `INI`, …), when checked.
    pub check_status: Option<String>,
    /// `check_code`: HTTP status of the last check.
    pub check_code: Option<u16>,
    /// `check_desc`.
    pub check_desc: Option<String>,
    /// `lastchg`: seconds since the last status change.
    pub last_change_secs: Option<u64>,
    /// `addr`.
    pub addr: Option<String>,
    /// `scur`: current sessions.
    pub current_sessions: Option<u64>,
}

/// Splits one CSV line; HAProxy quotes fields that contain commas or quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Parses `show stat` CSV by column name (the `# pxname,svname,…` header).
pub fn parse_show_stat(text: &str) -> Result<Vec<StatRow>, ParseError> {
    const WHAT: &str = "show stat";
    let mut columns: Option<BTreeMap<String, usize>> = None;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('#') {
            let names = csv_fields(header.trim_start());
            columns = Some(names.into_iter().enumerate().map(|(i, n)| (n, i)).collect());
            continue;
        }
        let Some(cols) = &columns else {
            return Err(perr(WHAT, n, "data before the `# pxname,svname,…` header"));
        };
        for required in ["pxname", "svname", "status"] {
            if !cols.contains_key(required) {
                return Err(perr(WHAT, n, format!("header has no `{required}` column")));
            }
        }
        let fields = csv_fields(line);
        let get = |name: &str| -> Option<&str> {
            cols.get(name)
                .and_then(|&i| fields.get(i))
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        rows.push(StatRow {
            proxy: get("pxname").unwrap_or_default().to_string(),
            name: get("svname").unwrap_or_default().to_string(),
            kind: match get("type") {
                Some("0") => StatType::Frontend,
                Some("1") => StatType::Backend,
                Some("2") => StatType::Server,
                Some("3") => StatType::Listener,
                _ => StatType::Unknown,
            },
            status: get("status").unwrap_or_default().to_string(),
            check_status: get("check_status").map(|s| s.trim_start_matches('*').trim().to_string()),
            check_code: get("check_code").and_then(|v| v.parse().ok()),
            check_desc: get("check_desc").map(str::to_string),
            last_change_secs: number("lastchg"),
            addr: get("addr").map(str::to_string),
            current_sessions: number("scur"),
        });
    }
    Ok(rows)
}

// ------------------------------------------------------------------ health view

/// Health of one server, for status and health gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    /// Server name.
    pub server: String,
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

    const PROC: &str = include_str!("testdata/show-proc.txt");
    const PROC_OLD: &str = include_str!("testdata/show-proc-old-workers.txt");
    const PROC_FAILED: &str = include_str!("testdata/show-proc-failed.txt");
    const STAT_ALL: &str = include_str!("testdata/show-stat-all.csv");
    const STAT_DRAIN: &str = include_str!("testdata/show-stat-drain.csv");
    const STATE_DRAIN: &str = include_str!("testdata/show-servers-state-drain.txt");
    /// interfaces.md §2.4, verbatim.
    const STATE_DOC: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be_app 1 blue 127.0.0.1 2 0 1 1 44 15 3 3 6 0 0 0 - 18101 - 0 0 - - 0
3 be_app 2 green 127.0.0.1 0 5 1 1 44 1 0 0 14 0 0 0 - 18102 - 0 0 - - 0
";

    #[test]
    fn show_proc_samples() {
        // (sample, master pid, reloads, failed, [(worker pid, reloads, leaving)])
        type Workers = &'static [(u32, u64, bool)];
        let cases: [(&str, u32, u64, u64, Workers); 3] = [
            (PROC, 27792, 0, 0, &[(27795, 0, false)]),
            (PROC_OLD, 30127, 1, 0, &[(30206, 0, false), (30134, 1, true)]),
            (PROC_FAILED, 30393, 1, 1, &[(30403, 1, false)]),
        ];
        for (text, pid, reloads, failed, workers) in cases {
            let p = parse_show_proc(text).unwrap();
            assert_eq!(
                (p.master.pid, p.master.reloads, p.master.failed_reloads),
                (pid, reloads, failed)
            );
            assert_eq!(p.master.version, "2.6.12-1+deb12u4");
            let got: Vec<_> = p.workers.iter().map(|w| (w.pid, w.reloads, w.leaving)).collect();
            assert_eq!(got, workers);
        }
        assert_eq!(parse_show_proc(PROC_OLD).unwrap().current_workers().count(), 1);
        // interfaces.md §2.6 (failed reload, aligned with spaces)
        let doc = "#<PID>          <type>          <reloads>       <uptime>        <version>\n1038            master          15 [failed: 1]  0d00h03m09s     2.6.12-1+deb12u4\n# workers\n6605            worker          1               0d00h00m14s     2.6.12-1+deb12u4\n";
        let p = parse_show_proc(doc).unwrap();
        assert_eq!((p.master.reloads, p.master.failed_reloads, p.workers[0].pid), (15, 1, 6605));
        for bad in ["", "# workers\n1 worker 0 x y\n", "1 master zero [failed: 0] a b\n"] {
            assert!(parse_show_proc(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn servers_state_samples() {
        // (sample, backend, server, op, admin, port, since)
        let cases = [
            (STATE_DOC, "be_app", "blue", OpState::Running, 0, 18101, 44),
            (STATE_DOC, "be_app", "green", OpState::Stopped, 5, 18102, 44),
            (STATE_DRAIN, "be", "blue", OpState::Running, 8, 28101, 0),
            (STATE_DRAIN, "be", "green", OpState::Stopped, 4, 28102, 4),
            (STATE_DRAIN, "be", "red", OpState::Stopped, 0, 28109, 6),
        ];
        for (text, be, srv, op, admin, port, since) in cases {
            let s = parse_servers_state(text).unwrap();
            assert_eq!(s.version, 1);
            let row = s.rows.iter().find(|r| r.backend == be && r.server == srv).unwrap();
            assert_eq!(
                (row.op_state, row.admin, row.port, row.since_last_change, row.fqdn.as_deref()),
                (op, AdminState(admin), Some(port), since, None),
                "{be}/{srv}"
            );
        }
        assert_eq!(AdminState(5).to_string(), "FMAINT|CMAINT");
        assert_eq!(AdminState(8).to_string(), "FDRAIN");
        assert_eq!(AdminState(0).to_string(), "READY");
        assert!(AdminState(5).config_maintenance() && AdminState(5).in_maintenance());
        assert!(AdminState(8).draining() && !AdminState(8).in_maintenance());
        assert!(parse_servers_state("1\n").is_err());
        assert!(parse_servers_state("x\n").is_err());
        let short =
            "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n3 be 1\n";
        assert!(parse_servers_state(short).unwrap_err().to_string().contains("line 3"));
    }

    #[test]
    fn show_stat_samples() {
        let rows = parse_show_stat(STAT_ALL).unwrap();
        let health = edge_health(&rows, None);
        let names: Vec<&str> = health.iter().map(|b| b.backend.as_str()).collect();
        assert_eq!(names, ["be", "d503"], "frontends are left out");
        let be = &health[0];
        assert_eq!(be.status, "UP");
        // (server, status, check_status, check_code, desc)
        let cases = [
            ("blue", ServerStatus::Up, Some("L7OK"), Some(200), Some("Layer7 check passed")),
            ("green", ServerStatus::Maint { detail: None }, None, None, None),
            ("red", ServerStatus::Down, Some("L4CON"), None, Some("Layer4 connection problem")),
        ];
        for (srv, status, check, code, desc) in cases {
            let s = be.server(srv).unwrap();
            assert_eq!(
                (&s.status, s.check_status.as_deref(), s.check_code, s.check_desc.as_deref()),
                (&status, check, code, desc),
                "{srv}"
            );
        }
        assert_eq!(be.server("blue").unwrap().addr.as_deref(), Some("127.0.0.1:28101"));
        assert_eq!(be.server("blue").unwrap().last_change_secs, Some(3));

        let rows = parse_show_stat(STAT_DRAIN).unwrap();
        let state = parse_servers_state(STATE_DRAIN).unwrap();
        let health = edge_health(&rows, Some(&state));
        let be = &health[0];
        let blue = be.server("blue").unwrap();
        assert_eq!((&blue.status, blue.admin), (&ServerStatus::Drain, Some(AdminState(8))));
        let green = be.server("green").unwrap();
        assert_eq!(green.status, ServerStatus::GoingUp { passed: 1, of: 2 });
        assert_eq!(green.status_text, "DOWN 1/2");
        assert!(!green.status.serving() && !blue.status.serving());
    }

    #[test]
    fn status_strings() {
        for (text, want) in [
            ("UP", ServerStatus::Up),
            ("DOWN", ServerStatus::Down),
            ("UP 1/2", ServerStatus::GoingDown { failed: 1, of: 2 }),
            ("DOWN 1/2", ServerStatus::GoingUp { passed: 1, of: 2 }),
            ("MAINT", ServerStatus::Maint { detail: None }),
            ("MAINT (resolution)", ServerStatus::Maint { detail: Some("resolution".into()) }),
            ("MAINT (via be/srv)", ServerStatus::Maint { detail: Some("via be/srv".into()) }),
            ("DRAIN", ServerStatus::Drain),
            ("NOLB", ServerStatus::NoLb),
            ("no check", ServerStatus::NoCheck),
            ("UP x/y", ServerStatus::Other("UP x/y".into())),
            ("weird", ServerStatus::Other("weird".into())),
        ] {
            assert_eq!(ServerStatus::parse(text), want, "{text}");
        }
        assert!(ServerStatus::GoingDown { failed: 1, of: 3 }.serving());
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_fields(r#"a,"b,c","d""e",,f"#), ["a", "b,c", "d\"e", "", "f"]);
        assert!(parse_show_stat("be,blue,UP\n").is_err(), "data before header");
    }

    #[test]
    fn servers_of_a_config() {
        let cfg = "global\n    master-worker\nfrontend fe\n    bind 127.0.0.1:1\nbackend be_app # app\n    default-server inter 1s\n    server blue-1 127.0.0.1:18101 check cookie blue-1\n    server green-2 x.lxd:80 check disabled\n    # server ghost 1.2.3.4:5\nbackend other\n    server s 10.0.0.1:3000\n";
        let got: Vec<(String, String, String, bool)> = config_servers(cfg)
            .into_iter()
            .map(|e| (e.backend, e.server, e.address, e.enabled))
            .collect();
        let want = [
            ("be_app", "blue-1", "127.0.0.1:18101", true),
            ("be_app", "green-2", "x.lxd:80", false),
            ("other", "s", "10.0.0.1:3000", true),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1.as_str(), g.2.as_str(), g.3), w);
        }
    }

    #[test]
    fn prune_keeps_continuity_and_drops_what_would_be_stale() {
        let exp = |srv: &str, addr: &str, enabled: bool| ExpectedServer {
            backend: "be_app".into(),
            server: srv.into(),
            address: addr.into(),
            enabled,
        };
        // (expected servers, kept server names, dropped (name, reason))
        type Case = (Vec<ExpectedServer>, Vec<&'static str>, Vec<(&'static str, DropReason)>);
        let cases: Vec<Case> = vec![
            // same config: everything kept
            (
                vec![exp("blue", "127.0.0.1:18101", true), exp("green", "127.0.0.1:18102", false)],
                vec!["blue", "green"],
                vec![],
            ),
            // switch to green: green's "disabled" state must not survive
            (
                vec![exp("blue", "127.0.0.1:18101", false), exp("green", "127.0.0.1:18102", true)],
                vec!["blue"],
                vec![("green", DropReason::Enabled)],
            ),
            // green moved to another port; blue gone from the config
            (
                vec![exp("green", "127.0.0.1:18103", false)],
                vec![],
                vec![("blue", DropReason::NotInConfig), ("green", DropReason::AddressChanged)],
            ),
            // other address, same port
            (
                vec![exp("blue", "127.0.0.2:18101", true)],
                vec![],
                vec![("blue", DropReason::AddressChanged), ("green", DropReason::NotInConfig)],
            ),
            // a DNS name with the same port (no fqdn recorded) is kept
            (
                vec![exp("blue", "veza-backend-blue.lxd:18101", true)],
                vec!["blue"],
                vec![("green", DropReason::NotInConfig)],
            ),
        ];
        for (expected, kept, dropped) in cases {
            let p = prune_servers_state(STATE_DOC, &expected).unwrap();
            let state = parse_servers_state(&p.text).unwrap();
            let got: Vec<&str> = state.rows.iter().map(|r| r.server.as_str()).collect();
            assert_eq!(got, kept);
            let got: Vec<(&str, DropReason)> =
                p.dropped.iter().map(|d| (d.server.as_str(), d.reason)).collect();
            assert_eq!(got, dropped);
            assert!(p.text.starts_with(EMPTY_STATE_FILE), "version and header are kept");
        }
        let p = prune_servers_state("", &[]).unwrap();
        assert_eq!(p.text, EMPTY_STATE_FILE);
        assert!(parse_servers_state(EMPTY_STATE_FILE).unwrap().rows.is_empty());
    }
}
