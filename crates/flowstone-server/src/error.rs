//! The one place where a failure becomes an HTTP response.
//!
//! Every handler returns [`ApiError`]; its [`IntoResponse`] picks the status,
//! the stable `code` clients match on, the public message, and the log event,
//! together. The body is always
//! `{"error": {"code": "stable_code", "message": "what was wrong and what is accepted"}}`.
//! A failure of the store or of the machine is logged with its detail and
//! answered with a generic message: store errors can name files and hosts.

use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flowstone_core::{EngineError, PlanError, StoreError};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No asset with that key is defined.
    #[error("{0}")]
    UnknownAsset(String),
    /// A partition key that the asset's partitions do not accept, or one
    /// missing or given where it must not be.
    #[error("{0}")]
    BadPartition(String),
    /// A partition range that is reversed or out of bounds.
    #[error("{0}")]
    BadRange(String),
    /// A body, query or path that cannot be read, or a value out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No run with that id.
    #[error("{0}")]
    UnknownRun(String),
    /// Nothing of that kind exists: a materialization, a route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A request body over [`crate::MAX_BODY`] bytes.
    #[error(
        "the request body is larger than the limit of 1 MiB ({} bytes); send a smaller one",
        crate::MAX_BODY
    )]
    PayloadTooLarge,
    /// No valid token with the request: none sent (`false`), or one that
    /// is unknown, revoked or expired (`true`).
    #[error("{}", if *.0 {
        "the API token sent is not valid here (unknown, revoked or expired); send a valid one \
         as `Authorization: Bearer TOKEN`, or sign in"
    } else {
        "a valid API token is required: send `Authorization: Bearer TOKEN`, or sign in"
    })]
    Unauthorized(bool),
    /// A valid token without the right the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// The request cannot be done in the current state, e.g. resuming a run
    /// that has ended.
    #[error("{0}")]
    Conflict(String),
    /// The store or the machine failed; the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::UnknownAsset(_) => "unknown_asset",
            ApiError::BadPartition(_) => "bad_partition",
            ApiError::BadRange(_) => "bad_range",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownRun(_) => "unknown_run",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::Conflict(_) => "conflict",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownAsset(_) | ApiError::UnknownRun(_) | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::BadPartition(_) | ApiError::BadRange(_) | ApiError::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message sent to the client. A message that quotes a huge input
    /// (a partition key of a megabyte) is cut short, saying how much was cut.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; the server log has the detail".to_owned(),
            other => shorten(other.to_string()),
        }
    }

    /// Logs the error of a `what` (a request, a page): server errors as
    /// errors, refusals of bad input at debug level.
    pub(crate) fn log(&self, what: &str) {
        if self.status().is_server_error() {
            tracing::error!(target: "flowstone::server", code = self.code(), error = %self,
                            "{what} failed");
        } else {
            tracing::debug!(target: "flowstone::server", code = self.code(), error = %self,
                            "{what} refused");
        }
    }

    /// The body of the response, also used by the pages.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": { "code": self.code(), "message": self.public_message() }
        })
    }
}

/// The longest message sent, in bytes, before it is cut.
const MESSAGE_MAX: usize = 2048;

fn shorten(message: String) -> String {
    if message.len() <= MESSAGE_MAX {
        return message;
    }
    let mut cut = MESSAGE_MAX;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}… ({} more bytes of the message left out)",
        &message[..cut],
        message.len() - cut
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log("request");
        let mut response = (status, Json(self.body())).into_response();
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Plan(plan) => plan.into(),
            EngineError::Store(store) => store.into(),
            EngineError::RunNotFound(run) => {
                ApiError::UnknownRun(format!("no run with id {run}; GET /api/v1/runs lists them"))
            }
            err @ (EngineError::RunBusy { .. } | EngineError::RunEnded { .. }) => {
                ApiError::Conflict(err.to_string())
            }
            EngineError::Invalid(message) => ApiError::BadRequest(message),
            EngineError::Worker(message) => ApiError::Internal(message),
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(err: PlanError) -> Self {
        match err {
            PlanError::UnknownAsset(message) => ApiError::UnknownAsset(message),
            err @ (PlanError::BadPartition { .. }
            | PlanError::NeedsPartition { .. }
            | PlanError::NotPartitioned { .. }) => ApiError::BadPartition(api_words(&err)),
            err @ (PlanError::MissingUpstream { .. } | PlanError::AlreadyQueued { .. }) => {
                ApiError::Conflict(api_words(&err))
            }
            err @ (PlanError::Mapping { .. } | PlanError::NothingDefined) => {
                ApiError::BadRequest(err.to_string())
            }
            PlanError::Store(store) => store.into(),
        }
    }
}

/// The engine's messages name CLI flags; the API names body fields.
fn api_words(err: &PlanError) -> String {
    err.to_string()
        .replace("--with-upstream", "\"with_upstream\": true")
        .replace(
            "with --partition, e.g. --partition ",
            "in \"partitions\", e.g. ",
        )
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(message) => ApiError::NotFound(message),
            StoreError::Conflict(message) => ApiError::Conflict(message),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "the body must be JSON, sent with `Content-Type: application/json`".to_owned()
            }
            other => format!("malformed JSON body: {}", other.body_text()),
        };
        ApiError::BadRequest(message)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query string: {}", rejection.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path: {}", rejection.body_text()))
    }
}

impl From<FormRejection> for ApiError {
    fn from(rejection: FormRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        ApiError::BadRequest(format!("bad form: {}", rejection.body_text()))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_messages_are_cut_on_a_char_boundary() {
        let short = ApiError::BadRequest("bad partition key \"x\"".into());
        assert_eq!(short.public_message(), "bad partition key \"x\"");
        let key = "é".repeat(300_000);
        let long = ApiError::BadRequest(format!("bad partition key \"{key}\""));
        let message = long.public_message();
        assert!(message.len() < MESSAGE_MAX + 100, "{}", message.len());
        assert!(message.starts_with("bad partition key \"éé"));
        assert!(
            message.ends_with("more bytes of the message left out)"),
            "{message}"
        );
    }
}
