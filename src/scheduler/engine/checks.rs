//! Check slots: repository checks (`crate::checks`) run on the local builder's worker slots, as a
//! resource of this loop rather than a loop of their own. A caller asks for a slot for an owner
//! ([`SchedulerHandle::check_slot`]); the loop grants slots in request order while the local builder has
//! an idle job slot (its runnable batch members plus running checks below its `max_jobs`), and counts each
//! running check as one busy slot when it sizes the next local batch (`dispatch.rs`). A slot is given
//! back when its [`CheckSlot`] is dropped. Cancelling the owner drops its waiting requests and signals
//! its running checks to stop ([`CheckSlot::cancelled`]). Slots are not persisted: a check interrupted by
//! a restart is run again by whoever asks for it again.

use std::collections::{HashMap, VecDeque};

use async_channel::{Receiver, Sender};

use super::Engine;
use crate::scheduler::builders::BuilderKind;
use crate::scheduler::handle::{Command, SchedulerError, SchedulerHandle};
use crate::scheduler::state::DrvState;
use crate::scheduler::Owner;

/// The loop's bookkeeping of check slots.
#[derive(Default)]
pub(super) struct CheckSlots {
    waiting: VecDeque<(Owner, Sender<CheckSlot>)>,
    /// Running checks: slot id → (owner, cancellation signal).
    running: HashMap<u64, (Owner, Sender<()>)>,
    next: u64,
}

impl CheckSlots {
    pub(super) fn running(&self) -> usize {
        self.running.len()
    }
}

/// A granted check slot; dropping it gives the slot back.
pub struct CheckSlot {
    id: u64,
    inbox: Sender<Command>,
    cancelled: Receiver<()>,
}

impl std::fmt::Debug for CheckSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckSlot").field("id", &self.id).finish_non_exhaustive()
    }
}

impl CheckSlot {
    /// Resolves when the slot's owner is cancelled, or when the scheduler loop stopped (the server is
    /// shutting down): either way the check must stop.
    pub async fn cancelled(&self) {
        // Nothing is ever sent: the loop closes the channel (or drops it when it stops).
        let _ = self.cancelled.recv().await;
    }
}

impl Drop for CheckSlot {
    fn drop(&mut self) {
        let _ = self.inbox.try_send(Command::CheckDone { slot: self.id });
    }
}

impl SchedulerHandle {
    /// Waits for a worker slot of the local builder for one check of `owner`; the slot is held until the
    /// returned [`CheckSlot`] is dropped. Fails with [`SchedulerError::Cancelled`] when the owner is
    /// cancelled while waiting.
    pub async fn check_slot(&self, owner: impl Into<Owner>) -> Result<CheckSlot, SchedulerError> {
        let owner = owner.into();
        let (tx, rx) = async_channel::bounded(1);
        self.inbox
            .send(Command::CheckSlot { owner, reply: tx })
            .await
            .map_err(|_| SchedulerError::Stopped)?;
        rx.recv().await.map_err(|_| SchedulerError::Cancelled { owner })
    }
}

impl Engine {
    pub(super) fn on_check_slot(&mut self, owner: Owner, reply: Sender<CheckSlot>) {
        self.checks.waiting.push_back((owner, reply));
    }

    pub(super) fn on_check_done(&mut self, slot: u64) {
        self.checks.running.remove(&slot);
    }

    /// Drops `owner`'s waiting check requests and signals its running checks to stop.
    pub(super) fn cancel_checks(&mut self, owner: Owner) {
        self.checks.waiting.retain(|(o, _)| o.canonical() != owner);
        for (o, cancel) in self.checks.running.values() {
            if o.canonical() == owner {
                cancel.close();
            }
        }
    }

    /// Grants waiting check slots while the local builder has idle job slots.
    pub(super) fn dispatch_checks(&mut self) {
        self.checks.waiting.retain(|(_, reply)| !reply.is_closed());
        if self.checks.waiting.is_empty() || self.draining {
            return;
        }
        let Some(local) = self.pool.builders().iter().position(|b| b.kind == BuilderKind::Local) else {
            return;
        };
        let max = self.pool.get(local).map_or(1, |b| b.max_jobs.max(1) as usize);
        let building = self
            .batches
            .iter()
            .filter(|(_, b)| b.builder == local)
            .flat_map(|(bid, b)| b.members.iter().map(move |m| (*bid, m)))
            .filter(|(bid, m)| {
                self.nodes.get(m).is_some_and(|n| {
                    n.batch == Some(*bid) && matches!(n.rec.state, DrvState::Buildable | DrvState::Building)
                })
            })
            .count();
        while building + self.checks.running.len() < max {
            let Some((owner, reply)) = self.checks.waiting.pop_front() else { break };
            let id = self.checks.next;
            self.checks.next += 1;
            let (cancel_tx, cancel_rx) = async_channel::bounded(1);
            let slot = CheckSlot { id, inbox: self.inbox.clone(), cancelled: cancel_rx };
            match reply.try_send(slot) {
                Ok(()) => {
                    self.checks.running.insert(id, (owner, cancel_tx));
                }
                // The caller stopped waiting: the slot it would have had was dropped and reported done.
                Err(_) => continue,
            }
        }
    }
}
