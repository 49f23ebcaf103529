//! The engine's in-memory state: every derivation the loop works on ([`Node`]), the live owners, the running
//! batches and the builders' slots, and the node-state transitions every other part of the engine goes
//! through (`set_state`, `requeue`, `finish`, …), plus the persistence of the accumulated writes.
//!
//! The `impl Engine` blocks are split by concern: [`requests`] (requests, cancellation, rebuilds),
//! [`followups`] (failure propagation and requeues through the persisted graph), [`dispatch`] (forming and
//! starting batches), [`events`] (what running batches report), [`inspect`] (read-only answers and metrics)
//! and [`run`], the one scheduler loop that drives them all. Nothing outside the loop's task touches an
//! `Engine`; no method here blocks on I/O other than through `smol::unblock`.

mod checks;
mod dispatch;
mod events;
mod followups;
mod health;
mod inspect;
mod invariant;
mod requests;
mod run;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::{Rc, Weak};
use std::time::Instant;

use async_channel::Sender;
use smol::LocalExecutor;

use crate::graph::{DrvId, Graph};
use crate::store::Store;

use super::builders::BuilderPool;
use super::handle::{Command, OwnerOutcome, Reply, RootOutcome, SchedulerError};
use super::state::{
    self, now_ms, Completion, DrvRecord, DrvState, InterruptKind, OwnerRecord, OwnerStatus, Reader, Writes,
};
use super::{Owner, SchedulerConfig};
use invariant::{Subject, NOT_ACTIVE};

pub use checks::CheckSlot;
pub use run::start;

/// A running batch, numbered from 1 in the order batches start (not persisted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct BatchId(u64);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
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
    owners: Vec<Owner>,
    /// (longest chain of active dependents, number of direct active dependents).
    prio: (u32, u32),
    batch: Option<BatchId>,
    ready: bool,
    /// Batches in a row that ended without building it although its inputs were built.
    unbuilt: u32,
    /// Transient host errors in a row (each doubles the backoff before the next try).
    transient: u32,
    /// Builders lost while building it (see [`crate::scheduler::LOST_LIMIT`]).
    lost: u32,
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
    Rebuilt(Reply<Owner>, Owner),
    Outcome { owner: Owner, waiters: Vec<Reply<OwnerOutcome>> },
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
    /// Derivations building now: builder, start time (Unix ms) and start instant.
    building: BTreeMap<DrvId, (usize, u64, Instant)>,
    owners: HashMap<Owner, OwnerMem>,
    batches: HashMap<BatchId, BatchMem>,
    next_batch: BatchId,
    slots: Vec<Slot>,
    /// Each builder's health, in pool order (see `engine/health.rs`).
    health: Vec<health::HealthMem>,
    writes: Writes,
    /// Paths and owning jobsets of nodes finished since the last commit, while live clients are
    /// connected (`announce`).
    finished_paths: HashMap<DrvId, (Rc<str>, Vec<u64>)>,
    deferred: Vec<Deferred>,
    followups: Vec<Followup>,
    prio_dirty: bool,
    /// No new batches (see [`SchedulerHandle::drain`]).
    draining: bool,
    /// Repository checks holding or waiting for a local worker slot (`checks.rs`).
    checks: checks::CheckSlots,
}

