//! systemd unit files for scheduled jobs: a `.service` and a `.timer` per job, as text.
//!
//! # Background
//!
//! Each manifest job becomes `veza-job-<env>-<name>.service` (`Type=oneshot`, the command run
//! through `/bin/sh -c`) and `veza-job-<env>-<name>.timer` (one `OnCalendar=` per line of
//! [`CronSchedule::on_calendar`]). Both files start with the ownership marker
//! [`OWNER_MARKER_PREFIX`]`<env>/<name>`, which is how the agent recognises units it may change
//! or prune ([`owner`]). Rendering is pure: the caller writes the files and runs
//! `systemd-analyze verify` on them.
//!
//! The templates live in `agent/model/templates/` and are compiled in with `include_str!`.
//! Values are escaped in Rust before they reach the templates, so the templates stay plain.
//!
//! # Choices
//!
//! - `AccuracySec=1s`: systemd's default of 1 min lets a run start anywhere in the minute after
//!   its elapse. Cron users expect the job at the minute they wrote, and `veza-agent schedule`
//!   and `status` print exact instants; one wake-up per job run costs nothing on a server. The
//!   deliberate spreading knob is `RandomizedDelaySec=`, which stays explicit.
//! - No timeout means `TimeoutStartSec=infinity`, written out: that is systemd's default for
//!   `Type=oneshot`, and writing it makes the behaviour visible in the unit. A zero timeout is
//!   rejected because systemd would read it as "no limit".
//!
//! # Current limitations
//!
//! Names must be lowercase letters, digits and dashes, so `veza-job-a-b-c` could be env `a`,
//! job `b-c` or env `a-b`, job `c`: `validate` rejects two jobs on one host whose
//! [`unit_stem`]s collide; the marker still tells them apart.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::error_chain;
use crate::lexical;
use crate::schedule::CronSchedule;

/// The first line of every unit we render, followed by `<env>/<name>`.
pub const OWNER_MARKER_PREFIX: &str = "# Managed by veza-agent; do not edit. veza-agent-owner: ";

/// The `AccuracySec=` of every timer (see the module docs for why).
pub const TIMER_ACCURACY: &str = "1s";

const SERVICE_TEMPLATE: &str = include_str!("../templates/job.service.tera");
const TIMER_TEMPLATE: &str = include_str!("../templates/job.timer.tera");

/// Everything needed to render one job's units. The caller maps the manifest's job onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUnitSpec {
    /// Environment (manifest `metadata.name`), e.g. `prod`.
    pub env: String,
    /// Job name, e.g. `pgbackrest-full`.
    pub name: String,
    /// When the job runs.
    pub schedule: CronSchedule,
    /// Time zone the schedule is read in; `None` means UTC.
    pub tz: Option<String>,
    /// `User=`; `None` runs as root.
    pub user: Option<String>,
    /// Shell command line, run with `/bin/sh -c`.
    pub command: String,
    /// `RandomizedDelaySec=`; `None` or zero means none.
    pub randomized_delay: Option<Duration>,
    /// `Persistent=`: run at activation if an elapse was missed while the timer was inactive.
    pub persistent: bool,
    /// `TimeoutStartSec=`; `None` means no limit (`infinity`).
    pub timeout: Option<Duration>,
    /// The service's `Description=`; `None` gives `veza job <env>/<name>`.
    pub description: Option<String>,
}

impl JobUnitSpec {
    /// A job with a manifest's defaults: read in UTC, run as root, no random delay,
    /// persistent, no time limit, the default description.
    pub fn new(env: &str, name: &str, schedule: CronSchedule, command: &str) -> JobUnitSpec {
        JobUnitSpec {
            env: env.into(),
            name: name.into(),
            schedule,
            tz: None,
            user: None,
            command: command.into(),
            randomized_delay: None,
            persistent: true,
            timeout: None,
            description: None,
        }
    }
}

/// One rendered unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// File name, e.g. `veza-job-prod-dr-drill.timer`.
    pub name: String,
    /// File contents, ending with a newline.
    pub contents: String,
}

/// A job's two unit files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUnits {
    /// `veza-job-<env>-<name>.service`.
    pub service: UnitFile,
    /// `veza-job-<env>-<name>.timer`, which activates the service.
    pub timer: UnitFile,
}

/// Why a job's units could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job `{job}`: {kind}")]
pub struct UnitError {
    /// `<env>/<name>`.
    pub job: String,
    /// What is wrong.
    pub kind: UnitErrorKind,
}

