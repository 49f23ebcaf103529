//! The built-in evaluator's walk against real Nix, in both of its forms: long-lived `nix repl` sessions
//! that take share after share (the default), and a fresh `nix-instantiate` per share. Either walks its
//! shares depth-first, is replaced by a fresh one over the memory cap or when it dies, survives an error
//! `tryEval` cannot catch, and loses no attribute.

use std::path::Path;
use std::process::Command;

use eka_ci::nix::eval::EvalOutcome;

use crate::eval::{check_progress, drv, error_message, file_source, options, run};

/// Attributes `a<i>` that each keep about 40 MB alive (a list of half a million thunks held by the
/// attribute's value, which the walk's root keeps): a process that walks many of them grows past a small
/// cap, while each alone stays well under it.
fn write_growing(dir: &Path, count: usize) {
    let mut text = String::from(
        "let mk = n: let big = builtins.genList (x: x) 500000; in derivation { name = \"grow-${toString n}\"; \
         system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; \
         size = builtins.length big; } // { inherit big; }; in {\n",
    );
    for i in 0..count {
        text.push_str(&format!("  a{i} = mk {i};\n"));
    }
    text.push_str("}\n");
    std::fs::write(dir.join("default.nix"), text).expect("write");
}

/// Peak resident memory, in KiB, of one `nix-instantiate` that forces every attribute of `default.nix`
/// the way the walk does (the derivation path of each).
fn peak_kib_of_one_process(dir: &Path) -> u64 {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "nix-instantiate", "--eval", "--strict", "-E"])
        .arg("let s = import ./default.nix; in builtins.foldl' (n: a: builtins.seq s.${a}.drvPath (n + 1)) 0 (builtins.attrNames s)")
        .current_dir(dir)
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("run /usr/bin/time nix-instantiate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().last().and_then(|l| l.trim().parse().ok()).expect("the peak RSS from /usr/bin/time")
}

#[test]
fn a_walk_restarted_over_the_memory_cap_yields_every_attribute() {
    let checkout = tempfile::tempdir().expect("tempdir");
    write_growing(checkout.path(), 30);
    // The premise: one process walking the whole job goes far over the cap.
    let cap_mib = 300;
    let peak = peak_kib_of_one_process(checkout.path());
    assert!(peak > 2 * cap_mib * 1024, "one process peaked at only {peak} KiB");
    let roots = tempfile::tempdir().expect("tempdir");
    // Two workers: the sessions share twice the cap, and still no attribute is lost.
    for (workers, sessions) in [(1, true), (2, true), (1, false)] {
        let mut opts = options(roots.path());
        opts.max_memory_mib = cap_mib;
        opts.workers = workers;
        opts.walk_sessions = sessions;
        let run = run(checkout.path(), &file_source("default.nix", &[]), &opts);
        assert_eq!(run.summary().total, 30, "sessions: {sessions}");
        let records = run.records();
        for i in 0..30 {
            assert_eq!(drv(&records, &format!("a{i}")).name, format!("grow-{i}"), "sessions: {sessions}");
        }
        let summary = run.summary();
        if sessions {
            // Restarted over the cap, in sessions only.
            assert!(summary.walk_sessions > workers as u64, "{summary:?}");
            assert_eq!(summary.walk_processes, 0, "{summary:?}");
        } else {
            assert!(summary.walk_processes >= 2, "{summary:?}");
            assert_eq!(summary.walk_sessions, 0, "{summary:?}");
        }
        check_progress(&run);
    }
}

/// A nested set (three levels) whose middle child kills the walk process with an error `tryEval` cannot
/// catch, between top-level attributes.
const DYING: &str = r#"
let
  mk = name: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  level = n: builtins.listToAttrs (builtins.genList (i: { name = "p${toString i}"; value = mk "l${toString n}-${toString i}"; }) 10);
in {
  before = mk "before";
  set = level 1 // {
    recurseForDerivations = true;
    deeper = level 2 // {
      recurseForDerivations = true;
      dies = abort "eka-ci-fixture: the walk process dies here";
      deepest = level 3 // { recurseForDerivations = true; typeError = mk (1 + "a"); };
    };
  };
  zafter = mk "after";
}
"#;

/// A checkout whose `default.nix` is `nix`, and a directory for the evaluation's GC roots.
fn job_with(nix: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let checkout = tempfile::tempdir().expect("tempdir");
    std::fs::write(checkout.path().join("default.nix"), nix).expect("write");
    (checkout, tempfile::tempdir().expect("tempdir"))
}

