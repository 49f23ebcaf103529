//! Repository checks end to end (docs/checks.md): `ekaci review` on a real git repository, the real
//! server, real Nix building the shell, and real bubblewrap. The checks try what a hostile pull request
//! would: reading the server's state, secrets and other repositories, writing outside the working copy,
//! reaching a loopback listener, running forever, leaving a process behind; the limits; the check runs of
//! a pull request (created once, cancelled with it, finished after a crash, a finished check not run again
//! after a restart, a `ro_bind` the server does not allow failing Configure); a fork bomb against the
//! process limit (the sandbox runs as an unprivileged user); stored results and their retention; flake
//! shells; and the scheduler's check slots.

use crate::common;

use std::io::ErrorKind;
use std::net::TcpListener;

use common::{nonce, GitRepo, Home};
use serde_json::Value;

const DEFAULT_NIX: &str = r#"{ ok = derivation { name = "ok"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ]; }; }"#;

/// `shell.nix` with `dev`: a shell whose input `tools` provides `greet`, and whose hook sets FROM_HOOK.
fn shell_nix(n: &str) -> String {
    format!(
        r#"let
  tools = derivation {{
    name = "tools-{n}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "/bin/mkdir -p $out/bin && echo '#!/bin/sh' > $out/bin/greet && echo 'echo hello from the shell' >> $out/bin/greet && /bin/chmod +x $out/bin/greet" ];
  }};
in {{
  dev = derivation {{
    name = "dev-{n}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo dev > $out" ];
    inherit tools;
    shellHook = "export FROM_HOOK=yes";
  }};
}}
"#
    )
}

fn check(command: &str, network: bool, ro_bind: &[String]) -> Value {
    serde_json::json!({ "shell": "dev", "command": command, "allow_network": network, "ro_bind": ro_bind })
}

/// A repository whose head commit adds `checks` (base has the job only), reviewed on a server with
/// `[checks] extra`; returns the review's JSON.
fn review_checks(home: &Home, repo: &GitRepo, checks: Value) -> (std::process::Output, Value) {
    let n = nonce();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(common::FILE_JOB)), ("default.nix", Some(DEFAULT_NIX))],
    );
    let config = serde_json::json!({ "jobs": { "main": { "file": "default.nix" } }, "checks": checks });
    let head = repo.commit(
        "head",
        &[(".eka-ci/config.json", Some(&config.to_string())), ("shell.nix", Some(&shell_nix(&n)))],
    );
    let out = home.review(repo, &base, &head);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

/// A base commit with a job, `shell.nix` (`dev`) and `checks` (the gating configuration of a pull
/// request), and a head commit that changes only a README; returns (base, head).
fn pr_commits(repo: &GitRepo, n: &str, checks: &Value) -> (String, String) {
    let config = serde_json::json!({ "jobs": { "main": { "file": "default.nix" } }, "checks": checks });
    let base = repo.commit(
        "base",
        &[
            (".eka-ci/config.json", Some(&config.to_string())),
            ("default.nix", Some(DEFAULT_NIX)),
            ("shell.nix", Some(&shell_nix(n))),
        ],
    );
    let head = repo.commit("head", &[("README.md", Some("changed"))]);
    (base, head)
}

fn check_report<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

fn ending(c: &Value) -> &Value {
    &c["outcome"]["Ran"]["ending"]
}

fn output(c: &Value) -> String {
    let file = c["output_file"].as_str().expect("output file");
    std::fs::read_to_string(file).expect("read the check's output")
}

/// Processes on the host whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(text);
            }
        }
    }
    found
}

