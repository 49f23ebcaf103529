//! Auto-merge enabled through the API (docs/merge.md, "Auto-merge"): every pass of the service loop
//! looks at each pull request with auto-merge on (`auto_merges`) whose recorded head's run has passed,
//! when something changed since the last look (enabled, a review submitted or dismissed, a push, a new
//! run attempt). It then reads the pull request and its reviews from GitHub, and merges (`merge::land`,
//! so a merge queue gets GitHub's auto-merge) when, for every package the head changes, the latest
//! review of one of its maintainers approves that very head commit.
//!
//! `pull_request_review` events and `pull_request` events only mark the row for another look
//! (`on_review`, `on_pull_request_event`); closing the pull request removes it. This file never parses
//! webhooks and never holds a store transaction across an `.await`.

use std::collections::HashMap;

use super::merge::{is_transient, land, Landing};
use super::GitHubService;
use crate::forge::github::auto_merges::{self, AutoMerge};
use crate::forge::github::client::{ClientError, Review};
use crate::forge::github::maintainers::{self, GitHubUser, Unapproved};
use crate::forge::github::runs::{self, Run, RunState};
use crate::forge::github::webhook::{self, PullRequestReviewSummary, PullRequestSummary};
use crate::store::StoreError;
use crate::text::short_sha as short;

/// What one look at a pull request with auto-merge on came to.
enum Look {
    /// Nothing to do until something changes (recorded as checked).
    Wait(String),
    /// A failure that may pass: look again at the next pass.
    Retry(String),
    /// Merged, queued or closed: auto-merge is off now.
    Off(String),
}

impl GitHubService {
    /// A `pull_request_review` event: a review submitted or dismissed makes an enabled auto-merge look
    /// at the reviews again.
    pub(super) async fn on_review(&self, r: &PullRequestReviewSummary) -> Result<String, StoreError> {
        if !matches!(r.action.as_str(), "submitted" | "dismissed") {
            return Ok(format!("review {}: nothing to do", r.action));
        }
        let (store, repo, number) = (self.store.clone(), r.repo.full_name.clone(), r.number);
        if smol::unblock(move || auto_merges::touch(&store, &repo, number)).await? {
            Ok(format!("review {} ({}): auto-merge looks at the reviews again", r.action, r.state))
        } else {
            Ok(format!("review {}: auto-merge is not enabled", r.action))
        }
    }

    /// A `pull_request` event: closing removes an enabled auto-merge; anything else (a push above all,
    /// after which only reviews of the new head count) makes it look again.
    pub(super) async fn auto_merge_on_pull_request(
        &self,
        pr: &PullRequestSummary,
    ) -> Result<String, StoreError> {
        let (store, repo, number, closed) =
            (self.store.clone(), pr.repo.full_name.clone(), pr.number, pr.action == "closed");
        let on = smol::unblock(move || {
            if closed {
                auto_merges::disable(&store, &repo, number)
            } else {
                auto_merges::touch(&store, &repo, number)
            }
        })
        .await?;
        Ok(match (on, closed) {
            (false, _) => String::new(),
            (true, true) => "; auto-merge removed".into(),
            (true, false) => "; auto-merge looks again".into(),
        })
    }

    /// Looks at every pull request with auto-merge on that needs a look (one pass of the loop).
    pub(super) async fn auto_merge_ready(&self) -> Result<(), StoreError> {
        let store = self.store.clone();
        for row in smol::unblock(move || auto_merges::all(&store)).await? {
            let (store, repo, number) = (self.store.clone(), row.repo.clone(), row.number);
            let Some(head) = smol::unblock(move || webhook::recorded_head(&store, &repo, number)).await?
            else {
                continue;
            };
            let (store, key) = (self.store.clone(), runs::key(&row.repo, &head.sha));
            let Some(run) = smol::unblock(move || runs::get(&store, &key)).await? else { continue };
            if !matches!(run.state, RunState::Passed { .. }) {
                continue;
            }
            if !row.dirty && row.checked.as_ref() == Some(&(head.sha.clone(), run.attempt)) {
                continue;
            }
            let look = self.look(&row, &run).await?;
            let (store, r, sha, attempt) = (self.store.clone(), row.clone(), head.sha.clone(), run.attempt);
            let outcome = match look {
                Look::Wait(why) => {
                    smol::unblock(move || {
                        auto_merges::mark_checked(&store, &r.repo, r.number, &sha, attempt)
                    })
                    .await?;
                    why
                }
                Look::Off(why) => {
                    smol::unblock(move || auto_merges::disable(&store, &r.repo, r.number)).await?;
                    why
                }
                Look::Retry(why) => why,
            };
            tracing::info!(repo = %row.repo, number = row.number, sha = %head.sha, %outcome, "auto-merge");
        }
        Ok(())
    }

