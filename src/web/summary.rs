//! The change summary of a commit over HTTP: `GET /v1/commits/{sha}/package-changes`,
//! `/rebuild-impact`, `/change-summary` (JSON with the rendered markdown and each job's size check,
//! `sizes`) and `/change-summary.md`.
//!
//! Every route reads through [`crate::summary::for_commit`]: cached job summaries of the commit, and —
//! with `base_sha` — summaries computed on demand from stored, finished jobsets of both commits. Query
//! parameters are checked strictly (`base_sha`, `job`, and the limits `max_packages_listed` and
//! `max_top_blast_radius`, clamped to ten times their defaults); the limits shape what is listed, never
//! what is computed or cached. Errors are JSON bodies like every other route's.

use serde_json::{json, Value};

use super::drvs::echo;
use super::AppState;
use crate::summary::{self, ChangeSummary, JobSummary, Settings};

/// `max_packages_listed` when not given, and ten times it at most.
pub const DEFAULT_PACKAGES_LISTED: usize = 100;
pub const MAX_PACKAGES_LISTED: usize = 10 * DEFAULT_PACKAGES_LISTED;
/// `max_top_blast_radius` when not given, and ten times it at most.
pub const DEFAULT_TOP_BLAST_RADIUS: usize = 5;
pub const MAX_TOP_BLAST_RADIUS: usize = 10 * DEFAULT_TOP_BLAST_RADIUS;

/// What a summary route answers instead of its result.
#[derive(Debug, thiserror::Error)]
enum SummaryApiError {
    #[error("invalid commit `{input}`: expected a 40- or 64-character hexadecimal SHA")]
    BadSha { input: String },
    #[error("invalid query parameter `{param}`=`{value}`: {reason}")]
    BadQuery { param: &'static str, value: String, reason: &'static str },
    #[error("no change summary for commit {head}{against}{job}: {why}")]
    NoSummary { head: String, against: String, job: String, why: &'static str },
    /// Details go to the server log, not to the client.
    #[error("internal error while computing the change summary; see the server log")]
    Internal,
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
}

impl SummaryApiError {
    fn status(&self) -> u16 {
        match self {
            SummaryApiError::BadSha { .. } | SummaryApiError::BadQuery { .. } => 400,
            SummaryApiError::NoSummary { .. } => 404,
            SummaryApiError::Internal => 500,
            SummaryApiError::Auth(e) => e.status(),
        }
    }

    fn response(&self) -> tide::Response {
        super::auth::error_response(self.status(), &self.to_string())
    }
}

/// The request's parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    head: String,
    base: Option<String>,
    job: Option<String>,
    /// `None`: not given (the summary's own settings apply when rendering).
    max_packages_listed: Option<usize>,
    max_top_blast_radius: Option<usize>,
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn parse_sha(raw: &str) -> Result<String, SummaryApiError> {
    if is_sha(raw) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(SummaryApiError::BadSha { input: echo(raw) })
    }
}

/// A positive integer, clamped to `max`.
fn parse_limit(param: &'static str, value: &str, max: usize) -> Result<usize, SummaryApiError> {
    let bad = |reason| SummaryApiError::BadQuery { param, value: echo(value), reason };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected a positive integer"));
    }
    // More digits than fit is over the maximum anyway.
    let n = value.parse::<usize>().unwrap_or(max);
    if n == 0 {
        return Err(bad("expected a positive integer"));
    }
    Ok(n.min(max))
}

fn parse_query(sha: &str, pairs: Vec<(String, String)>) -> Result<Query, SummaryApiError> {
    let mut q = Query {
        head: parse_sha(sha)?,
        base: None,
        job: None,
        max_packages_listed: None,
        max_top_blast_radius: None,
    };
    for (k, v) in pairs {
        match k.as_str() {
            "base_sha" => {
                if !is_sha(&v) {
                    return Err(SummaryApiError::BadQuery {
                        param: "base_sha",
                        value: echo(&v),
                        reason: "expected a 40- or 64-character hexadecimal SHA",
                    });
                }
                q.base = Some(v.to_ascii_lowercase());
            }
            "job" => {
                if v.is_empty() {
                    return Err(SummaryApiError::BadQuery {
                        param: "job",
                        value: String::new(),
                        reason: "expected a job name",
                    });
                }
                q.job = Some(v);
            }
            "max_packages_listed" => {
                q.max_packages_listed = Some(parse_limit("max_packages_listed", &v, MAX_PACKAGES_LISTED)?)
            }
            "max_top_blast_radius" => {
                q.max_top_blast_radius = Some(parse_limit("max_top_blast_radius", &v, MAX_TOP_BLAST_RADIUS)?)
            }
            _ => {}
        }
    }
    Ok(q)
}

