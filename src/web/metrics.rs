//! `GET /metrics` (and eka-ci's `/v1/metrics` spelling): the Prometheus text exposition.
//!
//! On the main listener it needs a token (any scope) unless `[web] metrics_public = true`; on the
//! listener of its own (`[web] metrics_address`) it is served without one.

use super::auth::{self, WHY_METRICS};
use super::AppState;
use crate::tokens::Scope;

/// Whether the route asks for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The main listener: a token, unless `metrics_public`.
    Token,
    /// The metrics listener: no token.
    Open,
}

async fn render(req: tide::Request<AppState>, gate: Gate) -> tide::Result {
    if gate == Gate::Token && !req.state().access.metrics_public {
        let allowed = match auth::caller(&req).await {
            Ok(caller) => caller.require(Scope::Read, WHY_METRICS),
            Err(e) => Err(e),
        };
        if let Err(e) = allowed {
            return Ok(e.response());
        }
    }
    Ok(tide::Response::builder(200)
        .body(crate::metrics::render())
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .build())
}

pub fn routes(app: &mut tide::Server<AppState>, gate: Gate) {
    for path in ["/metrics", "/v1/metrics"] {
        app.at(path).get(move |req: tide::Request<AppState>| render(req, gate));
    }
}
