//! Signed source end to end: commits made at test time with real git + OpenSSH
//! (`veza_testkit::repo`), served over smart HTTP (`git http-backend` behind
//! `veza_testkit::http`) and `file://`, fetched with gix into a bare mirror and verified
//! in-process. `git verify-commit` is the oracle wherever git's verdict is right (the
//! extra `gpgsig-sha256` header is the known exception: git says Good, we refuse).
//! The `veza-agent verify` CLI is driven for its exit-code contract and rollback refusal.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use veza_source::accept::{newer_base, newest_mark};
use veza_source::fetch::{Credentials, FetchOptions, Mirror, ObjectId};
use veza_source::policy::{Policy, collect_approvals};
use veza_source::{AllowedSigners, FetchError, ObjectKind, VerifyError, verify_object};
use veza_testkit::http::{Fault, GitHttpServer, refused_url};
use veza_testkit::repo::{RepoBuilder, SigningKey, allowed_signers_line, git_verify, noise};

const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("now").as_secs()
        as i64
}

fn oid(hex: &str) -> ObjectId {
    ObjectId::from_hex(hex.as_bytes()).expect("oid")
}

/// What the agent must say about a case.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Good(&'static str),
    Unsigned,
    UnknownKey,
    BadSignature,
    WrongNamespace,
    Expired,
    NotYetValid,
    NamespaceNotAllowed,
    ExtraHeader,
    MultipleSignatures,
}

impl Expect {
    fn check(self, name: &str, result: &Result<veza_source::Verdict, VerifyError>) {
        use VerifyError as E;
        use veza_source::error::ObjectError as O;
        let ok = match (self, result) {
            (Expect::Good(p), Ok(v)) => v.principal == p && v.fingerprint.starts_with("SHA256:"),
            (Expect::Unsigned, Err(E::Object(O::Unsigned { .. }))) => true,
            (Expect::UnknownKey, Err(E::UnknownKey { .. })) => true,
            (Expect::BadSignature, Err(E::BadSignature { .. })) => true,
            (Expect::WrongNamespace, Err(E::WrongNamespace { found, .. })) => found == "file",
            (Expect::Expired, Err(E::KeyExpired { .. })) => true,
            (Expect::NotYetValid, Err(E::KeyNotYetValid { .. })) => true,
            (Expect::NamespaceNotAllowed, Err(E::NamespaceNotAllowed { .. })) => true,
            (Expect::ExtraHeader, Err(E::Object(O::ExtraSignatureHeader { header, .. }))) => {
                header == "gpgsig-sha256"
            }
            (
                Expect::MultipleSignatures,
                Err(E::Object(O::MultipleSignatures { count: 2, .. })),
            ) => true,
            _ => false,
        };
        assert!(ok, "case {name}: expected {self:?}, got {result:?}");
    }

    /// What `veza-agent verify` prints on stderr for a rejection.
    fn cli_words(self) -> &'static str {
        match self {
            Expect::Good(_) => "good signature",
            Expect::Unsigned => "is not signed",
            Expect::UnknownKey => "not in allowed_signers",
            Expect::BadSignature => "bad signature",
            Expect::WrongNamespace => "namespace `file`",
            Expect::Expired => "expired",
            Expect::NotYetValid => "not yet valid",
            Expect::NamespaceNotAllowed => "may only sign namespaces",
            Expect::ExtraHeader => "extra signature header `gpgsig-sha256`",
            Expect::MultipleSignatures => "2 signatures",
        }
    }
}

struct Case {
    name: &'static str,
    commit: String,
    expect: Expect,
    /// `git verify-commit` exit status 0? `None`: not used as an oracle.
    git_good: Option<bool>,
}

struct Keys {
    alice: SigningKey,
    bob: SigningKey,
    forgejo: SigningKey,
    mallory: SigningKey,
    carol: SigningKey,
    dave: SigningKey,
    erin: SigningKey,
}

impl Keys {
    fn generate(dir: &Path) -> Keys {
        let g = |n: &str| SigningKey::generate(dir, n).expect("generate");
        Keys {
            alice: g("alice"),
            bob: g("bob"),
            forgejo: g("forgejo"),
            mallory: g("mallory"),
            carol: g("carol"),
            dave: g("dave"),
            erin: g("erin"),
        }
    }

    /// Trust root: alice, bob, forgejo; carol expired; dave not yet valid; erin only for `file`.
    fn allowed_signers(&self) -> String {
        [
            allowed_signers_line("alice@example.com", &self.alice, "namespaces=\"git\""),
            allowed_signers_line("bob@example.com", &self.bob, "namespaces=\"git\""),
            allowed_signers_line("forgejo@forge.example", &self.forgejo, "namespaces=\"git\""),
            allowed_signers_line("carol@example.com", &self.carol, "valid-before=\"20200101Z\""),
            allowed_signers_line("dave@example.com", &self.dave, "valid-after=\"20990101Z\""),
            allowed_signers_line("erin@example.com", &self.erin, "namespaces=\"file\""),
        ]
        .join("\n")
            + "\n"
    }
}

/// The shared repository: built once, only read by the tests that use it.
struct World {
    tmp: tempfile::TempDir,
    repo: RepoBuilder,
    server: GitHttpServer,
    signers_file: PathBuf,
    signers: AllowedSigners,
    cases: Vec<Case>,
    c_bob: String,
    tag_v1: String,
}

impl World {
    fn http_url(&self) -> String {
        self.server.url("origin.git")
    }

    fn case(&self, name: &str) -> &Case {
        self.cases.iter().find(|c| c.name == name).expect("case")
    }
}

