//! nixpkgs' rebuild count, computed the way nixpkgs' own CI does — `nix-env -qaP --out-path` run for real
//! on base and head, attributes whose out paths differ plus added ones — against the change summary's count
//! (`summary::summarize_job`, with the identity step of `nix::eval_identity` after each evaluation): the
//! same number, the same ofborg bucket, and the same attribute names listed on both sides, on a synthetic
//! tree with every kind of alias nix-env treats specially.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{nonce, GitRepo};
use eka_ci::jobset::aliases::JobsetAliases;
use eka_ci::jobset::{AttrOutcome, JobsetId, Jobsets};
use eka_ci::nix::eval_identity::{nix_env_lists_name, parse_nix_env_out_paths};
use eka_ci::summary::{self, Bucket, Settings};

const CONFIG: &str = r#"{ "jobs": { "main": { "file": "default.nix" } } }"#;

/// A nixpkgs-like tree: `callPackage` gives every package its own `override` function, `dontDistribute`
/// makes an `aliases.nix`-style copy (`drv // { meta = … }`), `recurse` marks a package set.
fn tree(nonce: &str, lib_script: &str, body: &str) -> String {
    format!(
        r#"
let
  nonce = "{nonce}";
  mkDrv = name: script: deps: derivation {{
    inherit name nonce deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
  }};
  callPackage = f: args: f args // {{ override = a: callPackage f (args // a); meta = {{ }}; }};
  dontDistribute = drv: drv // {{ meta = drv.meta // {{ hydraPlatforms = [ ]; }}; }};
  recurse = s: s // {{ recurseForDerivations = true; }};
  lib = callPackage ({{ }}: mkDrv "lib-1.0" "{lib_script}" [ ]) {{ }};
  appFn = {{ lib }}: mkDrv "app-1.0" "echo app > $out" [ lib ];
  app = callPackage appFn {{ inherit lib; }};
  x = callPackage ({{ lib }}: mkDrv "x-1.0" "echo x > $out" [ lib ]) {{ inherit lib; }};
  zlib = callPackage ({{ lib }}: mkDrv "zlib-1.0" "echo z > $out" [ lib ]) {{ inherit lib; }};
  leaf = callPackage ({{ }}: mkDrv "leaf-1.0" "echo leaf > $out" [ ]) {{ }};
  nodist = callPackage ({{ lib }}: mkDrv "nodist-1.0" "echo nd > $out" [ lib ]) {{ inherit lib; }}
    // {{ meta = {{ hydraPlatforms = [ ]; }}; }};
in {{
  inherit lib app zlib leaf;
  # the very same set: nix-env lists `lib` only
  libAlias = lib;
  # aliases.nix style, a new set: listed
  libOld = dontDistribute lib;
  # … also when its new `meta` equals the old one (defined elsewhere): listed
  inherit nodist;
  nodistOld = dontDistribute nodist;
  # callPackage twice: two sets, both listed
  app2 = callPackage appFn {{ inherit lib; }};
  # depth first, byte order per level: `a.b` comes before `a-c` (though "a-c" < "a.b" as strings)
  a = recurse {{ b = x; }};
  "a-c" = x;
  # across nesting levels: `pkgs.zlib` ("pkgs" < "zlib") is listed, the top-level `zlib` is not
  pkgs = recurse {{ inherit zlib; leafAgain = leaf; }};
  # a name nix-env never lists (not `[A-Za-z_][A-Za-z0-9_+-]*`), though it rebuilds
  "dotted.name" = callPackage ({{ lib }}: mkDrv "dotted-1.0" "echo dot > $out" [ lib ]) {{ inherit lib; }};
  # not recursed into: never listed
  hidden = {{ inherit app; }};
{body}
}}
"#
    )
}

/// `nix-env -f file -qaP --out-path` in `dir`: attribute → its out paths column.
fn nix_env(dir: &Path, file: &str) -> BTreeMap<String, String> {
    let out = Command::new("nix-env")
        .args(["-f", file, "-qaP", "--out-path"])
        .current_dir(dir)
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("run nix-env");
    assert!(out.status.success(), "nix-env failed: {}", String::from_utf8_lossy(&out.stderr));
    parse_nix_env_out_paths(&String::from_utf8_lossy(&out.stdout))
}

