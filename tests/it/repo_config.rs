//! Tests for the repository configuration (`.eka-ci/config.json`), on real directories and symlinks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use eka_ci::config::repo::{
    self, glob_matches, ChangeClass, ChangeSetKind, ChangeSetRule, ChangeSets, CheckConfig, FieldError,
    JobConfig, JobSource, PackageChangeSummaryConfig, RebuildImpactConfig, RepoConfig, RepoConfigOutcome,
    SizeCheck, MAX_CONFIG_BYTES,
};
use tempfile::TempDir;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A checkout with a few Nix files and a flake.
fn checkout() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "default.nix", "{ }");
    write(dir.path(), "ci/release.nix", "{ }");
    write(dir.path(), "flake.nix", "{ outputs = _: { }; }");
    dir
}

/// Parses with the default limits, except that checks may bind `/etc/ssl/certs` (as a server listing it
/// in `[checks] allowed_ro_binds` allows).
fn parse_ok(root: &Path, json: &str) -> (RepoConfig, Vec<FieldError>) {
    let limits =
        repo::RepoLimits { allowed_ro_binds: vec![PathBuf::from("/etc/ssl/certs")], ..Default::default() };
    match repo::parse_limited(json.as_bytes(), root, limits) {
        Ok(ok) => ok,
        Err(errors) => panic!("expected a valid configuration, got errors: {errors:#?}"),
    }
}

fn parse_err(root: &Path, json: &str) -> Vec<FieldError> {
    match repo::parse(json.as_bytes(), root) {
        Ok((config, _)) => panic!("expected errors, got {config:#?}"),
        Err(errors) => {
            assert!(!errors.is_empty());
            errors
        }
    }
}

/// The message of the only error at `path`, failing when there is none or several.
fn error_at<'e>(errors: &'e [FieldError], path: &str) -> &'e str {
    let found: Vec<&FieldError> = errors.iter().filter(|e| e.path == path).collect();
    assert_eq!(found.len(), 1, "expected exactly one error at {path:?} in {errors:#?}");
    &found[0].message
}

fn job_file_error(root: &Path, file: &str) -> String {
    let json = serde_json::json!({ "jobs": { "j": { "file": file } } }).to_string();
    let errors = parse_err(root, &json);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    error_at(&errors, "jobs.j.file").to_string()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_field() {
    let dir = checkout();
    let json = r#"{
      "jobs": {
        "hello": {
          "file": "./ci/release.nix",
          "attr_path": "packages.x86_64-linux.hello",
          "allow_eval_failures": true,
          "caches": ["prod-s3", "public-cachix"],
          "size_check": { "max_increase_percent": 12.5, "base_branch": "main" }
        },
        "flake": { "flake": "checks.x86_64-linux" }
      },
      "checks": {
        "lint": {
          "shell": "devShells.x86_64-linux.lint",
          "command": "treefmt --fail-on-change",
          "allow_network": true,
          "ro_bind": ["/etc/ssl/certs"]
        }
      },
      "package_change_summary": { "enabled": false, "max_packages_listed": 7, "include_rebuild_only": true },
      "rebuild_impact": { "enabled": false, "max_top_blast_radius": 9, "compute_full_blast_radius": true },
      "change_sets": { "doc/**": "docs-only", ".github/": "no-op", "flake.lock": "full-rebuild" }
    }"#;
    let (config, warnings) = parse_ok(dir.path(), json);
    assert_eq!(warnings, vec![]);

    let mut jobs = BTreeMap::new();
    jobs.insert(
        "hello".to_string(),
        JobConfig {
            source: JobSource::File {
                file: PathBuf::from("ci/release.nix"),
                attr_path: strs(&["packages", "x86_64-linux", "hello"]),
            },
            allow_eval_failures: true,
            caches: strs(&["prod-s3", "public-cachix"]),
            size_check: Some(SizeCheck {
                max_increase_percent: 12.5,
                base_branch: "main".into(),
                fail_on_increase: false,
            }),
        },
    );
    jobs.insert(
        "flake".to_string(),
        JobConfig {
            source: JobSource::Flake { attr_path: strs(&["checks", "x86_64-linux"]) },
            allow_eval_failures: false,
            caches: vec![],
            size_check: None,
        },
    );
    let mut checks = BTreeMap::new();
    checks.insert(
        "lint".to_string(),
        CheckConfig {
            shell: "devShells.x86_64-linux.lint".into(),
            command: "treefmt --fail-on-change".into(),
            allow_network: true,
            ro_bind: vec![PathBuf::from("/etc/ssl/certs")],
        },
    );
    let expected = RepoConfig {
        jobs,
        checks,
        package_change_summary: PackageChangeSummaryConfig {
            enabled: false,
            max_packages_listed: 7,
            include_rebuild_only: true,
        },
        rebuild_impact: RebuildImpactConfig {
            enabled: false,
            max_top_blast_radius: 9,
            compute_full_blast_radius: true,
        },
        change_sets: ChangeSets {
            rules: vec![
                ChangeSetRule { pattern: ".github/".into(), kind: ChangeSetKind::NoOp },
                ChangeSetRule { pattern: "doc/**".into(), kind: ChangeSetKind::DocsOnly },
                ChangeSetRule { pattern: "flake.lock".into(), kind: ChangeSetKind::FullRebuild },
            ],
        },
    };
    assert_eq!(config, expected);

    // It survives the storage encoding.
    let bytes = postcard::to_allocvec(&config).unwrap();
    let back: RepoConfig = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, config);
}

