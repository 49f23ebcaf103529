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
use crate::jobset::{AttrOutcome, JobsetId, JobsetState, ScanEntry, ScanKind};
use crate::scheduler::state::{DrvState, Reader};

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

/// Which attributes a page lists: all, or those whose name contains `name` and whose state's name is
/// `state` (`eval-error` for an evaluation error, `none` for a derivation without a build state).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttrFilter {
    pub name: Option<String>,
    pub state: Option<String>,
}

impl AttrFilter {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.state.is_none()
    }
}

/// The state name an attribute is filtered by.
pub(super) fn attr_state_name<'a>(outcome: &AttrOutcome, state: Option<&'a DrvState>) -> &'a str {
    match (outcome, state) {
        (AttrOutcome::Error { .. }, _) => "eval-error",
        (AttrOutcome::Drv(_), Some(s)) => s.name(),
        (AttrOutcome::Drv(_), None) => "none",
    }
}

/// How many attributes a filtered page reads from the store at a time.
const SCAN_CHUNK: usize = 2000;

/// One page of attributes: those after `after` passing the filter, at most `limit`, whether more
/// follow, each derivation's committed build state, and the number of attributes when counted here
/// (an unfinished jobset's; a finished one's header has it).
pub struct PageRead {
    pub items: Vec<(String, AttrOutcome)>,
    pub more: bool,
    pub counted: Option<u64>,
    pub states: HashMap<String, DrvState>,
}

/// What reading a page (or anything else from jobsets, the graph and build states) can fail with: the
/// same as building a jobset's scan index.
pub type PageError = crate::jobset::ScanIndexError;

impl From<PageError> for ApiError {
    fn from(e: PageError) -> ApiError {
        match e {
            PageError::Store(e) => ApiError::store("reading the jobset", e),
            PageError::Graph(e) => ApiError::graph("reading the jobset's derivations", e),
        }
    }
}

/// The build states of the derivations of `items`, read in one go from the committed store.
fn states_of(
    graph: &crate::graph::Graph,
    reader: &Reader,
    items: &[(String, AttrOutcome)],
) -> Result<HashMap<String, DrvState>, PageError> {
    let paths: Vec<String> = items
        .iter()
        .filter_map(|(_, o)| match o {
            AttrOutcome::Drv(d) => Some(d.drv_path.clone()),
            AttrOutcome::Error { .. } => None,
        })
        .collect();
    states_of_paths(graph, reader, paths)
}

/// The committed build states of derivations `paths` (those without one are absent).
pub(super) fn states_of_paths(
    graph: &crate::graph::Graph,
    reader: &Reader,
    paths: Vec<String>,
) -> Result<HashMap<String, DrvState>, PageError> {
    let ids = graph.ids_of(&paths)?;
    let known: Vec<_> = paths.into_iter().zip(ids).filter_map(|(p, id)| id.map(|id| (id, p))).collect();
    // One table lookup pass; the records come back in the order asked, absent ones skipped.
    let records = reader.states(known.iter().map(|(id, _)| *id))?;
    let mut states = HashMap::with_capacity(records.len());
    let mut paths = known.into_iter();
    for (id, rec) in records {
        if let Some((_, path)) = paths.by_ref().find(|(k, _)| *k == id) {
            states.insert(path, rec.state);
        }
    }
    Ok(states)
}

