//! The review pipeline: from a repository and a revision to stored jobsets, their derivation graph, and
//! base-vs-head diffs.
//!
//! For one commit it resolves the revision, checks the commit out into a private worktree, reads the
//! untrusted `.eka-ci/config.json`, evaluates each job (reusing a jobset already evaluated for the same
//! repository, commit and job), streams the records into the store, discovers the jobset's derivation
//! graph, and removes the worktree. A diff whose base is already evaluated (every job of head, with base's
//! own definitions) takes base's jobsets without checking base out ([`Pipeline::diff_commits`]). A diff for a forge ([`Pipeline::diff_with_config`]) evaluates both
//! commits with the jobs of a configuration the caller trusts instead of each commit's own. Evaluations are limited to a few at a time; requests beyond that
//! wait in a queue whose depth `ekaci status` reports. This module decides the order of those steps; it
//! must never parse Nix output or talk git itself (the `nix` and `checkout` modules do).
//!
//! Two requests for the same jobset (repository, commit, job) share one evaluation: the second waits
//! for the first (the in-flight map) and then reuses its result, so it can never reset the jobset the
//! first is filling. A reused jobset whose derivation graph is incomplete (a crash between "evaluated"
//! and "graph discovered") has its graph discovered again, so no crash leaves a commit unusable.
//!
//! Host trouble (out of file descriptors, processes or disk space; see `nix::process::host`) while
//! checking out, evaluating or reading `.drv` files is not a verdict on the commit: the step is retried
//! with backoff ([`HOST_RETRY_DELAYS`]), and when the trouble outlasts every retry the request fails
//! with [`PipelineError::HostTrouble`], recording nothing as the commit's failure (the jobset stays
//! unfinished and is evaluated again by the next request).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::checkout::{Checkouts, GitAuth, Worktree};
use crate::config::repo::{self, JobConfig, JobSource, RepoConfig, RepoConfigOutcome};
use crate::graph::Graph;
use crate::jobset::diff::{diff, JobDiff};
use crate::jobset::{AttrDrv, AttrOutcome, Begin, Jobset, JobsetId, JobsetKey, JobsetState, Jobsets};
use crate::nix::eval::{self, EvalEvent, EvalOptions, EvalOutcome, EvalSource};
use crate::nix::process::host;
use crate::scheduler::state::{Completion, DrvState};
use crate::scheduler::{Owner, OwnerOutcome, SchedulerHandle};
use crate::store::StoreError;

/// The result of evaluating one commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub repo: String,
    pub commit: String,
    /// The repository configuration file that was read, relative to the repository root.
    pub config_file: String,
    /// Warnings about the repository configuration (unknown fields, deprecated location).
    pub config_warnings: Vec<String>,
    pub jobs: Vec<JobReport>,
    /// The change-summary settings of this commit's repository configuration (not sent anywhere).
    #[serde(skip)]
    pub summary_settings: crate::summary::Settings,
}

/// One job of an [`EvalReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    pub jobset: Jobset,
    /// Whether the jobset was already evaluated and reused.
    pub reused: bool,
    /// Every attribute with its derivation or error, in attribute order.
    pub attrs: Vec<(String, AttrOutcome)>,
}

/// The result of diffing two commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub repo: String,
    pub base_commit: String,
    pub head_commit: String,
    pub jobs: Vec<JobDiff>,
    /// Jobs configured on one side only (by name).
    pub only_in_base: Vec<String>,
    pub only_in_head: Vec<String>,
    pub config_warnings: Vec<String>,
    /// The change-summary settings of head's repository configuration (not sent anywhere).
    #[serde(skip)]
    pub summary_settings: crate::summary::Settings,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Checkout(#[from] crate::checkout::CheckoutError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{repo} at {commit} has no .eka-ci/config.json (nor the legacy .ekaci/config.json)")]
    NoRepoConfig { repo: String, commit: String },
    #[error("{file} at {commit} is invalid:\n{}", errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    InvalidRepoConfig { file: String, commit: String, errors: Vec<repo::FieldError> },
    #[error("job `{job}` is not defined in {file} at {commit} (defined: {defined})")]
    UnknownJob { job: String, file: String, commit: String, defined: String },
    #[error("graph discovery for job `{job}` failed: {source}")]
    Graph { job: String, source: crate::graph::GraphError },
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::SchedulerError),
    /// Host trouble outlasted every retry of a step; nothing was recorded as the commit's failure.
    #[error("{stage} hit host trouble ({reason}) through {retries} retries: {message}")]
    HostTrouble { stage: &'static str, reason: &'static str, retries: usize, message: String },
}

impl PipelineError {
    /// Whether this error is the host's trouble rather than a verdict on the repository: retrying the
    /// whole request later may succeed.
    pub fn is_host_trouble(&self) -> bool {
        matches!(self, PipelineError::HostTrouble { .. }) || host::transient_reason(self).is_some()
    }
}

/// The waits between tries of a step that hit host trouble (about two minutes in all); after the last
/// one the step fails with [`PipelineError::HostTrouble`].
pub const HOST_RETRY_DELAYS: [std::time::Duration; 6] = {
    use std::time::Duration;
    [
        Duration::from_secs(1),
        Duration::from_secs(2),
        Duration::from_secs(4),
        Duration::from_secs(8),
        Duration::from_secs(30),
        Duration::from_secs(60),
    ]
};

/// Counts and logs one retry of `stage` after host trouble, then waits for try `retry` (0-based).
async fn host_backoff(stage: &'static str, what: &str, reason: &str, message: &str, retry: usize) {
    let delay = HOST_RETRY_DELAYS.get(retry).copied().unwrap_or_default();
    crate::metrics::global().host_trouble_retries.with_label_values(&[stage]).inc();
    tracing::warn!(
        stage,
        what,
        reason,
        error = message,
        retry = retry + 1,
        delay_s = delay.as_secs(),
        "host trouble, not a verdict on the commit: retrying"
    );
    smol::Timer::after(delay).await;
}

/// Runs `step` again after host trouble (an error whose source chain holds a transient `io::Error`),
/// with [`HOST_RETRY_DELAYS`]; any other outcome, or trouble through every retry, is returned as is.
async fn retry_host_trouble<T, E, Fut>(
    stage: &'static str,
    what: &str,
    mut step: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: std::error::Error + 'static,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut retry = 0;
    loop {
        match step().await {
            Err(e) if retry < HOST_RETRY_DELAYS.len() => match host::transient_reason(&e) {
                Some(reason) => host_backoff(stage, what, reason, &e.to_string(), retry).await,
                None => return Err(e),
            },
            outcome => return outcome,
        }
        retry += 1;
    }
}

/// Progress of a long request, for a terminal progress line. The control protocol carries it as is
/// (`control::Response::Progress`), so its shape is part of the wire format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// What is being worked on, e.g. `evaluating main @ 3f2a1c0`.
    pub stage: String,
    pub done: u64,
    /// 0 when not known yet.
    pub total: u64,
    /// An evaluation's counts (listed, evaluated, instantiated, errors), while one runs.
    pub counts: Option<eval::EvalCounts>,
}

/// Receives progress reports. It must not block: progress is advisory, and a receiver that cannot keep
/// up drops reports.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// At most this many deferred errors per job get Nix's message in an `ekaci eval` report (the others
/// keep [`eval::DEFERRED_ERROR`]; a diff explains every error new in head).
const EXPLAINED_IN_EVAL_REPORT: usize = 100;

/// Where progress goes, if anywhere (the daemon forwards it to the control connection that asked).
pub type ProgressSink = Option<ProgressFn>;

fn report(progress: &ProgressSink, stage: &str, done: u64, total: u64) {
    report_counts(progress, stage, done, total, None);
}

fn report_counts(
    progress: &ProgressSink,
    stage: &str,
    done: u64,
    total: u64,
    counts: Option<eval::EvalCounts>,
) {
    if let Some(sink) = progress {
        sink(Progress { stage: stage.to_string(), done, total, counts });
    }
}

/// The pipeline's shared state.
pub struct Pipeline {
    jobsets: Jobsets,
    checkouts: Checkouts,
    graph: Graph,
    eval_options: EvalOptions,
    gc_roots: PathBuf,
    logs_dir: PathBuf,
    /// Scratch directories of running checks (`<data_dir>/checks`).
    checks_dir: PathBuf,
    /// The sandbox limits of checks (`[checks]`); set once at start-up.
    check_limits: std::sync::OnceLock<crate::checks::Limits>,
    slots: smol::lock::Semaphore,
    /// Bounds the worktrees that exist at once (twice the evaluation slots): many pull requests arriving
    /// together must not check out a large repository dozens of times while they wait for a slot.
    worktree_slots: smol::lock::Semaphore,
    waiting: AtomicU64,
    running: AtomicU64,
    /// What a repository configuration may ask for (`[limits]`); set once at start-up.
    repo_limits: std::sync::OnceLock<repo::RepoLimits>,
    /// The jobsets being evaluated now, by key and `allow_eval_failures`: a second request for one of
    /// them waits until the receiver reports the sender dropped (the first evaluation ended, however).
    in_flight: Mutex<HashMap<(JobsetKey, bool), async_channel::Receiver<()>>>,
}

/// Why an evaluation of a whole job failed: the message recorded in the jobset, and whether it was
/// host trouble (then it is retried, not recorded).
struct EvalFailure {
    message: String,
    host: Option<&'static str>,
}

/// The in-flight entry of the evaluation this task runs; dropping it (at the end, on an error or when
/// the task is cancelled) removes the entry and wakes every request waiting for it.
struct InFlight<'p> {
    map: &'p Mutex<HashMap<(JobsetKey, bool), async_channel::Receiver<()>>>,
    key: (JobsetKey, bool),
    _done: async_channel::Sender<()>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&self.key);
    }
}

