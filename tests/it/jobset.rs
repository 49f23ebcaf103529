//! Jobset storage and the base-vs-head diff on a real redb file.

use eka_ci::jobset::diff::{diff, ChangeKind};
use eka_ci::jobset::{AttrDrv, AttrOutcome, Begin, JobsetId, JobsetKey, JobsetState, Jobsets};
use eka_ci::store::Store;

fn drv(path: &str, name: &str) -> AttrOutcome {
    AttrOutcome::Drv(AttrDrv {
        drv_path: format!("/nix/store/{path}-{name}.drv"),
        name: name.into(),
        system: "x86_64-linux".into(),
        outputs: vec![("out".into(), format!("/nix/store/{path}-{name}"))],
        meta_json: Some(r#"{"pname":"x"}"#.into()),
        required_system_features: vec![],
    })
}

fn err(m: &str) -> AttrOutcome {
    AttrOutcome::Error { message: m.into() }
}

fn key(commit: &str) -> JobsetKey {
    JobsetKey { repo: "file:///r".into(), commit: commit.into(), job: "main".into() }
}

fn fill(js: &Jobsets, commit: &str, attrs: &[(&str, AttrOutcome)]) -> JobsetId {
    let Begin::New(id) = js.begin(&key(commit), false).expect("begin") else {
        panic!("expected a new jobset")
    };
    let mut w = js.writer(id);
    for (a, o) in attrs {
        w.push(a.to_string(), o.clone()).expect("push");
    }
    w.flush().expect("flush");
    js.finish(id, JobsetState::Evaluated).expect("finish");
    id
}

#[test]
fn a_finished_jobset_is_reused_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("db.redb");
    let id = {
        let js = Jobsets::new(Store::open(&path).expect("open"));
        let id = fill(&js, "aaaa", &[("hello", drv("h1", "hello-1")), ("broken", err("boom"))]);
        let header = js.get(id).expect("get").expect("exists");
        assert_eq!((header.derivations, header.errors), (1, 1));
        assert!(header.eval_failed(), "errors fail a job that does not allow them");
        id
    };
    let js = Jobsets::new(Store::open(&path).expect("reopen"));
    match js.begin(&key("aaaa"), false).expect("begin") {
        Begin::Existing(j) => assert_eq!(j.id, id),
        other => panic!("expected reuse, got {other:?}"),
    }
    assert_eq!(js.attr(id, "hello").expect("attr"), Some(drv("h1", "hello-1")));
    assert_eq!(js.attr(id, "broken").expect("attr"), Some(err("boom")));
    assert_eq!(js.attr(id, "nope").expect("attr"), None);
    let mut seen = vec![];
    js.for_each_attr(id, |a, _| {
        seen.push(a.to_string());
        Ok(())
    })
    .expect("iterate");
    assert_eq!(seen, vec!["broken", "hello"], "attribute order");
}

#[test]
fn an_unfinished_jobset_is_restarted_from_scratch() {
    let dir = tempfile::tempdir().expect("tmp");
    let js = Jobsets::new(Store::open(&dir.path().join("db.redb")).expect("open"));
    let Begin::New(id) = js.begin(&key("bbbb"), false).expect("begin") else { panic!() };
    let mut w = js.writer(id);
    w.push("half".into(), drv("x", "half")).expect("push");
    w.flush().expect("flush");
    // The evaluation died here (never finished). Asking again restarts it with the same id, empty.
    let Begin::New(again) = js.begin(&key("bbbb"), false).expect("begin") else { panic!("must not reuse") };
    assert_eq!(again, id);
    assert_eq!(js.attr_count(id).expect("count"), 0);
    // A failed evaluation is retried too.
    js.finish(id, JobsetState::Failed { message: "syntax error".into() }).expect("finish");
    assert!(matches!(js.begin(&key("bbbb"), false).expect("begin"), Begin::New(_)));
    // Other jobsets are untouched by the reset.
    let other = fill(&js, "cccc", &[("a", drv("a", "a"))]);
    assert!(matches!(js.begin(&key("bbbb"), false).expect("begin"), Begin::New(_)));
    assert_eq!(js.attr_count(other).expect("count"), 1);
}

#[test]
fn allow_eval_failures_decides_whether_errors_fail_the_job() {
    let dir = tempfile::tempdir().expect("tmp");
    let js = Jobsets::new(Store::open(&dir.path().join("db.redb")).expect("open"));
    let k = key("dddd");
    let Begin::New(id) = js.begin(&k, true).expect("begin") else { panic!() };
    let mut w = js.writer(id);
    w.push("bad".into(), err("nope")).expect("push");
    w.flush().expect("flush");
    let header = js.finish(id, JobsetState::Evaluated).expect("finish");
    assert!(!header.eval_failed());
    let failed = js.finish(id, JobsetState::Failed { message: "top-level".into() }).expect("finish");
    assert!(failed.eval_failed(), "a whole-job failure always fails");
}

