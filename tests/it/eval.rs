//! Evaluation against real Nix: the built-in evaluator over `nix-instantiate` (nix-eval-jobs is not
//! installed here), with fixtures in `tests/fixtures/eval/` and expressions written into temporary
//! checkouts. Every Nix process runs with `NIX_CONFIG='substituters ='` (no network).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use eka_ci::nix::eval::{
    evaluate, EvalBackend, EvalDrv, EvalError, EvalEvent, EvalOptions, EvalOutcome, EvalRecord, EvalSource,
    EvalSummary,
};

/// Set by `gc_roots_survive_garbage_collection` when it re-runs itself against a private store.
const GC_CHILD_ENV: &str = "EKA_CI_EVAL_GC_CHILD";

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os(GC_CHILD_ENV).is_none() {
            std::env::set_var("NIX_CONFIG", "substituters =");
        }
    });
}

/// A private copy of the `jobs.nix` fixture with a fresh `ifd-salt` next to it, which makes its
/// import-from-derivation attribute new to the store on every run. (Evaluation is sealed: a salt in the
/// environment would not reach Nix.)
fn salted_jobs_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixtures().join("jobs.nix"), dir.path().join("jobs.nix")).expect("copy jobs.nix");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
    let salt = format!("{}-{}", std::process::id(), nanos.unwrap_or_default());
    std::fs::write(dir.path().join("ifd-salt"), salt).expect("write the salt");
    dir
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval")
}

pub(crate) fn options(roots: &Path) -> EvalOptions {
    let mut o = EvalOptions::new(roots);
    o.backend = EvalBackend::Builtin;
    o.workers = 2;
    o.batch_size = 4;
    o.max_memory_mib = 1024;
    o.timeout = Duration::from_secs(120);
    o
}

pub(crate) struct Run {
    result: Result<EvalSummary, EvalError>,
    events: Vec<EvalEvent>,
}

impl Run {
    pub(crate) fn records(&self) -> BTreeMap<String, EvalRecord> {
        let mut map = BTreeMap::new();
        for e in &self.events {
            if let EvalEvent::Record(r) = e {
                assert!(map.insert(r.attr.clone(), r.clone()).is_none(), "duplicate record for {}", r.attr);
            }
        }
        map
    }

    pub(crate) fn summary(&self) -> &EvalSummary {
        match &self.result {
            Ok(s) => s,
            Err(e) => panic!("evaluation failed: {e}"),
        }
    }

    fn error(&self) -> &EvalError {
        match &self.result {
            Ok(s) => panic!("evaluation unexpectedly succeeded: {s:?}"),
            Err(e) => e,
        }
    }
}

pub(crate) fn run(checkout: &Path, source: &EvalSource, opts: &EvalOptions) -> Run {
    init();
    let (tx, rx) = async_channel::unbounded();
    let result = smol::block_on(evaluate(checkout, source, opts, tx));
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Run { result, events }
}

pub(crate) fn file_source(file: &str, attr_path: &[&str]) -> EvalSource {
    EvalSource::File { file: file.into(), attr_path: attr_path.iter().map(|s| s.to_string()).collect() }
}

pub(crate) fn drv<'a>(records: &'a BTreeMap<String, EvalRecord>, attr: &str) -> &'a EvalDrv {
    match records.get(attr).map(|r| &r.outcome) {
        Some(EvalOutcome::Derivation(d)) => d,
        other => panic!("{attr}: expected a derivation, got {other:?}"),
    }
}

pub(crate) fn error_message<'a>(records: &'a BTreeMap<String, EvalRecord>, attr: &str) -> &'a str {
    match records.get(attr).map(|r| &r.outcome) {
        Some(EvalOutcome::Error { message }) => message,
        other => panic!("{attr}: expected an error, got {other:?}"),
    }
}