fn build_world() -> World {
    let tmp = tempfile::tempdir().expect("build_world");
    let keys = Keys::generate(&tmp.path().join("keys"));
    let signers_text = keys.allowed_signers();
    let signers_file = tmp.path().join("allowed_signers");
    std::fs::write(&signers_file, &signers_text).expect("build_world");
    let signers = AllowedSigners::parse(&signers_text).expect("build_world");

    let srv = tmp.path().join("srv");
    let repo = RepoBuilder::new(&srv).expect("build_world");
    let c_alice = repo
        .commit_files_signed(
            &keys.alice,
            &[("manifests/prod.yaml", "replicas: 1\n"), ("manifests/dev.yaml", "replicas: 1\n")],
            "initial manifests",
        )
        .expect("build_world");
    let c_bob = repo
        .commit_files_signed(&keys.bob, &[("manifests/dev.yaml", "replicas: 2\n")], "scale dev")
        .expect("build_world");
    repo.branch("feature").expect("build_world");
    repo.commit_files_signed(
        &keys.alice,
        &[("manifests/prod.yaml", "replicas: 3\n")],
        "scale prod",
    )
    .expect("build_world");
    repo.checkout("main").expect("build_world");
    let merge = repo
        .merge_signed(
            "feature",
            &keys.forgejo,
            "Merge pull request 'scale prod' (#1) from feature into main",
        )
        .expect("build_world");
    let tag_v1 = repo.tag_signed(&keys.alice, "v1", &c_bob, "release v1").expect("build_world");

    // Negative cases live on their own branch so that `main` stays the good merge.
    repo.branch("neg").expect("build_world");
    let mut cases = vec![
        Case {
            name: "alice",
            commit: c_alice.clone(),
            expect: Expect::Good("alice@example.com"),
            git_good: Some(true),
        },
        Case {
            name: "bob",
            commit: c_bob.clone(),
            expect: Expect::Good("bob@example.com"),
            git_good: Some(true),
        },
        Case {
            name: "forgejo-merge",
            commit: merge.clone(),
            expect: Expect::Good("forgejo@forge.example"),
            git_good: Some(true),
        },
    ];
    let mut worktree_case = |name, key: Option<&SigningKey>, expect, git_good| {
        repo.write("manifests/dev.yaml", &format!("# {name}\n")).expect("worktree_case");
        let commit = match key {
            Some(k) => repo.commit_signed(k, name).expect("worktree_case"),
            None => repo.commit_unsigned(name).expect("worktree_case"),
        };
        cases.push(Case { name, commit, expect, git_good });
    };
    worktree_case("unsigned", None, Expect::Unsigned, Some(false));
    worktree_case("unknown-key", Some(&keys.mallory), Expect::UnknownKey, Some(false));
    worktree_case("expired-key", Some(&keys.carol), Expect::Expired, Some(false));
    worktree_case("not-yet-valid-key", Some(&keys.dave), Expect::NotYetValid, Some(false));
    worktree_case(
        "namespace-not-allowed",
        Some(&keys.erin),
        Expect::NamespaceNotAllowed,
        Some(false),
    );

    let tree = repo
        .git(&["rev-parse", &format!("{c_alice}^{{tree}}")])
        .expect("worktree_case")
        .trim()
        .to_string();
    let mut crafted = |name, namespace, expect, git_good, mutate: fn(Vec<u8>) -> Vec<u8>| {
        let commit = repo
            .craft_signed_commit(&keys.alice, namespace, &tree, &[&merge], name, mutate)
            .expect("build_world");
        cases.push(Case { name, commit, expect, git_good });
    };
    crafted("crafted-good", "git", Expect::Good("alice@example.com"), Some(true), |raw| raw);
    crafted("tampered", "git", Expect::BadSignature, Some(false), |raw| {
        String::from_utf8(raw)
            .expect("build_world")
            .replace("\ntampered\n", "\ntampered: replicas 99\n")
            .into_bytes()
    });
    crafted("wrong-namespace", "file", Expect::WrongNamespace, Some(false), |raw| raw);
    // git drops the extra header from the payload and says Good: the known exception.
    crafted("extra-gpgsig-sha256", "git", Expect::ExtraHeader, Some(true), |raw| {
        let text = String::from_utf8(raw).expect("crafted");
        text.replacen("\ngpgsig ", "\ngpgsig-sha256 smuggled\ngpgsig ", 1).into_bytes()
    });
    crafted("two-signatures", "git", Expect::MultipleSignatures, None, |raw| {
        let text = String::from_utf8(raw).expect("crafted");
        let start = text.find("gpgsig ").expect("crafted");
        let end = text.find("\n\n").expect("crafted") + 1;
        format!("{}{}", &text[..end], &text[start..]).into_bytes()
    });
    for case in &cases {
        repo.set_ref(&format!("refs/heads/case/{}", case.name), &case.commit).expect("crafted");
    }
    let server = GitHttpServer::start(&srv).expect("crafted");
    World { tmp, repo, server, signers_file, signers, cases, c_bob, tag_v1 }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(build_world)
}

fn run_table(url: &str, mirror_dir: &Path) {
    let w = world();
    let mut mirror = Mirror::open_or_init(mirror_dir).expect("run_table");
    for case in &w.cases {
        let branch = format!("case/{}", case.name);
        let fetched = mirror
            .fetch(&[url.to_string()], &FetchOptions::new(&branch, FETCH_TIMEOUT))
            .unwrap_or_else(|e| panic!("fetch {branch}: {e}"));
        assert_eq!(fetched.tip, oid(&case.commit), "{branch}");
        assert!(fetched.failures.is_empty());
        let raw = mirror.raw_commit(fetched.tip).expect("run_table");
        case.expect.check(case.name, &verify_object(ObjectKind::Commit, &raw, &w.signers, now()));
    }
}

#[test]
fn every_case_over_smart_http() {
    let dir = tempfile::tempdir().unwrap();
    run_table(&world().http_url(), &dir.path().join("mirror.git"));
    let requests = world().server.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("POST /origin.git/git-upload-pack")),
        "{requests:?}"
    );
}

#[test]
fn every_case_over_file_url() {
    let dir = tempfile::tempdir().unwrap();
    run_table(&world().repo.file_url(), &dir.path().join("mirror.git"));
}

#[test]
fn git_verify_commit_agrees_except_for_the_extra_header() {
    let w = world();
    for case in &w.cases {
        let Some(git_good) = case.git_good else { continue };
        let git = git_verify(w.repo.bare(), &w.signers_file, &case.commit, false).unwrap();
        assert_eq!(git.good, git_good, "case {}: git said {}", case.name, git.output);
        let ours = verify_object(
            ObjectKind::Commit,
            &w.repo.raw_object("commit", &case.commit).unwrap(),
            &w.signers,
            now(),
        );
        if case.name == "extra-gpgsig-sha256" {
            assert!(git.good && ours.is_err(), "the known exception: git Good, agent refuses");
            continue;
        }
        assert_eq!(
            ours.is_ok(),
            git.good,
            "case {}: ours {ours:?} vs git {}",
            case.name,
            git.output
        );
        if let Expect::Good(p) = case.expect {
            assert!(
                git.output.contains(&format!("Good \"git\" signature for {p}")),
                "{}",
                git.output
            );
            let fp = ours.unwrap().fingerprint;
            assert!(git.output.contains(&fp), "git: {} / ours: {fp}", git.output);
        }
    }
    // The annotated tag too.
    let git = git_verify(w.repo.bare(), &w.signers_file, &w.tag_v1, true).unwrap();
    assert!(git.good, "{}", git.output);
    let raw = w.repo.raw_object("tag", &w.tag_v1).unwrap();
    assert_eq!(
        veza_source::verify_object(ObjectKind::Tag, &raw, &w.signers, now()).unwrap().principal,
        "alice@example.com"
    );
}

// ---------------------------------------------------------------------------------------
// CLI: `veza-agent verify`

fn agent(args: &[&str]) -> (Option<i32>, String, String) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_veza-agent"));
    let out = veza_testkit::cli::output(bin, args, Duration::from_secs(120));
    (out.status.code(), out.stdout_str(), out.stderr_str())
}

fn verify_cli(
    repo: &str,
    rev: &str,
    signers: &Path,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let mut args = vec![
        "verify",
        "--repo",
        repo,
        "--rev",
        rev,
        "--allowed-signers",
        signers.to_str().expect("verify_cli"),
    ];
    args.extend_from_slice(extra);
    agent(&args)
}

#[test]
fn cli_verdicts_over_http_file_and_local_path() {
    let w = world();
    let http = w.http_url();
    let file = w.repo.file_url();
    let bare = w.repo.bare().display().to_string();
    let work = w.repo.work().display().to_string();
    let (http, file, bare) = (http.as_str(), file.as_str(), bare.as_str());
    let runs: &[(&str, &str)] = &[
        (http, "alice"),
        (http, "forgejo-merge"),
        (http, "unsigned"),
        (http, "unknown-key"),
        (http, "tampered"),
        (http, "extra-gpgsig-sha256"),
        (file, "wrong-namespace"),
        (file, "expired-key"),
        (bare, "not-yet-valid-key"),
        (bare, "namespace-not-allowed"),
        (bare, "two-signatures"),
    ];
    for (repo, name) in runs {
        let case = w.case(name);
        let (code, stdout, stderr) =
            verify_cli(repo, &format!("case/{name}"), &w.signers_file, &[]);
        match case.expect {
            Expect::Good(p) => {
                assert_eq!(code, Some(0), "{name} via {repo}: {stderr}");
                assert!(stdout.contains("good signature"), "{stdout}");
                assert!(stdout.contains(p) && stdout.contains(&case.commit), "{stdout}");
            }
            other => {
                assert_eq!(code, Some(1), "{name} via {repo}: {stdout}{stderr}");
                assert!(stderr.contains(other.cli_words()), "{name}: {stderr}");
                assert!(stdout.is_empty(), "{name}: {stdout}");
            }
        }
    }
    // A non-bare repository opened in place, by abbreviated id.
    let (code, stdout, stderr) = verify_cli(&work, &w.c_bob[..10], &w.signers_file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("signed by bob@example.com"), "{stdout}");
    // A signed tag, by name, over HTTP.
    let (code, stdout, stderr) = verify_cli(http, "v1", &w.signers_file, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("good signature: tag v1") && stdout.contains(&w.c_bob), "{stdout}");
    // --verify-time committer: the key window is checked at the commit date, as git does.
    let (code, _, stderr) =
        verify_cli(bare, "case/expired-key", &w.signers_file, &["--verify-time", "committer"]);
    assert_eq!(code, Some(1), "{stderr}");
}