/// The one reader of a jobset's attributes for `GET /v1/jobsets/{id}` and the web UI (read rules
/// already applied), blocking: it reads the committed states directly, so a page never sends the
/// scheduler loop a message per attribute. A filtered page of a finished jobset scans its scan index
/// (attribute names and derivation ids, kept in memory by [`crate::jobset::Jobsets`]); one of a jobset
/// still evaluating scans its records.
pub fn read_page_blocking(
    jobsets: &crate::jobset::Jobsets,
    graph: &crate::graph::Graph,
    store: &crate::store::Store,
    header: &crate::jobset::Jobset,
    after: Option<String>,
    limit: usize,
    filter: &AttrFilter,
) -> Result<PageRead, PageError> {
    let (id, evaluating) = (header.id, header.state == JobsetState::Evaluating);
    let reader = Reader::new(store)?;
    // A finished jobset's header counts its records; an unfinished one is counted on demand.
    let counted = if evaluating { Some(jobsets.attr_count(id)?) } else { None };
    if filter.is_empty() {
        let (mut items, more) = jobsets.page(id, after.as_deref(), limit)?;
        explain_deferred(jobsets, id, &mut items)?;
        let states = states_of(graph, &reader, &items)?;
        return Ok(PageRead { items, more, counted, states });
    }
    let scan = Scan { jobsets, graph, reader: &reader, id, limit, filter };
    let mut page = if evaluating { scan_records(&scan, after)? } else { scan_index(&scan, after)? };
    page.counted = counted;
    explain_deferred(jobsets, id, &mut page.items)?;
    Ok(page)
}

/// What a filtered page scans: jobset `id` for at most `limit` attributes passing `filter`.
#[derive(Clone, Copy)]
struct Scan<'a> {
    jobsets: &'a crate::jobset::Jobsets,
    graph: &'a crate::graph::Graph,
    reader: &'a Reader,
    id: crate::jobset::JobsetId,
    limit: usize,
    filter: &'a AttrFilter,
}

/// A filtered page of a jobset still evaluating: its records are decoded in chunks of [`SCAN_CHUNK`]
/// from `after` until `limit` attributes passed (or the jobset ends).
fn scan_records(scan: &Scan<'_>, after: Option<String>) -> Result<PageRead, PageError> {
    let Scan { jobsets, graph, reader, id, limit, filter } = *scan;
    let mut page = PageRead { items: Vec::new(), more: false, counted: None, states: HashMap::new() };
    let mut cursor = after;
    loop {
        let (chunk, chunk_more) = jobsets.page(id, cursor.as_deref(), SCAN_CHUNK)?;
        cursor = chunk.last().map(|(a, _)| a.clone());
        let named: Vec<(String, AttrOutcome)> =
            chunk.into_iter().filter(|(a, _)| filter.name.as_deref().is_none_or(|n| a.contains(n))).collect();
        let states = states_of(graph, reader, &named)?;
        for (attr, outcome) in named {
            let drv_state = match &outcome {
                AttrOutcome::Drv(d) => states.get(&d.drv_path).map(|s| (d.drv_path.clone(), s.clone())),
                AttrOutcome::Error { .. } => None,
            };
            let name = attr_state_name(&outcome, drv_state.as_ref().map(|(_, s)| s));
            if filter.state.as_deref().is_some_and(|f| f != name) {
                continue;
            }
            if page.items.len() == limit {
                page.more = true;
                break;
            }
            page.states.extend(drv_state);
            page.items.push((attr, outcome));
        }
        if page.more || !chunk_more {
            break;
        }
    }
    Ok(page)
}

/// Builds and keeps the scan index of finished jobset `header` in the background unless it is kept
/// already, so that the filters of a page just shown do not pay for it. A failure is only logged.
pub(super) fn warm_scan_index(state: &AppState, header: &crate::jobset::Jobset) {
    if header.state != JobsetState::Evaluated || state.jobsets.kept_scan(header.id).is_some() {
        return;
    }
    let (jobsets, graph, id) = (state.jobsets.clone(), state.graph.clone(), header.id);
    smol::spawn(smol::unblock(move || {
        if let Err(e) = jobsets.scan_index(id, &graph) {
            tracing::warn!(error = %e, jobset = id.0, "web UI: building a jobset's scan index failed");
        }
    }))
    .detach();
}

