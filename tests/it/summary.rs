//! The change summary (`eka_ci::summary`) on real evaluations: a git repository whose base → head change
//! produces every package classification, a chain whose blast radius is exact, a rename that is not a
//! rebuild; the cache and its pruning; and rendering with truncation at every level.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{nonce, GitRepo};
use eka_ci::jobset::JobsetId;
use eka_ci::pipeline::Pipeline;
use eka_ci::store::Store;
use eka_ci::summary::{
    self, cache, render, Bucket, ChangeSummary, EvalStatus, JobSummary, KindCounts, PackageChange,
    PackageChangeKind, RebuildImpact, Settings, Truncation,
};

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

/// `mk name script deps meta`: a derivation built by /bin/sh with `meta` attached the way nixpkgs does
/// (an attribute of the returned set, not of the derivation).
fn nix(nonce: &str, body: &str) -> String {
    format!(
        r#"
let
  nonce = "{nonce}";
  mk = name: script: deps: meta: (derivation {{
    inherit name nonce deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }}) // {{ inherit meta; }};
{body}
"#
    )
}

const BASE: &str = r#"
  a = mk "chain-a-1.0" "echo a > $out" [ ] { };
  b = mk "chain-b-1.0" "echo b > $out" [ a ] { };
  c = mk "chain-c-1.0" "echo c > $out" [ b ] { };
  d = mk "chain-d-1.0" "echo d > $out" [ c ] { };
  e = mk "chain-e-1.0" "echo e > $out" [ d ] { };
  shared = mk "shared-1.0" "echo s > $out" [ ] { };
in {
  inherit a b c d e;
  stable = mk "stable-1.0" "echo stable > $out" [ ] { };
  gone = mk "gone-1.0" "echo gone > $out" [ ] { };
  bump = mk "bump-1.0" "echo bump > $out" [ ] { license = "mit"; };
  lic = mk "lic-1.0" "echo lic > $out" [ ] { license = { spdxId = "MIT"; }; };
  maint = mk "maint-1.0" "echo maint > $out" [ ] { maintainers = [ { github = "alice"; } ]; };
  rebuild = mk "rebuild-1.0" "echo one > $out" [ ] { license = "mit"; };
  oldname = shared;
}
"#;

const HEAD: &str = r#"
  a = mk "chain-a-1.0" "echo a2 > $out" [ ] { };
  b = mk "chain-b-1.0" "echo b > $out" [ a ] { };
  c = mk "chain-c-1.0" "echo c > $out" [ b ] { };
  d = mk "chain-d-1.0" "echo d > $out" [ c ] { };
  e = mk "chain-e-1.0" "echo e > $out" [ d ] { };
  shared = mk "shared-1.0" "echo s > $out" [ ] { };
in {
  inherit a b c d e;
  stable = mk "stable-1.0" "echo stable > $out" [ ] { };
  fresh = mk "fresh-0.1" "echo fresh > $out" [ ] { };
  bump = mk "bump-1.1" "echo bump > $out" [ ] { license = [ { spdxId = "GPL-3.0-only"; } ]; };
  lic = mk "lic-1.0" "echo lic > $out" [ ] { license = [ { spdxId = "Apache-2.0"; } ]; };
  maint = mk "maint-1.0" "echo maint > $out" [ ] { maintainers = [ { github = "bob"; } "carol" ]; };
  rebuild = mk "rebuild-1.0" "echo two > $out" [ ] { license = "mit"; };
  newname = shared;
}
"#;

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    pipeline: Arc<Pipeline>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tmp");
    let (store, pipeline) = common::pipeline_in(dir.path());
    Env { _dir: dir, store, pipeline }
}

/// Evaluates base and head of `repo` and returns the one job's (base, head) jobset ids.
fn evaluate(env: &Env, repo: &Path, base: &str, head: &str) -> (JobsetId, JobsetId) {
    let report = smol::block_on(env.pipeline.diff_local(repo, base, head, None, &None)).expect("diff");
    let job = report.jobs.first().expect("one job");
    (job.base.id, job.head.id)
}

