//! `POST /github/webhook`: GitHub's webhook deliveries (see docs/github-webhooks.md).
//!
//! The order is fixed: size limit (Content-Length, then while reading), signature over the raw body,
//! headers, parsing, then one write transaction recording the delivery id and queuing the event before
//! the answer. No network and no Nix in the request path; the queued events are handled later.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_lite::AsyncReadExt;
use serde_json::json;

use super::AppState;
use crate::forge::github::webhook::{
    self, EventKind, Incoming, Intake, DELIVERY_HEADER, EVENT_HEADER, MAX_BODY_BYTES, MAX_DELIVERY_ID_LEN,
    SIGNATURE_HEADER,
};

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/github/webhook").post(|req: tide::Request<AppState>| async move { Ok(handle(req).await) });
}

/// The answer to one delivery and the `outcome` label it is counted under.
struct Reply {
    status: u16,
    outcome: &'static str,
    body: Option<serde_json::Value>,
}

impl Reply {
    fn error(status: u16, outcome: &'static str, message: impl Into<String>) -> Reply {
        Reply { status, outcome, body: Some(json!({ "error": message.into(), "status": status })) }
    }
    fn ok(status: u16, outcome: &'static str, body: serde_json::Value) -> Reply {
        Reply { status, outcome, body: Some(body) }
    }
}

/// The single value of header `name` (names are case-insensitive); `Err` when it is repeated.
fn single_header<'a>(req: &'a tide::Request<AppState>, name: &str) -> Result<Option<&'a str>, ()> {
    match req.header(name) {
        None => Ok(None),
        Some(values) if values.iter().count() == 1 => Ok(Some(values.last().as_str())),
        Some(_) => Err(()),
    }
}

async fn handle(req: tide::Request<AppState>) -> tide::Response {
    let label = req.header(EVENT_HEADER).map_or("other", |v| webhook::metric_label(v.last().as_str()));
    let reply = intake(req).await;
    crate::metrics::global().github_webhooks.with_label_values(&[label, reply.outcome]).inc();
    crate::metrics::global()
        .http_requests
        .with_label_values(&["github", &format!("{}xx", reply.status / 100)])
        .inc();
    let mut res = tide::Response::new(reply.status);
    if let Some(body) = reply.body {
        res.set_body(body);
        res.set_content_type(tide::http::mime::JSON);
    }
    res
}

static WARNED_INSECURE: AtomicBool = AtomicBool::new(false);

/// How many webhook bodies may be read at the same time (each holds up to `MAX_BODY_BYTES`).
const BODIES_IN_FLIGHT: usize = 4;
static BODIES: smol::lock::Semaphore = smol::lock::Semaphore::new(BODIES_IN_FLIGHT);
/// How long a body may take to arrive; GitHub itself gives up on a delivery after 10 s.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

