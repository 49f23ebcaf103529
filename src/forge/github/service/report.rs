//! Reporting: the texts of the check runs a run reports (configuration, gates, failures, approval) and
//! the `Reporter`, which creates or updates one run's check runs and records every id it gets.
//!
//! Everything untrusted that reaches a check run goes through `crate::text`'s `escape_markdown`,
//! `code_span` or `fence`; outputs are
//! capped to GitHub's limit. It never decides what a run does next (the run task does).

use super::gate::{Change, Found, Side};
use super::run::RunError;
use crate::config::repo::FieldError;
use crate::forge::github::client::{
    CheckConclusion, CheckRunFields, CheckRunOutput, CheckStatus, CreateCheckRun, GitHubClient,
    UpdateCheckRun,
};
use crate::forge::github::runs::{self, Run, Trigger};
use crate::pipeline::JobReview;
use crate::store::Store;
use crate::text::{self, code_span, escape_markdown, fence, prefix_chars};

/// Name of the configuration check.
pub const CONFIGURE_CHECK: &str = "EkaCI: Configure";
/// Name of the approval check.
pub const APPROVAL_CHECK: &str = "EkaCI: Approval Required";
/// Name of the change-summary check.
pub const SUMMARY_CHECK: &str = "EkaCI: Change Summary";
/// GitHub's limit on a check run's `output.summary` and `output.text`, in characters.
const MAX_OUTPUT_CHARS: usize = 65_535;

/// The name of a repository check's check run (docs/checks.md).
pub fn check_check(name: &str) -> String {
    format!("EkaCI: Check ({name})")
}

/// A repository check's check run while it waits (`queued`) or runs (`in_progress`).
pub(super) fn check_pending(check: &crate::config::repo::CheckConfig, running: bool) -> CheckRunFields {
    let (status, title) =
        if running { (CheckStatus::InProgress, "Running") } else { (CheckStatus::Queued, "Queued") };
    let summary = format!(
        "{} {} in the tools of the shell {}.",
        if running { "Running" } else { "Will run" },
        code_span(&check.command),
        code_span(&check.shell)
    );
    CheckRunFields {
        status: Some(status),
        started_at: running.then(crate::time::now_rfc3339),
        output: Some(CheckRunOutput { title: title.into(), summary, text: None }),
        ..CheckRunFields::default()
    }
}

/// A repository check's completed check run: success or failure with how it ended, its duration and the
/// tail of its output (the whole output through `ekaci checks` and `/v1/checks`).
pub(super) fn check_completed(
    check: &crate::config::repo::CheckConfig,
    report: &crate::checks::CheckReport,
) -> CheckRunFields {
    use crate::checks::CheckOutcome;
    let conclusion = if report.passed() { CheckConclusion::Success } else { CheckConclusion::Failure };
    let title = match &report.outcome {
        CheckOutcome::Ran { ending, .. } if ending.success() => "Passed".to_string(),
        CheckOutcome::Ran { ending, .. } => {
            let mut t = ending.to_string();
            if let Some(c) = t.get_mut(0..1) {
                c.make_ascii_uppercase();
            }
            t
        }
        CheckOutcome::NoShell { .. } => "The shell is not available".to_string(),
        CheckOutcome::Error { .. } => "The sandbox could not run".to_string(),
    };
    let mut summary =
        format!("- command: {}\n- shell: {}", code_span(&check.command), code_span(&check.shell));
    if let Some(drv) = &report.shell_drv {
        summary.push_str(&format!(" ({})", code_span(drv)));
    }
    summary.push_str(&format!(
        "\n- network: {}\n- result: {}",
        if check.allow_network { "allowed" } else { "none" },
        escape_markdown(&report.summary())
    ));
    if let CheckOutcome::Ran { output_bytes, .. } = &report.outcome {
        summary.push_str(&format!(
            "\n- output: {output_bytes} byte(s); the whole output: `ekaci checks --output` or `/v1/checks`"
        ));
    }
    let text = (!report.tail.is_empty()).then(|| format!("```\n{}\n```", fence(&report.tail)));
    completed(conclusion, &title, summary, text)
}

/// The name of a job's gate check.
pub fn gate_check(job: &str) -> String {
    format!("EkaCI: Evaluate Job ({job})")
}