fn change<'a>(s: &'a JobSummary, attr: &str) -> &'a PackageChange {
    s.changes
        .iter()
        .find(|c| c.attr == attr)
        .unwrap_or_else(|| panic!("no change for {attr}: {:#?}", s.changes))
}

#[test]
fn every_classification_exact_blast_radius_and_renames_on_real_nix() {
    let n = nonce();
    let repo = GitRepo::new();
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&n, BASE)))]);
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, HEAD)))]);
    let env = env();
    let (b, h) = evaluate(&env, repo.path(), &base, &head);
    let settings = Settings { full_blast_radius: true, ..Settings::default() };
    let jobsets = env.pipeline.jobsets();
    let graph = env.pipeline.graph();
    // The daemon's scheduler registers its builders' systems as metric labels; this test has none.
    eka_ci::metrics::set_known_systems([eka_ci::scheduler::builders::native_system()]);
    let s = summary::summarize_job(&env.store, jobsets, graph, b, h, &settings).expect("summary");

    assert_eq!(
        (s.base_sha.as_str(), s.head_sha.as_str(), s.job.as_str()),
        (base.as_str(), head.as_str(), "main")
    );
    assert_eq!(s.eval, EvalStatus::Ok);
    use PackageChangeKind::*;
    assert_eq!(change(&s, "fresh").kinds, vec![Added]);
    assert_eq!(change(&s, "fresh").head_version.as_deref(), Some("0.1"));
    assert_eq!(change(&s, "gone").kinds, vec![Removed]);
    let bump = change(&s, "bump");
    assert_eq!(bump.kinds, vec![VersionBump, LicenseChange]);
    assert_eq!((bump.base_version.as_deref(), bump.head_version.as_deref()), (Some("1.0"), Some("1.1")));
    assert_eq!(
        (bump.base_license.clone(), bump.head_license.clone()),
        (vec!["mit".into()], vec!["GPL-3.0-only".into()])
    );
    assert_eq!(change(&s, "lic").kinds, vec![LicenseChange]);
    let maint = change(&s, "maint");
    assert_eq!(maint.kinds, vec![MaintainerChange]);
    assert_eq!(maint.head_maintainers, vec!["bob".to_string(), "carol".to_string()]);
    assert_eq!(change(&s, "rebuild").kinds, vec![RebuildOnly]);
    for attr in ["a", "b", "c", "d", "e"] {
        assert_eq!(change(&s, attr).kinds, vec![RebuildOnly], "{attr}");
    }
    assert!(s.changes.iter().all(|c| c.attr != "stable"));
    // The rename is an added and a removed attribute, but its output existed in base: no rebuild.
    assert_eq!(change(&s, "newname").kinds, vec![Added]);
    assert_eq!(change(&s, "oldname").kinds, vec![Removed]);
    assert_eq!(
        s.counts,
        KindCounts {
            added: 2,
            removed: 2,
            version_bump: 1,
            license_change: 2,
            maintainer_change: 1,
            rebuild_only: 6
        }
    );

    // Rebuilds (nixpkgs' count, attributes): a..e, fresh, bump, rebuild, and newname (added: nixpkgs'
    // method counts it though its output exists in base) = 9; not lic and maint (meta is not part of the
    // derivation: only their metadata changed). Rebuilt derivations: the 8 whose outputs are new.
    let system = &s.impact.per_system;
    assert_eq!(system.len(), 1, "{system:?}");
    assert_eq!((system[0].rebuilds, system[0].bucket), (9, Bucket::UpTo10));
    assert_eq!(system[0].rebuilt_drvs, 8);
    let linux = s.impact.per_kernel.iter().find(|k| k.kernel == "linux").expect("linux");
    if system[0].system.ends_with("-linux") {
        assert_eq!((linux.rebuilds, linux.bucket, linux.rebuilt_drvs), (9, Bucket::UpTo10, 8));
    }
    let darwin = s.impact.per_kernel.iter().find(|k| k.kernel == "darwin").expect("darwin");
    assert!(system[0].system.ends_with("-darwin") || (darwin.rebuilds, darwin.bucket) == (0, Bucket::None));

    // Blast radius: a has b, c, d, e above it; every rebuilt drv is listed with full_blast_radius.
    assert!(s.impact.blast_radius_computed);
    assert_eq!(s.impact.changed_drvs, 8);
    assert_eq!(s.impact.top.len(), 8);
    let radius = |attr: &str| s.impact.top.iter().find(|t| t.attr == attr).map(|t| t.dependents);
    assert_eq!(
        ["a", "b", "c", "d", "e", "fresh", "rebuild"].map(radius),
        [Some(4), Some(3), Some(2), Some(1), Some(0), Some(0), Some(0)]
    );
    assert_eq!(s.impact.top[0].attr, "a");
    assert_eq!(s.impact.top[1].attr, "b");
    // Ties are ordered by attribute.
    let zeros: Vec<&str> =
        s.impact.top.iter().filter(|t| t.dependents == 0).map(|t| t.attr.as_str()).collect();
    assert_eq!(zeros, vec!["bump", "e", "fresh", "rebuild"]);
    // The union: the 8 rebuilt derivations (the chain's dependents are among them).
    assert_eq!(s.impact.must_rebuild, 8);
    assert_eq!(system[0].must_rebuild, 8);

    let metrics = eka_ci::metrics::render();
    let traversal =
        format!("eka_ci_rebuild_impact_traversal_duration_seconds_count{{system=\"{}\"}}", system[0].system);
    assert!(metrics.contains(&traversal), "{traversal} missing");

    // Top N only without full_blast_radius; the cache keys on the settings too.
    let top2 = Settings { max_top_blast_radius: 2, ..Settings::default() };
    let s2 = summary::summarize_job(&env.store, jobsets, graph, b, h, &top2).expect("summary");
    assert_eq!(s2.impact.top.iter().map(|t| t.attr.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);

    // Rendering names every kind and the blast radius.
    let md = render(
        &ChangeSummary {
            repo: s2.repo.clone(),
            base_sha: base.clone(),
            head_sha: head.clone(),
            jobs: vec![s2],
            sizes: vec![],
        },
        &top2,
    );
    assert_eq!(md.truncation, Truncation::None);
    for needle in [
        "### Added (2)",
        "### Version bumps (1)",
        "| bump | ",
        "1\\.0",
        "1\\.1",
        "### Top blast radius",
        "| a | ",
        "6 rebuild-only packages",
    ] {
        assert!(md.markdown.contains(needle), "{needle:?} missing in\n{}", md.markdown);
    }
}

