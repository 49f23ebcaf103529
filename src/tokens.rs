//! API tokens for the HTTP API: creating, listing, revoking and verifying them (`ekaci tokens …`).
//!
//! A token is `ekaci_` followed by 64 hexadecimal digits: 32 bytes read from the operating system's
//! randomness (`/dev/urandom`). It is shown once, when it is created; only its SHA-256 hash is stored, in
//! the `api_tokens` table (name → scope, hash, creation and last-use times). Verifying a presented token
//! hashes it and compares the hash with every stored one in constant time. Every function here is
//! blocking (run it through `smol::unblock`). This module never logs, formats into an error or returns a
//! token except the one [`create`] hands back to its caller, and never returns a stored hash.

use std::io::Read;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::codec::{decode, encode};
use crate::store::schema::API_TOKENS;
use crate::store::{now_secs, Store, StoreError};

const TABLE: &str = "api_tokens";

/// What every token starts with, so that a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "ekaci_";
/// Random bytes per token.
const TOKEN_BYTES: usize = 32;
/// The longest token name.
pub const MAX_NAME_LEN: usize = 64;
/// A token's last use is written at most this often (seconds), so reads do not turn into writes.
const LAST_USED_GRANULARITY: u64 = 60;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read every `/v1` route (private repositories included) and `/metrics`.
    Read,
    /// Everything `Read` may, plus the write routes (rebuild, cancel, approve).
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Scope, TokenError> {
        match s {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(TokenError::BadScope { input: crate::text::ellipsis_bytes(other, 40) }),
        }
    }
}

/// A token as `ekaci tokens list` shows it: never the token, never its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub scope: Scope,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, to the minute; `None` when it was never used.
    pub last_used_at: Option<u64>,
}

/// A token just created, on its way to the one person who sees it. Unlike [`crate::secret::Secret`] it
/// serializes (the control socket carries it once), but its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NewToken(String);

impl NewToken {
    /// The token itself, to print once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}<redacted>")
    }
}

/// The stored form of a token (the name is the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredToken {
    scope: Scope,
    /// SHA-256 of the whole token text.
    hash: [u8; 32],
    created_at: u64,
    last_used_at: Option<u64>,
}

