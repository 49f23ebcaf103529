//! The GitHub App end to end: signed webhooks into the real server, a fake GitHub on loopback for the
//! REST API, real git repositories as the pull requests' repositories (`file://` clone URLs), real Nix
//! evaluations and builds, and assertions on the exact check runs the fake recorded.

use crate::common;
use crate::fake_github;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{http_request, nonce, nonce_prelude, GitRepo, Home, Server};
use eka_ci::forge::github::webhook;
use fake_github::FakeGitHub;
use rustix::process::Signal;
use serde_json::{json, Value};

pub(crate) const REPO: &str = "octo-org/widgets";
pub(crate) const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;
pub(crate) const GATE: &str = "EkaCI: Evaluate Job (main)";

/// `rec { body }` with `mk name script deps` and a per-test nonce, so nothing is already built.
pub(crate) fn nix(nonce: &str, body: &str) -> String {
    format!("{} rec {{ {body} }}", nonce_prelude(nonce))
}

pub(crate) const LIB: &str = r#"lib = mk "lib-1" "echo lib > $out" [];"#;

/// A pull request's repository: the base commit has the configuration and `lib`.
pub(crate) struct Fixture {
    pub(crate) repo: GitRepo,
    pub(crate) nonce: String,
    pub(crate) base: String,
}

impl Fixture {
    pub(crate) fn new() -> Fixture {
        let (repo, nonce) = (GitRepo::new(), nonce());
        let base = repo.commit(
            "base",
            &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&nonce, LIB)))],
        );
        Fixture { repo, nonce, base }
    }

    /// A commit whose `default.nix` is `rec { body }`.
    pub(crate) fn head(&self, message: &str, body: &str) -> String {
        self.repo.commit(message, &[("default.nix", Some(&nix(&self.nonce, body)))])
    }

    pub(crate) fn path(&self) -> &Path {
        self.repo.path()
    }

    /// An attribute `slow` (derivation `name`) whose build waits until the returned file exists; `gate`
    /// tells gate files of one fixture apart.
    pub(crate) fn slow(&self, name: &str, gate: &str) -> (String, PathBuf) {
        let file = std::env::temp_dir().join(format!("ekaci-gate-{}{gate}", self.nonce));
        let attr = format!(
            r#"slow = mk "{name}" "while [ ! -e {} ]; do /bin/sleep 0.2; done; echo > $out" [];"#,
            file.display()
        );
        (attr, file)
    }
}

/// What a test adds to the server configuration: `extra` at the top, the others inside their tables.
struct Tables<'a> {
    extra: &'a str,
    web: &'a str,
    github: &'a str,
    security: &'a str,
}

/// A server configured with a webhook secret, the test App (credentials from a file) and the fake's URL.
pub(crate) struct Setup {
    pub(crate) fake: FakeGitHub,
    pub(crate) home: Home,
    pub(crate) secret: String,
    server: Option<Server>,
}

impl Setup {
    pub(crate) fn new(extra: &str) -> Setup {
        Setup::with_github(extra, "")
    }

    /// Like [`Setup::new`], with `github` added to the `[github]` table.
    fn with_github(extra: &str, github: &str) -> Setup {
        Setup::with_env(extra, github, "", &[])
    }

    /// Like [`Setup::with_github`], with `security` added to the `[security]` table and extra
    /// environment variables for the server.
    pub(crate) fn with_env(
        extra: &str,
        github: &str,
        security: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Setup {
        Setup::with_tables(extra, "", github, security, env)
    }

    /// Like [`Setup::with_github`], with `web` added to the `[web]` table.
    fn with_web(extra: &str, web: &str, github: &str) -> Setup {
        Setup::with_tables(extra, web, github, "", &[])
    }

    /// A server with `web`, `github` and `security` added to those tables, the test App's credentials
    /// from a file, and `env`.
    fn with_tables(
        extra: &str,
        web: &str,
        github: &str,
        security: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Setup {
        let (fake, home) = (FakeGitHub::start(), Home::new());
        let creds = home.path().join("github-app.json");
        let body = json!({ "GITHUB_APP_ID": fake_github::APP_ID, "GITHUB_APP_PRIVATE_KEY": fake_github::PRIVATE_KEY_PKCS1 });
        std::fs::write(&creds, body.to_string()).expect("write credentials");
        let credentials = format!("{{ file = {{ path = \"{}\" }} }}", creds.display());
        let tables = Tables { extra, web, github, security };
        Setup::start(fake, home, &tables, &credentials, env)
    }

    /// Like [`Setup::new`], with the App's `credentials` (a TOML value) and `env` for the server.
    pub(crate) fn with_app_credentials(credentials: &str, env: &[(&str, &std::ffi::OsStr)]) -> Setup {
        let tables = Tables { extra: "", web: "", github: "", security: "" };
        Setup::start(FakeGitHub::start(), Home::new(), &tables, credentials, env)
    }

    fn start(
        fake: FakeGitHub,
        home: Home,
        tables: &Tables<'_>,
        credentials: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Setup {
        let Tables { extra, web, github, security } = tables;
        let secret = format!("wh-{}", nonce());
        let config = format!(
            "{extra}\n\n[web]\nport = 0\nmetrics_public = true\n{web}\n\n[security]\nwebhook_secret = \"{secret}\"\nallow_unsandboxed_builds = true\n{security}\n\n[github]\napi_url = \"{}\"\n{github}\n\
             [[github_apps]]\nid = \"main\"\ncredentials = {credentials}\n",
            fake.url(),
        );
        std::fs::write(home.config_file(), config).expect("write config");
        let server = Some(home.start_with(env));
        Setup { fake, home, secret, server }
    }

    /// Stops the server and returns its log.
    pub(crate) fn stop(&mut self) -> String {
        self.server.take().map(|s| s.stop().1).unwrap_or_default()
    }

    pub(crate) fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    pub(crate) fn deliver(&self, event: &str, delivery: &str, body: &[u8]) -> u16 {
        let sig = webhook::sign(self.secret.as_bytes(), body);
        self.post(event, delivery, &sig, body)
    }

    /// Delivers `pull_request` `action` (not a draft) and expects it accepted.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pr(
        &self,
        delivery: &str,
        action: &str,
        number: u64,
        repo: &Path,
        head: &str,
        base: &str,
        author: &str,
    ) {
        let body = pull_request(action, number, repo, head, base, false, author);
        assert_eq!(self.deliver("pull_request", delivery, &body), 202, "{action} ({delivery}) accepted");
    }

    fn post(&self, event: &str, delivery: &str, signature: &str, body: &[u8]) -> u16 {
        let addr = self.server().http_address();
        let headers = [
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", signature),
        ];
        http_request(&addr, "POST", "/github/webhook", &headers, body).0
    }

    /// The check runs the fake holds for `sha`.
    pub(crate) fn runs(&self, sha: &str) -> Vec<Value> {
        self.fake.check_runs(REPO).into_iter().filter(|r| r["head_sha"] == sha).collect()
    }

    pub(crate) fn run(&self, sha: &str, name: &str) -> Option<Value> {
        self.runs(sha).into_iter().find(|r| r["name"] == name)
    }

    /// Waits (bounded) until `name` on `sha` is completed, and returns it.
    pub(crate) fn wait_completed(&self, sha: &str, name: &str) -> Value {
        wait_for(&format!("{name} on {sha} completed"), || {
            self.run(sha, name).filter(|r| r["status"] == "completed")
        })
    }

    pub(crate) fn restart(&mut self) {
        self.server = Some(self.home.start());
    }

    /// [`Setup::restart`] with extra environment variables for the server.
    pub(crate) fn restart_with(&mut self, env: &[(&str, &std::ffi::OsStr)]) {
        self.server = Some(self.home.start_with(env));
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.signal(rustix::process::Signal::KILL);
            let _ = server.wait(Duration::from_secs(10));
        }
    }
}

/// Polls `probe` every 100 ms for up to 180 s.
pub(crate) fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/github").join(name);
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
}