impl Pipeline {
    pub fn new(
        jobsets: Jobsets,
        checkouts: Checkouts,
        graph: Graph,
        eval_options: EvalOptions,
        data_dir: &Path,
        logs_dir: &Path,
        concurrent_evaluations: usize,
    ) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            jobsets,
            checkouts,
            graph,
            eval_options,
            gc_roots: data_dir.join("gcroots"),
            logs_dir: logs_dir.to_path_buf(),
            checks_dir: data_dir.join("checks"),
            check_limits: std::sync::OnceLock::new(),
            slots: smol::lock::Semaphore::new(concurrent_evaluations.max(1)),
            worktree_slots: smol::lock::Semaphore::new(concurrent_evaluations.max(1) * 2),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
            repo_limits: std::sync::OnceLock::new(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// Sets the limits repository configurations are validated against (`[limits]`; the defaults until
    /// then). Only the first call counts.
    pub fn set_repo_limits(&self, limits: repo::RepoLimits) {
        let _first = self.repo_limits.set(limits);
    }

    /// Sets the sandbox limits of checks (`[checks]`; the defaults until then). Only the first call counts.
    pub fn set_check_limits(&self, limits: crate::checks::Limits) {
        let _first = self.check_limits.set(limits);
    }

    /// Removes the scratch directories of checks an earlier process left (call once at start-up).
    pub async fn clean_check_scratch(&self) {
        crate::checks::clean_scratch(&self.checks_dir).await;
    }

    fn check_limits(&self) -> crate::checks::Limits {
        self.check_limits
            .get()
            .cloned()
            .unwrap_or_else(|| crate::checks::Limits::from_server(&crate::config::ChecksConfig::default()))
    }

    fn repo_limits(&self) -> repo::RepoLimits {
        self.repo_limits.get().cloned().unwrap_or_default()
    }

    /// Whether evaluations run under Nix's `restrict-eval` (`[evaluation] restrict_eval`).
    pub fn restrict_eval(&self) -> bool {
        self.eval_options.restrict_eval
    }

    /// Evaluations waiting for a slot, and running.
    pub fn depths(&self) -> (u64, u64) {
        (self.waiting.load(Ordering::Relaxed), self.running.load(Ordering::Relaxed))
    }

    pub fn jobsets(&self) -> &Jobsets {
        &self.jobsets
    }

    /// The git mirrors and worktrees.
    pub fn checkouts(&self) -> &Checkouts {
        &self.checkouts
    }

    /// The derivation graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Evaluates `rev` of the local repository at `repo_path` (every job, or only `job`).
    pub async fn evaluate_local(
        &self,
        repo_path: &Path,
        rev: &str,
        job: Option<&str>,
        progress: &ProgressSink,
    ) -> Result<(EvalReport, Vec<Jobset>), PipelineError> {
        let commit = crate::checkout::resolve_rev(repo_path, rev).await?;
        let url = crate::checkout::local_url(repo_path);
        self.evaluate_commit(&url, &commit, job, None, progress, true).await
    }

    /// Diffs `base` against `head` of the local repository at `repo_path`.
    pub async fn diff_local(
        &self,
        repo_path: &Path,
        base: &str,
        head: &str,
        job: Option<&str>,
        progress: &ProgressSink,
    ) -> Result<DiffReport, PipelineError> {
        let base_commit = crate::checkout::resolve_rev(repo_path, base).await?;
        let head_commit = crate::checkout::resolve_rev(repo_path, head).await?;
        let url = crate::checkout::local_url(repo_path);
        self.diff_commits(&url, &base_commit, &head_commit, job, None, progress).await
    }

    /// Diffs commit `base` against commit `head` of the repository at `url` (fetched with `auth` when
    /// given). Head is evaluated first: its configuration decides the jobs, and an invalid one is an
    /// error. A base without a usable configuration, or without one of head's jobs, contributes an
    /// empty jobset for that job, so everything head has is Added. A base already evaluated is not
    /// checked out again (`reuse_evaluated`).
    pub async fn diff_commits(
        &self,
        url: &str,
        base_commit: &str,
        head_commit: &str,
        job: Option<&str>,
        auth: Option<&GitAuth>,
        progress: &ProgressSink,
    ) -> Result<DiffReport, PipelineError> {
        let head = self.evaluate_commit(url, head_commit, job, auth, progress, false);
        // Base with nothing evaluated yet (a cold review) goes alongside head: checked out while head
        // evaluates, evaluated as soon as head's evaluation frees the slot (while head's aliases and
        // graph are read). A base with jobsets is usually reused without a checkout (`reuse_evaluated`).
        let base_cold = {
            let (jobsets, repo, commit) = (self.jobsets.clone(), url.to_string(), base_commit.to_string());
            smol::unblock(move || jobsets.of_commit(&repo, &commit)).await?.is_empty()
        };
        let (head, base) = if base_cold {
            tracing::info!(
                repo = url,
                base = base_commit,
                "base has nothing evaluated: it goes alongside head"
            );
            // Head's failure ends the review at once (base's checkout and evaluation are dropped);
            // base's own failure waits for head and is handled below.
            let base = async {
                Ok::<_, PipelineError>(
                    self.evaluate_commit(url, base_commit, job, auth, progress, false).await,
                )
            };
            let (head, base) = futures_lite::future::try_zip(head, base).await?;
            (head, Some(base))
        } else {
            (head.await?, None)
        };
        let (head_report, head_sets) = head;
        let summary_settings = head_report.summary_settings.clone();
        let mut config_warnings: Vec<String> =
            head_report.config_warnings.into_iter().map(|w| format!("head: {w}")).collect();
        let evaluated = match base {
            Some(evaluated) => evaluated.map(|(report, sets)| (Some(report), sets)),
            None => match self.reuse_evaluated(url, base_commit, job, &head_sets, progress).await? {
                Some(sets) => Ok((None, sets)),
                None => self
                    .evaluate_commit(url, base_commit, job, auth, progress, false)
                    .await
                    .map(|(report, sets)| (Some(report), sets)),
            },
        };
        let base_sets = match evaluated {
            Ok((None, sets)) => sets,
            Ok((Some(base_report), sets)) => {
                config_warnings.extend(base_report.config_warnings.into_iter().map(|w| format!("base: {w}")));
                sets
            }
            Err(e @ (PipelineError::NoRepoConfig { .. } | PipelineError::InvalidRepoConfig { .. }))
            | Err(e @ PipelineError::UnknownJob { .. }) => {
                config_warnings.push(format!("base: {e}; every attribute of head counts as added"));
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let mut jobs = Vec::new();
        let mut only_in_head = Vec::new();
        for h in &head_sets {
            let base_id = match base_sets.iter().find(|b| b.key.job == h.key.job) {
                Some(b) => b.id,
                None => {
                    only_in_head.push(h.key.job.clone());
                    let key =
                        JobsetKey { repo: url.into(), commit: base_commit.into(), job: h.key.job.clone() };
                    let (jobsets, allow) = (self.jobsets.clone(), h.allow_eval_failures);
                    smol::unblock(move || jobsets.empty(&key, allow)).await?.id
                }
            };
            let (jobsets, h) = (self.jobsets.clone(), h.id);
            jobs.push(smol::unblock(move || diff(&jobsets, base_id, h)).await?);
        }
        self.explain_new_errors(url, head_commit, auth, Definitions::Own(job), &mut jobs, progress).await?;
        let only_in_base = base_sets
            .iter()
            .filter(|b| !head_sets.iter().any(|h| h.key.job == b.key.job))
            .map(|b| b.key.job.clone())
            .collect();
        Ok(DiffReport {
            repo: url.into(),
            base_commit: base_commit.into(),
            head_commit: head_commit.into(),
            jobs,
            only_in_base,
            only_in_head,
            config_warnings,
            summary_settings,
        })
    }

    /// The jobsets of `commit` for a diff against `head_sets`, without checking `commit` out, when every
    /// job of head (or `only`) is already evaluated at `commit` with `commit`'s own definition, and
    /// `commit` has no other job evaluated: the usual case of a base commit shared by many pull
    /// requests. A commit's own job definitions never change, so its jobsets stand for its configuration;
    /// that configuration's warnings were reported when it was evaluated. `None` (evaluate as usual)
    /// otherwise.
    async fn reuse_evaluated(
        &self,
        repo: &str,
        commit: &str,
        only: Option<&str>,
        head_sets: &[Jobset],
        progress: &ProgressSink,
    ) -> Result<Option<Vec<Jobset>>, PipelineError> {
        let stored = {
            let (jobsets, repo, commit) = (self.jobsets.clone(), repo.to_string(), commit.to_string());
            smol::unblock(move || jobsets.of_commit(&repo, &commit)).await?
        };
        let wanted: Vec<&str> = match only {
            Some(job) => vec![job],
            None => head_sets.iter().map(|h| h.key.job.as_str()).collect(),
        };
        let mut found = Vec::with_capacity(wanted.len());
        for name in &wanted {
            match stored.iter().find(|s| s.key.job == *name) {
                Some(s) if s.state == JobsetState::Evaluated => found.push(s.clone()),
                _ => return Ok(None),
            }
        }
        if only.is_none() && stored.len() != found.len() {
            return Ok(None);
        }
        // A jobset evaluated before the identity step existed has no aliases row: its step needs the
        // checkout, so the usual path takes it.
        let identified = {
            let (jobsets, ids) = (self.jobsets.clone(), found.iter().map(|s| s.id).collect::<Vec<_>>());
            smol::unblock(move || {
                for id in ids {
                    if jobsets.aliases(id)?.is_none() {
                        return Ok::<bool, StoreError>(false);
                    }
                }
                Ok(true)
            })
            .await?
        };
        if !identified {
            return Ok(None);
        }
        tracing::info!(
            repo,
            commit,
            jobs = found.len(),
            "reusing an evaluated commit without checking it out"
        );
        let mut sets = Vec::with_capacity(found.len());
        for s in found {
            let begin = {
                let (jobsets, key, allow) = (self.jobsets.clone(), s.key.clone(), s.allow_eval_failures);
                smol::unblock(move || jobsets.begin(&key, allow)).await?
            };
            // Gone meanwhile (retention): `begin` started it again, and the usual path evaluates it.
            let Begin::Existing(jobset) = begin else { return Ok(None) };
            self.repair_graph(&jobset.key, jobset.id, progress).await?;
            report_reused(progress, &jobset.key);
            sets.push(jobset);
        }
        Ok(Some(sets))
    }

    /// Evaluates every job (or `only`) of `repo` at `commit`, fetching with `auth` when given. With
    /// `with_attrs`, the report carries every attribute; otherwise only the jobset headers (the diff
    /// reads the store directly).
    pub async fn evaluate_commit(
        &self,
        repo: &str,
        commit: &str,
        only: Option<&str>,
        auth: Option<&GitAuth>,
        progress: &ProgressSink,
        with_attrs: bool,
    ) -> Result<(EvalReport, Vec<Jobset>), PipelineError> {
        self.check_out_and_evaluate(repo, commit, Definitions::Own(only), auth, progress, with_attrs).await
    }

    /// Checks `commit` of `repo` out (under a worktree slot), evaluates the jobs `definitions` selects in
    /// it, and removes the checkout.
    async fn check_out_and_evaluate(
        &self,
        repo: &str,
        commit: &str,
        definitions: Definitions<'_>,
        auth: Option<&GitAuth>,
        progress: &ProgressSink,
        with_attrs: bool,
    ) -> Result<(EvalReport, Vec<Jobset>), PipelineError> {
        report(progress, &format!("checking out {}", crate::text::short_sha(commit)), 0, 0);
        let _worktree_slot = self.worktree_slots.acquire().await;
        let worktree = self.checkout(repo, commit, auth).await?;
        let result = self.evaluate_worktree(repo, commit, &worktree, definitions, progress, with_attrs).await;
        release_worktree(worktree).await;
        result
    }

    /// Diffs commit `base` against commit `head` of the repository at `url`, evaluating both with the
    /// jobs of `gate` (a configuration the caller trusts: the base commit's for a pull request, see
    /// docs/security.md), not with each commit's own. Neither commit's own configuration decides what
    /// is evaluated; a side where a job's file or attribute is missing records that as the job's
    /// evaluation failure or errors. The report's change-summary settings are `gate`'s.
    pub async fn diff_with_config(
        &self,
        url: &str,
        base_commit: &str,
        head_commit: &str,
        gate: &RepoConfig,
        auth: Option<&GitAuth>,
        progress: &ProgressSink,
    ) -> Result<DiffReport, PipelineError> {
        // Base goes alongside head: checked out while head evaluates, evaluated (or its stored jobsets
        // reused) as soon as the evaluation slot is free. Head's failure drops base at once.
        let given = Definitions::Given(gate);
        let head = self.check_out_and_evaluate(url, head_commit, given, auth, progress, false);
        let base = async {
            Ok::<_, PipelineError>(
                self.check_out_and_evaluate(url, base_commit, given, auth, progress, false).await,
            )
        };
        let ((_, head_sets), base) = futures_lite::future::try_zip(head, base).await?;
        let base_sets = base?.1;
        let (head_sets, base_sets) = (&head_sets, &base_sets);
        let mut jobs = Vec::new();
        for (h, b) in head_sets.iter().zip(base_sets) {
            let (jobsets, base_id, head_id) = (self.jobsets.clone(), b.id, h.id);
            jobs.push(smol::unblock(move || diff(&jobsets, base_id, head_id)).await?);
        }
        self.explain_new_errors(url, head_commit, auth, Definitions::Given(gate), &mut jobs, progress)
            .await?;
        Ok(DiffReport {
            repo: url.into(),
            base_commit: base_commit.into(),
            head_commit: head_commit.into(),
            jobs,
            only_in_base: Vec::new(),
            only_in_head: Vec::new(),
            config_warnings: Vec::new(),
            summary_settings: crate::summary::Settings::from_repo(gate),
        })
    }

    /// The paths a change touches: what differs between commits `base` and `head` of `repo_url`, whose
    /// configurations (or evaluations) were read before, so both are in the mirror.
    pub async fn changed_paths(
        &self,
        repo_url: &str,
        base: &str,
        head: &str,
    ) -> Result<Vec<String>, PipelineError> {
        Ok(self.checkouts.changed_paths(repo_url, base, head).await?)
    }

    /// The repository configuration of `repo` at `commit` (checked out, read, validated, removed): the
    /// configuration, its file (relative to the repository) and its warnings.
    pub async fn repo_config(
        &self,
        repo: &str,
        commit: &str,
        auth: Option<&GitAuth>,
    ) -> Result<(RepoConfig, String, Vec<String>), PipelineError> {
        let _worktree_slot = self.worktree_slots.acquire().await;
        let worktree = self.checkout(repo, commit, auth).await?;
        let result = load_repo_config(&worktree, repo, commit, self.repo_limits()).await;
        release_worktree(worktree).await;
        result
    }

    async fn evaluate_worktree(
        &self,
        repo: &str,
        commit: &str,
        worktree: &Worktree,
        definitions: Definitions<'_>,
        progress: &ProgressSink,
        with_attrs: bool,
    ) -> Result<(EvalReport, Vec<Jobset>), PipelineError> {
        let own = load_repo_config(worktree, repo, commit, self.repo_limits()).await;
        let (config, file, warnings, selected, own_config) = match definitions {
            Definitions::Own(only) => {
                let (config, file, warnings) = own?;
                let selected: Vec<(String, JobConfig)> = select_jobs(&config, only, &file, commit)?
                    .into_iter()
                    .map(|(n, j)| (n, j.clone()))
                    .collect();
                (config, file, warnings, selected, None)
            }
            Definitions::Given(gate) => {
                // The commit's own configuration only decides whether a job's results may be shared
                // with evaluations of it (see `key_job`); a missing or invalid one changes nothing.
                let (own_config, file, warnings) = match own {
                    Ok((c, f, w)) => (Some(c), f, w),
                    Err(_) => (None, String::new(), Vec::new()),
                };
                let selected = gate.jobs.iter().map(|(n, j)| (n.clone(), j.clone())).collect();
                (gate.clone(), file, warnings, selected, own_config)
            }
        };
        let mut jobs = Vec::new();
        let mut headers = Vec::new();
        for (name, job) in &selected {
            let job_key = match definitions {
                Definitions::Own(_) => name.clone(),
                Definitions::Given(_) => key_job(name, job, own_config.as_ref()),
            };
            let key = JobsetKey { repo: repo.into(), commit: commit.into(), job: job_key };
            let (jobset, reused) = self.evaluate_job(&key, job, worktree.path(), progress).await?;
            let attrs = if with_attrs {
                let (jobsets, id) = (self.jobsets.clone(), jobset.id);
                let mut attrs = smol::unblock(move || {
                    let mut attrs = Vec::new();
                    jobsets.for_each_attr(id, |a, o| {
                        attrs.push((a.to_string(), o));
                        Ok(())
                    })?;
                    Ok::<_, StoreError>(attrs)
                })
                .await?;
                // The report lists every attribute: the first errors get Nix's message.
                let deferred: Vec<String> = attrs
                    .iter()
                    .filter(
                        |(_, o)| matches!(o, AttrOutcome::Error { message } if eval::is_deferred(message)),
                    )
                    .map(|(a, _)| a.clone())
                    .take(EXPLAINED_IN_EVAL_REPORT)
                    .collect();
                let messages = self.explain_errors(&jobset, job, worktree.path(), deferred, progress).await?;
                for (attr, outcome) in &mut attrs {
                    if let (AttrOutcome::Error { message }, Some(found)) =
                        (outcome, messages.get(attr.as_str()))
                    {
                        *message = found.clone();
                    }
                }
                attrs
            } else {
                Vec::new()
            };
            headers.push(jobset.clone());
            jobs.push(JobReport { jobset, reused, attrs });
        }
        let report = EvalReport {
            repo: repo.into(),
            commit: commit.into(),
            config_file: file,
            config_warnings: warnings,
            jobs,
            summary_settings: crate::summary::Settings::from_repo(&config),
        };
        Ok((report, headers))
    }

    /// Gives the evaluation errors new in head (those a diff, summary, review or check run shows) Nix's
    /// own message where the evaluation deferred it ([`eval::DEFERRED_ERROR`]): from the cache, or by
    /// checking `head` out again and explaining them ([`Pipeline::explain_errors`]).
    async fn explain_new_errors(
        &self,
        url: &str,
        head: &str,
        auth: Option<&GitAuth>,
        definitions: Definitions<'_>,
        jobs: &mut [JobDiff],
        progress: &ProgressSink,
    ) -> Result<(), PipelineError> {
        let deferred = |d: &JobDiff| -> Vec<String> {
            d.errors
                .iter()
                .filter(|e| e.is_new() && e.head_error.as_deref().is_some_and(eval::is_deferred))
                .map(|e| e.attr.clone())
                .collect()
        };
        // Messages found before (cached per jobset) need no checkout.
        for d in jobs.iter_mut() {
            let attrs = deferred(d);
            if attrs.is_empty() {
                continue;
            }
            let (jobsets, id) = (self.jobsets.clone(), d.head.id);
            let cached = smol::unblock(move || jobsets.error_messages(id, &attrs)).await?;
            set_head_errors(d, &cached);
        }
        if jobs.iter().all(|d| deferred(d).is_empty()) {
            return Ok(());
        }
        report(
            progress,
            &format!("checking out {} to explain new evaluation errors", crate::text::short_sha(head)),
            0,
            0,
        );
        let _worktree_slot = self.worktree_slots.acquire().await;
        let worktree = self.checkout(url, head, auth).await?;
        let result = async {
            let own = match definitions {
                Definitions::Own(_) => {
                    Some(load_repo_config(&worktree, url, head, self.repo_limits()).await?.0)
                }
                Definitions::Given(_) => None,
            };
            for d in jobs.iter_mut() {
                let attrs = deferred(d);
                let job = match (definitions, &own) {
                    (Definitions::Given(gate), _) => gate.jobs.get(&d.job),
                    (_, Some(config)) => config.jobs.get(&d.job),
                    _ => None,
                };
                let (Some(job), false) = (job, attrs.is_empty()) else { continue };
                let messages = self.explain_errors(&d.head, job, worktree.path(), attrs, progress).await?;
                set_head_errors(d, &messages);
            }
            Ok::<(), PipelineError>(())
        }
        .await;
        release_worktree(worktree).await;
        result
    }

    /// What job `job` evaluates, and the evaluation options for jobset `id` (its GC roots directory).
    fn eval_setup(&self, id: JobsetId, job: &JobConfig) -> (EvalSource, EvalOptions) {
        let source = match &job.source {
            JobSource::File { file, attr_path } => {
                EvalSource::File { file: file.clone(), attr_path: attr_path.clone() }
            }
            JobSource::Flake { attr_path } => EvalSource::Flake { attr_path: attr_path.clone() },
        };
        let mut opts = self.eval_options.clone();
        opts.gc_roots_dir = self.gc_roots.join(id.to_string());
        (source, opts)
    }

    /// Nix's messages for the deferred errors `attrs` of `jobset` (job `job`, checked out at `checkout`):
    /// cached ones from the store, the others found with [`eval::explain`] and cached. When explaining
    /// fails, the errors keep their deferred text (the failure is logged, the report still goes out).
    async fn explain_errors(
        &self,
        jobset: &Jobset,
        job: &JobConfig,
        checkout: &Path,
        attrs: Vec<String>,
        progress: &ProgressSink,
    ) -> Result<std::collections::BTreeMap<String, String>, PipelineError> {
        if attrs.is_empty() {
            return Ok(Default::default());
        }
        let id = jobset.id;
        let mut found = {
            let (jobsets, attrs) = (self.jobsets.clone(), attrs.clone());
            smol::unblock(move || jobsets.error_messages(id, &attrs)).await?
        };
        let missing: Vec<String> = attrs.into_iter().filter(|a| !found.contains_key(a)).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let stage = format!("explaining {} evaluation errors of {}", missing.len(), jobset.key.job_name());
        report(progress, &stage, 0, missing.len() as u64);
        let (source, opts) = self.eval_setup(id, job);
        let paths: Vec<Vec<String>> = missing.iter().map(|a| eval::attr_split(a)).collect();
        let messages = match eval::explain(checkout, &source, &opts, &paths).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(job = %jobset.key.job_name(), error = %e, "explaining evaluation errors failed");
                return Ok(found);
            }
        };
        let relative = CheckoutPaths::new(checkout);
        let explained: Vec<(String, String)> =
            missing.into_iter().zip(messages).map(|(a, m)| (a, relative.relativize(&m))).collect();
        report(progress, &stage, explained.len() as u64, explained.len() as u64);
        {
            let (jobsets, explained) = (self.jobsets.clone(), explained.clone());
            smol::unblock(move || jobsets.put_error_messages(id, &explained)).await?;
        }
        found.extend(explained);
        Ok(found)
    }

    /// Checks `commit` of `repo` out, retrying after host trouble.
    async fn checkout(
        &self,
        repo: &str,
        commit: &str,
        auth: Option<&GitAuth>,
    ) -> Result<Worktree, crate::checkout::CheckoutError> {
        let what = format!("{repo} @ {}", crate::text::short_sha(commit));
        retry_host_trouble("checkout", &what, || self.checkouts.checkout(repo, commit, auth)).await
    }

    /// Builds and stores the scan index of finished jobset `id` (its graph is stored) in the background,
    /// off the review's path: the web UI's filtered pages then read one row (`jobset_scans`). A failure
    /// is only logged; a page builds the index on demand.
    fn prepare_scan_index(&self, id: JobsetId) {
        let (jobsets, graph) = (self.jobsets.clone(), self.graph.clone());
        smol::spawn(smol::unblock(move || {
            if let Err(e) = jobsets.scan_index(id, &graph) {
                tracing::warn!(error = %e, jobset = %id, "building a jobset's scan index failed");
            }
        }))
        .detach();
    }

    /// Discovers the derivation graph of `roots`, discovering again (with backoff) while some roots
    /// failed because of host trouble (a `.drv` that could not be opened for lack of file descriptors):
    /// what was stored stays, so a retry reads only what is missing.
    async fn discover(&self, job: &str, roots: &[String]) -> Result<(), PipelineError> {
        let graph_error = |source| PipelineError::Graph { job: job.to_string(), source };
        for retry in 0..=HOST_RETRY_DELAYS.len() {
            let started = std::time::Instant::now();
            let stats = self.graph.discover(roots).await.map_err(graph_error)?;
            tracing::info!(
                job,
                roots = roots.len(),
                new = stats.new_nodes,
                known = stats.known_nodes,
                files = stats.files_read,
                read_ms = stats.read_time.as_millis() as u64,
                write_ms = stats.write_time.as_millis() as u64,
                total_ms = started.elapsed().as_millis() as u64,
                "derivation graph discovered"
            );
            let trouble = stats.failed.iter().find_map(|f| {
                host::transient_reason(f.error.as_ref()).map(|reason| (reason, f.error.to_string()))
            });
            let Some((reason, message)) = trouble else { return Ok(()) };
            if retry == HOST_RETRY_DELAYS.len() {
                return Err(PipelineError::HostTrouble {
                    stage: "reading the derivation graph",
                    reason,
                    retries: retry,
                    message,
                });
            }
            host_backoff("graph", job, reason, &message, retry).await;
        }
        Ok(())
    }

    /// Evaluates one job into its jobset (or reuses it), then discovers its derivation graph.
    async fn evaluate_job(
        &self,
        key: &JobsetKey,
        job: &JobConfig,
        checkout: &Path,
        progress: &ProgressSink,
    ) -> Result<(Jobset, bool), PipelineError> {
        let allow = job.allow_eval_failures;
        let flight = (key.clone(), allow);
        // One evaluation per jobset at a time: a second request waits for the running one and takes its
        // result; `begin` would otherwise reset the jobset the first is filling.
        let _in_flight = loop {
            let joined = {
                let mut map = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match map.get(&flight) {
                    Some(done) => Some(done.clone()),
                    None => {
                        let (tx, rx) = async_channel::bounded::<()>(1);
                        map.insert(flight.clone(), rx);
                        break InFlight { map: &self.in_flight, key: flight.clone(), _done: tx };
                    }
                }
            };
            if let Some(done) = joined {
                tracing::info!(job = %key.job_name(), commit = %key.commit, "joining the running evaluation of the same jobset");
                let _ = done.recv().await;
                let found = {
                    let (jobsets, key) = (self.jobsets.clone(), key.clone());
                    smol::unblock(move || jobsets.find(&key)).await?
                };
                // Finished (evaluated or failed as a whole): that is this request's result too. Still
                // evaluating means the first was cancelled: take over.
                if let Some(jobset) = found {
                    if jobset.state != JobsetState::Evaluating && jobset.allow_eval_failures == allow {
                        report_reused(progress, key);
                        return Ok((jobset, true));
                    }
                }
            }
        };
        let begin = {
            let (jobsets, key) = (self.jobsets.clone(), key.clone());
            smol::unblock(move || jobsets.begin(&key, allow)).await?
        };
        let id = match begin {
            Begin::Existing(jobset) => {
                self.repair_graph(key, jobset.id, progress).await?;
                self.identify_aliases(key, jobset.id, job, checkout, true).await?;
                report_reused(progress, key);
                return Ok((jobset, true));
            }
            Begin::New(id) => id,
        };
        tracing::info!(job = %key.job_name(), commit = %key.commit, jobset = %id, "evaluating a jobset");
        let stage = format!("evaluating {} @ {}", key.job, crate::text::short_sha(&key.commit));
        let slot = match self.slots.try_acquire() {
            Some(slot) => slot,
            None => {
                // Another evaluation runs (another request's, or the other side of this review).
                report(progress, &format!("waiting to start {stage} (another evaluation is running)"), 0, 0);
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let slot = self.slots.acquire().await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                slot
            }
        };
        report(progress, &stage, 0, 0);
        self.running.fetch_add(1, Ordering::Relaxed);
        let mut retry = 0;
        let outcome = loop {
            match self.run_evaluation(id, job, checkout, &stage, progress).await {
                Err(EvalFailure { message, host: Some(reason) }) => {
                    if retry == HOST_RETRY_DELAYS.len() {
                        // Nothing is recorded: the jobset stays unfinished, and the next request
                        // evaluates it again.
                        self.running.fetch_sub(1, Ordering::Relaxed);
                        return Err(PipelineError::HostTrouble {
                            stage: "evaluation",
                            reason,
                            retries: retry,
                            message,
                        });
                    }
                    host_backoff("evaluation", key.job_name(), reason, &message, retry).await;
                    retry += 1;
                }
                other => break other,
            }
        };
        self.running.fetch_sub(1, Ordering::Relaxed);
        drop(slot);

        let state = match outcome {
            Ok(()) => JobsetState::Evaluated,
            Err(EvalFailure { message, .. }) => JobsetState::Failed { message },
        };
        let jobset = {
            let jobsets = self.jobsets.clone();
            smol::unblock(move || jobsets.finish(id, state)).await?
        };
        if jobset.state == JobsetState::Evaluated {
            // The identity step (a Nix process) and the graph discovery (this process reading .drv
            // files) need nothing of each other: they run at once.
            report(
                progress,
                &format!(
                    "reading the derivation graph of {0} and finding the aliases nix-env does not list",
                    key.job
                ),
                0,
                0,
            );
            let aliases = async {
                self.identify_aliases(key, id, job, checkout, false).await.map_err(PipelineError::from)
            };
            let graph = async {
                let roots = self.roots_of(id).await?;
                self.discover(&key.job, &roots).await
            };
            futures_lite::future::try_zip(aliases, graph).await?;
            self.prepare_scan_index(id);
        }
        Ok((jobset, false))
    }

    /// Runs the evaluator and streams its records into jobset `id`. A failure of the whole job comes
    /// back as its message (recorded in the jobset unless it was host trouble, which is retried).
    async fn run_evaluation(
        &self,
        id: JobsetId,
        job: &JobConfig,
        checkout: &Path,
        stage: &str,
        progress: &ProgressSink,
    ) -> Result<(), EvalFailure> {
        let (source, mut opts) = self.eval_setup(id, job);
        // Nix's messages are found later, for the errors a report shows (`explain_errors`).
        opts.defer_error_messages = true;
        let paths = CheckoutPaths::new(checkout);
        let (tx, rx) = async_channel::bounded::<EvalEvent>(256);
        let evaluation = {
            let checkout = checkout.to_path_buf();
            async move { eval::evaluate(&checkout, &source, &opts, tx).await }
        };
        let consume = async {
            let mut writer = self.jobsets.writer(id);
            let (mut done, mut total) = (0u64, 0u64);
            let mut counts = None;
            let mut pending = Vec::new();
            while let Ok(event) = rx.recv().await {
                match event {
                    EvalEvent::Counts(c) => counts = Some(c),
                    EvalEvent::Listed { total: t } => total = t as u64,
                    EvalEvent::Progress { done: d, total: t } => (done, total) = (d as u64, t as u64),
                    EvalEvent::Record(record) => {
                        pending.push((record.attr, to_outcome(record.outcome, &paths)));
                        if pending.len() >= 500 {
                            writer = write_batch(writer, std::mem::take(&mut pending)).await?;
                        }
                    }
                }
                report_counts(progress, stage, done, total, counts);
            }
            write_batch(writer, pending).await.map(drop)
        };
        let (evaluated, stored) = futures_lite::future::zip(evaluation, consume).await;
        if let Err(e) = stored {
            let host = host::transient_reason(&e);
            return Err(EvalFailure { message: format!("storing evaluation results failed: {e}"), host });
        }
        evaluated.map(|_| ()).map_err(|e| EvalFailure {
            message: paths.relativize(&e.to_string()),
            host: host::transient_reason(&e),
        })
    }

    /// The identity step of jobset `id` (see `nix::eval_identity`): which of its derivation attributes
    /// nix-env does not list, stored in `jobset_aliases`. With `only_missing` (a reused jobset), nothing is
    /// done when the step already ran. A failure of the step is logged and nothing is stored: every
    /// attribute then counts as listed.
    async fn identify_aliases(
        &self,
        key: &JobsetKey,
        id: JobsetId,
        job: &JobConfig,
        checkout: &Path,
        only_missing: bool,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let jobsets = self.jobsets.clone();
        let groups = smol::unblock(move || {
            if only_missing && jobsets.aliases(id)?.is_some() {
                return Ok(None);
            }
            crate::jobset::aliases::groups_of(&jobsets, id).map(Some)
        })
        .await?;
        let Some(groups) = groups else { return Ok(()) };
        let (source, opts) = self.eval_setup(id, job);
        let what = format!("{} @ {}", key.job_name(), key.commit);
        let found = retry_host_trouble("identity", &what, || {
            crate::nix::eval_identity::find_hidden(checkout, &source, &opts, groups.clone())
        })
        .await;
        match found {
            Ok(found) => {
                let aliases = crate::jobset::aliases::JobsetAliases {
                    hidden: found.hidden,
                    groups: found.groups,
                    undecided: found.undecided,
                    duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                };
                tracing::info!(
                    job = %key.job_name(),
                    commit = %key.commit,
                    groups = aliases.groups,
                    hidden = aliases.hidden.len(),
                    undecided = aliases.undecided.len(),
                    ms = aliases.duration_ms,
                    "identity step: attributes nix-env does not list"
                );
                let jobsets = self.jobsets.clone();
                smol::unblock(move || jobsets.put_aliases(id, &aliases)).await
            }
            Err(e) => {
                tracing::warn!(job = %key.job_name(), commit = %key.commit, error = %e, "the identity step failed; every attribute counts as listed");
                Ok(())
            }
        }
    }

    /// Discovers the derivation graph of a reused jobset again when some of its roots are missing from
    /// the graph (the server stopped between storing the evaluation and storing its graph). Roots the
    /// graph knows end the walk at once, so a complete graph costs one lookup per root.
    async fn repair_graph(
        &self,
        key: &JobsetKey,
        id: JobsetId,
        progress: &ProgressSink,
    ) -> Result<(), PipelineError> {
        let roots = self.roots_of(id).await?;
        let known = {
            let (graph, roots) = (self.graph.clone(), roots.clone());
            smol::unblock(move || graph.ids_of(&roots)).await
        }
        .map_err(|e| PipelineError::Graph { job: key.job.clone(), source: e })?;
        let missing = known.iter().filter(|id| id.is_none()).count();
        if missing == 0 {
            return Ok(());
        }
        tracing::warn!(
            job = %key.job_name(),
            commit = %key.commit,
            jobset = %id,
            missing,
            "a reused jobset's derivation graph is incomplete (interrupted before it was stored); discovering it again"
        );
        report(progress, &format!("reading the derivation graph of {} again", key.job), 0, 0);
        self.discover(&key.job, &roots).await
    }

    async fn roots_of(&self, id: JobsetId) -> Result<Vec<String>, StoreError> {
        let jobsets = self.jobsets.clone();
        smol::unblock(move || {
            let mut roots = Vec::new();
            jobsets.for_each_attr(id, |_, o| {
                if let AttrOutcome::Drv(d) = o {
                    roots.push(d.drv_path);
                }
                Ok(())
            })?;
            Ok(roots)
        })
        .await
    }
}

/// Tells the progress line that `key`'s jobset was evaluated before and is reused as it is (no evaluation,
/// no graph discovery).
fn report_reused(progress: &ProgressSink, key: &JobsetKey) {
    let stage = format!("reusing {} @ {} (already evaluated)", key.job, crate::text::short_sha(&key.commit));
    report(progress, &stage, 0, 0);
}

/// Releases a worktree that was only read once its step is done: kept as a spare for the next checkout
/// of its repository, or removed; a failure is logged (the worktree is pruned at the next start).
async fn release_worktree(worktree: Worktree) {
    if let Err(e) = worktree.release().await {
        tracing::warn!(error = %e, "removing a worktree failed; it is pruned at the next start");
    }
}

/// Replaces the head messages of `d`'s errors with those found (by attribute).
fn set_head_errors(d: &mut JobDiff, messages: &std::collections::BTreeMap<String, String>) {
    for e in &mut d.errors {
        if let Some(found) = messages.get(&e.attr) {
            e.head_error = Some(found.clone());
        }
    }
}

/// Reads and validates the repository configuration in `worktree`.
async fn load_repo_config(
    worktree: &Worktree,
    repo: &str,
    commit: &str,
    limits: repo::RepoLimits,
) -> Result<(RepoConfig, String, Vec<String>), PipelineError> {
    let path = worktree.path().to_path_buf();
    match smol::unblock(move || repo::load_limited(&path, limits)).await {
        RepoConfigOutcome::Loaded { config, file, warnings } => {
            Ok((config, file.display().to_string(), warnings.iter().map(|w| w.to_string()).collect()))
        }
        RepoConfigOutcome::NotFound => {
            Err(PipelineError::NoRepoConfig { repo: repo.into(), commit: commit.into() })
        }
        RepoConfigOutcome::Invalid { file, errors, .. } => Err(PipelineError::InvalidRepoConfig {
            file: file.display().to_string(),
            commit: commit.into(),
            errors,
        }),
    }
}

async fn write_batch(
    mut writer: crate::jobset::AttrWriter,
    batch: Vec<(String, AttrOutcome)>,
) -> Result<crate::jobset::AttrWriter, StoreError> {
    smol::unblock(move || {
        for (attr, outcome) in batch {
            writer.push(attr, outcome)?;
        }
        writer.flush()?;
        Ok(writer)
    })
    .await
}

/// The private worktree a commit was evaluated in, as Nix may spell it in error messages.
struct CheckoutPaths {
    prefixes: Vec<String>,
}

impl CheckoutPaths {
    fn new(checkout: &Path) -> CheckoutPaths {
        let mut prefixes = vec![checkout.display().to_string()];
        if let Ok(canonical) = std::fs::canonicalize(checkout) {
            prefixes.push(canonical.display().to_string());
        }
        prefixes.retain(|p| p.len() > 1);
        prefixes.dedup();
        CheckoutPaths { prefixes }
    }

