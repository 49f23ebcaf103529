//! The dashboard (`/ui/`), the repository page (`/ui/repos/{owner}/{name}`: its pull requests and the
//! base branches they target, each with its latest run's verdict) and the commit page (`/ui/commits/{sha}`, where check runs link): what a
//! pull request's head evaluated to, per job the verdict and why (newly failing attributes with log
//! tails, new evaluation errors, added/removed/changed counts), the change summary and size check as HTML tables,
//! repository checks and links to the GitHub check runs. Jobs are compared with the base of the pull
//! request's run, or with `?base=<sha>` (a local `ekaci review`).

use std::collections::HashMap;

use maud::{html, Markup};

use super::{badge, commit_href, drv_href, drv_name, duration, jobset_href, layout, log_href};
use crate::forge::github::runs::{self, Run, RunState, Trigger};
use crate::jobset::{diff::JobDiff, Jobset, JobsetState};
use crate::scheduler::state::{now_ms, DrvState, Reader};
use crate::summary::ChangeSummary;
use crate::web::drvs::{echo, ApiError};
use crate::web::jobsets::{states_of_paths, PageError};
use crate::web::AppState;

/// Runs listed on the dashboard.
const RECENT_RUNS: usize = 30;
/// Newly failing attributes shown with a log tail, per job.
const TAILS_SHOWN: usize = 10;
/// Lines of each log tail.
const TAIL_LINES: usize = 15;
/// Package changes listed per job.
const CHANGES_LISTED: usize = 100;

fn run_state(state: &RunState) -> (&'static str, String) {
    match state {
        RunState::Queued { .. } => ("queued", String::new()),
        RunState::AwaitingApproval => ("awaiting-approval", "held until a maintainer approves".into()),
        RunState::Done { outcome } => ("failed", outcome.clone()),
        RunState::Passed { outcome } => ("passed", outcome.clone()),
        RunState::Cancelled { reason } => ("cancelled", reason.clone()),
    }
}

/// A run's verdict: its badge and, muted, why.
fn verdict(run: &Run) -> Markup {
    let (name, why) = run_state(&run.state);
    html! { (badge(name)) " " span.muted { (why) } }
}

/// A link to a commit's page, showing its short SHA.
fn commit_link(sha: &str) -> Markup {
    html! { a.mono href=(commit_href(sha)) { (crate::text::short_sha(sha)) } }
}

fn trigger(run: &Run) -> String {
    match &run.trigger {
        Trigger::PullRequest { number, .. } => format!("#{number}"),
        Trigger::MergeGroup { head_ref, .. } => format!("merge queue {head_ref}"),
    }
}

