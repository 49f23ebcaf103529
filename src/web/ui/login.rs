//! Who is looking at a web UI page, and signing in: GitHub's OAuth web flow (`/ui/login` →
//! GitHub's authorize page → the `[oauth]` redirect URL's path → a session), `POST /ui/logout`, the
//! read rules for signed-in users (private repositories only when GitHub says the user can read them,
//! asked with the user's token and remembered for [`ACCESS_TTL`]), administrators (`[web] admins`) and
//! the CSRF check of every state-changing form.
//!
//! The OAuth `state` is 32 random bytes, set in an HttpOnly cookie before the redirect and compared
//! (constant time) with the one GitHub sends back: a callback whose state does not match that browser's
//! cookie is refused before the code is exchanged. GitHub's URLs follow `[github] api_url`: the web
//! host is `api.` stripped from the API host (`/api/v3` stripped for GitHub Enterprise Server; any other
//! API URL serves both, as a test's fake GitHub does).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use maud::{html, Markup};
use serde_json::Value;

use super::session::{self, Signer, SESSION_COOKIE, STATE_COOKIE};
use super::{html_response, layout};
use crate::secret::Secret;
use crate::web::auth::Caller;
use crate::web::drvs::ApiError;
use crate::web::AppState;

/// How long GitHub's answer about a user's access to a repository is reused.
pub const ACCESS_TTL: Duration = Duration::from_secs(60);
/// The longest a call to GitHub may take.
const GITHUB_TIMEOUT: Duration = Duration::from_secs(15);

/// `[oauth]` as the web UI uses it.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: Secret,
    /// The callback GitHub redirects to (`[oauth] redirect_url` or its default).
    pub redirect_url: String,
    /// Where `/login/oauth/…` lives.
    pub web_url: String,
    /// Where `GET /user` and `GET /repos/{o}/{r}` live.
    pub api_url: String,
}

/// What the web UI knows about signing in; shared by every request.
#[derive(Debug)]
pub struct UiAuth {
    /// `None`: `[oauth]` has no client id and secret; nobody can sign in.
    pub oauth: Option<OAuthApp>,
    pub signer: Signer,
    /// `[web] admins`, lower-cased.
    pub admins: Vec<String>,
    /// Cookies carry `Secure` (the redirect URL is https).
    pub secure: bool,
    /// (login, owner/name) → (may read, when asked).
    access: Mutex<HashMap<(String, String), (bool, Instant)>>,
}

impl UiAuth {
    pub fn new(oauth: Option<OAuthApp>, signer: Signer, admins: Vec<String>) -> UiAuth {
        let secure = oauth.as_ref().is_some_and(|o| o.redirect_url.starts_with("https://"));
        UiAuth { oauth, signer, admins, secure, access: Mutex::new(HashMap::new()) }
    }

    /// The path the callback is served at (the redirect URL's path).
    pub fn callback_path(&self) -> String {
        let url = self.oauth.as_ref().map_or("/github/auth/callback", |o| o.redirect_url.as_str());
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        match rest.find('/') {
            Some(i) => rest[i..].split(['?', '#']).next().unwrap_or("/").to_string(),
            None => "/".to_string(),
        }
    }
}

/// GitHub's web URL for the OAuth pages, from its API URL.
pub fn oauth_web_url(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if let Some(rest) = api.strip_suffix("/api/v3") {
        return rest.to_string();
    }
    match api.split_once("://") {
        Some((scheme, rest)) if rest.starts_with("api.") => format!("{scheme}://{}", &rest[4..]),
        _ => api.to_string(),
    }
}

/// A signed-in GitHub user.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub login: String,
    pub admin: bool,
    /// The CSRF token of this session's forms.
    pub csrf: String,
    session_id: String,
    token: Secret,
}

/// The viewer of one page: a bearer token (or none), and a session when signed in.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: Caller,
    pub user: Option<SignedIn>,
    /// Whether a sign-in link can be shown.
    pub can_sign_in: bool,
}

impl Viewer {
    /// Whether this viewer reads everything (a token, or an administrator).
    pub fn reads_all(&self) -> bool {
        !self.caller.is_anonymous() || self.user.as_ref().is_some_and(|u| u.admin)
    }

    /// Whether the data's visibility must be looked up before deciding.
    pub fn needs_visibility(&self) -> bool {
        !self.reads_all()
    }

    /// Allows reading data that is `public` (when known) or belongs to `repos` (identities as jobsets
    /// record them): a token or an administrator reads everything; a signed-in user public data and the
    /// private GitHub repositories GitHub says they can read; anyone else what the API's rules allow.
    pub(in crate::web) async fn read(
        &self,
        state: &AppState,
        public: bool,
        repos: &[String],
    ) -> Result<(), ApiError> {
        if self.reads_all() {
            return Ok(());
        }
        let Some(user) = &self.user else { return Ok(self.caller.read(state, public)?) };
        if public {
            return Ok(());
        }
        let mut allowed = !repos.is_empty();
        for repo in repos {
            allowed = allowed && user_may_read(state, user, repo).await;
        }
        if allowed {
            Ok(())
        } else {
            Err(ApiError::NotAllowed { login: user.login.clone() })
        }
    }

