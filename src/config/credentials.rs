//! Credential sources of `[[github_apps]]` and `[[caches]]` entries: the `credentials = { … }` tagged value
//! of `ekaci.toml`, with every spelling the user documentation shows.
//!
//! This module only describes *where* a secret lives (environment variable names, paths, Vault paths);
//! it never reads the secret itself. Nothing here is secret, so every type may be printed.
//!
//! Accepted forms (a table with exactly one key, or one of two strings):
//!
//! | form | variant |
//! | --- | --- |
//! | `{ env = { vars = ["A", "B"] } }` | [`CredentialSource::Env`] |
//! | `{ file = { path = "/etc/…" } }` | [`CredentialSource::File`] |
//! | `{ aws-profile = { profile = "…" } }` | [`CredentialSource::AwsProfile`] |
//! | `{ cachix-token = { env_var = "…" } }` | [`CredentialSource::CachixToken`] |
//! | `{ vault = { address, secret_path, token_env = "VAULT_TOKEN", namespace? } }` | [`CredentialSource::Vault`] |
//! | `{ aws-secrets-manager = { secret_name, region? } }` | [`CredentialSource::AwsSecretsManager`] |
//! | `{ systemd-credential = { name } }`, also `{ systemd = { credential_id } }` | [`CredentialSource::SystemdCredential`] |
//! | `"instance-metadata"`, `{ instance-metadata = {} }`, `{ instance-metadata = { provider = "aws" } }` | [`CredentialSource::InstanceMetadata`] |
//! | `{ github-app-key-file = { app_id_env, key_file } }` | [`CredentialSource::GitHubAppKeyFile`] |
//! | `"none"`, `{ none = {} }` | [`CredentialSource::None`] |
//!
//! `{ github-app-key = { app_id } }`, which one page of the documentation lists, names no private key
//! and is rejected with a message pointing at `github-app-key-file`.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Where the credentials of a GitHub App or a cache come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// The named environment variables (at least one).
    Env { vars: Vec<String> },
    /// A JSON object or `KEY=VALUE` lines in a file.
    File { path: PathBuf },
    /// A profile of `~/.aws/credentials`.
    AwsProfile { profile: String },
    /// A Cachix auth token in the named environment variable.
    CachixToken { env_var: String },
    /// A HashiCorp Vault KV secret, authenticated with the token in `token_env`.
    Vault { address: String, secret_path: String, token_env: String, namespace: Option<String> },
    /// An AWS Secrets Manager secret; `region` defaults to `AWS_REGION` at run time.
    AwsSecretsManager { secret_name: String, region: Option<String> },
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>`.
    SystemdCredential { name: String },
    /// The cloud instance's metadata service (IAM role); `provider` is a hint such as `aws`.
    InstanceMetadata { provider: Option<String> },
    /// A GitHub App: the app id in an environment variable, the PEM private key in a file.
    GitHubAppKeyFile { app_id_env: String, key_file: PathBuf },
    /// No authentication (public caches).
    None,
}

impl CredentialSource {
    /// The canonical name of the source, as written in `ekaci.toml` (`env`, `vault`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSource::Env { .. } => "env",
            CredentialSource::File { .. } => "file",
            CredentialSource::AwsProfile { .. } => "aws-profile",
            CredentialSource::CachixToken { .. } => "cachix-token",
            CredentialSource::Vault { .. } => "vault",
            CredentialSource::AwsSecretsManager { .. } => "aws-secrets-manager",
            CredentialSource::SystemdCredential { .. } => "systemd-credential",
            CredentialSource::InstanceMetadata { .. } => "instance-metadata",
            CredentialSource::GitHubAppKeyFile { .. } => "github-app-key-file",
            CredentialSource::None => "none",
        }
    }

    /// The environment variables this source names or reads a secret from (the server drops them from its
    /// own environment once start-up has read them): `aws-secrets-manager` signs with
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` when they are set.
    pub fn env_vars(&self) -> Vec<&str> {
        match self {
            CredentialSource::Env { vars } => vars.iter().map(String::as_str).collect(),
            CredentialSource::CachixToken { env_var } => vec![env_var],
            CredentialSource::Vault { token_env, .. } => vec![token_env],
            CredentialSource::GitHubAppKeyFile { app_id_env, .. } => vec![app_id_env],
            CredentialSource::AwsSecretsManager { .. } => {
                vec!["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
            }
            CredentialSource::File { .. }
            | CredentialSource::AwsProfile { .. }
            | CredentialSource::SystemdCredential { .. }
            | CredentialSource::InstanceMetadata { .. }
            | CredentialSource::None => Vec::new(),
        }
    }
}

/// Every canonical source name, in the order of the documentation.
pub const SOURCE_NAMES: [&str; 10] = [
    "env",
    "file",
    "aws-profile",
    "cachix-token",
    "vault",
    "aws-secrets-manager",
    "systemd-credential",
    "instance-metadata",
    "github-app-key-file",
    "none",
];

