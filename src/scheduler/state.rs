//! The persisted build state machine: the state of each derivation, its attempts, its event history and
//! the owners (jobsets, rebuild requests) that asked for builds, stored in redb.
//!
//! States and their transitions:
//!
//! ```text
//! Queued ──▶ Buildable ──▶ Building ──▶ Completed(Success)
//!   ▲            ▲            │    ├──▶ FailedRetry ──(backoff)──▶ Buildable   (first failure)
//!   │            │            │    ├──▶ Completed(Failure)                     (second failure)
//!   │            └────────────┘    └──▶ Interrupted(Timeout | MaxDuration | OutOfMemory | ProcessDeath | NoBuilder)
//!   │      (batch ended before the build started, or the server restarted)
//!   └── Rebuild request (from any terminal state), a dependency rebuilt successfully (TransitiveFailure,
//!       Blocked), a new request for an Interrupted(Cancelled) derivation.
//! Queued ──▶ Cached              (outputs already valid; nothing built)
//! Queued ──▶ TransitiveFailure   (a dependency failed permanently; records which)
//! Queued ──▶ Blocked             (a dependency was interrupted; records which)
//! any non-terminal ──▶ Interrupted(Cancelled)   (no live owner needs it any more)
//! ```
//!
//! Terminal states ([`DrvState::is_terminal`]) change only through an explicit rebuild (or, for
//! `Interrupted(Cancelled)`, a new request: cancellation is not a verdict on the derivation).
//!
//! Tables (see `migrations-free-schema/`): `build_states` (drv id → [`DrvRecord`]), `build_history`
//! ((drv id, seq) → [`HistoryEntry`]), `build_attempts` ((drv id, attempt) → [`Attempt`]), `build_owners`
//! ([`Owner::key`] → [`OwnerRecord`]). Every call here is blocking; the scheduler runs them on `smol::unblock`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, TableHandle};
use serde::{Deserialize, Serialize};

use crate::graph::DrvId;
use crate::scheduler::Owner;
use crate::store::codec::{decode, encode};
use crate::store::schema::{BUILD_ATTEMPTS, BUILD_HISTORY, BUILD_OWNERS, BUILD_STATES};
use crate::store::{Store, StoreError};

/// Why a derivation's build was interrupted rather than completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InterruptKind {
    /// No output for `build_no_output_timeout_seconds`.
    Timeout,
    /// Ran longer than `build_max_duration_seconds`.
    MaxDuration,
    OutOfMemory,
    /// No live owner needs it any more.
    Cancelled,
    /// The build (or the Nix process running it) died by a signal or disappeared.
    ProcessDeath,
    /// No builder offers the derivation's system and required features.
    NoBuilder,
}

impl fmt::Display for InterruptKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterruptKind::Timeout => "timeout",
            InterruptKind::MaxDuration => "max-duration",
            InterruptKind::OutOfMemory => "out-of-memory",
            InterruptKind::Cancelled => "cancelled",
            InterruptKind::ProcessDeath => "process-death",
            InterruptKind::NoBuilder => "no-builder",
        })
    }
}

/// How a build that ran to its end ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completion {
    Success,
    /// Failed twice (the first failure is retried once).
    Failure {
        message: String,
        exit_code: Option<i32>,
    },
}

/// The state of one derivation. See the module documentation for the transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrvState {
    /// Needed, waiting for dependencies.
    Queued,
    /// Every input derivation is `Completed(Success)` or `Cached`; waiting for a builder.
    Buildable,
    Building,
    Completed(Completion),
    /// Failed once; requeued after the retry backoff.
    FailedRetry {
        message: String,
    },
    /// A dependency (the .drv path recorded) failed permanently.
    TransitiveFailure {
        dependency: String,
    },
    /// A dependency (the .drv path recorded) was interrupted.
    Blocked {
        dependency: String,
    },
    Interrupted {
        kind: InterruptKind,
        reason: String,
    },
    /// Every output was already valid: nothing was built.
    Cached,
}

impl DrvState {
    /// Whether the state is final (changes only through an explicit rebuild).
    pub fn is_terminal(&self) -> bool {
        !matches!(
            self,
            DrvState::Queued | DrvState::Buildable | DrvState::Building | DrvState::FailedRetry { .. }
        )
    }

    /// Whether the outputs are available: dependents may build.
    pub fn is_done(&self) -> bool {
        matches!(self, DrvState::Completed(Completion::Success) | DrvState::Cached)
    }