/// A forge may point a branch at a signed tag of an unsigned commit (git's receive-pack
/// refuses that; a hostile forge need not): `verify --rev <branch>` checks the commit the
/// branch names, as the agent would, and only a tag's own name checks the tag.
#[test]
fn cli_reads_a_branch_as_its_commit_even_when_it_points_at_a_signed_tag() {
    let s = small();
    s.repo.write("manifests/prod.yaml", "v: 1\n").unwrap();
    let unsigned = s.repo.commit_unsigned("unsigned").unwrap();
    s.repo.push().unwrap();
    let tag = s.repo.tag_signed(&s.alice, "signed-tag", &unsigned, "looks fine").unwrap();
    // Written as a loose ref by hand: git's own tools refuse a tag in `refs/heads/`.
    std::fs::write(s.repo.bare().join("refs/heads/tagged"), format!("{tag}\n")).unwrap();
    let url = s.server.url("origin.git");
    let (code, stdout, stderr) = verify_cli(&url, "tagged", &s.signers_file, &[]);
    assert_eq!(code, Some(1), "the branch's commit is unsigned: {stdout}{stderr}");
    assert!(stderr.contains(&unsigned) && stderr.contains("not signed"), "{stderr}");
    let (code, stdout, stderr) = verify_cli(&url, "signed-tag", &s.signers_file, &[]);
    assert_eq!(code, Some(0), "the tag itself is signed: {stderr}");
    assert!(stdout.contains(&format!("tag signed-tag ({tag}) on commit {unsigned}")), "{stdout}");
}

