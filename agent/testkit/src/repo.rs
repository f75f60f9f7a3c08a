//! Signed git repositories built at test time with real git and OpenSSH.
//!
//! [`SigningKey::generate`] makes a throw-away ed25519 key with `ssh-keygen`;
//! [`RepoBuilder`] drives a bare "origin" repository plus a scratch worktree and makes
//! signed commits (`git -c gpg.format=ssh -c user.signingkey=KEY commit -S`), unsigned
//! commits, Forgejo-style signed merges, signed annotated approval tags and force-pushes,
//! returning object ids. Every command runs through [`veza_host::process::Cmd`], with
//! the host's global and system git config ignored so results do not depend on the machine.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::{Context, Result, bail};
use veza_host::process::Cmd;

/// An ed25519 key pair on disk (test data only).
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// Short name (also the key comment).
    pub name: String,
    /// Private key file (what `user.signingkey` points at).
    pub private: PathBuf,
    /// Public key file (`<private>.pub`).
    pub public: PathBuf,
    /// `ssh-ed25519 AAAA…` without the comment.
    pub public_line: String,
}

impl SigningKey {
    /// `ssh-keygen -t ed25519 -N '' -C <name> -f <dir>/<name>`.
    pub fn generate(dir: &Path, name: &str) -> Result<SigningKey> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let private = dir.join(name);
        let public = dir.join(format!("{name}.pub"));
        for p in [&private, &public] {
            if p.exists() {
                std::fs::remove_file(p).with_context(|| format!("remove old {}", p.display()))?;
            }
        }
        Cmd::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&private)
            .run()?;
        let text = std::fs::read_to_string(&public)
            .with_context(|| format!("read {}", public.display()))?;
        let public_line = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        Ok(SigningKey { name: name.to_string(), private, public, public_line })
    }

    /// `SHA256:…` as printed by `ssh-keygen -l`.
    pub fn fingerprint(&self) -> Result<String> {
        let out = Cmd::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(&self.public)
            .run_stdout()?;
        out.split_whitespace()
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("unexpected ssh-keygen -l output: {out}"))
    }
}

/// One allowed_signers line: `principal [options] ssh-ed25519 AAAA…`.
pub fn allowed_signers_line(principal: &str, key: &SigningKey, options: &str) -> String {
    if options.is_empty() {
        format!("{principal} {}", key.public_line)
    } else {
        format!("{principal} {options} {}", key.public_line)
    }
}

/// allowed_signers text for `(principal, key)` pairs, each with `namespaces="git"`.
pub fn allowed_signers(entries: &[(&str, &SigningKey)]) -> String {
    entries.iter().map(|(p, k)| allowed_signers_line(p, k, "namespaces=\"git\"") + "\n").collect()
}

/// A `git` command with the host's global/system configuration ignored.
pub fn git() -> Cmd {
    Cmd::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
}

/// What `git verify-commit`/`verify-tag` said, for use as an oracle.
#[derive(Debug, Clone)]
pub struct GitVerdict {
    /// Exit status 0.
    pub good: bool,
    /// git's stderr (e.g. `Good "git" signature for alice@example.com with ED25519 key SHA256:…`).
    pub output: String,
}

/// Runs `git -c gpg.ssh.allowedSignersFile=<file> verify-commit|verify-tag <id>` in `repo`.
pub fn git_verify(
    repo: &Path,
    allowed_signers_file: &Path,
    object: &str,
    tag: bool,
) -> Result<GitVerdict> {
    let out = git()
        .arg("-c")
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed_signers_file.display()))
        .args(["-c", "gpg.format=ssh"])
        .arg(if tag { "verify-tag" } else { "verify-commit" })
        .arg(object)
        .current_dir(repo)
        .output()?;
    Ok(GitVerdict {
        good: out.status.success(),
        output: format!("{}{}", out.stdout_str(), out.stderr_str()),
    })
}

/// A bare origin repository and a scratch worktree that pushes to it.
#[derive(Debug)]
pub struct RepoBuilder {
    dir: PathBuf,
    bare: PathBuf,
    work: PathBuf,
    branch: String,
    clock: AtomicI64,
}

impl RepoBuilder {
    /// Creates `<dir>/origin.git` (bare) and `<dir>/work` on branch `main`.
    pub fn new(dir: &Path) -> Result<RepoBuilder> {
        Self::with_name(dir, "origin.git")
    }

    /// Like [`RepoBuilder::new`] with another bare repository name (e.g. to serve several).
    pub fn with_name(dir: &Path, bare_name: &str) -> Result<RepoBuilder> {
        let bare = dir.join(bare_name);
        let work = dir.join(format!("{bare_name}.work"));
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        git().args(["init", "-q", "--bare", "-b", "main"]).arg(&bare).run()?;
        git().args(["init", "-q", "-b", "main"]).arg(&work).run()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(1_700_000_000);
        let b = RepoBuilder {
            dir: dir.to_path_buf(),
            bare,
            work,
            branch: "main".into(),
            // Start an hour back and advance one second per object: distinct, ordered dates.
            clock: AtomicI64::new(now - 3600),
        };
        b.git(&["remote", "add", "origin", &b.bare.display().to_string()])?;
        Ok(b)
    }

