//! `ekaci review --no-build`: the same evaluation (an evaluated base reused as `ekaci summary` reuses it),
//! diff and change summary as a review, with nothing built and no check run; it fails only on evaluation
//! (errors new in head, a failed head evaluation). The same change reviewed without the switch is built, so
//! these tests could tell the two apart.

use crate::common;

use common::{attr, json, nonce, nonce_prelude, GitRepo, Home, FILE_JOB as CONFIG};
use std::path::Path;
use std::process::Output;

fn no_build(home: &Home, repo: &GitRepo, base: &str, head: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--no-build"];
    args.extend_from_slice(extra);
    home.ekaci_change("review", repo, base, head, &args)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every derivation with a build state (`ekaci builds --json`).
fn build_records(home: &Home) -> Vec<serde_json::Value> {
    let out = home.ekaci(&["builds", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    json(&out).as_array().expect("a list").clone()
}

/// A package set with `lib` under `app`; `extra` is spliced into the attribute set.
fn package_set(prelude: &str, lib_script: &str, extra: &str) -> String {
    format!(
        r#"{prelude} rec {{
  lib = mk "lib-1" "{lib_script}" [];
  app = mk "app-1" "echo app > $out" [ lib ];
  {extra}
}}"#
    )
}

/// A derivation whose builder leaves `marker` behind, then fails: proof of whether it was ever started.
fn failing_with_marker(marker: &Path) -> String {
    format!(
        r#"broken = mk "broken-1" ": > {}; echo 'broken: fails on purpose' >&2; exit 1" [];"#,
        marker.display()
    )
}

#[test]
fn no_build_reports_an_added_failing_derivation_without_building_it() {
    let p = nonce_prelude(&nonce());
    let marker_dir = tempfile::tempdir().expect("tmp");
    // Builds run as a Nix build user: the directory must be writable for it.
    std::fs::set_permissions(marker_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("chmod");
    let marker = marker_dir.path().join("broken-was-built");
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&package_set(&p, "echo lib > $out", ""))),
        ],
    );
    // head: a broken package added, and lib changed (so app is changed too).
    let head = repo.commit(
        "add broken, change lib",
        &[("default.nix", Some(&package_set(&p, "echo lib2 > $out", &failing_with_marker(&marker))))],
    );
    let home = Home::new();
    let server = home.start();

    let out = no_build(&home, &repo, &base, &head, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "nothing built, nothing failed: {}", text(&out).1);
    let report = json(&out);
    assert_eq!(report["builds_skipped"], true, "{report}");
    assert_eq!(report["failed"], false, "{report}");
    assert_eq!(report["checks"], serde_json::json!([]));
    let job = &report["jobs"][0];
    let broken = attr(job, "broken");
    assert_eq!(broken["verdict"], "AddedNotBuilt", "{broken}");
    assert_eq!(broken["head"]["state"], "not-built");
    assert_eq!(broken["head"]["detail"], "not built (--no-build)");
    assert_eq!(attr(job, "lib")["verdict"], "ChangedNotBuilt");
    assert_eq!(attr(job, "app")["verdict"], "ChangedNotBuilt", "app changed with its dependency");
    assert_eq!(attr(job, "app")["base"]["state"], "not-built");
    // The change summary is computed as for any review: lib and app change, broken is added.
    let summary = &report["summary"]["jobs"][0];
    assert!(summary.is_object(), "the change summary is there: {report}");
    let markdown = report["summary_markdown"].as_str().expect("markdown");
    assert!(markdown.contains("broken") && markdown.contains("lib"), "{markdown}");
    // Nothing was started: no build record, and the builder's side effect never happened.
    assert_eq!(build_records(&home), Vec::<serde_json::Value>::new());
    assert!(!marker.exists(), "the failing builder never ran");

    // The text form says so plainly, names the added attribute, and shows progress on stderr; base,
    // evaluated by the first review, is reused.
    let out = no_build(&home, &repo, &base, &head, &[]);
    assert_eq!(out.status.code(), Some(0));
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("nothing was built (--no-build)"), "{stdout}");
    assert!(stdout.contains("builds: not built (--no-build)"), "{stdout}");
    assert!(stdout.contains("added, not built (--no-build) (1):\n    broken (broken-1)"), "{stdout}");
    assert!(stdout.contains("changed, not built (--no-build) (2):"), "{stdout}");
    assert!(stdout.contains("result: ok (evaluation only; nothing was built: --no-build)"), "{stdout}");
    assert!(stderr.contains(&format!("reusing main @ {} (already evaluated)", &base[..12])), "{stderr}");
    assert!(build_records(&home).is_empty() && !marker.exists());

    // A second change against the same (evaluated) base reuses it, as `ekaci summary` does.
    repo.git(&["checkout", "-q", &base]);
    let head2 = repo.commit("change lib", &[("default.nix", Some(&package_set(&p, "echo lib3 > $out", "")))]);
    let out = no_build(&home, &repo, &base, &head2, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let stderr = text(&out).1;
    assert!(stderr.contains(&format!("evaluating main @ {}", &head2[..12])), "{stderr}");
    assert!(stderr.contains(&format!("reusing main @ {} (already evaluated)", &base[..12])), "{stderr}");
    assert!(!stderr.contains(&format!("checking out {}", &base[..12])), "{stderr}");
    let log = server.log();
    let evaluations_of_base = log
        .lines()
        .filter(|l| l.contains("evaluating a jobset") && l.contains(&format!("commit={base}")))
        .count();
    assert_eq!(evaluations_of_base, 1, "{log}");

    // The same change without --no-build is built: broken fails, the review fails, the builder ran.
    let out = home.review(&repo, &base, &head);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    let report = json(&out);
    assert_eq!(report["builds_skipped"], false);
    assert_eq!(attr(&report["jobs"][0], "broken")["verdict"], "AddedFailing");
    assert!(marker.exists(), "the builder ran this time: {report}");
    let failures = home.ekaci(&["builds", "--state", "failure", "--json"]);
    assert_eq!(json(&failures).as_array().map(Vec::len), Some(1), "broken");
    assert!(!build_records(&home).is_empty());
}

