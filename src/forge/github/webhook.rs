//! GitHub webhook intake: signature verification, event classification, parsing into our typed
//! summaries, and the persisted queue of events waiting to be handled.
//!
//! The HTTP route (`web::github`) reads the raw body, calls [`verify_signature`] before anything is
//! parsed, [`classify`]s the `X-GitHub-Event` header, [`parse`]s the events the pipeline uses into an
//! [`EventSummary`] and [`record`]s the delivery: the delivery id (idempotency) and the event (the queue)
//! are written in one redb write transaction before the answer, so a crash after the answer loses
//! nothing. The consumer reads [`pending`] events and retires them with [`mark_done`]. Nothing here
//! talks to GitHub, runs Nix, or logs a secret. Payloads are parsed with our own serde structs over
//! exactly the fields we use (see docs/github-webhooks.md).

use hmac::{Hmac, Mac, NewMac};
use redb::{ReadableTable, ReadableTableMetadata};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::Sha256;

use crate::store::codec::{decode, encode};
use crate::store::schema::{GITHUB_DELIVERIES, GITHUB_EVENTS, GITHUB_PR_HEADS, META};
use crate::store::{Store, StoreError};

/// The largest body accepted (GitHub caps payloads at 25 MB; larger ones are never sent).
pub const MAX_BODY_BYTES: u64 = 25 * 1024 * 1024;
/// The HMAC-SHA256 signature of the raw body.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The event name (`pull_request`, `ping`, ...).
pub const EVENT_HEADER: &str = "X-GitHub-Event";
/// The delivery GUID; redeliveries reuse it.
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";
/// The longest delivery id accepted (GitHub's are 36-character GUIDs).
pub const MAX_DELIVERY_ID_LEN: usize = 128;

// ---------------------------------------------------------------------------------------------------
// Signatures

/// Why a signature was refused. Messages never contain the secret, the expected signature or the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: expected `sha256=` followed by 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the request body")]
    Mismatch,
}

fn mac(secret: &[u8]) -> Option<Hmac<Sha256>> {
    // HMAC accepts keys of any length; `new_varkey` cannot fail for it, but we do not rely on that.
    Hmac::<Sha256>::new_varkey(secret).ok()
}

/// The `X-Hub-Signature-256` value GitHub sends for `body` signed with `secret`: `sha256=` followed by
/// the lowercase hex HMAC-SHA256.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let Some(mut mac) = mac(secret) else { return String::new() };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Checks `header` (the `X-Hub-Signature-256` value, if any) against the HMAC-SHA256 of the raw `body`
/// with `secret`, comparing in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?.trim();
    let hex = header.strip_prefix("sha256=").ok_or(SignatureError::Malformed)?.as_bytes();
    if hex.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut tag = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0]).ok_or(SignatureError::Malformed)?;
        let lo = hex_digit(pair[1]).ok_or(SignatureError::Malformed)?;
        tag[i] = (hi << 4) | lo;
    }
    let mut mac = mac(secret).ok_or(SignatureError::Mismatch)?;
    mac.update(body);
    // `verify` compares in constant time (`subtle`).
    mac.verify(&tag).map_err(|_| SignatureError::Mismatch)
}

// ---------------------------------------------------------------------------------------------------
// Events

/// The events eka-ci acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsedEvent {
    PullRequest,
    MergeGroup,
    CheckRun,
    CheckSuite,
    Installation,
    InstallationRepositories,
    Push,
    IssueComment,
    PullRequestReview,
}

impl UsedEvent {
    pub const ALL: [UsedEvent; 9] = [
        UsedEvent::PullRequest,
        UsedEvent::MergeGroup,
        UsedEvent::CheckRun,
        UsedEvent::CheckSuite,
        UsedEvent::Installation,
        UsedEvent::InstallationRepositories,
        UsedEvent::Push,
        UsedEvent::IssueComment,
        UsedEvent::PullRequestReview,
    ];

    /// The `X-GitHub-Event` name.
    pub fn name(self) -> &'static str {
        match self {
            UsedEvent::PullRequest => "pull_request",
            UsedEvent::MergeGroup => "merge_group",
            UsedEvent::CheckRun => "check_run",
            UsedEvent::CheckSuite => "check_suite",
            UsedEvent::Installation => "installation",
            UsedEvent::InstallationRepositories => "installation_repositories",
            UsedEvent::Push => "push",
            UsedEvent::IssueComment => "issue_comment",
            UsedEvent::PullRequestReview => "pull_request_review",
        }
    }
}

/// What an `X-GitHub-Event` value asks of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `ping`, sent when a hook is created: answered 200.
    Ping,
    /// An event we act on: parsed and queued.
    Used(UsedEvent),
    /// Anything else: acknowledged with 204 and dropped.
    Unused,
}

/// Classifies an `X-GitHub-Event` value (event names are lowercase; they are matched exactly).
pub fn classify(event: &str) -> EventKind {
    if event == "ping" {
        return EventKind::Ping;
    }
    UsedEvent::ALL.into_iter().find(|e| e.name() == event).map_or(EventKind::Unused, EventKind::Used)
}

/// The `event` label of `eka_ci_github_webhooks_total` for a header value: a name we know, else `other`
/// (the header is untrusted before the signature is checked, so it must not create label values).
pub fn metric_label(event: &str) -> &'static str {
    match classify(event) {
        EventKind::Ping => "ping",
        EventKind::Used(e) => e.name(),
        EventKind::Unused => "other",
    }
}

