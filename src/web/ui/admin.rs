//! What administrators (`[web] admins`, signed in) see and do in the web UI: `/ui/admin` (the runs
//! waiting for approval, the signed-in sessions with a Revoke button, the API tokens), and the actions
//! `POST /ui/drvs/{drv}/rebuild`, `POST /ui/drvs/{drv}/cancel` (one derivation, queued or building),
//! `POST /ui/jobsets/{id}/cancel` (a jobset's builds), `POST /ui/approve`
//! (a run held for approval) and
//! `POST /ui/admin/sessions/revoke`. Every action is a form carrying
//! the session's CSRF token (checked before anything else: a missing or wrong one answers 403), then
//! needs an administrator (403 otherwise), then makes the same call as the API's admin route.

use maud::{html, Markup};

use super::login::{check_csrf, form, viewer, Viewer};
use super::{commit_href, drv_href, layout, respond};
use crate::forge::github::runs::{self, RunState};
use crate::web::drvs::{parse_drv_param, ApiError};
use crate::web::AppState;

/// The administrator among viewers: a session of a login in `[web] admins`.
fn require_admin(viewer: &Viewer) -> Result<(), ApiError> {
    match &viewer.user {
        Some(u) if u.admin => Ok(()),
        Some(_) => Err(ApiError::NotAdmin),
        None => Err(ApiError::Auth(crate::web::auth::AuthError::Missing {
            why: ": sign in with GitHub as an administrator ([web] admins)",
        })),
    }
}

async fn page(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    let viewer = viewer(&req).await?;
    require_admin(&viewer)?;
    let store = req.state().store.clone();
    let tokens = smol::unblock(move || crate::tokens::list(&store)).await.map_err(|e| {
        tracing::error!(error = %e, "web UI: listing API tokens failed");
        ApiError::Internal { during: "listing API tokens" }
    })?;
    let store = req.state().store.clone();
    let (sessions, waiting) = smol::unblock(move || {
        let sessions = super::session::list(&store)?;
        let waiting: Vec<runs::Run> = runs::all(&store)?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.state == RunState::AwaitingApproval)
            .collect();
        Ok::<_, crate::store::StoreError>((sessions, waiting))
    })
    .await
    .map_err(|e| ApiError::store("reading the admin page", e))?;
    let csrf = viewer.user.as_ref().map(|u| u.csrf.clone()).unwrap_or_default();
    Ok(layout(
        Some(&viewer),
        "Administration",
        html! {
            h2 { "Waiting for approval" }
            table id="approvals" {
                tr { th { "repository" } th { "pull request" } th { "head" } th { "since" } }
                @for r in &waiting {
                    tr {
                        td { (r.repo) }
                        td { @if let Some(n) = r.pull_request() { "#" (n) } }
                        td.mono { a href=(commit_href(&r.head_sha)) { (crate::text::short_sha(&r.head_sha)) } }
                        td { (crate::time::readable(r.updated_at)) " " (approve_button(&viewer, r)) }
                    }
                }
                @if waiting.is_empty() { tr { td colspan="4" .muted { "none" } } }
            }
            p.muted { "Or approve with " code { "ekaci approve OWNER/NAME#N" } "." }
            h2 { "Signed-in sessions" }
            table id="sessions" {
                tr { th { "login" } th { "since" } th { "expires" } th {} }
                @for (key, s) in &sessions {
                    tr {
                        td.login { (s.login) }
                        td { (crate::time::readable(s.created_at)) }
                        td { (crate::time::readable(s.expires_at)) }
                        td {
                            form.inline method="post" action="/ui/admin/sessions/revoke" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="key" value=(key);
                                button.revoke type="submit" { "Revoke" }
                            }
                        }
                    }
                }
            }
            h2 { "API tokens" }
            table id="tokens" {
                tr { th { "name" } th { "scope" } th { "created" } th { "last used" } }
                @for t in &tokens {
                    tr {
                        td { (t.name) } td { (t.scope.name()) } td { (crate::time::readable(t.created_at)) }
                        td { (t.last_used_at.map(crate::time::readable).unwrap_or_else(|| "never".into())) }
                    }
                }
                @if tokens.is_empty() { tr { td colspan="4" .muted { "none" } } }
            }
            p.muted { "Create and revoke tokens with " code { "ekaci tokens" } "." }
        },
    ))
}

/// The Rebuild button of a derivation page (administrators only).
pub(super) fn rebuild_button(viewer: &Viewer, drv: &str) -> Markup {
    html! {
        @if let Some(u) = viewer.user.as_ref().filter(|u| u.admin) {
            form.inline method="post" action={ (drv_href(drv)) "/rebuild" } {
                input type="hidden" name="csrf" value=(u.csrf);
                button id="rebuild" type="submit" { "Rebuild" }
            }
        }
    }
}

fn see_other(to: &str) -> tide::Response {
    tide::Response::builder(303).header("Location", to).build()
}

