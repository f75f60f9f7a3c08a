//! `veza-agent validate PATH...`: parse and validate manifests together.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Arguments of `validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Manifest files, validated together as the manifests of one host.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Runs `validate`: exit 0 when all files are valid, 1 otherwise.
pub fn run(args: &ValidateArgs) -> ExitCode {
    let mut files = Vec::new();
    let mut failed = false;
    for path in &args.paths {
        let name = path.display().to_string();
        match read_capped(path) {
            Ok(bytes) => files.push((name, bytes)),
            Err(message) => {
                eprintln!("{name}:1:1: error: {message}");
                failed = true;
            }
        }
    }
    match veza_model::load(&files) {
        Ok(parsed) if !failed => {
            let set: Vec<&veza_model::Manifest> = parsed.iter().map(|(_, p)| &p.manifest).collect();
            let uses = veza_model::capabilities::used_by_set(&set);
            for ((name, p), uses) in parsed.iter().zip(&uses) {
                let m = &p.manifest;
                outln!(
                    "{name}: ok (environment `{}` on host `{}`: {} instances, {} apps, {} jobs)",
                    m.metadata.name,
                    m.metadata.host,
                    m.incus.instances.len(),
                    m.apps.len(),
                    m.jobs.len()
                );
                // Not an error: the host's trust policy decides (`capabilities:`).
                if !uses.is_empty() {
                    outln!(
                        "{name}: uses capabilities: {}",
                        veza_model::capabilities::summary(uses)
                    );
                }
            }
            let problems = check_secrets(&parsed);
            for p in &problems {
                eprintln!("{p}");
            }
            if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Ok(_) => ExitCode::FAILURE,
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Every `{secret:NAME}` must name an age file `secrets/<env>/NAME.age` beside its
/// manifest, well-formed; nothing is decrypted (an author has no host key). Returns one
/// `PATH:1:1: error: …` line per problem.
fn check_secrets(parsed: &[(String, veza_model::parse::Parsed)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, p) in parsed {
        let env = &p.manifest.metadata.name;
        for (secret, used_by) in veza_model::template::manifest_secrets(&p.manifest) {
            let rel = veza_model::template::secret_path(name, env, &secret);
            let path = Path::new(&rel);
            let read = std::fs::File::open(path).and_then(|f| {
                let mut bytes = Vec::new();
                f.take(veza_secrets::MAX_CIPHERTEXT_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map(|_| bytes)
            });
            let problem = match read {
                Err(e) => Some(format!(
                    "secret `{secret}` ({used_by}) has no file {rel}: {e} (hint: `veza-agent secret encrypt --to KEY > {rel}`)"
                )),
                Ok(bytes) => veza_secrets::Ciphertext::parse(&bytes)
                    .err()
                    .map(|e| format!("secret `{secret}` ({used_by}), {}: {e}", path.display())),
            };
            if let Some(problem) = problem {
                problems.push(format!("{name}:1:1: error: {problem}"));
            }
        }
    }
    problems
}

/// Reads a file, refusing to load more than the manifest size cap (plus one byte, so
/// the parser reports the oversize with its limit).
fn read_capped(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read manifest: {e}"))?;
    let mut bytes = Vec::new();
    let limit = veza_model::parse::MAX_MANIFEST_BYTES as u64 + 1;
    file.take(limit).read_to_end(&mut bytes).map_err(|e| format!("cannot read manifest: {e}"))?;
    Ok(bytes)
}
