//! What running batches report: a derivation started (a new attempt), finished (its outcome becomes a
//! state: success, the one retry, a final failure, an interruption), or was not built by Nix (back in line,
//! unless it keeps not being built); the retry timer; and the end of a batch (members it did not finish are
//! requeued, or interrupted when the Nix child died). A transient host error (the batch could not start for
//! lack of file descriptors, disk space or a fork; Nix itself killed by the OOM killer) is no verdict on the
//! derivation: it waits in `FailedRetry` with a message starting `transient:` and a growing backoff, and
//! its failure count is not touched.

use std::time::Instant;

use super::invariant::{Subject, NOT_ACTIVE};
use super::{BatchId, Engine};
use crate::graph::DrvId;
use crate::scheduler::handle::Command;
use crate::scheduler::runner::{self, BatchError, BuildEvent, DrvOutcome};
use crate::scheduler::state::{now_ms, Attempt, Completion, DrvState, InterruptKind};

/// Batches in a row that may end without building a derivation whose inputs are built.
const UNBUILT_LIMIT: u32 = 3;

/// The longest failure message kept in a state.
const MESSAGE_LIMIT: usize = 4096;

/// The longest wait before retrying after transient host errors.
const TRANSIENT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(600);

impl Engine {
    pub(super) fn on_event(&mut self, bid: BatchId, event: BuildEvent) {
        // A batch's events all arrive before its end (the runner sends them in order on the inbox).
        let Some(batch) = self.batches.get_mut(&bid) else {
            return self.violated(
                "on_event",
                "an event came from a batch that is not running",
                Subject::Batch(bid),
            );
        };
        batch.progressed = true;
        let builder = batch.builder;
        let killed = batch.killed;
        let (drv, finished) = match &event {
            BuildEvent::Started { drv, .. } => (drv, None),
            BuildEvent::Finished { drv, outcome, duration } => (drv, Some((outcome.clone(), *duration))),
            BuildEvent::Log { .. } => return,
        };
        let Some(&id) = batch.paths.get(drv.as_str()) else {
            tracing::debug!(batch = %bid, drv = %drv, "event for a derivation outside the batch");
            return;
        };
        // A member may have been finished meanwhile (a failed input propagated to it): its news is stale.
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
            // Nix had nothing to do, but an earlier attempt of ours ran (a restart abandoned it while its
            // builder was finishing, under the old server's `nix-build`): that attempt built it.
            DrvOutcome::Success { built: false } if attempt > 0 => DrvState::Completed(Completion::Success),
            // Nix had nothing to do: the outputs became valid since the request (built elsewhere).
            DrvOutcome::Success { built: false } => DrvState::Cached,
            DrvOutcome::Failure { message, exit_code } => {
                let message = crate::text::bounded_str(&message, MESSAGE_LIMIT);
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
            DrvOutcome::HostTrouble { reason } => {
                tracing::warn!(batch = %bid, drv = %drv, reason = %reason, "a transient host error stopped a build; it is retried");
                n.batch = None;
                if started {
                    self.close_attempt(id, attempt, "transient");
                }
                self.transient_retry(id, &reason);
                return;
            }
            DrvOutcome::BuilderLost { reason } => {
                tracing::warn!(batch = %bid, drv = %drv, reason = %reason, "the builder was lost during a build; it is requeued");
                self.builder_lost(builder, &reason);
                self.lost_retry(id, builder, started, &reason);
                return;
            }
            DrvOutcome::NoBuilder { message } => DrvState::Interrupted {
                kind: InterruptKind::NoBuilder,
                reason: crate::text::bounded_str(&message, MESSAGE_LIMIT),
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
        match self.nodes.get_mut(&id) {
            Some(n) => n.batch = None,
            None => return self.violated("on_event", NOT_ACTIVE, Subject::Drv(id)),
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
            self.retry_after(id, self.cfg.retry_backoff);
        }
    }

    /// Sends `RetryDue` for `id` after `backoff`.
    fn retry_after(&mut self, id: DrvId, backoff: std::time::Duration) {
        let inbox = self.inbox.clone();
        if let Some(t) = self.spawn(async move {
            smol::Timer::after(backoff).await;
            let _ = inbox.send(Command::RetryDue { drv: id }).await;
        }) {
            t.detach();
        }
    }

    /// A transient host error stopped `id`'s build: `FailedRetry` with `transient: <reason>` (so the
    /// history says it was the host), then back in line after a backoff that doubles with each such error
    /// in a row. Its failure count is unchanged: only a builder's own failure counts.
    fn transient_retry(&mut self, id: DrvId, reason: &str) {
        let Some(n) = self.nodes.get_mut(&id) else {
            return self.violated("transient_retry", NOT_ACTIVE, Subject::Drv(id));
        };
        n.transient = n.transient.saturating_add(1);
        let exponent = n.transient.saturating_sub(1).min(16);
        if n.owners.is_empty() {
            self.cancel_node(id, "no live owner needs it any more");
            return;
        }
        self.stop_building(id);
        let message = crate::text::bounded_str(&format!("transient: {reason}"), MESSAGE_LIMIT);
        tracing::debug!(drv = %id, reason, "a transient host error stopped a build; retrying after a backoff");
        self.set_state(id, DrvState::FailedRetry { message }, "transient host error, not a build failure");
        let backoff = self.cfg.retry_backoff.saturating_mul(1 << exponent).min(TRANSIENT_BACKOFF_MAX);
        self.retry_after(id, backoff);
    }

    fn stop_building(&mut self, id: DrvId) {
        self.building.remove(&id);
    }

    pub(super) fn close_attempt(&mut self, id: DrvId, attempt: u32, outcome: &str) {
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
            match self.nodes.get(&id) {
                Some(n) => entry.log = runner::log_path(&self.cfg.logs_dir, &n.path, attempt),
                None => self.violated("close_attempt", NOT_ACTIVE, Subject::Drv(id)),
            }
        }
    }

    pub(super) fn on_retry(&mut self, id: DrvId) {
        // Cancelled or finished during the backoff: nothing to retry.
        let note = match self.nodes.get(&id).map(|n| &n.rec.state) {
            Some(DrvState::FailedRetry { message }) if message.starts_with("transient: ") => {
                "retrying after a transient host error"
            }
            Some(DrvState::FailedRetry { .. }) => "retrying after a failure",
            _ => return,
        };
        self.requeue(id, note);
    }

    pub(super) fn on_batch_done(&mut self, bid: BatchId, result: Result<(), BatchError>) {
        let Some(batch) = self.batches.remove(&bid) else {
            return self.violated(
                "on_batch_done",
                "a batch ended twice or never started",
                Subject::Batch(bid),
            );
        };
        if let Some(s) = self.slots.get_mut(batch.builder) {
            s.children = s.children.saturating_sub(1);
        }
        if let Err(e) = &result {
            tracing::warn!(batch = %bid, error = %e, killed = batch.killed, "a build batch ended with an error");
        }
        if let (Err(BatchError::BuilderLost { reason }), false) = (&result, batch.killed) {
            self.builder_lost(batch.builder, reason);
        }
        for id in batch.members {
            // Members finished during the batch (built, propagated to, cancelled) are gone.
            let Some(n) = self.nodes.get_mut(&id) else { continue };
            if n.batch != Some(bid) {
                continue;
            }
            n.batch = None;
            let building = n.rec.state == DrvState::Building;
            let attempt = n.rec.attempt;
            match (&result, batch.killed) {
                (Err(BatchError::BuilderLost { reason }), false) => {
                    self.lost_retry(id, batch.builder, building, reason);
                }
                (Err(BatchError::Transient { reason }), false) => {
                    if building {
                        self.close_attempt(id, attempt, "transient");
                    }
                    self.transient_retry(id, reason);
                }
                (Err(e), false) if building || !batch.progressed => {
                    // The Nix child died during the build, or could not build anything at all (do not spin).
                    if building {
                        self.close_attempt(id, attempt, "process-death");
                    }
                    let reason = crate::text::bounded_str(
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
}
