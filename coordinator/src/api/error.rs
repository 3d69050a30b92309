//! The API's one error shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::{JobState, StoreError};

/// An error as the caller sees it.
#[derive(Debug)]
pub struct ApiError {
    /// 4xx for the caller's fault, 5xx for ours.
    pub status: StatusCode,
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For a person: what went wrong and what to do.
    pub message: String,
    /// The job's state, on a result asked for too early.
    pub state: Option<JobState>,
    /// Seconds to wait before trying again, sent as `Retry-After` (429).
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with no job state.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            state: None,
            retry_after_s: None,
        }
    }

    /// 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 for a job, token or agent that does not exist.
    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id {id:?}"),
        )
    }
}

/// The error code of a response, kept as an extension so that layers (the
/// space watch, logs) can tell errors apart without parsing the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// What a caller is told of a store failure: the detail (a driver's text,
/// a path) is ours to read in the log, not the caller's.
pub const STORE_ERROR_MESSAGE: &str = "internal store error; see the coordinator's log";

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_out_of_space() {
            return super::space::store_full(&e);
        }
        tracing::error!("store error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            STORE_ERROR_MESSAGE,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(state) = self.state {
            body["state"] = json!(state);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

/// Unknown paths (charged to the caller's address, as a scan of the API would be).
pub async fn not_found(_: super::auth::Anonymous, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint {}: see the README for the API",
            uri.path()
        ),
    )
}

/// Known paths, wrong method.
pub async fn method_not_allowed(
    _: super::auth::Anonymous,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Reads a whole body up to `limit` bytes, with a JSON error past it.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
    hint: &str,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {} MiB: {hint}", limit >> 20),
        )
    };
    // A declared length over the limit is refused before a byte is read.
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .map(|s| s.is::<http_body_util::LengthLimitError>())
                .unwrap_or(false)
                || e.to_string().contains("length limit");
            if over_limit {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(
                    "bad_body",
                    format!("cannot read the body: {e}"),
                ))
            }
        }
    }
}
