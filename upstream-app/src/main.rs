//! `upstream-app -c conf/upstream-app.yaml` — run the reference origin.
//!
//! Then: `curl http://127.0.0.1:5000/performance/health`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command-line flags.
#[derive(Parser)]
#[command(
    name = "upstream-app",
    version,
    about = "Reference origin: auth and database routes on Redis"
)]
struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", default_value = "conf/upstream-app.yaml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match upstream_app::config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", config.listen);
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %config.listen, "upstream-app serving");
    match upstream_app::serve(config, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("upstream-app failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
