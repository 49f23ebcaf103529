//! GitHub App credentials: turning a `[[github_apps]]` entry's credential source into an App id and a
//! validated private key, loading every configured App at start-up, and picking the App that may serve
//! a repository and branch.
//!
//! Supported sources: `env` (two variables: the App id, then the PEM key), `file` and
//! `systemd-credential` (a JSON object or `KEY=value` lines with `GITHUB_APP_ID` and
//! `GITHUB_APP_PRIVATE_KEY`), `github-app-key-file` (App id from a variable, PEM from a file), and
//! `vault` and `aws-secrets-manager` (a secret with the same two keys, fetched by [`crate::credentials`]).
//! `aws-profile` and `instance-metadata` give AWS credentials, not an App key, and `cachix-token` and
//! `none` hold no key: they are refused with a clear error when the server starts. The environment is
//! read only through the `env` closure the caller passes. Errors never contain the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::jwt::{AppKey, KeyError};
use crate::config::{CredentialSource, GitHubAppConfig, Permissions, ServerConfig};

/// The variable or field holding the App id in `file`, `systemd-credential`, `vault` and
/// `aws-secrets-manager` secrets.
pub const APP_ID_KEY: &str = "GITHUB_APP_ID";
/// The variable or field holding the PEM private key in `file`, `systemd-credential`, `vault` and
/// `aws-secrets-manager` secrets.
pub const PRIVATE_KEY_KEY: &str = "GITHUB_APP_PRIVATE_KEY";
/// Credential files larger than this are refused (a PEM key is about 1.7 KiB).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// An App id and its validated private key.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    /// GitHub's App id (or client id), used as the JWT issuer. Not secret.
    pub app_id: String,
    /// The validated key; its `Debug` is redacted.
    pub key: AppKey,
}

/// A configured GitHub App, ready to authenticate.
#[derive(Debug, Clone)]
pub struct GitHubApp {
    /// The entry's `id` in `ekaci.toml` (a local name, not GitHub's App id).
    pub id: String,
    pub credentials: AppCredentials,
    pub permissions: Permissions,
}

/// Why an App's credentials could not be loaded; names the App and the source, never the secret.
#[derive(Debug, thiserror::Error)]
#[error("GitHub App `{app}` (credentials `{source_kind}`): {problem}")]
pub struct AppError {
    pub app: String,
    pub source_kind: &'static str,
    pub problem: Problem,
}

/// What went wrong while loading an App's credentials.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error(
        "credential source `{0}` cannot hold a GitHub App's id and private key; use `env`, `file`, \
         `github-app-key-file`, `systemd-credential`, `vault` or `aws-secrets-manager`"
    )]
    Unsupported(&'static str),
    #[error(
        "credential source `{0}` gives AWS credentials, not a GitHub App's id and private key: keep the \
         App's GITHUB_APP_ID and GITHUB_APP_PRIVATE_KEY in AWS Secrets Manager and use \
         `aws-secrets-manager`, which signs its request with the AWS_PROFILE profile or the instance role \
         when no AWS_* variables are set"
    )]
    AwsCredentialsOnly(&'static str),
    #[error("{0}")]
    Remote(crate::credentials::Problem),
    #[error(
        "`env` credentials of a GitHub App name two variables, the App id then the private key \
         (e.g. [\"GITHUB_APP_ID\", \"GITHUB_APP_PRIVATE_KEY\"]); {0} given"
    )]
    EnvVarCount(usize),
    #[error("environment variable {0} is not set or empty")]
    MissingEnv(String),
    #[error("CREDENTIALS_DIRECTORY is not set (is the service started with LoadCredential= for this name?)")]
    NoCredentialsDirectory,
    #[error("systemd credential name `{0}` is not a plain file name")]
    BadCredentialName(String),
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path} is larger than {MAX_SECRET_FILE} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
    #[error("{0} is missing")]
    MissingField(String),
    #[error("the App id in {0} is not a GitHub App id (digits, or the App's client id)")]
    BadAppId(String),
    #[error("private key from {origin}: {error}")]
    Key { origin: String, error: KeyError },
}

/// Loads the credentials of one `[[github_apps]]` entry.
pub fn load(config: &GitHubAppConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<GitHubApp, AppError> {
    let fail = |problem| AppError { app: config.id.clone(), source_kind: config.credentials.kind(), problem };
    let credentials = credentials_from(&config.credentials, env).map_err(fail)?;
    Ok(GitHubApp { id: config.id.clone(), credentials, permissions: config.permissions.clone() })
}

/// Loads every configured App, in configuration order; the first failure is returned. The daemon calls
/// this at start-up so that a bad or unsupported credential source stops the server early.
pub fn load_all(
    config: &ServerConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<GitHubApp>, AppError> {
    config.github_apps.iter().map(|app| load(app, env)).collect()
}

/// The first App whose permissions allow `repo` (`owner/name`) on `branch`.
pub fn pick<'a>(apps: &'a [GitHubApp], repo: &str, branch: Option<&str>) -> Option<&'a GitHubApp> {
    apps.iter().find(|app| app.permissions.allows(repo, branch))
}