    /// One look at `row`, whose head's run `run` has passed.
    async fn look(&self, row: &AutoMerge, run: &Run) -> Result<Look, StoreError> {
        let Some((client, installation)) = self.client_for_repo(&row.repo, run.installation).await else {
            return Ok(Look::Wait("no GitHub App may serve this repository".into()));
        };
        let failed = |doing: &str, e: ClientError| {
            let why = format!("{doing} failed: {e}");
            if is_transient(&e) {
                Look::Retry(why)
            } else {
                Look::Wait(why)
            }
        };
        let pr = match client.pull_request(installation, &row.repo, row.number).await {
            Ok(pr) => pr,
            Err(e) => return Ok(failed("reading the pull request", e)),
        };
        if pr.state != "open" || pr.merged == Some(true) {
            return Ok(Look::Off(format!("the pull request is {}: auto-merge removed", pr.state)));
        }
        let head = run.head_sha.as_str();
        if !pr.head.sha.eq_ignore_ascii_case(head) {
            return Ok(Look::Wait(format!(
                "GitHub reports head {}; waiting for its event",
                short(&pr.head.sha)
            )));
        }
        let method = row.method.as_deref().unwrap_or(self.default_merge_method.as_str()).to_string();
        if pr.base.repo.as_ref().and_then(|r| r.allows(&method)) == Some(false) {
            tracing::warn!(repo = %row.repo, number = row.number, %method, "the repository does not allow this merge method: auto-merge skipped");
            return Ok(Look::Wait(format!("merge method {method} not allowed by the repository")));
        }
        let reviews = match client.list_reviews(installation, &row.repo, row.number).await {
            Ok(r) => r,
            Err(e) => return Ok(failed("reading the reviews", e)),
        };
        let owned = approvers(&reviews, head);
        let (store, jobsets, r, fork) =
            (self.store.clone(), self.pipeline.jobsets().clone(), run.clone(), pr.from_fork());
        let coverage = smol::unblock(move || {
            let change = maintainers::Change::of_run(&r, fork);
            let people: Vec<GitHubUser<'_>> =
                owned.iter().map(|(login, id)| GitHubUser { login, id: *id }).collect();
            maintainers::unapproved_changes(&store, &jobsets, &change, &people)
        })
        .await?;
        match coverage {
            None => return Ok(Look::Wait("the head's changes are not known".into())),
            Some(Unapproved { touched: 0, .. }) => {
                return Ok(Look::Wait(
                    "the pull request changes no package: no maintainer can approve it".into(),
                ))
            }
            Some(Unapproved { missing, .. }) if !missing.is_empty() => {
                let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
                return Ok(Look::Wait(format!(
                    "waiting for an approving review of {} by a maintainer of {}{}",
                    short(head),
                    shown.join(", "),
                    if missing.len() > shown.len() { ", …" } else { "" }
                )));
            }
            Some(_) => {}
        }
        // Disabled (or enabled again with another method) while GitHub was being asked: not this time.
        let (store, repo, number) = (self.store.clone(), row.repo.clone(), row.number);
        match smol::unblock(move || auto_merges::get(&store, &repo, number)).await? {
            None => return Ok(Look::Wait("auto-merge was disabled meanwhile".into())),
            Some(now) if now.method != row.method => {
                return Ok(Look::Retry("the method changed meanwhile".into()))
            }
            Some(_) => {}
        }
        Ok(match land(&client, installation, &row.repo, row.number, head, &method).await {
            Ok(Landing::Merged { sha }) => Look::Off(format!("merged ({method}) as {}", short(&sha))),
            Ok(Landing::Queued) => {
                Look::Off(format!("GitHub's auto-merge enabled ({method}) for the merge queue"))
            }
            Ok(Landing::NotMerged(message)) => Look::Wait(format!("GitHub did not merge: {message}")),
            Err(e @ ClientError::Api { status: 405 | 409, .. }) => {
                tracing::warn!(repo = %row.repo, number = row.number, error = %e, "GitHub refused an auto-merge");
                Look::Wait(format!("GitHub refused: {e}"))
            }
            Err(e) => failed("merging", e),
        })
    }
}

/// The people (login, id) whose latest review that states an opinion (approved, changes requested,
/// dismissed: a comment changes nothing, as on GitHub) approves commit `head`. `reviews` in GitHub's
/// chronological order.
fn approvers(reviews: &[Review], head: &str) -> Vec<(String, u64)> {
    let mut latest: HashMap<u64, &Review> = HashMap::new();
    for review in reviews {
        let Some(user) = &review.user else { continue };
        if matches!(review.state.as_str(), "APPROVED" | "CHANGES_REQUESTED" | "DISMISSED") {
            latest.insert(user.id, review);
        }
    }
    let mut out: Vec<(String, u64)> = latest
        .into_values()
        .filter(|r| {
            r.state == "APPROVED" && r.commit_id.as_deref().is_some_and(|c| c.eq_ignore_ascii_case(head))
        })
        .filter_map(|r| r.user.as_ref().map(|u| (u.login.clone(), u.id)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::github::client::ReviewUser;

    fn review(id: u64, user: u64, state: &str, commit: &str) -> Review {
        Review {
            id,
            user: Some(ReviewUser { login: format!("u{user}"), id: user }),
            state: state.into(),
            commit_id: Some(commit.into()),
        }
    }

    #[test]
    fn the_latest_opinion_on_the_head_counts() {
        let reviews = [
            review(1, 1, "APPROVED", "head"),
            review(2, 1, "COMMENTED", "head"),
            review(3, 2, "APPROVED", "head"),
            review(4, 2, "DISMISSED", "head"),
            review(5, 3, "APPROVED", "old"),
            review(6, 4, "CHANGES_REQUESTED", "head"),
            review(7, 4, "APPROVED", "HEAD"),
            review(8, 5, "APPROVED", "head"),
            review(9, 5, "CHANGES_REQUESTED", "head"),
        ];
        assert_eq!(approvers(&reviews, "head"), [("u1".to_string(), 1), ("u4".to_string(), 4)]);
    }
}
