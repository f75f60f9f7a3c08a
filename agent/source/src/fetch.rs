//! Fetching the manifests repository into a local bare mirror with gix, and reading
//! what the verifier needs from it without a worktree.
//!
//! * The mirror is a bare repository under a directory the caller owns. Each fetch uses an
//!   anonymous remote with the explicit refspec `+refs/heads/<branch>:refs/remotes/origin/<branch>`
//!   and, only when approvals are needed, a second one for the approval tags of the tip,
//!   `+refs/tags/gitops/approve/<tip>/*` (forced: the mirror is a cache; rollback
//!   protection is the caller's ancestry check against the last applied commit, looked up
//!   by object id with [`Mirror::commit_by_id`], never through the mirror's refs).
//! * What a forge may send is capped: the refs it advertises (`max_refs`) and the bytes of
//!   the pack (`max_pack_bytes`, counted as they arrive; the fetch is interrupted at the cap).
//! * PR heads (`refs/pull/<N>/head`, for previews) are fetched by a separate call into
//!   their own namespace, [`PULL_HEADS`] (`pulls.rs`): never confusable with the branch,
//!   whose tip is only ever read from [`tracking_ref`].
//! * Several remotes are tried in priority order; the first that succeeds wins and the
//!   failures of the ones before it are returned alongside.
//! * Every fetch is bounded: it runs on a worker thread, and a watchdog raises gix's
//!   interrupt flag and gives up when the timeout passes; the HTTP client's connect and
//!   request timeouts are set a little past the same bound so a stalled server also ends
//!   the worker.
//! * HTTP(S) goes through gix's pure-Rust transport (reqwest over hyper and rustls with
//!   `ring`, `tls.rs`): no libcurl and its TLS libraries mapped into the daemon.
//! * Reads are bounded too: file sizes are checked from the object header before a blob
//!   is loaded, tree listings and ancestry walks have caps.
//!
//! The mirror's configuration is isolated from the host's global/system git config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use gix::ObjectId;
/// Kind of a git object (commit, tag, tree, blob).
pub use gix::object::Kind as ObjectType;

use crate::error::{FetchError, RemoteFailure};

mod probe;
mod pulls;
mod read;
mod tls;
mod transfer;

pub use probe::{Advertised, Forge, ls_refs_request, parse_ls_refs};
pub use pulls::{PULL_HEADS, PullHead, PullHeads, pull_number};

use transfer::fetch_blocking;
pub use transfer::is_credentials_failure;

/// The local ref the fetched branch is stored under.
pub fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Where approval tags live: `refs/tags/gitops/approve/<commit>/<name>`. Only the tags of
/// the tip being verified are fetched and read.
pub const APPROVAL_TAGS: &str = "refs/tags/gitops/approve/";

/// The ref prefix of the approval tags of `commit`.
pub fn approval_tags_of(commit: ObjectId) -> String {
    format!("{APPROVAL_TAGS}{commit}/")
}

/// Default cap on the pack one fetch may receive (`source.max_pack_bytes`): 512 MiB.
pub const DEFAULT_MAX_PACK_BYTES: u64 = 512 * 1024 * 1024;
/// Default cap on the refs a remote may advertise to one fetch (`source.max_refs`).
pub const DEFAULT_MAX_REFS: usize = 10_000;

/// How long to wait for the worker after raising the interrupt flag.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// HTTP credentials for a private remote (a Forgejo user and access token). Given to
/// the transport only when the server asks (a `401`), never put in a URL, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Access token (password).
    pub token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Branch name without `refs/heads/` (e.g. `main`).
    pub branch: String,
    /// Also fetch the approval tags of the tip ([`APPROVAL_TAGS`]`<tip>/*`), for a trust policy.
    pub approval_tags: bool,
    /// Refuse a remote that advertises more refs than this (`source.max_refs`).
    pub max_refs: usize,
    /// Interrupt a fetch whose pack grows beyond this many bytes (`source.max_pack_bytes`).
    pub max_pack_bytes: u64,
    /// Upper bound for one remote's fetch.
    pub timeout: Duration,
    /// Answer to an HTTP authentication request. Without it a remote that asks for
    /// credentials fails at once: the agent never prompts and never runs git's
    /// credential helpers.
    pub credentials: Option<Credentials>,
    /// PEM CA bundle for HTTPS remotes instead of the system's (`http.sslCAInfo`).
    pub ca_file: Option<PathBuf>,
}

