//! The change summary end to end: a real git repository with a base and a head commit, `ekaci summary`
//! against the real server (real Nix evaluation, the real derivation graph), then the four
//! `/v1/commits/{sha}/…` routes over real HTTP — cached summaries, summaries computed on demand from
//! stored jobsets, limits, and the exact errors of bad input.

use crate::common;

use common::{get_json, http_get, json, GitRepo, Home};
use serde_json::Value;

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

/// `pkg pname version script`: a derivation with `pname` and `version`, built by /bin/sh.
const PRELUDE: &str = r#"
let
  pkg = pname: version: script: derivation {
    name = "${pname}-${version}";
    inherit pname version;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };
in
"#;

/// Base: a chain core ← hello ← app, and `gone`.
fn base_nix() -> String {
    format!(
        r#"{PRELUDE}
let
  core = pkg "core" "1.0" "echo core > $out";
  hello = pkg "hello" "1.0" "echo ${{core}} > $out";
in
{{
  inherit core hello;
  app = pkg "app" "1.0" "echo ${{hello}} > $out";
  gone = pkg "gone" "1.0" "echo gone > $out";
}}
"#
    )
}

/// Head: core's build changes (rebuild only), hello is bumped to 2.0, app rebuilds because of both,
/// `gone` is removed and `added` is new.
fn head_nix() -> String {
    format!(
        r#"{PRELUDE}
let
  core = pkg "core" "1.0" "echo core patched > $out";
  hello = pkg "hello" "2.0" "echo ${{core}} > $out";
in
{{
  inherit core hello;
  app = pkg "app" "1.0" "echo ${{hello}} > $out";
  added = pkg "added" "0.1" "echo added > $out";
}}
"#
    )
}

fn fixture() -> (GitRepo, String, String) {
    let repo = GitRepo::new();
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&base_nix()))]);
    let head = repo.commit("head", &[("default.nix", Some(&head_nix()))]);
    (repo, base, head)
}

/// Asserts a JSON error answer with exactly this status and message.
fn assert_error(addr: &str, path: &str, status: u16, message: &str) {
    let (code, body) = get_json(addr, path);
    assert_eq!((code, &body), (status, &serde_json::json!({ "error": message, "status": status })), "{path}");
}

fn attrs_of(list: &Value) -> Vec<&str> {
    list.as_array().expect("array").iter().map(|c| c["attr"].as_str().expect("attr")).collect()
}

