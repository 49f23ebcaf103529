//! The build scheduler: one loop that decides what to build, where and when, and records every state
//! transition in redb.
//!
//! Everything goes through the loop in [`Engine::run`]: one task on the server's executor owning the
//! in-memory scheduling state, fed by one `async_channel` inbox (requests from [`SchedulerHandle`], events of
//! running batches, retry timers, shutdown). Each turn of the loop handles every message waiting, runs the
//! follow-ups they caused (failure propagation and requeues walk the persisted graph), commits all state
//! changes in one write transaction, answers the callers whose work is now persisted, and dispatches batches.
//!
//! * **Requests.** `request(owner, roots)` walks the graph down from the roots ([`prepare`]), asks Nix in bulk
//!   which outputs of the never-seen derivations are already valid (one `nix-store --check-validity` per chunk)
//!   and marks those `Cached`; the walk does not descend below a cached or already-built derivation, so the
//!   closure of something valid is never built. The rest become `Queued`, or `Buildable` when every input is
//!   `Completed(Success)` or `Cached`.
//! * **Builders and batches.** A builder ([`builders`]) with a free child slot gets a batch: up to
//!   `seed_cap` ready derivations it should take, in priority order (longest remaining chain of dependents
//!   first, then most direct dependents), plus every queued derivation whose unbuilt inputs are all in the
//!   batch (the sub-DAG above them), up to `batch_cap`. One Nix child builds the batch with `-j max_jobs` and
//!   orders it itself, so a large jobset costs about what one `nix-build` of it costs (see
//!   `docs/engine-bench.md`); priority is honoured between batches, `seed_cap` ready derivations at a time.
//!   A builder runs at most `children_per_builder` (default 2) children; another one starts only while the
//!   running ones leave slots idle (fewer members `Buildable` or `Building` than `max_jobs`), with `-j` =
//!   the idle slots, so a batch's tail overlaps the next batch and the builder runs about `max_jobs` builds.
//! * **Outcomes.** A first failure is retried once after `retry_backoff`; a second one is final and every
//!   dependent (found through the persisted graph) becomes `TransitiveFailure`, naming the failed dependency.
//!   Time-outs, OOM kills and process deaths interrupt the derivation and block its dependents. A rebuild
//!   that succeeds requeues the dependents it had failed or blocked.
//! * **Cancellation.** Pending work no other live owner needs becomes `Interrupted(Cancelled)`. A running batch
//!   is killed only when none of its unfinished derivations is needed by a live owner any more; otherwise it
//!   keeps running (shared derivations keep building) and its derivations nobody needs are cancelled when the
//!   batch ends if they have not finished by then.
//! * **Recovery.** At start the scheduler resumes every live owner from its persisted roots: derivations left
//!   `Building` by a crash are marked `Completed(Success)` if their outputs are now valid, else requeued; so the
//!   final states equal those of an uninterrupted run.

pub mod builders;
mod prepare;
mod runner;
pub mod state;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future;
use smol::LocalExecutor;

use crate::config::ServerConfig;
use crate::graph::{DrvId, Graph, GraphError};
use crate::store::{Store, StoreError};

use builders::{BuilderPool, BuilderSpec, Requirements};
use prepare::PrepNode;
use runner::{BuildBatch, BuildEvent, DrvOutcome};
use state::{now_ms, Reader, Writes};
pub use state::{
    Attempt, Completion, DrvRecord, DrvState, HistoryEntry, InterruptKind, OwnerRecord, OwnerStatus,
};

/// Who asked for builds: a jobset id, or [`REBUILD_OWNER_BASE`] + a derivation id for a rebuild.
pub type OwnerId = u64;

/// Owner ids from here up are rebuild requests (`REBUILD_OWNER_BASE + drv id`); jobset ids stay below.
pub const REBUILD_OWNER_BASE: u64 = 1 << 63;

/// Build events (state transitions) are committed at most this often, unless a caller waits for them.
/// A crash loses at most this much of history; recovery re-derives the states from Nix (output validity).
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Pending history rows that force a commit.
const COMMIT_BATCH: usize = 20_000;

/// Batches in a row that may end without building a derivation whose inputs are built.
const UNBUILT_LIMIT: u32 = 3;

/// The longest failure message kept in a state.
const MESSAGE_LIMIT: usize = 4096;

/// How the scheduler works.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Systems the local machine builds (`system` and `extra-platforms`).
    pub local_systems: Vec<String>,
    /// The local machine's `system-features`.
    pub local_features: Vec<String>,
    /// Concurrent local builds (default: the number of cores).
    pub local_max_jobs: u32,
    /// Concurrent fixed-output builds (default 10).
    pub fod_max_jobs: u32,
    /// Remote builders, from `[[remote_builders]]` or a machines file.
    pub remote_builders: Vec<BuilderSpec>,
    /// A build printing nothing for this long is killed.
    pub max_silent: Duration,
    /// Wall-clock cap of one build.
    pub max_duration: Duration,
    /// Build logs go to `logs_dir/<drv hash>/<attempt>.log`.
    pub logs_dir: PathBuf,
    /// Delay before the one automatic retry of a failed build (default 2 s).
    pub retry_backoff: Duration,
    /// Most derivations in one batch (default 5000).
    pub batch_cap: usize,
    /// Most ready derivations that open a batch, taken in priority order (default 64); the queued
    /// derivations above them that join the batch are bounded by `batch_cap` only. Nix orders the builds of
    /// one batch itself (not by our priority), so this is the granularity at which priority is honoured.
    pub seed_cap: usize,
    /// Most concurrent batch children per builder (default 2; see the module documentation).
    pub children_per_builder: usize,
}

impl SchedulerConfig {
    /// Defaults for a local machine building `systems` with `features`.
    pub fn local(systems: Vec<String>, features: Vec<String>, logs_dir: PathBuf) -> SchedulerConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        SchedulerConfig {
            local_systems: systems,
            local_features: features,
            local_max_jobs: u32::try_from(cores).unwrap_or(1),
            fod_max_jobs: 10,
            remote_builders: Vec::new(),
            max_silent: Duration::from_secs(1200),
            max_duration: Duration::from_secs(14400),
            logs_dir,
            retry_backoff: Duration::from_secs(2),
            batch_cap: 5000,
            seed_cap: 64,
            children_per_builder: 2,
        }
    }

    /// The configuration the server uses: time limits, logs and remote builders from `cfg`, the local
    /// machine as `local` describes it (see [`builders::detect_local`]).
    pub fn from_server(cfg: &ServerConfig, local: builders::LocalNix) -> SchedulerConfig {
        let mut c = SchedulerConfig::local(local.systems, local.features, cfg.logs_dir());
        c.max_silent = Duration::from_secs(cfg.build_no_output_timeout_seconds);
        c.max_duration = Duration::from_secs(cfg.build_max_duration_seconds);
        c.remote_builders = cfg.remote_builders.iter().map(BuilderSpec::remote).collect();
        c
    }

    fn pool(&self) -> BuilderPool {
        let mut all = vec![
            BuilderSpec::fixed_output(
                self.local_systems.clone(),
                self.local_features.clone(),
                self.fod_max_jobs,
            ),
            BuilderSpec::local(self.local_systems.clone(), self.local_features.clone(), self.local_max_jobs),
        ];
        all.extend(self.remote_builders.iter().cloned());
        BuilderPool::new(all)
    }
}

/// Errors of the scheduler's API.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("derivation {path} is not in the derivation graph (discover it first)")]
    UnknownDerivation { path: String },
    #[error("derivation {path} was never requested: there is nothing to rebuild")]
    NeverRequested { path: String },
    #[error("derivation {path} is {state}, not in a final state: it cannot be rebuilt now")]
    NotTerminal { path: String, state: String },
    #[error("no build owner {owner}")]
    UnknownOwner { owner: OwnerId },
    #[error("owner id {owner} is reserved for rebuild requests")]
    ReservedOwner { owner: OwnerId },
    #[error("recording build state failed: {0}")]
    Persist(String),
    #[error("a blocking task of the scheduler failed: {0}")]
    Task(String),
    #[error("the scheduler is not running")]
    Stopped,
}

