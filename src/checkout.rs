//! Git checkouts: one bare mirror per repository URL and one detached worktree per commit under test.
//!
//! Layout under the data directory:
//!
//! - `mirrors/<identity>-<hash>.git`: a bare repository per URL. `<identity>` is a sanitized
//!   `host-owner-repo` for humans, `<hash>` a 64-bit FNV-1a of the URL (userinfo removed), so two URLs
//!   never share a mirror and no URL can name a path outside `mirrors/`.
//! - `worktrees/<identity>-<sha12>-<pid>-<n>`: a detached `git worktree` of one commit, alive as long
//!   as its [`Worktree`] value, or kept as a *spare* once the work that read it is over
//!   ([`Worktree::release`]). The next checkout of the same mirror resets a spare to its commit
//!   (`git checkout --force` and `git clean -ffdx` change only the files that differ, where a fresh
//!   worktree writes every file: about 1 s for nixpkgs on an idle disk, far more on a busy one) and
//!   renames it for that commit. A spare whose `.git` file no longer names its mirror is removed, never
//!   reset. At most `[git] spare_worktrees` per mirror are kept, only in memory: a restart deletes them
//!   with every other stale worktree.
//!
//! We fetch commit ids, never branch names: what is tested is exactly the commit that was asked for.
//! `git fetch <url> <sha>` is tried first (any protocol-v2 server, GitHub included, serves reachable
//! commits); if the server refuses an unadvertised object, all branches and `refs/pull/*/head` are
//! fetched instead and the commit must then exist. Calls for one mirror are serialized by an async mutex
//! (git's own lock files would make concurrent fetches fail); different mirrors proceed in parallel.
//!
//! git runs with a deterministic, sealed environment: the allow-list every child gets
//! (`nix::process::env`: `PATH`, locale, a scratch `HOME` and `TMPDIR`) plus only the `GIT_SSH*`,
//! `GIT_SSL_CA*`, `SSL_CERT_*` and `SSH_AUTH_SOCK` variables an operator may need; system and global config are ignored, prompts are disabled,
//! hooks, automatic gc and attribute files are off, and only the one transport protocol the URL needs is
//! allowed (`file` only for `file://` URLs and absolute paths). A [`GitAuth`] token reaches git only
//! through the environment (never argv, never a config file), only over `https` to the configured host,
//! and is redacted from every message.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smol::lock::Mutex as AsyncMutex;

use crate::secret::Secret;
use crate::text::ellipsis_chars;

/// Where a mirror keeps the commits it fetched by id (`refs/ekaci/seen/<sha>`).
const SEEN_REFS: &str = "refs/ekaci/seen/";
/// How many of those refs a mirror keeps (the most recent commits).
const SEEN_KEPT: usize = 64;

/// Longest git message kept in an error, in characters (the tail is kept: git's `fatal:` line is last).
const MAX_MESSAGE_CHARS: usize = 2000;

/// Environment variables git inherits beyond the sealed allow-list every child gets: how to run ssh, and
/// which certificate authorities to trust for HTTPS (a GitHub Enterprise host behind a private CA).
/// `GIT_SSL_NO_VERIFY` is deliberately not among them: a token must never go to an unverified host.
const KEPT_GIT_VARS: &[&str] = &[
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_SSH_VARIANT",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SSH_AUTH_SOCK",
];

/// Credentials for fetching over HTTPS, e.g. a GitHub App installation token.
///
/// The token is sent as `Authorization: Basic base64(x-access-token:TOKEN)` through git's
/// `GIT_CONFIG_COUNT` environment variables, and only when the URL is `https://` and its host name
/// (port ignored, case-insensitive) equals `host`.
#[derive(Clone, Debug)]
pub struct GitAuth {
    pub token: Secret,
    pub host: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error(
        "{sha:?} is not a commit id: expected 40 or 64 hexadecimal digits (branch and tag names are not fetched)"
    )]
    InvalidSha { sha: String },
    #[error("refusing repository URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("cannot create the mirror of {url} at {path}: {message}")]
    Mirror { url: String, path: PathBuf, message: String },
    #[error("cannot fetch {sha} from {url}: {message}")]
    Fetch { url: String, sha: String, message: String },
    #[error(
        "cannot fetch {sha} from {url}: git did not finish within {seconds} s ([git] timeout_seconds) and was killed"
    )]
    FetchTimedOut { url: String, sha: String, seconds: u64 },
    #[error("cannot check out {sha} of {url} into {path}: {message}")]
    Worktree { url: String, sha: String, path: PathBuf, message: String },
    #[error("cannot remove worktree {path}: {message}")]
    Remove { path: PathBuf, message: String },
    #[error("invalid revision {rev:?}: {reason}")]
    InvalidRev { rev: String, reason: &'static str },
    #[error("cannot resolve {rev:?} to a commit in {path}: {message}")]
    Resolve { path: PathBuf, rev: String, message: String },
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// git could not be started (out of file descriptors or processes, say): host trouble, kept as an
    /// `io::Error` so callers can tell it from git's own verdict and retry.
    #[error("cannot run git to {action} {target}: {source}")]
    Spawn { action: &'static str, target: String, source: std::io::Error },
    /// git died for the host's lack of memory: host trouble too.
    #[error("git could not {action} {target}: {source}")]
    OomKilled { action: &'static str, target: String, source: crate::nix::process::host::OomKilled },
}

/// The mirrors and worktrees under one data directory. Cheap to clone; clones share the per-mirror locks.
///
/// Use one `Checkouts` per data directory in a process: the per-mirror locks and the set of live
/// worktrees that [`Checkouts::prune_stale`] spares are per instance.
#[derive(Clone)]
pub struct Checkouts {
    inner: Arc<Inner>,
}

struct Inner {
    mirrors: PathBuf,
    worktrees: PathBuf,
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    /// Worktree directories owned by live [`Worktree`] values of this instance.
    live: Mutex<HashSet<PathBuf>>,
    /// Extra `-c key=value` for every git call; only unit tests set it (to force protocol v0).
    extra_config: Vec<(String, String)>,
    /// How long one git call (a fetch, a worktree checkout, a diff) may run before its process group is
    /// killed (`[git] timeout_seconds`).
    timeout: Duration,
    /// Idle worktrees kept for the next checkout, by mirror name; their paths are in `live` too, so that
    /// no directory scan deletes them.
    spares: Mutex<HashMap<String, Vec<Spare>>>,
    /// How many spares one mirror keeps (`[git] spare_worktrees`; 0 by default outside the server).
    spare_limit: AtomicUsize,
}

/// An idle worktree of a mirror, and since when it is idle (retention removes old ones).
struct Spare {
    path: PathBuf,
    since: Instant,
}

/// `[git] timeout_seconds` by default.
pub const DEFAULT_GIT_TIMEOUT: Duration = Duration::from_secs(600);

impl Inner {
    fn live(&self) -> MutexGuard<'_, HashSet<PathBuf>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spares(&self) -> MutexGuard<'_, HashMap<String, Vec<Spare>>> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the most recently released spare of `mirror` out of the pool (and out of `live`).
    fn pop_spare(&self, mirror: &str) -> Option<PathBuf> {
        let spare = self.spares().get_mut(mirror)?.pop()?;
        self.live().remove(&spare.path);
        Some(spare.path)
    }

    /// Takes the spares of `mirror` that `which` selects out of the pool (and out of `live`).
    fn take_spares(&self, mirror: &str, mut which: impl FnMut(&Spare) -> bool) -> Vec<PathBuf> {
        let mut spares = self.spares();
        let Some(list) = spares.get_mut(mirror) else { return Vec::new() };
        let (taken, kept): (Vec<Spare>, Vec<Spare>) = std::mem::take(list).into_iter().partition(&mut which);
        *list = kept;
        let mut live = self.live();
        taken
            .into_iter()
            .map(|s| {
                live.remove(&s.path);
                s.path
            })
            .collect()
    }
}

impl fmt::Debug for Checkouts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkouts")
            .field("mirrors", &self.inner.mirrors)
            .field("worktrees", &self.inner.worktrees)
            .finish_non_exhaustive()
    }
}

