//! Handing work to builders: which builder may start another child, forming a batch (ready derivations in
//! priority order plus the queued sub-DAG above them) and starting it as a task that reports back to the
//! loop's inbox. It never records a build outcome; [`super::events`] does.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use super::{BatchId, BatchMem, Engine};
use crate::graph::DrvId;
use crate::scheduler::handle::Command;
use crate::scheduler::runner::{self, BuildBatch};
use crate::scheduler::state::DrvState;

impl Engine {
    fn can_start(&self, b: usize) -> bool {
        let (Some(slot), Some(spec)) = (self.slots.get(b), self.pool.get(b)) else { return false };
        self.is_up(b)
            && slot.children < self.cfg.children_per_builder.max(1)
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

    pub(super) fn dispatch(&mut self) {
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
        // A running check holds one of the local builder's job slots (`checks.rs`).
        let local = self
            .pool
            .builders()
            .iter()
            .position(|b| b.kind == crate::scheduler::builders::BuilderKind::Local);
        if let Some(s) = local.and_then(|l| self.slots.get_mut(l)) {
            s.runnable += self.checks.running();
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
            let Some(n) = self.nodes.get(&x) else { continue }; // members are active: read just now
            for d in &n.dependents {
                if in_batch.contains(d) || members.len() >= cap {
                    continue;
                }
                let Some(dn) = self.nodes.get(d) else { continue }; // a finished dependent
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
        self.next_batch = BatchId(bid.0 + 1);
        let mut drvs = Vec::with_capacity(members.len());
        let mut attempt_of = HashMap::with_capacity(members.len());
        let mut paths = HashMap::with_capacity(members.len());
        for id in &members {
            self.unready(*id);
            let Some(n) = self.nodes.get_mut(id) else { continue }; // reported by `unready`
            n.batch = Some(bid);
            drvs.push(n.path.to_string());
            attempt_of.insert(n.path.to_string(), n.rec.attempt + 1);
            paths.insert(n.path.clone(), *id);
        }
        tracing::debug!(batch = %bid, builder = %spec.name, drvs = drvs.len(), "starting a batch");
        let mut batch = BuildBatch::new(drvs, self.cfg.logs_dir.clone());
        batch.attempt_of = attempt_of;
        // Log lines also go to live clients (`crate::live`); a client may subscribe mid-build.
        batch.live_log = true;
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
        batch.max_log_bytes = self.cfg.max_log_bytes;
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
}
