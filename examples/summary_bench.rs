//! Change-summary benchmark, driven by `scripts/bench/summary` (docs/benchmarks.md, "Change summary").
//!
//! ```text
//! summary_bench [N] [SEEDS] [--graph]
//! ```
//!
//! Builds the layered DAG of `examples/common` with N derivations (default 100,000, counting the shared
//! core) and about 10 inputs each (about 1,000,000 edges), picks SEEDS changed derivations (default 1,000)
//! with a fixed-seed generator, and times: building the CSR from adjacency lists, the blast radius of every
//! seed (bit-parallel, 64 seeds per pass), the union of everything that must rebuild, and rendering a
//! summary of 1,000 package changes. It checks a sample of radii against a plain per-seed walk. With
//! `--graph` it also writes the DAG as .drv files, discovers them into a fresh `Graph` and times loading
//! the snapshot from it (`Snapshot::from_graph`), the phase the server runs before the traversal.

// Only `layered_edges` is used here; the Nix-expression generator serves the other benchmarks.
#[allow(dead_code)]
mod common;

use std::process::ExitCode;
use std::time::Instant;

use eka_ci::summary::impact::{blast_radii, union, Csr, Snapshot};
use eka_ci::summary::{
    render, BlastRadius, Bucket, ChangeSummary, EvalStatus, JobSummary, KernelRebuilds, KindCounts,
    PackageChange, PackageChangeKind, RebuildImpact, Settings, SystemRebuilds,
};

/// Inputs of node `v` (node 0 is the core; derivation k is node k + 1).
fn adjacency(n: usize) -> Vec<Vec<u32>> {
    let lower = common::layered_edges(n.saturating_sub(1), 1, 7, 7);
    let mut adj = vec![Vec::new()];
    for deps in lower {
        let mut inputs: Vec<u32> = std::iter::once(0).chain(deps.iter().map(|d| *d as u32 + 1)).collect();
        inputs.sort_unstable();
        inputs.dedup();
        adj.push(inputs);
    }
    adj
}

fn seeds(n: usize, count: usize) -> Vec<u32> {
    let mut state = 0x5eed_u64;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < count.min(n) {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        picked.insert(((state >> 33) as usize % n) as u32);
    }
    // Changed derivations come in PR order, not sorted.
    let mut v: Vec<u32> = picked.into_iter().collect();
    v.sort_by_key(|s| s.wrapping_mul(2654435761));
    v
}

