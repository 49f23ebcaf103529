//! The review pipeline: from a repository and a revision to stored jobsets, their derivation graph, and
//! base-vs-head diffs.
//!
//! For one commit it resolves the revision, checks the commit out into a private worktree, reads the
//! untrusted `.eka-ci/config.json`, evaluates each job (reusing a jobset already evaluated for the same
//! repository, commit and job), streams the records into the store, discovers the jobset's derivation
//! graph, and removes the worktree. Evaluations are limited to a few at a time; requests beyond that
//! wait in a queue whose depth `ekaci status` reports. This module decides the order of those steps; it
//! must never parse Nix output or talk git itself (the `nix` and `checkout` modules do).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkout::{Checkouts, Worktree};
use crate::config::repo::{self, JobConfig, JobSource, RepoConfig, RepoConfigOutcome};
use crate::control::Progress;
use crate::graph::Graph;
use crate::jobset::diff::{diff, JobDiff};
use crate::jobset::{AttrDrv, AttrOutcome, Begin, Jobset, JobsetKey, JobsetState, Jobsets};
use crate::nix::eval::{self, EvalEvent, EvalOptions, EvalOutcome, EvalSource};
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
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where progress goes: a channel to the control connection that asked, if any.
pub type ProgressSink = Option<async_channel::Sender<Progress>>;

fn report(progress: &ProgressSink, stage: &str, done: u64, total: u64) {
    if let Some(tx) = progress {
        // Progress is advisory: when the client reads slowly, drop it.
        let _ = tx.try_send(Progress { stage: stage.to_string(), done, total });
    }
}

/// The pipeline's shared state.
pub struct Pipeline {
    jobsets: Jobsets,
    checkouts: Checkouts,
    graph: Graph,
    eval_options: EvalOptions,
    gc_roots: PathBuf,
    slots: smol::lock::Semaphore,
    waiting: AtomicU64,
    running: AtomicU64,
}

impl Pipeline {
    pub fn new(
        jobsets: Jobsets,
        checkouts: Checkouts,
        graph: Graph,
        eval_options: EvalOptions,
        data_dir: &Path,
        concurrent_evaluations: usize,
    ) -> Arc<Pipeline> {
        Arc::new(Pipeline {
            jobsets,
            checkouts,
            graph,
            eval_options,
            gc_roots: data_dir.join("gcroots"),
            slots: smol::lock::Semaphore::new(concurrent_evaluations.max(1)),
            waiting: AtomicU64::new(0),
            running: AtomicU64::new(0),
        })
    }

    /// Evaluations waiting for a slot, and running.
    pub fn depths(&self) -> (u64, u64) {
        (self.waiting.load(Ordering::Relaxed), self.running.load(Ordering::Relaxed))
    }

