//! `gateway -c conf/gateway.yaml` — run the gateway.
//! `gateway -t -c conf/gateway.yaml` — check the configuration and exit.
//!
//! Then: `curl -i http://127.0.0.1:8080/` (proxied) and
//! `curl http://127.0.0.1:9180/health` (admin).
//!
//! Heap profile: `cargo build --release -p gateway --features dhat-heap`, run
//! with `DHAT_SECS=60` (see `gateway::alloc::dhat_profile`).

use clap::Parser;

/// Pingora allocates per request (headers, buffers, futures); mimalloc serves
/// those small, short-lived objects much faster than glibc malloc.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Heap profiling build: every allocation is recorded (slow).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() -> std::process::ExitCode {
    gateway::alloc::configure();
    #[cfg(feature = "dhat-heap")]
    gateway::alloc::dhat_profile();
    gateway::server::main(gateway::cli::Cli::parse())
}
