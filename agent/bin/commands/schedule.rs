//! `veza-agent schedule [--next N] [--from RFC3339] 'CRON'`: show how a cron expression
//! becomes systemd `OnCalendar=` lines, and when it fires next.
//!
//! Output (stdout): each `OnCalendar=<value>` line, then `next: <RFC3339 UTC>` lines.
//! Exit 0 on success, 1 when the expression is rejected (the reason goes to stderr),
//! 2 on usage errors (clap's own, including an unparsable `--from`).

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};

/// Arguments of `schedule`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// How many next run times to print.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub next: u16,
    /// Compute the run times strictly after this instant (RFC 3339, e.g.
    /// `2026-11-29T12:00:00Z`) instead of now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_from)]
    pub from: Option<DateTime<Utc>>,
    /// Classic 5-field cron expression (`minute hour day-of-month month day-of-week`, quoted)
    /// or a macro such as `@daily`. Times are read as UTC.
    #[arg(value_name = "CRON")]
    pub cron: String,
}

/// Runs `schedule`: exit 0 with the lines printed, or 1 with the reason on stderr.
pub fn run(args: ScheduleArgs) -> ExitCode {
    let schedule = match veza_model::schedule::parse(&args.cron) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: invalid schedule `{}`: {e}", args.cron.trim());
            return ExitCode::FAILURE;
        }
    };
    let from = args.from.unwrap_or_else(Utc::now);
    let mut out = String::new();
    for line in schedule.on_calendar(None) {
        out.push_str(&format!("OnCalendar={line}\n"));
    }
    for at in schedule.next_after(from, usize::from(args.next)) {
        out.push_str(&format!("next: {}\n", at.to_rfc3339_opts(SecondsFormat::Secs, true)));
    }
    out!("{out}");
    ExitCode::SUCCESS
}

fn parse_from(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 instant such as `2026-11-29T12:00:00Z`: {e}"))
}
