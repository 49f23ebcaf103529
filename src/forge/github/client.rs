//! The GitHub REST client of a GitHub App: installation access tokens (fetched with the App JWT,
//! cached per installation until shortly before they expire) and the few typed calls the integration
//! needs (pull requests, their reviews and merging them, check runs, collaborator permissions,
//! repository installations, issue comments and reactions), two GraphQL calls (whether a pull request's
//! base has a merge queue, and enabling GitHub's auto-merge: `POST /graphql`, or `/api/graphql` on
//! GitHub Enterprise Server), and [`UserClient`]: the two calls made with a person's own token (who they
//! are, and a pull request as they see it).
//!
//! Calls are blocking `ureq` requests run through `smol::unblock`; waits between attempts are
//! `smol::Timer`s on our executor. Discipline: `Retry-After` and `X-RateLimit-Remaining: 0` +
//! `X-RateLimit-Reset` are honoured up to [`ClientConfig::max_rate_limit_wait`]; 5xx and transport
//! errors are retried with exponential backoff up to [`ClientConfig::max_attempts`]; other 4xx are
//! never retried. Errors carry the method, path, status and GitHub's `message`; tokens and JWTs are
//! [`Secret`]s and never appear in errors, logs or `Debug` output.
//!
//! The request and response types follow GitHub's REST shapes (see `tests/fixtures/github/api/`),
//! with only the fields we use; unknown fields are ignored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use smol::lock::Mutex;

use super::app::AppCredentials;
use super::jwt::JwtError;
use crate::secret::Secret;

/// GitHub.com's API; GitHub Enterprise Server uses `https://HOST/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version we are written against.
pub const API_VERSION: &str = "2022-11-28";
const ACCEPT: &str = "application/vnd.github+json";
/// Longest GitHub `message` (or body excerpt) kept in an error.
const MAX_MESSAGE: usize = 300;
/// Largest response body read.
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// How the client talks to GitHub.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// API base URL without a trailing slash (default [`DEFAULT_API_URL`]).
    pub api_url: String,
    /// Attempts per call, the first included, for 5xx, transport errors and rate limits (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt after a 5xx; doubled for each further attempt.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff wait.
    pub max_backoff: Duration,
    /// Longest wait accepted for a rate limit (`Retry-After`, `X-RateLimit-Reset`); longer is an error.
    pub max_rate_limit_wait: Duration,
    /// Bound on one HTTP exchange.
    pub timeout: Duration,
    /// An installation token is replaced this long before its `expires_at`.
    pub token_refresh_margin: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            api_url: DEFAULT_API_URL.to_string(),
            max_attempts: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_rate_limit_wait: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
            token_refresh_margin: Duration::from_secs(5 * 60),
        }
    }
}