#[test]
fn defaults() {
    let dir = checkout();
    let (config, warnings) = parse_ok(dir.path(), "{}");
    assert!(warnings.is_empty());
    assert!(config.jobs.is_empty() && config.checks.is_empty() && config.change_sets.is_empty());
    assert_eq!(
        config.package_change_summary,
        PackageChangeSummaryConfig { enabled: true, max_packages_listed: 100, include_rebuild_only: false }
    );
    assert_eq!(
        config.rebuild_impact,
        RebuildImpactConfig { enabled: true, max_top_blast_radius: 5, compute_full_blast_radius: false }
    );

    let json = r#"{
      "jobs": { "a": { "file": "default.nix" } },
      "checks": { "c": { "shell": "shell", "command": "make check" } },
      "package_change_summary": { "max_packages_listed": 3 },
      "rebuild_impact": { "compute_full_blast_radius": true }
    }"#;
    let (config, _) = parse_ok(dir.path(), json);
    assert_eq!(
        config.jobs["a"],
        JobConfig {
            source: JobSource::File { file: "default.nix".into(), attr_path: vec![] },
            allow_eval_failures: false,
            caches: vec![],
            size_check: None,
        }
    );
    assert!(!config.checks["c"].allow_network);
    assert!(config.checks["c"].ro_bind.is_empty());
    assert_eq!(
        config.package_change_summary,
        PackageChangeSummaryConfig { enabled: true, max_packages_listed: 3, include_rebuild_only: false }
    );
    assert_eq!(
        config.rebuild_impact,
        RebuildImpactConfig { enabled: true, max_top_blast_radius: 5, compute_full_blast_radius: true }
    );
}

// --- locating the file -----------------------------------------------------------------------

