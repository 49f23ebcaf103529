//! The auto-merge routes of eka-ci's API: `POST /v1/prs/{owner}/{repo}/{n}/enable-auto-merge` (body
//! `{"merge_method": "merge"|"squash"|"rebase"}`, optional) and `POST …/disable-auto-merge`
//! (docs/http-api.md, docs/merge.md "Auto-merge").
//!
//! Who may: an administrator (an eka-ci token of scope admin, `Authorization: Bearer ekaci_…`), or a
//! maintainer of every package the pull request's head changes, who authenticates with their own GitHub
//! token (`Authorization: Bearer <GitHub token>`): eka-ci asks GitHub whose it is (`GET /user`) and
//! reads the pull request with it (its head, whether it comes from a fork), then decides as
//! `forge::github::maintainers` does for `@eka-ci merge`. The GitHub token is used for those two calls
//! only: never stored, logged or echoed. The row goes to `forge::github::auto_merges`; the GitHub
//! service is woken and merges when the gate and the reviews allow.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::auth::{self, AuthError};
use super::drvs::{respond, ApiError};
use super::AppState;
use crate::forge::github::client::{ClientError, UserClient};
use crate::forge::github::maintainers::{self, GitHubUser, Unapproved};
use crate::forge::github::{approvals, auto_merges, runs};
use crate::secret::Secret;
use crate::tokens::{Scope, TOKEN_PREFIX};

/// Why an anonymous caller is refused, appended to [`AuthError::Missing`].
const WHY_AUTO_MERGE: &str = ": auto-merge routes need an admin token, or a maintainer's own GitHub token";
/// Bound on each call to GitHub made with a maintainer's token.
const GITHUB_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of `enable-auto-merge`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct EnableBody {
    #[serde(default)]
    merge_method: Option<String>,
}

/// `owner/repo` and the number from the path.
fn pull_request(req: &tide::Request<AppState>) -> Result<(String, u64), ApiError> {
    let repo =
        format!("{}/{}", req.param("owner").unwrap_or_default(), req.param("repo").unwrap_or_default());
    approvals::validate_repo(&repo).map_err(|_| ApiError::BadQuery {
        param: "owner/repo",
        value: repo.chars().take(100).collect(),
        reason: "expected a GitHub repository OWNER/NAME",
    })?;
    let raw = req.param("number").unwrap_or_default();
    let number = raw.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::BadQuery {
        param: "number",
        value: raw.chars().take(30).collect(),
        reason: "expected a pull request number",
    })?;
    Ok((repo, number))
}

/// Who asks, if they may change auto-merge of `repo` #`number`: `api:<token name>` or `github:<login>`.
async fn authorize(
    req: &tide::Request<AppState>,
    repo: &str,
    number: u64,
    verb: &str,
) -> Result<String, ApiError> {
    let presented = req.header("Authorization").map(|v| v.last().as_str().to_string());
    let github_token = presented.as_deref().and_then(|v| v.split_once(' ')).and_then(|(scheme, token)| {
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.starts_with(TOKEN_PREFIX) && !token.is_empty())
            .then(|| Secret::new(token))
    });
    let Some(token) = github_token else {
        // No header, an eka-ci token, or a malformed header: the usual token rules.
        let caller = auth::caller(req).await?;
        caller.require(Scope::Admin, WHY_AUTO_MERGE)?;
        return Ok(format!("api:{}", caller.name().unwrap_or("unknown")));
    };
    let state = req.state();
    let Some(api_url) = state.github_api.as_deref() else {
        return Err(ApiError::Refused {
            status: 503,
            message:
                "no GitHub App is configured: a maintainer's GitHub token cannot be checked; use an admin \
                      token"
                    .into(),
        });
    };
    let client = UserClient::new(api_url, GITHUB_TIMEOUT).map_err(|e| {
        tracing::error!(error = %e, "HTTP API: the GitHub API URL is unusable");
        ApiError::Internal { during: "checking the GitHub token" }
    })?;
    let user = client.authenticated_user(&token).await.map_err(|e| match e.status() {
        Some(401) => ApiError::Auth(AuthError::Invalid),
        _ => github_failed("asking GitHub whose token this is", &e),
    })?;
    let pr = client.pull_request(&token, repo, number).await.map_err(|e| match e.status() {
        Some(404) => ApiError::Refused {
            status: 404,
            message: format!(
                "pull request {repo}#{number} not found on GitHub (or this GitHub token cannot see it)"
            ),
        },
        _ => github_failed("reading the pull request from GitHub", &e),
    })?;
    let (store, jobsets) = (state.store.clone(), state.jobsets.clone());
    let (key, fork, login, id) = (runs::key(repo, &pr.head.sha), pr.from_fork(), user.login.clone(), user.id);
    let coverage = smol::unblock(move || {
        let Some(run) = runs::get(&store, &key)? else { return Ok(None) };
        let change = maintainers::Change::of_run(&run, fork);
        maintainers::unapproved_changes(&store, &jobsets, &change, &[GitHubUser { login: &login, id }])
    })
    .await
    .map_err(|e| ApiError::store("reading the pull request's changes", e))?;
    match coverage {
        None => Err(ApiError::Refused {
            status: 409,
            message: format!(
                "eka-ci has not evaluated the head {} of {repo}#{number} yet: who maintains its changes is not \
                 known; try again once its run finished",
                crate::text::short_sha(&pr.head.sha)
            ),
        }),
        Some(Unapproved { touched: 0, .. }) => {
            Err(ApiError::Refused { status: 400, message: "No changed packages found for this PR".into() })
        }
        Some(Unapproved { missing, .. }) if !missing.is_empty() => Err(ApiError::Refused {
            status: 403,
            message: format!(
                "You must be a maintainer of all changed packages to {verb} ({} maintains none of: {})",
                user.login,
                missing.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            ),
        }),
        Some(_) => Ok(format!("github:{}", user.login)),
    }
}

