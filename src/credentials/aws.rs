//! AWS credentials and AWS Secrets Manager: the credentials to sign with (environment, then a shared
//! credentials profile, then the instance metadata service, as the AWS SDKs look for them) and
//! `GetSecretValue` over the JSON 1.1 protocol, signed with SigV4 ([`super::sigv4`]).
//!
//! The request: `POST {endpoint}/` with `Content-Type: application/x-amz-json-1.1`,
//! `X-Amz-Target: secretsmanager.GetSecretValue`, `X-Amz-Date`, `X-Amz-Security-Token` (temporary
//! credentials only), the body `{"SecretId":"<secret_name>"}` and an `Authorization` header signing
//! `content-type;host;x-amz-date;[x-amz-security-token;]x-amz-target` and the body for service
//! `secretsmanager` in the region. The endpoint is `https://secretsmanager.{region}.amazonaws.com`
//! (`….amazonaws.com.cn` in `cn-` regions) unless `AWS_ENDPOINT_URL_SECRETS_MANAGER` or else
//! `AWS_ENDPOINT_URL` names another, as the SDKs' "service-specific endpoints" setting does.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{sigv4, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN};
use super::{Ctx, Problem};
use crate::secret::Secret;

/// Where the region comes from when the source names none, in order.
pub(super) const REGION_VARS: [&str; 2] = ["AWS_REGION", "AWS_DEFAULT_REGION"];
/// Endpoint overrides, in order of precedence.
pub(super) const ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL"];
/// The profile the signing credentials are read from when none of the AWS variables is set.
pub(super) const PROFILE_VAR: &str = "AWS_PROFILE";

const TARGET: &str = "secretsmanager.GetSecretValue";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// AWS credentials. The `Debug` of every field is redacted.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// Present for temporary credentials (instance roles, `aws sts`).
    pub session_token: Option<Secret>,
}

impl AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and, when there is one, `AWS_SESSION_TOKEN`.
    pub fn into_env(self) -> BTreeMap<String, Secret> {
        let mut out = BTreeMap::new();
        out.insert(AWS_ACCESS_KEY_ID.to_string(), self.access_key_id);
        out.insert(AWS_SECRET_ACCESS_KEY.to_string(), self.secret_access_key);
        if let Some(token) = self.session_token {
            out.insert(AWS_SESSION_TOKEN.to_string(), token);
        }
        out
    }
}

/// The credentials to sign with: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
/// else the profile `AWS_PROFILE` (default `default`) of the shared credentials file; else the instance
/// metadata service. A profile named by `AWS_PROFILE` that does not exist is an error, not a fall-through.
pub fn signing_credentials(ctx: &Ctx) -> Result<AwsCredentials, Problem> {
    match (ctx.var(AWS_ACCESS_KEY_ID), ctx.var(AWS_SECRET_ACCESS_KEY)) {
        (Some(id), Some(secret)) => {
            return Ok(AwsCredentials {
                access_key_id: Secret::new(id.trim()),
                secret_access_key: Secret::new(secret.trim()),
                session_token: ctx.var(AWS_SESSION_TOKEN).map(|t| Secret::new(t.trim())),
            })
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Problem::NoAwsCredentials(format!(
                "only one of {AWS_ACCESS_KEY_ID} and {AWS_SECRET_ACCESS_KEY} is set"
            )))
        }
        (None, None) => {}
    }
    let named = ctx.var(PROFILE_VAR).map(str::trim);
    let profile = named.unwrap_or("default");
    let file_note = match super::aws_profile::lookup(profile, ctx)? {
        super::aws_profile::Lookup::Found(creds) => return Ok(creds),
        super::aws_profile::Lookup::NoProfile(path) if named.is_some() => {
            return Err(Problem::File {
                path,
                what: format!("no profile [{profile}] (named by {PROFILE_VAR})"),
            })
        }
        super::aws_profile::Lookup::NoProfile(path) => {
            format!("no profile [{profile}] in {}", path.display())
        }
        super::aws_profile::Lookup::NoFile(Some(path)) => format!("{} does not exist", path.display()),
        super::aws_profile::Lookup::NoFile(None) => "HOME is not set".to_string(),
    };
    super::imds::fetch(ctx).map_err(|imds| {
        Problem::NoAwsCredentials(format!(
            "{AWS_ACCESS_KEY_ID} is not set; {file_note}; instance metadata: {imds}"
        ))
    })
}

/// The region: the source's, else `AWS_REGION`, else `AWS_DEFAULT_REGION`. Only letters, digits and `-`.
fn region(configured: Option<&str>, ctx: &Ctx) -> Result<String, Problem> {
    let region = configured
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .or_else(|| REGION_VARS.iter().find_map(|v| ctx.var(v)).map(str::trim))
        .ok_or(Problem::NoRegion)?;
    if !region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Problem::Config(format!("`{region}` is not an AWS region name")));
    }
    Ok(region.to_string())
}

/// The endpoint URL (no trailing `/`) and the `Host` header value for it.
fn endpoint(region: &str, ctx: &Ctx) -> Result<(String, String), Problem> {
    let url = match ENDPOINT_VARS.iter().find_map(|v| ctx.var(v)) {
        Some(url) => url.trim().trim_end_matches('/').to_string(),
        None if region.starts_with("cn-") => format!("https://secretsmanager.{region}.amazonaws.com.cn"),
        None => format!("https://secretsmanager.{region}.amazonaws.com"),
    };
    let bad =
        || Problem::Config(format!("the Secrets Manager endpoint `{url}` is not an http(s) URL with a host"));
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).ok_or_else(bad)?;
    if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
        return Err(bad());
    }
    // The Host header as the request line's authority: a default port is left out.
    let host = rest
        .strip_suffix(if url.starts_with("https://") { ":443" } else { ":80" })
        .unwrap_or(rest)
        .to_ascii_lowercase();
    Ok((url, host))
}

