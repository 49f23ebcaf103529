//! Integration tests of `eka_ci::checkout` against real git repositories created in temporary directories:
//! checkouts by commit id from `file://` URLs and plain paths, concurrency on one mirror, fork-PR refs,
//! refusals (branch names, unknown commits, hostile URLs), worktree removal, startup pruning, `resolve_rev`.

use crate::common;

use std::path::{Path, PathBuf};

use common::git_in as git;
use eka_ci::checkout::{local_url, resolve_rev, CheckoutError, Checkouts};

/// Writes `content` to `file` and commits it; returns the new commit id.
fn commit(repo: &Path, content: &str) -> String {
    std::fs::write(repo.join("file"), content).expect("write");
    git(repo, &["add", "file"]);
    git(repo, &["commit", "-q", "-m", content]);
    git(repo, &["rev-parse", "HEAD"])
}

/// A repository `<tmp>/src` with commits "one" and "two" on main.
struct Fixture {
    tmp: tempfile::TempDir,
    src: PathBuf,
    one: String,
    two: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        git(&src, &["init", "-q"]);
        let one = commit(&src, "one");
        let two = commit(&src, "two");
        Fixture { tmp, src, one, two }
    }

    fn data(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn checkouts(&self) -> Checkouts {
        Checkouts::new(&self.data())
    }
}

fn read(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("file")).expect("read checked-out file")
}

/// The worktree paths git knows for `mirror`.
fn listed_worktrees(mirror: &Path) -> Vec<PathBuf> {
    let out = git(mirror, &["worktree", "list", "--porcelain"]);
    out.lines().filter_map(|l| l.strip_prefix("worktree ")).map(PathBuf::from).collect()
}

#[test]
fn checks_out_a_commit_by_sha_from_a_file_url() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    assert!(url.starts_with("file:///"), "{url}");
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    assert_eq!(read(wt.path()), "one");
    assert_eq!(wt.sha(), fx.one);
    assert!(wt.path().starts_with(fx.data().join("worktrees")), "{}", wt.path().display());
    assert!(wt.mirror().starts_with(fx.data().join("mirrors")), "{}", wt.mirror().display());
    assert_eq!(git(wt.path(), &["rev-parse", "HEAD"]), fx.one);
    // Detached: no branch is checked out.
    assert_eq!(git(wt.path(), &["rev-parse", "--abbrev-ref", "HEAD"]), "HEAD");
    smol::block_on(wt.remove()).expect("remove");
}

#[test]
fn checks_out_a_commit_by_sha_from_a_plain_path() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let path = fx.src.to_str().expect("utf-8 temp path");
    let wt = smol::block_on(checkouts.checkout(path, &fx.two, None)).expect("checkout");
    assert_eq!(read(wt.path()), "two");
    // Upper-case ids are accepted and normalized.
    let wt1 = smol::block_on(checkouts.checkout(path, &fx.one.to_uppercase(), None)).expect("checkout");
    assert_eq!(wt1.sha(), fx.one);
    assert_eq!(read(wt1.path()), "one");
    assert_eq!(wt.mirror(), wt1.mirror(), "one mirror per URL");
}

#[test]
fn a_commit_already_in_the_mirror_is_not_fetched_again() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("first checkout");
    smol::block_on(wt.remove()).expect("remove");
    std::fs::remove_dir_all(&fx.src).expect("delete the source repository");
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout without fetching");
    assert_eq!(read(wt.path()), "one");
    // While a commit that was never fetched needs the (now gone) source.
    assert!(smol::block_on(checkouts.checkout(&url, &fx.two, None)).is_err());
}

