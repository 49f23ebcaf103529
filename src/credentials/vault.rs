//! HashiCorp Vault, KV secrets engine version 2: "Read secret version" of the API,
//! `GET {address}/v1/{mount}/data/{path}` with `X-Vault-Token` and, when configured,
//! `X-Vault-Namespace`. The answer `{"data": {"data": {…}, "metadata": {…}}}` gives the secret's
//! key/value pairs; an error answer `{"errors": […]}` (403 permission denied, 404 no such secret) gives
//! the message.
//!
//! The token is the value of the environment variable `token_env` (default `VAULT_TOKEN`); when that is
//! not set, the file `~/.vault-token`, where `vault login` and Vault Agent's default sink keep it.

use std::collections::BTreeMap;

use super::{Ctx, Problem};
use crate::secret::Secret;

/// The KV mount a `secret_path` without `/data/` is read from (Vault's default KV version 2 mount).
pub const DEFAULT_MOUNT: &str = "secret";
/// The token file used when the token variable is not set, relative to `HOME`.
pub const TOKEN_FILE: &str = ".vault-token";

/// Splits `secret_path` into the KV mount and the path inside it: `MOUNT/data/PATH` is taken as the API
/// path it is (`secret/data/eka-ci/s3-cache` → `secret`, `eka-ci/s3-cache`); anything else is a path in
/// [`DEFAULT_MOUNT`] (`eka-ci/github-app` → `secret`, `eka-ci/github-app`). Leading and trailing `/` are
/// ignored; empty segments, `.` and `..` are refused.
pub fn split_secret_path(secret_path: &str) -> Result<(String, String), Problem> {
    let trimmed = secret_path.trim().trim_matches('/');
    let segments: Vec<&str> = trimmed.split('/').collect();
    if trimmed.is_empty() || segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(Problem::Config(format!(
            "`secret_path` `{secret_path}` is not a Vault path (`eka-ci/github-app`, or `MOUNT/data/PATH`)"
        )));
    }
    if segments.len() >= 3 && segments[1] == "data" {
        return Ok((segments[0].to_string(), segments[2..].join("/")));
    }
    Ok((DEFAULT_MOUNT.to_string(), trimmed.to_string()))
}

/// The request URL for `address` and `secret_path`.
pub fn secret_url(address: &str, secret_path: &str) -> Result<String, Problem> {
    let address = address.trim().trim_end_matches('/');
    let rest = address.strip_prefix("https://").or_else(|| address.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', '@'])) {
        return Err(Problem::Config(format!(
            "the Vault address `{address}` is not an http(s) URL such as `https://vault.example.com:8200`"
        )));
    }
    let (mount, path) = split_secret_path(secret_path)?;
    Ok(format!("{address}/v1/{}/data/{}", super::uri_encode(&mount, true), super::uri_encode(&path, true)))
}

/// The token: `token_env`'s value, else `~/.vault-token`.
fn token(token_env: &str, ctx: &Ctx) -> Result<Secret, Problem> {
    let token = match ctx.var(token_env) {
        Some(t) => Secret::new(t.trim()),
        None => {
            let file = ctx.home_file(TOKEN_FILE);
            let text = match &file {
                Some(path) => super::read_optional(path)?,
                None => None,
            };
            match text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
                Some(t) => Secret::new(t),
                None => {
                    return Err(Problem::NoVaultToken {
                        var: token_env.to_string(),
                        file: file.map_or_else(
                            || format!("(HOME is not set: ~/{TOKEN_FILE})"),
                            |p| p.display().to_string(),
                        ),
                    })
                }
            }
        }
    };
    if !token.expose().bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::Config(format!(
            "the Vault token (from {token_env} or ~/{TOKEN_FILE}) contains characters an HTTP header cannot carry"
        )));
    }
    Ok(token)
}