fn credentials_from(
    source: &CredentialSource,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AppCredentials, Problem> {
    let get = |name: &str| {
        env(name).filter(|v| !v.trim().is_empty()).ok_or_else(|| Problem::MissingEnv(name.into()))
    };
    match source {
        CredentialSource::Env { vars } => {
            let [id_var, key_var] = vars.as_slice() else {
                return Err(Problem::EnvVarCount(vars.len()));
            };
            let app_id = check_app_id(&get(id_var)?, id_var)?;
            let key_text = get(key_var)?;
            let key = key_or_path(&key_text, &format!("environment variable {key_var}"))?;
            Ok(AppCredentials { app_id, key })
        }
        CredentialSource::File { path } => from_secret_file(path),
        CredentialSource::SystemdCredential { name } => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(Problem::BadCredentialName(name.clone()));
            }
            let dir = env("CREDENTIALS_DIRECTORY")
                .filter(|d| !d.is_empty())
                .ok_or(Problem::NoCredentialsDirectory)?;
            from_secret_file(&Path::new(&dir).join(name))
        }
        CredentialSource::GitHubAppKeyFile { app_id_env, key_file } => {
            let app_id = check_app_id(&get(app_id_env)?, app_id_env)?;
            let text = read_small(key_file)?;
            let key = AppKey::from_pem(&text)
                .map_err(|error| Problem::Key { origin: key_file.display().to_string(), error })?;
            Ok(AppCredentials { app_id, key })
        }
        CredentialSource::Vault { secret_path, .. } => {
            from_remote(source, env, &format!("the Vault secret `{secret_path}`"))
        }
        CredentialSource::AwsSecretsManager { secret_name, .. } => {
            from_remote(source, env, &format!("the Secrets Manager secret `{secret_name}`"))
        }
        CredentialSource::AwsProfile { .. } | CredentialSource::InstanceMetadata { .. } => {
            Err(Problem::AwsCredentialsOnly(source.kind()))
        }
        other => Err(Problem::Unsupported(other.kind())),
    }
}

/// A `vault` or `aws-secrets-manager` secret with [`APP_ID_KEY`] and [`PRIVATE_KEY_KEY`], fetched now
/// (start-up runs before the executor, so blocking here is fine).
fn from_remote(
    source: &CredentialSource,
    env: &dyn Fn(&str) -> Option<String>,
    what: &str,
) -> Result<AppCredentials, Problem> {
    let ctx = crate::credentials::Ctx::capture(source, env);
    let fields = crate::credentials::fetch(source, &ctx).map_err(|e| Problem::Remote(e.problem))?;
    from_fields(&|key| fields.get(key).map(|v| v.expose()), &|key| format!("{key} in {what}"))
}

/// A key given as PEM text, or (as one documentation page shows) as the path of a PEM file.
fn key_or_path(text: &str, origin: &str) -> Result<AppKey, Problem> {
    let trimmed = text.trim();
    if !trimmed.contains("-----") && trimmed.starts_with('/') && !trimmed.contains('\n') {
        let path = PathBuf::from(trimmed);
        let pem = read_small(&path)?;
        return AppKey::from_pem(&pem)
            .map_err(|error| Problem::Key { origin: path.display().to_string(), error });
    }
    AppKey::from_pem(text).map_err(|error| Problem::Key { origin: origin.to_string(), error })
}

fn check_app_id(value: &str, origin: &str) -> Result<String, Problem> {
    let v = value.trim();
    let digits = !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit());
    // GitHub also accepts the App's client id (`Iv1.…`, `Iv23…`) as the JWT issuer.
    let client_id =
        v.starts_with("Iv") && v.len() <= 40 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    if digits || client_id {
        Ok(v.to_string())
    } else {
        Err(Problem::BadAppId(origin.to_string()))
    }
}

fn read_small(path: &Path) -> Result<String, Problem> {
    let read_err = |error| Problem::Read { path: path.to_path_buf(), error };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_SECRET_FILE {
        return Err(Problem::TooLarge { path: path.to_path_buf() });
    }
    std::fs::read_to_string(path).map_err(|error| Problem::Read { path: path.to_path_buf(), error })
}

