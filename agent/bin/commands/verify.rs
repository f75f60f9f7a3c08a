//! `veza-agent verify --repo REPO --rev REV --allowed-signers FILE [--after COMMIT]`:
//! check one commit's (or annotated tag's) SSH signature against an allowed_signers
//! trust root, in-process, exactly as the agent does before reading any manifest.
//!
//! REPO is a local repository (bare or with a worktree), opened in place, or a URL
//! (`http://`, `https://`, `file://`, `ssh://`) fetched into a temporary bare mirror that
//! is deleted afterwards. With `--after`, REV's commit must be COMMIT (a full commit id,
//! looked up as an object, never as a name) or a descendant of it (refuses rollbacks and
//! force-pushes that drop COMMIT).
//!
//! Exit codes: 0 good signature (one line on stdout containing `good signature`),
//! 1 rejected (reason on stderr), 2 usage or I/O error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use veza_source::accept::descends_from;
use veza_source::fetch::{Mirror, ObjectId, ObjectType};
use veza_source::object::{committer_time, parse_tag};
use veza_source::{AllowedSigners, ObjectKind, Refusal, verify_object};

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Repository: a local path (bare or not) or a URL to fetch (http(s)://, file://, ssh://).
    #[arg(long, value_name = "REPO")]
    pub repo: String,
    /// Commit id (full or abbreviated), branch, tag or full ref name. A tag name checks the
    /// tag's own signature.
    #[arg(long, value_name = "REV")]
    pub rev: String,
    /// OpenSSH allowed_signers file: the keys trusted to sign (namespace `git`).
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: PathBuf,
    /// Refuse unless REV's commit is COMMIT or a descendant of it (rollback protection).
    /// COMMIT is a full 40-hex commit id, looked up as an object only (never a name).
    #[arg(long, value_name = "COMMIT")]
    pub after: Option<String>,
    /// Time against which `valid-after`/`valid-before` are checked: `now`, `committer`
    /// (the object's own committer/tagger date, as `git verify-commit` does) or Unix seconds.
    #[arg(long, value_name = "WHEN", default_value = "now")]
    pub verify_time: String,
    /// Give up fetching a URL after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Why `verify` did not succeed.
enum Failure {
    /// The input was examined and refused (exit 1).
    Rejected(String),
    /// Usage, configuration or I/O problem (exit 2).
    Error(String),
}

/// Runs `verify`: exit 0 on a good signature, 1 on rejection, 2 on usage or I/O errors.
pub fn run(args: VerifyArgs) -> ExitCode {
    match verify(&args) {
        Ok(line) => {
            outln!("{line}");
            ExitCode::SUCCESS
        }
        Err(Failure::Rejected(why)) => {
            eprintln!("rejected: {why}");
            ExitCode::from(1)
        }
        Err(Failure::Error(why)) => {
            eprintln!("error: {why}");
            ExitCode::from(2)
        }
    }
}

fn is_url(repo: &str) -> bool {
    repo.contains("://")
}

/// A temporary bare mirror directory, removed on drop.
struct TempMirror(PathBuf);

impl TempMirror {
    fn new() -> Result<TempMirror, Failure> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("veza-verify-{}-{nanos}.git", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| {
            Failure::Error(format!("cannot create temporary mirror {}: {e}", dir.display()))
        })?;
        Ok(TempMirror(dir))
    }
}

impl Drop for TempMirror {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn verify(args: &VerifyArgs) -> Result<String, Failure> {
    let signers = AllowedSigners::from_file(&args.allowed_signers)
        .map_err(|e| Failure::Error(format!("{} ({e})", args.allowed_signers.display())))?;
    if signers.is_empty() {
        return Err(Failure::Error(format!(
            "{}: no keys; every signature would be rejected",
            args.allowed_signers.display()
        )));
    }
    let _temp;
    let mirror = if is_url(&args.repo) {
        let temp = TempMirror::new()?;
        let mut mirror =
            Mirror::open_or_init(&temp.0).map_err(|e| Failure::Error(e.to_string()))?;
        let refspecs = [
            "+refs/heads/*:refs/remotes/origin/*".to_string(),
            "+refs/tags/*:refs/tags/*".to_string(),
        ];
        mirror
            .fetch_refspecs(&args.repo, &refspecs, Duration::from_secs(args.timeout.max(1)))
            .map_err(|e| Failure::Error(e.to_string()))?;
        _temp = temp;
        mirror
    } else {
        Mirror::open(Path::new(&args.repo)).map_err(|e| Failure::Error(e.to_string()))?
    };

    let id = mirror.resolve(&args.rev).map_err(|e| Failure::Error(e.to_string()))?;
    let (kind, raw) = mirror.raw_object(id).map_err(|e| Failure::Error(e.to_string()))?;
    let object_kind = match kind {
        ObjectType::Commit => ObjectKind::Commit,
        ObjectType::Tag => ObjectKind::Tag,
        other => {
            return Err(Failure::Error(format!(
                "`{}` is a {other}, not a commit or an annotated tag",
                args.rev
            )));
        }
    };
    let commit = mirror.peel_to_commit(id).map_err(|e| Failure::Error(e.to_string()))?;

    if let Some(after) = &args.after {
        check_after(&mirror, commit, after)?;
    }

    let verify_time = match args.verify_time.as_str() {
        "now" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default(),
        "committer" => {
            let t = match object_kind {
                ObjectKind::Commit => committer_time(&raw),
                ObjectKind::Tag => parse_tag(&raw).ok().and_then(|t| t.tagger_time),
            };
            t.ok_or_else(|| Failure::Rejected(format!("{object_kind} {id} has no readable date")))?
        }
        n => n.parse().map_err(|_| {
            Failure::Error(format!(
                "--verify-time must be `now`, `committer` or Unix seconds, not `{n}`"
            ))
        })?,
    };

    let verdict = verify_object(object_kind, &raw, &signers, verify_time)
        .map_err(|e| Failure::Rejected(format!("{object_kind} {id}: {e}")))?;

    let what = match object_kind {
        ObjectKind::Commit => format!("commit {id}"),
        ObjectKind::Tag => {
            let name = parse_tag(&raw).map(|t| t.name).unwrap_or_default();
            format!("tag {name} ({id}) on commit {commit}")
        }
    };
    let after = args.after.as_ref().map(|a| format!("; descends from {a}")).unwrap_or_default();
    Ok(format!(
        "good signature: {what} signed by {} ({}){after}",
        verdict.principal, verdict.fingerprint
    ))
}

fn check_after(mirror: &Mirror, commit: ObjectId, after: &str) -> Result<(), Failure> {
    // By object id only, as the agent decides (`veza_source::accept::descends_from`): a
    // branch or tag (even one named like an id) is whatever the forge says it is. A full id
    // that the repository does not have cannot be an ancestor: that is a rejection (history
    // rewritten), not a usage error.
    if after.len() != 40 || !after.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::Error(format!(
            "--after: `{after}` is not a full 40-hex commit id (give the full id of the last trusted \
             commit, e.g. from `veza-agent status`; names and abbreviations are not accepted)"
        )));
    }
    match descends_from(mirror, commit, after) {
        Ok(_) => Ok(()),
        Err((Refusal::Rollback, why)) => Err(Failure::Rejected(format!(
            "commit {commit} is not a descendant of --after {after}: refusing a rollback or \
             force-push ({why})"
        ))),
        Err((_, why)) => Err(Failure::Rejected(why)),
    }
}