#[test]
fn summaries_are_cached_found_per_commit_and_pruned() {
    let n = nonce();
    let repo = GitRepo::new();
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&n, BASE)))]);
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, HEAD)))]);
    let env = env();
    let (b, h) = evaluate(&env, repo.path(), &base, &head);
    let (jobsets, graph) = (env.pipeline.jobsets(), env.pipeline.graph());
    let settings = Settings::default();

    assert_eq!(
        summary::for_commit(&env.store, jobsets, graph, &head, None, None, &settings).expect("lookup"),
        None
    );
    let m = eka_ci::metrics::global();
    let (hits, misses) = (m.change_summary_cache_hits.get(), m.change_summary_cache_misses.get());
    let first = summary::summarize_job(&env.store, jobsets, graph, b, h, &settings).expect("first");
    let second = summary::summarize_job(&env.store, jobsets, graph, b, h, &settings).expect("second");
    assert_eq!(first, second, "the second call is the cached row");
    assert!(m.change_summary_cache_misses.get() > misses);
    assert!(m.change_summary_cache_hits.get() > hits);
    assert_eq!(cache::get(&env.store, &head, &base, "main").expect("get"), Some(first.clone()));

    // Read-through by commit: cached (any base), and filtered by base and job.
    let all = summary::for_commit(&env.store, jobsets, graph, &head, None, None, &settings).expect("lookup");
    assert_eq!(all.as_ref().map(|c| c.jobs.len()), Some(1));
    let other_job = summary::for_commit(&env.store, jobsets, graph, &head, None, Some("nope"), &settings);
    assert_eq!(other_job.expect("lookup"), None);
    // Computed on demand when both jobsets exist but nothing is cached.
    assert_eq!(cache::prune(&env.store, 0).expect("prune"), 0, "computed just now");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(cache::prune(&env.store, 0).expect("prune"), 1, "older than 0 s");
    assert_eq!(cache::len(&env.store).expect("len"), 0);
    assert_eq!(
        summary::for_commit(&env.store, jobsets, graph, &head, None, None, &settings).expect("lookup"),
        None
    );
    let computed = summary::for_commit(&env.store, jobsets, graph, &head, Some(&base), None, &settings)
        .expect("lookup")
        .expect("computed");
    assert_eq!(computed.jobs.len(), 1);
    assert_eq!(computed.jobs[0].changes, first.changes);
    assert_eq!(cache::for_head(&env.store, &head).expect("for_head").len(), 1);

    // The background service prunes and stops when told to.
    let (tx, rx) = async_channel::bounded::<()>(1);
    let store = env.store.clone();
    std::thread::sleep(Duration::from_millis(1100));
    smol::block_on(async {
        let task = smol::spawn(summary::prune_loop(store, Duration::ZERO, Duration::from_millis(20), rx));
        smol::Timer::after(Duration::from_millis(200)).await;
        drop(tx);
        task.await;
    });
    assert_eq!(cache::len(&env.store).expect("len"), 0);
}