impl Query {
    /// The settings to present `job` with: its own, with the requested limits.
    fn settings_for(&self, base: &Settings) -> Settings {
        let mut s = base.clone();
        if let Some(n) = self.max_packages_listed {
            s.max_packages_listed = n;
        }
        if let Some(n) = self.max_top_blast_radius {
            s.max_top_blast_radius = n;
        }
        s
    }

    fn packages_listed(&self, job: &JobSummary) -> usize {
        self.max_packages_listed.unwrap_or(job.settings.max_packages_listed)
    }

    fn top_listed(&self, job: &JobSummary) -> usize {
        self.max_top_blast_radius.unwrap_or(job.settings.max_top_blast_radius)
    }
}

/// Looks the summary up (blocking work off the executor), or says why there is none.
///
/// A caller without a token gets only cached summaries (nothing is computed for it), and only of a
/// public repository: anything else answers 401, whether it exists or not.
async fn lookup(req: &tide::Request<AppState>) -> Result<(Query, ChangeSummary), SummaryApiError> {
    let caller = super::auth::caller(req).await?;
    let state = req.state();
    if caller.is_anonymous() {
        // `public_read = false` refuses before anything is read.
        caller.read(state, true)?;
    }
    let sha = req.param("sha").unwrap_or_default().to_string();
    let pairs = req.url().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let q = parse_query(&sha, pairs)?;
    let (store, jobsets, graph) = (state.store.clone(), state.jobsets.clone(), state.graph.clone());
    let (head, base, job) = (q.head.clone(), q.base.clone(), q.job.clone());
    let anonymous = caller.is_anonymous();
    let found = smol::unblock(move || {
        if anonymous {
            return summary::cached_for_commit(&store, &head, base.as_deref(), job.as_deref());
        }
        summary::for_commit(
            &store,
            &jobsets,
            &graph,
            &head,
            base.as_deref(),
            job.as_deref(),
            &Settings::default(),
        )
    })
    .await;
    if anonymous {
        let public = match &found {
            Ok(Some(s)) if !s.jobs.is_empty() => super::auth::repo_is_public(state, &s.repo).await,
            _ => false,
        };
        caller.read(state, public)?;
    }
    match found {
        Ok(Some(s)) if !s.jobs.is_empty() => Ok((q, s)),
        Ok(_) => Err(SummaryApiError::NoSummary {
            head: q.head.clone(),
            against: q.base.as_deref().map(|b| format!(" against base {b}")).unwrap_or_default(),
            job: q.job.as_deref().map(|j| format!(" for job `{}`", echo(j))).unwrap_or_default(),
            why: if q.base.is_some() {
                "no finished evaluations of both commits are stored"
            } else {
                "none has been computed yet (pass base_sha to compute one from stored evaluations)"
            },
        }),
        Err(e) => {
            tracing::error!(error = %e, head = %q.head, "HTTP API: computing a change summary failed");
            Err(SummaryApiError::Internal)
        }
    }
}

/// A job's package changes, at most `limit` of them listed.
fn package_changes_json(job: &JobSummary, limit: usize) -> Value {
    let listed: Vec<_> = job.changes.iter().take(limit).collect();
    json!({
        "job": job.job,
        "base_sha": job.base_sha,
        "counts": job.counts,
        "changes_total": job.changes.len(),
        "changes_listed": listed.len(),
        "changes": listed,
    })
}

/// A job's rebuild impact, at most `limit` blast radii listed.
fn rebuild_impact_json(job: &JobSummary, limit: usize) -> Value {
    let i = &job.impact;
    let top: Vec<_> = i.top.iter().take(limit).collect();
    json!({
        "job": job.job,
        "base_sha": job.base_sha,
        "per_system": i.per_system,
        "per_kernel": i.per_kernel,
        "blast_radius_computed": i.blast_radius_computed,
        "rebuilds": i.rebuilds,
        "hidden_aliases": i.hidden_aliases,
        "aliases_known": i.aliases_known,
        "changed_drvs": i.changed_drvs,
        "must_rebuild": i.must_rebuild,
        "top_blast_radius": top,
    })
}

fn header(s: &ChangeSummary) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("repo".into(), json!(s.repo));
    m.insert("head_sha".into(), json!(s.head_sha));
    m.insert("base_sha".into(), json!(s.base_sha));
    m
}

fn ok_json(body: serde_json::Map<String, Value>) -> tide::Response {
    tide::Response::builder(200).body(Value::Object(body)).build()
}

