//! Tests of the .drv parser (`eka_ci::nix::drv`) against Nix itself.
//!
//! The derivations of `tests/fixtures/drv/cases.nix` are committed as `<case>.drv` with `nix show-derivation`'s
//! JSON as `<case>.json`, so the oracle tests run without Nix. When `nix-instantiate` is on the PATH the same
//! cases are also instantiated into the real store and checked against a live `nix show-derivation`, and
//! the committed fixtures are checked to be what Nix writes (`DRV_FIXTURES_UPDATE=1` rewrites them).
//! Property tests round-trip arbitrary derivations and feed arbitrary and mutated bytes to the parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use eka_ci::nix::drv::{
    parse_derivation, parse_graph_info, read_derivation, Derivation, DrvErrorKind, DrvOutput, DrvReadError,
};
use proptest::prelude::*;
use serde_json::Value;

const CASES: &[&str] = &[
    "plain",
    "multi",
    "fixed_flat",
    "fixed_recursive",
    "structured",
    "features",
    "prefer_local",
    "no_substitutes",
    "chain",
    "chain2",
    "escapes",
    "source",
    "non_utf8",
    "content_addressed",
];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drv")
}

fn fixture(case: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(format!("{case}.drv"))).unwrap()
}

fn fixture_oracle(case: &str) -> Value {
    oracle_from_bytes(&std::fs::read(fixtures_dir().join(format!("{case}.json"))).unwrap())
}

/// `nix show-derivation` output, its single derivation; Nix prints non-UTF-8 bytes raw, decoded lossily.
fn oracle_from_bytes(json: &[u8]) -> Value {
    let v: Value = serde_json::from_str(&String::from_utf8_lossy(json)).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1);
    obj.values().next().unwrap().clone()
}

// ---------------------------------------------------------------------------------------------------------
// Nix

const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command ca-derivations";

fn nix_available() -> bool {
    let ok = Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("nix-instantiate not found: skipping the tests against the live Nix store");
    }
    ok
}

