//! What gates a pull request comes from the trusted side (docs/security.md): the base commit's
//! configuration gates unless the author has write access, and `require_approval`'s approvals are for
//! one commit. Signed webhooks into the real server, the fake GitHub on loopback, real git repositories
//! and real Nix evaluations and builds, as in `github_app`.

use std::time::Duration;

use crate::github_app::{names, nix, summary, wait_for, Fixture, Setup, CONFIG, GATE, LIB, REPO};

const CONFIGURE: &str = "EkaCI: Configure";
const APPROVAL: &str = "EkaCI: Approval Required";
const EXTRA_GATE: &str = "EkaCI: Evaluate Job (extra)";

/// A head that breaks the build (`broken`, an added attribute that fails) and changes
/// `.eka-ci/config.json` to hide it: job `main` now evaluates `hide.nix` (only `lib`), and a job
/// `extra` is added.
fn hiding_head(f: &Fixture) -> String {
    let config = r#"{ "jobs": { "main": { "file": "hide.nix" }, "extra": { "file": "extra.nix" } } }"#;
    f.repo.commit(
        "break and hide it",
        &[
            ("default.nix", Some(&nix(&f.nonce, &format!(r#"{LIB} broken = mk "broken-h" "exit 1" [];"#)))),
            ("hide.nix", Some(&nix(&f.nonce, LIB))),
            ("extra.nix", Some(&nix(&f.nonce, r#"x = mk "x-1" "echo x > $out" [];"#))),
            (".eka-ci/config.json", Some(config)),
        ],
    )
}

#[test]
fn a_configuration_change_gates_only_when_the_author_has_write_access() {
    let s = Setup::new("");
    s.fake.set_permission(REPO, "member", "write");

    // An author without write access: the base's job `main` (default.nix) gates, on both commits.
    let outside = Fixture::new();
    let head = hiding_head(&outside);
    s.pr("d-out", "opened", 1, outside.path(), &head, &outside.base, "outsider");
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "failure", "the hidden package still fails the gate: {gate}");
    assert!(summary(&gate).contains("| 1 | 0 | 0 | 1 | 0 | 1 | 0 |"), "default.nix's attributes: {gate}");
    assert!(summary(&gate).contains("`broken`"), "{gate}");
    assert_eq!(s.wait_completed(&head, "broken (main)")["conclusion"], "failure");
    let configure = s.wait_completed(&head, CONFIGURE);
    assert_eq!(configure["conclusion"], "neutral", "{configure}");
    assert_eq!(configure["output"]["title"], "Configuration change not used", "{configure}");
    let text = summary(&configure);
    assert!(text.contains("- changes job `main`: `file`\n"), "{text}");
    assert!(text.contains("- adds job `extra`\n"), "{text}");
    assert!(
        text.contains("not used until it is merged or the pull request's author has write access"),
        "{text}"
    );
    assert!(text.contains("1 job(s) from `.eka-ci/config.json`: `main`."), "{text}");
    s.wait_completed(&head, "EkaCI: Change Summary");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        names(&s.runs(&head)),
        ["EkaCI: Change Summary", CONFIGURE, GATE, "broken (main)"],
        "only the base's jobs gate: no `extra`"
    );

    // The same change by an author with write access: the head's configuration gates.
    let inside = Fixture::new();
    let head = hiding_head(&inside);
    s.pr("d-in", "opened", 2, inside.path(), &head, &inside.base, "member");
    let gate = s.wait_completed(&head, GATE);
    assert_eq!(gate["conclusion"], "success", "hide.nix has only lib: {gate}");
    assert!(!summary(&gate).contains("broken"), "{gate}");
    assert_eq!(s.wait_completed(&head, EXTRA_GATE)["conclusion"], "success");
    let configure = s.wait_completed(&head, CONFIGURE);
    assert_eq!(configure["conclusion"], "success", "{configure}");
    assert_eq!(configure["output"]["title"], "Configuration valid (changed)", "{configure}");
    let text = summary(&configure);
    assert!(
        text.contains("- changes job `main`: `file`\n") && text.contains("- adds job `extra`\n"),
        "{text}"
    );
    assert!(text.contains("its author, member, has write access"), "{text}");
    assert!(s.run(&head, "broken (main)").is_none(), "default.nix is not evaluated");

    // A repository without a configuration: an outside author's pull request that adds one evaluates
    // nothing.
    let bare = crate::common::GitRepo::new();
    let base = bare.commit("no config", &[("README", Some("x"))]);
    let nonce = crate::common::nonce();
    let head = bare.commit(
        "add a config",
        &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&nonce, LIB)))],
    );
    s.pr("d-bare", "opened", 3, bare.path(), &head, &base, "outsider");
    let configure = s.wait_completed(&head, CONFIGURE);
    assert_eq!(configure["conclusion"], "neutral", "{configure}");
    assert_eq!(configure["output"]["title"], "Configuration not used until merged", "{configure}");
    let text = summary(&configure);
    assert!(
        text.contains("- adds `.eka-ci/config.json`\n") && text.contains("nothing is evaluated"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&head)), [CONFIGURE], "nothing gates");
}

