//! Command line: `gateway -c FILE` runs, `-t` checks the file and exits,
//! `-u` takes the listeners over from a running gateway, `-d` daemonises.

use std::path::PathBuf;

use clap::Parser;

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
}