// ---- rendering ------------------------------------------------------------------------------------

fn synthetic(changes: usize, kinds: &[PackageChangeKind], attr: impl Fn(usize) -> String) -> JobSummary {
    let changes: Vec<PackageChange> = (0..changes)
        .map(|i| PackageChange {
            attr: attr(i),
            system: "x86_64-linux".into(),
            kinds: kinds.to_vec(),
            pname: Some(format!("pkg{i}")),
            base_version: Some("1.0".into()),
            head_version: Some("1.1".into()),
            base_license: vec!["MIT".into()],
            head_license: vec!["GPL-3.0-or-later".into(), format!("License-{i}")],
            base_maintainers: (0..8).map(|m| format!("maintainer-{m}-{i}")).collect(),
            head_maintainers: (0..8).map(|m| format!("maintainer-{m}-{i}-new")).collect(),
        })
        .collect();
    JobSummary {
        repo: "file:///r".into(),
        job: "main".into(),
        base_sha: "b".repeat(40),
        head_sha: "a".repeat(40),
        eval: EvalStatus::Ok,
        new_eval_errors: vec![],
        fixed_eval_errors: vec![],
        counts: KindCounts::of(&changes),
        changes,
        impact: RebuildImpact::default(),
        computed_at: 0,
        settings: Settings::default(),
    }
}

fn one(job: JobSummary) -> ChangeSummary {
    ChangeSummary {
        repo: job.repo.clone(),
        base_sha: job.base_sha.clone(),
        head_sha: job.head_sha.clone(),
        jobs: vec![job],
        sizes: vec![],
    }
}

