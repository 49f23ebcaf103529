//! Web UI sessions: the signed session cookie, the `web_sessions` table behind it (so a session can be
//! revoked), CSRF tokens, and the OAuth `state` cookie.
//!
//! A session id is 32 random bytes (`/dev/urandom`) in hex; the cookie holds `<id>.<mac>` where `mac`
//! is HMAC-SHA256 of the id under the signing secret (`[oauth] jwt_secret`, or a random one per start:
//! then sessions do not survive a restart). Only the SHA-256 of the id is stored, with the GitHub login,
//! the user's OAuth token (to ask GitHub what the user may read) and the times. A form's CSRF token is
//! the HMAC of `csrf:<id>`: it is bound to the session and needs no storage. Every function that reads
//! or writes the table is blocking (run it through `smol::unblock`). Nothing here logs a secret.

use hmac::{Hmac, Mac, NewMac};
use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::Secret;
use crate::store::codec::{decode, encode};
use crate::store::schema::WEB_SESSIONS;
use crate::store::{now_secs, Store, StoreError};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ekaci_session";
/// The OAuth `state` cookie's name (set by the login redirect, checked by the callback).
pub const STATE_COOKIE: &str = "ekaci_oauth_state";
/// How long a session lasts (seconds).
pub const SESSION_SECONDS: u64 = 7 * 24 * 3600;
/// How long a login may take between the redirect to GitHub and the callback (seconds).
pub const STATE_SECONDS: u64 = 600;

/// A stored session.
#[derive(Debug, Clone)]
pub struct StoredSession {
    /// The GitHub login, lower-cased.
    pub login: String,
    pub user_id: u64,
    /// The user's OAuth token: asks GitHub which private repositories the user may read.
    pub github_token: Secret,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: u64,
}

/// The stored form (a [`Secret`] never serializes its value, so the token is a plain string here).
#[derive(Serialize, Deserialize)]
struct SessionRow {
    login: String,
    user_id: u64,
    github_token: String,
    created_at: u64,
    expires_at: u64,
}

#[derive(Serialize, Deserialize)]
enum WebSessionRecord {
    V1(SessionRow),
}

impl WebSessionRecord {
    fn session(self) -> StoredSession {
        let WebSessionRecord::V1(r) = self;
        StoredSession {
            login: r.login,
            user_id: r.user_id,
            github_token: Secret::new(r.github_token),
            created_at: r.created_at,
            expires_at: r.expires_at,
        }
    }
}

const TABLE: &str = "web_sessions";

/// The signing secret of cookies and CSRF tokens.
#[derive(Clone)]
pub struct Signer {
    key: Secret,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(…)")
    }
}

/// Random bytes from the operating system, as hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex(&buf))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two strings in time independent of where they differ (lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl Signer {
    /// `secret`, or a fresh random one.
    pub fn new(secret: Option<&Secret>) -> std::io::Result<Signer> {
        let key = match secret {
            Some(s) => s.clone(),
            None => Secret::new(random_hex(32)?),
        };
        Ok(Signer { key })
    }

    fn mac(&self, text: &str) -> String {
        match Hmac::<Sha256>::new_varkey(self.key.expose().as_bytes()) {
            Ok(mut m) => {
                m.update(text.as_bytes());
                hex(&m.finalize().into_bytes())
            }
            // HMAC takes keys of any length; never reached.
            Err(_) => String::new(),
        }
    }

    /// The cookie value of session `id`.
    pub fn cookie_value(&self, id: &str) -> String {
        format!("{id}.{}", self.mac(id))
    }

    /// The session id in a cookie value, when its signature is right.
    pub fn verify_cookie<'a>(&self, value: &'a str) -> Option<&'a str> {
        let (id, mac) = value.split_once('.')?;
        (id.len() == 64 && !self.mac(id).is_empty() && same(&self.mac(id), mac)).then_some(id)
    }

    /// The CSRF token of session `id`.
    pub fn csrf(&self, id: &str) -> String {
        self.mac(&format!("csrf:{id}"))
    }
}

fn key_of(id: &str) -> String {
    hex(&Sha256::digest(id.as_bytes()))
}

