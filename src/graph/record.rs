//! The graph's stored records and the redb reads and writes on its three tables.
//!
//! `graph_ids` interns derivation paths (path → id), `graph_nodes` holds one [`NodeRecord`] per id, and
//! `graph_dependents` holds the reverse edges: for each node, one [`DependentsRecord`] per write transaction
//! that stored dependents of it, keyed `(node id, first dependent id of the group)`. A path gets its
//! id in the same write transaction that stores its node and edges, after all of its inputs: so every
//! stored node's inputs are stored nodes with smaller ids, and the ids are dense (`0..count`). See
//! `migrations-free-schema/graph_*.md`.

use redb::{ReadTransaction, ReadableTable, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::store::codec::{decode, encode};
use crate::store::schema::{GRAPH_DEPENDENTS, GRAPH_IDS, GRAPH_NODES};
use crate::store::StoreError;

/// A derivation as the graph keeps it: what the scheduler and the diff need, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeV1 {
    /// The .drv store path.
    pub path: String,
    pub system: String,
    /// `(output name, output path)` in the order of the .drv file (sorted by name); the path is empty for
    /// floating content-addressed outputs.
    pub outputs: Vec<(String, String)>,
    /// `(input id, output names used)` in the order of the .drv file.
    pub inputs: Vec<(u32, Vec<String>)>,
    pub required_system_features: Vec<String>,
    pub prefer_local_build: bool,
    pub allow_substitutes: bool,
    pub is_fixed_output: bool,
}

/// Versioned on-disk form of a node; new versions are appended as new variants.
#[derive(Serialize, Deserialize)]
pub(crate) enum NodeRecord {
    V1(NodeV1),
}

/// [`NodeRecord`] by reference, for writing without a copy: postcard encodes it identically.
#[derive(Serialize)]
enum NodeRecordRef<'a> {
    V1(&'a NodeV1),
}

/// Versioned on-disk form of a group of dependents (ascending ids) of one node.
#[derive(Serialize, Deserialize)]
pub(crate) enum DependentsRecord {
    V1(Vec<u32>),
}

/// Versioned on-disk form of an interned id.
#[derive(Serialize, Deserialize)]
pub(crate) enum DrvIdRecord {
    V1(u32),
}

fn table_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::from(e.into())
}

/// The number of nodes stored, which is also the next id to assign.
pub(crate) fn count(tx: &ReadTransaction) -> Result<u32, StoreError> {
    let nodes = tx.open_table(GRAPH_NODES).map_err(table_err)?;
    let last = nodes.last().map_err(table_err)?.map(|(k, _)| k.value());
    next_after(last)
}

/// The number of nodes stored, seen from inside a write transaction.
pub(crate) fn count_in_write(tx: &WriteTransaction) -> Result<u32, StoreError> {
    let nodes = tx.open_table(GRAPH_NODES).map_err(table_err)?;
    let last = nodes.last().map_err(table_err)?.map(|(k, _)| k.value());
    next_after(last)
}

fn next_after(last: Option<u32>) -> Result<u32, StoreError> {
    match last {
        None => Ok(0),
        Some(id) => id.checked_add(1).ok_or_else(|| {
            StoreError::from(redb::Error::Corrupted(format!("graph node id {id} leaves no room for another")))
        }),
    }
}

/// The id of `path`, if interned.
pub(crate) fn id_of(tx: &ReadTransaction, path: &str) -> Result<Option<u32>, StoreError> {
    let ids = tx.open_table(GRAPH_IDS).map_err(table_err)?;
    lookup_id(&ids, path)
}

pub(crate) fn lookup_id(
    ids: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &str,
) -> Result<Option<u32>, StoreError> {
    match ids.get(path).map_err(table_err)? {
        None => Ok(None),
        Some(v) => match decode::<DrvIdRecord>(GRAPH_IDS.name(), path, v.value())? {
            DrvIdRecord::V1(id) => Ok(Some(id)),
        },
    }
}

