//! `gateway -c conf/gateway.yaml` — run the gateway.
//! `gateway -t -c conf/gateway.yaml` — check the configuration and exit.
//!
//! Then: `curl -i http://127.0.0.1:8080/` (proxied) and
//! `curl http://127.0.0.1:9180/health` (admin).

use clap::Parser;

/// Pingora allocates per request (headers, buffers, futures); mimalloc serves
/// those small, short-lived objects much faster than glibc malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::server::main(gateway::cli::Cli::parse())
}
