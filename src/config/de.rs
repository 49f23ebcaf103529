//! Validating deserializers of the server configuration: ranged integers, non-empty strings, IP
//! addresses, CORS origins, forge domains and secrets.
//!
//! Every check runs inside the serde visitor, so an error raised here carries the span of the value
//! and the loader can name its line and column. A secret's value never appears in an error, whatever
//! its type.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::{Error, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::secret::Secret;

/// Reads an integer and checks `min..=max` inside the visitor, so the error carries the value's span.
fn int<'de, D: Deserializer<'de>>(d: D, min: i64, max: i64) -> Result<i64, D::Error> {
    d.deserialize_i64(IntVisitor { min, max, positive: false })
}

/// [`int`] for "greater than 0" keys, whose message says so.
fn positive<'de, D: Deserializer<'de>>(d: D, max: i64) -> Result<i64, D::Error> {
    d.deserialize_i64(IntVisitor { min: 1, max, positive: true })
}

struct IntVisitor {
    min: i64,
    max: i64,
    positive: bool,
}

impl IntVisitor {
    fn out_of_range<E: Error>(&self, v: impl fmt::Display + Into<i128>) -> E {
        let shown = v.to_string();
        if self.positive && v.into() < 1 {
            E::custom(format!("must be greater than 0, got {shown}"))
        } else {
            E::custom(format!("must be between {} and {}, got {shown}", self.min, self.max))
        }
    }
}

impl<'de> Visitor<'de> for IntVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
        if v < self.min || v > self.max {
            return Err(self.out_of_range(v));
        }
        Ok(v)
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
        self.visit_i128(i128::from(v))
    }
    fn visit_u128<E: Error>(self, v: u128) -> Result<i64, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::custom(format!("must be between {} and {}, got {v}", self.min, self.max))),
        }
    }
    fn visit_i128<E: Error>(self, v: i128) -> Result<i64, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(self.out_of_range(v)),
        }
    }
}

pub fn ranged_u64<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(d: D) -> Result<u64, D::Error> {
    let v = int(d, MIN, MAX)?;
    u64::try_from(v).map_err(|_| D::Error::custom(format!("must be between {MIN} and {MAX}, got {v}")))
}

pub fn ranged_u32<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(d: D) -> Result<u32, D::Error> {
    let v = int(d, MIN, MAX)?;
    u32::try_from(v).map_err(|_| D::Error::custom(format!("must be between {MIN} and {MAX}, got {v}")))
}

/// [`ranged_u32`] for a key whose absence means "decide for me" (`None`).
pub fn ranged_u32_opt<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(
    d: D,
) -> Result<Option<u32>, D::Error> {
    ranged_u32::<D, MIN, MAX>(d).map(Some)
}

pub fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
    let v = positive(d, max)?;
    usize::try_from(v).map_err(|_| D::Error::custom(format!("must be between 1 and {max}, got {v}")))
}

pub fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = positive(d, i64::from(u32::MAX))?;
    u32::try_from(v).map_err(|_| D::Error::custom(format!("must be between 1 and {}, got {v}", u32::MAX)))
}

pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = int(d, 0, 65535)?;
    u16::try_from(v).map_err(|_| D::Error::custom(format!("must be between 0 and 65535, got {v}")))
}

/// Reads a string and checks it with `check` inside the visitor (so errors carry the value's span).
fn checked_str<'de, D, T, F>(d: D, check: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    struct StrVisitor<F>(F);
    impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for StrVisitor<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(StrVisitor(check))
}

fn check_non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(s.to_string())
    }
}

pub fn api_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let trimmed = s.trim_end_matches('/');
    let rest = trimmed.strip_prefix("https://").or_else(|| trimmed.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(['?', '#', '@', ' ']) => {
            Ok(trimmed.to_string())
        }
        _ => Err(D::Error::custom(format!(
            "`{s}` is not an API base URL: write http(s)://host[/path] without query, fragment or \
             credentials, e.g. `https://api.github.com` or `https://ghe.example.com/api/v3`"
        ))),
    }
}

