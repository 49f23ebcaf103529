//! The loop's side of builder health: starting one probe task per remote builder, recording what probes
//! answer (and the `eka_ci_builder_up` gauge), marking a builder lost during a batch down and asking for
//! a probe at once, requeueing the derivations a lost builder was building, and the answers about it
//! (builder statuses, why a derivation waits). Probing itself is `scheduler::health`.

use async_channel::Sender;

use super::invariant::{Subject, NOT_ACTIVE};
use super::Engine;
use crate::graph::DrvId;
use crate::scheduler::builders::BuilderSpec;
use crate::scheduler::handle::Command;
use crate::scheduler::health::{self as probes, BuilderStatus, Health, Probe};
use crate::scheduler::state::{now_ms, DrvState, InterruptKind};
use crate::scheduler::LOST_LIMIT;

/// The longest reason kept for a down builder or a lost build.
const REASON_LIMIT: usize = 1024;

/// One builder's health as the loop keeps it.
pub(super) struct HealthMem {
    health: Health,
    since_ms: u64,
    last_probe_ms: Option<u64>,
    failed_probes: u32,
    /// Asks the probe task to probe at once (remote builders only).
    wake: Option<Sender<()>>,
    task: Option<smol::Task<()>>,
}

impl HealthMem {
    pub(super) fn new(spec: &BuilderSpec) -> HealthMem {
        HealthMem {
            health: if spec.is_remote() { Health::Unknown } else { Health::Up },
            since_ms: now_ms(),
            last_probe_ms: None,
            failed_probes: 0,
            wake: None,
            task: None,
        }
    }
}

impl Engine {
    /// Whether builder `b` may be given work.
    pub(super) fn is_up(&self, b: usize) -> bool {
        self.health.get(b).is_some_and(|h| h.health == Health::Up)
    }

    /// Starts the probe task of every remote builder (once per engine; the tasks end with it).
    pub(super) fn start_probes(&mut self) {
        let m = crate::metrics::global();
        for b in 0..self.health.len() {
            let Some(spec) = self.pool.get(b) else { continue };
            m.builder_up.with_label_values(&[&spec.name]).set(i64::from(self.is_up(b)));
            let Some(probe) = Probe::of(spec, self.cfg.health_interval, self.cfg.health_timeout) else {
                continue;
            };
            if self.health.get(b).is_some_and(|h| h.task.is_some()) {
                continue;
            }
            let (wake_tx, wake_rx) = async_channel::bounded(1);
            let inbox = self.inbox.clone();
            let task = self.spawn(probes::probe_loop(probe, wake_rx, move |result| {
                inbox.try_send(Command::Health { builder: b, result }).ok()
            }));
            if let Some(h) = self.health.get_mut(b) {
                h.wake = Some(wake_tx);
                h.task = task;
            }
        }
    }

    /// A probe of builder `b` answered.
    pub(super) fn on_health(&mut self, b: usize, result: Result<(), String>) {
        let name = self.pool.get(b).map(|s| s.name.clone()).unwrap_or_default();
        let Some(h) = self.health.get_mut(b) else {
            tracing::error!(builder = b, "a health probe reported for a builder that does not exist");
            return;
        };
        h.last_probe_ms = Some(now_ms());
        let new = match result {
            Ok(()) => {
                h.failed_probes = 0;
                Health::Up
            }
            Err(reason) => {
                h.failed_probes = h.failed_probes.saturating_add(1);
                Health::Down { reason: crate::text::bounded_str(&reason, REASON_LIMIT) }
            }
        };
        self.set_health(b, &name, new);
    }

    fn set_health(&mut self, b: usize, name: &str, new: Health) {
        let Some(h) = self.health.get_mut(b) else { return };
        if h.health.name() != new.name() {
            h.since_ms = now_ms();
            match &new {
                Health::Up => tracing::info!(builder = %name, "builder is up"),
                Health::Down { reason } => {
                    tracing::warn!(builder = %name, reason = %reason, "builder is down")
                }
                Health::Unknown => {}
            }
        }
        h.health = new;
        let up = h.health == Health::Up;
        crate::metrics::global().builder_up.with_label_values(&[name]).set(i64::from(up));
    }

    /// Nix lost builder `b` during a batch: down until a probe answers, and probed at once.
    pub(super) fn builder_lost(&mut self, b: usize, reason: &str) {
        let name = self.pool.get(b).map(|s| s.name.clone()).unwrap_or_default();
        if !self.pool.get(b).is_some_and(BuilderSpec::is_remote) {
            return;
        }
        let reason = crate::text::bounded_str(&format!("lost during a build: {reason}"), REASON_LIMIT);
        self.set_health(b, &name, Health::Down { reason });
        if let Some(wake) = self.health.get(b).and_then(|h| h.wake.as_ref()) {
            let _ = wake.try_send(());
        }
    }

