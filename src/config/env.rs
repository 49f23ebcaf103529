//! Environment overrides of the server configuration (`WEBHOOK_SECRET`, `EKA_CI_*`, the OAuth
//! variables, the `GITHUB_APP_*` fallback and the `GITEA_*` / `GITLAB_*` shortcuts).
//!
//! The environment is read only through the `env` closure the loader passes; values are applied to an
//! already validated [`ServerConfig`]. Warnings never contain a variable's value.

use super::de;
use super::{ConfigError, CredentialSource, ForgeInstanceConfig, GitHubAppConfig, Permissions, ServerConfig};
use crate::forge::github::app::{APP_ID_KEY, PRIVATE_KEY_KEY};
use crate::secret::Secret;

const WEBHOOK_SECRET: &str = "WEBHOOK_SECRET";
const GITHUB_WEBHOOK_SECRET: &str = "GITHUB_WEBHOOK_SECRET";
const JWT_SECRET: &str = "JWT_SECRET";
const OAUTH_CLIENT_SECRET: &str = "GITHUB_OAUTH_CLIENT_SECRET";
/// The forges with a `{PREFIX}_TOKEN` / `{PREFIX}_DOMAIN` shortcut.
const FORGE_PREFIXES: [&str; 2] = [GITEA, GITLAB];
const GITEA: &str = "GITEA";
const GITLAB: &str = "GITLAB";

pub(super) fn apply_env(
    config: &mut ServerConfig,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());

    match (get(WEBHOOK_SECRET), get(GITHUB_WEBHOOK_SECRET)) {
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

    if let Some(v) = get(JWT_SECRET) {
        config.oauth.jwt_secret = Some(Secret::new(v));
    }
    if let Some(v) = get("GITHUB_OAUTH_CLIENT_ID") {
        config.oauth.client_id = Some(v);
    }
    if let Some(v) = get(OAUTH_CLIENT_SECRET) {
        config.oauth.client_secret = Some(Secret::new(v));
    }
    if let Some(v) = get("GITHUB_OAUTH_REDIRECT_URL") {
        config.oauth.redirect_url = Some(v);
    }

    if config.github_apps.is_empty() {
        match (get(APP_ID_KEY).is_some(), get(PRIVATE_KEY_KEY).is_some()) {
            (true, true) => config.github_apps.push(GitHubAppConfig {
                id: "default".into(),
                credentials: CredentialSource::Env { vars: vec![APP_ID_KEY.into(), PRIVATE_KEY_KEY.into()] },
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

    apply_forge_env(&mut config.gitea_instances, GITEA, "gitea_instances", &get, warnings)?;
    apply_forge_env(&mut config.gitlab_instances, GITLAB, "gitlab_instances", &get, warnings)?;
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

/// The environment variables that may hold a secret of this configuration: the fixed names read by
/// [`apply_env`] and every variable a `[[github_apps]]` or `[[caches]]` credential source names. The
/// server removes them from its own environment once start-up has read them.
pub fn secret_env_vars(config: &ServerConfig) -> Vec<String> {
    let mut vars: Vec<String> =
        [WEBHOOK_SECRET, GITHUB_WEBHOOK_SECRET, JWT_SECRET, OAUTH_CLIENT_SECRET, APP_ID_KEY, PRIVATE_KEY_KEY]
            .into_iter()
            .map(String::from)
            .chain(FORGE_PREFIXES.iter().map(|prefix| format!("{prefix}_TOKEN")))
            .collect();
    let sources =
        config.github_apps.iter().map(|a| &a.credentials).chain(config.caches.iter().map(|c| &c.credentials));
    for source in sources {
        for var in source.env_vars() {
            if !vars.iter().any(|v| v == var) {
                vars.push(var.to_string());
            }
        }
    }
    vars
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}
