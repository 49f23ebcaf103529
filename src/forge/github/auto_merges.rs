//! Auto-merge enabled through the API (`POST /v1/prs/{owner}/{repo}/{n}/enable-auto-merge`, `ekaci
//! auto-merge enable`): one row per pull request in `github_auto_merges`, so that it survives a restart.
//!
//! A row says "merge this pull request once its head's gate is green and a maintainer of every changed
//! package approved that head" (docs/merge.md, "Auto-merge"). It is written when auto-merge is enabled
//! (enabling again replaces the method), removed when it is disabled, when the pull request merges or
//! closes. `dirty` asks the service to look again at its next pass (set on enabling, on a review
//! submitted or dismissed, on a push); `checked` is the head commit and run attempt last looked at, so
//! that GitHub's reviews are fetched again only when something changed. Every function here is
//! blocking (call it through `smol::unblock`); it never talks to GitHub.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, encode};
use crate::store::schema::GITHUB_AUTO_MERGES;
use crate::store::{now_secs, Store, StoreError};

const NAME: &str = "github_auto_merges";

/// One pull request with auto-merge enabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoMerge {
    /// `owner/name` as given (GitHub matches it in any case).
    pub repo: String,
    pub number: u64,
    /// `merge`, `squash` or `rebase` when one was asked for; else `default_merge_method`.
    pub method: Option<String>,
    /// Who enabled it: `api:<token name>`, `github:<login>` (a maintainer) or `cli`.
    pub enabled_by: String,
    /// Unix seconds.
    pub enabled_at: u64,
    /// Something changed since the last look: look again at the next pass.
    pub dirty: bool,
    /// The head commit (lower case) and its run attempt last looked at.
    pub checked: Option<(String, u32)>,
}

#[derive(Serialize, Deserialize)]
enum AutoMergeRecord {
    V1(AutoMerge),
}

/// The key of pull request `number` of `repo`: `owner/name#N`, lower case.
fn key(repo: &str, number: u64) -> String {
    format!("{}#{number}", repo.to_ascii_lowercase())
}

fn read(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    k: &str,
) -> Result<Option<AutoMerge>, StoreError> {
    match table.get(k)? {
        Some(v) => {
            let AutoMergeRecord::V1(r) = decode(NAME, k, v.value())?;
            Ok(Some(r))
        }
        None => Ok(None),
    }
}

/// Changes the row of `repo` #`number` in one write transaction: `f` gets the current row (if any) and
/// returns the new one (`None` removes it). Returns the row as it was.
fn update(
    store: &Store,
    repo: &str,
    number: u64,
    f: impl FnOnce(Option<AutoMerge>) -> Option<AutoMerge>,
) -> Result<Option<AutoMerge>, StoreError> {
    let k = key(repo, number);
    let tx = store.db().begin_write()?;
    let before = {
        let mut table = tx.open_table(GITHUB_AUTO_MERGES)?;
        let before = read(&table, &k)?;
        match f(before.clone()) {
            Some(row) => {
                table.insert(k.as_str(), encode(NAME, &AutoMergeRecord::V1(row))?.as_slice())?;
            }
            None if before.is_some() => {
                table.remove(k.as_str())?;
            }
            None => {}
        }
        before
    };
    tx.commit()?;
    Ok(before)
}

/// Enables auto-merge of `repo` #`number` with `method` (replacing an earlier method), by `by`.
/// Returns whether it was off before.
pub fn enable(
    store: &Store,
    repo: &str,
    number: u64,
    method: Option<&str>,
    by: &str,
) -> Result<bool, StoreError> {
    let row = AutoMerge {
        repo: repo.to_string(),
        number,
        method: method.map(str::to_string),
        enabled_by: by.to_string(),
        enabled_at: now_secs(),
        dirty: true,
        checked: None,
    };
    Ok(update(store, repo, number, |_| Some(row))?.is_none())
}

/// Disables auto-merge of `repo` #`number` (disabling, merging, closing). Returns whether it was on.
pub fn disable(store: &Store, repo: &str, number: u64) -> Result<bool, StoreError> {
    Ok(update(store, repo, number, |_| None)?.is_some())
}

/// The row of `repo` #`number`, if auto-merge is on.
pub fn get(store: &Store, repo: &str, number: u64) -> Result<Option<AutoMerge>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_AUTO_MERGES)?;
    read(&table, &key(repo, number))
}

/// Every pull request with auto-merge on.
pub fn all(store: &Store) -> Result<Vec<AutoMerge>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_AUTO_MERGES)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let AutoMergeRecord::V1(r) = decode(NAME, k.value(), v.value())?;
        out.push(r);
    }
    Ok(out)
}

/// Asks for another look at `repo` #`number` (a review, a push). Returns whether auto-merge is on.
pub fn touch(store: &Store, repo: &str, number: u64) -> Result<bool, StoreError> {
    let before = update(store, repo, number, |row| row.map(|r| AutoMerge { dirty: true, ..r }))?;
    Ok(before.is_some())
}

/// Records that `repo` #`number` was looked at for head `sha` at run attempt `attempt`.
pub fn mark_checked(
    store: &Store,
    repo: &str,
    number: u64,
    sha: &str,
    attempt: u32,
) -> Result<(), StoreError> {
    let checked = Some((sha.to_ascii_lowercase(), attempt));
    update(store, repo, number, |row| row.map(|r| AutoMerge { dirty: false, checked, ..r }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_touch_check_and_disable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        assert!(!touch(&store, "o/r", 1).expect("touch"), "nothing to touch");
        assert!(get(&store, "o/r", 1).expect("get").is_none(), "touch creates nothing");
        assert!(enable(&store, "O/R", 1, None, "cli").expect("enable"));
        assert!(!enable(&store, "o/r", 1, Some("rebase"), "api:t").expect("enable"), "already on");
        let row = get(&store, "o/r", 1).expect("get").expect("on");
        assert_eq!(
            (row.method.as_deref(), row.dirty, row.enabled_by.as_str()),
            (Some("rebase"), true, "api:t")
        );
        mark_checked(&store, "o/r", 1, "ABC", 2).expect("checked");
        let row = get(&store, "o/r", 1).expect("get").expect("on");
        assert_eq!((row.dirty, row.checked), (false, Some(("abc".to_string(), 2))));
        assert!(touch(&store, "o/r", 1).expect("touch"));
        assert!(get(&store, "o/r", 1).expect("get").expect("on").dirty);
        assert_eq!(all(&store).expect("all").len(), 1);
        assert!(disable(&store, "o/r", 1).expect("disable"));
        assert!(!disable(&store, "o/r", 1).expect("disable"), "already off");
        assert!(all(&store).expect("all").is_empty());
    }
}