#[test]
fn two_shas_of_one_repository_check_out_concurrently() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let ex = smol::LocalExecutor::new();
    let a = ex.spawn(checkouts.checkout(&url, &fx.one, None));
    let b = ex.spawn(checkouts.checkout(&url, &fx.two, None));
    let (a, b) = smol::block_on(ex.run(async { (a.await, b.await) }));
    let (a, b) = (a.expect("first checkout"), b.expect("second checkout"));
    assert_ne!(a.path(), b.path());
    assert_eq!(read(a.path()), "one");
    assert_eq!(read(b.path()), "two");
    let listed = listed_worktrees(a.mirror());
    assert!(
        listed.contains(&a.path().to_path_buf()) && listed.contains(&b.path().to_path_buf()),
        "{listed:?}"
    );

    // The same commit twice at once is fine as well.
    let c = ex.spawn(checkouts.checkout(&url, &fx.one, None));
    let d = ex.spawn(checkouts.checkout(&url, &fx.one, None));
    let (c, d) = smol::block_on(ex.run(async { (c.await, d.await) }));
    let (c, d) = (c.expect("third checkout"), d.expect("fourth checkout"));
    assert_ne!(c.path(), d.path());
    assert_eq!(read(c.path()), "one");
    assert_eq!(read(d.path()), "one");
}

#[test]
fn a_commit_only_on_a_pull_ref_is_fetchable() {
    let fx = Fixture::new();
    git(&fx.src, &["checkout", "-q", "-b", "fork"]);
    let inner = commit(&fx.src, "fork inner");
    let tip = commit(&fx.src, "fork tip");
    git(&fx.src, &["update-ref", "refs/pull/1/head", &tip]);
    git(&fx.src, &["checkout", "-q", "main"]);
    git(&fx.src, &["branch", "-q", "-D", "fork"]);
    let branches = git(&fx.src, &["branch", "--contains", &tip]);
    assert!(branches.is_empty(), "the PR commit must be on no branch: {branches}");

    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &tip, None)).expect("checkout the PR head");
    assert_eq!(read(wt.path()), "fork tip");
    let wt = smol::block_on(checkouts.checkout(&url, &inner, None)).expect("checkout a PR commit");
    assert_eq!(read(wt.path()), "fork inner");
}

#[test]
fn branch_names_are_refused() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    for rev in ["main", "HEAD", "refs/heads/main", &fx.one[..12], "--upload-pack=x"] {
        let err = smol::block_on(checkouts.checkout(&url, rev, None)).expect_err("not a commit id");
        assert!(matches!(err, CheckoutError::InvalidSha { .. }), "{rev}: {err}");
    }
    assert!(!fx.data().exists(), "nothing is created for a refused request");
}

#[test]
fn an_unknown_sha_is_named_in_the_error() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let unknown = "3f2a0000000000000000000000000000000000ff";
    let err = smol::block_on(checkouts.checkout(&url, unknown, None)).expect_err("unknown commit");
    assert!(matches!(err, CheckoutError::Fetch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(unknown), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("cannot fetch"), "{msg}");
    // No worktree is left behind.
    let worktrees = fx.data().join("worktrees");
    let left = std::fs::read_dir(&worktrees).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0);
}

#[test]
fn errors_never_show_url_credentials() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = "https://user:hunter2@127.0.0.1:9/o/r.git";
    let err = smol::block_on(checkouts.checkout(url, &fx.one, None)).expect_err("nothing listens on port 9");
    let msg = err.to_string();
    assert!(!msg.contains("hunter2") && !msg.contains("user:"), "{msg}");
    assert!(msg.contains("https://127.0.0.1:9/o/r.git") && msg.contains(&fx.one), "{msg}");
}