    /// Allows reading derivation `drv` (its page and logs): a public one as [`Viewer::read`] allows; a
    /// private one for a signed-in user GitHub says can read a repository whose jobsets' builds need it
    /// (`visibility::repos_of_drv`).
    pub(in crate::web) async fn read_drv(&self, state: &AppState, drv: &str) -> Result<(), ApiError> {
        let public = self.needs_visibility() && crate::web::auth::drv_is_public(state, drv).await;
        if public || self.user.is_none() {
            return self.read(state, public, &[]).await;
        }
        let (store, graph, jobsets, d) =
            (state.store.clone(), state.graph.clone(), state.jobsets.clone(), drv.to_string());
        let repos = smol::unblock(move || crate::visibility::repos_of_drv(&store, &graph, &jobsets, &d))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "web UI: reading which repositories need a derivation failed");
                Vec::new()
            });
        for repo in &repos {
            if self.read(state, false, std::slice::from_ref(repo)).await.is_ok() {
                return Ok(());
            }
        }
        self.read(state, false, &[]).await
    }

    /// What the page header shows.
    pub fn header(&self) -> Markup {
        html! {
            span.spacer {}
            @if let Some(u) = &self.user {
                @if u.admin { a href="/ui/admin" { "Admin" } }
                span id="login" { (u.login) }
                form.inline method="post" action="/ui/logout" {
                    input type="hidden" name="csrf" value=(u.csrf);
                    button id="logout" type="submit" { "Sign out" }
                }
            } @else if self.can_sign_in {
                a id="signin" href="/ui/login" { "Sign in with GitHub" }
            }
        }
    }
}

/// The viewer of `req`: its bearer token (a bad one is refused as by the API) and its session cookie
/// (one that is forged, revoked or expired is ignored: the page is shown as to an anonymous browser).
pub(in crate::web) async fn viewer(req: &tide::Request<AppState>) -> Result<Viewer, ApiError> {
    let caller = crate::web::auth::caller(req).await?;
    let state = req.state();
    let ui = &state.ui;
    let mut user = None;
    if let Some(id) = session::cookie(req, SESSION_COOKIE).and_then(|v| ui.signer.verify_cookie(v)) {
        let (store, sid) = (state.store.clone(), id.to_string());
        match smol::unblock(move || session::get(&store, &sid)).await {
            Ok(Some(s)) => {
                user = Some(SignedIn {
                    admin: ui.admins.iter().any(|a| a == &s.login),
                    csrf: ui.signer.csrf(id),
                    session_id: id.to_string(),
                    login: s.login,
                    token: s.github_token,
                })
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "web UI: reading a session failed");
                return Err(ApiError::Internal { during: "reading the session" });
            }
        }
    }
    Ok(Viewer { caller, user, can_sign_in: ui.oauth.is_some() })
}

/// The GitHub `owner/name` of a repository identity (a clone URL), from the runs that name it.
fn github_repo_of(state: &AppState, repo: &str) -> Option<String> {
    let runs = crate::forge::github::runs::all(&state.store).ok()?;
    runs.into_iter().find(|(_, r)| r.clone_url == repo).map(|(_, r)| r.repo)
}

/// Whether GitHub says `user` can read `repo` (`GET /repos/{o}/{r}` with their token: 200), cached.
async fn user_may_read(state: &AppState, user: &SignedIn, repo: &str) -> bool {
    let (s, r) = (state.clone(), repo.to_string());
    let Some(full) = smol::unblock(move || github_repo_of(&s, &r)).await else { return false };
    let key = (user.login.clone(), full.clone());
    if let Ok(cache) = state.ui.access.lock() {
        if let Some((ok, at)) = cache.get(&key) {
            if at.elapsed() < ACCESS_TTL {
                return *ok;
            }
        }
    }
    let Some(oauth) = state.ui.oauth.clone() else { return false };
    let token = user.token.clone();
    let ok = smol::unblock(move || {
        let url = format!("{}/repos/{full}", oauth.api_url);
        match agent().get(&url).header("Authorization", &format!("Bearer {}", token.expose())).call() {
            Ok(res) => res.status().as_u16() == 200,
            Err(e) => {
                tracing::warn!(error = %e, "web UI: asking GitHub about a repository failed");
                false
            }
        }
    })
    .await;
    if let Ok(mut cache) = state.ui.access.lock() {
        cache.retain(|_, (_, at)| at.elapsed() < ACCESS_TTL);
        cache.insert(key, (ok, Instant::now()));
    }
    ok
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(GITHUB_TIMEOUT))
        .user_agent("eka-ci")
        .build()
        .into()
}

