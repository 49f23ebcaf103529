//! The derivation graph: every derivation reachable from the jobs' roots, with edges in both directions,
//! stored in redb and fronted by a bounded in-memory LRU cache.
//!
//! Nodes are derivations identified by dense [`DrvId`]s (a .drv path is interned once, in `graph_ids`). A node
//! keeps what the scheduler and the diff need: path, system, outputs, input derivations with the outputs
//! used, required system features, `preferLocalBuild`, `allowSubstitutes`, fixed-output-ness. Forward edges
//! live in the node; reverse edges (dependents) are a separate edge set that grows as dependents are found.
//!
//! [`Graph::discover`] reads the .drv files reachable from some roots directly with the crate's parser
//! ([`crate::nix::drv::parse_graph_info`]), each file at most once ever (a .drv is immutable, so a stored
//! node is never read again), on a few threads, and stores the new nodes in large write transactions,
//! dependencies first: so ids are a topological order (inputs have smaller ids than their dependents) and
//! the stored graph is always closed under dependencies, even after a crash between commits.
//!
//! At most `capacity` nodes are resident (in a compact form, see `packed`); the least recently used are
//! evicted and reloaded from redb on demand, so every query answers the same whatever the capacity. Nodes
//! with pending work are pinned ([`Graph::pin`]) and never evicted; when pinned nodes alone exceed the
//! capacity the bound is exceeded (and logged) rather than unpinning anything.
//!
//! All methods but [`Graph::discover`] are blocking (they may read redb); call them through
//! `smol::unblock` from async code when they may walk many nodes. A [`Graph`] is a cheap, `Send + Sync`
//! handle: clones share one cache.

mod discover;
mod packed;
mod record;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::nix::drv::DrvParseError;
use crate::store::{Store, StoreError};
use packed::{Interner, PackError, Packed};
use record::NodeV1;

/// The id of a derivation in the graph. Ids are dense (`0..node count`), never reused, and every input of a
/// derivation has a smaller id than the derivation: sorting ids sorts dependencies first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DrvId(pub u32);

impl fmt::Display for DrvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A derivation of the graph, decoded for the caller (the graph itself keeps a compact form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: DrvId,
    /// The .drv store path.
    pub path: String,
    pub system: String,
    /// `(output name, output path)`, sorted by name as in the .drv file; the path is empty for floating
    /// content-addressed outputs.
    pub outputs: Vec<(String, String)>,
    /// The input derivations, each with the names of the outputs used.
    pub inputs: Vec<Input>,
    pub required_system_features: Vec<String>,
    pub prefer_local_build: bool,
    pub allow_substitutes: bool,
    pub is_fixed_output: bool,
}

/// An input derivation of a [`Node`] and the outputs of it that the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub id: DrvId,
    pub outputs: Vec<String>,
}

impl Node {
    /// The path of output `name`, if the derivation has that output and its path is known.
    pub fn output_path(&self, name: &str) -> Option<&str> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, p)| p.as_str()).filter(|p| !p.is_empty())
    }
}

/// Errors of the graph. Errors about one derivation name its path.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read derivation {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// The parse error's message starts with the byte offset (`at byte N: …`).
    #[error("malformed derivation {path}: {source}")]
    Parse { path: String, source: DrvParseError },
    #[error("{path} is not a derivation path (an absolute path ending in .drv)")]
    NotADerivation { path: String },
    #[error("derivation {path} has input {input}, which is not a derivation path")]
    BadInput { path: String, input: String },
    #[error("the closure of {path} contains a dependency cycle (its .drv files were not written by Nix)")]
    Cycle { path: String },
    #[error("unknown derivation id {0}")]
    UnknownId(DrvId),
    #[error("derivation {path} does not fit the graph: too many {what}")]
    TooLarge { path: String, what: &'static str },
    #[error("graph node {id} is corrupt: {what}")]
    Corrupt { id: DrvId, what: &'static str },
    #[error("derivation discovery failed: {0}")]
    Worker(String),
}

macro_rules! graph_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for GraphError {
            fn from(e: $t) -> Self {
                GraphError::Store(StoreError::from(e))
            }
        }
    )*};
}
graph_from_redb!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

fn pack_err(id: u32, path: impl FnOnce() -> String, e: PackError) -> GraphError {
    match e {
        PackError::TooLarge(what) => GraphError::TooLarge { path: path(), what },
        PackError::Corrupt(what) => GraphError::Corrupt { id: DrvId(id), what },
    }
}

