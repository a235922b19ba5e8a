//! HTTP routes of the app.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::Reply;
use crate::AppState;

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/performance/health", get(health))
        .with_state(state)
}

/// The request id the gateway sent, or a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

async fn index() -> impl IntoResponse {
    (
        [("cache-control", "public, max-age=5")],
        Json(
            serde_json::json!({ "service": "upstream-app", "version": env!("CARGO_PKG_VERSION") }),
        ),
    )
}

/// Alive and able to reach Redis: 200; Redis down: 503 with the database error.
async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.db.ping().await {
        Ok(()) => {
            let (connections, idle) = state.db.pool_state();
            (
                [("cache-control", "no-store")],
                Json(serde_json::json!({
                    "status": "ok",
                    "redis": "up",
                    "pool": { "connections": connections, "idle": idle },
                })),
            )
                .into_response()
        }
        Err(e) => Reply(e, request_id(&headers)).into_response(),
    }
}
