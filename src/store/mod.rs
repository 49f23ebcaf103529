//! The store: one redb file holding every piece of state the server must not lose.
//!
//! This module owns opening the database, the schema version in the `meta` table, in-place upgrades of
//! older databases, and the typed access used by the rest of the server. Table definitions live in
//! [`schema`]; values are postcard-encoded versioned enums ([`codec`]). It must never hold a write
//! transaction across an `.await`: every call here is blocking and runs on `smol::unblock` when called
//! from async code.

pub mod codec;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableHandle};
use serde::{Deserialize, Serialize};

use codec::{decode, encode};
use schema::{DAEMON_RUNS, META};

/// The schema version this build writes. Bump it together with an [`Upgrade`] step in [`UPGRADES`] and
/// the human-readable schema in `migrations-free-schema/`.
pub const SCHEMA_VERSION: u32 = 1;

/// One in-place upgrade: turns a database at `from` into one at `from + 1`, inside the same write
/// transaction that records the new version (so an upgrade is all or nothing).
pub struct Upgrade {
    pub from: u32,
    pub describe: &'static str,
    pub apply: fn(&redb::WriteTransaction) -> Result<(), StoreError>,
}

/// Every upgrade step this build knows, oldest first. Empty while the schema is at its first version.
pub const UPGRADES: &[Upgrade] = &[];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create directory {path} for the database: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("database {path} is already open in another process (is another eka-ci-server running?)")]
    AlreadyOpen { path: PathBuf },
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: Box<redb::DatabaseError> },
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this eka-ci-server {version} \
         understands; run a newer eka-ci-server (the database was not modified)"
    )]
    TooNew { path: PathBuf, found: u32, supported: u32, version: &'static str },
    #[error("database {path} has schema version {found} but no upgrade step from it is known")]
    NoUpgrade { path: PathBuf, found: u32 },
    #[error("corrupt value in table `{table}` at key {key}: {source}")]
    Corrupt { table: &'static str, key: String, source: postcard::Error },
    #[error("cannot encode value for table `{table}`: {source}")]
    Encode { table: &'static str, source: postcard::Error },
    #[error("no row in table `{table}` at key {key}")]
    Missing { table: &'static str, key: String },
    #[error("database error: {0}")]
    Redb(Box<redb::Error>),
}

macro_rules! redb_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Redb(Box::new(e.into()))
            }
        }
    )*};
}
redb_from!(redb::Error, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A record of one daemon run: started, and (if it stopped cleanly) when it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonRun {
    pub started_at: u64,
    pub stopped_at: Option<u64>,
    pub version: String,
    pub pid: u32,
}

/// Versioned on-disk form of [`DaemonRun`]; new versions are appended as new variants.
#[derive(Serialize, Deserialize)]
enum DaemonRunRecord {
    V1(DaemonRun),
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A handle to the open database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`, refusing one from a newer schema and upgrading
    /// an older one in place.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, SCHEMA_VERSION, UPGRADES)
    }

    /// [`Store::open`] with an explicit target version and upgrade list (tests exercise upgrades with it).
    pub fn open_with(path: &Path, target: u32, upgrades: &[Upgrade]) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::CreateDir { path: parent.to_path_buf(), source: e })?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::AlreadyOpen { path: path.to_path_buf() },
            other => StoreError::Open { path: path.to_path_buf(), source: Box::new(other) },
        })?;
        let store = Store { db: Arc::new(db), path: path.to_path_buf() };
        store.prepare(target, upgrades)?;
        Ok(store)
    }

    fn prepare(&self, target: u32, upgrades: &[Upgrade]) -> Result<(), StoreError> {
        let found = self.read_meta_u32("schema_version")?;
        let tx = self.db.begin_write()?;
        match found {
            None => {
                // A new database: create every table so readers never meet a missing one.
                schema::create_all(&tx)?;
                let mut meta = tx.open_table(META)?;
                meta.insert("schema_version", encode("meta", &target)?.as_slice())?;
                meta.insert("created_at", encode("meta", &now_secs())?.as_slice())?;
            }
            Some(v) if v > target => {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found: v,
                    supported: target,
                    version: crate::VERSION,
                })
            }
            Some(mut v) => {
                while v < target {
                    let step = upgrades
                        .iter()
                        .find(|u| u.from == v)
                        .ok_or(StoreError::NoUpgrade { path: self.path.clone(), found: v })?;
                    tracing::info!(from = v, to = v + 1, step = step.describe, "upgrading database schema");
                    (step.apply)(&tx)?;
                    v += 1;
                }
                schema::create_all(&tx)?;
                let mut meta = tx.open_table(META)?;
                meta.insert("schema_version", encode("meta", &target)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn read_meta_u32(&self, key: &str) -> Result<Option<u32>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(key)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes::<u32>(v.value()).map(Some).map_err(|e| StoreError::Corrupt {
                table: "meta",
                key: key.into(),
                source: e,
            }),
        }
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self.read_meta_u32("schema_version")?.unwrap_or(0))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw database, for modules that own their own tables (they still use `schema`'s definitions).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The names of every table in the database, sorted.
    pub fn table_names(&self) -> Result<Vec<String>, StoreError> {
        use redb::TableHandle;
        let tx = self.db.begin_read()?;
        let mut names: Vec<String> = tx.list_tables()?.map(|t| t.name().to_string()).collect();
        names.sort();
        Ok(names)
    }

    /// Records the start of a daemon run and returns its id. Returns also the previous run if it never
    /// recorded a stop (the daemon was killed or crashed).
    pub fn begin_run(&self, pid: u32) -> Result<(u64, Option<(u64, DaemonRun)>), StoreError> {
        let tx = self.db.begin_write()?;
        let (id, unclean) = {
            let mut runs = tx.open_table(DAEMON_RUNS)?;
            let last = match runs.last()? {
                Some((k, v)) => Some((k.value(), decode_run(k.value(), v.value())?)),
                None => None,
            };
            let id = last.as_ref().map(|(k, _)| k + 1).unwrap_or(1);
            let run =
                DaemonRun { started_at: now_secs(), stopped_at: None, version: crate::VERSION.into(), pid };
            runs.insert(id, encode(DAEMON_RUNS.name(), &DaemonRunRecord::V1(run))?.as_slice())?;
            (id, last.filter(|(_, r)| r.stopped_at.is_none()))
        };
        tx.commit()?;
        Ok((id, unclean))
    }

    /// Records a clean stop of run `id`.
    pub fn end_run(&self, id: u64) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut runs = tx.open_table(DAEMON_RUNS)?;
            let current = runs.get(id)?.map(|v| decode_run(id, v.value())).transpose()?;
            if let Some(mut run) = current {
                run.stopped_at = Some(now_secs());
                runs.insert(id, encode(DAEMON_RUNS.name(), &DaemonRunRecord::V1(run))?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every recorded daemon run, oldest first.
    pub fn runs(&self) -> Result<Vec<(u64, DaemonRun)>, StoreError> {
        let tx = self.db.begin_read()?;
        let runs = tx.open_table(DAEMON_RUNS)?;
        let mut out = Vec::with_capacity(runs.len()? as usize);
        for entry in runs.iter()? {
            let (k, v) = entry?;
            out.push((k.value(), decode_run(k.value(), v.value())?));
        }
        Ok(out)
    }
}

fn decode_run(id: u64, bytes: &[u8]) -> Result<DaemonRun, StoreError> {
    match decode::<DaemonRunRecord>(DAEMON_RUNS.name(), &id.to_string(), bytes)? {
        DaemonRunRecord::V1(r) => Ok(r),
    }
}
