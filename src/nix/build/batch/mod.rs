//! The batch driver: [`start_batch`] checks a batch and starts its first `nix-build` child, and
//! [`RunningBatch`] drives it to the end, one [`Driver`] holding the state of every derivation of the
//! batch across children (a "no builder" abort restarts Nix for the rest). The driver is split by concern:
//! `child.rs` spawns, reads and stops the child; `events.rs` turns Nix's lines into per-derivation state;
//! `settle.rs` finishes derivations, their logs and the summary. It never decides what to build.

mod child;
mod events;
mod settle;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_lite::io::BufReader;
use smol::process::ChildStderr;
use smol::Unblock;

use super::{log_path, BatchSummary, BuildBatch, BuildError, BuildEvent, DrvOutcome, StopReason};
use crate::nix::drv::{parse_graph_info, DrvGraphInfo};
use crate::nix::process::builders::{builder_sessions, kill_sessions, read_oom_kills};
use crate::nix::process::{SupervisedChild, TailBuffer};

/// The batch log (lines that are not Nix JSON, unattributed errors and warnings) keeps its last bytes.
const BATCH_LOG_LIMIT: usize = 64 << 10;

/// A handle that stops a running batch from anywhere (cheap to clone).
#[derive(Debug, Clone)]
pub struct BatchKiller {
    tx: async_channel::Sender<()>,
}

impl BatchKiller {
    /// Asks the runner to stop the batch: SIGTERM to Nix, SIGKILL after [`KILL_GRACE`](super::KILL_GRACE).
    /// Finished builds keep their outcomes; running ones become [`DrvOutcome::Killed`], the rest
    /// [`DrvOutcome::NotBuilt`].
    pub fn kill(&self) {
        let _ = self.tx.try_send(());
    }
}

/// A batch whose `nix-build` child is running. Drive it with [`RunningBatch::wait`]; dropping it (or the
/// `wait` future) kills the child's group and Nix's builders at once.
pub struct RunningBatch {
    driver: Driver,
    run: Option<ChildRun>,
    kill_tx: async_channel::Sender<()>,
    kill_rx: async_channel::Receiver<()>,
}

impl std::fmt::Debug for RunningBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningBatch")
            .field("drvs", &self.driver.states.len())
            .field("pid", &self.pid())
            .finish()
    }
}

impl RunningBatch {
    /// The current `nix-build` child's pid (also its process group id), if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.run.as_ref().map(|r| r.child.pid())
    }

    /// A handle to stop the batch while [`RunningBatch::wait`] runs.
    pub fn killer(&self) -> BatchKiller {
        BatchKiller { tx: self.kill_tx.clone() }
    }

    /// Stops the batch (see [`BatchKiller::kill`]); takes effect in [`RunningBatch::wait`].
    pub fn kill(&self) {
        self.killer().kill();
    }

    /// Runs the batch to its end (restarting Nix after a "no builder" abort) and reports every derivation.
    pub async fn wait(mut self) -> BatchSummary {
        let kill_rx = self.kill_rx.clone();
        while let Some(mut run) = self.run.take() {
            let rerun = self.driver.drive(&mut run, &kill_rx).await;
            self.driver.remove_scratch(run.scratch.clone()).await;
            drop(run);
            if rerun.is_empty() || self.driver.stopped.is_some() {
                break;
            }
            match self.driver.spawn(&rerun).await {
                Ok(next) => self.run = Some(next),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot restart the batch");
                    self.driver.error = Some(e.to_string());
                }
            }
        }
        self.driver.finish_rest().await;
        self.driver.summary()
    }
}

