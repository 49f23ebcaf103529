//! The web UI in a real browser: Debian's chromium, headless, driven over the WebDriver protocol
//! through chromedriver (plain HTTP with ureq). A real server reviews a real repository (real Nix
//! builds, one failing with ANSI colours in its log); the browser then opens the pages as a person
//! would: refused without a token (local repositories are private), and with a token (sent as a header
//! through chromedriver's DevTools bridge) the commit page, the link to the failing build's log, the
//! jobset filtered by state, the derivation page and the dashboard; then a running build's log page
//! growing and its derivation page changing state without a reload (`/v1/ws/builds`); and the commit,
//! jobset and dashboard pages following a running build to its end without a reload (`/ui/live.js`);
//! a signed-in user without rights cannot follow a private commit, jobset or all builds over the
//! WebSocket, and a session's WebSocket from another origin is refused. Skips with a printed reason only when
//! chromedriver is not installed (CI installs it). With `EKA_CI_UI_SCREENSHOTS=<dir>` each page is also
//! saved as a PNG there (docs/ui/ holds the ones docs/ui.md shows).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fake_github::FakeGitHub;
use common::{http_request, GitRepo, Home, NIX_PRELUDE};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;
/// The key WebDriver answers element references under.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process on a free loopback port; killed on drop.
pub(crate) struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(crate) fn start() -> Option<Driver> {
        if !Path::new(CHROMEDRIVER).exists() {
            // .ci/run installs it: in CI a missing browser is a failure, not a skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "{CHROMEDRIVER} is not installed; .ci/run installs chromium-driver"
            );
            println!("skipping the browser tests: {CHROMEDRIVER} is not installed (apt-get install chromium-driver)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            agent,
            _profile: tempfile::tempdir().expect("profile dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "chromedriver did not become ready");
            if let Ok(mut r) = driver.agent.get(format!("{}/status", driver.base)).call() {
                let v: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                if v["value"]["ready"] == true {
                    return Some(driver);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|(status, v)| panic!("{method} {path}: {status} {v}"))
    }

    /// A WebDriver command: its value, or the status and answer of a failure.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, (u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut res = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, Some(b)) => self.agent.post(&url).send_json(b),
            (_, None) => self.agent.post(&url).send_json(json!({})),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let v: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err((status, v))
        }
    }

    /// A new headless browser; with `token`, every request it makes carries it.
    pub(crate) fn session(&self, token: Option<&str>) -> Session<'_> {
        let profile = self._profile.path().join(format!("p{}", common::nonce()));
        let v = self.call(
            "POST",
            "/session",
            Some(json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--window-size=1280,1000", format!("--user-data-dir={}", profile.display())],
                },
            } } })),
        );
        let id = v["sessionId"].as_str().expect("session id").to_string();
        let s = Session { d: self, id };
        if let Some(t) = token {
            s.cdp("Network.enable", json!({}));
            s.cdp(
                "Network.setExtraHTTPHeaders",
                json!({ "headers": { "Authorization": format!("Bearer {t}") } }),
            );
        }
        s
    }
}

pub(crate) struct Session<'a> {
    d: &'a Driver,
    id: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.d.agent.delete(format!("{}/session/{}", self.d.base, self.id)).call();
    }
}