/// One commit checked out in a detached worktree of a mirror.
///
/// Call [`Worktree::remove`] when the work that needs it ends. Dropping it instead deletes the
/// directory synchronously (best effort, logged on failure) and leaves the stale entry in the mirror's
/// `worktrees/` admin dir to `git worktree prune`, which runs before every checkout and in
/// [`Checkouts::prune_stale`]. The fields are read-only so that `Drop` can only delete what was created.
pub struct Worktree {
    path: PathBuf,
    sha: String,
    mirror: PathBuf,
    lock: Arc<AsyncMutex<()>>,
    owner: Arc<Inner>,
    armed: bool,
}

impl fmt::Debug for Worktree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worktree")
            .field("path", &self.path)
            .field("sha", &self.sha)
            .field("mirror", &self.mirror)
            .finish()
    }
}

impl Worktree {
    /// The checked-out tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The commit id, lowercase hex.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// The bare mirror this worktree belongs to.
    pub fn mirror(&self) -> &Path {
        &self.mirror
    }

    /// `git worktree prune` in the mirror: it forgets worktrees whose directory is gone (logged on failure).
    async fn prune_mirror(&self) {
        let mut prune = GitCommand::new(None, &self.owner.extra_config, self.owner.timeout);
        prune.arg("--git-dir").arg(&self.mirror).args(["worktree", "prune"]);
        if let Err(message) = prune.run().await {
            tracing::warn!(mirror = %self.mirror.display(), "git worktree prune failed: {message}");
        }
    }

    /// The work that read this worktree is over: it is kept as a spare for the next checkout of its
    /// mirror when the mirror has fewer than `[git] spare_worktrees` spares, and removed
    /// ([`Worktree::remove`]) otherwise. Only for worktrees nothing untrusted wrote to (evaluations only
    /// read theirs; checks run on a copy): a spare is reset before it is used again, but only after its
    /// `.git` file is found to name its mirror still.
    pub async fn release(mut self) -> Result<(), CheckoutError> {
        let lock = self.lock.clone();
        {
            let _guard = lock.lock().await;
            let limit = self.owner.spare_limit.load(Ordering::Relaxed);
            let mut spares = self.owner.spares();
            let list = spares.entry(mirror_name_of(&self.mirror)).or_default();
            if list.len() < limit {
                list.push(Spare { path: self.path.clone(), since: Instant::now() });
                // It stays in `live`: no directory scan may delete a spare.
                self.armed = false;
                return Ok(());
            }
        }
        self.remove().await
    }

    /// Removes the worktree. Its directory is first renamed out of the way (`<name>.removing`, next to
    /// it) and the mirror told to forget it (`git worktree prune`); its files are then deleted in the
    /// background, so nothing waits for that: on a large checkout (nixpkgs: tens of thousands of files)
    /// deleting can take minutes on a busy disk. A `.removing` directory left by a crash is a stale
    /// worktree like any other ([`Checkouts::prune_stale`], retention). When the rename fails, the
    /// worktree is removed in place: `git worktree remove --force`, then the directory if git left it.
    pub async fn remove(mut self) -> Result<(), CheckoutError> {
        let lock = self.lock.clone();
        let _guard = lock.lock().await;
        let mut trash = self.path.clone().into_os_string();
        trash.push(".removing");
        let trash = PathBuf::from(trash);
        let renamed = {
            let (from, to) = (self.path.clone(), trash.clone());
            smol::unblock(move || std::fs::rename(from, to)).await
        };
        if renamed.is_ok() {
            self.prune_mirror().await;
            self.armed = false;
            self.owner.live().remove(&self.path);
            smol::unblock(move || {
                if let Err(e) = force_remove_dir(&trash) {
                    tracing::warn!(path = %trash.display(), "cannot remove a worktree: {e}");
                }
            })
            .detach();
            return Ok(());
        }
        let mut git = GitCommand::new(None, &self.owner.extra_config, self.owner.timeout);
        git.arg("--git-dir").arg(&self.mirror);
        git.args(["worktree", "remove", "--force", "--"]).arg(&self.path);
        let removed = git.run().await;
        let path = self.path.clone();
        let leftover = smol::unblock(move || force_remove_dir(&path)).await;
        if removed.is_err() {
            self.prune_mirror().await;
        }
        self.armed = false;
        self.owner.live().remove(&self.path);
        match (leftover, removed) {
            (Ok(()), _) => Ok(()),
            (Err(e), Err(failure)) => {
                Err(CheckoutError::Remove { path: self.path.clone(), message: format!("{failure}; {e}") })
            }
            (Err(e), Ok(_)) => Err(CheckoutError::Remove { path: self.path.clone(), message: e.to_string() }),
        }
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = force_remove_dir(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove dropped worktree: {e}");
        }
        self.owner.live().remove(&self.path);
    }
}

impl Checkouts {
    /// Manages `<data_dir>/mirrors` and `<data_dir>/worktrees`; nothing is created until needed.
    pub fn new(data_dir: &Path) -> Checkouts {
        Checkouts::with_config(data_dir, Vec::new(), DEFAULT_GIT_TIMEOUT)
    }

    /// Like [`Checkouts::new`], with every git call (fetches above all) killed, whole process group,
    /// after `timeout`.
    pub fn with_timeout(data_dir: &Path, timeout: Duration) -> Checkouts {
        Checkouts::with_config(data_dir, Vec::new(), timeout)
    }

    fn with_config(data_dir: &Path, extra_config: Vec<(String, String)>, timeout: Duration) -> Checkouts {
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        Checkouts {
            inner: Arc::new(Inner {
                mirrors: data_dir.join("mirrors"),
                worktrees: data_dir.join("worktrees"),
                locks: Mutex::new(HashMap::new()),
                live: Mutex::new(HashSet::new()),
                extra_config,
                timeout,
                spares: Mutex::new(HashMap::new()),
                spare_limit: AtomicUsize::new(0),
            }),
        }
    }

    /// Keeps up to `per_mirror` released worktrees of each mirror as spares ([`Worktree::release`]);
    /// 0 (the default) removes every released worktree.
    pub fn set_spare_worktrees(&self, per_mirror: usize) {
        self.inner.spare_limit.store(per_mirror, Ordering::Relaxed);
    }

    /// `<data_dir>/mirrors`.
    pub fn mirrors_dir(&self) -> &Path {
        &self.inner.mirrors
    }

    /// `<data_dir>/worktrees`.
    pub fn worktrees_dir(&self) -> &Path {
        &self.inner.worktrees
    }

