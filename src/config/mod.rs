//! Server configuration (`ekaci.toml`): where it is found, its schema, defaults, validation and
//! environment overrides.
//!
//! This module owns turning a file plus the environment into a [`ServerConfig`]; it must never open
//! sockets, databases or anything else (the daemon does that with the values decided here).
//!
//! * Location: `--config-file PATH` (must exist), else `$XDG_CONFIG_HOME/ekaci/ekaci.toml` if it exists,
//!   else the embedded defaults ([`ServerConfig::default`]).
//! * Errors name the file, the line and column, and the dotted key (`caches[1].permissions.allow_all`);
//!   secret values never appear in them.
//! * Unknown keys are warnings (the NixOS module's settings are freeform), returned in
//!   [`LoadedConfig::warnings`].
//! * The environment is read only through the `env` closure given to [`load_with_env`].
//!
//! The user-facing reference is `docs/configuration.md`; `docs/ekaci.example.toml` lists every key.

pub mod credentials;
pub mod glob;
pub mod repo;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::secret::Secret;

pub use credentials::CredentialSource;
pub use glob::Permissions;

/// The whole server configuration, with every default applied.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// `[web]`: the HTTP server.
    pub web: WebConfig,
    /// The database file; `None` means `$XDG_DATA_HOME/ekaci/ekaci.redb` (see [`ServerConfig::db_path`]).
    pub db_path: Option<PathBuf>,
    /// Build log directory; `None` means `$XDG_DATA_HOME/ekaci/build-logs`.
    pub logs_dir: Option<PathBuf>,
    /// `[unix]`: the control socket.
    pub unix: UnixConfig,
    /// A build printing nothing for this long is killed (30..=86400, default 1200).
    #[serde(deserialize_with = "de::ranged_u64::<_, 30, 86400>")]
    pub build_no_output_timeout_seconds: u64,
    /// Wall-clock cap of one build (60..=604800, default 14400).
    #[serde(deserialize_with = "de::ranged_u64::<_, 60, 604800>")]
    pub build_max_duration_seconds: u64,
    /// Nodes kept by the in-memory derivation-graph LRU (> 0, default 100000).
    #[serde(deserialize_with = "de::positive_usize")]
    pub graph_lru_capacity: usize,
    /// Hold builds of pull requests from external authors until a maintainer approves.
    pub require_approval: bool,
    /// Hold merge-queue builds until approved.
    pub merge_queue_require_approval: bool,
    /// Merge method of the `@eka-ci merge` command (default `squash`).
    pub default_merge_method: MergeMethod,
    /// `[security]`.
    pub security: SecurityConfig,
    /// `[oauth]`: GitHub OAuth for the web UI.
    pub oauth: OAuthConfig,
    /// `[[github_apps]]`, in file order (ids are unique).
    pub github_apps: Vec<GitHubAppConfig>,
    /// `[[caches]]`, in file order (ids are unique).
    pub caches: Vec<CacheConfig>,
    /// `[[remote_builders]]`: Nix remote build machines.
    pub remote_builders: Vec<RemoteBuilderConfig>,
    /// More remote build machines, from a file in Nix's machines format (e.g. `/etc/nix/machines`); an
    /// eka-ci extension, read at start-up.
    pub machines_file: Option<PathBuf>,
    /// `[[gitea_instances]]`.
    pub gitea_instances: Vec<ForgeInstanceConfig>,
    /// `[[gitlab_instances]]`.
    pub gitlab_instances: Vec<ForgeInstanceConfig>,
    /// `[rebuild]`: rebuild-detection limits.
    pub rebuild: RebuildConfig,
    /// `[evaluation]`: bounds of the evaluator (an eka-ci extension of the upstream schema).
    pub evaluation: EvaluationConfig,
    /// `[change_summary]`: the change-summary cache (an eka-ci extension of the upstream schema).
    pub change_summary: ChangeSummaryConfig,
    /// `[github]`: how the server talks to GitHub (an eka-ci extension of the upstream schema).
    pub github: GitHubConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            web: WebConfig::default(),
            db_path: None,
            logs_dir: None,
            unix: UnixConfig::default(),
            build_no_output_timeout_seconds: 1200,
            build_max_duration_seconds: 14400,
            graph_lru_capacity: 100_000,
            require_approval: false,
            merge_queue_require_approval: false,
            default_merge_method: MergeMethod::default(),
            security: SecurityConfig::default(),
            oauth: OAuthConfig::default(),
            github_apps: Vec::new(),
            caches: Vec::new(),
            remote_builders: Vec::new(),
            machines_file: None,
            gitea_instances: Vec::new(),
            gitlab_instances: Vec::new(),
            rebuild: RebuildConfig::default(),
            evaluation: EvaluationConfig::default(),
            change_summary: ChangeSummaryConfig::default(),
            github: GitHubConfig::default(),
        }
    }
}

