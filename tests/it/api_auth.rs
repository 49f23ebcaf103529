//! The authenticated HTTP API: tokens made with `ekaci tokens`, private and public repositories' data
//! (delivered as signed webhooks through the fake GitHub, with real git, Nix and builds), the admin write
//! routes, `/metrics` and the listeners of their own.

use crate::common;
use crate::fake_github;
use crate::github_app::{fixture, wait_for};

use std::path::Path;
use std::time::Duration;

use common::{http_request, nonce, nonce_prelude, GitRepo, Home, Server};
use eka_ci::forge::github::webhook;
use fake_github::FakeGitHub;
use serde_json::{json, Value};

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;
const GATE: &str = "EkaCI: Evaluate Job (main)";
const SUMMARY_CHECK: &str = "EkaCI: Change Summary";

/// `(status, headers, body)` of a request carrying `token` (if any) and nothing else implicitly.
fn call(addr: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String, Vec<u8>) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    common::send_token(None);
    http_request(addr, method, path, &headers, body)
}

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    call(addr, "GET", path, token, b"")
}

/// GET answering 200 with JSON.
fn get_ok(addr: &str, path: &str, token: Option<&str>) -> Value {
    let (code, _, body) = get(addr, path, token);
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{path}: {text}");
    serde_json::from_slice(&body).unwrap_or(Value::String(text))
}

/// Asserts a JSON error answer of `status` whose message mentions `words` and never echoes `token`.
fn refused(code: u16, head: &str, body: &[u8], status: u16, words: &str, token: Option<&str>, what: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(code, status, "{what}: {text}");
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    assert_eq!(v["status"], status, "{what}: {v}");
    assert!(v["error"].as_str().is_some_and(|m| m.contains(words)), "{what}: `{v}` lacks `{words}`");
    if status == 401 {
        assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{what}: {head}");
    }
    if let Some(t) = token {
        assert!(!text.contains(t), "{what}: the token is echoed");
    }
}

fn expect_401(addr: &str, path: &str, token: Option<&str>, words: &str) {
    let (code, head, body) = get(addr, path, token);
    refused(code, &head, &body, 401, words, token, path);
}

/// GitHub's `pull_request` example for `repo` (`owner/name`, cloned from `path`), `private` or not.
fn pull_request(number: u64, repo: &str, path: &Path, head: &str, base: &str, private: bool) -> Vec<u8> {
    let mut p = fixture("pull_request.opened.json");
    p["number"] = json!(number);
    p["repository"]["full_name"] = json!(repo);
    p["repository"]["clone_url"] = json!(format!("file://{}", path.display()));
    p["repository"]["private"] = json!(private);
    p["installation"]["id"] = json!(fake_github::INSTALLATION_ID);
    let pr = &mut p["pull_request"];
    pr["number"] = json!(number);
    pr["draft"] = json!(false);
    pr["user"]["login"] = json!("octocat");
    pr["head"]["sha"] = json!(head);
    pr["head"]["repo"]["full_name"] = json!(repo);
    pr["base"]["sha"] = json!(base);
    pr["base"]["repo"]["full_name"] = json!(repo);
    serde_json::to_vec(&p).expect("encode")
}

/// A repository whose base has the configuration and `lib`, and whose head adds `body`.
fn repo_with(nonce: &str, body: &str) -> (GitRepo, String, String) {
    let repo = GitRepo::new();
    let nix = |b: &str| format!("{} rec {{ {b} }}", nonce_prelude(nonce));
    let lib = r#"lib = mk "lib-1" "echo lib > $out" [];"#;
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(lib)))]);
    let head = repo.commit("head", &[("default.nix", Some(&nix(&format!("{lib} {body}"))))]);
    (repo, base, head)
}

/// The server of the GitHub tests, with `web` as extra `[web]` keys.
fn github_server(home: &Home, fake: &FakeGitHub, secret: &str, web: &str) -> Server {
    let creds = home.path().join("github-app.json");
    let body = json!({ "GITHUB_APP_ID": fake_github::APP_ID, "GITHUB_APP_PRIVATE_KEY": fake_github::PRIVATE_KEY_PKCS1 });
    std::fs::write(&creds, body.to_string()).expect("write credentials");
    let config = format!(
        "[web]\nport = 0\n{web}\n\n[security]\nwebhook_secret = \"{secret}\"\nallow_unsandboxed_builds = true\n\n[github]\napi_url = \"{}\"\n\n\
         [[github_apps]]\nid = \"main\"\ncredentials = {{ file = {{ path = \"{}\" }} }}\n",
        fake.url(),
        creds.display()
    );
    std::fs::write(home.config_file(), config).expect("write config");
    home.start()
}

