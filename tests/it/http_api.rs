//! The build HTTP API end to end: a real server process, a real git repository reviewed with
//! `ekaci review` (real Nix evaluation and builds), then every `/v1/` build route queried over real HTTP:
//! derivation states and history, graph neighbours, byte-exact logs per attempt, active builds during a
//! running build, jobset listings with paging, and the JSON errors of bad input.

use crate::common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{http_get, GitRepo, Home, CLI, NIX_PRELUDE};
use serde_json::Value;

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

fn base_nix() -> String {
    format!(
        r#"{NIX_PRELUDE}
{{
  keep = mk "keep-1.0" "echo keep > $out";
  broken = throw "broken on purpose";
}}
"#
    )
}

/// Head adds: a dependency chain that builds, a failing derivation (a known line, non-UTF-8 bytes and the
/// machine's uptime, so its two attempts differ) with a dependent, and a slow build.
fn head_nix(nonce: &str) -> String {
    format!(
        r#"{NIX_PRELUDE}
let
  dep = mk "dep-{nonce}" "echo dep > $out";
  fail = mk "fail-{nonce}" "echo 'known log line {nonce}'; printf '\\377\\376'; echo; read up rest < /proc/uptime; echo \"uptime $up\"; exit 3";
in
{{
  keep = mk "keep-1.0" "echo keep > $out";
  broken = throw "broken on purpose";
  inherit dep fail;
  top = mk "top-{nonce}" "echo ${{dep}} > $out";
  afterFail = mk "after-fail-{nonce}" "echo ${{fail}} > $out";
  slow = mk "slow-{nonce}" "/bin/sleep 3; echo slow > $out";
}}
"#
    )
}

use common::{get_json, nonce};

fn ok(addr: &str, path: &str) -> Value {
    let (code, v) = get_json(addr, path);
    assert_eq!(code, 200, "{path}: {v}");
    v
}

/// Asserts an error answer: status, the JSON shape, a word of the message, and no server path in it.
fn err(addr: &str, path: &str, status: u16, words: &str, home: &Home) -> String {
    let (code, v) = get_json(addr, path);
    assert_eq!(code, status, "{path}: {v}");
    assert_eq!(v["status"], status, "{path}: {v}");
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{path}: no error message: {v}")).to_string();
    assert!(msg.contains(words), "{path}: `{msg}` does not mention `{words}`");
    let home_path = home.path().display().to_string();
    assert!(!msg.contains(&home_path) && !msg.contains("build-logs"), "{path}: leaks a server path: {msg}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{path}: {v}");
    msg
}

fn enc(drv: &str) -> String {
    drv.replace('/', "%2F")
}

fn base_name(drv: &str) -> &str {
    drv.strip_prefix("/nix/store/").expect("store path")
}

fn log_file(home: &Home, drv: &str, attempt: u32) -> PathBuf {
    let hash = &base_name(drv)[..32];
    home.path().join("data/ekaci/build-logs").join(hash).join(format!("{attempt}.log"))
}

fn state_names(history: &Value) -> Vec<String> {
    history
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["state"]["name"].as_str().expect("state name").to_string())
        .collect()
}