/// The final state of one root of an owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootOutcome {
    pub drv: String,
    /// `None` only if the root has no recorded state (it was never reached).
    pub state: Option<DrvState>,
}

/// What [`SchedulerHandle::wait`] answers: the owner's status and the state of each of its roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerOutcome {
    pub owner: OwnerId,
    pub status: OwnerStatus,
    pub roots: Vec<RootOutcome>,
}

/// What [`SchedulerHandle::state`] answers about one derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvStatus {
    pub state: DrvState,
    /// The number of the last attempt started (0: never built).
    pub attempt: u32,
    pub attempts: Vec<Attempt>,
    /// Every transition, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A build running now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBuild {
    pub drv: String,
    pub builder: String,
    pub started_at_ms: u64,
    pub attempt: u32,
}

/// Pending work of one platform (system).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub system: String,
    /// Waiting for dependencies (or for a retry).
    pub queued: usize,
    /// Ready, waiting for a builder or inside a batch that has not started it yet.
    pub buildable: usize,
    pub building: usize,
}

type Reply<T> = Sender<Result<T, SchedulerError>>;

enum Command {
    Request { owner: OwnerId, roots: Vec<String>, reply: Reply<()> },
    Wait { owner: OwnerId, reply: Reply<OwnerOutcome> },
    Cancel { owner: OwnerId, reply: Reply<()> },
    Rebuild { drv: String, reply: Reply<OwnerId> },
    State { drv: String, reply: Reply<Option<DrvStatus>> },
    Active { reply: Sender<Vec<ActiveBuild>> },
    Depths { reply: Sender<Vec<QueueDepth>> },
    Batch { batch: u64, event: BuildEvent },
    BatchDone { batch: u64, result: Result<(), String> },
    RetryDue { drv: DrvId },
    Drain { reply: Sender<()> },
    Shutdown { reply: Sender<()> },
}

/// A cheap, cloneable handle to the scheduler loop.
#[derive(Clone)]
pub struct SchedulerHandle {
    inbox: Sender<Command>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle").finish_non_exhaustive()
    }
}

impl SchedulerHandle {
    async fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, SchedulerError> {
        let (tx, rx) = async_channel::bounded(1);
        self.inbox.send(make(tx)).await.map_err(|_| SchedulerError::Stopped)?;
        rx.recv().await.map_err(|_| SchedulerError::Stopped)
    }

    /// Asks for `roots` (.drv paths already in the graph) and everything they need to be built for `owner`.
    /// Returns once the request is persisted. Asking again adds roots.
    pub async fn request(&self, owner: OwnerId, roots: Vec<String>) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Request { owner, roots, reply }).await?
    }

    /// Resolves when every derivation `owner` needs is in a final state (or the owner is cancelled).
    pub async fn wait(&self, owner: OwnerId) -> Result<OwnerOutcome, SchedulerError> {
        self.ask(|reply| Command::Wait { owner, reply }).await?
    }

    /// Drops the work only `owner` needs; see the module documentation.
    pub async fn cancel(&self, owner: OwnerId) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Cancel { owner, reply }).await?
    }

    /// Moves a derivation in a final state back to `Queued` (attempt numbering continues). Returns the owner
    /// id of the rebuild, to [`SchedulerHandle::wait`] on: it completes when the derivation and the
    /// dependents its success requeues are final.
    pub async fn rebuild(&self, drv: &str) -> Result<OwnerId, SchedulerError> {
        self.ask(|reply| Command::Rebuild { drv: drv.to_string(), reply }).await?
    }

    /// The state, attempts and history of a derivation; `None` if it never had a state.
    pub async fn state(&self, drv: &str) -> Result<Option<DrvStatus>, SchedulerError> {
        self.ask(|reply| Command::State { drv: drv.to_string(), reply }).await?
    }

    /// The builds running now.
    pub async fn active(&self) -> Result<Vec<ActiveBuild>, SchedulerError> {
        self.ask(|reply| Command::Active { reply }).await
    }

    /// Pending work per platform.
    pub async fn depths(&self) -> Result<Vec<QueueDepth>, SchedulerError> {
        self.ask(|reply| Command::Depths { reply }).await
    }

    /// Stops starting batches (for an orderly stop): running batches go on, and [`SchedulerHandle::active`]
    /// shows what still builds. Requests are still accepted and persisted; they build after the next start.
    pub async fn drain(&self) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Drain { reply }).await
    }

    /// Commits pending transitions, kills running batches (waiting, bounded, for the Nix children to exit)
    /// and stops the loop. Derivations left `Building` are resumed at the next start as after a crash.
    pub async fn shutdown(&self) -> Result<(), SchedulerError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }
}

/// Starts the scheduler on `ex`: resumes the live owners recorded in the graph's store (see the module
/// documentation), then runs the loop as a task of `ex`.
pub async fn start(
    ex: &Rc<LocalExecutor<'static>>,
    graph: Graph,
    config: SchedulerConfig,
) -> Result<SchedulerHandle, SchedulerError> {
    let (tx, rx) = async_channel::unbounded();
    runner::clean_scratch(&config.logs_dir).await;
    // The engine holds the executor weakly: tasks of an executor must not keep it alive (dropping the
    // executor then drops the loop and every batch, killing the Nix children, as a crash would).
    let mut engine = Engine::new(Rc::downgrade(ex), graph, config, tx.clone());
    engine.recover().await?;
    ex.spawn(engine.run(rx)).detach();
    Ok(SchedulerHandle { inbox: tx })
}

/// Ready derivations of one system, highest priority first.
type ReadySet = BTreeSet<(Reverse<(u32, u32)>, DrvId)>;

/// A derivation the loop is working on (every non-final derivation some live owner needs).
struct Node {
    path: Rc<str>,
    sys: usize,
    /// Active derivations that have this one as an input.
    dependents: Vec<DrvId>,
    /// Builders that may take it, preferred first.
    route: Rc<[usize]>,
    rec: DrvRecord,
    /// Inputs not yet `Completed(Success)` or `Cached`.
    waiting: u32,
    owners: Vec<OwnerId>,
    /// (longest chain of active dependents, number of direct active dependents).
    prio: (u32, u32),
    batch: Option<u64>,
    ready: bool,
    /// Batches in a row that ended without building it although its inputs were built.
    unbuilt: u32,
}

struct OwnerMem {
    rec: OwnerRecord,
    needs: Vec<DrvId>,
    /// Active derivations listing this owner.
    pending: usize,
    /// Follow-ups still to run before the owner may complete (a rebuild's requeue of dependents).
    holds: usize,
    waiters: Vec<Reply<OwnerOutcome>>,
}

struct BatchMem {
    builder: usize,
    members: Vec<DrvId>,
    paths: HashMap<Rc<str>, DrvId>,
    killed: bool,
    progressed: bool,
    kill: Sender<()>,
    task: Option<smol::Task<()>>,
}

#[derive(Default, Clone, Copy)]
struct Slot {
    children: usize,
    /// Members of this builder's running batches that Nix can build now (`Buildable` or `Building`);
    /// computed at each dispatch.
    runnable: usize,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    queued: i64,
    buildable: i64,
    building: i64,
}

enum Followup {
    /// Mark the dependents of a failed or interrupted derivation.
    Propagate { id: DrvId, path: Rc<str>, blocked: bool },
    /// A rebuilt derivation succeeded: requeue the dependents it failed or blocked.
    Requeue { id: DrvId, path: Rc<str> },
}

enum Deferred {
    Done(Reply<()>),
    Rebuilt(Reply<OwnerId>, OwnerId),
    Outcome { owner: OwnerId, waiters: Vec<Reply<OwnerOutcome>> },
}

struct Engine {
    ex: Weak<LocalExecutor<'static>>,
    graph: Graph,
    store: Store,
    cfg: SchedulerConfig,
    pool: BuilderPool,
    inbox: Sender<Command>,
    nodes: HashMap<DrvId, Node>,
    systems: Vec<String>,
    sys_index: HashMap<String, usize>,
    ready: Vec<ReadySet>,
    counts: Vec<Counts>,
    building: BTreeMap<DrvId, (usize, u64, Instant)>,
    owners: HashMap<OwnerId, OwnerMem>,
    batches: HashMap<u64, BatchMem>,
    next_batch: u64,
    slots: Vec<Slot>,
    writes: Writes,
    deferred: Vec<Deferred>,
    followups: Vec<Followup>,
    prio_dirty: bool,
    /// No new batches (see [`SchedulerHandle::drain`]).
    draining: bool,
}

