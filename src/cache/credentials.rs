//! A cache's credentials as environment variables for its push command: [`cache_env`] turns a
//! [`CredentialSource`] into `(NAME, Secret)` pairs, read once at start-up (before the server drops the
//! variables it names from its own environment, `daemon/seal.rs`).
//!
//! | source | variables |
//! | --- | --- |
//! | `env = { vars }` | each named variable, as the server had it (a missing one is an error) |
//! | `file = { path }` | a JSON object of strings, or `KEY=VALUE` lines (`#` comments and blank lines skipped) |
//! | `systemd-credential = { name }` | the file `$CREDENTIALS_DIRECTORY/<name>`, read like `file` |
//! | `cachix-token = { env_var }` | `CACHIX_AUTH_TOKEN`, from the named variable |
//! | `none` | nothing |
//! | `vault`, `aws-secrets-manager`, `instance-metadata`, `aws-profile` | fetched by [`crate::credentials::fetch`]: the secret's keys, or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` |
//!
//! The four remote sources are fetched once at start-up (a cache whose secret cannot be fetched stops the
//! start, naming it) and again before every push ([`RemoteCredentials`]), so rotated Vault secrets and
//! expiring instance-role credentials are always current.
//!
//! Values are [`Secret`]s: they reach only the push command's environment, never its argv, a log line,
//! an error message or a stored record. Errors name the source and the variable or file, never a value.

use std::path::{Path, PathBuf};

use crate::config::CredentialSource;
use crate::secret::Secret;

/// The variable the Cachix client reads its token from.
pub const CACHIX_AUTH_TOKEN: &str = "CACHIX_AUTH_TOKEN";

