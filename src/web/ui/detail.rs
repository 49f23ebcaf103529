//! The jobset page (`/ui/jobsets/{id}`: every attribute with its state, filtered by state, searched by
//! name, paged), the derivation page (`/ui/drvs/{drv}`: state history, attempts, dependencies and
//! dependents with their states, outputs) and the build log page (`/ui/logs/{drv}?attempt=N`: ANSI
//! colours as spans, a line anchor per line, a link to the raw log).

use futures_lite::io::AsyncReadExt as _;
use maud::{html, Markup};

use super::{
    at_ms, badge, commit_href, drv_href, drv_name, duration, jobset_href, layout, log_href, query_value,
};
use crate::jobset::AttrOutcome;
use crate::scheduler::state::Reader;
use crate::web::drvs::{echo, parse_drv_param, read_drv, state_json, ApiError, DrvRead};
use crate::web::jobsets::{attr_state_name, parse_id, read_page, states_of_paths, AttrFilter};
use crate::web::AppState;

/// Attributes per jobset page.
const PAGE_SIZE: usize = 200;
/// Longest search text kept.
const SEARCH_MAX: usize = 200;
/// The largest log a page renders whole; a longer one shows its end.
const LOG_PAGE_BYTES: u64 = 2 * 1024 * 1024;

/// The states a jobset page can be filtered by.
const STATE_FILTERS: [&str; 9] = [
    "success",
    "cached",
    "failure",
    "transitive-failure",
    "building",
    "buildable",
    "queued",
    "eval-error",
    "none",
];

pub(super) async fn jobset(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    let viewer = super::login::viewer(&req).await?;
    let id = parse_id(req.param("id").unwrap_or_default())?;
    let state = req.state();
    let jobsets = state.jobsets.clone();
    let header =
        smol::unblock(move || jobsets.get(id)).await.map_err(|e| ApiError::store("reading the jobset", e))?;
    let public = match &header {
        Some(h) if viewer.needs_visibility() => crate::web::auth::repo_is_public(state, &h.key.repo).await,
        _ => false,
    };
    let repos: Vec<String> = header.iter().map(|h| h.key.repo.clone()).collect();
    viewer.read(state, public, &repos).await?;
    let header = header.ok_or(ApiError::UnknownJobset { id })?;

    let mut filter = AttrFilter::default();
    let (mut after, mut cancelled) = (None, false);
    for (k, v) in req.url().query_pairs() {
        match k.as_ref() {
            "cancelled" => cancelled = true,
            "q" if !v.is_empty() => filter.name = Some(crate::text::prefix_bytes(&v, SEARCH_MAX).to_string()),
            "state" if !v.is_empty() => {
                if !STATE_FILTERS.contains(&v.as_ref())
                    && !v.starts_with("interrupted-")
                    && v != "failed-retry"
                {
                    return Err(ApiError::BadQuery {
                        param: "state",
                        value: echo(&v),
                        reason: "not a state name",
                    });
                }
                filter.state = Some(v.into_owned());
            }
            "after" if !v.is_empty() => after = Some(v.into_owned()),
            _ => {}
        }
    }
    let page = read_page(state, &header, after.clone(), PAGE_SIZE, filter.clone()).await?;
    crate::web::jobsets::warm_scan_index(state, &header);
    let total = page.counted.unwrap_or(header.derivations + header.errors);
    let mut next = None;
    if page.more {
        if let Some((last, _)) = page.items.last() {
            let mut q = format!("?after={}", query_value(last));
            if let Some(n) = &filter.name {
                q.push_str(&format!("&q={}", query_value(n)));
            }
            if let Some(s) = &filter.state {
                q.push_str(&format!("&state={}", query_value(s)));
            }
            next = Some(q);
        }
    }
    let title = format!("Jobset {} · {}", header.id.0, header.key.job_name());
    Ok(layout(
        Some(&viewer),
        &title,
        html! {
            p {
                span.mono { (header.key.repo) } " at "
                a.mono href=(commit_href(&header.key.commit)) { (crate::text::short_sha(&header.key.commit)) } " · "
                (badge(match &header.state { crate::jobset::JobsetState::Evaluating => "evaluating",
                    crate::jobset::JobsetState::Evaluated => "evaluated", crate::jobset::JobsetState::Failed { .. } => "failed" }))
                " · " (total) " attributes (" (header.errors) " evaluation errors) "
                (super::admin::cancel_button(&viewer, header.id))
            }
            p.live-counts data-counts-jobset=(header.id.0) {}
            (super::live::hook(&serde_json::json!([{ "job": header.id.0 }]), &[]))
            @if cancelled { p id="cancelled" { "The jobset's builds were cancelled." } }
            @if let crate::jobset::JobsetState::Failed { message } = &header.state { pre.error { (message) } }
            form id="filter" method="get" {
                input type="search" name="q" placeholder="attribute name contains…" value=(filter.name.as_deref().unwrap_or(""));
                " "
                select name="state" {
                    option value="" { "any state" }
                    @for s in STATE_FILTERS {
                        option value=(s) selected[filter.state.as_deref() == Some(s)] { (s) }
                    }
                }
                " " button type="submit" { "Filter" }
            }
            table id="attrs" {
                tr { th { "attribute" } th { "state" } th { "name" } th { "system" } }
                @for (attr, outcome) in &page.items {
                    tr {
                        @match outcome {
                            AttrOutcome::Drv(d) => {
                                td.mono { a href=(drv_href(&d.drv_path)) { (attr) } }
                                td data-drv=(d.drv_path) { (badge(attr_state_name(outcome, page.states.get(&d.drv_path)))) }
                                td { (d.name) } td.mono { (d.system) }
                            }
                            AttrOutcome::Error { message } => {
                                td.mono { (attr) } td { (badge("eval-error")) }
                                td colspan="2" { pre { (crate::text::ellipsis_chars(message, 2000)) } }
                            }
                        }
                    }
                }
                @if page.items.is_empty() { tr { td colspan="4" .muted { "no attribute matches" } } }
            }
            nav.pager {
                @if after.is_some() { a href=(jobset_href(header.id)) { "first page" } }
                @if let Some(n) = &next { a id="next" href=(n) { "next page" } }
            }
        },
    ))
}

