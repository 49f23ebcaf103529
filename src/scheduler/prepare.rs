//! The blocking half of accepting work: walking the derivation graph down from some roots and reading the
//! persisted build states met on the way. Runs on `smol::unblock`; the scheduler loop then decides states
//! from what this returns (after the bulk output-validity check).

use std::collections::BTreeMap;

use crate::graph::{DrvId, Graph};
use crate::store::Store;

use super::state::{Attempt, DrvRecord, DrvState, Reader};
use super::SchedulerError;

/// A derivation met by the walk: what the scheduler needs of its node, and its persisted state.
#[derive(Debug, Clone)]
pub struct PrepNode {
    pub path: String,
    pub system: String,
    pub features: Vec<String>,
    pub prefer_local: bool,
    pub fixed_output: bool,
    /// Output paths (empty for floating content-addressed outputs).
    pub outputs: Vec<String>,
    pub inputs: Vec<DrvId>,
    pub rec: Option<DrvRecord>,
    /// The attempt left open when the record is `Building` (a crash during the build).
    pub open_attempt: Option<Attempt>,
}

impl PrepNode {
    /// Whether the walk stops here: the state is final for requests (not restarted by a new request).
    pub fn stops(&self) -> bool {
        self.rec.as_ref().is_some_and(|r| r.state.is_terminal() && !r.state.restarts_on_request())
    }
}

/// The ids of `paths` in the graph; an unknown path is an error naming it.
pub fn resolve(graph: &Graph, paths: &[String]) -> Result<Vec<DrvId>, SchedulerError> {
    paths
        .iter()
        .map(|p| graph.id_of(p)?.ok_or_else(|| SchedulerError::UnknownDerivation { path: p.clone() }))
        .collect()
}

/// Walks down from `seeds` through every derivation whose state does not stop the walk (no state, a
/// non-terminal one, or a cancelled one), returning each derivation met (the stopping ones included).
pub fn walk(
    graph: &Graph,
    store: &Store,
    seeds: &[DrvId],
) -> Result<BTreeMap<DrvId, PrepNode>, SchedulerError> {
    let reader = Reader::new(store)?;
    let mut out: BTreeMap<DrvId, PrepNode> = BTreeMap::new();
    let mut stack: Vec<DrvId> = seeds.to_vec();
    while let Some(id) = stack.pop() {
        if out.contains_key(&id) {
            continue;
        }
        let node = graph.node(id)?;
        let rec = reader.state(id)?;
        let open_attempt = match &rec {
            Some(r) if r.state == DrvState::Building && r.attempt > 0 => reader.attempt(id, r.attempt)?,
            _ => None,
        };
        let p = PrepNode {
            path: node.path,
            system: node.system,
            features: node.required_system_features,
            prefer_local: node.prefer_local_build,
            fixed_output: node.is_fixed_output,
            outputs: node.outputs.into_iter().map(|(_, p)| p).collect(),
            inputs: node.inputs.iter().map(|i| i.id).collect(),
            rec,
            open_attempt,
        };
        if !p.stops() {
            stack.extend(p.inputs.iter().copied().filter(|i| !out.contains_key(i)));
        }
        out.insert(id, p);
    }
    Ok(out)
}