/// The derivation attributes of jobset `id` nix-env lists (by the identity step's result and nix-env's rule
/// for names), sorted, and the identity step's result.
fn listed(jobsets: &Jobsets, id: JobsetId) -> (Vec<String>, JobsetAliases) {
    let aliases = jobsets.aliases(id).expect("read").expect("the identity step ran");
    let hidden = aliases.hidden_map();
    let mut ours = Vec::new();
    jobsets
        .for_each_attr(id, |attr, o| {
            if matches!(o, AttrOutcome::Drv(_)) && !hidden.contains_key(attr) && nix_env_lists_name(attr) {
                ours.push(attr.to_string());
            }
            Ok(())
        })
        .expect("attrs");
    ours.sort();
    (ours, aliases)
}

/// nixpkgs' method: head attributes whose out paths differ from base's, plus added ones.
fn nixpkgs_count(base: &BTreeMap<String, String>, head: &BTreeMap<String, String>) -> u64 {
    head.iter().filter(|(attr, outs)| base.get(*attr) != Some(*outs)).count() as u64
}

#[test]
fn rebuild_count_equals_nix_env_with_every_kind_of_alias() {
    let n = nonce();
    let base_tree = tree(&n, "echo lib > $out", "  leafAlias = leaf;");
    // Head: lib changes (everything but leaf rebuilds), and `leafAlias` becomes a copy: listed on head only,
    // so nix-env's method counts it as added though its out path did not change.
    let head_tree = tree(&n, "echo lib2 > $out", "  leafAlias = dontDistribute leaf;");
    let repo = GitRepo::new();
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(CONFIG)), ("default.nix", Some(&base_tree))]);
    let head = repo.commit("head", &[("default.nix", Some(&head_tree))]);

    let dirs = tempfile::tempdir().expect("tmp");
    let (base_dir, head_dir) = (dirs.path().join("base"), dirs.path().join("head"));
    for (dir, text) in [(&base_dir, &base_tree), (&head_dir, &head_tree)] {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("default.nix"), text).expect("write");
    }
    let (nix_base, nix_head) = (nix_env(&base_dir, "."), nix_env(&head_dir, "."));
    let expected = nixpkgs_count(&nix_base, &nix_head);

    let dir = tempfile::tempdir().expect("tmp");
    let (store, pipeline) = common::pipeline_in(dir.path());
    let report = smol::block_on(pipeline.diff_local(repo.path(), &base, &head, None, &None)).expect("diff");
    let job = report.jobs.first().expect("one job");
    let (b, h) = (job.base.id, job.head.id);
    let jobsets = pipeline.jobsets();

    // The attributes listed are nix-env's on both sides, which names it keeps included.
    for (id, env_list) in [(b, &nix_base), (h, &nix_head)] {
        let (ours, aliases) = listed(jobsets, id);
        assert!(aliases.undecided.is_empty(), "{aliases:?}");
        let theirs: Vec<String> = env_list.keys().cloned().collect();
        assert_eq!(ours, theirs, "hidden: {:?}", aliases.hidden);
    }
    let head_aliases = jobsets.aliases(h).expect("read").expect("ran");
    let hidden: Vec<(&str, &str)> =
        head_aliases.hidden.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(
        hidden,
        vec![("a-c", "a.b"), ("libAlias", "lib"), ("pkgs.leafAgain", "leaf"), ("zlib", "pkgs.zlib")]
    );

    let s = summary::summarize_job(&store, jobsets, pipeline.graph(), b, h, &Settings::default())
        .expect("summary");
    // lib, libOld, app, app2, a.b, pkgs.zlib, nodist, nodistOld, and leafAlias (added in nix-env's view).
    assert_eq!(expected, 9, "nix-env: base {nix_base:#?}\nhead {nix_head:#?}");
    assert_eq!(s.impact.rebuilds, expected);
    assert!(s.impact.aliases_known && s.impact.hidden_aliases == 4, "{:?}", s.impact);
    let linux = s.impact.per_kernel.iter().find(|k| k.kernel == "linux").expect("linux");
    assert_eq!((linux.rebuilds, linux.bucket), (expected, Bucket::of(expected)));
    // The derivation counts stay derivations: lib, app, x, zlib, nodist (app2, libOld and nodistOld are
    // app's, lib's and nodist's).
    assert_eq!(s.impact.changed_drvs, 5);
    assert!(s.impact.must_rebuild >= s.impact.changed_drvs);
    // Package changes are of the listed attributes too: no change is reported for a hidden alias.
    assert!(
        s.changes.iter().all(|c| !["a-c", "libAlias", "pkgs.leafAgain", "zlib"].contains(&c.attr.as_str())),
        "{:?}",
        s.changes
    );
    let md = summary::render(
        &summary::ChangeSummary {
            repo: s.repo.clone(),
            base_sha: base,
            head_sha: head,
            jobs: vec![s],
            sizes: vec![],
        },
        &Settings::default(),
    )
    .markdown;
    assert!(md.contains(&format!("linux {expected} (1-10)")), "{md}");
    assert!(md.contains("4 aliases of an attribute listed before not counted"), "{md}");
}