    /// Rewrites paths inside the worktree as repository-relative ones (`default.nix:3:5`), so messages
    /// neither reveal the server's directories nor differ between two evaluations of the same code.
    fn relativize(&self, message: &str) -> String {
        let mut out = message.to_string();
        for p in &self.prefixes {
            out = out.replace(&format!("{p}/"), "").replace(p.as_str(), ".");
        }
        out
    }
}

fn to_outcome(outcome: EvalOutcome, paths: &CheckoutPaths) -> AttrOutcome {
    match outcome {
        EvalOutcome::Error { message } => AttrOutcome::Error { message: paths.relativize(&message) },
        EvalOutcome::Derivation(d) => AttrOutcome::Drv(AttrDrv {
            drv_path: d.drv_path,
            name: d.name,
            system: d.system,
            outputs: d.outputs.into_iter().collect(),
            meta_json: d.meta.map(|m| m.to_string()),
            required_system_features: d.required_system_features,
        }),
    }
}

fn select_jobs<'c>(
    config: &'c RepoConfig,
    only: Option<&str>,
    file: &str,
    commit: &str,
) -> Result<Vec<(String, &'c JobConfig)>, PipelineError> {
    match only {
        None => Ok(config.jobs.iter().map(|(n, j)| (n.clone(), j)).collect()),
        Some(name) => match config.jobs.get(name) {
            Some(j) => Ok(vec![(name.to_string(), j)]),
            None => Err(PipelineError::UnknownJob {
                job: name.into(),
                file: file.into(),
                commit: commit.into(),
                defined: config.jobs.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        },
    }
}

/// Which job definitions an evaluation uses.
#[derive(Clone, Copy)]
enum Definitions<'a> {
    /// The commit's own configuration: every job, or only the one named.
    Own(Option<&'a str>),
    /// Another configuration's jobs (a trusted one: the base commit's for a pull request).
    Given(&'a RepoConfig),
}

/// The stored job key (see [`JobsetKey::job`]) of job `name` evaluated with definition `job` at a
/// commit whose own configuration is `own`: the bare name when the commit defines the job the same way
/// (what it evaluates and whether evaluation errors are allowed), else the name marked with a
/// fingerprint of the definition, so results of different definitions are never reused for each other.
fn key_job(name: &str, job: &JobConfig, own: Option<&RepoConfig>) -> String {
    let same = own
        .and_then(|c| c.jobs.get(name))
        .is_some_and(|o| o.source == job.source && o.allow_eval_failures == job.allow_eval_failures);
    if same {
        return name.to_string();
    }
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    // postcard cannot fail on these plain types; an empty encoding would still differ by the flag.
    hasher.update(postcard::to_allocvec(&job.source).unwrap_or_default());
    hasher.update([u8::from(job.allow_eval_failures)]);
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{name}{}{hex}", crate::jobset::DEFINITION_MARK)
}

/// How one Added or Changed attribute fared in a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Added, and it builds.
    AddedOk,
    /// Added, and it fails to build.
    AddedFailing,
    /// Built on base, fails on head.
    NewlyFailing,
    /// Failed on base, builds on head.
    NewlySucceeding,
    /// Fails on both sides.
    StillFailing,
    /// Builds on both sides.
    StillOk,
    /// Added, and not built (`ekaci review --no-build`).
    AddedNotBuilt,
    /// Changed, and not built on either side (`ekaci review --no-build`).
    ChangedNotBuilt,
}

impl Verdict {
    /// Whether this attribute fails the review.
    pub fn fails(self) -> bool {
        matches!(self, Verdict::AddedFailing | Verdict::NewlyFailing | Verdict::StillFailing)
    }
}

/// The state name and detail of an attribute a review did not build (`ekaci review --no-build`).
pub const NOT_BUILT_STATE: &str = "not-built";
/// See [`NOT_BUILT_STATE`].
pub const NOT_BUILT_DETAIL: &str = "not built (--no-build)";

/// A build result as the review reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResult {
    /// The state's short name: `success`, `cached`, `failure`, `transitive-failure`, `interrupted`, …
    pub state: String,
    pub ok: bool,
    /// Why it failed, when it did (Nix's message, the failed dependency, the interruption reason).
    pub detail: Option<String>,
}

impl BuildResult {
    /// The result of a derivation a review did not build: not ok, since nothing shows it builds.
    fn not_built() -> BuildResult {
        BuildResult { state: NOT_BUILT_STATE.into(), ok: false, detail: Some(NOT_BUILT_DETAIL.into()) }
    }

    fn from_state(state: Option<&DrvState>) -> BuildResult {
        match state {
            None => {
                BuildResult { state: "unknown".into(), ok: false, detail: Some("never scheduled".into()) }
            }
            Some(s) => {
                let detail = match s {
                    DrvState::Completed(Completion::Failure { message, .. }) => Some(message.clone()),
                    DrvState::TransitiveFailure { dependency } => {
                        Some(format!("dependency {dependency} failed"))
                    }
                    DrvState::Blocked { dependency } => {
                        Some(format!("dependency {dependency} was interrupted"))
                    }
                    DrvState::Interrupted { kind, reason } => Some(format!("{kind}: {reason}")),
                    _ => None,
                };
                BuildResult { state: s.name().to_string(), ok: s.is_done(), detail }
            }
        }
    }
}

/// One Added or Changed attribute of a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrReview {
    pub attr: String,
    pub name: String,
    pub verdict: Verdict,
    pub head_drv: String,
    pub head: BuildResult,
    /// The base side, for Changed attributes.
    pub base_drv: Option<String>,
    pub base: Option<BuildResult>,
    /// The last lines of head's build log when head failed to build (lossy UTF-8, bounded).
    pub log_tail: Option<String>,
}

