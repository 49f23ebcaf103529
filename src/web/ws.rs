//! `GET /v1/ws/builds`: live build events over a WebSocket (RFC 6455), served on the daemon's executor.
//!
//! `conn.rs` hands a connection whose request head is `GET /v1/ws/builds` here instead of to async-h1.
//! The head is routed through tide like any request, so the route applies the API's rules (bearer token,
//! or the web UI's session cookie; `[web] public_read`); a refusal is an ordinary HTTP answer and the
//! connection closes. On acceptance we answer `101 Switching Protocols` ourselves and speak the
//! WebSocket protocol: text frames only, masked by the client, unfragmented, at most
//! [`MAX_MESSAGE_BYTES`]; ping, pong and close. Anything else closes this connection only, with the close
//! code RFC 6455 gives for it (1002, 1003 or 1009).
//!
//! Events come from [`crate::live`]: the connection registers a bounded queue there; a client that does
//! not read its events in time is dropped by the hub and counted. Subscriptions name a derivation, a
//! jobset (`job`), a commit or `all`; each is checked against the read rules of the page or route showing
//! the same data, and a `job` or `commit` subscription is answered with the current `job_stats_update`
//! of its jobsets (`web::ws_stats`). The protocol is in docs/http-api.md.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::{json, Value};
use smol::net::TcpStream;

use super::drvs::{parse_drv_param, respond, ApiError};
use super::ui::login::Viewer;
use super::AppState;

/// The route.
pub const PATH: &str = "/v1/ws/builds";
/// The largest client message (payload bytes).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// A frame the client does not take within this long ends the connection.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How often an idle connection is pinged (a peer that vanished then fails a write within
/// [`WRITE_STALL`] and its slot is freed).
const PING_EVERY: Duration = Duration::from_secs(30);
/// Derivations (and, separately, jobs and commits) one client may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// The kernel's send buffer of a WebSocket connection: with the client queue, all a slow client holds.
const SEND_BUFFER: usize = 32 * 1024;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether a request head is `GET /v1/ws/builds` (then a space or a query).
pub fn is_ws_request(head: &[u8]) -> bool {
    let line = format!("GET {PATH}");
    head.starts_with(line.as_bytes()) && matches!(head.get(line.len()), Some(b' ') | Some(b'?'))
}

/// `Sec-WebSocket-Accept` for `key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::encode(sha.digest().bytes())
}

/// What the route hands back to [`serve`] on acceptance (a response extension).
#[derive(Clone)]
struct Accepted {
    viewer: Viewer,
    accept: String,
}

async fn handshake(req: tide::Request<AppState>) -> Result<tide::Response, ApiError> {
    let viewer = super::ui::login::viewer(&req).await?;
    if !viewer.reads_all() && viewer.user.is_none() {
        // Anonymous: only with `[web] public_read` (each subscription is then checked).
        viewer.caller.read_listing(req.state())?;
    }
    let header = |name: &str| req.header(name).map(|v| v.last().as_str().to_string()).unwrap_or_default();
    // A session cookie is sent by the browser whatever page opens the socket: a signed-in viewer's
    // socket must come from our own pages (cross-site WebSocket hijacking). Tokens are never sent by a
    // browser on its own.
    if viewer.user.is_some() && viewer.caller.is_anonymous() {
        let public = req.state().ui.oauth.as_ref().map(|o| o.redirect_url.clone());
        if !same_origin(&header("Origin"), &header("Host"), public.as_deref()) {
            return Err(ApiError::Refused {
                status: 403,
                message: "a signed-in browser's WebSocket must come from this server's own pages (Origin)"
                    .into(),
            });
        }
    }
    let bad = |reason: &'static str| ApiError::BadQuery { param: "upgrade", value: String::new(), reason };
    if !header("Upgrade").eq_ignore_ascii_case("websocket") {
        return Err(bad("expected `Upgrade: websocket`"));
    }
    if !header("Connection").split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")) {
        return Err(bad("expected `Connection: Upgrade`"));
    }
    if header("Sec-WebSocket-Version").trim() != "13" {
        return Err(bad("expected `Sec-WebSocket-Version: 13`"));
    }
    let key = header("Sec-WebSocket-Key");
    let key = key.trim();
    if base64::decode(key).map(|k| k.len()) != Ok(16) {
        return Err(bad("expected a Sec-WebSocket-Key of 16 bytes in base64"));
    }
    let mut res = tide::Response::new(101);
    res.insert_ext(Accepted { viewer, accept: accept_key(key) });
    Ok(res)
}