#[test]
fn load_current_location() {
    let dir = checkout();
    write(dir.path(), ".eka-ci/config.json", r#"{ "jobs": { "a": { "file": "default.nix" } } }"#);
    match repo::load(dir.path()) {
        RepoConfigOutcome::Loaded { config, file, warnings } => {
            assert_eq!(file, PathBuf::from(".eka-ci/config.json"));
            assert!(warnings.is_empty(), "{warnings:#?}");
            assert!(config.jobs.contains_key("a"));
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn load_legacy_location_warns() {
    let dir = checkout();
    write(dir.path(), ".ekaci/config.json", r#"{ "jobs": { "legacy": { "file": "default.nix" } } }"#);
    match repo::load(dir.path()) {
        RepoConfigOutcome::Loaded { config, file, warnings } => {
            assert_eq!(file, PathBuf::from(".ekaci/config.json"));
            assert!(config.jobs.contains_key("legacy"));
            assert_eq!(warnings.len(), 1, "{warnings:#?}");
            assert_eq!(warnings[0].path, "");
            assert!(warnings[0].message.contains("deprecated"), "{}", warnings[0].message);
            assert!(warnings[0].message.contains(".eka-ci/config.json"));
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn current_location_wins_over_legacy() {
    let dir = checkout();
    write(dir.path(), ".eka-ci/config.json", r#"{ "jobs": { "new": { "file": "default.nix" } } }"#);
    write(dir.path(), ".ekaci/config.json", r#"{ "jobs": { "old": { "file": "default.nix" } } }"#);
    match repo::load(dir.path()) {
        RepoConfigOutcome::Loaded { config, file, warnings } => {
            assert_eq!(file, PathBuf::from(".eka-ci/config.json"));
            assert_eq!(config.jobs.keys().collect::<Vec<_>>(), vec!["new"]);
            assert_eq!(warnings.len(), 1, "{warnings:#?}");
            assert!(warnings[0].message.contains("ignored"), "{}", warnings[0].message);
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn legacy_invalid_keeps_deprecation_warning() {
    let dir = checkout();
    write(dir.path(), ".ekaci/config.json", "[]");
    match repo::load(dir.path()) {
        RepoConfigOutcome::Invalid { file, errors, warnings } => {
            assert_eq!(file, PathBuf::from(".ekaci/config.json"));
            assert_eq!(errors.len(), 1);
            assert!(errors[0].message.contains("JSON object"), "{errors:#?}");
            assert!(warnings[0].message.contains("deprecated"));
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn not_found() {
    let dir = checkout();
    assert_eq!(repo::load(dir.path()), RepoConfigOutcome::NotFound);
    fs::create_dir_all(dir.path().join(".eka-ci")).unwrap();
    fs::create_dir_all(dir.path().join(".ekaci")).unwrap();
    assert_eq!(repo::load(dir.path()), RepoConfigOutcome::NotFound);
}

#[test]
fn config_file_must_be_a_file() {
    let dir = checkout();
    fs::create_dir_all(dir.path().join(".eka-ci/config.json")).unwrap();
    match repo::load(dir.path()) {
        RepoConfigOutcome::Invalid { errors, .. } => {
            assert!(errors[0].message.contains("regular file"), "{errors:#?}")
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn config_symlink_escaping_is_rejected() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "config.json", "{}");

    // The file itself is a symlink out.
    let dir = checkout();
    fs::create_dir_all(dir.path().join(".eka-ci")).unwrap();
    symlink(outside.path().join("config.json"), dir.path().join(".eka-ci/config.json")).unwrap();
    match repo::load(dir.path()) {
        RepoConfigOutcome::Invalid { file, errors, .. } => {
            assert_eq!(file, PathBuf::from(".eka-ci/config.json"));
            assert_eq!(errors.len(), 1);
            assert!(errors[0].message.contains("outside the repository"), "{errors:#?}");
        }
        other => panic!("{other:#?}"),
    }

    // The directory is a symlink out (relative, via ..).
    let dir = checkout();
    let depth = dir.path().components().count() - 1;
    let mut up = PathBuf::new();
    for _ in 0..depth {
        up.push("..");
    }
    symlink(up.join(outside.path().strip_prefix("/").unwrap()), dir.path().join(".eka-ci")).unwrap();
    assert!(dir.path().join(".eka-ci/config.json").exists(), "the test symlink must work");
    match repo::load(dir.path()) {
        RepoConfigOutcome::Invalid { errors, .. } => {
            assert!(errors[0].message.contains("outside the repository"), "{errors:#?}")
        }
        other => panic!("{other:#?}"),
    }
}

#[test]
fn config_symlink_inside_is_accepted() {
    let dir = checkout();
    write(dir.path(), "ci/eka.json", r#"{ "jobs": { "a": { "file": "default.nix" } } }"#);
    fs::create_dir_all(dir.path().join(".eka-ci")).unwrap();
    symlink("../ci/eka.json", dir.path().join(".eka-ci/config.json")).unwrap();
    match repo::load(dir.path()) {
        RepoConfigOutcome::Loaded { config, .. } => assert!(config.jobs.contains_key("a")),
        other => panic!("{other:#?}"),
    }
}

// --- size cap ----------------------------------------------------------------------------------

#[test]
fn oversized_file_is_rejected() {
    let dir = checkout();
    let mut big = String::from("{}");
    big.push_str(&" ".repeat(MAX_CONFIG_BYTES as usize - 1)); // one byte over
    assert_eq!(big.len() as u64, MAX_CONFIG_BYTES + 1);
    write(dir.path(), ".eka-ci/config.json", &big);
    match repo::load(dir.path()) {
        RepoConfigOutcome::Invalid { errors, .. } => {
            assert_eq!(errors.len(), 1);
            assert!(errors[0].message.contains("1 MiB"), "{errors:#?}");
            assert!(errors[0].message.contains("1048576"), "{errors:#?}");
        }
        other => panic!("{other:?}"),
    }
    let errors = repo::parse(big.as_bytes(), dir.path()).unwrap_err();
    assert!(errors[0].message.contains("1 MiB"));

    // Exactly at the limit is fine.
    big.pop();
    write(dir.path(), ".eka-ci/config.json", &big);
    assert!(matches!(repo::load(dir.path()), RepoConfigOutcome::Loaded { .. }));
}

// --- JSON and types ----------------------------------------------------------------------------

#[test]
fn malformed_json_reports_line_and_column() {
    let dir = checkout();
    let errors = parse_err(dir.path(), "{\n  \"jobs\": {\n    \"a\": }\n}");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, "");
    assert!(errors[0].message.starts_with("invalid JSON at line 3, column 10:"), "{}", errors[0].message);

    let errors = parse_err(dir.path(), "");
    assert!(errors[0].message.contains("line 1"), "{errors:#?}");
}

#[test]
fn top_level_must_be_an_object() {
    let dir = checkout();
    let errors = parse_err(dir.path(), "[1, 2]");
    assert_eq!(errors, vec![FieldError::new("", "the configuration must be a JSON object, found an array")]);
}

#[test]
fn every_type_error_is_reported_with_its_path() {
    let dir = checkout();
    let json = r#"{
      "jobs": {
        "a": { "file": 3, "allow_eval_failures": "yes", "caches": "prod" },
        "b": { "file": "default.nix", "caches": ["ok", 7], "size_check": { "max_increase_percent": -1 } },
        "c": []
      },
      "checks": { "lint": { "command": 5, "allow_network": 1, "ro_bind": ["relative/path"] } },
      "package_change_summary": { "max_packages_listed": 0, "enabled": null },
      "rebuild_impact": { "enabled": "no", "max_top_blast_radius": 2.5 },
      "change_sets": { "*.md": "docs" }
    }"#;
    let errors = parse_err(dir.path(), json);
    let expected = [
        ("jobs.a.file", "expected a string (a path relative to the repository root), found a number"),
        ("jobs.a.allow_eval_failures", "expected a boolean, found a string"),
        ("jobs.a.caches", "expected an array of cache ids, found a string"),
        ("jobs.b.caches[1]", "expected a string (a cache id), found a number"),
        ("jobs.b.size_check.max_increase_percent", "must be a number greater than or equal to 0"),
        ("jobs.b.size_check.base_branch", "missing required field"),
        ("jobs.c", "expected an object, found an array"),
        ("checks.lint.shell", "missing required field"),
        ("checks.lint.command", "expected a string, found a number"),
        ("checks.lint.allow_network", "expected a boolean, found a number"),
        ("checks.lint.ro_bind[0]", "must be an absolute path"),
        ("package_change_summary.max_packages_listed", "must be at least 1"),
        ("package_change_summary.enabled", "expected a boolean, found null"),
        ("rebuild_impact.enabled", "expected a boolean, found a string"),
        ("rebuild_impact.max_top_blast_radius", "expected a whole number, found a fractional number"),
        ("change_sets[\"*.md\"]", "expected one of \"docs-only\", \"no-op\", \"full-rebuild\""),
    ];
    for (path, message) in expected {
        assert_eq!(error_at(&errors, path), message, "at {path}");
    }
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
}

#[test]
fn change_summary_limits_have_ranges_and_feed_the_summary_settings() {
    let dir = checkout();
    let at_max = r#"{
      "package_change_summary": { "max_packages_listed": 10000, "include_rebuild_only": true },
      "rebuild_impact": { "max_top_blast_radius": 1000, "enabled": false }
    }"#;
    let (config, warnings) = parse_ok(dir.path(), at_max);
    assert!(warnings.is_empty(), "{warnings:?}");
    let settings = eka_ci::summary::Settings::from_repo(&config);
    assert_eq!(
        settings,
        eka_ci::summary::Settings {
            package_changes: true,
            max_packages_listed: 10_000,
            include_rebuild_only: true,
            impact: false,
            max_top_blast_radius: 1000,
            full_blast_radius: false,
        }
    );
    assert_eq!(
        eka_ci::summary::Settings::from_repo(&RepoConfig::default()),
        eka_ci::summary::Settings::default()
    );

    let over = r#"{
      "package_change_summary": { "max_packages_listed": 10001 },
      "rebuild_impact": { "max_top_blast_radius": 1001, "typo": 1 }
    }"#;
    let errors = parse_err(dir.path(), over);
    assert_eq!(error_at(&errors, "package_change_summary.max_packages_listed"), "must be at most 10000");
    assert_eq!(error_at(&errors, "rebuild_impact.max_top_blast_radius"), "must be at most 1000");
    let negative = r#"{ "rebuild_impact": { "max_top_blast_radius": -3 } }"#;
    let errors = parse_err(dir.path(), negative);
    assert_eq!(error_at(&errors, "rebuild_impact.max_top_blast_radius"), "must be at least 1");
}

#[test]
fn unknown_fields_are_warnings_with_paths() {
    let dir = checkout();
    let json = r#"{
      "jbos": {},
      "jobs": { "foo": { "file": "default.nix", "atr_path": "x", "colour": "red" } },
      "checks": { "c": { "shell": "s", "command": "true", "sehll": "x" } },
      "package_change_summary": { "extra": 1 },
      "rebuild_impact": { "enabeld": false },
      "jobs_extra": 1
    }"#;
    let (config, warnings) = parse_ok(dir.path(), json);
    assert!(config.jobs.contains_key("foo"));
    assert!(config.rebuild_impact.enabled, "a misspelt field must not take effect");
    let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "jbos",
            "jobs_extra",
            "jobs.foo.atr_path",
            "jobs.foo.colour",
            "checks.c.sehll",
            "package_change_summary.extra",
            "rebuild_impact.enabeld",
        ]
    );
    let by_path = |p: &str| warnings.iter().find(|w| w.path == p).map(|w| w.message.clone()).unwrap();
    assert_eq!(by_path("jobs.foo.atr_path"), "unknown field (did you mean \"attr_path\"?)");
    assert_eq!(by_path("jobs.foo.colour"), "unknown field");
    assert_eq!(by_path("jbos"), "unknown field (did you mean \"jobs\"?)");
    assert_eq!(
        format!("{}", FieldError::new("jobs.foo.colour", "unknown field")),
        "jobs.foo.colour: unknown field"
    );
}

#[test]
fn caches_are_acted_on_and_ids_the_server_does_not_define_are_errors() {
    let dir = checkout();
    let json = r#"{
      "jobs": {
        "hello": { "file": "default.nix", "caches": ["prod"] },
        "plain": { "file": "default.nix", "caches": ["prod", "nope"] }
      },
      "checks": { "lint": { "shell": "s", "command": "true" } }
    }"#;
    // Without the server's list (the library's default limits), ids are not checked and nothing warns.
    let (config, warnings) = parse_ok(dir.path(), json);
    assert_eq!(config.jobs["hello"].caches, ["prod"]);
    assert!(warnings.is_empty(), "{warnings:?}");
    // With the server's `[[caches]]`, an id it does not define is an error at its path.
    let limits = repo::RepoLimits { known_caches: Some(vec!["prod".into()]), ..Default::default() };
    let errors = repo::parse_limited(json.as_bytes(), dir.path(), limits).expect_err("unknown id");
    assert_eq!(
        error_at(&errors, "jobs.plain.caches[1]"),
        "no cache \"nope\" is defined on this server ([[caches]] of ekaci.toml)"
    );
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

// --- names ---------------------------------------------------------------------------------------

#[test]
fn names_are_validated() {
    let dir = checkout();
    let long = "n".repeat(101);
    let ok_long = "n".repeat(100);
    let json = serde_json::json!({
        "jobs": {
            "": { "file": "default.nix" },
            long.clone(): { "file": "default.nix" },
            ok_long.clone(): { "file": "default.nix" },
            "bad\u{7}name": { "file": "default.nix" },
        },
        "checks": { "tab\tname": { "shell": "s", "command": "c" } }
    })
    .to_string();
    let errors = parse_err(dir.path(), &json);
    assert_eq!(error_at(&errors, "jobs[\"\"]"), "name must not be empty");
    let long_path = format!("jobs[\"{}…\"]", "n".repeat(64));
    assert_eq!(error_at(&errors, &long_path), "name must be at most 100 characters long");
    assert_eq!(error_at(&errors, "jobs[\"bad\\u0007name\"]"), "name must not contain control characters");
    assert_eq!(error_at(&errors, "checks[\"tab\\tname\"]"), "name must not contain control characters");
    assert_eq!(errors.len(), 4, "{errors:#?}");
}

// --- job files -------------------------------------------------------------------------------------

#[test]
fn job_file_path_escapes_are_rejected() {
    let dir = checkout();
    write(dir.path(), "a/x.nix", "{ }");
    assert_eq!(job_file_error(dir.path(), "../x.nix"), "must not contain \"..\" components");
    assert_eq!(
        job_file_error(dir.path(), "/etc/passwd"),
        "must be a path relative to the repository root, not an absolute path"
    );
    assert_eq!(job_file_error(dir.path(), "a/../../x"), "must not contain \"..\" components");
    assert_eq!(job_file_error(dir.path(), "a/../a/x.nix"), "must not contain \"..\" components");
    assert_eq!(job_file_error(dir.path(), "ci\u{0}.nix"), "must not contain NUL characters");
    assert_eq!(job_file_error(dir.path(), ""), "must not be empty");
    assert_eq!(job_file_error(dir.path(), "."), "must name a file inside the repository");
}

#[test]
fn job_file_must_exist_and_be_a_file() {
    let dir = checkout();
    assert_eq!(job_file_error(dir.path(), "missing.nix"), "missing.nix does not exist in the repository");
    assert_eq!(
        job_file_error(dir.path(), "default.nix/x.nix"),
        "default.nix/x.nix does not exist in the repository"
    );
    assert_eq!(job_file_error(dir.path(), "ci"), "names a directory; it must name a Nix file");
}

#[test]
fn symlinks_escaping_the_checkout_are_rejected() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.nix", "{ }");
    let dir = checkout();
    let root = dir.path();
    symlink(outside.path().join("secret.nix"), root.join("evil.nix")).unwrap();
    symlink(outside.path(), root.join("evil-dir")).unwrap();
    symlink(outside.path().join("does-not-exist.nix"), root.join("dangling-out.nix")).unwrap();
    symlink("../../../../../../../../../../../etc/passwd", root.join("climb.nix")).unwrap();
    assert!(root.join("evil.nix").exists(), "the test symlink must work");

    let escapes = "resolves (through a symbolic link) to a location outside the repository";
    assert_eq!(job_file_error(root, "evil.nix"), format!("evil.nix {escapes}"));
    assert_eq!(job_file_error(root, "evil-dir/secret.nix"), format!("evil-dir/secret.nix {escapes}"));
    assert_eq!(job_file_error(root, "climb.nix"), format!("climb.nix {escapes}"));
    // Not "does not exist": the answer must not reveal anything about the server's filesystem.
    assert_eq!(job_file_error(root, "dangling-out.nix"), format!("dangling-out.nix {escapes}"));
}

#[test]
fn symlinks_inside_the_checkout_are_accepted() {
    let dir = checkout();
    let root = dir.path();
    symlink("ci/release.nix", root.join("link.nix")).unwrap();
    symlink("ci", root.join("ci-link")).unwrap();
    fs::create_dir_all(root.join("nested")).unwrap();
    symlink("../default.nix", root.join("nested/up.nix")).unwrap();
    let canonical = fs::canonicalize(root).unwrap();
    symlink(canonical.join("default.nix"), root.join("absolute-inside.nix")).unwrap();
    symlink("missing.nix", root.join("dangling-in.nix")).unwrap();

    let json = r#"{ "jobs": {
        "a": { "file": "link.nix" },
        "b": { "file": "ci-link/release.nix" },
        "c": { "file": "nested/up.nix" },
        "d": { "file": "absolute-inside.nix" }
    } }"#;
    let (config, _) = parse_ok(root, json);
    assert_eq!(
        config.jobs["b"].source,
        JobSource::File { file: PathBuf::from("ci-link/release.nix"), attr_path: vec![] }
    );
    assert_eq!(config.jobs.len(), 4);

    assert_eq!(job_file_error(root, "dangling-in.nix"), "dangling-in.nix does not exist in the repository");
}

#[test]
fn symlink_loops_are_rejected() {
    let dir = checkout();
    symlink("loop-b.nix", dir.path().join("loop-a.nix")).unwrap();
    symlink("loop-a.nix", dir.path().join("loop-b.nix")).unwrap();
    assert_eq!(job_file_error(dir.path(), "loop-a.nix"), "loop-a.nix has too many levels of symbolic links");
}

#[test]
fn attr_paths_are_validated() {
    let dir = checkout();
    let json = r#"{ "jobs": {
        "a": { "file": "default.nix", "attr_path": "" },
        "b": { "file": "default.nix", "attr_path": "a..b" },
        "c": { "file": "default.nix", "attr_path": "a.\"b c\"" },
        "d": { "file": "default.nix", "attr_path": "-f" },
        "e": { "file": "default.nix", "attr_path": ["a"] },
        "ok": { "file": "default.nix", "attr_path": "pkgs.gtk+3._7zip" }
    } }"#;
    let errors = parse_err(dir.path(), json);
    assert_eq!(error_at(&errors, "jobs.a.attr_path"), "attribute path must not be empty");
    assert!(error_at(&errors, "jobs.b.attr_path").contains("empty parts"));
    assert!(error_at(&errors, "jobs.c.attr_path").contains("may only contain"));
    assert!(error_at(&errors, "jobs.d.attr_path").contains("must not start with"));
    assert!(error_at(&errors, "jobs.e.attr_path").starts_with("expected a string"));
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

// --- flake jobs ------------------------------------------------------------------------------------

#[test]
fn flake_job_forms() {
    let dir = checkout();
    let json = r#"{ "jobs": {
        "default": { "flake": true },
        "picked": { "flake": true, "attr_path": "checks.x86_64-linux" },
        "named": { "flake": "packages.x86_64-linux" },
        "file": { "flake": false, "file": "default.nix", "attr_path": "hello" }
    } }"#;
    let (config, _) = parse_ok(dir.path(), json);
    assert_eq!(config.jobs["default"].source, JobSource::Flake { attr_path: strs(&["hydraJobs"]) });
    assert_eq!(
        config.jobs["picked"].source,
        JobSource::Flake { attr_path: strs(&["checks", "x86_64-linux"]) }
    );
    assert_eq!(
        config.jobs["named"].source,
        JobSource::Flake { attr_path: strs(&["packages", "x86_64-linux"]) }
    );
    assert_eq!(
        config.jobs["file"].source,
        JobSource::File { file: "default.nix".into(), attr_path: strs(&["hello"]) }
    );
}

#[test]
fn flake_job_mistakes() {
    let dir = checkout();
    let json = r#"{ "jobs": {
        "both": { "flake": true, "file": "default.nix" },
        "double": { "flake": "checks", "attr_path": "x86_64-linux" },
        "number": { "flake": 3 },
        "empty": { "flake": "" },
        "neither": { "allow_eval_failures": true }
    } }"#;
    let errors = parse_err(dir.path(), json);
    assert!(error_at(&errors, "jobs.both.file").contains("must not be set on a flake job"));
    assert!(error_at(&errors, "jobs.double.attr_path").contains("must not be set when \"flake\" names"));
    assert_eq!(
        error_at(&errors, "jobs.number.flake"),
        "expected a boolean or a string naming the flake output attribute, found a number"
    );
    assert_eq!(error_at(&errors, "jobs.empty.flake"), "attribute path must not be empty");
    assert!(error_at(&errors, "jobs.neither.file").starts_with("missing required field"));
    assert_eq!(errors.len(), 5, "{errors:#?}");

    let no_flake = tempfile::tempdir().unwrap();
    let errors = parse_err(no_flake.path(), r#"{ "jobs": { "f": { "flake": true } } }"#);
    assert_eq!(errors, vec![FieldError::new("jobs.f.flake", "the repository has no flake.nix")]);
}

// --- checks, caches, size checks --------------------------------------------------------------------

#[test]
fn checks_and_caches_details() {
    let dir = checkout();
    let json = r#"{
      "jobs": { "a": { "file": "default.nix", "caches": ["x", "", "x"],
                       "size_check": { "max_increase_percent": 0, "base_branch": "" } } },
      "checks": { "c": { "shell": "s", "command": "  ", "ro_bind": ["/nix/../etc", "/ok", 1, ""] } }
    }"#;
    let errors = parse_err(dir.path(), json);
    assert_eq!(error_at(&errors, "jobs.a.caches[1]"), "cache id must not be empty");
    assert_eq!(error_at(&errors, "jobs.a.size_check.base_branch"), "must not be empty");
    assert_eq!(error_at(&errors, "checks.c.command"), "must not be empty");
    assert_eq!(error_at(&errors, "checks.c.ro_bind[0]"), "must not contain \"..\" components");
    assert_eq!(
        error_at(&errors, "checks.c.ro_bind[1]"),
        "this server does not allow binding this path into checks ([checks] allowed_ro_binds)"
    );
    assert!(error_at(&errors, "checks.c.ro_bind[2]").starts_with("expected a string"));
    assert_eq!(error_at(&errors, "checks.c.ro_bind[3]"), "must not be empty");
    assert_eq!(errors.len(), 7, "{errors:#?}");

    let (config, warnings) =
        parse_ok(dir.path(), r#"{ "jobs": { "a": { "file": "default.nix", "caches": ["x", "y", "x"] } } }"#);
    assert_eq!(config.jobs["a"].caches, strs(&["x", "y"]));
    assert_eq!(warnings, vec![FieldError::new("jobs.a.caches[2]", "duplicate cache id (listed once)")]);
}

// --- change sets -------------------------------------------------------------------------------------

fn change_sets(json: &str) -> ChangeSets {
    let dir = checkout();
    parse_ok(dir.path(), &format!("{{ \"change_sets\": {json} }}")).0.change_sets
}

#[test]
fn change_set_classification() {
    let sets = change_sets(
        r#"{ "README.md": "docs-only", "doc/**/*.md": "docs-only", ".github/": "no-op",
             "flake.lock": "full-rebuild", "nix/overlays/**": "full-rebuild" }"#,
    );
    // Docs only.
    assert_eq!(sets.classify(&["README.md", "doc/guide/intro.md"]), ChangeClass::NoRebuild);
    // docs-only and no-op together still need no rebuild.
    assert_eq!(sets.classify(&["README.md", ".github/workflows/ci.yml"]), ChangeClass::NoRebuild);
    // Mixed with a normal path.
    assert_eq!(sets.classify(&["README.md", "pkgs/hello/default.nix"]), ChangeClass::Normal);
    // full-rebuild wins over everything.
    assert_eq!(sets.classify(&["README.md", "flake.lock"]), ChangeClass::FullRebuild);
    assert_eq!(sets.classify(&["pkgs/x.nix", "nix/overlays/a/b.nix"]), ChangeClass::FullRebuild);
    // Nothing changed, or no rules: normal evaluation.
    assert_eq!(sets.classify(&[]), ChangeClass::Normal);
    assert_eq!(ChangeSets::default().classify(&["README.md"]), ChangeClass::Normal);
    // Anchored at the root: README.md elsewhere is not covered.
    assert_eq!(sets.classify(&["pkgs/README.md"]), ChangeClass::Normal);
    // `.github/` only matches below the directory.
    assert_eq!(sets.kind_of(".github/dependabot.yml"), Some(ChangeSetKind::NoOp));
    assert_eq!(sets.kind_of(".github"), None);

    // A path matched by both a no-rebuild and a full-rebuild rule is a full rebuild.
    let overlap = change_sets(r#"{ "doc/**": "docs-only", "doc/flake-module.nix": "full-rebuild" }"#);
    assert_eq!(overlap.classify(&["doc/flake-module.nix"]), ChangeClass::FullRebuild);
    assert_eq!(overlap.classify(&["doc/x.md"]), ChangeClass::NoRebuild);
}

#[test]
fn glob_semantics() {
    // `*` does not cross `/`.
    assert!(glob_matches("*.md", "README.md"));
    assert!(!glob_matches("*.md", "doc/README.md"));
    assert!(glob_matches("doc/*.md", "doc/a.md"));
    assert!(!glob_matches("doc/*.md", "doc/sub/a.md"));
    // `**` spans any number of segments, including none.
    assert!(glob_matches("**/*.md", "README.md"));
    assert!(glob_matches("**/*.md", "a/b/c/README.md"));
    assert!(glob_matches("doc/**/*.md", "doc/a.md"));
    assert!(glob_matches("doc/**/*.md", "doc/x/y/a.md"));
    assert!(!glob_matches("doc/**/*.md", "src/doc/a.md"));
    assert!(glob_matches("**/CHANGELOG.md", "pkgs/x/CHANGELOG.md"));
    // `?` is exactly one character within a segment.
    assert!(glob_matches("v?.txt", "v1.txt"));
    assert!(!glob_matches("v?.txt", "v10.txt"));
    assert!(!glob_matches("a?b", "a/b"));
    // A pattern naming a directory covers what is inside it; a leading `/` is optional.
    assert!(glob_matches("doc", "doc/a/b.md"));
    assert!(glob_matches("/doc", "doc/a.md"));
    assert!(glob_matches("doc/", "doc/a.md"));
    assert!(!glob_matches("doc/", "doc"));
    assert!(!glob_matches("doc", "docs/a.md"));
    // `*` also matches dotfiles; patterns are case-sensitive.
    assert!(glob_matches("*", ".envrc"));
    assert!(!glob_matches("readme.md", "README.md"));
}

#[test]
fn change_set_patterns_are_validated() {
    let dir = checkout();
    let json = r#"{ "change_sets": {
        "": "no-op", "*.{md,txt}": "docs-only", "[ab].md": "docs-only", "!x": "no-op",
        "../x": "no-op", "/": "no-op", "ok/**": 5
    } }"#;
    let errors = parse_err(dir.path(), json);
    assert_eq!(error_at(&errors, "change_sets[\"\"]"), "pattern must not be empty");
    assert!(error_at(&errors, "change_sets[\"*.{md,txt}\"]").contains("not supported"));
    assert!(error_at(&errors, "change_sets[\"[ab].md\"]").contains("not supported"));
    assert!(error_at(&errors, "change_sets[\"!x\"]").contains("negated"));
    assert!(error_at(&errors, "change_sets[\"../x\"]").contains("\"..\""));
    assert!(error_at(&errors, "change_sets[\"/\"]").contains("at least one path segment"));
    assert!(error_at(&errors, "change_sets[\"ok/**\"]").starts_with("expected one of"));
    assert_eq!(errors.len(), 7, "{errors:#?}");
}

// --- Markdown ----------------------------------------------------------------------------------------

#[test]
fn markdown_escapes_hostile_text() {
    let dir = checkout();
    let hostile = "@everyone `x` <img src=x> [link](https://evil.example) #1\n# Heading";
    let json = serde_json::json!({ "jobs": { hostile: { "file": "../x" } } }).to_string();
    let errors = parse_err(dir.path(), &json);
    // The newline makes the name itself invalid, and the file escapes.
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let md = FieldError::to_markdown_list(&errors);

    assert_eq!(md.lines().count(), 2, "one line per error: {md}");
    assert!(md.starts_with("- **jobs\\[\\\""), "{md}");
    assert!(!md.contains("@everyone"), "mention not broken: {md}");
    assert!(md.contains("\\@&#8203;everyone"), "{md}");
    assert!(!md.contains("#1"), "issue reference not broken: {md}");
    assert!(!md.contains("https://"), "{md}");
    // Every backtick, bracket, parenthesis and angle bracket from user text is escaped.
    for (i, c) in md.char_indices() {
        if matches!(c, '`' | '[' | ']' | '(' | ')' | '<' | '>') {
            assert_eq!(&md[i - 1..i], "\\", "unescaped {c:?} at {i} in {md}");
        }
    }

    let plain = FieldError::to_markdown_list(&[
        FieldError::new("", "whole file"),
        FieldError::new("jobs.a", "bad_value *here*"),
    ]);
    assert_eq!(plain, "- whole file\n- **jobs\\.a**: bad\\_value \\*here\\*\n");

    let many: Vec<FieldError> = (0..150).map(|i| FieldError::new(format!("p{i}"), "m")).collect();
    let md = FieldError::to_markdown_list(&many);
    assert_eq!(md.lines().count(), 101);
    assert!(md.ends_with("- … and 50 more\n"), "{md}");
}

#[test]
fn hostile_input_does_not_panic() {
    let dir = checkout();
    let inputs = [
        "null",
        "\"string\"",
        "{\"jobs\": null}",
        "{\"jobs\": {\"a\": null}}",
        "{\"jobs\": {\"a\": {\"file\": {}}}}",
        "{\"change_sets\": []}",
        "{\"package_change_summary\": {\"max_packages_listed\": 99999999999999999999}}",
        "{\"jobs\": {\"a\": {\"size_check\": {\"max_increase_percent\": 1e308}}}}",
        "\u{feff}{}",
        "{\"a\": \"\\ud800\"}",
    ];
    for input in inputs {
        let _ = repo::parse(input.as_bytes(), dir.path());
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(repo::parse(deep.as_bytes(), dir.path()).is_err());
    assert!(repo::parse(b"\xff\xfe", dir.path()).is_err());
    assert!(repo::parse("\u{feff}{}".as_bytes(), dir.path()).is_ok());
    // A checkout that does not exist cannot confirm any file.
    let errors = parse_err(Path::new("/nonexistent/eka-ci-test"), r#"{"jobs":{"a":{"file":"x.nix"}}}"#);
    assert!(error_at(&errors, "jobs.a.file").contains("not accessible"));
}

#[test]
fn more_jobs_than_max_jobs_per_repo_is_an_error_naming_the_count_and_the_limit() {
    let dir = checkout();
    let jobs = |n: usize| {
        let map: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("j{i}"), serde_json::json!({ "file": "default.nix" }))).collect();
        serde_json::json!({ "jobs": map }).to_string()
    };
    // The default limit is 16.
    let (config, _) = parse_ok(dir.path(), &jobs(16));
    assert_eq!(config.jobs.len(), 16);
    let errors = parse_err(dir.path(), &jobs(17));
    assert_eq!(
        error_at(&errors, "jobs"),
        "17 jobs are declared; this server allows at most 16 ([limits] max_jobs_per_repo)"
    );
    // A server's own limit.
    let limits = repo::RepoLimits { max_jobs: 2, ..Default::default() };
    assert!(repo::parse_limited(jobs(2).as_bytes(), dir.path(), limits.clone()).is_ok());
    let errors = repo::parse_limited(jobs(3).as_bytes(), dir.path(), limits).expect_err("over the limit");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        error_at(&errors, "jobs"),
        "3 jobs are declared; this server allows at most 2 ([limits] max_jobs_per_repo)"
    );
}