/// A filtered page of a finished jobset, from its scan index: names are matched on the index, build
/// states are read by derivation id (no attribute record decoded, no .drv path looked up), and only the
/// attributes listed are read whole.
fn scan_index(scan: &Scan<'_>, after: Option<String>) -> Result<PageRead, PageError> {
    let Scan { jobsets, graph, reader, id, limit, filter } = *scan;
    let index = jobsets.scan_index(id, graph)?;
    let start = after.as_deref().map_or(0, |a| index.partition_point(|e| e.attr.as_str() <= a));
    let (mut listed, mut more) = (Vec::new(), false);
    let matches_name = |e: &&ScanEntry| filter.name.as_deref().is_none_or(|n| e.attr.contains(n));
    // States are read only when the filter asks for one a derivation can have, a chunk at a time in
    // one pass over the states table each; chunks double from `SCAN_CHUNK`, so a page found early reads
    // little and a page that needs the whole jobset makes few passes.
    let wants_drv_state = filter.state.as_deref().is_some_and(|s| s != "eval-error");
    let (mut from, mut size) = (start, SCAN_CHUNK);
    while from < index.len() && !more {
        let chunk = &index[from..index.len().min(from + size)];
        (from, size) = (from + chunk.len(), size.saturating_mul(2));
        let named: Vec<&ScanEntry> = chunk.iter().filter(matches_name).collect();
        let states = if wants_drv_state {
            let ids = named.iter().filter_map(|e| match e.kind {
                ScanKind::Drv(d) => d,
                ScanKind::EvalError => None,
            });
            reader.state_names(ids.collect())?
        } else {
            Vec::new()
        };
        for e in named {
            let name = match e.kind {
                ScanKind::EvalError => "eval-error",
                ScanKind::Drv(Some(d)) => {
                    states.binary_search_by_key(&d, |(k, _)| *k).map_or("none", |at| states[at].1)
                }
                ScanKind::Drv(None) => "none",
            };
            if filter.state.as_deref().is_some_and(|f| f != name) {
                continue;
            }
            if listed.len() == limit {
                more = true;
                break;
            }
            listed.push(e.attr.clone());
        }
    }
    let items = jobsets.attrs(id, &listed)?;
    let states = states_of(graph, reader, &items)?;
    Ok(PageRead { items, more, counted: None, states })
}

/// Deferred errors (`nix::eval::is_deferred`) show Nix's message once a report has found it.
fn explain_deferred(
    jobsets: &crate::jobset::Jobsets,
    id: crate::jobset::JobsetId,
    items: &mut [(String, AttrOutcome)],
) -> Result<(), PageError> {
    let deferred: Vec<String> = items
        .iter()
        .filter(
            |(_, o)| matches!(o, AttrOutcome::Error { message } if crate::nix::eval::is_deferred(message)),
        )
        .map(|(a, _)| a.clone())
        .collect();
    if deferred.is_empty() {
        return Ok(());
    }
    let explained = jobsets.error_messages(id, &deferred)?;
    for (attr, outcome) in items.iter_mut() {
        if let (AttrOutcome::Error { message }, Some(found)) = (outcome, explained.get(attr.as_str())) {
            *message = found.clone();
        }
    }
    Ok(())
}