/// What is wrong with a [`JobUnitSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitErrorKind {
    /// The environment or job name cannot be part of a unit name.
    #[error(
        "invalid {what} name `{value}`: use 1-64 lowercase letters, digits and dashes, starting with a letter"
    )]
    InvalidName {
        /// `environment` or `job`.
        what: &'static str,
        /// The name as given.
        value: String,
    },
    /// `User=` would not be a single plain word.
    #[error("invalid user name `{0}`: use letters, digits, `_`, `-` and `.`")]
    InvalidUser(String),
    /// The time zone would not be a single plain word.
    #[error("invalid time zone `{0}`: use letters, digits, `/`, `_`, `+` and `-`")]
    InvalidTimeZone(String),
    /// The schedule's text would not fit on one line of the unit.
    #[error("invalid schedule `{}`: {why}", .schedule.escape_debug())]
    InvalidSchedule {
        /// The schedule as written.
        schedule: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The command is empty or contains a NUL byte.
    #[error("invalid command: {0}")]
    InvalidCommand(&'static str),
    /// The description contains a control character or ends with a backslash.
    #[error("invalid description `{0}`: use one line of printable text not ending with `\\`")]
    InvalidDescription(String),
    /// A zero timeout, which systemd would read as "no limit".
    #[error("timeout must be greater than zero (leave it unset for no limit)")]
    ZeroTimeout,
    /// A template failed to render: a bug in this module, not in the input.
    #[error("internal error: rendering `{template}` failed: {message}")]
    Template {
        /// Template name.
        template: &'static str,
        /// Tera's message, with its sources.
        message: String,
    },
}

/// `veza-job-<env>-<name>`, the name of both units without the suffix.
pub fn unit_stem(env: &str, name: &str) -> String {
    format!("veza-job-{env}-{name}")
}

/// The `(env, name)` owning a unit, read from its ownership marker line; `None` when the text
/// has no marker, i.e. the unit is not ours.
pub fn owner(contents: &str) -> Option<(&str, &str)> {
    contents.lines().find_map(|line| {
        let rest = line.strip_prefix(OWNER_MARKER_PREFIX)?;
        let (env, name) = rest.trim_end().split_once('/')?;
        (!env.is_empty() && !name.is_empty()).then_some((env, name))
    })
}

/// The values of `key=` lines in section `[section]` of a unit file, as written
/// (comments and other sections skipped; continuation lines are not joined).
fn unit_values<'a>(contents: &'a str, section: &str, key: &str) -> Vec<&'a str> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in contents.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{section}]");
        } else if inside
            && !line.starts_with(['#', ';'])
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            out.push(v.trim());
        }
    }
    out
}

/// The unit a timer file `timer_name` activates: the `Unit=` of its `[Timer]` section, else
/// the service of the same name (`x.timer` → `x.service`), as systemd decides.
pub fn timer_unit(timer_name: &str, contents: &str) -> String {
    match unit_values(contents, "Timer", "Unit").last() {
        Some(unit) if !unit.is_empty() => (*unit).to_string(),
        _ => format!("{}.service", timer_name.strip_suffix(".timer").unwrap_or(timer_name)),
    }
}

/// The targets a unit file is enabled into (`WantedBy=` of its `[Install]` section): an
/// enabled unit has a link in `<target>.wants/` of its unit directory for each.
pub fn wanted_by(contents: &str) -> Vec<String> {
    unit_values(contents, "Install", "WantedBy")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_string)
        .collect()
}

/// The commands of a service file's `ExecStart=` lines (its `[Service]` section), as
/// written; an empty `ExecStart=` resets the list, as in systemd.
pub fn exec_starts(contents: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in unit_values(contents, "Service", "ExecStart") {
        if v.is_empty() {
            out.clear();
        } else {
            out.push(v.to_string());
        }
    }
    out
}

/// Renders the job's `.service` and `.timer`.
pub fn render(spec: &JobUnitSpec) -> Result<JobUnits, UnitError> {
    let err = |kind| UnitError { job: format!("{}/{}", spec.env, spec.name), kind };
    check_name("environment", &spec.env).map_err(err)?;
    check_name("job", &spec.name).map_err(err)?;
    if let Some(user) = spec.user.as_deref().filter(|u| lexical::unit_user(u).is_err()) {
        return Err(err(UnitErrorKind::InvalidUser(user.to_string())));
    }
    if let Some(tz) = spec.tz.as_deref().filter(|tz| lexical::time_zone(tz).is_err()) {
        return Err(err(UnitErrorKind::InvalidTimeZone(tz.to_string())));
    }
    let schedule = spec.schedule.to_string();
    if let Err(why) = lexical::unit_line(&schedule) {
        return Err(err(UnitErrorKind::InvalidSchedule { schedule, why }));
    }
    let exec_arg = exec_arg(&spec.command).map_err(err)?;
    let description = match &spec.description {
        Some(d) => {
            if d.trim().is_empty() || d.chars().any(char::is_control) || d.ends_with('\\') {
                return Err(err(UnitErrorKind::InvalidDescription(d.clone())));
            }
            d.clone()
        }
        None => format!("veza job {}/{}", spec.env, spec.name),
    };
    let timeout = match spec.timeout {
        Some(d) if d.is_zero() => return Err(err(UnitErrorKind::ZeroTimeout)),
        Some(d) => timespan(d),
        None => "infinity".to_string(),
    };

    let stem = unit_stem(&spec.env, &spec.name);
    let service_name = format!("{stem}.service");
    let timer_name = format!("{stem}.timer");
    let mut ctx = tera::Context::new();
    ctx.insert("marker", &format!("{OWNER_MARKER_PREFIX}{}/{}", spec.env, spec.name));
    ctx.insert("env", &spec.env);
    ctx.insert("name", &spec.name);
    ctx.insert("schedule", &schedule);
    ctx.insert("service_name", &service_name);
    ctx.insert("timer_name", &timer_name);
    ctx.insert("user", &spec.user);
    ctx.insert("exec_arg", &exec_arg);
    ctx.insert("timeout", &timeout);
    ctx.insert("on_calendar", &spec.schedule.on_calendar(spec.tz.as_deref()));
    ctx.insert("persistent", &spec.persistent);
    ctx.insert("randomized_delay", &spec.randomized_delay.filter(|d| !d.is_zero()).map(timespan));
    ctx.insert("accuracy", TIMER_ACCURACY);

    ctx.insert("description", &escape_specifiers(&description));
    let service = render_template("job.service", SERVICE_TEMPLATE, &ctx).map_err(err)?;
    ctx.insert("description", &escape_specifiers(&format!("Timer for {description}")));
    let timer = render_template("job.timer", TIMER_TEMPLATE, &ctx).map_err(err)?;
    Ok(JobUnits {
        service: UnitFile { name: service_name, contents: service },
        timer: UnitFile { name: timer_name, contents: timer },
    })
}