/// Versioned on-disk form of a token.
#[derive(Serialize, Deserialize)]
enum ApiTokenRecord {
    V1(StoredToken),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "invalid token name `{input}`: {reason} (1 to {MAX_NAME_LEN} characters: letters, digits, `.`, `_` \
         or `-`, starting with a letter or digit)"
    )]
    BadName { input: String, reason: &'static str },
    #[error("invalid scope `{input}`: expected `read` or `admin`")]
    BadScope { input: String },
    #[error("a token named `{name}` already exists; revoke it first or choose another name")]
    Exists { name: String },
    #[error("no token named `{name}`")]
    Unknown { name: String },
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<redb::TransactionError> for TokenError {
    fn from(e: redb::TransactionError) -> Self {
        TokenError::Store(e.into())
    }
}
impl From<redb::TableError> for TokenError {
    fn from(e: redb::TableError) -> Self {
        TokenError::Store(e.into())
    }
}
impl From<redb::StorageError> for TokenError {
    fn from(e: redb::StorageError) -> Self {
        TokenError::Store(e.into())
    }
}
impl From<redb::CommitError> for TokenError {
    fn from(e: redb::CommitError) -> Self {
        TokenError::Store(e.into())
    }
}

/// Checks a token name.
pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let bad = |reason| Err(TokenError::BadName { input: crate::text::ellipsis_bytes(name, 80), reason });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is too long");
    }
    if !name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()) {
        return bad("it must start with a letter or a digit");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return bad("it contains a character other than letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn hash(token: &str) -> [u8; 32] {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// Compares two hashes in time independent of where they differ.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keep the comparison from being short-circuited into an early exit.
    std::hint::black_box(diff) == 0
}

/// A fresh token from the operating system's randomness.
fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(TokenError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// Creates token `name` with `scope` and returns the token itself, which is stored nowhere: the caller
/// shows it once. Refuses a name in use.
pub fn create(store: &Store, name: &str, scope: Scope) -> Result<NewToken, TokenError> {
    validate_name(name)?;
    let token = generate()?;
    let record = ApiTokenRecord::V1(StoredToken {
        scope,
        hash: hash(&token),
        created_at: now_secs(),
        last_used_at: None,
    });
    let tx = store.db().begin_write()?;
    {
        let mut table = tx.open_table(API_TOKENS)?;
        if table.get(name)?.is_some() {
            return Err(TokenError::Exists { name: name.to_string() });
        }
        table.insert(name, encode(TABLE, &record)?.as_slice())?;
    }
    tx.commit()?;
    Ok(NewToken(token))
}

/// Every token, by name.
pub fn list(store: &Store) -> Result<Vec<TokenInfo>, TokenError> {
    let tx = store.db().begin_read()?;
    let table = tx.open_table(API_TOKENS)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let ApiTokenRecord::V1(t) = decode(TABLE, k.value(), v.value())?;
        out.push(TokenInfo {
            name: k.value().to_string(),
            scope: t.scope,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
        });
    }
    Ok(out)
}

/// Removes token `name`: it stops working at once.
pub fn revoke(store: &Store, name: &str) -> Result<(), TokenError> {
    validate_name(name)?;
    let tx = store.db().begin_write()?;
    let removed = tx.open_table(API_TOKENS)?.remove(name)?.is_some();
    if !removed {
        return Err(TokenError::Unknown { name: name.to_string() });
    }
    tx.commit()?;
    Ok(())
}

/// The token `presented` is, if it is one: its name and scope. Every stored hash is compared (in
/// constant time each), whichever matches. Records the use, at most once a minute per token.
pub fn verify(store: &Store, presented: &str) -> Result<Option<TokenInfo>, TokenError> {
    let wanted = hash(presented);
    let found = {
        let tx = store.db().begin_read()?;
        let table = tx.open_table(API_TOKENS)?;
        let mut found = None;
        for row in table.iter()? {
            let (k, v) = row?;
            let ApiTokenRecord::V1(t) = decode(TABLE, k.value(), v.value())?;
            if same_hash(&t.hash, &wanted) {
                found = Some((k.value().to_string(), t));
            }
        }
        found
    };
    let Some((name, mut stored)) = found else { return Ok(None) };
    let now = now_secs();
    if stored.last_used_at.is_none_or(|t| now.saturating_sub(t) >= LAST_USED_GRANULARITY) {
        stored.last_used_at = Some(now);
        let tx = store.db().begin_write()?;
        {
            let mut table = tx.open_table(API_TOKENS)?;
            // Revoked in between: it is no longer a token.
            if table.get(name.as_str())?.is_none() {
                return Ok(None);
            }
            table.insert(name.as_str(), encode(TABLE, &ApiTokenRecord::V1(stored.clone()))?.as_slice())?;
        }
        tx.commit()?;
    }
    Ok(Some(TokenInfo {
        name,
        scope: stored.scope,
        created_at: stored.created_at,
        last_used_at: stored.last_used_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["ci", "grafana-read", "a.b_c-1", "0", &"x".repeat(MAX_NAME_LEN)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(MAX_NAME_LEN + 1), "a\nb"] {
            let e = validate_name(bad).expect_err(bad);
            assert!(e.to_string().starts_with("invalid token name"), "{e}");
        }
    }

    #[test]
    fn scopes() {
        assert!(Scope::Admin.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Admin));
        assert_eq!("admin".parse::<Scope>().ok(), Some(Scope::Admin));
        assert!("root".parse::<Scope>().is_err());
    }

    #[test]
    fn tokens_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        let token = create(&store, "ci", Scope::Read).expect("create");
        assert!(!format!("{token:?}").contains(token.expose()));
        let token = token.expose().to_string();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 64, "{token}");
        assert!(matches!(create(&store, "ci", Scope::Admin), Err(TokenError::Exists { .. })));
        let other = create(&store, "other", Scope::Admin).expect("create");
        assert_ne!(token, other.expose());
        let found = verify(&store, &token).expect("verify").expect("known");
        assert_eq!((found.name.as_str(), found.scope), ("ci", Scope::Read));
        assert!(found.last_used_at.is_some());
        assert!(verify(&store, "ekaci_0000").expect("verify").is_none());
        let listed = list(&store).expect("list");
        assert_eq!(listed.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["ci", "other"]);
        revoke(&store, "ci").expect("revoke");
        assert!(verify(&store, &token).expect("verify").is_none());
        assert!(matches!(revoke(&store, "ci"), Err(TokenError::Unknown { .. })));
        assert!(same_hash(&hash("a"), &hash("a")) && !same_hash(&hash("a"), &hash("b")));
    }
}
