//! Operations endpoints: health, JSON metrics, tasks, Prometheus metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::AppError;
use crate::{metrics, AppState};

/// `GET /performance/health`: Redis answers PING within the deadlines → 200, else 503.
pub async fn health(State(st): State<AppState>) -> Result<Response, AppError> {
    st.db.ping().await?;
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "status": "ok", "redis": "up", "pool": st.db.pool_state() })),
    )
        .into_response())
}

fn refresh(st: &AppState) {
    let p = st.db.pool_state();
    metrics::pool(p.max_size, p.connections, p.idle, p.in_use, p.waiters);
    let (q, r) = st.jobs.depth();
    metrics::jobs(q, r);
}

/// `GET /performance/metrics`: the figures of `/metrics` as JSON.
pub async fn performance(State(st): State<AppState>) -> Response {
    refresh(&st);
    let (queued, running) = st.jobs.depth();
    let mut cpu = 0.0;
    let mut rss = 0.0;
    for fam in prometheus::gather() {
        let v = fam
            .get_metric()
            .first()
            .map(|m| m.get_gauge().value() + m.get_counter().value());
        match fam.name() {
            "process_cpu_seconds_total" => cpu = v.unwrap_or(0.0),
            "process_resident_memory_bytes" => rss = v.unwrap_or(0.0),
            _ => {}
        }
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({
            "requests": metrics::requests_summary(),
            "pool": st.db.pool_state(),
            "jobs": { "queued": queued, "running": running },
            "process": { "cpu_seconds": cpu, "resident_memory_bytes": rss },
        })),
    )
        .into_response()
}

/// `GET /performance/tasks`: queued and running jobs.
pub async fn tasks(State(st): State<AppState>) -> Response {
    let (queued, running) = st.jobs.depth();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({ "queued": queued, "running": running, "jobs": st.jobs.active() })),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text format.
pub async fn prometheus_text(State(st): State<AppState>) -> Response {
    refresh(&st);
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        metrics::render(),
    )
        .into_response()
}
