//! Rebuild impact: the blast radius (transitive dependents) of every changed derivation and the union of
//! everything that must rebuild, over a compact in-memory snapshot of the head jobset's graph.
//!
//! [`Csr`] numbers the snapshot's nodes `0..n` in topological order (inputs before dependents) and keeps
//! each node's inputs as one flat array. [`blast_radii`] processes seeds 64 at a time: every node gets a
//! `u64` whose bit *i* says "depends on seed *i*", computed in one pass in topological order (a node's mask
//! is its own seed bit or-ed with its inputs' masks), and each seed's blast radius is the popcount of its
//! bit over all nodes, minus itself. [`union`] is one boolean pass. [`Snapshot::from_graph`] loads the
//! closure of the head roots from the [`Graph`] once; the hot loops never touch the graph.
//!
//! This file must never read the store, classify packages or render anything; its loops must stay free of
//! allocation per edge and of graph lookups.

use crate::graph::{DrvId, Graph, GraphError};

/// The kernels rebuild counts are reported for.
pub const KERNELS: [&str; 2] = ["darwin", "linux"];

/// The kernel of a Nix system string (`x86_64-linux` → `linux`), if it is one we report.
pub fn kernel_of(system: &str) -> Option<&'static str> {
    if system.ends_with("-linux") {
        Some("linux")
    } else if system.ends_with("-darwin") {
        Some("darwin")
    } else {
        None
    }
}

/// A DAG in compressed sparse row form, nodes `0..n` in topological order: every input of node `v` is a
/// node `u < v`. `inputs[offsets[v]..offsets[v + 1]]` are `v`'s inputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Csr {
    pub offsets: Vec<u32>,
    pub inputs: Vec<u32>,
}

/// Why a [`Csr`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("edge {input} → {node} is not in topological order (an input must have a smaller index)")]
    NotTopological { node: u32, input: u32 },
    #[error("the graph has more than 2^32 - 1 nodes or edges")]
    TooLarge,
}

impl Csr {
    /// Builds the CSR of `n` nodes from each node's inputs (`inputs_of(v)`), checking the order.
    pub fn from_inputs<I: IntoIterator<Item = u32>>(
        n: usize,
        mut inputs_of: impl FnMut(u32) -> I,
    ) -> Result<Csr, CsrError> {
        let n32 = u32::try_from(n).map_err(|_| CsrError::TooLarge)?;
        let mut offsets = Vec::with_capacity(n + 1);
        let mut inputs = Vec::new();
        offsets.push(0);
        for v in 0..n32 {
            for u in inputs_of(v) {
                if u >= v {
                    return Err(CsrError::NotTopological { node: v, input: u });
                }
                inputs.push(u);
            }
            offsets.push(u32::try_from(inputs.len()).map_err(|_| CsrError::TooLarge)?);
        }
        Ok(Csr { offsets, inputs })
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of edges.
    pub fn edges(&self) -> usize {
        self.inputs.len()
    }

    /// The inputs of node `v` (empty for an unknown node).
    pub fn inputs_of(&self, v: usize) -> &[u32] {
        let (Some(&a), Some(&b)) = (self.offsets.get(v), self.offsets.get(v + 1)) else { return &[] };
        self.inputs.get(a as usize..b as usize).unwrap_or(&[])
    }
}

/// The blast radius of each seed: how many nodes depend on it, transitively (itself excluded). Seeds out of
/// range get 0; a seed given twice gets the same answer twice.
pub fn blast_radii(csr: &Csr, seeds: &[u32]) -> Vec<u64> {
    let n = csr.len();
    let mut out = Vec::with_capacity(seeds.len());
    let mut masks = vec![0u64; n];
    for batch in seeds.chunks(64) {
        masks.iter_mut().for_each(|m| *m = 0);
        for (bit, &s) in batch.iter().enumerate() {
            if let Some(m) = masks.get_mut(s as usize) {
                *m |= 1u64 << bit;
            }
        }
        // Only nodes at or after the smallest seed can be reached.
        let first = batch.iter().copied().min().unwrap_or(0) as usize;
        let mut counts = [0u64; 64];
        for v in first..n {
            let mut m = masks[v];
            for &u in csr.inputs_of(v) {
                m |= masks[u as usize];
            }
            masks[v] = m;
            while m != 0 {
                counts[m.trailing_zeros() as usize] += 1;
                m &= m - 1;
            }
        }
        for (bit, &s) in batch.iter().enumerate() {
            out.push(if (s as usize) < n { counts[bit].saturating_sub(1) } else { 0 });
        }
    }
    out
}

/// Which nodes must rebuild: the seeds and everything that depends on them.
pub fn union(csr: &Csr, seeds: &[u32]) -> Vec<bool> {
    let n = csr.len();
    let mut reached = vec![false; n];
    for &s in seeds {
        if let Some(r) = reached.get_mut(s as usize) {
            *r = true;
        }
    }
    let first = seeds.iter().copied().min().unwrap_or(0) as usize;
    for v in first..n {
        if !reached[v] && csr.inputs_of(v).iter().any(|&u| reached[u as usize]) {
            reached[v] = true;
        }
    }
    reached
}

/// The head graph's closure, loaded once: the CSR plus, per node, its graph id and system.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub csr: Csr,
    /// Node index → graph id.
    pub ids: Vec<DrvId>,
    /// Node index → index into `systems`.
    pub system: Vec<u16>,
    pub systems: Vec<String>,
    /// Graph id → node index + 1 (0: not in the snapshot).
    position: Vec<u32>,
}