/// `[web]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct WebConfig {
    /// Bind address; always a valid IPv4 or IPv6 address once loaded (default `127.0.0.1`).
    #[serde(deserialize_with = "de::ip_address")]
    pub address: String,
    /// TCP port (default 3030; 0 picks a free port).
    #[serde(deserialize_with = "de::port")]
    pub port: u16,
    /// CORS allow-list: full `http://` / `https://` origins (lower-cased), empty = no cross-origin requests.
    #[serde(deserialize_with = "de::origins")]
    pub allowed_origins: Vec<String>,
    /// A pre-built web UI bundle to serve (`static_dir` is accepted as an older name).
    #[serde(alias = "static_dir")]
    pub bundle_path: Option<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { address: "127.0.0.1".into(), port: 3030, allowed_origins: vec![], bundle_path: None }
    }
}

impl WebConfig {
    /// The socket address to bind: `address:port`.
    pub fn socket_addr(&self) -> Result<SocketAddr, std::net::AddrParseError> {
        let ip: IpAddr = self.address.parse()?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// `[unix]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UnixConfig {
    /// Control socket; `None` means `$XDG_RUNTIME_DIR/ekaci.socket`.
    pub socket_path: Option<PathBuf>,
}

/// `[security]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SecurityConfig {
    /// HMAC secret of incoming webhooks (all forges). `WEBHOOK_SECRET` overrides it.
    #[serde(deserialize_with = "de::secret")]
    pub webhook_secret: Option<Secret>,
    /// Start without a webhook secret (development only).
    pub allow_insecure_webhooks: bool,
    /// Wall-clock cap of one post-build hook such as a cache push (1..=86400, default 300).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 86400>")]
    pub max_hook_timeout_seconds: u64,
    /// Write an audit record for every hook run (default true).
    pub audit_hooks: bool,
    /// Allow cache destinations on private or loopback addresses (disables SSRF protection).
    pub allow_private_cache_hosts: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            webhook_secret: None,
            allow_insecure_webhooks: false,
            max_hook_timeout_seconds: 300,
            audit_hooks: true,
            allow_private_cache_hosts: false,
        }
    }
}

/// `[oauth]`: GitHub OAuth for the web UI. Every field may also come from the environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OAuthConfig {
    /// `GITHUB_OAUTH_CLIENT_ID` overrides it.
    pub client_id: Option<String>,
    /// `GITHUB_OAUTH_CLIENT_SECRET` overrides it.
    #[serde(deserialize_with = "de::secret")]
    pub client_secret: Option<Secret>,
    /// Callback URL; `None` means `http://{web.address}:{web.port}/github/auth/callback`.
    pub redirect_url: Option<String>,
    /// JWT signing secret; `JWT_SECRET` overrides it. `None`: the server generates one per start.
    #[serde(deserialize_with = "de::secret")]
    pub jwt_secret: Option<Secret>,
}

/// Merge method of the `@eka-ci merge` comment command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMethod {
    Merge,
    #[default]
    Squash,
    Rebase,
}

impl MergeMethod {
    /// The spelling used in the file and by the GitHub API.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeMethod::Merge => "merge",
            MergeMethod::Squash => "squash",
            MergeMethod::Rebase => "rebase",
        }
    }
}

/// `[[github_apps]]`: a GitHub App the server authenticates as.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GitHubAppConfig {
    /// Unique name of this entry (not GitHub's numeric app id).
    #[serde(deserialize_with = "de::non_empty_string")]
    pub id: String,
    pub credentials: CredentialSource,
    #[serde(default)]
    pub permissions: Permissions,
}

/// Backend of a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheType {
    /// `nix copy --to <destination>` (S3, HTTP, SSH stores).
    NixCopy,
    /// `cachix push <destination>`.
    Cachix,
    /// `attic push <destination>`.
    Attic,
}

impl CacheType {
    /// The spelling used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheType::NixCopy => "nix-copy",
            CacheType::Cachix => "cachix",
            CacheType::Attic => "attic",
        }
    }
}

/// `[[caches]]`: a binary cache that repositories may push to by id.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CacheConfig {
    /// The id repositories name in `.eka-ci/config.json` (unique).
    #[serde(deserialize_with = "de::non_empty_string")]
    pub id: String,
    pub cache_type: CacheType,
    /// Store URL (nix-copy, attic) or cache name (cachix).
    #[serde(deserialize_with = "de::non_empty_string")]
    pub destination: String,
    pub credentials: CredentialSource,
    #[serde(default)]
    pub permissions: Permissions,
}

/// `[[remote_builders]]`: a Nix remote build machine.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RemoteBuilderConfig {
    /// Store URI, e.g. `ssh-ng://builder@10.0.0.5`.
    #[serde(deserialize_with = "de::non_empty_string")]
    pub uri: String,
    /// Systems it builds for, e.g. `["x86_64-linux", "i686-linux"]` (at least one).
    #[serde(deserialize_with = "de::non_empty_strings")]
    pub systems: Vec<String>,
    /// Concurrent builds (> 0, default 1).
    #[serde(default = "one", deserialize_with = "de::positive_u32")]
    pub max_jobs: u32,
    /// Preference among builders, higher is preferred (> 0, default 1).
    #[serde(default = "one", deserialize_with = "de::positive_u32")]
    pub speed_factor: u32,
    #[serde(default)]
    pub supported_features: Vec<String>,
    #[serde(default)]
    pub mandatory_features: Vec<String>,
    /// SSH private key used to reach it.
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
}

