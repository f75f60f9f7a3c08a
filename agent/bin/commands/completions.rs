//! `veza-agent completions SHELL`: print a shell completion script on stdout.
//!
//! The Debian package installs the bash and zsh scripts (see `packaging/build-deb`);
//! for other shells, or a hand-built binary, redirect the output into the shell's
//! completion directory, e.g.
//! `veza-agent completions fish > ~/.config/fish/completions/veza-agent.fish`.

use std::io::Write;
use std::process::ExitCode;

use clap_complete::Shell;

/// Arguments of `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: Shell,
}

/// Renders the completion script of `cmd` for `shell`.
pub fn render(shell: Shell, mut cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "veza-agent", &mut out);
    out
}

/// Runs `completions`: exit 0 with the script on stdout, 2 when stdout is not writable.
pub fn run(args: &CompletionsArgs, cmd: clap::Command) -> ExitCode {
    let script = render(args.shell, cmd);
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the completion script: {e}");
            ExitCode::from(2)
        }
    }
}