/// Starts a batch: checks the paths, reads every `.drv` (outputs and inputs), writes the aggregate
/// expression to a scratch directory in `logs_dir` and spawns `nix-build`. A derivation whose `.drv` cannot
/// be read is reported at once as [`DrvOutcome::Failure`] (its dependents in the batch as
/// [`DrvOutcome::DependencyFailed`]) and not given to Nix.
pub async fn start_batch(
    batch: BuildBatch,
    events: async_channel::Sender<BuildEvent>,
) -> Result<RunningBatch, BuildError> {
    let mut seen = HashSet::new();
    let mut logs = Vec::with_capacity(batch.drvs.len());
    for d in &batch.drvs {
        logs.push(log_path(&batch.logs_dir, d, batch.attempt(d))?);
        if !seen.insert(d.as_str()) {
            return Err(BuildError::Duplicate(d.clone()));
        }
    }
    for (name, value) in &batch.options {
        if name.is_empty() || name.starts_with('-') || name.contains(char::is_whitespace) {
            return Err(BuildError::InvalidOption { name: name.clone(), reason: "not an option name" });
        }
        if name.contains('\0') || value.contains('\0') {
            return Err(BuildError::InvalidOption { name: name.clone(), reason: "contains NUL" });
        }
    }
    if let Some(b) = &batch.builders {
        if b.contains('\0') {
            return Err(BuildError::InvalidOption { name: "builders".into(), reason: "contains NUL" });
        }
    }
    let logs_dir = batch.logs_dir.clone();
    smol::unblock(move || {
        std::fs::create_dir_all(&logs_dir).map_err(|source| BuildError::Io { path: logs_dir, source })
    })
    .await?;

    let paths = batch.drvs.clone();
    // A .drv the host could not read (out of file descriptors, …) stops the whole batch with an error the
    // scheduler retries; any other read or parse error is that derivation's own failure.
    let infos: Vec<Result<DrvGraphInfo, String>> = smol::unblock(move || {
        paths
            .iter()
            .map(|p| match std::fs::read(p) {
                Ok(bytes) => {
                    Ok(parse_graph_info(&bytes).map_err(|e| format!("malformed derivation {p}: {e}")))
                }
                Err(e) if crate::nix::process::host::io_reason(&e).is_some() => {
                    Err(BuildError::ReadDrv { path: p.clone(), source: e })
                }
                Err(e) => Ok(Err(format!("cannot read derivation {p}: {e}"))),
            })
            .collect::<Result<Vec<_>, BuildError>>()
    })
    .await?;

    let mut driver = Driver::new(batch, logs, infos, events);
    let (unreadable, excluded) = driver.unreadable();
    let to_build: Vec<usize> = (0..driver.states.len()).filter(|i| !excluded.contains(i)).collect();
    let run = if to_build.is_empty() { None } else { Some(driver.spawn(&to_build).await?) };
    for (idx, message) in unreadable {
        driver.finish(idx, DrvOutcome::Failure { message, exit_code: None }, None).await;
    }
    for idx in excluded.iter().copied() {
        if driver.states[idx].finished.is_none() {
            let dependency = driver.failed_input(idx);
            driver.finish(idx, DrvOutcome::DependencyFailed { dependency }, None).await;
        }
    }
    let (kill_tx, kill_rx) = async_channel::unbounded();
    Ok(RunningBatch { driver, run, kill_tx, kill_rx })
}

/// One derivation of the batch.
struct DrvState {
    path: String,
    attempt: u32,
    log: PathBuf,
    /// `None` when the .drv could not be read (the error is in `read_error`).
    info: Option<DrvGraphInfo>,
    read_error: Option<String>,
    inputs: Vec<usize>,
    dependents: Vec<usize>,
    machine: Option<String>,
    /// When the current build activity started.
    started: Option<Instant>,
    ever_started: bool,
    /// The open activity id in the current run.
    activity: Option<u64>,
    log_file: Option<Unblock<File>>,
    /// Bytes written to `log_file` in the current attempt.
    log_bytes: u64,
    /// The log reached `max_log_bytes`: the marker is written, nothing more is.
    log_cut: bool,
    /// An outcome from Nix, applied when the activity stops (so the log is complete).
    verdict: Option<DrvOutcome>,
    /// The message to append to the log.
    message: Option<String>,
    /// The outcome if the output turns out invalid after the runner stopped the batch.
    kill_default: Option<DrvOutcome>,
    /// Its activity ended without a confirmation or an error in the current run.
    interrupted: bool,
    finished: Option<(DrvOutcome, Duration, bool)>,
}

