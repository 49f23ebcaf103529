//! `ekaci eval` and `ekaci diff` end to end: a real git repository, the real server over its socket,
//! real Nix evaluation, the jobset store and the derivation graph.

use crate::common;

use common::{json, GitRepo, Home, NIX_PRELUDE};
use serde_json::Value;

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" }, "tools": { "file": "tools.nix", "allow_eval_failures": true } } }"#;

fn base_nix() -> String {
    format!(
        r#"{NIX_PRELUDE}
let core = mk "core-1.0" "echo core > $out"; in
{{
  hello = mk "hello-1.0" "echo ${{core}} > $out";
  same = mk "same-1.0" "echo same > $out";
  gone = mk "gone-1.0" "echo gone > $out";
  broken = throw "broken on purpose";
  typeError = 1 + "a";
  assertion = assert 1 == 2; mk "never" "";
  nested = {{ recurseForDerivations = true; inner = mk "inner-1.0" "echo ${{core}} > $out"; }};
  hidden = {{ notListed = mk "hidden-1.0" ""; }};
}}
"#
    )
}

fn head_nix() -> String {
    format!(
        r#"{NIX_PRELUDE}
let core = mk "core-1.1" "echo core > $out"; in
{{
  hello = mk "hello-2.0" "echo ${{core}} > $out";
  same = mk "same-1.0" "echo same > $out";
  added = mk "added-1.0" "echo added > $out";
  broken = mk "broken-1.0" "echo fixed > $out";
  typeError = 1 + "a";
  assertion = assert 1 == 2; mk "never" "";
  newlyBroken = throw "now broken";
  nested = {{ recurseForDerivations = true; inner = mk "inner-1.0" "echo ${{core}} > $out"; }};
  hidden = {{ notListed = mk "hidden-1.0" ""; }};
}}
"#
    )
}

const TOOLS: &str = r#"{ ok = derivation { name = "tool"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo > $out"]; }; bad = throw "tool broken"; }"#;

fn fixture() -> (GitRepo, String, String) {
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&base_nix())),
            ("tools.nix", Some(TOOLS)),
        ],
    );
    let head = repo.commit("head", &[("default.nix", Some(&head_nix()))]);
    (repo, base, head)
}