    /// The mirror directory that `repo_url` maps to (whether or not it exists yet).
    pub fn mirror_path(&self, repo_url: &str) -> Result<PathBuf, CheckoutError> {
        Ok(self.inner.mirrors.join(RepoUrl::parse(repo_url)?.mirror_name()))
    }

    fn lock_for(&self, name: &str) -> Arc<AsyncMutex<()>> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    fn git(&self, protocol: Option<&str>) -> GitCommand {
        GitCommand::new(protocol, &self.inner.extra_config, self.inner.timeout)
    }

    /// Checks out commit `sha` of `repo_url` into a fresh detached worktree, fetching it into the
    /// repository's mirror first unless the mirror already has it.
    pub async fn checkout(
        &self,
        repo_url: &str,
        sha: &str,
        auth: Option<&GitAuth>,
    ) -> Result<Worktree, CheckoutError> {
        let sha = validate_sha(sha)?;
        let url = RepoUrl::parse(repo_url)?;
        let name = url.mirror_name();
        let mirror = self.inner.mirrors.join(&name);
        let lock = self.lock_for(&name);
        let _guard = lock.lock().await;

        self.ensure_mirror(&url, &mirror, &sha).await?;
        if !self.has_commit(&mirror, &sha).await {
            self.fetch(&url, &mirror, &sha, auth).await?;
        }

        let dir = self.inner.worktrees.join(worktree_name(&name, &sha));
        while let Some(spare) = self.inner.pop_spare(&name) {
            match self.reset_spare(&mirror, &spare, &sha, &dir).await {
                Ok(()) => {
                    tracing::info!(sha, path = %dir.display(), "checked out into a spare worktree");
                    self.inner.live().insert(dir.clone());
                    return Ok(Worktree {
                        path: dir,
                        sha,
                        mirror,
                        lock: lock.clone(),
                        owner: self.inner.clone(),
                        armed: true,
                    });
                }
                Err(message) => {
                    tracing::warn!(path = %spare.display(), "a spare worktree is removed, not reused: {message}");
                    let s = spare.clone();
                    if let Err(e) = smol::unblock(move || force_remove_dir(&s)).await {
                        tracing::warn!(path = %spare.display(), "cannot remove a spare worktree: {e}");
                    }
                }
            }
        }
        let worktree_error = |message: String| CheckoutError::Worktree {
            url: url.display.clone(),
            sha: sha.clone(),
            path: dir.clone(),
            message,
        };
        let worktrees = self.inner.worktrees.clone();
        smol::unblock(move || std::fs::create_dir_all(&worktrees))
            .await
            .map_err(|e| worktree_error(format!("cannot create {}: {e}", self.inner.worktrees.display())))?;
        // Entries of worktrees whose directory vanished (dropped values, crashes) would otherwise pile up.
        let mut prune = self.git(None);
        prune.arg("--git-dir").arg(&mirror).args(["worktree", "prune"]);
        if let Err(message) = prune.run().await {
            tracing::warn!(mirror = %mirror.display(), "git worktree prune failed: {message}");
        }
        let mut add = self.git(None);
        add.arg("--git-dir").arg(&mirror);
        add.args(["worktree", "add", "--detach", "--quiet", "--"]).arg(&dir).arg(&sha);
        if let Err(failure) = add.run().await {
            let d = dir.clone();
            if let Err(e) = smol::unblock(move || force_remove_dir(&d)).await {
                tracing::warn!(path = %dir.display(), "cannot remove failed worktree: {e}");
            }
            return Err(failure.into_error("check out", &url.display, worktree_error));
        }
        self.inner.live().insert(dir.clone());
        Ok(Worktree { path: dir, sha, mirror, lock: lock.clone(), owner: self.inner.clone(), armed: true })
    }

    /// Resets spare worktree `spare` of `mirror` to commit `sha` (tracked files as in `sha`, every
    /// other file deleted, ignored ones included) and moves it to `dir`. Refused unless its `.git`
    /// file names its admin directory in `mirror` and that names it back ([`spare_admin_dir`]); git
    /// is then told that directory, never left to find it.
    async fn reset_spare(&self, mirror: &Path, spare: &Path, sha: &str, dir: &Path) -> Result<(), String> {
        let admin = {
            let (m, s) = (mirror.to_path_buf(), spare.to_path_buf());
            smol::unblock(move || spare_admin_dir(&m, &s)).await?
        };
        for args in [&["checkout", "--force", "--detach", "--quiet", sha][..], &["clean", "-ffdxq"]] {
            let mut git = self.git(None);
            git.arg("-C").arg(spare).arg("--git-dir").arg(&admin).arg("--work-tree").arg(spare).args(args);
            git.run().await.map_err(|failure| format!("git {}: {failure}", args[0]))?;
        }
        let mut moved = self.git(None);
        moved.arg("--git-dir").arg(mirror).args(["worktree", "move", "--"]).arg(spare).arg(dir);
        moved.run().await.map_err(|failure| format!("git worktree move: {failure}"))?;
        Ok(())
    }

    async fn ensure_mirror(&self, url: &RepoUrl, mirror: &Path, sha: &str) -> Result<(), CheckoutError> {
        if mirror.join("HEAD").is_file() {
            return Ok(());
        }
        let mirror_error = |message: String| CheckoutError::Mirror {
            url: url.display.clone(),
            path: mirror.to_path_buf(),
            message,
        };
        let mirrors = self.inner.mirrors.clone();
        smol::unblock(move || std::fs::create_dir_all(&mirrors))
            .await
            .map_err(|e| mirror_error(format!("cannot create {}: {e}", self.inner.mirrors.display())))?;
        let mut init = self.git(None);
        init.args(["init", "--bare", "--quiet", "--template="]);
        if sha.len() == 64 {
            init.arg("--object-format=sha256");
        }
        init.arg("--").arg(mirror);
        init.run()
            .await
            .map(drop)
            .map_err(|failure| failure.into_error("create the mirror of", &url.display, mirror_error))
    }

    /// The paths that differ between commits `base` and `head` of `repo_url`, from its mirror (both
    /// commits must have been checked out before): `git diff --name-only -z --no-renames`, so a rename
    /// counts as both its old and its new path. Paths are decoded lossily.
    pub async fn changed_paths(
        &self,
        repo_url: &str,
        base: &str,
        head: &str,
    ) -> Result<Vec<String>, CheckoutError> {
        let (base, head) = (validate_sha(base)?, validate_sha(head)?);
        let mirror = self.mirror_path(repo_url)?;
        let mut git = self.git(None);
        git.arg("--git-dir")
            .arg(&mirror)
            .args(["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv"])
            .arg(&base)
            .arg(&head)
            .arg("--");
        let out = git.run().await.map_err(|failure| {
            failure.into_error("diff commits in", mirror.display(), |message| CheckoutError::Resolve {
                path: mirror.clone(),
                rev: format!("{base}..{head}"),
                message,
            })
        })?;
        Ok(out.split('\0').filter(|p| !p.is_empty()).map(str::to_string).collect())
    }

    async fn has_commit(&self, mirror: &Path, sha: &str) -> bool {
        let mut git = self.git(None);
        git.arg("--git-dir").arg(mirror).args(["cat-file", "-t", sha]);
        matches!(git.run().await, Ok(kind) if kind.trim() == "commit")
    }

