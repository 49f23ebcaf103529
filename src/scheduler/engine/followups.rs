//! Follow-ups of final transitions that need the persisted graph: a permanent failure (or interruption)
//! marks every non-final dependent `TransitiveFailure` (or `Blocked`); a successful rebuild requeues the
//! dependents it had failed or blocked. They run between handling commands and committing, never inside a
//! transition.

use super::{record, Engine, Followup};
use crate::graph::DrvId;
use crate::scheduler::handle::SchedulerError;
use crate::scheduler::state::{DrvState, Reader};
use crate::scheduler::Owner;

impl Engine {
    pub(super) async fn run_followups(&mut self) {
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
        let owner = Owner::Rebuild(id);
        let result = self.requeue_dependents_inner(id, path, owner).await;
        // The rebuild's owner is gone when it was cancelled meanwhile.
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
        owner: Owner,
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
}
