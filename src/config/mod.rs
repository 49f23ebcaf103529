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
//!
//! Files: `server.rs` (the schema, one type per section), `de.rs` (validating deserializers),
//! `load.rs` (finding, parsing, unknown keys, unique ids), `env.rs` (environment overrides),
//! `locate.rs` (key paths, lines and columns, message clean-up), `credentials.rs` (credential
//! sources), `glob.rs` (permission globs), `not_acted_on.rs` (keys accepted but not acted on yet);
//! `repo/` is the repository configuration.

pub mod credentials;
mod de;
mod env;
pub mod glob;
mod load;
mod locate;
pub mod not_acted_on;
pub mod repo;
mod server;

pub use credentials::CredentialSource;
pub use env::secret_env_vars;
pub use glob::Permissions;
pub use load::{default_config_file, from_toml, load, load_with_env, ConfigError, LoadedConfig};
pub use server::{
    BuildsConfig, CacheConfig, CacheType, ChangeSummaryConfig, ChecksConfig, DraftPolicy, EvalBackendSetting,
    EvaluationConfig, ForgeInstanceConfig, GitConfig, GitHubAppConfig, GitHubConfig, LimitsConfig,
    MergeMethod, OAuthConfig, RebuildConfig, RemoteBuilderConfig, RetentionConfig, SecurityConfig,
    ServerConfig, UnixConfig, WebConfig,
};
