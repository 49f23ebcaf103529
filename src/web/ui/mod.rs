//! The web UI: server-rendered HTML pages under `/ui/` (maud templates, checked at compile time), with
//! inline CSS, no JavaScript framework and nothing loaded from the network.
//!
//! | file | pages |
//! | --- | --- |
//! | `pages.rs` | `/ui/` (dashboard), `/ui/repos/{owner}/{name}`, `/ui/commits/{sha}` (a pull request's head or any reviewed commit) |
//! | `detail.rs` | `/ui/jobsets/{id}`, `/ui/drvs/{drv}`, `/ui/logs/{drv}?attempt=N`, `/ui/logs/{drv}/raw?attempt=N` (`&download=1`) |
//! | `login.rs` | `/ui/login`, the `[oauth]` callback, `POST /ui/logout`; the viewer and its read rules |
//! | `admin.rs` | `/ui/admin` (sessions, tokens, approvals waiting), `POST /ui/drvs/{drv}/rebuild`, `POST /ui/drvs/{drv}/cancel`, `POST /ui/jobsets/{id}/cancel`, `POST /ui/approve`, `POST /ui/admin/sessions/revoke` |
//! | `session.rs` | sessions in redb, signed cookies, CSRF tokens (no route) |
//! | `ansi.rs` | build-log ANSI colours to spans (no route) |
//! | `live.rs` | `/ui/live.js`: the script that keeps the dashboard, commit and jobset pages live over `/v1/ws/builds` |
//!
//! Every page reads through the same readers as the `/v1` JSON routes (`drvs::read_drv`,
//! `jobsets::read_page`, `logs::open_log`, `builds::read_active`, the stores' own functions) and applies
//! the same read rules (`web::auth`): a browser without a token or session sees public repositories'
//! data only, per `[web] public_read`; anything else answers an HTML page with the same status the API
//! would (401 whether it exists or not). A browser signed in through GitHub (`login.rs`) also sees the
//! private repositories GitHub says its user can read; an administrator sees everything and may act.
//! Errors are HTML, never JSON, and name no server path.

mod admin;
mod ansi;
mod detail;
mod live;
pub mod login;
mod pages;
pub mod session;

pub(in crate::web) use pages::parse_sha;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::drvs::ApiError;
use super::AppState;
use crate::nix::store_path::strip_default_store;

/// The web UI page of commit `sha` under `public_url` (a check run's `details_url`).
pub fn commit_url(public_url: &str, sha: &str) -> String {
    format!("{}/ui/commits/{}", public_url.trim_end_matches('/'), sha.to_ascii_lowercase())
}

/// A path segment with every byte but RFC 3986's unreserved characters percent-encoded.
pub(super) fn segment(raw: &str) -> String {
    crate::forge::github::client::percent_encode(raw)
}

/// A query value, percent-encoded like a path segment.
pub(super) fn query_value(raw: &str) -> String {
    segment(raw)
}

/// The derivation page of `drv`.
pub(super) fn drv_href(drv: &str) -> String {
    format!("/ui/drvs/{}", segment(strip_default_store(drv).unwrap_or(drv)))
}

/// The log page of one attempt of `drv`.
pub(super) fn log_href(drv: &str, attempt: u32) -> String {
    format!("/ui/logs/{}?attempt={attempt}", segment(strip_default_store(drv).unwrap_or(drv)))
}

/// The raw log of one attempt of `drv`, for a browser (its session's read rules).
pub(super) fn raw_log_href(drv: &str, attempt: u32) -> String {
    format!("/ui/logs/{}/raw?attempt={attempt}", segment(strip_default_store(drv).unwrap_or(drv)))
}

pub(super) fn jobset_href(id: crate::jobset::JobsetId) -> String {
    format!("/ui/jobsets/{}", id.0)
}

pub(super) fn commit_href(sha: &str) -> String {
    format!("/ui/commits/{}", segment(sha))
}

/// `/nix/store/<hash>-name.drv` shortened to `name.drv` for display.
pub(super) fn drv_name(drv: &str) -> &str {
    let base = strip_default_store(drv).unwrap_or(drv);
    base.split_once('-').map_or(base, |(_, name)| name)
}

/// Milliseconds since the epoch, as UTC text.
pub(super) fn at_ms(ms: u64) -> String {
    crate::time::readable(ms / 1000)
}

/// A duration in seconds, as `1h 02m 03s` / `2m 03s` / `3s`.
pub(super) fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A state name as a coloured badge (`success`, `failure`, `building`, …).
pub(super) fn badge(state: &str) -> Markup {
    let class = match state {
        "success" | "cached" | "passed" | "evaluated" => "ok",
        "failure" | "transitive-failure" | "eval-error" | "failed" | "blocked" => "bad",
        s if s.starts_with("interrupted") || s == "failed-retry" || s == "cancelled" => "bad",
        "building" | "evaluating" | "queued" | "buildable" | "awaiting-approval" => "run",
        _ => "none",
    };
    html! { span class={ "badge " (class) } data-state=(state) { (state) } }
}