/// Every path under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn hostile_urls_cannot_escape_the_mirrors_dir() {
    let fx = Fixture::new();
    // The data dir is nested so that `../..` from mirrors/ would still land inside the temp dir.
    let data = fx.tmp.path().join("a/b/data");
    let checkouts = Checkouts::new(&data);
    let marker = fx.tmp.path().join("pwned");
    let before: Vec<PathBuf> = tree(fx.tmp.path()).into_iter().filter(|p| !p.starts_with("a")).collect();
    let refused = [
        "../../etc".to_string(),
        "../../../x".to_string(),
        format!("--upload-pack=touch {}", marker.display()),
        format!("-u touch {}", marker.display()),
        format!("ext::sh -c touch% {}", marker.display()),
        "ssh://-oProxyCommand=touch/x".to_string(),
    ];
    for url in &refused {
        let err = smol::block_on(checkouts.checkout(url, &fx.one, None)).expect_err("hostile url");
        assert!(matches!(err, CheckoutError::InvalidUrl { .. }), "{url}: {err}");
    }
    // Accepted (they are absolute paths) but sanitized into one component under mirrors/.
    for url in
        ["file:///../../etc", "/../../../etc", "file:///tmp/../../x/..", "https://127.0.0.1:9/../../.."]
    {
        let _ = smol::block_on(checkouts.checkout(url, &fx.one, None));
    }
    assert!(!marker.exists(), "a hostile URL ran a command");
    let after: Vec<PathBuf> = tree(fx.tmp.path()).into_iter().filter(|p| !p.starts_with("a")).collect();
    assert_eq!(before, after, "something was created outside the data dir");
    for entry in std::fs::read_dir(&data).expect("data dir") {
        let name = entry.expect("entry").file_name();
        assert!(name == "mirrors" || name == "worktrees", "unexpected {name:?} in the data dir");
    }
    let mirrors: Vec<_> =
        std::fs::read_dir(data.join("mirrors")).expect("mirrors").map(|e| e.expect("entry").path()).collect();
    assert!(!mirrors.is_empty(), "the accepted URLs got mirrors");
    for mirror in mirrors {
        let name = mirror.file_name().and_then(|n| n.to_str()).expect("utf-8 name");
        assert!(name.ends_with(".git") && !name.starts_with('.'), "{name}");
        assert_eq!(checkouts.mirrors_dir(), mirror.parent().expect("parent"));
    }
}

#[test]
fn remove_deletes_the_directory_and_git_forgets_it() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    let (path, mirror) = (wt.path().to_path_buf(), wt.mirror().to_path_buf());
    std::fs::write(path.join("untracked-build-output"), "x").expect("write");
    assert!(listed_worktrees(&mirror).contains(&path));
    smol::block_on(wt.remove()).expect("remove");
    assert!(!path.exists());
    assert!(!listed_worktrees(&mirror).contains(&path));
}

#[test]
fn dropping_a_worktree_deletes_its_directory() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    let (path, mirror) = (wt.path().to_path_buf(), wt.mirror().to_path_buf());
    drop(wt);
    assert!(!path.exists());
    // The admin entry goes at the next checkout of the mirror.
    let _wt = smol::block_on(checkouts.checkout(&url, &fx.two, None)).expect("checkout");
    assert!(!listed_worktrees(&mirror).contains(&path));
}

#[test]
fn prune_stale_cleans_up_after_a_crashed_process() {
    let fx = Fixture::new();
    let url = local_url(&fx.src);
    let crashed = fx.checkouts();
    let wt = smol::block_on(crashed.checkout(&url, &fx.one, None)).expect("checkout");
    let (path, mirror) = (wt.path().to_path_buf(), wt.mirror().to_path_buf());
    std::mem::forget(wt); // the process "crashes": no Drop, no removal
    std::fs::create_dir_all(crashed.worktrees_dir().join("half-created/sub")).expect("mkdir");
    assert!(path.exists() && listed_worktrees(&mirror).contains(&path));

    // The restarted process: its own live worktree must survive the prune.
    let restarted = fx.checkouts();
    let live = smol::block_on(restarted.checkout(&url, &fx.two, None)).expect("checkout");
    let removed = smol::block_on(restarted.prune_stale()).expect("prune");
    assert_eq!(removed, 2);
    assert!(!path.exists());
    assert!(!crashed.worktrees_dir().join("half-created").exists());
    let listed = listed_worktrees(&mirror);
    assert!(!listed.contains(&path), "{listed:?}");
    assert!(live.path().exists() && listed.contains(&live.path().to_path_buf()), "{listed:?}");
    assert_eq!(read(live.path()), "two");
    // Nothing left to do the second time; an empty data dir is fine too.
    assert_eq!(smol::block_on(restarted.prune_stale()).expect("prune"), 0);
    let empty = tempfile::tempdir().expect("tempdir");
    assert_eq!(smol::block_on(Checkouts::new(empty.path()).prune_stale()).expect("prune"), 0);
}