/// The review of one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReview {
    pub diff: JobDiff,
    pub attrs: Vec<AttrReview>,
    /// Whether this job fails the review (see [`Pipeline::review_local`]).
    pub failed: bool,
}

/// The result of `ekaci review`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewReport {
    pub repo: String,
    pub base_commit: String,
    pub head_commit: String,
    pub jobs: Vec<JobReview>,
    pub only_in_base: Vec<String>,
    pub only_in_head: Vec<String>,
    pub config_warnings: Vec<String>,
    pub failed: bool,
    /// The change summary of every job (package changes, rebuild impact), when it could be computed.
    pub summary: Option<crate::summary::ChangeSummary>,
    /// `summary` rendered as markdown.
    pub summary_markdown: Option<String>,
    /// The head commit's checks (docs/checks.md), in name order; a failed check fails the review.
    pub checks: Vec<crate::checks::CheckReport>,
    /// True when nothing was built (`ekaci review --no-build`): every Added and Changed attribute is
    /// [`Verdict::AddedNotBuilt`] or [`Verdict::ChangedNotBuilt`], no check ran, no size was measured.
    /// Last, so that a client that predates it still decodes the report (postcard ignores trailing bytes).
    #[serde(default)]
    pub builds_skipped: bool,
}

impl ReviewReport {
    /// Puts the change summary (and its markdown) into the report, when there is one.
    fn set_summary(&mut self, summary: Option<(crate::summary::ChangeSummary, crate::summary::Rendered)>) {
        if let Some((summary, rendered)) = summary {
            self.summary = Some(summary);
            self.summary_markdown = Some(rendered.markdown);
        }
    }
}