#[test]
fn build_api_over_real_http() {
    let nonce = nonce();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    // Local jobsets are private: every request of this test carries a read token.
    common::send_token(Some(&home.token("http-api-test", "read")));

    let repo = GitRepo::new();
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&base_nix()))]);
    let head = repo.commit("head", &[("default.nix", Some(&head_nix(&nonce)))]);

    // Nothing runs yet.
    let idle = ok(&addr, "/v1/builds/active");
    assert_eq!(idle["builds"], serde_json::json!([]), "{idle}");
    assert!(idle["queues"].is_array(), "{idle}");

    // The review runs in the background; while the slow build runs it shows up as active.
    let review = home
        .command(CLI)
        .arg("--socket")
        .arg(home.socket())
        .args([
            "review",
            "--repo",
            &repo.path().display().to_string(),
            "--base",
            &base,
            "--head",
            &head,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ekaci review");
    let slow_suffix = format!("-slow-{nonce}.drv");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (active, slow_build) = loop {
        assert!(Instant::now() < deadline, "the slow build never showed up in /v1/builds/active");
        let active = ok(&addr, "/v1/builds/active");
        let found = active["builds"]
            .as_array()
            .expect("builds")
            .iter()
            .find(|b| b["drv"].as_str().is_some_and(|d| d.ends_with(&slow_suffix)))
            .cloned();
        if let Some(b) = found {
            break (active, b);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let slow = slow_build["drv"].as_str().expect("drv").to_string();
    assert_eq!(slow_build["builder"], "local", "{slow_build}");
    assert_eq!(slow_build["attempt"], 1, "{slow_build}");
    assert!(slow_build["started_at_ms"].as_u64().expect("started_at_ms") > 1_600_000_000_000, "{slow_build}");
    assert!(slow_build["elapsed_seconds"].as_u64().expect("elapsed") < 60, "{slow_build}");
    assert_eq!(slow_build["log"], format!("/v1/logs/{}?attempt=1", base_name(&slow)));
    let queues = active["queues"].as_array().expect("queues");
    let system = queues
        .iter()
        .find(|q| q["building"].as_u64() >= Some(1))
        .map(|q| q["system"].clone())
        .unwrap_or_else(|| panic!("no platform is building: {active}"));
    for q in queues {
        assert!(q["system"].is_string() && q["queued"].is_u64() && q["buildable"].is_u64(), "{q}");
    }
    // The same derivation, asked for directly while it builds.
    let building = ok(&addr, &format!("/v1/drvs/{}", base_name(&slow)));
    assert_eq!(building["state"]["name"], "building", "{building}");
    assert_eq!(building["attempt"], 1);
    assert_eq!(building["attempts"][0]["ended_at_ms"], Value::Null, "{building}");

    let out = review.wait_with_output().expect("ekaci review");
    assert_eq!(out.status.code(), Some(1), "review must fail: {}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("review JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let job = &report["jobs"][0];
    let jobset_id = job["diff"]["head"]["id"].as_u64().expect("head jobset id");
    let drv_of = |attr: &str| -> String {
        job["attrs"]
            .as_array()
            .expect("attrs")
            .iter()
            .find(|a| a["attr"] == attr)
            .and_then(|a| a["head_drv"].as_str())
            .unwrap_or_else(|| panic!("{attr} not reviewed: {job}"))
            .to_string()
    };
    let (dep, top, fail, after) = (drv_of("dep"), drv_of("top"), drv_of("fail"), drv_of("afterFail"));
    assert_eq!(drv_of("slow"), slow);

    // ---------------------------------------------------------------------------------- /v1/drvs
    // Both spellings: the URL-encoded store path and the bare base name.
    let d = ok(&addr, &format!("/v1/drvs/{}", enc(&dep)));
    assert_eq!(d, ok(&addr, &format!("/v1/drvs/{}", base_name(&dep))));
    assert_eq!(d["drv"], dep);
    assert_eq!(d["state"], serde_json::json!({ "name": "success" }));
    assert_eq!(d["attempt"], 1);
    assert_eq!(d["dependencies"], serde_json::json!([]));
    assert_eq!(d["dependents"], serde_json::json!([top]));
    assert_eq!(d["dependents_total"], 1);
    let out_path = d["outputs"]["out"].as_str().expect("out path");
    assert!(out_path.starts_with("/nix/store/") && out_path.ends_with(&format!("-dep-{nonce}")), "{d}");
    assert_eq!(d["outputs"].as_object().map(|o| o.len()), Some(1));
    assert_eq!(d["system"], system);
    let attempts = d["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{d}");
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["builder"], "local");
    assert_eq!(attempts[0]["outcome"], "success");
    assert!(attempts[0]["ended_at_ms"].as_u64() >= attempts[0]["started_at_ms"].as_u64(), "{d}");
    assert_eq!(attempts[0]["log"], format!("/v1/logs/{}?attempt=1", base_name(&dep)));
    assert_eq!(state_names(&d["history"]), ["queued", "buildable", "building", "success"], "{d}");

    let t = ok(&addr, &format!("/v1/drvs/{}", enc(&top)));
    assert_eq!(t["state"]["name"], "success");
    assert_eq!(t["dependencies"], serde_json::json!([dep]));
    assert_eq!(t["dependents"], serde_json::json!([]));
    assert_eq!(t["dependents_total"], 0);
    assert_eq!(state_names(&t["history"]), ["queued", "buildable", "building", "success"], "{t}");

    // The failure: retried once, so two attempts; the final state carries Nix's message.
    let f = ok(&addr, &format!("/v1/drvs/{}", enc(&fail)));
    assert_eq!(f["state"]["name"], "failure", "{f}");
    let message = f["state"]["message"].as_str().expect("failure message");
    assert!(message.contains(&fail) && message.contains("exit code 3"), "{message}");
    assert_eq!(f["state"]["exit_code"], 3, "{f}");
    assert_eq!(f["attempt"], 2);
    let fa = f["attempts"].as_array().expect("attempts");
    assert_eq!(fa.len(), 2, "{f}");
    assert_eq!((fa[0]["number"].as_u64(), fa[1]["number"].as_u64()), (Some(1), Some(2)));
    assert_eq!(fa[0]["outcome"], "failed-retry", "{f}");
    assert_eq!(fa[1]["outcome"], "failure", "{f}");
    assert!(fa[1]["started_at_ms"].as_u64() >= fa[0]["ended_at_ms"].as_u64(), "{f}");
    assert_eq!(
        state_names(&f["history"]),
        ["queued", "buildable", "building", "failed-retry", "buildable", "building", "failure"],
        "{f}"
    );
    let history = f["history"].as_array().expect("history");
    let times: Vec<u64> = history.iter().map(|h| h["at_ms"].as_u64().expect("at_ms")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "history out of order: {times:?}");
    let attempt_numbers: Vec<u64> = history.iter().map(|h| h["attempt"].as_u64().expect("attempt")).collect();
    assert_eq!(attempt_numbers, [0, 0, 1, 1, 1, 2, 2], "{f}");
    assert!(history[3]["state"]["message"].as_str().is_some_and(|m| m.contains("exit code 3")), "{f}");
    assert_eq!(f["dependents"], serde_json::json!([after]));

    let a = ok(&addr, &format!("/v1/drvs/{}", base_name(&after)));
    assert_eq!(a["state"], serde_json::json!({ "name": "transitive-failure", "dependency": fail }));
    assert_eq!(a["attempt"], 0);
    assert_eq!(a["attempts"], serde_json::json!([]));
    assert_eq!(a["dependencies"], serde_json::json!([fail]));
    assert_eq!(state_names(&a["history"]), ["queued", "transitive-failure"], "{a}");

    // ---------------------------------------------------------------------------------- /v1/logs
    let log_of = |path: String| {
        let (code, head, body) = http_get(&addr, &path);
        assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
        let head = head.to_ascii_lowercase();
        // http-types writes the parameter without a space: `text/plain;charset=utf-8`.
        assert!(head.contains("content-type: text/plain;") && head.contains("charset=utf-8"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        (head, body)
    };
    let (_, log1) = log_of(format!("/v1/logs/{}?attempt=1", enc(&fail)));
    let (_, log2) = log_of(format!("/v1/logs/{}?attempt=2", base_name(&fail)));
    let (latest_head, latest) = log_of(format!("/v1/logs/{}", enc(&fail)));
    assert!(latest_head.contains("x-eka-ci-attempt: 2"), "{latest_head}");
    assert_eq!(latest, log2, "the default is the latest attempt");
    assert_eq!(log1, std::fs::read(log_file(&home, &fail, 1)).expect("log 1 on disk"));
    assert_eq!(log2, std::fs::read(log_file(&home, &fail, 2)).expect("log 2 on disk"));
    let mut expected = format!("known log line {nonce}\n").into_bytes();
    expected.extend_from_slice(b"\xff\xfe\n");
    for log in [&log1, &log2] {
        assert!(
            log.windows(expected.len()).any(|w| w == expected.as_slice()),
            "{}",
            String::from_utf8_lossy(log)
        );
        assert!(!log.windows(3).any(|w| w == "\u{fffd}".as_bytes()), "the log was transcoded");
    }
    assert_ne!(log1, log2, "each attempt has its own log");
    assert_eq!(fa[0]["log_bytes"].as_u64(), Some(log1.len() as u64));
    assert_eq!(fa[1]["log_bytes"].as_u64(), Some(log2.len() as u64));
    let (_, dep_log) = log_of(format!("/v1/logs/{}?attempt=1", base_name(&dep)));
    assert_eq!(dep_log, std::fs::read(log_file(&home, &dep, 1)).expect("dep log on disk"));
    // A large log with every byte value streams through unchanged.
    let mut x: u32 = 0x1234_5678;
    let big: Vec<u8> = (0..6_000_000u32)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i < 256 {
                i as u8
            } else {
                x as u8
            }
        })
        .collect();
    std::fs::write(log_file(&home, &dep, 1), &big).expect("write a big log");
    let (_, big_log) = log_of(format!("/v1/logs/{}", enc(&dep)));
    assert!(big_log == big, "a large log came back different ({} bytes of {})", big_log.len(), big.len());

    // ---------------------------------------------------------------------------------- /v1/jobsets
    let j = ok(&addr, &format!("/v1/jobsets/{jobset_id}"));
    assert_eq!(j["id"], jobset_id);
    assert_eq!(j["commit"], head);
    assert_eq!(j["job"], "main");
    assert!(j["repo"].as_str().is_some_and(|r| r.starts_with("file://")), "{j}");
    assert_eq!(j["state"], serde_json::json!({ "name": "evaluated" }));
    assert_eq!((j["derivations"].as_u64(), j["errors"].as_u64()), (Some(6), Some(1)), "{j}");
    assert_eq!(j["attributes_total"], 7);
    assert_eq!(j["limit"], 1000);
    assert_eq!(j["next_after"], Value::Null);
    assert!(
        j["created_at"].as_u64().is_some() && j["finished_at"].as_u64() >= j["created_at"].as_u64(),
        "{j}"
    );
    let attrs = j["attributes"].as_array().expect("attributes");
    let names: Vec<&str> = attrs.iter().map(|a| a["attr"].as_str().expect("attr")).collect();
    assert_eq!(names, ["afterFail", "broken", "dep", "fail", "keep", "slow", "top"], "in attribute order");
    let by_attr =
        |name: &str| attrs.iter().find(|a| a["attr"] == name).unwrap_or_else(|| panic!("{name}: {j}"));
    // Failing on both sides: a report does not show it, so Nix's message was never computed.
    assert_eq!(by_attr("broken")["error"].as_str(), Some(eka_ci::nix::eval::DEFERRED_ERROR));
    assert_eq!(by_attr("dep")["drv"], dep);
    assert_eq!(by_attr("dep")["build_state"], "success");
    assert_eq!(by_attr("top")["build_state"], "success");
    assert_eq!(by_attr("slow")["build_state"], "success");
    assert_eq!(by_attr("fail")["build_state"], "failure");
    assert_eq!(by_attr("fail")["build"]["exit_code"], 3);
    assert_eq!(by_attr("afterFail")["build_state"], "transitive-failure");
    assert_eq!(by_attr("keep")["build_state"], Value::Null, "unchanged attributes are not built");
    assert_eq!(by_attr("keep")["name"], "keep-1.0");
    let keep = by_attr("keep")["drv"].as_str().expect("keep drv").to_string();

    // Paging: two at a time, following next_after.
    let mut paged = Vec::new();
    let mut after_attr: Option<String> = None;
    loop {
        let path = match &after_attr {
            None => format!("/v1/jobsets/{jobset_id}?limit=2"),
            Some(a) => format!("/v1/jobsets/{jobset_id}?limit=2&after={a}"),
        };
        let page = ok(&addr, &path);
        assert_eq!(page["limit"], 2);
        let items = page["attributes"].as_array().expect("attributes").clone();
        assert!(items.len() <= 2, "{page}");
        paged.extend(items.iter().map(|a| a["attr"].as_str().expect("attr").to_string()));
        match page["next_after"].as_str() {
            Some(next) => {
                assert_eq!(items.last().map(|a| &a["attr"]), Some(&Value::from(next)));
                after_attr = Some(next.to_string());
            }
            None => break,
        }
    }
    assert_eq!(paged, names);
    assert_eq!(ok(&addr, &format!("/v1/jobsets/{jobset_id}?limit=99999"))["limit"], 10000);

    // ---------------------------------------------------------------------------------- errors
    let unknown = format!("/nix/store/{}-nothing-{nonce}.drv", "0".repeat(32));
    err(&addr, "/v1/drvs/..%2F..%2Fetc%2Fpasswd", 400, "invalid derivation", &home);
    err(&addr, "/v1/logs/..%2F..%2Fetc%2Fpasswd", 400, "invalid derivation", &home);
    err(&addr, "/v1/logs/..%2F..%2Fetc%2Fpasswd?attempt=1", 400, "invalid derivation", &home);
    err(&addr, "/v1/drvs/%2Fetc%2Fpasswd", 400, "not under /nix/store/", &home);
    err(
        &addr,
        &format!("/v1/logs/{}%2F..%2F..%2Fx.drv", &base_name(&fail)[..32]),
        400,
        "invalid derivation",
        &home,
    );
    err(&addr, "/v1/drvs/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x.drv", 400, "hash is not Nix base-32", &home);
    err(&addr, "/v1/drvs/0000-x.drv", 400, "32-character hash", &home);
    err(&addr, &format!("/v1/drvs/{}", &base_name(&dep)[..base_name(&dep).len() - 4]), 400, ".drv", &home);
    err(&addr, &format!("/v1/drvs/{}%ZZ", base_name(&dep)), 400, "percent-encoding", &home);
    err(&addr, &format!("/v1/drvs/{}", enc(&unknown)), 404, "unknown derivation", &home);
    err(&addr, &format!("/v1/logs/{}", enc(&unknown)), 404, "unknown derivation", &home);
    err(&addr, &format!("/v1/logs/{}", enc(&keep)), 404, "never been built", &home);
    err(&addr, &format!("/v1/logs/{}", enc(&after)), 404, "never been built", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=0", enc(&fail)), 400, "numbered from 1", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=abc", enc(&fail)), 400, "attempt", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=-1", enc(&fail)), 400, "attempt", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=", enc(&fail)), 400, "attempt", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=1&attempt=2", enc(&fail)), 400, "more than once", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=99999999999", enc(&fail)), 400, "too large", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=99", enc(&fail)), 404, "no attempt 99", &home);
    err(&addr, &format!("/v1/logs/{}?attempt=2", enc(&dep)), 404, "no attempt 2", &home);
    // A log file that went missing (log retention, a disk cleaned by hand).
    std::fs::remove_file(log_file(&home, &top, 1)).expect("remove a log");
    err(&addr, &format!("/v1/logs/{}", enc(&top)), 404, "no build log for attempt 1", &home);
    err(&addr, "/v1/jobsets/abc", 400, "invalid jobset id", &home);
    err(&addr, "/v1/jobsets/-1", 400, "invalid jobset id", &home);
    err(&addr, "/v1/jobsets/99999999999999999999999", 400, "invalid jobset id", &home);
    err(&addr, "/v1/jobsets/987654", 404, "unknown jobset 987654", &home);
    err(&addr, &format!("/v1/jobsets/{jobset_id}?limit=0"), 400, "limit", &home);
    err(&addr, &format!("/v1/jobsets/{jobset_id}?limit=ten"), 400, "limit", &home);
    let (code, _, body) = common::http_request(&addr, "POST", "/v1/builds/active", &[], b"");
    assert_eq!(code, 405);
    let v: Value = serde_json::from_slice(&body).expect("405 JSON");
    assert_eq!(v, serde_json::json!({ "error": "method not allowed on this route", "status": 405 }));
    // Routes that do not exist keep the generic JSON 404.
    err(&addr, "/v1/drvs", 404, "no such route", &home);
    err(&addr, "/v1/builds/nope", 404, "no such route", &home);

    // Nothing runs any more.
    assert_eq!(ok(&addr, "/v1/builds/active")["builds"], serde_json::json!([]));
    drop(server);
}
