//! The EC2 instance metadata service, version 2 (session tokens): the instance role's temporary AWS
//! credentials.
//!
//! 1. `PUT {endpoint}/latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 21600` → a token;
//! 2. `GET {endpoint}/latest/meta-data/iam/security-credentials/` with `X-aws-ec2-metadata-token` → the
//!    role name (the first line);
//! 3. `GET {endpoint}/latest/meta-data/iam/security-credentials/{role}` with the token → JSON with `Code`
//!    (`Success`), `AccessKeyId`, `SecretAccessKey`, `Token` and `Expiration`.
//!
//! The endpoint is `http://169.254.169.254` unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` names another (as
//! the AWS SDKs document); `AWS_EC2_METADATA_DISABLED=true` turns the service off. Timeouts are short (1 s
//! to connect, 3 s per request) and no proxy is used, so a host that is not on EC2 fails quickly.

use std::time::Duration;

use super::aws::AwsCredentials;
use super::{Ctx, Problem};
use crate::secret::Secret;

/// Overrides the metadata service's address.
pub const ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// `true` disables the metadata service.
pub const DISABLED_VAR: &str = "AWS_EC2_METADATA_DISABLED";
/// The link-local address EC2 serves it on.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Lifetime asked for the session token, in seconds (the SDKs' value; at most 21600).
pub const TOKEN_TTL_SECONDS: &str = "21600";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// The instance role's credentials.
pub fn fetch(ctx: &Ctx) -> Result<AwsCredentials, Problem> {
    if ctx.var(DISABLED_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Err(Problem::Config(format!(
            "the instance metadata service is disabled ({DISABLED_VAR}=true)"
        )));
    }
    let endpoint = ctx.var(ENDPOINT_VAR).unwrap_or(DEFAULT_ENDPOINT).trim().trim_end_matches('/').to_string();
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(Problem::Config(format!("{ENDPOINT_VAR} `{endpoint}` is not an http(s) URL")));
    }
    let agent = super::agent(CONNECT_TIMEOUT, REQUEST_TIMEOUT, true);

    let url = format!("{endpoint}/latest/api/token");
    let answer = super::exchange(
        &agent,
        "PUT",
        &url,
        &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)],
        b"",
    )?;
    let token = ok_body("PUT", &url, answer)?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::Malformed {
            method: "PUT",
            url,
            what: "the session token is empty or not printable".into(),
        });
    }
    let with_token = [("X-aws-ec2-metadata-token", token)];

    let url = format!("{endpoint}{CREDENTIALS_PATH}");
    let answer = super::exchange(&agent, "GET", &url, &with_token, b"")?;
    if answer.status == 404 {
        return Err(Problem::Status {
            method: "GET",
            url,
            status: 404,
            message: "no IAM role is attached to this instance".into(),
        });
    }
    let roles = ok_body("GET", &url, answer)?;
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err(Problem::Malformed { method: "GET", url, what: "no role name in the answer".into() });
    };
    if role.contains(['/', '?', '#']) || role.contains("..") {
        return Err(Problem::Malformed {
            method: "GET",
            url,
            what: "the role name is not a plain name".into(),
        });
    }

    let url = format!("{endpoint}{CREDENTIALS_PATH}{}", super::uri_encode(role, false));
    let answer = super::exchange(&agent, "GET", &url, &with_token, b"")?;
    let body = ok_body("GET", &url, answer)?;
    let malformed = |what: String| Problem::Malformed { method: "GET", url: url.clone(), what };
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|_| malformed("the credentials answer is not JSON".into()))?;
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
    if let Some(code) = field("Code").filter(|c| *c != "Success") {
        return Err(malformed(format!("the metadata service answered Code `{}`", super::one_line(code))));
    }
    let get = |name: &str| {
        field(name).map(Secret::new).ok_or_else(|| malformed(format!("no `{name}` in the answer")))
    };
    Ok(AwsCredentials {
        access_key_id: get("AccessKeyId")?,
        secret_access_key: get("SecretAccessKey")?,
        session_token: Some(get("Token")?),
    })
}

/// The body of a 200 answer; any other status is an error with the body as the message (the metadata
/// service answers plain text such as `Unauthorized`).
fn ok_body(method: &'static str, url: &str, answer: super::Answer) -> Result<String, Problem> {
    if answer.status == 200 {
        return Ok(answer.body);
    }
    Err(Problem::Status {
        method,
        url: url.to_string(),
        status: answer.status,
        message: super::one_line(&answer.body),
    })
}
