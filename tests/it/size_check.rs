//! Size checks through the real server, the fake GitHub, real git and real Nix builds: an output that
//! doubles (N bytes on base, 2N on head), one that grows within the limit, and one whose runtime
//! references change (one package added, one removed, one in another version); the "EkaCI: Size Check
//! (<job>)" check runs (neutral, and failure with `fail_on_increase`), the change summary (check run,
//! `/v1/commits/{sha}/change-summary`, `ekaci summary`, `ekaci review`) and the recorded sizes against
//! what `nix path-info` says.

use crate::common;
use crate::github_app::{nix, pull_request, summary, wait_for, Setup, REPO};

use common::{get_json, json, nonce, GitRepo, Home};
use serde_json::{json, Value};

/// Two jobs over the same file: `main` warns, `strict` fails on growth; the baseline branch is the
/// fixture pull request's base (`master`).
const CONFIG: &str = r#"{ "jobs": {
  "main": { "file": "default.nix", "size_check": { "max_increase_percent": 10, "base_branch": "master" } },
  "strict": { "file": "default.nix",
              "size_check": { "max_increase_percent": 10, "base_branch": "master", "fail_on_increase": true } }
} }"#;

/// Bytes per line [`writes`] writes.
const LINE: u64 = 98;

/// An output of `n` × [`LINE`] bytes.
fn writes(n: u32) -> String {
    format!(
        r#"i=0; while [ $i -lt {n} ]; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456; i=$((i+1)); done > $out"#
    )
}

/// `grow` writes `grow` lines, `steady` `steady` lines, and `refs` mentions the outputs of `refs`.
fn body(grow: u32, steady: u32, refs: &[&str]) -> String {
    let refs: Vec<String> = refs.iter().map(|r| format!("${{{r}}}")).collect();
    format!(
        r#"dep = mk "dep-1.0" "echo dep > $out" [];
           libold = mk "lib-1.0" "echo lib1 > $out" [];
           libnew = mk "lib-1.1" "echo lib2 > $out" [];
           keep = mk "keep-1.0" "echo keep > $out" [];
           other = mk "other-2.0" "echo oth > $out" [];
           grow = mk "grow-1.0" "{}" [];
           steady = mk "steady-1.0" "{}" [];
           refs = mk "refs-1.0" "echo {} > $out" [];"#,
        writes(grow),
        writes(steady),
        refs.join(" ")
    )
}

/// Base refers to dep, lib 1.0 and keep; head to other, lib 1.1 and keep.
const BASE_REFS: [&str; 3] = ["dep", "libold", "keep"];
const HEAD_REFS: [&str; 3] = ["other", "libnew", "keep"];
/// How the change summary lists `refs`.
const REFS_LINE: &str = "- `refs`: `lib 1.0 → 1.1`, `+ other-2.0`, `- dep-1.0`\n";

/// `nix path-info --json --closure-size` of `path`: (narSize, closureSize).
fn path_info(path: &str) -> (u64, u64) {
    let out = std::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "path-info", "--json", "--closure-size", path])
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("nix path-info");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let e = &v[0];
    (e["narSize"].as_u64().expect("narSize"), e["closureSize"].as_u64().expect("closureSize"))
}

fn output_of(drv: &str) -> String {
    let out =
        std::process::Command::new("nix-store").args(["-q", "--outputs", drv]).output().expect("nix-store");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The dependency changes of `refs` as JSON (`SizeSummary::dependencies`).
fn refs_json() -> Value {
    json!([{ "attr": "refs", "changes": [
        { "Version": { "name": "lib", "base": "1.0", "head": "1.1" } },
        { "Added": { "name": "other", "version": "2.0" } },
        { "Removed": { "name": "dep", "version": "1.0" } },
    ] }])
}

/// Checks a job's `sizes` (JSON of `SizeSummary`) against Nix: only `grow` grew too much, by exactly the
/// bytes head wrote more, with the NAR and closure sizes `nix path-info` gives for its outputs.
fn check_sizes(sizes: &Value, base_grow_drv: &str, head_grow_drv: &str) {
    assert_eq!(sizes["increases"].as_array().map(Vec::len), Some(1), "{sizes:#}");
    let grow = &sizes["increases"][0];
    assert_eq!(grow["attr"], "grow");
    let (nar_b, closure_b) = path_info(&output_of(base_grow_drv));
    let (nar_h, closure_h) = path_info(&output_of(head_grow_drv));
    assert_eq!(grow["nar_before"], nar_b, "{sizes:#}");
    assert_eq!(grow["nar_after"], nar_h, "{sizes:#}");
    assert_eq!(grow["closure_before"], closure_b, "{sizes:#}");
    assert_eq!(grow["closure_after"], closure_h, "{sizes:#}");
    // Head wrote 20 lines more: the file is exactly that much larger (both sizes are 8-byte aligned).
    assert_eq!(nar_h - nar_b, 20 * LINE);
    assert_eq!(sizes["dependencies"], refs_json(), "{sizes:#}");
}

/// The job named `name` of a list of JSON objects with a `job` field.
fn job<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|j| j["job"] == name))
        .unwrap_or_else(|| panic!("no job {name} in {list:#}"))
}

