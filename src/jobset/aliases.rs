//! The `jobset_aliases` table: per finished jobset, what the identity step after its evaluation found
//! (`nix::eval_identity`): the derivation attributes `nix-env -qa` does not list because their value is the
//! very attribute set of an attribute it listed before. The change summary counts rebuilds in the
//! attributes nix-env lists (docs/change-summary.md, "Rebuild count").
//!
//! A jobset without a row (evaluated before the step existed, or the step failed) has every derivation
//! attribute listed. This file only stores and reads rows; the pipeline runs the step, `Jobsets::begin`
//! and `Jobsets::remove` delete a jobset's row with its attributes.

use std::collections::HashMap;

use redb::TableHandle;
use serde::{Deserialize, Serialize};

use super::{JobsetId, Jobsets};
use crate::store::codec::{decode, encode};
use crate::store::schema::JOBSET_ALIASES;
use crate::store::StoreError;

/// What the identity step found for one jobset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsetAliases {
    /// Attributes nix-env does not list, each with the first attribute of its `.drv` that nix-env lists.
    pub hidden: Vec<(String, String)>,
    /// Groups of attributes sharing a `.drv` that were examined.
    pub groups: u64,
    /// Groups the step could not decide (their attributes count as listed): their first attributes.
    pub undecided: Vec<String>,
    /// How long the step took, in milliseconds.
    pub duration_ms: u64,
}

impl JobsetAliases {
    /// The hidden attributes, for lookups.
    pub fn hidden_map(&self) -> HashMap<&str, &str> {
        self.hidden.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }
}

#[derive(Serialize, Deserialize)]
enum AliasesRecord {
    V1(JobsetAliases),
}

impl Jobsets {
    /// Stores the identity step's result of jobset `id` (replacing any).
    pub fn put_aliases(&self, id: JobsetId, aliases: &JobsetAliases) -> Result<(), StoreError> {
        let bytes = encode(JOBSET_ALIASES.name(), &AliasesRecord::V1(aliases.clone()))?;
        let tx = self.store().db().begin_write()?;
        tx.open_table(JOBSET_ALIASES)?.insert(id.0, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// The identity step's result of jobset `id`, if it ran.
    pub fn aliases(&self, id: JobsetId) -> Result<Option<JobsetAliases>, StoreError> {
        let tx = self.store().db().begin_read()?;
        let table = tx.open_table(JOBSET_ALIASES)?;
        let found = table.get(id.0)?;
        found
            .map(|v| match decode::<AliasesRecord>(JOBSET_ALIASES.name(), &id.to_string(), v.value())? {
                AliasesRecord::V1(a) => Ok(a),
            })
            .transpose()
    }
}

/// Deletes the row of jobset `id` inside a write transaction (with its attributes).
pub(super) fn remove_in(tx: &redb::WriteTransaction, id: JobsetId) -> Result<(), StoreError> {
    tx.open_table(JOBSET_ALIASES)?.remove(id.0)?;
    Ok(())
}

/// Groups the derivation attributes of jobset `id` by `.drv` path; only groups of two or more.
pub fn groups_of(jobsets: &Jobsets, id: JobsetId) -> Result<Vec<Vec<String>>, StoreError> {
    let mut by_drv: HashMap<String, Vec<String>> = HashMap::new();
    jobsets.for_each_attr(id, |attr, o| {
        if let super::AttrOutcome::Drv(d) = o {
            by_drv.entry(d.drv_path).or_default().push(attr.to_string());
        }
        Ok(())
    })?;
    let mut groups: Vec<Vec<String>> = by_drv.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    Ok(groups)
}
