//! The one scheduler loop ([`Engine::run`]) and its start and stop: [`start`] recovers the live owners and
//! spawns the loop; each turn handles every waiting [`Command`], runs the follow-ups, commits, answers the
//! callers whose work is persisted and dispatches batches. There is exactly one such loop: nothing else
//! changes build states, and nothing here decides a transition itself (the other engine files do). The
//! loop runs under `supervise`: after a panic a new engine recovers from the store (see [`start`]).

use std::rc::Rc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use futures_lite::future;
use smol::LocalExecutor;

use crate::graph::Graph;

use super::{Deferred, Engine, OwnerMem};
use crate::scheduler::handle::{Command, SchedulerError, SchedulerHandle};
use crate::scheduler::prepare;
use crate::scheduler::runner;
use crate::scheduler::state::{OwnerRecord, OwnerStatus, Reader};
use crate::scheduler::{Owner, SchedulerConfig};

/// Build events (state transitions) are committed at most this often, unless a caller waits for them.
/// A crash loses at most this much of history; recovery re-derives the states from Nix (output validity).
const COMMIT_INTERVAL: Duration = Duration::from_millis(200);

/// Pending history rows that force a commit.
const COMMIT_BATCH: usize = 20_000;

/// Starts the scheduler on `ex`: resumes the live owners recorded in the graph's store (see the module
/// documentation), then runs the loop as a task of `ex`.
pub async fn start(
    ex: &Rc<LocalExecutor<'static>>,
    graph: Graph,
    config: SchedulerConfig,
) -> Result<SchedulerHandle, SchedulerError> {
    let (tx, rx) = async_channel::unbounded();
    runner::clean_scratch(&config.logs_dir).await;
    // Metric labels name only systems some builder has (see `metrics::system_label`).
    crate::metrics::set_known_systems(
        config
            .local_systems
            .iter()
            .chain(config.remote_builders.iter().flat_map(|b| b.systems.iter()))
            .cloned(),
    );
    // The engine holds the executor weakly: tasks of an executor must not keep it alive (dropping the
    // executor then drops the loop and every batch, killing the Nix children, as a crash would).
    let mut engine = Engine::new(Rc::downgrade(ex), graph.clone(), config.clone(), tx.clone());
    engine.recover().await?;
    // Supervised (`supervise`): a panic in the loop drops its in-memory state (running batches are
    // killed with it, as in a crash) and a new engine recovers from the store, exactly as at start-up,
    // reading the same inbox so that every handle keeps working. Restarting beats exiting: recovery is
    // the code path every start already takes, and the process's other services keep running. Batch ids
    // of a new engine start far above the old one's, so an event the old engine's batches left in the
    // inbox matches no new batch (it is logged as an invariant violation and skipped).
    let first = std::cell::RefCell::new(Some(engine));
    let generation = std::cell::Cell::new(0u64);
    let weak = Rc::downgrade(ex);
    let (never_tx, never) = async_channel::bounded::<()>(1);
    let handle = SchedulerHandle { inbox: tx.clone() };
    ex.spawn(async move {
        let _keep_open = never_tx;
        crate::supervise::supervise("scheduler", never, || {
            let first = first.borrow_mut().take();
            generation.set(generation.get() + 1);
            let (gen, weak, graph, config, tx, rx) =
                (generation.get(), weak.clone(), graph.clone(), config.clone(), tx.clone(), rx.clone());
            async move {
                let engine = match first {
                    Some(engine) => engine,
                    None => {
                        let mut engine = Engine::new(weak, graph, config, tx);
                        engine.next_batch = super::BatchId(gen << 40);
                        engine.recover().await?;
                        engine
                    }
                };
                engine.run(rx).await;
                Ok::<(), SchedulerError>(())
            }
        })
        .await
    })
    .detach();
    Ok(handle)
}

impl Engine {
    /// The loop.
    async fn run(mut self, inbox: Receiver<Command>) {
        let mut last_commit = Instant::now();
        self.start_probes();
        // What recovery made buildable starts now, not at the first command: after a crash nobody may
        // ever send one (the requesters died with the previous process).
        self.dispatch();
        self.publish();
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
            self.dispatch_checks();
            self.publish();
        }
    }

    /// Handles one command; `Some` when the loop must stop.
    async fn handle(&mut self, cmd: Command) -> Option<Sender<()>> {
        match cmd {
            Command::Request { owner, roots, reply } => {
                // A jobset id in the range of rebuild keys would be stored as that rebuild.
                if owner.is_reserved() {
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
            // Waiting on or cancelling a jobset id in the rebuild range reaches that rebuild (its key).
            Command::Wait { owner, reply } => {
                let owner = owner.canonical();
                match self.owners.get_mut(&owner) {
                    Some(o) => o.waiters.push(reply),
                    None => self.deferred.push(Deferred::Outcome { owner, waiters: vec![reply] }),
                }
            }
            Command::CheckSlot { owner, reply } => self.on_check_slot(owner, reply),
            Command::CheckDone { slot } => self.on_check_done(slot),
            Command::Cancel { owner, reply } => {
                self.cancel_checks(owner.canonical());
                match self.cancel(owner.canonical()).await {
                    Ok(()) => self.deferred.push(Deferred::Done(reply)),
                    Err(e) => {
                        let _ = reply.try_send(Err(e));
                    }
                }
            }
            Command::Rebuild { drv, reply } => match self.rebuild(&drv).await {
                Ok(owner) => self.deferred.push(Deferred::Rebuilt(reply, owner)),
                Err(e) => {
                    let _ = reply.try_send(Err(e));
                }
            },
            Command::CancelDrv { drv, reason, reply } => match self.cancel_drv(&drv, &reason).await {
                Ok(()) => self.deferred.push(Deferred::Done(reply)),
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
            Command::Builders { reply } => {
                let _ = reply.try_send(self.builder_statuses());
            }
            Command::Waiting { reply } => {
                let _ = reply.try_send(self.waiting_list());
            }
            Command::Health { builder, result } => self.on_health(builder, result),
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

    /// Resumes every live owner recorded in the store.
    async fn recover(&mut self) -> Result<(), SchedulerError> {
        let store = self.store.clone();
        let owners = smol::unblock(move || Reader::new(&store)?.owners()).await?;
        let live: Vec<(Owner, OwnerRecord)> =
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
                    tracing::error!(owner = %owner, error = %e, "cannot resume a build owner");
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