/// A failed GitHub call. No variant contains a token or JWT.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("GitHub API {method} {path}: HTTP {status}: {message} (after {attempts} attempt(s))")]
    Api {
        method: &'static str,
        path: String,
        status: u16,
        /// GitHub's `message`, or an excerpt of a body that is not GitHub's JSON error.
        message: String,
        documentation_url: Option<String>,
        attempts: u32,
    },
    #[error(
        "GitHub API {method} {path}: rate limited (HTTP {status}: {message}); GitHub asks to wait \
         {wait_secs} s, more than the allowed {max_wait_secs} s"
    )]
    RateLimited {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
        wait_secs: u64,
        max_wait_secs: u64,
    },
    #[error("GitHub API {method} {path}: {error} (after {attempts} attempt(s))")]
    Transport { method: &'static str, path: String, error: String, attempts: u32 },
    #[error("GitHub API {method} {path}: unexpected response body: {error}")]
    Decode { method: &'static str, path: String, error: String },
    #[error("GitHub GraphQL {operation}: {message}")]
    GraphQl {
        operation: &'static str,
        /// GitHub's `errors[].message`s (bounded), or what was missing from `data`.
        message: String,
        /// GitHub's `errors[0].type` (`NOT_FOUND`, `UNPROCESSABLE`, `FORBIDDEN`, …), when given.
        kind: Option<String>,
    },
    #[error("invalid {what} for a GitHub API path: {value:?}")]
    InvalidArgument { what: &'static str, value: String },
    #[error("installation {installation_id}: GitHub sent an unreadable token expiry {value:?}")]
    BadExpiry { installation_id: u64, value: String },
    #[error("invalid GitHub API URL {0:?}: it must start with http:// or https://")]
    BadApiUrl(String),
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

impl ClientError {
    /// The HTTP status GitHub answered with, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::RateLimited { status, .. } => Some(*status),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Models (GitHub's shapes, only the fields we use).

/// A user or organisation (`simple-user`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Account {
    pub login: String,
    pub id: u64,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// `GET /repos/{owner}/{repo}/installation`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Installation {
    pub id: u64,
    #[serde(default)]
    pub app_id: Option<u64>,
    #[serde(default)]
    pub account: Option<Account>,
    #[serde(default)]
    pub repository_selection: Option<String>,
}

/// The repository of a pull request's head or base (null when a fork was deleted).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestRepo {
    pub id: u64,
    pub name: String,
    pub full_name: String,
    #[serde(default)]
    pub clone_url: Option<String>,
    /// The repository's merge settings (GitHub sends them with a pull request's repositories).
    #[serde(default)]
    pub allow_merge_commit: Option<bool>,
    #[serde(default)]
    pub allow_squash_merge: Option<bool>,
    #[serde(default)]
    pub allow_rebase_merge: Option<bool>,
}

impl PullRequestRepo {
    /// Whether the repository allows merging with `method` (`merge`, `squash`, `rebase`); unknown when
    /// GitHub did not say (then GitHub decides when asked to merge).
    pub fn allows(&self, method: &str) -> Option<bool> {
        match method {
            "merge" => self.allow_merge_commit,
            "squash" => self.allow_squash_merge,
            "rebase" => self.allow_rebase_merge,
            _ => Some(false),
        }
    }
}

/// The head or base of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestRef {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub repo: Option<PullRequestRepo>,
}

/// `GET /repos/{owner}/{repo}/pulls/{pull_number}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    pub id: u64,
    pub number: u64,
    pub state: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub user: Option<Account>,
    pub head: PullRequestRef,
    pub base: PullRequestRef,
    #[serde(default)]
    pub draft: Option<bool>,
    #[serde(default)]
    pub merged: Option<bool>,
    #[serde(default)]
    pub mergeable: Option<bool>,
    #[serde(default)]
    pub author_association: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

impl PullRequest {
    /// Whether its head lives outside its base repository (a fork, or a deleted fork).
    pub fn from_fork(&self) -> bool {
        let name = |r: &Option<PullRequestRepo>| r.as_ref().map(|r| r.full_name.to_ascii_lowercase());
        name(&self.head.repo).is_none() || name(&self.head.repo) != name(&self.base.repo)
    }
}

/// The status of a check run we create or update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Queued,
    InProgress,
    Completed,
}

/// The conclusion of a completed check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckConclusion {
    ActionRequired,
    Cancelled,
    Failure,
    Neutral,
    Success,
    Skipped,
    Stale,
    TimedOut,
}

/// The `output` of a check run request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckRunOutput {
    pub title: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The optional fields a check-run request may set, shared by [`CreateCheckRun`] and [`UpdateCheckRun`];
/// unset fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckRunFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckStatus>,
    /// RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<CheckConclusion>,
    /// RFC 3339 time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<CheckRunOutput>,
}

/// `POST /repos/{owner}/{repo}/check-runs` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreateCheckRun {
    pub name: String,
    pub head_sha: String,
    #[serde(flatten)]
    pub fields: CheckRunFields,
}

impl CreateCheckRun {
    /// A request with only the required fields set.
    pub fn new(name: impl Into<String>, head_sha: impl Into<String>) -> Self {
        CreateCheckRun { name: name.into(), head_sha: head_sha.into(), fields: CheckRunFields::default() }
    }
}

/// `PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}` body; unset fields are left unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateCheckRun {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(flatten)]
    pub fields: CheckRunFields,
}

/// The `output` of a check run as GitHub returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckRunOutputInfo {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub annotations_count: u64,
}

/// The App that owns a check run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckRunApp {
    pub id: u64,
    #[serde(default)]
    pub slug: Option<String>,
}

/// A check run as GitHub returns it. `status` and `conclusion` stay strings: GitHub has more values
/// (`waiting`, `requested`, `pending`, …) than we send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckRun {
    pub id: u64,
    pub name: String,
    pub head_sha: String,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub details_url: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub output: Option<CheckRunOutputInfo>,
    #[serde(default)]
    pub app: Option<CheckRunApp>,
}

