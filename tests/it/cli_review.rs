//! `ekaci review` and the build commands end to end: a real git repository, the real server, real
//! Nix builds. Every test puts a fresh nonce into its derivations so nothing is already built.

use crate::common;

use std::time::{Duration, Instant};

use common::{json, GitRepo, Home};
use rustix::process::Signal;
use serde_json::Value;

use common::{nonce, nonce_prelude as prelude};

use common::{attr, FILE_JOB as CONFIG};

fn review(home: &Home, repo: &GitRepo, base: &str, head: &str) -> std::process::Output {
    home.review(repo, base, head)
}

#[test]
fn review_passes_when_nothing_added_or_changed_fails() {
    let n = nonce();
    let repo = GitRepo::new();
    let p = prelude(&n);
    let base = repo.commit(
        "base",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&format!(r#"{p} rec {{ lib = mk "lib-1" "echo lib > $out" []; app = mk "app-1" "echo app > $out" [ lib ]; }}"#))),
        ],
    );
    let head = repo.commit(
        "head",
        &[("default.nix", Some(&format!(r#"{p} rec {{ lib = mk "lib-2" "echo lib2 > $out" []; app = mk "app-1" "echo app > $out" [ lib ]; extra = mk "extra-1" "echo x > $out" [ lib ]; }}"#)))],
    );
    let home = Home::new();
    let _server = home.start();
    let out = review(&home, &repo, &base, &head);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["failed"], false);
    let job = &report["jobs"][0];
    assert_eq!(attr(job, "extra")["verdict"], "AddedOk");
    assert_eq!(attr(job, "lib")["verdict"], "StillOk");
    assert_eq!(attr(job, "app")["verdict"], "StillOk", "app changed because its dependency did");
    assert_eq!(attr(job, "app")["head"]["state"], "success");
    // The base side of a Changed attribute was built too (to compare).
    assert_eq!(attr(job, "lib")["base"]["ok"], true);
}

#[test]
fn review_fails_on_new_breakage_with_the_log_tail_and_builds_commands_work() {
    let n = nonce();
    let marker_dir = tempfile::tempdir().expect("tmp");
    let marker = marker_dir.path().join("fixed");
    let p = prelude(&n);
    let repo = GitRepo::new();
    let base_nix = format!(
        r#"{p} rec {{
  core = mk "core-1" "echo core > $out" [];
  tool = mk "tool-1" "echo tool > $out" [ core ];
  fixme = mk "fixme-1" "echo 'fixme: broken in base' >&2; exit 1" [];
  stays = mk "stays-1" "echo stays > $out" [];
}}"#
    );
    let head_nix = format!(
        r#"{p} rec {{
  core = mk "core-2" "echo 'core: tests failed, see line 42' >&2; printf '\\377\\376 not utf8\n' >&2; exit 3" [];
  tool = mk "tool-1" "echo tool > $out" [ core ];
  fixme = mk "fixme-2" "echo fixed > $out" [];
  stays = mk "stays-1" "echo stays > $out" [];
  flaky = mk "flaky-1" "if [ -e {marker} ]; then echo ok > $out; else echo 'flaky: marker missing' >&2; exit 1; fi" [];
}}"#,
        marker = marker.display()
    );
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&base_nix))]);
    let head = repo.commit("head", &[("default.nix", Some(&head_nix))]);
    let home = Home::new();
    let _server = home.start();

    let out = review(&home, &repo, &base, &head);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["failed"], true);
    let job = &report["jobs"][0];
    assert_eq!(job["failed"], true);
    let core = attr(job, "core");
    assert_eq!(core["verdict"], "NewlyFailing");
    assert_eq!(core["head"]["state"], "failure");
    let tail = core["log_tail"].as_str().expect("log tail");
    assert!(tail.contains("core: tests failed, see line 42"), "{tail}");
    let tool = attr(job, "tool");
    assert_eq!(tool["verdict"], "NewlyFailing");
    assert_eq!(tool["head"]["state"], "transitive-failure");
    assert!(tool["head"]["detail"].as_str().expect("detail").contains("core-2.drv"), "{tool}");
    assert_eq!(attr(job, "fixme")["verdict"], "NewlySucceeding");
    assert_eq!(attr(job, "flaky")["verdict"], "AddedFailing");
    assert!(
        job["attrs"].as_array().expect("attrs").iter().all(|a| a["attr"] != "stays"),
        "unchanged is not built"
    );

    // The text form shows the same, with the log tail.
    let text_out = home.ekaci(&[
        "review",
        "--repo",
        &repo.path().display().to_string(),
        "--base",
        &base,
        "--head",
        &head,
    ]);
    assert_eq!(text_out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text_out.stdout);
    assert!(text.contains("job main: FAIL") && text.contains("result: FAIL"), "{text}");
    assert!(text.contains("      | core: tests failed, see line 42"), "{text}");

    // builds --state failure lists the three failures: core and flaky on head, fixme-1 on base (built to
    // compare), not the others.
    let out = home.ekaci(&["builds", "--state", "failure", "--json"]);
    assert!(out.status.success());
    let failures = json(&out);
    let drvs: Vec<String> = failures
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["drv"].as_str().expect("drv").to_string())
        .collect();
    assert_eq!(drvs.len(), 3, "{failures}");
    let core_drv = core["head_drv"].as_str().expect("drv").to_string();
    let flaky_drv = attr(job, "flaky")["head_drv"].as_str().expect("drv").to_string();
    let fixme_base = attr(job, "fixme")["base_drv"].as_str().expect("drv").to_string();
    assert!(drvs.contains(&core_drv) && drvs.contains(&flaky_drv) && drvs.contains(&fixme_base), "{drvs:?}");
    let out = home.ekaci(&["builds", "--state", "transitive-failure", "--json"]);
    let transitive = json(&out);
    assert_eq!(transitive.as_array().map(|l| l.len()), Some(1), "{transitive}");
    assert!(transitive[0]["detail"].as_str().expect("detail").contains("core-2.drv"));
    assert!(
        failures.as_array().expect("list").iter().all(|b| b["attempt"] == 2),
        "a failure is retried once: {failures}"
    );

    // logs: bytes as printed, per attempt.
    let out = home.ekaci(&["logs", &core_drv]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.stdout.windows(2).any(|w| w == [0xff, 0xfe]),
        "non-UTF-8 bytes survive: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("core: tests failed"));
    let first = home.ekaci(&["logs", &core_drv, "--attempt", "1"]);
    assert!(first.status.success());
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("core: tests failed"),
        "the first attempt keeps its own log"
    );
    let bad = home.ekaci(&["logs", &core_drv, "--attempt", "3"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("there is no attempt 3"));
    let unknown = home.ekaci(&["logs", "/nix/store/00000000000000000000000000000000-nope.drv"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("never been scheduled"));

    // rebuild after a fix: create the marker, rebuild flaky → success.
    std::fs::write(&marker, "").expect("marker");
    let out = home.ekaci(&["rebuild", &flaky_drv]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": success"));
    let out = home.ekaci(&["rebuild", &core_drv]);
    assert_eq!(out.status.code(), Some(1), "core still fails");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": failure"));

    // The review now sees flaky succeed; core still newly failing.
    let report = json(&review(&home, &repo, &base, &head));
    assert_eq!(attr(&report["jobs"][0], "flaky")["verdict"], "AddedOk");
    assert_eq!(attr(&report["jobs"][0], "core")["verdict"], "NewlyFailing");
}

