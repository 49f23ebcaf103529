//! Persisted GitHub work: one *run* per (repository, head commit) that a pull request or merge group asks
//! for, and which installation serves which repository.
//!
//! A run records everything needed to redo it from scratch after a crash — clone URL, base and head
//! commits, installation, pull request number, author — plus what was already said to GitHub (the ids of
//! the check runs created for it), so that a restart, a redelivery or a re-request PATCHes those check
//! runs instead of creating new ones. Every change is a read-modify-write in one redb write transaction
//! ([`update`]), so the service loop and the run tasks never lose each other's updates. This module
//! owns the `github_runs` and `github_installations` tables; it never talks to GitHub.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, encode};
use crate::store::schema::{GITHUB_INSTALLATIONS, GITHUB_RUNS};
use crate::store::{now_secs, Store, StoreError};

const RUNS_NAME: &str = "github_runs";
const INSTALLATIONS_NAME: &str = "github_installations";

/// What asked for a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    PullRequest {
        number: u64,
        author: Option<String>,
    },
    /// `author` is the queued pull request's author, once looked up for `merge_queue_require_approval`.
    MergeGroup {
        head_ref: String,
        author: Option<String>,
    },
}

/// The pull request a merge queue entry is for, from its head ref
/// (`[refs/heads/]gh-readonly-queue/<base branch>/pr-<number>-<head sha>`; the base may contain `/`).
pub fn queued_pull_request(head_ref: &str) -> Option<u64> {
    let rest = head_ref.strip_prefix("refs/heads/").unwrap_or(head_ref).strip_prefix("gh-readonly-queue/")?;
    let (_, entry) = rest.rsplit_once('/')?;
    let (number, _) = entry.strip_prefix("pr-")?.split_once('-')?;
    number.parse().ok().filter(|n| *n > 0)
}

/// A pull request a run serves besides its trigger's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherPullRequest {
    pub number: u64,
    pub author: Option<String>,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// To be (re)started by the service, not before `not_before` (Unix seconds).
    Queued { not_before: u64 },
    /// Held by `require_approval` until a maintainer approves.
    AwaitingApproval,
    /// Finished and reported; `outcome` in a few words.
    Done { outcome: String },
    /// Stopped before it finished (superseded head, closed pull request).
    Cancelled { reason: String },
    /// Finished and reported, and every job's gate succeeded (no Added or Changed attribute fails, no
    /// new evaluation error): the commit may be merged by an `@eka-ci merge` request.
    Passed { outcome: String },
}

impl RunState {
    /// Queued or held: the run still has something to do.
    pub fn is_live(&self) -> bool {
        matches!(self, RunState::Queued { .. } | RunState::AwaitingApproval)
    }
}

/// A check run this run created on GitHub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRef {
    pub name: String,
    pub id: u64,
    pub completed: bool,
}

/// One run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// `owner/name` as GitHub spells it.
    pub repo: String,
    pub clone_url: String,
    pub installation: Option<u64>,
    pub head_sha: String,
    pub base_sha: String,
    pub base_ref: String,
    pub trigger: Trigger,
    /// Other pull requests of this repository whose head is this same commit (a branch proposed to two
    /// bases, say). The run serves all of them: closing or moving one on leaves it running for the rest.
    pub also_for: Vec<OtherPullRequest>,
    pub state: RunState,
    /// Starts at 1; a re-request or a restart of a finished run adds one.
    pub attempt: u32,
    pub checks: Vec<CheckRef>,
    /// Head derivations that failed in the last attempt (what a re-request rebuilds).
    pub failed_drvs: Vec<String>,
    /// Set by a re-request: the next attempt rebuilds `failed_drvs` first.
    pub rebuild_failed: bool,
    /// A maintainer approved the pull request (`require_approval`); no need to ask GitHub again.
    pub approved: bool,
    /// GitHub calls that failed in a row; the retry backoff grows with it.
    pub api_failures: u32,
    pub created_at: u64,
    pub updated_at: u64,
}

