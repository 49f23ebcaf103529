//! The review path with a base commit already evaluated (the usual case: many pull requests share one
//! base): `ekaci summary` and `ekaci diff` reuse base's jobsets without evaluating or checking base out
//! again, say so on the progress line, give the same answer as a fresh server, and leave no worktree
//! behind. A base with a job head does not have is checked out as before, so that the job is reported.
//! A base with nothing evaluated (a cold review) goes alongside head (checked out while head evaluates),
//! and is dropped with its checkout when head fails.

use crate::common;
use crate::github_app::wait_for;

use common::{GitRepo, Home, NIX_PRELUDE};
use std::process::Output;

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

/// A small package set whose library `lib` the changes touch (a mid-level library under `app`).
fn nix(lib_script: &str) -> String {
    format!(
        r#"{NIX_PRELUDE}
let lib = mk "lib-1.0" "{lib_script}"; in
{{
  lib = lib;
  app = mk "app-1.0" "echo ${{lib}} > $out";
  leaf = mk "leaf-1.0" "echo leaf > $out";
}}
"#
    )
}

fn short(sha: &str) -> &str {
    &sha[..12]
}

fn summary(home: &Home, repo: &GitRepo, base: &str, head: &str) -> Output {
    let out = home.ekaci_change("summary", repo, base, head, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// How many evaluations of `commit` the server log records.
fn evaluations_of(log: &str, commit: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("evaluating a jobset") && l.contains(&format!("commit={commit}")))
        .count()
}

/// A repository whose first commit (returned) is the base of the changes: `CONFIG` and `lib` building.
fn repo_with_base() -> (GitRepo, String) {
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix("echo lib > $out")))],
    );
    (repo, base)
}

/// Waits until `home`'s server has exactly `n` worktrees (spares), none of them being removed
/// (removals finish in the background); returns them.
fn wait_for_worktrees(home: &Home, n: usize) -> Vec<std::path::PathBuf> {
    let worktrees = home.path().join("data/ekaci/worktrees");
    wait_for(&format!("{n} worktree(s) left"), || {
        let left: Vec<_> = std::fs::read_dir(&worktrees)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        (left.len() == n).then_some(left)
    })
}

#[test]
fn a_second_change_against_an_evaluated_base_reuses_it_without_a_checkout() {
    let (repo, base) = repo_with_base();
    let head1 = repo.commit("lib: one change", &[("default.nix", Some(&nix("echo lib; true > $out")))]);
    repo.git(&["checkout", "-q", &base]);
    let head2 = repo.commit("lib: another change", &[("default.nix", Some(&nix("echo lib: > $out")))]);

    let home = Home::new();
    let server = home.start();
    // Cold: both sides evaluated, each shown on the progress line; base went alongside head (checked
    // out while head evaluated), and the two evaluations took turns.
    let first = summary(&home, &repo, &base, &head1);
    let progress = String::from_utf8_lossy(&first.stderr);
    assert!(progress.contains(&format!("evaluating main @ {}", short(&head1))), "{progress}");
    assert!(progress.contains(&format!("evaluating main @ {}", short(&base))), "{progress}");
    assert!(progress.contains("summarising 1 job(s)"), "{progress}");
    let log = server.log();
    assert!(log.contains("base has nothing evaluated: it goes alongside head"), "{log}");
    assert_eq!(evaluations_of(&log, &base), 1, "{log}");
    assert_eq!(evaluations_of(&log, &head1), 1, "{log}");

    // The cold review's two worktrees are kept as spares, each reset to what its commit has.
    for spare in wait_for_worktrees(&home, 2) {
        assert_eq!(
            common::git_in(&spare, &["status", "--porcelain", "--ignored"]),
            "",
            "{}",
            spare.display()
        );
    }

    // Warm: base is reused as it is, head checked out into a spare.
    let second = summary(&home, &repo, &base, &head2);
    let progress = String::from_utf8_lossy(&second.stderr);
    assert!(progress.contains(&format!("evaluating main @ {}", short(&head2))), "{progress}");
    assert!(progress.contains(&format!("reusing main @ {} (already evaluated)", short(&base))), "{progress}");
    assert!(!progress.contains(&format!("checking out {}", short(&base))), "{progress}");
    let log = server.log();
    assert_eq!(evaluations_of(&log, &base), 1, "base is evaluated once: {log}");
    assert_eq!(evaluations_of(&log, &head2), 1, "{log}");
    assert!(log.contains("reusing an evaluated commit without checking it out"), "{log}");
    assert!(log.contains("checked out into a spare worktree"), "{log}");

    // The same summary as a server that evaluates base for this change alone.
    let fresh = Home::new();
    let fresh_server = fresh.start();
    let expected = summary(&fresh, &repo, &base, &head2);
    assert_eq!(String::from_utf8_lossy(&second.stdout), String::from_utf8_lossy(&expected.stdout));
    let markdown = String::from_utf8_lossy(&second.stdout);
    assert!(markdown.contains("lib") && markdown.contains("app"), "{markdown}");
    drop(fresh_server);

    // No more worktrees than the spares are left behind.
    wait_for_worktrees(&home, 2);
    drop(server);
}

#[test]
fn a_base_with_a_job_head_dropped_is_checked_out_and_the_job_reported() {
    let two_jobs = r#"{ "jobs": { "main": { "file": "default.nix" }, "extra": { "file": "default.nix" } } }"#;
    let repo = GitRepo::new();
    let base = repo.commit(
        "base",
        &[(".eka-ci/config.json", Some(two_jobs)), ("default.nix", Some(&nix("echo lib > $out")))],
    );
    let head = repo.commit(
        "drop extra",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix("echo lib; true > $out")))],
    );
    let home = Home::new();
    let server = home.start();
    let diff = |head: &str| -> serde_json::Value {
        let out = home.ekaci_change("diff", &repo, &base, head, &["--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("diff JSON")
    };
    let first = diff(&head);
    assert_eq!(first["only_in_base"], serde_json::json!(["extra"]), "{first}");
    // Asked again, base's jobsets are reused (not evaluated again), and `extra` still reported.
    let again = diff(&head);
    assert_eq!(again["only_in_base"], serde_json::json!(["extra"]), "{again}");
    assert_eq!(again["jobs"], first["jobs"]);
    let log = server.log();
    assert_eq!(evaluations_of(&log, &base), 2, "main and extra, once each: {log}");
    assert!(!log.contains("reusing an evaluated commit without checking it out"), "{log}");
    drop(server);
}

#[test]
fn a_cold_review_whose_head_fails_drops_base_and_leaves_no_checkout() {
    let (repo, base) = repo_with_base();
    let head = repo.commit("break the configuration", &[(".eka-ci/config.json", Some("{ \"jobs\": "))]);
    let home = Home::new();
    // No spares: whatever the order of the two checkouts, none may be left.
    home.write_config("[git]\nspare_worktrees = 0");
    let server = home.start();
    let out = home.ekaci_change("summary", &repo, &base, &head, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "head's configuration is malformed: {err}");
    assert!(err.contains(".eka-ci/config.json"), "the error names the file: {err}");
    let log = server.log();
    assert!(log.contains("base has nothing evaluated: it goes alongside head"), "{log}");
    wait_for_worktrees(&home, 0);
    drop(server);
}
