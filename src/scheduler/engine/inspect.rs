//! Read-only answers of the loop: a derivation's persisted status, the builds running now, the queue depth
//! per system, and the queue gauges published after each turn. Nothing here changes a state.

use std::collections::BTreeMap;

use super::invariant::{Subject, NOT_ACTIVE};
use super::Engine;
use crate::scheduler::handle::{ActiveBuild, DrvStatus, QueueDepth, SchedulerError};
use crate::scheduler::state::Reader;

impl Engine {
    pub(super) async fn status(&mut self, path: &str) -> Result<Option<DrvStatus>, SchedulerError> {
        self.flush().await?;
        let graph = self.graph.clone();
        let store = self.store.clone();
        let path = path.to_string();
        let found = smol::unblock(move || {
            let Some(id) = graph.id_of(&path)? else { return Ok(None) };
            let reader = Reader::new(&store)?;
            let Some(rec) = reader.state(id)? else { return Ok(None) };
            Ok::<_, SchedulerError>(Some((
                id,
                DrvStatus {
                    state: rec.state,
                    attempt: rec.attempt,
                    attempts: reader.attempts(id)?,
                    history: reader.history(id)?,
                    waiting: None,
                },
            )))
        })
        .await?;
        Ok(found.map(|(id, mut status)| {
            status.waiting = self.waiting_reason(id);
            status
        }))
    }

    pub(super) fn active(&self) -> Vec<ActiveBuild> {
        self.building
            .iter()
            .filter_map(|(id, (b, started, _))| {
                // A derivation leaves `building` before it leaves the active nodes.
                let Some(n) = self.nodes.get(id) else {
                    self.violated("active", NOT_ACTIVE, Subject::Drv(*id));
                    return None;
                };
                Some(ActiveBuild {
                    drv: n.path.to_string(),
                    builder: self.pool.get(*b).map(|s| s.name.clone()).unwrap_or_default(),
                    started_at_ms: *started,
                    attempt: n.rec.attempt,
                })
            })
            .collect()
    }

    pub(super) fn depths(&self) -> Vec<QueueDepth> {
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

    pub(super) fn publish(&self) {
        let m = crate::metrics::global();
        // A derivation's system is the repository's choice: systems no builder has are summed as `other`.
        let mut by_label: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (s, c) in self.systems.iter().zip(&self.counts) {
            let e = by_label.entry(crate::metrics::system_label(s)).or_default();
            e.0 += c.queued + c.buildable;
            e.1 += c.building;
        }
        for (label, (waiting, building)) in by_label {
            m.build_queue_depth.with_label_values(&[label]).set(waiting);
            m.active_builds.with_label_values(&[label]).set(building);
        }
    }
}