    /// Deletes the refs of fetched commits beyond the [`SEEN_KEPT`] most recent (by commit date), so
    /// that a mirror keeps what recent fetches negotiate with and old commits can be collected.
    async fn forget_old_seen(&self, mirror: &Path) {
        let mut list = self.git(None);
        list.arg("--git-dir").arg(mirror);
        list.args(["for-each-ref", "--sort=-committerdate", "--format=%(refname)", SEEN_REFS]);
        let Ok(refs) = list.run().await else { return };
        for name in refs.lines().skip(SEEN_KEPT) {
            let mut delete = self.git(None);
            delete.arg("--git-dir").arg(mirror).args(["update-ref", "-d", name]);
            if let Err(e) = delete.run().await {
                tracing::warn!(mirror = %mirror.display(), "cannot delete {name}: {e:?}");
            }
        }
    }

    async fn fetch(
        &self,
        url: &RepoUrl,
        mirror: &Path,
        sha: &str,
        auth: Option<&GitAuth>,
    ) -> Result<(), CheckoutError> {
        let fetch_error = |message: String| CheckoutError::Fetch {
            url: url.display.clone(),
            sha: sha.to_string(),
            message,
        };
        let extra = &self.inner.extra_config;
        let limit = self.inner.timeout;
        let timed_out = |seconds| CheckoutError::FetchTimedOut {
            url: url.display.clone(),
            sha: sha.to_string(),
            seconds,
        };
        // Host trouble keeps its own variants (retried by the pipeline); only git's verdict is a message.
        let host = |failure: GitFailure| failure.into_error("fetch", &url.display, fetch_error);
        // Kept under a ref: the next fetch offers it as a commit the mirror has, so only what is new is
        // sent (without a ref, every fetch sent the whole tree again and the mirror grew by a full pack).
        let keep = format!("+{sha}:{SEEN_REFS}{sha}");
        let first = match fetch_command(extra, url, mirror, &[&keep], false, auth, limit).run().await {
            Ok(_) => {
                if self.has_commit(mirror, sha).await {
                    self.forget_old_seen(mirror).await;
                    return Ok(());
                }
                return Err(fetch_error("the fetched object is not a commit".to_string()));
            }
            Err(GitFailure::TimedOut(seconds)) => return Err(timed_out(seconds)),
            Err(GitFailure::Failed(message)) => message,
            Err(other) => return Err(host(other)),
        };
        tracing::debug!(url = %url.display, sha, "fetching the commit alone failed, fetching all heads: {first}");
        let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/pull/*/head:refs/pull/*/head"];
        if let Err(second) = fetch_command(extra, url, mirror, &refspecs, true, auth, limit).run().await {
            let second = match second {
                GitFailure::TimedOut(seconds) => return Err(timed_out(seconds)),
                GitFailure::Failed(message) => message,
                other => return Err(host(other)),
            };
            return Err(fetch_error(if second == first {
                first
            } else {
                format!("{first}; fetching all branches failed too: {second}")
            }));
        }
        if self.has_commit(mirror, sha).await {
            Ok(())
        } else {
            Err(fetch_error(format!("{first}; not found in any branch or refs/pull/*/head either")))
        }
    }

    /// Startup clean-up: deletes every directory under `worktrees/` not owned by a live [`Worktree`] of
    /// this instance (they belong to a dead process), then runs `git worktree prune` in every mirror.
    /// Returns the number of directories deleted. Only the server calls this, at startup: another
    /// process using the same data directory would lose its worktrees.
    ///
    /// Keeps going after a failure and returns the first one at the end.
    pub async fn prune_stale(&self) -> Result<usize, CheckoutError> {
        let mut first_error = None;
        let mut removed = 0;
        for (path, is_dir) in list_dir(&self.inner.worktrees).await? {
            if self.inner.live().contains(&path) {
                continue;
            }
            let p = path.clone();
            let result =
                smol::unblock(move || if is_dir { force_remove_dir(&p) } else { std::fs::remove_file(&p) })
                    .await;
            match result {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed stale worktree");
                    removed += 1;
                }
                Err(source) => {
                    tracing::warn!(path = %path.display(), "cannot remove stale worktree: {source}");
                    first_error.get_or_insert(CheckoutError::Io { action: "remove", path, source });
                }
            }
        }
        for (mirror, is_dir) in list_dir(&self.inner.mirrors).await? {
            let Some(name) = mirror.file_name().and_then(|n| n.to_str()) else { continue };
            if !is_dir || !name.ends_with(".git") {
                continue;
            }
            let lock = self.lock_for(name);
            let _guard = lock.lock().await;
            let mut git = self.git(None);
            git.arg("--git-dir").arg(&mirror).args(["worktree", "prune"]);
            if let Err(message) = git.run().await {
                tracing::warn!(mirror = %mirror.display(), "git worktree prune failed: {message}");
                first_error
                    .get_or_insert(CheckoutError::Remove { path: mirror, message: message.to_string() });
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }
}

impl Checkouts {
    /// Retention: deletes every directory under `worktrees/` that no live [`Worktree`] of this instance
    /// owns and that was last modified at least `min_age` ago. Returns the count and the bytes freed.
    pub async fn remove_old_worktrees(&self, min_age: std::time::Duration) -> (u64, u64) {
        let (mut count, mut bytes) = (0, 0);
        // Spares idle that long go too; the scan below then finds them like any other.
        let mirrors: Vec<String> = self.inner.spares().keys().cloned().collect();
        for name in mirrors {
            let lock = self.lock_for(&name);
            let _guard = lock.lock().await;
            self.inner.take_spares(&name, |s| s.since.elapsed() >= min_age);
        }
        for (path, is_dir) in list_dir(&self.inner.worktrees).await.unwrap_or_default() {
            if self.inner.live().contains(&path) {
                continue;
            }
            let p = path.clone();
            let freed = smol::unblock(move || -> std::io::Result<Option<u64>> {
                if !crate::retention::older_than(&p, min_age)? {
                    return Ok(None);
                }
                let size = crate::retention::disk_bytes(&p);
                if is_dir {
                    force_remove_dir(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
                Ok(Some(size))
            })
            .await;
            match freed {
                Ok(Some(size)) => {
                    count += 1;
                    bytes += size;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove an old worktree"),
            }
        }
        (count, bytes)
    }

    /// Retention: the mirror directories (`mirrors/*.git`).
    pub async fn mirrors(&self) -> Vec<PathBuf> {
        list_dir(&self.inner.mirrors)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(p, is_dir)| *is_dir && p.extension().is_some_and(|e| e == "git"))
            .map(|(p, _)| p)
            .collect()
    }

    /// Retention: deletes the mirror at `mirror` (a path [`Checkouts::mirrors`] listed) under its lock,
    /// unless a live worktree of this instance was checked out from it. Returns the bytes freed, `None`
    /// when it was kept.
    pub async fn remove_mirror(&self, mirror: &Path) -> std::io::Result<Option<u64>> {
        let Some(name) = mirror.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            return Ok(None);
        };
        if mirror.parent() != Some(self.inner.mirrors.as_path()) {
            return Ok(None);
        }
        let lock = self.lock_for(&name);
        let _guard = lock.lock().await;
        // Its spares are only kept for it.
        for spare in self.inner.take_spares(&name, |_| true) {
            let s = spare.clone();
            if let Err(e) = smol::unblock(move || force_remove_dir(&s)).await {
                tracing::warn!(path = %spare.display(), "cannot remove a spare worktree: {e}");
            }
        }
        let prefix = format!("{}-", name.trim_end_matches(".git"));
        let in_use = self
            .inner
            .live()
            .iter()
            .any(|w| w.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)));
        if in_use {
            return Ok(None);
        }
        let p = mirror.to_path_buf();
        smol::unblock(move || {
            let size = crate::retention::disk_bytes(&p);
            force_remove_dir(&p).map(|()| Some(size))
        })
        .await
    }
}

