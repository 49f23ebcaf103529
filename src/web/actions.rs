//! The write routes, admin tokens only: `POST /v1/drvs/{drv}/rebuild`, `POST /v1/drvs/{drv}/cancel`,
//! `POST /v1/jobsets/{id}/cancel`,
//! `POST /v1/github/approve`, and the maintainers of `@eka-ci merge`: `GET /v1/github/maintainers`
//! (`?repo=OWNER/NAME` for one repository) and `POST /v1/github/maintainers`
//! (`{"op": "add"|"remove", "repo", "attr", "login"}`).
//!
//! Each checks the token before reading anything else (no token: 401; a read token: 403), then makes
//! the same call the control socket's `Rebuild`, `CancelDrv`, `Cancel` and `Approve` make: the scheduler's
//! `rebuild`, `cancel_drv` and `cancel`, `forge::github::approvals::approve`, and `forge::github::maintainers`. A rebuild answers 202 with the
//! requeued state and does not wait for the build. Nothing here decides anything those calls do not.

use futures_lite::AsyncReadExt;
use serde::Deserialize;
use serde_json::json;

use super::auth::{self, WHY_WRITE};
use super::drvs::{parse_drv_param, respond, state_json, ApiError};
use super::AppState;
use crate::scheduler::{Owner, SchedulerError};
use crate::tokens::Scope;

/// The largest body `POST /v1/github/approve` reads.
const MAX_APPROVE_BODY: u64 = 4096;

/// A scheduler refusal as the API reports it.
fn refused(during: &'static str, e: SchedulerError) -> ApiError {
    match e {
        SchedulerError::UnknownDerivation { path } => ApiError::UnknownDrv { drv: path },
        e @ (SchedulerError::NeverRequested { .. }
        | SchedulerError::NotTerminal { .. }
        | SchedulerError::NotActive { .. }) => ApiError::Conflict { message: e.to_string() },
        other => ApiError::scheduler(during, other),
    }
}

/// Requeues `drv` (the caller is an administrator): the one call behind the API's and the web UI's
/// rebuild. Returns the state after requeueing.
pub(super) async fn rebuild_drv(
    state: &AppState,
    drv: &str,
) -> Result<Option<crate::scheduler::DrvStatus>, ApiError> {
    let scheduler = &state.scheduler;
    scheduler.rebuild(drv).await.map_err(|e| refused("requeueing the derivation", e))?;
    scheduler.state(drv).await.map_err(|e| ApiError::scheduler("reading the build state", e))
}

async fn rebuild(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    auth::caller(&req).await?.require(Scope::Admin, WHY_WRITE)?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let status = rebuild_drv(req.state(), &drv).await?;
    let body = json!({
        "drv": drv,
        "state": status.as_ref().map(|s| state_json(&s.state)),
        "attempt": status.as_ref().map(|s| s.attempt),
    });
    Ok(tide::Response::builder(202).body(body).build())
}

/// Cancels `drv` (queued or building; the caller is an administrator, `by` names them): the one call
/// behind the API's and the web UI's cancel of a derivation. Returns the state after the cancel.
pub(super) async fn cancel_drv(
    state: &AppState,
    drv: &str,
    by: &str,
) -> Result<Option<crate::scheduler::DrvStatus>, ApiError> {
    let scheduler = &state.scheduler;
    let reason = format!("cancelled by {by}");
    scheduler.cancel_drv(drv, &reason).await.map_err(|e| refused("cancelling the derivation", e))?;
    scheduler.state(drv).await.map_err(|e| ApiError::scheduler("reading the build state", e))
}

async fn cancel_drv_route(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let caller = auth::caller(&req).await?;
    caller.require(Scope::Admin, WHY_WRITE)?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let by = format!("api:{}", caller.name().unwrap_or("unknown"));
    let status = cancel_drv(req.state(), &drv, &by).await?;
    let body = json!({ "drv": drv, "state": status.as_ref().map(|s| state_json(&s.state)) });
    Ok(tide::Response::builder(200).body(body).build())
}

async fn cancel(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    auth::caller(&req).await?.require(Scope::Admin, WHY_WRITE)?;
    let id = super::jobsets::parse_id(req.param("id").unwrap_or_default())?;
    cancel_jobset(req.state(), id).await?;
    Ok(tide::Response::builder(200).body(json!({ "jobset": id, "cancelled": true })).build())
}

/// Cancels the builds of jobset `id` (the caller is an administrator): the one call behind the API's and
/// the web UI's cancel.
pub(super) async fn cancel_jobset(state: &AppState, id: crate::jobset::JobsetId) -> Result<(), ApiError> {
    let jobsets = state.jobsets.clone();
    let known =
        smol::unblock(move || jobsets.get(id)).await.map_err(|e| ApiError::store("reading the jobset", e))?;
    if known.is_none() {
        return Err(ApiError::UnknownJobset { id });
    }
    match state.scheduler.cancel(Owner::Jobset(id)).await {
        Ok(()) => Ok(()),
        Err(SchedulerError::UnknownOwner { .. }) => Err(ApiError::NoBuilds { id }),
        Err(e) => Err(refused("cancelling the jobset's builds", e)),
    }
}

/// The body of `POST /v1/github/approve`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    repo: String,
    number: u64,
    /// The commit to approve; it must be the held head (a prefix of 7 or more hex digits is enough).
    #[serde(default)]
    sha: Option<String>,
}