fn expected_list() -> String {
    SOURCE_NAMES.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

#[derive(Deserialize)]
struct EnvBody {
    #[serde(deserialize_with = "super::de::non_empty_strings")]
    vars: Vec<String>,
}

#[derive(Deserialize)]
struct FileBody {
    #[serde(deserialize_with = "super::de::non_empty_path")]
    path: PathBuf,
}

#[derive(Deserialize)]
struct AwsProfileBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    profile: String,
}

#[derive(Deserialize)]
struct CachixTokenBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    env_var: String,
}

fn default_vault_token_env() -> String {
    "VAULT_TOKEN".to_string()
}

#[derive(Deserialize)]
struct VaultBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    address: String,
    #[serde(deserialize_with = "super::de::non_empty_string")]
    secret_path: String,
    #[serde(default = "default_vault_token_env", deserialize_with = "super::de::non_empty_string")]
    token_env: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct AwsSecretsManagerBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    secret_name: String,
    #[serde(default)]
    region: Option<String>,
}

#[derive(Deserialize)]
struct SystemdCredentialBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    name: String,
}

/// The `systemd = { credential_id = "…" }` spelling of the "Server Configuration" page.
#[derive(Deserialize)]
struct SystemdAltBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    credential_id: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InstanceMetadataBody {
    provider: Option<String>,
}

#[derive(Deserialize)]
struct GitHubAppKeyFileBody {
    #[serde(deserialize_with = "super::de::non_empty_string")]
    app_id_env: String,
    #[serde(deserialize_with = "super::de::non_empty_path")]
    key_file: PathBuf,
}

#[derive(Deserialize)]
struct NoneBody {}

struct SourceVisitor;

impl SourceVisitor {
    fn wrong<E: de::Error>(found: &str) -> E {
        // The value itself is never echoed: a misplaced token must not end up in a log.
        E::custom(format!(
            "expected a credential source (a table with one key such as `env`, `file` or `vault`, or the \
             string \"instance-metadata\" or \"none\"), found {found}"
        ))
    }
}

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = CredentialSource;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a credential source")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match v {
            "instance-metadata" => Ok(CredentialSource::InstanceMetadata { provider: None }),
            "none" => Ok(CredentialSource::None),
            _ => Err(E::custom(
                "a credential source given as a string must be \"instance-metadata\" or \"none\"; other \
                 sources are tables such as `{ env = { vars = [\"…\"] } }`",
            )),
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(Self::wrong("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(Self::wrong("an integer"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(Self::wrong("an integer"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(Self::wrong("a float"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(Self::wrong("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!(
                "empty credentials table: name one source ({}), e.g. `none = {{}}`",
                expected_list()
            )));
        };
        let source = match key.as_str() {
            "env" => {
                let b: EnvBody = map.next_value()?;
                CredentialSource::Env { vars: b.vars }
            }
            "file" => {
                let b: FileBody = map.next_value()?;
                CredentialSource::File { path: b.path }
            }
            "aws-profile" => {
                let b: AwsProfileBody = map.next_value()?;
                CredentialSource::AwsProfile { profile: b.profile }
            }
            "cachix-token" => {
                let b: CachixTokenBody = map.next_value()?;
                CredentialSource::CachixToken { env_var: b.env_var }
            }
            "vault" => {
                let b: VaultBody = map.next_value()?;
                CredentialSource::Vault {
                    address: b.address,
                    secret_path: b.secret_path,
                    token_env: b.token_env,
                    namespace: b.namespace,
                }
            }
            "aws-secrets-manager" => {
                let b: AwsSecretsManagerBody = map.next_value()?;
                CredentialSource::AwsSecretsManager { secret_name: b.secret_name, region: b.region }
            }
            "systemd-credential" => {
                let b: SystemdCredentialBody = map.next_value()?;
                CredentialSource::SystemdCredential { name: b.name }
            }
            "systemd" => {
                let b: SystemdAltBody = map.next_value()?;
                CredentialSource::SystemdCredential { name: b.credential_id }
            }
            "instance-metadata" => {
                let b: InstanceMetadataBody = map.next_value()?;
                CredentialSource::InstanceMetadata { provider: b.provider }
            }
            "github-app-key-file" => {
                let b: GitHubAppKeyFileBody = map.next_value()?;
                CredentialSource::GitHubAppKeyFile { app_id_env: b.app_id_env, key_file: b.key_file }
            }
            "none" => {
                let _: NoneBody = map.next_value()?;
                CredentialSource::None
            }
            "github-app-key" => {
                return Err(de::Error::custom(
                    "`github-app-key` is not a supported credential source (it names no private key); use \
                     `github-app-key-file = { app_id_env = \"GITHUB_APP_ID\", key_file = \"/path/to/key.pem\" }` \
                     or another source",
                ))
            }
            other => {
                return Err(de::Error::custom(format!(
                    "unknown credential source `{other}`; expected one of {}",
                    expected_list()
                )))
            }
        };
        if let Some(extra) = map.next_key::<String>()? {
            return Err(de::Error::custom(format!(
                "a credentials table names exactly one source, found `{key}` and `{extra}`"
            )));
        }
        Ok(source)
    }
}

impl<'de> Deserialize<'de> for CredentialSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}