pub(super) async fn dashboard(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    let viewer = super::login::viewer(&req).await?;
    let state = req.state();
    if viewer.needs_visibility() && viewer.user.is_none() {
        viewer.caller.read_listing(state)?;
    }
    // Listings show a viewer who does not read everything only public data.
    let anonymous = viewer.needs_visibility();
    let (builds, depths) = crate::web::builds::read_active(state, anonymous).await?;
    let (store, jobsets) = (state.store.clone(), state.jobsets.clone());
    let (mut recent, evaluating) = smol::unblock(move || {
        let mut all = runs::all(&store)?;
        all.sort_by_key(|r| std::cmp::Reverse(r.1.updated_at));
        let evaluating: Vec<Jobset> =
            jobsets.all()?.into_iter().filter(|j| j.state == JobsetState::Evaluating).collect();
        Ok::<_, crate::store::StoreError>((all, evaluating))
    })
    .await
    .map_err(|e| ApiError::store("reading runs and jobsets", e))?;
    let mut shown_evals = Vec::new();
    for j in evaluating {
        if !anonymous || crate::web::auth::repo_is_public(state, &j.key.repo).await {
            shown_evals.push(j);
        }
    }
    let mut shown_runs = Vec::new();
    for (_, run) in recent.drain(..) {
        if shown_runs.len() == RECENT_RUNS {
            break;
        }
        if !anonymous || crate::web::auth::repo_is_public(state, &run.clone_url).await {
            shown_runs.push(run);
        }
    }
    let now = now_ms();
    Ok(layout(
        Some(&viewer),
        "Dashboard",
        html! {
            h2 { "Queues" }
            table id="queues" {
                tr { th { "system" } th { "queued" } th { "buildable" } th { "building" } }
                @for d in &depths {
                    tr { td.mono { (d.system) } td { (d.queued) } td { (d.buildable) } td { (d.building) } }
                }
                @if depths.is_empty() { tr { td colspan="4" .muted { "nothing pending" } } }
            }
            h2 { "Active builds" }
            table id="active" {
                tr { th { "derivation" } th { "builder" } th { "attempt" } th { "elapsed" } }
                @for b in &builds {
                    tr {
                        td { a href=(drv_href(&b.drv)) { (drv_name(&b.drv)) } }
                        td.mono { (b.builder) }
                        td { a href=(log_href(&b.drv, b.attempt)) { "log " (b.attempt) } }
                        td.elapsed data-started-ms=(b.started_at_ms) {
                            (duration(now.saturating_sub(b.started_at_ms) / 1000))
                        }
                    }
                }
                @if builds.is_empty() { tr { td colspan="4" .muted { "no build running" } } }
            }
            h2 { "Recent pull requests" }
            table id="runs" {
                tr { th { "repository" } th { "trigger" } th { "head" } th { "verdict" } th { "updated" } }
                @for r in &shown_runs {
                    tr {
                        td { a href=(repo_href(&r.repo)) { (r.repo) } } td { (trigger(r)) }
                        td { (commit_link(&r.head_sha)) }
                        td { (verdict(r)) }
                        td { (crate::time::readable(r.updated_at)) }
                    }
                }
                @if shown_runs.is_empty() { tr { td colspan="5" .muted { "no pull request seen yet" } } }
            }
            h2 { "Evaluations in progress" }
            table id="evaluations" {
                tr { th { "jobset" } th { "repository" } th { "commit" } th { "job" } th { "attributes so far" } }
                @for j in &shown_evals {
                    tr {
                        td { a href=(jobset_href(j.id)) { (j.id.0) } }
                        td.mono { (j.key.repo) }
                        td.mono { a href=(commit_href(&j.key.commit)) { (crate::text::short_sha(&j.key.commit)) } }
                        td { (j.key.job_name()) }
                        td { (j.derivations + j.errors) }
                    }
                }
                @if shown_evals.is_empty() { tr { td colspan="5" .muted { "none" } } }
            }
            script { (maud::PreEscaped(ELAPSED_JS)) }
            (super::live::hook(&serde_json::json!([{ "all": true }]), &["queues", "active", "runs", "evaluations"]))
        },
    ))
}

/// The repository page of `owner/name`.
pub(super) fn repo_href(full: &str) -> String {
    match full.split_once('/') {
        Some((o, n)) => format!("/ui/repos/{}/{}", super::segment(o), super::segment(n)),
        None => format!("/ui/repos/{}", super::segment(full)),
    }
}

pub(super) async fn repository(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    let viewer = super::login::viewer(&req).await?;
    let state = req.state();
    let full =
        format!("{}/{}", req.param("owner").unwrap_or_default(), req.param("name").unwrap_or_default());
    let store = state.store.clone();
    let wanted = full.to_ascii_lowercase();
    let mut runs: Vec<Run> = smol::unblock(move || runs::all(&store))
        .await
        .map_err(|e| ApiError::store("reading runs", e))?
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.repo.to_ascii_lowercase() == wanted)
        .collect();
    let mut repos: Vec<String> = runs.iter().map(|r| r.clone_url.clone()).collect();
    repos.sort();
    repos.dedup();
    if viewer.needs_visibility() {
        let mut public = !repos.is_empty();
        for repo in &repos {
            public = public && crate::web::auth::repo_is_public(state, repo).await;
        }
        viewer.read(state, public, &repos).await?;
    }
    if runs.is_empty() {
        return Err(ApiError::UnknownRepo { repo: echo(&full) });
    }
    runs.sort_by_key(|r| std::cmp::Reverse(r.updated_at));
    let mut pulls: Vec<&Run> = Vec::new();
    let mut branches: Vec<&Run> = Vec::new();
    for r in &runs {
        if !pulls.iter().any(|p| trigger(p) == trigger(r)) {
            pulls.push(r);
        }
        if !branches.iter().any(|b| b.base_ref == r.base_ref) {
            branches.push(r);
        }
    }
    let name = runs[0].repo.clone();
    Ok(layout(
        Some(&viewer),
        &name,
        html! {
            h2 { "Pull requests" }
            table id="pulls" {
                tr { th { "pull request" } th { "base" } th { "head" } th { "verdict" } th { "updated" } }
                @for r in &pulls {
                    tr {
                        td { (trigger(r)) } td.mono { (r.base_ref) }
                        td { (commit_link(&r.head_sha)) }
                        td { (verdict(r)) }
                        td { (crate::time::readable(r.updated_at)) }
                    }
                }
            }
            h2 { "Base branches" }
            p.muted { "Each branch pull requests target, with the latest run proposed to it." }
            table id="branches" {
                tr { th { "branch" } th { "latest run" } th { "verdict" } }
                @for r in &branches {
                    tr {
                        td.mono { (r.base_ref) }
                        td { (trigger(r)) " " (commit_link(&r.head_sha)) }
                        td { (verdict(r)) }
                    }
                }
            }
        },
    ))
}

