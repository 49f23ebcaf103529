//! GitHub App JSON Web Tokens: loading and validating the App's RSA private key, and signing the
//! short-lived RS256 JWT that authenticates the App itself (`iss` = App id, `iat` = now − 60 s,
//! `exp` = now + 9 min; GitHub refuses anything valid for more than 10 minutes).
//!
//! Keys are accepted as PKCS#1 (`BEGIN RSA PRIVATE KEY`, GitHub's download) or PKCS#8
//! (`BEGIN PRIVATE KEY`) PEM, also when the line breaks were flattened to literal `\n` or removed.
//! A key is parsed and checked (RSA, consistent, at least 2048 bits) when it is loaded, so a bad key is
//! reported at start-up. No error message ever contains key material, and [`AppKey`]'s `Debug` is redacted.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// The smallest RSA modulus accepted, in bits.
pub const MIN_KEY_BITS: usize = 2048;
/// How far back `iat` is set, to absorb clock drift between us and GitHub.
pub const IAT_BACKDATE: Duration = Duration::from_secs(60);
/// How long a JWT stays valid after it is made (GitHub refuses more than 10 minutes).
pub const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);

/// Why a private key was refused. The messages describe the problem only, never the key's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the private key is empty")]
    Empty,
    #[error(
        "the private key is not a PEM private key (expected `-----BEGIN RSA PRIVATE KEY-----` or \
         `-----BEGIN PRIVATE KEY-----`)"
    )]
    NotPem,
    #[error("this is a public key; the GitHub App's private key (.pem download) is needed")]
    PublicKey,
    #[error("the private key is encrypted; store it unencrypted (PKCS#1 or PKCS#8) in a protected place")]
    Encrypted,
    #[error("the private key is a `{0}`, not an RSA private key")]
    WrongKind(String),
    #[error("the private key's PEM block is truncated (no matching `-----END {0}-----` line)")]
    Truncated(String),
    #[error("the private key could not be parsed as {format}: {reason}")]
    Malformed { format: &'static str, reason: String },
    #[error("the RSA private key is inconsistent: {0}")]
    Invalid(String),
    #[error("the RSA private key has {bits} bits; at least {MIN_KEY_BITS} are required")]
    TooSmall { bits: usize },
}

/// Why a JWT could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("the system clock is before 1970")]
    Clock,
    #[error("signing the GitHub App JWT failed: {0}")]
    Sign(String),
}

/// A validated RSA private key of a GitHub App.
#[derive(Clone)]
pub struct AppKey {
    encoding: EncodingKey,
    bits: usize,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AppKey {{ rsa_bits: {}, key: [redacted] }}", self.bits)
    }
}

/// The claims of a GitHub App JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
}

const BEGIN: &str = "-----BEGIN ";
const DASHES: &str = "-----";

impl AppKey {
    /// Parses and validates a PEM private key (PKCS#1 or PKCS#8).
    pub fn from_pem(pem: &str) -> Result<AppKey, KeyError> {
        let (label, body) = normalize_pem(pem)?;
        let key = match label.as_str() {
            "RSA PRIVATE KEY" => RsaPrivateKey::from_pkcs1_pem(&rewrap(&label, &body))
                .map_err(|e| KeyError::Malformed { format: "PKCS#1", reason: e.to_string() })?,
            "PRIVATE KEY" => RsaPrivateKey::from_pkcs8_pem(&rewrap(&label, &body))
                .map_err(|e| KeyError::Malformed { format: "PKCS#8", reason: e.to_string() })?,
            "ENCRYPTED PRIVATE KEY" => return Err(KeyError::Encrypted),
            l if l.contains("PUBLIC KEY") || l == "CERTIFICATE" => return Err(KeyError::PublicKey),
            other => return Err(KeyError::WrongKind(other.to_string())),
        };
        key.validate().map_err(|e| KeyError::Invalid(e.to_string()))?;
        let bits = key.n().bits();
        if bits < MIN_KEY_BITS {
            return Err(KeyError::TooSmall { bits });
        }
        let der = key.to_pkcs1_der().map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(AppKey { encoding: EncodingKey::from_rsa_der(der.as_bytes()), bits })
    }

    /// The size of the RSA modulus in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Signs an App JWT for `app_id` valid from `now − 60 s` to `now + 9 min`.
    pub fn sign(&self, app_id: &str, now: SystemTime) -> Result<Secret, JwtError> {
        let claims = claims_at(app_id, now)?;
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.encoding)
            .map(Secret::new)
            .map_err(|e| JwtError::Sign(e.to_string()))
    }
}

/// The claims [`AppKey::sign`] puts in a JWT made at `now`.
pub fn claims_at(app_id: &str, now: SystemTime) -> Result<Claims, JwtError> {
    let now = now.duration_since(UNIX_EPOCH).map_err(|_| JwtError::Clock)?.as_secs();
    Ok(Claims {
        iat: now.saturating_sub(IAT_BACKDATE.as_secs()),
        exp: now + JWT_LIFETIME.as_secs(),
        iss: app_id.to_string(),
    })
}

