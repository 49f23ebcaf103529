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
//! - `EkaCI: Configure`: the repository configuration's parse result (errors with their field paths);
//! - `EkaCI: Evaluate Job (<job>)`: in progress while evaluating and building, then success iff no Added
//!   or Changed attribute fails and head brings no new evaluation error (unless the job allows them);
//! - `<attr> (<job>)`: one per failing Added or Changed attribute, with its log tail (at most
//!   `github.max_failure_check_runs` per job; the gate counts the rest);
//! - `EkaCI: Change Summary`: neutral, the package changes and rebuild impact (see `summary`);
//! - `EkaCI: Approval Required`: with `require_approval` (or `merge_queue_require_approval` for merge queue
//!   entries), while an outside author's pull request waits.
//!
//! This module must never parse webhooks (`webhook` does), run git or Nix (the pipeline does), or
//! hold a store transaction across an `.await` (`runs` and `webhook` functions are blocking, called
//! through `smol::unblock`). Tokens never reach a message: client and checkout errors are redacted.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smol::LocalExecutor;

use super::app::GitHubApp;
use super::approvals::{self, ApprovalNotice};
use super::client::{
    CheckConclusion, CheckRunFields, CheckRunOutput, CheckStatus, ClientConfig, ClientError, CreateCheckRun,
    GitHubClient, UpdateCheckRun,
};
use super::runs::{self, Run, RunState, Trigger};
use super::webhook::{self, EventRecord, EventSummary, PullRequestSummary};
use crate::checkout::GitAuth;
use crate::config::{DraftPolicy, GitHubConfig};
use crate::jobset::JobsetId;
use crate::pipeline::{JobReview, Pipeline, PipelineError, ReviewReport};
use crate::scheduler::state::DrvState;
use crate::scheduler::{Owner, SchedulerHandle};
use crate::store::{now_secs, Store, StoreError};

/// Name of the configuration check.
pub const CONFIGURE_CHECK: &str = "EkaCI: Configure";
/// Name of the approval check.
pub const APPROVAL_CHECK: &str = "EkaCI: Approval Required";
/// Name of the change-summary check.
pub const SUMMARY_CHECK: &str = "EkaCI: Change Summary";
/// GitHub's limit on a check run's `output.summary` and `output.text`, in characters.
const MAX_OUTPUT_CHARS: usize = 65_535;
/// How often the loop looks at the queue without being woken.
const POLL: Duration = Duration::from_secs(5);
/// Finished runs are kept this long (re-requests of older commits find nothing to re-run)…
const KEEP_FINISHED: Duration = Duration::from_secs(90 * 24 * 3600);
/// …and pruned this often.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The name of a job's gate check.
pub fn gate_check(job: &str) -> String {
    format!("EkaCI: Evaluate Job ({job})")
}

