//! Jobsets: what one job of one repository evaluates to at one commit, stored once.
//!
//! A jobset is keyed by (repository, commit, job). It records the evaluation's state and, per attribute,
//! either the derivation it produced or the evaluation error. Evaluating the same key again reuses a
//! finished jobset. [`diff`] compares two jobsets of the same job. This module owns the `jobsets`,
//! `jobset_keys`, `jobset_attrs`, `jobset_error_messages` (Nix's messages for
//! error records whose explanation was deferred, see [`crate::nix::eval::DEFERRED_ERROR`]),
//! `jobset_scans` (a finished jobset's scan index, see [`Jobsets::scan_index`]) and `jobset_aliases`
//! (`aliases.rs`: the attributes nix-env does not list) tables; it must never run Nix (the scheduler evaluates and hands the
//! records here) and never hold a write transaction across an `.await` (every call is blocking).

pub mod aliases;
pub mod diff;

use redb::{ReadableTable, TableHandle};
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, encode};
use crate::store::schema::{
    BUILD_OWNERS, JOBSETS, JOBSET_ATTRS, JOBSET_ERROR_MESSAGES, JOBSET_KEYS, JOBSET_SCANS, META,
};
use crate::store::{now_secs, Store, StoreError};

/// The id of a jobset: the key of its `jobsets` row. It serializes as the bare `u64` (postcard and JSON
/// alike), so records and answers that carry it are unchanged by the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobsetId(pub u64);

impl std::fmt::Display for JobsetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What identifies a jobset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobsetKey {
    /// The repository's identity: `file:///abs/path` for local repositories, the clone URL otherwise.
    pub repo: String,
    /// The full commit SHA.
    pub commit: String,
    /// The job's name in `.eka-ci/config.json`, when the job was evaluated with the definition the
    /// commit's own configuration gives it. A job evaluated with another commit's definition (the base
    /// branch's, for a pull request whose configuration is not trusted) is stored under the name, then
    /// [`DEFINITION_MARK`], then a fingerprint of that definition, so the two results never stand in for
    /// each other. [`JobsetKey::job_name`] is the name alone.
    pub job: String,
}

/// Separates a job's name from its definition's fingerprint in [`JobsetKey::job`]. A control character,
/// which the repository configuration refuses in job names, so no name can end in a fingerprint.
pub const DEFINITION_MARK: char = '\u{1f}';

/// The job's name in a stored job key (see [`JobsetKey::job`]).
pub fn job_name(key_job: &str) -> &str {
    key_job.split_once(DEFINITION_MARK).map_or(key_job, |(name, _)| name)
}

impl JobsetKey {
    /// The job's name, without a definition's fingerprint.
    pub fn job_name(&self) -> &str {
        job_name(&self.job)
    }

    fn index_key(&self) -> String {
        format!("{}\u{0}{}\u{0}{}", self.repo, self.commit, self.job)
    }
}

/// Where a jobset's evaluation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsetState {
    Evaluating,
    /// Every attribute has a record (derivation or error).
    Evaluated,
    /// The job as a whole could not be evaluated (missing file, syntax error at the top, time-out).
    Failed {
        message: String,
    },
}

/// A jobset's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jobset {
    pub id: JobsetId,
    pub key: JobsetKey,
    pub state: JobsetState,
    pub allow_eval_failures: bool,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    pub derivations: u64,
    pub errors: u64,
}

impl Jobset {
    /// Whether the evaluation result should fail a check: a failed job always does, attribute errors
    /// only when the job does not allow evaluation failures.
    pub fn eval_failed(&self) -> bool {
        match self.state {
            JobsetState::Failed { .. } => true,
            _ => self.errors > 0 && !self.allow_eval_failures,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum JobsetRecord {
    V1(Jobset),
}

/// One attribute's evaluation result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrOutcome {
    Drv(AttrDrv),
    Error { message: String },
}

/// A derivation an attribute evaluated to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrDrv {
    pub drv_path: String,
    pub name: String,
    pub system: String,
    /// Output name → store path, sorted by name.
    pub outputs: Vec<(String, String)>,
    /// The attribute's `meta`, as JSON text (postcard cannot carry arbitrary JSON values).
    pub meta_json: Option<String>,
    pub required_system_features: Vec<String>,
}

#[derive(Serialize, Deserialize)]
enum AttrRecord {
    V1(AttrOutcome),
}

/// What [`Jobsets::begin`] found.
#[derive(Debug)]
pub enum Begin {
    /// A finished jobset for this key exists: reuse it.
    Existing(Jobset),
    /// A fresh (or reset) jobset to fill.
    New(JobsetId),
}

/// Access to the jobset tables.
#[derive(Clone, Debug)]
pub struct Jobsets {
    store: Store,
    /// When this process last began (evaluated or reused) each jobset (shared by clones). Retention keeps
    /// jobsets used recently: a review that just reused an old jobset has not registered its builds yet.
    used: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<JobsetId, std::time::Instant>>>,
    /// Scan indexes of recently filtered finished jobsets, most recently used last (shared by clones).
    scans: std::sync::Arc<std::sync::Mutex<Vec<(JobsetId, ScanIndex)>>>,
}

/// One attribute of a finished jobset as a filtered page scans it, without its record: what a state or
/// name filter needs, so a scan decodes no attribute record and looks up no .drv path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    pub attr: String,
    pub kind: ScanKind,
}