/// `(path, is_dir)` of each entry of `dir` (symlinks are not dirs); a missing `dir` has no entries.
async fn list_dir(dir: &Path) -> Result<Vec<(PathBuf, bool)>, CheckoutError> {
    let d = dir.to_path_buf();
    let listed = smol::unblock(move || -> std::io::Result<Vec<(PathBuf, bool)>> {
        let entries = match std::fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            out.push((entry.path(), entry.file_type()?.is_dir()));
        }
        Ok(out)
    })
    .await;
    listed.map_err(|source| CheckoutError::Io { action: "list", path: dir.to_path_buf(), source })
}

/// A `file://` URL for a local repository path, for `ekaci eval --repo PATH` (relative paths are made
/// absolute against the current directory; non-UTF-8 bytes are replaced).
pub fn local_url(path: &Path) -> String {
    let absolute = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf());
    format!("file://{}", absolute.to_string_lossy())
}

/// Whether a [`GitAuth`] for `host` would be sent when fetching `repo_url` (an `https://` URL of that
/// host); callers use it to avoid fetching a token that git would not use.
pub fn sends_credentials(repo_url: &str, host: &str) -> bool {
    RepoUrl::parse(repo_url).is_ok_and(|u| u.sends_credentials_to(host))
}

/// Resolves `rev` (`HEAD`, `HEAD~1`, a branch, a short id) to a full commit id in the LOCAL repository
/// at `repo_path`, with `git rev-parse --verify <rev>^{commit}`.
pub async fn resolve_rev(repo_path: &Path, rev: &str) -> Result<String, CheckoutError> {
    let invalid = |reason| CheckoutError::InvalidRev { rev: ellipsis_chars(rev, 200), reason };
    if rev.is_empty() {
        return Err(invalid("it is empty"));
    }
    if rev.starts_with('-') {
        return Err(invalid("it starts with '-'"));
    }
    if rev.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    let mut git = GitCommand::new(None, &[], DEFAULT_GIT_TIMEOUT);
    git.arg("-C").arg(repo_path);
    git.args(["rev-parse", "--verify", "--quiet", "--end-of-options"]).arg(format!("{rev}^{{commit}}"));
    let resolve_error = |message: String| CheckoutError::Resolve {
        path: repo_path.to_path_buf(),
        rev: ellipsis_chars(rev, 200),
        message,
    };
    let out = git.run().await.map_err(|failure| {
        failure.into_error("resolve a revision in", repo_path.display(), |m| {
            resolve_error(if m.starts_with("git exited") { "no such commit".to_string() } else { m })
        })
    })?;
    let sha = out.trim();
    validate_sha(sha)
        .map_err(|_| resolve_error(format!("unexpected git output {:?}", ellipsis_chars(sha, 100))))
}

/// A full commit id, lowercased, or `InvalidSha`.
fn validate_sha(sha: &str) -> Result<String, CheckoutError> {
    let ok = (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(sha.to_ascii_lowercase())
    } else {
        Err(CheckoutError::InvalidSha { sha: ellipsis_chars(sha, 100) })
    }
}

/// A unique worktree directory name: identity, short sha, pid, a process-wide counter.
fn worktree_name(mirror_name: &str, sha: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let identity = mirror_name.trim_end_matches(".git");
    format!("{identity}-{}-{}-{n}", crate::text::short_sha(sha), std::process::id())
}

/// The mirror name (`<identity>-<hash>.git`) of mirror directory `mirror`.
fn mirror_name_of(mirror: &Path) -> String {
    mirror.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The admin directory (`<mirror>/worktrees/<name>`) of worktree `spare`, checked both ways: `.git` in
/// `spare` is a regular file `gitdir: <dir>` with `<dir>` directly under `<mirror>/worktrees`, and
/// that directory's `gitdir` file names `spare/.git`. Anything else means the worktree was changed
/// by someone else, and git must not be run in it.
fn spare_admin_dir(mirror: &Path, spare: &Path) -> Result<PathBuf, String> {
    let dot_git = spare.join(".git");
    let read = |path: &Path| -> Result<String, String> {
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", path.display()));
        }
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let real = |path: &Path| std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()));
    let text = read(&dot_git)?;
    let admin = text
        .strip_prefix("gitdir: ")
        .map(|rest| PathBuf::from(rest.trim_end_matches('\n')))
        .ok_or_else(|| format!("{} does not name a git directory", dot_git.display()))?;
    let admin = real(&admin)?;
    if admin.parent() != Some(real(&mirror.join("worktrees"))?.as_path()) {
        return Err(format!("{} names {}, outside its mirror", dot_git.display(), admin.display()));
    }
    let back = read(&admin.join("gitdir"))?;
    if real(Path::new(back.trim_end_matches('\n')))? != real(&dot_git)? {
        return Err(format!("{} belongs to another worktree", admin.display()));
    }
    Ok(admin)
}

/// Deletes a directory tree, making read-only directories writable if a first attempt fails.
/// A missing directory is not an error.
fn force_remove_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    make_dirs_writable(path);
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn make_dirs_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if !meta.is_dir() {
        return;
    }
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    let _ = std::fs::set_permissions(path, perms);
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            make_dirs_writable(&entry.path());
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

impl Transport {
    fn protocol(self) -> &'static str {
        match self {
            Transport::Https => "https",
            Transport::Http => "http",
            Transport::Ssh => "ssh",
            Transport::Git => "git",
            Transport::File => "file",
        }
    }
}

/// A validated repository URL.
#[derive(Debug)]
struct RepoUrl {
    /// As given: what git is told to fetch from.
    raw: String,
    transport: Transport,
    /// Lowercase host name without userinfo or port; `None` for local repositories.
    host: Option<String>,
    /// The URL without userinfo: the mirror's hash key.
    key: String,
    /// `key` without query or fragment: what messages show.
    display: String,
    /// The repository path part, for the mirror's readable name.
    repo_path: String,
}

