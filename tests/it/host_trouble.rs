//! Host trouble during a review's pipeline steps is retried, never recorded as the commit's failure: the
//! server's process runs out of file descriptors for real (EMFILE) while checking out, while evaluating
//! and while reading `.drv` files (with the identity step alongside), and each step waits, retries with backoff and completes once
//! descriptors are free again, with the jobset evaluated and its graph stored.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{nonce, nonce_prelude, GitRepo, FILE_JOB};
use eka_ci::checkout::local_url;
use eka_ci::jobset::{AttrOutcome, JobsetState};
use eka_ci::pipeline::{Progress, ProgressFn};

/// The pipeline stages in the order they run: the progress stage that starts each, and the
/// `eka_ci_host_trouble_retries_total` label its retries count under.
const STAGES: [(&str, &str); 3] =
    [("checking out", "checkout"), ("evaluating", "evaluation"), ("reading the derivation graph", "graph")];

fn retries(stage: &str) -> u64 {
    eka_ci::metrics::global().host_trouble_retries.with_label_values(&[stage]).get()
}

/// Run in a process of its own by [`host_trouble_in_every_pipeline_step_is_retried_not_recorded`]: it
/// fills its own file-descriptor table, so it must not share a process with other tests.
#[test]
#[ignore = "run in a process of its own by host_trouble_in_every_pipeline_step_is_retried_not_recorded"]
fn host_trouble_child() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(512), maximum: limit.maximum }).expect("setrlimit");

    let n = nonce();
    let repo = GitRepo::new();
    // `c` is `a` again: the identity step has a group to decide, so it runs a Nix process.
    let nix = format!(
        "{}let s = {{ a = mk \"trouble-a\" \"echo a > $out\" [ ]; b = mk \"trouble-b\" \"echo b > $out\" [ ]; }}; in s // {{ c = s.a; }}",
        nonce_prelude(&n)
    );
    let sha = repo.commit("c", &[(".eka-ci/config.json", Some(FILE_JOB)), ("default.nix", Some(&nix))]);
    let dir = tempfile::tempdir().expect("tmp");
    let (_store, pipeline) = common::pipeline_in(dir.path());
    // async-process sets its child reaper up at the first spawn and panics if it cannot; the server has
    // spawned Nix at start-up long before any review, and so does this.
    assert!(smol::block_on(smol::process::Command::new("true").status()).expect("spawn true").success());

    // When a stage starts (its first progress report), the process runs out of file descriptors.
    let held: Arc<Mutex<Vec<std::fs::File>>> = Arc::default();
    let next = Arc::new(Mutex::new(0usize));
    let progress: ProgressFn = {
        let (held, next) = (held.clone(), next.clone());
        Arc::new(move |p: Progress| {
            let mut next = next.lock().expect("lock");
            let Some((prefix, _)) = STAGES.get(*next) else { return };
            if !p.stage.starts_with(prefix) {
                return;
            }
            *next += 1;
            let mut held = held.lock().expect("lock");
            let emfile = loop {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => held.push(f),
                    Err(e) => break e,
                }
            };
            assert_eq!(emfile.raw_os_error(), Some(rustix::io::Errno::MFILE.raw_os_error()), "{emfile}");
        })
    };

    let url = local_url(repo.path());
    let review = std::thread::spawn({
        let (pipeline, url, sha) = (pipeline.clone(), url.clone(), sha.clone());
        move || smol::block_on(pipeline.evaluate_commit(&url, &sha, None, None, &Some(progress), true))
    });
    for (prefix, stage) in STAGES {
        let start = Instant::now();
        // The step failed for lack of descriptors and waits to retry: nothing has finished.
        while retries(stage) == 0 {
            assert!(!review.is_finished(), "the review ended while {prefix} had no file descriptors");
            assert!(start.elapsed() < Duration::from_secs(120), "no {stage} retry was counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(!review.is_finished(), "the review must wait for the host, not give up ({stage})");
        assert!(!held.lock().expect("lock").is_empty(), "{prefix} ran out of descriptors");
        // The host recovers.
        held.lock().expect("lock").clear();
    }
    let (report, jobsets) = review.join().expect("review thread").expect("evaluated once the host recovered");
    assert_eq!(*next.lock().expect("lock"), STAGES.len(), "every stage ran out of descriptors once");
    let jobset = jobsets.first().expect("one job");
    assert_eq!(jobset.state, JobsetState::Evaluated, "{jobset:#?}");
    let job = report.jobs.first().expect("one job");
    let drvs: Vec<String> = job
        .attrs
        .iter()
        .filter_map(|(attr, o)| match o {
            AttrOutcome::Drv(d) => Some(format!("{attr}={}", d.drv_path)),
            _ => None,
        })
        .collect();
    assert_eq!(drvs.len(), 3, "every attribute evaluated, none recorded as an error: {:#?}", job.attrs);
    let roots: Vec<String> =
        drvs.iter().filter_map(|d| d.split_once('=').map(|(_, p)| p.to_string())).collect();
    let ids = pipeline.graph().ids_of(&roots).expect("graph lookup");
    assert!(ids.iter().all(Option::is_some), "every root's graph was stored: {ids:?}");
    // The identity step runs alongside the graph, out of descriptors with it, and is retried too.
    for stage in ["checkout", "evaluation", "graph", "identity"] {
        assert!(retries(stage) >= 1, "{stage}");
    }
    println!("host trouble child: done");
}

#[test]
fn host_trouble_in_every_pipeline_step_is_retried_not_recorded() {
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "host_trouble::host_trouble_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("host trouble child: done"),
        "child failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
