//! `GET /v1/drvs/{drv}`: one derivation's build state, attempts, history, neighbours in the graph and
//! cache pushes.
//!
//! Also home of what every build route shares: [`ApiError`] (every error answers
//! `{"error": "...", "status": N}`), [`parse_drv_param`] (the strict reading of a `{drv}` path segment)
//! and the JSON forms of states and attempts.

use serde_json::{json, Value};

use super::AppState;
use crate::graph::GraphError;
use crate::nix::store_path::{strip_default_store, DrvPath, StorePathError, DEFAULT_STORE_DIR};
use crate::scheduler::{Attempt, Completion, DrvState, DrvStatus, HistoryEntry, SchedulerError};
use crate::store::StoreError;

/// At most this many dependents are listed; `dependents_total` gives the full count.
const DEPENDENTS_CAP: usize = 1000;

/// How much of a client's input an error message echoes.
const ECHO_LIMIT: usize = 200;

/// What a build route can answer instead of its result. The message never names a server path other
/// than store paths.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    #[error("invalid derivation `{input}`: {reason} (expected /nix/store/<hash>-<name>.drv or <hash>-<name>.drv, URL-encoded)")]
    BadDrv { input: String, reason: &'static str },
    #[error("invalid query parameter `{param}`=`{value}`: {reason}")]
    BadQuery { param: &'static str, value: String, reason: &'static str },
    #[error("invalid jobset id `{input}`: expected a non-negative integer")]
    BadJobsetId { input: String },
    #[error("unknown derivation {drv}: it is not in the derivation graph")]
    UnknownDrv { drv: String },
    #[error("derivation {drv} has never been built: there is no build log")]
    NeverBuilt { drv: String },
    #[error("derivation {drv} has no attempt {attempt} (attempts so far: {latest})")]
    NoAttempt { drv: String, attempt: u32, latest: u32 },
    #[error("no build log for attempt {attempt} of {drv}")]
    NoLog { drv: String, attempt: u32 },
    #[error("nothing is known about commit {commit}: no evaluation, run or check of it is stored")]
    UnknownCommit { commit: String },
    #[error(
        "{login} may not see this: it is private, and GitHub does not say {login} can read its repository"
    )]
    NotAllowed { login: String },
    #[error("refused: this form's CSRF token is missing or wrong (reload the page and try again)")]
    Csrf,
    #[error("only administrators ([web] admins) may do this")]
    NotAdmin,
    #[error("no pull request of repository {repo} has been seen")]
    UnknownRepo { repo: String },
    #[error("unknown jobset {id}")]
    UnknownJobset { id: crate::jobset::JobsetId },
    #[error("the build scheduler is not running")]
    SchedulerStopped,
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
    #[error("invalid request body: {reason}")]
    BadBody { reason: String },
    #[error("{message}")]
    Conflict { message: String },
    /// A refusal with its own status (the auto-merge routes: 400, 403, 404, 409, 502, 503).
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("jobset {id} has no builds to cancel")]
    NoBuilds { id: crate::jobset::JobsetId },
    /// Details go to the server log, not to the client.
    #[error("internal error while {during}; see the server log")]
    Internal { during: &'static str },
}

impl ApiError {
    pub(super) fn status(&self) -> u16 {
        match self {
            ApiError::BadDrv { .. } | ApiError::BadQuery { .. } | ApiError::BadJobsetId { .. } => 400,
            ApiError::UnknownDrv { .. }
            | ApiError::NeverBuilt { .. }
            | ApiError::NoAttempt { .. }
            | ApiError::NoLog { .. }
            | ApiError::UnknownCommit { .. }
            | ApiError::UnknownRepo { .. }
            | ApiError::UnknownJobset { .. } => 404,
            ApiError::SchedulerStopped => 503,
            ApiError::NotAllowed { .. } | ApiError::Csrf | ApiError::NotAdmin => 403,
            ApiError::Internal { .. } => 500,
            ApiError::Auth(e) => e.status(),
            ApiError::BadBody { .. } => 400,
            ApiError::Conflict { .. } => 409,
            ApiError::NoBuilds { .. } => 404,
            ApiError::Refused { status, .. } => *status,
        }
    }

