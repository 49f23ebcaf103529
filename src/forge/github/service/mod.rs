//! The GitHub service: turns the persisted webhook queue into runs, and runs into evaluations, builds
//! and check runs on the head commit in the base repository.
//!
//! One loop (in [`GitHubService::run`]) owns the decisions: it retires queued events in order (each
//! becomes a change to the `github_runs` table, then leaves the queue), starts a task for every queued
//! run, cancels superseded and closed ones, and resumes runs held for approval once approved. A run task
//! only reads its run, works, and records what it told GitHub; everything it does can be redone, so the
//! loop restarts every unfinished run at start-up and after a failed GitHub call (with backoff) — that
//! is how a crash between the webhook's 202 and the first API call still ends in the right check runs.
//!
//! Check runs a run reports, all on the head commit:
//! - `EkaCI: Configure`: the head's repository configuration's parse result (errors with their field
//!   paths), what it changes against the base's, and which of the two gates (`gate`);
//! - `EkaCI: Evaluate Job (<job>)`: in progress while evaluating and building, then success iff no Added
//!   or Changed attribute fails and head brings no new evaluation error (unless the job allows them);
//! - `<attr> (<job>)`: one per failing Added or Changed attribute, with its log tail (at most
//!   `github.max_failure_check_runs` per job; the gate counts the rest);
//! - `EkaCI: Change Summary`: neutral, the package changes and rebuild impact (see `summary`);
//! - `EkaCI: Approval Required`: with `require_approval` (or `merge_queue_require_approval` for merge queue
//!   entries), while an outside author's pull request waits.
//!
//! `@eka-ci merge` comments (`merge`) become pending merge requests pinned to a head commit; every pass
//! of the loop merges those whose commit's run has passed. `auto_merge` does the same for auto-merge
//! enabled through the API, which also waits for approving reviews by the changed packages' maintainers.
//!
//! This module must never parse webhooks (`webhook` does), run git or Nix (the pipeline does), or
//! hold a store transaction across an `.await` (`runs` and `webhook` functions are blocking, called
//! through `smol::unblock`). Tokens never reach a message: client and checkout errors are redacted.
//!
//! Layout: this file is the decision loop (events → run changes; starting, cancelling and resuming
//! run tasks); `gate` decides which configuration gates a run; `run` is one run's task (configuration, evaluation, diff, change summary, builds,
//! completion); `report` is what a run tells GitHub (check-run texts and the `Reporter` that creates
//! or updates check runs and records their ids); `merge` handles the comment commands and merges; `auto_merge` the API's auto-merge;
//! `sizes` measures and reports a job's `size_check`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol::LocalExecutor;

use super::app::GitHubApp;
use super::approvals::{self, ApprovalNotice};
use super::client::{ClientConfig, ClientError, GitHubClient};
use super::runs::{self, Run, RunState, Trigger};
use super::webhook::{self, EventRecord, EventSummary, PullRequestSummary};
use crate::config::{DraftPolicy, GitHubConfig, MergeMethod};
use crate::jobset::JobsetId;
use crate::pipeline::Pipeline;
use crate::scheduler::{Owner, SchedulerHandle};
use crate::store::{now_secs, Store, StoreError};

mod auto_merge;
mod gate;
mod merge;
mod pushes;
mod report;
mod run;
mod sizes;

use crate::text::short_sha as short;
use report::Reporter;
pub use report::{gate_check, APPROVAL_CHECK, CONFIGURE_CHECK, SUMMARY_CHECK};

/// How often the loop looks at the queue without being woken.
const POLL: Duration = Duration::from_secs(5);
/// Finished runs are kept this long (re-requests of older commits find nothing to re-run)…
const KEEP_FINISHED: Duration = Duration::from_secs(90 * 24 * 3600);
/// …and pruned this often.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the daemon hands the web server and the control handler to wake the service.
#[derive(Clone)]
pub struct Wakers {
    /// Poked by the webhook endpoint after an event was queued.
    pub events: async_channel::Sender<()>,
    /// An approval given with `ekaci approve`.
    pub approvals: async_channel::Sender<ApprovalNotice>,
}

/// A run task being executed.
struct Active {
    _task: smol::Task<()>,
    /// The build owners it requested (jobset ids), to cancel them with it.
    owners: Arc<Mutex<Vec<JobsetId>>>,
    head_sha: String,
    base_sha: String,
}

