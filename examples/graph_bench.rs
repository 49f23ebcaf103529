//! Derivation-graph benchmark helper, driven by `scripts/bench/graph` and `scripts/bench/graph-nixpkgs`.
//!
//! ```text
//! graph_bench gen N SEED                       # prints a nixpkgs-shaped Nix expression of N derivations
//! graph_bench discover DB ROOTS [THREADS]      # discovers the roots (one .drv path a line) into a new DB
//! ```
//!
//! The generated expression is a layered DAG: a shared "stdenv-like" core that every derivation depends on,
//! then 10 layers; each derivation depends on the core and on 2-5 derivations of lower layers chosen by a
//! deterministic generator, and one in seven has a `dev` output that its dependents use. It evaluates to the
//! list of all N derivations (the core is reached through them), like a jobset where every package is a job.

mod common;

use std::process::ExitCode;
use std::time::Instant;

use eka_ci::graph::{Graph, GraphConfig};
use eka_ci::store::Store;

fn generate(n: usize, seed: u64) -> String {
    let prelude = "let\n  mk = name: outputs: deps: derivation {\n    inherit name outputs deps;\n    system = \
         builtins.currentSystem;\n    builder = \"/bin/sh\";\n    args = [ \"-c\" \"echo $deps > $out\" ];\n  };\n  \
         core = mk \"synth-stdenv-core-1.0\" [ \"out\" ] [ ];\n";
    common::layered_dag(n, seed, prelude, |k| format!("synth-package-{k}-1.0"), false)
}

fn discover(db: &str, roots_file: &str, threads: Option<usize>) -> Result<(), String> {
    let roots: Vec<String> = std::fs::read_to_string(roots_file)
        .map_err(|e| format!("{roots_file}: {e}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let started = Instant::now();
    let store = Store::open(std::path::Path::new(db)).map_err(|e| e.to_string())?;
    let mut config = GraphConfig::new(roots.len() * 2 + 16);
    if let Some(t) = threads {
        config.discovery_threads = t;
    }
    let threads = config.discovery_threads;
    let graph = Graph::open_with(store, config).map_err(|e| e.to_string())?;
    let stats = graph.discover_blocking(&roots).map_err(|e| e.to_string())?;
    let total = started.elapsed();
    if !stats.failed.is_empty() {
        return Err(format!("{} roots failed, first: {}", stats.failed.len(), stats.failed[0].error));
    }
    println!(
        "threads={threads} nodes={} files={} bytes={} commits={} read_s={:.3} write_s={:.3} total_s={:.3}",
        graph.len(),
        stats.files_read,
        stats.bytes_read,
        stats.commits,
        stats.read_time.as_secs_f64(),
        stats.write_time.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["gen", n, seed] => match (n.parse(), seed.parse()) {
            (Ok(n), Ok(seed)) => {
                print!("{}", generate(n, seed));
                Ok(())
            }
            _ => Err("gen N SEED: numbers expected".to_string()),
        },
        ["discover", db, roots] => discover(db, roots, None),
        ["discover", db, roots, threads] => match threads.parse() {
            Ok(t) => discover(db, roots, Some(t)),
            Err(_) => Err("THREADS: a number expected".to_string()),
        },
        _ => Err("usage: graph_bench gen N SEED | graph_bench discover DB ROOTS [THREADS]".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graph_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