/// GitHub's own `pull_request` example, pointed at our repository and commits.
pub(crate) fn pull_request(
    action: &str,
    number: u64,
    repo: &Path,
    head: &str,
    base: &str,
    draft: bool,
    author: &str,
) -> Vec<u8> {
    let mut p = fixture("pull_request.opened.json");
    let url = format!("file://{}", repo.display());
    p["action"] = json!(action);
    p["number"] = json!(number);
    p["repository"]["full_name"] = json!(REPO);
    p["repository"]["clone_url"] = json!(url);
    p["installation"]["id"] = json!(fake_github::INSTALLATION_ID);
    let pr = &mut p["pull_request"];
    pr["number"] = json!(number);
    pr["draft"] = json!(draft);
    pr["user"]["login"] = json!(author);
    pr["head"]["sha"] = json!(head);
    pr["head"]["repo"]["full_name"] = json!(REPO);
    pr["base"]["sha"] = json!(base);
    pr["base"]["repo"]["full_name"] = json!(REPO);
    serde_json::to_vec(&p).expect("encode")
}

pub(crate) fn names(runs: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = runs.iter().map(|r| r["name"].as_str().unwrap_or("").to_string()).collect();
    n.sort();
    n
}

pub(crate) fn summary(run: &Value) -> String {
    run["output"]["summary"].as_str().unwrap_or("").to_string()
}

