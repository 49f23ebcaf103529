//! Loud failures of the engine's own invariants. A lookup that must succeed (a transition of a derivation
//! the loop is working on, a batch reporting to the loop, a live owner listed on an active derivation) and
//! does not is a bug in the engine: it is logged as an error naming the operation and the derivation (or
//! batch, or owner) and counted in `eka_ci_scheduler_invariant_violations_total{operation}`, and the caller
//! skips the operation, as before. It never panics: a scheduler bug must not take the server down.
//!
//! Lookups that may legitimately fail (a dependent already finished, a batch member already cancelled, an
//! owner already completed) are not reported here; their call sites say why they may fail.

use crate::graph::DrvId;
use crate::scheduler::Owner;

use super::{BatchId, Engine};

/// The usual broken invariant: an operation meant for an active derivation found none.
pub(super) const NOT_ACTIVE: &str = "the derivation is not active";

/// What a broken invariant was about.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subject {
    Drv(DrvId),
    Batch(BatchId),
    Owner(Owner),
}

/// A broken invariant of the engine, as logged.
#[derive(Debug, thiserror::Error)]
#[error("scheduler invariant violated in {operation}: {what} ({subject})")]
pub(super) struct Invariant {
    /// The engine operation that found it (`finish`, `set_state`, `on_batch_done`, …).
    pub operation: &'static str,
    pub what: &'static str,
    /// The derivation (by .drv path when the graph knows the id), batch or owner concerned.
    pub subject: String,
}

impl Engine {
    /// Reports a broken invariant (see the module documentation); the caller then skips the operation.
    #[cold]
    pub(super) fn violated(&self, operation: &'static str, what: &'static str, subject: Subject) {
        let subject = match subject {
            // Reading the path may reach the graph's table; this happens only on the way to an error log.
            Subject::Drv(id) => match self.graph.path_of(id) {
                Ok(path) => format!("derivation {path}"),
                Err(_) => format!("derivation {id}"),
            },
            Subject::Batch(b) => format!("batch {b}"),
            Subject::Owner(o) => format!("owner {o}"),
        };
        let error = Invariant { operation, what, subject };
        tracing::error!(operation, error = %error, "scheduler invariant violated; skipping the operation");
        crate::metrics::global().scheduler_invariant_violations.with_label_values(&[operation]).inc();
    }
}