/// Keeps the elapsed times of active builds ticking without a reload.
const ELAPSED_JS: &str =
    "setInterval(function(){document.querySelectorAll('td.elapsed').forEach(function(td){\
var s=Math.max(0,Math.floor((Date.now()-Number(td.dataset.startedMs))/1000)),h=Math.floor(s/3600),\
m=Math.floor(s%3600/60),p=function(n){return n<10?'0'+n:''+n};td.textContent=h?h+'h '+p(m)+'m '+p(s%60)+'s':\
m?m+'m '+p(s%60)+'s':s%60+'s';});},1000);";

/// One failing head derivation of a job, with the tail of its log.
struct Failing {
    attr: String,
    drv: String,
    state: DrvState,
    /// The base side's state, when the attribute existed there.
    base: Option<String>,
    /// Whether base had no failing build of it (a new attribute, or a base that built or never ran).
    newly: bool,
    attempt: u32,
    tail: Vec<String>,
}

/// One job of the commit: its head jobset, the diff against the base when both are stored, and the
/// states of the head derivations that were to be built.
struct JobView {
    head: Jobset,
    diff: Option<JobDiff>,
    failing: Vec<Failing>,
    built: HashMap<&'static str, usize>,
}

/// Everything stored about a commit.
struct CommitData {
    runs: Vec<Run>,
    jobs: Vec<JobView>,
    checks: Vec<crate::checks::results::StoredCheck>,
    summary: Option<ChangeSummary>,
}

/// Reads what is stored about commit `sha`; each job is compared with `base` when given, else with the
/// base of the run of its repository.
fn read_commit(state: &AppState, sha: &str, asked_base: Option<&str>) -> Result<CommitData, PageError> {
    let store = &state.store;
    let runs: Vec<Run> =
        runs::all(store)?.into_iter().map(|(_, r)| r).filter(|r| r.head_sha == sha).collect();
    let heads: Vec<Jobset> = state.jobsets.all()?.into_iter().filter(|j| j.key.commit == sha).collect();
    let reader = Reader::new(store)?;
    let mut jobs = Vec::new();
    for head in heads {
        let base = asked_base
            .map(str::to_string)
            .or_else(|| runs.iter().find(|r| r.clone_url == head.key.repo).map(|r| r.base_sha.clone()));
        let base = match base {
            Some(b) => state.jobsets.find(&crate::jobset::JobsetKey {
                repo: head.key.repo.clone(),
                commit: b,
                job: head.key.job.clone(),
            })?,
            None => None,
        };
        let diff = match base {
            Some(b) if b.state != JobsetState::Evaluating && head.state != JobsetState::Evaluating => {
                Some(crate::jobset::diff::diff(&state.jobsets, b.id, head.id)?)
            }
            _ => None,
        };
        let (mut failing, mut built) = (Vec::new(), HashMap::new());
        if let Some(d) = &diff {
            let heads: Vec<String> = d.to_build().filter_map(|c| c.head_drv.clone()).collect();
            let bases: Vec<String> = d.changed.iter().filter_map(|c| c.base_drv.clone()).collect();
            let head_states = states_of_paths(&state.graph, &reader, heads)?;
            let base_states = states_of_paths(&state.graph, &reader, bases)?;
            for c in d.to_build() {
                let Some(drv) = &c.head_drv else { continue };
                let s = head_states.get(drv);
                *built.entry(s.map_or("none", |s| s.name())).or_insert(0) += 1;
                if let Some(s) = s.filter(|s| s.is_failed()) {
                    let base_state = c.base_drv.as_ref().map(|b| base_states.get(b));
                    let newly = !base_state.flatten().is_some_and(|b| b.is_failed());
                    let base = base_state.map(|b| b.map_or("none", |s| s.name()).to_string());
                    failing.push(Failing {
                        attr: c.attr.clone(),
                        drv: drv.clone(),
                        state: s.clone(),
                        base,
                        newly,
                        attempt: 0,
                        tail: Vec::new(),
                    });
                }
            }
        }
        jobs.push(JobView { head, diff, failing, built });
    }
    let checks = crate::checks::results::for_commit(store, sha)?;
    let summary = crate::summary::cached_for_commit(store, sha, None, None).unwrap_or_else(|e| {
        tracing::warn!(error = %e, commit = %sha, "web UI: reading the change summary failed");
        None
    });
    Ok(CommitData { runs, jobs, checks, summary })
}