    /// A terminal state that is not a success: dependents cannot build.
    pub fn is_failed(&self) -> bool {
        self.is_terminal() && !self.is_done()
    }

    /// A short name (`success`, `failure`, `transitive-failure`, …), also the `outcome` label of
    /// `eka_ci_build_outcome_total`.
    pub fn name(&self) -> &'static str {
        match self {
            DrvState::Queued => "queued",
            DrvState::Buildable => "buildable",
            DrvState::Building => "building",
            DrvState::Completed(Completion::Success) => "success",
            DrvState::Completed(Completion::Failure { .. }) => "failure",
            DrvState::FailedRetry { .. } => "failed-retry",
            DrvState::TransitiveFailure { .. } => "transitive-failure",
            DrvState::Blocked { .. } => "blocked",
            DrvState::Interrupted { kind, .. } => match kind {
                InterruptKind::Timeout => "interrupted-timeout",
                InterruptKind::MaxDuration => "interrupted-max-duration",
                InterruptKind::OutOfMemory => "interrupted-out-of-memory",
                InterruptKind::Cancelled => "interrupted-cancelled",
                InterruptKind::ProcessDeath => "interrupted-process-death",
                InterruptKind::NoBuilder => "interrupted-no-builder",
            },
            DrvState::Cached => "cached",
        }
    }

    /// Whether a new request should start this derivation over (a cancelled derivation was never judged).
    pub(crate) fn restarts_on_request(&self) -> bool {
        matches!(self, DrvState::Interrupted { kind: InterruptKind::Cancelled, .. })
    }
}

impl fmt::Display for DrvState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrvState::Completed(Completion::Failure { message, exit_code: Some(c) }) => {
                write!(f, "failure (exit code {c}): {message}")
            }
            DrvState::Completed(Completion::Failure { message, exit_code: None }) => {
                write!(f, "failure: {message}")
            }
            DrvState::FailedRetry { message } => write!(f, "failed, will retry: {message}"),
            DrvState::TransitiveFailure { dependency } => {
                write!(f, "transitive failure: {dependency} failed")
            }
            DrvState::Blocked { dependency } => write!(f, "blocked: {dependency} was interrupted"),
            DrvState::Interrupted { kind, reason } => write!(f, "interrupted ({kind}): {reason}"),
            other => f.write_str(other.name()),
        }
    }
}

/// The current state of a derivation and its counters (`build_states`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrvRecord {
    pub state: DrvState,
    /// The number of the last attempt started (0: never started). Attempts are numbered from 1 and the
    /// numbering continues across rebuilds.
    pub attempt: u32,
    /// Failures since the last (re)queue by a rebuild: the first is retried, the second is final.
    pub failures: u32,
    /// The sequence number of the next history entry.
    pub next_seq: u32,
    /// When a success should requeue the dependents blocked or failed because of this derivation
    /// (set by a rebuild).
    pub requeue_dependents: bool,
}

impl DrvRecord {
    pub fn new() -> DrvRecord {
        DrvRecord { state: DrvState::Queued, attempt: 0, failures: 0, next_seq: 0, requeue_dependents: false }
    }
}

impl Default for DrvRecord {
    fn default() -> Self {
        DrvRecord::new()
    }
}

#[derive(Serialize, Deserialize)]
enum BuildStateRecord {
    V1(DrvRecord),
}

/// One transition of a derivation (`build_history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// The state entered.
    pub state: DrvState,
    /// The attempt number at the time (0 before the first start).
    pub attempt: u32,
    /// Why, in words (`requested by owner 3`, `rebuild requested`, `server restarted`, …); may be empty.
    pub note: String,
}

#[derive(Serialize, Deserialize)]
enum BuildHistoryRecord {
    V1(HistoryEntry),
}

/// One attempt to build a derivation (`build_attempts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    /// The builder's name (`local`, `fixed-output`, or a remote builder's URI).
    pub builder: String,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    /// The state the attempt ended in (`success`, `failure`, …), once ended.
    pub outcome: Option<String>,
    /// The build log, when the runner wrote one.
    pub log: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum BuildAttemptRecord {
    V1(Attempt),
}

/// Where an owner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnerStatus {
    /// Its derivations are being built (resumed after a restart).
    Live,
    /// Every derivation it needs is terminal.
    Completed,
    Cancelled,
}

/// An owner of builds: the roots it asked for (`build_owners`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub roots: Vec<String>,
    pub status: OwnerStatus,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
