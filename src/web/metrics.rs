//! `GET /metrics` (and eka-ci's `/v1/metrics` spelling): the Prometheus text exposition.

use super::AppState;

pub fn routes(app: &mut tide::Server<AppState>) {
    for path in ["/metrics", "/v1/metrics"] {
        app.at(path).get(|_req: tide::Request<AppState>| async move {
            Ok(tide::Response::builder(200)
                .body(crate::metrics::render())
                .content_type("text/plain; version=0.0.4; charset=utf-8")
                .build())
        });
    }
}
