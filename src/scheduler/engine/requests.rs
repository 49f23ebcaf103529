//! Accepting and withdrawing work: a request walks the graph down from its roots, checks in bulk which
//! outputs are already valid and activates the rest under its owner; cancellation drops what no live owner
//! needs (and kills batches nobody needs); a rebuild requeues one final derivation under its own owner.
//! Priorities (longest chain of dependents) are recomputed here when the active graph changes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use super::invariant::Subject;
use super::{class, inherited_failure, record, Deferred, Engine, Followup, Node, OwnerMem};
use crate::graph::DrvId;
use crate::scheduler::builders::Requirements;
use crate::scheduler::handle::SchedulerError;
use crate::scheduler::prepare::{self, PrepNode};
use crate::scheduler::runner;
use crate::scheduler::state::{
    now_ms, Completion, DrvState, InterruptKind, OwnerRecord, OwnerStatus, Reader,
};
use crate::scheduler::Owner;

impl Engine {
    pub(super) async fn request(&mut self, owner: Owner, roots: Vec<String>) -> Result<(), SchedulerError> {
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
    pub(super) async fn ensure_owner(
        &mut self,
        owner: Owner,
        roots: &[String],
    ) -> Result<(), SchedulerError> {
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
        let Some(o) = self.owners.get_mut(&owner) else {
            self.violated(
                "ensure_owner",
                "the owner is not live right after being made live",
                Subject::Owner(owner),
            );
            return Ok(());
        };
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
    pub(super) async fn activate(
        &mut self,
        owner: Owner,
        seeds: &[DrvId],
        note: &str,
    ) -> Result<(), SchedulerError> {
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
            // The walk met every seed and every input of a derivation it did not stop at.
            let Some(p) = prepared.get(&id) else {
                self.violated("activate", "the graph walk did not meet the derivation", Subject::Drv(id));
                continue;
            };
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
            let Some(p) = prepared.get(&id) else {
                self.violated("activate", "the graph walk did not meet the derivation", Subject::Drv(id));
                continue;
            };
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
                    // The rebuild's owner is gone when it was cancelled (or the rebuild was before a restart).
                    if let Some(o) = self.owners.get_mut(&Owner::Rebuild(id)) {
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
                match self.nodes.get_mut(i) {
                    Some(inp) => inp.dependents.push(id),
                    None => self.violated("activate", "an input found active is not", Subject::Drv(*i)),
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
                transient: 0,
                lost: 0,
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
    pub(super) fn reprioritize(&mut self) {
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
        // Every ready derivation is active (`finish` takes it out of its ready set first).
        let mut missing = Vec::new();
        for set in &mut self.ready {
            let ids: Vec<DrvId> = set.iter().map(|(_, id)| *id).collect();
            set.clear();
            for id in ids {
                match self.nodes.get(&id) {
                    Some(n) => {
                        set.insert((Reverse(n.prio), id));
                    }
                    None => missing.push(id),
                }
            }
        }
        for id in missing {
            self.violated("reprioritize", "a ready derivation is not active", Subject::Drv(id));
        }
    }

    pub(super) async fn cancel(&mut self, owner: Owner) -> Result<(), SchedulerError> {
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
            // What the owner needed may have finished since.
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
                tracing::info!(batch = %bid, "killing a batch no live owner needs");
                b.killed = true;
                let _ = b.kill.try_send(());
            }
        }
        self.deferred.push(Deferred::Outcome { owner, waiters: o.waiters });
        Ok(())
    }

    /// Cancels one derivation that is queued, buildable, waiting for a retry or building (an
    /// administrator's request): it becomes `Interrupted { Cancelled, reason }`, an attempt running now is
    /// closed as `cancelled` and its batch is killed through the same kill as an owner's cancel (the build's
    /// process group; the batch's other members go back in line), and every dependent that cannot build
    /// any more becomes `Blocked` on it, as after any other interruption. Its owners see it final.
    pub(super) async fn cancel_drv(&mut self, path: &str, reason: &str) -> Result<(), SchedulerError> {
        let id = self.resolve_one(path).await?;
        let Some(n) = self.nodes.get(&id) else {
            self.flush().await?;
            let store = self.store.clone();
            let rec = smol::unblock(move || Reader::new(&store)?.state(id)).await?;
            return Err(SchedulerError::NotActive {
                path: path.to_string(),
                state: rec.map_or_else(|| "never requested".to_string(), |r| r.state.to_string()),
            });
        };
        let (batch, attempt, node_path) = (n.batch, n.rec.attempt, n.path.clone());
        if n.rec.state == DrvState::Building {
            self.close_attempt(id, attempt, "cancelled");
        }
        let state = DrvState::Interrupted { kind: InterruptKind::Cancelled, reason: reason.to_string() };
        self.finish(id, state, reason);
        // `finish` does not propagate a cancellation (an owner's cancel drops the dependents too): here
        // the dependents stay needed, and cannot build without it.
        self.followups.push(Followup::Propagate { id, path: node_path, blocked: true });
        if let Some(b) = batch.and_then(|bid| self.batches.get_mut(&bid)).filter(|b| !b.killed) {
            tracing::info!(drv = %path, "killing the batch of a cancelled derivation");
            b.killed = true;
            let _ = b.kill.try_send(());
        }
        Ok(())
    }

    /// The graph id of `path` (it must have been discovered).
    async fn resolve_one(&self, path: &str) -> Result<DrvId, SchedulerError> {
        let graph = self.graph.clone();
        let paths = vec![path.to_string()];
        smol::unblock(move || prepare::resolve(&graph, &paths))
            .await?
            .first()
            .copied()
            .ok_or_else(|| SchedulerError::UnknownDerivation { path: path.to_string() })
    }

    pub(super) async fn rebuild(&mut self, path: &str) -> Result<Owner, SchedulerError> {
        let id = self.resolve_one(path).await?;
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
        let owner = Owner::Rebuild(id);
        self.ensure_owner(owner, &[path.to_string()]).await?;
        self.activate(owner, &[id], "rebuild requested").await?;
        self.check_owner(owner);
        Ok(owner)
    }
}
