//! The reference origin behind the gateway: axum on tokio, Redis through bb8.
//!
//! Layout: [`config`] (file + env → validated config), [`db`] (pool and bounded
//! Redis calls), [`routes`] (HTTP handlers), [`error`] (the JSON error edge).

pub mod config;
pub mod db;
pub mod error;
pub mod routes;

use std::future::Future;

use tokio::net::TcpListener;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// The Redis pool.
    pub db: db::Db,
}

/// Serves on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    config: config::Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let db = db::Db::new(&config.redis).map_err(std::io::Error::other)?;
    let app = routes::router(AppState { db });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