#[test]
fn cli_usage_and_io_errors_exit_2() {
    let w = world();
    let bare = w.repo.bare().display().to_string();
    let missing = w.tmp.path().join("no-such-file");
    let (code, _, stderr) = verify_cli(&bare, "main", &missing, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no-such-file"), "{stderr}");
    let bad = w.tmp.path().join("bad_signers");
    std::fs::write(&bad, "alice@example.com cert-authority ssh-ed25519 AAAA\n").unwrap();
    let (code, _, stderr) = verify_cli(&bare, "main", &bad, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("line 1") && stderr.contains("cert-authority"), "{stderr}");
    let (code, _, stderr) = verify_cli(&bare, "no-such-branch", &w.signers_file, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no-such-branch"), "{stderr}");
    let refused = refused_url("origin.git").unwrap();
    let (code, _, stderr) = verify_cli(&refused, "main", &w.signers_file, &["--timeout", "5"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, stderr) = agent(&["verify", "--repo", &bare]);
    assert_eq!(code, Some(2), "{stderr}");
}

// ---------------------------------------------------------------------------------------
// Rollback, approvals + policy, remotes, bounded reads: each in its own repository.

struct Small {
    _tmp: tempfile::TempDir,
    repo: RepoBuilder,
    server: GitHttpServer,
    signers_file: PathBuf,
    signers: AllowedSigners,
    alice: SigningKey,
    bob: SigningKey,
    forgejo: SigningKey,
}

fn small() -> Small {
    let tmp = tempfile::tempdir().expect("small");
    let keys_dir = tmp.path().join("keys");
    let alice = SigningKey::generate(&keys_dir, "alice").expect("small");
    let bob = SigningKey::generate(&keys_dir, "bob").expect("small");
    let forgejo = SigningKey::generate(&keys_dir, "forgejo").expect("small");
    let text = veza_testkit::repo::allowed_signers(&[
        ("alice@example.com", &alice),
        ("bob@example.com", &bob),
        ("forgejo@forge.example", &forgejo),
    ]);
    let signers_file = tmp.path().join("allowed_signers");
    std::fs::write(&signers_file, &text).expect("small");
    let srv = tmp.path().join("srv");
    let repo = RepoBuilder::new(&srv).expect("small");
    let server = GitHttpServer::start(&srv).expect("small");
    Small {
        repo,
        server,
        signers_file,
        signers: AllowedSigners::parse(&text).expect("small"),
        alice,
        bob,
        forgejo,
        _tmp: tmp,
    }
}

/// A poll first asks the forge one protocol-v2 `ls-refs` (no capability round, no pack
/// negotiation): when the mirror already holds the branch tip and the tip's approval tags
/// it lists, that one request is the whole poll. A new commit, a new approval, a
/// force-push or a failing first remote each make it fetch as before.
#[test]
fn a_poll_that_finds_nothing_new_is_one_ls_refs_request() {
    let s = small();
    let url = s.server.url("origin.git");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let forge = veza_source::fetch::Forge::new();
    let mirror_dir = s._tmp.path().join("mirror.git");
    let mut mirror = Mirror::open_or_init(&mirror_dir).unwrap();
    let opts = FetchOptions { approval_tags: true, ..FetchOptions::new("main", FETCH_TIMEOUT) };
    let remotes = std::slice::from_ref(&url);
    // Polls once; returns (tip, whether the probe sufficed, the requests it made).
    let poll = |mirror: &mut Mirror| {
        let before = s.server.requests().len();
        let fetched = rt.block_on(mirror.poll(&forge, remotes, &opts)).unwrap();
        (fetched.tip, fetched.probed, s.server.requests().split_off(before))
    };
    let a =
        s.repo.commit_files_signed(&s.alice, &[("manifests/prod.yaml", "v: 1\n")], "A").unwrap();

    // (what happened on the forge, tip after the poll, whether one ls-refs sufficed)
    let (tip, probed, sent) = poll(&mut mirror);
    assert_eq!((tip, probed), (oid(&a), false), "an empty mirror fetches: {sent:?}");
    let (tip, probed, sent) = poll(&mut mirror);
    assert_eq!((tip, probed), (oid(&a), true), "{sent:?}");
    assert_eq!(sent.len(), 1, "one request for a poll that finds nothing: {sent:?}");
    assert!(sent[0].starts_with("POST /origin.git/git-upload-pack?"), "{sent:?}");

    let b = s.repo.commit_files_signed(&s.bob, &[("manifests/prod.yaml", "v: 2\n")], "B").unwrap();
    let (tip, probed, sent) = poll(&mut mirror);
    assert_eq!((tip, probed), (oid(&b), false), "a new commit is fetched: {sent:?}");
    assert!(sent.len() > 2, "probe, then the fetch's own requests: {sent:?}");
    assert!(poll(&mut mirror).1, "and then held");

    s.repo.approve(&s.alice, &b).unwrap();
    let (tip, probed, _) = poll(&mut mirror);
    assert_eq!((tip, probed), (oid(&b), false), "a new approval of the tip is fetched");
    let approvals = mirror.tags_pointing_at(oid(&b), 10).unwrap();
    assert_eq!(approvals.len(), 1, "the approval tag is in the mirror");
    assert!(poll(&mut mirror).1, "and then held");
    // A withdrawn approval (its tag deleted on the forge) stops counting: the probe sees
    // the mirror holds a tag the forge no longer lists, and the fetch prunes it.
    s.repo.approve(&s.bob, &b).unwrap();
    assert!(!poll(&mut mirror).1);
    assert_eq!(mirror.tags_pointing_at(oid(&b), 10).unwrap().len(), 2);
    s.repo.withdraw_approval(&s.alice, &b).unwrap();
    let (tip, probed, _) = poll(&mut mirror);
    assert_eq!((tip, probed), (oid(&b), false), "a withdrawn approval is fetched");
    let left: Vec<String> =
        mirror.tags_pointing_at(oid(&b), 10).unwrap().into_iter().map(|(name, _)| name).collect();
    assert_eq!(left, [format!("refs/tags/gitops/approve/{b}/bob")]);
    assert!(poll(&mut mirror).1, "and then held");
    s.repo.withdraw_approval(&s.bob, &b).unwrap();
    assert!(!poll(&mut mirror).1);
    assert_eq!(mirror.tags_pointing_at(oid(&b), 10).unwrap().len(), 0, "the last one too");

    s.repo.force_reset(&a).unwrap();
    let (tip, probed, _) = poll(&mut mirror);
    assert_eq!((tip, probed), (oid(&a), false), "a force-push is fetched (and judged later)");
    assert!(poll(&mut mirror).1);

    // A first remote that fails: the probe cannot answer, the fetch goes on to the next.
    let broken = GitHttpServer::start(s._tmp.path()).unwrap();
    broken.set_fault(Fault::Error500);
    let both = [broken.url("origin.git"), url.clone()];
    let fetched = rt.block_on(mirror.poll(&forge, &both, &opts)).unwrap();
    assert_eq!((fetched.tip, fetched.probed, fetched.url.as_str()), (oid(&a), false, url.as_str()));
    assert_eq!(fetched.failures.len(), 1, "{:?}", fetched.failures);
}

/// Behind HTTPS with a token (Forgejo's private repository): the probe sends the
/// credentials only after the remote asked for them, then at once on later polls; a
/// token the remote refuses is not tried again by the probe (the fetch reports it), and a
/// new token is.
#[test]
fn a_private_remote_is_probed_with_its_credentials_once_it_asked() {
    let s = small();
    let front = veza_testkit::http::TlsFront::start(s.server.addr()).unwrap();
    let url = front.url("origin.git");
    s.server.require_basic_auth(Some(("agent", "right")));
    s.repo.commit_files_signed(&s.alice, &[("manifests/prod.yaml", "v: 1\n")], "A").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let forge = veza_source::fetch::Forge::new();
    let mut mirror = Mirror::open_or_init(&s._tmp.path().join("mirror.git")).unwrap();
    let with = |token: &str| FetchOptions {
        credentials: Some(Credentials { username: "agent".into(), token: token.into() }),
        ca_file: Some(front.ca_file().to_path_buf()),
        ..FetchOptions::new("main", FETCH_TIMEOUT)
    };
    let remotes = std::slice::from_ref(&url);
    let mut poll = |opts: &FetchOptions| {
        let before = s.server.requests().len();
        let result = rt.block_on(mirror.poll(&forge, remotes, opts));
        let sent = s.server.requests().split_off(before);
        let auth: Vec<&str> = sent.iter().map(|r| r.rsplit(' ').next().unwrap_or("")).collect();
        (result.map(|f| f.probed).map_err(|e| e.to_string()), auth.join(","))
    };
    let right = with("right");
    assert_eq!(poll(&right).0, Ok(false), "the first poll fetches");
    // (poll with, whether one ls-refs sufficed, the auth each request carried)
    assert_eq!(poll(&right), (Ok(true), "auth=none,auth=ok".to_string()), "asked, then sent");
    assert_eq!(poll(&right), (Ok(true), "auth=ok".to_string()), "sent at once");
    let wrong = with("wrong");
    let tries = |sent: &str| sent.matches("auth=wrong").count();
    let (result, sent) = poll(&wrong);
    assert!(result.is_err_and(|e| e.contains("were not accepted")), "{sent}");
    assert!(sent.starts_with("auth=none,auth=wrong,"), "the probe asked once: {sent}");
    assert_eq!(tries(&sent), 2, "the probe's try and the fetch's: {sent}");
    let (result, sent) = poll(&wrong);
    assert!(result.is_err());
    assert_eq!(tries(&sent), 1, "only the fetch tried the refused token again: {sent}");
    assert_eq!(poll(&right), (Ok(true), "auth=none,auth=ok".to_string()), "a new token is tried");
}

#[test]
fn force_push_back_to_an_older_signed_commit_is_refused() {
    let s = small();
    let url = s.server.url("origin.git");
    let a =
        s.repo.commit_files_signed(&s.alice, &[("manifests/prod.yaml", "v: 1\n")], "A").unwrap();
    let b = s.repo.commit_files_signed(&s.bob, &[("manifests/prod.yaml", "v: 2\n")], "B").unwrap();

    let mirror_dir = s._tmp.path().join("mirror.git");
    let mut mirror = Mirror::open_or_init(&mirror_dir).unwrap();
    let opts = FetchOptions::new("main", FETCH_TIMEOUT);
    assert_eq!(mirror.fetch(std::slice::from_ref(&url), &opts).unwrap().tip, oid(&b));
    assert!(mirror.is_descendant(oid(&b), oid(&a), 1000).unwrap());
    // Of two bases (a cluster member's own record, the mark in Incus) the newer one wins:
    // a stale mark never lowers the base, nor does a stale record.
    let newer = |mine: &str, mark: &str| newer_base(&mirror, mine, mark).to_string();
    assert_eq!(newer(&b, &a), b, "the record descends from a stale mark");
    assert_eq!(newer(&a, &b), b, "the mark descends from a stale record");
    assert_eq!(newer(&a, &a), a);
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    assert_eq!(newer(unknown, &a), a, "a record not in the mirror is not newer");
    assert_eq!(newer(&b, unknown), unknown, "nor is a record over a mark it cannot compare");
    // Of a mark and its copy for older agents, the newer, either way round; one the history
    // no longer holds wins over one it does (the tip is then refused as a rewrite).
    let newest = |x: &str, y: &str| newest_mark(&mirror, x, y).to_string();
    assert_eq!(newest(&b, &a), b);
    assert_eq!(newest(&a, &b), b);
    assert_eq!(newest(&a, &a), a);
    assert_eq!(newest(unknown, &a), unknown);
    assert_eq!(newest(&b, unknown), unknown);
    let (code, stdout, stderr) = verify_cli(&url, "main", &s.signers_file, &["--after", &a]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&format!("descends from {a}")), "{stdout}");

    s.repo.force_reset(&a).unwrap();
    let fetched = mirror.fetch(std::slice::from_ref(&url), &opts).unwrap();
    assert_eq!(fetched.tip, oid(&a), "the mirror follows the force-push");
    // A is validly signed, yet it is not a descendant of B: refused.
    assert!(
        verify_object(
            ObjectKind::Commit,
            &mirror.raw_commit(fetched.tip).unwrap(),
            &s.signers,
            now()
        )
        .is_ok()
    );
    assert!(!mirror.is_descendant(oid(&a), oid(&b), 1000).unwrap());
    let (code, stdout, stderr) = verify_cli(&url, "main", &s.signers_file, &["--after", &b]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains("not a descendant") && stderr.contains(&b), "{stderr}");
    // Same through a fresh file:// mirror, where B is not even present any more.
    let (code, _, stderr) =
        verify_cli(&s.repo.file_url(), "main", &s.signers_file, &["--after", &b]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("history was rewritten"), "{stderr}");

    // The forge names refs after B's id, pointing at A: refs are not commits. The last
    // applied commit is looked up by object id only, so these prove nothing.
    for name in [b.clone(), b[..12].to_string()] {
        s.repo.set_ref(&format!("refs/tags/{name}"), &a).unwrap();
    }
    let fresh = tempfile::tempdir().unwrap();
    let mut fresh_mirror = Mirror::open_or_init(&fresh.path().join("m.git")).unwrap();
    let all =
        ["+refs/heads/*:refs/remotes/origin/*".to_string(), "+refs/tags/*:refs/tags/*".into()];
    fresh_mirror.fetch_refspecs(&url, &all, FETCH_TIMEOUT).unwrap();
    assert_eq!(fresh_mirror.resolve(&format!("refs/tags/{b}")).unwrap(), oid(&a), "forged tag");
    // (lookup, error)
    let lookups = [
        (b.clone(), "not found"),
        (b[..12].to_string(), "not a full 40-hex commit id"),
        (format!("refs/tags/{b}"), "not a full 40-hex commit id"),
    ];
    for (lookup, want) in lookups {
        let e = fresh_mirror.commit_by_id(&lookup).unwrap_err().to_string();
        assert!(e.contains(want), "{lookup}: {e}");
    }
    assert_eq!(fresh_mirror.commit_by_id(&a).unwrap(), oid(&a));
    // Not a commit: the tree of A.
    let tree = s.repo.git(&["rev-parse", &format!("{a}^{{tree}}")]).unwrap();
    let e = fresh_mirror.commit_by_id(tree.trim()).unwrap_err().to_string();
    assert!(e.contains("expected a commit"), "{e}");
    // The CLI: a full id is rejected (not in the history), an abbreviation is a usage error.
    let (code, _, stderr) = verify_cli(&url, "main", &s.signers_file, &["--after", &b]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("history was rewritten"), "{stderr}");
    let (code, stdout, stderr) = verify_cli(&url, "main", &s.signers_file, &["--after", &b[..12]]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stderr.contains("not a full 40-hex commit id"), "{stderr}");
}

#[test]
fn approval_tags_and_path_policy_on_real_commits() {
    let s = small();
    let base = s
        .repo
        .commit_files_signed(
            &s.alice,
            &[("manifests/prod.yaml", "replicas: 1\n"), ("manifests/dev.yaml", "replicas: 1\n")],
            "base",
        )
        .unwrap();
    s.repo.branch("feature").unwrap();
    s.repo
        .commit_files_signed(&s.alice, &[("manifests/prod.yaml", "replicas: 3\n")], "prod")
        .unwrap();
    s.repo.checkout("main").unwrap();
    let merge = s.repo.merge_signed("feature", &s.forgejo, "Merge PR #2").unwrap();
    s.repo.approve(&s.bob, &merge).unwrap();
    // An approval of another commit must not count.
    s.repo.approve(&s.alice, &base).unwrap();

    let policy = Policy::from_yaml_str(
        r#"
publishers: [forgejo@forge.example]
approval_ref: refs/heads/main
rules:
  - name: prod
    paths: ["manifests/prod.yaml"]
    principals: [alice@example.com, bob@example.com]
    threshold: 2
  - name: rest
    paths: ["**"]
    principals: [forgejo@forge.example, alice@example.com, bob@example.com]
    threshold: 1
"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let url = s.server.url("origin.git");
    let opts = FetchOptions { approval_tags: true, ..FetchOptions::new("main", FETCH_TIMEOUT) };
    let tip = mirror.fetch(std::slice::from_ref(&url), &opts).unwrap().tip;
    assert_eq!(tip, oid(&merge));
    assert!(mirror.is_descendant(tip, oid(&base), 1000).unwrap());
    let changed = mirror.changed_paths(Some(oid(&base)), tip, 10_000).unwrap();
    assert_eq!(changed, ["manifests/prod.yaml"]);

    let evaluate = |mirror: &Mirror| {
        let raw = mirror.raw_commit(tip).unwrap();
        let verdict = verify_object(ObjectKind::Commit, &raw, &s.signers, now()).unwrap();
        let tags = mirror.tags_pointing_at(tip, 100).unwrap();
        let (approvals, ignored) = collect_approvals(
            &merge,
            &verdict,
            &tags,
            &s.signers,
            now(),
            policy.approval_ref.as_deref(),
        );
        assert!(ignored.is_empty(), "{ignored:?}");
        policy.evaluate(&verdict, &changed, &approvals)
    };
    // Forgejo (not in the prod set) + bob's tag = one of two: refused, and the message says who.
    let violations = evaluate(&mirror).unwrap_err();
    let msg = violations[0].to_string();
    assert!(msg.contains("manifests/prod.yaml") && msg.contains("rule `prod`"), "{msg}");
    assert!(msg.contains("only bob@example.com approved"), "{msg}");
    assert!(msg.contains("forgejo@forge.example (commit signature)"), "{msg}");

    s.repo.approve(&s.alice, &merge).unwrap();
    mirror.fetch(std::slice::from_ref(&url), &opts).unwrap();
    let ok = evaluate(&mirror).unwrap();
    assert_eq!(ok[0].counted, ["alice@example.com", "bob@example.com"]);

    // The merge's apply began and failed before anything landed: the anti-rollback base is
    // the merge, but approvals cover what changed since `base`, the last applied commit.
    // A README edit on top (no approval of its own) does not carry the merge's prod change
    // in on the merge's approvals.
    let readme =
        s.repo.commit_files_signed(&s.forgejo, &[("README.md", "notes\n")], "notes").unwrap();
    mirror.fetch(&[url], &opts).unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_file,
        "publishers: [forgejo@forge.example]\napproval_ref: refs/heads/main\nrules:\n  - {name: prod, paths: [\"manifests/prod.yaml\"], principals: [alice@example.com, bob@example.com], threshold: 2}\n  - {name: rest, paths: [\"**\"], principals: [forgejo@forge.example], threshold: 1}\n",
    )
    .unwrap();
    use veza_source::{Acceptance, Base, Refusal, accept};
    let policy_path = policy_file.display().to_string();
    let manifests = ["manifests/prod.yaml".to_string()];
    let verdict = |since: veza_source::PolicySince<'_>| {
        let acceptance = Acceptance {
            allowed_signers: &s.signers_file,
            policy: Some(&policy_path),
            base: Base::Descends(&merge),
            policy_since: since,
            manifests: &manifests,
            host: "r720",
            max_refs: 100,
            now: now(),
            identities: None,
        };
        accept(&mirror, oid(&readme), &acceptance).map(|_| ()).map_err(|r| (r.kind, r.reason))
    };
    // Past the policy (only README changed since the merge), stopped by the test's
    // placeholder manifests.
    let since_merge = verdict(veza_source::PolicySince::Base).unwrap_err();
    assert_eq!(since_merge.0, Refusal::InvalidManifests, "{}", since_merge.1);
    let since_applied = verdict(veza_source::PolicySince::Commit(&base)).unwrap_err();
    assert_eq!(since_applied.0, Refusal::Policy, "{}", since_applied.1);
    assert!(since_applied.1.contains("manifests/prod.yaml"), "{}", since_applied.1);
    let everything = verdict(veza_source::PolicySince::Everything).unwrap_err();
    assert_eq!(everything.0, Refusal::Policy, "{}", everything.1);
}

#[test]
fn a_fetch_brings_only_the_branch_and_the_tips_approvals_within_caps() {
    let s = small();
    let url = s.server.url("origin.git");
    let tip = s.repo.commit_files_signed(&s.alice, &[("m.yaml", "v: 1\n")], "tip").unwrap();
    for i in 0..30 {
        s.repo.git(&["tag", &format!("release/{i}"), &tip]).unwrap();
    }
    s.repo.git(&["push", "-q", "origin", "--tags"]).unwrap();
    for key in [&s.alice, &s.bob, &s.forgejo] {
        s.repo.approve(key, &tip).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let capped = |approval_tags: bool, max_refs: usize| FetchOptions {
        approval_tags,
        max_refs,
        ..FetchOptions::new("main", FETCH_TIMEOUT)
    };

    // The branch alone: one ref asked for, the 33 tags neither counted nor fetched.
    assert_eq!(mirror.fetch(std::slice::from_ref(&url), &capped(false, 1)).unwrap().tip, oid(&tip));
    assert!(mirror.tags_pointing_at(oid(&tip), 100).unwrap().is_empty());
    assert!(mirror.resolve("refs/tags/release/1").is_err(), "other tags are not fetched");
    // With approvals: the tip's three approval tags, within a cap of 3 but not of 2.
    mirror.fetch(std::slice::from_ref(&url), &capped(true, 3)).unwrap();
    let tags = mirror.tags_pointing_at(oid(&tip), 100).unwrap();
    assert_eq!(tags.len(), 3, "{tags:?}");
    assert!(
        tags.iter().all(|(name, _)| name.starts_with(&format!("refs/tags/gitops/approve/{tip}/")))
    );
    let e = mirror.tags_pointing_at(oid(&tip), 2).unwrap_err().to_string();
    assert!(e.contains("more than 2 approval tags"), "{e}");
    let e = mirror.fetch(std::slice::from_ref(&url), &capped(true, 2)).unwrap_err().to_string();
    assert!(e.contains("advertised 3 refs, above the cap of 2 (source.max_refs)"), "{e}");

    // A pack above the cap is interrupted and leaves nothing behind.
    let before = std::fs::read_dir(dir.path().join("m.git/objects/pack")).unwrap().count();
    std::fs::write(s.repo.work().join("big.bin"), noise(3 << 20, 7)).unwrap();
    let big = s.repo.commit_signed(&s.alice, "a 3 MiB blob").unwrap();
    let small_pack =
        FetchOptions { max_pack_bytes: 1 << 20, ..FetchOptions::new("main", FETCH_TIMEOUT) };
    let e = mirror.fetch(std::slice::from_ref(&url), &small_pack).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("sent a pack larger than the cap of 1048576 bytes (source.max_pack_bytes)"),
        "{text}"
    );
    assert!(!mirror.exists(oid(&big)), "nothing of the oversized pack is kept");
    let after = std::fs::read_dir(dir.path().join("m.git/objects/pack")).unwrap().count();
    assert_eq!(after, before, "no temporary pack file left behind");
    // Under the default cap the same fetch succeeds.
    let fetched = mirror.fetch(&[url], &FetchOptions::new("main", FETCH_TIMEOUT)).unwrap();
    assert_eq!(fetched.tip, oid(&big));
}

/// A blob that inflates past [`veza_source::fetch::MAX_OBJECT_BYTES`] (zeros: it
/// compresses to a few hundred kB, far under the pack cap) is refused while the pack is
/// indexed, before it is held in memory; the mirror keeps nothing of it, and a history
/// without it is fetched.
#[test]
fn an_object_that_inflates_past_the_limit_is_refused() {
    let s = small();
    let url = s.server.url("origin.git");
    let tip = s.repo.commit_files_signed(&s.alice, &[("m.yaml", "v: 1\n")], "tip").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let opts = FetchOptions::new("main", FETCH_TIMEOUT);
    assert_eq!(mirror.fetch(std::slice::from_ref(&url), &opts).unwrap().tip, oid(&tip));

    let zeros = vec![0u8; (veza_source::fetch::MAX_OBJECT_BYTES + (1 << 20)) as usize];
    std::fs::write(s.repo.work().join("zeros.bin"), &zeros).unwrap();
    drop(zeros);
    let bomb = s.repo.commit_signed(&s.alice, "a blob of 65 MiB of zeros").unwrap();
    let e = mirror.fetch(std::slice::from_ref(&url), &opts).unwrap_err().to_string();
    assert!(e.contains("too large"), "{e}");
    assert!(!mirror.exists(oid(&bomb)), "nothing of the refused pack is kept");

    // The branch force-pushed back past it: the next commit is fetched (the forge sends
    // only what the mirror lacks, which is not the blob).
    s.repo.git(&["reset", "-q", "--hard", &tip]).unwrap();
    s.repo.git(&["push", "-q", "-f", "origin", "HEAD:main"]).unwrap();
    let clean =
        s.repo.commit_files_signed(&s.alice, &[("m.yaml", "v: 2\n")], "without it").unwrap();
    assert_eq!(mirror.fetch(&[url], &opts).unwrap().tip, oid(&clean));
    assert!(!mirror.exists(oid(&bomb)));
}

/// A commit whose tree `name/name/…/f` nests `levels` directories, written as raw objects
/// (no file system limit applies), at the tip of `main` in the served repository.
fn nested_tree_commit(s: &Small, name: &str, levels: usize) -> String {
    let raw_id = |hex: &str| -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    };
    let entry = |mode: &str, name: &str, id: &str| {
        let mut raw = format!("{mode} {name}\0").into_bytes();
        raw.extend(raw_id(id));
        raw
    };
    let blob = s.repo.write_raw_object("blob", b"x\n").expect("raw object");
    let mut tree =
        s.repo.write_raw_object("tree", &entry("100644", "f", &blob)).expect("raw object");
    for _ in 0..levels {
        tree = s.repo.write_raw_object("tree", &entry("40000", name, &tree)).expect("raw object");
    }
    let commit = format!(
        "tree {tree}\nauthor A <a@example.com> 1700000000 +0000\ncommitter A <a@example.com> 1700000000 +0000\n\nnested\n"
    );
    let id = s.repo.write_raw_object("commit", commit.as_bytes()).expect("raw object");
    s.repo.set_ref("refs/heads/main", &id).expect("raw object");
    id
}