/// Finds the PEM block and returns its label and base64 body with every line break, space and literal
/// `\n` removed, so flattened one-line forms parse like the original file.
fn normalize_pem(pem: &str) -> Result<(String, String), KeyError> {
    let text = pem.trim();
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    let start = text.find(BEGIN).ok_or(KeyError::NotPem)?;
    let after_begin = &text[start + BEGIN.len()..];
    let label_end = after_begin.find(DASHES).ok_or(KeyError::NotPem)?;
    let label = after_begin[..label_end].trim().to_string();
    if label.is_empty() || label.len() > 40 || !label.chars().all(|c| c.is_ascii_uppercase() || c == ' ') {
        return Err(KeyError::NotPem);
    }
    let rest = &after_begin[label_end + DASHES.len()..];
    let footer = format!("-----END {label}-----");
    let body_end = rest.find(&footer).ok_or_else(|| KeyError::Truncated(label.clone()))?;
    let body: String = rest[..body_end]
        .replace("\\n", "")
        .replace("\\r", "")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if body.is_empty() {
        return Err(KeyError::Truncated(label));
    }
    Ok((label, body))
}

fn rewrap(label: &str, body: &str) -> String {
    let mut out = format!("-----BEGIN {label}-----\n");
    let bytes = body.as_bytes();
    for chunk in bytes.chunks(64) {
        // The body is ASCII after normalisation only if it is base64; a non-ASCII body fails to parse below.
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const PKCS1: &str = include_str!("../../../tests/fixtures/github/keys/test-app-key.pkcs1.pem");
    const PKCS8: &str = include_str!("../../../tests/fixtures/github/keys/test-app-key.pkcs8.pem");
    const PUBLIC: &str = include_str!("../../../tests/fixtures/github/keys/test-app-key.pub.pem");
    const SMALL: &str = include_str!("../../../tests/fixtures/github/keys/small-1024.pkcs1.pem");

    fn verify(token: &str) -> Claims {
        let key = DecodingKey::from_rsa_pem(PUBLIC.as_bytes()).unwrap();
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&["4242"]);
        jsonwebtoken::decode::<Claims>(token, &key, &v).unwrap().claims
    }

    #[test]
    fn signs_verifiable_rs256_jwts_with_github_claims() {
        for pem in [PKCS1, PKCS8] {
            let key = AppKey::from_pem(pem).unwrap();
            assert_eq!(key.bits(), 2048);
            let now = SystemTime::now();
            let jwt = key.sign("4242", now).unwrap();
            let claims = verify(jwt.expose());
            let secs = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert_eq!(claims.iss, "4242");
            assert_eq!(claims.iat, secs - 60);
            assert_eq!(claims.exp, secs + 540);
            assert!(claims.exp - claims.iat <= 600);
        }
    }

    #[test]
    fn flattened_forms_are_accepted() {
        let escaped = PKCS1.trim().replace('\n', "\\n");
        assert!(AppKey::from_pem(&escaped).is_ok());
        let joined = PKCS8.replace('\n', "");
        assert!(AppKey::from_pem(&joined).is_ok());
        let crlf = PKCS1.replace('\n', "\r\n");
        assert!(AppKey::from_pem(&crlf).is_ok());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        assert_eq!(AppKey::from_pem("").unwrap_err(), KeyError::Empty);
        assert_eq!(AppKey::from_pem("hunter2-not-a-key").unwrap_err(), KeyError::NotPem);
        assert_eq!(AppKey::from_pem(PUBLIC).unwrap_err(), KeyError::PublicKey);
        assert_eq!(AppKey::from_pem(SMALL).unwrap_err(), KeyError::TooSmall { bits: 1024 });
        let truncated = &PKCS1[..PKCS1.len() / 2];
        assert_eq!(AppKey::from_pem(truncated).unwrap_err(), KeyError::Truncated("RSA PRIVATE KEY".into()));
        // A damaged body (one base64 line removed) is malformed; the message shows no key bytes.
        let lines: Vec<&str> = PKCS1.lines().collect();
        let damaged = [&lines[..3], &lines[4..]].concat().join("\n");
        let err = AppKey::from_pem(&damaged).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { format: "PKCS#1", .. }), "{err:?}");
        let msg = err.to_string();
        for line in &lines[1..lines.len() - 1] {
            assert!(!msg.contains(&line[..16]), "{msg}");
        }
        let debug = format!("{:?}", AppKey::from_pem(PKCS1).unwrap());
        assert!(debug.contains("[redacted]") && !debug.contains(&lines[1][..16]), "{debug}");
    }
}
