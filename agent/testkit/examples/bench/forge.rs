//! The arithmetic of polling (issue 18, item 2): what 1000 hosts polling one forge cost
//! it, and how long a merged commit waits before a host applies it, for a few poll
//! intervals. The inputs are measured figures of the same run: the forge-side CPU and
//! bytes of one no-change poll and the sync of a new commit.

use serde_json::Value;

use crate::Bench;
use crate::report::fmt_num;

/// Hosts polling one forge in the report's arithmetic.
const HOSTS: f64 = 1000.0;

/// (interval, most jitter) in seconds: today's default and the candidates.
const SCHEDULES: [(f64, f64); 6] =
    [(60.0, 10.0), (30.0, 5.0), (15.0, 3.0), (10.0, 2.0), (8.0, 2.0), (5.0, 1.0)];

/// The markdown section, when the forge figure was measured.
pub(crate) fn poll_arithmetic(b: &Bench) -> Option<String> {
    let cpu = b.figure("forge_cpu_per_poll")?;
    let cpu_ms = cpu.summary().median;
    let get = |k: &str| cpu.extra.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let (requests, up, down) = (
        get("requests_per_poll"),
        get("bytes_to_forge_per_poll"),
        get("bytes_from_forge_per_poll"),
    );
    // A new commit is applied by the first poll after it reaches the forge, and that sync
    // takes as long as a new-commit sync (the process figure: an upper bound for the daemon).
    let sync_ms = b
        .figure("config_change_sync")
        .or_else(|| b.figure("fetch_verify_new"))
        .map_or(0.0, |f| f.summary().median);
    let mut md = format!(
        "\n## Polling one forge from {HOSTS:.0} hosts (arithmetic from this run's figures)\n\n\
         One no-change poll costs the forge {} ms of `git http-backend` CPU (median of the per-poll means), \
         {requests:.1} HTTP requests, {up:.0} bytes in and {down:.0} bytes out. A host polls every \
         *interval* plus a uniform jitter of at most *jitter*, so on average every interval + jitter/2; \
         a commit merged at a random instant waits half of that for the next poll (the median), \
         then one new-commit sync ({} ms here). Forgejo adds its own HTTP routing and authentication \
         per request on top of the git work measured here, so the cores are a lower bound.\n\n\
         | interval + jitter (s) | polls/s at the forge | requests/s | forge CPU (cores, git part) | bytes/s in | bytes/s out | merge → applied, p50 (s) | worst (s) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        fmt_num(cpu_ms, "ms"),
        fmt_num(sync_ms, "ms"),
    );
    for (interval, jitter) in SCHEDULES {
        let period = interval + jitter / 2.0;
        let polls = HOSTS / period;
        md.push_str(&format!(
            "| {interval:.0} + {jitter:.0} | {polls:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} |\n",
            polls * requests,
            polls * cpu_ms / 1000.0,
            polls * up,
            polls * down,
            period / 2.0 + sync_ms / 1000.0,
            interval + jitter + sync_ms / 1000.0,
        ));
    }
    md.push_str(
        "\nThe p50 target of 5 s from merge to applied needs a mean period under ~9 s: \
         8 s + 2 s jitter gives 4.5 s plus the sync (the p50 column reads the wait for the next \
         poll as half a mean period, which slightly understates it when periods vary). \
         `veza-agent sync` (a request on the daemon's socket, which a webhook receiver on the \
         host could send) applies a merge at once whatever the interval.\n",
    );
    Some(md)
}
