//! `POST /github/webhook`: GitHub's webhook deliveries (see docs/github-webhooks.md).
//!
//! The order is fixed: size limit (Content-Length, then while reading), signature over the raw body,
//! headers, parsing, then one write transaction recording the delivery id and queuing the event before
//! the answer; [`IntakeWriter`] writes the deliveries that arrive together in one transaction (group
//! commit). No network and no Nix in the request path; the queued events are handled later.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_lite::AsyncReadExt;
use serde_json::json;

use super::AppState;
use crate::forge::github::webhook::{
    self, EventKind, Incoming, Intake, DELIVERY_HEADER, EVENT_HEADER, MAX_BODY_BYTES, MAX_DELIVERY_ID_LEN,
    SIGNATURE_HEADER,
};
use crate::store::{Store, StoreError};

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

/// How many body bytes all webhook deliveries being read may hold together: bytes are charged as they
/// arrive, so a client that stalls after one byte holds one byte, never a slot others wait for.
const BODY_BUDGET: u64 = 4 * MAX_BODY_BYTES;
static BODY_BYTES: AtomicU64 = AtomicU64::new(0);
/// How long a body may take to arrive; GitHub itself gives up on a delivery after 10 s.
const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Body bytes charged to [`BODY_BUDGET`]; returned on drop.
struct Charge(u64);

impl Charge {
    fn add(&mut self, n: u64) -> bool {
        let before = BODY_BYTES.fetch_add(n, Ordering::Relaxed);
        self.0 += n;
        before + n <= BODY_BUDGET
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        BODY_BYTES.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Reads the whole body, at most `MAX_BODY_BYTES` + 1 bytes; `Ok(None)` when the budget is spent.
async fn read_body(
    req: &mut tide::Request<AppState>,
    charge: &mut Charge,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    let mut reader = req.take_body();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(body));
        }
        if !charge.add(n as u64) {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() as u64 > MAX_BODY_BYTES {
            return Ok(Some(body));
        }
    }
}

async fn intake(mut req: tide::Request<AppState>) -> Reply {
    let too_large =
        || Reply::error(413, "too_large", format!("request body larger than {MAX_BODY_BYTES} bytes"));
    if req.len().is_some_and(|n| n as u64 > MAX_BODY_BYTES) {
        return too_large();
    }
    // Bodies are read before the signature can be checked, so unauthenticated clients could make us hold
    // bytes: all bodies being read share BODY_BUDGET, each within BODY_DEADLINE (and the connection's
    // idle timeout), and never more than the limit (+ 1, to tell it was exceeded).
    let mut charge = Charge(0);
    let read = read_body(&mut req, &mut charge);
    let deadline = async {
        smol::Timer::after(BODY_DEADLINE).await;
        Err(std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    let body = match futures_lite::future::or(read, deadline).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            return Reply::error(503, "busy", "too many webhook bodies being received; retry later");
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            let message = format!("request body not received within {} s", BODY_DEADLINE.as_secs());
            return Reply::error(408, "malformed", message);
        }
        Err(e) => {
            tracing::debug!(error = %e, "reading a webhook body failed");
            return Reply::error(400, "malformed", "could not read the request body");
        }
    };
    if body.len() as u64 > MAX_BODY_BYTES {
        return too_large();
    }

    // Headers are read here; the signature check and parsing (CPU work over a body of up to 25 MiB)
    // run on the blocking pool, off the executor that serves every connection.
    let secret = req.state().webhook_secret.clone().filter(|s| !s.is_empty());
    let signature = single_header(&req, SIGNATURE_HEADER).map(|s| s.map(str::to_string));
    let delivery = single_header(&req, DELIVERY_HEADER).map(|s| s.map(str::to_string));
    let event = single_header(&req, EVENT_HEADER).map(|s| s.map(str::to_string));
    let form = req.content_type().is_some_and(|m| m.essence() == "application/x-www-form-urlencoded");
    let checked =
        smol::unblock(move || check_and_parse(secret.as_ref(), signature, delivery, event, form, body)).await;
    let (delivery, event, incoming) = match checked {
        Ok(checked) => checked,
        Err(reply) => return reply,
    };

    let wake = req.state().github_wake.clone();
    let recorded = req.state().intake.record(delivery.clone(), incoming).await;
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
        Ok(Intake::Stale) => {
            tracing::info!(%delivery, %event, "stale pull_request event: older than one already seen; not queued");
            Reply::ok(200, "stale", json!({ "status": "stale" }))
        }
        Ok(Intake::Ping) => Reply::ok(200, "ignored", json!({ "status": "pong" })),
        Ok(Intake::Ignored) => Reply { status: 204, outcome: "ignored", body: None },
        Err(e) => {
            tracing::error!(%delivery, %event, error = %e, "recording a GitHub delivery failed");
            Reply::error(500, "error", "could not record the delivery")
        }
    }
}

/// What a delivery's headers said: a single value, none, or `Err` when repeated.
type HeaderValue = Result<Option<String>, ()>;

