//! The size check of a pull request (`size_check` of a job, docs/repository-config.md): after the
//! builds, measures the built outputs of the Added and Changed attributes on head (and the base side of
//! the Changed ones), records them (`sizes`), compares head with the baseline on the job's
//! `base_branch`, and reports an `EkaCI: Size Check (<job>)` check run: success when nothing grew by more
//! than the limit, otherwise neutral (failure with `fail_on_increase`), listing what grew and the runtime
//! dependencies that changed. A measurement that fails is reported as neutral with the reason: it never
//! decides the pull request's gate.

use super::report::{completed, Reporter};
use super::run::RunError;
use super::GitHubService;
use crate::config::repo::{RepoConfig, SizeCheck};
use crate::forge::github::client::CheckConclusion;
use crate::forge::github::runs::Run;
use crate::jobset::{AttrOutcome, JobsetId};
use crate::pipeline::{JobReview, ReviewReport};
use crate::sizes::{self, AttrSizes};
use crate::text::code_span;

/// A built attribute: its name, its .drv and its outputs (name, path).
type Built = (String, String, Vec<(String, String)>);

/// The check run's name for `job`.
pub(super) fn size_check_name(job: &str) -> String {
    format!("EkaCI: Size Check ({job})")
}

impl GitHubService {
    /// Measures, records, compares and reports every job of `review` that has a `size_check`.
    pub(super) async fn report_sizes(
        &self,
        reporter: &Reporter,
        run: &Run,
        config: &RepoConfig,
        review: &ReviewReport,
    ) -> Result<(), RunError> {
        for job in &review.jobs {
            let Some(check) = config.jobs.get(&job.diff.job).and_then(|j| j.size_check.as_ref()) else {
                continue;
            };
            let name = size_check_name(&job.diff.job);
            let fields = match self.size_report(run, review, job, check).await {
                Ok(report) => {
                    let over = !report.over().is_empty();
                    let conclusion = match (over, check.fail_on_increase) {
                        (false, _) => CheckConclusion::Success,
                        (true, false) => CheckConclusion::Neutral,
                        (true, true) => CheckConclusion::Failure,
                    };
                    let title = if over {
                        format!(
                            "{} attribute(s) grew by more than {} %",
                            report.over().len(),
                            check.max_increase_percent
                        )
                    } else {
                        format!("No size grew by more than {} %", check.max_increase_percent)
                    };
                    completed(conclusion, &title, sizes::render_markdown(&report), None)
                }
                Err(e) => {
                    tracing::warn!(job = %job.diff.job, error = %e, "measuring output sizes failed");
                    let summary = format!(
                        "The sizes of job {} could not be measured: {}",
                        code_span(&job.diff.job),
                        crate::text::escape_markdown(&e.to_string())
                    );
                    completed(CheckConclusion::Neutral, "Sizes not measured", summary, None)
                }
            };
            reporter.report(&name, fields).await?;
        }
        Ok(())
    }

    /// Measures `job`'s built attributes on both sides, records them, and compares head with the
    /// baseline.
    async fn size_report(
        &self,
        run: &Run,
        review: &ReviewReport,
        job: &JobReview,
        check: &SizeCheck,
    ) -> Result<sizes::SizeReport, sizes::SizeError> {
        // (attribute, .drv, jobset) of each side's successfully built (or already valid) derivations.
        let head_side: Vec<(String, String, JobsetId)> = job
            .attrs
            .iter()
            .filter(|a| a.head.ok)
            .map(|a| (a.attr.clone(), a.head_drv.clone(), job.diff.head.id))
            .collect();
        let base_side: Vec<(String, String, JobsetId)> = job
            .attrs
            .iter()
            .filter_map(|a| match (&a.base, &a.base_drv) {
                (Some(b), Some(drv)) if b.ok => Some((a.attr.clone(), drv.clone(), job.diff.base.id)),
                _ => None,
            })
            .collect();
        let jobsets = self.pipeline.jobsets().clone();
        let (head_outputs, base_outputs) = smol::unblock(move || {
            let outputs = |side: &[(String, String, JobsetId)]| {
                let mut out = Vec::new();
                for (attr, drv, id) in side {
                    if let Some(AttrOutcome::Drv(d)) = jobsets.attr(*id, attr)? {
                        if &d.drv_path == drv {
                            out.push((attr.clone(), drv.clone(), d.outputs));
                        }
                    }
                }
                Ok::<_, crate::store::StoreError>(out)
            };
            Ok::<_, crate::store::StoreError>((outputs(&head_side)?, outputs(&base_side)?))
        })
        .await?;
        let paths: Vec<String> = head_outputs
            .iter()
            .chain(base_outputs.iter())
            .flat_map(|(_, _, outs)| outs.iter().map(|(_, p)| p.clone()))
            .collect();
        let infos = sizes::path_info(&paths).await?;
        let measure = |side: &[Built], commit: &str| -> Vec<(String, AttrSizes)> {
            side.iter()
                .filter_map(|(attr, drv, outs)| {
                    sizes::measure(drv, commit, outs, &infos).map(|s| (attr.clone(), s))
                })
                .collect()
        };
        let head = measure(&head_outputs, &review.head_commit);
        let base = measure(&base_outputs, &review.base_commit);

        let store = self.store.clone();
        let (repo, job_name) = (review.repo.clone(), job.diff.job.clone());
        let (head_commit, base_commit) = (review.head_commit.clone(), review.base_commit.clone());
        let base_ref = run.base_ref.clone();
        let branch = check.base_branch.clone();
        let attrs: Vec<String> = head.iter().map(|(a, _)| a.clone()).collect();
        let head_rows = head.clone();
        let baseline = smol::unblock(move || {
            // The base commit is its branch's tip: its sizes become the branch's newest.
            sizes::record(&store, &repo, &base_commit, Some(&base_ref), &job_name, &base)?;
            sizes::record(&store, &repo, &head_commit, None, &job_name, &head_rows)?;
            let refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
            sizes::baseline(&store, &repo, &branch, &job_name, &refs)
        })
        .await?;
        Ok(sizes::compare(&job.diff.job, &check.base_branch, check.max_increase_percent, &head, &baseline))
    }
}