impl Run {
    /// A new run, queued, at attempt 1 (SHAs lower-cased, `refs/heads/` stripped from the base branch).
    pub fn new(
        repo: &str,
        clone_url: &str,
        installation: Option<u64>,
        head_sha: &str,
        base_sha: &str,
        base_ref: &str,
        trigger: Trigger,
    ) -> Run {
        let now = now_secs();
        Run {
            repo: repo.to_string(),
            clone_url: clone_url.to_string(),
            installation,
            head_sha: head_sha.to_ascii_lowercase(),
            base_sha: base_sha.to_ascii_lowercase(),
            base_ref: base_ref.strip_prefix("refs/heads/").unwrap_or(base_ref).to_string(),
            trigger,
            also_for: Vec::new(),
            state: RunState::Queued { not_before: 0 },
            attempt: 1,
            checks: Vec::new(),
            failed_drvs: Vec::new(),
            rebuild_failed: false,
            approved: false,
            api_failures: 0,
            created_at: now,
            updated_at: now,
        }
    }

    /// The pull request number, for pull-request runs.
    pub fn pull_request(&self) -> Option<u64> {
        match self.trigger {
            Trigger::PullRequest { number, .. } => Some(number),
            Trigger::MergeGroup { .. } => None,
        }
    }

    /// The pull request whose approval `require_approval` (pull requests) or
    /// `merge_queue_require_approval` (merge groups) asks for, with its author when known. `None` for a
    /// merge group whose head ref names no pull request.
    pub fn approval_subject(&self) -> Option<(u64, Option<&str>)> {
        match &self.trigger {
            Trigger::PullRequest { number, author } => Some((*number, author.as_deref())),
            Trigger::MergeGroup { head_ref, author } => {
                queued_pull_request(head_ref).map(|n| (n, author.as_deref()))
            }
        }
    }

    /// Whether pull request `number` (of this run's repository) is served by this run.
    pub fn serves(&self, number: u64) -> bool {
        self.pull_request() == Some(number) || self.also_for.iter().any(|p| p.number == number)
    }

    /// Records that pull request `number` also has this commit as its head; false if it already was.
    pub fn add_pull_request(&mut self, number: u64, author: Option<String>) -> bool {
        if self.serves(number) {
            return false;
        }
        self.also_for.push(OtherPullRequest { number, author });
        true
    }

    /// Pull request `number`, which this run [serves](Run::serves), no longer has this commit as its
    /// head (closed, or pushed to). Returns false when it was the last pull request the run served, and
    /// leaves the run unchanged then; otherwise forgets `number` (the next pull request becomes the
    /// trigger if `number` was) and returns true.
    pub fn drop_pull_request(&mut self, number: u64) -> bool {
        if self.pull_request() != Some(number) {
            self.also_for.retain(|p| p.number != number);
            return true;
        }
        if self.also_for.is_empty() {
            return false;
        }
        let next = self.also_for.remove(0);
        self.trigger = Trigger::PullRequest { number: next.number, author: next.author };
        true
    }

    /// The id of our check run called `name`, if one was created.
    pub fn check_id(&self, name: &str) -> Option<u64> {
        self.checks.iter().find(|c| c.name == name).map(|c| c.id)
    }

    /// Records check run `name` → `id` (replacing an older id for the same name).
    pub fn set_check(&mut self, name: &str, id: u64, completed: bool) {
        match self.checks.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.id = id;
                c.completed = completed;
            }
            None => self.checks.push(CheckRef { name: name.to_string(), id, completed }),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum RunRecord {
    V1(Run),
}

/// The key of a run: lower-cased `owner/name`, NUL, head commit.
pub fn key(repo: &str, head_sha: &str) -> String {
    format!("{}\u{0}{}", repo.to_ascii_lowercase(), head_sha.to_ascii_lowercase())
}

/// The run with this key. Blocking.
pub fn get(store: &Store, key: &str) -> Result<Option<Run>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_RUNS)?;
    let found = table.get(key)?;
    match found {
        Some(v) => {
            let RunRecord::V1(run) = decode(RUNS_NAME, key, v.value())?;
            Ok(Some(run))
        }
        None => Ok(None),
    }
}

