//! `GET /healthz`: liveness for load balancers and systemd watchdogs. It answers 200 while every
//! supervised service loop runs, and 503 naming each loop that is down (panicked or failed, waiting to
//! restart; see `supervise`) until it runs again. It names loops and says `panicked` or `failed`, never a
//! panic's message (that is logged).

use super::AppState;

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/healthz").get(|req: tide::Request<AppState>| async move {
        let down = crate::supervise::down();
        let uptime = req.state().started.elapsed().as_secs();
        if down.is_empty() {
            let body = serde_json::json!({
                "status": "ok",
                "version": crate::VERSION,
                "uptime_seconds": uptime,
            });
            return Ok(tide::Response::builder(200).body(body).build());
        }
        let services: serde_json::Map<String, serde_json::Value> = down
            .into_iter()
            .map(|(name, why)| (name.to_string(), serde_json::Value::String(why.to_string())))
            .collect();
        let body = serde_json::json!({
            "status": "degraded",
            "version": crate::VERSION,
            "uptime_seconds": uptime,
            "down": services,
        });
        Ok(tide::Response::builder(503).body(body).build())
    });
}
