//! The persisted push queue: one entry per (derivation, cache) in `cache_pushes`, the pending ones
//! indexed by `cache_push_queue`, and an audit trail in `cache_push_audit`.
//!
//! An entry is `queued` until pushed; a failed push is retried after an exponential backoff
//! ([`backoff`]: 2 s doubling to one hour) and given up (`failed`) after [`MAX_ATTEMPTS`]; a push
//! that can never succeed (a destination the SSRF protection refuses, a cache no longer configured) is
//! `failed` at once. A derivation already pushed to a cache is not queued again. Pending entries
//! survive a restart: the queue is read from redb on every pass. No write transaction is held across
//! an `.await`; every function here blocks (call through `smol::unblock`).

use std::collections::BTreeMap;

use redb::{ReadableTable as _, TableHandle as _};
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, encode};
use crate::store::schema::{CACHE_PUSHES, CACHE_PUSH_AUDIT, CACHE_PUSH_QUEUE};
use crate::store::{now_secs, Store, StoreError};

/// Failed attempts before an entry is given up.
pub const MAX_ATTEMPTS: u32 = 12;

/// The delay before attempt `attempts + 1`, after `attempts` failures (at least one).
pub fn backoff(attempts: u32) -> u64 {
    let exp = attempts.saturating_sub(1).min(20);
    (2u64 << exp).min(3600)
}

/// Where one derivation's push to one cache stands (stored by variant index; named in lower case in
/// JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushState {
    /// Waiting for its (next) attempt.
    Queued,
    /// Every path is in the cache.
    Pushed,
    /// Given up: `last_error` says why.
    Failed,
}

impl PushState {
    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Queued => "queued",
            PushState::Pushed => "pushed",
            PushState::Failed => "failed",
        }
    }
}

/// One derivation's push to one cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEntry {
    pub cache: String,
    /// The `.drv` path.
    pub drv: String,
    /// Its output paths, each pushed as its own argument.
    pub paths: Vec<String>,
    /// The repository (`owner/name`) whose job built it.
    pub repo: String,
    pub state: PushState,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Unix seconds of the next attempt (queued entries).
    pub next_attempt_at: u64,
    /// The last failure's message (free of credentials).
    pub last_error: Option<String>,
    pub enqueued_at: u64,
    pub updated_at: u64,
}

#[derive(Serialize, Deserialize)]
enum PushRecord {
    V1(PushEntry),
}

/// One push command's audit record (`security.audit_hooks`): never a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: u64,
    pub cache: String,
    pub paths: Vec<String>,
    /// `pushed`, or `failed: <message>`.
    pub outcome: String,
    pub duration_ms: u64,
}

#[derive(Serialize, Deserialize)]
enum AuditRecord {
    V1(AuditEntry),
}

fn entry_key(drv: &str, cache: &str) -> String {
    format!("{drv}\u{0}{cache}")
}

fn queue_key(cache: &str, drv: &str) -> String {
    format!("{cache}\u{0}{drv}")
}

fn decode_entry(key: &str, bytes: &[u8]) -> Result<PushEntry, StoreError> {
    match decode::<PushRecord>(CACHE_PUSHES.name(), &format!("{key:?}"), bytes)? {
        PushRecord::V1(e) => Ok(e),
    }
}

/// A push to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPush {
    pub cache: String,
    pub drv: String,
    pub paths: Vec<String>,
    pub repo: String,
}

/// Queues every push of `pushes` not already pushed or queued (a failed one is queued again). Returns
/// how many were queued.
pub fn enqueue(store: &Store, pushes: &[NewPush]) -> Result<usize, StoreError> {
    let now = now_secs();
    let tx = store.db().begin_write()?;
    let mut queued = 0;
    {
        let mut entries = tx.open_table(CACHE_PUSHES)?;
        let mut queue = tx.open_table(CACHE_PUSH_QUEUE)?;
        for p in pushes {
            let key = entry_key(&p.drv, &p.cache);
            let existing = match entries.get(key.as_str())? {
                Some(v) => Some(decode_entry(&key, v.value())?),
                None => None,
            };
            if matches!(existing.as_ref().map(|e| e.state), Some(PushState::Pushed | PushState::Queued)) {
                continue;
            }
            let entry = PushEntry {
                cache: p.cache.clone(),
                drv: p.drv.clone(),
                paths: p.paths.clone(),
                repo: p.repo.clone(),
                state: PushState::Queued,
                attempts: 0,
                next_attempt_at: now,
                last_error: None,
                enqueued_at: now,
                updated_at: now,
            };
            entries.insert(key.as_str(), encode(CACHE_PUSHES.name(), &PushRecord::V1(entry))?.as_slice())?;
            queue.insert(queue_key(&p.cache, &p.drv).as_str(), now)?;
            queued += 1;
        }
    }
    tx.commit()?;
    Ok(queued)
}

/// Due entries by cache id.
pub type Due = BTreeMap<String, Vec<PushEntry>>;

