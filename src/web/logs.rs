//! `GET /v1/logs/{drv}?attempt=N`: the build log of one attempt of a derivation, streamed from disk
//! byte for byte (`text/plain; charset=utf-8`, but never transcoded: a build's non-UTF-8 output reaches
//! the client unchanged), with `X-Content-Type-Options: nosniff` and a `Content-Disposition` file name.
//! The web UI's `/ui/logs/{drv}/raw` serves the same response to a browser session (`log_response`).

use futures_lite::io::{AsyncReadExt as _, BufReader};

use super::drvs::{echo, parse_drv_param, respond, ApiError};
use super::AppState;

/// Which attempt the query asks for: `None` for the latest.
pub(super) fn parse_attempt(req: &tide::Request<AppState>) -> Result<Option<u32>, ApiError> {
    let mut found = None;
    for (k, v) in req.url().query_pairs() {
        if k != "attempt" {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::BadQuery {
                param: "attempt",
                value: echo(&v),
                reason: "given more than once",
            });
        }
        let bad = |reason| ApiError::BadQuery { param: "attempt", value: echo(&v), reason };
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("expected a positive integer"));
        }
        let n: u32 = v.parse().map_err(|_| bad("too large"))?;
        if n == 0 {
            return Err(bad("attempts are numbered from 1"));
        }
        found = Some(n);
    }
    Ok(found)
}

/// An opened build log: which attempt, the file, and its length when opened (a log still being written
/// is served up to that point).
pub(super) struct OpenLog {
    pub(super) attempt: u32,
    pub(super) latest: u32,
    pub(super) file: smol::fs::File,
    pub(super) len: u64,
}

/// The one reader of build logs for `GET /v1/logs/{drv}` and the web UI (read rules already applied):
/// attempt `asked`, or the latest.
pub(super) async fn open_log(state: &AppState, drv: &str, asked: Option<u32>) -> Result<OpenLog, ApiError> {
    let drv = drv.to_string();
    let graph = state.graph.clone();
    let path = drv.clone();
    let known = smol::unblock(move || graph.id_of(&path))
        .await
        .map_err(|e| ApiError::graph("reading the derivation graph", e))?;
    if known.is_none() {
        return Err(ApiError::UnknownDrv { drv });
    }
    let status =
        state.scheduler.state(&drv).await.map_err(|e| ApiError::scheduler("reading the build state", e))?;
    let Some(status) = status.filter(|s| s.attempt > 0) else {
        return Err(ApiError::NeverBuilt { drv });
    };
    let attempt = asked.unwrap_or(status.attempt);
    if !status.attempts.iter().any(|a| a.number == attempt) {
        return Err(ApiError::NoAttempt { drv, attempt, latest: status.attempt });
    }

    let log = crate::nix::build::log_path(&state.logs_dir, &drv, attempt)
        .map_err(|_| ApiError::BadDrv { input: echo(&drv), reason: "not a derivation path" })?;
    let file = match smol::fs::File::open(&log).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::NoLog { drv, attempt }),
        Err(e) => {
            tracing::error!(log = %log.display(), error = %e, "HTTP API: cannot open a build log");
            return Err(ApiError::Internal { during: "opening the build log" });
        }
    };
    let meta = file.metadata().await.map_err(|e| {
        tracing::error!(log = %log.display(), error = %e, "HTTP API: cannot stat a build log");
        ApiError::Internal { during: "opening the build log" }
    })?;
    if !meta.is_file() {
        return Err(ApiError::NoLog { drv, attempt });
    }
    Ok(OpenLog { attempt, latest: status.attempt, file, len: meta.len() })
}

/// The response carrying an opened log: streamed from the file (never read whole into memory), as
/// `text/plain; charset=utf-8` that browsers must not sniff as anything else (a log is whatever a build
/// printed), with a `Content-Disposition` naming it `<name>-attempt-<N>.log` (`attachment` when
/// `download`, else `inline`).
pub(super) fn log_response(drv: &str, log: OpenLog, download: bool) -> tide::Response {
    let OpenLog { attempt, file, len, .. } = log;
    let body = tide::Body::from_reader(BufReader::new(file.take(len)), usize::try_from(len).ok());
    let disposition = if download { "attachment" } else { "inline" };
    tide::Response::builder(200)
        .body(body)
        .content_type("text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .header("Content-Disposition", format!("{disposition}; filename=\"{}\"", log_file_name(drv, attempt)))
        .header("X-Eka-Ci-Attempt", attempt.to_string())
        .build()
}

/// `<name>-attempt-<N>.log` for a derivation's log, with every byte but ASCII letters, digits, `.`, `+`,
/// `-` and `_` replaced by `_` (a derivation name may hold quotes or `;`).
fn log_file_name(drv: &str, attempt: u32) -> String {
    let base = crate::nix::store_path::strip_default_store(drv).unwrap_or(drv);
    let name = base.split_once('-').map_or(base, |(_, n)| n);
    let name = name.strip_suffix(".drv").unwrap_or(name);
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_') { c } else { '_' })
        .collect();
    format!("{safe}-attempt-{attempt}.log")
}

async fn get_log(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let caller = super::auth::caller(&req).await?;
    let drv = parse_drv_param(req.param("drv").unwrap_or_default())?;
    let asked = parse_attempt(&req)?;
    let state = req.state();
    let public = caller.is_anonymous() && super::auth::drv_is_public(state, &drv).await;
    caller.read(state, public)?;
    let log = open_log(state, &drv, asked).await?;
    Ok(log_response(&drv, log, false))
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at("/v1/logs/:drv").get(|req: tide::Request<AppState>| async move { respond(get_log(req).await) });
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_file_names_are_safe() {
        let drv = "/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-a\"b;c=1.0.drv";
        assert_eq!(super::log_file_name(drv, 2), "a_b_c_1.0-attempt-2.log");
        assert_eq!(
            super::log_file_name("/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-hello-2.10.drv", 1),
            "hello-2.10-attempt-1.log"
        );
    }
}