#[test]
fn sizes_that_grow_are_reported_with_exact_figures_and_dependency_changes() {
    let n = nonce();
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&n, &body(20, 20, &BASE_REFS))))],
    );
    // grow doubles, steady grows by one line in twenty (+5 %), refs refers to other packages.
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, &body(40, 21, &HEAD_REFS))))]);
    let mut s = Setup::new("");
    s.pr("sz-1", "opened", 1, repo.path(), &head, &base, "octocat");

    let main = s.wait_completed(&head, "EkaCI: Size Check (main)");
    let strict = s.wait_completed(&head, "EkaCI: Size Check (strict)");
    assert_eq!(main["conclusion"], "neutral", "{main:#}");
    assert_eq!(strict["conclusion"], "failure", "{strict:#}");
    assert_eq!(main["output"]["title"], "1 attribute(s) grew by more than 10 %", "{main:#}");
    let text = summary(&main);
    assert!(text.contains("| `grow` |"), "{text}");
    assert!(!text.contains("| `steady`"), "within the limit: {text}");
    assert!(text.contains(&format!("**Runtime dependency changes (1):**\n\n{REFS_LINE}")), "{text}");
    assert!(text.contains("(3 compared, 0 without a baseline)"), "{text}");
    // The gate is not decided by sizes.
    assert_eq!(s.wait_completed(&head, "EkaCI: Evaluate Job (main)")["conclusion"], "success");

    // The change summary is posted again with the size sections once the sizes are measured.
    let posted = wait_for("the change summary with sizes", || {
        let run = s.run(&head, "EkaCI: Change Summary")?;
        let text = summary(&run);
        (text.matches("**Sizes:**").count() == 2).then_some(text)
    });
    assert!(
        posted.contains("**Sizes:** 1 attribute grew by more than 10 % against the newest sizes on `master`"),
        "{posted}"
    );
    // NAR of a 1,960-byte file: 2,072 bytes; of 3,920 bytes: 4,032 (as docs/change-summary.md shows).
    let row = "#### Size increases (1)\n\n| attribute | NAR before | NAR after | NAR change | closure before | closure after | closure change |\n| --- | --- | --- | --- | --- | --- | --- |\n| `grow` | 2.0 KiB | 3.9 KiB | +94.6 % | 2.0 KiB | 3.9 KiB | +94.6 % |\n";
    assert!(posted.contains(row), "{posted}");
    assert!(posted.contains(&format!("#### Runtime dependency changes (1)\n\n{REFS_LINE}")), "{posted}");

    // The HTTP API and `ekaci summary` show the same, from what was stored.
    common::send_token(Some(&s.home.token("sizes", "read")));
    let addr = s.server().http_address();
    let (code, api) = get_json(&addr, &format!("/v1/commits/{head}/change-summary?base_sha={base}"));
    assert_eq!(code, 200, "{api:#}");
    assert!(api["markdown"].as_str().is_some_and(|m| m.contains(REFS_LINE)), "{api:#}");
    let repo_path = repo.path().display().to_string();
    let out = s
        .home
        .ekaci(&["summary", "--repo", &repo_path, "--base", &base, "--head", &head, "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli = json(&out);
    assert!(cli["markdown"].as_str().is_some_and(|m| m.contains(REFS_LINE)), "{cli:#}");

    // The recorded figures are Nix's.
    s.stop();
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open the database");
    let url = format!("file://{}", repo.path().display());
    let head_sizes = eka_ci::sizes::at_commit(&store, &url, &head, "main").expect("head sizes");
    let base_sizes = eka_ci::sizes::at_commit(&store, &url, &base, "main").expect("base sizes");
    assert_eq!(head_sizes.keys().collect::<Vec<_>>(), ["grow", "refs", "steady"]);
    assert_eq!(base_sizes.keys().collect::<Vec<_>>(), ["grow", "refs", "steady"]);
    for (side, sizes) in [("head", &head_sizes), ("base", &base_sizes)] {
        for (attr, s) in sizes.iter() {
            let (nar, closure) = path_info(&output_of(&s.drv));
            assert_eq!((s.nar_size, s.closure_size), (nar, closure), "{side} {attr}");
        }
    }
    let (base_grow, head_grow) = (&base_sizes["grow"].drv, &head_sizes["grow"].drv);
    check_sizes(&job(&api["jobs"], "main")["sizes"], base_grow, head_grow);
    check_sizes(&job(&api["jobs"], "strict")["sizes"], base_grow, head_grow);
    check_sizes(job(&cli["sizes"], "main"), base_grow, head_grow);
    assert!(head_sizes["refs"].references.iter().any(|r| r.ends_with("-other-2.0")), "{head_sizes:?}");
    assert!(base_sizes["refs"].references.iter().any(|r| r.ends_with("-dep-1.0")), "{base_sizes:?}");
    // The base commit's sizes are the branch's newest: the baseline of the next pull request.
    let baseline =
        eka_ci::sizes::baseline(&store, &url, "master", "main", &["grow", "refs"]).expect("baseline");
    assert_eq!(baseline["grow"], base_sizes["grow"]);
    let _ = REPO;
}

#[test]
fn ekaci_review_measures_sizes_against_the_base_commit() {
    let n = nonce();
    let repo = GitRepo::new();
    let config = r#"{ "jobs": { "main": { "file": "default.nix",
        "size_check": { "max_increase_percent": 10, "base_branch": "master" } } } }"#;
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(config)), ("default.nix", Some(&nix(&n, &body(20, 20, &BASE_REFS))))],
    );
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, &body(40, 21, &HEAD_REFS))))]);
    let home = Home::new();
    let server = home.start();
    let out = home.review(&repo, &base, &head);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sizes never fail a review: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let md = report["summary_markdown"].as_str().unwrap_or_default().to_string();
    assert!(md.contains("**Sizes:** 1 attribute grew by more than 10 % against the base commit"), "{md}");
    assert!(md.contains(&format!("### Runtime dependency changes (1)\n\n{REFS_LINE}")), "{md}");
    let sizes = job(&report["summary"]["sizes"], "main").clone();
    // `ekaci summary` of the same change shows what the review stored.
    let repo_path = repo.path().display().to_string();
    let out = home.ekaci(&["summary", "--repo", &repo_path, "--base", &base, "--head", &head]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("### Size increases (1)\n"), "{text}");
    assert!(text.contains(REFS_LINE), "{text}");
    server.stop();
    let store = eka_ci::store::Store::open(&home.db()).expect("open the database");
    let url = eka_ci::checkout::local_url(repo.path());
    let head_sizes = eka_ci::sizes::at_commit(&store, &url, &head, "main").expect("head sizes");
    let base_sizes = eka_ci::sizes::at_commit(&store, &url, &base, "main").expect("base sizes");
    check_sizes(&sizes, &base_sizes["grow"].drv, &head_sizes["grow"].drv);
}

#[test]
fn a_bad_size_check_is_a_configuration_error_naming_the_field() {
    let repo = GitRepo::new();
    let bad = r#"{ "jobs": { "main": { "file": "default.nix",
        "size_check": { "max_increase_percent": -1, "base_branch": "master", "fail_on_increase": "yes" } } } }"#;
    let base = repo.commit("base", &[(".eka-ci/config.json", Some(bad)), ("default.nix", Some("{ }"))]);
    let head = repo.commit("head", &[("README", Some("x"))]);
    let s = Setup::new("");
    let body = pull_request("opened", 2, repo.path(), &head, &base, false, "octocat");
    assert_eq!(s.deliver("pull_request", "sz-2", &body), 202);
    let configure = s.wait_completed(&head, "EkaCI: Configure");
    assert_eq!(configure["conclusion"], "failure", "{configure:#}");
    let text = summary(&configure);
    // Field paths as the Configure check shows them (Markdown-escaped).
    assert!(text.contains(r"jobs\.main\.size\_check\.max\_increase\_percent**: must be a number"), "{text}");
    assert!(text.contains(r"jobs\.main\.size\_check\.fail\_on\_increase**: expected a boolean"), "{text}");
}
