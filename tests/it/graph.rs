//! The derivation graph (`eka_ci::graph`) against real Nix: fixture expressions are instantiated with
//! `nix-instantiate` (GC roots in the test's temporary directory), discovered, and compared with Nix's own
//! answers: `nix-store --query --requisites` for closures and `nix show-derivation --recursive` for nodes and
//! (reversed) edges. Also: persistence across reopening the store, identical answers with a cache far
//! smaller than the graph, pinning, failures naming their derivation, concurrent discoveries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use eka_ci::graph::{DrvId, Graph, GraphConfig, GraphError};
use eka_ci::store::Store;
use serde_json::Value;

const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command";

fn nix(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("NIX_CONFIG", NIX_CONFIG);
    c
}

fn run(mut c: Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(out.status.success(), "{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Instantiates `expr` (a Nix expression evaluating to a derivation, a list or a set of them) with GC roots
/// under `dir`; returns the .drv store paths in Nix's order.
fn instantiate(dir: &Path, name: &str, expr: &str) -> Vec<String> {
    let file = dir.join(format!("{name}.nix"));
    std::fs::write(&file, expr).expect("write expression");
    let roots = dir.join(format!("{name}-roots"));
    std::fs::create_dir_all(&roots).expect("roots dir");
    let mut c = nix("nix-instantiate");
    c.arg("--add-root").arg(roots.join("r")).arg(&file);
    run(c)
        .lines()
        .map(|root| std::fs::read_link(root).expect("root is a symlink").to_string_lossy().into_owned())
        .collect()
}

/// `nix-store --query --requisites`, derivations only.
fn requisites(drv: &str) -> BTreeSet<String> {
    let mut c = nix("nix-store");
    c.args(["--query", "--requisites", drv]);
    run(c).lines().filter(|l| l.ends_with(".drv")).map(String::from).collect()
}

/// `nix show-derivation --recursive`: every derivation in the closures of `drvs`.
fn show_derivations(drvs: &[String]) -> BTreeMap<String, Value> {
    let mut c = nix("nix");
    c.args(["show-derivation", "--recursive"]).args(drvs);
    let v: Value = serde_json::from_str(&run(c)).expect("json");
    v.as_object().expect("object").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn open(dir: &Path, capacity: usize) -> Graph {
    let store = Store::open(&dir.join("db/ekaci.redb")).expect("open store");
    Graph::open(store, capacity).expect("open graph")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Chain, diamond, multi-output inputs, a fixed-output input, structured attributes, a shared core.
const FIXTURE: &str = r#"
let
  mk = name: attrs: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ];
  } // attrs);
  core = mk "graph-test-core" { };
  fetched = mk "graph-test-fetched" {
    args = [ "-c" "echo -n hi > $out" ];
    outputHashMode = "flat";
    outputHashAlgo = "sha256";
    outputHash = "193s6bfb4ncbr0d3rpb177cac43b2z2h3afxi7grcswgci346hwg";
  };
  multi = mk "graph-test-multi" {
    outputs = [ "out" "dev" "lib" ];
    args = [ "-c" "echo > $out; echo > $dev; echo > $lib" ];
    deps = [ core ];
  };
  chain = n: mk "graph-test-chain-${toString n}" {
    deps = [ core ] ++ (if n == 0 then [ ] else [ (chain (n - 1)) ]);
  };
  base = mk "graph-test-diamond-base" { deps = [ core ]; };
  left = mk "graph-test-diamond-left" { deps = [ base core ]; };
  right = mk "graph-test-diamond-right" { deps = [ base "${multi.dev}" ]; };
in
{
  top = mk "graph-test-diamond-top" {
    deps = [ left right fetched ];
    requiredSystemFeatures = [ "kvm" "big-parallel" ];
    preferLocalBuild = true;
    allowSubstitutes = false;
  };
  two = mk "graph-test-two-outputs" { deps = [ "${multi.dev}" multi.lib core ]; };
  chain = chain 5;
  structured = mk "graph-test-structured" {
    __structuredAttrs = true;
    requiredSystemFeatures = [ "nixos-test" ];
    preferLocalBuild = true;
    deps = [ core fetched ];
  };
}
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    roots: Vec<String>,
    nix: BTreeMap<String, Value>,
}

fn fixture() -> Fixture {
    let dir = tmp();
    let path = dir.path().to_path_buf();
    let roots = instantiate(&path, "fixture", FIXTURE);
    assert_eq!(roots.len(), 4);
    let nix = show_derivations(&roots);
    Fixture { _dir: dir, dir: path, roots, nix }
}

fn env<'a>(drv: &'a Value, key: &str) -> Option<&'a Value> {
    drv["env"].get(key)
}