#[test]
fn rendering_drops_detail_in_order_and_respects_the_caps() {
    use PackageChangeKind::*;
    let all = Settings { max_packages_listed: 10_000, include_rebuild_only: true, ..Settings::default() };
    let small = one(synthetic(3, &[VersionBump, LicenseChange, MaintainerChange], |i| format!("p{i}")));
    assert_eq!(render(&small, &all).truncation, Truncation::None);

    // Maintainer rows are the widest: 200 of them overflow alone.
    let levels = [
        (200, vec![VersionBump, MaintainerChange], Truncation::Maintainers),
        (1300, vec![LicenseChange, MaintainerChange], Truncation::Licenses),
        (2000, vec![RebuildOnly], Truncation::RebuildOnlyLine),
        (5000, vec![VersionBump, RebuildOnly], Truncation::CountsOnly),
    ];
    for (n, kinds, expected) in levels {
        let s = one(synthetic(n, &kinds, |i| format!("package-{i}")));
        let r = render(&s, &all);
        assert_eq!(r.truncation, expected, "{n} × {kinds:?}");
        assert!(r.markdown.len() < 60_000, "{expected:?}: {} bytes", r.markdown.len());
        assert!(r.markdown.contains("shortened to fit"));
        assert!(r.markdown.contains("**Package changes:**"), "counts survive");
        let c = &s.jobs[0].counts;
        assert!(r.markdown.contains(&format!("{} rebuild-only", c.rebuild_only)));
    }
    // Counts only keeps no table.
    let r = render(&one(synthetic(5000, &[VersionBump], |i| format!("package-{i}"))), &all);
    assert_eq!(r.truncation, Truncation::CountsOnly);
    assert!(!r.markdown.contains("| attribute |"));

    // max_packages_listed summarises the rest; without include_rebuild_only there is only a line.
    let few = Settings { max_packages_listed: 2, ..Settings::default() };
    let r = render(&one(synthetic(5, &[Added], |i| format!("p{i}"))), &few);
    assert!(r.markdown.contains("… and 3 more"), "{}", r.markdown);
    let r = render(&one(synthetic(5, &[RebuildOnly], |i| format!("p{i}"))), &few);
    assert!(r.markdown.contains("5 rebuild-only packages"));
    assert!(!r.markdown.contains("### Rebuild only"));
}

#[test]
fn the_hard_cap_never_cuts_a_character_and_untrusted_text_is_escaped() {
    // Thousands of jobs with multi-byte names: even counts only exceed the cap.
    let jobs: Vec<JobSummary> = (0..3000)
        .map(|i| {
            let mut j = synthetic(1, &[PackageChangeKind::Added], |_| "x".into());
            j.job = format!("jöb-€-{i}-{}", "漢字".repeat(3));
            j
        })
        .collect();
    let s =
        ChangeSummary { repo: "r".into(), base_sha: "b".into(), head_sha: "h".into(), jobs, sizes: vec![] };
    let r = render(&s, &Settings::default());
    assert_eq!(r.truncation, Truncation::HardCap);
    assert!(r.markdown.len() <= 65_535, "{}", r.markdown.len());
    assert!(r.markdown.ends_with(summary::render::HARD_CAP_FOOTER));
    // Every byte cut point is tried: the output is valid UTF-8 by construction, and the cut lands on a
    // boundary for every offset of the multi-byte names.
    for pad in 0..4 {
        let mut s = s.clone();
        s.jobs[0].job = format!("{}{}", "é".repeat(pad), s.jobs[0].job);
        let r = render(&s, &Settings::default());
        assert!(r.markdown.len() <= 65_535);
        assert!(std::str::from_utf8(r.markdown.as_bytes()).is_ok());
    }

    let hostile = one(synthetic(1, &[PackageChangeKind::Added], |_| {
        "<img src=x onerror=alert(1)> @octocat | [x](http://evil) `code`\n# heading".into()
    }));
    let md = render(&hostile, &Settings::default()).markdown;
    let row = md.lines().find(|l| l.contains("img")).expect("the row");
    for escaped in ["\\<img", "\\@&#8203;octocat", "\\| \\[x\\]", "\\`code\\`", "\\#&#8203; heading"] {
        assert!(row.contains(escaped), "{escaped:?} missing in {row}");
    }
    // Each of these characters appears only right after a backslash (or inside `&#8203;`).
    let bytes = row.as_bytes();
    for (i, b) in bytes.iter().enumerate().skip(2) {
        if matches!(b, b'<' | b'>' | b'[' | b']' | b'`' | b'@') {
            assert_eq!(bytes[i - 1], b'\\', "unescaped {} at {i} in {row}", *b as char);
        }
    }
    assert_eq!(md.lines().filter(|l| l.starts_with('#')).count(), 2, "no heading injected: {md}");
}

