//! Every redb table of eka-ci, in one place.
//!
//! The human-readable description of each table (key, value, meaning, upgrade policy) is in
//! `migrations-free-schema/`; a test fails when [`TABLES`] and that directory disagree. A table is added
//! here, described there, and created by [`create_all`] for new and upgraded databases alike.

use redb::{TableDefinition, WriteTransaction};

/// Server metadata: `schema_version` (u32), `created_at` (u64 seconds). Values are postcard scalars.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// One row per daemon start: run id → `DaemonRunRecord`.
pub const DAEMON_RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("daemon_runs");

/// A table as described in `migrations-free-schema/`: its name and its key and value types as Rust
/// spells them in the definitions above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub name: &'static str,
    pub key: &'static str,
    pub value: &'static str,
}

/// Every table this build uses, with its key and value types.
pub const TABLES: &[TableInfo] = &[
    TableInfo { name: "meta", key: "&str", value: "&[u8]" },
    TableInfo { name: "daemon_runs", key: "u64", value: "&[u8]" },
];

/// Creates every table that does not exist yet.
pub fn create_all(tx: &WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(META)?;
    tx.open_table(DAEMON_RUNS)?;
    Ok(())
}