fn one() -> u32 {
    1
}

/// `[[gitea_instances]]` / `[[gitlab_instances]]`: a self-hosted or public forge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ForgeInstanceConfig {
    /// Bare host name (optionally `:port`), no scheme: `gitea.example.com`.
    #[serde(deserialize_with = "de::domain")]
    pub domain: String,
    /// API token; better supplied through `GITEA_TOKEN` / `GITLAB_TOKEN`.
    #[serde(default, deserialize_with = "de::secret")]
    pub token: Option<Secret>,
}

/// `[rebuild]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RebuildConfig {
    /// Above this many rebuilds a change is "wide" and per-package builds are skipped (> 0, default 20000).
    #[serde(deserialize_with = "de::positive_usize")]
    pub max_rebuild_count: usize,
    /// Changes touching only these paths (globs) skip rebuild evaluation.
    pub skip_paths: Vec<String>,
}

impl Default for RebuildConfig {
    fn default() -> Self {
        RebuildConfig { max_rebuild_count: 20_000, skip_paths: Vec::new() }
    }
}

/// `[evaluation]`: how jobs are evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EvaluationConfig {
    /// Which evaluator runs: `auto` (nix-eval-jobs when on PATH, else the built-in one), `builtin`,
    /// `nix-eval-jobs`.
    pub backend: EvalBackendSetting,
    /// Parallel evaluator processes per evaluation; 0 means one per core (0..=256, default 0).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 256>")]
    pub workers: u64,
    /// Memory cap of each evaluator process in MiB; 0 disables it (0..=1048576, default 4096).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 1048576>")]
    pub max_memory_mib: u64,
    /// Bound on one job's whole evaluation, in seconds (10..=86400, default 3600).
    #[serde(deserialize_with = "de::ranged_u64::<_, 10, 86400>")]
    pub timeout_seconds: u64,
    /// Attributes per evaluator process, the built-in evaluator's unit of work (1..=10000, default 100).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 10000>")]
    pub batch_size: u64,
    /// Evaluations that run at once; more wait in the queue (1..=64, default 1).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 64>")]
    pub concurrent: u64,
    /// Recurse into every attribute set, not only those with `recurseForDerivations = true`.
    pub force_recurse: bool,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        EvaluationConfig {
            backend: EvalBackendSetting::Auto,
            workers: 0,
            max_memory_mib: 4096,
            timeout_seconds: 3600,
            batch_size: 100,
            concurrent: 1,
            force_recurse: false,
        }
    }
}

/// `[github]`: the GitHub API endpoint and how pull requests are handled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GitHubConfig {
    /// REST API base URL: `https://api.github.com` (default), or `https://HOST/api/v3` for GitHub
    /// Enterprise Server. Always `http://` or `https://`, without a trailing `/`, once loaded.
    #[serde(deserialize_with = "de::api_url")]
    pub api_url: String,
    /// The host whose `https://` clone URLs receive the installation token; `None` derives it from
    /// `api_url` (`api.github.com` → `github.com`, `HOST/api/v3` → `HOST`).
    pub git_host: Option<String>,
    /// What happens to draft pull requests: `skip` them until they are marked ready (default) or
    /// `build` them like any other.
    pub draft_pull_requests: DraftPolicy,
    /// Failure check runs created per job and commit; the gate's summary counts the rest (1..=1000,
    /// default 50).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 1000>")]
    pub max_failure_check_runs: u64,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        GitHubConfig {
            api_url: "https://api.github.com".to_string(),
            git_host: None,
            draft_pull_requests: DraftPolicy::Skip,
            max_failure_check_runs: 50,
        }
    }
}

impl GitHubConfig {
    /// The host of clone URLs that may receive the installation token (lower case).
    pub fn git_host(&self) -> String {
        if let Some(h) = &self.git_host {
            return h.to_ascii_lowercase();
        }
        let rest = self.api_url.split_once("://").map_or(self.api_url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
        match host.strip_prefix("api.") {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => host,
        }
    }
}

/// `github.draft_pull_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DraftPolicy {
    Skip,
    Build,
}

/// `[change_summary]`: how long computed change summaries are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ChangeSummaryConfig {
    /// Cached summaries older than this many seconds are removed (60..=31536000, default 604800: 7 days).
    #[serde(deserialize_with = "de::ranged_u64::<_, 60, 31536000>")]
    pub cache_max_age_seconds: u64,
    /// How often the cache is pruned, in seconds (10..=86400, default 3600).
    #[serde(deserialize_with = "de::ranged_u64::<_, 10, 86400>")]
    pub prune_interval_seconds: u64,
}

impl Default for ChangeSummaryConfig {
    fn default() -> Self {
        ChangeSummaryConfig { cache_max_age_seconds: 7 * 24 * 3600, prune_interval_seconds: 3600 }
    }
}

/// `evaluation.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalBackendSetting {
    Auto,
    Builtin,
    NixEvalJobs,
}

