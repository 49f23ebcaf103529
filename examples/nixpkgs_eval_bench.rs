//! Evaluates a whole nixpkgs tree with the built-in evaluator, driven by `scripts/bench/nixpkgs`.
//!
//! ```text
//! nixpkgs_eval_bench NIXPKGS_DIR WORKERS MAX_MEMORY_MIB NIX_ENV_OUTPUT
//! ```
//!
//! Runs `evaluate` on `default.nix` of NIXPKGS_DIR (as the server would: restricted evaluation, meta on,
//! GC roots in a temporary directory) and reports its wall time, the peak resident memory of this process
//! and all its descendants together (sampled every 100 ms), the records, and a comparison with the output
//! of `nix-env -f NIXPKGS_DIR -qaP --drv-path` saved in NIX_ENV_OUTPUT: attributes nix-env lists that the
//! evaluator misses or gives another `.drv` path, and attributes the evaluator lists beyond nix-env's
//! (aliases, failing attributes). Failures are recorded without Nix's message (`defer_error_messages`, as
//! the server evaluates); afterwards 50 of them are explained on demand, as a report showing that many
//! new errors would, and that is timed separately.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eka_ci::nix::eval::{
    evaluate, explain, is_deferred, EvalBackend, EvalEvent, EvalOptions, EvalOutcome, EvalSource,
};

/// How many deferred errors are explained afterwards, as a report showing that many would.
const EXPLAIN_SAMPLE: usize = 50;

/// Resident bytes of `root` and every process descending from it.
/// User and system CPU seconds of this process (not its children), from `/proc/self/stat`.
fn self_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command (which ends with ')'): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let user = fields.get(11)?.parse::<f64>().ok()? / tick;
    let system = fields.get(12)?.parse::<f64>().ok()? / tick;
    Some((user, system))
}