/// Runs a Nix command (with the test's NIX_CONFIG) and returns its trimmed stdout.
fn nix(program: &str, args: &[&str]) -> String {
    init();
    let out = Command::new(program).args(args).output().expect("run nix");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

/// `nix-instantiate --eval --json` of an attribute of a fixture: the JSON string it prints.
fn eval_string(file: &Path, attr: &str) -> String {
    let json = nix("nix-instantiate", &["--eval", "--strict", "--json", &file.to_string_lossy(), "-A", attr]);
    serde_json::from_str(&json).expect("a JSON string")
}

pub(crate) fn check_progress(run: &Run) {
    let total = run
        .events
        .iter()
        .find_map(|e| match e {
            EvalEvent::Listed { total } => Some(*total),
            _ => None,
        })
        .expect("a Listed event");
    let first_record = run.events.iter().position(|e| matches!(e, EvalEvent::Record(_)));
    let listed_at = run.events.iter().position(|e| matches!(e, EvalEvent::Listed { .. }));
    if let Some(first) = first_record {
        assert!(listed_at < Some(first), "Listed must come before the records");
    }
    assert_eq!(run.records().len(), total);
    match run.events.last() {
        Some(EvalEvent::Progress { done, total: t }) => assert_eq!((*done, *t), (total, total)),
        other => panic!("the last event must be the final progress, got {other:?}"),
    }
    let mut last = 0;
    for e in &run.events {
        if let EvalEvent::Progress { done, .. } = e {
            assert!(*done >= last, "progress went backwards");
            last = *done;
        }
    }
}

#[test]
fn evaluates_a_mixed_job_with_isolated_failures() {
    let roots = tempfile::tempdir().expect("tempdir");
    let opts = options(roots.path());
    let fixture = salted_jobs_fixture();
    let run = run(fixture.path(), &file_source("jobs.nix", &[]), &opts);
    let summary = run.summary().clone();
    let records = run.records();
    let jobs = fixture.path().join("jobs.nix");
    let jobs_s = jobs.to_string_lossy().to_string();

    // Good attributes: same .drv as a direct nix-instantiate, which also auto-calls the function.
    for attr in ["good", "good2", "fixed", "multi", "withMeta", "kvm", "nested.inner.pkg", "ifd"] {
        let direct = nix("nix-instantiate", &[&jobs_s, "-A", attr]);
        let direct = direct.split('!').next().unwrap_or_default();
        assert_eq!(drv(&records, attr).drv_path, direct, "{attr}");
        assert!(Path::new(&drv(&records, attr).drv_path).exists(), "{attr}: the .drv must be in the store");
    }
    let good = drv(&records, "good");
    assert_eq!(good.name, "good");
    let system: String = serde_json::from_str(&nix(
        "nix-instantiate",
        &["--eval", "--json", "--expr", "builtins.currentSystem"],
    ))
    .expect("a JSON string");
    assert_eq!(good.system, system);
    assert_eq!(good.outputs.keys().collect::<Vec<_>>(), ["out"]);
    assert_eq!(good.outputs["out"], eval_string(&jobs, "good.outPath"));

    // Failures, each with Nix's own message.
    assert!(error_message(&records, "thrown").contains("eka-ci-fixture: this attribute throws"));
    assert!(
        error_message(&records, "asserted").contains("assertion"),
        "{}",
        error_message(&records, "asserted")
    );
    assert!(error_message(&records, "lazyThrow").contains("thrown while instantiating"));
    assert!(
        error_message(&records, "typeError").contains("cannot add"),
        "{}",
        error_message(&records, "typeError")
    );
    assert!(
        error_message(&records, "notAFunction").contains("not a function"),
        "{}",
        error_message(&records, "notAFunction")
    );
    for attr in ["thrown", "asserted", "typeError", "notAFunction"] {
        let m = error_message(&records, attr);
        assert!(m.starts_with("error:"), "{attr}: {m}");
        assert!(!m.contains('\u{1b}') && !m.contains("--show-trace"), "{attr}: {m}");
    }

    // Recursion: only sets with recurseForDerivations; non-derivations are skipped.
    assert!(records.contains_key("nested.inner.pkg"));
    assert_eq!(records["nested.inner.pkg"].attr_path, ["nested", "inner", "pkg"]);
    for absent in
        ["hidden.pkg", "nested.notRecursed.pkg", "aString", "aFunction", "nested.recurseForDerivations"]
    {
        assert!(!records.contains_key(absent), "{absent} must not be listed");
    }

    assert_eq!(drv(&records, "ifd").name, "ifd-42");

    // Quoted names.
    let dotted = &records["\"dotted.name\""];
    assert_eq!(dotted.attr_path, ["dotted.name"]);
    assert_eq!(drv(&records, "\"dotted.name\"").name, "dotted");

    // Multi-output and fixed-output derivations.
    let multi = drv(&records, "multi");
    assert_eq!(multi.outputs.keys().collect::<Vec<_>>(), ["dev", "doc", "out"]);
    for output in ["out", "dev", "doc"] {
        assert_eq!(multi.outputs[output], eval_string(&jobs, &format!("multi.{output}.outPath")), "{output}");
    }
    assert_eq!(drv(&records, "fixed").outputs["out"], eval_string(&jobs, "fixed.outPath"));

    // Meta: JSON-serialisable attributes only, plus pname and version.
    let meta = drv(&records, "withMeta").meta.clone().expect("meta");
    assert_eq!(meta["pname"], "hello");
    assert_eq!(meta["version"], "1.0");
    assert_eq!(meta["description"], "A greeting");
    assert_eq!(meta["license"]["spdxId"], "MIT");
    assert_eq!(meta["maintainers"][0]["github"], "alice");
    assert_eq!(meta["broken"], false);
    assert!(meta.get("notJson").is_none() && meta.get("throws").is_none(), "{meta}");
    assert_eq!(drv(&records, "kvm").required_system_features, ["kvm", "big-parallel"]);
    assert!(good.required_system_features.is_empty());

    assert_eq!(summary.backend, EvalBackend::Builtin);
    assert_eq!(summary.derivations, 9, "{:?}", records.keys().collect::<Vec<_>>());
    assert_eq!(summary.errors, 5);
    assert_eq!(summary.total, records.len());
    check_progress(&run);

    // Every derivation has a GC root in the roots directory: its own (instantiated per batch), or the
    // walk step's store file that lists, and so references, the step's derivations.
    let mut rooted: Vec<String> = Vec::new();
    let mut root_files = 0;
    for entry in std::fs::read_dir(roots.path()).expect("roots dir") {
        let target = std::fs::read_link(entry.expect("entry").path()).expect("symlink");
        let target = target.to_string_lossy().into_owned();
        if !target.ends_with(".drv") {
            let references = nix("nix-store", &["--query", "--references", &target]);
            rooted.extend(references.lines().map(str::to_string));
            assert!(target.ends_with("-ekaci-roots"), "{target}");
            root_files += 1;
        }
        rooted.push(target);
    }
    assert!(root_files > 0, "the walk's derivations are rooted through its store files");
    for r in records.values() {
        if let EvalOutcome::Derivation(d) = &r.outcome {
            assert!(rooted.contains(&d.drv_path), "no GC root for {}", r.attr);
        }
    }
}

#[test]
fn force_recurse_and_meta_switches() {
    let roots = tempfile::tempdir().expect("tempdir");
    let mut opts = options(roots.path());
    opts.force_recurse = true;
    opts.meta = false;
    opts.batch_size = 100;
    let run = run(&fixtures(), &file_source("jobs.nix", &["nested"]), &opts);
    run.summary();
    let records = run.records();
    assert_eq!(records.keys().collect::<Vec<_>>(), ["inner.pkg", "notRecursed.pkg"]);
    assert_eq!(drv(&records, "notRecursed.pkg").name, "deep-hidden-pkg");
    assert_eq!(drv(&records, "inner.pkg").meta, None);
    check_progress(&run);
}

#[test]
fn a_selected_derivation_is_the_single_job() {
    let roots = tempfile::tempdir().expect("tempdir");
    let run = run(&fixtures(), &file_source("jobs.nix", &["good"]), &options(roots.path()));
    let records = run.records();
    assert_eq!(records.keys().collect::<Vec<_>>(), [""]);
    assert_eq!(drv(&records, "").name, "good");
    assert!(records[""].attr_path.is_empty());
    check_progress(&run);
}

#[test]
fn whole_job_failures_are_errors() {
    let roots = tempfile::tempdir().expect("tempdir");
    let opts = options(roots.path());

    let missing = run(&fixtures(), &file_source("no-such-file.nix", &[]), &opts);
    match missing.error() {
        EvalError::FileNotFound { path } => assert!(path.ends_with("no-such-file.nix")),
        e => panic!("unexpected {e:?}"),
    }
    assert!(missing.error().to_string().contains("no-such-file.nix"));
    assert!(missing.events.is_empty());

    let syntax = run(&fixtures(), &file_source("syntax-error.nix", &[]), &opts);
    match syntax.error() {
        EvalError::Nix { message, .. } => {
            assert!(message.contains("syntax error"), "{message}");
            assert!(message.contains("syntax-error.nix"), "{message}");
            assert!(message.len() <= 4096);
        }
        e => panic!("unexpected {e:?}"),
    }

    let not_set = run(&fixtures(), &file_source("not-a-set.nix", &[]), &opts);
    match not_set.error() {
        EvalError::NotAnAttrSet { actual, .. } => assert_eq!(actual, "an integer"),
        e => panic!("unexpected {e:?}"),
    }

    let no_attr = run(&fixtures(), &file_source("jobs.nix", &["nope"]), &opts);
    match no_attr.error() {
        EvalError::Nix { message, .. } => assert!(message.contains("attribute 'nope' missing"), "{message}"),
        e => panic!("unexpected {e:?}"),
    }

    let outside = run(&fixtures(), &file_source("../eval/jobs.nix", &[]), &opts);
    assert!(matches!(outside.error(), EvalError::FileOutsideCheckout { .. }), "{:?}", outside.error());
}

#[test]
fn memory_cap_fails_only_the_hungry_attribute() {
    let roots = tempfile::tempdir().expect("tempdir");
    let mut opts = options(roots.path());
    opts.max_memory_mib = 150;
    let checkout = tempfile::tempdir().expect("tempdir");
    std::fs::copy(fixtures().join("resources.nix"), checkout.path().join("default.nix")).expect("copy");
    // `slow` is left out: with the memory cap it would be killed too, but it takes longer.
    std::fs::write(checkout.path().join("job.nix"), "removeAttrs (import ./default.nix) [ \"slow\" ]\n")
        .expect("write");
    let started = Instant::now();
    let run = run(checkout.path(), &file_source("job.nix", &[]), &opts);
    run.summary();
    let records = run.records();
    assert_eq!(records.len(), 4);
    for attr in ["hog", "eagerHog"] {
        let message = error_message(&records, attr);
        assert_eq!(message, "evaluation exceeded the memory limit of 150 MiB", "{attr}");
    }
    assert_eq!(drv(&records, "small").name, "small");
    assert_eq!(drv(&records, "other").name, "other");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
}

/// Processes whose working directory is `dir` (the evaluator runs Nix in the checkout).
fn processes_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                found.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
fn timeout_stops_the_evaluation_and_its_processes() {
    let roots = tempfile::tempdir().expect("tempdir");
    let mut opts = options(roots.path());
    opts.max_memory_mib = 0;
    opts.timeout = Duration::from_millis(1500);
    let checkout = tempfile::tempdir().expect("tempdir");
    let dir = std::fs::canonicalize(checkout.path()).expect("canonical");
    std::fs::copy(fixtures().join("resources.nix"), dir.join("default.nix")).expect("copy");
    std::fs::write(dir.join("job.nix"), "{ inherit (import ./default.nix) slow small; }\n").expect("write");
    let started = Instant::now();
    let run = run(&dir, &file_source("job.nix", &[]), &opts);
    let elapsed = started.elapsed();
    match run.error() {
        EvalError::Timeout { limit } => assert_eq!(*limit, Duration::from_millis(1500)),
        e => panic!("unexpected {e:?}"),
    }
    assert!(run.error().to_string().contains("1.500s"), "{}", run.error());
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // The killed evaluators are gone (give the kernel a moment to tear them down).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_in(&dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_in(&dir), Vec::<String>::new());
}

/// Writes `count` trivial derivations (every 50th broken) into `dir/default.nix`.
fn write_many(dir: &Path, count: usize) {
    write_many_with(dir, count, "", |i| Some(format!("1 + \"{i}\"")));
}

/// Writes `count` attributes `a<i>` into `dir/default.nix`: `mk <i>` (a trivial derivation whose builder
/// mentions `salt`), or `special(i)` for every 50th when it returns something.
fn write_many_with(dir: &Path, count: usize, salt: &str, special: impl Fn(usize) -> Option<String>) {
    let mut text = format!(
        "let mk = n: derivation {{ name = \"t-${{toString n}}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"echo ${{toString n}} {salt} > $out\" ]; }}; in {{\n"
    );
    for i in 0..count {
        match special(i).filter(|_| i % 50 == 7) {
            Some(expr) => text.push_str(&format!("  a{i} = {expr};\n")),
            None => text.push_str(&format!("  a{i} = mk {i};\n")),
        }
    }
    text.push_str("}\n");
    std::fs::write(dir.join("default.nix"), text).expect("write");
}

#[test]
fn parallel_workers_produce_the_same_records() {
    let checkout = tempfile::tempdir().expect("tempdir");
    write_many(checkout.path(), 120);
    let roots = tempfile::tempdir().expect("tempdir");
    let mut opts = options(roots.path());
    opts.batch_size = 10;
    opts.workers = 1;
    let one = run(checkout.path(), &file_source("default.nix", &[]), &opts);
    opts.workers = 3;
    let three = run(checkout.path(), &file_source("default.nix", &[]), &opts);
    assert_eq!(one.summary().total, 120);
    assert_eq!(one.summary().errors, 3);
    assert_eq!(one.records(), three.records());
    assert_eq!(three.summary().derivations, 117);
    assert!(error_message(&three.records(), "a57").contains("cannot add"));
    check_progress(&one);
    check_progress(&three);
}

const FLAKE: &str = r#"{
  description = "eka-ci evaluation test flake, without inputs";
  outputs = { self }:
    let
      mk = name: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${name} > $out" ]; };
    in {
      hydraJobs = {
        a = mk "flake-a";
        broken = throw "eka-ci-fixture: broken flake job";
        nested = { recurseForDerivations = true; b = mk "flake-b"; };
      };
    };
}
"#;