#[test]
fn resolve_rev_reads_a_local_repository() {
    let fx = Fixture::new();
    assert_eq!(smol::block_on(resolve_rev(&fx.src, "HEAD")).expect("HEAD"), fx.two);
    assert_eq!(smol::block_on(resolve_rev(&fx.src, "HEAD~1")).expect("HEAD~1"), fx.one);
    assert_eq!(smol::block_on(resolve_rev(&fx.src, "main")).expect("main"), fx.two);
    assert_eq!(smol::block_on(resolve_rev(&fx.src, &fx.one[..10])).expect("short id"), fx.one);
    let err = smol::block_on(resolve_rev(&fx.src, "--output=/tmp/x")).expect_err("option-like rev");
    assert!(matches!(err, CheckoutError::InvalidRev { .. }), "{err}");
    let err = smol::block_on(resolve_rev(&fx.src, "no-such-branch")).expect_err("unknown rev");
    assert!(
        matches!(err, CheckoutError::Resolve { .. }) && err.to_string().contains("no-such-branch"),
        "{err}"
    );
    let err = smol::block_on(resolve_rev(&fx.src, "HEAD~5")).expect_err("beyond the root");
    assert!(matches!(err, CheckoutError::Resolve { .. }), "{err}");
    let not_a_repo = tempfile::tempdir().expect("tempdir");
    let err = smol::block_on(resolve_rev(not_a_repo.path(), "HEAD")).expect_err("not a repository");
    assert!(err.to_string().contains("not a git repository"), "{err}");
}

#[test]
fn local_url_handles_relative_paths_and_spaces() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("with space");
    std::fs::create_dir(&src).expect("mkdir");
    git(&src, &["init", "-q"]);
    let sha = commit(&src, "spaced");
    let url = local_url(&src);
    assert!(url.starts_with("file:///") && url.ends_with("with space"), "{url}");
    let checkouts = Checkouts::new(&tmp.path().join("data"));
    let wt = smol::block_on(checkouts.checkout(&url, &sha, None)).expect("checkout");
    assert_eq!(read(wt.path()), "spaced");
    assert!(local_url(Path::new("relative")).starts_with("file:///"));
}

#[test]
fn sha256_repositories_check_out_by_64_hex_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    git(&src, &["init", "-q", "--object-format=sha256"]);
    let sha = commit(&src, "sha256");
    assert_eq!(sha.len(), 64);
    let checkouts = Checkouts::new(&tmp.path().join("data"));
    let wt = smol::block_on(checkouts.checkout(&local_url(&src), &sha, None)).expect("checkout");
    assert_eq!(read(wt.path()), "sha256");
    assert_eq!(wt.sha(), sha);
}