/// What is due at `now`: up to `batch` entries per cache, by cache id; and the earliest later attempt.
pub fn due(store: &Store, now: u64, batch: usize) -> Result<(Due, Option<u64>), StoreError> {
    let tx = store.db().begin_read()?;
    let queue = tx.open_table(CACHE_PUSH_QUEUE)?;
    let entries = tx.open_table(CACHE_PUSHES)?;
    let mut out: BTreeMap<String, Vec<PushEntry>> = BTreeMap::new();
    let mut next: Option<u64> = None;
    for row in queue.iter()? {
        let (k, v) = row?;
        let at = v.value();
        if at > now {
            next = Some(next.map_or(at, |n| n.min(at)));
            continue;
        }
        let Some((cache, drv)) = k.value().split_once('\u{0}') else { continue };
        let list = out.entry(cache.to_string()).or_default();
        if list.len() >= batch {
            next = Some(now);
            continue;
        }
        let key = entry_key(drv, cache);
        if let Some(e) = entries.get(key.as_str())? {
            list.push(decode_entry(&key, e.value())?);
        }
    }
    out.retain(|_, v| !v.is_empty());
    Ok((out, next))
}

/// How one attempt at a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Pushed,
    /// Failed; retried after a backoff unless attempts run out.
    Failed(String),
    /// Failed in a way no retry can fix.
    Refused(String),
}

/// Records the outcome of one attempt at `batch` (entries of one cache, whose store paths were
/// `paths`), and an audit record when `audit` is set. Returns the result label of the entries' new
/// state (`pushed`, `retry`, `failed`).
pub fn finish(
    store: &Store,
    batch: &[PushEntry],
    paths: &[String],
    attempt: &Attempt,
    duration_ms: u64,
    audit: bool,
) -> Result<&'static str, StoreError> {
    let now = now_secs();
    let tx = store.db().begin_write()?;
    let mut label = "pushed";
    {
        let mut entries = tx.open_table(CACHE_PUSHES)?;
        let mut queue = tx.open_table(CACHE_PUSH_QUEUE)?;
        for e in batch {
            let mut e = e.clone();
            e.updated_at = now;
            match attempt {
                Attempt::Pushed => {
                    e.state = PushState::Pushed;
                    e.last_error = None;
                }
                Attempt::Failed(msg) | Attempt::Refused(msg) => {
                    e.attempts += 1;
                    e.last_error = Some(msg.clone());
                    if matches!(attempt, Attempt::Refused(_)) || e.attempts >= MAX_ATTEMPTS {
                        e.state = PushState::Failed;
                        label = "failed";
                    } else {
                        e.next_attempt_at = now + backoff(e.attempts);
                        label = "retry";
                    }
                }
            }
            let qk = queue_key(&e.cache, &e.drv);
            if e.state == PushState::Queued {
                queue.insert(qk.as_str(), e.next_attempt_at)?;
            } else {
                queue.remove(qk.as_str())?;
            }
            let key = entry_key(&e.drv, &e.cache);
            entries.insert(key.as_str(), encode(CACHE_PUSHES.name(), &PushRecord::V1(e))?.as_slice())?;
        }
        if audit {
            let mut trail = tx.open_table(CACHE_PUSH_AUDIT)?;
            let seq = trail.last()?.map_or(0, |(k, _)| k.value() + 1);
            let outcome = match attempt {
                Attempt::Pushed => "pushed".to_string(),
                Attempt::Failed(m) | Attempt::Refused(m) => format!("failed: {m}"),
            };
            let record = AuditEntry {
                at: now,
                cache: batch.first().map(|e| e.cache.clone()).unwrap_or_default(),
                paths: paths.to_vec(),
                outcome,
                duration_ms,
            };
            trail.insert(seq, encode(CACHE_PUSH_AUDIT.name(), &AuditRecord::V1(record))?.as_slice())?;
        }
    }
    tx.commit()?;
    Ok(label)
}

/// Every push of `drv`, by cache.
pub fn for_drv(store: &Store, drv: &str) -> Result<Vec<PushEntry>, StoreError> {
    let prefix = format!("{drv}\u{0}");
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CACHE_PUSHES)?;
    let mut out = Vec::new();
    for row in table.range(prefix.as_str()..)? {
        let (k, v) = row?;
        if !k.value().starts_with(prefix.as_str()) {
            break;
        }
        out.push(decode_entry(k.value(), v.value())?);
    }
    Ok(out)
}

/// The `limit` most recently changed pushes; with `failed`, only those given up or whose last attempt
/// failed.
pub fn list(store: &Store, failed: bool, limit: usize) -> Result<Vec<PushEntry>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CACHE_PUSHES)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let e = decode_entry(k.value(), v.value())?;
        if !failed || e.state == PushState::Failed || e.last_error.is_some() && e.state == PushState::Queued {
            out.push(e);
        }
    }
    out.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then_with(|| a.drv.cmp(&b.drv)));
    out.truncate(limit);
    Ok(out)
}

/// Every audit record, oldest first.
pub fn audit_trail(store: &Store) -> Result<Vec<AuditEntry>, StoreError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(CACHE_PUSH_AUDIT)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        match decode::<AuditRecord>(CACHE_PUSH_AUDIT.name(), &k.value().to_string(), v.value())? {
            AuditRecord::V1(a) => out.push(a),
        }
    }
    Ok(out)
}

