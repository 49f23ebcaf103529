//! The `@eka-ci merge` comment commands and the merges they ask for (docs/merge.md).
//!
//! A new comment on a pull request whose first command line (`commands`) is `@eka-ci merge [method]`
//! from someone with write access or who maintains every package the pull request changes
//! (`maintainers`), and not rate limited, becomes a pending request (`merges`) pinned
//! to the head commit the commenter saw, acknowledged with +1; one that is denied gets -1 and a reply.
//! `@eka-ci merge cancel` withdraws it (the requester, a writer or such a maintainer; silently
//! nothing when nothing is pending). Every pass of the service loop ([`GitHubService::merge_ready`]) merges the requests whose
//! pinned commit's run has passed, sending that commit as `sha` so that GitHub itself refuses when the
//! head moved (409); a rocket marks the merge. A push that moves the head away from the pinned commit
//! cancels the request (confused, and a reply naming both commits). Reactions and replies that fail
//! are logged, never retried: the request's state in the store is what counts.
//!
//! This file never parses webhooks or command text and never holds a store transaction across an
//! `.await`.

use super::GitHubService;
use crate::forge::github::app::GitHubApp;
use crate::forge::github::client::{ClientError, GitHubClient, PullRequest};
use crate::forge::github::commands::{self, Command};
use crate::forge::github::maintainers::{self, GitHubUser};
use crate::forge::github::merges::{self, MergeRequest};
use crate::forge::github::runs::{self, RunState};
use crate::forge::github::webhook::{CommentSummary, PullRequestSummary};
use crate::store::{now_secs, StoreError};
use crate::text::short_sha as short;

/// Accepted commands from one person on one repository are at least this far apart (seconds).
pub const RATE_LIMIT_SECS: u64 = 5;

/// Reactions on the command comment.
const ACCEPTED: &str = "+1";
const DENIED: &str = "-1";
const MERGED: &str = "rocket";
const CANCELLED: &str = "confused";

impl GitHubService {
    /// An `issue_comment` event: runs the comment's command, if it has one. Returns the outcome.
    pub(super) async fn on_comment(
        &self,
        c: &CommentSummary,
        received_at: u64,
    ) -> Result<String, StoreError> {
        if c.action != "created" {
            return Ok(format!("comment {}: commands come only from new comments", c.action));
        }
        if !c.is_pull_request {
            return Ok("comment on an issue: not a command".into());
        }
        if c.author_is_bot {
            return Ok("comment by a bot: not a command".into());
        }
        let Some(command) = commands::parse(&c.body) else { return Ok("comment without a command".into()) };
        let (Some(login), Some(user_id)) = (c.author.as_deref(), c.author_id) else {
            return Ok("command without an author: ignored".into());
        };
        if !self.rate_allows(user_id, &c.repo.full_name, received_at) {
            return Ok(format!("command by {login} rate limited"));
        }
        let Some((client, installation)) = self.client_for_repo(&c.repo.full_name, c.installation).await
        else {
            return Ok("no GitHub App may serve this repository".into());
        };
        let result = match command {
            Command::Merge(method) => {
                self.accept_merge(c, login, user_id, method.map(|m| m.as_str()), &client, installation).await
            }
            Command::Cancel => self.cancel_merge(c, login, user_id, &client, installation).await,
        };
        match result {
            Ok(outcome) => Ok(outcome),
            Err(CommandError::Store(e)) => Err(e),
            Err(CommandError::GitHub(e)) => {
                tracing::warn!(repo = %c.repo.full_name, number = c.number, error = %e, "an @eka-ci command could not be handled");
                Ok(format!("command not handled: {e}"))
            }
        }
    }