const CSS: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2329;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#fff;text-decoration:none}header .brand{font-weight:700}
main{padding:1em 1.2em;max-width:1200px}
h1{font-size:1.4em;margin:.2em 0 .6em}h2{font-size:1.15em;margin:1.4em 0 .5em}
table{border-collapse:collapse;background:#fff;width:100%;margin:.4em 0}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eaeef2}code,pre,.mono{font-family:ui-monospace,monospace;font-size:13px}
.badge{display:inline-block;padding:0 .5em;border-radius:1em;font-size:12px;font-weight:600;color:#fff}
.badge.ok{background:#1a7f37}.badge.bad{background:#cf222e}.badge.run{background:#9a6700}
.badge.none{background:#6e7781}.muted{color:#57606a}.error{color:#cf222e}
.log{font-family:ui-monospace,monospace;font-size:13px;background:#0d1117;color:#e6edf3;padding:.6em 0;overflow-x:auto;white-space:pre}
.log a.n{display:inline-block;width:5em;padding-right:1em;text-align:right;color:#6e7681;
text-decoration:none;user-select:none}.log div:target{background:#3a3000}
.b{font-weight:700}.fg0{color:#6e7681}.fg1{color:#ff7b72}.fg2{color:#7ee787}.fg3{color:#d29922}
.fg4{color:#79c0ff}.fg5{color:#d2a8ff}.fg6{color:#a5d6ff}.fg7{color:#e6edf3}.fg8{color:#8b949e}
.fg9{color:#ffa198}.fg10{color:#56d364}.fg11{color:#e3b341}.fg12{color:#a5d6ff}.fg13{color:#e2c5ff}
.fg14{color:#b3f0ff}.fg15{color:#fff}.bg1{background:#8e1519}.bg2{background:#0f5323}
.bg3{background:#6c4400}.bg4{background:#0c2d6b}.bg5{background:#5f2b8c}.bg6{background:#074a5b}
.bg7{background:#6e7681}
form.inline{display:inline}.spacer{flex:1}header button{cursor:pointer}nav.pager a{margin-right:1em}.tail{max-height:20em}
";

/// A whole page: the header with navigation (and the viewer's sign-in state), the title and `body`.
pub(super) fn layout(viewer: Option<&login::Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · eka-ci" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    a.brand href="/ui/" { "eka-ci" }
                    a href="/ui/" { "Dashboard" }
                    @if let Some(v) = viewer { (v.header()) }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// An HTML response.
pub(super) fn html_response(status: u16, page: Markup) -> tide::Response {
    tide::Response::builder(status).body(page.into_string()).content_type("text/html; charset=utf-8").build()
}

/// The error page of an API error: the same status and message as the JSON route would answer.
pub(super) fn error_page(e: &ApiError) -> tide::Response {
    let status = e.status();
    let title = match status {
        401 => "Sign-in needed",
        403 => "Not allowed",
        404 => "Not found",
        400 => "Bad request",
        _ => "Error",
    };
    let mut res =
        html_response(status, layout(None, title, html! { p.error id="error" { (e.to_string()) } }));
    if status == 401 {
        res.insert_header("WWW-Authenticate", "Bearer realm=\"eka-ci\"");
    }
    res
}

/// Turns a page's result into its response.
pub(super) fn respond(result: Result<Markup, ApiError>) -> tide::Result {
    Ok(match result {
        Ok(page) => html_response(200, page),
        Err(e) => error_page(&e),
    })
}

pub fn routes(app: &mut tide::Server<AppState>) {
    let callback = app.state().ui.callback_path();
    login::routes(app, &callback);
    admin::routes(app);
    live::routes(app);
    app.at("/ui").get(|_req: tide::Request<AppState>| async move {
        let res: tide::Response = tide::Redirect::permanent("/ui/").into();
        Ok::<_, tide::Error>(res)
    });
    app.at("/ui/").get(|req: tide::Request<AppState>| async move { respond(pages::dashboard(req).await) });
    app.at("/ui/repos/:owner/:name")
        .get(|req: tide::Request<AppState>| async move { respond(pages::repository(req).await) });
    app.at("/ui/commits/:sha")
        .get(|req: tide::Request<AppState>| async move { respond(pages::commit(req).await) });
    app.at("/ui/jobsets/:id")
        .get(|req: tide::Request<AppState>| async move { respond(detail::jobset(req).await) });
    app.at("/ui/drvs/:drv")
        .get(|req: tide::Request<AppState>| async move { respond(detail::drv(req).await) });
    app.at("/ui/logs/:drv")
        .get(|req: tide::Request<AppState>| async move { respond(detail::log(req).await) });
    app.at("/ui/logs/:drv/raw").get(|req: tide::Request<AppState>| async move {
        Ok::<_, tide::Error>(detail::raw_log(req).await.unwrap_or_else(|e| error_page(&e)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(commit_url("https://ci.example.com/", "ABC"), "https://ci.example.com/ui/commits/abc");
        let drv = "/nix/store/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-a?b=1.0.drv";
        assert_eq!(drv_href(drv), "/ui/drvs/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-a%3Fb%3D1.0.drv");
        assert_eq!(log_href(drv, 2), "/ui/logs/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-a%3Fb%3D1.0.drv?attempt=2");
        assert_eq!(drv_name(drv), "a?b=1.0.drv");
        assert_eq!(
            raw_log_href(drv, 1),
            "/ui/logs/lda4a1wrcw7wy9v7nwjhjsrkirbq1zkh-a%3Fb%3D1.0.drv/raw?attempt=1"
        );
        assert_eq!(duration(3723), "1h 02m 03s");
        assert_eq!(duration(61), "1m 01s");
    }

    #[test]
    fn badges_escape_and_classify() {
        assert!(badge("failure").into_string().contains("badge bad"));
        assert!(badge("<x>").into_string().contains("&lt;x&gt;"));
    }
}
