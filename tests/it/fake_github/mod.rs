//! A fake GitHub REST API for tests: a real HTTP/1.1 server on 127.0.0.1 (an ephemeral port) in a
//! background thread, answering the endpoints eka-ci uses with bodies built from GitHub's own examples
//! (`tests/fixtures/github/api/`, read at run time) adjusted to each request.
//!
//! * `POST /app/installations/{id}/access_tokens` and `GET /repos/{o}/{r}/installation` require a valid
//!   App JWT (RS256, signed by the test key in `tests/fixtures/github/keys/`, `iss` = [`APP_ID`], at
//!   most 10 minutes long); repository endpoints require an installation token this fake issued and
//!   that has not expired. Otherwise: 401 with GitHub's "Bad credentials" body.
//! * Check runs are stored: create gives increasing ids and echoes the request, PATCH updates, the
//!   list for a ref returns the stored runs of that SHA.
//! * Pull requests (`GET pulls/{n}`, from GitHub's example with per-test fields merged in) can be merged
//!   (`PUT pulls/{n}/merge`) as GitHub does: 409 when `sha` is not the head, 405 when the method is not
//!   allowed by the repository (`allow_*_merge`) or the pull request is not mergeable or open; a merged
//!   pull request is then closed and merged. Reactions on issue comments (201, or 200 when the same
//!   one exists) and issue comments are stored.
//! * Reviews (`GET pulls/{n}/reviews`, GitHub's example review per entry, paged by `per_page`/`page`)
//!   are what the test added with [`FakeGitHub::add_review`].
//! * `POST /graphql` answers the two GraphQL operations eka-ci sends, as GitHub's GraphQL API does
//!   (`data`, or `errors` with 200): `repository.pullRequest { id isMergeQueueEnabled }` and
//!   `enablePullRequestAutoMerge` (refused unless the repository has a merge queue here or allows
//!   auto-merge, and when `expectedHeadOid` is not the head); with a merge queue
//!   ([`FakeGitHub::set_merge_queue`]) `PUT pulls/{n}/merge` answers 405 as GitHub's rulesets do.
//! * `GET /user` answers for person tokens registered with [`FakeGitHub::add_user_token`], which may
//!   also read pull requests.
//! * Every request is recorded ([`Call`]: method, path, query, headers, body, status answered).
//! * [`FakeGitHub::inject`] makes the next N calls matching a method and path pattern (`*` matches
//!   anything) answer with a given [`Reply`]: GitHub error bodies, rate limits, 5xx.
//!
//! * [`FakeGitHub::git_host`] (`git.rs`) serves repositories over HTTPS as GitHub's git host does for
//!   private repositories: only with an installation token this fake issued.
//!
//! Usable from any integration test with `mod fake_github;`.
#![allow(dead_code)]

pub mod git;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

/// The App id the fake expects as the JWT issuer.
pub const APP_ID: &str = "4242";
/// The installation id the fake reports for every repository (unless changed).
pub const INSTALLATION_ID: u64 = 77;
/// The test App's private key, PKCS#1 (test-only key; see the keys README).
pub const PRIVATE_KEY_PKCS1: &str = include_str!("../../fixtures/github/keys/test-app-key.pkcs1.pem");
/// The same key, PKCS#8.
pub const PRIVATE_KEY_PKCS8: &str = include_str!("../../fixtures/github/keys/test-app-key.pkcs8.pem");
/// Its public key, used to verify JWTs.
pub const PUBLIC_KEY: &str = include_str!("../../fixtures/github/keys/test-app-key.pub.pem");

const DOCS: &str = "https://docs.github.com/rest";

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The path, percent-decoded, without the query.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The status the fake answered with.
    pub status: u16,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Value::Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// An answer to inject.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// GitHub's usual error body: `{"message", "documentation_url"}`.
    pub fn error(status: u16, message: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: json!({"message": message, "documentation_url": DOCS}).to_string(),
        }
    }

    /// 422 "Validation Failed" with one `errors` entry, as GitHub sends it.
    pub fn validation_failed(resource: &str, field: &str, code: &str) -> Reply {
        Reply {
            status: 422,
            headers: Vec::new(),
            body: json!({
                "message": "Validation Failed",
                "errors": [{"resource": resource, "field": field, "code": code}],
                "documentation_url": DOCS,
            })
            .to_string(),
        }
    }

    /// A primary rate limit: 403, `X-RateLimit-Remaining: 0`, reset `reset_in` from now.
    pub fn rate_limited(reset_in: Duration) -> Reply {
        let reset = now_secs() + reset_in.as_secs();
        let mut reply = Reply::error(403, "API rate limit exceeded for installation ID 77.");
        reply.headers = vec![
            ("X-RateLimit-Limit".into(), "5000".into()),
            ("X-RateLimit-Remaining".into(), "0".into()),
            ("X-RateLimit-Used".into(), "5000".into()),
            ("X-RateLimit-Reset".into(), reset.to_string()),
        ];
        reply
    }

    /// A secondary rate limit with `Retry-After: secs` (status 429 or 403).
    pub fn retry_after(status: u16, secs: u64) -> Reply {
        let mut reply = Reply::error(
            status,
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        );
        reply.headers = vec![("Retry-After".into(), secs.to_string())];
        reply
    }
}

