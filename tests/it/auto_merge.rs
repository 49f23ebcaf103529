//! Auto-merge enabled through the API, end to end: the `enable-auto-merge` / `disable-auto-merge`
//! routes (an admin token, a maintainer's own GitHub token checked against the fake GitHub's `GET
//! /user`, refusals), signed `pull_request_review` webhooks (GitHub's own example payloads) making the
//! service read the reviews again from the fake's `GET pulls/{n}/reviews`, real git repositories and
//! Nix builds deciding the gate and who maintains what, the real redb file across a restart; and a
//! repository with a merge queue, where `@eka-ci merge` goes through GraphQL instead of the merge
//! endpoint. Assertions are on what the fake recorded.

use serde_json::{json, Value};

use crate::common::http_request;
use crate::fake_github;
use crate::github_app::{fixture, wait_for, Fixture, Setup, GATE, LIB, REPO};
use crate::merge_commands::{
    comment, merges, open, open_on, settle, wait_reactions, with_maintainers, User, WRITER,
};

const MAINT: User = ("pkg-maint", 777);
const STRANGER: User = ("stranger", 601);
const MAINT_TOKEN: &str = "ghp_maintainerToken0000000000000000000000";
const STRANGER_TOKEN: &str = "ghp_strangerToken00000000000000000000000";

/// GitHub's `pull_request_review` `action` example, a review by `user` in `state` of pull request
/// `number` whose head is `head`.
fn deliver_review(s: &Setup, delivery: &str, action: &str, number: u64, user: User, state: &str, head: &str) {
    let mut p = fixture(&format!("pull_request_review.{action}.json"));
    p["repository"]["full_name"] = json!(REPO);
    p["installation"]["id"] = json!(fake_github::INSTALLATION_ID);
    p["pull_request"]["number"] = json!(number);
    p["pull_request"]["head"]["sha"] = json!(head);
    p["review"]["state"] = json!(state);
    p["review"]["commit_id"] = json!(head);
    p["review"]["user"]["login"] = json!(user.0);
    p["review"]["user"]["id"] = json!(user.1);
    let body = serde_json::to_vec(&p).expect("encode");
    assert_eq!(s.deliver("pull_request_review", delivery, &body), 202, "{delivery} accepted");
}