/// A finished jobset's attributes as filtered pages scan them, in attribute order.
pub type ScanIndex = std::sync::Arc<Vec<ScanEntry>>;

/// What a [`ScanEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKind {
    EvalError,
    /// A derivation, with its graph id (`None`: not in the graph).
    Drv(Option<u32>),
}

/// A finished jobset's scan index as `jobset_scans` stores it: (attribute, derivation id), `None` for an
/// evaluation error. Only complete indexes (every derivation in the graph) are stored.
#[derive(Deserialize)]
enum ScanRecord {
    V1 { entries: Vec<(String, Option<u32>)> },
}

/// [`ScanRecord`] borrowed, for encoding (the same postcard bytes).
#[derive(Serialize)]
enum ScanRecordRef<'a> {
    V1 { entries: Vec<(&'a str, Option<u32>)> },
}

/// What building a scan index can fail with (and reading a page of a jobset, `web::PageError`): the
/// store or the derivation graph.
#[derive(Debug, thiserror::Error)]
pub enum ScanIndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
}

/// How many finished jobsets' scan indexes are kept in memory (about 60 bytes per attribute).
const SCANS_KEPT: usize = 4;

/// How many attribute records are committed per write transaction while an evaluation streams in.
const WRITE_BATCH: usize = 2000;

impl Jobsets {
    pub fn new(store: Store) -> Jobsets {
        Jobsets { store, used: Default::default(), scans: Default::default() }
    }

    fn mark_used(&self, id: JobsetId) {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.insert(id, std::time::Instant::now());
    }