/// A structured-attributes value, or a plain env string.
fn attr(drv: &Value, key: &str) -> Option<Value> {
    match env(drv, "__json") {
        Some(Value::String(json)) => serde_json::from_str::<Value>(json).expect("__json").get(key).cloned(),
        _ => env(drv, key).cloned(),
    }
}

/// Asserts that the graph's view of every derivation in `nix` is Nix's.
fn assert_nodes_match(graph: &Graph, nix: &BTreeMap<String, Value>) {
    let mut expected_dependents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (path, drv) in nix {
        expected_dependents.entry(path).or_default();
        for input in drv["inputDrvs"].as_object().expect("inputDrvs").keys() {
            expected_dependents.entry(input).or_default().insert(path);
        }
    }
    let all: Vec<String> =
        nix.keys().cloned().chain(["/nix/store/not-in-the-graph.drv".to_string()]).collect();
    let ids = graph.ids_of(&all).expect("ids_of");
    assert_eq!(ids.last(), Some(&None), "unknown paths have no id");
    for (path, id) in all.iter().zip(&ids).take(nix.len()) {
        assert_eq!(*id, graph.id_of(path).expect("id_of"), "ids_of agrees with id_of");
    }
    for (path, drv) in nix {
        let id = graph.id_of(path).expect("id_of").unwrap_or_else(|| panic!("{path} not in the graph"));
        assert_eq!(graph.path_of(id).expect("path_of"), *path);
        let node = graph.node(id).expect("node");
        assert_eq!(node.path, *path);
        assert_eq!(node.system, drv["system"].as_str().expect("system"));
        let (system, inputs) = graph.shape(id).expect("shape");
        assert_eq!(system, node.system, "shape agrees with node");
        assert_eq!(inputs, node.inputs.iter().map(|i| i.id).collect::<Vec<_>>());
        let outputs: BTreeMap<String, String> = drv["outputs"]
            .as_object()
            .expect("outputs")
            .iter()
            .map(|(k, v)| (k.clone(), v["path"].as_str().unwrap_or_default().to_string()))
            .collect();
        assert_eq!(node.outputs.iter().cloned().collect::<BTreeMap<_, _>>(), outputs, "outputs of {path}");
        let inputs: BTreeMap<String, Vec<String>> = drv["inputDrvs"]
            .as_object()
            .expect("inputDrvs")
            .iter()
            .map(|(k, v)| {
                let mut outs: Vec<String> =
                    v.as_array().expect("outs").iter().map(|o| o.as_str().expect("o").to_string()).collect();
                outs.sort();
                (k.clone(), outs)
            })
            .collect();
        let ours: BTreeMap<String, Vec<String>> = node
            .inputs
            .iter()
            .map(|i| {
                let mut outs = i.outputs.clone();
                outs.sort();
                (graph.path_of(i.id).expect("input path"), outs)
            })
            .collect();
        assert_eq!(ours, inputs, "inputs of {path}");
        for input in &node.inputs {
            assert!(input.id < id, "ids are a topological order: {} < {} for {path}", input.id, id);
        }
        let deps: Vec<DrvId> = node.inputs.iter().map(|i| i.id).collect();
        assert_eq!(graph.dependencies(id).expect("dependencies"), deps);

        let features: Vec<String> = match attr(drv, "requiredSystemFeatures") {
            Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            Some(Value::Array(a)) => a.iter().map(|f| f.as_str().expect("feature").to_string()).collect(),
            _ => Vec::new(),
        };
        assert_eq!(node.required_system_features, features, "features of {path}");
        let prefer_local = matches!(attr(drv, "preferLocalBuild"), Some(Value::Bool(true)))
            || attr(drv, "preferLocalBuild") == Some(Value::String("1".into()));
        assert_eq!(node.prefer_local_build, prefer_local, "preferLocalBuild of {path}");
        let allow_substitutes = match attr(drv, "allowSubstitutes") {
            None => true,
            Some(Value::String(s)) => s == "1",
            Some(Value::Bool(b)) => b,
            Some(other) => panic!("allowSubstitutes = {other}"),
        };
        assert_eq!(node.allow_substitutes, allow_substitutes, "allowSubstitutes of {path}");
        let fixed = outputs.len() == 1 && drv["outputs"]["out"].get("hash").is_some();
        assert_eq!(node.is_fixed_output, fixed, "fixed output of {path}");

        let dependents: BTreeSet<String> = graph
            .dependents(id)
            .expect("dependents")
            .into_iter()
            .map(|d| graph.path_of(d).expect("path"))
            .collect();
        let expected: BTreeSet<String> =
            expected_dependents[path.as_str()].iter().map(|s| s.to_string()).collect();
        assert_eq!(dependents, expected, "dependents of {path}");
    }
}