/// GitHub logins (`[web] admins`): 1 to 39 letters, digits or `-`, lower-cased.
pub fn logins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.into_iter()
        .map(|l| {
            let ok =
                !l.is_empty() && l.len() <= 39 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if ok {
                Ok(l.to_ascii_lowercase())
            } else {
                Err(D::Error::custom(format!(
                    "`{}` is not a GitHub login: 1 to 39 letters, digits or `-`",
                    crate::text::ellipsis_bytes(&l, 60)
                )))
            }
        })
        .collect()
}

/// An optional [`api_url`]-shaped base URL (`[web] public_url`).
pub fn api_url_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    api_url(d).map(Some)
}

pub fn non_empty_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_str(d, check_non_empty)
}

pub fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    non_empty_string(d).map(PathBuf::from)
}

/// An optional SSH public host key as Nix's machines file carries it: base64 (what `base64 -w0` prints
/// for a `.pub` line), without whitespace.
pub fn ssh_host_key_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = non_empty_string(d)?;
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')) {
        Ok(Some(s))
    } else {
        Err(D::Error::custom(
            "is not a base64-encoded host key: write what `base64 -w0 < ssh_host_ed25519_key.pub` prints",
        ))
    }
}

struct NonEmpty(String);
impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        non_empty_string(d).map(NonEmpty)
    }
}

/// A list of at least one non-empty string (each element error carries its own position).
pub fn non_empty_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<NonEmpty>::deserialize(d)?;
    if v.is_empty() {
        return Err(D::Error::custom("must list at least one entry"));
    }
    Ok(v.into_iter().map(|s| s.0).collect())
}

struct AbsolutePath(PathBuf);
impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s: &str| {
            if !s.starts_with('/') {
                return Err("must be an absolute path".to_string());
            }
            if std::path::Path::new(s).components().any(|c| c == std::path::Component::ParentDir) {
                return Err("must not contain \"..\" components".to_string());
            }
            Ok(AbsolutePath(PathBuf::from(s)))
        })
    }
}

/// A list of absolute paths without `..` components (each element error carries its own position).
pub fn absolute_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    Ok(Vec::<AbsolutePath>::deserialize(d)?.into_iter().map(|p| p.0).collect())
}

/// URI prefixes for Nix's `allowed-uris` (a space-separated setting): each non-empty, without whitespace.
pub fn uri_prefixes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<UriPrefix>::deserialize(d)?.into_iter().map(|s| s.0).collect())
}

struct UriPrefix(String);
impl<'de> Deserialize<'de> for UriPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = non_empty_string(d)?;
        if s.chars().any(char::is_whitespace) {
            return Err(D::Error::custom(format!("a URI prefix cannot contain whitespace, got `{s}`")));
        }
        Ok(UriPrefix(s))
    }
}

pub fn ip_address<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_str(d, |s| match s.parse::<IpAddr>() {
        Ok(_) => Ok(s.to_string()),
        Err(_) => Err(format!("must be an IP address such as 127.0.0.1, 0.0.0.0 or ::1, got `{s}`")),
    })
}

/// An `ip:port` socket address (IPv6 in brackets: `[::1]:9090`); `None` is the key's absence.
pub fn socket_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked_str(d, |s| match s.parse::<std::net::SocketAddr>() {
        Ok(a) => Ok(a.to_string()),
        Err(_) => Err(format!(
            "must be an IP address and a port such as 127.0.0.1:9090 or [::1]:9090 (no host names), got `{s}`"
        )),
    })
    .map(Some)
}

