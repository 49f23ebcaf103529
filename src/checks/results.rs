//! The `check_results` table: the last result of each check of a repository at a commit, keyed
//! `commit \0 repository \0 check name`, so `ekaci checks` and `/v1/commits/{sha}/checks` read them after
//! a restart. The whole output stays in its file (`output_file`); the row holds the report with its tail.
//!
//! Rows are postcard-encoded versioned records ([`crate::store::codec`]). A later run of the same check
//! replaces its row. This file never touches any other table.

use redb::{ReadableTable as _, TableHandle};
use serde::{Deserialize, Serialize};

use super::CheckReport;
use crate::store::codec::{decode, encode};
use crate::store::schema::CHECK_RESULTS;
use crate::store::{Store, StoreError};

/// A stored check result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheck {
    /// The repository as jobsets record it (its clone URL or local `file://` URL).
    pub repo: String,
    pub commit: String,
    pub report: CheckReport,
    /// When the check finished (Unix seconds).
    pub finished_at: u64,
}

#[derive(Serialize, Deserialize)]
enum CheckResultRecord {
    V1(StoredCheck),
}

fn key(commit: &str, repo: &str, name: &str) -> String {
    format!("{commit}\u{0}{repo}\u{0}{name}")
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<StoredCheck, StoreError> {
    match decode::<CheckResultRecord>(CHECK_RESULTS.name(), &format!("{key:?}"), bytes)? {
        CheckResultRecord::V1(c) => Ok(c),
    }
}

/// Stores (or replaces) the result of `report.name` for `repo` at `commit`.
pub fn put(store: &Store, repo: &str, commit: &str, report: &CheckReport) -> Result<(), StoreError> {
    let row = StoredCheck {
        repo: repo.into(),
        commit: commit.into(),
        report: report.clone(),
        finished_at: crate::store::now_secs(),
    };
    let k = key(commit, repo, &report.name);
    let bytes = encode(CHECK_RESULTS.name(), &CheckResultRecord::V1(row))?;
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(CHECK_RESULTS)?;
        table.insert(k.as_str(), bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Every stored check result of `commit` (any repository), in key order.
pub fn for_commit(store: &Store, commit: &str) -> Result<Vec<StoredCheck>, StoreError> {
    let (start, end) = (format!("{commit}\u{0}"), format!("{commit}\u{1}"));
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CHECK_RESULTS)?;
    let mut out = Vec::new();
    for entry in table.range(start.as_str()..end.as_str())? {
        let (k, v) = entry?;
        out.push(decode_row(k.value(), v.value())?);
    }
    Ok(out)
}

/// The `limit` most recently finished results, newest first.
pub fn recent(store: &Store, limit: usize) -> Result<Vec<StoredCheck>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CHECK_RESULTS)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push(decode_row(k.value(), v.value())?);
    }
    out.sort_by(|a, b| b.finished_at.cmp(&a.finished_at).then_with(|| a.report.name.cmp(&b.report.name)));
    out.truncate(limit);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{CheckOutcome, Ending};

    #[test]
    fn results_are_stored_per_commit_repository_and_name_and_replaced_by_a_later_run() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("open");
        let report = |name: &str, code: i32| CheckReport {
            name: name.into(),
            shell: "dev".into(),
            shell_drv: None,
            outcome: CheckOutcome::Ran { ending: Ending::Exited(code), duration_ms: 5, output_bytes: 1 },
            tail: "t".into(),
            output_file: None,
        };
        put(&store, "file:///r", "aaaa", &report("lint", 1)).expect("put");
        put(&store, "file:///r", "aaaa", &report("lint", 0)).expect("put again");
        put(&store, "file:///r", "aaaa", &report("fmt", 0)).expect("put");
        put(&store, "file:///r", "aaab", &report("lint", 2)).expect("put");
        let rows = for_commit(&store, "aaaa").expect("read");
        let names: Vec<&str> = rows.iter().map(|r| r.report.name.as_str()).collect();
        assert_eq!(names, ["fmt", "lint"]);
        assert!(rows[1].report.passed(), "the later run replaced the first");
        assert_eq!(recent(&store, 10).expect("recent").len(), 3);
    }
}