/// Whether the handshake's `Origin` (absent: not a browser) is this server: `http(s)://` and the
/// request's `Host`, or the origin of `public` (the OAuth redirect URL, behind a proxy that rewrites
/// `Host`).
fn same_origin(origin: &str, host: &str, public: Option<&str>) -> bool {
    let origin = origin.trim();
    if origin.is_empty() {
        return true;
    }
    let authority = |url: &str| {
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
        Some(rest.split('/').next().unwrap_or_default().to_ascii_lowercase())
    };
    let Some(from) = authority(origin) else { return false };
    (!host.is_empty() && from == host.trim().to_ascii_lowercase())
        || public.and_then(authority).is_some_and(|p| p == from)
}

pub fn routes(app: &mut tide::Server<AppState>) {
    app.at(PATH).get(|req: tide::Request<AppState>| async move { respond(handshake(req).await) });
}

/// Parses a request head (already bounded by `conn.rs`) into a body-less request.
fn parse_head(head: &[u8]) -> Option<tide::http::Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" || !target.starts_with('/') {
        return None;
    }
    let url = tide::http::Url::parse(&format!("http://localhost{target}")).ok()?;
    let mut req = tide::http::Request::new(tide::http::Method::Get, url);
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        req.append_header(name.trim(), value.trim());
    }
    Some(req)
}