impl Pipeline {
    /// Reviews `head` against `base` of a local repository: evaluates and diffs both, builds every Added
    /// and Changed attribute on head (and the base side of Changed ones, to tell newly failing from
    /// still failing; those are usually already built and come back Cached), and classifies each.
    ///
    /// A job fails the review when an Added or Changed attribute fails to build on head, when head
    /// introduces an evaluation error (unless the job has `allow_eval_failures`), or when head's
    /// evaluation fails as a whole. Evaluation errors head merely keeps from base are reported, not held
    /// against it.
    ///
    /// With `no_build` (`ekaci review --no-build`) nothing is built: evaluation (reusing an evaluated
    /// base as always), the diff and the change summary are the same, every Added and Changed attribute
    /// is reported as not built, and neither checks nor size checks run (both need builds). Such a
    /// review fails only on evaluation: new evaluation errors in head or a failed head evaluation.
    pub async fn review_local(
        &self,
        scheduler: &SchedulerHandle,
        repo_path: &Path,
        base: &str,
        head: &str,
        no_build: bool,
        progress: &ProgressSink,
    ) -> Result<ReviewReport, PipelineError> {
        let base_commit = crate::checkout::resolve_rev(repo_path, base).await?;
        let head_commit = crate::checkout::resolve_rev(repo_path, head).await?;
        let url = crate::checkout::local_url(repo_path);
        if no_build {
            let diff = self.diff_commits(&url, &base_commit, &head_commit, None, None, progress).await?;
            let summary = self.change_summary_or_log(&diff).await;
            let mut review = self.classify_review(None, diff).await;
            review.set_summary(summary);
            return Ok(review);
        }
        let owners = std::sync::Mutex::new(Vec::new());
        let mut review =
            self.review_commits(scheduler, &url, &base_commit, &head_commit, None, &owners, progress).await?;
        // A local review trusts the head commit (docs/repository-config.md): its own checks run.
        let (config, _, _) = self.repo_config(&url, &head_commit, None).await?;
        self.review_sizes(&config, &mut review).await;
        review.checks =
            self.run_checks(scheduler, &url, &head_commit, &config, None, &owners, progress).await?;
        review.failed |= review.checks.iter().any(|c| !c.passed());
        Ok(review)
    }