fn paths(graph: &Graph, ids: &[DrvId]) -> BTreeSet<String> {
    ids.iter().map(|&id| graph.path_of(id).expect("path_of")).collect()
}

fn is_ascending(ids: &[DrvId]) -> bool {
    ids.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn the_graph_is_nixs_graph() {
    let fx = fixture();
    let graph = open(&fx.dir, 1000);
    let stats = smol::block_on(graph.discover(&fx.roots)).expect("discover");
    assert!(stats.failed.is_empty(), "{:?}", stats.failed);
    assert_eq!(stats.new_nodes as usize, fx.nix.len());
    assert_eq!(stats.files_read as usize, fx.nix.len(), "each .drv is read exactly once");
    assert_eq!(graph.len() as usize, fx.nix.len());
    assert_eq!(graph.stats().files_read as usize, fx.nix.len());

    // Every feature of the fixture is really there (so the comparisons below cover them).
    let by_name = |suffix: &str| fx.nix.keys().find(|p| p.ends_with(suffix)).expect(suffix).clone();
    let top = graph.node(graph.id_of(&by_name("-graph-test-diamond-top.drv")).unwrap().unwrap()).unwrap();
    assert!(top.prefer_local_build && !top.allow_substitutes);
    assert_eq!(top.required_system_features, vec!["kvm", "big-parallel"]);
    let fetched = graph.node(graph.id_of(&by_name("-graph-test-fetched.drv")).unwrap().unwrap()).unwrap();
    assert!(fetched.is_fixed_output && fetched.output_path("out").is_some());
    let two = graph.node(graph.id_of(&by_name("-graph-test-two-outputs.drv")).unwrap().unwrap()).unwrap();
    assert!(two.inputs.iter().any(|i| i.outputs == ["dev", "lib"]), "{two:?}");
    let structured =
        graph.node(graph.id_of(&by_name("-graph-test-structured.drv")).unwrap().unwrap()).unwrap();
    assert_eq!(structured.required_system_features, vec!["nixos-test"]);
    assert!(structured.prefer_local_build);

    assert_nodes_match(&graph, &fx.nix);

    // Closures are Nix's requisites.
    for (root, id) in fx.roots.iter().zip(&stats.roots) {
        let id = id.expect("root id");
        assert_eq!(graph.id_of(root).unwrap(), Some(id));
        let closure = graph.closure(&[id]).expect("closure");
        assert!(is_ascending(&closure));
        assert_eq!(paths(&graph, &closure), requisites(root), "closure of {root}");
    }
    let all: Vec<DrvId> = stats.roots.iter().map(|r| r.expect("id")).collect();
    assert_eq!(graph.closure(&all).unwrap().len(), fx.nix.len());

    // Transitive dependents of the core: every derivation whose requisites contain it.
    let core = by_name("-graph-test-core.drv");
    let core_id = graph.id_of(&core).unwrap().unwrap();
    let expected: BTreeSet<String> =
        fx.nix.keys().filter(|p| requisites(p).contains(&core)).cloned().collect();
    assert!(expected.len() > 10 && expected.len() < fx.nix.len(), "the fixture's fetched drv is not on core");
    let blast = graph.transitive_dependents(&[core_id]).expect("transitive_dependents");
    assert!(is_ascending(&blast));
    assert_eq!(paths(&graph, &blast), expected);
    let base = graph.id_of(&by_name("-graph-test-diamond-base.drv")).unwrap().unwrap();
    let from_base = paths(&graph, &graph.transitive_dependents(&[base]).unwrap());
    assert_eq!(from_base.len(), 4, "base, left, right, top: {from_base:?}");

    // Unknown ids are errors, not panics.
    let unknown = DrvId(graph.len() as u32 + 7);
    assert!(matches!(graph.node(unknown), Err(GraphError::UnknownId(_))));
    assert!(matches!(graph.closure(&[unknown]), Err(GraphError::UnknownId(_))));
    assert!(graph.pin(unknown).is_err());
    assert_eq!(graph.id_of("/nix/store/00000000000000000000000000000000-nope.drv").unwrap(), None);

    // A second discovery of the same roots reads nothing.
    let again = graph.discover_blocking(&fx.roots).expect("rediscover");
    assert_eq!((again.new_nodes, again.files_read), (0, 0));
    assert_eq!(again.roots, stats.roots);

    let rendered = eka_ci::metrics::render();
    for family in [
        "eka_ci_graph_nodes_total",
        "eka_ci_graph_cache_utilization",
        "eka_ci_graph_cache_reloads_total",
        "eka_ci_graph_pinned_nodes_total",
        "eka_ci_graph_cache_reload_duration_seconds",
    ] {
        assert!(rendered.contains(family), "{family} missing from /metrics");
    }
}

/// Everything a query can answer about `roots`' graph, by path (ids differ between discoveries).
fn snapshot(graph: &Graph, roots: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let ids: Vec<DrvId> = roots.iter().map(|r| graph.id_of(r).unwrap().expect("root known")).collect();
    for (root, &id) in roots.iter().zip(&ids) {
        out.insert(format!("closure {root}"), format!("{:?}", paths(graph, &graph.closure(&[id]).unwrap())));
    }
    for id in graph.closure(&ids).unwrap() {
        let node = graph.node(id).unwrap();
        let inputs: BTreeSet<String> = node.inputs.iter().map(|i| graph.path_of(i.id).unwrap()).collect();
        let dependents = paths(graph, &graph.dependents(id).unwrap());
        let blast = paths(graph, &graph.transitive_dependents(&[id]).unwrap());
        out.insert(
            node.path.clone(),
            format!(
                "{} {:?} {:?} {:?} {} {} {} | {inputs:?} | {dependents:?} | {blast:?}",
                node.system,
                node.outputs,
                node.inputs.iter().map(|i| &i.outputs).collect::<Vec<_>>(),
                node.required_system_features,
                node.prefer_local_build,
                node.allow_substitutes,
                node.is_fixed_output
            ),
        );
    }
    out
}

#[test]
fn the_graph_persists_and_is_not_read_again() {
    let fx = fixture();
    let before = {
        let graph = open(&fx.dir, 1000);
        let stats = graph.discover_blocking(&fx.roots).expect("discover");
        assert!(stats.failed.is_empty());
        assert!(stats.files_read > 0);
        snapshot(&graph, &fx.roots)
    }; // graph and store closed
    let graph = open(&fx.dir, 1000);
    assert_eq!(graph.len() as usize, fx.nix.len());
    assert_eq!(graph.stats().resident, 0, "a reopened graph starts cold");
    let stats = graph.discover_blocking(&fx.roots).expect("rediscover");
    assert_eq!((stats.files_read, stats.new_nodes), (0, 0), "stored derivations are not read again");
    assert_eq!(stats.known_nodes as usize, fx.roots.len());
    assert_eq!(snapshot(&graph, &fx.roots), before);
    assert_eq!(graph.stats().files_read, 0);
    assert!(graph.stats().reloads > 0);
    assert_nodes_match(&graph, &fx.nix);
}

/// A nixpkgs-shaped layered DAG of `n` trivial derivations: a shared core most depend on, each derivation of
/// a layer depending on the core and 2-5 derivations of lower layers; some have a `dev` output used by
/// dependents. Deterministic.
fn layered_expr(n: usize, layers: usize, seed: u64) -> String {
    let mut state = seed;
    let mut next = move |bound: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound
    };
    let per = n.div_ceil(layers);
    let mut s = String::from(
        "let\n  mk = name: outputs: deps: derivation { inherit name outputs deps; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; args = [ \"-c\" \"echo > $out\" ]; };\n  core = mk \"layered-core\" [ \"out\" ] [ ];\n",
    );
    let mut names = Vec::new();
    for k in 0..n {
        let layer = k / per;
        let multi = k % 7 == 3;
        let mut deps = vec!["core".to_string()];
        if layer > 0 {
            for _ in 0..2 + next(4) {
                let d = next(layer * per);
                deps.push(if d % 7 == 3 { format!("d{d}.dev") } else { format!("d{d}") });
            }
        }
        let outputs = if multi { "[ \"out\" \"dev\" ]" } else { "[ \"out\" ]" };
        s.push_str(&format!("  d{k} = mk \"layered-{k}\" {outputs} [ {} ];\n", deps.join(" ")));
        names.push(format!("d{k}"));
    }
    s.push_str(&format!("in [ {} ]\n", names.join(" ")));
    s
}