/// Serves a connection whose first bytes (`buf`) hold a `GET /v1/ws/builds` head and maybe more.
pub async fn serve(mut stream: TcpStream, buf: Vec<u8>, app: tide::Server<AppState>) {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else { return };
    let Some(req) = parse_head(&buf[..end]) else {
        let _ = write_http(&mut stream, 400, r#"{"error":"malformed request head","status":400}"#).await;
        return;
    };
    let mut res: tide::http::Response = match app.respond(req).await {
        Ok(r) => r,
        Err(_) => return,
    };
    let accepted = res.ext().get::<Accepted>().cloned();
    let Some(Accepted { viewer, accept }) = accepted.filter(|_| res.status() as u16 == 101) else {
        let body = res.body_string().await.unwrap_or_default();
        let _ = write_http(&mut stream, res.status() as u16, &body).await;
        return;
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if let Err(e) = rustix::net::sockopt::set_socket_send_buffer_size(&stream, SEND_BUFFER) {
        tracing::debug!(error = %e, "setting a WebSocket's send buffer failed");
    }
    let reg = crate::live::register();
    let (ctrl_tx, ctrl_rx) = async_channel::bounded::<(u8, Vec<u8>)>(4);
    let session = Session { state: app.state().clone(), viewer, id: reg.id };
    let reader = session.read_loop(stream.clone(), buf[end..].to_vec(), ctrl_tx);
    let writer = write_loop(stream.clone(), reg.rx.clone(), ctrl_rx);
    futures_lite::future::or(reader, writer).await;
    drop(reg);
    linger(&mut stream).await;
}

/// Ends our side, then reads and discards for a moment so that the client sees our last frame instead
/// of a reset (closing with unread input resets the connection).
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut chunk = [0u8; 4096];
        let mut total = 0usize;
        while total < 1024 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    futures_lite::future::or(drain, async {
        smol::Timer::after(Duration::from_secs(2)).await;
    })
    .await;
}

async fn write_http(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = tide::http::StatusCode::try_from(status).map(|s| s.canonical_reason()).unwrap_or("Error");
    let mut text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if status == 401 {
        text.push_str("www-authenticate: Bearer realm=\"eka-ci\"\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

/// An unmasked server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

fn close_frame(code: u16, reason: &str) -> (u8, Vec<u8>) {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    (0x8, payload)
}

/// Writes control frames (first) and queued events until either source ends or a write stalls.
async fn write_loop(
    mut stream: TcpStream,
    events: async_channel::Receiver<Arc<str>>,
    ctrl: async_channel::Receiver<(u8, Vec<u8>)>,
) {
    loop {
        let next = futures_lite::future::or(async { ctrl.recv().await.ok() }, async {
            events.recv().await.ok().map(|t| (0x1, t.as_bytes().to_vec()))
        });
        let next = futures_lite::future::or(next, async {
            smol::Timer::after(PING_EVERY).await;
            Some((0x9, Vec::new()))
        })
        .await;
        let Some((opcode, payload)) = next else {
            // The hub dropped us (we did not read), or the reader ended: a last close frame, no wait.
            let (op, p) = close_frame(1008, "client too slow");
            let _ = futures_lite::future::or(async { stream.write_all(&frame(op, &p)).await }, async {
                smol::Timer::after(Duration::from_millis(100)).await;
                Ok(())
            })
            .await;
            return;
        };
        let bytes = frame(opcode, &payload);
        let wrote = futures_lite::future::or(async { stream.write_all(&bytes).await.is_ok() }, async {
            smol::Timer::after(WRITE_STALL).await;
            false
        })
        .await;
        if !wrote || opcode == 0x8 {
            return;
        }
    }
}

struct Session {
    state: AppState,
    viewer: Viewer,
    id: u64,
}

/// Why the reader stops: the close frame to send.
struct Closing(u16, &'static str);

impl Session {
    async fn read_loop(
        self,
        mut stream: TcpStream,
        early: Vec<u8>,
        ctrl: async_channel::Sender<(u8, Vec<u8>)>,
    ) {
        let mut input = Input { stream: &mut stream, buf: early };
        let closing = loop {
            match input.frame().await {
                Ok(Some((0x1, payload))) => match std::str::from_utf8(&payload) {
                    Ok(text) => self.message(text).await,
                    Err(_) => break Closing(1007, "text frame is not UTF-8"),
                },
                Ok(Some((0x2, _))) => break Closing(1003, "binary frames are not accepted"),
                Ok(Some((0x8, _))) => break Closing(1000, ""),
                Ok(Some((0x9, payload))) => {
                    if ctrl.send((0xA, payload)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {} // pong
                Ok(None) => return,
                Err(c) => break c,
            }
        };
        let _ = ctrl.send(close_frame(closing.0, closing.1)).await;
        // Wait for the writer to send it (it ends the connection after a close frame).
        futures_lite::future::pending::<()>().await;
    }

    async fn message(&self, text: &str) {
        let answers = match serde_json::from_str::<Value>(text) {
            Ok(v) => self.handle(&v).await,
            Err(e) => vec![json!({ "type": "error", "error": format!("not JSON: {e}") })],
        };
        for answer in &answers {
            crate::live::reply(self.id, answer);
        }
    }

    /// The answers to one client message: an acknowledgement or an error, and for a subscription to a
    /// commit or job the current `job_stats_update` of each jobset it follows.
    async fn handle(&self, v: &Value) -> Vec<Value> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let error = |m: String| vec![json!({ "type": "error", "error": m })];
        let subscribe = match kind {
            "subscribe" => true,
            "unsubscribe" => false,
            "ping" => return vec![json!({ "type": "pong" })],
            other => {
                return error(format!(
                    "unknown message type `{other}`: expected subscribe, unsubscribe or ping"
                ))
            }
        };
        let ack = |key: &str, value: Value| json!({ "type": if subscribe { "subscribed" } else { "unsubscribed" }, key: value });
        if v.get("all").and_then(Value::as_bool) == Some(true) {
            if subscribe && !self.viewer.reads_all() {
                return error("subscribing to all builds needs a token or an administrator's session".into());
            }
            crate::live::update(self.id, |s| s.all = subscribe);
            vec![ack("all", json!(true))]
        } else if let Some(raw) = v.get("drv").and_then(Value::as_str) {
            let drv = match parse_drv_param(raw) {
                Ok(d) => d,
                Err(e) => return error(e.to_string()),
            };
            if subscribe {
                let public =
                    self.viewer.needs_visibility() && super::auth::drv_is_public(&self.state, &drv).await;
                if let Err(e) = self.viewer.read(&self.state, public, &[]).await {
                    return vec![json!({ "type": "error", "error": e.to_string(), "drv": drv })];
                }
            }
            let d = drv.clone();
            let full = !self.change(|s| {
                if subscribe {
                    capped_insert(&mut s.drvs, d)
                } else {
                    s.drvs.remove(&d);
                    true
                }
            });
            if full {
                return error(format!("at most {MAX_SUBSCRIPTIONS} derivations per connection"));
            }
            vec![ack("drv", json!(drv))]
        } else if let Some(raw) = v.get("job") {
            let Some(id) = raw.as_u64() else {
                return error("`job` is a jobset id: a non-negative integer".into());
            };
            if !subscribe {
                self.change(|s| s.jobs.remove(&id));
                return vec![ack("job", json!(id))];
            }
            // Permission first (an unknown jobset is refused like a private one to whoever does not
            // read everything), then the count.
            let jobsets = self.state.jobsets.clone();
            let header = match smol::unblock(move || jobsets.get(crate::jobset::JobsetId(id))).await {
                Ok(h) => h,
                Err(e) => return error(format!("reading jobset {id} failed: {e}")),
            };
            let repos: Vec<String> = header.iter().map(|h| h.key.repo.clone()).collect();
            let refused = match repos.first() {
                Some(repo) => self.may_read(repo).await.err(),
                None => self.viewer.read(&self.state, false, &[]).await.err(),
            };
            if let Some(e) = refused {
                return vec![json!({ "type": "error", "error": e.to_string(), "job": id })];
            }
            let found = match super::ws_stats::read(&self.state, id).await {
                Ok(Some(found)) => found,
                Ok(None) => {
                    return vec![json!({ "type": "error", "error": format!("no jobset {id}"), "job": id })]
                }
                Err(e) => return error(format!("reading jobset {id} failed: {e}")),
            };
            if !self.change(|s| capped_insert(&mut s.jobs, id)) {
                return error(format!("at most {MAX_SUBSCRIPTIONS} jobs per connection"));
            }
            crate::live::note_jobset(id, origin(&found.0));
            vec![ack("job", json!(id)), super::ws_stats::message(&found.0, &found.1)]
        } else if let Some(raw) = v.get("commit").and_then(Value::as_str) {
            let sha = match super::ui::parse_sha("commit", raw) {
                Ok(s) => s,
                Err(e) => return error(e.to_string()),
            };
            if !subscribe {
                self.change(|s| s.commits.remove(&sha).is_some());
                return vec![ack("commit", json!(sha))];
            }
            self.subscribe_commit(sha).await
        } else {
            error("expected one of `drv`, `job`, `commit` or `all`".into())
        }
    }

    /// Changes this client's subscription; `change` answers whether the change was allowed.
    fn change(&self, change: impl FnOnce(&mut crate::live::Subscription) -> bool) -> bool {
        let mut allowed = false;
        crate::live::update(self.id, |s| allowed = change(s));
        allowed
    }

    /// Whether this client may read repository `repo`'s data (as jobsets record it).
    async fn may_read(&self, repo: &str) -> Result<(), ApiError> {
        let public = self.viewer.needs_visibility() && super::auth::repo_is_public(&self.state, repo).await;
        self.viewer.read(&self.state, public, &[repo.to_string()]).await
    }

    /// Subscribes to commit `sha`: the jobsets of the repositories this client may read, now and later.
    async fn subscribe_commit(&self, sha: String) -> Vec<Value> {
        let (state, c) = (self.state.clone(), sha.clone());
        let known = smol::unblock(move || {
            let jobsets: Vec<_> = state.jobsets.all()?.into_iter().filter(|j| j.key.commit == c).collect();
            let runs: Vec<String> = crate::forge::github::runs::all(&state.store)?
                .into_iter()
                .filter(|(_, r)| r.head_sha == c)
                .map(|(_, r)| r.clone_url)
                .collect();
            Ok::<_, crate::store::StoreError>((jobsets, runs))
        })
        .await;
        let (jobsets, run_repos) = match known {
            Ok(k) => k,
            Err(e) => {
                return vec![json!({ "type": "error", "error": format!("reading commit {sha} failed: {e}") })]
            }
        };
        let mut repos: Vec<String> = jobsets.iter().map(|j| j.key.repo.clone()).chain(run_repos).collect();
        repos.sort();
        repos.dedup();
        let allowed: Option<std::collections::HashSet<String>> = if self.viewer.reads_all() {
            None
        } else {
            let mut allowed = std::collections::HashSet::new();
            let mut refusal = None;
            for repo in repos {
                match self.may_read(&repo).await {
                    Ok(()) => _ = allowed.insert(repo),
                    Err(e) => refusal = Some(e.to_string()),
                }
            }
            if allowed.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("commit {sha} is not known"));
                return vec![json!({ "type": "error", "error": why, "commit": sha })];
            }
            Some(allowed)
        };
        let followed: Vec<_> = jobsets
            .into_iter()
            .filter(|j| allowed.as_ref().is_none_or(|a| a.contains(&j.key.repo)))
            .collect();
        let s = sha.clone();
        let room = |sub: &crate::live::Subscription| {
            sub.commits.len() < MAX_SUBSCRIPTIONS || sub.commits.contains_key(&s)
        };
        if !self.change(|sub| {
            room(sub) && {
                sub.commits.insert(s.clone(), allowed);
                true
            }
        }) {
            return vec![
                json!({ "type": "error", "error": format!("at most {MAX_SUBSCRIPTIONS} commits per connection") }),
            ];
        }
        let mut answers = vec![json!({ "type": "subscribed", "commit": sha })];
        for j in followed {
            crate::live::note_jobset(j.id.0, origin(&j));
            match super::ws_stats::read(&self.state, j.id.0).await {
                Ok(Some((header, counts))) => answers.push(super::ws_stats::message(&header, &counts)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, jobset = j.id.0, "live: counting a jobset's attributes failed")
                }
            }
        }
        answers
    }
}

/// Inserts `v` into `set` unless that would make it larger than [`MAX_SUBSCRIPTIONS`] (`false` then).
fn capped_insert<T: Eq + std::hash::Hash>(set: &mut std::collections::HashSet<T>, v: T) -> bool {
    if set.len() >= MAX_SUBSCRIPTIONS && !set.contains(&v) {
        return false;
    }
    set.insert(v);
    true
}

fn origin(j: &crate::jobset::Jobset) -> crate::live::JobsetOrigin {
    crate::live::JobsetOrigin { repo: j.key.repo.clone(), commit: j.key.commit.clone() }
}

/// The client's side of the connection, with bytes read ahead.
struct Input<'a> {
    stream: &'a mut TcpStream,
    buf: Vec<u8>,
}

impl Input<'_> {
    /// Makes `n` bytes available; `false` at end of stream.
    async fn fill(&mut self, n: usize) -> bool {
        let mut chunk = [0u8; 4096];
        while self.buf.len() < n {
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// The next frame (opcode, unmasked payload); `None` at end of stream.
    async fn frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, Closing> {
        if !self.fill(2).await {
            return Ok(None);
        }
        let (b0, b1) = (self.buf[0], self.buf[1]);
        let (fin, rsv, opcode, masked, len7) =
            (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f, b1 & 0x80 != 0, b1 & 0x7f);
        if rsv != 0 {
            return Err(Closing(1002, "reserved bits set"));
        }
        if !masked {
            return Err(Closing(1002, "client frames must be masked"));
        }
        if !fin || opcode == 0 {
            return Err(Closing(1003, "fragmented messages are not accepted"));
        }
        if !matches!(opcode, 0x1 | 0x2 | 0x8 | 0x9 | 0xA) {
            return Err(Closing(1002, "unknown opcode"));
        }
        let (len, at) = match len7 {
            126 => {
                if !self.fill(4).await {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                if !self.fill(10).await {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x8 != 0;
        if (control && len > 125) || len > MAX_MESSAGE_BYTES as u64 {
            return Err(Closing(1009, "frame too large"));
        }
        let len = len as usize;
        if !self.fill(at + 4 + len).await {
            return Ok(None);
        }
        let mask = [self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]];
        let start = at + 4;
        let payload: Vec<u8> =
            self.buf[start..start + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        self.buf.drain(..start + len);
        Ok(Some((opcode, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn origins() {
        assert!(same_origin("", "ci.example.com", None), "not a browser");
        assert!(same_origin("https://ci.example.com", "ci.example.com", None));
        assert!(same_origin("http://127.0.0.1:3030", "127.0.0.1:3030", None));
        assert!(same_origin(
            "https://CI.example.com",
            "127.0.0.1:3030",
            Some("https://ci.example.com/github/auth/callback")
        ));
        assert!(!same_origin("https://evil.example.com", "ci.example.com", None));
        assert!(!same_origin("https://ci.example.com.evil.net", "ci.example.com", None));
        assert!(!same_origin("null", "ci.example.com", None));
        assert!(!same_origin("https://evil.example.com", "", Some("https://ci.example.com/cb")));
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(frame(0x1, b"hi"), vec![0x81, 2, b'h', b'i']);
        assert_eq!(&frame(0x1, &[0; 300])[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&frame(0x1, &[0; 70000])[..2], &[0x81, 127]);
        assert!(is_ws_request(b"GET /v1/ws/builds HTTP/1.1\r\n"));
        assert!(!is_ws_request(b"GET /v1/ws/buildsx HTTP/1.1\r\n"));
    }
}