/// Reads the secret: its key/value pairs (`data.data`).
pub fn fetch(
    address: &str,
    secret_path: &str,
    token_env: &str,
    namespace: Option<&str>,
    ctx: &Ctx,
) -> Result<BTreeMap<String, Secret>, Problem> {
    let url = secret_url(address, secret_path)?;
    let token = token(token_env, ctx)?;
    let mut headers = vec![("X-Vault-Token", token.expose())];
    let namespace = namespace.map(str::trim).filter(|n| !n.is_empty());
    if let Some(ns) = namespace {
        headers.push(("X-Vault-Namespace", ns));
    }
    let agent = super::agent(super::SERVICE_CONNECT_TIMEOUT, super::SERVICE_TIMEOUT, false);
    let answer = super::exchange(&agent, "GET", &url, &headers, b"")?;
    let malformed =
        |what: &str| Problem::Malformed { method: "GET", url: url.clone(), what: what.to_string() };
    let parsed: Option<serde_json::Value> = serde_json::from_str(&answer.body).ok();
    if answer.status != 200 {
        let errors: Vec<String> = parsed
            .as_ref()
            .and_then(|v| v.get("errors"))
            .and_then(serde_json::Value::as_array)
            .map(|a| a.iter().filter_map(|e| e.as_str()).map(super::one_line).collect())
            .unwrap_or_default();
        let message = match (errors.is_empty(), answer.status) {
            (false, _) => errors.join("; "),
            (true, 404) => "no secret at this path (or the mount is not a KV version 2 engine)".to_string(),
            (true, _) if parsed.is_some() => "(no error message)".to_string(),
            (true, _) => super::one_line(&answer.body),
        };
        return Err(Problem::Status { method: "GET", url, status: answer.status, message });
    }
    let Some(v) = parsed else { return Err(malformed("the answer is not JSON")) };
    match v.get("data").and_then(|d| d.get("data")) {
        Some(serde_json::Value::Object(map)) => {
            super::json_pairs(map.clone()).map_err(|what| malformed(&what))
        }
        Some(serde_json::Value::Null) => {
            Err(malformed("the secret's current version is deleted or destroyed"))
        }
        _ => Err(malformed("the answer has no `data.data` object (is the mount a KV version 2 engine?)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths_split_into_mount_and_path() {
        let split = |p: &str| split_secret_path(p).map_err(|e| e.to_string());
        assert_eq!(split("eka-ci/github-app").unwrap(), ("secret".into(), "eka-ci/github-app".into()));
        assert_eq!(
            split("secret/data/eka-ci/s3-cache").unwrap(),
            ("secret".into(), "eka-ci/s3-cache".into())
        );
        assert_eq!(split("/kv/data/team/app/").unwrap(), ("kv".into(), "team/app".into()));
        assert_eq!(split("single").unwrap(), ("secret".into(), "single".into()));
        assert_eq!(split("a/data").unwrap(), ("secret".into(), "a/data".into()));
        for bad in ["", "/", "a//b", "a/../b"] {
            assert!(split(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            secret_url("https://vault.example.com:8200/", "eka-ci/github app").unwrap(),
            "https://vault.example.com:8200/v1/secret/data/eka-ci/github%20app"
        );
        assert!(secret_url("vault.example.com", "x").is_err());
        assert!(secret_url("https://", "x").is_err());
    }

    #[test]
    fn the_token_comes_from_the_variable_then_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        let err = token("VAULT_TOKEN", &Ctx::default().with_var("HOME", home)).unwrap_err().to_string();
        assert!(err.contains("VAULT_TOKEN is not set") && err.contains(".vault-token"), "{err}");
        std::fs::write(dir.path().join(".vault-token"), "hvs.from-file\n").unwrap();
        let ctx = Ctx::default().with_var("HOME", home);
        assert_eq!(token("VAULT_TOKEN", &ctx).unwrap().expose(), "hvs.from-file");
        let ctx = ctx.with_var("VAULT_TOKEN", "hvs.from-env");
        assert_eq!(token("VAULT_TOKEN", &ctx).unwrap().expose(), "hvs.from-env");
        let bad = Ctx::default().with_var("T", "a\nb");
        let err = token("T", &bad).unwrap_err().to_string();
        assert!(!err.contains("a\nb"), "{err}");
    }
}