/// The last `n` lines of the latest attempt's log of `drv`.
async fn log_tail(state: &AppState, drv: &str) -> Option<(u32, Vec<String>)> {
    use futures_lite::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut log = crate::web::logs::open_log(state, drv, None).await.ok()?;
    let from = log.len.saturating_sub(16 * 1024);
    log.file.seek(std::io::SeekFrom::Start(from)).await.ok()?;
    let mut bytes = Vec::new();
    (&mut log.file).take(log.len - from).read_to_end(&mut bytes).await.ok()?;
    let text = crate::text::ansi::strip_ansi(&String::from_utf8_lossy(&bytes));
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let skip = lines.len().saturating_sub(TAIL_LINES);
    Some((log.attempt, lines.into_iter().skip(skip).collect()))
}

pub(in crate::web) fn parse_sha(param: &'static str, raw: &str) -> Result<String, ApiError> {
    if (raw.len() == 40 || raw.len() == 64) && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::BadQuery {
            param,
            value: echo(raw),
            reason: "expected a 40- or 64-character hexadecimal SHA",
        })
    }
}

pub(super) async fn commit(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    let viewer = super::login::viewer(&req).await?;
    let state = req.state();
    if viewer.needs_visibility() && viewer.user.is_none() {
        // `public_read = false` refuses an anonymous browser before anything is read.
        viewer.caller.read(state, true)?;
    }
    let sha = parse_sha("sha", req.param("sha").unwrap_or_default())?;
    let mut base = None;
    for (k, v) in req.url().query_pairs() {
        if k == "base" {
            base = Some(parse_sha("base", &v)?);
        }
    }
    let (s, c) = (state.clone(), sha.clone());
    let mut data = smol::unblock(move || read_commit(&s, &c, base.as_deref())).await?;
    let known = !data.runs.is_empty() || !data.jobs.is_empty() || !data.checks.is_empty();
    if viewer.needs_visibility() {
        let mut repos: Vec<String> = data
            .runs
            .iter()
            .map(|r| r.clone_url.clone())
            .chain(data.jobs.iter().map(|j| j.head.key.repo.clone()))
            .chain(data.checks.iter().map(|c| c.repo.clone()))
            .collect();
        repos.sort();
        repos.dedup();
        let mut public = known;
        for repo in &repos {
            public = public && crate::web::auth::repo_is_public(state, repo).await;
        }
        viewer.read(state, public, &repos).await?;
    }
    if !known {
        return Err(ApiError::UnknownCommit { commit: sha });
    }
    for job in &mut data.jobs {
        for f in job.failing.iter_mut().take(TAILS_SHOWN) {
            if let Some((attempt, tail)) = log_tail(state, &f.drv).await {
                (f.attempt, f.tail) = (attempt, tail);
            }
        }
    }
    Ok(layout(
        Some(&viewer),
        &format!("Commit {}", crate::text::short_sha(&sha)),
        render_commit(state, &viewer, &sha, &data),
    ))
}