/// `GET /repos/{owner}/{repo}/commits/{ref}/check-runs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckRunList {
    pub total_count: u64,
    pub check_runs: Vec<CheckRun>,
}

/// `GET /repos/{owner}/{repo}/collaborators/{username}/permission`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CollaboratorPermission {
    /// `admin`, `write`, `read` or `none` (`maintain` and `triage` map to `write` and `read`).
    pub permission: String,
    #[serde(default)]
    pub role_name: Option<String>,
    #[serde(default)]
    pub user: Option<Account>,
}

/// `POST /repos/{owner}/{repo}/issues/comments/{comment_id}/reactions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reaction {
    pub id: u64,
    pub content: String,
}

/// `POST /repos/{owner}/{repo}/issues/{issue_number}/comments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssueComment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
}

/// `PUT /repos/{owner}/{repo}/pulls/{pull_number}/merge` (200).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MergeResult {
    /// The merge (or squash, or rebased head) commit.
    pub sha: String,
    pub merged: bool,
    #[serde(default)]
    pub message: Option<String>,
}

/// One review of `GET /repos/{owner}/{repo}/pulls/{pull_number}/reviews` (chronological order).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Review {
    pub id: u64,
    /// Null when the account was deleted.
    #[serde(default)]
    pub user: Option<ReviewUser>,
    /// `APPROVED`, `CHANGES_REQUESTED`, `COMMENTED`, `DISMISSED` or `PENDING`.
    pub state: String,
    /// The commit the review was made on (null for some old reviews).
    #[serde(default)]
    pub commit_id: Option<String>,
}

/// The author of a review (`simple-user`: the fields we use).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReviewUser {
    pub login: String,
    pub id: u64,
}

/// `GET /user` with a person's token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuthenticatedUser {
    pub login: String,
    pub id: u64,
}

/// A pull request as GraphQL names it, and whether its base branch has a merge queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeQueueInfo {
    /// The pull request's node id (GraphQL `id`, REST `node_id`).
    pub node_id: String,
    /// GraphQL `PullRequest.isMergeQueueEnabled`.
    pub merge_queue: bool,
}

#[derive(Serialize)]
struct MergeBody<'a> {
    sha: &'a str,
    merge_method: &'a str,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Secret,
    expires_at: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    documentation_url: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// The client.

struct CachedToken {
    token: Secret,
    refresh_at: SystemTime,
}

struct Inner {
    config: ClientConfig,
    credentials: AppCredentials,
    agent: ureq::Agent,
    user_agent: String,
    tokens: Mutex<HashMap<u64, CachedToken>>,
}

/// A GitHub API client acting as one GitHub App. Cheap to clone.
#[derive(Clone)]
pub struct GitHubClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubClient")
            .field("api_url", &self.inner.config.api_url)
            .field("app_id", &self.inner.credentials.app_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Get,
    Post,
    Patch,
    Put,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Put => "PUT",
        }
    }
}

/// One HTTP answer, reduced to what the retry logic and decoding need.
struct RawResponse {
    status: u16,
    retry_after: Option<String>,
    remaining: Option<String>,
    reset: Option<String>,
    body: String,
}

