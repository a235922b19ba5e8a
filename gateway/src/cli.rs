//! Command line: `gateway -c FILE` runs, `-t` checks the file and exits,
//! `-u` takes the listeners over from a running gateway, `-d` daemonises;
//! `gateway init --upstream HOST:PORT` prints a configuration for an app.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Command-line flags (the same letters as Pingora's own).
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Caching, load-shedding front proxy on Pingora"
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "conf",
        alias = "config",
        default_value = "conf/gateway.yaml"
    )]
    pub conf: PathBuf,
    /// Check the configuration and exit (0 when valid).
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Take the listening sockets over from a running gateway (binary upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
    /// Run in the background.
    #[arg(short = 'd', long = "daemon")]
    pub daemon: bool,
    /// A subcommand instead of running.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a complete, commented configuration for an app on HOST:PORT
    /// (e.g. `gateway init --upstream 127.0.0.1:5000 > /etc/gateway/gateway.yaml`).
    Init {
        /// The app, host:port.
        #[arg(long)]
        upstream: String,
        /// The public listener.
        #[arg(long, default_value = crate::init::DEFAULT_LISTEN)]
        listen: String,
        /// The admin listener (loopback: it has no token in the file).
        #[arg(long, default_value = crate::init::DEFAULT_ADMIN)]
        admin: String,
        /// A path the app answers with 2xx when healthy (default: TCP connect check).
        #[arg(long)]
        health_path: Option<String>,
    },
}