struct Injection {
    method: String,
    pattern: String,
    remaining: usize,
    reply: Reply,
}

struct Token {
    value: String,
    installation: u64,
    expires: u64,
}

struct Fixtures {
    token: Value,
    installation: Value,
    check_run: Value,
    pull: Value,
    permission: Value,
    reaction: Value,
    comment: Value,
    merge: Value,
    review: Value,
    user: Value,
}

struct State {
    calls: Vec<Call>,
    injections: Vec<Injection>,
    tokens: Vec<Token>,
    token_lifetime: Duration,
    installation_id: u64,
    next_check_run_id: u64,
    check_runs: Vec<(String, Value)>,
    permissions: HashMap<(String, String), String>,
    pulls: HashMap<(String, u64), Value>,
    /// (repository, comment id, content) of every reaction, in creation order.
    reactions: Vec<(String, u64, String)>,
    /// (repository, issue number, comment) of every issue comment created.
    comments: Vec<(String, u64, Value)>,
    next_id: u64,
    /// Reviews per (repository, pull request), in submission order.
    reviews: HashMap<(String, u64), Vec<Value>>,
    /// Repositories whose base branches have a merge queue.
    merge_queues: Vec<String>,
    /// Person tokens: token → (login, id).
    user_tokens: HashMap<String, (String, u64)>,
    /// (repository, number, merge method, expected head) of every auto-merge enabled through GraphQL.
    auto_merges: Vec<(String, u64, String, String)>,
    fixtures: Fixtures,
    oauth: OAuthState,
}

/// The OAuth App side: who the next authorization signs in, issued codes and user tokens, and which
/// users may read which private repositories.
#[derive(Default)]
struct OAuthState {
    /// (client id, client secret) of the registered OAuth App.
    client: Option<(String, String)>,
    /// The user the authorize page signs in (login, id).
    user: Option<(String, u64)>,
    /// Unused codes → (user, redirect_uri).
    codes: HashMap<String, ((String, u64), String)>,
    /// User access tokens → user.
    tokens: HashMap<String, (String, u64)>,
    /// Repository (`owner/name`) → logins that may read it.
    readers: HashMap<String, Vec<String>>,
}

/// The running fake. Dropping it stops accepting connections.
pub struct FakeGitHub {
    server: Loopback<State>,
}

/// A loopback HTTP server on an ephemeral port of 127.0.0.1 with state `S` shared by its connections,
/// each served by `serve` on a thread of its own. Dropping it stops accepting connections.
pub(crate) struct Loopback<S> {
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<Mutex<S>>,
    stop: Arc<AtomicBool>,
}