impl ServerConfig {
    /// The redb file: `db_path`, else `$XDG_DATA_HOME/ekaci/ekaci.redb`.
    pub fn db_path(&self) -> PathBuf {
        self.db_path.clone().unwrap_or_else(crate::paths::default_db_path)
    }
    /// Build logs: `logs_dir`, else `$XDG_DATA_HOME/ekaci/build-logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.logs_dir.clone().unwrap_or_else(crate::paths::default_logs_dir)
    }
    /// Control socket: `unix.socket_path`, else `$XDG_RUNTIME_DIR/ekaci.socket`.
    pub fn socket_path(&self) -> PathBuf {
        self.unix.socket_path.clone().unwrap_or_else(crate::paths::default_socket_path)
    }
    /// Data directory for mirrors, worktrees and GC roots: next to the database.
    pub fn data_dir(&self) -> PathBuf {
        self.db_path().parent().map(Path::to_path_buf).unwrap_or_else(crate::paths::default_data_dir)
    }
    /// The cache with this id.
    pub fn cache(&self, id: &str) -> Option<&CacheConfig> {
        self.caches.iter().find(|c| c.id == id)
    }
    /// The GitHub App entry with this id.
    pub fn github_app(&self, id: &str) -> Option<&GitHubAppConfig> {
        self.github_apps.iter().find(|a| a.id == id)
    }
    /// The OAuth callback: `oauth.redirect_url`, else `http://{web.address}:{web.port}/github/auth/callback`.
    pub fn oauth_redirect_url(&self) -> String {
        if let Some(url) = &self.oauth.redirect_url {
            return url.clone();
        }
        match self.web.socket_addr() {
            Ok(addr) => format!("http://{addr}/github/auth/callback"),
            Err(_) => format!("http://{}:{}/github/auth/callback", self.web.address, self.web.port),
        }
    }
}

/// A configuration as loaded: the values, where they came from, and the warnings to log.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: ServerConfig,
    /// The file read, or `None` when running on embedded defaults.
    pub source: Option<PathBuf>,
    /// Non-fatal findings (unknown keys, ignored environment variables), each naming the key.
    pub warnings: Vec<String>,
}

/// Why a configuration could not be loaded. The `Display` of every variant is one line naming where the
/// problem is; no variant ever carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (an explicit `--config-file` that does not exist lands here).
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML.
    #[error("{path}:{line}:{column}: TOML syntax error: {message}")]
    Syntax { path: PathBuf, line: usize, column: usize, message: String },
    /// A value has the wrong type, is out of range, or breaks a rule (duplicate id, bad origin, …).
    /// `key` is the full dotted path, e.g. `caches[1].permissions.allow_all`; line and column are 1-based.
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
    /// A rule broken where no file position is known.
    #[error("{origin}: {key}: {message}")]
    Semantic { origin: String, key: String, message: String },
    /// An environment override has a bad value.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Loads the server configuration: `explicit` if given (it must exist), else the XDG default file if it
/// exists, else embedded defaults; then applies the environment overrides.
pub fn load(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    load_with_env(explicit, &|k| std::env::var(k).ok())
}

/// `$XDG_CONFIG_HOME/ekaci/ekaci.toml` (`$HOME/.config/…` when unset), computed from `env`.
pub fn default_config_file(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let abs = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from).filter(|p| p.is_absolute());
    let base = abs("XDG_CONFIG_HOME")
        .unwrap_or_else(|| abs("HOME").unwrap_or_else(|| PathBuf::from("/")).join(".config"));
    base.join("ekaci").join("ekaci.toml")
}

/// [`load`] with the environment supplied by the caller (tests use this). The environment is read only
/// through `env`, including `XDG_CONFIG_HOME` / `HOME` for the default file location.
pub fn load_with_env(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LoadedConfig, ConfigError> {
    let mut loaded = match explicit {
        Some(p) => {
            let t =
                std::fs::read_to_string(p).map_err(|e| ConfigError::Read { path: p.into(), source: e })?;
            from_toml(&t, p)?
        }
        None => {
            let p = default_config_file(env);
            match std::fs::read_to_string(&p) {
                Ok(t) => from_toml(&t, &p)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    LoadedConfig { config: ServerConfig::default(), source: None, warnings: vec![] }
                }
                Err(e) => return Err(ConfigError::Read { path: p, source: e }),
            }
        }
    };
    apply_env(&mut loaded.config, env, &mut loaded.warnings)?;
    Ok(loaded)
}