/// The tree walks (the files of a commit, the paths a commit changes) recurse once per
/// directory level and keep every path: a tree nested deeper than 64 levels, or with a
/// path longer than 4096 bytes, is refused by name instead of overflowing the stack or
/// the memory; a tree within the bounds is read.
#[test]
fn tree_walks_refuse_deep_nesting_and_long_paths() {
    let s = small();
    let url = s.server.url("origin.git");
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let opts = FetchOptions::new("main", FETCH_TIMEOUT);
    let cases = [
        ("d", 63, None),
        ("d", 64, Some("directories nested deeper than 64")),
        // The forge's git refuses to send trees much deeper (`core.maxTreeDepth`).
        ("d", 1000, Some("directories nested deeper than 64")),
        (&"n".repeat(250)[..], 17, Some("a path longer than 4096 bytes")),
    ];
    for (name, levels, refused) in cases {
        let tip = nested_tree_commit(&s, name, levels);
        let fetched = mirror.fetch(std::slice::from_ref(&url), &opts);
        assert_eq!(
            fetched.map(|f| f.tip).map_err(|e| format!("{levels} x {name}: {e}")),
            Ok(oid(&tip))
        );
        let files = mirror.list_files(oid(&tip), 10_000);
        let changed = mirror.changed_paths(None, oid(&tip), 10_000);
        match refused {
            None => {
                let files = files.unwrap();
                assert_eq!(files.len(), 1, "{files:?}");
                assert_eq!(changed.unwrap(), files.keys().cloned().collect::<Vec<_>>());
            }
            Some(why) => {
                for e in [files.map(|_| ()).unwrap_err(), changed.map(|_| ()).unwrap_err()] {
                    let e = e.to_string();
                    assert!(e.contains(why) && e.contains(&tip), "{levels} x {name}: {e}");
                }
            }
        }
    }
}

