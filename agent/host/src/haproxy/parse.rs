//! Pure parsers of HAProxy 2.6 runtime output: `show proc` (master CLI), `show stat`
//! (CSV, read by column name) and `show servers state`; the per-backend, per-server
//! health view built from them (`health`); and the pruning of a state dump before a
//! reload (`prune`).
//!
//! No IO here: every function takes text and returns data, and is tested with real
//! output captured from HAProxy 2.6.12 (`testdata/`).

use std::collections::BTreeMap;
use std::fmt;

mod health;
mod prune;

pub use health::{BackendHealth, ServerHealth, edge_health, edge_view};
pub use prune::{DropReason, DroppedServer, EMPTY_STATE_FILE, PrunedState, prune_servers_state};

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
    /// `srv_iweight`: the weight the loaded config gave it (0 for the standby color);
    /// `None` when the dump has no such column.
    pub config_weight: Option<u32>,
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
            config_weight: layout.get(&words, "srv_iweight").and_then(|w| w.parse().ok()),
        });
    }
    Ok(ServersState { version, rows })
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

#[cfg(test)]
mod tests;
