//! `require_approval`'s approvals end to end: `ekaci approve` and `ekaci approved-users` against the real
//! server over its control socket, what they store in the real redb file (an approval is for the held
//! head commit of the runs recorded there), persistence across a restart, and the exact errors for bad
//! input (from the CLI and from the server's own checks).

use crate::common;

use std::process::Output;
use std::time::Duration;

use common::{json, Home};
use eka_ci::control::client::Client;
use eka_ci::control::{ApprovedUsersOp, Request, Response};
use eka_ci::forge::github::{approvals, runs};
use eka_ci::store::Store;
use rustix::process::Signal;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `ekaci ARGS`, asserts success and returns stdout.
fn ok(home: &Home, args: &[&str]) -> String {
    let out = home.ekaci(args);
    assert!(out.status.success(), "ekaci {args:?} failed: {}", stderr(&out));
    stdout(&out)
}

/// Runs `ekaci ARGS`, asserts it fails with status 1, nothing on stdout and exactly `message` on stderr.
fn fails(home: &Home, args: &[&str], message: &str) {
    let out = home.ekaci(args);
    assert_eq!(out.status.code(), Some(1), "ekaci {args:?}: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "ekaci {args:?}");
    assert_eq!(stderr(&out), format!("ekaci: {message}\n"), "ekaci {args:?}");
}

fn stop(server: common::Server) {
    server.signal(Signal::TERM);
    let (status, stderr) = server.wait(Duration::from_secs(40));
    assert!(status.success(), "server stopped badly: {stderr}");
}

fn logins(list: &serde_json::Value) -> Vec<&str> {
    list.as_array().expect("array").iter().map(|u| u["login"].as_str().expect("login")).collect()
}

/// Records a run of pull request `number` of `repo` at commit `head` in `state` in the database of
/// `home`, as the GitHub service would have (the server must not be running).
fn seed_run(home: &Home, repo: &str, number: u64, head: &str, state: runs::RunState) {
    let store = Store::open(&home.db()).expect("open the database");
    let trigger = runs::Trigger::PullRequest { number, author: Some("outsider".into()) };
    let url = format!("https://github.com/{repo}.git");
    let run =
        runs::Run { state, ..runs::Run::new(repo, &url, Some(1), head, &"b".repeat(40), "main", trigger) };
    runs::update(&store, &runs::key(repo, head), |_| (Some(run), ())).expect("record the run");
}

#[test]
fn approving_a_pull_request_approves_its_held_head_commit_and_survives_a_restart() {
    let home = Home::new();
    let repo = "Octo-Org/Hello.World_2";
    let (sha42, sha43, old42) = ("4".repeat(40), "abcdef1".repeat(5) + "23456", "0".repeat(40));
    // #42 was pushed to: the superseded run does not count, the held one does.
    seed_run(&home, repo, 42, &old42, runs::RunState::Cancelled { reason: "superseded".into() });
    seed_run(&home, repo, 42, &sha42, runs::RunState::AwaitingApproval);
    seed_run(&home, repo, 43, &sha43, runs::RunState::AwaitingApproval);
    let server = home.start();
    assert_eq!(
        ok(&home, &["approve", "Octo-Org/Hello.World_2#42"]),
        format!("approved octo-org/hello.world_2#42 at {sha42}\n")
    );
    assert_eq!(
        ok(&home, &["approve", "octo-org/hello.world_2#42"]),
        format!("octo-org/hello.world_2#42 was already approved at {sha42}\n"),
        "names compare case-insensitively"
    );
    fails(
        &home,
        &["approve", "octo-org/hello.world_2#43", "--sha", &old42],
        &format!("commit `{old42}` is not the held head of octo-org/hello.world_2#43, which is {sha43}"),
    );
    assert_eq!(
        ok(&home, &["approve", "octo-org/hello.world_2#43", "--sha", &sha43[..9].to_ascii_uppercase()]),
        format!("approved octo-org/hello.world_2#43 at {sha43}\n"),
        "a prefix of the held head, any case"
    );
    fails(
        &home,
        &["approve", "octo-org/hello.world_2#44"],
        "no held run of octo-org/hello.world_2#44 is known",
    );
    fails(
        &home,
        &["approve", "octo-org/hello.world_2#42", "--sha", "abc"],
        "invalid commit `abc`: expected 7 to 40 hexadecimal digits",
    );
    stop(server);

    let server = home.start();
    assert_eq!(
        ok(&home, &["approve", "OCTO-ORG/hello.world_2#43"]),
        format!("octo-org/hello.world_2#43 was already approved at {sha43}\n")
    );
    stop(server);

    let store = Store::open(&home.db()).expect("open the database");
    assert!(approvals::is_commit_approved(&store, "Octo-Org/Hello.World_2", 42, &sha42).expect("read"));
    assert!(!approvals::is_commit_approved(&store, "octo-org/hello.world_2", 42, &old42).expect("read"));
    assert!(approvals::is_commit_approved(&store, "octo-org/hello.world_2", 43, &sha43).expect("read"));
    assert!(!approvals::is_commit_approved(&store, "octo-org/hello.world_2", 44, &sha43).expect("read"));
    let approval =
        approvals::commit_approval(&store, "octo-org/hello.world_2", 42, &sha42.to_ascii_uppercase())
            .expect("read")
            .expect("present");
    assert_eq!(approval.approved_by, "cli");
    let now = eka_ci::store::now_secs();
    assert!(approval.approved_at <= now && approval.approved_at + 600 > now, "{approval:?}");
}

#[test]
fn approved_users_are_added_removed_listed_and_kept() {
    let home = Home::new();
    let server = home.start();
    assert_eq!(ok(&home, &["approved-users", "list"]), "no approved users\n");
    assert_eq!(json(&home.ekaci(&["approved-users", "list", "--json"])), serde_json::json!([]));
    assert_eq!(ok(&home, &["approved-users", "add", "Octocat"]), "added octocat to the approved users\n");
    assert_eq!(ok(&home, &["approved-users", "add", "octocat"]), "octocat already is an approved user\n");
    assert_eq!(ok(&home, &["approved-users", "add", "hubot-2"]), "added hubot-2 to the approved users\n");

    let list = json(&home.ekaci(&["approved-users", "list", "--json"]));
    assert_eq!(logins(&list), ["hubot-2", "octocat"]);
    let now = eka_ci::store::now_secs();
    for user in list.as_array().expect("array") {
        assert_eq!(user["added_by"], "cli");
        let at = user["added_at"].as_u64().expect("added_at");
        assert!(at <= now && at + 600 > now, "{user}");
    }
    let text = ok(&home, &["approved-users", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("hubot-2  added ") && lines[0].ends_with(" UTC by cli"), "{text}");
    assert!(lines[1].starts_with("octocat  added ") && lines[1].ends_with(" UTC by cli"), "{text}");

    assert_eq!(
        ok(&home, &["approved-users", "remove", "OctoCat"]),
        "removed octocat from the approved users\n"
    );
    assert_eq!(ok(&home, &["approved-users", "remove", "octocat"]), "octocat was not an approved user\n");
    stop(server);

    let server = home.start();
    assert_eq!(logins(&json(&home.ekaci(&["approved-users", "list", "--json"]))), ["hubot-2"]);
    stop(server);

    let store = Store::open(&home.db()).expect("open the database");
    assert!(approvals::is_user_approved(&store, "Hubot-2").expect("read"));
    assert!(!approvals::is_user_approved(&store, "octocat").expect("read"));
    let users = approvals::list_users(&store).expect("list");
    assert_eq!(users.len(), 1);
    assert_eq!((users[0].login.as_str(), users[0].added_by.as_str()), ("hubot-2", "cli"));
}

#[test]
fn bad_input_is_refused_with_a_message_naming_it() {
    let home = Home::new();
    let server = home.start();
    let format = "expected OWNER/REPO#NUMBER, e.g. octo-org/hello-world#42";
    fails(&home, &["approve", "foo"], &format!("invalid pull request `foo`: {format}"));
    fails(&home, &["approve", "foo#3"], &format!("invalid pull request `foo#3`: {format}"));
    fails(
        &home,
        &["approve", "owner/repo#0"],
        "invalid pull request `owner/repo#0`: `0` is not a pull request number (a whole number from 1)",
    );
    fails(
        &home,
        &["approve", "owner/repo#x1"],
        "invalid pull request `owner/repo#x1`: `x1` is not a pull request number (a whole number from 1)",
    );
    fails(
        &home,
        &["approve", "own_er/repo#1"],
        "invalid pull request `own_er/repo#1`: owner `own_er` is not a GitHub account name (1 to 39 \
         letters, digits or hyphens)",
    );
    fails(
        &home,
        &["approve", "owner/..#1"],
        "invalid pull request `owner/..#1`: repository `..` is not a GitHub repository name (1 to 100 \
         letters, digits, `.`, `_` or `-`, and not `.` or `..`)",
    );
    fails(
        &home,
        &["approved-users", "add", "--", "-bad-login"],
        "invalid GitHub login `-bad-login`: a login does not start or end with a hyphen",
    );
    fails(
        &home,
        &["approved-users", "remove", "bad--login"],
        "invalid GitHub login `bad--login`: a login has no two hyphens in a row",
    );
    fails(
        &home,
        &["approved-users", "add", "bad_login"],
        "invalid GitHub login `bad_login`: a login has only letters, digits and hyphens",
    );
    let long = "a".repeat(40);
    fails(
        &home,
        &["approved-users", "add", &long],
        &format!("invalid GitHub login `{long}`: a login has 1 to 39 characters"),
    );
    assert_eq!(json(&home.ekaci(&["approved-users", "list", "--json"])), serde_json::json!([]));

    // The server checks what it is sent itself, not only the CLI.
    let answers = smol::block_on(async {
        let mut client = Client::connect(&home.socket()).await.expect("connect");
        let mut answers = Vec::new();
        for request in [
            Request::Approve { repo: "own_er/repo".into(), number: 1, sha: None },
            Request::Approve { repo: "owner/repo".into(), number: 0, sha: None },
            Request::Approve { repo: "no-slash".into(), number: 1, sha: None },
            Request::ApprovedUsers(ApprovedUsersOp::Add("bad-".into())),
        ] {
            answers.push(client.call(&request).await.expect("call"));
        }
        answers
    });
    let messages: Vec<String> = answers
        .into_iter()
        .map(|r| match r {
            Response::Error { message } => message,
            other => panic!("expected an error, got {other:?}"),
        })
        .collect();
    assert_eq!(
        messages,
        [
            "invalid pull request `own_er/repo`: owner `own_er` is not a GitHub account name (1 to 39 \
             letters, digits or hyphens)",
            "invalid pull request `owner/repo#0`: pull request numbers start at 1",
            "invalid pull request `no-slash`: expected OWNER/REPO#NUMBER, e.g. octo-org/hello-world#42",
            "invalid GitHub login `bad-`: a login does not start or end with a hyphen",
        ]
    );
    stop(server);
    let store = Store::open(&home.db()).expect("open the database");
    assert!(!approvals::is_commit_approved(&store, "owner/repo", 0, &"0".repeat(40)).expect("read"));
    assert!(approvals::list_users(&store).expect("list").is_empty());
}

#[test]
fn argument_errors_exit_like_other_commands() {
    let home = Home::new();
    let out = home.ekaci(&["approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Required positional arguments not provided"), "{}", stderr(&out));
    // A login starting with a hyphen looks like an option; after `--` it reaches our own check (see
    // bad_input_is_refused_with_a_message_naming_it).
    let out = home.ekaci(&["approved-users", "add", "-bad-login"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("Unrecognized argument: -bad-login\n"), "{}", stderr(&out));
    let out = home.ekaci(&["approved-users", "frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Unrecognized argument: frobnicate"), "{}", stderr(&out));
}