/// Parses and validates `text` as the contents of the file `path` (used only in messages), without
/// environment overrides.
pub fn from_toml(text: &str, path: &Path) -> Result<LoadedConfig, ConfigError> {
    let root = DeTable::parse(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        ConfigError::Syntax { path: path.to_path_buf(), line, column, message: one_line(e.message()) }
    })?;

    let mut ignored: Vec<Vec<Seg>> = Vec::new();
    let result: Result<ServerConfig, _> = {
        let mut on_ignored = |p: serde_ignored::Path<'_>| ignored.push(segs_from_ignored(&p));
        let de = toml::Deserializer::from(root.clone());
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(de, &mut on_ignored))
    };
    let config = result.map_err(|e| {
        let segs = segs_from_p2e(e.path());
        let inner = e.inner();
        let span = inner.span().or_else(|| locate(&root, &segs, false));
        let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
        let key = format_path(&segs);
        let mut message = one_line(inner.message());
        if SECRET_TABLES.iter().any(|t| matches!(segs.first(), Some(Seg::Key(k)) if k == t)) {
            message = redact_unexpected(&message);
        }
        ConfigError::Invalid { path: path.to_path_buf(), line, column, key, message }
    })?;

    let mut found: Vec<(usize, usize, String)> = ignored
        .iter()
        .map(|segs| {
            let (line, column) = locate(&root, segs, true).map_or((1, 1), |s| line_col(text, s.start));
            (line, column, format_path(segs))
        })
        .collect();
    found.sort();
    let warnings = found
        .into_iter()
        .map(|(line, column, key)| {
            let mut w = format!("{}:{line}:{column}: unknown key `{key}` ignored", path.display());
            if let Some((_, leaf)) = key.split_once('.').filter(|(_, leaf)| TOP_LEVEL_KEYS.contains(leaf)) {
                w.push_str(&format!(
                    " (`{leaf}` is a top-level key: move it above the first [table] header)"
                ));
            }
            w
        })
        .collect();

    check_unique(&config.caches, |c| &c.id, "caches", "cache", text, path, &root)?;
    check_unique(&config.github_apps, |a| &a.id, "github_apps", "GitHub App", text, path, &root)?;

    Ok(LoadedConfig { config, source: Some(path.to_path_buf()), warnings })
}

/// Plain top-level keys: found inside a table, they were most likely written after a table header.
const TOP_LEVEL_KEYS: [&str; 9] = [
    "machines_file",
    "db_path",
    "logs_dir",
    "build_no_output_timeout_seconds",
    "build_max_duration_seconds",
    "graph_lru_capacity",
    "require_approval",
    "merge_queue_require_approval",
    "default_merge_method",
];

/// Top-level tables whose values may be secrets: type errors under them never quote the value.
const SECRET_TABLES: [&str; 4] = ["security", "oauth", "gitea_instances", "gitlab_instances"];

fn check_unique<T>(
    items: &[T],
    id: impl Fn(&T) -> &String,
    table: &str,
    what: &str,
    text: &str,
    path: &Path,
    root: &Spanned<DeTable<'_>>,
) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let this = id(item).as_str();
        if let Some(&first) = seen.get(this) {
            let at = |idx: usize| {
                let segs = [Seg::Key(table.into()), Seg::Index(idx), Seg::Key("id".into())];
                locate(root, &segs, false).map_or((1, 1), |s| line_col(text, s.start))
            };
            let (line, column) = at(i);
            let (first_line, _) = at(first);
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                key: format!("{table}[{i}].id"),
                message: format!(
                    "duplicate {what} id `{this}` (already used by {table}[{first}] on line {first_line})"
                ),
            });
        }
        seen.insert(this, i);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Environment overrides

fn apply_env(
    config: &mut ServerConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());

    match (get("WEBHOOK_SECRET"), get("GITHUB_WEBHOOK_SECRET")) {
        (Some(s), alias) => {
            if alias.is_some_and(|a| a != s) {
                warnings.push(
                    "WEBHOOK_SECRET and GITHUB_WEBHOOK_SECRET are both set and differ; using WEBHOOK_SECRET"
                        .into(),
                );
            }
            config.security.webhook_secret = Some(Secret::new(s));
        }
        (None, Some(s)) => config.security.webhook_secret = Some(Secret::new(s)),
        (None, None) => {}
    }

    if let Some(v) = get("EKA_CI_GRAPH_LRU_CAPACITY") {
        config.graph_lru_capacity = match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(ConfigError::Env {
                    var: "EKA_CI_GRAPH_LRU_CAPACITY".into(),
                    message: format!("must be a positive integer, got `{v}`"),
                })
            }
        };
    }
    if let Some(v) = get("EKA_CI_REQUIRE_APPROVAL") {
        config.require_approval = parse_bool(&v).ok_or_else(|| ConfigError::Env {
            var: "EKA_CI_REQUIRE_APPROVAL".into(),
            message: format!("must be true or false, got `{v}`"),
        })?;
    }

    if let Some(v) = get("JWT_SECRET") {
        config.oauth.jwt_secret = Some(Secret::new(v));
    }
    if let Some(v) = get("GITHUB_OAUTH_CLIENT_ID") {
        config.oauth.client_id = Some(v);
    }
    if let Some(v) = get("GITHUB_OAUTH_CLIENT_SECRET") {
        config.oauth.client_secret = Some(Secret::new(v));
    }
    if let Some(v) = get("GITHUB_OAUTH_REDIRECT_URL") {
        config.oauth.redirect_url = Some(v);
    }

    if config.github_apps.is_empty() {
        match (get("GITHUB_APP_ID").is_some(), get("GITHUB_APP_PRIVATE_KEY").is_some()) {
            (true, true) => config.github_apps.push(GitHubAppConfig {
                id: "default".into(),
                credentials: CredentialSource::Env {
                    vars: vec!["GITHUB_APP_ID".into(), "GITHUB_APP_PRIVATE_KEY".into()],
                },
                permissions: Permissions::default(),
            }),
            (true, false) => warnings.push(
                "GITHUB_APP_ID is set but GITHUB_APP_PRIVATE_KEY is not: no GitHub App configured".into(),
            ),
            (false, true) => warnings.push(
                "GITHUB_APP_PRIVATE_KEY is set but GITHUB_APP_ID is not: no GitHub App configured".into(),
            ),
            (false, false) => {}
        }
    }

    apply_forge_env(&mut config.gitea_instances, "GITEA", "gitea_instances", &get, warnings)?;
    apply_forge_env(&mut config.gitlab_instances, "GITLAB", "gitlab_instances", &get, warnings)?;
    Ok(())
}

