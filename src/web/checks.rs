//! Repository check results over HTTP: `GET /v1/commits/{sha}/checks` (every stored check result of the
//! commit, JSON) and `GET /v1/commits/{sha}/checks/{name}/output` (one check's whole output, streamed from
//! disk byte for byte as `text/plain`). Results come from the `check_results` table
//! ([`crate::checks::results`]).
//!
//! Read rules as everywhere ([`super::auth`]): without a token, only results of public repositories (every
//! repository with a result for the commit must be public); anything else answers 401, whether it exists
//! or not.

use futures_lite::io::{AsyncReadExt as _, BufReader};
use serde_json::json;

use super::drvs::echo;
use super::AppState;
use crate::checks::results::{self, StoredCheck};

/// What a check route answers instead of its result.
#[derive(Debug, thiserror::Error)]
enum ChecksApiError {
    #[error("invalid commit `{input}`: expected a 40- or 64-character hexadecimal SHA")]
    BadSha { input: String },
    #[error("invalid check name `{input}`: {reason}")]
    BadName { input: String, reason: &'static str },
    #[error("no check `{name}` is stored for commit {commit}")]
    NoCheck { commit: String, name: String },
    #[error("check `{name}` at commit {commit} has no stored output")]
    NoOutput { commit: String, name: String },
    /// Details go to the server log, not to the client.
    #[error("internal error while {during}; see the server log")]
    Internal { during: &'static str },
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
}

impl ChecksApiError {
    fn status(&self) -> u16 {
        match self {
            ChecksApiError::BadSha { .. } | ChecksApiError::BadName { .. } => 400,
            ChecksApiError::NoCheck { .. } | ChecksApiError::NoOutput { .. } => 404,
            ChecksApiError::Internal { .. } => 500,
            ChecksApiError::Auth(e) => e.status(),
        }
    }
}

fn parse_sha(raw: &str) -> Result<String, ChecksApiError> {
    if (raw.len() == 40 || raw.len() == 64) && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ChecksApiError::BadSha { input: echo(raw) })
    }
}

/// The commit's stored results, once the caller may read them.
async fn lookup(req: &tide::Request<AppState>) -> Result<(String, Vec<StoredCheck>), ChecksApiError> {
    let caller = super::auth::caller(req).await?;
    let state = req.state();
    if caller.is_anonymous() {
        // `public_read = false` refuses before anything is read.
        caller.read(state, true)?;
    }
    let commit = parse_sha(req.param("sha").unwrap_or_default())?;
    let (store, c) = (state.store.clone(), commit.clone());
    let rows = smol::unblock(move || results::for_commit(&store, &c)).await.map_err(|e| {
        tracing::error!(error = %e, "HTTP API: reading check results failed");
        ChecksApiError::Internal { during: "reading check results" }
    })?;
    if caller.is_anonymous() {
        let mut public = !rows.is_empty();
        for repo in rows.iter().map(|r| r.repo.as_str()) {
            public = public && super::auth::repo_is_public(state, repo).await;
        }
        caller.read(state, public)?;
    }
    Ok((commit, rows))
}

async fn list(req: tide::Request<AppState>) -> Result<tide::Response, ChecksApiError> {
    let (commit, rows) = lookup(&req).await?;
    Ok(tide::Response::builder(200).body(json!({ "commit": commit, "checks": rows })).build())
}

async fn output(req: tide::Request<AppState>) -> Result<tide::Response, ChecksApiError> {
    let (commit, rows) = lookup(&req).await?;
    let raw = req.param("name").unwrap_or_default();
    let name = super::drvs::percent_decode(raw)
        .map_err(|reason| ChecksApiError::BadName { input: echo(raw), reason })?;
    let Some(row) = rows.into_iter().find(|r| r.report.name == name) else {
        return Err(ChecksApiError::NoCheck { commit, name: echo(&name) });
    };
    let no_output = || ChecksApiError::NoOutput { commit: commit.clone(), name: echo(&name) };
    let path = row.report.output_file.clone().ok_or_else(no_output)?;
    let file = match smol::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_output()),
        Err(e) => {
            tracing::error!(file = %path, error = %e, "HTTP API: cannot open a check's output");
            return Err(ChecksApiError::Internal { during: "opening the check's output" });
        }
    };
    let len = file.metadata().await.map(|m| m.len()).map_err(|e| {
        tracing::error!(file = %path, error = %e, "HTTP API: cannot stat a check's output");
        ChecksApiError::Internal { during: "opening the check's output" }
    })?;
    let body = tide::Body::from_reader(BufReader::new(file.take(len)), usize::try_from(len).ok());
    Ok(tide::Response::builder(200).body(body).content_type("text/plain; charset=utf-8").build())
}

fn respond(result: Result<tide::Response, ChecksApiError>) -> tide::Result {
    Ok(result.unwrap_or_else(|e| super::auth::error_response(e.status(), &e.to_string())))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/commits/:sha/checks")
        .get(|req: tide::Request<AppState>| async move { respond(list(req).await) });
    app.at("/v1/commits/:sha/checks/:name/output")
        .get(|req: tide::Request<AppState>| async move { respond(output(req).await) });
}