#[test]
fn a_tiny_cache_gives_the_same_answers() {
    let dir = tmp();
    let roots = instantiate(dir.path(), "layered", &layered_expr(2000, 8, 42));
    assert_eq!(roots.len(), 2000);
    let sample: Vec<String> = roots.iter().step_by(37).cloned().collect();

    let big = dir.path().join("big");
    let small = dir.path().join("small");
    let reference = {
        let graph = open(&big, 100_000);
        let stats = graph.discover_blocking(&roots).expect("discover");
        assert!(stats.failed.is_empty());
        assert_eq!(graph.len(), 2001);
        assert_eq!(graph.stats().reloads, 0, "everything fits: discovery leaves it all resident");
        assert!(stats.commits >= 1);
        snapshot(&graph, &sample)
    };

    // The same store reopened with a capacity of 10.
    let graph = open(&big, 10);
    assert_eq!(snapshot(&graph, &sample), reference);
    let s = graph.stats();
    assert!(s.reloads > 2001, "nodes were evicted and reloaded: {s:?}");
    assert!(s.evictions > 0 && s.resident <= 10, "{s:?}");
    drop(graph);

    // A discovery done with a capacity of 10 (and small batches) stores the same graph.
    let store = Store::open(&small.join("db/ekaci.redb")).expect("store");
    let config = GraphConfig { batch_size: 97, ..GraphConfig::new(10) };
    let graph = Graph::open_with(store, config).expect("graph");
    let stats = graph.discover_blocking(&roots).expect("discover");
    assert!(stats.failed.is_empty());
    assert!(stats.commits > 20, "{stats:?}");
    assert!(graph.stats().resident <= 10);
    assert_eq!(snapshot(&graph, &sample), reference);
    assert!(graph.stats().reloads > 0);
}