/// Every run, with its key. Blocking.
pub fn all(store: &Store) -> Result<Vec<(String, Run)>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_RUNS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let RunRecord::V1(run) = decode(RUNS_NAME, k.value(), v.value())?;
        out.push((k.value().to_string(), run));
    }
    Ok(out)
}

/// The head commit an approval of pull request `number` of `repo` (`owner/repo`, any case) is for: the
/// head of its newest run held for approval, else of its newest queued or finished run; superseded
/// and closed (cancelled) runs never count. A merge queue entry's run counts for the pull request it
/// queues. `None` when no such run is known. Blocking.
pub fn pull_request_head(store: &Store, repo: &str, number: u64) -> Result<Option<String>, StoreError> {
    let repo = repo.to_ascii_lowercase();
    let mut best: Option<(u8, u64, String)> = None;
    for (_, run) in all(store)? {
        let subject = run.approval_subject().map(|(n, _)| n) == Some(number);
        if run.repo.to_ascii_lowercase() != repo || !(subject || run.serves(number)) {
            continue;
        }
        let rank = match run.state {
            RunState::AwaitingApproval => 2,
            RunState::Queued { .. } | RunState::Done { .. } | RunState::Passed { .. } => 1,
            RunState::Cancelled { .. } => continue,
        };
        let candidate = (rank, run.created_at.max(run.updated_at), run.head_sha.clone());
        if best.as_ref().is_none_or(|b| (candidate.0, candidate.1) > (b.0, b.1)) {
            best = Some(candidate);
        }
    }
    Ok(best.map(|(_, _, sha)| sha))
}

/// Reads run `key` (or `None`), lets `change` edit it (returning `None` deletes nothing and writes
/// nothing), and writes the result, in one write transaction. Returns what was written. Blocking.
pub fn update<T>(
    store: &Store,
    key: &str,
    change: impl FnOnce(Option<Run>) -> (Option<Run>, T),
) -> Result<T, StoreError> {
    let tx = store.db().begin_write()?;
    let result = {
        let mut table = tx.open_table(GITHUB_RUNS)?;
        let current = match table.get(key)? {
            Some(v) => {
                let RunRecord::V1(run) = decode(RUNS_NAME, key, v.value())?;
                Some(run)
            }
            None => None,
        };
        let (next, result) = change(current);
        if let Some(mut run) = next {
            run.updated_at = now_secs();
            table.insert(key, encode(RUNS_NAME, &RunRecord::V1(run))?.as_slice())?;
        }
        result
    };
    tx.commit()?;
    Ok(result)
}

/// Deletes finished (done or cancelled) runs not updated for `max_age_secs`; returns how many. A
/// re-request of such an old commit then finds no run and is answered as unknown. Blocking.
pub fn prune_finished(store: &Store, max_age_secs: u64) -> Result<usize, StoreError> {
    let cutoff = now_secs().saturating_sub(max_age_secs);
    remove_where(store, GITHUB_RUNS, |k, v| {
        let RunRecord::V1(run) = decode(RUNS_NAME, k, v)?;
        Ok(!run.state.is_live() && run.updated_at < cutoff)
    })
}

/// Deletes the rows of `table` for which `doomed(key, value)` holds, in one write transaction; returns
/// how many. Blocking.
fn remove_where(
    store: &Store,
    table: redb::TableDefinition<&str, &[u8]>,
    doomed: impl Fn(&str, &[u8]) -> Result<bool, StoreError>,
) -> Result<usize, StoreError> {
    let tx = store.db().begin_write()?;
    let removed = {
        let mut t = tx.open_table(table)?;
        let mut keys = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if doomed(k.value(), v.value())? {
                keys.push(k.value().to_string());
            }
        }
        for k in &keys {
            t.remove(k.as_str())?;
        }
        keys.len()
    };
    tx.commit()?;
    Ok(removed)
}

