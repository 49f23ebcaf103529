//! The server configuration's schema (`ekaci.toml`): one type per section (`[web]`, `[security]`,
//! `[evaluation]`, `[[github_apps]]`, `[[caches]]`, …) with its defaults and ranges, and the values
//! derived from them (resolved paths, the OAuth callback, the git host).
//!
//! Ranges and shapes are checked while deserializing (see [`super::de`]), so a value of these types is
//! always valid once loaded. This module only describes values: it never reads files or the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::de;
use super::{CredentialSource, Permissions};
use crate::secret::Secret;

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
    /// `[builders]`: the local build slots (an eka-ci extension of the upstream schema).
    pub builders: BuildersConfig,
    /// `[builds]`: bounds of one build attempt (an eka-ci extension).
    pub builds: BuildsConfig,
    /// `[retention]`: how long finished work is kept (an eka-ci extension).
    pub retention: RetentionConfig,
    /// `[limits]`: bounds on what a repository may ask for (an eka-ci extension).
    pub limits: LimitsConfig,
    /// `[git]`: how the server runs git (an eka-ci extension of the upstream schema).
    pub git: GitConfig,
    /// `[checks]`: the sandbox and limits of repository checks (an eka-ci extension).
    pub checks: ChecksConfig,
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
            builders: BuildersConfig::default(),
            builds: BuildsConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            git: GitConfig::default(),
            checks: ChecksConfig::default(),
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
    /// The server's address as people reach it (`http(s)://host[/path]`, no trailing `/`): the base of
    /// the web UI links in check runs' `details_url`. `None`: `http://` and the address the listener bound.
    #[serde(deserialize_with = "de::api_url_opt")]
    pub public_url: Option<String>,
    /// GitHub logins that are administrators of the web UI (signed in through `[oauth]`): they see every
    /// page and may rebuild. Compared case-insensitively.
    #[serde(deserialize_with = "de::logins")]
    pub admins: Vec<String>,
    /// Whether public repositories' data is served without a token (default true). False: every `/v1`
    /// route needs a token.
    pub public_read: bool,
    /// Whether `/metrics` on the main listener is served without a token (default false).
    pub metrics_public: bool,
    /// A listener of its own for `/metrics` and `/healthz`, served without a token (`ip:port`); the main
    /// listener then does not serve `/metrics`.
    #[serde(deserialize_with = "de::socket_address")]
    pub metrics_address: Option<String>,
    /// A listener of its own for `POST /github/webhook` (`ip:port`); the main listener then does not
    /// serve it.
    #[serde(deserialize_with = "de::socket_address")]
    pub webhook_address: Option<String>,
    /// Open HTTP connections over every listener (default 1024); more are closed at once. Lowered at
    /// start-up to fit the open-file limit.
    #[serde(deserialize_with = "de::ranged_u64::<_, 16, 1048576>")]
    pub max_connections: u64,
    /// Of `max_connections`, how many only webhook deliveries may use (default 128): other connections
    /// get 503 when fewer remain.
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 1048576>")]
    pub webhook_reserved_connections: u64,
    /// Time to receive a whole request head (default 10 s); then the connection gets 408 and is closed. A
    /// kept-alive connection without a next request within it is closed.
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 300>")]
    pub header_timeout_seconds: u64,
    /// Longest pause while a request body is received (default 10 s); then the connection is closed.
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 300>")]
    pub body_idle_timeout_seconds: u64,
    /// Longest time a response may make no progress because the client does not read it (default 30
    /// s); then the connection is closed.
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 3600>")]
    pub write_idle_timeout_seconds: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            address: "127.0.0.1".into(),
            port: 3030,
            allowed_origins: vec![],
            bundle_path: None,
            public_url: None,
            admins: Vec::new(),
            public_read: true,
            metrics_public: false,
            metrics_address: None,
            webhook_address: None,
            max_connections: 1024,
            webhook_reserved_connections: 128,
            header_timeout_seconds: 10,
            body_idle_timeout_seconds: 10,
            write_idle_timeout_seconds: 30,
        }
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
    /// Start with a forge configured although Nix's own `sandbox` setting is not `true` (tests and local
    /// demos only: a pull request's builders then run on the host).
    pub allow_unsandboxed_builds: bool,
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
            allow_unsandboxed_builds: false,
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
    /// Push outputs that were substituted or already valid too, not only those built (default false).
    #[serde(default)]
    pub push_cached: bool,
    /// Push the outputs of pull requests from forks (default false: never).
    #[serde(default)]
    pub allow_forks: bool,
    /// nix-copy only: sign the pushed paths (and their closure) with this secret key
    /// (`nix-store --generate-binary-cache-key`) before copying.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
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
    /// SSH private key used to reach it (a path: the key itself is never read, logged or passed on).
    #[serde(default)]
    pub ssh_key: Option<PathBuf>,
    /// The machine's SSH host key, base64-encoded as in the machines file's eighth field (`base64 -w0`
    /// of the `.pub` line); `None` leaves host-key checking to ssh's own configuration.
    #[serde(default, deserialize_with = "de::ssh_host_key_opt")]
    pub public_host_key: Option<String>,
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

