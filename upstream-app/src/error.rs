//! One user-facing edge for errors: every handler error becomes a JSON body
//! `{"error": "...", "request_id": "..."}` with a specific status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Redis is unreachable, the pool ran dry in time, or a command timed out.
    #[error("database unavailable")]
    DatabaseUnavailable,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// An error with the request id it answers.
pub struct Reply(pub AppError, pub String);

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.0.to_string(), "request_id": self.1 });
        (self.0.status(), [("cache-control", "no-store")], Json(body)).into_response()
    }
}