async fn approve(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let caller = auth::caller(&req).await?;
    caller.require(Scope::Admin, WHY_WRITE)?;
    let body: ApproveBody = read_json_body(&mut req, r#"{"repo": "OWNER/NAME", "number": N}"#).await?;
    let by = format!("api:{}", caller.name().unwrap_or("unknown"));
    let (repo, number) = (body.repo.to_ascii_lowercase(), body.number);
    let a = approve_pr(req.state(), &body.repo, body.number, body.sha, by).await?;
    Ok(tide::Response::builder(200)
        .body(json!({ "repo": repo, "number": number, "sha": a.sha, "newly": a.newly }))
        .build())
}

/// Approves pull request `number` of `repo` at `sha` (or its held head) as `by` and tells the GitHub
/// service: the one call behind the API's and the web UI's approve.
pub(super) async fn approve_pr(
    state: &AppState,
    repo: &str,
    number: u64,
    sha: Option<String>,
    by: String,
) -> Result<crate::forge::github::approvals::Approved, ApiError> {
    let (store, notify, repo) = (state.store.clone(), state.approvals.clone(), repo.to_string());
    let approved = smol::unblock(move || {
        crate::forge::github::approvals::approve_and_notify(
            &store,
            notify.as_ref(),
            &repo,
            number,
            sha.as_deref(),
            &by,
        )
    })
    .await;
    match approved {
        Ok(a) => Ok(a),
        Err(e) if e.is_invalid() => Err(ApiError::BadBody { reason: e.to_string() }),
        Err(e) => {
            tracing::error!(error = %e, "HTTP API: recording an approval failed");
            Err(ApiError::Internal { during: "recording the approval" })
        }
    }
}

/// Reads a small JSON body (at most [`MAX_APPROVE_BODY`] bytes) into `T`; the error names the
/// expected shape and where parsing stopped, never the body's content.
async fn read_json_body<T: serde::de::DeserializeOwned>(
    req: &mut tide::Request<AppState>,
    expected: &str,
) -> Result<T, ApiError> {
    let raw = read_small_body(req).await?;
    serde_json::from_slice(&raw).map_err(|e| ApiError::BadBody {
        reason: format!("expected {expected} (line {}, column {}: {:?})", e.line(), e.column(), e.classify()),
    })
}

/// Reads a body of at most [`MAX_APPROVE_BODY`] bytes.
pub(super) async fn read_small_body(req: &mut tide::Request<AppState>) -> Result<Vec<u8>, ApiError> {
    let mut raw = Vec::new();
    req.take_body()
        .into_reader()
        .take(MAX_APPROVE_BODY + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| ApiError::BadBody { reason: format!("cannot read it: {}", e.kind()) })?;
    if raw.len() as u64 > MAX_APPROVE_BODY {
        return Err(ApiError::BadBody { reason: format!("larger than {MAX_APPROVE_BODY} bytes") });
    }
    Ok(raw)
}

/// The body of `POST /v1/github/maintainers`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintainerBody {
    op: MaintainerOp,
    repo: String,
    attr: String,
    login: String,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum MaintainerOp {
    Add,
    Remove,
}

async fn change_maintainer(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    use crate::forge::github::maintainers;
    let caller = auth::caller(&req).await?;
    caller.require(Scope::Admin, WHY_WRITE)?;
    let body: MaintainerBody = read_json_body(
        &mut req,
        r#"{"op": "add"|"remove", "repo": "OWNER/NAME", "attr": "ATTR", "login": "LOGIN"}"#,
    )
    .await?;
    maintainers::validate(&body.repo, &body.attr, &body.login)
        .map_err(|e| ApiError::BadBody { reason: e.to_string() })?;
    let by = format!("api:{}", caller.name().unwrap_or("unknown"));
    let (repo, login) = (body.repo.to_ascii_lowercase(), body.login.to_ascii_lowercase());
    let (store, r, a, l, op) =
        (req.state().store.clone(), repo.clone(), body.attr.clone(), login.clone(), body.op);
    let changed = smol::unblock(move || match op {
        MaintainerOp::Add => maintainers::add(&store, &r, &a, &l, &by),
        MaintainerOp::Remove => maintainers::remove(&store, &r, &a, &l),
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "HTTP API: changing the maintainers failed");
        ApiError::Internal { during: "changing the maintainers" }
    })?;
    Ok(tide::Response::builder(200)
        .body(json!({ "repo": repo, "attr": body.attr, "login": login, "changed": changed }))
        .build())
}

async fn list_maintainers(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    auth::caller(&req).await?.require(Scope::Admin, WHY_WRITE)?;
    let mut repo = None;
    for (k, v) in req.url().query_pairs() {
        if k == "repo" {
            crate::forge::github::approvals::validate_repo(&v).map_err(|_| ApiError::BadQuery {
                param: "repo",
                value: v.chars().take(100).collect(),
                reason: "expected OWNER/NAME",
            })?;
            repo = Some(v.into_owned());
        }
    }
    let store = req.state().store.clone();
    let rows = smol::unblock(move || crate::forge::github::maintainers::list(&store, repo.as_deref()))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "HTTP API: listing the maintainers failed");
            ApiError::Internal { during: "listing the maintainers" }
        })?;
    Ok(tide::Response::builder(200).body(json!({ "maintainers": rows })).build())
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/drvs/:drv/rebuild")
        .post(|req: tide::Request<AppState>| async move { respond(rebuild(req).await) });
    app.at("/v1/drvs/:drv/cancel")
        .post(|req: tide::Request<AppState>| async move { respond(cancel_drv_route(req).await) });
    app.at("/v1/jobsets/:id/cancel")
        .post(|req: tide::Request<AppState>| async move { respond(cancel(req).await) });
    app.at("/v1/github/approve")
        .post(|req: tide::Request<AppState>| async move { respond(approve(req).await) });
    app.at("/v1/github/maintainers")
        .get(|req: tide::Request<AppState>| async move { respond(list_maintainers(req).await) })
        .post(|req: tide::Request<AppState>| async move { respond(change_maintainer(req).await) });
}