/// What signing in can fail with; shown on the page (never a secret or a code).
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("signing in is not configured on this server: set [oauth] client_id and client_secret")]
    NotConfigured,
    #[error("the sign-in was refused: its `state` does not match this browser's (a forged or stale link); sign in again")]
    BadState,
    #[error("the sign-in was refused: GitHub sent no code")]
    NoCode,
    #[error("GitHub refused the sign-in: {0}")]
    GitHub(String),
    #[error("internal error while {0}; see the server log")]
    Internal(&'static str),
}

impl LoginError {
    fn status(&self) -> u16 {
        match self {
            LoginError::NotConfigured => 404,
            LoginError::BadState | LoginError::NoCode => 400,
            LoginError::GitHub(_) => 502,
            LoginError::Internal(_) => 500,
        }
    }
}

fn login_error(e: &LoginError) -> tide::Response {
    let mut res = html_response(
        e.status(),
        layout(None, "Sign-in failed", html! { p.error id="error" { (e.to_string()) } }),
    );
    res.insert_header("Cache-Control", "no-store");
    res
}

/// `GET /ui/login`: a fresh `state` in a cookie, then GitHub's authorize page.
async fn login(req: tide::Request<AppState>) -> Result<tide::Response, LoginError> {
    let ui = &req.state().ui;
    let oauth = ui.oauth.as_ref().ok_or(LoginError::NotConfigured)?;
    let state = session::random_hex(32).map_err(|e| {
        tracing::error!(error = %e, "web UI: no random bytes for an OAuth state");
        LoginError::Internal("starting the sign-in")
    })?;
    let q = super::query_value;
    let url = format!(
        "{}/login/oauth/authorize?client_id={}&redirect_uri={}&state={}&scope=repo",
        oauth.web_url,
        q(&oauth.client_id),
        q(&oauth.redirect_url),
        state
    );
    let mut res =
        tide::Response::builder(302).header("Location", url).header("Cache-Control", "no-store").build();
    res.append_header(
        "Set-Cookie",
        session::set_cookie(STATE_COOKIE, &state, session::STATE_SECONDS, ui.secure),
    );
    Ok(res)
}

/// The OAuth callback: checks `state` against the cookie, exchanges the code, asks who the user is and
/// starts a session.
async fn callback(req: tide::Request<AppState>) -> Result<tide::Response, LoginError> {
    let app = req.state();
    let ui = &app.ui;
    let oauth = ui.oauth.clone().ok_or(LoginError::NotConfigured)?;
    let (mut code, mut state) = (None, None);
    for (k, v) in req.url().query_pairs() {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => state = Some(v.into_owned()),
            "error" => return Err(LoginError::GitHub(crate::text::ellipsis_bytes(&v, 200))),
            _ => {}
        }
    }
    let expected = session::cookie(&req, STATE_COOKIE).unwrap_or_default();
    let given = state.unwrap_or_default();
    if expected.len() != 64 || !session::same(expected, &given) {
        return Err(LoginError::BadState);
    }
    let code = code.filter(|c| !c.is_empty() && c.len() <= 512).ok_or(LoginError::NoCode)?;
    let store = app.store.clone();
    let (login, id) = smol::unblock(move || {
        let agent = agent();
        let mut res = agent
            .post(format!("{}/login/oauth/access_token", oauth.web_url))
            .header("Accept", "application/json")
            .send_form([
                ("client_id", oauth.client_id.as_str()),
                ("client_secret", oauth.client_secret.expose()),
                ("code", code.as_str()),
                ("redirect_uri", oauth.redirect_url.as_str()),
            ])
            .map_err(|e| LoginError::GitHub(format!("exchanging the code failed: {e}")))?;
        let body: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        let Some(token) = body["access_token"].as_str().filter(|t| !t.is_empty()) else {
            let why =
                body["error_description"].as_str().or(body["error"].as_str()).unwrap_or("no access token");
            return Err(LoginError::GitHub(crate::text::ellipsis_bytes(why, 200)));
        };
        let token = Secret::new(token.to_string());
        let mut res = agent
            .get(format!("{}/user", oauth.api_url))
            .header("Authorization", &format!("Bearer {}", token.expose()))
            .header("Accept", "application/vnd.github+json")
            .call()
            .map_err(|e| LoginError::GitHub(format!("asking who you are failed: {e}")))?;
        if res.status().as_u16() != 200 {
            return Err(LoginError::GitHub(format!("GET /user answered {}", res.status().as_u16())));
        }
        let user: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        let (Some(login), Some(uid)) = (user["login"].as_str(), user["id"].as_u64()) else {
            return Err(LoginError::GitHub("GET /user did not name a login".into()));
        };
        if crate::forge::github::approvals::validate_login(login).is_err() {
            return Err(LoginError::GitHub("GET /user named an invalid login".into()));
        }
        let id = session::create(&store, login, uid, token).map_err(|e| {
            tracing::error!(error = %e, "web UI: storing a session failed");
            LoginError::Internal("starting the session")
        })?;
        Ok((login.to_ascii_lowercase(), id))
    })
    .await?;
    tracing::info!(login = %login, "web UI: signed in");
    let mut res =
        tide::Response::builder(303).header("Location", "/ui/").header("Cache-Control", "no-store").build();
    res.append_header(
        "Set-Cookie",
        session::set_cookie(
            SESSION_COOKIE,
            &ui.signer.cookie_value(&id),
            session::SESSION_SECONDS,
            ui.secure,
        ),
    );
    res.append_header("Set-Cookie", session::set_cookie(STATE_COOKIE, "", 0, ui.secure));
    Ok(res)
}

