//! API tokens: made with `tokens create` and kept in the store as hashes,
//! or given by configuration (`FLOWSTONE_API_TOKENS`) and kept only as
//! hashes in memory.
//!
//! A token is sent as `Authorization: Bearer TOKEN`, or as the session cookie
//! that signing in on the dashboard sets (the same token, `HttpOnly`,
//! `SameSite=Strict`). With no token anywhere the server accepts every
//! request, which [`crate::ServeOptions::check`] allows only on a loopback
//! address. Once a token exists (in the store or the configuration), every
//! request but the health check, the sign-in page and the static files needs
//! a valid one, and every request that changes something (any method but GET
//! and HEAD) on a route that exists needs a token with the [`Right::Launch`]
//! right. Refusals are JSON under `/api/` and pages elsewhere.
//!
//! A token from the store is looked up by hash on every request, so creating
//! or revoking one with the CLI takes effect at once, in every server that
//! shares the store; whether any token exists is asked at most once a second.
//! An open event stream outlives its request: it keeps the [`Credential`]
//! it was let in with (the secret's hash, never the secret) and is checked
//! again every [`RECHECK_STREAMS_EVERY`], ending once it would be refused.
//! A request that passes carries its [`Principal`] in its extensions: runs
//! it launches are recorded as started by the token's name.
//!
//! Configured tokens are compared by hash (blake3's `Hash` compares in
//! constant time), so the secrets themselves are dropped once the server has
//! started.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use flowstone_core::Store;
use flowstone_core::store::StoreResult;

use crate::AppState;
use crate::error::ApiError;

/// The name of the session cookie.
pub const COOKIE: &str = "flowstone_token";

/// What a token lets its holder do.
pub use flowstone_core::token::TokenRight as Right;

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

/// Who a request comes from, once its token is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or `FLOWSTONE_API_TOKENS[N]` for a configured one.
    pub name: String,
    pub right: Right,
}

/// A presented secret, kept only as its blake3 hash: what an open event
/// stream holds on to so its token can be checked again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Credential(blake3::Hash);

impl Credential {
    /// The credential of a presented secret; `None` for an empty one.
    pub(crate) fn of(secret: &str) -> Option<Credential> {
        (!secret.is_empty()).then(|| Credential(blake3::hash(secret.as_bytes())))
    }
}

/// What checking a request's token found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// No token exists anywhere and the server is on loopback: anyone may.
    Open,
    /// A valid token.
    Valid(Principal),
    /// Tokens exist (or did) and the request presents none that is valid;
    /// `true` when it presented one.
    Refused(bool),
}

/// Checks tokens against the configured ones and the store's.
pub(crate) struct Auth {
    configured: Tokens,
    store: Arc<dyn Store>,
    /// On loopback, the server is open while no token exists; elsewhere never.
    may_be_open: bool,
    /// Whether the store had a token (revoked ones count), and when that was
    /// asked.
    any_stored: Mutex<Option<(Instant, bool)>>,
    /// When each store token's use was last written down.
    noted: Mutex<HashMap<i64, Instant>>,
}

/// How long the answer to "does any token exist?" is kept.
const ANY_STORED_FOR: Duration = Duration::from_secs(1);

/// How often a token's `last_used_at` is written at most.
const NOTE_USE_EVERY: Duration = Duration::from_secs(60);

/// How often an open event stream's token is checked again: a revoked or
/// expired token's stream ends within this much (plus a store read).
pub const RECHECK_STREAMS_EVERY: Duration = Duration::from_secs(5);

impl Auth {
    pub(crate) fn new(configured: Tokens, store: Arc<dyn Store>, loopback: bool) -> Self {
        Auth {
            configured,
            store,
            may_be_open: loopback,
            any_stored: Mutex::new(None),
            noted: Mutex::new(HashMap::new()),
        }
    }

    /// What a request presenting `secret` (or none) may do.
    pub(crate) async fn check(&self, secret: Option<&str>) -> StoreResult<Verdict> {
        self.check_credential(secret.and_then(Credential::of)).await
    }

    /// What a request presenting `credential` (or none) may do: a
    /// configured token by hash, else the store's token with that hash,
    /// else open or refused.
    pub(crate) async fn check_credential(
        &self,
        credential: Option<Credential>,
    ) -> StoreResult<Verdict> {
        if let Some(Credential(presented)) = credential {
            if let Some((index, right)) = self.configured.find(&presented) {
                let name = format!("FLOWSTONE_API_TOKENS[{index}]");
                return Ok(Verdict::Valid(Principal { name, right }));
            }
            let now = jiff::Timestamp::now();
            let hash = presented.to_hex();
            if let Some(token) = self.store.token_by_hash(hash.as_str()).await?
                && token.is_active(now)
            {
                self.note_use(token.id, now).await;
                return Ok(Verdict::Valid(Principal {
                    name: token.name,
                    right: token.right,
                }));
            }
        }
        if self.is_open().await? {
            Ok(Verdict::Open)
        } else {
            Ok(Verdict::Refused(credential.is_some()))
        }
    }

    /// Whether the server is on loopback and no token was ever made: once
    /// one has been, the server stays closed when every token is revoked or
    /// has expired (revoking the last token must not open it to anyone).
    async fn is_open(&self) -> StoreResult<bool> {
        if !self.may_be_open || !self.configured.is_empty() {
            return Ok(false);
        }
        let cached = *self.any_stored.lock().expect("no panic while held");
        let any = match cached {
            // Once true, always true: the store never forgets a token.
            Some((_, true)) => true,
            Some((at, false)) if at.elapsed() < ANY_STORED_FOR => false,
            _ => {
                let any = !self.store.tokens().await?.is_empty();
                *self.any_stored.lock().expect("no panic while held") = Some((Instant::now(), any));
                any
            }
        };
        Ok(!any)
    }