#[test]
fn pinned_nodes_stay_resident() {
    let fx = fixture();
    let graph = open(&fx.dir, 3);
    let stats = graph.discover_blocking(&fx.roots).expect("discover");
    let all = graph.closure(&stats.roots.iter().map(|r| r.unwrap()).collect::<Vec<_>>()).unwrap();
    assert!(all.len() > 10);
    let (a, b) = (all[0], all[all.len() / 2]);
    assert_eq!(graph.pin(a).unwrap(), 1);
    assert_eq!(graph.pin(a).unwrap(), 2);
    assert_eq!(graph.pin(b).unwrap(), 1);
    for _ in 0..3 {
        for &id in all.iter().rev() {
            graph.node(id).unwrap();
            graph.dependents(id).unwrap();
        }
    }
    assert!(graph.is_resident(a) && graph.is_resident(b), "pinned nodes survive eviction");
    let s = graph.stats();
    assert!(s.resident <= 3 && s.pinned == 2 && s.evictions > 0, "{s:?}");
    let reloads = s.reloads;
    graph.node(a).unwrap();
    graph.dependents(b).unwrap();
    assert_eq!(graph.stats().reloads, reloads, "pinned nodes are answered from memory");

    // More pinned than the capacity: the bound gives way, nothing pinned is dropped.
    for &id in &all[..6] {
        graph.pin(id).unwrap();
    }
    let s = graph.stats();
    assert_eq!(s.pinned, 7, "{s:?}"); // all[0..6] plus b
    assert_eq!(s.resident, 7);
    assert!(all[..6].iter().all(|&id| graph.is_resident(id)));

    // Unpinning counts down; at zero the node is evictable again.
    assert_eq!(graph.pin_count(a), 3);
    assert!(graph.unpin(a) && graph.unpin(a));
    assert_eq!(graph.pin_count(a), 1);
    for &id in &all[..6] {
        assert!(graph.unpin(id));
    }
    assert!(graph.unpin(b));
    assert!(!graph.unpin(b), "b is no longer pinned");
    assert_eq!(graph.pin_count(a), 0);
    let s = graph.stats();
    assert_eq!(s.pinned, 0);
    assert!(s.resident <= 3, "{s:?}");
}