impl DrvState {
    /// A batch member that has not started.
    fn new(
        path: String,
        attempt: u32,
        log: PathBuf,
        info: Option<DrvGraphInfo>,
        read_error: Option<String>,
    ) -> DrvState {
        DrvState {
            path,
            attempt,
            log,
            info,
            read_error,
            inputs: Vec::new(),
            dependents: Vec::new(),
            machine: None,
            started: None,
            ever_started: false,
            activity: None,
            log_file: None,
            log_bytes: 0,
            log_cut: false,
            verdict: None,
            message: None,
            kill_default: None,
            interrupted: false,
            finished: None,
        }
    }
}

/// One `nix-build` child.
struct ChildRun {
    child: SupervisedChild,
    scratch: PathBuf,
    raw_logs: PathBuf,
    stderr: Option<BufReader<ChildStderr>>,
    activities: HashMap<u64, Option<usize>>,
    builds_act: Option<u64>,
    builds_done: u64,
    accounted: u64,
    last_output: Instant,
    stop_at: Option<Instant>,
    hard_killed: bool,
    sessions: HashSet<i32>,
    no_builder: bool,
    /// Batch derivations given to this child.
    members: Vec<usize>,
    reaped: bool,
}

impl Drop for ChildRun {
    fn drop(&mut self) {
        if !self.reaped {
            // Cancelled: Nix cannot be asked nicely any more. Its builders are in sessions of their own.
            self.sessions.extend(builder_sessions(self.child.pid() as i32));
            self.child.kill_group();
            kill_sessions(&self.sessions);
        }
    }
}

struct Driver {
    batch: BuildBatch,
    states: Vec<DrvState>,
    index: HashMap<String, usize>,
    events: async_channel::Sender<BuildEvent>,
    started: Instant,
    deadline: Option<Instant>,
    oom_at_start: Option<u64>,
    nix_runs: u32,
    stopped: Option<StopReason>,
    /// The last signal the runner sent to the group.
    signal_sent: Option<i32>,
    /// The child's own death by a signal nobody here sent.
    child_signal: Option<i32>,
    error: Option<String>,
    batch_log: TailBuffer,
    extra_builds: Vec<String>,
    external_failures: HashSet<String>,
    /// Dependencies outside the batch that no machine of the slot can build.
    external_no_builder: HashSet<String>,
    log_errors: u32,
    line: Vec<u8>,
    /// `DependencyFailed` derivations waiting for an input's activity to stop.
    deferred: Vec<usize>,
    /// Connection errors of a remote batch not yet matched to a build's failure (each lost build prints
    /// one right before its `builder for '…' failed`).
    lost_pending: u32,
    /// The first connection error of a remote batch.
    builder_lost: Option<String>,
}

impl Driver {
    fn new(
        batch: BuildBatch,
        logs: Vec<PathBuf>,
        infos: Vec<Result<DrvGraphInfo, String>>,
        events: async_channel::Sender<BuildEvent>,
    ) -> Driver {
        let index: HashMap<String, usize> =
            batch.drvs.iter().enumerate().map(|(i, d)| (d.clone(), i)).collect();
        let mut states: Vec<DrvState> = batch
            .drvs
            .iter()
            .zip(logs)
            .zip(infos)
            .map(|((path, log), info)| {
                let (info, read_error) = match info {
                    Ok(i) => (Some(i), None),
                    Err(e) => (None, Some(e)),
                };
                DrvState::new(path.clone(), batch.attempt(path), log, info, read_error)
            })
            .collect();
        for i in 0..states.len() {
            let inputs: Vec<usize> = states[i]
                .info
                .as_ref()
                .map(|info| info.input_drvs.iter().filter_map(|(p, _)| index.get(p).copied()).collect())
                .unwrap_or_default();
            for &j in &inputs {
                states[j].dependents.push(i);
            }
            states[i].inputs = inputs;
        }
        let deadline = batch_deadline(&batch, &states);
        Driver {
            batch,
            states,
            index,
            events,
            started: Instant::now(),
            deadline,
            oom_at_start: read_oom_kills(),
            nix_runs: 0,
            stopped: None,
            signal_sent: None,
            child_signal: None,
            error: None,
            batch_log: TailBuffer::new(BATCH_LOG_LIMIT),
            extra_builds: Vec::new(),
            external_failures: HashSet::new(),
            external_no_builder: HashSet::new(),
            log_errors: 0,
            line: Vec::new(),
            deferred: Vec::new(),
            lost_pending: 0,
            builder_lost: None,
        }
    }