/// A repository as the pipeline needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRef {
    /// `owner/name`.
    pub full_name: String,
    /// `https://github.com/owner/name.git`.
    pub clone_url: String,
    /// `https://github.com/owner/name`.
    pub html_url: String,
    /// `repository.private` of the payload, when it said. Not stored with the event: [`record`] writes it
    /// to `repo_visibility` (see `visibility`) in the delivery's transaction.
    #[serde(skip)]
    pub private: Option<bool>,
}

/// `pull_request`: a pull request was opened, updated, closed, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestSummary {
    pub action: String,
    pub number: u64,
    /// The base repository (where the pull request lives).
    pub repo: RepoRef,
    pub head_sha: String,
    pub head_ref: String,
    pub base_sha: String,
    pub base_ref: String,
    /// `owner/name` of the head repository; `None` when the fork was deleted.
    pub head_repo: Option<String>,
    /// Login of the pull request's author.
    pub author: Option<String>,
    pub draft: bool,
    pub installation: Option<u64>,
}

impl PullRequestSummary {
    /// Whether the head lives outside the base repository (a fork, or a deleted fork).
    pub fn is_fork(&self) -> bool {
        self.head_repo.as_deref() != Some(self.repo.full_name.as_str())
    }
}

/// `merge_group`: the merge queue asks for checks on a merge commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeGroupSummary {
    pub action: String,
    pub head_sha: String,
    pub head_ref: String,
    pub base_sha: String,
    pub base_ref: String,
    pub repo: RepoRef,
    pub installation: Option<u64>,
}

/// `check_run`: a check run was created, rerequested, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRunSummary {
    pub action: String,
    pub check_run_id: u64,
    pub name: String,
    pub head_sha: String,
    pub check_suite_id: Option<u64>,
    /// The GitHub App that owns the check run.
    pub app_id: Option<u64>,
    pub repo: RepoRef,
    pub installation: Option<u64>,
}

/// `check_suite`: a check suite was requested, rerequested or completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSuiteSummary {
    pub action: String,
    pub check_suite_id: u64,
    pub head_sha: String,
    pub head_branch: Option<String>,
    /// Numbers of the pull requests the suite belongs to.
    pub pull_requests: Vec<u64>,
    pub app_id: Option<u64>,
    pub repo: RepoRef,
    pub installation: Option<u64>,
}

/// `installation`: the App was installed, uninstalled, suspended, ...
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationSummary {
    pub action: String,
    pub installation: u64,
    /// Login of the account (user or organisation) the App is installed on.
    pub account: String,
    /// `owner/name` of the repositories listed with the event (empty when GitHub lists none).
    pub repositories: Vec<String>,
}

/// `installation_repositories`: repositories were added to or removed from an installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationRepositoriesSummary {
    pub action: String,
    pub installation: u64,
    pub account: String,
    /// `all` or `selected`.
    pub repository_selection: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// `push`: a ref was created, moved or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushSummary {
    /// The full ref (`refs/heads/main`, `refs/tags/v1`).
    pub git_ref: String,
    pub before: String,
    /// All zeros when the ref was deleted.
    pub after: String,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    pub repo: RepoRef,
    pub installation: Option<u64>,
}

/// `issue_comment`: a comment on an issue or a pull request (the `@eka-ci` commands come this way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueCommentSummary {
    pub action: String,
    /// The issue or pull request number.
    pub number: u64,
    pub is_pull_request: bool,
    pub comment_id: u64,
    pub body: String,
    pub author: Option<String>,
    /// `OWNER`, `MEMBER`, `COLLABORATOR`, `CONTRIBUTOR`, `NONE`, ...
    pub author_association: Option<String>,
    pub repo: RepoRef,
    pub installation: Option<u64>,
}

/// `issue_comment`, as parsed since the `@eka-ci` commands are acted on (older queued events keep the
/// [`IssueCommentSummary`] form and are not acted on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommentSummary {
    /// `created`, `edited` or `deleted`.
    pub action: String,
    /// The issue or pull request number.
    pub number: u64,
    pub is_pull_request: bool,
    pub comment_id: u64,
    pub body: String,
    pub author: Option<String>,
    pub author_id: Option<u64>,
    /// `comment.user.type` is `Bot`.
    pub author_is_bot: bool,
    /// `comment.created_at`, as GitHub writes it.
    pub created_at: Option<String>,
    pub repo: RepoRef,
    pub installation: Option<u64>,
    /// The pull request's head as the newest `pull_request` event seen before this comment was recorded
    /// knew it (filled in by [`record`], from `github_pr_heads`): what the comment's author saw.
    pub known_head: Option<KnownHead>,
}

/// A pull request's head as recorded from `pull_request` events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownHead {
    pub sha: String,
    /// `updated_at` of the first event that reported this head (`YYYY-MM-DDTHH:MM:SSZ`).
    pub since: String,
}

/// `pull_request_review`: a review was submitted, edited or dismissed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestReviewSummary {
    pub action: String,
    pub number: u64,
    pub review_id: u64,
    /// `approved`, `changes_requested`, `commented`, `dismissed` (as GitHub spells it).
    pub state: String,
    pub reviewer: Option<String>,
    /// The commit the review was made on.
    pub commit_id: Option<String>,
    pub head_sha: String,
    pub repo: RepoRef,
    pub installation: Option<u64>,
}