/// PR heads for previews: fetched by their own call into `refs/veza-preview/pull/<N>/head`,
/// only well-formed PR refs, within the caps; the branch's tip is never read from there;
/// a head's approval tags are fetched on demand; the branch's history tells merged heads.
#[test]
fn pr_heads_are_fetched_into_their_own_namespace_within_caps() {
    let s = small();
    let url = s.server.url("origin.git");
    let base = s.repo.commit_files_signed(&s.alice, &[("m.yaml", "v: 1\n")], "base").unwrap();
    let tip = s.repo.commit_files_signed(&s.alice, &[("m.yaml", "v: 2\n")], "tip").unwrap();
    s.repo.git(&["checkout", "-q", "-b", "feature", &base]).unwrap();
    let pr = s.repo.commit_files_signed(&s.bob, &[("m.yaml", "v: 3\n")], "a PR").unwrap();
    s.repo.checkout("main").unwrap();
    for (name, id) in [
        ("refs/pull/1/head", &base),
        ("refs/pull/2/head", &pr),
        ("refs/pull/x/y/head", &pr),
        ("refs/pull/3/merge", &tip),
        // A PR head named like the branch: never taken for it.
        ("refs/pull/main/head", &pr),
    ] {
        s.repo.git(&["push", "-q", "origin", &format!("{id}:{name}")]).unwrap();
    }
    s.repo.approve(&s.forgejo, &pr).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let options = FetchOptions::new("main", FETCH_TIMEOUT);
    let remotes = std::slice::from_ref(&url);
    assert_eq!(mirror.fetch(remotes, &options).unwrap().tip, oid(&tip));
    assert!(!mirror.exists(oid(&pr)), "the branch's fetch brings no PR");

    let pulls = mirror.fetch_pull_heads(remotes, &options).unwrap();
    assert_eq!(pulls.url, url);
    let heads: Vec<(u64, String)> =
        pulls.heads.iter().map(|h| (h.number, h.head.to_string())).collect();
    assert_eq!(heads, [(1, base.clone()), (2, pr.clone())]);
    assert!(mirror.exists(oid(&pr)));
    assert_eq!(mirror.resolve("main").unwrap(), oid(&tip), "the branch is read as before");
    assert_eq!(mirror.fetch(remotes, &options).unwrap().tip, oid(&tip));
    // Its approvals come only when asked for.
    assert!(mirror.tags_pointing_at(oid(&pr), 10).unwrap().is_empty());
    mirror.fetch_approvals_of(&url, oid(&pr), &options).unwrap();
    assert_eq!(mirror.tags_pointing_at(oid(&pr), 10).unwrap().len(), 1);
    // The branch's history: PR 1's head is merged, PR 2's is not.
    let history = mirror.ancestors(oid(&tip), 1000).unwrap();
    assert!(history.contains(&oid(&base)) && !history.contains(&oid(&pr)));
    assert_eq!(mirror.ancestors(oid(&tip), 1).unwrap().len(), 1, "the walk is capped");
    // Every ref under refs/pull/ the remote advertises counts against source.max_refs.
    let capped = FetchOptions { max_refs: 4, ..options.clone() };
    let e = mirror.fetch_pull_heads(remotes, &capped).unwrap_err().to_string();
    assert!(e.contains("advertised 5 refs, above the cap of 4 (source.max_refs)"), "{e}");
    // A repository without PRs has no heads to preview.
    let empty = small();
    empty.repo.commit_files_signed(&empty.alice, &[("m.yaml", "v: 1\n")], "only").unwrap();
    let mut other = Mirror::open_or_init(&dir.path().join("o.git")).unwrap();
    let pulls = other.fetch_pull_heads(&[empty.server.url("origin.git")], &options).unwrap();
    assert!(pulls.heads.is_empty());
}