    /// The size checks of a local review: every job with a `size_check` is measured against the base
    /// commit itself (a local review has no branch), recorded, and put into the review's change summary,
    /// which is rendered again. A measurement that fails is logged and left out; sizes never fail a review.
    async fn review_sizes(&self, config: &RepoConfig, review: &mut ReviewReport) {
        let mut measured = Vec::new();
        for job in &review.jobs {
            let Some(check) = config.jobs.get(&job.diff.job).and_then(|j| j.size_check.as_ref()) else {
                continue;
            };
            let sizing = crate::sizes::JobSizing {
                repo: &review.repo,
                base_commit: &review.base_commit,
                head_commit: &review.head_commit,
                base_is_tip_of: None,
                baseline_branch: None,
                max_increase_percent: check.max_increase_percent,
            };
            match crate::sizes::measure_job(&self.jobsets, job, &sizing).await {
                Ok(s) => measured.push(s),
                Err(e) => tracing::warn!(job = %job.diff.job, error = %e, "measuring output sizes failed"),
            }
        }
        if let (Some(summary), false) = (review.summary.as_mut(), measured.is_empty()) {
            review.summary_markdown = Some(crate::summary::sizes::rerender(summary, measured).markdown);
        }
    }

    /// Reviews commit `head` against commit `base` of the repository at `url` (see
    /// [`Pipeline::review_local`]). Every build owner requested is pushed to `owners` as soon as it is
    /// requested, so a caller that abandons the review can cancel exactly those builds.
    #[allow(clippy::too_many_arguments)]
    pub async fn review_commits(
        &self,
        scheduler: &SchedulerHandle,
        url: &str,
        base: &str,
        head: &str,
        auth: Option<&GitAuth>,
        requested: &std::sync::Mutex<Vec<JobsetId>>,
        progress: &ProgressSink,
    ) -> Result<ReviewReport, PipelineError> {
        let diff = self.diff_commits(url, base, head, None, auth, progress).await?;
        let summary = self.change_summary_or_log(&diff).await;
        let mut review = self.build_review(scheduler, diff, requested, progress).await?;
        review.set_summary(summary);
        Ok(review)
    }

