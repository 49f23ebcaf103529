//! Tests of the server configuration (`ekaci.toml`): file location, every key, defaults, error messages
//! with file/line/key, unknown-key warnings, environment overrides, credential sources and permission
//! globs. Every test writes real files into a temporary directory and injects the environment.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use eka_ci::config::credentials::SOURCE_NAMES;
use eka_ci::config::{
    default_config_file, load_with_env, CacheType, ConfigError, CredentialSource, LoadedConfig, MergeMethod,
    Permissions, ServerConfig,
};

/// A config file in its own temporary directory.
struct File {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn write(text: &str) -> File {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ekaci.toml");
    std::fs::write(&path, text).expect("write config");
    File { _dir: dir, path }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_env(text: &str, vars: &[(&str, &str)]) -> (File, Result<LoadedConfig, ConfigError>) {
    let f = write(text);
    let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let r = load_with_env(Some(&f.path), &|k| map.get(k).cloned());
    (f, r)
}

fn ok(text: &str) -> LoadedConfig {
    match load_env(text, &[]) {
        (_, Ok(l)) => l,
        (_, Err(e)) => panic!("expected {text:?} to load, got: {e}"),
    }
}

fn ok_env(text: &str, vars: &[(&str, &str)]) -> LoadedConfig {
    match load_env(text, vars) {
        (_, Ok(l)) => l,
        (_, Err(e)) => panic!("expected {text:?} to load, got: {e}"),
    }
}

/// Loads `text`, expects an `Invalid` error, and checks that key, line, message and file are reported,
/// both in the fields and in the one-line `Display`. Returns the `Display`.
fn invalid(text: &str, want_key: &str, want_line: usize, want_msg: &str) -> String {
    let (f, r) = load_env(text, &[]);
    let e = match r {
        Ok(_) => panic!("expected {text:?} to fail with {want_key}: {want_msg}"),
        Err(e) => e,
    };
    let shown = e.to_string();
    match &e {
        ConfigError::Invalid { path, line, column, key, message } => {
            assert_eq!(path, &f.path, "{shown}");
            assert_eq!(key, want_key, "{shown}");
            assert_eq!(*line, want_line, "{shown}");
            assert!(*column >= 1, "{shown}");
            assert!(message.contains(want_msg), "message {message:?} lacks {want_msg:?}");
            assert!(
                shown.starts_with(&format!("{}:{want_line}:{column}: {want_key}: ", f.path.display())),
                "{shown}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(!shown.contains('\n'), "multi-line error: {shown}");
    shown
}

// ---------------------------------------------------------------------------------------------------
// Location and defaults

fn assert_defaults(c: &ServerConfig) {
    assert_eq!(c.web.address, "127.0.0.1");
    assert_eq!(c.web.port, 3030);
    assert!(c.web.allowed_origins.is_empty());
    assert_eq!(c.web.bundle_path, None);
    assert_eq!(c.db_path, None);
    assert_eq!(c.logs_dir, None);
    assert_eq!(c.unix.socket_path, None);
    assert_eq!(c.build_no_output_timeout_seconds, 1200);
    assert_eq!(c.build_max_duration_seconds, 14400);
    assert_eq!(c.graph_lru_capacity, 100_000);
    assert_eq!(
        (c.change_summary.cache_max_age_seconds, c.change_summary.prune_interval_seconds),
        (604_800, 3600)
    );
    assert!(!c.require_approval);
    assert!(!c.merge_queue_require_approval);
    assert_eq!(c.default_merge_method, MergeMethod::Squash);
    assert!(c.security.webhook_secret.is_none());
    assert!(!c.security.allow_insecure_webhooks);
    assert_eq!(c.security.max_hook_timeout_seconds, 300);
    assert!(c.security.audit_hooks);
    assert!(!c.security.allow_private_cache_hosts);
    assert!(c.oauth.client_id.is_none() && c.oauth.client_secret.is_none());
    assert!(c.oauth.redirect_url.is_none() && c.oauth.jwt_secret.is_none());
    assert!(c.github_apps.is_empty() && c.caches.is_empty() && c.remote_builders.is_empty());
    assert!(c.gitea_instances.is_empty() && c.gitlab_instances.is_empty());
    assert_eq!(c.rebuild.max_rebuild_count, 20_000);
    assert!(c.rebuild.skip_paths.is_empty());
}

#[test]
fn no_file_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let xdg = dir.path().to_string_lossy().into_owned();
    let l = load_with_env(None, &|k| (k == "XDG_CONFIG_HOME").then(|| xdg.clone())).expect("defaults");
    assert_eq!(l.source, None);
    assert!(l.warnings.is_empty());
    assert_defaults(&l.config);
    assert_defaults(&ServerConfig::default());
    assert_eq!(l.config.oauth_redirect_url(), "http://127.0.0.1:3030/github/auth/callback");
}

#[test]
fn default_file_is_found_under_xdg_config_home_then_home() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("xdg/ekaci/ekaci.toml");
    std::fs::create_dir_all(cfg.parent().expect("parent")).expect("mkdir");
    std::fs::write(&cfg, "graph_lru_capacity = 7\n").expect("write");
    let xdg = dir.path().join("xdg").to_string_lossy().into_owned();
    let l = load_with_env(None, &|k| (k == "XDG_CONFIG_HOME").then(|| xdg.clone())).expect("load");
    assert_eq!(l.source.as_deref(), Some(cfg.as_path()));
    assert_eq!(l.config.graph_lru_capacity, 7);

    // Without XDG_CONFIG_HOME (or with a relative one, which XDG says to ignore): $HOME/.config.
    let home = dir.path().to_string_lossy().into_owned();
    let env = |k: &str| match k {
        "HOME" => Some(home.clone()),
        "XDG_CONFIG_HOME" => Some("relative/dir".to_string()),
        _ => None,
    };
    assert_eq!(default_config_file(&env), dir.path().join(".config/ekaci/ekaci.toml"));
    let l = load_with_env(None, &env).expect("defaults");
    assert_eq!(l.source, None);
}

#[test]
fn explicit_missing_file_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("nope/ekaci.toml");
    let e = load_with_env(Some(&p), &no_env).expect_err("missing explicit file must fail");
    assert!(
        matches!(&e, ConfigError::Read { path, source } if path == &p && source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(e.to_string().contains(&p.display().to_string()), "{e}");
}

// ---------------------------------------------------------------------------------------------------
// Every key

const FULL: &str = r#"
db_path = "/var/lib/ekaci/db.redb"
logs_dir = "/var/log/ekaci"
build_no_output_timeout_seconds = 600
build_max_duration_seconds = 7200
graph_lru_capacity = 200000
require_approval = true
merge_queue_require_approval = true
default_merge_method = "rebase"

[web]
address = "::1"
port = 8080
allowed_origins = ["https://ci.example.com", "http://localhost:5173", "HTTPS://Upper.Example.com:8443"]
bundle_path = "/srv/ui"

[unix]
socket_path = "/run/ekaci/ekaci.socket"

[security]
webhook_secret = "wh-file-secret"
allow_insecure_webhooks = true
max_hook_timeout_seconds = 600
audit_hooks = false
allow_private_cache_hosts = true

[oauth]
client_id = "Iv1.abc"
client_secret = "oauth-file-secret"
redirect_url = "https://ci.example.com/github/auth/callback"
jwt_secret = "jwt-file-secret"

[rebuild]
max_rebuild_count = 500
skip_paths = ["doc/**", "**/CHANGELOG.md"]

[[github_apps]]
id = "main"
credentials = { file = { path = "/etc/eka-ci/github-app.json" } }

[github_apps.permissions]
allow_all = false
allowed_repos = ["myorg/*"]
allowed_branches = ["main", "release/*"]

[[caches]]
id = "s3"
cache_type = "nix-copy"
destination = "s3://bucket/nix?region=us-east-1"
credentials = { env = { vars = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] } }

[[caches]]
id = "cx"
cache_type = "cachix"
destination = "my-cache"
credentials = { cachix-token = { env_var = "CACHIX_AUTH_TOKEN" } }
permissions = { allow_all = false, allowed_repos = ["company/*"] }

[[caches]]
id = "at"
cache_type = "attic"
destination = "https://attic.example.com/c"
credentials = "none"

[[remote_builders]]
uri = "ssh-ng://builder@10.0.0.5"
systems = ["x86_64-linux", "i686-linux"]
max_jobs = 8
speed_factor = 2
supported_features = ["kvm", "big-parallel"]
mandatory_features = ["kvm"]
ssh_key = "/var/lib/ekaci/id_ed25519"
public_host_key = "c3NoLWVkMjU1MTkgQUFBQQo="

[[remote_builders]]
uri = "ssh://other"
systems = ["aarch64-linux"]

[[gitea_instances]]
domain = "gitea.example.com"
token = "gitea-file-token"

[[gitea_instances]]
domain = "code.company.net"

[[gitlab_instances]]
domain = "gitlab.com"
token = "gitlab-file-token"
"#;

#[test]
fn every_key_is_parsed() {
    let l = ok(FULL);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(c.db_path.as_deref(), Some(Path::new("/var/lib/ekaci/db.redb")));
    assert_eq!(c.db_path(), PathBuf::from("/var/lib/ekaci/db.redb"));
    assert_eq!(c.data_dir(), PathBuf::from("/var/lib/ekaci"));
    assert_eq!(c.logs_dir(), PathBuf::from("/var/log/ekaci"));
    assert_eq!(c.socket_path(), PathBuf::from("/run/ekaci/ekaci.socket"));
    assert_eq!(c.build_no_output_timeout_seconds, 600);
    assert_eq!(c.build_max_duration_seconds, 7200);
    assert_eq!(c.graph_lru_capacity, 200_000);
    assert!(c.require_approval && c.merge_queue_require_approval);
    assert_eq!(c.default_merge_method, MergeMethod::Rebase);
    assert_eq!(c.default_merge_method.as_str(), "rebase");

    assert_eq!(c.web.address, "::1");
    assert_eq!(c.web.port, 8080);
    assert_eq!(c.web.socket_addr().expect("addr").to_string(), "[::1]:8080");
    assert_eq!(
        c.web.allowed_origins,
        ["https://ci.example.com", "http://localhost:5173", "https://upper.example.com:8443"]
    );
    assert_eq!(c.web.bundle_path.as_deref(), Some(Path::new("/srv/ui")));

    let s = &c.security;
    assert_eq!(s.webhook_secret.as_ref().map(|s| s.expose()), Some("wh-file-secret"));
    assert!(s.allow_insecure_webhooks && !s.audit_hooks && s.allow_private_cache_hosts);
    assert_eq!(s.max_hook_timeout_seconds, 600);

    assert_eq!(c.oauth.client_id.as_deref(), Some("Iv1.abc"));
    assert_eq!(c.oauth.client_secret.as_ref().map(|s| s.expose()), Some("oauth-file-secret"));
    assert_eq!(c.oauth.jwt_secret.as_ref().map(|s| s.expose()), Some("jwt-file-secret"));
    assert_eq!(c.oauth_redirect_url(), "https://ci.example.com/github/auth/callback");

    assert_eq!(c.rebuild.max_rebuild_count, 500);
    assert_eq!(c.rebuild.skip_paths, ["doc/**", "**/CHANGELOG.md"]);

    assert_eq!(c.github_apps.len(), 1);
    let app = c.github_app("main").expect("app main");
    assert_eq!(app.credentials, CredentialSource::File { path: "/etc/eka-ci/github-app.json".into() });
    assert_eq!(
        app.permissions,
        Permissions {
            allow_all: false,
            allowed_repos: vec!["myorg/*".into()],
            allowed_branches: vec!["main".into(), "release/*".into()],
        }
    );

    assert_eq!(c.caches.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["s3", "cx", "at"]);
    let s3 = c.cache("s3").expect("s3");
    assert_eq!(s3.cache_type, CacheType::NixCopy);
    assert_eq!(s3.destination, "s3://bucket/nix?region=us-east-1");
    assert_eq!(s3.permissions, Permissions::default());
    assert!(s3.permissions.allow_all);
    let cx = c.cache("cx").expect("cx");
    assert_eq!(cx.cache_type, CacheType::Cachix);
    assert_eq!(cx.credentials, CredentialSource::CachixToken { env_var: "CACHIX_AUTH_TOKEN".into() });
    assert!(!cx.permissions.allow_all);
    assert_eq!(cx.permissions.allowed_repos, ["company/*"]);
    assert_eq!(
        c.cache("at").map(|c| (c.cache_type, c.cache_type.as_str())),
        Some((CacheType::Attic, "attic"))
    );
    assert!(c.cache("missing").is_none());

    let rb = &c.remote_builders[0];
    assert_eq!(rb.uri, "ssh-ng://builder@10.0.0.5");
    assert_eq!(rb.systems, ["x86_64-linux", "i686-linux"]);
    assert_eq!((rb.max_jobs, rb.speed_factor), (8, 2));
    assert_eq!(rb.supported_features, ["kvm", "big-parallel"]);
    assert_eq!(rb.mandatory_features, ["kvm"]);
    assert_eq!(rb.ssh_key.as_deref(), Some(Path::new("/var/lib/ekaci/id_ed25519")));
    assert_eq!(rb.public_host_key.as_deref(), Some("c3NoLWVkMjU1MTkgQUFBQQo="));
    let rb2 = &c.remote_builders[1];
    assert_eq!((rb2.max_jobs, rb2.speed_factor), (1, 1), "documented defaults");
    assert!(rb2.supported_features.is_empty() && rb2.mandatory_features.is_empty() && rb2.ssh_key.is_none());
    assert!(rb2.public_host_key.is_none());

    assert_eq!(c.gitea_instances.len(), 2);
    assert_eq!(c.gitea_instances[0].domain, "gitea.example.com");
    assert_eq!(c.gitea_instances[0].token.as_ref().map(|t| t.expose()), Some("gitea-file-token"));
    assert!(c.gitea_instances[1].token.is_none());
    assert_eq!(c.gitlab_instances[0].domain, "gitlab.com");
    assert_eq!(c.gitlab_instances[0].token.as_ref().map(|t| t.expose()), Some("gitlab-file-token"));
}

#[test]
fn static_dir_is_accepted_for_bundle_path() {
    let c = ok("[web]\nstatic_dir = \"/srv/old\"\n").config;
    assert_eq!(c.web.bundle_path.as_deref(), Some(Path::new("/srv/old")));
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ekaci.example.toml")
}

#[test]
fn example_file_as_shipped_parses_to_the_defaults() {
    let p = example_path();
    let l = load_with_env(Some(&p), &no_env).expect("docs/ekaci.example.toml must load");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_defaults(&l.config);
    assert_eq!(format!("{:?}", l.config), format!("{:?}", ServerConfig::default()));
}

/// Uncomments every commented-out setting (`#key = …`, `#[table]`; prose comments start with `# `).
fn uncomment(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn example_file_documents_only_real_keys_with_their_defaults() {
    let text = std::fs::read_to_string(example_path()).expect("read example");
    let all = uncomment(&text);
    assert!(all.lines().filter(|l| l.starts_with("[[")).count() >= 10, "uncommenting found no tables");
    let l = ok(&all);
    assert!(l.warnings.is_empty(), "example documents unknown keys: {:?}", l.warnings);
    let c = &l.config;
    // The documented defaults, shown uncommented, are the real defaults.
    assert_eq!(c.web.address, "127.0.0.1");
    assert_eq!(c.web.port, 3030);
    assert_eq!(c.build_no_output_timeout_seconds, 1200);
    assert_eq!(c.build_max_duration_seconds, 14400);
    assert_eq!(c.graph_lru_capacity, 100_000);
    assert!(!c.require_approval && !c.merge_queue_require_approval);
    assert_eq!(c.default_merge_method, MergeMethod::Squash);
    assert!(!c.security.allow_insecure_webhooks && c.security.audit_hooks);
    assert!(!c.security.allow_private_cache_hosts);
    assert_eq!(c.security.max_hook_timeout_seconds, 300);
    assert_eq!(c.rebuild.max_rebuild_count, 20_000);
    assert_eq!(c.builds.max_log_bytes, 64 * 1024 * 1024);
    assert_eq!(
        (
            c.retention.jobsets_days,
            c.retention.logs_days,
            c.retention.worktrees_hours,
            c.retention.mirrors_days
        ),
        (30, 30, 24, 14)
    );
    assert_eq!(c.limits.max_jobs_per_repo, 16);
    assert_eq!((c.remote_builders[0].max_jobs, c.remote_builders[0].speed_factor), (1, 1));
    // Every documented key was set.
    assert!(c.db_path.is_some() && c.logs_dir.is_some() && c.unix.socket_path.is_some());
    assert!(!c.web.allowed_origins.is_empty() && c.web.bundle_path.is_some());
    assert!(c.security.webhook_secret.is_some());
    assert!(c.oauth.client_id.is_some() && c.oauth.client_secret.is_some());
    assert!(c.oauth.redirect_url.is_some() && c.oauth.jwt_secret.is_some());
    assert!(!c.rebuild.skip_paths.is_empty());
    assert!(!c.gitea_instances.is_empty() && !c.gitlab_instances.is_empty());
    let rb = &c.remote_builders[0];
    assert!(!rb.supported_features.is_empty() && rb.ssh_key.is_some());
    // Every credential source appears in an example entry.
    let kinds: BTreeSet<&str> = c
        .github_apps
        .iter()
        .map(|a| &a.credentials)
        .chain(c.caches.iter().map(|c| &c.credentials))
        .map(|s| s.kind())
        .collect();
    assert_eq!(kinds, SOURCE_NAMES.into_iter().collect::<BTreeSet<_>>());
}

/// The start of the "Server Configuration" page's full example, verbatim: it puts top-level keys after
/// `[web]`, where TOML makes them `web.*` keys.
const DOCS_FULL_EXAMPLE: &str = r#"# Web server
[web]
address = "127.0.0.1"
port = 3030

# State paths
db_path  = "/var/lib/ekaci/sqlite.db"
logs_dir = "/var/log/ekaci"
"#;

#[test]
fn documentation_examples_are_accepted() {
    // Top-level keys after [web] land in the web table in TOML: the docs' snippet then warns, not fails.
    let l = ok(DOCS_FULL_EXAMPLE);
    assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    assert!(l.warnings[0].contains("unknown key `web.db_path`"), "{:?}", l.warnings);
    assert!(l.warnings[0].contains("top-level key"), "{:?}", l.warnings);
    assert!(l.warnings[1].contains("unknown key `web.logs_dir`"), "{:?}", l.warnings);

    let l = ok(r#"
build_no_output_timeout_seconds = 1200   # 20 minutes
graph_lru_capacity              = 100000 # see lru-cache-tuning.md
require_approval                = false  # require approval for external PRs

# OAuth (optional, for the web UI)
[oauth]
client_id     = "github-oauth-client-id"
client_secret = "github-oauth-client-secret"
redirect_url  = "https://your-server.com/github/auth/callback"
jwt_secret    = "your-jwt-secret"

# Security
[security]
max_hook_timeout_seconds = 300
audit_hooks              = true

# GitHub App credentials
[[github_apps]]
id = "production"
credentials = { vault = {
    address     = "https://vault.example.com:8200",
    secret_path = "eka-ci/github-app",
    token_env   = "VAULT_TOKEN"
} }

[github_apps.permissions]
allow_all     = false
allowed_repos = ["myorg/*"]

# Binary caches
[[caches]]
id           = "s3-cache"
cache_type   = "nix-copy"
destination  = "s3://bucket/path"
credentials  = { aws-secrets-manager = {
    secret_name = "eka-ci/s3-credentials",
    region      = "us-east-1"
} }

[caches.permissions]
allow_all       = false
allowed_repos   = ["myorg/production-*"]
allowed_branches = ["main"]

[[caches]]
id = "prod-s3"
cache_type = "nix-copy"
destination = "s3://company-prod-cache/nix?region=us-east-1"

[caches.credentials]
vault = {
    address = "https://vault.company.internal:8200",
    secret_path = "secret/data/eka-ci/prod-s3",
    token_env = "VAULT_TOKEN",  # Optional, defaults to VAULT_TOKEN
    namespace = "prod"          # Optional, for Vault Enterprise
}

[[caches]]
id = "public-cachix"
cache_type = "cachix"
destination = "my-oss-project"
credentials = { cachix-token = { env_var = "CACHIX_AUTH_TOKEN" } }
permissions = { allow_all = true }

[[github_apps]]
id = "key-file"
credentials = { github-app-key-file = {
    app_id_env = "GITHUB_APP_ID",
    key_file = "/etc/eka-ci/github-app-key.pem"
}}
"#);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    let c = &l.config;
    assert_eq!(
        c.github_apps[0].credentials,
        CredentialSource::Vault {
            address: "https://vault.example.com:8200".into(),
            secret_path: "eka-ci/github-app".into(),
            token_env: "VAULT_TOKEN".into(),
            namespace: None,
        }
    );
    assert_eq!(
        c.cache("s3-cache").map(|c| c.credentials.clone()),
        Some(CredentialSource::AwsSecretsManager {
            secret_name: "eka-ci/s3-credentials".into(),
            region: Some("us-east-1".into())
        })
    );
    assert!(
        matches!(&c.caches[1].credentials, CredentialSource::Vault { namespace: Some(n), .. } if n == "prod")
    );
    assert!(c.cache("public-cachix").is_some_and(|c| c.permissions.allow_all));
    assert_eq!(c.github_apps[1].credentials.kind(), "github-app-key-file");
}

// ---------------------------------------------------------------------------------------------------
// Errors

#[test]
fn range_error_display_names_file_line_column_and_key() {
    let text = "# ekaci\n\n[web]\nport = 3030\n\n[rebuild]\n";
    // Top-level keys must precede tables, so the bad value goes first and the padding is comments.
    let text = format!("#\n#\n#\n#\n#\n#\nbuild_no_output_timeout_seconds = 5\n{text}");
    let (f, r) = load_env(&text, &[]);
    let e = r.expect_err("5 is below the range");
    assert_eq!(
        e.to_string(),
        format!(
            "{}:7:35: build_no_output_timeout_seconds: must be between 30 and 86400, got 5",
            f.path.display()
        )
    );
}

/// `(prefix, key written in the file, reported key, min, max)`; the value goes on line 3.
const RANGED: &[(&str, &str, &str, i64, i64)] = &[
    ("#\n", "build_no_output_timeout_seconds", "build_no_output_timeout_seconds", 30, 86400),
    ("#\n", "build_max_duration_seconds", "build_max_duration_seconds", 60, 604800),
    ("[security]\n", "max_hook_timeout_seconds", "security.max_hook_timeout_seconds", 1, 86400),
    ("[web]\n", "port", "web.port", 0, 65535),
    ("[builds]\n", "max_log_bytes", "builds.max_log_bytes", 65536, 17179869184),
    ("[retention]\n", "jobsets_days", "retention.jobsets_days", 0, 36500),
    ("[retention]\n", "worktrees_hours", "retention.worktrees_hours", 0, 87600),
    ("[limits]\n", "max_jobs_per_repo", "limits.max_jobs_per_repo", 1, 1000),
    ("[git]\n", "timeout_seconds", "git.timeout_seconds", 10, 86400),
    ("[git]\n", "spare_worktrees", "git.spare_worktrees", 0, 16),
];

#[test]
fn ranged_keys_accept_their_bounds_and_reject_just_outside() {
    for &(prefix, key, path, min, max) in RANGED {
        for v in [min, max] {
            let l = ok(&format!("#\n{prefix}{key} = {v}\n"));
            let got = match path {
                "build_no_output_timeout_seconds" => l.config.build_no_output_timeout_seconds as i64,
                "build_max_duration_seconds" => l.config.build_max_duration_seconds as i64,
                "security.max_hook_timeout_seconds" => l.config.security.max_hook_timeout_seconds as i64,
                "builds.max_log_bytes" => l.config.builds.max_log_bytes as i64,
                "retention.jobsets_days" => l.config.retention.jobsets_days as i64,
                "retention.worktrees_hours" => l.config.retention.worktrees_hours as i64,
                "limits.max_jobs_per_repo" => l.config.limits.max_jobs_per_repo as i64,
                "git.timeout_seconds" => l.config.git.timeout_seconds as i64,
                "git.spare_worktrees" => l.config.git.spare_worktrees as i64,
                _ => i64::from(l.config.web.port),
            };
            assert_eq!(got, v, "{path}");
        }
        for v in [min - 1, max + 1] {
            invalid(
                &format!("#\n{prefix}{key} = {v}\n"),
                path,
                3,
                &format!("must be between {min} and {max}, got {v}"),
            );
        }
    }
}

#[test]
fn positive_keys_reject_zero_and_negatives() {
    // Integers beyond 64 bits are range errors too, not type errors.
    invalid(
        "build_max_duration_seconds = 99999999999999999999\n",
        "build_max_duration_seconds",
        1,
        "must be between 60 and 604800, got 99999999999999999999",
    );
    invalid("[web]\nport = -99999999999999999999\n", "web.port", 2, "got -99999999999999999999");
    assert_eq!(ok("graph_lru_capacity = 1").config.graph_lru_capacity, 1);
    invalid("\n\ngraph_lru_capacity = 0\n", "graph_lru_capacity", 3, "must be greater than 0, got 0");
    invalid("graph_lru_capacity = -4\n", "graph_lru_capacity", 1, "must be greater than 0, got -4");
    assert_eq!(ok("[rebuild]\nmax_rebuild_count = 1").config.rebuild.max_rebuild_count, 1);
    invalid(
        "[rebuild]\nmax_rebuild_count = 0\n",
        "rebuild.max_rebuild_count",
        2,
        "must be greater than 0, got 0",
    );
    let rb = "[[remote_builders]]\nuri = \"ssh://b\"\nsystems = [\"x86_64-linux\"]\n";
    let l = ok(&format!("{rb}max_jobs = 1\nspeed_factor = 4294967295\n"));
    assert_eq!(
        (l.config.remote_builders[0].max_jobs, l.config.remote_builders[0].speed_factor),
        (1, u32::MAX)
    );
    invalid(
        &format!("{rb}max_jobs = 0\n"),
        "remote_builders[0].max_jobs",
        4,
        "must be greater than 0, got 0",
    );
    invalid(
        &format!("{rb}speed_factor = 0\n"),
        "remote_builders[0].speed_factor",
        4,
        "must be greater than 0",
    );
    invalid(
        &format!("{rb}speed_factor = 4294967296\n"),
        "remote_builders[0].speed_factor",
        4,
        "got 4294967296",
    );
}

#[test]
fn wrong_types_name_the_full_key_and_line() {
    let text = r#"
[[caches]]
id = "a"
cache_type = "attic"
destination = "https://a"
credentials = "none"

[[caches]]
id = "b"
cache_type = "attic"
destination = "https://b"
credentials = "none"

[caches.permissions]
allow_all = "yes"
"#;
    invalid(text, "caches[1].permissions.allow_all", 15, "expected a boolean");
    invalid("[web]\nport = \"abc\"\n", "web.port", 2, "invalid type: string \"abc\", expected an integer");
    invalid("require_approval = 1\n", "require_approval", 1, "expected a boolean");
    invalid("web = 5\n", "web", 1, "expected a table");
    invalid("[rebuild]\nskip_paths = \"doc\"\n", "rebuild.skip_paths", 2, "expected an array");
    invalid("[[remote_builders]]\nuri = \"ssh://b\"\n", "remote_builders[0]", 1, "missing field `systems`");
    invalid(
        "[[remote_builders]]\nuri = \"ssh://b\"\nsystems = []\n",
        "remote_builders[0].systems",
        3,
        "at least one",
    );
    invalid("[[caches]]\nid = \"\"\n", "caches[0].id", 2, "must not be empty");
}

#[test]
fn bad_enum_values_list_the_choices() {
    invalid(
        "default_merge_method = \"fast-forward\"\n",
        "default_merge_method",
        1,
        "unknown variant `fast-forward`, expected one of `merge`, `squash`, `rebase`",
    );
    invalid(
        "[[caches]]\nid = \"x\"\ncache_type = \"s3\"\ndestination = \"s3://b\"\ncredentials = \"none\"\n",
        "caches[0].cache_type",
        3,
        "unknown variant `s3`, expected one of `nix-copy`, `cachix`, `attic`",
    );
    for (m, want) in
        [("merge", MergeMethod::Merge), ("squash", MergeMethod::Squash), ("rebase", MergeMethod::Rebase)]
    {
        assert_eq!(ok(&format!("default_merge_method = \"{m}\"")).config.default_merge_method, want);
    }
}

#[test]
fn syntax_errors_report_file_line_and_column() {
    let (f, r) = load_env("[web]\nport = 3030\naddress = \"127.0.0.1\n", &[]);
    let e = r.expect_err("unterminated string");
    match &e {
        ConfigError::Syntax { path, line, column, message } => {
            assert_eq!(path, &f.path);
            assert_eq!(*line, 3);
            assert!(*column >= 11, "{e}");
            assert!(!message.is_empty());
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{}:3:", f.path.display())), "{shown}");
    assert!(shown.contains("TOML syntax error"), "{shown}");

    // A key given twice is a syntax error too.
    let (_, r) = load_env("graph_lru_capacity = 1\ngraph_lru_capacity = 2\n", &[]);
    assert!(matches!(r, Err(ConfigError::Syntax { line: 2, .. })), "{r:?}");
}

#[test]
fn bad_origins_are_rejected_with_their_position() {
    for (origin, why) in [
        ("https://ci.example.com/app", "has a path"),
        ("https://ci.example.com/", "has a path"),
        ("https://ci.example.com?x=1", "has a query"),
        ("https://ci.example.com#top", "has a fragment"),
        ("*", "wildcards are not allowed"),
        ("https://*.example.com", "wildcards are not allowed"),
        ("ci.example.com", "no http:// or https:// scheme"),
        ("ftp://ci.example.com", "scheme must be http or https"),
        ("https://ci.example.com:99999", "port"),
        ("https://", "no host"),
    ] {
        let text = format!("[web]\nallowed_origins = [\n  \"https://ok.example.com\",\n  \"{origin}\",\n]\n");
        let shown = invalid(&text, "web.allowed_origins[1]", 4, why);
        assert!(shown.contains(origin), "{shown}");
    }
    invalid("[web]\naddress = \"localhost\"\n", "web.address", 2, "must be an IP address");
    assert_eq!(ok("[web]\naddress = \"0.0.0.0\"").config.web.address, "0.0.0.0");
}

#[test]
fn duplicate_ids_are_errors_naming_both_entries() {
    let caches = r#"[[caches]]
id = "dup"
cache_type = "attic"
destination = "https://a"
credentials = "none"

[[caches]]
id = "other"
cache_type = "attic"
destination = "https://a"
credentials = "none"

[[caches]]
id = "dup"
cache_type = "cachix"
destination = "c"
credentials = "none"
"#;
    let shown = invalid(caches, "caches[2].id", 14, "duplicate cache id `dup`");
    assert!(shown.contains("caches[0] on line 2"), "{shown}");

    let apps = "[[github_apps]]\nid = \"main\"\ncredentials = \"none\"\n[[github_apps]]\nid = \"main\"\ncredentials = \"none\"\n";
    invalid(apps, "github_apps[1].id", 5, "duplicate GitHub App id `main`");
    // A cache and an app may share an id: they are different namespaces.
    ok("[[github_apps]]\nid = \"x\"\ncredentials = \"none\"\n[[caches]]\nid = \"x\"\ncache_type = \"attic\"\ndestination = \"d\"\ncredentials = \"none\"\n");
}

const CACHE_HEAD: &str = "[[caches]]\nid = \"c\"\ncache_type = \"nix-copy\"\ndestination = \"s3://b\"\n";

#[test]
fn bad_credentials_are_rejected_clearly() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "credentials = { ldap = { server = \"x\" } }",
            "caches[0].credentials",
            "unknown credential source `ldap`; expected one of `env`",
        ),
        (
            "credentials = \"password123\"",
            "caches[0].credentials",
            "must be \"instance-metadata\" or \"none\"",
        ),
        ("credentials = 42", "caches[0].credentials", "found an integer"),
        ("credentials = {}", "caches[0].credentials", "empty credentials table"),
        (
            "credentials = { none = {}, env = { vars = [\"A\"] } }",
            "caches[0].credentials",
            "exactly one source",
        ),
        (
            "credentials = { github-app-key = { app_id = \"main\" } }",
            "caches[0].credentials",
            "use `github-app-key-file",
        ),
        (
            "credentials = { vault = { address = \"https://v\" } }",
            "caches[0].credentials.vault",
            "missing field `secret_path`",
        ),
        ("credentials = { env = { vars = [] } }", "caches[0].credentials.env.vars", "at least one"),
        ("credentials = { env = { vars = \"A\" } }", "caches[0].credentials.env.vars", "expected an array"),
        ("credentials = { file = { path = 3 } }", "caches[0].credentials.file.path", "expected a string"),
    ];
    for (line, key, msg) in cases {
        let shown = invalid(&format!("{CACHE_HEAD}{line}\n"), key, 5, msg);
        assert!(!shown.contains("password123"), "{shown}");
    }
    invalid(&format!("{CACHE_HEAD}\n"), "caches[0]", 1, "missing field `credentials`");
}

// ---------------------------------------------------------------------------------------------------
// Unknown keys

#[test]
fn unknown_keys_are_warnings_with_path_file_and_line() {
    let text = r#"graph_lru_capacity = 5
colour = "blue"

[web]
adress = "0.0.0.0"

[[caches]]
id = "c"
cache_type = "attic"
destination = "https://a"
credentials = { vault = { address = "https://v", secret_path = "p", nope = 1 } }
priority = 3

[caches.permissions]
allowed_branch = ["main"]

[frobnicate]
x = 1
"#;
    let (f, r) = load_env(text, &[]);
    let l = r.expect("unknown keys are not errors");
    assert_eq!(l.config.graph_lru_capacity, 5, "known keys still apply");
    let file = f.path.display().to_string();
    let want = [
        (2, "colour"),
        (5, "web.adress"),
        (11, "caches[0].credentials.vault.nope"),
        (12, "caches[0].priority"),
        (15, "caches[0].permissions.allowed_branch"),
        (17, "frobnicate"),
    ];
    assert_eq!(l.warnings.len(), want.len(), "{:?}", l.warnings);
    for (w, (line, key)) in l.warnings.iter().zip(want) {
        assert!(w.starts_with(&format!("{file}:{line}:")), "{w}");
        assert!(w.contains(&format!("unknown key `{key}`")), "{w} lacks {key}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Environment

#[test]
fn environment_overrides_the_file() {
    let text = "graph_lru_capacity = 5\n[security]\nwebhook_secret = \"file\"\n[oauth]\nclient_id = \"file-id\"\nclient_secret = \"file-cs\"\njwt_secret = \"file-jwt\"\n";
    let c = ok(text).config;
    assert_eq!(c.security.webhook_secret.as_ref().map(|s| s.expose()), Some("file"));

    let c = ok_env(
        text,
        &[
            ("WEBHOOK_SECRET", "env-wh"),
            ("EKA_CI_GRAPH_LRU_CAPACITY", "12345"),
            ("JWT_SECRET", "env-jwt"),
            ("GITHUB_OAUTH_CLIENT_ID", "env-id"),
            ("GITHUB_OAUTH_CLIENT_SECRET", "env-cs"),
            ("GITHUB_OAUTH_REDIRECT_URL", "https://x/cb"),
            ("EKA_CI_REQUIRE_APPROVAL", "true"),
        ],
    )
    .config;
    assert_eq!(c.security.webhook_secret.as_ref().map(|s| s.expose()), Some("env-wh"));
    assert_eq!(c.graph_lru_capacity, 12345);
    assert_eq!(c.oauth.jwt_secret.as_ref().map(|s| s.expose()), Some("env-jwt"));
    assert_eq!(c.oauth.client_id.as_deref(), Some("env-id"));
    assert_eq!(c.oauth.client_secret.as_ref().map(|s| s.expose()), Some("env-cs"));
    assert_eq!(c.oauth.redirect_url.as_deref(), Some("https://x/cb"));
    assert!(c.require_approval);

    // GITHUB_WEBHOOK_SECRET is an alias; WEBHOOK_SECRET wins when both are set.
    let c = ok_env(text, &[("GITHUB_WEBHOOK_SECRET", "alias")]).config;
    assert_eq!(c.security.webhook_secret.as_ref().map(|s| s.expose()), Some("alias"));
    let l = ok_env(text, &[("GITHUB_WEBHOOK_SECRET", "alias"), ("WEBHOOK_SECRET", "main")]);
    assert_eq!(l.config.security.webhook_secret.as_ref().map(|s| s.expose()), Some("main"));
    assert!(l.warnings.iter().any(|w| w.contains("GITHUB_WEBHOOK_SECRET")), "{:?}", l.warnings);
    assert!(l.warnings.iter().all(|w| !w.contains("alias") && !w.contains("main")), "{:?}", l.warnings);

    // Empty variables are ignored.
    let c = ok_env(text, &[("WEBHOOK_SECRET", ""), ("JWT_SECRET", "")]).config;
    assert_eq!(c.security.webhook_secret.as_ref().map(|s| s.expose()), Some("file"));
    assert_eq!(c.oauth.jwt_secret.as_ref().map(|s| s.expose()), Some("file-jwt"));

    // Overrides also apply without a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let xdg = dir.path().to_string_lossy().into_owned();
    let env = |k: &str| match k {
        "XDG_CONFIG_HOME" => Some(xdg.clone()),
        "WEBHOOK_SECRET" => Some("no-file".to_string()),
        _ => None,
    };
    let l = load_with_env(None, &env).expect("defaults");
    assert_eq!(l.source, None);
    assert_eq!(l.config.security.webhook_secret.as_ref().map(|s| s.expose()), Some("no-file"));
}

#[test]
fn bad_environment_values_are_errors_naming_the_variable() {
    for bad in ["0", "abc", "-1", "1.5"] {
        let (_, r) = load_env("", &[("EKA_CI_GRAPH_LRU_CAPACITY", bad)]);
        match r {
            Err(ConfigError::Env { var, message }) => {
                assert_eq!(var, "EKA_CI_GRAPH_LRU_CAPACITY");
                assert!(message.contains("positive integer") && message.contains(bad), "{message}");
            }
            other => panic!("{bad}: expected Env error, got {other:?}"),
        }
    }
    let (_, r) = load_env("", &[("EKA_CI_GRAPH_LRU_CAPACITY", "zero")]);
    let shown = r.expect_err("bad").to_string();
    assert_eq!(
        shown,
        "environment variable EKA_CI_GRAPH_LRU_CAPACITY: must be a positive integer, got `zero`"
    );
    let (_, r) = load_env("", &[("EKA_CI_REQUIRE_APPROVAL", "maybe")]);
    assert!(matches!(r, Err(ConfigError::Env { ref var, .. }) if var == "EKA_CI_REQUIRE_APPROVAL"), "{r:?}");
}

#[test]
fn github_app_environment_fallback() {
    let both = [("GITHUB_APP_ID", "123456"), ("GITHUB_APP_PRIVATE_KEY", "-----BEGIN RSA PRIVATE KEY-----")];
    let l = ok_env("", &both);
    assert_eq!(l.config.github_apps.len(), 1);
    let app = &l.config.github_apps[0];
    assert_eq!(app.id, "default");
    assert_eq!(
        app.credentials,
        CredentialSource::Env { vars: vec!["GITHUB_APP_ID".into(), "GITHUB_APP_PRIVATE_KEY".into()] }
    );
    assert!(app.permissions.allow_all);

    // Configured apps win: no fallback app.
    let l = ok_env("[[github_apps]]\nid = \"main\"\ncredentials = \"instance-metadata\"\n", &both);
    assert_eq!(l.config.github_apps.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["main"]);

    // Only one of the two: no app, and a warning saying why.
    let l = ok_env("", &[("GITHUB_APP_ID", "123456")]);
    assert!(l.config.github_apps.is_empty());
    assert!(l.warnings.iter().any(|w| w.contains("GITHUB_APP_PRIVATE_KEY")), "{:?}", l.warnings);
    assert!(ok_env("", &[]).config.github_apps.is_empty());
}

#[test]
fn forge_token_environment_variables() {
    let one = "[[gitea_instances]]\ndomain = \"gitea.example.com\"\n";
    let c = ok_env(one, &[("GITEA_TOKEN", "t1")]).config;
    assert_eq!(c.gitea_instances[0].token.as_ref().map(|t| t.expose()), Some("t1"));

    let c = ok_env("", &[("GITLAB_TOKEN", "glpat-x"), ("GITLAB_DOMAIN", "gitlab.com")]).config;
    assert_eq!(c.gitlab_instances.len(), 1);
    assert_eq!(c.gitlab_instances[0].domain, "gitlab.com");
    assert_eq!(c.gitlab_instances[0].token.as_ref().map(|t| t.expose()), Some("glpat-x"));

    let two = "[[gitea_instances]]\ndomain = \"a.example\"\n[[gitea_instances]]\ndomain = \"b.example\"\n";
    let c = ok_env(two, &[("GITEA_TOKEN", "tb"), ("GITEA_DOMAIN", "b.example")]).config;
    assert!(c.gitea_instances[0].token.is_none());
    assert_eq!(c.gitea_instances[1].token.as_ref().map(|t| t.expose()), Some("tb"));
    let l = ok_env(two, &[("GITEA_TOKEN", "tb")]);
    assert!(l.config.gitea_instances.iter().all(|i| i.token.is_none()));
    assert!(l.warnings.iter().any(|w| w.contains("GITEA_DOMAIN")), "{:?}", l.warnings);

    let (_, r) = load_env("", &[("GITEA_DOMAIN", "https://gitea.example.com")]);
    assert!(matches!(r, Err(ConfigError::Env { ref var, .. }) if var == "GITEA_DOMAIN"), "{r:?}");
    invalid(
        "[[gitea_instances]]\ndomain = \"https://g.example\"\n",
        "gitea_instances[0].domain",
        2,
        "bare domain",
    );
}

// ---------------------------------------------------------------------------------------------------
// Credential sources

#[test]
fn every_credentials_variant_and_spelling() {
    let s = |v: &str| v.to_string();
    let cases: Vec<(&str, CredentialSource)> = vec![
        ("credentials = { env = { vars = [\"A\", \"B\"] } }", CredentialSource::Env { vars: vec![s("A"), s("B")] }),
        ("[caches.credentials]\nenv = { vars = [\"A\"] }", CredentialSource::Env { vars: vec![s("A")] }),
        ("credentials = { file = { path = \"/etc/c.json\" } }", CredentialSource::File { path: "/etc/c.json".into() }),
        ("credentials = { aws-profile = { profile = \"prod\" } }", CredentialSource::AwsProfile { profile: s("prod") }),
        (
            "credentials = { cachix-token = { env_var = \"CACHIX_AUTH_TOKEN\" } }",
            CredentialSource::CachixToken { env_var: s("CACHIX_AUTH_TOKEN") },
        ),
        (
            "credentials = { vault = { address = \"https://v:8200\", secret_path = \"p\" } }",
            CredentialSource::Vault {
                address: s("https://v:8200"),
                secret_path: s("p"),
                token_env: s("VAULT_TOKEN"),
                namespace: None,
            },
        ),
        (
            "[caches.credentials.vault]\naddress = \"https://v\"\nsecret_path = \"p\"\ntoken_env = \"MY_TOKEN\"\nnamespace = \"ns\"",
            CredentialSource::Vault {
                address: s("https://v"),
                secret_path: s("p"),
                token_env: s("MY_TOKEN"),
                namespace: Some(s("ns")),
            },
        ),
        (
            "credentials = { aws-secrets-manager = { secret_name = \"n\" } }",
            CredentialSource::AwsSecretsManager { secret_name: s("n"), region: None },
        ),
        (
            "[caches.credentials.aws-secrets-manager]\nsecret_name = \"n\"\nregion = \"us-east-1\"",
            CredentialSource::AwsSecretsManager { secret_name: s("n"), region: Some(s("us-east-1")) },
        ),
        (
            "credentials = { systemd-credential = { name = \"gh\" } }",
            CredentialSource::SystemdCredential { name: s("gh") },
        ),
        (
            "credentials = { systemd = { credential_id = \"gh\" } }",
            CredentialSource::SystemdCredential { name: s("gh") },
        ),
        ("credentials = \"instance-metadata\"", CredentialSource::InstanceMetadata { provider: None }),
        ("credentials = { instance-metadata = {} }", CredentialSource::InstanceMetadata { provider: None }),
        ("[caches.credentials]\ninstance-metadata = {}", CredentialSource::InstanceMetadata { provider: None }),
        (
            "credentials = { instance-metadata = { provider = \"aws\" } }",
            CredentialSource::InstanceMetadata { provider: Some(s("aws")) },
        ),
        (
            "credentials = { github-app-key-file = { app_id_env = \"GITHUB_APP_ID\", key_file = \"/k.pem\" } }",
            CredentialSource::GitHubAppKeyFile { app_id_env: s("GITHUB_APP_ID"), key_file: "/k.pem".into() },
        ),
        ("credentials = \"none\"", CredentialSource::None),
        ("credentials = { none = {} }", CredentialSource::None),
        ("[caches.credentials]\nnone = {}", CredentialSource::None),
    ];
    let mut kinds = BTreeSet::new();
    for (snippet, want) in cases {
        let l = ok(&format!("{CACHE_HEAD}{snippet}\n"));
        assert!(l.warnings.is_empty(), "{snippet}: {:?}", l.warnings);
        assert_eq!(l.config.caches[0].credentials, want, "{snippet}");
        kinds.insert(want.kind());
        // The same forms are accepted for GitHub Apps.
        let app = snippet.replace("[caches.", "[github_apps.");
        let l = ok(&format!("[[github_apps]]\nid = \"a\"\n{app}\n"));
        assert_eq!(l.config.github_apps[0].credentials, want, "github_apps: {snippet}");
    }
    assert_eq!(kinds, SOURCE_NAMES.into_iter().collect::<BTreeSet<_>>());
}

// ---------------------------------------------------------------------------------------------------
// Permissions

fn perms(allow_all: bool, repos: &[&str], branches: &[&str]) -> Permissions {
    Permissions {
        allow_all,
        allowed_repos: repos.iter().map(|s| s.to_string()).collect(),
        allowed_branches: branches.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn permission_globs() {
    let p = perms(false, &["myorg/*"], &["main", "release/*"]);
    assert!(p.allows("myorg/repo", Some("main")));
    assert!(!p.allows("other/repo", Some("main")));
    assert!(!p.allows("myorg/sub/repo", Some("main")), "`*` never crosses `/`");
    assert!(p.allows("myorg/repo", Some("release/v1.0")));
    assert!(!p.allows("myorg/repo", Some("release-x")), "release/* must not match release-x");
    assert!(!p.allows("myorg/repo", Some("release/a/b")), "release/* must not match release/a/b");
    assert!(!p.allows("myorg/repo", Some("develop")));
    assert!(!p.allows("myorg/repo", None), "a branch restriction refuses events without a branch");

    // `*` alone matches everything; `?` is one character; plain names are exact.
    let star = perms(false, &["*"], &["*"]);
    assert!(star.allows("any/repo", Some("feature/deep/name")));
    let q = perms(false, &["org/repo?"], &["v?"]);
    assert!(q.allows("org/repo1", Some("v2")));
    assert!(!q.allows("org/repo12", Some("v2")));
    assert!(!q.allows("org/repo1", Some("v10")));
    let exact = perms(false, &["org/repo"], &[]);
    assert!(exact.allows("org/repo", Some("anything/at/all")), "empty branch list allows every branch");
    assert!(exact.allows("org/repo", None));
    assert!(!exact.allows("org/repo2", Some("main")));
    assert!(!exact.allows("org/rep", Some("main")));

    // allow_all ignores the lists; an empty repo list with allow_all = false allows nothing.
    assert!(perms(true, &["nothing/matches"], &["nope"]).allows("x/y", Some("z")));
    assert!(Permissions::default().allows("x/y", None));
    assert!(!perms(false, &[], &[]).allows("x/y", Some("main")));

    // Loaded from a file, the default is allow_all = true.
    let c =
        ok(&format!("{CACHE_HEAD}credentials = \"none\"\n[caches.permissions]\nallowed_repos = [\"a/*\"]\n"))
            .config;
    assert!(c.caches[0].permissions.allow_all);
    assert!(c.caches[0].permissions.allows("b/c", Some("main")));
}

// ---------------------------------------------------------------------------------------------------
// Secrets

#[test]
fn secrets_never_appear_in_debug_or_errors() {
    let text = r#"
[security]
webhook_secret = "S3CRET-wh"
[oauth]
client_secret = "S3CRET-cs"
jwt_secret = "S3CRET-jwt"
[[gitea_instances]]
domain = "g.example"
token = "S3CRET-gt"
[[gitlab_instances]]
domain = "gitlab.com"
token = "S3CRET-gl"
"#;
    let l = ok(text);
    let dbg = format!("{:?} {:?}", l.config, l);
    assert!(!dbg.contains("S3CRET"), "{dbg}");
    assert_eq!(l.config.oauth.client_secret.as_ref().map(|s| s.expose()), Some("S3CRET-cs"));

    // Environment-supplied secrets are redacted too.
    let l = ok_env(
        "",
        &[("WEBHOOK_SECRET", "S3CRET-env"), ("GITHUB_APP_PRIVATE_KEY", "S3CRET-key"), ("GITHUB_APP_ID", "1")],
    );
    assert!(!format!("{l:?}").contains("S3CRET"));

    for (bad, key, line) in [
        ("[security]\nwebhook_secret = 987654321\n", "security.webhook_secret", 2),
        ("[security]\nwebhook_secret = [\"S3CRET-in-array\"]\n", "security.webhook_secret", 2),
        ("[oauth]\njwt_secret = { value = \"S3CRET-in-table\" }\n", "oauth.jwt_secret", 2),
        ("[oauth]\nclient_secret = 3.14159\n", "oauth.client_secret", 2),
        ("security = \"S3CRET-as-table\"\n", "security", 1),
        ("oauth = 987654321\n", "oauth", 1),
        (
            "[[gitlab_instances]]\ndomain = \"gitlab.com\"\ntoken = 987654321\n",
            "gitlab_instances[0].token",
            3,
        ),
        ("[security]\nwebhook_secret = \"\"\n", "security.webhook_secret", 2),
    ] {
        let shown = invalid(bad, key, line, "");
        assert!(
            !shown.contains("S3CRET") && !shown.contains("987654321") && !shown.contains("3.14"),
            "{shown}"
        );
        let (_, r) = load_env(bad, &[]);
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("S3CRET") && !dbg.contains("987654321"), "{dbg}");
    }
}

#[test]
fn evaluation_section_defaults_ranges_and_backend() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ekaci.toml");
    std::fs::write(&path, "[evaluation]\n").expect("write");
    let loaded = eka_ci::config::load_with_env(Some(&path), &|_| None).expect("load");
    let e = &loaded.config.evaluation;
    assert_eq!(
        (e.workers, e.max_memory_mib, e.timeout_seconds, e.batch_size, e.concurrent),
        (0, 4096, 3600, 100, 1)
    );
    assert_eq!(e.backend, eka_ci::config::EvalBackendSetting::Auto);

    std::fs::write(&path, "[evaluation]\nbackend = \"nix-eval-jobs\"\nworkers = 4\nmax_memory_mib = 0\n")
        .expect("write");
    let loaded = eka_ci::config::load_with_env(Some(&path), &|_| None).expect("load");
    assert_eq!(loaded.config.evaluation.backend, eka_ci::config::EvalBackendSetting::NixEvalJobs);
    assert_eq!(loaded.config.evaluation.workers, 4);

    std::fs::write(&path, "[evaluation]\n\nconcurrent = 0\n").expect("write");
    let err = eka_ci::config::load_with_env(Some(&path), &|_| None).expect_err("out of range").to_string();
    assert!(
        err.contains(&format!("{}:3:", path.display())) && err.contains("evaluation.concurrent"),
        "{err}"
    );
    assert!(err.contains("between 1 and 64"), "{err}");

    std::fs::write(&path, "[evaluation]\nbackend = \"magic\"\n").expect("write");
    let err = eka_ci::config::load_with_env(Some(&path), &|_| None).expect_err("bad backend").to_string();
    assert!(err.contains("evaluation.backend") && err.contains("magic"), "{err}");
}

#[test]
fn keys_accepted_but_not_acted_on_are_listed_from_the_file_and_the_environment() {
    let keys = |l: &LoadedConfig| l.not_acted_on.iter().map(|k| k.key).collect::<Vec<_>>();
    assert!(ok("graph_lru_capacity = 5\n[web]\nport = 1\n").not_acted_on.is_empty());
    // Written keys count even with their default value; unknown keys stay ordinary warnings.
    let l = ok("default_merge_method = \"squash\"\n[web]\nallowed_origins = []\n[security]\naudit_hooks = true\n[rebuild]\nmax_rebuild_count = 5\n");
    // `default_merge_method` (docs/merge.md), `rebuild.max_rebuild_count` (tests/it/rebuild_policy.rs)
    // and `security.audit_hooks` (docs/caches.md) are acted on: not listed.
    assert_eq!(keys(&l), ["web.allowed_origins"]);
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    // The older name of `web.bundle_path`, and keys set through the environment.
    let l = ok_env(
        "[web]\nstatic_dir = \"/srv\"\n",
        &[("JWT_SECRET", "s3cret"), ("GITEA_DOMAIN", "gitea.example.com")],
    );
    // `oauth` is acted on (the web UI's sign-in, tests/it/ui.rs): not listed.
    assert_eq!(keys(&l), ["web.bundle_path", "gitea_instances"]);
    let lines: Vec<String> = l.not_acted_on.iter().map(|k| k.warning()).collect();
    assert_eq!(lines[0], "web.bundle_path: accepted, not yet acted on: no web UI bundle is served yet");
    assert!(lines.iter().all(|w| !w.contains("s3cret")), "{lines:?}");
}

#[test]
fn evaluation_is_restricted_by_default_and_allowed_uris_are_checked() {
    let defaults = ok("");
    assert!(defaults.config.evaluation.restrict_eval);
    assert!(defaults.config.evaluation.allowed_uris.is_empty());
    let set = ok("[evaluation]\nrestrict_eval = false\nallowed_uris = [\"https://github.com/NixOS/\"]\n");
    assert!(!set.config.evaluation.restrict_eval);
    assert_eq!(set.config.evaluation.allowed_uris, ["https://github.com/NixOS/"]);
    invalid(
        "[evaluation]\nallowed_uris = [\"https://a/ https://b/\"]\n",
        "evaluation.allowed_uris[0]",
        2,
        "whitespace",
    );
    invalid("[evaluation]\nallowed_uris = [\"\"]\n", "evaluation.allowed_uris[0]", 2, "empty");
}

#[test]
fn secret_variables_are_every_env_sourced_credential() {
    let loaded = ok(r#"
[[github_apps]]
id = "a"
credentials = { env = { vars = ["MY_APP_ID", "MY_APP_KEY"] } }

[[caches]]
id = "c"
cache_type = "cachix"
destination = "c"
credentials = { cachix-token = { env_var = "MY_CACHIX" } }
"#);
    let vars = eka_ci::config::secret_env_vars(&loaded.config);
    for v in
        ["WEBHOOK_SECRET", "GITHUB_WEBHOOK_SECRET", "MY_APP_ID", "MY_APP_KEY", "MY_CACHIX", "GITLAB_TOKEN"]
    {
        assert!(vars.iter().any(|x| x == v), "{v} missing from {vars:?}");
    }
    assert!(!vars.iter().any(|x| x == "PATH"), "{vars:?}");
}

#[test]
fn builders_section_defaults_and_ranges() {
    invalid(
        "[[remote_builders]]\nuri = \"ssh://b\"\nsystems = [\"x\"]\npublic_host_key = \"not base64!\"\n",
        "remote_builders[0].public_host_key",
        4,
        "is not a base64-encoded host key",
    );
    let b = ok("").config.builders;
    assert_eq!((b.local_max_jobs, b.fod_max_jobs), (None, 10));
    assert_eq!((b.health_check_interval_seconds, b.health_check_timeout_seconds), (60, 20));
    let b = ok("[builders]\nlocal_max_jobs = 3\nfod_max_jobs = 2\nhealth_check_interval_seconds = 5\n\
                health_check_timeout_seconds = 3\n")
    .config
    .builders;
    assert_eq!((b.local_max_jobs, b.fod_max_jobs), (Some(3), 2));
    assert_eq!((b.health_check_interval_seconds, b.health_check_timeout_seconds), (5, 3));
    for (text, key, range) in [
        ("[builders]\nlocal_max_jobs = 0\n", "builders.local_max_jobs", "between 1 and 1024"),
        ("[builders]\nfod_max_jobs = 1000\n", "builders.fod_max_jobs", "between 1 and 256"),
        (
            "[builders]\nhealth_check_interval_seconds = 0\n",
            "builders.health_check_interval_seconds",
            "between 1 and 86400",
        ),
        (
            "[builders]\nhealth_check_timeout_seconds = 601\n",
            "builders.health_check_timeout_seconds",
            "between 1 and 600",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ekaci.toml");
        std::fs::write(&path, text).expect("write");
        let err = eka_ci::config::load_with_env(Some(&path), &|_| None).expect_err(key).to_string();
        assert!(
            err.contains(&format!("{}:2:", path.display())) && err.contains(key) && err.contains(range),
            "{err}"
        );
    }
}