#[test]
fn checks_pass_fail_and_cannot_escape_their_sandbox() {
    let home = Home::new();
    home.write_config("[checks]\ntimeout_seconds = 2");
    let other = GitRepo::new();
    other.commit("other", &[("secret.txt", Some("other repository"))]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let marker = format!("987.{}", std::process::id());
    let state_dir = home.db().parent().expect("data dir").to_path_buf();
    let probes = [
        state_dir.display().to_string(),
        "/etc/shadow".to_string(),
        home.path().display().to_string(),
        "/root".to_string(),
        other.path().display().to_string(),
    ];
    let probe = probes
        .iter()
        .map(|p| format!("if [ -e '{p}' ]; then echo 'visible: {p}'; else echo 'absent: {p}'; fi"))
        .collect::<Vec<_>>()
        .join("; ");
    let n = nonce();
    let writes = format!(
        "for p in /nix/store/evil-{n} /evil-{n} ../evil-{n} /usr/evil-{n}; do if echo x > $p 2>/dev/null; then echo \"wrote $p\"; else echo \"refused $p\"; fi; done; echo mine > mine.txt && echo 'wrote my copy'"
    );
    let checks = serde_json::json!({
        "pass": check("greet && test \"$FROM_HOOK\" = yes && echo changed > inside.txt && echo done", false, &[]),
        "fail": check("echo line-one; echo 'the error is here' >&2; exit 3", false, &[]),
        "isolation": check(&format!("{probe}; if [ -e inside.txt ]; then echo 'not a fresh copy'; fi"), false, &[]),
        "writes": check(&writes, false, &[]),
        "network": check(&format!("/bin/bash -c 'echo ping > /dev/tcp/127.0.0.1/{port}'"), false, &[]),
        "forever": check("echo looping; /bin/sleep 1000", false, &[]),
        "leftover": check(&format!("/bin/sleep {marker} & echo started"), false, &[]),
    });
    let _server = home.start();
    let repo = GitRepo::new();
    let (out, report) = review_checks(&home, &repo, checks);
    assert_eq!(
        out.status.code(),
        Some(1),
        "failing checks fail the review: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["failed"], true);

    let pass = check_report(&report, "pass");
    assert_eq!(ending(pass), &serde_json::json!({ "Exited": 0 }), "{pass}");
    assert!(
        pass["tail"].as_str().is_some_and(|t| t.contains("hello from the shell") && t.contains("done")),
        "{pass}"
    );

    let fail = check_report(&report, "fail");
    assert_eq!(ending(fail), &serde_json::json!({ "Exited": 3 }), "{fail}");
    assert!(
        fail["tail"].as_str().is_some_and(|t| t.contains("line-one") && t.contains("the error is here")),
        "{fail}"
    );
    assert!(output(fail).contains("the error is here"), "the whole output is kept");

    let isolation = check_report(&report, "isolation");
    assert_eq!(ending(isolation), &serde_json::json!({ "Exited": 0 }), "{isolation}");
    let seen = output(isolation);
    for p in &probes {
        assert!(seen.contains(&format!("absent: {p}")), "{p} must be absent: {seen}");
    }
    assert!(!seen.contains("visible") && !seen.contains("not a fresh copy"), "{seen}");

    let writes_out = output(check_report(&report, "writes"));
    for p in ["/nix/store/evil", "/evil", "../evil", "/usr/evil"] {
        assert!(writes_out.contains(&format!("refused {p}-{n}")), "{p}: {writes_out}");
    }
    assert!(writes_out.contains("wrote my copy"), "{writes_out}");
    for p in [format!("/nix/store/evil-{n}"), format!("/evil-{n}"), format!("/usr/evil-{n}")] {
        assert!(!std::path::Path::new(&p).exists(), "{p} was written on the host");
    }
    assert!(!repo.path().join("inside.txt").exists() && !repo.path().join("mine.txt").exists());

    let network = check_report(&report, "network");
    assert_ne!(
        ending(network),
        &serde_json::json!({ "Exited": 0 }),
        "no network without allow_network: {network}"
    );
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener was contacted: {other:?}"),
    }

    let forever = check_report(&report, "forever");
    assert_eq!(ending(forever), &serde_json::json!({ "TimedOut": { "seconds": 2 } }), "{forever}");
    assert!(forever["tail"].as_str().is_some_and(|t| t.contains("looping")), "{forever}");
    assert!(
        processes_with("sleep 1000").iter().all(|p| !p.starts_with("/bin/sleep 1000")),
        "the timed-out sandbox is gone"
    );

    let leftover = check_report(&report, "leftover");
    assert_eq!(ending(leftover), &serde_json::json!({ "Exited": 0 }), "{leftover}");
    let ms = leftover["outcome"]["Ran"]["duration_ms"].as_u64().expect("duration");
    assert!(ms < 2000, "the check ended with its command, not at the timeout: {ms} ms");
    assert!(
        processes_with(&marker).is_empty(),
        "a process outlived its sandbox: {:?}",
        processes_with(&marker)
    );

    // The results are stored: `ekaci checks` and `/v1` serve them, after a restart too.
    let head = report["head_commit"].as_str().expect("head commit").to_string();
    drop(_server);
    let server = home.start();
    let listed = home.ekaci(&["checks", "--commit", &head, "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("checks JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(7), "{listed}");
    let whole = home.ekaci(&["checks", "--commit", &head, "--output", "fail"]);
    assert_eq!(String::from_utf8_lossy(&whole.stdout), "line-one\nthe error is here\n");
    let addr = server.http_address();
    let path = format!("/v1/commits/{head}/checks");
    assert_eq!(common::http_get(&addr, &path).0, 401, "a local repository's results need a token");
    let token = home.token("reader", "read");
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let (status, body) = {
        let (s, _, b) = common::http_request(&addr, "GET", &path, &headers, b"");
        (s, serde_json::from_slice::<Value>(&b).expect("JSON"))
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"].as_array().map(Vec::len), Some(7), "{body}");
    let (status, _, bytes) =
        common::http_request(&addr, "GET", &format!("{path}/fail/output"), &headers, b"");
    assert_eq!(
        (status, String::from_utf8_lossy(&bytes).into_owned()),
        (200, "line-one\nthe error is here\n".to_string())
    );

    let text = home.review_command(&repo, "HEAD~1", "HEAD", &[]).output().expect("review");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("FAIL fail: exited with status 3") && text.contains("| the error is here"),
        "{text}"
    );
}

#[test]
fn allow_network_reaches_the_listener_allowed_ro_binds_are_visible_and_memory_and_output_are_bounded() {
    let allowed = tempfile::tempdir().expect("tmp");
    // Readable by the unprivileged user checks run as (docs/checks.md).
    std::fs::set_permissions(allowed.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::write(allowed.path().join("ca.pem"), "certificate\n").expect("write");
    let allowed_path = allowed.path().display().to_string();
    let home = Home::new();
    home.write_config(&format!(
        "[checks]\ntimeout_seconds = 3\nmax_output_bytes = 4096\nmemory_max_bytes = 67108864\nallowed_ro_binds = [\"{allowed_path}\"]"
    ));
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let checks = serde_json::json!({
        "net": check(&format!("/bin/bash -c 'echo ping > /dev/tcp/127.0.0.1/{port}'"), true, &[]),
        "hungry": check("/bin/bash -c 'x=$(/usr/bin/head -c 100000000 /dev/zero | /usr/bin/tr \"\\0\" a); echo ${#x}'", false, &[]),
        "loud": check("i=0; while [ $i -lt 2000 ]; do echo 0123456789; i=$((i+1)); done; echo not-reached", false, &[]),
        "bind": check(&format!("read line < {allowed_path}/ca.pem && echo \"$line\"; echo x > {allowed_path}/w || echo read-only"), false, std::slice::from_ref(&allowed_path)),
    });
    let _server = home.start();
    let repo = GitRepo::new();
    let (out, report) = review_checks(&home, &repo, checks);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let hungry = check_report(&report, "hungry");
    assert_ne!(ending(hungry), &serde_json::json!({ "Exited": 0 }), "{hungry}");
    assert!(hungry["tail"].as_str().is_some_and(|t| t.contains("cannot allocate")), "{hungry}");
    let loud = check_report(&report, "loud");
    assert_eq!(ending(loud), &serde_json::json!({ "OutputLimit": { "bytes": 4096 } }), "{loud}");
    assert_eq!(std::fs::metadata(loud["output_file"].as_str().expect("file")).expect("output").len(), 4096);
    assert_eq!(ending(check_report(&report, "net")), &serde_json::json!({ "Exited": 0 }));
    assert_eq!(ending(check_report(&report, "bind")), &serde_json::json!({ "Exited": 0 }));
    let (mut conn, _) = listener.accept().expect("the check connected");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got).expect("read");
    assert_eq!(got, "ping\n");
    let bind = check_report(&report, "bind");
    assert!(
        bind["tail"].as_str().is_some_and(|t| t.contains("certificate") && t.contains("read-only")),
        "{bind}"
    );
    assert!(!allowed.path().join("w").exists());
}

#[test]
fn a_ro_bind_the_server_does_not_allow_is_a_configuration_error() {
    let home = Home::new();
    let _server = home.start();
    let repo = GitRepo::new();
    let checks = serde_json::json!({ "certs": check("true", false, &["/etc".to_string()]) });
    let (out, _) = review_checks(&home, &repo, checks);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("checks.certs.ro_bind[0]") && stderr.contains("allowed_ro_binds"), "{stderr}");
}

#[test]
fn a_pull_requests_checks_are_check_runs_queued_then_in_progress_then_completed_once() {
    use crate::github_app::{pull_request, summary, Setup, GATE};
    let repo = GitRepo::new();
    let n = nonce();
    let checks = serde_json::json!({
        "ok": check("greet", false, &[]),
        "bad": check("echo 'bad-marker' >&2; exit 4", false, &[]),
    });
    let (base, head) = pr_commits(&repo, &n, &checks);
    let s = Setup::new("[checks]\ntimeout_seconds = 3");
    let body = pull_request("opened", 3, repo.path(), &head, &base, false, "octocat");
    assert_eq!(s.deliver("pull_request", "d-checks-1", &body), 202);

    let ok = s.wait_completed(&head, "EkaCI: Check (ok)");
    assert_eq!(ok["conclusion"], "success", "{ok}");
    assert!(ok["output"]["text"].as_str().is_some_and(|t| t.contains("hello from the shell")), "{ok}");
    let bad = s.wait_completed(&head, "EkaCI: Check (bad)");
    assert_eq!(bad["conclusion"], "failure", "{bad}");
    assert!(bad["output"]["title"].as_str().is_some_and(|t| t.contains("status 4")), "{bad}");
    assert!(bad["output"]["text"].as_str().is_some_and(|t| t.contains("bad-marker")), "{bad}");
    assert!(summary(&bad).contains("exited with status 4 after"), "{}", summary(&bad));

    // Each check run was created once, queued, then patched in progress and completed.
    for run in [&ok, &bad] {
        let name = run["name"].as_str().expect("name");
        let posts: Vec<_> = s
            .fake
            .calls_to("POST", "/repos/*/check-runs")
            .into_iter()
            .filter(|c| c.json()["name"] == name)
            .collect();
        assert_eq!(posts.len(), 1, "{name} created once");
        assert_eq!(posts[0].json()["status"], "queued", "{name}");
        let id = run["id"].clone();
        let patches: Vec<Value> = s
            .fake
            .calls_to("PATCH", "/repos/*/check-runs/*")
            .into_iter()
            .filter(|c| c.path.ends_with(&format!("/{id}")))
            .map(|c| c.json())
            .collect();
        let statuses: Vec<&str> = patches.iter().filter_map(|p| p["status"].as_str()).collect();
        assert_eq!(statuses, ["in_progress", "completed"], "{name}");
    }
    assert_eq!(
        s.runs(&head)
            .iter()
            .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("EkaCI: Check")))
            .count(),
        2
    );
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");
}