pub(super) async fn drv(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    let viewer = super::login::viewer(&req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let state = req.state();
    viewer.read_drv(state, &drv).await?;
    let DrvRead { view, status, log_sizes } = read_drv(state, &drv).await?;
    let (store, graph) = (state.store.clone(), state.graph.clone());
    let neighbours: Vec<String> = view.dependencies.iter().chain(view.dependents.iter()).cloned().collect();
    let states = smol::unblock(move || {
        let reader = Reader::new(&store)?;
        states_of_paths(&graph, &reader, neighbours)
    })
    .await?;
    let neighbour_state = |d: &str| states.get(d).map_or("none", |s| s.name());
    Ok(layout(
        Some(&viewer),
        drv_name(&drv),
        html! {
            p.mono { (drv) }
            @match &status {
                Some(s) => {
                    p id="state" { "state: " (badge(s.state.name())) " "
                        @let details = state_json(&s.state);
                        @if let Some(m) = details.get("message").and_then(|m| m.as_str()) { span.error { (m) } }
                        @if let Some(d) = details.get("dependency").and_then(|m| m.as_str()) {
                            " because of " a href=(drv_href(d)) { (drv_name(d)) }
                        }
                        @if let Some(w) = &s.waiting { " " span.muted { (w) } }
                    }
                }
                None => { p id="state" { "state: " (badge("none")) " never requested" } }
            }
            @if status.as_ref().is_some_and(|s| matches!(s.state.name(), "queued" | "buildable" | "building" | "failed-retry")) {
                script data-drv=(drv) { (maud::PreEscaped(STATE_JS)) }
            }
            (super::admin::rebuild_button(&viewer, &drv))
            (super::admin::cancel_drv_button(&viewer, &drv, status.as_ref().map(|s| &s.state)))
            p { "system: " span.mono { (view.system) } }
            h2 { "Outputs" }
            table id="outputs" {
                @for (name, path) in &view.outputs { tr { td { (name) } td.mono { (if path.is_empty() { "(content-addressed, not known yet)" } else { path.as_str() }) } } }
            }
            @if let Some(s) = &status {
                h2 { "Attempts" }
                table id="attempts" {
                    tr { th { "#" } th { "builder" } th { "started" } th { "duration" } th { "outcome" } th { "log" } }
                    @for (a, size) in s.attempts.iter().zip(log_sizes.iter()) {
                        tr {
                            td { (a.number) } td.mono { (a.builder) } td { (at_ms(a.started_at_ms)) }
                            td { @if let Some(end) = a.ended_at_ms { (duration(end.saturating_sub(a.started_at_ms) / 1000)) } }
                            td { (badge(a.outcome.as_deref().unwrap_or("building"))) }
                            td { @if let Some(size) = size { a.loglink href=(log_href(&drv, a.number)) { "log (" (size) " bytes)" } } }
                        }
                    }
                }
                h2 { "History" }
                table id="history" {
                    tr { th { "at" } th { "state" } th { "attempt" } th { "why" } }
                    @for h in &s.history {
                        tr { td { (at_ms(h.at_ms)) } td { (badge(h.state.name())) } td { (h.attempt) } td { (h.note) } }
                    }
                }
            }
            h2 { "Dependencies (" (view.dependencies.len()) ")" }
            table id="dependencies" {
                @for d in &view.dependencies { tr { td { a href=(drv_href(d)) { (drv_name(d)) } } td { (badge(neighbour_state(d))) } } }
            }
            h2 { "Dependents (" (view.dependents_total) ")" }
            table id="dependents" {
                @for d in &view.dependents { tr { td { a href=(drv_href(d)) { (drv_name(d)) } } td { (badge(neighbour_state(d))) } } }
            }
            @if view.dependents_total > view.dependents.len() {
                p.muted { (view.dependents_total - view.dependents.len()) " more not listed" }
            }
        },
    ))
}

/// The derivation page of a derivation not done yet: its state badge follows `build_state_change`
/// events of `/v1/ws/builds` (the details beside it are those of the page's load).
const STATE_JS: &str = r#"(function(){
var drv=document.currentScript.dataset.drv;
var ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/v1/ws/builds');
ws.onopen=function(){ws.send(JSON.stringify({type:'subscribe',drv:drv}));};
ws.onmessage=function(m){var e=JSON.parse(m.data);
if(e.type==='subscribed')document.documentElement.dataset.live='subscribed';
if(e.type!=='build_state_change'||e.drv!==drv)return;
var b=document.querySelector('#state .badge');if(!b)return;
var ok=['success','cached'],run=['building','queued','buildable'];
b.textContent=e.state;b.dataset.state=e.state;
b.className='badge '+(ok.indexOf(e.state)>=0?'ok':run.indexOf(e.state)>=0?'run':'bad');};
})();"#;

