//! The `change_summaries` table: computed [`JobSummary`]s keyed `head_sha \0 base_sha \0 job`, so a summary
//! is computed once per (head, base, job) and served from here to the check run, the HTTP API and the CLI.
//!
//! Rows are postcard-encoded versioned records ([`crate::store::codec`]) and are removed by age
//! ([`prune`]). This file must never touch any other table, and never decide whether a row is still valid
//! for given settings (the caller compares [`JobSummary::settings`]).

use redb::TableHandle;
use serde::{Deserialize, Serialize};

use super::JobSummary;
use crate::store::codec::{decode, encode};
use crate::store::schema::CHANGE_SUMMARIES;
use crate::store::{Store, StoreError};

#[derive(Serialize, Deserialize)]
enum SummaryRecord {
    /// A summary computed before rebuilds were counted as nix-env lists attributes: stale, its payload is
    /// not read (postcard ignores the bytes after the variant), and it reads as absent (recomputed).
    V1(Stale),
    V2(Box<JobSummary>),
}

/// The unread payload of a stale record.
#[derive(Serialize, Deserialize)]
struct Stale;

fn key(head_sha: &str, base_sha: &str, job: &str) -> String {
    format!("{head_sha}\u{0}{base_sha}\u{0}{job}")
}

fn decode_row(key: &str, bytes: &[u8]) -> Result<Option<JobSummary>, StoreError> {
    match decode::<SummaryRecord>(CHANGE_SUMMARIES.name(), &format!("{key:?}"), bytes)? {
        SummaryRecord::V1(Stale) => Ok(None),
        SummaryRecord::V2(s) => Ok(Some(*s)),
    }
}

/// The cached summary of `job` at `head_sha` against `base_sha`, if any.
pub fn get(
    store: &Store,
    head_sha: &str,
    base_sha: &str,
    job: &str,
) -> Result<Option<JobSummary>, StoreError> {
    let k = key(head_sha, base_sha, job);
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CHANGE_SUMMARIES)?;
    let found = table.get(k.as_str())?;
    Ok(found.map(|v| decode_row(&k, v.value())).transpose()?.flatten())
}

/// Stores (or replaces) a summary under its (head, base, job).
pub fn put(store: &Store, summary: &JobSummary) -> Result<(), StoreError> {
    put_as(store, &summary.job, summary)
}

/// Stores (or replaces) a summary under (head, base, `job`): `job` is the stored job key (with the
/// definition's fingerprint when the job was evaluated with another commit's definition, see
/// `jobset::JobsetKey::job`), so summaries of different definitions never stand in for each other.
pub fn put_as(store: &Store, job: &str, summary: &JobSummary) -> Result<(), StoreError> {
    let k = key(&summary.head_sha, &summary.base_sha, job);
    let bytes = encode(CHANGE_SUMMARIES.name(), &SummaryRecord::V2(Box::new(summary.clone())))?;
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(CHANGE_SUMMARIES)?;
        table.insert(k.as_str(), bytes.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Every cached summary of commit `head_sha` (any base, any job), in key order.
pub fn for_head(store: &Store, head_sha: &str) -> Result<Vec<JobSummary>, StoreError> {
    let start = format!("{head_sha}\u{0}");
    let end = format!("{head_sha}\u{1}");
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CHANGE_SUMMARIES)?;
    let mut out = Vec::new();
    for entry in table.range(start.as_str()..end.as_str())? {
        let (k, v) = entry?;
        out.extend(decode_row(k.value(), v.value())?);
    }
    Ok(out)
}

/// Removes every summary computed more than `max_age_secs` ago (rows that cannot be decoded, and stale
/// ones, are removed too: they can only be recomputed); returns how many were removed.
pub fn prune(store: &Store, max_age_secs: u64) -> Result<usize, StoreError> {
    let cutoff = crate::store::now_secs().saturating_sub(max_age_secs);
    let tx = store.db().begin_write()?;
    let mut removed = 0;
    {
        let mut table = tx.open_table(CHANGE_SUMMARIES)?;
        table.retain(|k, v| {
            let keep = decode_row(k, v).is_ok_and(|s| s.is_some_and(|s| s.computed_at >= cutoff));
            if !keep {
                removed += 1;
            }
            keep
        })?;
    }
    tx.commit()?;
    Ok(removed)
}

/// How many summaries are cached.
pub fn len(store: &Store) -> Result<u64, StoreError> {
    use redb::ReadableTableMetadata;
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CHANGE_SUMMARIES)?;
    Ok(table.len()?)
}