    /// Unreadable derivations with their errors, and everything that cannot be built because of them
    /// (themselves and their dependents in the batch).
    fn unreadable(&self) -> (Vec<(usize, String)>, HashSet<usize>) {
        let bad: Vec<(usize, String)> = self
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.read_error.clone().map(|e| (i, e)))
            .collect();
        let excluded = self.dependents_closure(bad.iter().map(|b| b.0));
        (bad, excluded)
    }

    /// `roots` and everything in the batch that depends on them.
    fn dependents_closure(&self, roots: impl Iterator<Item = usize>) -> HashSet<usize> {
        let mut out: HashSet<usize> = HashSet::new();
        let mut stack: Vec<usize> = roots.collect();
        while let Some(i) = stack.pop() {
            if out.insert(i) {
                stack.extend(self.states[i].dependents.iter().copied());
            }
        }
        out
    }
}

/// The batch deadline (see [`BuildBatch::watchdog_margin`]), or `None` without a duration limit.
fn batch_deadline(batch: &BuildBatch, states: &[DrvState]) -> Option<Instant> {
    if batch.max_duration.is_zero() {
        return None;
    }
    let depth = u32::try_from(batch_depth(states)).unwrap_or(u32::MAX);
    let n = u32::try_from(states.len()).unwrap_or(u32::MAX);
    let waves = n.div_ceil(batch.max_jobs.max(1));
    let bound = batch.max_duration.checked_mul(depth.saturating_add(waves))?;
    Instant::now().checked_add(bound.checked_add(batch.watchdog_margin * 2)?)
}

/// The number of derivations on the longest dependency chain inside the batch (0 for an empty batch).
fn batch_depth(states: &[DrvState]) -> usize {
    let mut depth = vec![0usize; states.len()];
    // Iterative post-order; a cycle (impossible in a store) is cut where it closes.
    let mut state = vec![0u8; states.len()]; // 0 new, 1 open, 2 done
    for root in 0..states.len() {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = states[node].inputs.get(*next) {
                *next += 1;
                if state[child] == 0 {
                    state[child] = 1;
                    stack.push((child, 0));
                }
            } else {
                depth[node] = 1 + states[node].inputs.iter().map(|&c| depth[c]).max().unwrap_or(0);
                state[node] = 2;
                stack.pop();
            }
        }
    }
    depth.into_iter().max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(inputs: Vec<usize>) -> DrvState {
        DrvState { inputs, ..DrvState::new(String::new(), 1, PathBuf::new(), None, None) }
    }

    #[test]
    fn depth_of_chains_and_diamonds() {
        assert_eq!(batch_depth(&[]), 0);
        assert_eq!(batch_depth(&[state(vec![]), state(vec![])]), 1);
        // 3 -> 1 -> 0, 3 -> 2 -> 0
        let s = vec![state(vec![]), state(vec![0]), state(vec![0]), state(vec![1, 2])];
        assert_eq!(batch_depth(&s), 3);
        // A cycle does not hang.
        assert!(batch_depth(&[state(vec![1]), state(vec![0])]) <= 2);
    }

    #[test]
    fn deadline_follows_grahams_bound() {
        let mut b = BuildBatch::new(vec![], "/tmp");
        b.max_duration = Duration::from_secs(10);
        b.max_jobs = 2;
        b.watchdog_margin = Duration::from_secs(1);
        let s = vec![state(vec![]), state(vec![0]), state(vec![1]), state(vec![])];
        let before = Instant::now();
        let d = batch_deadline(&b, &s).expect("deadline");
        // depth 3 + ceil(4/2) = 5 durations + 2 margins = 52 s.
        let bound = d.duration_since(before);
        assert!(bound >= Duration::from_secs(52) && bound < Duration::from_secs(53), "{bound:?}");
        b.max_duration = Duration::ZERO;
        assert!(batch_deadline(&b, &s).is_none());
    }
}