impl FetchOptions {
    /// The branch alone with the given timeout and the default caps, no credentials, the
    /// system's CAs.
    pub fn new(branch: impl Into<String>, timeout: Duration) -> FetchOptions {
        FetchOptions {
            branch: branch.into(),
            approval_tags: false,
            max_refs: DEFAULT_MAX_REFS,
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
            timeout,
            credentials: None,
            ca_file: None,
        }
    }
}

impl FetchOptions {
    /// The parts the transport needs.
    fn transfer(&self) -> Transfer {
        Transfer {
            timeout: self.timeout,
            credentials: self.credentials.clone(),
            ca_file: self.ca_file.clone(),
            max_refs: self.max_refs,
            max_pack_bytes: self.max_pack_bytes,
        }
    }
}

/// How one remote is fetched: the parts of [`FetchOptions`] the transport needs.
#[derive(Debug, Clone)]
struct Transfer {
    timeout: Duration,
    credentials: Option<Credentials>,
    ca_file: Option<PathBuf>,
    max_refs: usize,
    max_pack_bytes: u64,
}

/// Result of a successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The remote that answered.
    pub url: String,
    /// The branch tip now in the mirror.
    pub tip: ObjectId,
    /// Whether a pack with new objects was received.
    pub received_pack: bool,
    /// Whether one `ls-refs` showed the mirror already held what the remote advertises,
    /// so no fetch ran ([`Mirror::poll`]).
    pub probed: bool,
    /// Remotes tried before `url` that failed.
    pub failures: Vec<RemoteFailure>,
}

/// Kind of a tree entry, for listings and diffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// Regular file.
    Blob,
    /// Executable file.
    Executable,
    /// Symbolic link.
    Symlink,
    /// Submodule commit.
    Submodule,
}

/// One file of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileEntry {
    /// Its kind.
    pub kind: FileKind,
    /// Its blob (or submodule commit) id.
    pub id: ObjectId,
}

/// An error and its sources, `: `-joined, without repeating a message its source already says.
fn why(e: impl std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The largest object the mirror inflates, in bytes. gix trusts a repository its own
/// user owns and sets no limit, but a pack is the forge's (or a PR author's) data: a
/// zero-filled blob of 3 GiB compresses to 3 MiB, well under `source.max_pack_bytes`.
/// Nothing the agent reads is near this (a manifest is capped at 1 MiB).
pub const MAX_OBJECT_BYTES: u64 = 64 << 20;

/// The mirror's repository options: isolated from the host's git configuration, and no
/// object inflated past [`MAX_OBJECT_BYTES`] (while a pack is indexed, and when read).
fn open_options() -> gix::open::Options {
    gix::open::Options::isolated()
        .config_overrides([format!("gitoxide.objects.allocLimit={MAX_OBJECT_BYTES}")])
}

/// A git repository opened for reading: the agent's bare mirror or any local repository.
pub struct Mirror {
    dir: PathBuf,
    repo: gix::Repository,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mirror({})", self.dir.display())
    }
}

impl Mirror {
    /// Opens the bare mirror at `dir`, creating it (and parents) if it does not exist yet.
    pub fn open_or_init(dir: &Path) -> Result<Mirror, FetchError> {
        let open_err = |reason: String| FetchError::Open { dir: dir.to_path_buf(), reason };
        if !dir.join("HEAD").exists() {
            // Root-only, the parents it creates too (the state directory, when `plan` or
            // `verify` runs before any sync made it): what is recorded beside the mirror
            // may quote the forge and the apps.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)
            .map_err(|e| open_err(e.to_string()))?;
            gix::init_bare(dir).map_err(|e| open_err(format!("init: {}", why(e))))?;
        }
        Self::open(dir)
    }