/// Removes the pushes that finished (`pushed` or `failed`) before `cutoff` (Unix seconds of their last
/// change); a queued push is never removed. Returns how many were removed. A derivation whose row is gone
/// is queued again if a later run asks for it (a push of paths already in the cache is cheap).
pub fn remove_finished_before(store: &Store, cutoff: u64) -> Result<u64, StoreError> {
    let tx = store.db().begin_write()?;
    let mut old = Vec::new();
    {
        let mut table = tx.open_table(CACHE_PUSHES)?;
        for row in table.iter()? {
            let (k, v) = row?;
            let e = decode_entry(k.value(), v.value())?;
            if e.state != PushState::Queued && e.updated_at < cutoff {
                old.push(k.value().to_string());
            }
        }
        for k in &old {
            table.remove(k.as_str())?;
        }
    }
    tx.commit()?;
    Ok(old.len() as u64)
}

/// Removes the audit records written before `cutoff` (Unix seconds). Returns how many were removed.
pub fn remove_audit_before(store: &Store, cutoff: u64) -> Result<u64, StoreError> {
    let tx = store.db().begin_write()?;
    let mut old = Vec::new();
    {
        let mut table = tx.open_table(CACHE_PUSH_AUDIT)?;
        for row in table.iter()? {
            let (k, v) = row?;
            let AuditRecord::V1(a) =
                decode::<AuditRecord>(CACHE_PUSH_AUDIT.name(), &k.value().to_string(), v.value())?;
            if a.at < cutoff {
                old.push(k.value());
            }
        }
        for k in &old {
            table.remove(*k)?;
        }
    }
    tx.commit()?;
    Ok(old.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!([backoff(1), backoff(2), backoff(3), backoff(12), backoff(40)], [2, 4, 8, 3600, 3600]);
    }

    #[test]
    fn queue_retry_push_and_audit() {
        let dir = std::env::temp_dir().join(format!("eka-ci-pushq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("db.redb")).unwrap();
        let p = |drv: &str| NewPush {
            cache: "c1".into(),
            drv: drv.into(),
            paths: vec![format!("/nix/store/{drv}-out")],
            repo: "o/r".into(),
        };
        assert_eq!(enqueue(&store, &[p("a"), p("b")]).unwrap(), 2);
        assert_eq!(enqueue(&store, &[p("a")]).unwrap(), 0, "already queued");
        let now = now_secs();
        let (due1, _) = due(&store, now, 1).unwrap();
        assert_eq!(due1["c1"].len(), 1, "batch size");
        let (due_all, _) = due(&store, now, 10).unwrap();
        let batch = &due_all["c1"];
        assert_eq!(
            finish(
                &store,
                batch,
                &["/nix/store/a-out".to_string()],
                &Attempt::Failed("down".into()),
                5,
                true
            )
            .unwrap(),
            "retry"
        );
        let (later, next) = due(&store, now, 10).unwrap();
        assert!(later.is_empty());
        assert!(next.unwrap() >= now + 2);
        assert_eq!(list(&store, true, 10).unwrap().len(), 2);
        let (again, _) = due(&store, now + 3600, 10).unwrap();
        assert_eq!(
            finish(
                &store,
                &again["c1"],
                &["/nix/store/a-out".to_string(), "/nix/store/b-out".to_string()],
                &Attempt::Pushed,
                7,
                true
            )
            .unwrap(),
            "pushed"
        );
        assert!(list(&store, true, 10).unwrap().is_empty());
        assert_eq!(for_drv(&store, "a").unwrap()[0].state, PushState::Pushed);
        assert_eq!(enqueue(&store, &[p("a")]).unwrap(), 0, "already pushed");
        let trail = audit_trail(&store).unwrap();
        assert_eq!(trail.len(), 2);
        assert_eq!(trail[0].outcome, "failed: down");
        assert_eq!(trail[1].outcome, "pushed");
        assert_eq!(trail[1].paths.len(), 2);
        // Retention: the finished push and the audit records go once older than the cutoff; the queued
        // push of `c` stays whatever its age.
        assert_eq!(enqueue(&store, &[p("c")]).unwrap(), 1);
        let later = now_secs() + 10;
        assert_eq!(remove_finished_before(&store, now_secs().saturating_sub(3600)).unwrap(), 0, "too new");
        assert_eq!(remove_audit_before(&store, now_secs().saturating_sub(3600)).unwrap(), 0, "too new");
        assert_eq!(remove_finished_before(&store, later).unwrap(), 2, "a and b, pushed");
        assert_eq!(remove_audit_before(&store, later).unwrap(), 2);
        assert!(audit_trail(&store).unwrap().is_empty());
        let left = list(&store, false, 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].drv.as_str(), left[0].state), ("c", PushState::Queued));
        assert_eq!(due(&store, later, 10).unwrap().0["c1"].len(), 1, "the queued push is still due");
        assert_eq!(enqueue(&store, &[p("a")]).unwrap(), 1, "a removed push is queued again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
