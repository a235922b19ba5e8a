//! One user-facing edge for errors: every failure becomes a JSON body
//! `{"error": "...", "request_id": "..."}` with a specific status.
//!
//! The request id comes from the [`REQUEST_ID`] task-local that the request-id
//! middleware sets around every handler.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::FromRequest;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;

tokio::task_local! {
    /// The id of the request being handled.
    pub static REQUEST_ID: String;
}

/// The current request id, or `-` outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "-".into())
}

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Redis is unreachable, the pool gave no connection in time, or a command timed out.
    #[error("database unavailable")]
    DatabaseUnavailable,
    /// No such resource.
    #[error("not found")]
    NotFound,
    /// Missing, wrong or expired credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// A unique field is taken.
    #[error("{0}")]
    Conflict(String),
    /// Field-level validation errors.
    #[error("invalid input")]
    Invalid(BTreeMap<&'static str, String>),
    /// Malformed request (e.g. not JSON).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Body over `max_body_size`.
    #[error("request body too large")]
    TooLarge,
    /// A bounded queue or pool is full; try again later.
    #[error("{0}")]
    Busy(&'static str),
    /// A bug.
    #[error("internal error")]
    Internal,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::DatabaseUnavailable | Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.to_string(), "request_id": request_id() });
        if let Self::Invalid(fields) = &self {
            body["fields"] = serde_json::json!(fields);
        }
        let mut resp = (self.status(), Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Self::Unauthorized(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Busy(_) | Self::DatabaseUnavailable => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// `Path<T>` whose rejections are [`AppError`]s (400 JSON).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct AppPath<T>(pub T);

/// `Query<T>` whose rejections are [`AppError`]s (400 JSON).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct AppQuery<T>(pub T);

impl From<PathRejection> for AppError {
    fn from(e: PathRejection) -> Self {
        AppError::BadRequest(e.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(e: QueryRejection) -> Self {
        AppError::BadRequest(e.body_text())
    }
}

/// `Json<T>` whose rejections are [`AppError`]s (413, 400, 422).
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(AppError::TooLarge)
            }
            Err(JsonRejection::JsonDataError(e)) => {
                let mut fields = BTreeMap::new();
                fields.insert("body", e.body_text());
                Err(AppError::Invalid(fields))
            }
            Err(e) => Err(AppError::BadRequest(e.body_text())),
        }
    }
}
