//! Fetching secrets from the four remote credential sources: HashiCorp Vault (KV version 2), AWS Secrets
//! Manager, the EC2 instance metadata service (IMDSv2) and an AWS shared credentials profile. The other
//! sources (`env`, `file`, `systemd-credential`, `cachix-token`, `github-app-key-file`, `none`) are read
//! by their callers; [`fetch`] refuses them with [`Problem::NotRemote`].
//!
//! # The API
//!
//! ```text
//! let ctx = credentials::Ctx::capture(&source, &|k| std::env::var(k).ok());   // before the server seals
//! let vars: BTreeMap<String, Secret> = credentials::fetch(&source, &ctx)?;     // blocking: smol::unblock
//! ```
//!
//! [`Ctx::capture`] copies, once, every environment variable a fetch of that source may read (see
//! [`Ctx::variables`]); the copy is `Send + Clone` and its `Debug` is redacted, so it can be kept and moved
//! to the blocking pool after the server has dropped its secret variables. [`fetch`] blocks on HTTP
//! (ureq, no redirects followed, bounded timeouts) and returns the secret's key/value pairs, which are
//! also the environment variables a cache command gets:
//!
//! | source | request | keys returned |
//! | --- | --- | --- |
//! | `vault` | `GET {address}/v1/{mount}/data/{path}` with `X-Vault-Token` (and `X-Vault-Namespace`) | the secret's keys (`data.data`) |
//! | `aws-secrets-manager` | `POST https://secretsmanager.{region}.amazonaws.com/`, `X-Amz-Target: secretsmanager.GetSecretValue`, SigV4 | the keys of the JSON object in `SecretString` |
//! | `aws-profile` | none: `~/.aws/credentials` (or `AWS_SHARED_CREDENTIALS_FILE`), section `[profile]` | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` (if the profile has one) |
//! | `instance-metadata` | IMDSv2: `PUT /latest/api/token`, `GET /latest/meta-data/iam/security-credentials/[role]` | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` |
//!
//! Values of a Vault or Secrets Manager secret that are JSON strings are returned as they are, numbers and
//! booleans as their JSON text; `null`, objects and arrays are left out. A key that is empty or contains
//! `=` or NUL (it could not be an environment variable) is an error. Instance-metadata credentials
//! expire (after about six hours on EC2): fetch again for each use rather than keeping them.
//!
//! `vault`'s `secret_path` is split into the KV mount and the path inside it by [`vault::split_secret_path`]:
//! `MOUNT/data/PATH` (the API path the NixOS documentation shows) is taken as is; anything else is a path in
//! the default mount `secret` (`eka-ci/github-app` → `GET /v1/secret/data/eka-ci/github-app`, what
//! `vault kv put secret/eka-ci/github-app …` wrote).
//!
//! Errors ([`CredentialError`]) name the source, the request (method and URL) and what failed: the
//! transport error, or the HTTP status with the service's own error message. They never contain a
//! token, a key or a secret value.

pub mod aws;
pub mod aws_profile;
pub mod imds;
pub mod sigv4;
pub mod vault;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::CredentialSource;
use crate::secret::Secret;

pub use aws::AwsCredentials;

/// The variable holding an AWS access key id, in the environment and in the maps returned for AWS sources.
pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// The variable holding an AWS secret access key.
pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// The variable holding an AWS session token (temporary credentials).
pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// Responses larger than this are refused (a secret is a few KiB).
const MAX_BODY: u64 = 1 << 20;
/// Vault and Secrets Manager: the whole request, connection included.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(15);
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a remote credential source gave no secret: the source and what failed, never a secret value.
#[derive(Debug, thiserror::Error)]
#[error("credential source `{source_kind}`: {problem}")]
pub struct CredentialError {
    pub source_kind: &'static str,
    pub problem: Problem,
}

