//! `@eka-ci merge` end to end: signed `issue_comment` webhooks (GitHub's own example payload) into the
//! real server, the fake GitHub answering pulls, permissions, reactions, comments and merges as GitHub
//! does, real git repositories and real Nix builds deciding the gate, and the real redb file across a
//! restart. Assertions are on what the fake recorded: reactions, replies and the exact merge calls.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::http_request;
use crate::fake_github;
use crate::github_app::{fixture, wait_for, Fixture, Setup, GATE, LIB, REPO};

/// A GitHub user: login and numeric id.
pub(crate) type User = (&'static str, u64);
pub(crate) const WRITER: User = ("writer", 501);
const WRITER2: User = ("co-writer", 502);
const WRITER3: User = ("third-writer", 503);
const STRANGER: User = ("stranger", 601);
const PASSERBY: User = ("passerby", 602);
const WRITER4: User = ("fourth-writer", 504);

/// GitHub's `issue_comment` `created` example, made a comment on pull request `number` of [`REPO`] by
/// `user`, written now.
fn comment_payload(number: u64, comment_id: u64, user: User, body: &str) -> Value {
    let mut p = fixture("issue_comment.created.json");
    p["repository"]["full_name"] = json!(REPO);
    p["installation"]["id"] = json!(fake_github::INSTALLATION_ID);
    p["issue"]["number"] = json!(number);
    p["issue"]["pull_request"] = json!({
        "url": format!("https://api.github.com/repos/{REPO}/pulls/{number}"),
        "html_url": format!("https://github.com/{REPO}/pull/{number}"),
        "diff_url": format!("https://github.com/{REPO}/pull/{number}.diff"),
        "patch_url": format!("https://github.com/{REPO}/pull/{number}.patch"),
    });
    let c = &mut p["comment"];
    c["id"] = json!(comment_id);
    c["body"] = json!(body);
    c["user"]["login"] = json!(user.0);
    c["user"]["id"] = json!(user.1);
    c["created_at"] = json!(fake_github::rfc3339(eka_ci::store::now_secs()));
    p
}

fn deliver_comment(s: &Setup, delivery: &str, payload: &Value) {
    let body = serde_json::to_vec(payload).expect("encode");
    assert_eq!(s.deliver("issue_comment", delivery, &body), 202, "{delivery} accepted");
}

pub(crate) fn comment(s: &Setup, number: u64, comment_id: u64, user: User, body: &str) {
    deliver_comment(s, &format!("c-{comment_id}"), &comment_payload(number, comment_id, user, body));
}

/// Opens pull request `number` at `head` against the fixture's base (as a webhook, and as the fake's
/// pull request, from a branch of the repository itself).
pub(crate) fn open(s: &Setup, f: &Fixture, number: u64, head: &str) {
    open_on(s, f, number, head, &f.base);
}

pub(crate) fn open_on(s: &Setup, f: &Fixture, number: u64, head: &str, base: &str) {
    s.fake.set_pull_request(REPO, number, json!({ "head": { "sha": head, "repo": { "full_name": REPO } } }));
    s.pr(&format!("open-{number}"), "opened", number, f.path(), head, base, "author");
}

pub(crate) fn wait_reactions(s: &Setup, comment_id: u64, want: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let seen = s.fake.reactions(REPO, comment_id);
        if seen == want {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let log = s.server().log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            panic!(
                "timed out waiting for reactions {want:?} on comment {comment_id}; seen {seen:?}; the server's log ends:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The merge calls made for pull request `number`: (`sha`, `merge_method`) of each.
pub(crate) fn merges(s: &Setup, number: u64) -> Vec<(String, String)> {
    s.fake
        .calls_to("PUT", &format!("/repos/{REPO}/pulls/{number}/merge"))
        .iter()
        .map(|c| {
            let b = c.json();
            (
                b["sha"].as_str().unwrap_or("").to_string(),
                b["merge_method"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Waits long enough for the server to have handled everything delivered so far.
pub(crate) fn settle(s: &Setup) {
    wait_for("the event queue drained", || {
        (s.server().status()["queues"]["github_events"] == 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
}

#[test]
fn a_writer_merges_a_green_pull_request_with_the_configured_method_and_a_stranger_is_denied() {
    let f = Fixture::new();
    let head = f.head("green", &format!(r#"{LIB} ok = mk "ok-m1" "echo ok > $out" [];"#));
    let s = Setup::new("default_merge_method = \"rebase\"");
    s.fake.set_permission(REPO, WRITER.0, "write");
    open(&s, &f, 40, &head);
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");

    // No write access: -1 and a reply, nothing recorded, nothing merged.
    comment(&s, 40, 9001, STRANGER, "@eka-ci merge");
    wait_reactions(&s, 9001, &["-1"]);
    wait_for("the denial reply", || {
        s.fake.comments(REPO, 40).into_iter().find(|c| c.contains("was denied")).map(|c| {
            assert!(c.starts_with("@stranger "), "{c}");
            assert!(c.contains("write access"), "{c}");
        })
    });
    assert!(merges(&s, 40).is_empty());

    // A writer, with the command after prose: accepted (+1), merged at once with the configured method
    // and the pinned head, and a rocket.
    comment(&s, 40, 9002, WRITER, "Looks good to me!\n@eka-ci merge");
    wait_reactions(&s, 9002, &["+1", "rocket"]);
    assert_eq!(merges(&s, 40), [(head.clone(), "rebase".to_string())]);
    assert_eq!(s.fake.pull_request(REPO, 40)["merged"], true);
    assert_eq!(s.fake.comments(REPO, 40).len(), 1, "only the denial was a reply");
}

#[test]
fn a_pending_request_survives_a_restart_and_merges_when_the_gate_turns_green() {
    let f = Fixture::new();
    let (slow, gate_file) = f.slow("slow-m2", "-m2");
    let head = f.head("slow", &format!("{LIB} {slow}"));
    let mut s = Setup::new("");
    s.fake.set_permission(REPO, WRITER.0, "admin");
    open(&s, &f, 41, &head);
    wait_for("the gate in progress", || s.run(&head, GATE).filter(|r| r["status"] == "in_progress"));

    comment(&s, 41, 9101, WRITER, "@eka-ci MERGE Squash please, thanks");
    wait_reactions(&s, 9101, &["+1"]);
    settle(&s);
    assert!(merges(&s, 41).is_empty(), "nothing merges before the gate is green");

    s.stop();
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open the database");
    let pending = eka_ci::forge::github::merges::get(&store, REPO, 41).expect("read").expect("persisted");
    assert_eq!((pending.sha.as_str(), pending.method.as_deref()), (head.as_str(), Some("squash")));
    assert_eq!(
        (pending.requester.as_str(), pending.requester_id, pending.comment_id),
        (WRITER.0, WRITER.1, 9101)
    );
    drop(store);
    s.restart();
    std::fs::write(&gate_file, "").expect("release the build");
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");
    wait_reactions(&s, 9101, &["+1", "rocket"]);
    assert_eq!(merges(&s, 41), [(head.clone(), "squash".to_string())]);
    let _ = std::fs::remove_file(&gate_file);
    let log = s.stop();
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open the database");
    assert!(eka_ci::forge::github::merges::get(&store, REPO, 41).expect("read").is_none(), "cleared: {log}");
}

#[test]
fn pushes_after_acceptance_cancel_and_githubs_409_and_disallowed_methods_are_handled() {
    let f = Fixture::new();
    let (slow, gate_file) = f.slow("slow-m3", "-m3");
    let h1 = f.head("slow", &format!("{LIB} {slow}"));
    let h2 = f.head("pushed", &format!(r#"{LIB} p = mk "p-m3" "echo p > $out" [];"#));
    let s = Setup::new("");
    s.fake.set_permission(REPO, WRITER.0, "write");
    s.fake.set_permission(REPO, WRITER2.0, "maintain");
    s.fake.set_permission(REPO, WRITER3.0, "admin");
    s.fake.set_permission(REPO, WRITER4.0, "write");

    // Accepted for h1, then a push to h2: confused, a reply naming both commits, no merge.
    open(&s, &f, 42, &h1);
    comment(&s, 42, 9201, WRITER, "@eka-ci merge");
    wait_reactions(&s, 9201, &["+1"]);
    s.fake.set_pull_request(REPO, 42, json!({ "head": { "sha": h2 } }));
    s.pr("sync-42", "synchronize", 42, f.path(), &h2, &f.base, "author");
    wait_reactions(&s, 9201, &["+1", "confused"]);
    let reply = wait_for("the drift reply", || s.fake.comments(REPO, 42).pop());
    assert!(reply.contains(&h1) && reply.contains(&h2) && reply.starts_with("@writer "), "{reply}");
    assert_eq!(s.wait_completed(&h2, GATE)["conclusion"], "success");
    std::fs::write(&gate_file, "").expect("release");
    settle(&s);
    assert!(merges(&s, 42).is_empty(), "the cancelled request never merges");

    // A comment written before the head it would pin became the head: refused, -1 and a reply.
    let mut old = comment_payload(42, 9202, WRITER2, "@eka-ci merge");
    old["comment"]["created_at"] = json!("2001-01-01T00:00:00Z");
    deliver_comment(&s, "c-9202", &old);
    wait_reactions(&s, 9202, &["-1"]);
    let reply = wait_for("the moved-head reply", || {
        s.fake.comments(REPO, 42).into_iter().find(|c| c.contains("not the commit your"))
    });
    assert!(reply.contains(&h2), "{reply}");
    assert!(merges(&s, 42).is_empty());

    // GitHub answers 409 (the head moved between our look and the merge call): confused and a reply.
    let h3 = f.head("green", &format!(r#"{LIB} q = mk "q-m3" "echo q > $out" [];"#));
    open(&s, &f, 43, &h3);
    assert_eq!(s.wait_completed(&h3, GATE)["conclusion"], "success");
    s.fake.inject(
        "PUT",
        &format!("/repos/{REPO}/pulls/43/merge"),
        1,
        fake_github::Reply::error(409, "Head branch was modified. Review and try the merge again."),
    );
    comment(&s, 43, 9301, WRITER3, "@eka-ci merge merge");
    wait_reactions(&s, 9301, &["+1", "confused"]);
    let reply = wait_for("the 409 reply", || s.fake.comments(REPO, 43).pop());
    assert!(reply.contains(&h3) && reply.contains("Head branch was modified"), "{reply}");
    assert!(reply.starts_with("@third-writer "), "{reply}");
    assert_eq!(merges(&s, 43), [(h3.clone(), "merge".to_string())]);

    // A method the repository disallows: accepted, then skipped without a word; another method merges.
    let h4 = f.head("green 2", &format!(r#"{LIB} r = mk "r-m3" "echo r > $out" [];"#));
    open(&s, &f, 44, &h4);
    s.fake.set_pull_request(
        REPO,
        44,
        json!({ "head": { "sha": h4 }, "base": { "repo": { "allow_rebase_merge": false } } }),
    );
    assert_eq!(s.wait_completed(&h4, GATE)["conclusion"], "success");
    // Someone who has not commented within the 5 s rate limit (this test can get here that fast).
    comment(&s, 44, 9401, WRITER4, "@eka-ci merge rebase");
    wait_reactions(&s, 9401, &["+1"]);
    settle(&s);
    std::thread::sleep(Duration::from_secs(5));
    assert!(merges(&s, 44).is_empty(), "never asked GitHub to rebase");
    assert!(s.fake.comments(REPO, 44).is_empty(), "no reply for a disallowed method");
    assert_eq!(s.fake.reactions(REPO, 9401), ["+1"]);
    comment(&s, 44, 9402, WRITER2, "@eka-ci merge squash");
    wait_reactions(&s, 9402, &["+1", "rocket"]);
    assert_eq!(merges(&s, 44), [(h4.clone(), "squash".to_string())]);
    let _ = std::fs::remove_file(&gate_file);
}

#[test]
fn cancels_rate_limits_and_comments_that_are_not_commands() {
    let f = Fixture::new();
    let (slow, gate_file) = f.slow("slow-m4", "-m4");
    let head = f.head("slow", &format!("{LIB} {slow}"));
    let s = Setup::new("");
    s.fake.set_permission(REPO, WRITER.0, "write");
    s.fake.set_permission(REPO, WRITER2.0, "write");
    open(&s, &f, 45, &head);
    wait_for("the gate in progress", || s.run(&head, GATE).filter(|r| r["status"] == "in_progress"));

    // Nothing pending: a cancel is silently nothing, whoever sends it.
    comment(&s, 45, 9501, PASSERBY, "@eka-ci merge cancel");
    // Not commands: prose mentions, unknown verbs, bots, edits, plain issues.
    comment(&s, 45, 9502, WRITER2, "cc @eka-ci merge");
    comment(&s, 45, 9503, WRITER2, "@eka-ci rebuild");
    let mut bot = comment_payload(45, 9504, ("some-bot", 701), "@eka-ci merge");
    bot["comment"]["user"]["type"] = json!("Bot");
    deliver_comment(&s, "c-9504", &bot);
    let mut edited = fixture("issue_comment.edited.json");
    edited["repository"]["full_name"] = json!(REPO);
    edited["issue"]["number"] = json!(45);
    edited["issue"]["pull_request"] = comment_payload(45, 1, WRITER, "")["issue"]["pull_request"].clone();
    edited["comment"]["id"] = json!(9505);
    edited["comment"]["body"] = json!("@eka-ci merge");
    edited["comment"]["user"]["login"] = json!(WRITER.0);
    deliver_comment(&s, "c-9505", &edited);
    let mut issue = comment_payload(46, 9506, WRITER, "@eka-ci merge");
    issue["issue"].as_object_mut().expect("issue").remove("pull_request");
    deliver_comment(&s, "c-9506", &issue);
    settle(&s);
    for id in 9501..=9506 {
        assert!(s.fake.reactions(REPO, id).is_empty(), "comment {id} got a reaction");
    }
    assert!(s.fake.comments(REPO, 45).is_empty() && s.fake.comments(REPO, 46).is_empty());

    // The requester's second command within 5 seconds is dropped silently.
    comment(&s, 45, 9511, WRITER, "@eka-ci merge");
    comment(&s, 45, 9512, WRITER, "@eka-ci merge cancel");
    wait_reactions(&s, 9511, &["+1"]);
    settle(&s);
    assert!(s.fake.reactions(REPO, 9512).is_empty(), "rate limited: no reaction");

    // A stranger may not cancel; a writer may; the requester may (after the rate limit's 5 seconds).
    comment(&s, 45, 9521, STRANGER, "@eka-ci merge cancel");
    wait_reactions(&s, 9521, &["-1"]);
    let reply = wait_for("the denied cancel's reply", || s.fake.comments(REPO, 45).pop());
    assert!(reply.starts_with("@stranger ") && reply.contains("cancel"), "{reply}");
    comment(&s, 45, 9522, WRITER2, "Actually, hold off.\n@eka-ci merge cancel");
    wait_reactions(&s, 9522, &["+1"]);
    std::thread::sleep(Duration::from_secs(5));
    comment(&s, 45, 9531, WRITER, "@eka-ci merge rebase");
    wait_reactions(&s, 9531, &["+1"]);
    std::thread::sleep(Duration::from_secs(5));
    comment(&s, 45, 9532, WRITER, "@eka-ci merge cancel");
    wait_reactions(&s, 9532, &["+1"]);

    // Nothing pending any more: the green gate merges nothing.
    std::fs::write(&gate_file, "").expect("release");
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");
    settle(&s);
    assert!(merges(&s, 45).is_empty());
    assert_eq!(s.fake.comments(REPO, 45).len(), 1, "only the stranger's denial");
    let _ = std::fs::remove_file(&gate_file);
}

/// `mk name script []` with `meta.maintainers` = `maintainers` (Nix list elements).
pub(crate) fn with_maintainers(name: &str, maintainers: &str) -> String {
    format!(
        r#"(mk "{name}" "echo {name} > $out" []) // {{ meta = {{ maintainers = [ {maintainers} ]; }}; }}"#
    )
}

#[test]
fn maintainers_of_every_changed_package_may_merge_and_administrators_manage_the_table() {
    const MAINT: User = ("pkg-maint", 777);
    const INSIDER: User = ("insider", 779);
    const FORKER: User = ("forker", 778);
    let f = Fixture::new();
    let maint = r#"{ github = "someone-renamed"; githubId = 777; }"#;
    let base = f.head(
        "packages",
        &format!(
            "{LIB} app = {}; other = mk \"other-1\" \"echo o > $out\" [];",
            with_maintainers("app-1", maint)
        ),
    );
    let app2 = format!("app = {};", with_maintainers("app-2", maint));
    let only_app = f.head("app 2", &format!("{LIB} {app2} other = mk \"other-1\" \"echo o > $out\" [];"));
    let both =
        f.head("app and other", &format!("{LIB} {app2} other = mk \"other-2\" \"echo o2 > $out\" [];"));
    let fresh = |who: &str, id: u64| {
        f.head(
            &format!("fresh by {who}"),
            &format!(
                "{LIB} app = {}; other = mk \"other-1\" \"echo o > $out\" []; fresh = {};",
                with_maintainers("app-1", maint),
                with_maintainers(
                    &format!("fresh-{who}"),
                    &format!(r#"{{ github = "{who}"; githubId = {id}; }}"#)
                )
            ),
        )
    };
    let (by_fork, by_insider) = (fresh("forker", 778), fresh("insider", 779));
    let mut s = Setup::new("");

    // The table, from the CLI: add, list, remove, refusals.
    let ok = |args: &[&str]| {
        let out = s.home.ekaci(args);
        assert!(out.status.success(), "ekaci {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        ok(&["maintainers", "add", REPO, "other", "Pkg-Maint"]),
        format!("pkg-maint now maintains other in {REPO}\n")
    );
    assert_eq!(
        ok(&["maintainers", "add", REPO, "other", "pkg-maint"]),
        format!("pkg-maint already maintains other in {REPO}\n")
    );
    assert_eq!(
        ok(&["maintainers", "add", "elsewhere/x", "other", "pkg-maint"]),
        "pkg-maint now maintains other in elsewhere/x\n"
    );
    let listed: Value = serde_json::from_str(&ok(&["maintainers", "list", REPO, "--json"])).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(
        (&listed[0]["attr"], &listed[0]["login"], &listed[0]["added_by"]),
        (&json!("other"), &json!("pkg-maint"), &json!("cli"))
    );
    let bad = s.home.ekaci(&["maintainers", "add", REPO, "a b", "pkg-maint"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid attribute `a b`"), "{bad:?}");
    assert_eq!(
        ok(&["maintainers", "remove", REPO, "other", "pkg-maint"]),
        format!("pkg-maint no longer maintains other in {REPO}\n")
    );
    assert!(ok(&["maintainers", "list", REPO]).contains("no maintainers"));

    // The same over the admin API (a read token is refused).
    let addr = s.server().http_address();
    let admin = s.home.token("merge-admin", "admin");
    let read = s.home.token("merge-read", "read");
    let post = |token: &str, body: Value| {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let (status, _, out) =
            http_request(&addr, "POST", "/v1/github/maintainers", &headers, body.to_string().as_bytes());
        (status, serde_json::from_slice::<Value>(&out).unwrap_or(Value::Null))
    };
    let add = json!({"op": "add", "repo": REPO, "attr": "other", "login": "pkg-maint"});
    assert_eq!(post(&read, add.clone()).0, 403);
    let (status, out) = post(&admin, add);
    assert_eq!((status, &out["changed"]), (200, &json!(true)), "{out}");
    let (status, out) = post(&admin, json!({"op": "add", "repo": "nope", "attr": "other", "login": "x"}));
    assert_eq!(status, 400, "{out}");
    let auth = format!("Bearer {admin}");
    let (status, _, out) = http_request(
        &addr,
        "GET",
        &format!("/v1/github/maintainers?repo={REPO}"),
        &[("Authorization", auth.as_str())],
        b"",
    );
    let out: Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(status, 200);
    assert_eq!(out["maintainers"][0]["added_by"], "api:merge-admin", "{out}");
    let (status, _) =
        post(&admin, json!({"op": "remove", "repo": REPO, "attr": "other", "login": "pkg-maint"}));
    assert_eq!(status, 200);

    // A maintainer (by `githubId`, whatever the handle says) of the one changed package merges.
    open_on(&s, &f, 50, &only_app, &base);
    assert_eq!(s.wait_completed(&only_app, GATE)["conclusion"], "success");
    comment(&s, 50, 9601, MAINT, "@eka-ci merge");
    wait_reactions(&s, 9601, &["+1", "rocket"]);
    assert_eq!(merges(&s, 50), [(only_app.clone(), "squash".to_string())]);

    // Two packages change and they maintain one: denied, until an administrator adds the other.
    open_on(&s, &f, 51, &both, &base);
    assert_eq!(s.wait_completed(&both, GATE)["conclusion"], "success");
    std::thread::sleep(Duration::from_secs(5));
    comment(&s, 51, 9611, MAINT, "@eka-ci merge");
    wait_reactions(&s, 9611, &["-1"]);
    let reply = wait_for("the denial", || s.fake.comments(REPO, 51).pop());
    assert!(reply.contains("maintainer of every package"), "{reply}");
    ok(&["maintainers", "add", REPO, "other", "pkg-maint"]);
    std::thread::sleep(Duration::from_secs(5));
    comment(&s, 51, 9612, MAINT, "@eka-ci merge");
    wait_reactions(&s, 9612, &["+1", "rocket"]);

    // A new package's head `meta` counts for a branch of the repository, never for a fork.
    open_on(&s, &f, 52, &by_fork, &base);
    s.fake.set_pull_request(REPO, 52, json!({ "head": { "repo": { "full_name": "forker/widgets" } } }));
    assert_eq!(s.wait_completed(&by_fork, GATE)["conclusion"], "success");
    comment(&s, 52, 9621, FORKER, "@eka-ci merge");
    wait_reactions(&s, 9621, &["-1"]);
    open_on(&s, &f, 53, &by_insider, &base);
    assert_eq!(s.wait_completed(&by_insider, GATE)["conclusion"], "success");
    comment(&s, 53, 9631, INSIDER, "@eka-ci merge");
    wait_reactions(&s, 9631, &["+1", "rocket"]);
    assert!(merges(&s, 52).is_empty());
    s.stop();
}