#[test]
fn an_approval_is_for_one_commit_and_an_approved_user_stays_approved() {
    let f = Fixture::new();
    let base = f.base.clone();
    let head1 = f.head("one", r#"lib = mk "lib-a1" "echo a1 > $out" [];"#);
    let head2 = f.head("two", r#"lib = mk "lib-a2" "echo a2 > $out" [];"#);
    let s = Setup::new("require_approval = true");

    s.pr("d-a1", "opened", 21, f.path(), &head1, &base, "outsider");
    let held = s.wait_completed(&head1, APPROVAL);
    assert_eq!(held["conclusion"], "action_required", "{held}");
    assert!(summary(&held).contains(&format!("this one, `{head1}`")), "names the commit: {held}");
    let out = s.home.ekaci(&["approve", &format!("{REPO}#21")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("approved {REPO}#21 at {head1}\n"));
    assert_eq!(s.wait_completed(&head1, GATE)["conclusion"], "success");
    let approved = s.run(&head1, APPROVAL).expect("approval check");
    assert_eq!(approved["conclusion"], "success", "{approved}");
    assert!(summary(&approved).contains(&head1), "{approved}");

    // The same author pushes again: the new commit is held, naming it.
    s.pr("d-a2", "synchronize", 21, f.path(), &head2, &base, "outsider");
    let held = s.wait_completed(&head2, APPROVAL);
    assert_eq!(held["conclusion"], "action_required", "{held}");
    assert!(summary(&held).contains(&format!("this one, `{head2}`")), "names the new commit: {held}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&s.runs(&head2)), [APPROVAL], "nothing evaluated before the new approval");
    assert_eq!(s.server().status()["queues"]["github_held"], 1);
    let out = s.home.ekaci(&["approve", &format!("{REPO}#21"), "--sha", &head1]);
    assert_eq!(out.status.code(), Some(1), "the old commit is not the held head");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("ekaci: commit `{head1}` is not the held head of {REPO}#21, which is {head2}\n")
    );
    let out = s.home.ekaci(&["approve", &format!("{REPO}#21"), "--sha", &head2[..10]]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("approved {REPO}#21 at {head2}\n"));
    assert_eq!(s.wait_completed(&head2, GATE)["conclusion"], "success");

    // An approved user is approved for every push.
    let out = s.home.ekaci(&["approved-users", "add", "regular"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let head3 = f.head("three", r#"lib = mk "lib-a3" "echo a3 > $out" [];"#);
    let head4 = f.head("four", r#"lib = mk "lib-a4" "echo a4 > $out" [];"#);
    s.pr("d-a3", "opened", 31, f.path(), &head3, &base, "regular");
    assert_eq!(s.wait_completed(&head3, GATE)["conclusion"], "success");
    s.pr("d-a4", "synchronize", 31, f.path(), &head4, &base, "regular");
    assert_eq!(s.wait_completed(&head4, GATE)["conclusion"], "success");
    for head in [&head3, &head4] {
        assert!(s.run(head, APPROVAL).is_none(), "never held: {:?}", s.runs(head));
    }
    wait_for("nothing held", || (s.server().status()["queues"]["github_held"] == 0).then_some(()));
}
