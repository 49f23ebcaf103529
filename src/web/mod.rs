//! The HTTP server: tide's router served on our smol executor through async-h1.
//!
//! This module owns the listener, the connection loop and the route table; one file per route group:
//!
//! | file | routes |
//! | --- | --- |
//! | `health.rs` | `GET /healthz` |
//! | `metrics.rs` | `GET /metrics` (Prometheus text format) |
//! | `drvs.rs` | `GET /v1/drvs/{drv}` |
//! | `logs.rs` | `GET /v1/logs/{drv}` |
//! | `builds.rs` | `GET /v1/builds/active` |
//! | `builders.rs` | `GET /v1/builders` (any token) |
//! | `jobsets.rs` | `GET /v1/jobsets/{id}` |
//! | `checks.rs` | `GET /v1/commits/{sha}/checks`, `…/checks/{name}/output` |
//! | `summary.rs` | `GET /v1/commits/{sha}/change-summary`, `…/change-summary.md`, `…/package-changes`, `…/rebuild-impact` |
//! | `github.rs` | `POST /github/webhook` |
//! | `auto_merge.rs` | `POST /v1/prs/{owner}/{repo}/{n}/enable-auto-merge`, `…/disable-auto-merge` (admin, or a maintainer's GitHub token) |
//! | `ui/` | `GET /ui/…`: the web UI's HTML pages (see `ui/mod.rs`) |
//! | `ws.rs` | `GET /v1/ws/builds`: live build events over a WebSocket (`conn.rs` hands it the connection) |
//! | `ws_stats.rs` | no route: the task that sends `job_stats_update` on `/v1/ws/builds` |
//! | `actions.rs` | `POST /v1/drvs/{drv}/rebuild`, `POST /v1/jobsets/{id}/cancel`, `POST /v1/github/approve`, `GET`/`POST /v1/github/maintainers` (admin) |
//!
//! `conn.rs` is not a route group either: it serves one connection (the connection cap with its webhook
//! reserve, bounded request heads, header and body idle timeouts, 413 closing the connection).
//! `auth.rs` is not a route group: it identifies the caller (bearer tokens) and holds the read rules
//! every route applies. There are up to three listeners, each with its own route table built here and
//! served by the one [`serve`]: the main one ([`app`]), `[web] metrics_address` ([`metrics_app`]:
//! `/metrics` and `/healthz` without a token) and `[web] webhook_address` ([`webhook_app`]: only
//! `POST /github/webhook`). A route given its own listener is not on the main one.
//!
//! It must never start another runtime: tide is used only as a router through `tide::Server::respond`,
//! and every connection is a task on the daemon's executor.

mod actions;
pub mod auth;
mod auto_merge;
mod builders;
mod builds;
mod checks;
pub mod conn;
mod drvs;
mod github;
mod health;
mod jobsets;
mod logs;
mod metrics;
mod summary;
pub mod ui;
pub mod ws;
pub mod ws_stats;

use std::rc::Rc;

pub use github::IntakeWriter;
pub use jobsets::{read_page_blocking, AttrFilter, PageError, PageRead};
use smol::net::TcpListener;
use tide::http::StatusCode;