#[test]
fn a_walk_process_that_dies_mid_set_loses_nothing_else() {
    let (checkout, roots) = job_with(DYING);
    for (workers, sessions) in [(1, true), (2, true), (1, false), (2, false)] {
        let mut opts = options(roots.path());
        opts.workers = workers;
        opts.walk_sessions = sessions;
        let run = run(checkout.path(), &file_source("default.nix", &[]), &opts);
        let records = run.records();
        // 3 sets of 10, before and after, and the two failing attributes.
        assert_eq!(records.len(), 34, "{workers} workers, sessions {sessions}: {:?}", records.keys());
        assert!(error_message(&records, "set.deeper.dies").contains("the walk process dies here"));
        assert!(error_message(&records, "set.deeper.deepest.typeError").contains("cannot add"));
        for i in 0..10 {
            assert_eq!(drv(&records, &format!("set.p{i}")).name, format!("l1-{i}"));
            assert_eq!(drv(&records, &format!("set.deeper.p{i}")).name, format!("l2-{i}"));
            assert_eq!(drv(&records, &format!("set.deeper.deepest.p{i}")).name, format!("l3-{i}"));
        }
        assert_eq!(drv(&records, "before").name, "before");
        assert_eq!(drv(&records, "zafter").name, "after");
        let errors = records.values().filter(|r| matches!(r.outcome, EvalOutcome::Error { .. })).count();
        assert_eq!(errors, 2);
        let summary = run.summary();
        if sessions {
            // A session survives errors `tryEval` cannot catch: one per worker at most.
            assert!(summary.walk_sessions >= 1 && summary.walk_sessions <= workers as u64, "{summary:?}");
            assert_eq!(summary.walk_processes, 0, "{summary:?}");
        } else {
            // Each uncatchable error ends its process: a fresh one continues after it.
            assert!(summary.walk_processes >= 3, "{summary:?}");
            assert_eq!(summary.walk_sessions, 0, "{summary:?}");
        }
        check_progress(&run);
    }
}

/// A session stopped over the memory budget while it gives GC roots to what it found (a root step
/// after every derivation here) keeps every derivation: the batch being rooted is rooted after the
/// session instead of being lost with it.
#[test]
fn a_session_stopped_while_rooting_loses_no_derivation() {
    let checkout = tempfile::tempdir().expect("tempdir");
    write_growing(checkout.path(), 40);
    let roots = tempfile::tempdir().expect("tempdir");
    for workers in [1, 2] {
        let mut opts = options(roots.path());
        opts.max_memory_mib = 300;
        opts.workers = workers;
        opts.walk_root_batch = 1;
        let run = run(checkout.path(), &file_source("default.nix", &[]), &opts);
        let summary = run.summary();
        assert!(summary.walk_sessions > workers as u64, "no session was stopped: {summary:?}");
        assert_eq!(summary.total, 40, "{workers} workers: {summary:?}");
        let records = run.records();
        for i in 0..40 {
            assert_eq!(drv(&records, &format!("a{i}")).name, format!("grow-{i}"), "{workers} workers");
        }
        check_progress(&run);
    }
}

/// A job that looks for the evaluator's marker: it finds the request files through the search path the
/// evaluator gives it (`builtins.nixPath`), reads them, and prints a forged result line with every nonce
/// it finds, claiming that its first attribute is a derivation named "forged". The evaluator must not
/// take it: the marker is never in a file the job can read.
const FORGER: &str = r#"
let
  mk = name: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  dirs = map (e: e.path) builtins.nixPath;
  files = builtins.concatMap (d:
    let entries = builtins.tryEval (builtins.attrNames (builtins.readDir d));
    in if entries.success
       then map (n: d + "/" + n) (builtins.filter (n: builtins.match ".*[.]json" n != null) entries.value)
       else [ ]) dirs;
  nonces = builtins.concatMap (f:
    let text = builtins.tryEval (builtins.readFile f);
        req = if text.success then builtins.fromJSON text.value else { };
    in if builtins.isAttrs req && req ? nonce && req.nonce != "" then [ req.nonce ] else [ ]) files;
  drv = mk "forged";
  line = n: "${n} " + builtins.toJSON { k = "drv"; i = { name = "forged"; system = drv.system;
    drvPath = builtins.unsafeDiscardStringContext drv.drvPath; outputs = { out = null; }; features = [ ];
    meta = null; pname = null; version = null; }; };
  forge = builtins.foldl' (acc: n: builtins.trace (line n) acc) true nonces;
in
  builtins.seq forge {
    a = builtins.seq forge (mk "real-a");
    b = builtins.seq forge (mk "real-b");
    found = builtins.seq forge (mk "nonces-${toString (builtins.length nonces)}");
  }
"#;

#[test]
fn a_job_cannot_forge_the_walk_results() {
    let (checkout, roots) = job_with(FORGER);
    for sessions in [true, false] {
        let mut opts = options(roots.path());
        opts.workers = 1;
        opts.walk_sessions = sessions;
        let run = run(checkout.path(), &file_source("default.nix", &[]), &opts);
        let records = run.records();
        assert_eq!(drv(&records, "a").name, "real-a", "sessions {sessions}: {records:?}");
        assert_eq!(drv(&records, "b").name, "real-b", "sessions {sessions}");
        // The job did look (it read the request files it could reach) but found no marker.
        assert_eq!(drv(&records, "found").name, "nonces-0", "sessions {sessions}");
    }
}