async fn intake(mut req: tide::Request<AppState>) -> Reply {
    let too_large =
        || Reply::error(413, "too_large", format!("request body larger than {MAX_BODY_BYTES} bytes"));
    if req.len().is_some_and(|n| n as u64 > MAX_BODY_BYTES) {
        return too_large();
    }
    // Bodies are read before the signature can be checked, so unauthenticated clients could make us hold
    // up to the limit each: at most BODIES_IN_FLIGHT are read at once, each within BODY_DEADLINE.
    let _permit = BODIES.acquire().await;
    // Never hold more than the limit: a body without (or lying about) its length stops at limit + 1.
    let mut body = Vec::new();
    let mut limited = req.take_body().take(MAX_BODY_BYTES + 1);
    let read = limited.read_to_end(&mut body);
    let deadline = async {
        smol::Timer::after(BODY_DEADLINE).await;
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    match futures_lite::future::or(read, deadline).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            let message = format!("request body not received within {} s", BODY_DEADLINE.as_secs());
            return Reply::error(408, "malformed", message);
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a webhook body failed");
            return Reply::error(400, "malformed", "could not read the request body");
        }
    }
    if body.len() as u64 > MAX_BODY_BYTES {
        return too_large();
    }

    let secret = req.state().webhook_secret.as_ref().filter(|s| !s.is_empty());
    match secret {
        Some(secret) => {
            let Ok(signature) = single_header(&req, SIGNATURE_HEADER) else {
                return Reply::error(401, "unauthorized", "more than one X-Hub-Signature-256 header");
            };
            if let Err(e) = webhook::verify_signature(secret.expose().as_bytes(), &body, signature) {
                tracing::warn!(reason = %e, "refused a webhook delivery");
                return Reply::error(401, "unauthorized", e.to_string());
            }
        }
        None => {
            // The daemon starts without a secret only with `allow_insecure_webhooks = true`.
            if !WARNED_INSECURE.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "accepting unsigned GitHub webhooks: no webhook secret is configured \
                     (allow_insecure_webhooks = true); never do this in production"
                );
            }
        }
    }

    let delivery = match single_header(&req, DELIVERY_HEADER) {
        Ok(Some(d)) if valid_delivery_id(d) => d.to_string(),
        Ok(Some(_)) | Err(()) => {
            return Reply::error(400, "malformed", "X-GitHub-Delivery must be one id of printable ASCII")
        }
        Ok(None) => return Reply::error(400, "malformed", "missing X-GitHub-Delivery header"),
    };
    let event = match single_header(&req, EVENT_HEADER) {
        Ok(Some(e)) if !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()) => {
            e.to_string()
        }
        Ok(Some(_)) | Err(()) => {
            return Reply::error(400, "malformed", "X-GitHub-Event must be one event name")
        }
        Ok(None) => return Reply::error(400, "malformed", "missing X-GitHub-Event header"),
    };
    let kind = webhook::classify(&event);
    let incoming = match kind {
        EventKind::Ping => Incoming::Ping,
        EventKind::Unused => Incoming::Unused(event.clone()),
        EventKind::Used(used) => {
            let form = req.content_type().is_some_and(|m| m.essence() == "application/x-www-form-urlencoded");
            if form {
                return Reply::error(
                    400,
                    "malformed",
                    "form-encoded payloads are not supported: set the webhook's content type to application/json",
                );
            }
            match webhook::parse(used, &body).and_then(|s| webhook::check_model(used, &body).map(|()| s)) {
                Ok(summary) => Incoming::Event(Box::new(summary)),
                Err(e) => {
                    tracing::info!(%delivery, %event, reason = %e, "refused a malformed webhook delivery");
                    return Reply::error(400, "malformed", e.to_string());
                }
            }
        }
    };
    drop(body);

    let store = req.state().graph.store().clone();
    let wake = req.state().github_wake.clone();
    let id = delivery.clone();
    let recorded =
        smol::unblock(move || webhook::record(&store, &id, incoming, crate::store::now_secs())).await;
    match recorded {
        Ok(Intake::Accepted { seq }) => {
            tracing::info!(%delivery, %event, seq, "queued a GitHub event");
            if let Some(wake) = &wake {
                // A full channel already holds a wake-up; the service reads the whole queue each time.
                let _ = wake.try_send(());
            }
            Reply::ok(202, "accepted", json!({ "status": "accepted", "seq": seq }))
        }
        Ok(Intake::Duplicate { .. }) => {
            tracing::info!(%delivery, %event, "GitHub redelivery: already recorded");
            Reply::ok(200, "duplicate", json!({ "status": "duplicate" }))
        }
        Ok(Intake::Ping) => Reply::ok(200, "ignored", json!({ "status": "pong" })),
        Ok(Intake::Ignored) => Reply { status: 204, outcome: "ignored", body: None },
        Err(e) => {
            tracing::error!(%delivery, %event, error = %e, "recording a GitHub delivery failed");
            Reply::error(500, "error", "could not record the delivery")
        }
    }
}

/// GitHub's ids are GUIDs; anything printable and short is accepted as a key.
fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DELIVERY_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}
