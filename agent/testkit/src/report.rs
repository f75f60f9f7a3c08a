//! The fault-injection report, `target/faults-report.md`: one row a case of
//! `tests/faults/` (the fault injected, what the operator saw, the outcome, the time),
//! written when the case ends, pass or fail, and the report regenerated from every row.

use std::path::{Path, PathBuf};
use std::time::Instant;

/// One case of the report: what was injected and what the operator saw. Dropping it
/// writes its row (`pass`, or `FAIL` when the test is panicking).
pub struct Case {
    name: String,
    fault: String,
    seen: Vec<String>,
    started: Instant,
}

impl Case {
    /// A case named `name` (the report's first column) injecting `fault`.
    pub fn new(name: &str, fault: &str) -> Case {
        Case { name: name.into(), fault: fault.into(), seen: Vec::new(), started: Instant::now() }
    }

    /// Records one observation (shortened for the table).
    pub fn saw(&mut self, what: impl AsRef<str>) {
        let one_line = what.as_ref().split_whitespace().collect::<Vec<_>>().join(" ");
        let short: String = one_line.chars().take(170).collect();
        println!("[{}] {short}", self.name);
        self.seen.push(if short.len() < one_line.len() { format!("{short}…") } else { short });
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let outcome = if std::thread::panicking() { "**FAIL**" } else { "pass" };
        let cell = |s: &str| s.replace('|', "\\|");
        let row = format!(
            "| {} | {} | {} | {} | {:.0} s |\n",
            cell(&self.name),
            cell(&self.fault),
            cell(&self.seen.join("; ")),
            outcome,
            self.started.elapsed().as_secs_f64()
        );
        let dir = target_dir().join("faults");
        let slug: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let _ = std::fs::create_dir_all(&dir);
        let _ = write_replace(&dir.join(format!("{slug}.md")), row.as_bytes());
        let report = render_report(&dir);
        let _ = write_replace(&target_dir().join("faults-report.md"), report.as_bytes());
        println!("\n{report}");
    }
}

/// `target/` of this build (the test executable is `target/<profile>/deps/<name>`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")))
}

fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The report from every row file: latest run of each case, sorted by name.
fn render_report(dir: &Path) -> String {
    let mut rows: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "md"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    rows.sort();
    let failed = rows.iter().filter(|r| r.contains("**FAIL**")).count();
    format!(
        "# Fault-injection report\n\n`cargo test --test integration faults::` on the real test host \
         (tests/faults/). {} cases: {} pass, {} fail.\n\n\
         | case | fault injected | what the operator saw | outcome | time |\n|---|---|---|---|---|\n{}",
        rows.len(),
        rows.len() - failed,
        failed,
        rows.concat()
    )
}
