//! `GET /v1/builders`: every builder (the local machine, the fixed-output pool, each remote machine) with
//! its systems, slots, features, health (`up`, `down` with the reason, `unknown` before the first probe)
//! and the builds running on it now.
//!
//! Builders describe the server's own infrastructure (host names of build machines), so the route needs
//! a token of any scope; it is never served anonymously, whatever `[web] public_read` says.

use serde_json::json;

use super::drvs::{ok_json, respond, ApiError};
use super::AppState;
use crate::scheduler::Health;
use crate::tokens::Scope;

/// Why an anonymous caller is refused.
const WHY_BUILDERS: &str = ": /v1/builders names the server's build machines and needs a token";

async fn list(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    super::auth::caller(&req).await?.require(Scope::Read, WHY_BUILDERS)?;
    let builders =
        req.state().scheduler.builders().await.map_err(|e| ApiError::scheduler("listing the builders", e))?;
    let builders: Vec<_> = builders
        .iter()
        .map(|b| {
            let reason = match &b.health {
                Health::Down { reason } => Some(reason.as_str()),
                _ => None,
            };
            json!({
                "name": b.name,
                "kind": b.kind,
                "systems": b.systems,
                "max_jobs": b.max_jobs,
                "speed_factor": b.speed_factor,
                "supported_features": b.supported_features,
                "mandatory_features": b.mandatory_features,
                "health": b.health.name(),
                "reason": reason,
                "since_ms": b.since_ms,
                "last_probe_ms": b.last_probe_ms,
                "failed_probes": b.failed_probes,
                "building": b.building,
            })
        })
        .collect();
    Ok(ok_json(json!({ "builders": builders })))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/builders").get(|req: tide::Request<AppState>| async move { respond(list(req).await) });
}