fn tree_rss(root: u32) -> u64 {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut rss: HashMap<u32, u64> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("PPid:") {
                parent.insert(pid, v.trim().parse().unwrap_or(0));
            } else if let Some(v) = line.strip_prefix("VmRSS:") {
                let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                rss.insert(pid, kib * 1024);
            }
        }
    }
    rss.iter()
        .filter(|(pid, _)| {
            let mut p = **pid;
            for _ in 0..64 {
                if p == root {
                    return true;
                }
                match parent.get(&p) {
                    Some(&pp) if pp != 0 => p = pp,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, bytes)| *bytes)
        .sum()
}

fn main() -> ExitCode {
    // The evaluator's own log (e.g. walk processes restarted over the memory cap), on standard error.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("eka_ci=info"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 && args.len() != 6 {
        eprintln!(
            "usage: nixpkgs_eval_bench NIXPKGS_DIR WORKERS MAX_MEMORY_MIB NIX_ENV_OUTPUT [SHARES_PER_WORKER]"
        );
        return ExitCode::from(2);
    }
    let dir = PathBuf::from(&args[1]);
    let (Ok(workers), Ok(max_memory_mib)) = (args[2].parse::<usize>(), args[3].parse::<u64>()) else {
        eprintln!("WORKERS and MAX_MEMORY_MIB must be numbers");
        return ExitCode::from(2);
    };
    let nix_env = match std::fs::read_to_string(&args[4]) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("cannot read {}: {e}", args[4]);
            return ExitCode::from(2);
        }
    };
    // `attr  name  drv` per line; the drv column is `-` when nix-env could not compute it.
    let expected: BTreeMap<String, String> = nix_env
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.first()?.to_string(), cols.last()?.to_string()))
        })
        .collect();

    let roots = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("tempdir: {e}");
            return ExitCode::from(1);
        }
    };
    let mut opts = EvalOptions::new(roots.path());
    opts.workers = workers;
    opts.max_memory_mib = max_memory_mib;
    if let Some(k) = args.get(5) {
        let Ok(k) = k.parse::<usize>() else {
            eprintln!("SHARES_PER_WORKER must be a number");
            return ExitCode::from(2);
        };
        // A share count means the walk without sessions: a fresh process per share.
        opts.walk_shares_per_worker = k;
        opts.walk_sessions = false;
    }
    opts.backend = EvalBackend::Builtin;
    opts.timeout = Duration::from_secs(3 * 3600);
    // As the server does: failures are explained later, for the errors a report shows.
    opts.defer_error_messages = true;

    let peak = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        let me = std::process::id();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss(me), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let started = Instant::now();
    let source = EvalSource::File { file: PathBuf::from("default.nix"), attr_path: Vec::new() };
    let (tx, rx) = async_channel::bounded(1024);
    let result = smol::block_on(async {
        let collect = async {
            let mut records = BTreeMap::new();
            let mut last = Instant::now();
            while let Ok(event) = rx.recv().await {
                match event {
                    EvalEvent::Record(r) => {
                        records.insert(r.attr.clone(), r);
                    }
                    EvalEvent::Listed { total } => {
                        eprintln!("[{:>6.1}s] listed {total}", started.elapsed().as_secs_f64())
                    }
                    EvalEvent::Progress { done, total } if last.elapsed() > Duration::from_secs(5) => {
                        last = Instant::now();
                        eprintln!("[{:>6.1}s] {done}/{total}", started.elapsed().as_secs_f64());
                    }
                    _ => {}
                }
            }
            records
        };
        let eval = async {
            let r = evaluate(&dir, &source, &opts, tx).await;
            r
        };
        let (summary, records) = futures_lite::future::zip(eval, collect).await;
        (summary, records)
    });
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (summary, records) = result;
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("evaluation failed: {e}");
            return ExitCode::from(1);
        }
    };

    let mut missing = Vec::new();
    let mut different = Vec::new();
    let mut failing_in_ours = Vec::new();
    for (attr, drv) in &expected {
        match records.get(attr).map(|r| &r.outcome) {
            None => missing.push(attr.clone()),
            Some(EvalOutcome::Derivation(d)) if d.drv_path == *drv => {}
            Some(EvalOutcome::Derivation(d)) => {
                different.push(format!("{attr}: {} vs nix-env {drv}", d.drv_path))
            }
            Some(EvalOutcome::Error { message }) => {
                failing_in_ours.push(format!("{attr}: {}", message.lines().next().unwrap_or("")))
            }
        }
    }
    let extra_drvs = records
        .iter()
        .filter(|(a, r)| !expected.contains_key(*a) && matches!(r.outcome, EvalOutcome::Derivation(_)))
        .count();
    let errors: Vec<&String> = records
        .values()
        .filter_map(|r| match &r.outcome {
            EvalOutcome::Error { message } => Some(message),
            _ => None,
        })
        .collect();
    let unexplained = errors.iter().filter(|m| !m.starts_with("error:")).count();
    let deferred: Vec<Vec<String>> = records
        .values()
        .filter(|r| matches!(&r.outcome, EvalOutcome::Error { message } if is_deferred(message)))
        .map(|r| r.attr_path.clone())
        .collect();
    // What a report pays for the errors it shows: explain EXPLAIN_SAMPLE of them, spread over the list.
    let step = (deferred.len() / EXPLAIN_SAMPLE).max(1);
    let sample: Vec<Vec<String>> = deferred.iter().step_by(step).take(EXPLAIN_SAMPLE).cloned().collect();
    let explain_started = Instant::now();
    let explained = smol::block_on(explain(&dir, &source, &opts, &sample));
    let explain_wall = explain_started.elapsed();

    println!("workers: {workers}, max_memory_mib: {max_memory_mib}");
    println!("wall: {:.1} s", wall.as_secs_f64());
    println!(
        "walk: {} nix repl sessions, {} nix-instantiate walk processes",
        summary.walk_sessions, summary.walk_processes
    );
    if let Some((user, system)) = self_cpu() {
        println!(
            "CPU of this process alone (the evaluator's own side): {user:.1} s user, {system:.1} s system"
        );
    }
    println!(
        "peak RSS of the process tree: {:.2} GiB",
        peak.load(Ordering::Relaxed) as f64 / (1u64 << 30) as f64
    );
    println!(
        "records: {} ({} derivations, {} errors; {} errors without a Nix message)",
        summary.total, summary.derivations, summary.errors, unexplained
    );
    println!("deferred errors (message computed on demand): {}", deferred.len());
    match &explained {
        Ok(messages) => println!(
            "explaining {} of them on demand: {:.1} s, {} with Nix's message",
            sample.len(),
            explain_wall.as_secs_f64(),
            messages.iter().filter(|m| m.starts_with("error:")).count()
        ),
        Err(e) => println!("explaining {} of them on demand failed: {e}", sample.len()),
    }
    println!("nix-env attributes: {}", expected.len());
    println!("  missing from ours: {}", missing.len());
    println!("  different .drv path: {}", different.len());
    println!("  an error in ours: {}", failing_in_ours.len());
    println!("derivations beyond nix-env's list (aliases): {extra_drvs}");
    for line in missing.iter().chain(&different).chain(&failing_in_ours).take(20) {
        println!("  {line}");
    }
    if missing.is_empty() && different.is_empty() && failing_in_ours.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