    /// The directory holding the bare repository and the worktree.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bare origin repository.
    pub fn bare(&self) -> &Path {
        &self.bare
    }

    /// The scratch worktree.
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// `file://` URL of the bare repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    fn tick(&self) -> String {
        format!("{} +0000", self.clock.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn cmd(&self) -> Cmd {
        let date = self.tick();
        git()
            .current_dir(&self.work)
            .env("GIT_AUTHOR_NAME", "Test Author")
            .env("GIT_AUTHOR_EMAIL", "author@example.com")
            .env("GIT_COMMITTER_NAME", "Test Author")
            .env("GIT_COMMITTER_EMAIL", "author@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
    }

    /// Runs git in the worktree and returns stdout.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        Ok(self.cmd().args(args).run_stdout()?)
    }

    /// Runs git in the bare repository and returns stdout.
    pub fn git_bare(&self, args: &[&str]) -> Result<String> {
        Ok(git().current_dir(&self.bare).args(args).run_stdout()?)
    }

    /// Writes a file into the worktree (creating directories).
    pub fn write(&self, path: &str, content: &str) -> Result<&Self> {
        let full = self.work.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, content).with_context(|| format!("write {}", full.display()))?;
        Ok(self)
    }

    /// Removes a file from the worktree.
    pub fn remove(&self, path: &str) -> Result<&Self> {
        let full = self.work.join(path);
        std::fs::remove_file(&full).with_context(|| format!("remove {}", full.display()))?;
        Ok(self)
    }