fn instantiate(case: &str) -> PathBuf {
    let out = Command::new("nix-instantiate")
        .env("NIX_CONFIG", NIX_CONFIG)
        .arg(fixtures_dir().join("cases.nix"))
        .args(["-A", case])
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-instantiate {case}: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn show_derivation_raw(drv: &Path) -> Vec<u8> {
    let out = Command::new("nix")
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["--extra-experimental-features", "nix-command", "show-derivation"])
        .arg(drv)
        .output()
        .unwrap();
    assert!(out.status.success(), "nix show-derivation: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

// ---------------------------------------------------------------------------------------------------------
// Checks

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).map(|s| s.as_str().unwrap().to_string()).unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Every field of `d` equals what `nix show-derivation` reported.
fn assert_matches_oracle(case: &str, d: &Derivation, oracle: &Value) {
    let want_outputs: BTreeMap<String, (String, String, String)> = oracle["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, o)| (n.clone(), (str_of(o, "path"), str_of(o, "hashAlgo"), str_of(o, "hash"))))
        .collect();
    let got_outputs: BTreeMap<String, (String, String, String)> = d
        .outputs
        .iter()
        .map(|o| (o.name.clone(), (o.path.clone(), o.hash_algo.clone(), o.hash.clone())))
        .collect();
    assert_eq!(got_outputs.len(), d.outputs.len(), "{case}: duplicate outputs");
    assert_eq!(got_outputs, want_outputs, "{case}: outputs");

    let want_inputs: BTreeMap<String, Vec<String>> =
        oracle["inputDrvs"].as_object().unwrap().iter().map(|(p, o)| (p.clone(), strings(o))).collect();
    let got_inputs: BTreeMap<String, Vec<String>> = d.input_drvs.iter().cloned().collect();
    assert_eq!(got_inputs, want_inputs, "{case}: inputDrvs");

    assert_eq!(d.input_srcs, strings(&oracle["inputSrcs"]), "{case}: inputSrcs");
    assert_eq!(d.system, oracle["system"].as_str().unwrap(), "{case}: system");
    assert_eq!(d.builder, oracle["builder"].as_str().unwrap(), "{case}: builder");
    assert_eq!(d.args, strings(&oracle["args"]), "{case}: args");
    let want_env: BTreeMap<String, String> = oracle["env"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let got_env: BTreeMap<String, String> = d.env.iter().cloned().collect();
    assert_eq!(got_env, want_env, "{case}: env");
}

/// `parse_graph_info` accepts the same input and agrees with the full parse.
fn assert_graph_info_agrees(bytes: &[u8], d: &Derivation) {
    let g = parse_graph_info(bytes).unwrap();
    let outputs: Vec<(String, String)> = d.outputs.iter().map(|o| (o.name.clone(), o.path.clone())).collect();
    assert_eq!(g.outputs, outputs);
    assert_eq!(g.input_drvs, d.input_drvs);
    assert_eq!(g.system, d.system);
    assert_eq!(g.required_system_features, d.required_system_features());
    assert_eq!(g.prefer_local_build, d.prefer_local_build());
    assert_eq!(g.allow_substitutes, d.allow_substitutes());
    assert_eq!(g.is_fixed_output, d.is_fixed_output());
}

fn pv(p: &str, v: &str) -> Option<(String, String)> {
    Some((p.to_string(), v.to_string()))
}

fn input_outputs<'a>(d: &'a Derivation, name_suffix: &str) -> &'a [String] {
    let hits: Vec<_> = d.input_drvs.iter().filter(|(p, _)| p.ends_with(name_suffix)).collect();
    assert_eq!(hits.len(), 1, "one input ending in {name_suffix}");
    &hits[0].1
}

/// What each case was written to exercise.
fn assert_case_semantics(case: &str, d: &Derivation) {
    let names: Vec<&str> = d.outputs.iter().map(|o| o.name.as_str()).collect();
    let plain_defaults = |d: &Derivation| {
        assert!(d.required_system_features().is_empty());
        assert!(!d.prefer_local_build());
        assert!(d.allow_substitutes());
        assert!(d.structured_attrs().is_none());
    };
    match case {
        "plain" => {
            assert_eq!(names, ["out"]);
            assert!(!d.is_fixed_output());
            assert_eq!(d.pname_version(), pv("plain", "1.0"));
            assert_eq!(d.env_get("name"), Some("plain-1.0"));
            assert_eq!(d.output_path("out"), d.env_get("out"));
            assert_eq!(d.output_path("dev"), None);
            assert_eq!(d.builder, "/bin/sh");
            assert_eq!(d.args, ["-c", "echo x > $out"]);
            plain_defaults(d);
        }
        "multi" => {
            assert_eq!(names, ["dev", "doc", "out"]);
            assert_eq!(d.env_get("outputs"), Some("out dev doc"));
            for n in ["out", "dev", "doc"] {
                assert_eq!(d.output_path(n), d.env_get(n));
            }
            assert!(!d.is_fixed_output());
            assert_eq!(d.pname_version(), pv("multi", ""));
        }
        "fixed_flat" => {
            assert!(d.is_fixed_output());
            assert_eq!(d.outputs[0].hash_algo, "sha256");
            // sha256("hi")
            assert_eq!(d.outputs[0].hash, "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4");
            assert!(!d.outputs[0].path.is_empty());
        }
        "fixed_recursive" => {
            assert!(d.is_fixed_output());
            assert_eq!(d.outputs[0].hash_algo, "r:sha256");
            assert_eq!(d.outputs[0].hash, "2252d4b78c94e8c7ace4e3317b78bdfe64bc8e3970a64eb6d2f7c2a443c0c3fc");
        }
        "structured" => {
            assert_eq!(names, ["lib", "out"]);
            assert!(d.env_get("requiredSystemFeatures").is_none());
            let attrs = d.structured_attrs().unwrap().unwrap();
            assert_eq!(attrs["nested"]["a"], 1);
            assert_eq!(attrs["nested"]["b"], serde_json::json!([true, null, 2.5, "q\"b\\s\nn"]));
            assert_eq!(attrs["nested"]["c"]["d"], "e");
            assert_eq!(d.required_system_features(), ["kvm", "nixos-test"]);
            assert!(d.prefer_local_build());
            assert!(!d.allow_substitutes());
            assert_eq!(d.pname_version(), pv("structured", "2.0"));
        }
        "features" => {
            assert_eq!(d.required_system_features(), ["kvm", "big-parallel"]);
            assert!(!d.prefer_local_build() && d.allow_substitutes());
        }
        "prefer_local" => {
            assert!(d.prefer_local_build() && d.allow_substitutes());
            assert_eq!(d.env_get("preferLocalBuild"), Some("1"));
        }
        "no_substitutes" => {
            assert!(!d.allow_substitutes() && !d.prefer_local_build());
            assert_eq!(d.env_get("allowSubstitutes"), Some(""));
        }
        "chain" => {
            assert_eq!(d.input_drvs.len(), 3);
            assert_eq!(input_outputs(d, "-multi.drv"), ["dev", "doc"]);
            assert_eq!(input_outputs(d, "-plain-1.0.drv"), ["out"]);
            assert_eq!(input_outputs(d, "-fixed-flat.drv"), ["out"]);
            plain_defaults(d);
        }
        "chain2" => {
            assert_eq!(input_outputs(d, "-chain.drv"), ["out"]);
            assert_eq!(input_outputs(d, "-multi.drv"), ["out"]);
        }
        "escapes" => {
            assert_eq!(
                d.env_get("weird"),
                Some("quote\" backslash\\ newline\n tab\t cr\r unicode é ✓ 🦀 end")
            );
            assert_eq!(d.env_get("empty"), Some(""));
            assert_eq!(d.env_get("onlyBackslash"), Some("\\"));
            assert_eq!(d.args, ["-c", "printf '%s\\n' \"$weird\" > $out", "a\tb"]);
        }
        "source" => {
            assert_eq!(d.input_srcs.len(), 1);
            assert!(d.input_srcs[0].starts_with("/nix/store/") && d.input_srcs[0].ends_with("-src.txt"));
            assert_eq!(d.env_get("src"), Some(d.input_srcs[0].as_str()));
        }
        "non_utf8" => {
            let raw = std::fs::read(fixtures_dir().join("latin1.bin")).unwrap();
            let lossy = String::from_utf8_lossy(&raw);
            assert_eq!(d.env_get("bytes"), Some(&*lossy));
            assert_eq!(d.args[2], lossy);
        }
        "content_addressed" => {
            assert_eq!(d.outputs[0].path, "");
            assert_eq!(d.outputs[0].hash_algo, "r:sha256");
            assert_eq!(d.output_path("out"), None);
            assert!(!d.is_fixed_output());
        }
        other => panic!("no semantics for case {other}"),
    }
}

/// All checks of one case's bytes against its oracle.
fn check_case(case: &str, bytes: &[u8], oracle: &Value) {
    let d = parse_derivation(bytes).unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_matches_oracle(case, &d, oracle);
    assert_case_semantics(case, &d);
    assert_graph_info_agrees(bytes, &d);
    if case == "non_utf8" {
        // Lossy by design: the round trip differs exactly where the bytes were not UTF-8.
        assert_ne!(d.to_aterm().as_bytes(), bytes);
        assert_eq!(d.to_aterm(), String::from_utf8_lossy(bytes));
    } else {
        assert_eq!(d.to_aterm().as_bytes(), bytes, "{case}: round trip");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Against Nix

#[test]
fn committed_fixtures_match_nix_oracle() {
    for case in CASES {
        check_case(case, &fixture(case), &fixture_oracle(case));
    }
}

#[test]
fn live_store_derivations_match_nix_show_derivation() {
    if !nix_available() {
        return;
    }
    let update = std::env::var_os("DRV_FIXTURES_UPDATE").is_some();
    for case in CASES {
        let path = instantiate(case);
        let bytes = std::fs::read(&path).unwrap();
        let json = show_derivation_raw(&path);
        check_case(case, &bytes, &oracle_from_bytes(&json));
        assert_eq!(read_derivation(&path).unwrap(), parse_derivation(&bytes).unwrap());
        if update {
            std::fs::write(fixtures_dir().join(format!("{case}.drv")), &bytes).unwrap();
            std::fs::write(fixtures_dir().join(format!("{case}.json")), &json).unwrap();
        } else {
            assert_eq!(bytes, fixture(case), "{case}: committed fixture is stale (DRV_FIXTURES_UPDATE=1)");
        }
    }
}

/// Every derivation in the local store parses and round-trips (UTF-8 ones byte for byte).
#[test]
fn every_store_derivation_round_trips() {
    if !nix_available() {
        return;
    }
    // A long-lived store can hold hundreds of thousands of derivations (benchmarks create 100,000):
    // check an evenly spaced, deterministic sample of at most STORE_SAMPLE of them so the test's time is
    // bounded, and all of them on a small store.
    const STORE_SAMPLE: usize = 3000;
    let mut drvs: Vec<std::path::PathBuf> = std::fs::read_dir("/nix/store")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("drv"))
        .collect();
    drvs.sort();
    let step = drvs.len().div_ceil(STORE_SAMPLE).max(1);
    let mut n = 0;
    for path in drvs.iter().step_by(step) {
        let bytes = std::fs::read(path).unwrap();
        let d = read_derivation(path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.to_aterm(), String::from_utf8_lossy(&bytes), "{}", path.display());
        assert_graph_info_agrees(&bytes, &d);
        n += 1;
    }
    assert!(n >= CASES.len() - 1, "only {n} derivations in the store");
}

// ---------------------------------------------------------------------------------------------------------
// Errors

fn err(bytes: &[u8]) -> String {
    let e = parse_derivation(bytes).unwrap_err();
    assert!(e.offset <= bytes.len());
    assert_eq!(parse_graph_info(bytes).unwrap_err(), e, "graph info reports the same error");
    e.to_string()
}

#[test]
fn truncated_file() {
    let full = fixture("plain");
    assert_eq!(
        err(&full[..full.len() - 1]),
        format!("at byte {}: expected ')', found end of input", full.len() - 1)
    );
    assert_eq!(err(&full[..20]), "at byte 20: expected closing '\"', found end of input");
    assert_eq!(err(b""), "at byte 0: expected 'Derive(', found end of input");
}

#[test]
fn bad_escape_at_end() {
    let text = br#"Derive([],[],[],"x86_64-linux","/bin/sh",["-c","echo \"#;
    assert_eq!(err(text), format!("at byte {}: expected escaped character, found end of input", text.len()));
}

#[test]
fn missing_comma() {
    let text =
        br#"Derive([("out","/nix/store/a-x","","")],[("/nix/store/b.drv",["out" "dev"])],[],"s","b",[],[])"#;
    assert_eq!(err(text), "at byte 67: expected ',' or ']', found ' '");
    let text = br#"Derive([("out","/nix/store/a-x","" "")],[],[],"s","b",[],[])"#;
    assert_eq!(err(text), "at byte 34: expected ',', found ' '");
}

#[test]
fn wrong_keyword() {
    assert_eq!(err(b"Derivation([],[],[],\"s\",\"b\",[],[])"), "at byte 5: expected 'Derive(', found 'a'");
    assert_eq!(err(b"{\"json\": true}"), "at byte 0: expected 'Derive(', found '{'");
    let e = parse_derivation(b"DrvWithVersion(\"xp-dyn-drv\",[],[],[],\"s\",\"b\",[],[])").unwrap_err();
    assert_eq!(e.offset, 0);
    assert!(matches!(e.kind, DrvErrorKind::Unsupported(_)));
    assert!(e.to_string().starts_with("at byte 0: unsupported: DrvWithVersion"), "{e}");
    let e =
        parse_derivation(br#"Derive([],[("/nix/store/a.drv",(["out"],[("out",["x"])]))],[],"s","b",[],[])"#)
            .unwrap_err();
    assert_eq!(e.offset, 31);
    assert!(matches!(e.kind, DrvErrorKind::Unsupported(_)));
}

#[test]
fn non_utf8_in_store_path() {
    let text = b"Derive([(\"out\",\"/nix/store/a-caf\xe9\",\"\",\"\")],[],[],\"s\",\"b\",[],[])";
    assert_eq!(err(text), "at byte 32: output path is not valid UTF-8");
    let text = b"Derive([],[(\"/nix/store/\xff.drv\",[\"out\"])],[],\"s\",\"b\",[],[])";
    assert_eq!(err(text), "at byte 24: input derivation path is not valid UTF-8");
    // Escaped: the error names the string's first byte.
    let text = b"Derive([],[],[\"/nix/store/\\\"\xff\"],\"s\",\"b\",[],[])";
    assert_eq!(err(text), "at byte 15: input source path is not valid UTF-8");
    // In an environment value it is decoded lossily instead.
    let d = parse_derivation(b"Derive([],[],[],\"s\",\"b\",[\"\xff\"],[(\"k\",\"caf\xe9\")])").unwrap();
    assert_eq!(d.args, ["\u{fffd}"]);
    assert_eq!(d.env_get("k"), Some("caf\u{fffd}"));
}

#[test]
fn trailing_data() {
    let mut text = fixture("plain");
    text.push(b'\n');
    assert_eq!(err(&text), format!("at byte {}: expected end of input, found byte 0x0a", text.len() - 1));
}

#[test]
fn read_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.drv");
    let e = read_derivation(&missing).unwrap_err();
    assert!(matches!(e, DrvReadError::Io { .. }));
    assert!(e.to_string().contains("missing.drv"), "{e}");
    let bad = dir.path().join("bad.drv");
    std::fs::write(&bad, b"Derive([").unwrap();
    let e = read_derivation(&bad).unwrap_err();
    assert!(matches!(e, DrvReadError::Parse { .. }));
    assert_eq!(
        e.to_string(),
        format!("malformed derivation {}: at byte 8: expected '(', found end of input", bad.display())
    );
}

// ---------------------------------------------------------------------------------------------------------
// Semantics on hand-written derivations

fn with_env(env: &[(&str, &str)]) -> Derivation {
    Derivation {
        outputs: vec![DrvOutput { name: "out".into(), path: "/nix/store/a-x".into(), ..Default::default() }],
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn attribute_semantics() {
    let d = with_env(&[("requiredSystemFeatures", " kvm\tbig-parallel\n\nbenchmark ")]);
    assert_eq!(d.required_system_features(), ["kvm", "big-parallel", "benchmark"]);
    assert!(!with_env(&[("preferLocalBuild", "true")]).prefer_local_build());
    assert!(!with_env(&[("allowSubstitutes", "0")]).allow_substitutes());
    assert!(with_env(&[("allowSubstitutes", "1")]).allow_substitutes());
    let structured =
        with_env(&[("__json", r#"{"requiredSystemFeatures":["a",1,"b"],"preferLocalBuild":"1"}"#)]);
    assert_eq!(structured.required_system_features(), ["a", "b"]);
    assert!(!structured.prefer_local_build());
    assert!(structured.allow_substitutes());
    let broken = with_env(&[("__json", "{"), ("preferLocalBuild", "1")]);
    assert!(broken.structured_attrs().unwrap().is_err());
    assert!(!broken.prefer_local_build() && broken.allow_substitutes());
    for d in [&structured, &broken] {
        assert_graph_info_agrees(d.to_aterm().as_bytes(), d);
    }
    // Duplicate JSON keys: the last wins, in both parsers.
    let dup = with_env(&[("__json", r#"{"preferLocalBuild":false,"preferLocalBuild":true}"#)]);
    assert!(dup.prefer_local_build());
    assert_graph_info_agrees(dup.to_aterm().as_bytes(), &dup);
    assert_eq!(with_env(&[("name", "foo-bar-1.2-pre")]).pname_version(), pv("foo-bar", "1.2-pre"));
    assert_eq!(with_env(&[("name", "x-")]).pname_version(), pv("x-", ""));
    assert_eq!(with_env(&[]).pname_version(), None);
    let two = Derivation {
        outputs: vec![
            DrvOutput { name: "out".into(), hash: "ab".into(), ..Default::default() },
            DrvOutput { name: "dev".into(), hash: "ab".into(), ..Default::default() },
        ],
        ..Default::default()
    };
    assert!(!two.is_fixed_output());
}

// ---------------------------------------------------------------------------------------------------------
// Properties

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z/\"\\\\\n\r\t(),\\[\\] é-]{0,12}"]
}

fn any_derivation() -> impl Strategy<Value = Derivation> {
    let output = (any_string(), any_string(), any_string(), any_string())
        .prop_map(|(name, path, hash_algo, hash)| DrvOutput { name, path, hash_algo, hash });
    use proptest::collection::vec;
    (
        vec(output, 0..4),
        vec((any_string(), vec(any_string(), 0..3)), 0..4),
        vec(any_string(), 0..3),
        any_string(),
        any_string(),
        vec(any_string(), 0..4),
        vec((any_string(), any_string()), 0..5),
    )
        .prop_map(|(outputs, input_drvs, input_srcs, system, builder, args, env)| Derivation {
            outputs,
            input_drvs,
            input_srcs,
            system,
            builder,
            args,
            env,
        })
}

/// Never panics; an error names an offset within the input; both parsers accept the same inputs.
fn check_any_bytes(bytes: &[u8]) {
    let full = parse_derivation(bytes);
    let graph = parse_graph_info(bytes);
    match (&full, &graph) {
        (Ok(d), Ok(_)) => assert_graph_info_agrees(bytes, d),
        (Err(e), Err(g)) => {
            assert!(e.offset <= bytes.len(), "{e} for {} bytes", bytes.len());
            assert_eq!(e, g);
        }
        _ => panic!("parsers disagree: {full:?} vs {graph:?}"),
    }
}

fn real_texts() -> Vec<Vec<u8>> {
    CASES.iter().map(|c| fixture(c)).collect()
}

#[test]
fn every_truncation_and_deletion_of_real_derivations_errors_cleanly() {
    for text in real_texts() {
        for len in 0..text.len() {
            check_any_bytes(&text[..len]);
            assert!(parse_derivation(&text[..len]).is_err());
            let mut deleted = text.clone();
            deleted.remove(len);
            check_any_bytes(&deleted);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_derivations_round_trip(d in any_derivation()) {
        let text = d.to_aterm();
        let back = parse_derivation(text.as_bytes());
        prop_assert_eq!(back.as_ref(), Ok(&d));
        assert_graph_info_agrees(text.as_bytes(), &d);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_any_bytes(&bytes);
    }

    #[test]
    fn structural_bytes_never_panic(
        bytes in proptest::collection::vec(prop_oneof![
            Just(b'"'), Just(b'\\'), Just(b','), Just(b'('), Just(b')'), Just(b'['), Just(b']'), Just(b'a'),
            Just(0xff),
        ], 0..200)
    ) {
        let mut text = b"Derive(".to_vec();
        text.extend_from_slice(&bytes);
        check_any_bytes(&text);
    }

    #[test]
    fn mutated_real_derivations_never_panic(
        case in 0..CASES.len(), pos in any::<prop::sample::Index>(), byte in any::<u8>(), insert in any::<bool>()
    ) {
        let mut text = fixture(CASES[case]);
        let at = pos.index(text.len());
        if insert { text.insert(at, byte) } else { text[at] = byte }
        check_any_bytes(&text);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Throughput (ignored): DRV_BENCH_DIR=/nix/store cargo test --release --test it drv_parser:: -- --ignored --nocapture

#[test]
#[ignore]
fn bench_parse_throughput() {
    let dir = std::env::var("DRV_BENCH_DIR").unwrap_or_else(|_| "/nix/store".into());
    let texts: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "drv"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let bytes: usize = texts.iter().map(Vec::len).sum();
    assert!(!texts.is_empty(), "no .drv files in {dir}");
    for t in &texts {
        let d = parse_derivation(t).unwrap();
        assert_eq!(d.to_aterm(), String::from_utf8_lossy(t));
        assert_graph_info_agrees(t, &d);
    }
    let run = |label: &str, f: &dyn Fn(&[u8]) -> bool| {
        let start = std::time::Instant::now();
        let mut rounds = 0u32;
        while start.elapsed().as_secs_f64() < 2.0 {
            for t in &texts {
                assert!(f(t));
            }
            rounds += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{label}: {} drvs ({bytes} bytes) x {rounds}: {:.0} MB/s, {:.0} drvs/s",
            texts.len(),
            (bytes as f64 * f64::from(rounds)) / secs / 1e6,
            (texts.len() as f64 * f64::from(rounds)) / secs
        );
    };
    run("parse_derivation", &|t| parse_derivation(t).is_ok());
    run("parse_graph_info", &|t| parse_graph_info(t).is_ok());
}