/// The summary with every job's lists cut to the requested limits, and its rendering.
fn limited(q: &Query, s: &ChangeSummary) -> (ChangeSummary, summary::Rendered) {
    let mut shown = s.clone();
    for job in &mut shown.jobs {
        let top = q.top_listed(job);
        job.impact.top.truncate(top);
    }
    let settings = q.settings_for(&s.jobs.first().map(|j| j.settings.clone()).unwrap_or_default());
    let rendered = summary::render(s, &settings);
    (shown, rendered)
}

async fn package_changes(req: tide::Request<AppState>) -> Result<tide::Response, SummaryApiError> {
    let (q, s) = lookup(&req).await?;
    let mut body = header(&s);
    let jobs: Vec<Value> = s.jobs.iter().map(|j| package_changes_json(j, q.packages_listed(j))).collect();
    body.insert("jobs".into(), Value::Array(jobs));
    Ok(ok_json(body))
}

async fn rebuild_impact(req: tide::Request<AppState>) -> Result<tide::Response, SummaryApiError> {
    let (q, s) = lookup(&req).await?;
    let mut body = header(&s);
    let jobs: Vec<Value> = s.jobs.iter().map(|j| rebuild_impact_json(j, q.top_listed(j))).collect();
    body.insert("jobs".into(), Value::Array(jobs));
    Ok(ok_json(body))
}

async fn change_summary(req: tide::Request<AppState>) -> Result<tide::Response, SummaryApiError> {
    let (q, s) = lookup(&req).await?;
    let (shown, rendered) = limited(&q, &s);
    let mut body = header(&s);
    let jobs: Vec<Value> = shown
        .jobs
        .iter()
        .map(|j| {
            let mut v = serde_json::to_value(j).unwrap_or(Value::Null);
            let limit = q.packages_listed(j);
            if let Some(obj) = v.as_object_mut() {
                obj.insert("changes_total".into(), json!(j.changes.len()));
                let listed: Vec<_> = j.changes.iter().take(limit).collect();
                obj.insert("changes_listed".into(), json!(listed.len()));
                obj.insert("changes".into(), json!(listed));
                // What the job's size check found (`null` without a measured `size_check`).
                obj.insert("sizes".into(), json!(summary::sizes::of_job(&s, j)));
            }
            v
        })
        .collect();
    body.insert("jobs".into(), Value::Array(jobs));
    body.insert("markdown".into(), json!(rendered.markdown));
    body.insert("truncation".into(), json!(rendered.truncation));
    Ok(ok_json(body))
}

async fn change_summary_md(req: tide::Request<AppState>) -> Result<tide::Response, SummaryApiError> {
    let (q, s) = lookup(&req).await?;
    let (_, rendered) = limited(&q, &s);
    let mut res = tide::Response::new(200);
    res.set_body(rendered.markdown);
    res.set_content_type("text/markdown; charset=utf-8");
    Ok(res)
}

fn respond(result: Result<tide::Response, SummaryApiError>) -> tide::Result {
    Ok(result.unwrap_or_else(|e| e.response()))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/commits/:sha/package-changes")
        .get(|req: tide::Request<AppState>| async move { respond(package_changes(req).await) });
    app.at("/v1/commits/:sha/rebuild-impact")
        .get(|req: tide::Request<AppState>| async move { respond(rebuild_impact(req).await) });
    app.at("/v1/commits/:sha/change-summary")
        .get(|req: tide::Request<AppState>| async move { respond(change_summary(req).await) });
    app.at("/v1/commits/:sha/change-summary.md")
        .get(|req: tide::Request<AppState>| async move { respond(change_summary_md(req).await) });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn shas_and_limits() {
        let sha = "A".repeat(40);
        let q = parse_query(&sha, pairs(&[("max_packages_listed", "5000"), ("max_top_blast_radius", "7")]))
            .expect("valid");
        assert_eq!(q.head, "a".repeat(40));
        assert_eq!((q.max_packages_listed, q.max_top_blast_radius), (Some(1000), Some(7)));
        let q = parse_query(&"b".repeat(64), pairs(&[("max_top_blast_radius", "99999999999999999999999")]))
            .expect("valid");
        assert_eq!(q.max_top_blast_radius, Some(50));
        for bad in ["", "abc", &"g".repeat(40), &"a".repeat(39), &"a".repeat(41)] {
            assert!(matches!(parse_query(bad, vec![]), Err(SummaryApiError::BadSha { .. })), "{bad}");
        }
        for (k, v) in
            [("max_packages_listed", "0"), ("max_top_blast_radius", "x"), ("base_sha", "abc"), ("job", "")]
        {
            let err = parse_query(&sha, pairs(&[(k, v)])).expect_err("invalid");
            assert_eq!(err.status(), 400, "{k}={v}");
            assert!(err.to_string().contains(&format!("`{k}`")), "{err}");
        }
    }
}