/// How a [`Graph`] works.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Resident nodes kept (`graph_lru_capacity`); a soft bound when pinned nodes exceed it.
    pub capacity: usize,
    /// Threads reading .drv files during discovery; 0 reads on the calling thread.
    pub discovery_threads: usize,
    /// Nodes stored per write transaction during discovery.
    pub batch_size: usize,
}

impl GraphConfig {
    /// Defaults for `capacity`: one discovery thread per core (at most 4), 10,000 nodes per commit.
    pub fn new(capacity: usize) -> GraphConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        GraphConfig { capacity, discovery_threads: cores.min(4), batch_size: 10_000 }
    }
}

/// Counters and sizes of a [`Graph`] (this handle's process lifetime, except `nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Nodes stored.
    pub nodes: u64,
    /// Nodes resident in memory (pinned included).
    pub resident: usize,
    pub pinned: usize,
    pub capacity: usize,
    /// Nodes loaded from redb because they were not resident.
    pub reloads: u64,
    pub evictions: u64,
    /// Lookups answered from memory.
    pub hits: u64,
    /// .drv files read by discovery, and their bytes.
    pub files_read: u64,
    pub bytes_read: u64,
    /// Distinct interned string lists (systems, feature sets, output names and sets).
    pub interned: usize,
}

/// A root that discovery could not complete, and why (the error names the failing derivation, which may
/// be the root itself or any derivation in its closure).
#[derive(Debug, Clone)]
pub struct RootFailure {
    pub root: String,
    pub error: Arc<GraphError>,
}

/// What one [`Graph::discover`] did.
#[derive(Debug, Clone, Default)]
pub struct DiscoverStats {
    /// The id of each requested root, in order; `None` for a root that failed (see `failed`).
    pub roots: Vec<Option<DrvId>>,
    pub failed: Vec<RootFailure>,
    /// Nodes stored by this discovery.
    pub new_nodes: u64,
    /// Distinct already-stored nodes met (the walk stops at them).
    pub known_nodes: u64,
    /// Derivations that could not be read or parsed.
    pub failed_nodes: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    /// Write transactions committed.
    pub commits: u64,
    /// Reading and parsing, then ordering and storing.
    pub read_time: Duration,
    pub write_time: Duration,
}

struct State {
    /// Resident nodes that are not pinned, least recently used first out.
    lru: LruCache<u32, Packed>,
    /// Pinned nodes and their pin counts.
    pinned: HashMap<u32, (Packed, u64), lru::DefaultHasher>,
    interner: Interner,
    /// Nodes stored: ids below this exist.
    count: u32,
    capacity: usize,
    over_capacity: bool,
    reloads: u64,
    evictions: u64,
    hits: u64,
    files_read: u64,
    bytes_read: u64,
}

impl State {
    fn resident(&self) -> usize {
        self.lru.len() + self.pinned.len()
    }

    fn evict(&mut self) {
        while self.resident() > self.capacity && self.lru.pop_lru().is_some() {
            self.evictions += 1;
        }
        let over = self.pinned.len() > self.capacity;
        if over && !self.over_capacity {
            tracing::warn!(
                pinned = self.pinned.len(),
                capacity = self.capacity,
                "more derivation-graph nodes are pinned than graph_lru_capacity allows; keeping them all"
            );
        } else if !over && self.over_capacity {
            tracing::info!(
                pinned = self.pinned.len(),
                capacity = self.capacity,
                "pinned nodes fit the capacity again"
            );
        }
        self.over_capacity = over;
    }

    fn publish(&self) {
        let m = crate::metrics::global();
        m.graph_nodes.set(i64::from(self.count));
        m.graph_pinned_nodes.set(i64::try_from(self.pinned.len()).unwrap_or(i64::MAX));
        m.graph_cache_utilization.set(self.resident() as f64 / self.capacity.max(1) as f64);
    }

    fn resident_mut(&mut self, id: u32) -> Option<&mut Packed> {
        match self.pinned.get_mut(&id) {
            Some((p, _)) => Some(p),
            None => self.lru.peek_mut(&id),
        }
    }
}

struct Inner {
    store: Store,
    config: GraphConfig,
    state: Mutex<State>,
}