/// Checks one CORS origin; returns it lower-cased.
pub fn check_origin(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "`{s}` is not an origin: {why}; write scheme://host[:port], e.g. `https://ci.example.com` \
             or `http://localhost:5173`"
        ))
    };
    if s.contains('*') {
        return bad("wildcards are not allowed");
    }
    let lower = s.to_ascii_lowercase();
    let rest = match lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) {
        Some(r) => r,
        None if lower.contains("://") => return bad("the scheme must be http or https"),
        None => return bad("it has no http:// or https:// scheme"),
    };
    if rest.contains('#') {
        return bad("it has a fragment");
    }
    if rest.contains('?') {
        return bad("it has a query");
    }
    if rest.contains('/') {
        return bad("it has a path (even a trailing `/` is a path)");
    }
    if rest.contains('@') {
        return bad("it has user information");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((inner, after)) = v6.split_once(']') else { return bad("unclosed `[`") };
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("the bracketed host is not an IPv6 address");
        }
        match after {
            "" => (inner, None),
            a => match a.strip_prefix(':') {
                Some(p) => (inner, Some(p)),
                None => return bad("unexpected text after the host"),
            },
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return bad("it has no host");
    }
    if !rest.starts_with('[') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return bad("the host has characters a host name cannot have");
    }
    if let Some(p) = port {
        if !matches!(p.parse::<u16>(), Ok(n) if n > 0) || !p.chars().all(|c| c.is_ascii_digit()) {
            return bad("the port must be a number between 1 and 65535");
        }
    }
    Ok(lower)
}

struct Origin(String);
impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, check_origin).map(Origin)
    }
}

pub fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<Origin>::deserialize(d)?.into_iter().map(|o| o.0).collect())
}

/// Checks a forge domain: a bare host (optionally `:port`), no scheme or path.
pub fn check_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.contains("://")
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '[' | ']'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("must be a bare domain such as `gitea.example.com` (no scheme or path), got `{s}`"))
    }
}

pub fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_str(d, check_domain)
}

/// A secret string. Errors never include the value, whatever its type.
pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    d.deserialize_any(SecretVisitor).map(Some)
}

struct SecretVisitor;

impl SecretVisitor {
    fn wrong<E: Error>(found: &str) -> E {
        E::custom(format!("expected a string, found {found} (value not shown: this key holds a secret)"))
    }
}

impl<'de> Visitor<'de> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a secret string")
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Secret, E> {
        if v.is_empty() {
            return Err(E::custom("must not be empty (omit the key instead)"));
        }
        Ok(Secret::new(v))
    }
    fn visit_bool<E: Error>(self, _: bool) -> Result<Secret, E> {
        Err(Self::wrong("a boolean"))
    }
    fn visit_i64<E: Error>(self, _: i64) -> Result<Secret, E> {
        Err(Self::wrong("an integer"))
    }
    fn visit_u64<E: Error>(self, _: u64) -> Result<Secret, E> {
        Err(Self::wrong("an integer"))
    }
    fn visit_i128<E: Error>(self, _: i128) -> Result<Secret, E> {
        Err(Self::wrong("an integer"))
    }
    fn visit_u128<E: Error>(self, _: u128) -> Result<Secret, E> {
        Err(Self::wrong("an integer"))
    }
    fn visit_f64<E: Error>(self, _: f64) -> Result<Secret, E> {
        Err(Self::wrong("a float"))
    }
    fn visit_bytes<E: Error>(self, _: &[u8]) -> Result<Secret, E> {
        Err(Self::wrong("bytes"))
    }
    fn visit_unit<E: Error>(self) -> Result<Secret, E> {
        Err(Self::wrong("nothing"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::wrong("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
        Err(Self::wrong("a table or date"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(check_origin("HTTPS://CI.Example.com:8443").as_deref(), Ok("https://ci.example.com:8443"));
        assert!(check_origin("http://[::1]:3000").is_ok());
        for bad in [
            "https://x/",
            "https://x/a",
            "https://x?q",
            "https://x#f",
            "*",
            "https://*.x",
            "x.com",
            "ftp://x",
            "https://",
            "https://x:0",
            "https://x:port",
            "https://u@x",
        ] {
            assert!(check_origin(bad).is_err(), "{bad} accepted");
        }
    }
}