    /// Whether a command of `user_id` on `repo` received at `at` passes the rate limit; records it if so.
    fn rate_allows(&self, user_id: u64, repo: &str, at: u64) -> bool {
        let mut times = self.command_times.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user_id, repo.to_ascii_lowercase());
        if times.get(&key).is_some_and(|last| at < last.saturating_add(RATE_LIMIT_SECS)) {
            return false;
        }
        times.insert(key, at);
        true
    }

    async fn accept_merge(
        &self,
        c: &CommentSummary,
        login: &str,
        user_id: u64,
        method: Option<&str>,
        client: &GitHubClient,
        installation: u64,
    ) -> Result<String, CommandError> {
        let repo = &c.repo.full_name;
        let pr = client.pull_request(installation, repo, c.number).await?;
        if pr.state != "open" || pr.merged == Some(true) {
            return Ok(format!("merge command on a {} pull request: ignored", pr.state));
        }
        // The head the commenter saw: the one recorded from `pull_request` events when the comment
        // arrived, unless it only became the head after the comment was written.
        let current = pr.head.sha.to_ascii_lowercase();
        let seen = match (&c.known_head, c.created_at.as_deref()) {
            (Some(known), Some(at)) if known.since.as_str() > at => None,
            (Some(known), _) => Some(known.sha.clone()),
            (None, _) => Some(current.clone()),
        };
        let pinned = seen.filter(|s| *s == current);
        let user = GitHubUser { login, id: user_id };
        let authorized = self.has_write_access(client, installation, repo, login).await?
            || match &pinned {
                Some(sha) => self.maintains_changes(repo, sha, is_fork(&pr), user).await?,
                None => false,
            };
        if !authorized {
            let reply = format!(
                "{} `@eka-ci merge` was denied: queueing a merge needs write access to this repository, or \
                 being a maintainer of every package this pull request changes.",
                mention(login)
            );
            self.react_and_reply(client, installation, repo, c.number, c.comment_id, DENIED, Some(&reply))
                .await;
            return Ok(format!("merge command by {login} denied: neither write access nor maintainer"));
        }
        let Some(pinned) = pinned else {
            let reply = format!(
                "{} the head of this pull request is now `{current}`, which is not the commit your \
                 `@eka-ci merge` was written against. Review the new commits and comment again.",
                mention(login)
            );
            self.react_and_reply(client, installation, repo, c.number, c.comment_id, DENIED, Some(&reply))
                .await;
            return Ok(format!("merge command by {login} refused: the head moved to {}", short(&current)));
        };
        let request = MergeRequest {
            repo: repo.clone(),
            number: c.number,
            sha: pinned.clone(),
            method: method.map(str::to_string),
            requester: login.to_string(),
            requester_id: user_id,
            comment_id: c.comment_id,
            installation: Some(installation),
            requested_at: now_secs(),
            skipped_at_attempt: None,
        };
        let (store, r) = (self.store.clone(), request.clone());
        smol::unblock(move || merges::put(&store, &r)).await?;
        self.react_and_reply(client, installation, repo, c.number, c.comment_id, ACCEPTED, None).await;
        let merged = self.try_merge(&request).await?;
        Ok(format!("merge of {} requested by {login}; {merged}", short(&pinned)))
    }

    async fn cancel_merge(
        &self,
        c: &CommentSummary,
        login: &str,
        user_id: u64,
        client: &GitHubClient,
        installation: u64,
    ) -> Result<String, CommandError> {
        let repo = &c.repo.full_name;
        let (store, r, n) = (self.store.clone(), repo.clone(), c.number);
        let Some(pending) = smol::unblock(move || merges::get(&store, &r, n)).await? else {
            // Nothing pending: no reaction, no reply, no write.
            return Ok("cancel with nothing pending: nothing to do".into());
        };
        let allowed = pending.requester_id == user_id
            || self.has_write_access(client, installation, repo, login).await?
            || {
                let pr = client.pull_request(installation, repo, c.number).await?;
                let user = GitHubUser { login, id: user_id };
                self.maintains_changes(repo, &pending.sha, is_fork(&pr), user).await?
            };
        if !allowed {
            let reply = format!(
                "{} `@eka-ci merge cancel` was denied: only the person who asked for the merge, someone \
                 with write access to this repository, or a maintainer of every package this pull request \
                 changes may cancel it.",
                mention(login)
            );
            self.react_and_reply(client, installation, repo, c.number, c.comment_id, DENIED, Some(&reply))
                .await;
            return Ok(format!("cancel by {login} denied"));
        }
        let (store, r, n, id) = (self.store.clone(), repo.clone(), c.number, pending.comment_id);
        smol::unblock(move || merges::remove(&store, &r, n, Some(id))).await?;
        self.react_and_reply(client, installation, repo, c.number, c.comment_id, ACCEPTED, None).await;
        Ok(format!("merge request of {} cancelled by {login}", pending.requester))
    }

    /// A `pull_request` event: a head other than the pinned commit cancels the pending request (with a
    /// confused reaction and a reply naming both commits); a closed pull request's request is dropped.
    pub(super) async fn check_pinned_head(&self, pr: &PullRequestSummary) -> Result<String, StoreError> {
        let (store, repo, number) = (self.store.clone(), pr.repo.full_name.clone(), pr.number);
        let Some(pending) = smol::unblock(move || merges::get(&store, &repo, number)).await? else {
            return Ok(String::new());
        };
        let moved = !pending.sha.eq_ignore_ascii_case(&pr.head_sha);
        if pr.action != "closed" && !moved {
            return Ok(String::new());
        }
        let (store, repo, id) = (self.store.clone(), pr.repo.full_name.clone(), pending.comment_id);
        if smol::unblock(move || merges::remove(&store, &repo, number, Some(id))).await?.is_none() {
            return Ok(String::new());
        }
        if pr.action == "closed" {
            return Ok("; its pending merge request was dropped".into());
        }
        let reply = format!(
            "{} new commits were pushed after `@eka-ci merge` was accepted: it was for `{}`, the head is \
             now `{}`. The merge request is cancelled; review the new commits and comment \
             `@eka-ci merge` again.",
            mention(&pending.requester),
            pending.sha,
            pr.head_sha.to_ascii_lowercase()
        );
        if let Some((client, installation)) =
            self.client_for_repo(&pending.repo, pending.installation.or(pr.installation)).await
        {
            let this = Notifier { client, installation, repo: pending.repo.clone() };
            self.ex
                .spawn(async move {
                    this.react_and_reply(pending.number, pending.comment_id, CANCELLED, Some(&reply)).await;
                })
                .detach();
        }
        Ok(format!("; the pending merge request for {} was cancelled", short(&pr.head_sha)))
    }

    /// Merges every pending request whose pinned commit's run has passed (one pass of the loop).
    pub(super) async fn merge_ready(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let pending = smol::unblock(move || merges::all(&store)).await?;
        for request in pending {
            let outcome = self.try_merge(&request).await?;
            if outcome != WAITING {
                tracing::info!(repo = %request.repo, number = request.number, sha = %request.sha, %outcome, "@eka-ci merge");
            }
        }
        Ok(())
    }

    /// Merges `request` if its pinned commit's run has passed. Returns what happened.
    async fn try_merge(&self, request: &MergeRequest) -> Result<String, StoreError> {
        let (store, key) = (self.store.clone(), runs::key(&request.repo, &request.sha));
        let Some(run) = smol::unblock(move || runs::get(&store, &key)).await? else {
            return Ok(WAITING.into());
        };
        if !matches!(run.state, RunState::Passed { .. }) || request.skipped_at_attempt == Some(run.attempt) {
            return Ok(WAITING.into());
        }
        let Some((client, installation)) = self.client_for_repo(&request.repo, request.installation).await
        else {
            return Ok("no GitHub App may serve this repository".into());
        };
        let notifier = Notifier { client: client.clone(), installation, repo: request.repo.clone() };
        let skip = |why: String| async move {
            let (store, r) = (self.store.clone(), request.clone());
            let attempt = run.attempt;
            smol::unblock(move || merges::mark_skipped(&store, &r.repo, r.number, r.comment_id, attempt))
                .await?;
            Ok::<String, StoreError>(why)
        };
        let pr = match client.pull_request(installation, &request.repo, request.number).await {
            Ok(pr) => pr,
            Err(e) if is_transient(&e) => return Ok(format!("reading the pull request failed: {e}")),
            Err(e) => return skip(format!("reading the pull request failed: {e}")).await,
        };
        if pr.state != "open" || pr.merged == Some(true) {
            self.drop_request(request).await?;
            return Ok(format!("the pull request is {}: request dropped", pr.state));
        }
        let method = request.method.as_deref().unwrap_or(self.default_merge_method.as_str()).to_string();
        if pr.base.repo.as_ref().and_then(|r| r.allows(&method)) == Some(false) {
            tracing::warn!(repo = %request.repo, number = request.number, %method, "the repository does not allow this merge method: @eka-ci merge skipped");
            return skip(format!("merge method {method} not allowed by the repository")).await;
        }
        match client
            .merge_pull_request(installation, &request.repo, request.number, &request.sha, &method)
            .await
        {
            Ok(result) if result.merged => {
                self.drop_request(request).await?;
                notifier.react_and_reply(request.number, request.comment_id, MERGED, None).await;
                Ok(format!("merged ({method}) as {}", short(&result.sha)))
            }
            Ok(result) => skip(format!("GitHub did not merge: {}", result.message.unwrap_or_default())).await,
            Err(ClientError::Api { status: 409, message, .. }) => {
                self.drop_request(request).await?;
                let reply = format!(
                    "{} GitHub refused the merge: the head of this pull request is no longer `{}`, the \
                     commit `@eka-ci merge` was for ({message}). Review the new commits and comment \
                     `@eka-ci merge` again.",
                    mention(&request.requester),
                    request.sha
                );
                notifier.react_and_reply(request.number, request.comment_id, CANCELLED, Some(&reply)).await;
                Ok("GitHub refused: the head moved (409)".into())
            }
            Err(ClientError::Api { status: 405, message, .. }) => {
                self.drop_request(request).await?;
                let reply = format!(
                    "{} GitHub refused to merge `{}` with method `{method}`: {message}. The merge request \
                     is cancelled; comment `@eka-ci merge` again once the pull request can be merged.",
                    mention(&request.requester),
                    request.sha
                );
                notifier.react_and_reply(request.number, request.comment_id, DENIED, Some(&reply)).await;
                Ok(format!("GitHub refused: not mergeable (405): {message}"))
            }
            Err(e) if is_transient(&e) => Ok(format!("merging failed, to be tried again: {e}")),
            Err(e) => skip(format!("merging failed: {e}")).await,
        }
    }

    async fn drop_request(&self, request: &MergeRequest) -> Result<(), StoreError> {
        let (store, r) = (self.store.clone(), request.clone());
        smol::unblock(move || merges::remove(&store, &r.repo, r.number, Some(r.comment_id))).await?;
        Ok(())
    }

    /// The client of the first App allowed to serve `repo`, and the installation (from the event, the
    /// installations table, or GitHub).
    async fn client_for_repo(&self, repo: &str, installation: Option<u64>) -> Option<(GitHubClient, u64)> {
        let (_, client): &(GitHubApp, GitHubClient) =
            self.clients.iter().find(|(app, _)| app.permissions.allows(repo, None))?;
        if let Some(id) = installation {
            return Some((client.clone(), id));
        }
        let (store, r) = (self.store.clone(), repo.to_string());
        if let Ok(Some(entry)) = smol::unblock(move || runs::installation_for(&store, &r)).await {
            return Some((client.clone(), entry.installation));
        }
        match client.repo_installation(repo).await {
            Ok(i) => Some((client.clone(), i.id)),
            Err(e) => {
                tracing::warn!(%repo, error = %e, "no installation found for an @eka-ci command");
                None
            }
        }
    }

    /// Whether `user` maintains every package the run of `sha` changes (`maintainers`).
    async fn maintains_changes(
        &self,
        repo: &str,
        sha: &str,
        fork: bool,
        user: GitHubUser<'_>,
    ) -> Result<bool, StoreError> {
        let (store, key) = (self.store.clone(), runs::key(repo, sha));
        let Some(run) = smol::unblock(move || runs::get(&store, &key)).await? else { return Ok(false) };
        let (store, jobsets, login, id) =
            (self.store.clone(), self.pipeline.jobsets().clone(), user.login.to_string(), user.id);
        let changed = smol::unblock(move || {
            let change = maintainers::Change {
                repo: &run.repo,
                clone_url: &run.clone_url,
                base_sha: &run.base_sha,
                head_sha: &run.head_sha,
                fork,
            };
            maintainers::maintains_every_change(&store, &jobsets, &change, GitHubUser { login: &login, id })
        })
        .await?;
        Ok(changed.is_some())
    }

    async fn has_write_access(
        &self,
        client: &GitHubClient,
        installation: u64,
        repo: &str,
        login: &str,
    ) -> Result<bool, ClientError> {
        let permission = client.collaborator_permission(installation, repo, login).await?;
        Ok(matches!(permission.permission.as_str(), "admin" | "maintain" | "write"))
    }

    #[allow(clippy::too_many_arguments)]
    async fn react_and_reply(
        &self,
        client: &GitHubClient,
        installation: u64,
        repo: &str,
        number: u64,
        comment_id: u64,
        reaction: &str,
        reply: Option<&str>,
    ) {
        let notifier = Notifier { client: client.clone(), installation, repo: repo.to_string() };
        notifier.react_and_reply(number, comment_id, reaction, reply).await;
    }
}