impl<S: Send + 'static> Loopback<S> {
    pub(crate) fn start(what: &str, state: S, serve: fn(TcpStream, &Arc<Mutex<S>>)) -> Loopback<S> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {what}: {e}"));
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let st = state.clone();
        accept_loop(listener, stop.clone(), move |conn| {
            let st = st.clone();
            move || serve(conn, &st)
        });
        Loopback { addr, state, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S> Drop for Loopback<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/github/api/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Accepts connections on a background thread until `stop` is set (and a connection wakes it), each
/// served on a thread of its own by the closure `handler` makes for it.
pub(crate) fn accept_loop<H, F>(listener: TcpListener, stop: Arc<AtomicBool>, handler: H)
where
    H: Fn(TcpStream) -> F + Send + 'static,
    F: FnOnce() + Send + 'static,
{
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            std::thread::spawn(handler(conn));
        }
    });
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl FakeGitHub {
    /// Starts the server on 127.0.0.1 with an ephemeral port.
    pub fn start() -> FakeGitHub {
        let state = State {
            calls: Vec::new(),
            injections: Vec::new(),
            tokens: Vec::new(),
            token_lifetime: Duration::from_secs(3600),
            installation_id: INSTALLATION_ID,
            next_check_run_id: 1001,
            check_runs: Vec::new(),
            permissions: HashMap::new(),
            pulls: HashMap::new(),
            reactions: Vec::new(),
            comments: Vec::new(),
            next_id: 5001,
            reviews: HashMap::new(),
            merge_queues: Vec::new(),
            user_tokens: HashMap::new(),
            auto_merges: Vec::new(),
            oauth: OAuthState::default(),
            fixtures: Fixtures {
                token: fixture("apps.create-installation-access-token.response.201.json"),
                installation: fixture("apps.get-repo-installation.response.200.json"),
                check_run: fixture("checks.create.response.201.json"),
                pull: fixture("pulls.get.response.200.json"),
                permission: fixture("repos.get-collaborator-permission-level.response.200.json"),
                reaction: fixture("reactions.create-for-issue-comment.response.201.json"),
                comment: fixture("issues.create-comment.response.201.json"),
                merge: fixture("pulls.merge.response.200.json"),
                review: fixture("pulls.list-reviews.response.200.json")[0].clone(),
                user: fixture("users.get-authenticated.response.200.json"),
            },
        };
        FakeGitHub { server: Loopback::start("the fake GitHub", state, serve) }
    }

    /// Registers the OAuth App (`client_id`, `client_secret`) whose web flow `/login/oauth/…` serves.
    pub fn set_oauth_app(&self, client_id: &str, client_secret: &str) {
        self.lock().oauth.client = Some((client_id.to_string(), client_secret.to_string()));
    }

    /// The user the authorize page signs in from now on (GitHub's page would ask them to approve).
    pub fn set_oauth_user(&self, login: &str, id: u64) {
        self.lock().oauth.user = Some((login.to_string(), id));
    }

    /// Lets `login` read `repo` (`GET /repos/{owner}/{name}` with their token answers 200, else 404).
    pub fn grant_read(&self, repo: &str, login: &str) {
        self.lock().oauth.readers.entry(repo.to_string()).or_default().push(login.to_string());
    }

    /// The API base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.server.lock()
    }

    /// Every request so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The requests with this method whose path matches `pattern` (`*` matches anything).
    pub fn calls_to(&self, method: &str, pattern: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method && wildcard(pattern, &c.path)).collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The next `times` requests with `method` (or `"*"`) whose path matches `pattern` get `reply`.
    pub fn inject(&self, method: &str, pattern: &str, times: usize, reply: Reply) {
        self.lock().injections.push(Injection {
            method: method.to_string(),
            pattern: pattern.to_string(),
            remaining: times,
            reply,
        });
    }

    /// How long newly issued installation tokens are valid (default one hour).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.lock().token_lifetime = lifetime;
    }

    /// Every installation token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().tokens.iter().map(|t| t.value.clone()).collect()
    }

    /// Makes an issued token invalid, as if it had been revoked.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// The installation id reported by `GET /repos/{o}/{r}/installation` and checked nowhere else.
    pub fn set_installation_id(&self, id: u64) {
        self.lock().installation_id = id;
    }

    /// The permission (`admin`, `write`, `read`, `none`) of `user` on `repo` (default `none`).
    pub fn set_permission(&self, repo: &str, user: &str, permission: &str) {
        self.lock().permissions.insert((repo.to_string(), user.to_string()), permission.to_string());
    }

    /// Fields merged (recursively) into the example pull request served for `repo` #`number`.
    pub fn set_pull_request(&self, repo: &str, number: u64, patch: Value) {
        self.lock().pulls.insert((repo.to_string(), number), patch);
    }

    /// The pull request `repo` #`number` as `GET pulls/{n}` serves it.
    pub fn pull_request(&self, repo: &str, number: u64) -> Value {
        pull(&self.lock(), repo, number)
    }

    /// The reactions (`+1`, `rocket`, …) on issue comment `comment_id` of `repo`, in creation order.
    pub fn reactions(&self, repo: &str, comment_id: u64) -> Vec<String> {
        let st = self.lock();
        st.reactions
            .iter()
            .filter(|(r, c, _)| r == repo && *c == comment_id)
            .map(|(_, _, v)| v.clone())
            .collect()
    }

    /// The bodies of the comments created on issue or pull request `number` of `repo`, in order.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<String> {
        let st = self.lock();
        st.comments
            .iter()
            .filter(|(r, n, _)| r == repo && *n == number)
            .map(|(_, _, c)| c["body"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// Adds a review of `repo` #`number` by `user` (login, id) in `state` (`APPROVED`, `DISMISSED`, …) on
    /// `commit`, as the newest one; returns its id.
    pub fn add_review(&self, repo: &str, number: u64, user: (&str, u64), state: &str, commit: &str) -> u64 {
        let mut st = self.lock();
        let id = st.next_id;
        st.next_id += 1;
        let mut review = st.fixtures.review.clone();
        review["id"] = json!(id);
        review["node_id"] = json!(format!("PRR_fake{id}"));
        review["user"]["login"] = json!(user.0);
        review["user"]["id"] = json!(user.1);
        review["state"] = json!(state);
        review["commit_id"] = json!(commit);
        review["submitted_at"] = json!(rfc3339(now_secs()));
        review["html_url"] = json!(format!("https://github.com/{repo}/pull/{number}#pullrequestreview-{id}"));
        st.reviews.entry((repo.to_string(), number)).or_default().push(review);
        id
    }

    /// Changes the state of review `id` (a dismissal: `DISMISSED`).
    pub fn set_review_state(&self, id: u64, state: &str) {
        let mut st = self.lock();
        for review in st.reviews.values_mut().flatten() {
            if review["id"] == json!(id) {
                review["state"] = json!(state);
            }
        }
    }

    /// Whether `repo`'s base branches have a merge queue.
    pub fn set_merge_queue(&self, repo: &str, on: bool) {
        let mut st = self.lock();
        st.merge_queues.retain(|r| r != repo);
        if on {
            st.merge_queues.push(repo.to_string());
        }
    }

    /// Registers a person's GitHub token: `GET /user` answers `login` and `id` for it.
    pub fn add_user_token(&self, token: &str, login: &str, id: u64) {
        self.lock().user_tokens.insert(token.to_string(), (login.to_string(), id));
    }

    /// (repository, number, merge method, expected head) of every auto-merge enabled through GraphQL.
    pub fn auto_merges(&self) -> Vec<(String, u64, String, String)> {
        self.lock().auto_merges.clone()
    }

    /// The stored check runs of `repo`, in creation order.
    pub fn check_runs(&self, repo: &str) -> Vec<Value> {
        self.lock().check_runs.iter().filter(|(r, _)| r == repo).map(|(_, v)| v.clone()).collect()
    }
}

/// `*` matches any run of characters, `/` included.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut pos = first.len();
    let end = text.len() - last.len();
    for part in &parts[1..parts.len() - 1] {
        match text[pos..end].find(part) {
            Some(i) => pos += i + part.len(),
            None => return false,
        }
    }
    true
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) =
                std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