fn deliver(addr: &str, secret: &str, delivery: &str, body: &[u8]) -> u16 {
    let sig = webhook::sign(secret.as_bytes(), body);
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "pull_request"),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    common::send_token(None);
    http_request(addr, "POST", "/github/webhook", &headers, body).0
}

fn completed(fake: &FakeGitHub, repo: &str, sha: &str, name: &str) -> Value {
    wait_for(&format!("{name} on {repo}@{sha} completed"), || {
        fake.check_runs(repo)
            .into_iter()
            .find(|r| r["head_sha"] == sha && r["name"] == name && r["status"] == "completed")
    })
}

fn drv_base(drv: &str) -> String {
    drv.trim_start_matches("/nix/store/").to_string()
}

/// The jobset ids whose `commit` is `sha` (looked up with `token`).
fn jobset_of(addr: &str, sha: &str, token: &str) -> (u64, Value) {
    for id in 1..50 {
        let (code, _, body) = get(addr, &format!("/v1/jobsets/{id}"), Some(token));
        if code != 200 {
            continue;
        }
        let v: Value = serde_json::from_slice(&body).expect("jobset JSON");
        if v["commit"] == sha {
            return (id, v);
        }
    }
    panic!("no jobset of {sha}");
}

fn attr_drv(jobset: &Value, attr: &str) -> String {
    let attrs = jobset["attributes"].as_array().expect("attributes");
    let a = attrs.iter().find(|a| a["attr"] == attr).unwrap_or_else(|| panic!("no {attr}: {jobset}"));
    a["drv"].as_str().expect("drv").to_string()
}

fn drv_state(addr: &str, drv: &str, token: &str) -> (String, u64) {
    let v = get_ok(addr, &format!("/v1/drvs/{}", drv_base(drv)), Some(token));
    (v["state"]["name"].as_str().unwrap_or("").to_string(), v["attempt"].as_u64().unwrap_or(0))
}

