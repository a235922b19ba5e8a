//! The reference origin behind the gateway: axum on tokio, Redis through bb8.
//!
//! Layout: [`config`] (file + env → validated config), [`db`] (pool and
//! bounded Redis calls), [`auth`] (accounts, sessions, password hashing),
//! [`items`] (cache-friendly CRUD), [`jobs`] (bounded background queue),
//! [`ops`] (health and metrics endpoints), [`metrics`], [`error`] (the JSON
//! error edge). No handler blocks a worker thread and every wait is bounded.

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod items;
pub mod jobs;
pub mod metrics;
pub mod ops;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::error::{AppError, REQUEST_ID};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<config::Config>,
    /// The Redis pool.
    pub db: db::Db,
    /// Password hashing.
    pub hasher: Arc<auth::Hasher>,
    /// Background jobs.
    pub jobs: Arc<jobs::Jobs>,
}

impl AppState {
    /// Builds the state (no connection is made yet, no worker started).
    pub fn new(config: config::Config) -> Result<AppState, redis::RedisError> {
        Ok(AppState {
            db: db::Db::new(&config.redis)?,
            hasher: auth::Hasher::new(&config.auth),
            jobs: jobs::Jobs::new(config.jobs.queue_size),
            config: Arc::new(config),
        })
    }
}

/// All routes, with request ids, metrics, the body limit and JSON 404/405.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_size;
    Router::new()
        .route("/", get(index))
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/me", get(auth::me))
        .route("/auth/logout", post(auth::logout))
        .route("/items", get(items::list).post(items::create))
        .route("/items/export", post(jobs::export))
        .route(
            "/items/{id}",
            get(items::get_one).put(items::update).delete(items::delete),
        )
        .route("/jobs/{id}", get(jobs::status))
        .route("/performance/health", get(ops::health))
        .route("/performance/metrics", get(ops::performance))
        .route("/performance/tasks", get(ops::tasks))
        .route("/metrics", get(ops::prometheus_text))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// `GET /`: what this service is and what it serves.
async fn index() -> impl IntoResponse {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(serde_json::json!({
            "service": "upstream-app",
            "version": env!("CARGO_PKG_VERSION"),
            "routes": [
                "POST /auth/register", "POST /auth/login", "GET /auth/me", "POST /auth/logout",
                "GET /items", "GET /items/{id}", "POST /items", "PUT /items/{id}", "DELETE /items/{id}",
                "POST /items/export", "GET /jobs/{id}",
                "GET /performance/health", "GET /performance/metrics", "GET /performance/tasks", "GET /metrics"
            ],
        })),
    )
}

/// Request id (kept when sane, else generated; echoed), and metrics by route template.
async fn observe(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = method_label(req.method());
    let mut resp = REQUEST_ID
        .scope(id.clone(), next.run(req))
        .await
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    metrics::request(&route, method, resp.status().as_u16(), started.elapsed());
    resp
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Serves on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    config: config::Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    metrics::init();
    let state = AppState::new(config).map_err(std::io::Error::other)?;
    jobs::spawn_workers(&state);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