/// What the pipeline needs from one event. Stored (postcard): new variants go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventSummary {
    PullRequest(PullRequestSummary),
    MergeGroup(MergeGroupSummary),
    CheckRun(CheckRunSummary),
    CheckSuite(CheckSuiteSummary),
    Installation(InstallationSummary),
    InstallationRepositories(InstallationRepositoriesSummary),
    Push(PushSummary),
    IssueComment(IssueCommentSummary),
    PullRequestReview(PullRequestReviewSummary),
    Comment(CommentSummary),
}

impl EventSummary {
    /// The repository the event is about; `None` for installation events (they name several).
    pub fn repo(&self) -> Option<&RepoRef> {
        match self {
            EventSummary::PullRequest(s) => Some(&s.repo),
            EventSummary::MergeGroup(s) => Some(&s.repo),
            EventSummary::CheckRun(s) => Some(&s.repo),
            EventSummary::CheckSuite(s) => Some(&s.repo),
            EventSummary::Push(s) => Some(&s.repo),
            EventSummary::IssueComment(s) => Some(&s.repo),
            EventSummary::PullRequestReview(s) => Some(&s.repo),
            EventSummary::Comment(s) => Some(&s.repo),
            EventSummary::Installation(_) | EventSummary::InstallationRepositories(_) => None,
        }
    }

    /// The payload's `action` (`push` has none).
    pub fn action(&self) -> Option<&str> {
        Some(match self {
            EventSummary::PullRequest(s) => &s.action,
            EventSummary::MergeGroup(s) => &s.action,
            EventSummary::CheckRun(s) => &s.action,
            EventSummary::CheckSuite(s) => &s.action,
            EventSummary::Installation(s) => &s.action,
            EventSummary::InstallationRepositories(s) => &s.action,
            EventSummary::Push(_) => return None,
            EventSummary::IssueComment(s) => &s.action,
            EventSummary::PullRequestReview(s) => &s.action,
            EventSummary::Comment(s) => &s.action,
        })
    }
}

// ---------------------------------------------------------------------------------------------------
// Parsing: the wire forms, exactly the fields we read. Unknown fields are ignored; `Option` fields may
// be absent or null.

#[derive(Deserialize)]
struct WRepo {
    full_name: String,
    clone_url: String,
    html_url: String,
    private: Option<bool>,
}

impl From<WRepo> for RepoRef {
    fn from(r: WRepo) -> RepoRef {
        RepoRef { full_name: r.full_name, clone_url: r.clone_url, html_url: r.html_url, private: r.private }
    }
}

#[derive(Deserialize)]
struct WName {
    full_name: String,
}

#[derive(Deserialize)]
struct WId {
    id: u64,
}

#[derive(Deserialize)]
struct WUser {
    login: String,
}

#[derive(Deserialize)]
struct WBranch {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    repo: Option<WName>,
}

#[derive(Deserialize)]
struct WPull {
    draft: Option<bool>,
    user: Option<WUser>,
    head: WBranch,
    base: WBranch,
}

#[derive(Deserialize)]
struct WPullRequestEvent {
    action: String,
    number: u64,
    pull_request: WPull,
    repository: WRepo,
    installation: Option<WId>,
}

#[derive(Deserialize)]
struct WMergeGroup {
    head_sha: String,
    head_ref: String,
    base_sha: String,
    base_ref: String,
}

#[derive(Deserialize)]
struct WMergeGroupEvent {
    action: String,
    merge_group: WMergeGroup,
    repository: WRepo,
    installation: Option<WId>,
}

#[derive(Deserialize)]
struct WCheckRun {
    id: u64,
    name: String,
    head_sha: String,
    check_suite: Option<WId>,
    app: Option<WId>,
}

#[derive(Deserialize)]
struct WCheckRunEvent {
    action: String,
    check_run: WCheckRun,
    repository: WRepo,
    installation: Option<WId>,
}

#[derive(Deserialize)]
struct WNumber {
    number: u64,
}

#[derive(Deserialize)]
struct WCheckSuite {
    id: u64,
    head_sha: String,
    head_branch: Option<String>,
    #[serde(default)]
    pull_requests: Vec<WNumber>,
    app: Option<WId>,
}

#[derive(Deserialize)]
struct WCheckSuiteEvent {
    action: String,
    check_suite: WCheckSuite,
    repository: WRepo,
    installation: Option<WId>,
}

#[derive(Deserialize)]
struct WInstallation {
    id: u64,
    account: WUser,
}

#[derive(Deserialize)]
struct WInstallationEvent {
    action: String,
    installation: WInstallation,
    repositories: Option<Vec<WName>>,
}

#[derive(Deserialize)]
struct WInstallationRepositoriesEvent {
    action: String,
    installation: WInstallation,
    repository_selection: String,
    #[serde(default)]
    repositories_added: Vec<WName>,
    #[serde(default)]
    repositories_removed: Vec<WName>,
}

#[derive(Deserialize)]
struct WPushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    repository: WRepo,
    installation: Option<WId>,
}

