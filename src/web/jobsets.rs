//! `GET /v1/jobsets/{id}?limit=N&after=<attr>`: a jobset's header and a page of its attributes, each
//! with its derivation and that derivation's current build state.
//!
//! A page holds at most `limit` attributes (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]);
//! `next_after` names the attribute to pass as `after` for the next page. Build states are the committed
//! ones, read from the store with the page in one blocking call: paging never costs the scheduler loop
//! anything. Without a token, only jobsets of public repositories are served (see `web::auth`).

use serde_json::{json, Value};

use std::collections::HashMap;

use super::drvs::{echo, ok_json, respond, state_json, ApiError};
use super::AppState;
use crate::jobset::{AttrOutcome, JobsetId, JobsetState};
use crate::scheduler::state::{DrvState, Reader};
use crate::store::StoreError;

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;

/// The paging parameters of the query.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    limit: usize,
    after: Option<String>,
}

fn parse_page(req: &tide::Request<AppState>) -> Result<Page, ApiError> {
    let mut page = Page { limit: DEFAULT_LIMIT, after: None };
    for (k, v) in req.url().query_pairs() {
        match k.as_ref() {
            "limit" => {
                let bad = |reason| ApiError::BadQuery { param: "limit", value: echo(&v), reason };
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("expected a positive integer"));
                }
                // Anything with more digits than fit is over the maximum anyway.
                let n = v.parse::<usize>().unwrap_or(MAX_LIMIT);
                if n == 0 {
                    return Err(bad("expected a positive integer"));
                }
                page.limit = n.min(MAX_LIMIT);
            }
            "after" => page.after = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(page)
}

pub(super) fn parse_id(raw: &str) -> Result<JobsetId, ApiError> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadJobsetId { input: echo(raw) });
    }
    raw.parse().map(JobsetId).map_err(|_| ApiError::BadJobsetId { input: echo(raw) })
}

fn jobset_state_json(state: &JobsetState) -> Value {
    match state {
        JobsetState::Evaluating => json!({ "name": "evaluating" }),
        JobsetState::Evaluated => json!({ "name": "evaluated" }),
        JobsetState::Failed { message } => json!({ "name": "failed", "message": message }),
    }
}

/// One page of attributes: those after `page.after`, at most `page.limit`, plus whether more follow and
/// the total number of attributes.
struct Attrs {
    items: Vec<(String, AttrOutcome)>,
    more: bool,
    total: u64,
}

/// What reading a page can fail with.
#[derive(Debug, thiserror::Error)]
enum PageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
}

async fn get_jobset(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let caller = super::auth::caller(&req).await?;
    let id = parse_id(req.param("id").unwrap_or_default())?;
    let page = parse_page(&req)?;
    let state = req.state();

    // The header first: without a token, nothing is read further unless its repository is public.
    let jobsets = state.jobsets.clone();
    let header =
        smol::unblock(move || jobsets.get(id)).await.map_err(|e| ApiError::store("reading the jobset", e))?;
    let public = match &header {
        Some(h) if caller.is_anonymous() => super::auth::repo_is_public(state, &h.key.repo).await,
        _ => false,
    };
    caller.read(state, public)?;
    let header = header.ok_or(ApiError::UnknownJobset { id })?;

    // The page and its build states in one blocking call that reads the committed states directly: a
    // page never sends the scheduler loop a message per attribute.
    let (jobsets, graph, store) = (state.jobsets.clone(), state.graph.clone(), state.store.clone());
    let (limit, after, evaluating) =
        (page.limit, page.after.clone(), header.state == crate::jobset::JobsetState::Evaluating);
    let (header_total, read) = (
        header.derivations + header.errors,
        smol::unblock(move || {
            let (mut items, more) = jobsets.page(id, after.as_deref(), limit)?;
            // Deferred errors show Nix's message once a report has found it.
            let deferred: Vec<String> = items
                .iter()
                .filter(|(_, o)| matches!(o, AttrOutcome::Error { message } if crate::nix::eval::is_deferred(message)))
                .map(|(a, _)| a.clone())
                .collect();
            let explained = jobsets.error_messages(id, &deferred)?;
            for (attr, outcome) in &mut items {
                if let (AttrOutcome::Error { message }, Some(found)) = (outcome, explained.get(attr.as_str()))
                {
                    *message = found.clone();
                }
            }
            // A finished jobset's header counts its records; an unfinished one is counted on demand.
            let total = if evaluating { Some(jobsets.attr_count(id)?) } else { None };
            let paths: Vec<String> = items
                .iter()
                .filter_map(|(_, o)| match o {
                    AttrOutcome::Drv(d) => Some(d.drv_path.clone()),
                    AttrOutcome::Error { .. } => None,
                })
                .collect();
            let ids = graph.ids_of(&paths)?;
            let reader = Reader::new(&store)?;
            let mut states: HashMap<String, DrvState> = HashMap::new();
            for (path, id) in paths.into_iter().zip(ids) {
                if let Some(id) = id {
                    if let Some(rec) = reader.state(id)? {
                        states.insert(path, rec.state);
                    }
                }
            }
            Ok::<_, PageError>((Attrs { items, more, total: total.unwrap_or(0) }, total.is_some(), states))
        }),
    );
    let (mut attrs, counted, states) = read.await.map_err(|e| match e {
        PageError::Store(e) => ApiError::store("reading the jobset", e),
        PageError::Graph(e) => ApiError::graph("reading the jobset's derivations", e),
    })?;
    if !counted {
        attrs.total = header_total;
    }

    let mut items = Vec::with_capacity(attrs.items.len());
    for (attr, outcome) in &attrs.items {
        items.push(match outcome {
            AttrOutcome::Drv(d) => {
                let status = states.get(&d.drv_path);
                let outputs: serde_json::Map<String, Value> =
                    d.outputs.iter().map(|(n, p)| (n.clone(), Value::String(p.clone()))).collect();
                json!({
                    "attr": attr,
                    "drv": d.drv_path,
                    "name": d.name,
                    "system": d.system,
                    "outputs": outputs,
                    "build_state": status.map(|s| s.name()),
                    "build": status.map(state_json),
                })
            }
            AttrOutcome::Error { message } => json!({ "attr": attr, "error": message }),
        });
    }
    let next_after = if attrs.more { attrs.items.last().map(|(a, _)| a.clone()) } else { None };
    Ok(ok_json(json!({
        "id": header.id,
        "repo": header.key.repo,
        "commit": header.key.commit,
        "job": header.key.job,
        "state": jobset_state_json(&header.state),
        "allow_eval_failures": header.allow_eval_failures,
        "eval_failed": header.eval_failed(),
        "derivations": header.derivations,
        "errors": header.errors,
        "created_at": header.created_at,
        "finished_at": header.finished_at,
        "attributes_total": attrs.total,
        "limit": page.limit,
        "after": page.after,
        "next_after": next_after,
        "attributes": items,
    })))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/jobsets/:id")
        .get(|req: tide::Request<AppState>| async move { respond(get_jobset(req).await) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("42").ok(), Some(JobsetId(42)));
        for bad in ["", "-1", "1.0", "abc", "99999999999999999999999", " 1"] {
            assert_eq!(parse_id(bad).map_err(|e| e.status()), Err(400), "{bad}");
        }
    }
}