#[test]
fn a_pull_request_ends_in_exact_check_runs_and_redeliveries_and_forgeries_change_nothing() {
    let f = Fixture::new();
    let base = f.head("base with app", &format!(r#"{LIB} app = mk "app-1" "echo app > $out" [ lib ];"#));
    let head = f.head(
        "head",
        &format!(
            r#"{LIB} app = mk "app-2" "echo app2 > $out" [ lib ];
               good = mk "good-1" "echo good > $out" [];
               broken = mk "broken-1" "echo boom-marker-from-the-build >&2; exit 3" [ lib ];"#
        ),
    );
    let s = Setup::new("");
    let body = pull_request("opened", 7, f.path(), &head, &base, false, "octocat");
    assert_eq!(s.deliver("pull_request", "d-open-1", &body), 202);

    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "failure", "{gate}");
    assert!(summary(&gate).contains("| 2 | 1 | 0 | 1 | 2 | 1 | 0 |"), "counts: {}", summary(&gate));
    assert!(summary(&gate).contains("broken"), "{}", summary(&gate));
    let failure = s.wait_completed(&head, "broken (main)");
    assert_eq!(failure["conclusion"], "failure");
    let text = failure["output"]["text"].as_str().unwrap_or("");
    assert!(text.contains("boom-marker-from-the-build"), "log tail in the failure run: {failure}");
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "success");
    let change = s.wait_completed(&head, "EkaCI: Change Summary");
    assert_eq!(change["conclusion"], "neutral");
    assert!(summary(&change).contains("| broken |"), "{}", summary(&change));
    // The HTTP API serves the same summary the check run shows.
    let (status, _, md) =
        common::http_get(&s.server().http_address(), &format!("/v1/commits/{head}/change-summary.md"));
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8_lossy(&md), summary(&change));
    assert_eq!(
        names(&s.runs(&head)),
        ["EkaCI: Change Summary", "EkaCI: Configure", GATE, "broken (main)"],
        "exactly these check runs, each once"
    );
    let posts = s.fake.calls_to("POST", "/repos/*/check-runs").len();
    assert_eq!(posts, 4, "one POST per check run");
    // Each links to the commit's web UI page (`[web] public_url` defaults to the bound address), which
    // serves that commit.
    let page = format!("http://{}/ui/commits/{head}", s.server().http_address());
    for run in s.runs(&head) {
        assert_eq!(run["details_url"], json!(page), "{run}");
    }
    let (status, _, html) = common::http_get(&s.server().http_address(), &format!("/ui/commits/{head}"));
    // The fixture's repository is public: anyone sees the page, with the run and the failing attribute.
    let html = String::from_utf8_lossy(&html);
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("newly failing") && html.contains(">broken<") && html.contains("#7"), "{html}");
    // The repository's page lists the pull request with its verdict, linking to the head's page.
    let (owner, name) = REPO.split_once('/').expect("owner/name");
    let repo_page = format!("/ui/repos/{owner}/{name}");
    let (status, _, html) = common::http_get(&s.server().http_address(), &repo_page);
    let html = String::from_utf8_lossy(&html);
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&format!("href=\"/ui/commits/{head}\"")), "{html}");
    // An unknown repository is refused to an anonymous reader like a private one (no existence leak).
    let (status, _, _) = common::http_get(&s.server().http_address(), "/ui/repos/octo-org/no-such-repo");
    assert_eq!(status, 401);
    if let Some(driver) = crate::ui::Driver::start() {
        let browser = driver.session(None);
        browser.open(&format!("http://{}{repo_page}", s.server().http_address()));
        assert_eq!(browser.text("h1"), REPO);
        let pulls = browser.texts("#pulls td");
        assert_eq!(pulls.first().map(String::as_str), Some("#7"), "{pulls:?}");
        assert!(pulls.iter().any(|t| t.starts_with("failed")), "{pulls:?}");
        assert_eq!(browser.texts("#branches td.mono"), ["master"]);
        browser.screenshot("repository");
    }

    // A redelivery (same delivery id) and a forged signature change nothing.
    assert_eq!(s.deliver("pull_request", "d-open-1", &body), 200);
    let forged = webhook::sign(b"not-the-secret", &body);
    assert_eq!(s.post("pull_request", "d-open-2", &forged, &body), 401);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.fake.calls_to("POST", "/repos/*/check-runs").len(), 4);
    assert_eq!(s.runs(&head).len(), 4);

    // A re-request re-runs the failed work and PATCHes the same check runs.
    let attempts_before = broken_attempt(&s.home);
    let patches_before = s.fake.calls_to("PATCH", "/repos/*/check-runs/*").len();
    let mut rerequest = fixture("check_run.rerequested.json");
    rerequest["repository"]["full_name"] = json!(REPO);
    rerequest["check_run"]["head_sha"] = json!(head);
    rerequest["installation"] =
        json!({ "id": fake_github::INSTALLATION_ID, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNzc=" });
    let rerequest = serde_json::to_vec(&rerequest).expect("encode");
    assert_eq!(s.deliver("check_run", "d-rerun-1", &rerequest), 202);
    let broken_id = failure["id"].clone();
    wait_for("the failure run patched again", || {
        let patched = s
            .fake
            .calls_to("PATCH", "/repos/*/check-runs/*")
            .into_iter()
            .skip(patches_before)
            .any(|c| c.path.ends_with(&format!("/{broken_id}")) && c.json()["conclusion"] == "failure");
        patched.then_some(())
    });
    wait_for("the gate completed again", || {
        let gate_id = gate["id"].clone();
        s.fake
            .calls_to("PATCH", "/repos/*/check-runs/*")
            .into_iter()
            .skip(patches_before)
            .any(|c| c.path.ends_with(&format!("/{gate_id}")) && c.json()["conclusion"] == "failure")
            .then_some(())
    });
    assert_eq!(s.fake.calls_to("POST", "/repos/*/check-runs").len(), 4, "a re-run creates nothing new");
    let summary_id = change["id"].clone();
    let summary_patched = s
        .fake
        .calls_to("PATCH", "/repos/*/check-runs/*")
        .into_iter()
        .skip(patches_before)
        .any(|c| c.path.ends_with(&format!("/{summary_id}")) && c.json()["conclusion"] == "neutral");
    assert!(summary_patched, "the change summary is updated in place");
    let attempts_after = broken_attempt(&s.home);
    let (_, _, metrics) = common::http_get(&s.server().http_address(), "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("eka_ci_github_runs_total{result=\"failed\"} 2"),
        "two failed attempts: {metrics}"
    );
    assert!(attempts_after > attempts_before, "rebuilt on re-request: {attempts_before} -> {attempts_after}");
}

/// The latest build attempt of the `broken-1` derivation, from `ekaci builds --json`.
fn broken_attempt(home: &Home) -> u64 {
    let builds = home.ekaci(&["builds", "--json"]);
    let builds: Value = serde_json::from_slice(&builds.stdout).expect("builds JSON");
    builds
        .as_array()
        .and_then(|a| a.iter().find(|b| b["drv"].as_str().is_some_and(|d| d.ends_with("-broken-1.drv"))))
        .and_then(|b| b["attempt"].as_u64())
        .expect("broken in ekaci builds")
}

#[test]
fn synchronize_cancels_the_superseded_head_and_closed_cancels_the_pull_request() {
    let f = Fixture::new();
    let (slow, gate_file) = f.slow("slow-1", "");
    let base = f.base.clone();
    let head1 = f.head("slow", &format!("{LIB} {slow}"));
    let head2 = f.head("fast", &format!(r#"{LIB} fast = mk "fast-1" "echo > $out" [];"#));
    let head3 = f.head("slow again", &format!("{LIB} {}", slow.replace("slow-1", "slow-2")));
    let s = Setup::new("");

    s.pr("d-1", "opened", 9, f.path(), &head1, &base, "octocat");
    wait_for("head1's gate in progress", || s.run(&head1, GATE).filter(|r| r["status"] == "in_progress"));
    wait_for("slow building", || {
        let status = s.server().status();
        (status["active_builds"].as_u64() > Some(0)).then_some(())
    });

    s.pr("d-2", "synchronize", 9, f.path(), &head2, &base, "octocat");
    let cancelled = s.wait_completed(&head1, GATE);
    assert_eq!(cancelled["conclusion"], "cancelled", "{cancelled}");
    assert!(summary(&cancelled).contains(&head2[..12]), "names the new head: {cancelled}");
    let gate2 = s.wait_completed(&head2, GATE);
    assert_eq!(gate2["conclusion"], "success", "{gate2}");
    wait_for("the superseded build stopped", || {
        let status = s.server().status();
        (status["active_builds"].as_u64() == Some(0)).then_some(())
    });

    s.pr("d-3", "synchronize", 9, f.path(), &head3, &base, "octocat");
    wait_for("head3's gate in progress", || s.run(&head3, GATE).filter(|r| r["status"] == "in_progress"));
    s.pr("d-4", "closed", 9, f.path(), &head3, &base, "octocat");
    let closed = s.wait_completed(&head3, GATE);
    assert_eq!(closed["conclusion"], "cancelled", "{closed}");
    assert!(summary(&closed).contains("closed"), "{closed}");
    let (_, _, metrics) = common::http_get(&s.server().http_address(), "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("eka_ci_github_runs_total{result=\"cancelled\"} 2"), "{metrics}");
    assert!(metrics.contains("eka_ci_github_runs_total{result=\"passed\"} 1"), "{metrics}");
    // Nothing was created for head2 twice, and head1 kept its single gate.
    assert_eq!(s.runs(&head1).iter().filter(|r| r["name"] == GATE).count(), 1);
    assert_eq!(s.runs(&head2).iter().filter(|r| r["name"] == GATE).count(), 1);
    let _ = std::fs::write(&gate_file, "");
    let _ = std::fs::remove_file(&gate_file);
}

#[test]
fn a_head_shared_by_two_pull_requests_runs_on_until_the_last_one_leaves() {
    let f = Fixture::new();
    let (slow, gate_file) = f.slow("slow-3", "");
    let base = f.base.clone();
    let shared = f.head("shared", &format!("{LIB} {slow}"));
    let moved = f.head("moved on", &format!(r#"{LIB} fast = mk "fast-3" "echo > $out" [];"#));
    let s = Setup::new("");
    let events_drained = || {
        wait_for("the webhook queue drained", || {
            (s.server().status()["queues"]["github_events"] == 0).then_some(())
        })
    };

    // One branch proposed twice (#61 and #62): one run, one set of check runs on the shared head.
    s.pr("d-61", "opened", 61, f.path(), &shared, &base, "octocat");
    s.pr("d-62", "opened", 62, f.path(), &shared, &base, "octocat");
    wait_for("the shared gate in progress", || s.run(&shared, GATE).filter(|r| r["status"] == "in_progress"));
    wait_for("slow building", || (s.server().status()["active_builds"].as_u64() > Some(0)).then_some(()));
    // #61 moves on to another head and #62... is still open: the shared head keeps running.
    s.pr("d-61b", "synchronize", 61, f.path(), &moved, &base, "octocat");
    assert_eq!(s.wait_completed(&moved, GATE)["conclusion"], "success");
    events_drained();
    let gate = s.run(&shared, GATE).expect("shared gate");
    assert_eq!(gate["status"], "in_progress", "#62 still needs it: {gate}");
    assert!(s.server().status()["active_builds"].as_u64() > Some(0), "its build was not cancelled");
    std::fs::write(&gate_file, "").expect("release the slow build");
    let gate = s.wait_completed(&shared, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert_eq!(s.runs(&shared).iter().filter(|r| r["name"] == GATE).count(), 1, "no duplicate for #62");
    let _ = std::fs::remove_file(&gate_file);

    // A third head shared by #63 and #64: closing one keeps it, closing the last cancels it.
    let (slow, gate_file) = f.slow("slow-4", "-2");
    let third = f.head("third", &format!("{LIB} {slow}"));
    s.pr("d-63", "opened", 63, f.path(), &third, &base, "octocat");
    s.pr("d-64", "opened", 64, f.path(), &third, &base, "octocat");
    wait_for("the third gate in progress", || s.run(&third, GATE).filter(|r| r["status"] == "in_progress"));
    s.pr("d-63c", "closed", 63, f.path(), &third, &base, "octocat");
    events_drained();
    assert_eq!(s.run(&third, GATE).expect("gate")["status"], "in_progress", "#64 is still open");
    s.pr("d-64c", "closed", 64, f.path(), &third, &base, "octocat");
    let closed = s.wait_completed(&third, GATE);
    assert_eq!(closed["conclusion"], "cancelled", "{closed}");
    let _ = std::fs::write(&gate_file, "");
    let _ = std::fs::remove_file(&gate_file);
}

#[test]
fn a_crash_right_after_the_202_still_ends_in_the_right_check_runs() {
    let f = Fixture::new();
    let (base, head) = (f.base.clone(), f.head("head", r#"lib = mk "lib-2" "echo lib2 > $out" [];"#));
    let mut s = Setup::new("");
    let body = pull_request("opened", 11, f.path(), &head, &base, false, "octocat");
    assert_eq!(s.deliver("pull_request", "d-crash", &body), 202);
    s.server().signal(Signal::KILL);
    let _ = s.server.take().map(|srv| srv.wait(Duration::from_secs(10)));
    s.restart();
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    s.wait_completed(&head, "EkaCI: Configure");
    s.wait_completed(&head, "EkaCI: Change Summary");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&head)), ["EkaCI: Change Summary", "EkaCI: Configure", GATE], "no duplicates");
    // The redelivery GitHub may send after the outage is a no-op.
    assert_eq!(s.deliver("pull_request", "d-crash", &body), 200);
}

#[test]
fn configuration_errors_are_listed_with_their_field_paths() {
    let repo = GitRepo::new();
    let base = repo.commit("base", &[("README", Some("x"))]);
    let head = repo.commit(
        "bad config",
        &[(
            ".eka-ci/config.json",
            Some(r#"{ "jobs": { "main": { "file": 5 }, "other": { "attr_path": [] } } }"#),
        )],
    );
    let s = Setup::new("");
    s.pr("d-cfg", "opened", 3, repo.path(), &head, &base, "octocat");
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "failure", "{configure}");
    let text = summary(&configure);
    assert!(text.contains(r"**jobs\.main\.file**: expected a string"), "{text}");
    assert!(text.contains(r"**jobs\.other\.file**: missing required field"), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&head)), ["EkaCI: Configure"], "nothing is evaluated");
}

#[test]
fn drafts_wait_for_ready_for_review_and_fork_heads_come_from_refs_pull() {
    let f = Fixture::new();
    let base = f.base.clone();
    // The head exists only as refs/pull/5/head in the base repository, as for a fork's pull request.
    f.repo.git(&["checkout", "-q", "-b", "fork-work"]);
    let head = f.head("fork", &format!(r#"{LIB} new = mk "new-1" "echo > $out" [];"#));
    f.repo.git(&["update-ref", "refs/pull/5/head", &head]);
    f.repo.git(&["checkout", "-q", "main"]);
    f.repo.git(&["branch", "-D", "fork-work"]);
    let s = Setup::new("");
    let mut draft: Value =
        serde_json::from_slice(&pull_request("opened", 5, f.path(), &head, &base, true, "forker"))
            .expect("json");
    draft["pull_request"]["head"]["repo"]["full_name"] = json!("forker/widgets");
    assert_eq!(s.deliver("pull_request", "d-draft", &serde_json::to_vec(&draft).expect("encode")), 202);
    std::thread::sleep(Duration::from_secs(3));
    assert!(s.runs(&head).is_empty(), "a draft is not evaluated: {:?}", s.runs(&head));
    draft["action"] = json!("ready_for_review");
    draft["pull_request"]["draft"] = json!(false);
    assert_eq!(s.deliver("pull_request", "d-ready", &serde_json::to_vec(&draft).expect("encode")), 202);
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert!(summary(&gate).contains("| 1 | 0 | 0 | 1 |"), "{}", summary(&gate));
}

#[test]
fn require_approval_holds_outside_authors_until_a_maintainer_approves() {
    let f = Fixture::new();
    let (base, head) = (f.base.clone(), f.head("head", r#"lib = mk "lib-3" "echo lib3 > $out" [];"#));
    let s = Setup::new("require_approval = true");
    s.fake.set_permission(REPO, "member", "write");

    // An outside author (permission "none") is held.
    s.pr("d-out", "opened", 21, f.path(), &head, &base, "outsider");
    let held = s.wait_completed(&head, "EkaCI: Approval Required");
    assert_eq!(held["conclusion"], "action_required", "{held}");
    assert!(summary(&held).contains(&format!("ekaci approve {REPO}#21")), "{held}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&head)), ["EkaCI: Approval Required"], "nothing evaluated before approval");
    assert_eq!(s.server().status()["queues"]["github_held"], 1, "ekaci status shows the held run");

    let out = s.home.ekaci(&["approve", &format!("{REPO}#21")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    let approved = s.run(&head, "EkaCI: Approval Required").expect("approval run");
    assert_eq!(approved["conclusion"], "success", "{approved}");

    // A member with write access goes straight through.
    let head2 = f.head("member", r#"lib = mk "lib-4" "echo lib4 > $out" [];"#);
    s.pr("d-mem", "opened", 22, f.path(), &head2, &base, "member");
    let gate2 = s.wait_completed(&head2, GATE);
    assert_eq!(gate2["conclusion"], "success");
    assert!(s.run(&head2, "EkaCI: Approval Required").is_none());
}

/// Signs `login` in to the web UI over plain HTTP through the fake GitHub's OAuth pages (a browser would
/// follow the same redirects); returns the `Cookie` header of the session.
fn web_sign_in(s: &Setup, login: &str, id: u64) -> String {
    let addr = s.server().http_address();
    s.fake.set_oauth_user(login, id);
    let (code, head, _) = http_request(&addr, "GET", "/ui/login", &[], b"");
    assert_eq!(code, 302, "{head}");
    let header = |head: &str, name: &str| -> String {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    };
    let state = header(&head, "set-cookie").split(';').next().expect("cookie").to_string();
    let authorize = header(&head, "location");
    let fake_addr = s.fake.url().trim_start_matches("http://").to_string();
    let path = authorize.strip_prefix(&s.fake.url()).expect("GitHub's authorize page").to_string();
    let (code, head, _) = http_request(&fake_addr, "GET", &path, &[], b"");
    assert_eq!(code, 302, "{head}");
    let back = header(&head, "location");
    let query = back.split_once('?').expect("code and state").1;
    let (code, head, body) =
        http_request(&addr, "GET", &format!("/github/auth/callback?{query}"), &[("Cookie", &state)], b"");
    assert_eq!(code, 303, "{head}{}", String::from_utf8_lossy(&body));
    let session = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim())
        .find(|v| v.starts_with("ekaci_session="))
        .expect("session cookie");
    session.split(';').next().expect("cookie").to_string()
}

#[test]
fn an_administrator_approves_a_held_pull_request_from_the_web_ui() {
    let f = Fixture::new();
    let (base, head) = (f.base.clone(), f.head("head", r#"lib = mk "lib-5" "echo lib5 > $out" [];"#));
    let s = Setup::with_web(
        "require_approval = true\n\n[oauth]\nclient_id = \"web-ui\"\nclient_secret = \"web-ui-secret\"\n\
         redirect_url = \"http://127.0.0.1:9/github/auth/callback\"",
        "admins = [\"alice\"]",
        "",
    );
    s.fake.set_oauth_app("web-ui", "web-ui-secret");
    s.pr("d-held", "opened", 31, f.path(), &head, &base, "outsider");
    let held = s.wait_completed(&head, "EkaCI: Approval Required");
    assert_eq!(held["conclusion"], "action_required", "{held}");
    let addr = s.server().http_address();
    let page = format!("/ui/commits/{head}");

    // Bob, signed in but no administrator, sees no Approve button and cannot approve.
    let bob = web_sign_in(&s, "bob", 2);
    let (code, _, html) = http_request(&addr, "GET", &page, &[("Cookie", &bob)], b"");
    let html = String::from_utf8_lossy(&html).to_string();
    assert_eq!(code, 200, "{html}");
    assert!(html.contains("awaiting-approval") && !html.contains("Approve</button>"), "{html}");
    let csrf_of = |html: &str| {
        let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + "name=\"csrf\" value=\"".len();
        html[at..].split('"').next().expect("csrf").to_string()
    };
    let form = format!("csrf={}&repo={REPO}&number=31&sha={head}", csrf_of(&html));
    let ctype = ("Content-Type", "application/x-www-form-urlencoded");
    let (code, _, _) =
        http_request(&addr, "POST", "/ui/approve", &[("Cookie", &bob), ctype], form.as_bytes());
    assert_eq!(code, 403);

    // Alice is: without the CSRF token she is refused, with it the run goes ahead.
    let alice = web_sign_in(&s, "alice", 1);
    let (code, _, html) = http_request(&addr, "GET", &page, &[("Cookie", &alice)], b"");
    let html = String::from_utf8_lossy(&html).to_string();
    assert_eq!(code, 200, "{html}");
    assert!(html.contains("Approve</button>"), "{html}");
    let no_csrf = format!("repo={REPO}&number=31&sha={head}");
    let (code, _, _) =
        http_request(&addr, "POST", "/ui/approve", &[("Cookie", &alice), ctype], no_csrf.as_bytes());
    assert_eq!(code, 403);
    assert_eq!(names(&s.runs(&head)), ["EkaCI: Approval Required"], "nothing ran before the approval");
    let form = format!("csrf={}&repo={REPO}&number=31&sha={head}", csrf_of(&html));
    let (code, head_text, _) =
        http_request(&addr, "POST", "/ui/approve", &[("Cookie", &alice), ctype], form.as_bytes());
    assert_eq!(code, 303, "{head_text}");
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert!(!s.server().log().contains("web-ui-secret"), "the client secret reached the log");
}

/// Every `href="{prefix}…"` of `html`, unescaped (`&amp;` back to `&`).
fn hrefs(html: &str, prefix: &str) -> Vec<String> {
    let needle = format!("href=\"{prefix}");
    let mut out: Vec<String> = html
        .match_indices(&needle)
        .filter_map(|(at, _)| html[at + 6..].split('"').next())
        .map(|h| h.replace("&amp;", "&"))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn a_signed_in_reader_of_a_private_repository_sees_its_derivations_and_logs() {
    let f = Fixture::new();
    let base = f.base.clone();
    let head = f.head("head", &format!("{LIB} app = mk \"app-41\" \"echo app41 > $out\" [lib];"));
    let s = Setup::with_web(
        "[oauth]\nclient_id = \"web-ui\"\nclient_secret = \"web-ui-secret\"\n\
         redirect_url = \"http://127.0.0.1:9/github/auth/callback\"",
        "admins = [\"alice\"]",
        "",
    );
    s.fake.set_oauth_app("web-ui", "web-ui-secret");
    s.fake.grant_read(REPO, "carol");
    let mut body: Value =
        serde_json::from_slice(&pull_request("opened", 41, f.path(), &head, &base, false, "octocat"))
            .expect("json");
    body["repository"]["private"] = json!(true);
    assert_eq!(s.deliver("pull_request", "d-private", &serde_json::to_vec(&body).expect("encode")), 202);
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");
    let addr = s.server().http_address();
    let get = |path: &str, cookie: Option<&str>| {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        let (code, _, html) = http_request(&addr, "GET", path, &headers, b"");
        (code, String::from_utf8_lossy(&html).to_string())
    };

    // Carol, no administrator, can read the repository on GitHub: its commit, jobset, derivation and
    // log pages are hers to see.
    let carol = web_sign_in(&s, "carol", 3);
    let (code, html) = get(&format!("/ui/commits/{head}"), Some(&carol));
    assert_eq!(code, 200, "{html}");
    let jobset = hrefs(&html, "/ui/jobsets/").into_iter().next().expect("a jobset link");
    let (code, html) = get(&jobset, Some(&carol));
    assert_eq!(code, 200, "{html}");
    let drvs = hrefs(&html, "/ui/drvs/");
    assert_eq!(drvs.len(), 2, "app and lib: {html}");
    let mut logs = Vec::new();
    for drv in &drvs {
        let (code, html) = get(drv, Some(&carol));
        assert_eq!(code, 200, "{drv}: {html}");
        logs.extend(hrefs(&html, "/ui/logs/"));
    }
    assert!(!logs.is_empty(), "app was built: its page links its log");
    for log in &logs {
        let (code, html) = get(log, Some(&carol));
        assert_eq!(code, 200, "{log}: {html}");
    }

    // Dave, signed in too, cannot read it on GitHub; an anonymous browser is refused as well.
    let dave = web_sign_in(&s, "dave", 4);
    for page in drvs.iter().chain(&logs) {
        assert_eq!(get(page, Some(&dave)).0, 403, "{page}");
        assert_ne!(get(page, None).0, 200, "{page}");
    }
}

#[test]
fn a_held_head_goes_ahead_once_a_trusted_author_proposes_the_same_commit() {
    let f = Fixture::new();
    let (base, head) = (f.base.clone(), f.head("head", r#"lib = mk "lib-7" "echo lib7 > $out" [];"#));
    let s = Setup::new("require_approval = true");
    s.fake.set_permission(REPO, "member", "write");
    s.pr("d-71", "opened", 71, f.path(), &head, &base, "outsider");
    let held = s.wait_completed(&head, "EkaCI: Approval Required");
    assert_eq!(held["conclusion"], "action_required", "{held}");
    // A maintainer opens a pull request of the same commit: it is theirs to run, so the hold is lifted.
    s.pr("d-72", "opened", 72, f.path(), &head, &base, "member");
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");
    let lifted = s.run(&head, "EkaCI: Approval Required").expect("approval check");
    assert_eq!(lifted["conclusion"], "success", "{lifted}");
    assert_eq!(lifted["id"], held["id"], "the same check run, patched");
    assert!(summary(&lifted).contains("No approval is needed any more"), "{lifted}");
    let approved = s.home.ekaci(&["approved-users", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&approved.stdout).contains("outsider"), "nobody was approved");
}

#[test]
fn merge_queue_require_approval_holds_entries_of_outside_authors_until_approved() {
    let f = Fixture::new();
    let base = f.base.clone();
    let outside = f.head("outside", &format!(r#"{LIB} o = mk "o-1" "echo > $out" [];"#));
    let inside = f.head("inside", &format!(r#"{LIB} m = mk "m-1" "echo > $out" [];"#));
    let s = Setup::new("merge_queue_require_approval = true");
    s.fake.set_permission(REPO, "member", "write");
    s.fake.set_pull_request(REPO, 104, json!({ "user": { "login": "outsider" } }));
    s.fake.set_pull_request(REPO, 105, json!({ "user": { "login": "member" } }));
    let queue = |number: u64, head: &str, delivery: &str| {
        let mut mg = fixture("merge_group.checks_requested.json");
        mg["repository"]["full_name"] = json!(REPO);
        mg["repository"]["clone_url"] = json!(format!("file://{}", f.path().display()));
        mg["merge_group"]["head_sha"] = json!(head);
        mg["merge_group"]["base_sha"] = json!(base);
        mg["merge_group"]["head_ref"] =
            json!(format!("refs/heads/gh-readonly-queue/main/pr-{number}-{head}"));
        mg["installation"]["id"] = json!(fake_github::INSTALLATION_ID);
        assert_eq!(s.deliver("merge_group", delivery, &serde_json::to_vec(&mg).expect("encode")), 202);
    };

    // The entry for #104, by an author without write access, waits.
    queue(104, &outside, "d-mq-104");
    let held = s.wait_completed(&outside, "EkaCI: Approval Required");
    assert_eq!(held["conclusion"], "action_required", "{held}");
    assert!(summary(&held).contains("merge queue entry (pull request #104 by outsider)"), "{held}");
    assert!(summary(&held).contains(&format!("ekaci approve {REPO}#104")), "{held}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&outside)), ["EkaCI: Approval Required"], "nothing evaluated before approval");
    assert_eq!(s.server().status()["queues"]["github_held"], 1);

    // The entry for #105, by a member, goes straight through.
    queue(105, &inside, "d-mq-105");
    assert_eq!(s.wait_completed(&inside, GATE)["conclusion"], "success");
    assert!(s.run(&inside, "EkaCI: Approval Required").is_none());

    let out = s.home.ekaci(&["approve", &format!("{REPO}#104")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.wait_completed(&outside, GATE)["conclusion"], "success");
    let approved = s.run(&outside, "EkaCI: Approval Required").expect("approval check");
    assert_eq!(approved["conclusion"], "success", "the same check run, now approved: {approved}");
    let pulls = s.fake.calls_to("GET", "/repos/octo-org/widgets/pulls/104");
    assert_eq!(pulls.len(), 1, "the queued pull request's author is looked up once");
}

#[test]
fn merge_groups_are_checked_and_installations_are_recorded_without_a_restart() {
    let f = Fixture::new();
    let q = r#"q = mk "q-1" "exit 1" []; r = mk "r-1" "exit 1" [];"#;
    let (base, merge) = (f.base.clone(), f.head("merge", &format!("{LIB} {q}")));
    let mut s = Setup::with_github("", "max_failure_check_runs = 1");

    let mut mg = fixture("merge_group.checks_requested.json");
    mg["repository"]["full_name"] = json!(REPO);
    mg["repository"]["clone_url"] = json!(format!("file://{}", f.path().display()));
    mg["merge_group"]["head_sha"] = json!(merge);
    mg["merge_group"]["base_sha"] = json!(base);
    mg["installation"]["id"] = json!(fake_github::INSTALLATION_ID);
    assert_eq!(s.deliver("merge_group", "d-mg", &serde_json::to_vec(&mg).expect("encode")), 202);
    let gate = s.wait_completed(&merge, GATE);
    assert_eq!(gate["conclusion"], "failure", "the queued merge breaks q: {gate}");
    assert_eq!(s.wait_completed(&merge, "q (main)")["conclusion"], "failure");
    assert!(s.run(&merge, "r (main)").is_none(), "max_failure_check_runs = 1");
    assert!(summary(&gate).contains("1 failing attribute(s) have no check run of their own"), "{gate}");
    assert!(summary(&gate).contains("`r`"), "the gate still names r: {gate}");

    let mut created = fixture("installation.created.json");
    created["installation"]["id"] = json!(9001);
    created["repositories"] = json!([{ "id": 1, "node_id": "R_one", "name": "one", "full_name": "acme/one", "private": true },
                                      { "id": 2, "node_id": "R_two", "name": "two", "full_name": "acme/two", "private": false }]);
    assert_eq!(s.deliver("installation", "d-inst", &serde_json::to_vec(&created).expect("encode")), 202);
    let mut changed = fixture("installation_repositories.added.json");
    changed["installation"]["id"] = json!(9001);
    changed["repositories_added"] = json!([{ "id": 3, "node_id": "R_three", "name": "three", "full_name": "acme/three", "private": true }]);
    changed["repositories_removed"] =
        json!([{ "id": 1, "node_id": "R_one", "name": "one", "full_name": "acme/one", "private": true }]);
    assert_eq!(
        s.deliver(
            "installation_repositories",
            "d-inst-repos",
            &serde_json::to_vec(&changed).expect("encode")
        ),
        202
    );
    wait_for("both installation events handled", || {
        (s.server().status()["queues"]["github_events"] == 0).then_some(())
    });

    // Stop cleanly and read what was recorded.
    let server = s.server.take().expect("server");
    server.signal(Signal::TERM);
    let (status, _) = server.wait(Duration::from_secs(60));
    assert!(status.success());
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open store");
    use eka_ci::forge::github::runs::installation_for;
    assert_eq!(installation_for(&store, "acme/one").expect("read"), None, "removed");
    assert_eq!(installation_for(&store, "ACME/Two").expect("read").map(|e| e.installation), Some(9001));
    assert_eq!(installation_for(&store, "acme/three").expect("read").map(|e| e.installation), Some(9001));
}

#[test]
fn a_private_repository_is_fetched_over_https_with_the_installation_token_which_never_leaks() {
    let f = Fixture::new();
    let base = f.base.clone();
    let head = f.head("head", &format!("{LIB} app = mk \"app-1\" \"echo app > $out\" [lib];"));
    let other = f.head("other", &format!("{LIB} app = mk \"app-2\" \"echo app2 > $out\" [lib];"));
    let mut s = Setup::new("");
    // GitHub's git host for a private repository: HTTPS, and nothing without an installation token.
    let host = s.fake.git_host(&[(REPO, f.path())]);
    let cfg = std::fs::read_to_string(s.home.config_file()).expect("config");
    std::fs::write(s.home.config_file(), cfg.replace("[github]\n", "[github]\ngit_host = \"127.0.0.1\"\n"))
        .expect("config");
    let server = s.server.take().expect("server");
    server.signal(Signal::TERM);
    server.wait(Duration::from_secs(60));
    s.server = Some(s.home.start_with(&[("GIT_SSL_CAINFO", host.ca_file().as_os_str())]));

    let deliver = |number: u64, sha: &str, url: &str, delivery: &str| {
        let mut body: Value =
            serde_json::from_slice(&pull_request("opened", number, f.path(), sha, &base, false, "octocat"))
                .expect("json");
        body["repository"]["clone_url"] = json!(url);
        body["repository"]["private"] = json!(true);
        assert_eq!(s.deliver("pull_request", delivery, &serde_json::to_vec(&body).expect("encode")), 202);
    };
    deliver(4, &head, &host.clone_url(REPO), "d-https");
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "success", "{configure}");
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    // One attribute added and built, one unchanged: the private repository's commits were evaluated.
    assert!(summary(&gate).contains("| 1 | 0 | 0 | 1 | 1 | 0 | 0 |"), "{gate}");
    let tokens = s.fake.issued_tokens();
    let fetches = host.requests();
    assert!(fetches.iter().any(|r| r.target.contains("git-upload-pack")), "fetched over HTTPS: {fetches:?}");
    for r in &fetches {
        assert_eq!(r.status, 200, "{r:?}");
        let token = r.credentials.as_deref().and_then(|c| c.strip_prefix("x-access-token:"));
        assert!(token.is_some_and(|t| tokens.iter().any(|i| i == t)), "an issued token was sent: {r:?}");
    }

    // The same server under another host name is not the configured GitHub host: no token goes there,
    // so the private repository answers 401 and the check says which URL failed.
    let before = host.requests().len();
    deliver(5, &other, &host.clone_url_as_localhost(REPO), "d-elsewhere");
    let configure = s.wait_completed(&other, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "failure", "{configure}");
    assert!(summary(&configure).contains("localhost"), "names what failed: {configure}");
    let elsewhere = &host.requests()[before..];
    assert!(!elsewhere.is_empty(), "git asked the other host");
    assert!(elsewhere.iter().all(|r| r.credentials.is_none() && r.status == 401), "{elsewhere:?}");

    let server = s.server.take().expect("server");
    server.signal(Signal::TERM);
    let (_, stderr) = server.wait(Duration::from_secs(60));
    let mut haystacks = vec![stderr, serde_json::to_string(&s.fake.check_runs(REPO)).expect("encode")];
    let mut configs = 0;
    for entry in walk(&s.home.path().join("data")) {
        if entry.file_name().is_some_and(|n| n == "config") {
            configs += 1;
            haystacks.push(std::fs::read_to_string(&entry).unwrap_or_default());
        }
    }
    assert!(configs > 0, "the clone's .git/config was inspected");
    assert!(!tokens.is_empty());
    for token in &tokens {
        for h in &haystacks {
            assert!(!h.contains(token.as_str()), "the token leaked into: {h}");
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn github_failures_are_retried_later_without_duplicating_check_runs() {
    let f = Fixture::new();
    let (base, head) = (f.base.clone(), f.head("head", r#"lib = mk "lib-5" "echo lib5 > $out" [];"#));
    let s = Setup::new("");
    // More 502s than the client's own retries (4 attempts): the run itself must come back later.
    s.fake.inject("PATCH", "/repos/*/check-runs/*", 4, fake_github::Reply::error(502, "Server Error"));
    s.pr("d-502", "opened", 31, f.path(), &head, &base, "octocat");
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    let failed = s.fake.calls().iter().filter(|c| c.status == 502).count();
    assert_eq!(failed, 4, "the injected failures were met");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&head)), ["EkaCI: Change Summary", "EkaCI: Configure", GATE], "no duplicates");
}

#[test]
fn a_stale_pull_request_event_never_supersedes_the_newest_head() {
    let f = Fixture::new();
    let (slow, gate_file) = f.slow("slow-stale", "-stale");
    let base = f.base.clone();
    let head1 = f.head("first", &format!(r#"{LIB} fast = mk "fast-stale" "echo > $out" [];"#));
    let head2 = f.head("second", &format!("{LIB} {slow}"));
    let mut s = Setup::new("");
    let event = |action: &str, head: &str, updated_at: &str| {
        let mut body: Value =
            serde_json::from_slice(&pull_request(action, 12, f.path(), head, &base, false, "octocat"))
                .expect("payload");
        body["pull_request"]["updated_at"] = json!(updated_at);
        serde_json::to_vec(&body).expect("encode")
    };

    assert_eq!(s.deliver("pull_request", "st-1", &event("opened", &head1, "2030-01-01T00:00:10Z")), 202);
    assert_eq!(s.wait_completed(&head1, GATE)["conclusion"], "success");
    assert_eq!(s.deliver("pull_request", "st-2", &event("synchronize", &head2, "2030-01-01T00:00:30Z")), 202);
    wait_for("head2's gate in progress", || s.run(&head2, GATE).filter(|r| r["status"] == "in_progress"));

    // The first head's event again (a replay under a new delivery id), and a late one older than head2.
    assert_eq!(s.deliver("pull_request", "st-3", &event("opened", &head1, "2030-01-01T00:00:10Z")), 200);
    assert_eq!(s.deliver("pull_request", "st-4", &event("synchronize", &head1, "2030-01-01T00:00:20Z")), 200);
    let _ = std::fs::write(&gate_file, "");
    let gate2 = s.wait_completed(&head2, GATE);
    assert_eq!(gate2["conclusion"], "success", "the newest head was not superseded: {gate2}");
    assert_eq!(s.runs(&head1).iter().filter(|r| r["name"] == GATE).count(), 1, "head1 was not run again");
    let _ = std::fs::remove_file(&gate_file);
    let store_path = s.home.db();
    s.stop();
    let store = eka_ci::store::Store::open(&store_path).expect("reopen");
    for id in ["st-3", "st-4"] {
        let d = webhook::delivery(&store, id).expect("read").expect("recorded");
        assert_eq!(d.outcome, webhook::DeliveryOutcome::Stale, "{id}");
    }
}

#[test]
fn a_payload_octocrab_rejects_still_runs_when_the_needed_fields_are_there() {
    let f = Fixture::new();
    let head = f.head("odd payload", &format!(r#"{LIB} fast = mk "fast-odd" "echo > $out" [];"#));
    let s = Setup::new("");
    let mut body: Value =
        serde_json::from_slice(&pull_request("opened", 13, f.path(), &head, &f.base, false, "octocat"))
            .expect("payload");
    // A field we do not read, with a type octocrab's model does not accept.
    body["sender"] = json!(["not", "a", "user"]);
    let body = serde_json::to_vec(&body).expect("encode");
    assert!(webhook::check_model(webhook::UsedEvent::PullRequest, &body).is_err(), "octocrab must reject it");
    assert_eq!(s.deliver("pull_request", "odd-1", &body), 202);
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");
    let (_, _, metrics) = common::http_get(&s.server().http_address(), "/metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("eka_ci_github_events_lenient_total{event=\"pull_request\"} 1"), "{metrics}");
}