/// What went wrong while fetching from a remote credential source.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("`{0}` is read by its caller, not fetched by the credentials module")]
    NotRemote(&'static str),
    #[error("instance metadata provider `{0}` is not supported; only `aws` (EC2 IMDSv2) is")]
    Provider(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "no Vault token: environment variable {var} is not set or empty, and there is no token file {file}"
    )]
    NoVaultToken { var: String, file: String },
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{method} {url}: {error}")]
    Transport { method: &'static str, url: String, error: String },
    #[error("{method} {url}: HTTP {status}: {message}")]
    Status { method: &'static str, url: String, status: u16, message: String },
    #[error("{method} {url}: {what}")]
    Malformed { method: &'static str, url: String, what: String },
    #[error("no AWS region: set `region` in the source, or AWS_REGION")]
    NoRegion,
    #[error("no AWS credentials to sign the request with: {0}")]
    NoAwsCredentials(String),
    #[error("{path}: {what}")]
    File { path: PathBuf, what: String },
}

/// The environment a fetch reads, captured once (see [`Ctx::capture`]). Values are [`Secret`]s: `Debug`
/// shows the names only.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    vars: BTreeMap<String, Secret>,
}

/// Read by every AWS source that may fall back on the shared credentials file.
const AWS_FILE_VARS: [&str; 2] = ["AWS_SHARED_CREDENTIALS_FILE", "HOME"];
/// Read by every source that may ask the instance metadata service.
const IMDS_VARS: [&str; 2] = [imds::ENDPOINT_VAR, imds::DISABLED_VAR];

impl Ctx {
    /// Copies from `env` every variable [`fetch`] of `source` may read ([`Ctx::variables`]).
    pub fn capture(source: &CredentialSource, env: &dyn Fn(&str) -> Option<String>) -> Ctx {
        let mut ctx = Ctx::default();
        for name in Ctx::variables(source) {
            if let Some(value) = env(&name) {
                ctx.vars.insert(name, Secret::new(value));
            }
        }
        ctx
    }

    /// The environment variables a fetch of `source` may read:
    ///
    /// - `vault`: `token_env` (default `VAULT_TOKEN`) and `HOME` (for `~/.vault-token`);
    /// - `aws-secrets-manager`: `AWS_REGION`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`,
    ///   `AWS_ENDPOINT_URL`, and for signing `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    ///   `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_SHARED_CREDENTIALS_FILE`, `HOME`,
    ///   `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_DISABLED`;
    /// - `aws-profile`: `AWS_SHARED_CREDENTIALS_FILE`, `HOME`;
    /// - `instance-metadata`: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_DISABLED`;
    /// - any other source: none.
    pub fn variables(source: &CredentialSource) -> Vec<String> {
        let names: Vec<&str> = match source {
            CredentialSource::Vault { token_env, .. } => vec![token_env, "HOME"],
            CredentialSource::AwsSecretsManager { .. } => [
                aws::REGION_VARS.as_slice(),
                aws::ENDPOINT_VARS.as_slice(),
                &[AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, aws::PROFILE_VAR],
                AWS_FILE_VARS.as_slice(),
                IMDS_VARS.as_slice(),
            ]
            .concat(),
            CredentialSource::AwsProfile { .. } => AWS_FILE_VARS.to_vec(),
            CredentialSource::InstanceMetadata { .. } => IMDS_VARS.to_vec(),
            _ => Vec::new(),
        };
        names.into_iter().map(String::from).collect()
    }

    /// Sets one variable (tests; a caller keeping its own copy of the environment).
    pub fn with_var(mut self, name: &str, value: &str) -> Ctx {
        self.vars.insert(name.to_string(), Secret::new(value));
        self
    }

    /// The variable's value, if set and not blank.
    fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(Secret::expose).filter(|v| !v.trim().is_empty())
    }

    /// `$HOME/<rel>`, when `HOME` is set.
    fn home_file(&self, rel: &str) -> Option<PathBuf> {
        self.var("HOME").map(|home| Path::new(home).join(rel))
    }
}

/// Whether [`fetch`] handles `source` (the four remote sources).
pub fn is_remote(source: &CredentialSource) -> bool {
    matches!(
        source,
        CredentialSource::Vault { .. }
            | CredentialSource::AwsSecretsManager { .. }
            | CredentialSource::AwsProfile { .. }
            | CredentialSource::InstanceMetadata { .. }
    )
}

/// Fetches the secret of a remote source as key/value pairs (see the module documentation for what each
/// source requests and which keys it returns). Blocks: run it on the blocking pool.
pub fn fetch(source: &CredentialSource, ctx: &Ctx) -> Result<BTreeMap<String, Secret>, CredentialError> {
    let result = match source {
        CredentialSource::Vault { address, secret_path, token_env, namespace } => {
            vault::fetch(address, secret_path, token_env, namespace.as_deref(), ctx)
        }
        CredentialSource::AwsSecretsManager { secret_name, region } => {
            aws::get_secret_value(secret_name, region.as_deref(), ctx)
        }
        CredentialSource::AwsProfile { profile } => {
            aws_profile::fetch(profile, ctx).map(AwsCredentials::into_env)
        }
        CredentialSource::InstanceMetadata { provider } => {
            match provider.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
                None => imds::fetch(ctx).map(AwsCredentials::into_env),
                Some(p) if p.eq_ignore_ascii_case("aws") => imds::fetch(ctx).map(AwsCredentials::into_env),
                Some(other) => Err(Problem::Provider(other.to_string())),
            }
        }
        other => Err(Problem::NotRemote(other.kind())),
    };
    result.map_err(|problem| CredentialError { source_kind: source.kind(), problem })
}

/// The key/value pairs of a JSON object (a Vault secret's `data.data`, a Secrets Manager `SecretString`):
/// strings as they are, numbers and booleans as their JSON text, anything else left out.
fn json_pairs(
    object: serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, Secret>, String> {
    let mut out = BTreeMap::new();
    for (key, value) in object {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(format!(
                "the secret has a key that cannot be an environment variable name ({:?})",
                key.replace('\0', "\\0")
            ));
        }
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        out.insert(key, Secret::new(text));
    }
    Ok(out)
}

