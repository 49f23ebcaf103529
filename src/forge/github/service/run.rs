//! One run's task: reads the run, checks approval, reads the base's and the head's repository
//! configurations and picks the one that gates (`gate`), evaluates and diffs head against base with its
//! jobs, posts the change summary, builds, and completes the check runs; then records how the attempt
//! ended (done, held for approval, or retry with backoff).
//!
//! A task only reads its run, works, and records what it told GitHub: everything it does can be redone.
//! It never decides which runs exist or are cancelled (the loop in `mod.rs` does), never formats
//! check-run text beyond assembling it from `report`'s helpers, and never holds a store transaction
//! across an `.await`.

use std::sync::{Arc, Mutex};

use super::gate::{self, Found, Side};
use super::report::{
    check_check, check_completed, check_pending, completed, configure_fields, gate_check, gate_text,
    held_summary, no_rebuild_text, verdict_words, wide_gate_text, ConfigureReport, Reporter, APPROVAL_CHECK,
    CONFIGURE_CHECK, SUMMARY_CHECK,
};
use super::{approved_locally, GitHubService};
use crate::checkout::GitAuth;
use crate::config::repo::{ChangeClass, RepoConfig};
use crate::forge::github::client::{
    CheckConclusion, CheckRunFields, CheckRunOutput, CheckStatus, ClientError, GitHubClient,
};
use crate::forge::github::runs::{self, Run, RunState, Trigger};
use crate::jobset::JobsetId;
use crate::pipeline::{PipelineError, ReviewReport};
use crate::scheduler::state::DrvState;
use crate::store::{now_secs, StoreError};
use crate::text::{code_span, escape_markdown, fence, short_sha as short};