/// A `file` or `systemd-credential` secret: a JSON object or `KEY=value` lines.
fn from_secret_file(path: &Path) -> Result<AppCredentials, Problem> {
    let text = read_small(path)?;
    let fields =
        parse_secret_text(&text).map_err(|what| Problem::Format { path: path.to_path_buf(), what })?;
    from_fields(&|key| fields.get(key).map(String::as_str), &|key| format!("{key} in {}", path.display()))
}

/// The App id and key among a secret's fields; `origin` says where a field came from, for errors.
fn from_fields<'a>(
    field: &dyn Fn(&str) -> Option<&'a str>,
    origin: &dyn Fn(&str) -> String,
) -> Result<AppCredentials, Problem> {
    let app_id = field(APP_ID_KEY)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| Problem::MissingField(origin(APP_ID_KEY)))?;
    let app_id = check_app_id(app_id, &origin(APP_ID_KEY))?;
    let pem = field(PRIVATE_KEY_KEY)
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| Problem::MissingField(origin(PRIVATE_KEY_KEY)))?;
    let key = key_or_path(pem, &origin(PRIVATE_KEY_KEY))?;
    Ok(AppCredentials { app_id, key })
}

/// Parses a JSON object (string or number values) or `KEY=value` lines. A `KEY=value` value that opens
/// a PEM block continues over the following lines up to its `-----END …-----` line. Error messages
/// describe the position, never the content.
pub fn parse_secret_text(text: &str) -> Result<HashMap<String, String>, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(trimmed)
            .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
        let mut out = HashMap::new();
        for (k, v) in map {
            match v {
                serde_json::Value::String(s) => {
                    out.insert(k, s);
                }
                serde_json::Value::Number(n) => {
                    out.insert(k, n.to_string());
                }
                _ => {}
            }
        }
        return Ok(out);
    }
    let mut out = HashMap::new();
    let mut lines = trimmed.lines().enumerate();
    while let Some((no, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {} is neither `KEY=value` nor a JSON object", no + 1));
        };
        let mut value = value.trim().to_string();
        if value.trim_start_matches(['"', '\'']).starts_with("-----BEGIN") && !value.contains("-----END") {
            let mut closed = false;
            for (_, more) in lines.by_ref() {
                value.push('\n');
                value.push_str(more.trim());
                if more.contains("-----END") {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(format!(
                    "the PEM value of {} (line {}) has no `-----END` line",
                    key.trim(),
                    no + 1
                ));
            }
        }
        out.insert(key.trim().to_string(), unquote(&value).to_string());
    }
    Ok(out)
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_lines_with_multiline_pem_and_quotes() {
        let text = "# comment\nexport GITHUB_APP_ID=\"123\"\nGITHUB_APP_PRIVATE_KEY=-----BEGIN RSA PRIVATE KEY-----\nAAAA\nBBBB\n-----END RSA PRIVATE KEY-----\nOTHER='x'\n";
        let m = parse_secret_text(text).unwrap();
        assert_eq!(m["GITHUB_APP_ID"], "123");
        assert_eq!(
            m["GITHUB_APP_PRIVATE_KEY"],
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\nBBBB\n-----END RSA PRIVATE KEY-----"
        );
        assert_eq!(m["OTHER"], "x");
    }

    #[test]
    fn json_with_escapes_and_numbers() {
        let m = parse_secret_text(r#"{"GITHUB_APP_ID": 123, "GITHUB_APP_PRIVATE_KEY": "a\nb"}"#).unwrap();
        assert_eq!(m["GITHUB_APP_ID"], "123");
        assert_eq!(m["GITHUB_APP_PRIVATE_KEY"], "a\nb");
        let err = parse_secret_text("{\"GITHUB_APP_PRIVATE_KEY\": \"secretstuff").unwrap_err();
        assert!(!err.contains("secretstuff"), "{err}");
    }

    #[test]
    fn unterminated_pem_and_garbage_lines() {
        assert!(parse_secret_text("K=-----BEGIN RSA PRIVATE KEY-----\nAAAA\n")
            .unwrap_err()
            .contains("-----END"));
        assert!(parse_secret_text("just some text").unwrap_err().contains("line 1"));
    }

    #[test]
    fn app_ids() {
        assert_eq!(check_app_id(" 123456 ", "x").unwrap(), "123456");
        assert_eq!(check_app_id("Iv1.abc123", "x").unwrap(), "Iv1.abc123");
        assert!(check_app_id("-----BEGIN", "x").is_err());
        assert!(check_app_id("", "x").is_err());
    }
}