/// An HTTP answer: status and body (bounded).
struct Answer {
    status: u16,
    body: String,
}

/// A ureq agent that returns every status as an answer, follows no redirect (a token is never sent to
/// another host) and gives up after `timeout`. `direct` skips any proxy from the environment (the
/// link-local metadata service is never behind one).
fn agent(connect: Duration, timeout: Duration, direct: bool) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect))
        .timeout_global(Some(timeout))
        .user_agent(format!("eka-ci/{}", crate::VERSION));
    if direct {
        config = config.proxy(None);
    }
    config.build().into()
}

/// One exchange; `body` is sent with `PUT`/`POST`. The error is ureq's description (never a header).
fn exchange(
    agent: &ureq::Agent,
    method: &'static str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, Problem> {
    let transport = |error: String| Problem::Transport { method, url: url.to_string(), error };
    let result = match method {
        "GET" => headers.iter().fold(agent.get(url), |b, (k, v)| b.header(*k, *v)).call(),
        "PUT" => headers.iter().fold(agent.put(url), |b, (k, v)| b.header(*k, *v)).send(body),
        _ => headers.iter().fold(agent.post(url), |b, (k, v)| b.header(*k, *v)).send(body),
    };
    let mut response = result.map_err(|e| transport(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| transport(format!("reading the answer: {e}")))?;
    Ok(Answer { status, body })
}

/// A service's error message, bounded and on one line.
fn one_line(message: &str) -> String {
    let flat = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return "(no error message)".to_string();
    }
    match flat.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// Reads a small local file (a token file, `~/.aws/credentials`); `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, Problem> {
    let read_err = |error| Problem::Read { path: path.to_path_buf(), error };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(read_err(e)),
        Ok(meta) if meta.len() > MAX_BODY => {
            Err(Problem::File { path: path.to_path_buf(), what: format!("larger than {MAX_BODY} bytes") })
        }
        Ok(_) => std::fs::read_to_string(path).map(Some).map_err(read_err),
    }
}

/// `s` with every byte outside RFC 3986's unreserved set (and `/` when `keep_slash`) percent-encoded,
/// upper-case hex: AWS's `UriEncode`, also used for Vault paths.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    use crate::forge::github::client::percent_encode;
    if keep_slash {
        s.split('/').map(percent_encode).collect::<Vec<_>>().join("/")
    } else {
        percent_encode(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_takes_only_the_variables_the_source_reads() {
        let source = CredentialSource::Vault {
            address: "http://v".into(),
            secret_path: "p".into(),
            token_env: "MY_TOKEN".into(),
            namespace: None,
        };
        let env = |k: &str| (k == "MY_TOKEN" || k == "OTHER").then(|| format!("value-of-{k}"));
        let ctx = Ctx::capture(&source, &env);
        assert_eq!(ctx.var("MY_TOKEN"), Some("value-of-MY_TOKEN"));
        assert_eq!(ctx.var("OTHER"), None);
        assert!(!format!("{ctx:?}").contains("value-of"), "{ctx:?}");
        assert!(Ctx::variables(&CredentialSource::AwsSecretsManager {
            secret_name: "s".into(),
            region: None
        })
        .contains(&"AWS_SESSION_TOKEN".to_string()));
    }

    #[test]
    fn json_pairs_keep_scalars_and_refuse_impossible_names() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"A": "x", "N": 12, "B": true, "Z": null, "O": {"k": 1}}"#).unwrap();
        let serde_json::Value::Object(map) = v else { unreachable!() };
        let pairs = json_pairs(map).unwrap();
        let shown: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(shown, [("A", "x"), ("B", "true"), ("N", "12")]);
        let serde_json::Value::Object(bad) = serde_json::json!({"A=B": "secret-value"}) else {
            unreachable!()
        };
        let err = json_pairs(bad).unwrap_err();
        assert!(err.contains("A=B") && !err.contains("secret-value"), "{err}");
    }

    #[test]
    fn local_sources_are_not_fetched_here() {
        let err = fetch(&CredentialSource::None, &Ctx::default()).unwrap_err();
        assert!(matches!(err.problem, Problem::NotRemote("none")), "{err}");
        let err =
            fetch(&CredentialSource::InstanceMetadata { provider: Some("gcp".into()) }, &Ctx::default())
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "credential source `instance-metadata`: instance metadata provider `gcp` is not supported; only \
             `aws` (EC2 IMDSv2) is"
        );
    }

    #[test]
    fn uri_encoding_is_aws_uri_encode() {
        assert_eq!(uri_encode("a b/c~d", true), "a%20b/c~d");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("é", false), "%C3%A9");
    }
}
