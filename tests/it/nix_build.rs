//! The Nix build runner (`eka_ci::nix::build`) against the real Nix: outcomes, logs, supervision and the
//! bulk validity check. Every test instantiates its own derivations with a fresh nonce, so nothing is
//! already valid from an earlier run; Nix runs without substituters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eka_ci::nix::build::{
    invalid_outputs, log_path, nix_processes_spawned, start_batch, BatchSummary, BuildBatch, BuildError,
    BuildEvent, DrvOutcome, StopReason,
};

const PRELUDE: &str = r#"{ n }:
let
  mk = name: script: extra: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    nonce = n;
  } // extra);
in
"#;

fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos();
    format!("{}{}{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_000)
}

/// A private directory with the Nix file and the logs directory.
struct Case {
    dir: tempfile::TempDir,
    nonce: String,
}

impl Case {
    fn new(attrs: &str) -> Case {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("default.nix"), format!("{PRELUDE}{attrs}")).expect("write nix file");
        Case { dir, nonce: nonce() }
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// `nix-instantiate` of the named attributes, in order.
    fn drvs(&self, names: &[&str]) -> Vec<String> {
        let mut cmd = Command::new("nix-instantiate");
        cmd.arg(self.dir.path().join("default.nix")).args(["--argstr", "n", &self.nonce]);
        for n in names {
            cmd.args(["-A", n]);
        }
        let out = cmd.env("NIX_CONFIG", "substituters =").output().expect("run nix-instantiate");
        assert!(out.status.success(), "nix-instantiate: {}", String::from_utf8_lossy(&out.stderr));
        let drvs: Vec<String> =
            String::from_utf8(out.stdout).expect("utf8").lines().map(str::to_string).collect();
        assert_eq!(drvs.len(), names.len());
        drvs
    }

    fn batch(&self, drvs: &[String]) -> BuildBatch {
        let mut b = BuildBatch::new(drvs.to_vec(), self.logs());
        b.max_jobs = 2;
        b.max_silent = Duration::from_secs(60);
        b.max_duration = Duration::from_secs(120);
        b.options = vec![("substituters".into(), String::new())];
        b
    }
}

/// Runs a batch to its end and returns its summary and every event.
fn run(batch: BuildBatch) -> (BatchSummary, Vec<BuildEvent>) {
    let (tx, rx) = async_channel::unbounded();
    let summary = smol::block_on(async {
        let running = start_batch(batch, tx).await.expect("start batch");
        running.wait().await
    });
    let events: Vec<BuildEvent> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    (summary, events)
}

fn outcome<'a>(s: &'a BatchSummary, drv: &str) -> &'a DrvOutcome {
    &s.report(drv).unwrap_or_else(|| panic!("no report for {drv}")).outcome
}