impl GitHubClient {
    /// A client for the App with `credentials`.
    pub fn new(credentials: AppCredentials, config: ClientConfig) -> Result<Self, ClientError> {
        let api_url = config.api_url.trim_end_matches('/').to_string();
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
            return Err(ClientError::BadApiUrl(config.api_url.clone()));
        }
        let config = ClientConfig { api_url, max_attempts: config.max_attempts.max(1), ..config };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .build()
            .into();
        Ok(GitHubClient {
            inner: Arc::new(Inner {
                config,
                credentials,
                agent,
                user_agent: format!("eka-ci/{}", crate::VERSION),
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The App id this client authenticates as.
    pub fn app_id(&self) -> &str {
        &self.inner.credentials.app_id
    }

    /// An installation access token, from the cache while it is valid for more than
    /// [`ClientConfig::token_refresh_margin`], else fetched with the App JWT.
    pub async fn installation_token(&self, installation_id: u64) -> Result<Secret, ClientError> {
        let mut cache = self.inner.tokens.lock().await;
        if let Some(cached) = cache.get(&installation_id) {
            if SystemTime::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let path = format!("/app/installations/{installation_id}/access_tokens");
        let body = self.send(Method::Post, &path, Auth::App, Some("{}".to_string())).await?;
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|e| ClientError::Decode {
            method: "POST",
            path: path.clone(),
            // Position only: the body holds the token.
            error: format!("not an installation token (line {}, column {})", e.line(), e.column()),
        })?;
        let expires = crate::time::parse_rfc3339(&parsed.expires_at)
            .ok_or_else(|| ClientError::BadExpiry { installation_id, value: parsed.expires_at.clone() })?;
        let refresh_at = expires.checked_sub(self.inner.config.token_refresh_margin).unwrap_or(UNIX_EPOCH);
        tracing::debug!(installation_id, expires_at = %parsed.expires_at, "fetched a GitHub installation token");
        cache.insert(installation_id, CachedToken { token: parsed.token.clone(), refresh_at });
        Ok(parsed.token)
    }

    /// Forgets the cached token of an installation (e.g. after GitHub refused it).
    pub async fn forget_token(&self, installation_id: u64) {
        self.inner.tokens.lock().await.remove(&installation_id);
    }

    /// `GET /repos/{owner}/{repo}/installation` (authenticated as the App).
    pub async fn repo_installation(&self, repo: &str) -> Result<Installation, ClientError> {
        let path = format!("{}/installation", repo_path(repo)?);
        self.call_json(Method::Get, &path, Auth::App, None).await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{number}`.
    pub async fn pull_request(
        &self,
        installation_id: u64,
        repo: &str,
        number: u64,
    ) -> Result<PullRequest, ClientError> {
        let path = format!("{}/pulls/{number}", repo_path(repo)?);
        self.call_json(Method::Get, &path, Auth::Installation(installation_id), None).await
    }

    /// `POST /repos/{owner}/{repo}/check-runs`.
    pub async fn create_check_run(
        &self,
        installation_id: u64,
        repo: &str,
        request: &CreateCheckRun,
    ) -> Result<CheckRun, ClientError> {
        let path = format!("{}/check-runs", repo_path(repo)?);
        let body = to_json(request, &path)?;
        self.call_json(Method::Post, &path, Auth::Installation(installation_id), Some(body)).await
    }

    /// `PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}`.
    pub async fn update_check_run(
        &self,
        installation_id: u64,
        repo: &str,
        check_run_id: u64,
        request: &UpdateCheckRun,
    ) -> Result<CheckRun, ClientError> {
        let path = format!("{}/check-runs/{check_run_id}", repo_path(repo)?);
        let body = to_json(request, &path)?;
        self.call_json(Method::Patch, &path, Auth::Installation(installation_id), Some(body)).await
    }

    /// `GET /repos/{owner}/{repo}/commits/{ref}/check-runs`, optionally for one check name (first 100).
    pub async fn list_check_runs_for_ref(
        &self,
        installation_id: u64,
        repo: &str,
        git_ref: &str,
        check_name: Option<&str>,
    ) -> Result<CheckRunList, ClientError> {
        if git_ref.is_empty() {
            return Err(ClientError::InvalidArgument { what: "git ref", value: String::new() });
        }
        let mut path =
            format!("{}/commits/{}/check-runs?per_page=100", repo_path(repo)?, percent_encode(git_ref));
        if let Some(name) = check_name {
            path.push_str("&check_name=");
            path.push_str(&percent_encode(name));
        }
        self.call_json(Method::Get, &path, Auth::Installation(installation_id), None).await
    }

    /// `GET /repos/{owner}/{repo}/collaborators/{username}/permission`.
    pub async fn collaborator_permission(
        &self,
        installation_id: u64,
        repo: &str,
        username: &str,
    ) -> Result<CollaboratorPermission, ClientError> {
        let path =
            format!("{}/collaborators/{}/permission", repo_path(repo)?, segment(username, "user name")?);
        self.call_json(Method::Get, &path, Auth::Installation(installation_id), None).await
    }

    /// `POST /repos/{owner}/{repo}/issues/comments/{comment_id}/reactions` with `content` (`+1`, `-1`,
    /// `rocket`, `confused`, …). GitHub answers 200 when the reaction already exists.
    pub async fn add_reaction(
        &self,
        installation_id: u64,
        repo: &str,
        comment_id: u64,
        content: &str,
    ) -> Result<Reaction, ClientError> {
        let path = format!("{}/issues/comments/{comment_id}/reactions", repo_path(repo)?);
        let body = serde_json::json!({ "content": content }).to_string();
        self.call_json(Method::Post, &path, Auth::Installation(installation_id), Some(body)).await
    }

    /// `POST /repos/{owner}/{repo}/issues/{number}/comments`: a comment on an issue or pull request.
    pub async fn create_issue_comment(
        &self,
        installation_id: u64,
        repo: &str,
        number: u64,
        text: &str,
    ) -> Result<IssueComment, ClientError> {
        let path = format!("{}/issues/{number}/comments", repo_path(repo)?);
        let body = serde_json::json!({ "body": text }).to_string();
        self.call_json(Method::Post, &path, Auth::Installation(installation_id), Some(body)).await
    }

    /// `PUT /repos/{owner}/{repo}/pulls/{number}/merge` with `sha` (GitHub refuses with 409 when the
    /// head is no longer that commit) and `merge_method`.
    pub async fn merge_pull_request(
        &self,
        installation_id: u64,
        repo: &str,
        number: u64,
        sha: &str,
        merge_method: &str,
    ) -> Result<MergeResult, ClientError> {
        let path = format!("{}/pulls/{number}/merge", repo_path(repo)?);
        let body = to_json(&MergeBody { sha, merge_method }, &path)?;
        self.call_json(Method::Put, &path, Auth::Installation(installation_id), Some(body)).await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{number}/reviews`, every page (100 a page, at most
    /// [`MAX_REVIEW_PAGES`]), in GitHub's chronological order.
    pub async fn list_reviews(
        &self,
        installation_id: u64,
        repo: &str,
        number: u64,
    ) -> Result<Vec<Review>, ClientError> {
        let base = format!("{}/pulls/{number}/reviews", repo_path(repo)?);
        let mut out = Vec::new();
        for page in 1..=MAX_REVIEW_PAGES {
            let path = format!("{base}?per_page=100&page={page}");
            let batch: Vec<Review> =
                self.call_json(Method::Get, &path, Auth::Installation(installation_id), None).await?;
            let last = batch.len() < 100;
            out.extend(batch);
            if last {
                break;
            }
        }
        Ok(out)
    }

    /// GraphQL: the pull request's node id and whether its base branch has a merge queue
    /// (`PullRequest.isMergeQueueEnabled`).
    pub async fn merge_queue_info(
        &self,
        installation_id: u64,
        repo: &str,
        number: u64,
    ) -> Result<MergeQueueInfo, ClientError> {
        const OPERATION: &str = "isMergeQueueEnabled";
        let (owner, name) = split_repo(repo)?;
        let query = "query($owner: String!, $name: String!, $number: Int!) { repository(owner: $owner, \
                     name: $name) { pullRequest(number: $number) { id isMergeQueueEnabled } } }";
        let variables = serde_json::json!({ "owner": owner, "name": name, "number": number });
        let data = self.graphql(installation_id, OPERATION, query, variables).await?;
        let pr = &data["repository"]["pullRequest"];
        match (pr["id"].as_str(), pr["isMergeQueueEnabled"].as_bool()) {
            (Some(id), Some(enabled)) => Ok(MergeQueueInfo { node_id: id.to_string(), merge_queue: enabled }),
            _ => Err(ClientError::GraphQl {
                operation: OPERATION,
                message: format!("no pull request {repo}#{number} in the answer"),
                kind: None,
            }),
        }
    }

    /// GraphQL `enablePullRequestAutoMerge` for the pull request `node_id` with `merge_method` (`merge`,
    /// `squash`, `rebase`) and `expectedHeadOid` = `sha`, so that GitHub refuses if the head moved.
    pub async fn enable_auto_merge(
        &self,
        installation_id: u64,
        node_id: &str,
        merge_method: &str,
        sha: &str,
    ) -> Result<(), ClientError> {
        const OPERATION: &str = "enablePullRequestAutoMerge";
        let query = "mutation($id: ID!, $method: PullRequestMergeMethod!, $sha: GitObjectID!) { \
                     enablePullRequestAutoMerge(input: {pullRequestId: $id, mergeMethod: $method, \
                     expectedHeadOid: $sha}) { pullRequest { id autoMergeRequest { mergeMethod } } } }";
        let variables = serde_json::json!({
            "id": node_id,
            "method": merge_method.to_ascii_uppercase(),
            "sha": sha,
        });
        let data = self.graphql(installation_id, OPERATION, query, variables).await?;
        if data["enablePullRequestAutoMerge"]["pullRequest"]["autoMergeRequest"].is_object() {
            Ok(())
        } else {
            Err(ClientError::GraphQl {
                operation: OPERATION,
                message: "GitHub answered without an auto-merge request".into(),
                kind: None,
            })
        }
    }

    /// One GraphQL call; returns `data`. GitHub answers errors with 200 and `errors`.
    async fn graphql(
        &self,
        installation_id: u64,
        operation: &'static str,
        query: &str,
        variables: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::json!({ "query": query, "variables": variables }).to_string();
        let answer: serde_json::Value = self
            .call_json(Method::Post, GRAPHQL_PATH, Auth::Installation(installation_id), Some(body))
            .await?;
        if let Some(errors) = answer["errors"].as_array().filter(|e| !e.is_empty()) {
            let message = errors.iter().filter_map(|e| e["message"].as_str()).collect::<Vec<_>>().join("; ");
            let kind = errors[0]["type"].as_str().map(str::to_string);
            return Err(ClientError::GraphQl { operation, message: truncate(&message), kind });
        }
        Ok(answer["data"].clone())
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let text = match auth {
            Auth::Installation(id) => match self.send(method, path, auth, body.clone()).await {
                // A revoked or otherwise refused cached token: fetch a fresh one once.
                Err(ClientError::Api { status: 401, .. }) => {
                    self.forget_token(id).await;
                    self.send(method, path, auth, body).await?
                }
                other => other?,
            },
            Auth::App => self.send(method, path, auth, body).await?,
        };
        serde_json::from_str(&text).map_err(|e| ClientError::Decode {
            method: method.as_str(),
            path: path.to_string(),
            error: e.to_string(),
        })
    }

    /// One API call with the retry discipline; returns the body of a 2xx answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        body: Option<String>,
    ) -> Result<String, ClientError> {
        let config = &self.inner.config;
        let url = api_endpoint(&config.api_url, path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let authorization = match auth {
                Auth::App => {
                    self.inner.credentials.key.sign(&self.inner.credentials.app_id, SystemTime::now())?
                }
                Auth::Installation(id) => Box::pin(self.installation_token(id)).await?,
            };
            let agent = self.inner.agent.clone();
            let (url2, body2, ua) = (url.clone(), body.clone(), self.inner.user_agent.clone());
            let result =
                smol::unblock(move || exchange(&agent, method, &url2, &authorization, &ua, body2)).await;
            let last_attempt = attempt >= config.max_attempts;
            let response = match result {
                Ok(r) => r,
                Err(error) if last_attempt => {
                    return Err(ClientError::Transport {
                        method: method.as_str(),
                        path: path.to_string(),
                        error,
                        attempts: attempt,
                    })
                }
                Err(error) => {
                    let wait = self.backoff(attempt);
                    tracing::warn!(method = method.as_str(), path, %error, ?wait, "GitHub API transport error; retrying");
                    smol::Timer::after(wait).await;
                    continue;
                }
            };
            if (200..300).contains(&response.status) {
                return Ok(response.body);
            }
            let (message, documentation_url) = error_message(&response.body);
            let api_error = |attempts| ClientError::Api {
                method: method.as_str(),
                path: path.to_string(),
                status: response.status,
                message: message.clone(),
                documentation_url: documentation_url.clone(),
                attempts,
            };
            let wait = match response.status {
                403 | 429 => match rate_limit_wait(&response, &message) {
                    Some(wait) => {
                        if wait > config.max_rate_limit_wait {
                            return Err(ClientError::RateLimited {
                                method: method.as_str(),
                                path: path.to_string(),
                                status: response.status,
                                message,
                                wait_secs: wait.as_secs(),
                                max_wait_secs: config.max_rate_limit_wait.as_secs(),
                            });
                        }
                        wait
                    }
                    None if response.status == 429 => self.backoff(attempt).min(config.max_rate_limit_wait),
                    None => return Err(api_error(attempt)),
                },
                500..=599 => self.backoff(attempt),
                _ => return Err(api_error(attempt)),
            };
            if last_attempt {
                return Err(api_error(attempt));
            }
            tracing::warn!(
                method = method.as_str(),
                path,
                status = response.status,
                ?wait,
                attempt,
                "GitHub API call failed; retrying"
            );
            smol::Timer::after(wait).await;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.inner.config.initial_backoff.saturating_mul(factor).min(self.inner.config.max_backoff)
    }
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    /// The App JWT.
    App,
    /// An installation token of this installation.
    Installation(u64),
}

/// The blocking HTTP exchange. The error string is ureq's description (no headers, so no token).
fn exchange(
    agent: &ureq::Agent,
    method: Method,
    url: &str,
    authorization: &Secret,
    user_agent: &str,
    body: Option<String>,
) -> Result<RawResponse, String> {
    let bearer = format!("Bearer {}", authorization.expose());
    let result = match method {
        Method::Get => agent
            .get(url)
            .header("Authorization", &bearer)
            .header("Accept", ACCEPT)
            .header("X-GitHub-Api-Version", API_VERSION)
            .header("User-Agent", user_agent)
            .call(),
        Method::Post | Method::Patch | Method::Put => {
            let builder = match method {
                Method::Post => agent.post(url),
                Method::Patch => agent.patch(url),
                _ => agent.put(url),
            };
            builder
                .header("Authorization", &bearer)
                .header("Accept", ACCEPT)
                .header("X-GitHub-Api-Version", API_VERSION)
                .header("User-Agent", user_agent)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_default().as_bytes())
        }
    };
    let mut response = result.map_err(|e| e.to_string())?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry_after = header("retry-after");
    let remaining = header("x-ratelimit-remaining");
    let reset = header("x-ratelimit-reset");
    let status = response.status().as_u16();
    let body =
        response.body_mut().with_config().limit(MAX_BODY).read_to_string().map_err(|e| e.to_string())?;
    Ok(RawResponse { status, retry_after, remaining, reset, body })
}

/// How long GitHub asks us to wait, if this 403/429 is a rate limit.
fn rate_limit_wait(response: &RawResponse, message: &str) -> Option<Duration> {
    if let Some(secs) = response.retry_after.as_deref().and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if response.remaining.as_deref().map(str::trim) == Some("0") {
        if let Some(reset) = response.reset.as_deref().and_then(|v| v.trim().parse::<u64>().ok()) {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
        }
    }
    // A secondary rate limit without headers: GitHub asks for at least a minute.
    if message.to_ascii_lowercase().contains("secondary rate limit") {
        return Some(Duration::from_secs(60));
    }
    None
}

/// GitHub's `message` and `documentation_url`, or a bounded excerpt of a non-JSON body.
fn error_message(body: &str) -> (String, Option<String>) {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(m), documentation_url }) => (truncate(&m), documentation_url),
        Ok(ErrorBody { message: None, documentation_url }) => ("(no message)".to_string(), documentation_url),
        Err(_) if body.trim().is_empty() => ("(empty body)".to_string(), None),
        Err(_) => (truncate(body.trim()), None),
    }
}

fn truncate(s: &str) -> String {
    let printable: String = s.chars().filter(|c| !c.is_control()).collect();
    crate::text::ellipsis_chars(&printable, MAX_MESSAGE)
}

fn to_json<T: Serialize>(value: &T, path: &str) -> Result<String, ClientError> {
    serde_json::to_string(value).map_err(|e| ClientError::Decode {
        method: "encode",
        path: path.to_string(),
        error: e.to_string(),
    })
}

/// A path segment that needs no encoding: an owner, repository or user name.
fn segment<'a>(s: &'a str, what: &'static str) -> Result<&'a str, ClientError> {
    let ok = !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 100
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(s)
    } else {
        Err(ClientError::InvalidArgument { what, value: crate::text::prefix_chars(s, 100).to_string() })
    }
}