/// How many runs are queued (or running) and how many wait for approval. Blocking.
pub fn live_counts(store: &Store) -> Result<(u64, u64), StoreError> {
    let (mut queued, mut held) = (0, 0);
    for (_, run) in all(store)? {
        match run.state {
            RunState::Queued { .. } => queued += 1,
            RunState::AwaitingApproval => held += 1,
            _ => {}
        }
    }
    Ok((queued, held))
}

/// Which installation serves a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationEntry {
    pub installation: u64,
    /// The account (user or organisation) the App is installed on.
    pub account: String,
    pub updated_at: u64,
}

#[derive(Serialize, Deserialize)]
enum InstallationRecord {
    V1(InstallationEntry),
}

/// Records that `installation` serves `added` and no longer serves `removed` (repositories as
/// `owner/name`), in one write transaction. Blocking.
pub fn set_installation(
    store: &Store,
    installation: u64,
    account: &str,
    added: &[String],
    removed: &[String],
) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(GITHUB_INSTALLATIONS)?;
        for repo in removed {
            let k = repo.to_ascii_lowercase();
            let current = match table.get(k.as_str())? {
                Some(v) => Some(decode::<InstallationRecord>(INSTALLATIONS_NAME, &k, v.value())?),
                None => None,
            };
            if matches!(current, Some(InstallationRecord::V1(e)) if e.installation == installation) {
                table.remove(k.as_str())?;
            }
        }
        for repo in added {
            let entry = InstallationRecord::V1(InstallationEntry {
                installation,
                account: account.to_string(),
                updated_at: now_secs(),
            });
            table
                .insert(repo.to_ascii_lowercase().as_str(), encode(INSTALLATIONS_NAME, &entry)?.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Forgets every repository of `installation` (the App was uninstalled). Returns how many. Blocking.
pub fn remove_installation(store: &Store, installation: u64) -> Result<usize, StoreError> {
    remove_where(store, GITHUB_INSTALLATIONS, |k, v| {
        let InstallationRecord::V1(e) = decode(INSTALLATIONS_NAME, k, v)?;
        Ok(e.installation == installation)
    })
}

/// The installation recorded for `repo` (`owner/name`, any case). Blocking.
pub fn installation_for(store: &Store, repo: &str) -> Result<Option<InstallationEntry>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_INSTALLATIONS)?;
    let k = repo.to_ascii_lowercase();
    let found = table.get(k.as_str())?;
    match found {
        Some(v) => {
            let InstallationRecord::V1(e) = decode(INSTALLATIONS_NAME, &k, v.value())?;
            Ok(Some(e))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(head: &str, state: RunState) -> Run {
        let trigger = Trigger::PullRequest { number: 1, author: None };
        let url = "https://github.com/Octo/Widgets.git";
        Run { state, ..Run::new("Octo/Widgets", url, Some(1), head, &"b".repeat(40), "main", trigger) }
    }

    #[test]
    fn updates_are_read_modify_write_and_old_finished_runs_are_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let live = key("Octo/Widgets", &"1".repeat(40));
        let done = key("octo/widgets", &"2".repeat(40));
        assert_eq!(live, format!("octo/widgets\u{0}{}", "1".repeat(40)), "keys ignore case");
        update(&store, &live, |_| (Some(run(&"1".repeat(40), RunState::Queued { not_before: 0 })), ()))
            .expect("put");
        update(&store, &done, |_| (Some(run(&"2".repeat(40), RunState::Done { outcome: "ok".into() })), ()))
            .expect("put");
        let n = update(&store, &live, |r| {
            let mut r = r.expect("exists");
            r.set_check("EkaCI: Configure", 7, false);
            r.set_check("EkaCI: Configure", 8, true);
            (Some(r), 1)
        })
        .expect("update");
        assert_eq!(n, 1);
        let got = get(&store, &live).expect("get").expect("row");
        assert_eq!(got.checks, vec![CheckRef { name: "EkaCI: Configure".into(), id: 8, completed: true }]);
        assert_eq!(got.check_id("EkaCI: Configure"), Some(8));
        assert_eq!(prune_finished(&store, 3600).expect("prune"), 0, "recent runs stay");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(prune_finished(&store, 0).expect("prune"), 1, "only the finished run goes");
        assert!(get(&store, &done).expect("get").is_none());
        assert!(get(&store, &live).expect("get").is_some());
    }

    #[test]
    fn a_run_serves_every_pull_request_of_its_head_until_the_last_one_leaves() {
        let mut r = run(&"1".repeat(40), RunState::Queued { not_before: 0 });
        assert!(r.serves(1) && !r.serves(2));
        assert!(r.add_pull_request(2, Some("hubot".into())));
        assert!(!r.add_pull_request(2, None) && !r.add_pull_request(1, None), "no duplicates");
        assert!(r.serves(2));
        assert!(r.drop_pull_request(1), "#2 still needs it");
        assert_eq!(r.trigger, Trigger::PullRequest { number: 2, author: Some("hubot".into()) });
        assert!(r.also_for.is_empty() && !r.serves(1));
        let before = r.clone();
        assert!(!r.drop_pull_request(2), "the last one");
        assert_eq!(r, before, "unchanged when the last pull request leaves");
        assert!(r.add_pull_request(3, None));
        assert!(r.drop_pull_request(3) && r.serves(2) && !r.serves(3));
    }

    #[test]
    fn merge_queue_refs_name_their_pull_request() {
        let sha = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        assert_eq!(
            queued_pull_request(&format!("refs/heads/gh-readonly-queue/main/pr-142-{sha}")),
            Some(142)
        );
        assert_eq!(queued_pull_request(&format!("gh-readonly-queue/release/24.05/pr-7-{sha}")), Some(7));
        for bad in [
            "refs/heads/main",
            "gh-readonly-queue/main/pr--x",
            "gh-readonly-queue/main/pr-0-x",
            "gh-readonly-queue/pr-3-x",
            "gh-readonly-queue/main/pr-3",
        ] {
            assert_eq!(queued_pull_request(bad), None, "{bad}");
        }
        let mut r = run(&"1".repeat(40), RunState::AwaitingApproval);
        r.trigger = Trigger::MergeGroup {
            head_ref: format!("refs/heads/gh-readonly-queue/main/pr-9-{sha}"),
            author: None,
        };
        assert_eq!(r.approval_subject(), Some((9, None)));
        assert_eq!(r.pull_request(), None, "a merge group serves no pull request's lifecycle");
    }

    #[test]
    fn installations_follow_added_removed_and_uninstall() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        set_installation(&store, 5, "acme", &["acme/a".into(), "Acme/B".into()], &[]).expect("set");
        set_installation(&store, 6, "other", &["other/x".into()], &["acme/a".into()]).expect("set");
        assert_eq!(
            installation_for(&store, "ACME/A").expect("get").map(|e| e.installation),
            Some(5),
            "6 cannot remove 5's repo"
        );
        set_installation(&store, 5, "acme", &[], &["acme/a".into()]).expect("set");
        assert_eq!(installation_for(&store, "acme/a").expect("get"), None);
        assert_eq!(installation_for(&store, "acme/b").expect("get").map(|e| e.account), Some("acme".into()));
        assert_eq!(remove_installation(&store, 5).expect("remove"), 1);
        assert_eq!(installation_for(&store, "acme/b").expect("get"), None);
        assert!(installation_for(&store, "other/x").expect("get").is_some());
    }
}