/// Why a cache's credentials could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("environment variable {0} is not set (or not valid UTF-8)")]
    MissingVar(String),
    #[error("cannot read the credential file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("credential file {path}, line {line}: expected KEY=VALUE")]
    BadLine { path: PathBuf, line: usize },
    #[error("credential file {path}: a JSON credential file must be an object of strings")]
    BadJson { path: PathBuf },
    #[error("credential file {path}: {name:?} is not a valid environment variable name")]
    BadName { path: PathBuf, name: String },
    #[error("systemd-credential {name}: CREDENTIALS_DIRECTORY is not set (is the server run by systemd with LoadCredential=?)")]
    NoCredentialsDirectory { name: String },
    #[error(transparent)]
    Remote(#[from] crate::credentials::CredentialError),
    #[error("credential source `{0}` is for GitHub Apps, not caches")]
    NotForCaches(&'static str),
}

/// The environment variables `source` provides to a push command, reading variables through `env`.
pub fn cache_env(
    source: &CredentialSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Secret)>, CredentialError> {
    match source {
        CredentialSource::Env { vars } => vars
            .iter()
            .map(|v| {
                env(v)
                    .map(|value| (v.clone(), Secret::new(value)))
                    .ok_or_else(|| CredentialError::MissingVar(v.clone()))
            })
            .collect(),
        CredentialSource::File { path } => read_file(path),
        CredentialSource::SystemdCredential { name } => {
            let dir = env("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| CredentialError::NoCredentialsDirectory { name: name.clone() })?;
            read_file(&Path::new(&dir).join(name))
        }
        CredentialSource::CachixToken { env_var } => {
            let token = env(env_var).ok_or_else(|| CredentialError::MissingVar(env_var.clone()))?;
            Ok(vec![(CACHIX_AUTH_TOKEN.to_string(), Secret::new(token))])
        }
        CredentialSource::None => Ok(Vec::new()),
        CredentialSource::Vault { .. }
        | CredentialSource::AwsSecretsManager { .. }
        | CredentialSource::InstanceMetadata { .. }
        | CredentialSource::AwsProfile { .. } => RemoteCredentials::capture(source, env).fetch(),
        CredentialSource::GitHubAppKeyFile { .. } => {
            Err(CredentialError::NotForCaches("github-app-key-file"))
        }
    }
}

/// A remote source and the environment variables its fetch reads, captured before the server sealed its
/// environment; [`RemoteCredentials::fetch`] blocks on HTTP (run it on the blocking pool).
#[derive(Debug, Clone)]
pub struct RemoteCredentials {
    source: CredentialSource,
    ctx: crate::credentials::Ctx,
}

impl RemoteCredentials {
    /// `Some` for the four remote sources.
    pub fn of(source: &CredentialSource, env: &dyn Fn(&str) -> Option<String>) -> Option<RemoteCredentials> {
        crate::credentials::is_remote(source).then(|| RemoteCredentials::capture(source, env))
    }

    fn capture(source: &CredentialSource, env: &dyn Fn(&str) -> Option<String>) -> RemoteCredentials {
        RemoteCredentials { source: source.clone(), ctx: crate::credentials::Ctx::capture(source, env) }
    }

    /// The secret's key/value pairs, fetched now.
    pub fn fetch(&self) -> Result<Vec<(String, Secret)>, CredentialError> {
        Ok(crate::credentials::fetch(&self.source, &self.ctx)?.into_iter().collect())
    }
}

/// Whether `name` can be an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A credential file: a JSON object of strings, else `KEY=VALUE` lines.
fn read_file(path: &Path) -> Result<Vec<(String, Secret)>, CredentialError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CredentialError::Read { path: path.to_path_buf(), source })?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<Vec<(String, Secret)>, CredentialError> {
    let check = |name: &str| {
        if valid_name(name) {
            Ok(())
        } else {
            Err(CredentialError::BadName { path: path.to_path_buf(), name: name.to_string() })
        }
    };
    if text.trim_start().starts_with('{') {
        let bad = || CredentialError::BadJson { path: path.to_path_buf() };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|_| bad())?;
        let obj = value.as_object().ok_or_else(bad)?;
        let mut out = Vec::with_capacity(obj.len());
        for (k, v) in obj {
            check(k)?;
            out.push((k.clone(), Secret::new(v.as_str().ok_or_else(bad)?)));
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) =
            line.split_once('=').ok_or(CredentialError::BadLine { path: path.to_path_buf(), line: i + 1 })?;
        let k = k.trim();
        check(k)?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), Secret::new(v)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn shown(v: &[(String, Secret)]) -> Vec<(String, String)> {
        v.iter().map(|(k, s)| (k.clone(), s.expose().to_string())).collect()
    }

    #[test]
    fn env_and_cachix_token() {
        let env = env_of(&[("A", "1"), ("TOK", "t0k")]);
        let got = cache_env(&CredentialSource::Env { vars: vec!["A".into()] }, &env).unwrap();
        assert_eq!(shown(&got), [("A".to_string(), "1".to_string())]);
        let err = cache_env(&CredentialSource::Env { vars: vec!["B".into()] }, &env).unwrap_err();
        assert_eq!(err.to_string(), "environment variable B is not set (or not valid UTF-8)");
        let got = cache_env(&CredentialSource::CachixToken { env_var: "TOK".into() }, &env).unwrap();
        assert_eq!(shown(&got), [("CACHIX_AUTH_TOKEN".to_string(), "t0k".to_string())]);
        assert!(cache_env(&CredentialSource::None, &env).unwrap().is_empty());
    }

    #[test]
    fn files_lines_json_and_systemd() {
        let dir = std::env::temp_dir().join(format!("eka-ci-cred-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("lines"), "# c\nAWS_ACCESS_KEY_ID=AKIA\n\nexport SECRET=\"s=3\"\n").unwrap();
        std::fs::write(dir.join("json"), r#"{"K1":"v1","K2":"v2"}"#).unwrap();
        std::fs::write(dir.join("bad"), "no equals sign hunter2\n").unwrap();
        let got = cache_env(&CredentialSource::File { path: dir.join("lines") }, &|_| None).unwrap();
        assert_eq!(
            shown(&got),
            [
                ("AWS_ACCESS_KEY_ID".to_string(), "AKIA".to_string()),
                ("SECRET".to_string(), "s=3".to_string())
            ]
        );
        let dir_s = dir.display().to_string();
        let env = move |k: &str| (k == "CREDENTIALS_DIRECTORY").then(|| dir_s.clone());
        let got = cache_env(&CredentialSource::SystemdCredential { name: "json".into() }, &env).unwrap();
        assert_eq!(shown(&got), [("K1".to_string(), "v1".to_string()), ("K2".to_string(), "v2".to_string())]);
        let err = cache_env(&CredentialSource::File { path: dir.join("bad") }, &|_| None).unwrap_err();
        assert!(err.to_string().ends_with("line 1: expected KEY=VALUE"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn remote_sources_are_fetched_and_their_failures_name_the_source() {
        // No VAULT_TOKEN and no ~/.vault-token under this HOME: the fetch stops before any request.
        let vault = CredentialSource::Vault {
            address: "http://127.0.0.1:9".into(),
            secret_path: "p".into(),
            token_env: "VAULT_TOKEN".into(),
            namespace: None,
        };
        let err = cache_env(&vault, &|k| (k == "HOME").then(|| "/nonexistent".to_string())).unwrap_err();
        assert!(err.to_string().starts_with("credential source `vault`"), "{err}");
        let profile = CredentialSource::AwsProfile { profile: "p".into() };
        assert!(RemoteCredentials::of(&profile, &|_| None).is_some());
        assert!(RemoteCredentials::of(&CredentialSource::None, &|_| None).is_none());
    }
}