/// The log page of a running build: appends each `log_line` of `/v1/ws/builds` (ANSI codes dropped) and
/// says when the build ends. Lines written between the page and the subscription are not shown.
const FOLLOW_JS: &str = r#"(function(){
var s=document.currentScript,drv=s.dataset.drv,att=+s.dataset.attempt;
var log=document.getElementById('log'),st=document.getElementById('live'),n=log.children.length,done=false;
var ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/v1/ws/builds');
ws.onopen=function(){ws.send(JSON.stringify({type:'subscribe',drv:drv}));};
ws.onmessage=function(m){var e=JSON.parse(m.data);
if(e.type==='subscribed')document.documentElement.dataset.live='subscribed';
if(e.type==='log_line'&&e.drv===drv&&e.attempt===att){
var end=window.innerHeight+window.scrollY>=document.body.offsetHeight-50;
n++;var d=document.createElement('div');d.id='L'+n;var a=document.createElement('a');a.className='n';a.href='#L'+n;
a.textContent=n;d.appendChild(a);d.appendChild(document.createTextNode(e.line.replace(/\x1b\[[0-9;]*[A-Za-z]/g,'')));
log.appendChild(d);if(end)window.scrollTo(0,document.body.scrollHeight);}
else if(e.type==='build_state_change'&&e.drv===drv&&e.state!=='building'){done=true;st.textContent='The build ended: '+e.state+'.';ws.close();}
else if(e.type==='error'){st.textContent='No live updates: '+e.error;}};
ws.onclose=function(){if(!done&&st.textContent.indexOf('Following')===0)st.textContent='Live updates ended; reload for the rest.';};
})();"#;

