//! The `check_results` table: the last result of each check of a repository at a commit, keyed
//! `commit \0 repository \0 check name`, so `ekaci checks` and `/v1/commits/{sha}/checks` read them after
//! a restart. The whole output stays in its file (`output_file`); the row holds the report with its tail.
//!
//! Rows are postcard-encoded versioned records ([`crate::store::codec`]). A later run of the same check
//! replaces its row. A row records the hash of the check's configuration and limits
//! ([`super::config_hash`]), so a restarted run reuses a finished result ([`finished`]) instead of running
//! the check again. Retention removes rows older than `[retention] logs_days` ([`remove_older_than`]).
//! This file never touches any other table.

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
    /// [`super::config_hash`] of the check's configuration and the limits it ran under (absent in rows
    /// written before it was recorded: those are never reused).
    pub config_hash: Option<String>,
}

/// The first layout of a row (no configuration hash).
#[derive(Serialize, Deserialize)]
struct StoredCheckV1 {
    repo: String,
    commit: String,
    report: CheckReport,
    finished_at: u64,
}

#[derive(Serialize, Deserialize)]
enum CheckResultRecord {
    V1(StoredCheckV1),
    V2(StoredCheck),
}

fn key(commit: &str, repo: &str, name: &str) -> String {
    format!("{commit}\u{0}{repo}\u{0}{name}")
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<StoredCheck, StoreError> {
    match decode::<CheckResultRecord>(CHECK_RESULTS.name(), &format!("{key:?}"), bytes)? {
        CheckResultRecord::V1(c) => Ok(StoredCheck {
            repo: c.repo,
            commit: c.commit,
            report: c.report,
            finished_at: c.finished_at,
            config_hash: None,
        }),
        CheckResultRecord::V2(c) => Ok(c),
    }
}

/// Stores (or replaces) the result of `report.name` for `repo` at `commit`, run with the configuration
/// whose hash is `config_hash`.
pub fn put(
    store: &Store,
    repo: &str,
    commit: &str,
    report: &CheckReport,
    config_hash: &str,
) -> Result<(), StoreError> {
    let row = StoredCheck {
        repo: repo.into(),
        commit: commit.into(),
        report: report.clone(),
        finished_at: crate::store::now_secs(),
        config_hash: Some(config_hash.into()),
    };
    put_row(store, &row)
}

/// Stores (or replaces) `row` as it is (its `finished_at` included).
pub fn put_row(store: &Store, row: &StoredCheck) -> Result<(), StoreError> {
    let k = key(&row.commit, &row.repo, &row.report.name);
    let bytes = encode(CHECK_RESULTS.name(), &CheckResultRecord::V2(row.clone()))?;
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

/// The stored result of check `name` of `repo` at `commit` when it finished running (the command ran
/// in the sandbox, whatever its ending) with the same configuration and limits (`config_hash`); `None`
/// when there is none, or when the check did not run (its shell was missing, the sandbox could not
/// start): those run again.
pub fn finished(
    store: &Store,
    repo: &str,
    commit: &str,
    name: &str,
    config_hash: &str,
) -> Result<Option<CheckReport>, StoreError> {
    let k = key(commit, repo, name);
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CHECK_RESULTS)?;
    let Some(v) = table.get(k.as_str())? else { return Ok(None) };
    let row = decode_row(&k, v.value())?;
    let ran = matches!(row.report.outcome, super::CheckOutcome::Ran { .. });
    Ok((ran && row.config_hash.as_deref() == Some(config_hash)).then_some(row.report))
}

/// Removes the rows that finished before `cutoff` (Unix seconds) and their output files. Returns how
/// many rows were removed and the bytes their files took.
pub fn remove_older_than(store: &Store, cutoff: u64) -> Result<(u64, u64), StoreError> {
    let tx = store.db().begin_write()?;
    let mut old = Vec::new();
    {
        let mut table = tx.open_table(CHECK_RESULTS)?;
        for entry in table.iter()? {
            let (k, v) = entry?;
            let row = decode_row(k.value(), v.value())?;
            if row.finished_at < cutoff {
                old.push((k.value().to_string(), row.report.output_file));
            }
        }
        for (k, _) in &old {
            table.remove(k.as_str())?;
        }
    }
    tx.commit()?;
    let mut bytes = 0;
    for file in old.iter().filter_map(|(_, f)| f.as_deref()) {
        let len = std::fs::symlink_metadata(file).map_or(0, |m| m.len());
        match std::fs::remove_file(file) {
            Ok(()) => bytes += len,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file, error = %e, "cannot remove an old check's output"),
        }
    }
    Ok((old.len() as u64, bytes))
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

    /// A report of check `name` that ran and exited with `code`.
    fn ran(name: &str, code: i32) -> CheckReport {
        CheckReport {
            name: name.into(),
            shell: "dev".into(),
            shell_drv: None,
            outcome: CheckOutcome::Ran { ending: Ending::Exited(code), duration_ms: 5, output_bytes: 1 },
            tail: "t".into(),
            output_file: None,
        }
    }

    #[test]
    fn results_are_stored_per_commit_repository_and_name_and_replaced_by_a_later_run() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("open");
        put(&store, "file:///r", "aaaa", &ran("lint", 1), "h").expect("put");
        put(&store, "file:///r", "aaaa", &ran("lint", 0), "h").expect("put again");
        put(&store, "file:///r", "aaaa", &ran("fmt", 0), "h").expect("put");
        put(&store, "file:///r", "aaab", &ran("lint", 2), "h").expect("put");
        let rows = for_commit(&store, "aaaa").expect("read");
        let names: Vec<&str> = rows.iter().map(|r| r.report.name.as_str()).collect();
        assert_eq!(names, ["fmt", "lint"]);
        assert!(rows[1].report.passed(), "the later run replaced the first");
        assert_eq!(recent(&store, 10).expect("recent").len(), 3);
    }

    #[test]
    fn a_finished_result_is_reused_only_for_the_same_configuration_and_only_when_it_ran() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("open");
        let ran = ran("lint", 1);
        put(&store, "file:///r", "c1", &ran, "h1").expect("put");
        assert_eq!(finished(&store, "file:///r", "c1", "lint", "h1").expect("get"), Some(ran.clone()));
        assert_eq!(finished(&store, "file:///r", "c1", "lint", "h2").expect("get"), None, "other config");
        assert_eq!(finished(&store, "file:///other", "c1", "lint", "h1").expect("get"), None);
        assert_eq!(finished(&store, "file:///r", "c2", "lint", "h1").expect("get"), None);
        let error = CheckReport { outcome: CheckOutcome::Error { message: "disk full".into() }, ..ran };
        put(&store, "file:///r", "c1", &error, "h1").expect("put");
        assert_eq!(finished(&store, "file:///r", "c1", "lint", "h1").expect("get"), None, "did not run");
    }

    #[test]
    fn a_row_of_the_first_layout_is_read_and_never_reused() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("open");
        let report = ran("lint", 0);
        let old = StoredCheckV1 { repo: "file:///r".into(), commit: "c1".into(), report, finished_at: 7 };
        let bytes = encode(CHECK_RESULTS.name(), &CheckResultRecord::V1(old)).expect("encode");
        let tx = store.db().begin_write().expect("tx");
        tx.open_table(CHECK_RESULTS)
            .expect("table")
            .insert(key("c1", "file:///r", "lint").as_str(), bytes.as_slice())
            .expect("insert");
        tx.commit().expect("commit");
        let rows = for_commit(&store, "c1").expect("read");
        assert_eq!((rows.len(), rows[0].finished_at, rows[0].config_hash.clone()), (1, 7, None));
        assert_eq!(finished(&store, "file:///r", "c1", "lint", "h").expect("get"), None);
    }

    #[test]
    fn old_results_and_their_output_files_are_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("db.redb")).expect("open");
        let file = dir.path().join("out.log");
        std::fs::write(&file, "0123456789").expect("write");
        let report = |name: &str, output: Option<String>| CheckReport { output_file: output, ..ran(name, 0) };
        put(&store, "file:///r", "c1", &report("old", Some(file.display().to_string())), "h").expect("put");
        let now = crate::store::now_secs();
        assert_eq!(remove_older_than(&store, now.saturating_sub(60)).expect("gc"), (0, 0), "too young");
        put(&store, "file:///r", "c1", &report("young", None), "h").expect("put");
        // Everything finished before a cutoff in the future.
        let (rows, bytes) = remove_older_than(&store, now + 3600).expect("gc");
        assert_eq!((rows, bytes), (2, 10));
        assert!(!file.exists());
        assert!(for_commit(&store, "c1").expect("read").is_empty());
    }
}