// --- HTTP ------------------------------------------------------------------------------------------

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let (method, target, headers, body) = read_http_request(reader)?;
    Some(Request { method, target, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// One HTTP/1.1 request: method, target, headers (names lower-cased) and the body (de-chunked).
pub(crate) type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

pub(crate) fn read_http_request(reader: &mut impl BufRead) -> Option<RawRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
    }
    Some((method, target, headers, body))
}

fn serve(conn: TcpStream, state: &Arc<Mutex<State>>) {
    let Ok(write_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let Some(req) = read_request(&mut reader) else { return };
    let (raw_path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (req.target.clone(), String::new()),
    };
    let path = percent_decode(&raw_path);
    let reply = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let injected = st.injections.iter_mut().find(|i| {
            i.remaining > 0 && (i.method == "*" || i.method == req.method) && wildcard(&i.pattern, &path)
        });
        let reply = match injected {
            Some(inj) => {
                inj.remaining -= 1;
                inj.reply.clone()
            }
            None => route(&mut st, &req, &raw_path, &query),
        };
        st.injections.retain(|i| i.remaining > 0);
        st.calls.push(Call {
            method: req.method.clone(),
            path,
            query,
            headers: req.headers.clone(),
            body: req.body.clone(),
            status: reply.status,
        });
        reply
    };
    let mut out = write_half;
    let typed = reply.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n{}Content-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        if typed { "" } else { "Content-Type: application/json; charset=utf-8\r\n" },
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(reply.body.as_bytes());
    let _ = out.flush();
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn ok(status: u16, body: Value) -> Reply {
    Reply { status, headers: Vec::new(), body: body.to_string() }
}

fn bad_credentials() -> Reply {
    Reply::error(401, "Bad credentials")
}

// --- routing ---------------------------------------------------------------------------------------

fn bearer(req: &Request) -> Option<String> {
    let v = req.headers.iter().find(|(k, _)| k == "authorization").map(|(_, v)| v.clone())?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")).map(|t| t.trim().to_string())
}

#[derive(serde::Deserialize)]
struct JwtClaims {
    iat: u64,
    exp: u64,
    iss: String,
}

fn jwt_ok(req: &Request) -> bool {
    let Some(token) = bearer(req) else { return false };
    let Ok(key) = DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()) else { return false };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[APP_ID]);
    validation.set_required_spec_claims(&["exp", "iat", "iss"]);
    let Ok(data) = jsonwebtoken::decode::<JwtClaims>(&token, &key, &validation) else { return false };
    let now = now_secs();
    let c = data.claims;
    c.iss == APP_ID && c.exp <= now + 600 && c.iat <= now + 60 && c.exp > c.iat && c.exp - c.iat <= 660
}

fn token_ok(st: &State, req: &Request) -> bool {
    bearer(req).is_some_and(|token| token_valid(st, &token) || st.user_tokens.contains_key(&token))
}

/// Whether this fake issued `token` and it has not expired.
fn token_valid(st: &State, token: &str) -> bool {
    let now = now_secs();
    st.tokens.iter().any(|t| t.value == token && t.expires > now)
}

