//! Resident memory per derivation-graph node, driven by `scripts/bench/graph` and `graph-nixpkgs`.
//!
//! ```text
//! graph_memory DB ROOTS     # DB: a store discovered by `graph_bench discover`; ROOTS: its roots
//! ```
//!
//! Opens the graph with a capacity above its size, reads every table once (so redb's page cache is warm and
//! does not count), then makes every node resident by walking the closure of all roots, which loads each
//! node from redb into the LRU front. Reports, divided by the number of nodes: the growth of the process's
//! resident set (`VmRSS`, includes allocator overhead) and the growth of live heap bytes as counted by a
//! counting global allocator (bytes requested, without the allocator's per-block overhead), and the number of
//! edges (input derivations summed over all nodes, counted after the measurement).

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering};

use eka_ci::graph::{DrvId, Graph};
use eka_ci::store::schema::{GRAPH_DEPENDENTS, GRAPH_IDS, GRAPH_NODES};
use eka_ci::store::Store;
use redb::ReadableTable;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to the system allocator with the same arguments; the counter is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn rss_bytes() -> Result<i64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

fn warm(store: &Store) -> Result<u64, String> {
    let tx = store.db().begin_read().map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    let nodes = tx.open_table(GRAPH_NODES).map_err(|e| e.to_string())?;
    for e in nodes.iter().map_err(|e| e.to_string())? {
        bytes += e.map_err(|e| e.to_string())?.1.value().len() as u64;
    }
    let ids = tx.open_table(GRAPH_IDS).map_err(|e| e.to_string())?;
    for e in ids.iter().map_err(|e| e.to_string())? {
        bytes += e.map_err(|e| e.to_string())?.0.value().len() as u64;
    }
    let edges = tx.open_table(GRAPH_DEPENDENTS).map_err(|e| e.to_string())?;
    for e in edges.iter().map_err(|e| e.to_string())? {
        e.map_err(|e| e.to_string())?;
        bytes += 8;
    }
    Ok(bytes)
}

fn run(db: &str, roots_file: &str) -> Result<(), String> {
    let roots: Vec<String> = std::fs::read_to_string(roots_file)
        .map_err(|e| format!("{roots_file}: {e}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let store = Store::open(std::path::Path::new(db)).map_err(|e| e.to_string())?;
    let graph = Graph::open(store.clone(), usize::MAX).map_err(|e| e.to_string())?;
    let n = graph.len();
    let mut ids: Vec<DrvId> = Vec::with_capacity(roots.len());
    for r in &roots {
        ids.push(
            graph.id_of(r).map_err(|e| e.to_string())?.ok_or_else(|| format!("{r} is not in the graph"))?,
        );
    }
    let stored = warm(&store)?;
    let rss0 = rss_bytes()?;
    let live0 = LIVE.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let reached = graph.closure(&ids).map_err(|e| e.to_string())?.len();
    let load_s = started.elapsed().as_secs_f64();
    let rss1 = rss_bytes()?;
    let live1 = LIVE.load(Ordering::Relaxed);
    // Edges (input derivation → dependent), counted after the measurement so the counting allocates nothing
    // that is measured (the closure's own list is not alive at the measurement either).
    let mut edges = 0usize;
    for id in &graph.closure(&ids).map_err(|e| e.to_string())? {
        edges += graph.dependencies(*id).map_err(|e| e.to_string())?.len();
    }
    let s = graph.stats();
    if s.resident as u64 != n || reached as u64 != n {
        return Err(format!("expected all {n} nodes resident, got {} (reached {reached})", s.resident));
    }
    println!(
        "nodes={n} edges={edges} stored_bytes={stored} load_s={load_s:.3} rss_delta={} rss_per_node={:.1} heap_delta={} \
         heap_per_node={:.1} interned={}",
        rss1 - rss0,
        (rss1 - rss0) as f64 / n as f64,
        live1 - live0,
        (live1 - live0) as f64 / n as f64,
        s.interned
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [db, roots] => run(db, roots),
        _ => Err("usage: graph_memory DB ROOTS".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graph_memory: {e}");
            ExitCode::FAILURE
        }
    }
}