/// The service's shared state.
pub struct GitHubService {
    ex: Rc<LocalExecutor<'static>>,
    store: Store,
    pipeline: Arc<Pipeline>,
    scheduler: SchedulerHandle,
    clients: Vec<(GitHubApp, GitHubClient)>,
    config: GitHubConfig,
    approval: ApprovalPolicy,
    /// `[rebuild] skip_paths`: a pull request touching only these paths is not evaluated.
    skip_paths: Vec<String>,
    /// `[rebuild] max_rebuild_count`: above it a change is wide and its builds are skipped.
    max_rebuild_count: Option<usize>,
    /// The merge method of an `@eka-ci merge` that names none.
    default_merge_method: MergeMethod,
    /// The server's `[[caches]]`: where a job's built outputs are pushed.
    caches: Arc<crate::cache::Caches>,
    /// `[web] public_url` (or its default): the base of check runs' `details_url`.
    public_url: String,
    /// When each (commenter id, repository) last had a command accepted by the rate limit (the event's
    /// receipt, Unix seconds). Process-local on purpose: it resets at restart.
    command_times: Mutex<HashMap<(u64, String), u64>>,
}

/// What the operator decided about runs: approvals and the `[rebuild]` limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPolicy {
    pub approval: ApprovalPolicy,
    /// A pull request touching only these paths is not evaluated.
    pub skip_paths: Vec<String>,
    /// A change rebuilding more attributes than this is *wide*: evaluated and summarised, not built.
    /// `None`: no limit.
    pub max_rebuild_count: Option<usize>,
    /// `default_merge_method`: the method of an `@eka-ci merge` that names none.
    pub default_merge_method: MergeMethod,
    /// `[web] public_url` (or its default): check runs link to the web UI under it.
    pub public_url: String,
}

/// Which runs wait for a maintainer's approval (`require_approval`, `merge_queue_require_approval`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApprovalPolicy {
    /// Pull requests whose author has no write access.
    pub pull_requests: bool,
    /// Merge queue entries whose pull request's author has no write access.
    pub merge_queue: bool,
}

impl ApprovalPolicy {
    fn any(&self) -> bool {
        self.pull_requests || self.merge_queue
    }

    fn applies_to(&self, trigger: &Trigger) -> bool {
        match trigger {
            Trigger::PullRequest { .. } => self.pull_requests,
            Trigger::MergeGroup { .. } => self.merge_queue,
        }
    }
}

