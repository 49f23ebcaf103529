//! One evaluation per jobset, and jobsets that repair themselves: two concurrent `ekaci eval` of the same
//! commit share one evaluation and both see every attribute; a jobset stored as evaluated whose graph was
//! never stored (a crash between the two steps) is repaired at its next use, so a review of it works.

use crate::common;

use common::{json, nonce, nonce_prelude, GitRepo, Home};
use serde_json::Value;

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

/// `count` independent derivations `a0`… plus `top`, which depends on all of them.
fn many(n: &str, count: usize) -> String {
    let p = nonce_prelude(n);
    format!(
        r#"{p}
let
  parts = builtins.listToAttrs (builtins.genList (i: {{ name = "a${{toString i}}"; value = mk "a-${{toString i}}" "echo ${{toString i}} > $out" []; }}) {count});
in parts // {{ top = mk "top" "echo top > $out" (builtins.attrValues parts); }}
"#
    )
}

fn eval(home: &Home, repo: &GitRepo, rev: &str) -> std::process::Output {
    home.ekaci(&[
        "eval",
        "--repo",
        &repo.path().display().to_string(),
        "--rev",
        rev,
        "--job",
        "main",
        "--json",
    ])
}

fn attr_count(report: &Value) -> usize {
    report["jobs"][0]["attrs"].as_array().expect("attrs").len()
}

#[test]
fn concurrent_evaluations_of_one_jobset_share_one_evaluation() {
    const COUNT: usize = 400;
    let repo = GitRepo::new();
    let commit = repo.commit(
        "many",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&many(&nonce(), COUNT)))],
    );
    let home = Home::new();
    let server = home.start();
    let (a, b) = std::thread::scope(|s| {
        let first = s.spawn(|| eval(&home, &repo, &commit));
        let second = s.spawn(|| eval(&home, &repo, &commit));
        (first.join().expect("first"), second.join().expect("second"))
    });
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (a, b) = (json(&a), json(&b));
    assert_eq!(attr_count(&a), COUNT + 1, "every attribute and `top`");
    assert_eq!(attr_count(&b), COUNT + 1, "every attribute and `top`");
    assert_eq!(a["jobs"][0]["attrs"], b["jobs"][0]["attrs"]);
    assert_eq!(a["jobs"][0]["jobset"]["id"], b["jobs"][0]["jobset"]["id"]);
    assert_eq!(a["jobs"][0]["jobset"]["derivations"], (COUNT + 1) as u64);
    let (_, log) = server.stop();
    assert_eq!(log.matches("evaluating a jobset").count(), 1, "one evaluation:\n{log}");
}

#[test]
fn a_jobset_whose_graph_was_never_stored_is_repaired_at_its_next_use() {
    let n = nonce();
    let repo = GitRepo::new();
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&many(&n, 3)))]);
    let head = repo.commit("head", &[("default.nix", Some(&many(&n, 5)))]);
    let home = Home::new();
    let server = home.start();
    for rev in [&base, &head] {
        let out = eval(&home, &repo, rev);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (status, _) = server.stop();
    assert!(status.success());

    // What a crash between "jobset evaluated" and "graph discovered" leaves: the jobsets, no graph.
    {
        use eka_ci::store::schema::{GRAPH_DEPENDENTS, GRAPH_IDS, GRAPH_NODES};
        let store = eka_ci::store::Store::open(&home.db()).expect("open the database");
        let tx = store.db().begin_write().expect("write");
        tx.open_table(GRAPH_IDS).expect("ids").retain(|_, _| false).expect("clear ids");
        tx.open_table(GRAPH_NODES).expect("nodes").retain(|_, _| false).expect("clear nodes");
        tx.open_table(GRAPH_DEPENDENTS).expect("dependents").retain(|_, _| false).expect("clear dependents");
        tx.commit().expect("commit");
    }

    let server = home.start();
    let out = home.review(&repo, &base, &head);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report = json(&out);
    assert_eq!(report["failed"], false, "{report}");
    let attrs = report["jobs"][0]["attrs"].as_array().expect("attrs");
    let verdict = |name: &str| {
        attrs.iter().find(|a| a["attr"] == name).unwrap_or_else(|| panic!("no {name} in {report}"))["verdict"]
            .clone()
    };
    assert_eq!(verdict("a4"), "AddedOk");
    assert_eq!(verdict("top"), "StillOk");
    let (_, log) = server.stop();
    assert!(log.contains("discovering it again"), "{log}");
    assert!(!log.contains("evaluating a jobset"), "the stored evaluations were reused:\n{log}");
}