#[test]
fn closing_the_pull_request_cancels_its_running_check_and_kills_the_sandbox() {
    use crate::github_app::{wait_for, Setup};
    let repo = GitRepo::new();
    let n = nonce();
    let marker = format!("1234.{}", std::process::id());
    let checks =
        serde_json::json!({ "slow": check(&format!("echo started; /bin/sleep {marker}"), false, &[]) });
    let (base, head) = pr_commits(&repo, &n, &checks);
    let s = Setup::new("[checks]\ntimeout_seconds = 120");
    s.pr("d-slow-1", "opened", 4, repo.path(), &head, &base, "octocat");
    wait_for("the check's sandbox running", || (!processes_with(&marker).is_empty()).then_some(()));
    let running = s.run(&head, "EkaCI: Check (slow)").expect("check run");
    assert_eq!(running["status"], "in_progress", "{running}");

    s.pr("d-slow-2", "closed", 4, repo.path(), &head, &base, "octocat");
    let closed = s.wait_completed(&head, "EkaCI: Check (slow)");
    assert_eq!(closed["conclusion"], "cancelled", "{closed}");
    wait_for("the sandbox killed", || processes_with(&marker).is_empty().then_some(()));
}

#[test]
fn a_server_killed_during_a_check_kills_its_sandbox_and_finishes_the_same_check_run_after_a_restart() {
    use crate::github_app::{wait_for, Setup};
    let repo = GitRepo::new();
    let n = nonce();
    let marker = format!("3.{}", std::process::id());
    let checks = serde_json::json!({ "nap": check(&format!("echo napping; /bin/sleep {marker}; echo awake"), false, &[]) });
    let (base, head) = pr_commits(&repo, &n, &checks);
    let mut s = Setup::new("[checks]\ntimeout_seconds = 30");
    s.pr("d-nap-1", "opened", 5, repo.path(), &head, &base, "octocat");
    wait_for("the check's sandbox running", || (!processes_with(&marker).is_empty()).then_some(()));
    s.kill();
    wait_for("the sandbox died with the server", || processes_with(&marker).is_empty().then_some(()));
    s.restart();
    let done = s.wait_completed(&head, "EkaCI: Check (nap)");
    assert_eq!(done["conclusion"], "success", "{done}");
    assert!(done["output"]["text"].as_str().is_some_and(|t| t.contains("awake")), "{done}");
    let posts = s
        .fake
        .calls_to("POST", "/repos/*/check-runs")
        .into_iter()
        .filter(|c| c.json()["name"] == "EkaCI: Check (nap)")
        .count();
    assert_eq!(posts, 1, "the check run is created once and updated in place across the restart");
}