/// The derivation graph; see the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct Graph {
    inner: Arc<Inner>,
}

impl fmt::Debug for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph").field("store", &self.inner.store).field("config", &self.inner.config).finish()
    }
}

impl Graph {
    /// Opens the graph stored in `store`, keeping at most `capacity` nodes resident.
    pub fn open(store: Store, capacity: usize) -> Result<Graph, GraphError> {
        Graph::open_with(store, GraphConfig::new(capacity))
    }

    /// [`Graph::open`] with every setting.
    pub fn open_with(store: Store, config: GraphConfig) -> Result<Graph, GraphError> {
        let count = record::count(&store.db().begin_read()?)?;
        let state = State {
            lru: LruCache::unbounded(),
            pinned: HashMap::default(),
            interner: Interner::default(),
            count,
            capacity: config.capacity,
            over_capacity: false,
            reloads: 0,
            evictions: 0,
            hits: 0,
            files_read: 0,
            bytes_read: 0,
        };
        state.publish();
        Ok(Graph { inner: Arc::new(Inner { store, config, state: Mutex::new(state) }) })
    }

    /// The store this graph lives in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The settings this graph was opened with.
    pub fn config(&self) -> &GraphConfig {
        &self.inner.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the cache inconsistent with redb in a way that
        // matters: the cache only ever holds copies of stored nodes.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads every derivation reachable from `roots` (.drv store paths) that the graph does not know yet,
    /// and stores it. Roots that cannot be completed (a missing or malformed .drv in their closure) are
    /// reported in [`DiscoverStats::failed`]; everything else is stored. `Err` only for database errors.
    pub async fn discover(&self, roots: &[String]) -> Result<DiscoverStats, GraphError> {
        let graph = self.clone();
        let roots = roots.to_vec();
        smol::unblock(move || graph.discover_blocking(&roots)).await
    }

    /// [`Graph::discover`] on the calling thread (it spawns its reader threads itself).
    pub fn discover_blocking(&self, roots: &[String]) -> Result<DiscoverStats, GraphError> {
        discover::run(self, roots)
    }

    /// The number of derivations stored.
    pub fn len(&self) -> u64 {
        u64::from(self.lock().count)
    }

    /// Whether no derivation is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().count == 0
    }

    /// The id of the derivation at `path`, if the graph knows it.
    pub fn id_of(&self, path: &str) -> Result<Option<DrvId>, GraphError> {
        let tx = self.inner.store.db().begin_read()?;
        Ok(record::id_of(&tx, path)?.map(DrvId))
    }

    /// The ids of many derivations at once (one read transaction), in the order of `paths`.
    pub fn ids_of(&self, paths: &[String]) -> Result<Vec<Option<DrvId>>, GraphError> {
        let tx = self.inner.store.db().begin_read()?;
        paths.iter().map(|p| Ok(record::id_of(&tx, p)?.map(DrvId))).collect()
    }

    /// The system and direct inputs of `id`, without decoding its paths: what traversals that only need
    /// the graph's shape read.
    pub fn shape(&self, id: DrvId) -> Result<(String, Vec<DrvId>), GraphError> {
        self.with_node(&mut self.lock(), id.0, |p, i| {
            Ok((p.system(i)?.to_owned(), p.input_ids().map(DrvId).collect()))
        })
    }

    /// The .drv path of `id`.
    pub fn path_of(&self, id: DrvId) -> Result<String, GraphError> {
        self.with_node(&mut self.lock(), id.0, |p, _| p.path())
    }

    /// The derivation `id`, decoded.
    pub fn node(&self, id: DrvId) -> Result<Node, GraphError> {
        let r = self.with_node(&mut self.lock(), id.0, |p, i| p.unpack(i))?;
        Ok(Node {
            id,
            path: r.path,
            system: r.system,
            outputs: r.outputs,
            inputs: r.inputs.into_iter().map(|(id, outputs)| Input { id: DrvId(id), outputs }).collect(),
            required_system_features: r.required_system_features,
            prefer_local_build: r.prefer_local_build,
            allow_substitutes: r.allow_substitutes,
            is_fixed_output: r.is_fixed_output,
        })
    }

    /// The direct inputs of `id`, in the order of its .drv file.
    pub fn dependencies(&self, id: DrvId) -> Result<Vec<DrvId>, GraphError> {
        self.with_node(&mut self.lock(), id.0, |p, _| Ok(p.input_ids().map(DrvId).collect()))
    }