#[test]
fn summary_over_the_cli_and_http() {
    let (repo, base, head) = fixture();
    let home = Home::new();
    let server = home.start();
    let addr = server.http_address();
    // Local repositories are private: every request of this test carries a read token.
    common::send_token(Some(&home.token("summary-test", "read")));
    let repo_arg = repo.path().display().to_string();

    // The CLI: JSON, then markdown (the same summary, from the cache).
    let out =
        home.ekaci(&["summary", "--repo", &repo_arg, "--base", &base, "--head", &head, "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json(&out);
    assert_eq!((s["base_sha"].as_str(), s["head_sha"].as_str()), (Some(base.as_str()), Some(head.as_str())));
    let jobs = s["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job["job"], "main");
    assert_eq!(job["eval"], "Ok");
    assert_eq!(attrs_of(&job["changes"]), ["added", "app", "core", "gone", "hello"]);
    let kinds: Vec<&Value> =
        job["changes"].as_array().expect("changes").iter().map(|c| &c["kinds"]).collect();
    assert_eq!(
        kinds,
        [
            &serde_json::json!(["Added"]),
            &serde_json::json!(["RebuildOnly"]),
            &serde_json::json!(["RebuildOnly"]),
            &serde_json::json!(["Removed"]),
            &serde_json::json!(["VersionBump"]),
        ]
    );
    assert_eq!(
        job["counts"],
        serde_json::json!({ "added": 1, "removed": 1, "version_bump": 1, "license_change": 0,
                            "maintainer_change": 0, "rebuild_only": 2 })
    );
    let impact = &job["impact"];
    assert_eq!(impact["per_system"][0]["rebuilds"], 4, "{impact}");
    assert_eq!(impact["per_system"][0]["bucket"], "UpTo10");
    assert_eq!((impact["changed_drvs"].as_u64(), impact["must_rebuild"].as_u64()), (Some(4), Some(4)));
    let top: Vec<(&str, u64)> = impact["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|b| (b["attr"].as_str().expect("attr"), b["dependents"].as_u64().expect("dependents")))
        .collect();
    assert_eq!(
        top,
        [("core", 2), ("hello", 1), ("added", 0), ("app", 0)],
        "the chain's blast radius is exact"
    );
    let markdown = s["markdown"].as_str().expect("markdown").to_string();
    assert!(!markdown.is_empty());

    let out = home.ekaci(&["summary", "--repo", &repo_arg, "--base", &base, "--head", &head]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(printed.trim_end(), markdown.trim_end(), "md prints the rendered markdown");

    // HTTP, from the cache the CLI filled (no base given).
    let (code, body) = get_json(&addr, &format!("/v1/commits/{head}/change-summary"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        (body["base_sha"].as_str(), body["head_sha"].as_str()),
        (Some(base.as_str()), Some(head.as_str()))
    );
    assert_eq!(body["markdown"].as_str(), Some(markdown.as_str()));
    assert_eq!(body["truncation"], "None");
    assert_eq!(body["jobs"][0]["changes_total"], 5);
    assert_eq!(attrs_of(&body["jobs"][0]["changes"]), ["added", "app", "core", "gone", "hello"]);

    let (code, headers, md) =
        http_get(&addr, &format!("/v1/commits/{head}/change-summary.md?base_sha={base}&job=main"));
    assert_eq!(code, 200);
    assert!(headers.to_ascii_lowercase().contains("content-type: text/markdown;charset=utf-8"), "{headers}");
    assert_eq!(String::from_utf8_lossy(&md), markdown);

    let (code, body) = get_json(&addr, &format!("/v1/commits/{head}/package-changes?max_packages_listed=2"));
    assert_eq!(code, 200, "{body}");
    let pc = &body["jobs"][0];
    assert_eq!(
        (pc["job"].as_str(), pc["changes_total"].as_u64(), pc["changes_listed"].as_u64()),
        (Some("main"), Some(5), Some(2))
    );
    assert_eq!(attrs_of(&pc["changes"]), ["added", "app"]);
    assert_eq!(pc["counts"], job["counts"]);
    // Limits above ten times the default are clamped, not refused.
    let (code, body) =
        get_json(&addr, &format!("/v1/commits/{head}/package-changes?max_packages_listed=100000000"));
    assert_eq!((code, body["jobs"][0]["changes_listed"].as_u64()), (200, Some(5)));

    let (code, body) = get_json(&addr, &format!("/v1/commits/{head}/rebuild-impact?max_top_blast_radius=1"));
    assert_eq!(code, 200, "{body}");
    let ri = &body["jobs"][0];
    assert_eq!(ri["top_blast_radius"].as_array().map(|a| a.len()), Some(1));
    assert_eq!(
        (ri["top_blast_radius"][0]["attr"].as_str(), ri["top_blast_radius"][0]["dependents"].as_u64()),
        (Some("core"), Some(2))
    );
    assert_eq!(ri["per_system"], impact["per_system"]);
    assert_eq!(ri["must_rebuild"], 4);

    // Computed on demand from the stored jobsets: the change the other way round.
    let (code, body) = get_json(&addr, &format!("/v1/commits/{base}/package-changes?base_sha={head}"));
    assert_eq!(code, 200, "{body}");
    let back = &body["jobs"][0];
    assert_eq!(back["counts"]["added"], 1);
    assert_eq!(back["counts"]["removed"], 1);
    assert_eq!(back["counts"]["version_bump"], 1);
    assert_eq!(attrs_of(&back["changes"]), ["added", "app", "core", "gone", "hello"]);

    // Nothing to show.
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    assert_error(
        &addr,
        &format!("/v1/commits/{unknown}/change-summary"),
        404,
        &format!(
            "no change summary for commit {unknown}: none has been computed yet (pass base_sha to compute one \
             from stored evaluations)"
        ),
    );
    assert_error(
        &addr,
        &format!("/v1/commits/{head}/rebuild-impact?base_sha={unknown}"),
        404,
        &format!(
            "no change summary for commit {head} against base {unknown}: no finished evaluations of both \
             commits are stored"
        ),
    );
    assert_error(
        &addr,
        &format!("/v1/commits/{head}/change-summary.md?job=nope"),
        404,
        &format!(
            "no change summary for commit {head} for job `nope`: none has been computed yet (pass base_sha \
             to compute one from stored evaluations)"
        ),
    );

    // Bad input.
    let bad_sha = "invalid commit `abc`: expected a 40- or 64-character hexadecimal SHA";
    for route in ["package-changes", "rebuild-impact", "change-summary", "change-summary.md"] {
        assert_error(&addr, &format!("/v1/commits/abc/{route}"), 400, bad_sha);
    }
    let positive = "expected a positive integer";
    for (query, message) in [
        ("max_packages_listed=0", format!("invalid query parameter `max_packages_listed`=`0`: {positive}")),
        (
            "max_packages_listed=ten",
            format!("invalid query parameter `max_packages_listed`=`ten`: {positive}"),
        ),
        (
            "max_top_blast_radius=-1",
            format!("invalid query parameter `max_top_blast_radius`=`-1`: {positive}"),
        ),
        (
            "base_sha=main",
            "invalid query parameter `base_sha`=`main`: expected a 40- or 64-character hexadecimal SHA"
                .to_string(),
        ),
        ("job=", "invalid query parameter `job`=``: expected a job name".to_string()),
    ] {
        assert_error(&addr, &format!("/v1/commits/{head}/change-summary?{query}"), 400, &message);
    }
    let g = "g".repeat(40);
    assert_error(
        &addr,
        &format!("/v1/commits/{g}/change-summary"),
        400,
        &format!("invalid commit `{g}`: expected a 40- or 64-character hexadecimal SHA"),
    );

    // `ekaci review` ends with the same summary, just before its result line.
    let out = home.ekaci(&["review", "--repo", &repo_arg, "--base", &base, "--head", &head]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.ends_with(&format!("\n{}\n\nresult: ok\n", markdown.trim_end())), "{text}");

    // The CLI refuses an unknown format before asking the server.
    let out =
        home.ekaci(&["summary", "--repo", &repo_arg, "--base", &base, "--head", &head, "--format", "xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "ekaci: invalid --format `xml`: expected md or json\n");
    drop(server);
}

#[test]
fn ekaci_summary_uses_the_head_configuration_and_one_job() {
    let repo = GitRepo::new();
    let two_jobs = r#"{ "jobs": { "main": { "file": "default.nix" }, "other": { "file": "default.nix" } },
                        "rebuild_impact": { "max_top_blast_radius": 1 } }"#;
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(two_jobs)), ("default.nix", Some(&base_nix()))]);
    let head = repo.commit("head", &[("default.nix", Some(&head_nix()))]);
    let home = Home::new();
    let _server = home.start();
    let repo_arg = repo.path().display().to_string();

    let out = home.ekaci(&[
        "summary", "--repo", &repo_arg, "--base", &base, "--head", &head, "--job", "other", "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = json(&out);
    let jobs = s["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.iter().map(|j| j["job"].as_str().expect("job")).collect::<Vec<_>>(), ["other"]);
    assert_eq!(jobs[0]["settings"]["max_top_blast_radius"], 1);
    assert_eq!(jobs[0]["impact"]["top"], serde_json::json!([jobs[0]["impact"]["top"][0].clone()]));
    assert_eq!(jobs[0]["impact"]["top"][0]["attr"], "core");

    let out =
        home.ekaci(&["summary", "--repo", &repo_arg, "--base", &base, "--head", &head, "--job", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Plain progress lines (stderr is not a terminal) come first; the error is the last line.
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("ekaci: job `nope` is not defined in .eka-ci/config.json at "), "{stderr}");
}