impl RepoUrl {
    fn parse(raw: &str) -> Result<RepoUrl, CheckoutError> {
        let reject =
            |reason| CheckoutError::InvalidUrl { url: ellipsis_chars(&strip_userinfo(raw), 200), reason };
        if raw.is_empty() {
            return Err(reject("it is empty"));
        }
        if raw.chars().any(char::is_control) {
            return Err(reject("it contains control characters"));
        }
        if raw.starts_with('-') {
            return Err(reject("it starts with '-'"));
        }
        let scheme_len = raw
            .char_indices()
            .find(|&(i, c)| {
                !(c.is_ascii_alphabetic() || (i > 0 && (c.is_ascii_digit() || "+.-".contains(c))))
            })
            .map_or(raw.len(), |(i, _)| i);
        let after_scheme = &raw[scheme_len..];
        if scheme_len > 0 && after_scheme.starts_with("::") {
            return Err(reject("git remote helpers (<transport>::<address>) are not allowed"));
        }
        let (transport, host, path) = if scheme_len > 0 && after_scheme.starts_with("://") {
            let scheme = raw[..scheme_len].to_ascii_lowercase();
            let rest = &after_scheme[3..];
            let transport = match scheme.as_str() {
                "https" => Transport::Https,
                "http" => Transport::Http,
                "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
                "git" => Transport::Git,
                "file" => Transport::File,
                _ => return Err(reject("only https, http, ssh, git and file URLs are allowed")),
            };
            if transport == Transport::File {
                if !rest.starts_with('/') {
                    return Err(reject("file URLs must be file:///absolute/path"));
                }
                (transport, None, rest.to_string())
            } else {
                let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                let host = host_of(&rest[..end]);
                if host.is_empty() {
                    return Err(reject("it has no host"));
                }
                if host.starts_with('-') {
                    return Err(reject("its host starts with '-'"));
                }
                (transport, Some(host), rest[end..].to_string())
            }
        } else if raw.starts_with('/') {
            (Transport::File, None, raw.to_string())
        } else {
            // git's rule: a ':' before any '/' makes `[user@]host:path` an ssh address.
            match raw.split_once(':') {
                Some((authority, path)) if !authority.contains('/') => {
                    let host = host_of(authority);
                    if host.is_empty() {
                        return Err(reject("it has no host"));
                    }
                    if host.starts_with('-') {
                        return Err(reject("its host starts with '-'"));
                    }
                    (Transport::Ssh, Some(host), path.to_string())
                }
                _ => return Err(reject("local repository paths must be absolute")),
            }
        };
        let key = strip_userinfo(raw);
        let display = key.split(['?', '#']).next().unwrap_or_default().to_string();
        let repo_path = path.split(['?', '#']).next().unwrap_or_default().to_string();
        Ok(RepoUrl { raw: raw.to_string(), transport, host, key, display, repo_path })
    }

    /// `<identity>-<hash>.git`: a single safe path component.
    fn mirror_name(&self) -> String {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(host) = &self.host {
            parts.push(host);
        }
        let path = self.repo_path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let mut tail: Vec<&str> = path.rsplit('/').filter(|s| !s.is_empty()).take(2).collect();
        tail.reverse();
        parts.extend(tail);
        let mut identity = String::new();
        for c in parts.join("-").chars() {
            let c = if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' };
            if identity.len() < 80 {
                identity.push(c);
            }
        }
        let identity = identity.trim_start_matches(['.', '-', '_']);
        let identity = if identity.is_empty() { "repo" } else { identity };
        format!("{identity}-{:016x}.git", fnv1a64(self.key.as_bytes()))
    }

    /// Whether credentials for `host` are sent to this URL: only over https, only to that host.
    fn sends_credentials_to(&self, host: &str) -> bool {
        self.transport == Transport::Https
            && self.host.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(host.trim()))
    }

    /// The `Authorization` header value for `auth`, if it applies to this URL.
    fn auth_header(&self, auth: Option<&GitAuth>) -> Option<Secret> {
        let auth = auth?;
        if auth.token.is_empty() || !self.sends_credentials_to(&auth.host) {
            return None;
        }
        let credentials = format!("x-access-token:{}", auth.token.expose());
        Some(Secret::new(format!("Authorization: Basic {}", base64(credentials.as_bytes()))))
    }
}