    /// [`Pipeline::change_summary`], or `None` (logged) when it cannot be computed: a review goes on
    /// without it.
    async fn change_summary_or_log(
        &self,
        diff: &DiffReport,
    ) -> Option<(crate::summary::ChangeSummary, crate::summary::Rendered)> {
        match self.change_summary(diff).await {
            Ok(summary) => Some(summary),
            Err(e) => {
                tracing::warn!(error = %e, "computing the change summary failed");
                None
            }
        }
    }

    /// The change summary of every job of `diff` (cached per job), and its markdown.
    pub async fn change_summary(
        &self,
        diff: &DiffReport,
    ) -> Result<(crate::summary::ChangeSummary, crate::summary::Rendered), crate::summary::SummaryError> {
        let (jobsets, graph) = (self.jobsets.clone(), self.graph.clone());
        let pairs: Vec<(JobsetId, JobsetId)> = diff.jobs.iter().map(|j| (j.base.id, j.head.id)).collect();
        let (repo, base_sha, head_sha) =
            (diff.repo.clone(), diff.base_commit.clone(), diff.head_commit.clone());
        let settings = diff.summary_settings.clone();
        smol::unblock(move || {
            let store = jobsets.store().clone();
            let mut jobs = Vec::new();
            for (b, h) in pairs {
                jobs.push(crate::summary::summarize_job(&store, &jobsets, &graph, b, h, &settings)?);
            }
            let mut summary =
                crate::summary::ChangeSummary { repo, base_sha, head_sha, jobs, sizes: Vec::new() };
            // What earlier size checks of the same change measured (none before the first builds).
            crate::summary::sizes::attach(&store, &mut summary)?;
            let rendered = crate::summary::render(&summary, &settings);
            Ok((summary, rendered))
        })
        .await
    }

    /// The build half of a review: builds what `diff` says must be built and classifies each Added
    /// and Changed attribute (see [`Pipeline::review_local`]).
    pub async fn build_review(
        &self,
        scheduler: &SchedulerHandle,
        diff: DiffReport,
        requested: &std::sync::Mutex<Vec<JobsetId>>,
        progress: &ProgressSink,
    ) -> Result<ReviewReport, PipelineError> {
        let mut owners = Vec::new();
        for job in &diff.jobs {
            let head_roots: Vec<String> = job.to_build().filter_map(|c| c.head_drv.clone()).collect();
            let base_roots: Vec<String> = job.changed.iter().filter_map(|c| c.base_drv.clone()).collect();
            for (jobset, roots) in [(job.head.id, head_roots), (job.base.id, base_roots)] {
                if !roots.is_empty() {
                    requested.lock().unwrap_or_else(|e| e.into_inner()).push(jobset);
                    scheduler.request(jobset, roots).await?;
                    owners.push(Owner::Jobset(jobset));
                }
            }
        }
        let mut states: std::collections::HashMap<String, DrvState> = std::collections::HashMap::new();
        for owner in owners {
            let outcome = self.wait_with_progress(scheduler, owner, progress).await?;
            for root in outcome.roots {
                if let Some(state) = root.state {
                    states.insert(root.drv, state);
                }
            }
        }
        Ok(self.classify_review(Some((scheduler, &states)), diff).await)
    }

    /// Classifies each Added and Changed attribute of `diff` by the build `states` (with the scheduler
    /// for failed builds' log tails), or as not built when `built` is `None`, and decides which jobs
    /// fail the review (see [`Pipeline::review_local`]).
    async fn classify_review(
        &self,
        built: Option<(&SchedulerHandle, &std::collections::HashMap<String, DrvState>)>,
        diff: DiffReport,
    ) -> ReviewReport {
        let mut jobs = Vec::new();
        for job in diff.jobs {
            let mut attrs = Vec::new();
            for change in job.to_build() {
                let Some(head_drv) = change.head_drv.clone() else { continue };
                let Some((scheduler, states)) = built else {
                    let (verdict, base) = match change.base_drv {
                        None => (Verdict::AddedNotBuilt, None),
                        Some(_) => (Verdict::ChangedNotBuilt, Some(BuildResult::not_built())),
                    };
                    attrs.push(AttrReview {
                        attr: change.attr.clone(),
                        name: change.name.clone(),
                        verdict,
                        head_drv,
                        head: BuildResult::not_built(),
                        base_drv: change.base_drv.clone(),
                        base,
                        log_tail: None,
                    });
                    continue;
                };
                let head_result = BuildResult::from_state(states.get(&head_drv));
                let base_result = change.base_drv.as_ref().map(|b| BuildResult::from_state(states.get(b)));
                let verdict = match (&base_result, head_result.ok) {
                    (None, true) => Verdict::AddedOk,
                    (None, false) => Verdict::AddedFailing,
                    (Some(b), true) if b.ok => Verdict::StillOk,
                    (Some(_), true) => Verdict::NewlySucceeding,
                    (Some(b), false) if b.ok => Verdict::NewlyFailing,
                    (Some(_), false) => Verdict::StillFailing,
                };
                let log_tail = if head_result.ok { None } else { self.log_tail(scheduler, &head_drv).await };
                attrs.push(AttrReview {
                    attr: change.attr.clone(),
                    name: change.name.clone(),
                    verdict,
                    head_drv,
                    head: head_result,
                    base_drv: change.base_drv.clone(),
                    base: base_result,
                    log_tail,
                });
            }
            let new_eval_errors = job.errors.iter().any(|e| e.is_new()) && !job.head.allow_eval_failures;
            let head_eval_failed = matches!(job.head.state, JobsetState::Failed { .. });
            let failed = attrs.iter().any(|a| a.verdict.fails()) || new_eval_errors || head_eval_failed;
            jobs.push(JobReview { diff: job, attrs, failed });
        }
        let failed = jobs.iter().any(|j| j.failed);
        ReviewReport {
            repo: diff.repo,
            base_commit: diff.base_commit,
            head_commit: diff.head_commit,
            jobs,
            only_in_base: diff.only_in_base,
            only_in_head: diff.only_in_head,
            config_warnings: diff.config_warnings,
            failed,
            summary: None,
            summary_markdown: None,
            checks: Vec::new(),
            builds_skipped: built.is_none(),
        }
    }