    /// Opens an existing repository (bare, or a worktree's `.git`), with isolated config.
    pub fn open(dir: &Path) -> Result<Mirror, FetchError> {
        let repo = gix::open_opts(dir, open_options())
            .map_err(|e| FetchError::Open { dir: dir.to_path_buf(), reason: why(e) })?;
        Ok(Mirror { dir: dir.to_path_buf(), repo })
    }

    /// The repository directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fetches `options.branch` (and, when asked, the tip's approval tags) from the first
    /// of `remotes` that works.
    pub fn fetch(
        &mut self,
        remotes: &[String],
        options: &FetchOptions,
    ) -> Result<Fetched, FetchError> {
        if remotes.is_empty() {
            return Err(FetchError::NoRemotes);
        }
        let refspecs =
            vec![format!("+refs/heads/{}:{}", options.branch, tracking_ref(&options.branch))];
        let mut failures = Vec::new();
        for url in remotes {
            let branch_missing = || RemoteFailure {
                url: url.clone(),
                reason: FetchError::BranchMissing {
                    url: url.clone(),
                    branch: options.branch.clone(),
                }
                .to_string(),
            };
            let transfer = options.transfer();
            match self.fetch_one(url, &refspecs, transfer.clone()) {
                Ok(outcome) if !outcome.local_refs.contains(&tracking_ref(&options.branch)) => {
                    failures.push(branch_missing());
                }
                Ok(outcome) => {
                    let tip = self.ref_target(&tracking_ref(&options.branch))?;
                    if options.approval_tags
                        && let Err(e) = self.fetch_approval_tags(url, tip, transfer)
                    {
                        failures.push(RemoteFailure { url: url.clone(), reason: e.to_string() });
                        continue;
                    }
                    return Ok(Fetched {
                        url: url.clone(),
                        tip,
                        received_pack: outcome.received_pack,
                        probed: false,
                        failures,
                    });
                }
                // gix refuses a fetch whose refspecs match nothing the remote advertises;
                // report that as the missing branch it is.
                Err(FetchError::Remote { reason, .. })
                    if reason.contains("None of the refspec") =>
                {
                    failures.push(branch_missing());
                }
                Err(e) => failures.push(RemoteFailure { url: url.clone(), reason: e.to_string() }),
            }
        }
        Err(FetchError::AllRemotesFailed { failures })
    }