#[test]
fn with_a_flake_a_single_name_is_a_dev_shell_of_the_servers_system() {
    let n = nonce();
    let system = format!("{}-linux", std::env::consts::ARCH);
    let flake = format!(
        r#"{{
  outputs = {{ self }}:
    let
      tools = derivation {{
        name = "flake-tools-{n}";
        system = "{system}";
        builder = "/bin/sh";
        args = [ "-c" "/bin/mkdir -p $out/bin && echo '#!/bin/sh' > $out/bin/greet && echo 'echo hello from the flake' >> $out/bin/greet && /bin/chmod +x $out/bin/greet" ];
      }};
    in {{
      devShells.{system}.dev = derivation {{
        name = "flake-dev-{n}";
        system = "{system}";
        builder = "/bin/sh";
        args = [ "-c" "echo dev > $out" ];
        inherit tools;
      }};
    }};
}}
"#
    );
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(common::FILE_JOB)), ("default.nix", Some(DEFAULT_NIX))],
    );
    let config = serde_json::json!({
        "jobs": { "main": { "file": "default.nix" } },
        "checks": {
            "short": check("greet", false, &[]),
            "long": { "shell": format!("devShells.{system}.dev"), "command": "greet" },
            "missing": { "shell": "nope", "command": "true" },
        },
    });
    let config = config.to_string();
    let head = repo.commit("head", &[(".eka-ci/config.json", Some(&config)), ("flake.nix", Some(&flake))]);
    let home = Home::new();
    let _server = home.start();
    let out = home.review(&repo, &base, &head);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    for name in ["short", "long"] {
        let c = check_report(&report, name);
        assert_eq!(ending(c), &serde_json::json!({ "Exited": 0 }), "{name}: {c}");
        assert!(c["tail"].as_str().is_some_and(|t| t.contains("hello from the flake")), "{c}");
    }
    let missing = check_report(&report, "missing");
    let message = missing["outcome"]["NoShell"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nope"), "a missing shell is reported, the command not run: {missing}");
    assert_eq!(out.status.code(), Some(1));
}