fn route(st: &mut State, req: &Request, raw_path: &str, query: &str) -> Reply {
    let segs: Vec<String> = raw_path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    match (m, s.as_slice()) {
        ("GET", ["login", "oauth", "authorize"]) => oauth_authorize(st, query),
        ("POST", ["login", "oauth", "access_token"]) => oauth_access_token(st, req),
        ("GET", ["repos", owner, repo]) if bearer(req).is_some_and(|t| st.oauth.tokens.contains_key(&t)) => {
            let login =
                bearer(req).and_then(|t| st.oauth.tokens.get(&t).map(|u| u.0.clone())).unwrap_or_default();
            let full = format!("{owner}/{repo}");
            if st.oauth.readers.get(&full).is_some_and(|r| r.contains(&login)) {
                ok(
                    200,
                    json!({ "full_name": full, "name": repo, "private": true, "owner": { "login": owner } }),
                )
            } else {
                Reply::error(404, "Not Found")
            }
        }
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            if !jwt_ok(req) {
                return Reply::error(401, "A JSON web token could not be decoded");
            }
            let Ok(installation) = id.parse::<u64>() else { return Reply::error(404, "Not Found") };
            let expires = now_secs() + st.token_lifetime.as_secs();
            let value = format!("ghs_fake{:04}x{}", st.tokens.len() + 1, now_nanos() % 1_000_000_007);
            st.tokens.push(Token { value: value.clone(), installation, expires });
            let mut body = st.fixtures.token.clone();
            body["token"] = json!(value);
            body["expires_at"] = json!(rfc3339(expires));
            ok(201, body)
        }
        ("GET", ["repos", owner, _repo, "installation"]) => {
            if !jwt_ok(req) {
                return Reply::error(401, "A JSON web token could not be decoded");
            }
            let mut body = st.fixtures.installation.clone();
            body["id"] = json!(st.installation_id);
            body["app_id"] = json!(APP_ID.parse::<u64>().unwrap_or(0));
            body["account"]["login"] = json!(owner);
            ok(200, body)
        }
        // A user's token: one the OAuth flow issued, or one a test registered.
        ("GET", ["user"]) => {
            let token = bearer(req);
            let user = token.as_ref().and_then(|t| st.oauth.tokens.get(t).or_else(|| st.user_tokens.get(t)));
            let Some((login, id)) = user.cloned() else {
                return bad_credentials();
            };
            let mut body = st.fixtures.user.clone();
            body["login"] = json!(login);
            body["id"] = json!(id);
            ok(200, body)
        }
        ("POST", ["graphql"]) => {
            if !bearer(req).is_some_and(|t| token_valid(st, &t)) {
                return bad_credentials();
            }
            graphql(st, req)
        }
        (_, ["repos", ..]) if !token_ok(st, req) => bad_credentials(),
        ("GET", ["repos", owner, repo, "pulls", n, "reviews"]) => {
            let Ok(number) = n.parse::<u64>() else { return Reply::error(404, "Not Found") };
            let all = st.reviews.get(&(format!("{owner}/{repo}"), number)).cloned().unwrap_or_default();
            let per_page = query_param(query, "per_page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(30);
            let page = query_param(query, "page").and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
            let start = (page - 1) * per_page.clamp(1, 100);
            let items: Vec<Value> = all.into_iter().skip(start).take(per_page.clamp(1, 100)).collect();
            ok(200, Value::Array(items))
        }
        ("GET", ["repos", owner, repo, "pulls", n]) => {
            let Ok(number) = n.parse::<u64>() else { return Reply::error(404, "Not Found") };
            ok(200, pull(st, &format!("{owner}/{repo}"), number))
        }
        ("PUT", ["repos", owner, repo, "pulls", n, "merge"]) => {
            let Ok(number) = n.parse::<u64>() else { return Reply::error(404, "Not Found") };
            merge_pull(st, &format!("{owner}/{repo}"), number, req)
        }
        ("POST", ["repos", owner, repo, "issues", "comments", id, "reactions"]) => {
            let Ok(id) = id.parse::<u64>() else { return Reply::error(404, "Not Found") };
            let Ok(body) = serde_json::from_str::<Value>(&req.body) else {
                return Reply::error(400, "Problems parsing JSON");
            };
            let content = body["content"].as_str().unwrap_or("").to_string();
            let allowed = ["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"];
            if !allowed.contains(&content.as_str()) {
                return Reply::validation_failed("Reaction", "content", "invalid");
            }
            let full = format!("{owner}/{repo}");
            let mut reaction = st.fixtures.reaction.clone();
            reaction["content"] = json!(content);
            reaction["user"]["login"] = json!("eka-ci[bot]");
            reaction["user"]["type"] = json!("Bot");
            if st.reactions.iter().any(|(r, c, v)| *r == full && *c == id && *v == content) {
                return ok(200, reaction);
            }
            reaction["id"] = json!(st.next_id);
            reaction["created_at"] = json!(rfc3339(now_secs()));
            st.next_id += 1;
            st.reactions.push((full, id, content));
            ok(201, reaction)
        }
        ("POST", ["repos", owner, repo, "issues", n, "comments"]) => {
            let Ok(number) = n.parse::<u64>() else { return Reply::error(404, "Not Found") };
            let Ok(body) = serde_json::from_str::<Value>(&req.body) else {
                return Reply::error(400, "Problems parsing JSON");
            };
            let Some(text) = body["body"].as_str() else {
                return Reply::validation_failed("IssueComment", "body", "missing_field");
            };
            let full = format!("{owner}/{repo}");
            let id = st.next_id;
            st.next_id += 1;
            let mut comment = st.fixtures.comment.clone();
            comment["id"] = json!(id);
            comment["body"] = json!(text);
            comment["html_url"] = json!(format!("https://github.com/{full}/pull/{number}#issuecomment-{id}"));
            comment["user"]["login"] = json!("eka-ci[bot]");
            comment["user"]["type"] = json!("Bot");
            st.comments.push((full, number, comment.clone()));
            ok(201, comment)
        }
        ("POST", ["repos", owner, repo, "check-runs"]) => {
            create_check_run(st, &format!("{owner}/{repo}"), req)
        }
        ("PATCH", ["repos", owner, repo, "check-runs", id]) => {
            let full = format!("{owner}/{repo}");
            let Ok(id) = id.parse::<u64>() else { return Reply::error(404, "Not Found") };
            let Ok(patch) = serde_json::from_str::<Value>(&req.body) else {
                return Reply::error(400, "Problems parsing JSON");
            };
            let Some((_, run)) = st.check_runs.iter_mut().find(|(r, v)| *r == full && v["id"] == json!(id))
            else {
                return Reply::error(404, "Not Found");
            };
            for field in
                ["name", "details_url", "external_id", "status", "started_at", "conclusion", "completed_at"]
            {
                if let Some(v) = patch.get(field) {
                    run[field] = v.clone();
                }
            }
            if patch.get("conclusion").is_some_and(|c| !c.is_null()) {
                run["status"] = json!("completed");
                if run["completed_at"].is_null() {
                    run["completed_at"] = json!(rfc3339(now_secs()));
                }
            }
            if let Some(output) = patch.get("output") {
                apply_output(run, output);
            }
            ok(200, run.clone())
        }
        ("GET", ["repos", owner, repo, "commits", git_ref, "check-runs"]) => {
            let full = format!("{owner}/{repo}");
            let name = query_param(query, "check_name");
            let runs: Vec<Value> = st
                .check_runs
                .iter()
                .filter(|(r, v)| *r == full && v["head_sha"] == json!(git_ref))
                .filter(|(_, v)| name.as_ref().is_none_or(|n| v["name"] == json!(n)))
                .map(|(_, v)| v.clone())
                .collect();
            ok(200, json!({"total_count": runs.len(), "check_runs": runs}))
        }
        ("GET", ["repos", owner, repo, "collaborators", user, "permission"]) => {
            let full = format!("{owner}/{repo}");
            let perm =
                st.permissions.get(&(full, user.to_string())).cloned().unwrap_or_else(|| "none".into());
            let mut body = st.fixtures.permission.clone();
            body["permission"] = json!(perm);
            body["role_name"] = json!(perm);
            body["user"]["login"] = json!(user);
            ok(200, body)
        }
        _ => Reply::error(404, "Not Found"),
    }
}