/// The slice of the real nixpkgs (2020-07) the next test evaluates: a package set (`xorg`, ~200 packages),
/// a set of our own that repeats `libpng` (so nix-env keeps `gtkSet.libpng`, the first in its walk), and
/// `aliases.nix` aliases (`bluezFull`, `bro`, `x11`: listed separately).
const SLICE: &str = r#"let pkgs = import ./. { }; in {
  inherit (pkgs) xorg hello libpng libpng_apng bluez bluezFull zeek bro xlibsWrapper x11 cairo pango;
  gtkSet = pkgs.recurseIntoAttrs { inherit (pkgs) gtk3 gtk2 libpng; };
}
"#;

/// One line of a nixpkgs file replaced (exactly once).
fn edit(root: &Path, file: &str, from: &str, to: &str) -> (String, String) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.matches(from).count(), 1, "{from:?} in {file}");
    let edited = text.replacen(from, to, 1);
    std::fs::write(&path, &edited).expect("write");
    (text, edited)
}

#[test]
fn rebuild_count_equals_nix_env_on_a_slice_of_real_nixpkgs() {
    // Next to the repository (../shared, as the bench scripts expect it), or where NIXPKGS_TARBALL says.
    let tarball = std::env::var_os("NIXPKGS_TARBALL").map(std::path::PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/nixpkgs/nixpkgs-2020-07.tar.xz")
    });
    assert!(tarball.is_file(), "{} is missing", tarball.display());
    let repo = GitRepo::new();
    let status =
        Command::new("tar").arg("-xJf").arg(&tarball).arg("-C").arg(repo.path()).status().expect("tar");
    assert!(status.success());
    let config = r#"{ "jobs": { "slice": { "file": "nixpkgs/slice.nix" } } }"#;
    let base =
        repo.commit("base", &[(".eka-ci/config.json", Some(config)), ("nixpkgs/slice.nix", Some(SLICE))]);
    let tree = repo.path().join("nixpkgs");
    let slice = |dir: &Path| nix_env(dir, "slice.nix");
    let nix_base = slice(&tree);
    // A leaf change, then (from base) a change under hundreds of packages: xorgproto.
    let hello = "pkgs/applications/misc/hello/default.nix";
    let (original, _) =
        edit(&tree, hello, "  pname = \"hello\";\n", "  pname = \"hello\";\n  postInstall = \"true\";\n");
    let leaf = repo.commit("leaf", &[]);
    let nix_leaf = slice(&tree);
    std::fs::write(tree.join(hello), original).expect("restore");
    let xorg = "pkgs/servers/x11/xorg/default.nix";
    edit(
        &tree,
        xorg,
        "    name = \"xorgproto-2019.1\";\n",
        "    name = \"xorgproto-2019.1\";\n    postInstall = \"true\";\n",
    );
    let deep = repo.commit("deep", &[]);
    let nix_deep = slice(&tree);

    let dir = tempfile::tempdir().expect("tmp");
    let (store, pipeline) = common::pipeline_in(dir.path());
    let mut counts = Vec::new();
    for (head, nix_head) in [(&leaf, &nix_leaf), (&deep, &nix_deep)] {
        let report =
            smol::block_on(pipeline.diff_local(repo.path(), &base, head, None, &None)).expect("diff");
        let job = report.jobs.first().expect("one job");
        let (b, h) = (job.base.id, job.head.id);
        let jobsets = pipeline.jobsets();
        for (id, env_list) in [(b, &nix_base), (h, nix_head)] {
            let (ours, aliases) = listed(jobsets, id);
            assert_eq!(aliases.hidden_map().get("libpng"), Some(&"gtkSet.libpng"), "{aliases:?}");
            let theirs: Vec<String> = env_list.keys().cloned().collect();
            assert_eq!(ours, theirs, "hidden: {:?}", aliases.hidden);
        }
        let s = summary::summarize_job(&store, jobsets, pipeline.graph(), b, h, &Settings::default())
            .expect("summary");
        let expected = nixpkgs_count(&nix_base, nix_head);
        let linux = s.impact.per_kernel.iter().find(|k| k.kernel == "linux").expect("linux");
        assert_eq!(
            (s.impact.rebuilds, linux.rebuilds, linux.bucket),
            (expected, expected, Bucket::of(expected))
        );
        counts.push(expected);
    }
    assert_eq!(counts[0], 1, "the leaf change rebuilds hello alone");
    assert!(counts[1] > 100, "xorgproto is under hundreds of packages: {}", counts[1]);
}