/// The fields of an `application/x-www-form-urlencoded` body (at most 16 KiB read).
pub(in crate::web) async fn form(
    req: &mut tide::Request<AppState>,
) -> Result<HashMap<String, String>, ApiError> {
    use futures_lite::AsyncReadExt as _;
    let mut body = String::new();
    req.take_body()
        .take(16 * 1024)
        .read_to_string(&mut body)
        .await
        .map_err(|_| ApiError::BadBody { reason: "the form is not UTF-8 text".into() })?;
    let mut out = HashMap::new();
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let dec = |s: &str| crate::web::drvs::percent_decode(&s.replace('+', " "));
        let (Ok(k), Ok(v)) = (dec(k), dec(v)) else {
            return Err(ApiError::BadBody { reason: "malformed form encoding".into() });
        };
        out.insert(k, v);
    }
    Ok(out)
}

/// The signed-in user of a state-changing form whose `csrf` field matches their session's token.
pub(in crate::web) fn check_csrf<'a>(
    viewer: &'a Viewer,
    fields: &HashMap<String, String>,
) -> Result<&'a SignedIn, ApiError> {
    let user = viewer.user.as_ref().ok_or(ApiError::Csrf)?;
    let given = fields.get("csrf").map(String::as_str).unwrap_or_default();
    if session::same(&user.csrf, given) {
        Ok(user)
    } else {
        Err(ApiError::Csrf)
    }
}

/// `POST /ui/logout`: revokes the session.
async fn logout(mut req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let viewer = viewer(&req).await?;
    let fields = form(&mut req).await?;
    let user = check_csrf(&viewer, &fields)?;
    let (store, id) = (req.state().store.clone(), user.session_id.clone());
    smol::unblock(move || session::revoke(&store, &id))
        .await
        .map_err(|e| ApiError::store("ending the session", e))?;
    let mut res = tide::Response::builder(303).header("Location", "/ui/").build();
    res.append_header("Set-Cookie", session::set_cookie(SESSION_COOKIE, "", 0, req.state().ui.secure));
    Ok(res)
}

pub fn routes(app: &mut tide::Server<AppState>, callback_path: &str) {
    app.at("/ui/login").get(|req: tide::Request<AppState>| async move {
        Ok(login(req).await.unwrap_or_else(|e| login_error(&e)))
    });
    app.at(callback_path).get(|req: tide::Request<AppState>| async move {
        Ok(callback(req).await.unwrap_or_else(|e| login_error(&e)))
    });
    app.at("/ui/logout").post(|req: tide::Request<AppState>| async move {
        Ok(logout(req).await.unwrap_or_else(|e| super::error_page(&e)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_web_urls() {
        assert_eq!(oauth_web_url("https://api.github.com"), "https://github.com");
        assert_eq!(oauth_web_url("https://ghe.example.com/api/v3"), "https://ghe.example.com");
        assert_eq!(oauth_web_url("http://127.0.0.1:4000"), "http://127.0.0.1:4000");
    }

    #[test]
    fn callback_paths() {
        let mk = |url: &str| {
            let app = OAuthApp {
                client_id: "c".into(),
                client_secret: Secret::new("s"),
                redirect_url: url.into(),
                web_url: String::new(),
                api_url: String::new(),
            };
            UiAuth::new(Some(app), Signer::new(None).expect("signer"), vec![])
        };
        assert_eq!(mk("https://ci.example.com/auth/cb?x=1").callback_path(), "/auth/cb");
        assert!(mk("https://ci.example.com/auth/cb").secure);
        assert_eq!(mk("http://127.0.0.1:3030").callback_path(), "/");
        assert!(!mk("http://127.0.0.1:3030/github/auth/callback").secure);
    }
}