/// [`read_page_blocking`] off the executor.
pub(super) async fn read_page(
    state: &AppState,
    header: &crate::jobset::Jobset,
    after: Option<String>,
    limit: usize,
    filter: AttrFilter,
) -> Result<PageRead, ApiError> {
    let (jobsets, graph, store) = (state.jobsets.clone(), state.graph.clone(), state.store.clone());
    let header = header.clone();
    Ok(smol::unblock(move || read_page_blocking(&jobsets, &graph, &store, &header, after, limit, &filter))
        .await?)
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

    let attrs = read_page(state, &header, page.after.clone(), page.limit, AttrFilter::default()).await?;
    let total = attrs.counted.unwrap_or(header.derivations + header.errors);
    let states = &attrs.states;
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
        "attributes_total": total,
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

    /// A finished jobset of `n` derivation attributes (`pkg000`…; one in three failed, one in three
    /// built, the rest never requested), of which the first `missing` are not in the graph, plus two
    /// evaluation errors.
    fn jobset(
        dir: &std::path::Path,
        n: usize,
        missing: usize,
    ) -> (crate::jobset::Jobsets, crate::graph::Graph, crate::store::Store, crate::jobset::Jobset) {
        use crate::jobset::{AttrDrv, Begin, JobsetKey};
        use crate::scheduler::state::{DrvRecord, Writes};
        use crate::scheduler::Completion;
        let path = |v: usize| format!("{}/{:032}-pkg-{v}.drv", dir.display(), v);
        let out = |v: usize| format!("/nix/store/{:032}-pkg-{v}", v);
        for v in 0..n {
            let text = format!(
                "Derive([(\"out\",\"{o}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[(\"name\",\"pkg-{v}\"),(\"out\",\"{o}\")])",
                o = out(v)
            );
            std::fs::write(path(v), text).expect("write drv");
        }
        let store = crate::store::Store::open(&dir.join("db.redb")).expect("store");
        let graph = crate::graph::Graph::open(store.clone(), n + 1).expect("graph");
        let roots: Vec<String> = (missing..n).map(path).collect();
        graph.discover_blocking(&roots).expect("discover");
        let jobsets = crate::jobset::Jobsets::new(store.clone());
        let key = JobsetKey { repo: "r".into(), commit: "a".repeat(40), job: "j".into() };
        let Ok(Begin::New(id)) = jobsets.begin(&key, true) else { panic!("a new jobset") };
        let mut writer = jobsets.writer(id);
        let mut attrs: Vec<(String, AttrOutcome)> = (0..n)
            .map(|v| {
                let drv = AttrDrv {
                    drv_path: path(v),
                    name: format!("pkg-{v}"),
                    system: "x86_64-linux".into(),
                    outputs: vec![("out".into(), out(v))],
                    meta_json: None,
                    required_system_features: vec![],
                };
                (format!("pkg{v:03}"), AttrOutcome::Drv(drv))
            })
            .collect();
        attrs.push(("broken1".into(), AttrOutcome::Error { message: "boom".into() }));
        attrs.push(("pkg050x".into(), AttrOutcome::Error { message: "boom".into() }));
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        for (a, o) in attrs {
            writer.push(a, o).expect("push");
        }
        writer.flush().expect("flush");
        let header = jobsets.finish(id, JobsetState::Evaluated).expect("finish");
        let mut writes = Writes::default();
        for (v, drv_id) in graph.ids_of(&roots).expect("ids").into_iter().enumerate() {
            let v = v + missing;
            let mut rec = DrvRecord::new();
            rec.state = match v % 3 {
                0 => {
                    DrvState::Completed(Completion::Failure { message: "exit 1".into(), exit_code: Some(1) })
                }
                1 => DrvState::Completed(Completion::Success),
                _ => continue,
            };
            writes.states.insert(drv_id.expect("discovered"), rec);
        }
        writes.commit(&store).expect("commit");
        (jobsets, graph, store, header)
    }

    /// Every page of `filter` read with pages of `limit`, as (attribute, state name) pairs.
    fn all_pages(
        t: &(crate::jobset::Jobsets, crate::graph::Graph, crate::store::Store, crate::jobset::Jobset),
        filter: &AttrFilter,
        limit: usize,
        by_records: bool,
    ) -> Vec<(String, String)> {
        let (jobsets, graph, store, header) = t;
        let reader = Reader::new(store).expect("reader");
        let (mut out, mut after) = (Vec::new(), None);
        loop {
            let page = if by_records {
                let scan = Scan { jobsets, graph, reader: &reader, id: header.id, limit, filter };
                scan_records(&scan, after.clone())
            } else {
                read_page_blocking(jobsets, graph, store, header, after.clone(), limit, filter)
            }
            .expect("page");
            assert!(page.items.len() <= limit);
            for (a, o) in &page.items {
                let s = match o {
                    AttrOutcome::Drv(d) => page.states.get(&d.drv_path),
                    AttrOutcome::Error { .. } => None,
                };
                out.push((a.clone(), attr_state_name(o, s).to_string()));
            }
            after = page.items.last().map(|(a, _)| a.clone());
            if !page.more {
                return out;
            }
        }
    }

    #[test]
    fn the_scan_index_lists_what_a_scan_of_the_records_lists() {
        for missing in [0, 4] {
            let dir = tempfile::tempdir().expect("tempdir");
            let t = jobset(dir.path(), 120, missing);
            let f = |name: Option<&str>, state: Option<&str>| AttrFilter {
                name: name.map(str::to_string),
                state: state.map(str::to_string),
            };
            let filters = [
                f(None, Some("failure")),
                f(None, Some("success")),
                f(None, Some("none")),
                f(None, Some("eval-error")),
                f(None, Some("building")),
                f(Some("pkg05"), None),
                f(Some("pkg05"), Some("eval-error")),
                f(Some("1"), Some("failure")),
            ];
            for filter in &filters {
                for limit in [1, 7, 500] {
                    let indexed = all_pages(&t, filter, limit, false);
                    assert_eq!(indexed, all_pages(&t, filter, limit, true), "{filter:?} by {limit}");
                    if let Some(s) = &filter.state {
                        assert!(indexed.iter().all(|(_, n)| n == s), "{filter:?}: {indexed:?}");
                    }
                }
            }
            let count = |state: &str| all_pages(&t, &f(None, Some(state)), 500, false).len();
            assert_eq!(count("failure"), (missing..120).filter(|v| v % 3 == 0).count());
            assert_eq!(count("eval-error"), 2);
            assert_eq!(count("none"), (missing..120).filter(|v| v % 3 == 2).count() + missing);
            assert_eq!(count("building"), 0);
            // A complete jobset's index is kept; one with derivations outside the graph is not.
            assert_eq!(t.0.kept_scan(t.3.id).is_some(), missing == 0);
        }
    }

    /// A jobset larger than a few scan chunks: the doubling chunks list what the records list; the index
    /// is stored (a fresh `Jobsets`, as after a restart, reads the row) and the row goes with a
    /// re-evaluation of the jobset.
    #[test]
    fn a_large_jobset_scans_in_doubling_chunks_from_its_stored_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = SCAN_CHUNK * 3 + 10;
        let t = jobset(dir.path(), n, 0);
        let f = |state: &str| AttrFilter { name: None, state: Some(state.to_string()) };
        for filter in [f("failure"), f("building"), f("none")] {
            for limit in [200, n] {
                let indexed = all_pages(&t, &filter, limit, false);
                assert_eq!(indexed, all_pages(&t, &filter, limit, true), "{filter:?} by {limit}");
            }
        }
        assert_eq!(all_pages(&t, &f("failure"), n, false).len(), (0..n).filter(|v| v % 3 == 0).count());
        let (jobsets, graph, store, header) = &t;
        let row = |store: &crate::store::Store| {
            let tx = store.db().begin_read().expect("read");
            let table = tx.open_table(crate::store::schema::JOBSET_SCANS).expect("table");
            table.get(header.id.0).expect("get").is_some()
        };
        assert!(row(store), "the complete index was stored");
        let fresh = crate::jobset::Jobsets::new(store.clone());
        assert!(fresh.kept_scan(header.id).is_none());
        let stored = fresh.scan_index(header.id, graph).expect("stored index");
        assert_eq!(stored, jobsets.kept_scan(header.id).expect("kept"));
        // Evaluating the jobset again (another `allow_eval_failures`: the same id) drops the row.
        let again = jobsets.begin(&header.key, !header.allow_eval_failures).expect("begin");
        assert!(matches!(again, crate::jobset::Begin::New(id) if id == header.id));
        assert!(!row(store), "a re-evaluated jobset kept its old index");
        assert!(jobsets.kept_scan(header.id).is_none());
    }
}
