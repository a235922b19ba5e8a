//! Builds the Pingora server from a validated config and runs it.

use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::listening::Service;

use pingora::apps::HttpServerOptions;

use crate::admin::AdminApp;
use crate::cli::{Cli, Command};
use crate::client::GuardedApp;
use crate::config::{self, Config};
use crate::lifecycle::{PidFile, Signals};
use crate::metrics;
use crate::preflight;
use crate::proxy::Gateway;
use crate::state::Shared;
use crate::tls::TlsAcceptors;

/// Exit code of a refused configuration (and of a listener that cannot bind).
pub const EXIT_CONFIG: u8 = 2;

/// Entry point of the binary: check, then serve until a stop signal.
pub fn main(cli: Cli) -> ExitCode {
    if let Some(Command::Init {
        upstream,
        listen,
        admin,
        health_path,
    }) = &cli.command
    {
        let options = crate::init::InitOptions {
            upstream: upstream.clone(),
            listen: listen.clone(),
            admin: admin.clone(),
            health_path: health_path.clone(),
        };
        return match crate::init::render(&options) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway init: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    init_tracing();
    let config = match config::load(&cli.conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The same check for -t and a start: can this user write where the file says?
    if let Err(code) = refuse(&cli, preflight::check(&config)) {
        return code;
    }
    if cli.test {
        println!("configuration {} is valid", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    // A new binary taking over (-u) receives bound sockets from the old one.
    if !cli.upgrade {
        let tls_listen = config.tls.iter().flat_map(|t| {
            t.listen
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("tls.listen[{i}]"), *a))
        });
        let listeners = [
            ("listen".to_owned(), config.listen),
            ("admin.listen".to_owned(), config.admin.listen),
        ];
        // Held until all are checked, so a duplicate shows as a bind failure.
        let mut bound = Vec::new();
        for (key, addr) in listeners.into_iter().chain(tls_listen) {
            match TcpListener::bind(addr) {
                Ok(l) => bound.push(l),
                Err(e) => {
                    eprintln!(
                        "cannot listen on {addr} ({key} in {}): {e}",
                        cli.conf.display()
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        drop(bound);
    }
    if let Err(code) = refuse(&cli, preflight::prepare(&config)) {
        return code;
    }
    exit_on_listener_panic();
    metrics::init();
    crate::cache::init(
        config.cache.max_size,
        config.cache.max_object_size,
        config.cache.lock_timeout,
    );
    crate::shared::configure(config.redis.as_ref());
    crate::cache::shared::configure(config.cache.shared.as_ref());
    // The access-log writer runs from the start (a reload may turn the log on).
    crate::access_log::start(&config.access_log.target);
    let pid_file = PidFile::new(&config.pid_file);
    let shared = Shared::new(config, &cli.conf);
    let server = build(&shared, &cli);
    if !cli.daemon {
        // Pingora writes it only when daemonising.
        if let Err(e) = pid_file.write() {
            eprintln!(
                "cannot write the pid file (pid_file in {}): {e}",
                cli.conf.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    tracing::info!(conf = %cli.conf.display(), "gateway starting");
    let signals = Signals::new(
        shared.clone(),
        server.watch_execution_phase(),
        pid_file.clone(),
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    crate::access_log::flush(Duration::from_secs(2));
    pid_file.remove();
    ExitCode::SUCCESS
}

/// Prints `problems` as a refused configuration; `Err` with the exit code if any.
fn refuse(cli: &Cli, problems: Vec<config::Invalid>) -> Result<(), ExitCode> {
    if problems.is_empty() {
        return Ok(());
    }
    let e = config::ConfigError::Invalid(cli.conf.display().to_string(), problems);
    eprintln!("invalid configuration: {e}");
    Err(ExitCode::from(EXIT_CONFIG))
}

/// The Pingora server with the proxy and admin services of `shared`'s snapshot.
pub fn build(shared: &Arc<Shared>, cli: &Cli) -> Server {
    let snap = shared.snapshot();
    let config = &snap.config;
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config));
    server.bootstrap();

    let challenges = Arc::new(crate::acme::Challenges::default());
    let proxy_app = || {
        let mut app = pingora::proxy::HttpProxy::new(
            Gateway::new(shared.clone(), challenges.clone()),
            server.configuration.clone(),
        );
        app.handle_init_modules();
        app
    };
    let mut proxy = Service::new(
        "gateway".to_string(),
        GuardedApp::new(proxy_app(), shared.clone()),
    );
    proxy.add_listener(ListenerConfig::tcp(config.listen.to_string()).l4_buffer(CLIENT_L4_BUFFERS));
    if let Some(tls) = &config.tls {
        let mut app = proxy_app();
        app.h2_options = Some(h2_options(config));
        let mut options = HttpServerOptions::default();
        // An HTTP/2 connection with no request in progress is closed after
        // this (also one whose streams never complete their header block).
        options.h2_idle_timeout = Some(config.client.keepalive_timeout);
        app.server_options = Some(options);
        let mut https = Service::new(
            "gateway-tls".to_string(),
            GuardedApp::with_tls(app, shared.clone(), TlsAcceptors::new(shared.clone())),
        );
        // Pingora's default socket buffers here: TLS reads record-sized
        // pieces (see CLIENT_L4_BUFFERS; not measured for TLS yet).
        for addr in &tls.listen {
            https.add_tcp(&addr.to_string());
        }
        server.add_service(https);
    }

    let mut admin = Service::new("admin".to_string(), AdminApp::new(shared.clone()));
    admin.add_tcp(&config.admin.listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(pingora::services::background::background_service(
        "health checks",
        HealthChecker::new(shared.clone()),
    ));
    server.add_service(pingora::services::background::background_service(
        "acme",
        crate::acme::AcmeService::new(shared.clone(), challenges),
    ));
    // Purges travel on the channel only with the cache tier on.
    if crate::shared::configured() && config.cache.shared.is_some() {
        server.add_service(pingora::services::background::background_service(
            "shared redis",
            SharedChannel {
                shared: shared.clone(),
            },
        ));
    }
    server
}

/// HTTP/2 settings sent to clients: the header-list size is Pingora's HTTP/1
/// hard cap (the request filter then answers 431 + JSON above
/// `client.max_header_bytes`, as for HTTP/1), and concurrent streams per
/// connection are capped by `client.h2_max_streams`.
fn h2_options(config: &Config) -> pingora::protocols::http::v2::server::H2Options {
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(config::PINGORA_MAX_HEADER_BYTES as u32);
    h2.max_concurrent_streams(config.client.h2_max_streams);
    h2
}

/// Background service of the shared Redis: the purge channel (other
/// instances' purges applied to this memory; after the channel was down,
/// memory entries are dropped, as purges may have been missed meanwhile).
pub struct SharedChannel {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for SharedChannel {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(redis) = crate::shared::get() else {
            return;
        };
        let on_message = |payload: &[u8]| {
            crate::cache::purge::apply_remote(payload, &self.shared.snapshot());
        };
        let on_resync = || {
            if let Some(store) = crate::cache::store() {
                let n = store.purge_where(false, |_, _| true);
                if n > 0 {
                    tracing::warn!(
                        dropped = n,
                        "shared redis: purge channel back; memory entries stored before dropped"
                    );
                }
            }
        };
        redis.listen(on_message, on_resync, shutdown).await;
    }
}

/// The client listener's socket buffers. Pingora's default puts a 64 KiB read
/// buffer in front of every accepted connection, allocated at accept and kept
/// for the connection's life: with 2,000 keep-alive clients that is 125 MiB,
/// about two thirds of what a connection costs (dhat, `loadtests/conn_memory.sh`).
/// On a plain TCP listener it buys nothing: the HTTP/1 session reads the request
/// into its own buffer (4 KiB, grown as needed) and a body into its own chunks,
/// with one `read` per call either way, so without it they read straight from
/// the socket and save a copy. (Pingora's reason for the buffer is TLS, whose
/// layer reads in record-sized pieces: a TLS listener should measure its own.)
/// The write side has no buffer here either: the client stream above it gathers
/// small writes itself (`client::WRITE_GATHER`), so that a response's header
/// and a large body leave in one vectored `write`, which Pingora's write buffer
/// cannot do (it sends what it holds before a write larger than itself).
const CLIENT_L4_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: Some(0),
};

/// Pingora's process settings from ours.
fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.threads,
        pid_file: config.pid_file.display().to_string(),
        upgrade_sock: config.upgrade_sock.display().to_string(),
        upstream_keepalive_pool_size: config.upstream_keepalive_pool_size,
        work_stealing: false,
        // Our signal watcher spends the drain delay before Pingora's shutdown
        // starts; in-flight requests then get the rest of the grace period (the
        // process exits earlier once no connection is left), and the last second
        // is for the runtimes to stop.
        grace_period_seconds: Some(
            config
                .shutdown
                .grace_period
                .as_secs()
                .saturating_sub(config.shutdown.drain_delay.as_secs_f64().ceil() as u64)
                .saturating_sub(1),
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

fn init_tracing() {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(crate::quiet_log::QuietFilter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
}

/// Pingora panics in a service thread when a listener cannot be built, which
/// would leave a process without its listener: make that a clean exit instead,
/// at once (the default hook's backtrace, with `RUST_BACKTRACE` set, can take
/// seconds to symbolize while the admin listener goes on answering).
fn exit_on_listener_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Failed to build listeners") {
            eprintln!("cannot listen: {msg}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
        default(info);
    }));
}

/// Background service that runs the health checks of the current snapshot's pools.
pub struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    /// A checker over the shared snapshot.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// How often the checker looks for due checks.
const TICK: Duration = Duration::from_millis(50);

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snap = self.shared.snapshot();
            let now = Instant::now();
            let checks = snap.upstreams.iter().map(|p| p.check_if_due(now));
            tokio::select! {
                _ = futures::future::join_all(checks) => {}
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