#[derive(Deserialize)]
struct WIssue {
    number: u64,
    /// Present (an object) only when the issue is a pull request.
    pull_request: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct WCommentUser {
    login: String,
    id: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct WComment {
    id: u64,
    body: Option<String>,
    user: Option<WCommentUser>,
    created_at: Option<String>,
}

#[derive(Deserialize)]
struct WIssueCommentEvent {
    action: String,
    issue: WIssue,
    comment: WComment,
    repository: WRepo,
    installation: Option<WId>,
}

#[derive(Deserialize)]
struct WReview {
    id: u64,
    state: String,
    user: Option<WUser>,
    commit_id: Option<String>,
}

#[derive(Deserialize)]
struct WHead {
    sha: String,
}

#[derive(Deserialize)]
struct WReviewedPull {
    number: u64,
    head: WHead,
}

#[derive(Deserialize)]
struct WPullRequestReviewEvent {
    action: String,
    review: WReview,
    pull_request: WReviewedPull,
    repository: WRepo,
    installation: Option<WId>,
}

/// Why a body could not be parsed. Messages name the event, the position or the field path, never a
/// value from the payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON (line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error("payload does not fit a `{event}` event at `{path}`: {what}")]
    Shape { event: &'static str, path: String, what: String },
    #[error(
        "payload does not fit GitHub's `{event}` event model (octocrab) at line {line}, column {column}"
    )]
    Model { event: &'static str, line: usize, column: usize },
}

fn from_json<T: DeserializeOwned>(event: UsedEvent, body: &[u8]) -> Result<T, ParseError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| shape_error(event, e))?;
    de.end().map_err(|e| ParseError::Syntax { line: e.line(), column: e.column() })?;
    Ok(value)
}

fn shape_error(event: UsedEvent, e: serde_path_to_error::Error<serde_json::Error>) -> ParseError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Syntax
        | serde_json::error::Category::Eof
        | serde_json::error::Category::Io => {
            ParseError::Syntax { line: inner.line(), column: inner.column() }
        }
        serde_json::error::Category::Data => {
            // serde_json's data messages quote payload values ("invalid type: string \"..\""); only the
            // missing-field message, which names one of our field names, is passed on.
            let message = inner.to_string();
            let what = match message.split(" at line ").next() {
                Some(m) if m.starts_with("missing field `") => m.to_string(),
                _ => "wrong type or value".to_string(),
            };
            ParseError::Shape { event: event.name(), path, what }
        }
    }
}

fn names(list: Vec<WName>) -> Vec<String> {
    list.into_iter().map(|r| r.full_name).collect()
}

/// Checks that `body` fits `event` as octocrab models GitHub's webhook payloads
/// (`WebhookEvent::try_from_header_and_body`), so that what GitHub documents for the event, not only the
/// few fields [`parse`] extracts, is well-formed. The error gives the position, never a payload value.
pub fn check_model(event: UsedEvent, body: &[u8]) -> Result<(), ParseError> {
    use octocrab::models::webhook_events::WebhookEvent;
    match WebhookEvent::try_from_header_and_body(event.name(), body) {
        Ok(_) => Ok(()),
        Err(e) => Err(ParseError::Model { event: event.name(), line: e.line(), column: e.column() }),
    }
}

