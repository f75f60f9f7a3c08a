//! `veza-agent secret encrypt|recipients`: the author's side of secrets, run on a
//! laptop or in CI, without the host.
//!
//! - `encrypt --to KEY... [FILE|-]` reads the value from a file or stdin (never from the
//!   command line, which `ps` shows) and prints armored age text for
//!   `secrets/<env>/<name>.age`. Exit 0, 1 when a recipient is not a public key, 2 when
//!   the input cannot be read.
//! - `recipients FILE` lists whom a secret was encrypted to and whether a given host key
//!   (default: this machine's `/etc/ssh/ssh_host_ed25519_key.pub`, if readable) is among
//!   them. Exit 0 when it is (or no key was available to check), 1 when it is not or the
//!   file is not age, 2 when the file cannot be read.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use veza_secrets::{Ciphertext, MAX_CIPHERTEXT_BYTES, Recipient};

/// Arguments of `secret`.
#[derive(Debug, clap::Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SecretCommand {
    /// Encrypt a value (from FILE or stdin) to one or more recipients; armored age on stdout.
    ///
    /// Recipients: the host's SSH key line (`ssh-ed25519 AAAA…`, from
    /// `/etc/ssh/ssh_host_ed25519_key.pub`) and break-glass keys (`ssh-ed25519 …` or
    /// `age1…`). Exit 0, 1 on a bad recipient, 2 when the input cannot be read.
    Encrypt {
        /// A public key to encrypt to (repeatable).
        #[arg(long = "to", value_name = "RECIPIENT")]
        to: Vec<String>,
        /// A file of public keys, one per line (`#` comments), e.g. a `.pub` file.
        #[arg(long = "to-file", value_name = "FILE")]
        to_file: Vec<PathBuf>,
        /// The value's file; `-` or nothing reads stdin.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// List whom an age file was encrypted to, and whether a host key is among them.
    Recipients {
        /// The age file (`secrets/<env>/<name>.age`).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The public key to look for (default: this machine's host key, if readable).
        #[arg(long, value_name = "PUBKEY_FILE")]
        key: Option<PathBuf>,
    },
}

const HOST_PUBLIC_KEY: &str = "/etc/ssh/ssh_host_ed25519_key.pub";

fn read_limited(path: Option<&PathBuf>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let limit = MAX_CIPHERTEXT_BYTES as u64 + 1;
    match path.filter(|p| p.as_os_str() != "-") {
        Some(p) => std::fs::File::open(p)?.take(limit).read_to_end(&mut bytes)?,
        None => std::io::stdin().lock().take(limit).read_to_end(&mut bytes)?,
    };
    Ok(bytes)
}

/// Runs `secret`.
pub fn run(args: &SecretArgs) -> ExitCode {
    let done = match &args.command {
        SecretCommand::Encrypt { to, to_file, input } => encrypt(to, to_file, input.as_ref()),
        SecretCommand::Recipients { file, key } => recipients(file, key.as_ref()),
    };
    done.unwrap_or_else(|code| code)
}

/// Prints `error: MESSAGE` and gives the exit code that goes with it.
fn error(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// The exit code of a file that cannot be read (2).
fn unreadable(path: &std::path::Path, e: std::io::Error) -> ExitCode {
    error(2, format!("cannot read {}: {e}", path.display()))
}

fn encrypt(
    to: &[String],
    to_file: &[PathBuf],
    input: Option<&PathBuf>,
) -> Result<ExitCode, ExitCode> {
    let mut lines: Vec<String> = to.to_vec();
    for f in to_file {
        let text = std::fs::read_to_string(f).map_err(|e| unreadable(f, e))?;
        lines.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    let recipients: Vec<Recipient> = lines
        .iter()
        .map(|l| Recipient::parse(l))
        .collect::<Result<_, _>>()
        .map_err(|e| error(1, e))?;
    let value = read_limited(input).map_err(|e| error(2, format!("cannot read the value: {e}")))?;
    if value.len() > MAX_CIPHERTEXT_BYTES {
        return Err(error(2, format!("the value is larger than {MAX_CIPHERTEXT_BYTES} bytes")));
    }
    let armored = veza_secrets::encrypt(&value, &recipients).map_err(|e| error(1, e))?;
    out!("{armored}");
    for r in &recipients {
        eprintln!("encrypted to {}", r.describe());
    }
    Ok(ExitCode::SUCCESS)
}

fn recipients(file: &PathBuf, key: Option<&PathBuf>) -> Result<ExitCode, ExitCode> {
    let bytes = read_limited(Some(file)).map_err(|e| unreadable(file, e))?;
    let ct = Ciphertext::parse(&bytes).map_err(|e| error(1, format!("{}: {e}", file.display())))?;
    for s in ct.stanzas() {
        outln!("{s}");
    }
    let key_path = key.cloned().unwrap_or_else(|| PathBuf::from(HOST_PUBLIC_KEY));
    let line = match std::fs::read_to_string(&key_path) {
        Ok(l) => l,
        Err(e) if key.is_none() => {
            eprintln!("note: no host key to check against ({HOST_PUBLIC_KEY}: {e})");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(unreadable(&key_path, e)),
    };
    let recipient =
        Recipient::parse(&line).map_err(|e| error(2, format!("{}: {e}", key_path.display())))?;
    let Some(tag) = veza_secrets::tag_of(&recipient) else {
        outln!(
            "{} cannot be matched: age headers do not name X25519 recipients",
            recipient.describe()
        );
        return Ok(ExitCode::SUCCESS);
    };
    if ct.stanzas().iter().any(|s| s.tag.as_deref() == Some(tag.as_str())) {
        outln!("{} ({}) is a recipient", recipient.describe(), key_path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        outln!("{} ({}) is NOT a recipient", recipient.describe(), key_path.display());
        Ok(ExitCode::FAILURE)
    }
}
