//! Who is asking, and whether they may: the HTTP API's bearer tokens and the read rules.
//!
//! Every route that serves data or acts calls [`caller`] first: no `Authorization` header is an
//! anonymous caller; a header that is not `Bearer <token>`, or a token that is unknown or revoked,
//! answers 401 whatever the route. Then a write route asks [`Caller::require`] for the admin scope (no
//! token: 401; the read scope: 403), and a read route lets an anonymous caller through only for what is
//! public ([`Caller::read`]): with `[web] public_read`, data of public repositories (see `visibility`).
//! Without a token, what is not known to be public answers 401, including what does not exist, so that
//! an anonymous caller cannot probe private data. Errors never contain the presented token; the server
//! log names a token only by its name.

use serde_json::json;

use super::AppState;
use crate::tokens::{Scope, TokenInfo};

/// What an anonymous or token-carrying caller is refused with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this route needs a token: send `Authorization: Bearer <token>` (an administrator creates one with \
         `ekaci tokens create NAME --scope read|admin`){why}"
    )]
    Missing { why: &'static str },
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    #[error("invalid token: it is unknown or has been revoked")]
    Invalid,
    #[error("token `{name}` has scope {has}; this route needs scope {needs}")]
    Scope { name: String, has: Scope, needs: Scope },
    /// Details go to the server log.
    #[error("internal error while checking the token; see the server log")]
    Internal,
}

/// Why an anonymous caller is refused, appended to [`AuthError::Missing`].
pub const WHY_PRIVATE: &str =
    ": without one, only data of public repositories is served, and this is not known to be";
pub const WHY_NOT_PUBLIC_READ: &str =
    ": this server serves nothing under /v1 without one ([web] public_read = false)";
pub const WHY_METRICS: &str = ": /metrics is served without one only with [web] metrics_public = true";
pub const WHY_WRITE: &str = ": write routes need a token of scope admin";

impl AuthError {
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing { .. } | AuthError::Malformed | AuthError::Invalid => 401,
            AuthError::Scope { .. } => 403,
            AuthError::Internal => 500,
        }
    }

    /// The JSON error response; a 401 says which scheme to use.
    pub fn response(&self) -> tide::Response {
        error_response(self.status(), &self.to_string())
    }
}

/// A JSON error response `{"error": message, "status": status}`; 401s carry `WWW-Authenticate: Bearer`.
pub fn error_response(status: u16, message: &str) -> tide::Response {
    let mut res = tide::Response::builder(status).body(json!({ "error": message, "status": status })).build();
    if status == 401 {
        res.insert_header("WWW-Authenticate", "Bearer realm=\"eka-ci\"");
    }
    res
}

/// The caller of one request: anonymous, or the token it presented.
#[derive(Debug, Clone)]
pub struct Caller(Option<TokenInfo>);

impl Caller {
    /// Whether the request carried no token.
    pub fn is_anonymous(&self) -> bool {
        self.0.is_none()
    }

    /// The token's name, for records such as who approved (`api:NAME`).
    pub fn name(&self) -> Option<&str> {
        self.0.as_ref().map(|t| t.name.as_str())
    }

    /// Allows a caller with a token of (at least) `scope`.
    pub fn require(&self, scope: Scope, why: &'static str) -> Result<(), AuthError> {
        match &self.0 {
            None => Err(AuthError::Missing { why }),
            Some(t) if t.scope.allows(scope) => Ok(()),
            Some(t) => Err(AuthError::Scope { name: t.name.clone(), has: t.scope, needs: scope }),
        }
    }

    /// Allows any token, and an anonymous caller when `[web] public_read` is on and the data is
    /// `public`.
    pub fn read(&self, state: &AppState, public: bool) -> Result<(), AuthError> {
        if !self.is_anonymous() {
            return Ok(());
        }
        if !state.access.public_read {
            return Err(AuthError::Missing { why: WHY_NOT_PUBLIC_READ });
        }
        if !public {
            return Err(AuthError::Missing { why: WHY_PRIVATE });
        }
        Ok(())
    }

    /// For routes that list data of every repository (active builds): any token, and an anonymous
    /// caller when `[web] public_read` is on (the route then shows only public data).
    pub fn read_listing(&self, state: &AppState) -> Result<(), AuthError> {
        self.read(state, true)
    }
}

/// Identifies the caller from the `Authorization` header.
pub async fn caller(req: &tide::Request<AppState>) -> Result<Caller, AuthError> {
    let Some(values) = req.header("Authorization") else { return Ok(Caller(None)) };
    if values.iter().count() != 1 {
        return Err(AuthError::Malformed);
    }
    let value = values.last().as_str();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(AuthError::Malformed),
    };
    if token.is_empty() || token.len() > 256 {
        return Err(AuthError::Invalid);
    }
    let store = req.state().store.clone();
    let token = token.to_string();
    match smol::unblock(move || crate::tokens::verify(&store, &token)).await {
        Ok(Some(info)) => Ok(Caller(Some(info))),
        Ok(None) => Err(AuthError::Invalid),
        Err(e) => {
            tracing::error!(error = %e, "HTTP API: checking a token failed");
            Err(AuthError::Internal)
        }
    }
}

/// Whether derivation `drv` is public (see `visibility`); a failure counts as private and is logged.
pub async fn drv_is_public(state: &AppState, drv: &str) -> bool {
    let (store, graph, drv) = (state.store.clone(), state.graph.clone(), drv.to_string());
    smol::unblock(move || crate::visibility::drv_is_public(&store, &graph, &drv)).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "HTTP API: reading whether a derivation is public failed");
        false
    })
}

/// Whether repository `repo` (as jobsets record it) is public; a failure counts as private and is logged.
pub async fn repo_is_public(state: &AppState, repo: &str) -> bool {
    let (store, repo) = (state.store.clone(), repo.to_string());
    smol::unblock(move || crate::visibility::repo_is_public(&store, &repo)).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "HTTP API: reading whether a repository is public failed");
        false
    })
}

/// What the read rules need from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// `[web] public_read`.
    pub public_read: bool,
    /// `[web] metrics_public`.
    pub metrics_public: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(AuthError::Missing { why: WHY_PRIVATE }.status(), 401);
        assert_eq!(AuthError::Invalid.status(), 401);
        let e = AuthError::Scope { name: "ci".into(), has: Scope::Read, needs: Scope::Admin };
        assert_eq!(e.status(), 403);
        assert_eq!(e.to_string(), "token `ci` has scope read; this route needs scope admin");
        let anonymous = Caller(None);
        assert_eq!(anonymous.require(Scope::Read, WHY_WRITE).map_err(|e| e.status()), Err(401));
    }
}