/// The lowercase host of an authority `[userinfo@]host[:port]` (IPv6 literals keep their brackets).
fn host_of(authority: &str) -> String {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if hostport.starts_with('[') {
        hostport.find(']').map_or(hostport, |i| &hostport[..=i])
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    host.to_ascii_lowercase()
}

/// `scheme://user:pass@host/...` → `scheme://host/...`; other forms are returned unchanged.
fn strip_userinfo(url: &str) -> String {
    let Some(i) = url.find("://") else { return url.to_string() };
    let (head, rest) = url.split_at(i + 3);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{head}{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// 64-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`, so mirror names survive upgrades.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether one of the server's environment variables reaches git: the sealed allow-list every child gets
/// (`nix::process::env`, which sets its own `HOME`) and [`KEPT_GIT_VARS`]; nothing else (no `GIT_DIR`, no
/// askpass program, no secret).
fn inherited_by_git(key: &std::ffi::OsStr) -> bool {
    let sealed = crate::nix::process::env::INHERITED_VARS.iter().any(|k| key == *k);
    sealed || KEPT_GIT_VARS.iter().any(|k| key == *k)
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `git fetch` of `refspecs` from `url` into `mirror`, with the auth header in the environment.
fn fetch_command(
    extra_config: &[(String, String)],
    url: &RepoUrl,
    mirror: &Path,
    refspecs: &[&str],
    prune: bool,
    auth: Option<&GitAuth>,
    limit: Duration,
) -> GitCommand {
    let mut git = GitCommand::new(Some(url.transport.protocol()), extra_config, limit);
    let header = url.auth_header(auth);
    if let Some(header) = header {
        git.env.push(("GIT_CONFIG_COUNT", Secret::new("1")));
        git.env.push(("GIT_CONFIG_KEY_0", Secret::new("http.extraHeader")));
        if let Some(auth) = auth {
            git.redact.push(auth.token.clone());
        }
        if let Some(encoded) = header.expose().strip_prefix("Authorization: Basic ") {
            git.redact.push(Secret::new(encoded));
        }
        git.env.push(("GIT_CONFIG_VALUE_0", header));
    }
    // A password in the URL itself is the caller's choice, but it never goes into a message.
    if url.raw != url.key {
        git.replace.push((url.raw.clone(), url.key.clone()));
    }
    git.arg("--git-dir").arg(mirror);
    git.args(["fetch", "--no-tags", "--quiet", "--no-auto-gc", "--no-write-fetch-head"]);
    git.arg("--no-recurse-submodules");
    if prune {
        git.arg("--prune");
    }
    git.arg("--");
    git.arg(&url.raw);
    git.args(refspecs.iter().copied());
    git
}

/// Why a git call failed.
#[derive(Debug)]
enum GitFailure {
    /// git's cleaned-up message.
    Failed(String),
    /// Over its time limit (in seconds): its process group was killed.
    TimedOut(u64),
    /// git could not be started or its output not read.
    Spawn(std::io::Error),
    /// The kernel's out-of-memory killer took it.
    OomKilled(crate::nix::process::host::OomKilled),
}

impl fmt::Display for GitFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitFailure::Failed(message) => f.write_str(message),
            GitFailure::TimedOut(seconds) => {
                write!(f, "git did not finish within {seconds} s ([git] timeout_seconds) and was killed")
            }
            GitFailure::Spawn(e) => write!(f, "cannot run git: {e}"),
            GitFailure::OomKilled(e) => e.fmt(f),
        }
    }
}

impl GitFailure {
    /// The checkout error for this failure: `failed` builds it from the message, except that a git that
    /// could not start keeps its `io::Error` ([`CheckoutError::Spawn`]), so host trouble stays
    /// recognisable.
    fn into_error(
        self,
        action: &'static str,
        target: impl fmt::Display,
        failed: impl FnOnce(String) -> CheckoutError,
    ) -> CheckoutError {
        match self {
            GitFailure::Spawn(source) => CheckoutError::Spawn { action, target: target.to_string(), source },
            GitFailure::OomKilled(source) => {
                CheckoutError::OomKilled { action, target: target.to_string(), source }
            }
            other => failed(other.to_string()),
        }
    }
}

/// One git invocation: argv, extra environment (values are secrets: never logged), strings to redact.
struct GitCommand {
    /// How long it may run before its process group is killed.
    limit: Duration,
    args: Vec<OsString>,
    env: Vec<(&'static str, Secret)>,
    redact: Vec<Secret>,
    replace: Vec<(String, String)>,
}

impl GitCommand {
    /// git with the fixed safety configuration; `protocol` is the one transport allowed (none: no
    /// transport at all).
    fn new(protocol: Option<&str>, extra_config: &[(String, String)], limit: Duration) -> GitCommand {
        let mut git =
            GitCommand { limit, args: Vec::new(), env: Vec::new(), redact: Vec::new(), replace: Vec::new() };
        let mut config = vec![
            "protocol.allow=never".to_string(),
            "core.hooksPath=/dev/null".to_string(),
            "core.attributesFile=/dev/null".to_string(),
            "core.fsmonitor=false".to_string(),
            "credential.helper=".to_string(),
            "gc.auto=0".to_string(),
            "maintenance.auto=false".to_string(),
            "advice.detachedHead=false".to_string(),
        ];
        if let Some(protocol) = protocol {
            config.push(format!("protocol.{protocol}.allow=always"));
        }
        config.extend(extra_config.iter().map(|(k, v)| format!("{k}={v}")));
        for c in config {
            git.arg("-c").arg(c);
        }
        git
    }

    fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(&mut self, args: I) -> &mut Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn command(&self) -> smol::process::Command {
        let mut cmd = std::process::Command::new("git");
        cmd.args(&self.args);
        // Its own process group, so a timeout kills git's helpers (remote-https, ssh) too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut cmd = smol::process::Command::from(cmd);
        cmd.env_clear();
        for (key, value) in crate::nix::process::env::sealed_vars() {
            cmd.env(key, value);
        }
        for (key, value) in std::env::vars_os() {
            if inherited_by_git(&key) {
                cmd.env(key, value);
            }
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("LC_ALL", "C");
        for (key, value) in &self.env {
            cmd.env(key, value.expose());
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    /// Runs git; `Ok(stdout)` on success, otherwise why not (git's cleaned-up stderr, the time limit,
    /// or git not starting). Its whole process group is killed when it runs longer than its limit.
    async fn run(&self) -> Result<String, GitFailure> {
        let limit = self.limit;
        let oom_before = smol::unblock(crate::nix::process::builders::read_oom_kills).await;
        let child = match self.command().spawn() {
            Ok(child) => child,
            Err(e) => return Err(GitFailure::Spawn(e)),
        };
        // The child called setpgid(0, 0) before exec: its group id is its pid.
        let group = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw);
        let finished = async { Some(child.output().await) };
        let expired = async {
            smol::Timer::after(limit).await;
            None
        };
        let output = match futures_lite::future::or(finished, expired).await {
            Some(Ok(output)) => output,
            Some(Err(e)) => return Err(GitFailure::Spawn(e)),
            None => {
                // The leader is killed on drop (kill_on_drop) and reaped by async-process; its group
                // (helpers such as git-remote-https or ssh) goes now.
                if let Some(group) = group {
                    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                return Err(GitFailure::TimedOut(limit.as_secs()));
            }
        };
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let status = output.status;
        let oom =
            smol::unblock(move || crate::nix::process::host::OomKilled::check("git", &status, oom_before));
        if let Some(killed) = oom.await {
            return Err(GitFailure::OomKilled(killed));
        }
        let message = self.clean(&String::from_utf8_lossy(&output.stderr));
        Err(GitFailure::Failed(if message.is_empty() {
            format!("git exited with {}", output.status)
        } else {
            message
        }))
    }

    /// Strips ANSI escapes and control characters, redacts secrets, joins lines, bounds the length.
    fn clean(&self, stderr: &str) -> String {
        // Carriage returns (git's progress) and tabs separate words.
        let mut text = crate::text::strip_ansi(&stderr.replace(['\r', '\t'], " "));
        for (from, to) in &self.replace {
            text = text.replace(from.as_str(), to);
        }
        for secret in &self.redact {
            if !secret.is_empty() {
                text = text.replace(secret.expose(), "[redacted]");
            }
        }
        // One line: git's own messages are separated by "; ", their wrapped continuations by a space.
        let mut joined = String::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !joined.is_empty() {
                let starts_message = ["fatal:", "error:", "warning:", "hint:", "remote:"]
                    .iter()
                    .any(|p| line.to_ascii_lowercase().starts_with(p));
                joined.push_str(if starts_message { "; " } else { " " });
            }
            joined.push_str(line);
        }
        let text = joined;
        crate::text::ellipsis_tail_chars(&text, MAX_MESSAGE_CHARS)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_ssh_and_ca_settings_are_inherited_by_git() {
        use std::ffi::OsStr;
        for kept in ["GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "PATH", "SSL_CERT_FILE", "LANG"] {
            assert!(super::inherited_by_git(OsStr::new(kept)), "{kept} is kept");
        }
        for removed in [
            "GIT_SSL_NO_VERIFY",
            "GIT_DIR",
            "GIT_CONFIG_COUNT",
            "GIT_ASKPASS",
            "SSH_ASKPASS",
            "HOME",
            "WEBHOOK_SECRET",
            "GITHUB_TOKEN",
        ] {
            assert!(!super::inherited_by_git(OsStr::new(removed)), "{removed} is removed");
        }
    }

    #[test]
    fn credentials_go_only_to_https_urls_of_their_host() {
        assert!(sends_credentials("https://github.com/o/r.git", "github.com"));
        assert!(sends_credentials("https://GitHub.com:443/o/r.git", "github.com"));
        assert!(sends_credentials("https://127.0.0.1:1/o/r.git", "127.0.0.1"));
        assert!(!sends_credentials("http://github.com/o/r.git", "github.com"), "not over plain http");
        assert!(!sends_credentials("https://github.com.evil.invalid/o/r.git", "github.com"));
        assert!(!sends_credentials("ssh://git@github.com/o/r.git", "github.com"));
        assert!(!sends_credentials("file:///srv/r.git", "github.com"));
        assert!(!sends_credentials("not a url", "github.com"));
    }

    use super::*;

    fn github_auth() -> GitAuth {
        GitAuth { token: Secret::new("ghs_SuperSecretToken123"), host: "github.com".into() }
    }

    fn fetch_for(url: &str, auth: Option<&GitAuth>) -> GitCommand {
        let url = RepoUrl::parse(url).expect("valid url");
        fetch_command(
            &[],
            &url,
            Path::new("/data/mirrors/m.git"),
            &["0".repeat(40).as_str()],
            false,
            auth,
            DEFAULT_GIT_TIMEOUT,
        )
    }

    fn env_of(git: &GitCommand) -> Vec<(String, String)> {
        git.env.iter().map(|(k, v)| (k.to_string(), v.expose().to_string())).collect()
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"x-access-token:abc"), "eC1hY2Nlc3MtdG9rZW46YWJj");
    }

    #[test]
    fn token_goes_to_the_environment_never_to_argv() {
        let auth = github_auth();
        let git = fetch_for("https://github.com/owner/repo.git", Some(&auth));
        let argv: Vec<String> = git.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let encoded = base64(b"x-access-token:ghs_SuperSecretToken123");
        for a in &argv {
            assert!(!a.contains("ghs_SuperSecretToken123"), "token in argv: {argv:?}");
            assert!(!a.contains(&encoded), "encoded token in argv: {argv:?}");
            assert!(!a.to_ascii_lowercase().contains("extraheader"), "header config in argv: {argv:?}");
        }
        let env = env_of(&git);
        assert!(env.contains(&("GIT_CONFIG_COUNT".into(), "1".into())));
        assert!(env.contains(&("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into())));
        assert!(env.contains(&("GIT_CONFIG_VALUE_0".into(), format!("Authorization: Basic {encoded}"))));
    }

    #[test]
    fn token_is_only_sent_over_https_to_the_configured_host() {
        let auth = github_auth();
        for url in [
            "https://gitlab.com/owner/repo.git",
            "https://github.com.evil.example/owner/repo.git",
            "https://github.com@evil.example/owner/repo.git",
            "http://github.com/owner/repo.git",
            "ssh://git@github.com/owner/repo.git",
            "git@github.com:owner/repo.git",
            "file:///srv/github.com/repo",
        ] {
            let git = fetch_for(url, Some(&auth));
            assert!(git.env.is_empty(), "{url} got a header: {:?}", env_of(&git));
        }
        assert!(!fetch_for("https://GitHub.com:443/o/r", Some(&auth)).env.is_empty());
        assert!(fetch_for("https://github.com/o/r", None).env.is_empty());
    }

    #[test]
    fn messages_are_cleaned_bounded_and_redacted() {
        let auth = github_auth();
        let git = fetch_for("https://github.com/o/r", Some(&auth));
        let encoded = base64(b"x-access-token:ghs_SuperSecretToken123");
        let raw = format!(
            "\u{1b}[31mfatal:\u{1b}[0m bad header ghs_SuperSecretToken123 {encoded}\r\n\n  second line\u{7}\n"
        );
        let msg = git.clean(&raw);
        assert_eq!(msg, "fatal: bad header [redacted] [redacted] second line");
        assert_eq!(git.clean("fatal: a\nwrapped\nerror: b\n"), "fatal: a wrapped; error: b");
        let long = "x".repeat(10_000) + "\nfatal: the end";
        let msg = git.clean(&long);
        assert!(msg.chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(msg.ends_with("fatal: the end"));
    }

    #[test]
    fn userinfo_never_reaches_messages() {
        let url = RepoUrl::parse("https://user:hunter2@example.com/o/r.git?x=1").expect("valid");
        assert_eq!(url.display, "https://example.com/o/r.git");
        let git = fetch_command(&[], &url, Path::new("/m.git"), &["HEAD"], false, None, DEFAULT_GIT_TIMEOUT);
        let msg = git.clean("fatal: unable to access 'https://user:hunter2@example.com/o/r.git?x=1/'");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn hostile_urls_are_rejected() {
        for url in [
            "",
            "--upload-pack=evil",
            "-oProxyCommand=evil",
            "../../etc",
            "relative/path",
            "ext::sh -c evil",
            "fd::17",
            "ssh://-oProxyCommand=evil/x",
            "-host:path",
            "ftp://example.com/r",
            "file://host/path",
            "https://example.com/r\n.git",
            "https:///nohost",
        ] {
            assert!(
                matches!(RepoUrl::parse(url), Err(CheckoutError::InvalidUrl { .. })),
                "{url:?} was accepted"
            );
        }
    }

    #[test]
    fn mirror_names_are_one_safe_component_and_distinct() {
        let urls = [
            "https://github.com/owner/repo.git",
            "https://github.com/owner/repo",
            "https://github.com/other/repo.git",
            "https://example.com/owner/repo.git",
            "git@github.com:owner/repo.git",
            "file:///../../etc",
            "/srv/../../../etc/passwd",
            "https://example.com/a/..%2F..%2F..",
            "https://example.com/../../..",
            "https://example.com/",
        ];
        let mut names = HashSet::new();
        for url in urls {
            let name = RepoUrl::parse(url).expect("valid").mirror_name();
            assert!(!name.contains('/') && !name.starts_with('.') && name.ends_with(".git"), "{name}");
            assert!(name.len() < 110, "{name}");
            assert!(names.insert(name.clone()), "{url} collides: {name}");
        }
        let a = RepoUrl::parse("https://github.com/NixOS/nixpkgs.git").expect("valid").mirror_name();
        assert!(a.starts_with("github.com-NixOS-nixpkgs-"), "{a}");
        let b = RepoUrl::parse("https://u:p@github.com/NixOS/nixpkgs.git").expect("valid").mirror_name();
        assert_eq!(a, b, "credentials do not make a new mirror");
    }

    #[test]
    fn futures_can_run_on_any_executor() {
        fn assert_send<T: Send>(_: &T) {}
        let tmp = tempfile::tempdir().expect("tempdir");
        let checkouts = Checkouts::new(tmp.path());
        assert_send(&checkouts.checkout("/x", "main", None));
        assert_send(&checkouts.prune_stale());
        assert_send(&resolve_rev(tmp.path(), "HEAD"));
    }

    #[test]
    fn shas_are_validated() {
        assert!(validate_sha(&"a".repeat(40)).is_ok());
        assert!(validate_sha(&"A".repeat(64)).is_ok_and(|s| s == "a".repeat(64)));
        for bad in ["main", "HEAD", "", &"a".repeat(39), &"g".repeat(40), &"a".repeat(41)] {
            assert!(validate_sha(bad).is_err(), "{bad}");
        }
    }

    fn git_in(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// With protocol v0 a local server refuses unadvertised commits: the fallback must fetch the pull refs.
    #[test]
    fn refused_sha_falls_back_to_fetching_heads_and_pull_refs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        git_in(&src, &["init", "-q"]);
        std::fs::write(src.join("f"), "base").expect("write");
        git_in(&src, &["add", "f"]);
        git_in(&src, &["commit", "-qm", "base"]);
        git_in(&src, &["checkout", "-q", "-b", "pr"]);
        std::fs::write(src.join("f"), "inner").expect("write");
        git_in(&src, &["commit", "-qam", "inner"]);
        let inner = git_in(&src, &["rev-parse", "HEAD"]);
        std::fs::write(src.join("f"), "tip").expect("write");
        git_in(&src, &["commit", "-qam", "tip"]);
        git_in(&src, &["update-ref", "refs/pull/7/head", "HEAD"]);
        git_in(&src, &["checkout", "-q", "main"]);
        git_in(&src, &["branch", "-qD", "pr"]);

        let data = tmp.path().join("data");
        let checkouts =
            Checkouts::with_config(&data, vec![("protocol.version".into(), "0".into())], DEFAULT_GIT_TIMEOUT);
        let url = local_url(&src);
        let wt = smol::block_on(checkouts.checkout(&url, &inner, None)).expect("checkout via fallback");
        assert_eq!(std::fs::read_to_string(wt.path().join("f")).expect("read"), "inner");
        // Only the fallback creates the pull ref in the mirror.
        let mirror_ref = wt.mirror().join("refs/pull/7/head");
        let packed = std::fs::read_to_string(wt.mirror().join("packed-refs")).unwrap_or_default();
        assert!(mirror_ref.exists() || packed.contains("refs/pull/7/head"), "fallback did not run");
        smol::block_on(wt.remove()).expect("remove");

        let unknown = "0123456789abcdef0123456789abcdef01234567";
        let err = smol::block_on(checkouts.checkout(&url, unknown, None)).expect_err("unknown sha");
        let msg = err.to_string();
        assert!(msg.contains(unknown) && msg.contains("not found in any branch"), "{msg}");
    }
}