fn class(state: &DrvState) -> Option<usize> {
    match state {
        DrvState::Queued | DrvState::FailedRetry { .. } => Some(0),
        DrvState::Buildable => Some(1),
        DrvState::Building => Some(2),
        _ => None,
    }
}

/// Records `state` as the new state of `rec` (history row and state row).
fn record(writes: &mut Writes, id: DrvId, rec: &mut DrvRecord, state: DrvState, note: &str) {
    if state.is_terminal() || matches!(state, DrvState::FailedRetry { .. }) {
        crate::metrics::global().build_outcome.with_label_values(&[state.name()]).inc();
    }
    rec.state = state.clone();
    writes.history.push((
        id,
        rec.next_seq,
        state::HistoryEntry { at_ms: now_ms(), state, attempt: rec.attempt, note: note.to_string() },
    ));
    rec.next_seq += 1;
    writes.states.insert(id, rec.clone());
}

/// The state a dependent takes when `dep` (in `state`) is one of its inputs and not done.
fn inherited_failure(dep_path: &str, state: &DrvState) -> Option<DrvState> {
    match state {
        DrvState::Completed(Completion::Failure { .. }) => {
            Some(DrvState::TransitiveFailure { dependency: dep_path.to_string() })
        }
        DrvState::TransitiveFailure { dependency } => {
            Some(DrvState::TransitiveFailure { dependency: dependency.clone() })
        }
        DrvState::Interrupted { .. } => Some(DrvState::Blocked { dependency: dep_path.to_string() }),
        DrvState::Blocked { dependency } => Some(DrvState::Blocked { dependency: dependency.clone() }),
        _ => None,
    }
}

impl Engine {
    fn new(
        ex: Weak<LocalExecutor<'static>>,
        graph: Graph,
        cfg: SchedulerConfig,
        inbox: Sender<Command>,
    ) -> Engine {
        let pool = cfg.pool();
        let slots = vec![Slot::default(); pool.builders().len()];
        Engine {
            ex,
            store: graph.store().clone(),
            graph,
            pool,
            cfg,
            inbox,
            nodes: HashMap::new(),
            systems: Vec::new(),
            sys_index: HashMap::new(),
            ready: Vec::new(),
            counts: Vec::new(),
            building: BTreeMap::new(),
            owners: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 1,
            slots,
            writes: Writes::default(),
            deferred: Vec::new(),
            followups: Vec::new(),
            prio_dirty: false,
            draining: false,
        }
    }

    /// Spawns a task on the executor (`None` while the executor is being dropped).
    fn spawn(&self, f: impl std::future::Future<Output = ()> + 'static) -> Option<smol::Task<()>> {
        self.ex.upgrade().map(|ex| ex.spawn(f))
    }

    /// The loop.
    async fn run(mut self, inbox: Receiver<Command>) {
        let mut last_commit = Instant::now();
        loop {
            // Wait for a command; while writes are pending, at most until they are due.
            let first = if self.writes.is_empty() && self.deferred.is_empty() {
                inbox.recv().await.ok()
            } else {
                let due = last_commit + COMMIT_INTERVAL;
                future::or(async { inbox.recv().await.ok() }, async {
                    smol::Timer::at(due).await;
                    None
                })
                .await
            };
            let mut stop = None;
            if let Some(cmd) = first {
                stop = self.handle(cmd).await;
                let mut handled = 1;
                while stop.is_none() && handled < 4096 {
                    match inbox.try_recv() {
                        Ok(cmd) => stop = self.handle(cmd).await,
                        Err(_) => break,
                    }
                    handled += 1;
                }
            }
            if let Some(reply) = stop {
                self.stop().await;
                let _ = reply.try_send(());
                return;
            }
            self.run_followups().await;
            // Callers waiting for persistence get it now; build events are committed in groups.
            if !self.deferred.is_empty()
                || last_commit.elapsed() >= COMMIT_INTERVAL
                || self.writes.history.len() >= COMMIT_BATCH
            {
                self.commit().await;
                last_commit = Instant::now();
            }
            self.dispatch();
            self.publish();
        }
    }

    /// Handles one command; `Some` when the loop must stop.
    async fn handle(&mut self, cmd: Command) -> Option<Sender<()>> {
        match cmd {
            Command::Request { owner, roots, reply } => {
                if owner >= REBUILD_OWNER_BASE {
                    let _ = reply.try_send(Err(SchedulerError::ReservedOwner { owner }));
                } else {
                    match self.request(owner, roots).await {
                        Ok(()) => self.deferred.push(Deferred::Done(reply)),
                        Err(e) => {
                            let _ = reply.try_send(Err(e));
                        }
                    }
                }
            }
            Command::Wait { owner, reply } => match self.owners.get_mut(&owner) {
                Some(o) => o.waiters.push(reply),
                None => self.deferred.push(Deferred::Outcome { owner, waiters: vec![reply] }),
            },
            Command::Cancel { owner, reply } => match self.cancel(owner).await {
                Ok(()) => self.deferred.push(Deferred::Done(reply)),
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            Command::Rebuild { drv, reply } => match self.rebuild(&drv).await {
                Ok(owner) => self.deferred.push(Deferred::Rebuilt(reply, owner)),
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            Command::State { drv, reply } => {
                let r = self.status(&drv).await;
                let _ = reply.try_send(r);
            }
            Command::Active { reply } => {
                let _ = reply.try_send(self.active());
            }
            Command::Depths { reply } => {
                let _ = reply.try_send(self.depths());
            }
            Command::Batch { batch, event } => self.on_event(batch, event),
            Command::BatchDone { batch, result } => self.on_batch_done(batch, result),
            Command::RetryDue { drv } => self.on_retry(drv),
            Command::Drain { reply } => {
                self.draining = true;
                let _ = reply.try_send(());
            }
            Command::Shutdown { reply } => return Some(reply),
        }
        None
    }

    // ------------------------------------------------------------------------------------------ persistence

    /// Commits the accumulated writes. On failure they are kept for the next commit.
    async fn flush(&mut self) -> Result<(), SchedulerError> {
        if self.writes.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut self.writes);
        let store = self.store.clone();
        let (writes, result) = smol::unblock(move || {
            let r = writes.commit(&store);
            (writes, r)
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "recording build states failed; will retry");
                // Newer writes (made while committing: none, the loop awaited) take precedence.
                let newer = std::mem::replace(&mut self.writes, writes);
                self.writes.states.extend(newer.states);
                self.writes.history.extend(newer.history);
                self.writes.attempts.extend(newer.attempts);
                self.writes.owners.extend(newer.owners);
                Err(SchedulerError::Persist(e.to_string()))
            }
        }
    }

    /// Commits, then answers the callers whose work is now persisted.
    async fn commit(&mut self) {
        let result = self.flush().await;
        let deferred = std::mem::take(&mut self.deferred);
        for d in deferred {
            match d {
                Deferred::Done(reply) => {
                    let _ = reply.try_send(
                        result.as_ref().map(|_| ()).map_err(|e| SchedulerError::Persist(e.to_string())),
                    );
                }
                Deferred::Rebuilt(reply, owner) => {
                    let _ = reply.try_send(
                        result.as_ref().map(|_| owner).map_err(|e| SchedulerError::Persist(e.to_string())),
                    );
                }
                Deferred::Outcome { owner, waiters } => {
                    let outcome = self.outcome(owner).await;
                    for w in waiters {
                        let _ = w.try_send(match &outcome {
                            Ok(o) => Ok(o.clone()),
                            Err(e) => Err(SchedulerError::Persist(e.to_string())),
                        });
                    }
                }
            }
        }
    }

