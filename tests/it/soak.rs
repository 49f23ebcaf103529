//! The soak: SIGKILL the server at random moments while it reviews a layered DAG (locally, where the
//! client asks again after each restart, and as a GitHub run through the fake GitHub, which resumes by
//! itself), restart it each time on the same configuration, and compare the
//! end with an uninterrupted run of the same shape: every derivation in the same final state, every
//! check run with the same conclusion, nothing stranded, no check run duplicated.
//!
//! The short version runs with the suite; `scripts/soak` runs the long one (500 derivations, 20 kills)
//! through the ignored tests, sized by `EKA_SOAK_DRVS`, `EKA_SOAK_KILLS` and `EKA_SOAK_SEED`.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{json, multi_output_nix, nonce, GitRepo, Home};
use rustix::process::Signal;
use serde_json::Value;

use common::FILE_JOB as CONFIG;

/// The shape of one soak.
#[derive(Clone, Copy, Debug)]
struct Shape {
    drvs: usize,
    kills: usize,
    seed: u64,
}

impl Shape {
    fn from_env(drvs: usize, kills: usize) -> Shape {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        Shape {
            drvs: var("EKA_SOAK_DRVS").map(|v| v as usize).unwrap_or(drvs),
            kills: var("EKA_SOAK_KILLS").map(|v| v as usize).unwrap_or(kills),
            seed: var("EKA_SOAK_SEED").unwrap_or(0x5eed),
        }
    }
}

/// A small deterministic generator (the kill moments must be reproducible from the seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}

/// `drvs` derivations in layers of 20: each depends on two of the layer below and sleeps briefly; every
/// 37th fails (its dependents then fail transitively), every fifth has a `dev` output its dependents use.
fn dag(n: &str, drvs: usize) -> String {
    let width = 20.min(drvs.max(1));
    let mut body = String::new();
    for k in 0..drvs {
        let (l, w) = (k / width, k % width);
        let multi = |k: usize| k % 5 == 2;
        let deps: Vec<String> = if l == 0 {
            Vec::new()
        } else {
            [w, (w + 1) % width]
                .iter()
                .map(|d| (l - 1) * width + d)
                .map(|d| if multi(d) { format!("d{d}.dev") } else { format!("d{d}") })
                .collect()
        };
        let outputs = if multi(k) { r#"[ "out" "dev" ]"# } else { r#"[ "out" ]"# };
        let result =
            if k % 37 == 36 { "exit 1" } else { "echo > $out; if [ -n \\\"$dev\\\" ]; then echo > $dev; fi" };
        body.push_str(&format!(
            "  d{k} = mk \"d{k}\" {outputs} \"/bin/sleep 0.1; {result}\" [ {} ];\n",
            deps.join(" ")
        ));
    }
    multi_output_nix(n, &body)
}

/// Every derivation's state by attribute name (`d12`), from `ekaci builds --json`; `None` when the
/// server does not answer.
fn states(home: &Home) -> Option<BTreeMap<String, String>> {
    let out = home.ekaci(&["builds", "--json", "--limit", "100000"]);
    if !out.status.success() {
        return None;
    }
    let mut states = BTreeMap::new();
    for b in json(&out).as_array().cloned().unwrap_or_default() {
        let drv = b["drv"].as_str().unwrap_or("");
        // /nix/store/<hash>-d12-<nonce>.drv
        let name = drv.rsplit('/').next().unwrap_or("").split('-').nth(1).unwrap_or("").to_string();
        states.insert(name, b["state"].as_str().unwrap_or("?").to_string());
    }
    Some(states)
}

/// Waits until the server is idle (no queued or running build) and returns the states.
fn settled(home: &Home, server: &common::Server, want: usize) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = server.status();
        if status["queues"]["builds"] == 0 && status["active_builds"] == 0 {
            if let Some(s) = states(home).filter(|s| s.len() >= want) {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "never settled: {:?}, status {status}", states(home));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How many derivations reached a final state.
fn finished(home: &Home) -> usize {
    states(home)
        .map(|s| s.values().filter(|v| !matches!(v.as_str(), "queued" | "buildable" | "building")).count())
        .unwrap_or(0)
}

/// Waits for a random moment of the build phase: until at least one more derivation finished than
/// `last` (at most 60 s), then a random 0 to 800 ms more. Returns the count it saw.
fn kill_moment(home: &Home, rng: &mut Rng, last: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = finished(home);
    while done <= last && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        done = finished(home);
    }
    std::thread::sleep(Duration::from_millis(rng.below(800)));
    done
}

/// One local review of a fresh DAG; with `kills`, SIGKILLs the server at random moments and restarts it.
/// Returns the final states, the number of kills that happened while work was left, and the wall time.
fn local_review(shape: Shape, kills: usize) -> (BTreeMap<String, String>, usize, Duration) {
    let repo = GitRepo::new();
    let base = repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some("{ }"))]);
    let head = repo.commit("head", &[("default.nix", Some(&dag(&nonce(), shape.drvs)))]);
    let home = Home::new();
    let started = Instant::now();
    let mut server = home.start();
    let mut review = home.spawn_review(&repo, &base, &head);
    let mut rng = Rng(shape.seed);
    let (mut mid_work, mut last) = (0, 0);
    for _ in 0..kills {
        last = kill_moment(&home, &mut rng, last);
        let status = server.status();
        if status["queues"]["builds"] != 0 || status["active_builds"] != 0 {
            mid_work += 1;
        }
        server.signal(Signal::KILL);
        let _ = server.wait(Duration::from_secs(10));
        server = home.start();
        // The client lost its server; like a user (or GitHub's retry), it asks again. Builds the
        // previous server had recorded resume on their own; a review killed before it recorded any
        // is evaluated again (from the stored jobsets when they were complete).
        let _ = review.kill();
        let _ = review.wait();
        review = home.spawn_review(&repo, &base, &head);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while review.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the last review never finished: {:?}", states(&home));
        std::thread::sleep(Duration::from_millis(100));
    }
    let final_states = settled(&home, &server, 1);
    (final_states, mid_work, started.elapsed())
}