    /// Writes down a token's use, at most once a minute per token; a failure
    /// to write is logged, not fatal to the request.
    async fn note_use(&self, id: i64, now: jiff::Timestamp) {
        {
            let mut noted = self.noted.lock().expect("no panic while held");
            if noted
                .get(&id)
                .is_some_and(|at| at.elapsed() < NOTE_USE_EVERY)
            {
                return;
            }
            noted.insert(id, Instant::now());
        }
        if let Err(err) = self.store.token_used(id, now).await {
            tracing::warn!(target: "flowstone::server", error = %err,
                           "cannot note a token's use");
        }
    }
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
        self.find(&blake3::hash(secret.as_bytes()))
            .map(|(_, right)| right)
    }

    /// The position (from 1) and right of the configured token whose secret
    /// hashes to `presented`.
    fn find(&self, presented: &blake3::Hash) -> Option<(usize, Right)> {
        // Every hash is compared, so the time taken does not say which matched.
        let mut found: Option<(usize, Right)> = None;
        for (i, (hash, right)) in self.hashes.iter().enumerate() {
            if hash == presented && found.is_none_or(|(_, r)| *right > r) {
                found = Some((i + 1, *right));
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
            let right = right
                .parse::<Right>()
                .map_err(|_| fail("its right is neither `read` nor `launch`"))?;
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
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let text = value.to_str().ok()?.trim_start();
        let (scheme, token) = text.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
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

/// Paths anyone may reach: the health check, signing in and out, static
/// files.
fn is_public(path: &str) -> bool {
    path == "/api/v1/health"
        || path == "/login"
        || path == "/logout"
        || path.starts_with("/static/")
}

tokio::task_local! {
    /// The principal of the request being answered, for the page header.
    static SIGNED_IN: Principal;
}

/// Who the request being answered comes from, when it presented a token;
/// `None` outside a request or on an open server.
pub(crate) fn signed_in() -> Option<Principal> {
    SIGNED_IN.try_with(Principal::clone).ok()
}

/// The middleware in front of every route, known or not: who is asking.
/// A request with no valid token is refused here (401, or the sign-in page
/// for a browser), before routing, so that an unknown path tells nothing
/// to someone without a token. What the token may do is checked by
/// [`require_right`], on the routes that exist.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if is_public(request.uri().path()) {
        return next.run(request).await;
    }
    let credential = presented(&request).and_then(Credential::of);
    let verdict = match state.inner.auth.check_credential(credential).await {
        Ok(verdict) => verdict,
        Err(err) => return crate::pages::refusal(&request, err.into()),
    };
    match verdict {
        Verdict::Open => match open_request_refusal(&request) {
            Some(refusal) => crate::pages::refusal(&request, refusal),
            None => next.run(request).await,
        },
        Verdict::Valid(principal) => {
            // The event stream checks the credential again while it is open.
            if let Some(credential) = credential {
                request.extensions_mut().insert(credential);
            }
            request.extensions_mut().insert(principal.clone());
            SIGNED_IN.scope(principal, next.run(request)).await
        }
        Verdict::Refused(_) if wants_page(&request) => {
            Redirect::to(&crate::pages::login_href(request.uri())).into_response()
        }
        Verdict::Refused(presented) => {
            crate::pages::refusal(&request, ApiError::Unauthorized(presented))
        }
    }
}

/// The middleware on every route that exists (a route layer, so an unknown
/// path is a 404 whatever the token): a request that changes something
/// (any method but GET and HEAD) needs the [`Right::Launch`] right.
pub(crate) async fn require_right(request: Request, next: Next) -> Response {
    let needs = if matches!(*request.method(), Method::GET | Method::HEAD) {
        Right::Read
    } else {
        Right::Launch
    };
    // No principal: a public path, or an open server.
    let held = request.extensions().get::<Principal>();
    match held {
        Some(principal) if principal.right < needs && !is_public(request.uri().path()) => {
            let refusal = ApiError::Forbidden(format!(
                "the token {} has the {} right; this request needs a token with the {needs} \
                 right",
                principal.name, principal.right
            ));
            crate::pages::refusal(&request, refusal)
        }
        _ => next.run(request).await,
    }
}

/// On an open server (loopback, no token ever made) anyone on the machine
/// may do anything, but a web page in the user's browser must not: a
/// request that changes something and comes from another site (a form
/// posted cross-site), or any request naming a host other than this
/// machine (DNS rebinding), is refused.
fn open_request_refusal(request: &Request) -> Option<ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !host.is_empty() && !is_local_host(host) {
        return Some(ApiError::Forbidden(format!(
            "this server has no API token, so it answers only requests for 127.0.0.1, ::1 \
             or localhost, not for {host:?}; create a token (`tokens create NAME --right \
             launch`) to serve other names"
        )));
    }
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site" || site == "same-site");
    let foreign_origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| {
            let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            origin == "null" || authority != host
        });
    (cross_site || foreign_origin).then(|| {
        ApiError::Forbidden(
            "a request from another web site cannot change anything here; use the dashboard \
             or the API from this machine"
                .to_owned(),
        )
    })
}

/// Whether a `Host` header names this machine: `localhost`, `127.x.y.z` or
/// `[::1]`, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
