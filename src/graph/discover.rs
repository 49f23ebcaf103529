//! Discovery: reads the .drv files reachable from some roots that the graph does not know yet, and stores
//! them.
//!
//! Phase 1 walks the closures: the calling thread keeps the set of paths seen (each looked up once in
//! `graph_ids`; a stored node ends the walk) and hands unknown paths to reader threads, which read and parse
//! each file exactly once ([`parse_graph_info`]). Phase 2 orders the new nodes dependencies first (Kahn's
//! algorithm: a node becomes ready when all its unknown inputs are stored, so a node depending on a missing
//! or malformed .drv, or on a cycle, is never stored) and stores them in batches, one write transaction each.
//! Another discovery may store some of the same nodes meanwhile: each batch notices (the stored count moved)
//! and then looks every path up again before assigning an id, so a path never gets two ids.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use redb::ReadOnlyTable;

use super::record::{self, NodeV1, Writer};
use super::{DiscoverStats, DrvId, Graph, GraphError, RootFailure};
use crate::nix::drv::{parse_graph_info, DrvGraphInfo};
use crate::nix::store_path::looks_like_drv_path;
use crate::store::schema::GRAPH_IDS;

#[derive(Clone, Copy)]
enum Slot {
    /// Stored before this discovery.
    Known(u32),
    /// Index into `Discovery::pending`.
    Pending(u32),
}

struct Parsed {
    system: String,
    outputs: Vec<(String, String)>,
    inputs: Vec<(Slot, Vec<String>)>,
    required_system_features: Vec<String>,
    prefer_local_build: bool,
    allow_substitutes: bool,
    is_fixed_output: bool,
}

enum State {
    Reading,
    Parsed(Parsed),
    Failed(Arc<GraphError>),
    Stored(u32),
}

struct Pending {
    path: Arc<str>,
    state: State,
}

struct Discovery<'t> {
    ids: &'t ReadOnlyTable<&'static str, &'static [u8]>,
    seen: HashMap<Arc<str>, Slot, lru::DefaultHasher>,
    pending: Vec<Pending>,
    /// Pending indices not yet handed to a reader.
    to_read: Vec<u32>,
    known: u64,
    files_read: u64,
    bytes_read: u64,
}