    /// The jobsets this process (through this value or its clones) used within `window`; older marks
    /// are forgotten.
    pub fn used_within(&self, window: std::time::Duration) -> std::collections::HashSet<JobsetId> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, at| at.elapsed() < window);
        used.keys().copied().collect()
    }

    /// Finds a finished jobset for `key`, or starts a new one (a previous unfinished or failed attempt
    /// is discarded and its id reused).
    pub fn begin(&self, key: &JobsetKey, allow_eval_failures: bool) -> Result<Begin, StoreError> {
        let tx = self.store.db().begin_write()?;
        let id = {
            let mut keys = tx.open_table(JOBSET_KEYS)?;
            let mut jobsets = tx.open_table(JOBSETS)?;
            let existing = keys.get(key.index_key().as_str())?.map(|v| JobsetId(v.value()));
            let id = match existing {
                Some(id) => {
                    let current = match jobsets.get(id.0)? {
                        Some(v) => Some(decode_jobset(id, v.value())?),
                        None => None,
                    };
                    if let Some(js) = current {
                        if js.state == JobsetState::Evaluated && js.allow_eval_failures == allow_eval_failures
                        {
                            self.mark_used(js.id);
                            return Ok(Begin::Existing(js));
                        }
                    }
                    id
                }
                None => {
                    // Ids are never reused, even after retention removed the newest jobsets: owners,
                    // GC roots and answers name jobsets by id.
                    let after_last = jobsets.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
                    let meta = tx.open_table(META)?;
                    let floor = match meta.get(NEXT_ID_KEY)? {
                        Some(v) => decode::<u64>("meta", NEXT_ID_KEY, v.value())?,
                        None => 1,
                    };
                    let id = after_last.max(floor);
                    keys.insert(key.index_key().as_str(), id)?;
                    JobsetId(id)
                }
            };
            let header = Jobset {
                id,
                key: key.clone(),
                state: JobsetState::Evaluating,
                allow_eval_failures,
                created_at: now_secs(),
                finished_at: None,
                derivations: 0,
                errors: 0,
            };
            jobsets.insert(id.0, encode(JOBSETS.name(), &JobsetRecord::V1(header))?.as_slice())?;
            id
        };
        {
            let mut attrs = tx.open_table(JOBSET_ATTRS)?;
            attrs.retain_in((id.0, "")..(id.0 + 1, ""), |_, _| false)?;
            let mut messages = tx.open_table(JOBSET_ERROR_MESSAGES)?;
            messages.retain_in((id.0, "")..(id.0 + 1, ""), |_, _| false)?;
            tx.open_table(JOBSET_SCANS)?.remove(id.0)?;
        }
        aliases::remove_in(&tx, id)?;
        tx.commit()?;
        self.drop_scan(id);
        self.mark_used(id);
        crate::live::note_jobset(
            id.0,
            crate::live::JobsetOrigin { repo: key.repo.clone(), commit: key.commit.clone() },
        );
        crate::live::jobset_changed(id.0);
        Ok(Begin::New(id))
    }

    /// The jobset of a job that has no attributes at its commit (the commit does not define the job,
    /// or has no usable configuration): found, or created empty and finished.
    pub fn empty(&self, key: &JobsetKey, allow_eval_failures: bool) -> Result<Jobset, StoreError> {
        match self.begin(key, allow_eval_failures)? {
            Begin::Existing(jobset) => Ok(jobset),
            Begin::New(id) => self.finish(id, JobsetState::Evaluated),
        }
    }

    /// A buffered writer for jobset `id`'s attribute records.
    pub fn writer(&self, id: JobsetId) -> AttrWriter {
        AttrWriter { store: self.store.clone(), id, pending: Vec::new(), derivations: 0, errors: 0 }
    }

    /// The jobset with this id.
    pub fn get(&self, id: JobsetId) -> Result<Option<Jobset>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(JOBSETS)?;
        let found = table.get(id.0)?;
        found.map(|v| decode_jobset(id, v.value())).transpose()
    }

    /// The jobset for this key, in whatever state.
    pub fn find(&self, key: &JobsetKey) -> Result<Option<Jobset>, StoreError> {
        let id = {
            let tx = self.store.db().begin_read()?;
            let keys = tx.open_table(JOBSET_KEYS)?;
            let found = keys.get(key.index_key().as_str())?;
            found.map(|v| JobsetId(v.value()))
        };
        match id {
            Some(id) => self.get(id),
            None => Ok(None),
        }
    }

    /// Every jobset of `repo` at `commit` evaluated with that commit's own job definitions (job keys
    /// without [`DEFINITION_MARK`]), in any state, in job order.
    pub fn of_commit(&self, repo: &str, commit: &str) -> Result<Vec<Jobset>, StoreError> {
        let prefix = format!("{repo}\u{0}{commit}\u{0}");
        let end = format!("{repo}\u{0}{commit}\u{1}");
        let ids = {
            let tx = self.store.db().begin_read()?;
            let keys = tx.open_table(JOBSET_KEYS)?;
            let mut ids = Vec::new();
            for entry in keys.range(prefix.as_str()..end.as_str())? {
                let (k, v) = entry?;
                if !k.value().contains(DEFINITION_MARK) {
                    ids.push(JobsetId(v.value()));
                }
            }
            ids
        };
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.get(id)?);
        }
        Ok(out)
    }

    /// Records the end of an evaluation.
    pub fn finish(&self, id: JobsetId, state: JobsetState) -> Result<Jobset, StoreError> {
        let tx = self.store.db().begin_write()?;
        let header = {
            let mut jobsets = tx.open_table(JOBSETS)?;
            let current = jobsets.get(id.0)?.map(|v| decode_jobset(id, v.value())).transpose()?;
            let mut header = current.ok_or(StoreError::Missing { table: "jobsets", key: id.to_string() })?;
            let attrs = tx.open_table(JOBSET_ATTRS)?;
            let (mut derivations, mut errors) = (0u64, 0u64);
            for entry in attrs.range((id.0, "")..(id.0 + 1, ""))? {
                let (k, v) = entry?;
                match decode_attr(id, k.value().1, v.value())? {
                    AttrOutcome::Drv(_) => derivations += 1,
                    AttrOutcome::Error { .. } => errors += 1,
                }
            }
            header.state = state;
            header.finished_at = Some(now_secs());
            header.derivations = derivations;
            header.errors = errors;
            jobsets.insert(id.0, encode(JOBSETS.name(), &JobsetRecord::V1(header.clone()))?.as_slice())?;
            header
        };
        tx.commit()?;
        crate::live::jobset_changed(id.0);
        Ok(header)
    }

    /// Every jobset header, in id order (retention's view; attributes are not read).
    pub fn all(&self) -> Result<Vec<Jobset>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(JOBSETS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode_jobset(JobsetId(k.value()), v.value())?);
        }
        Ok(out)
    }

    /// Removes the jobsets `ids` (header, key, attributes) and their `build_owners` rows, in one
    /// transaction, and records the next id so none is reused. The caller decides that none of them is
    /// live (see `retention.rs`). Returns how many existed.
    pub fn remove(&self, ids: &[JobsetId]) -> Result<u64, StoreError> {
        let tx = self.store.db().begin_write()?;
        let mut removed = 0;
        {
            let mut jobsets = tx.open_table(JOBSETS)?;
            let mut keys = tx.open_table(JOBSET_KEYS)?;
            let mut attrs = tx.open_table(JOBSET_ATTRS)?;
            let mut owners = tx.open_table(BUILD_OWNERS)?;
            let mut messages = tx.open_table(JOBSET_ERROR_MESSAGES)?;
            let mut scans = tx.open_table(JOBSET_SCANS)?;
            let mut meta = tx.open_table(META)?;
            let after_last = jobsets.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
            let floor = match meta.get(NEXT_ID_KEY)? {
                Some(v) => decode::<u64>("meta", NEXT_ID_KEY, v.value())?,
                None => 1,
            };
            meta.insert(NEXT_ID_KEY, encode("meta", &after_last.max(floor))?.as_slice())?;
            for id in ids {
                let header = match jobsets.remove(id.0)? {
                    Some(v) => decode_jobset(*id, v.value())?,
                    None => continue,
                };
                removed += 1;
                let index = header.key.index_key();
                if keys.get(index.as_str())?.map(|v| v.value()) == Some(id.0) {
                    keys.remove(index.as_str())?;
                }
                attrs.retain_in((id.0, "")..(id.0 + 1, ""), |_, _| false)?;
                messages.retain_in((id.0, "")..(id.0 + 1, ""), |_, _| false)?;
                scans.remove(id.0)?;
                owners.remove(crate::scheduler::Owner::Jobset(*id).key())?;
                aliases::remove_in(&tx, *id)?;
            }
        }
        tx.commit()?;
        let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
        scans.retain(|(k, _)| !ids.contains(k));
        Ok(removed)
    }

    /// The scan index of finished jobset `id`: every attribute's name and derivation id, in attribute
    /// order, for filtered pages. Kept in memory ([`SCANS_KEPT`] jobsets), else read from
    /// `jobset_scans` (one row: about 1 ms for 30,000 attributes), else built from the attribute records
    /// (every record decoded and every .drv path looked up: tens of milliseconds for 30,000) and, when
    /// every derivation is in the graph (one that is not yet would read as "none" forever), stored and
    /// kept. The pipeline builds it once the graph of a finished evaluation is stored, so pages find it.
    pub fn scan_index(&self, id: JobsetId, graph: &crate::graph::Graph) -> Result<ScanIndex, ScanIndexError> {
        if let Some(index) = self.kept_scan(id) {
            return Ok(index);
        }
        if let Some(index) = self.stored_scan(id)? {
            self.keep_scan(id, index.clone());
            return Ok(index);
        }
        let (mut attrs, mut paths) = (Vec::new(), Vec::new());
        self.for_each_attr(id, |attr, outcome| {
            attrs.push((attr.to_string(), matches!(outcome, AttrOutcome::Drv(_))));
            if let AttrOutcome::Drv(d) = outcome {
                paths.push(d.drv_path);
            }
            Ok(())
        })?;
        let mut ids = graph.ids_of(&paths)?.into_iter();
        let mut complete = true;
        let index: Vec<ScanEntry> = attrs
            .into_iter()
            .map(|(attr, is_drv)| {
                let kind = if is_drv {
                    let found = ids.next().flatten().map(|d| d.0);
                    complete &= found.is_some();
                    ScanKind::Drv(found)
                } else {
                    ScanKind::EvalError
                };
                ScanEntry { attr, kind }
            })
            .collect();
        let index = std::sync::Arc::new(index);
        if complete && self.store_scan(id, &index)? {
            self.keep_scan(id, index.clone());
        }
        Ok(index)
    }

    /// The stored scan index of jobset `id`, if any.
    fn stored_scan(&self, id: JobsetId) -> Result<Option<ScanIndex>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(JOBSET_SCANS)?;
        let Some(v) = table.get(id.0)? else { return Ok(None) };
        let ScanRecord::V1 { entries } = decode(JOBSET_SCANS.name(), &id.0.to_string(), v.value())?;
        let index = entries
            .into_iter()
            .map(|(attr, drv)| ScanEntry {
                attr,
                kind: drv.map_or(ScanKind::EvalError, |d| ScanKind::Drv(Some(d))),
            })
            .collect();
        Ok(Some(std::sync::Arc::new(index)))
    }

    /// Stores the complete scan index of jobset `id` if the jobset is (still) finished: re-evaluation and
    /// removal delete the row in their own transactions. Returns whether it was stored.
    fn store_scan(&self, id: JobsetId, index: &[ScanEntry]) -> Result<bool, StoreError> {
        let entries: Vec<(&str, Option<u32>)> = index
            .iter()
            .map(|e| match e.kind {
                ScanKind::EvalError => (e.attr.as_str(), None),
                ScanKind::Drv(d) => (e.attr.as_str(), d),
            })
            .collect();
        let bytes = encode(JOBSET_SCANS.name(), &ScanRecordRef::V1 { entries })?;
        let tx = self.store.db().begin_write()?;
        let finished = match tx.open_table(JOBSETS)?.get(id.0)? {
            Some(v) => decode_jobset(id, v.value())?.state == JobsetState::Evaluated,
            None => false,
        };
        if finished {
            tx.open_table(JOBSET_SCANS)?.insert(id.0, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(finished)
    }

    fn drop_scan(&self, id: JobsetId) {
        let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
        scans.retain(|(k, _)| *k != id);
    }

    /// The scan index kept for jobset `id`, if any (see [`Jobsets::keep_scan`]).
    pub fn kept_scan(&self, id: JobsetId) -> Option<ScanIndex> {
        let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
        let at = scans.iter().position(|(k, _)| *k == id)?;
        let entry = scans.remove(at);
        let index = entry.1.clone();
        scans.push(entry);
        Some(index)
    }

    /// Keeps `index`, the scan index of jobset `id`, for later filtered pages. Only for a finished
    /// (evaluated) jobset: its attributes never change and its id is never reused; a removed jobset's
    /// index is dropped. The least recently used index goes beyond [`SCANS_KEPT`].
    pub fn keep_scan(&self, id: JobsetId, index: ScanIndex) {
        let mut scans = self.scans.lock().unwrap_or_else(|e| e.into_inner());
        scans.retain(|(k, _)| *k != id);
        if scans.len() == SCANS_KEPT {
            scans.remove(0);
        }
        scans.push((id, index));
    }

    /// Attributes `names` of jobset `id` (those that exist), in one read transaction.
    pub fn attrs(&self, id: JobsetId, names: &[String]) -> Result<Vec<(String, AttrOutcome)>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let attrs = tx.open_table(JOBSET_ATTRS)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(v) = attrs.get((id.0, name.as_str()))? {
                out.push((name.clone(), decode_attr(id, name, v.value())?));
            }
        }
        Ok(out)
    }

    /// Calls `f` with every attribute of jobset `id`, in attribute order, streaming from the database.
    pub fn for_each_attr(
        &self,
        id: JobsetId,
        mut f: impl FnMut(&str, AttrOutcome) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.store.db().begin_read()?;
        let attrs = tx.open_table(JOBSET_ATTRS)?;
        for entry in attrs.range((id.0, "")..(id.0 + 1, ""))? {
            let (k, v) = entry?;
            let attr = k.value().1;
            f(attr, decode_attr(id, attr, v.value())?)?;
        }
        Ok(())
    }

    /// At most `limit` attributes of jobset `id` that sort after `after` (from the first when `None`), and
    /// whether more follow. Reads only the rows it returns (plus one), whatever the page's depth.
    pub fn page(
        &self,
        id: JobsetId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, AttrOutcome)>, bool), StoreError> {
        let tx = self.store.db().begin_read()?;
        let attrs = tx.open_table(JOBSET_ATTRS)?;
        let mut out = Vec::new();
        for entry in attrs.range((id.0, after.unwrap_or(""))..(id.0 + 1, ""))? {
            let (k, v) = entry?;
            let attr = k.value().1;
            if after == Some(attr) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((attr.to_string(), decode_attr(id, attr, v.value())?));
        }
        Ok((out, false))
    }

    /// One attribute of jobset `id`.
    pub fn attr(&self, id: JobsetId, attr: &str) -> Result<Option<AttrOutcome>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let attrs = tx.open_table(JOBSET_ATTRS)?;
        let found = attrs.get((id.0, attr))?;
        found.map(|v| decode_attr(id, attr, v.value())).transpose()
    }

    /// How many attribute records jobset `id` has.
    pub fn attr_count(&self, id: JobsetId) -> Result<u64, StoreError> {
        let tx = self.store.db().begin_read()?;
        let attrs = tx.open_table(JOBSET_ATTRS)?;
        let mut n = 0;
        for entry in attrs.range((id.0, "")..(id.0 + 1, ""))? {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// The messages found for deferred errors of jobset `id` (see [`Jobsets::put_error_messages`]),
    /// for those of `attrs` that have one.
    pub fn error_messages(
        &self,
        id: JobsetId,
        attrs: &[String],
    ) -> Result<std::collections::BTreeMap<String, String>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let table = tx.open_table(JOBSET_ERROR_MESSAGES)?;
        let mut out = std::collections::BTreeMap::new();
        for attr in attrs {
            if let Some(v) = table.get((id.0, attr.as_str()))? {
                let key = format!("({id}, {attr:?})");
                match decode::<ErrorMessageRecord>(JOBSET_ERROR_MESSAGES.name(), &key, v.value())? {
                    ErrorMessageRecord::V1 { message } => out.insert(attr.clone(), message),
                };
            }
        }
        Ok(out)
    }

    /// Caches Nix's messages for deferred error records of jobset `id` (attribute, message).
    pub fn put_error_messages(&self, id: JobsetId, messages: &[(String, String)]) -> Result<(), StoreError> {
        let tx = self.store.db().begin_write()?;
        {
            let mut table = tx.open_table(JOBSET_ERROR_MESSAGES)?;
            for (attr, message) in messages {
                let record = ErrorMessageRecord::V1 { message: message.clone() };
                let bytes = encode(JOBSET_ERROR_MESSAGES.name(), &record)?;
                table.insert((id.0, attr.as_str()), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

/// Nix's message for a deferred error record, found later (`jobset_error_messages`).
#[derive(Serialize, Deserialize)]
enum ErrorMessageRecord {
    V1 { message: String },
}

/// Buffers attribute records and commits them in large transactions.
pub struct AttrWriter {
    store: Store,
    id: JobsetId,
    pending: Vec<(String, AttrOutcome)>,
    pub derivations: u64,
    pub errors: u64,
}

impl AttrWriter {
    /// Adds one record; commits when the buffer is full.
    pub fn push(&mut self, attr: String, outcome: AttrOutcome) -> Result<(), StoreError> {
        match outcome {
            AttrOutcome::Drv(_) => self.derivations += 1,
            AttrOutcome::Error { .. } => self.errors += 1,
        }
        self.pending.push((attr, outcome));
        if self.pending.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Commits everything buffered.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let tx = self.store.db().begin_write()?;
        {
            let mut attrs = tx.open_table(JOBSET_ATTRS)?;
            for (attr, outcome) in self.pending.drain(..) {
                let bytes = encode(JOBSET_ATTRS.name(), &AttrRecord::V1(outcome))?;
                attrs.insert((self.id.0, attr.as_str()), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        crate::live::jobset_changed(self.id.0);
        Ok(())
    }
}

/// The `meta` key holding the lowest id a new jobset may take (written when jobsets are removed).
const NEXT_ID_KEY: &str = "jobsets_next_id";

fn decode_jobset(id: JobsetId, bytes: &[u8]) -> Result<Jobset, StoreError> {
    match decode::<JobsetRecord>(JOBSETS.name(), &id.to_string(), bytes)? {
        JobsetRecord::V1(j) => Ok(j),
    }
}

fn decode_attr(id: JobsetId, attr: &str, bytes: &[u8]) -> Result<AttrOutcome, StoreError> {
    match decode::<AttrRecord>(JOBSET_ATTRS.name(), &format!("({id}, {attr:?})"), bytes)? {
        AttrRecord::V1(o) => Ok(o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobset_id_serializes_as_its_number() {
        let id = JobsetId(300);
        assert_eq!(
            postcard::to_allocvec(&id).expect("encode"),
            postcard::to_allocvec(&300u64).expect("encode")
        );
        assert_eq!(serde_json::to_string(&id).expect("json"), "300");
        let back: JobsetId =
            postcard::from_bytes(&postcard::to_allocvec(&300u64).expect("encode")).expect("decode");
        assert_eq!(back, id);
    }
}
