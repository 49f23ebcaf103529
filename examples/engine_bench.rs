//! Build-engine benchmark helper, driven by `scripts/bench/engine`.
//!
//! ```text
//! engine_bench gen N NONCE [flat]          # prints a layered DAG of N trivial derivations (+1 core),
//!                                          # or N independent ones (`flat`)
//! engine_bench run DB ROOTS JOBS           # discovers ROOTS (one .drv a line) and builds them with the
//!                                          # scheduler, local builder with max_jobs JOBS; prints timings
//! ```
//!
//! The DAG: a shared core that every derivation depends on, then 10 layers; each derivation depends on the
//! core and on 2-5 derivations of lower layers (deterministic), one in seven has a `dev` output that its
//! dependents use. Every builder writes all its outputs (PATH is empty inside builds: shell built-ins only).
//! `NONCE` goes into every name, so each run builds fresh outputs. `run` reads `EKA_SEED_CAP`,
//! `EKA_BATCH_CAP` and `EKA_CHILDREN` (the scheduler's `seed_cap`, `batch_cap`, `children_per_builder`) to
//! compare settings.

mod common;

use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use eka_ci::graph::Graph;
use eka_ci::jobset::JobsetId;
use eka_ci::scheduler::{self, builders, DrvState, SchedulerConfig};
use eka_ci::store::Store;
use smol::LocalExecutor;

fn generate(n: usize, nonce: &str, flat: bool) -> String {
    let prelude = format!(
        "let\n  mk = name: outputs: deps: derivation {{\n    name = \"${{name}}-{nonce}\";\n    inherit outputs deps;\n    \
         system = builtins.currentSystem;\n    builder = \"/bin/sh\";\n    \
         args = [ \"-c\" \"echo $deps > $out; if [ -n \\\"$dev\\\" ]; then echo > $dev; fi\" ];\n  }};\n  \
         core = mk \"engine-core\" [ \"out\" ] [ ];\n"
    );
    // Seed 0 is the sequence this benchmark has always used.
    common::layered_dag(n, 0, &prelude, |k| format!("engine-pkg-{k}"), flat)
}

/// CPU seconds (user + system) of this process alone, from `/proc/self/stat` (children excluded).
fn self_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15 (clock ticks, 100 Hz).
    let tick = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(14) + tick(15)) / 100.0
}

fn run(db: &str, roots_file: &str, jobs: u32) -> Result<(), String> {
    let roots: Vec<String> = std::fs::read_to_string(roots_file)
        .map_err(|e| format!("{roots_file}: {e}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let ex = Rc::new(LocalExecutor::new());
    smol::block_on(ex.run(async {
        let local = builders::detect_local().await.map_err(|e| e.to_string())?;
        let store = Store::open(std::path::Path::new(db)).map_err(|e| e.to_string())?;
        let logs = std::path::Path::new(db).with_file_name("logs");
        let graph = Graph::open(store, roots.len() * 2 + 16).map_err(|e| e.to_string())?;
        let mut cfg = SchedulerConfig::local(local.systems, local.features, logs);
        cfg.local_max_jobs = jobs;
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        if let Some(v) = env("EKA_SEED_CAP") {
            cfg.seed_cap = v;
        }
        if let Some(v) = env("EKA_BATCH_CAP") {
            cfg.batch_cap = v;
        }
        if let Some(v) = env("EKA_CHILDREN") {
            cfg.children_per_builder = v;
        }
        let t0 = Instant::now();
        let stats = graph.discover(&roots).await.map_err(|e| e.to_string())?;
        if !stats.failed.is_empty() {
            return Err(format!("discovery failed: {}", stats.failed[0].error));
        }
        let t1 = Instant::now();
        let h = scheduler::start(&ex, graph.clone(), cfg).await.map_err(|e| e.to_string())?;
        h.request(JobsetId(1), roots.clone()).await.map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        let outcome = h.wait(JobsetId(1)).await.map_err(|e| e.to_string())?;
        let t3 = Instant::now();
        let ok = outcome
            .roots
            .iter()
            .filter(|r| r.state == Some(DrvState::Completed(scheduler::Completion::Success)))
            .count();
        if ok != roots.len() {
            let bad = outcome
                .roots
                .iter()
                .find(|r| r.state != Some(DrvState::Completed(scheduler::Completion::Success)));
            return Err(format!("{ok} of {} roots succeeded; first other: {bad:?}", roots.len()));
        }
        println!(
            "total_s={:.3} discover_s={:.3} request_s={:.3} build_s={:.3} nodes={} nix_processes={} self_cpu_s={:.2}",
            (t3 - t0).as_secs_f64(),
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            graph.len(),
            eka_ci::nix::build::nix_processes_spawned(),
            self_cpu_seconds(),
        );
        h.shutdown().await.map_err(|e| e.to_string())?;
        Ok(())
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 4 || args.len() == 5 => match args[2].parse() {
            Ok(n) => {
                print!("{}", generate(n, &args[3], args.get(4).is_some_and(|a| a == "flat")));
                Ok(())
            }
            Err(e) => Err(format!("N: {e}")),
        },
        Some("run") if args.len() == 5 => match args[4].parse() {
            Ok(j) => run(&args[2], &args[3], j),
            Err(e) => Err(format!("JOBS: {e}")),
        },
        _ => Err("usage: engine_bench gen N NONCE [flat] | engine_bench run DB ROOTS JOBS".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine_bench: {e}");
            ExitCode::FAILURE
        }
    }
}
