//! Size checks through the real server, the fake GitHub, real git and real Nix builds: an output that
//! doubles, one that grows within the limit, and one whose runtime reference changes package; the
//! "EkaCI: Size Check (<job>)" check runs (neutral, and failure with `fail_on_increase`), and the recorded
//! sizes against what `nix path-info` says.

use crate::common;
use crate::github_app::{nix, pull_request, summary, Setup, REPO};

use common::{nonce, GitRepo};
use serde_json::Value;

/// Two jobs over the same file: `main` warns, `strict` fails on growth; the baseline branch is the
/// fixture pull request's base (`master`).
const CONFIG: &str = r#"{ "jobs": {
  "main": { "file": "default.nix", "size_check": { "max_increase_percent": 10, "base_branch": "master" } },
  "strict": { "file": "default.nix",
              "size_check": { "max_increase_percent": 10, "base_branch": "master", "fail_on_increase": true } }
} }"#;

/// An output of `n` × 100 bytes.
fn writes(n: u32) -> String {
    format!(
        r#"i=0; while [ $i -lt {n} ]; do echo 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456; i=$((i+1)); done > $out"#
    )
}

fn body(grow: u32, steady: u32, dep: &str) -> String {
    format!(
        r#"dep = mk "dep-1.0" "echo dep > $out" [];
           other = mk "other-2.0" "echo oth > $out" [];
           grow = mk "grow-1.0" "{}" [];
           steady = mk "steady-1.0" "{}" [];
           refs = mk "refs-1.0" "echo ${{{dep}}} > $out" [];"#,
        writes(grow),
        writes(steady)
    )
}

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

#[test]
fn sizes_that_grow_are_reported_with_exact_figures_and_dependency_changes() {
    let n = nonce();
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&n, &body(20, 20, "dep"))))],
    );
    // grow doubles, steady grows by one line in twenty (+5 %), refs now refers to another package.
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, &body(40, 21, "other"))))]);
    let mut s = Setup::new("");
    s.pr("sz-1", "opened", 1, repo.path(), &head, &base, "octocat");

    let main = s.wait_completed(&head, "EkaCI: Size Check (main)");
    let strict = s.wait_completed(&head, "EkaCI: Size Check (strict)");
    assert_eq!(main["conclusion"], "neutral", "{main:#}");
    assert_eq!(strict["conclusion"], "failure", "{strict:#}");
    assert_eq!(main["output"]["title"], "1 attribute(s) grew by more than 10 %", "{main:#}");
    let text = summary(&main);
    assert!(text.contains("`grow`"), "{text}");
    assert!(!text.contains("| `steady`"), "within the limit: {text}");
    assert!(text.contains("- `refs`: +other 2\\.0; −dep 1\\.0"), "{text}");
    assert!(text.contains("(3 compared, 0 without a baseline)"), "{text}");
    // The gate is not decided by sizes.
    assert_eq!(s.wait_completed(&head, "EkaCI: Evaluate Job (main)")["conclusion"], "success");

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
    let (g_base, g_head) = (&base_sizes["grow"], &head_sizes["grow"]);
    assert!(g_head.nar_size > g_base.nar_size * 19 / 10, "{g_base:?} {g_head:?}");
    assert!(head_sizes["refs"].references.iter().any(|r| r.ends_with("-other-2.0")), "{head_sizes:?}");
    assert!(base_sizes["refs"].references.iter().any(|r| r.ends_with("-dep-1.0")), "{base_sizes:?}");
    // The base commit's sizes are the branch's newest: the baseline of the next pull request.
    let baseline =
        eka_ci::sizes::baseline(&store, &url, "master", "main", &["grow", "refs"]).expect("baseline");
    assert_eq!(baseline["grow"], *g_base);
    let _ = REPO;
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