/// The `EkaCI: Approval Required` check of a held run (`subject` from `approval_subject`): why, and the
/// commands that release it.
pub(super) fn held_summary(run: &Run, subject: Option<&(u64, Option<String>)>) -> CheckRunFields {
    let Some((number, author)) = subject.map(|(n, a)| (*n, a.as_deref())) else {
        let summary = "`merge_queue_require_approval` is on, and this merge group's head ref does not name a \
                       pull request (`gh-readonly-queue/<base>/pr-<number>-<sha>`), so it cannot be approved. \
                       Nothing is evaluated.";
        return completed(CheckConclusion::ActionRequired, "Cannot be approved", summary.into(), None);
    };
    let who = escape_markdown(author.unwrap_or("a deleted account"));
    let repo = escape_markdown(&run.repo);
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
        "{why}\n\nAn approval is for one commit: this one, `{sha}`. To approve it, run on the eka-ci host:\n\n\
         ```\nekaci approve {}#{number}\n```\n\n(`--sha {sha}` makes sure it is this commit). A later push to the \
         pull request is held again. To trust the author from now on, for every commit: \
         `ekaci approved-users add {}`.",
        run.repo,
        author.unwrap_or("LOGIN"),
        sha = run.head_sha,
    );
    completed(CheckConclusion::ActionRequired, "Waiting for a maintainer's approval", summary, None)
}

/// What the `EkaCI: Configure` check of a run says (see [`configure_fields`]).
pub(super) struct ConfigureReport<'a> {
    pub base: &'a Found,
    pub head: &'a Found,
    /// `gate::changes(base, head)`.
    pub changes: &'a [Change],
    /// Whose configuration gates the run (`gate::choose`).
    pub side: Side,
    /// The author with write access whose pull request lets the head's configuration gate.
    pub trusted_author: Option<&'a str>,
    /// A merge queue entry rather than a pull request.
    pub merge_group: bool,
    /// One Markdown line per cache a job names but may not push to (`pushes.rs`).
    pub cache_skips: &'a [String],
}