/// `[builders]`: how many builds run at once on this host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BuildersConfig {
    /// Concurrent local builds of ordinary derivations (1..=1024); `None` means one per CPU core.
    #[serde(deserialize_with = "de::ranged_u32_opt::<_, 1, 1024>")]
    pub local_max_jobs: Option<u32>,
    /// Concurrent local builds of fixed-output derivations (downloads), a pool of their own so that
    /// slow fetches never take the build slots (1..=256, default 10).
    #[serde(deserialize_with = "de::ranged_u32::<_, 1, 256>")]
    pub fod_max_jobs: u32,
    /// Seconds between health probes of an up remote builder (`nix store ping`; 1..=86400, default 60).
    /// A builder that is down is probed again sooner, after a backoff doubling from 1 s up to this.
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 86400>")]
    pub health_check_interval_seconds: u64,
    /// Seconds one probe may take before the builder counts as down (1..=600, default 20).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 600>")]
    pub health_check_timeout_seconds: u64,
}

impl Default for BuildersConfig {
    fn default() -> Self {
        BuildersConfig {
            local_max_jobs: None,
            fod_max_jobs: 10,
            health_check_interval_seconds: 60,
            health_check_timeout_seconds: 20,
        }
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
    /// Memory cap of each evaluator process in MiB (the built-in walk's sessions share `workers` × it);
    /// 0 disables it (0..=1048576, default 4096).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 1048576>")]
    pub max_memory_mib: u64,
    /// Bound on one job's whole evaluation, in seconds (10..=86400, default 3600).
    #[serde(deserialize_with = "de::ranged_u64::<_, 10, 86400>")]
    pub timeout_seconds: u64,
    /// The batch size of the built-in evaluator's fallback steps (1..=10000, default 100); the walk runs
    /// one process per worker whatever it is. docs/evaluation.md.
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 10000>")]
    pub batch_size: u64,
    /// Evaluations that run at once; more wait in the queue (1..=64, default 1).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 64>")]
    pub concurrent: u64,
    /// Recurse into every attribute set, not only those with `recurseForDerivations = true`.
    pub force_recurse: bool,
    /// Evaluate under Nix's `restrict-eval` (default true): only the checkout, the search path and the
    /// store are readable, `builtins.getEnv` yields "", and only `allowed_uris` may be fetched. Turning it
    /// off lets a pull request's Nix code read the server's files (docs/security.md).
    pub restrict_eval: bool,
    /// URI prefixes evaluation may fetch under `restrict_eval` (Nix's `allowed-uris`); empty by default.
    #[serde(deserialize_with = "de::uri_prefixes")]
    pub allowed_uris: Vec<String>,
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
            restrict_eval: true,
            allowed_uris: Vec::new(),
        }
    }
}

/// `[git]`: limits of the git processes (fetches into the mirrors).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GitConfig {
    /// A git call (a fetch above all) running longer than this is killed with its whole process group,
    /// so a stuck remote cannot hold an evaluation slot (10..=86400, default 600).
    #[serde(deserialize_with = "de::ranged_u64::<_, 10, 86400>")]
    pub timeout_seconds: u64,
    /// Worktrees of a repository kept after an evaluation for the next checkout of the same repository,
    /// which then changes only the files that differ (0..=16, default 2: a review's base and head).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 16>")]
    pub spare_worktrees: u64,
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig { timeout_seconds: 600, spare_worktrees: 2 }
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