/// GitHub's example pull request with the test's fields merged in.
/// GitHub's authorize page, the user having approved: a redirect to `redirect_uri` with a one-time
/// `code` and the `state` it was given (GitHub's page answers 404 for an unknown client id).
fn oauth_authorize(st: &mut State, query: &str) -> Reply {
    let client = query_param(query, "client_id").unwrap_or_default();
    if st.oauth.client.as_ref().map(|c| c.0.as_str()) != Some(client.as_str()) {
        return Reply::error(404, "Not Found");
    }
    let (Some(redirect), Some(user)) = (query_param(query, "redirect_uri"), st.oauth.user.clone()) else {
        return Reply::error(404, "Not Found");
    };
    st.next_id += 1;
    let code = format!("code{}x{}", st.next_id, now_nanos() % 1_000_000_007);
    st.oauth.codes.insert(code.clone(), (user, redirect.clone()));
    let state = query_param(query, "state").unwrap_or_default();
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let location = format!("{redirect}{sep}code={code}&state={}", percent_encode(&state));
    Reply { status: 302, headers: vec![("Location".into(), location)], body: String::new() }
}

/// `POST /login/oauth/access_token` (form body): a user token for a valid one-time code, as JSON when
/// the request accepts it, else form-encoded; errors are 200 with `error`, as GitHub answers them.
fn oauth_access_token(st: &mut State, req: &Request) -> Reply {
    let body = &req.body;
    let field = |name| query_param(body, name).unwrap_or_default();
    let json_wanted = req.headers.iter().any(|(k, v)| k == "accept" && v.contains("application/json"));
    let reply = |pairs: Vec<(&str, String)>| {
        if json_wanted {
            let map: serde_json::Map<String, Value> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            ok(200, Value::Object(map))
        } else {
            let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))).collect();
            Reply {
                status: 200,
                headers: vec![(
                    "Content-Type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                )],
                body: text.join("&"),
            }
        }
    };
    let client_ok = st
        .oauth
        .client
        .as_ref()
        .is_some_and(|(id, secret)| *id == field("client_id") && *secret == field("client_secret"));
    if !client_ok {
        return reply(vec![
            ("error", "incorrect_client_credentials".into()),
            ("error_description", "The client_id and/or client_secret passed are incorrect.".into()),
        ]);
    }
    let code = field("code");
    match st.oauth.codes.remove(&code) {
        Some((user, redirect)) if redirect == field("redirect_uri") => {
            st.next_id += 1;
            let token = format!("gho_fake{}x{}", st.next_id, now_nanos() % 1_000_000_007);
            st.oauth.tokens.insert(token.clone(), user);
            reply(vec![("access_token", token), ("scope", "repo".into()), ("token_type", "bearer".into())])
        }
        Some(_) => reply(vec![
            ("error", "redirect_uri_mismatch".into()),
            (
                "error_description",
                "The redirect_uri MUST match the registered callback URL for this application.".into(),
            ),
        ]),
        None => reply(vec![
            ("error", "bad_verification_code".into()),
            ("error_description", "The code passed is incorrect or expired.".into()),
        ]),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn pull(st: &State, full: &str, number: u64) -> Value {
    let mut body = st.fixtures.pull.clone();
    body["number"] = json!(number);
    body["node_id"] = json!(node_id(full, number));
    body["base"]["repo"]["full_name"] = json!(full);
    body["base"]["repo"]["name"] = json!(full.split_once('/').map_or(full, |(_, n)| n));
    if let Some(patch) = st.pulls.get(&(full.to_string(), number)) {
        merge(&mut body, patch);
    }
    body
}

/// The node id this fake gives pull request `number` of `full`.
fn node_id(full: &str, number: u64) -> String {
    format!("PR_fake_{}_{number}", full.replace('/', "_"))
}

/// A GraphQL answer with one error, as GitHub sends it (status 200).
fn graphql_error(kind: &str, message: &str) -> Reply {
    ok(
        200,
        json!({"data": null, "errors": [{"type": kind, "message": message, "locations": [{"line": 1, "column": 1}]}]}),
    )
}

/// `POST /graphql`: the merge-queue question and `enablePullRequestAutoMerge`.
fn graphql(st: &mut State, req: &Request) -> Reply {
    let Ok(body) = serde_json::from_str::<Value>(&req.body) else {
        return Reply::error(400, "Problems parsing JSON");
    };
    let (query, vars) = (body["query"].as_str().unwrap_or(""), &body["variables"]);
    if query.contains("enablePullRequestAutoMerge") {
        let id = vars["id"].as_str().unwrap_or("");
        let found = st.pulls.keys().chain(st.reviews.keys()).find(|(r, n)| node_id(r, *n) == id).cloned();
        let Some((full, number)) = found else {
            return graphql_error(
                "NOT_FOUND",
                &format!("Could not resolve to a node with the global id of '{id}'"),
            );
        };
        let pr = pull(st, &full, number);
        let method = vars["method"].as_str().unwrap_or("").to_string();
        if !["MERGE", "SQUASH", "REBASE"].contains(&method.as_str()) {
            return graphql_error(
                "INVALID",
                "Variable $method of type PullRequestMergeMethod! was provided invalid value",
            );
        }
        if pr["head"]["sha"].as_str() != vars["sha"].as_str() {
            return graphql_error("UNPROCESSABLE", "Head ref is out of date");
        }
        if !st.merge_queues.contains(&full) && pr["base"]["repo"]["allow_auto_merge"] != json!(true) {
            return graphql_error(
                "UNPROCESSABLE",
                "Pull request Auto merge is not allowed for this repository",
            );
        }
        let sha = vars["sha"].as_str().unwrap_or("").to_string();
        st.auto_merges.push((full.clone(), number, method.clone(), sha));
        let patch = st.pulls.entry((full, number)).or_insert_with(|| json!({}));
        merge(patch, &json!({"auto_merge": {"merge_method": method.to_ascii_lowercase()}}));
        return ok(
            200,
            json!({"data": {"enablePullRequestAutoMerge": {"pullRequest": {
                "id": id, "autoMergeRequest": {"mergeMethod": method}
            }}}}),
        );
    }
    if query.contains("isMergeQueueEnabled") {
        let full =
            format!("{}/{}", vars["owner"].as_str().unwrap_or(""), vars["name"].as_str().unwrap_or(""));
        let Some(number) = vars["number"].as_u64() else {
            return graphql_error("INVALID", "Variable $number of type Int! was provided invalid value");
        };
        let queue = st.merge_queues.contains(&full);
        return ok(
            200,
            json!({"data": {"repository": {"pullRequest": {
                "id": node_id(&full, number), "isMergeQueueEnabled": queue
            }}}}),
        );
    }
    graphql_error("INVALID", "this fake answers only the operations eka-ci sends")
}

/// `PUT /repos/{o}/{r}/pulls/{n}/merge`, with GitHub's refusals.
fn merge_pull(st: &mut State, full: &str, number: u64, req: &Request) -> Reply {
    let body = if req.body.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str::<Value>(&req.body) {
            Ok(v) => v,
            Err(_) => return Reply::error(400, "Problems parsing JSON"),
        }
    };
    let method = body.get("merge_method").and_then(Value::as_str).unwrap_or("merge").to_string();
    let (allow, refusal) = match method.as_str() {
        "merge" => ("allow_merge_commit", "Merge commits are not allowed on this repository."),
        "squash" => ("allow_squash_merge", "Squash merges are not allowed on this repository."),
        "rebase" => ("allow_rebase_merge", "Rebase merges are not allowed on this repository."),
        _ => return Reply::validation_failed("PullRequest", "merge_method", "invalid"),
    };
    if st.merge_queues.iter().any(|r| r == full) {
        return Reply::error(
            405,
            "Repository rule violations found\n\nChanges must be made through the merge queue\n\n",
        );
    }
    let pr = pull(st, full, number);
    if pr["state"] != "open" || pr["merged"] == json!(true) || pr["mergeable"] == json!(false) {
        return Reply::error(405, "Pull Request is not mergeable");
    }
    if let Some(sha) = body.get("sha").and_then(Value::as_str) {
        if pr["head"]["sha"].as_str() != Some(sha) {
            return Reply::error(409, "Head branch was modified. Review and try the merge again.");
        }
    }
    if pr["base"]["repo"][allow] == json!(false) {
        return Reply::error(405, refusal);
    }
    let merged_sha = format!("{:040x}", now_nanos());
    let patch = st.pulls.entry((full.to_string(), number)).or_insert_with(|| json!({}));
    merge(patch, &json!({"state": "closed", "merged": true, "merge_commit_sha": merged_sha}));
    let mut answer = st.fixtures.merge.clone();
    answer["sha"] = json!(merged_sha);
    ok(200, answer)
}