/// The `EkaCI: Configure` check: the head configuration's validation, what it would change against the
/// base's, and which configuration gates (docs/security.md, "What gates a pull request").
pub(super) fn configure_fields(r: &ConfigureReport) -> CheckRunFields {
    let subject = if r.merge_group { "this merge queue entry" } else { "this pull request" };
    let gating = match r.side {
        Side::Base => r.base,
        Side::Head => r.head,
    };
    let jobs_of = |file: &str, config: &crate::config::repo::RepoConfig| {
        let names: Vec<String> = config.jobs.keys().take(50).map(|j| code_span(j)).collect();
        let more = config.jobs.len().saturating_sub(names.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        format!("{} job(s) from {}: {}{more}.", config.jobs.len(), code_span(file), names.join(", "))
    };
    if let Found::Invalid { file, errors } = r.head {
        let mut summary =
            format!("{} cannot be used:\n\n{}", code_span(file), FieldError::to_markdown_list(errors));
        if let Found::Valid { config, file: base_file, .. } = r.base {
            summary.push_str(&format!(
                "\n\nThe base branch's configuration gates {subject} instead: {}",
                jobs_of(base_file, config)
            ));
        }
        let title = format!("{} error(s) in {}", errors.len(), file);
        return completed(CheckConclusion::Failure, &title, summary, None);
    }
    let mut summary = String::new();
    let (conclusion, title) = if r.changes.is_empty() {
        match r.head {
            Found::Valid { config, file, .. } => {
                summary.push_str(&format!("{} is valid: {} job(s).", code_span(file), config.jobs.len()));
                (CheckConclusion::Success, "Configuration valid")
            }
            _ => {
                summary.push_str(
                    "This commit has neither `.eka-ci/config.json` nor the legacy `.ekaci/config.json`, so \
                     there is nothing to evaluate. See eka-ci's repository configuration documentation.",
                );
                (CheckConclusion::Neutral, "No configuration")
            }
        }
    } else {
        let who = if r.merge_group { "This merge queue entry" } else { "This pull request" };
        summary.push_str(&format!("{who} changes the repository configuration:\n\n"));
        for change in r.changes {
            summary.push_str(&format!("- {}\n", change_words(change, r.base, r.head)));
        }
        summary.push('\n');
        match (r.side, r.trusted_author) {
            (Side::Head, author) => summary.push_str(&format!(
                "The changed configuration gates {subject}: its author, {}, has write access to the \
                 repository.",
                escape_markdown(author.unwrap_or("a maintainer"))
            )),
            (Side::Base, _) if r.merge_group => summary.push_str(
                "A merge queue entry is gated by its base's configuration: the change is not used until it \
                 is merged.",
            ),
            (Side::Base, _) => summary.push_str(
                "The changed configuration is not used until it is merged or the pull request's author has \
                 write access to the repository (an approved user may run builds, not change what gates \
                 them): the base branch's configuration gates this pull request.",
            ),
        }
        summary.push_str("\n\n");
        match gating {
            Found::Valid { config, file, .. } => {
                summary.push_str(&format!("Evaluated on both commits: {}", jobs_of(file, config)));
                match r.side {
                    Side::Head => (CheckConclusion::Success, "Configuration valid (changed)"),
                    Side::Base => (CheckConclusion::Neutral, "Configuration change not used"),
                }
            }
            Found::Missing => {
                summary.push_str("There is no configuration to gate with, so nothing is evaluated.");
                match r.side {
                    Side::Head => (CheckConclusion::Neutral, "No configuration"),
                    Side::Base => (CheckConclusion::Neutral, "Configuration not used until merged"),
                }
            }
            Found::Invalid { file, errors } => {
                summary.push_str(&format!(
                    "The base branch's {} is invalid, so nothing is evaluated:\n\n{}",
                    code_span(file),
                    FieldError::to_markdown_list(errors)
                ));
                (CheckConclusion::Neutral, "Base configuration invalid")
            }
        }
    };
    if !r.cache_skips.is_empty() {
        summary.push_str("\n\nCaches skipped (the builds still run; their outputs are not pushed there):\n");
        for line in r.cache_skips {
            summary.push_str(&format!("- {line}\n"));
        }
    }
    if let Found::Valid { warnings, .. } = r.head {
        if !warnings.is_empty() {
            summary.push_str("\n\nWarnings:\n");
            for w in warnings {
                summary.push_str(&format!("- {}\n", escape_markdown(w)));
            }
        }
    }
    completed(conclusion, title, summary, None)
}

/// One configuration change as a list item.
fn change_words(change: &Change, base: &Found, head: &Found) -> String {
    let file = |f: &Found| match f {
        Found::Valid { file, .. } | Found::Invalid { file, .. } => code_span(file),
        Found::Missing => "the configuration".to_string(),
    };
    match change {
        Change::ConfigAdded => format!("adds {}", file(head)),
        Change::ConfigRemoved => format!("removes {}", file(base)),
        Change::ConfigRepaired => format!("replaces the base branch's invalid {}", file(base)),
        Change::JobAdded(job) => format!("adds job {}", code_span(job)),
        Change::JobRemoved(job) => format!("removes job {}", code_span(job)),
        Change::JobChanged { job, fields } => {
            let fields: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
            format!("changes job {}: {}", code_span(job), fields.join(", "))
        }
        Change::Section(section) => format!("changes `{section}`"),
    }
}

/// Creates or updates the check runs of one run, recording every id it gets.
pub(super) struct Reporter {
    store: Store,
    client: GitHubClient,
    installation: u64,
    key: String,
    repo: String,
    head_sha: String,
    /// The web UI page of the commit (`[web] public_url` + `/ui/commits/{sha}`): every check run's
    /// `details_url` that sets none of its own.
    details_url: String,
    /// Name → (id, completed), as recorded.
    known: std::cell::RefCell<Vec<(String, u64, bool)>>,
}

impl Reporter {
    pub(super) fn new(
        store: Store,
        client: GitHubClient,
        key: &str,
        run: &Run,
        public_url: &str,
    ) -> Reporter {
        Reporter {
            details_url: crate::web::ui::commit_url(public_url, &run.head_sha),
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

    pub(super) fn with_installation(mut self, installation: u64) -> Reporter {
        self.installation = installation;
        self
    }

    pub(super) fn known_checks(&self) -> Vec<String> {
        self.known.borrow().iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// Adopts check runs of this App on the head commit that the store does not know (created just
    /// before a crash), so they are updated instead of duplicated.
    pub(super) async fn adopt_existing(&self, app_id: &str) -> Result<(), RunError> {
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
    pub(super) async fn report(&self, name: &str, fields: CheckRunFields) -> Result<(), RunError> {
        let mut fields = cap_output(fields);
        if fields.details_url.is_none() {
            fields.details_url = Some(self.details_url.clone());
        }
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
    pub(super) async fn cancel_open(&self, run: &Run, reason: &str) -> Result<(), RunError> {
        let open: Vec<String> = run.checks.iter().filter(|c| !c.completed).map(|c| c.name.clone()).collect();
        for name in open {
            let summary = format!("Cancelled: {}.", escape_markdown(reason));
            self.report(&name, completed(CheckConclusion::Cancelled, "Cancelled", summary, None)).await?;
        }
        Ok(())
    }
}

/// A completed check run's fields.
pub(super) fn completed(
    conclusion: CheckConclusion,
    title: &str,
    summary: String,
    text: Option<String>,
) -> CheckRunFields {
    CheckRunFields {
        status: Some(CheckStatus::Completed),
        conclusion: Some(conclusion),
        completed_at: Some(crate::time::now_rfc3339()),
        output: Some(CheckRunOutput { title: prefix_chars(title, 200).to_string(), summary, text }),
        ..CheckRunFields::default()
    }
}

/// Keeps `output.summary` and `output.text` within GitHub's limit, cutting on a character boundary.
fn cap_output(mut fields: CheckRunFields) -> CheckRunFields {
    if let Some(output) = fields.output.as_mut() {
        const NOTE: &str = "\n\n_…truncated_";
        let limit = MAX_OUTPUT_CHARS - NOTE.chars().count();
        if output.summary.chars().count() > MAX_OUTPUT_CHARS {
            output.summary = format!("{}{NOTE}", text::prefix_chars(&output.summary, limit));
        }
        if let Some(text) = output.text.as_mut() {
            if text.chars().count() > MAX_OUTPUT_CHARS {
                // Log tails: the end matters most.
                *text = format!("_…truncated_\n\n{}", text::suffix_chars(text, limit));
            }
        }
    }
    fields
}

/// The gate's title and summary for one job.
pub(super) fn gate_text(job: &JobReview, not_listed: usize) -> (String, String) {
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
        let lines = failing.iter().map(|a| format!("{}: {}", code_span(&a.attr), verdict_words(a.verdict)));
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
            format!("{}: {}", code_span(&e.attr), escape_markdown(prefix_chars(last, 300)))
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

/// The gate of one job of a *wide* change (`[rebuild] max_rebuild_count`): evaluated and diffed, builds
/// skipped. Returns the title, the summary and whether the job fails (its evaluation failed or it has new
/// evaluation errors that are not allowed; nothing else can be known without building).
pub(super) fn wide_gate_text(
    job: &crate::jobset::diff::JobDiff,
    rebuilds: u64,
    max: usize,
) -> (String, String, bool) {
    let new_errors: Vec<_> = job.errors.iter().filter(|e| e.is_new()).collect();
    let eval_failed = matches!(job.head.state, crate::jobset::JobsetState::Failed { .. });
    let failed = eval_failed || (!new_errors.is_empty() && !job.head.allow_eval_failures);
    let mut s = format!(
        "This change rebuilds {rebuilds} derivation(s), more than the server's `[rebuild] max_rebuild_count` \
         ({max}): it is a **wide** change. It was evaluated and its change summary is reported \
         (`{SUMMARY_CHECK}`), but no package was built, so nothing here says whether it builds.\n\n"
    );
    if let crate::jobset::JobsetState::Failed { message } = &job.head.state {
        s.push_str(&format!("**The evaluation of this job failed:**\n\n```\n{}\n```\n\n", fence(message)));
    }
    s.push_str(&format!(
        "| added | changed | removed | unchanged | new evaluation errors |\n| ---: | ---: | ---: | ---: | ---: |\n| {} | {} | {} | {} | {} |\n",
        job.added.len(),
        job.changed.len(),
        job.removed.len(),
        job.unchanged,
        new_errors.len()
    ));
    if !new_errors.is_empty() {
        let allowed = if job.head.allow_eval_failures { " (allowed by `allow_eval_failures`)" } else { "" };
        s.push_str(&format!("\n**New evaluation errors{allowed}:**\n"));
        let lines = new_errors.iter().map(|e| {
            let last = e.head_error.as_deref().and_then(|m| m.lines().last()).unwrap_or("");
            format!("{}: {}", code_span(&e.attr), escape_markdown(prefix_chars(last, 300)))
        });
        push_bullets(&mut s, lines, new_errors.len(), 50);
    }
    let title = if eval_failed {
        "Evaluation failed (wide change, builds skipped)".to_string()
    } else if failed {
        format!("{} new evaluation error(s) (wide change, builds skipped)", new_errors.len())
    } else {
        format!("Wide change: {rebuilds} rebuilds, builds skipped")
    };
    (title, s, failed)
}

/// The summary of a change whose every path a `docs-only` or `no-op` change-set rule covers: the paths
/// and the kind of rule that covers each (at most 20 listed).
pub(super) fn no_rebuild_text(paths: &[(String, &'static str)]) -> String {
    const SHOWN: usize = 20;
    let mut s = format!(
        "Every path this change touches matches a `docs-only` or `no-op` rule of the repository's \
         `change_sets`, so no rebuild is expected: nothing was evaluated or built ({} path(s)):\n\n",
        paths.len()
    );
    let lines = paths.iter().map(|(p, kind)| format!("{} ({kind})", code_span(p)));
    push_bullets(&mut s, lines, paths.len(), SHOWN);
    s
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

pub(super) fn verdict_words(v: crate::pipeline::Verdict) -> &'static str {
    use crate::pipeline::Verdict::*;
    match v {
        AddedOk => "added, builds",
        AddedFailing => "added, fails to build",
        NewlyFailing => "built on the base, fails now",
        NewlySucceeding => "failed on the base, builds now",
        StillFailing => "fails on the base and here",
        StillOk => "builds",
        AddedNotBuilt => "added, not built",
        ChangedNotBuilt => "changed, not built",
    }
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
    fn gate_check_names() {
        assert_eq!(gate_check("main"), "EkaCI: Evaluate Job (main)");
    }
}