/// `/ui/logs/{drv}/raw?attempt=N[&download=1]`: the raw log for a browser, under the same read rules as
/// the log page (a session's private repositories included), streamed like `GET /v1/logs/{drv}`.
pub(super) async fn raw_log(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let viewer = super::login::viewer(&req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let asked = crate::web::logs::parse_attempt(&req)?;
    let download = req.url().query_pairs().any(|(k, v)| k == "download" && v == "1");
    let state = req.state();
    viewer.read_drv(state, &drv).await?;
    let log = crate::web::logs::open_log(state, &drv, asked).await?;
    Ok(crate::web::logs::log_response(&drv, log, download))
}

pub(super) async fn log(req: tide::Request<AppState>) -> Result<Markup, ApiError> {
    use futures_lite::io::AsyncSeekExt as _;
    let viewer = super::login::viewer(&req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let asked = crate::web::logs::parse_attempt(&req)?;
    let state = req.state();
    viewer.read_drv(state, &drv).await?;
    let mut log = crate::web::logs::open_log(state, &drv, asked).await?;
    let from = log.len.saturating_sub(LOG_PAGE_BYTES);
    let mut bytes = Vec::new();
    let read = async {
        log.file.seek(std::io::SeekFrom::Start(from)).await?;
        (&mut log.file).take(log.len - from).read_to_end(&mut bytes).await
    };
    read.await.map_err(|e| {
        tracing::error!(error = %e, "web UI: reading a build log failed");
        ApiError::Internal { during: "reading the build log" }
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let lines = super::ansi::lines(&text);
    // The latest attempt of a running build follows its log live (`/v1/ws/builds`).
    let running = log.attempt == log.latest
        && matches!(state.scheduler.state(&drv).await, Ok(Some(s)) if s.state.name() == "building");
    let raw = super::raw_log_href(&drv, log.attempt);
    Ok(layout(
        Some(&viewer),
        &format!("Log of {} (attempt {})", drv_name(&drv), log.attempt),
        html! {
            p {
                a href=(drv_href(&drv)) { "derivation" } " · "
                a id="raw" href=(raw) { "raw log" } " · "
                a id="download" href={ (raw) "&download=1" } { "download" } " · " (log.len) " bytes"
                @if log.latest > 1 {
                    " · attempts: "
                    @for n in 1..=log.latest { a href=(log_href(&drv, n)) { (n) } " " }
                }
            }
            @if from > 0 { p.muted { "The first " (from) " bytes are not shown; the raw log has them." } }
            div.log id="log" {
                @for (i, line) in lines.iter().enumerate() {
                    div id={ "L" (i + 1) } {
                        a.n href={ "#L" (i + 1) } { (i + 1) }
                        @for run in line {
                            @if run.classes.is_empty() { (run.text) } @else { span class=(run.classes) { (run.text) } }
                        }
                    }
                }
            }
            @if running {
                p.muted id="live" { "Following the running build…" }
                script data-drv=(drv) data-attempt=(log.attempt) { (maud::PreEscaped(FOLLOW_JS)) }
            }
        },
    ))
}