#[test]
fn no_build_exits_1_on_evaluation_errors_new_in_head_and_on_a_failed_evaluation() {
    let p = nonce_prelude(&nonce());
    let repo = GitRepo::new();
    let old = r#"old = throw "old: broken since base";"#;
    let base = repo.commit(
        "base",
        &[
            (".eka-ci/config.json", Some(CONFIG)),
            ("default.nix", Some(&package_set(&p, "echo lib > $out", old))),
        ],
    );
    // An error head keeps from base is not held against it.
    let kept = repo.commit("lib", &[("default.nix", Some(&package_set(&p, "echo lib2 > $out", old)))]);
    repo.git(&["checkout", "-q", &base]);
    let new_error = format!(r#"{old} fresh = throw "fresh: broken by this change";"#);
    let bad =
        repo.commit("break fresh", &[("default.nix", Some(&package_set(&p, "echo lib > $out", &new_error)))]);
    repo.git(&["checkout", "-q", &base]);
    let unparsable = repo.commit("syntax error", &[("default.nix", Some("{ this is not nix"))]);
    let home = Home::new();
    let _server = home.start();

    let out = no_build(&home, &repo, &base, &kept, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).0);

    let out = no_build(&home, &repo, &base, &bad, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    let (stdout, stderr) = text(&out);
    assert!(stdout.contains("newly failing evaluation (1):\n    fresh: "), "{stdout}");
    assert!(stdout.contains("fresh: broken by this change"), "{stdout}");
    assert!(stdout.contains("job main: FAIL") && stdout.contains("result: FAIL"), "{stdout}");
    assert!(stderr.contains("head has new evaluation errors or its evaluation failed"), "{stderr}");
    let report = json(&no_build(&home, &repo, &base, &bad, &["--json"]));
    assert_eq!((report["failed"].clone(), report["builds_skipped"].clone()), (true.into(), true.into()));
    let errors = report["jobs"][0]["diff"]["errors"].as_array().expect("errors").clone();
    assert!(errors.iter().any(|e| e["attr"] == "fresh" && e["base_error"].is_null()), "{errors:?}");

    let out = no_build(&home, &repo, &base, &unparsable, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    assert!(text(&out).0.contains("evaluation failed"), "{}", text(&out).0);
    assert!(build_records(&home).is_empty(), "nothing was built by any of them");
}