    /// Runs the checks of `config` on `commit` of `url` (docs/checks.md): finds each check's shell
    /// derivation with the sealed evaluator ([`shell_job`]), builds it through the scheduler under the
    /// shell's jobset (pushed to `requested`, so cancelling the caller's builds cancels it too), waits for
    /// a worker slot of the scheduler, and runs the command in the sandbox on a copy of the checkout.
    /// A check whose shell cannot be found or built is reported, not an error.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_checks(
        &self,
        scheduler: &SchedulerHandle,
        url: &str,
        commit: &str,
        config: &RepoConfig,
        auth: Option<&GitAuth>,
        requested: &std::sync::Mutex<Vec<JobsetId>>,
        progress: &ProgressSink,
    ) -> Result<Vec<crate::checks::CheckReport>, PipelineError> {
        if config.checks.is_empty() {
            return Ok(Vec::new());
        }
        let _worktree_slot = self.worktree_slots.acquire().await;
        let worktree = self.checkout(url, commit, auth).await?;
        let result = self.run_checks_in(scheduler, url, commit, config, &worktree, requested, progress).await;
        if let Err(e) = worktree.remove().await {
            tracing::warn!(error = %e, "removing a worktree failed; it is pruned at the next start");
        }
        let reports = result?;
        let limits = self.check_limits();
        // Results that ran now are stored; a reused one is already there.
        let rows: Vec<(crate::checks::CheckReport, String)> = reports
            .iter()
            .filter(|(_, reused)| !reused)
            .filter_map(|(r, _)| {
                let check = config.checks.get(&r.name)?;
                Some((r.clone(), crate::checks::config_hash(check, &limits)))
            })
            .collect();
        let (store, url, commit) = (self.jobsets.store().clone(), url.to_string(), commit.to_string());
        smol::unblock(move || {
            rows.iter().try_for_each(|(r, h)| crate::checks::results::put(&store, &url, &commit, r, h))
        })
        .await?;
        Ok(reports.into_iter().map(|(r, _)| r).collect())
    }

    /// The stored result of check `name` of `url` at `commit` when it already ran with this configuration
    /// and these limits (`checks::results::finished`): a restarted run reports it instead of running the
    /// check again.
    pub async fn finished_check(
        &self,
        url: &str,
        commit: &str,
        name: &str,
        check: &crate::config::repo::CheckConfig,
    ) -> Result<Option<crate::checks::CheckReport>, PipelineError> {
        let hash = crate::checks::config_hash(check, &self.check_limits());
        let (store, url, commit, name) =
            (self.jobsets.store().clone(), url.to_string(), commit.to_string(), name.to_string());
        Ok(smol::unblock(move || crate::checks::results::finished(&store, &url, &commit, &name, &hash))
            .await?)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_checks_in(
        &self,
        scheduler: &SchedulerHandle,
        url: &str,
        commit: &str,
        config: &RepoConfig,
        worktree: &Worktree,
        requested: &std::sync::Mutex<Vec<JobsetId>>,
        progress: &ProgressSink,
    ) -> Result<Vec<(crate::checks::CheckReport, bool)>, PipelineError> {
        use crate::checks::{CheckOutcome, CheckReport};
        let flake = worktree.path().join("flake.nix").is_file();
        let system = crate::scheduler::builders::native_system();
        let limits = self.check_limits();
        let total = config.checks.len() as u64;
        let mut reports = Vec::new();
        for (done, (name, check)) in config.checks.iter().enumerate() {
            if let Some(finished) = self.finished_check(url, commit, name, check).await? {
                report(progress, &format!("check {name}: already ran at this commit"), done as u64, total);
                reports.push((finished, true));
                continue;
            }
            report(progress, &format!("check {name}: finding its shell"), done as u64, total);
            let no_shell = |message: String| CheckReport {
                name: name.clone(),
                shell: check.shell.clone(),
                shell_drv: None,
                outcome: CheckOutcome::NoShell { message },
                tail: String::new(),
                output_file: None,
            };
            let (job, leaf) = shell_job(&check.shell, flake, &system);
            let key = JobsetKey {
                repo: url.into(),
                commit: commit.into(),
                job: key_job("check-shell", &job, None),
            };
            let (jobset, _) = self.evaluate_job(&key, &job, worktree.path(), progress).await?;
            if let JobsetState::Failed { message } = &jobset.state {
                reports.push((no_shell(format!("evaluating the shell failed: {message}")), false));
                continue;
            }
            let found = {
                let (jobsets, id, leaf) = (self.jobsets.clone(), jobset.id, leaf.clone());
                smol::unblock(move || {
                    let mut found = None;
                    jobsets.for_each_attr(id, |a, o| {
                        if a == leaf {
                            found = Some(o);
                        }
                        Ok(())
                    })?;
                    Ok::<_, StoreError>(found)
                })
                .await?
            };
            let drv = match found {
                Some(AttrOutcome::Drv(d)) => d.drv_path,
                Some(AttrOutcome::Error { message }) => {
                    reports
                        .push((no_shell(format!("evaluating `{}` failed: {message}", check.shell)), false));
                    continue;
                }
                None => {
                    let place = if flake { "the flake's outputs" } else { "shell.nix" };
                    reports
                        .push((no_shell(format!("`{}` is not a derivation in {place}", check.shell)), false));
                    continue;
                }
            };
            report(progress, &format!("check {name}: building its shell"), done as u64, total);
            requested.lock().unwrap_or_else(|e| e.into_inner()).push(jobset.id);
            scheduler.request(jobset.id, vec![drv.clone()]).await?;
            let outcome = self.wait_with_progress(scheduler, Owner::Jobset(jobset.id), progress).await?;
            let state = outcome.roots.iter().find(|r| r.drv == drv).and_then(|r| r.state.clone());
            if !state.as_ref().is_some_and(DrvState::is_done) {
                let result = BuildResult::from_state(state.as_ref());
                let detail = result.detail.map(|d| format!(": {d}")).unwrap_or_default();
                let message = format!("the shell derivation did not build ({}){detail}", result.state);
                reports.push((CheckReport { shell_drv: Some(drv.clone()), ..no_shell(message) }, false));
                continue;
            }
            report(progress, &format!("check {name}: waiting for a worker slot"), done as u64, total);
            let slot = scheduler.check_slot(Owner::Jobset(jobset.id)).await?;
            report(progress, &format!("check {name}: running"), done as u64, total);
            let scratch = self.checks_dir.join(format!(
                "{}-{}",
                std::process::id(),
                CHECK_SCRATCH.fetch_add(1, Ordering::Relaxed)
            ));
            let output = crate::checks::output_path(&self.logs_dir, url, commit, name);
            let run =
                crate::checks::run_check(name, check, &drv, worktree.path(), &scratch, &output, &limits);
            let cancelled = async {
                slot.cancelled().await;
                None
            };
            match futures_lite::future::or(async { Some(run.await) }, cancelled).await {
                Some(r) => reports.push((r, false)),
                None => {
                    return Err(PipelineError::Scheduler(crate::scheduler::SchedulerError::Cancelled {
                        owner: Owner::Jobset(jobset.id),
                    }));
                }
            }
            drop(slot);
        }
        Ok(reports)
    }

    /// The last [`LOG_TAIL_LINES`] lines of the latest attempt's log of `drv`, if it has one.
    async fn log_tail(&self, scheduler: &SchedulerHandle, drv: &str) -> Option<String> {
        let attempt = scheduler.state(drv).await.ok().flatten()?.attempt;
        let path = crate::nix::build::log_path(&self.logs_dir, drv, attempt).ok()?;
        smol::unblock(move || tail_lines(&path, LOG_TAIL_LINES, LOG_TAIL_BYTES)).await
    }

    /// Waits for `owner`'s builds, reporting the remaining queue once a second.
    pub async fn wait_with_progress(
        &self,
        scheduler: &SchedulerHandle,
        owner: Owner,
        progress: &ProgressSink,
    ) -> Result<OwnerOutcome, PipelineError> {
        let mut waiting = std::pin::pin!(scheduler.wait(owner));
        loop {
            let tick = async {
                smol::Timer::after(std::time::Duration::from_secs(1)).await;
                None
            };
            match futures_lite::future::or(async { Some((&mut waiting).await) }, tick).await {
                Some(outcome) => return Ok(outcome?),
                None => {
                    let depths = scheduler.depths().await?;
                    let remaining: usize = depths.iter().map(|d| d.queued + d.buildable + d.building).sum();
                    let building: usize = depths.iter().map(|d| d.building).sum();
                    report(
                        progress,
                        &format!("building: {building} running, {remaining} not finished"),
                        0,
                        0,
                    );
                }
            }
        }
    }
}

/// Numbers the scratch directories of the checks this process runs.
static CHECK_SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Where a check's `shell` is looked up (docs/checks.md): the job that evaluates the attribute set
/// holding it, and the attribute's name in that set. With a `flake.nix`, `shell` is a flake output
/// path (`devShells.x86_64-linux.lint`), and a single name (`lint`) means `devShells.<system>.<name>`
/// for the server's system; without one, `shell` is an attribute path into what `shell.nix` evaluates
/// to (an attribute set, or a function called with its defaults).
fn shell_job(shell: &str, flake: bool, system: &str) -> (JobConfig, String) {
    let mut path: Vec<String> = shell.split('.').map(str::to_string).collect();
    if flake && path.len() == 1 {
        path.splice(0..0, ["devShells".to_string(), system.to_string()]);
    }
    let leaf = path.pop().unwrap_or_default();
    let source = if flake {
        JobSource::Flake { attr_path: path }
    } else {
        JobSource::File { file: PathBuf::from("shell.nix"), attr_path: path }
    };
    (JobConfig { source, allow_eval_failures: true, caches: Vec::new(), size_check: None }, leaf)
}

/// How much of a failed build's log a review shows.
const LOG_TAIL_LINES: usize = 25;
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of the file at `path`, reading at most its last `max_bytes` bytes.
fn tail_lines(path: &Path, lines: usize, max_bytes: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(max_bytes))).ok()?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    (!tail.trim().is_empty()).then_some(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(file: &str, allow: bool) -> JobConfig {
        JobConfig {
            source: JobSource::File { file: file.into(), attr_path: Vec::new() },
            allow_eval_failures: allow,
            caches: Vec::new(),
            size_check: None,
        }
    }

    #[test]
    fn a_job_is_keyed_by_its_name_only_with_its_commits_own_definition() {
        let mut own = RepoConfig::default();
        own.jobs.insert("main".into(), job("default.nix", false));
        assert_eq!(key_job("main", &job("default.nix", false), Some(&own)), "main");
        let other_file = key_job("main", &job("hide.nix", false), Some(&own));
        let allowed = key_job("main", &job("default.nix", true), Some(&own));
        let no_config = key_job("main", &job("default.nix", false), None);
        for marked in [&other_file, &allowed, &no_config] {
            assert!(
                marked.starts_with("main\u{1f}") && marked.len() == "main\u{1f}".len() + 16,
                "{marked:?}"
            );
            assert_eq!(crate::jobset::job_name(marked), "main");
        }
        assert_ne!(other_file, allowed, "the fingerprint covers the definition");
        assert_eq!(no_config, key_job("main", &job("default.nix", false), Some(&RepoConfig::default())));
        assert_eq!(
            key_job("extra", &job("hide.nix", false), Some(&own)),
            other_file.replace("main", "extra")
        );
    }
}
