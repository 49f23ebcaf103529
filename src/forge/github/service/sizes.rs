//! The size check of a pull request (`size_check` of a job, docs/repository-config.md): after the
//! builds, measures the built outputs of the Added and Changed attributes on head (and the base side of
//! the Changed ones), records them (`sizes`), compares head with the baseline on the job's
//! `base_branch`, and reports an `EkaCI: Size Check (<job>)` check run: success when nothing grew by more
//! than the limit, otherwise neutral (failure with `fail_on_increase`), listing what grew and the runtime
//! dependencies that changed. Then the "EkaCI: Change Summary" run is posted again with the size
//! sections (`summary::render`). A measurement that fails is reported as neutral with the reason: it never
//! decides the pull request's gate.

use super::report::{completed, Reporter, SUMMARY_CHECK};
use super::run::RunError;
use super::GitHubService;
use crate::config::repo::RepoConfig;
use crate::forge::github::client::CheckConclusion;
use crate::forge::github::runs::Run;
use crate::pipeline::ReviewReport;
use crate::sizes::{self, SizeSummary};
use crate::summary::ChangeSummary;
use crate::text::code_span;

/// The check run's name for `job`.
pub(super) fn size_check_name(job: &str) -> String {
    format!("EkaCI: Size Check ({job})")
}

impl GitHubService {
    /// Measures, records, compares and reports every job of `review` that has a `size_check`; then, when
    /// anything was measured and `summary` (the change summary posted before the builds) is given, posts
    /// the change summary again with the size sections.
    pub(super) async fn report_sizes(
        &self,
        reporter: &Reporter,
        run: &Run,
        config: &RepoConfig,
        review: &ReviewReport,
        summary: Option<&ChangeSummary>,
    ) -> Result<(), RunError> {
        let mut measured: Vec<SizeSummary> = Vec::new();
        for job in &review.jobs {
            let Some(check) = config.jobs.get(&job.diff.job).and_then(|j| j.size_check.as_ref()) else {
                continue;
            };
            let name = size_check_name(&job.diff.job);
            let sizing = sizes::JobSizing {
                repo: &review.repo,
                base_commit: &review.base_commit,
                head_commit: &review.head_commit,
                // The base commit is its branch's tip: its sizes become the branch's newest.
                base_is_tip_of: Some(&run.base_ref),
                baseline_branch: Some(&check.base_branch),
                max_increase_percent: check.max_increase_percent,
            };
            let fields = match sizes::measure_job(self.pipeline.jobsets(), job, &sizing).await {
                Ok(s) => {
                    let over = !s.increases.is_empty();
                    let conclusion = match (over, check.fail_on_increase) {
                        (false, _) => CheckConclusion::Success,
                        (true, false) => CheckConclusion::Neutral,
                        (true, true) => CheckConclusion::Failure,
                    };
                    let title = if over {
                        format!(
                            "{} attribute(s) grew by more than {} %",
                            s.increases.len(),
                            check.max_increase_percent
                        )
                    } else {
                        format!("No size grew by more than {} %", check.max_increase_percent)
                    };
                    let fields = completed(conclusion, &title, sizes::render_markdown(&s), None);
                    measured.push(s);
                    fields
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
        if let (Some(summary), false) = (summary, measured.is_empty()) {
            let rendered = crate::summary::sizes::rerender(&mut summary.clone(), measured);
            let fields = completed(CheckConclusion::Neutral, "Change summary", rendered.markdown, None);
            reporter.report(SUMMARY_CHECK, fields).await?;
        }
        Ok(())
    }
}
