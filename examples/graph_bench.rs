//! Derivation-graph benchmark helper, driven by `scripts/bench/graph`.
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

use std::process::ExitCode;
use std::time::Instant;

use eka_ci::graph::{Graph, GraphConfig};
use eka_ci::store::Store;

const LAYERS: usize = 10;

fn generate(n: usize, seed: u64) -> String {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = move |bound: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound.max(1)
    };
    let per = n.div_ceil(LAYERS).max(1);
    let mut s = String::with_capacity(n * 64);
    s.push_str(
        "let\n  mk = name: outputs: deps: derivation {\n    inherit name outputs deps;\n    system = \
         builtins.currentSystem;\n    builder = \"/bin/sh\";\n    args = [ \"-c\" \"echo $deps > $out\" ];\n  };\n  \
         core = mk \"synth-stdenv-core-1.0\" [ \"out\" ] [ ];\n",
    );
    for k in 0..n {
        let layer = k / per;
        let mut deps = vec!["core".to_string()];
        if layer > 0 {
            for _ in 0..2 + next(4) {
                let d = next(layer * per);
                deps.push(if d % 7 == 3 { format!("d{d}.dev") } else { format!("d{d}") });
            }
        }
        let outputs = if k % 7 == 3 { "[ \"out\" \"dev\" ]" } else { "[ \"out\" ]" };
        s.push_str(&format!("  d{k} = mk \"synth-package-{k}-1.0\" {outputs} [ {} ];\n", deps.join(" ")));
    }
    s.push_str("in [\n");
    for k in 0..n {
        s.push_str(&format!("  d{k}\n"));
    }
    s.push_str("]\n");
    s
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