/// The blocking half of [`intake`], in its fixed order: the signature over the raw body, the headers,
/// then parsing. Returns the delivery id, the event name and what to record, or the answer.
fn check_and_parse(
    secret: Option<&crate::secret::Secret>,
    signature: HeaderValue,
    delivery: HeaderValue,
    event: HeaderValue,
    form: bool,
    body: Vec<u8>,
) -> Result<(String, String, Incoming), Reply> {
    match secret {
        Some(secret) => {
            let Ok(signature) = signature else {
                return Err(Reply::error(401, "unauthorized", "more than one X-Hub-Signature-256 header"));
            };
            if let Err(e) = webhook::verify_signature(secret.expose().as_bytes(), &body, signature.as_deref())
            {
                tracing::warn!(reason = %e, "refused a webhook delivery");
                return Err(Reply::error(401, "unauthorized", e.to_string()));
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

    let delivery = match delivery {
        Ok(Some(d)) if valid_delivery_id(&d) => d,
        Ok(Some(_)) | Err(()) => {
            return Err(Reply::error(400, "malformed", "X-GitHub-Delivery must be one id of printable ASCII"))
        }
        Ok(None) => return Err(Reply::error(400, "malformed", "missing X-GitHub-Delivery header")),
    };
    let event = match event {
        Ok(Some(e)) if !e.is_empty() && e.len() <= 64 && e.bytes().all(|b| b.is_ascii_graphic()) => e,
        Ok(Some(_)) | Err(()) => {
            return Err(Reply::error(400, "malformed", "X-GitHub-Event must be one event name"))
        }
        Ok(None) => return Err(Reply::error(400, "malformed", "missing X-GitHub-Event header")),
    };
    let incoming = match webhook::classify(&event) {
        EventKind::Ping => Incoming::Ping,
        EventKind::Unused => Incoming::Unused(event.clone()),
        EventKind::Used(used) => {
            if form {
                return Err(Reply::error(
                    400,
                    "malformed",
                    "form-encoded payloads are not supported: set the webhook's content type to application/json",
                ));
            }
            match webhook::parse(used, &body) {
                Ok(summary) => {
                    let updated_at = webhook::pull_request_updated_at(&body);
                    // GitHub's payloads change; when the fields we read are there, a payload octocrab's
                    // model rejects is still processed, with a warning and a count. The check is not
                    // needed for the answer, so it runs after it.
                    let (d, e) = (delivery.clone(), event.clone());
                    smol::unblock(move || {
                        if let Err(reason) = webhook::check_model(used, &body) {
                            tracing::warn!(delivery = %d, event = %e, %reason, "processing a delivery octocrab's model rejects: the fields we need are present");
                            crate::metrics::global()
                                .github_events_lenient
                                .with_label_values(&[used.name()])
                                .inc();
                        }
                    })
                    .detach();
                    Incoming::Event { summary: Box::new(summary), updated_at }
                }
                Err(e) => {
                    tracing::info!(%delivery, %event, reason = %e, "refused a malformed webhook delivery");
                    return Err(Reply::error(400, "malformed", e.to_string()));
                }
            }
        }
    };
    Ok((delivery, event, incoming))
}

/// GitHub's ids are GUIDs; anything printable and short is accepted as a key.
fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_DELIVERY_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Most deliveries written in one transaction.
const MAX_BATCH: usize = 512;

/// One delivery waiting for the intake writer, with where its answer goes.
struct Job {
    id: String,
    incoming: Incoming,
    reply: async_channel::Sender<Result<Intake, Arc<StoreError>>>,
}

/// The one writer of webhook deliveries: every delivery that arrives while a transaction commits is
/// written by the next one (group commit), so each is still persisted before its answer but many share
/// one commit and its fsync.
#[derive(Clone)]
pub struct IntakeWriter {
    jobs: async_channel::Sender<Job>,
}

impl IntakeWriter {
    /// Starts the writer on `ex`; it ends when every clone of the writer is dropped.
    pub fn spawn(ex: &smol::LocalExecutor<'static>, store: Store) -> IntakeWriter {
        let (jobs, queue) = async_channel::unbounded::<Job>();
        ex.spawn(async move {
            while let Ok(first) = queue.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|j| ((j.id, j.incoming), j.reply)).unzip();
                let store = store.clone();
                let written =
                    smol::unblock(move || webhook::record_batch(&store, items, crate::store::now_secs()))
                        .await;
                match written {
                    Ok(intakes) => {
                        for (reply, intake) in replies.into_iter().zip(intakes) {
                            let _ = reply.try_send(Ok(intake));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.try_send(Err(e.clone()));
                        }
                    }
                }
            }
        })
        .detach();
        IntakeWriter { jobs }
    }

    /// Records one delivery (see [`webhook::record`]); answers once its transaction is committed.
    pub async fn record(&self, id: String, incoming: Incoming) -> Result<Intake, Arc<StoreError>> {
        let (reply, answer) = async_channel::bounded(1);
        let stopped = || {
            Arc::new(StoreError::Missing {
                table: "github_deliveries",
                key: "(intake writer stopped)".into(),
            })
        };
        if self.jobs.send(Job { id, incoming, reply }).await.is_err() {
            return Err(stopped());
        }
        answer.recv().await.unwrap_or_else(|_| Err(stopped()))
    }
}