fn render_commit(state: &AppState, viewer: &super::login::Viewer, sha: &str, data: &CommitData) -> Markup {
    html! {
        p.mono { (sha) }
        @if !data.runs.is_empty() {
            h2 { "Pull request runs" }
            table id="runs" {
                tr { th { "repository" } th { "trigger" } th { "base" } th { "verdict" } th { "check runs on GitHub" } }
                @for r in &data.runs {
                    tr {
                        td { a href=(repo_href(&r.repo)) { (r.repo) } } td { (trigger(r)) }
                        td.mono { (r.base_ref) " " (crate::text::short_sha(&r.base_sha)) }
                        td { (verdict(r)) " " (super::admin::approve_button(viewer, r)) }
                        td {
                            @for c in &r.checks {
                                a.checkrun href=(format!("{}/{}/runs/{}", state.github_web, r.repo, c.id)) { (c.name) }
                                br;
                            }
                        }
                    }
                }
            }
        }
        div id="jobs" { @for job in &data.jobs { (render_job(job, data.summary.as_ref())) } }
        (super::live::hook(&serde_json::json!([{ "commit": sha }]), &["runs", "jobs"]))
        @if !data.checks.is_empty() {
            h2 { "Repository checks" }
            table id="checks" {
                tr { th { "check" } th { "result" } th { "output" } }
                @for c in &data.checks {
                    tr {
                        td { (c.report.name) }
                        td { (badge(if c.report.passed() { "success" } else { "failure" })) " " (c.report.summary()) }
                        td {
                            pre.log.tail { (c.report.tail) }
                            @if c.report.output_file.is_some() {
                                a href=(format!("/v1/commits/{sha}/checks/{}/output", super::segment(&c.report.name))) { "whole output" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn render_job(job: &JobView, summary: Option<&ChangeSummary>) -> Markup {
    let h = &job.head;
    let verdict = match (&h.state, &job.diff) {
        (JobsetState::Evaluating, _) => "evaluating",
        (JobsetState::Failed { .. }, _) => "failed",
        _ if h.eval_failed() || !job.failing.is_empty() => "failure",
        _ if job.built.keys().any(|k| matches!(*k, "queued" | "buildable" | "building" | "failed-retry")) => {
            "building"
        }
        _ => "success",
    };
    let js = summary.and_then(|s| s.jobs.iter().find(|j| j.job == h.key.job_name()));
    html! {
        section.job id={ "job-" (h.key.job_name()) } {
            h2 { "Job " (h.key.job_name()) " " (badge(verdict)) }
            p {
                a href=(jobset_href(h.id)) { "jobset " (h.id.0) } " · "
                (h.derivations) " derivations, " (h.errors) " evaluation errors"
                @if let JobsetState::Failed { message } = &h.state { br; span.error { (message) } }
            }
            p.live-counts data-counts-jobset=(h.id.0) {}
            @if let Some(d) = &job.diff {
                p.counts {
                    "against " span.mono { (crate::text::short_sha(&d.base.key.commit)) } ": "
                    (d.added.len()) " added, " (d.removed.len()) " removed, " (d.changed.len()) " changed, "
                    (d.unchanged) " unchanged"
                }
                @if !job.built.is_empty() {
                    p { "builds: " @for (k, v) in &job.built { (badge(k)) " " (v) " " } }
                }
                @if !job.failing.is_empty() {
                    h3 { "Failing" }
                    table.failing {
                        tr { th { "attribute" } th { "state" } th { "on base" } th { "log tail" } }
                        @for f in &job.failing {
                            tr {
                                td { a href=(drv_href(&f.drv)) { (f.attr) } }
                                td { (badge(f.state.name())) @if f.newly { " " strong.newly { "newly failing" } } }
                                td { (f.base.as_deref().unwrap_or("new attribute")) }
                                td {
                                    @if f.attempt > 0 {
                                        pre.log.tail { @for l in &f.tail { (l) "\n" } }
                                        a.loglink href=(log_href(&f.drv, f.attempt)) { "full log" }
                                    }
                                }
                            }
                        }
                    }
                }
                @let new_errors: Vec<_> = d.errors.iter().filter(|e| e.is_new()).collect();
                @if !new_errors.is_empty() {
                    h3 { "New evaluation errors" }
                    table.evalerrors {
                        tr { th { "attribute" } th { "error" } }
                        @for e in &new_errors {
                            tr { td.mono { (e.attr) } td { pre { (e.head_error.as_deref().unwrap_or("")) } } }
                        }
                    }
                }
            } @else {
                p.muted { "No base evaluation is stored for this commit's job: nothing to compare against." }
            }
            @if let Some(js) = js { (render_summary(js)) }
            @if let Some(sizes) = summary.zip(js).and_then(|(s, js)| crate::summary::sizes::of_job(s, js)) {
                (render_sizes(sizes))
            }
        }
    }
}

/// A job's size check: the sizes that grew over its limit and the runtime dependency changes.
fn render_sizes(s: &crate::sizes::SizeSummary) -> Markup {
    use crate::sizes::{human_bytes, signed_percent};
    html! {
        h3 { "Size check" }
        p.sizes {
            (s.increases.len()) " attributes grew by more than " (s.max_increase_percent) " % against "
            @match &s.base_branch {
                Some(b) => { "the newest sizes on " span.mono { (b) } }
                None => { "the base commit" }
            }
            " (" (s.measured) " measured, " (s.compared) " compared); " (s.dependencies.len())
            " changed attributes with runtime dependency changes"
        }
        @if !s.increases.is_empty() {
            table.size-increases {
                tr {
                    th { "attribute" } th { "NAR before" } th { "NAR after" } th { "NAR change" }
                    th { "closure before" } th { "closure after" } th { "closure change" }
                }
                @for i in s.increases.iter().take(CHANGES_LISTED) {
                    tr {
                        td.mono { (i.attr) }
                        td { (human_bytes(i.nar_before)) } td { (human_bytes(i.nar_after)) }
                        td { (signed_percent(i.nar_change_percent)) }
                        td { (human_bytes(i.closure_before)) } td { (human_bytes(i.closure_after)) }
                        td { (signed_percent(i.closure_change_percent)) }
                    }
                }
            }
            @if s.increases.len() > CHANGES_LISTED {
                p.muted { (s.increases.len() - CHANGES_LISTED) " more increases not listed" }
            }
        }
        @if !s.dependencies.is_empty() {
            table.dependency-changes {
                tr { th { "attribute" } th { "runtime dependencies" } }
                @for d in s.dependencies.iter().take(CHANGES_LISTED) {
                    tr { td.mono { (d.attr) } td { @for c in &d.changes { span.mono { (c.describe()) } " " } } }
                }
            }
            @if s.dependencies.len() > CHANGES_LISTED {
                p.muted { (s.dependencies.len() - CHANGES_LISTED) " more attributes not listed" }
            }
        }
    }
}

fn render_summary(js: &crate::summary::JobSummary) -> Markup {
    use crate::summary::PackageChangeKind;
    html! {
        h3 { "Change summary" }
        table.summary-counts {
            tr { @for k in PackageChangeKind::ALL { th { (k.as_str()) } } }
            tr { @for k in PackageChangeKind::ALL { td { (js.counts.get(k)) } } }
        }
        @if !js.impact.per_system.is_empty() {
            table.rebuilds {
                tr { th { "system" } th { "rebuilds (attributes)" } th { "rebuilt derivations" } th { "must rebuild (derivations, with dependents)" } }
                @for s in &js.impact.per_system {
                    tr { td.mono { (s.system) } td { (s.rebuilds) " (" (s.bucket.label()) ")" } td { (s.rebuilt_drvs) } td { (s.must_rebuild) } }
                }
            }
        }
        @if !js.changes.is_empty() {
            table.changes {
                tr { th { "attribute" } th { "system" } th { "kinds" } th { "version" } }
                @for c in js.changes.iter().take(CHANGES_LISTED) {
                    tr {
                        td.mono { (c.attr) } td.mono { (c.system) }
                        td { @for k in &c.kinds { (k.as_str()) " " } }
                        td { (c.base_version.as_deref().unwrap_or("–")) " → " (c.head_version.as_deref().unwrap_or("–")) }
                    }
                }
            }
            @if js.changes.len() > CHANGES_LISTED {
                p.muted { (js.changes.len() - CHANGES_LISTED) " more changes not listed" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sizes::{DepChange, DependencyChanges, SizeIncrease, SizeSummary};

    #[test]
    fn a_size_check_renders_its_increases_and_dependency_changes_escaped() {
        let s = SizeSummary {
            job: "main".into(),
            base_sha: "b".repeat(40),
            head_sha: "h".repeat(40),
            base_branch: Some("master".into()),
            max_increase_percent: 10.0,
            measured: 7,
            compared: 5,
            no_baseline: 2,
            increases: vec![SizeIncrease {
                attr: "pkgs.<script>".into(),
                nar_before: 1024,
                nar_after: 4096,
                nar_change_percent: Some(300.0),
                closure_before: 2048,
                closure_after: 2048 * 1024,
                closure_change_percent: None,
            }],
            dependencies: vec![DependencyChanges {
                attr: "hello".into(),
                changes: vec![DepChange::Added { name: "zlib".into(), version: "1.3".into() }],
            }],
            computed_at: 0,
        };
        let html = render_sizes(&s).into_string();
        assert!(html.contains("1 attributes grew by more than 10 % against the newest sizes on"), "{html}");
        assert!(html.contains("(7 measured, 5 compared); 1 changed attributes"), "{html}");
        assert!(html.contains("<td class=\"mono\">pkgs.&lt;script&gt;</td>"), "{html}");
        assert!(html.contains("<td>1.0 KiB</td><td>4.0 KiB</td><td>+300.0 %</td>"), "{html}");
        assert!(html.contains("<td>new</td>"), "{html}");
        assert!(html.contains("+ zlib-1.3"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
    }
}
