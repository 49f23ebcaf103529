//! `GET /healthz`: liveness for load balancers and systemd watchdogs.

use super::AppState;

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/healthz").get(|req: tide::Request<AppState>| async move {
        let body = serde_json::json!({
            "status": "ok",
            "version": crate::VERSION,
            "uptime_seconds": req.state().started.elapsed().as_secs(),
        });
        Ok(tide::Response::builder(200).body(body).build())
    });
}