    /// The JSON error response.
    pub(super) fn response(&self) -> tide::Response {
        super::auth::error_response(self.status(), &self.to_string())
    }

    /// A scheduler failure, logged with its detail.
    pub(super) fn scheduler(during: &'static str, e: SchedulerError) -> ApiError {
        match e {
            SchedulerError::Stopped => ApiError::SchedulerStopped,
            other => {
                tracing::error!(error = %other, "HTTP API: {during} failed");
                ApiError::Internal { during }
            }
        }
    }

    pub(super) fn graph(during: &'static str, e: GraphError) -> ApiError {
        tracing::error!(error = %e, "HTTP API: {during} failed");
        ApiError::Internal { during }
    }

    pub(super) fn store(during: &'static str, e: StoreError) -> ApiError {
        tracing::error!(error = %e, "HTTP API: {during} failed");
        ApiError::Internal { during }
    }
}

/// Turns a route's result into its response.
pub(super) fn respond(result: Result<tide::Response, ApiError>) -> tide::Result {
    Ok(result.unwrap_or_else(|e| e.response()))
}

/// A JSON 200 response.
pub(super) fn ok_json(body: Value) -> tide::Response {
    tide::Response::builder(200).body(body).build()
}

/// `input` shortened for an error message.
pub(super) fn echo(input: &str) -> String {
    crate::text::ellipsis_bytes(input, ECHO_LIMIT)
}

/// Strict percent-decoding of one path segment (`+` stays `+`); the result must be UTF-8.
pub(super) fn percent_decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
            else {
                return Err("malformed percent-encoding");
            };
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after percent-decoding")
}

/// Reads a `{drv}` path segment: a URL-encoded `/nix/store/<hash>-<name>.drv` or a bare
/// `<hash>-<name>.drv`. Returns the full store path. The hash must be 32 Nix base-32 characters and the
/// name a valid store path name ending in `.drv`; anything else (other directories, `..`, `/` in the
/// name) is refused.
pub(super) fn parse_drv_param(raw: &str) -> Result<String, ApiError> {
    let bad = |input: &str, reason| ApiError::BadDrv { input: echo(input), reason };
    let decoded = percent_decode(raw).map_err(|reason| bad(raw, reason))?;
    let base = if decoded.starts_with('/') {
        strip_default_store(&decoded).ok_or_else(|| bad(&decoded, "not under /nix/store/"))?
    } else {
        decoded.as_str()
    };
    if base.contains('/') {
        return Err(bad(&decoded, "a store path has no further '/' after /nix/store/"));
    }
    let full = format!("{DEFAULT_STORE_DIR}/{base}");
    match DrvPath::parse(&full) {
        Ok(_) => Ok(full),
        Err(StorePathError::NotDrv) => Err(bad(&decoded, "the name does not end in .drv")),
        Err(e) => Err(bad(&decoded, e.reason())),
    }
}

/// The JSON form of a state: its name plus the details of that state.
pub(super) fn state_json(state: &DrvState) -> Value {
    let mut v = json!({ "name": state.name() });
    match state {
        DrvState::Completed(Completion::Failure { message, exit_code }) => {
            v["message"] = json!(message);
            v["exit_code"] = json!(exit_code);
        }
        DrvState::FailedRetry { message } => v["message"] = json!(message),
        DrvState::TransitiveFailure { dependency } | DrvState::Blocked { dependency } => {
            v["dependency"] = json!(dependency)
        }
        DrvState::Interrupted { kind, reason } => {
            v["kind"] = json!(kind.to_string());
            v["reason"] = json!(reason);
        }
        DrvState::Queued
        | DrvState::Buildable
        | DrvState::Building
        | DrvState::Completed(Completion::Success)
        | DrvState::Cached => {}
    }
    v
}