impl Session<'_> {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.d.call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("POST", "/goog/cdp/execute", Some(json!({ "cmd": cmd, "params": params })))
    }

    pub(crate) fn open(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().expect("url").to_string()
    }

    /// The elements matching `css` (their references).
    fn all(&self, css: &str) -> Vec<String> {
        let v = self.cmd("POST", "/elements", Some(json!({ "using": "css selector", "value": css })));
        let refs = v.as_array().unwrap_or_else(|| panic!("finding `{css}`: {v}"));
        refs.iter()
            .map(|e| {
                e[ELEMENT].as_str().unwrap_or_else(|| panic!("not an element reference: {e}")).to_string()
            })
            .collect()
    }

    fn one(&self, css: &str) -> String {
        let found = self.all(css);
        assert!(!found.is_empty(), "no element `{css}` on {}:\n{}", self.url(), self.source());
        found[0].clone()
    }

    pub(crate) fn text(&self, css: &str) -> String {
        let e = self.one(css);
        self.cmd("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or_default().to_string()
    }

    pub(crate) fn texts(&self, css: &str) -> Vec<String> {
        self.all(css)
            .iter()
            .map(|e| {
                self.cmd("GET", &format!("/element/{e}/text"), None).as_str().unwrap_or_default().to_string()
            })
            .collect()
    }

    fn attr(&self, css: &str, name: &str) -> String {
        let e = self.one(css);
        self.cmd("GET", &format!("/element/{e}/attribute/{name}"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Clicks the first element `css`; found again when a live page replaced it meanwhile.
    fn click(&self, css: &str) {
        for _ in 0..5 {
            let e = self.one(css);
            let path = format!("/session/{}/element/{e}/click", self.id);
            match self.d.try_call("POST", &path, Some(json!({}))) {
                Ok(_) => return,
                Err((_, v)) if v["value"]["error"] == "stale element reference" => continue,
                Err((status, v)) => panic!("clicking `{css}`: {status} {v}"),
            }
        }
        panic!("`{css}` kept being replaced while clicking it");
    }

    /// Runs `script` in the page (a returned promise is awaited) and returns its value.
    fn run(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// The status of a form POST made by the page's own JavaScript (same origin, its cookies).
    fn post_form(&self, path: &str, body: &str) -> u16 {
        let v = self.run(
            "return fetch(arguments[0], {method: 'POST', redirect: 'manual', headers: \
             {'Content-Type': 'application/x-www-form-urlencoded'}, body: arguments[1]}).then(r => r.status);",
            json!([path, body]),
        );
        v.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or_else(|| panic!("POST {path}: {v}"))
    }

    /// Waits (at most 30 s) until an element `css` is on the page: a click that submits a form may
    /// return before the next page is loaded.
    fn wait_for(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.all(css).is_empty() {
            assert!(Instant::now() < deadline, "no `{css}` appeared on {}:\n{}", self.url(), self.source());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn source(&self) -> String {
        self.cmd("GET", "/source", None).as_str().unwrap_or_default().to_string()
    }

    /// Saves the page as `<EKA_CI_UI_SCREENSHOTS>/<name>.png` when that variable is set.
    pub(crate) fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("EKA_CI_UI_SCREENSHOTS") else { return };
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().expect("screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = PathBuf::from(dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// Standard base64 (as WebDriver sends screenshots).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| val(*c) as u32).collect();
        let n = v.iter().enumerate().fold(0u32, |acc, (i, x)| acc | (x << (18 - 6 * i)));
        out.push((n >> 16) as u8);
        if v.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if v.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn head_nix(nonce: &str) -> String {
    format!(
        r#"{NIX_PRELUDE}
{{
  keep = mk "keep-1.0" "echo keep > $out";
  ok = mk "ok-{nonce}" "echo ok > $out";
  fail = mk "fail-{nonce}" "echo 'plain line {nonce}'; printf '\\033[1;31mred-{nonce}\\033[0m after\\n'; exit 3";
}}
"#
    )
}

/// Reviews a new repository on `home`'s running server: head adds `ok` and `fail` (which fails, with
/// ANSI colours in its log). Returns (base, head).
fn review_failing(home: &Home, nonce: &str) -> (String, String) {
    let repo = GitRepo::new();
    let base_nix = format!("{NIX_PRELUDE}\n{{ keep = mk \"keep-1.0\" \"echo keep > $out\"; }}\n");
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&base_nix))]);
    let head = repo.commit("head", &[("default.nix", Some(&head_nix(nonce)))]);
    let out = home.review(&repo, &base, &head);
    assert!(!out.status.success(), "the review should fail: {}", String::from_utf8_lossy(&out.stderr));
    (base, head)
}

#[test]
fn ui_pages_in_a_browser() {
    let Some(driver) = Driver::start() else { return };
    let nonce = common::nonce();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    let (base, head) = review_failing(&home, &nonce);
    let token = home.token("ui-test", "read");
    let commit_page = format!("http://{addr}/ui/commits/{head}?base={base}");

    // A local repository is private: an anonymous browser is refused, and learns nothing.
    let anonymous = driver.session(None);
    anonymous.open(&commit_page);
    assert_eq!(anonymous.text("h1"), "Sign-in needed");
    assert!(anonymous.text("#error").contains("token"), "{}", anonymous.source());
    assert!(!anonymous.source().contains(&format!("fail-{nonce}")));
    let (code, _, _) = http_request(&addr, "GET", &format!("/ui/commits/{head}?base={base}"), &[], b"");
    assert_eq!(code, 401);
    anonymous.screenshot("refused");
    drop(anonymous);

    // With a token: the commit page says what failed and why, with the log's tail.
    let browser = driver.session(Some(&token));
    browser.open(&commit_page);
    assert!(browser.text("h1").starts_with("Commit "), "{}", browser.source());
    assert!(browser.text(".job h2").contains("failure"), "{}", browser.source());
    assert!(browser.text("p.counts").contains("2 added"), "{}", browser.text("p.counts"));
    assert_eq!(browser.texts("table.failing td a[href^='/ui/drvs/']"), vec!["fail".to_string()]);
    assert_eq!(browser.text("strong.newly"), "newly failing");
    assert!(browser.text("table.failing pre").contains(&format!("red-{nonce} after")));
    browser.screenshot("commit");

    // Its log link opens the log page: ANSI red as a span, line anchors, the raw log.
    browser.click("a.loglink");
    browser.wait_for("#log");
    assert!(browser.url().contains("/ui/logs/"), "{}", browser.url());
    assert_eq!(browser.text("#log span.fg1"), format!("red-{nonce}"));
    assert!(browser.attr("span.fg1", "class").contains('b'));
    assert!(browser.text("#L1").contains(&format!("plain line {nonce}")));
    assert_eq!(browser.attr("#L2 a.n", "href"), "#L2");
    let path = browser.attr("#raw", "href");
    assert!(path.starts_with("/ui/logs/") && path.contains("/raw?attempt="), "{path}");
    let auth = format!("Bearer {token}");
    let (code, _, body) = http_request(&addr, "GET", &path, &[("Authorization", &auth)], b"");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("\u{1b}[1;31mred-"), "the raw log keeps the escapes");
    browser.screenshot("log");

    // The derivation page: its state and attempts.
    browser.click("a[href^='/ui/drvs/']");
    browser.wait_for("#state");
    assert!(browser.text("#state").contains("failure"), "{}", browser.source());
    // Every attempt (a failing build is retried once by default) links to its log.
    let attempts = browser.all("#attempts tr").len() - 1;
    assert!(attempts >= 1);
    assert_eq!(browser.all("#attempts a.loglink").len(), attempts);
    browser.screenshot("derivation");

    // The jobset: every attribute, then only the failing ones, then a name search.
    browser.open(&commit_page);
    browser.click("a[href^='/ui/jobsets/']");
    browser.wait_for("#attrs");
    let jobset = browser.url();
    let mut attrs = browser.texts("#attrs td.mono a");
    attrs.sort();
    assert_eq!(attrs, ["fail", "keep", "ok"]);
    browser.screenshot("jobset");
    browser.open(&format!("{jobset}?state=failure"));
    assert_eq!(browser.texts("#attrs td.mono a"), ["fail"]);
    browser.open(&format!("{jobset}?q=ke"));
    assert_eq!(browser.texts("#attrs td.mono a"), ["keep"]);

    // The dashboard.
    browser.open(&format!("http://{addr}/ui/"));
    assert_eq!(browser.text("h1"), "Dashboard");
    assert!(browser.text("#queues").contains("system"));
    browser.screenshot("dashboard");
    drop(browser);
    drop(server);
}

/// Opens `/v1/ws/builds` from the page `b` shows (its origin and cookies), sends a subscription and
/// returns the first answer (`subscribed` or `error`).
fn subscribe_in_page(b: &Session, subscription: &Value) -> Value {
    b.run(
        "var sub = arguments[0]; return new Promise(function (resolve) { \
           var ws = new WebSocket('ws://' + location.host + '/v1/ws/builds'); \
           ws.onopen = function () { sub.type = 'subscribe'; ws.send(JSON.stringify(sub)); }; \
           ws.onmessage = function (e) { var m = JSON.parse(e.data); \
             if (m.type === 'subscribed' || m.type === 'error') { ws.close(); resolve(m); } }; \
           ws.onclose = function () { resolve({ type: 'closed' }); }; });",
        json!([subscription]),
    )
}

/// A free loopback port (the OAuth redirect URL names the server's port before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// The `Set-Cookie` value of cookie `name` in a raw response head.
fn set_cookie<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| v.trim().strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
}

/// A server with GitHub sign-in against a fake GitHub (OAuth app `ui-client`, next user `alice`, an
/// administrator through `[web] admins`).
fn oauth_server() -> (FakeGitHub, Home, common::Server) {
    let fake = FakeGitHub::start();
    fake.set_oauth_app("ui-client", "ui-secret");
    fake.set_oauth_user("alice", 101);
    let home = Home::new();
    let port = free_port();
    std::fs::write(
        home.config_file(),
        format!(
            "[web]\nport = {port}\nadmins = [\"Alice\"]\n\n[security]\nallow_insecure_webhooks = true\n\
             allow_unsandboxed_builds = true\n\n[github]\napi_url = \"{}\"\n\n[oauth]\nclient_id = \"ui-client\"\n\
             client_secret = \"ui-secret\"\nredirect_url = \"http://127.0.0.1:{port}/github/auth/callback\"\n",
            fake.url()
        ),
    )
    .expect("write config");
    let server = home.start();
    assert_eq!(server.http_address(), format!("127.0.0.1:{port}"));
    (fake, home, server)
}

#[test]
fn ui_sign_in_and_admin_actions() {
    let Some(driver) = Driver::start() else { return };
    let (fake, home, server) = oauth_server();
    let nonce = common::nonce();
    let addr = server.http_address();
    let (base, head) = review_failing(&home, &nonce);
    let commit_page = format!("http://{addr}/ui/commits/{head}?base={base}");

    // A forged `state`: refused before any code is exchanged, with and without a state cookie.
    let (code, head_text, _) = http_request(&addr, "GET", "/ui/login", &[], b"");
    assert_eq!(code, 302);
    let state_cookie = set_cookie(&head_text, "ekaci_oauth_state").expect("state cookie").to_string();
    assert!(head_text.to_ascii_lowercase().contains("httponly; samesite=lax"), "{head_text}");
    let forged = "f".repeat(64);
    let cookie = format!("ekaci_oauth_state={state_cookie}");
    let path = format!("/github/auth/callback?code=anything&state={forged}");
    let (code, _, body) = http_request(&addr, "GET", &path, &[("Cookie", &cookie)], b"");
    assert_eq!(code, 400);
    assert!(String::from_utf8_lossy(&body).contains("does not match"));
    let (code, _, _) = http_request(&addr, "GET", &path, &[], b"");
    assert_eq!(code, 400);
    assert!(fake.calls_to("POST", "/login/oauth/access_token").is_empty(), "a forged state reached GitHub");
    let forger = driver.session(None);
    forger.open(&format!("http://{addr}{path}"));
    assert!(forger.text("#error").contains("state"), "{}", forger.source());
    drop(forger);

    // Alice signs in through GitHub's OAuth flow; she is an administrator.
    let alice = driver.session(None);
    alice.open(&format!("http://{addr}/ui/"));
    alice.click("#signin");
    alice.wait_for("#login");
    assert_eq!(alice.text("#login"), "alice", "{}", alice.source());
    assert_eq!(alice.url(), format!("http://{addr}/ui/"));
    let exchange = fake.calls_to("POST", "/login/oauth/access_token");
    assert_eq!(exchange.len(), 1);
    assert!(exchange[0].body.contains("client_secret=ui-secret"));
    assert!(
        !server.log().contains("ui-secret") && !server.log().contains("gho_fake"),
        "a secret reached the log"
    );

    // She sees the private (local) repository's commit page and rebuilds the failing derivation.
    alice.open(&commit_page);
    alice.click("table.failing td a[href^='/ui/drvs/']");
    alice.wait_for("#attempts");
    let drv_page = alice.url();
    let attempts_before = alice.all("#attempts tr").len() - 1;
    let history_before = alice.all("#history tr").len();
    let drv_path = drv_page.strip_prefix(&format!("http://{addr}")).expect("same server").to_string();
    // Without the CSRF token, the rebuild is refused even for her.
    assert_eq!(alice.post_form(&format!("{drv_path}/rebuild"), ""), 403);
    assert_eq!(alice.post_form(&format!("{drv_path}/rebuild"), "csrf=forged"), 403);
    alice.screenshot("derivation-admin");
    alice.click("#rebuild");
    alice.wait_for("#rebuild");
    assert_eq!(alice.url(), drv_page);
    // The requeued build runs again and fails again: a new attempt appears.
    let deadline = Instant::now() + Duration::from_secs(120);
    while alice.all("#attempts tr").len() - 1 <= attempts_before {
        assert!(Instant::now() < deadline, "the rebuild never started a new attempt");
        std::thread::sleep(Duration::from_millis(300));
        alice.open(&drv_page);
    }
    assert!(alice.all("#history tr").len() > history_before, "the rebuild left no trace in the history");
    assert!(alice.text("#history").contains("rebuild requested"), "{}", alice.text("#history"));
    // She cancels the builds of the head's jobset: refused without the CSRF token, done with the button.
    alice.open(&commit_page);
    alice.click("section.job a[href^='/ui/jobsets/']");
    alice.wait_for("#attrs");
    let jobset_page = alice.url();
    let jobset_path = jobset_page.strip_prefix(&format!("http://{addr}")).expect("same server").to_string();
    assert_eq!(alice.post_form(&format!("{jobset_path}/cancel"), ""), 403);
    alice.click("#cancel");
    alice.wait_for("#cancelled");
    assert_eq!(alice.url(), format!("{jobset_page}?cancelled=1"));
    assert!(server.log().contains("web UI: jobset builds cancelled"), "{}", server.log());
    alice.open(&format!("http://{addr}/ui/admin"));
    assert_eq!(alice.texts("#sessions td.login"), ["alice"]);
    alice.screenshot("admin");

    // Bob is signed in but no administrator: no Rebuild button, and a forged POST with his own valid
    // CSRF token is refused; the private repository's pages are refused to him too.
    fake.set_oauth_user("bob", 102);
    let bob = driver.session(None);
    bob.open(&format!("http://{addr}/ui/login"));
    bob.wait_for("#login");
    assert_eq!(bob.text("#login"), "bob");
    assert!(bob.all("a[href='/ui/admin']").is_empty());
    let bob_csrf = {
        let v = bob.run("return document.querySelector('input[name=csrf]').value;", json!([]));
        v.as_str().expect("csrf").to_string()
    };
    assert_eq!(bob.post_form(&format!("{drv_path}/rebuild"), &format!("csrf={bob_csrf}")), 403);
    assert_eq!(bob.post_form(&format!("{jobset_path}/cancel"), &format!("csrf={bob_csrf}")), 403);
    bob.open(&drv_page);
    assert_eq!(bob.text("h1"), "Not allowed", "{}", bob.source());
    assert!(bob.all("#rebuild").is_empty());
    bob.open(&format!("http://{addr}/ui/admin"));
    assert_eq!(bob.text("h1"), "Not allowed");
    // Nor may his session follow the private commit, its jobset or all builds live; Alice's may.
    bob.open(&format!("http://{addr}/ui/"));
    let jobset_id: u64 =
        jobset_path.rsplit('/').next().and_then(|id| id.parse().ok()).expect("jobset id in the path");
    for subscription in [json!({ "commit": head }), json!({ "job": jobset_id }), json!({ "all": true })] {
        let answer = subscribe_in_page(&bob, &subscription);
        assert_eq!(answer["type"], "error", "{subscription}: {answer}");
        assert_eq!(subscribe_in_page(&alice, &subscription)["type"], "subscribed", "{subscription}");
    }
    drop(bob);

    // Signing out revokes the session: its cookie no longer works.
    alice.open(&format!("http://{addr}/ui/"));
    let session_cookie =
        alice.cmd("GET", "/cookie/ekaci_session", None)["value"].as_str().expect("cookie").to_string();
    // Her live pages follow the commit with her session; a WebSocket opened with her cookie by another
    // site's page (another Origin) is refused before any upgrade.
    alice.open(&commit_page);
    alice.wait_for("html[data-live='subscribed']");
    let cookie = format!("ekaci_session={session_cookie}");
    let ws_head = |origin: &str| {
        let headers = [
            ("Cookie", cookie.as_str()),
            ("Origin", origin),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
        ];
        http_request(&addr, "GET", "/v1/ws/builds", &headers, b"").0
    };
    assert_eq!(ws_head("http://evil.example"), 403);
    // From her own origin it gets as far as the upgrade checks (this request has no key).
    assert_eq!(ws_head(&format!("http://{addr}")), 400);
    alice.click("#logout");
    alice.wait_for("#signin");
    let cookie = format!("ekaci_session={session_cookie}");
    let (code, _, _) = http_request(&addr, "GET", "/ui/admin", &[("Cookie", &cookie)], b"");
    assert_eq!(code, 401);
    drop(alice);
    drop(server);
}

/// The log page of a running build follows the log live (`/v1/ws/builds`): lines appear without a
/// reload, and the page says when the build ends.
#[test]
fn ui_log_follows_a_running_build() {
    let Some(driver) = Driver::start() else { return };
    let nonce = common::nonce();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    let token = home.token("ui-live-test", "read");
    common::send_token(Some(&token));
    let gate = std::env::temp_dir().join(format!("ekaci-ui-gate-{nonce}"));
    let nix = format!(
        r#"{NIX_PRELUDE}
{{ slow = mk "slow-{nonce}" "i=0; while [ ! -e {gate} ]; do echo \"line $i\"; i=$((i+1)); /bin/sleep 0.2; done; echo slow > $out"; }}
"#,
        gate = gate.display()
    );
    let mut running = common::start_slow_build(&home, &addr, &nonce, &nix);
    let slow = running.drv.clone();
    let page = format!("http://{addr}/ui/logs/{}", slow.trim_start_matches("/nix/store/"));

    let browser = driver.session(Some(&token));
    // The log file appears once Nix has started the build.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        browser.open(&page);
        if !browser.all("#live").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no live log page: {}", browser.source());
        std::thread::sleep(Duration::from_millis(200));
    }
    browser.wait_for("html[data-live='subscribed']");
    // A mark that a reload would lose.
    browser.run("window.ekaMark = 'kept';", json!([]));
    let lines = |b: &Session| b.all("#log > div").len();
    let start = lines(&browser);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&browser) < start + 3 {
        assert!(Instant::now() < deadline, "the log did not grow: {}", browser.source());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(browser.run("return window.ekaMark;", json!([])), "kept", "the page was reloaded");
    let n = lines(&browser);
    let last = browser.text(&format!("#L{n}"));
    assert!(last.starts_with(&n.to_string()) && last.contains("line "), "{last}");
    browser.screenshot("log-live");

    // The derivation page, in a second browser, follows the state.
    let drv_page = driver.session(Some(&token));
    drv_page.open(&format!("http://{addr}/ui/drvs/{}", slow.trim_start_matches("/nix/store/")));
    assert_eq!(drv_page.attr("#state .badge", "data-state"), "building");
    drv_page.wait_for("html[data-live='subscribed']");
    drv_page.run("window.ekaMark = 'kept';", json!([]));

    std::fs::write(&gate, b"").expect("open the gate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while drv_page.attr("#state .badge", "data-state") != "success" {
        assert!(Instant::now() < deadline, "the derivation page never showed success");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(drv_page.run("return window.ekaMark;", json!([])), "kept", "the page was reloaded");
    drop(drv_page);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !browser.text("#live").contains("ended: success") {
        assert!(Instant::now() < deadline, "the page never said the build ended: {}", browser.text("#live"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(browser.run("return window.ekaMark;", json!([])), "kept");
    let _ = std::fs::remove_file(&gate);
    let _ = running.review.wait();
    drop(browser);
    drop(server);
}

/// The commit page, the jobset page and the dashboard follow a running build without a reload
/// (`/ui/live.js` over `/v1/ws/builds`): the job's verdict and counts, the attribute's state and the
/// active builds change when the build ends.
#[test]
fn ui_pages_follow_a_running_build() {
    let Some(driver) = Driver::start() else { return };
    let nonce = common::nonce();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    let token = home.token("ui-pages-live", "read");
    common::send_token(Some(&token));
    let gate = std::env::temp_dir().join(format!("ekaci-ui-pages-gate-{nonce}"));
    let nix = format!(
        r#"{NIX_PRELUDE}
{{ slow = mk "slow-{nonce}" "while [ ! -e {gate} ]; do /bin/sleep 0.2; done; echo slow > $out"; }}
"#,
        gate = gate.display()
    );
    let mut running = common::start_slow_build(&home, &addr, &nonce, &nix);
    let slow_name = format!("slow-{nonce}.drv");
    let live = |b: &Session| {
        b.wait_for("html[data-live='subscribed']");
        // A mark that a reload would lose.
        b.run("window.ekaMark = 'kept';", json!([]));
    };
    let kept = |b: &Session| assert_eq!(b.run("return window.ekaMark;", json!([])), "kept", "reloaded");
    let wait = |b: &Session, what: &str, done: &dyn Fn(&Session) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(b) {
            assert!(Instant::now() < deadline, "{what} never happened: {}", b.source());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Read in one script: the regions read may be replaced between two WebDriver commands.
    let read = |b: &Session, css: &str, attr: &str| {
        let v = b.run(
            "var e = document.querySelector(arguments[0]); \
             return e ? (arguments[1] ? e.getAttribute(arguments[1]) : e.textContent) : '';",
            json!([css, attr]),
        );
        v.as_str().unwrap_or_default().to_string()
    };
    let count = |b: &Session, css: &str| {
        b.run("return document.querySelectorAll(arguments[0]).length;", json!([css])).as_u64().unwrap_or(0)
    };
    let verdict = |b: &Session| read(b, "section.job h2 .badge", "data-state");

    // The commit page: the job is building; its counts come from `job_stats_update`.
    let commit = driver.session(Some(&token));
    commit.open(&format!("http://{addr}/ui/commits/{}?base={}", running.head, running.base));
    assert_eq!(verdict(&commit), "building", "{}", commit.source());
    live(&commit);
    wait(&commit, "live counts", &|b| count(b, "p.live-counts .badge") > 0);
    let counts = read(&commit, "p.live-counts", "");
    assert!(counts.starts_with("1 attributes (evaluated)"), "{counts}");
    commit.screenshot("commit-live");

    // The jobset page: the attribute's state.
    let jobset = driver.session(Some(&token));
    jobset.open(&format!(
        "http://{addr}{}",
        commit
            .attr("section.job a[href^='/ui/jobsets/']", "href")
            .trim_start_matches(&format!("http://{addr}"))
    ));
    jobset.wait_for("#attrs");
    let slow_state = |b: &Session| read(b, "#attrs td[data-drv] .badge", "data-state");
    assert!(matches!(slow_state(&jobset).as_str(), "building" | "buildable"), "{}", jobset.source());
    live(&jobset);

    // The dashboard: the build is active.
    let dashboard = driver.session(Some(&token));
    dashboard.open(&format!("http://{addr}/ui/"));
    assert!(dashboard.text("#active").contains(&slow_name), "{}", dashboard.text("#active"));
    live(&dashboard);
    dashboard.screenshot("dashboard-live");
    // An anonymous browser may see the dashboard (`public_read`) but not follow all builds: it falls
    // back to refreshing, and is shown no private build.
    let anonymous = driver.session(None);
    anonymous.open(&format!("http://{addr}/ui/"));
    wait(&anonymous, "the fallback", &|b| read(b, "#live-status", "").starts_with("refreshing every"));
    assert!(!read(&anonymous, "#active", "").contains(&slow_name), "a private build shown anonymously");
    drop(anonymous);

    std::fs::write(&gate, b"").expect("open the gate");
    wait(&commit, "the job's success", &|b| verdict(b) == "success");
    wait(&commit, "the counts' success", &|b| {
        count(b, "p.live-counts .badge") == 1 && count(b, "p.live-counts .badge[data-state='success']") == 1
    });
    kept(&commit);
    wait(&jobset, "the attribute's success", &|b| slow_state(b) == "success");
    kept(&jobset);
    wait(&dashboard, "the end of the active build", &|b| !read(b, "#active", "").contains(&slow_name));
    let active = read(&dashboard, "#active", "");
    assert!(active.contains("no build running"), "{active}");
    kept(&dashboard);

    let _ = std::fs::remove_file(&gate);
    let _ = running.review.wait();
    drop((commit, jobset, dashboard));
    drop(server);
}

/// Whether any process's command line contains `needle` (read from /proc).
fn process_running(needle: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(needle))
}

/// The `Cookie` header value of a browser's `ekaci_session` cookie.
fn session_cookie(s: &Session) -> String {
    let value = s.cmd("GET", "/cookie/ekaci_session", None)["value"].as_str().expect("cookie").to_string();
    format!("ekaci_session={value}")
}

/// An administrator cancels one running derivation from its page: the build's processes end, the page
/// shows `interrupted-cancelled`, its dependent becomes `blocked`; a non-administrator and a POST without
/// the CSRF token are refused. The raw log of the cancelled attempt downloads through the browser
/// session (streamed as `text/plain` with a file name) and is refused to an anonymous client and to a
/// signed-in user who may not read the (private, local) repository.
#[test]
fn ui_cancel_a_running_derivation_and_raw_log() {
    let Some(driver) = Driver::start() else { return };
    let (fake, home, server) = oauth_server();
    let nonce = common::nonce();
    let addr = server.http_address();
    let read = home.token("ui-cancel-read", "read");
    let admin = home.token("ui-cancel-admin", "admin");
    common::send_token(Some(&read));
    let gate = std::env::temp_dir().join(format!("ekaci-ui-cancel-gate-{nonce}"));
    let nix = format!(
        r#"{NIX_PRELUDE}
let slow = mk "slow-{nonce}" "i=0; while [ ! -e {gate} ]; do echo \"line $i\"; i=$((i+1)); /bin/sleep 0.2; done; echo slow > $out";
in {{ inherit slow; after = mk "after-{nonce}" "echo ${{slow}} > $out"; }}
"#,
        gate = gate.display()
    );
    let mut running = common::start_slow_build(&home, &addr, &nonce, &nix);
    let slow = running.drv.clone();
    let (code, v) = common::get_json(&addr, &format!("/v1/drvs/{}", slow.trim_start_matches("/nix/store/")));
    assert_eq!(code, 200, "{v}");
    let after = v["dependents"][0].as_str().expect("the dependent").to_string();
    assert!(after.ends_with(&format!("-after-{nonce}.drv")), "{v}");
    common::send_token(None);
    let gate_text = gate.display().to_string();
    assert!(process_running(&gate_text), "the slow build's process is not running");

    let alice = driver.session(None);
    alice.open(&format!("http://{addr}/ui/login"));
    alice.wait_for("#login");
    assert_eq!(alice.text("#login"), "alice");
    let drv_page = format!("http://{addr}/ui/drvs/{}", slow.trim_start_matches("/nix/store/"));
    let drv_path = drv_page.strip_prefix(&format!("http://{addr}")).expect("same server").to_string();
    alice.open(&drv_page);
    assert_eq!(alice.attr("#state .badge", "data-state"), "building");

    // Bob (signed in, no administrator) sees no Cancel button and his own CSRF token does not help.
    fake.set_oauth_user("bob", 102);
    let bob = driver.session(None);
    bob.open(&format!("http://{addr}/ui/login"));
    bob.wait_for("#login");
    let bob_csrf = bob.run("return document.querySelector('input[name=csrf]').value;", json!([]));
    let bob_csrf = bob_csrf.as_str().expect("csrf").to_string();
    assert_eq!(bob.post_form(&format!("{drv_path}/cancel"), &format!("csrf={bob_csrf}")), 403);
    bob.open(&drv_page);
    assert!(bob.all("#cancel-drv").is_empty());
    // Without the CSRF token even Alice is refused; the build keeps running.
    assert_eq!(alice.post_form(&format!("{drv_path}/cancel"), ""), 403);
    assert_eq!(alice.post_form(&format!("{drv_path}/cancel"), "csrf=forged"), 403);
    alice.open(&drv_page);
    assert_eq!(alice.attr("#state .badge", "data-state"), "building");
    alice.screenshot("derivation-cancel");

    // Alice clicks Cancel: the page comes back with the new state, and the build's processes are gone.
    alice.click("#cancel-drv");
    let deadline = Instant::now() + Duration::from_secs(60);
    while alice.all("#state .badge[data-state='interrupted-cancelled']").is_empty() {
        assert!(Instant::now() < deadline, "the page never showed the cancel: {}", alice.source());
        std::thread::sleep(Duration::from_millis(200));
        alice.open(&drv_page);
    }
    assert!(alice.text("#history").contains("cancelled by web:alice"), "{}", alice.text("#history"));
    assert!(alice.all("#cancel-drv").is_empty(), "a final derivation offers no Cancel");
    alice.screenshot("derivation-cancelled");
    assert!(server.log().contains("web UI: derivation cancelled"), "{}", server.log());
    let deadline = Instant::now() + Duration::from_secs(60);
    while process_running(&gate_text) {
        assert!(Instant::now() < deadline, "the cancelled build's process is still running");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!gate.exists(), "the build was not let finish");
    let after_page = format!("/v1/drvs/{}", after.trim_start_matches("/nix/store/"));
    let auth = format!("Bearer {admin}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, _, body) = http_request(&addr, "GET", &after_page, &[("Authorization", &auth)], b"");
        assert_eq!(code, 200);
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        if v["state"]["name"] == "blocked" {
            assert_eq!(v["state"]["dependency"], slow.as_str(), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the dependent never became blocked: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = running.review.wait();
    // The API refuses to cancel it again (409) and a read token may not cancel at all (403).
    let cancel = format!("/v1/drvs/{}/cancel", slow.trim_start_matches("/nix/store/"));
    let (code, _, body) = http_request(&addr, "POST", &cancel, &[("Authorization", &auth)], b"");
    assert_eq!(code, 409, "{}", String::from_utf8_lossy(&body));
    let read_auth = format!("Bearer {read}");
    let (code, _, _) = http_request(&addr, "POST", &cancel, &[("Authorization", &read_auth)], b"");
    assert_eq!(code, 403);

    // The raw log of the cancelled attempt, through Alice's session cookie.
    alice.click("a.loglink");
    alice.wait_for("#raw");
    let raw = alice.attr("#raw", "href");
    assert!(raw.starts_with("/ui/logs/") && raw.contains("/raw?attempt=1"), "{raw}");
    let cookie = session_cookie(&alice);
    let (code, head, body) = http_request(&addr, "GET", &raw, &[("Cookie", &cookie)], b"");
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/plain;") && head.contains("charset=utf-8"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    let name = format!("filename=\"slow-{nonce}-attempt-1.log\"").to_ascii_lowercase();
    assert!(head.contains(&format!("content-disposition: inline; {name}")), "{head}");
    assert!(
        String::from_utf8_lossy(&body).starts_with("line 0\nline 1\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let download = alice.attr("#download", "href");
    let (code, head, _) = http_request(&addr, "GET", &download, &[("Cookie", &cookie)], b"");
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase().contains(&format!("content-disposition: attachment; {name}")),
        "{head}"
    );
    // The browser itself follows the link with its cookie.
    alice.open(&format!("http://{addr}{raw}"));
    assert!(alice.source().contains("line 0"), "{}", alice.source());
    // Anonymous, and Bob (who may not read the private repository): refused.
    let (code, _, body) = http_request(&addr, "GET", &raw, &[], b"");
    assert_eq!(code, 401);
    assert!(!String::from_utf8_lossy(&body).contains("line 0"));
    let (code, _, body) = http_request(&addr, "GET", &raw, &[("Cookie", &session_cookie(&bob))], b"");
    assert_eq!(code, 403);
    assert!(!String::from_utf8_lossy(&body).contains("line 0"));
    drop(bob);
    drop(alice);
    drop(server);
}