impl GitHubService {
    /// A service acting as `apps` (at least one), talking to `config.api_url`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ex: Rc<LocalExecutor<'static>>,
        store: Store,
        pipeline: Arc<Pipeline>,
        scheduler: SchedulerHandle,
        apps: Vec<GitHubApp>,
        caches: Arc<crate::cache::Caches>,
        config: GitHubConfig,
        policy: RunPolicy,
    ) -> Result<Rc<GitHubService>, ClientError> {
        let RunPolicy { approval, skip_paths, max_rebuild_count, default_merge_method, public_url } = policy;
        let client_config = ClientConfig { api_url: config.api_url.clone(), ..ClientConfig::default() };
        let clients = apps
            .into_iter()
            .map(|app| GitHubClient::new(app.credentials.clone(), client_config.clone()).map(|c| (app, c)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rc::new(GitHubService {
            ex,
            store,
            pipeline,
            scheduler,
            clients,
            config,
            approval,
            skip_paths,
            max_rebuild_count,
            default_merge_method,
            caches,
            public_url,
            command_times: Mutex::new(HashMap::new()),
        }))
    }

    /// Starts the loop on `ex`; it stops when `shutdown` closes. Returns the wakers and the loop's task.
    pub fn start(self: Rc<Self>, shutdown: async_channel::Receiver<()>) -> (Wakers, smol::Task<()>) {
        let (events_tx, events_rx) = async_channel::bounded(1);
        let (approvals_tx, approvals_rx) = async_channel::unbounded();
        let ex = self.ex.clone();
        // Supervised (`supervise`): a panic restarts the loop, which picks the persisted runs up again.
        let loop_ex = ex.clone();
        let task = ex.spawn(crate::supervise::supervise("github", shutdown.clone(), move || {
            let run =
                self.clone().run(loop_ex.clone(), events_rx.clone(), approvals_rx.clone(), shutdown.clone());
            async move {
                run.await;
                Ok::<(), std::convert::Infallible>(())
            }
        }));
        (Wakers { events: events_tx, approvals: approvals_tx }, task)
    }

    async fn run(
        self: Rc<Self>,
        ex: Rc<LocalExecutor<'static>>,
        events: async_channel::Receiver<()>,
        approvals_rx: async_channel::Receiver<ApprovalNotice>,
        shutdown: async_channel::Receiver<()>,
    ) {
        let mut active: HashMap<String, Active> = HashMap::new();
        let (done_tx, done_rx) = async_channel::unbounded::<String>();
        let mut next_prune = std::time::Instant::now();
        loop {
            if std::time::Instant::now() >= next_prune {
                next_prune = std::time::Instant::now() + PRUNE_EVERY;
                let store = self.store.clone();
                match smol::unblock(move || runs::prune_finished(&store, KEEP_FINISHED.as_secs())).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(runs = n, "pruned finished GitHub runs"),
                    Err(e) => tracing::warn!(error = %e, "pruning finished GitHub runs failed"),
                }
            }
            if let Err(e) = self.drain_events(&mut active).await {
                tracing::error!(error = %e, "handling queued GitHub events failed; retrying shortly");
            }
            if let Err(e) = self.release_approved().await {
                tracing::error!(error = %e, "checking approvals failed");
            }
            if let Err(e) = self.start_runs(&ex, &mut active, &done_tx).await {
                tracing::error!(error = %e, "starting GitHub runs failed");
            }
            if let Err(e) = self.merge_ready().await {
                tracing::error!(error = %e, "merging pending @eka-ci merge requests failed");
            }
            if let Err(e) = self.auto_merge_ready().await {
                tracing::error!(error = %e, "looking at pull requests with auto-merge failed");
            }
            enum Wake {
                Tick,
                Done(String),
                Approved(ApprovalNotice),
                Stop,
            }
            let wake = futures_lite::future::or(
                async {
                    match shutdown.recv().await {
                        Ok(()) => Wake::Tick,
                        Err(_) => Wake::Stop,
                    }
                },
                futures_lite::future::or(
                    async { done_rx.recv().await.map_or(Wake::Tick, Wake::Done) },
                    futures_lite::future::or(
                        async { approvals_rx.recv().await.map_or(Wake::Tick, Wake::Approved) },
                        futures_lite::future::or(
                            async {
                                let _ = events.recv().await;
                                Wake::Tick
                            },
                            async {
                                smol::Timer::after(POLL).await;
                                Wake::Tick
                            },
                        ),
                    ),
                ),
            )
            .await;
            match wake {
                Wake::Stop => break,
                Wake::Done(key) => {
                    active.remove(&key);
                }
                Wake::Approved(notice) => {
                    tracing::info!(repo = %notice.repo, number = notice.number, sha = %notice.sha, "pull request commit approved");
                }
                Wake::Tick => {}
            }
        }
        // Dropping the tasks cancels them; their runs stay queued and restart at the next start.
        drop(active);
    }

    // ------------------------------------------------------------------------------------------ events

    /// Handles every queued event, oldest first, retiring each with its outcome.
    async fn drain_events(&self, active: &mut HashMap<String, Active>) -> Result<(), StoreError> {
        let store = self.store.clone();
        let pending = smol::unblock(move || webhook::pending(&store)).await?;
        for (seq, record) in pending {
            let outcome = match self.handle_event(&record, active).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    // The event stays queued and is handled again at the next pass.
                    tracing::error!(delivery = %record.delivery, error = %e, "handling a GitHub event failed");
                    return Err(e);
                }
            };
            tracing::info!(delivery = %record.delivery, event = %record.event, action = ?record.action, %outcome, "GitHub event handled");
            let store = self.store.clone();
            smol::unblock(move || webhook::mark_done(&store, seq, &outcome)).await?;
        }
        Ok(())
    }

    async fn handle_event(
        &self,
        record: &EventRecord,
        active: &mut HashMap<String, Active>,
    ) -> Result<String, StoreError> {
        match &record.summary {
            EventSummary::PullRequest(pr) => {
                let note = self.on_pull_request(pr, active).await?;
                let pinned = self.check_pinned_head(pr).await?;
                Ok(format!("{note}{pinned}{}", self.auto_merge_on_pull_request(pr).await?))
            }
            EventSummary::Comment(c) => self.on_comment(c, record.received_at).await,
            EventSummary::PullRequestReview(r) => self.on_review(r).await,
            EventSummary::MergeGroup(mg) => match mg.action.as_str() {
                "checks_requested" => {
                    let run = Run::new(
                        &mg.repo.full_name,
                        &mg.repo.clone_url,
                        mg.installation,
                        &mg.head_sha,
                        &mg.base_sha,
                        &mg.base_ref,
                        Trigger::MergeGroup { head_ref: mg.head_ref.clone(), author: None },
                    );
                    self.queue(run).await
                }
                "destroyed" => {
                    let key = runs::key(&mg.repo.full_name, &mg.head_sha);
                    self.cancel(&key, "the merge group was destroyed", &[], active).await?;
                    Ok("cancelled the merge group's run".into())
                }
                other => Ok(format!("merge_group {other}: nothing to do")),
            },
            EventSummary::CheckRun(cr) if cr.action == "rerequested" => {
                self.rerun(&cr.repo.full_name, &cr.head_sha).await
            }
            EventSummary::CheckSuite(cs) if cs.action == "rerequested" => {
                self.rerun(&cs.repo.full_name, &cs.head_sha).await
            }
            EventSummary::Installation(i) => {
                let store = self.store.clone();
                let i = i.clone();
                smol::unblock(move || match i.action.as_str() {
                    "deleted" | "suspend" => runs::remove_installation(&store, i.installation)
                        .map(|n| format!("installation {} removed ({n} repositories)", i.installation)),
                    _ => runs::set_installation(&store, i.installation, &i.account, &i.repositories, &[])
                        .map(|()| {
                            format!(
                                "installation {} serves {} listed repositories",
                                i.installation,
                                i.repositories.len()
                            )
                        }),
                })
                .await
            }
            EventSummary::InstallationRepositories(i) => {
                let store = self.store.clone();
                let i = i.clone();
                smol::unblock(move || {
                    runs::set_installation(&store, i.installation, &i.account, &i.added, &i.removed).map(
                        |()| {
                            format!(
                                "installation {}: +{} -{} repositories",
                                i.installation,
                                i.added.len(),
                                i.removed.len()
                            )
                        },
                    )
                })
                .await
            }
            other => Ok(format!("{} {}: not used", record.event, other.action().unwrap_or("-"))),
        }
    }

    async fn on_pull_request(
        &self,
        pr: &PullRequestSummary,
        active: &mut HashMap<String, Active>,
    ) -> Result<String, StoreError> {
        match pr.action.as_str() {
            "opened" | "reopened" | "synchronize" | "ready_for_review" => {
                let superseded = self.cancel_pull_request(pr, Some(&pr.head_sha), active).await?;
                if pr.draft && self.config.draft_pull_requests == DraftPolicy::Skip {
                    return Ok(format!("draft pull request skipped until ready for review{superseded}"));
                }
                let run = Run::new(
                    &pr.repo.full_name,
                    &pr.repo.clone_url,
                    pr.installation,
                    &pr.head_sha,
                    &pr.base_sha,
                    &pr.base_ref,
                    Trigger::PullRequest { number: pr.number, author: pr.author.clone() },
                );
                Ok(format!("{}{superseded}", self.queue(run).await?))
            }
            "closed" => {
                let cancelled = self.cancel_pull_request(pr, None, active).await?;
                Ok(format!("pull request closed{cancelled}"))
            }
            other => Ok(format!("pull_request {other}: nothing to do")),
        }
    }

    /// Queues `run`: new, or a finished run of the same commit started again (a live one is left alone).
    async fn queue(&self, run: Run) -> Result<String, StoreError> {
        let key = runs::key(&run.repo, &run.head_sha);
        let store = self.store.clone();
        smol::unblock(move || {
            runs::update(&store, &key, |current| match current {
                None => (Some(run), "run queued".to_string()),
                Some(mut existing) if existing.state.is_live() => match run.trigger {
                    // Another pull request with the same head: the running check serves it too.
                    Trigger::PullRequest { number, author }
                        if existing.add_pull_request(number, author.clone()) =>
                    {
                        let mut note = format!("run already queued; it now also serves #{number}");
                        // Held for approval: look again, the new pull request's author may be trusted.
                        if existing.state == RunState::AwaitingApproval {
                            existing.state = RunState::Queued { not_before: 0 };
                            note.push_str(", approval checked again");
                        }
                        (Some(existing), note)
                    }
                    _ => (None, "run already queued".to_string()),
                },
                Some(mut existing) => {
                    existing.attempt += 1;
                    existing.state = RunState::Queued { not_before: 0 };
                    existing.base_sha = run.base_sha;
                    existing.base_ref = run.base_ref;
                    // The pull request that asked again becomes the trigger; the others stay served.
                    if let (
                        Trigger::PullRequest { number: old, author },
                        Trigger::PullRequest { number, .. },
                    ) = (&existing.trigger, &run.trigger)
                    {
                        if old != number {
                            let previous = runs::OtherPullRequest { number: *old, author: author.clone() };
                            existing.also_for.retain(|p| p.number != *number);
                            existing.also_for.insert(0, previous);
                        }
                    }
                    existing.trigger = run.trigger;
                    existing.installation = run.installation.or(existing.installation);
                    let attempt = existing.attempt;
                    (Some(existing), format!("run queued again (attempt {attempt})"))
                }
            })
        })
        .await
    }

    /// `check_run`/`check_suite` rerequested: queue the commit's run again, rebuilding what failed.
    async fn rerun(&self, repo: &str, head_sha: &str) -> Result<String, StoreError> {
        let key = runs::key(repo, head_sha);
        let store = self.store.clone();
        smol::unblock(move || {
            runs::update(&store, &key, |current| match current {
                None => (None, "re-request for a commit eka-ci never ran: nothing to do".to_string()),
                Some(existing) if existing.state.is_live() => (None, "run already queued".to_string()),
                Some(mut existing) => {
                    existing.attempt += 1;
                    existing.state = RunState::Queued { not_before: 0 };
                    existing.rebuild_failed = true;
                    let n = existing.failed_drvs.len();
                    (Some(existing), format!("re-run queued, rebuilding {n} failed derivation(s)"))
                }
            })
        })
        .await
    }

    /// Cancels the live runs of `pr`'s pull request, except the one of `keep` (its new head). Returns a
    /// note for the event's outcome.
    async fn cancel_pull_request(
        &self,
        pr: &PullRequestSummary,
        keep: Option<&str>,
        active: &mut HashMap<String, Active>,
    ) -> Result<String, StoreError> {
        let store = self.store.clone();
        let all = smol::unblock(move || runs::all(&store)).await?;
        let repo = pr.repo.full_name.to_ascii_lowercase();
        let (mut cancelled, mut kept) = (0, 0);
        for (key, run) in all {
            let same_pr = run.repo.to_ascii_lowercase() == repo && run.serves(pr.number);
            if !same_pr || keep.is_some_and(|k| k.eq_ignore_ascii_case(&run.head_sha)) {
                continue;
            }
            // The pull request leaves the run; another open pull request with this head keeps it going.
            let (store, k, number) = (self.store.clone(), key.clone(), pr.number);
            let others = smol::unblock(move || {
                runs::update(&store, &k, |current| match current {
                    Some(mut run) if run.serves(number) => {
                        if run.drop_pull_request(number) {
                            (Some(run), true)
                        } else {
                            (None, false)
                        }
                    }
                    _ => (None, true),
                })
            })
            .await?;
            if !run.state.is_live() {
                continue;
            }
            if others {
                kept += 1;
                continue;
            }
            let reason = match keep {
                Some(head) => format!("superseded by {}", short(head)),
                None => "the pull request was closed".to_string(),
            };
            // The new head's run needs the base (and the head) builds it shares with the old one.
            let protect: Vec<&str> = keep.iter().copied().chain([pr.base_sha.as_str()]).collect();
            self.cancel(&key, &reason, &protect, active).await?;
            cancelled += 1;
        }
        let mut note = String::new();
        if cancelled > 0 {
            note.push_str(&format!("; cancelled {cancelled} superseded run(s)"));
        }
        if kept > 0 {
            note.push_str(&format!("; {kept} run(s) kept for other pull requests with the same head"));
        }
        Ok(note)
    }

    /// Cancels run `key`: marks it cancelled, stops its task and the builds of commits no other run (nor
    /// `protect`) uses, and completes its unfinished check runs as cancelled (in the background).
    async fn cancel(
        &self,
        key: &str,
        reason: &str,
        protect: &[&str],
        active: &mut HashMap<String, Active>,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let (k, r) = (key.to_string(), reason.to_string());
        let cancelled = smol::unblock(move || {
            runs::update(&store, &k, |current| match current {
                Some(mut run) if run.state.is_live() => {
                    run.state = RunState::Cancelled { reason: r };
                    (Some(run.clone()), Some(run))
                }
                _ => (None, None),
            })
        })
        .await?;
        let Some(run) = cancelled else { return Ok(()) };
        if let Some(stopped) = active.remove(key) {
            let owners: Vec<JobsetId> = stopped.owners.lock().unwrap_or_else(|e| e.into_inner()).clone();
            // A build owner is a jobset (one commit of one job): keep those another live run requested
            // or will request (its head or base is the same commit).
            let shared: Vec<JobsetId> = active
                .values()
                .flat_map(|a| a.owners.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .collect();
            for owner in owners.into_iter().filter(|o| !shared.contains(o)) {
                let jobsets = self.pipeline.jobsets().clone();
                let commit = smol::unblock(move || jobsets.get(owner)).await?.map(|j| j.key.commit);
                let in_use = commit.is_some_and(|c| {
                    protect.iter().any(|p| p.eq_ignore_ascii_case(&c))
                        || active.values().any(|a| a.head_sha == c || a.base_sha == c)
                });
                if in_use {
                    continue;
                }
                if let Err(e) = self.scheduler.cancel(Owner::Jobset(owner)).await {
                    tracing::warn!(owner = %owner, error = %e, "cancelling a superseded run's builds failed");
                }
            }
        }
        tracing::info!(repo = %run.repo, head = %run.head_sha, reason, "run cancelled");
        crate::metrics::global().github_runs.with_label_values(&["cancelled"]).inc();
        if let Some((_, client)) = self.client_for(&run) {
            let reporter = Reporter::new(self.store.clone(), client.clone(), key, &run, &self.public_url);
            let reason = reason.to_string();
            self.ex
                .spawn(async move {
                    if let Err(e) = reporter.cancel_open(&run, &reason).await {
                        tracing::warn!(error = %e, "marking a cancelled run's check runs failed");
                    }
                })
                .detach();
        }
        Ok(())
    }

    /// Runs held for approval whose pull request or author has been approved since go back to the queue.
    async fn release_approved(&self) -> Result<(), StoreError> {
        if !self.approval.any() {
            return Ok(());
        }
        let store = self.store.clone();
        smol::unblock(move || {
            for (key, run) in runs::all(&store)? {
                if run.state != RunState::AwaitingApproval {
                    continue;
                }
                let others = run.also_for.iter().map(|p| (p.number, p.author.as_deref()));
                let mut approved = false;
                for (number, author) in run.approval_subject().into_iter().chain(others) {
                    if approved_locally(&store, &run.repo, number, &run.head_sha, author)? {
                        approved = true;
                        break;
                    }
                }
                if approved {
                    runs::update(&store, &key, |current| match current {
                        Some(mut r) if r.state == RunState::AwaitingApproval => {
                            r.state = RunState::Queued { not_before: 0 };
                            r.approved = true;
                            (Some(r), ())
                        }
                        _ => (None, ()),
                    })?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Starts a task for every queued run that is due and not running.
    async fn start_runs(
        self: &Rc<Self>,
        ex: &Rc<LocalExecutor<'static>>,
        active: &mut HashMap<String, Active>,
        done: &async_channel::Sender<String>,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let all = smol::unblock(move || runs::all(&store)).await?;
        let now = now_secs();
        for (key, run) in all {
            let RunState::Queued { not_before } = run.state else { continue };
            if not_before > now || active.contains_key(&key) {
                continue;
            }
            let owners = Arc::new(Mutex::new(Vec::new()));
            let task = {
                let (svc, key, owners, done) = (self.clone(), key.clone(), owners.clone(), done.clone());
                ex.spawn(async move {
                    svc.execute(&key, &owners).await;
                    let _ = done.send(key).await;
                })
            };
            active.insert(
                key,
                Active {
                    _task: task,
                    owners,
                    head_sha: run.head_sha.clone(),
                    base_sha: run.base_sha.clone(),
                },
            );
        }
        Ok(())
    }

    /// The client of the first App whose permissions allow the run's repository and base branch.
    fn client_for(&self, run: &Run) -> Option<&(GitHubApp, GitHubClient)> {
        self.clients.iter().find(|(app, _)| app.permissions.allows(&run.repo, Some(&run.base_ref)))
    }
}

/// Whether commit `sha` of pull request `number` of `repo`, or the pull request's author, was approved
/// with `ekaci`. An approval is for one commit: a later push is held again; an approved user stays
/// approved. Blocking.
fn approved_locally(
    store: &Store,
    repo: &str,
    number: u64,
    sha: &str,
    author: Option<&str>,
) -> Result<bool, StoreError> {
    if approvals::is_commit_approved(store, repo, number, sha)? {
        return Ok(true);
    }
    match author {
        Some(a) => approvals::is_user_approved(store, a),
        None => Ok(false),
    }
}