    /// The derivations that have `id` as a direct input, ascending.
    pub fn dependents(&self, id: DrvId) -> Result<Vec<DrvId>, GraphError> {
        self.with_node(&mut self.lock(), id.0, |p, _| Ok(p.dependent_ids().map(DrvId).collect()))
    }

    /// The roots and everything they depend on, transitively (like `nix-store --query --requisites`
    /// restricted to derivations), ascending: dependencies before their dependents.
    pub fn closure(&self, roots: &[DrvId]) -> Result<Vec<DrvId>, GraphError> {
        self.walk(roots, Direction::Dependencies)
    }

    /// The seeds and everything that depends on them, transitively (the blast radius of changing the seeds),
    /// ascending: dependencies before their dependents.
    pub fn transitive_dependents(&self, seeds: &[DrvId]) -> Result<Vec<DrvId>, GraphError> {
        self.walk(seeds, Direction::Dependents)
    }

    /// Keeps `id` resident until as many [`Graph::unpin`] calls; returns its pin count.
    pub fn pin(&self, id: DrvId) -> Result<u64, GraphError> {
        let mut st = self.lock();
        if let Some((_, n)) = st.pinned.get_mut(&id.0) {
            *n = n.saturating_add(1);
            return Ok(*n);
        }
        let packed = match st.lru.pop(&id.0) {
            Some(p) => p,
            None => self.load(&mut st, id.0)?,
        };
        st.pinned.insert(id.0, (packed, 1));
        st.evict();
        st.publish();
        Ok(1)
    }

    /// Releases one pin of `id`; at zero the node becomes evictable (as the most recently used). Returns
    /// `false` if `id` was not pinned.
    pub fn unpin(&self, id: DrvId) -> bool {
        let mut st = self.lock();
        let remaining = match st.pinned.get_mut(&id.0) {
            None => {
                tracing::debug!(id = id.0, "unpin of a derivation that is not pinned");
                return false;
            }
            Some((_, n)) => {
                *n -= 1;
                *n
            }
        };
        if remaining == 0 {
            if let Some((p, _)) = st.pinned.remove(&id.0) {
                st.lru.put(id.0, p);
            }
            st.evict();
            st.publish();
        }
        true
    }

    /// The pin count of `id` (0 if not pinned).
    pub fn pin_count(&self, id: DrvId) -> u64 {
        self.lock().pinned.get(&id.0).map_or(0, |(_, n)| *n)
    }

    /// Whether `id` is in memory now (for diagnostics and tests; does not count as a use).
    pub fn is_resident(&self, id: DrvId) -> bool {
        let st = self.lock();
        st.pinned.contains_key(&id.0) || st.lru.contains(&id.0)
    }

    /// Counters and sizes.
    pub fn stats(&self) -> GraphStats {
        let st = self.lock();
        GraphStats {
            nodes: u64::from(st.count),
            resident: st.resident(),
            pinned: st.pinned.len(),
            capacity: st.capacity,
            reloads: st.reloads,
            evictions: st.evictions,
            hits: st.hits,
            files_read: st.files_read,
            bytes_read: st.bytes_read,
            interned: st.interner.len(),
        }
    }

    /// Runs `f` on the resident form of `id`, loading it from redb (and caching it) if needed.
    fn with_node<R>(
        &self,
        st: &mut State,
        id: u32,
        f: impl FnOnce(&Packed, &Interner) -> Result<R, PackError>,
    ) -> Result<R, GraphError> {
        let path_for_error = |p: &Packed| p.path().unwrap_or_else(|_| format!("(graph node #{id})"));
        if let Some((p, _)) = st.pinned.get(&id) {
            st.hits += 1;
            return f(p, &st.interner).map_err(|e| pack_err(id, || path_for_error(p), e));
        }
        if let Some(p) = st.lru.get(&id) {
            st.hits += 1;
            return f(p, &st.interner).map_err(|e| pack_err(id, || path_for_error(p), e));
        }
        let p = self.load(st, id)?;
        let r = f(&p, &st.interner).map_err(|e| pack_err(id, || path_for_error(&p), e));
        st.lru.put(id, p);
        st.evict();
        st.publish();
        r
    }

