//! Retention: removing finished work after its age limit (`[retention]`), so that nothing the server
//! keeps grows without bound. `ekaci gc` runs it on demand; the daemon runs it once a day.
//!
//! Seven kinds, each with its own age (zero keeps that kind forever):
//!
//! - **jobsets** (`jobsets_days`, counted from `finished_at`): the `jobsets` row, its key, its attribute
//!   records, its `build_owners` row and its GC roots (`<data_dir>/gcroots/<id>`). A jobset is *live*,
//!   and never removed whatever its age, when it is not finished (`Evaluating`); when its builds are still
//!   wanted (its owner is `Live` in `build_owners`); when it is of a commit (head or base) of a GitHub run
//!   that is queued or awaiting approval; when this process began or reused it within the last
//!   hour ([`RECENT_USE`]: a review that just reused it has not registered its builds yet); or when it is
//!   the newest finished jobset of its (repository, job name), the base the next pull request is most
//!   likely diffed against. GC-root directories whose
//!   jobset row no longer exists are removed with the jobsets (there is no evaluation that could need
//!   them: a jobset row is written before its evaluation starts).
//! - **logs** (`logs_days`, counted from the file's modification time): `logs_dir/<hash>/<n>.log`. A
//!   running build's log is written as it runs, so it is never that old; the build's state stays.
//! - **check results** (also `logs_days`, counted from `finished_at`): `check_results` rows and the
//!   output files they name (`logs_dir/checks/<hash>.log`); a check that runs again writes a new row.
//! - **sizes and pushes** (`jobsets_days`): `output_sizes` rows (from `recorded_at`) except those of a
//!   commit that is the newest base of a branch in `branch_sizes` (the next pull request compares with
//!   them), `size_summaries` rows (from `computed_at`), and finished (`pushed`/`failed`) `cache_pushes`
//!   rows (from their last change); a queued push is never removed. `branch_sizes` is never pruned.
//! - **push audit records** (`logs_days`, from `at`): `cache_push_audit` rows.
//! - **worktrees** (`worktrees_hours`, from the directory's modification time): directories under
//!   `<data_dir>/worktrees` that no checkout of this process is using (left by a crash or a failed
//!   removal).
//! - **mirrors** (`mirrors_days`, from the mirror's modification time): git mirrors that no stored jobset
//!   (after the jobsets above are removed) and no GitHub run of a repository that still has an
//!   installation refers to, and that no worktree is checked out from.
//!
//! Ids of removed jobsets are never given to new ones. This module decides what to remove and reports
//! what it freed; it never touches the derivation graph, build states or a running build.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::checkout::Checkouts;
use crate::config::RetentionConfig;
use crate::jobset::{JobsetId, JobsetState, Jobsets};
use crate::store::{Store, StoreError};

const DAY: u64 = 24 * 3600;

/// A jobset this process used this recently is live: a review that reused it registers its builds
/// (a `Live` owner) or finishes its diff well within this.
pub const RECENT_USE: Duration = Duration::from_secs(3600);

/// How often the daemon runs retention.
pub const INTERVAL: Duration = Duration::from_secs(DAY);

/// What one kind of retention freed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freed {
    /// Items removed (jobsets, GC-root directories, log files, worktrees, mirrors).
    pub count: u64,
    /// Bytes on disk they took (0 for database rows: redb reuses the space, the file does not shrink).
    pub bytes: u64,
}

/// What a retention pass freed, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub jobsets: Freed,
    pub gc_roots: Freed,
    pub logs: Freed,
    /// Stored check results (rows) and the bytes of their output files.
    #[serde(default)]
    pub check_results: Freed,
    /// `output_sizes` rows (measured sizes of built attributes).
    #[serde(default)]
    pub output_sizes: Freed,
    /// `size_summaries` rows (what a size check found).
    #[serde(default)]
    pub size_summaries: Freed,
    /// Finished (`pushed` or `failed`) `cache_pushes` rows.
    #[serde(default)]
    pub cache_pushes: Freed,
    /// `cache_push_audit` records.
    #[serde(default)]
    pub cache_push_audit: Freed,
    pub worktrees: Freed,
    pub mirrors: Freed,
    /// Jobsets kept although old enough, because they are live (see the module documentation).
    pub live_jobsets_kept: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention: cannot read or change the database: {0}")]
    Store(#[from] StoreError),
}