/// `GetSecretValue` of `secret_name`: the key/value pairs of the JSON object in its `SecretString`.
pub fn get_secret_value(
    secret_name: &str,
    region: Option<&str>,
    ctx: &Ctx,
) -> Result<BTreeMap<String, Secret>, Problem> {
    let region = self::region(region, ctx)?;
    let (url, host) = endpoint(&region, ctx)?;
    let url = format!("{url}/");
    let creds = signing_credentials(ctx)?;
    let body = serde_json::json!({ "SecretId": secret_name }).to_string();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (date, stamp) = sigv4::amz_dates(now);
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", CONTENT_TYPE),
        ("Host", &host),
        ("X-Amz-Date", &stamp),
        ("X-Amz-Target", TARGET),
    ];
    if let Some(token) = &creds.session_token {
        headers.push(("X-Amz-Security-Token", token.expose()));
    }
    let scope = sigv4::Scope { date: &date, region: &region, service: "secretsmanager" };
    let request =
        sigv4::Request { method: "POST", path: "/", query: &[], headers: &headers, payload: body.as_bytes() };
    let authorization = sigv4::authorization(
        creds.access_key_id.expose(),
        creds.secret_access_key.expose(),
        &scope,
        &stamp,
        &request,
    );
    headers.push(("Authorization", &authorization));
    let agent = super::agent(super::SERVICE_CONNECT_TIMEOUT, super::SERVICE_TIMEOUT, false);
    let answer = super::exchange(&agent, "POST", &url, &headers, body.as_bytes())?;
    let malformed =
        |what: &str| Problem::Malformed { method: "POST", url: url.clone(), what: what.to_string() };
    if answer.status != 200 {
        return Err(Problem::Status {
            method: "POST",
            url: url.clone(),
            status: answer.status,
            message: error_message(&answer.body),
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(&answer.body).map_err(|_| malformed("the GetSecretValue answer is not JSON"))?;
    let Some(text) = value.get("SecretString").and_then(serde_json::Value::as_str) else {
        return Err(malformed(if value.get("SecretBinary").is_some() {
            "the secret is binary (SecretBinary); store its key/value pairs as a JSON object in SecretString"
        } else {
            "the GetSecretValue answer has no SecretString"
        }));
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => super::json_pairs(map).map_err(|what| malformed(&what)),
        _ => Err(malformed("SecretString is not a JSON object of key/value pairs")),
    }
}

/// An AWS JSON-protocol error: `__type` (without its namespace) and `message` (or `Message`).
fn error_message(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return super::one_line(body);
    };
    let kind = v.get("__type").and_then(|t| t.as_str()).map(|t| t.rsplit('#').next().unwrap_or(t));
    let message = ["message", "Message"].iter().find_map(|k| v.get(*k).and_then(|m| m.as_str()));
    match (kind, message) {
        (Some(k), Some(m)) => super::one_line(&format!("{k}: {m}")),
        (Some(k), None) => k.to_string(),
        (None, Some(m)) => super::one_line(m),
        (None, None) => super::one_line(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_endpoints() {
        let ctx = Ctx::default().with_var("AWS_DEFAULT_REGION", "eu-west-1");
        assert_eq!(region(None, &ctx).unwrap(), "eu-west-1");
        assert_eq!(region(Some("us-east-2"), &ctx).unwrap(), "us-east-2");
        assert!(matches!(region(None, &Ctx::default()), Err(Problem::NoRegion)));
        assert!(region(Some("us east"), &ctx).is_err());
        assert_eq!(
            endpoint("us-east-1", &Ctx::default()).unwrap(),
            (
                "https://secretsmanager.us-east-1.amazonaws.com".into(),
                "secretsmanager.us-east-1.amazonaws.com".into()
            )
        );
        assert_eq!(
            endpoint("cn-north-1", &Ctx::default()).unwrap().1,
            "secretsmanager.cn-north-1.amazonaws.com.cn"
        );
        let local = Ctx::default().with_var("AWS_ENDPOINT_URL", "http://127.0.0.1:4566/");
        assert_eq!(endpoint("x", &local).unwrap(), ("http://127.0.0.1:4566".into(), "127.0.0.1:4566".into()));
        let both = local.with_var("AWS_ENDPOINT_URL_SECRETS_MANAGER", "https://sm.example:443");
        assert_eq!(endpoint("x", &both).unwrap().1, "sm.example");
        assert!(endpoint("x", &Ctx::default().with_var("AWS_ENDPOINT_URL", "ftp://x")).is_err());
    }

    #[test]
    fn error_messages_of_the_json_protocol() {
        assert_eq!(
            error_message(
                r#"{"__type":"ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#
            ),
            "ResourceNotFoundException: Secrets Manager can't find the specified secret."
        );
        assert_eq!(
            error_message(r#"{"__type":"com.amazon.coral#AccessDeniedException"}"#),
            "AccessDeniedException"
        );
        assert_eq!(error_message(""), "(no error message)");
    }

    #[test]
    fn environment_credentials_come_first_and_half_a_pair_is_an_error() {
        let ctx = Ctx::default().with_var(AWS_ACCESS_KEY_ID, "AKID").with_var(AWS_SECRET_ACCESS_KEY, "s");
        let creds = signing_credentials(&ctx).unwrap();
        assert_eq!(creds.access_key_id.expose(), "AKID");
        assert!(creds.session_token.is_none());
        let half = Ctx::default().with_var(AWS_ACCESS_KEY_ID, "AKID");
        assert!(signing_credentials(&half).unwrap_err().to_string().contains("only one of"));
    }
}