/// Why a run task stopped early. GitHub failures make the run retry later; the rest is reported.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error(transparent)]
    GitHub(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {0} vanished from the store")]
    Missing(String),
}

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
    pub fn new(
        ex: Rc<LocalExecutor<'static>>,
        store: Store,
        pipeline: Arc<Pipeline>,
        scheduler: SchedulerHandle,
        apps: Vec<GitHubApp>,
        config: GitHubConfig,
        approval: ApprovalPolicy,
    ) -> Result<Rc<GitHubService>, ClientError> {
        let client_config = ClientConfig { api_url: config.api_url.clone(), ..ClientConfig::default() };
        let clients = apps
            .into_iter()
            .map(|app| GitHubClient::new(app.credentials.clone(), client_config.clone()).map(|c| (app, c)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Rc::new(GitHubService { ex, store, pipeline, scheduler, clients, config, approval }))
    }

    /// Starts the loop on `ex`; it stops when `shutdown` closes. Returns the wakers and the loop's task.
    pub fn start(self: Rc<Self>, shutdown: async_channel::Receiver<()>) -> (Wakers, smol::Task<()>) {
        let (events_tx, events_rx) = async_channel::bounded(1);
        let (approvals_tx, approvals_rx) = async_channel::unbounded();
        let ex = self.ex.clone();
        let task = ex.spawn(self.run(ex.clone(), events_rx, approvals_rx, shutdown));
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
                    tracing::info!(repo = %notice.repo, number = notice.number, "pull request approved");
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
            EventSummary::PullRequest(pr) => self.on_pull_request(pr, active).await,
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
            let reporter = Reporter::new(self.store.clone(), client.clone(), key, &run);
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
                    if approved_locally(&store, &run.repo, number, author)? {
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

    // -------------------------------------------------------------------------------------------- runs

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

    /// Executes run `key` once; GitHub failures requeue it with backoff.
    async fn execute(&self, key: &str, owners: &Arc<Mutex<Vec<JobsetId>>>) {
        let result = self.attempt(key, owners).await;
        let label = match &result {
            Ok(Finish::Done { result, .. }) => result,
            Ok(Finish::Held) => "held",
            Err(_) => "retry",
        };
        crate::metrics::global().github_runs.with_label_values(&[label]).inc();
        let store = self.store.clone();
        let k = key.to_string();
        let write = smol::unblock(move || {
            runs::update(&store, &k, |current| {
                let Some(mut run) = current else { return (None, None) };
                if !run.state.is_live() {
                    return (None, None); // cancelled meanwhile
                }
                match &result {
                    Ok(Finish::Done { outcome, failed_drvs, .. }) => {
                        run.state = RunState::Done { outcome: outcome.clone() };
                        run.failed_drvs = failed_drvs.clone();
                        run.rebuild_failed = false;
                        run.api_failures = 0;
                    }
                    Ok(Finish::Held) => run.state = RunState::AwaitingApproval,
                    Err(e) => {
                        run.api_failures = run.api_failures.saturating_add(1);
                        let backoff = 5u64.saturating_mul(1 << (run.api_failures - 1).min(8)).min(900);
                        run.state = RunState::Queued { not_before: now_secs() + backoff };
                        return (Some(run), Some(format!("{e}; retrying in {backoff} s")));
                    }
                }
                (Some(run), None)
            })
        })
        .await;
        match write {
            Ok(Some(retry)) => tracing::warn!(run = %key.replace('\0', "@"), "run interrupted: {retry}"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "recording a run's end failed"),
        }
    }

    async fn attempt(&self, key: &str, owners: &Arc<Mutex<Vec<JobsetId>>>) -> Result<Finish, RunError> {
        let store = self.store.clone();
        let k = key.to_string();
        let run = smol::unblock(move || runs::get(&store, &k))
            .await?
            .ok_or_else(|| RunError::Missing(key.into()))?;
        let Some((app, client)) = self.client_for(&run) else {
            tracing::warn!(repo = %run.repo, branch = %run.base_ref, "no configured GitHub App may serve this repository and branch");
            return Ok(Finish::Done {
                outcome: "no GitHub App may serve this repository and branch".into(),
                failed_drvs: Vec::new(),
                result: "skipped",
            });
        };
        let installation = self.installation(&run, client).await?;
        if run.installation.is_none() {
            // Remember it, so that cancelling this run later can report without asking again.
            let (store, k) = (self.store.clone(), key.to_string());
            smol::unblock(move || {
                runs::update(&store, &k, |current| match current {
                    Some(mut r) => {
                        r.installation = Some(installation);
                        (Some(r), ())
                    }
                    None => (None, ()),
                })
            })
            .await?;
        }
        let reporter =
            Reporter::new(self.store.clone(), client.clone(), key, &run).with_installation(installation);
        reporter.adopt_existing(&app.credentials.app_id).await?;

        if self.approval.applies_to(&run.trigger) {
            if !run.approved {
                let subject = self.approval_subject(key, &run, client, installation).await?;
                if !self.trusted(&run, subject.as_ref(), client, installation).await? {
                    reporter.report(APPROVAL_CHECK, held_summary(&run, subject.as_ref())).await?;
                    return Ok(Finish::Held);
                }
            }
            if run.check_id(APPROVAL_CHECK).is_some() {
                let summary = if run.approved {
                    "A maintainer approved this pull request."
                } else {
                    "No approval is needed any more: a pull request with this head commit is by an author \
                     with write access, or was approved."
                };
                let fields = completed(CheckConclusion::Success, "Approved", summary.into(), None);
                reporter.report(APPROVAL_CHECK, fields).await?;
            }
        }

        let auth = self.git_auth(&run, client, installation).await?;
        let (url, head, base) = (run.clone_url.clone(), run.head_sha.clone(), run.base_sha.clone());
        let config = match self.pipeline.repo_config(&url, &head, auth.as_ref()).await {
            Ok(found) => found,
            Err(PipelineError::NoRepoConfig { .. }) => {
                let summary = "This commit has neither `.eka-ci/config.json` nor the legacy `.ekaci/config.json`, \
                               so there is nothing to evaluate. See eka-ci's repository configuration documentation.";
                reporter
                    .report(
                        CONFIGURE_CHECK,
                        completed(CheckConclusion::Neutral, "No configuration", summary.into(), None),
                    )
                    .await?;
                return Ok(Finish::Done {
                    outcome: "no repository configuration".into(),
                    failed_drvs: Vec::new(),
                    result: "skipped",
                });
            }
            Err(PipelineError::InvalidRepoConfig { file, errors, .. }) => {
                let summary = format!(
                    "`{}` cannot be used:\n\n{}",
                    escape_md(&file),
                    crate::config::repo::FieldError::to_markdown_list(&errors)
                );
                let title = format!("{} error(s) in {}", errors.len(), file);
                reporter
                    .report(CONFIGURE_CHECK, completed(CheckConclusion::Failure, &title, summary, None))
                    .await?;
                return Ok(Finish::Done {
                    outcome: "invalid repository configuration".into(),
                    failed_drvs: Vec::new(),
                    result: "error",
                });
            }
            Err(e) => {
                let summary = format!("The commit could not be read:\n\n```\n{}\n```", fence(&e.to_string()));
                reporter
                    .report(
                        CONFIGURE_CHECK,
                        completed(CheckConclusion::Failure, "Cannot read the commit", summary, None),
                    )
                    .await?;
                return Ok(Finish::Done {
                    outcome: format!("checkout failed: {e}"),
                    failed_drvs: Vec::new(),
                    result: "error",
                });
            }
        };
        let (repo_config, file, warnings) = config;
        let mut summary = format!("`{}` is valid: {} job(s).", escape_md(&file), repo_config.jobs.len());
        if !warnings.is_empty() {
            summary.push_str("\n\nWarnings:\n");
            for w in &warnings {
                summary.push_str(&format!("- {}\n", escape_md(w)));
            }
        }
        reporter
            .report(
                CONFIGURE_CHECK,
                completed(CheckConclusion::Success, "Configuration valid", summary, None),
            )
            .await?;
        let jobs: Vec<String> = repo_config.jobs.keys().cloned().collect();
        for job in &jobs {
            let fields = CheckRunFields {
                status: Some(CheckStatus::InProgress),
                started_at: Some(crate::time::now_rfc3339()),
                output: Some(CheckRunOutput {
                    title: "Evaluating and building".into(),
                    summary: format!(
                        "Evaluating `{}` at {} against {}.",
                        escape_md(job),
                        short(&head),
                        short(&base)
                    ),
                    text: None,
                }),
                ..CheckRunFields::default()
            };
            reporter.report(&gate_check(job), fields).await?;
        }

        if run.rebuild_failed {
            self.rebuild_failed(&run.failed_drvs).await;
        }

        let diff = match self.pipeline.diff_commits(&url, &base, &head, None, auth.as_ref(), &None).await {
            Ok(diff) => diff,
            Err(e) => {
                let summary = format!("Evaluation could not run:\n\n```\n{}\n```", fence(&e.to_string()));
                for job in &jobs {
                    reporter
                        .report(
                            &gate_check(job),
                            completed(CheckConclusion::Failure, "Evaluation failed", summary.clone(), None),
                        )
                        .await?;
                }
                return Ok(Finish::Done {
                    outcome: format!("evaluation failed: {e}"),
                    failed_drvs: Vec::new(),
                    result: "error",
                });
            }
        };
        self.report_summary(&reporter, &diff).await?;
        let review = match self.pipeline.build_review(&self.scheduler, diff, owners, &None).await {
            Ok(review) => review,
            Err(e) => {
                let summary = format!("Building failed to run:\n\n```\n{}\n```", fence(&e.to_string()));
                for job in &jobs {
                    reporter
                        .report(
                            &gate_check(job),
                            completed(CheckConclusion::Failure, "Build error", summary.clone(), None),
                        )
                        .await?;
                }
                return Ok(Finish::Done {
                    outcome: format!("builds failed to run: {e}"),
                    failed_drvs: Vec::new(),
                    result: "error",
                });
            }
        };
        self.report_review(&reporter, &review).await
    }

    /// Posts (or updates) the change summary of the diffed jobs.
    async fn report_summary(
        &self,
        reporter: &Reporter,
        diff: &crate::pipeline::DiffReport,
    ) -> Result<(), RunError> {
        match self.pipeline.change_summary(diff).await {
            Ok((_, rendered)) => {
                let fields = completed(CheckConclusion::Neutral, "Change summary", rendered.markdown, None);
                reporter.report(SUMMARY_CHECK, fields).await?;
            }
            Err(e) => tracing::warn!(error = %e, "computing the change summary failed"),
        }
        Ok(())
    }

    /// Completes every job's gate and the failure check runs.
    async fn report_review(&self, reporter: &Reporter, review: &ReviewReport) -> Result<Finish, RunError> {
        let max = self.config.max_failure_check_runs as usize;
        let mut failed_drvs = Vec::new();
        let mut reported = Vec::new();
        for job in &review.jobs {
            let failing: Vec<_> = job.attrs.iter().filter(|a| a.verdict.fails()).collect();
            for a in failing.iter().take(max) {
                let name = format!("{} ({})", a.attr, job.diff.job);
                let mut summary = format!(
                    "`{}` ({}) {}.\n\n- derivation: `{}`\n- state: {}",
                    escape_md(&a.attr),
                    escape_md(&a.name),
                    verdict_words(a.verdict),
                    a.head_drv,
                    a.head.state
                );
                if let Some(detail) = &a.head.detail {
                    summary.push_str(&format!("\n- detail: {}", escape_md(detail)));
                }
                let text = a.log_tail.as_ref().map(|t| format!("```\n{}\n```", fence(t)));
                let title = format!("{} fails to build", a.attr);
                reporter.report(&name, completed(CheckConclusion::Failure, &title, summary, text)).await?;
                reported.push(name);
            }
            failed_drvs.extend(failing.iter().map(|a| a.head_drv.clone()));
            let (title, summary) = gate_text(job, failing.len().saturating_sub(max));
            let conclusion = if job.failed { CheckConclusion::Failure } else { CheckConclusion::Success };
            reporter.report(&gate_check(&job.diff.job), completed(conclusion, &title, summary, None)).await?;
        }
        // Failure runs of an earlier attempt whose attribute builds now.
        let jobs: Vec<&str> = review.jobs.iter().map(|j| j.diff.job.as_str()).collect();
        for check in reporter.known_checks() {
            let is_failure_run =
                jobs.iter().any(|j| check.ends_with(&format!(" ({j})"))) && !check.starts_with("EkaCI: ");
            if is_failure_run && !reported.contains(&check) {
                let fields = completed(
                    CheckConclusion::Success,
                    "Builds now",
                    "This attribute builds at this attempt.".into(),
                    None,
                );
                reporter.report(&check, fields).await?;
            }
        }
        let failed = review.jobs.iter().filter(|j| j.failed).count();
        let outcome =
            if failed == 0 { "all jobs passed".to_string() } else { format!("{failed} job(s) failed") };
        let result = if failed == 0 { "passed" } else { "failed" };
        Ok(Finish::Done { outcome, failed_drvs, result })
    }

    /// Requeues the failed derivations (or the failed dependency of a transitive failure).
    async fn rebuild_failed(&self, drvs: &[String]) {
        let mut targets: Vec<String> = Vec::new();
        for drv in drvs {
            let target = match self.scheduler.state(drv).await {
                Ok(Some(status)) => match status.state {
                    DrvState::TransitiveFailure { dependency } | DrvState::Blocked { dependency } => {
                        dependency
                    }
                    _ => drv.clone(),
                },
                _ => drv.clone(),
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        for t in targets {
            match self.scheduler.rebuild(&t).await {
                Ok(owner) => {
                    if let Err(e) = self.scheduler.wait(owner).await {
                        tracing::warn!(drv = %t, error = %e, "waiting for a rebuild failed");
                    }
                }
                Err(e) => tracing::info!(drv = %t, error = %e, "not rebuilt"),
            }
        }
    }

    /// The run's installation: from the event, the installations table, or GitHub.
    async fn installation(&self, run: &Run, client: &GitHubClient) -> Result<u64, RunError> {
        if let Some(id) = run.installation {
            return Ok(id);
        }
        let (store, repo) = (self.store.clone(), run.repo.clone());
        if let Some(entry) = smol::unblock(move || runs::installation_for(&store, &repo)).await? {
            return Ok(entry.installation);
        }
        Ok(client.repo_installation(&run.repo).await?.id)
    }

    /// The pull request whose approval a run needs, and its author. A merge group's pull request is the
    /// one its head ref names; its author is looked up once and remembered in the run. `None` for a merge
    /// group whose head ref names no pull request.
    async fn approval_subject(
        &self,
        key: &str,
        run: &Run,
        client: &GitHubClient,
        installation: u64,
    ) -> Result<Option<(u64, Option<String>)>, RunError> {
        let Some((number, author)) = run.approval_subject() else { return Ok(None) };
        if author.is_some() || !matches!(run.trigger, Trigger::MergeGroup { .. }) {
            return Ok(Some((number, author.map(str::to_string))));
        }
        let login = client.pull_request(installation, &run.repo, number).await?.user.map(|u| u.login);
        let (store, k, l) = (self.store.clone(), key.to_string(), login.clone());
        smol::unblock(move || {
            runs::update(&store, &k, |current| match current {
                Some(mut r) => {
                    if let Trigger::MergeGroup { author, .. } = &mut r.trigger {
                        *author = l;
                    }
                    (Some(r), ())
                }
                None => (None, ()),
            })
        })
        .await?;
        Ok(Some((number, login)))
    }

    /// Whether a run that needs approval may go ahead: one of the pull requests it serves (`subject`,
    /// then the others with the same head) or its author was approved with `ekaci`, or the author has
    /// write access. Without a pull request to approve it never may (a merge group whose head ref names
    /// none fails closed).
    async fn trusted(
        &self,
        run: &Run,
        subject: Option<&(u64, Option<String>)>,
        client: &GitHubClient,
        installation: u64,
    ) -> Result<bool, RunError> {
        let others = run.also_for.iter().map(|p| (p.number, p.author.clone()));
        for (number, author) in subject.cloned().into_iter().chain(others) {
            let (store, repo, a) = (self.store.clone(), run.repo.clone(), author.clone());
            if smol::unblock(move || approved_locally(&store, &repo, number, a.as_deref())).await? {
                return Ok(true);
            }
            let Some(author) = author else { continue };
            let permission = client.collaborator_permission(installation, &run.repo, &author).await?;
            if matches!(permission.permission.as_str(), "admin" | "maintain" | "write") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Git credentials for the run's clone URL: the installation token, only for `https://` URLs of
    /// the configured GitHub host.
    async fn git_auth(
        &self,
        run: &Run,
        client: &GitHubClient,
        installation: u64,
    ) -> Result<Option<GitAuth>, RunError> {
        let host = self.config.git_host();
        if !crate::checkout::sends_credentials(&run.clone_url, &host) {
            return Ok(None);
        }
        let token = client.installation_token(installation).await?;
        Ok(Some(GitAuth { token, host }))
    }
}

/// How a run attempt ended (errors aside).
enum Finish {
    /// `result` is the `eka_ci_github_runs_total` label.
    Done {
        outcome: String,
        failed_drvs: Vec<String>,
        result: &'static str,
    },
    Held,
}

/// Whether pull request `number` of `repo` or its author was approved with `ekaci`. Blocking.
fn approved_locally(
    store: &Store,
    repo: &str,
    number: u64,
    author: Option<&str>,
) -> Result<bool, StoreError> {
    if approvals::is_pr_approved(store, repo, number)? {
        return Ok(true);
    }
    match author {
        Some(a) => approvals::is_user_approved(store, a),
        None => Ok(false),
    }
}

/// The `EkaCI: Approval Required` check of a held run (`subject` from `approval_subject`): why, and the
/// commands that release it.
fn held_summary(run: &Run, subject: Option<&(u64, Option<String>)>) -> CheckRunFields {
    let Some((number, author)) = subject.map(|(n, a)| (*n, a.as_deref())) else {
        let summary = "`merge_queue_require_approval` is on, and this merge group's head ref does not name a \
                       pull request (`gh-readonly-queue/<base>/pr-<number>-<sha>`), so it cannot be approved. \
                       Nothing is evaluated.";
        return completed(CheckConclusion::ActionRequired, "Cannot be approved", summary.into(), None);
    };
    let who = escape_md(author.unwrap_or("a deleted account"));
    let repo = escape_md(&run.repo);
    let why = match run.trigger {
        Trigger::PullRequest { .. } => format!(
            "Pull requests by {who} are evaluated once a maintainer approves them, because `require_approval` \
             is on and the author has no write access to {repo}."
        ),
        Trigger::MergeGroup { .. } => format!(
            "This merge queue entry (pull request #{number} by {who}) is evaluated once a maintainer approves \
             it, because `merge_queue_require_approval` is on and the author has no write access to {repo}."
        ),
    };
    let summary = format!(
        "{why}\n\nTo approve this pull request, run on the eka-ci host:\n\n```\nekaci approve {}#{number}\n```\n\n\
         To trust the author from now on: `ekaci approved-users add {}`.",
        run.repo,
        author.unwrap_or("LOGIN"),
    );
    completed(CheckConclusion::ActionRequired, "Waiting for a maintainer's approval", summary, None)
}

/// Creates or updates the check runs of one run, recording every id it gets.
struct Reporter {
    store: Store,
    client: GitHubClient,
    installation: u64,
    key: String,
    repo: String,
    head_sha: String,
    /// Name → (id, completed), as recorded.
    known: std::cell::RefCell<Vec<(String, u64, bool)>>,
}

impl Reporter {
    fn new(store: Store, client: GitHubClient, key: &str, run: &Run) -> Reporter {
        Reporter {
            store,
            client,
            installation: run.installation.unwrap_or(0),
            key: key.to_string(),
            repo: run.repo.clone(),
            head_sha: run.head_sha.clone(),
            known: std::cell::RefCell::new(
                run.checks.iter().map(|c| (c.name.clone(), c.id, c.completed)).collect(),
            ),
        }
    }

    fn with_installation(mut self, installation: u64) -> Reporter {
        self.installation = installation;
        self
    }

    fn known_checks(&self) -> Vec<String> {
        self.known.borrow().iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Adopts check runs of this App on the head commit that the store does not know (created just
    /// before a crash), so they are updated instead of duplicated.
    async fn adopt_existing(&self, app_id: &str) -> Result<(), RunError> {
        let Ok(app) = app_id.parse::<u64>() else { return Ok(()) };
        let list =
            self.client.list_check_runs_for_ref(self.installation, &self.repo, &self.head_sha, None).await?;
        for cr in list.check_runs {
            if cr.app.as_ref().map(|a| a.id) != Some(app) || self.id_of(&cr.name).is_some() {
                continue;
            }
            self.remember(&cr.name, cr.id, cr.status == "completed").await?;
        }
        Ok(())
    }

    fn id_of(&self, name: &str) -> Option<u64> {
        self.known.borrow().iter().find(|(n, _, _)| n == name).map(|(_, id, _)| *id)
    }

    async fn remember(&self, name: &str, id: u64, completed: bool) -> Result<(), RunError> {
        {
            let mut known = self.known.borrow_mut();
            match known.iter_mut().find(|(n, _, _)| n == name) {
                Some(entry) => *entry = (name.to_string(), id, completed),
                None => known.push((name.to_string(), id, completed)),
            }
        }
        let (store, key, name) = (self.store.clone(), self.key.clone(), name.to_string());
        smol::unblock(move || {
            runs::update(&store, &key, |current| match current {
                Some(mut run) => {
                    run.set_check(&name, id, completed);
                    (Some(run), ())
                }
                None => (None, ()),
            })
        })
        .await?;
        Ok(())
    }

    /// Sets check run `name` to `fields`: PATCH when it exists, else POST (and record the id).
    async fn report(&self, name: &str, fields: CheckRunFields) -> Result<(), RunError> {
        let fields = cap_output(fields);
        let completed = fields.conclusion.is_some();
        if let Some(id) = self.id_of(name) {
            let update = UpdateCheckRun { name: None, fields: fields.clone() };
            match self.client.update_check_run(self.installation, &self.repo, id, &update).await {
                Ok(_) => return self.remember(name, id, completed).await,
                // Deleted on GitHub's side: create it again below.
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let request = CreateCheckRun { name: name.to_string(), head_sha: self.head_sha.clone(), fields };
        let created = self.client.create_check_run(self.installation, &self.repo, &request).await?;
        self.remember(name, created.id, completed).await
    }

    /// Completes every check run of `run` that is not completed yet as cancelled.
    async fn cancel_open(&self, run: &Run, reason: &str) -> Result<(), RunError> {
        let open: Vec<String> = run.checks.iter().filter(|c| !c.completed).map(|c| c.name.clone()).collect();
        for name in open {
            let summary = format!("Cancelled: {}.", escape_md(reason));
            self.report(&name, completed(CheckConclusion::Cancelled, "Cancelled", summary, None)).await?;
        }
        Ok(())
    }
}

/// A completed check run's fields.
fn completed(
    conclusion: CheckConclusion,
    title: &str,
    summary: String,
    text: Option<String>,
) -> CheckRunFields {
    CheckRunFields {
        status: Some(CheckStatus::Completed),
        conclusion: Some(conclusion),
        completed_at: Some(crate::time::now_rfc3339()),
        output: Some(CheckRunOutput { title: truncate_chars(title, 200), summary, text }),
        ..CheckRunFields::default()
    }
}

/// Keeps `output.summary` and `output.text` within GitHub's limit, cutting on a character boundary.
fn cap_output(mut fields: CheckRunFields) -> CheckRunFields {
    if let Some(output) = fields.output.as_mut() {
        const NOTE: &str = "\n\n_…truncated_";
        let limit = MAX_OUTPUT_CHARS - NOTE.chars().count();
        if output.summary.chars().count() > MAX_OUTPUT_CHARS {
            output.summary = format!("{}{NOTE}", truncate_chars(&output.summary, limit));
        }
        if let Some(text) = output.text.as_mut() {
            if text.chars().count() > MAX_OUTPUT_CHARS {
                // Log tails: the end matters most.
                let skip = text.chars().count() - limit;
                *text = format!("_…truncated_\n\n{}", text.chars().skip(skip).collect::<String>());
            }
        }
    }
    fields
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => s[..cut].to_string(),
        None => s.to_string(),
    }
}

/// The gate's title and summary for one job.
fn gate_text(job: &JobReview, not_listed: usize) -> (String, String) {
    let d = &job.diff;
    let failing: Vec<_> = job.attrs.iter().filter(|a| a.verdict.fails()).collect();
    let built_ok = job.attrs.iter().filter(|a| !a.verdict.fails()).count();
    let new_errors: Vec<_> = d.errors.iter().filter(|e| e.is_new()).collect();
    let mut s = String::new();
    if let crate::jobset::JobsetState::Failed { message } = &d.head.state {
        s.push_str(&format!("**The evaluation of this job failed:**\n\n```\n{}\n```\n\n", fence(message)));
    }
    s.push_str(&format!(
        "| added | changed | removed | unchanged | built | failing | new evaluation errors |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n| {} | {} | {} | {} | {} | {} | {} |\n",
        d.added.len(),
        d.changed.len(),
        d.removed.len(),
        d.unchanged,
        built_ok,
        failing.len(),
        new_errors.len()
    ));
    if !failing.is_empty() {
        s.push_str("\n**Failing:**\n");
        let lines = failing.iter().map(|a| format!("`{}`: {}", escape_md(&a.attr), verdict_words(a.verdict)));
        push_bullets(&mut s, lines, failing.len(), 100);
        if not_listed > 0 {
            s.push_str(&format!(
                "\n{not_listed} failing attribute(s) have no check run of their own (limit reached).\n"
            ));
        }
    }
    if !new_errors.is_empty() {
        let allowed = if d.head.allow_eval_failures { " (allowed by `allow_eval_failures`)" } else { "" };
        s.push_str(&format!("\n**New evaluation errors{allowed}:**\n"));
        let lines = new_errors.iter().map(|e| {
            let last = e.head_error.as_deref().and_then(|m| m.lines().last()).unwrap_or("");
            format!("`{}`: {}", escape_md(&e.attr), escape_md(&truncate_chars(last, 300)))
        });
        push_bullets(&mut s, lines, new_errors.len(), 50);
    }
    let title = if job.failed {
        match (failing.len(), new_errors.len()) {
            (0, 0) => "Evaluation failed".to_string(),
            (f, 0) => format!("{f} attribute(s) fail to build"),
            (0, e) => format!("{e} new evaluation error(s)"),
            (f, e) => format!("{f} attribute(s) fail to build, {e} new evaluation error(s)"),
        }
    } else if d.added.is_empty() && d.changed.is_empty() {
        "Nothing to build".to_string()
    } else {
        format!("{built_ok} attribute(s) built")
    };
    (title, s)
}

/// Appends at most `max` of the `total` lines as a markdown list, then "… and N more".
fn push_bullets(out: &mut String, lines: impl Iterator<Item = String>, total: usize, max: usize) {
    for line in lines.take(max) {
        out.push_str(&format!("- {line}\n"));
    }
    if total > max {
        out.push_str(&format!("- … and {} more\n", total - max));
    }
}

fn verdict_words(v: crate::pipeline::Verdict) -> &'static str {
    use crate::pipeline::Verdict::*;
    match v {
        AddedOk => "added, builds",
        AddedFailing => "added, fails to build",
        NewlyFailing => "built on the base, fails now",
        NewlySucceeding => "failed on the base, builds now",
        StillFailing => "fails on the base and here",
        StillOk => "builds",
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Escapes markdown and HTML in untrusted text, and defuses @mentions.
fn escape_md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '@' => out.push_str("@\u{200b}"),
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// Text for a fenced code block: a ``` inside would close it.
fn fence(s: &str) -> String {
    s.replace("```", "`\u{200b}``")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_capped_on_character_boundaries_keeping_the_end_of_logs() {
        let summary = "é".repeat(MAX_OUTPUT_CHARS + 10);
        let text = format!("{}END", "ü".repeat(MAX_OUTPUT_CHARS));
        let fields = cap_output(completed(CheckConclusion::Failure, "t", summary, Some(text)));
        let output = fields.output.expect("output");
        assert!(output.summary.chars().count() <= MAX_OUTPUT_CHARS);
        assert!(output.summary.ends_with("_…truncated_"));
        assert!(output.summary.starts_with("éé"));
        let text = output.text.expect("text");
        assert!(text.chars().count() <= MAX_OUTPUT_CHARS + 20);
        assert!(text.starts_with("_…truncated_") && text.ends_with("üEND"), "the tail is kept");
        let small = cap_output(completed(CheckConclusion::Success, "t", "short".into(), None));
        assert_eq!(small.output.expect("output").summary, "short");
    }

    #[test]
    fn untrusted_text_cannot_mention_or_format() {
        assert_eq!(escape_md("@team <b>x</b> `y`"), "@\u{200b}team \\<b\\>x\\</b\\> \\`y\\`");
        assert_eq!(fence("a```b"), "a`\u{200b}``b");
        assert_eq!(truncate_chars("ééé", 2), "éé");
        assert_eq!(gate_check("main"), "EkaCI: Evaluate Job (main)");
    }
}