fn walk(csr: &Csr, s: u32) -> u64 {
    let mut reached = vec![false; csr.len()];
    reached[s as usize] = true;
    let mut count = 0;
    for v in s as usize + 1..csr.len() {
        if csr.inputs_of(v).iter().any(|&u| reached[u as usize]) {
            reached[v] = true;
            count += 1;
        }
    }
    count
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn summary_of(changes: usize) -> ChangeSummary {
    use PackageChangeKind::*;
    let kinds = [
        vec![Added],
        vec![Removed],
        vec![VersionBump],
        vec![VersionBump, LicenseChange],
        vec![MaintainerChange],
        vec![RebuildOnly],
    ];
    let changes: Vec<PackageChange> = (0..changes)
        .map(|i| PackageChange {
            attr: format!("python312Packages.package-{i}"),
            system: "x86_64-linux".into(),
            kinds: kinds[i % kinds.len()].clone(),
            pname: Some(format!("package-{i}")),
            base_version: Some("1.2.3".into()),
            head_version: Some("1.2.4".into()),
            base_license: vec!["MIT".into()],
            head_license: vec!["Apache-2.0".into()],
            base_maintainers: vec!["alice".into(), "bob".into()],
            head_maintainers: vec!["carol".into()],
        })
        .collect();
    let top = (0..5)
        .map(|i| BlastRadius {
            attr: format!("package-{i}"),
            drv: format!("/nix/store/x-{i}.drv"),
            system: "x86_64-linux".into(),
            dependents: 1000 - i,
        })
        .collect();
    let job = JobSummary {
        repo: "https://github.com/NixOS/nixpkgs".into(),
        job: "nixpkgs".into(),
        base_sha: "b".repeat(40),
        head_sha: "a".repeat(40),
        eval: EvalStatus::Ok,
        new_eval_errors: vec![],
        fixed_eval_errors: vec![],
        counts: KindCounts::of(&changes),
        changes,
        impact: RebuildImpact {
            per_system: vec![SystemRebuilds {
                system: "x86_64-linux".into(),
                rebuilds: 1000,
                bucket: Bucket::of(1000),
                rebuilt_drvs: 1000,
                must_rebuild: 4000,
            }],
            per_kernel: vec![
                KernelRebuilds {
                    kernel: "darwin".into(),
                    rebuilds: 0,
                    bucket: Bucket::None,
                    rebuilt_drvs: 0,
                },
                KernelRebuilds {
                    kernel: "linux".into(),
                    rebuilds: 1000,
                    bucket: Bucket::of(1000),
                    rebuilt_drvs: 1000,
                },
            ],
            blast_radius_computed: true,
            top,
            rebuilds: 1000,
            hidden_aliases: 0,
            aliases_known: true,
            changed_drvs: 1000,
            must_rebuild: 4000,
        },
        computed_at: 0,
        settings: Settings::default(),
    };
    ChangeSummary {
        repo: job.repo.clone(),
        base_sha: job.base_sha.clone(),
        head_sha: job.head_sha.clone(),
        jobs: vec![job],
        sizes: vec![],
    }
}

/// Writes the DAG as .drv files under `dir`, discovers them into a fresh graph and loads the snapshot.
fn graph_phase(adj: &[Vec<u32>], dir: &std::path::Path) -> Result<(), String> {
    let path = |v: usize| format!("{}/{:032}-synth-{v}.drv", dir.display(), v);
    let out = |v: usize| format!("/nix/store/{:032}-synth-{v}", v);
    let t = Instant::now();
    for (v, inputs) in adj.iter().enumerate() {
        let ins: Vec<String> =
            inputs.iter().map(|u| format!("(\"{}\",[\"out\"])", path(*u as usize))).collect();
        let text = format!(
            "Derive([(\"out\",\"{o}\",\"\",\"\")],[{}],[],\"x86_64-linux\",\"/bin/sh\",[],[(\"name\",\"synth-{v}\"),(\"out\",\"{o}\")])",
            ins.join(","),
            o = out(v)
        );
        std::fs::write(path(v), text).map_err(|e| e.to_string())?;
    }
    eprintln!("setup: wrote {} .drv files in {:.1} ms", adj.len(), ms(t));
    let store = eka_ci::store::Store::open(&dir.join("db.redb")).map_err(|e| e.to_string())?;
    let graph = eka_ci::graph::Graph::open(store, adj.len() + 1).map_err(|e| e.to_string())?;
    let roots: Vec<String> = (0..adj.len()).map(path).collect();
    let t = Instant::now();
    let stats = graph.discover_blocking(&roots).map_err(|e| e.to_string())?;
    eprintln!(
        "setup: discovered {} derivations in {:.1} ms ({} failed)",
        stats.new_nodes,
        ms(t),
        stats.failed_nodes
    );
    let t = Instant::now();
    let snapshot = Snapshot::from_graph(&graph, &roots).map_err(|e| e.to_string())?;
    let load = ms(t);
    println!(
        "snapshot from graph: {load:.1} ms ({} nodes, {} edges, all resident)",
        snapshot.csr.len(),
        snapshot.csr.edges()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_graph = args.iter().any(|a| a == "--graph");
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(100_000);
    let count = nums.get(1).copied().unwrap_or(1000);

    let adj = adjacency(n);
    let t = Instant::now();
    let csr = match Csr::from_inputs(adj.len(), |v| adj[v as usize].iter().copied()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let build = ms(t);
    println!("graph: {} nodes, {} edges", csr.len(), csr.edges());
    println!("csr build: {build:.1} ms");

    let seeds = seeds(csr.len(), count);
    let t = Instant::now();
    let radii = blast_radii(&csr, &seeds);
    let radius_ms = ms(t);
    let t = Instant::now();
    let reached = union(&csr, &seeds);
    let union_ms = ms(t);
    let total: u64 = radii.iter().sum();
    let must = reached.iter().filter(|r| **r).count();
    println!(
        "blast radius: {} seeds in {radius_ms:.1} ms ({:.1} µs/seed; mean radius {:.0})",
        seeds.len(),
        radius_ms * 1000.0 / seeds.len().max(1) as f64,
        total as f64 / seeds.len().max(1) as f64
    );
    println!("union: {union_ms:.1} ms ({must} derivations must rebuild)");
    for i in (0..seeds.len()).step_by((seeds.len() / 10).max(1)) {
        let expected = walk(&csr, seeds[i]);
        if radii[i] != expected {
            eprintln!("MISMATCH: seed {} radius {} expected {expected}", seeds[i], radii[i]);
            return ExitCode::FAILURE;
        }
    }
    let t = Instant::now();
    let sample: Vec<u64> = seeds.iter().take(10).map(|s| walk(&csr, *s)).collect();
    println!(
        "per-seed walk (for comparison): {:.2} ms per seed → {:.0} ms for {} seeds",
        ms(t) / sample.len().max(1) as f64,
        ms(t) / sample.len().max(1) as f64 * seeds.len() as f64,
        seeds.len()
    );

    let s = summary_of(1000);
    let settings = Settings { max_packages_listed: 1000, ..Settings::default() };
    let t = Instant::now();
    let mut rendered = render(&s, &settings);
    for _ in 0..9 {
        rendered = render(&s, &settings);
    }
    println!(
        "render: 1000 changes in {:.2} ms ({} bytes, truncation {:?})",
        ms(t) / 10.0,
        rendered.markdown.len(),
        rendered.truncation
    );

    if with_graph {
        let dir = match tempfile_dir() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let result = graph_phase(&adj, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = result {
            eprintln!("graph phase: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn tempfile_dir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("summary-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
