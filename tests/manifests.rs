//! Manifests: the shipped ones validate, every file of the invalid corpus fails with the
//! located error its first line announces, the schema matches the model, and the parser
//! survives arbitrary bytes.

use std::path::PathBuf;
use std::process::Output;

use veza_host::process::Cmd;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn agent(args: &[&str]) -> Output {
    let out = Cmd::new(env!("CARGO_BIN_EXE_veza-agent"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run veza-agent");
    std::process::Output { status: out.status, stdout: out.stdout, stderr: out.stderr }
}

#[test]
fn shipped_manifests_validate_together() {
    let out = agent(&["validate", "manifests/prod.yaml", "manifests/staging.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("manifests/prod.yaml: ok (environment `prod` on host `r720`"),
        "{stdout}"
    );
    assert!(stdout.contains("manifests/staging.yaml: ok (environment `staging`"), "{stdout}");
    // The capabilities each one uses, for the host's trust policy (packaging/README.md §2):
    // prod runs its restore drill on the host, staging asks for nothing.
    assert!(
        stdout.contains("manifests/prod.yaml: uses capabilities: host-jobs (jobs.dr-drill.on)\n"),
        "{stdout}"
    );
    assert!(!stdout.contains("manifests/staging.yaml: uses capabilities"), "{stdout}");
}

/// `validate` checks each referenced secret beside its manifest without decrypting it
/// (authors have no host key): a missing file and a file that is not age are errors that
/// name the secret and the variable using it; the shipped example secrets open with the
/// documented example host key.
#[test]
fn validate_checks_the_secrets_the_manifests_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("manifests");
    std::fs::create_dir_all(dir.join("secrets/prod")).unwrap();
    for f in ["prod.yaml", "staging.yaml"] {
        std::fs::copy(repo_root().join("manifests").join(f), dir.join(f)).unwrap();
    }
    let shipped = repo_root().join("manifests/secrets");
    let staging = dir.join("secrets/staging");
    std::fs::create_dir_all(&staging).unwrap();
    for entry in std::fs::read_dir(shipped.join("staging")).unwrap().flatten() {
        std::fs::copy(entry.path(), staging.join(entry.file_name())).unwrap();
    }
    for name in
        ["redis_password", "rabbitmq_password", "minio_secret_key", "pgbackrest_cipher_pass"]
    {
        let from = shipped.join(format!("prod/{name}.age"));
        std::fs::copy(from, dir.join(format!("secrets/prod/{name}.age"))).unwrap();
    }
    // postgres_password is missing; the cipher pass is replaced by plain text.
    std::fs::write(dir.join("secrets/prod/pgbackrest_cipher_pass.age"), "hunter2\n").unwrap();
    let prod = dir.join("prod.yaml").display().to_string();
    let staging_yaml = dir.join("staging.yaml").display().to_string();
    let out = agent(&["validate", &prod, &staging_yaml]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expect in [
        "secret `postgres_password` (apps.backend.env.DATABASE_URL) has no file",
        "secrets/prod/postgres_password.age",
        "secret `pgbackrest_cipher_pass` (jobs.pgbackrest-diff.env.PGBACKREST_REPO1_CIPHER_PASS)",
        "not an age-encrypted file",
    ] {
        assert!(stderr.contains(expect), "{expect:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "only prod's two secrets are wrong:\n{stderr}");

    // The shipped ciphertexts are for the example host key.
    let key = repo_root().join("agent/secrets/testdata/host_ed25519.pub");
    let secret = repo_root().join("manifests/secrets/prod/postgres_password.age");
    let out = agent(&[
        "secret",
        "recipients",
        &secret.display().to_string(),
        "--key",
        &key.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("is a recipient"));
}

#[test]
fn example_manifest_validates_alone() {
    let out = agent(&["validate", "manifests/examples/minimal.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn staging_alone_names_what_prod_declares() {
    // The shared edge instance and profiles live in prod.yaml: staging alone is incomplete,
    // and the error says which reference is missing.
    let out = agent(&["validate", "manifests/staging.yaml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("unknown profile `veza-data`"), "{stderr}");
    assert!(stderr.contains("unknown instance `veza-haproxy`"), "{stderr}");
}

/// Each corpus file starts with `# expect: [LINE:COL: ]TEXT`.
#[test]
fn invalid_corpus_fails_with_located_errors() {
    let dir = repo_root().join("manifests/examples/invalid");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus shrank: {}", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", file.display()));
        let rel = file.strip_prefix(repo_root()).unwrap().display().to_string();
        let out = agent(&["validate", &rel]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let (prefix, message) = match split_location(expect) {
            Some((loc, message)) => (format!("{rel}:{loc}: error: "), message),
            None => (format!("{rel}:"), expect),
        };
        let wanted = format!("{prefix}…{message}…");
        let ok = out.status.code() == Some(1)
            && stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(message));
        if !ok {
            failures.push(format!(
                "{rel}: exit {:?}, wanted a line containing\n    {wanted}\n  got:\n    {}",
                out.status.code(),
                stderr.trim().replace('\n', "\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn split_location(expect: &str) -> Option<(&str, &str)> {
    let (loc, rest) = expect.split_once(": ")?;
    let (l, c) = loc.split_once(':')?;
    (l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok()).then_some((loc, rest))
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(agent(&["validate"]).status.code(), Some(2));
    assert_eq!(agent(&["validate", "--bogus", "x"]).status.code(), Some(2));
}

#[test]
fn unreadable_file_is_reported_with_its_path() {
    let out = agent(&["validate", "manifests/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("manifests/does-not-exist.yaml:1:1: error: cannot read manifest"),
        "{stderr}"
    );
}

#[test]
fn oversized_manifest_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut text = String::from("apiVersion: veza-agent/v1\n");
    while text.len() <= veza_model::parse::MAX_MANIFEST_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, text).unwrap();
    let out = agent(&["validate", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("more than the limit"));
}

/// `schemas/manifest.schema.json` is generated from the model; regenerate with
/// `cargo run -- schema > schemas/manifest.schema.json`.
#[test]
fn committed_schema_matches_the_model() {
    let path = repo_root().join("schemas/manifest.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = veza_model::json_schema();
    assert!(
        committed == generated,
        "{} is stale; run `cargo run -- schema > schemas/manifest.schema.json`",
        path.display()
    );
    let v: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(
        v["additionalProperties"],
        serde_json::Value::Bool(false),
        "unknown keys must be refused"
    );
}

/// Bounded fuzzing: mutated manifests and random bytes never panic the parser.
#[test]
fn parser_survives_arbitrary_bytes() {
    let seed_text = std::fs::read(repo_root().join("manifests/prod.yaml")).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for case in 0..3000 {
        let mut bytes = if case % 3 == 0 {
            (0..(next() % 512)).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            seed_text.clone()
        };
        let flips = 1 + next() % 8;
        for _ in 0..flips {
            if bytes.is_empty() {
                break;
            }
            let i = (next() as usize) % bytes.len();
            match next() % 4 {
                0 => bytes[i] = next() as u8,
                1 => {
                    bytes.remove(i);
                }
                2 => bytes.insert(i, b"{}[]:&*-#'\"\n"[(next() % 12) as usize]),
                _ => bytes.truncate(i),
            }
        }
        let _ = veza_model::load(&[("fuzz.yaml".to_string(), bytes)]);
    }
}