/// `{PREFIX}_TOKEN` / `{PREFIX}_DOMAIN`: the single-instance shortcut of the documentation.
fn apply_forge_env(
    list: &mut Vec<ForgeInstanceConfig>,
    prefix: &str,
    table: &str,
    get: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let token_var = format!("{prefix}_TOKEN");
    let domain_var = format!("{prefix}_DOMAIN");
    let token = get(&token_var).map(Secret::new);
    let domain = match get(&domain_var) {
        Some(d) => Some(
            de::check_domain(&d).map_err(|message| ConfigError::Env { var: domain_var.clone(), message })?,
        ),
        None => None,
    };
    match (token, domain) {
        (token, Some(domain)) => match list.iter_mut().find(|i| i.domain == domain) {
            Some(inst) => {
                if token.is_some() {
                    inst.token = token;
                }
            }
            None => list.push(ForgeInstanceConfig { domain, token }),
        },
        (Some(token), None) => {
            if let [only] = list.as_mut_slice() {
                only.token = Some(token);
            } else {
                warnings.push(format!(
                    "{token_var} is set but {domain_var} is not, and {} {table} are configured: set \
                     {domain_var} to say which instance the token belongs to; {token_var} ignored",
                    list.len()
                ));
            }
        }
        (None, None) => {}
    }
    Ok(())
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------
// Paths, positions and messages

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn segs_from_ignored(p: &serde_ignored::Path<'_>) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut cur = p;
    loop {
        match cur {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                cur = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                out.push(Seg::Key(key.clone()));
                cur = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => cur = parent,
        }
    }
    out.reverse();
    out
}

fn segs_from_p2e(p: &serde_path_to_error::Path) -> Vec<Seg> {
    p.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

/// `caches[1].permissions.allow_all`; keys that are not bare TOML keys are quoted.
fn format_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare =
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

/// The byte span of the value at `segs` (of its key instead, when `want_key` and the path ends in a key).
fn locate(root: &Spanned<DeTable<'_>>, segs: &[Seg], want_key: bool) -> Option<Range<usize>> {
    let mut span = root.span();
    let mut node: Option<&DeValue<'_>> = None;
    let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
    for (n, seg) in segs.iter().enumerate() {
        let last = n + 1 == segs.len();
        let value = match seg {
            Seg::Key(k) => {
                let (key, value) = table?.iter().find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
                span = if last && want_key { key.span() } else { value.span() };
                value
            }
            Seg::Index(i) => match node? {
                DeValue::Array(items) => {
                    let value = items.get(*i)?;
                    span = value.span();
                    value
                }
                _ => return None,
            },
        };
        node = Some(value.get_ref());
        table = match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    Some(span)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let off = crate::text::floor_char_boundary(text, offset);
    let before = text.get(..off).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Joins a multi-line parser message into one line and names types the way the file does.
fn one_line(message: &str) -> String {
    let joined = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let mut out = String::with_capacity(joined.len());
    let mut rest = joined.as_str();
    // serde says "expected struct WebConfig"; the user wrote (or should write) a table.
    while let Some(i) = rest.find("expected struct ") {
        out.push_str(&rest[..i]);
        out.push_str("expected a table");
        let after = &rest[i + "expected struct ".len()..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    let mut out = out
        .replace("expected a sequence", "expected an array")
        .replace("expected path string", "expected a string");
    for int in ["i64", "u64", "u32", "u16", "usize"] {
        if let Some(stripped) = out.strip_suffix(&format!("expected {int}")) {
            out = format!("{stripped}expected an integer");
        }
    }
    out
}

/// "invalid type: string \"hunter2\", expected …" → "invalid type: a string, expected …".
fn redact_unexpected(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = if rest.starts_with("string") {
                "a string"
            } else if rest.starts_with("integer") {
                "an integer"
            } else if rest.starts_with("floating point") {
                "a float"
            } else if rest.starts_with("boolean") {
                "a boolean"
            } else {
                "a value"
            };
            let expected = rest.rfind(", expected ").map_or("", |i| &rest[i..]);
            return format!("{prefix}{kind}{expected}");
        }
    }
    message.to_string()
}

// ---------------------------------------------------------------------------------------------------
// Validating deserializers: errors raised here carry the value's span, hence its line.

mod de {
    use std::fmt;
    use std::net::IpAddr;
    use std::path::PathBuf;

    use serde::de::{Error, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer};

    use crate::secret::Secret;

    /// Reads an integer and checks `min..=max` inside the visitor, so the error carries the value's span.
    fn int<'de, D: Deserializer<'de>>(d: D, min: i64, max: i64) -> Result<i64, D::Error> {
        d.deserialize_i64(IntVisitor { min, max, positive: false })
    }

    /// [`int`] for "greater than 0" keys, whose message says so.
    fn positive<'de, D: Deserializer<'de>>(d: D, max: i64) -> Result<i64, D::Error> {
        d.deserialize_i64(IntVisitor { min: 1, max, positive: true })
    }

    struct IntVisitor {
        min: i64,
        max: i64,
        positive: bool,
    }

    impl IntVisitor {
        fn out_of_range<E: Error>(&self, v: impl fmt::Display + Into<i128>) -> E {
            let shown = v.to_string();
            if self.positive && v.into() < 1 {
                E::custom(format!("must be greater than 0, got {shown}"))
            } else {
                E::custom(format!("must be between {} and {}, got {shown}", self.min, self.max))
            }
        }
    }

    impl<'de> Visitor<'de> for IntVisitor {
        type Value = i64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
            if v < self.min || v > self.max {
                return Err(self.out_of_range(v));
            }
            Ok(v)
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
            self.visit_i128(i128::from(v))
        }
        fn visit_u128<E: Error>(self, v: u128) -> Result<i64, E> {
            match i64::try_from(v) {
                Ok(v) => self.visit_i64(v),
                Err(_) => Err(E::custom(format!("must be between {} and {}, got {v}", self.min, self.max))),
            }
        }
        fn visit_i128<E: Error>(self, v: i128) -> Result<i64, E> {
            match i64::try_from(v) {
                Ok(v) => self.visit_i64(v),
                Err(_) => Err(self.out_of_range(v)),
            }
        }
    }

    pub fn ranged_u64<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(
        d: D,
    ) -> Result<u64, D::Error> {
        let v = int(d, MIN, MAX)?;
        u64::try_from(v).map_err(|_| D::Error::custom(format!("must be between {MIN} and {MAX}, got {v}")))
    }

    pub fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        let v = positive(d, max)?;
        usize::try_from(v).map_err(|_| D::Error::custom(format!("must be between 1 and {max}, got {v}")))
    }

    pub fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let v = positive(d, i64::from(u32::MAX))?;
        u32::try_from(v).map_err(|_| D::Error::custom(format!("must be between 1 and {}, got {v}", u32::MAX)))
    }

    pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        let v = int(d, 0, 65535)?;
        u16::try_from(v).map_err(|_| D::Error::custom(format!("must be between 0 and 65535, got {v}")))
    }

    /// Reads a string and checks it with `check` inside the visitor (so errors carry the value's span).
    fn checked_str<'de, D, T, F>(d: D, check: F) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        F: FnOnce(&str) -> Result<T, String>,
    {
        struct StrVisitor<F>(F);
        impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrVisitor<F> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
                (self.0)(v).map_err(E::custom)
            }
        }
        d.deserialize_str(StrVisitor(check))
    }

    fn check_non_empty(s: &str) -> Result<String, String> {
        if s.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(s.to_string())
        }
    }

    pub fn api_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        let trimmed = s.trim_end_matches('/');
        let rest = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(['?', '#', '@', ' ']) => {
                Ok(trimmed.to_string())
            }
            _ => Err(D::Error::custom(format!(
                "`{s}` is not an API base URL: write http(s)://host[/path] without query, fragment or \
                 credentials, e.g. `https://api.github.com` or `https://ghe.example.com/api/v3`"
            ))),
        }
    }

    pub fn non_empty_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        checked_str(d, check_non_empty)
    }

    pub fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        non_empty_string(d).map(PathBuf::from)
    }

    struct NonEmpty(String);
    impl<'de> Deserialize<'de> for NonEmpty {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            non_empty_string(d).map(NonEmpty)
        }
    }

    /// A list of at least one non-empty string (each element error carries its own position).
    pub fn non_empty_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let v = Vec::<NonEmpty>::deserialize(d)?;
        if v.is_empty() {
            return Err(D::Error::custom("must list at least one entry"));
        }
        Ok(v.into_iter().map(|s| s.0).collect())
    }

    pub fn ip_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        checked_str(d, |s| match s.parse::<IpAddr>() {
            Ok(_) => Ok(s.to_string()),
            Err(_) => Err(format!("must be an IP address such as 127.0.0.1, 0.0.0.0 or ::1, got `{s}`")),
        })
    }

    /// Checks one CORS origin; returns it lower-cased.
    pub fn check_origin(s: &str) -> Result<String, String> {
        let bad = |why: &str| {
            Err(format!(
                "`{s}` is not an origin: {why}; write scheme://host[:port], e.g. `https://ci.example.com` \
                 or `http://localhost:5173`"
            ))
        };
        if s.contains('*') {
            return bad("wildcards are not allowed");
        }
        let lower = s.to_ascii_lowercase();
        let rest = match lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) {
            Some(r) => r,
            None if lower.contains("://") => return bad("the scheme must be http or https"),
            None => return bad("it has no http:// or https:// scheme"),
        };
        if rest.contains('#') {
            return bad("it has a fragment");
        }
        if rest.contains('?') {
            return bad("it has a query");
        }
        if rest.contains('/') {
            return bad("it has a path (even a trailing `/` is a path)");
        }
        if rest.contains('@') {
            return bad("it has user information");
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((inner, after)) = v6.split_once(']') else { return bad("unclosed `[`") };
            if inner.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("the bracketed host is not an IPv6 address");
            }
            match after {
                "" => (inner, None),
                a => match a.strip_prefix(':') {
                    Some(p) => (inner, Some(p)),
                    None => return bad("unexpected text after the host"),
                },
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return bad("it has no host");
        }
        if !rest.starts_with('[') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return bad("the host has characters a host name cannot have");
        }
        if let Some(p) = port {
            if !matches!(p.parse::<u16>(), Ok(n) if n > 0) || !p.chars().all(|c| c.is_ascii_digit()) {
                return bad("the port must be a number between 1 and 65535");
            }
        }
        Ok(lower)
    }

    struct Origin(String);
    impl<'de> Deserialize<'de> for Origin {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            checked_str(d, check_origin).map(Origin)
        }
    }

    pub fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Vec::<Origin>::deserialize(d)?.into_iter().map(|o| o.0).collect())
    }

    /// Checks a forge domain: a bare host (optionally `:port`), no scheme or path.
    pub fn check_domain(s: &str) -> Result<String, String> {
        let ok = !s.is_empty()
            && !s.contains("://")
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'));
        if ok {
            Ok(s.to_string())
        } else {
            Err(format!("must be a bare domain such as `gitea.example.com` (no scheme or path), got `{s}`"))
        }
    }

    pub fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        checked_str(d, check_domain)
    }

    /// A secret string. Errors never include the value, whatever its type.
    pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
        d.deserialize_any(SecretVisitor).map(Some)
    }

    struct SecretVisitor;

    impl SecretVisitor {
        fn wrong<E: Error>(found: &str) -> E {
            E::custom(format!("expected a string, found {found} (value not shown: this key holds a secret)"))
        }
    }

    impl<'de> Visitor<'de> for SecretVisitor {
        type Value = Secret;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a secret string")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Secret, E> {
            if v.is_empty() {
                return Err(E::custom("must not be empty (omit the key instead)"));
            }
            Ok(Secret::new(v))
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<Secret, E> {
            Err(Self::wrong("a boolean"))
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<Secret, E> {
            Err(Self::wrong("an integer"))
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<Secret, E> {
            Err(Self::wrong("an integer"))
        }
        fn visit_i128<E: Error>(self, _: i128) -> Result<Secret, E> {
            Err(Self::wrong("an integer"))
        }
        fn visit_u128<E: Error>(self, _: u128) -> Result<Secret, E> {
            Err(Self::wrong("an integer"))
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<Secret, E> {
            Err(Self::wrong("a float"))
        }
        fn visit_bytes<E: Error>(self, _: &[u8]) -> Result<Secret, E> {
            Err(Self::wrong("bytes"))
        }
        fn visit_unit<E: Error>(self) -> Result<Secret, E> {
            Err(Self::wrong("nothing"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
            Err(Self::wrong("an array"))
        }
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
            Err(Self::wrong("a table or date"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 6), (2, 1));
        // 'é' is two bytes: the `=` after "bé " is the 4th character.
        assert_eq!(line_col(t, 10), (2, 4));
        assert_eq!(line_col(t, 999), (3, 1));
    }

    #[test]
    fn paths_format_like_toml_keys() {
        let segs = vec![Seg::Key("caches".into()), Seg::Index(1), Seg::Key("permissions".into())];
        assert_eq!(format_path(&segs), "caches[1].permissions");
        assert_eq!(format_path(&[Seg::Key("a b".into())]), "\"a b\"");
        assert_eq!(format_path(&[]), "(top level)");
    }

    #[test]
    fn messages_are_cleaned_and_redacted() {
        assert_eq!(
            one_line("invalid type: integer `5`, expected struct WebConfig"),
            "invalid type: integer `5`, expected a table"
        );
        assert_eq!(
            redact_unexpected("invalid type: string \"hunter2\", expected a boolean"),
            "invalid type: a string, expected a boolean"
        );
        assert_eq!(one_line("a\n  b\n"), "a; b");
    }

    #[test]
    fn origins() {
        assert_eq!(
            de::check_origin("HTTPS://CI.Example.com:8443").as_deref(),
            Ok("https://ci.example.com:8443")
        );
        assert!(de::check_origin("http://[::1]:3000").is_ok());
        for bad in [
            "https://x/",
            "https://x/a",
            "https://x?q",
            "https://x#f",
            "*",
            "https://*.x",
            "x.com",
            "ftp://x",
            "https://",
            "https://x:0",
            "https://x:port",
            "https://u@x",
        ] {
            assert!(de::check_origin(bad).is_err(), "{bad} accepted");
        }
    }
}
