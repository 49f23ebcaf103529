//! The server's `[rebuild]` policy on real pull requests (signed webhooks, the fake GitHub, real git
//! diffs): a change that touches only `skip_paths` is not evaluated, and its gate says why; one more
//! path outside them and it is evaluated as usual.

use std::time::Duration;

use crate::github_app::{names, summary, Fixture, Setup, GATE, LIB};

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