/// Stores a new session; returns its id (for the cookie only).
pub fn create(
    store: &Store,
    login: &str,
    user_id: u64,
    github_token: Secret,
) -> Result<String, SessionError> {
    let id = random_hex(32).map_err(SessionError::Random)?;
    let now = now_secs();
    let rec = WebSessionRecord::V1(SessionRow {
        login: login.to_ascii_lowercase(),
        user_id,
        github_token: github_token.expose().to_string(),
        created_at: now,
        expires_at: now + SESSION_SECONDS,
    });
    let bytes = encode(TABLE, &rec)?;
    let tx = store.db().begin_write().map_err(StoreError::from)?;
    {
        let mut t = tx.open_table(WEB_SESSIONS).map_err(StoreError::from)?;
        t.insert(key_of(&id).as_str(), bytes.as_slice()).map_err(StoreError::from)?;
    }
    tx.commit().map_err(StoreError::from)?;
    Ok(id)
}

/// The live session `id`; an expired one is `None`.
pub fn get(store: &Store, id: &str) -> Result<Option<StoredSession>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(WEB_SESSIONS)?;
    let key = key_of(id);
    let Some(v) = t.get(key.as_str())? else { return Ok(None) };
    let s = decode::<WebSessionRecord>(TABLE, &key, v.value())?.session();
    Ok((s.expires_at > now_secs()).then_some(s))
}

/// Every stored session, newest first, as (key, session): the key revokes it.
pub fn list(store: &Store) -> Result<Vec<(String, StoredSession)>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(WEB_SESSIONS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let s = decode::<WebSessionRecord>(TABLE, k.value(), v.value())?.session();
        out.push((k.value().to_string(), s));
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.1.created_at));
    Ok(out)
}

/// Removes the session stored under `key` (as [`list`] names it); whether it existed.
pub fn revoke_key(store: &Store, key: &str) -> Result<bool, StoreError> {
    let tx = store.db().begin_write()?;
    let existed = {
        let mut t = tx.open_table(WEB_SESSIONS)?;
        let existed = t.remove(key)?.is_some();
        // Expired sessions go at the same time.
        let now = now_secs();
        let expired: Vec<String> = t
            .iter()?
            .filter_map(|r| r.ok())
            .filter_map(|(k, v)| match decode::<WebSessionRecord>(TABLE, k.value(), v.value()) {
                Ok(WebSessionRecord::V1(r)) if r.expires_at <= now => Some(k.value().to_string()),
                _ => None,
            })
            .collect();
        for k in expired {
            t.remove(k.as_str())?;
        }
        existed
    };
    tx.commit()?;
    Ok(existed)
}

/// Removes session `id` (logout).
pub fn revoke(store: &Store, id: &str) -> Result<bool, StoreError> {
    revoke_key(store, &key_of(id))
}

/// What creating a session can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(req: &'a tide::Request<crate::web::AppState>, name: &str) -> Option<&'a str> {
    let values = req.header("Cookie")?;
    values.iter().flat_map(|v| v.as_str().split(';')).find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, Path=/, Secure when `secure`; `max_age` 0 deletes.
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_csrf_are_bound_to_the_secret() {
        let a = Signer::new(Some(&Secret::new("one"))).expect("signer");
        let b = Signer::new(Some(&Secret::new("two"))).expect("signer");
        let id = "a".repeat(64);
        let value = a.cookie_value(&id);
        assert_eq!(a.verify_cookie(&value), Some(id.as_str()));
        assert_eq!(b.verify_cookie(&value), None);
        assert_eq!(a.verify_cookie(&format!("{}.{}", "b".repeat(64), &value[65..])), None);
        assert_eq!(a.verify_cookie("short.abc"), None);
        assert_ne!(a.csrf(&id), b.csrf(&id));
        assert_ne!(a.csrf(&id), a.csrf(&"c".repeat(64)));
        let random = Signer::new(None).expect("signer");
        assert_eq!(random.verify_cookie(&value), None);
        assert!(set_cookie("x", "y", 5, true).ends_with("HttpOnly; SameSite=Lax; Secure"));
    }
}