fn check_local(shape: Shape) {
    let (interrupted, mid_work, took) = local_review(shape, shape.kills);
    let (reference, _, reference_took) = local_review(shape, 0);
    eprintln!(
        "soak (local): {} derivations, {} SIGKILLs ({mid_work} with builds queued or running), {:.1} s; \
         uninterrupted {:.1} s",
        shape.drvs,
        shape.kills,
        took.as_secs_f64(),
        reference_took.as_secs_f64()
    );
    assert_eq!(reference.len(), shape.drvs, "the reference built every derivation: {reference:?}");
    let differ: Vec<_> = reference
        .iter()
        .filter(|(name, state)| interrupted.get(*name) != Some(*state))
        .map(|(name, state)| (name.clone(), state.clone(), interrupted.get(name).cloned()))
        .collect();
    assert!(
        differ.is_empty(),
        "final states differ from the uninterrupted run (name, reference, soak): {differ:?}"
    );
    assert_eq!(interrupted.len(), reference.len(), "{interrupted:?}");
}

/// The check runs of a GitHub run of a fresh fixture, with `kills` SIGKILLs at random moments.
fn github_run(shape: Shape, kills: usize) -> Vec<Value> {
    use crate::github_app::{Fixture, Setup, GATE};
    let mut s = Setup::new("");
    let f = Fixture::new();
    let head = f.repo.commit("soak head", &[("default.nix", Some(&dag(&f.nonce, shape.drvs)))]);
    s.pr("d-soak", "opened", 5, f.path(), &head, &f.base, "member");
    let (mut rng, mut last) = (Rng(shape.seed ^ 0x61), 0);
    for _ in 0..kills {
        last = kill_moment(&s.home, &mut rng, last);
        s.kill();
        s.restart();
    }
    s.wait_completed(&head, GATE);
    // Let the last updates land, then take every check run of the head.
    std::thread::sleep(Duration::from_secs(2));
    s.runs(&head)
}

/// (name, status, conclusion, title) of each check run, sorted.
fn outcome(runs: &[Value]) -> Vec<(String, String, String, String)> {
    let mut o: Vec<_> = runs
        .iter()
        .map(|r| {
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (s(&r["name"]), s(&r["status"]), s(&r["conclusion"]), s(&r["output"]["title"]))
        })
        .collect();
    o.sort();
    o
}

fn check_github(shape: Shape) {
    let interrupted = github_run(shape, shape.kills);
    let reference = github_run(shape, 0);
    let (got, want) = (outcome(&interrupted), outcome(&reference));
    let mut names: Vec<&String> = got.iter().map(|o| &o.0).collect();
    names.dedup();
    assert_eq!(names.len(), got.len(), "a check run was created twice: {got:?}");
    assert_eq!(got, want, "check runs differ from the uninterrupted run");
    eprintln!(
        "soak (GitHub): {} derivations, {} SIGKILLs, {} check runs identical",
        shape.drvs,
        shape.kills,
        got.len()
    );
}

#[test]
fn short_soak_of_a_local_review() {
    check_local(Shape { drvs: 60, kills: 3, seed: 0x5eed });
}

#[test]
fn short_soak_of_a_github_run() {
    check_github(Shape { drvs: 40, kills: 2, seed: 0x5eed });
}

/// `scripts/soak`: 500 derivations and 20 kills unless the environment says otherwise.
#[test]
#[ignore]
fn soak_of_a_local_review() {
    check_local(Shape::from_env(500, 20));
}

#[test]
#[ignore]
fn soak_of_a_github_run() {
    check_github(Shape::from_env(500, 20));
}