/// The jobset ids among `owners` (what live clients following jobsets match).
fn jobsets_of(owners: &[Owner]) -> Vec<u64> {
    owners.iter().filter_map(|o| if let Owner::Jobset(j) = o { Some(j.0) } else { None }).collect()
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
        let health = pool.builders().iter().map(health::HealthMem::new).collect();
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
            next_batch: BatchId(1),
            slots,
            health,
            writes: Writes::default(),
            finished_paths: HashMap::new(),
            deferred: Vec::new(),
            followups: Vec::new(),
            prio_dirty: false,
            draining: false,
            checks: checks::CheckSlots::default(),
        }
    }

    /// Spawns a task on the executor (`None` while the executor is being dropped).
    fn spawn(&self, f: impl std::future::Future<Output = ()> + 'static) -> Option<smol::Task<()>> {
        self.ex.upgrade().map(|ex| ex.spawn(f))
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
            Ok(()) => {
                self.announce(&writes);
                Ok(())
            }
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

    /// Publishes the committed state changes to live clients (`crate::live`; never waits).
    fn announce(&mut self, writes: &Writes) {
        let finished = std::mem::take(&mut self.finished_paths);
        if !crate::live::wanted() {
            return;
        }
        for (id, _, entry) in &writes.history {
            let active = self.nodes.get(id).map(|n| (n.path.clone(), jobsets_of(&n.owners)));
            let (path, jobsets) = match active.or_else(|| finished.get(id).cloned()) {
                Some((p, j)) => (p.to_string(), j),
                // Not active (propagated failures, requeues): one graph read, usually cached; its
                // jobsets are unknown.
                None => match self.graph.path_of(*id) {
                    Ok(p) => (p, Vec::new()),
                    Err(_) => continue,
                },
            };
            crate::live::state_change(&path, entry.state.name(), entry.attempt, entry.at_ms, &jobsets);
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
    async fn outcome(&self, owner: Owner) -> Result<OwnerOutcome, SchedulerError> {
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
        let Some(n) = self.nodes.get_mut(&id) else {
            return self.violated("set_state", NOT_ACTIVE, Subject::Drv(id));
        };
        let (old, new, sys) = (class(&n.rec.state), class(&state), n.sys);
        record(&mut self.writes, id, &mut n.rec, state, note);
        self.count(sys, old, -1);
        self.count(sys, new, 1);
    }

    fn make_ready(&mut self, id: DrvId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return self.violated("make_ready", NOT_ACTIVE, Subject::Drv(id));
        };
        if n.ready || n.batch.is_some() {
            return;
        }
        n.ready = true;
        if let Some(set) = self.ready.get_mut(n.sys) {
            set.insert((Reverse(n.prio), id));
        }
    }

    fn unready(&mut self, id: DrvId) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return self.violated("unready", NOT_ACTIVE, Subject::Drv(id));
        };
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
        let Some(n) = self.nodes.get(&id) else {
            return self.violated("requeue", NOT_ACTIVE, Subject::Drv(id));
        };
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
        if !self.nodes.contains_key(&id) {
            return self.violated("finish", NOT_ACTIVE, Subject::Drv(id));
        }
        self.unready(id);
        let Some(mut n) = self.nodes.remove(&id) else { return }; // present: checked above
        if crate::live::wanted() {
            // `announce` names it after the commit without reading the graph.
            self.finished_paths.insert(id, (n.path.clone(), jobsets_of(&n.owners)));
        }
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
                // Dependents finished before this node (by propagation or cancellation) are gone: skip them.
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
            // The rebuild's owner is gone when it was cancelled: then nothing waits for the requeue.
            if let Some(o) = self.owners.get_mut(&Owner::Rebuild(id)) {
                o.holds += 1;
            }
            self.followups.push(Followup::Requeue { id, path: n.path.clone() });
        }
        for o in n.owners {
            // An active node lists only live owners (a cancelled owner is taken off its nodes).
            match self.owners.get_mut(&o) {
                Some(om) => om.pending = om.pending.saturating_sub(1),
                None => self.violated("finish", "an owner of the derivation is not live", Subject::Drv(id)),
            }
            self.check_owner(o);
        }
    }

    /// Lists the live `owner` on the active node `id`.
    fn add_owner(&mut self, id: DrvId, owner: Owner) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return self.violated("add_owner", NOT_ACTIVE, Subject::Drv(id));
        };
        if n.owners.contains(&owner) {
            return;
        }
        n.owners.push(owner);
        match self.owners.get_mut(&owner) {
            Some(o) => {
                o.pending += 1;
                o.needs.push(id);
            }
            None => self.violated("add_owner", "the owner is not live", Subject::Owner(owner)),
        }
    }

    /// Completes `owner` if everything it needs is final (nothing to do if it is no longer live).
    fn check_owner(&mut self, owner: Owner) {
        let Some(o) = self.owners.get(&owner) else { return };
        if o.pending > 0 || o.holds > 0 || o.rec.status != OwnerStatus::Live {
            return;
        }
        let Some(mut o) = self.owners.remove(&owner) else { return }; // present: read above
        o.rec.status = OwnerStatus::Completed;
        o.rec.finished_at_ms = Some(now_ms());
        self.writes.owners.insert(owner, o.rec);
        tracing::debug!(owner = %owner, "build owner completed");
        self.deferred.push(Deferred::Outcome { owner, waiters: o.waiters });
    }
}
