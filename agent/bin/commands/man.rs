//! `veza-agent man DIR`: write the man pages — `veza-agent.1` and one
//! `veza-agent-SUBCOMMAND.1` per visible subcommand — into DIR.
//!
//! The pages are generated from the same definitions as `--help` (`clap_mangen`), so
//! they cannot drift from the binary. The main page adds the sections `--help` has no
//! room for: exit status, environment, files and see-also. Files are written with
//! `write_atomic_if_changed` (mode 0644), so rerunning into the same directory is a
//! no-op. The Debian package ships them gzipped under `/usr/share/man/man1`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use veza_fs::write_atomic_if_changed;

/// Arguments of `man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into; created when missing.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Sections appended to the main page.
const MAIN_EXTRA: &[(&str, &[(&str, &str)])] = &[
    (
        "EXIT STATUS",
        &[
            ("0", "Success: valid, applied, in sync, good signature."),
            (
                "1",
                "The input was rejected: invalid manifest, bad or missing signature, refused \
                 revision, rolled-back promotion, failed step, invalid cron expression. \
                 (plan: an error; status: something needs attention.)",
            ),
            (
                "2",
                "Usage or environment error: bad arguments, unreadable files, no daemon \
                 answering. (plan: changes are pending.)",
            ),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            (
                "VEZA_AGENT_CONFIG",
                "Host configuration file used when --config is not given \
                 (default /etc/veza-agent/config.yaml).",
            ),
            ("VEZA_LOG", "Log level on stderr: error, warn, info (default) or debug."),
        ],
    ),
    (
        "FILES",
        &[
            (
                "/etc/veza-agent/config.yaml",
                "Host configuration: remotes, branch, manifest paths, trust root, poll \
                 interval, Incus, edge, systemd and metrics paths.",
            ),
            (
                "/etc/veza-agent/allowed_signers",
                "The trust root: OpenSSH allowed_signers lines of the keys that may sign the \
                 manifests repository (namespace git). Never kept in the repository.",
            ),
            (
                "/var/lib/veza-agent/",
                "State directory: bare mirror (mirror.git), state, history, journal, \
                 artifact cache, lock and the daemon's control socket (control.sock).",
            ),
            ("/lib/systemd/system/veza-agent.service", "The daemon's unit (veza-agent run)."),
        ],
    ),
];

/// Renders every page of `cmd`: `(file name, roff text)`, main page first.
pub fn render(cmd: clap::Command) -> Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    render_tree(&cmd, true, &mut pages)?;
    Ok(pages)
}

fn render_tree(cmd: &clap::Command, main: bool, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("veza-agent manual")
        .source(format!("veza-agent {}", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut page)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut page)?;
    }
    let mut extra = String::new();
    if main {
        for (title, items) in MAIN_EXTRA {
            let _ = writeln!(extra, ".SH \"{title}\"");
            for (tag, text) in *items {
                let _ = writeln!(extra, ".TP\n\\fB{}\\fR\n{}", escape(tag), escape(text));
            }
        }
        let _ = writeln!(extra, ".SH \"SEE ALSO\"");
        let subs: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("\\fBveza-agent-{}\\fR(1)", s.get_name()))
            .collect();
        let _ = writeln!(
            extra,
            "{}, \\fBsystemctl\\fR(1), \\fBssh-keygen\\fR(1) (ALLOWED SIGNERS), \
             /usr/share/doc/veza-agent/runbook.md",
            subs.join(", ")
        );
    } else {
        let _ = writeln!(extra, ".SH \"SEE ALSO\"\n\\fBveza-agent\\fR(1)");
    }
    page.extend_from_slice(extra.as_bytes());
    man.render_version_section(&mut page)?;
    pages.push((man.get_filename(), page));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        render_tree(sub, false, pages)?;
    }
    Ok(())
}

/// Escapes plain text for a roff text line: backslashes, and a leading `.` or `'`.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with(['.', '\'']) { format!("\\&{text}") } else { text }
}

/// Writes the pages into `dir`, returning the paths written.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let mut written = Vec::new();
    for (name, bytes) in render(cmd).context("rendering the man pages")? {
        let path = dir.join(name);
        write_atomic_if_changed(&path, &bytes, 0o644)?;
        written.push(path);
    }
    Ok(written)
}

/// Runs `man`: exit 0 with one written path per line on stdout, 2 on I/O errors.
pub fn run(args: &ManArgs, cmd: clap::Command) -> ExitCode {
    match write_pages(cmd, &args.dir) {
        Ok(paths) => {
            for p in paths {
                outln!("{}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::commands::common::fail(&e, 2),
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_protects_roff_control_characters() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("'quote"), "\\&'quote");
        assert_eq!(escape("a\\b"), "a\\eb");
        assert_eq!(escape("--config"), "\\-\\-config");
    }
}