/// Whether `f` completes within `ms` milliseconds.
async fn completes_within<T>(ms: u64, f: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        smol::Timer::after(std::time::Duration::from_millis(ms)).await;
        None
    })
    .await
}

#[test]
fn checks_take_the_local_builders_worker_slots_and_are_cancelled_with_their_owner() {
    use eka_ci::jobset::JobsetId;
    use eka_ci::scheduler::{self, builders::native_system, SchedulerConfig, SchedulerError};
    let dir = tempfile::tempdir().expect("tmp");
    let store = eka_ci::store::Store::open(&dir.path().join("db.redb")).expect("store");
    let graph = eka_ci::graph::Graph::open(store, 1000).expect("graph");
    let mut cfg = SchedulerConfig::local(vec![native_system()], Vec::new(), dir.path().join("logs"));
    cfg.local_max_jobs = 2;
    let ex = std::rc::Rc::new(smol::LocalExecutor::new());
    smol::block_on(ex.run(async {
        let h = scheduler::start(&ex, graph, cfg).await.expect("start");
        let first = h.check_slot(JobsetId(1)).await.expect("a free slot");
        let second = h.check_slot(JobsetId(2)).await.expect("the other free slot");
        assert!(completes_within(300, h.check_slot(JobsetId(3))).await.is_none(), "both job slots are taken");
        drop(first);
        let third = completes_within(5000, h.check_slot(JobsetId(3)))
            .await
            .expect("granted once a slot is given back")
            .expect("slot");

        // A waiting request of a cancelled owner fails; a running check of a cancelled owner is told to stop.
        let waiting = h.check_slot(JobsetId(4));
        let cancel = async {
            smol::Timer::after(std::time::Duration::from_millis(100)).await;
            let _unknown_owner = h.cancel(JobsetId(4)).await;
            let _unknown_owner = h.cancel(JobsetId(2)).await;
        };
        let (result, ()) = futures_lite::future::zip(waiting, cancel).await;
        assert!(matches!(result, Err(SchedulerError::Cancelled { .. })), "{result:?}");
        assert!(completes_within(5000, second.cancelled()).await.is_some(), "the running check is cancelled");
        assert!(completes_within(200, third.cancelled()).await.is_none(), "another owner's check runs on");
        h.shutdown().await.expect("shutdown");
    }));
}