#[test]
fn remotes_are_tried_in_order_and_a_stalled_one_is_bounded() {
    let s = small();
    let tip = s.repo.commit_files_signed(&s.alice, &[("a.yaml", "a\n")], "a").unwrap();
    let stalled_dir = tempfile::tempdir().unwrap();
    let stalled = GitHttpServer::start(stalled_dir.path()).unwrap();
    stalled.set_fault(Fault::Stall);
    let broken = GitHttpServer::start(stalled_dir.path()).unwrap();
    broken.set_fault(Fault::Error500);
    let down = GitHttpServer::start(stalled_dir.path()).unwrap();
    down.set_fault(Fault::Down);

    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let remotes = vec![
        refused_url("origin.git").unwrap(),
        stalled.url("origin.git"),
        broken.url("origin.git"),
        down.url("origin.git"),
        s.server.url("missing.git"),
        s.server.url("origin.git"),
    ];
    let opts = FetchOptions::new("main", Duration::from_secs(2));
    let started = Instant::now();
    let fetched = mirror.fetch(&remotes, &opts).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(fetched.tip, oid(&tip));
    assert_eq!(fetched.url, s.server.url("origin.git"));
    assert_eq!(fetched.failures.len(), 5, "{:#?}", fetched.failures);
    assert!(
        fetched.failures[1].reason.contains("did not finish within"),
        "{:?}",
        fetched.failures[1]
    );
    assert!(elapsed < Duration::from_secs(15), "took {elapsed:?}");
    eprintln!("remote failures, as an operator sees them:");
    for f in &fetched.failures {
        eprintln!("  {}: {}", f.url, f.reason);
    }

    // Branch missing on the only remote, then every remote failing.
    let err =
        mirror.fetch(&[s.server.url("origin.git")], &FetchOptions::new("nope", FETCH_TIMEOUT));
    match err {
        Err(FetchError::AllRemotesFailed { failures }) => {
            assert!(failures[0].reason.contains("has no branch `nope`"), "{failures:?}")
        }
        other => panic!("expected AllRemotesFailed, got {other:?}"),
    }
    let err = mirror.fetch(&remotes[..2], &opts).unwrap_err().to_string();
    assert!(err.starts_with("all 2 remote(s) failed"), "{err}");
}

#[test]
fn files_are_read_from_the_verified_tree_with_caps() {
    let s = small();
    s.repo.write("manifests/prod.yaml", "replicas: 3\n").unwrap();
    s.repo.write("big.bin", &"x".repeat(100_000)).unwrap();
    std::os::unix::fs::symlink("manifests/prod.yaml", s.repo.work().join("link.yaml")).unwrap();
    let c = s.repo.commit_signed(&s.alice, "files").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut mirror = Mirror::open_or_init(&dir.path().join("m.git")).unwrap();
    let tip =
        mirror.fetch(&[s.repo.file_url()], &FetchOptions::new("main", FETCH_TIMEOUT)).unwrap().tip;
    assert_eq!(tip, oid(&c));
    assert_eq!(mirror.read_file(tip, "manifests/prod.yaml", 1024).unwrap(), b"replicas: 3\n");
    let too_big = mirror.read_file(tip, "big.bin", 99_999).unwrap_err();
    assert!(matches!(too_big, FetchError::FileTooLarge { size: 100_000, .. }), "{too_big}");
    assert!(too_big.to_string().contains("above the limit"), "{too_big}");
    assert!(matches!(mirror.read_file(tip, "link.yaml", 1024), Err(FetchError::NotAFile { .. })));
    assert!(matches!(mirror.read_file(tip, "manifests", 1024), Err(FetchError::NotAFile { .. })));
    for missing in
        ["nope.yaml", "manifests/../big.bin", "/manifests/prod.yaml", "manifests/prod.yaml/x"]
    {
        assert!(
            matches!(mirror.read_file(tip, missing, 1024), Err(FetchError::PathNotFound { .. })),
            "{missing}"
        );
    }
    let files = mirror.list_files(tip, 100).unwrap();
    assert_eq!(files.keys().collect::<Vec<_>>(), ["big.bin", "link.yaml", "manifests/prod.yaml"]);
    assert!(matches!(mirror.list_files(tip, 2), Err(FetchError::TooManyFiles { limit: 2, .. })));
}

