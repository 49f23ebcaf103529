//! Loading the server configuration: finding the file, parsing it with positions, collecting
//! unknown-key warnings, checking unique ids, then applying the environment.
//!
//! Errors name the file, line, column and dotted key ([`ConfigError`]); secret values never appear in
//! them. This module reads the configuration file and nothing else; the environment is read only
//! through the `env` closure given to [`load_with_env`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use toml::de::DeTable;
use toml::Spanned;

use super::env::apply_env;
use super::locate::{
    format_path, line_col, locate, one_line, redact_unexpected, segs_from_ignored, segs_from_p2e, Seg,
};
use super::not_acted_on::{self, ServerKey};
use super::ServerConfig;

/// A configuration as loaded: the values, where they came from, and the warnings to log.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: ServerConfig,
    /// The file read, or `None` when running on embedded defaults.
    pub source: Option<PathBuf>,
    /// Non-fatal findings (unknown keys, ignored environment variables), each naming the key.
    pub warnings: Vec<String>,
    /// The keys this configuration uses (in the file or through the environment) that are accepted but
    /// not acted on yet, in the order of [`not_acted_on::SERVER`]; the server warns about each once.
    pub not_acted_on: Vec<&'static ServerKey>,
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
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => LoadedConfig {
                    config: ServerConfig::default(),
                    source: None,
                    warnings: vec![],
                    not_acted_on: vec![],
                },
                Err(e) => return Err(ConfigError::Read { path: p, source: e }),
            }
        }
    };
    apply_env(&mut loaded.config, env, &mut loaded.warnings)?;
    loaded.not_acted_on = not_acted_on::server_keys_in_use(&loaded.config, &loaded.not_acted_on);
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

    let written: Vec<&'static ServerKey> = not_acted_on::SERVER
        .iter()
        .filter(|k| {
            let segs: Vec<Seg> = k.key.split('.').map(|s| Seg::Key(s.to_string())).collect();
            locate(&root, &segs, true).is_some()
        })
        .collect();
    let not_acted_on = not_acted_on::server_keys_in_use(&config, &written);
    Ok(LoadedConfig { config, source: Some(path.to_path_buf()), warnings, not_acted_on })
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