    /// The outcome of `owner` from the database (call after a flush).
    async fn outcome(&self, owner: OwnerId) -> Result<OwnerOutcome, SchedulerError> {
        let graph = self.graph.clone();
        let store = self.store.clone();
        smol::unblock(move || {
            let reader = Reader::new(&store)?;
            let rec = reader.owner(owner)?.ok_or(SchedulerError::UnknownOwner { owner })?;
            let mut roots = Vec::with_capacity(rec.roots.len());
            for drv in rec.roots {
                let state = match graph.id_of(&drv)? {
                    Some(id) => reader.state(id)?.map(|r| r.state),
                    None => None,
                };
                roots.push(RootOutcome { drv, state });
            }
            Ok(OwnerOutcome { owner, status: rec.status, roots })
        })
        .await
    }

    // ------------------------------------------------------------------------------------------- node states

    fn sys(&mut self, system: &str) -> usize {
        if let Some(&i) = self.sys_index.get(system) {
            return i;
        }
        let i = self.systems.len();
        self.systems.push(system.to_string());
        self.sys_index.insert(system.to_string(), i);
        self.ready.push(BTreeSet::new());
        self.counts.push(Counts::default());
        i
    }

    fn count(&mut self, sys: usize, class: Option<usize>, delta: i64) {
        if let (Some(c), Some(counts)) = (class, self.counts.get_mut(sys)) {
            match c {
                0 => counts.queued += delta,
                1 => counts.buildable += delta,
                _ => counts.building += delta,
            }
        }
    }