/// The fields of an administrator's form: the CSRF token first, then the administrator.
async fn admin_form(
    req: &mut tide::Request<AppState>,
) -> Result<(super::login::SignedIn, std::collections::HashMap<String, String>), ApiError> {
    let viewer = viewer(req).await?;
    let fields = form(req).await?;
    let user = check_csrf(&viewer, &fields)?.clone();
    if !user.admin {
        return Err(ApiError::NotAdmin);
    }
    Ok((user, fields))
}

async fn rebuild(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (user, _) = admin_form(&mut req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    crate::web::actions::rebuild_drv(req.state(), &drv).await?;
    tracing::info!(login = %user.login, drv = %drv, "web UI: rebuild requested");
    Ok(see_other(&drv_href(&drv)))
}

/// The Cancel button of a derivation page for a derivation not final yet (queued, buildable, building,
/// waiting for a retry): cancels that one derivation (administrators only).
pub(super) fn cancel_drv_button(
    viewer: &Viewer,
    drv: &str,
    state: Option<&crate::scheduler::DrvState>,
) -> Markup {
    html! {
        @if let (Some(u), Some(_)) = (viewer.user.as_ref().filter(|u| u.admin), state.filter(|s| !s.is_terminal())) {
            form.inline method="post" action={ (drv_href(drv)) "/cancel" } {
                input type="hidden" name="csrf" value=(u.csrf);
                button id="cancel-drv" type="submit" { "Cancel" }
            }
        }
    }
}

async fn cancel_drv(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (user, _) = admin_form(&mut req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    crate::web::actions::cancel_drv(req.state(), &drv, &format!("web:{}", user.login)).await?;
    tracing::info!(login = %user.login, drv = %drv, "web UI: derivation cancelled");
    Ok(see_other(&drv_href(&drv)))
}

/// The Cancel button of a jobset page: cancels the builds of the jobset (administrators only).
pub(super) fn cancel_button(viewer: &Viewer, id: crate::jobset::JobsetId) -> Markup {
    html! {
        @if let Some(u) = viewer.user.as_ref().filter(|u| u.admin) {
            form.inline method="post" action={ (super::jobset_href(id)) "/cancel" } {
                input type="hidden" name="csrf" value=(u.csrf);
                button id="cancel" type="submit" { "Cancel builds" }
            }
        }
    }
}

async fn cancel(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (user, _) = admin_form(&mut req).await?;
    let id = crate::web::jobsets::parse_id(req.param("id").unwrap_or_default())?;
    crate::web::actions::cancel_jobset(req.state(), id).await?;
    tracing::info!(login = %user.login, jobset = id.0, "web UI: jobset builds cancelled");
    Ok(see_other(&format!("{}?cancelled=1", super::jobset_href(id))))
}

/// The Approve button of a run held for approval (administrators only).
pub(super) fn approve_button(viewer: &Viewer, run: &runs::Run) -> Markup {
    html! {
        @if let (Some(u), Some(number), RunState::AwaitingApproval) =
            (viewer.user.as_ref().filter(|u| u.admin), run.pull_request(), &run.state)
        {
            form.inline method="post" action="/ui/approve" {
                input type="hidden" name="csrf" value=(u.csrf);
                input type="hidden" name="repo" value=(run.repo);
                input type="hidden" name="number" value=(number);
                input type="hidden" name="sha" value=(run.head_sha);
                button.approve type="submit" { "Approve" }
            }
        }
    }
}

async fn approve(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (user, fields) = admin_form(&mut req).await?;
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let number = field("number")
        .parse::<u64>()
        .map_err(|_| ApiError::BadBody { reason: "`number` is not a pull request number".into() })?;
    let sha = field("sha");
    let a = crate::web::actions::approve_pr(
        req.state(),
        &field("repo"),
        number,
        Some(sha),
        format!("web:{}", user.login),
    )
    .await?;
    tracing::info!(login = %user.login, number, "web UI: pull request approved");
    Ok(see_other(&commit_href(&a.sha)))
}

async fn revoke(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (_, fields) = admin_form(&mut req).await?;
    let key = fields.get("key").cloned().unwrap_or_default();
    let store = req.state().store.clone();
    smol::unblock(move || super::session::revoke_key(&store, &key))
        .await
        .map_err(|e| ApiError::store("revoking the session", e))?;
    Ok(see_other("/ui/admin"))
}

fn act(result: Result<tide::Response, ApiError>) -> tide::Result {
    Ok(result.unwrap_or_else(|e| super::error_page(&e)))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/ui/admin").get(|req: tide::Request<AppState>| async move { respond(page(req).await) });
    app.at("/ui/admin/sessions/revoke")
        .post(|req: tide::Request<AppState>| async move { act(revoke(req).await) });
    app.at("/ui/jobsets/:id/cancel")
        .post(|req: tide::Request<AppState>| async move { act(cancel(req).await) });
    app.at("/ui/approve").post(|req: tide::Request<AppState>| async move { act(approve(req).await) });
    app.at("/ui/drvs/:drv/cancel")
        .post(|req: tide::Request<AppState>| async move { act(cancel_drv(req).await) });
    app.at("/ui/drvs/:drv/rebuild")
        .post(|req: tide::Request<AppState>| async move { act(rebuild(req).await) });
}
