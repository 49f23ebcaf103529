//! Finding, reading and validating a checkout's `.eka-ci/config.json` (or the deprecated
//! `.ekaci/config.json`): the file must resolve inside the checkout, be a regular file and at most
//! [`MAX_CONFIG_BYTES`] long; then its JSON goes through the [`Validator`].
//!
//! Only reads files inside the checkout; a problem becomes a [`FieldError`], never a panic.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::paths::{resolve_in_repo, ResolveError};
use super::validate::Validator;
use super::{FieldError, RepoConfig, RepoConfigOutcome, CONFIG_FILE, LEGACY_CONFIG_FILE, MAX_CONFIG_BYTES};

/// What the server allows a repository configuration to ask for (`[limits]` of `ekaci.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoLimits {
    /// Jobs one configuration may declare (`[limits] max_jobs_per_repo`); more is an error.
    pub max_jobs: usize,
    /// The paths a check's `ro_bind` may name (`[checks] allowed_ro_binds`); any other is an error.
    pub allowed_ro_binds: Vec<PathBuf>,
    /// The cache ids a job's `caches` may name (`[[caches]]`); `None`: not checked.
    pub known_caches: Option<Vec<String>>,
}

impl Default for RepoLimits {
    /// The server configuration's defaults.
    fn default() -> Self {
        RepoLimits { max_jobs: 16, allowed_ro_binds: Vec::new(), known_caches: None }
    }
}

impl RepoLimits {
    /// The limits `config` sets.
    pub fn from_server(config: &crate::config::ServerConfig) -> RepoLimits {
        RepoLimits {
            max_jobs: usize::try_from(config.limits.max_jobs_per_repo).unwrap_or(usize::MAX),
            allowed_ro_binds: config.checks.allowed_ro_binds.clone(),
            known_caches: Some(config.caches.iter().map(|c| c.id.clone()).collect()),
        }
    }
}

/// [`load_limited`] with the default [`RepoLimits`].
pub fn load(checkout: &Path) -> RepoConfigOutcome {
    load_limited(checkout, RepoLimits::default())
}

/// Finds, reads and validates the configuration of the checkout at `checkout`, within `limits`.
///
/// Looks at [`CONFIG_FILE`] first and, only when it does not exist, at [`LEGACY_CONFIG_FILE`] (adding a
/// deprecation warning). The file must be a regular file inside the checkout (after resolving
/// symlinks) and at most [`MAX_CONFIG_BYTES`] long.
pub fn load_limited(checkout: &Path, limits: RepoLimits) -> RepoConfigOutcome {
    let current = PathBuf::from(CONFIG_FILE);
    let root = match fs::canonicalize(checkout) {
        Ok(root) => root,
        Err(e) => {
            return RepoConfigOutcome::Invalid {
                file: current,
                errors: vec![FieldError::new(
                    "",
                    format!("the repository checkout cannot be accessed ({})", e.kind()),
                )],
                warnings: vec![],
            }
        }
    };

    let mut warnings = Vec::new();
    let (file, path, meta) = match resolve_in_repo(&root, Path::new(CONFIG_FILE)) {
        Ok((path, meta)) => {
            if resolve_in_repo(&root, Path::new(LEGACY_CONFIG_FILE)).is_ok() {
                warnings.push(FieldError::new(
                    "",
                    format!("{LEGACY_CONFIG_FILE} is ignored because {CONFIG_FILE} exists; delete it"),
                ));
            }
            (current, path, meta)
        }
        Err(ResolveError::NotFound) => match resolve_in_repo(&root, Path::new(LEGACY_CONFIG_FILE)) {
            Ok((path, meta)) => {
                warnings.push(FieldError::new(
                    "",
                    format!("{LEGACY_CONFIG_FILE} is deprecated; move it to {CONFIG_FILE}"),
                ));
                (PathBuf::from(LEGACY_CONFIG_FILE), path, meta)
            }
            Err(ResolveError::NotFound) => return RepoConfigOutcome::NotFound,
            Err(e) => return invalid_file(PathBuf::from(LEGACY_CONFIG_FILE), e.message(), warnings),
        },
        Err(e) => return invalid_file(current, e.message(), warnings),
    };

    if !meta.is_file() {
        return invalid_file(file, "the configuration must be a regular file".into(), warnings);
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return invalid_file(file, too_large_message(), warnings);
    }
    let bytes = match read_capped(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return invalid_file(file, too_large_message(), warnings),
        Err(e) => {
            return invalid_file(
                file,
                format!("the configuration file cannot be read ({})", e.kind()),
                warnings,
            )
        }
    };

    match parse_collect(&bytes, &root, limits) {
        Ok((config, more)) => {
            warnings.extend(more);
            RepoConfigOutcome::Loaded { config, file, warnings }
        }
        Err((errors, more)) => {
            warnings.extend(more);
            RepoConfigOutcome::Invalid { file, errors, warnings }
        }
    }
}

/// Validates the bytes of a configuration file against the checkout at `checkout` (used to check
/// that job files exist inside it). Returns the configuration and its warnings, or every error.
pub fn parse(bytes: &[u8], checkout: &Path) -> Result<(RepoConfig, Vec<FieldError>), Vec<FieldError>> {
    parse_limited(bytes, checkout, RepoLimits::default())
}

/// [`parse`] within `limits`.
pub fn parse_limited(
    bytes: &[u8],
    checkout: &Path,
    limits: RepoLimits,
) -> Result<(RepoConfig, Vec<FieldError>), Vec<FieldError>> {
    parse_collect(bytes, checkout, limits).map_err(|(errors, _warnings)| errors)
}

fn invalid_file(file: PathBuf, message: String, warnings: Vec<FieldError>) -> RepoConfigOutcome {
    RepoConfigOutcome::Invalid { file, errors: vec![FieldError::new("", message)], warnings }
}

fn too_large_message() -> String {
    format!("the configuration file is larger than the 1 MiB limit ({MAX_CONFIG_BYTES} bytes)")
}

/// Reads at most [`MAX_CONFIG_BYTES`]; `None` when the file turns out to be longer.
fn read_capped(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Ok(None);
    }
    Ok(Some(bytes))
}

type Collected = Result<(RepoConfig, Vec<FieldError>), (Vec<FieldError>, Vec<FieldError>)>;

fn parse_collect(bytes: &[u8], checkout: &Path, limits: RepoLimits) -> Collected {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err((vec![FieldError::new("", too_large_message())], vec![]));
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(value) => value,
        Err(e) => return Err((vec![json_error(&e)], vec![])),
    };
    let mut v = Validator::new(fs::canonicalize(checkout).ok());
    v.max_jobs = limits.max_jobs;
    v.allowed_ro_binds = limits.allowed_ro_binds;
    v.known_caches = limits.known_caches;
    let config = v.config(&value);
    match config {
        Some(config) if v.errors.is_empty() => Ok((config, v.warnings)),
        _ => {
            if v.errors.is_empty() {
                v.errors.push(FieldError::new("", "the configuration is invalid"));
            }
            Err((v.errors, v.warnings))
        }
    }
}

fn json_error(e: &serde_json::Error) -> FieldError {
    let full = e.to_string();
    let what = match full.rsplit_once(" at line ") {
        Some((what, _)) => what.to_string(),
        None => full,
    };
    FieldError::new("", format!("invalid JSON at line {}, column {}: {what}", e.line(), e.column()))
}