/// The API path of an attempt's log.
pub(super) fn log_url(drv: &str, attempt: u32) -> String {
    let base = strip_default_store(drv).unwrap_or(drv);
    // Store path names may contain `?` and `=`: keep the URL unambiguous.
    let base = base.replace('?', "%3F");
    format!("/v1/logs/{base}?attempt={attempt}")
}

fn attempt_json(drv: &str, a: &Attempt, log_bytes: Option<u64>) -> Value {
    json!({
        "number": a.number,
        "builder": a.builder,
        "started_at_ms": a.started_at_ms,
        "ended_at_ms": a.ended_at_ms,
        "outcome": a.outcome,
        "log": log_url(drv, a.number),
        "log_bytes": log_bytes,
    })
}

fn history_json(h: &HistoryEntry) -> Value {
    json!({ "at_ms": h.at_ms, "state": state_json(&h.state), "attempt": h.attempt, "note": h.note })
}

/// What the graph says about one derivation.
pub(super) struct GraphView {
    pub(super) system: String,
    pub(super) outputs: Vec<(String, String)>,
    pub(super) dependencies: Vec<String>,
    pub(super) dependents: Vec<String>,
    pub(super) dependents_total: usize,
}

/// Reads the node and its neighbours (blocking). `None`: not in the graph.
fn graph_view(graph: &crate::graph::Graph, drv: &str) -> Result<Option<GraphView>, GraphError> {
    let Some(id) = graph.id_of(drv)? else { return Ok(None) };
    let node = graph.node(id)?;
    let dependencies =
        graph.dependencies(id)?.into_iter().map(|d| graph.path_of(d)).collect::<Result<Vec<_>, _>>()?;
    let all_dependents = graph.dependents(id)?;
    let dependents = all_dependents
        .iter()
        .take(DEPENDENTS_CAP)
        .map(|d| graph.path_of(*d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(GraphView {
        system: node.system,
        outputs: node.outputs,
        dependencies,
        dependents,
        dependents_total: all_dependents.len(),
    }))
}

/// Everything known about one derivation: the graph's view, the scheduler's status (`None`: never had
/// a state) and each attempt's log size (`None`: no log file).
pub(super) struct DrvRead {
    pub(super) view: GraphView,
    pub(super) status: Option<DrvStatus>,
    pub(super) log_sizes: Vec<Option<u64>>,
}

/// The one reader of a derivation for `GET /v1/drvs/{drv}` and the web UI (read rules already applied).
pub(super) async fn read_drv(state: &AppState, drv: &str) -> Result<DrvRead, ApiError> {
    let graph = state.graph.clone();
    let path = drv.to_string();
    let view = smol::unblock(move || graph_view(&graph, &path))
        .await
        .map_err(|e| ApiError::graph("reading the derivation graph", e))?
        .ok_or_else(|| ApiError::UnknownDrv { drv: drv.to_string() })?;
    let status =
        state.scheduler.state(drv).await.map_err(|e| ApiError::scheduler("reading the build state", e))?;
    // Log sizes: a metadata call per attempt (there are few).
    let log_sizes = match &status {
        Some(s) => {
            let logs_dir = state.logs_dir.clone();
            let (d, numbers): (String, Vec<u32>) =
                (drv.to_string(), s.attempts.iter().map(|a| a.number).collect());
            smol::unblock(move || {
                numbers
                    .iter()
                    .map(|n| {
                        let p = crate::nix::build::log_path(&logs_dir, &d, *n).ok()?;
                        std::fs::metadata(p).ok().filter(|m| m.is_file()).map(|m| m.len())
                    })
                    .collect()
            })
            .await
        }
        None => Vec::new(),
    };
    Ok(DrvRead { view, status, log_sizes })
}

async fn get_drv(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let caller = super::auth::caller(&req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let state = req.state();
    let public = caller.is_anonymous() && super::auth::drv_is_public(state, &drv).await;
    caller.read(state, public)?;
    let DrvRead { view, status, log_sizes } = read_drv(state, &drv).await?;
    let waiting = status.as_ref().and_then(|s| s.waiting.clone());
    let (attempts, history, current, attempt) = match status {
        Some(s) => {
            let attempts: Vec<Value> =
                s.attempts.iter().zip(log_sizes).map(|(a, size)| attempt_json(&drv, a, size)).collect();
            let history: Vec<Value> = s.history.iter().map(history_json).collect();
            (attempts, history, state_json(&s.state), s.attempt)
        }
        None => (Vec::new(), Vec::new(), Value::Null, 0),
    };
    let outputs: serde_json::Map<String, Value> = view
        .outputs
        .into_iter()
        .map(|(name, path)| (name, if path.is_empty() { Value::Null } else { Value::String(path) }))
        .collect();
    // Cache pushes (docs/caches.md); a failure's message (it may name a destination) only with a token.
    let (store, d) = (state.store.clone(), drv.clone());
    let pushes = smol::unblock(move || crate::cache::queue::for_drv(&store, &d))
        .await
        .map_err(|e| ApiError::store("reading the cache pushes", e))?;
    let anonymous = caller.is_anonymous();
    let pushes: Vec<Value> = pushes
        .iter()
        .map(|p| {
            json!({
                "cache": p.cache,
                "state": p.state.as_str(),
                "attempts": p.attempts,
                "next_attempt_at": (p.state == crate::cache::PushState::Queued).then_some(p.next_attempt_at),
                "last_error": if anonymous { None } else { p.last_error.clone() },
                "updated_at": p.updated_at,
            })
        })
        .collect();
    Ok(ok_json(json!({
        "drv": drv,
        "system": view.system,
        "outputs": outputs,
        "state": current,
        "waiting": waiting,
        "attempt": attempt,
        "attempts": attempts,
        "history": history,
        "dependencies": view.dependencies,
        "dependents": view.dependents,
        "dependents_total": view.dependents_total,
        "pushes": pushes,
    })))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/drvs/:drv").get(|req: tide::Request<AppState>| async move { respond(get_drv(req).await) });
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh";

    #[test]
    fn drv_params() {
        let full = format!("/nix/store/{H}-a-1.0.drv");
        assert_eq!(parse_drv_param(&format!("{H}-a-1.0.drv")).ok(), Some(full.clone()));
        assert_eq!(parse_drv_param(&format!("%2Fnix%2Fstore%2F{H}-a-1.0.drv")).ok(), Some(full.clone()));
        assert_eq!(parse_drv_param(&format!("%2fnix%2fstore%2f{H}-a-1.0.drv")).ok(), Some(full));
        for bad in [
            "..%2F..%2Fetc%2Fpasswd",
            "%2Fetc%2Fpasswd",
            &format!("%2Fnix%2Fstore%2F..%2F{H}-a.drv"),
            &format!("{H}-a"),
            &format!("{H}-.drv"),
            &format!("{H}-a%2F..%2Fb.drv"),
            &format!("{}e-a.drv", &H[..31]),
            &format!("{}-a.drv", &H[..31]),
            &format!("{H}-a%ZZ.drv"),
            &format!("{H}-a%FF.drv"),
            &format!("{H}-a%00.drv"),
            "",
        ] {
            let e = parse_drv_param(bad).expect_err(bad);
            assert_eq!(e.status(), 400, "{bad}: {e}");
        }
    }

    #[test]
    fn state_details() {
        let f = DrvState::Completed(Completion::Failure { message: "boom".into(), exit_code: Some(3) });
        assert_eq!(state_json(&f), json!({"name": "failure", "message": "boom", "exit_code": 3}));
        assert_eq!(state_json(&DrvState::Cached), json!({"name": "cached"}));
    }

    #[test]
    fn errors_are_json() {
        let e = ApiError::NoLog { drv: "/nix/store/x.drv".into(), attempt: 2 };
        assert_eq!(e.status(), 404);
        assert!(e.to_string().contains("attempt 2"));
        assert_eq!(echo(&"é".repeat(300)).chars().count(), 101);
    }
}
