//! Crash recovery of the build engine through the real server: a review of a layered DAG is interrupted
//! by SIGKILL while it builds, the server starts again on the same configuration, and every derivation
//! still gets built, with nothing left queued.

use crate::common;

use std::time::{Duration, Instant};

use common::{json, multi_output_nix, nonce, GitRepo, Home};
use rustix::process::Signal;

use common::FILE_JOB as CONFIG;

/// `layers` layers of `width` derivations, each sleeping `sleep` seconds and depending on every
/// derivation of the layer before; every third one has a second output, `dev`, which is what its
/// dependents use.
fn layered(n: &str, layers: usize, width: usize, sleep: &str) -> String {
    let multi = |l: usize, w: usize| (l * width + w) % 3 == 1;
    let mut body = String::new();
    for l in 0..layers {
        for w in 0..width {
            let deps: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                (0..width)
                    .map(|d| {
                        if multi(l - 1, d) {
                            format!("d{}x{d}.dev", l - 1)
                        } else {
                            format!("d{}x{d}", l - 1)
                        }
                    })
                    .collect()
            };
            let outputs = if multi(l, w) { r#"[ "out" "dev" ]"# } else { r#"[ "out" ]"# };
            body.push_str(&format!(
                "  d{l}x{w} = mk \"d{l}x{w}\" {outputs} \"/bin/sleep {sleep}; echo {l}.{w} > $out; if [ -n \\\"$dev\\\" ]; then echo > $dev; fi\" [ {} ];\n",
                deps.join(" ")
            ));
        }
    }
    multi_output_nix(n, &body)
}

/// `ekaci builds --json` as (state, count) pairs summed.
fn counts(home: &Home) -> std::collections::BTreeMap<String, usize> {
    let out = home.ekaci(&["builds", "--json"]);
    let mut counts = std::collections::BTreeMap::new();
    if !out.status.success() {
        return counts;
    }
    for b in json(&out).as_array().cloned().unwrap_or_default() {
        *counts.entry(b["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
    }
    counts
}

/// Waits until at least `n` derivations succeeded; on a timeout, fails with the server's log.
fn wait_for_successes(home: &Home, server: common::Server, n: usize) -> common::Server {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counts(home).get("success").copied().unwrap_or(0) < n {
        if Instant::now() > deadline {
            let now = counts(home);
            let (_, log) = server.stop();
            panic!("{n} successes never came: {now:?}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[test]
fn a_review_killed_mid_build_resumes_and_finishes_after_restarts() {
    let (layers, width) = (8, 5);
    let total = layers * width;
    let repo = GitRepo::new();
    let base = repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some("{ }"))]);
    let head = repo.commit("head", &[("default.nix", Some(&layered(&nonce(), layers, width, "0.3")))]);

    let home = Home::new();
    let mut server = home.start();
    let mut review = home.spawn_review(&repo, &base, &head);

    // SIGKILL while the first layers build (the requester is gone with it), then again later, after the
    // restarted server has resumed on its own.
    for kill_after in [width + 2, total * 3 / 4] {
        server = wait_for_successes(&home, server, kill_after);
        server.signal(Signal::KILL);
        let _ = server.wait(Duration::from_secs(10));
        let before = counts(&home);
        assert!(before.get("success").copied().unwrap_or(0) < total, "killed too late: {before:?}");
        server = home.start();
    }
    let _ = review.wait();

    // Everything recorded as wanted is built, nothing is left waiting.
    let deadline = Instant::now() + Duration::from_secs(180);
    let last = loop {
        let now = counts(&home);
        let status = server.status();
        let idle = status["queues"]["builds"] == 0 && status["active_builds"] == 0;
        if idle && now.get("success").copied().unwrap_or(0) == total {
            break now;
        }
        assert!(Instant::now() < deadline, "stranded after the restarts: {now:?}, status {status}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(last.len(), 1, "only successes: {last:?}");
}

/// `[builders] local_max_jobs` bounds the builds that run at once: six independent slow derivations
/// with one slot are built one at a time (the server never reports more than one active build), and all
/// of them are built.
#[test]
fn local_max_jobs_bounds_concurrent_builds() {
    let repo = GitRepo::new();
    let base = repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some("{ }"))]);
    let head = repo.commit("head", &[("default.nix", Some(&layered(&nonce(), 1, 6, "0.4")))]);
    let home = Home::new();
    home.write_config("[builders]\nlocal_max_jobs = 1\n");
    let server = home.start();
    let mut review = home.spawn_review(&repo, &base, &head);
    let (mut most, mut seen_one) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(120);
    while review.try_wait().ok().flatten().is_none() {
        let active = server.status()["active_builds"].as_u64().unwrap_or(0);
        most = most.max(active);
        seen_one |= active == 1;
        assert!(Instant::now() < deadline, "the review did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen_one, "a build was seen running");
    assert_eq!(most, 1, "one slot: never more than one build at once");
    assert_eq!(counts(&home).get("success").copied(), Some(6));
}