/// What [`GitHubService::try_merge`] answers while the pinned commit's gate is not green.
const WAITING: &str = "waiting for the pinned commit's gate";

/// Reactions and replies on one repository.
struct Notifier {
    client: GitHubClient,
    installation: u64,
    repo: String,
}

impl Notifier {
    async fn react_and_reply(&self, number: u64, comment_id: u64, reaction: &str, reply: Option<&str>) {
        if let Err(e) = self.client.add_reaction(self.installation, &self.repo, comment_id, reaction).await {
            tracing::warn!(repo = %self.repo, comment_id, reaction, error = %e, "reacting to an @eka-ci command failed");
        }
        if let Some(text) = reply {
            if let Err(e) =
                self.client.create_issue_comment(self.installation, &self.repo, number, text).await
            {
                tracing::warn!(repo = %self.repo, number, error = %e, "replying to an @eka-ci command failed");
            }
        }
    }
}

/// `@login` for a valid GitHub login (so the reply notifies them), else nothing.
fn mention(login: &str) -> String {
    match crate::forge::github::approvals::validate_login(login) {
        Ok(()) => format!("@{login}"),
        Err(_) => String::new(),
    }
}

/// Whether a pull request's head lives outside its base repository (a fork, or a deleted fork).
pub(super) fn is_fork(pr: &PullRequest) -> bool {
    let name = |r: &Option<crate::forge::github::client::PullRequestRepo>| {
        r.as_ref().map(|r| r.full_name.to_ascii_lowercase())
    };
    name(&pr.head.repo).is_none() || name(&pr.head.repo) != name(&pr.base.repo)
}

/// Whether a failed call may succeed if simply tried again (server errors, rate limits, transport).
fn is_transient(e: &ClientError) -> bool {
    match e {
        ClientError::Api { status, .. } => *status >= 500,
        ClientError::RateLimited { .. } | ClientError::Transport { .. } => true,
        _ => false,
    }
}

/// Why a command could not be handled.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error(transparent)]
    GitHub(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