fn create_check_run(st: &mut State, repo: &str, req: &Request) -> Reply {
    let Ok(body) = serde_json::from_str::<Value>(&req.body) else {
        return Reply::error(400, "Problems parsing JSON");
    };
    for field in ["name", "head_sha"] {
        if !body.get(field).is_some_and(Value::is_string) {
            return Reply::validation_failed("CheckRun", field, "missing_field");
        }
    }
    let conclusion = body.get("conclusion").cloned().unwrap_or(Value::Null);
    let status = match body.get("status").and_then(Value::as_str) {
        Some(s) => s.to_string(),
        None if !conclusion.is_null() => "completed".into(),
        None => "queued".into(),
    };
    if status == "completed" && conclusion.is_null() {
        return Reply::validation_failed("CheckRun", "conclusion", "missing_field");
    }
    let id = st.next_check_run_id;
    st.next_check_run_id += 1;
    let mut run = st.fixtures.check_run.clone();
    let now = rfc3339(now_secs());
    run["id"] = json!(id);
    run["node_id"] = json!(format!("CR_fake{id}"));
    run["name"] = body["name"].clone();
    run["head_sha"] = body["head_sha"].clone();
    run["status"] = json!(status);
    run["conclusion"] = conclusion;
    run["external_id"] = body.get("external_id").cloned().unwrap_or(json!(""));
    run["details_url"] = body.get("details_url").cloned().unwrap_or(Value::Null);
    run["started_at"] = body.get("started_at").cloned().unwrap_or(json!(now));
    run["completed_at"] = match body.get("completed_at") {
        Some(v) => v.clone(),
        None if status == "completed" => json!(now),
        None => Value::Null,
    };
    run["url"] = json!(format!("https://api.github.com/repos/{repo}/check-runs/{id}"));
    run["html_url"] = json!(format!("https://github.com/{repo}/runs/{id}"));
    run["output"] = json!({
        "title": null, "summary": null, "text": null, "annotations_count": 0,
        "annotations_url": format!("https://api.github.com/repos/{repo}/check-runs/{id}/annotations"),
    });
    if let Some(output) = body.get("output") {
        apply_output(&mut run, output);
    }
    run["pull_requests"] = json!([]);
    // GitHub stamps the App whose installation token created the run.
    run["app"]["id"] = json!(APP_ID.parse::<u64>().unwrap_or(0));
    st.check_runs.push((repo.to_string(), run.clone()));
    ok(201, run)
}

fn apply_output(run: &mut Value, output: &Value) {
    for field in ["title", "summary", "text"] {
        if let Some(v) = output.get(field) {
            run["output"][field] = v.clone();
        }
    }
    if let Some(a) = output.get("annotations").and_then(Value::as_array) {
        let n = run["output"]["annotations_count"].as_u64().unwrap_or(0) + a.len() as u64;
        run["output"]["annotations_count"] = json!(n);
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    eka_ci::time::rfc3339(secs)
}
