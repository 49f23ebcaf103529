//! Loopback stand-ins for the remote credential services, answering as their documentation says:
//!
//! * **Vault KV v2**: `GET /v1/{mount}/data/{path}` needs `X-Vault-Token` equal to the token set up (and
//!   `X-Vault-Namespace` when a namespace is set up), else 403 `{"errors":["permission denied"]}`; an
//!   unknown secret is 404 `{"errors":[]}`; a secret is `{"data":{"data":{…},"metadata":{…}}, …}`.
//! * **AWS Secrets Manager**: `POST /` with `X-Amz-Target: secretsmanager.GetSecretValue` and
//!   `Content-Type: application/x-amz-json-1.1`. The SigV4 `Authorization` header is checked by
//!   recomputing the signature here from the received request (an implementation separate from the
//!   crate's): unknown access key → 400 `UnrecognizedClientException`, wrong signature → 400
//!   `InvalidSignatureException`, unknown secret → 400 `ResourceNotFoundException`; a secret →
//!   `{"ARN", "Name", "SecretString", "VersionId", "VersionStages", "CreatedDate"}`.
//! * **EC2 IMDSv2**: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1–21600) issues
//!   a token; `GET /latest/meta-data/iam/security-credentials/[role]` without a token this fake issued is
//!   401, as on an instance that requires IMDSv2.
//!
//! Every request is recorded; [`FakeCloud::inject`] makes the next request answer something else (a
//! malformed body, an outage).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac, NewMac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fake_github::{percent_decode, read_http_request, reason, Loopback};

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status: u16,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// AWS credentials the fake accepts (Secrets Manager) or hands out (IMDS).
#[derive(Debug, Clone)]
pub struct AwsKey {
    pub id: String,
    pub secret: String,
    pub token: Option<String>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    injected: Vec<(u16, String)>,
    vault_token: String,
    vault_namespace: Option<String>,
    vault: HashMap<String, Value>,
    sm_region: String,
    sm_keys: Vec<AwsKey>,
    sm: HashMap<String, String>,
    imds_role: Option<String>,
    imds_key: Option<AwsKey>,
    imds_tokens: Vec<String>,
}

/// The running fake; dropping it stops it.
pub struct FakeCloud {
    server: Loopback<State>,
}