#[test]
fn missing_and_malformed_derivations_are_reported_by_path() {
    let fx = fixture();
    let graph = open(&fx.dir, 1000);
    let core = fx.nix.keys().find(|p| p.ends_with("-graph-test-core.drv")).unwrap().clone();
    let missing = "/nix/store/00000000000000000000000000000000-graph-test-missing.drv".to_string();
    let gone = "/nix/store/11111111111111111111111111111111-graph-test-gone.drv";
    let dangling = fx.dir.join("dangling.drv");
    std::fs::write(
        &dangling,
        format!(
            r#"Derive([("out","/nix/store/22222222222222222222222222222222-dangling","","")],[("{core}",["out"]),("{gone}",["out"])],[],"x86_64-linux","/bin/sh",[],[])"#
        ),
    )
    .unwrap();
    let above = fx.dir.join("above.drv");
    std::fs::write(
        &above,
        format!(
            r#"Derive([("out","/nix/store/33333333333333333333333333333333-above","","")],[("{}",["out"])],[],"x86_64-linux","/bin/sh",[],[])"#,
            dangling.display()
        ),
    )
    .unwrap();
    let bad = fx.dir.join("bad.drv");
    std::fs::write(&bad, r#"Derive([("out","/nix/store/x","","")],[] oops"#).unwrap();
    let (cyc_a, cyc_b) = (fx.dir.join("cycle-a.drv"), fx.dir.join("cycle-b.drv"));
    for (me, other) in [(&cyc_a, &cyc_b), (&cyc_b, &cyc_a)] {
        std::fs::write(me, format!(r#"Derive([],[("{}",["out"])],[],"s","/bin/sh",[],[])"#, other.display()))
            .unwrap();
    }
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let roots = vec![
        fx.roots[0].clone(),
        missing.clone(),
        s(&above),
        s(&bad),
        "not-a-derivation".to_string(),
        s(&cyc_a),
        fx.roots[1].clone(),
    ];
    let stats = graph.discover_blocking(&roots).expect("discovery itself succeeds");
    assert!(stats.roots[0].is_some() && stats.roots[6].is_some(), "{:?}", stats.failed);
    assert!(stats.roots[1..6].iter().all(Option::is_none), "{:?}", stats.roots);
    let failures: BTreeMap<&str, String> =
        stats.failed.iter().map(|f| (f.root.as_str(), f.error.to_string())).collect();
    assert_eq!(failures.len(), 5, "{failures:#?}");
    let msg = |root: &str| failures.get(root).unwrap_or_else(|| panic!("no failure for {root}")).clone();
    assert!(msg(&missing).starts_with(&format!("cannot read derivation {missing}: ")), "{}", msg(&missing));
    let m = msg(&s(&above));
    assert!(m.contains(gone) && m.starts_with("cannot read derivation"), "{m}");
    let m = msg(&s(&bad));
    assert!(m.contains(&s(&bad)) && m.contains("at byte 40: expected ','"), "{m}");
    assert!(msg("not-a-derivation").contains("not a derivation path"));
    assert!(msg(&s(&cyc_a)).contains("dependency cycle"), "{}", msg(&s(&cyc_a)));
    assert!(matches!(&*stats.failed[0].error, GraphError::Read { .. }));

    // Nothing that depends on a failure is stored; everything else is complete.
    assert_eq!(graph.id_of(&s(&dangling)).unwrap(), None);
    assert_eq!(graph.id_of(&s(&above)).unwrap(), None);
    let closure = graph.closure(&[stats.roots[0].unwrap()]).unwrap();
    assert_eq!(paths(&graph, &closure), requisites(&fx.roots[0]));
    let core_id = graph.id_of(&core).unwrap().unwrap();
    assert!(!paths(&graph, &graph.dependents(core_id).unwrap()).iter().any(|p| p.contains("dangling")));

    // Once the missing input exists, the root completes.
    std::fs::write(
        &dangling,
        format!(r#"Derive([("out","/nix/store/22222222222222222222222222222222-dangling","","")],[("{core}",["out"])],[],"x86_64-linux","/bin/sh",[],[])"#),
    )
    .unwrap();
    let stats = graph.discover_blocking(&[s(&above)]).expect("discover");
    assert!(stats.failed.is_empty(), "{:?}", stats.failed);
    assert_eq!(stats.new_nodes, 2);
    let above_id = stats.roots[0].unwrap();
    let expected: BTreeSet<String> = [s(&above), s(&dangling), core.clone()].into();
    assert_eq!(paths(&graph, &graph.closure(&[above_id]).unwrap()), expected);
    assert!(paths(&graph, &graph.dependents(core_id).unwrap()).contains(&s(&dangling)));
}

#[test]
fn concurrent_discoveries_assign_one_id_per_path() {
    let dir = tmp();
    let roots = instantiate(dir.path(), "layered", &layered_expr(600, 6, 7));
    let graph = open(dir.path(), 50);
    let handles: Vec<_> = (0..3)
        .map(|k| {
            let graph = graph.clone();
            // Overlapping root sets, in different orders.
            let mut mine: Vec<String> = roots.iter().skip(k).step_by(2).cloned().collect();
            if k == 1 {
                mine.reverse();
            }
            std::thread::spawn(move || graph.discover_blocking(&mine).expect("discover"))
        })
        .collect();
    for h in handles {
        assert!(h.join().expect("thread").failed.is_empty());
    }
    assert_eq!(graph.len(), 601, "600 derivations and the core, each stored once");
    let mut seen = BTreeSet::new();
    for id in 0..601 {
        let node = graph.node(DrvId(id)).unwrap();
        assert!(seen.insert(node.path.clone()), "{} stored twice", node.path);
        assert_eq!(graph.id_of(&node.path).unwrap(), Some(DrvId(id)));
        for input in &node.inputs {
            assert!(input.id.0 < id);
            assert!(graph.dependents(input.id).unwrap().contains(&DrvId(id)));
        }
    }
    let nix = show_derivations(&roots[..40]);
    assert_nodes_match_subset(&graph, &nix);
}

/// [`assert_nodes_match`] without the dependents check (the graph knows more dependents than `nix` shows).
fn assert_nodes_match_subset(graph: &Graph, nix: &BTreeMap<String, Value>) {
    for (path, drv) in nix {
        let id = graph.id_of(path).unwrap().expect("known");
        let closure = paths(graph, &graph.closure(&[id]).unwrap());
        assert_eq!(closure, requisites(path));
        let inputs: BTreeSet<String> = drv["inputDrvs"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(paths(graph, &graph.dependencies(id).unwrap()), inputs);
    }
}
