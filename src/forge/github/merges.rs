//! Pending `@eka-ci merge` requests: one per pull request, pinned to the head commit the requester
//! saw, in the `github_merge_requests` table, so that a request survives a restart and merges as soon
//! as that commit's gate is green.
//!
//! A request is written when a command is accepted (a newer accepted request replaces it) and removed
//! when the pull request merges, when the command is cancelled, when a push moves the head away from the
//! pinned commit, when the pull request closes, or when GitHub refuses the merge for good. Every function
//! here is blocking (call it through `smol::unblock`); it never talks to GitHub.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, encode};
use crate::store::schema::GITHUB_MERGE_REQUESTS;
use crate::store::{Store, StoreError};

const NAME: &str = "github_merge_requests";

/// One pending request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRequest {
    /// `owner/name` as GitHub spells it.
    pub repo: String,
    pub number: u64,
    /// The head commit the request is pinned to (lower case): the merge call sends it as `sha`.
    pub sha: String,
    /// The method the comment named (`merge`, `squash`, `rebase`), if any.
    pub method: Option<String>,
    pub requester: String,
    pub requester_id: u64,
    /// The command comment, for reactions.
    pub comment_id: u64,
    pub installation: Option<u64>,
    /// Unix seconds.
    pub requested_at: u64,
    /// The attempt of the pinned commit's run at which a merge was tried and skipped (the method is
    /// not allowed, or GitHub refused for a reason that may not last): not tried again until the run
    /// is re-run.
    pub skipped_at_attempt: Option<u32>,
}

#[derive(Serialize, Deserialize)]
enum MergeRequestRecord {
    V1(MergeRequest),
}

/// The key of pull request `number` of `repo`: `owner/name#N`, lower case.
pub fn key(repo: &str, number: u64) -> String {
    format!("{}#{number}", repo.to_ascii_lowercase())
}

/// The pending request of pull request `number` of `repo`.
pub fn get(store: &Store, repo: &str, number: u64) -> Result<Option<MergeRequest>, StoreError> {
    let k = key(repo, number);
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_MERGE_REQUESTS)?;
    read(&table, &k)
}

/// The request stored under `k` in `table` (read-only or in a write transaction), if any.
fn read(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    k: &str,
) -> Result<Option<MergeRequest>, StoreError> {
    match table.get(k)? {
        Some(v) => {
            let MergeRequestRecord::V1(r) = decode(NAME, k, v.value())?;
            Ok(Some(r))
        }
        None => Ok(None),
    }
}

/// Records `request`, replacing the pull request's earlier one.
pub fn put(store: &Store, request: &MergeRequest) -> Result<(), StoreError> {
    let k = key(&request.repo, request.number);
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(GITHUB_MERGE_REQUESTS)?;
        table.insert(k.as_str(), encode(NAME, &MergeRequestRecord::V1(request.clone()))?.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Removes the pending request of pull request `number` of `repo` if it is still the one made by
/// comment `comment_id` (any, with `None`); returns the removed request.
pub fn remove(
    store: &Store,
    repo: &str,
    number: u64,
    comment_id: Option<u64>,
) -> Result<Option<MergeRequest>, StoreError> {
    let k = key(repo, number);
    let tx = store.db().begin_write()?;
    let removed = {
        let mut table = tx.open_table(GITHUB_MERGE_REQUESTS)?;
        let current = read(&table, &k)?;
        match current {
            Some(r) if comment_id.is_none_or(|c| c == r.comment_id) => {
                table.remove(k.as_str())?;
                Some(r)
            }
            _ => None,
        }
    };
    tx.commit()?;
    Ok(removed)
}

/// Every pending request.
pub fn all(store: &Store) -> Result<Vec<MergeRequest>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(GITHUB_MERGE_REQUESTS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let MergeRequestRecord::V1(r) = decode(NAME, k.value(), v.value())?;
        out.push(r);
    }
    Ok(out)
}

/// Marks the request of comment `comment_id` as skipped at run attempt `attempt`.
pub fn mark_skipped(
    store: &Store,
    repo: &str,
    number: u64,
    comment_id: u64,
    attempt: u32,
) -> Result<(), StoreError> {
    let k = key(repo, number);
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(GITHUB_MERGE_REQUESTS)?;
        let current = read(&table, &k)?;
        if let Some(mut r) = current.filter(|r| r.comment_id == comment_id) {
            r.skipped_at_attempt = Some(attempt);
            table.insert(k.as_str(), encode(NAME, &MergeRequestRecord::V1(r))?.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(comment_id: u64) -> MergeRequest {
        MergeRequest {
            repo: "Octo/Widgets".into(),
            number: 7,
            sha: "a".repeat(40),
            method: Some("rebase".into()),
            requester: "alice".into(),
            requester_id: 1,
            comment_id,
            installation: Some(3),
            requested_at: 1,
            skipped_at_attempt: None,
        }
    }

    #[test]
    fn one_request_per_pull_request_removed_only_by_its_comment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        put(&store, &request(10)).expect("put");
        put(&store, &request(11)).expect("put");
        assert_eq!(all(&store).expect("all").len(), 1, "the newer request replaces the older");
        assert_eq!(get(&store, "octo/widgets", 7).expect("get").map(|r| r.comment_id), Some(11));
        assert_eq!(remove(&store, "OCTO/widgets", 7, Some(10)).expect("remove"), None, "not that comment's");
        mark_skipped(&store, "octo/widgets", 7, 11, 2).expect("mark");
        assert_eq!(get(&store, "octo/widgets", 7).expect("get").and_then(|r| r.skipped_at_attempt), Some(2));
        assert!(remove(&store, "octo/widgets", 7, None).expect("remove").is_some());
        assert!(get(&store, "octo/widgets", 7).expect("get").is_none());
    }
}