/// The environment file of a job's service: beside the unit file (`%Y` is the unit
/// file's directory, systemd ≥ 249), root-only, written by the apply engine.
pub fn environment_file_name(units: &JobUnits) -> String {
    format!("{}.env", units.service.name.trim_end_matches(".service"))
}

/// Makes the service read its environment from [`environment_file_name`], and records in
/// a comment which variables it sets and the digests of the secrets they use, so a changed
/// value (a rotated secret) changes the unit and the job is installed again.
pub fn with_environment(
    units: &mut JobUnits,
    vars: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) {
    if vars.is_empty() {
        return;
    }
    let names: Vec<&str> = vars.keys().map(String::as_str).collect();
    let mut lines = format!("# Environment: {}\n", names.join(", "));
    for (name, digest) in secrets {
        lines.push_str(&format!("# Secret {name}: sha256 {digest}\n"));
    }
    // A digest of the values as written: an edit of a plain value changes the unit too.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vars.iter().flat_map(|(k, v)| k.bytes().chain([0]).chain(v.bytes()).chain([0])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    lines.push_str(&format!("# Environment digest: {h:016x}\n"));
    lines.push_str(&format!("EnvironmentFile=%Y/{}\n", environment_file_name(units)));
    units.service.contents =
        units.service.contents.replacen("[Service]\n", &format!("[Service]\n{lines}"), 1);
}

/// The command as one single-quoted `ExecStart=` word that systemd turns back into exactly
/// `command`: C escapes for `\`, `'` and control characters (systemd unescapes inside quotes),
/// `%%` for specifiers and `$$` for environment variable expansion.
pub fn exec_arg(command: &str) -> Result<String, UnitErrorKind> {
    if command.trim().is_empty() {
        return Err(UnitErrorKind::InvalidCommand("the command is empty"));
    }
    if command.contains('\0') {
        return Err(UnitErrorKind::InvalidCommand("the command contains a NUL byte"));
    }
    let mut out = String::with_capacity(command.len() + 2);
    out.push('\'');
    for c in command.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            // Everything else, non-ASCII included, is taken literally inside quotes.
            c => out.push(c),
        }
    }
    out.push('\'');
    Ok(out)
}

/// A duration in systemd time-span syntax: `10min`, `1h 30min`, `1500ms`, `8d`.
pub fn timespan(d: Duration) -> String {
    if d.is_zero() {
        return "0".to_string();
    }
    let mut rest = d.as_micros();
    let mut parts = Vec::new();
    for (unit, size) in [
        ("d", 86_400_000_000u128),
        ("h", 3_600_000_000),
        ("min", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
        ("us", 1),
    ] {
        if rest >= size {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if parts.is_empty() {
        // Less than a microsecond: systemd's resolution.
        return "1us".to_string();
    }
    parts.join(" ")
}

fn check_name(what: &'static str, value: &str) -> Result<(), UnitErrorKind> {
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok { Ok(()) } else { Err(UnitErrorKind::InvalidName { what, value: value.to_string() }) }
}

fn escape_specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

fn render_template(
    template: &'static str,
    source: &str,
    ctx: &tera::Context,
) -> Result<String, UnitErrorKind> {
    let failed = |e: tera::Error| UnitErrorKind::Template { template, message: error_chain(&e) };
    let mut tera = tera::Tera::default();
    tera.autoescape_on(Vec::new());
    tera.add_raw_template(template, source).map_err(failed)?;
    tera.render(template, ctx).map_err(failed)
}

impl fmt::Display for UnitFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "# {}\n{}", self.name, self.contents)
    }
}

#[cfg(test)]
mod tests;