fn check_flake_run(run: &Run) {
    run.summary();
    let records = run.records();
    assert_eq!(records.keys().collect::<Vec<_>>(), ["a", "broken", "nested.b"]);
    assert_eq!(drv(&records, "a").name, "flake-a");
    assert_eq!(drv(&records, "nested.b").name, "flake-b");
    assert!(Path::new(&drv(&records, "a").drv_path).exists());
    assert!(error_message(&records, "broken").contains("broken flake job"));
    check_progress(run);
}

#[test]
fn flake_jobs_evaluate_offline() {
    let roots = tempfile::tempdir().expect("tempdir");
    let opts = options(roots.path());
    let source = EvalSource::Flake { attr_path: vec!["hydraJobs".into()] };

    // A plain directory: `path:` flake reference.
    let plain = tempfile::tempdir().expect("tempdir");
    std::fs::write(plain.path().join("flake.nix"), FLAKE).expect("write");
    check_flake_run(&run(plain.path(), &source, &opts));

    // A Git work tree: `git+file://`, only tracked files are copied. The directory name needs escaping.
    let parent = tempfile::tempdir().expect("tempdir");
    let repo = parent.path().join("a repo");
    std::fs::create_dir(&repo).expect("mkdir");
    std::fs::write(repo.join("flake.nix"), FLAKE).expect("write");
    for args in [
        &["init", "-q"][..],
        &["add", "flake.nix"],
        &["-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "init"],
    ] {
        let st = Command::new("git").args(args).current_dir(&repo).status().expect("git");
        assert!(st.success(), "git {args:?}");
    }
    check_flake_run(&run(&repo, &source, &opts));

    // A checkout without flake.nix.
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(matches!(run(empty.path(), &source, &opts).error(), EvalError::NoFlake { .. }));
}

#[test]
fn gc_roots_survive_garbage_collection() {
    // A real `nix-store --gc` on the shared store would delete other tests' (and other work's) unrooted
    // paths, so this test re-runs itself against a private chroot store.
    let Some(store_root) = std::env::var_os(GC_CHILD_ENV) else {
        let store = tempfile::tempdir().expect("tempdir");
        let config = format!("substituters =\nstore = local?root={}", store.path().display());
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "eval::gc_roots_survive_garbage_collection", "--nocapture", "--test-threads=1"])
            .env(GC_CHILD_ENV, store.path())
            .env("NIX_CONFIG", config)
            .output()
            .expect("re-run the test");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    let store_root = PathBuf::from(store_root);
    let physical = |store_path: &str| store_root.join(store_path.trim_start_matches('/'));

    let roots = tempfile::tempdir().expect("tempdir");
    let run = run(&fixtures(), &file_source("jobs.nix", &["nested"]), &options(roots.path()));
    run.summary();
    let records = run.records();
    let pkg = drv(&records, "inner.pkg").drv_path.clone();
    assert!(physical(&pkg).exists(), "{pkg} must be in the private store");

    // A control: the same kind of derivation instantiated without a root must be collected.
    let unrooted = nix("nix-instantiate", &[&fixtures().join("jobs.nix").to_string_lossy(), "-A", "good"]);
    assert!(physical(&unrooted).exists());

    let gc = nix("nix-store", &["--gc"]);
    println!("{gc}");
    assert!(!physical(&unrooted).exists(), "the GC did not run: {unrooted} survived");
    assert!(physical(&pkg).exists(), "{pkg} was collected despite its root");
    let text = std::fs::read_to_string(physical(&pkg)).expect("read the .drv");
    assert!(text.starts_with("Derive("));
}