/// Parses the raw `body` of a `event` delivery into our summary.
pub fn parse(event: UsedEvent, body: &[u8]) -> Result<EventSummary, ParseError> {
    Ok(match event {
        UsedEvent::PullRequest => {
            let e: WPullRequestEvent = from_json(event, body)?;
            let pr = e.pull_request;
            EventSummary::PullRequest(PullRequestSummary {
                action: e.action,
                number: e.number,
                repo: e.repository.into(),
                head_sha: pr.head.sha,
                head_ref: pr.head.git_ref,
                base_sha: pr.base.sha,
                base_ref: pr.base.git_ref,
                head_repo: pr.head.repo.map(|r| r.full_name),
                author: pr.user.map(|u| u.login),
                draft: pr.draft.unwrap_or(false),
                installation: e.installation.map(|i| i.id),
            })
        }
        UsedEvent::MergeGroup => {
            let e: WMergeGroupEvent = from_json(event, body)?;
            EventSummary::MergeGroup(MergeGroupSummary {
                action: e.action,
                head_sha: e.merge_group.head_sha,
                head_ref: e.merge_group.head_ref,
                base_sha: e.merge_group.base_sha,
                base_ref: e.merge_group.base_ref,
                repo: e.repository.into(),
                installation: e.installation.map(|i| i.id),
            })
        }
        UsedEvent::CheckRun => {
            let e: WCheckRunEvent = from_json(event, body)?;
            EventSummary::CheckRun(CheckRunSummary {
                action: e.action,
                check_run_id: e.check_run.id,
                name: e.check_run.name,
                head_sha: e.check_run.head_sha,
                check_suite_id: e.check_run.check_suite.map(|s| s.id),
                app_id: e.check_run.app.map(|a| a.id),
                repo: e.repository.into(),
                installation: e.installation.map(|i| i.id),
            })
        }
        UsedEvent::CheckSuite => {
            let e: WCheckSuiteEvent = from_json(event, body)?;
            EventSummary::CheckSuite(CheckSuiteSummary {
                action: e.action,
                check_suite_id: e.check_suite.id,
                head_sha: e.check_suite.head_sha,
                head_branch: e.check_suite.head_branch,
                pull_requests: e.check_suite.pull_requests.into_iter().map(|p| p.number).collect(),
                app_id: e.check_suite.app.map(|a| a.id),
                repo: e.repository.into(),
                installation: e.installation.map(|i| i.id),
            })
        }
        UsedEvent::Installation => {
            let e: WInstallationEvent = from_json(event, body)?;
            EventSummary::Installation(InstallationSummary {
                action: e.action,
                installation: e.installation.id,
                account: e.installation.account.login,
                repositories: names(e.repositories.unwrap_or_default()),
            })
        }
        UsedEvent::InstallationRepositories => {
            let e: WInstallationRepositoriesEvent = from_json(event, body)?;
            EventSummary::InstallationRepositories(InstallationRepositoriesSummary {
                action: e.action,
                installation: e.installation.id,
                account: e.installation.account.login,
                repository_selection: e.repository_selection,
                added: names(e.repositories_added),
                removed: names(e.repositories_removed),
            })
        }
        UsedEvent::Push => {
            let e: WPushEvent = from_json(event, body)?;
            EventSummary::Push(PushSummary {
                git_ref: e.git_ref,
                before: e.before,
                after: e.after,
                created: e.created,
                deleted: e.deleted,
                forced: e.forced,
                repo: e.repository.into(),
                installation: e.installation.map(|i| i.id),
            })
        }
        UsedEvent::IssueComment => {
            let e: WIssueCommentEvent = from_json(event, body)?;
            let user = e.comment.user;
            EventSummary::Comment(CommentSummary {
                action: e.action,
                number: e.issue.number,
                is_pull_request: e.issue.pull_request.is_some(),
                comment_id: e.comment.id,
                body: e.comment.body.unwrap_or_default(),
                author_is_bot: user.as_ref().is_some_and(|u| u.kind.as_deref() == Some("Bot")),
                author_id: user.as_ref().and_then(|u| u.id),
                author: user.map(|u| u.login),
                created_at: e.comment.created_at,
                repo: e.repository.into(),
                installation: e.installation.map(|i| i.id),
                known_head: None,
            })
        }
        UsedEvent::PullRequestReview => {
            let e: WPullRequestReviewEvent = from_json(event, body)?;
            EventSummary::PullRequestReview(PullRequestReviewSummary {
                action: e.action,
                number: e.pull_request.number,
                review_id: e.review.id,
                state: e.review.state,
                reviewer: e.review.user.map(|u| u.login),
                commit_id: e.review.commit_id,
                head_sha: e.pull_request.head.sha,
                repo: e.repository.into(),
                installation: e.installation.map(|i| i.id),
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------------
// Persistence: `github_deliveries` (idempotency) and `github_events` (the queue).

const DELIVERIES_NAME: &str = "github_deliveries";
const EVENTS_NAME: &str = "github_events";

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryOutcome {
    /// Queued in `github_events` under `seq`, not handled yet.
    Queued { seq: u64 },
    /// Queued under `seq`, then handled at `at` (Unix seconds) with `outcome` (the consumer's words).
    Handled { seq: u64, at: u64, outcome: String },
    /// An event we do not use (answered 204).
    Ignored,
    /// A `ping` (answered 200).
    Ping,
    /// A `pull_request` event older (by `pull_request.updated_at`) than one already seen for the same
    /// pull request: a replay or a late delivery, never queued (answered 200).
    Stale,
}

/// One delivery seen, keyed by its `X-GitHub-Delivery` id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Unix seconds.
    pub received_at: u64,
    pub event: String,
    pub action: Option<String>,
    pub outcome: DeliveryOutcome,
}

/// Versioned on-disk form of [`Delivery`].
#[derive(Serialize, Deserialize)]
enum DeliveryRecord {
    V1(Delivery),
}

/// The state of a queued event. Handled events leave the queue (their outcome moves to the delivery),
/// so a stored event is always pending today; later versions may add in-progress states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventState {
    Pending,
}

/// One queued event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The `X-GitHub-Delivery` id.
    pub delivery: String,
    pub event: String,
    pub action: Option<String>,
    /// Unix seconds.
    pub received_at: u64,
    pub summary: EventSummary,
    pub state: EventState,
}

/// Versioned on-disk form of [`EventRecord`].
#[derive(Serialize, Deserialize)]
enum StoredEvent {
    V1(EventRecord),
}

/// A verified delivery, ready to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Ping,
    /// An event we do not use; the name is the `X-GitHub-Event` value.
    Unused(String),
    /// A used event; `updated_at` is `pull_request.updated_at` of a `pull_request` event (see
    /// [`pull_request_updated_at`]), which decides whether it is stale.
    Event {
        summary: Box<EventSummary>,
        updated_at: Option<String>,
    },
}

/// What [`record`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Queued under this sequence number.
    Accepted { seq: u64 },
    /// The delivery id was seen before; nothing changed.
    Duplicate { previous: Delivery },
    /// Recorded as seen; nothing queued.
    Ignored,
    /// Recorded as seen; nothing queued.
    Ping,
    /// Recorded as seen, not queued: older than the newest event seen for its pull request.
    Stale,
}

/// The `meta` key holding the next `github_events` sequence number.
const NEXT_SEQ_KEY: &str = "github_events_next_seq";

/// Records delivery `id` of `incoming` and, for a used event, queues it, in one write transaction. A
/// delivery id seen before changes nothing and answers [`Intake::Duplicate`]. Blocking.
pub fn record(store: &Store, id: &str, incoming: Incoming, received_at: u64) -> Result<Intake, StoreError> {
    let mut intakes = record_batch(store, vec![(id.to_string(), incoming)], received_at)?;
    intakes.pop().ok_or_else(|| StoreError::Missing { table: DELIVERIES_NAME, key: id.to_string() })
}

/// [`record`] for several deliveries in one write transaction (one commit, one fsync), in order: a
/// delivery id repeated in the batch is a duplicate of its first occurrence. All are recorded or none.
/// Blocking.
pub fn record_batch(
    store: &Store,
    items: Vec<(String, Incoming)>,
    received_at: u64,
) -> Result<Vec<Intake>, StoreError> {
    let tx = store.db().begin_write()?;
    let mut intakes = Vec::with_capacity(items.len());
    for (id, incoming) in items {
        intakes.push(record_in(&tx, &id, incoming, received_at)?);
    }
    if intakes.iter().all(|i| matches!(i, Intake::Duplicate { .. })) {
        // Nothing was written: dropping the transaction aborts it.
        return Ok(intakes);
    }
    tx.commit()?;
    Ok(intakes)
}

fn record_in(
    tx: &redb::WriteTransaction,
    id: &str,
    incoming: Incoming,
    received_at: u64,
) -> Result<Intake, StoreError> {
    let intake = {
        let mut deliveries = tx.open_table(GITHUB_DELIVERIES)?;
        let previous = match deliveries.get(id)? {
            Some(v) => Some(decode::<DeliveryRecord>(DELIVERIES_NAME, id, v.value())?),
            None => None,
        };
        if let Some(DeliveryRecord::V1(previous)) = previous {
            // Nothing is written for it.
            return Ok(Intake::Duplicate { previous });
        }
        let (event, action, outcome, intake) = match incoming {
            Incoming::Ping => ("ping".to_string(), None, DeliveryOutcome::Ping, Intake::Ping),
            Incoming::Unused(name) => (name, None, DeliveryOutcome::Ignored, Intake::Ignored),
            Incoming::Event { summary, updated_at } if is_stale(tx, &summary, updated_at.as_deref())? => (
                event_name(&summary).to_string(),
                summary.action().map(str::to_string),
                DeliveryOutcome::Stale,
                Intake::Stale,
            ),
            Incoming::Event { mut summary, .. } => {
                if let EventSummary::Comment(c) = summary.as_mut() {
                    if c.is_pull_request {
                        c.known_head = known_head(tx, &c.repo.full_name, c.number)?;
                    }
                }
                if let Some(repo) = summary.repo() {
                    if let Some(private) = repo.private {
                        crate::visibility::record_repo(tx, &repo.clone_url, &repo.full_name, private)?;
                    }
                }
                let mut events = tx.open_table(GITHUB_EVENTS)?;
                // Sequence numbers are never reused, even once the queue has emptied: a counter in
                // `meta` (written in this same transaction) remembers the next one.
                let mut meta = tx.open_table(META)?;
                let counter = match meta.get(NEXT_SEQ_KEY)? {
                    Some(v) => decode::<u64>("meta", NEXT_SEQ_KEY, v.value())?,
                    None => 1,
                };
                let after_last = events.last()?.map_or(1, |(k, _)| k.value().saturating_add(1));
                let seq = counter.max(after_last);
                meta.insert(NEXT_SEQ_KEY, encode("meta", &seq.saturating_add(1))?.as_slice())?;
                let event = event_name(&summary).to_string();
                let action = summary.action().map(str::to_string);
                let record = EventRecord {
                    delivery: id.to_string(),
                    event: event.clone(),
                    action: action.clone(),
                    received_at,
                    summary: *summary,
                    state: EventState::Pending,
                };
                events.insert(seq, encode(EVENTS_NAME, &StoredEvent::V1(record))?.as_slice())?;
                (event, action, DeliveryOutcome::Queued { seq }, Intake::Accepted { seq })
            }
        };
        let delivery = DeliveryRecord::V1(Delivery { received_at, event, action, outcome });
        deliveries.insert(id, encode(DELIVERIES_NAME, &delivery)?.as_slice())?;
        intake
    };
    Ok(intake)
}

/// One row of `github_pr_heads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrHeadRecord {
    V1(PrHead),
    V2(PrHeadV2),
}