fn github_failed(doing: &'static str, e: &ClientError) -> ApiError {
    tracing::warn!(error = %e, "HTTP API: {doing} failed");
    ApiError::Refused { status: 502, message: format!("{doing} failed: {e}") }
}

async fn enable(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (repo, number) = pull_request(&req)?;
    let by = authorize(&req, &repo, number, "enable auto-merge").await?;
    let raw = super::actions::read_small_body(&mut req).await?;
    let body: EnableBody = if raw.iter().all(u8::is_ascii_whitespace) {
        EnableBody::default()
    } else {
        serde_json::from_slice(&raw).map_err(|e| ApiError::BadBody {
            reason: format!(
                r#"expected {{"merge_method": "merge"|"squash"|"rebase"}} (line {}, column {}: {:?})"#,
                e.line(),
                e.column(),
                e.classify()
            ),
        })?
    };
    if let Some(method) = &body.merge_method {
        if !matches!(method.as_str(), "merge" | "squash" | "rebase") {
            return Err(ApiError::Refused {
                status: 400,
                message: "Invalid merge method. Must be 'merge', 'squash', or 'rebase'".into(),
            });
        }
    }
    let (store, r, m, b) = (req.state().store.clone(), repo.clone(), body.merge_method.clone(), by.clone());
    let newly = smol::unblock(move || auto_merges::enable(&store, &r, number, m.as_deref(), &b))
        .await
        .map_err(|e| ApiError::store("enabling auto-merge", e))?;
    wake(req.state());
    tracing::info!(%repo, number, %by, "auto-merge enabled");
    Ok(tide::Response::builder(200)
        .body(json!({
            "repo": repo, "number": number, "auto_merge": true, "merge_method": body.merge_method,
            "enabled_by": by, "newly": newly, "message": "Auto-merge enabled",
        }))
        .build())
}

async fn disable(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let (repo, number) = pull_request(&req)?;
    let by = authorize(&req, &repo, number, "disable auto-merge").await?;
    let (store, r) = (req.state().store.clone(), repo.clone());
    let was_on = smol::unblock(move || auto_merges::disable(&store, &r, number))
        .await
        .map_err(|e| ApiError::store("disabling auto-merge", e))?;
    tracing::info!(%repo, number, %by, was_on, "auto-merge disabled");
    Ok(tide::Response::builder(200)
        .body(json!({
            "repo": repo, "number": number, "auto_merge": false, "was_enabled": was_on,
            "message": "Auto-merge disabled",
        }))
        .build())
}

/// Pokes the GitHub service so that an auto-merge whose gate and reviews allow merges at once.
fn wake(state: &AppState) {
    if let Some(wake) = &state.github_wake {
        // A full channel already means a pass is coming.
        let _ = wake.try_send(());
    }
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/prs/:owner/:repo/:number/enable-auto-merge")
        .post(|req: tide::Request<AppState>| async move { respond(enable(req).await) });
    app.at("/v1/prs/:owner/:repo/:number/disable-auto-merge")
        .post(|req: tide::Request<AppState>| async move { respond(disable(req).await) });
}
