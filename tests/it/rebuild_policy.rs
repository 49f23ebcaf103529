//! The server's `[rebuild]` policy and the repository's `change_sets` on real pull requests (signed
//! webhooks, the fake GitHub, real git diffs): a change that touches only `skip_paths` is not evaluated,
//! and its gate says why; one more path outside them and it is evaluated as usual. A change rebuilding
//! more than `max_rebuild_count` is evaluated and summarised but not built. A change the change sets
//! cover with `docs-only`/`no-op` rules is not evaluated; one touching a `full-rebuild` path is, even
//! when `skip_paths` would skip it.

use std::time::Duration;

use crate::github_app::{names, nix, summary, Fixture, Setup, GATE, LIB};

#[test]
fn a_change_touching_only_skip_paths_is_not_evaluated() {
    let s = Setup::new("[rebuild]\nskip_paths = [\"doc/**\", \"**/CHANGELOG.md\"]\n");
    let f = Fixture::new();
    let docs_only = f.repo.commit(
        "docs",
        &[("doc/guide/intro.md", Some("# Intro\n")), ("pkgs/CHANGELOG.md", Some("- fixed\n"))],
    );
    s.pr("d-docs", "opened", 31, f.path(), &docs_only, &f.base, "member");
    let gate = s.wait_completed(&docs_only, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert_eq!(gate["output"]["title"], "Skipped: only skip_paths changed", "{gate}");
    let text = summary(&gate);
    assert!(text.contains("`doc/guide/intro.md`") && text.contains("`pkgs/CHANGELOG.md`"), "{text}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        names(&s.runs(&docs_only)),
        ["EkaCI: Configure", GATE],
        "no change summary: nothing evaluated"
    );

    // The same documentation plus a Nix change: evaluated and built.
    let mixed = f.repo.commit(
        "docs and code",
        &[
            ("doc/guide/more.md", Some("more\n")),
            (
                "default.nix",
                Some(&crate::github_app::nix(
                    &f.nonce,
                    &format!(r#"{LIB} extra = mk "extra-1" "echo > $out" [];"#),
                )),
            ),
        ],
    );
    s.pr("d-mixed", "synchronize", 31, f.path(), &mixed, &f.base, "member");
    let gate = s.wait_completed(&mixed, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert_ne!(gate["output"]["title"], "Skipped: only skip_paths changed", "{gate}");
    assert!(s.run(&mixed, "EkaCI: Change Summary").is_some(), "evaluated: {:?}", names(&s.runs(&mixed)));
}

/// `count` attributes that fail to build: built, each would fail its gate.
fn failing(prefix: &str, count: usize) -> String {
    (0..count).map(|i| format!(r#"{prefix}{i} = mk "{prefix}{i}-1" "exit 1" [];"#)).collect()
}

#[test]
fn a_change_rebuilding_more_than_max_rebuild_count_is_evaluated_but_not_built() {
    let s = Setup::new("[rebuild]\nmax_rebuild_count = 2\n");
    let f = Fixture::new();

    // Three rebuilds, over the limit: evaluated, summarised, nothing built.
    let wide = f.head("wide", &format!("{LIB} {}", failing("w", 3)));
    s.pr("d-wide", "opened", 41, f.path(), &wide, &f.base, "member");
    let gate = s.wait_completed(&wide, GATE);
    assert_eq!(gate["conclusion"], "neutral", "{gate}");
    assert_eq!(gate["output"]["title"], "Wide change: 3 rebuilds, builds skipped", "{gate}");
    let text = summary(&gate);
    assert!(
        text.contains("`[rebuild] max_rebuild_count` (2)") && text.contains("| 3 | 0 | 0 | 1 | 0 |"),
        "{text}"
    );
    let change_summary = s.run(&wide, "EkaCI: Change Summary").expect("the change summary is reported");
    assert_eq!(change_summary["output"]["title"], "Change summary", "{change_summary}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        names(&s.runs(&wide)),
        ["EkaCI: Change Summary", "EkaCI: Configure", GATE],
        "no failure check run: the failing attributes were never built"
    );

    // Wide with a new evaluation error: the gate fails on what evaluation alone shows.
    let broken = f.head("wide and broken", &format!(r#"{LIB} {} broken = throw "boom";"#, failing("b", 3)));
    s.pr("d-broken", "synchronize", 41, f.path(), &broken, &f.base, "member");
    let gate = s.wait_completed(&broken, GATE);
    assert_eq!(gate["conclusion"], "failure", "{gate}");
    assert_eq!(gate["output"]["title"], "1 new evaluation error(s) (wide change, builds skipped)", "{gate}");
    assert!(summary(&gate).contains("`broken`"), "{gate}");

    // Two rebuilds, within the limit: built as usual, and they fail.
    let narrow = f.head("narrow", &format!("{LIB} {}", failing("n", 2)));
    s.pr("d-narrow", "synchronize", 41, f.path(), &narrow, &f.base, "member");
    let gate = s.wait_completed(&narrow, GATE);
    assert_eq!(gate["conclusion"], "failure", "{gate}");
    assert_eq!(gate["output"]["title"], "2 attribute(s) fail to build", "{gate}");

    let metrics = crate::common::http_get(&s.server().http_address(), "/metrics").2;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("eka_ci_github_rebuild_skips_total{reason=\"wide\"} 2"), "{metrics}");
}

const CHANGE_SETS: &str = r#"{
  "jobs": { "main": { "file": "default.nix" } },
  "change_sets": { "doc/**": "docs-only", ".github/": "no-op", "flake.lock": "full-rebuild" }
}"#;

#[test]
fn change_sets_decide_from_the_diff_before_evaluation() {
    // The server would skip documentation and lock-file changes; the repository says a lock file change
    // is a full rebuild.
    let s = Setup::new("[rebuild]\nskip_paths = [\"doc/**\", \"flake.lock\"]\n");
    let f = Fixture::new();
    let base = f.repo.commit("change sets", &[(".eka-ci/config.json", Some(CHANGE_SETS))]);
    let from_base = |message: &str, files: &[(&str, Option<&str>)]| {
        f.repo.git(&["checkout", "-q", "--detach", &base]);
        f.repo.commit(message, files)
    };

    // Documentation and CI metadata only: no rebuild, nothing evaluated.
    let docs = from_base(
        "docs",
        &[("doc/guide/intro.md", Some("# Intro\n")), (".github/workflows/ci.yml", Some("on: push\n"))],
    );
    s.pr("c-docs", "opened", 51, f.path(), &docs, &base, "member");
    let gate = s.wait_completed(&docs, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert_eq!(gate["output"]["title"], "No rebuild: only docs-only or no-op paths changed", "{gate}");
    let text = summary(&gate);
    assert!(
        text.contains("`doc/guide/intro.md` (docs-only)")
            && text.contains("`.github/workflows/ci.yml` (no-op)"),
        "{text}"
    );
    let change_summary = s.wait_completed(&docs, "EkaCI: Change Summary");
    assert_eq!(change_summary["conclusion"], "neutral", "{change_summary}");
    assert_eq!(change_summary["output"]["title"], "No rebuilds expected", "{change_summary}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(names(&s.runs(&docs)), ["EkaCI: Change Summary", "EkaCI: Configure", GATE]);
    // The Configure check no longer calls change_sets "not yet acted on".
    let configure = s.run(&docs, "EkaCI: Configure").expect("configure");
    assert!(!configure.to_string().contains("not yet acted on"), "{configure}");

    // Documentation plus a Nix file no rule covers: evaluated and built as usual.
    let code = from_base(
        "docs and code",
        &[
            ("doc/guide/more.md", Some("more\n")),
            (
                "default.nix",
                Some(&nix(&f.nonce, &format!(r#"{LIB} extra = mk "extra-1" "echo > $out" [];"#))),
            ),
        ],
    );
    s.pr("c-code", "synchronize", 51, f.path(), &code, &base, "member");
    let gate = s.wait_completed(&code, GATE);
    assert_eq!(
        (&gate["conclusion"], &gate["output"]["title"]),
        (&"success".into(), &"1 attribute(s) built".into()),
        "{gate}"
    );
    let change_summary = s.wait_completed(&code, "EkaCI: Change Summary");
    assert_eq!(change_summary["output"]["title"], "Change summary", "{change_summary}");

    // Only paths skip_paths matches, one of them a full-rebuild path: evaluated (and the new attribute
    // that fails to build fails the gate), not skipped.
    let lock =
        from_base("lock update", &[("flake.lock", Some("{}\n")), ("doc/changes.md", Some("lock bumped\n"))]);
    s.pr("c-lock", "synchronize", 51, f.path(), &lock, &base, "member");
    let gate = s.wait_completed(&lock, GATE);
    assert_eq!(gate["conclusion"], "success", "{gate}");
    assert_eq!(gate["output"]["title"], "Nothing to build", "evaluated, not skipped: {gate}");
    assert!(s.run(&lock, "EkaCI: Change Summary").is_some(), "evaluated: {:?}", names(&s.runs(&lock)));

    // A documentation change alone: the change sets cover it (docs-only) before skip_paths would skip it.
    let doc_only = from_base("doc only", &[("doc/changes.md", Some("just words\n"))]);
    s.pr("c-doc-only", "synchronize", 51, f.path(), &doc_only, &base, "member");
    let gate = s.wait_completed(&doc_only, GATE);
    assert_eq!(gate["output"]["title"], "No rebuild: only docs-only or no-op paths changed", "{gate}");

    let metrics = crate::common::http_get(&s.server().http_address(), "/metrics").2;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("eka_ci_github_rebuild_skips_total{reason=\"change_sets\"} 2"), "{metrics}");
}