impl Discovery<'_> {
    fn resolve(&mut self, path: &str) -> Result<Slot, GraphError> {
        if let Some(&s) = self.seen.get(path) {
            return Ok(s);
        }
        let slot = match record::lookup_id(self.ids, path)? {
            Some(id) => {
                self.known += 1;
                Slot::Known(id)
            }
            None => {
                let idx = u32::try_from(self.pending.len()).map_err(|_| GraphError::TooLarge {
                    path: path.to_string(),
                    what: "derivations in one discovery",
                })?;
                let path: Arc<str> = Arc::from(path);
                self.pending.push(Pending { path: path.clone(), state: State::Reading });
                self.to_read.push(idx);
                self.seen.insert(path, Slot::Pending(idx));
                return Ok(Slot::Pending(idx));
            }
        };
        self.seen.insert(Arc::from(path), slot);
        Ok(slot)
    }

    /// Takes the result of reading pending node `idx`; queues its unknown inputs.
    fn accept(&mut self, idx: u32, read: Result<DrvGraphInfo, GraphError>) -> Result<(), GraphError> {
        let Some(path) = self.pending.get(idx as usize).map(|p| p.path.clone()) else {
            return Err(GraphError::Worker(format!("reader returned unknown index {idx}")));
        };
        let state = match read {
            Err(e) => State::Failed(Arc::new(e)),
            Ok(info) => {
                let mut inputs = Vec::with_capacity(info.input_drvs.len());
                let mut bad = None;
                for (input, outs) in info.input_drvs {
                    if !looks_like_drv_path(&input) {
                        bad = Some(GraphError::BadInput { path: path.to_string(), input });
                        break;
                    }
                    inputs.push((self.resolve(&input)?, outs));
                }
                match bad {
                    Some(e) => State::Failed(Arc::new(e)),
                    None => State::Parsed(Parsed {
                        system: info.system,
                        outputs: info.outputs,
                        inputs,
                        required_system_features: info.required_system_features,
                        prefer_local_build: info.prefer_local_build,
                        allow_substitutes: info.allow_substitutes,
                        is_fixed_output: info.is_fixed_output,
                    }),
                }
            }
        };
        if let Some(p) = self.pending.get_mut(idx as usize) {
            p.state = state;
        }
        Ok(())
    }

    /// Phase 1: reads everything reachable from the queued paths.
    fn read_all(&mut self, threads: usize) -> Result<(), GraphError> {
        if threads == 0 {
            let mut buf = Vec::new();
            while let Some(idx) = self.to_read.pop() {
                let Some(path) = self.pending.get(idx as usize).map(|p| p.path.clone()) else { continue };
                let read = read_one(&path, &mut buf);
                self.files_read += 1;
                self.bytes_read += buf.len() as u64;
                self.accept(idx, read)?;
            }
            return Ok(());
        }
        let (job_tx, job_rx) = async_channel::unbounded::<(u32, Arc<str>)>();
        let (res_tx, res_rx) = async_channel::unbounded::<(u32, u64, Result<DrvGraphInfo, GraphError>)>();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let (jobs, results) = (job_rx.clone(), res_tx.clone());
                scope.spawn(move || reader(jobs, results));
            }
            drop(res_tx);
            let mut in_flight = 0usize;
            let mut run = || -> Result<(), GraphError> {
                loop {
                    for idx in std::mem::take(&mut self.to_read) {
                        if let Some(p) = self.pending.get(idx as usize) {
                            job_tx
                                .send_blocking((idx, p.path.clone()))
                                .map_err(|_| GraphError::Worker("the reader threads stopped".into()))?;
                            in_flight += 1;
                        }
                    }
                    if in_flight == 0 {
                        return Ok(());
                    }
                    let (idx, bytes, read) = res_rx
                        .recv_blocking()
                        .map_err(|_| GraphError::Worker("the reader threads stopped".into()))?;
                    in_flight -= 1;
                    self.files_read += 1;
                    self.bytes_read += bytes;
                    self.accept(idx, read)?;
                }
            };
            let outcome = run();
            job_tx.close();
            outcome
        })
    }
}

fn read_one(path: &str, buf: &mut Vec<u8>) -> Result<DrvGraphInfo, GraphError> {
    buf.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(buf))
        .map_err(|source| GraphError::Read { path: path.to_string(), source })?;
    parse_graph_info(buf).map_err(|source| GraphError::Parse { path: path.to_string(), source })
}

type ReadResult = (u32, u64, Result<DrvGraphInfo, GraphError>);

fn reader(jobs: async_channel::Receiver<(u32, Arc<str>)>, results: async_channel::Sender<ReadResult>) {
    let mut buf = Vec::with_capacity(16 * 1024);
    while let Ok((idx, path)) = jobs.recv_blocking() {
        // The parser never panics; should that promise break, the discovery fails instead of hanging.
        let read = std::panic::catch_unwind(AssertUnwindSafe(|| read_one(&path, &mut buf)))
            .unwrap_or_else(|_| Err(GraphError::Worker(format!("reading {path} panicked"))));
        if results.send_blocking((idx, buf.len() as u64, read)).is_err() {
            break;
        }
    }
}