impl Snapshot {
    /// Loads the closure of `roots` (derivation paths; those unknown to the graph are skipped) into a CSR.
    /// Graph ids are already topological (inputs have smaller ids), so the closure sorted by id is too.
    pub fn from_graph(graph: &Graph, roots: &[String]) -> Result<Snapshot, GraphError> {
        let root_ids: Vec<DrvId> = graph.ids_of(roots)?.into_iter().flatten().collect();
        let mut ids = graph.closure(&root_ids)?;
        ids.sort_unstable();
        let too_large = |what| GraphError::TooLarge { path: "(the head graph snapshot)".to_string(), what };
        let top = ids.last().map(|id| id.0 as usize + 1).unwrap_or(0);
        let mut position = vec![0u32; top];
        for (i, id) in ids.iter().enumerate() {
            let p = u32::try_from(i + 1).map_err(|_| too_large("nodes"))?;
            if let Some(slot) = position.get_mut(id.0 as usize) {
                *slot = p;
            }
        }
        let mut systems: Vec<String> = Vec::new();
        let mut system = Vec::with_capacity(ids.len());
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        let mut inputs = Vec::new();
        offsets.push(0u32);
        for (i, id) in ids.iter().enumerate() {
            let (node_system, node_inputs) = graph.shape(*id)?;
            let s = match systems.iter().position(|s| *s == node_system) {
                Some(s) => s,
                None => {
                    systems.push(node_system);
                    systems.len() - 1
                }
            };
            system.push(u16::try_from(s).map_err(|_| too_large("systems"))?);
            let start = inputs.len();
            for input in &node_inputs {
                match position.get(input.0 as usize) {
                    Some(&p) if p > 0 => {
                        if p as usize > i {
                            return Err(GraphError::Corrupt { id: *id, what: "an input with a larger id" });
                        }
                        inputs.push(p - 1);
                    }
                    _ => {}
                }
            }
            inputs[start..].sort_unstable();
            offsets.push(u32::try_from(inputs.len()).map_err(|_| too_large("edges"))?);
        }
        Ok(Snapshot { csr: Csr { offsets, inputs }, ids, system, systems, position })
    }

    /// The node index of a graph id.
    pub fn index_of(&self, id: DrvId) -> Option<u32> {
        self.position.get(id.0 as usize).and_then(|p| p.checked_sub(1))
    }

    /// The system of node `i` (empty for an unknown node).
    pub fn system_of(&self, i: usize) -> &str {
        self.system.get(i).and_then(|s| self.systems.get(*s as usize)).map(String::as_str).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transitive dependents of `s` by a plain BFS, for comparison.
    fn bfs(csr: &Csr, s: u32) -> u64 {
        let n = csr.len();
        let mut reached = vec![false; n];
        reached[s as usize] = true;
        let mut count = 0;
        for v in s as usize + 1..n {
            if csr.inputs_of(v).iter().any(|&u| reached[u as usize]) {
                reached[v] = true;
                count += 1;
            }
        }
        count
    }

    fn random_dag(n: usize, seed: u64) -> Csr {
        let mut state = seed;
        let mut next = move |bound: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % bound.max(1)
        };
        let edges: Vec<Vec<u32>> = (0..n)
            .map(|v| if v == 0 { vec![] } else { (0..next(4)).map(|_| next(v) as u32).collect() })
            .collect();
        Csr::from_inputs(n, |v| edges[v as usize].clone()).unwrap()
    }

    #[test]
    fn bit_parallel_radii_match_a_bfs_per_seed() {
        let csr = random_dag(500, 7);
        let seeds: Vec<u32> = (0..150).map(|i| (i * 37 % 500) as u32).collect();
        let radii = blast_radii(&csr, &seeds);
        for (s, r) in seeds.iter().zip(&radii) {
            assert_eq!(*r, bfs(&csr, *s), "seed {s}");
        }
        let u = union(&csr, &seeds);
        for v in 0..500 {
            let expected = seeds.iter().any(|&s| {
                s as usize == v || {
                    let mut reached = vec![false; 500];
                    reached[s as usize] = true;
                    for w in s as usize + 1..=v {
                        if csr.inputs_of(w).iter().any(|&x| reached[x as usize]) {
                            reached[w] = true;
                        }
                    }
                    reached[v]
                }
            });
            assert_eq!(u[v], expected, "node {v}");
        }
    }

    #[test]
    fn a_chain_has_exact_radii_and_bad_orders_are_refused() {
        let csr = Csr::from_inputs(5, |v| if v == 0 { vec![] } else { vec![v - 1] }).unwrap();
        assert_eq!(blast_radii(&csr, &[0, 2, 4, 9]), vec![4, 2, 0, 0]);
        assert_eq!(union(&csr, &[3]), vec![false, false, false, true, true]);
        assert_eq!(
            Csr::from_inputs(2, |v| vec![v]).unwrap_err(),
            CsrError::NotTopological { node: 0, input: 0 }
        );
    }

    #[test]
    fn kernels() {
        assert_eq!(kernel_of("x86_64-linux"), Some("linux"));
        assert_eq!(kernel_of("aarch64-darwin"), Some("darwin"));
        assert_eq!(kernel_of("x86_64-freebsd"), None);
    }
}
