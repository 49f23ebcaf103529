//! Build-runner benchmark helper, driven by `scripts/bench/build`: runs ONE batch of the `.drv` paths listed
//! in a file (one a line) through `eka_ci::nix::build` and prints the wall time and the outcome counts.
//!
//! ```text
//! build_bench DRV-LIST LOGS-DIR MAX-JOBS
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use eka_ci::nix::build::{start_batch, BuildBatch};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [list, logs, jobs] = args.as_slice() else {
        eprintln!("usage: build_bench DRV-LIST LOGS-DIR MAX-JOBS");
        return ExitCode::from(2);
    };
    let drvs: Vec<String> = match std::fs::read_to_string(list) {
        Ok(text) => text.lines().filter(|l| !l.is_empty()).map(str::to_string).collect(),
        Err(e) => {
            eprintln!("cannot read {list}: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(max_jobs) = jobs.parse::<u32>() else {
        eprintln!("MAX-JOBS must be a number");
        return ExitCode::from(2);
    };
    let mut batch = BuildBatch::new(drvs, logs);
    batch.max_jobs = max_jobs;
    let n = batch.drvs.len();
    let (tx, rx) = async_channel::unbounded();
    let started = Instant::now();
    let summary = smol::block_on(async {
        // Drain events as they come, as the scheduler would.
        let drain = async { while rx.recv().await.is_ok() {} };
        let run = async {
            let running = start_batch(batch, tx).await?;
            Ok::<_, eka_ci::nix::build::BuildError>(running.wait().await)
        };
        futures_lite::future::zip(run, drain).await.0
    });
    let elapsed = started.elapsed();
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &summary.reports {
        *counts.entry(r.outcome.kind()).or_default() += 1;
    }
    println!(
        "{n} derivations in {:.3} s (nix-build runs: {}): {counts:?}",
        elapsed.as_secs_f64(),
        summary.nix_runs
    );
    if counts.get("built").copied().unwrap_or(0) == n {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