/// The retention pass of one server: its store, checkouts and directories, and the ages.
#[derive(Clone)]
pub struct Retention {
    pub store: Store,
    /// The pipeline's jobsets (their clones share what was used recently).
    pub jobsets: Jobsets,
    pub checkouts: Checkouts,
    pub logs_dir: PathBuf,
    /// `<data_dir>/gcroots`.
    pub gc_roots_dir: PathBuf,
    pub config: RetentionConfig,
}

impl Retention {
    /// Runs every kind once, in order (jobsets first: the mirrors that stay depend on them).
    pub async fn run(&self) -> Result<GcReport, RetentionError> {
        let mut report = GcReport::default();
        let now = crate::store::now_secs();
        let (removed, kept) = self.jobsets(now).await?;
        report.jobsets.count = removed.len() as u64;
        report.live_jobsets_kept = kept;
        report.gc_roots = self.gc_roots(&removed).await?;
        if self.config.jobsets_days > 0 {
            let (store, cutoff) = (self.store.clone(), now.saturating_sub(self.config.jobsets_days * DAY));
            let (sizes, summaries, pushes) = smol::unblock(move || -> Result<_, StoreError> {
                let (sizes, summaries) = crate::sizes::remove_older_than(&store, cutoff)?;
                Ok((sizes, summaries, crate::cache::queue::remove_finished_before(&store, cutoff)?))
            })
            .await?;
            report.output_sizes.count = sizes;
            report.size_summaries.count = summaries;
            report.cache_pushes.count = pushes;
        }
        if self.config.logs_days > 0 {
            let (dir, age) = (self.logs_dir.clone(), Duration::from_secs(self.config.logs_days * DAY));
            report.logs = smol::unblock(move || remove_old_logs(&dir, age)).await;
            let (store, cutoff) = (self.store.clone(), now.saturating_sub(self.config.logs_days * DAY));
            let (count, bytes) =
                smol::unblock(move || crate::checks::results::remove_older_than(&store, cutoff)).await?;
            report.check_results = Freed { count, bytes };
            let (store, cutoff) = (self.store.clone(), now.saturating_sub(self.config.logs_days * DAY));
            report.cache_push_audit.count =
                smol::unblock(move || crate::cache::queue::remove_audit_before(&store, cutoff)).await?;
        }
        if self.config.worktrees_hours > 0 {
            let age = Duration::from_secs(self.config.worktrees_hours * 3600);
            let (count, bytes) = self.checkouts.remove_old_worktrees(age).await;
            report.worktrees = Freed { count, bytes };
        }
        if self.config.mirrors_days > 0 {
            report.mirrors = self.mirrors(Duration::from_secs(self.config.mirrors_days * DAY)).await?;
        }
        tracing::info!(?report, "retention pass");
        Ok(report)
    }

    /// Removes the jobsets that are old enough and not live. Returns their ids and how many old ones
    /// were kept because they are live.
    async fn jobsets(&self, now: u64) -> Result<(Vec<JobsetId>, u64), RetentionError> {
        if self.config.jobsets_days == 0 {
            return Ok((Vec::new(), 0));
        }
        let store = self.store.clone();
        let max_age = self.config.jobsets_days * DAY;
        let jobsets = self.jobsets.clone();
        let recently_used = jobsets.used_within(RECENT_USE);
        smol::unblock(move || -> Result<(Vec<JobsetId>, u64), RetentionError> {
            let all = jobsets.all()?;
            let live_owners: HashSet<JobsetId> = crate::scheduler::state::Reader::new(&store)?
                .owners()?
                .into_iter()
                .filter(|(_, rec)| rec.status == crate::scheduler::OwnerStatus::Live)
                .filter_map(|(owner, _)| match owner {
                    crate::scheduler::Owner::Jobset(id) => Some(id),
                    crate::scheduler::Owner::Rebuild(_) => None,
                })
                .collect();
            let mut live_commits: HashSet<(String, String)> = HashSet::new();
            for (_, run) in crate::forge::github::runs::all(&store)? {
                if run.state.is_live() {
                    live_commits.insert((run.clone_url.clone(), run.head_sha.to_ascii_lowercase()));
                    live_commits.insert((run.clone_url.clone(), run.base_sha.to_ascii_lowercase()));
                }
            }
            // The newest finished jobset of each (repository, job name).
            let mut newest: BTreeMap<(&str, &str), (u64, JobsetId)> = BTreeMap::new();
            for j in &all {
                if let Some(finished) = j.finished_at {
                    let e = newest.entry((j.key.repo.as_str(), j.key.job_name())).or_insert((finished, j.id));
                    if (finished, j.id) > *e {
                        *e = (finished, j.id);
                    }
                }
            }
            let newest: HashSet<JobsetId> = newest.values().map(|(_, id)| *id).collect();
            let (mut remove, mut kept) = (Vec::new(), 0);
            for j in &all {
                let Some(finished) = j.finished_at else { continue };
                if j.state == JobsetState::Evaluating || now.saturating_sub(finished) < max_age {
                    continue;
                }
                let live = live_owners.contains(&j.id)
                    || recently_used.contains(&j.id)
                    || newest.contains(&j.id)
                    || live_commits.contains(&(j.key.repo.clone(), j.key.commit.to_ascii_lowercase()));
                if live {
                    kept += 1;
                } else {
                    remove.push(j.id);
                }
            }
            jobsets.remove(&remove)?;
            Ok((remove, kept))
        })
        .await
    }