/// The stored node `id` and its dependents (ascending), or `None` if there is no such node.
pub(crate) fn load(tx: &ReadTransaction, id: u32) -> Result<Option<(NodeV1, Vec<u32>)>, StoreError> {
    let nodes = tx.open_table(GRAPH_NODES).map_err(table_err)?;
    let node = match nodes.get(id).map_err(table_err)? {
        None => return Ok(None),
        Some(v) => match decode::<NodeRecord>(GRAPH_NODES.name(), &id.to_string(), v.value())? {
            NodeRecord::V1(n) => n,
        },
    };
    let groups = tx.open_table(GRAPH_DEPENDENTS).map_err(table_err)?;
    let mut dependents = Vec::new();
    for entry in groups.range((id, 0)..=(id, u32::MAX)).map_err(table_err)? {
        let (k, v) = entry.map_err(table_err)?;
        let (target, first) = k.value();
        match decode::<DependentsRecord>(GRAPH_DEPENDENTS.name(), &format!("({target}, {first})"), v.value())?
        {
            DependentsRecord::V1(ids) => dependents.extend(ids),
        }
    }
    // Groups are written in id order, so this is already sorted; be robust anyway.
    if dependents.windows(2).any(|w| w[0] > w[1]) {
        dependents.sort_unstable();
    }
    dependents.dedup();
    Ok(Some((node, dependents)))
}

/// The tables of one write transaction, for batch inserts. Keys are buffered and inserted sorted by
/// [`Writer::finish`]: redb's B-trees take sorted inserts several times faster than random ones.
pub(crate) struct Writer<'t> {
    ids: redb::Table<'t, &'static str, &'static [u8]>,
    nodes: redb::Table<'t, u32, &'static [u8]>,
    edges: redb::Table<'t, (u32, u32), &'static [u8]>,
    new_ids: Vec<(String, u32)>,
    new_edges: Vec<(u32, u32)>,
}

impl<'t> Writer<'t> {
    pub(crate) fn open(tx: &'t WriteTransaction) -> Result<Writer<'t>, StoreError> {
        Ok(Writer {
            ids: tx.open_table(GRAPH_IDS).map_err(table_err)?,
            nodes: tx.open_table(GRAPH_NODES).map_err(table_err)?,
            edges: tx.open_table(GRAPH_DEPENDENTS).map_err(table_err)?,
            new_ids: Vec::new(),
            new_edges: Vec::new(),
        })
    }

    /// The id of `path` if it is already stored (written by a concurrent discovery).
    pub(crate) fn existing(&self, path: &str) -> Result<Option<u32>, StoreError> {
        lookup_id(&self.ids, path)
    }

    /// Stores `node` as `id`, with its path and its reverse edges. Every input must already be stored (or
    /// be stored earlier in this transaction).
    pub(crate) fn insert(&mut self, id: u32, node: &NodeV1) -> Result<(), StoreError> {
        let bytes = encode(GRAPH_NODES.name(), &NodeRecordRef::V1(node))?;
        self.nodes.insert(id, bytes.as_slice()).map_err(table_err)?;
        self.new_ids.push((node.path.clone(), id));
        self.new_edges.extend(node.inputs.iter().map(|(input, _)| (*input, id)));
        Ok(())
    }

    /// Inserts the buffered paths and the edges, one dependents group per input node; returns the edges
    /// (sorted).
    pub(crate) fn finish(mut self) -> Result<Vec<(u32, u32)>, StoreError> {
        self.new_ids.sort_unstable();
        for (path, id) in &self.new_ids {
            let id_bytes = encode(GRAPH_IDS.name(), &DrvIdRecord::V1(*id))?;
            self.ids.insert(path.as_str(), id_bytes.as_slice()).map_err(table_err)?;
        }
        self.new_edges.sort_unstable();
        self.new_edges.dedup();
        for group in self.new_edges.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(target, first)) = group.first() else { continue };
            let ids: Vec<u32> = group.iter().map(|e| e.1).collect();
            let bytes = encode(GRAPH_DEPENDENTS.name(), &DependentsRecord::V1(ids))?;
            self.edges.insert((target, first), bytes.as_slice()).map_err(table_err)?;
        }
        Ok(self.new_edges)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_record_encodes_as_the_owned_one() {
        let node = NodeV1 {
            path: "/nix/store/x.drv".into(),
            system: "x86_64-linux".into(),
            outputs: vec![("out".into(), "/nix/store/x".into())],
            inputs: vec![(7, vec!["dev".into()])],
            required_system_features: vec!["kvm".into()],
            prefer_local_build: true,
            allow_substitutes: false,
            is_fixed_output: true,
        };
        let owned = postcard::to_stdvec(&NodeRecord::V1(node.clone())).unwrap();
        assert_eq!(postcard::to_stdvec(&NodeRecordRef::V1(&node)).unwrap(), owned);
        let NodeRecord::V1(back) = postcard::from_bytes(&owned).unwrap();
        assert_eq!(back, node);
    }
}