/// The newest `pull_request` event seen for one pull request (rows written before `head_since` was
/// recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrHead {
    /// `pull_request.updated_at`, as GitHub writes it (`YYYY-MM-DDTHH:MM:SSZ`, so ordered as text).
    pub updated_at: String,
    pub head_sha: String,
}

/// The newest `pull_request` event seen for one pull request, and since when its head is the head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrHeadV2 {
    /// `pull_request.updated_at`, as GitHub writes it (`YYYY-MM-DDTHH:MM:SSZ`, so ordered as text).
    pub updated_at: String,
    pub head_sha: String,
    /// `updated_at` of the first event that reported `head_sha`.
    pub head_since: String,
}

impl PrHeadRecord {
    /// The newest form (a `V1` row's head is taken to be as old as its event).
    fn upgrade(self) -> PrHeadV2 {
        match self {
            PrHeadRecord::V1(h) => {
                PrHeadV2 { head_since: h.updated_at.clone(), updated_at: h.updated_at, head_sha: h.head_sha }
            }
            PrHeadRecord::V2(h) => h,
        }
    }
}

fn pr_head_key(repo: &str, number: u64) -> String {
    format!("{}#{}", repo.to_ascii_lowercase(), number)
}

fn read_pr_head(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<PrHeadV2>, StoreError> {
    match table.get(key)? {
        Some(v) => Ok(Some(decode::<PrHeadRecord>(PR_HEADS_NAME, key, v.value())?.upgrade())),
        None => Ok(None),
    }
}

const PR_HEADS_NAME: &str = "github_pr_heads";

/// `pull_request.updated_at` of a `pull_request` payload, when it has GitHub's UTC form
/// `YYYY-MM-DDTHH:MM:SSZ` (anything else: `None`, and the event is not ordered).
pub fn pull_request_updated_at(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Outer {
        pull_request: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        updated_at: Option<String>,
    }
    let at = serde_json::from_slice::<Outer>(body).ok()?.pull_request.updated_at?;
    let shape = at.len() == 20
        && at.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    shape.then_some(at)
}

/// Whether a `pull_request` event is older than the newest one seen for its pull request; if not,
/// records it as the newest (in the caller's transaction). Events of the same second are not stale.
fn is_stale(
    tx: &redb::WriteTransaction,
    summary: &EventSummary,
    updated_at: Option<&str>,
) -> Result<bool, StoreError> {
    let (EventSummary::PullRequest(pr), Some(updated_at)) = (summary, updated_at) else {
        return Ok(false);
    };
    let key = pr_head_key(&pr.repo.full_name, pr.number);
    let mut heads = tx.open_table(GITHUB_PR_HEADS)?;
    let newest = read_pr_head(&heads, &key)?;
    if let Some(newest) = &newest {
        if updated_at < newest.updated_at.as_str() {
            return Ok(true);
        }
    }
    let head_since = match newest {
        Some(n) if n.head_sha.eq_ignore_ascii_case(&pr.head_sha) => n.head_since,
        _ => updated_at.to_string(),
    };
    let record = PrHeadRecord::V2(PrHeadV2 {
        updated_at: updated_at.to_string(),
        head_sha: pr.head_sha.clone(),
        head_since,
    });
    heads.insert(key.as_str(), encode(PR_HEADS_NAME, &record)?.as_slice())?;
    Ok(false)
}

/// The head of pull request `number` of `repo` as the `pull_request` events recorded so far know it.
fn known_head(tx: &redb::WriteTransaction, repo: &str, number: u64) -> Result<Option<KnownHead>, StoreError> {
    head_in(&tx.open_table(GITHUB_PR_HEADS)?, repo, number)
}

fn head_in(
    heads: &impl ReadableTable<&'static str, &'static [u8]>,
    repo: &str,
    number: u64,
) -> Result<Option<KnownHead>, StoreError> {
    Ok(read_pr_head(heads, &pr_head_key(repo, number))?
        .map(|h| KnownHead { sha: h.head_sha.to_ascii_lowercase(), since: h.head_since }))
}

/// The head of pull request `number` of `repo` as the `pull_request` events recorded so far know it
/// (read-only; for callers outside the intake).
pub fn recorded_head(store: &Store, repo: &str, number: u64) -> Result<Option<KnownHead>, StoreError> {
    let tx = store.db().begin_read()?;
    head_in(&tx.open_table(GITHUB_PR_HEADS)?, repo, number)
}

fn event_name(summary: &EventSummary) -> &'static str {
    match summary {
        EventSummary::PullRequest(_) => UsedEvent::PullRequest.name(),
        EventSummary::MergeGroup(_) => UsedEvent::MergeGroup.name(),
        EventSummary::CheckRun(_) => UsedEvent::CheckRun.name(),
        EventSummary::CheckSuite(_) => UsedEvent::CheckSuite.name(),
        EventSummary::Installation(_) => UsedEvent::Installation.name(),
        EventSummary::InstallationRepositories(_) => UsedEvent::InstallationRepositories.name(),
        EventSummary::Push(_) => UsedEvent::Push.name(),
        EventSummary::IssueComment(_) => UsedEvent::IssueComment.name(),
        EventSummary::PullRequestReview(_) => UsedEvent::PullRequestReview.name(),
        EventSummary::Comment(_) => UsedEvent::IssueComment.name(),
    }
}

