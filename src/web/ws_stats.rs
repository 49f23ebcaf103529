//! `job_stats_update` for `/v1/ws/builds`: one task counts the attributes of followed jobsets by state
//! and publishes the counts when they changed.
//!
//! `crate::live` marks followed jobsets dirty as build states change (and as evaluations commit
//! attributes) and wakes this task. The task waits [`COALESCE`] after a wake-up, so that a burst of
//! changes (30,000 attributes queued at once) is counted once, reads the counts in one blocking call per
//! jobset (a finished jobset through its in-memory scan index, an evaluating one through its records),
//! and publishes only counts that differ from the last ones it sent. It never blocks the scheduler: a
//! slow count delays only the next update.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use super::jobsets::{attr_state_name, PageError};
use super::AppState;
use crate::jobset::{Jobset, JobsetId, JobsetState, ScanKind};
use crate::scheduler::state::Reader;

/// How long after a change the counts are read: changes within it are sent as one update.
pub const COALESCE: Duration = Duration::from_millis(500);
/// Last sent counts kept before the oldest are forgotten (then the next change is sent again).
const REMEMBERED: usize = 10_000;

/// Counts of a jobset's attributes by state name (`eval-error`, `none` for no build state yet, or a
/// build state's name as `GET /v1/drvs/{drv}` shows it).
pub type Counts = BTreeMap<String, u64>;

/// Counts jobset `header`'s attributes by state, blocking. A jobset not evaluated (yet) counts its
/// derivations as `none`.
pub fn counts_blocking(
    jobsets: &crate::jobset::Jobsets,
    graph: &crate::graph::Graph,
    store: &crate::store::Store,
    header: &Jobset,
) -> Result<Counts, PageError> {
    let reader = Reader::new(store)?;
    let mut counts = Counts::new();
    let mut drv_ids: Vec<u32> = Vec::new();
    let mut unknown = 0u64;
    if header.state == JobsetState::Evaluated {
        let index = jobsets.scan_index(header.id, graph)?;
        for e in index.iter() {
            match e.kind {
                ScanKind::EvalError => *counts.entry("eval-error".into()).or_default() += 1,
                ScanKind::Drv(Some(d)) => drv_ids.push(d),
                ScanKind::Drv(None) => unknown += 1,
            }
        }
    } else {
        // Evaluating (or failed): its derivations are read into the graph only when the evaluation
        // ends, so they are counted without build states, and the count stays cheap while it streams.
        jobsets.for_each_attr(header.id, |_, outcome| {
            *counts.entry(attr_state_name(&outcome, None).into()).or_default() += 1;
            Ok(())
        })?;
    }
    let asked = drv_ids.len() as u64;
    let records = reader.states(drv_ids.into_iter().map(crate::graph::DrvId))?;
    unknown += asked - records.len() as u64;
    for (_, rec) in &records {
        *counts.entry(rec.state.name().to_string()).or_default() += 1;
    }
    if unknown > 0 {
        *counts.entry("none".into()).or_default() += unknown;
    }
    Ok(counts)
}

fn evaluation_name(state: &JobsetState) -> &'static str {
    match state {
        JobsetState::Evaluating => "evaluating",
        JobsetState::Evaluated => "evaluated",
        JobsetState::Failed { .. } => "failed",
    }
}

/// The `job_stats_update` message of `header` with `counts`.
pub fn message(header: &Jobset, counts: &Counts) -> Value {
    json!({
        "type": "job_stats_update",
        "jobset": header.id.0,
        "repo": header.key.repo,
        "commit": header.key.commit,
        "job": header.key.job_name(),
        "evaluation": evaluation_name(&header.state),
        "attributes": counts.values().sum::<u64>(),
        "counts": counts,
    })
}

/// Reads jobset `id`'s header and counts (`None`: it does not exist any more).
pub async fn read(state: &AppState, id: u64) -> Result<Option<(Jobset, Counts)>, PageError> {
    let state = state.clone();
    smol::unblock(move || {
        let Some(header) = state.jobsets.get(JobsetId(id))? else { return Ok(None) };
        let counts = counts_blocking(&state.jobsets, &state.graph, &state.store, &header)?;
        Ok(Some((header, counts)))
    })
    .await
}

/// The task: runs until the daemon stops.
pub async fn run(state: AppState) {
    let (waker, woken) = async_channel::bounded(1);
    crate::live::set_waker(waker);
    let mut last: HashMap<u64, (&'static str, Counts)> = HashMap::new();
    while woken.recv().await.is_ok() {
        smol::Timer::after(COALESCE).await;
        for (id, origin) in crate::live::take_dirty() {
            let (header, counts) = match read(&state, id).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, jobset = id, "live: counting a jobset's attributes failed");
                    continue;
                }
            };
            let now = (evaluation_name(&header.state), counts);
            if last.get(&id) == Some(&now) {
                continue;
            }
            let origin = origin.unwrap_or_else(|| crate::live::JobsetOrigin {
                repo: header.key.repo.clone(),
                commit: header.key.commit.clone(),
            });
            crate::live::note_jobset(id, origin.clone());
            crate::live::publish_stats(id, Some(&origin), message(&header, &now.1));
            if last.len() >= REMEMBERED {
                last.clear();
            }
            last.insert(id, now);
        }
    }
}