#[test]
fn diff_classifies_every_case() {
    let dir = tempfile::tempdir().expect("tmp");
    let js = Jobsets::new(Store::open(&dir.path().join("db.redb")).expect("open"));
    let base = fill(
        &js,
        "base",
        &[
            ("same", drv("s", "same-1")),
            ("bumped", drv("b1", "bumped-1")),
            ("gone", drv("g", "gone-1")),
            ("breaks", drv("k", "breaks-1")),
            ("fixed", err("was broken")),
            ("still", err("old error")),
            ("gone-broken", err("x")),
        ],
    );
    let head = fill(
        &js,
        "head",
        &[
            ("same", drv("s", "same-1")),
            ("bumped", drv("b2", "bumped-2")),
            ("new", drv("n", "new-1")),
            ("breaks", err("now broken")),
            ("fixed", drv("f", "fixed-1")),
            ("still", err("new error")),
            ("new-broken", err("y")),
        ],
    );
    let d = diff(&js, base, head).expect("diff");
    assert_eq!(d.unchanged, 1);
    assert_eq!(d.added.iter().map(|c| c.attr.as_str()).collect::<Vec<_>>(), ["new"]);
    assert_eq!(d.added[0].kind, ChangeKind::Added);
    assert_eq!(d.added[0].head_drv.as_deref(), Some("/nix/store/n-new-1.drv"));
    assert_eq!(d.removed.iter().map(|c| c.attr.as_str()).collect::<Vec<_>>(), ["gone"]);
    assert_eq!(d.changed.len(), 1);
    assert_eq!(d.changed[0].attr, "bumped");
    assert_eq!(d.changed[0].name, "bumped-2");
    assert_eq!(d.changed[0].base_drv.as_deref(), Some("/nix/store/b1-bumped-1.drv"));
    let errs: Vec<(&str, bool, bool)> =
        d.errors.iter().map(|e| (e.attr.as_str(), e.is_new(), e.is_fixed())).collect();
    assert_eq!(
        errs,
        [
            ("breaks", true, false),
            ("fixed", false, true),
            ("gone-broken", false, true),
            ("new-broken", true, false),
            ("still", false, false)
        ]
    );
    let breaks = &d.errors[0];
    assert_eq!(breaks.base_drv.as_deref(), Some("/nix/store/k-breaks-1.drv"));
    assert_eq!(breaks.head_error.as_deref(), Some("now broken"));
    assert_eq!(d.to_build().count(), 2);

    // Diffing a jobset with itself finds nothing.
    let same = diff(&js, head, head).expect("diff");
    assert!(same.added.is_empty() && same.removed.is_empty() && same.changed.is_empty());
    assert_eq!(same.unchanged, 4, "same, bumped, new and fixed");
    assert!(diff(&js, head, JobsetId(999)).is_err(), "an unknown jobset is an error");
}

#[test]
fn large_jobsets_stream_in_batches() {
    let dir = tempfile::tempdir().expect("tmp");
    let js = Jobsets::new(Store::open(&dir.path().join("db.redb")).expect("open"));
    let attrs: Vec<(String, AttrOutcome)> =
        (0..5000).map(|i| (format!("pkg{i:05}"), drv(&format!("{i:032}"), "p"))).collect();
    let refs: Vec<(&str, AttrOutcome)> = attrs.iter().map(|(a, o)| (a.as_str(), o.clone())).collect();
    let base = fill(&js, "b", &refs);
    let mut changed = refs.clone();
    changed[1234].1 = drv("changed", "p");
    changed.remove(10);
    let head = fill(&js, "h", &changed);
    let d = diff(&js, base, head).expect("diff");
    assert_eq!((d.unchanged, d.changed.len(), d.removed.len(), d.added.len()), (4998, 1, 1, 0));
    assert_eq!(d.removed[0].attr, "pkg00010");
    assert_eq!(d.changed[0].attr, "pkg01234");
}

#[test]
fn explained_error_messages_are_cached_per_jobset_and_go_with_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let js = Jobsets::new(Store::open(&dir.path().join("db.redb")).expect("open"));
    let deferred = err(eka_ci::nix::eval::DEFERRED_ERROR);
    let a = fill(&js, "e1", &[("x", deferred.clone()), ("y", deferred.clone())]);
    let b = fill(&js, "e2", &[("x", deferred)]);
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(js.error_messages(a, &names(&["x", "y"])).expect("read").is_empty());
    js.put_error_messages(a, &[("x".into(), "error: x is broken".into())]).expect("put");
    let found = js.error_messages(a, &names(&["x", "y"])).expect("read");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), [("x".to_string(), "error: x is broken".to_string())]);
    assert!(js.error_messages(b, &names(&["x"])).expect("read").is_empty(), "per jobset");
    // The evaluation's record itself is unchanged.
    assert_eq!(js.attr(a, "x").expect("attr"), Some(err(eka_ci::nix::eval::DEFERRED_ERROR)));
    // Removed with the jobset.
    js.put_error_messages(b, &[("x".into(), "error: b".into())]).expect("put");
    assert_eq!(js.remove(&[a]).expect("remove"), 1);
    assert!(js.error_messages(a, &names(&["x"])).expect("read").is_empty());
    assert_eq!(js.error_messages(b, &names(&["x"])).expect("read").len(), 1);
}
