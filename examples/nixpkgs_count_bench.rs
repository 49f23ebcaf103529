//! The rebuild count on the full nixpkgs tree against nixpkgs' own method (docs/change-summary.md,
//! "Measured on nixpkgs"; run by scripts/bench/nixpkgs-count).
//!
//! Usage: `nixpkgs_count_bench BASE_DIR HEAD_DIR` (two nixpkgs trees). For each tree: one `nix-instantiate`
//! process walks it the way the built-in evaluator and nix-env do (depth first, `recurseForDerivations`,
//! every attribute under `builtins.tryEval`; a stand-in for the evaluator, whose full-size speed is another
//! benchmark) and its derivation records are stored as a jobset; then the product's own identity step
//! (`nix::eval_identity::find_hidden`, timed) and change summary (`summary::summarize_job`) run on them.
//! Side by side, `nix-env -f DIR -qaP --out-path` of both trees gives nixpkgs' count. Prints both, the
//! listed attributes compared name by name, and the times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use eka_ci::jobset::{aliases, AttrDrv, AttrOutcome, Begin, JobsetId, JobsetKey, JobsetState, Jobsets};
use eka_ci::nix::eval::{attr_display, EvalOptions, EvalSource};
use eka_ci::summary::{self, Settings};

const WALK: &str = r#"
let
  top = let raw = import ./default.nix; in if builtins.isFunction raw then raw { } else raw;
  isDrv = v: (v.type or null) == "derivation";
  kindOf = v:
    if !(builtins.isAttrs v) then "skip"
    else if isDrv v then "drv"
    else if (v.recurseForDerivations or false) == true then "rec"
    else "skip";
  infoOf = d:
    let i = {
      n = d.name; s = d.system; d = d.drvPath;
      o = builtins.listToAttrs (map (o: { name = o; value = d.${o}.outPath or null; }) (d.outputs or [ "out" ]));
    };
    in builtins.deepSeq i i;
  go = path: v:
    let k = builtins.tryEval (kindOf v);
    in
      if !k.success then [ ]
      else if k.value == "rec" then builtins.concatMap (n: go (path ++ [ n ]) v.${n}) (builtins.attrNames v)
      else if k.value == "drv" then
        (let i = builtins.tryEval (infoOf v); in if i.success then [ (i.value // { a = path; }) ] else [ ])
      else [ ];
in builtins.concatMap (n: go [ n ] top.${n}) (builtins.attrNames top)
"#;

#[derive(serde::Deserialize)]
struct Rec {
    a: Vec<String>,
    n: String,
    s: String,
    d: String,
    o: BTreeMap<String, Option<String>>,
}

fn walk(dir: &Path) -> Vec<Rec> {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json", "--expr", WALK])
        .current_dir(dir)
        .output()
        .expect("run nix-instantiate");
    assert!(out.status.success(), "walk failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("walk output")
}

fn nix_env(dir: &Path) -> BTreeMap<String, String> {
    let out = Command::new("nix-env")
        .args(["-f", ".", "-qaP", "--out-path"])
        .current_dir(dir)
        .output()
        .expect("nix-env");
    assert!(out.status.success(), "nix-env failed: {}", String::from_utf8_lossy(&out.stderr));
    eka_ci::nix::eval_identity::parse_nix_env_out_paths(&String::from_utf8_lossy(&out.stdout))
}

fn main() {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let [base_dir, head_dir] = args.as_slice() else {
        eprintln!("usage: nixpkgs_count_bench BASE_DIR HEAD_DIR");
        std::process::exit(2);
    };
    let tmp = std::env::temp_dir().join(format!("ekaci-count-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let store = eka_ci::store::Store::open(&tmp.join("db.redb")).expect("store");
    let graph = eka_ci::graph::Graph::open(store.clone(), 10_000).expect("graph");
    let jobsets = Jobsets::new(store.clone());
    let mut opts = EvalOptions::new(tmp.join("gcroots"));
    opts.workers = 2;
    opts.max_memory_mib = 6000;
    let source = EvalSource::File { file: "default.nix".into(), attr_path: vec![] };

    let mut ids: Vec<JobsetId> = Vec::new();
    let mut env_lists = Vec::new();
    for (commit, dir) in [("base", base_dir), ("head", head_dir)] {
        let started = Instant::now();
        let env_list = nix_env(dir);
        println!(
            "{commit}: nix-env -qaP --out-path: {} attributes, {:.1} s",
            env_list.len(),
            started.elapsed().as_secs_f64()
        );
        let started = Instant::now();
        let records = walk(dir);
        println!(
            "{commit}: walk: {} derivation attributes, {:.1} s",
            records.len(),
            started.elapsed().as_secs_f64()
        );
        let key = JobsetKey {
            repo: format!("file://{}", dir.display()),
            commit: commit.into(),
            job: "nixpkgs".into(),
        };
        let Begin::New(id) = jobsets.begin(&key, true).expect("begin") else { panic!("fresh store") };
        let mut writer = jobsets.writer(id);
        for r in records {
            let drv = AttrDrv {
                drv_path: r.d,
                name: r.n,
                system: r.s,
                outputs: r.o.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect(),
                meta_json: None,
                required_system_features: vec![],
            };
            writer.push(attr_display(&r.a), AttrOutcome::Drv(drv)).expect("push");
        }
        writer.flush().expect("flush");
        jobsets.finish(id, JobsetState::Evaluated).expect("finish");
        let started = Instant::now();
        let groups = aliases::groups_of(&jobsets, id).expect("groups");
        let members: usize = groups.iter().map(Vec::len).sum();
        let found = smol::block_on(eka_ci::nix::eval_identity::find_hidden(dir, &source, &opts, groups))
            .expect("identity step");
        let ms = started.elapsed().as_millis() as u64;
        println!(
            "{commit}: identity step: {} groups ({members} attributes), {} hidden, {} undecided, {:.1} s",
            found.groups,
            found.hidden.len(),
            found.undecided.len(),
            ms as f64 / 1000.0
        );
        let stored = aliases::JobsetAliases {
            hidden: found.hidden,
            groups: found.groups,
            undecided: found.undecided,
            duration_ms: ms,
        };
        jobsets.put_aliases(id, &stored).expect("store aliases");
        // The listed attributes against nix-env's, name by name.
        let hidden = stored.hidden_map();
        let mut ours = BTreeSet::new();
        jobsets
            .for_each_attr(id, |attr, o| {
                if matches!(o, AttrOutcome::Drv(_))
                    && !hidden.contains_key(attr)
                    && eka_ci::nix::eval_identity::nix_env_lists_name(attr)
                {
                    ours.insert(attr.to_string());
                }
                Ok(())
            })
            .expect("attrs");
        let theirs: BTreeSet<String> = env_list.keys().cloned().collect();
        let only_ours: Vec<_> = ours.difference(&theirs).take(20).collect();
        let only_theirs: Vec<_> = theirs.difference(&ours).take(20).collect();
        println!(
            "{commit}: listed: ours {}, nix-env {}; only ours ({}): {only_ours:?}; only nix-env ({}): {only_theirs:?}",
            ours.len(),
            theirs.len(),
            ours.difference(&theirs).count(),
            theirs.difference(&ours).count()
        );
        ids.push(id);
        env_lists.push(env_list);
    }
    let expected = env_lists[1].iter().filter(|(a, o)| env_lists[0].get(*a) != Some(*o)).count() as u64;
    let settings = Settings { impact: false, ..Settings::default() };
    let s = summary::summarize_job(&store, &jobsets, &graph, ids[0], ids[1], &settings).expect("summary");
    println!(
        "nixpkgs' method (nix-env -qaP --out-path): {expected} (bucket {})",
        summary::Bucket::of(expected).label()
    );
    for k in &s.impact.per_kernel {
        println!(
            "eka-ci {}: rebuilds {} ({}), rebuilt derivations {}",
            k.kernel,
            k.rebuilds,
            k.bucket.label(),
            k.rebuilt_drvs
        );
    }
    for x in &s.impact.per_system {
        println!("eka-ci {}: rebuilds {}, rebuilt derivations {}", x.system, x.rebuilds, x.rebuilt_drvs);
    }
    println!(
        "eka-ci total: rebuilds {}, hidden aliases on head {}, rebuilt derivations {}, rebuild-only package changes {}",
        s.impact.rebuilds, s.impact.hidden_aliases, s.impact.changed_drvs, s.counts.rebuild_only
    );
    let _ = std::fs::remove_dir_all(&tmp);
    if s.impact.rebuilds != expected {
        std::process::exit(1);
    }
}