/// The path [`GitHubClient::graphql`] posts to; [`api_endpoint`] places it.
const GRAPHQL_PATH: &str = "/graphql";
/// Review pages read at most (100 reviews each).
pub const MAX_REVIEW_PAGES: u32 = 10;

/// The URL of `path` under `api_url`; GraphQL is `/graphql` on GitHub.com and `/api/graphql` on GitHub
/// Enterprise Server (whose REST API is `/api/v3`).
fn api_endpoint(api_url: &str, path: &str) -> String {
    match (path, api_url.strip_suffix("/api/v3")) {
        (GRAPHQL_PATH, Some(host)) => format!("{host}/api/graphql"),
        _ => format!("{api_url}{path}"),
    }
}

/// `owner` and `name` of `owner/name`, checked as path segments.
fn split_repo(repo: &str) -> Result<(&str, &str), ClientError> {
    let Some((owner, name)) = repo.split_once('/') else {
        return Err(ClientError::InvalidArgument {
            what: "repository (owner/name)",
            value: repo.to_string(),
        });
    };
    Ok((segment(owner, "repository owner")?, segment(name, "repository name")?))
}

/// `/repos/{owner}/{repo}` for `owner/repo`.
fn repo_path(repo: &str) -> Result<String, ClientError> {
    let (owner, name) = split_repo(repo)?;
    Ok(format!("/repos/{owner}/{name}"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The calls made with a person's own GitHub token (a maintainer calling the auto-merge routes): who
/// they are (`GET /user`) and a pull request as they see it. One attempt each, no retries (the person is
/// waiting); the token is a [`Secret`] and never reaches an error or a log.
pub struct UserClient {
    agent: ureq::Agent,
    api_url: String,
    user_agent: String,
}

impl UserClient {
    /// A client for `api_url` (as [`ClientConfig::api_url`]) whose calls give up after `timeout`.
    pub fn new(api_url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let api_url = api_url.trim_end_matches('/').to_string();
        if !(api_url.starts_with("http://") || api_url.starts_with("https://")) {
            return Err(ClientError::BadApiUrl(api_url));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(UserClient { agent, api_url, user_agent: format!("eka-ci/{}", crate::VERSION) })
    }

    /// `GET /user`: the person the token belongs to.
    pub async fn authenticated_user(&self, token: &Secret) -> Result<AuthenticatedUser, ClientError> {
        self.get(token, "/user").await
    }

    /// `GET /repos/{owner}/{repo}/pulls/{number}` as the token's owner sees it.
    pub async fn pull_request(
        &self,
        token: &Secret,
        repo: &str,
        number: u64,
    ) -> Result<PullRequest, ClientError> {
        self.get(token, &format!("{}/pulls/{number}", repo_path(repo)?)).await
    }

    async fn get<T: DeserializeOwned>(&self, token: &Secret, path: &str) -> Result<T, ClientError> {
        let (agent, url, token, ua) =
            (self.agent.clone(), api_endpoint(&self.api_url, path), token.clone(), self.user_agent.clone());
        let response =
            smol::unblock(move || exchange(&agent, Method::Get, &url, &token, &ua, None)).await.map_err(
                |error| ClientError::Transport { method: "GET", path: path.to_string(), error, attempts: 1 },
            )?;
        if !(200..300).contains(&response.status) {
            let (message, documentation_url) = error_message(&response.body);
            return Err(ClientError::Api {
                method: "GET",
                path: path.to_string(),
                status: response.status,
                message,
                documentation_url,
                attempts: 1,
            });
        }
        serde_json::from_str(&response.body).map_err(|e| ClientError::Decode {
            method: "GET",
            path: path.to_string(),
            error: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated_and_encoded() {
        assert_eq!(repo_path("octo/hello-world.rs").unwrap(), "/repos/octo/hello-world.rs");
        assert!(repo_path("octo").is_err());
        assert!(repo_path("octo/../x").is_err());
        assert!(repo_path("a/b/c").is_err());
        assert_eq!(percent_encode("refs/heads/a b"), "refs%2Fheads%2Fa%20b");
    }

    #[test]
    fn error_bodies() {
        let (m, d) =
            error_message(r#"{"message":"Not Found","documentation_url":"https://docs.github.com/rest"}"#);
        assert_eq!(m, "Not Found");
        assert_eq!(d.as_deref(), Some("https://docs.github.com/rest"));
        assert_eq!(error_message("").0, "(empty body)");
        assert_eq!(error_message(&"x".repeat(1000)).0.chars().count(), MAX_MESSAGE + 1);
    }

    #[test]
    fn graphql_lives_beside_the_rest_api() {
        assert_eq!(api_endpoint("https://api.github.com", "/graphql"), "https://api.github.com/graphql");
        assert_eq!(api_endpoint("https://ghe.example/api/v3", "/graphql"), "https://ghe.example/api/graphql");
        assert_eq!(api_endpoint("https://ghe.example/api/v3", "/user"), "https://ghe.example/api/v3/user");
    }

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let key = super::super::jwt::AppKey::from_pem(include_str!(
            "../../../tests/fixtures/github/keys/test-app-key.pkcs1.pem"
        ))
        .unwrap();
        let creds = AppCredentials { app_id: "1".into(), key };
        let config = ClientConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..ClientConfig::default()
        };
        let c = GitHubClient::new(creds, config).unwrap();
        assert_eq!(c.backoff(1), Duration::from_millis(100));
        assert_eq!(c.backoff(2), Duration::from_millis(200));
        assert_eq!(c.backoff(3), Duration::from_millis(350));
        assert_eq!(c.backoff(40), Duration::from_millis(350));
    }
}