/// Measures the built-in evaluator on 2,000 attributes (run with `--ignored --nocapture`). Every run gets
/// fresh derivations (a salt in the builder), so each one pays for writing its .drv files.
#[test]
#[ignore]
fn bench_two_thousand_attributes() {
    type Special = fn(usize) -> Option<String>;
    let variants: [(&str, Special); 4] = [
        ("no failures", |_| None),
        ("2% throw", |i| Some(format!("throw \"t{i}\""))),
        ("2% type errors", |i| Some(format!("1 + \"{i}\""))),
        ("2% CPU-heavy (a 2M-element fold each)", |i| {
            Some(format!("mk (builtins.foldl' builtins.add {i} (builtins.genList (x: x) 2000000))"))
        }),
    ];
    for (label, special) in variants {
        for workers in [1, 2] {
            let checkout = tempfile::tempdir().expect("tempdir");
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos());
            let salt = format!("{}-{workers}", nanos.unwrap_or_default());
            write_many_with(checkout.path(), 2000, &salt, special);
            let roots = tempfile::tempdir().expect("tempdir");
            let mut opts = options(roots.path());
            opts.workers = workers;
            opts.batch_size = 100;
            let started = Instant::now();
            let run = run(checkout.path(), &file_source("default.nix", &[]), &opts);
            let s = run.summary();
            println!(
                "{label}, workers={workers}: {} records ({} errors) in {:?}",
                s.total,
                s.errors,
                started.elapsed()
            );
        }
    }
}