#[test]
fn a_stuck_remote_is_killed_at_the_fetch_time_limit() {
    // A git daemon that accepts the connection and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        // Reads what git sends, then waits: the read ends (EOF or reset) only when git is gone.
        conn.set_read_timeout(Some(std::time::Duration::from_secs(300))).ok();
        let mut buf = [0u8; 4096];
        loop {
            match std::io::Read::read(&mut conn, &mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let checkouts = Checkouts::with_timeout(&tmp.path().join("data"), std::time::Duration::from_secs(2));
    let url = format!("git://127.0.0.1:{port}/stuck.git");
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let err = smol::block_on(checkouts.checkout(&url, sha, None)).expect_err("a stuck remote cannot succeed");
    assert!(matches!(err, CheckoutError::FetchTimedOut { seconds: 2, .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("2 s") && message.contains("[git] timeout_seconds"), "{message}");
    // git was killed: the remote sees its connection closed.
    assert!(accepted.join().expect("listener thread"), "git's connection was closed");
}

/// The objects of `mirror` on disk, in KiB: loose (`size`) and packed (`size-pack`) from
/// `git count-objects -v` (a small fetch is stored as loose objects).
fn pack_kib(mirror: &Path) -> u64 {
    let out = git(mirror, &["count-objects", "-v"]);
    let field = |name: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in git count-objects -v: {out}"))
    };
    field("size: ") + field("size-pack: ")
}

#[test]
fn a_second_commit_fetches_only_what_is_new() {
    let fx = Fixture::new();
    // About 2 MiB that does not compress, in both commits.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    std::fs::write(fx.src.join("big"), &big).expect("write");
    git(&fx.src, &["add", "big"]);
    let base = commit(&fx.src, "base with big");
    let head = commit(&fx.src, "head, big unchanged");
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &base, None)).expect("checkout base");
    let mirror = wt.mirror().to_path_buf();
    smol::block_on(wt.remove()).expect("remove");
    let after_base = pack_kib(&mirror);
    assert!(after_base >= 2000, "the first fetch holds the big file: {after_base} KiB");
    let wt = smol::block_on(checkouts.checkout(&url, &head, None)).expect("checkout head");
    assert_eq!(read(wt.path()), "head, big unchanged");
    smol::block_on(wt.remove()).expect("remove");
    let after_head = pack_kib(&mirror);
    assert!(
        after_head < after_base + 100,
        "the second fetch sent the big file again: {after_base} → {after_head} KiB"
    );
    // Both commits are kept under refs the next fetch negotiates with.
    let refs = git(&mirror, &["for-each-ref", "--format=%(refname)", "refs/ekaci/seen/"]);
    assert_eq!(refs.lines().count(), 2, "{refs}");
}

/// Entries under the worktrees directory (worktrees, spares, directories being removed).
fn worktree_dirs(checkouts: &Checkouts) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(checkouts.worktrees_dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Waits until the worktrees directory holds exactly `n` entries (removals finish in the background).
fn wait_for_worktree_dirs(checkouts: &Checkouts, n: usize) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let dirs = worktree_dirs(checkouts);
        if dirs.len() == n {
            return dirs;
        }
        assert!(std::time::Instant::now() < deadline, "expected {n} worktree entries, found {dirs:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_released_worktree_is_reset_to_the_next_commit_and_reused() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    checkouts.set_spare_worktrees(1);
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    let (first, mirror) = (wt.path().to_path_buf(), wt.mirror().to_path_buf());
    // Whatever is left in it must not reach the next checkout: a changed tracked file, untracked and
    // ignored files, a nested repository.
    std::fs::write(first.join("file"), "changed").expect("write");
    std::fs::write(first.join(".gitignore"), "ignored\n").expect("write");
    std::fs::write(first.join("ignored"), "x").expect("write");
    std::fs::create_dir_all(first.join("nested/deeper")).expect("mkdir");
    std::fs::write(first.join("nested/deeper/output"), "x").expect("write");
    git(&first.join("nested"), &["init", "-q"]);
    smol::block_on(wt.release()).expect("release");
    assert_eq!(worktree_dirs(&checkouts), vec![first.clone()], "kept as a spare");

    let wt = smol::block_on(checkouts.checkout(&url, &fx.two, None)).expect("checkout");
    let second = wt.path().to_path_buf();
    assert_ne!(second, first, "renamed for its commit");
    assert!(!first.exists());
    assert!(second.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(&fx.two[..12])));
    assert_eq!(read(&second), "two");
    assert_eq!(git(&second, &["rev-parse", "HEAD"]), fx.two);
    assert_eq!(git(&second, &["status", "--porcelain", "--ignored", "--untracked-files=all"]), "");
    for gone in [".gitignore", "ignored", "nested"] {
        assert!(!second.join(gone).exists(), "{gone} is left from the previous use");
    }
    assert_eq!(listed_worktrees(&mirror), vec![mirror.clone(), second.clone()], "one worktree, moved");
    assert_eq!(worktree_dirs(&checkouts), vec![second.clone()]);

    // A second checkout while the first is in use gets a fresh worktree; with room for one spare, the
    // second released is removed.
    let other = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    assert_eq!(read(other.path()), "one");
    smol::block_on(wt.release()).expect("release");
    smol::block_on(other.release()).expect("release");
    assert_eq!(wait_for_worktree_dirs(&checkouts, 1), vec![second]);
}

#[test]
fn a_spare_whose_git_file_was_changed_is_removed_and_never_run_in() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    checkouts.set_spare_worktrees(1);
    let url = local_url(&fx.src);
    // A repository someone else controls: git run in it would move its HEAD.
    let hostile = fx.tmp.path().join("hostile");
    std::fs::create_dir(&hostile).expect("mkdir");
    git(&hostile, &["init", "-q"]);
    let head_before = std::fs::read_to_string(hostile.join(".git/HEAD")).expect("HEAD");
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    let spare = wt.path().to_path_buf();
    smol::block_on(wt.release()).expect("release");
    std::fs::write(spare.join(".git"), format!("gitdir: {}\n", hostile.join(".git").display()))
        .expect("write");

    let wt = smol::block_on(checkouts.checkout(&url, &fx.two, None)).expect("checkout");
    assert_eq!(read(wt.path()), "two");
    assert!(!spare.exists(), "the tampered spare is deleted");
    assert_eq!(std::fs::read_to_string(hostile.join(".git/HEAD")).expect("HEAD"), head_before);
    assert_eq!(git(&hostile, &["status", "--porcelain"]), "", "nothing was checked out into it");
    assert_eq!(worktree_dirs(&checkouts), vec![wt.path().to_path_buf()]);

    // The same for a `.git` that is a symlink to the real admin directory's file, and one naming
    // another worktree of the same mirror.
    let kept = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    let spare = wt.path().to_path_buf();
    smol::block_on(wt.release()).expect("release");
    let real = std::fs::read_to_string(spare.join(".git")).expect(".git");
    std::fs::write(fx.tmp.path().join("dot-git"), &real).expect("write");
    std::fs::remove_file(spare.join(".git")).expect("rm");
    std::os::unix::fs::symlink(fx.tmp.path().join("dot-git"), spare.join(".git")).expect("symlink");
    let wt = smol::block_on(checkouts.checkout(&url, &fx.two, None)).expect("checkout");
    assert!(!spare.exists());
    let spare = wt.path().to_path_buf();
    smol::block_on(wt.release()).expect("release");
    std::fs::copy(kept.path().join(".git"), spare.join(".git")).expect("copy");
    let wt = smol::block_on(checkouts.checkout(&url, &fx.two, None)).expect("checkout");
    assert!(!spare.exists());
    assert_eq!(read(kept.path()), "one", "the other worktree is untouched");
    assert_eq!(git(kept.path(), &["rev-parse", "HEAD"]), fx.one);
    assert_eq!(read(wt.path()), "two");
}