/// `POST path` with `Authorization: Bearer token` (none with `None`): status and JSON body.
fn post(s: &Setup, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let addr = s.server().http_address();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    let (status, _, out) = http_request(&addr, "POST", path, &headers, body.as_bytes());
    (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

fn enable_path(number: u64) -> String {
    format!("/v1/prs/{REPO}/{number}/enable-auto-merge")
}

fn disable_path(number: u64) -> String {
    format!("/v1/prs/{REPO}/{number}/disable-auto-merge")
}

#[test]
fn auto_merge_waits_for_an_approving_review_by_a_maintainer_of_every_changed_package() {
    let f = Fixture::new();
    let maint = r#"{ github = "pkg-maint"; githubId = 777; }"#;
    let other = r#"other = mk "other-1" "echo o > $out" [];"#;
    let base = f.head("packages", &format!("{LIB} app = {}; {other}", with_maintainers("app-1", maint)));
    let head = f.head("app 2", &format!("{LIB} app = {}; {other}", with_maintainers("app-2", maint)));
    let mut s = Setup::new("");
    s.fake.add_user_token(MAINT_TOKEN, MAINT.0, MAINT.1);
    s.fake.add_user_token(STRANGER_TOKEN, STRANGER.0, STRANGER.1);
    let admin = s.home.token("am-admin", "admin");
    let read = s.home.token("am-read", "read");
    open_on(&s, &f, 70, &head, &base);
    assert_eq!(s.wait_completed(&head, GATE)["conclusion"], "success");

    // Refused, with errors that say why.
    let (status, out) = post(&s, &enable_path(70), None, "");
    assert_eq!(status, 401, "{out}");
    assert!(
        out["error"].as_str().unwrap_or("").contains("admin token, or a maintainer's own GitHub token"),
        "{out}"
    );
    let (status, out) = post(&s, &enable_path(70), Some(&read), "");
    assert_eq!(status, 403, "{out}");
    let (status, out) = post(&s, &enable_path(70), Some("ghp_unknownToken"), "");
    assert_eq!(status, 401, "{out}");
    let (status, out) = post(&s, &enable_path(70), Some(STRANGER_TOKEN), "");
    assert_eq!(status, 403, "{out}");
    let message = out["error"].as_str().unwrap_or("");
    assert!(
        message.contains("You must be a maintainer of all changed packages to enable auto-merge"),
        "{out}"
    );
    assert!(message.contains("stranger maintains none of: app"), "{out}");
    let (status, out) = post(&s, &disable_path(70), Some(STRANGER_TOKEN), "");
    assert_eq!(status, 403, "{out}");
    let (status, out) = post(&s, &enable_path(70), Some(&admin), r#"{"merge_method": "fast-forward"}"#);
    assert_eq!(
        (status, &out["error"]),
        (400, &json!("Invalid merge method. Must be 'merge', 'squash', or 'rebase'"))
    );

    // The maintainer enables it with their GitHub token; nothing merges without their review.
    let (status, out) = post(&s, &enable_path(70), Some(MAINT_TOKEN), "");
    assert_eq!(
        (status, &out["enabled_by"], &out["message"]),
        (200, &json!("github:pkg-maint"), &json!("Auto-merge enabled")),
        "{out}"
    );
    settle(&s);
    assert!(merges(&s, 70).is_empty(), "no approving review yet");

    // An approval by someone who maintains nothing: no merge.
    s.fake.add_review(REPO, 70, STRANGER, "APPROVED", &head);
    deliver_review(&s, "r-70-1", "submitted", 70, STRANGER, "approved", &head);
    // The maintainer's approval of another commit: no merge.
    s.fake.add_review(REPO, 70, MAINT, "APPROVED", &base);
    deliver_review(&s, "r-70-2", "submitted", 70, MAINT, "approved", &base);
    settle(&s);
    assert!(merges(&s, 70).is_empty(), "neither a stranger's approval nor one of another commit counts");

    // The maintainer's approval of the head, dismissed: no merge.
    let review = s.fake.add_review(REPO, 70, MAINT, "APPROVED", &head);
    s.fake.set_review_state(review, "DISMISSED");
    deliver_review(&s, "r-70-3", "dismissed", 70, MAINT, "dismissed", &head);
    settle(&s);
    assert!(merges(&s, 70).is_empty(), "a dismissed approval does not count");
    let looked = s.fake.calls_to("GET", &format!("/repos/{REPO}/pulls/70/reviews")).len();
    assert!(looked >= 3, "the reviews were read again after each review event ({looked})");

    // Auto-merge survives a restart.
    s.stop();
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open the database");
    let row = eka_ci::forge::github::auto_merges::get(&store, REPO, 70).expect("read").expect("persisted");
    assert_eq!((row.method, row.enabled_by.as_str()), (None, "github:pkg-maint"));
    drop(store);
    s.restart();

    // The maintainer approves the head: merged with the default method, pinned to the head.
    s.fake.add_review(REPO, 70, MAINT, "APPROVED", &head);
    deliver_review(&s, "r-70-4", "submitted", 70, MAINT, "approved", &head);
    wait_for("the auto-merge", || (!merges(&s, 70).is_empty()).then_some(()));
    assert_eq!(merges(&s, 70), [(head.clone(), "squash".to_string())]);

    // An administrator enables and disables; an approval after that merges nothing.
    let head71 = f.head("app 3", &format!("{LIB} app = {}; {other}", with_maintainers("app-3", maint)));
    open_on(&s, &f, 71, &head71, &base);
    assert_eq!(s.wait_completed(&head71, GATE)["conclusion"], "success");
    // The CLI: enable, list, refuse a bad method, disable.
    let cli = |args: &[&str]| {
        let out = s.home.ekaci(args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert_eq!(
        cli(&["auto-merge", "enable", REPO, "71"]),
        (Some(0), format!("auto-merge enabled for {REPO}#71\n"))
    );
    let (code, listed) = cli(&["auto-merge", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(
        (code, &listed[0]["number"], &listed[0]["enabled_by"]),
        (Some(0), &json!(71), &json!("cli")),
        "{listed}"
    );
    let (code, text) = cli(&["auto-merge", "enable", REPO, "71", "--method", "ff"]);
    assert!(code == Some(1) && text.contains("invalid merge method `ff`"), "{text}");
    assert_eq!(
        cli(&["auto-merge", "disable", REPO, "71"]),
        (Some(0), format!("auto-merge disabled for {REPO}#71\n"))
    );
    let (status, out) = post(&s, &enable_path(71), Some(&admin), r#"{"merge_method": "rebase"}"#);
    assert_eq!(
        (status, &out["enabled_by"], &out["merge_method"]),
        (200, &json!("api:am-admin"), &json!("rebase")),
        "{out}"
    );
    let (status, out) = post(&s, &disable_path(71), Some(&admin), "");
    assert_eq!(
        (status, &out["was_enabled"], &out["message"]),
        (200, &json!(true), &json!("Auto-merge disabled")),
        "{out}"
    );
    s.fake.add_review(REPO, 71, MAINT, "APPROVED", &head71);
    deliver_review(&s, "r-71-1", "submitted", 71, MAINT, "approved", &head71);
    settle(&s);
    assert!(merges(&s, 71).is_empty(), "disabled: nothing merges");
    // Enabled again (by the maintainer) with the approval already there: merged at once.
    let (status, out) = post(&s, &enable_path(71), Some(MAINT_TOKEN), r#"{"merge_method": "merge"}"#);
    assert_eq!(status, 200, "{out}");
    wait_for("the auto-merge of #71", || (!merges(&s, 71).is_empty()).then_some(()));
    assert_eq!(merges(&s, 71), [(head71.clone(), "merge".to_string())]);
    let log = s.stop();
    let store = eka_ci::store::Store::open(&s.home.db()).expect("open the database");
    let rows = eka_ci::forge::github::auto_merges::all(&store).expect("read");
    assert!(rows.is_empty(), "auto-merge is off once merged: {rows:?}\n{log}");
}

#[test]
fn a_push_clears_approvals_and_a_merge_queue_gets_githubs_auto_merge_through_graphql() {
    let f = Fixture::new();
    let maint = r#"{ github = "pkg-maint"; githubId = 777; }"#;
    let (slow, gate_file) = f.slow("slow-am2", "-am2");
    let base = f.head("packages", &format!("{LIB} app = {};", with_maintainers("app-1", maint)));
    let h1 = f.head("slow", &format!("{LIB} app = {}; {slow}", with_maintainers("app-1", maint)));
    let h2 = f.head("pushed", &format!("{LIB} app = {};", with_maintainers("app-2", maint)));
    let s = Setup::new("");
    let admin = s.home.token("am2-admin", "admin");
    let out = s.home.ekaci(&["maintainers", "add", REPO, "slow", MAINT.0]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Approved at h1 while its gate runs, then a push: the approval of h1 does not count for h2.
    open_on(&s, &f, 72, &h1, &base);
    wait_for("the gate in progress", || s.run(&h1, GATE).filter(|r| r["status"] == "in_progress"));
    let (status, out) = post(&s, &enable_path(72), Some(&admin), "");
    assert_eq!(status, 200, "{out}");
    s.fake.add_review(REPO, 72, MAINT, "APPROVED", &h1);
    deliver_review(&s, "r-72-1", "submitted", 72, MAINT, "approved", &h1);
    s.fake.set_pull_request(REPO, 72, json!({ "head": { "sha": h2 } }));
    s.pr("sync-72", "synchronize", 72, f.path(), &h2, &base, "author");
    assert_eq!(s.wait_completed(&h2, GATE)["conclusion"], "success");
    std::fs::write(&gate_file, "").expect("release");
    settle(&s);
    assert!(merges(&s, 72).is_empty(), "the approval was for the old head");
    s.fake.add_review(REPO, 72, MAINT, "APPROVED", &h2);
    deliver_review(&s, "r-72-2", "submitted", 72, MAINT, "approved", &h2);
    wait_for("the auto-merge of #72", || (!merges(&s, 72).is_empty()).then_some(()));
    assert_eq!(merges(&s, 72), [(h2.clone(), "squash".to_string())]);

    // A repository with a merge queue: `@eka-ci merge` enables GitHub's auto-merge through GraphQL,
    // pinned to the head, and never calls the merge endpoint.
    let h3 = f.head("queued", &format!(r#"{LIB} q = mk "q-am2" "echo q > $out" [];"#));
    s.fake.set_merge_queue(REPO, true);
    s.fake.set_permission(REPO, WRITER.0, "write");
    open(&s, &f, 73, &h3);
    assert_eq!(s.wait_completed(&h3, GATE)["conclusion"], "success");
    // A comment naming no method takes the one auto-merge was enabled with (the original's
    // per-pull-request preference) before `default_merge_method`.
    let (status, out) = post(&s, &enable_path(73), Some(&admin), r#"{"merge_method": "rebase"}"#);
    assert_eq!(status, 200, "{out}");
    comment(&s, 73, 9701, WRITER, "@eka-ci merge");
    wait_reactions(&s, 9701, &["+1", "eyes"]);
    assert_eq!(s.fake.auto_merges(), [(REPO.to_string(), 73, "REBASE".to_string(), h3.clone())]);
    assert!(s.fake.calls_to("PUT", &format!("/repos/{REPO}/pulls/73/merge")).is_empty(), "no REST merge");
    let mutation = s
        .fake
        .calls_to("POST", "/graphql")
        .into_iter()
        .find(|c| c.body.contains("enablePullRequestAutoMerge"));
    let mutation = mutation.expect("the mutation").json();
    assert_eq!(mutation["variables"]["id"], json!(s.fake.pull_request(REPO, 73)["node_id"]));
    let reply = wait_for("the merge-queue reply", || s.fake.comments(REPO, 73).pop());
    assert!(reply.starts_with("@writer ") && reply.contains("merge queue") && reply.contains(&h3), "{reply}");
    let _ = std::fs::remove_file(&gate_file);
}