#[test]
fn real_git_client_through_the_test_server_with_gzip_bodies() {
    let s = small();
    for i in 0..40 {
        s.repo.write("manifests/dev.yaml", &format!("n: {i}\n")).unwrap();
        s.repo.commit_signed(&s.alice, &format!("c{i}")).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("clone");
    let url = s.server.url("origin.git");
    veza_testkit::repo::git().args(["clone", "-q", &url]).arg(&clone).run().unwrap();
    // Local history the server lacks makes the next request carry many "have" lines,
    // which git's HTTP client gzips (bodies over 1 KiB).
    for i in 0..40 {
        veza_testkit::repo::git()
            .current_dir(&clone)
            .args([
                "-c",
                "user.name=x",
                "-c",
                "user.email=x@example.com",
                "commit",
                "-q",
                "--allow-empty",
            ])
            .args(["-m", &format!("local {i}")])
            .run()
            .unwrap();
    }
    let tip = s.repo.commit_signed(&s.bob, "new").unwrap();
    veza_testkit::repo::git().current_dir(&clone).args(["fetch", "-q", "origin"]).run().unwrap();
    let fetched = veza_testkit::repo::git()
        .current_dir(&clone)
        .args(["rev-parse", "origin/main"])
        .run_stdout()
        .unwrap();
    assert_eq!(fetched.trim(), tip);
    let requests = s.server.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("POST") && r.contains(" gzip ")),
        "{requests:#?}"
    );
}

/// The one acceptance decision (`veza_source::accept`), over real signed commits in a real
/// mirror: each case is a tip, the last applied commit and the trust inputs, and the
/// verdict is `Accepted` (with this host's manifests only) or a `Rejected` of one kind.
#[test]
fn acceptance_is_one_decision_with_one_kind_per_refusal() {
    use veza_source::{Acceptance, Base, Refusal, accept};
    let s = small();
    let manifest = |host: &str, name: &str| {
        format!(
            "apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {{name: {name}, host: {host}}}\n"
        )
    };
    let paths = ["manifests/prod.yaml".to_string(), "manifests/other.yaml".to_string()];
    let files = |prod: &str| {
        [
            ("manifests/prod.yaml", prod.to_string()),
            ("manifests/other.yaml", manifest("r630", "other")),
        ]
    };
    let f1 = files(&manifest("r720", "prod"));
    let f1: Vec<(&str, &str)> = f1.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let a = s.repo.commit_files_signed(&s.forgejo, &f1, "A").unwrap();
    let broken = files("apiVersion: veza-agent/v1\nkind: Environment\nmetadata: {name: prod}\n");
    let broken: Vec<(&str, &str)> = broken.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let b = s.repo.commit_files_signed(&s.forgejo, &broken, "B, invalid").unwrap();
    let mirror_dir = s._tmp.path().join("mirror.git");
    let mut mirror = Mirror::open_or_init(&mirror_dir).unwrap();
    let url = s.server.url("origin.git");
    mirror.fetch(std::slice::from_ref(&url), &FetchOptions::new("main", FETCH_TIMEOUT)).unwrap();
    let untrusted = s._tmp.path().join("untrusted_signers");
    std::fs::write(&untrusted, veza_testkit::repo::allowed_signers(&[("bob@example.com", &s.bob)]))
        .unwrap();
    let missing_policy = s._tmp.path().join("no-policy.yaml").display().to_string();
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    // (case, tip, base: the last applied commit or a preview's, signers file, policy,
    // verdict: Ok(signer) or Err(kind))
    type Case<'a> =
        (&'a str, &'a str, Base<'a>, &'a Path, Option<&'a str>, Result<&'a str, Refusal>);
    let table: [Case; 12] = [
        ("first sync", &a, Base::Nothing, &s.signers_file, None, Ok("forgejo@forge.example")),
        (
            "same commit again",
            &a,
            Base::Descends(&a),
            &s.signers_file,
            None,
            Ok("forgejo@forge.example"),
        ),
        (
            "invalid manifests",
            &b,
            Base::Descends(&a),
            &s.signers_file,
            None,
            Err(Refusal::InvalidManifests),
        ),
        (
            "rewind to an older commit",
            &a,
            Base::Descends(&b),
            &s.signers_file,
            None,
            Err(Refusal::Rollback),
        ),
        (
            "last applied never seen",
            &a,
            Base::Descends(unknown),
            &s.signers_file,
            None,
            Err(Refusal::Rollback),
        ),
        ("untrusted signer", &a, Base::Nothing, &untrusted, None, Err(Refusal::Signature)),
        (
            "policy unreadable",
            &a,
            Base::Nothing,
            &s.signers_file,
            Some(&missing_policy),
            Err(Refusal::Policy),
        ),
        // A PR head's preview: no ancestry is required, every other check holds.
        (
            "preview of an older commit",
            &a,
            Base::Compare(&b),
            &s.signers_file,
            None,
            Ok("forgejo@forge.example"),
        ),
        (
            "preview, base not in the mirror",
            &a,
            Base::Compare(unknown),
            &s.signers_file,
            None,
            Ok("forgejo@forge.example"),
        ),
        (
            "preview by an untrusted signer",
            &a,
            Base::Compare(&b),
            &untrusted,
            None,
            Err(Refusal::Signature),
        ),
        (
            "preview, policy unreadable",
            &a,
            Base::Compare(&b),
            &s.signers_file,
            Some(&missing_policy),
            Err(Refusal::Policy),
        ),
        (
            "preview of invalid manifests",
            &b,
            Base::Compare(&a),
            &s.signers_file,
            None,
            Err(Refusal::InvalidManifests),
        ),
    ];
    for (case, tip, last, signers, policy, want) in table {
        let acceptance = Acceptance {
            policy_since: veza_source::PolicySince::Base,
            allowed_signers: signers,
            policy,
            base: last,
            manifests: &paths,
            host: "r720",
            max_refs: 100,
            now: now(),
            identities: None,
        };
        match (accept(&mirror, oid(tip), &acceptance), want) {
            (Ok(accepted), Ok(signer)) => {
                assert_eq!((accepted.commit(), accepted.signer()), (tip, signer), "{case}");
                let names: Vec<&str> =
                    accepted.manifests().iter().map(|(_, m)| m.metadata.name.as_str()).collect();
                assert_eq!(names, ["prod"], "{case}: only this host's manifests");
            }
            (Err(rejected), Err(kind)) => {
                assert_eq!(rejected.kind, kind, "{case}: {}", rejected.reason);
                assert_eq!(rejected.commit, tip, "{case}");
                assert!(rejected.reason.starts_with(kind.prefix()), "{case}: {}", rejected.reason);
            }
            (got, want) => panic!("{case}: got {got:?}, wanted {want:?}"),
        }
    }
}