    pub fn jobsets(&self) -> &Jobsets {
        &self.jobsets
    }

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
        self.evaluate_commit(&url, &commit, job, progress, true).await
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
        let (base_report, base_sets) = self.evaluate_commit(&url, &base_commit, job, progress, false).await?;
        let (head_report, head_sets) = self.evaluate_commit(&url, &head_commit, job, progress, false).await?;
        let mut jobs = Vec::new();
        let mut only_in_head = Vec::new();
        for h in &head_sets {
            match base_sets.iter().find(|b| b.key.job == h.key.job) {
                Some(b) => {
                    let (jobsets, b, h) = (self.jobsets.clone(), b.id, h.id);
                    jobs.push(smol::unblock(move || diff(&jobsets, b, h)).await?);
                }
                None => only_in_head.push(h.key.job.clone()),
            }
        }
        let only_in_base = base_sets
            .iter()
            .filter(|b| !head_sets.iter().any(|h| h.key.job == b.key.job))
            .map(|b| b.key.job.clone())
            .collect();
        let mut config_warnings = base_report.config_warnings;
        config_warnings.extend(head_report.config_warnings.into_iter().map(|w| format!("head: {w}")));
        Ok(DiffReport {
            repo: url,
            base_commit,
            head_commit,
            jobs,
            only_in_base,
            only_in_head,
            config_warnings,
        })
    }

    /// Evaluates every job (or `only`) of `repo` at `commit`. With `with_attrs`, the report carries every
    /// attribute; otherwise only the jobset headers (the diff reads the store directly).
    pub async fn evaluate_commit(
        &self,
        repo: &str,
        commit: &str,
        only: Option<&str>,
        progress: &ProgressSink,
        with_attrs: bool,
    ) -> Result<(EvalReport, Vec<Jobset>), PipelineError> {
        let short = &commit[..commit.len().min(12)];
        report(progress, &format!("checking out {short}"), 0, 0);
        let worktree = self.checkouts.checkout(repo, commit, None).await?;
        let result = self.evaluate_worktree(repo, commit, &worktree, only, progress, with_attrs).await;
        if let Err(e) = worktree.remove().await {
            tracing::warn!(error = %e, "removing a worktree failed; it is pruned at the next start");
        }
        result
    }

    async fn evaluate_worktree(
        &self,
        repo: &str,
        commit: &str,
        worktree: &Worktree,
        only: Option<&str>,
        progress: &ProgressSink,
        with_attrs: bool,
    ) -> Result<(EvalReport, Vec<Jobset>), PipelineError> {
        let path = worktree.path().to_path_buf();
        let (config, file, warnings) = match smol::unblock(move || repo::load(&path)).await {
            RepoConfigOutcome::Loaded { config, file, warnings } => (config, file, warnings),
            RepoConfigOutcome::NotFound => {
                return Err(PipelineError::NoRepoConfig { repo: repo.into(), commit: commit.into() })
            }
            RepoConfigOutcome::Invalid { file, errors, .. } => {
                return Err(PipelineError::InvalidRepoConfig {
                    file: file.display().to_string(),
                    commit: commit.into(),
                    errors,
                })
            }
        };
        let file = file.display().to_string();
        let selected = select_jobs(&config, only, &file, commit)?;
        let mut jobs = Vec::new();
        let mut headers = Vec::new();
        for (name, job) in selected {
            let key = JobsetKey { repo: repo.into(), commit: commit.into(), job: name.clone() };
            let (jobset, reused) = self.evaluate_job(&key, job, worktree.path(), progress).await?;
            let attrs = if with_attrs {
                let (jobsets, id) = (self.jobsets.clone(), jobset.id);
                smol::unblock(move || {
                    let mut attrs = Vec::new();
                    jobsets.for_each_attr(id, |a, o| {
                        attrs.push((a.to_string(), o));
                        Ok(())
                    })?;
                    Ok::<_, StoreError>(attrs)
                })
                .await?
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
            config_warnings: warnings.iter().map(|w| w.to_string()).collect(),
            jobs,
        };
        Ok((report, headers))
    }

    /// Evaluates one job into its jobset (or reuses it), then discovers its derivation graph.
    async fn evaluate_job(
        &self,
        key: &JobsetKey,
        job: &JobConfig,
        checkout: &Path,
        progress: &ProgressSink,
    ) -> Result<(Jobset, bool), PipelineError> {
        let begin = {
            let (jobsets, key, allow) = (self.jobsets.clone(), key.clone(), job.allow_eval_failures);
            smol::unblock(move || jobsets.begin(&key, allow)).await?
        };
        let id = match begin {
            Begin::Existing(jobset) => return Ok((jobset, true)),
            Begin::New(id) => id,
        };
        let stage = format!("evaluating {} @ {}", key.job, &key.commit[..key.commit.len().min(12)]);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let slot = self.slots.acquire().await;
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::Relaxed);
        let outcome = self.run_evaluation(id, job, checkout, &stage, progress).await;
        self.running.fetch_sub(1, Ordering::Relaxed);
        drop(slot);

        let state = match outcome {
            Ok(()) => JobsetState::Evaluated,
            Err(message) => JobsetState::Failed { message },
        };
        let jobset = {
            let jobsets = self.jobsets.clone();
            smol::unblock(move || jobsets.finish(id, state)).await?
        };
        if jobset.state == JobsetState::Evaluated {
            report(progress, &format!("reading the derivation graph of {}", key.job), 0, 0);
            let roots = self.roots_of(id).await?;
            self.graph
                .discover(&roots)
                .await
                .map_err(|e| PipelineError::Graph { job: key.job.clone(), source: e })?;
        }
        Ok((jobset, false))
    }

    /// Runs the evaluator and streams its records into jobset `id`. A failure of the whole job comes
    /// back as its message (it is recorded in the jobset, not returned as an error).
    async fn run_evaluation(
        &self,
        id: u64,
        job: &JobConfig,
        checkout: &Path,
        stage: &str,
        progress: &ProgressSink,
    ) -> Result<(), String> {
        let source = match &job.source {
            JobSource::File { file, attr_path } => EvalSource::File { file: file.clone(), attr_path: attr_path.clone() },
            JobSource::Flake { attr_path } => EvalSource::Flake { attr_path: attr_path.clone() },
        };
        let mut opts = self.eval_options.clone();
        opts.gc_roots_dir = self.gc_roots.join(id.to_string());
        let paths = CheckoutPaths::new(checkout);
        let (tx, rx) = async_channel::bounded::<EvalEvent>(256);
        let evaluation = {
            let checkout = checkout.to_path_buf();
            async move { eval::evaluate(&checkout, &source, &opts, tx).await }
        };
        let consume = async {
            let mut writer = self.jobsets.writer(id);
            let (mut done, mut total) = (0u64, 0u64);
            let mut pending = Vec::new();
            while let Ok(event) = rx.recv().await {
                match event {
                    EvalEvent::Listed { total: t } => total = t as u64,
                    EvalEvent::Progress { done: d, total: t } => (done, total) = (d as u64, t as u64),
                    EvalEvent::Record(record) => {
                        pending.push((record.attr, to_outcome(record.outcome, &paths)));
                        if pending.len() >= 500 {
                            writer = write_batch(writer, std::mem::take(&mut pending)).await?;
                        }
                    }
                }
                report(progress, stage, done, total);
            }
            write_batch(writer, pending).await.map(drop)
        };
        let (evaluated, stored) = futures_lite::future::zip(evaluation, consume).await;
        if let Err(e) = stored {
            return Err(format!("storing evaluation results failed: {e}"));
        }
        evaluated.map(|_| ()).map_err(|e| paths.relativize(&e.to_string()))
    }

    async fn roots_of(&self, id: u64) -> Result<Vec<String>, StoreError> {
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