    /// The current worktree HEAD.
    pub fn head(&self) -> Result<String> {
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_string())
    }

    fn commit(&self, key: Option<&SigningKey>, message: &str) -> Result<String> {
        self.git(&["add", "-A"])?;
        let mut cmd = self.cmd();
        if let Some(key) = key {
            cmd = cmd
                .args(["-c", "gpg.format=ssh", "-c"])
                .arg(format!("user.signingkey={}", key.private.display()))
                .args(["commit", "-q", "-S", "--allow-empty", "-m", message]);
        } else {
            cmd = cmd.args([
                "-c",
                "commit.gpgsign=false",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                message,
            ]);
        }
        cmd.run()?;
        let id = self.head()?;
        self.push()?;
        Ok(id)
    }

    /// Commits the worktree signed with `key` and pushes; returns the commit id.
    pub fn commit_signed(&self, key: &SigningKey, message: &str) -> Result<String> {
        self.commit(Some(key), message)
    }

    /// Commits the worktree without a signature and pushes; returns the commit id.
    pub fn commit_unsigned(&self, message: &str) -> Result<String> {
        self.commit(None, message)
    }

    /// Writes `files`, commits signed with `key`, pushes; returns the commit id.
    pub fn commit_files_signed(
        &self,
        key: &SigningKey,
        files: &[(&str, &str)],
        message: &str,
    ) -> Result<String> {
        for (path, content) in files {
            self.write(path, content)?;
        }
        self.commit_signed(key, message)
    }

    /// Creates branch `name` at the current HEAD and switches to it.
    pub fn branch(&self, name: &str) -> Result<()> {
        self.git(&["checkout", "-q", "-b", name])?;
        Ok(())
    }

    /// Switches the worktree to an existing branch.
    pub fn checkout(&self, name: &str) -> Result<()> {
        self.git(&["checkout", "-q", name])?;
        Ok(())
    }

    /// Pushes the current branch to origin.
    pub fn push(&self) -> Result<()> {
        let branch = self.git(&["rev-parse", "--abbrev-ref", "HEAD"])?;
        self.git(&["push", "-q", "origin", branch.trim()])?;
        Ok(())
    }

    /// Merges `from` into the current branch as Forgejo does for a PR: a `--no-ff` merge
    /// commit, committer `Forgejo <noreply@forge.example>`, signed with the instance `key`.
    pub fn merge_signed(&self, from: &str, key: &SigningKey, message: &str) -> Result<String> {
        self.cmd()
            .env("GIT_COMMITTER_NAME", "Forgejo")
            .env("GIT_COMMITTER_EMAIL", "noreply@forge.example")
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", key.private.display()))
            .args(["merge", "-q", "--no-ff", "-S", "-m", message, from])
            .run()?;
        let id = self.head()?;
        self.push()?;
        Ok(id)
    }

    /// Creates a signed annotated tag `name` on `target` with `message`, pushes it, and
    /// returns the tag object id.
    pub fn tag_signed(
        &self,
        key: &SigningKey,
        name: &str,
        target: &str,
        message: &str,
    ) -> Result<String> {
        self.cmd()
            .env("GIT_COMMITTER_NAME", &key.name)
            .env("GIT_COMMITTER_EMAIL", format!("{}@example.com", key.name))
            .args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", key.private.display()))
            .args(["tag", "-s", "-m", message, name, target])
            .run()?;
        self.git(&["push", "-q", "origin", &format!("refs/tags/{name}")])?;
        Ok(self.git(&["rev-parse", &format!("refs/tags/{name}")])?.trim().to_string())
    }

    /// Approval tag as the policy expects: `gitops/approve/<commit>/<key name>`, message
    /// `gitops-approve-v1` / `ref: refs/heads/<branch>`; returns the tag object id.
    pub fn approve(&self, key: &SigningKey, commit: &str) -> Result<String> {
        let name = format!("gitops/approve/{commit}/{}", key.name);
        let message = format!("gitops-approve-v1\nref: refs/heads/{}", self.branch);
        self.tag_signed(key, &name, commit, &message)
    }

    /// Withdraws `key`'s approval of `commit`: its tag deleted here and on the remote.
    pub fn withdraw_approval(&self, key: &SigningKey, commit: &str) -> Result<()> {
        let name = format!("gitops/approve/{commit}/{}", key.name);
        self.git(&["tag", "-d", &name])?;
        self.git(&["push", "-q", "origin", &format!(":refs/tags/{name}")])?;
        Ok(())
    }

    /// Resets the worktree branch to `commit` and force-pushes it (history rewrite).
    pub fn force_reset(&self, commit: &str) -> Result<()> {
        self.git(&["reset", "-q", "--hard", commit])?;
        let branch = self.git(&["rev-parse", "--abbrev-ref", "HEAD"])?;
        self.git(&["push", "-q", "--force", "origin", branch.trim()])?;
        Ok(())
    }

    /// Raw bytes of an object (`git cat-file <kind> <id>`).
    pub fn raw_object(&self, kind: &str, id: &str) -> Result<Vec<u8>> {
        Ok(git().current_dir(&self.bare).args(["cat-file", kind, id]).run()?.stdout)
    }

    /// Writes crafted object bytes into the bare repository and returns the id
    /// (`git hash-object -t <kind> -w --stdin --literally`).
    pub fn write_raw_object(&self, kind: &str, raw: &[u8]) -> Result<String> {
        let out = git()
            .current_dir(&self.bare)
            .args(["hash-object", "-t", kind, "-w", "--stdin", "--literally"])
            .stdin(raw.to_vec())
            .run_stdout()?;
        Ok(out.trim().to_string())
    }

    /// Points a ref of the bare repository at `id` (e.g. a crafted commit).
    pub fn set_ref(&self, name: &str, id: &str) -> Result<()> {
        self.git_bare(&["update-ref", name, id])?;
        Ok(())
    }

    /// Builds a commit object by hand with `tree` and `parents`, signed by `key` for SSHSIG
    /// `namespace` (git uses `git`) over exactly those bytes, inserting the `gpgsig` header
    /// where git does. `mutate` may then alter the final bytes (to craft rejection cases).
    /// Writes it into the bare repository and returns its id.
    pub fn craft_signed_commit(
        &self,
        key: &SigningKey,
        namespace: &str,
        tree: &str,
        parents: &[&str],
        message: &str,
        mutate: impl FnOnce(Vec<u8>) -> Vec<u8>,
    ) -> Result<String> {
        let date = self.tick();
        let mut payload = format!("tree {tree}\n");
        for p in parents {
            payload.push_str(&format!("parent {p}\n"));
        }
        payload.push_str(&format!("author Test Author <author@example.com> {date}\n"));
        payload
            .push_str(&format!("committer Test Author <author@example.com> {date}\n\n{message}\n"));
        let armor = ssh_sign(key, namespace, payload.as_bytes())?;
        let header_end = payload.find("\n\n").map(|i| i + 1).context("no blank line")?;
        let mut sig_header = String::from("gpgsig");
        for (i, line) in armor.lines().enumerate() {
            sig_header.push_str(if i == 0 { " " } else { "\n " });
            sig_header.push_str(line);
        }
        sig_header.push('\n');
        let raw = format!("{}{}{}", &payload[..header_end], sig_header, &payload[header_end..]);
        let raw = mutate(raw.into_bytes());
        self.write_raw_object("commit", &raw)
    }
}

/// `len` bytes that do not compress (xorshift64 from `seed`): a blob whose pack is as big
/// as the blob.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `ssh-keygen -Y sign -n <namespace> -f <key>` over `data`; returns the armor.
pub fn ssh_sign(key: &SigningKey, namespace: &str, data: &[u8]) -> Result<String> {
    let out = Cmd::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(&key.private)
        .stdin(data.to_vec())
        .run_stdout()?;
    if !out.starts_with("-----BEGIN SSH SIGNATURE-----") {
        bail!("ssh-keygen -Y sign printed no signature: {out}");
    }
    Ok(out)
}