fn read_log(logs: &Path, drv: &str, attempt: u32) -> Vec<u8> {
    let p = log_path(logs, drv, attempt).expect("log path");
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn finished_count(events: &[BuildEvent], drv: &str) -> usize {
    events.iter().filter(|e| matches!(e, BuildEvent::Finished { drv: d, .. } if d == drv)).count()
}

/// Pids whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Pids of process group `pgid`.
fn group_members(pgid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if rest.split_whitespace().nth(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn independent_derivations_succeed_with_separate_logs() {
    let case = Case::new(
        r#"{
  a = mk "a" "echo out-a-${n}; echo err-a-${n} >&2; echo a > $out" {};
  b = mk "b" "echo out-b-${n}; echo b > $out" {};
  c = mk "c" "echo out-c-${n}; echo c > $out" {};
}"#,
    );
    let drvs = case.drvs(&["a", "b", "c"]);
    let (s, events) = run(case.batch(&drvs));
    assert_eq!(s.nix_runs, 1);
    assert!(s.stopped.is_none());
    for (d, name) in drvs.iter().zip(["a", "b", "c"]) {
        assert_eq!(outcome(&s, d), &DrvOutcome::Success { built: true }, "{s:#?}");
        let log = String::from_utf8(read_log(&case.logs(), d, 1)).expect("utf8");
        assert!(log.contains(&format!("out-{name}-{}", case.nonce)), "{log:?}");
        for other in ["a", "b", "c"].iter().filter(|o| **o != name) {
            assert!(!log.contains(&format!("out-{other}-")), "{name}'s log has {other}'s output: {log:?}");
        }
        assert_eq!(finished_count(&events, d), 1);
        assert!(events.iter().any(|e| matches!(e, BuildEvent::Started { drv, machine: None } if drv == d)));
        let r = s.report(d).expect("report");
        assert_eq!(r.log.as_deref(), Some(log_path(&case.logs(), d, 1).expect("path").as_path()));
        assert!(r.duration > Duration::ZERO);
    }
    assert!(String::from_utf8(read_log(&case.logs(), &drvs[0], 1)).expect("utf8").contains("err-a-"));
    // No result symlink anywhere, and the scratch directory is gone.
    let names: Vec<String> = std::fs::read_dir(case.logs())
        .expect("logs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.len() == 32), "{names:?}");
    assert!(!case.dir.path().join("result").exists());
}

#[test]
fn a_chain_builds_in_order_in_one_batch() {
    let case = Case::new(
        r#"rec {
  a = mk "a" "echo one > $out" {};
  b = mk "b" "read x < $dep; echo $x two > $out" { dep = a; };
  c = mk "c" "read x < $dep; echo got $x; echo $x three > $out" { dep = b; };
}"#,
    );
    let drvs = case.drvs(&["a", "b", "c"]);
    // Deliberately listed in reverse order.
    let batch = case.batch(&[drvs[2].clone(), drvs[1].clone(), drvs[0].clone()]);
    let (s, events) = run(batch);
    for d in &drvs {
        assert_eq!(outcome(&s, d), &DrvOutcome::Success { built: true }, "{s:#?}");
    }
    assert_eq!(s.reports[0].drv, drvs[2], "reports keep batch order");
    let pos = |want: &dyn Fn(&BuildEvent) -> bool| events.iter().position(want).expect("event");
    for w in drvs.windows(2) {
        let finished = pos(&|e| matches!(e, BuildEvent::Finished { drv, .. } if *drv == w[0]));
        let started = pos(&|e| matches!(e, BuildEvent::Started { drv, .. } if *drv == w[1]));
        assert!(finished < started, "{} must finish before {} starts: {events:#?}", w[0], w[1]);
    }
    let log = String::from_utf8(read_log(&case.logs(), &drvs[2], 1)).expect("utf8");
    assert_eq!(log, "got one two\n");
}

#[test]
fn a_failure_fails_its_dependents_and_spares_the_rest() {
    let case = Case::new(
        r#"rec {
  f = mk "f" "echo boom-${n}; exit 3" {};
  d = mk "d" "echo > $out" { dep = f; };
  d2 = mk "d2" "echo > $out" { dep = d; };
  i = mk "i" "/bin/sleep 0.5; echo fine; echo > $out" {};
}"#,
    );
    let drvs = case.drvs(&["f", "d", "d2", "i"]);
    let (f, d, d2, i) = (&drvs[0], &drvs[1], &drvs[2], &drvs[3]);
    let (s, events) = run(case.batch(&drvs));
    match outcome(&s, f) {
        DrvOutcome::Failure { message, exit_code } => {
            assert_eq!(*exit_code, Some(3));
            assert_eq!(message, &format!("builder for '{f}' failed with exit code 3"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outcome(&s, d), &DrvOutcome::DependencyFailed { dependency: Some(f.clone()) });
    assert_eq!(outcome(&s, d2), &DrvOutcome::DependencyFailed { dependency: Some(f.clone()) });
    assert_eq!(outcome(&s, i), &DrvOutcome::Success { built: true });
    let log = String::from_utf8(read_log(&case.logs(), f, 1)).expect("utf8");
    assert_eq!(log, format!("boom-{}\nerror: builder for '{f}' failed with exit code 3\n", case.nonce));
    let dlog = String::from_utf8(read_log(&case.logs(), d, 1)).expect("utf8");
    assert!(dlog.contains("dependencies of derivation") && dlog.ends_with("failed to build\n"), "{dlog:?}");
    for x in &drvs {
        assert_eq!(finished_count(&events, x), 1, "{x}");
    }
    assert!(!events.iter().any(|e| matches!(e, BuildEvent::Started { drv, .. } if drv == d)));
    // Causal order: the failure is reported before what it took down.
    let at = |x: &str| events.iter().position(|e| matches!(e, BuildEvent::Finished { drv, .. } if drv == x));
    assert!(at(f) < at(d) && at(d) < at(d2), "{events:#?}");
}

#[test]
fn a_silent_builder_times_out_and_leaves_nothing_behind() {
    let case = Case::new(r#"{ s = mk "s" "echo waiting; /bin/sleep 100.${n}" {}; }"#);
    let drvs = case.drvs(&["s"]);
    let mut b = case.batch(&drvs);
    b.max_silent = Duration::from_secs(2);
    let (s, _) = run(b);
    assert_eq!(outcome(&s, &drvs[0]), &DrvOutcome::TimedOut, "{s:#?}");
    assert!(s.stopped.is_none(), "Nix enforced it, not the watchdog");
    let log = String::from_utf8(read_log(&case.logs(), &drvs[0], 1)).expect("utf8");
    assert!(log.starts_with("waiting\n") && log.contains("timed out after 2 seconds of silence"), "{log:?}");
    assert!(processes_with(&format!("100.{}", case.nonce)).is_empty());
}

#[test]
fn a_long_builder_hits_the_duration_limit() {
    let case = Case::new(r#"{ l = mk "l" "while :; do echo tick; /bin/sleep 0.2; done" {}; }"#);
    let drvs = case.drvs(&["l"]);
    let mut b = case.batch(&drvs);
    b.max_duration = Duration::from_secs(3);
    let (s, _) = run(b);
    assert_eq!(outcome(&s, &drvs[0]), &DrvOutcome::MaxDuration, "{s:#?}");
    let log = String::from_utf8(read_log(&case.logs(), &drvs[0], 1)).expect("utf8");
    assert!(log.matches("tick\n").count() >= 5, "{log:?}");
    assert!(log.trim_end().ends_with("timed out after 3 seconds"), "{log:?}");
}

#[test]
fn the_watchdog_stops_what_nix_does_not_see_as_silence() {
    // Output without newlines keeps Nix's silence timer happy but reaches us as nothing at all.
    let case = Case::new(r#"{ p = mk "p" "while :; do printf .; /bin/sleep 0.3; done; # ${n}" {}; }"#);
    let drvs = case.drvs(&["p"]);
    let mut b = case.batch(&drvs);
    b.max_silent = Duration::from_secs(1);
    b.watchdog_margin = Duration::from_secs(1);
    let (s, _) = run(b);
    assert_eq!(s.stopped, Some(StopReason::SilenceWatchdog), "{s:#?}");
    assert_eq!(outcome(&s, &drvs[0]), &DrvOutcome::TimedOut);
    let log = read_log(&case.logs(), &drvs[0], 1);
    assert!(
        log.starts_with(b"...."),
        "the byte-exact log keeps the dots: {:?}",
        String::from_utf8_lossy(&log)
    );
}

#[test]
fn killing_a_batch_kills_every_process() {
    let case = Case::new(
        r#"rec {
  s = mk "s" "echo started; /bin/sleep 1000.${n}" {};
  after = mk "after" "echo > $out" { dep = s; };
}"#,
    );
    let drvs = case.drvs(&["s", "after"]);
    let (tx, rx) = async_channel::unbounded();
    let (s, pgid) = smol::block_on(async {
        let running = start_batch(case.batch(&drvs), tx).await.expect("start");
        let pgid = running.pid().expect("a child runs");
        let killer = running.killer();
        let watch = async {
            while let Ok(ev) = rx.recv().await {
                if matches!(&ev, BuildEvent::Log { .. } | BuildEvent::Started { .. }) {
                    // Let the builder reach its sleep.
                    smol::Timer::after(Duration::from_millis(500)).await;
                    assert!(!processes_with(&format!("1000.{}", case.nonce)).is_empty(), "the builder runs");
                    killer.kill();
                    break;
                }
            }
        };
        let (summary, ()) = futures_lite::future::zip(running.wait(), watch).await;
        (summary, pgid)
    });
    assert_eq!(s.stopped, Some(StopReason::Killed));
    assert_eq!(outcome(&s, &drvs[0]), &DrvOutcome::Killed { signal: Some(15) }, "{s:#?}");
    assert_eq!(outcome(&s, &drvs[1]), &DrvOutcome::NotBuilt);
    assert!(group_members(pgid).is_empty(), "group {pgid} still has processes");
    assert!(processes_with(&format!("1000.{}", case.nonce)).is_empty(), "the builder survived");
    let log = String::from_utf8(read_log(&case.logs(), &drvs[0], 1)).expect("utf8");
    assert!(log.starts_with("started\n"), "{log:?}");
}

#[test]
fn valid_outputs_are_reported_without_building() {
    let case = Case::new(
        r#"{
  old = mk "old" "echo old > $out" {};
  new = mk "new" "echo new > $out" {};
}"#,
    );
    let drvs = case.drvs(&["old", "new"]);
    let (first, _) = run(case.batch(&drvs[..1]));
    assert_eq!(outcome(&first, &drvs[0]), &DrvOutcome::Success { built: true });
    let (s, events) = run(case.batch(&drvs));
    assert_eq!(outcome(&s, &drvs[0]), &DrvOutcome::Success { built: false });
    assert_eq!(outcome(&s, &drvs[1]), &DrvOutcome::Success { built: true });
    assert!(s.report(&drvs[0]).expect("report").log.is_none());
    assert!(!events.iter().any(|e| matches!(e, BuildEvent::Started { drv, .. } if *drv == drvs[0])));
    assert_eq!(finished_count(&events, &drvs[0]), 1);
}

#[test]
fn validity_of_many_paths_takes_one_process() {
    let case = Case::new(r#"{ v = mk "v" "echo v > $out" {}; }"#);
    let drvs = case.drvs(&["v"]);
    let (s, _) = run(case.batch(&drvs));
    assert!(outcome(&s, &drvs[0]).is_success());
    let out = Command::new("nix-store").args(["-q", "--outputs", &drvs[0]]).output().expect("nix-store -q");
    let valid = String::from_utf8(out.stdout).expect("utf8").trim().to_string();
    let mut paths = vec![valid.clone()];
    for i in 0..50 {
        paths.push(format!("/nix/store/{:0>32}-eka-ci-missing-{}-{i}", i, case.nonce));
    }
    let before = nix_processes_spawned();
    let invalid = smol::block_on(invalid_outputs(&paths)).expect("check");
    assert_eq!(nix_processes_spawned() - before, 1);
    assert_eq!(invalid.len(), 50);
    assert!(!invalid.contains(&valid));
    let before = nix_processes_spawned();
    assert!(smol::block_on(invalid_outputs(&[])).expect("empty").is_empty());
    assert_eq!(nix_processes_spawned(), before, "nothing to check, nothing spawned");
    let err = smol::block_on(invalid_outputs(&["/tmp/x".to_string()])).expect_err("malformed");
    assert!(matches!(err, BuildError::InvalidStorePath { .. }), "{err}");
}

#[test]
fn a_retry_writes_a_new_log_and_keeps_the_first() {
    let case = Case::new(r#"{ r = mk "r" "echo attempt-${n}; exit 1" {}; }"#);
    let drvs = case.drvs(&["r"]);
    let (s1, _) = run(case.batch(&drvs));
    assert!(matches!(outcome(&s1, &drvs[0]), DrvOutcome::Failure { exit_code: Some(1), .. }));
    let first = read_log(&case.logs(), &drvs[0], 1);
    let mut b = case.batch(&drvs);
    b.attempt_of = HashMap::from([(drvs[0].clone(), 2)]);
    let (s2, _) = run(b);
    assert_eq!(s2.reports[0].attempt, 2);
    assert!(matches!(outcome(&s2, &drvs[0]), DrvOutcome::Failure { exit_code: Some(1), .. }));
    assert_eq!(read_log(&case.logs(), &drvs[0], 1), first, "attempt 1's log is untouched");
    let second = String::from_utf8(read_log(&case.logs(), &drvs[0], 2)).expect("utf8");
    assert!(second.starts_with(&format!("attempt-{}\n", case.nonce)), "{second:?}");
}

#[test]
fn non_utf8_output_is_kept_byte_exact() {
    let case = Case::new(
        r#"{ bin = mk "bin" "printf 'a\\377\\376b\\n\\303\\251\\ncr\\rx\\nesc\\033[31mred\\nnoeol'; echo > $out" {}; }"#,
    );
    let drvs = case.drvs(&["bin"]);
    let mut b = case.batch(&drvs);
    b.live_log = true;
    let (s, events) = run(b);
    assert_eq!(outcome(&s, &drvs[0]), &DrvOutcome::Success { built: true });
    assert_eq!(read_log(&case.logs(), &drvs[0], 1), b"a\xff\xfeb\n\xc3\xa9\ncr\rx\nesc\x1b[31mred\nnoeol");
    // Live lines are Nix's sanitised ones.
    let lines: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            BuildEvent::Log { line, .. } => Some(line.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(lines, ["a\u{fffd}\u{fffd}b", "é", "xr", "esc\u{1b}[31mred", "noeol"]);
}

/// A derivation for a system no builder has (`alien`), one depending on it, and an independent one.
const ALIEN_CASE: &str = r#"rec {
  alien = derivation { name = "alien"; system = "aarch64-darwin"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; nonce = n; };
  above = mk "above" "echo > $out" { dep = alien; };
  fine = mk "fine" "/bin/sleep 0.3; echo > $out" {};
}"#;

#[test]
fn unbuildable_system_is_no_builder_and_the_rest_still_builds() {
    let case = Case::new(ALIEN_CASE);
    let drvs = case.drvs(&["alien", "above", "fine"]);
    let (s, events) = run(case.batch(&drvs));
    assert!(s.extra_builds.is_empty(), "{:?}", s.extra_builds);
    match outcome(&s, &drvs[0]) {
        DrvOutcome::NoBuilder { message } => assert!(message.contains("aarch64-darwin"), "{message}"),
        other => panic!("{other:?} {s:#?}"),
    }
    assert_eq!(outcome(&s, &drvs[1]), &DrvOutcome::DependencyFailed { dependency: Some(drvs[0].clone()) });
    assert_eq!(outcome(&s, &drvs[2]), &DrvOutcome::Success { built: true }, "{s:#?}");
    for d in &drvs {
        assert_eq!(finished_count(&events, d), 1, "{d}");
    }
}

#[test]
fn an_unbuildable_dependency_outside_the_batch_fails_its_dependents() {
    let case = Case::new(ALIEN_CASE);
    let drvs = case.drvs(&["alien", "above", "fine"]);
    let (s, _) = run(case.batch(&drvs[1..]));
    assert_eq!(outcome(&s, &drvs[1]), &DrvOutcome::DependencyFailed { dependency: Some(drvs[0].clone()) });
    assert_eq!(outcome(&s, &drvs[2]), &DrvOutcome::Success { built: true }, "{s:#?}");
    assert!(s.error.as_deref().is_some_and(|e| e.contains("aarch64-darwin")), "{s:#?}");
}

#[test]
fn malformed_derivation_paths_are_rejected() {
    let logs = Path::new("/tmp/eka-ci-logs");
    for bad in ["/nix/store/../../etc/passwd", "../x.drv", "/nix/store/short-x.drv", "/nix/store/x"] {
        assert!(matches!(log_path(logs, bad, 1), Err(BuildError::InvalidDrvPath { .. })), "{bad}");
    }
    let (tx, _rx) = async_channel::unbounded();
    let err =
        smol::block_on(start_batch(BuildBatch::new(vec!["/etc/passwd".into()], logs), tx)).expect_err("bad");
    assert!(matches!(err, BuildError::InvalidDrvPath { .. }), "{err}");
}