#[test]
fn private_repositories_need_a_token_public_ones_do_not_and_write_routes_need_admin() {
    let nonce = nonce();
    let fake = FakeGitHub::start();
    let home = Home::new();
    let secret = format!("wh-{nonce}");
    let server = github_server(&home, &fake, &secret, "");
    let addr = server.http_address();

    let read = home.token("reader", "read");
    let admin = home.token("operator", "admin");

    // The private repository: `secret` builds, `slow` waits on a gate file (cancelled below).
    let gate_file = std::env::temp_dir().join(format!("ekaci-auth-gate-{nonce}"));
    let (private_repo, private_base, private_head) = repo_with(
        &nonce,
        &format!(
            r#"secret = mk "secret-1" "echo private-build-output; echo s > $out" [ lib ];
               slow = mk "slow-1" "while [ ! -e {} ]; do /bin/sleep 0.2; done; echo > $out" [];"#,
            gate_file.display()
        ),
    );
    let (public_repo, public_base, public_head) =
        repo_with(&nonce, r#"open = mk "open-1" "echo public-build-output; echo o > $out" [ lib ];"#);
    let body = pull_request(1, "octo-org/secret", private_repo.path(), &private_head, &private_base, true);
    assert_eq!(deliver(&addr, &secret, "d-private", &body), 202);
    let body = pull_request(2, "octo-org/open", public_repo.path(), &public_head, &public_base, false);
    assert_eq!(deliver(&addr, &secret, "d-public", &body), 202);

    completed(&fake, "octo-org/open", &public_head, GATE);
    completed(&fake, "octo-org/secret", &private_head, SUMMARY_CHECK);
    let (private_id, private_jobset) = jobset_of(&addr, &private_head, &read);
    let (public_id, public_jobset) = jobset_of(&addr, &public_head, &read);
    let secret_drv = attr_drv(&private_jobset, "secret");
    let slow_drv = attr_drv(&private_jobset, "slow");
    let open_drv = attr_drv(&public_jobset, "open");
    wait_for("the private derivation built", || {
        (drv_state(&addr, &secret_drv, &read).0 == "success").then_some(())
    });
    wait_for("the slow derivation building", || {
        (drv_state(&addr, &slow_drv, &read).0 == "building").then_some(())
    });

    // Every /v1 route of the private repository: 401 without a token, 200 with one.
    let private_routes = [
        format!("/v1/jobsets/{private_id}"),
        format!("/v1/drvs/{}", drv_base(&secret_drv)),
        format!("/v1/logs/{}", drv_base(&secret_drv)),
        format!("/v1/commits/{private_head}/change-summary"),
        format!("/v1/commits/{private_head}/change-summary.md"),
        format!("/v1/commits/{private_head}/package-changes"),
        format!("/v1/commits/{private_head}/rebuild-impact"),
    ];
    for path in &private_routes {
        expect_401(&addr, path, None, "needs a token");
        let (code, _, body) = get(&addr, path, Some(&read));
        assert_eq!(code, 200, "{path} with a read token: {}", String::from_utf8_lossy(&body));
    }
    let log = get(&addr, &private_routes[2], Some(&read)).2;
    assert!(String::from_utf8_lossy(&log).contains("private-build-output"));
    // Anonymous callers cannot tell private from missing: an unknown jobset answers 401 too.
    expect_401(&addr, "/v1/jobsets/987654", None, "needs a token");
    // Active builds: anonymous callers see only public derivations (the private `slow` is hidden).
    let active = get_ok(&addr, "/v1/builds/active", None);
    assert_eq!(active["builds"], json!([]), "{active}");
    let active = get_ok(&addr, "/v1/builds/active", Some(&read));
    assert!(active["builds"].to_string().contains(&slow_drv), "{active}");

    // The public repository: 200 without a token.
    for path in [
        format!("/v1/jobsets/{public_id}"),
        format!("/v1/drvs/{}", drv_base(&open_drv)),
        format!("/v1/logs/{}", drv_base(&open_drv)),
        format!("/v1/commits/{public_head}/change-summary"),
        format!("/v1/commits/{public_head}/change-summary.md"),
        format!("/v1/commits/{public_head}/package-changes"),
        format!("/v1/commits/{public_head}/rebuild-impact"),
    ] {
        let (code, _, body) = get(&addr, &path, None);
        assert_eq!(code, 200, "{path} without a token: {}", String::from_utf8_lossy(&body));
    }
    // A bad token is refused even where no token is needed, and is never echoed.
    let forged = format!("ekaci_{}", "0".repeat(64));
    expect_401(&addr, &format!("/v1/jobsets/{public_id}"), Some(&forged), "invalid token");
    let (code, head, body) = call(&addr, "GET", "/v1/builds/active", None, b"");
    assert_eq!(code, 200, "{head}");
    drop(body);
    let (code, head, body) = {
        let headers = [("Authorization", "Basic dXNlcjpwYXNz")];
        http_request(&addr, "GET", "/v1/builds/active", &headers, b"")
    };
    refused(code, &head, &body, 401, "malformed Authorization header", None, "basic auth");

    // Write routes: 401 without a token, 403 with a read token, and they act with an admin token.
    let cancel = format!("/v1/jobsets/{private_id}/cancel");
    let rebuild = format!("/v1/drvs/{}/rebuild", drv_base(&open_drv));
    let approve = "/v1/github/approve";
    let approve_body = br#"{"repo": "octo-org/secret", "number": 1}"#;
    for (path, body) in [(&cancel, &b""[..]), (&rebuild, &b""[..]), (&approve.to_string(), &approve_body[..])]
    {
        let (code, head, text) = call(&addr, "POST", path, None, body);
        refused(code, &head, &text, 401, "scope admin", None, path);
        let (code, head, text) = call(&addr, "POST", path, Some(&read), body);
        refused(code, &head, &text, 403, "token `reader` has scope read", Some(&read), path);
    }
    let (code, _, body) = call(&addr, "POST", &cancel, Some(&admin), b"");
    assert_eq!(code, 200, "cancel: {}", String::from_utf8_lossy(&body));
    wait_for("the slow build cancelled", || {
        (drv_state(&addr, &slow_drv, &read).0 == "interrupted-cancelled").then_some(())
    });
    let (code, _, body) = call(&addr, "POST", &rebuild, Some(&admin), b"");
    assert_eq!(code, 202, "rebuild: {}", String::from_utf8_lossy(&body));
    let requeued: Value = serde_json::from_slice(&body).expect("rebuild JSON");
    assert_eq!(requeued["drv"], open_drv.as_str(), "{requeued}");
    // The rebuild is in the derivation's history (its output is valid, so it is done at once).
    let history = get_ok(&addr, &format!("/v1/drvs/{}", drv_base(&open_drv)), Some(&read))["history"].clone();
    assert!(history.to_string().contains("rebuild requested"), "{history}");
    let (code, _, body) = call(&addr, "POST", approve, Some(&admin), approve_body);
    assert_eq!(code, 200, "approve: {}", String::from_utf8_lossy(&body));
    let approved: Value = serde_json::from_slice(&body).expect("approve JSON");
    assert_eq!(
        (approved["repo"].as_str(), approved["newly"].as_bool()),
        (Some("octo-org/secret"), Some(true))
    );
    let (code, head, text) = call(&addr, "POST", approve, Some(&admin), br#"{"repo": "nope", "number": 1}"#);
    refused(code, &head, &text, 400, "invalid", Some(&admin), "bad approve body");

    // `tokens list` never shows a token; a revoked token stops working.
    let listed = home.ekaci(&["tokens", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("reader") && listed.contains("operator"), "{listed}");
    assert!(!listed.contains(&read) && !listed.contains(&admin) && !listed.contains("ekaci_"), "{listed}");
    let revoked = home.ekaci(&["tokens", "revoke", "reader"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    expect_401(&addr, &private_routes[0], Some(&read), "invalid token");

    // No token in the server log.
    std::fs::write(&gate_file, "").expect("open the gate");
    server.signal(rustix::process::Signal::TERM);
    let (_, log) = server.wait(Duration::from_secs(60));
    assert!(!log.contains(&read) && !log.contains(&admin), "a token reached the server log");
    assert!(log.contains("operator"), "token names may be logged: {log}");
    let _ = std::fs::remove_file(&gate_file);
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

#[test]
fn tokens_metrics_public_read_and_listeners_of_their_own() {
    // Names are checked, duplicates refused, the token printed once.
    let home = Home::new();
    home.write_config_web("", "public_read = false");
    let server = home.start();
    let addr = server.http_address();
    for bad in ["", "_x", "a b", &"x".repeat(65)] {
        let out = home.ekaci(&["tokens", "create", bad, "--scope", "read"]);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid token name"), "{out:?}");
    }
    let out = home.ekaci(&["tokens", "create", "x", "--scope", "root"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `read` or `admin`"), "{out:?}");
    let token = home.token("grafana", "read");
    let out = home.ekaci(&["tokens", "create", "grafana", "--scope", "admin"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"), "{out:?}");
    let list = home.ekaci(&["tokens", "list", "--json"]);
    let list: Value = serde_json::from_slice(&list.stdout).expect("list JSON");
    assert_eq!(list[0]["name"], "grafana");
    assert_eq!(list[0]["scope"], "read");
    assert!(!list.to_string().contains(&token));

    // `public_read = false`: every /v1 route needs a token; /metrics needs one by default.
    expect_401(&addr, "/v1/builds/active", None, "public_read = false");
    expect_401(&addr, &format!("/v1/commits/{}/change-summary", "a".repeat(40)), None, "public_read");
    assert_eq!(get(&addr, "/v1/builds/active", Some(&token)).0, 200);
    expect_401(&addr, "/metrics", None, "metrics_public");
    let (code, _, body) = get(&addr, "/metrics", Some(&token));
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("eka_ci_"));
    assert_eq!(get(&addr, "/healthz", None).0, 200);
    drop(server);

    // `metrics_public = true`.
    home.write_config_web("", "metrics_public = true");
    let server = home.start();
    assert_eq!(get(&server.http_address(), "/metrics", None).0, 200);
    drop(server);

    // Listeners of their own: each serves only its routes, the main one no longer serves them.
    let (metrics_port, webhook_port) = (free_port(), free_port());
    home.write_config_web(
        "",
        &format!(
            "metrics_address = \"127.0.0.1:{metrics_port}\"\nwebhook_address = \"127.0.0.1:{webhook_port}\""
        ),
    );
    let server = home.start();
    let main = server.http_address();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let hooks = format!("127.0.0.1:{webhook_port}");
    assert_eq!(get(&metrics, "/metrics", None).0, 200, "metrics listener: no token");
    assert_eq!(get(&metrics, "/healthz", None).0, 200);
    assert_eq!(get(&metrics, "/v1/builds/active", Some(&token)).0, 404);
    assert_eq!(call(&metrics, "POST", "/github/webhook", None, b"{}").0, 404);
    assert_eq!(get(&main, "/metrics", Some(&token)).0, 404, "the main listener has no /metrics");
    assert_eq!(call(&main, "POST", "/github/webhook", None, b"{}").0, 404, "nor the webhook");
    assert_eq!(get(&main, "/v1/builds/active", Some(&token)).0, 200);
    assert_eq!(get(&hooks, "/metrics", Some(&token)).0, 404);
    assert_eq!(get(&hooks, "/v1/builds/active", Some(&token)).0, 404);
    assert_eq!(get(&hooks, "/healthz", None).0, 404);
    // The webhook listener answers webhooks (a ping without a secret configured: accepted).
    let headers =
        [("X-GitHub-Event", "ping"), ("X-GitHub-Delivery", "d-ping-1"), ("Content-Type", "application/json")];
    let (code, _, body) = http_request(&hooks, "POST", "/github/webhook", &headers, br#"{"zen": "ok"}"#);
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
}