impl FakeCloud {
    pub fn start() -> FakeCloud {
        let state = State { sm_region: "us-east-1".into(), ..State::default() };
        FakeCloud { server: Loopback::start("the fake cloud", state, serve) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.server.lock().calls.clone()
    }

    /// The next request is answered `status` with `body`, whatever it asks.
    pub fn inject(&self, status: u16, body: &str) {
        self.server.lock().injected.push((status, body.to_string()));
    }

    /// Vault accepts `token` (and requires `namespace`, if given).
    pub fn vault_auth(&self, token: &str, namespace: Option<&str>) {
        let mut st = self.server.lock();
        st.vault_token = token.to_string();
        st.vault_namespace = namespace.map(String::from);
    }

    /// Stores `data` as the current version of `mount`/`path`.
    pub fn vault_put(&self, mount: &str, path: &str, data: Value) {
        self.server.lock().vault.insert(format!("{mount}/data/{path}"), data);
    }

    /// Secrets Manager accepts requests signed with `key` in `region`.
    pub fn sm_accept(&self, region: &str, key: AwsKey) {
        let mut st = self.server.lock();
        st.sm_region = region.to_string();
        st.sm_keys.push(key);
    }

    /// Stores `secret_string` under `name`.
    pub fn sm_put(&self, name: &str, secret_string: &str) {
        self.server.lock().sm.insert(name.to_string(), secret_string.to_string());
    }

    /// The instance has role `role` with credentials `key`; `None` means no role attached.
    pub fn imds_role(&self, role: Option<(&str, AwsKey)>) {
        let mut st = self.server.lock();
        st.imds_role = role.as_ref().map(|(r, _)| r.to_string());
        st.imds_key = role.map(|(_, k)| k);
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn reply(status: u16, content_type: &'static str, body: impl Into<String>) -> Reply {
    Reply { status, content_type, body: body.into() }
}

fn serve(conn: TcpStream, state: &Arc<Mutex<State>>) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let Some((method, target, headers, body)) = read_http_request(&mut reader) else { return };
    let req = Request { method, path: target, headers, body };
    let reply = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let reply = if st.injected.is_empty() {
            route(&mut st, &req)
        } else {
            let (status, body) = st.injected.remove(0);
            reply(status, "application/json", body)
        };
        st.calls.push(Call {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            body: String::from_utf8_lossy(&req.body).into_owned(),
            status: reply.status,
        });
        reply
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nx-amzn-RequestId: 5f2c1c8e-fake\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(reply.body.as_bytes());
    let _ = out.flush();
}

fn route(st: &mut State, req: &Request) -> Reply {
    if let Some(rest) = req.path.strip_prefix("/v1/") {
        return vault(st, req, rest);
    }
    if req.path.starts_with("/latest/") {
        return imds(st, req);
    }
    if req.path == "/" && req.header("x-amz-target").is_some() {
        return secrets_manager(st, req);
    }
    reply(404, "text/plain", "not found")
}

// --- Vault ----------------------------------------------------------------------------------------

fn vault(st: &State, req: &Request, rest: &str) -> Reply {
    let denied = || reply(403, "application/json", json!({ "errors": ["permission denied"] }).to_string());
    if req.method != "GET" {
        return reply(405, "application/json", json!({ "errors": [] }).to_string());
    }
    if req.header("x-vault-token") != Some(st.vault_token.as_str()) || st.vault_token.is_empty() {
        return denied();
    }
    if st.vault_namespace.is_some() && req.header("x-vault-namespace") != st.vault_namespace.as_deref() {
        return denied();
    }
    let key = percent_decode(rest);
    let Some(data) = st.vault.get(&key) else {
        return reply(404, "application/json", json!({ "errors": [] }).to_string());
    };
    let body = json!({
        "request_id": "a9b1c3d5-0000-4000-8000-000000000001",
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": {
            "data": data,
            "metadata": {
                "created_time": "2026-01-01T00:00:00.000000000Z",
                "custom_metadata": null,
                "deletion_time": "",
                "destroyed": false,
                "version": 1
            }
        },
        "wrap_info": null,
        "warnings": null,
        "auth": null
    });
    reply(200, "application/json", body.to_string())
}

// --- Secrets Manager ------------------------------------------------------------------------------

fn aws_error(kind: &str, message: &str) -> Reply {
    reply(400, "application/x-amz-json-1.1", json!({ "__type": kind, "message": message }).to_string())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_varkey(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Recomputes the request's SigV4 signature with `secret`, from what was received.
fn expected_signature(
    req: &Request,
    secret: &str,
    date: &str,
    region: &str,
    signed: &[&str],
) -> Option<String> {
    let mut canonical_headers = String::new();
    for name in signed {
        let value = req.header(name)?;
        canonical_headers
            .push_str(&format!("{name}:{}\n", value.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let canonical = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{}\n{}",
        req.method,
        signed.join(";"),
        hex(&Sha256::digest(&req.body))
    );
    let stamp = req.header("x-amz-date")?;
    let scope = format!("{date}/{region}/secretsmanager/aws4_request");
    let to_sign =
        format!("AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}", hex(&Sha256::digest(canonical.as_bytes())));
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, "secretsmanager", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    Some(hex(&hmac(&key, to_sign.as_bytes())))
}

fn secrets_manager(st: &State, req: &Request) -> Reply {
    if req.method != "POST" || req.header("x-amz-target") != Some("secretsmanager.GetSecretValue") {
        return aws_error("UnknownOperationException", "");
    }
    if req.header("content-type") != Some("application/x-amz-json-1.1") {
        return aws_error("SerializationException", "");
    }
    // Authorization: AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=…, Signature=…
    let Some(auth) = req.header("authorization").and_then(|a| a.strip_prefix("AWS4-HMAC-SHA256 ")) else {
        return aws_error("MissingAuthenticationTokenException", "Missing Authentication Token");
    };
    let field = |name: &str| {
        auth.split(',').map(str::trim).find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
    };
    let (Some(credential), Some(signed), Some(signature)) =
        (field("Credential"), field("SignedHeaders"), field("Signature"))
    else {
        return aws_error(
            "IncompleteSignatureException",
            "Authorization header requires Credential, SignedHeaders and Signature.",
        );
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [id, date, region, service, "aws4_request"] = parts.as_slice() else {
        return aws_error("IncompleteSignatureException", "Credential is malformed.");
    };
    let Some(key) = st.sm_keys.iter().find(|k| k.id == *id) else {
        return aws_error(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    };
    let signed: Vec<&str> = signed.split(';').collect();
    let stamp = req.header("x-amz-date").unwrap_or("");
    for required in ["host", "x-amz-date", "x-amz-target", "content-type"] {
        if !signed.contains(&required) {
            return aws_error(
                "IncompleteSignatureException",
                &format!("'{required}' must be a signed header."),
            );
        }
    }
    if key.token.is_some()
        && (req.header("x-amz-security-token") != key.token.as_deref()
            || !signed.contains(&"x-amz-security-token"))
    {
        return aws_error(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        );
    }
    if *service != "secretsmanager" || *region != st.sm_region || !stamp.starts_with(date) {
        return aws_error(
            "InvalidSignatureException",
            "Credential should be scoped to a valid region, service and date.",
        );
    }
    if expected_signature(req, &key.secret, date, region, &signed).as_deref() != Some(signature) {
        return aws_error(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        );
    }
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return aws_error("SerializationException", "");
    };
    let Some(name) = body["SecretId"].as_str() else {
        return aws_error("ValidationException", "1 validation error detected: Value null at 'secretId' failed to satisfy constraint: Member must not be null");
    };
    let Some(secret) = st.sm.get(name) else {
        return aws_error("ResourceNotFoundException", "Secrets Manager can't find the specified secret.");
    };
    let answer = json!({
        "ARN": format!("arn:aws:secretsmanager:{}:123456789012:secret:{name}-a1b2c3", st.sm_region),
        "CreatedDate": 1.523477145713E9,
        "Name": name,
        "SecretString": secret,
        "VersionId": "EXAMPLE1-90ab-cdef-fedc-ba987SECRET1",
        "VersionStages": ["AWSCURRENT"]
    });
    reply(200, "application/x-amz-json-1.1", answer.to_string())
}

// --- IMDSv2 ---------------------------------------------------------------------------------------

fn imds(st: &mut State, req: &Request) -> Reply {
    const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
    if req.method == "PUT" && req.path == "/latest/api/token" {
        let ttl = req.header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.parse::<u32>().ok());
        if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
            return reply(400, "text/plain", "Bad Request");
        }
        let token = format!("AQAEAFake-imds-token-{}", st.imds_tokens.len() + 1);
        st.imds_tokens.push(token.clone());
        return reply(200, "text/plain", token);
    }
    if req.method != "GET" {
        return reply(405, "text/plain", "Method Not Allowed");
    }
    if !req.header("x-aws-ec2-metadata-token").is_some_and(|t| st.imds_tokens.iter().any(|s| s == t)) {
        return reply(401, "text/plain", "Unauthorized");
    }
    let Some(role) = req.path.strip_prefix(CREDS) else { return reply(404, "text/plain", "Not Found") };
    let (Some(name), Some(key)) = (&st.imds_role, &st.imds_key) else {
        return reply(404, "text/plain", "Not Found");
    };
    if role.is_empty() {
        return reply(200, "text/plain", name.clone());
    }
    if role != name {
        return reply(404, "text/plain", "Not Found");
    }
    let body = json!({
        "Code": "Success",
        "LastUpdated": "2026-01-01T00:00:00Z",
        "Type": "AWS-HMAC",
        "AccessKeyId": key.id,
        "SecretAccessKey": key.secret,
        "Token": key.token,
        "Expiration": "2026-01-01T06:00:00Z"
    });
    reply(200, "text/plain", body.to_string())
}