fn nix_instantiate(dir: &std::path::Path, attr: &str) -> String {
    let out = std::process::Command::new("nix-instantiate")
        .args(["default.nix", "-A", attr])
        .current_dir(dir)
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("nix-instantiate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn attrs(job: &Value) -> Vec<(String, Value)> {
    job["attrs"]
        .as_array()
        .expect("attrs")
        .iter()
        .map(|p| (p[0].as_str().expect("name").to_string(), p[1].clone()))
        .collect()
}

#[test]
fn eval_reports_drvs_and_per_attribute_errors() {
    let (repo, base, _) = fixture();
    let home = Home::new();
    let _server = home.start();
    let out = home.ekaci(&[
        "eval",
        "--repo",
        &repo.path().display().to_string(),
        "--rev",
        &base,
        "--job",
        "main",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1), "errors fail a job without allow_eval_failures");
    assert!(String::from_utf8_lossy(&out.stderr).contains("evaluation failed"));
    let report = json(&out);
    assert_eq!(report["commit"], base);
    assert_eq!(report["config_file"], ".eka-ci/config.json");
    let job = &report["jobs"][0];
    assert_eq!(job["jobset"]["key"]["job"], "main");
    assert_eq!(job["jobset"]["state"], "Evaluated");
    assert_eq!(job["reused"], false);
    let attrs = attrs(job);
    let names: Vec<&str> = attrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["assertion", "broken", "gone", "hello", "nested.inner", "same", "typeError"]);

    // Derivations match what Nix itself instantiates at that commit.
    repo.git(&["checkout", "-q", &base]);
    for (attr, value) in &attrs {
        if let Some(drv) = value.get("Drv") {
            assert_eq!(drv["drv_path"].as_str(), Some(nix_instantiate(repo.path(), attr).as_str()), "{attr}");
        }
    }
    let err = |name: &str| {
        attrs.iter().find(|(n, _)| n == name).expect(name).1["Error"]["message"]
            .as_str()
            .expect("message")
            .to_string()
    };
    assert!(err("broken").contains("broken on purpose"), "{}", err("broken"));
    assert!(err("assertion").contains("assertion"), "{}", err("assertion"));
    assert!(err("typeError").contains("cannot add"), "{}", err("typeError"));
    assert!(!err("typeError").contains('\u{1b}'), "ANSI escapes are stripped");
    assert!(
        err("typeError").contains("at default.nix:17:19:"),
        "paths are repository-relative: {}",
        err("typeError")
    );
    assert!(!err("typeError").contains("worktrees"), "the server's directories never show");
    assert_eq!(job["jobset"]["derivations"], 4);
    assert_eq!(job["jobset"]["errors"], 3);

    // The same commit again reuses the stored jobset.
    let again = json(&home.ekaci(&[
        "eval",
        "--repo",
        &repo.path().display().to_string(),
        "--rev",
        &base,
        "--job",
        "main",
        "--json",
    ]));
    assert_eq!(again["jobs"][0]["reused"], true);
    assert_eq!(again["jobs"][0]["jobset"]["id"], job["jobset"]["id"]);
    assert_eq!(again["jobs"][0]["attrs"], job["attrs"]);

    // A job that allows evaluation failures succeeds despite its error; the text output lists both.
    let out =
        home.ekaci(&["eval", "--repo", &repo.path().display().to_string(), "--rev", &base, "--job", "tools"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("job tools: 1 derivations, 1 evaluation errors (allowed)"), "{text}");
    assert!(text.contains("bad  error: tool broken"), "{text}");
    // Progress on a non-terminal: plain lines with the evaluation's counts, no escapes.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let short = eka_ci::text::short_sha(&base);
    assert!(
        stderr.contains(&format!(
            "evaluating tools @ {short}: listed 2, evaluated 2, instantiated 1, errors 1\n"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

fn diff_json(home: &Home, repo: &GitRepo, base: &str, head: &str) -> Value {
    let out = home.ekaci_change("diff", repo, base, head, &["--job", "main", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json(&out)
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().expect("list").iter().map(|c| c["attr"].as_str().expect("attr").to_string()).collect()
}

#[test]
fn diff_classifies_and_does_not_depend_on_the_graph_cache_size() {
    let (repo, base, head) = fixture();
    let home = Home::new();
    let server = home.start();
    let d = diff_json(&home, &repo, &base, &head);
    let job = &d["jobs"][0];
    assert_eq!(names(&job["added"]), ["added"]);
    assert_eq!(names(&job["removed"]), ["gone"]);
    assert_eq!(names(&job["changed"]), ["hello", "nested.inner"], "core changed under nested.inner");
    assert_eq!(job["unchanged"], 1);
    let errors: Vec<(String, bool, bool)> = job["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["attr"].as_str().expect("attr").to_string(),
                e["head_error"].is_null(),
                e["base_error"].is_null(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("assertion".to_string(), false, false),
            ("broken".to_string(), true, false),
            ("newlyBroken".to_string(), false, true),
            ("typeError".to_string(), false, false),
        ]
    );
    // Evaluation records a `throw`/`assert` failure cheaply; only the errors new in head get Nix's
    // message (found after the diff, cached per jobset), the others say that it was not computed.
    let error = |attr: &str, side: &str| -> String {
        let e = job["errors"].as_array().expect("errors").iter().find(|e| e["attr"] == attr).expect(attr);
        e[side].as_str().unwrap_or_default().to_string()
    };
    assert!(
        error("newlyBroken", "head_error").contains("now broken"),
        "{}",
        error("newlyBroken", "head_error")
    );
    assert_eq!(error("assertion", "head_error"), eka_ci::nix::eval::DEFERRED_ERROR);
    assert_eq!(error("assertion", "base_error"), eka_ci::nix::eval::DEFERRED_ERROR);
    assert!(error("typeError", "head_error").contains("cannot add"), "not a throw: found in the walk");
    // Asked again, the same answer (the message now comes from the cache).
    let again = diff_json(&home, &repo, &base, &head);
    assert_eq!(again["jobs"][0]["errors"], job["errors"]);
    drop(server);

    // The same diff with a graph cache far smaller than the graph gives the same answer.
    let small = Home::new();
    small.write_config("graph_lru_capacity = 2");
    let small_server = small.start();
    let d2 = diff_json(&small, &repo, &base, &head);
    // The graph really is far larger than that cache.
    let (_, _, body) = common::http_get(&small_server.http_address(), "/metrics");
    let metrics = String::from_utf8_lossy(&body);
    let nodes: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("eka_ci_graph_nodes_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("eka_ci_graph_nodes_total");
    assert!(nodes >= 10.0, "graph of {nodes} nodes against a capacity of 2");
    assert_eq!(d2["jobs"][0]["added"], job["added"]);
    assert_eq!(d2["jobs"][0]["changed"], job["changed"]);
    assert_eq!(d2["jobs"][0]["errors"], job["errors"]);

    // Text output on a non-terminal has no progress escapes.
    let out = small.ekaci(&[
        "diff",
        "--repo",
        &repo.path().display().to_string(),
        "--base",
        &base,
        "--head",
        &head,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("changed (2):") && text.contains("hello (hello-2.0)"), "{text}");
    assert!(text.contains("newly failing evaluation (1):\n    newlyBroken: now broken"), "{text}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\u{1b}'));
}

#[test]
fn bad_requests_get_clear_errors() {
    let (repo, base, _) = fixture();
    let home = Home::new();
    let _server = home.start();
    let path = repo.path().display().to_string();

    let out = home.ekaci(&["eval", "--repo", &path, "--rev", &base, "--job", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("job `nope` is not defined in .eka-ci/config.json")
            && err.contains("defined: main, tools"),
        "{err}"
    );

    let out = home.ekaci(&["eval", "--repo", &path, "--rev", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-branch"));

    let out = home.ekaci(&["eval", "--repo", "/definitely/not/here", "--rev", "HEAD"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot use repository /definitely/not/here"));

    // An invalid repository config names the fields.
    let bad = repo.commit(
        "bad config",
        &[(
            ".eka-ci/config.json",
            Some(r#"{ "jobs": { "x": { "file": "../escape.nix", "allow_eval_failures": "yes" } } }"#),
        )],
    );
    let out = home.ekaci(&["eval", "--repo", &path, "--rev", &bad]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(".eka-ci/config.json")
            && err.contains("jobs.x.file")
            && err.contains("jobs.x.allow_eval_failures"),
        "{err}"
    );

    // No config at all.
    let none = repo.commit("no config", &[(".eka-ci/config.json", None)]);
    let out = home.ekaci(&["eval", "--repo", &path, "--rev", &none]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no .eka-ci/config.json"));

    // A whole-job failure (missing file at that commit) is recorded in the jobset, not a crash.
    let missing = repo.commit(
        "restore config, drop file",
        &[(".eka-ci/config.json", Some(r#"{ "jobs": { "main": { "file": "default.nix" } } }"#))],
    );
    repo.git(&["rm", "-q", "default.nix"]);
    let missing2 = repo.commit("rm", &[]);
    let _ = missing;
    let out = home.ekaci(&["eval", "--repo", &path, "--rev", &missing2, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("jobs.main.file: default.nix does not exist in the repository"), "{stderr}");
}