#[test]
fn every_summary_metric_family_is_exported() {
    let text = eka_ci::metrics::render();
    for family in [
        "eka_ci_change_summary_total_duration_seconds_bucket{phase=\"classify\"",
        "eka_ci_change_summary_total_duration_seconds_bucket{phase=\"end_to_end\"",
        "eka_ci_change_summary_cache_hits_total",
        "eka_ci_change_summary_cache_misses_total",
        "eka_ci_change_summary_truncated_total{level=\"columns\"}",
        "eka_ci_change_summary_truncated_total{level=\"summary\"}",
        "eka_ci_change_summary_metadata_unavailable_total",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
}

#[test]
fn hidden_dependents_count_and_evaluation_errors_are_reported() {
    // Only `a` and `top` are attributes; b, c, d sit between them in the graph. `broken` newly fails.
    let base_body = r#"
  a = mk "deep-a-1.0" "echo a > $out" [ ] { };
  b = mk "deep-b-1.0" "echo b > $out" [ a ] { };
  c = mk "deep-c-1.0" "echo c > $out" [ b ] { };
  d = mk "deep-d-1.0" "echo d > $out" [ c ] { };
in {
  inherit a;
  top = mk "deep-top-1.0" "echo top > $out" [ d ] { };
  broken = mk "broken-1.0" "echo ok > $out" [ ] { };
}
"#;
    let head_body = base_body
        .replace("echo a > $out", "echo a-changed > $out")
        .replace(r#"broken = mk "broken-1.0" "echo ok > $out" [ ] { };"#, r#"broken = throw "boom";"#);
    let n = nonce();
    let repo = GitRepo::new();
    let base = repo
        .commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&n, base_body)))]);
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, &head_body)))]);
    let env = env();
    let (b, h) = evaluate(&env, repo.path(), &base, &head);
    let (jobsets, graph) = (env.pipeline.jobsets(), env.pipeline.graph());
    let s = summary::summarize_job(&env.store, jobsets, graph, b, h, &Settings::default()).expect("summary");

    assert_eq!(s.eval, EvalStatus::AttrErrors { count: 1, allowed: false });
    assert_eq!(s.new_eval_errors, vec!["broken".to_string()]);
    assert!(s.changes.iter().all(|c| c.attr != "broken"), "an evaluation error is not a package change");
    let radius: Vec<(&str, u64)> = s.impact.top.iter().map(|t| (t.attr.as_str(), t.dependents)).collect();
    assert_eq!(radius, vec![("a", 4), ("top", 0)], "b, c, d and top depend on a");
    assert_eq!(s.impact.must_rebuild, 5);
    assert_eq!(s.impact.per_system[0].rebuilds, 2);

    // Without rebuild_impact the counts stay, the blast radius is neither computed nor shown.
    let off = Settings { impact: false, package_changes: false, ..Settings::default() };
    let s = summary::summarize_job(&env.store, jobsets, graph, b, h, &off).expect("summary");
    assert!(!s.impact.blast_radius_computed && s.impact.top.is_empty());
    assert_eq!(s.impact.per_system[0].rebuilds, 2);
    let md = render(
        &ChangeSummary { repo: s.repo.clone(), base_sha: base, head_sha: head, jobs: vec![s], sizes: vec![] },
        &off,
    );
    assert!(md.markdown.contains("1 attribute failed to evaluate; 1 new: broken"), "{}", md.markdown);
    assert!(
        !md.markdown.contains("blast radius") && !md.markdown.contains("Package changes"),
        "{}",
        md.markdown
    );
}