    /// Removes the GC-root directories of `removed` jobsets and those whose jobset no longer exists.
    async fn gc_roots(&self, removed: &[JobsetId]) -> Result<Freed, RetentionError> {
        let store = self.store.clone();
        let dir = self.gc_roots_dir.clone();
        let removed: HashSet<u64> = removed.iter().map(|id| id.0).collect();
        smol::unblock(move || -> Result<Freed, RetentionError> {
            let mut freed = Freed::default();
            let existing: HashSet<u64> = Jobsets::new(store).all()?.iter().map(|j| j.id.0).collect();
            // A jobset begun after this read has a larger id than every one seen (ids are never reused):
            // its GC roots are never taken for an orphan's.
            let known_max = existing.iter().chain(&removed).copied().max().unwrap_or(0);
            let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(freed) };
            for entry in entries.flatten() {
                let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                    continue;
                };
                if id > known_max || (existing.contains(&id) && !removed.contains(&id)) {
                    continue;
                }
                let path = entry.path();
                let bytes = disk_bytes(&path);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        freed.count += 1;
                        freed.bytes += bytes;
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove GC roots"),
                }
            }
            Ok(freed)
        })
        .await
    }

    /// Removes the mirrors nothing refers to any more and nobody used for `max_age`.
    async fn mirrors(&self, max_age: Duration) -> Result<Freed, RetentionError> {
        let store = self.store.clone();
        let urls = smol::unblock(move || -> Result<HashSet<String>, RetentionError> {
            let mut urls: HashSet<String> =
                Jobsets::new(store.clone()).all()?.into_iter().map(|j| j.key.repo).collect();
            for (_, run) in crate::forge::github::runs::all(&store)? {
                let installed = crate::forge::github::runs::installation_for(&store, &run.repo)?.is_some();
                if installed || run.state.is_live() {
                    urls.insert(run.clone_url);
                }
            }
            Ok(urls)
        })
        .await?;
        let referenced: HashSet<PathBuf> =
            urls.iter().filter_map(|u| self.checkouts.mirror_path(u).ok()).collect();
        let mut freed = Freed::default();
        for mirror in self.checkouts.mirrors().await {
            if referenced.contains(&mirror) {
                continue;
            }
            let m = mirror.clone();
            let old = smol::unblock(move || {
                let fetch_head = m.join("FETCH_HEAD");
                let probe = if fetch_head.exists() { fetch_head } else { m };
                older_than(&probe, max_age).unwrap_or(false)
            })
            .await;
            if !old {
                continue;
            }
            match self.checkouts.remove_mirror(&mirror).await {
                Ok(Some(bytes)) => {
                    freed.count += 1;
                    freed.bytes += bytes;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(mirror = %mirror.display(), error = %e, "cannot remove a mirror"),
            }
        }
        Ok(freed)
    }
}

/// Runs retention every [`INTERVAL`] (the first pass one interval after start-up) until `shutdown`.
pub async fn daily_loop(retention: Retention, shutdown: async_channel::Receiver<()>) {
    loop {
        if crate::supervise::sleep_or_shutdown(INTERVAL, &shutdown).await {
            return;
        }
        if let Err(e) = retention.run().await {
            tracing::warn!(error = %e, "retention pass failed");
        }
    }
}