#[test]
fn a_restarted_run_reports_a_finished_check_again_without_running_it_and_runs_the_unfinished_one() {
    use crate::github_app::{wait_for, Setup};
    let repo = GitRepo::new();
    let n = nonce();
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let marker = format!("4.{}", std::process::id());
    // Checks run in name order: `a-once` reports each run of it to the listener, then `b-nap` naps.
    let checks = serde_json::json!({
        "a-once": check(&format!("/bin/bash -c 'echo ran > /dev/tcp/127.0.0.1/{port}' && echo reported"), true, &[]),
        "b-nap": check(&format!("echo napping; /bin/sleep {marker}; echo awake"), false, &[]),
    });
    let (base, head) = pr_commits(&repo, &n, &checks);
    let mut s = Setup::new("[checks]\ntimeout_seconds = 60");
    s.pr("d-once-1", "opened", 6, repo.path(), &head, &base, "octocat");
    wait_for("b-nap's sandbox running", || (!processes_with(&marker).is_empty()).then_some(()));
    let once = s.run(&head, "EkaCI: Check (a-once)").expect("a-once's check run");
    assert_eq!(once["conclusion"], "success", "a-once finished before b-nap started: {once}");
    s.kill();
    wait_for("the sandbox died with the server", || processes_with(&marker).is_empty().then_some(()));
    s.restart();
    let nap = s.wait_completed(&head, "EkaCI: Check (b-nap)");
    assert_eq!(nap["conclusion"], "success", "the unfinished check ran again: {nap}");
    assert!(nap["output"]["text"].as_str().is_some_and(|t| t.contains("awake")), "{nap}");

    let mut runs = 0;
    loop {
        match listener.accept() {
            Ok(_) => runs += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("accept: {e}"),
        }
    }
    assert_eq!(runs, 1, "the finished check ran once, across the restart");
    let once = s.run(&head, "EkaCI: Check (a-once)").expect("a-once's check run");
    assert_eq!(once["conclusion"], "success", "{once}");
    assert!(once["output"]["text"].as_str().is_some_and(|t| t.contains("reported")), "{once}");
    let posts = s
        .fake
        .calls_to("POST", "/repos/*/check-runs")
        .into_iter()
        .filter(|c| c.json()["name"] == once["name"]);
    assert_eq!(posts.count(), 1, "created once");
    let id = once["id"].clone();
    let statuses: Vec<String> = s
        .fake
        .calls_to("PATCH", "/repos/*/check-runs/*")
        .into_iter()
        .filter(|c| c.path.ends_with(&format!("/{id}")))
        .filter_map(|c| c.json()["status"].as_str().map(str::to_string))
        .collect();
    assert_eq!(statuses.first().map(String::as_str), Some("in_progress"), "{statuses:?}");
    assert!(
        statuses[1..].iter().all(|s| s == "completed") && statuses.len() >= 3,
        "completed, then the same result posted again after the restart, never back in progress: {statuses:?}"
    );
}