    /// [`Mirror::fetch`], asking the first remote first, in one `ls-refs` request
    /// (`probe.rs`), whether it advertises anything the mirror does not hold: when it does
    /// not, nothing is fetched. Any doubt (no tip yet, a probe that failed, a new tip or
    /// approval) means the full fetch.
    pub async fn poll(
        &mut self,
        forge: &Forge,
        remotes: &[String],
        options: &FetchOptions,
    ) -> Result<Fetched, FetchError> {
        if let (Some(url), Ok(tip)) =
            (remotes.first(), self.ref_target(&tracking_ref(&options.branch)))
        {
            match forge.ls_refs(url, &probe::prefixes(options, tip), options).await {
                Ok(advertised) if self.holds(&advertised, options) == Some(tip) => {
                    return Ok(Fetched {
                        url: url.clone(),
                        tip,
                        received_pack: false,
                        probed: true,
                        failures: Vec::new(),
                    });
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("no ls-refs answer, fetching: {e}"),
            }
        }
        self.fetch(remotes, options)
    }

    /// The branch tip when the mirror holds everything `advertised` lists: the branch at
    /// the same commit and, with approvals, exactly the approval tags of that tip the
    /// remote lists, each at the same object (a tag withdrawn on the forge means a fetch,
    /// which prunes it).
    pub fn holds(&self, advertised: &Advertised, options: &FetchOptions) -> Option<ObjectId> {
        let tip = self.ref_target(&tracking_ref(&options.branch)).ok()?;
        if advertised.get(&format!("refs/heads/{}", options.branch)) != Some(tip) {
            return None;
        }
        if options.approval_tags {
            let prefix = approval_tags_of(tip);
            let held = |name: &str| {
                let r = self.repo.find_reference(name).ok()?;
                r.target().try_id().map(ToOwned::to_owned)
            };
            if advertised.under(&prefix).any(|(name, id)| held(name) != Some(*id)) {
                return None;
            }
            // A tag the mirror holds that the remote no longer lists (a withdrawn
            // approval): the full fetch prunes it.
            let platform = self.repo.references().ok()?;
            let mut held_refs = platform.prefixed(prefix.as_str()).ok()?;
            if held_refs.any(|r| {
                r.map_or(true, |r| advertised.get(&r.name().as_bstr().to_string()).is_none())
            }) {
                return None;
            }
        }
        Some(tip)
    }

    /// Fetches the approval tags of `tip` ([`approval_tags_of`]) from `url`; none is fine.
    fn fetch_approval_tags(
        &mut self,
        url: &str,
        tip: ObjectId,
        transfer: Transfer,
    ) -> Result<(), FetchError> {
        let prefix = approval_tags_of(tip);
        let refspecs = [format!("+{prefix}*:{prefix}*")];
        let fetched = match self.fetch_one(url, &refspecs, transfer) {
            Ok(outcome) => outcome.local_refs,
            // No approval tag on the tip (a remote speaking protocol v1 lists its other refs).
            Err(FetchError::Remote { reason, .. }) if reason.contains("None of the refspec") => {
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        // A fetch only adds and moves refs: an approval withdrawn on the forge (its tag
        // deleted) would go on counting from the mirror. Only what the remote lists now
        // stays.
        self.prune_under(&prefix, &fetched)
    }

    /// Deletes the mirror's refs under `prefix` that are not in `keep`.
    fn prune_under(&self, prefix: &str, keep: &[String]) -> Result<(), FetchError> {
        let odb = |e: String| FetchError::Odb { what: format!("refs under {prefix}"), reason: e };
        let platform = self.repo.references().map_err(|e| odb(e.to_string()))?;
        let stale: Vec<gix::Reference<'_>> = platform
            .prefixed(prefix)
            .map_err(|e| odb(e.to_string()))?
            .filter_map(Result::ok)
            .filter(|r| !keep.iter().any(|k| k.as_str() == r.name().as_bstr()))
            .collect();
        for r in stale {
            r.delete().map_err(|e| odb(e.to_string()))?;
        }
        Ok(())
    }

    /// Fetches arbitrary `refspecs` from one `url` within `timeout`, with the default caps.
    pub fn fetch_refspecs(
        &mut self,
        url: &str,
        refspecs: &[String],
        timeout: Duration,
    ) -> Result<FetchOutcome, FetchError> {
        let transfer = Transfer {
            timeout,
            credentials: None,
            ca_file: None,
            max_refs: DEFAULT_MAX_REFS,
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
        };
        self.fetch_one(url, refspecs, transfer)
    }

    fn fetch_one(
        &mut self,
        url: &str,
        refspecs: &[String],
        transfer: Transfer,
    ) -> Result<FetchOutcome, FetchError> {
        let timeout = transfer.timeout;
        let interrupt = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (dir, url_owned, specs, flag) =
            (self.dir.clone(), url.to_string(), refspecs.to_vec(), Arc::clone(&interrupt));
        let worker = std::thread::Builder::new()
            .name("veza-fetch".into())
            .spawn(move || {
                let result = fetch_blocking(&dir, &url_owned, &specs, &transfer, flag);
                let _ = tx.send(result);
            })
            .map_err(|e| FetchError::Remote { url: url.to_string(), reason: e.to_string() })?;
        let result = match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => {
                interrupt.store(true, Ordering::SeqCst);
                // Give the worker a moment to notice; if it is stuck in I/O, leave it behind
                // (the HTTP client's own timeout ends it) and report the timeout now.
                let _ = rx.recv_timeout(INTERRUPT_GRACE);
                return Err(FetchError::Timeout { url: url.to_string(), timeout });
            }
        };
        let _ = worker.join();
        let outcome = result?;
        // Re-open so that refs and packs written by the worker are visible.
        self.repo = gix::open_opts(&self.dir, open_options())
            .map_err(|e| FetchError::Open { dir: self.dir.clone(), reason: why(e) })?;
        Ok(outcome)
    }
}

/// Outcome of one remote's fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Whether a pack was received.
    pub received_pack: bool,
    /// Local refs the refspecs mapped to (those the remote advertised).
    pub local_refs: Vec<String>,
}