/// Removes `logs_dir/<hash>/*.log` files not modified for `max_age`, then the directories left empty.
/// Other entries of `logs_dir` (build scratch directories) are not touched. Blocking.
fn remove_old_logs(logs_dir: &Path, max_age: Duration) -> Freed {
    let mut freed = Freed::default();
    let Ok(dirs) = std::fs::read_dir(logs_dir) else { return freed };
    for dir in dirs.flatten() {
        let name = dir.file_name();
        let Some(name) = name.to_str() else { continue };
        // Derivation hashes: 32 characters of Nix's base-32 alphabet.
        if name.len() != 32 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(dir.path()) else { continue };
        for file in files.flatten() {
            let path = file.path();
            if path.extension().is_none_or(|e| e != "log") || !older_than(&path, max_age).unwrap_or(false) {
                continue;
            }
            let bytes = disk_bytes(&path);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    freed.count += 1;
                    freed.bytes += bytes;
                }
                Err(e) => tracing::warn!(log = %path.display(), error = %e, "cannot remove an old build log"),
            }
        }
        // Only succeeds when empty.
        let _ = std::fs::remove_dir(dir.path());
    }
    freed
}

/// Whether `path` (not followed) was last modified at least `max_age` ago.
pub fn older_than(path: &Path, max_age: Duration) -> std::io::Result<bool> {
    let modified = std::fs::symlink_metadata(path)?.modified()?;
    Ok(SystemTime::now().duration_since(modified).unwrap_or_default() >= max_age)
}

/// The bytes a file or directory tree takes (sizes of its entries, symlinks not followed).
pub fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|e| disk_bytes(&e.path())).sum()
}

/// The lines `ekaci gc` prints.
pub fn render(report: &GcReport) -> String {
    let line = |kind: &str, f: &Freed| format!("{kind}: {} removed, {} bytes freed\n", f.count, f.bytes);
    let mut out = String::new();
    out.push_str(&format!(
        "jobsets: {} removed, {} kept as live\n",
        report.jobsets.count, report.live_jobsets_kept
    ));
    out.push_str(&line("gc roots", &report.gc_roots));
    out.push_str(&line("logs", &report.logs));
    out.push_str(&line("check results", &report.check_results));
    out.push_str(&line("output sizes", &report.output_sizes));
    out.push_str(&line("size summaries", &report.size_summaries));
    out.push_str(&line("cache pushes", &report.cache_pushes));
    out.push_str(&line("cache push audit", &report.cache_push_audit));
    out.push_str(&line("worktrees", &report.worktrees));
    out.push_str(&line("mirrors", &report.mirrors));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_logs_go_and_new_ones_and_other_entries_stay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hash = "0123456789abcdfghijklmnpqrsvwxyz";
        std::fs::create_dir_all(dir.path().join(hash)).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("scratch-1")).expect("mkdir");
        let old = dir.path().join(hash).join("1.log");
        let new = dir.path().join(hash).join("2.log");
        std::fs::write(&old, "old log\n").expect("write");
        std::fs::write(&new, "new\n").expect("write");
        std::fs::write(dir.path().join("scratch-1/1.log"), "x").expect("write");
        let past = SystemTime::now() - Duration::from_secs(3 * DAY);
        std::fs::File::options().write(true).open(&old).expect("open").set_modified(past).expect("mtime");
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("scratch-1/1.log"))
            .expect("open")
            .set_modified(past)
            .expect("mtime");
        let freed = remove_old_logs(dir.path(), Duration::from_secs(2 * DAY));
        assert_eq!(freed, Freed { count: 1, bytes: 8 });
        assert!(!old.exists() && new.exists());
        assert!(dir.path().join("scratch-1/1.log").exists());
    }

    #[test]
    fn report_names_every_kind() {
        let r =
            GcReport { jobsets: Freed { count: 2, bytes: 0 }, live_jobsets_kept: 1, ..GcReport::default() };
        let text = render(&r);
        assert!(text.contains("jobsets: 2 removed, 1 kept as live"), "{text}");
        for kind in [
            "gc roots",
            "logs",
            "check results",
            "output sizes",
            "size summaries",
            "cache pushes",
            "cache push audit",
            "worktrees",
            "mirrors",
        ] {
            assert!(text.contains(&format!("{kind}: 0 removed, 0 bytes freed")), "{text}");
        }
    }
}