    /// The derivation `id` was building on builder `b` when it was lost: its attempt is closed as
    /// `builder-lost`, it is requeued (not failed) with a history entry saying so, or interrupted after
    /// [`LOST_LIMIT`] losses during its builds. A member the batch never started is only requeued.
    pub(super) fn lost_retry(&mut self, id: DrvId, b: usize, started: bool, reason: &str) {
        let name = self.pool.get(b).map(|s| s.name.clone()).unwrap_or_default();
        let Some(n) = self.nodes.get_mut(&id) else {
            return self.violated("lost_retry", NOT_ACTIVE, Subject::Drv(id));
        };
        n.batch = None;
        if started {
            n.lost = n.lost.saturating_add(1);
        }
        let (attempt, lost) = (n.rec.attempt, n.lost);
        if started {
            self.close_attempt(id, attempt, "builder-lost");
            self.building.remove(&id);
        }
        if lost >= LOST_LIMIT {
            let reason = format!("builder {name} was lost {lost} times while building it: {reason}");
            let reason = crate::text::bounded_str(&reason, REASON_LIMIT);
            self.finish(id, DrvState::Interrupted { kind: InterruptKind::ProcessDeath, reason }, "");
            return;
        }
        if self.nodes.get(&id).is_some_and(|n| n.owners.is_empty()) {
            self.cancel_node(id, "no live owner needs it any more");
            return;
        }
        if started {
            let message = crate::text::bounded_str(&format!("builder lost: {name}: {reason}"), REASON_LIMIT);
            self.set_state(
                id,
                DrvState::FailedRetry { message },
                "the builder was lost during the build; requeued, not a build failure",
            );
        }
        self.requeue(id, &format!("requeued after losing builder {name}"));
    }

    /// Why the active, unbatched, `Buildable` derivation `id` waits, when every builder that may take it
    /// is down.
    pub(super) fn waiting_reason(&self, id: DrvId) -> Option<String> {
        let n = self.nodes.get(&id)?;
        if n.rec.state != DrvState::Buildable || n.batch.is_some() || n.route.is_empty() {
            return None;
        }
        if n.route.iter().any(|&b| self.is_up(b)) {
            return None;
        }
        let names: Vec<String> = n
            .route
            .iter()
            .filter_map(|&b| {
                let spec = self.pool.get(b)?;
                let what = match self.health.get(b).map(|h| &h.health) {
                    Some(Health::Unknown) => "not checked yet",
                    _ => "down",
                };
                Some(format!("{} {what}", spec.name))
            })
            .collect();
        Some(format!("no builder available: {}", names.join(", ")))
    }

    /// Every derivation waiting for a builder, with [`Engine::waiting_reason`].
    pub(super) fn waiting_list(&self) -> Vec<(String, String)> {
        if self.health.iter().all(|h| h.health == Health::Up) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for set in &self.ready {
            for &(_, id) in set {
                if let (Some(reason), Some(n)) = (self.waiting_reason(id), self.nodes.get(&id)) {
                    out.push((n.path.to_string(), reason));
                }
            }
        }
        out
    }

    /// Every builder with its health and the builds running on it.
    pub(super) fn builder_statuses(&self) -> Vec<BuilderStatus> {
        self.pool
            .builders()
            .iter()
            .enumerate()
            .map(|(b, spec)| {
                let h = self.health.get(b);
                BuilderStatus {
                    name: spec.name.clone(),
                    kind: match spec.kind {
                        crate::scheduler::builders::BuilderKind::Local => "local",
                        crate::scheduler::builders::BuilderKind::FixedOutput => "fixed-output",
                        crate::scheduler::builders::BuilderKind::Remote { .. } => "remote",
                    }
                    .to_string(),
                    systems: spec.systems.clone(),
                    max_jobs: spec.max_jobs,
                    speed_factor: spec.speed_factor,
                    supported_features: spec.supported_features.clone(),
                    mandatory_features: spec.mandatory_features.clone(),
                    health: h.map_or(Health::Unknown, |h| h.health.clone()),
                    since_ms: h.map_or(0, |h| h.since_ms),
                    last_probe_ms: h.and_then(|h| h.last_probe_ms),
                    failed_probes: h.map_or(0, |h| h.failed_probes),
                    building: self.building.values().filter(|(x, _, _)| *x == b).count(),
                }
            })
            .collect()
    }
}