pub(super) fn run(graph: &Graph, roots: &[String]) -> Result<DiscoverStats, GraphError> {
    let config = graph.config().clone();
    let db = graph.store().db();
    let started = Instant::now();

    // Phase 1: read.
    let rtx = db.begin_read()?;
    let mut expected_count = record::count(&rtx)?;
    let ids = rtx.open_table(GRAPH_IDS)?;
    let mut d = Discovery {
        ids: &ids,
        seen: HashMap::default(),
        pending: Vec::new(),
        to_read: Vec::new(),
        known: 0,
        files_read: 0,
        bytes_read: 0,
    };
    let mut root_slots = Vec::with_capacity(roots.len());
    for root in roots {
        root_slots.push(if looks_like_drv_path(root) {
            Ok(d.resolve(root)?)
        } else {
            Err(Arc::new(GraphError::NotADerivation { path: root.clone() }))
        });
    }
    let read_result = d.read_all(config.discovery_threads);
    graph.record_reads(d.files_read, d.bytes_read);
    read_result?;
    let Discovery { mut pending, known, files_read, bytes_read, .. } = d;
    drop(ids);
    drop(rtx);
    let read_time = started.elapsed();

    // Phase 2: order dependencies first, store in batches.
    let written_at = Instant::now();
    let n = pending.len();
    let local_inputs = |p: &Pending| -> Vec<u32> {
        match &p.state {
            State::Parsed(parsed) => parsed
                .inputs
                .iter()
                .filter_map(|(s, _)| match s {
                    Slot::Pending(j) => Some(*j),
                    Slot::Known(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    // Dependents within this discovery, as compressed rows: dependents of j are targets[start[j]..start[j+1]].
    let mut indegree = vec![0u32; n];
    let mut start = vec![0usize; n + 1];
    for (i, p) in pending.iter().enumerate() {
        for j in local_inputs(p) {
            if let Some(d) = indegree.get_mut(i) {
                *d += 1;
            }
            if let Some(s) = start.get_mut(j as usize + 1) {
                *s += 1;
            }
        }
    }
    for j in 0..n {
        let before = start.get(j).copied().unwrap_or(0);
        if let Some(s) = start.get_mut(j + 1) {
            *s += before;
        }
    }
    let mut targets = vec![0u32; start.last().copied().unwrap_or(0)];
    let mut fill = start.clone();
    for (i, p) in pending.iter().enumerate() {
        for j in local_inputs(p) {
            if let Some(f) = fill.get_mut(j as usize) {
                if let Some(t) = targets.get_mut(*f) {
                    *t = i as u32;
                }
                *f += 1;
            }
        }
    }
    let dependents_of = |j: usize| -> &[u32] {
        targets
            .get(start.get(j).copied().unwrap_or(0)..start.get(j + 1).copied().unwrap_or(0))
            .unwrap_or_default()
    };

    let mut queue: VecDeque<usize> = (0..n)
        .filter(|&i| {
            indegree.get(i) == Some(&0) && matches!(pending.get(i).map(|p| &p.state), Some(State::Parsed(_)))
        })
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = queue.pop_front() {
        order.push(i);
        for &k in dependents_of(i) {
            let k = k as usize;
            if let Some(d) = indegree.get_mut(k) {
                *d -= 1;
                if *d == 0 && matches!(pending.get(k).map(|p| &p.state), Some(State::Parsed(_))) {
                    queue.push_back(k);
                }
            }
        }
    }

    let mut new_nodes = 0u64;
    let mut commits = 0u64;
    let capacity = config.capacity;
    for batch in order.chunks(config.batch_size.max(1)) {
        let tx = db.begin_write()?;
        let mut next = record::count_in_write(&tx)?;
        let recheck = next != expected_count;
        let mut stored: Vec<(u32, NodeV1)> = Vec::with_capacity(batch.len());
        let mut edges = {
            let mut w = Writer::open(&tx)?;
            for &i in batch {
                let Some(p) = pending.get(i) else { continue };
                if recheck {
                    if let Some(id) = w.existing(&p.path)? {
                        if let Some(p) = pending.get_mut(i) {
                            p.state = State::Stored(id);
                        }
                        continue;
                    }
                }
                let id = next;
                next = next.checked_add(1).ok_or_else(|| GraphError::TooLarge {
                    path: p.path.to_string(),
                    what: "derivations in the graph",
                })?;
                let path = p.path.to_string();
                let Some(State::Parsed(parsed)) =
                    pending.get_mut(i).map(|p| std::mem::replace(&mut p.state, State::Stored(id)))
                else {
                    return Err(GraphError::Worker(format!("{path} was ordered but not parsed")));
                };
                let mut inputs = Vec::with_capacity(parsed.inputs.len());
                for (slot, outs) in parsed.inputs {
                    let input = match slot {
                        Slot::Known(id) => id,
                        Slot::Pending(j) => match pending.get(j as usize).map(|p| &p.state) {
                            Some(State::Stored(id)) => *id,
                            _ => {
                                return Err(GraphError::Worker(format!(
                                    "an input of {path} was not stored first"
                                )))
                            }
                        },
                    };
                    inputs.push((input, outs));
                }
                let node = NodeV1 {
                    path,
                    system: parsed.system,
                    outputs: parsed.outputs,
                    inputs,
                    required_system_features: parsed.required_system_features,
                    prefer_local_build: parsed.prefer_local_build,
                    allow_substitutes: parsed.allow_substitutes,
                    is_fixed_output: parsed.is_fixed_output,
                };
                w.insert(id, &node)?;
                stored.push((id, node));
            }
            w.finish()?
        };
        tx.commit()?;
        commits += 1;
        new_nodes += stored.len() as u64;
        expected_count = next;
        // Only the last `capacity` new nodes would survive in the cache: pack only those.
        let keep = stored.get(stored.len().saturating_sub(capacity)..).unwrap_or_default();
        graph.apply_commit(keep, &mut edges, next)?;
    }
    let write_time = written_at.elapsed();

    // Which roots failed, and why: each unstored node inherits the error of a failed node it depends on.
    let mut cause: Vec<Option<Arc<GraphError>>> = vec![None; n];
    let mut work: VecDeque<usize> = VecDeque::new();
    let mut failed_nodes = 0u64;
    for (i, p) in pending.iter().enumerate() {
        if let State::Failed(e) = &p.state {
            failed_nodes += 1;
            if let Some(c) = cause.get_mut(i) {
                *c = Some(e.clone());
            }
            work.push_back(i);
        }
    }
    while let Some(i) = work.pop_front() {
        let Some(e) = cause.get(i).cloned().flatten() else { continue };
        for &k in dependents_of(i) {
            if let Some(c @ None) = cause.get_mut(k as usize) {
                *c = Some(e.clone());
                work.push_back(k as usize);
            }
        }
    }
    let mut stats = DiscoverStats {
        roots: Vec::with_capacity(roots.len()),
        failed: Vec::new(),
        new_nodes,
        known_nodes: known,
        failed_nodes,
        files_read,
        bytes_read,
        commits,
        read_time,
        write_time,
    };
    for (root, slot) in roots.iter().zip(root_slots) {
        let outcome = match slot {
            Err(e) => Err(e),
            Ok(Slot::Known(id)) => Ok(id),
            Ok(Slot::Pending(i)) => match pending.get(i as usize).map(|p| &p.state) {
                Some(State::Stored(id)) => Ok(*id),
                _ => Err(cause
                    .get(i as usize)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| Arc::new(GraphError::Cycle { path: root.clone() }))),
            },
        };
        match outcome {
            Ok(id) => stats.roots.push(Some(DrvId(id))),
            Err(error) => {
                stats.roots.push(None);
                stats.failed.push(RootFailure { root: root.clone(), error });
            }
        }
    }
    if let Some(first) = stats.failed.first() {
        tracing::warn!(
            failed_roots = stats.failed.len(),
            first_root = %first.root,
            error = %first.error,
            "derivation discovery could not complete some roots"
        );
    }
    tracing::debug!(
        roots = roots.len(),
        new = stats.new_nodes,
        files = stats.files_read,
        read_ms = read_time.as_millis() as u64,
        write_ms = write_time.as_millis() as u64,
        "derivation discovery done"
    );
    Ok(stats)
}