    /// Loads node `id` from redb into its resident form (without caching it).
    fn load(&self, st: &mut State, id: u32) -> Result<Packed, GraphError> {
        if id >= st.count {
            return Err(GraphError::UnknownId(DrvId(id)));
        }
        let started = Instant::now();
        let tx = self.inner.store.db().begin_read()?;
        let (node, dependents) = record::load(&tx, id)?
            .ok_or(GraphError::Corrupt { id: DrvId(id), what: "missing from the database" })?;
        let packed =
            Packed::build(&node, &dependents, &mut st.interner).map_err(|e| pack_err(id, || node.path, e))?;
        st.reloads += 1;
        let m = crate::metrics::global();
        m.graph_cache_reloads.inc();
        m.graph_cache_reload_duration.observe(started.elapsed().as_secs_f64());
        Ok(packed)
    }

    fn walk(&self, seeds: &[DrvId], direction: Direction) -> Result<Vec<DrvId>, GraphError> {
        let mut st = self.lock();
        let mut visited = BitSet::with_capacity(st.count as usize);
        let mut stack: Vec<u32> = seeds.iter().map(|s| s.0).filter(|&s| visited.insert(s)).collect();
        let mut next = Vec::new();
        let mut steps = 0u32;
        while let Some(id) = stack.pop() {
            next.clear();
            self.with_node(&mut st, id, |p, _| {
                match direction {
                    Direction::Dependencies => next.extend(p.input_ids()),
                    Direction::Dependents => next.extend(p.dependent_ids()),
                }
                Ok(())
            })?;
            stack.extend(next.iter().copied().filter(|&n| visited.insert(n)));
            steps += 1;
            if steps == 1024 {
                steps = 0;
                // Let other users of the graph in during long walks.
                drop(st);
                st = self.lock();
            }
        }
        Ok(visited.iter().map(DrvId).collect())
    }

    /// Called by discovery after each commit: `new_nodes` (the last ones stored, at most the capacity)
    /// become resident, resident nodes learn their new dependents from `edges` (`(input, dependent)`).
    fn apply_commit(
        &self,
        new_nodes: &[(u32, NodeV1)],
        edges: &mut [(u32, u32)],
        count: u32,
    ) -> Result<(), GraphError> {
        let mut st = self.lock();
        st.count = st.count.max(count);
        for (id, node) in new_nodes {
            if st.resident_mut(*id).is_none() {
                let p = Packed::build(node, &[], &mut st.interner)
                    .map_err(|e| pack_err(*id, || node.path.clone(), e))?;
                st.lru.put(*id, p);
            }
        }
        edges.sort_unstable();
        for group in edges.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(target, _)) = group.first() else { continue };
            if let Some(p) = st.resident_mut(target) {
                let mut new: Vec<u32> = group.iter().map(|e| e.1).collect();
                new.dedup();
                p.merge_dependents(&new)
                    .map_err(|e| pack_err(target, || format!("(graph node #{target})"), e))?;
            }
        }
        st.evict();
        st.publish();
        Ok(())
    }

    fn record_reads(&self, files: u64, bytes: u64) {
        let mut st = self.lock();
        st.files_read += files;
        st.bytes_read += bytes;
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Dependencies,
    Dependents,
}

/// A growable set of ids.
struct BitSet {
    words: Vec<u64>,
}

impl BitSet {
    fn with_capacity(n: usize) -> BitSet {
        BitSet { words: vec![0; n.div_ceil(64)] }
    }

    /// Adds `i`; returns whether it was absent.
    fn insert(&mut self, i: u32) -> bool {
        let w = (i / 64) as usize;
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        let bit = 1u64 << (i % 64);
        match self.words.get_mut(w) {
            Some(word) if *word & bit == 0 => {
                *word |= bit;
                true
            }
            _ => false,
        }
    }

    fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(w as u32 * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_can_be_shared_with_blocking_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        fn assert_clone<T: Clone>() {}
        assert_send_sync::<Graph>();
        assert_clone::<Graph>();
        assert_send_sync::<GraphError>();
    }

    #[test]
    fn bitset_iterates_in_order() {
        let mut s = BitSet::with_capacity(10);
        for i in [70, 3, 64, 0, 63, 1000, 3] {
            s.insert(i);
        }
        assert!(!s.insert(70));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 3, 63, 64, 70, 1000]);
    }
}
