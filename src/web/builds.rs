//! `GET /v1/builds/active`: the builds running now and the pending work per platform.
//!
//! An anonymous caller (with `[web] public_read`) sees only the builds of public derivations (see
//! `visibility`) and the queue depths, which are counts.

use serde_json::json;

use super::drvs::{log_url, ok_json, respond, ApiError};
use super::AppState;
use crate::scheduler::state::now_ms;

/// The builds running now (only public ones for an anonymous caller), oldest first, and the queue
/// depths: the one reader for `GET /v1/builds/active` and the web UI's dashboard.
pub(super) async fn read_active(
    state: &AppState,
    anonymous: bool,
) -> Result<(Vec<crate::scheduler::ActiveBuild>, Vec<crate::scheduler::QueueDepth>), ApiError> {
    let scheduler = &state.scheduler;
    let mut builds = scheduler.active().await.map_err(|e| ApiError::scheduler("listing active builds", e))?;
    if anonymous {
        let mut shown = Vec::with_capacity(builds.len());
        for b in builds {
            if super::auth::drv_is_public(state, &b.drv).await {
                shown.push(b);
            }
        }
        builds = shown;
    }
    let depths = scheduler.depths().await.map_err(|e| ApiError::scheduler("reading queue depths", e))?;
    builds.sort_by(|a, b| (a.started_at_ms, &a.drv).cmp(&(b.started_at_ms, &b.drv)));
    Ok((builds, depths))
}

async fn active(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let caller = super::auth::caller(&req).await?;
    caller.read_listing(req.state())?;
    let (builds, depths) = read_active(req.state(), caller.is_anonymous()).await?;
    let now = now_ms();
    let builds: Vec<_> = builds
        .iter()
        .map(|b| {
            json!({
                "drv": b.drv,
                "builder": b.builder,
                "attempt": b.attempt,
                "started_at_ms": b.started_at_ms,
                "elapsed_seconds": now.saturating_sub(b.started_at_ms) / 1000,
                "log": log_url(&b.drv, b.attempt),
            })
        })
        .collect();
    let queues: Vec<_> = depths
        .iter()
        .map(|d| json!({ "system": d.system, "queued": d.queued, "buildable": d.buildable, "building": d.building }))
        .collect();
    Ok(ok_json(json!({ "builds": builds, "queues": queues })))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/builds/active").get(|req: tide::Request<AppState>| async move { respond(active(req).await) });
}
