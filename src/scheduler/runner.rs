//! The scheduler's view of the Nix build runner ([`crate::nix::build`]): turning a batch of the scheduler
//! into the runner's [`BuildBatch`], driving one running batch (forwarding its events, killing it on
//! request) and the bulk output-validity check. The loop (`engine/`) names nothing else of the runner.

use std::collections::HashSet;
use std::path::Path;

use async_channel::{Receiver, Sender};
use futures_lite::future;

pub use crate::nix::build::{BuildBatch, BuildEvent, DrvOutcome};

/// One batch for one builder, as the scheduler describes it.
pub struct BatchSpec {
    pub batch: BuildBatch,
}

/// The log file of `drv`'s attempt `attempt`, as the runner names it.
pub fn log_path(logs_dir: &Path, drv: &str, attempt: u32) -> Option<String> {
    crate::nix::build::log_path(logs_dir, drv, attempt).ok().map(|p| p.display().to_string())
}

/// The paths among `paths` that are not valid (one Nix process per chunk of paths).
pub async fn invalid_outputs(paths: &[String]) -> Result<HashSet<String>, String> {
    crate::nix::build::invalid_outputs(paths).await.map_err(|e| e.to_string())
}

/// Removes the runner's scratch directories left by a previous process.
pub async fn clean_scratch(logs_dir: &Path) {
    let n = crate::nix::build::remove_stale_scratch(logs_dir).await;
    if n > 0 {
        tracing::info!(removed = n, "removed stale build scratch directories");
    }
}

/// What a batch reports to the loop.
pub enum BatchMsg {
    Event(BuildEvent),
    /// The batch ended; `Err` when the runner could not run it or Nix failed as a whole.
    Done(Result<(), BatchError>),
}

/// Why a batch could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The host's trouble (out of file descriptors or disk space, unable to fork; see
    /// [`crate::nix::process::host`]): its derivations are retried with backoff, never failed.
    Transient { reason: String },
    /// The runner could not run it or Nix failed as a whole.
    Failed(String),
    /// The batch's remote builder could not be reached or was lost during it (Nix's words): its
    /// unfinished derivations are requeued, never failed, and the builder is marked down.
    BuilderLost { reason: String },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Transient { reason } => write!(f, "transient: {reason}"),
            BatchError::Failed(message) => f.write_str(message),
            BatchError::BuilderLost { reason } => write!(f, "builder lost: {reason}"),
        }
    }
}

/// A batch that could not start, classified.
pub fn start_error(error: &crate::nix::build::BuildError) -> BatchError {
    match crate::nix::process::host::transient_reason(error) {
        Some(why) => BatchError::Transient { reason: format!("{why} while starting the Nix build: {error}") },
        None => BatchError::Failed(error.to_string()),
    }
}

/// Runs one batch to its end: starts it, sends every event then the end to `out`, and kills it when `kill`
/// receives. Dropping the future kills the Nix child and its builders at once (the runner's guarantee).
pub async fn drive(spec: BatchSpec, kill: Receiver<()>, out: impl Fn(BatchMsg) -> Option<()>) {
    let (tx, rx): (Sender<BuildEvent>, Receiver<BuildEvent>) = async_channel::unbounded();
    let attempt_of = spec.batch.attempt_of.clone();
    let running = match crate::nix::build::start_batch(spec.batch, tx).await {
        Ok(r) => r,
        Err(e) => {
            let _ = out(BatchMsg::Done(Err(start_error(&e))));
            return;
        }
    };
    let killer = running.killer();
    let watch_kill = async move {
        if kill.recv().await.is_ok() {
            killer.kill();
        }
        future::pending().await
    };
    let run = future::or(running.wait(), watch_kill);
    let forward = async {
        while let Ok(event) = rx.recv().await {
            if let BuildEvent::Log { drv, line } = &event {
                // Live clients only (the loop never sees log lines).
                crate::live::log_line(drv, attempt_of.get(drv).copied().unwrap_or(1), line);
                continue;
            }
            if out(BatchMsg::Event(event)).is_none() {
                break;
            }
        }
    };
    let (summary, ()) = future::zip(run, forward).await;
    let result = match (&summary.error, summary.stopped.is_some()) {
        _ if summary.builder_lost.is_some() => {
            Err(BatchError::BuilderLost { reason: summary.builder_lost.clone().unwrap_or_default() })
        }
        (Some(e), _) if summary.reports.iter().all(|r| !r.outcome.is_success()) => {
            Err(BatchError::Failed(e.clone()))
        }
        _ => Ok(()),
    };
    let _ = out(BatchMsg::Done(result));
}