#[test]
fn kill_9_in_the_middle_of_building_recovers_to_the_same_result() {
    let n = nonce();
    let p = prelude(&n);
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&format!(r#"{p} {{ a = mk "a-0" "echo a > $out" []; }}"#))),
        ],
    );
    let head_nix = format!(
        r#"{p} rec {{
  a = mk "a-1" "echo a > $out" [];
  slow = mk "slow-1" "/bin/sleep 4; echo slow-${{nonce}} > $out" [ a ];
  after = mk "after-1" "echo after > $out" [ slow ];
  bad = mk "bad-1" "exit 1" [ a ];
}}"#
    );
    let head = repo.commit("head", &[("default.nix", Some(&head_nix))]);

    let home = Home::new();
    let server = home.start();
    let path = repo.path().display().to_string();
    let mut cmd = home.command(common::CLI);
    cmd.args([
        "--socket",
        &home.socket().display().to_string(),
        "review",
        "--repo",
        &path,
        "--base",
        &base,
        "--head",
        &head,
        "--json",
    ]);
    let mut first =
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("review");
    // Wait until `slow` is building, then kill the server hard.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = home.ekaci(&["builds", "--state", "building", "--json"]);
        if out.status.success()
            && json(&out).as_array().is_some_and(|l| {
                l.iter().any(|b| b["drv"].as_str().is_some_and(|d| d.ends_with("slow-1.drv")))
            })
        {
            break;
        }
        assert!(Instant::now() < deadline, "slow never started building");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Derivations with pending work are pinned in the graph's cache while they wait or build.
    assert!(pinned(&server.http_address()) > 0, "nodes with pending work are pinned");
    server.signal(Signal::KILL);
    let (status, _) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), None);
    let _ = first.wait();
    // No build process outlives the server: Nix's children get SIGTERM when the server dies, and stop
    // their builders (the builder's command line carries the nonce).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&n).is_empty() {
        assert!(Instant::now() < deadline, "orphaned build processes: {:?}", processes_mentioning(&n));
        std::thread::sleep(Duration::from_millis(100));
    }

    let _server = home.start();
    let recovered = review(&home, &repo, &base, &head);
    let recovered_json = json(&recovered);
    assert_eq!(pinned(&_server.http_address()), 0, "nothing is pinned once every build is final");

    // An uninterrupted run in a fresh home (same derivations: outputs built above are reused there as
    // Cached, so compare verdicts and ok-ness, which must agree).
    let clean_home = Home::new();
    let _clean = clean_home.start();
    let clean = json(&review(&clean_home, &repo, &base, &head));
    assert_eq!(recovered.status.code(), Some(1), "bad fails the review");
    let verdicts = |r: &Value| -> Vec<(String, String, bool)> {
        r["jobs"][0]["attrs"]
            .as_array()
            .expect("attrs")
            .iter()
            .map(|a| {
                (
                    a["attr"].as_str().unwrap_or("").to_string(),
                    a["verdict"].as_str().unwrap_or("").to_string(),
                    a["head"]["ok"] == true,
                )
            })
            .collect()
    };
    assert_eq!(verdicts(&recovered_json), verdicts(&clean));
    let v = verdicts(&recovered_json);
    assert!(v.contains(&("slow".into(), "AddedOk".into(), true)), "{v:?}");
    assert!(v.contains(&("after".into(), "AddedOk".into(), true)), "{v:?}");
    assert!(v.contains(&("bad".into(), "AddedFailing".into(), false)), "{v:?}");
    // slow's history: building when the server died, requeued at the restart, then built to success.
    let slow_drv = attr(&recovered_json["jobs"][0], "slow")["head_drv"].as_str().expect("drv").to_string();
    let addr = _server.http_address();
    // A local review's derivations are private: the request carries a read token.
    common::send_token(Some(&home.token("review-test", "read")));
    let (code, _, body) =
        common::http_get(&addr, &format!("/v1/drvs/{}", slow_drv.trim_start_matches("/nix/store/")));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let drv: Value = serde_json::from_slice(&body).expect("drv JSON");
    let states: Vec<&str> = drv["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["state"]["name"].as_str().unwrap_or(""))
        .collect();
    let building = states.iter().filter(|s| **s == "building").count();
    assert_eq!(building, 2, "built before and after the kill: {states:?}");
    assert_eq!(states.last(), Some(&"success"), "{states:?}");
    assert!(drv["history"].to_string().contains("server restarted during the build"), "{drv}");
}

/// `eka_ci_graph_pinned_nodes_total` scraped from /metrics.
fn pinned(addr: &str) -> u64 {
    let (_, _, body) = common::http_get(addr, "/metrics");
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix("eka_ci_graph_pinned_nodes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no eka_ci_graph_pinned_nodes_total in:\n{text}"))
}

/// Processes whose command line mentions `needle` (read from /proc).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && !text.contains("cargo") {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn cancel_and_review_errors() {
    let home = Home::new();
    let _server = home.start();
    let out = home.ekaci(&["cancel", "999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    let out = home.ekaci(&["cancel", "--drv", "/nix/store/00000000000000000000000000000000-nope.drv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the derivation graph"));
    let out = home.ekaci(&["cancel"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a jobset id or --drv"));
    let out = home.ekaci(&["rebuild", "/nix/store/00000000000000000000000000000000-nope.drv"]);
    assert_eq!(out.status.code(), Some(1));
    let out = home.ekaci(&["review", "--repo", "/nonexistent", "--base", "a", "--head", "b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot use repository /nonexistent"));
}