#[test]
fn spares_are_not_kept_by_default_and_retention_removes_idle_ones() {
    let fx = Fixture::new();
    let checkouts = fx.checkouts();
    let url = local_url(&fx.src);
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    smol::block_on(wt.release()).expect("release");
    wait_for_worktree_dirs(&checkouts, 0);

    checkouts.set_spare_worktrees(2);
    let wt = smol::block_on(checkouts.checkout(&url, &fx.one, None)).expect("checkout");
    let spare = wt.path().to_path_buf();
    smol::block_on(wt.release()).expect("release");
    // Not idle for an hour yet: kept, and the directory scan spares it although its files are old.
    let (count, _) = smol::block_on(checkouts.remove_old_worktrees(std::time::Duration::from_secs(3600)));
    assert_eq!(count, 0);
    assert!(spare.exists());
    let (count, bytes) = smol::block_on(checkouts.remove_old_worktrees(std::time::Duration::ZERO));
    assert_eq!(count, 1);
    assert!(bytes > 0);
    assert!(!spare.exists());
    // The next checkout adds a fresh worktree.
    let wt = smol::block_on(checkouts.checkout(&url, &fx.two, None)).expect("checkout");
    assert_eq!(read(wt.path()), "two");

    // Removing the mirror removes its spare, and is not refused for it.
    let mirror = wt.mirror().to_path_buf();
    smol::block_on(wt.release()).expect("release");
    assert_eq!(worktree_dirs(&checkouts).len(), 1);
    let freed = smol::block_on(checkouts.remove_mirror(&mirror)).expect("remove mirror");
    assert!(freed.is_some(), "the mirror is removed");
    assert!(!mirror.exists());
    assert_eq!(worktree_dirs(&checkouts), Vec::<PathBuf>::new());
}