enum BuildOwnerRecord {
    V1(OwnerRecord),
}

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Writes accumulated by the scheduler loop and committed together (one transaction per loop turn).
#[derive(Debug, Default)]
pub struct Writes {
    pub states: BTreeMap<DrvId, DrvRecord>,
    pub history: Vec<(DrvId, u32, HistoryEntry)>,
    pub attempts: BTreeMap<(DrvId, u32), Attempt>,
    pub owners: BTreeMap<Owner, OwnerRecord>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.history.is_empty()
            && self.attempts.is_empty()
            && self.owners.is_empty()
    }

    /// Commits everything in one write transaction.
    pub fn commit(&self, store: &Store) -> Result<(), StoreError> {
        let tx = store.db().begin_write()?;
        {
            let mut states = tx.open_table(BUILD_STATES)?;
            for (id, rec) in &self.states {
                states.insert(
                    id.0,
                    encode(BUILD_STATES.name(), &BuildStateRecord::V1(rec.clone()))?.as_slice(),
                )?;
            }
            let mut history = tx.open_table(BUILD_HISTORY)?;
            for (id, seq, entry) in &self.history {
                history.insert(
                    (id.0, *seq),
                    encode(BUILD_HISTORY.name(), &BuildHistoryRecord::V1(entry.clone()))?.as_slice(),
                )?;
            }
            let mut attempts = tx.open_table(BUILD_ATTEMPTS)?;
            for ((id, n), a) in &self.attempts {
                attempts.insert(
                    (id.0, *n),
                    encode(BUILD_ATTEMPTS.name(), &BuildAttemptRecord::V1(a.clone()))?.as_slice(),
                )?;
            }
            let mut owners = tx.open_table(BUILD_OWNERS)?;
            for (owner, o) in &self.owners {
                owners.insert(
                    owner.key(),
                    encode(BUILD_OWNERS.name(), &BuildOwnerRecord::V1(o.clone()))?.as_slice(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

fn decode_state(id: u32, bytes: &[u8]) -> Result<DrvRecord, StoreError> {
    match decode::<BuildStateRecord>(BUILD_STATES.name(), &id.to_string(), bytes)? {
        BuildStateRecord::V1(r) => Ok(r),
    }
}

fn decode_owner(id: u64, bytes: &[u8]) -> Result<OwnerRecord, StoreError> {
    match decode::<BuildOwnerRecord>(BUILD_OWNERS.name(), &id.to_string(), bytes)? {
        BuildOwnerRecord::V1(r) => Ok(r),
    }
}

/// Read access to the build tables, within one read transaction.
pub struct Reader {
    tx: redb::ReadTransaction,
}

impl Reader {
    pub fn new(store: &Store) -> Result<Reader, StoreError> {
        Ok(Reader { tx: store.db().begin_read()? })
    }

    /// The state record of `id`, if it has one.
    pub fn state(&self, id: DrvId) -> Result<Option<DrvRecord>, StoreError> {
        let t = self.tx.open_table(BUILD_STATES)?;
        match t.get(id.0)? {
            Some(v) => Ok(Some(decode_state(id.0, v.value())?)),
            None => Ok(None),
        }
    }

    /// The state records of many ids (absent ones are skipped).
    pub fn states(
        &self,
        ids: impl IntoIterator<Item = DrvId>,
    ) -> Result<Vec<(DrvId, DrvRecord)>, StoreError> {
        let t = self.tx.open_table(BUILD_STATES)?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(v) = t.get(id.0)? {
                out.push((id, decode_state(id.0, v.value())?));
            }
        }
        Ok(out)
    }

    /// The state names of `ids` (those with a state), sorted by id, in one pass: a walk over the table
    /// from the smallest id to the largest when the ids are dense enough in that range (a jobset's
    /// derivations usually are), one lookup each in id order otherwise.
    pub fn state_names(&self, mut ids: Vec<u32>) -> Result<Vec<(u32, &'static str)>, StoreError> {
        ids.sort_unstable();
        ids.dedup();
        let t = self.tx.open_table(BUILD_STATES)?;
        let mut out = Vec::with_capacity(ids.len());
        let (Some(&first), Some(&last)) = (ids.first(), ids.last()) else { return Ok(out) };
        if u64::from(last - first) < 4 * ids.len() as u64 {
            let mut wanted = ids.iter().copied().peekable();
            for entry in t.range(first..=last)? {
                let (k, v) = entry?;
                let id = k.value();
                while wanted.next_if(|w| *w < id).is_some() {}
                if wanted.next_if_eq(&id).is_some() {
                    out.push((id, decode_state(id, v.value())?.state.name()));
                }
            }
        } else {
            for id in ids {
                if let Some(v) = t.get(id)? {
                    out.push((id, decode_state(id, v.value())?.state.name()));
                }
            }
        }
        Ok(out)
    }

    /// The history of `id`, oldest first.
    pub fn history(&self, id: DrvId) -> Result<Vec<HistoryEntry>, StoreError> {
        let t = self.tx.open_table(BUILD_HISTORY)?;
        let mut out = Vec::new();
        for entry in t.range((id.0, 0)..=(id.0, u32::MAX))? {
            let (k, v) = entry?;
            let (_, seq) = k.value();
            match decode::<BuildHistoryRecord>(
                BUILD_HISTORY.name(),
                &format!("({}, {seq})", id.0),
                v.value(),
            )? {
                BuildHistoryRecord::V1(e) => out.push(e),
            }
        }
        Ok(out)
    }

    /// The attempts of `id`, in order.
    pub fn attempts(&self, id: DrvId) -> Result<Vec<Attempt>, StoreError> {
        let t = self.tx.open_table(BUILD_ATTEMPTS)?;
        let mut out = Vec::new();
        for entry in t.range((id.0, 0)..=(id.0, u32::MAX))? {
            let (k, v) = entry?;
            let (_, n) = k.value();
            match decode::<BuildAttemptRecord>(BUILD_ATTEMPTS.name(), &format!("({}, {n})", id.0), v.value())?
            {
                BuildAttemptRecord::V1(a) => out.push(a),
            }
        }
        Ok(out)
    }

    /// One attempt of `id`.
    pub fn attempt(&self, id: DrvId, n: u32) -> Result<Option<Attempt>, StoreError> {
        let t = self.tx.open_table(BUILD_ATTEMPTS)?;
        match t.get((id.0, n))? {
            Some(v) => match decode::<BuildAttemptRecord>(
                BUILD_ATTEMPTS.name(),
                &format!("({}, {n})", id.0),
                v.value(),
            )? {
                BuildAttemptRecord::V1(a) => Ok(Some(a)),
            },
            None => Ok(None),
        }
    }

    /// The record of `owner`.
    pub fn owner(&self, owner: Owner) -> Result<Option<OwnerRecord>, StoreError> {
        let t = self.tx.open_table(BUILD_OWNERS)?;
        let key = owner.key();
        match t.get(key)? {
            Some(v) => Ok(Some(decode_owner(key, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every owner, in key order. A key no owner has (a rebuild key beyond every derivation id; never
    /// written) is skipped with a warning.
    pub fn owners(&self) -> Result<Vec<(Owner, OwnerRecord)>, StoreError> {
        let t = self.tx.open_table(BUILD_OWNERS)?;
        let mut out = Vec::new();
        for entry in t.iter()? {
            let (k, v) = entry?;
            let key = k.value();
            let Some(owner) = Owner::from_key(key) else {
                tracing::warn!(key, table = BUILD_OWNERS.name(), "skipping a row whose key names no owner");
                continue;
            };
            out.push((owner, decode_owner(key, v.value())?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states() {
        assert!(!DrvState::Queued.is_terminal());
        assert!(!DrvState::Building.is_terminal());
        assert!(!DrvState::FailedRetry { message: String::new() }.is_terminal());
        assert!(DrvState::Cached.is_terminal() && DrvState::Cached.is_done());
        let f = DrvState::Completed(Completion::Failure { message: "x".into(), exit_code: Some(1) });
        assert!(f.is_terminal() && f.is_failed() && !f.is_done());
        assert_eq!(f.to_string(), "failure (exit code 1): x");
        let c = DrvState::Interrupted { kind: InterruptKind::Cancelled, reason: "r".into() };
        assert!(c.restarts_on_request() && c.is_failed());
        assert_eq!(c.name(), "interrupted-cancelled");
    }

    #[test]
    fn records_round_trip() {
        let rec = DrvRecord {
            state: DrvState::TransitiveFailure { dependency: "/nix/store/x.drv".into() },
            attempt: 2,
            failures: 1,
            next_seq: 7,
            requeue_dependents: true,
        };
        let bytes = encode("t", &BuildStateRecord::V1(rec.clone())).expect("encode");
        assert_eq!(decode_state(1, &bytes).expect("decode"), rec);
    }
}