#[test]
fn a_fork_bomb_hits_the_process_limit_and_fails_cleanly_leaving_the_host_unaffected() {
    let home = Home::new();
    home.write_config("[checks]\ntimeout_seconds = 120\nmax_processes = 40");
    let marker = format!("5.{}", std::process::id());
    // Starts up to 200 background processes; dash gives up at the first fork the kernel refuses.
    let bomb = format!(
        "i=0; while [ $i -lt 200 ]; do /bin/sleep {marker} & i=$((i+1)); echo \"started $i\"; done; echo 'all started'"
    );
    let checks = serde_json::json!({
        "bomb": check(&bomb, false, &[]),
        "user": check("echo \"uid $(/usr/bin/id -u)\"", false, &[]),
    });
    let _server = home.start();
    let repo = GitRepo::new();
    let (out, report) = review_checks(&home, &repo, checks);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let bomb = check_report(&report, "bomb");
    let code = ending(bomb)["Exited"].as_i64();
    assert!(code.is_some_and(|c| c != 0), "the command failed, it was not timed out or killed: {bomb}");
    let text = output(bomb);
    assert!(text.contains("Cannot fork") && !text.contains("all started"), "{text}");
    let started = text.lines().filter(|l| l.starts_with("started ")).count();
    assert!(started > 0 && started < 40, "at most max_processes processes: {started} started");
    assert!(processes_with(&marker).is_empty(), "the bomb's processes died with the sandbox");

    // The host and the server go on: the next check ran (as the unprivileged user), and the server answers.
    let user = check_report(&report, "user");
    let uid = if rustix::process::geteuid().is_root() {
        "uid 65534".to_string()
    } else {
        format!("uid {}", rustix::process::geteuid().as_raw())
    };
    assert!(user["tail"].as_str().is_some_and(|t| t.contains(&uid)), "{user}");
    let listed = home.ekaci(&["checks", "--json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
}

#[test]
fn a_pull_request_whose_check_asks_for_a_ro_bind_the_server_does_not_allow_fails_configure() {
    use crate::github_app::{summary, Setup};
    let repo = GitRepo::new();
    let checks = serde_json::json!({ "certs": check("true", false, &["/etc".to_string()]) });
    let config = serde_json::json!({ "jobs": { "main": { "file": "default.nix" } }, "checks": checks });
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(&config.to_string())), ("default.nix", Some(DEFAULT_NIX))],
    );
    let head = repo.commit("head", &[("README.md", Some("changed"))]);
    let s = Setup::new("[checks]\nallowed_ro_binds = [\"/etc/ssl/certs\"]");
    s.pr("d-ro-bind-1", "opened", 7, repo.path(), &head, &base, "octocat");
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "failure", "{configure}");
    let text = summary(&configure).replace('\\', "");
    assert!(text.contains("checks.certs.ro_bind[0]") && text.contains("allowed_ro_binds"), "{text}");
    assert!(s.run(&head, "EkaCI: Check (certs)").is_none(), "the check is not run");
}

#[test]
fn ekaci_gc_removes_check_results_older_than_logs_days_with_their_output() {
    let home = Home::new();
    let checks = serde_json::json!({
        "old": check("echo old output", false, &[]),
        "new": check("echo new output", false, &[]),
    });
    let server = home.start();
    let repo = GitRepo::new();
    let (out, report) = review_checks(&home, &repo, checks);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<String> = ["old", "new"]
        .iter()
        .map(|n| check_report(&report, n)["output_file"].as_str().expect("output file").to_string())
        .collect();
    drop(server);
    // The `old` check finished 40 days ago ([retention] logs_days is 30 by default).
    let head = report["head_commit"].as_str().expect("head commit").to_string();
    {
        let store = eka_ci::store::Store::open(&home.db()).expect("open the database");
        let rows = eka_ci::checks::results::for_commit(&store, &head).expect("rows");
        let mut old = rows.into_iter().find(|r| r.report.name == "old").expect("old row");
        old.finished_at -= 40 * 86400;
        eka_ci::checks::results::put_row(&store, &old).expect("backdate");
    }
    let _server = home.start();
    let gc = home.ekaci(&["gc"]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let text = String::from_utf8_lossy(&gc.stdout);
    assert!(text.contains("check results: 1 removed, 11 bytes freed"), "{text}");
    let listed = home.ekaci(&["checks", "--commit", &head, "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("checks JSON");
    let names: Vec<&str> =
        listed.as_array().expect("array").iter().filter_map(|c| c["report"]["name"].as_str()).collect();
    assert_eq!(names, ["new"], "{listed}");
    assert!(!std::path::Path::new(&files[0]).exists(), "the old output file is removed");
    assert_eq!(std::fs::read_to_string(&files[1]).expect("new output"), "new output\n");
}
