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
    match &args.command {
        SecretCommand::Encrypt { to, to_file, input } => encrypt(to, to_file, input.as_ref()),
        SecretCommand::Recipients { file, key } => recipients(file, key.as_ref()),
    }
}

fn encrypt(to: &[String], to_file: &[PathBuf], input: Option<&PathBuf>) -> ExitCode {
    let mut lines: Vec<String> = to.to_vec();
    for f in to_file {
        match std::fs::read_to_string(f) {
            Ok(text) => lines.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            ),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", f.display());
                return ExitCode::from(2);
            }
        }
    }
    let mut recipients = Vec::new();
    for line in &lines {
        match Recipient::parse(line) {
            Ok(r) => recipients.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let value = match read_limited(input) {
        Ok(v) if v.len() > MAX_CIPHERTEXT_BYTES => {
            eprintln!("error: the value is larger than {MAX_CIPHERTEXT_BYTES} bytes");
            return ExitCode::from(2);
        }
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: cannot read the value: {e}");
            return ExitCode::from(2);
        }
    };
    match veza_secrets::encrypt(&value, &recipients) {
        Ok(armored) => {
            out!("{armored}");
            for r in &recipients {
                eprintln!("encrypted to {}", r.describe());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn recipients(file: &PathBuf, key: Option<&PathBuf>) -> ExitCode {
    let bytes = match read_limited(Some(file)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let ct = match Ciphertext::parse(&bytes) {
        Ok(ct) => ct,
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    };
    for s in ct.stanzas() {
        outln!("{s}");
    }
    let key_path = key.cloned().unwrap_or_else(|| PathBuf::from(HOST_PUBLIC_KEY));
    let line = match std::fs::read_to_string(&key_path) {
        Ok(l) => l,
        Err(e) if key.is_none() => {
            eprintln!("note: no host key to check against ({HOST_PUBLIC_KEY}: {e})");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", key_path.display());
            return ExitCode::from(2);
        }
    };
    let recipient = match Recipient::parse(&line) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}: {e}", key_path.display());
            return ExitCode::from(2);
        }
    };
    let Some(tag) = veza_secrets::tag_of(&recipient) else {
        outln!(
            "{} cannot be matched: age headers do not name X25519 recipients",
            recipient.describe()
        );
        return ExitCode::SUCCESS;
    };
    if ct.stanzas().iter().any(|s| s.tag.as_deref() == Some(tag.as_str())) {
        outln!("{} ({}) is a recipient", recipient.describe(), key_path.display());
        ExitCode::SUCCESS
    } else {
        outln!("{} ({}) is NOT a recipient", recipient.describe(), key_path.display());
        ExitCode::FAILURE
    }
}