#[test]
fn several_jobs_render_one_section_each() {
    let mut a = synthetic(1, &[PackageChangeKind::Added], |_| "alpha".into());
    let mut b = synthetic(1, &[PackageChangeKind::Removed], |_| "beta".into());
    a.job = "linux".into();
    b.job = "darwin".into();
    b.eval = EvalStatus::Failed { message: "error: syntax error, unexpected @".into() };
    let s = ChangeSummary {
        repo: "r".into(),
        base_sha: "b".into(),
        head_sha: "h".into(),
        jobs: vec![b, a],
        sizes: vec![],
    };
    let md = render(&s, &Settings::default()).markdown;
    let darwin = md.find("### Job darwin").expect("darwin section");
    let linux = md.find("### Job linux").expect("linux section");
    assert!(darwin < linux, "jobs in the given order");
    assert!(md.contains("#### Removed (1)") && md.contains("#### Added (1)"), "{md}");
    assert!(md.contains("**Evaluation:** failed: error\\: syntax error\\, unexpected \\@&#8203;"), "{md}");
    assert_eq!(render(&s, &Settings::default()).markdown, md, "deterministic");
}

/// A libpng-like change under aliases and a dependent no attribute names: every count of the summary is
/// defined once (docs/change-summary.md) and they agree.
#[test]
fn rebuild_counts_agree_with_aliases_and_hidden_dependents() {
    const LIB_BASE: &str = r#"
  png = mk "libpng-1.0" "echo png > $out" [ ] { };
  app1 = mk "app1-1.0" "echo app1 > $out" [ png ] { };
  app2 = mk "app2-1.0" "echo app2 > $out" [ png ] { };
  inner = mk "inner-1.0" "echo inner > $out" [ png ] { };
  top = mk "top-1.0" "echo top > $out" [ inner ] { };
in {
  libpng = png;
  libpng_1 = png;
  inherit app1 app2 top;
  app1Alias = app1;
  other = mk "other-1.0" "echo other > $out" [ ] { };
}
"#;
    let n = nonce();
    let repo = GitRepo::new();
    let base = repo
        .commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&nix(&n, LIB_BASE)))]);
    let lib_head = LIB_BASE.replace("echo png > $out", "echo png; true > $out");
    let head = repo.commit("head", &[("default.nix", Some(&nix(&n, &lib_head)))]);
    let env = env();
    let (b, h) = evaluate(&env, repo.path(), &base, &head);
    eka_ci::metrics::set_known_systems([eka_ci::scheduler::builders::native_system()]);
    let settings = Settings::default();
    let s = summary::summarize_job(&env.store, env.pipeline.jobsets(), env.pipeline.graph(), b, h, &settings)
        .expect("summary");

    // Package changes and rebuilds count the attributes nix-env lists: libpng, app1, app2, top
    // (libpng_1 and app1Alias are the very sets of libpng and app1, which nix-env lists first).
    assert_eq!(s.counts.rebuild_only, 4, "{:#?}", s.changes);
    assert_eq!(s.impact.hidden_aliases, 2);
    let system = &s.impact.per_system;
    assert_eq!(system.len(), 1, "{system:?}");
    assert_eq!((system[0].rebuilds, system[0].bucket), (4, Bucket::UpTo10));
    assert_eq!(system[0].rebuilt_drvs, 4);
    assert_eq!(s.impact.changed_drvs, 4, "the seeds are the rebuilds");
    // Must rebuild adds `inner`, which only the graph knows: never lower than the rebuilds.
    assert_eq!((s.impact.must_rebuild, system[0].must_rebuild), (5, 5));
    // A kernel's count is the sum of its systems'.
    for k in &s.impact.per_kernel {
        let sum: u64 = system
            .iter()
            .filter(|x| eka_ci::summary::impact::kernel_of(&x.system) == Some(k.kernel.as_str()))
            .map(|x| x.rebuilds)
            .sum();
        assert_eq!(k.rebuilds, sum, "{}", k.kernel);
    }
    let md = render(&one(s.clone()), &settings).markdown;
    for needle in [
        "(attributes as `nix-env -qaP` lists them, nixpkgs' count; 2 aliases of an attribute listed before not counted)",
        "4 rebuild-only (attributes as `nix-env -qaP` lists them)",
        "4 rebuilt derivations; 5 derivations must rebuild in total",
    ] {
        assert!(md.contains(needle), "{needle:?} missing in\n{md}");
    }
}