impl GitHubService {
    /// Executes run `key` once; GitHub failures and host trouble requeue it with backoff.
    pub(super) async fn execute(&self, key: &str, owners: &Arc<Mutex<Vec<JobsetId>>>) {
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
                    Ok(Finish::Done { outcome, failed_drvs, green, .. }) => {
                        run.state = if *green {
                            RunState::Passed { outcome: outcome.clone() }
                        } else {
                            RunState::Done { outcome: outcome.clone() }
                        };
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
                green: false,
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
        let reporter = Reporter::new(self.store.clone(), client.clone(), key, &run, &self.public_url)
            .with_installation(installation);
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
                    format!("A maintainer approved this commit, `{}`.", run.head_sha)
                } else {
                    "No approval is needed any more: a pull request with this head commit is by an author \
                     with write access, or was approved."
                        .to_string()
                };
                let fields = completed(CheckConclusion::Success, "Approved", summary, None);
                reporter.report(APPROVAL_CHECK, fields).await?;
            }
        }

        let auth = self.git_auth(&run, client, installation).await?;
        let (url, head, base) = (run.clone_url.clone(), run.head_sha.clone(), run.base_sha.clone());
        // The jobs that gate come from the trusted side: the base's configuration, or the head's when a
        // pull request's author with write access changes it (docs/security.md, "What gates a pull
        // request"). Both are read: the head's is validated and its changes listed either way.
        let mut found = Vec::new();
        for (side, commit) in [("base", &base), ("head", &head)] {
            match self.pipeline.repo_config(&url, commit, auth.as_ref()).await {
                Ok((config, file, warnings)) => found.push(Found::Valid { config, file, warnings }),
                Err(PipelineError::NoRepoConfig { .. }) => found.push(Found::Missing),
                Err(PipelineError::InvalidRepoConfig { file, errors, .. }) => {
                    found.push(Found::Invalid { file, errors })
                }
                Err(e) if e.is_host_trouble() => return Err(RunError::HostTrouble(e)),
                Err(e) => {
                    let summary = format!(
                        "The {side} commit {} could not be read:\n\n```\n{}\n```",
                        short(commit),
                        fence(&e.to_string())
                    );
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
                        green: false,
                    });
                }
            }
        }
        let (head_found, base_found) =
            (found.pop().unwrap_or(Found::Missing), found.pop().unwrap_or(Found::Missing));
        let changes = gate::changes(&base_found, &head_found);
        let merge_group = matches!(run.trigger, Trigger::MergeGroup { .. });
        let trusted_author =
            if changes.is_empty() || merge_group || matches!(head_found, Found::Invalid { .. }) {
                None
            } else {
                self.author_with_write_access(&run, client, installation).await?
            };
        let side = gate::choose(&base_found, &head_found, trusted_author.is_some());
        let push_plan = match match side {
            Side::Base => base_found.config(),
            Side::Head => head_found.config(),
        } {
            Some(config) => Some(self.push_plan(&run, client, installation, config).await?),
            None => None,
        };
        let configure = ConfigureReport {
            base: &base_found,
            head: &head_found,
            changes: &changes,
            side,
            trusted_author: trusted_author.as_deref(),
            merge_group,
            cache_skips: push_plan.as_ref().map_or(&[], |p| p.skipped.as_slice()),
        };
        reporter.report(CONFIGURE_CHECK, configure_fields(&configure)).await?;
        let gating = match side {
            Side::Base => &base_found,
            Side::Head => &head_found,
        };
        let Some(repo_config) = gating.config() else {
            let (outcome, result) = match (&head_found, gating) {
                (Found::Invalid { .. }, _) => ("invalid repository configuration", "error"),
                (_, Found::Invalid { .. }) => ("invalid base repository configuration", "error"),
                _ if changes.is_empty() => ("no repository configuration", "skipped"),
                _ => ("the changed repository configuration is not used", "skipped"),
            };
            return Ok(Finish::Done {
                outcome: outcome.into(),
                failed_drvs: Vec::new(),
                result,
                green: false,
            });
        };
        let jobs: Vec<String> = repo_config.jobs.keys().cloned().collect();
        // Before any evaluation, from the git diff: the repository's change sets, then the server's
        // skip_paths (which a `full-rebuild` path overrides).
        let changed = self.changed_paths_for_policy(repo_config, &url, &base, &head).await;
        let class = match &changed {
            Some(paths) => {
                let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
                repo_config.change_sets.classify(&refs)
            }
            None => ChangeClass::Normal,
        };
        if let Some(paths) = &changed {
            if class == ChangeClass::NoRebuild {
                return self.finish_no_rebuild(&reporter, &jobs, repo_config, paths).await;
            }
            if class != ChangeClass::FullRebuild {
                if let Some(finish) = self.skip_if_only_skip_paths(&reporter, &jobs, paths).await? {
                    return Ok(finish);
                }
            }
        }
        for job in &jobs {
            let fields = CheckRunFields {
                status: Some(CheckStatus::InProgress),
                started_at: Some(crate::time::now_rfc3339()),
                output: Some(CheckRunOutput {
                    title: "Evaluating and building".into(),
                    summary: format!(
                        "Evaluating {} at {} against {}.",
                        code_span(job),
                        short(&head),
                        short(&base)
                    ),
                    text: None,
                }),
                ..CheckRunFields::default()
            };
            reporter.report(&gate_check(job), fields).await?;
        }
        for (name, check) in &repo_config.checks {
            // A check that already ran (before a restart) keeps its result: never back to queued.
            let fields = match self.stored_check(&url, &head, name, check).await? {
                Some(report) => check_completed(check, &report),
                None => check_pending(check, false),
            };
            reporter.report(&check_check(name), fields).await?;
        }

        if run.rebuild_failed {
            self.rebuild_failed(&run.failed_drvs).await;
        }

        let diff = match self
            .pipeline
            .diff_with_config(&url, &base, &head, repo_config, auth.as_ref(), &None)
            .await
        {
            Ok(diff) => diff,
            Err(e) if e.is_host_trouble() => return Err(RunError::HostTrouble(e)),
            Err(e) => {
                let lead = "Evaluation could not run";
                skip_checks(&reporter, repo_config, "evaluation could not run").await?;
                return fail_every_gate(&reporter, &jobs, "Evaluation failed", lead, "evaluation failed", &e)
                    .await;
            }
        };
        self.mark_public(&url, &diff).await;
        let summary = self.report_summary(&reporter, &diff).await?;
        if let (Some(max), Some(summary)) = (self.max_rebuild_count, &summary) {
            let rebuilds = rebuild_count(summary);
            if rebuilds > max as u64 {
                skip_checks(
                    &reporter,
                    repo_config,
                    "the change is too wide to build ([rebuild] max_rebuild_count)",
                )
                .await?;
                return self.finish_wide(&reporter, &diff, rebuilds, max).await;
            }
        }
        // Pushes are queued as each derivation's build succeeds, while the others still build.
        let watch =
            push_plan.as_ref().map(|plan| self.push_as_built(plan, self.watched(plan, repo_config, &diff)));
        let build = self.pipeline.build_review(&self.scheduler, diff, owners, &None);
        let built = match watch {
            Some(watch) => {
                futures_lite::future::or(build, async {
                    watch.await;
                    std::future::pending().await
                })
                .await
            }
            None => build.await,
        };
        let review = match built {
            Ok(review) => review,
            Err(e) if e.is_host_trouble() => return Err(RunError::HostTrouble(e)),
            Err(e) => {
                let lead = "Building failed to run";
                skip_checks(&reporter, repo_config, "builds failed to run").await?;
                return fail_every_gate(&reporter, &jobs, "Build error", lead, "builds failed to run", &e)
                    .await;
            }
        };
        if let Some(plan) = &push_plan {
            self.queue_pushes(plan, repo_config, &review).await?;
        }
        let checks_failed =
            self.run_repo_checks(&reporter, repo_config, &url, &head, auth.as_ref(), owners).await?;
        self.report_sizes(&reporter, &run, repo_config, &review, summary.as_ref()).await?;
        let mut finish = self.report_review(&reporter, &review).await?;
        if checks_failed > 0 {
            if let Finish::Done { outcome, result, green, .. } = &mut finish {
                *outcome = format!("{outcome}; {checks_failed} check(s) failed");
                *result = "failed";
                // A failed check keeps the commit from being merged (`@eka-ci merge`).
                *green = false;
            }
        }
        Ok(finish)
    }

    /// The stored result of check `name` at `head` when it already ran with this configuration
    /// (`Pipeline::finished_check`); a result that cannot be read is logged and the check runs again.
    async fn stored_check(
        &self,
        url: &str,
        head: &str,
        name: &str,
        check: &crate::config::repo::CheckConfig,
    ) -> Result<Option<crate::checks::CheckReport>, RunError> {
        match self.pipeline.finished_check(url, head, name, check).await {
            Ok(found) => Ok(found),
            Err(e) if e.is_host_trouble() => Err(RunError::HostTrouble(e)),
            Err(e) => {
                tracing::warn!(check = %name, error = %e, "cannot read a stored check result");
                Ok(None)
            }
        }
    }

    /// Runs the gating configuration's checks on the head commit (docs/checks.md), one at a time: each
    /// check run goes in progress, then completes with the check's outcome. Returns how many failed.
    async fn run_repo_checks(
        &self,
        reporter: &Reporter,
        config: &crate::config::repo::RepoConfig,
        url: &str,
        head: &str,
        auth: Option<&GitAuth>,
        owners: &Arc<Mutex<Vec<JobsetId>>>,
    ) -> Result<usize, RunError> {
        let mut failed = 0;
        for (name, check) in &config.checks {
            // A check that already ran at this commit with this configuration (before a restart, or for
            // a redelivery) is reported again, not run again: its check run gets the same result.
            if let Some(report) = self.stored_check(url, head, name, check).await? {
                if !report.passed() {
                    failed += 1;
                }
                reporter.report(&check_check(name), check_completed(check, &report)).await?;
                continue;
            }
            reporter.report(&check_check(name), check_pending(check, true)).await?;
            let mut one = crate::config::repo::RepoConfig::default();
            one.checks.insert(name.clone(), check.clone());
            let reports =
                match self.pipeline.run_checks(&self.scheduler, url, head, &one, auth, owners, &None).await {
                    Ok(reports) => reports,
                    Err(e) if e.is_host_trouble() => return Err(RunError::HostTrouble(e)),
                    Err(e) => vec![crate::checks::CheckReport {
                        name: name.clone(),
                        shell: check.shell.clone(),
                        shell_drv: None,
                        outcome: crate::checks::CheckOutcome::Error { message: e.to_string() },
                        tail: String::new(),
                        output_file: None,
                    }],
                };
            for report in &reports {
                if !report.passed() {
                    failed += 1;
                }
                reporter.report(&check_check(name), check_completed(check, report)).await?;
            }
        }
        Ok(failed)
    }

    /// The paths the change touches (`git diff` of base and head, renames as both paths), when the
    /// server's `skip_paths` or the repository's `change_sets` need them. A diff that cannot be computed
    /// is logged and yields `None`: evaluation goes ahead as usual.
    async fn changed_paths_for_policy(
        &self,
        repo_config: &RepoConfig,
        url: &str,
        base: &str,
        head: &str,
    ) -> Option<Vec<String>> {
        if self.skip_paths.is_empty() && repo_config.change_sets.is_empty() {
            return None;
        }
        match self.pipeline.changed_paths(url, base, head).await {
            Ok(changed) => Some(changed),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the changed paths; evaluating");
                None
            }
        }
    }

    /// `change_sets`: every changed path is covered by a `docs-only` or `no-op` rule. Completes every
    /// job's gate as successful and the change summary as "No rebuilds expected", without evaluating.
    async fn finish_no_rebuild(
        &self,
        reporter: &Reporter,
        jobs: &[String],
        repo_config: &RepoConfig,
        changed: &[String],
    ) -> Result<Finish, RunError> {
        let paths: Vec<(String, &'static str)> = changed
            .iter()
            .map(|p| (p.clone(), repo_config.change_sets.kind_of(p).map_or("", |k| k.as_str())))
            .collect();
        // Counted before the check runs are posted, so that whoever sees them sees the count too.
        crate::metrics::global().github_rebuild_skips.with_label_values(&["change_sets"]).inc();
        let summary = no_rebuild_text(&paths);
        for job in jobs {
            let fields = completed(
                CheckConclusion::Success,
                "No rebuild: only docs-only or no-op paths changed",
                summary.clone(),
                None,
            );
            reporter.report(&gate_check(job), fields).await?;
        }
        let fields = completed(CheckConclusion::Neutral, "No rebuilds expected", summary, None);
        reporter.report(SUMMARY_CHECK, fields).await?;
        Ok(Finish::Done {
            outcome: "change_sets: only docs-only or no-op paths changed".into(),
            failed_drvs: Vec::new(),
            result: "skipped",
            green: true,
        })
    }

    /// `[rebuild] max_rebuild_count`: the change rebuilds more than the server builds for one pull
    /// request. Completes every job's gate from its evaluation alone (neutral, or failure for a failed
    /// evaluation or new evaluation errors), saying that builds were skipped, and builds nothing.
    async fn finish_wide(
        &self,
        reporter: &Reporter,
        diff: &crate::pipeline::DiffReport,
        rebuilds: u64,
        max: usize,
    ) -> Result<Finish, RunError> {
        // Counted before the check runs are posted, so that whoever sees them sees the count too.
        crate::metrics::global().github_rebuild_skips.with_label_values(&["wide"]).inc();
        let mut any_failed = false;
        for job in &diff.jobs {
            let (title, summary, failed) = wide_gate_text(job, rebuilds, max);
            any_failed |= failed;
            let conclusion = if failed { CheckConclusion::Failure } else { CheckConclusion::Neutral };
            reporter.report(&gate_check(&job.job), completed(conclusion, &title, summary, None)).await?;
        }
        Ok(Finish::Done {
            outcome: format!(
                "wide change: {rebuilds} rebuilds, over max_rebuild_count {max}; builds skipped"
            ),
            failed_drvs: Vec::new(),
            result: if any_failed { "failed" } else { "skipped" },
            // Nothing was built: the gate is neutral at best, never green enough to merge.
            green: false,
        })
    }

    /// `[rebuild] skip_paths`: when every path the pull request changes matches one of them, completes
    /// every job's gate as successful without evaluating, saying why, and ends the attempt.
    async fn skip_if_only_skip_paths(
        &self,
        reporter: &Reporter,
        jobs: &[String],
        changed: &[String],
    ) -> Result<Option<Finish>, RunError> {
        if self.skip_paths.is_empty() {
            return Ok(None);
        }
        let skipped =
            |path: &String| self.skip_paths.iter().any(|g| crate::config::repo::glob_matches(g, path));
        if changed.is_empty() || !changed.iter().all(skipped) {
            return Ok(None);
        }
        const SHOWN: usize = 20;
        let mut summary = format!(
            "Every path this change touches matches the server's `[rebuild] skip_paths`, so nothing was \
             evaluated or built ({} path(s)):\n\n",
            changed.len()
        );
        for path in changed.iter().take(SHOWN) {
            summary.push_str(&format!("- {}\n", code_span(path)));
        }
        if changed.len() > SHOWN {
            summary.push_str(&format!("- … and {} more\n", changed.len() - SHOWN));
        }
        // Counted before the check runs are posted, so that whoever sees them sees the count too.
        crate::metrics::global().github_rebuild_skips.with_label_values(&["skip_paths"]).inc();
        for job in jobs {
            let fields = completed(
                CheckConclusion::Success,
                "Skipped: only skip_paths changed",
                summary.clone(),
                None,
            );
            reporter.report(&gate_check(job), fields).await?;
        }
        Ok(Some(Finish::Done {
            outcome: "only paths in [rebuild] skip_paths changed".into(),
            failed_drvs: Vec::new(),
            result: "skipped",
            green: true,
        }))
    }

    /// When the repository is public, marks what its diffed jobsets reach as public for the HTTP API
    /// (`visibility`). A failure only keeps those derivations private; it is logged.
    async fn mark_public(&self, url: &str, diff: &crate::pipeline::DiffReport) {
        let (store, jobsets, graph) =
            (self.store.clone(), self.pipeline.jobsets().clone(), self.pipeline.graph().clone());
        let url = url.to_string();
        let ids: Vec<JobsetId> = diff.jobs.iter().flat_map(|j| [j.base.id, j.head.id]).collect();
        let marked = smol::unblock(move || -> Result<Option<u64>, crate::visibility::VisibilityError> {
            if !crate::visibility::repo_is_public(&store, &url)? {
                return Ok(None);
            }
            crate::visibility::mark_jobsets_public(&store, &jobsets, &graph, &ids).map(Some)
        })
        .await;
        match marked {
            Ok(Some(n)) => {
                tracing::debug!(derivations = n, "derivations of a public repository marked public")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "marking a public repository's derivations failed"),
        }
    }

    /// Posts (or updates) the change summary of the diffed jobs, and returns it (`None` when it could not
    /// be computed; that is logged).
    async fn report_summary(
        &self,
        reporter: &Reporter,
        diff: &crate::pipeline::DiffReport,
    ) -> Result<Option<crate::summary::ChangeSummary>, RunError> {
        match self.pipeline.change_summary(diff).await {
            Ok((summary, rendered)) => {
                let fields = completed(CheckConclusion::Neutral, "Change summary", rendered.markdown, None);
                reporter.report(SUMMARY_CHECK, fields).await?;
                Ok(Some(summary))
            }
            Err(e) => {
                tracing::warn!(error = %e, "computing the change summary failed");
                Ok(None)
            }
        }
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
                    "{} ({}) {}.\n\n- derivation: `{}`\n- state: {}",
                    code_span(&a.attr),
                    escape_markdown(&a.name),
                    verdict_words(a.verdict),
                    a.head_drv,
                    a.head.state
                );
                if let Some(detail) = &a.head.detail {
                    summary.push_str(&format!("\n- detail: {}", escape_markdown(detail)));
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
        Ok(Finish::Done { outcome, failed_drvs, result, green: failed == 0 && !review.jobs.is_empty() })
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
            let (store, repo, a, sha) =
                (self.store.clone(), run.repo.clone(), author.clone(), run.head_sha.clone());
            if smol::unblock(move || approved_locally(&store, &repo, number, &sha, a.as_deref())).await? {
                return Ok(true);
            }
            let Some(author) = author else { continue };
            if has_write_access(client, installation, &run.repo, &author).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The first author of a pull request this run serves (its trigger's, then the others with the same
    /// head) who has write access to the repository: such an author may change the configuration that
    /// gates the run. Approved users (`ekaci approved-users`) and approvals do not count: they let builds
    /// run, they do not let a pull request change what gates it.
    async fn author_with_write_access(
        &self,
        run: &Run,
        client: &GitHubClient,
        installation: u64,
    ) -> Result<Option<String>, RunError> {
        let Trigger::PullRequest { author, .. } = &run.trigger else { return Ok(None) };
        let others = run.also_for.iter().map(|p| p.author.clone());
        for author in std::iter::once(author.clone()).chain(others).flatten() {
            if has_write_access(client, installation, &run.repo, &author).await? {
                return Ok(Some(author));
            }
        }
        Ok(None)
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

/// Whether `login` has write access (permission admin, maintain or write) to `repo`.
async fn has_write_access(
    client: &GitHubClient,
    installation: u64,
    repo: &str,
    login: &str,
) -> Result<bool, RunError> {
    let permission = client.collaborator_permission(installation, repo, login).await?;
    Ok(matches!(permission.permission.as_str(), "admin" | "maintain" | "write"))
}

/// How a run attempt ended (errors aside).
/// The rebuild count `[rebuild] max_rebuild_count` is compared with: the change summary's rebuild
/// counts (nixpkgs' unit: attributes as nix-env lists them whose out paths changed, plus added ones),
/// summed over every system and job.
fn rebuild_count(summary: &crate::summary::ChangeSummary) -> u64 {
    summary.jobs.iter().flat_map(|j| j.impact.per_system.iter()).map(|s| s.rebuilds).sum()
}

enum Finish {
    /// `result` is the `eka_ci_github_runs_total` label.
    Done {
        outcome: String,
        failed_drvs: Vec<String>,
        result: &'static str,
        /// Every job's gate succeeded: the commit may be merged.
        green: bool,
    },
    Held,
}

/// Why a run task stopped early: the run is retried later with backoff (nothing is reported as the
/// pull request's failure).
#[derive(Debug, thiserror::Error)]
pub(super) enum RunError {
    #[error(transparent)]
    GitHub(#[from] ClientError),
    /// The pipeline hit host trouble that outlasted its own retries (out of file descriptors, say).
    #[error(transparent)]
    HostTrouble(PipelineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {0} vanished from the store")]
    Missing(String),
}

/// Completes every check's check run as cancelled, saying why it did not run.
async fn skip_checks(
    reporter: &Reporter,
    config: &crate::config::repo::RepoConfig,
    why: &str,
) -> Result<(), RunError> {
    for name in config.checks.keys() {
        let summary = format!("Not run: {why}.");
        reporter
            .report(&check_check(name), completed(CheckConclusion::Cancelled, "Not run", summary, None))
            .await?;
    }
    Ok(())
}

/// Completes every job's gate as failed with `error` in a code block (the pipeline could not evaluate or
/// build at all), and ends the attempt.
async fn fail_every_gate(
    reporter: &Reporter,
    jobs: &[String],
    title: &str,
    lead: &str,
    outcome: &str,
    error: &PipelineError,
) -> Result<Finish, RunError> {
    let summary = format!("{lead}:\n\n```\n{}\n```", fence(&error.to_string()));
    for job in jobs {
        reporter
            .report(&gate_check(job), completed(CheckConclusion::Failure, title, summary.clone(), None))
            .await?;
    }
    Ok(Finish::Done {
        outcome: format!("{outcome}: {error}"),
        failed_drvs: Vec::new(),
        result: "error",
        green: false,
    })
}