/// State shared by every route.
#[derive(Clone)]
pub struct AppState {
    pub started: std::time::Instant,
    /// The build scheduler: derivation states, active builds.
    pub scheduler: crate::scheduler::SchedulerHandle,
    /// The derivation graph: dependencies and dependents.
    pub graph: crate::graph::Graph,
    /// Jobsets: headers and attributes.
    pub jobsets: crate::jobset::Jobsets,
    /// Where build logs are (`<logs_dir>/<drv hash>/<attempt>.log`).
    pub logs_dir: std::path::PathBuf,
    /// `security.webhook_secret`; `None` only with `allow_insecure_webhooks` (the daemon refuses otherwise).
    pub webhook_secret: Option<crate::secret::Secret>,
    /// The database (change summaries read jobsets, the graph and their cache through it).
    pub store: crate::store::Store,
    /// Wakes the GitHub service after an event was queued; `None` when no GitHub App is configured
    /// (events then wait in the queue until one is).
    pub github_wake: Option<async_channel::Sender<()>>,
    /// What may be read without a token (`[web] public_read`, `metrics_public`).
    pub access: auth::Access,
    /// Where approvals made through `POST /v1/github/approve` are announced (the GitHub service);
    /// `None` without one.
    pub approvals: Option<async_channel::Sender<crate::forge::github::approvals::ApprovalNotice>>,
    /// The GitHub API URL (`[github] api_url`) when a GitHub App is configured: a maintainer's own GitHub
    /// token is checked there (auto-merge routes).
    pub github_api: Option<String>,
    /// Writes webhook deliveries, several per transaction.
    pub intake: IntakeWriter,
    /// The web UI's sign-in: `[oauth]`, the session signer, `[web] admins`.
    pub ui: std::sync::Arc<ui::login::UiAuth>,
    /// GitHub's web address (`https://{github.git_host}`): the web UI links to check runs under it.
    pub github_web: String,
}

/// Which routes the main listener leaves to a listener of their own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Split {
    /// `[web] metrics_address` is set: no `/metrics` here.
    pub metrics: bool,
    /// `[web] webhook_address` is set: no `POST /github/webhook` here.
    pub webhook: bool,
}

fn with_errors(state: AppState) -> tide::Server<AppState> {
    let mut app = tide::with_state(state);
    app.with(tide::utils::After(json_errors));
    app
}

/// The main listener's route table.
pub fn app(state: AppState, split: Split) -> tide::Server<AppState> {
    let mut app = with_errors(state);
    health::routes(&mut app);
    if !split.metrics {
        metrics::routes(&mut app, metrics::Gate::Token);
    }
    drvs::routes(&mut app);
    logs::routes(&mut app);
    builds::routes(&mut app);
    builders::routes(&mut app);
    jobsets::routes(&mut app);
    if !split.webhook {
        github::routes(&mut app);
    }
    summary::routes(&mut app);
    checks::routes(&mut app);
    actions::routes(&mut app);
    auto_merge::routes(&mut app);
    ui::routes(&mut app);
    ws::routes(&mut app);
    app
}

/// The route table of `[web] metrics_address`: `/metrics` and `/healthz`, without a token.
pub fn metrics_app(state: AppState) -> tide::Server<AppState> {
    let mut app = with_errors(state);
    health::routes(&mut app);
    metrics::routes(&mut app, metrics::Gate::Open);
    app
}

/// The route table of `[web] webhook_address`: `POST /github/webhook` only.
pub fn webhook_app(state: AppState) -> tide::Server<AppState> {
    let mut app = with_errors(state);
    github::routes(&mut app);
    app
}

/// Turns tide's empty error responses (unknown route, wrong method) into JSON error bodies and counts
/// every response by status class.
async fn json_errors(mut res: tide::Response) -> tide::Result {
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        let empty = res.is_empty().unwrap_or(true);
        if empty {
            let message = match status {
                StatusCode::NotFound => "no such route".to_string(),
                StatusCode::MethodNotAllowed => "method not allowed on this route".to_string(),
                other => other.canonical_reason().to_lowercase(),
            };
            res.set_body(serde_json::json!({ "error": message, "status": status as u16 }));
            res.set_content_type(tide::http::mime::JSON);
        }
    }
    let class = format!("{}xx", status as u16 / 100);
    crate::metrics::global().http_requests.with_label_values(&["all", &class]).inc();
    Ok(res)
}

/// Accepts connections forever, serving each on its own task of `ex` under the limits of `gate` (shared
/// by every listener; see `conn.rs`).
pub async fn serve(
    ex: Rc<smol::LocalExecutor<'static>>,
    listener: TcpListener,
    app: tide::Server<AppState>,
    gate: Rc<conn::Gate>,
    kind: conn::Listener,
) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        // async-h1 writes a response's head and body separately: without this, Nagle's algorithm holds
        // the body until the client's delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
        let app = app.clone();
        let gate = gate.clone();
        ex.spawn(async move { conn::serve_connection(&gate, kind, stream, app).await }).detach();
    }
}
