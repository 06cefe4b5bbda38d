//! API tokens: given by configuration, kept only as blake3 hashes in memory.
//!
//! A token is sent as `Authorization: Bearer TOKEN`, or as the session cookie
//! that signing in on the dashboard sets (the same token, `HttpOnly`,
//! `SameSite=Strict`). With no token configured the server accepts every
//! request, which [`crate::ServeOptions::check`] allows only on a loopback
//! address. With tokens configured, every request but the health check, the
//! sign-in page and the static files needs a valid one, and every request
//! that changes something (any method but GET and HEAD) needs a token with
//! the [`Right::Launch`] right.
//!
//! Tokens are compared by hash (blake3's `Hash` compares in constant time),
//! so the secrets themselves are dropped once the server has started.

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::AppState;
use crate::error::ApiError;

/// The name of the session cookie.
pub const COOKIE: &str = "flowstone_token";

/// What a token lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    /// Read everything.
    Read,
    /// Read, and launch, cancel and resume runs.
    Launch,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::Read => "read",
            Right::Launch => "launch",
        })
    }
}

/// A token specification that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid API token {index} in FLOWSTONE_API_TOKENS: {reason}; give a comma-separated \
     list of RIGHT:SECRET with RIGHT `read` or `launch` and a SECRET of at least 16 \
     characters, e.g. launch:9f8e7d6c5b4a39281706"
)]
pub struct TokenSpecError {
    /// The position in the list, from 1.
    pub index: usize,
    pub reason: &'static str,
}

/// The configured tokens, hashed.
#[derive(Clone, Default)]
pub struct Tokens {
    hashes: Vec<(blake3::Hash, Right)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are not secrets, but there is nothing to gain by printing them.
        write!(f, "Tokens({} configured)", self.hashes.len())
    }
}

impl Tokens {
    /// No token: every request is accepted (loopback only).
    pub fn none() -> Self {
        Tokens::default()
    }

    /// Adds a token with a right.
    #[must_use]
    pub fn with(mut self, secret: &str, right: Right) -> Self {
        self.hashes.push((blake3::hash(secret.as_bytes()), right));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The right a presented secret carries, if it is a configured token.
    pub fn right_of(&self, secret: &str) -> Option<Right> {
        let presented = blake3::hash(secret.as_bytes());
        // Every hash is compared, so the time taken does not say which matched.
        let mut found = None;
        for (hash, right) in &self.hashes {
            if *hash == presented {
                found = found.max(Some(*right));
            }
        }
        found
    }
}

impl FromStr for Tokens {
    type Err = TokenSpecError;

    /// Parses `RIGHT:SECRET[,RIGHT:SECRET...]`; an empty string is no token.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut tokens = Tokens::none();
        for (i, item) in spec.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let fail = |reason| TokenSpecError {
                index: i + 1,
                reason,
            };
            let (right, secret) = item.split_once(':').ok_or_else(|| fail("it has no `:`"))?;
            let right = match right.trim() {
                "read" => Right::Read,
                "launch" => Right::Launch,
                _ => return Err(fail("its right is neither `read` nor `launch`")),
            };
            if secret.chars().count() < 16 {
                return Err(fail("its secret is shorter than 16 characters"));
            }
            if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(fail("its secret has a space or a control character"));
            }
            tokens = tokens.with(secret, right);
        }
        Ok(tokens)
    }
}

/// The secret a request presents: the bearer header, else the cookie.
pub(crate) fn presented(request: &Request) -> Option<&str> {
    let headers = request.headers();
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        return text.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

/// Paths anyone may reach: the health check, signing in, static files.
fn is_public(path: &str) -> bool {
    path == "/api/v1/health" || path == "/login" || path.starts_with("/static/")
}

/// The middleware in front of every route.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = &state.inner.tokens;
    if tokens.is_empty() || is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let needs = if matches!(*request.method(), Method::GET | Method::HEAD) {
        Right::Read
    } else {
        Right::Launch
    };
    let right = presented(&request).and_then(|secret| tokens.right_of(secret));
    match right {
        Some(right) if right >= needs => next.run(request).await,
        Some(right) => ApiError::Forbidden(format!(
            "this token has the {right} right; this request needs a token with the {needs} right"
        ))
        .into_response(),
        None if wants_page(&request) => Redirect::to("/login").into_response(),
        None => ApiError::Unauthorized.into_response(),
    }
}

/// A browser asking for a page (not the API, not htmx) is sent to sign in.
fn wants_page(request: &Request) -> bool {
    let path = request.uri().path();
    let html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    html && request.method() == Method::GET
        && !path.starts_with("/api/")
        && !request.headers().contains_key("hx-request")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rights_and_checks_secrets() {
        let tokens: Tokens = "read:aaaaaaaaaaaaaaaa, launch:bbbbbbbbbbbbbbbb"
            .parse()
            .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.right_of("aaaaaaaaaaaaaaaa"), Some(Right::Read));
        assert_eq!(tokens.right_of("bbbbbbbbbbbbbbbb"), Some(Right::Launch));
        assert_eq!(tokens.right_of("cccccccccccccccc"), None);
        assert!("".parse::<Tokens>().unwrap().is_empty());
    }

    #[test]
    fn bad_specs_say_what_is_accepted() {
        let err = "write:bbbbbbbbbbbbbbbb".parse::<Tokens>().unwrap_err();
        assert_eq!(err.reason, "its right is neither `read` nor `launch`");
        assert!(err.to_string().contains("RIGHT:SECRET"));
        let err = "read:a,launch:short".parse::<Tokens>().unwrap_err();
        assert_eq!(err.index, 1);
        let err = "launch".parse::<Tokens>().unwrap_err();
        assert_eq!(err.reason, "it has no `:`");
    }
}