/// Every queued event, oldest first. Blocking.
pub fn pending(store: &Store) -> Result<Vec<(u64, EventRecord)>, StoreError> {
    let tx = store.db().begin_read()?;
    let events = tx.open_table(GITHUB_EVENTS)?;
    let mut out = Vec::new();
    for row in events.iter()? {
        let (k, v) = row?;
        let seq = k.value();
        let StoredEvent::V1(record) = decode(EVENTS_NAME, &seq.to_string(), v.value())?;
        out.push((seq, record));
    }
    Ok(out)
}

/// How many events are queued. Blocking.
pub fn pending_count(store: &Store) -> Result<u64, StoreError> {
    let tx = store.db().begin_read()?;
    let events = tx.open_table(GITHUB_EVENTS)?;
    Ok(events.len()?)
}

/// Retires queued event `seq`: removes it from the queue and records `outcome` on its delivery, in one
/// write transaction. Blocking. Fails with [`StoreError::Missing`] when `seq` is not queued.
pub fn mark_done(store: &Store, seq: u64, outcome: &str) -> Result<(), StoreError> {
    let tx = store.db().begin_write()?;
    {
        let mut events = tx.open_table(GITHUB_EVENTS)?;
        let removed = match events.remove(seq)? {
            Some(v) => decode::<StoredEvent>(EVENTS_NAME, &seq.to_string(), v.value())?,
            None => return Err(StoreError::Missing { table: EVENTS_NAME, key: seq.to_string() }),
        };
        let StoredEvent::V1(record) = removed;
        let mut deliveries = tx.open_table(GITHUB_DELIVERIES)?;
        let delivery = match deliveries.get(record.delivery.as_str())? {
            Some(v) => {
                let DeliveryRecord::V1(d) = decode(DELIVERIES_NAME, &record.delivery, v.value())?;
                d
            }
            None => Delivery {
                received_at: record.received_at,
                event: record.event.clone(),
                action: record.action.clone(),
                outcome: DeliveryOutcome::Queued { seq },
            },
        };
        let handled = DeliveryRecord::V1(Delivery {
            outcome: DeliveryOutcome::Handled {
                seq,
                at: crate::store::now_secs(),
                outcome: outcome.to_string(),
            },
            ..delivery
        });
        deliveries.insert(record.delivery.as_str(), encode(DELIVERIES_NAME, &handled)?.as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// The recorded delivery `id`, if any. Blocking.
pub fn delivery(store: &Store, id: &str) -> Result<Option<Delivery>, StoreError> {
    let tx = store.db().begin_read()?;
    let deliveries = tx.open_table(GITHUB_DELIVERIES)?;
    match deliveries.get(id)? {
        Some(v) => {
            let DeliveryRecord::V1(d) = decode(DELIVERIES_NAME, id, v.value())?;
            Ok(Some(d))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_official_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, body), expected);
        assert_eq!(verify_signature(secret, body, Some(expected)), Ok(()));
        assert_eq!(verify_signature(secret, b"Hello, World?", Some(expected)), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(b"other", body, Some(expected)), Err(SignatureError::Mismatch));
        let mut flipped = expected.to_string();
        flipped.pop();
        flipped.push('f');
        assert_eq!(verify_signature(secret, body, Some(&flipped)), Err(SignatureError::Mismatch));
    }

    #[test]
    fn malformed_and_missing_signatures_are_refused() {
        let s = b"k";
        assert_eq!(verify_signature(s, b"x", None), Err(SignatureError::Missing));
        for bad in [
            "",
            "sha256=",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
            "sha256=zz",
            &"sha256=".repeat(2),
        ] {
            assert_eq!(verify_signature(s, b"x", Some(bad)), Err(SignatureError::Malformed), "{bad}");
        }
        let not_hex = format!("sha256={}", "g".repeat(64));
        assert_eq!(verify_signature(s, b"x", Some(&not_hex)), Err(SignatureError::Malformed));
    }

    #[test]
    fn classification() {
        assert_eq!(classify("ping"), EventKind::Ping);
        assert_eq!(classify("pull_request"), EventKind::Used(UsedEvent::PullRequest));
        assert_eq!(classify("star"), EventKind::Unused);
        assert_eq!(classify("Pull_Request"), EventKind::Unused);
        assert_eq!(metric_label("anything-an-attacker-sends"), "other");
        for e in UsedEvent::ALL {
            assert_eq!(classify(e.name()), EventKind::Used(e));
        }
    }

    #[test]
    fn issue_comment_and_review_parse() {
        let repo = r#""repository": {"full_name": "o/r", "clone_url": "https://github.com/o/r.git", "html_url": "https://github.com/o/r"}"#;
        let comment = format!(
            r#"{{"action": "created", "issue": {{"number": 7, "pull_request": {{"url": "u"}}}},
               "comment": {{"id": 9, "body": "@eka-ci merge", "user": {{"login": "alice"}}, "author_association": "MEMBER"}},
               {repo}, "installation": {{"id": 3}}}}"#
        );
        let EventSummary::Comment(c) = parse(UsedEvent::IssueComment, comment.as_bytes()).expect("comment")
        else {
            panic!("wrong variant")
        };
        assert!(c.is_pull_request && c.number == 7 && c.body == "@eka-ci merge" && c.installation == Some(3));
        assert!(!c.author_is_bot && c.author.as_deref() == Some("alice") && c.author_id.is_none());
        let review = format!(
            r#"{{"action": "submitted", "review": {{"id": 1, "state": "approved", "user": null, "commit_id": "abc"}},
               "pull_request": {{"number": 4, "head": {{"sha": "abc"}}}}, {repo}}}"#
        );
        let EventSummary::PullRequestReview(r) =
            parse(UsedEvent::PullRequestReview, review.as_bytes()).expect("review")
        else {
            panic!("wrong variant")
        };
        assert!(r.state == "approved" && r.reviewer.is_none() && r.installation.is_none() && r.number == 4);
    }

    #[test]
    fn parse_errors_never_echo_values() {
        let body = br#"{"action": "opened", "number": "SECRET-VALUE", "pull_request": {}, "repository": {}}"#;
        let e = parse(UsedEvent::PullRequest, body).expect_err("wrong type");
        let text = e.to_string();
        assert!(!text.contains("SECRET-VALUE") && text.contains("number"), "{text}");
        let e = parse(UsedEvent::Push, br#"{"ref": "refs/heads/main""#).expect_err("eof");
        assert!(matches!(e, ParseError::Syntax { .. }), "{e}");
        let e = parse(UsedEvent::Push, br#"{"ref": "x"}"#).expect_err("missing");
        assert!(e.to_string().contains("missing field `before`"), "{e}");
        let e = parse(UsedEvent::Push, b"{} trailing").expect_err("trailing");
        assert!(!e.to_string().contains("trailing"), "{e}");
    }
}