/// `[builds]`: bounds of one build attempt.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BuildsConfig {
    /// Bytes of one attempt's log kept on disk; the rest is dropped, a marker line says where the log was
    /// cut, and the build goes on (65536..=17179869184, default 67108864: 64 MiB).
    #[serde(deserialize_with = "de::ranged_u64::<_, 65536, 17179869184>")]
    pub max_log_bytes: u64,
}

impl Default for BuildsConfig {
    fn default() -> Self {
        BuildsConfig { max_log_bytes: 64 * 1024 * 1024 }
    }
}

/// `[retention]`: ages after which finished work is removed (by `ekaci gc` and once a day). Zero keeps it
/// forever.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Finished jobsets (their records and GC roots) older than this many days, unless live
    /// (0..=36500, default 30).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 36500>")]
    pub jobsets_days: u64,
    /// Build log files not modified for this many days (0..=36500, default 30).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 36500>")]
    pub logs_days: u64,
    /// Worktrees left in the data directory for this many hours (0..=87600, default 24).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 87600>")]
    pub worktrees_hours: u64,
    /// Git mirrors no stored jobset and no GitHub installation refers to, unused for this many days
    /// (0..=36500, default 14).
    #[serde(deserialize_with = "de::ranged_u64::<_, 0, 36500>")]
    pub mirrors_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { jobsets_days: 30, logs_days: 30, worktrees_hours: 24, mirrors_days: 14 }
    }
}

/// `[limits]`: bounds on what a repository's configuration may ask for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Jobs one repository configuration may declare; more is a Configure error (1..=1000, default 16).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 1000>")]
    pub max_jobs_per_repo: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_jobs_per_repo: 16 }
    }
}

/// `[checks]`: how a repository's checks are sandboxed and bounded (docs/checks.md).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ChecksConfig {
    /// Wall-clock limit of one check; at the limit the whole sandbox is killed (1..=86400, default 600).
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 86400>")]
    pub timeout_seconds: u64,
    /// Address space of every process of a check (`RLIMIT_AS`; 16 MiB..=1 TiB, default 4 GiB).
    #[serde(deserialize_with = "de::ranged_u64::<_, 16777216, 1099511627776>")]
    pub memory_max_bytes: u64,
    /// Processes of the sandbox's user (`RLIMIT_NPROC`; 1..=1000000, default 1024). The kernel does not
    /// apply it to root.
    #[serde(deserialize_with = "de::ranged_u64::<_, 1, 1000000>")]
    pub max_processes: u64,
    /// Bytes of output (stdout and stderr together) one check may print; more kills it
    /// (4096..=1073741824, default 4 MiB).
    #[serde(deserialize_with = "de::ranged_u64::<_, 4096, 1073741824>")]
    pub max_output_bytes: u64,
    /// Host paths a repository's check may ask to see read-only (`ro_bind`); any other is a Configure
    /// error. Absolute, without `..`; default none.
    #[serde(deserialize_with = "de::absolute_paths")]
    pub allowed_ro_binds: Vec<PathBuf>,
    /// The bubblewrap executable (default `/usr/bin/bwrap`).
    #[serde(deserialize_with = "de::non_empty_path")]
    pub bwrap_path: PathBuf,
    /// The user id checks run as when the server runs as root (1..=4294967294, default 65534, `nobody`);
    /// ignored otherwise (checks run as the server's user).
    #[serde(deserialize_with = "de::ranged_u32::<_, 1, 4294967294>")]
    pub uid: u32,
    /// The group id checks run as when the server runs as root (1..=4294967294, default 65534).
    #[serde(deserialize_with = "de::ranged_u32::<_, 1, 4294967294>")]
    pub gid: u32,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            timeout_seconds: 600,
            memory_max_bytes: 4 << 30,
            max_processes: 1024,
            max_output_bytes: 4 << 20,
            allowed_ro_binds: Vec::new(),
            bwrap_path: PathBuf::from("/usr/bin/bwrap"),
            uid: 65534,
            gid: 65534,
        }
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