    /// A non-final transition of an active node.
    fn set_state(&mut self, id: DrvId, state: DrvState, note: &str) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        let (old, new, sys) = (class(&n.rec.state), class(&state), n.sys);
        record(&mut self.writes, id, &mut n.rec, state, note);
        self.count(sys, old, -1);
        self.count(sys, new, 1);
    }

    fn make_ready(&mut self, id: DrvId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.ready || n.batch.is_some() {
            return;
        }
        n.ready = true;
        if let Some(set) = self.ready.get_mut(n.sys) {
            set.insert((Reverse(n.prio), id));
        }
    }

    fn unready(&mut self, id: DrvId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.ready {
            n.ready = false;
            if let Some(set) = self.ready.get_mut(n.sys) {
                set.remove(&(Reverse(n.prio), id));
            }
        }
    }

    /// Puts an active node that is not in a batch back in line: cancelled if nobody needs it, else
    /// `Buildable` and ready when its inputs are done, else `Queued`.
    fn requeue(&mut self, id: DrvId, note: &str) {
        let Some(n) = self.nodes.get(&id) else { return };
        if n.batch.is_some() {
            return;
        }
        if n.owners.is_empty() {
            self.cancel_node(id, "no live owner needs it any more");
            return;
        }
        let target = if n.waiting == 0 { DrvState::Buildable } else { DrvState::Queued };
        if n.rec.state != target {
            self.set_state(id, target.clone(), note);
        }
        if target == DrvState::Buildable {
            self.make_ready(id);
        }
    }

    fn cancel_node(&mut self, id: DrvId, reason: &str) {
        self.finish(
            id,
            DrvState::Interrupted { kind: InterruptKind::Cancelled, reason: reason.to_string() },
            "",
        );
    }

    /// A final transition of an active node: records it, releases dependents (on success), owners, and
    /// queues the follow-ups (propagation on failure, requeue of dependents after a rebuild's success).
    fn finish(&mut self, id: DrvId, state: DrvState, note: &str) {
        self.unready(id);
        let Some(mut n) = self.nodes.remove(&id) else { return };
        self.graph.unpin(id);
        self.building.remove(&id);
        self.count(n.sys, class(&n.rec.state), -1);
        let requeue = n.rec.requeue_dependents && state.is_done();
        if state.is_done() {
            n.rec.requeue_dependents = false;
        }
        let blocked =
            matches!(state, DrvState::Interrupted { ref kind, .. } if *kind != InterruptKind::Cancelled);
        let failed = matches!(state, DrvState::Completed(Completion::Failure { .. }));
        let done = state.is_done();
        record(&mut self.writes, id, &mut n.rec, state, note);
        if done {
            for d in &n.dependents {
                let Some(dn) = self.nodes.get_mut(d) else { continue };
                dn.waiting = dn.waiting.saturating_sub(1);
                if dn.waiting == 0 && dn.rec.state == DrvState::Queued {
                    if dn.batch.is_some() {
                        self.set_state(*d, DrvState::Buildable, "");
                    } else {
                        self.requeue(*d, "");
                    }
                }
            }
        }
        if failed || blocked {
            self.followups.push(Followup::Propagate { id, path: n.path.clone(), blocked });
        }
        if requeue {
            let owner = REBUILD_OWNER_BASE + u64::from(id.0);
            if let Some(o) = self.owners.get_mut(&owner) {
                o.holds += 1;
            }
            self.followups.push(Followup::Requeue { id, path: n.path.clone() });
        }
        for o in n.owners {
            if let Some(om) = self.owners.get_mut(&o) {
                om.pending = om.pending.saturating_sub(1);
            }
            self.check_owner(o);
        }
    }

    fn add_owner(&mut self, id: DrvId, owner: OwnerId) {
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.owners.contains(&owner) {
            return;
        }
        n.owners.push(owner);
        if let Some(o) = self.owners.get_mut(&owner) {
            o.pending += 1;
            o.needs.push(id);
        }
    }

    /// Completes `owner` if everything it needs is final.
    fn check_owner(&mut self, owner: OwnerId) {
        let Some(o) = self.owners.get(&owner) else { return };
        if o.pending > 0 || o.holds > 0 || o.rec.status != OwnerStatus::Live {
            return;
        }
        let Some(mut o) = self.owners.remove(&owner) else { return };
        o.rec.status = OwnerStatus::Completed;
        o.rec.finished_at_ms = Some(now_ms());
        self.writes.owners.insert(owner, o.rec);
        tracing::debug!(owner, "build owner completed");
        self.deferred.push(Deferred::Outcome { owner, waiters: o.waiters });
    }

    // ---------------------------------------------------------------------------------------------- requests

    async fn request(&mut self, owner: OwnerId, roots: Vec<String>) -> Result<(), SchedulerError> {
        let graph = self.graph.clone();
        let paths = roots.clone();
        let ids = smol::unblock(move || prepare::resolve(&graph, &paths)).await?;
        self.flush().await?;
        self.ensure_owner(owner, &roots).await?;
        self.activate(owner, &ids, &format!("requested by owner {owner}")).await?;
        self.check_owner(owner);
        Ok(())
    }

    /// Makes `owner` live in memory with `roots` added (reading its record if it has one).
    async fn ensure_owner(&mut self, owner: OwnerId, roots: &[String]) -> Result<(), SchedulerError> {
        if !self.owners.contains_key(&owner) {
            let store = self.store.clone();
            let existing = smol::unblock(move || Reader::new(&store)?.owner(owner)).await?;
            let rec = match existing {
                Some(mut r) => {
                    r.status = OwnerStatus::Live;
                    r.finished_at_ms = None;
                    r
                }
                None => OwnerRecord {
                    roots: Vec::new(),
                    status: OwnerStatus::Live,
                    created_at_ms: now_ms(),
                    finished_at_ms: None,
                },
            };
            self.owners.insert(
                owner,
                OwnerMem { rec, needs: Vec::new(), pending: 0, holds: 0, waiters: Vec::new() },
            );
        }
        let Some(o) = self.owners.get_mut(&owner) else { return Ok(()) };
        for r in roots {
            if !o.rec.roots.contains(r) {
                o.rec.roots.push(r.clone());
            }
        }
        self.writes.owners.insert(owner, o.rec.clone());
        Ok(())
    }

    /// Brings `seeds` and what they need under `owner`: the graph walk, the bulk validity check, then the
    /// states (see the module documentation). Flushes first so the walk reads current states.
    async fn activate(&mut self, owner: OwnerId, seeds: &[DrvId], note: &str) -> Result<(), SchedulerError> {
        self.flush().await?;
        let graph = self.graph.clone();
        let store = self.store.clone();
        let seeds_v = seeds.to_vec();
        let prepared = smol::unblock(move || prepare::walk(&graph, &store, &seeds_v)).await?;

        // Derivations whose outputs may already be valid: never seen, cancelled, or left non-final by a crash.
        let candidates: Vec<DrvId> = prepared
            .iter()
            .filter(|(id, p)| !self.nodes.contains_key(id) && !p.stops())
            .map(|(id, _)| *id)
            .collect();
        let valid = self.valid_outputs(&prepared, &candidates).await;

        // The second walk: from the seeds, not below derivations that are final or valid.
        let mut reached: BTreeSet<DrvId> = BTreeSet::new();
        let mut stack: Vec<DrvId> = seeds.to_vec();
        while let Some(id) = stack.pop() {
            if !reached.insert(id) {
                continue;
            }
            let Some(p) = prepared.get(&id) else { continue };
            if p.stops() || (valid.contains(&id) && !self.nodes.contains_key(&id)) {
                continue;
            }
            stack.extend(p.inputs.iter().copied().filter(|i| !reached.contains(i)));
        }

        let mut resolved: HashMap<DrvId, DrvState> = HashMap::new();
        let mut activated = Vec::new();
        for id in reached {
            if self.nodes.contains_key(&id) {
                self.add_owner(id, owner);
                continue;
            }
            let Some(p) = prepared.get(&id) else { continue };
            if p.stops() {
                if let Some(r) = &p.rec {
                    resolved.insert(id, r.state.clone());
                }
                continue;
            }
            let mut rec = p.rec.clone().unwrap_or_default();
            let was_running = p.rec.as_ref().is_some_and(|r| !r.state.is_terminal());
            if let Some(mut a) = p.open_attempt.clone() {
                a.ended_at_ms = Some(now_ms());
                a.outcome = Some("abandoned (server restarted)".into());
                self.writes.attempts.insert((id, a.number), a);
            }
            if valid.contains(&id) {
                let state =
                    if was_running { DrvState::Completed(Completion::Success) } else { DrvState::Cached };
                record(&mut self.writes, id, &mut rec, state.clone(), "outputs already valid");
                if rec.requeue_dependents {
                    let path: Rc<str> = p.path.as_str().into();
                    rec.requeue_dependents = false;
                    self.writes.states.insert(id, rec.clone());
                    if let Some(o) = self.owners.get_mut(&(REBUILD_OWNER_BASE + u64::from(id.0))) {
                        o.holds += 1;
                    }
                    self.followups.push(Followup::Requeue { id, path });
                }
                resolved.insert(id, state);
                continue;
            }
            // Inputs: active ones are waited for; final ones decide failure.
            let mut waiting = 0u32;
            let mut active_inputs = Vec::new();
            let mut inherited: Option<DrvState> = None;
            for i in &p.inputs {
                if self.nodes.contains_key(i) {
                    waiting += 1;
                    active_inputs.push(*i);
                } else if let Some(s) = resolved.get(i) {
                    if !s.is_done() {
                        let dep_path = prepared.get(i).map(|d| d.path.as_str()).unwrap_or("");
                        let cand = inherited_failure(dep_path, s);
                        // A failure is reported in preference to a block.
                        if inherited.is_none()
                            || matches!(
                                (&inherited, &cand),
                                (Some(DrvState::Blocked { .. }), Some(DrvState::TransitiveFailure { .. }))
                            )
                        {
                            inherited = cand.or(inherited);
                        }
                    }
                } else {
                    tracing::warn!(drv = %p.path, input = %i, "input of a derivation has no known state; not waiting for it");
                }
            }
            if p.rec.as_ref().is_none_or(|r| r.state.is_terminal()) {
                rec.failures = 0;
            }
            if let Some(state) = inherited {
                record(&mut self.writes, id, &mut rec, state.clone(), note);
                resolved.insert(id, state);
                continue;
            }
            let req = Requirements::new(&p.system, &p.features, p.prefer_local, p.fixed_output);
            let route = match self.pool.route(&req) {
                Ok(r) => r,
                Err(reason) => {
                    let state = DrvState::Interrupted { kind: InterruptKind::NoBuilder, reason };
                    record(&mut self.writes, id, &mut rec, state.clone(), note);
                    resolved.insert(id, state);
                    continue;
                }
            };
            // Active: Queued first (recorded unless it already is), then Buildable when nothing is awaited.
            match (&p.rec, &rec.state) {
                (None, _) => record(&mut self.writes, id, &mut rec, DrvState::Queued, note),
                (Some(r), _) if r.state.is_terminal() => {
                    record(&mut self.writes, id, &mut rec, DrvState::Queued, note)
                }
                (Some(_), DrvState::Building) => record(
                    &mut self.writes,
                    id,
                    &mut rec,
                    DrvState::Queued,
                    "server restarted during the build",
                ),
                _ => {}
            }
            let target = if waiting == 0 { DrvState::Buildable } else { DrvState::Queued };
            if rec.state != target {
                record(&mut self.writes, id, &mut rec, target, "");
            }
            let sys = self.sys(&p.system);
            for i in &active_inputs {
                if let Some(inp) = self.nodes.get_mut(i) {
                    inp.dependents.push(id);
                }
            }
            let node = Node {
                path: p.path.as_str().into(),
                sys,
                dependents: Vec::new(),
                route: route.into(),
                rec,
                waiting,
                owners: Vec::new(),
                prio: (0, 0),
                batch: None,
                ready: false,
                unbuilt: 0,
            };
            self.count(sys, class(&node.rec.state), 1);
            self.nodes.insert(id, node);
            // A node with pending work stays resident in the graph's LRU front until it is final.
            if let Err(e) = self.graph.pin(id) {
                tracing::warn!(drv = id.0, error = %e, "cannot pin a derivation with pending work");
            }
            self.add_owner(id, owner);
            activated.push(id);
        }
        self.prio_dirty = true;
        self.reprioritize();
        for id in activated {
            if self.nodes.get(&id).is_some_and(|n| n.rec.state == DrvState::Buildable) {
                self.make_ready(id);
            }
        }
        Ok(())
    }

    /// The candidates whose outputs are all valid (one bulk check; on error, none).
    async fn valid_outputs(
        &self,
        prepared: &BTreeMap<DrvId, PrepNode>,
        candidates: &[DrvId],
    ) -> HashSet<DrvId> {
        let mut paths = Vec::new();
        let mut checkable = Vec::new();
        for id in candidates {
            let Some(p) = prepared.get(id) else { continue };
            if p.outputs.is_empty() || p.outputs.iter().any(|o| o.is_empty()) {
                continue; // floating content-addressed outputs: cannot know without building
            }
            paths.extend(p.outputs.iter().cloned());
            checkable.push(*id);
        }
        if paths.is_empty() {
            return HashSet::new();
        }
        let invalid = match runner::invalid_outputs(&paths).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "checking which outputs are valid failed; building everything");
                return HashSet::new();
            }
        };
        checkable
            .into_iter()
            .filter(|id| prepared.get(id).is_some_and(|p| p.outputs.iter().all(|o| !invalid.contains(o))))
            .collect()
    }

    /// Recomputes priorities (longest chain of active dependents, then direct dependents) when the active
    /// graph changed, and re-sorts the ready sets.
    fn reprioritize(&mut self) {
        if !self.prio_dirty {
            return;
        }
        self.prio_dirty = false;
        let mut ids: Vec<DrvId> = self.nodes.keys().copied().collect();
        // Ids are a topological order: dependents have larger ids, so they are computed first.
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            let Some(n) = self.nodes.get(&id) else { continue };
            let mut height = 0u32;
            let mut direct = 0u32;
            for d in &n.dependents {
                if let Some(dn) = self.nodes.get(d) {
                    height = height.max(dn.prio.0);
                    direct += 1;
                }
            }
            if let Some(n) = self.nodes.get_mut(&id) {
                n.prio = (height + 1, direct);
            }
        }
        for set in &mut self.ready {
            let ids: Vec<DrvId> = set.iter().map(|(_, id)| *id).collect();
            set.clear();
            for id in ids {
                if let Some(n) = self.nodes.get(&id) {
                    set.insert((Reverse(n.prio), id));
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------- cancel and rebuild

    async fn cancel(&mut self, owner: OwnerId) -> Result<(), SchedulerError> {
        let Some(mut o) = self.owners.remove(&owner) else {
            let store = self.store.clone();
            self.flush().await?;
            return match smol::unblock(move || Reader::new(&store)?.owner(owner)).await? {
                Some(_) => Ok(()),
                None => Err(SchedulerError::UnknownOwner { owner }),
            };
        };
        o.rec.status = OwnerStatus::Cancelled;
        o.rec.finished_at_ms = Some(now_ms());
        self.writes.owners.insert(owner, o.rec);
        let reason = format!("no live owner needs it any more (owner {owner} cancelled)");
        let mut needs = o.needs;
        needs.sort_unstable_by(|a, b| b.cmp(a));
        for id in needs {
            let Some(n) = self.nodes.get_mut(&id) else { continue };
            n.owners.retain(|x| *x != owner);
            if n.owners.is_empty() && n.batch.is_none() {
                self.cancel_node(id, &reason);
            }
        }
        let mut to_kill = Vec::new();
        for (bid, b) in &self.batches {
            if b.killed {
                continue;
            }
            let needed = b
                .members
                .iter()
                .any(|m| self.nodes.get(m).is_some_and(|n| n.batch == Some(*bid) && !n.owners.is_empty()));
            if !needed {
                to_kill.push(*bid);
            }
        }
        for bid in to_kill {
            if let Some(b) = self.batches.get_mut(&bid) {
                tracing::info!(batch = bid, "killing a batch no live owner needs");
                b.killed = true;
                let _ = b.kill.try_send(());
            }
        }
        self.deferred.push(Deferred::Outcome { owner, waiters: o.waiters });
        Ok(())
    }

    async fn rebuild(&mut self, path: &str) -> Result<OwnerId, SchedulerError> {
        let graph = self.graph.clone();
        let paths = vec![path.to_string()];
        let id = smol::unblock(move || prepare::resolve(&graph, &paths))
            .await?
            .first()
            .copied()
            .ok_or_else(|| SchedulerError::UnknownDerivation { path: path.to_string() })?;
        if let Some(n) = self.nodes.get(&id) {
            return Err(SchedulerError::NotTerminal {
                path: path.to_string(),
                state: n.rec.state.to_string(),
            });
        }
        self.flush().await?;
        let store = self.store.clone();
        let mut rec = smol::unblock(move || Reader::new(&store)?.state(id))
            .await?
            .ok_or_else(|| SchedulerError::NeverRequested { path: path.to_string() })?;
        rec.failures = 0;
        rec.requeue_dependents = true;
        record(&mut self.writes, id, &mut rec, DrvState::Queued, "rebuild requested");
        let owner = REBUILD_OWNER_BASE + u64::from(id.0);
        self.ensure_owner(owner, &[path.to_string()]).await?;
        self.activate(owner, &[id], "rebuild requested").await?;
        self.check_owner(owner);
        Ok(owner)
    }

    // --------------------------------------------------------------------------------------------- followups

    async fn run_followups(&mut self) {
        while !self.followups.is_empty() {
            let work = std::mem::take(&mut self.followups);
            for f in work {
                let r = match f {
                    Followup::Propagate { id, path, blocked } => self.propagate(id, &path, blocked).await,
                    Followup::Requeue { id, path } => self.requeue_dependents(id, &path).await,
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "a scheduler follow-up failed");
                }
            }
        }
    }

    /// Every non-final dependent of `id` (through the persisted graph) becomes `TransitiveFailure` (or
    /// `Blocked`), naming `path`.
    async fn propagate(&mut self, id: DrvId, path: &str, blocked: bool) -> Result<(), SchedulerError> {
        let graph = self.graph.clone();
        let dependents = smol::unblock(move || graph.transitive_dependents(&[id])).await?;
        let state = if blocked {
            DrvState::Blocked { dependency: path.to_string() }
        } else {
            DrvState::TransitiveFailure { dependency: path.to_string() }
        };
        let note = format!("dependency {path} {}", if blocked { "was interrupted" } else { "failed" });
        let mut others = Vec::new();
        for d in dependents {
            if d == id {
                continue;
            }
            if self.nodes.contains_key(&d) {
                self.finish(d, state.clone(), &note);
            } else {
                others.push(d);
            }
        }
        // Non-final derivations outside the loop's memory (left by a crash, not needed by a live owner).
        if !others.is_empty() {
            self.flush().await?;
            let store = self.store.clone();
            let recs = smol::unblock(move || Reader::new(&store)?.states(others)).await?;
            for (d, mut rec) in recs {
                if !rec.state.is_terminal() {
                    record(&mut self.writes, d, &mut rec, state.clone(), &note);
                }
            }
        }
        Ok(())
    }

    /// After the rebuild of `id` succeeded: its dependents failed or blocked because of it are requeued under
    /// the rebuild's owner.
    async fn requeue_dependents(&mut self, id: DrvId, path: &str) -> Result<(), SchedulerError> {
        let owner = REBUILD_OWNER_BASE + u64::from(id.0);
        let result = self.requeue_dependents_inner(id, path, owner).await;
        if let Some(o) = self.owners.get_mut(&owner) {
            o.holds = o.holds.saturating_sub(1);
        }
        self.check_owner(owner);
        result
    }

    async fn requeue_dependents_inner(
        &mut self,
        id: DrvId,
        path: &str,
        owner: OwnerId,
    ) -> Result<(), SchedulerError> {
        let graph = self.graph.clone();
        let dependents = smol::unblock(move || graph.transitive_dependents(&[id])).await?;
        self.flush().await?;
        let store = self.store.clone();
        let candidates: Vec<DrvId> =
            dependents.into_iter().filter(|d| *d != id && !self.nodes.contains_key(d)).collect();
        let recs = smol::unblock(move || Reader::new(&store)?.states(candidates)).await?;
        let mut seeds = Vec::new();
        let note = format!("dependency {path} was rebuilt");
        for (d, mut rec) in recs {
            let caused = match &rec.state {
                DrvState::TransitiveFailure { dependency } | DrvState::Blocked { dependency } => {
                    dependency == path
                }
                _ => false,
            };
            if caused {
                rec.failures = 0;
                record(&mut self.writes, d, &mut rec, DrvState::Queued, &note);
                seeds.push(d);
            }
        }
        if seeds.is_empty() {
            return Ok(());
        }
        let graph = self.graph.clone();
        let ids = seeds.clone();
        let paths =
            smol::unblock(move || ids.iter().map(|i| graph.path_of(*i)).collect::<Result<Vec<_>, _>>())
                .await?;
        self.ensure_owner(owner, &paths).await?;
        self.activate(owner, &seeds, &note).await
    }

    // --------------------------------------------------------------------------------------------- dispatch

    fn can_start(&self, b: usize) -> bool {
        let (Some(slot), Some(spec)) = (self.slots.get(b), self.pool.get(b)) else { return false };
        slot.children < self.cfg.children_per_builder.max(1)
            && (slot.children == 0 || slot.runnable < spec.max_jobs.max(1) as usize)
    }

    /// Whether builder `b` should take a derivation routed `route` now.
    fn takes(&self, b: usize, route: &[usize]) -> bool {
        match route.iter().position(|&x| x == b) {
            None => false,
            Some(0) => true,
            // A less preferred builder takes it only while every more preferred one is busy.
            Some(pos) => route[..pos].iter().all(|&x| !self.can_start(x)),
        }
    }

    fn dispatch(&mut self) {
        if self.draining || self.ready.iter().all(|set| set.is_empty()) {
            return; // nothing to hand out (the common case while a large batch runs)
        }
        self.reprioritize();
        for s in &mut self.slots {
            s.runnable = 0;
        }
        for (bid, batch) in &self.batches {
            let runnable = batch
                .members
                .iter()
                .filter(|m| {
                    self.nodes.get(m).is_some_and(|n| {
                        n.batch == Some(*bid)
                            && matches!(n.rec.state, DrvState::Buildable | DrvState::Building)
                    })
                })
                .count();
            if let Some(s) = self.slots.get_mut(batch.builder) {
                s.runnable += runnable;
            }
        }
        for b in 0..self.pool.builders().len() {
            while self.can_start(b) {
                let members = self.form_batch(b);
                if members.is_empty() {
                    break;
                }
                self.start_batch(b, members);
            }
        }
    }

    /// Ready derivations for `b` in priority order, plus the queued sub-DAG above them, up to the cap.
    fn form_batch(&self, b: usize) -> Vec<DrvId> {
        let cap = self.cfg.batch_cap.max(1);
        let seed_cap = self.cfg.seed_cap.clamp(1, cap);
        let Some(spec) = self.pool.get(b) else { return Vec::new() };
        let mut seeds: Vec<(Reverse<(u32, u32)>, DrvId)> = Vec::new();
        for system in &spec.systems {
            let Some(&s) = self.sys_index.get(system) else { continue };
            let Some(set) = self.ready.get(s) else { continue };
            for &(prio, id) in set {
                if seeds.len() >= seed_cap {
                    break;
                }
                if self.nodes.get(&id).is_some_and(|n| self.takes(b, &n.route)) {
                    seeds.push((prio, id));
                }
            }
        }
        seeds.sort_unstable();
        seeds.truncate(seed_cap);
        let mut members: Vec<DrvId> = seeds.iter().map(|(_, id)| *id).collect();
        let mut in_batch: HashSet<DrvId> = members.iter().copied().collect();
        let mut missing: HashMap<DrvId, u32> = HashMap::new();
        let mut i = 0;
        while i < members.len() && members.len() < cap {
            let x = members[i];
            i += 1;
            let Some(n) = self.nodes.get(&x) else { continue };
            for d in &n.dependents {
                if in_batch.contains(d) || members.len() >= cap {
                    continue;
                }
                let Some(dn) = self.nodes.get(d) else { continue };
                if dn.batch.is_some() || dn.rec.state != DrvState::Queued || !self.takes(b, &dn.route) {
                    continue;
                }
                let m = missing.entry(*d).or_insert(dn.waiting);
                *m = m.saturating_sub(1);
                if *m == 0 {
                    in_batch.insert(*d);
                    members.push(*d);
                }
            }
        }
        // Highest priority first: Nix starts the goals it was given roughly in order.
        members.sort_by_key(|id| (self.nodes.get(id).map(|n| Reverse(n.prio)), *id));
        members
    }

    fn start_batch(&mut self, b: usize, members: Vec<DrvId>) {
        let Some(spec) = self.pool.get(b).cloned() else { return };
        let bid = self.next_batch;
        self.next_batch += 1;
        let mut drvs = Vec::with_capacity(members.len());
        let mut attempt_of = HashMap::with_capacity(members.len());
        let mut paths = HashMap::with_capacity(members.len());
        for id in &members {
            self.unready(*id);
            let Some(n) = self.nodes.get_mut(id) else { continue };
            n.batch = Some(bid);
            drvs.push(n.path.to_string());
            attempt_of.insert(n.path.to_string(), n.rec.attempt + 1);
            paths.insert(n.path.clone(), *id);
        }
        tracing::debug!(batch = bid, builder = %spec.name, drvs = drvs.len(), "starting a batch");
        let mut batch = BuildBatch::new(drvs, self.cfg.logs_dir.clone());
        batch.attempt_of = attempt_of;
        // A child started next to running ones gets only the slots they leave idle, so the builder runs
        // about `max_jobs` builds (more only when the running batches' queued members become buildable).
        let (children, runnable) = self.slots.get(b).map_or((0, 0), |s| (s.children, s.runnable));
        batch.max_jobs = if children == 0 || spec.local_jobs() == 0 {
            spec.local_jobs()
        } else {
            spec.local_jobs().saturating_sub(u32::try_from(runnable).unwrap_or(u32::MAX)).max(1)
        };
        batch.max_silent = self.cfg.max_silent;
        batch.max_duration = self.cfg.max_duration;
        batch.builders = spec.nix_builders();
        if spec.nix_builders().is_none() {
            // Nix accepts what our routing sent to this machine.
            batch.options.push(("system-features".into(), spec.supported_features.join(" ")));
        }
        let (kill_tx, kill_rx) = async_channel::bounded(1);
        let inbox = self.inbox.clone();
        let task = self.spawn(runner::drive(runner::BatchSpec { batch }, kill_rx, move |m| {
            let cmd = match m {
                runner::BatchMsg::Event(event) => Command::Batch { batch: bid, event },
                runner::BatchMsg::Done(result) => Command::BatchDone { batch: bid, result },
            };
            inbox.try_send(cmd).ok()
        }));
        let runnable = members
            .iter()
            .filter(|m| self.nodes.get(m).is_some_and(|n| n.rec.state == DrvState::Buildable))
            .count();
        if let Some(s) = self.slots.get_mut(b) {
            s.children += 1;
            s.runnable += runnable;
        }
        self.batches.insert(
            bid,
            BatchMem { builder: b, members, paths, killed: false, progressed: false, kill: kill_tx, task },
        );
    }

    // ------------------------------------------------------------------------------------------ batch events

    fn on_event(&mut self, bid: u64, event: BuildEvent) {
        let Some(batch) = self.batches.get_mut(&bid) else { return };
        batch.progressed = true;
        let builder = batch.builder;
        let killed = batch.killed;
        let (drv, finished) = match &event {
            BuildEvent::Started { drv, .. } => (drv, None),
            BuildEvent::Finished { drv, outcome, duration } => (drv, Some((outcome.clone(), *duration))),
            BuildEvent::Log { .. } => return,
        };
        let Some(&id) = batch.paths.get(drv.as_str()) else {
            tracing::debug!(batch = bid, drv = %drv, "event for a derivation outside the batch");
            return;
        };
        let Some(n) = self.nodes.get_mut(&id) else { return };
        if n.batch != Some(bid) {
            return;
        }
        let Some((outcome, duration)) = finished else {
            if n.rec.state == DrvState::Building {
                return;
            }
            n.rec.attempt += 1;
            n.unbuilt = 0;
            let attempt = n.rec.attempt;
            let started = now_ms();
            let builder_name = self.pool.get(builder).map(|s| s.name.clone()).unwrap_or_default();
            let log = runner::log_path(&self.cfg.logs_dir, drv, attempt);
            self.writes.attempts.insert(
                (id, attempt),
                Attempt {
                    number: attempt,
                    builder: builder_name,
                    started_at_ms: started,
                    ended_at_ms: None,
                    outcome: None,
                    log,
                },
            );
            self.building.insert(id, (builder, started, Instant::now()));
            self.set_state(id, DrvState::Building, "");
            return;
        };
        let started = n.rec.state == DrvState::Building;
        let attempt = n.rec.attempt;
        let state = match outcome {
            DrvOutcome::Success { built: true } => DrvState::Completed(Completion::Success),
            // Nix had nothing to do: the outputs became valid since the request (built elsewhere).
            DrvOutcome::Success { built: false } => DrvState::Cached,
            DrvOutcome::Failure { message, exit_code } => {
                let message = crate::nix::process::bound_str(&message, MESSAGE_LIMIT);
                n.rec.failures += 1;
                if n.rec.failures < 2 {
                    DrvState::FailedRetry { message }
                } else {
                    DrvState::Completed(Completion::Failure { message, exit_code })
                }
            }
            DrvOutcome::TimedOut => DrvState::Interrupted {
                kind: InterruptKind::Timeout,
                reason: format!("no output for {} s", self.cfg.max_silent.as_secs()),
            },
            DrvOutcome::MaxDuration => DrvState::Interrupted {
                kind: InterruptKind::MaxDuration,
                reason: format!("ran longer than {} s", self.cfg.max_duration.as_secs()),
            },
            DrvOutcome::OutOfMemory => DrvState::Interrupted {
                kind: InterruptKind::OutOfMemory,
                reason: "killed for lack of memory".into(),
            },
            // Killed by our own cancellation of the batch: not a verdict on the derivation.
            DrvOutcome::Killed { .. } if killed => {
                n.batch = None;
                if started {
                    self.close_attempt(id, attempt, "cancelled");
                    self.stop_building(id);
                }
                self.requeue(id, "");
                return;
            }
            DrvOutcome::Killed { signal } => DrvState::Interrupted {
                kind: InterruptKind::ProcessDeath,
                reason: match signal {
                    Some(s) => format!("the build was killed by signal {s}"),
                    None => "the build was killed".into(),
                },
            },
            DrvOutcome::NoBuilder { message } => DrvState::Interrupted {
                kind: InterruptKind::NoBuilder,
                reason: crate::nix::process::bound_str(&message, MESSAGE_LIMIT),
            },
            DrvOutcome::DependencyFailed { .. } | DrvOutcome::NotBuilt => {
                // Not built: our own graph knowledge decides (propagation, retry of the input, requeue).
                n.batch = None;
                // A derivation whose inputs are all built but that Nix keeps not building must not spin.
                if !killed && n.waiting == 0 {
                    n.unbuilt += 1;
                }
                let give_up = n.unbuilt >= UNBUILT_LIMIT;
                if started {
                    self.close_attempt(id, attempt, "not built");
                    self.stop_building(id);
                }
                if give_up {
                    let reason = format!("Nix did not build it in {UNBUILT_LIMIT} batches in a row");
                    self.finish(id, DrvState::Interrupted { kind: InterruptKind::ProcessDeath, reason }, "");
                } else {
                    self.requeue(id, "");
                }
                return;
            }
        };
        if started {
            crate::metrics::global().build_duration.observe(duration.as_secs_f64());
            self.close_attempt(id, attempt, state.name());
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.batch = None;
        }
        if state.is_terminal() {
            self.finish(id, state, "");
        } else {
            // FailedRetry: back in line after the backoff (or cancelled if nobody needs it any more).
            if self.nodes.get(&id).is_some_and(|n| n.owners.is_empty()) {
                self.cancel_node(id, "no live owner needs it any more");
                return;
            }
            self.stop_building(id);
            self.set_state(id, state, "");
            let inbox = self.inbox.clone();
            let backoff = self.cfg.retry_backoff;
            if let Some(t) = self.spawn(async move {
                smol::Timer::after(backoff).await;
                let _ = inbox.send(Command::RetryDue { drv: id }).await;
            }) {
                t.detach();
            }
        }
    }

    fn stop_building(&mut self, id: DrvId) {
        self.building.remove(&id);
    }

    fn close_attempt(&mut self, id: DrvId, attempt: u32, outcome: &str) {
        let started = self.building.get(&id).map(|(_, s, _)| *s);
        let entry = self.writes.attempts.entry((id, attempt)).or_insert_with(|| Attempt {
            number: attempt,
            builder: String::new(),
            started_at_ms: started.unwrap_or(0),
            ended_at_ms: None,
            outcome: None,
            log: None,
        });
        entry.ended_at_ms = Some(now_ms());
        entry.outcome = Some(outcome.to_string());
        if entry.builder.is_empty() {
            // The start row was committed already: rebuild the row from what the loop knows.
            if let Some((b, s, _)) = self.building.get(&id) {
                entry.builder = self.pool.get(*b).map(|x| x.name.clone()).unwrap_or_default();
                entry.started_at_ms = *s;
            }
            if let Some(n) = self.nodes.get(&id) {
                entry.log = runner::log_path(&self.cfg.logs_dir, &n.path, attempt);
            }
        }
    }

    fn on_retry(&mut self, id: DrvId) {
        if self.nodes.get(&id).is_some_and(|n| matches!(n.rec.state, DrvState::FailedRetry { .. })) {
            self.requeue(id, "retrying after a failure");
        }
    }

    fn on_batch_done(&mut self, bid: u64, result: Result<(), String>) {
        let Some(batch) = self.batches.remove(&bid) else { return };
        if let Some(s) = self.slots.get_mut(batch.builder) {
            s.children = s.children.saturating_sub(1);
        }
        if let Err(e) = &result {
            tracing::warn!(batch = bid, error = %e, killed = batch.killed, "a build batch ended with an error");
        }
        for id in batch.members {
            let Some(n) = self.nodes.get_mut(&id) else { continue };
            if n.batch != Some(bid) {
                continue;
            }
            n.batch = None;
            let building = n.rec.state == DrvState::Building;
            let attempt = n.rec.attempt;
            match (&result, batch.killed) {
                (Err(e), false) if building || !batch.progressed => {
                    // The Nix child died during the build, or could not build anything at all (do not spin).
                    if building {
                        self.close_attempt(id, attempt, "process-death");
                    }
                    let reason = crate::nix::process::bound_str(
                        &format!("the Nix build process failed: {e}"),
                        MESSAGE_LIMIT,
                    );
                    self.finish(id, DrvState::Interrupted { kind: InterruptKind::ProcessDeath, reason }, "");
                }
                _ => {
                    if building {
                        self.close_attempt(id, attempt, "interrupted");
                        self.stop_building(id);
                    }
                    self.requeue(id, if building { "the batch ended before the build finished" } else { "" });
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------ inspection

    async fn status(&mut self, path: &str) -> Result<Option<DrvStatus>, SchedulerError> {
        self.flush().await?;
        let graph = self.graph.clone();
        let store = self.store.clone();
        let path = path.to_string();
        smol::unblock(move || {
            let Some(id) = graph.id_of(&path)? else { return Ok(None) };
            let reader = Reader::new(&store)?;
            let Some(rec) = reader.state(id)? else { return Ok(None) };
            Ok(Some(DrvStatus {
                state: rec.state,
                attempt: rec.attempt,
                attempts: reader.attempts(id)?,
                history: reader.history(id)?,
            }))
        })
        .await
    }

    fn active(&self) -> Vec<ActiveBuild> {
        self.building
            .iter()
            .filter_map(|(id, (b, started, _))| {
                let n = self.nodes.get(id)?;
                Some(ActiveBuild {
                    drv: n.path.to_string(),
                    builder: self.pool.get(*b).map(|s| s.name.clone()).unwrap_or_default(),
                    started_at_ms: *started,
                    attempt: n.rec.attempt,
                })
            })
            .collect()
    }

    fn depths(&self) -> Vec<QueueDepth> {
        self.systems
            .iter()
            .zip(&self.counts)
            .map(|(s, c)| QueueDepth {
                system: s.clone(),
                queued: usize::try_from(c.queued).unwrap_or(0),
                buildable: usize::try_from(c.buildable).unwrap_or(0),
                building: usize::try_from(c.building).unwrap_or(0),
            })
            .collect()
    }

    fn publish(&self) {
        let m = crate::metrics::global();
        for (s, c) in self.systems.iter().zip(&self.counts) {
            m.build_queue_depth.with_label_values(&[s.as_str()]).set(c.queued + c.buildable);
            m.active_builds.with_label_values(&[s.as_str()]).set(c.building);
        }
    }

    // --------------------------------------------------------------------------------------- start and stop

    /// Resumes every live owner recorded in the store.
    async fn recover(&mut self) -> Result<(), SchedulerError> {
        let store = self.store.clone();
        let owners = smol::unblock(move || Reader::new(&store)?.owners()).await?;
        let live: Vec<(OwnerId, OwnerRecord)> =
            owners.into_iter().filter(|(_, o)| o.status == OwnerStatus::Live).collect();
        if !live.is_empty() {
            tracing::info!(owners = live.len(), "resuming builds of live owners");
        }
        for (owner, rec) in live {
            let graph = self.graph.clone();
            let roots = rec.roots.clone();
            let ids = match smol::unblock(move || prepare::resolve(&graph, &roots)).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::error!(owner, error = %e, "cannot resume a build owner");
                    continue;
                }
            };
            self.owners.insert(
                owner,
                OwnerMem { rec, needs: Vec::new(), pending: 0, holds: 0, waiters: Vec::new() },
            );
            self.activate(owner, &ids, "resumed after a restart").await?;
            self.check_owner(owner);
        }
        self.run_followups().await;
        self.commit().await;
        Ok(())
    }

    /// Kills every running batch and waits (bounded) for the children to be gone.
    async fn stop(&mut self) {
        let mut tasks = Vec::new();
        for b in self.batches.values_mut() {
            let _ = b.kill.try_send(());
            if let Some(t) = b.task.take() {
                tasks.push(t);
            }
        }
        let _ = self.flush().await;
        for t in tasks {
            let _ = future::or(
                async {
                    t.await;
                    Some(())
                },
                async {
                    smol::Timer::after(Duration::from_secs(10)).await;
                    None
                },
            )
            .await;
        }
    }
}
